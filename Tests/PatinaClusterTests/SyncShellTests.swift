@testable import PatinaCluster
import PatinaCore
import PatinaStore
import Synchronization
import Testing

/// Sync sessions between real stores on temp SQLite files, over in-memory
/// streams that deliver writes in random pieces.
@Suite struct SyncShellTests {
    static func insert(_ store: Store, _ id: Int64) throws -> [Changeset] {
        try store.execute("INSERT INTO items (id, name, qty) VALUES (?, ?, ?)",
                          [.integer(id), .text("name \(id)"), .integer(id * 3)]).changesets
    }

    /// Serves one session from `server` to `client` and returns both reports.
    static func session(client: SyncShell, server: SyncShell, seed: UInt64) async throws
        -> (SyncSessionReport, SyncServeReport)
    {
        let (c, s) = memoryStreamPair(seed: seed)
        async let served = server.serve(s)
        let pulled = try await client.pull(from: "server", over: c)
        return (pulled, try await served)
    }

    @Test func nodeThatMissed1000VersionsCatchesUpWithIdenticalRows() async throws {
        let dir = SyncTempDir()
        let a = try makeSyncStore(dir, "a.db"), b = try makeSyncStore(dir, "b.db"), c = try makeSyncStore(dir, "c.db")
        // A common start: 10 versions everyone has.
        var early: [Changeset] = []
        for i in 1...10 as ClosedRange<Int64> { early += try Self.insert(a, i) }
        try b.merge(early)
        try c.merge(early)
        // 1000 versions B misses: inserts, updates that overwrite older
        // versions completely (so A serves them as cleared), and deletes.
        for i in 11...1010 as ClosedRange<Int64> {
            switch i % 10 {
            // Row x4 is inserted, later updated (name, qty), later deleted: its
            // insert version ends up fully overwritten, i.e. cleared.
            case 0: try a.execute("UPDATE items SET name = ?, qty = ? WHERE id = ?", [.text("upd \(i)"), .integer(-i), .integer(i - 6)])
            case 7 where i > 27: try a.execute("DELETE FROM items WHERE id = ?", [.integer(i - 13)])
            default: _ = try Self.insert(a, i)
            }
        }
        // One large transaction, split by the store; B holds only its first part.
        let big = try a.write { tx in
            for k in 0..<700 as Range<Int64> {
                try tx.execute("INSERT INTO items (id, name, qty) VALUES (?, ?, ?)", [.integer(5000 + k), .text("big \(k)"), .integer(k)])
            }
        }
        #expect(big.changesets.count > 1)
        try b.merge([big.changesets[0]])
        #expect(b.bookkeeping()[a.actorID]?.partials.isEmpty == false)
        // C writes versions of its own that nobody has.
        for i in 20_000..<20_050 as Range<Int64> { _ = try Self.insert(c, i) }

        let qa = ApplyQueue(store: a), qb = ApplyQueue(store: b), qc = ApplyQueue(store: c)
        var config = SyncConfig()
        config.inFlightGrace = .zero  // these writes are fresh: serve them at once
        config.maxChangesPerFrame = 1000
        config.maxBytesPerFrame = 64 * 1024
        let sa = SyncShell(store: a, config: config, seed: 1) { await qa.enqueue($0) }
        let clearedSeen = Mutex(0)
        let sb = SyncShell(store: b, config: config, seed: 2) { changesets in
            let cleared = changesets.filter { if case .cleared = $0.content { true } else { false } }.count
            clearedSeen.withLock { $0 += cleared }
            await qb.enqueue(changesets)
        }
        let sc = SyncShell(store: c, config: config, seed: 3) { await qc.enqueue($0) }

        try await withThrowingTaskGroup(of: Void.self) { group in
            for q in [qa, qb, qc] { group.addTask { await q.run() } }

            let clock = ContinuousClock()
            let started = clock.now
            let (pulled, served) = try await Self.session(client: sb, server: sa, seed: 11)
            await qb.waitUntilIdle()
            let elapsed = started.duration(to: clock.now)
            print("sync: 1000 versions + partial pulled in \(elapsed): \(pulled.frames) frames, \(pulled.changesetsReceived) changesets, \(pulled.changesReceived) changes")
            #expect(pulled.foundMissing && pulled.needs >= 1)
            #expect(clearedSeen.withLock { $0 } > 0, "fully overwritten versions travel as cleared")
            #expect(served.frames == pulled.frames && served.changesetsSent == pulled.changesetsReceived)
            #expect(pulled.frames >= pulled.changesReceived / 1000)
            #expect(try allRows(a) == allRows(b))
            #expect(b.bookkeeping()[a.actorID]?.partials.isEmpty == true)
            #expect(b.heads()[a.actorID] == a.heads()[a.actorID])
            let stats = await qb.stats
            #expect(stats.rejections == 0 && stats.mergeErrors == 0)

            // Nothing left to pull: the next session finds nothing.
            let (again, _) = try await Self.session(client: sb, server: sa, seed: 12)
            #expect(!again.foundMissing && again.needs == 0)

            // Three nodes: B pulls C's versions; C pulls everything (A's via B); A pulls C.
            _ = try await Self.session(client: sb, server: sc, seed: 13)
            await qb.waitUntilIdle()
            _ = try await Self.session(client: sc, server: sb, seed: 14)
            await qc.waitUntilIdle()
            _ = try await Self.session(client: sa, server: sc, seed: 15)
            await qa.waitUntilIdle()
            group.cancelAll()
        }
        let rowsA = try allRows(a)
        #expect(rowsA.count > 1000)
        #expect(try allRows(b) == rowsA)
        #expect(try allRows(c) == rowsA)
        #expect(a.heads() == b.heads() && b.heads() == c.heads())
        for store in [a, b, c] {
            #expect(store.bookkeeping().values.allSatisfy { $0.gaps.isEmpty && $0.partials.isEmpty })
        }
    }

