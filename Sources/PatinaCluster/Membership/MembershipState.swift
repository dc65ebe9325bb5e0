import Foundation
import PatinaCore

/// What the membership instance asks its shell to do.
public enum MembershipDirective: Sendable, Hashable {
    /// Encode `message` and send it to `address` (one datagram). The message fits in
    /// `MembershipConfig.maxMessageSize` bytes once encoded.
    case send(MembershipMessage, to: String)
    /// Call `onTick(now:)` at `at` (microseconds on the instance's time line). A later
    /// request does not cancel an earlier one; ticking early or twice is harmless.
    case scheduleTick(at: UInt64)
    /// A member's status changed. `from == nil`: newly known; `to == nil`: forgotten.
    case membershipChanged(MemberInfo, from: MemberStatus?, to: MemberStatus?)
    /// A message was refused (another cluster id); nothing was learnt from it.
    case refused(from: String, reason: String)
}

/// The SWIM failure detector and membership (Das, Gupta, Motivala 2002) with the
/// Lifeguard refinements to suspicion (Dadgar et al. 2018, §IV-B) as a pure value:
/// no clock, no I/O, randomness only from the seeded generator it is given. Time
/// comes in as `now`, microseconds since an origin the caller picks, and MUST NOT go
/// backwards. Every handler returns directives for the shell.
///
/// Rules, in one place:
/// - Probing (SWIM §3.1, §4.3): every `probeInterval` the next member of a shuffled
///   round-robin list (alive or suspect) is pinged; without an ack within
///   `probeTimeout`, `indirectProbes` other members are asked to ping it; without any
///   ack by `indirectProbeTimeout` later, it becomes suspect.
/// - Knowledge order (`MemberUpdate.supersedes`): higher incarnation wins, then
///   down > suspect > alive. A node hearing itself suspect or down at incarnation
///   ≥ its own refutes with incarnation + 1 (SWIM §4.2); this also heals a node
///   declared down by mistake or restarted without its incarnation.
/// - Suspicion (Lifeguard §IV-B): a suspect becomes down after a timeout between
///   `max` and `min` that shrinks with independent confirmations; min scales with
///   log10(n).
/// - Dissemination (SWIM §4.1): every message piggybacks queued updates (as many as
///   fit), each sent λ·log10(n+1) times; news also triggers an eager gossip round to
///   `gossipFanout` members. Every message carries its sender's identity, so any
///   message is direct evidence that the sender is alive.
/// - Join: `announce` goes to bootstrap addresses; the answer is the full membership
///   in `.snapshot` chunks. Announces repeat (faster while alone) to heal partitions.
/// - A message with another cluster id is refused before anything is learnt from it.
public struct MembershipState: Sendable {
    public let config: MembershipConfig
    public private(set) var myself: MemberIdentity
    public private(set) var bootstrap: [String]
    /// Set by `leave`: the node no longer refutes, probes or announces.
    public private(set) var hasLeft = false

    struct Record: Sendable {
        var address: String
        var region: String?
        var incarnation: UInt64
        var status: MemberStatus
        var suspicion: Suspicion?
        var downSince: UInt64 = 0
        var rtt = RTTStats()
        /// Index in `memberIDs`.
        var slot: Int
    }

    struct Suspicion: Sendable {
        var start: UInt64
        /// Distinct nodes that suspect the member (the first one raised it).
        var suspectors: [ActorID]
    }

    struct Probe: Sendable {
        var target: ActorID
        var sequence: UInt32
        var sentAt: UInt64
        var indirect: Bool
        var deadline: UInt64
    }

    struct Relay: Sendable {
        var origin: String
        var originSequence: UInt32
        var target: ActorID
        var deadline: UInt64
    }

