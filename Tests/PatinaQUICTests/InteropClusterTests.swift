import Foundation
import Testing

@testable import PatinaQUIC

let aioquicAvailable: Bool = {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", "-c", "import aioquic"]
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    guard (try? p.run()) != nil else { return false }
    p.waitUntilExit()
    return p.terminationStatus == 0
}()

/// Python's aioquic (another QUIC stack, another TLS stack) as a client with a client
/// certificate against our listener. Skipped when python3 with aioquic is not installed.
@Suite("Interop with aioquic", .timeLimit(.minutes(1)), .enabled(if: aioquicAvailable))
struct InteropClusterTests {

    @Test func aioquicClientWithCertificateGetsAnEcho() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let logs = LogCapture()
        let server = try QUICEndpoint(bind: loopback, config: config(try pki.node("server")), logger: logs.logger("server"))
        let echo = Task {
            var held: [QUICConnection] = []
            for await connection in server.incomingConnections {
                held.append(connection)
                for await stream in connection.incomingStreams {
                    let bytes = try await stream.readAll()
                    try await stream.write(Array("echo:".utf8) + bytes, finish: true)
                }
            }
            return held.count
        }
        let client = try pki.node("python")
        let script = pki.directory + "/aioquic_client.py"
        try aioquicClientScript.write(toFile: script, atomically: true, encoding: .utf8)
        let output = try await withDeadline(.seconds(30)) { () -> String in
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["python3", script, "127.0.0.1", String(server.localAddress.port), client.certificatePath,
                           client.privateKeyPath, client.caPath, "hello from aioquic"]
            let pipe = Pipe()
            p.standardOutput = pipe
            p.standardError = pipe
            try p.run()
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return String(decoding: data, as: UTF8.self)
        }
        #expect(output.contains("echo:hello from aioquic"), "\(output)\n\(logs.all.joined(separator: "\n"))")
        echo.cancel()
        await server.close()
    }
}

/// Kept in the test (not a .py file) so that SwiftPM sees no unhandled resource.
let aioquicClientScript = #"""
"""aioquic as a Patina client: mutual TLS with ALPN patina/1, one bidirectional stream.

Usage: aioquic_client.py HOST PORT CERT KEY CA MESSAGE
Prints the echoed reply. Every Patina stream starts with a kind byte (0x00 = bidirectional).
"""
import asyncio
import ssl
import sys

from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration


async def main() -> None:
    host, port, cert, key, ca, message = sys.argv[1:7]
    config = QuicConfiguration(is_client=True, alpn_protocols=["patina/1"], verify_mode=ssl.CERT_REQUIRED)
    config.load_cert_chain(cert, key)
    config.load_verify_locations(ca)
    config.server_name = host
    async with connect(host, int(port), configuration=config) as client:
        reader, writer = await client.create_stream()
        writer.write(b"\x00" + message.encode())
        writer.write_eof()
        reply = await asyncio.wait_for(reader.read(), timeout=10)
        print(reply.decode())


asyncio.run(main())
"""#
