/// One length-prefixed frame of a QUIC stream.
///
/// ```
/// frame := length(u32, big-endian) type(u8) payload(length - 1 bytes)
/// ```
/// `length` counts the type byte and the payload, so it is at least 1; a
/// decoder refuses lengths above its maximum before buffering anything.
public struct Frame: Hashable, Sendable {
    public static let defaultMaxSize = 8 * 1024 * 1024
    public static let headerSize = 5

    public var type: UInt8
    public var payload: [UInt8]

    public init(type: UInt8, payload: [UInt8]) {
        self.type = type
        self.payload = payload
    }

    public func encoded() -> [UInt8] {
        var w = WireWriter(capacity: Self.headerSize + payload.count)
        w.u32BigEndian(UInt32(truncatingIfNeeded: payload.count + 1))
        w.u8(type)
        w.raw(payload)
        return w.bytes
    }
}

/// Reassembles frames from a stream's byte chunks, whatever their split.
///
/// Memory is bounded by one maximal frame plus one chunk: a header announcing
/// more than `maxFrameSize` throws as soon as its 4 length bytes are in, before
/// the payload is buffered. After a throw the decoder is poisoned: the stream
/// MUST be abandoned, since frame boundaries are lost.
public struct FrameDecoder: Sendable {
    public let maxFrameSize: Int
    private var buffer: [UInt8] = []
    private var start = 0
    private var failed: WireError?

    public init(maxFrameSize: Int = Frame.defaultMaxSize) {
        self.maxFrameSize = max(1, maxFrameSize)
    }

    /// Bytes received but not yet part of a returned frame.
    public var bufferedByteCount: Int { buffer.count - start }

    /// Feeds a chunk; returns the frames it completed, in order.
    public mutating func feed(_ chunk: some Collection<UInt8>) throws(WireError) -> [Frame] {
        if let failed { throw failed }
        buffer.append(contentsOf: chunk)
        var frames: [Frame] = []
        while true {
            let available = buffer.count - start
            guard available >= 4 else { break }
            var length = 0
            for k in 0..<4 { length = (length << 8) | Int(buffer[start + k]) }
            guard length >= 1 else { return try fail(WireError(.emptyFrame)) }
            guard length <= maxFrameSize else { return try fail(WireError(.frameTooLarge(length: length, max: maxFrameSize))) }
            guard available >= 4 + length else { break }
            let type = buffer[start + 4]
            let payload = Array(buffer[(start + 5)..<(start + 4 + length)])
            frames.append(Frame(type: type, payload: payload))
            start += 4 + length
        }
        // Compact once the consumed prefix dominates, so the buffer stays bounded.
        if start > 0 && (start >= buffer.count || start > 64 * 1024 && start * 2 > buffer.count) {
            buffer.removeFirst(start)
            start = 0
        }
        return frames
    }

    /// Call at end of stream: throws when a frame was cut short.
    public func finish() throws(WireError) {
        if let failed { throw failed }
        guard bufferedByteCount == 0 else { throw .streamEndedMidFrame }
    }

    private mutating func fail(_ error: WireError) throws(WireError) -> [Frame] {
        failed = error
        buffer = []
        start = 0
        throw error
    }
}
