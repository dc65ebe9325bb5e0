import CPatinaShims
import CQuic
import Glibc
import Synchronization

/// One stream as the loop sees it. The send side lives here (loop thread only); the
/// receive side lives in `shared`, so a reader takes buffered bytes without a trip
/// through the loop.
///
/// `@unchecked Sendable`: the send-side properties are confined to the loop thread.
final class StreamCore: @unchecked Sendable {
    /// Bytes handed to ngtcp2 MUST stay valid until acknowledged, so each write is copied
    /// once into memory that the stream frees when the ACK arrives.
    struct Chunk {
        let base: UnsafeMutablePointer<UInt8>
        let offset: UInt64
        let count: Int
        var end: UInt64 { offset + UInt64(count) }
    }

    let id: Int64
    /// Strong: the connection drops its streams when they close or it ends, breaking the cycle.
    let connection: ConnectionCore
    let shared: StreamShared
    var canSend: Bool
    var canReceive: Bool
    /// A peer-opened Patina stream whose kind byte has not arrived yet (see `StreamKind`).
    var awaitingKind = false
    /// What the application sees: a Patina "uni" stream travels on a QUIC bidirectional stream.
    var isUnidirectional: Bool

    private var chunks: [Chunk] = []
    private var head = 0
    var queuedOffset: UInt64 = 0
    var writtenOffset: UInt64 = 0
    var ackedOffset: UInt64 = 0
    var finQueued = false
    var finWritten = false
    var finAcked = false
    var inSendQueue = false
    /// Set on a stream that carries a message datagram sent again (ConnectionCore.resentMessages).
    var resentMessageID: UInt64?
    var blocked = false
    var sendError: QUICError?
    /// A peer-opened stream counts against the peer's stream limit until ngtcp2 has closed it
    /// AND the application has released it; then the peer may open one more (RFC 9000 §4.6).
    let isRemote: Bool
    var closedByTransport = false
    var releasedByApplication = false
    /// Writers suspended until `ackedOffset` reaches their threshold.
    private var writers: [(threshold: UInt64, continuation: CheckedContinuation<Void, any Error>)] = []

    init(id: Int64, connection: ConnectionCore, local: Bool, bidirectional: Bool) {
        self.id = id
        self.connection = connection
        self.shared = StreamShared()
        self.isRemote = !local
        canSend = bidirectional || local
        canReceive = bidirectional || !local
        isUnidirectional = !bidirectional
        if !canReceive { shared.state.withLock { $0.fin = true } }
    }

    /// Makes this the receiving end of a Patina uni stream: it never sends data, so its
    /// FIN goes out at once and the QUIC stream closes when the sender's data is all in.
    func becomeReceiveOnly() {
        canSend = false
        isUnidirectional = true
        finQueued = true
        shared.state.withLock { $0.writeFinished = true }
        connection.enqueue(self)
    }

