import Foundation
import PatinaNode
import Synchronization

/// `patina bench regions`: a local cluster of real agents whose node-to-node
/// traffic all passes through the WAN emulator, probe writes on nodes of every
/// region at a fixed rate, and the time until each is visible on every node.
public struct RegionsBenchmark: Sendable {
    public var topology: WANTopology
    public var writes = 1000
    public var rate = 100.0
    /// Concurrent API clients writing to each node (see ``ProbeRun/run(count:rate:clientsPerWriter:settle:rttMilliseconds:progress:)``).
    public var clientsPerNode = 8
    /// The `patina` executable that runs the agents.
    public var agentExecutable: String
    /// Scratch directory for certificates, configs and databases (removed afterwards).
    public var directory: String
    /// Keep the directory (configs, logs, databases) for a post-mortem.
    public var keep = false
    /// Warm-up rounds (one write per node each, not measured) before the run.
    public var warmUpRounds = 3
    public var seed = UInt64.random(in: 0...UInt64.max)

    public static let probeSchema = "CREATE TABLE patina_probe (id INTEGER NOT NULL PRIMARY KEY, node TEXT NOT NULL DEFAULT '');\n"

    public init(topology: WANTopology, agentExecutable: String, directory: String) {
        self.topology = topology
        self.agentExecutable = agentExecutable
        self.directory = directory
    }

    public struct Outcome: Sendable {
        public var report: LatencyReport
        public var emulator: WANStats
        /// The nodes' own `patina_propagation_lag_seconds` histograms, summed over
        /// nodes: origin region → (count, sum in seconds).
        public var nodeLagByOriginRegion: [String: (count: Double, sumSeconds: Double)]
        public var errors: [String]
        /// What the measured writes cost, summed over the whole cluster.
        public var cost: Cost
        /// How changesets reached the nodes, summed over nodes (whole run).
        public var delivery: Delivery
        /// Each node's own p99 lag (`GET /v1/health`: origin commit → apply, its last 1024
        /// remote commits), read at the first progress report after the last write was
        /// sent (within a second); nil when no node answered.
        public var replicationLagAtEnd: ReplicationLag?
    }

    /// The nodes' own view of how far replication is behind, apart from what the
    /// watchers saw: when the two differ, the difference is the update streams (the
    /// subscribers' side), not replication.
    public struct ReplicationLag: Sendable, Equatable {
        /// p99 lag of each node that answered, milliseconds, ascending.
        public var nodeP99Milliseconds: [Double]

        public init?(nodeP99Milliseconds: [Double]) {
            guard !nodeP99Milliseconds.isEmpty else { return nil }
            self.nodeP99Milliseconds = nodeP99Milliseconds.sorted()
        }

        /// The middle node's (the upper one of the two middle nodes for an even count).
        public var median: Double { nodeP99Milliseconds[nodeP99Milliseconds.count / 2] }
        public var max: Double { nodeP99Milliseconds.last! }

        public var description: String {
            String(format: "replication as the writes ended: the nodes' own p99 lag (origin commit → apply, last 1024 applies each) median %.1f ms, max %.1f ms over %d nodes",
                   median, max, nodeP99Milliseconds.count)
        }
    }

    /// The nodes' broadcast and sync counters at the end of the run, summed:
    /// how many copies broadcast spent per change, and what it left to sync.
    public struct Delivery: Sendable, Equatable {
        /// Changesets committed locally (the writes, warm-up included).
        public var local: Double = 0
        /// Broadcast copies received, and those already seen.
        public var received: Double = 0
        public var duplicates: Double = 0
        /// Changesets pulled by anti-entropy sync.
        public var syncPulled: Double = 0
        /// Nodes whose counters were read, and those among them whose broadcast
        /// and sync counts fall short of the other nodes' local writes.
        public var nodes = 0
        public var nodesShort = 0

