import Foundation

/// One write seen on one destination node, as measured by `patina bench regions` or `patina bench live`.
public struct LatencyObservation: Sendable, Equatable {
    public var originRegion: String
    public var originNode: String
    public var destinationRegion: String
    public var destinationNode: String
    public var writeID: Int
    /// From the write's commit on its origin node to its visibility on the destination node.
    public var milliseconds: Double

    public init(
        originRegion: String, originNode: String, destinationRegion: String, destinationNode: String,
        writeID: Int, milliseconds: Double
    ) {
        self.originRegion = originRegion
        self.originNode = originNode
        self.destinationRegion = destinationRegion
        self.destinationNode = destinationNode
        self.writeID = writeID
        self.milliseconds = milliseconds
    }
}

/// Replication latency of one benchmark run, per (origin region → destination region) pair and until each
/// write is visible on every node. Shared by `patina bench regions` and `patina bench live`; rendered as a
/// fixed-width `table()`, a `json()` document and an `svg()` chart.
///
/// Every write MUST reach every node other than its origin; each such delivery is *expected*. A delivery not
/// observed within the run is *missing*. Missing deliveries are counted, and they also rank above every
/// observed latency, as if they took forever: once more than 1% of a distribution is missing its p99 is
/// `.missing`, and any missing delivery makes its max `.missing`. Leaving them out would report the latency of
/// the deliveries that worked rather than of the system.
///
/// Percentiles are nearest-rank: the p-th percentile of n values is the value at 1-based rank ⌈p·n/100⌉ in
/// ascending order (NIST/Hyndman–Fan definition 1), so it is always a latency that happened; max is rank n.
public struct LatencyReport: Sendable {
    public struct Node: Sendable, Equatable {
        public var name: String
        /// `bench live` has no regions: it passes each node's name as its region.
        public var region: String

        public init(name: String, region: String) {
            self.name = name
            self.region = region
        }
    }

    public struct Write: Sendable, Equatable {
        public var id: Int
        public var originRegion: String
        public var originNode: String

        public init(id: Int, originRegion: String, originNode: String) {
            self.id = id
            self.originRegion = originRegion
            self.originNode = originNode
        }
    }

    public struct Metadata: Sendable, Equatable {
        public var title: String
        public var commandLine: String
        public var writesPerSecond: Double
        /// Packet loss the WAN emulator applied; nil without an emulator (`bench live`).
        public var lossPercent: Double?
        public var date: Date

        public init(title: String, commandLine: String, writesPerSecond: Double, lossPercent: Double?, date: Date) {
            self.title = title
            self.commandLine = commandLine
            self.writesPerSecond = writesPerSecond
            self.lossPercent = lossPercent
            self.date = date
        }
    }

    /// A percentile, or why there is none.
    public enum Value: Sendable, Equatable {
        case milliseconds(Double)
        /// The rank falls on a delivery that was never observed.
        case missing
        /// No delivery was expected.
        case noSamples

        public var milliseconds: Double? {
            if case .milliseconds(let value) = self { value } else { nil }
        }
    }

    /// Observed latencies plus the expected deliveries never observed, which rank above all of them.
    public struct Distribution: Sendable, Equatable {
        /// Ascending.
        public let observed: [Double]
        public let missing: Int

        public init(observed: [Double], missing: Int = 0) {
            self.observed = observed.sorted()
            self.missing = missing
        }

        public var count: Int { observed.count }
        public var expected: Int { observed.count + missing }

        /// Nearest rank: the value at 1-based rank ⌈percent·expected/100⌉.
        public func percentile(_ percent: Int) -> Value {
            precondition((1...100).contains(percent), "percentile \(percent) is outside 1...100")
            guard expected > 0 else { return .noSamples }
            // Integer ceiling: 0.99 * 100 in floating point need not be exactly 99.
            let rank = (percent * expected + 99) / 100
            return rank <= observed.count ? .milliseconds(observed[rank - 1]) : .missing
        }

        public var p50: Value { percentile(50) }
        public var p99: Value { percentile(99) }
        public var max: Value { percentile(100) }
    }

    public struct Pair: Sendable, Equatable {
        public let from: String
        public let to: String
        /// The configured one-way delay from `from` to `to`; nil without an emulator.
        public let floorMilliseconds: Double?
        public let latency: Distribution
    }

    public let metadata: Metadata
    public let nodeCount: Int
    public let writeCount: Int
    /// Sorted by origin, then destination. Only pairs with at least one expected delivery.
    public let pairs: [Pair]
    /// Per write, the largest latency over all nodes but its origin; a write missing on any node is missing here.
    public let everywhere: Distribution
    /// The largest floor of any pair; nil without an emulator.
    public let maxOneWayMilliseconds: Double?
    /// Observations that name an unknown write or node, disagree with the write's origin or the node's region,
    /// or carry a negative or non-finite latency. Counted so a measuring bug shows instead of vanishing.
    public let rejectedObservations: Int

    /// Writes not seen on every node within the run.
    public var missingWrites: Int { everywhere.missing }

