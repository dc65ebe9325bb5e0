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
        try ensureOpen()
        let stmt = try core.prepareUserStatement(sql, parameters)
        let before = core.db.totalChanges
        let mark = core.capture.events.count
        do {
            try core.runUser { while try stmt.step() {} }
        } catch {
            core.forgetRolledBackEvents(since: mark, totalChangesBefore: before)
            throw error
        }
        return core.db.totalChanges - before == 0 ? 0 : core.db.changes
    }

    /// A statement such as `INSERT OR ROLLBACK` can end the transaction; what
    /// followed would then run (and commit) outside it, uncaptured.
    private func ensureOpen() throws {
        if core.db.isAutocommit { throw StatementNotAllowed(reason: "the transaction was rolled back by an earlier statement") }
    }

    @discardableResult
    public func execute(_ sql: String, _ values: [SQLValue]) throws -> Int {
        try execute(sql, .positional(values))
    }

    /// Runs a read inside the transaction (sees its own writes).
    public func query(_ sql: String, _ parameters: StatementParameters = .none) throws -> [[SQLValue]] {
        try ensureOpen()
        let stmt = try core.prepareUserStatement(sql, parameters)
        let before = core.db.totalChanges
        let mark = core.capture.events.count
        var rows: [[SQLValue]] = []
        do {
            try core.runUser {
                while try stmt.step() { rows.append((0..<stmt.columnCount).map { stmt.value(at: $0) }) }
            }
        } catch {
            core.forgetRolledBackEvents(since: mark, totalChangesBefore: before)  // as in execute (RETURNING writes)
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
        if let last = lastUserStatement, last.sql == sql {
            // Clients loop over one statement; skip hashing its text each time.
            stmt = last.statement
            stmt.reset()
        } else if let cached = userStatements[sql] {
            stmt = cached
            stmt.reset()
        } else {
            stmt = try runUser { try db.prepareSingle(sql) }
            // Clients repeat the same statements with new parameters; keep a bounded few.
            if userStatements.count >= 128 { userStatements.removeAll(keepingCapacity: true) }
            userStatements[sql] = stmt
        }
        lastUserStatement = (sql, stmt)
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
        } catch let error as SQLiteError where error.message.hasPrefix("no such function: patina_") {
            // The patina_ namespace is the store's, as when it had capture functions.
            throw StatementNotAllowed(reason: "function \(error.message.dropFirst("no such function: ".count)) is internal")
        }
    }

    /// After a failed user statement: SQLite rolled back the statement's row
    /// changes (so the hook's events for them must go) unless its conflict
    /// clause was FAIL, which keeps the rows it changed before failing; only
    /// those count in `total_changes`.
    func forgetRolledBackEvents(since mark: Int, totalChangesBefore: Int) {
        if db.totalChanges == totalChangesBefore && mark < capture.events.count {
            capture.events.removeSubrange(mark...)
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
            capture.events.removeAll(keepingCapacity: true)
            capture.values.removeAll(keepingCapacity: true)
            capture.capturing = true
            let value = try body(WriteTransaction(core: self))
            capture.capturing = false
            guard !db.isAutocommit else {
                // A statement with ON CONFLICT ROLLBACK ended the transaction.
                throw SQLiteError(code: SQLITE_ERROR, message: "the transaction was rolled back by a failed statement", sql: nil)
            }
            let written = try recordCapturedWrites(version: version)
            capture.events.removeAll(keepingCapacity: true)
            capture.values.removeAll(keepingCapacity: true)
            guard !written.changes.isEmpty else { return (value, nil, []) }
            let lastSeq = written.lastSeq
            // One row per commit besides the clocks: local versions are 1...head
            // with no gaps, so the head is derived at load, not persisted here.
            try recordVersion(site: local, version: version, lastSeq: lastSeq, ts: ts, keys: written.keys)
            books[local, default: ActorBookkeeping()].applied.insert(version)
            event = CommitEvent(source: .local(version: version), rows: written.rows)
            let changesets = Self.chunk(actor: actorID, version: version, changes: written.changes, lastSeq: lastSeq, ts: ts)
            return (value, version, changesets)
        }
        if let event { notify(event) }
        return (result.0, result.1, result.2, event)
    }

    /// What a local transaction wrote: its changes in seq order, its rows for
    /// listeners, and the rows to list with the version (VersionKeys.swift).
    struct CapturedWrites {
        var changes: [Change] = []
        var rows: [String: [PackedPrimaryKey: RowChangeKind]] = [:]
        /// Per table, the keys of the rows written, for the version's `keys`.
        var keys: [String: KeyList] = [:]
        /// The last seq taken; seqs of rows that fell back to the general path may be unused.
        var lastSeq: Int64 = -1
    }

    /// What the events of one transaction did to one row.
    private struct RowWrites {
        var table: Int32
        var pk: [UInt8]
        /// The first insert or delete and how many there were: each starts or
        /// ends a life of the row, so after the first they alternate.
        var firstLifeEvent: RowEvent.Op?
        var lifeEvents = 0
        /// Non-key values before the first event, when it was an update.
        var original: [SQLValue]?
        /// Non-key values after the last event; nil when it deleted the row.
        var final: [SQLValue]?
    }

    private struct RowID: Hashable {
        var table: Int32
        var pk: [UInt8]
    }

    /// Turns the hook's events into clock rows and changes, stamped with
    /// `version` of this node (site 0), seqs in row order.
    ///
    /// A row inserted once and never clocked before — the usual write — takes
    /// one insert of its compact clock; any other row reads its clock, works
    /// out what the transaction did to it as a whole (the CRDT rules of local
    /// writes, docs/store.md) and writes the clock back.
    func recordCapturedWrites(version: Int64) throws -> CapturedWrites {
        var out = CapturedWrites()
        let events = capture.events
        guard !events.isEmpty else { return out }
        var rows: [RowWrites] = []
        // Inserts alone touch distinct rows (a row is inserted again only after a
        // delete): each is its row's only event, and needs no index to gather.
        if !events.contains(where: { $0.op != .insert }) {
            var seq: Int64 = 0
            var start = 0
            while start < events.count {
                var end = start + 1
                while end < events.count && events[end].table == events[start].table { end += 1 }
                if let table = tables[capture.watched[Int(events[start].table)].name] {
                    var batch: [FirstLife] = []
                    batch.reserveCapacity(end - start)
                    let perRow = Int64(max(1, table.columns.count))
                    out.changes.reserveCapacity(out.changes.count + (end - start) * Int(perRow))
                    for e in events[start..<end] {
                        batch.append(FirstLife(pk: e.pk, values: e.new, seq: seq))
                        seq += perRow
                    }
                    try insertFirstLives(&batch, try statements(for: table), table, version: version, seq: &seq, into: &out)
                }
                start = end
            }
            out.lastSeq = seq - 1
            return out
        }
        rows.reserveCapacity(events.count)
        var index: [RowID: Int] = [:]
        index.reserveCapacity(events.count)
        for e in events {
            let id = RowID(table: e.table, pk: e.pk)
            let i: Int
            if let found = index[id] {
                i = found
            } else {
                i = rows.count
                index[id] = i
                rows.append(RowWrites(table: e.table, pk: e.pk,
                                      original: e.op == .update ? capture.values(from: e.old, count: Self.valueCount(capture, e)) : nil))
            }
            if e.op != .update {
                if rows[i].firstLifeEvent == nil { rows[i].firstLifeEvent = e.op }
                rows[i].lifeEvents += 1
            }
            rows[i].final = e.op == .delete ? nil : capture.values(from: e.new, count: Self.valueCount(capture, e))
        }
        var seq: Int64 = 0
        var lastTable: Int32 = -1
        var table = TableInfo(name: "", pkColumns: [], columns: [])
        var st: TableStatements?
        var batch: [FirstLife] = []
        for row in rows {
            if row.table != lastTable {
                try insertFirstLives(&batch, st, table, version: version, seq: &seq, into: &out)
                lastTable = row.table
                st = nil
                guard let info = tables[capture.watched[Int(row.table)].name] else { continue }
                table = info
                st = try statements(for: info)
            }
            guard let st else { continue }
            if row.lifeEvents == 1, row.firstLifeEvent == .insert, let values = row.final {
                batch.append(FirstLife(pk: row.pk, values: -1, ownValues: values, seq: seq))
                seq += Int64(max(1, table.columns.count))
                continue
            }
            try insertFirstLives(&batch, st, table, version: version, seq: &seq, into: &out)
            try recordRow(row, st, table, pk: PackedPrimaryKey(bytes: row.pk), version: version, seq: &seq, into: &out)
        }
        try insertFirstLives(&batch, st, table, version: version, seq: &seq, into: &out)
        out.lastSeq = seq - 1
        return out
    }

    /// A row inserted once by the transaction, its seqs reserved from `seq`.
    private struct FirstLife {
        var pk: [UInt8]
        /// Where its values start in ``CaptureState/values``, or -1 for ``ownValues``.
        var values: Int32
        var ownValues: [SQLValue] = []
        var seq: Int64

        func value(_ i: Int, _ capture: CaptureState) -> SQLValue {
            values >= 0 ? capture.values[Int(values) + i] : (i < ownValues.count ? ownValues[i] : .null)
        }

        func allValues(_ count: Int, _ capture: CaptureState) -> [SQLValue] {
            values >= 0 ? capture.values(from: values, count: count) : ownValues
        }
    }

    private static func valueCount(_ capture: CaptureState, _ e: RowEvent) -> Int {
        capture.watched[Int(e.table)].valuePositions.count
    }

    /// The fast path: the compact clocks of new rows' first lives, several rows
    /// per statement (a statement per row cost a third of the replicated insert).
    /// A row that already had a clock (a re-insert after a delete, say) keeps
    /// it, is found by reading it back, and takes the general path with new
    /// seqs; its reserved ones stay unused (a version's seqs may have holes).
    private func insertFirstLives(
        _ batch: inout [FirstLife], _ st: TableStatements?, _ table: TableInfo, version: Int64,
        seq: inout Int64, into out: inout CapturedWrites
    ) throws {
        guard !batch.isEmpty, let st else { return }
        defer { batch.removeAll(keepingCapacity: true) }
        let count = Int64(table.columns.count)
        var conflicted: [Int] = []
        var start = 0
        while start < batch.count {
            let n = TableStatements.batchSizes.first { $0 <= batch.count - start }!
            let s = try st.insertFirstLifeClocks(rows: n)
            s.rewind()
            s.bind(0, at: 1)
            s.bind(version, at: 2)
            s.bind(count, at: 3)
            for k in 0..<n {
                try st.bindClockKey(s, PackedPrimaryKey(bytes: batch[start + k].pk), at: 4 + 2 * k)
                s.bind(batch[start + k].seq, at: 5 + 2 * k)
            }
            try s.step()
            s.rewind()
            if db.changes != n {
                for k in 0..<n {
                    let first = batch[start + k]
                    let mine = RowClock.Stored.compact(site: 0, version: version, seq: first.seq, count: count)
                    if try st.readClock(PackedPrimaryKey(bytes: first.pk))?.stored != mine { conflicted.append(start + k) }
                }
            }
            start += n
        }
        var next = conflicted.makeIterator()
        var skip = next.next()
        // Taken out (as `keys` below), so that adding to it does not copy what `out` still holds.
        var tableRows = out.rows.removeValue(forKey: table.name) ?? Dictionary(minimumCapacity: batch.count)
        var keys = out.keys.removeValue(forKey: table.name) ?? KeyList()
        keys.bytes.reserveCapacity(keys.bytes.count + batch.count * 2)
        let name = table.name
        let columns = table.columns
        for i in batch.indices {
            if i == skip {
                skip = next.next()
                continue
            }
            let pk = PackedPrimaryKey(bytes: batch[i].pk)
            let seq = batch[i].seq
            if columns.isEmpty {
                out.changes.append(Change(table: name, pk: pk, cid: Change.sentinelColumn, val: .null, colVersion: 1, seq: seq, cl: 1))
            } else {
                for c in columns.indices {
                    out.changes.append(Change(table: name, pk: pk, cid: columns[c], val: batch[i].value(c, capture),
                                              colVersion: 1, seq: seq + Int64(c), cl: 1))
                }
            }
            tableRows[pk] = .upsert
            keys.append(pk.bytes)
        }
        out.rows[table.name] = tableRows
        out.keys[table.name] = keys
        for i in conflicted {
            let row = RowWrites(table: -1, pk: batch[i].pk, firstLifeEvent: .insert, lifeEvents: 1, original: nil,
                                final: batch[i].allValues(table.columns.count, capture))
            try recordRow(row, st, table, pk: PackedPrimaryKey(bytes: batch[i].pk), version: version, seq: &seq, into: &out)
        }
    }

    /// The general path for one row (see recordCapturedWrites).
    ///
    /// Each insert of an absent row starts a life (causal length to the next
    /// odd), each delete ends one (next even; an unknown row's delete records
    /// cl 2); a new life restarts every column clock at col_version 1 and
    /// drops the old ones. A row alive throughout gets one more col_version on
    /// each column whose value differs from the transaction's start.
    private func recordRow(
        _ row: RowWrites, _ st: TableStatements, _ table: TableInfo, pk: PackedPrimaryKey, version: Int64,
        seq: inout Int64, into out: inout CapturedWrites
    ) throws {
        let before = try st.readClock(pk)
        var clock = before ?? RowClock()
        let cl0 = clock.cl
        var cl = cl0
        var op = row.firstLifeEvent
        for _ in 0..<row.lifeEvents {
            switch op {
            case .insert: if cl % 2 == 0 { cl += 1 }
            case .delete: if cl % 2 == 1 { cl += 1 } else if cl == 0 { cl = 2 }
            default: break
            }
            op = op == .insert ? .delete : .insert
        }
        var writeSentinel = false
        var written: [Int] = []
        if cl != cl0 {
            clock.cells = []
            clock.sentinel = nil
            // A first life (from unknown) keeps no sentinel unless the table has only key columns.
            writeSentinel = !(cl == 1 && cl0 == 0 && !table.columns.isEmpty)
            if row.final != nil { written = Array(table.columns.indices) }
        } else if let final = row.final {
            if row.lifeEvents == 0, let original = row.original {
                let defaults = columnDefaults[table.name] ?? []
                for i in table.columns.indices where i < final.count && i < original.count {
                    var old = original[i]
                    // A row stored before column i was added reads NULL from the hook,
                    // but holds the column's DEFAULT (and has never had a clock for it).
                    if old == .null, clock.cell(i) == nil, i < defaults.count, let d = defaults[i] { old = d }
                    if !Self.sameValue(old, final[i]) { written.append(i) }
                }
            } else {
                written = Array(table.columns.indices)  // an insert over a row its clock says is alive
            }
        }
        guard writeSentinel || !written.isEmpty else { return }
        var changes: [(cid: String, val: SQLValue, colVersion: Int64, seq: Int64)] = []
        if writeSentinel {
            clock.sentinel = ClockEntry(colVersion: cl, site: 0, version: version, seq: seq)
            changes.append((Change.sentinelColumn, .null, cl, seq))
            seq += 1
        }
        for i in written {
            let colVersion = cl != cl0 ? 1 : (clock.cell(i)?.colVersion ?? 0) + 1
            clock.setCell(i, ClockEntry(colVersion: colVersion, site: 0, version: version, seq: seq))
            changes.append((table.columns[i], row.final![i], colVersion, seq))
            seq += 1
        }
        try st.storeClock(pk, clock)
        let rowCl = clock.cl
        for c in changes {
            out.changes.append(Change(table: table.name, pk: pk, cid: c.cid, val: c.val, colVersion: c.colVersion, seq: c.seq, cl: rowCl))
        }
        out.rows[table.name, default: [:]][pk] = rowCl % 2 == 0 ? .delete : .upsert
        out.keys[table.name, default: KeyList()].append(pk.bytes)
    }

    /// SQLite's `IS` on values as stored (an integer and a real of equal value are the same).
    static func sameValue(_ a: SQLValue, _ b: SQLValue) -> Bool {
        switch (a, b) {
        case (.integer(let i), .real(let d)), (.real(let d), .integer(let i)): return Double(i) == d && Int64(exactly: d) == i
        default: return a == b
        }
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
        try changesets(actor: actor, versions: versions, holdingBack: nil).changesets
    }

    /// As ``changesets(actor:versions:)``, leaving out (and counting) the versions
    /// committed at a time in `holdingBack` (milliseconds of their hybrid
    /// timestamps). Their changes are not read at all: a sync server under load
    /// would otherwise read the newest second of every actor's writes each round,
    /// only to hold it back as still in flight.
    func changesets(actor: ActorID, versions: ClosedRange<Int64>, holdingBack: ClosedRange<UInt64>?) throws
        -> (changesets: [Changeset], heldBack: Int)
    {
        guard let site = siteOfActor[actor], let book = books[site] else { return ([], 0) }
        var meta: [Int64: (lastSeq: Int64, ts: HybridTimestamp)] = [:]
        let stmt = try db.cached("SELECT version, last_seq, ts FROM __patina_versions WHERE site = ? AND version BETWEEN ? AND ?")
        stmt.bind(site, at: 1)
        stmt.bind(versions.lowerBound, at: 2)
        stmt.bind(versions.upperBound, at: 3)
        while try stmt.step() {
            meta[stmt.int64(at: 0)] = (stmt.int64(at: 1), HybridTimestamp(rawValue: UInt64(bitPattern: stmt.int64(at: 2))))
        }
        stmt.reset()
        func isHeldBack(_ version: Int64) -> Bool {
            guard let holdingBack, let m = meta[version] else { return false }
            return holdingBack.contains(m.ts.milliseconds)
        }
        // Read only up to the newest version served: held-back ones are the newest.
        var changes: [Int64: [Change]] = [:]
        if let top = meta.keys.lazy.filter({ !isHeldBack($0) }).max() {
            changes = try readChanges(site: site, versions: versions.lowerBound...top)
        }
        var result: [Changeset] = []
        var heldBack = 0
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
                if isHeldBack(v) {
                    heldBack += 1
                    flushCleared()
                } else if let cs = changes[v], let m = meta[v] {
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
                }
                books[site]!.cleared.formUnion(newlyCleared)
                try persistRanges(table: "__patina_cleared", site: site, ranges: books[site]!.cleared)
            }
        }
        return (result, heldBack)
    }
}
