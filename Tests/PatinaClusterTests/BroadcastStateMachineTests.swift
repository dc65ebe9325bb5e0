@testable import PatinaCluster
import PatinaCore
import Testing

/// The broadcast state machine alone, driven synchronously with a manual clock.
@Suite struct BroadcastStateMachineTests {
    let me = clusterTestActor(1)
    let other = clusterTestActor(2)

    func machine(_ members: [BroadcastMember], seed: UInt64 = 1, configure: (inout BroadcastConfig) -> Void = { _ in })
        -> BroadcastStateMachine
    {
        var config = BroadcastConfig()
        configure(&config)
        var m = BroadcastStateMachine(localActor: me, config: config, rng: SplitMix64(seed: seed))
        _ = m.membersChanged(members)
        return m
    }

    @Test func localCommitGoesOutAtOnceToRing0AndRandomFanout() {
        var m = machine(membersWithRTT(20))
        // Ring 0: the 3 nearest plus everyone under 6 ms → m1…m5.
        #expect(m.ring0Members == ["m1", "m2", "m3", "m4", "m5"])
        let d = m.localCommit([makeChangeset(me, version: 1)], now: .zero)
        let peers = d.sends.map(\.peer)
        #expect(Set(peers).count == peers.count, "one send per peer")
        #expect(Set(["m1", "m2", "m3", "m4", "m5"]).isSubset(of: Set(peers)))
        #expect(peers.count == 5 + m.fanout)
        #expect(d.tickDelays == [.milliseconds(100)])
        #expect(d.applied.isEmpty, "local changes are not applied again")

        // Different seeds pick different random peers outside ring 0.
        var choices: Set<Set<String>> = []
        for seed in 1...10 as ClosedRange<UInt64> {
            var mm = machine(membersWithRTT(20), seed: seed)
            let s = mm.localCommit([makeChangeset(me, version: 1)], now: .zero).sends.map(\.peer)
            choices.insert(Set(s).subtracting(["m1", "m2", "m3", "m4", "m5"]))
        }
        #expect(choices.count > 3)
    }

    @Test func unknownRTTsStillGetRing0ByNearest() {
        let members = [BroadcastMember(id: "far", rtt: .milliseconds(80)), BroadcastMember(id: "x"),
                       BroadcastMember(id: "near", rtt: .milliseconds(30))]
        let m = machine(members) { $0.ring0Nearest = 1 }
        #expect(m.ring0Members == ["near"])
    }

    @Test func receivedIsAppliedAndRelayedOnceNeverBackToSender() {
        var m = machine(membersWithRTT(30))
        let cs = makeChangeset(other, version: 4)
        let d = m.received([cs], from: "m7", now: .zero)
        #expect(d.applied == [cs])
        #expect(!d.sends.isEmpty)
        #expect(!d.sends.contains { $0.peer == "m7" })
        #expect(d.sends.allSatisfy { $0.changesets == [cs] })

        let again = m.received([cs], from: "m9", now: .milliseconds(1))
        #expect(again.applied.isEmpty && again.sends.isEmpty)
        #expect(m.metrics.duplicates == 1)

        // Our own changesets coming back are duplicates too.
        let own = m.received([makeChangeset(me, version: 1)], from: "m3", now: .milliseconds(2))
        #expect(own.applied.isEmpty && own.sends.isEmpty)
    }

    @Test func seenMemoryIsBounded() {
        var m = machine(membersWithRTT(5)) { $0.seenCapacity = 10 }
        for v in 1...30 { _ = m.received([makeChangeset(other, version: Int64(v))], from: "m1", now: .zero) }
        // Version 30 is remembered, version 1 was forgotten.
        #expect(m.received([makeChangeset(other, version: 30)], from: "m2", now: .zero).applied.isEmpty)
        #expect(m.received([makeChangeset(other, version: 1)], from: "m2", now: .zero).applied.count == 1)
    }

