import Foundation
@testable import PatinaCluster
import PatinaCore
import Testing

/// Wire codec: round trips of every message and value edge, frames split at
/// every byte, size limits, and a fuzz run proving decoders throw, never trap.
@Suite struct WireTests {
    static let actorA = ActorID(bytes: (0..<16).map { UInt8($0) })!
    static let actorB = ActorID(bytes: (0..<16).map { UInt8(255 - $0) })!

    static let edgeValues: [SQLValue] = [
        .null,
        .integer(0), .integer(1), .integer(-1), .integer(63), .integer(-64), .integer(64), .integer(127), .integer(128),
        .integer(Int64.min), .integer(Int64.max), .integer(Int64.min + 1), .integer(Int64.max - 1),
        .real(0.0), .real(-0.0), .real(1.5), .real(-.infinity), .real(.infinity), .real(.greatestFiniteMagnitude),
        .real(.leastNonzeroMagnitude), .real(Double(bitPattern: 0x7ff8_0000_0000_0001)),  // NaN with payload
        .real(Double(bitPattern: 0xfff0_0000_dead_beef)),  // negative signalling-NaN pattern
        .text(""), .text("a"), .text(String(repeating: "x", count: 127)), .text(String(repeating: "y", count: 128)),
        .text(String(repeating: "z", count: 129)), .text("héllo ✓ 🦀"), .text(String(repeating: "é", count: 40_000)),
        .blob([]), .blob([0]), .blob(Array(repeating: 0xff, count: 128)), .blob((0..<300).map { UInt8($0 % 256) }),
    ]

    /// Values compare by bit pattern for reals (NaN != NaN under ==).
    static func same(_ a: SQLValue, _ b: SQLValue) -> Bool {
        if case .real(let x) = a, case .real(let y) = b { return x.bitPattern == y.bitPattern }
        return a == b
    }

    static func sampleChangeset(_ actor: ActorID = actorA, version: Int64 = 7, values: [SQLValue] = edgeValues) -> Changeset {
        let changes = values.enumerated().map { i, v in
            Change(table: i % 3 == 0 ? "items" : "other_table", pk: PackedPrimaryKey([.integer(Int64(i)), .text("k\(i)")]),
                   cid: i % 2 == 0 ? "name" : Change.sentinelColumn, val: v, colVersion: Int64(i) - 3, seq: Int64(i),
                   cl: Int64(i % 5) + 1)
        }
        return .changes(actor: actor, version: version, changes: changes, seqs: 0...Int64(values.count - 1),
                        lastSeq: Int64(values.count - 1), ts: HybridTimestamp(rawValue: 0xffff_ffff_ffff_fff0))
    }

    static func roundTrip(_ m: WireMessage) throws -> WireMessage {
        var decoder = FrameDecoder()
        let frames = try decoder.feed(m.encodeFrame())
        try #require(frames.count == 1)
        try decoder.finish()
        return try WireMessage.decode(frames[0])
    }

    @Test func everyValueEdgeRoundTrips() throws {
        for v in Self.edgeValues {
            var w = WireWriter()
            ChangesetCodec.encode(v, into: &w)
            var r = WireReader(w.bytes)
            let back = try ChangesetCodec.decodeValue(from: &r)
            try r.expectEnd()
            #expect(Self.same(v, back), "\(v) came back as \(back)")
        }
    }

