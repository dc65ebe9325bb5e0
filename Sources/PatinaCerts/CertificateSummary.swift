import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What `patina certs inspect` shows about one certificate.
public struct CertificateSummary: Sendable, Equatable {
    /// "CN=n1".
    public var subject: String
    public var commonName: String?
    /// "CN=Patina cluster CA".
    public var issuer: String
    /// IP address subjectAltNames, canonical text ("10.0.0.1", "::1").
    public var ipAddresses: [String]
    /// DNS name subjectAltNames.
    public var dnsNames: [String]
    public var notBefore: Date
    public var notAfter: Date
    /// Upper-case hex with colons.
    public var serialNumber: String
    /// "EC P-256", "RSA 2048", "Ed25519".
    public var keyType: String
    /// basicConstraints CA:TRUE.
    public var isCertificateAuthority: Bool
    /// keyUsage bits by name; nil when the extension is absent.
    public var keyUsage: [String]?
    /// "serverAuth", "clientAuth", ...; nil when the extension is absent.
    public var extendedKeyUsage: [String]?
    /// SHA-256 of the DER encoding, upper-case hex with colons.
    public var sha256Fingerprint: String

    /// Whether `date` lies within notBefore...notAfter.
    public func isValid(at date: Date = Date()) -> Bool {
        notBefore <= date && date <= notAfter
    }

    /// "valid", "expired on ...", or "not valid before ...", at `date`.
    public func validityStatus(at date: Date = Date()) -> String {
        if date < notBefore { return "not yet valid (valid from \(formatUTC(notBefore)))" }
        if date > notAfter { return "expired on \(formatUTC(notAfter))" }
        let days = Int(notAfter.timeIntervalSince(date) / 86_400)
        return "valid (expires in \(days) day\(days == 1 ? "" : "s"))"
    }

    init(_ certificate: X509Certificate) {
        let altNames = OpenSSL.subjectAltNames(certificate)
        subject = OpenSSL.subject(certificate)
        commonName = OpenSSL.commonName(certificate)
        issuer = OpenSSL.issuer(certificate)
        ipAddresses = altNames.ipAddresses
        dnsNames = altNames.dnsNames
        notBefore = OpenSSL.notBefore(certificate) ?? .distantPast
        notAfter = OpenSSL.notAfter(certificate) ?? .distantPast
        serialNumber = OpenSSL.serialNumber(certificate)
        keyType = OpenSSL.keyType(certificate)
        isCertificateAuthority = OpenSSL.isCertificateAuthority(certificate)
        keyUsage = OpenSSL.keyUsage(certificate)
        extendedKeyUsage = OpenSSL.extendedKeyUsage(certificate)
        sha256Fingerprint = OpenSSL.sha256Fingerprint(certificate)
    }
}

/// The summary of the first certificate in `certPEM`.
/// Throws `.malformedPEM` if it holds no certificate.
public func inspect(certPEM: String) throws(CertificateError) -> CertificateSummary {
    guard let first = try inspectAll(pem: certPEM).first else {
        throw CertificateError(.malformedPEM, noCertificateDetail(certPEM))
    }
    return first
}

/// The summaries of every certificate in `pem` (a CA bundle holds several),
/// in file order; empty if there is none.
public func inspectAll(pem: String) throws(CertificateError) -> [CertificateSummary] {
    try OpenSSL.certificates(fromPEM: pem).map(CertificateSummary.init)
}

/// Why `pem` yielded no certificate, in words an operator can act on.
func noCertificateDetail(_ pem: String) -> String {
    if pem.contains("PRIVATE KEY-----") {
        return "holds a private key, not a certificate (are the certificate and key files swapped?)"
    }
    if pem.contains("-----BEGIN CERTIFICATE-----") {
        return "the PEM certificate block is damaged and cannot be parsed"
    }
    if pem.isEmpty { return "file is empty; expected a PEM certificate (-----BEGIN CERTIFICATE-----)" }
    return "no PEM certificate found (expected -----BEGIN CERTIFICATE-----)"
}

/// "2025-01-01 12:00:00 UTC".
public func formatUTC(_ date: Date) -> String {
    var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
    var parts = tm()
    guard gmtime_r(&seconds, &parts) != nil else { return "\(date)" }
    func pad(_ value: Int32, _ width: Int) -> String {
        let text = String(value)
        return String(repeating: "0", count: max(0, width - text.count)) + text
    }
    return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2)) "
        + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)) UTC"
}
