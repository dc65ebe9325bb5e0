import Glibc

// The WAN emulator's only contact with C: IPv4 UDP sockets, ppoll, a wake-up pipe, the
// monotonic clock and thread priority. Every pointer conversion of the emulator lives in this file.

/// An IPv4 address and port; the emulator's nodes all live on 127.0.0.1.
struct IPv4Endpoint: Hashable, Sendable, CustomStringConvertible {
    /// In network byte order, as in `in_addr.s_addr`.
    var address: UInt32
    var port: UInt16

    /// Parses `a.b.c.d:port`.
    init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
            return nil
        }
        var parsed = in_addr()
        guard inet_pton(AF_INET, String(text[..<colon]), &parsed) == 1 else { return nil }
        self.address = parsed.s_addr
        self.port = port
    }

    init(_ storage: sockaddr_in) {
        address = storage.sin_addr.s_addr
        port = UInt16(bigEndian: storage.sin_port)
    }

    var sockaddr: sockaddr_in {
        var storage = sockaddr_in()
        storage.sin_family = sa_family_t(AF_INET)
        storage.sin_port = port.bigEndian
        storage.sin_addr = in_addr(s_addr: address)
        return storage
    }

    var description: String {
        var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
        var addr = in_addr(s_addr: address)
        _ = inet_ntop(AF_INET, &addr, &text, socklen_t(text.count))
        let host = text.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return "\(host):\(port)"
    }
}

/// A non-blocking IPv4 UDP socket. Not closed on deinit: its owner closes it once, when no
/// thread can use it any more.
struct UDPSocket: Sendable {
    let fd: Int32

    /// Socket buffers of 4 MiB (the kernel caps them at net.core.rmem_max / wmem_max), so a
    /// burst from a QUIC sender is not dropped by the kernel before the relay reads it.
    static let bufferBytes: Int32 = 4 << 20

    static func bind(_ endpoint: IPv4Endpoint) throws -> UDPSocket {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw WANError(message: "socket(): \(String(cString: strerror(errno)))") }
        var size = bufferBytes
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        var storage = endpoint.sockaddr
        let rv = withUnsafePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) {
                Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard rv == 0 else {
            let reason = String(cString: strerror(errno))
            Glibc.close(fd)
            throw WANError(message: "bind \(endpoint): \(reason)")
        }
        return UDPSocket(fd: fd)
    }

    var localEndpoint: IPv4Endpoint {
        var storage = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return IPv4Endpoint(storage)
    }

    /// One datagram into `buffer`, or nil when none is waiting (or the kernel reports an
    /// error, which recvfrom clears: the next poll decides whether to read again).
    func receive(into buffer: UnsafeMutableRawBufferPointer) -> (count: Int, from: IPv4Endpoint)? {
        var storage = sockaddr_in()
        while true {
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let n = withUnsafeMutablePointer(to: &storage) { pointer in
                pointer.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) {
                    recvfrom(fd, buffer.baseAddress, buffer.count, 0, $0, &length)
                }
            }
            if n >= 0 { return (n, IPv4Endpoint(storage)) }
            if errno != EINTR { return nil }
        }
    }

    /// False when the kernel refused the datagram (its send buffer full, for one).
    func send(_ bytes: UnsafeRawBufferPointer, to endpoint: IPv4Endpoint) -> Bool {
        var storage = endpoint.sockaddr
        while true {
            let n = withUnsafePointer(to: &storage) { pointer in
                pointer.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) {
                    sendto(fd, bytes.baseAddress, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            if n >= 0 { return true }
            if errno != EINTR { return false }
        }
    }

    func send(_ bytes: [UInt8], to endpoint: IPv4Endpoint) -> Bool {
        bytes.withUnsafeBytes { send($0, to: endpoint) }
    }

    /// Waits at most `timeoutNanoseconds` for a datagram; true when one is waiting.
    func waitReadable(timeoutNanoseconds: UInt64) -> Bool {
        var set = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
        return waitForEvents(&set, timeoutNanoseconds: timeoutNanoseconds) > 0
    }

    func close() { Glibc.close(fd) }
}

/// The relay's one receive buffer, reused for every datagram it reads.
final class DatagramBuffer {
    private let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: 65_535, alignment: 16)

    deinit { storage.deallocate() }

    /// One datagram, copied out, or nil when none is waiting.
    func receive(from socket: UDPSocket) -> (bytes: [UInt8], from: IPv4Endpoint)? {
        guard let (count, from) = socket.receive(into: storage) else { return nil }
        return (Array(storage[..<count]), from)
    }
}

