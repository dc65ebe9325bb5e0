import Foundation
@testable import PatinaAPI
import PatinaCore
import PatinaStore
import Synchronization
import Testing

@Suite struct TransactionAPITests {
    @Test func everyStatementFormRunsInOneTransaction() async throws {
        let live = try await LiveAPI()
        defer { live.stop() }
        let response = try await live.send("POST", "/v1/transactions", json: """
            [
              "INSERT INTO todos (id, title) VALUES ('a', 'plain string')",
              ["INSERT INTO todos (id, title, done) VALUES (?, ?, ?)", ["b", "positional", 1]],
              ["INSERT INTO todos (id, title) VALUES (:id, :title)", {":id": "c", "title": "named"}],
              {"query": "INSERT INTO todos (id, title) VALUES (?, ?)", "params": ["d", "object"]},
              {"query": "UPDATE todos SET title = :t WHERE id = :id", "named_params": {"t": "object named", "id": "d"}},
              ["INSERT INTO blobs (id, data, r) VALUES (?, ?, ?)", [1, [0, 1, 255], 2.5]]
            ]
            """)
        #expect(response.status == 200, "\(response.text)")
        let body = object(response)
        let results = body["results"] as? [[String: Any]] ?? []
        #expect(results.count == 6)
        #expect(results.allSatisfy { ($0["rows_affected"] as? Int) == 1 && $0["time"] is Double })
        #expect(body["version"] as? Int == 1)
        #expect(body["actor_id"] as? String == live.store.actorID.description)
        #expect(try live.store.query("SELECT id, title, done FROM todos ORDER BY id") == [
            [.text("a"), .text("plain string"), .integer(0)], [.text("b"), .text("positional"), .integer(1)],
            [.text("c"), .text("named"), .integer(0)], [.text("d"), .text("object named"), .integer(0)],
        ])
        #expect(try live.store.query("SELECT data, r FROM blobs") == [[.blob([0, 1, 255]), .real(2.5)]])
        // The commit went to the broadcast hook as one version.
        #expect(live.commits.all.count == 1)
        #expect(live.commits.all.first?.first?.versions == 1...1)
    }

    @Test func aFailingStatementRollsEverythingBackAndIsReportedInPlace() async throws {
        let live = try await LiveAPI()
        defer { live.stop() }
        let response = try await live.send("POST", "/v1/transactions", json: """
            ["INSERT INTO todos (id) VALUES ('x')", "INSERT INTO todos (id) VALUES ('y')", "INSERT INTO nope VALUES (1)"]
            """)
        #expect(response.status == 400)
        let results = object(response)["results"] as? [[String: Any]] ?? []
        #expect(results.count == 3)
        #expect((results[2]["error"] as? String)?.contains("no such table: nope") == true)
        #expect(object(response)["version"] == nil)
        #expect(try live.store.query("SELECT count(*) FROM todos") == [[.integer(0)]])
        #expect(live.commits.all.isEmpty)

        let conflict = try await live.send("POST", "/v1/transactions", json: """
            ["INSERT INTO todos (id) VALUES ('x')", "INSERT INTO todos (id) VALUES ('x')"]
            """)
        #expect(conflict.status == 409)
        #expect(try live.store.query("SELECT count(*) FROM todos") == [[.integer(0)]])
    }

    @Test(arguments: [
        ("[]", 400, "empty transaction"),
        ("{not json", 400, "invalid JSON"),
        ("{\"query\": 1}", 400, "JSON array"),
        ("[42]", 400, "statement must be"),
        ("[[\"SELECT 1\", \"x\"]]", 400, "parameters must be"),
        ("[\"DELETE FROM todos__patina_clock\"]", 403, "internal table"),
        ("[\"UPDATE __patina_bookkeeping SET site = 9\"]", 403, "internal table"),
        ("[\"CREATE TABLE t (id INTEGER PRIMARY KEY)\"]", 403, "schema changes"),
        ("[\"INSERT INTO todos (id) VALUES (?)\"]", 400, "parameters"),
        ("[\"SELEC 1\"]", 400, "syntax error"),
    ])
    func badRequestsGetAClearErrorAndChangeNothing(body: String, status: Int, message: String) async throws {
        let live = try await LiveAPI()
        defer { live.stop() }
        let response = try await live.send("POST", "/v1/transactions", json: body)
        #expect(response.status == status, "\(response.text)")
        #expect(response.text.contains(message), "\(response.text)")
        #expect(try live.store.query("SELECT count(*) FROM todos__patina_clock") == [[.integer(0)]])
    }

    @Test func aStatementTimeoutRollsBack() async throws {
        let live = try await LiveAPI()
        defer { live.stop() }
        let slow = """
            ["INSERT INTO todos (id) VALUES ('t')",
             "INSERT INTO todos (id, title) SELECT 'u', count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 500000000) SELECT x FROM c)"]
            """
        let started = ContinuousClock.now
        let response = try await live.send("POST", "/v1/transactions?timeout=0.3", json: slow)
        #expect(response.status == 504, "\(response.text)")
        #expect(response.text.contains("timed out"))
        #expect(ContinuousClock.now - started < .seconds(10))
        #expect(try live.store.query("SELECT count(*) FROM todos") == [[.integer(0)]])
    }

    @Test func bearerTokenIsRequiredWhenConfigured() async throws {
        let live = try await LiveAPI(token: "s3cret-token")
        defer { live.stop() }
        let missing = try await live.send("POST", "/v1/transactions", json: "[\"INSERT INTO todos (id) VALUES ('a')\"]")
        #expect(missing.status == 401)
        #expect(missing.text.contains("missing bearer token"))
        let wrong = try await live.send("GET", "/v1/health", token: "s3cret-tokeN")
        #expect(wrong.status == 401)
        #expect(try live.store.query("SELECT count(*) FROM todos") == [[.integer(0)]])
        let right = try await live.send("POST", "/v1/transactions", json: "[\"INSERT INTO todos (id) VALUES ('a')\"]", token: "s3cret-token")
        #expect(right.status == 200)
    }

    @Test func healthReportsFiguresAndThresholdsTurnIt503() async throws {
        let live = try await LiveAPI()
        defer { live.stop() }
        let ok = try await live.send("GET", "/v1/health")
        #expect(ok.status == 200)
        let figures = object(ok)["response"] as? [String: Any] ?? [:]
        #expect(figures["members"] as? Int == 3 && figures["queue_size"] as? Int == 7 && figures["gaps"] as? Int == 0)
        #expect(figures["p99_lag"] as? Double == 0.25)
        #expect(try await live.send("GET", "/v1/health?p99_lag=0.1").status == 503)
        #expect(try await live.send("GET", "/v1/health?queue_size=5").status == 503)
        #expect(try await live.send("GET", "/v1/health?queue_size=10&p99_lag=1&gaps=0").status == 200)
    }

    @Test func overTheConcurrencyLimitRequestsGet503() async throws {
        let live = try await LiveAPI(maxConcurrency: 1)
        defer { live.stop() }
        // One slow transaction holds the only slot while another arrives. A probe can
        // win the slot first, and the slow one is then the request shed: try again.
        var shed = false
        for _ in 0..<5 where !shed {
            let slowDone = Atomic<Bool>(false)
            let slow = Task {
                defer { slowDone.store(true, ordering: .releasing) }
                return try await live.send("POST", "/v1/transactions?timeout=2", json: """
                    ["INSERT INTO todos (id, title) SELECT 'u', count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 500000000) SELECT x FROM c)"]
                    """)
            }
            let deadline = ContinuousClock.now + .seconds(5)
            while !shed && !slowDone.load(ordering: .acquiring) && ContinuousClock.now < deadline {
                let response = try await live.send("GET", "/v1/health")
                if response.status == 503 {
                    shed = response.text.contains("max concurrency limit reached")
                }
            }
            _ = try await slow.value
        }
        #expect(shed)
    }
}

@Suite struct PropagationLagTests {
    @Test func healthReportsTheLagOfAppliedRemoteVersions() async throws {
        let live = try await LiveAPI()
        defer { live.stop() }
        let remote = ActorID.random()
        let now = UInt64(Date().timeIntervalSince1970 * 1000)
        let key = PackedPrimaryKey([.text("r")])
        let change = Change(table: "todos", pk: key, cid: "title", val: .text("from afar"), colVersion: 1, seq: 0, cl: 1)
        // Committed at the origin 2 s ago.
        try live.store.merge([.changes(actor: remote, version: 1, changes: [change], seqs: 0...0, lastSeq: 0,
                                       ts: HybridTimestamp(milliseconds: now - 2000, counter: 0))])
        let health = object(try await live.send("GET", "/v1/health"))["response"] as? [String: Any] ?? [:]
        let lag = health["p99_lag"] as? Double ?? 0
        #expect(lag >= 1.9 && lag < 30, "\(health)")
        #expect(try await live.send("GET", "/v1/health?p99_lag=1").status == 503)
    }
}
