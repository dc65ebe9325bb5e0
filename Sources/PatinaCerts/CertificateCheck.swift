import COpenSSL
import Foundation

/// The start-up check of a node's TLS identity: finds, before any connection
/// is attempted, every problem that would otherwise surface as an opaque
/// handshake failure on some peer.
public enum CertificateCheck {
    /// Checks that `certFile`, `keyFile` and `caFile` (the `[gossip.tls]`
    /// `cert_file`, `key_file`, `ca_file`) form a usable node identity at `now`:
    ///
    /// - each file is readable and holds PEM of the right kind;
    /// - the key is unencrypted and its file is not accessible to other users
    ///   (group read, as in 0640, is allowed for secret-mounting setups);
    /// - every certificate in `caFile` is a CA (basicConstraints CA:TRUE); the
    ///   file MAY hold several CAs (old and new during a CA rotation);
    /// - the key belongs to the certificate;
    /// - the certificate is within its validity period at `now`;
    /// - the certificate chains to a CA of `caFile` (X509_verify_cert at `now`);
    /// - its extended key usage, if present, allows both serverAuth and
    ///   clientAuth, and its keyUsage, if present, allows digitalSignature,
    ///   since every node is a TLS server and a TLS client;
    /// - it names at least one IP address or DNS name, so peers can verify it.
    ///
    /// Throws the first problem found, naming the file it is about.
    /// Returns the summary of the node certificate, e.g. for a start-up log line.
    @discardableResult
    public static func validateNodeIdentity(
        certFile: String, keyFile: String, caFile: String, now: Date = Date()
    ) throws(CertificateError) -> CertificateSummary {
        let ca = try PEMFile.read(caFile)
        let certificate = try PEMFile.read(certFile)
        let key = try PEMFile.read(keyFile)
        return try validate(
            certPEM: certificate.text, keyPEM: key.text, keyFileMode: key.mode, caPEM: ca.text, now: now,
            certLabel: certFile, keyLabel: keyFile, caLabel: caFile)
    }

    /// The same checks as the file-based variant except file permissions, on
    /// PEM text. The labels name the inputs in error messages.
    @discardableResult
    public static func validateNodeIdentity(
        certPEM: String, keyPEM: String, caPEM: String, now: Date = Date(),
        certLabel: String = "node certificate", keyLabel: String = "node private key",
        caLabel: String = "CA certificate"
    ) throws(CertificateError) -> CertificateSummary {
        try validate(
            certPEM: certPEM, keyPEM: keyPEM, keyFileMode: nil, caPEM: caPEM, now: now,
            certLabel: certLabel, keyLabel: keyLabel, caLabel: caLabel)
    }

