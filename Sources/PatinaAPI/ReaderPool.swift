import PatinaStore

/// A fixed set of read-only connections, lent to one request at a time.
actor ReaderPool {
    private var idle: [StoreReader] = []
    private var waiters: [CheckedContinuation<StoreReader, Never>] = []

    init(store: Store, size: Int) throws {
        idle = try (0..<size).map { _ in try store.makeReader() }
    }

    func acquire() async -> StoreReader {
        if let reader = idle.popLast() { return reader }
        return await withCheckedContinuation { waiters.append($0) }
    }

    func release(_ reader: StoreReader) {
        if waiters.isEmpty {
            idle.append(reader)
        } else {
            waiters.removeFirst().resume(returning: reader)
        }
    }
}

/// The store plus the threads that run its blocking calls.
public struct StoreAccess: Sendable {
    public let store: Store
    public let writer: BlockingExecutor
    public let readers: BlockingExecutor
    let pool: ReaderPool

    public init(store: Store, readers: Int = 4) throws {
        self.store = store
        writer = BlockingExecutor(label: "patina.writer")
        self.readers = BlockingExecutor(label: "patina.readers", threads: readers)
        pool = try ReaderPool(store: store, size: readers)
    }

    /// Runs `body` with a pooled reader on a reader thread.
    func read<T: Sendable>(_ body: @escaping @Sendable (StoreReader) throws -> T) async throws -> T {
        let reader = await pool.acquire()
        do {
            let value = try await readers.run { try body(reader) }
            await pool.release(reader)
            return value
        } catch {
            await pool.release(reader)
            throw error
        }
    }
}
