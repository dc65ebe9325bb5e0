import ArgumentParser
import Foundation
import PatinaNode

/// How the CLI finds a running agent: its config file, or an API address.
struct AgentLocation: ParsableArguments {
    @Option(help: "The agent's config file (finds its API address, token and admin socket).") var config: String?
    @Option(help: "The agent's API address, host:port.") var apiAddr: String?
    @Option(help: "Bearer token for the API (else from the config, or $PATINA_TOKEN).") var token: String?

    func loadConfig() -> NodeConfig? {
        guard let config else { return nil }
        do { return try NodeConfig.load(path: config) } catch { fail("\(error)") }
    }

    func api() -> HTTPClient {
        let nodeConfig = loadConfig()
        var address = nodeConfig?.api.addr ?? HostPort(host: "127.0.0.1", port: 8080)
        if let apiAddr {
            guard let parsed = HostPort.parse(apiAddr) else { fail("--api-addr \(apiAddr) is not host:port") }
            address = parsed
        }
        let token = token ?? nodeConfig?.api.bearerToken ?? ProcessInfo.processInfo.environment["PATINA_TOKEN"]
        return HTTPClient(target: .tcp(host: address.host, port: address.port), bearerToken: token)
    }

    func admin() -> HTTPClient {
        guard let path = loadConfig()?.adminPath else { fail("this command needs --config FILE of an agent with [admin] path") }
        return HTTPClient(target: .unix(path: path))
    }
}

/// Turns `--param` strings into JSON values: integers, reals, null, else text.
func jsonParameter(_ raw: String) -> Any {
    if let i = Int64(raw) { return i }
    if let d = Double(raw), raw.contains(".") || raw.contains("e") { return d }
    if raw == "null" { return NSNull() }
    return raw
}

func statementBody(_ sql: String, _ params: [String]) -> Data {
    let statement: Any = params.isEmpty ? sql : [sql, params.map(jsonParameter)] as [Any]
    return try! JSONSerialization.data(withJSONObject: statement, options: [.fragmentsAllowed])
}

struct ExecCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "exec", abstract: "Run a write statement in one transaction.")
    @Argument(help: "SQL statement.") var sql: String
    @Option(name: .customLong("param"), help: "A positional parameter (repeat for more).") var params: [String] = []
    @OptionGroup var location: AgentLocation

    func run() throws {
        let statement = try! JSONSerialization.jsonObject(with: statementBody(sql, params), options: [.fragmentsAllowed])
        let body = try! JSONSerialization.data(withJSONObject: [statement])
        do {
            let response = try location.api().send("POST", "/v1/transactions", body: body)
            print(response.text.trimmingCharacters(in: .newlines))
            if response.status >= 300 { throw ExitCode(1) }
        } catch let error as HTTPClient.ClientError { fail(error.message) }
    }
}

struct QueryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "query", abstract: "Run a read query and print its rows.")
    @Argument(help: "SQL query.") var sql: String
    @Option(name: .customLong("param"), help: "A positional parameter (repeat for more).") var params: [String] = []
    @Flag(help: "Print the raw NDJSON stream.") var json = false
    @OptionGroup var location: AgentLocation

    func run() throws {
        var columns: [String] = []
        var rows: [[String]] = []
        var failed = false
        do {
            try location.api().lines("POST", "/v1/queries", body: statementBody(sql, params)) { line in
                if json {
                    print(line)
                    return true
                }
                guard let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else { return true }
                if let c = object["columns"] as? [String] { columns = c }
                if let row = object["row"] as? [Any], row.count == 2, let cells = row[1] as? [Any] { rows.append(cells.map(render)) }
                if let error = object["error"] {
                    FileHandle.standardError.write(Data("patina: \(error)\n".utf8))
                    failed = true
                }
                return true
            }
        } catch let error as HTTPClient.ClientError { fail(error.message) }
        if !json { print(table(columns, rows)) }
        if failed { throw ExitCode(1) }
    }
}

func render(_ cell: Any) -> String {
    switch cell {
    case is NSNull: return "NULL"
    case let s as String: return s
    case let bytes as [Any]: return "x'" + bytes.map { String(format: "%02x", ($0 as? Int) ?? 0) }.joined() + "'"
    default: return "\(cell)"
    }
}

/// A readable table with aligned columns.
func table(_ columns: [String], _ rows: [[String]]) -> String {
    guard !columns.isEmpty else { return "(no columns)" }
    var widths = columns.map(\.count)
    for row in rows { for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: " | ")
    }
    var out = [line(columns), widths.map { String(repeating: "-", count: $0) }.joined(separator: "-+-")]
    out += rows.map(line)
    out.append("(\(rows.count) row\(rows.count == 1 ? "" : "s"))")
    return out.joined(separator: "\n")
}

struct SubscribeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "subscribe", abstract: "Print a query's rows, then every change to them (NDJSON).")
    @Argument(help: "SQL query.") var sql: String
    @Option(name: .customLong("param"), help: "A positional parameter (repeat for more).") var params: [String] = []
    @OptionGroup var location: AgentLocation

    func run() throws {
        var client = location.api()
        client.timeout = .seconds(86_400)
        do {
            try client.lines("POST", "/v1/subscriptions", body: statementBody(sql, params), onHead: { status, headers in
                if let id = headers["corro-query-id"] { FileHandle.standardError.write(Data("subscription \(id)\n".utf8)) }
                if status >= 300 { FileHandle.standardError.write(Data("HTTP \(status)\n".utf8)) }
            }) { line in
                print(line)
                fflush(nil)  // flush every stream: a subscriber reads line by line
                return true
            }
        } catch let error as HTTPClient.ClientError { fail(error.message) }
    }
}

struct ReloadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reload", abstract: "Re-apply the agent's schema files.")
    @OptionGroup var location: AgentLocation
    func run() throws {
        do {
            let response = try location.admin().send("POST", "/reload")
            print(response.text.trimmingCharacters(in: .newlines))
            if response.status >= 300 { throw ExitCode(1) }
        } catch let error as HTTPClient.ClientError { fail(error.message) }
    }
}

struct BackupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "backup", abstract: "Write a consistent copy of a running agent's database.")
    @Argument(help: "Where to write the backup (must not exist).") var file: String
    @OptionGroup var location: AgentLocation
    func run() throws {
        let absolute = URL(fileURLWithPath: file).standardizedFileURL.path
        let encoded = absolute.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed) ?? absolute
        do {
            let response = try location.admin().send("POST", "/backup?path=\(encoded)")
            print(response.text.trimmingCharacters(in: .newlines))
            if response.status >= 300 { throw ExitCode(1) }
        } catch let error as HTTPClient.ClientError { fail(error.message) }
    }
}

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Install a backup as the database of a stopped agent; it starts with a new identity.")
    @Argument(help: "The backup file.") var file: String
    @OptionGroup var location: AgentLocation
    func run() throws {
        guard let config = location.loadConfig() else { fail("restore needs --config FILE of the (stopped) agent") }
        do {
            try PatinaStoreFacade.restore(from: file, to: config.db.path)
            print("restored \(file) into \(config.db.path); the node takes a new identity at its next start")
        } catch { fail("\(error)") }
    }
}

struct ClusterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cluster", abstract: "Cluster membership.", subcommands: [Members.self])
    struct Members: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "members", abstract: "List the members this agent knows.")
        @OptionGroup var location: AgentLocation
        func run() throws {
            do {
                let response = try location.admin().send("GET", "/cluster/members")
                print(response.text.trimmingCharacters(in: .newlines))
            } catch let error as HTTPClient.ClientError { fail(error.message) }
        }
    }
}
