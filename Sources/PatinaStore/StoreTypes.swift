import PatinaCore

/// A problem with the database file itself, found when opening it.
public struct StoreOpenError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let reason: String
    public var description: String { "cannot open \(path): \(reason)" }
}

/// Why one changeset of a merge batch was refused. The rest of the batch applies.
public struct ChangesetRejection: Error, CustomStringConvertible, Sendable, Equatable {
    /// Index of the changeset in the batch.
    public let index: Int
    public let actor: ActorID
    public let versions: ClosedRange<Int64>
    public let reason: String
    public var description: String { "changeset \(index) from \(actor) v\(versions): \(reason)" }
}

/// What one merge batch did.
public struct MergeOutcome: Sendable {
    /// Changesets whose changes were applied (complete versions, or partial
    /// ones that became complete), plus cleared ranges recorded.
    public var appliedVersions = 0
    /// Changesets already known (duplicates), skipped.
    public var duplicates = 0
    /// Partial changesets buffered until their version is complete.
    public var buffered = 0
    /// Individual changes that won and were written.
    public var changesWritten = 0
    public var rejections: [ChangesetRejection] = []
}

/// How a row changed, as seen by listeners.
public enum RowChangeKind: Sendable, Hashable {
    case upsert
    case delete
}

/// Told to listeners after each commit: which rows of which tables changed.
public struct CommitEvent: Sendable {
    public enum Source: Sendable, Equatable {
        case local(version: Int64)
        case remote
    }
    public var source: Source
    /// table → packed pk → what happened to the row last.
    public var rows: [String: [PackedPrimaryKey: RowChangeKind]]
    /// Origin actor and commit time of each remote version applied (for
    /// propagation lag, labelled by the origin's region).
    public var origins: [RemoteOrigin] = []
}

/// Who committed a remote version, and when (their hybrid logical clock).
public struct RemoteOrigin: Sendable, Hashable {
    public var actor: ActorID
    public var timestamp: HybridTimestamp
    public init(actor: ActorID, timestamp: HybridTimestamp) {
        self.actor = actor
        self.timestamp = timestamp
    }
}

/// The result of a local write transaction.
public struct WriteResult<Value: Sendable>: Sendable {
    public var value: Value
    /// The version this transaction took, or nil when it changed nothing.
    public var version: Int64?
    /// The transaction's changes, ready to broadcast (empty when nothing changed).
    public var changesets: [Changeset]
}

/// What a node knows about one actor's versions: the state sync exchanges.
public struct ActorBookkeeping: Sendable, Equatable {
    public var applied = VersionRangeSet()
    /// Applied versions whose every cell has since been overwritten.
    public var cleared = VersionRangeSet()
    /// Partial versions: version → seqs received so far, out of `0...lastSeq`.
    public var partials: [Int64: (seqs: VersionRangeSet, lastSeq: Int64)] = [:]

    /// The highest version known, complete or partial.
    public var head: Int64 { max(applied.max ?? 0, partials.keys.max() ?? 0) }

    /// Versions up to `head` that are neither applied nor partially received.
    public var gaps: [ClosedRange<Int64>] {
        var known = applied
        for v in partials.keys { known.insert(v) }
        return known.gaps(upTo: head)
    }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.applied == rhs.applied && lhs.cleared == rhs.cleared
            && lhs.partials.mapValues { "\($0.seqs)/\($0.lastSeq)" } == rhs.partials.mapValues { "\($0.seqs)/\($0.lastSeq)" }
    }
}
