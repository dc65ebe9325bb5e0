import PatinaCore

/// `__patina_keys`: for each version of each actor, per table, the packed keys
/// of the rows it wrote — one row per (site, version, table), written once per
/// transaction or merged version.
///
/// It replaces an index on the clock tables' `(site, db_version)`: that index
/// cost every replicated cell a second B-tree insert, while this costs one row
/// per version. Readers find a version's cells by looking up the listed rows'
/// clocks and keeping those still attributed to the version; the list may hold
/// rows whose cells were overwritten since (or lost the merge), never miss one.
///
/// `pks`: the keys concatenated, each preceded by its length as 4 big-endian bytes.
extension StoreCore {
    struct VersionKeysEntry {
        var version: Int64
        var table: String
        var pks: [[UInt8]]
    }

    static func encodeKeys(_ pks: [[UInt8]]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(pks.reduce(0) { $0 + 4 + $1.count })
        for pk in pks {
            let n = UInt32(pk.count)
            out.append(UInt8(truncatingIfNeeded: n >> 24))
            out.append(UInt8(truncatingIfNeeded: n >> 16))
            out.append(UInt8(truncatingIfNeeded: n >> 8))
            out.append(UInt8(truncatingIfNeeded: n))
            out += pk
        }
        return out
    }

    static func decodeKeys(_ bytes: [UInt8]) -> [[UInt8]] {
        var pks: [[UInt8]] = []
        var i = 0
        while i + 4 <= bytes.count {
            let n = Int(bytes[i]) << 24 | Int(bytes[i + 1]) << 16 | Int(bytes[i + 2]) << 8 | Int(bytes[i + 3])
            i += 4
            guard i + n <= bytes.count else { break }
            pks.append(Array(bytes[i..<(i + n)]))
            i += n
        }
        return pks
    }

    /// Records the rows `version` of `site` wrote, by table.
    func recordKeys(site: Int64, version: Int64, keys: [(table: String, pk: [UInt8])]) throws {
        // Readers skip repeats; dropping the consecutive ones (cells of one row) keeps it short.
        // Keys come in runs of one table, so tables are looked up per run, not per key.
        var byTable: [String: [[UInt8]]] = [:]
        var runTable: String?
        var run: [[UInt8]] = []
        for k in keys {
            if k.table != runTable {
                if let runTable { byTable[runTable, default: []] += run }
                runTable = k.table
                run = []
            } else if run.last == k.pk {
                continue
            }
            run.append(k.pk)
        }
        if let runTable { byTable[runTable, default: []] += run }
        let stmt = try db.cached("INSERT OR REPLACE INTO __patina_keys (site, version, tbl, pks) VALUES (?, ?, ?, ?)")
        for (table, pks) in byTable {
            stmt.reset()
            stmt.bind(site, at: 1)
            stmt.bind(version, at: 2)
            stmt.bind(table, at: 3)
            stmt.bind(Self.encodeKeys(pks), at: 4)
            try stmt.step()
        }
        stmt.reset()
    }

    func keys(site: Int64, versions: ClosedRange<Int64>) throws -> [VersionKeysEntry] {
        let stmt = try db.cached("SELECT version, tbl, pks FROM __patina_keys WHERE site = ? AND version BETWEEN ? AND ?")
        stmt.bind(site, at: 1)
        stmt.bind(versions.lowerBound, at: 2)
        stmt.bind(versions.upperBound, at: 3)
        var entries: [VersionKeysEntry] = []
        while try stmt.step() {
            entries.append(VersionKeysEntry(version: stmt.int64(at: 0), table: stmt.string(at: 1), pks: Self.decodeKeys(stmt.bytes(at: 2))))
        }
        stmt.reset()
        return entries
    }

    func dropKeys(site: Int64, versions: ClosedRange<Int64>) throws {
        try db.run("DELETE FROM __patina_keys WHERE site = ? AND version BETWEEN ? AND ?",
                   [.integer(site), .integer(versions.lowerBound), .integer(versions.upperBound)])
    }

