import CPatinaShims
import CSQLite
import Foundation
import PatinaCore

/// An error reported by SQLite, with its message and, where known, the statement.
public struct SQLiteError: Error, CustomStringConvertible, Sendable {
    public let code: Int32
    public let message: String
    public let sql: String?

    public var description: String {
        if let sql { return "\(message) (SQLite error \(code), in: \(sql.prefix(200)))" }
        return "\(message) (SQLite error \(code))"
    }

    /// Primary result code (the low byte of an extended code).
    public var primaryCode: Int32 { code & 0xff }
    public var isBusy: Bool { primaryCode == SQLITE_BUSY || primaryCode == SQLITE_LOCKED }
    public var isInterrupt: Bool { primaryCode == SQLITE_INTERRUPT }
    public var isAuthorizationDenied: Bool { primaryCode == SQLITE_AUTH }
    public var isCorrupt: Bool { primaryCode == SQLITE_CORRUPT || primaryCode == SQLITE_NOTADB }
}

/// One SQLite connection. Not thread-safe: its owner serializes access (the
/// ``Store`` holds it under a mutex and runs it on the caller's thread, never
/// on a cooperative-pool thread for long).
final class SQLiteConnection {
    let handle: OpaquePointer
    private var statementCache: [String: SQLiteStatement] = [:]

    /// Process-wide SQLite settings, applied once before the first connection.
    private static let configured: Bool = {
        _ = patina_sqlite3_disable_memstatus()
        return true
    }()

    init(path: String, readOnly: Bool = false, create: Bool = true) throws(SQLiteError) {
        _ = Self.configured
        var db: OpaquePointer?
        var flags = SQLITE_OPEN_NOMUTEX
        flags |= readOnly ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0))
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open database"
            if let db { sqlite3_close_v2(db) }
            throw SQLiteError(code: rc, message: "\(path): \(message)", sql: nil)
        }
        handle = db
        sqlite3_extended_result_codes(db, 1)
        sqlite3_busy_timeout(db, 5000)
    }

    deinit {
        statementCache.removeAll()
        sqlite3_close_v2(handle)
    }

    var lastErrorMessage: String { String(cString: sqlite3_errmsg(handle)) }
    var changes: Int { Int(sqlite3_changes64(handle)) }
    var totalChanges: Int { Int(sqlite3_total_changes64(handle)) }
    var isAutocommit: Bool { sqlite3_get_autocommit(handle) != 0 }

    func error(_ code: Int32, sql: String?) -> SQLiteError {
        SQLiteError(code: code, message: lastErrorMessage, sql: sql)
    }

    /// Runs one or more statements that return no rows.
    func execute(_ sql: String) throws(SQLiteError) {
        var errmsg: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(handle, sql, nil, nil, &errmsg)
        if rc != SQLITE_OK {
            let message = errmsg.map { String(cString: $0) } ?? lastErrorMessage
            sqlite3_free(errmsg)
            throw SQLiteError(code: rc, message: message, sql: sql)
        }
    }

    /// A fresh prepared statement (the caller owns it).
    func prepare(_ sql: String) throws(SQLiteError) -> SQLiteStatement {
        var stmt: OpaquePointer?
        let rc = sqlite3_prepare_v3(handle, sql, -1, 0, &stmt, nil)
        guard rc == SQLITE_OK, let stmt else { throw error(rc == SQLITE_OK ? SQLITE_MISUSE : rc, sql: sql) }
        return SQLiteStatement(handle: stmt, connection: self, sql: sql)
    }

    /// A prepared statement cached on this connection, reset and unbound.
    func cached(_ sql: String) throws(SQLiteError) -> SQLiteStatement {
        if let stmt = statementCache[sql] {
            stmt.reset()
            return stmt
        }
        var stmt: OpaquePointer?
        let rc = sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &stmt, nil)
        guard rc == SQLITE_OK, let stmt else { throw error(rc == SQLITE_OK ? SQLITE_MISUSE : rc, sql: sql) }
        let statement = SQLiteStatement(handle: stmt, connection: self, sql: sql)
        statementCache[sql] = statement
        return statement
    }

    /// Drops cached statements (after a schema change).
    func clearStatementCache() { statementCache.removeAll() }

    /// Convenience: runs a statement with parameters and returns every row.
    func query(_ sql: String, _ params: [SQLValue] = []) throws(SQLiteError) -> [[SQLValue]] {
        let stmt = try cached(sql)
        try stmt.bind(params)
        var rows: [[SQLValue]] = []
        while try stmt.step() {
            rows.append((0..<stmt.columnCount).map { stmt.value(at: $0) })
        }
        stmt.reset()
        return rows
    }

    /// Convenience: runs a statement with parameters, ignoring rows.
    func run(_ sql: String, _ params: [SQLValue] = []) throws(SQLiteError) {
        let stmt = try cached(sql)
        try stmt.bind(params)
        while try stmt.step() {}
        stmt.reset()
    }

    func scalar(_ sql: String, _ params: [SQLValue] = []) throws(SQLiteError) -> SQLValue? {
        try query(sql, params).first?.first
    }
}

