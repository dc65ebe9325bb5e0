import Foundation
@testable import PatinaAPI
import PatinaCore
import PatinaNode
import PatinaStore
import Testing

@Suite struct QueryAPITests {
    @Test func queriesStreamColumnsRowsAndEndOfQuery() async throws {
        let live = try await LiveAPI()
        defer { live.stop() }
        try live.store.write { tx in
            for i in 0..<5000 { try tx.execute("INSERT INTO todos (id, title) VALUES (?, ?)", [.text(String(format: "%05d", i)), .text("t\(i)")]) }
        }
        let response = try await live.send("POST", "/v1/queries", json: "[\"SELECT id, title, done FROM todos WHERE done = ? ORDER BY id\", [0]]")
        #expect(response.status == 200)
        #expect(response.headers["content-type"] == "application/x-ndjson")
        let lines = ndjson(response)
        #expect(lines.first?["columns"] as? [String] == ["id", "title", "done"])
        let rows = lines.compactMap { $0["row"] as? [Any] }
        #expect(rows.count == 5000)
        #expect(rows.first?[0] as? Int == 1)
        #expect((rows.last?[1] as? [Any])?.first as? String == "04999")
        #expect((lines.last?["eoq"] as? [String: Any])?["time"] is Double)
    }

    @Test func badQueriesGetAnError() async throws {
        let live = try await LiveAPI()
        defer { live.stop() }
        let bad = try await live.send("POST", "/v1/queries", json: "\"SELECT * FROM missing\"")
        #expect(bad.status == 400)
        #expect(bad.text.contains("no such table: missing"))
        let write = try await live.send("POST", "/v1/queries", json: "\"DELETE FROM todos\"")
        #expect(write.status >= 400, "a query endpoint never writes: \(write.text)")
    }

    @Test func aSlowQueryTimesOutInsideTheStream() async throws {
        let live = try await LiveAPI()
        defer { live.stop() }
        let response = try await live.send("POST", "/v1/queries?timeout=0.3",
            json: "\"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 500000000) SELECT count(*) FROM c\"")
        #expect(ndjson(response).last?["error"] as? String == "statement timed out")
    }
}

/// Reads a subscription stream on a thread of its own.
final class StreamReader: @unchecked Sendable {
    let thread: Task<Void, Error>

    init(live: LiveAPI, method: String, path: String, json: String?) {
        let client = live.client
        let sink = Sink()
        thread = Task {
            try await LiveAPI.blocking.run {
                try client.lines(method, path, body: json.map { Data($0.utf8) }, onHead: { _, h in sink.headers = h }) { line in
                    guard let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else { return true }
                    sink.append(object)
                    return !sink.stopped
                }
            }
        }
        self.sink = sink
    }

    private let sink: Sink
    var all: [[String: Any]] { sink.all }
    var queryID: String? { sink.headers["corro-query-id"] }
    var headers: [String: String] { sink.headers }
    func stop() { sink.stopped = true }

    final class Sink: @unchecked Sendable {
        private let lock = NSLock()
        private var items: [[String: Any]] = []
        var headers: [String: String] {
            get { lock.lock(); defer { lock.unlock() }; return _headers }
            set { lock.lock(); _headers = newValue; lock.unlock() }
        }
        private var _headers: [String: String] = [:]
        var stopped: Bool {
            get { lock.lock(); defer { lock.unlock() }; return _stopped }
            set { lock.lock(); _stopped = newValue; lock.unlock() }
        }
        private var _stopped = false
        func append(_ o: [String: Any]) { lock.lock(); items.append(o); lock.unlock() }
        var all: [[String: Any]] { lock.lock(); defer { lock.unlock() }; return items }
    }
}

/// Applies a subscription's events to its rows: what a client does.
struct Materialized {
    var rows: [Int: [String]] = [:]
    var lastChange = 0
    var contiguous = true

