import Foundation
import PatinaCore

/// A peer as broadcast sees it: an id the transport understands and, when
/// known, the round-trip time to it and the region it gossips.
public struct BroadcastMember: Hashable, Sendable {
    public var id: String
    public var rtt: Duration?
    public var region: String?

    public init(id: String, rtt: Duration? = nil, region: String? = nil) {
        self.id = id
        self.rtt = rtt
        self.region = region
    }
}

public struct BroadcastConfig: Sendable {
    /// Ring 0 always holds this many nearest members (by RTT)…
    public var ring0Nearest = 3
    /// …plus every member closer than this (Corrosion's first RTT bucket)…
    public var ring0Latency: Duration = .milliseconds(6)
    /// …up to this many in all.
    public var ring0Limit = 8
    /// Lower bound on the random fanout to members outside ring 0.
    public var minFanout = 3
    /// This node's region, if it has one. Relays then also go to every member
    /// of the same region: a region that heard a change spreads it locally in
    /// one short hop, whichever of its members heard it first.
    public var region: String? = nil
    /// A local change goes straight to this many nearest members of every
    /// region (members without a region form none). A far region never waits
    /// for a relay hop, and one lost copy is covered by the other's relay.
    public var perRegion = 2
    /// Times each item is sent (to fresh targets each time). nil: derived from
    /// the member count, `ceil(3 · log10(n + 1))`, at least 2.
    public var maxTransmissions: Int? = nil
    /// Send k+1 of an item happens `retransmitDelay · k` after send k.
    public var retransmitDelay: Duration = .milliseconds(100)
    /// An item is no longer retransmitted once this many copies of it came
    /// back from peers: the rumour is evidently known around here (Demers et
    /// al.'s feedback counter). In a small or densely covered cluster this ends
    /// the O(n²) flood of retransmissions. nil: `maxTransmissions`, which grows
    /// with the cluster, so sparse coverage in a large lossy one still gets
    /// every retransmission (a fixed 2 left nodes unreached in the 500-node,
    /// 30%-loss simulation).
    public var stopAfterDuplicates: Int? = nil
    /// Changesets larger than this are split by seq before they go out.
    public var maxChunkBytes = 64 * 1024
    /// A batch frame to one peer holds at most this many encoded bytes (one
    /// chunk alone may reach `maxChunkBytes`).
    public var maxBatchBytes = 256 * 1024
    /// Entries waiting per peer while a send to it is in flight.
    public var maxQueuePerPeer = 1024
    /// Items remembered for retransmission.
    public var maxPendingItems = 10_000
    /// Keys of changesets seen, for relay dedupe.
    public var seenCapacity = 100_000

    public init() {}
}

/// What the shell must do.
public enum BroadcastDirective: Hashable, Sendable {
    /// Send these changesets to `peer` as one frame. The shell MUST report the
    /// outcome with ``BroadcastStateMachine/sendCompleted(_:)`` or
    /// ``BroadcastStateMachine/sendFailed(_:)``: no other send to that peer is
    /// issued until then.
    case send(to: String, changesets: [Changeset])
    /// Remote changesets not seen before: merge them into the local store.
    case apply([Changeset])
    /// Call ``BroadcastStateMachine/tick(now:)`` after this long.
    case scheduleTick(after: Duration)
}

public struct BroadcastMetrics: Hashable, Sendable {
    public var localChangesets = 0
    public var chunksCreated = 0
    public var receivedChangesets = 0
    public var duplicates = 0
    public var applied = 0
    /// Frames handed to the transport.
    public var sends = 0
    /// Changesets inside those frames.
    public var changesetsSent = 0
    /// Frames carrying more than one changeset from a peer's queue.
    public var batchedSends = 0
    public var retransmissions = 0
    public var sendFailures = 0
    /// Queue entries dropped under overload (sync repairs them).
    public var droppedQueued = 0
    /// Items dropped from the retransmission set under overload.
    public var droppedPending = 0
}

