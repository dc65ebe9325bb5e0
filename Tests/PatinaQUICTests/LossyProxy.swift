import Foundation
import Synchronization

@testable import PatinaQUIC

/// A UDP proxy on loopback between one client and one server that drops every
/// `dropEvery`-th short-header packet from the client (the handshake's long-header
/// packets always pass, so the connection comes up), and every one of them
/// during a blackout. Runs on its own thread until `stop()`; every wait is a
/// bounded poll.
final class LossyProxy: Sendable {
    let address: QUICSocketAddress
    private let socket: Int32
    private let stopped = Atomic<Bool>(false)
    private let dropped = Atomic<Int>(0)
    private let blackout = Atomic<Bool>(false)

    var droppedCount: Int { dropped.load(ordering: .relaxed) }

    init(to server: QUICSocketAddress, dropEvery: Int) throws {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw ProxyError("socket: \(errno)") }
        var local = Self.loopbackAddress(port: 0)
        let bound = withUnsafePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw ProxyError("bind: \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        socket = fd
        address = QUICSocketAddress(host: "127.0.0.1", port: UInt16(bigEndian: local.sin_port))
        let serverAddress = Self.loopbackAddress(port: server.port)
        Thread.detachNewThread { [self] in relay(server: serverAddress, dropEvery: dropEvery) }
    }

    /// While on, every short-header packet from the client is dropped.
    func setBlackout(_ on: Bool) {
        blackout.store(on, ordering: .relaxed)
    }

    func stop() {
        stopped.store(true, ordering: .relaxed)
    }

    deinit { close(socket) }

    private func relay(server: sockaddr_in, dropEvery: Int) {
        var client: sockaddr_in?
        var buffer = [UInt8](repeating: 0, count: 65_536)
        var fromClient = 0
        var server = server
        while !stopped.load(ordering: .relaxed) {
            var pfd = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 50) > 0 else { continue }
            var from = sockaddr_in()
            var fromLength = socklen_t(MemoryLayout<sockaddr_in>.size)
            let n = buffer.withUnsafeMutableBytes { b in
                withUnsafeMutablePointer(to: &from) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(socket, b.baseAddress, b.count, 0, $0, &fromLength) }
                }
            }
            guard n > 0 else { continue }
            var to: sockaddr_in
            if from.sin_port == server.sin_port {
                guard let c = client else { continue }
                to = c
            } else {
                client = from
                to = server
                fromClient += 1
                let shortHeader = buffer[0] & 0x80 == 0
                if shortHeader && (fromClient % dropEvery == 0 || blackout.load(ordering: .relaxed)) {
                    dropped.add(1, ordering: .relaxed)
                    continue
                }
            }
            _ = buffer.withUnsafeBytes { b in
                withUnsafePointer(to: &to) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(socket, b.baseAddress, n, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
            }
        }
        _ = server
    }

    private static func loopbackAddress(port: UInt16) -> sockaddr_in {
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        return a
    }

    struct ProxyError: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }
}
