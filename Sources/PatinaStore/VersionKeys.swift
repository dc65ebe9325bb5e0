import PatinaCore

/// The keys a version wrote: for each version of each actor, per table, the
/// packed keys of the rows it wrote, kept in the `keys` column of that
/// version's `__patina_versions` row (written once per transaction or merged
/// version, in the same insert as the version itself).
///
/// They replace an index on the clocks' `(site, db_version)`: that index cost
/// every replicated row a second B-tree insert, while this costs nothing per
/// row beyond a few bytes. Readers find a version's cells by looking up the
/// listed rows' clocks and keeping the entries still attributed to the
/// version; the list may hold rows whose cells were overwritten since (or lost
/// the merge), never misses one. A cleared version's row goes, keys and all.
///
/// Encoding: per table, the name's UTF-8 length (4 big-endian bytes), the name,
/// the length of its key list (4 bytes), then the list (``KeyList``).
extension StoreCore {
    struct VersionKeysEntry {
        var version: Int64
        var table: String
        var pks: [[UInt8]]
    }

    static func appendLengthPrefixed(_ pk: [UInt8], to out: inout [UInt8]) {
        let n = UInt32(pk.count)  // big-endian, as `decodeVersionKeys` reads it
        out += [UInt8(truncatingIfNeeded: n >> 24), UInt8(truncatingIfNeeded: n >> 16), UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n)]
        out.append(contentsOf: pk)
    }

    /// The `keys` column from per-table key lists.
    static func encodeVersionKeys(_ byTable: [String: KeyList]) -> [UInt8] {
        var out: [UInt8] = []
        for (table, list) in byTable.sorted(by: { $0.key < $1.key }) where !list.bytes.isEmpty {
            appendLengthPrefixed(Array(table.utf8), to: &out)
            appendLengthPrefixed(list.bytes, to: &out)
        }
        return out
    }

    static func decodeVersionKeys(_ bytes: [UInt8]) -> [(table: String, pks: [[UInt8]])] {
        var out: [(String, [[UInt8]])] = []
        var i = 0
        func next() -> [UInt8]? {
            guard i + 4 <= bytes.count else { return nil }
            let n = Int(bytes[i]) << 24 | Int(bytes[i + 1]) << 16 | Int(bytes[i + 2]) << 8 | Int(bytes[i + 3])
            i += 4
            guard i + n <= bytes.count else { return nil }
            defer { i += n }
            return Array(bytes[i..<(i + n)])
        }
        while let name = next(), let pks = next() {
            out.append((String(decoding: name, as: UTF8.self), KeyList.decode(pks)))
        }
        return out
    }

    /// The rows written by a merged version, by table (consecutive repeats, the
    /// cells of one row, dropped; readers skip any other repeat).
    static func groupKeys(_ keys: [(table: String, pk: [UInt8])]) -> [String: KeyList] {
        var byTable: [String: KeyList] = [:]
        var last: (table: String, pk: [UInt8])?
        for k in keys {
            if let last, last.table == k.table, last.pk == k.pk { continue }
            byTable[k.table, default: KeyList()].append(k.pk)
            last = k
        }
        return byTable
    }

    /// Records a version that wrote something: its last seq, timestamp and keys.
    func recordVersion(site: Int64, version: Int64, lastSeq: Int64, ts: HybridTimestamp, keys: [String: KeyList]) throws {
        let stmt = try db.cached("INSERT OR REPLACE INTO __patina_versions (site, version, last_seq, ts, keys) VALUES (?, ?, ?, ?, ?)")
        stmt.bind(site, at: 1)
        stmt.bind(version, at: 2)
        stmt.bind(lastSeq, at: 3)
        stmt.bind(Int64(bitPattern: ts.rawValue), at: 4)
        stmt.bind(Self.encodeVersionKeys(keys), at: 5)
        try stmt.step()
        stmt.reset()
    }

    func keys(site: Int64, versions: ClosedRange<Int64>) throws -> [VersionKeysEntry] {
        let stmt = try db.cached("SELECT version, keys FROM __patina_versions WHERE site = ? AND version BETWEEN ? AND ?")
        stmt.bind(site, at: 1)
        stmt.bind(versions.lowerBound, at: 2)
        stmt.bind(versions.upperBound, at: 3)
        var entries: [VersionKeysEntry] = []
        while try stmt.step() {
            let version = stmt.int64(at: 0)
            for (table, pks) in Self.decodeVersionKeys(stmt.bytes(at: 1)) {
                entries.append(VersionKeysEntry(version: version, table: table, pks: pks))
            }
        }
        stmt.reset()
        return entries
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

/// The keys of one table's rows in a version's list, compact because a
/// version's row is written on every commit: each key starts with an unsigned
/// LEB128 varint `h`. Odd `h`: a one-integer key, `(h - 1) / 2` the zigzag of
/// its difference from the previous integer key of the list (consecutive ids
/// take one byte each). Even `h`: `h / 2` bytes of a packed key follow.
struct KeyList {
    var bytes: [UInt8] = []
    private var last: Int64 = 0

    mutating func append(_ pk: [UInt8]) {
        // (A difference whose zigzag needs all 64 bits is stored as bytes.)
        if let v = TableStatements.singleInteger(pk), case let z = Varint.zigzag(v &- last), z >> 63 == 0 {
            last = v
            Varint.append(z << 1 | 1, to: &bytes)
        } else {
            Varint.append(UInt64(pk.count) << 1, to: &bytes)
            bytes.append(contentsOf: pk)
        }
    }

    static func decode(_ bytes: [UInt8]) -> [[UInt8]] {
        var pks: [[UInt8]] = []
        var i = 0
        var last: Int64 = 0
        while i < bytes.count {
            guard let h = Varint.read(bytes, at: &i) else { break }
            if h & 1 == 1 {
                let z = h >> 1
                last = last &+ Varint.unzigzag(z)
                pks.append(packInteger(last) { Array($0) })
            } else {
                let n = Int(h >> 1)
                guard i + n <= bytes.count else { break }
                pks.append(Array(bytes[i..<(i + n)]))
                i += n
            }
        }
        return pks
    }
}
