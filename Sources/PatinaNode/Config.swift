import Foundation
import TOMLKit

/// A problem with the config file: one line, naming the file and the key.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
}

/// `patina agent --config FILE`: Corrosion's section and key names where a
/// concept is shared.
public struct NodeConfig: Sendable, Equatable {
    public struct DB: Sendable, Equatable {
        public var path: String
        public var schemaPaths: [String] = []
    }
    public struct API: Sendable, Equatable {
        public var addr: HostPort = HostPort(host: "127.0.0.1", port: 8080)
        public var bearerToken: String?
    }
    public struct Gossip: Sendable, Equatable {
        public var addr: HostPort
        public var externalAddr: HostPort?
        public var bootstrap: [String] = []
        public var clusterID: UInt32 = 0
        public var region: String?
        public var certFile: String
        public var keyFile: String
        public var caFile: String
    }

    public var db: DB
    public var api = API()
    public var adminPath: String?
    public var prometheusAddr: HostPort?
    public var gossip: Gossip?
    public var logLevel: String = "info"

    public static func load(path: String) throws -> NodeConfig {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw ConfigError(message: "config \(path): cannot read the file")
        }
        return try parse(text, file: path)
    }

    static let allowedKeys: [String: Set<String>] = [
        "": ["db", "api", "admin", "telemetry", "gossip", "log"],
        "db": ["path", "schema_paths"],
        "api": ["addr", "bearer_token"],
        "admin": ["path"],
        "telemetry": ["prometheus_addr"],
        "gossip": ["addr", "external_addr", "bootstrap", "cluster_id", "region", "tls"],
        "gossip.tls": ["cert_file", "key_file", "ca_file"],
        "log": ["level"],
    ]

    public static func parse(_ text: String, file: String) throws -> NodeConfig {
        let root: TOMLTable
        do { root = try TOMLTable(string: text) } catch let error as TOMLParseError {
            throw ConfigError(message: "config \(file): line \(error.source.begin.line): \(error.description)")
        }
        let reader = KeyReader(file: file)
        try reader.checkKeys(root, section: "")
        guard let dbTable = root["db"]?.table else { throw reader.missing("db.path") }
        try reader.checkKeys(dbTable, section: "db")
        var config = NodeConfig(db: DB(path: try reader.string(dbTable, "db", "path", required: true)!))
        config.db.schemaPaths = try reader.strings(dbTable, "db", "schema_paths") ?? []
        if let api = root["api"]?.table {
            try reader.checkKeys(api, section: "api")
            if let addr = try reader.string(api, "api", "addr") { config.api.addr = try reader.hostPort(addr, key: "api.addr") }
            config.api.bearerToken = try reader.string(api, "api", "bearer_token")
        }
        if let admin = root["admin"]?.table {
            try reader.checkKeys(admin, section: "admin")
            config.adminPath = try reader.string(admin, "admin", "path")
        }
        if let telemetry = root["telemetry"]?.table {
            try reader.checkKeys(telemetry, section: "telemetry")
            if let addr = try reader.string(telemetry, "telemetry", "prometheus_addr") {
                config.prometheusAddr = try reader.hostPort(addr, key: "telemetry.prometheus_addr")
            }
        }
        if let log = root["log"]?.table {
            try reader.checkKeys(log, section: "log")
            if let level = try reader.string(log, "log", "level") {
                guard ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(level) else {
                    throw ConfigError(message: "config \(file): log.level must be one of trace, debug, info, notice, warning, error, critical")
                }
                config.logLevel = level
            }
        }
        if let gossip = root["gossip"]?.table {
            try reader.checkKeys(gossip, section: "gossip")
            guard let tls = gossip["tls"]?.table else { throw reader.missing("gossip.tls.cert_file") }
            try reader.checkKeys(tls, section: "gossip.tls")
            let addr = try reader.hostPort(try reader.string(gossip, "gossip", "addr", required: true)!, key: "gossip.addr")
            var g = Gossip(
                addr: addr,
                certFile: try reader.string(tls, "gossip.tls", "cert_file", required: true)!,
                keyFile: try reader.string(tls, "gossip.tls", "key_file", required: true)!,
                caFile: try reader.string(tls, "gossip.tls", "ca_file", required: true)!)
            if let ext = try reader.string(gossip, "gossip", "external_addr") {
                g.externalAddr = try reader.hostPort(ext, key: "gossip.external_addr")
            }
            g.bootstrap = try reader.strings(gossip, "gossip", "bootstrap") ?? []
            for entry in g.bootstrap { _ = try reader.hostPort(entry, key: "gossip.bootstrap", defaultPort: 8787) }
            if let id = gossip["cluster_id"] {
                guard let n = id.int, n >= 0, n <= Int(UInt32.max) else {
                    throw ConfigError(message: "config \(file): gossip.cluster_id must be an integer in 0...\(UInt32.max)")
                }
                g.clusterID = UInt32(n)
            }
            g.region = try reader.string(gossip, "gossip", "region")
            config.gossip = g
        }
        return config
    }
}

/// `host:port`, with IPv6 hosts in brackets (`[::1]:8080`).
public struct HostPort: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    public static func parse(_ text: String, defaultPort: Int? = nil) -> HostPort? {
        var host = Substring(text)
        var portText: Substring?
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return nil }
            let rest = host[host.index(after: close)...]
            host = host[host.index(after: host.startIndex)..<close]
            if rest.hasPrefix(":") { portText = rest.dropFirst() } else if !rest.isEmpty { return nil }
        } else if let colon = host.lastIndex(of: ":") {
            portText = host[host.index(after: colon)...]
            host = host[..<colon]
        }
        guard !host.isEmpty else { return nil }
        let port = portText.flatMap { Int($0) } ?? (portText == nil ? defaultPort : nil)
        guard let port, (0...65535).contains(port) else { return nil }
        return HostPort(host: String(host), port: port)
    }
}

private struct KeyReader {
    let file: String

    func missing(_ key: String) -> ConfigError {
        ConfigError(message: "config \(file): missing required key \(key)")
    }

    func checkKeys(_ table: TOMLTable, section: String) throws {
        let allowed = NodeConfig.allowedKeys[section] ?? []
        for key in table.keys where !allowed.contains(key) {
            let full = section.isEmpty ? key : "\(section).\(key)"
            throw ConfigError(message: "config \(file): unknown key \(full)")
        }
    }

    func string(_ table: TOMLTable, _ section: String, _ key: String, required: Bool = false) throws -> String? {
        guard let value = table[key] else {
            if required { throw missing("\(section).\(key)") }
            return nil
        }
        guard let s = value.string else { throw ConfigError(message: "config \(file): \(section).\(key) must be a string") }
        return s
    }

    func strings(_ table: TOMLTable, _ section: String, _ key: String) throws -> [String]? {
        guard let value = table[key] else { return nil }
        guard let array = value.array else { throw ConfigError(message: "config \(file): \(section).\(key) must be an array of strings") }
        return try array.map { item in
            guard let s = item.string else { throw ConfigError(message: "config \(file): \(section).\(key) must be an array of strings") }
            return s
        }
    }

    func hostPort(_ text: String, key: String, defaultPort: Int? = nil) throws -> HostPort {
        guard let hp = HostPort.parse(text, defaultPort: defaultPort) else {
            throw ConfigError(message: "config \(file): \(key) \"\(text)\" is not host:port")
        }
        return hp
    }
}