    private var rng: SplitMix64
    private var records: [ActorID: Record] = [:]
    /// Every known member, for uniform random choice.
    private var memberIDs: [ActorID] = []
    private var liveCount = 0  // alive + suspect, excluding myself
    private var suspects: Set<ActorID> = []
    private var downIDs: Set<ActorID> = []
    /// Members that went down within `deadGossipWindow`, in order.
    private var recentlyDown: [(id: ActorID, since: UInt64)] = []
    private var probeOrder: [ActorID] = []
    private var probeIndex = 0
    private var probe: Probe?
    private var relays: [UInt32: Relay] = [:]
    private var nextSequence: UInt32 = 0
    private var gossip = GossipQueue()
    /// Set while handling a message that said this node is down.
    private var refutedDown = false
    /// Set while handling a message that said this node is suspect or down at an
    /// incarnation it already refuted.
    private var senderHoldsOldNewsAboutUs = false

    private var started = false
    private var nextProbeAt: UInt64 = 0
    private var nextGossipAt: UInt64 = .max
    private var lastGossipAt: UInt64 = 0
    private var nextAnnounceAt: UInt64 = 0
    private var nextReapAt: UInt64 = .max
    private var scheduledTickAt: UInt64 = .max
    /// When `onTick` is next due (after any handler returns). A shell may sleep until
    /// then instead of tracking `.scheduleTick` directives.
    public private(set) var nextDeadline: UInt64 = .max

    // Cached conversions of the config durations.
    private let probeIntervalUs: UInt64
    private let probeTimeoutUs: UInt64
    private let indirectTimeoutUs: UInt64
    private let gossipIntervalUs: UInt64
    private let eagerSpacingUs: UInt64
    private let announceIntervalUs: UInt64
    private let rejoinIntervalUs: UInt64
    private let downRemovalUs: UInt64
    private let deadGossipUs: UInt64

    /// - Parameters:
    ///   - myself: this node; its address and region MUST be at most 255 UTF-8 bytes.
    ///   - bootstrap: "host:port" addresses to announce to (this node's own address is
    ///     skipped).
    ///   - seed: seeds every random choice, so a run replays exactly.
    public init(myself: MemberIdentity, config: MembershipConfig, bootstrap: [String] = [], seed: UInt64) {
        precondition(myself.address.utf8.count <= 255 && (myself.region?.utf8.count ?? 0) <= 255)
        self.myself = myself
        self.config = config
        self.bootstrap = bootstrap.filter { $0 != myself.address }
        self.rng = SplitMix64(seed: seed)
        probeIntervalUs = max(1, config.probeInterval.membershipMicros)
        probeTimeoutUs = config.probeTimeout.membershipMicros
        indirectTimeoutUs = config.indirectProbeTimeout.membershipMicros
        gossipIntervalUs = max(1, config.gossipInterval.membershipMicros)
        eagerSpacingUs = config.eagerGossipSpacing.membershipMicros
        announceIntervalUs = max(1, config.announceInterval.membershipMicros)
        rejoinIntervalUs = max(1, config.rejoinInterval.membershipMicros)
        downRemovalUs = config.downRemovalAfter.membershipMicros
        deadGossipUs = config.deadGossipWindow.membershipMicros
    }

    // MARK: Queries

    /// Members other than this node, alive or suspect.
    public var liveMemberCount: Int { liveCount }

    /// Every known member except this node.
    public var members: [MemberInfo] { memberIDs.map { info($0, records[$0]!) } }

    public func member(_ id: ActorID) -> MemberInfo? {
        records[id].map { info(id, $0) }
    }

    public func status(of id: ActorID) -> MemberStatus? { records[id]?.status }

    /// Up to `k` alive members with the lowest minimum RTT; members without samples
    /// come last, in random-free id order.
    public func nearest(_ k: Int) -> [MemberInfo] {
        let alive = memberIDs.compactMap { id -> MemberInfo? in
            let r = records[id]!
            return r.status == .alive ? info(id, r) : nil
        }
        let sorted = alive.sorted { a, b in
            switch (a.rttMin, b.rttMin) {
            case let (x?, y?): return x != y ? x < y : a.id < b.id
            case (_?, nil): return true
            case (nil, _?): return false
            case (nil, nil): return a.id < b.id
            }
        }
        return Array(sorted.prefix(max(0, k)))
    }