/// Decides where changesets go: the broadcast protocol as a value.
///
/// Pure (DESIGN.md, Cluster): no clock, no I/O; time comes in as `now`, the
/// offset from any fixed origin the caller keeps, and randomness from the
/// seeded generator it is built with.
///
/// - A local changeset goes out at once (no batching window) to ring 0, the
///   nearest members by RTT, to the `perRegion` nearest members of every
///   region, and to a random fanout of the others. Across regions the direct
///   path is the fastest there is: a relay hop costs a second long link.
/// - A received changeset not seen before is applied and relayed, never back
///   to its sender: when this node and every member have a region, only to
///   the other members of this region (at most `ring0Limit`, once, no
///   retransmission: the origin covers the long links), and only when it came
///   from outside the region (a sibling already told the region); otherwise to the
///   members of this region and a random fanout. Seen keys (actor, versions,
///   seqs) are remembered in a bounded FIFO.
/// - Each item is sent up to `maxTransmissions` times, to fresh targets, with
///   delays growing linearly (`retransmitDelay · sendCount`), as Corrosion does,
///   unless `stopAfterDuplicates` copies of it came back first.
/// - At most one send per peer is in flight; what comes meanwhile waits in that
///   peer's queue and leaves as one batch when the send completes. So small
///   changesets are batched only while the link is busy, never on a timer.
/// - Queues are bounded: under overload the most-sent, then oldest entries go
///   first (anti-entropy sync repairs whatever is lost), and drops are counted.
public struct BroadcastStateMachine: Sendable {
    struct ItemKey: Hashable, Sendable {
        var actor: ActorID
        var versions: ClosedRange<Int64>
        var seqs: ClosedRange<Int64>?

        init(_ c: Changeset) {
            actor = c.actor
            versions = c.versions
            if case .changes(_, _, let seqs, _, _) = c.content { self.seqs = seqs } else { seqs = nil }
        }
    }

    struct Item: Sendable {
        var changeset: Changeset
        var bytes: Int
        var sendCount: Int
        var nextSendAt: Duration
        var sentTo: Set<String>
        var source: String?
        var order: UInt64
        var duplicates = 0
    }

    struct QueueEntry: Sendable {
        var key: ItemKey
        var changeset: Changeset
        var bytes: Int
        var sendCount: Int
        var order: UInt64
    }

    struct PeerState: Sendable {
        var inFlight = false
        var queue: [QueueEntry] = []
    }

    public let localActor: ActorID
    public var config: BroadcastConfig
    public private(set) var metrics = BroadcastMetrics()
    private var rng: SplitMix64

    private var members: [String: BroadcastMember] = [:]
    /// Member ids sorted by RTT (unknown last), then id.
    private var byDistance: [String] = []
    private var ring0: [String] = []
    private var ring0Set: Set<String> = []
    /// Ring 0 plus the nearest `perRegion` members of every region: where a local change goes first.
    private var directTargets: [String] = []
    private var directSet: Set<String> = []
    /// Members of this node's own region, nearest first.
    private var sameRegion: [String] = []
    /// This node and every member have a region: relays stay within the region.
    private var regional = false
    private var peers: [String: PeerState] = [:]
    private var pending: [ItemKey: Item] = [:]
    private var seen: Set<ItemKey> = []
    private var seenOrder: [ItemKey] = []
    private var seenHead = 0
    private var nextOrder: UInt64 = 0
    private var scheduledTickAt: Duration?
    /// No pending item is due before this (it may be earlier than the true
    /// minimum after removals: a tick then finds nothing and recomputes it).
    /// Kept so that a flush need not scan every pending item.
    private var earliestRetransmission: Duration?

    public init(localActor: ActorID, config: BroadcastConfig = BroadcastConfig(), rng: SplitMix64) {
        self.localActor = localActor
        self.config = config
        self.rng = rng
    }

    // MARK: Introspection (tests, metrics)

