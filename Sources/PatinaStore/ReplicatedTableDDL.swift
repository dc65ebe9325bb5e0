import PatinaCore

/// The SQL that turns a plain table into a replicated one: its clock table and
/// the guard triggers that refuse writes from other connections.
///
/// Clock table `T__patina_clock`: one row per data row (packed per-column
/// clocks and the sentinel, see ``RowClock``). Local writes are captured by a
/// preupdate hook on the store's writer connection (CaptureFunctions.swift)
/// and their clocks written in one batch at commit; that connection runs with
/// triggers off, so the guard triggers only ever fire for other connections
/// (e.g. the sqlite3 shell), whose writes would otherwise go unreplicated.
enum ReplicatedTableDDL {
    /// Tables whose primary key is one rowid alias (`id INTEGER PRIMARY KEY`)
    /// key their clock by that integer: a rowid B-tree insert costs about half
    /// of a WITHOUT ROWID insert of the packed key. Other tables key it by the
    /// packed primary key (docs/store.md).
    static func clockTable(_ t: TableInfo, integerKey: Bool) -> String {
        let clock = quoteIdentifier(t.clockTable)
        if integerKey {
            return """
                CREATE TABLE IF NOT EXISTS \(clock) (
                    pk INTEGER PRIMARY KEY, site INTEGER, db_version INTEGER, seq INTEGER, cells
                );
                """
        }
        return """
            CREATE TABLE IF NOT EXISTS \(clock) (
                pk BLOB NOT NULL PRIMARY KEY, site INTEGER, db_version INTEGER, seq INTEGER, cells
            ) WITHOUT ROWID;
            """
    }

    /// Whether `table` (already created) has a single-column primary key that
    /// is its rowid: a rowid table whose key needs no index of its own.
    static func hasRowidKey(_ table: String, pkCount: Int, in db: SQLiteConnection) throws -> Bool {
        guard pkCount == 1 else { return false }
        // WITHOUT ROWID tables and non-alias keys both have an index of origin 'pk'.
        return try db.scalar("SELECT count(*) FROM pragma_index_list(?) WHERE origin = 'pk'", [.text(table)]) == .integer(0)
    }

    /// Whether an existing clock table is keyed by integers.
    static func clockHasIntegerKey(_ t: TableInfo, in db: SQLiteConnection) throws -> Bool {
        try db.scalar("SELECT upper(type) FROM pragma_table_info(?) WHERE name = 'pk'", [.text(t.clockTable)]) == .text("INTEGER")
    }

    static func guardTriggers(_ t: TableInfo) -> String {
        let table = quoteIdentifier(t.name)
        let message = "\(t.name) is replicated by Patina: write through the node (POST /v1/transactions or patina exec)"
            .replacingOccurrences(of: "'", with: "''")
        return ["INSERT", "UPDATE", "DELETE"].map { op in
            let name = quoteIdentifier(t.name + "__patina_guard_" + op.lowercased())
            return "CREATE TRIGGER \(name) BEFORE \(op) ON \(table) BEGIN SELECT RAISE(ABORT, '\(message)'); END;"
        }.joined(separator: "\n")
    }
}