    /// Number of pending gossip updates (for tests and metrics).
    public var pendingGossipCount: Int { gossip.count }

    /// The timeout a suspicion with `confirmations` independent confirmations gets
    /// in a cluster of `n` nodes (Lifeguard §IV-B).
    public func suspicionTimeout(confirmations: Int, clusterSize n: Int) -> UInt64 {
        let minT = config.suspicionMultiplier * max(1, log10(Double(max(1, n)))) * Double(probeIntervalUs)
        let maxT = max(minT, config.suspicionMaxMultiplier * minT)
        let k = min(config.expectedConfirmations, n - 2)
        guard k >= 1 else { return UInt64(minT) }
        let c = min(confirmations, k)
        let t = maxT - (maxT - minT) * log(Double(c + 1)) / log(Double(k + 1))
        return UInt64(max(minT, t))
    }

    /// How many times each update is piggybacked in a cluster of the current size.
    public var retransmitLimit: Int {
        config.retransmitMultiplier * Int(ceil(log10(Double(liveCount + 2))))
    }

    // MARK: Events

    /// Starts probing and announces to the bootstrap list.
    public mutating func start(now: UInt64) -> [MembershipDirective] {
        var out: [MembershipDirective] = []
        guard !started else { return out }
        started = true
        nextProbeAt = now + UInt64.random(in: 0..<probeIntervalUs, using: &rng)
        nextAnnounceAt = now
        nextReapAt = now + probeIntervalUs * 10
        tickWork(now: now, into: &out)
        return out
    }

    /// Adds bootstrap addresses (e.g. the addresses of members persisted before a
    /// restart); the next announce may use them.
    public mutating func addBootstrap(_ addresses: [String]) {
        for a in addresses where a != myself.address && !bootstrap.contains(a) { bootstrap.append(a) }
    }

    /// Starts from at least `incarnation` (e.g. the persisted one plus one), so this
    /// node's own news supersedes what others remember of a previous run.
    public mutating func restoreIncarnation(atLeast incarnation: UInt64) {
        if incarnation > myself.incarnation { myself.incarnation = incarnation }
    }

    /// Does whatever is due at `now`: probes, timeouts, suspicion expiry, gossip
    /// rounds, announces, removal of long-down members.
    public mutating func onTick(now: UInt64) -> [MembershipDirective] {
        var out: [MembershipDirective] = []
        guard started else { return out }
        tickWork(now: now, into: &out)
        return out
    }

