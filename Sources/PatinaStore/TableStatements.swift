import PatinaCore

/// The prepared statements the store runs against one replicated table.
final class TableStatements {
    let selectRow: String
    /// A row's clock: site, db_version, seq, cells (see ``RowClock/Stored``).
    let selectClock: SQLiteStatement
    let writeClock: SQLiteStatement
    let deleteClock: SQLiteStatement
    let deleteRow: SQLiteStatement
    /// Per column: a read of that one cell.
    let selectCell: [String: SQLiteStatement]
    /// Upserts of a row's key and some of its cells, by the set of cells.
    private var upserts: [[String]: SQLiteStatement] = [:]
    private var batchInserts: [Int: SQLiteStatement] = [:]
    private let db: SQLiteConnection
    private let table: TableInfo
    let columnIndex: [String: Int]
    /// The clock table is keyed by the row's integer key rather than its packed
    /// form (see ReplicatedTableDDL.clockTable).
    let integerKey: Bool

    init(table t: TableInfo, integerKey: Bool, db: SQLiteConnection) throws {
        let table = quoteIdentifier(t.name)
        let clock = quoteIdentifier(t.clockTable)
        let keyMatch = t.pkColumns.enumerated().map { "\(quoteIdentifier($1)) = ?\($0 + 1)" }.joined(separator: " AND ")
        selectRow = "SELECT \(t.columns.map(quoteIdentifier).joined(separator: ", ")) FROM \(table) WHERE \(keyMatch)"
        selectClock = try db.prepare("SELECT site, db_version, seq, cells FROM \(clock) WHERE pk = ?1")
        writeClock = try db.prepare("INSERT OR REPLACE INTO \(clock) (pk, site, db_version, seq, cells) VALUES (?1, ?2, ?3, ?4, ?5)")
        deleteClock = try db.prepare("DELETE FROM \(clock) WHERE pk = ?1")
        deleteRow = try db.prepare("DELETE FROM \(table) WHERE \(keyMatch)")
        var selects: [String: SQLiteStatement] = [:]
        for column in t.columns {
            selects[column] = try db.prepare("SELECT \(quoteIdentifier(column)) FROM \(table) WHERE \(keyMatch)")
        }
        selectCell = selects
        self.table = t
        self.db = db
        self.integerKey = integerKey
        columnIndex = Dictionary(uniqueKeysWithValues: t.columns.enumerated().map { ($1, $0) })
    }

    /// Binds a row's clock key: its packed key, or the integer of an integer-keyed table.
    func bindClockKey(_ stmt: SQLiteStatement, _ pk: PackedPrimaryKey, at index: Int = 1) throws {
        if integerKey {
            guard let v = Self.singleInteger(pk.bytes) else {
                throw RowClock.MalformedClock()  // validated keys of an integer key are integers
            }
            stmt.bind(v, at: index)
        } else {
            stmt.bind(pk.bytes, at: index)
        }
    }

    /// The integer of a packed one-integer key (``PackedPrimaryKey``), or nil.
    static func singleInteger(_ bytes: [UInt8]) -> Int64? {
        guard bytes.count >= 2, bytes[0] == 1, bytes[1] & 7 == 1 else { return nil }
        let n = Int(bytes[1] >> 3)
        guard n <= 8, bytes.count == 2 + n else { return nil }
        if n == 0 { return 0 }
        var u: UInt64 = bytes[2] >= 0x80 ? ~0 : 0  // sign extension
        for k in 0..<n { u = u << 8 | UInt64(bytes[2 + k]) }
        return Int64(bitPattern: u)
    }

    /// The clock of one row, or nil when it has none.
    func readClock(_ pk: PackedPrimaryKey) throws -> RowClock? {
        let s = selectClock
        s.reset()
        try bindClockKey(s, pk)
        defer { s.reset() }
        guard try s.step() else { return nil }
        return try Self.clock(from: s, at: 0)
    }

    /// Decodes the stored columns `site, db_version, seq, cells` starting at `column`.
    static func clock(from s: SQLiteStatement, at column: Int) throws -> RowClock {
        if case .blob(let bytes) = s.value(at: column + 3) { return try RowClock(.explicit(bytes)) }
        return try RowClock(.compact(site: s.int64(at: column), version: s.int64(at: column + 1),
                                     seq: s.int64(at: column + 2), count: s.int64(at: column + 3)))
    }

    /// Stores a row's clock; an empty one deletes the clock row.
    func storeClock(_ pk: PackedPrimaryKey, _ clock: RowClock) throws {
        if clock.isEmpty {
            deleteClock.reset()
            try bindClockKey(deleteClock, pk)
            try deleteClock.step()
            deleteClock.reset()
            return
        }
        let s = writeClock
        s.reset()
        try bindClockKey(s, pk)
        try Self.bindStored(s, clock.stored)
        try s.step()
        s.reset()
    }

    /// Binds the stored form as the four parameters after the key at `keyIndex`.
    static func bindStored(_ s: SQLiteStatement, _ stored: RowClock.Stored, at keyIndex: Int = 1) throws {
        switch stored {
        case .compact(let site, let version, let seq, let count):
            s.bind(site, at: keyIndex + 1)
            s.bind(version, at: keyIndex + 2)
            s.bind(seq, at: keyIndex + 3)
            s.bind(count, at: keyIndex + 4)
        case .explicit(let bytes):
            try s.bind(.null, at: keyIndex + 1)
            try s.bind(.null, at: keyIndex + 2)
            try s.bind(.null, at: keyIndex + 3)
            s.bind(bytes, at: keyIndex + 4)
        }
    }

    /// Rows per statement of the batched clock inserts, largest first: powers
    /// of two, so any batch takes few statements and few are ever prepared
    /// (3 + 2 × 128 parameters stays under SQLite's historical 999).
    static let batchSizes = [128, 64, 32, 16, 8, 4, 2, 1]

    /// Compact first-life clocks of `rows` rows in one statement: ?1 site,
    /// ?2 db_version, ?3 cell count (shared), then per row k its key at
    /// ?(4 + 2k) and seq at ?(5 + 2k).
    func insertFirstLifeClocks(rows: Int) throws -> SQLiteStatement {
        if let s = batchInserts[rows] { return s }
        let values = (0..<rows).map { "(?\(4 + 2 * $0), ?1, ?2, ?\(5 + 2 * $0), ?3)" }.joined(separator: ", ")
        let s = try db.prepare("INSERT INTO \(quoteIdentifier(table.clockTable)) (pk, site, db_version, seq, cells) VALUES \(values) ON CONFLICT (pk) DO NOTHING")
        batchInserts[rows] = s
        return s
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
        let s = try TableStatements(table: table, integerKey: integerKeyTables.contains(table.name), db: db)
        tableStatements[table.name] = s
        return s
    }
}
