import COpenSSL
import Foundation

/// A certificate and its private key, both PEM text.
///
/// `privateKeyPEM` is secret: never log or print it. `description` omits it.
public struct PEMPair: Sendable, Equatable, CustomStringConvertible {
    public var certificatePEM: String
    public var privateKeyPEM: String

    public init(certificatePEM: String, privateKeyPEM: String) {
        self.certificatePEM = certificatePEM
        self.privateKeyPEM = privateKeyPEM
    }

    public var description: String {
        "PEMPair(certificate: \(certificatePEM.utf8.count) bytes, private key: <redacted>)"
    }
}

/// The cluster certificate authority: one per cluster, its key kept offline
/// (or on one admin host). Every node certificate is signed by it, and every
/// node trusts exactly the certificates it signed.
public enum CertificateAuthority {
    public static let defaultCommonName = "Patina cluster CA"
    public static let defaultDays = 3650

    /// A new self-signed CA: ECDSA P-256, basicConstraints critical CA:TRUE (pathlen 0),
    /// keyUsage critical keyCertSign + cRLSign, subject key identifier and a
    /// random serial.
    ///
    /// Valid from `notBefore` (default: five minutes ago, to absorb clock skew
    /// between the admin host and the nodes) for `days` days, or until
    /// `notAfter` if given.
    public static func create(
        commonName: String = defaultCommonName,
        days: Int = defaultDays,
        notBefore: Date? = nil,
        notAfter: Date? = nil
    ) throws(CertificateError) -> PEMPair {
        try checkCommonName(commonName)
        let (start, end) = try validity(days: days, notBefore: notBefore, notAfter: notAfter)
        let key = try OpenSSL.generateP256Key()
        let certificate = try OpenSSL.makeCertificate(
            commonName: commonName, publicKey: key, notBefore: start, notAfter: end,
            issuer: nil, signingKey: key,
            extensions: [
                // pathlen:0: whatever it signs cannot act as a CA in turn,
                // even if a certificate with CA:TRUE were ever issued by mistake.
                .init(nid: NID_basic_constraints, value: "critical,CA:TRUE,pathlen:0"),
                .init(nid: NID_key_usage, value: "critical,keyCertSign,cRLSign"),
                .init(nid: NID_subject_key_identifier, value: "hash"),
            ])
        return PEMPair(certificatePEM: try OpenSSL.pem(of: certificate), privateKeyPEM: try OpenSSL.pem(of: key))
    }

    static func checkCommonName(_ name: String) throws(CertificateError) {
        // RFC 5280 upper bound for commonName.
        guard !name.isEmpty, name.utf8.count <= 64 else {
            throw CertificateError(.invalidArgument, "common name must be 1 to 64 bytes long, got \(name.utf8.count)")
        }
    }

    static func validity(days: Int, notBefore: Date?, notAfter: Date?) throws(CertificateError) -> (Date, Date) {
        let start = notBefore ?? Date().addingTimeInterval(-300)
        let end: Date
        if let notAfter {
            end = notAfter
        } else {
            guard days > 0, days <= 100 * 366 else {
                throw CertificateError(.invalidArgument, "days must be between 1 and 36600, got \(days)")
            }
            end = start.addingTimeInterval(TimeInterval(days) * 86_400)
        }
        guard end > start else {
            throw CertificateError(.invalidArgument, "notAfter (\(formatUTC(end))) must be later than notBefore (\(formatUTC(start)))")
        }
        return (start, end)
    }
}

/// Issues a node certificate signed by the cluster CA.
///
/// The certificate is both a TLS server and a TLS client certificate (extended
/// key usage serverAuth + clientAuth), because every node both accepts and
/// dials mutual-TLS connections. Its subjectAltName lists `ipAddresses` and
/// `dnsNames`: a peer that dials this node checks the address or name it dialled
/// against them, so list every address and name peers use. At least one is
/// required. CN is `name`; keyUsage critical digitalSignature; basicConstraints
/// critical CA:FALSE; authority and subject key identifiers; ECDSA P-256.
///
/// Validity starts at `notBefore` (default: five minutes ago) and lasts `days`
/// days, or ends at `notAfter` if given. Tests pass both to make expired or
/// not-yet-valid certificates.
///
/// Throws `.malformedPEM` or `.keyMismatch` if the CA pair is unusable,
/// `.notACertificateAuthority` if the CA certificate is not a CA, and
/// `.invalidArgument` for a bad name, address or period.
public func issueNodeCertificate(
    name: String,
    ipAddresses: [String] = [],
    dnsNames: [String] = [],
    days: Int = 365,
    notBefore: Date? = nil,
    notAfter: Date? = nil,
    caCertPEM: String,
    caKeyPEM: String
) throws(CertificateError) -> PEMPair {
    try CertificateAuthority.issue(
        name: name, ipAddresses: ipAddresses, dnsNames: dnsNames, days: days, notBefore: notBefore, notAfter: notAfter,
        caCertPEM: caCertPEM, caKeyPEM: caKeyPEM, caCertLabel: nil, caKeyLabel: nil)
}