    /// Handles a decoded message. `from` is the transport's peer address, used only
    /// in the refusal; replies go to the address in the message's sender identity.
    public mutating func onMessage(_ message: MembershipMessage, from: String? = nil, now: UInt64)
        -> [MembershipDirective]
    {
        var out: [MembershipDirective] = []
        guard message.clusterID == config.clusterID else {
            out.append(
                .refused(
                    from: from ?? message.sender.address,
                    reason: "cluster id \(message.clusterID) is not ours (\(config.clusterID))"))
            return out
        }
        let sender = message.sender
        guard sender.id != myself.id, started, !hasLeft else { return out }

        // The message itself proves the sender alive at its incarnation.
        let incarnationBefore = myself.incarnation
        apply(
            MemberUpdate(
                id: sender.id, address: sender.address, region: sender.region, incarnation: sender.incarnation,
                status: .alive), origin: sender.id, now: now, into: &out)
        for update in message.updates {
            apply(update, origin: sender.id, now: now, into: &out)
        }
        // The sender holds a stale view (it thinks we are suspect or down, or we think
        // so of it): whatever we send it next carries the correction, so make sure
        // something goes back even when the message asks for no answer.
        var correctSender =
            myself.incarnation != incarnationBefore || senderHoldsOldNewsAboutUs
            || (records[sender.id].map { $0.status != .alive } ?? false)
        senderHoldsOldNewsAboutUs = false

        switch message.body {
        case .ping(let seq):
            out.append(.send(compose(.ack(sequence: seq, target: myself.id), to: sender.id), to: sender.address))
            correctSender = false
        case .ack(let seq, let target):
            if let p = probe, p.sequence == seq, p.target == target {
                // A direct ack is an RTT sample even when it came after the probe went
                // indirect: on a long link that late ack is exactly what must be learned.
                if config.recordProbeRTT, target == sender.id, now >= p.sentAt {
                    records[target]?.rtt.record(.membershipMicros(now - p.sentAt))
                }
                probe = nil
            } else if let relay = relays.removeValue(forKey: seq), relay.target == target {
                out.append(
                    .send(
                        compose(.ack(sequence: relay.originSequence, target: target), to: nil), to: relay.origin))
            }
        case .nack:
            break
        case .pingRequest(let seq, let target, let targetAddress):
            if target == myself.id {
                out.append(.send(compose(.ack(sequence: seq, target: myself.id), to: sender.id), to: sender.address))
                correctSender = false
            } else {
                let mine = takeSequence()
                relays[mine] = Relay(
                    origin: sender.address, originSequence: seq, target: target,
                    deadline: now + waitFor([target], indirectTimeoutUs))
                let address = records[target]?.address ?? targetAddress
                out.append(.send(compose(.ping(sequence: mine), to: target), to: address))
            }
        case .announce:
            for chunk in snapshotMessages() { out.append(.send(chunk, to: sender.address)) }
            correctSender = false
        case .snapshot, .gossip:
            break
        }
        if refutedDown {
            // Whoever thought us down stopped gossiping to us, so we likely missed news:
            // announce, which corrects the sender and brings back its full snapshot.
            refutedDown = false
            out.append(.send(compose(.announce, to: sender.id), to: sender.address))
        } else if correctSender {
            out.append(.send(compose(.gossip, to: sender.id), to: sender.address))
        }
        tickWork(now: now, into: &out)
        return out
    }

    /// How long to wait for an answer that crosses the links to `members`: the
    /// configured floor, or twice the largest smoothed RTT among them if that is
    /// longer. Fixed timeouts shorter than a WAN link's RTT make every probe of a
    /// far member fail (then every far member is suspected, again and again);
    /// Lifeguard's lesson is to let the timing follow what the network does.
    private func waitFor(_ members: [ActorID], _ floorUs: UInt64) -> UInt64 {
        let rtt = members.compactMap { records[$0]?.rtt.smoothed?.membershipMicros }.max() ?? 0
        return max(floorUs, 2 * rtt)
    }

    /// Records an RTT sample for a member (the shell feeds QUIC's estimates).
    public mutating func recordRTT(_ id: ActorID, _ sample: Duration) {
        records[id]?.rtt.record(sample)
    }

    /// Leaves gracefully: declares itself down at a new incarnation and gossips it to
    /// `gossipFanout` members (and to every member if there are few). After this the
    /// instance stays silent.
    public mutating func leave(now: UInt64) -> [MembershipDirective] {
        guard !hasLeft else { return [] }
        hasLeft = true
        nextDeadline = .max
        myself.incarnation += 1
        let me = MemberUpdate(
            id: myself.id, address: myself.address, region: myself.region, incarnation: myself.incarnation,
            status: .down)
        var out: [MembershipDirective] = []
        let targets = randomMembers(max(config.gossipFanout, 8), excluding: nil, allowSuspect: true)
        for id in targets {
            let m = MembershipMessage(clusterID: config.clusterID, sender: myself, body: .gossip, updates: [me])
            out.append(.send(m, to: records[id]!.address))
        }
        return out
    }

    // MARK: Applying knowledge

