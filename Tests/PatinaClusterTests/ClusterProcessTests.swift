import Foundation
import PatinaNode
import PatinaCluster
import PatinaQUIC
import PatinaStore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Real `patina agent` processes replicating over QUIC with mutual TLS on loopback,
/// driven through their HTTP API. Each test is bounded in time; node logs are
/// printed only when a test fails.
@Suite(.serialized) struct ClusterProcessTests {
    @Test(.timeLimit(.minutes(2))) func threeNodesReplicateAndConverge() async throws {
        let cluster = try ProcessCluster(size: 3)
        defer { cluster.tearDown() }
        try cluster.startAll()
        try await cluster.waitMembers(3)

        _ = try cluster.node(0).exec(["INSERT INTO kv (k, v) VALUES ('hello', 'from n1')"])
        for i in 1..<3 {
            let seen = try await pollUntil(.seconds(10)) {
                (try? cluster.node(i).query("SELECT v FROM kv WHERE k = 'hello'")) == [[.text("from n1")]]
            }
            cluster.check(seen, "row from n1 not visible on n\(i + 1)")
        }

        // Concurrent conflicting updates of the same row and cells, on every node at once.
        _ = try cluster.node(0).exec(["INSERT INTO kv (k, v) VALUES ('c', 'start')"])
        try await cluster.waitIdentical("SELECT k, v FROM kv ORDER BY k", timeout: .seconds(10))
        for round in 0..<5 {
            await withTaskGroup(of: Void.self) { group in
                for i in 0..<3 {
                    group.addTask {
                        _ = try? cluster.node(i).exec([
                            "UPDATE kv SET v = 'n\(i + 1) round \(round)' WHERE k = 'c'",
                            "INSERT INTO kv (k, v) VALUES ('r\(round)', 'n\(i + 1)') ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                        ])
                    }
                }
            }
        }
        let rows = try await cluster.waitIdentical("SELECT k, v FROM kv ORDER BY k", timeout: .seconds(15))
        cluster.check(rows?.count == 7, "expected 7 identical rows everywhere, got \(String(describing: rows))")

        // The cluster's own counts reach the metrics endpoint (exported every second):
        // n1 broadcast its 7 local transactions and merged the others', and ran
        // sync rounds (the first is about a second after start).
        var metrics: [String: Double] = [:]
        let exported = try await pollUntil(.seconds(10)) {
            metrics = (try? cluster.metrics(0)) ?? [:]
            return metrics["patina_broadcast_changesets_total{kind=\"local\"}", default: 0] >= 7
                && metrics["patina_apply_changesets_total", default: 0] >= 10
                && metrics["patina_members{state=\"alive\"}"] == 2
                && metrics["patina_sync_rounds_total", default: 0] >= 1
                && metrics["patina_sync_sessions_total{result=\"pulled\"}", default: 0] >= 1
        }
        let shown = ["patina_broadcast", "patina_apply", "patina_members", "patina_sync"]
        cluster.check(exported, "cluster metrics of n1: \(metrics.filter { m in shown.contains { m.key.hasPrefix($0) } })")
    }

    /// Five nodes; conflicting updates and deletes of the same rows on every node
    /// at once, while one node is frozen (SIGSTOP: cut off, its peers' messages
    /// pile up or are lost). After SIGCONT it rejoins and every node ends identical.
    @Test(.timeLimit(.minutes(3))) func frozenNodeRejoinsAndFiveNodesConvergeUnderConflicts() async throws {
        let cluster = try ProcessCluster(size: 5)
        defer {
            cluster.signal(2, SIGCONT)
            cluster.tearDown()
        }
        try cluster.startAll()
        try await cluster.waitMembers(5)
        _ = try cluster.node(0).exec((0..<10).map { "INSERT INTO kv (k, v) VALUES ('k\($0)', 'seed')" })
        try await cluster.waitIdentical("SELECT k, v FROM kv ORDER BY k", timeout: .seconds(15))

        cluster.signal(2, SIGSTOP)
        let writers = [0, 1, 3, 4]
        for round in 0..<6 {
            await withTaskGroup(of: Void.self) { group in
                for i in writers {
                    group.addTask {
                        let k = "k\((round + i) % 10)"
                        _ = try? cluster.node(i).exec(
                            round % 3 == 2
                                ? ["DELETE FROM kv WHERE k = '\(k)'"]
                                : ["INSERT INTO kv (k, v) VALUES ('\(k)', 'n\(i + 1) r\(round)') ON CONFLICT (k) DO UPDATE SET v = excluded.v"])
                    }
                }
            }
        }
        let others = try await cluster.waitIdentical("SELECT k, v FROM kv ORDER BY k", nodes: writers, timeout: .seconds(20))
        cluster.check(others != nil, "the four running nodes converge while n3 is frozen")
        cluster.signal(2, SIGCONT)
        let rows = try await cluster.waitIdentical("SELECT k, v FROM kv ORDER BY k", timeout: .seconds(40))
        cluster.check(rows != nil && rows == others, "after SIGCONT all five hold the same rows")
    }

    @Test(.timeLimit(.minutes(3))) func killedNodeCatchesUpAfterRestart() async throws {
        let cluster = try ProcessCluster(size: 5)
        defer { cluster.tearDown() }
        try cluster.startAll()
        try await cluster.waitMembers(5)

        var written = 0
        for k in 0..<60 {
            if k == 20 { cluster.kill(3) }
            let target = [0, 1, 2, 4][k % 4]
            _ = try cluster.node(target).exec(["INSERT INTO kv (k, v) VALUES ('w\(k)', 'n\(target + 1)')"])
            written += 1
        }
        try cluster.start(3)
        let rows = try await cluster.waitIdentical("SELECT k, v FROM kv ORDER BY k", timeout: .seconds(30))
        cluster.check(rows?.count == written, "expected \(written) identical rows on all 5 nodes, got \(rows?.count ?? -1)")
    }

    @Test(.timeLimit(.minutes(2))) func lateJoinerReceivesTheWholeHistory() async throws {
        let cluster = try ProcessCluster(size: 4)
        defer { cluster.tearDown() }
        for i in 0..<3 { try cluster.start(i) }
        try await cluster.waitMembers(3, nodes: [0, 1, 2])
        for k in 0..<50 {
            _ = try cluster.node(k % 3).exec(["INSERT INTO kv (k, v) VALUES ('h\(k)', 'v\(k)')"])
        }
        _ = try cluster.node(0).exec(["DELETE FROM kv WHERE k = 'h7'"])
        try cluster.start(3)
        let rows = try await cluster.waitIdentical("SELECT k, v FROM kv ORDER BY k", timeout: .seconds(30))
        cluster.check(rows?.count == 49, "the late joiner should hold the 49 rows, got \(rows?.count ?? -1)")
    }

    @Test(.timeLimit(.minutes(2))) func killedMemberIsMarkedDownThenAliveAfterRestart() async throws {
        let cluster = try ProcessCluster(size: 3)
        defer { cluster.tearDown() }
        try cluster.startAll()
        try await cluster.waitMembers(3)
        let victimID = try cluster.node(2).actorID()

        cluster.kill(2)
        for i in 0..<2 {
            let down = try await pollUntil(.seconds(15)) {
                (try? cluster.node(i).members().first { $0.actorID == victimID }?.state) == "down"
            }
            cluster.check(down, "n\(i + 1) did not mark the killed n3 down")
        }
        let health = try cluster.node(0).health()
        cluster.check(health == 2, "health members of n1 after the kill: \(String(describing: health))")

        // Its bootstrap peer is gone too: n3 must rejoin through the members it persisted.
        try cluster.start(2)
        for i in 0..<2 {
            let alive = try await pollUntil(.seconds(15)) {
                (try? cluster.node(i).members().first { $0.actorID == victimID }?.state) == "alive"
            }
            cluster.check(alive, "n\(i + 1) did not see the restarted n3 alive")
        }
        try await cluster.waitMembers(3)
    }

    @Test(.timeLimit(.minutes(2))) func restartedNodeRejoinsThroughPersistedMembers() async throws {
        let cluster = try ProcessCluster(size: 3)
        defer { cluster.tearDown() }
        try cluster.startAll()
        try await cluster.waitMembers(3)
        // Let membership be saved (every 2 s at most), then stop n1, the only bootstrap address.
        try await Task.sleep(for: .seconds(3))
        cluster.kill(0)
        cluster.kill(2)
        let saved = try Store.loadMembers(path: cluster.nodes[2].dir + "/state.db")
        cluster.check(saved.members.contains { $0.address == "127.0.0.1:\(cluster.nodes[1].gossipPort)" && $0.state == "alive" },
                      "n3 did not persist n2: \(saved.members)")
        try cluster.start(2)
        // n3 only knows n1 from its config; n2 comes from __patina_members.
        let rejoined = try await pollUntil(.seconds(20)) { (try? cluster.node(2).health()) == 2 }
        cluster.check(rejoined, "n3 did not rejoin n2 without its bootstrap peer")
        _ = try cluster.node(2).exec(["INSERT INTO kv (k, v) VALUES ('after', 'rejoin')"])
        let seen = try await pollUntil(.seconds(10)) {
            (try? cluster.node(1).query("SELECT v FROM kv WHERE k = 'after'")) == [[.text("rejoin")]]
        }
        cluster.check(seen, "write on the rejoined n3 not visible on n2")
    }

    @Test(.timeLimit(.minutes(2))) func gracefulStopFlushesBroadcastsFirst() async throws {
        let cluster = try ProcessCluster(size: 2)
        defer { cluster.tearDown() }
        try cluster.startAll()
        try await cluster.waitMembers(2)
        for k in 0..<30 { _ = try cluster.node(0).exec(["INSERT INTO kv (k, v) VALUES ('f\(k)', 'last words')"]) }
        // SIGTERM right after the last commit: n1 must send what broadcast holds before it exits
        // (nothing else can deliver it: n2 cannot sync from a stopped node).
        let stopped = cluster.terminate(0)
        cluster.check(stopped, "n1 did not stop within 10 s of SIGTERM")
        let rows = try await pollUntil(.seconds(5)) {
            (try? cluster.node(1).query("SELECT count(*) FROM kv")) == [[.int(30)]]
        }
        cluster.check(rows, "n2 lacks rows n1 committed before its graceful stop: \(String(describing: try? cluster.node(1).query("SELECT count(*) FROM kv")))")
    }

    @Test(.timeLimit(.minutes(2))) func nodeOfAnotherClusterIsRefused() async throws {
        let cluster = try ProcessCluster(size: 3, clusterIDs: [7, 7, 8])
        defer { cluster.tearDown() }
        try cluster.startAll()
        try await cluster.waitMembers(2, nodes: [0, 1])
        try await Task.sleep(for: .seconds(2))
        cluster.check(try cluster.node(0).health() == 2, "n1 accepted a node of another cluster")
        cluster.check(try cluster.node(2).health() == 1, "the foreign node joined")
    }

    @Test(.timeLimit(.minutes(2))) func garbageFromAnAuthenticatedPeerIsDropped() async throws {
        let cluster = try ProcessCluster(size: 2, extraCertificates: ["intruder"])
        defer { cluster.tearDown() }
        try cluster.startAll()
        try await cluster.waitMembers(2)
        let certs = cluster.root + "/certs"
        let endpoint = try QUICEndpoint(
            bind: QUICSocketAddress(host: "127.0.0.1", port: 0),
            config: QUICEndpointConfig(tls: QUICTLSConfig(certificatePath: certs + "/intruder.pem", privateKeyPath: certs + "/intruder.key",
                                                          caPath: certs + "/ca.pem")))
        let target = QUICSocketAddress(host: "127.0.0.1", port: UInt16(cluster.nodes[0].gossipPort))
        let connection = try await endpoint.connect(to: target)
        var rng = SystemRandomNumberGenerator()
        func noise(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) } }
        // (No empty datagram: ngtcp2 0.12 asserts on the *sending* side for a 0-byte DATAGRAM frame.)
        for n in [1, 7, 100, 1000] { try? await connection.sendDatagram(noise(n)) }
        // Datagrams that start like a broadcast frame (first byte 0): bad lengths, a bad payload.
        let broadcastLike: [[UInt8]] = [
            [0, 0, 0, 0], [0, 0, 0, 200, 0x01] + noise(20), Frame(type: 0x01, payload: noise(50)).encoded(),
        ]
        for bytes in broadcastLike {
            try? await connection.sendDatagram(bytes)
        }
        // Broadcast streams: noise, a huge announced frame, a valid header with a bad payload, a cut frame.
        let streams: [[UInt8]] = [
            noise(3000), [0xFF, 0xFF, 0xFF, 0xFF, 0x01], Frame(type: 0x01, payload: noise(50)).encoded(),
            Array(WireMessage.changesets([]).encodeFrame().dropLast()), Frame(type: 0x10, payload: []).encoded(),
        ]
        for bytes in streams { try? await connection.sendUniStream(bytes) }
        // Sync sessions: noise, and a broadcast frame where a sync state belongs.
        for bytes in [noise(500), WireMessage.changesets([]).encodeFrame()] {
            let stream = try await connection.openBiStream()
            try? await stream.write(bytes, finish: true)
            _ = try? await stream.readAll(limit: 1 << 20)
        }
        await connection.close()
        await endpoint.close()

        _ = try cluster.node(0).exec(["INSERT INTO kv (k, v) VALUES ('still', 'alive')"])
        let seen = try await pollUntil(.seconds(10)) {
            (try? cluster.node(1).query("SELECT v FROM kv WHERE k = 'still'")) == [[.text("alive")]]
        }
        cluster.check(seen, "n1 stopped replicating after garbage input")
        cluster.check((try? cluster.node(0).health()) == 2, "n1 is not healthy after garbage input")
    }

