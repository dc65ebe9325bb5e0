import CPatinaShims
import CQuic

/// The endpoint's GnuTLS certificate credentials: own certificate and key, and the
/// cluster CA as the only trust anchor. Read once at start-up.
///
/// `@unchecked Sendable`: the credentials are immutable after `init`, and GnuTLS
/// allows one credentials structure to be shared by sessions on any thread.
final class TLSContext: @unchecked Sendable {
    let credentials: gnutls_certificate_credentials_t
    let alpn: String

    init(_ config: QUICTLSConfig, alpn: String) throws(QUICError) {
        var cred: gnutls_certificate_credentials_t?
        guard gnutls_certificate_allocate_credentials(&cred) == 0, let cred else {
            throw QUICError(.configuration, "cannot allocate TLS credentials")
        }
        let anchors = gnutls_certificate_set_x509_trust_file(cred, config.caPath, GNUTLS_X509_FMT_PEM)
        if anchors <= 0 {
            gnutls_certificate_free_credentials(cred)
            let why = anchors < 0 ? String(cString: gnutls_strerror(anchors)) : "no certificate in file"
            throw QUICError(.configuration, "CA file \(config.caPath): \(why)")
        }
        // An empty certificate path presents no certificate: peers refuse it; tests use it.
        let rv = config.certificatePath.isEmpty ? 0 : gnutls_certificate_set_x509_key_file(
            cred, config.certificatePath, config.privateKeyPath, GNUTLS_X509_FMT_PEM)
        if rv < 0 {
            gnutls_certificate_free_credentials(cred)
            throw QUICError(
                .configuration,
                "certificate \(config.certificatePath) / key \(config.privateKeyPath): \(String(cString: gnutls_strerror(rv)))")
        }
        self.credentials = cred
        self.alpn = alpn
    }

    deinit { gnutls_certificate_free_credentials(credentials) }

    /// A session for one connection. `connRef` MUST stay valid for the session's life:
    /// ngtcp2_crypto's GnuTLS callbacks find the connection through it.
    func makeSession(
        isServer: Bool, serverName: String?, connRef: UnsafeMutablePointer<ngtcp2_crypto_conn_ref>
    ) throws(QUICError) -> gnutls_session_t {
        var session: gnutls_session_t?
        let flags = isServer ? GNUTLS_SERVER.rawValue | GNUTLS_NO_AUTO_SEND_TICKET.rawValue : GNUTLS_CLIENT.rawValue
        guard gnutls_init(&session, flags | GNUTLS_NO_END_OF_EARLY_DATA.rawValue) == 0, let session else {
            throw QUICError(.configuration, "gnutls_init failed")
        }
        let rv = patina_gnutls_session_setup(session, isServer ? 1 : 0, credentials, alpn, serverName)
        if rv != 0 {
            gnutls_deinit(session)
            throw QUICError(.configuration, "TLS session setup: \(String(cString: gnutls_strerror(rv)))")
        }
        gnutls_session_set_ptr(session, connRef)
        gnutls_session_set_verify_function(session, verifyPeerCallback)
        return session
    }
}

/// Called by GnuTLS when the peer's certificate arrives; a non-zero return aborts the handshake.
private let verifyPeerCallback: @convention(c) (gnutls_session_t?) -> Int32 = { session in
    guard let session, let user = patina_gnutls_session_conn_user_data(session) else { return -1 }
    return ConnectionCore.from(user).verifyPeerCertificate(session)
}

/// Why a peer certificate was refused, in words an operator can act on.
func describeVerification(status: UInt32, isServer: Bool, expectedName: String?) -> String {
    let who = isServer ? "client" : "server"
    var parts: [String] = []
    if status & GNUTLS_CERT_SIGNER_NOT_FOUND.rawValue != 0 {
        parts.append("\(who) certificate is not issued by the cluster CA")
    }
    if status & GNUTLS_CERT_EXPIRED.rawValue != 0 { parts.append("\(who) certificate has expired") }
    if status & GNUTLS_CERT_NOT_ACTIVATED.rawValue != 0 { parts.append("\(who) certificate is not yet valid") }
    if status & GNUTLS_CERT_UNEXPECTED_OWNER.rawValue != 0 {
        parts.append("\(who) certificate does not match the dialled name \(expectedName ?? "?")")
    }
    if status & GNUTLS_CERT_REVOKED.rawValue != 0 { parts.append("\(who) certificate is revoked") }
    if status & GNUTLS_CERT_SIGNATURE_FAILURE.rawValue != 0 { parts.append("\(who) certificate signature is invalid") }
    if status & GNUTLS_CERT_INSECURE_ALGORITHM.rawValue != 0 {
        parts.append("\(who) certificate uses an insecure algorithm")
    }
    if status & GNUTLS_CERT_PURPOSE_MISMATCH.rawValue != 0 {
        parts.append("\(who) certificate is not valid for TLS \(who) use")
    }
    if parts.isEmpty {
        var out = gnutls_datum_t()
        if gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0) == 0, let data = out.data {
            let text = String(cString: UnsafeRawPointer(data).assumingMemoryBound(to: CChar.self))
            patina_gnutls_free(data)
            return "\(who) certificate refused: \(text)"
        }
        return "\(who) certificate refused (status 0x\(String(status, radix: 16)))"
    }
    return parts.joined(separator: "; ")
}

/// Text for a TLS alert that ends a QUIC handshake (CRYPTO_ERROR 0x100 + alert, RFC 9001 §4.8).
func describeAlert(_ alert: UInt8) -> String {
    let name = gnutls_alert_get_name(gnutls_alert_description_t(UInt32(alert)))
    let text = name.map { String(cString: $0) } ?? "alert \(alert)"
    switch alert {
    case 116: return "\(text) (no client certificate was presented)"
    case 48: return "\(text) (certificate not issued by the cluster CA)"
    case 45: return "\(text) (certificate expired)"
    case 42: return "\(text) (certificate refused)"
    case 120: return "\(text) (ALPN mismatch)"
    default: return text
    }
}
