import Foundation
import PatinaCore
@testable import PatinaStore
import Synchronization
import Testing

@Suite struct PersistenceTests {
    /// A node's own versions are 1...head, derived at open rather than written
    /// per commit; a restored backup moves them, clocks included, to the old
    /// actor's site and starts its own at 1.
    @Test func aRestoredBackupKeepsTheOldActorsVersionsAndClocks() throws {
        let dir = TempDir()
        let backup = dir.file("backup.db")
        let oldActor: ActorID
        do {
            let store = try makeStore(dir)
            oldActor = store.actorID
            try store.execute("INSERT INTO items (id, name) VALUES (1, 'a'), (2, 'b')")
            try store.execute("UPDATE items SET name = 'c' WHERE id = 2")  // an explicit clock
            try store.execute("INSERT INTO items (id, name) VALUES (3, 'd')")
            #expect(store.bookkeeping()[oldActor]?.applied == VersionRangeSet([1...3]))
            try Backup.create(store: store, to: backup)
        }
        do {
            let reopened = try Store(path: dir.file("a.db"))
            #expect(reopened.bookkeeping()[oldActor]?.applied == VersionRangeSet([1...3]))
            #expect(try reopened.execute("DELETE FROM items WHERE id = 3").version == 4)
        }
        try Backup.restore(from: backup, to: dir.file("restored.db"))
        let restored = try Store(path: dir.file("restored.db"))
        #expect(restored.actorID != oldActor)
        #expect(restored.bookkeeping()[oldActor]?.applied == VersionRangeSet([1...3]))
        #expect(restored.heads()[restored.actorID] == nil)
        #expect(try restored.clocks().allSatisfy { $0[3] == .blob(oldActor.bytes) })
        let served = try restored.changesets(actor: oldActor, versions: 1...3)
        #expect(served.count == 3)
        #expect(try restored.execute("INSERT INTO items (id) VALUES (9)").version == 1)
    }

    /// Only a copy made by `Backup.create` (marked to take a new identity) is
    /// restored: a plain copy of a node's file would start a second node under
    /// the same actor id.
    @Test func aPlainCopyOfANodesFileIsNotRestored() throws {
        let dir = TempDir()
        do {
            let store = try makeStore(dir)
            try store.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
        }
        try FileManager.default.copyItem(atPath: dir.file("a.db"), toPath: dir.file("copy.db"))
        #expect(throws: StoreOpenError.self) { try Backup.restore(from: dir.file("copy.db"), to: dir.file("restored.db")) }
        #expect(!FileManager.default.fileExists(atPath: dir.file("restored.db")))
    }

    @Test func restartKeepsIdentityDataVersionsAndBookkeeping() throws {
        let dir = TempDir()
        let remote = ActorID.random()
        var actor: ActorID
        var booksBefore: [ActorID: ActorBookkeeping]
        do {
            let store = try makeStore(dir)
            actor = store.actorID
            try store.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
            try store.execute("INSERT INTO items (id, name) VALUES (2, 'b')")
            let key = pk(.integer(9))
            // Remote: version 1 complete, version 3 partial (gap at 2), version 5 cleared.
            try store.merge([changeset(remote, 1, [sentinel(key, cl: 1), cell(key, "name", .text("r"))])])
            let partial = Changeset.changes(actor: remote, version: 3, changes: [Change(table: "items", pk: key, cid: "qty", val: .integer(4), colVersion: 1, seq: 0, cl: 1)],
                                            seqs: 0...0, lastSeq: 1, ts: HybridTimestamp(rawValue: 7))
            try store.merge([partial, .cleared(actor: remote, versions: 5...5)])
            booksBefore = store.bookkeeping()
            #expect(booksBefore[remote]?.partials[3] != nil)
            #expect(booksBefore[remote]?.gaps == [2...2, 4...4])
        }
        let reopened = try Store(path: dir.file("a.db"))
        #expect(reopened.actorID == actor)
        #expect(reopened.bookkeeping() == booksBefore)
        #expect(try reopened.rows().count == 3)
        #expect(try reopened.execute("INSERT INTO items (id) VALUES (3)").version == 3)
        // The buffered half of version 3 survived: its other half completes it.
        let rest = Changeset.changes(actor: remote, version: 3, changes: [Change(table: "items", pk: pk(.integer(9)), cid: "name", val: .text("z"), colVersion: 2, seq: 1, cl: 1)],
                                     seqs: 1...1, lastSeq: 1, ts: HybridTimestamp(rawValue: 7))
        let outcome = try reopened.merge([rest])
        #expect(outcome.appliedVersions == 1)
        #expect(try reopened.query("SELECT name, qty FROM items WHERE id = 9") == [[.text("z"), .integer(4)]])
        #expect(reopened.bookkeeping()[remote]?.partials.isEmpty == true)
        #expect(reopened.bookkeeping()[remote]?.gaps == [2...2, 4...4])
        // Served changes after restart: local versions are intact.
        let served = try reopened.changesets(actor: actor, versions: 1...3)
        #expect(served.map(\.versions) == [1...1, 2...2, 3...3])
    }
}

