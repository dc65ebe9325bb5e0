import Foundation
import PatinaCluster
import PatinaCore
import Testing

/// Pure tests of `MembershipState`: time is driven by hand, peers are scripted.
@Suite struct MembershipStateMachineTests {
    static let cluster: UInt16 = 1
    static var config: MembershipConfig { MembershipConfig(clusterID: cluster) }

    static func identity(_ n: Int, incarnation: UInt64 = 0) -> MemberIdentity {
        MemberIdentity(id: testActor(n), address: testAddress(n), incarnation: incarnation)
    }

    static func message(
        from n: Int, _ body: MembershipMessage.Body, updates: [MemberUpdate] = [], incarnation: UInt64 = 0,
        cluster: UInt16 = cluster
    ) -> MembershipMessage {
        MembershipMessage(clusterID: cluster, sender: identity(n, incarnation: incarnation), body: body, updates: updates)
    }

    static func update(_ n: Int, _ status: MemberStatus, incarnation: UInt64 = 0, by: Int? = nil) -> MemberUpdate {
        MemberUpdate(
            id: testActor(n), address: testAddress(n), incarnation: incarnation, status: status,
            suspectedBy: by.map(testActor))
    }

    /// Drives one instance (node 0) on a hand-moved clock; `respond` plays the peers:
    /// given what node 0 sent and where, it returns the messages node 0 receives back.
    struct Driver {
        var state: MembershipState
        var now: UInt64 = 0
        var log: [(time: UInt64, directive: MembershipDirective)] = []

        init(peers: [Int], config: MembershipConfig = MembershipStateMachineTests.config) {
            state = MembershipState(myself: identity(0), config: config, seed: 42)
            record(state.start(now: 0), respond: { _, _ in [] })
            // Node 0 learns its peers from one gossip message of the first peer.
            if let first = peers.first {
                let m = message(from: first, .gossip, updates: peers.dropFirst().map { update($0, .alive) })
                record(state.onMessage(m, now: 0), respond: { _, _ in [] })
            }
        }

        mutating func record(
            _ directives: [MembershipDirective], depth: Int = 0,
            respond: (MembershipMessage, String) -> [MembershipMessage]
        ) {
            for d in directives {
                log.append((now, d))
                guard depth < 4, case .send(let m, let address) = d else { continue }
                for reply in respond(m, address) {
                    record(state.onMessage(reply, now: now), depth: depth + 1, respond: respond)
                }
            }
        }

        mutating func advance(
            to end: UInt64, step: UInt64 = ms(10), respond: (MembershipMessage, String) -> [MembershipMessage]
        ) {
            while now < end {
                now = min(end, now + step)
                record(state.onTick(now: now), respond: respond)
            }
        }

        var sent: [(time: UInt64, message: MembershipMessage, to: String)] {
            log.compactMap { entry in
                if case .send(let m, let to) = entry.directive { return (entry.time, m, to) }
                return nil
            }
        }

        var changes: [(time: UInt64, member: MemberInfo, from: MemberStatus?, to: MemberStatus?)] {
            log.compactMap { entry in
                if case .membershipChanged(let m, let from, let to) = entry.directive { return (entry.time, m, from, to) }
                return nil
            }
        }
    }

    /// Peers 1…n that answer pings; `dead` peers answer nothing, and relays cannot
    /// reach them either.
    static func responder(dead: Set<Int> = []) -> (MembershipMessage, String) -> [MembershipMessage] {
        { m, address in
            guard let n = (1...64).first(where: { testAddress($0) == address }), !dead.contains(n) else { return [] }
            switch m.body {
            case .ping(let seq):
                return [message(from: n, .ack(sequence: seq, target: testActor(n)))]
            case .pingRequest(let seq, let target, _):
                guard let t = (1...64).first(where: { testActor($0) == target }), !dead.contains(t) else { return [] }
                return [message(from: n, .ack(sequence: seq, target: target))]
            default:
                return []
            }
        }
    }