    /// Node names and write ids MUST be unique; a repeat is ignored. When a write is seen more than once on a
    /// node, the earliest observation counts. Observations of a write on its own origin node are trivial and
    /// skipped. A write in a one-node cluster is visible everywhere at once (0 ms).
    ///
    /// - Parameter floorMilliseconds: the configured one-way delay between two regions, or nil (`bench live`).
    public init(
        metadata: Metadata, nodes: [Node], writes: [Write], observations: [LatencyObservation],
        floorMilliseconds: (_ from: String, _ to: String) -> Double? = { _, _ in nil }
    ) {
        let regionByNode = Dictionary(nodes.map { ($0.name, $0.region) }, uniquingKeysWith: { first, _ in first })
        let writeByID = Dictionary(writes.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })

        var earliest: [Int: [String: Double]] = [:]
        var rejected = 0
        for observation in observations where observation.originNode != observation.destinationNode {
            guard let write = writeByID[observation.writeID],
                write.originNode == observation.originNode, write.originRegion == observation.originRegion,
                regionByNode[observation.destinationNode] == observation.destinationRegion,
                observation.milliseconds.isFinite, observation.milliseconds >= 0
            else {
                rejected += 1
                continue
            }
            let previous = earliest[write.id]?[observation.destinationNode] ?? .infinity
            earliest[write.id, default: [:]][observation.destinationNode] = min(previous, observation.milliseconds)
        }

        var samples: [RegionPair: (observed: [Double], missing: Int)] = [:]
        var everywhere: [Double] = []
        var missingWrites = 0
        for write in writeByID.values {
            let seen = earliest[write.id] ?? [:]
            var slowest: Double? = 0
            for (node, region) in regionByNode where node != write.originNode {
                let pair = RegionPair(from: write.originRegion, to: region)
                if let milliseconds = seen[node] {
                    samples[pair, default: ([], 0)].observed.append(milliseconds)
                    slowest = slowest.map { Swift.max($0, milliseconds) }
                } else {
                    samples[pair, default: ([], 0)].missing += 1
                    slowest = nil
                }
            }
            if let slowest { everywhere.append(slowest) } else { missingWrites += 1 }
        }

        self.metadata = metadata
        self.nodeCount = regionByNode.count
        self.writeCount = writeByID.count
        self.pairs = samples.keys.sorted().map { pair in
            let (observed, missing) = samples[pair]!
            return Pair(
                from: pair.from, to: pair.to, floorMilliseconds: floorMilliseconds(pair.from, pair.to),
                latency: Distribution(observed: observed, missing: missing))
        }
        self.everywhere = Distribution(observed: everywhere, missing: missingWrites)
        self.maxOneWayMilliseconds = pairs.compactMap(\.floorMilliseconds).max()
        self.rejectedObservations = rejected
    }

    private struct RegionPair: Hashable, Comparable {
        let from: String
        let to: String

        static func < (lhs: Self, rhs: Self) -> Bool { (lhs.from, lhs.to) < (rhs.from, rhs.to) }
    }
}

// MARK: - Table

