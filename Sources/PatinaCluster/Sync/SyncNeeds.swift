import PatinaCore

/// Something a node lacks that a peer can serve.
public enum SyncNeed: Hashable, Sendable {
    /// Whole versions (sent as changes or as `.cleared`).
    case full(actor: ActorID, versions: ClosedRange<Int64>)
    /// The missing seqs of a version the node holds partially.
    case partial(actor: ActorID, version: Int64, seqs: [ClosedRange<Int64>])

    public var actor: ActorID {
        switch self {
        case .full(let a, _), .partial(let a, _, _): a
        }
    }

    /// Versions it names (a partial need names one).
    public var versionCount: Int64 {
        switch self {
        case .full(_, let v):
            v.upperBound.subtractingReportingOverflow(v.lowerBound).overflow
                ? .max : min(.max - 1, v.upperBound - v.lowerBound) + 1
        case .partial: 1
        }
    }
}

extension SyncState {
    /// What `local` lacks that `remote` can serve, sorted by actor then version.
    ///
    /// `local` lacks the versions above its head, the ones in its `need`, and
    /// the missing seqs of its partial versions. `remote` can serve the
    /// versions up to its head that are neither in its own `need` nor partial
    /// there (a store serves complete versions only; cleared ones go out as
    /// `.cleared`). Pure: the server runs it on the client's state and its own.
    public static func needs(local: SyncState, remote: SyncState) -> [SyncNeed] {
        let local = local.sanitized()
        let remote = remote.sanitized()
        var result: [SyncNeed] = []
        for actor in remote.heads.keys.sorted() {
            let servable = remote.servable(actor)
            guard !servable.isEmpty else { continue }
            let localHead = max(0, local.heads[actor] ?? 0)
            let localPartials = local.partials[actor] ?? [:]
            var lacking = VersionRangeSet(local.need[actor] ?? [])
            if let remoteHead = servable.max, remoteHead > localHead { lacking.insert((localHead + 1)...remoteHead) }
            // Partial versions are asked for by seq, below.
            var partialSet = VersionRangeSet()
            for v in localPartials.keys { partialSet.insert(v) }
            var wanted: [(ClosedRange<Int64>)] = []
            for r in lacking.ranges {
                for piece in partialSet.missing(in: r) {
                    // Intersect with what the remote holds.
                    for s in servable.ranges where s.upperBound >= piece.lowerBound && s.lowerBound <= piece.upperBound {
                        wanted.append(max(s.lowerBound, piece.lowerBound)...min(s.upperBound, piece.upperBound))
                    }
                }
            }
            var partialNeeds: [(Int64, [ClosedRange<Int64>])] = []
            for (v, p) in localPartials where servable.contains(v) {
                let missing = p.missing
                if !missing.isEmpty { partialNeeds.append((v, missing)) }
            }
            // Merge both lists in version order.
            var items: [(Int64, SyncNeed)] = wanted.map { ($0.lowerBound, .full(actor: actor, versions: $0)) }
            items += partialNeeds.map { ($0.0, .partial(actor: actor, version: $0.0, seqs: $0.1)) }
            items.sort { $0.0 < $1.0 }
            result += items.map(\.1)
        }
        return result
    }

    /// Largest version and seq a peer's state may name; anything beyond is
    /// clipped, so range arithmetic cannot overflow.
    static let maxVersion: Int64 = 1 << 62
    static let maxSeq: Int64 = 1 << 40
    /// Per-actor bound on need ranges and partial versions, and on seq ranges
    /// per partial: a hostile state cannot buy quadratic work. What is cut
    /// is asked for again next round.
    static let maxRangesPerActor = 10_000
    static let maxSeqRanges = 1_000

    /// This state with every number clipped to sane bounds and every list cut
    /// to its limit (states come from the network).
    public func sanitized() -> SyncState {
        func clip(_ r: ClosedRange<Int64>, _ lo: Int64, _ hi: Int64) -> ClosedRange<Int64>? {
            let l = max(r.lowerBound, lo), u = min(r.upperBound, hi)
            return l <= u ? l...u : nil
        }
        var s = SyncState(actor: actor)
        for (a, h) in heads where h > 0 { s.heads[a] = min(h, Self.maxVersion) }
        for (a, ranges) in need {
            let clipped = ranges.prefix(Self.maxRangesPerActor).compactMap { clip($0, 1, Self.maxVersion) }
            if !clipped.isEmpty { s.need[a] = clipped }
        }
        for (a, versions) in partials {
            var kept: [Int64: PartialVersion] = [:]
            for (v, p) in versions where v >= 1 && v <= Self.maxVersion && p.lastSeq >= 0 && p.lastSeq <= Self.maxSeq {
                guard kept.count < Self.maxRangesPerActor else { break }
                kept[v] = PartialVersion(seqs: p.seqs.prefix(Self.maxSeqRanges).compactMap { clip($0, 0, p.lastSeq) },
                                         lastSeq: p.lastSeq)
            }
            if !kept.isEmpty { s.partials[a] = kept }
        }
        return s
    }

    /// How many versions `remote` holds above this node's heads, judging by heads
    /// only (used to prefer peers that are ahead).
    public func versionsBehind(_ remoteHeads: [ActorID: Int64]) -> Int64 {
        var total: Int64 = 0
        for (a, h) in remoteHeads {
            let mine = heads[a] ?? 0
            if h > mine {
                let (d, o1) = h.subtractingReportingOverflow(mine)
                let (t, o2) = total.addingReportingOverflow(d)
                total = o1 || o2 ? .max : t
            }
        }
        return total
    }
}
