import CPatinaShims
import CSQLite
import PatinaCore

/// State shared between the store and the SQL functions its triggers call.
///
/// The triggers of replicated tables record each local write in the clock
/// tables through `patina_capturing()`, `patina_version()`, `patina_seq()` and
/// `patina_pack(...)`. The store sets the version before running a local
/// transaction and turns capturing off while it merges remote changes, so
/// merged writes are never captured again as local ones.
///
/// Inserts of new rows (the common case) also hand their cells to the store
/// through `patina_cell(...)`, so the commit builds its changeset from
/// ``cells`` instead of reading the clock tables back. Anything else — an
/// update, a delete, an insert that met an existing clock row, a failed
/// statement — sets ``needsReadBack`` through `patina_slow()`, and the commit
/// reads its changes back from the clocks of the rows it touched (``cells``
/// and ``touched``).
final class CaptureState {
    var capturing = false
    var version: Int64 = 0
    var nextSeq: Int64 = 0
    /// Cells of rows inserted by this transaction (col_version 1, cl 1), in seq order.
    var cells: [CapturedCell] = []
    /// True once the transaction did something ``cells`` cannot describe.
    var needsReadBack = false
    /// Rows whose clocks were written other than through `patina_cell`.
    var touched: [(table: String, pk: [UInt8])] = []
    /// True while user-supplied SQL runs: the authorizer then refuses writes to
    /// internal tables, DDL and transaction control.
    var userStatementsActive = false
    var deniedReason: String?
    /// Tables read by user statements prepared since the last reset.
    var readTables: Set<String> = []
}

/// One cell of a newly inserted row, as its trigger saw it (after affinity).
struct CapturedCell {
    var table: String
    var cid: String
    var val: SQLValue
    var pk: [UInt8]
    var seq: Int64
}

enum CaptureFunctions {
    /// Registers the functions on `db`. `state` must outlive the connection;
    /// the store owns both and the connection closes first.
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
        // patina_cell(table, cid, value, packed pk): records a cell of a new row and returns its seq.
        sqlite3_create_function_v2(db, "patina_cell", 4, flags, context, { ctx, _, argv in
            let state = Unmanaged<CaptureState>.fromOpaque(sqlite3_user_data(ctx)).takeUnretainedValue()
            let seq = state.nextSeq
            state.nextSeq += 1
            // The cells of one row arrive together: share the previous cell's key.
            var pk: [UInt8]
            if let last = state.cells.last, blobEquals(argv![3], last.pk) { pk = last.pk } else { pk = blobValue(argv![3]) }
            state.cells.append(CapturedCell(
                table: textValue(argv![0]), cid: textValue(argv![1]), val: sqlValue(of: argv![2]), pk: pk, seq: seq))
            sqlite3_result_int64(ctx, seq)
        }, nil, nil, nil)
        // patina_slow(): this transaction needs its changes read back; returns 0.
        sqlite3_create_function_v2(db, "patina_slow", 0, flags, context, { ctx, _, _ in
            let state = Unmanaged<CaptureState>.fromOpaque(sqlite3_user_data(ctx)).takeUnretainedValue()
            state.needsReadBack = true
            sqlite3_result_int(ctx, 0)
        }, nil, nil, nil)
        sqlite3_create_function_v2(db, "patina_capturing", 0, flags, context, { ctx, _, _ in
            let state = Unmanaged<CaptureState>.fromOpaque(sqlite3_user_data(ctx)).takeUnretainedValue()
            sqlite3_result_int(ctx, state.capturing ? 1 : 0)
        }, nil, nil, nil)
        sqlite3_create_function_v2(db, "patina_version", 0, flags, context, { ctx, _, _ in
            let state = Unmanaged<CaptureState>.fromOpaque(sqlite3_user_data(ctx)).takeUnretainedValue()
            sqlite3_result_int64(ctx, state.version)
        }, nil, nil, nil)
        // patina_seq(table, packed pk): the next seq, for a clock write to that row.
        sqlite3_create_function_v2(db, "patina_seq", -1, flags, context, { ctx, argc, argv in
            let state = Unmanaged<CaptureState>.fromOpaque(sqlite3_user_data(ctx)).takeUnretainedValue()
            if argc == 2 { state.touched.append((textValue(argv![0]), blobValue(argv![1]))) }
            sqlite3_result_int64(ctx, state.nextSeq)
            state.nextSeq += 1
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

private func blobEquals(_ arg: OpaquePointer?, _ bytes: [UInt8]) -> Bool {
    let n = Int(sqlite3_value_bytes(arg))
    guard n == bytes.count else { return false }
    guard n > 0, let p = sqlite3_value_blob(arg) else { return true }
    return UnsafeRawBufferPointer(start: p, count: n).elementsEqual(bytes)
}

private func blobValue(_ arg: OpaquePointer?) -> [UInt8] {
    let n = Int(sqlite3_value_bytes(arg))
    guard n > 0, let p = sqlite3_value_blob(arg) else { return [] }
    return Array(UnsafeRawBufferPointer(start: p, count: n))
}

private func textValue(_ arg: OpaquePointer?) -> String {
    guard let p = sqlite3_value_text(arg) else { return "" }
    return String(decoding: UnsafeBufferPointer(start: p, count: Int(sqlite3_value_bytes(arg))), as: UTF8.self)
}