extension LatencyReport {
    /// One row per pair, then the visible-everywhere row and the missing count. Milliseconds with one decimal;
    /// "missing" where a percentile's rank falls on a missing delivery, "-" where there is nothing to show.
    public func table() -> String {
        let everywhereLabel = "visible everywhere"
        let fromWidth = ([4] + pairs.map(\.from.count)).max()!
        let toWidth = ([2, everywhereLabel.count - fromWidth - 3] + pairs.map(\.to.count)).max()!
        let labelWidth = fromWidth + 3 + toWidth
        let numberWidth = 9

        func row(_ label: String, _ cells: [String]) -> String {
            label.padded(to: labelWidth) + cells.map { $0.padded(to: numberWidth, alignRight: true) }.joined()
        }
        func cells(floor: Double?, _ latency: Distribution) -> [String] {
            [floor.map(Self.formatMilliseconds) ?? "-"]
                + [latency.p50, latency.p99, latency.max].map(Self.format)
                + [String(latency.count), String(latency.missing)]
        }

        var lines = [metadata.title, metadata.commandLine, summaryLine,
            "percentiles: nearest rank; a missing delivery ranks above every observed latency", ""]
        lines.append(
            row("from".padded(to: fromWidth) + " → " + "to", ["floor", "p50", "p99", "max", "n", "missing"]))
        for pair in pairs {
            lines.append(
                row(pair.from.padded(to: fromWidth) + " → " + pair.to,
                    cells(floor: pair.floorMilliseconds, pair.latency)))
        }
        lines.append(row(everywhereLabel, cells(floor: maxOneWayMilliseconds, everywhere)))
        lines.append("")
        lines.append("missing: \(missingWrites) of \(writeCount) writes were not seen on every node")
        if rejectedObservations > 0 {
            lines.append(
                "rejected: \(rejectedObservations) observations named no known write or node, "
                    + "disagreed with it, or had a negative or non-finite latency")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// "1000 writes at 200/s · loss 1% · 9 nodes · 2025-01-01T00:00:00Z"
    var summaryLine: String {
        var parts = ["\(writeCount) writes at \(Self.formatNumber(metadata.writesPerSecond))/s"]
        if let loss = metadata.lossPercent { parts.append("loss \(Self.formatNumber(loss))%") }
        parts.append("\(nodeCount) nodes")
        parts.append(metadata.date.ISO8601Format())
        return parts.joined(separator: " · ")
    }

    static func format(_ value: Value) -> String {
        switch value {
        case .milliseconds(let milliseconds): formatMilliseconds(milliseconds)
        case .missing: "missing"
        case .noSamples: "-"
        }
    }

    static func formatMilliseconds(_ milliseconds: Double) -> String { String(format: "%.1f", milliseconds) }

    /// Whole numbers without a decimal point, others as short as they print.
    static func formatNumber(_ number: Double) -> String {
        number == number.rounded() && abs(number) < 1e15 ? String(Int(number)) : String(format: "%g", number)
    }
}

private extension String {
    /// Pads by Characters, so "→" counts as one column.
    func padded(to width: Int, alignRight: Bool = false) -> String {
        let padding = String(repeating: " ", count: Swift.max(0, width - count))
        return alignRight ? padding + self : self + padding
    }
}

// MARK: - JSON

extension LatencyReport {
    /// Pretty, sorted keys, milliseconds rounded to the microsecond. Percentiles are null when missing or when
    /// there are no samples (tell them apart by `count` and `missing`); `floor_ms`, `max_one_way_ms` and
    /// `loss_percent` are null without an emulator.
    public func json() -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        // Latencies are checked finite on the way in, but floors and metadata come from the caller: write an
        // infinity as a string rather than fail.
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        // With that strategy, encoding these strings, numbers, dates and optionals cannot throw.
        return try! encoder.encode(JSONReport(self))
    }

    private struct JSONReport: Encodable {
        let report: LatencyReport

        init(_ report: LatencyReport) { self.report = report }

        enum Keys: String, CodingKey {
            case title, commandLine = "command_line", date, writes, ratePerSecond = "rate_per_second"
            case lossPercent = "loss_percent", nodes, overall, maxOneWay = "max_one_way_ms", pairs, missing
            case rejectedObservations = "rejected_observations", percentileMethod = "percentile_method"
        }

        func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: Keys.self)
            try container.encode(report.metadata.title, forKey: .title)
            try container.encode(report.metadata.commandLine, forKey: .commandLine)
            try container.encode(report.metadata.date, forKey: .date)
            try container.encode(report.writeCount, forKey: .writes)
            try container.encode(report.metadata.writesPerSecond, forKey: .ratePerSecond)
            try container.encode(report.metadata.lossPercent, forKey: .lossPercent)
            try container.encode(report.nodeCount, forKey: .nodes)
            try container.encode(JSONDistribution(report.everywhere), forKey: .overall)
            try container.encode(microseconds(report.maxOneWayMilliseconds), forKey: .maxOneWay)
            try container.encode(report.pairs.map(JSONPair.init), forKey: .pairs)
            try container.encode(report.missingWrites, forKey: .missing)
            try container.encode(report.rejectedObservations, forKey: .rejectedObservations)
            try container.encode(
                "nearest rank; a missing delivery ranks above every observed latency; null when the rank is missing",
                forKey: .percentileMethod)
        }
    }

    /// Keys of a distribution, and of a pair, which is a distribution with its regions and floor.
    private enum DistributionKeys: String, CodingKey {
        case p50 = "p50_ms", p99 = "p99_ms", max = "max_ms", count, missing, from, to, floor = "floor_ms"
    }

    private struct JSONDistribution: Encodable {
        let distribution: Distribution

        init(_ distribution: Distribution) { self.distribution = distribution }

        func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: DistributionKeys.self)
            try encode(into: &container)
        }

        /// Optionals are encoded explicitly so absent values appear as null instead of disappearing.
        func encode(into container: inout KeyedEncodingContainer<DistributionKeys>) throws {
            try container.encode(microseconds(distribution.p50.milliseconds), forKey: .p50)
            try container.encode(microseconds(distribution.p99.milliseconds), forKey: .p99)
            try container.encode(microseconds(distribution.max.milliseconds), forKey: .max)
            try container.encode(distribution.count, forKey: .count)
            try container.encode(distribution.missing, forKey: .missing)
        }
    }

    private struct JSONPair: Encodable {
        let pair: Pair

        func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: DistributionKeys.self)
            try container.encode(pair.from, forKey: .from)
            try container.encode(pair.to, forKey: .to)
            try container.encode(microseconds(pair.floorMilliseconds), forKey: .floor)
            try JSONDistribution(pair.latency).encode(into: &container)
        }
    }

    /// Digits past the microsecond are measurement noise that would only make the JSON harder to read.
    private static func microseconds(_ milliseconds: Double?) -> Double? {
        milliseconds.map { ($0 * 1000).rounded() / 1000 }
    }
}