    /// A fake server: reads the client's state, answers with `frames`, closes.
    static func fakeServer(_ stream: MemorySyncStream, _ bytes: [UInt8]) async throws {
        var reader = FrameReader(stream: stream, timeout: .seconds(5))
        _ = try await reader.next()
        try await stream.write(bytes)
        try await stream.finish()
    }

    @Test(arguments: 0..<6)
    func malformedFrameFromPeerEndsTheSessionWithAnError(variant: Int) async throws {
        let dir = SyncTempDir()
        let store = try makeSyncStore(dir, "b.db")
        let shell = SyncShell(store: store, seed: 1) { _ in Issue.record("nothing may be applied") }
        let peer = clusterTestActor(9)
        let state = WireMessage.syncState(SyncState(actor: peer, heads: [peer: 5])).encodeFrame()
        var good = WireMessage.syncChangesets([makeChangeset(peer, version: 1)]).encodeFrame()
        let reply: [UInt8]
        switch variant {
        case 0: reply = state + [0, 0, 0, 6, 0x11, 5, 0xff, 0xff, 0xff, 0xff]  // count 5, then garbage
        case 1: reply = state + [0, 0, 0, 1, 0x77]  // unknown frame type
        case 2: reply = state + [0xff, 0xff, 0xff, 0xff, 0x11]  // 4 GiB frame announced
        case 3: reply = state + Array(good.dropLast(3))  // stream ends mid-frame
        case 4:
            good[good.count - 1] = 0x80  // last zigzag varint left unterminated
            reply = state + good
        default: reply = [0, 0, 0, 3, 0x10, 0xde, 0xad]  // a state frame that is not one
        }
        let (c, s) = memoryStreamPair(seed: UInt64(variant))
        async let fake: Void = Self.fakeServer(s, reply)
        do {
            let report = try await shell.pull(from: "evil", over: c)
            Issue.record("session succeeded: \(report)")
        } catch {
            #expect(error.isMalformed, "\(error)")
        }
        try await fake
        #expect(store.heads()[peer] == nil)
    }

    @Test func malformedRequestIsAbortedByTheServer() async throws {
        let dir = SyncTempDir()
        let store = try makeSyncStore(dir, "a.db")
        _ = try Self.insert(store, 1)
        let shell = SyncShell(store: store, seed: 1) { _ in }
        let (c, s) = memoryStreamPair()
        try await c.write([0, 0, 0, 4, 0x10, 1, 2, 3])
        try await c.finish()
        do {
            _ = try await shell.serve(s)
            Issue.record("served a malformed request")
        } catch {
            #expect(error.isMalformed)
        }
        var reader = FrameReader(stream: c, timeout: .seconds(5))
        guard case .syncAbort(let reason)? = try await reader.next() else {
            Issue.record("no abort sent")
            return
        }
        #expect(reason.contains("malformed"))
        #expect(await shell.stateMachine.servedSessions == 0, "the slot is released")
    }

