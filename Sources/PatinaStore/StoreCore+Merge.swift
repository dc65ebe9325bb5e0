import CSQLite
import PatinaCore

/// The merge of remote changes: the CRDT rules (docs/store.md), in one place.
///
/// For an incoming change to row `pk` with causal length `cl`, against the
/// row's local causal length `localCl` (its sentinel; 1 for a row with column
/// clocks and no sentinel, its first life; 0 for an unknown row):
/// 1. `cl < localCl`: the change loses.
/// 2. An even `cl` (a delete) greater than `localCl` deletes the row and its
///    column clocks and records the new sentinel.
/// 3. A sentinel with an odd `cl` greater than `localCl` resurrects the row:
///    the key exists again and every column clock starts over.
/// 4. A column change with an odd `cl` greater than `localCl` first resurrects
///    the row (with an unattributed sentinel, not stored for a first life) and
///    then wins.
/// 5. Otherwise, for equal `cl`, the cell with no local clock takes the change;
///    else the higher `col_version` wins, then the greater value
///    (``SQLValue/mergeOrder(_:_:)``), then the greater actor id.
/// 6. Sentinels of equal `cl`: a real one replaces an unattributed one, and
///    among real ones the least (actor, version, seq) is kept, so every replica
///    attributes the row's causal length to the same write.
/// Losing changes change nothing. Merged writes run with capture off, so they
/// are never captured again as local changes.
extension StoreCore {
    struct RowKey: Hashable {
        var table: String
        var pk: PackedPrimaryKey
    }

    struct SiteVersion: Hashable {
        var site: Int64
        var version: Int64
    }

    /// What a merge batch touched, gathered while it runs.
    struct MergeContext {
        var rows: [String: [PackedPrimaryKey: RowChangeKind]] = [:]
        var overwritten: Set<SiteVersion> = []
        /// Clocks of the rows this batch touched, read once and written back at
        /// the end of each version (see flushClocks).
        var clocks: [RowKey: RowClock?] = [:]
        var dirtyClocks: Set<RowKey> = []
        var touchedSites: Set<Int64> = []
        var origins: [RemoteOrigin] = []
        var written = 0
        /// Winning cells not yet written to the base table: one upsert per row
        /// instead of one per cell (see flushPendingRows).
        var pendingRows: [RowKey: PendingRow] = [:]
    }

    struct PendingRow {
        var table: TableInfo
        var key: [SQLValue]
        var cells: [String: SQLValue] = [:]
    }

    /// The origin of an incoming change.
    struct Origin {
        var site: Int64
        var actor: ActorID
        var version: Int64
    }

    func merge(_ batch: [Changeset]) throws -> (MergeOutcome, CommitEvent?) {
        var outcome = MergeOutcome()
        var ctx = MergeContext()
        let booksBefore = books
        try inTransaction {
            capture.capturing = false
            for (index, changeset) in batch.enumerated() {
                if changeset.actor == actorID {
                    outcome.duplicates += 1  // our own changes, relayed back
                    continue
                }
                let decoded: [[SQLValue]]
                do {
                    decoded = try validate(changeset)
                } catch {
                    outcome.rejections.append(ChangesetRejection(
                        index: index, actor: changeset.actor, versions: changeset.versions, reason: "\(error)"))
                    continue
                }
                let site = try site(for: changeset.actor)
                let savedBook = books[site]
                // What this changeset touches is gathered apart (moved, not copied) so
                // a rollback can drop it: listeners hear only of what committed, and
                // only committed overwrites can clear a version.
                var batchRows: [String: [PackedPrimaryKey: RowChangeKind]] = [:]
                var batchOverwritten: Set<SiteVersion> = []
                swap(&batchRows, &ctx.rows)
                swap(&batchOverwritten, &ctx.overwritten)
                let (outcomeBefore, writtenBefore, originsBefore) = (outcome, ctx.written, ctx.origins.count)
                try db.run("SAVEPOINT patina_changeset")  // prepared once: one per changeset
                do {
                    try mergeOne(changeset, decodedKeys: decoded, site: site, outcome: &outcome, ctx: &ctx)
                    try db.run("RELEASE patina_changeset")
                    for (table, rows) in ctx.rows { batchRows[table, default: [:]].merge(rows) { _, last in last } }
                    swap(&batchRows, &ctx.rows)
                    batchOverwritten.formUnion(ctx.overwritten)
                    swap(&batchOverwritten, &ctx.overwritten)
                } catch {
                    try db.execute("ROLLBACK TO patina_changeset; RELEASE patina_changeset")
                    outcome = outcomeBefore
                    ctx.rows = batchRows
                    ctx.overwritten = batchOverwritten
                    ctx.written = writtenBefore
                    ctx.origins.removeSubrange(originsBefore...)
                    books[site] = savedBook
                    ctx.clocks = [:]
                    ctx.dirtyClocks = []
                    ctx.pendingRows = [:]
                    outcome.rejections.append(ChangesetRejection(
                        index: index, actor: changeset.actor, versions: changeset.versions, reason: "\(error)"))
                }
            }
            try recordClearedVersions(&ctx)
            try persistBooks(sites: ctx.touchedSites, before: booksBefore)
        }
        outcome.changesWritten = ctx.written
        for origin in ctx.origins { hlc.observe(origin.timestamp) }
        let event = CommitEvent(source: .remote, rows: ctx.rows, origins: ctx.origins)
        notify(event)
        return (outcome, event)
    }

