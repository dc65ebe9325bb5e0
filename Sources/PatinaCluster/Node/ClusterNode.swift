import Foundation
import Logging
import PatinaCore
import PatinaQUIC
import PatinaStore
import Synchronization

/// Settings of a ``ClusterNode``.
public struct ClusterNodeConfig: Sendable {
    /// UDP address the QUIC endpoint binds.
    public var bind: QUICSocketAddress
    /// The address other nodes dial ("host:port"); its host must be in this node's
    /// certificate (an IP SAN for an IP address). nil: the bound address.
    public var advertisedAddress: String?
    /// Addresses ("host:port") to announce to at start.
    public var bootstrap: [String]
    public var clusterID: UInt16
    public var region: String?
    public var tls: QUICTLSConfig
    public var membership: MembershipConfig
    public var broadcast = BroadcastConfig()
    public var sync = SyncConfig()
    public var connectTimeout: Duration = .seconds(5)
    /// How often members are saved to SQLite (at most).
    public var persistInterval: Duration = .seconds(10)
    /// How often QUIC RTT estimates are fed to membership and broadcast.
    public var rttInterval: Duration = .seconds(1)

    public init(bind: QUICSocketAddress, advertisedAddress: String? = nil, bootstrap: [String] = [], clusterID: UInt16 = 0,
                region: String? = nil, tls: QUICTLSConfig) {
        self.bind = bind
        self.advertisedAddress = advertisedAddress
        self.bootstrap = bootstrap
        self.clusterID = clusterID
        self.region = region
        self.tls = tls
        var m = MembershipConfig(clusterID: clusterID)
        m.recordProbeRTT = false  // QUIC's RTT estimator feeds better samples
        self.membership = m
    }
}

/// A member as listed by `/cluster/members`.
public struct ClusterMemberSnapshot: Sendable, Hashable {
    public var actorID: ActorID
    public var address: String
    public var state: String
    public var rttMilliseconds: Double?
    public var region: String?
}

/// The running cluster side of a node: one QUIC endpoint (mutual TLS), SWIM
/// membership over DATAGRAM frames, broadcast over uni streams, anti-entropy sync
/// over bi streams, and the apply queue merging remote changes into the store.
///
/// `run()` runs until its task is cancelled or ``shutdown()`` finished; `shutdown()`
/// is the graceful way out (leave, flush broadcasts, drain connections).
public final class ClusterNode: Sendable {
    public let store: Store
    public let config: ClusterNodeConfig
    public let advertisedAddress: String
    let logger: Logger
    let endpoint: QUICEndpoint
    let peers: PeerConnections
    let membershipTransport: QUICMembershipTransport
    let changesetTransport: QUICChangesetTransport
    let membership: MembershipShell<ContinuousClock>
    let broadcastShell: BroadcastShell
    let syncShell: SyncShell
    public let applyQueue: ApplyQueue
    /// Region of each member that gossips one, for lock-free-ish lookups from
    /// the store's commit listener (which must not await).
    private let regions = Mutex<[ActorID: String]>([:])
    private let stop: AsyncStream<Void>
    private let stopContinuation: AsyncStream<Void>.Continuation
    private let stopped = Mutex<Bool>(false)