    /// Propagation on loopback: commit on one node until visible on every node.
    /// Opt-in: `PATINA_BENCH_PROPAGATION=1` (size via PATINA_BENCH_NODES, writes via PATINA_BENCH_WRITES).
    @Test(.timeLimit(.minutes(5)),
          .enabled(if: ProcessInfo.processInfo.environment["PATINA_BENCH_PROPAGATION"] != nil))
    func propagationBenchmark() async throws {
        let env = ProcessInfo.processInfo.environment
        let size = Int(env["PATINA_BENCH_NODES"] ?? "") ?? 10
        let writes = Int(env["PATINA_BENCH_WRITES"] ?? "") ?? 200
        let cluster = try ProcessCluster(size: size)
        defer { cluster.tearDown() }
        try cluster.startAll()
        try await cluster.waitMembers(size, timeout: .seconds(60))
        try await Task.sleep(for: .seconds(2))  // RTT samples in, ring 0 settled
        let watchers = try (0..<size).map { try UpdateWatcher(port: cluster.nodes[$0].apiPort, table: "kv") }
        defer { watchers.forEach { $0.stop() } }
        try await Task.sleep(for: .milliseconds(500))
        var fromCommit: [Double] = []
        var fromRequest: [Double] = []
        for k in 0..<writes {
            let origin = k % size
            let key = "p\(k)"
            let sent = monotonicNanos()
            _ = try cluster.node(origin).exec(["INSERT INTO kv (k, v) VALUES ('\(key)', 'x')"])
            let ok = try await pollUntil(.seconds(10), poll: .milliseconds(1)) { watchers.allSatisfy { $0.seen(key) != nil } }
            cluster.check(ok, "\(key) did not reach every node")
            guard ok else { continue }
            // The origin's own notification stands for the commit; if another node's
            // notification came first (scheduling), the earliest one does.
            let seen = watchers.map { Int64($0.seen(key)!) }
            let committed = seen.min()!
            fromCommit.append(Double(seen.max()! - committed) / 1e6)
            fromRequest.append(Double(seen.max()! - Int64(sent)) / 1e6)
            if env["PATINA_BENCH_VERBOSE"] != nil {
                print("\(key) from n\(origin + 1): " + seen.map { String(format: "%.1f", Double($0 - committed) / 1e6) }.joined(separator: " "))
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        func pct(_ v: [Double], _ p: Double) -> Double {
            let s = v.sorted()
            return s.isEmpty ? .nan : s[min(s.count - 1, Int(Double(s.count) * p))]
        }
        print(String(format: "propagation %d nodes, %d writes: commit->visible everywhere p50 %.2f ms p99 %.2f ms max %.2f ms; "
                     + "HTTP request->visible everywhere p50 %.2f ms p99 %.2f ms",
                     size, fromCommit.count, pct(fromCommit, 0.5), pct(fromCommit, 0.99), fromCommit.max() ?? .nan,
                     pct(fromRequest, 0.5), pct(fromRequest, 0.99)))
    }
}

// MARK: - Process cluster

func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Polls `condition` until it holds or `timeout` passes.
func pollUntil(_ timeout: Duration, poll: Duration = .milliseconds(50),
                _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: poll)
    }
    return try await condition()
}

