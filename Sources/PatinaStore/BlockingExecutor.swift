import Foundation

/// Runs blocking SQLite work on threads of its own, never on Swift's
/// cooperative pool (two cores here: one blocked pool thread halves the node).
///
/// A fixed number of dedicated threads, not a Dispatch queue: Dispatch caps
/// its worker threads near the core count, so a few long queries could starve
/// every other blocking caller.
public final class BlockingExecutor: Sendable {
    private let jobs: JobQueue

    /// `threads: 1` is a serial executor (the writer).
    public init(label: String, threads: Int = 1) {
        jobs = JobQueue()
        for i in 0..<max(1, threads) {
            let thread = Thread { [jobs] in jobs.work() }
            thread.name = "\(label)-\(i)"
            thread.start()
        }
    }

    deinit { jobs.stop() }

    public func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            jobs.submit { continuation.resume(with: Result { try work() }) }
        }
    }
}

/// Jobs waiting for a thread. @unchecked Sendable: every field is guarded by `condition`.
private final class JobQueue: @unchecked Sendable {
    private let condition = NSCondition()
    private var pending: [@Sendable () -> Void] = []
    private var head = 0
    private var stopped = false

    func submit(_ job: @escaping @Sendable () -> Void) {
        condition.lock()
        pending.append(job)
        condition.signal()
        condition.unlock()
    }

    func stop() {
        condition.lock()
        stopped = true
        condition.broadcast()
        condition.unlock()
    }

    func work() {
        while true {
            condition.lock()
            while head == pending.count && !stopped { condition.wait() }
            if head == pending.count {
                condition.unlock()
                return
            }
            let job = pending[head]
            head += 1
            if head > 1024 && head * 2 > pending.count {
                pending.removeFirst(head)
                head = 0
            }
            condition.unlock()
            job()
        }
    }
}
