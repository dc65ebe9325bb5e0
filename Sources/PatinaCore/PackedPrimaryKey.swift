/// The compact encoding of a primary key tuple, used as the key of clock rows
/// and on the wire.
///
/// Layout: one byte holding the number of columns (1...255), then for each
/// column a header byte and its payload. The header's low 3 bits give the
/// type, its high 5 bits a byte count `n`:
///
/// | type | meaning  | payload                                                     |
/// |------|----------|-------------------------------------------------------------|
/// | 1    | INTEGER  | `n` (0...8) big-endian bytes of the minimal two's-complement |
/// |      |          | form, sign-extended on decode; 0 is encoded with `n` = 0      |
/// | 2    | REAL     | 8 big-endian bytes of the IEEE 754 bit pattern (`n` = 8)      |
/// | 3    | TEXT     | `n` (1...8) big-endian bytes of an unsigned length L, then L  |
/// |      |          | bytes of UTF-8 (`n` = 0 means the empty string)               |
/// | 4    | BLOB     | as TEXT                                                     |
/// | 5    | NULL     | nothing (`n` = 0); only for decoding, keys are NOT NULL       |
///
/// Examples: the single integer key 0 is `01 01`; 127 is `01 09 7f`; 128 is
/// `01 11 00 80`; -1 is `01 09 ff`. Lengths are unsigned: a decoder must never
/// sign-extend them (Corrosion once mis-decoded 128-byte strings that way).
public struct PackedPrimaryKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) { self.bytes = bytes }

    public init(_ values: [SQLValue]) {
        precondition(!values.isEmpty && values.count <= 255, "a primary key has 1...255 columns")
        var out: [UInt8] = [UInt8(values.count)]
        out.reserveCapacity(1 + values.count * 9)
        for v in values { Self.append(v, to: &out) }
        bytes = out
    }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.bytes.lexicographicallyPrecedes(rhs.bytes) }

    /// The bytes in one call: the synthesized form hashes them one by one, and
    /// keys are hashed per row on every write and merge.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(bytes.count)
        bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
    }

    public var description: String {
        guard let values = try? decode() else { return "<malformed pk>" }
        return "(" + values.map(\.description).joined(separator: ", ") + ")"
    }

    public static func append(_ value: SQLValue, to out: inout [UInt8]) {
        switch value {
        case .null:
            out.append(5)
        case .integer(let v):
            let n = minimalByteCount(v)
            out.append(UInt8(n << 3) | 1)
            appendBigEndian(UInt64(bitPattern: v), byteCount: n, to: &out)
        case .real(let d):
            out.append(UInt8(8 << 3) | 2)
            appendBigEndian(d.bitPattern, byteCount: 8, to: &out)
        case .text(let s):
            appendBytes(Array(s.utf8), type: 3, to: &out)
        case .blob(let b):
            appendBytes(b, type: 4, to: &out)
        }
    }

    public enum DecodeError: Error, Equatable, CustomStringConvertible {
        case empty
        case truncated
        case badType(UInt8)
        case badLength(UInt8)
        case invalidUTF8
        case trailingBytes

        public var description: String {
            switch self {
            case .empty: "malformed primary key: empty"
            case .truncated: "malformed primary key: truncated"
            case .badType(let t): "malformed primary key: unknown type \(t)"
            case .badLength(let n): "malformed primary key: bad byte count \(n)"
            case .invalidUTF8: "malformed primary key: text is not UTF-8"
            case .trailingBytes: "malformed primary key: trailing bytes"
            }
        }
    }

    /// Decodes the key; throws on anything malformed (the bytes may come from the network).
    public func decode() throws(DecodeError) -> [SQLValue] {
        guard let count = bytes.first, count > 0 else { throw .empty }
        var values: [SQLValue] = []
        values.reserveCapacity(Int(count))
        var i = 1
        for _ in 0..<count {
            guard i < bytes.count else { throw .truncated }
            let header = bytes[i]
            i += 1
            let type = header & 7
            let n = Int(header >> 3)
            switch type {
            case 1:
                guard n <= 8 else { throw .badLength(header) }
                guard i + n <= bytes.count else { throw .truncated }
                var v: UInt64 = 0
                for k in 0..<n { v = (v << 8) | UInt64(bytes[i + k]) }
                // Sign-extend the integer (never a length) from n bytes.
                if n > 0 && n < 8 && bytes[i] & 0x80 != 0 { v |= ~UInt64(0) << (UInt64(n) * 8) }
                values.append(.integer(Int64(bitPattern: v)))
                i += n
            case 2:
                guard n == 8 else { throw .badLength(header) }
                guard i + 8 <= bytes.count else { throw .truncated }
                var v: UInt64 = 0
                for k in 0..<8 { v = (v << 8) | UInt64(bytes[i + k]) }
                values.append(.real(Double(bitPattern: v)))
                i += 8
            case 3, 4:
                guard n <= 8 else { throw .badLength(header) }
                guard i + n <= bytes.count else { throw .truncated }
                var length: UInt64 = 0
                for k in 0..<n { length = (length << 8) | UInt64(bytes[i + k]) }
                i += n
                guard length <= UInt64(bytes.count - i) else { throw .truncated }
                let payload = Array(bytes[i..<(i + Int(length))])
                i += Int(length)
                if type == 3 {
                    guard let s = String(validating: payload, as: UTF8.self) else { throw .invalidUTF8 }
                    values.append(.text(s))
                } else {
                    values.append(.blob(payload))
                }
            case 5:
                guard n == 0 else { throw .badLength(header) }
                values.append(.null)
            default:
                throw .badType(type)
            }
        }
        guard i == bytes.count else { throw .trailingBytes }
        return values
    }

    private static func minimalByteCount(_ v: Int64) -> Int {
        if v == 0 { return 0 }
        var n = 8
        // Drop leading bytes that are pure sign extension of the next byte.
        while n > 1 {
            let shifted = v >> Int64((n - 1) * 8 - 1)
            if shifted == 0 || shifted == -1 { n -= 1 } else { break }
        }
        return n
    }

    private static func appendBigEndian(_ v: UInt64, byteCount n: Int, to out: inout [UInt8]) {
        var k = n - 1
        while k >= 0 {
            out.append(UInt8(truncatingIfNeeded: v >> UInt64(k * 8)))
            k -= 1
        }
    }

    private static func appendBytes(_ payload: [UInt8], type: UInt8, to out: inout [UInt8]) {
        let length = UInt64(payload.count)
        var n = 0
        while n < 8 && (length >> UInt64(n * 8)) != 0 { n += 1 }
        out.append(UInt8(n << 3) | type)
        appendBigEndian(length, byteCount: n, to: &out)
        out.append(contentsOf: payload)
    }
}