    private mutating func apply(
        _ update: MemberUpdate, origin: ActorID, now: UInt64, into out: inout [MembershipDirective]
    ) {
        if update.id == myself.id {
            refuteIfNeeded(update, now: now)
            return
        }
        guard var r = records[update.id] else {
            // Unknown members are learnt alive or suspect; a down one is not worth adding.
            guard update.status != .down else { return }
            add(update, now: now, into: &out)
            return
        }
        guard update.supersedes(incarnation: r.incarnation, status: r.status) else {
            // Same suspicion from another node: an independent confirmation.
            if update.status == .suspect, r.status == .suspect, update.incarnation == r.incarnation,
                let by = update.suspectedBy ?? Optional(origin), confirm(update.id, by: by)
            {
                gossip.enqueue(update)
            }
            return
        }
        let previous = r.status
        r.incarnation = update.incarnation
        r.address = update.address
        r.region = update.region
        r.status = update.status
        records[update.id] = r
        setStatus(update.id, from: previous, to: update.status, now: now)
        if update.status == .suspect {
            records[update.id]!.suspicion = Suspicion(start: now, suspectors: [update.suspectedBy ?? origin])
        }
        gossip.enqueue(update)
        if previous != update.status {
            out.append(.membershipChanged(info(update.id, records[update.id]!), from: previous, to: update.status))
            news(now: now)
        }
    }

    private mutating func add(_ update: MemberUpdate, now: UInt64, into out: inout [MembershipDirective]) {
        let id = update.id
        var r = Record(
            address: update.address, region: update.region, incarnation: update.incarnation,
            status: update.status, slot: memberIDs.count)
        if update.status == .suspect {
            r.suspicion = Suspicion(start: now, suspectors: [update.suspectedBy ?? id])
            suspects.insert(id)
        }
        records[id] = r
        memberIDs.append(id)
        liveCount += 1
        // Probe newcomers within this round (memberlist inserts them at a random position).
        let at = Int.random(in: min(probeIndex, probeOrder.count)...probeOrder.count, using: &rng)
        probeOrder.insert(id, at: at)
        gossip.enqueue(update)
        out.append(.membershipChanged(info(id, r), from: nil, to: update.status))
        news(now: now)
    }

    /// Bookkeeping of the sets indexed by status.
    private mutating func setStatus(_ id: ActorID, from: MemberStatus, to: MemberStatus, now: UInt64) {
        guard from != to || to == .suspect else { return }
        if from == .suspect { suspects.remove(id) }
        if from == .down {
            downIDs.remove(id)
            liveCount += 1
        }
        switch to {
        case .alive:
            records[id]!.suspicion = nil
        case .suspect:
            suspects.insert(id)
        case .down:
            records[id]!.suspicion = nil
            records[id]!.downSince = now
            downIDs.insert(id)
            recentlyDown.append((id, now))
            liveCount -= 1
            if probe?.target == id { probe = nil }
        }
    }

    /// Adds an independent suspector; true if it is new.
    private mutating func confirm(_ id: ActorID, by: ActorID) -> Bool {
        guard var s = records[id]?.suspicion, !s.suspectors.contains(by),
            s.suspectors.count <= config.expectedConfirmations
        else { return false }
        s.suspectors.append(by)
        records[id]!.suspicion = s
        return true
    }

    private mutating func refuteIfNeeded(_ update: MemberUpdate, now: UInt64) {
        guard !hasLeft else { return }
        let stale =
            update.status == .alive ? update.incarnation > myself.incarnation : update.incarnation >= myself.incarnation
        guard stale else {
            // Old news about us (we refuted it already): the sender still believes it.
            if update.status != .alive { senderHoldsOldNewsAboutUs = true }
            return
        }
        if update.status == .down { refutedDown = true }
        myself.incarnation = update.incarnation + 1
        gossip.enqueue(
            MemberUpdate(
                id: myself.id, address: myself.address, region: myself.region, incarnation: myself.incarnation,
                status: .alive))
        news(now: now)
    }

    /// Something changed: gossip soon, but rounds at least `eagerGossipSpacing` apart.
    private mutating func news(now: UInt64) {
        let at = max(now, lastGossipAt + eagerSpacingUs)
        if at < nextGossipAt { nextGossipAt = at }
    }

