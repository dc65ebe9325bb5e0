import Foundation
import PatinaCore
import Testing

@testable import PatinaBench

#if canImport(FoundationXML)
    import FoundationXML
#endif

@Suite struct LatencyReportTests {
    // MARK: Percentiles

    @Test func nearestRankOnOneToAHundred() {
        var rng = SplitMix64(seed: 1)
        let latency = LatencyReport.Distribution(observed: (1...100).map(Double.init).shuffled(using: &rng))
        #expect(latency.p50 == .milliseconds(50))
        #expect(latency.p99 == .milliseconds(99))
        #expect(latency.max == .milliseconds(100))
        #expect(latency.percentile(1) == .milliseconds(1))
    }

    @Test func oneSampleIsEveryPercentile() {
        let latency = LatencyReport.Distribution(observed: [7.5])
        #expect([latency.p50, latency.p99, latency.max] == Array(repeating: .milliseconds(7.5), count: 3))
    }

    @Test func sustainedRateCountsAnsweredWritesFromFirstToLastAnswer() {
        let writes = [
            ProbeMeasurements.Write(id: 1, origin: 0, answeredAt: 5_000_000_000),
            ProbeMeasurements.Write(id: 2, origin: 1, answeredAt: nil),  // failed: not counted
            ProbeMeasurements.Write(id: 3, origin: 0, answeredAt: 5_500_000_000),
            ProbeMeasurements.Write(id: 4, origin: 1, answeredAt: 6_000_000_000),
        ]
        let measured = ProbeMeasurements(nodes: [], writes: writes, seen: [], rttMilliseconds: [])
        #expect(measured.sustainedWritesPerSecond == 2)
        #expect(ProbeMeasurements(nodes: [], writes: Array(writes.prefix(2)), seen: [], rttMilliseconds: []).sustainedWritesPerSecond == 0)
    }

    @Test func replicationLagComesFromHealthAnswers() throws {
        let body = "{\"response\":{\"gaps\":0,\"members\":15,\"p99_lag\":0.243,\"queue_size\":3}}\n"
        #expect(try #require(RegionsBenchmark.healthP99LagMilliseconds(body)) == 243)
        #expect(RegionsBenchmark.healthP99LagMilliseconds("{\"error\":\"x\"}") == nil)
        #expect(RegionsBenchmark.healthP99LagMilliseconds("not json") == nil)
        let lag = try #require(RegionsBenchmark.ReplicationLag(nodeP99Milliseconds: [300, 100, 200]))
        #expect(lag.median == 200 && lag.max == 300)
        #expect(RegionsBenchmark.ReplicationLag(nodeP99Milliseconds: []) == nil)
    }

    @Test func noSamplesHaveNoPercentiles() {
        let latency = LatencyReport.Distribution(observed: [])
        #expect([latency.p50, latency.p99, latency.max] == Array(repeating: .noSamples, count: 3))
        #expect(latency.p50.milliseconds == nil)
    }

    @Test func missingDeliveriesRankAboveEveryLatency() {
        let onePercentMissing = LatencyReport.Distribution(observed: (1...99).map(Double.init), missing: 1)
        #expect(onePercentMissing.p50 == .milliseconds(50))
        #expect(onePercentMissing.p99 == .milliseconds(99))
        #expect(onePercentMissing.max == .missing)

        let twoPercentMissing = LatencyReport.Distribution(observed: (1...98).map(Double.init), missing: 2)
        #expect(twoPercentMissing.p50 == .milliseconds(50))
        #expect(twoPercentMissing.p99 == .missing)

        let allMissing = LatencyReport.Distribution(observed: [], missing: 3)
        #expect(allMissing.p50 == .missing)
    }

    // MARK: Pairs and visible everywhere

    @Test func pairsExcludeOwnNodeAndCountMissingDeliveries() {
        let report = Fixture.report()
        #expect(report.pairs.map { "\($0.from)→\($0.to)" } == ["a→a", "a→b", "a→c", "b→a", "b→c"])
        let latencies = Dictionary(uniqueKeysWithValues: report.pairs.map { ("\($0.from)→\($0.to)", $0.latency) })
        // Own-node observations (0 ms) would show as 0 here; the duplicate at 45 ms loses to the earlier 40 ms.
        #expect(latencies["a→a"] == .init(observed: [5, 6]))
        #expect(latencies["a→b"] == .init(observed: [40, 41]))
        #expect(latencies["a→c"] == .init(observed: [60], missing: 1))
        #expect(latencies["b→a"] == .init(observed: [42, 44]))
        #expect(latencies["b→c"] == .init(observed: [70]))
        #expect(report.pairs.map(\.floorMilliseconds) == [2, 40, 55, 40, 65])
        #expect(report.maxOneWayMilliseconds == 65)
        #expect(report.nodeCount == 4)
        #expect(report.writeCount == 3)
        #expect(report.rejectedObservations == 3)
    }

