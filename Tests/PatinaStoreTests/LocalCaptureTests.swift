import PatinaCore
@testable import PatinaStore
import Testing

@Suite struct LocalCaptureTests {
    /// A sync server leaves out versions still in flight without reading them, and
    /// without taking them for cleared: asked again later, it serves them whole.
    @Test func versionsCommittedInTheHeldBackWindowAreLeftOutAndKept() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        let remote = ActorID.random()
        let ms: [Int64: UInt64] = [1: 1_000, 2: 9_000, 3: 2_000, 4: 8_000]  // versions 2 and 4 are "young"
        let sent = ms.keys.sorted().map { v in
            changeset(remote, v, [cell(pk(.integer(v)), "name", .text("v\(v)"))],
                      ts: HybridTimestamp(milliseconds: ms[v]!, counter: 0).rawValue)
        }
        _ = try store.merge(sent)
        let young: ClosedRange<UInt64> = 5_000...10_000
        let early = try store.changesets(actor: remote, versions: 1...4, holdingBack: young)
        #expect(early.heldBack == 2)
        #expect(early.changesets == [sent[0], sent[2]])
        let later = try store.changesets(actor: remote, versions: 1...4, holdingBack: nil)
        #expect(later.heldBack == 0)
        #expect(later.changesets == sent, "held-back versions are served whole later, not as cleared")
        #expect(try store.changesets(actor: remote, versions: 2...2, holdingBack: young).changesets.isEmpty)
    }

    @Test func eachWriteTransactionTakesTheNextVersionAndCapturesEveryCell() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        let first = try store.write { tx in
            try tx.execute("INSERT INTO items (id, name, qty) VALUES (1, 'apple', 3)")
            try tx.execute("INSERT INTO items (id, name) VALUES (2, 'pear')")
        }
        #expect(first.version == 1)
        #expect(first.changesets.count == 1)
        guard case .changes(let v, let changes, let seqs, let lastSeq, _) = first.changesets[0].content else {
            Issue.record("expected changes")
            return
        }
        #expect(v == 1)
        #expect(seqs == 0...lastSeq)
        // Two rows × 2 columns; a first life (cl 1) has no sentinel.
        #expect(changes.count == 4)
        #expect(Set(changes.map(\.seq)).count == 4)
        let apple = changes.filter { $0.pk == pk(.integer(1)) }
        #expect(apple.first { $0.cid == "name" }?.val == .text("apple"))
        #expect(apple.first { $0.cid == "qty" }?.val == .integer(3))
        #expect(apple.allSatisfy { !$0.isSentinel && $0.cl == 1 && $0.colVersion == 1 })
        #expect(try store.sentinelCL(pk(.integer(1))) == nil)

        let second = try store.execute("UPDATE items SET qty = 4 WHERE id = 1")
        #expect(second.version == 2)
        let updates = try changesIn(second.changesets[0])
        #expect(updates.map(\.cid) == ["qty"])
        #expect(updates[0].colVersion == 2)
        #expect(updates[0].val == .integer(4))

        // A statement that changes nothing takes no version.
        let noop = try store.execute("UPDATE items SET qty = 4 WHERE id = 1")
        #expect(noop.version == nil)
        #expect(noop.changesets.isEmpty)
        #expect(store.heads()[store.actorID] == 2)
    }

    @Test func deleteAndReinsertAdvanceTheCausalLength() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.execute("INSERT INTO items (id, name) VALUES (7, 'x')")
        let del = try store.execute("DELETE FROM items WHERE id = 7")
        let changes = try changesIn(del.changesets[0])
        #expect(changes.count == 1)
        #expect(changes[0].isSentinel && changes[0].cl == 2)
        #expect(try store.sentinelCL(pk(.integer(7))) == 2)
        // Column clocks of the deleted row are gone.
        #expect(try store.clocks().count == 1)
        try store.execute("INSERT INTO items (id, name) VALUES (7, 'y')")
        #expect(try store.sentinelCL(pk(.integer(7))) == 3)
    }

    @Test func primaryKeyChangeIsADeleteAndAnInsert() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.execute("INSERT INTO items (id, name, qty) VALUES (1, 'a', 5)")
        let moved = try store.execute("UPDATE items SET id = 2 WHERE id = 1")
        let changes = try changesIn(moved.changesets[0])
        #expect(changes.contains { $0.pk == pk(.integer(1)) && $0.isSentinel && $0.cl == 2 })
        // The new key's first life has no sentinel: its cells carry cl 1.
        #expect(!changes.contains { $0.pk == pk(.integer(2)) && $0.isSentinel })
        #expect(changes.filter { $0.pk == pk(.integer(2)) }.allSatisfy { $0.cl == 1 })
        #expect(changes.contains { $0.pk == pk(.integer(2)) && $0.cid == "qty" && $0.val == .integer(5) })
    }

    @Test func aFailedTransactionRollsBackAndTakesNoVersion() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        #expect(throws: (any Error).self) {
            try store.write { tx in
                try tx.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
                try tx.execute("INSERT INTO nope VALUES (1)")
            }
        }
        #expect(try store.rows().isEmpty)
        #expect(store.heads()[store.actorID] == nil)
        #expect(try store.execute("INSERT INTO items (id) VALUES (1)").version == 1)
    }

    @Test func writesToInternalTablesAndDDLAreRefused() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.execute("INSERT INTO items (id) VALUES (1)")
        for sql in [
            "DELETE FROM items__patina_clock",
            "UPDATE __patina_bookkeeping SET \"end\" = 99",
            "INSERT INTO __patina_meta VALUES ('x', 1)",
            "CREATE TABLE evil (id INTEGER PRIMARY KEY)",
            "DROP TABLE items",
            "ALTER TABLE items ADD COLUMN x TEXT",
            "PRAGMA journal_mode = DELETE",
            "SELECT patina_seq()",
        ] {
            #expect(throws: StatementNotAllowed.self, "\(sql)") { try store.execute(sql) }
        }
        #expect(try store.clocks().count == 2)  // name and qty; no first-life sentinel
        #expect(store.heads()[store.actorID] == 1)
    }

    @Test func namedAndPositionalParameters() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.write { tx in
            try tx.execute("INSERT INTO items (id, name) VALUES (?, ?)", [.integer(1), .text("a")])
            try tx.execute("INSERT INTO items (id, name) VALUES (:id, :name)", .named([":id": .integer(2), "name": .text("b")]))
        }
        #expect(try store.rows().map { $0[1] } == [.text("a"), .text("b")])
        #expect(throws: SQLiteError.self) { try store.execute("INSERT INTO items (id) VALUES (?)", []) }
        #expect(throws: SQLiteError.self) { try store.execute("INSERT INTO items (id) VALUES (3); INSERT INTO items (id) VALUES (4)") }
    }

    @Test func listenersHearWhichRowsChanged() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        let events = Locked<[CommitEvent]>([])
        store.addListener { event in events.withLock { $0.append(event) } }
        try store.execute("INSERT INTO items (id) VALUES (1), (2)")
        try store.execute("DELETE FROM items WHERE id = 2")
        let seen = events.withLock { $0 }
        #expect(seen.count == 2)
        #expect(seen[0].rows["items"] == [pk(.integer(1)): .upsert, pk(.integer(2)): .upsert])
        #expect(seen[1].rows["items"] == [pk(.integer(2)): .delete])
        #expect(seen[1].source == .local(version: 2))
    }

    /// Inserts of new rows build their changeset from the cells their triggers
    /// captured; anything else reads the clocks back. Both must give what a
    /// peer asking for the version later gets.
    @Test func capturedChangesetsEqualTheReadBackOnes() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        var results: [WriteResult<Void>] = []
        results.append(try store.write { tx in
            for i in 1...5 {
                try tx.execute("INSERT INTO items (id, name, qty) VALUES (?, ?, ?)", [.integer(Int64(i)), .text("n\(i)"), .integer(Int64(i))])
            }
            try tx.execute("INSERT INTO items (id) VALUES ('6')")  // affinity and defaults
        })
        // Insert then update in one transaction: the update forces the read-back.
        results.append(try store.write { tx in
            try tx.execute("INSERT INTO items (id, name) VALUES (10, 'a')")
            try tx.execute("UPDATE items SET name = 'b' WHERE id = 10")
        })
        // A failed statement after a good one: only the good one counts.
        results.append(try store.write { tx in
            try tx.execute("INSERT INTO items (id, name) VALUES (20, 'ok')")
            #expect(throws: (any Error).self) { try tx.execute("INSERT INTO items (id, name) VALUES (21, 'x'), (20, 'dup')") }
        })
        func check() throws {
            for result in results {
                let version = try #require(result.version)
                let served = try store.changesets(actor: store.actorID, versions: version...version)
                #expect(served == result.changesets, "version \(version)")
            }
        }
        try check()
        // Re-insert of a deleted row (a new life, with a sentinel).
        try store.execute("DELETE FROM items WHERE id = 1")
        results = [try store.write { tx in try tx.execute("INSERT INTO items (id, name) VALUES (1, 'again')") }]
        try check()
        let last = try changesIn(results[0].changesets[0])
        #expect(last.contains { $0.isSentinel && $0.cl == 3 })
        #expect(try store.rows().count == 8)
    }

    /// A version's key list: integer keys as deltas, any other key as bytes.
    @Test func versionKeyListsRoundTrip() {
        let keys: [PackedPrimaryKey] = [
            pk(.integer(5)), pk(.integer(6)), pk(.integer(-1_000_000)), pk(.integer(.max)), pk(.integer(.min)),
            pk(.text("a")), pk(.integer(7)), pk(.integer(1), .text("x")), pk(.blob([0, 1])), pk(.integer(0)),
        ]
        var list = KeyList()
        for key in keys { list.append(key.bytes) }
        #expect(KeyList.decode(list.bytes) == keys.map(\.bytes))
        let encoded = StoreCore.encodeVersionKeys(["t": list, "u": KeyList()])
        #expect(StoreCore.decodeVersionKeys(encoded).map(\.table) == ["t"])
        #expect(StoreCore.decodeVersionKeys(encoded).first?.pks == keys.map(\.bytes))
    }

    /// Capture is the writer connection's preupdate hook; any other connection
    /// meets the guard triggers instead of writing unreplicated rows.
    @Test func writesFromAnotherConnectionAreRefused() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
        let other = try SQLiteConnection(path: dir.file("a.db"))
        for sql in ["INSERT INTO items (id) VALUES (2)", "UPDATE items SET name = 'b'", "DELETE FROM items"] {
            #expect(throws: SQLiteError.self, "\(sql)") { try other.execute(sql) }
        }
        do {
            try other.execute("INSERT INTO items (id) VALUES (3)")
        } catch {
            #expect(error.message.contains("replicated by Patina"))
        }
        #expect(try other.query("SELECT count(*) FROM items") == [[.integer(1)]])
        #expect(try store.rows() == [[.integer(1), .text("a"), .integer(0)]])
    }

    @Test func insertOrReplaceOfAnExistingRowStartsANewLife() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.execute("INSERT INTO items (id, name, qty) VALUES (1, 'a', 5)")
        let replaced = try store.execute("INSERT OR REPLACE INTO items (id, name) VALUES (1, 'b')")
        let changes = try changesIn(replaced.changesets[0])
        #expect(changes.first?.isSentinel == true && changes.first?.cl == 3)
        #expect(changes.filter { !$0.isSentinel }.allSatisfy { $0.colVersion == 1 && $0.cl == 3 })
        #expect(Set(changes.map(\.cid)) == ["-1", "name", "qty"])
        let version = try #require(replaced.version)
        #expect(try store.changesets(actor: store.actorID, versions: version...version) == replaced.changesets)
    }

    /// OR FAIL keeps the rows changed before the failing one; they must be captured.
    @Test func rowsKeptByAFailedOrFailStatementAreCaptured() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
        let result = try store.write { tx in
            #expect(throws: (any Error).self) {
                try tx.execute("INSERT OR FAIL INTO items (id, name) VALUES (30, 'kept'), (1, 'dup')")
            }
        }
        #expect(try store.rows().count == 2)
        let version = try #require(result.version)
        let changes = try changesIn(result.changesets[0])
        #expect(changes.allSatisfy { $0.pk == pk(.integer(30)) })
        #expect(try store.changesets(actor: store.actorID, versions: version...version) == result.changesets)
    }

    /// The hook reads NULL for a column added after the row was stored; the row
    /// holds the DEFAULT, so an update of another column must not write it.
    @Test func updatingARowStoredBeforeAColumnWasAddedWritesOnlyWhatChanged() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
        try store.applySchema(sql: itemsSchema.replacingOccurrences(
            of: "qty INTEGER NOT NULL DEFAULT 0", with: "qty INTEGER NOT NULL DEFAULT 0, note TEXT NOT NULL DEFAULT 'n'"))
        let update = try store.execute("UPDATE items SET name = 'b' WHERE id = 1")
        let changes = try changesIn(update.changesets[0])
        #expect(changes.map(\.cid) == ["name"])
        let setNote = try store.execute("UPDATE items SET note = 'm' WHERE id = 1")
        let noteChanges = try changesIn(setNote.changesets[0])
        #expect(noteChanges.map(\.cid) == ["note"])
    }
}

/// A tiny lock-protected box for test bookkeeping.
final class Locked<Value>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()
    init(_ value: Value) { self.value = value }
    func withLock<R>(_ body: (inout Value) -> R) -> R {
        lock.lock()
        defer { lock.unlock() }
        return body(&value)
    }
}

import Foundation
