import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A small blocking HTTP/1.1 client for the CLI and end-to-end tests: TCP or a
/// Unix socket, one request per connection, bodies read as they arrive (so
/// NDJSON streams are handled line by line).
public struct HTTPClient: Sendable {
    public enum Target: Sendable, CustomStringConvertible {
        case tcp(host: String, port: Int)
        case unix(path: String)
        public var description: String {
            switch self {
            case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            case .unix(let path): path
            }
        }
    }

    public struct ClientError: Error, CustomStringConvertible, Sendable {
        public let message: String
        public var description: String { message }
    }

    public let target: Target
    public var bearerToken: String?
    public var timeout: Duration = .seconds(30)

    public init(target: Target, bearerToken: String? = nil) {
        self.target = target
        self.bearerToken = bearerToken
    }

    public struct Response: Sendable {
        public var status: Int
        public var headers: [String: String]
        public var body: Data
        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// Sends a request and collects the whole response.
    public func send(_ method: String, _ path: String, body: Data? = nil) throws -> Response {
        var collected = Data()
        var head: (Int, [String: String]) = (0, [:])
        try stream(method, path, body: body, onHead: { head = ($0, $1) }) { chunk in
            collected.append(chunk)
            return true
        }
        return Response(status: head.0, headers: head.1, body: collected)
    }

    /// Sends a request and hands each complete line of the response body to
    /// `onLine` until it returns false or the body ends.
    public func lines(_ method: String, _ path: String, body: Data? = nil,
                      onHead: (Int, [String: String]) -> Void = { _, _ in },
                      onLine: (String) -> Bool) throws {
        var pending: [UInt8] = []
        var stopped = false
        try stream(method, path, body: body, onHead: onHead) { chunk in
            pending.append(contentsOf: chunk)
            // Consumed lines are dropped once per chunk, not once per line: a chunk of
            // thousands of lines (a stream catching up) stays linear.
            var start = 0
            defer { pending.removeFirst(start) }
            while let newline = pending[start...].firstIndex(of: 0x0a) {
                let line = String(decoding: pending[start..<newline], as: UTF8.self)
                start = newline + 1
                if !onLine(line) {
                    stopped = true
                    return false
                }
            }
            return true
        }
        if !stopped && !pending.isEmpty { _ = onLine(String(decoding: pending, as: UTF8.self)) }
    }

    func stream(_ method: String, _ path: String, body: Data?, onHead: (Int, [String: String]) -> Void,
                onBody: (Data) -> Bool) throws {
        let fd = try connectSocket()
        defer { close(fd) }
        var request = "\(method) \(path) HTTP/1.1\r\nHost: \(hostHeader)\r\nConnection: close\r\nAccept: */*\r\n"
        if let bearerToken { request += "Authorization: Bearer \(bearerToken)\r\n" }
        if let body {
            request += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n"
        } else if method == "POST" {
            request += "Content-Length: 0\r\n"
        }
        request += "\r\n"
        var out = Data(request.utf8)
        if let body { out.append(body) }
        try writeAll(fd, out)

        var buffer = Data()
        var headerEnd: Range<Data.Index>?
        while headerEnd == nil {
            guard let chunk = try readSome(fd) else { throw ClientError(message: "\(target): connection closed before a response") }
            buffer.append(chunk)
            headerEnd = buffer.range(of: Data("\r\n\r\n".utf8))
        }
        let headText = String(decoding: buffer[buffer.startIndex..<headerEnd!.lowerBound], as: UTF8.self)
        var lines = headText.components(separatedBy: "\r\n")
        let statusParts = lines.removeFirst().split(separator: " ")
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw ClientError(message: "\(target): malformed response") }
        var headers: [String: String] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        onHead(status, headers)
        var rest = Data(buffer[headerEnd!.upperBound...])
        let chunked = headers["transfer-encoding"]?.lowercased().contains("chunked") == true
        let length = headers["content-length"].flatMap(Int.init)
        if chunked {
            var decoder = ChunkedDecoder()
            while true {
                let (data, finished) = try decoder.feed(rest)
                rest = Data()
                if !data.isEmpty && !onBody(data) { return }
                if finished { return }
                guard let chunk = try readSome(fd) else { return }
                rest = chunk
            }
        } else {
            var received = 0
            while true {
                if !rest.isEmpty {
                    received += rest.count
                    if !onBody(rest) { return }
                }
                if let length, received >= length { return }
                guard let chunk = try readSome(fd) else { return }
                rest = chunk
            }
        }
    }

    var hostHeader: String {
        switch target {
        case .tcp: target.description
        case .unix: "localhost"
        }
    }

