import CSQLite
import Foundation
import PatinaCore

/// A read-only connection to the store's database, for queries that stream
/// their rows. One task uses a reader at a time (the API keeps a pool); WAL
/// lets readers run while the writer commits, each on a consistent snapshot.
///
/// @unchecked Sendable: a reader is handed between tasks but never used by two
/// at once; the pool that owns it guarantees that.
public final class StoreReader: @unchecked Sendable {
    let db: SQLiteConnection
    private let guardState = CaptureState()
    private let deadline = DeadlineBox()

    public init(path: String) throws {
        do {
            db = try SQLiteConnection(path: path, readOnly: true, create: false)
        } catch {
            throw StoreOpenError(path: path, reason: error.message)
        }
        try db.execute("PRAGMA query_only = 1")
        // The guard refuses ATTACH, pragma writes and internal functions here too.
        CaptureFunctions.register(on: db.handle, state: guardState)
        guardState.userStatementsActive = true
        deadline.install(on: db.handle)
    }

    /// Prepares a query and returns a cursor over its rows. `timeout` bounds the
    /// whole time the cursor spends inside SQLite.
    public func open(_ sql: String, _ parameters: StatementParameters = .none, timeout: Duration? = nil) throws -> ReadCursor {
        guardState.deniedReason = nil
        guardState.readTables = []
        let stmt: SQLiteStatement
        do {
            stmt = try db.prepareSingle(sql)
        } catch {
            if let reason = guardState.deniedReason { throw StatementNotAllowed(reason: reason) }
            throw error
        }
        guard stmt.isReadOnly else {
            throw StatementNotAllowed(reason: "queries must not write; send writes to /v1/transactions")
        }
        try bind(stmt, parameters)
        deadline.set(timeout)
        return ReadCursor(statement: stmt, reader: self)
    }

    func clearDeadline() { deadline.set(nil) }

    /// The tables the last opened query reads (for subscriptions).
    public var lastReadTables: Set<String> { guardState.readTables }

    /// Copies the whole database, consistently, into a new file (`VACUUM INTO`).
    public func backup(to path: String) throws {
        guardState.userStatementsActive = false
        defer { guardState.userStatementsActive = true }
        try db.execute("PRAGMA query_only = 0")
        defer { try? db.execute("PRAGMA query_only = 1") }
        let stmt = try db.prepare("VACUUM INTO ?")
        stmt.bind(path, at: 1)
        try stmt.step()
    }
}

/// Rows of one query, fetched in pages so large results never sit in memory.
///
/// @unchecked Sendable: like its reader, a cursor moves between tasks but is
/// used by one at a time (the query stream that owns it pages it in order).
public final class ReadCursor: @unchecked Sendable {
    let statement: SQLiteStatement
    let reader: StoreReader
    private var done = false
    public let columns: [String]

    init(statement: SQLiteStatement, reader: StoreReader) {
        self.statement = statement
        self.reader = reader
        columns = (0..<statement.columnCount).map { statement.columnName($0) }
    }

    /// Up to `limit` more rows; an empty array once the query is exhausted.
    public func next(limit: Int) throws -> [[SQLValue]] {
        if done { return [] }
        var rows: [[SQLValue]] = []
        rows.reserveCapacity(min(limit, 1024))
        do {
            while rows.count < limit {
                guard try statement.step() else {
                    close()
                    break
                }
                rows.append((0..<statement.columnCount).map { statement.value(at: $0) })
            }
        } catch {
            close()
            // (A `catch ... where` on this typed error crashes Swift 6.3's SILGen.)
            if error.isInterrupt { throw StatementTimeout() }
            throw error
        }
        return rows
    }

    /// For identity of subscription rows: the table and column each result column
    /// comes from, when it comes straight from a table column.
    public var columnOrigins: [(table: String, column: String)?] {
        (0..<statement.columnCount).map { i in
            guard let t = sqlite3_column_table_name(statement.handle, Int32(i)),
                  let c = sqlite3_column_origin_name(statement.handle, Int32(i)) else { return nil }
            return (String(cString: t), String(cString: c))
        }
    }

    public func close() {
        if !done {
            done = true
            statement.reset()
            reader.clearDeadline()
        }
    }

    deinit { close() }
}

/// A statement ran past its time limit and was interrupted.
public struct StatementTimeout: Error, CustomStringConvertible, Sendable {
    public init() {}
    public var description: String { "statement timed out" }
}

/// The deadline a progress handler enforces on one connection.
final class DeadlineBox {
    private var deadlineNanos: UInt64 = 0  // 0: none

    func set(_ timeout: Duration?) {
        guard let timeout else {
            deadlineNanos = 0
            return
        }
        let (s, atto) = timeout.components
        deadlineNanos = DispatchTime.now().uptimeNanoseconds &+ UInt64(max(0, s)) * 1_000_000_000 &+ UInt64(max(0, atto) / 1_000_000_000)
    }

    /// SQLite calls the handler every few thousand VM steps; non-zero interrupts.
    func install(on db: OpaquePointer) {
        sqlite3_progress_handler(db, 4000, { ctx in
            let box = Unmanaged<DeadlineBox>.fromOpaque(ctx!).takeUnretainedValue()
            guard box.deadlineNanos != 0 else { return 0 }
            return DispatchTime.now().uptimeNanoseconds > box.deadlineNanos ? 1 : 0
        }, Unmanaged.passUnretained(self).toOpaque())
    }
}

func bind(_ stmt: SQLiteStatement, _ parameters: StatementParameters) throws {
    switch parameters {
    case .none:
        if stmt.parameterCount > 0 {
            throw SQLiteError(code: SQLITE_RANGE, message: "statement has \(stmt.parameterCount) parameters, none given", sql: stmt.sql)
        }
    case .positional(let values):
        guard values.count == stmt.parameterCount else {
            throw SQLiteError(code: SQLITE_RANGE, message: "statement has \(stmt.parameterCount) parameters, \(values.count) given", sql: stmt.sql)
        }
        try stmt.bind(values)
    case .named(let values):
        for i in stride(from: 1, through: stmt.parameterCount, by: 1) {
            guard let name = stmt.parameterName(i) else {
                throw SQLiteError(code: SQLITE_RANGE, message: "positional parameter ?\(i) in a statement given named parameters", sql: stmt.sql)
            }
            guard let value = values[name] ?? values[String(name.dropFirst())] else {
                throw SQLiteError(code: SQLITE_RANGE, message: "no value for parameter \(name)", sql: stmt.sql)
            }
            try stmt.bind(value, at: i)
        }
    }
}