    @Test func changesetRoundTripKeepsEveryBit() throws {
        let cs = Self.sampleChangeset()
        guard case .changesets(let back) = try Self.roundTrip(.changesets([cs])) else {
            Issue.record("wrong message")
            return
        }
        try #require(back.count == 1)
        guard case .changes(let v, let changes, let seqs, let lastSeq, let ts) = back[0].content,
              case .changes(let v0, let changes0, let seqs0, let lastSeq0, let ts0) = cs.content
        else {
            Issue.record("wrong content")
            return
        }
        #expect(back[0].actor == cs.actor && v == v0 && seqs == seqs0 && lastSeq == lastSeq0 && ts == ts0)
        #expect(changes.count == changes0.count)
        for (a, b) in zip(changes, changes0) {
            #expect(a.table == b.table && a.pk == b.pk && a.cid == b.cid && a.colVersion == b.colVersion
                    && a.seq == b.seq && a.cl == b.cl)
            #expect(Self.same(a.val, b.val), "\(a.val) vs \(b.val)")
        }
    }

    @Test func everyMessageRoundTrips() throws {
        let noNaN = Self.edgeValues.filter { if case .real(let d) = $0 { return !d.isNaN } else { return true } }
        let cs = Self.sampleChangeset(values: noNaN)
        let cleared = Changeset.cleared(actor: Self.actorB, versions: 3...900)
        let empty = Changeset.changes(actor: Self.actorB, version: Int64.max, changes: [], seqs: 5...9, lastSeq: 9, ts: .zero)
        let state = SyncState(
            actor: Self.actorA,
            heads: [Self.actorA: 10, Self.actorB: Int64.max],
            need: [Self.actorB: [1...3, 7...7, 100...Int64.max]],
            partials: [Self.actorB: [5: PartialVersion(seqs: [0...3, 9...12], lastSeq: 20), 6: PartialVersion(seqs: [], lastSeq: 0)]])
        let messages: [WireMessage] = [
            .changesets([cs, cleared, empty]), .changesets([]),
            .syncState(state), .syncState(SyncState(actor: Self.actorB)),
            .syncChangesets([cleared, cs]), .syncDone(heldBack: 0), .syncDone(heldBack: 300), .syncBusy, .syncAbort("too slow ✓"), .syncAbort(""),
        ]
        for m in messages {
            #expect(try Self.roundTrip(m) == m, "\(m.frameType)")
        }
    }

    @Test func framesSurviveEverySplit() throws {
        let small = Self.sampleChangeset(values: Array(Self.edgeValues.prefix(20)))
        let messages: [WireMessage] = [.syncDone(heldBack: 0), .changesets([small]), .syncAbort("x"), .syncBusy]
        let stream = messages.flatMap { $0.encodeFrame() }
        // Every single split point, and byte-at-a-time.
        for cut in 0...stream.count {
            var d = FrameDecoder()
            var frames = try d.feed(stream[..<cut])
            frames += try d.feed(stream[cut...])
            try d.finish()
            #expect(try frames.map { try WireMessage.decode($0) }.count == messages.count)
        }
        var d = FrameDecoder()
        var frames: [Frame] = []
        for b in stream { frames += try d.feed([b]) }
        #expect(try frames.map { try WireMessage.decode($0) } .map(\.frameType) == messages.map(\.frameType))
        #expect(d.bufferedByteCount == 0)
    }

    @Test func oversizedFrameRejectedBeforeBuffering() throws {
        var d = FrameDecoder(maxFrameSize: 1024)
        // Header announces 1025 bytes; only the 4 length bytes are given.
        #expect(throws: WireError.self) { _ = try d.feed([0, 0, 4, 1]) }
        // Poisoned afterwards.
        #expect(throws: WireError.self) { _ = try d.feed([0, 0, 0, 1, 0x12]) }
        var d2 = FrameDecoder()
        do {
            _ = try d2.feed([0xff, 0xff, 0xff, 0xff])
            Issue.record("a 4 GiB frame was accepted")
        } catch {
            #expect(error.isFrameTooLarge)
            #expect(d2.bufferedByteCount == 0)
        }
        // Exactly at the limit is fine.
        var d3 = FrameDecoder(maxFrameSize: 11)
        let frame = Frame(type: 0x12, payload: Array(repeating: 0, count: 10)).encoded()
        #expect(try d3.feed(frame).count == 1)
        var d4 = FrameDecoder()
        #expect(throws: WireError.self) { _ = try d4.feed([0, 0, 0, 0]) }  // empty frame
    }

    @Test func truncatedStreamIsAnError() throws {
        var d = FrameDecoder()
        let f = WireMessage.syncAbort("hello").encodeFrame()
        #expect(try d.feed(f.dropLast()).isEmpty)
        #expect(throws: WireError.streamEndedMidFrame) { try d.finish() }
    }

    @Test func forgedCountsAndRangesThrow() throws {
        // A changesets frame claiming 2^62 changesets.
        var w = WireWriter()
        w.varint(1 << 62)
        #expect(throws: WireError.self) { _ = try WireMessage.decode(Frame(type: 0x01, payload: w.bytes)) }
        // A cleared range with lower > upper must throw (ClosedRange would trap).
        var w2 = WireWriter()
        w2.count(1)
        w2.actor(Self.actorA)
        w2.u8(1)
        w2.signed(10)
        w2.signed(2)
        #expect(throws: WireError.self) { _ = try WireMessage.decode(Frame(type: 0x01, payload: w2.bytes)) }
        // A varint of 11 bytes.
        var r = WireReader(Array(repeating: 0xff, count: 11))
        #expect(throws: WireError.self) { _ = try r.varint() }
        // Max UInt64 varint decodes, one more bit overflows.
        var w3 = WireWriter()
        w3.varint(.max)
        var r3 = WireReader(w3.bytes)
        #expect(try r3.varint() == .max)
        var bad = w3.bytes
        bad[9] = 0x02
        var r4 = WireReader(bad)
        #expect(throws: WireError.self) { _ = try r4.varint() }
        // Invalid UTF-8 text.
        #expect(throws: WireError.self) {
            _ = try WireMessage.decode(Frame(type: 0x14, payload: [2, 0xc3, 0x28]))
        }
        // Unknown type, trailing bytes.
        #expect(throws: WireError.self) { _ = try WireMessage.decode(Frame(type: 0x77, payload: [])) }
        #expect(throws: WireError.self) { _ = try WireMessage.decode(Frame(type: 0x12, payload: [5, 0])) }
        // syncDone's held-back count is absent when zero, never an explicit 0.
        #expect(throws: WireError.self) { _ = try WireMessage.decode(Frame(type: 0x12, payload: [0])) }
    }

    /// ~50k random and mutated inputs through the frame decoder and every
    /// message decoder; none may trap. Bounded to a few seconds.
    @Test func fuzzDecodersNeverTrap() throws {
        var rng = SplitMix64(seed: 0x5eed_f022)
        let state = SyncState(actor: Self.actorA, heads: [Self.actorB: 9], need: [Self.actorB: [1...2]],
                              partials: [Self.actorB: [4: PartialVersion(seqs: [0...1], lastSeq: 3)]])
        let seeds: [[UInt8]] = [
            WireMessage.changesets([Self.sampleChangeset(values: Array(Self.edgeValues.prefix(12)))]).encodeFrame(),
            WireMessage.syncChangesets([.cleared(actor: Self.actorB, versions: 1...5)]).encodeFrame(),
            WireMessage.syncState(state).encodeFrame(),
            WireMessage.syncAbort("reason").encodeFrame(),
        ]
        let deadline = ContinuousClock.now + .seconds(20)
        var decoded = 0
        var rejected = 0
        var iterations = 0
        while iterations < 50_000 && ContinuousClock.now < deadline {
            iterations += 1
            var input: [UInt8]
            if iterations % 5 == 0 {
                input = (0..<Int(rng.next() % 200)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            } else {
                input = seeds[Int(rng.next() % UInt64(seeds.count))]
                for _ in 0..<(1 + Int(rng.next() % 4)) {
                    guard !input.isEmpty else { break }
                    let i = Int(rng.next() % UInt64(input.count))
                    switch rng.next() % 4 {
                    case 0: input[i] = UInt8(truncatingIfNeeded: rng.next())
                    case 1: input[i] ^= 1 << UInt8(rng.next() % 8)
                    case 2: input.removeSubrange(i..<min(input.count, i + 1 + Int(rng.next() % 8)))
                    default: input.insert(UInt8(truncatingIfNeeded: rng.next()), at: i)
                    }
                }
            }
            // Through the frame decoder in random pieces.
            var d = FrameDecoder(maxFrameSize: 64 * 1024)
            var offset = 0
            do {
                while offset < input.count {
                    let n = 1 + Int(rng.next() % 64)
                    let frames = try d.feed(input[offset..<min(input.count, offset + n)])
                    offset += n
                    for f in frames {
                        _ = try WireMessage.decode(f)
                        decoded += 1
                    }
                }
                try d.finish()
            } catch {
                rejected += 1
            }
            // And straight into each payload decoder.
            for type in FrameType.allCases {
                if (try? WireMessage.decode(Frame(type: type.rawValue, payload: input))) != nil { decoded += 1 }
            }
        }
        #expect(iterations >= 10_000, "only \(iterations) fuzz iterations in the time bound")
        #expect(rejected > 0 && decoded > 0)
    }

    @Test func splitTilesSeqsAndBoundsBytes() throws {
        let values = (0..<500).map { SQLValue.text(String(repeating: "v", count: 100 + $0 % 50)) }
        let cs = Self.sampleChangeset(values: values)
        let pieces = cs.split(maxBytes: 4096)
        #expect(pieces.count > 10)
        var next: Int64 = 0
        var changeCount = 0
        for p in pieces {
            guard case .changes(let v, let changes, let seqs, let lastSeq, _) = p.content else {
                Issue.record("not changes")
                return
            }
            #expect(v == 7 && lastSeq == 499)
            #expect(seqs.lowerBound == next)
            next = seqs.upperBound + 1
            #expect(changes.allSatisfy { seqs.contains($0.seq) })
            changeCount += changes.count
            var w = WireWriter()
            ChangesetCodec.encode(p, into: &w)
            #expect(w.bytes.count <= 4096)
        }
        #expect(next == 500 && changeCount == 500)
        #expect(cs.split(maxBytes: 1 << 30) == [cs])
        #expect(cs.split(maxBytes: 1 << 30, maxChanges: 100).count == 5)
    }
}
