/// One connection per peer address, shared by every caller (DESIGN.md: "connections to peers
/// are cached and reused"). A connection that has ended is replaced on the next request;
/// concurrent requests for the same peer share one handshake.
public actor QUICConnectionCache {
    private let endpoint: QUICEndpoint
    private let timeout: Duration
    private var connections: [QUICSocketAddress: QUICConnection] = [:]
    private var pending: [QUICSocketAddress: Task<QUICConnection, any Error>] = [:]

    public init(endpoint: QUICEndpoint, connectTimeout: Duration = .seconds(10)) {
        self.endpoint = endpoint
        self.timeout = connectTimeout
    }

    /// The live connection to `peer`, dialling it if there is none (or only a dead one).
    public func connection(to peer: QUICSocketAddress, serverName: String? = nil) async throws -> QUICConnection {
        if let existing = connections[peer], !existing.isClosed { return existing }
        connections[peer] = nil
        if let task = pending[peer] { return try await task.value }
        let endpoint = self.endpoint
        let timeout = self.timeout
        let task = Task { try await endpoint.connect(to: peer, serverName: serverName, timeout: timeout) }
        pending[peer] = task
        defer { pending[peer] = nil }
        let connection = try await task.value
        connections[peer] = connection
        return connection
    }

    /// Adds a connection the peer opened to us, so replies reuse it.
    public func adopt(_ connection: QUICConnection, as peer: QUICSocketAddress) {
        if let existing = connections[peer], !existing.isClosed { return }
        connections[peer] = connection
    }

    /// Forgets `peer` and closes its connection.
    public func evict(_ peer: QUICSocketAddress) async {
        guard let connection = connections.removeValue(forKey: peer) else { return }
        await connection.close(drain: false)
    }

    /// The peers with a live connection.
    public func liveConnections() -> [QUICSocketAddress: QUICConnection] {
        connections.filter { !$0.value.isClosed }
    }

    public func closeAll() async {
        let all = connections.values
        connections.removeAll()
        for connection in all { await connection.close(drain: false) }
    }
}
