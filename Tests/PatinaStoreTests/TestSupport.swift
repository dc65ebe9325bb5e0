import Foundation
import PatinaCore
@testable import PatinaStore
import Testing

/// A temporary directory removed when the value is released.
final class TempDir {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "patina-test-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func file(_ name: String) -> String { path + "/" + name }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

let itemsSchema = """
    CREATE TABLE items (id INTEGER NOT NULL PRIMARY KEY, name TEXT, qty INTEGER NOT NULL DEFAULT 0);
    """

func makeStore(_ dir: TempDir, _ name: String = "a.db", schema: String = itemsSchema) throws -> Store {
    let store = try Store(path: dir.file(name))
    try store.applySchema(sql: schema)
    return store
}

func pk(_ values: SQLValue...) -> PackedPrimaryKey { PackedPrimaryKey(values) }

/// The changes a changeset carries; the test fails (not passes silently) for a cleared range.
func changesIn(_ changeset: Changeset, sourceLocation: SourceLocation = #_sourceLocation) throws -> [Change] {
    guard case .changes(_, let changes, _, _, _) = changeset.content else {
        Issue.record("expected changes, got \(changeset.content)", sourceLocation: sourceLocation)
        throw ExpectedChanges()
    }
    return changes
}

struct ExpectedChanges: Error {}

/// A hand-made changeset of one complete version.
func changeset(_ actor: ActorID, _ version: Int64, _ changes: [Change], ts: UInt64 = 1) -> Changeset {
    var numbered = changes
    for i in numbered.indices { numbered[i].seq = Int64(i) }
    let last = Int64(max(0, changes.count - 1))
    return .changes(actor: actor, version: version, changes: numbered, seqs: 0...last, lastSeq: last,
                    ts: HybridTimestamp(rawValue: ts))
}

func cell(_ key: PackedPrimaryKey, _ column: String, _ value: SQLValue,
          colVersion: Int64 = 1, cl: Int64 = 1, table: String = "items") -> Change {
    Change(table: table, pk: key, cid: column, val: value, colVersion: colVersion, seq: 0, cl: cl)
}

func sentinel(_ key: PackedPrimaryKey, cl: Int64, table: String = "items") -> Change {
    Change(table: table, pk: key, cid: Change.sentinelColumn, val: .null, colVersion: cl, seq: 0, cl: cl)
}

extension Store {
    /// Every row of `table`, ordered by primary key.
    func rows(_ table: String = "items") throws -> [[SQLValue]] {
        try query("SELECT * FROM \(table)").sorted { "\($0)" < "\($1)" }
    }

    /// The clocks, one row per cell or sentinel, with site ordinals replaced by
    /// actor ids, so replicas compare.
    func clocks(_ table: String = "items") throws -> [[SQLValue]] {
        try clockRows(table)
    }

    func sentinelCL(_ key: PackedPrimaryKey, table: String = "items") throws -> Int64? {
        let sentinel = try clockRows(table).first { $0[0] == .blob(key.bytes) && $0[1] == .text(Change.sentinelColumn) }
        guard case .integer(let cl)? = sentinel?[2] else { return nil }
        return cl
    }
}
