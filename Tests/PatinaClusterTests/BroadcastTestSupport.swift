@testable import PatinaCluster
import PatinaCore

/// Deterministic actor ids for tests.
func clusterTestActor(_ n: UInt8) -> ActorID {
    ActorID(bytes: [n] + [UInt8](repeating: 0, count: 14) + [n &+ 1])!
}

/// A complete changeset of `count` changes, each carrying `valueBytes` of text.
func makeChangeset(_ actor: ActorID, version: Int64, count: Int = 1, valueBytes: Int = 8) -> Changeset {
    let changes = (0..<count).map { i in
        Change(table: "items", pk: PackedPrimaryKey([.integer(Int64(i))]), cid: "name",
               val: .text(String(repeating: "v", count: valueBytes)), colVersion: 1, seq: Int64(i), cl: 1)
    }
    let last = Int64(max(0, count - 1))
    return .changes(actor: actor, version: version, changes: changes, seqs: 0...last, lastSeq: last,
                    ts: HybridTimestamp(rawValue: UInt64(version)))
}

extension [BroadcastDirective] {
    var sends: [(peer: String, changesets: [Changeset])] {
        compactMap { (d: BroadcastDirective) -> (peer: String, changesets: [Changeset])? in
            if case .send(let p, let c) = d { return (p, c) }
            return nil
        }
    }
    var applied: [Changeset] {
        flatMap { (d: BroadcastDirective) -> [Changeset] in
            if case .apply(let c) = d { return c }
            return []
        }
    }
    var tickDelays: [Duration] {
        compactMap { (d: BroadcastDirective) -> Duration? in
            if case .scheduleTick(let after) = d { return after }
            return nil
        }
    }
}

/// `n` members named m1…mn with RTT i ms.
func membersWithRTT(_ n: Int) -> [BroadcastMember] {
    (1...n).map { BroadcastMember(id: "m\($0)", rtt: .milliseconds($0)) }
}