/// Descriptors waited on together for input (see `waitForEvents`).
struct PollSet {
    private var set: [pollfd]

    init(_ descriptors: [Int32]) {
        set = descriptors.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
    }

    /// Waits at most `timeoutNanoseconds` (nil: forever); true when any is readable.
    mutating func wait(timeoutNanoseconds: UInt64?) -> Bool {
        for index in set.indices { set[index].revents = 0 }
        return waitForEvents(&set, timeoutNanoseconds: timeoutNanoseconds) > 0
    }

    /// Whether descriptor `index` (in the order given) was readable after the last wait.
    func isReadable(_ index: Int) -> Bool { set[index].revents & Int16(POLLIN) != 0 }

    /// Whether descriptor `index` reported anything (input, hang-up, error).
    func isSignalled(_ index: Int) -> Bool { set[index].revents != 0 }
}

/// Lets another thread wake the loop out of `waitForEvents` (a pipe: eventfd, like epoll,
/// is not in Swift's Glibc module).
struct WakePipe: Sendable {
    let readFD: Int32
    let writeFD: Int32

    init() throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw WANError(message: "pipe(): \(String(cString: strerror(errno)))") }
        readFD = fds[0]
        writeFD = fds[1]
        for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
    }

    func signal() {
        var byte: UInt8 = 1
        _ = write(writeFD, &byte, 1)
    }

    func drain() {
        var scratch = [UInt8](repeating: 0, count: 64)
        while read(readFD, &scratch, scratch.count) > 0 {}
    }

    func close() {
        Glibc.close(readFD)
        Glibc.close(writeFD)
    }
}

/// ppoll(2): poll with a nanosecond timeout (nil = forever), so the loop can sleep exactly
/// until the next datagram is due; poll(2) only has milliseconds. Returns the number of
/// ready descriptors, 0 on timeout or signal.
///
/// ppoll is a GNU extension that Swift's Glibc module hides (it is not built with
/// _GNU_SOURCE; all of sys/epoll.h is missing too), so it is looked up once by name and
/// called through a C function pointer of its documented prototype.
func waitForEvents(_ set: inout [pollfd], timeoutNanoseconds: UInt64?) -> Int32 {
    var timeout = timespec()
    if let timeoutNanoseconds {
        timeout.tv_sec = Int(timeoutNanoseconds / 1_000_000_000)
        timeout.tv_nsec = Int(timeoutNanoseconds % 1_000_000_000)
    }
    let ready = set.withUnsafeMutableBufferPointer { fds in
        timeoutNanoseconds == nil
            ? PPoll.function(fds.baseAddress, nfds_t(fds.count), nil, nil)
            : PPoll.function(fds.baseAddress, nfds_t(fds.count), &timeout, nil)
    }
    return max(ready, 0)
}

private enum PPoll {
    typealias Function = @convention(c) (
        UnsafeMutablePointer<pollfd>?, nfds_t, UnsafePointer<timespec>?, UnsafeRawPointer?
    ) -> Int32

    /// dlsym(RTLD_DEFAULT, ...): RTLD_DEFAULT is the null handle in glibc. glibc has
    /// exported ppoll since 2.4, so a miss means a broken libc, not a condition to handle.
    static let function: Function = {
        guard let symbol = dlsym(nil, "ppoll") else { fatalError("libc has no ppoll") }
        return unsafeBitCast(symbol, to: Function.self)
    }()
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of every deadline and lateness figure.
func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// Gives the calling thread nice -10 when the process may (CAP_SYS_NICE); false otherwise,
/// and nothing changes. The relay shares the machine with the very agents it connects, and
/// each time it waits for a CPU, the wait lands in the latencies being measured. On Linux
/// the nice value belongs to the thread, not the process (setpriority(2), BUGS).
@discardableResult
func raiseThreadPriority() -> Bool {
    setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, -10) == 0
}
