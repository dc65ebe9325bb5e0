import ArgumentParser
import Foundation
import PatinaBench

/// `patina bench regions`: cross-region propagation on one machine, through
/// the WAN emulator.
struct BenchRegions: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "regions",
        abstract: "Run a local cluster through an emulated WAN and measure commit-to-visible-everywhere latency.",
        discussion: """
            Builds certificates, configs and one agent process per node, routes all node-to-node \
            traffic through a user-space WAN emulator (delay, jitter, loss and rate per region \
            pair, from the topology file), writes probe rows on nodes of every region in turn and \
            times each until it is visible on every node. Everything is removed afterwards, also \
            on Ctrl-C.
            """)

    @Option(help: "Topology file (TOML). Default: config/regions/default.toml of this checkout.") var topology: String?
    @Option(help: "Measured writes.") var writes = 1000
    @Option(help: "Writes per second, spread over all nodes.") var rate = 100.0
    @Option(help: "Packet loss probability per datagram, 0 ≤ P < 1 (overrides the topology).") var loss: Double?
    @Option(help: "Nodes per region (overrides the topology).") var nodesPerRegion: Int?
    @Option(help: "Concurrent API clients writing to each node (each waits for its answer before the next write).")
    var clientsPerNode = 8
    @Option(help: "Write the JSON report to this file.") var json: String?
    @Option(help: "Write the SVG chart to this file.") var chart: String?
    @Option(help: "Scratch directory (removed afterwards unless --keep).") var dir: String?
    @Flag(help: "Keep the scratch directory (configs, logs, databases).") var keep = false

    func validate() throws {
        guard writes > 0 else { throw ValidationError("--writes must be positive") }
        guard rate > 0 else { throw ValidationError("--rate must be positive") }
        if let loss, !(0..<1).contains(loss) { throw ValidationError("--loss must be in [0, 1)") }
        if let n = nodesPerRegion, n < 1 { throw ValidationError("--nodes-per-region must be at least 1") }
        guard (1...64).contains(clientsPerNode) else { throw ValidationError("--clients-per-node must be in 1...64") }
    }

    func run() throws {
        let topologyPath = try topology ?? Self.defaultTopology()
        let loaded = try WANTopology.load(path: topologyPath).overriding(loss: loss, nodesPerRegion: nodesPerRegion)
        var bench = RegionsBenchmark(
            topology: loaded, agentExecutable: try Self.ownExecutable(),
            directory: dir ?? NSTemporaryDirectory() + "patina-bench-regions-\(getpid())")
        bench.writes = writes
        bench.rate = rate
        bench.clientsPerNode = clientsPerNode
        bench.keep = keep
        let cleanup = CleanupOnSignal()
        let started = Date()
        let outcome = try bench.run(commandLine: CommandLine.arguments.joined(separator: " "), cleanup: cleanup) { line in
            FileHandle.standardError.write(Data("[\(String(format: "%5.1f", Date().timeIntervalSince(started)))s] \(line)\n".utf8))
        }
        print(outcome.report.table())
        print("WAN emulator: \(outcome.emulator)")
        print(outcome.cost.description)
        print(outcome.delivery.description)
        if let lag = outcome.replicationLagAtEnd { print(lag.description) }
        print("the nodes' own lag metric (patina_propagation_lag_seconds, origin HLC commit → apply, incl. warm-up):")
        for (region, lag) in outcome.nodeLagByOriginRegion.sorted(by: { $0.key < $1.key }) where lag.count > 0 {
            print("  from \(region): mean \(String(format: "%.1f", lag.sumSeconds / lag.count * 1000)) ms over \(Int(lag.count)) applies")
        }
        for error in outcome.errors.prefix(10) { print("error: \(error)") }
        try writeOutputs(outcome.report, json: json, chart: chart)
    }

    /// The default topology of the checkout this binary was built in (or the
    /// working directory's).
    static func defaultTopology() throws -> String {
        let relative = "config/regions/default.toml"
        if FileManager.default.fileExists(atPath: relative) { return relative }
        var dir = URL(fileURLWithPath: try ownExecutable()).deletingLastPathComponent()
        while dir.path != "/" {
            let candidate = dir.appendingPathComponent(relative).path
            if FileManager.default.fileExists(atPath: candidate) { return candidate }
            dir.deleteLastPathComponent()
        }
        throw ValidationError("no \(relative) here or above the patina binary: pass --topology FILE")
    }

    static func ownExecutable() throws -> String {
        let path = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        return path
    }
}

/// Writes the JSON report and the SVG chart where asked.
func writeOutputs(_ report: LatencyReport, json: String?, chart: String?) throws {
    if let json {
        try report.json().write(to: URL(fileURLWithPath: json))
        print("JSON report: \(json)")
    }
    if let chart {
        try report.svg().write(toFile: chart, atomically: true, encoding: .utf8)
        print("chart: \(chart)")
    }
}
