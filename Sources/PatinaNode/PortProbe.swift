import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Checks addresses before the servers bind them, so a port in use is a clear
/// one-line error rather than a stack of NIO errors; finds free ports for
/// clusters started on this machine (benchmarks, tests).
public enum PortProbe {
    /// Why `host:port` cannot be bound for TCP, or nil if it can.
    static func problem(host: String, port: Int) -> String? {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &result) == 0, let info = result else {
            return "cannot resolve host \(host)"
        }
        defer { freeaddrinfo(result) }
        let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) != 0 {
            return errno == EADDRINUSE ? "address already in use" : String(cString: strerror(errno))
        }
        return nil
    }

    /// True when something accepts connections on the Unix socket at `path`.
    static func unixSocketInUse(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
    }

    /// A port on 127.0.0.1 the kernel considers free now (bind to port 0, read
    /// it back, close). Another process may take it before it is used; on a
    /// test or benchmark machine that race is rare enough.
    public static func freeLoopbackPort(tcp: Bool) throws -> Int {
        let fd = socket(AF_INET, Int32(tcp ? SOCK_STREAM.rawValue : SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw PortProbeError(message: "socket(): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard bound else { throw PortProbeError(message: "no free \(tcp ? "TCP" : "UDP") port on 127.0.0.1") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// A free port this process has not handed out before. The kernel may give
    /// back a port it just gave out, so a cluster that asks for several (API,
    /// metrics…), or tests starting clusters side by side, would otherwise now
    /// and then get the same one twice and fail to bind.
    public static func unusedLoopbackPort(tcp: Bool) throws -> Int {
        try handedOut.withLock { taken in
            for _ in 0..<100 {
                let port = try freeLoopbackPort(tcp: tcp)
                if taken.insert(PortKey(port: port, tcp: tcp)).inserted { return port }
            }
            throw PortProbeError(message: "no free \(tcp ? "TCP" : "UDP") port on 127.0.0.1 that this process has not used")
        }
    }

    private struct PortKey: Hashable {
        var port: Int
        var tcp: Bool
    }

    private static let handedOut = Mutex<Set<PortKey>>([])
}

public struct PortProbeError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
}
