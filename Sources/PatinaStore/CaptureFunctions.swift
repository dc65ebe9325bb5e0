import CPatinaShims
import CSQLite
import Foundation
import PatinaCore

/// State shared between the store and its writer connection's callbacks.
///
/// Local writes are captured by SQLite's preupdate hook (``CaptureFunctions/installCapture(on:state:)``):
/// for every row a user statement inserts, updates or deletes in a replicated
/// table, the hook records a ``RowEvent`` with the row's packed key and its
/// non-key values. At commit the store turns the events into clock rows and
/// changes in one batch (StoreCore+Local.swift). Merges turn capturing off, so
/// merged writes are never captured again as local ones.
///
/// Why a hook and not triggers: a trigger program per row, plus the SQL
/// functions it calls, cost more than the plain insert itself; the hook is one
/// C call per row and hands over the values the changeset needs anyway.
final class CaptureState {
    var capturing = false
    /// The replicated tables, as the hook matches them (set by loadTables).
    var watched: [CapturedTable] = []
    private var lastWatched = 0
    /// Row changes of the running local transaction, in order. Exclusivity is
    /// not checked at run time: only the writer's thread touches these, from the
    /// hook or between statements (never both at once), and the checks cost a
    /// measurable share of a replicated insert.
    @exclusivity(unchecked) var events: [RowEvent] = []
    /// The events' non-key values, back to back (one array per transaction,
    /// not one per row).
    @exclusivity(unchecked) var values: [SQLValue] = []

    /// `count` values recorded from `start` (see ``RowEvent``).
    func values(from start: Int32, count: Int) -> [SQLValue] {
        start < 0 ? [] : Array(values[Int(start)..<(Int(start) + count)])
    }
    /// True while user-supplied SQL runs: the authorizer then refuses writes to
    /// internal tables, DDL and transaction control.
    var userStatementsActive = false
    var deniedReason: String?
    /// Tables read by user statements prepared since the last reset.
    var readTables: Set<String> = []

    func watchedIndex(_ name: UnsafePointer<CChar>) -> Int? {
        if lastWatched < watched.count, watched[lastWatched].matches(name) { return lastWatched }
        for i in watched.indices where watched[i].matches(name) {
            lastWatched = i
            return i
        }
        return nil
    }
}

/// A replicated table as the preupdate hook sees it: column positions are the
/// table's declaration order (what `sqlite3_preupdate_old/new` index by).
/// A class so the hook takes one reference per row, not one per field.
final class CapturedTable {
    let name: String
    let cName: [CChar]
    /// Declaration positions of the key columns, in key order.
    let pkPositions: [Int32]
    /// Declaration positions of the non-key columns, in ``TableInfo/columns`` order.
    let valuePositions: [Int32]
    /// The key is the rowid, which the hook is handed directly.
    let rowidKey: Bool
    /// Declaration positions of REAL-affinity columns (see ``ColumnInfo/hasRealAffinity``).
    let realPositions: Set<Int32>

    init(table: TableInfo, declarationOrder: [String], rowidKey: Bool) {
        self.rowidKey = rowidKey
        name = table.name
        cName = Array(table.name.utf8CString)
        let position = Dictionary(uniqueKeysWithValues: declarationOrder.enumerated().map { ($1, Int32($0)) })
        pkPositions = table.pkColumns.map { position[$0]! }
        valuePositions = table.columns.map { position[$0]! }
        realPositions = Set(table.realColumns.compactMap { position[$0] })
    }

    func matches(_ name: UnsafePointer<CChar>) -> Bool {
        cName.withUnsafeBufferPointer { strcmp($0.baseAddress!, name) == 0 }
    }
}

/// One row changed by a local statement. An update of the key is recorded as a
/// delete of the old key and an insert of the new one (as cr-sqlite does).
struct RowEvent {
    enum Op: UInt8 { case insert, delete, update }
    var op: Op
    var table: Int32
    var pk: [UInt8]
    /// Where the non-key values before the change start in ``CaptureState/values``
    /// (updates only; else -1).
    var old: Int32
    /// Where the non-key values after the change start (inserts and updates;
    /// else -1), after affinity.
    var new: Int32
}

