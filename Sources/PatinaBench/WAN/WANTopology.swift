import Foundation
import TOMLKit

/// A problem with a topology file, an override or the emulator's node list: one line,
/// naming the file and the key (or the node) at fault.
public struct WANError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
}

/// Regions of an emulated cluster and the links between them, read from a TOML file
/// (`config/regions/*.toml`):
///
/// ```toml
/// jitter_ms = 2.0         # optional, default 0: uniform in [-jitter, +jitter], never below 0 ms
/// loss = 0.0              # optional, default 0: drop probability per datagram and direction, in [0, 1)
/// rate_mbit = 0           # optional, 0 = unlimited: per directed link between two regions
/// intra_region_ms = 0.5   # optional, default 0: one-way delay between nodes of one region
///
/// [[region]]
/// name = "fra"            # letters, digits, _ (the delay keys join two names with "-")
/// label = "Frankfurt"     # optional
/// nodes = 3               # optional, default 1
///
/// [delays]                # one-way ms, symmetric; every pair of distinct regions MUST appear once
/// fra-iad = 44.3
/// ```
public struct WANTopology: Sendable, Equatable {
    public struct Region: Sendable, Equatable {
        public var name: String
        public var label: String
        public var nodes: Int
    }

    public private(set) var regions: [Region]
    public private(set) var jitterMilliseconds: Double
    public private(set) var loss: Double
    /// 0 means unlimited. Applies to links between distinct regions only: a region's own
    /// network is not the bottleneck a WAN link is.
    public private(set) var rateMegabitsPerSecond: Double
    public private(set) var intraRegionMilliseconds: Double
    private var delays: [RegionPair: Double]

    /// The largest configured one-way delay, jitter not included.
    public var maxOneWayMilliseconds: Double {
        max(delays.values.max() ?? 0, intraRegionMilliseconds)
    }

    /// One-way delay from a region to another (the intra-region delay when they are the same).
    /// Both names MUST be regions of this topology.
    public func oneWayMilliseconds(from: String, to: String) -> Double {
        if from == to { return intraRegionMilliseconds }
        guard let delay = delays[RegionPair(from, to)] else {
            preconditionFailure("WANTopology: no delay between \(from) and \(to)")
        }
        return delay
    }

    /// The same topology with the CLI's overrides (`--loss P`, nodes per region) applied.
    public func overriding(loss: Double? = nil, nodesPerRegion: Int? = nil) throws -> WANTopology {
        var copy = self
        if let loss {
            guard loss >= 0, loss < 1 else { throw WANError(message: "loss \(loss) must be in [0, 1)") }
            copy.loss = loss
        }
        if let nodesPerRegion {
            guard nodesPerRegion >= 1 else {
                throw WANError(message: "nodes per region \(nodesPerRegion) must be at least 1")
            }
            for index in copy.regions.indices { copy.regions[index].nodes = nodesPerRegion }
        }
        return copy
    }

    public static func load(path: String) throws -> WANTopology {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8)
        else { throw WANError(message: "topology \(path): cannot read the file") }
        return try WANTopology(toml: text, file: path)
    }

    /// `file` only names the source in error messages.
    public init(toml: String, file: String = "<topology>") throws {
        let root: TOMLTable
        do { root = try TOMLTable(string: toml) } catch let error as TOMLParseError {
            let reason = error.description.split(whereSeparator: \.isNewline).joined(separator: " ")
            throw WANError(message: "topology \(file): line \(error.source.begin.line): \(reason)")
        }
        let reader = TopologyReader(file: file)
        try reader.checkKeys(root, allowed: ["jitter_ms", "loss", "rate_mbit", "intra_region_ms", "region", "delays"])
        jitterMilliseconds = try reader.nonNegative(root["jitter_ms"], key: "jitter_ms") ?? 0
        loss = try reader.nonNegative(root["loss"], key: "loss") ?? 0
        guard loss < 1 else { throw reader.error("loss must be in [0, 1)") }
        rateMegabitsPerSecond = try reader.nonNegative(root["rate_mbit"], key: "rate_mbit") ?? 0
        intraRegionMilliseconds = try reader.nonNegative(root["intra_region_ms"], key: "intra_region_ms") ?? 0
        regions = try reader.regions(root["region"])
        delays = try reader.delays(root["delays"], regions: regions)
    }
}

