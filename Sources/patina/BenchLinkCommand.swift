import ArgumentParser
import Foundation
import Logging
import PatinaQUIC

/// `patina bench link`: an iperf-like measurement of one QUIC + mutual-TLS link.
///
/// One side listens (`--listen`) and serves clients one after another until stopped; the
/// other (`--connect`) measures handshake time, RTT, bulk throughput on one bidirectional
/// stream, 1 KiB messages on unidirectional streams and on datagrams, loss, and memory with
/// idle connections. The wire protocol is private to this command: each bidirectional
/// stream starts with one request byte.
struct BenchLink: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "link",
        abstract: "Measure a QUIC link (mutual TLS) between two hosts: handshake, RTT, throughput, message rate, loss.")

    @Option(help: "Serve measurements on HOST:PORT.") var listen: String?
    @Option(help: "Measure against the server at HOST:PORT.") var connect: String?
    @Option(help: "Certificate PEM file.") var cert: String
    @Option(help: "Private key PEM file.") var key: String
    @Option(help: "Cluster CA PEM file.") var ca: String
    @Option(help: "Name to check in the server certificate (default: the host dialled).") var serverName: String?
    @Option(help: "Bytes for the bulk transfer on one stream.") var bytes = 256 * 1024 * 1024
    @Option(help: "1 KiB messages on uni streams, and on datagrams.") var messages = 100_000
    @Option(help: "Concurrent senders for the message test.") var concurrency = 16
    @Option(help: "Handshakes to time.") var handshakes = 10
    @Option(help: "Idle connections to hold for the memory figure (0 to skip).") var idleConnections = 100
    @Flag(help: "Print one JSON object.") var json = false
    @Flag(help: "Debug logging of the transport.") var verbose = false

    func validate() throws {
        if (listen == nil) == (connect == nil) { throw ValidationError("give exactly one of --listen or --connect") }
    }

    func run() async throws {
        var logger = Logger(label: "patina.bench.link")
        logger.logLevel = verbose ? .debug : .info
        var config = QUICEndpointConfig(tls: QUICTLSConfig(certificatePath: cert, privateKeyPath: key, caPath: ca))
        config.maxIncomingUniStreams = 4096
        config.datagramReceiveBuffer = 65536
        config.datagramSendQueue = 4096
        if let listen {
            guard let address = QUICSocketAddress(listen) else { throw ValidationError("bad address \(listen)") }
            try await LinkServer(config: config, logger: logger).run(address)
        } else if let connect {
            guard let address = QUICSocketAddress(connect) else { throw ValidationError("bad address \(connect)") }
            let report = try await LinkClient(options: self, config: config, logger: logger).run(address)
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                print(String(decoding: try encoder.encode(report), as: UTF8.self))
            } else {
                print(report.text)
            }
        }
    }
}

/// Request bytes at the start of a bidirectional stream.
private enum Request: UInt8 {
    case bulk = 0x42  // 'B': bytes follow until FIN; reply: byte count
    case messages = 0x4D  // 'M' + UInt64 target: reply once that many uni messages arrived (or 10 s)
    case datagrams = 0x44  // 'D' + UInt64 sent: reply with datagrams received after a short wait
    case memory = 0x52  // 'R': reply with the server's RSS bytes and connection count
}

