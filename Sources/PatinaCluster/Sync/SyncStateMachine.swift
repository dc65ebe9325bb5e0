import PatinaCore

/// A peer as sync sees it.
public struct SyncPeer: Hashable, Sendable {
    public var id: String
    public var rtt: Duration?

    public init(id: String, rtt: Duration? = nil) {
        self.id = id
        self.rtt = rtt
    }
}

public struct SyncConfig: Sendable {
    /// Round interval while rounds find something missing.
    public var minInterval: Duration = .seconds(1)
    /// The interval doubles after each round that found nothing, up to this.
    public var maxInterval: Duration = .seconds(15)
    /// Each wait is scaled by a uniform factor in `1 ± jitter`.
    public var jitter = 0.2
    /// Peers per round: `clamp(members / membersPerPeer, minPeers, maxPeers)`.
    public var membersPerPeer = 100
    public var minPeers = 1
    public var maxPeers = 3
    /// Sessions this node serves at once; more get `syncBusy`.
    public var maxServedSessions = 3
    /// Sessions this node runs as a client at once.
    public var maxClientSessions = 3
    /// A client session still running after this is cancelled.
    public var sessionTimeout: Duration = .seconds(60)
    /// Any single read or write of a session that takes longer fails it.
    public var ioTimeout: Duration = .seconds(10)
    /// Bounds of one `syncChangesets` frame.
    public var maxChangesPerFrame = 1000
    public var maxBytesPerFrame = 256 * 1024
    /// Versions read from the store per call while serving.
    public var versionsPerRead: Int64 = 100
    /// A server leaves out changes committed (by the origin's hybrid clock) less
    /// than this long ago: broadcast is still delivering them. Pulling them too
    /// merged them twice; in `bench regions` at 300 writes/s that was one merge
    /// in ten. A later round brings them if broadcast did not (rounds run every
    /// second while they find something). Timestamps more than this far ahead
    /// of the server's clock are served at once (that origin's clock is off).
    /// Zero: serve everything.
    public var inFlightGrace: Duration = .seconds(2)

    /// `inFlightGrace` in whole milliseconds, at most a day (beyond that
    /// nothing is in flight, and sums with a clock reading cannot overflow).
    var inFlightGraceMilliseconds: UInt64 { min(inFlightGrace, .seconds(86_400)).membershipMicros / 1000 }

    public init() {}
}

public enum SyncDirective: Hashable, Sendable {
    /// Open a session to `peer` and pull what this node lacks. Report the end
    /// with ``SyncStateMachine/sessionCompleted(_:now:remoteHeads:foundMissing:)``
    /// or ``SyncStateMachine/sessionFailed(_:now:)``.
    case startSession(id: UInt64, peer: String)
    /// The session ran past its timeout: abandon it (it has been counted as failed).
    case cancelSession(id: UInt64)
    /// Call ``SyncStateMachine/tick(now:localHeads:)`` after this long.
    case scheduleTick(after: Duration)
}

/// Anti-entropy scheduling as a value: when to sync, with whom, how many
/// sessions at once. Pure: time comes in as `now`, randomness from the seeded
/// generator.
///
/// Rounds run every `minInterval` while they find something missing; each
/// round that finds nothing doubles the interval up to `maxInterval` (1, 2, 4,
/// 8, 15 s by default), and a round that finds something resets it. Every wait
/// is jittered so nodes started together drift apart. Peers are chosen by how
/// far ahead they were when last heard of, then by the oldest sync, then by RTT.
public struct SyncStateMachine: Sendable {
    struct PeerInfo: Sendable {
        var rtt: Duration?
        var lastSynced: Duration?
        var heads: [ActorID: Int64] = [:]
    }

    struct Session: Sendable {
        var peer: String
        var startedAt: Duration
    }

    public var config: SyncConfig
    private var rng: SplitMix64
    private var peers: [String: PeerInfo] = [:]
    private var sessions: [UInt64: Session] = [:]
    private var nextSessionID: UInt64 = 0
    private var roundInProgress = false
    private var roundFoundMissing = false
    public private(set) var interval: Duration
    public private(set) var nextRoundAt: Duration?
    public private(set) var servedSessions = 0
    public private(set) var rejectedBusy = 0
    public private(set) var rounds = 0

    public init(config: SyncConfig = SyncConfig(), rng: SplitMix64) {
        self.config = config
        self.rng = rng
        self.interval = config.minInterval
    }

    public var clientSessions: Int { sessions.count }
    public var peerIDs: [String] { peers.keys.sorted() }

    /// Schedules the first round, one jittered minimum interval from `now`.
    public mutating func start(now: Duration) -> [SyncDirective] {
        interval = config.minInterval
        return scheduleNext(now: now)
    }

    public mutating func membersChanged(_ members: [SyncPeer]) {
        var next: [String: PeerInfo] = [:]
        for m in members {
            var info = peers[m.id] ?? PeerInfo()
            info.rtt = m.rtt
            next[m.id] = info
        }
        peers = next
    }