    // MARK: Timers

    private mutating func tickWork(now: UInt64, into out: inout [MembershipDirective]) {
        guard !hasLeft else { return }
        expireRelays(now: now, into: &out)
        expireProbe(now: now, into: &out)
        expireSuspicions(now: now, into: &out)
        // A probe still waiting for its indirect acks delays the next one (no overlap).
        if probe == nil, now >= nextProbeAt {
            startProbe(now: now, into: &out)
            gossipToTheDead(now: now, into: &out)
            nextProbeAt += probeIntervalUs
            if nextProbeAt <= now { nextProbeAt = now + probeIntervalUs }
        }
        if now >= nextAnnounceAt {
            announce(into: &out)
            if liveCount == 0 {
                nextAnnounceAt = now + rejoinIntervalUs
            } else {
                // Jitter ±25 % so a cluster started at once does not announce in step.
                let j = announceIntervalUs / 4
                nextAnnounceAt = now + announceIntervalUs - j + UInt64.random(in: 0...(2 * j), using: &rng)
            }
        }
        if now >= nextGossipAt {
            gossipRound(into: &out)
            lastGossipAt = now
            nextGossipAt = gossip.isEmpty ? .max : now + gossipIntervalUs
        }
        if now >= nextReapAt {
            reap(now: now, into: &out)
            nextReapAt = now + max(probeIntervalUs * 10, downRemovalUs / 100)
        }
        // A while alone: ask the bootstrap list sooner.
        if liveCount == 0, nextAnnounceAt > now + rejoinIntervalUs { nextAnnounceAt = now + rejoinIntervalUs }

        var deadline = min(probe?.deadline ?? nextProbeAt, nextAnnounceAt, nextGossipAt, nextReapAt)
        for r in relays.values { deadline = min(deadline, r.deadline) }
        if !suspects.isEmpty {
            let n = liveCount + 1
            for id in suspects {
                if let s = records[id]?.suspicion {
                    deadline = min(deadline, s.start + suspicionTimeout(confirmations: s.suspectors.count - 1, clusterSize: n))
                }
            }
        }
        nextDeadline = deadline
        if deadline < scheduledTickAt || scheduledTickAt <= now {
            scheduledTickAt = deadline
            out.append(.scheduleTick(at: deadline))
        }
    }

    private mutating func startProbe(now: UInt64, into out: inout [MembershipDirective]) {
        guard probe == nil, let target = nextProbeTarget() else { return }
        let seq = takeSequence()
        probe = Probe(target: target, sequence: seq, sentAt: now, indirect: false, deadline: now + waitFor([target], probeTimeoutUs))
        out.append(.send(compose(.ping(sequence: seq), to: target), to: records[target]!.address))
    }

    private mutating func expireProbe(now: UInt64, into out: inout [MembershipDirective]) {
        guard var p = probe, now >= p.deadline else { return }
        guard let target = records[p.target], target.status != .down else {
            probe = nil
            return
        }
        if !p.indirect {
            // SWIM §3.1: ask k others; the ack comes back with our sequence number.
            p.indirect = true
            let vias = randomMembers(config.indirectProbes, excluding: p.target, allowSuspect: false)
            // Through a relay the ack travels our RTT to it plus its RTT to the target.
            p.deadline = now + waitFor(vias, 0) + waitFor([p.target], indirectTimeoutUs)
            probe = p
            for via in vias {
                let body = MembershipMessage.Body.pingRequest(
                    sequence: p.sequence, target: p.target, targetAddress: target.address)
                out.append(.send(compose(body, to: via), to: records[via]!.address))
            }
            return
        }
        probe = nil
        suspect(p.target, now: now, into: &out)
    }

