import PatinaCore
@testable import PatinaStore
import Synchronization
import Testing

@Suite struct SchemaTests {
    @Test(arguments: [
        ("CREATE TABLE t (a INTEGER, b TEXT);", "has no primary key"),
        ("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT);", "is nullable"),
        ("CREATE TABLE t (a TEXT NOT NULL PRIMARY KEY, b TEXT UNIQUE);", "UNIQUE"),
        ("CREATE TABLE t (a TEXT NOT NULL PRIMARY KEY, b TEXT); CREATE UNIQUE INDEX tb ON t (b);", "UNIQUE"),
        ("CREATE TABLE p (id INTEGER NOT NULL PRIMARY KEY); CREATE TABLE t (a INTEGER NOT NULL PRIMARY KEY, p INTEGER REFERENCES p(id));", "FOREIGN KEY"),
        ("CREATE TABLE t (a INTEGER NOT NULL PRIMARY KEY, b TEXT NOT NULL);", "NOT NULL without a DEFAULT"),
        ("CREATE TABLE t (a INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT);", "AUTOINCREMENT"),
        ("CREATE TABLE __patina_x (a INTEGER NOT NULL PRIMARY KEY);", "reserved"),
        ("CREATE VIEW v AS SELECT 1;", "only CREATE TABLE and CREATE INDEX"),
        ("CREATE TABLE t (a INTEGER NOT NULL PRIMARY KEY", "incomplete input"),
    ])
    func tablesThatBreakTheRulesAreRefusedByName(sql: String, rule: String) throws {
        let dir = TempDir()
        let store = try Store(path: dir.file("s.db"))
        do {
            try store.applySchema(sql: sql)
            Issue.record("accepted: \(sql)")
        } catch let error as SchemaError {
            #expect(error.description.contains(rule), "\(error)")
            if !rule.contains("CREATE") && !rule.contains("incomplete") {
                #expect(error.table != nil, "the error names the table: \(error)")
            }
        }
        #expect(store.tables.isEmpty)
    }

    @Test func compositeAndWithoutRowidKeysAreAccepted() throws {
        let dir = TempDir()
        let store = try Store(path: dir.file("s.db"))
        try store.applySchema(sql: """
            CREATE TABLE a (x TEXT NOT NULL, y INTEGER NOT NULL, v, PRIMARY KEY (y, x)) WITHOUT ROWID;
            CREATE TABLE b (id BLOB NOT NULL PRIMARY KEY);
            CREATE INDEX a_v ON a (v);
            """)
        #expect(store.tables.map(\.name) == ["a", "b"])
        #expect(store.tables[0].pkColumns == ["y", "x"])
        #expect(store.tables[1].columns.isEmpty)
    }

    @Test func additiveChangeOnAPopulatedTableKeepsDataAndReplicates() throws {
        let dir = TempDir()
        let a = try makeStore(dir, "a.db")
        let b = try makeStore(dir, "b.db")
        for i in 0..<50 {
            try b.merge(try a.execute("INSERT INTO items (id, name) VALUES (?, 'n')", [.integer(Int64(i))]).changesets)
        }
        let widened = itemsSchema + """
            CREATE TABLE extra (id TEXT NOT NULL PRIMARY KEY, v);
            CREATE INDEX items_name ON items (name);
            """
        let evolved = widened.replacingOccurrences(of: "qty INTEGER NOT NULL DEFAULT 0", with: "qty INTEGER NOT NULL DEFAULT 0, note TEXT, rank REAL NOT NULL DEFAULT 1.5")
        for store in [a, b] {
            let report = try store.applySchema(sql: evolved)
            #expect(report.createdTables == ["extra"])
            #expect(report.addedColumns == ["items.note", "items.rank"])
            #expect(report.createdIndexes == ["items_name"])
        }
        #expect(try a.query("SELECT count(*), sum(rank) FROM items WHERE note IS NULL") == [[.integer(50), .real(75)]])
        // Re-applying the same files is a no-op.
        #expect(try a.applySchema(sql: evolved).isEmpty)
        // The new column is captured and merges.
        try b.merge(try a.execute("UPDATE items SET note = 'hi', rank = 2 WHERE id = 3").changesets)
        try b.merge(try a.execute("INSERT INTO extra (id, v) VALUES ('k', 1)").changesets)
        #expect(try b.query("SELECT note, rank FROM items WHERE id = 3") == [[.text("hi"), .real(2)]])
        #expect(try b.query("SELECT v FROM extra") == [[.integer(1)]])
        #expect(try b.rows() == (try a.rows()))
    }

