/// LEB128 variable-length integers, as the wire codecs and the store's packed
/// clocks and key lists write them: 7 bits per byte, least significant first,
/// the high bit set on every byte but the last. Signed values are zigzag
/// encoded first, so small magnitudes of either sign stay short.
public enum Varint {
    public static func append(_ value: UInt64, to out: inout [UInt8]) {
        var v = value
        while v >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
    }

    public static func appendSigned(_ value: Int64, to out: inout [UInt8]) {
        append(zigzag(value), to: &out)
    }

    /// The value at `index` (advanced past it), or nil when the bytes end
    /// first or it runs past 64 bits.
    public static func read(_ bytes: [UInt8], at index: inout Int) -> UInt64? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while index < bytes.count, shift < 64 {
            let b = bytes[index]
            index += 1
            value |= UInt64(b & 0x7f) << shift
            if b < 0x80 { return value }
            shift += 7
        }
        return nil
    }

    public static func zigzag(_ value: Int64) -> UInt64 { UInt64(bitPattern: (value << 1) ^ (value >> 63)) }

    public static func unzigzag(_ value: UInt64) -> Int64 { Int64(bitPattern: value >> 1) ^ -Int64(bitPattern: value & 1) }
}
