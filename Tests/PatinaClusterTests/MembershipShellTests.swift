import Foundation
import PatinaCluster
import PatinaCore
import Synchronization
import Testing

/// Delivers datagrams between in-process transports by address; an address can be
/// cut off (both directions) to play a stopped node.
final class InMemoryMembershipNetwork: Sendable {
    private struct State {
        var mailboxes: [String: AsyncStream<MembershipDatagram>.Continuation] = [:]
        var cut: Set<String> = []
        var sent = 0
    }
    private let state = Mutex(State())

    func transport(_ address: String) -> InMemoryMembershipTransport {
        let (stream, continuation) = AsyncStream.makeStream(of: MembershipDatagram.self)
        state.withLock { $0.mailboxes[address] = continuation }
        return InMemoryMembershipTransport(network: self, address: address, incoming: stream)
    }

    func cut(_ address: String) { state.withLock { _ = $0.cut.insert(address) } }

    var sentCount: Int { state.withLock { $0.sent } }

    func deliver(_ bytes: [UInt8], from: String, to: String) {
        state.withLock { s in
            s.sent += 1
            guard !s.cut.contains(from), !s.cut.contains(to) else { return }
            _ = s.mailboxes[to]?.yield(MembershipDatagram(bytes: bytes, from: from))
        }
    }
}

/// A lock around a value, as a class so escaping closures can share it.
final class LockedBox<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<R: Sendable>(_ body: (inout Value) -> R) -> R { mutex.withLock { body(&$0) } }
}

struct InMemoryMembershipTransport: MembershipTransport {
    let network: InMemoryMembershipNetwork
    let address: String
    let incoming: AsyncStream<MembershipDatagram>

    func send(_ bytes: [UInt8], to address: String) async {
        precondition(bytes.count <= 1100)
        network.deliver(bytes, from: self.address, to: address)
    }
}

/// The actor shell on the real clock with fast timers; conditions are polled with a
/// deadline, never slept on.
@Suite struct MembershipShellTests {
    static var fastConfig: MembershipConfig {
        var c = MembershipConfig(clusterID: 5)
        c.probeInterval = .milliseconds(100)
        c.probeTimeout = .milliseconds(60)
        c.indirectProbeTimeout = .milliseconds(40)
        c.gossipInterval = .milliseconds(50)
        c.rejoinInterval = .milliseconds(200)
        return c
    }