        /// Changes due: every local write on every other node.
        public var due: Double { local * Double(max(0, nodes - 1)) }
        /// Every node's counters were read, and each applied (by broadcast or
        /// sync) at least as many changes as the other nodes wrote.
        public var accountsForEveryChange: Bool { nodesShort == 0 }

        public var description: String {
            let fresh = received - duplicates
            return String(format: "delivery: broadcast brought %.0f of the %.0f changes due (%.2f copies each, %.0f%% duplicates); sync pulled %.0f changesets",
                          fresh, due, received / max(1, fresh), 100 * duplicates / max(1, received), syncPulled)
        }
    }

    /// Resources used from the first measured write until every write was
    /// visible (or the settle time ran out), per accepted write.
    public struct Cost: Sendable {
        /// CPU of all agents, milliseconds per write.
        public var agentCPUMillisecondsPerWrite: Double
        /// CPU of this process (probe writers and watchers, WAN emulator).
        public var benchCPUMillisecondsPerWrite: Double
        /// Datagrams that entered the emulator, per write.
        public var datagramsPerWrite: Double
        public var nodes: Int
        /// Writes per second the nodes' APIs actually answered (first to last
        /// answer); below the asked rate when the cluster cannot keep up.
        public var sustainedWritesPerSecond: Double

        public var description: String {
            String(format: "cost per write: agents %.2f ms CPU (%.3f ms per node), this process %.2f ms CPU, %.1f datagrams; %.0f writes/s sustained",
                   agentCPUMillisecondsPerWrite, agentCPUMillisecondsPerWrite / Double(max(1, nodes)),
                   benchCPUMillisecondsPerWrite, datagramsPerWrite, sustainedWritesPerSecond)
        }
    }

    /// Node names: region name and index, `fra1`, `fra2`, …
    public var nodeSpecs: [(name: String, region: String)] {
        topology.regions.flatMap { region in (1...max(1, region.nodes)).map { ("\(region.name)\($0)", region.name) } }
    }