    @Test func retransmissionIsBoundedWithGrowingDelays() {
        var m = machine(membersWithRTT(200)) { $0.ring0Nearest = 0; $0.ring0Latency = .zero }
        let limit = m.maxTransmissions
        #expect(limit == 7)  // ceil(3 · log10(201))
        var now = Duration.zero
        var d = m.localCommit([makeChangeset(me, version: 1)], now: now)
        var sendTimes: [Duration] = [now]
        var receivers: [String] = []
        var ticks = 0
        while true {
            receivers += d.sends.map(\.peer)
            for s in d.sends { _ = m.sendCompleted(s.peer) }
            guard let delay = d.tickDelays.first else { break }
            now += delay
            ticks += 1
            d = m.tick(now: now)
            if !d.sends.isEmpty { sendTimes.append(now) }
            #expect(ticks < 50)
            if ticks >= 50 { break }
        }
        #expect(sendTimes.count == limit)
        // 100 ms × send count: 100, 200, 300 … between consecutive sends.
        let gaps = zip(sendTimes.dropFirst(), sendTimes).map { $0 - $1 }
        #expect(gaps == (1..<limit).map { .milliseconds(100 * $0) })
        #expect(Set(receivers).count == receivers.count, "every transmission picks fresh targets")
        #expect(receivers.count == limit * m.fanout)
        #expect(m.pendingCount == 0)
    }

    @Test func retransmissionStopsOnceCopiesComeBack() {
        var m = machine(membersWithRTT(200)) { $0.ring0Nearest = 0; $0.ring0Latency = .zero; $0.stopAfterDuplicates = 2 }
        let relayed = makeChangeset(other, version: 1)
        var d = m.received([relayed], from: "m7", now: .zero)
        for s in d.sends { _ = m.sendCompleted(s.peer) }
        #expect(m.pendingCount == 1)
        // One copy back: still retransmitted.
        _ = m.received([relayed], from: "m8", now: .milliseconds(10))
        #expect(m.pendingCount == 1)
        d = m.tick(now: .milliseconds(100))
        #expect(!d.sends.isEmpty)
        for s in d.sends { _ = m.sendCompleted(s.peer) }
        // A second copy: the rumour is known around here; no more sends.
        _ = m.received([relayed], from: "m9", now: .milliseconds(150))
        #expect(m.pendingCount == 0)
        #expect(m.tick(now: .seconds(10)).sends.isEmpty)
        // The same for a local change whose copies come back through relays.
        let mine = makeChangeset(me, version: 1)
        d = m.localCommit([mine], now: .seconds(11))
        for s in d.sends { _ = m.sendCompleted(s.peer) }
        _ = m.received([mine], from: "m3", now: .seconds(11))
        _ = m.received([mine], from: "m4", now: .seconds(11))
        #expect(m.pendingCount == 0)
    }

    @Test func smallChangesetsBatchOnlyWhileASendIsInFlight() {
        var m = machine([BroadcastMember(id: "p", rtt: .milliseconds(1))]) { $0.maxTransmissions = 1 }
        let a = makeChangeset(me, version: 1), b = makeChangeset(me, version: 2), c = makeChangeset(me, version: 3)
        #expect(m.localCommit([a], now: .zero).sends.map(\.changesets) == [[a]])
        #expect(m.isInFlight("p"))
        #expect(m.localCommit([b], now: .milliseconds(1)).sends.isEmpty)
        #expect(m.localCommit([c], now: .milliseconds(2)).sends.isEmpty)
        #expect(m.queuedCount(for: "p") == 2)
        let batch = m.sendCompleted("p").sends
        #expect(batch.count == 1 && batch[0].changesets == [b, c])
        #expect(m.sendCompleted("p").sends.isEmpty)
        #expect(!m.isInFlight("p"))
        // Idle again: the next one goes alone, at once.
        let d = makeChangeset(me, version: 4)
        #expect(m.localCommit([d], now: .milliseconds(3)).sends.map(\.changesets) == [[d]])
        #expect(m.metrics.batchedSends == 1)
        // A failed send also releases the peer.
        _ = m.localCommit([makeChangeset(me, version: 5)], now: .milliseconds(4))
        #expect(m.sendFailed("p").sends.count == 1)
        #expect(m.metrics.sendFailures == 1)
    }

