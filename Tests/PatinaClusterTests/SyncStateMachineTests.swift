@testable import PatinaCluster
import PatinaCore
import Testing

/// Need computation and sync scheduling, pure and instant.
@Suite struct SyncStateMachineTests {
    let a = clusterTestActor(1)
    let b = clusterTestActor(2)
    let c = clusterTestActor(3)

    // MARK: needs(local:remote:)

    @Test func needsVersionsAboveTheHead() {
        let local = SyncState(actor: a, heads: [b: 10])
        let remote = SyncState(actor: b, heads: [b: 25, c: 3])
        #expect(SyncState.needs(local: local, remote: remote) == [
            .full(actor: b, versions: 11...25), .full(actor: c, versions: 1...3),
        ].sorted { $0.actor < $1.actor })
        // Nothing when level or ahead.
        #expect(SyncState.needs(local: remote, remote: local).isEmpty)
    }

    @Test func needsGapsOnlyWhereTheRemoteHoldsThem() {
        let local = SyncState(actor: a, heads: [b: 100], need: [b: [5...9, 40...60]])
        // The remote lacks 50...55 itself and holds 58 only partially.
        let remote = SyncState(actor: c, heads: [b: 100], need: [b: [50...55]],
                               partials: [b: [58: PartialVersion(seqs: [0...1], lastSeq: 4)]])
        #expect(SyncState.needs(local: local, remote: remote) == [
            .full(actor: b, versions: 5...9), .full(actor: b, versions: 40...49), .full(actor: b, versions: 56...57),
            .full(actor: b, versions: 59...60),
        ])
    }

    @Test func needsMissingSeqsOfPartials() {
        let local = SyncState(actor: a, heads: [b: 8],
                              partials: [b: [8: PartialVersion(seqs: [0...9, 20...29], lastSeq: 49),
                                             3: PartialVersion(seqs: [1...1], lastSeq: 2)]])
        let remote = SyncState(actor: b, heads: [b: 12])
        #expect(SyncState.needs(local: local, remote: remote) == [
            .partial(actor: b, version: 3, seqs: [0...0, 2...2]),
            .partial(actor: b, version: 8, seqs: [10...19, 30...49]),
            .full(actor: b, versions: 9...12),
        ])
        // A remote that itself holds version 8 only partially cannot serve it.
        let partialRemote = SyncState(actor: c, heads: [b: 8], partials: [b: [8: PartialVersion(seqs: [0...49], lastSeq: 60)]])
        #expect(SyncState.needs(local: local, remote: partialRemote) == [.partial(actor: b, version: 3, seqs: [0...0, 2...2])])
    }

    @Test func hostileStatesDoNotTrap() {
        let local = SyncState(actor: a, heads: [b: Int64.max, c: -5], need: [b: [Int64.min...Int64.max]],
                              partials: [b: [Int64.max: PartialVersion(seqs: [Int64.min...0], lastSeq: Int64.min)]])
        let remote = SyncState(actor: b, heads: [b: Int64.max, c: Int64.max], need: [c: [1...Int64.max]])
        _ = SyncState.needs(local: local, remote: remote)
        _ = SyncState.needs(local: remote, remote: local)
        #expect(local.versionsBehind(remote.heads) == Int64.max)
    }

    // MARK: Scheduling

    func machine(members: Int, seed: UInt64 = 1, configure: (inout SyncConfig) -> Void = { _ in }) -> SyncStateMachine {
        var config = SyncConfig()
        configure(&config)
        var m = SyncStateMachine(config: config, rng: SplitMix64(seed: seed))
        m.membersChanged((1...max(1, members)).prefix(members).map { SyncPeer(id: "p\($0)", rtt: .milliseconds($0)) })
        return m
    }

    /// Runs one round at `now`: every session ends with `foundMissing`; returns
    /// the delay scheduled for the next round and the peers synced.
    func round(_ m: inout SyncStateMachine, now: Duration, foundMissing: Bool, heads: [ActorID: Int64] = [:])
        -> (next: Duration?, peers: [String])
    {
        let d = m.tick(now: now, localHeads: [:])
        var peers: [String] = []
        var next: Duration?
        for directive in d {
            if case .startSession(let id, let peer) = directive {
                peers.append(peer)
                for e in m.sessionCompleted(id, now: now, remoteHeads: heads, foundMissing: foundMissing) {
                    if case .scheduleTick(let after) = e { next = after }
                }
            }
        }
        return (next, peers)
    }

    @Test func backsOffWhileIdleAndResetsWhenSomethingWasMissing() {
        var m = machine(members: 5) { $0.jitter = 0 }
        #expect(m.start(now: .zero) == [.scheduleTick(after: .seconds(1))])
        #expect(m.tick(now: .milliseconds(999), localHeads: [:]).isEmpty, "not due yet")
        var now = Duration.seconds(1)
        var delays: [Duration] = []
        for _ in 0..<6 {
            let r = round(&m, now: now, foundMissing: false)
            delays.append(r.next!)
            now += r.next!
        }
        #expect(delays == [.seconds(2), .seconds(4), .seconds(8), .seconds(15), .seconds(15), .seconds(15)])
        let r = round(&m, now: now, foundMissing: true)
        #expect(r.next == .seconds(1))
        now += .seconds(1)
        #expect(round(&m, now: now, foundMissing: false).next == .seconds(2))
        // A failed session counts as finding nothing.
        now += .seconds(2)
        let d = m.tick(now: now, localHeads: [:])
        guard case .startSession(let id, _)? = d.first else {
            Issue.record("no session started")
            return
        }
        #expect(m.sessionFailed(id, now: now) == [.scheduleTick(after: .seconds(4))])
    }

    @Test func jitterSpreadsWaitsWithinBounds() {
        var waits: Set<Duration> = []
        for seed in 1...50 as ClosedRange<UInt64> {
            var m = machine(members: 3, seed: seed)
            guard case .scheduleTick(let w)? = m.start(now: .zero).first else { continue }
            #expect(w >= .milliseconds(800) && w <= .milliseconds(1200))
            waits.insert(w)
        }
        #expect(waits.count > 40)
    }

    @Test func peerCountScalesWithMembership() {
        for (members, expected) in [(1, 1), (5, 1), (150, 1), (250, 2), (1000, 3), (5000, 3)] {
            var m = machine(members: members) { $0.jitter = 0 }
            _ = m.start(now: .zero)
            let started = m.tick(now: .seconds(1), localHeads: [:]).filter {
                if case .startSession = $0 { true } else { false }
            }
            #expect(started.count == expected, "\(members) members")
        }
    }

    @Test func prefersPeersAheadThenLeastRecentlySyncedThenNearest() {
        var m = machine(members: 5) { $0.jitter = 0 }
        _ = m.start(now: .zero)
        // Never synced, equal heads: nearest first.
        #expect(round(&m, now: .seconds(1), foundMissing: false).peers == ["p1"])
        // p1 was synced; the others never: nearest of those.
        #expect(round(&m, now: .seconds(3), foundMissing: false).peers == ["p2"])
        // p5 advertised heads ahead of ours: it wins over everything.
        m.observeHeads([a: 50], of: "p5")
        #expect(round(&m, now: .seconds(7), foundMissing: false).peers == ["p5"])
        // Now p3, p4 were never synced.
        #expect(round(&m, now: .seconds(15), foundMissing: false).peers == ["p3"])
        #expect(round(&m, now: .seconds(30), foundMissing: false).peers == ["p4"])
        // All synced once: least recently synced first (p1).
        #expect(round(&m, now: .seconds(45), foundMissing: false).peers == ["p1"])
    }

    @Test func servesAtMostTheLimitAndAnswersBusy() {
        var m = machine(members: 2) { $0.maxServedSessions = 2 }
        let first = m.acceptIncoming(), second = m.acceptIncoming(), third = m.acceptIncoming()
        #expect(first && second && !third)
        #expect(m.rejectedBusy == 1)
        m.servingEnded()
        let fourth = m.acceptIncoming()
        #expect(fourth)
        #expect(m.servedSessions == 2)
    }

    @Test func clientSessionsAreLimitedAndTimedOut() {
        var m = machine(members: 1000) {
            $0.jitter = 0
            $0.maxClientSessions = 2
            $0.sessionTimeout = .seconds(5)
        }
        _ = m.start(now: .zero)
        let d = m.tick(now: .seconds(1), localHeads: [:])
        let ids: [UInt64] = d.compactMap { if case .startSession(let id, _) = $0 { id } else { nil } }
        #expect(ids.count == 2, "3 wanted, 2 client slots")
        #expect(m.clientSessions == 2)
        // No new round while one runs; timeouts cancel the stuck sessions.
        #expect(m.tick(now: .seconds(4), localHeads: [:]).isEmpty)
        let later = m.tick(now: .seconds(6), localHeads: [:])
        #expect(later.filter { if case .cancelSession = $0 { true } else { false } }.count == 2)
        #expect(later.contains(.scheduleTick(after: .seconds(2))))
        #expect(m.clientSessions == 0)
    }
}