    @Test func extraSessionsGetBusyAndTheSlotFreesUp() async throws {
        let dir = SyncTempDir()
        let a = try makeSyncStore(dir, "a.db"), b = try makeSyncStore(dir, "b.db")
        _ = try Self.insert(a, 1)
        var config = SyncConfig()
        config.inFlightGrace = .zero  // these writes are fresh: serve them at once
        config.maxServedSessions = 1
        let server = SyncShell(store: a, config: config, seed: 1) { _ in }
        let client = SyncShell(store: b, seed: 2) { cs in _ = try? b.merge(cs) }

        // A first client that connects and says nothing holds the only slot.
        let (silent, silentServer) = memoryStreamPair(seed: 1)
        async let first: SyncServeReport? = try? await server.serve(silentServer)
        #expect(await eventually { await server.stateMachine.servedSessions == 1 })

        let (c, s) = memoryStreamPair(seed: 2)
        async let busyServe = server.serve(s)
        do {
            _ = try await client.pull(from: "a", over: c)
            Issue.record("expected busy")
        } catch {
            #expect(error == .busy)
        }
        #expect(try await busyServe.busy)
        #expect(await server.stateMachine.rejectedBusy == 1)
        #expect(await server.stats.servedBusy == 1)

        try await silent.finish()  // the silent client goes away
        #expect(await first == nil, "the silent session should fail")
        #expect(await server.stats.servedFailed == 1)
        #expect(await server.stats.servedOK == 0)
        let (pulled, _) = try await Self.session(client: client, server: server, seed: 3)
        #expect(pulled.foundMissing)
        #expect(try allRows(b) == allRows(a))
    }

    @Test(.timeLimit(.minutes(1))) func slowPeerTimesOut() async throws {
        let dir = SyncTempDir()
        let store = try makeSyncStore(dir, "b.db")
        var config = SyncConfig()
        config.ioTimeout = .milliseconds(200)
        let shell = SyncShell(store: store, config: config, seed: 1) { _ in }
        let (c, _s) = memoryStreamPair()
        let started = ContinuousClock.now
        do {
            _ = try await shell.pull(from: "slow", over: c)
            Issue.record("a silent peer did not time out")
        } catch {
            #expect(error == .timeout)
        }
        // Not before the timeout; the upper side is the time limit (a shared CI
        // box can starve timers, so no tight bound here).
        #expect(started.duration(to: .now) >= .milliseconds(200))
        _ = _s
    }

    @Test func roundsPickPeersAndPullThroughAConnector() async throws {
        let dir = SyncTempDir()
        let a = try makeSyncStore(dir, "a.db"), b = try makeSyncStore(dir, "b.db")
        for i in 1...20 as ClosedRange<Int64> { _ = try Self.insert(a, i) }
        var config = SyncConfig()
        config.inFlightGrace = .zero  // these writes are fresh: serve them at once
        config.jitter = 0
        let server = SyncShell(store: a, config: config, seed: 1) { _ in }
        let client = SyncShell(store: b, config: config, seed: 2) { cs in _ = try? b.merge(cs) }
        await client.membersChanged([SyncPeer(id: "a", rtt: .milliseconds(2))])
        let connector = InMemoryConnector(servers: ["a": server])
        #expect(await client.tick(now: .zero, connector: connector).isEmpty, "first round is a second away")
        let results = await client.tick(now: .seconds(1), connector: connector)
        #expect(results.count == 1)
        #expect((try? results[0].get())?.foundMissing == true)
        #expect(try allRows(b) == allRows(a))
        #expect(await client.stateMachine.interval == .seconds(1), "found something: stay at the minimum")
        var stats = await client.stats
        #expect(stats.rounds == 1 && stats.pulledOK == 1 && stats.pulledFailed == 0)
        #expect(stats.changesetsPulled == 20 && stats.changesPulled >= 20)
        let second = await client.tick(now: .seconds(2), connector: connector)
        #expect((try? second.first?.get())?.foundMissing == false)
        #expect(await client.stateMachine.interval == .seconds(2), "found nothing: back off")
        stats = await client.stats
        #expect(stats.rounds == 2 && stats.pulledOK == 2 && stats.changesetsPulled == 20, "the second round found nothing")
        // The server counts a session once it has finished its side, just after the client saw the end.
        #expect(await eventually { await server.stats.servedOK == 2 })
        #expect(await server.stats.changesetsServed == 20)
    }