@Suite struct BadInputTests {
    let remote = ActorID(bytes: [UInt8](repeating: 0x42, count: 16))!

    @Test func invalidChangesetsAreRejectedAndTheRestOfTheBatchApplies() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        let good = changeset(remote, 1, [cell(pk(.integer(1)), "name", .text("ok"))])
        let ts = HybridTimestamp(rawValue: 1)
        let bad: [Changeset] = [
            changeset(remote, 2, [cell(pk(.integer(2)), "name", .text("x"), table: "nope")]),
            changeset(remote, 3, [cell(pk(.integer(3)), "nope", .text("x"))]),
            changeset(remote, 4, [Change(table: "items", pk: PackedPrimaryKey(bytes: [1, 0x11, 0]), cid: "name", val: .null, colVersion: 1, seq: 0, cl: 1)]),
            changeset(remote, 5, [cell(pk(.integer(1), .integer(2)), "name", .text("two-column key"))]),
            changeset(remote, 0, [cell(pk(.integer(6)), "name", .text("version 0"))]),
            .changes(actor: remote, version: 7, changes: [], seqs: 3...9, lastSeq: 5, ts: ts),
            .changes(actor: remote, version: 8, changes: [cell(pk(.integer(8)), "name", .null)], seqs: 1...2, lastSeq: 2, ts: ts),
            .cleared(actor: remote, versions: -3...2),
            changeset(remote, 9, [cell(pk(.integer(9)), "name", .text("x"), cl: 0)]),
            changeset(remote, 10, [cell(pk(.null), "name", .text("null key"))]),
            // items' key is its rowid, and its clock is keyed by that integer.
            changeset(remote, 11, [cell(pk(.integer(11)), "name", .text("text key"))].map { c in
                var c = c
                c.pk = pk(.text("11"))
                return c
            }),
            // Counters a local write adds one to: near Int64.max they would overflow.
            changeset(remote, 12, [cell(pk(.integer(12)), "name", .text("x"), cl: .max)]),
            changeset(remote, 13, [cell(pk(.integer(13)), "name", .text("x"), colVersion: .max)]),
            changeset(remote, .max, [cell(pk(.integer(14)), "name", .text("x"))]),
            .cleared(actor: remote, versions: 1...Int64.max),
            // 15 as a full 8-byte integer: the same row as the canonical 1-byte form.
            changeset(remote, 15, [Change(table: "items", pk: PackedPrimaryKey(bytes: [1, 0x41, 0, 0, 0, 0, 0, 0, 0, 15]),
                                          cid: "name", val: .text("x"), colVersion: 1, seq: 0, cl: 1)]),
        ]
        let outcome = try store.merge(bad + [good])
        #expect(outcome.rejections.map(\.index) == Array(0..<bad.count))
        #expect(outcome.appliedVersions == 1)
        for r in outcome.rejections { #expect(!r.reason.isEmpty) }
        #expect(outcome.rejections[0].reason.contains("unknown table nope"))
        #expect(outcome.rejections[1].reason.contains("unknown column items.nope"))
        #expect(outcome.rejections[2].reason.contains("malformed primary key"))
        #expect(outcome.rejections.last!.reason.contains("canonical"))
        #expect(try store.rows() == [[.integer(1), .text("ok"), .integer(0)]])
        #expect(store.bookkeeping()[remote]?.applied == VersionRangeSet([1...1]))
    }

