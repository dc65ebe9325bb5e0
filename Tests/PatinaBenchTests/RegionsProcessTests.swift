import Foundation
@testable import PatinaBench
import Testing

/// `patina bench regions` end to end on the small topology: real agents, real
/// QUIC with mutual TLS, every datagram through the WAN emulator.
@Suite struct RegionsProcessTests {
    /// The `patina` built next to the test binary, or `PATINA_BINARY`.
    static var binary: String {
        if let path = ProcessInfo.processInfo.environment["PATINA_BINARY"] { return path }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("patina").path
    }

    static var smallTopology: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("config/regions/small.toml").path
    }

    @Test(.timeLimit(.minutes(3))) func shortRunReportsEveryPairAboveThePhysicalFloor() throws {
        let topology = try WANTopology.load(path: Self.smallTopology)
        var bench = RegionsBenchmark(
            topology: topology, agentExecutable: Self.binary,
            directory: NSTemporaryDirectory() + "patina-regions-test-\(UUID().uuidString.prefix(8))")
        bench.writes = 60
        bench.rate = 30
        bench.warmUpRounds = 1
        let outcome = try bench.run(commandLine: "test", progress: { print($0) })
        let report = outcome.report
        print(report.table())
        #expect(!FileManager.default.fileExists(atPath: bench.directory), "scratch directory removed")
        #expect(outcome.errors.isEmpty, "\(outcome.errors)")
        #expect(report.writeCount == 60)
        #expect(report.missingWrites == 0)

        // Nothing beats the shortest path through the emulated links (less jitter per hop),
        // give or take how late the origin's own event reports its commit on a busy machine.
        let slack = 5.0
        let regions = topology.regions.map(\.name)
        let shortest = Self.shortestPaths(regions, topology)
        let pairs = report.pairs
        #expect(pairs.count == regions.count * (regions.count - 1))
        for pair in pairs {
            let fastest = try #require(pair.latency.observed.first)
            let bound = shortest[pair.from]![pair.to]! - 2 * topology.jitterMilliseconds - slack
            #expect(fastest >= bound, "\(pair.from)→\(pair.to): \(fastest) ms beats the emulated path (\(bound) ms)")
            #expect(pair.floorMilliseconds == topology.oneWayMilliseconds(from: pair.from, to: pair.to))
        }
        let p50 = try #require(report.everywhere.p50.milliseconds)
        #expect(p50 >= Self.eccentricity(shortest) - 2 * topology.jitterMilliseconds - slack)
        #expect(outcome.emulator.forwarded > 0 && outcome.emulator.droppedUnknownSource == 0)

        // The nodes' counters: every node applied the other nodes' writes, and
        // broadcast carried them (sync may add what was in flight).
        let delivery = outcome.delivery
        #expect(delivery.nodes == report.nodeCount)
        #expect(delivery.local >= 60, "\(delivery)")
        #expect(delivery.accountsForEveryChange, "\(delivery)")

        // Replication by the nodes' own account, as the writes ended: every node answered,
        // and no p99 beats the shortest emulated link (each node hears from other regions).
        let replication = try #require(outcome.replicationLagAtEnd)
        #expect(replication.nodeP99Milliseconds.count == report.nodeCount)
        let shortestLink = regions.flatMap { a in regions.filter { $0 != a }.map { shortest[a]![$0]! } }.min() ?? 0
        #expect(replication.median >= shortestLink - 2 * topology.jitterMilliseconds - slack, "\(replication.description)")

        // Every node labels its own lag histogram by the origin's region.
        for region in regions {
            let lag = try #require(outcome.nodeLagByOriginRegion[region], "no lag samples labelled \(region)")
            #expect(lag.count >= 2 * 20, "\(region): \(lag.count) applies")
        }

        let json = try #require(JSONSerialization.jsonObject(with: report.json()) as? [String: Any])
        let overall = try #require(json["overall"] as? [String: Any])
        for key in ["p50_ms", "p99_ms", "max_ms"] { #expect(overall[key] is Double, "overall.\(key)") }
        #expect(json["max_one_way_ms"] as? Double == topology.maxOneWayMilliseconds)
        let jsonPairs = try #require(json["pairs"] as? [[String: Any]])
        #expect(jsonPairs.count == pairs.count)
        for pair in jsonPairs {
            for key in ["from", "to", "p50_ms", "p99_ms", "max_ms", "floor_ms"] { #expect(pair[key] != nil, "pairs[].\(key)") }
        }
    }

    @Test(.timeLimit(.minutes(2))) func interruptStopsEveryAgentAndRemovesTheScratchDirectory() throws {
        let dir = NSTemporaryDirectory() + "patina-regions-int-\(UUID().uuidString.prefix(8))"
        let bench = Process()
        bench.executableURL = URL(fileURLWithPath: Self.binary)
        bench.arguments = ["bench", "regions", "--topology", Self.smallTopology, "--writes", "100000", "--rate", "20", "--dir", dir]
        let progress = dir + ".progress"
        _ = FileManager.default.createFile(atPath: progress, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: progress) }
        bench.standardOutput = FileHandle.nullDevice
        bench.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: progress))
        try bench.run()
        defer { if bench.isRunning { bench.terminate() } }
        // Interrupt in the middle of the measurement, with all three agents running.
        let measuring = pollUntil(.seconds(60)) {
            let text = (try? String(contentsOfFile: progress, encoding: .utf8)) ?? ""
            return text.contains("written") && Self.agentCount(in: dir) == 3
        }
        #expect(measuring)
        kill(bench.processIdentifier, SIGINT)
        let ended = pollUntil(.seconds(30)) { !bench.isRunning }
        #expect(ended, "bench regions still running 30 s after SIGINT")
        guard ended else { return }
        #expect(bench.terminationStatus == 128 + SIGINT)
        #expect(Self.agentCount(in: dir) == 0, "agents outlived the interrupted benchmark")
        #expect(!FileManager.default.fileExists(atPath: dir))
    }

    /// `patina agent` processes whose command line names `dir`.
    static func agentCount(in dir: String) -> Int {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.filter { pid in
            guard Int(pid) != nil, let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let line = String(decoding: raw.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            return line.contains(" agent ") && line.contains(dir)
        }.count
    }

    /// Floyd–Warshall over the one-way delays.
    static func shortestPaths(_ regions: [String], _ topology: WANTopology) -> [String: [String: Double]] {
        var d: [String: [String: Double]] = [:]
        for a in regions { for b in regions { d[a, default: [:]][b] = a == b ? 0 : topology.oneWayMilliseconds(from: a, to: b) } }
        for k in regions { for i in regions { for j in regions where d[i]![k]! + d[k]![j]! < d[i]![j]! {
            d[i]![j] = d[i]![k]! + d[k]![j]!
        } } }
        return d
    }

    /// The smallest, over origins, of the farthest shortest path: no write can be everywhere sooner.
    static func eccentricity(_ d: [String: [String: Double]]) -> Double {
        d.values.map { $0.values.max()! }.min()!
    }
}

