import PatinaCore

/// One SWIM message: who sends it, what it asks, and the gossip it carries.
public struct MembershipMessage: Sendable, Hashable {
    public var clusterID: UInt16
    public var sender: MemberIdentity
    public var body: Body
    /// Piggybacked gossip (SWIM §4.1 "infection-style dissemination"), or for
    /// `.snapshot` one chunk of the sender's whole membership.
    public var updates: [MemberUpdate]

    public enum Body: Sendable, Hashable {
        /// "Are you alive?" The receiver answers `.ack(sequence, target: itself)`.
        case ping(sequence: UInt32)
        /// "`target` is alive", answering the ping (or ping-req) numbered `sequence`.
        case ack(sequence: UInt32, target: ActorID)
        /// A relay's "I could not reach the target in time" (Lifeguard §IV-A).
        case nack(sequence: UInt32)
        /// "Probe `target` for me" (SWIM §3.1 ping-req).
        case pingRequest(sequence: UInt32, target: ActorID, targetAddress: String)
        /// "I am here, tell me who is there": the answer is `.snapshot` messages.
        case announce
        /// Part of a full membership snapshot, answering `.announce`.
        case snapshot
        /// Gossip only.
        case gossip
    }

    public init(clusterID: UInt16, sender: MemberIdentity, body: Body, updates: [MemberUpdate] = []) {
        self.clusterID = clusterID
        self.sender = sender
        self.body = body
        self.updates = updates
    }
}

/// Why bytes are not a membership message.
public struct MembershipCodecError: Error, Hashable, CustomStringConvertible {
    enum Code: Hashable {
        case truncated
        case unsupportedVersion(UInt8)
        case unknownKind(UInt8)
        case unknownStatus(UInt8)
        case invalidUTF8
        case varintOverflow
        case trailingBytes(Int)
        case tooManyUpdates
    }
    let code: Code

    public var description: String {
        switch code {
        case .truncated: "membership message truncated"
        case .unsupportedVersion(let v): "unsupported membership message version \(v)"
        case .unknownKind(let k): "unknown membership message kind \(k)"
        case .unknownStatus(let s): "unknown member status \(s)"
        case .invalidUTF8: "membership message string is not UTF-8"
        case .varintOverflow: "membership message varint overflows 64 bits"
        case .trailingBytes(let n): "membership message has \(n) trailing bytes"
        case .tooManyUpdates: "membership message has more than 255 updates"
        }
    }

    public static let truncated = MembershipCodecError(code: .truncated)
}

/// The binary layout of a `MembershipMessage` (big-endian integers):
///
///     version u8 (=1) | cluster id u16 | kind u8
///     sender: actor id [16] | incarnation varint | address str | region str
///     body (by kind): ping/nack: seq u32; ack: seq u32, target [16];
///                     ping-req: seq u32, target [16], target address str
///     update count u8, then each update:
///         actor id [16] | flags u8 (status in bits 0-1, bit 2: has suspectedBy)
///         incarnation varint | address str | region str | [suspectedBy [16]]
///
/// `str` is a u8 length then UTF-8 bytes; an empty region means none. Strings MUST be
/// at most 255 bytes (the state machine checks its own identity; decoded strings
/// already are). Decoding never traps: every read is bounds-checked and any
/// malformed input throws `MembershipCodecError`.
public enum MembershipCodec {
    public static let version: UInt8 = 1

    enum Kind: UInt8 {
        case ping = 1, ack, nack, pingRequest, announce, snapshot, gossip
    }

    // MARK: Sizes, so the state machine can fill a datagram without encoding twice.

    static func varintSize(_ value: UInt64) -> Int {
        var v = value
        var n = 1
        while v >= 0x80 {
            v >>= 7
            n += 1
        }
        return n
    }

    static func stringSize(_ s: String?) -> Int { 1 + (s?.utf8.count ?? 0) }

    public static func size(of update: MemberUpdate) -> Int {
        16 + 1 + varintSize(update.incarnation) + stringSize(update.address) + stringSize(update.region)
            + (update.suspectedBy == nil ? 0 : 16)
    }

    /// Bytes of everything but the updates, including the update count byte.
    public static func headerSize(sender: MemberIdentity, body: MembershipMessage.Body) -> Int {
        let fixed = 1 + 2 + 1 + 16 + varintSize(sender.incarnation) + stringSize(sender.address)
            + stringSize(sender.region) + 1
        switch body {
        case .ping, .nack: return fixed + 4
        case .ack: return fixed + 4 + 16
        case .pingRequest(_, _, let address): return fixed + 4 + 16 + stringSize(address)
        case .announce, .snapshot, .gossip: return fixed
        }
    }

    public static func size(of message: MembershipMessage) -> Int {
        message.updates.reduce(headerSize(sender: message.sender, body: message.body)) { $0 + size(of: $1) }
    }

    // MARK: Encoding

