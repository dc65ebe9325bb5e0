import PatinaCore

/// What applying schema files changed.
public struct SchemaReport: Sendable, Equatable {
    public var createdTables: [String] = []
    public var addedColumns: [String] = []  // "table.column"
    public var createdIndexes: [String] = []
    public var isEmpty: Bool { createdTables.isEmpty && addedColumns.isEmpty && createdIndexes.isEmpty }
}

extension StoreCore {
    /// Applies a parsed schema. Only additive changes: new tables, new columns
    /// (nullable or with a DEFAULT), new indexes. Everything else is refused and
    /// nothing is changed.
    ///
    /// A new column needs no clock backfill: every replica fills it with the same
    /// DEFAULT, and a cell without a clock loses to any write of it. (Corrosion
    /// users reported fleet-wide backfill storms from exactly this DDL.)
    func apply(_ schema: ParsedSchema) throws -> SchemaReport {
        var report = SchemaReport()
        var statements: [String] = []
        var created: [TableInfo] = []
        let newNames = Set(schema.tables.map(\.name))
        for name in tables.keys.sorted() where !newNames.contains(name) {
            throw SchemaError(table: name, "was dropped from the schema files; dropping a replicated table is a destructive change and is refused")
        }
        for table in schema.tables {
            let pk = table.columns.filter { $0.pkIndex > 0 }.sorted { $0.pkIndex < $1.pkIndex }.map(\.name)
            let info = TableInfo(name: table.name, pkColumns: pk, columns: table.columns.filter { $0.pkIndex == 0 }.map(\.name))
            if tables[table.name] == nil {
                if try db.scalar("SELECT count(*) FROM sqlite_master WHERE name = ?", [.text(table.name)]) != .integer(0) {
                    throw SchemaError(table: table.name, "already exists in the database as a table or index that is not replicated")
                }
                statements.append(table.sql + ";")
                created.append(info)
                report.createdTables.append(table.name)
                continue
            }
            let existing = try ParsedSchema.columnInfo(of: table.name, in: db)
            let wanted = Dictionary(table.columns.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
            for column in existing {
                guard let new = wanted[column.name] else {
                    throw SchemaError(table: table.name, "column \(column.name) was dropped; destructive changes are refused")
                }
                if new.pkIndex != column.pkIndex {
                    throw SchemaError(table: table.name, "primary key changed (column \(column.name)); destructive changes are refused")
                }
                if new.declaredType.uppercased() != column.declaredType.uppercased() {
                    throw SchemaError(table: table.name, "column \(column.name) changed type from \(column.declaredType) to \(new.declaredType); destructive changes are refused")
                }
                if new.notNull != column.notNull || new.defaultSQL != column.defaultSQL {
                    throw SchemaError(table: table.name, "column \(column.name) changed its NOT NULL or DEFAULT; such changes are refused")
                }
            }
            let existingNames = Set(existing.map(\.name))
            let added = table.columns.filter { !existingNames.contains($0.name) }
            for column in added {
                if column.pkIndex > 0 {
                    throw SchemaError(table: table.name, "primary key changed (new key column \(column.name)); destructive changes are refused")
                }
                statements.append("ALTER TABLE \(quoteIdentifier(table.name)) ADD COLUMN \(column.definitionSQL);")
                report.addedColumns.append("\(table.name).\(column.name)")
            }
        }
        for index in schema.indexes {
            if try db.scalar("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?", [.text(index.name)]) == .integer(0) {
                statements.append(index.sql + ";")
                report.createdIndexes.append(index.name)
            }
        }
        if statements.isEmpty { return report }
        try inTransaction {
            for sql in statements { try db.execute(sql) }
            // The clock's key type depends on the created table (a rowid alias or not).
            for info in created {
                let integerKey = try ReplicatedTableDDL.hasRowidKey(info.name, pkCount: info.pkColumns.count, in: db)
                try db.execute(ReplicatedTableDDL.clockTable(info, integerKey: integerKey))
                try db.execute(ReplicatedTableDDL.guardTriggers(info))
            }
        }
        try loadTables()
        return report
    }
}
