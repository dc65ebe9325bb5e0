import CHTTP3
import COpenSSL
import CPatinaShims
import CQuic
import CSQLite
import Testing

/// Each system library links and reports the version Debian bookworm ships.
@Suite struct SystemLibraryTests {
    @Test func sqliteLinksAndReportsVersion() {
        let version = String(cString: sqlite3_libversion())
        #expect(version.hasPrefix("3."))
        #expect(sqlite3_libversion_number() >= 3_040_000)
    }

    @Test func ngtcp2LinksAndReportsVersion() {
        let version = String(cString: patina_ngtcp2_version_string())
        #expect(version.hasPrefix("0.12") || version.hasPrefix("1."), "ngtcp2 \(version)")
    }

    @Test func gnutlsLinksAndReportsVersion() {
        guard let raw = gnutls_check_version(nil) else {
            Issue.record("gnutls_check_version returned NULL")
            return
        }
        #expect(String(cString: raw).hasPrefix("3."))
    }

    @Test func nghttp3LinksAndReportsVersion() {
        let info = nghttp3_version(0)
        #expect(info != nil)
        if let info { #expect(String(cString: info.pointee.version_str).hasPrefix("0.")) }
    }

    @Test func openSSLCryptoLinksAndReportsVersion() {
        let version = String(cString: OpenSSL_version(Int32(OPENSSL_VERSION)))
        #expect(version.contains("OpenSSL 3."), "\(version)")
    }
}