    @Test func probeAnsweredByAckKeepsEveryoneAlive() {
        var d = Driver(peers: [1, 2, 3])
        #expect(d.state.liveMemberCount == 3)
        d.advance(to: ms(10_000), respond: Self.responder())

        let pings = d.sent.filter { if case .ping = $0.message.body { true } else { false } }
        #expect(pings.count >= 18, "one probe per 500 ms, got \(pings.count)")
        for n in 1...3 {
            #expect(pings.filter { $0.to == testAddress(n) }.count >= 5, "round-robin reaches member \(n)")
            #expect(d.state.status(of: testActor(n)) == .alive)
        }
        #expect(!d.sent.contains { if case .pingRequest = $0.message.body { true } else { false } })
        #expect(!d.changes.contains { $0.to == .suspect || $0.to == .down })
        // Acks arrive "instantly": the RTT sample is 0 and recorded.
        #expect(d.state.member(testActor(1))?.rttMin == .zero)
    }

    @Test func missedAckLeadsToPingRequestThenSuspicionThenDown() throws {
        var d = Driver(peers: [1, 2, 3])
        let respond = Self.responder(dead: [1])
        d.advance(to: ms(8_000), respond: respond)

        let firstPing = try #require(d.sent.first { $0.to == testAddress(1) && { if case .ping = $0 { true } else { false } }($0.message.body) })
        let requests = d.sent.filter {
            if case .pingRequest(_, let target, let address) = $0.message.body {
                return target == testActor(1) && address == testAddress(1)
            }
            return false
        }
        // k = 3, but only two other members exist.
        #expect(Set(requests.prefix(2).map(\.to)) == [testAddress(2), testAddress(3)])
        #expect(requests.first!.time == firstPing.time + ms(300))

        let suspected = try #require(d.changes.first { $0.member.id == testActor(1) && $0.to == .suspect })
        #expect(suspected.from == .alive)
        #expect(suspected.time == firstPing.time + ms(500))
        // The suspect hears of it directly so it could refute.
        #expect(d.sent.contains { $0.time == suspected.time && $0.to == testAddress(1) && $0.message.body == .gossip })

        let down = try #require(d.changes.first { $0.member.id == testActor(1) && $0.to == .down })
        let timeout = d.state.suspicionTimeout(confirmations: 0, clusterSize: 4)
        #expect(timeout == ms(2_000), "max timeout without confirmations: 2 × 1 × 500 ms")
        #expect(down.time >= suspected.time + timeout && down.time <= suspected.time + timeout + ms(10))
        #expect(d.state.status(of: testActor(1)) == .down)
        #expect(d.state.liveMemberCount == 2)
        // A down member is no longer probed.
        #expect(!d.sent.contains { $0.time > down.time && $0.to == testAddress(1) && { if case .ping = $0 { true } else { false } }($0.message.body) })
        // Others stay alive.
        #expect(d.state.status(of: testActor(2)) == .alive && d.state.status(of: testActor(3)) == .alive)
    }

    @Test func indirectAckPreventsSuspicion() {
        var d = Driver(peers: [1, 2, 3])
        // Direct pings to 1 are lost, but relays reach it.
        let base = Self.responder()
        d.advance(to: ms(6_000)) { m, address in
            if address == testAddress(1), case .ping = m.body { return [] }
            return base(m, address)
        }
        #expect(d.sent.contains { if case .pingRequest = $0.message.body { true } else { false } })
        #expect(!d.changes.contains { $0.to == .suspect })
        #expect(d.state.status(of: testActor(1)) == .alive)
    }

    @Test func confirmationsShortenTheSuspicion() {
        let s = MembershipState(myself: Self.identity(0), config: Self.config, seed: 1)
        let n = 10
        let t0 = s.suspicionTimeout(confirmations: 0, clusterSize: n)
        let t1 = s.suspicionTimeout(confirmations: 1, clusterSize: n)
        let t3 = s.suspicionTimeout(confirmations: 3, clusterSize: n)
        #expect(t0 > t1 && t1 > t3)
        #expect(t3 == ms(1_000), "min = 2 × log10(10) × 500 ms")
        #expect(s.suspicionTimeout(confirmations: 9, clusterSize: n) == t3)
        // Scaled by log10(n) for large clusters.
        #expect(s.suspicionTimeout(confirmations: 3, clusterSize: 1000) == ms(3_000))
    }

