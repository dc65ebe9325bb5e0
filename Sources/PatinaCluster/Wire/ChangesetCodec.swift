import PatinaCore

/// The binary encoding of ``Changeset`` and ``SQLValue``.
///
/// ```
/// changeset := actor(16) kind(u8)
///   kind 0 (changes): version(s) seqs.lower(s) seqs.upper(s) lastSeq(s) ts(v)
///                     nameCount(v) name(str)*  changeCount(v) change*
///   kind 1 (cleared): versions.lower(s) versions.upper(s)
/// change    := table(v: index into names) cid(v: index) pk(bytes) value
///              colVersion(s) seq(s) cl(s)
/// value     := 0 | 1 int(s) | 2 real(8, big-endian IEEE 754) | 3 text(str) | 4 blob(bytes)
/// ```
/// `(v)` is an unsigned LEB128 varint, `(s)` a zigzag varint, `str`/`bytes` a
/// varint length then the bytes. Table and column names are written once per
/// changeset in a name table, since a version usually touches few of them.
public enum ChangesetCodec {
    public static func encode(_ changeset: Changeset, into w: inout WireWriter) {
        w.actor(changeset.actor)
        switch changeset.content {
        case .cleared(let versions):
            w.u8(1)
            w.range(versions)
        case .changes(let version, let changes, let seqs, let lastSeq, let ts):
            w.u8(0)
            w.signed(version)
            w.range(seqs)
            w.signed(lastSeq)
            w.varint(ts.rawValue)
            var names: [String] = []
            var index: [String: Int] = [:]
            func intern(_ s: String) {
                if index[s] == nil {
                    index[s] = names.count
                    names.append(s)
                }
            }
            for c in changes {
                intern(c.table)
                intern(c.cid)
            }
            w.count(names.count)
            for n in names { w.string(n) }
            w.count(changes.count)
            for c in changes {
                w.count(index[c.table]!)
                w.count(index[c.cid]!)
                w.lengthPrefixed(c.pk.bytes)
                encode(c.val, into: &w)
                w.signed(c.colVersion)
                w.signed(c.seq)
                w.signed(c.cl)
            }
        }
    }

    public static func decodeChangeset(from r: inout WireReader) throws(WireError) -> Changeset {
        let actor = try r.actor()
        let kind = try r.u8()
        switch kind {
        case 1:
            return .cleared(actor: actor, versions: try r.range("cleared versions"))
        case 0:
            let version = try r.signed()
            let seqs = try r.range("seqs")
            let lastSeq = try r.signed()
            let ts = HybridTimestamp(rawValue: try r.varint())
            let nameCount = try r.count("name", minElementBytes: 1)
            var names: [String] = []
            names.reserveCapacity(nameCount)
            for _ in 0..<nameCount { names.append(try r.string()) }
            // A change takes at least 8 bytes: 2 indices, pk length, value tag, 3 integers.
            let changeCount = try r.count("change", minElementBytes: 8)
            var changes: [Change] = []
            changes.reserveCapacity(changeCount)
            for _ in 0..<changeCount {
                let t = try r.count("table index")
                let c = try r.count("column index")
                guard t < names.count, c < names.count else { throw WireError(.badIndex) }
                let pk = PackedPrimaryKey(bytes: try r.lengthPrefixed())
                let val = try decodeValue(from: &r)
                let colVersion = try r.signed()
                let seq = try r.signed()
                let cl = try r.signed()
                changes.append(Change(table: names[t], pk: pk, cid: names[c], val: val, colVersion: colVersion, seq: seq, cl: cl))
            }
            return .changes(actor: actor, version: version, changes: changes, seqs: seqs, lastSeq: lastSeq, ts: ts)
        default:
            throw WireError(.badTag("changeset kind", kind))
        }
    }

