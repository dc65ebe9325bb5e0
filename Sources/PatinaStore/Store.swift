import Foundation
import Logging
import PatinaCore
import Synchronization

/// A node's replicated SQLite database.
///
/// Every call runs on the calling thread under one lock; callers on Swift's
/// cooperative pool should go through ``BlockingExecutor`` so blocking SQLite
/// work runs on a thread of its own.
// @unchecked Sendable: `storeCore` is only touched inside `lock` (see `core`);
// a `Mutex<StoreCore>` would say the same but cannot pass the caller's
// non-Sendable transaction body into its region.
public final class Store: @unchecked Sendable {
    public let path: String
    public let actorID: ActorID
    private let storeCore: StoreCore
    private let lock = NSLock()
    /// The replicated tables as of the last schema change, kept outside `lock`:
    /// a merge holds that lock for a whole batch, and the callers of ``tables``
    /// (routing a request, starting a subscription) run on Swift's cooperative
    /// pool, which must not wait on it.
    private let tableList: Mutex<[TableInfo]>

    private var core: LockedCore { LockedCore(store: self) }

    private struct LockedCore {
        let store: Store
        func withLock<T>(_ body: (StoreCore) throws -> T) rethrows -> T {
            store.lock.lock()
            defer { store.lock.unlock() }
            return try body(store.storeCore)
        }
    }

    /// Opens (or creates) the database at `path`.
    ///
    /// Throws ``StoreOpenError`` for a file that is not a Patina database or is
    /// corrupt; such a file is never modified.
    public init(path: String) throws {
        let core = try StoreCore(path: path)
        self.path = path
        self.actorID = core.actorID
        self.storeCore = core
        self.tableList = Mutex(Self.sortedTables(core))
    }

    private static func sortedTables(_ core: StoreCore) -> [TableInfo] {
        Array(core.tables.values).sorted { $0.name < $1.name }
    }

    /// Applies `schema` and refreshes ``tables`` (also after a failure, which may
    /// have applied part of it).
    private func applyParsed(_ schema: ParsedSchema) throws -> SchemaReport {
        try core.withLock { core in
            defer { tableList.withLock { $0 = Self.sortedTables(core) } }
            return try core.apply(schema)
        }
    }

    /// Applies the `CREATE TABLE` / `CREATE INDEX` statements of the `.sql` files
    /// under `paths` (files or folders). Only additive changes are accepted.
    @discardableResult
    public func applySchema(paths: [String]) throws -> SchemaReport {
        try applyParsed(try ParsedSchema.load(paths: paths))
    }

    /// Applies schema SQL given as text (the same rules as schema files).
    @discardableResult
    public func applySchema(sql: String) throws -> SchemaReport {
        try applyParsed(try ParsedSchema.parse([("<schema>", sql)]))
    }

    /// The replicated tables and their columns. Does not wait for the store's lock.
    public var tables: [TableInfo] { tableList.withLock { $0 } }

    /// Runs a local write transaction. Every changed cell becomes a change of the
    /// next version of this node's actor; the result carries the changesets to
    /// broadcast. A throwing body rolls everything back.
    ///
    /// With a `timeout`, SQLite is interrupted once it has run that long and the
    /// transaction rolls back with ``StatementTimeout``.
    public func write<T: Sendable>(timeout: Duration? = nil, _ body: (WriteTransaction) throws -> T) throws -> WriteResult<T> {
        try core.withLock { core in
            core.deadline.set(timeout)
            defer { core.deadline.set(nil) }
            do {
                let (value, version, changesets, _) = try core.write(body)
                return WriteResult(value: value, version: version, changesets: changesets)
            } catch {
                if let e = error as? SQLiteError, e.isInterrupt { throw StatementTimeout() }
                throw error
            }
        }
    }

    /// A new read-only connection for streaming queries.
    public func makeReader() throws -> StoreReader { try StoreReader(path: path) }

    /// Convenience: one statement in its own transaction.
    @discardableResult
    public func execute(_ sql: String, _ values: [SQLValue] = []) throws -> WriteResult<Int> {
        try write { try $0.execute(sql, values) }
    }

    /// Reads through the writer connection (sees every committed write).
    public func query(_ sql: String, _ values: [SQLValue] = []) throws -> [[SQLValue]] {
        try core.withLock { core in try core.runUser { try core.db.query(sql, values) } }
    }

    /// Merges a batch of remote changesets in one SQLite transaction. Invalid
    /// changesets are rejected one by one (see ``MergeOutcome/rejections``);
    /// the rest apply.
    @discardableResult
    public func merge(_ changesets: [Changeset]) throws -> MergeOutcome {
        try core.withLock { try $0.merge(changesets).0 }
    }

    /// Runs `sql` on the writer connection, outside any transaction (tests: a
    /// pragma that makes the disk "full", say).
    func executeOnWriter(_ sql: String) throws {
        try core.withLock { try $0.db.execute(sql) }
    }

    /// Every clock of `table`, one row per cell or sentinel as `[pk, cid,
    /// col_version, actor (NULL for an implied sentinel), db_version, seq]`,
    /// ordered by packed key then cid: the logical view of the packed clock
    /// rows, for tests and diagnostics.
    func clockRows(_ table: String) throws -> [[SQLValue]] {
        try core.withLock { try $0.clockRows(table) }
    }

    /// The changesets of `actor` for `versions` that this node holds.
    public func changesets(actor: ActorID, versions: ClosedRange<Int64>) throws -> [Changeset] {
        try core.withLock { try $0.changesets(actor: actor, versions: versions) }
    }

    /// The changesets of `actor` for `versions` that this node holds, less those
    /// committed at a time in `holdingBack` (milliseconds of their hybrid
    /// timestamps), which are counted and not read.
    public func changesets(actor: ActorID, versions: ClosedRange<Int64>, holdingBack: ClosedRange<UInt64>?) throws
        -> (changesets: [Changeset], heldBack: Int)
    {
        try core.withLock { try $0.changesets(actor: actor, versions: versions, holdingBack: holdingBack) }
    }

    /// The highest version applied, per actor.
    public func heads() -> [ActorID: Int64] {
        core.withLock { core in
            var heads: [ActorID: Int64] = [:]
            for (site, book) in core.books where book.head > 0 {
                if let actor = core.actorOfSite[site] { heads[actor] = book.head }
            }
            return heads
        }
    }

    /// Applied versions, cleared versions, gaps and partials, per actor.
    public func bookkeeping() -> [ActorID: ActorBookkeeping] {
        core.withLock { core in
            var result: [ActorID: ActorBookkeeping] = [:]
            for (site, book) in core.books {
                if let actor = core.actorOfSite[site] { result[actor] = book }
            }
            return result
        }
    }

    /// Registers a listener told, after each commit and in commit order, which
    /// rows changed. It runs under the store's lock: it MUST NOT call back into
    /// the store, and should only hand the event on.
    @discardableResult
    public func addListener(_ listener: @escaping @Sendable (CommitEvent) -> Void) -> Int {
        core.withLock { core in
            let id = core.nextListenerID
            core.nextListenerID += 1
            core.listeners[id] = listener
            return id
        }
    }

    public func removeListener(_ id: Int) {
        _ = core.withLock { $0.listeners.removeValue(forKey: id) }
    }

    /// Test hook: the physical clock (milliseconds) used for HLC timestamps.
    public func setClock(_ now: @escaping @Sendable () -> UInt64) {
        core.withLock { $0.now = now }
    }
}