    /// Versions, causal lengths and col_versions above this are refused from
    /// peers: honest counters never get near it, and local writes add one to
    /// what merges stored, which must not overflow.
    static let maxCounter: Int64 = 1 << 62

    struct InvalidChangeset: Error, CustomStringConvertible {
        let description: String
    }

    /// Checks everything about a changeset that does not need the database, and
    /// decodes its primary keys. Throws a description of the first problem.
    func validate(_ changeset: Changeset) throws -> [[SQLValue]] {
        func fail(_ message: String) -> InvalidChangeset { InvalidChangeset(description: message) }
        switch changeset.content {
        case .cleared(let versions):
            guard versions.lowerBound >= 1, versions.upperBound <= Self.maxCounter else {
                throw fail("impossible version range \(versions)")
            }
            return []
        case .changes(let version, let changes, let seqs, let lastSeq, _):
            guard version >= 1, version <= Self.maxCounter else { throw fail("impossible version \(version)") }
            guard seqs.lowerBound >= 0, seqs.upperBound <= lastSeq, lastSeq < (1 << 40) else {
                throw fail("impossible seq range \(seqs) for last seq \(lastSeq)")
            }
            guard changes.count <= seqs.count else { throw fail("more changes than seqs in \(seqs)") }
            var seen = Set<Int64>()
            var keys: [[SQLValue]] = []
            keys.reserveCapacity(changes.count)
            for change in changes {
                guard let table = tables[change.table] else { throw fail("unknown table \(change.table)") }
                guard change.isSentinel || table.hasColumn(change.cid) else {
                    throw fail("unknown column \(change.table).\(change.cid)")
                }
                guard seqs.contains(change.seq), seen.insert(change.seq).inserted else {
                    throw fail("seq \(change.seq) outside \(seqs) or repeated")
                }
                guard change.cl >= 1, change.colVersion >= 0, change.cl <= Self.maxCounter, change.colVersion <= Self.maxCounter else {
                    throw fail("impossible causal length \(change.cl) or col_version \(change.colVersion)")
                }
                let values: [SQLValue]
                do { values = try change.pk.decode() } catch { throw fail("\(change.table): \(error)") }
                guard values.count == table.pkColumns.count, !values.contains(.null) else {
                    throw fail("malformed primary key for \(change.table): expected \(table.pkColumns.count) non-NULL values")
                }
                // Clocks are found by the key's bytes: one row must have one encoding.
                guard PackedPrimaryKey(values).bytes == change.pk.bytes else {
                    throw fail("primary key for \(change.table) not in its canonical encoding")
                }
                if integerKeyTables.contains(change.table) {
                    // The row's key is its rowid, and its clock is keyed by it.
                    guard case .integer = values[0] else {
                        throw fail("malformed primary key for \(change.table): its key is an INTEGER PRIMARY KEY")
                    }
                }
                keys.append(values)
            }
            return keys
        }
    }

