/// A hybrid logical clock timestamp (Kulkarni et al., "Logical Physical Clocks", 2014):
/// the upper 48 bits are milliseconds since the Unix epoch, the lower 16 a logical
/// counter, so timestamps compare like integers and still read as wall-clock time.
public struct HybridTimestamp: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(milliseconds: UInt64, counter: UInt16) {
        rawValue = (milliseconds << 16) | UInt64(counter)
    }

    public var milliseconds: UInt64 { rawValue >> 16 }
    public var counter: UInt16 { UInt16(truncatingIfNeeded: rawValue) }
    public static let zero = HybridTimestamp(rawValue: 0)

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { "\(milliseconds).\(counter)" }
}

/// The clock state of one node. Pure: the caller passes the physical time in, so
/// tests drive it with any time they like.
public struct HybridLogicalClock: Sendable {
    public private(set) var last: HybridTimestamp = .zero

    public init() {}

    /// A timestamp for a local event at physical time `nowMilliseconds`.
    public mutating func tick(nowMilliseconds: UInt64) -> HybridTimestamp {
        let next: HybridTimestamp
        if nowMilliseconds > last.milliseconds {
            next = HybridTimestamp(milliseconds: nowMilliseconds, counter: 0)
        } else {
            next = HybridTimestamp(rawValue: last.rawValue &+ 1)
        }
        last = next
        return next
    }

    /// Merges a timestamp received from another node, so later local events
    /// order after it even when this node's wall clock is behind.
    public mutating func observe(_ remote: HybridTimestamp) {
        if remote > last { last = remote }
    }
}