private func encode(_ values: UInt64...) -> [UInt8] {
    values.flatMap { v in (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
}

private func decode(_ bytes: [UInt8], at index: Int) -> UInt64 {
    guard bytes.count >= (index + 1) * 8 else { return 0 }
    return (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[index * 8 + $1]) << (8 * $1) }
}

func residentBytes() -> UInt64 {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = UInt64(fields[1]) else { return 0 }
    return pages * UInt64(sysconf(Int32(_SC_PAGESIZE)))
}

/// Counts that the connection's tasks share.
private actor Counters {
    var messages: UInt64 = 0
    var datagrams: UInt64 = 0
    func message() { messages += 1 }
    func datagram() { datagrams += 1 }
    func resetDatagrams() { datagrams = 0 }
}

private struct LinkServer {
    let config: QUICEndpointConfig
    let logger: Logger

    func run(_ address: QUICSocketAddress) async throws {
        let endpoint = try QUICEndpoint(bind: address, config: config, logger: logger)
        logger.info("bench link server on \(endpoint.localAddress)")
        await withDiscardingTaskGroup { group in
            for await connection in endpoint.incomingConnections {
                logger.info("client \(connection.remoteAddress) connected")
                group.addTask { await serve(connection, endpoint: endpoint) }
            }
        }
    }

    private func serve(_ connection: QUICConnection, endpoint: QUICEndpoint) async {
        let counters = Counters()
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in connection.incomingDatagrams { await counters.datagram() }
            }
            group.addTask {
                await withDiscardingTaskGroup { streams in
                    for await stream in connection.incomingStreams {
                        streams.addTask { await handle(stream, counters: counters, endpoint: endpoint) }
                    }
                }
            }
        }
        logger.info("client \(connection.remoteAddress) gone: \(connection.closeError.map { "\($0)" } ?? "closed")")
    }

    private func handle(_ stream: QUICStream, counters: Counters, endpoint: QUICEndpoint) async {
        do {
            if stream.isUnidirectional {
                _ = try await stream.readAll(limit: 1 << 20)
                await counters.message()
                return
            }
            guard var first = try await stream.read(), !first.isEmpty, let request = Request(rawValue: first[0]) else {
                stream.reset(errorCode: 1)
                return
            }
            first.removeFirst()
            switch request {
            case .bulk:
                var total = UInt64(first.count)
                while let chunk = try await stream.read() { total += UInt64(chunk.count) }
                try await stream.write(encode(total), finish: true)
            case .messages:
                var body = first
                while body.count < 8, let more = try await stream.read() { body += more }
                let target = decode(body, at: 0)
                let deadline = ContinuousClock.now + .seconds(10)
                while await counters.messages < target && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(1))
                }
                try await stream.write(encode(await counters.messages), finish: true)
            case .datagrams:
                var body = first
                while body.count < 8, let more = try await stream.read() { body += more }
                let sent = decode(body, at: 0)
                let deadline = ContinuousClock.now + .seconds(2)
                while await counters.datagrams < sent && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(1))
                }
                try await stream.write(encode(await counters.datagrams), finish: true)
                await counters.resetDatagrams()
            case .memory:
                try await stream.write(encode(residentBytes(), UInt64(await endpoint.connectionCount())), finish: true)
            }
        } catch {
            logger.debug("stream \(stream.id): \(error)")
        }
    }
}

struct LinkReport: Codable {
    var server = ""
    var handshake_ms_median = 0.0
    var handshake_ms_min = 0.0
    var rtt_min_us = 0.0
    var rtt_smoothed_us = 0.0
    var bulk_bytes = 0
    var bulk_seconds = 0.0
    var bulk_gbit_per_s = 0.0
    var uni_messages = 0
    var uni_messages_per_s = 0.0
    var datagrams_sent = 0
    var datagrams_received = 0
    var datagrams_per_s = 0.0
    var datagram_loss_percent = 0.0
    var probe_timeouts = 0
    var packets_sent = 0
    var packets_received = 0
    var idle_connections = 0
    var client_rss_before_idle_mib = 0.0
    var client_rss_with_idle_mib = 0.0
    var server_rss_with_idle_mib = 0.0

    var text: String {
        func f(_ v: Double, _ digits: Int = 2) -> String { String(format: "%.\(digits)f", v) }
        return """
            link to \(server)
            handshake          median \(f(handshake_ms_median)) ms, min \(f(handshake_ms_min)) ms
            RTT                min \(f(rtt_min_us, 0)) µs, smoothed \(f(rtt_smoothed_us, 0)) µs
            bulk (1 bi stream) \(bulk_bytes) bytes in \(f(bulk_seconds, 3)) s = \(f(bulk_gbit_per_s)) Gbit/s
            1 KiB on uni       \(uni_messages) messages, \(f(uni_messages_per_s, 0)) messages/s
            1 KiB datagrams    \(datagrams_received)/\(datagrams_sent) received, \(f(datagrams_per_s, 0)) /s, loss \(f(datagram_loss_percent))%
            loss signals       \(probe_timeouts) probe timeouts; packets sent \(packets_sent), received \(packets_received)
            memory             \(idle_connections) idle connections: client RSS \(f(client_rss_before_idle_mib, 1)) → \(f(client_rss_with_idle_mib, 1)) MiB, server RSS \(f(server_rss_with_idle_mib, 1)) MiB
            """
    }
}

private struct LinkClient {
    let options: BenchLink
    let config: QUICEndpointConfig
    let logger: Logger

