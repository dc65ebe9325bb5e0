import Foundation
@testable import PatinaCluster
import PatinaCore
import PatinaStore
import Synchronization

/// A temporary directory removed when the value is released.
final class SyncTempDir {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "patina-sync-test-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func file(_ name: String) -> String { path + "/" + name }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

let syncSchema = """
    CREATE TABLE items (id INTEGER NOT NULL PRIMARY KEY, name TEXT, qty INTEGER NOT NULL DEFAULT 0);
    """

func makeSyncStore(_ dir: SyncTempDir, _ name: String) throws -> Store {
    let store = try Store(path: dir.file(name))
    try store.applySchema(sql: syncSchema)
    return store
}

func allRows(_ store: Store) throws -> [[SQLValue]] {
    try store.query("SELECT id, name, qty FROM items ORDER BY id")
}

/// One direction of an in-memory byte pipe: unbounded, cancellation-aware reads.
final class MemoryInbox: Sendable {
    struct State {
        var chunks: [[UInt8]] = []
        var head = 0
        var finished = false
        var cancelled = false
        var waiter: CheckedContinuation<[UInt8]?, Never>?
    }
    let state = Mutex(State())

    func push(_ bytes: [UInt8]) {
        let w: CheckedContinuation<[UInt8]?, Never>? = state.withLock { s in
            if let w = s.waiter {
                s.waiter = nil
                return w
            }
            s.chunks.append(bytes)
            return nil
        }
        w?.resume(returning: bytes)
    }

    func finish() {
        let w: CheckedContinuation<[UInt8]?, Never>? = state.withLock { s in
            s.finished = true
            defer { s.waiter = nil }
            return s.waiter
        }
        w?.resume(returning: nil)
    }

    func next() async -> [UInt8]? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<[UInt8]?, Never>) in
                let ready: [UInt8]?? = state.withLock { s in
                    if s.head < s.chunks.count {
                        s.head += 1
                        return .some(s.chunks[s.head - 1])
                    }
                    if s.finished || s.cancelled { return .some(nil) }
                    s.waiter = c
                    return nil
                }
                if let ready { c.resume(returning: ready) }
            }
        } onCancel: {
            let w: CheckedContinuation<[UInt8]?, Never>? = state.withLock { s in
                s.cancelled = true
                defer { s.waiter = nil }
                return s.waiter
            }
            w?.resume(returning: nil)
        }
    }
}

/// One end of an in-memory bi-directional stream. Writes are cut into random
/// pieces so readers meet arbitrary splits.
struct MemorySyncStream: SyncStream {
    let inbox: MemoryInbox
    let out: MemoryInbox
    let splitSeed: UInt64

    func write(_ bytes: [UInt8]) async throws {
        var rng = SplitMix64(seed: splitSeed ^ UInt64(bytes.count))
        var i = 0
        while i < bytes.count {
            let n = 1 + Int(rng.next() % 9000)
            out.push(Array(bytes[i..<min(bytes.count, i + n)]))
            i += n
        }
    }
    func finish() async throws { out.finish() }
    func read() async throws -> [UInt8]? { await inbox.next() }
}

func memoryStreamPair(seed: UInt64 = 1) -> (client: MemorySyncStream, server: MemorySyncStream) {
    let toServer = MemoryInbox(), toClient = MemoryInbox()
    return (MemorySyncStream(inbox: toClient, out: toServer, splitSeed: seed),
            MemorySyncStream(inbox: toServer, out: toClient, splitSeed: seed &+ 1))
}

/// Polls `condition` until it holds or `timeout` passes.
func eventually(timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        await Task.yield()
        try? await Task.sleep(for: .milliseconds(5))
    }
    return try await condition()
}
