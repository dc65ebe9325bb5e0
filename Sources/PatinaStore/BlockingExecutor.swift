import Dispatch

/// Runs blocking SQLite work on threads of its own, never on Swift's
/// cooperative pool (two cores here: one blocked pool thread halves the node).
public final class BlockingExecutor: Sendable {
    private let queue: DispatchQueue

    /// A serial executor (the writer) or a concurrent one (readers).
    public init(label: String, concurrent: Bool = false) {
        queue = DispatchQueue(label: label, qos: .userInitiated, attributes: concurrent ? [.concurrent] : [])
    }

    public func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            queue.async {
                continuation.resume(with: Result { try work() })
            }
        }
    }
}
