import Dispatch

/// Runs blocking work (SQLite through ``Store``) on a serial dispatch queue of
/// its own, so it never occupies a thread of Swift's cooperative pool
/// (DESIGN.md: 2 cores, the pool is as small as that).
public final class BlockingWorker: Sendable {
    private let queue: DispatchQueue

    public init(label: String = "patina.cluster.store") {
        queue = DispatchQueue(label: label, qos: .userInitiated)
    }

    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            queue.async { continuation.resume(with: Result { try body() }) }
        }
    }
}