/// A prepared statement. Values are copied out when read.
final class SQLiteStatement {
    let handle: OpaquePointer
    unowned let connection: SQLiteConnection
    let sql: String

    init(handle: OpaquePointer, connection: SQLiteConnection, sql: String) {
        self.handle = handle
        self.connection = connection
        self.sql = sql
    }

    deinit { sqlite3_finalize(handle) }

    var columnCount: Int { Int(sqlite3_column_count(handle)) }
    var parameterCount: Int { Int(sqlite3_bind_parameter_count(handle)) }
    var isReadOnly: Bool { sqlite3_stmt_readonly(handle) != 0 }

    func columnName(_ i: Int) -> String { String(cString: sqlite3_column_name(handle, Int32(i))) }
    func parameterIndex(_ name: String) -> Int { Int(sqlite3_bind_parameter_index(handle, name)) }
    func parameterName(_ i: Int) -> String? { sqlite3_bind_parameter_name(handle, Int32(i)).map { String(cString: $0) } }

    func reset() {
        sqlite3_reset(handle)
        sqlite3_clear_bindings(handle)
    }

    /// Resets without clearing bindings, for a statement whose every parameter
    /// is bound again before each step (clearing hundreds costs).
    func rewind() { sqlite3_reset(handle) }

    func bind(_ values: [SQLValue]) throws(SQLiteError) {
        for (i, v) in values.enumerated() { try bind(v, at: i + 1) }
    }

    func bind(_ value: SQLValue, at index: Int) throws(SQLiteError) {
        let i = Int32(index)
        let rc: Int32
        switch value {
        case .null: rc = sqlite3_bind_null(handle, i)
        case .integer(let v): rc = sqlite3_bind_int64(handle, i, v)
        case .real(let v): rc = sqlite3_bind_double(handle, i, v)
        case .text(let s):
            rc = withCText(s) { p, n in patina_sqlite3_bind_text_transient(handle, i, p, n) }
        case .blob(let b):
            rc = b.withUnsafeBytes { buf in
                // A zero-length blob must still bind as a blob, not NULL.
                patina_sqlite3_bind_blob_transient(handle, i, buf.baseAddress ?? UnsafeRawPointer(bitPattern: 1), Int32(buf.count))
            }
        }
        if rc != SQLITE_OK { throw connection.error(rc, sql: sql) }
    }

    func bind(_ v: Int64, at index: Int) { sqlite3_bind_int64(handle, Int32(index), v) }

    func bind(_ bytes: [UInt8], at index: Int) {
        bytes.withUnsafeBytes { buf in
            _ = patina_sqlite3_bind_blob_transient(handle, Int32(index), buf.baseAddress ?? UnsafeRawPointer(bitPattern: 1), Int32(buf.count))
        }
    }

    func bind(_ s: String, at index: Int) {
        _ = withCText(s) { p, n in patina_sqlite3_bind_text_transient(handle, Int32(index), p, n) }
    }

    /// Advances; true while a row is available.
    @discardableResult
    func step() throws(SQLiteError) -> Bool {
        let rc = sqlite3_step(handle)
        switch rc {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default:
            let err = connection.error(rc, sql: sql)
            sqlite3_reset(handle)
            throw err
        }
    }