    /// Our own probe failed: raise or confirm a suspicion, and tell the member so it
    /// can refute at once (Lifeguard's "buddy system").
    private mutating func suspect(_ id: ActorID, now: UInt64, into out: inout [MembershipDirective]) {
        guard let r = records[id] else { return }
        let update = MemberUpdate(
            id: id, address: r.address, region: r.region, incarnation: r.incarnation, status: .suspect,
            suspectedBy: myself.id)
        if r.status == .alive {
            apply(update, origin: myself.id, now: now, into: &out)
        } else if r.status == .suspect, confirm(id, by: myself.id) {
            gossip.enqueue(update)
            news(now: now)
        }
        if records[id]?.status == .suspect {
            out.append(.send(compose(.gossip, to: id), to: r.address))
        }
    }

    /// Now and then, tell a recently-down member that it is down: if it is in fact
    /// alive (a healed partition, a long pause) it refutes at once instead of waiting
    /// for an announce (memberlist's "gossip to the dead").
    private mutating func gossipToTheDead(now: UInt64, into out: inout [MembershipDirective]) {
        guard !recentlyDown.isEmpty else { return }
        recentlyDown.removeAll { now >= $0.since + deadGossipUs || records[$0.id]?.status != .down }
        guard !recentlyDown.isEmpty, UInt64.random(in: 0..<4, using: &rng) == 0 else { return }
        let id = recentlyDown[Int.random(in: 0..<recentlyDown.count, using: &rng)].id
        out.append(.send(compose(.gossip, to: id), to: records[id]!.address))
    }

    private mutating func expireSuspicions(now: UInt64, into out: inout [MembershipDirective]) {
        guard !suspects.isEmpty else { return }
        let n = liveCount + 1
        var expired: [ActorID] = []
        for id in suspects {
            guard let s = records[id]?.suspicion else { continue }
            if now >= s.start + suspicionTimeout(confirmations: s.suspectors.count - 1, clusterSize: n) {
                expired.append(id)
            }
        }
        for id in expired.sorted() {
            let r = records[id]!
            apply(
                MemberUpdate(
                    id: id, address: r.address, region: r.region, incarnation: r.incarnation, status: .down),
                origin: myself.id, now: now, into: &out)
        }
    }

    private mutating func expireRelays(now: UInt64, into out: inout [MembershipDirective]) {
        guard !relays.isEmpty else { return }
        let expired = relays.filter { now >= $0.value.deadline }
        for (seq, relay) in expired.sorted(by: { $0.key < $1.key }) {
            relays[seq] = nil
            out.append(.send(compose(.nack(sequence: relay.originSequence), to: nil), to: relay.origin))
        }
    }

    private mutating func gossipRound(into out: inout [MembershipDirective]) {
        guard !gossip.isEmpty else { return }
        for id in randomMembers(config.gossipFanout, excluding: nil, allowSuspect: true) {
            let m = compose(.gossip, to: id)
            if m.updates.isEmpty { break }
            out.append(.send(m, to: records[id]!.address))
        }
    }

    private mutating func announce(into out: inout [MembershipDirective]) {
        var targets: [String] = []
        if liveCount == 0 {
            var pool = bootstrap
            pool.shuffle(using: &rng)
            targets = Array(pool.prefix(config.announceFanout))
        } else {
            // Half the time a bootstrap address (reaches a partition we lost), else a member.
            if !bootstrap.isEmpty, Bool.random(using: &rng) {
                targets = [bootstrap[Int.random(in: 0..<bootstrap.count, using: &rng)]]
            } else if let id = randomMembers(1, excluding: nil, allowSuspect: false).first {
                targets = [records[id]!.address]
            }
        }
        for address in targets {
            out.append(.send(compose(.announce, to: nil), to: address))
        }
    }

    private mutating func reap(now: UInt64, into out: inout [MembershipDirective]) {
        guard !downIDs.isEmpty else { return }
        let old = downIDs.filter { now >= records[$0]!.downSince + downRemovalUs }
        for id in old.sorted() {
            let r = records[id]!
            downIDs.remove(id)
            let last = memberIDs.removeLast()
            if last != id {
                memberIDs[r.slot] = last
                records[last]!.slot = r.slot
            }
            records[id] = nil
            gossip.remove(id)
            out.append(.membershipChanged(info(id, r), from: .down, to: nil))
        }
    }

