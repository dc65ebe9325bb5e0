import PatinaCore

/// The write that set one cell, or a row's sentinel (whose `colVersion` is the
/// row's causal length). `site` is an ordinal into `__patina_sites`; -1 marks a
/// sentinel implied by a column change that arrived before it (docs/store.md).
struct ClockEntry: Equatable {
    var colVersion: Int64
    var site: Int64
    var version: Int64
    var seq: Int64
}

/// Every clock of one row: one row of `T__patina_clock`.
///
/// One clock row per data row (not per cell) because a replicated insert pays
/// one B-tree insert per clock row: per-cell rows made a three-column insert
/// cost 4–5 plain ones. The common case, a row's first life written by one
/// version, is stored in a compact form of four integers (see ``Stored``).
struct RowClock: Equatable {
    /// The row's sentinel; nil in a first life (cl 1) of a table with non-key
    /// columns, as in cr-sqlite: column clocks and no sentinel mean cl = 1.
    var sentinel: ClockEntry?
    /// By column index (``TableInfo/columns`` order; columns are only ever
    /// appended, so an index never changes meaning). nil: the cell has no clock.
    var cells: [ClockEntry?] = []

    /// The causal length: the sentinel's; 1 with column clocks only; 0 for none.
    var cl: Int64 {
        if let sentinel { return sentinel.colVersion }
        return cells.contains { $0 != nil } ? 1 : 0
    }

    var isEmpty: Bool { sentinel == nil && !cells.contains { $0 != nil } }

    /// Every entry (sentinel as `cid == nil`) with its column index.
    func forEachEntry(_ body: (Int?, ClockEntry) throws -> Void) rethrows {
        if let sentinel { try body(nil, sentinel) }
        for (i, cell) in cells.enumerated() { if let cell { try body(i, cell) } }
    }

    func isAttributed(site: Int64, version: Int64) -> Bool {
        if let s = sentinel, s.site == site, s.version == version { return true }
        return cells.contains { $0?.site == site && $0?.version == version }
    }

    mutating func setCell(_ index: Int, _ entry: ClockEntry) {
        if cells.count <= index { cells += Array(repeating: nil, count: index + 1 - cells.count) }
        cells[index] = entry
    }

    func cell(_ index: Int) -> ClockEntry? { index < cells.count ? cells[index] : nil }

    // MARK: Storage

    /// The stored form: `(site, db_version, seq, cells)` columns of the clock row.
    ///
    /// - Compact (`cells` an INTEGER `n`): with `n >= 1`, no sentinel and columns
    ///   `0..<n` each at col_version 1, written by `(site, db_version, seq + i)` —
    ///   a first life written by one version, the shape of every insert. With
    ///   `n == 0`, a real sentinel of causal length 1 at `(site, db_version, seq)`
    ///   and no cells (a first life in a table of key columns only).
    /// - Explicit (`cells` a BLOB; the other three NULL): entries of zigzag
    ///   LEB128 varints `tag, col_version, site, db_version, seq`, tag 0 for the
    ///   sentinel and `i + 1` for column `i`, in tag order.
    ///
    /// The form is a function of the clocks (compact whenever it fits), so two
    /// replicas holding the same clocks store the same bytes.
    enum Stored: Equatable {
        case compact(site: Int64, version: Int64, seq: Int64, count: Int64)
        case explicit([UInt8])
    }

    var stored: Stored {
        if sentinel == nil, let first = cells.first ?? nil, first.site >= 0, first.colVersion == 1 {
            var compact = true
            for (i, cell) in cells.enumerated() {
                guard let cell, cell.colVersion == 1, cell.site == first.site, cell.version == first.version,
                      cell.seq == first.seq + Int64(i) else { compact = false; break }
            }
            if compact { return .compact(site: first.site, version: first.version, seq: first.seq, count: Int64(cells.count)) }
        }
        if let s = sentinel, s.colVersion == 1, s.site >= 0, !cells.contains(where: { $0 != nil }) {
            return .compact(site: s.site, version: s.version, seq: s.seq, count: 0)
        }
        var out: [UInt8] = []
        func put(_ tag: Int, _ e: ClockEntry) {
            for v in [Int64(tag), e.colVersion, e.site, e.version, e.seq] { Varint.appendSigned(v, to: &out) }
        }
        if let sentinel { put(0, sentinel) }
        for (i, cell) in cells.enumerated() { if let cell { put(i + 1, cell) } }
        return .explicit(out)
    }

    init(sentinel: ClockEntry? = nil, cells: [ClockEntry?] = []) {
        self.sentinel = sentinel
        self.cells = cells
    }

    init(_ stored: Stored) throws {
        switch stored {
        case .compact(let site, let version, let seq, let count):
            guard count >= 0, count <= 100_000 else { throw MalformedClock() }
            if count == 0 {
                sentinel = ClockEntry(colVersion: 1, site: site, version: version, seq: seq)
            } else {
                cells = (0..<count).map { ClockEntry(colVersion: 1, site: site, version: version, seq: seq + $0) }
            }
        case .explicit(let bytes):
            var i = 0
            while i < bytes.count {
                var v: [Int64] = []
                for _ in 0..<5 { v.append(try Self.readVarint(bytes, &i)) }
                let entry = ClockEntry(colVersion: v[1], site: v[2], version: v[3], seq: v[4])
                guard v[0] >= 0, v[0] <= 100_000 else { throw MalformedClock() }
                if v[0] == 0 { sentinel = entry } else { setCell(Int(v[0] - 1), entry) }
            }
        }
    }

    struct MalformedClock: Error, CustomStringConvertible {
        var description: String { "malformed clock row" }
    }

    static func readVarint(_ bytes: [UInt8], _ i: inout Int) throws -> Int64 {
        guard let u = Varint.read(bytes, at: &i) else { throw MalformedClock() }
        return Varint.unzigzag(u)
    }
}
