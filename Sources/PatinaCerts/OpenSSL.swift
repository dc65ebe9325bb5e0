import COpenSSL
import Foundation

#if canImport(Glibc)
import Glibc
#endif

// Every call into libcrypto lives in this file. OpenSSL objects are owned by
// the two small classes below (freed in deinit) or by a `defer` right after
// their creation, and never escape PatinaCerts.

/// Owns one `X509*`.
final class X509Certificate {
    let pointer: OpaquePointer
    init(taking pointer: OpaquePointer) { self.pointer = pointer }
    deinit { X509_free(pointer) }
}

/// Owns one `EVP_PKEY*`.
final class PrivateKey {
    let pointer: OpaquePointer
    init(taking pointer: OpaquePointer) { self.pointer = pointer }
    deinit { EVP_PKEY_free(pointer) }
}

enum OpenSSL {
    // MARK: Errors

    /// Drains libcrypto's thread-local error queue, so a later failure does not
    /// report an old reason.
    static func drainErrors() -> String {
        var messages: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            messages.append(string(fromCBuffer: buffer))
        }
        return messages.isEmpty ? "no reason given" : messages.joined(separator: "; ")
    }

    /// The NUL-terminated text in a fixed-size buffer libcrypto or libc filled.
    static func string(fromCBuffer buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func failure(_ operation: String) -> CertificateError {
        CertificateError(.openSSL, "\(operation) failed: \(drainErrors())")
    }

    // MARK: Keys

    /// A fresh ECDSA key on NIST P-256 (prime256v1), the curve every TLS 1.3
    /// stack (GnuTLS included) supports.
    static func generateP256Key() throws(CertificateError) -> PrivateKey {
        guard let context = EVP_PKEY_CTX_new_from_name(nil, "EC", nil) else {
            throw failure("EVP_PKEY_CTX_new_from_name(EC)")
        }
        defer { EVP_PKEY_CTX_free(context) }
        guard EVP_PKEY_keygen_init(context) == 1,
              EVP_PKEY_CTX_set_group_name(context, "P-256") == 1
        else { throw failure("EC key generation set-up") }
        var key: OpaquePointer? = nil
        guard EVP_PKEY_generate(context, &key) == 1, let key else {
            throw failure("EVP_PKEY_generate")
        }
        return PrivateKey(taking: key)
    }

    /// PKCS#8, unencrypted: a node must start unattended, so the key is
    /// protected by its file mode rather than a passphrase.
    static func pem(of key: PrivateKey) throws(CertificateError) -> String {
        // A secure-memory BIO is cleared before it is freed, so the key's
        // encoding does not linger in libcrypto's heap.
        guard let bio = BIO_new(BIO_s_secmem()) else { throw failure("BIO_new") }
        defer { BIO_free(bio) }
        guard PEM_write_bio_PrivateKey(bio, key.pointer, nil, nil, 0, nil, nil) == 1 else {
            throw failure("PEM_write_bio_PrivateKey")
        }
        return readAll(bio)
    }

    static func pem(of certificate: X509Certificate) throws(CertificateError) -> String {
        guard let bio = BIO_new(BIO_s_mem()) else { throw failure("BIO_new") }
        defer { BIO_free(bio) }
        guard PEM_write_bio_X509(bio, certificate.pointer) == 1 else {
            throw failure("PEM_write_bio_X509")
        }
        return readAll(bio)
    }

    private static func readAll(_ bio: OpaquePointer) -> String {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = BIO_read(bio, &chunk, Int32(chunk.count))
            if n <= 0 { break }
            bytes.append(contentsOf: chunk[0..<Int(n)])
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Runs `body` with a read-only memory BIO over `text`.
    private static func withBIO<T>(_ text: String, _ body: (OpaquePointer) throws(CertificateError) -> T) throws(CertificateError) -> T {
        let bytes = Array(text.utf8)
        let result: Result<T, CertificateError> = bytes.withUnsafeBytes { raw in
            // BIO_new_mem_buf does not copy: the BIO must not outlive `raw`.
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else {
                return .failure(failure("BIO_new_mem_buf"))
            }
            defer { BIO_free(bio) }
            do throws(CertificateError) { return .success(try body(bio)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// Every certificate in `pem`, in order. Non-certificate PEM blocks and
    /// text between blocks are skipped; garbage yields an empty array.
    static func certificates(fromPEM pem: String) throws(CertificateError) -> [X509Certificate] {
        try withBIO(pem) { bio throws(CertificateError) in
            var found: [X509Certificate] = []
            while let x509 = PEM_read_bio_X509(bio, nil, nil, nil) {
                found.append(X509Certificate(taking: x509))
            }
            // The loop always ends on a "no start line" error; it says nothing.
            _ = drainErrors()
            return found
        }
    }

    /// The first private key in `pem`, or nil if there is none (or it is
    /// encrypted: the password callback refuses, so libcrypto never prompts
    /// on the terminal).
    static func privateKey(fromPEM pem: String) throws(CertificateError) -> PrivateKey? {
        try withBIO(pem) { bio throws(CertificateError) in
            let key = PEM_read_bio_PrivateKey(bio, nil, { _, _, _, _ in 0 }, nil)
            _ = drainErrors()
            return key.map { PrivateKey(taking: $0) }
        }
    }

    // MARK: Building certificates

    /// One X.509v3 extension in OpenSSL's configuration syntax, e.g.
    /// `(NID_basic_constraints, "critical,CA:TRUE")`.
    struct Extension {
        var nid: Int32
        var value: String
    }

    /// Builds and signs a certificate for `publicKey`. With no `issuer` the
    /// certificate is self-signed (the subject is also the issuer).
    static func makeCertificate(
        commonName: String,
        publicKey: PrivateKey,
        notBefore: Date,
        notAfter: Date,
        issuer: X509Certificate?,
        signingKey: PrivateKey,
        extensions: [Extension]
    ) throws(CertificateError) -> X509Certificate {
        guard let raw = X509_new() else { throw failure("X509_new") }
        let certificate = X509Certificate(taking: raw)
        let x509 = certificate.pointer

        guard X509_set_version(x509, 2) == 1 else { throw failure("X509_set_version") }  // 2 means v3
        try setRandomSerial(x509)
        guard ASN1_TIME_set(X509_getm_notBefore(x509), timeT(notBefore)) != nil,
              ASN1_TIME_set(X509_getm_notAfter(x509), timeT(notAfter)) != nil
        else { throw failure("ASN1_TIME_set") }

        guard let name = X509_NAME_new() else { throw failure("X509_NAME_new") }
        defer { X509_NAME_free(name) }
        let cn = Array(commonName.utf8)
        guard X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, cn, Int32(cn.count), -1, 0) == 1,
              X509_set_subject_name(x509, name) == 1,
              X509_set_issuer_name(x509, issuer.map { X509_get_subject_name($0.pointer) } ?? name) == 1
        else { throw failure("setting the subject and issuer names") }
        guard X509_set_pubkey(x509, publicKey.pointer) == 1 else { throw failure("X509_set_pubkey") }

        // The context lets "hash" (subjectKeyIdentifier) read the subject's key
        // and "keyid:always" (authorityKeyIdentifier) read the issuer's SKID.
        var context = X509V3_CTX()
        X509V3_set_ctx(&context, issuer?.pointer ?? x509, x509, nil, nil, 0)
        for ext in extensions {
            guard let made = X509V3_EXT_conf_nid(nil, &context, ext.nid, ext.value) else {
                throw failure("extension \(String(cString: OBJ_nid2sn(ext.nid))) = \(ext.value)")
            }
            defer { X509_EXTENSION_free(made) }
            guard X509_add_ext(x509, made, -1) == 1 else { throw failure("X509_add_ext") }
        }

        guard X509_sign(x509, signingKey.pointer, EVP_sha256()) > 0 else { throw failure("X509_sign") }
        return certificate
    }

    /// 159 random bits: positive, at most 20 octets (RFC 5280 §4.1.2.2) and
    /// unpredictable, as the CA/Browser Forum asks of serials.
    private static func setRandomSerial(_ x509: OpaquePointer) throws(CertificateError) {
        guard let bn = BN_new() else { throw failure("BN_new") }
        defer { BN_free(bn) }
        guard BN_rand(bn, 159, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) == 1,
              BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x509)) != nil
        else { throw failure("setting a random serial number") }
    }

    private static func timeT(_ date: Date) -> time_t {
        time_t(date.timeIntervalSince1970.rounded(.down))
    }

    // MARK: Reading certificates

    static func subject(_ certificate: X509Certificate) -> String {
        distinguishedName(X509_get_subject_name(certificate.pointer))
    }

    static func issuer(_ certificate: X509Certificate) -> String {
        distinguishedName(X509_get_issuer_name(certificate.pointer))
    }

    static func commonName(_ certificate: X509Certificate) -> String? {
        entries(X509_get_subject_name(certificate.pointer)).first { $0.key == "CN" }?.value
    }

    /// "CN=n1, O=Acme", most significant RDN last as in the certificate.
    private static func distinguishedName(_ name: OpaquePointer?) -> String {
        entries(name).map { "\($0.key)=\($0.value)" }.joined(separator: ", ")
    }

    private static func entries(_ name: OpaquePointer?) -> [(key: String, value: String)] {
        guard let name else { return [] }
        var result: [(key: String, value: String)] = []
        for index in 0..<X509_NAME_entry_count(name) {
            guard let entry = X509_NAME_get_entry(name, index) else { continue }
            let nid = OBJ_obj2nid(X509_NAME_ENTRY_get_object(entry))
            let key = OBJ_nid2sn(nid).map { String(cString: $0) } ?? "OID\(nid)"
            result.append((key, utf8(X509_NAME_ENTRY_get_data(entry))))
        }
        return result
    }

    private static func utf8(_ string: UnsafePointer<ASN1_STRING>?) -> String {
        guard let string else { return "" }
        var out: UnsafeMutablePointer<UInt8>? = nil
        let length = ASN1_STRING_to_UTF8(&out, string)
        guard length >= 0, let out else { _ = drainErrors(); return "" }
        defer { CRYPTO_free(out, #fileID, #line) }
        return String(decoding: UnsafeBufferPointer(start: out, count: Int(length)), as: UTF8.self)
    }

    /// The IP addresses and DNS names of the subjectAltName extension.
    static func subjectAltNames(_ certificate: X509Certificate) -> (ipAddresses: [String], dnsNames: [String]) {
        var ips: [String] = []
        var dns: [String] = []
        guard let raw = X509_get_ext_d2i(certificate.pointer, NID_subject_alt_name, nil, nil) else {
            return (ips, dns)
        }
        let names = OpaquePointer(raw)
        defer { GENERAL_NAMES_free(names) }
        for index in 0..<OPENSSL_sk_num(names) {
            guard let element = OPENSSL_sk_value(names, index) else { continue }
            let name = element.assumingMemoryBound(to: GENERAL_NAME.self).pointee
            switch name.type {
            case GEN_DNS:
                dns.append(bytes(name.d.dNSName).map { String(decoding: $0, as: UTF8.self) } ?? "")
            case GEN_IPADD:
                if let address = bytes(name.d.iPAddress) { ips.append(IPAddress.format(address)) }
            default:
                continue
            }
        }
        return (ips, dns)
    }

    private static func bytes(_ string: UnsafeMutablePointer<ASN1_STRING>?) -> [UInt8]? {
        guard let string, let data = ASN1_STRING_get0_data(string) else { return nil }
        return Array(UnsafeBufferPointer(start: data, count: Int(ASN1_STRING_length(string))))
    }

    static func notBefore(_ certificate: X509Certificate) -> Date? {
        date(X509_get0_notBefore(certificate.pointer))
    }

    static func notAfter(_ certificate: X509Certificate) -> Date? {
        date(X509_get0_notAfter(certificate.pointer))
    }

    private static func date(_ time: UnsafePointer<ASN1_TIME>?) -> Date? {
        guard let time else { return nil }
        var parts = tm()
        guard ASN1_TIME_to_tm(time, &parts) == 1 else { _ = drainErrors(); return nil }
        return Date(timeIntervalSince1970: TimeInterval(timegm(&parts)))
    }

    /// Upper-case hex with colons, as `openssl x509 -text` prints it.
    static func serialNumber(_ certificate: X509Certificate) -> String {
        guard let bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(certificate.pointer), nil) else {
            _ = drainErrors()
            return "?"
        }
        defer { BN_free(bn) }
        var bytes = [UInt8](repeating: 0, count: Int((BN_num_bits(bn) + 7) / 8))
        _ = BN_bn2bin(bn, &bytes)
        return hexWithColons(bytes.isEmpty ? [0] : bytes)
    }

    static func sha256Fingerprint(_ certificate: X509Certificate) -> String {
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        guard X509_digest(certificate.pointer, EVP_sha256(), &digest, &length) == 1 else {
            _ = drainErrors()
            return "?"
        }
        return hexWithColons(Array(digest.prefix(Int(length))))
    }

    static func hexWithColons(_ bytes: [UInt8]) -> String {
        bytes.map { byte in
            let hex = String(byte, radix: 16, uppercase: true)
            return hex.count == 1 ? "0" + hex : hex
        }.joined(separator: ":")
    }

    /// "EC P-256", "RSA 2048", "Ed25519".
    static func keyType(_ certificate: X509Certificate) -> String {
        guard let key = X509_get0_pubkey(certificate.pointer) else { _ = drainErrors(); return "unknown" }
        switch EVP_PKEY_get_base_id(key) {
        case EVP_PKEY_EC:
            var name = [CChar](repeating: 0, count: 80)
            var length = 0
            guard EVP_PKEY_get_group_name(key, &name, name.count, &length) == 1 else {
                _ = drainErrors()
                return "EC"
            }
            let group = string(fromCBuffer: name)
            let nid = OBJ_txt2nid(group)
            if nid != NID_undef, let nist = EC_curve_nid2nist(nid) { return "EC \(String(cString: nist))" }
            return "EC \(group)"
        case EVP_PKEY_RSA: return "RSA \(EVP_PKEY_get_bits(key))"
        case EVP_PKEY_ED25519: return "Ed25519"
        case EVP_PKEY_ED448: return "Ed448"
        case let id: return OBJ_nid2sn(id).map { String(cString: $0) } ?? "unknown (\(id))"
        }
    }

    /// basicConstraints CA:TRUE. A v1 self-signed root also counts for
    /// OpenSSL's X509_check_ca; Patina does not accept it as a cluster CA.
    static func isCertificateAuthority(_ certificate: X509Certificate) -> Bool {
        X509_get_extension_flags(certificate.pointer) & UInt32(EXFLAG_CA) != 0
    }

    /// nil when the certificate has no keyUsage extension (any usage allowed).
    static func keyUsage(_ certificate: X509Certificate) -> [String]? {
        let flags = X509_get_key_usage(certificate.pointer)
        guard flags != UInt32.max else { return nil }
        let names: [(UInt32, String)] = [
            (UInt32(KU_DIGITAL_SIGNATURE), "digitalSignature"), (UInt32(KU_NON_REPUDIATION), "nonRepudiation"),
            (UInt32(KU_KEY_ENCIPHERMENT), "keyEncipherment"), (UInt32(KU_DATA_ENCIPHERMENT), "dataEncipherment"),
            (UInt32(KU_KEY_AGREEMENT), "keyAgreement"), (UInt32(KU_KEY_CERT_SIGN), "keyCertSign"),
            (UInt32(KU_CRL_SIGN), "cRLSign"),
        ]
        return names.filter { flags & $0.0 != 0 }.map(\.1)
    }

    /// nil when the certificate has no extendedKeyUsage extension (any purpose allowed).
    static func extendedKeyUsage(_ certificate: X509Certificate) -> [String]? {
        let flags = X509_get_extended_key_usage(certificate.pointer)
        guard flags != UInt32.max else { return nil }
        let names: [(UInt32, String)] = [
            (UInt32(XKU_SSL_SERVER), "serverAuth"), (UInt32(XKU_SSL_CLIENT), "clientAuth"),
            (UInt32(XKU_SMIME), "emailProtection"), (UInt32(XKU_CODE_SIGN), "codeSigning"),
            (UInt32(XKU_OCSP_SIGN), "OCSPSigning"), (UInt32(XKU_TIMESTAMP), "timeStamping"),
        ]
        return names.filter { flags & $0.0 != 0 }.map(\.1)
    }

    // MARK: Checking

    /// Whether `key` is the private half of the certificate's public key.
    static func keyMatches(_ key: PrivateKey, _ certificate: X509Certificate) -> Bool {
        let matches = X509_check_private_key(certificate.pointer, key.pointer) == 1
        _ = drainErrors()
        return matches
    }

    /// Verifies that `leaf` chains to one of `anchors` at time `now`.
    /// Returns nil on success, or OpenSSL's reason and the depth of the
    /// certificate it concerns (0 = leaf, 1 = CA).
    static func verify(_ leaf: X509Certificate, anchors: [X509Certificate], at now: Date)
        throws(CertificateError) -> (code: Int32, reason: String, depth: Int32)?
    {
        guard let store = X509_STORE_new() else { throw failure("X509_STORE_new") }
        defer { X509_STORE_free(store) }
        for anchor in anchors {
            // The store takes its own reference; `anchor` still owns ours.
            guard X509_STORE_add_cert(store, anchor.pointer) == 1 else {
                // A duplicate in a CA bundle is harmless.
                _ = drainErrors()
                continue
            }
        }
        guard let context = X509_STORE_CTX_new() else { throw failure("X509_STORE_CTX_new") }
        defer { X509_STORE_CTX_free(context) }
        guard X509_STORE_CTX_init(context, store, leaf.pointer, nil) == 1 else {
            throw failure("X509_STORE_CTX_init")
        }
        X509_STORE_CTX_set_time(context, 0, timeT(now))
        let verified = X509_verify_cert(context) == 1
        _ = drainErrors()
        if verified { return nil }
        let code = X509_STORE_CTX_get_error(context)
        let reason = X509_verify_cert_error_string(Int(code)).map { String(cString: $0) } ?? "error \(code)"
        return (code, reason, X509_STORE_CTX_get_error_depth(context))
    }
}

/// IP addresses as text and as the raw bytes an iPAddress SAN holds.
enum IPAddress {
    /// The 4 or 16 network-order bytes of `text`, or nil if it is not an address.
    static func parse(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }

    /// The canonical text of a 4- or 16-byte address ("::1", not "0:0:...:1").
    static func format(_ bytes: [UInt8]) -> String {
        let family: Int32
        switch bytes.count {
        case 4: family = AF_INET
        case 16: family = AF_INET6
        default: return bytes.map { String($0) }.joined(separator: ".")
        }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let ok = bytes.withUnsafeBytes { raw in
            inet_ntop(family, raw.baseAddress, &text, socklen_t(text.count)) != nil
        }
        return ok ? OpenSSL.string(fromCBuffer: text) : "?"
    }
}
