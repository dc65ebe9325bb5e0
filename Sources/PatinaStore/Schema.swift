import Foundation
import PatinaCore

/// Why a schema was refused. Every case names the table (and column) at fault.
public struct SchemaError: Error, CustomStringConvertible, Sendable, Equatable {
    public let table: String?
    public let message: String

    public init(table: String?, _ message: String) {
        self.table = table
        self.message = message
    }

    public var description: String {
        if let table { return "schema: table \(table): \(message)" }
        return "schema: \(message)"
    }
}

/// A column as SQLite reports it.
struct ColumnInfo: Equatable {
    /// SQLite's type affinity rules (datatype3 §3.1), the REAL case: the
    /// declared type mentions REAL, FLOA or DOUB and none of the earlier
    /// rules' words (INT; CHAR, CLOB, TEXT; BLOB or no type at all). SQLite
    /// stores 5.0 in such a column as the integer 5 and its preupdate hook
    /// hands that integer back, so capture and merge turn it into a real again.
    var hasRealAffinity: Bool {
        let t = declaredType.uppercased()
        if t.isEmpty || ["INT", "CHAR", "CLOB", "TEXT", "BLOB"].contains(where: t.contains) { return false }
        return ["REAL", "FLOA", "DOUB"].contains(where: t.contains)
    }

    var name: String
    var declaredType: String
    var notNull: Bool
    var defaultSQL: String?
    /// 1-based position in the primary key, 0 when not part of it.
    var pkIndex: Int

    /// The column definition for `ALTER TABLE ADD COLUMN`.
    var definitionSQL: String {
        var s = quoteIdentifier(name)
        if !declaredType.isEmpty { s += " " + declaredType }
        if notNull { s += " NOT NULL" }
        if let defaultSQL { s += " DEFAULT " + defaultSQL }
        return s
    }
}

/// A replicated table: its primary key columns (in key order) and the others.
public struct TableInfo: Sendable, Equatable {
    public let name: String
    public let pkColumns: [String]
    public let columns: [String]
    /// Non-key and key columns of REAL affinity (see ``ColumnInfo/hasRealAffinity``).
    var realColumns: Set<String> = []

    var clockTable: String { name + "__patina_clock" }
    func hasColumn(_ name: String) -> Bool { columns.contains(name) }
}

/// The tables and indexes of a set of schema files, parsed and checked by SQLite
/// itself (the statements run against an empty in-memory database).
struct ParsedSchema {
    struct Table {
        var name: String
        var sql: String
        var columns: [ColumnInfo]
    }
    var tables: [Table] = []
    var indexes: [(name: String, table: String, sql: String)] = []

    /// Reads every `.sql` file of the given paths (files, or folders read in name order).
    static func load(paths: [String]) throws(SchemaError) -> ParsedSchema {
        var sources: [(file: String, sql: String)] = []
        for path in paths {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                throw SchemaError(table: nil, "schema path \(path) does not exist")
            }
            var files: [String] = []
            if isDirectory.boolValue {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
                files = names.filter { $0.hasSuffix(".sql") }.sorted().map { (path as NSString).appendingPathComponent($0) }
            } else {
                files = [path]
            }
            for file in files {
                guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                    throw SchemaError(table: nil, "cannot read schema file \(file)")
                }
                sources.append((file, text))
            }
        }
        return try parse(sources)
    }

    static func parse(_ sources: [(file: String, sql: String)]) throws(SchemaError) -> ParsedSchema {
        let scratch: SQLiteConnection
        do { scratch = try SQLiteConnection(path: ":memory:") } catch {
            throw SchemaError(table: nil, "cannot open scratch database: \(error)")
        }
        for (file, sql) in sources {
            do { try scratch.execute(sql) } catch {
                throw SchemaError(table: nil, "\(file): \(error.message)")
            }
        }
        var schema = ParsedSchema()
        do {
            let objects = try scratch.query(
                "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY rowid")
            for row in objects {
                guard case .text(let type) = row[0], case .text(let name) = row[1], case .text(let table) = row[2] else { continue }
                let sql: String = if case .text(let s) = row[3] { s } else { "" }
                switch type {
                case "table":
                    let columns = try columnInfo(of: name, in: scratch)
                    try validate(table: name, sql: sql, columns: columns, in: scratch)
                    schema.tables.append(Table(name: name, sql: sql, columns: columns))
                case "index":
                    if sql.isEmpty { continue }  // automatic index of a constraint
                    schema.indexes.append((name, table, sql))
                default:
                    throw SchemaError(table: nil, "\(type) \(name): only CREATE TABLE and CREATE INDEX are allowed in schema files")
                }
            }
        } catch let error as SchemaError {
            throw error
        } catch {
            throw SchemaError(table: nil, "\(error)")
        }
        return schema
    }

    static func columnInfo(of table: String, in db: SQLiteConnection) throws -> [ColumnInfo] {
        try db.query("SELECT name, type, \"notnull\", dflt_value, pk, hidden FROM pragma_table_xinfo(?)", [.text(table)]).map { row in
            guard case .integer(let hidden) = row[5], hidden == 0 else {
                throw SchemaError(table: table, "generated or hidden columns are not supported")
            }
            let name: String = if case .text(let n) = row[0] { n } else { "" }
            let type: String = if case .text(let t) = row[1] { t } else { "" }
            let notNull = row[2] == .integer(1)
            let dflt: String? = if case .text(let d) = row[3] { d } else { nil }
            let pk: Int = if case .integer(let p) = row[4] { Int(p) } else { 0 }
            return ColumnInfo(name: name, declaredType: type, notNull: notNull, defaultSQL: dflt, pkIndex: pk)
        }
    }

    /// The table rules (docs/store.md): what a table needs to be replicated safely.
    static func validate(table: String, sql: String, columns: [ColumnInfo], in db: SQLiteConnection) throws {
        if table.hasPrefix("__patina") || table.contains("__patina_") {
            throw SchemaError(table: table, "names containing __patina are reserved for Patina's internal tables")
        }
        let pk = columns.filter { $0.pkIndex > 0 }
        if pk.isEmpty {
            throw SchemaError(table: table, "has no primary key; every replicated table needs one")
        }
        for c in pk where !c.notNull {
            throw SchemaError(table: table, "primary key column \(c.name) is nullable; declare it NOT NULL")
        }
        for c in columns where c.pkIndex == 0 && c.notNull && c.defaultSQL == nil {
            throw SchemaError(table: table, "column \(c.name) is NOT NULL without a DEFAULT; add a DEFAULT so concurrent partial rows can merge")
        }
        if sql.range(of: "AUTOINCREMENT", options: .caseInsensitive) != nil {
            throw SchemaError(table: table, "AUTOINCREMENT is not allowed: ids assigned by one node collide with another's")
        }
        let uniques = try db.query("SELECT name FROM pragma_index_list(?) WHERE \"unique\" = 1 AND origin != 'pk'", [.text(table)])
        if let first = uniques.first {
            throw SchemaError(table: table, "has a UNIQUE constraint or index (\(first[0])) besides its primary key; concurrent inserts on two nodes could never merge")
        }
        if try !db.query("SELECT 1 FROM pragma_foreign_key_list(?)", [.text(table)]).isEmpty {
            throw SchemaError(table: table, "has a FOREIGN KEY; replicas apply changes in any order, so foreign keys are not allowed")
        }
        if pk.count > 255 || columns.count > 2000 {
            throw SchemaError(table: table, "too many columns")
        }
    }
}