enum Cell: Hashable, Sendable, CustomStringConvertible {
    case null, int(Int64), real(Double), text(String)
    var description: String {
        switch self {
        case .null: "NULL"
        case .int(let i): "\(i)"
        case .real(let d): "\(d)"
        case .text(let s): "'\(s)'"
        }
    }
}

struct ClusterMemberRow: Sendable {
    var actorID: String
    var addr: String
    var state: String
}

final class ProcessCluster: @unchecked Sendable {
    /// The `patina` built next to the test binary, or `PATINA_BINARY` (e.g. a release build for benchmarks).
    static var binary: String {
        if let path = ProcessInfo.processInfo.environment["PATINA_BINARY"] { return path }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("patina").path
    }

    struct Node: Sendable {
        let name: String
        let dir: String
        let apiPort: Int
        let gossipPort: Int
        let metricsPort: Int
        var configPath: String { dir + "/node.toml" }
        var adminPath: String { dir + "/admin.sock" }
        var logPath: String { dir + "/agent.log" }
        var client: NodeClient { NodeClient(port: apiPort, adminPath: adminPath) }
    }

    let root: String
    let nodes: [Node]
    private let lock = NSLock()
    private var processes: [Int: Process] = [:]
    private var failed = false

    init(size: Int, clusterIDs: [Int]? = nil, extraCertificates: [String] = []) throws {
        root = NSTemporaryDirectory() + "patina-cluster-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: root + "/certs", withIntermediateDirectories: true)
        try Self.run(["certs", "ca", "--dir", root + "/certs"])
        var nodes: [Node] = []
        for i in 0..<size {
            let name = "n\(i + 1)"
            try Self.run(["certs", "node", name, "--dir", root + "/certs", "--ip", "127.0.0.1"])
            let dir = root + "/" + name
            try FileManager.default.createDirectory(atPath: dir + "/schema", withIntermediateDirectories: true)
            try "CREATE TABLE kv (k TEXT NOT NULL PRIMARY KEY, v);".write(toFile: dir + "/schema/s.sql", atomically: true, encoding: .utf8)
            nodes.append(Node(name: name, dir: dir, apiPort: Self.freePort(tcp: true), gossipPort: Self.freePort(tcp: false),
                              metricsPort: Self.freePort(tcp: true)))
        }
        self.nodes = nodes
        for name in extraCertificates {
            try Self.run(["certs", "node", name, "--dir", root + "/certs", "--ip", "127.0.0.1"])
        }
        for (i, node) in nodes.enumerated() {
            // Everyone bootstraps from n1 (n1 from n2), as a real deployment with one seed would.
            let seed = i == 0 ? nodes[1 % size] : nodes[0]
            try """
                [db]
                path = "\(node.dir)/state.db"
                schema_paths = ["\(node.dir)/schema"]

                [api]
                addr = "127.0.0.1:\(node.apiPort)"

                [admin]
                path = "\(node.adminPath)"

                [gossip]
                addr = "127.0.0.1:\(node.gossipPort)"
                bootstrap = ["127.0.0.1:\(seed.gossipPort)"]
                cluster_id = \(clusterIDs?[i] ?? 7)

                [gossip.tls]
                cert_file = "\(root)/certs/\(node.name).pem"
                key_file = "\(root)/certs/\(node.name).key"
                ca_file = "\(root)/certs/ca.pem"

                [telemetry]
                prometheus_addr = "127.0.0.1:\(node.metricsPort)"
                """.write(toFile: node.configPath, atomically: true, encoding: .utf8)
        }
    }

