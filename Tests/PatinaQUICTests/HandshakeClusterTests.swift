import Foundation
import Testing

@testable import PatinaQUIC

@Suite("QUIC handshake with mutual TLS", .timeLimit(.minutes(1)))
struct HandshakeClusterTests {
    @Test func handshakeSucceedsWithGoodCertificates() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let logs = LogCapture()
        let server = try QUICEndpoint(bind: loopback, config: config(try pki.node("server")), logger: logs.logger("server"))
        let client = try QUICEndpoint(bind: loopback, config: config(try pki.node("client")), logger: logs.logger("client"))
        let serverAddress = server.localAddress
        let accepted = Task { () -> QUICConnection? in
            for await connection in server.incomingConnections { return connection }
            return nil
        }
        let connection = try await withDeadline(.seconds(10)) {
            try await client.connect(to: serverAddress)
        }
        let serverSide = try #require(await accepted.value)
        let stats = try #require(await connection.stats())
        #expect(stats.smoothedRTT > .zero)
        #expect(serverSide.remoteAddress.port == client.localAddress.port)
        await connection.close()
        await client.close()
        await server.close()
    }
}

@Suite("QUIC handshake refusals", .timeLimit(.minutes(1)))
struct HandshakeRefusalClusterTests {
    /// Dials with `clientTLS` a server using `serverTLS`; expects both sides to refuse and log why.
    func expectRefusal(server serverTLS: QUICTLSConfig, client clientTLS: QUICTLSConfig, dial host: String = "127.0.0.1",
                       clientLog: String?, serverLog: String?) async throws {
        let logs = LogCapture()
        let server = try QUICEndpoint(bind: loopback, config: config(serverTLS), logger: logs.logger("server"))
        let client = try QUICEndpoint(bind: loopback, config: config(clientTLS), logger: logs.logger("client"))
        let accepted = Task { () -> Int in
            var n = 0
            for await _ in server.incomingConnections { n += 1 }
            return n
        }
        let address = QUICSocketAddress(host: host, port: server.localAddress.port)
        do {
            _ = try await withDeadline(.seconds(10)) { try await client.connect(to: address, timeout: .seconds(5)) }
            Issue.record("handshake succeeded")
        } catch let error as QUICError {
            #expect(error.isHandshakeRefusal, "\(error)")
        }
        // Both sides logged the cause; the server never handed out the connection.
        let logged = await eventually {
            (clientLog.map { logs.contains("[client] warning") && logs.contains($0) } ?? true)
                && (serverLog.map { logs.contains("[server] warning") && logs.contains($0) } ?? true)
        }
        #expect(logged, "logs:\n\(logs.all.joined(separator: "\n"))")
        #expect(await eventually { await server.connectionCount() == 0 })
        await client.close()
        await server.close()
        #expect(await accepted.value == 0)
    }

    @Test func clientWithoutCertificateIsRefused() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let noCert = QUICTLSConfig(certificatePath: "", privateKeyPath: "", caPath: pki.caPath)
        try await expectRefusal(
            server: try pki.node("server"), client: noCert,
            clientLog: "peer refused the TLS handshake", serverLog: "client presented no certificate")
    }

    @Test func clientFromAnotherCAIsRefused() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        try await expectRefusal(
            server: try pki.node("server"), client: try pki.foreignNode("intruder"),
            clientLog: "peer refused the TLS handshake", serverLog: "client certificate is not issued by the cluster CA")
    }

    @Test func serverFromAnotherCAIsRefused() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        try await expectRefusal(
            server: try pki.foreignNode("impostor"), client: try pki.node("client"),
            clientLog: "server certificate is not issued by the cluster CA", serverLog: "peer refused the TLS handshake")
    }

    @Test func expiredServerCertificateIsRefused() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let expired = try pki.node(
            "server", notBefore: Date(timeIntervalSinceNow: -10 * 86400), notAfter: Date(timeIntervalSinceNow: -86400))
        try await expectRefusal(
            server: expired, client: try pki.node("client"),
            clientLog: "server certificate has expired", serverLog: "peer refused the TLS handshake")
    }

    @Test func expiredClientCertificateIsRefused() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let expired = try pki.node(
            "client", notBefore: Date(timeIntervalSinceNow: -10 * 86400), notAfter: Date(timeIntervalSinceNow: -86400))
        try await expectRefusal(
            server: try pki.node("server"), client: expired,
            clientLog: "peer refused the TLS handshake", serverLog: "client certificate has expired")
    }

    @Test func notYetValidClientCertificateIsRefused() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let future = try pki.node(
            "client", notBefore: Date(timeIntervalSinceNow: 86400), notAfter: Date(timeIntervalSinceNow: 10 * 86400))
        try await expectRefusal(
            server: try pki.node("server"), client: future,
            clientLog: "peer refused the TLS handshake", serverLog: "client certificate is not yet valid")
    }

    @Test func serverNameMismatchIsRefused() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let elsewhere = try pki.node("server", ip: ["10.9.8.7"], dns: ["node-b.example"])
        try await expectRefusal(
            server: elsewhere, client: try pki.node("client"),
            clientLog: "does not match the dialled name 127.0.0.1", serverLog: "peer refused the TLS handshake")
    }
}

@Suite("QUIC over IPv6", .timeLimit(.minutes(1)))
struct IPv6ClusterTests {
    @Test func handshakeAndEchoOverIPv6Loopback() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let any6 = QUICSocketAddress(host: "::1", port: 0)
        guard let server = try? QUICEndpoint(bind: any6, config: config(try pki.node("server6", ip: ["::1"]))) else {
            return  // no IPv6 on this host
        }
        let client = try QUICEndpoint(bind: any6, config: config(try pki.node("client6", ip: ["::1"])))
        let echo = Task {
            var held: [QUICConnection] = []
            for await connection in server.incomingConnections {
                held.append(connection)
                for await stream in connection.incomingStreams {
                    try await stream.write(try await stream.readAll(), finish: true)
                }
            }
            return held.count
        }
        let address = QUICSocketAddress(host: "::1", port: server.localAddress.port)
        #expect(address.description == "[::1]:\(server.localAddress.port)")
        let connection = try await withDeadline(.seconds(10)) { try await client.connect(to: address) }
        let stream = try await connection.openBiStream()
        try await stream.write(Array("v6".utf8), finish: true)
        #expect(try await withDeadline(.seconds(10)) { try await stream.readAll() } == Array("v6".utf8))
        echo.cancel()
        await client.close()
        await server.close()
    }
}