    @Test func changesStillInFlightAreHeldBackUntilTheGracePasses() async throws {
        let dir = SyncTempDir()
        let a = try makeSyncStore(dir, "a.db"), b = try makeSyncStore(dir, "b.db")
        var written: [Changeset] = []
        for i in 1...5 as ClosedRange<Int64> { written += try Self.insert(a, i) }
        // The server's wall clock is driven by hand, starting at the newest commit.
        let newest = written.compactMap { c -> UInt64? in
            if case .changes(_, _, _, _, let ts) = c.content { return ts.milliseconds }
            return nil
        }.max() ?? 0
        var config = SyncConfig()
        config.inFlightGrace = .seconds(2)
        let now = Mutex<UInt64>(newest)
        let server = SyncShell(store: a, config: config, seed: 1, wallClockMilliseconds: { now.withLock { $0 } }) { _ in }
        let client = SyncShell(store: b, seed: 2) { cs in _ = try? b.merge(cs) }
        // Just written: broadcast is still on it, so the server sends none of it.
        let (early, earlyServed) = try await Self.session(client: client, server: server, seed: 1)
        #expect(early.changesetsReceived == 0 && earlyServed.heldBack == 5 && early.heldBack == 5)
        #expect(early.foundMissing, "held back, not absent: rounds stay at the minimum interval")
        #expect(try allRows(b).isEmpty)
        // Three seconds on, the same changes are no longer in flight.
        now.withLock { $0 = newest + 3000 }
        let (late, lateServed) = try await Self.session(client: client, server: server, seed: 2)
        #expect(late.changesetsReceived == 5 && lateServed.heldBack == 0)
        #expect(try allRows(b) == allRows(a))
        let stats = await server.stats
        #expect(stats.changesetsHeldBack == 5 && stats.changesetsServed == 5)

        // A server whose clock is 10 s behind sees the writes 10 s in the future:
        // a clock that is off, not a change in flight, so they are served at once.
        let c = try makeSyncStore(dir, "c.db")
        now.withLock { $0 = newest - 10_000 }
        let third = SyncShell(store: c, seed: 3) { cs in _ = try? c.merge(cs) }
        let (behind, behindServed) = try await Self.session(client: third, server: server, seed: 3)
        #expect(behind.changesetsReceived == 5 && behindServed.heldBack == 0)
    }

    @Test func aRoundWhosePeerCannotBeReachedCountsAsFailed() async throws {
        let dir = SyncTempDir()
        let b = try makeSyncStore(dir, "b.db")
        var config = SyncConfig()
        config.jitter = 0
        let client = SyncShell(store: b, config: config, seed: 2) { _ in }
        await client.membersChanged([SyncPeer(id: "gone", rtt: .milliseconds(2))])
        let connector = InMemoryConnector(servers: [:])
        _ = await client.tick(now: .zero, connector: connector)
        let results = await client.tick(now: .seconds(1), connector: connector)
        #expect(results.count == 1)
        let stats = await client.stats
        #expect(stats.rounds == 1 && stats.pulledFailed == 1 && stats.pulledOK == 0 && stats.changesetsPulled == 0)
    }
}

/// Connects sync clients to in-process servers.
struct InMemoryConnector: SyncConnector {
    let servers: [String: SyncShell]
    func openSyncStream(to peer: String) async throws -> any SyncStream {
        guard let server = servers[peer] else { throw SyncError.timeout }
        let (c, s) = memoryStreamPair()
        // The server side runs as a child of the pipe's lifetime: it ends when the client finishes.
        Task { _ = try? await server.serve(s) }
        return c
    }
}