extension CertificateAuthority {
    /// `issueNodeCertificate`, with errors about the CA naming the CA's files.
    static func issue(
        name: String, ipAddresses: [String], dnsNames: [String], days: Int, notBefore: Date?, notAfter: Date?,
        caCertPEM: String, caKeyPEM: String, caCertLabel: String?, caKeyLabel: String?
    ) throws(CertificateError) -> PEMPair {
        try CertificateAuthority.checkCommonName(name)
        guard !ipAddresses.isEmpty || !dnsNames.isEmpty else {
            throw CertificateError(.missingSubjectAltName, "a node certificate needs at least one IP address or DNS name (the addresses and names peers dial)")
        }
        var altNames: [String] = []
        for ip in ipAddresses {
            guard let bytes = IPAddress.parse(ip) else {
                throw CertificateError(.invalidArgument, "'\(ip)' is not an IPv4 or IPv6 address")
            }
            altNames.append("IP:" + IPAddress.format(bytes))
        }
        for dns in dnsNames {
            guard isValidDNSName(dns) else {
                throw CertificateError(.invalidArgument, "'\(dns)' is not a DNS name (letters, digits, '-' and '.', optionally a leading '*.')")
            }
            altNames.append("DNS:" + dns)
        }
        let (start, end) = try CertificateAuthority.validity(days: days, notBefore: notBefore, notAfter: notAfter)

        guard let caCertificate = try OpenSSL.certificates(fromPEM: caCertPEM).first else {
            throw CertificateError(.malformedPEM, path: caCertLabel, "the CA certificate: " + noCertificateDetail(caCertPEM))
        }
        guard let caKey = try OpenSSL.privateKey(fromPEM: caKeyPEM) else {
            throw CertificateError(.malformedPEM, path: caKeyLabel, "the CA private key is not an unencrypted PEM private key")
        }
        guard OpenSSL.isCertificateAuthority(caCertificate) else {
            throw CertificateError(
                .notACertificateAuthority, path: caCertLabel,
                "certificate '\(OpenSSL.subject(caCertificate))' is not a CA (basicConstraints CA:TRUE missing)")
        }
        guard OpenSSL.keyMatches(caKey, caCertificate) else {
            throw CertificateError(
                .keyMismatch, path: caKeyLabel,
                "the CA private key does not belong to the CA certificate\(caCertLabel.map { " in " + $0 } ?? "")")
        }

        let key = try OpenSSL.generateP256Key()
        let certificate = try OpenSSL.makeCertificate(
            commonName: name, publicKey: key, notBefore: start, notAfter: end,
            issuer: caCertificate, signingKey: caKey,
            extensions: [
                .init(nid: NID_basic_constraints, value: "critical,CA:FALSE"),
                .init(nid: NID_key_usage, value: "critical,digitalSignature"),
                .init(nid: NID_ext_key_usage, value: "serverAuth,clientAuth"),
                .init(nid: NID_subject_key_identifier, value: "hash"),
                .init(nid: NID_authority_key_identifier, value: "keyid:always"),
                // Validated above, so no comma or colon can smuggle in another entry.
                .init(nid: NID_subject_alt_name, value: altNames.joined(separator: ",")),
            ])
        return PEMPair(certificatePEM: try OpenSSL.pem(of: certificate), privateKeyPEM: try OpenSSL.pem(of: key))
    }
}

/// Letters, digits and hyphens in dot-separated labels of 1...63 bytes, at most
/// 253 bytes, optionally starting with a "*." wildcard label.
func isValidDNSName(_ name: String) -> Bool {
    var rest = Substring(name)
    if rest.hasPrefix("*.") { rest = rest.dropFirst(2) }
    guard !rest.isEmpty, name.utf8.count <= 253 else { return false }
    let labels = rest.split(separator: ".", omittingEmptySubsequences: false)
    return labels.allSatisfy { label in
        !label.isEmpty && label.utf8.count <= 63 && !label.hasPrefix("-") && !label.hasSuffix("-")
            && label.unicodeScalars.allSatisfy { ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) || $0 == "-" }
    }
}