    /// Builds, measures, and tears everything down (also when it throws).
    /// - Parameter cleanup: where undo steps are registered for an interrupt (Ctrl-C).
    public func run(commandLine: String, cleanup: CleanupOnSignal? = nil,
                    progress: @escaping @Sendable (String) -> Void) throws -> Outcome {
        // The directory is removed afterwards: never take one that holds anything.
        if let existing = try? FileManager.default.contentsOfDirectory(atPath: directory), !existing.isEmpty {
            throw ProbeError("scratch directory \(directory) exists and is not empty; give a new or empty one")
        }
        let specs = nodeSpecs
        progress("certificates and configs for \(specs.count) nodes in \(topology.regions.count) regions")
        let cluster = try LocalCluster(root: directory, agentExecutable: agentExecutable, nodes: specs, schema: Self.probeSchema)
        let keep = self.keep
        let removeCluster: @Sendable () -> Void = { if keep { cluster.stop() } else { cluster.remove() } }
        let clusterCleanup = cleanup?.add(removeCluster)
        defer {
            removeCluster()
            if let clusterCleanup { cleanup?.remove(clusterCleanup) }
        }
        let emulator = try WANEmulator(
            nodes: cluster.nodes.map { WANNode(name: $0.name, region: $0.region, realAddress: $0.gossipAddress) },
            topology: topology, seed: seed)
        let emulatorCleanup = cleanup?.add { emulator.stop() }
        defer {
            emulator.stop()
            if let emulatorCleanup { cleanup?.remove(emulatorCleanup) }
        }
        try emulator.start()
        // Everyone dials relays only; the first node of each region seeds the rest.
        let seeds = topology.regions.compactMap { region in cluster.nodes.first { $0.region == region.name } }
            .map { emulator.relayAddresses[$0.name]! }
        try cluster.writeConfigs(externalAddress: { emulator.relayAddresses[$0.name]! }, bootstrap: seeds)

        progress("starting \(cluster.nodes.count) agents (logs in \(directory))")
        try cluster.start()
        try cluster.waitUntilConverged(timeout: .seconds(60))

        let probeNodes = cluster.nodes.map { ProbeNode(name: $0.name, region: $0.region, client: $0.client) }
        let warmUp = ProbeRun(nodes: probeNodes, writers: Array(probeNodes.indices), idBase: 1)
        try warmUp.startWatching()
        let settle = Duration.milliseconds(Int64(4 * topology.maxOneWayMilliseconds)) + .seconds(10)
        progress("warming up: \(warmUpRounds) writes per node (connections, RTT estimates)")
        // One run: its probe ids are idBase + 0..<count, so a second run would repeat them.
        _ = try warmUp.run(count: warmUpRounds * probeNodes.count, rate: Double(probeNodes.count) * 10, settle: settle,
                           rttMilliseconds: Array(repeating: 0, count: probeNodes.count))
        warmUp.stop()
        if (try? cluster.waitForRTTs(timeout: .seconds(10))) == nil {
            progress("note: some members have no RTT estimate yet; broadcast orders them by name")
        }

        let probe = ProbeRun(nodes: probeNodes, writers: Array(probeNodes.indices), idBase: 1_000_000)
        try probe.startWatching()
        let rtts = try probe.measureRTTs()
        progress("measuring: \(writes) writes at \(rate)/s on all \(probeNodes.count) nodes in turn, \(clientsPerNode) clients each")
        let total = writes
        let agentCPUBefore = cluster.agentCPUSeconds()
        let benchCPUBefore = Self.ownCPUSeconds()
        let datagramsBefore = emulator.stats.received
        // Sampled once, at the first report after every write was sent (within a second),
        // before the run waits for them all to be seen.
        let lagAtEnd = Mutex<[Double]?>(nil)
        let measured = try probe.run(count: writes, rate: rate, clientsPerWriter: clientsPerNode, settle: settle,
                                     rttMilliseconds: rtts) { sent, visible in
            progress("  \(sent)/\(total) written, \(visible) visible everywhere")
            if sent == total, lagAtEnd.withLock({ $0 == nil }) {
                let sample = Self.nodeP99Lags(cluster.nodes)
                lagAtEnd.withLock { $0 = sample }
            }
        }
        let accepted = Double(max(1, measured.acceptedWrites.count))
        let cost = Cost(
            agentCPUMillisecondsPerWrite: (cluster.agentCPUSeconds() - agentCPUBefore) * 1000 / accepted,
            benchCPUMillisecondsPerWrite: (Self.ownCPUSeconds() - benchCPUBefore) * 1000 / accepted,
            datagramsPerWrite: Double(emulator.stats.received - datagramsBefore) / accepted,
            nodes: probeNodes.count, sustainedWritesPerSecond: measured.sustainedWritesPerSecond)
        probe.stop()
        // Nodes export their counters every `metricsExportInterval`: scrape
        // until two scrapes an interval apart agree (every write is visible by
        // now, so they settle), for up to 5 s.
        var (lag, delivery) = Self.scrapeNodeMetrics(cluster.nodes)
        let scrapeDeadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < scrapeDeadline {
            Thread.sleep(forTimeInterval: Self.metricsExportInterval * 1.1)
            let (nextLag, next) = Self.scrapeNodeMetrics(cluster.nodes)
            let settled = next == delivery && next.accountsForEveryChange
            (lag, delivery) = (nextLag, next)
            if settled { break }
        }

        let metadata = LatencyReport.Metadata(
            title: "patina bench regions: \(probeNodes.count) nodes in \(topology.regions.count) regions",
            commandLine: commandLine, writesPerSecond: rate, lossPercent: topology.loss * 100, date: Date())
        let report = LatencyReport(
            metadata: metadata,
            nodes: probeNodes.map { LatencyReport.Node(name: $0.name, region: $0.region) },
            writes: measured.acceptedWrites.map { LatencyReport.Write(id: $0.id, originRegion: $0.originRegion, originNode: $0.originNode) },
            observations: measured.observations(),
            floorMilliseconds: { topology.oneWayMilliseconds(from: $0, to: $1) })
        var errors = probe.errors
        if measured.failedWrites > 0 { errors.insert("\(measured.failedWrites) writes failed", at: 0) }
        return Outcome(report: report, emulator: emulator.stats, nodeLagByOriginRegion: lag, errors: errors, cost: cost,
                       delivery: delivery, replicationLagAtEnd: ReplicationLag(nodeP99Milliseconds: lagAtEnd.withLock { $0 } ?? []))
    }