    func node(_ i: Int) -> NodeClient { nodes[i].client }

    /// Node `i`'s Prometheus samples, by name and labels as printed.
    func metrics(_ i: Int) throws -> [String: Double] {
        let (status, text) = try HTTP.request(.tcp(nodes[i].metricsPort), "GET", "/metrics")
        guard status == 200 else { throw ClusterTestFailure(message: "metrics \(status): \(text)") }
        var samples: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            samples[String(line[..<space])] = value
        }
        return samples
    }

    func startAll() throws { for i in nodes.indices { try start(i) } }

    func start(_ i: Int) throws {
        let node = nodes[i]
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = ["agent", "--config", node.configPath]
        if !FileManager.default.fileExists(atPath: node.logPath) {
            _ = FileManager.default.createFile(atPath: node.logPath, contents: nil)
        }
        let log = FileHandle(forWritingAtPath: node.logPath)!
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        try process.run()
        lock.withLock { processes[i] = process }
    }

    /// SIGTERM; true when the process exited within `timeout`.
    func terminate(_ i: Int, timeout: Duration = .seconds(10)) -> Bool {
        guard let process = lock.withLock({ processes.removeValue(forKey: i) }) else { return true }
        process.terminate()
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline { usleep(10_000) }
        if process.isRunning {
            Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return false
        }
        return true
    }

    /// Sends `sig` (e.g. SIGSTOP, SIGCONT) to node `i`'s process.
    func signal(_ i: Int, _ sig: Int32) {
        guard let process = lock.withLock({ processes[i] }) else { return }
        Glibc.kill(process.processIdentifier, sig)
    }

    func kill(_ i: Int) {
        guard let process = lock.withLock({ processes.removeValue(forKey: i) }) else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func check(_ condition: Bool, _ message: @autoclosure () -> String,
               sourceLocation: SourceLocation = #_sourceLocation) {
        if !condition {
            lock.withLock { failed = true }
            Issue.record(Comment(rawValue: message()), sourceLocation: sourceLocation)
        }
    }

    /// Waits until every node in `nodes` (default all) is up and counts `count` live members (itself included).
    func waitMembers(_ count: Int, nodes indices: [Int]? = nil, timeout: Duration = .seconds(30),
                     sourceLocation: SourceLocation = #_sourceLocation) async throws {
        for i in indices ?? Array(nodes.indices) {
            let ok = try await pollUntil(timeout) { (try? self.node(i).health()) == count }
            check(ok, "n\(i + 1) does not see \(count) members (health: \(String(describing: try? self.node(i).health())))",
                  sourceLocation: sourceLocation)
            if !ok { throw ClusterTestFailure() }
        }
    }

    /// Waits until `sql` returns the same rows on every running node; returns them.
    @discardableResult
    func waitIdentical(_ sql: String, nodes subset: [Int]? = nil, timeout: Duration,
                       sourceLocation: SourceLocation = #_sourceLocation) async throws -> [[Cell]]? {
        let running = subset ?? lock.withLock { processes.keys.sorted() }
        var last: [[[Cell]]?] = []
        let ok = try await pollUntil(timeout, poll: .milliseconds(100)) {
            last = running.map { try? self.node($0).query(sql) }
            return last.allSatisfy { $0 != nil && $0 == last[0] }
        }
        check(ok, "nodes differ for \(sql): " + last.enumerated().map { "n\(running[$0.offset] + 1): \($0.element?.count ?? -1) rows" }.joined(separator: ", "),
              sourceLocation: sourceLocation)
        return ok ? last[0] : nil
    }

    func tearDown() {
        let all = lock.withLock { () -> [Process] in
            defer { processes = [:] }
            return Array(processes.values)
        }
        for p in all { p.terminate() }
        let deadline = ContinuousClock.now + .seconds(5)
        for p in all {
            while p.isRunning && ContinuousClock.now < deadline { usleep(10_000) }
            if p.isRunning { Glibc.kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
        }
        if lock.withLock({ failed }) {
            for node in nodes {
                let text = (try? String(contentsOfFile: node.logPath, encoding: .utf8)) ?? "(no log)"
                print("===== \(node.name) log (\(node.logPath)) =====\n\(text.suffix(20_000))")
            }
        } else if ProcessInfo.processInfo.environment["PATINA_TEST_KEEP"] != nil {
            print("kept \(root)")
        } else {
            try? FileManager.default.removeItem(atPath: root)
        }
    }

    @discardableResult
    static func run(_ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else { throw ClusterTestFailure(message: "patina \(arguments.joined(separator: " ")): \(text)") }
        return text
    }

    static func freePort(tcp: Bool) -> Int { try! PortProbe.unusedLoopbackPort(tcp: tcp) }
}

struct ClusterTestFailure: Error, CustomStringConvertible {
    var message = "cluster test failed"
    var description: String { message }
}

// MARK: - HTTP over POSIX sockets

/// A minimal HTTP/1.1 client (Connection: close) for the node's API and admin socket.
struct NodeClient: Sendable {
    let port: Int
    let adminPath: String

    /// POST /v1/transactions; returns the response body.
    func exec(_ statements: [String]) throws -> String {
        let body = try JSONSerialization.data(withJSONObject: statements)
        let (status, text) = try HTTP.request(.tcp(port), "POST", "/v1/transactions", body: body)
        guard status == 200 else { throw ClusterTestFailure(message: "transaction \(status): \(text)") }
        return text
    }

    /// POST /v1/queries; the cells of each row.
    func query(_ sql: String) throws -> [[Cell]] {
        let body = try JSONSerialization.data(withJSONObject: sql, options: [.fragmentsAllowed])
        let (status, text) = try HTTP.request(.tcp(port), "POST", "/v1/queries", body: body)
        guard status == 200 else { throw ClusterTestFailure(message: "query \(status): \(text)") }
        var rows: [[Cell]] = []
        var ended = false
        for line in text.split(separator: "\n") {
            guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { continue }
            if let row = object["row"] as? [Any], row.count == 2, let cells = row[1] as? [Any] {
                rows.append(cells.map { cell in
                    switch cell {
                    case let s as String: .text(s)
                    case let n as NSNumber: n.stringValue.contains(where: { $0 == "." || $0 == "e" }) ? .real(n.doubleValue) : .int(n.int64Value)
                    default: .null
                    }
                })
            }
            if object["error"] != nil { throw ClusterTestFailure(message: "query error: \(line)") }
            if object["eoq"] != nil { ended = true }
        }
        guard ended else { throw ClusterTestFailure(message: "query without eoq") }
        return rows
    }

    /// Live members including the node itself, from GET /v1/health.
    func health() throws -> Int? {
        let (_, text) = try HTTP.request(.tcp(port), "GET", "/v1/health")
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
        return (object?["response"] as? [String: Any])?["members"] as? Int
    }

    func actorID() throws -> String {
        let (_, text) = try HTTP.request(.unix(adminPath), "GET", "/ping")
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
        guard let id = object?["actor_id"] as? String else { throw ClusterTestFailure(message: "no actor id: \(text)") }
        return id
    }

    /// GET /cluster/members on the admin socket.
    func members() throws -> [ClusterMemberRow] {
        let (status, text) = try HTTP.request(.unix(adminPath), "GET", "/cluster/members")
        guard status == 200, let array = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]] else {
            throw ClusterTestFailure(message: "members \(status): \(text)")
        }
        return array.map {
            ClusterMemberRow(actorID: $0["actor_id"] as? String ?? "", addr: $0["addr"] as? String ?? "", state: $0["state"] as? String ?? "")
        }
    }
}

