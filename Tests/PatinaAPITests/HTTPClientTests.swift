import Foundation
@testable import PatinaNode
import Testing

/// The client's chunked-body decoder, fed the way a socket hands bytes over.
@Suite struct ChunkedDecoderTests {
    /// A chunked body of `lines` NDJSON lines in chunks of `perChunk` lines.
    static func body(lines: Int, perChunk: Int) -> (wire: Data, payload: Data) {
        var wire = Data()
        var payload = Data()
        for start in stride(from: 0, to: lines, by: perChunk) {
            let text = Data((start..<min(lines, start + perChunk)).map { "{\"notify\":[\"update\",[\($0)]]}\n" }.joined().utf8)
            wire.append(Data("\(String(text.count, radix: 16))\r\n".utf8))
            wire.append(text)
            wire.append(Data("\r\n".utf8))
            payload.append(text)
        }
        wire.append(Data("0\r\n\r\n".utf8))
        return (wire, payload)
    }

    @Test(arguments: [1, 7, 1500, 65536])
    func splitAnywhereTheBodyComesOutWhole(readSize: Int) throws {
        let (wire, payload) = Self.body(lines: 3000, perChunk: 17)
        var decoder = ChunkedDecoder()
        var out = Data()
        var finished = false
        var offset = 0
        while offset < wire.count {
            let end = min(wire.count, offset + readSize)
            let (data, done) = try decoder.feed(wire.subdata(in: offset..<end))
            out.append(data)
            finished = done
            offset = end
        }
        #expect(finished)
        #expect(out == payload)
    }

    @Test func aMalformedChunkSizeIsAnError() {
        var decoder = ChunkedDecoder()
        #expect(throws: HTTPClient.ClientError.self) { try decoder.feed(Data("zz\r\nabc\r\n".utf8)) }
    }
}
