@testable import PatinaCluster
import PatinaCore
import PatinaStore
import Synchronization
import Testing

/// The broadcast shell over in-memory transports: manual ticks, and three real
/// stores kept in step by broadcast alone.
@Suite struct BroadcastShellTests {
    final class ManualNow: Sendable {
        let value = Mutex(Duration.zero)
        func advance(_ d: Duration) { value.withLock { $0 += d } }
        var closure: @Sendable () -> Duration { { self.value.withLock { $0 } } }
    }

    /// Records frames; fails sends to peers listed in `failing`.
    final class RecordingTransport: ChangesetTransport {
        let frames = Mutex<[(peer: String, frame: [UInt8])]>([])
        let failing: Set<String>
        init(failing: Set<String> = []) { self.failing = failing }
        struct Refused: Error {}
        func send(_ frame: [UInt8], to peer: String) async throws {
            if failing.contains(peer) { throw Refused() }
            frames.withLock { $0.append((peer, frame)) }
        }
        func decoded() throws -> [(peer: String, changesets: [Changeset])] {
            try frames.withLock { $0 }.map { p, f in
                var d = FrameDecoder()
                let frames = try d.feed(f)
                guard frames.count == 1, case .changesets(let c) = try WireMessage.decode(frames[0]) else { throw Unexpected() }
                return (p, c)
            }
        }
    }

    @Test func manualTicksDriveRetransmissionAndSends() async throws {
        let clock = ManualNow()
        let transport = RecordingTransport(failing: ["dead"])
        let shell = BroadcastShell(localActor: clusterTestActor(1), seed: 5, transport: transport, now: clock.closure) { _ in }
        var members = (1...12).map { BroadcastMember(id: "n\($0)", rtt: .milliseconds($0)) }
        members.append(BroadcastMember(id: "dead", rtt: .microseconds(10)))
        await shell.membersChanged(members)
        let cs = makeChangeset(clusterTestActor(1), version: 1)
        await shell.localCommit([cs])
        #expect(await shell.pendingSendCount > 0, "decided at once, no batching window")
        #expect(await shell.nextTickAt == .milliseconds(100))
        await shell.performPendingSends()
        let first = try transport.decoded()
        #expect(first.allSatisfy { $0.changesets == [cs] })
        #expect(await shell.metrics.sendFailures == 1, "the dead ring-0 peer")
        // Nothing due before the tick time.
        clock.advance(.milliseconds(99))
        await shell.tick()
        #expect(await shell.pendingSendCount == 0)
        clock.advance(.milliseconds(1))
        await shell.tick()
        await shell.performPendingSends()
        let second = try transport.decoded()
        #expect(second.count > first.count)
        #expect(Set(second.map(\.peer)).count == second.count, "retransmissions go to fresh peers")
    }

    @Test func malformedStreamsAreDroppedAndCounted() async throws {
        let shell = BroadcastShell(localActor: clusterTestActor(1), seed: 1, transport: RecordingTransport()) { _ in
            Issue.record("nothing may be applied")
        }
        await #expect(throws: WireError.self) { try await shell.received(streamBytes: [0, 0, 0, 2, 0x01, 0xff], from: "x") }
        await #expect(throws: WireError.self) {
            try await shell.received(streamBytes: WireMessage.syncDone(heldBack: 0).encodeFrame(), from: "x")
        }
        #expect(await shell.malformedFrames == 2)
    }

    @Test func aDatagramBatchIsOneEventAndAMalformedDatagramIsDroppedAlone() async throws {
        let applied = Mutex<[[Changeset]]>([])
        let transport = RecordingTransport()
        // Regional: "x" is outside this node's region, "a" and "b" are in it, so fresh changes are relayed to both.
        var config = BroadcastConfig()
        config.region = "r1"
        let regional = BroadcastShell(localActor: clusterTestActor(1), config: config, seed: 1, transport: transport) { cs in
            applied.withLock { $0.append(cs) }
        }
        await regional.membersChanged([BroadcastMember(id: "x", rtt: .milliseconds(50), region: "r2"),
                                       BroadcastMember(id: "a", rtt: .milliseconds(1), region: "r1"),
                                       BroadcastMember(id: "b", rtt: .milliseconds(1), region: "r1")])
        let one = makeChangeset(clusterTestActor(2), version: 1)
        let two = makeChangeset(clusterTestActor(3), version: 1)
        let datagrams = [WireMessage.changesets([one]).encodeFrame(), [0, 0, 0, 2, 0x01, 0xff],
                         WireMessage.changesets([two]).encodeFrame(), WireMessage.changesets([one]).encodeFrame()]
        await regional.received(datagrams: datagrams, from: "x")
        #expect(await regional.malformedFrames == 1)
        #expect(applied.withLock { $0 } == [[one, two]], "one apply for the batch, the duplicate left out")
        await regional.performPendingSends()
        let sent = try transport.decoded()
        #expect(Set(sent.map(\.peer)) == ["a", "b"])
        #expect(sent.allSatisfy { $0.changesets == [one, two] }, "one relay frame per peer for the whole batch")
    }

    /// Three stores; each commit on one reaches the others through broadcast
    /// shells running for real (concurrent sends, ticker) and apply queues.
    @Test func threeStoresConvergeThroughBroadcast() async throws {
        let dir = SyncTempDir()
        let names = ["a", "b", "c"]
        let stores = try names.map { try makeSyncStore(dir, "\($0).db") }
        let queues = stores.map { ApplyQueue(store: $0) }
        let registry = Mutex<[String: BroadcastShell]>([:])
        struct Loopback: ChangesetTransport {
            let me: String
            let lookup: @Sendable (String) -> BroadcastShell?
            func send(_ frame: [UInt8], to peer: String) async throws {
                guard let shell = lookup(peer) else { throw Unexpected() }
                try await shell.received(streamBytes: frame, from: me)
            }
        }
        var shells: [BroadcastShell] = []
        for (i, name) in names.enumerated() {
            let queue = queues[i]
            let shell = BroadcastShell(localActor: stores[i].actorID, seed: UInt64(i + 1),
                                       transport: Loopback(me: name, lookup: { peer in registry.withLock { $0[peer] } })) {
                await queue.offer($0)
            }
            await shell.membersChanged(names.filter { $0 != name }.map { BroadcastMember(id: $0, rtt: .milliseconds(1)) })
            registry.withLock { $0[name] = shell }
            shells.append(shell)
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for q in queues { group.addTask { await q.run() } }
            for s in shells { group.addTask { await s.run(clock: ContinuousClock()) } }
            for i in 0..<60 {
                let n = i % 3
                let result = try stores[n].execute("INSERT INTO items (id, name, qty) VALUES (?, ?, ?)",
                                                   [.integer(Int64(i)), .text("from \(names[n])"), .integer(Int64(i))])
                await shells[n].localCommit(result.changesets)
            }
            let converged = try await eventually(timeout: .seconds(20)) {
                let rows = try stores.map { try allRows($0) }
                return rows[0].count == 60 && rows[1] == rows[0] && rows[2] == rows[0]
            }
            #expect(converged)
            let m = await shells[0].metrics
            print("broadcast shell: a sent \(m.sends) frames (\(m.batchedSends) batched), \(m.changesetsSent) changesets; duplicates \(m.duplicates)")
            group.cancelAll()
        }
        #expect(try allRows(stores[1]) == allRows(stores[0]))
    }
}
