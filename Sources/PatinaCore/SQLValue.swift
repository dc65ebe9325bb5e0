/// One SQLite value, of any of its five storage classes.
public enum SQLValue: Hashable, Sendable, CustomStringConvertible {
    case null
    case integer(Int64)
    case real(Double)
    case text(String)
    case blob([UInt8])

    /// The rank of each storage class in the merge order.
    var typeRank: Int {
        switch self {
        case .null: 0
        case .integer: 1
        case .real: 2
        case .text: 3
        case .blob: 4
        }
    }

    public var description: String {
        switch self {
        case .null: "NULL"
        case .integer(let v): String(v)
        case .real(let v): String(v)
        case .text(let s): "'\(s)'"
        case .blob(let b): "x'" + b.map { String(format2hex: $0) }.joined() + "'"
        }
    }
}

extension SQLValue {
    /// The fixed total order the merge rule uses to break a tie on `col_version`:
    /// first by storage class, NULL < INTEGER < REAL < TEXT < BLOB, then within a
    /// class numerically (reals by IEEE total order, so NaN and -0.0 are ordered
    /// too) or bytewise (text as UTF-8). The order only has to be the same on
    /// every node; comparing by class first keeps it total without asking
    /// whether 1 and 1.0 are equal.
    public static func mergeOrder(_ lhs: SQLValue, _ rhs: SQLValue) -> Int {
        let (l, r) = (lhs.typeRank, rhs.typeRank)
        if l != r { return l < r ? -1 : 1 }
        switch (lhs, rhs) {
        case (.integer(let a), .integer(let b)):
            return a == b ? 0 : (a < b ? -1 : 1)
        case (.real(let a), .real(let b)):
            if a.bitPattern == b.bitPattern { return 0 }
            return a.isTotallyOrdered(belowOrEqualTo: b) ? -1 : 1
        case (.text(let a), .text(let b)):
            return compareBytes(Array(a.utf8), Array(b.utf8))
        case (.blob(let a), .blob(let b)):
            return compareBytes(a, b)
        default:
            return 0  // both NULL
        }
    }

    private static func compareBytes(_ a: [UInt8], _ b: [UInt8]) -> Int {
        if a == b { return 0 }
        return a.lexicographicallyPrecedes(b) ? -1 : 1
    }
}

extension String {
    init(format2hex byte: UInt8) {
        let digits = Array("0123456789abcdef")
        self = String([digits[Int(byte >> 4)], digits[Int(byte & 0xf)]])
    }
}