    @Test func suspicionAboutItselfIsRefutedWithAHigherIncarnation() throws {
        var d = Driver(peers: [1, 2])
        let r = Self.responder()
        d.record(
            d.state.onMessage(Self.message(from: 1, .gossip, updates: [Self.update(0, .suspect, by: 1)]), now: 0),
            respond: r)
        #expect(d.state.myself.incarnation == 1)

        let out = d.state.onMessage(Self.message(from: 2, .ping(sequence: 9)), now: 0)
        guard case .send(let ack, let to) = try #require(out.first) else {
            Issue.record("expected an ack")
            return
        }
        #expect(to == testAddress(2))
        #expect(ack.body == .ack(sequence: 9, target: testActor(0)))
        #expect(ack.sender.incarnation == 1)
        #expect(ack.updates.contains { $0.id == testActor(0) && $0.status == .alive && $0.incarnation == 1 })

        // Even "down" about itself is refuted.
        _ = d.state.onMessage(Self.message(from: 1, .gossip, updates: [Self.update(0, .down, incarnation: 4)]), now: 0)
        #expect(d.state.myself.incarnation == 5)
        // Older news about itself changes nothing.
        _ = d.state.onMessage(Self.message(from: 1, .gossip, updates: [Self.update(0, .suspect, incarnation: 2)]), now: 0)
        #expect(d.state.myself.incarnation == 5)
    }

    @Test func suspectIsClearedOnlyByAHigherIncarnation() throws {
        var s = MembershipState(myself: Self.identity(0), config: Self.config, seed: 1)
        _ = s.start(now: 0)
        _ = s.onMessage(Self.message(from: 2, .gossip, updates: [Self.update(1, .alive)]), now: 0)
        let out = s.onMessage(Self.message(from: 2, .gossip, updates: [Self.update(1, .suspect, by: 2)]), now: ms(1))
        #expect(out.contains(.membershipChanged(s.member(testActor(1))!, from: .alive, to: .suspect)))

        // Node 1 talks at its old incarnation: still suspect, and the reply tells it so.
        let reply = s.onMessage(Self.message(from: 1, .ping(sequence: 3)), now: ms(2))
        #expect(s.status(of: testActor(1)) == .suspect)
        guard case .send(let ack, _) = try #require(reply.first) else {
            Issue.record("expected an ack")
            return
        }
        #expect(ack.updates.first?.id == testActor(1) && ack.updates.first?.status == .suspect)

        // Node 1 refutes with incarnation 1.
        let refuted = s.onMessage(Self.message(from: 1, .ping(sequence: 4), incarnation: 1), now: ms(3))
        #expect(s.status(of: testActor(1)) == .alive)
        #expect(s.member(testActor(1))?.incarnation == 1)
        #expect(refuted.contains { if case .membershipChanged(_, .suspect, .alive) = $0 { true } else { false } })

        // A down member that comes back with a higher incarnation is alive again.
        _ = s.onMessage(Self.message(from: 2, .gossip, updates: [Self.update(1, .down, incarnation: 1)]), now: ms(4))
        #expect(s.status(of: testActor(1)) == .down)
        _ = s.onMessage(Self.message(from: 2, .gossip, updates: [Self.update(1, .alive, incarnation: 1)]), now: ms(5))
        #expect(s.status(of: testActor(1)) == .down, "alive at the same incarnation does not beat down")
        _ = s.onMessage(Self.message(from: 1, .gossip, incarnation: 2), now: ms(6))
        #expect(s.status(of: testActor(1)) == .alive)
    }

    @Test func messagesFromAnotherClusterAreRefusedAndNeverAdded() throws {
        var s = MembershipState(myself: Self.identity(0), config: Self.config, seed: 1)
        _ = s.start(now: 0)
        let foreign = Self.message(from: 1, .announce, updates: [Self.update(2, .alive)], cluster: 2)
        // Through the codec, as it arrives on the wire.
        let decoded = try MembershipCodec.decode(MembershipCodec.encode(foreign))
        let out = s.onMessage(decoded, from: "192.0.2.1:9", now: 0)
        #expect(out.count == 1)
        guard case .refused(let from, let reason) = out.first else {
            Issue.record("expected a refusal, got \(out)")
            return
        }
        #expect(from == "192.0.2.1:9")
        #expect(reason.contains("cluster id 2"))
        #expect(s.members.isEmpty)
        #expect(s.pendingGossipCount == 0)
    }

    @Test func joinIsGossipedToEveryMember() throws {
        let net = SimNetwork(config: Self.config, seed: 7)
        for _ in 0..<7 { net.addNode(bootstrap: [0]) }
        for i in 0..<7 { net.start(i, at: 0) }
        net.run(until: ms(3_000))
        for i in 0..<7 { #expect(net.state(i).liveMemberCount == 6) }

        // Node 7 knows only node 3; everyone else learns of it through gossip.
        let newcomer = net.addNode(bootstrap: [3])
        net.start(newcomer, at: ms(3_000))
        let converged = net.run(until: ms(6_000), step: ms(5)) {
            (0...7).allSatisfy { net.state($0).liveMemberCount == 7 }
        }
        let t = try #require(converged, "the join did not reach every member")
        print("join of 1 node into 7 converged in \(Double(t - ms(3_000)) / 1000) ms (virtual)")
        #expect(t - ms(3_000) <= ms(500))
    }

    @Test func twentyNodesJoiningAtOnceConvergeWithinHalfASecond() throws {
        let net = SimNetwork(config: Self.config, seed: 11)
        net.encodeMessages = true
        for _ in 0..<20 { net.addNode(bootstrap: [0]) }
        for i in 0..<20 { net.start(i, at: 0) }
        let converged = net.run(until: ms(5_000), step: ms(5)) {
            (0..<20).allSatisfy { net.state($0).liveMemberCount == 19 }
        }
        let t = try #require(converged, "20 nodes did not converge")
        print("20 nodes joining at once converged in \(Double(t) / 1000) ms (virtual), \(net.messagesSent) messages")
        #expect(t <= ms(500))
        #expect(net.maxEncodedSize <= 1100)
    }

    // MARK: Codec

    @Test func everyMessageFitsTheDatagramSizeAndRoundTrips() throws {
        for maxSize in [1100, 300] {
            var config = Self.config
            config.maxMessageSize = maxSize
            var s = MembershipState(
                myself: MemberIdentity(id: testActor(0), address: testAddress(0), region: "eu-west"), config: config,
                seed: 3)
            _ = s.start(now: 0)
            var sent: [MembershipMessage] = []
            for batch in 0..<30 {
                let updates = (0..<10).map {
                    MemberUpdate(
                        id: testActor(2 + batch * 10 + $0), address: "[2001:db8::\(batch * 10 + $0)]:4001",
                        region: "region-\($0)", incarnation: UInt64($0) << 40, status: $0 == 3 ? .suspect : .alive,
                        suspectedBy: testActor(1))
                }
                for d in s.onMessage(Self.message(from: 1, .gossip, updates: updates), now: ms(UInt64(batch))) {
                    if case .send(let m, _) = d { sent.append(m) }
                }
            }
            #expect(s.members.count == 301)
            let ackOut = s.onMessage(Self.message(from: 1, .ping(sequence: 1)), now: ms(100))
            let announceOut = s.onMessage(Self.message(from: 400, .announce), now: ms(100))
            var snapshotIDs: Set<ActorID> = []
            for d in ackOut + announceOut {
                guard case .send(let m, _) = d else { continue }
                sent.append(m)
                if m.body == .snapshot { snapshotIDs.formUnion(m.updates.map(\.id)) }
            }
            #expect(snapshotIDs.count == 302, "the snapshot carries every member, the announcer included")
            let ack = sent.first { if case .ack = $0.body { true } else { false } }
            #expect((ack?.updates.count ?? 0) >= (maxSize == 1100 ? 15 : 3), "piggyback fills the datagram")
            for m in sent {
                let bytes = MembershipCodec.encode(m)
                #expect(bytes.count <= maxSize)
                #expect(bytes.count == MembershipCodec.size(of: m))
                #expect(try MembershipCodec.decode(bytes) == m)
            }
        }
    }

    static func sample() -> MembershipMessage {
        MembershipMessage(
            clusterID: 513, sender: MemberIdentity(id: testActor(5), address: "127.0.0.1:4001", region: "fra", incarnation: 300),
            body: .pingRequest(sequence: 77, target: testActor(6), targetAddress: "127.0.0.1:4002"),
            updates: [
                Self.update(7, .suspect, incarnation: 1 << 63, by: 8), Self.update(9, .down),
                MemberUpdate(id: testActor(10), address: "héllo:1", region: "ü", incarnation: 5, status: .alive),
            ])
    }

    @Test func malformedMessagesAreRejected() throws {
        let good = MembershipCodec.encode(Self.sample())
        #expect(try MembershipCodec.decode(good) == Self.sample())
        for n in 0..<good.count {
            #expect(throws: MembershipCodecError.self) { try MembershipCodec.decode(Array(good.prefix(n))) }
        }
        #expect(throws: MembershipCodecError.self) { try MembershipCodec.decode(good + [0]) }
        var badVersion = good
        badVersion[0] = 2
        #expect(throws: MembershipCodecError.self) { try MembershipCodec.decode(badVersion) }
        var badKind = good
        badKind[3] = 99
        #expect(throws: MembershipCodecError.self) { try MembershipCodec.decode(badKind) }
        // An address that is not UTF-8.
        let gossip = MembershipMessage(
            clusterID: 1, sender: MemberIdentity(id: testActor(1), address: "ab"), body: .gossip)
        var bytes = MembershipCodec.encode(gossip)
        let at = 4 + 16 + 1 + 1
        #expect(bytes[at] == UInt8(ascii: "a"))
        bytes[at] = 0xFF
        #expect(throws: MembershipCodecError.self) { try MembershipCodec.decode(bytes) }
        // A varint longer than 64 bits.
        var longVarint = Array(good.prefix(4 + 16))
        longVarint += [UInt8](repeating: 0xFF, count: 10) + [0x01]
        #expect(throws: MembershipCodecError.self) { try MembershipCodec.decode(longVarint) }
    }

    @Test(.timeLimit(.minutes(1))) func randomBytesNeverCrashTheDecoder() {
        var rng = SplitMix64(seed: 2024)
        let valid = MembershipCodec.encode(Self.sample())
        var decoded = 0
        var rejected = 0
        let started = ContinuousClock.now
        for i in 0..<20_000 {
            var bytes: [UInt8]
            if i % 2 == 0 {
                bytes = (0..<Int.random(in: 0...300, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                if i % 4 == 0, !bytes.isEmpty { bytes[0] = MembershipCodec.version }
            } else {
                bytes = valid
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    switch UInt8.random(in: 0...2, using: &rng) {
                    case 0: bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                    case 1: bytes.removeLast(Int.random(in: 0...min(8, bytes.count - 1), using: &rng))
                    default: bytes.insert(UInt8.random(in: 0...255, using: &rng), at: Int.random(in: 0...bytes.count, using: &rng))
                    }
                }
            }
            do {
                let m = try MembershipCodec.decode(bytes)
                decoded += 1
                // Whatever decodes re-encodes to something that decodes the same.
                #expect(try MembershipCodec.decode(MembershipCodec.encode(m)) == m)
            } catch {
                rejected += 1
            }
        }
        print("codec fuzz: \(decoded) decoded, \(rejected) rejected in \(ContinuousClock.now - started)")
        #expect(rejected > 10_000)
        #expect(decoded > 0, "some mutations stay valid")
    }
}
