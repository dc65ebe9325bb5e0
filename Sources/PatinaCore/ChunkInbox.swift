import Synchronization

/// Byte chunks (datagrams, encoded events) passed from a producer to one reading task,
/// handed out in batches: everything queued since the reader last looked.
///
/// Why batches: under load a reader woken once per chunk pays a task switch, a thread
/// wake-up and a hop for each one, and that per-event cost, not the bytes, is what
/// saturates a node. Woken once per batch, its cost per chunk falls as the rate rises,
/// so a backlog drains instead of growing. (`AsyncStream` hands out one element per
/// `next()`, and its generic storage costs runtime metadata lookups on every call.)
///
/// The producer calls ``append(_:)`` and, once it has queued what it had, ``wakeReader()``
/// when append said a reader waits; one task reads with ``next()``.
public final class ChunkInbox: Sendable {
    /// What happens to a chunk beyond `capacity`.
    public enum Overflow: Sendable {
        /// The oldest chunk is dropped (unreliable data: datagrams).
        case dropOldest
        /// The chunk is refused and the inbox finished (a reader that far behind is cut off).
        case finish
    }

    public enum AppendResult: Sendable, Equatable {
        /// Queued; `readerWaiting`: call ``wakeReader()`` once done appending.
        case queued(readerWaiting: Bool)
        /// Refused: the inbox is finished (now, on overflow with `.finish`, or before).
        case refused
    }

    private struct State {
        var chunks: [[UInt8]] = []
        var bytes = 0
        var waiter: CheckedContinuation<[[UInt8]]?, Never>?
        var finished = false
        var overflowed = false
        var dropped: UInt64 = 0
    }

    /// At most this many chunks wait…
    public let capacity: Int
    /// …holding at most this many bytes together (one chunk alone may hold more).
    public let maxBytes: Int
    public let overflow: Overflow
    private let state = Mutex(State())

    public init(capacity: Int, maxBytes: Int = .max, overflow: Overflow) {
        self.capacity = max(1, capacity)
        self.maxBytes = max(1, maxBytes)
        self.overflow = overflow
    }

    /// Queues one chunk. When a waiting reader is reported, the caller MUST call
    /// ``wakeReader()`` once it has appended what it had.
    public func append(_ chunk: [UInt8]) -> AppendResult {
        state.withLock { s -> AppendResult in
            guard !s.finished else { return .refused }
            // Whether `count` chunks of `bytes` leave no room for this one.
            func full(_ count: Int, _ bytes: Int) -> Bool {
                count > 0 && (count >= capacity || bytes > maxBytes - chunk.count)
            }
            if full(s.chunks.count, s.bytes) {
                switch overflow {
                case .dropOldest:
                    // Counted first, then removed in one move: each removal shifts the queue.
                    var drop = 0
                    var freed = 0
                    while full(s.chunks.count - drop, s.bytes - freed) {
                        freed += s.chunks[drop].count
                        drop += 1
                    }
                    s.chunks.removeFirst(drop)
                    s.bytes -= freed
                    s.dropped += UInt64(drop)
                case .finish:
                    // The chunks queued are full, so a waiting reader is woken by wakeReader.
                    s.finished = true
                    s.overflowed = true
                    return .refused
                }
            }
            s.chunks.append(chunk)
            s.bytes += chunk.count
            return .queued(readerWaiting: s.waiter != nil)
        }
    }

    /// Hands what is queued to a waiting reader, if any.
    public func wakeReader() {
        let handOff: (CheckedContinuation<[[UInt8]]?, Never>, [[UInt8]])? = state.withLock { s in
            guard let waiter = s.waiter, !s.chunks.isEmpty else { return nil }
            s.waiter = nil
            defer { (s.chunks, s.bytes) = ([], 0) }
            return (waiter, s.chunks)
        }
        if let (waiter, chunks) = handOff { waiter.resume(returning: chunks) }
    }

    /// No more chunks: the reader gets what is queued, then nil.
    public func finish() {
        let waiter = state.withLock { s -> CheckedContinuation<[[UInt8]]?, Never>? in
            s.finished = true
            if !s.chunks.isEmpty { return nil }  // the reader takes them, then sees the end
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(returning: nil)
        wakeReader()
    }

    /// Whether a reader waits in ``next()``.
    public var hasWaitingReader: Bool { state.withLock { $0.waiter != nil } }

    /// Whether the inbox was finished because a chunk found it full (`.finish`).
    public var overflowed: Bool { state.withLock { $0.overflowed } }

    /// Chunks dropped on overflow (`.dropOldest`).
    public var droppedCount: UInt64 { state.withLock { $0.dropped } }

    /// Every chunk queued so far, oldest first, waiting for one if none is; nil once the
    /// inbox is finished and empty, or when the calling task is cancelled. One reader at
    /// a time.
    public func next() async -> [[UInt8]]? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<[[UInt8]]?, Never>) in
                let ready: [[UInt8]]?? = state.withLock { s in
                    if !s.chunks.isEmpty {
                        defer { (s.chunks, s.bytes) = ([], 0) }
                        return .some(s.chunks)
                    }
                    if s.finished || Task.isCancelled { return .some(nil) }
                    precondition(s.waiter == nil, "ChunkInbox has one reader at a time")
                    s.waiter = c
                    return nil
                }
                if let ready { c.resume(returning: ready) }
            }
        } onCancel: {
            let waiter = state.withLock { s -> CheckedContinuation<[[UInt8]]?, Never>? in
                defer { s.waiter = nil }
                return s.waiter
            }
            waiter?.resume(returning: nil)
        }
    }
}
