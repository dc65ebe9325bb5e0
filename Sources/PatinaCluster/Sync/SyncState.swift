import PatinaCore
import PatinaStore

/// The seqs of a partially received version.
public struct PartialVersion: Hashable, Sendable {
    /// Seq ranges received so far, sorted and disjoint.
    public var seqs: [ClosedRange<Int64>]
    /// The version's last seq: it is complete once `seqs` covers `0...lastSeq`.
    public var lastSeq: Int64

    public init(seqs: [ClosedRange<Int64>], lastSeq: Int64) {
        self.seqs = seqs
        self.lastSeq = lastSeq
    }

    /// The seq ranges still missing.
    public var missing: [ClosedRange<Int64>] {
        VersionRangeSet(seqs).missing(in: 0...max(0, lastSeq))
    }
}

/// What one node knows, per actor: the state two nodes exchange at the start of
/// an anti-entropy session (Corrosion's `SyncStateV1`).
public struct SyncState: Hashable, Sendable {
    /// The node that built this state.
    public var actor: ActorID
    /// Highest version known per actor (complete or partial).
    public var heads: [ActorID: Int64]
    /// Versions at or below the head that the node lacks entirely.
    public var need: [ActorID: [ClosedRange<Int64>]]
    /// Versions the node holds only some seqs of.
    public var partials: [ActorID: [Int64: PartialVersion]]

    public init(actor: ActorID, heads: [ActorID: Int64] = [:], need: [ActorID: [ClosedRange<Int64>]] = [:],
                partials: [ActorID: [Int64: PartialVersion]] = [:]) {
        self.actor = actor
        self.heads = heads
        self.need = need
        self.partials = partials
    }

    /// The state of a store, from its bookkeeping.
    public init(actor: ActorID, bookkeeping: [ActorID: ActorBookkeeping]) {
        self.init(actor: actor)
        for (a, book) in bookkeeping {
            let head = book.head
            guard head > 0 else { continue }
            heads[a] = head
            let gaps = book.gaps
            if !gaps.isEmpty { need[a] = gaps }
            if !book.partials.isEmpty {
                partials[a] = book.partials.mapValues { PartialVersion(seqs: $0.seqs.ranges, lastSeq: $0.lastSeq) }
            }
        }
    }

    /// Versions of `actor` this node can serve: up to its head, minus its needs
    /// and partials (a store serves only complete versions).
    func servable(_ a: ActorID) -> VersionRangeSet {
        guard let head = heads[a], head > 0 else { return VersionRangeSet() }
        var holes = VersionRangeSet(need[a] ?? [])
        for v in (partials[a] ?? [:]).keys { holes.insert(v) }
        return VersionRangeSet(holes.missing(in: 1...head))
    }

    static func encode(_ s: SyncState, into w: inout WireWriter) {
        w.actor(s.actor)
        let heads = s.heads.sorted { $0.key < $1.key }
        w.count(heads.count)
        for (a, h) in heads {
            w.actor(a)
            w.signed(h)
        }
        let need = s.need.sorted { $0.key < $1.key }
        w.count(need.count)
        for (a, ranges) in need {
            w.actor(a)
            w.count(ranges.count)
            for r in ranges { w.range(r) }
        }
        let partials = s.partials.sorted { $0.key < $1.key }
        w.count(partials.count)
        for (a, versions) in partials {
            w.actor(a)
            let sorted = versions.sorted { $0.key < $1.key }
            w.count(sorted.count)
            for (v, p) in sorted {
                w.signed(v)
                w.signed(p.lastSeq)
                w.count(p.seqs.count)
                for r in p.seqs { w.range(r) }
            }
        }
    }

    static func decode(from r: inout WireReader) throws(WireError) -> SyncState {
        var s = SyncState(actor: try r.actor())
        let headCount = try r.count("heads", minElementBytes: 17)
        for _ in 0..<headCount {
            let a = try r.actor()
            s.heads[a] = try r.signed()
        }
        let needCount = try r.count("need", minElementBytes: 17)
        for _ in 0..<needCount {
            let a = try r.actor()
            let n = try r.count("need range", minElementBytes: 2)
            var ranges: [ClosedRange<Int64>] = []
            ranges.reserveCapacity(n)
            for _ in 0..<n { ranges.append(try r.range("need")) }
            s.need[a] = ranges
        }
        let partialCount = try r.count("partials", minElementBytes: 17)
        for _ in 0..<partialCount {
            let a = try r.actor()
            let n = try r.count("partial version", minElementBytes: 3)
            var versions: [Int64: PartialVersion] = [:]
            for _ in 0..<n {
                let v = try r.signed()
                let lastSeq = try r.signed()
                let k = try r.count("partial seq range", minElementBytes: 2)
                var seqs: [ClosedRange<Int64>] = []
                seqs.reserveCapacity(k)
                for _ in 0..<k { seqs.append(try r.range("partial seqs")) }
                versions[v] = PartialVersion(seqs: seqs, lastSeq: lastSeq)
            }
            s.partials[a] = versions
        }
        return s
    }
}