    private static func validate(
        certPEM: String, keyPEM: String, keyFileMode: mode_t?, caPEM: String, now: Date,
        certLabel: String, keyLabel: String, caLabel: String
    ) throws(CertificateError) -> CertificateSummary {
        // MARK: Parse
        let authorities = try OpenSSL.certificates(fromPEM: caPEM)
        guard !authorities.isEmpty else {
            throw CertificateError(.malformedPEM, path: caLabel, noCertificateDetail(caPEM))
        }
        for authority in authorities where !OpenSSL.isCertificateAuthority(authority) {
            throw CertificateError(
                .notACertificateAuthority, path: caLabel,
                "certificate '\(OpenSSL.subject(authority))' is not a CA (it lacks basicConstraints CA:TRUE); "
                    + "ca_file must hold the cluster CA certificate (ca.pem), not a node certificate")
        }
        guard let leaf = try OpenSSL.certificates(fromPEM: certPEM).first else {
            throw CertificateError(.malformedPEM, path: certLabel, noCertificateDetail(certPEM))
        }
        if keyPEM.contains("ENCRYPTED PRIVATE KEY") || keyPEM.contains("Proc-Type: 4,ENCRYPTED") {
            throw CertificateError(
                .encryptedKey, path: keyLabel,
                "private key is encrypted with a passphrase; a node starts unattended and needs an unencrypted key protected by mode 0600")
        }
        guard let privateKey = try OpenSSL.privateKey(fromPEM: keyPEM) else {
            let detail = keyPEM.contains("-----BEGIN CERTIFICATE-----") && !keyPEM.contains("PRIVATE KEY-----")
                ? "holds a certificate, not a private key (are the certificate and key files swapped?)"
                : "no readable PEM private key found (expected -----BEGIN PRIVATE KEY-----)"
            throw CertificateError(.malformedPEM, path: keyLabel, detail)
        }
        // Checked only once the file is known to hold a key: for swapped
        // files, "chmod 600" would be the wrong advice.
        if let mode = keyFileMode, mode & 0o037 != 0 {
            throw CertificateError(
                .insecureKeyFile, path: keyLabel,
                "private key file has mode 0\(String(mode, radix: 8)) and can be read or changed by other users; run: chmod 600 \(keyLabel)")
        }

        // MARK: The pair
        let summary = CertificateSummary(leaf)
        guard OpenSSL.keyMatches(privateKey, leaf) else {
            throw CertificateError(
                .keyMismatch, path: keyLabel,
                "private key does not belong to the certificate in \(certLabel) ('\(summary.subject)'); "
                    + "use the .key file issued together with that certificate")
        }
        if now < summary.notBefore {
            throw CertificateError(
                .notYetValid, path: certLabel,
                "certificate is not valid before \(formatUTC(summary.notBefore)) (now: \(formatUTC(now))); check this host's clock")
        }
        if now > summary.notAfter {
            throw CertificateError(
                .expired, path: certLabel,
                "certificate expired on \(formatUTC(summary.notAfter)); issue a new one with `patina certs node`")
        }

        // MARK: The chain
        if authorities.count == 1 {
            // With a single CA its own validity gives the clearest message;
            // in a rotation bundle an expired old CA is fine as long as the
            // node's certificate chains to the other one.
            let authority = CertificateSummary(authorities[0])
            if now > authority.notAfter {
                throw CertificateError(.expired, path: caLabel, "CA certificate expired on \(formatUTC(authority.notAfter)); the cluster needs a new CA")
            }
            if now < authority.notBefore {
                throw CertificateError(
                    .notYetValid, path: caLabel,
                    "CA certificate is not valid before \(formatUTC(authority.notBefore)) (now: \(formatUTC(now))); check this host's clock")
            }
        }
        if let failure = try OpenSSL.verify(leaf, anchors: authorities, at: now) {
            throw chainError(failure, summary: summary, authorities: authorities, certLabel: certLabel, caLabel: caLabel)
        }

        // MARK: Usage
        if let usage = summary.extendedKeyUsage, !(usage.contains("serverAuth") && usage.contains("clientAuth")) {
            throw CertificateError(
                .unsuitableUsage, path: certLabel,
                "extended key usage is \(usage.isEmpty ? "empty" : usage.joined(separator: ", ")); a node certificate needs both "
                    + "serverAuth and clientAuth (every node is a TLS server and client); issue one with `patina certs node`")
        }
        if let usage = summary.keyUsage, !usage.contains("digitalSignature") {
            throw CertificateError(
                .unsuitableUsage, path: certLabel,
                "key usage (\(usage.joined(separator: ", "))) lacks digitalSignature, which TLS 1.3 needs")
        }
        if summary.ipAddresses.isEmpty && summary.dnsNames.isEmpty {
            throw CertificateError(
                .missingSubjectAltName, path: certLabel,
                "certificate names no IP address or DNS name (subjectAltName), so no peer can verify it; "
                    + "issue one with `patina certs node NAME --ip ADDRESS`")
        }
        return summary
    }

    private static func chainError(
        _ failure: (code: Int32, reason: String, depth: Int32),
        summary: CertificateSummary, authorities: [X509Certificate],
        certLabel: String, caLabel: String
    ) -> CertificateError {
        let held = authorities.map { authority in
            let ca = CertificateSummary(authority)
            return "'\(ca.subject)' (SHA-256 \(ca.sha256Fingerprint.prefix(23))…)"
        }.joined(separator: ", ")
        switch failure.code {
        case X509_V_ERR_CERT_HAS_EXPIRED where failure.depth > 0:
            return CertificateError(.expired, path: caLabel, "the CA that issued the certificate has expired (\(failure.reason))")
        case X509_V_ERR_CERT_NOT_YET_VALID where failure.depth > 0:
            return CertificateError(.notYetValid, path: caLabel, "the CA that issued the certificate is not valid yet (\(failure.reason))")
        default:
            return CertificateError(
                .untrustedIssuer, path: certLabel,
                "certificate is not signed by the CA in \(caLabel): \(failure.reason) "
                    + "(certificate issuer: '\(summary.issuer)'; \(caLabel) holds \(held)); "
                    + "use a certificate issued by this cluster's CA, or the CA file of the cluster that issued it")
        }
    }
}
