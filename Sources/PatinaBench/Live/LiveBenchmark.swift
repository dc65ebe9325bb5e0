import Foundation
import PatinaNode

/// `patina bench live`: propagation across a real, deployed cluster. Probe rows
/// are written through one node's API; every node's update stream is watched
/// from here, and each node's client RTT is measured and half of it taken off
/// both ends (see ``ProbeMeasurements/observations()``), so the figures are the
/// cluster's own, not the distance from this machine.
///
/// The cluster's schema must have the probe table (`config/schema/patina_probe.sql`).
public struct LiveBenchmark: Sendable {
    /// The nodes' APIs; writes go through the first.
    public var apis: [HTTPClient.Target]
    public var bearerToken: String?
    public var table = "patina_probe"
    public var writes = 200
    public var rate = 10.0
    /// Concurrent API clients writing through the first node: each waits for its
    /// answer, so one client far from that node caps the rate at 1 / RTT.
    public var clients = 4
    /// How long to wait, after the last write, for it to be visible everywhere.
    public var settle: Duration = .seconds(30)
    /// Leave the probe rows in place (by default they are deleted afterwards).
    public var keepRows = false

    public init(apis: [HTTPClient.Target]) { self.apis = apis }

    public struct Outcome: Sendable {
        public var report: LatencyReport
        public var rttMilliseconds: [String: Double]
        public var errors: [String]
    }

    /// Parses `http://host:port`, `host:port` or `[v6]:port`; HTTPS is not spoken.
    public static func target(_ text: String) throws -> HTTPClient.Target {
        var rest = Substring(text)
        if rest.hasPrefix("https://") { throw ProbeError("\(text): HTTPS is not supported; put the API behind a tunnel or use http://") }
        if rest.hasPrefix("http://") { rest = rest.dropFirst("http://".count) }
        while rest.hasSuffix("/") { rest = rest.dropLast() }
        guard let hostPort = HostPort.parse(String(rest), defaultPort: 8080) else { throw ProbeError("\(text): not host:port") }
        return .tcp(host: hostPort.host, port: hostPort.port)
    }

    public func run(commandLine: String, progress: @escaping @Sendable (String) -> Void) throws -> Outcome {
        let nodes = apis.map { target -> ProbeNode in
            var client = HTTPClient(target: target, bearerToken: bearerToken)
            client.timeout = .seconds(10)
            return ProbeNode(name: target.description, region: target.description, client: client)
        }
        let probe = ProbeRun(nodes: nodes, writers: [0], table: table)
        progress("opening \(nodes.count) update streams on \(table)")
        try probe.startWatching()
        progress("measuring RTTs from here to each API")
        let rtts = try probe.measureRTTs()
        for (node, rtt) in zip(nodes, rtts) { progress("  \(node.name): RTT \(String(format: "%.2f", rtt)) ms") }
        progress("writing \(writes) probe rows through \(nodes[0].name) at \(rate)/s, \(clients) clients")
        let total = writes
        let measured = try probe.run(count: writes, rate: rate, clientsPerWriter: clients, settle: settle,
                                     rttMilliseconds: rtts) { sent, visible in
            progress("  \(sent)/\(total) written, \(visible) visible everywhere")
        }
        probe.stop()
        var errors = probe.errors
        if measured.failedWrites > 0 { errors.insert("\(measured.failedWrites) writes failed", at: 0) }
        if !keepRows {
            do { try probe.deleteProbes(count: writes) } catch { errors.append("\(error)") }
        }
        let report = LatencyReport(
            metadata: LatencyReport.Metadata(
                title: "patina bench live: \(nodes.count) nodes, writes through \(nodes[0].name)",
                commandLine: commandLine, writesPerSecond: rate, lossPercent: nil, date: Date()),
            nodes: nodes.map { LatencyReport.Node(name: $0.name, region: $0.region) },
            writes: measured.acceptedWrites.map { LatencyReport.Write(id: $0.id, originRegion: $0.originRegion, originNode: $0.originNode) },
            observations: measured.observations())
        return Outcome(report: report, rttMilliseconds: Dictionary(uniqueKeysWithValues: zip(nodes.map(\.name), rtts)),
                       errors: errors)
    }
}