    @Test func visibleEverywhereIsTheSlowestNodeAndMissingWritesCount() {
        let report = Fixture.report()
        // Write 1: max(5, 40, 60); write 2: max(42, 44, 70); write 3 never reached c1.
        #expect(report.everywhere == .init(observed: [60, 70], missing: 1))
        #expect(report.missingWrites == 1)
        #expect(report.everywhere.p50 == .milliseconds(70))
        #expect(report.everywhere.p99 == .missing)
        #expect(report.everywhere.max == .missing)
    }

    @Test func aOneNodeClusterSeesEveryWriteAtOnce() {
        let report = LatencyReport(
            metadata: Fixture.metadata, nodes: [.init(name: "solo", region: "solo")],
            writes: [.init(id: 1, originRegion: "solo", originNode: "solo")], observations: [])
        #expect(report.pairs.isEmpty)
        #expect(report.everywhere == .init(observed: [0]))
    }

    // MARK: Table

    @Test func tableRowsAreSortedFixedWidthWithOneDecimal() {
        let lines = Fixture.report().table().split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let header = lines.firstIndex { $0.hasPrefix("from") }!
        #expect(lines[header] == "from → to             floor      p50      p99      max        n  missing")
        #expect(lines[header + 1] == "a    → a                2.0      5.0      6.0      6.0        2        0")
        #expect(lines[header + 3] == "a    → c               55.0     60.0  missing  missing        1        1")
        #expect(lines[header + 5] == "b    → c               65.0     70.0     70.0     70.0        1        0")
        #expect(lines[header + 6] == "visible everywhere     65.0     70.0  missing  missing        2        1")
        #expect(lines.contains("missing: 1 of 3 writes were not seen on every node"))
        #expect(lines.contains { $0.hasPrefix("rejected: 3 observations") })
        #expect(lines[2] == "3 writes at 100/s · loss 0.5% · 4 nodes · 2025-01-02T03:04:05Z")
    }

    @Test func emptyReportTableShowsAbsentValues() {
        let report = LatencyReport(metadata: Fixture.metadata, nodes: [], writes: [], observations: [])
        #expect(report.table().contains("visible everywhere        -        -        -        -        0        0"))
    }

    // MARK: JSON

