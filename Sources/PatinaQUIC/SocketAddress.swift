import CPatinaShims
import CQuic
import Glibc

/// A host and port as text, e.g. `127.0.0.1:4433` or `[::1]:4433`.
public struct QUICSocketAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port` or `[v6]:port`.
    public init?(_ text: String) {
        if text.hasPrefix("["), let close = text.lastIndex(of: "]") {
            let host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":"), let port = UInt16(rest.dropFirst()) else { return nil }
            self.init(host: String(host), port: port)
        } else {
            guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
                return nil
            }
            self.init(host: String(text[..<colon]), port: port)
        }
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// True when `host` is a numeric IPv4 or IPv6 address rather than a name.
    var isNumericHost: Bool {
        var buf = in6_addr()
        return inet_pton(AF_INET, host, &buf) == 1 || inet_pton(AF_INET6, host, &buf) == 1
    }
}

/// A resolved socket address in the form the kernel and ngtcp2 take.
struct SockAddr {
    var storage = sockaddr_storage()
    var length: socklen_t = 0

    init() {}

    init(resolving address: QUICSocketAddress) throws(QUICError) {
        let rv = patina_resolve(address.host, address.port, &storage, &length)
        if rv != 0 { throw QUICError(.configuration, "cannot resolve \(address)") }
    }

    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) rethrows -> R {
        try withUnsafePointer(to: storage) { p in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, length) }
        }
    }

    var address: QUICSocketAddress {
        var host = [CChar](repeating: 0, count: 64)
        var port: UInt16 = 0
        let ok = withSockAddr { sa, _ in patina_format_address(sa, &host, host.count, &port) } == 0
        let text = host.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return ok ? QUICSocketAddress(host: text, port: port) : QUICSocketAddress(host: "?", port: 0)
    }

    /// Byte-wise identity, used to match a packet's sender to a connection's path.
    func sameAs(_ other: UnsafePointer<sockaddr>, _ otherLength: socklen_t) -> Bool {
        guard otherLength == length else { return false }
        return withUnsafeBytes(of: storage) { mine in memcmp(mine.baseAddress!, other, Int(length)) == 0 }
    }
}

/// A connection ID as a hashable value (at most 20 bytes, RFC 9000 §17.2).
struct CIDKey: Hashable {
    var a: UInt64 = 0
    var b: UInt64 = 0
    var c: UInt32 = 0
    var length: UInt8 = 0

    init(_ bytes: UnsafePointer<UInt8>, _ count: Int) {
        let n = min(count, 20)
        var words: (UInt64, UInt64, UInt32) = (0, 0, 0)
        withUnsafeMutableBytes(of: &words) { raw in raw.baseAddress!.copyMemory(from: bytes, byteCount: n) }
        a = words.0
        b = words.1
        c = words.2
        length = UInt8(n)
    }

    init(_ cid: ngtcp2_cid) {
        var cid = cid
        self = withUnsafeBytes(of: &cid.data) { raw in
            CIDKey(raw.baseAddress!.assumingMemoryBound(to: UInt8.self), cid.datalen)
        }
    }
}

func randomBytes(_ pointer: UnsafeMutableRawPointer, _ count: Int) {
    // GnuTLS's CSPRNG: connection IDs and tokens must be unpredictable (RFC 9000 §5.1).
    _ = gnutls_rnd(GNUTLS_RND_RANDOM, pointer, count)
}

func makeRandomCID(length: Int) -> ngtcp2_cid {
    var bytes = [UInt8](repeating: 0, count: length)
    bytes.withUnsafeMutableBytes { randomBytes($0.baseAddress!, length) }
    var cid = ngtcp2_cid()
    ngtcp2_cid_init(&cid, bytes, length)
    return cid
}