/// An unordered pair of region names: delays are symmetric.
private struct RegionPair: Hashable, Sendable {
    let first: String
    let second: String
    init(_ a: String, _ b: String) {
        (first, second) = a < b ? (a, b) : (b, a)
    }
}

private struct TopologyReader {
    let file: String

    func error(_ text: String) -> WANError { WANError(message: "topology \(file): \(text)") }

    func checkKeys(_ table: TOMLTable, allowed: Set<String>, prefix: String = "") throws {
        for key in table.keys.sorted() where !allowed.contains(key) {
            throw error("unknown key \(prefix)\(key)")
        }
    }

    /// TOML keeps integers and floats apart; a delay of `45` means 45.0 here.
    func number(_ value: TOMLValueConvertible, key: String) throws -> Double {
        guard let number = value.double ?? value.int.map(Double.init), number.isFinite else {
            throw error("\(key) must be a number")
        }
        return number
    }

    func nonNegative(_ value: TOMLValueConvertible?, key: String) throws -> Double? {
        guard let value else { return nil }
        let number = try number(value, key: key)
        guard number >= 0 else { throw error("\(key) must not be negative") }
        return number
    }

    func regions(_ value: TOMLValueConvertible?) throws -> [WANTopology.Region] {
        guard let array = value?.array, !array.isEmpty else {
            throw error("missing key region (at least one [[region]] table)")
        }
        var regions: [WANTopology.Region] = []
        for (index, element) in array.enumerated() {
            let path = "region[\(index)]"
            guard let table = element.table else { throw error("\(path) must be a table ([[region]])") }
            try checkKeys(table, allowed: ["name", "label", "nodes"], prefix: "\(path).")
            guard let nameValue = table["name"] else { throw error("missing key \(path).name") }
            guard let name = nameValue.string else { throw error("\(path).name must be a string") }
            guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) else {
                throw error("\(path).name \"\(name)\" must be letters, digits or _ (delay keys join names with -)")
            }
            guard !regions.contains(where: { $0.name == name }) else {
                throw error("\(path).name: duplicate region \(name)")
            }
            var label = name
            if let labelValue = table["label"] {
                guard let text = labelValue.string else { throw error("\(path).label must be a string") }
                label = text
            }
            var nodes = 1
            if let nodesValue = table["nodes"] {
                guard let count = nodesValue.int, count >= 1 else {
                    throw error("\(path).nodes must be an integer of at least 1")
                }
                nodes = count
            }
            regions.append(WANTopology.Region(name: name, label: label, nodes: nodes))
        }
        return regions
    }

    func delays(_ value: TOMLValueConvertible?, regions: [WANTopology.Region]) throws -> [RegionPair: Double] {
        let names = Set(regions.map(\.name))
        var delays: [RegionPair: Double] = [:]
        var keyOfPair: [RegionPair: String] = [:]
        if let value {
            guard let table = value.table else { throw error("delays must be a table") }
            for key in table.keys.sorted() {
                let parts = key.split(separator: "-", omittingEmptySubsequences: false).map(String.init)
                guard parts.count == 2 else { throw error("delays.\(key): key must be two region names joined by -") }
                for part in parts where !names.contains(part) {
                    throw error("delays.\(key): unknown region \(part)")
                }
                guard parts[0] != parts[1] else {
                    throw error("delays.\(key): a region to itself is intra_region_ms")
                }
                let pair = RegionPair(parts[0], parts[1])
                if let earlier = keyOfPair[pair] { throw error("delays.\(key) repeats delays.\(earlier)") }
                delays[pair] = try nonNegative(table[key], key: "delays.\(key)")
                keyOfPair[pair] = key
            }
        }
        for (i, a) in regions.enumerated() {
            for b in regions[(i + 1)...] where delays[RegionPair(a.name, b.name)] == nil {
                throw error("missing key delays.\(a.name)-\(b.name)")
            }
        }
        return delays
    }
}