    @Test func jsonHasEveryDocumentedField() throws {
        let json = try #require(try JSONSerialization.jsonObject(with: Fixture.report().json()) as? [String: Any])
        #expect(json["title"] as? String == "fixture <&> \"run\"")
        #expect(json["command_line"] as? String == "patina bench regions --writes 3")
        #expect(json["date"] as? String == "2025-01-02T03:04:05Z")
        #expect(json["writes"] as? Int == 3)
        #expect(json["rate_per_second"] as? Double == 100)
        #expect(json["loss_percent"] as? Double == 0.5)
        #expect(json["nodes"] as? Int == 4)
        #expect(json["missing"] as? Int == 1)
        #expect(json["rejected_observations"] as? Int == 3)
        #expect(json["max_one_way_ms"] as? Double == 65)
        #expect((json["percentile_method"] as? String)?.hasPrefix("nearest rank") == true)

        let overall = try #require(json["overall"] as? [String: Any])
        #expect(overall["p50_ms"] as? Double == 70)
        #expect(overall["p99_ms"] is NSNull)
        #expect(overall["max_ms"] is NSNull)
        #expect(overall["count"] as? Int == 2)
        #expect(overall["missing"] as? Int == 1)

        let pairs = try #require(json["pairs"] as? [[String: Any]])
        #expect(pairs.count == 5)
        #expect(pairs.map { "\($0["from"] as? String ?? "?")→\($0["to"] as? String ?? "?")" }
            == ["a→a", "a→b", "a→c", "b→a", "b→c"])
        let aToC = pairs[2]
        #expect(aToC["floor_ms"] as? Double == 55)
        #expect(aToC["p50_ms"] as? Double == 60)
        #expect(aToC["p99_ms"] is NSNull)
        #expect(aToC["max_ms"] is NSNull)
        #expect(aToC["count"] as? Int == 1)
        #expect(aToC["missing"] as? Int == 1)
        let bToA = pairs[3]
        #expect(bToA["p50_ms"] as? Double == 42)
        #expect(bToA["p99_ms"] as? Double == 44)
        #expect(bToA["max_ms"] as? Double == 44)
        #expect(bToA["count"] as? Int == 2)
    }

    @Test func jsonWithoutEmulatorHasNullFloors() throws {
        let report = Fixture.liveReport()
        let json = try #require(try JSONSerialization.jsonObject(with: report.json()) as? [String: Any])
        #expect(json["max_one_way_ms"] is NSNull)
        #expect(json["loss_percent"] is NSNull)
        let pairs = try #require(json["pairs"] as? [[String: Any]])
        #expect(pairs.count == 6)
        #expect(pairs.allSatisfy { $0["floor_ms"] is NSNull })
    }

    @Test func jsonRoundsToTheMicrosecond() throws {
        let report = LatencyReport(
            metadata: Fixture.metadata,
            nodes: [.init(name: "x1", region: "x"), .init(name: "y1", region: "y")],
            writes: [.init(id: 1, originRegion: "x", originNode: "x1")],
            observations: [
                .init(originRegion: "x", originNode: "x1", destinationRegion: "y", destinationNode: "y1",
                      writeID: 1, milliseconds: 12.3456789)
            ])
        let json = try #require(try JSONSerialization.jsonObject(with: report.json()) as? [String: Any])
        let overall = try #require(json["overall"] as? [String: Any])
        #expect(overall["p50_ms"] as? Double == 12.346)
    }

    @Test func emptyReportJSONHasNullPercentiles() throws {
        let report = LatencyReport(metadata: Fixture.metadata, nodes: [], writes: [], observations: [])
        let json = try #require(try JSONSerialization.jsonObject(with: report.json()) as? [String: Any])
        let overall = try #require(json["overall"] as? [String: Any])
        #expect(["p50_ms", "p99_ms", "max_ms"].allSatisfy { overall[$0] is NSNull })
        #expect(json["pairs"] as? [Any] != nil)
    }

    // MARK: SVG

    @Test func svgHasAPanelPerDestinationACurveAndADashedFloorPerPair() throws {
        let report = Fixture.report()
        let svg = try SVGDocument(report.svg())
        #expect(svg.panelTitles == ["seen in a", "seen in b", "seen in c", "visible everywhere"])
        #expect(svg.root?.name == "svg" && svg.root?.attributes["version"] == "1.1")
        #expect(svg.elements.first { $0.name == "title" }?.text == "fixture <&> \"run\"")

        let curves = svg.elements.filter { $0.attributes["class"] == "cdf" }
        let floors = svg.elements.filter { $0.attributes["class"] == "floor" }
        for pair in report.pairs {
            let panel = svg.panelTitles.firstIndex(of: "seen in \(pair.to)")
            let curve = try #require(curves.first { $0.title.hasPrefix("\(pair.from) → \(pair.to):") })
            let floor = try #require(floors.first { $0.title.hasPrefix("\(pair.from) → \(pair.to) floor") })
            #expect(curve.panel == panel && floor.panel == panel)
            #expect(floor.attributes["stroke-dasharray"] != nil)
            #expect(floor.attributes["stroke"] == curve.attributes["stroke"])
        }
        #expect(curves.count == report.pairs.count + 1)
        #expect(floors.count == report.pairs.count)
        // Origins keep one colour across panels.
        #expect(Set(curves.filter { $0.title.hasPrefix("a → ") }.map { $0.attributes["stroke"] }).count == 1)
        #expect(curves.first { $0.title.hasPrefix("a → ") }?.attributes["stroke"]
            != curves.first { $0.title.hasPrefix("b → ") }?.attributes["stroke"])

        let everywhere = svg.panelTitles.count - 1
        #expect(curves.filter { $0.panel == everywhere }.count == 1)
        let maxOneWay = svg.elements.filter { $0.attributes["class"] == "max-one-way" }
        #expect(maxOneWay.count == 1 && maxOneWay.first?.panel == everywhere)
    }

    @Test func svgWithoutEmulatorHasNoFloorLines() throws {
        let svg = try SVGDocument(Fixture.liveReport().svg())
        #expect(svg.panelTitles == ["seen in n1", "seen in n2", "seen in n3", "visible everywhere"])
        #expect(svg.elements.filter { $0.attributes["class"] == "cdf" }.count == 7)
        #expect(!svg.elements.contains { ["floor", "max-one-way"].contains($0.attributes["class"]) })
    }

    @Test func emptyReportSVGHasOnlyTheEverywherePanel() throws {
        let report = LatencyReport(metadata: Fixture.metadata, nodes: [], writes: [], observations: [])
        let svg = try SVGDocument(report.svg())
        #expect(svg.panelTitles == ["visible everywhere"])
        #expect(!svg.elements.contains { $0.attributes["class"] == "cdf" })
    }

    @Test func cdfPointsAreDownsampledByRankAndCountMissing() {
        let points = LatencyChart.cdfPoints(
            .init(observed: (1...100_000).map(Double.init), missing: 0), maximumSteps: 249)
        #expect(points.count == 249)
        #expect(points.last! == (100_000, 1))
        #expect(zip(points, points.dropFirst()).allSatisfy { $0.x <= $1.x && $0.y < $1.y })

        let halfMissing = LatencyChart.cdfPoints(.init(observed: [60], missing: 1), maximumSteps: 249)
        #expect(halfMissing.count == 1 && halfMissing[0] == (60, 0.5))
    }

    @Test func axisEndsOnARoundNumber() {
        #expect(LatencyChart.axis(covering: 187 * 1.05) == (200, 50))
        #expect(LatencyChart.axis(covering: 9.3) == (10, 2))
        #expect(LatencyChart.axis(covering: 0) == (1, 0.25))
    }

    /// 100k observations stay a small file. Set PATINA_REPORT_EXAMPLE to a path to keep the chart for a look.
    @Test func largeRunStaysSmall() throws {
        let report = Fixture.largeReport()
        #expect(report.pairs.reduce(0) { $0 + $1.latency.expected } == 100_000)
        let text = report.svg()
        if let path = ProcessInfo.processInfo.environment["PATINA_REPORT_EXAMPLE"] {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
        }
        let svg = try SVGDocument(text)
        let curves = svg.elements.filter { $0.attributes["class"] == "cdf" }
        #expect(curves.count == report.pairs.count + 1)
        for curve in curves {
            let points = curve.attributes["d", default: ""].filter { "MHV".contains($0) }.count
            #expect(points <= LatencyChart.maximumPointsPerCurve)
        }
        #expect(text.utf8.count < 150_000)
    }
}

