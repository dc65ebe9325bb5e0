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
final class CaptureState {
    var capturing = false
    var version: Int64 = 0
    var nextSeq: Int64 = 0
    /// True while user-supplied SQL runs: the authorizer then refuses writes to
    /// internal tables, DDL and transaction control.
    var userStatementsActive = false
    var deniedReason: String?
    /// Tables read by user statements prepared since the last reset.
    var readTables: Set<String> = []
}

enum CaptureFunctions {
    /// Registers the functions on `db`. `state` must outlive the connection;
    /// the store owns both and the connection closes first.
    static func register(on db: OpaquePointer, state: CaptureState) {
        let context = Unmanaged.passUnretained(state).toOpaque()
        let flags = SQLITE_UTF8 | SQLITE_INNOCUOUS
        sqlite3_create_function_v2(db, "patina_pack", -1, flags | SQLITE_DETERMINISTIC, nil, { ctx, argc, argv in
            var bytes: [UInt8] = [UInt8(truncatingIfNeeded: argc)]
            for i in 0..<Int(argc) { PackedPrimaryKey.append(sqlValue(of: argv![i]), to: &bytes) }
            bytes.withUnsafeBytes { buf in
                patina_sqlite3_result_blob_transient(ctx, buf.baseAddress, Int32(buf.count))
            }
        }, nil, nil, nil)
        sqlite3_create_function_v2(db, "patina_capturing", 0, flags, context, { ctx, _, _ in
            let state = Unmanaged<CaptureState>.fromOpaque(sqlite3_user_data(ctx)).takeUnretainedValue()
            sqlite3_result_int(ctx, state.capturing ? 1 : 0)
        }, nil, nil, nil)
        sqlite3_create_function_v2(db, "patina_version", 0, flags, context, { ctx, _, _ in
            let state = Unmanaged<CaptureState>.fromOpaque(sqlite3_user_data(ctx)).takeUnretainedValue()
            sqlite3_result_int64(ctx, state.version)
        }, nil, nil, nil)
        sqlite3_create_function_v2(db, "patina_seq", 0, flags, context, { ctx, _, _ in
            let state = Unmanaged<CaptureState>.fromOpaque(sqlite3_user_data(ctx)).takeUnretainedValue()
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