    func run(_ address: QUICSocketAddress) async throws -> LinkReport {
        var report = LinkReport()
        report.server = address.description
        let bind = QUICSocketAddress(host: address.host.contains(":") ? "::" : "0.0.0.0", port: 0)
        let endpoint = try QUICEndpoint(bind: bind, config: config, logger: logger)
        let clock = ContinuousClock()

        // Handshakes: each a fresh connection, closed before the next.
        var times: [Double] = []
        for _ in 0..<max(1, options.handshakes) {
            let start = clock.now
            let c = try await endpoint.connect(to: address, serverName: options.serverName)
            times.append(ms(clock.now - start))
            await c.close(drain: false)
        }
        times.sort()
        report.handshake_ms_median = times[times.count / 2]
        report.handshake_ms_min = times[0]

        let connection = try await endpoint.connect(to: address, serverName: options.serverName)

        // Bulk: one bidirectional stream, timed until the server confirms the byte count.
        if options.bytes > 0 {
            let stream = try await connection.openBiStream()
            let block = [UInt8](repeating: 0x5A, count: 256 * 1024)
            let start = clock.now
            try await stream.write([Request.bulk.rawValue])
            var sent = 0
            while sent < options.bytes {
                let n = min(block.count, options.bytes - sent)
                try await stream.write(n == block.count ? block : Array(block[..<n]))
                sent += n
            }
            try await stream.finish()
            let reply = try await stream.readAll()
            let seconds = secs(clock.now - start)
            if decode(reply, at: 0) != UInt64(options.bytes) {
                throw ValidationError("server received \(decode(reply, at: 0)) of \(options.bytes) bytes")
            }
            report.bulk_bytes = options.bytes
            report.bulk_seconds = seconds
            report.bulk_gbit_per_s = Double(options.bytes) * 8 / seconds / 1e9
        }

        // 1 KiB messages, one per unidirectional stream, from `concurrency` senders.
        if options.messages > 0 {
            let message = [UInt8](repeating: 0x4D, count: 1024)
            let total = options.messages
            let workers = max(1, options.concurrency)
            let start = clock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for w in 0..<workers {
                    group.addTask {
                        for _ in stride(from: w, to: total, by: workers) {
                            try await connection.sendUniStream(message)
                        }
                    }
                }
                try await group.waitForAll()
            }
            let confirm = try await connection.openBiStream()
            try await confirm.write([Request.messages.rawValue] + encode(UInt64(total)), finish: true)
            let received = decode(try await confirm.readAll(), at: 0)
            let seconds = secs(clock.now - start)
            if received != UInt64(total) { throw ValidationError("server received \(received) of \(total) messages") }
            report.uni_messages = total
            report.uni_messages_per_s = Double(total) / seconds

            // The same on DATAGRAM frames (unreliable: loss is reported, not retried).
            let size = min(1024, await connection.maxDatagramPayloadSize() ?? 0)
            if size > 0 {
                let datagram = [UInt8](repeating: 0x44, count: size)
                let dStart = clock.now
                for _ in 0..<total { try await connection.sendDatagram(datagram) }
                let ask = try await connection.openBiStream()
                try await ask.write([Request.datagrams.rawValue] + encode(UInt64(total)), finish: true)
                let got = decode(try await ask.readAll(), at: 0)
                report.datagrams_sent = total
                report.datagrams_received = Int(got)
                report.datagrams_per_s = Double(got) / secs(clock.now - dStart)
                report.datagram_loss_percent = 100 * Double(UInt64(total) - min(got, UInt64(total))) / Double(total)
            }
        }

        if let stats = await connection.stats() {
            report.rtt_min_us = Double(stats.minRTT.components.attoseconds) / 1e12 + Double(stats.minRTT.components.seconds) * 1e6
            report.rtt_smoothed_us = Double(stats.smoothedRTT.components.attoseconds) / 1e12
                + Double(stats.smoothedRTT.components.seconds) * 1e6
            report.probe_timeouts = Int(stats.probeTimeouts)
            report.packets_sent = Int(stats.packetsSent)
            report.packets_received = Int(stats.packetsReceived)
        }

        // Memory with idle connections held open (keep-alive keeps them from timing out).
        if options.idleConnections > 0 {
            report.client_rss_before_idle_mib = Double(residentBytes()) / 1_048_576
            var idle: [QUICConnection] = []
            for _ in 0..<options.idleConnections {
                idle.append(try await endpoint.connect(to: address, serverName: options.serverName))
            }
            try await Task.sleep(for: .milliseconds(500))
            report.idle_connections = idle.count
            report.client_rss_with_idle_mib = Double(residentBytes()) / 1_048_576
            let ask = try await connection.openBiStream()
            try await ask.write([Request.memory.rawValue], finish: true)
            report.server_rss_with_idle_mib = Double(decode(try await ask.readAll(), at: 0)) / 1_048_576
            for c in idle { await c.close(drain: false) }
        }
        await connection.close()
        await endpoint.close()
        return report
    }

    private func ms(_ d: Duration) -> Double { secs(d) * 1000 }
    private func secs(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
}