    public var ring0Members: [String] { ring0 }
    public var pendingCount: Int { pending.count }
    public func queuedCount(for peer: String) -> Int { peers[peer]?.queue.count ?? 0 }
    public func isInFlight(_ peer: String) -> Bool { peers[peer]?.inFlight ?? false }
    public var memberCount: Int { members.count }
    /// A peer's queue as (enqueue order, send count) pairs, oldest first.
    func queueSnapshot(for peer: String) -> [(order: UInt64, sendCount: Int)] {
        (peers[peer]?.queue ?? []).map { ($0.order, $0.sendCount) }
    }

    /// Sends per item for the current membership.
    public var maxTransmissions: Int {
        if let n = config.maxTransmissions { return max(1, n) }
        let n = Double(members.count + 1)
        return max(2, Int((3 * log10(n)).rounded(.up)))
    }

    /// Random targets per send outside ring 0.
    public var fanout: Int {
        let others = max(0, members.count - ring0.count)
        return max(config.minFanout, others / (maxTransmissions * 10))
    }

    // MARK: Events

    public mutating func membersChanged(_ newMembers: [BroadcastMember]) -> [BroadcastDirective] {
        members = [:]
        for m in newMembers { members[m.id] = m }
        byDistance = members.values.sorted { a, b in
            switch (a.rtt, b.rtt) {
            case (let x?, let y?): x != y ? x < y : a.id < b.id
            case (.some, nil): true
            case (nil, .some): false
            case (nil, nil): a.id < b.id
            }
        }.map(\.id)
        ring0 = []
        for (i, id) in byDistance.enumerated() {
            guard ring0.count < config.ring0Limit, let rtt = members[id]?.rtt else { break }
            if i < config.ring0Nearest || rtt < config.ring0Latency { ring0.append(id) } else { break }
        }
        ring0Set = Set(ring0)
        directTargets = ring0
        var perRegionCount: [String: Int] = [:]
        for id in byDistance {
            guard let region = members[id]?.region, !ring0Set.contains(id) else { continue }
            let count = perRegionCount[region, default: 0]
            guard count < config.perRegion else { continue }
            perRegionCount[region] = count + 1
            directTargets.append(id)
        }
        directSet = Set(directTargets)
        sameRegion = config.region.map { mine in byDistance.filter { members[$0]?.region == mine } } ?? []
        regional = config.region != nil && !members.isEmpty && members.values.allSatisfy { $0.region != nil }
        // Forget peers that left; their queued entries are dropped (sync repairs).
        for id in peers.keys where members[id] == nil {
            metrics.droppedQueued += peers[id]!.queue.count
            peers[id] = nil
        }
        return []
    }

    /// Changesets committed locally: out at once to ring 0, the nearest members
    /// of every region, and a random fanout.
    public mutating func localCommit(_ changesets: [Changeset], now: Duration) -> [BroadcastDirective] {
        var touched: [String] = []
        let others = byDistance.filter { !directSet.contains($0) }
        for c in changesets {
            metrics.localChangesets += 1
            let chunks = c.split(maxBytes: config.maxChunkBytes)
            if chunks.count > 1 { metrics.chunksCreated += chunks.count }
            for chunk in chunks {
                let key = ItemKey(chunk)
                remember(key)
                let targets = directTargets + chooseRandom(fanout, among: others)
                startItem(key, chunk, targets: targets, source: nil, now: now, touched: &touched)
            }
        }
        return flush(touched, now: now)
    }

