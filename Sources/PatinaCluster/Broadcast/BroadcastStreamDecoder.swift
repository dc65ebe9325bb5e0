import PatinaCore

/// Decodes one broadcast stream as its bytes arrive: `changesets` frames only.
/// An oversized or malformed frame, or any other frame type, throws at once,
/// so memory stays within one frame and the caller drops the whole stream.
struct BroadcastStreamDecoder {
    private var frames: FrameDecoder
    private(set) var changesets: [Changeset] = []

    init(maxFrameSize: Int = Frame.defaultMaxSize) {
        frames = FrameDecoder(maxFrameSize: maxFrameSize)
    }

    mutating func feed(_ bytes: [UInt8]) throws(WireError) {
        for frame in try frames.feed(bytes) {
            guard case .changesets(let c) = try WireMessage.decode(frame) else {
                throw WireError(.unknownFrameType(frame.type))
            }
            changesets += c
        }
    }

    /// Throws if the stream ended inside a frame.
    mutating func finish() throws(WireError) { try frames.finish() }
}
