/// Why certificate tooling or the start-up identity check failed.
///
/// `description` is the message an operator reads: it names the file (when
/// there is one) and the problem, e.g.
/// `certs/dev/n1.pem: certificate expired on 2025-01-01 12:00:00 UTC`.
/// It never contains private key material.
///
/// A struct over a private code enum (as in swift-nio), so codes can be added
/// without breaking anyone who switches over them.
public struct CertificateError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case unreadableFile, malformedPEM, encryptedKey, insecureKeyFile
            case keyMismatch, expired, notYetValid, untrustedIssuer
            case notACertificateAuthority, unsuitableUsage, missingSubjectAltName
            case invalidArgument, fileExists, writeFailed, openSSL
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The file does not exist or cannot be read.
        public static let unreadableFile = Code(.unreadableFile)
        /// The file holds no parseable PEM certificate or key of the expected kind.
        public static let malformedPEM = Code(.malformedPEM)
        /// The private key is protected by a passphrase; a node cannot prompt at start-up.
        public static let encryptedKey = Code(.encryptedKey)
        /// The private key file can be read by users other than its owner (and group).
        public static let insecureKeyFile = Code(.insecureKeyFile)
        /// The private key does not belong to the certificate.
        public static let keyMismatch = Code(.keyMismatch)
        /// The certificate's notAfter is in the past.
        public static let expired = Code(.expired)
        /// The certificate's notBefore is in the future.
        public static let notYetValid = Code(.notYetValid)
        /// The certificate does not chain to the CA file.
        public static let untrustedIssuer = Code(.untrustedIssuer)
        /// The CA file holds a certificate that is not a CA (basicConstraints CA:TRUE).
        public static let notACertificateAuthority = Code(.notACertificateAuthority)
        /// Key usage or extended key usage forbid using the certificate for mutual TLS.
        public static let unsuitableUsage = Code(.unsuitableUsage)
        /// The certificate names no IP address or DNS name, so no peer can verify it.
        public static let missingSubjectAltName = Code(.missingSubjectAltName)
        /// A caller passed a value that cannot go into a certificate (bad IP, name, days).
        public static let invalidArgument = Code(.invalidArgument)
        /// A file to be written already exists and overwriting was not requested.
        public static let fileExists = Code(.fileExists)
        /// Creating or writing a file failed.
        public static let writeFailed = Code(.writeFailed)
        /// libcrypto failed in a way the inputs do not explain.
        public static let openSSL = Code(.openSSL)

        public var description: String { base.rawValue }
    }

    public let code: Code
    /// The file the problem is about, if any.
    public let path: String?
    /// What is wrong, without the path.
    public let detail: String

    public init(_ code: Code, path: String? = nil, _ detail: String) {
        self.code = code
        self.path = path
        self.detail = detail
    }

    public var description: String {
        if let path { return "\(path): \(detail)" }
        return detail
    }
}