// MARK: - Fixtures

private enum Fixture {
    static let metadata = LatencyReport.Metadata(
        title: "fixture <&> \"run\"", commandLine: "patina bench regions --writes 3", writesPerSecond: 100,
        lossPercent: 0.5, date: Date(timeIntervalSince1970: 1_735_787_045))

    /// Regions a (a1, a2), b (b1), c (c1); writes 1 from a1, 2 from b1, 3 from a2, which never reaches c1.
    static func report() -> LatencyReport {
        let nodes: [LatencyReport.Node] = [
            .init(name: "a1", region: "a"), .init(name: "a2", region: "a"),
            .init(name: "b1", region: "b"), .init(name: "c1", region: "c"),
        ]
        let writes: [LatencyReport.Write] = [
            .init(id: 1, originRegion: "a", originNode: "a1"),
            .init(id: 2, originRegion: "b", originNode: "b1"),
            .init(id: 3, originRegion: "a", originNode: "a2"),
        ]
        let seen: [(write: Int, node: String, milliseconds: Double)] = [
            (1, "a1", 0), (1, "a2", 5), (1, "b1", 45), (1, "b1", 40), (1, "c1", 60),
            (2, "b1", 0), (2, "a1", 42), (2, "a2", 44), (2, "c1", 70),
            (3, "a2", 0), (3, "a1", 6), (3, "b1", 41),
        ]
        var observations = seen.map { seen in
            let write = writes.first { $0.id == seen.write }!
            let node = nodes.first { $0.name == seen.node }!
            return LatencyObservation(
                originRegion: write.originRegion, originNode: write.originNode, destinationRegion: node.region,
                destinationNode: node.name, writeID: write.id, milliseconds: seen.milliseconds)
        }
        observations += [
            .init(originRegion: "a", originNode: "a1", destinationRegion: "b", destinationNode: "b1",
                  writeID: 99, milliseconds: 1),
            .init(originRegion: "a", originNode: "a1", destinationRegion: "c", destinationNode: "b1",
                  writeID: 1, milliseconds: 1),
            .init(originRegion: "a", originNode: "a1", destinationRegion: "c", destinationNode: "c1",
                  writeID: 1, milliseconds: .nan),
        ]
        return LatencyReport(
            metadata: metadata, nodes: nodes, writes: writes, observations: observations,
            floorMilliseconds: configuredFloor)
    }

    /// Not optional, as the WAN configuration's would be: the report takes it where it expects `Double?`.
    static func configuredFloor(from: String, to: String) -> Double {
        ["aa": 2, "ab": 40, "ac": 55, "ba": 40, "bc": 65][from + to] ?? 1
    }

