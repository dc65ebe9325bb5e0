/// One changed cell of a replicated table, or a row's causal-length marker.
///
/// A change is `(table, pk, cid, val, col_version, actor, version, seq, cl)`;
/// `actor` and `version` are shared by every change of a ``Changeset`` and live
/// there. `cid` is a column name, or ``Change/sentinelColumn`` for the row's
/// sentinel, whose `colVersion` equals `cl` and whose `val` is NULL.
public struct Change: Hashable, Sendable {
    public static let sentinelColumn = "-1"

    public var table: String
    public var pk: PackedPrimaryKey
    public var cid: String
    public var val: SQLValue
    public var colVersion: Int64
    public var seq: Int64
    /// The row's causal length: odd while the row exists, even once deleted.
    public var cl: Int64

    public init(table: String, pk: PackedPrimaryKey, cid: String, val: SQLValue, colVersion: Int64, seq: Int64, cl: Int64) {
        self.table = table
        self.pk = pk
        self.cid = cid
        self.val = val
        self.colVersion = colVersion
        self.seq = seq
        self.cl = cl
    }

    public var isSentinel: Bool { cid == Self.sentinelColumn }
}

/// The changes of one version of one actor, or a part of them.
///
/// A version's changes carry seqs `0...lastSeq`. A changeset covers the seq
/// range `seqs` of that version: every change of the version whose seq is in
/// `seqs` and whose cell has not been overwritten since is included, so a
/// receiver knows the version is complete once the seq ranges it holds cover
/// `0...lastSeq`, even when overwritten cells left holes in the seq numbers.
public struct Changeset: Hashable, Sendable {
    public enum Content: Hashable, Sendable {
        /// Changes of `version` with seqs in `seqs`, out of `0...lastSeq`.
        case changes(version: Int64, changes: [Change], seqs: ClosedRange<Int64>, lastSeq: Int64, ts: HybridTimestamp)
        /// Versions whose every cell was overwritten later: nothing to apply, but
        /// they count as received so nobody waits for them.
        case cleared(versions: ClosedRange<Int64>)
    }

    public var actor: ActorID
    public var content: Content

    public init(actor: ActorID, content: Content) {
        self.actor = actor
        self.content = content
    }

    public static func changes(
        actor: ActorID, version: Int64, changes: [Change], seqs: ClosedRange<Int64>, lastSeq: Int64, ts: HybridTimestamp
    ) -> Changeset {
        Changeset(actor: actor, content: .changes(version: version, changes: changes, seqs: seqs, lastSeq: lastSeq, ts: ts))
    }

    public static func cleared(actor: ActorID, versions: ClosedRange<Int64>) -> Changeset {
        Changeset(actor: actor, content: .cleared(versions: versions))
    }

    /// The versions this changeset is about.
    public var versions: ClosedRange<Int64> {
        switch content {
        case .changes(let version, _, _, _, _): version...version
        case .cleared(let versions): versions
        }
    }

    public var changeCount: Int {
        if case .changes(_, let changes, _, _, _) = content { return changes.count }
        return 0
    }

    /// True when this changeset holds every seq of its version.
    public var isComplete: Bool {
        switch content {
        case .changes(_, _, let seqs, let lastSeq, _): seqs.lowerBound == 0 && seqs.upperBound == lastSeq
        case .cleared: true
        }
    }
}