    @Test func aConstraintViolationRollsBackOnlyThatChangeset() throws {
        let dir = TempDir()
        let schema = "CREATE TABLE c (id INTEGER NOT NULL PRIMARY KEY, n INTEGER CHECK (n >= 0));"
        let store = try makeStore(dir, schema: schema)
        let outcome = try store.merge([
            changeset(remote, 1, [sentinel(pk(.integer(1)), cl: 1, table: "c"), cell(pk(.integer(1)), "n", .integer(-5), table: "c")]),
            changeset(remote, 2, [cell(pk(.integer(2)), "n", .integer(5), table: "c")]),
        ])
        #expect(outcome.rejections.map(\.index) == [0])
        #expect(outcome.rejections.first?.reason.contains("CHECK") == true)
        #expect(try store.rows("c") == [[.integer(2), .integer(5)]])
        #expect(try store.clocks("c").count == 1)  // row 2's cell; its first life has no sentinel
        #expect(store.bookkeeping()[remote]?.applied == VersionRangeSet([2...2]))
        #expect(store.bookkeeping()[remote]?.gaps == [1...1])
    }

    @Test func listenersAreNotToldOfRowsARejectedChangesetRolledBack() throws {
        let dir = TempDir()
        let schema = "CREATE TABLE c (id INTEGER NOT NULL PRIMARY KEY, n INTEGER CHECK (n >= 0));"
        let store = try makeStore(dir, schema: schema)
        let events = Mutex<[CommitEvent]>([])
        store.addListener { event in events.withLock { $0.append(event) } }
        let outcome = try store.merge([
            changeset(remote, 1, [cell(pk(.integer(2)), "n", .integer(5), table: "c")]),
            changeset(remote, 2, [sentinel(pk(.integer(1)), cl: 1, table: "c"), cell(pk(.integer(1)), "n", .integer(-5), table: "c")]),
        ])
        #expect(outcome.rejections.map(\.index) == [1])
        let told = events.withLock { $0 }
        #expect(told.count == 1)
        #expect(told.first?.rows["c"].map { Set($0.keys) } == [pk(.integer(2))], "row 1 was rolled back")
        #expect(told.first?.origins.count == 1, "only version 1 was applied")
        #expect(outcome.changesWritten == 1)
        #expect(outcome.appliedVersions == 1)
    }

