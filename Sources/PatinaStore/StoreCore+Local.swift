import CSQLite
import PatinaCore

/// Parameters of one user statement: positional or named.
public enum StatementParameters: Sendable, Equatable {
    case none
    case positional([SQLValue])
    /// Keys with or without their prefix (`":id"` or `"id"`).
    case named([String: SQLValue])
}

/// The handle a local write transaction's body uses. Valid only inside the body.
public final class WriteTransaction {
    let core: StoreCore

    init(core: StoreCore) { self.core = core }

    /// Runs one user statement; returns the number of rows it changed.
    @discardableResult
    public func execute(_ sql: String, _ parameters: StatementParameters = .none) throws -> Int {
        let stmt = try core.prepareUserStatement(sql, parameters)
        let before = core.db.totalChanges
        do {
            try core.runUser { while try stmt.step() {} }
        } catch {
            // A failed statement is rolled back, the cells it captured with it.
            core.capture.needsReadBack = true
            throw error
        }
        return core.db.totalChanges - before == 0 ? 0 : core.db.changes
    }

    @discardableResult
    public func execute(_ sql: String, _ values: [SQLValue]) throws -> Int {
        try execute(sql, .positional(values))
    }

    /// Runs a read inside the transaction (sees its own writes).
    public func query(_ sql: String, _ parameters: StatementParameters = .none) throws -> [[SQLValue]] {
        let stmt = try core.prepareUserStatement(sql, parameters)
        var rows: [[SQLValue]] = []
        do {
            try core.runUser {
                while try stmt.step() { rows.append((0..<stmt.columnCount).map { stmt.value(at: $0) }) }
            }
        } catch {
            core.capture.needsReadBack = true  // as in execute (RETURNING writes)
            throw error
        }
        return rows
    }
}

/// A user statement refused by the guard on internal tables, DDL and transaction control.
public struct StatementNotAllowed: Error, CustomStringConvertible, Sendable {
    public let reason: String
    public var description: String { reason }
}

extension StoreCore {
    static let maxChangesPerChangeset = 1000

    func prepareUserStatement(_ sql: String, _ parameters: StatementParameters) throws -> SQLiteStatement {
        let stmt: SQLiteStatement
        if let cached = userStatements[sql] {
            stmt = cached
            stmt.reset()
        } else {
            stmt = try runUser { try db.prepareSingle(sql) }
            // Clients repeat the same statements with new parameters; keep a bounded few.
            if userStatements.count >= 128 { userStatements.removeAll(keepingCapacity: true) }
            userStatements[sql] = stmt
        }
        if case .none = parameters, stmt.parameterCount == 0 { return stmt }
        try bind(stmt, parameters)
        return stmt
    }

    /// Runs `body` with the guard for user SQL on, turning its refusals into clear errors.
    func runUser<T>(_ body: () throws -> T) throws -> T {
        capture.userStatementsActive = true
        capture.deniedReason = nil
        defer { capture.userStatementsActive = false }
        do {
            return try body()
        } catch let error as SQLiteError where error.isAuthorizationDenied || capture.deniedReason != nil {
            throw StatementNotAllowed(reason: capture.deniedReason ?? error.message)
        }
    }

    /// Runs a local write transaction: every changed cell is captured under the
    /// next version of this node's actor.
    func write<T>(_ body: (WriteTransaction) throws -> T) throws -> (T, Int64?, [Changeset], CommitEvent?) {
        let local: Int64 = 0
        let version = (books[local]?.head ?? 0) + 1
        var event: CommitEvent?
        let result = try inTransaction { () throws -> (T, Int64?, [Changeset]) in
            let ts = hlc.tick(nowMilliseconds: now())
            capture.version = version
            capture.nextSeq = 0
            capture.cells.removeAll(keepingCapacity: true)
            capture.touched.removeAll(keepingCapacity: true)
            capture.needsReadBack = false
            capture.capturing = true
            let value = try body(WriteTransaction(core: self))
            capture.capturing = false
            guard capture.nextSeq > 0 else { return (value, nil, []) }
            let lastSeq = capture.nextSeq - 1
            try db.run("INSERT INTO __patina_versions (site, version, last_seq, ts) VALUES (0, ?, ?, ?)",
                       [.integer(version), .integer(lastSeq), .integer(Int64(bitPattern: ts.rawValue))])
            books[local, default: ActorBookkeeping()].applied.insert(version)
            try persistRanges(table: "__patina_bookkeeping", site: local, ranges: books[local]!.applied)
            let changes: [Change]
            let rows: [String: [PackedPrimaryKey: RowChangeKind]]
            try recordKeys(site: local, version: version, keys: capture.cells.map { ($0.table, $0.pk) } + capture.touched)
            if capture.needsReadBack {
                changes = try readChanges(site: local, versions: version...version)[version] ?? []
                rows = Self.rowKinds(changes)
            } else {
                // Only new rows: every cell is at col_version 1 of the row's first life.
                (changes, rows) = Self.insertedChanges(capture.cells)
            }
            capture.cells.removeAll(keepingCapacity: true)
            capture.touched.removeAll(keepingCapacity: true)
            event = CommitEvent(source: .local(version: version), rows: rows)
            let changesets = Self.chunk(actor: actorID, version: version, changes: changes, lastSeq: lastSeq, ts: ts)
            return (value, version, changesets)
        }
        if let event { notify(event) }
        return (result.0, result.1, result.2, event)
    }

