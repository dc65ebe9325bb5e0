import PatinaCore

/// The prepared statements the store runs against one replicated table.
final class TableStatements {
    let selectRow: String
    let selectSentinel: SQLiteStatement
    let selectClock: SQLiteStatement
    /// Whether a row has any clock row (a first life has no sentinel).
    let selectAnyClock: SQLiteStatement
    /// Every clock row of a row: cid, col_version, db_version, seq, site.
    let selectRowClocks: SQLiteStatement
    /// Whether a row has a clock row attributed to (site, version).
    let selectAttributed: SQLiteStatement
    let upsertClock: SQLiteStatement
    let deleteColumnClocks: SQLiteStatement
    let deleteRow: SQLiteStatement
    /// Per column: a read of that one cell.
    let selectCell: [String: SQLiteStatement]
    /// Upserts of a row's key and some of its cells, by the set of cells.
    private var upserts: [[String]: SQLiteStatement] = [:]
    private let table: TableInfo
    let columnIndex: [String: Int]

    init(table t: TableInfo, db: SQLiteConnection) throws {
        let table = quoteIdentifier(t.name)
        let clock = quoteIdentifier(t.clockTable)
        let keyMatch = t.pkColumns.enumerated().map { "\(quoteIdentifier($1)) = ?\($0 + 1)" }.joined(separator: " AND ")
        selectRow = "SELECT \(t.columns.map(quoteIdentifier).joined(separator: ", ")) FROM \(table) WHERE \(keyMatch)"
        selectSentinel = try db.prepare("SELECT col_version, site, db_version, seq FROM \(clock) WHERE pk = ? AND cid = '-1'")
        selectAnyClock = try db.prepare("SELECT 1 FROM \(clock) WHERE pk = ? LIMIT 1")
        selectRowClocks = try db.prepare("SELECT cid, col_version, db_version, seq, site FROM \(clock) WHERE pk = ?")
        selectAttributed = try db.prepare("SELECT 1 FROM \(clock) WHERE pk = ?1 AND site = ?2 AND db_version = ?3 LIMIT 1")
        selectClock = try db.prepare("SELECT col_version, site, db_version FROM \(clock) WHERE pk = ? AND cid = ?")
        upsertClock = try db.prepare("""
            INSERT INTO \(clock) (pk, cid, col_version, db_version, seq, site) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
            ON CONFLICT (pk, cid) DO UPDATE SET col_version = excluded.col_version, db_version = excluded.db_version,
              seq = excluded.seq, site = excluded.site
            """)
        deleteColumnClocks = try db.prepare("DELETE FROM \(clock) WHERE pk = ? AND cid != '-1' RETURNING site, db_version")
        deleteRow = try db.prepare("DELETE FROM \(table) WHERE \(keyMatch)")
        var selects: [String: SQLiteStatement] = [:]
        for column in t.columns {
            selects[column] = try db.prepare("SELECT \(quoteIdentifier(column)) FROM \(table) WHERE \(keyMatch)")
        }
        selectCell = selects
        self.table = t
        columnIndex = Dictionary(uniqueKeysWithValues: t.columns.enumerated().map { ($1, $0) })
    }
}

extension TableStatements {
    /// `INSERT INTO t (key..., columns...) ... ON CONFLICT (key) DO UPDATE SET` those
    /// columns; with no columns, an insert of the key that keeps an existing row.
    func upsert(columns: [String], db: SQLiteConnection) throws -> SQLiteStatement {
        if let s = upserts[columns] { return s }
        let name = quoteIdentifier(table.name)
        let keyList = table.pkColumns.map(quoteIdentifier).joined(separator: ", ")
        let all = table.pkColumns + columns
        let params = all.indices.map { "?\($0 + 1)" }.joined(separator: ", ")
        let sql: String
        if columns.isEmpty {
            sql = "INSERT OR IGNORE INTO \(name) (\(keyList)) VALUES (\(params))"
        } else {
            let sets = columns.map { "\(quoteIdentifier($0)) = excluded.\(quoteIdentifier($0))" }.joined(separator: ", ")
            sql = "INSERT INTO \(name) (\(all.map(quoteIdentifier).joined(separator: ", "))) VALUES (\(params)) ON CONFLICT (\(keyList)) DO UPDATE SET \(sets)"
        }
        let s = try db.prepare(sql)
        upserts[columns] = s
        return s
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