    /// `bench live`: each node its own region, no floors, every write seen everywhere.
    static func liveReport() -> LatencyReport {
        let names = ["n1", "n2", "n3"]
        let writes = names.enumerated().map { LatencyReport.Write(id: $0, originRegion: $1, originNode: $1) }
        let observations = writes.flatMap { write in
            names.map { name in
                LatencyObservation(
                    originRegion: write.originNode, originNode: write.originNode, destinationRegion: name,
                    destinationNode: name, writeID: write.id, milliseconds: Double(write.id + 1) * 3)
            }
        }
        var metadata = Self.metadata
        metadata.lossPercent = nil
        return LatencyReport(
            metadata: metadata, nodes: names.map { .init(name: $0, region: $0) }, writes: writes,
            observations: observations)
    }

    /// Three regions of three nodes, 12 500 writes: 100k deliveries, a few lost.
    static func largeReport() -> LatencyReport {
        let regions = ["eu-west", "us-east", "ap-south"]
        let floors = [
            "eu-west": ["eu-west": 1.0, "us-east": 40, "ap-south": 75],
            "us-east": ["eu-west": 40.0, "us-east": 1, "ap-south": 110],
            "ap-south": ["eu-west": 75.0, "us-east": 110, "ap-south": 1],
        ]
        let nodes = regions.flatMap { region in
            (1...3).map { LatencyReport.Node(name: "\(region)-\($0)", region: region) }
        }
        var rng = SplitMix64(seed: 2025)
        var writes: [LatencyReport.Write] = []
        var observations: [LatencyObservation] = []
        for id in 0..<12_500 {
            let origin = nodes[Int(rng.next() % UInt64(nodes.count))]
            writes.append(.init(id: id, originRegion: origin.region, originNode: origin.name))
            for destination in nodes where destination.name != origin.name {
                guard Double.random(in: 0..<1, using: &rng) >= 0.0005 else { continue }
                let floor = floors[origin.region]![destination.region]!
                // A retransmission after a lost packet costs about one more round trip.
                let retransmit = Double.random(in: 0..<1, using: &rng) < 0.01 ? 2 * floor + 20 : 0
                let jitter = -log(Double.random(in: Double.ulpOfOne..<1, using: &rng)) * 4
                observations.append(
                    .init(
                        originRegion: origin.region, originNode: origin.name, destinationRegion: destination.region,
                        destinationNode: destination.name, writeID: id, milliseconds: floor + 2 + jitter + retransmit))
            }
        }
        let metadata = LatencyReport.Metadata(
            title: "bench regions: 3 regions × 3 nodes",
            commandLine: "patina bench regions --writes 12500 --rate 500 --loss 1",
            writesPerSecond: 500, lossPercent: 1, date: Date(timeIntervalSince1970: 1_735_787_045))
        return LatencyReport(
            metadata: metadata, nodes: nodes, writes: writes, observations: observations,
            floorMilliseconds: { floors[$0]![$1]! })
    }
}

/// The parsed elements of an SVG, each with the panel it is drawn in and the text of its `<title>`.
private final class SVGDocument: NSObject, XMLParserDelegate {
    struct Element {
        let name: String
        let attributes: [String: String]
        let panel: Int?
        var title = ""
        var text = ""
    }

    struct ParseError: Error { let underlying: Error? }

    private(set) var elements: [Element] = []
    private var open: [Int] = []
    private var panelCount = 0

    init(_ text: String) throws {
        super.init()
        let parser = XMLParser(data: Data(text.utf8))
        parser.delegate = self
        guard parser.parse() else { throw ParseError(underlying: parser.parserError) }
    }

    var root: Element? { elements.first }

    /// Each panel's first text, its heading.
    var panelTitles: [String] {
        (0..<panelCount).map { panel in elements.first { $0.panel == panel && $0.name == "text" }?.text ?? "" }
    }

    func parser(
        _ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?, qualifiedName: String?,
        attributes: [String: String] = [:]
    ) {
        var panel = open.last.flatMap { elements[$0].panel }
        if elementName == "g" && attributes["class"] == "panel" {
            panel = panelCount
            panelCount += 1
        }
        elements.append(Element(name: elementName, attributes: attributes, panel: panel))
        open.append(elements.count - 1)
    }

    func parser(_ parser: XMLParser, didEndElement elementName: String, namespaceURI: String?, qualifiedName: String?) {
        open.removeLast()
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) {
        guard let current = open.last else { return }
        elements[current].text += string
        if elements[current].name == "title", let parent = open.dropLast().last {
            elements[parent].title += string
        }
    }
}
