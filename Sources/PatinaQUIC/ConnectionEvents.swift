import PatinaCore
import Synchronization

/// What a connection reports to the application: incoming streams, datagrams, and its end.
final class ConnectionEvents: Sendable {
    let streams: AsyncStream<QUICStream>.Continuation
    let streamSequence: AsyncStream<QUICStream>
    /// DATAGRAM frames for the application; the loop thread wakes its reader once per packet batch.
    let datagrams: ChunkInbox
    private let ended = Mutex<(error: QUICError?, done: Bool, waiters: [CheckedContinuation<QUICError, Never>])>((nil, false, []))
    private let undelivered = Mutex<[[UInt8]]>([])

    init(datagramBuffer: Int) {
        (streamSequence, streams) = AsyncStream.makeStream(of: QUICStream.self)
        datagrams = ChunkInbox(capacity: datagramBuffer, overflow: .dropOldest)
    }

    func finish(_ error: QUICError) {
        streams.finish()
        datagrams.finish()
        let waiters = ended.withLock { e in
            e.error = error
            e.done = true
            let list = e.waiters
            e.waiters = []
            return list
        }
        for w in waiters { w.resume(returning: error) }
    }

    var closeError: QUICError? { ended.withLock { $0.error } }

    func keepUndelivered(_ messages: [[UInt8]]) {
        undelivered.withLock { $0 += messages }
    }

    func takeUndelivered() -> [[UInt8]] {
        undelivered.withLock { list in
            defer { list = [] }
            return list
        }
    }

    func waitClosed() async -> QUICError {
        await withCheckedContinuation { (c: CheckedContinuation<QUICError, Never>) in
            let error: QUICError? = ended.withLock { e in
                if e.done { return e.error }
                e.waiters.append(c)
                return nil
            }
            if let error { c.resume(returning: error) }
        }
    }
}
