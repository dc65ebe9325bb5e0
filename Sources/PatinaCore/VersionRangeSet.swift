/// A set of versions (positive integers) stored as sorted, disjoint, non-adjacent
/// closed ranges. Bookkeeping keeps "which versions of an actor are applied" in
/// one of these: a node that applied versions 1...1_000_000 stores one range.
public struct VersionRangeSet: Hashable, Sendable, CustomStringConvertible {
    public private(set) var ranges: [ClosedRange<Int64>] = []

    public init() {}
    public init(_ ranges: some Sequence<ClosedRange<Int64>>) {
        for r in ranges { insert(r) }
    }

    public var isEmpty: Bool { ranges.isEmpty }
    public var max: Int64? { ranges.last?.upperBound }
    /// Saturates at Int64.max (a range set from a peer may span everything).
    public var count: Int64 {
        ranges.reduce(0) { sum, r in
            let n = r.upperBound &- r.lowerBound &+ 1
            let (total, overflow) = sum.addingReportingOverflow(n <= 0 ? .max : n)
            return overflow ? .max : total
        }
    }

    public func contains(_ v: Int64) -> Bool {
        guard let i = indexOfRange(endingAtOrAfter: v) else { return false }
        return ranges[i].contains(v)
    }

    public func contains(_ r: ClosedRange<Int64>) -> Bool {
        guard let i = indexOfRange(endingAtOrAfter: r.lowerBound) else { return false }
        return ranges[i].lowerBound <= r.lowerBound && ranges[i].upperBound >= r.upperBound
    }

    public mutating func insert(_ v: Int64) { insert(v...v) }

    public mutating func insert(_ r: ClosedRange<Int64>) {
        // Find every range that overlaps or touches r, and replace them with their union.
        var lower = r.lowerBound
        var upper = r.upperBound
        var first = ranges.count
        var last = -1
        var lo = 0
        var hi = ranges.count
        while lo < hi {  // first range whose upper bound >= r.lower - 1
            let mid = (lo + hi) / 2
            if ranges[mid].upperBound < r.lowerBound &- 1 { lo = mid + 1 } else { hi = mid }
        }
        var i = lo
        while i < ranges.count, ranges[i].lowerBound <= r.upperBound &+ 1 {
            first = Swift.min(first, i)
            last = i
            lower = Swift.min(lower, ranges[i].lowerBound)
            upper = Swift.max(upper, ranges[i].upperBound)
            i += 1
        }
        if last >= first {
            ranges.replaceSubrange(first...last, with: [lower...upper])
        } else {
            ranges.insert(lower...upper, at: lo)
        }
    }

    public mutating func formUnion(_ other: VersionRangeSet) {
        for r in other.ranges { insert(r) }
    }

    /// Versions in `1...upTo` that are not in the set, as ranges: the gaps a node
    /// still has to fetch from its peers.
    public func gaps(upTo: Int64) -> [ClosedRange<Int64>] {
        var result: [ClosedRange<Int64>] = []
        var next: Int64 = 1
        for r in ranges {
            if r.lowerBound > upTo { break }
            if r.lowerBound > next { result.append(next...(r.lowerBound - 1)) }
            if r.upperBound == .max { return result }  // nothing can follow (and +1 would trap)
            next = Swift.max(next, r.upperBound + 1)
        }
        if next <= upTo { result.append(next...upTo) }
        return result
    }

    /// Versions of `r` that are not in the set.
    public func missing(in r: ClosedRange<Int64>) -> [ClosedRange<Int64>] {
        var result: [ClosedRange<Int64>] = []
        var next = r.lowerBound
        for s in ranges where s.upperBound >= r.lowerBound {
            if s.lowerBound > r.upperBound { break }
            if s.lowerBound > next { result.append(next...(s.lowerBound - 1)) }
            if s.upperBound == .max { return result }
            next = Swift.max(next, s.upperBound + 1)
            if next > r.upperBound { break }
        }
        if next <= r.upperBound { result.append(next...r.upperBound) }
        return result
    }

    private func indexOfRange(endingAtOrAfter v: Int64) -> Int? {
        var lo = 0
        var hi = ranges.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ranges[mid].upperBound < v { lo = mid + 1 } else { hi = mid }
        }
        return lo < ranges.count ? lo : nil
    }

    public var description: String {
        "[" + ranges.map { $0.lowerBound == $0.upperBound ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)" }
            .joined(separator: ",") + "]"
    }
}