    /// Polls `condition` every 20 ms until it holds or `timeout` passes.
    static func eventually(
        _ timeout: Duration, _ condition: @Sendable () async -> Bool
    ) async -> Duration? {
        let start = ContinuousClock.now
        while ContinuousClock.now - start < timeout {
            if await condition() { return ContinuousClock.now - start }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return nil
    }

    typealias Shell = MembershipShell<ContinuousClock>

    static func makeShell(
        _ i: Int, network: InMemoryMembershipNetwork, bootstrap: [Int], persistence: MembershipPersistence? = nil,
        config: MembershipConfig = fastConfig
    ) throws -> Shell {
        try Shell(
            myself: MemberIdentity(id: testActor(i), address: testAddress(i), region: "local"), config: config,
            bootstrap: bootstrap.map(testAddress), transport: network.transport(testAddress(i)),
            persistence: persistence, persistInterval: .milliseconds(100))
    }

    @Test(.timeLimit(.minutes(1))) func shellsConvergeAndDetectAStoppedNode() async throws {
        let network = InMemoryMembershipNetwork()
        let saved = LockedBox<PersistedMembership?>(nil)
        let persistence = MembershipPersistence(
            load: { nil }, save: { snapshot in saved.withLock { $0 = snapshot } })
        let shells = try (0..<4).map {
            try Self.makeShell($0, network: network, bootstrap: [0], persistence: $0 == 0 ? persistence : nil)
        }
        let seen = LockedBox<[MembershipEvent]>([])
        await withTaskGroup(of: Void.self) { group in
            for shell in shells { group.addTask { await shell.run() } }
            let events = shells[0].events
            group.addTask {
                for await e in events { seen.withLock { $0.append(e) } }
            }

            let joined = await Self.eventually(.seconds(10)) {
                for s in shells where await s.liveMemberCount != 3 { return false }
                return true
            }
            #expect(joined != nil, "4 shells converge")
            print("shell: 4 nodes converged in \(joined ?? .zero)")

            let members = await shells[0].members
            #expect(Set(members.map(\.id)) == Set((1..<4).map(testActor)))
            // On a loaded 2-core machine a 60 ms probe can time out: a false
            // suspicion is allowed, as long as it is refuted.
            let allAlive = await Self.eventually(.seconds(10)) {
                await shells[0].members.allSatisfy { $0.region == "local" && $0.status == .alive }
            }
            #expect(allAlive != nil, "every member alive on node 0")
            await shells[0].recordRTT(testActor(2), .microseconds(50))
            #expect(await shells[0].nearest(1).first?.id == testActor(2))

            // Stop node 3: it no longer sends nor receives.
            network.cut(testAddress(3))
            let detected = await Self.eventually(.seconds(15)) {
                for s in shells.prefix(3) where await s.member(testActor(3))?.status != .down { return false }
                return true
            }
            #expect(detected != nil, "the others mark node 3 down")
            print("shell: stopped node detected by all in \(detected ?? .zero)")
            let settled = await Self.eventually(.seconds(10)) {
                for s in shells.prefix(3) where await s.liveMemberCount != 2 { return false }
                return true
            }
            #expect(settled != nil, "the three live shells see each other alive")

            let persisted = await Self.eventually(.seconds(5)) {
                saved.withLock { $0?.members.first { $0.id == testActor(3) }?.status == .down }
            }
            #expect(persisted != nil, "membership changes are saved")
            group.cancelAll()
        }
        let events = seen.withLock { $0 }
        #expect(events.contains { $0.member.id == testActor(3) && $0.from == nil && $0.to == .alive })
        #expect(events.contains { $0.member.id == testActor(3) && $0.to == .down })
        #expect(saved.withLock { $0?.members.count } == 3)
    }

    @Test(.timeLimit(.minutes(1))) func aRestartedNodeRejoinsThroughPersistedMembersWhenBootstrapIsGone() async throws {
        let network = InMemoryMembershipNetwork()
        // Node 9 remembers node 1 from a previous run, at incarnation 7; its
        // configured bootstrap address is dead.
        let persisted = PersistedMembership(
            incarnation: 7,
            members: [MemberInfo(id: testActor(1), address: testAddress(1), region: nil, status: .alive, incarnation: 0)])
        let persistence = MembershipPersistence(load: { persisted }, save: { _ in })
        let a = try Self.makeShell(1, network: network, bootstrap: [])
        let b = try Self.makeShell(2, network: network, bootstrap: [1])
        let restarted = try Self.makeShell(9, network: network, bootstrap: [77], persistence: persistence)
        await withTaskGroup(of: Void.self) { group in
            for s in [a, b, restarted] { group.addTask { await s.run() } }
            let joined = await Self.eventually(.seconds(10)) {
                let counts = [await restarted.liveMemberCount, await a.liveMemberCount, await b.liveMemberCount]
                return counts == [2, 2, 2]
            }
            #expect(joined != nil)
            #expect(await restarted.myself.incarnation >= 8, "starts past the persisted incarnation")
            group.cancelAll()
        }
    }

    @Test(.timeLimit(.minutes(1))) func anotherClusterIsNeverAdmitted() async throws {
        let network = InMemoryMembershipNetwork()
        var other = Self.fastConfig
        other.clusterID = 6
        let a = try Self.makeShell(1, network: network, bootstrap: [])
        let stranger = try Self.makeShell(2, network: network, bootstrap: [1], config: other)
        let b = try Self.makeShell(3, network: network, bootstrap: [1])
        await withTaskGroup(of: Void.self) { group in
            for s in [a, stranger, b] { group.addTask { await s.run() } }
            let joined = await Self.eventually(.seconds(10)) {
                let counts = [await a.liveMemberCount, await b.liveMemberCount]
                return counts == [1, 1]
            }
            #expect(joined != nil)
            // The stranger kept announcing (every 200 ms while alone) and was refused.
            let refusedLongEnough = await Self.eventually(.seconds(5)) { network.sentCount > 40 }
            #expect(refusedLongEnough != nil)
            #expect(await a.member(testActor(2)) == nil)
            #expect(await b.member(testActor(2)) == nil)
            #expect(await stranger.liveMemberCount == 0)
            group.cancelAll()
        }
    }
}