    /// Whether any clock row is still attributed to `version` of `site`.
    func isAlive(site: Int64, version: Int64) throws -> Bool {
        for entry in try keys(site: site, versions: version...version) {
            guard let table = tables[entry.table] else { continue }
            let st = try statements(for: table)
            for pk in entry.pks {
                if try st.readClock(PackedPrimaryKey(bytes: pk))?.isAttributed(site: site, version: version) == true { return true }
            }
        }
        return false
    }

    /// The changes of `site` whose clock rows are still attributed to versions in
    /// `versions`, with current values, grouped by version and sorted by seq.
    func readChanges(site: Int64, versions: ClosedRange<Int64>) throws -> [Int64: [Change]] {
        var byVersion: [Int64: [Change]] = [:]
        var seen = Set<RowKey>()
        for entry in try keys(site: site, versions: versions) {
            guard let table = tables[entry.table] else { continue }
            let st = try statements(for: table)
            for bytes in entry.pks {
                let pk = PackedPrimaryKey(bytes: bytes)
                guard seen.insert(RowKey(table: table.name, pk: pk)).inserted else { continue }
                try appendChanges(of: table, st, pk: pk, site: site, versions: versions, to: &byVersion)
            }
        }
        for key in byVersion.keys { byVersion[key]!.sort { $0.seq < $1.seq } }
        return byVersion
    }

    /// Appends the cells (and sentinel) of one row attributed to `site` and `versions`.
    private func appendChanges(
        of table: TableInfo, _ st: TableStatements, pk: PackedPrimaryKey, site: Int64, versions: ClosedRange<Int64>,
        to byVersion: inout [Int64: [Change]]
    ) throws {
        guard let clock = try st.readClock(pk) else { return }
        let cl = clock.cl
        var matches: [(cid: String, colVersion: Int64, version: Int64, seq: Int64)] = []
        clock.forEachEntry { column, e in
            guard e.site == site && versions.contains(e.version) else { return }
            if let column, column >= table.columns.count { return }  // no such column
            matches.append((column.map { table.columns[$0] } ?? Change.sentinelColumn, e.colVersion, e.version, e.seq))
        }
        if matches.isEmpty { return }
        var values: [SQLValue]?
        for m in matches {
            var val = SQLValue.null
            if m.cid != Change.sentinelColumn, let columnIndex = st.columnIndex[m.cid] {
                if values == nil { values = try readRow(table: table, pk: pk) ?? [] }
                val = columnIndex < values!.count ? values![columnIndex] : .null
            }
            byVersion[m.version, default: []].append(
                Change(table: table.name, pk: pk, cid: m.cid, val: val, colVersion: m.colVersion, seq: m.seq, cl: cl))
        }
    }

    /// See ``Store/clockRows(_:)``.
    func clockRows(_ name: String) throws -> [[SQLValue]] {
        guard let table = tables[name] else { return [] }
        let st = try statements(for: table)
        let stmt = try db.prepare("SELECT pk, site, db_version, seq, cells FROM \(quoteIdentifier(table.clockTable))")
        var out: [(pk: [UInt8], cid: String, row: [SQLValue])] = []
        while try stmt.step() {
            let pk: [UInt8] = st.integerKey ? packInteger(stmt.int64(at: 0)) { Array($0) } : stmt.bytes(at: 0)
            let clock = try TableStatements.clock(from: stmt, at: 1)
            clock.forEachEntry { column, e in
                let cid = column.map { $0 < table.columns.count ? table.columns[$0] : "#\($0)" } ?? Change.sentinelColumn
                let actor: SQLValue = e.site < 0 ? .null : actorOfSite[e.site].map { .blob($0.bytes) } ?? .null
                out.append((pk, cid, [.blob(pk), .text(cid), .integer(e.colVersion), actor, .integer(e.version), .integer(e.seq)]))
            }
        }
        return out.sorted { $0.pk != $1.pk ? $0.pk.lexicographicallyPrecedes($1.pk) : $0.cid.utf8.lexicographicallyPrecedes($1.cid.utf8) }.map(\.row)
    }
}
