import CQuic

/// Incremental SHA-256 over GnuTLS (already linked for TLS), used to check bulk transfers
/// end to end in tests and `patina bench link`.
public struct SHA256Digest: ~Copyable {
    private var handle: gnutls_hash_hd_t?

    public init() {
        _ = gnutls_hash_init(&handle, GNUTLS_DIG_SHA256)
    }

    deinit {
        if let handle { gnutls_hash_deinit(handle, nil) }
    }

    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { _ = gnutls_hash(handle, $0.baseAddress, $0.count) }
    }

    public consuming func finalize() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        out.withUnsafeMutableBytes { gnutls_hash_output(handle, $0.baseAddress) }
        return out
    }

    public static func hex(_ digest: [UInt8]) -> String {
        digest.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }
}