    // MARK: Choosing members

    private mutating func nextProbeTarget() -> ActorID? {
        for pass in 0..<2 {
            while probeIndex < probeOrder.count {
                let id = probeOrder[probeIndex]
                probeIndex += 1
                if let r = records[id], r.status != .down { return id }
            }
            guard pass == 0 else { break }
            probeOrder = memberIDs.filter { records[$0]!.status != .down }
            probeOrder.shuffle(using: &rng)
            probeIndex = 0
        }
        return nil
    }

    /// Up to `k` distinct random members that are alive (or suspect if allowed).
    private mutating func randomMembers(_ k: Int, excluding: ActorID?, allowSuspect: Bool) -> [ActorID] {
        guard k > 0, !memberIDs.isEmpty else { return [] }
        func eligible(_ id: ActorID) -> Bool {
            guard id != excluding, let r = records[id] else { return false }
            return r.status == .alive || (allowSuspect && r.status == .suspect)
        }
        if memberIDs.count <= 4 * k + 8 {
            var pool = memberIDs.filter(eligible)
            pool.shuffle(using: &rng)
            return Array(pool.prefix(k))
        }
        var chosen: [ActorID] = []
        var attempts = 0
        while chosen.count < k, attempts < 8 * k + 16 {
            attempts += 1
            let id = memberIDs[Int.random(in: 0..<memberIDs.count, using: &rng)]
            if eligible(id), !chosen.contains(id) { chosen.append(id) }
        }
        return chosen
    }

    // MARK: Messages

    private mutating func takeSequence() -> UInt32 {
        nextSequence &+= 1
        return nextSequence
    }

    /// A message for `body` with as much gossip as fits. A member we hold suspect or
    /// down always hears about it first, so it can refute (Lifeguard's buddy system).
    private mutating func compose(_ body: MembershipMessage.Body, to recipient: ActorID?) -> MembershipMessage {
        var message = MembershipMessage(clusterID: config.clusterID, sender: myself, body: body)
        var budget = config.maxMessageSize - MembershipCodec.headerSize(sender: myself, body: body)
        var skip: ActorID?
        if let id = recipient, let r = records[id], r.status != .alive {
            let u = MemberUpdate(
                id: id, address: r.address, region: r.region, incarnation: r.incarnation, status: r.status,
                suspectedBy: r.status == .suspect ? r.suspicion?.suspectors.first : nil)
            let size = MembershipCodec.size(of: u)
            if size <= budget {
                message.updates.append(u)
                budget -= size
                skip = id
            }
        }
        message.updates += gossip.select(
            budget: budget, maxCount: 255 - message.updates.count, limit: retransmitLimit, skip: skip)
        return message
    }

    /// The whole membership (this node travels as the sender) in messages that fit.
    private func snapshotMessages() -> [MembershipMessage] {
        let budget = config.maxMessageSize - MembershipCodec.headerSize(sender: myself, body: .snapshot)
        var messages: [MembershipMessage] = []
        var current = MembershipMessage(clusterID: config.clusterID, sender: myself, body: .snapshot)
        var used = 0
        for id in memberIDs {
            let r = records[id]!
            let u = MemberUpdate(
                id: id, address: r.address, region: r.region, incarnation: r.incarnation, status: r.status,
                suspectedBy: r.status == .suspect ? r.suspicion?.suspectors.first : nil)
            let size = MembershipCodec.size(of: u)
            if used + size > budget || current.updates.count == 255 {
                messages.append(current)
                current.updates = []
                used = 0
            }
            current.updates.append(u)
            used += size
        }
        messages.append(current)
        return messages
    }

    private func info(_ id: ActorID, _ r: Record) -> MemberInfo {
        MemberInfo(
            id: id, address: r.address, region: r.region, status: r.status, incarnation: r.incarnation,
            rttMin: r.rtt.min, rttSmoothed: r.rtt.smoothed)
    }
}