    @Test func batchFramesAreBoundedInBytes() {
        var m = machine([BroadcastMember(id: "p", rtt: .milliseconds(1))]) {
            $0.maxTransmissions = 1
            $0.maxBatchBytes = 4096
        }
        _ = m.localCommit([makeChangeset(me, version: 1)], now: .zero)
        for v in 2...21 { _ = m.localCommit([makeChangeset(me, version: Int64(v), count: 1, valueBytes: 900)], now: .zero) }
        var frames = 0
        var delivered = 0
        var d = m.sendCompleted("p")
        while let s = d.sends.first {
            frames += 1
            delivered += s.changesets.count
            #expect(s.changesets.reduce(0) { $0 + ChangesetCodec.encodedSize($1) } <= 4096)
            d = m.sendCompleted("p")
        }
        #expect(delivered == 20 && frames >= 5)
    }

    @Test func largeChangesetsAreSplitBySeq() throws {
        var m = machine([BroadcastMember(id: "p", rtt: .milliseconds(1))]) {
            $0.maxTransmissions = 1
            $0.maxChunkBytes = 16 * 1024
            $0.maxBatchBytes = 16 * 1024
        }
        let big = makeChangeset(me, version: 9, count: 1000, valueBytes: 200)
        var chunks = m.localCommit([big], now: .zero).sends.flatMap(\.changesets)
        var d = m.sendCompleted("p")
        while !d.sends.isEmpty {
            chunks += d.sends.flatMap(\.changesets)
            d = m.sendCompleted("p")
        }
        #expect(chunks.count > 10)
        var next: Int64 = 0
        var total = 0
        for c in chunks {
            guard case .changes(let v, let changes, let seqs, let lastSeq, _) = c.content else { throw Unexpected() }
            #expect(v == 9 && lastSeq == 999 && seqs.lowerBound == next)
            #expect(changes.allSatisfy { seqs.contains($0.seq) })
            #expect(ChangesetCodec.encodedSize(c) <= 16 * 1024)
            next = seqs.upperBound + 1
            total += changes.count
        }
        #expect(next == 1000 && total == 1000)
        #expect(m.metrics.chunksCreated == chunks.count)
    }

    /// Under overload a peer's queue keeps its bound, and what it drops is
    /// always the most-sent, then oldest entry.
    @Test func boundedQueueDropsOldestMostSentFirst() {
        let members = (1...8).map { BroadcastMember(id: "m\($0)", rtt: .milliseconds($0)) }
        var m = machine(members, seed: 7) {
            $0.ring0Nearest = 1  // m1, never released: its queue overflows
            $0.ring0Latency = .zero
            $0.minFanout = 3
            $0.maxTransmissions = 4
            $0.maxQueuePerPeer = 5
            $0.retransmitDelay = .milliseconds(10)
        }
        var now = Duration.zero
        var rng = SplitMix64(seed: 3)
        var droppedSeen = 0
        for step in 0..<300 {
            let before = m.queueSnapshot(for: "m1")
            let d: [BroadcastDirective]
            switch rng.next() % 3 {
            case 0: d = m.localCommit([makeChangeset(me, version: Int64(step + 1))], now: now)
            case 1: d = m.received([makeChangeset(other, version: Int64(step + 1))], from: "m\(2 + rng.next() % 7)", now: now)
            default:
                now += .milliseconds(10)
                d = m.tick(now: now)
            }
            for s in d.sends where s.peer != "m1" { _ = m.sendCompleted(s.peer) }
            let after = m.queueSnapshot(for: "m1")
            #expect(after.count <= 5)
            let afterOrders = Set(after.map(\.order))
            let removed = before.filter { !afterOrders.contains($0.order) }
            let kept = before.filter { afterOrders.contains($0.order) }
            for r in removed {
                droppedSeen += 1
                for k in kept {
                    #expect(r.sendCount > k.sendCount || (r.sendCount == k.sendCount && r.order < k.order),
                            "dropped \(r) while keeping \(k)")
                }
            }
        }
        #expect(droppedSeen > 10)
        #expect(m.metrics.droppedQueued >= droppedSeen)
    }

    @Test func departedPeersLoseTheirQueues() {
        var m = machine([BroadcastMember(id: "p", rtt: .milliseconds(1)), BroadcastMember(id: "q", rtt: .milliseconds(2))]) {
            $0.maxTransmissions = 1
        }
        _ = m.localCommit([makeChangeset(me, version: 1)], now: .zero)
        _ = m.localCommit([makeChangeset(me, version: 2)], now: .zero)
        #expect(m.queuedCount(for: "p") == 1)
        _ = m.membersChanged([BroadcastMember(id: "q", rtt: .milliseconds(2))])
        #expect(m.queuedCount(for: "p") == 0 && !m.isInFlight("p"))
        #expect(m.sendCompleted("p").isEmpty)
        #expect(m.metrics.droppedQueued == 1)
    }
}

