import PatinaCore
import Testing

@Suite struct PackedPrimaryKeyTests {
    @Test(arguments: [Int64(0), 1, 127, 128, 255, 256, -1, -128, -129, 32767, 32768, Int64(Int32.max), Int64(Int32.min),
                      Int64.max, Int64.min, Int64.max - 1, Int64.min + 1])
    func integersOfEveryWidthRoundTrip(_ v: Int64) throws {
        let key = PackedPrimaryKey([.integer(v)])
        #expect(try key.decode() == [.integer(v)])
    }

    @Test func documentedEncodings() {
        #expect(PackedPrimaryKey([.integer(0)]).bytes == [1, 0x01])
        #expect(PackedPrimaryKey([.integer(127)]).bytes == [1, 0x09, 0x7f])
        #expect(PackedPrimaryKey([.integer(128)]).bytes == [1, 0x11, 0x00, 0x80])
        #expect(PackedPrimaryKey([.integer(-1)]).bytes == [1, 0x09, 0xff])
        #expect(PackedPrimaryKey([.text("ab")]).bytes == [1, 0x0b, 2, 0x61, 0x62])
    }

    @Test func mixedAndLongValuesRoundTrip() throws {
        let long = String(repeating: "é", count: 200)  // 400 bytes: a length above 255
        let values: [SQLValue] = [.text(""), .text(long), .blob([]), .blob(Array(repeating: 0x80, count: 128)),
                                  .real(-0.0), .real(1.5), .real(.infinity), .integer(-5)]
        let key = PackedPrimaryKey(values)
        #expect(try key.decode() == values)
    }

    @Test func malformedKeysAreRejectedNotTrapped() {
        let bad: [[UInt8]] = [[], [0], [1], [1, 0x07], [1, 0x49], [1, 0x11, 0x00], [1, 0x0b, 5, 0x61], [1, 0x01, 0x01],
                              [2, 0x01], [1, 0x0b, 1, 0xff], [1, 0x42, 0, 0], [1, 0x0d]]
        for bytes in bad {
            #expect(throws: PackedPrimaryKey.DecodeError.self, "\(bytes)") { try PackedPrimaryKey(bytes: bytes).decode() }
        }
    }

    @Test func randomBytesNeverTrap() {
        var rng = SplitMix64(seed: 42)
        for _ in 0..<20_000 {
            let n = Int(rng.next() % 24)
            let bytes = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            _ = try? PackedPrimaryKey(bytes: bytes).decode()
        }
    }
}

@Suite struct VersionRangeSetTests {
    @Test func insertMergesAdjacentAndOverlappingRanges() {
        var set = VersionRangeSet()
        set.insert(5)
        set.insert(1...2)
        set.insert(3)
        #expect(set.ranges == [1...3, 5...5])
        set.insert(4)
        #expect(set.ranges == [1...5])
        set.insert(10...12)
        set.insert(8...20)
        #expect(set.ranges == [1...5, 8...20])
        #expect(set.gaps(upTo: 22) == [6...7, 21...22])
        #expect(set.missing(in: 4...9) == [6...7])
        #expect(set.contains(9...12) && !set.contains(5...8))
    }

    @Test func matchesANaiveSetUnderRandomInserts() {
        var rng = SplitMix64(seed: 7)
        for _ in 0..<200 {
            var set = VersionRangeSet()
            var naive = Set<Int64>()
            for _ in 0..<30 {
                let a = Int64(rng.next() % 60) + 1
                let b = a + Int64(rng.next() % 4)
                set.insert(a...b)
                naive.formUnion(a...b)
            }
            for v in Int64(0)...70 { #expect(set.contains(v) == naive.contains(v)) }
            for (x, y) in zip(set.ranges, set.ranges.dropFirst()) { #expect(x.upperBound + 1 < y.lowerBound) }
            let gapCount = set.gaps(upTo: 70).reduce(0) { $0 + $1.count }
            #expect(gapCount == 70 - naive.filter { $0 <= 70 }.count)
        }
    }
}

@Suite struct HybridLogicalClockTests {
    @Test func ticksAreMonotonicEvenWhenTheWallClockStepsBack() {
        var clock = HybridLogicalClock()
        let a = clock.tick(nowMilliseconds: 1000)
        let b = clock.tick(nowMilliseconds: 1000)
        let c = clock.tick(nowMilliseconds: 900)
        #expect(a < b && b < c)
        clock.observe(HybridTimestamp(milliseconds: 5000, counter: 3))
        let d = clock.tick(nowMilliseconds: 1001)
        #expect(d > HybridTimestamp(milliseconds: 5000, counter: 3))
        #expect(clock.tick(nowMilliseconds: 6000) == HybridTimestamp(milliseconds: 6000, counter: 0))
    }
}

@Suite struct MergeOrderTests {
    @Test func orderIsTotalAndByTypeFirst() {
        let ordered: [SQLValue] = [.null, .integer(Int64.min), .integer(-1), .integer(5), .real(-.infinity), .real(-0.0),
                                   .real(0.0), .real(2.5), .text(""), .text("a"), .text("b"), .blob([]), .blob([0])]
        for (i, x) in ordered.enumerated() {
            for (j, y) in ordered.enumerated() {
                let expected = i == j ? 0 : (i < j ? -1 : 1)
                #expect(SQLValue.mergeOrder(x, y) == expected, "\(x) vs \(y)")
            }
        }
    }
}

