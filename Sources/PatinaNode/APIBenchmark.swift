import Foundation
import Hummingbird
import Logging
import PatinaAPI
import PatinaCore
import PatinaStore

/// `patina bench api`: the HTTP API against direct SQLite in one run, over real
/// HTTP on loopback.
public struct APIBenchmark: Sendable {
    public struct Result: Codable, Sendable {
        public var clients: Int
        public var http_transactions: Int
        public var http_tx_per_s: Double
        public var direct_sqlite_tx_per_s: Double
        public var http_vs_direct_ratio: Double
        public var streamed_rows: Int
        public var query_rows_per_s: Double
        public var subscriptions: Int
        public var subscription_events: Int
        public var commit_to_event_p50_ms: Double
        public var commit_to_event_p99_ms: Double
        public var commit_to_event_max_ms: Double
    }

    public var clients = 16
    public var transactions = 4000
    public var streamedRows = 200_000
    public var subscriptions = 100
    public var subscriptionWrites = 200
    public var directory: String

    public init(directory: String) { self.directory = directory }

    public func run(progress: @Sendable (String) -> Void = { _ in }) async throws -> Result {
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let store = try Store(path: directory + "/api.db")
        try store.applySchema(sql: """
            CREATE TABLE bench (id INTEGER NOT NULL PRIMARY KEY, name TEXT, value INTEGER);
            CREATE TABLE feed (id INTEGER NOT NULL PRIMARY KEY, bucket INTEGER NOT NULL DEFAULT 0, v TEXT);
            """)
        let api = PatinaAPI(access: try StoreAccess(store: store), config: APIConfig(), hooks: APIHooks())
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let (ports, portContinuation) = AsyncStream<Int>.makeStream()
        let app = Application(router: api.router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { portContinuation.yield($0.localAddress?.port ?? 0) }, logger: logger)
        let server = Task { try await app.runService() }
        defer { server.cancel() }
        var portIterator = ports.makeAsyncIterator()
        let port = await portIterator.next() ?? 0
        let client = HTTPClient(target: .tcp(host: "127.0.0.1", port: port))
        let threads = BlockingExecutor(label: "bench.clients", threads: max(clients, subscriptions) + 4)

        // 1. Single-row insert transactions from concurrent clients.
        progress("\(transactions) single-row transactions over HTTP from \(clients) clients")
        let counter = Counter()
        let httpStart = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<clients {
                group.addTask {
                    try await threads.run {
                        let connection = HTTPClient.KeepAlive(client)  // as real clients do
                        while let i = counter.next(limit: transactions) {
                            let body = Data("[[\"INSERT INTO bench (id, name, value) VALUES (?, ?, ?)\", [\(i), \"name-\(i)\", \(i * 7)]]]".utf8)
                            let response = try connection.send("POST", "/v1/transactions", body: body)
                            guard response.status == 200 else { throw HTTPClient.ClientError(message: response.text) }
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        let httpSeconds = (ContinuousClock.now - httpStart).seconds

        progress("\(transactions) direct SQLite single-row transactions")
        let direct = try Self.directInserts(path: directory + "/direct.db", count: transactions)

        // 2. Streaming a large result.
        progress("streaming \(streamedRows) rows through /v1/queries")
        try store.write { tx in
            for i in transactions..<(transactions + streamedRows) {
                try tx.execute("INSERT INTO bench (id, name, value) VALUES (?, ?, ?)", [.integer(Int64(i)), .text("name-\(i)"), .integer(Int64(i))])
            }
        }
        let queryStart = ContinuousClock.now
        let rows = try await threads.run { () -> Int in
            var n = 0
            try client.lines("POST", "/v1/queries", body: Data("\"SELECT id, name, value FROM bench\"".utf8)) { line in
                if line.hasPrefix("{\"row\"") { n += 1 }
                return true
            }
            return n
        }
        let querySeconds = (ContinuousClock.now - queryStart).seconds

        // 3. Commit → change event with many subscriptions open.
        progress("\(subscriptionWrites) writes with \(subscriptions) subscriptions open")
        let arrivals = Arrivals()
        var readers: [Task<Void, Error>] = []
        for bucket in 0..<subscriptions {
            let body = Data("[\"SELECT id, v FROM feed WHERE bucket = ?\", [\(bucket)]]".utf8)
            let streamClient = { var c = client; c.timeout = .seconds(120); return c }()
            readers.append(Task {
                try await threads.run {
                    try streamClient.lines("POST", "/v1/subscriptions", body: body) { line in
                        if line.hasPrefix("{\"eoq\"") { arrivals.ready() }
                        if line.hasPrefix("{\"change\""), let range = line.range(of: "\"w-"), let end = line[range.upperBound...].firstIndex(of: "\"") {
                            arrivals.arrived(Int(line[range.upperBound..<end]) ?? -1)
                        }
                        return !arrivals.finished
                    }
                }
            })
        }
        let readyBy = ContinuousClock.now + .seconds(60)
        while arrivals.readyCount < subscriptions {
            guard ContinuousClock.now < readyBy else { throw HTTPClient.ClientError(message: "subscriptions did not start") }
            try await Task.sleep(for: .milliseconds(10))
        }
        var rng = SplitMix64(seed: 1)
        for w in 0..<subscriptionWrites {
            let bucket = Int(rng.next() % UInt64(subscriptions))
            let body = Data("[[\"INSERT INTO feed (id, bucket, v) VALUES (?, ?, ?)\", [\(w), \(bucket), \"w-\(w)\"]]]".utf8)
            arrivals.sent(w)
            _ = try await threads.run { try client.send("POST", "/v1/transactions", body: body) }
            try await Task.sleep(for: .milliseconds(5))
        }
        let deadline = ContinuousClock.now + .seconds(30)
        while arrivals.count < subscriptionWrites && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        arrivals.finish()
        // Nudge every stream once (a row in every bucket) so its reader sees `finished` and returns.
        let nudge = "[\"WITH RECURSIVE b(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM b WHERE x < \(subscriptions - 1)) INSERT INTO feed (id, bucket, v) SELECT 1000000 + x, x, 'nudge' FROM b\"]"
        _ = try? await threads.run { try client.send("POST", "/v1/transactions", body: Data(nudge.utf8)) }
        for r in readers { _ = try? await r.value }
        let latencies = arrivals.latencies.sorted()
        func pct(_ p: Double) -> Double { latencies.isEmpty ? .nan : latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] }

        return Result(
            clients: clients, http_transactions: transactions,
            http_tx_per_s: Double(transactions) / httpSeconds,
            direct_sqlite_tx_per_s: Double(transactions) / direct,
            http_vs_direct_ratio: (Double(transactions) / httpSeconds) / (Double(transactions) / direct),
            streamed_rows: rows, query_rows_per_s: Double(rows) / querySeconds,
            subscriptions: subscriptions, subscription_events: latencies.count,
            commit_to_event_p50_ms: pct(0.5), commit_to_event_p99_ms: pct(0.99), commit_to_event_max_ms: latencies.last ?? .nan)
    }

    /// Plain SQLite: the same single-row inserts, one transaction each, same settings.
    static func directInserts(path: String, count: Int) throws -> Double {
        let store = try PlainSQLite(path: path)
        let start = ContinuousClock.now
        for i in 0..<count { try store.insertInOwnTransaction(i) }
        return (ContinuousClock.now - start).seconds
    }

    /// @unchecked Sendable: its one field is only touched under `lock`.
    final class Counter: @unchecked Sendable {
        private var value = 0
        private let lock = NSLock()
        func next(limit: Int) -> Int? {
            lock.lock()
            defer { lock.unlock() }
            guard value < limit else { return nil }
            value += 1
            return value - 1
        }
    }

    /// @unchecked Sendable: every field is only touched under `lock`.
    final class Arrivals: @unchecked Sendable {
        private let lock = NSLock()
        private var sentAt: [Int: ContinuousClock.Instant] = [:]
        private(set) var latencies: [Double] = []
        private var seen = Set<Int>()
        private var readyStreams = 0
        private var done = false
        func ready() { lock.lock(); readyStreams += 1; lock.unlock() }
        var readyCount: Int { lock.lock(); defer { lock.unlock() }; return readyStreams }
        func sent(_ w: Int) { lock.lock(); sentAt[w] = .now; lock.unlock() }
        func arrived(_ w: Int) {
            let now = ContinuousClock.now
            lock.lock()
            if let t = sentAt[w], seen.insert(w).inserted { latencies.append((now - t).seconds * 1000) }
            lock.unlock()
        }
        var count: Int { lock.lock(); defer { lock.unlock() }; return latencies.count }
        func finish() { lock.lock(); done = true; lock.unlock() }
        var finished: Bool { lock.lock(); defer { lock.unlock() }; return done }
    }
}

extension Duration {
    var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
}