    public init(store: Store, config: ClusterNodeConfig, logger: Logger = Logger(label: "patina.cluster")) throws {
        self.store = store
        self.config = config
        self.logger = logger
        var quic = QUICEndpointConfig(tls: config.tls)
        quic.maxDatagramFrameSize = UInt64(max(1200, config.membership.maxMessageSize + 64))
        endpoint = try QUICEndpoint(bind: config.bind, config: quic, logger: Logger(label: "patina.quic"))
        let bound = endpoint.localAddress
        let advertised = config.advertisedAddress ?? bound.description
        advertisedAddress = advertised
        peers = PeerConnections(endpoint: endpoint, connectTimeout: config.connectTimeout, logger: logger)
        membershipTransport = QUICMembershipTransport(peers: peers, logger: logger)
        changesetTransport = QUICChangesetTransport(peers: peers)
        let myself = MemberIdentity(id: store.actorID, address: advertised, region: config.region)
        // One thread for member persistence, shared by load and save (SQLite off the pool).
        let membersWorker = BlockingExecutor(label: "patina.members")
        let persistence = MembershipPersistence(
            load: { [store, membersWorker] in
                let (rows, incarnation) = try await membersWorker.run { try store.loadMembers() }
                if rows.isEmpty && incarnation == nil { return nil }
                let members = rows.map { row in
                    MemberInfo(id: row.actor, address: row.address, region: nil,
                               status: MemberStatus(text: row.state) ?? .alive, incarnation: 0)
                }
                return PersistedMembership(incarnation: incarnation ?? 0, members: members)
            },
            save: { [store, membersWorker] snapshot in
                let now = Int64(Date().timeIntervalSince1970 * 1000)
                let rows = snapshot.members.map { m in
                    StoredMember(actor: m.id, address: m.address, state: m.status.description,
                                 rttMilliseconds: m.rttSmoothed.map(\.milliseconds), updatedAt: now)
                }
                try await membersWorker.run { try store.saveMembers(rows, incarnation: snapshot.incarnation) }
            })
        let bootstrap = config.bootstrap.filter { $0 != advertised && $0 != bound.description }
        membership = try MembershipShell(
            myself: myself, config: config.membership, bootstrap: bootstrap, transport: membershipTransport,
            persistence: persistence, persistInterval: config.persistInterval, logger: logger)
        let applyQueue = ApplyQueue(store: store, logger: logger)
        self.applyQueue = applyQueue
        var broadcastConfig = config.broadcast
        broadcastConfig.region = config.region
        broadcastShell = BroadcastShell(
            localActor: store.actorID, config: broadcastConfig, seed: UInt64.random(in: 0...UInt64.max),
            transport: changesetTransport, logger: logger,
            apply: { [logger] changesets in
                if !(await applyQueue.offer(changesets)) {
                    logger.debug("apply queue full: broadcast changesets left to sync", metadata: ["changesets": "\(changesets.count)"])
                }
            })
        syncShell = SyncShell(store: store, config: config.sync, seed: UInt64.random(in: 0...UInt64.max),
                              logger: logger, apply: { changesets in await applyQueue.enqueue(changesets) })
        (stop, stopContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// The address the QUIC endpoint is bound to.
    public var boundAddress: QUICSocketAddress { endpoint.localAddress }

    // MARK: API

    /// Hands a local commit's changesets to broadcast (they leave at once).
    public func broadcast(_ changesets: [Changeset]) async {
        guard !changesets.isEmpty else { return }
        await broadcastShell.localCommit(changesets)
    }

    /// Every known member but this node.
    public func members() async -> [ClusterMemberSnapshot] {
        await membership.members.map { m in
            ClusterMemberSnapshot(actorID: m.id, address: m.address, state: m.status.description,
                                  rttMilliseconds: m.rttSmoothed.map(\.milliseconds), region: m.region)
        }
    }

    /// Live members including this node, and changesets waiting in the apply queue.
    public func healthFigures() async -> (members: Int, queueSize: Int) {
        let live = await membership.liveMemberCount
        let depth = await applyQueue.depth
        return (live + 1, depth)
    }

    /// The region `actor` gossips, if it is (or was) a member and has one.
    public func region(of actor: ActorID) -> String? {
        regions.withLock { $0[actor] }
    }

    // MARK: Running

    public func run() async {
        logger.notice("cluster listening on \(endpoint.localAddress) (quic, mutual TLS) as \(advertisedAddress)",
                      metadata: ["bootstrap": "\(config.bootstrap)", "cluster_id": "\(config.clusterID)"])
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.membership.run() }
            group.addTask { await self.applyQueue.run() }
            group.addTask { await self.broadcastShell.run(clock: ContinuousClock()) }
            group.addTask { await self.syncShell.run(connector: QUICSyncConnector(peers: self.peers), clock: ContinuousClock()) }
            group.addTask { await self.acceptLoop() }
            group.addTask { await self.serveLoop() }
            group.addTask { await self.membershipEventsLoop() }
            group.addTask { await self.rttLoop() }
            for await _ in stop { break }
            group.cancelAll()
        }
        await peers.closeAll(drainTimeout: nil)
        await endpoint.close()
        membershipTransport.finish()
        logger.notice("cluster stopped")
    }

    /// Graceful exit: tells members we leave, sends what broadcast still holds,
    /// waits (bounded) for peers to acknowledge it, then ends `run()`.
    public func shutdown(flushTimeout: Duration = .seconds(2)) async {
        let first = stopped.withLock { s -> Bool in
            defer { s = true }
            return !s
        }
        guard first else { return }
        await membership.leave()
        let deadline = ContinuousClock.now + flushTimeout
        var quietChecks = 0
        while ContinuousClock.now < deadline {
            let pendingSends = await broadcastShell.pendingSendCount
            if pendingSends == 0 && changesetTransport.inFlight.load(ordering: .relaxed) == 0 {
                quietChecks += 1
                if quietChecks >= 3 { break }
            } else {
                quietChecks = 0
            }
            try? await Task.sleep(for: .milliseconds(5))
        }
        let remaining = deadline - ContinuousClock.now
        await peers.closeAll(drainTimeout: max(.milliseconds(100), min(remaining, .seconds(1))))
        stopContinuation.yield()
    }

    private func acceptLoop() async {
        for await connection in endpoint.incomingConnections {
            await peers.accepted(connection)
        }
    }

