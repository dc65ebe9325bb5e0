import CPatinaShims
import CQuic

/// An established QUIC connection with a verified peer.
///
/// Releasing the last reference closes the connection (error code 0).
public final class QUICConnection: Sendable {
    let core: ConnectionCore
    /// The peer's address.
    public let remoteAddress: QUICSocketAddress

    init(core: ConnectionCore) {
        self.core = core
        self.remoteAddress = core.remote.address
    }

    deinit {
        let core = self.core
        core.endpoint.submit { if core.state == .established { core.closeLocally(errorCode: 0, reason: "") } }
    }

    /// Streams the peer opens, in order of their first frame.
    public var incomingStreams: AsyncStream<QUICStream> { core.events.streamSequence }

    /// DATAGRAM frames from the peer (RFC 9221). Unreliable: when the reader lags, the
    /// oldest are dropped beyond `QUICEndpointConfig.datagramReceiveBuffer`. Read either
    /// this or ``incomingDatagramBatches``, by one task; leaving a `for await` loop early
    /// drops the rest of the batch it was in.
    public var incomingDatagrams: QUICDatagrams { QUICDatagrams(inbox: core.events.datagrams) }

    /// The same datagrams in batches: each element is everything that arrived since the
    /// previous one was taken, so a busy reader pays its per-wake-up cost once per batch.
    public var incomingDatagramBatches: QUICDatagramBatches { QUICDatagramBatches(inbox: core.events.datagrams) }

    /// Opens a bidirectional stream; suspends while the peer's stream limit is reached.
    public func openBiStream() async throws -> QUICStream { try await open(.bidirectional) }

    /// Opens a unidirectional (send-only) stream; suspends while the peer's stream limit is reached.
    public func openUniStream() async throws -> QUICStream { try await open(.unidirectional) }