    public static func encode(_ value: SQLValue, into w: inout WireWriter) {
        switch value {
        case .null: w.u8(0)
        case .integer(let v):
            w.u8(1)
            w.signed(v)
        case .real(let d):
            w.u8(2)
            w.u64BigEndian(d.bitPattern)
        case .text(let s):
            w.u8(3)
            w.string(s)
        case .blob(let b):
            w.u8(4)
            w.lengthPrefixed(b)
        }
    }

    public static func decodeValue(from r: inout WireReader) throws(WireError) -> SQLValue {
        let tag = try r.u8()
        switch tag {
        case 0: return .null
        case 1: return .integer(try r.signed())
        case 2: return .real(Double(bitPattern: try r.u64BigEndian()))
        case 3: return .text(try r.string())
        case 4: return .blob(try r.lengthPrefixed())
        default: throw WireError(.badTag("value", tag))
        }
    }

    /// A list of changesets: a count, then each one.
    public static func encode(_ changesets: [Changeset], into w: inout WireWriter) {
        w.count(changesets.count)
        for c in changesets { encode(c, into: &w) }
    }

    public static func decodeList(from r: inout WireReader) throws(WireError) -> [Changeset] {
        // A changeset takes at least 16 + 1 + 2 bytes.
        let n = try r.count("changeset", minElementBytes: 19)
        var result: [Changeset] = []
        result.reserveCapacity(n)
        for _ in 0..<n { result.append(try decodeChangeset(from: &r)) }
        return result
    }

    /// The exact number of bytes ``encode(_:into:)`` writes for `changeset`.
    public static func encodedSize(_ changeset: Changeset) -> Int {
        var w = WireWriter(capacity: 256)
        encode(changeset, into: &w)
        return w.bytes.count
    }
}

extension Changeset {
    /// Splits this changeset into pieces by seq so each piece encodes to at most
    /// about `maxBytes` (a single change larger than that travels alone).
    ///
    /// The pieces tile the original's `seqs`: piece k covers
    /// `start_k...(first seq of piece k+1) - 1` and carries exactly the changes
    /// in it, so a receiver completes the version when it holds them all, as it
    /// would with the original. `.cleared` changesets are returned unchanged.
    public func split(maxBytes: Int, maxChanges: Int = .max) -> [Changeset] {
        guard case .changes(let version, let changes, let seqs, let lastSeq, let ts) = content else { return [self] }
        // Fixed part: actor, kind, 4 small ints, ts; generous bound.
        let overhead = 16 + 1 + 4 * 10 + 10
        var perChange: [Int] = []
        perChange.reserveCapacity(changes.count)
        var total = overhead
        for c in changes {
            var w = WireWriter(capacity: 64)
            w.count(0)
            w.count(0)
            w.lengthPrefixed(c.pk.bytes)
            ChangesetCodec.encode(c.val, into: &w)
            w.signed(c.colVersion)
            w.signed(c.seq)
            w.signed(c.cl)
            // Names are charged in full to every change that uses them: an upper bound.
            let size = w.bytes.count + c.table.utf8.count + c.cid.utf8.count + 4
            perChange.append(size)
            total += size
        }
        if total <= maxBytes && changes.count <= maxChanges { return [self] }
        let sorted = changes.indices.sorted { changes[$0].seq < changes[$1].seq }
        var pieces: [Changeset] = []
        var current: [Change] = []
        var currentBytes = overhead
        var start = seqs.lowerBound
        for i in sorted {
            let c = changes[i]
            if !current.isEmpty && (currentBytes + perChange[i] > maxBytes || current.count >= maxChanges) {
                let upper = c.seq - 1
                pieces.append(.changes(actor: actor, version: version, changes: current, seqs: start...max(start, upper),
                                       lastSeq: lastSeq, ts: ts))
                start = c.seq
                current = []
                currentBytes = overhead
            }
            current.append(c)
            currentBytes += perChange[i]
        }
        pieces.append(.changes(actor: actor, version: version, changes: current, seqs: start...max(start, seqs.upperBound),
                               lastSeq: lastSeq, ts: ts))
        return pieces
    }
}