/// `patina bench live` against a running three-node cluster (no emulator).
@Suite struct LiveProcessTests {
    @Test(.timeLimit(.minutes(2))) func measuresEveryNodeAndRemovesItsProbeRows() throws {
        let root = NSTemporaryDirectory() + "patina-live-test-\(UUID().uuidString.prefix(8))"
        let cluster = try LocalCluster(
            root: root, agentExecutable: RegionsProcessTests.binary,
            nodes: [("a", "here"), ("b", "here"), ("c", "here")], schema: RegionsBenchmark.probeSchema)
        defer { cluster.remove() }
        try cluster.writeConfigs(externalAddress: { $0.gossipAddress }, bootstrap: [cluster.nodes[0].gossipAddress])
        try cluster.start()
        try cluster.waitUntilConverged(timeout: .seconds(60))

        var bench = LiveBenchmark(apis: try cluster.nodes.map { try LiveBenchmark.target("http://127.0.0.1:\($0.apiPort)/") })
        bench.writes = 30
        bench.rate = 30
        let outcome = try bench.run(commandLine: "test", progress: { print($0) })
        print(outcome.report.table())
        #expect(outcome.errors.isEmpty, "\(outcome.errors)")
        #expect(outcome.rttMilliseconds.count == 3 && outcome.rttMilliseconds.values.allSatisfy { $0 > 0 && $0 < 1000 })
        let report = outcome.report
        #expect(report.writeCount == 30 && report.missingWrites == 0)
        // Writes go through the first API: one pair to each other node, no floors.
        let first = "127.0.0.1:\(cluster.nodes[0].apiPort)"
        #expect(report.pairs.map(\.from) == [first, first])
        #expect(report.pairs.allSatisfy { $0.floorMilliseconds == nil && $0.latency.count == 30 })

        // The probe rows are deleted afterwards, on every node.
        for node in cluster.nodes {
            let gone = pollUntil(.seconds(20)) {
                let text = try? node.client.send("POST", "/v1/queries", body: Data("\"SELECT count(*) FROM patina_probe\"".utf8)).text
                return text?.contains("[0]") == true
            }
            #expect(gone, "probe rows left on \(node.name)")
        }
    }
}