enum CaptureFunctions {
    /// Installs local-write capture on the store's writer connection: the
    /// preupdate hook, and triggers off so the guard triggers (which refuse
    /// writes from any other connection) never fire here. `state` must outlive
    /// the connection; the store owns both and the connection closes first.
    static func installCapture(on db: OpaquePointer, state: CaptureState) {
        _ = patina_sqlite3_disable_triggers(db)
        patina_sqlite3_preupdate_hook(db, { context, db, op, _, name, oldRowid, newRowid in
            let state = Unmanaged<CaptureState>.fromOpaque(context!).takeUnretainedValue()
            guard state.capturing, let db, let name, let t = state.watchedIndex(name) else { return }
            let table = state.watched[t]
            switch op {
            case SQLITE_INSERT:
                let pk = CaptureFunctions.packKey(db, table, new: true, rowid: newRowid)
                let new = CaptureFunctions.record(db, table, new: true, into: state)
                state.events.append(RowEvent(op: .insert, table: Int32(t), pk: pk, old: -1, new: new))
            case SQLITE_DELETE:
                state.events.append(RowEvent(op: .delete, table: Int32(t), pk: CaptureFunctions.packKey(db, table, new: false, rowid: oldRowid),
                                             old: -1, new: -1))
            default:
                let oldKey = CaptureFunctions.packKey(db, table, new: false, rowid: oldRowid)
                let newKey = CaptureFunctions.packKey(db, table, new: true, rowid: newRowid)
                if oldKey == newKey {
                    let old = CaptureFunctions.record(db, table, new: false, into: state)
                    let new = CaptureFunctions.record(db, table, new: true, into: state)
                    state.events.append(RowEvent(op: .update, table: Int32(t), pk: newKey, old: old, new: new))
                } else {
                    state.events.append(RowEvent(op: .delete, table: Int32(t), pk: oldKey, old: -1, new: -1))
                    let new = CaptureFunctions.record(db, table, new: true, into: state)
                    state.events.append(RowEvent(op: .insert, table: Int32(t), pk: newKey, old: -1, new: new))
                }
            }
        }, Unmanaged.passUnretained(state).toOpaque())
    }

    fileprivate static func value(_ db: OpaquePointer, _ position: Int32, new: Bool) -> OpaquePointer? {
        new ? patina_sqlite3_preupdate_new(db, position) : patina_sqlite3_preupdate_old(db, position)
    }

    /// A column's value as stored; an integer read from a REAL column is the real it stands for.
    fileprivate static func stored(_ db: OpaquePointer, _ table: CapturedTable, _ position: Int32, new: Bool) -> SQLValue {
        let v = sqlValue(of: value(db, position, new: new))
        if case .integer(let i) = v, table.realPositions.contains(position) { return .real(Double(i)) }
        return v
    }

    fileprivate static func packKey(_ db: OpaquePointer, _ table: CapturedTable, new: Bool, rowid: Int64) -> [UInt8] {
        if table.rowidKey { return packInteger(rowid) { Array($0) } }
        if table.pkPositions.count == 1, !table.realPositions.contains(table.pkPositions[0]) {
            let v = value(db, table.pkPositions[0], new: new)
            if sqlite3_value_type(v) == SQLITE_INTEGER {
                return packInteger(sqlite3_value_int64(v)) { Array($0) }
            }
        }
        var bytes: [UInt8] = [UInt8(truncatingIfNeeded: table.pkPositions.count)]
        for p in table.pkPositions { PackedPrimaryKey.append(stored(db, table, p, new: new), to: &bytes) }
        return bytes
    }

    /// Appends the row's non-key values to `state.values`; returns where they start.
    fileprivate static func record(_ db: OpaquePointer, _ table: CapturedTable, new: Bool, into state: CaptureState) -> Int32 {
        let start = Int32(state.values.count)
        for p in table.valuePositions { state.values.append(stored(db, table, p, new: new)) }
        return start
    }