    /// Heads a peer advertised (in a sync reply, or learnt elsewhere).
    public mutating func observeHeads(_ heads: [ActorID: Int64], of peer: String) {
        peers[peer]?.heads = heads
    }

    /// Cancels timed-out sessions and starts a round when one is due.
    public mutating func tick(now: Duration, localHeads: [ActorID: Int64]) -> [SyncDirective] {
        var directives: [SyncDirective] = []
        for (id, s) in sessions.sorted(by: { $0.key < $1.key }) where now - s.startedAt >= config.sessionTimeout {
            directives.append(.cancelSession(id: id))
            directives += sessionFailed(id, now: now)
        }
        guard !roundInProgress, let at = nextRoundAt, now >= at else { return directives }
        nextRoundAt = nil
        rounds += 1
        let chosen = choosePeers(localHeads: localHeads)
        guard !chosen.isEmpty else {
            // Nobody to sync with: back off as after an empty round.
            interval = min(interval * 2, config.maxInterval)
            return directives + scheduleNext(now: now)
        }
        roundInProgress = true
        roundFoundMissing = false
        for peer in chosen {
            nextSessionID += 1
            sessions[nextSessionID] = Session(peer: peer, startedAt: now)
            directives.append(.startSession(id: nextSessionID, peer: peer))
        }
        return directives
    }

    /// A client session ended normally. `foundMissing`: the peer had something
    /// this node lacked.
    public mutating func sessionCompleted(_ id: UInt64, now: Duration, remoteHeads: [ActorID: Int64]?,
                                          foundMissing: Bool) -> [SyncDirective] {
        guard let s = sessions.removeValue(forKey: id) else { return [] }
        peers[s.peer]?.lastSynced = now
        if let remoteHeads { peers[s.peer]?.heads = remoteHeads }
        if foundMissing { roundFoundMissing = true }
        return endOfSession(now: now)
    }

    /// A client session failed (error, busy peer, timeout).
    public mutating func sessionFailed(_ id: UInt64, now: Duration) -> [SyncDirective] {
        guard let s = sessions.removeValue(forKey: id) else { return [] }
        peers[s.peer]?.lastSynced = now
        return endOfSession(now: now)
    }

    /// A peer asks to be served: true if under the limit (then call
    /// ``servingEnded()`` when done), false to answer `syncBusy`.
    public mutating func acceptIncoming() -> Bool {
        guard servedSessions < config.maxServedSessions else {
            rejectedBusy += 1
            return false
        }
        servedSessions += 1
        return true
    }

    public mutating func servingEnded() {
        servedSessions = max(0, servedSessions - 1)
    }

    // MARK: Internals

    private mutating func endOfSession(now: Duration) -> [SyncDirective] {
        guard roundInProgress, sessions.isEmpty else { return [] }
        roundInProgress = false
        interval = roundFoundMissing ? config.minInterval : min(interval * 2, config.maxInterval)
        return scheduleNext(now: now)
    }

    private mutating func scheduleNext(now: Duration) -> [SyncDirective] {
        let u = Double(rng.next() >> 11) / Double(1 << 53) * 2 - 1  // uniform in [-1, 1)
        let wait = interval * (1 + config.jitter * u)
        nextRoundAt = now + wait
        return [.scheduleTick(after: wait)]
    }

    /// `clamp(members / membersPerPeer, minPeers, maxPeers)` peers, limited by
    /// free client slots: ahead first, then least recently synced, then nearest.
    mutating func choosePeers(localHeads: [ActorID: Int64]) -> [String] {
        let wanted = min(max(peers.count / max(1, config.membersPerPeer), config.minPeers), config.maxPeers)
        let count = min(wanted, config.maxClientSessions - sessions.count, peers.count)
        guard count > 0 else { return [] }
        let local = SyncState(actor: ActorID(bytes: [UInt8](repeating: 0, count: 16))!, heads: localHeads)
        let busy = Set(sessions.values.map(\.peer))
        var scored: [(id: String, ahead: Int64, last: Duration?, rtt: Duration?, tie: UInt64)] = []
        for (id, info) in peers.sorted(by: { $0.key < $1.key }) where !busy.contains(id) {
            scored.append((id, local.versionsBehind(info.heads), info.lastSynced, info.rtt, rng.next()))
        }
        let sorted = scored.sorted { a, b in
            if a.ahead != b.ahead { return a.ahead > b.ahead }
            switch (a.last, b.last) {
            case (nil, .some): return true
            case (.some, nil): return false
            case (let x?, let y?) where x != y: return x < y
            default: break
            }
            switch (a.rtt, b.rtt) {
            case (.some, nil): return true
            case (nil, .some): return false
            case (let x?, let y?) where x != y: return x < y
            default: break
            }
            return a.tie < b.tie
        }
        return sorted.prefix(count).map(\.id)
    }
}