    /// The changes of a transaction that only inserted new rows, from the cells
    /// its triggers captured (in seq order), and its rows for listeners.
    static func insertedChanges(_ cells: [CapturedCell]) -> ([Change], [String: [PackedPrimaryKey: RowChangeKind]]) {
        var changes: [Change] = []
        changes.reserveCapacity(cells.count)
        var rows: [String: [PackedPrimaryKey: RowChangeKind]] = [:]
        var lastTable = ""
        var tableRows: [PackedPrimaryKey: RowChangeKind] = [:]
        var pk = PackedPrimaryKey(bytes: [])
        for cell in cells {
            if cell.table != lastTable {
                if !lastTable.isEmpty { rows[lastTable, default: [:]].merge(tableRows) { _, new in new } }
                tableRows = [:]
                lastTable = cell.table
                pk = PackedPrimaryKey(bytes: [])
            }
            if cell.pk != pk.bytes {  // cells of one row share their key's storage (see patina_cell)
                pk = PackedPrimaryKey(bytes: cell.pk)
                tableRows[pk] = .upsert
            }
            changes.append(Change(table: cell.table, pk: pk, cid: cell.cid, val: cell.val, colVersion: 1, seq: cell.seq, cl: 1))
        }
        if !lastTable.isEmpty { rows[lastTable, default: [:]].merge(tableRows) { _, new in new } }
        return (changes, rows)
    }

    static func rowKinds(_ changes: [Change]) -> [String: [PackedPrimaryKey: RowChangeKind]] {
        var rows: [String: [PackedPrimaryKey: RowChangeKind]] = [:]
        for c in changes {
            rows[c.table, default: [:]][c.pk] = c.cl % 2 == 0 ? .delete : .upsert
        }
        return rows
    }

    /// Splits a version's changes (sorted by seq) into changesets of bounded size
    /// whose seq ranges tile `0...lastSeq`.
    static func chunk(actor: ActorID, version: Int64, changes: [Change], lastSeq: Int64, ts: HybridTimestamp) -> [Changeset] {
        if changes.count <= maxChangesPerChangeset {
            return [.changes(actor: actor, version: version, changes: changes, seqs: 0...lastSeq, lastSeq: lastSeq, ts: ts)]
        }
        var result: [Changeset] = []
        var start: Int64 = 0
        var index = 0
        while index < changes.count {
            let end = min(index + maxChangesPerChangeset, changes.count)
            let slice = Array(changes[index..<end])
            let upper = end == changes.count ? lastSeq : slice.last!.seq
            result.append(.changes(actor: actor, version: version, changes: slice, seqs: start...upper, lastSeq: lastSeq, ts: ts))
            start = upper + 1
            index = end
        }
        return result
    }

    /// The non-key cells of one row, or nil when it does not exist.
    func readRow(table: TableInfo, pk: PackedPrimaryKey) throws -> [SQLValue]? {
        guard !table.columns.isEmpty else { return [] }
        let stmt = try db.cached(try statements(for: table).selectRow)
        try stmt.bind(try pk.decode())
        defer { stmt.reset() }
        guard try stmt.step() else { return nil }
        return (0..<stmt.columnCount).map { stmt.value(at: $0) }
    }

    /// The changesets of `actor` for `versions`: complete changes for versions
    /// that still have cells, cleared ranges for those that have none. Versions
    /// this node has not applied are left out.
    func changesets(actor: ActorID, versions: ClosedRange<Int64>) throws -> [Changeset] {
        guard let site = siteOfActor[actor], let book = books[site] else { return [] }
        let changes = try readChanges(site: site, versions: versions)
        var meta: [Int64: (lastSeq: Int64, ts: HybridTimestamp)] = [:]
        let stmt = try db.cached("SELECT version, last_seq, ts FROM __patina_versions WHERE site = ? AND version BETWEEN ? AND ?")
        stmt.bind(site, at: 1)
        stmt.bind(versions.lowerBound, at: 2)
        stmt.bind(versions.upperBound, at: 3)
        while try stmt.step() {
            meta[stmt.int64(at: 0)] = (stmt.int64(at: 1), HybridTimestamp(rawValue: UInt64(bitPattern: stmt.int64(at: 2))))
        }
        stmt.reset()
        var result: [Changeset] = []
        var newlyCleared = VersionRangeSet()
        var clearedRun: ClosedRange<Int64>?
        func flushCleared() {
            if let run = clearedRun { result.append(.cleared(actor: actor, versions: run)) }
            clearedRun = nil
        }
        for applied in book.applied.ranges {
            let lower = max(applied.lowerBound, versions.lowerBound)
            let upper = min(applied.upperBound, versions.upperBound)
            guard lower <= upper else { continue }
            var v = lower
            while v <= upper {
                if let cs = changes[v], let m = meta[v] {
                    flushCleared()
                    result += Self.chunk(actor: actor, version: v, changes: cs, lastSeq: m.lastSeq, ts: m.ts)
                } else {
                    if !book.cleared.contains(v) { newlyCleared.insert(v) }
                    if let run = clearedRun, run.upperBound == v - 1 { clearedRun = run.lowerBound...v } else {
                        flushCleared()
                        clearedRun = v...v
                    }
                }
                v += 1
            }
            flushCleared()
        }
        if !newlyCleared.isEmpty {
            try inTransaction {
                for r in newlyCleared.ranges {
                    try db.run("DELETE FROM __patina_versions WHERE site = ? AND version BETWEEN ? AND ?",
                               [.integer(site), .integer(r.lowerBound), .integer(r.upperBound)])
                    try dropKeys(site: site, versions: r)
                }
                books[site]!.cleared.formUnion(newlyCleared)
                try persistRanges(table: "__patina_cleared", site: site, ranges: books[site]!.cleared)
            }
        }
        return result
    }
}