    func connectSocket() throws -> Int32 {
        switch target {
        case .unix(let path):
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw ClientError(message: "socket: \(String(cString: strerror(errno)))") }
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw ClientError(message: "\(path): path too long") }
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if rc != 0 {
                let message = String(cString: strerror(errno))
                close(fd)
                throw ClientError(message: "cannot connect to the admin socket \(path): \(message) (is the agent running?)")
            }
            setTimeout(fd)
            return fd
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_family = AF_UNSPEC
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var result: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(host, String(port), &hints, &result) == 0, let first = result else {
                throw ClientError(message: "cannot resolve \(host)")
            }
            defer { freeaddrinfo(result) }
            var info: UnsafeMutablePointer<addrinfo>? = first
            var lastError = "no address"
            while let ai = info {
                let fd = socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue), 0)
                if fd >= 0 {
                    if connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 {
                        var one: Int32 = 1
                        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                        setTimeout(fd)
                        return fd
                    }
                    lastError = String(cString: strerror(errno))
                    close(fd)
                }
                info = ai.pointee.ai_next
            }
            throw ClientError(message: "cannot connect to \(target): \(lastError) (is the agent running?)")
        }
    }

    private func setTimeout(_ fd: Int32) {
        let (seconds, atto) = timeout.components
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int(atto / 1_000_000_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func writeAll(_ fd: Int32, _ data: Data) throws {
        try data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = Glibc.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw ClientError(message: "\(target): write failed: \(String(cString: strerror(errno)))")
                }
                offset += n
            }
        }
    }

    func readSome(_ fd: Int32) throws -> Data? {
        // Not zero-filled: a stream reads many times a second. Safe: the buffer lives only
        // inside this call, and only the `n` bytes recv wrote are copied out of it.
        try withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 64 << 10) { buffer in
            while true {
                let n = recv(fd, buffer.baseAddress, buffer.count, 0)
                if n > 0 { return Data(bytes: buffer.baseAddress!, count: n) }
                if n == 0 { return nil }
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw ClientError(message: "\(target): timed out waiting for data") }
                throw ClientError(message: "\(target): read failed: \(String(cString: strerror(errno)))")
            }
        }
    }
}

/// Decodes `Transfer-Encoding: chunked` incrementally.
struct ChunkedDecoder {
    private var buffer = Data()
    private var remaining = 0  // bytes left in the current chunk (+2 for its CRLF)
    private var done = false

    mutating func feed(_ data: Data) throws -> (Data, Bool) {
        buffer.append(data)
        var out = Data()
        // What is consumed goes once per feed, not once per chunk: a read holding many
        // small chunks stays linear.
        var i = buffer.startIndex
        defer { buffer.removeSubrange(buffer.startIndex..<i) }
        while !done {
            if remaining > 0 {
                let take = min(remaining, buffer.endIndex - i)
                if take == 0 { break }
                let payload = max(0, min(take, remaining - 2))
                out.append(buffer[i..<(i + payload)])
                i += take
                remaining -= take
                continue
            }
            guard let lineEnd = buffer.range(of: Self.crlf, in: i..<buffer.endIndex) else { break }
            let sizeText = String(decoding: buffer[i..<lineEnd.lowerBound], as: UTF8.self)
                .split(separator: ";").first.map(String.init) ?? ""
            guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16), size >= 0, size <= Int.max - 2 else {
                throw HTTPClient.ClientError(message: "malformed chunked body")
            }
            i = lineEnd.upperBound
            if size == 0 {
                done = true
                break
            }
            remaining = size + 2
        }
        return (out, done)
    }

    private static let crlf = Data("\r\n".utf8)
}

extension HTTPClient {
    /// A kept-alive connection for many sequential requests (benchmarks and
    /// tools that send many small requests); not for streams. Not thread-safe:
    /// one per thread.
    ///
    /// @unchecked Sendable: it may move between threads, but its socket is only
    /// ever used by the one thread that currently owns it (callers MUST NOT share it).
    public final class KeepAlive: @unchecked Sendable {
        let client: HTTPClient
        private var fd: Int32 = -1

        public init(_ client: HTTPClient) { self.client = client }
        deinit { if fd >= 0 { close(fd) } }

        public func send(_ method: String, _ path: String, body: Data?) throws -> Response {
            if fd < 0 { fd = try client.connectSocket() }
            do {
                return try exchange(method, path, body: body)
            } catch {
                // The server may have closed an idle connection: once more on a new one.
                close(fd)
                fd = try client.connectSocket()
                return try exchange(method, path, body: body)
            }
        }

        private func exchange(_ method: String, _ path: String, body: Data?) throws -> Response {
            var request = "\(method) \(path) HTTP/1.1\r\nHost: \(client.hostHeader)\r\nAccept: */*\r\n"
            if let token = client.bearerToken { request += "Authorization: Bearer \(token)\r\n" }
            request += "Content-Type: application/json\r\nContent-Length: \(body?.count ?? 0)\r\n\r\n"
            var out = Data(request.utf8)
            if let body { out.append(body) }
            try client.writeAll(fd, out)
            var buffer = Data()
            var headerEnd: Range<Data.Index>?
            while headerEnd == nil {
                guard let chunk = try client.readSome(fd) else { throw ClientError(message: "connection closed") }
                buffer.append(chunk)
                headerEnd = buffer.range(of: Data("\r\n\r\n".utf8))
            }
            let head = String(decoding: buffer[buffer.startIndex..<headerEnd!.lowerBound], as: UTF8.self)
            var lines = head.components(separatedBy: "\r\n")
            let parts = lines.removeFirst().split(separator: " ")
            guard parts.count >= 2, let status = Int(parts[1]) else { throw ClientError(message: "malformed response") }
            var headers: [String: String] = [:]
            for line in lines {
                guard let colon = line.firstIndex(of: ":") else { continue }
                headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            var rest = Data(buffer[headerEnd!.upperBound...])
            var body = Data()
            if headers["transfer-encoding"]?.lowercased().contains("chunked") == true {
                var decoder = ChunkedDecoder()
                while true {
                    let (data, finished) = try decoder.feed(rest)
                    body.append(data)
                    if finished { break }
                    guard let chunk = try client.readSome(fd) else { throw ClientError(message: "connection closed") }
                    rest = chunk
                }
            } else {
                let length = headers["content-length"].flatMap(Int.init) ?? 0
                body = rest
                while body.count < length {
                    guard let chunk = try client.readSome(fd) else { throw ClientError(message: "connection closed") }
                    body.append(chunk)
                }
            }
            if headers["connection"]?.lowercased() == "close" {
                close(fd)
                fd = -1
            }
            return Response(status: status, headers: headers, body: body)
        }
    }
}
