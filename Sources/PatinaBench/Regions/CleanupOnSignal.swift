import Dispatch
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Undo steps run when SIGINT (Ctrl-C) or SIGTERM ends a benchmark midway, so
/// no agent process, relay or scratch directory outlives it. Steps run newest
/// first, then the process exits with 128 + the signal number.
///
/// @unchecked Sendable: `sources` is written once in `init` and only kept alive
/// after; the steps live in a Mutex.
public final class CleanupOnSignal: @unchecked Sendable {
    private let steps = Mutex<[(id: Int, step: @Sendable () -> Void)]>([])
    private let nextID = Atomic<Int>(0)
    private let sources: [any DispatchSourceSignal]

    public init() {
        var sources: [any DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)  // delivered to the dispatch source instead
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            sources.append(source)
        }
        self.sources = sources
        for (source, sig) in zip(sources, [SIGINT, SIGTERM]) {
            source.setEventHandler { [self] in
                FileHandle.standardError.write(Data("\ninterrupted: stopping agents and removing scratch files\n".utf8))
                let all = steps.withLock { s in defer { s = [] }; return s }
                for entry in all.reversed() { entry.step() }
                exit(128 + sig)
            }
            source.resume()
        }
    }

    /// Registers `step`; the returned id removes it again once done normally.
    @discardableResult
    public func add(_ step: @escaping @Sendable () -> Void) -> Int {
        let id = nextID.add(1, ordering: .relaxed).newValue
        steps.withLock { $0.append((id, step)) }
        return id
    }

    public func remove(_ id: Int) {
        steps.withLock { $0.removeAll { $0.id == id } }
    }
}