    /// Registers the SQL functions and the authorizer on `db`. `state` must
    /// outlive the connection; the store owns both and the connection closes first.
    static func register(on db: OpaquePointer, state: CaptureState) {
        let context = Unmanaged.passUnretained(state).toOpaque()
        let flags = SQLITE_UTF8 | SQLITE_INNOCUOUS
        sqlite3_create_function_v2(db, "patina_pack", -1, flags | SQLITE_DETERMINISTIC, nil, { ctx, argc, argv in
            // The usual key, one integer, packs on the stack (no allocation).
            if argc == 1, sqlite3_value_type(argv![0]) == SQLITE_INTEGER {
                packInteger(sqlite3_value_int64(argv![0])) { buf in
                    patina_sqlite3_result_blob_transient(ctx, buf.baseAddress, Int32(buf.count))
                }
                return
            }
            var bytes: [UInt8] = [UInt8(truncatingIfNeeded: argc)]
            for i in 0..<Int(argc) { PackedPrimaryKey.append(sqlValue(of: argv![i]), to: &bytes) }
            bytes.withUnsafeBytes { buf in
                patina_sqlite3_result_blob_transient(ctx, buf.baseAddress, Int32(buf.count))
            }
        }, nil, nil, nil)

        // Guards user SQL (see CaptureState.userStatementsActive). Arguments: action,
        // two action-specific strings, the database name, and the innermost trigger
        // or view (NULL for the user's own statement).
        sqlite3_set_authorizer(db, { userData, action, arg1, arg2, _, trigger in
            let state = Unmanaged<CaptureState>.fromOpaque(userData!).takeUnretainedValue()
            guard state.userStatementsActive else { return SQLITE_OK }
            let a1 = arg1.map { String(cString: $0) } ?? ""
            switch action {
            case SQLITE_READ:
                if !a1.isEmpty && !a1.contains("__patina") && !a1.hasPrefix("sqlite_") { state.readTables.insert(a1) }
                return SQLITE_OK
            case SQLITE_INSERT, SQLITE_UPDATE, SQLITE_DELETE:
                if trigger == nil && a1.hasPrefix("sqlite_") {
                    state.deniedReason = "schema changes go through schema files and `patina reload`, not transactions"
                    return SQLITE_DENY
                }
                if trigger == nil && a1.contains("__patina") {
                    state.deniedReason = "writes to internal table \(a1) are not allowed"
                    return SQLITE_DENY
                }
                return SQLITE_OK
            case SQLITE_CREATE_INDEX, SQLITE_CREATE_TABLE, SQLITE_CREATE_TEMP_INDEX, SQLITE_CREATE_TEMP_TABLE,
                SQLITE_CREATE_TEMP_TRIGGER, SQLITE_CREATE_TEMP_VIEW, SQLITE_CREATE_TRIGGER, SQLITE_CREATE_VIEW,
                SQLITE_DROP_INDEX, SQLITE_DROP_TABLE, SQLITE_DROP_TEMP_INDEX, SQLITE_DROP_TEMP_TABLE,
                SQLITE_DROP_TEMP_TRIGGER, SQLITE_DROP_TEMP_VIEW, SQLITE_DROP_TRIGGER, SQLITE_DROP_VIEW,
                SQLITE_ALTER_TABLE, SQLITE_CREATE_VTABLE, SQLITE_DROP_VTABLE:
                state.deniedReason = "schema changes go through schema files and `patina reload`, not transactions"
                return SQLITE_DENY
            case SQLITE_TRANSACTION, SQLITE_SAVEPOINT:
                state.deniedReason = "transaction control is not allowed: each request is already one transaction"
                return SQLITE_DENY
            case SQLITE_ATTACH, SQLITE_DETACH:
                state.deniedReason = "ATTACH and DETACH are not allowed"
                return SQLITE_DENY
            case SQLITE_PRAGMA:
                if arg2 != nil {
                    state.deniedReason = "setting pragmas is not allowed"
                    return SQLITE_DENY
                }
                return SQLITE_OK
            case SQLITE_FUNCTION:
                let name = arg2.map { String(cString: $0) } ?? ""
                if trigger == nil && name.hasPrefix("patina_") && name != "patina_pack" {
                    state.deniedReason = "function \(name) is internal"
                    return SQLITE_DENY
                }
                return SQLITE_OK
            default:
                return SQLITE_OK
            }
        }, context)
    }
}

/// The packed form of a one-integer key (see ``PackedPrimaryKey``), built on the stack.
func packInteger<R>(_ v: Int64, _ body: (UnsafeRawBufferPointer) -> R) -> R {
    var n = 0
    if v != 0 {
        n = 8
        // Drop leading bytes that are pure sign extension of the next one.
        while n > 1 {
            let top = v >> Int64((n - 1) * 8 - 1)
            if top == 0 || top == -1 { n -= 1 } else { break }
        }
    }
    var buf: (UInt64, UInt64) = (0, 0)
    return withUnsafeMutableBytes(of: &buf) { raw in
        raw[0] = 1
        raw[1] = UInt8(n << 3) | 1
        var k = 0
        while k < n {
            raw[2 + k] = UInt8(truncatingIfNeeded: UInt64(bitPattern: v) >> UInt64((n - 1 - k) * 8))
            k += 1
        }
        return body(UnsafeRawBufferPointer(rebasing: raw[0..<(2 + n)]))
    }
}