    private func mergeOne(
        _ changeset: Changeset, decodedKeys: [[SQLValue]], site: Int64, outcome: inout MergeOutcome, ctx: inout MergeContext
    ) throws {
        ctx.touchedSites.insert(site)
        switch changeset.content {
        case .cleared(let versions):
            let missing = books[site]!.applied.missing(in: versions)
            if missing.isEmpty {
                outcome.duplicates += 1
                return
            }
            for r in missing {
                try db.run("DELETE FROM __patina_buffer WHERE site = ? AND version BETWEEN ? AND ?",
                           [.integer(site), .integer(r.lowerBound), .integer(r.upperBound)])
                try db.run("DELETE FROM __patina_partials WHERE site = ? AND version BETWEEN ? AND ?",
                           [.integer(site), .integer(r.lowerBound), .integer(r.upperBound)])
                books[site]!.applied.insert(r)
                books[site]!.cleared.insert(r)
                for v in books[site]!.partials.keys where r.contains(v) { books[site]!.partials[v] = nil }
            }
            outcome.appliedVersions += 1

        case .changes(let version, let changes, let seqs, let lastSeq, let ts):
            if books[site]!.applied.contains(version) {
                outcome.duplicates += 1
                return
            }
            let origin = Origin(site: site, actor: changeset.actor, version: version)
            let partial = books[site]!.partials[version]
            if partial == nil && seqs == 0...lastSeq {
                try applyVersion(origin, changes: changes, keys: decodedKeys, lastSeq: lastSeq, ts: ts, ctx: &ctx)
                outcome.appliedVersions += 1
                return
            }
            var received = partial?.seqs ?? VersionRangeSet()
            if let partial, partial.lastSeq != lastSeq {
                throw InvalidChangeset(description: "last seq \(lastSeq) disagrees with \(partial.lastSeq) of earlier parts")
            }
            if received.contains(seqs) {
                outcome.duplicates += 1
                return
            }
            let buffer = try db.cached("""
                INSERT INTO __patina_buffer (site, version, seq, tbl, pk, cid, val, col_version, cl)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
            for change in changes where !received.contains(change.seq) {
                buffer.reset()
                buffer.bind(site, at: 1)
                buffer.bind(version, at: 2)
                buffer.bind(change.seq, at: 3)
                buffer.bind(change.table, at: 4)
                buffer.bind(change.pk.bytes, at: 5)
                buffer.bind(change.cid, at: 6)
                try buffer.bind(change.val, at: 7)
                buffer.bind(change.colVersion, at: 8)
                buffer.bind(change.cl, at: 9)
                try buffer.step()
            }
            received.insert(seqs)
            if received.contains(0...lastSeq) {
                let all = try bufferedChanges(site: site, version: version)
                try db.run("DELETE FROM __patina_buffer WHERE site = ? AND version = ?", [.integer(site), .integer(version)])
                try db.run("DELETE FROM __patina_partials WHERE site = ? AND version = ?", [.integer(site), .integer(version)])
                books[site]!.partials[version] = nil
                let keys = try all.map { try $0.pk.decode() }
                try applyVersion(origin, changes: all, keys: keys, lastSeq: lastSeq, ts: ts, ctx: &ctx)
                outcome.appliedVersions += 1
            } else {
                try db.run("""
                    INSERT INTO __patina_partials (site, version, last_seq, ts, seqs) VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (site, version) DO UPDATE SET seqs = excluded.seqs
                    """, [.integer(site), .integer(version), .integer(lastSeq), .integer(Int64(bitPattern: ts.rawValue)),
                          .text(Self.encodeRanges(received))])
                books[site]!.partials[version] = (received, lastSeq)
                outcome.buffered += 1
            }
        }
    }

    private func bufferedChanges(site: Int64, version: Int64) throws -> [Change] {
        let stmt = try db.cached("""
            SELECT tbl, pk, cid, val, col_version, seq, cl FROM __patina_buffer
            WHERE site = ? AND version = ? ORDER BY seq
            """)
        stmt.bind(site, at: 1)
        stmt.bind(version, at: 2)
        var changes: [Change] = []
        while try stmt.step() {
            changes.append(Change(table: stmt.string(at: 0), pk: PackedPrimaryKey(bytes: stmt.bytes(at: 1)),
                                  cid: stmt.string(at: 2), val: stmt.value(at: 3), colVersion: stmt.int64(at: 4),
                                  seq: stmt.int64(at: 5), cl: stmt.int64(at: 6)))
        }
        stmt.reset()
        return changes
    }

    /// Applies every change of one complete version, in seq order.
    private func applyVersion(
        _ origin: Origin, changes: [Change], keys: [[SQLValue]], lastSeq: Int64, ts: HybridTimestamp, ctx: inout MergeContext
    ) throws {
        var order = Array(changes.indices)
        if !zip(changes, changes.dropFirst()).allSatisfy({ $0.seq < $1.seq }) {
            order.sort { changes[$0].seq < changes[$1].seq }
        }
        var attributed = false
        var written: [(table: String, pk: [UInt8])] = []
        for i in order {
            if try mergeChange(changes[i], key: keys[i], origin: origin, ctx: &ctx) {
                attributed = true
                written.append((changes[i].table, changes[i].pk.bytes))
            }
        }
        try flushPendingRows(&ctx)
        try flushClocks(&ctx)
        books[origin.site]!.applied.insert(origin.version)
        ctx.origins.append(RemoteOrigin(actor: origin.actor, timestamp: ts))
        if attributed {
            try recordVersion(site: origin.site, version: origin.version, lastSeq: lastSeq, ts: ts, keys: Self.groupKeys(written))
        } else {
            books[origin.site]!.cleared.insert(origin.version)  // nothing of it survives here
        }
    }

    /// The clock of a row as this batch sees it (read once, then kept in ctx).
    private func rowClock(_ key: RowKey, _ st: TableStatements, ctx: inout MergeContext) throws -> RowClock? {
        if let cached = ctx.clocks[key] { return cached }
        let clock = try st.readClock(key.pk)
        ctx.clocks[key] = clock
        return clock
    }

    private func setRowClock(_ key: RowKey, _ clock: RowClock, ctx: inout MergeContext) {
        ctx.clocks[key] = clock
        ctx.dirtyClocks.insert(key)
    }

    /// Writes the clocks this version changed: one clock row per touched row.
    private func flushClocks(_ ctx: inout MergeContext) throws {
        for key in ctx.dirtyClocks {
            guard let table = tables[key.table], let clock = ctx.clocks[key] ?? nil else { continue }
            try statements(for: table).storeClock(key.pk, clock)
        }
        ctx.dirtyClocks.removeAll(keepingCapacity: true)
    }

    private func bindKey(_ stmt: SQLiteStatement, _ key: [SQLValue]) throws {
        stmt.reset()
        for (i, v) in key.enumerated() { try stmt.bind(v, at: i + 1) }
    }

    /// Drops a row's column clocks (a delete or a new life of the row); the
    /// versions that wrote them may have nothing left.
    private func dropColumnClocks(_ clock: inout RowClock, ctx: inout MergeContext) {
        for cell in clock.cells { if let cell { ctx.overwritten.insert(SiteVersion(site: cell.site, version: cell.version)) } }
        clock.cells = []
    }

    /// The sentinel of a row whose first life (cl 1) is implied by its column
    /// clocks: such sentinels are not stored (see RowClock).
    static let impliedFirstLife = ClockEntry(colVersion: 1, site: -1, version: 0, seq: 0)

    private func setSentinel(_ clock: inout RowClock, _ new: ClockEntry, ctx: inout MergeContext) {
        if let old = clock.sentinel, old.site >= 0 { ctx.overwritten.insert(SiteVersion(site: old.site, version: old.version)) }
        // Rule 4 for a first life: the column clock about to be written implies it.
        clock.sentinel = new.colVersion == 1 && new.site < 0 ? nil : new
    }

    /// Merges one change; true when a clock ends up attributed to it.
    private func mergeChange(_ change: Change, key: [SQLValue], origin: Origin, ctx: inout MergeContext) throws -> Bool {
        guard let table = tables[change.table] else { return false }
        var change = change
        if case .integer(let i) = change.val, table.realColumns.contains(change.cid) {
            change.val = .real(Double(i))  // as the column stores it, so every replica compares alike
        }
        let st = try statements(for: table)
        let rowKey = RowKey(table: change.table, pk: change.pk)
        let local = try rowClock(rowKey, st, ctx: &ctx)
        var clock = local ?? RowClock()
        let localCl = clock.cl
        if change.cl < localCl { return false }
        let isDelete = change.cl % 2 == 0
        if isDelete && !change.isSentinel { return false }  // a cell of a deleted row: nothing to do

        if change.isSentinel {
            let incoming = ClockEntry(colVersion: change.cl, site: origin.site, version: origin.version, seq: change.seq)
            if change.cl == localCl {
                // Rule 6: same causal length; only the attribution may move.
                let current = clock.sentinel ?? Self.impliedFirstLife
                guard current.site < 0 || attributionPrecedes(incoming, origin.actor, current) else { return false }
                setSentinel(&clock, incoming, ctx: &ctx)
                setRowClock(rowKey, clock, ctx: &ctx)
                return true
            }
            if isDelete {
                ctx.pendingRows[rowKey] = nil
                try bindKey(st.deleteRow, key)
                try st.deleteRow.step()
                ctx.rows[change.table, default: [:]][change.pk] = .delete
            } else {
                ensurePending(rowKey, table: table, key: key, ctx: &ctx)
                ctx.rows[change.table, default: [:]][change.pk] = .upsert
            }
            dropColumnClocks(&clock, ctx: &ctx)
            setSentinel(&clock, incoming, ctx: &ctx)
            setRowClock(rowKey, clock, ctx: &ctx)
            ctx.written += 1
            return true
        }

        guard let column = st.columnIndex[change.cid] else { return false }
        var wins = false
        if change.cl > localCl {
            // Rule 4: the row is (re)created by a change that arrived before its sentinel.
            ensurePending(rowKey, table: table, key: key, ctx: &ctx)
            dropColumnClocks(&clock, ctx: &ctx)
            setSentinel(&clock, ClockEntry(colVersion: change.cl, site: -1, version: 0, seq: 0), ctx: &ctx)
            wins = true
        }
        var previous: SiteVersion?
        if !wins {
            if let localCell = clock.cell(column) {
                previous = SiteVersion(site: localCell.site, version: localCell.version)
                if change.colVersion != localCell.colVersion {
                    wins = change.colVersion > localCell.colVersion
                } else {
                    let order = SQLValue.mergeOrder(change.val, try readCell(st, rowKey, column: change.cid, key: key, ctx: ctx))
                    if order != 0 {
                        wins = order > 0
                    } else if let localActor = actorOfSite[localCell.site] {
                        wins = origin.actor > localActor
                    }
                }
            } else {
                wins = true  // no clock for this cell
            }
        }
        guard wins else { return false }
        ensurePending(rowKey, table: table, key: key, ctx: &ctx)
        ctx.pendingRows[rowKey]!.cells[change.cid] = change.val
        clock.setCell(column, ClockEntry(colVersion: change.colVersion, site: origin.site, version: origin.version, seq: change.seq))
        setRowClock(rowKey, clock, ctx: &ctx)
        if let previous { ctx.overwritten.insert(previous) }
        ctx.rows[change.table, default: [:]][change.pk] = .upsert
        ctx.written += 1
        return true
    }

    private func ensurePending(_ rowKey: RowKey, table: TableInfo, key: [SQLValue], ctx: inout MergeContext) {
        if ctx.pendingRows[rowKey] == nil { ctx.pendingRows[rowKey] = PendingRow(table: table, key: key) }
    }

    /// Writes the winning cells of each touched row with one upsert per row.
    private func flushPendingRows(_ ctx: inout MergeContext) throws {
        for (_, row) in ctx.pendingRows {
            let columns = row.table.columns.filter { row.cells[$0] != nil }
            let stmt = try statements(for: row.table).upsert(columns: columns, db: db)
            try bindKey(stmt, row.key)
            for (i, column) in columns.enumerated() { try stmt.bind(row.cells[column]!, at: row.key.count + i + 1) }
            try stmt.step()
        }
        ctx.pendingRows.removeAll(keepingCapacity: true)
    }

    private func attributionPrecedes(_ incoming: ClockEntry, _ incomingActor: ActorID, _ local: ClockEntry) -> Bool {
        guard let localActor = actorOfSite[local.site] else { return true }
        if incomingActor != localActor { return incomingActor < localActor }
        if incoming.version != local.version { return incoming.version < local.version }
        return incoming.seq < local.seq
    }

    private func readCell(_ st: TableStatements, _ rowKey: RowKey, column: String, key: [SQLValue], ctx: MergeContext) throws -> SQLValue {
        if let pending = ctx.pendingRows[rowKey]?.cells[column] { return pending }
        guard let s = st.selectCell[column] else { return .null }
        try bindKey(s, key)
        defer { s.reset() }
        return try s.step() ? s.value(at: 0) : .null
    }

    /// Versions whose last clock row was overwritten in this batch are recorded
    /// as cleared, so peers asking for them get an empty answer at once.
    private func recordClearedVersions(_ ctx: inout MergeContext) throws {
        for sv in ctx.overwritten where sv.site >= 0 {
            guard let book = books[sv.site], book.applied.contains(sv.version), !book.cleared.contains(sv.version) else { continue }
            if try !isAlive(site: sv.site, version: sv.version) {
                books[sv.site]!.cleared.insert(sv.version)
                try db.run("DELETE FROM __patina_versions WHERE site = ? AND version = ?", [.integer(sv.site), .integer(sv.version)])
                ctx.touchedSites.insert(sv.site)
            }
        }
    }
}
