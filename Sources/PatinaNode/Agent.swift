import Foundation
import Hummingbird
import Logging
import Metrics
import PatinaAPI
import PatinaCerts
import PatinaCluster
import PatinaCore
import PatinaStore
import Prometheus
import ServiceLifecycle

/// A failure to start, as one line naming what is wrong.
public struct StartupError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
}

/// `patina agent`: one node: the store, the HTTP API, the admin socket, metrics,
/// and (with `[gossip]`) the cluster.
public struct Agent: Sendable {
    public let config: NodeConfig
    public let logger: Logger

    public init(config: NodeConfig, logger: Logger) {
        self.config = config
        self.logger = logger
    }

    /// Prometheus registry, bootstrapped once per process.
    static let metrics: PrometheusCollectorRegistry = {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return registry
    }()

    public func run() async throws {
        let registry = Self.metrics
        let store = try openStore()
        if let gossip = config.gossip {
            do {
                try CertificateCheck.validateNodeIdentity(certFile: gossip.certFile, keyFile: gossip.keyFile, caFile: gossip.caFile)
            } catch {
                throw StartupError(message: "[gossip.tls] \(error)")
            }
        }
        let access = try StoreAccess(store: store)
        var hooks = APIHooks()
        let cluster = try makeCluster(store: store)
        Self.wire(&hooks, to: cluster)
        let api = PatinaAPI(access: access, config: APIConfig(bearerToken: config.api.bearerToken), hooks: hooks)

        try Self.checkBindable(config.api.addr, key: "api.addr")
        var services: [any Service] = []
        let apiApp = Application(
            router: api.router(),
            configuration: .init(address: .hostname(config.api.addr.host, port: config.api.addr.port), serverName: "patina"),
            onServerRunning: { [logger, config] _ in
                logger.notice("API listening on http://\(config.api.addr)")
            },
            logger: logger)
        services.append(apiApp)

        if let addr = config.prometheusAddr {
            try Self.checkBindable(addr, key: "telemetry.prometheus_addr")
            let router = Router()
            router.get("/metrics") { _, _ in
                Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                         body: .init(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer())))
            }
            services.append(Application(router: router, configuration: .init(address: .hostname(addr.host, port: addr.port)), logger: logger))
        }

        if let path = config.adminPath {
            services.append(try adminApp(path: path, store: store, access: access, cluster: cluster))
        }
        services.append(SubscriptionSweeper(manager: api.subscriptions))
        // First in the group, so it shuts down last (after the API stopped taking writes).
        if let cluster { services.insert(ClusterService(node: cluster), at: 0) }

        var groupConfig = ServiceGroupConfiguration(
            services: services.map { .init(service: $0) },
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger)
        // Open subscription streams never end by themselves: give requests in
        // flight a few seconds, then cancel.
        groupConfig.maximumGracefulShutdownDuration = .seconds(5)
        groupConfig.maximumCancellationDuration = .seconds(5)
        let group = ServiceGroup(configuration: groupConfig)
        logger.notice("patina node \(store.actorID) started", metadata: ["db": "\(config.db.path)"])
        try await group.run()
        logger.notice("patina node stopped")
    }

    func openStore() throws -> Store {
        let directory = (config.db.path as NSString).deletingLastPathComponent
        if !directory.isEmpty { try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        let store: Store
        do { store = try Store(path: config.db.path) } catch {
            throw StartupError(message: "db.path: \(error)")
        }
        if !config.db.schemaPaths.isEmpty {
            do {
                let report = try store.applySchema(paths: config.db.schemaPaths)
                if !report.isEmpty { logger.notice("schema applied", metadata: ["tables": "\(report.createdTables)", "columns": "\(report.addedColumns)"]) }
            } catch {
                throw StartupError(message: "db.schema_paths: \(error)")
            }
        }
        return store
    }

    /// Finds a port in use before the servers start, for a clear one-line error.
    static func checkBindable(_ addr: HostPort, key: String) throws {
        if let problem = PortProbe.problem(host: addr.host, port: addr.port) {
            throw StartupError(message: "\(key) \(addr): \(problem)")
        }
    }

    /// The admin socket: reload the schema, back up, list members. Plain HTTP over
    /// a Unix socket, readable only by the node's user.
    func adminApp(path: String, store: Store, access: StoreAccess, cluster: ClusterNode? = nil) throws -> some Service {
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty { try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        if FileManager.default.fileExists(atPath: path) {
            if PortProbe.unixSocketInUse(path) { throw StartupError(message: "admin.path \(path): another agent is listening there") }
            try? FileManager.default.removeItem(atPath: path)
        }
        let schemaPaths = config.db.schemaPaths
        let router = Router()
        router.post("/reload") { _, _ -> Response in
            do {
                let report = try await access.writer.run { try store.applySchema(paths: schemaPaths) }
                return Self.json("{\"reloaded\":true,\"created_tables\":\(Self.jsonArray(report.createdTables)),\"added_columns\":\(Self.jsonArray(report.addedColumns)),\"created_indexes\":\(Self.jsonArray(report.createdIndexes))}")
            } catch {
                return Self.json("{\"error\":\(Self.jsonString("\(error)"))}", status: .badRequest)
            }
        }
        router.post("/backup") { request, _ -> Response in
            guard let target = request.uri.queryParameters["path"].map(String.init), !target.isEmpty else {
                return Self.json("{\"error\":\"missing path\"}", status: .badRequest)
            }
            do {
                try await access.readers.run { try Backup.create(store: store, to: target) }
                return Self.json("{\"backup\":\(Self.jsonString(target))}")
            } catch {
                return Self.json("{\"error\":\(Self.jsonString("\(error)"))}", status: .badRequest)
            }
        }
        router.get("/cluster/members") { _, _ -> Response in
            Self.json(await Self.membersJSON(cluster))
        }
        router.get("/ping") { _, _ -> Response in Self.json("{\"actor_id\":\"\(store.actorID)\"}") }
        return Application(
            router: router, configuration: .init(address: .unixDomainSocket(path: path)),
            onServerRunning: { _ in chmod(path, 0o600) }, logger: logger)
    }

    static func json(_ body: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body + "\n")))
    }

    static func jsonString(_ s: String) -> String {
        String(decoding: (try? JSONEncoder().encode(s)) ?? Data("\"\"".utf8), as: UTF8.self)
    }

    static func jsonArray(_ items: [String]) -> String { "[" + items.map(jsonString).joined(separator: ",") + "]" }
}

/// Drops subscriptions nobody listens to, once a minute.
struct SubscriptionSweeper: Service {
    let manager: SubscriptionManager
    func run() async throws {
        do {
            try await cancelWhenGracefulShutdown {
                while true {
                    try await Task.sleep(for: .seconds(60))
                    await manager.sweep()
                }
            }
        } catch is CancellationError {}
        // Shutting down: end the open streams so the HTTP server can drain.
        await manager.closeAll()
    }
}
