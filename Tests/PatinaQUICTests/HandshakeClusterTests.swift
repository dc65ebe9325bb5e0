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
