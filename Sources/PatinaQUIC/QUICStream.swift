import CPatinaShims
import CQuic

/// A QUIC stream (RFC 9000 §2). Bidirectional streams read and write; a unidirectional
/// stream only writes (opened locally) or only reads (opened by the peer).
///
/// Backpressure both ways: `write` suspends while the stream holds `streamSendBuffer`
/// unacknowledged bytes (the peer's flow-control window stops ngtcp2 from sending more),
/// and the peer gets new credit only as `read` hands bytes to the application.
///
/// Releasing a stream that was not finished resets it; releasing one with unread data
/// stops the peer from sending and returns the unread bytes' credit to the connection.
public final class QUICStream: Sendable {
    let core: StreamCore
    /// Keeps the connection open while the application holds one of its streams.
    let connection: QUICConnection?
    public var id: Int64 { core.id }
    /// Set for both ends of a uni stream: the opener only writes, the receiver only reads.
    public let isUnidirectional: Bool

    init(core: StreamCore, connection: QUICConnection?) {
        self.core = core
        self.connection = connection
        self.isUnidirectional = core.isUnidirectional
    }

    deinit {
        let core = self.core
        let needsRelease = core.shared.state.withLock { s -> Bool in
            s.released = true
            let fullyRead = s.fin && s.head == s.chunks.count && s.consumed == 0 && !s.creditPending && s.error == nil
            return !fullyRead || !s.writeFinished
        }
        guard needsRelease || core.isRemote else { return }
        let connection = core.connection
        connection.endpoint.submit {
            core.releasedByApplication = true
            defer { core.returnStreamCreditIfDone() }
            let (unread, finished) = core.shared.state.withLock { s -> (UInt64, Bool) in
                let n = s.buffered + s.consumed
                s.buffered = 0
                s.consumed = 0
                s.chunks.removeAll()
                s.head = 0
                return (n, s.fin)
            }
            guard let conn = connection.conn, connection.state == .established else { return }
            if unread > 0 { connection.extendCredit(stream: -1, bytes: unread) }
            guard connection.streams[core.id] != nil else { return }
            if core.canReceive && !finished {
                _ = ngtcp2_conn_shutdown_stream_read(conn, core.id, 0)
            }
            if core.canSend && !core.finQueued && core.sendError == nil {
                _ = ngtcp2_conn_shutdown_stream_write(conn, core.id, 0)
            }
            connection.endpoint.markDirty(connection)
        }
    }

    /// Queues `bytes`; returns once the stream's unacknowledged bytes are within the send buffer.
    /// With `finish`, also ends the stream after these bytes.
    public func write(_ bytes: [UInt8], finish: Bool = false) async throws {
        let core = self.core
        if finish { core.shared.state.withLock { $0.writeFinished = true } }
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            let endpoint = core.connection.endpoint
            let ok = endpoint.submit {
                core.write(bytes, fin: finish, limit: endpoint.config.streamSendBuffer, c)
            }
            if !ok { c.resume(throwing: QUICError(.endpointClosed, "")) }
        }
    }

    /// Ends the sending side (FIN). Data already written is still delivered.
    public func finish() async throws {
        try await write([], finish: true)
    }

    /// The next bytes in order, or nil at the end of the stream. Throws if the stream was reset
    /// or the connection ended before the end of the stream.
    public func read() async throws -> [UInt8]? {
        let core = self.core
        let shared = core.shared
        enum Step { case value([UInt8]?), failure(QUICError), suspend }
        var postCredit = false
        let step: Step = shared.state.withLock { s in
            if let chunk = s.takeChunk(postCredit: &postCredit) { return .value(chunk) }
            if let e = s.error { return .failure(e) }
            if s.fin { return .value(nil) }
            return .suspend
        }
        if postCredit { returnCredit() }
        switch step {
        case .value(let v): return v
        case .failure(let e): throw e
        case .suspend: break
        }
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<[UInt8]?, any Error>) in
            // Re-check under the lock: data may have arrived since the fast path.
            enum Now { case value([UInt8]?), failure(QUICError), parked }
            var postCredit = false
            let now: Now = shared.state.withLock { s in
                if let chunk = s.takeChunk(postCredit: &postCredit) { return .value(chunk) }
                if let e = s.error { return .failure(e) }
                if s.fin { return .value(nil) }
                s.reader = c
                return .parked
            }
            if postCredit { returnCredit() }
            switch now {
            case .value(let v): c.resume(returning: v)
            case .failure(let e): c.resume(throwing: e)
            case .parked: break
            }
        }
    }

    /// Reads to the end of the stream, failing beyond `limit` bytes.
    public func readAll(limit: Int = 64 * 1024 * 1024) async throws -> [UInt8] {
        var out: [UInt8] = []
        while let chunk = try await read() {
            out += chunk
            if out.count > limit { throw QUICError(.protocolViolation, "stream exceeds \(limit) bytes") }
        }
        return out
    }

    /// Abandons the stream in both directions with an application error code (RESET_STREAM / STOP_SENDING).
    public func reset(errorCode: UInt64 = 0) {
        let core = self.core
        core.connection.endpoint.submit {
            guard let conn = core.connection.conn else { return }
            _ = ngtcp2_conn_shutdown_stream(conn, core.id, errorCode)
            core.fail(QUICError(.streamReset, "reset locally", errorCode: errorCode))
            core.connection.endpoint.markDirty(core.connection)
        }
    }

    private func returnCredit() {
        let core = self.core
        core.connection.endpoint.submit {
            let n = core.shared.state.withLock { s -> UInt64 in
                let n = s.consumed
                s.consumed = 0
                s.creditPending = false
                return n
            }
            core.connection.extendCredit(stream: core.id, bytes: n)
        }
    }
}
