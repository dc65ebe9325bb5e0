import Foundation
@testable import PatinaBench
import PatinaNode
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// How many probe writes a node has in flight at once: one per client, and no
/// more. The node is a plain HTTP/1.1 server on loopback that answers each
/// request after `answerAfterMilliseconds` and counts the requests it holds at once.
@Suite struct ProbeClientsTests {
    @Test(.timeLimit(.minutes(1)), arguments: [1, 4])
    func aNodeSeesOneWriteInFlightPerClient(clients: Int) throws {
        let api = try SlowAPI(answerAfterMilliseconds: 60)
        defer { api.stop() }
        let node = ProbeNode(name: "n1", region: "r1", client: HTTPClient(target: .tcp(host: "127.0.0.1", port: api.port)))
        let probe = ProbeRun(nodes: [node], writers: [0], idBase: 1)
        // 16 writes due 1 ms apart: every client is busy long before the last is due.
        let measured = try probe.run(count: 16, rate: 1000, clientsPerWriter: clients, settle: .zero, rttMilliseconds: [0])
        #expect(measured.failedWrites == 0)
        #expect(api.requests == 16)
        #expect(api.mostInFlight == clients)
    }
}

/// A loopback HTTP/1.1 server answering every request `200 {}` after a delay,
/// one thread per connection (keep-alive), counting requests held at once.
final class SlowAPI: Sendable {
    let port: Int
    private let listener: Int32
    private let answerAfterMilliseconds: Int
    private let counts = Mutex<(inFlight: Int, most: Int, total: Int)>((0, 0, 0))

    var requests: Int { counts.withLock { $0.total } }
    var mostInFlight: Int { counts.withLock { $0.most } }

    init(answerAfterMilliseconds: Int) throws {
        self.answerAfterMilliseconds = answerAfterMilliseconds
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                bind(fd, raw, length) == 0 && listen(fd, 16) == 0 && getsockname(fd, raw, &length) == 0
            }
        }
        guard fd >= 0, bound else {
            close(fd)
            throw ProbeError("SlowAPI: cannot listen on loopback (errno \(errno))")
        }
        listener = fd
        port = Int(UInt16(bigEndian: address.sin_port))
        Thread { [self] in acceptLoop() }.start()
    }

    func stop() { shutdown(listener, Int32(SHUT_RDWR)) }

    private func acceptLoop() {
        while true {
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { close(listener); return }
            Thread { [self] in serve(connection) }.start()
        }
    }

    private func serve(_ connection: Int32) {
        defer { close(connection) }
        var pending = Data()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            // One request: the head, then Content-Length bytes of body.
            while true {
                if let head = pending.range(of: Data("\r\n\r\n".utf8)) {
                    let text = String(decoding: pending[..<head.lowerBound], as: UTF8.self).lowercased()
                    let bodyLength = text.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                        .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
                    if pending.count - head.upperBound >= bodyLength {
                        pending.removeSubrange(..<(head.upperBound + bodyLength))
                        break
                    }
                }
                let n = read(connection, &buffer, buffer.count)
                guard n > 0 else { return }
                pending.append(contentsOf: buffer[..<n])
            }
            counts.withLock { c in
                c.inFlight += 1
                c.total += 1
                c.most = max(c.most, c.inFlight)
            }
            usleep(UInt32(answerAfterMilliseconds * 1000))
            counts.withLock { $0.inFlight -= 1 }
            let response = Array("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".utf8)
            guard write(connection, response, response.count) == response.count else { return }
        }
    }
}