    /// Serves every connection (dialled or accepted): datagrams to membership or
    /// broadcast (by first byte, see ``QUICChangesetTransport``), uni streams to
    /// broadcast, bi streams to sync. Bad input is logged and dropped.
    private func serveLoop() async {
        await withDiscardingTaskGroup { group in
            for await (connection, peer) in peers.registered {
                group.addTask { await self.serve(connection, peer: peer) }
            }
        }
    }

    private func serve(_ connection: QUICConnection, peer: String) async {
        defer {
            // The connection ended: broadcast frames it had not delivered go again on
            // another one (a duplicate is harmless; a loss would wait for sync).
            let undelivered = connection.takeUndeliveredMessages().filter(QUICChangesetTransport.isBroadcastFrame)
            if !undelivered.isEmpty {
                logger.debug("re-sending broadcast frames a closed connection left undelivered",
                             metadata: ["peer": "\(peer)", "frames": "\(undelivered.count)"])
                let transport = changesetTransport
                Task {
                    for frame in undelivered { try? await transport.send(frame, to: peer) }
                }
            }
        }
        await withDiscardingTaskGroup { group in
            group.addTask {
                // In batches: one hop into broadcast for all the frames that came together.
                for await datagrams in connection.incomingDatagramBatches {
                    var frames: [[UInt8]] = []
                    for datagram in datagrams {
                        if QUICChangesetTransport.isBroadcastFrame(datagram) {
                            frames.append(datagram)
                        } else {
                            self.membershipTransport.deliver(datagram, from: peer)
                        }
                    }
                    // Malformed ones are counted and logged by the shell.
                    if !frames.isEmpty { await self.broadcastShell.received(datagrams: frames, from: peer) }
                }
            }
            group.addTask {
                await withDiscardingTaskGroup { streams in
                    for await stream in connection.incomingStreams {
                        streams.addTask { await self.handle(stream, from: peer) }
                    }
                }
            }
        }
    }

    private func handle(_ stream: QUICStream, from peer: String) async {
        if stream.isUnidirectional {
            // Decoded as it arrives; a bad frame drops the whole stream.
            var decoder = BroadcastStreamDecoder()
            do {
                while let chunk = try await stream.read() { try decoder.feed(chunk) }
                try decoder.finish()
            } catch {
                stream.reset()
                logger.warning("malformed broadcast stream dropped", metadata: ["peer": "\(peer)", "error": "\(error)"])
                return
            }
            if !decoder.changesets.isEmpty { await broadcastShell.received(decoder.changesets, from: peer) }
        } else {
            do {
                try await syncShell.serve(QUICSyncStream(stream: stream))
            } catch {
                logger.debug("sync session served with error", metadata: ["peer": "\(peer)", "error": "\(error)"])
            }
        }
    }

    private func membershipEventsLoop() async {
        for await event in membership.events {
            if event.to == nil || event.to == .down {
                await peers.evict(event.member.address)
            }
            await refreshPeers()
        }
    }

    /// Alive members (with their RTT) to broadcast and sync.
    private func refreshPeers() async {
        let all = await membership.members
        regions.withLock { r in
            for m in all { if let region = m.region { r[m.id] = region } }
        }
        // Suspects stay targets: a suspicion is a question, not a verdict, and on a
        // lossy WAN cutting a suspect off would delay its data until sync.
        let reachable = all.filter { $0.status != .down }
        await broadcastShell.membersChanged(reachable.map { BroadcastMember(id: $0.address, rtt: $0.rttMin, region: $0.region) })
        await syncShell.membersChanged(reachable.map { SyncPeer(id: $0.address, rtt: $0.rttMin) })
    }

    /// Feeds ngtcp2's smoothed RTT of each peer's connection to membership, and
    /// the cluster's counts to the metrics endpoint.
    private func rttLoop() async {
        var metrics = ClusterMetrics()
        while !Task.isCancelled {
            do { try await Task.sleep(for: config.rttInterval) } catch { return }
            metrics.export(broadcast: await broadcastShell.metrics, apply: await applyQueue.stats, sync: await syncShell.stats,
                           applyQueueDepth: await applyQueue.depth, memberStates: await membership.members.map(\.status))
            let live = await peers.live()
            guard !live.isEmpty else { continue }
            let byAddress = Dictionary(await membership.members.map { ($0.address, $0.id) }, uniquingKeysWith: { a, _ in a })
            for (address, connection) in live {
                guard let id = byAddress[address], let stats = await connection.stats() else { continue }
                await membership.recordRTT(id, stats.smoothedRTT)
            }
            await refreshPeers()
        }
    }
}

extension MemberStatus {
    init?(text: String) {
        switch text {
        case "alive": self = .alive
        case "suspect": self = .suspect
        case "down": self = .down
        default: return nil
        }
    }
}

extension Duration {
    var milliseconds: Double {
        let (s, a) = components
        return Double(s) * 1000 + Double(a) / 1e15
    }
}
