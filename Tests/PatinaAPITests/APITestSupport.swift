import Foundation
import Hummingbird
import Logging
import NIOCore
@testable import PatinaAPI
import PatinaCore
import PatinaNode
import PatinaStore
import Testing

let todoSchema = """
    CREATE TABLE todos (id TEXT NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '', done INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE tags (todo TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (todo, tag));
    CREATE TABLE blobs (id INTEGER NOT NULL PRIMARY KEY, data BLOB, r REAL);
    """

/// A real API server on an ephemeral loopback port, over a real store file.
final class LiveAPI: @unchecked Sendable {
    let directory: String
    let store: Store
    let api: PatinaAPI
    let port: Int
    let task: Task<Void, Error>
    let commits = CommitLog()

    init(token: String? = nil, maxConcurrency: Int = 128) async throws {
        directory = NSTemporaryDirectory() + "patina-api-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        store = try Store(path: directory + "/node.db")
        try store.applySchema(sql: todoSchema)
        var config = APIConfig(bearerToken: token)
        config.maxConcurrency = maxConcurrency
        var hooks = APIHooks()
        let commits = self.commits
        hooks.onLocalCommit = { changesets in commits.append(changesets) }
        hooks.health = { HealthFigures(members: 3, p99LagSeconds: 0.25, queueSize: 7) }
        api = PatinaAPI(access: try StoreAccess(store: store), config: config, hooks: hooks)
        let (portStream, portContinuation) = AsyncStream<Int>.makeStream()
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        let app = Application(
            router: api.router(),
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in portContinuation.yield(channel.localAddress?.port ?? 0) },
            logger: logger)
        task = Task { try await app.runService() }
        var iterator = portStream.makeAsyncIterator()
        port = await iterator.next() ?? 0
    }

    var client: HTTPClient { HTTPClient(target: .tcp(host: "127.0.0.1", port: port)) }

    /// Blocking HTTP off the cooperative pool.
    func send(_ method: String, _ path: String, json: String? = nil, token: String? = nil) async throws -> HTTPClient.Response {
        var configured = self.client
        configured.bearerToken = token
        let client = configured
        let body = json.map { Data($0.utf8) }
        return try await Self.blocking.run { try client.send(method, path, body: body) }
    }

    static let blocking = BlockingExecutor(label: "test.http", threads: 16)

    func stop() {
        task.cancel()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

final class CommitLog: @unchecked Sendable {
    private var items: [[Changeset]] = []
    private let lock = NSLock()
    func append(_ c: [Changeset]) { lock.lock(); items.append(c); lock.unlock() }
    var all: [[Changeset]] { lock.lock(); defer { lock.unlock() }; return items }
}

func object(_ response: HTTPClient.Response) -> [String: Any] {
    ((try? JSONSerialization.jsonObject(with: response.body)) as? [String: Any]) ?? [:]
}

func ndjson(_ response: HTTPClient.Response) -> [[String: Any]] {
    response.text.split(separator: "\n").compactMap {
        (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
    }
}

/// Polls `condition` until it holds or `timeout` passes.
func eventually(timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}