    /// Changesets received from `peer`: apply and relay the ones not seen before.
    public mutating func received(_ changesets: [Changeset], from peer: String, now: Duration) -> [BroadcastDirective] {
        var fresh: [Changeset] = []
        var touched: [String] = []
        // Who a relay goes to depends on the sender only: worked out once per call.
        let local = sameRegion.filter { $0 != peer }
        let relayInRegion = !(sameRegion.contains(peer) && sameRegion.count <= config.ring0Limit)
        let excluded = Set(local).union([peer])
        for c in changesets {
            metrics.receivedChangesets += 1
            let key = ItemKey(c)
            if c.actor == localActor || seen.contains(key) {
                metrics.duplicates += 1
                if var item = pending[key] {
                    item.duplicates += 1
                    pending[key] = item.duplicates >= (config.stopAfterDuplicates ?? maxTransmissions) ? nil : item
                }
                continue
            }
            remember(key)
            fresh.append(c)
            for chunk in c.split(maxBytes: config.maxChunkBytes) {
                let chunkKey = ItemKey(chunk)
                if chunkKey != key { remember(chunkKey) }
                if regional {
                    // The origin already reached every region directly; spread it here,
                    // in short hops, and leave the long links alone. A copy from a
                    // sibling needs no relay when the sibling could tell the whole region.
                    if relayInRegion {
                        let targets = local.count <= config.ring0Limit ? local : chooseRandom(config.ring0Limit, among: local)
                        startItem(chunkKey, chunk, targets: targets, source: peer, now: now, touched: &touched, retransmit: false)
                    }
                } else {
                    let targets = local + chooseRandom(fanout, excluding: excluded)
                    startItem(chunkKey, chunk, targets: targets, source: peer, now: now, touched: &touched)
                }
            }
        }
        var directives: [BroadcastDirective] = []
        if !fresh.isEmpty {
            metrics.applied += fresh.count
            directives.append(.apply(fresh))
        }
        return directives + flush(touched, now: now)
    }

    /// The send to `peer` finished: what queued meanwhile goes now, as one batch.
    public mutating func sendCompleted(_ peer: String) -> [BroadcastDirective] {
        guard peers[peer] != nil else { return [] }
        peers[peer]!.inFlight = false
        return flush([peer], now: nil)
    }

    /// The send to `peer` failed. Its items are not re-queued here: they are
    /// retransmitted to other targets, and sync repairs the rest.
    public mutating func sendFailed(_ peer: String) -> [BroadcastDirective] {
        metrics.sendFailures += 1
        return sendCompleted(peer)
    }

    /// Retransmits items whose next send is due.
    public mutating func tick(now: Duration) -> [BroadcastDirective] {
        if let at = scheduledTickAt, at <= now { scheduledTickAt = nil }
        var touched: [String] = []
        let due = pending.filter { $0.value.nextSendAt <= now }.sorted { $0.value.order < $1.value.order }
        earliestRetransmission = pending.values.lazy.map(\.nextSendAt).filter { $0 > now }.min()
        let limit = maxTransmissions
        for (key, var item) in due {
            var excluded = item.sentTo
            if let s = item.source { excluded.insert(s) }
            let targets = chooseRandom(fanout, excluding: excluded)
            if targets.isEmpty {
                pending[key] = nil
                continue
            }
            metrics.retransmissions += 1
            item.sendCount += 1
            item.sentTo.formUnion(targets)
            for t in targets { enqueue(t, key: key, item: item, touched: &touched) }
            if item.sendCount >= limit {
                pending[key] = nil
            } else {
                item.nextSendAt = now + config.retransmitDelay * item.sendCount
                pending[key] = item
                noteRetransmission(at: item.nextSendAt)
            }
        }
        return flush(touched, now: now)
    }

    // MARK: Internals

    private mutating func startItem(_ key: ItemKey, _ changeset: Changeset, targets: [String], source: String?,
                                    now: Duration, touched: inout [String], retransmit: Bool = true) {
        let item = Item(changeset: changeset, bytes: ChangesetCodec.encodedSize(changeset), sendCount: 1,
                        nextSendAt: now + config.retransmitDelay, sentTo: Set(targets), source: source, order: takeOrder())
        for t in targets { enqueue(t, key: key, item: item, touched: &touched) }
        guard retransmit, maxTransmissions > 1, targets.count < members.count - (source == nil ? 0 : 1) else { return }
        pending[key] = item
        noteRetransmission(at: item.nextSendAt)
        if pending.count > config.maxPendingItems {
            // Evict the most-sent, then oldest item.
            if let victim = pending.max(by: { a, b in
                a.value.sendCount != b.value.sendCount ? a.value.sendCount < b.value.sendCount : a.value.order > b.value.order
            }) {
                pending[victim.key] = nil
                metrics.droppedPending += 1
            }
        }
    }

