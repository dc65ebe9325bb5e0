import Foundation
import Logging
import PatinaAPI
import PatinaCluster
import PatinaCore
import PatinaQUIC
import PatinaStore
import ServiceLifecycle

extension Agent {
    /// The cluster side of the node, when the config has `[gossip]`.
    func makeCluster(store: Store) throws -> ClusterNode? {
        guard let gossip = config.gossip else { return nil }
        guard gossip.clusterID <= UInt32(UInt16.max) else {
            throw StartupError(message: "gossip.cluster_id \(gossip.clusterID) must be at most \(UInt16.max)")
        }
        let bind = QUICSocketAddress(host: gossip.addr.host, port: UInt16(gossip.addr.port))
        var advertised = gossip.externalAddr?.description
        if advertised == nil, ["0.0.0.0", "::"].contains(gossip.addr.host) {
            logger.warning("gossip.addr \(gossip.addr) is a wildcard: set gossip.external_addr to the address peers dial")
        }
        if advertised == nil && gossip.addr.port != 0 { advertised = gossip.addr.description }
        let bootstrap = gossip.bootstrap.compactMap { HostPort.parse($0, defaultPort: 8787)?.description }
        var clusterConfig = ClusterNodeConfig(
            bind: bind, advertisedAddress: advertised, bootstrap: bootstrap, clusterID: UInt16(gossip.clusterID),
            region: gossip.region,
            tls: QUICTLSConfig(certificatePath: gossip.certFile, privateKeyPath: gossip.keyFile, caPath: gossip.caFile))
        clusterConfig.persistInterval = .seconds(2)
        var clusterLogger = logger
        clusterLogger[metadataKey: "component"] = "cluster"
        do {
            return try ClusterNode(store: store, config: clusterConfig, logger: clusterLogger)
        } catch {
            throw StartupError(message: "gossip.addr \(gossip.addr): \(error)")
        }
    }

    /// Broadcast on local commits and real figures for `/v1/health`.
    static func wire(_ hooks: inout APIHooks, to cluster: ClusterNode?) {
        guard let cluster else { return }
        hooks.onLocalCommit = { changesets in await cluster.broadcast(changesets) }
        hooks.health = {
            let f = await cluster.healthFigures()
            return HealthFigures(members: f.members, queueSize: f.queueSize)
        }
        hooks.regionOf = { actor in cluster.region(of: actor) }
    }

    /// `GET /cluster/members` on the admin socket: a JSON array of
    /// `{actor_id, addr, state, rtt_ms, region}`.
    static func membersJSON(_ cluster: ClusterNode?) async -> String {
        guard let cluster else { return "[]" }
        let members = await cluster.members().sorted { $0.address < $1.address }
        let items = members.map { m -> String in
            let rtt = m.rttMilliseconds.map { String(format: "%.3f", $0) } ?? "null"
            let region = m.region.map(jsonString) ?? "null"
            return "{\"actor_id\":\"\(m.actorID)\",\"addr\":\(jsonString(m.address)),\"state\":\"\(m.state)\",\"rtt_ms\":\(rtt),\"region\":\(region)}"
        }
        return "[" + items.joined(separator: ",") + "]"
    }
}

/// Runs a ``ClusterNode`` in the ServiceGroup: on graceful shutdown it leaves the
/// cluster and flushes in-flight broadcasts before returning.
struct ClusterService: Service {
    let node: ClusterNode

    func run() async throws {
        let node = self.node
        await withGracefulShutdownHandler {
            await node.run()
        } onGracefulShutdown: {
            Task { await node.shutdown() }
        }
    }
}
