import ArgumentParser
import Foundation
import PatinaBench

/// `patina bench live`: propagation across a real, deployed cluster.
struct BenchLive: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "live",
        abstract: "Measure commit-to-visible latency across a running cluster through its HTTP APIs.",
        discussion: """
            Writes probe rows through the first --api, watches every node's /v1/updates stream \
            from here, and reports per node the time from commit until the row was visible there, \
            with half of this machine's measured RTT to each node taken off both ends. The \
            cluster's schema must have the probe table (see config/schema/patina_probe.sql); the \
            probe rows are deleted afterwards.
            """)

    @Option(name: .customLong("api"), help: "A node's API, http://host:port (repeat for every node; writes go to the first).")
    var apis: [String] = []
    @Option(help: "Bearer token for the APIs.") var token: String?
    @Option(help: "Probe table (integer primary key id, text column node).") var table = "patina_probe"
    @Option(help: "Probe writes.") var writes = 200
    @Option(help: "Writes per second.") var rate = 10.0
    @Option(help: "Concurrent API clients writing (each waits for its answer before the next write).") var clients = 4
    @Option(help: "Seconds to wait after the last write for it to be visible everywhere.") var settle = 30.0
    @Option(help: "Write the JSON report to this file.") var json: String?
    @Option(help: "Write the SVG chart to this file.") var chart: String?
    @Flag(help: "Leave the probe rows in place.") var keepRows = false

    func validate() throws {
        guard apis.count >= 2 else { throw ValidationError("give at least two --api URLs") }
        guard writes > 0, rate > 0, settle > 0 else { throw ValidationError("--writes, --rate and --settle must be positive") }
        guard (1...64).contains(clients) else { throw ValidationError("--clients must be in 1...64") }
    }

    func run() throws {
        var bench = LiveBenchmark(apis: try apis.map { try LiveBenchmark.target($0) })
        bench.bearerToken = token ?? ProcessInfo.processInfo.environment["PATINA_TOKEN"]
        bench.table = table
        bench.writes = writes
        bench.rate = rate
        bench.clients = clients
        bench.settle = .milliseconds(Int64(settle * 1000))
        bench.keepRows = keepRows
        let started = Date()
        let outcome = try bench.run(commandLine: CommandLine.arguments.joined(separator: " ")) { line in
            FileHandle.standardError.write(Data("[\(String(format: "%5.1f", Date().timeIntervalSince(started)))s] \(line)\n".utf8))
        }
        print(outcome.report.table())
        for error in outcome.errors.prefix(10) { print("error: \(error)") }
        try writeOutputs(outcome.report, json: json, chart: chart)
    }
}