    public static func encode(_ message: MembershipMessage) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(size(of: message))
        out.append(version)
        out.append(UInt8(message.clusterID >> 8))
        out.append(UInt8(message.clusterID & 0xFF))
        let kind: Kind
        switch message.body {
        case .ping: kind = .ping
        case .ack: kind = .ack
        case .nack: kind = .nack
        case .pingRequest: kind = .pingRequest
        case .announce: kind = .announce
        case .snapshot: kind = .snapshot
        case .gossip: kind = .gossip
        }
        out.append(kind.rawValue)
        out.append(contentsOf: message.sender.id.bytes)
        Varint.append(message.sender.incarnation, to: &out)
        putString(message.sender.address, &out)
        putString(message.sender.region, &out)
        switch message.body {
        case .ping(let seq), .nack(let seq):
            putU32(seq, &out)
        case .ack(let seq, let target):
            putU32(seq, &out)
            out.append(contentsOf: target.bytes)
        case .pingRequest(let seq, let target, let address):
            putU32(seq, &out)
            out.append(contentsOf: target.bytes)
            putString(address, &out)
        case .announce, .snapshot, .gossip:
            break
        }
        precondition(message.updates.count <= 255, "at most 255 updates per membership message")
        out.append(UInt8(message.updates.count))
        for u in message.updates {
            out.append(contentsOf: u.id.bytes)
            let hasSuspector = u.status == .suspect && u.suspectedBy != nil
            out.append(u.status.rawValue | (hasSuspector ? 0x04 : 0))
            Varint.append(u.incarnation, to: &out)
            putString(u.address, &out)
            putString(u.region, &out)
            if hasSuspector, let by = u.suspectedBy { out.append(contentsOf: by.bytes) }
        }
        return out
    }

    private static func putU32(_ v: UInt32, _ out: inout [UInt8]) {
        out.append(UInt8(truncatingIfNeeded: v >> 24))
        out.append(UInt8(truncatingIfNeeded: v >> 16))
        out.append(UInt8(truncatingIfNeeded: v >> 8))
        out.append(UInt8(truncatingIfNeeded: v))
    }

    private static func putString(_ s: String?, _ out: inout [UInt8]) {
        let utf8 = Array((s ?? "").utf8.prefix(255))
        out.append(UInt8(utf8.count))
        out.append(contentsOf: utf8)
    }

    // MARK: Decoding

    public static func decode(_ bytes: [UInt8]) throws(MembershipCodecError) -> MembershipMessage {
        var r = Reader(bytes: bytes)
        let v = try r.u8()
        guard v == version else { throw MembershipCodecError(code: .unsupportedVersion(v)) }
        let clusterID = UInt16(try r.u8()) << 8 | UInt16(try r.u8())
        let rawKind = try r.u8()
        guard let kind = Kind(rawValue: rawKind) else { throw MembershipCodecError(code: .unknownKind(rawKind)) }
        let senderID = try r.actorID()
        let senderInc = try r.varint()
        let senderAddress = try r.string()
        let senderRegion = try r.string()
        let sender = MemberIdentity(
            id: senderID, address: senderAddress, region: senderRegion.isEmpty ? nil : senderRegion,
            incarnation: senderInc)
        let body: MembershipMessage.Body
        switch kind {
        case .ping: body = .ping(sequence: try r.u32())
        case .nack: body = .nack(sequence: try r.u32())
        case .ack: body = .ack(sequence: try r.u32(), target: try r.actorID())
        case .pingRequest:
            body = .pingRequest(sequence: try r.u32(), target: try r.actorID(), targetAddress: try r.string())
        case .announce: body = .announce
        case .snapshot: body = .snapshot
        case .gossip: body = .gossip
        }
        let count = Int(try r.u8())
        var updates: [MemberUpdate] = []
        updates.reserveCapacity(count)
        for _ in 0..<count {
            let id = try r.actorID()
            let flags = try r.u8()
            guard flags & ~0x07 == 0, let status = MemberStatus(rawValue: flags & 0x03) else {
                throw MembershipCodecError(code: .unknownStatus(flags))
            }
            let hasSuspector = flags & 0x04 != 0
            guard !hasSuspector || status == .suspect else { throw MembershipCodecError(code: .unknownStatus(flags)) }
            let inc = try r.varint()
            let address = try r.string()
            let region = try r.string()
            let by = hasSuspector ? try r.actorID() : nil
            updates.append(
                MemberUpdate(
                    id: id, address: address, region: region.isEmpty ? nil : region, incarnation: inc,
                    status: status, suspectedBy: by))
        }
        guard r.remaining == 0 else { throw MembershipCodecError(code: .trailingBytes(r.remaining)) }
        return MembershipMessage(clusterID: clusterID, sender: sender, body: body, updates: updates)
    }

    private struct Reader {
        let bytes: [UInt8]
        var index = 0

        var remaining: Int { bytes.count - index }

        mutating func u8() throws(MembershipCodecError) -> UInt8 {
            guard index < bytes.count else { throw .truncated }
            defer { index += 1 }
            return bytes[index]
        }

        mutating func u32() throws(MembershipCodecError) -> UInt32 {
            guard remaining >= 4 else { throw .truncated }
            defer { index += 4 }
            return UInt32(bytes[index]) << 24 | UInt32(bytes[index + 1]) << 16 | UInt32(bytes[index + 2]) << 8
                | UInt32(bytes[index + 3])
        }

        mutating func varint() throws(MembershipCodecError) -> UInt64 {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while true {
                let b = try u8()
                if shift == 63 && b > 1 { throw MembershipCodecError(code: .varintOverflow) }
                value |= UInt64(b & 0x7F) << shift
                if b & 0x80 == 0 { return value }
                shift += 7
                if shift > 63 { throw MembershipCodecError(code: .varintOverflow) }
            }
        }

        mutating func actorID() throws(MembershipCodecError) -> ActorID {
            guard remaining >= 16 else { throw .truncated }
            defer { index += 16 }
            // 16 bytes always make an ActorID.
            return ActorID(bytes: bytes[index..<index + 16])!
        }

        mutating func string() throws(MembershipCodecError) -> String {
            let n = Int(try u8())
            guard remaining >= n else { throw .truncated }
            defer { index += n }
            guard let s = String(validating: bytes[index..<index + n], as: UTF8.self) else {
                throw MembershipCodecError(code: .invalidUTF8)
            }
            return s
        }
    }
}