    @Test func aFileThatIsNotAPatinaDatabaseIsRefusedUntouched() throws {
        let dir = TempDir()
        let text = dir.file("notes.txt")
        try "hello, I am not a database".write(toFile: text, atomically: true, encoding: .utf8)
        #expect(throws: StoreOpenError.self) { try Store(path: text) }
        #expect(try String(contentsOfFile: text, encoding: .utf8) == "hello, I am not a database")

        let plain = dir.file("plain.db")
        let db = try SQLiteConnection(path: plain)
        try db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY); INSERT INTO users VALUES (1);")
        let before = try Data(contentsOf: URL(fileURLWithPath: plain))
        do {
            _ = try Store(path: plain)
            Issue.record("opened a foreign database")
        } catch let error as StoreOpenError {
            #expect(error.description.contains("not a Patina database"))
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: plain)) == before)
    }

    @Test func aCorruptDatabaseIsReportedAtOpen() throws {
        let dir = TempDir()
        do {
            let store = try makeStore(dir)
            for i in 0..<300 { try store.execute("INSERT INTO items (id, name) VALUES (?, ?)", [.integer(Int64(i)), .text(String(repeating: "x", count: 200))]) }
        }
        // Checkpoint the WAL into the main file, then scribble over pages after the first.
        let db = try SQLiteConnection(path: dir.file("a.db"))
        try db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        let handle = FileHandle(forUpdatingAtPath: dir.file("a.db"))!
        handle.seek(toFileOffset: 4096 * 2)
        handle.write(Data((0..<(4096 * 4)).map { UInt8(truncatingIfNeeded: $0 &* 31) }))
        try handle.close()
        #expect(throws: StoreOpenError.self) { try Store(path: dir.file("a.db")) }
    }

    /// SQLite keeps 5.0 in a REAL column as the integer 5, and its preupdate hook
    /// hands back that integer on insert but a real on update and delete. Capture
    /// and merge must see one real throughout, or a row gets two clock keys (its
    /// delete lost) and replicas order concurrent writes differently.
    @Test func realColumnsKeepOneTypeThroughCaptureAndMerge() throws {
        let dir = TempDir()
        let schema = "CREATE TABLE w (k REAL NOT NULL PRIMARY KEY, v) WITHOUT ROWID; CREATE TABLE m (id INTEGER NOT NULL PRIMARY KEY, x REAL);"
        let origin = try makeStore(dir, "origin.db", schema: schema)
        let replica = try makeStore(dir, "replica.db", schema: schema)
        var sent: [Changeset] = []
        for sql in ["INSERT INTO w (k, v) VALUES (6.0, 'a')", "UPDATE w SET v = 'b' WHERE k = 6.0", "DELETE FROM w WHERE k = 6.0",
                    "INSERT INTO m (id, x) VALUES (1, 5.0)"] {
            sent += try origin.write { try $0.execute(sql) }.changesets
        }
        for c in sent {
            guard case .changes(_, let changes, _, _, _) = c.content else { continue }
            for change in changes {
                #expect(!change.pk.bytes.isEmpty)
                if change.table == "w" { #expect(try change.pk.decode() == [.real(6.0)], "w's key is a real in every change") }
                if change.cid == "x" { #expect(change.val == .real(5.0)) }
            }
        }
        _ = try replica.merge(sent)
        #expect(try replica.rows("w").isEmpty, "the delete reached the replica")
        #expect(try origin.rows("w").isEmpty)

        // A concurrent write of 4.5 to the same cell: both replicas pick the same winner,
        // also when the 5.0 arrives as an integer (from a peer that sent it so).
        let other = ActorID(bytes: [UInt8](repeating: 0x07, count: 16))!
        let concurrent = changeset(other, 1, [cell(pk(.integer(1)), "x", .real(4.5), table: "m")])
        let asInteger = changeset(ActorID(bytes: [UInt8](repeating: 0x08, count: 16))!, 1,
                                  [cell(pk(.integer(2)), "x", .integer(5), table: "m")])
        let third = try makeStore(dir, "third.db", schema: schema)
        _ = try third.merge([concurrent])
        _ = try third.merge(sent + [asInteger])
        _ = try replica.merge([concurrent, asInteger])
        _ = try origin.merge([concurrent, asInteger])
        #expect(try third.rows("m") == replica.rows("m"))
        #expect(try origin.rows("m") == replica.rows("m"))
        #expect(try third.rows("m") == [[.integer(1), .real(5.0)], [.integer(2), .real(5.0)]])
    }

    /// `INSERT OR ROLLBACK` that fails ends the transaction: a statement the body
    /// runs after catching that error must not commit on its own, uncaptured.
    @Test func nothingRunsAfterAStatementRolledTheTransactionBack() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        _ = try store.write { try $0.execute("INSERT INTO items (id, name) VALUES (1, 'a')") }
        #expect(throws: (any Error).self) {
            _ = try store.write { tx in
                _ = try? tx.execute("INSERT OR ROLLBACK INTO items (id, name) VALUES (1, 'again')")
                try tx.execute("INSERT INTO items (id, name) VALUES (2, 'after the rollback')")
            }
        }
        #expect(try store.rows() == [[.integer(1), .text("a"), .integer(0)]])
    }

    /// A merge whose transaction fails (here: the disk is "full") must leave the
    /// in-memory bookkeeping as it was, or the node would take the versions for
    /// applied, skip them as duplicates when they come again, and serve them as
    /// cleared: lost everywhere.
    @Test func aMergeThatFailsToCommitLeavesNoBookkeepingBehind() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        let pages = try store.query("PRAGMA page_count")[0][0]
        try store.executeOnWriter("PRAGMA max_page_count = \(pages)")
        let batch = (1...50).map { v in
            changeset(remote, Int64(v), [cell(pk(.integer(Int64(v))), "name", .text(String(repeating: "x", count: 2000)))])
        }
        _ = try? store.merge(batch)
        let applied = store.bookkeeping()[remote]?.applied ?? VersionRangeSet()
        #expect(applied.count == Int64(try store.rows().count), "bookkeeping claims only stored versions")
        try store.executeOnWriter("PRAGMA max_page_count = 1073741823")
        _ = try store.merge(batch)
        #expect(try store.rows().count == 50)
        #expect(store.bookkeeping()[remote]?.applied == VersionRangeSet([1...50]))
    }
}