    /// Each node's `p99_lag` from `GET /v1/health`, in milliseconds (nodes that do not answer are left out).
    static func nodeP99Lags(_ nodes: [LocalCluster.Node]) -> [Double] {
        nodes.compactMap { node in
            var client = node.client
            client.timeout = .seconds(2)  // a node too busy to answer is left out, not waited for
            guard let text = try? client.send("GET", "/v1/health").text else { return nil }
            return healthP99LagMilliseconds(text)
        }
    }

    /// `p99_lag` (seconds) of a `/v1/health` answer, in milliseconds.
    static func healthP99LagMilliseconds(_ body: String) -> Double? {
        guard let data = body.data(using: .utf8),
              let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let response = json["response"] as? [String: Any],
              let seconds = (response["p99_lag"] as? NSNumber)?.doubleValue else { return nil }
        return seconds * 1000
    }

    static func ownCPUSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        return seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }

    /// How often an agent exports its cluster counters (`ClusterNodeConfig.rttInterval`).
    static let metricsExportInterval: TimeInterval = 1

    /// Sums every node's lag histogram per `origin_region` label, and its
    /// broadcast and sync counters.
    static func scrapeNodeMetrics(_ nodes: [LocalCluster.Node]) -> ([String: (count: Double, sumSeconds: Double)], Delivery) {
        var totals: [String: (count: Double, sumSeconds: Double)] = [:]
        var perNode: [Delivery] = []
        let counters: [(prefix: String, field: WritableKeyPath<Delivery, Double>)] = [
            ("patina_broadcast_changesets_total{kind=\"local\"} ", \.local),
            ("patina_broadcast_changesets_total{kind=\"received\"} ", \.received),
            ("patina_broadcast_changesets_total{kind=\"duplicate\"} ", \.duplicates),
            ("patina_sync_changesets_total{direction=\"pulled\"} ", \.syncPulled),
        ]
        for node in nodes {
            let client = HTTPClient(target: .tcp(host: "127.0.0.1", port: node.metricsPort))
            guard let text = try? client.send("GET", "/metrics").text else { continue }
            var delivery = Delivery()
            for line in text.split(separator: "\n") {
                for (prefix, field) in counters where line.hasPrefix(prefix) {
                    delivery[keyPath: field] += Double(line.dropFirst(prefix.count)) ?? 0
                }
                guard line.hasPrefix("patina_propagation_lag_seconds_") else { continue }
                guard let labelStart = line.range(of: "origin_region=\""),
                      let labelEnd = line[labelStart.upperBound...].firstIndex(of: "\""),
                      let value = line.split(separator: " ").last.flatMap({ Double($0) }) else { continue }
                let region = String(line[labelStart.upperBound..<labelEnd])
                if line.hasPrefix("patina_propagation_lag_seconds_count") { totals[region, default: (0, 0)].count += value }
                if line.hasPrefix("patina_propagation_lag_seconds_sum") { totals[region, default: (0, 0)].sumSeconds += value }
            }
            perNode.append(delivery)
        }
        var sum = Delivery()
        sum.nodes = perNode.count
        for (_, field) in counters { sum[keyPath: field] = perNode.reduce(0) { $0 + $1[keyPath: field] } }
        // Each node owes the others' writes, not its own.
        sum.nodesShort = perNode.filter { $0.received - $0.duplicates + $0.syncPulled < sum.local - $0.local }.count
            + (nodes.count - perNode.count)
        return (totals, sum)
    }
}