    /// Sends `bytes` as one whole unidirectional stream (open, write, FIN) in a single step:
    /// the cheapest way to send a message. Returns once the bytes are queued, with the same
    /// backpressure as `QUICStream.write`.
    public func sendUniStream(_ bytes: [UInt8]) async throws {
        let core = self.core
        let handle = self
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            let ok = core.endpoint.submit {
                core.openStream(kind: .unidirectional, opened: { result in
                    switch result {
                    case .success(let stream):
                        stream.write(bytes, fin: true, limit: core.endpoint.config.streamSendBuffer, c)
                    case .failure(let error):
                        c.resume(throwing: error)
                    }
                })
                _ = handle
            }
            if !ok { c.resume(throwing: QUICError(.endpointClosed, "")) }
        }
    }

    private func open(_ kind: StreamKind) async throws -> QUICStream {
        let core = self.core
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<QUICStream, any Error>) in
            if !core.endpoint.submit({ core.openStream(kind: kind, c) }) {
                c.resume(throwing: QUICError(.endpointClosed, ""))
            }
        }
    }

    /// Once the connection has ended: the messages (`sendMessage`) it had taken and not seen
    /// delivered, oldest first: re-sent on a stream the peer had not acknowledged yet,
    /// datagrams unacknowledged or lost and not yet re-sent, and ones still queued. Each is
    /// handed out once. Some may have reached the peer, so sending them again may deliver
    /// them twice. Why: a connection that dies with messages
    /// in flight (a peer's protocol error, an eviction) otherwise loses them silently.
    public func takeUndeliveredMessages() -> [[UInt8]] {
        core.events.takeUndelivered()
    }

    /// Sends one datagram. Suspends while the send queue is full; throws when the payload is
    /// larger than `maxDatagramPayloadSize` or the peer does not accept datagrams.
    public func sendDatagram(_ bytes: [UInt8]) async throws {
        try await queueDatagram(bytes, resendIfLost: false)
    }

    /// Sends `bytes` as one message the peer receives whole: as a DATAGRAM frame (on the
    /// peer's `incomingDatagrams`) when it fits one, else as one uni stream (on
    /// `incomingStreams`, as `sendUniStream`). A message datagram that ngtcp2 declares lost
    /// is sent again as a uni stream, so delivery is as reliable as a stream's while the
    /// connection lasts; a loss declared wrongly can deliver a message twice.
    ///
    /// Why: a small message on its own stream costs about three packets (the data, the
    /// peer's FIN and stream credit, the ack of those); as a datagram it costs one, plus a
    /// share of an ack.
    public func sendMessage(_ bytes: [UInt8]) async throws {
        do {
            try await queueDatagram(bytes, resendIfLost: true)
        } catch let error as QUICError {
            guard error.code == .datagramTooLarge || error.code == .datagramsUnsupported else { throw error }
            try await sendUniStream(bytes)
        }
    }

    private func queueDatagram(_ bytes: [UInt8], resendIfLost: Bool) async throws {
        // ngtcp2 0.12.1 asserts (aborting the process) when encoding an empty
        // DATAGRAM frame: refuse one here.
        guard !bytes.isEmpty else { throw QUICError(.datagramTooLarge, "an empty datagram cannot be sent") }
        let core = self.core
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            let ok = core.endpoint.submit {
                guard core.state == .established else {
                    c.resume(throwing: core.closeError ?? QUICError(.closedLocally, ""))
                    return
                }
                guard let max = core.maxDatagramPayload() else {
                    c.resume(throwing: QUICError(.datagramsUnsupported, ""))
                    return
                }
                if bytes.count > max {
                    c.resume(throwing: QUICError(.datagramTooLarge, "\(bytes.count) > \(max) bytes"))
                    return
                }
                core.datagrams.append(OutgoingDatagram(bytes: bytes, resendIfLost: resendIfLost))
                core.endpoint.markDirty(core)
                if core.datagrams.count <= core.endpoint.config.datagramSendQueue {
                    c.resume()
                } else {
                    core.datagramWaiters.append(c)
                }
            }
            if !ok { c.resume(throwing: QUICError(.endpointClosed, "")) }
        }
    }

    /// The largest payload `sendDatagram` accepts on this connection, or nil if the peer takes none.
    public func maxDatagramPayloadSize() async -> Int? {
        await onLoop { $0.maxDatagramPayload() } ?? nil
    }

    /// RTT estimates and counters (ngtcp2_conn_get_conn_stat plus the endpoint's counts).
    public func stats() async -> QUICConnectionStats? {
        await onLoop { $0.stats() }
    }

    /// Closes the connection with an application error code (RFC 9000 §10.2). With `drain`,
    /// first waits (up to `drainTimeout`) until the peer has acknowledged every byte written.
    public func close(errorCode: UInt64 = 0, reason: String = "", drain: Bool = true,
                      drainTimeout: Duration = .seconds(5)) async {
        let core = self.core
        if drain {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                        let ok = core.endpoint.submit {
                            guard core.state == .established else { return c.resume() }
                            core.drainWaiters.append(c)
                            core.checkDrained()
                        }
                        if !ok { c.resume() }
                    }
                }
                group.addTask {
                    try? await Task.sleep(for: drainTimeout)
                    // Give up waiting: release the drain waiter, if any is still parked.
                    core.endpoint.submit {
                        let waiters = core.drainWaiters
                        core.drainWaiters.removeAll()
                        for w in waiters { w.resume() }
                    }
                }
                await group.next()
                group.cancelAll()
            }
        }
        core.endpoint.submit {
            if core.state == .established || core.state == .handshaking {
                core.closeLocally(errorCode: errorCode, reason: reason)
            }
        }
        _ = await core.events.waitClosed()
    }

    /// Waits until the connection ends and returns why (closed by either side, idle timeout…).
    public func waitClosed() async -> QUICError { await core.events.waitClosed() }

    /// Non-nil once the connection has ended.
    public var closeError: QUICError? { core.events.closeError }
    public var isClosed: Bool { closeError != nil }

    func onLoop<T: Sendable>(_ body: @escaping @Sendable (ConnectionCore) -> T) async -> T? {
        let core = self.core
        return await withCheckedContinuation { (c: CheckedContinuation<T?, Never>) in
            if !core.endpoint.submit({ c.resume(returning: body(core)) }) { c.resume(returning: nil) }
        }
    }
}
