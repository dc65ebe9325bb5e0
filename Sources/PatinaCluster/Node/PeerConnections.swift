import Logging
import PatinaQUIC
import Synchronization

/// One live QUIC connection per peer gossip address ("host:port"), dialled on demand
/// or adopted when the peer dials us. Every connection, dialled or accepted, is
/// announced on `registered` so the node serves what the peer sends on it.
///
/// A peer that restarts dials us again: the newest connection from an address
/// replaces the cached one (the old may be dead without anyone knowing until its
/// idle timeout). A member declared down is evicted, so the next send dials anew.
actor PeerConnections {
    private let endpoint: QUICEndpoint
    private let connectTimeout: Duration
    private let logger: Logger
    /// Peer address → connection. Behind a lock rather than actor state, so that
    /// `existing` reads it without a hop onto the actor: every broadcast and
    /// membership send looks its peer up, and almost always finds it.
    private nonisolated let connections = Mutex<[String: QUICConnection]>([:])
    private var pending: [String: Task<QUICConnection, any Error>] = [:]
    private var closed = false

    /// (connection, peer address) for each new connection.
    nonisolated let registered: AsyncStream<(QUICConnection, String)>
    private let registeredContinuation: AsyncStream<(QUICConnection, String)>.Continuation

    init(endpoint: QUICEndpoint, connectTimeout: Duration, logger: Logger) {
        self.endpoint = endpoint
        self.connectTimeout = connectTimeout
        self.logger = logger
        (registered, registeredContinuation) = AsyncStream.makeStream()
    }

    /// The cached live connection to `peer`, if any (never dials, never suspends).
    nonisolated func existing(_ peer: String) -> QUICConnection? {
        if let c = connections.withLock({ $0[peer] }), !c.isClosed { return c }
        return nil
    }

    /// The live connection to `peer`, dialling it if needed; concurrent callers share one handshake.
    func connection(to peer: String) async throws -> QUICConnection {
        if let c = existing(peer) { return c }
        if let task = pending[peer] { return try await task.value }
        guard !closed else { throw ClusterNodeError("cluster node is shutting down") }
        guard let address = QUICSocketAddress(peer) else { throw ClusterNodeError("bad peer address \(peer)") }
        let endpoint = self.endpoint
        let timeout = connectTimeout
        let task = Task { try await endpoint.connect(to: address, serverName: address.host, timeout: timeout) }
        pending[peer] = task
        let result = await task.result
        pending[peer] = nil
        switch result {
        case .success(let c):
            if let current = existing(peer) {
                // The peer dialled us meanwhile; keep serving ours too.
                registeredContinuation.yield((c, peer))
                return current
            }
            connections.withLock { $0[peer] = c }
            registeredContinuation.yield((c, peer))
            return c
        case .failure(let error):
            throw error
        }
    }

    /// A connection the peer opened to us: replies reuse it.
    func accepted(_ connection: QUICConnection) {
        let peer = connection.remoteAddress.description
        guard !closed else { return }
        connections.withLock { $0[peer] = connection }
        registeredContinuation.yield((connection, peer))
    }

    /// Forgets `peer` and closes its connection (without waiting for the close to finish).
    func evict(_ peer: String) {
        guard let c = connections.withLock({ $0.removeValue(forKey: peer) }) else { return }
        Task { await c.close(drain: false) }
    }

    func live() -> [String: QUICConnection] { connections.withLock { $0.filter { !$0.value.isClosed } } }

    /// Closes every cached connection; with `drain`, first waits (bounded) until the
    /// peers acknowledged everything written.
    func closeAll(drainTimeout: Duration?) async {
        closed = true
        let all = connections.withLock { table in
            defer { table = [:] }
            return table
        }
        for task in pending.values { task.cancel() }
        await withTaskGroup(of: Void.self) { group in
            for c in all.values {
                group.addTask {
                    if let t = drainTimeout { await c.close(drain: true, drainTimeout: t) } else { await c.close(drain: false) }
                }
            }
        }
        registeredContinuation.finish()
    }
}

public struct ClusterNodeError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
