import Foundation
import Logging
import PatinaCore
import PatinaStore
import Synchronization

/// One event of a subscription's stream.
public enum SubscriptionEvent: Sendable, Equatable {
    public enum Kind: String, Sendable { case insert, update, delete }
    case change(kind: Kind, rowID: Int64, cells: [SQLValue], changeID: Int64)
    /// The subscriber fell too far behind; the stream ends.
    case lagged
}

/// A live query. Its result set is re-evaluated after each commit that touches
/// one of the tables it reads, and the difference goes out as insert / update /
/// delete events with contiguous change ids.
///
/// Rows are identified by the primary keys of their source tables when the
/// query selects them all (then a changed row is an `update`), else by their
/// whole content (then a change is a `delete` and an `insert`).
actor Subscription {
    let id: UUID
    let sql: String
    let parameters: StatementParameters
    private let access: StoreAccess
    private(set) var columns: [String] = []
    private(set) var tables: Set<String> = []
    private var identityColumns: [Int]?  // nil: whole row
    private var rows: [PackedPrimaryKey: (rowID: Int64, cells: [SQLValue])] = [:]
    private var nextRowID: Int64 = 1
    private(set) var lastChangeID: Int64 = 0
    /// Recent events, for `from=N` resumption.
    private var history: [SubscriptionEvent] = []
    static let historyLimit = 10_000
    private var listeners: [UUID: AsyncStream<SubscriptionEvent>.Continuation] = [:]
    private(set) var idleSince: ContinuousClock.Instant? = .now
    private var dirty = false
    private var refreshing = false

    init(id: UUID, sql: String, parameters: StatementParameters, access: StoreAccess) {
        self.id = id
        self.sql = sql
        self.parameters = parameters
        self.access = access
    }

    /// Runs the query the first time; throws for bad SQL.
    func start(tablePKs: [String: [String]]) async throws {
        let sql = self.sql
        let parameters = self.parameters
        let result = try await access.read { reader -> ([String], [(table: String, column: String)?], Set<String>, [[SQLValue]]) in
            let cursor = try reader.open(sql, parameters, timeout: .seconds(60))
            return (cursor.columns, cursor.columnOrigins, reader.lastReadTables, try Self.allRows(cursor))
        }
        columns = result.0
        tables = result.2
        identityColumns = Self.identity(origins: result.1, tablePKs: tablePKs)
        rows = [:]
        for cells in result.3 {
            let k = key(cells) { rows[$0] != nil }
            rows[k] = (nextRowID, cells)
            nextRowID += 1
        }
    }

    /// Every row of a cursor: a subscription diffs whole result sets.
    static func allRows(_ cursor: ReadCursor) throws -> [[SQLValue]] {
        var all: [[SQLValue]] = []
        while true {
            let page = try cursor.next(limit: 1024)
            if page.isEmpty { return all }
            all += page
        }
    }

    static func identity(origins: [(table: String, column: String)?], tablePKs: [String: [String]]) -> [Int]? {
        var byTable: [String: [String: Int]] = [:]
        for (i, origin) in origins.enumerated() {
            guard let origin else { continue }
            byTable[origin.table, default: [:]][origin.column] = i
        }
        guard !byTable.isEmpty else { return nil }
        var indexes: [Int] = []
        for (table, columns) in byTable.sorted(by: { $0.key < $1.key }) {
            guard let pk = tablePKs[table] else { return nil }
            for column in pk {
                guard let i = columns[column] else { return nil }
                indexes.append(i)
            }
        }
        return indexes
    }

    private func key(_ cells: [SQLValue], taken: (PackedPrimaryKey) -> Bool) -> PackedPrimaryKey {
        let values = identityColumns.map { $0.map { cells[$0] } } ?? cells
        var key = PackedPrimaryKey(values.isEmpty ? [.null] : values)
        // Identical rows are told apart by their occurrence.
        var n: Int64 = 1
        while taken(key) {
            key = PackedPrimaryKey((values.isEmpty ? [.null] : values) + [.integer(n)])
            n += 1
        }
        return key
    }

    /// The current rows and change id, plus a stream of what follows, atomically.
    func attach(from: Int64?) -> (rows: [(Int64, [SQLValue])], changeID: Int64, replay: [SubscriptionEvent], events: AsyncStream<SubscriptionEvent>)? {
        var replay: [SubscriptionEvent] = []
        if let from {
            let oldest = lastChangeID - Int64(history.count)
            guard from >= oldest, from <= lastChangeID else { return nil }
            replay = Array(history.suffix(Int(lastChangeID - from)))
        }
        let (stream, continuation) = AsyncStream<SubscriptionEvent>.makeStream(bufferingPolicy: .bufferingOldest(Self.historyLimit))
        let listenerID = UUID()
        listeners[listenerID] = continuation
        idleSince = nil
        continuation.onTermination = { [weak self] _ in
            Task { await self?.detach(listenerID) }
        }
        let snapshot = from == nil ? rows.values.sorted { $0.rowID < $1.rowID }.map { ($0.rowID, $0.cells) } : []
        return (snapshot, lastChangeID, replay, stream)
    }

    private func detach(_ listenerID: UUID) {
        listeners[listenerID] = nil
        if listeners.isEmpty { idleSince = .now }
    }

    /// Called after a commit that touched `changedTables`.
    func invalidate(changedTables: Set<String>) {
        guard !tables.isDisjoint(with: changedTables) else { return }
        dirty = true
        if !refreshing {
            refreshing = true
            Task { await self.refreshLoop() }
        }
    }

    private func refreshLoop() async {
        while dirty {
            dirty = false
            do { try await refresh() } catch {
                Logger(label: "patina.subscriptions").warning("subscription \(id) refresh failed: \(error)")
            }
        }
        refreshing = false
    }

    private func refresh() async throws {
        let sql = self.sql
        let parameters = self.parameters
        let fresh = try await access.read { reader -> [[SQLValue]] in
            try Self.allRows(try reader.open(sql, parameters, timeout: .seconds(60)))
        }
        var next: [PackedPrimaryKey: [SQLValue]] = [:]
        var order: [PackedPrimaryKey] = []
        for cells in fresh {
            let k = key(cells) { next[$0] != nil }
            next[k] = cells
            order.append(k)
        }
        var events: [SubscriptionEvent] = []
        for (k, old) in rows where next[k] == nil {
            rows[k] = nil
            lastChangeID += 1
            events.append(.change(kind: .delete, rowID: old.rowID, cells: old.cells, changeID: lastChangeID))
        }
        for k in order {
            let cells = next[k]!
            if let old = rows[k] {
                if old.cells != cells {
                    rows[k] = (old.rowID, cells)
                    lastChangeID += 1
                    events.append(.change(kind: .update, rowID: old.rowID, cells: cells, changeID: lastChangeID))
                }
            } else {
                rows[k] = (nextRowID, cells)
                lastChangeID += 1
                events.append(.change(kind: .insert, rowID: nextRowID, cells: cells, changeID: lastChangeID))
                nextRowID += 1
            }
        }
        guard !events.isEmpty else { return }
        history += events
        if history.count > Self.historyLimit { history.removeFirst(history.count - Self.historyLimit) }
        for (listenerID, continuation) in listeners {
            for event in events {
                if case .dropped = continuation.yield(event) {
                    continuation.yield(.lagged)
                    continuation.finish()
                    listeners[listenerID] = nil
                    break
                }
            }
        }
        if listeners.isEmpty && idleSince == nil { idleSince = .now }
    }

    func close() {
        for continuation in listeners.values { continuation.finish() }
        listeners = [:]
    }
}

