import CPatinaShims
import Logging

/// A QUIC endpoint: one UDP socket that accepts connections and dials them, with mutual TLS.
///
/// All QUIC state runs on one thread owned by the endpoint; this type and the handles it
/// returns are safe to use from any task.
public final class QUICEndpoint: Sendable {
    let core: EndpointCore

    /// Binds `address` (e.g. `0.0.0.0:4433`, `[::]:0`) and starts the endpoint's thread.
    /// Throws when the certificate, key or CA cannot be loaded, or the bind fails.
    public init(bind address: QUICSocketAddress, config: QUICEndpointConfig,
                logger: Logger = Logger(label: "patina.quic")) throws(QUICError) {
        core = try EndpointCore(bind: address, config: config, logger: logger)
        core.start()
    }

    deinit {
        // Without close(), stop the loop so its thread and socket go away.
        let core = self.core
        core.submit { core.stopLoop() }
    }

    /// The address the socket is bound to (with the port the kernel chose for port 0).
    public var localAddress: QUICSocketAddress { core.localAddress.address }

    /// Connections whose handshake completed, with the client's certificate verified.
    /// Handshakes that fail are logged and never appear here.
    public var incomingConnections: AsyncStream<QUICConnection> { core.incomingStream }

    /// Dials `address` and completes a mutual-TLS handshake. The server certificate MUST be
    /// issued by the cluster CA and name `serverName` (default: the dialled host, an IP address
    /// or DNS name). Returns once the server has confirmed the handshake, i.e. accepted our
    /// certificate too.
    public func connect(to address: QUICSocketAddress, serverName: String? = nil,
                        timeout: Duration = .seconds(10)) async throws -> QUICConnection {
        let remote = try SockAddr(resolving: address)
        let name = serverName ?? address.host
        let sni: String? = QUICSocketAddress(host: name, port: 0).isNumericHost ? nil : name
        let core = self.core
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<QUICConnection, any Error>) in
            let submitted = core.submit {
                let connection: ConnectionCore
                do {
                    connection = try ConnectionCore(clientTo: remote, expectedName: name, sni: sni, endpoint: core,
                                                    timeout: timeout)
                } catch {
                    continuation.resume(throwing: error)
                    return
                }
                connection.handshakeWaiter = continuation
                core.register(connection)
                core.markDirty(connection)
            }
            if !submitted { continuation.resume(throwing: QUICError(.endpointClosed, "")) }
        }
    }

    /// Closes every connection with CONNECTION_CLOSE (error code 0), then stops the endpoint.
    public func close() async {
        let core = self.core
        core.submit {
            for connection in Array(core.connections.values) {
                connection.closeLocally(errorCode: 0, reason: "endpoint closing")
            }
            core.stopLoop()
        }
        await core.waitStopped()
    }

    /// Stops at once without telling peers, as a crashed process would. For tests of failure handling.
    public func abort() async {
        let core = self.core
        core.submit { core.stopLoop() }
        await core.waitStopped()
    }

    /// Packets dropped as garbage or for unknown connections (for tests and diagnostics).
    public func droppedPacketCount() async -> UInt64 {
        await onLoop { $0.droppedPackets } ?? 0
    }

    /// Number of connections the endpoint holds (including ones closing).
    public func connectionCount() async -> Int {
        await onLoop { $0.connections.count } ?? 0
    }

    func onLoop<T: Sendable>(_ body: @escaping @Sendable (EndpointCore) -> T) async -> T? {
        let core = self.core
        return await withCheckedContinuation { (c: CheckedContinuation<T?, Never>) in
            if !core.submit({ c.resume(returning: body(core)) }) { c.resume(returning: nil) }
        }
    }
}