    /// Queues transport bytes (the kind byte) ahead of any application data.
    func queueHeader(_ byte: UInt8) {
        let base = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)
        base.pointee = byte
        chunks.append(Chunk(base: base, offset: queuedOffset, count: 1))
        queuedOffset += 1
        connection.enqueue(self)
    }

    deinit {
        for chunk in chunks[head...] { chunk.base.deallocate() }
    }

    var isWriteDone: Bool { writtenOffset == queuedOffset && (!finQueued || finWritten) }
    var isSendSettled: Bool { (!canSend && finWritten) || sendError != nil || (ackedOffset == queuedOffset && (!finQueued || finAcked || finWritten)) }

    // MARK: Send side (loop thread)

    /// Queues `bytes`; `continuation` (if any) resumes once they fit the send buffer.
    func write(_ bytes: [UInt8], fin: Bool, limit: Int, _ continuation: CheckedContinuation<Void, any Error>?) {
        if let sendError {
            continuation?.resume(throwing: sendError)
            return
        }
        guard canSend, !finQueued || (bytes.isEmpty && fin) else {
            continuation?.resume(throwing: QUICError(.protocolViolation, "stream \(id) is not writable"))
            return
        }
        if !bytes.isEmpty {
            let base = UnsafeMutablePointer<UInt8>.allocate(capacity: bytes.count)
            bytes.withUnsafeBufferPointer { base.update(from: $0.baseAddress!, count: bytes.count) }
            chunks.append(Chunk(base: base, offset: queuedOffset, count: bytes.count))
            queuedOffset += UInt64(bytes.count)
        }
        if fin { finQueued = true }
        connection.enqueue(self)
        connection.endpoint.markDirty(connection)
        guard let continuation else { return }
        if queuedOffset - ackedOffset <= UInt64(limit) {
            continuation.resume()
        } else {
            writers.append((queuedOffset - UInt64(limit), continuation))
        }
    }

    /// Up to `vecs.count` pieces of unsent data; `coversAll` when they reach the end of what is queued.
    func fillVecs(_ vecs: inout [ngtcp2_vec]) -> (count: Int, total: UInt64, coversAll: Bool) {
        var n = 0
        var total: UInt64 = 0
        var i = head
        while i < chunks.count && chunks[i].end <= writtenOffset { i += 1 }
        while i < chunks.count && n < vecs.count {
            let chunk = chunks[i]
            let skip = Int(writtenOffset > chunk.offset ? writtenOffset - chunk.offset : 0)
            vecs[n] = ngtcp2_vec(base: chunk.base + skip, len: chunk.count - skip)
            total += UInt64(chunk.count - skip)
            n += 1
            i += 1
        }
        return (n, total, i == chunks.count)
    }

    /// ngtcp2 reports acknowledged stream data in order from the start (acked_stream_data_offset).
    func acked(offset: UInt64, length: UInt64) {
        let end = offset + length
        if end > ackedOffset { ackedOffset = end }
        while head < chunks.count && chunks[head].end <= ackedOffset {
            chunks[head].base.deallocate()
            head += 1
        }
        if head > 64 && head * 2 > chunks.count {
            chunks.removeFirst(head)
            head = 0
        }
        while let first = writers.first, first.threshold <= ackedOffset {
            writers.removeFirst()
            first.continuation.resume()
        }
        if finQueued, ackedOffset >= queuedOffset { settleResentMessage() }
        connection.checkDrained()
    }

    /// Loop thread: hands the waiting reader its next chunk (or the end), and returns that
    /// chunk's flow-control credit to the peer right away.
    func wakeReader() {
        let (reader, value, taken): (CheckedContinuation<[UInt8]?, any Error>?, [UInt8]?, UInt64) = shared.state.withLock { s in
            s.wakeScheduled = false
            guard let reader = s.reader else { return (nil, nil, 0) }
            if s.head < s.chunks.count {
                s.reader = nil
                let chunk = s.chunks[s.head]
                s.head += 1
                if s.head == s.chunks.count {
                    s.chunks.removeAll(keepingCapacity: true)
                    s.head = 0
                }
                s.buffered -= UInt64(chunk.count)
                return (reader, chunk, UInt64(chunk.count))
            }
            if s.fin {
                s.reader = nil
                return (reader, nil, 0)
            }
            return (nil, nil, 0)
        }
        guard let reader else { return }
        reader.resume(returning: value)
        if taken > 0 { connection.extendCredit(stream: id, bytes: taken) }
    }

    /// A re-sent message on this stream no longer waits: delivered, or given up with the stream.
    private func settleResentMessage() {
        guard let id = resentMessageID else { return }
        resentMessageID = nil
        connection.resentMessageSettled(id)
    }

    func failSend(_ error: QUICError) {
        if sendError == nil { sendError = error }
        settleResentMessage()
        let waiting = writers
        writers.removeAll()
        for w in waiting { w.continuation.resume(throwing: error) }
    }

    func fail(_ error: QUICError) {
        failSend(error)
        shared.fail(error)
    }

    /// The stream is gone from ngtcp2: everything was delivered, or it was reset.
    func returnStreamCreditIfDone() {
        guard isRemote, releasedByApplication, let conn = connection.conn else { return }
        let quicUni = id & 0x2 != 0
        // ngtcp2 0.12.1 never closes a peer-opened QUIC uni stream (fixed upstream in 1d591bde,
        // v0.13), so for those the application's release alone returns the credit.
        guard closedByTransport || quicUni else { return }
        releasedByApplication = false  // once
        if quicUni { ngtcp2_conn_extend_max_streams_uni(conn, 1) } else { ngtcp2_conn_extend_max_streams_bidi(conn, 1) }
        connection.endpoint.markDirty(connection)
    }

    func closed(appErrorCode: UInt64) {
        closedByTransport = true
        returnStreamCreditIfDone()
        if !isSendSettled {
            failSend(QUICError(.streamReset, "stream \(id) closed", errorCode: appErrorCode))
        } else {
            finAcked = true
            let waiting = writers
            writers.removeAll()
            for w in waiting { w.continuation.resume() }
        }
        shared.fail(QUICError(.streamReset, "stream \(id) closed before its end", errorCode: appErrorCode))
    }
}