    mutating func apply(_ line: [String: Any]) {
        if let row = line["row"] as? [Any], let id = row[0] as? Int, let cells = row[1] as? [Any] {
            rows[id] = cells.map { "\($0)" }
        }
        if let eoq = line["eoq"] as? [String: Any], let id = eoq["change_id"] as? Int { lastChange = id }
        if let change = line["change"] as? [Any], change.count == 4, let kind = change[0] as? String,
           let id = change[1] as? Int, let cells = change[2] as? [Any], let changeID = change[3] as? Int {
            if changeID != lastChange + 1 { contiguous = false }
            lastChange = changeID
            if kind == "delete" { rows[id] = nil } else { rows[id] = cells.map { "\($0)" } }
        }
    }

    var sortedRows: [[String]] { rows.values.sorted { $0.description < $1.description } }
}

@Suite struct SubscriptionAPITests {
    func freshRows(_ live: LiveAPI, _ sql: String) throws -> [[String]] {
        try live.store.query(sql).map { row in
            row.map { value -> String in
                switch value {
                case .text(let s): return s
                case .integer(let i): return "\(i)"
                default: return "\(value)"
                }
            }
        }.sorted { $0.description < $1.description }
    }

    @Test(arguments: [
        "SELECT id, title, done FROM todos WHERE done = 0",
        "SELECT t.id, t.title, g.tag FROM todos t JOIN tags g ON g.todo = t.id WHERE g.tag != 'skip'",
    ])
    func everyChangeArrivesContiguouslyAndReplaysToAFreshQuery(sql: String) async throws {
        let live = try await LiveAPI()
        defer { live.stop() }
        try live.store.execute("INSERT INTO todos (id, title) VALUES ('seed', 'before')")
        try live.store.execute("INSERT INTO tags (todo, tag) VALUES ('seed', 'x')")
        let reader = StreamReader(live: live, method: "POST", path: "/v1/subscriptions", json: try String(decoding: JSONSerialization.data(withJSONObject: sql, options: .fragmentsAllowed), as: UTF8.self))
        #expect(try await eventually { reader.all.contains { $0["eoq"] != nil } })
        #expect(reader.queryID != nil)

        // Concurrent writers through the API: inserts, updates, deletes, re-inserts.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for writer in 0..<4 {
                group.addTask {
                    var rng = SplitMix64(seed: UInt64(writer + 1))
                    for i in 0..<40 {
                        let id = "k\(rng.next() % 12)"
                        let statement: String
                        switch rng.next() % 5 {
                        case 0: statement = "[\"INSERT OR REPLACE INTO todos (id, title, done) VALUES ('\(id)', 'w\(writer)-\(i)', \(rng.next() % 2))\"]"
                        case 1: statement = "[\"UPDATE todos SET title = 'u\(writer)-\(i)' WHERE id = '\(id)'\"]"
                        case 2: statement = "[\"DELETE FROM todos WHERE id = '\(id)'\"]"
                        case 3: statement = "[\"INSERT OR IGNORE INTO tags (todo, tag) VALUES ('\(id)', 't\(rng.next() % 3)')\"]"
                        default: statement = "[\"DELETE FROM tags WHERE todo = '\(id)'\"]"
                        }
                        let response = try await live.send("POST", "/v1/transactions", json: statement)
                        #expect(response.status == 200, "\(response.text)")
                    }
                }
            }
            try await group.waitForAll()
        }
        let expected = try freshRows(live, sql)
        var state = Materialized()
        let converged = try await eventually(timeout: .seconds(15)) {
            state = Materialized()
            for line in reader.all { state.apply(line) }
            return state.sortedRows == expected
        }
        #expect(converged, "materialized \(state.sortedRows.count) rows, expected \(expected.count)")
        #expect(state.contiguous, "change ids must be contiguous")
        #expect(state.lastChange > 0)
        reader.stop()
    }

    @Test func resumingFromAChangeIDReplaysWhatCameAfter() async throws {
        let live = try await LiveAPI()
        defer { live.stop() }
        let first = StreamReader(live: live, method: "POST", path: "/v1/subscriptions", json: "\"SELECT id, title FROM todos\"")
        #expect(try await eventually { first.all.contains { $0["eoq"] != nil } })
        for i in 0..<5 { try live.store.execute("INSERT INTO todos (id, title) VALUES (?, 'x')", [.text("r\(i)")]) }
        #expect(try await eventually { first.all.filter { $0["change"] != nil }.count == 5 })
        let id = try #require(first.queryID)
        first.stop()

        let resumed = StreamReader(live: live, method: "GET", path: "/v1/subscriptions/\(id)?from=2", json: nil)
        #expect(try await eventually { resumed.all.filter { $0["change"] != nil }.count == 3 })
        let ids = resumed.all.compactMap { ($0["change"] as? [Any])?[3] as? Int }
        #expect(ids == [3, 4, 5])
        #expect(!resumed.all.contains { $0["row"] != nil }, "a resumed stream sends no initial rows")
        // And it keeps going live.
        try live.store.execute("UPDATE todos SET title = 'y' WHERE id = 'r0'")
        #expect(try await eventually { resumed.all.compactMap { ($0["change"] as? [Any])?[3] as? Int }.last == 6 })
        let update = resumed.all.last { $0["change"] != nil }?["change"] as? [Any]
        #expect(update?[0] as? String == "update")
        resumed.stop()

        let unknown = try await live.send("GET", "/v1/subscriptions/\(UUID().uuidString)")
        #expect(unknown.status == 404)
    }

    @Test func updatesStreamNotifiesChangedRows() async throws {
        let live = try await LiveAPI()
        defer { live.stop() }
        let reader = StreamReader(live: live, method: "POST", path: "/v1/updates/tags", json: nil)
        // The stream is registered once the response head arrives.
        #expect(try await eventually { !reader.headers.isEmpty })
        try live.store.execute("INSERT INTO tags (todo, tag) VALUES ('a', 'red')")
        try live.store.execute("DELETE FROM tags WHERE todo = 'a'")
        try live.store.execute("INSERT INTO todos (id) VALUES ('other table')")
        #expect(try await eventually { reader.all.count == 2 })
        let notes = reader.all.compactMap { $0["notify"] as? [Any] }
        #expect(notes.map { $0[0] as? String } == ["update", "delete"])
        #expect(notes.first?[1] as? [String] == ["a", "red"])
        reader.stop()
        #expect(try await live.send("POST", "/v1/updates/nope").status == 404)
    }

    /// A listener whose response is dropped without being written leaves the feed.
    @Test func anUnwrittenUpdatesResponseLeavesTheFeed() {
        let feed = UpdateFeed()
        do {
            let subscription = feed.subscribe(table: "tags")
            #expect(feed.listenerCount == 1)
            _ = subscription
        }
        #expect(feed.listenerCount == 0)
        let cancelled = feed.subscribe(table: "tags")
        cancelled.cancel()
        #expect(feed.listenerCount == 0)
        #expect(cancelled.inbox.append([1]) == .refused, "finished when it left")
    }

    /// Commits queued while the stream's writer is busy leave in one write; none may be
    /// lost, repeated or reordered on the way.
    @Test func updatesStreamDeliversABurstOfCommitsWholeAndInOrder() async throws {
        let live = try await LiveAPI()
        defer { live.stop() }
        let reader = StreamReader(live: live, method: "POST", path: "/v1/updates/tags", json: nil)
        #expect(try await eventually { !reader.headers.isEmpty })
        let commits = 300
        for i in 0..<commits { try live.store.execute("INSERT INTO tags (todo, tag) VALUES ('t\(i)', 'x')") }
        try live.store.execute("INSERT INTO tags (todo, tag) VALUES ('m1', 'y'), ('m2', 'y')")
        #expect(try await eventually { reader.all.count >= commits + 2 })
        let todos = reader.all.compactMap { (($0["notify"] as? [Any])?[1] as? [String])?.first }
        #expect(todos == (0..<commits).map { "t\($0)" } + ["m1", "m2"])
        reader.stop()
    }
}