struct Unexpected: Error {}

/// Regions: the direct path to every region, and local spreading of relays.
@Suite struct BroadcastRegionTests {
    let me = clusterTestActor(1)

    /// Three regions of three members; this node is in "a" with a1, a2.
    func regionMembers() -> [BroadcastMember] {
        [BroadcastMember(id: "a1", rtt: .milliseconds(1), region: "a"),
         BroadcastMember(id: "a2", rtt: .milliseconds(2), region: "a"),
         BroadcastMember(id: "b1", rtt: .milliseconds(90), region: "b"),
         BroadcastMember(id: "b2", rtt: .milliseconds(91), region: "b"),
         BroadcastMember(id: "b3", rtt: .milliseconds(95), region: "b"),
         BroadcastMember(id: "c1", rtt: .milliseconds(300), region: "c"),
         BroadcastMember(id: "c2", rtt: .milliseconds(301), region: "c"),
         BroadcastMember(id: "c3", rtt: .milliseconds(302), region: "c")]
    }

    func machine(seed: UInt64) -> BroadcastStateMachine {
        var config = BroadcastConfig()
        config.region = "a"
        config.minFanout = 1
        var m = BroadcastStateMachine(localActor: me, config: config, rng: SplitMix64(seed: seed))
        _ = m.membersChanged(regionMembers())
        return m
    }

    @Test func localCommitReachesTheNearestTwoOfEveryRegionDirectly() {
        for seed in 1...20 as ClosedRange<UInt64> {
            var m = machine(seed: seed)
            let peers = Set(m.localCommit([makeChangeset(me, version: 1)], now: .zero).sends.map(\.peer))
            // Ring 0 is a1, a2 and b1 (the three nearest); b2, c1, c2 are the per-region picks.
            #expect(Set(["a1", "a2", "b1", "b2", "c1", "c2"]).isSubset(of: peers), "seed \(seed): \(peers)")
        }
    }

    @Test func withoutRegionsOnlyRing0AndFanout() {
        var config = BroadcastConfig()
        config.minFanout = 1
        var m = BroadcastStateMachine(localActor: me, config: config, rng: SplitMix64(seed: 3))
        _ = m.membersChanged(regionMembers().map { BroadcastMember(id: $0.id, rtt: $0.rtt) })
        let peers = m.localCommit([makeChangeset(me, version: 1)], now: .zero).sends.map(\.peer)
        #expect(peers.count == 3 + 1, "ring 0 (3 nearest) plus a fanout of 1: \(peers)")
    }

    @Test func relaysStayInTheRegionWhenEveryoneHasOne() {
        for seed in 1...20 as ClosedRange<UInt64> {
            var m = machine(seed: seed)
            let d = m.received([makeChangeset(clusterTestActor(9), version: 1)], from: "b1", now: .zero)
            #expect(d.sends.map(\.peer).sorted() == ["a1", "a2"], "seed \(seed)")
            #expect(m.pendingCount == 0, "relays are not retransmitted")
            for send in d.sends { _ = m.sendCompleted(send.peer) }
            let fromSibling = m.received([makeChangeset(clusterTestActor(9), version: 2)], from: "a1", now: .zero)
            #expect(fromSibling.sends.isEmpty, "a1 told the region already")
            #expect(fromSibling.applied.count == 1)
        }
    }

    @Test func aMemberWithoutRegionBringsBackTheRandomRelayFanout() {
        var config = BroadcastConfig()
        config.region = "a"
        config.minFanout = 1
        var m = BroadcastStateMachine(localActor: me, config: config, rng: SplitMix64(seed: 5))
        _ = m.membersChanged(regionMembers() + [BroadcastMember(id: "x", rtt: .milliseconds(50))])
        let d = m.received([makeChangeset(clusterTestActor(9), version: 1)], from: "a1", now: .zero)
        let peers = d.sends.map(\.peer)
        #expect(peers.contains("a2") && peers.count == 2, "a2 plus a fanout of 1: \(peers)")
        #expect(m.pendingCount == 1, "and retransmission")
    }
}