    @Test(arguments: [
        ("CREATE TABLE items (id INTEGER NOT NULL PRIMARY KEY, name TEXT);", "column qty was dropped"),
        ("CREATE TABLE items (id INTEGER NOT NULL PRIMARY KEY, name BLOB, qty INTEGER NOT NULL DEFAULT 0);", "changed type"),
        ("CREATE TABLE items (id INTEGER NOT NULL, name TEXT NOT NULL DEFAULT '', qty INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (id, name));", "primary key changed"),
        ("CREATE TABLE other (id INTEGER NOT NULL PRIMARY KEY);", "was dropped from the schema"),
    ])
    func destructiveChangesAreRefusedAndChangeNothing(sql: String, reason: String) throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.execute("INSERT INTO items (id, name) VALUES (1, 'a')")
        #expect {
            try store.applySchema(sql: sql)
        } throws: { error in
            "\(error)".contains(reason)
        }
        #expect(store.tables.map(\.name) == ["items"])
        #expect(try store.rows() == [[.integer(1), .text("a"), .integer(0)]])
    }

    @Test func schemaFilesAndFoldersAreRead() throws {
        let dir = TempDir()
        let folder = dir.file("schema")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try "CREATE TABLE one (id INTEGER NOT NULL PRIMARY KEY);".write(toFile: folder + "/1.sql", atomically: true, encoding: .utf8)
        try "CREATE TABLE two (id INTEGER NOT NULL PRIMARY KEY);".write(toFile: folder + "/2.sql", atomically: true, encoding: .utf8)
        try "not sql".write(toFile: folder + "/README.md", atomically: true, encoding: .utf8)
        let store = try Store(path: dir.file("s.db"))
        try store.applySchema(paths: [folder])
        #expect(store.tables.map(\.name) == ["one", "two"])
        #expect(throws: SchemaError.self) { try store.applySchema(paths: [dir.file("missing")]) }
    }

    /// `tables` is read from async code (request routing, subscriptions) while a
    /// merge may hold the store's lock for a whole batch: it must not wait for it,
    /// and it must follow schema changes.
    @Test func tablesAreReadWithoutWaitingForTheStoreLock() throws {
        let dir = TempDir()
        let store = try makeStore(dir)
        try store.applySchema(sql: itemsSchema + "CREATE TABLE tags (name TEXT NOT NULL PRIMARY KEY, color TEXT);")
        #expect(store.tables.map(\.name) == ["items", "tags"])

        let insideWrite = DispatchSemaphore(value: 0)
        let releaseWrite = DispatchSemaphore(value: 0)
        let writer = Thread {
            _ = try? store.write { tx in
                try tx.execute("INSERT INTO items (id, name) VALUES (1, 'held')")
                insideWrite.signal()
                // Bounded, so a regression fails the test instead of hanging it.
                _ = releaseWrite.wait(timeout: .now() + 10)
            }
        }
        writer.start()
        #expect(insideWrite.wait(timeout: .now() + 10) == .success)

        let read = DispatchSemaphore(value: 0)
        let names = Mutex<[String]>([])
        Thread {
            names.withLock { $0 = store.tables.map(\.name) }
            read.signal()
        }.start()
        let readWhileHeld = read.wait(timeout: .now() + 5) == .success
        releaseWrite.signal()
        #expect(readWhileHeld, "store.tables waited for a write transaction to end")
        if !readWhileHeld { _ = read.wait(timeout: .now() + 10) }
        #expect(names.withLock { $0 } == ["items", "tags"])
    }
}

import Foundation
