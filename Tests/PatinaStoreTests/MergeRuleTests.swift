import PatinaCore
@testable import PatinaStore
import Testing

/// Each merge rule of DESIGN.md on its own, with hand-made changes.
@Suite struct MergeRuleTests {
    let low = ActorID(bytes: [UInt8](repeating: 0x01, count: 16))!
    let high = ActorID(bytes: [UInt8](repeating: 0xee, count: 16))!
    let key = pk(.integer(1))

    func row(_ store: Store) throws -> [SQLValue]? { try store.rows().first }

    @Test func columnChangeOnAnUnknownRowCreatesIt() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        let outcome = try store.merge([changeset(low, 1, [cell(key, "name", .text("a"))])])
        #expect(outcome.appliedVersions == 1 && outcome.rejections.isEmpty)
        #expect(try row(store) == [.integer(1), .text("a"), .integer(0)])  // qty takes its DEFAULT
        #expect(try store.sentinelCL(key) == nil)  // a first life (cl 1) is implied by the column clock
    }

    @Test func higherColVersionWinsLowerLoses() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.merge([changeset(low, 1, [sentinel(key, cl: 1), cell(key, "name", .text("a"), colVersion: 2)])])
        try store.merge([changeset(high, 1, [cell(key, "name", .text("zzz"), colVersion: 1)])])
        #expect(try row(store)?[1] == .text("a"))
        try store.merge([changeset(high, 2, [cell(key, "name", .text("b"), colVersion: 3)])])
        #expect(try row(store)?[1] == .text("b"))
    }

    @Test func equalColVersionIsBrokenByValueThenActor() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.merge([changeset(high, 1, [cell(key, "name", .text("b"))])])
        try store.merge([changeset(low, 1, [cell(key, "name", .text("a"))])])
        #expect(try row(store)?[1] == .text("b"), "smaller value loses even from another actor")
        try store.merge([changeset(low, 2, [cell(key, "name", .text("c"))])])
        #expect(try row(store)?[1] == .text("c"), "greater value wins")
        // Equal value: the greater actor id takes the clock.
        try store.merge([changeset(high, 2, [cell(key, "name", .text("c"))])])
        let clock = try store.clocks().first { $0[1] == .text("name") }
        #expect(clock?[3] == .blob(high.bytes))
        // And a smaller actor with the same value does not take it back.
        try store.merge([changeset(low, 3, [cell(key, "name", .text("c"))])])
        #expect(try store.clocks().first { $0[1] == .text("name") }?[3] == .blob(high.bytes))
    }

    @Test func higherEvenCausalLengthDeletes() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.execute("INSERT INTO items (id, name) VALUES (1, 'local')")
        try store.merge([changeset(low, 1, [sentinel(key, cl: 2)])])
        #expect(try store.rows().isEmpty)
        #expect(try store.sentinelCL(key) == 2)
        #expect(try store.clocks().count == 1, "column clocks of the deleted row are dropped")
        // Changes of the older life lose.
        try store.merge([changeset(high, 1, [cell(key, "name", .text("late"), colVersion: 9, cl: 1)])])
        #expect(try store.rows().isEmpty)
    }

    @Test func smallerCausalLengthLoses() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.merge([changeset(low, 1, [sentinel(key, cl: 3), cell(key, "name", .text("new"), cl: 3)])])
        try store.merge([changeset(high, 1, [sentinel(key, cl: 2)])])
        #expect(try row(store)?[1] == .text("new"))
        try store.merge([changeset(high, 2, [sentinel(key, cl: 1), cell(key, "name", .text("old"), colVersion: 5, cl: 1)])])
        #expect(try row(store)?[1] == .text("new"))
        #expect(try store.sentinelCL(key) == 3)
    }

    @Test func equalEvenCausalLengthIsANoOp() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.merge([changeset(low, 1, [sentinel(key, cl: 2)])])
        let before = try store.clocks()
        try store.merge([changeset(high, 1, [sentinel(key, cl: 2)])])
        // The row stays deleted; only the attribution may move to the least (actor, version).
        #expect(try store.rows().isEmpty)
        #expect(try store.clocks() == before)
    }

    @Test func resurrectionBySentinelRestartsColumnClocks() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.merge([changeset(low, 1, [sentinel(key, cl: 1), cell(key, "name", .text("a"), colVersion: 5)])])
        try store.merge([changeset(low, 2, [sentinel(key, cl: 2)])])
        #expect(try store.rows().isEmpty)
        try store.merge([changeset(high, 1, [sentinel(key, cl: 3), cell(key, "name", .text("again"), colVersion: 1, cl: 3)])])
        #expect(try row(store)?[1] == .text("again"), "col_version 1 of the new life beats 5 of the old one")
        #expect(try store.sentinelCL(key) == 3)
    }

    @Test func resurrectionByAColumnChangeThatArrivesFirst() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.merge([changeset(low, 1, [sentinel(key, cl: 2)])])
        // The cell of life 3 arrives before life 3's sentinel.
        try store.merge([changeset(high, 2, [cell(key, "name", .text("back"), cl: 3)])])
        #expect(try row(store)?[1] == .text("back"))
        #expect(try store.sentinelCL(key) == 3)
        // Its real sentinel then takes the attribution, as on a replica that saw them in order.
        try store.merge([changeset(high, 1, [sentinel(key, cl: 3)])])
        let s = try store.clocks().first { $0[1] == .text("-1") }
        #expect(s?[3] == .blob(high.bytes) && s?[4] == .integer(1))
    }

    @Test func nullAndEveryStorageClassReplicate() throws {
        let dir = TempDir()
        let schema = "CREATE TABLE t (id INTEGER NOT NULL PRIMARY KEY, v);"
        let source = try makeStore(dir, "s.db", schema: schema)
        let target = try makeStore(dir, "t.db", schema: schema)
        let values: [SQLValue] = [.null, .integer(-7), .integer(Int64.max), .real(3.25), .real(-0.0), .text(""),
                                  .text("ünïcode"), .blob([]), .blob([0, 1, 255])]
        var changesets: [Changeset] = []
        for (i, v) in values.enumerated() {
            changesets += try source.execute("INSERT INTO t (id, v) VALUES (?, ?)", [.integer(Int64(i)), v]).changesets
        }
        try target.merge(changesets)
        #expect(try target.rows("t") == (try source.rows("t")))
        let stored = try target.query("SELECT v, typeof(v) FROM t ORDER BY id")
        #expect(stored.map { $0[0] } == values)
    }

    @Test(arguments: [Int64(0), 127, 128, -1, 255, 256, Int64.min, Int64.max])
    func integerKeysOfEveryWidthReplicate(_ id: Int64) throws {
        let dir = TempDir()
        let source = try makeStore(dir, "s.db")
        let target = try makeStore(dir, "t.db")
        let written = try source.execute("INSERT INTO items (id, name) VALUES (?, 'x')", [.integer(id)])
        try target.merge(written.changesets)
        #expect(try target.rows() == [[.integer(id), .text("x"), .integer(0)]])
        let update = try source.execute("UPDATE items SET name = 'y' WHERE id = ?", [.integer(id)])
        try target.merge(update.changesets)
        #expect(try target.rows()[0][1] == .text("y"))
        let del = try source.execute("DELETE FROM items WHERE id = ?", [.integer(id)])
        try target.merge(del.changesets)
        #expect(try target.rows().isEmpty)
    }

    @Test func mergedChangesAreNotCapturedAgain() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.merge([changeset(low, 1, [sentinel(key, cl: 1), cell(key, "name", .text("a"))])])
        #expect(store.heads()[store.actorID] == nil)
        #expect(try store.changesets(actor: store.actorID, versions: 1...10).isEmpty)
        #expect(store.heads()[low] == 1)
    }

    @Test func applyingTheSameChangesTwiceIsANoOp() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        let batch = [changeset(low, 1, [sentinel(key, cl: 1), cell(key, "name", .text("a"))])]
        try store.merge(batch)
        let rows = try store.rows()
        let clocks = try store.clocks()
        let again = try store.merge(batch + batch)
        #expect(again.duplicates == 2 && again.appliedVersions == 0)
        #expect(try store.rows() == rows)
        #expect(try store.clocks() == clocks)
    }

    @Test func overwrittenVersionsAreRecordedAsCleared() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.merge([changeset(low, 1, [cell(key, "name", .text("a"))])])
        try store.merge([changeset(low, 2, [cell(key, "name", .text("b"), colVersion: 2)])])
        // Version 1's only cell was overwritten by version 2; the sentinel is unattributed.
        #expect(store.bookkeeping()[low]?.cleared.contains(1) == true)
        let served = try store.changesets(actor: low, versions: 1...2)
        #expect(served.first?.content == .cleared(versions: 1...1))
        #expect(served.count == 2)
    }
}