/// Requests through the CLI's client (PatinaNode.HTTPClient): status and body text.
enum HTTP {
    enum Target { case tcp(Int), unix(String) }

    static func request(_ target: Target, _ method: String, _ path: String, body: Data = Data(),
                        timeoutSeconds: Int = 10) throws -> (Int, String) {
        var client = HTTPClient(target: target.client)
        client.timeout = .seconds(timeoutSeconds)
        let response = try client.send(method, path, body: method == "POST" ? body : nil)
        return (response.status, response.text)
    }
}

extension HTTP.Target {
    var client: HTTPClient.Target {
        switch self {
        case .tcp(let port): .tcp(host: "127.0.0.1", port: port)
        case .unix(let path): .unix(path: path)
        }
    }
}

/// Follows POST /v1/updates/{table} of one node on a thread of its own, recording
/// when each primary key was first notified (monotonic nanoseconds).
/// `@unchecked Sendable`: its state is guarded by `lock`.
final class UpdateWatcher: @unchecked Sendable {
    private let lock = NSLock()
    private var firstSeen: [String: UInt64] = [:]
    private var open = false
    private var stopped = false

    /// Returns once the stream is open (the server subscribes before it answers).
    init(port: Int, table: String) throws {
        let client = HTTPClient(target: .tcp(host: "127.0.0.1", port: port))
        Thread.detachNewThread { [self] in
            try? client.lines("POST", "/v1/updates/\(table)", onHead: { _, _ in self.lock.withLock { self.open = true } }) { line in
                let now = monotonicNanos()
                guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                      let notify = object["notify"] as? [Any], notify.count == 2,
                      let pk = notify[1] as? [Any], let key = pk.first as? String else { return true }
                return self.lock.withLock {
                    if self.firstSeen[key] == nil { self.firstSeen[key] = now }
                    return !self.stopped
                }
            }
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while !lock.withLock({ open }) {
            guard ContinuousClock.now < deadline else { throw ClusterTestFailure(message: "update stream on port \(port) did not open") }
            usleep(10_000)
        }
    }

    func seen(_ key: String) -> UInt64? { lock.withLock { firstSeen[key] } }

    /// Ends the watch at its next line; the stream closes when the agents stop.
    func stop() { lock.withLock { stopped = true } }
}