/// All subscriptions of a node, shared by identical queries, dropped when no
/// client has listened to them for `idleTimeout` (10 minutes by default, as in
/// Corrosion).
public actor SubscriptionManager {
    private let access: StoreAccess
    private var subscriptions: [UUID: Subscription] = [:]
    private var byQuery: [String: UUID] = [:]
    /// `subscriptions.count`, readable without a hop onto the actor.
    private let live = Atomic<Int>(0)
    let idleTimeout: Duration

    public init(access: StoreAccess, idleTimeout: Duration = .seconds(600)) {
        self.access = access
        self.idleTimeout = idleTimeout
    }

    var count: Int { subscriptions.count }

    /// No subscription exists: the commit listener then skips the hop onto this
    /// actor. A subscription made meanwhile re-runs its query once registered
    /// (``subscribe(sql:parameters:)``), so no commit is missed.
    public nonisolated var isEmpty: Bool { live.load(ordering: .acquiring) == 0 }

    func subscribe(sql: String, parameters: StatementParameters) async throws -> Subscription {
        let queryKey = sql + "\u{0}" + "\(parameters)"
        if let id = byQuery[queryKey], let existing = subscriptions[id] { return existing }
        let subscription = Subscription(id: UUID(), sql: sql, parameters: parameters, access: access)
        var pks: [String: [String]] = [:]
        for table in access.store.tables { pks[table.name] = table.pkColumns }
        try await subscription.start(tablePKs: pks)
        subscriptions[subscription.id] = subscription
        byQuery[queryKey] = subscription.id
        live.store(subscriptions.count, ordering: .releasing)
        // Commits between the first run and now would be missed: look once more.
        await subscription.invalidate(changedTables: await subscription.tables)
        return subscription
    }

    func subscription(_ id: UUID) -> Subscription? { subscriptions[id] }

    /// Fans a commit out to the subscriptions that read the changed tables.
    public func committed(tables: Set<String>) async {
        for subscription in subscriptions.values {
            await subscription.invalidate(changedTables: tables)
        }
    }

    /// Ends every subscriber's stream (at shutdown).
    public func closeAll() async {
        for subscription in subscriptions.values { await subscription.close() }
    }

    /// Drops subscriptions nobody has listened to for `idleTimeout`.
    public func sweep(now: ContinuousClock.Instant = .now) async {
        for (id, subscription) in subscriptions {
            if let since = await subscription.idleSince, now - since > idleTimeout {
                await subscription.close()
                subscriptions[id] = nil
                byQuery = byQuery.filter { $0.value != id }
                live.store(subscriptions.count, ordering: .releasing)
            }
        }
    }
}