/// The receive side of a stream, shared between the loop (producer) and one reader.
///
/// Flow control is the backpressure: the loop stores what the peer sent, and credit is
/// returned to the peer only for bytes the reader has taken (RFC 9000 §4.1), so a slow
/// reader bounds the buffer at the stream window.
final class StreamShared: Sendable {
    struct State {
        var chunks: [[UInt8]] = []
        var head = 0
        var fin = false
        var error: QUICError?
        var reader: CheckedContinuation<[UInt8]?, any Error>?
        /// Bytes taken by the reader and not yet returned to the peer as credit.
        var consumed: UInt64 = 0
        var creditPending = false
        var buffered: UInt64 = 0
        var released = false
        var wakeScheduled = false
        var writeFinished = false

        /// Takes the next buffered chunk, if any. Sets `postCredit` when the reader
        /// must return flow-control credit to the peer; the last chunk's credit rides
        /// on the release at deinit instead, one loop trip less per message.
        mutating func takeChunk(postCredit: inout Bool) -> [UInt8]? {
            guard head < chunks.count else { return nil }
            let chunk = chunks[head]
            head += 1
            if head == chunks.count {
                chunks.removeAll(keepingCapacity: true)
                head = 0
            }
            buffered -= UInt64(chunk.count)
            consumed += UInt64(chunk.count)
            if !creditPending && !(fin && head == chunks.count) {
                creditPending = true
                postCredit = true
            }
            return chunk
        }
    }
    let state = Mutex(State())

    enum Delivery { case stored, wakeReader, discarded(UInt64) }

    /// Largest chunk that arriving packets are merged into while nobody reads.
    static let coalesceLimit = 256 * 1024

    /// Loop thread: new in-order data (ngtcp2 delivers stream data in order). Consecutive
    /// packets are merged into one chunk so a reader takes them in one step.
    func deliver(_ data: UnsafePointer<UInt8>?, _ count: Int, fin: Bool) -> Delivery {
        state.withLock { s in
            if s.released || s.error != nil { return .discarded(UInt64(count)) }
            if fin { s.fin = true }
            if count > 0, let data {
                let incoming = UnsafeBufferPointer(start: data, count: count)
                if s.chunks.count > s.head && s.chunks[s.chunks.count - 1].count + count <= Self.coalesceLimit {
                    s.chunks[s.chunks.count - 1].append(contentsOf: incoming)
                } else {
                    s.chunks.append(Array(incoming))
                }
                s.buffered += UInt64(count)
            }
            if s.reader != nil && !s.wakeScheduled && (s.head < s.chunks.count || s.fin) {
                s.wakeScheduled = true
                return .wakeReader
            }
            return .stored
        }
    }

    func fail(_ error: QUICError) {
        let reader: CheckedContinuation<[UInt8]?, any Error>? = state.withLock { s in
            if s.fin && s.head == s.chunks.count { return s.reader.take() }  // complete: nothing to fail
            if s.fin { return nil }  // complete but unread: let the reader drain it
            if s.error == nil { s.error = error }
            return s.reader.take()
        }
        if let reader {
            let finished = state.withLock { $0.fin }
            if finished { reader.resume(returning: nil) } else { reader.resume(throwing: error) }
        }
    }
}

/// The first byte of every stream a Patina endpoint opens (part of the `patina/1` wire format).
///
/// Patina's unidirectional streams travel on QUIC bidirectional streams: ngtcp2 0.12.1, the
/// version Debian bookworm ships, never closes a QUIC uni stream opened by the peer (fixed
/// upstream in v0.13, commit 1d591bde), so each one would leak its state and its stream credit.
/// On a bidirectional stream the receiver answers with a bare FIN and both ends close normally.
enum StreamKind: UInt8, Sendable {
    case bidirectional = 0x00
    case unidirectional = 0x01
}
