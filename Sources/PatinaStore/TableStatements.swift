import PatinaCore

/// The prepared statements the store runs against one replicated table.
final class TableStatements {
    let selectByVersion: String
    let selectRow: String
    let selectSentinel: SQLiteStatement
    let selectClock: SQLiteStatement
    let upsertClock: SQLiteStatement
    let deleteColumnClocks: SQLiteStatement
    let deleteRow: SQLiteStatement
    let insertKeyOnly: SQLiteStatement
    /// Per column: upsert of that one cell, and a read of it.
    let upsertCell: [String: SQLiteStatement]
    let selectCell: [String: SQLiteStatement]
    let columnIndex: [String: Int]

    init(table t: TableInfo, db: SQLiteConnection) throws {
        let table = quoteIdentifier(t.name)
        let clock = quoteIdentifier(t.clockTable)
        let keyMatch = t.pkColumns.enumerated().map { "\(quoteIdentifier($1)) = ?\($0 + 1)" }.joined(separator: " AND ")
        let keyList = t.pkColumns.map(quoteIdentifier).joined(separator: ", ")
        let keyParams = t.pkColumns.indices.map { "?\($0 + 1)" }.joined(separator: ", ")
        selectByVersion = """
            SELECT c.pk, c.cid, c.col_version, c.db_version, c.seq, s.col_version
            FROM \(clock) c LEFT JOIN \(clock) s ON s.pk = c.pk AND s.cid = '-1'
            WHERE c.site = ?1 AND c.db_version BETWEEN ?2 AND ?3
            """
        selectRow = "SELECT \(t.columns.map(quoteIdentifier).joined(separator: ", ")) FROM \(table) WHERE \(keyMatch)"
        selectSentinel = try db.prepare("SELECT col_version, site, db_version, seq FROM \(clock) WHERE pk = ? AND cid = '-1'")
        selectClock = try db.prepare("SELECT col_version, site, db_version FROM \(clock) WHERE pk = ? AND cid = ?")
        upsertClock = try db.prepare("""
            INSERT INTO \(clock) (pk, cid, col_version, db_version, seq, site) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
            ON CONFLICT (pk, cid) DO UPDATE SET col_version = excluded.col_version, db_version = excluded.db_version,
              seq = excluded.seq, site = excluded.site
            """)
        deleteColumnClocks = try db.prepare("DELETE FROM \(clock) WHERE pk = ? AND cid != '-1' RETURNING site, db_version")
        deleteRow = try db.prepare("DELETE FROM \(table) WHERE \(keyMatch)")
        insertKeyOnly = try db.prepare("INSERT OR IGNORE INTO \(table) (\(keyList)) VALUES (\(keyParams))")
        var upserts: [String: SQLiteStatement] = [:]
        var selects: [String: SQLiteStatement] = [:]
        let n = t.pkColumns.count
        for column in t.columns {
            let c = quoteIdentifier(column)
            upserts[column] = try db.prepare("""
                INSERT INTO \(table) (\(keyList), \(c)) VALUES (\(keyParams), ?\(n + 1))
                ON CONFLICT (\(keyList)) DO UPDATE SET \(c) = excluded.\(c)
                """)
            selects[column] = try db.prepare("SELECT \(c) FROM \(table) WHERE \(keyMatch)")
        }
        upsertCell = upserts
        selectCell = selects
        columnIndex = Dictionary(uniqueKeysWithValues: t.columns.enumerated().map { ($1, $0) })
    }
}

extension StoreCore {
    func statements(for table: TableInfo) throws -> TableStatements {
        if let s = tableStatements[table.name] { return s }
        let s = try TableStatements(table: table, db: db)
        tableStatements[table.name] = s
        return s
    }
}
