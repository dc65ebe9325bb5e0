import Foundation
import PatinaNode
import Synchronization
import Testing

/// `patina agent` as users run it: a real process, a real config file, real HTTP.
@Suite(.serialized) struct AgentProcessTests {
    static var binary: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("patina").path
    }

    static func freePort() -> Int { try! PortProbe.unusedLoopbackPort(tcp: true) }

    struct Node {
        let dir: String
        let port: Int
        var configPath: String { dir + "/node.toml" }

        init(schema: String = "CREATE TABLE kv (k TEXT NOT NULL PRIMARY KEY, v);", extra: String = "") throws {
            dir = NSTemporaryDirectory() + "patina-agent-" + UUID().uuidString
            try FileManager.default.createDirectory(atPath: dir + "/schema", withIntermediateDirectories: true)
            try schema.write(toFile: dir + "/schema/s.sql", atomically: true, encoding: .utf8)
            port = AgentProcessTests.freePort()
            try """
                [db]
                path = "\(dir)/state.db"
                schema_paths = ["\(dir)/schema"]

                [api]
                addr = "127.0.0.1:\(port)"

                [admin]
                path = "\(dir)/admin.sock"
                \(extra)
                """.write(toFile: configPath, atomically: true, encoding: .utf8)
        }
    }

    /// Runs the CLI to completion; returns (exit code, stdout, stderr).
    @discardableResult
    static func cli(_ arguments: [String], timeout: Duration = .seconds(30)) throws -> (Int32, String, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline { usleep(10_000) }
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        return (process.terminationStatus,
                String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self),
                String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
    }

    /// `cli` on a thread of its own: waiting on a process must not block one of
    /// the two cooperative threads every other test needs.
    static func run(_ arguments: [String]) async throws -> (Int32, String, String) {
        try await LiveAPI.blocking.run { try cli(arguments) }
    }

    static func startAgent(_ node: Node) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["agent", "--config", node.configPath]
        process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        let log = node.dir + "/agent.log"
        FileManager.default.createFile(atPath: log, contents: nil)
        process.standardError = FileHandle(forWritingAtPath: log)
        try process.run()
        return process
    }

    static func waitHealthy(_ node: Node) async throws -> Bool {
        let client = HTTPClient(target: .tcp(host: "127.0.0.1", port: node.port))
        return try await eventually(timeout: .seconds(20)) {
            (try? await LiveAPI.blocking.run { try client.send("GET", "/v1/health").status }) == 200
        }
    }

    @Test(arguments: [
        ("[db]\npath = \"/tmp/x.db\"\n[api]\nadr = \"127.0.0.1:1\"\n", "unknown key api.adr"),
        ("[api]\naddr = \"127.0.0.1:1\"\n", "missing required key db.path"),
        ("[db]\npath = 5\n", "db.path must be a string"),
        ("[db]\npath = \"/tmp/x.db\"\n[api]\naddr = \"nonsense\"\n", "api.addr \"nonsense\" is not host:port"),
        ("[db\npath = 1", "line 1"),
        ("[db]\npath = \"/tmp/x.db\"\n[gossip]\naddr = \"127.0.0.1:1\"\n", "missing required key gossip.tls.cert_file"),
    ])
    func configErrorsAreOneLineAndNonZero(config: String, message: String) async throws {
        let dir = NSTemporaryDirectory() + "patina-cfg-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try config.write(toFile: dir + "/c.toml", atomically: true, encoding: .utf8)
        let (status, _, stderr) = try await Self.run(["agent", "--config", dir + "/c.toml"])
        #expect(status != 0)
        #expect(stderr.contains(message), "\(stderr)")
        #expect(stderr.trimmingCharacters(in: .newlines).split(separator: "\n").count == 1, "\(stderr)")
    }

    @Test func unreadableConfigAndPortInUseAreOneLineErrors() async throws {
        let (status, _, stderr) = try await Self.run(["agent", "--config", "/nonexistent/patina.toml"])
        #expect(status != 0 && stderr.contains("/nonexistent/patina.toml") && stderr.contains("cannot read"))

        let node = try Node()
        defer { try? FileManager.default.removeItem(atPath: node.dir) }
        // Hold the API port.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(node.port).bigEndian
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(fd, 1)
        let (code, _, err) = try await Self.run(["agent", "--config", node.configPath])
        #expect(code != 0)
        #expect(err.contains("api.addr 127.0.0.1:\(node.port): address already in use"), "\(err)")
    }

    @Test func writeQueryBackupRestoreAndGracefulStop() async throws {
        let node = try Node()
        defer { try? FileManager.default.removeItem(atPath: node.dir) }
        let agent = try Self.startAgent(node)
        defer { if agent.isRunning { agent.terminate() } }
        #expect(try await Self.waitHealthy(node), "agent did not start: \((try? String(contentsOfFile: node.dir + "/agent.log", encoding: .utf8)) ?? "")")

        let api = ["--api-addr", "127.0.0.1:\(node.port)"]
        let (execStatus, execOut, _) = try await Self.run(["exec", "INSERT INTO kv (k, v) VALUES (?, ?)", "--param", "hello", "--param", "42"] + api)
        #expect(execStatus == 0 && execOut.contains("\"version\":1"), "\(execOut)")
        let (_, table, _) = try await Self.run(["query", "SELECT k, v FROM kv"] + api)
        #expect(table.contains("hello") && table.contains("42") && table.contains("(1 row)"), "\(table)")
        let (_, json, _) = try await Self.run(["query", "SELECT k FROM kv", "--json"] + api)
        #expect(json.contains("{\"columns\":[\"k\"]}") && json.contains("\"eoq\""))
        let (badStatus, _, _) = try await Self.run(["exec", "INSERT INTO nope VALUES (1)"] + api)
        #expect(badStatus != 0)

        // Reload with an added table.
        try "CREATE TABLE extra (id INTEGER NOT NULL PRIMARY KEY);".write(toFile: node.dir + "/schema/t.sql", atomically: true, encoding: .utf8)
        let (reloadStatus, reloadOut, _) = try await Self.run(["reload", "--config", node.configPath])
        #expect(reloadStatus == 0 && reloadOut.contains("\"extra\""), "\(reloadOut)")

        let backup = node.dir + "/backup.db"
        let (backupStatus, backupOut, backupErr) = try await Self.run(["backup", backup, "--config", node.configPath])
        #expect(backupStatus == 0, "\(backupOut) \(backupErr)")
        #expect(FileManager.default.fileExists(atPath: backup))

        // Restore refuses while the agent runs.
        let (busy, _, busyErr) = try await Self.run(["restore", backup, "--config", node.configPath])
        #expect(busy != 0 && busyErr.contains("another patina process"), "\(busyErr)")

        // An open update stream ends with the graceful shutdown instead of holding the
        // exit for the server's 5 s drain.
        let streamOpen = Mutex(false)
        let watcher = HTTPClient(target: .tcp(host: "127.0.0.1", port: node.port))
        let reader = Task {
            try? await LiveAPI.blocking.run {
                try watcher.lines("POST", "/v1/updates/kv", onHead: { status, _ in streamOpen.withLock { $0 = status == 200 } }) { _ in true }
            }
        }
        let openDeadline = ContinuousClock.now + .seconds(10)
        while !streamOpen.withLock({ $0 }) && ContinuousClock.now < openDeadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(streamOpen.withLock { $0 }, "the update stream did not open")

        let stopAsked = ContinuousClock.now
        agent.terminate()  // SIGTERM
        let deadline = ContinuousClock.now + .seconds(10)
        while agent.isRunning && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(!agent.isRunning)
        #expect(agent.terminationStatus == 0)
        #expect(ContinuousClock.now - stopAsked < .seconds(3), "an open update stream held the exit")
        await reader.value

        // A new node from the backup: same data, its own identity.
        let fresh = try Node()
        defer { try? FileManager.default.removeItem(atPath: fresh.dir) }
        // Its schema files match the backed-up node's (else start-up refuses the dropped table).
        try FileManager.default.copyItem(atPath: node.dir + "/schema/t.sql", toPath: fresh.dir + "/schema/t.sql")
        let (restoreStatus, _, restoreErr) = try await Self.run(["restore", backup, "--config", fresh.configPath])
        #expect(restoreStatus == 0, "\(restoreErr)")
        let second = try Self.startAgent(fresh)
        defer { if second.isRunning { second.terminate() } }
        #expect(try await Self.waitHealthy(fresh))
        let client = HTTPClient(target: .tcp(host: "127.0.0.1", port: fresh.port))
        let rows = try await LiveAPI.blocking.run { try client.send("POST", "/v1/queries", body: Data("\"SELECT k, v FROM kv\"".utf8)) }
        #expect(rows.text.contains("[\"hello\",42]"), "\(rows.text)")
        let write = try await LiveAPI.blocking.run { try client.send("POST", "/v1/transactions", body: Data("[\"INSERT INTO kv (k) VALUES ('second')\"]".utf8)) }
        let firstActor = execOut.components(separatedBy: "\"actor_id\":\"").last?.prefix(36)
        #expect(write.text.contains("\"version\":1"), "the new identity starts at version 1: \(write.text)")
        #expect(firstActor != nil && !write.text.contains(String(firstActor!)), "a restored node has its own identity")
    }
}
