import PatinaCore

/// Appends primitive values in Patina's wire encoding.
///
/// Integers are LEB128 varints (signed ones zigzag-mapped first, so small
/// negative numbers stay short), reals are the 8 big-endian bytes of their IEEE
/// 754 bit pattern (NaN payloads and -0.0 survive), text and blobs are a varint
/// length followed by the bytes.
public struct WireWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }

    public mutating func u32BigEndian(_ v: UInt32) {
        bytes.append(UInt8(truncatingIfNeeded: v >> 24))
        bytes.append(UInt8(truncatingIfNeeded: v >> 16))
        bytes.append(UInt8(truncatingIfNeeded: v >> 8))
        bytes.append(UInt8(truncatingIfNeeded: v))
    }

    public mutating func u64BigEndian(_ v: UInt64) {
        var shift: UInt64 = 56
        while true {
            bytes.append(UInt8(truncatingIfNeeded: v >> shift))
            if shift == 0 { break }
            shift -= 8
        }
    }

    public mutating func varint(_ value: UInt64) { Varint.append(value, to: &bytes) }

    public mutating func signed(_ v: Int64) {
        varint(Varint.zigzag(v))
    }

    public mutating func count(_ n: Int) { varint(UInt64(n)) }

    public mutating func lengthPrefixed(_ b: [UInt8]) {
        count(b.count)
        bytes.append(contentsOf: b)
    }

    public mutating func string(_ s: String) {
        var s = s
        s.withUTF8 { utf8 in
            count(utf8.count)
            bytes.append(contentsOf: utf8)
        }
    }

    public mutating func actor(_ a: ActorID) {
        withUnsafeBytes(of: a.uuid.uuid) { bytes.append(contentsOf: $0) }
    }

    public mutating func range(_ r: ClosedRange<Int64>) {
        signed(r.lowerBound)
        signed(r.upperBound)
    }

    public mutating func raw(_ b: some Sequence<UInt8>) { bytes.append(contentsOf: b) }
}

/// Reads what ``WireWriter`` wrote. Every read is bounds-checked and throws
/// ``WireError`` on malformed input; counts are checked against the bytes left
/// before anything is allocated, so a forged count cannot make it reserve
/// gigabytes.
public struct WireReader {
    @usableFromInline let bytes: [UInt8]
    public private(set) var index: Int
    let end: Int

    public init(_ bytes: [UInt8], from start: Int = 0) {
        self.bytes = bytes
        self.index = min(max(0, start), bytes.count)
        self.end = bytes.count
    }

    public var remaining: Int { end - index }
    public var isAtEnd: Bool { index >= end }

    public func expectEnd() throws(WireError) {
        guard index == end else { throw .trailingBytes }
    }

    public mutating func u8() throws(WireError) -> UInt8 {
        guard index < end else { throw .truncated }
        defer { index += 1 }
        return bytes[index]
    }

    public mutating func u64BigEndian() throws(WireError) -> UInt64 {
        guard remaining >= 8 else { throw .truncated }
        var v: UInt64 = 0
        for k in 0..<8 { v = (v << 8) | UInt64(bytes[index + k]) }
        index += 8
        return v
    }

    public mutating func varint() throws(WireError) -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard index < end else { throw .truncated }
            let b = bytes[index]
            index += 1
            if shift == 63 && b > 1 { throw WireError(.varintOverflow) }
            result |= UInt64(b & 0x7f) << shift
            if b & 0x80 == 0 { return result }
            shift += 7
            if shift > 63 { throw WireError(.varintOverflow) }
        }
    }

    public mutating func signed() throws(WireError) -> Int64 {
        Varint.unzigzag(try varint())
    }

    /// A count of elements that each take at least `minElementBytes` bytes.
    public mutating func count(_ what: String, minElementBytes: Int = 1) throws(WireError) -> Int {
        let n = try varint()
        guard n <= UInt64(remaining / max(1, minElementBytes)) else { throw WireError(.countTooLarge(what)) }
        return Int(n)
    }

    public mutating func bytes(_ n: Int) throws(WireError) -> [UInt8] {
        guard n >= 0, n <= remaining else { throw .truncated }
        defer { index += n }
        return Array(bytes[index..<(index + n)])
    }

    public mutating func lengthPrefixed() throws(WireError) -> [UInt8] {
        let n = try count("byte string")
        return try bytes(n)
    }

    public mutating func string() throws(WireError) -> String {
        let n = try count("text")
        guard n <= remaining else { throw .truncated }
        let s = String(validating: bytes[index..<(index + n)], as: UTF8.self)
        guard let s else { throw WireError(.invalidUTF8) }
        index += n
        return s
    }

    public mutating func actor() throws(WireError) -> ActorID {
        guard remaining >= 16 else { throw .truncated }
        defer { index += 16 }
        // 16 bytes are always a valid UUID.
        return ActorID(bytes: bytes[index..<(index + 16)])!
    }

    public mutating func range(_ what: String) throws(WireError) -> ClosedRange<Int64> {
        let lower = try signed()
        let upper = try signed()
        guard lower <= upper else { throw WireError(.badRange(what)) }
        return lower...upper
    }
}