    func int64(at i: Int) -> Int64 { sqlite3_column_int64(handle, Int32(i)) }
    func isNull(at i: Int) -> Bool { sqlite3_column_type(handle, Int32(i)) == SQLITE_NULL }

    func bytes(at i: Int) -> [UInt8] {
        let n = Int(sqlite3_column_bytes(handle, Int32(i)))
        guard n > 0, let p = sqlite3_column_blob(handle, Int32(i)) else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: n))
    }

    func string(at i: Int) -> String {
        guard let p = sqlite3_column_text(handle, Int32(i)) else { return "" }
        let n = Int(sqlite3_column_bytes(handle, Int32(i)))
        return String(decoding: UnsafeBufferPointer(start: p, count: n), as: UTF8.self)
    }

    func value(at i: Int) -> SQLValue {
        switch sqlite3_column_type(handle, Int32(i)) {
        case SQLITE_INTEGER: .integer(int64(at: i))
        case SQLITE_FLOAT: .real(sqlite3_column_double(handle, Int32(i)))
        case SQLITE_TEXT: .text(string(at: i))
        case SQLITE_BLOB: .blob(bytes(at: i))
        default: .null
        }
    }
}

/// Reads a value passed to a custom SQL function.
func sqlValue(of arg: OpaquePointer?) -> SQLValue {
    switch sqlite3_value_type(arg) {
    case SQLITE_INTEGER: return .integer(sqlite3_value_int64(arg))
    case SQLITE_FLOAT: return .real(sqlite3_value_double(arg))
    case SQLITE_TEXT:
        let n = Int(sqlite3_value_bytes(arg))
        guard let p = sqlite3_value_text(arg) else { return .text("") }
        return .text(String(decoding: UnsafeBufferPointer(start: p, count: n), as: UTF8.self))
    case SQLITE_BLOB:
        let n = Int(sqlite3_value_bytes(arg))
        guard n > 0, let p = sqlite3_value_blob(arg) else { return .blob([]) }
        return .blob(Array(UnsafeRawBufferPointer(start: p, count: n)))
    default: return .null
    }
}

/// Calls `body` with the UTF-8 bytes of `s` and their count; the pointer is never
/// NULL, so an empty string binds as empty text rather than NULL.
func withCText<R>(_ s: String, _ body: (UnsafePointer<CChar>, Int32) -> R) -> R {
    var s = s
    return s.withUTF8 { buf in
        let empty: StaticString = ""
        let base = buf.baseAddress ?? empty.utf8Start
        return body(UnsafeRawPointer(base).assumingMemoryBound(to: CChar.self), Int32(buf.count))
    }
}

func quoteIdentifier(_ name: String) -> String {
    "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
}

extension SQLiteConnection {
    /// Prepares exactly one statement; text after it (other than whitespace,
    /// semicolons and comments) is an error rather than silently ignored.
    func prepareSingle(_ sql: String) throws(SQLiteError) -> SQLiteStatement {
        var stmt: OpaquePointer?
        var tail: UnsafePointer<CChar>?
        let rc = sql.withCString { base -> Int32 in
            let rc = sqlite3_prepare_v3(handle, base, -1, 0, &stmt, &tail)
            if rc == SQLITE_OK, let t = tail, t.pointee != 0 {
                var rest: OpaquePointer?
                var restTail: UnsafePointer<CChar>?
                // A tail of only comments/whitespace prepares to a NULL statement.
                let rc2 = sqlite3_prepare_v3(handle, t, -1, 0, &rest, &restTail)
                if rest != nil {
                    sqlite3_finalize(rest)
                    return -2
                }
                if rc2 != SQLITE_OK { return -2 }
            }
            return rc
        }
        if rc == -2 {
            sqlite3_finalize(stmt)
            throw SQLiteError(code: SQLITE_ERROR, message: "only one SQL statement is allowed per entry", sql: sql)
        }
        guard rc == SQLITE_OK else { throw error(rc, sql: sql) }
        guard let stmt else { throw SQLiteError(code: SQLITE_MISUSE, message: "empty SQL statement", sql: sql) }
        return SQLiteStatement(handle: stmt, connection: self, sql: sql)
    }
}
