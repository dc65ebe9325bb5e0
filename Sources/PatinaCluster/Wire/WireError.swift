/// A malformed or oversized input met by a wire decoder.
///
/// Every decoder in `Wire/` throws one of these instead of trapping: its input
/// comes from the network. A struct over a private code, so cases can be added.
public struct WireError: Error, Hashable, Sendable, CustomStringConvertible {
    enum Code: Hashable, Sendable {
        case truncated
        case varintOverflow
        case invalidUTF8
        case badTag(String, UInt8)
        case badRange(String)
        case countTooLarge(String)
        case badValue(String)
        case badIndex
        case trailingBytes
        case frameTooLarge(length: Int, max: Int)
        case emptyFrame
        case unknownFrameType(UInt8)
        case streamEndedMidFrame
    }

    let code: Code

    init(_ code: Code) { self.code = code }

    public static let truncated = WireError(.truncated)
    public static let trailingBytes = WireError(.trailingBytes)
    public static let streamEndedMidFrame = WireError(.streamEndedMidFrame)

    /// True for a frame whose announced length exceeds the decoder's maximum.
    public var isFrameTooLarge: Bool {
        if case .frameTooLarge = code { return true }
        return false
    }

    public var description: String {
        switch code {
        case .truncated: "malformed wire data: truncated"
        case .varintOverflow: "malformed wire data: varint longer than 64 bits"
        case .invalidUTF8: "malformed wire data: text is not UTF-8"
        case .badTag(let what, let tag): "malformed wire data: unknown \(what) tag \(tag)"
        case .badRange(let what): "malformed wire data: \(what) range has lower bound above upper bound"
        case .countTooLarge(let what): "malformed wire data: \(what) count exceeds the bytes left"
        case .badValue(let what): "malformed wire data: \(what)"
        case .badIndex: "malformed wire data: string index out of range"
        case .trailingBytes: "malformed wire data: trailing bytes"
        case .frameTooLarge(let length, let max): "frame of \(length) bytes exceeds the maximum of \(max)"
        case .emptyFrame: "malformed frame: length 0 (no type byte)"
        case .unknownFrameType(let t): "malformed frame: unknown type \(t)"
        case .streamEndedMidFrame: "stream ended in the middle of a frame"
        }
    }
}
