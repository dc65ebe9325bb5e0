import Foundation
import PatinaCluster
import PatinaCore
import Testing

/// Many virtual nodes on one seeded discrete-event network (`SimNetwork`): lossy,
/// with random delays. Figures are printed in virtual time.
@Suite struct MembershipSimulationTests {
    static func seconds(_ t: UInt64) -> String { String(format: "%.2f s", Double(t) / 1_000_000) }

    static func percentile(_ values: [UInt64], _ p: Double) -> UInt64 {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p))]
    }

    @Test(.timeLimit(.minutes(2))) func fiveHundredNodesJoinConvergeAndDetectFailuresUnderLoss() throws {
        let n = 500
        let killed = 25
        let config = MembershipConfig(clusterID: 9)
        let net = SimNetwork(config: config, seed: 0x5EED)
        net.lossRate = 0.05
        net.minDelay = ms(1)
        net.maxDelay = ms(15)
        var rng = SplitMix64(seed: 99)

        let seeds = [0, 1, 2]
        for _ in 0..<n { net.addNode(bootstrap: seeds) }
        // Seeds first, then everyone else within one second.
        var lastStart: UInt64 = 0
        for i in 0..<n {
            let at = seeds.contains(i) ? 0 : UInt64.random(in: 0...ms(1_000), using: &rng)
            lastStart = max(lastStart, at)
            net.start(i, at: at)
        }

        // Count status changes about members that are in fact alive.
        var dead = Set<ActorID>()
        // Distinct (member, incarnation) wrongly suspected or declared down, by anyone.
        var falseSuspicions = Set<String>()
        var falseDowns = Set<String>()
        var downAt: [ActorID: [Int: UInt64]] = [:]
        net.onChange = { observer, member, _, to, at in
            if dead.contains(member.id) {
                if to == .down, downAt[member.id]?[observer] == nil { downAt[member.id, default: [:]][observer] = at }
            } else if to == .suspect {
                falseSuspicions.insert("\(member.id)/\(member.incarnation)")
            } else if to == .down {
                falseDowns.insert("\(member.id)/\(member.incarnation)")
            }
        }

        let wall = ContinuousClock.now
        // 1. Join: every node learns every other node.
        let converged = net.run(until: ms(60_000), step: ms(50)) {
            (0..<n).allSatisfy { net.state($0).liveMemberCount == n - 1 }
        }
        let joinTime = try #require(converged, "membership did not converge in 60 s virtual")
        print(
            "simulation: \(n) nodes, 5% loss, 1–15 ms delay: all joined and converged \(Self.seconds(joinTime - lastStart)) after the last start (\(Self.seconds(joinTime)) total); \(net.messagesSent) messages so far; wall \(ContinuousClock.now - wall)"
        )
        #expect(joinTime - lastStart <= ms(5_000))

        // 2. Kill 5 % of the nodes (never a seed); every survivor must mark them down.
        net.run(until: joinTime + ms(3_000))
        let killAt = net.now
        var victims: [Int] = []
        while victims.count < killed {
            let v = Int.random(in: 3..<n, using: &rng)
            if !victims.contains(v) { victims.append(v) }
        }
        for v in victims {
            net.kill(v)
            dead.insert(testActor(v))
        }
        let survivors = (0..<n).filter { !victims.contains($0) }
        let suspicionsBeforeKill = falseSuspicions.count
        let detected = net.run(until: killAt + ms(60_000), step: ms(100)) {
            survivors.allSatisfy { s in
                victims.allSatisfy { net.state(s).status(of: testActor($0)) == .down }
            }
        }
        let allDown = try #require(detected, "some survivor never marked every dead node down")

        var firstDetection: [UInt64] = []
        var everyDetection: [UInt64] = []
        for v in victims {
            let times = downAt[testActor(v)]!.filter { survivors.contains($0.key) }.map { $0.value - killAt }
            firstDetection.append(times.min()!)
            everyDetection += times
        }
        print(
            "simulation: \(killed) nodes killed; first survivor marks a dead node down after median \(Self.seconds(Self.percentile(firstDetection, 0.5))), max \(Self.seconds(firstDetection.max()!)); over all (survivor, dead) pairs median \(Self.seconds(Self.percentile(everyDetection, 0.5))), p99 \(Self.seconds(Self.percentile(everyDetection, 0.99))); all survivors agree after \(Self.seconds(allDown - killAt))"
        )
        #expect(allDown - killAt <= ms(15_000))

        // 3. Let it run on with loss: false suspicions get refuted, no survivor stays down.
        net.run(until: allDown + ms(5_000))
        var wronglyDown = 0
        var stillSuspect = 0
        for s in survivors {
            for other in survivors where other != s {
                switch net.state(s).status(of: testActor(other)) {
                case .down?, nil: wronglyDown += 1
                case .suspect?: stillSuspect += 1
                case .alive?: break
                }
            }
            #expect(net.state(s).liveMemberCount == survivors.count - 1)
        }
        print(
            "simulation: distinct false suspicions \(falseSuspicions.count) (\(falseSuspicions.count - suspicionsBeforeKill) after the kill), false downs \(falseDowns.count) (all refuted); at the end \(stillSuspect) (survivor, survivor) pairs in a transient suspicion, \(wronglyDown) down; \(net.messagesSent) messages, \(net.messagesDropped) dropped; by kind \(net.sentByKind.sorted { $0.key < $1.key }); virtual \(Self.seconds(net.now)), wall \(ContinuousClock.now - wall)"
        )
        #expect(wronglyDown == 0, "no survivor is down in any survivor's view")
        #expect(stillSuspect <= survivors.count, "at most a few transient suspicions")
    }

    @Test func aPartitionHealsThroughRefutationAndAnnounce() throws {
        // Two halves cut apart long enough to declare each other down, then rejoined.
        let n = 40
        let net = SimNetwork(config: MembershipConfig(clusterID: 3), seed: 4)
        net.lossRate = 0.01
        net.maxDelay = ms(5)
        for _ in 0..<n { net.addNode(bootstrap: [0, n / 2]) }
        for i in 0..<n { net.start(i, at: 0) }
        let joined = net.run(until: ms(10_000)) { (0..<n).allSatisfy { net.state($0).liveMemberCount == n - 1 } }
        _ = try #require(joined)

        net.dropRule = { a, b in (a < n / 2) != (b < n / 2) }
        let split = net.run(until: net.now + ms(60_000), step: ms(100)) {
            (0..<n).allSatisfy { net.state($0).liveMemberCount == n / 2 - 1 }
        }
        _ = try #require(split, "each half declares the other down")
        net.dropRule = nil
        let healedAt = net.now
        var mostHealed: UInt64?
        let healed = net.run(until: healedAt + ms(120_000), step: ms(100)) {
            let whole = (0..<n).filter { net.state($0).liveMemberCount == n - 1 }.count
            if mostHealed == nil, whole >= n * 9 / 10 { mostHealed = net.now }
            return whole == n
        }
        let t = try #require(healed, "the halves find each other again (gossip to the dead, refutation, announce)")
        print(
            "partition of \(n) nodes: 90 % of the nodes see everyone again \(Self.seconds((mostHealed ?? t) - healedAt)) after the link came back, all \(Self.seconds(t - healedAt))"
        )
        #expect(t - healedAt <= ms(10_000))
    }

    @Test func membersFartherThanTheProbeTimeoutAreNotSuspected() throws {
        // One-way 180–220 ms: every round trip is longer than the 300 ms probe
        // timeout, as between Singapore and São Paulo. Timeouts follow the RTT, so
        // nobody is suspected, even with 1% loss (an indirect probe covers a loss).
        let n = 8
        let net = SimNetwork(config: MembershipConfig(clusterID: 3), seed: 11)
        net.minDelay = ms(180)
        net.maxDelay = ms(220)
        net.lossRate = 0.01
        var suspicions = 0
        net.onChange = { _, _, _, to, _ in if to == .suspect || to == .down { suspicions += 1 } }
        for _ in 0..<n { net.addNode(bootstrap: [0]) }
        for i in 0..<n { net.start(i, at: 0) }
        let joined = net.run(until: ms(20_000)) { (0..<n).allSatisfy { net.state($0).liveMemberCount == n - 1 } }
        _ = try #require(joined)
        net.run(until: net.now + ms(10_000))  // first RTT samples
        suspicions = 0
        net.run(until: net.now + ms(120_000))
        #expect(suspicions <= 2, "\(suspicions) suspicions of live members over two minutes")
        #expect((0..<n).allSatisfy { net.state($0).liveMemberCount == n - 1 })
    }
}