    private mutating func enqueue(_ peer: String, key: ItemKey, item: Item, touched: inout [String]) {
        guard members[peer] != nil else { return }
        var state = peers[peer] ?? PeerState()
        if state.queue.count >= config.maxQueuePerPeer {
            var victim = 0
            for (i, e) in state.queue.enumerated() {
                let v = state.queue[victim]
                if e.sendCount > v.sendCount || (e.sendCount == v.sendCount && e.order < v.order) { victim = i }
            }
            state.queue.remove(at: victim)
            metrics.droppedQueued += 1
        }
        state.queue.append(QueueEntry(key: key, changeset: item.changeset, bytes: item.bytes, sendCount: item.sendCount,
                                      order: takeOrder()))
        peers[peer] = state
        touched.append(peer)
    }

    /// Emits one batch for each touched peer with nothing in flight.
    private mutating func flush(_ touched: [String], now: Duration?) -> [BroadcastDirective] {
        var directives: [BroadcastDirective] = []
        var done: Set<String> = []
        for peer in touched where done.insert(peer).inserted {
            guard var state = peers[peer], !state.inFlight, !state.queue.isEmpty else { continue }
            var bytes = 0
            var take = 0
            var keys: Set<ItemKey> = []
            var batch: [Changeset] = []
            while take < state.queue.count {
                let e = state.queue[take]
                if take > 0 && bytes + e.bytes > config.maxBatchBytes { break }
                bytes += e.bytes
                take += 1
                // The same item queued twice (a retransmission) goes once.
                if keys.insert(e.key).inserted { batch.append(e.changeset) }
            }
            state.queue.removeFirst(take)
            state.inFlight = true
            peers[peer] = state
            metrics.sends += 1
            metrics.changesetsSent += batch.count
            if batch.count > 1 { metrics.batchedSends += 1 }
            directives.append(.send(to: peer, changesets: batch))
        }
        if let now, !pending.isEmpty, let next = earliestRetransmission {
            if scheduledTickAt == nil || next < scheduledTickAt! {
                scheduledTickAt = next
                directives.append(.scheduleTick(after: max(.zero, next - now)))
            }
        }
        return directives
    }

    private mutating func noteRetransmission(at time: Duration) {
        earliestRetransmission = min(earliestRetransmission ?? time, time)
    }

    private mutating func remember(_ key: ItemKey) {
        guard seen.insert(key).inserted else { return }
        if seenOrder.count < config.seenCapacity {
            seenOrder.append(key)
        } else {
            seen.remove(seenOrder[seenHead])
            seenOrder[seenHead] = key
            seenHead = (seenHead + 1) % seenOrder.count
        }
    }

    private mutating func takeOrder() -> UInt64 {
        nextOrder += 1
        return nextOrder
    }

    /// Up to `k` distinct random members outside `excluding`.
    private mutating func chooseRandom(_ k: Int, excluding: Set<String>) -> [String] {
        chooseRandom(k, among: byDistance.filter { !excluding.contains($0) })
    }

    /// Up to `k` distinct random elements of `candidates`.
    private mutating func chooseRandom(_ k: Int, among candidates: [String]) -> [String] {
        guard k > 0 else { return [] }
        var candidates = candidates
        if candidates.count <= k { return candidates }
        for i in 0..<k {
            let j = i + Int(rng.next() % UInt64(candidates.count - i))
            candidates.swapAt(i, j)
        }
        return Array(candidates.prefix(k))
    }
}
