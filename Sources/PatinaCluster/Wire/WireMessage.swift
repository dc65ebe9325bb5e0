import PatinaCore

/// The frame types of node-to-node streams.
public enum FrameType: UInt8, Sendable, CaseIterable {
    /// Broadcast: one batch of changesets, on a uni stream.
    case changesets = 0x01
    /// Sync: a node's ``SyncState`` (the client's request, then the server's reply).
    case syncState = 0x10
    /// Sync: a chunk of changesets the client lacks.
    case syncChangesets = 0x11
    /// Sync: the server sent everything it will send; how many changesets it
    /// held back as still in flight (a varint, absent when zero).
    case syncDone = 0x12
    /// Sync: the server serves too many sessions already; try another peer.
    case syncBusy = 0x13
    /// Sync: the session is abandoned, with a reason.
    case syncAbort = 0x14
}

/// One message of the node-to-node protocol.
public enum WireMessage: Hashable, Sendable {
    case changesets([Changeset])
    case syncState(SyncState)
    case syncChangesets([Changeset])
    case syncDone(heldBack: Int)
    case syncBusy
    case syncAbort(String)

    public var frameType: FrameType {
        switch self {
        case .changesets: .changesets
        case .syncState: .syncState
        case .syncChangesets: .syncChangesets
        case .syncDone: .syncDone
        case .syncBusy: .syncBusy
        case .syncAbort: .syncAbort
        }
    }

    /// The payload, without the frame header.
    public func encodePayload() -> [UInt8] {
        var w = WireWriter(capacity: 256)
        switch self {
        case .changesets(let c), .syncChangesets(let c): ChangesetCodec.encode(c, into: &w)
        case .syncState(let s): SyncState.encode(s, into: &w)
        case .syncDone(let heldBack): if heldBack > 0 { w.varint(UInt64(heldBack)) }
        case .syncBusy: break
        case .syncAbort(let reason): w.string(reason)
        }
        return w.bytes
    }

    /// The whole frame: length, type, payload (see ``Frame``).
    public func encodeFrame() -> [UInt8] {
        Frame(type: frameType.rawValue, payload: encodePayload()).encoded()
    }

    /// Decodes a frame's message; throws on an unknown type or a malformed payload.
    public static func decode(_ frame: Frame) throws(WireError) -> WireMessage {
        guard let type = FrameType(rawValue: frame.type) else { throw WireError(.unknownFrameType(frame.type)) }
        var r = WireReader(frame.payload)
        let message: WireMessage
        switch type {
        case .changesets: message = .changesets(try ChangesetCodec.decodeList(from: &r))
        case .syncChangesets: message = .syncChangesets(try ChangesetCodec.decodeList(from: &r))
        case .syncState: message = .syncState(try SyncState.decode(from: &r))
        case .syncDone:
            // Absent when zero; present, it must be above zero (one encoding per message).
            let present = !r.isAtEnd
            let heldBack = present ? try r.varint() : 0
            guard !present || heldBack > 0, heldBack <= UInt64(Int32.max) else {
                throw WireError(.badValue("syncDone held-back count must be absent, or 1...2^31-1"))
            }
            message = .syncDone(heldBack: Int(heldBack))
        case .syncBusy: message = .syncBusy
        case .syncAbort: message = .syncAbort(try r.string())
        }
        try r.expectEnd()
        return message
    }
}
