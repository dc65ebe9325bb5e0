import Foundation
import PatinaCerts
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A fresh directory under the system temp dir, removed by `remove()`.
struct TemporaryDirectory {
    let path: String

    init() throws {
        let base = NSTemporaryDirectory().hasSuffix("/") ? NSTemporaryDirectory() : NSTemporaryDirectory() + "/"
        var template = Array((base + "patina-certs-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw CertificateError(.writeFailed, "mkdtemp failed") }
        path = String(cString: made)
    }

    func file(_ name: String) -> String { path + "/" + name }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// Runs the `openssl` command-line tool; returns exit status and combined output.
func openssl(_ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

func mode(of path: String) -> mode_t {
    var info = stat()
    #expect(stat(path, &info) == 0, "stat \(path)")
    return info.st_mode & 0o7777
}

/// Runs `body`, which must throw a `CertificateError`; returns it.
func expectCertificateError(
    _ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation
) -> CertificateError? {
    do {
        try body()
        Issue.record("expected a CertificateError, nothing was thrown", sourceLocation: sourceLocation)
        return nil
    } catch let error as CertificateError {
        return error
    } catch {
        Issue.record("expected a CertificateError, got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

/// One CA and one node certificate, written to a temp dir.
struct Fixture {
    let directory: TemporaryDirectory
    let ca: PEMPair
    let node: PEMPair
    var caFile: String { directory.file("ca.pem") }
    var caKeyFile: String { directory.file("ca.key") }
    var certFile: String { directory.file("n1.pem") }
    var keyFile: String { directory.file("n1.key") }

    init() throws {
        directory = try TemporaryDirectory()
        ca = try CertificateAuthority.create()
        node = try issueNodeCertificate(
            name: "n1", ipAddresses: ["127.0.0.1", "::1", "10.1.2.3"], dnsNames: ["n1.patina.internal", "localhost"],
            caCertPEM: ca.certificatePEM, caKeyPEM: ca.privateKeyPEM)
        try ca.write(certificateFile: caFile, privateKeyFile: caKeyFile)
        try node.write(certificateFile: certFile, privateKeyFile: keyFile)
    }

    /// Writes a node pair under `name` and returns (cert, key) paths.
    func write(_ pair: PEMPair, as name: String) throws -> (cert: String, key: String) {
        let paths = (directory.file(name + ".pem"), directory.file(name + ".key"))
        try pair.write(certificateFile: paths.0, privateKeyFile: paths.1)
        return paths
    }
}

@Suite struct CertificateTests {
    @Test func nodeCertificateChainsToTheCAAndCarriesItsNames() throws {
        let fixture = try Fixture()
        defer { fixture.directory.remove() }

        let summary = try CertificateCheck.validateNodeIdentity(
            certFile: fixture.certFile, keyFile: fixture.keyFile, caFile: fixture.caFile)
        #expect(summary.subject == "CN=n1")
        #expect(summary.commonName == "n1")
        #expect(summary.issuer == "CN=Patina cluster CA")
        #expect(summary.ipAddresses == ["127.0.0.1", "::1", "10.1.2.3"])
        #expect(summary.dnsNames == ["n1.patina.internal", "localhost"])
        #expect(summary.keyType == "EC P-256")
        #expect(summary.extendedKeyUsage == ["serverAuth", "clientAuth"])
        #expect(summary.keyUsage == ["digitalSignature"])
        #expect(!summary.isCertificateAuthority)
        #expect(summary.isValid())
        #expect(abs(summary.notAfter.timeIntervalSince(summary.notBefore) - 365 * 86_400) < 2)

        let ca = try inspect(certPEM: fixture.ca.certificatePEM)
        #expect(ca.subject == "CN=Patina cluster CA")
        #expect(ca.isCertificateAuthority)
        #expect(ca.keyType == "EC P-256")
        #expect(ca.keyUsage == ["keyCertSign", "cRLSign"])
        #expect(abs(ca.notAfter.timeIntervalSince(ca.notBefore) - 3650 * 86_400) < 2)
        #expect(ca.serialNumber != summary.serialNumber)
        #expect(ca.serialNumber.split(separator: ":").count >= 16, "random serial \(ca.serialNumber)")
    }

    @Test func opensslCommandLineAgrees() throws {
        let fixture = try Fixture()
        defer { fixture.directory.remove() }

        let verify = try openssl(["verify", "-CAfile", fixture.caFile, "-purpose", "sslserver", fixture.certFile])
        #expect(verify.status == 0, "\(verify.output)")
        #expect(verify.output.contains("\(fixture.certFile): OK"))
        let verifyClient = try openssl(["verify", "-CAfile", fixture.caFile, "-purpose", "sslclient", fixture.certFile])
        #expect(verifyClient.status == 0, "\(verifyClient.output)")

        let text = try openssl(["x509", "-noout", "-text", "-in", fixture.certFile])
        #expect(text.status == 0)
        #expect(text.output.contains("IP Address:127.0.0.1"))
        #expect(text.output.contains("IP Address:0:0:0:0:0:0:0:1"))
        #expect(text.output.contains("DNS:n1.patina.internal"))
        #expect(text.output.contains("TLS Web Server Authentication, TLS Web Client Authentication"))
        #expect(text.output.contains("CA:FALSE"))
        #expect(text.output.contains("Digital Signature"))
        #expect(text.output.contains("X509v3 Authority Key Identifier"))
        #expect(text.output.contains("Subject: CN = n1"))
        #expect(text.output.contains("NIST CURVE: P-256"))

        let caText = try openssl(["x509", "-noout", "-text", "-in", fixture.caFile])
        #expect(caText.output.contains("CA:TRUE, pathlen:0"))
        #expect(caText.output.contains("Certificate Sign, CRL Sign"))
        #expect(caText.output.contains("X509v3 Subject Key Identifier"))

        // The key on disk is the node certificate's key.
        let keyCheck = try openssl(["pkey", "-in", fixture.keyFile, "-pubout"])
        let certKey = try openssl(["x509", "-in", fixture.certFile, "-noout", "-pubkey"])
        #expect(keyCheck.status == 0)
        #expect(keyCheck.output == certKey.output)

        // A certificate from another CA fails openssl's check too.
        let other = try CertificateAuthority.create()
        let otherPaths = try fixture.write(
            issueNodeCertificate(name: "x", ipAddresses: ["127.0.0.1"], caCertPEM: other.certificatePEM, caKeyPEM: other.privateKeyPEM),
            as: "x")
        #expect(try openssl(["verify", "-CAfile", fixture.caFile, otherPaths.cert]).status != 0)
    }

    @Test func filesHaveTheRightModes() throws {
        let fixture = try Fixture()
        defer { fixture.directory.remove() }
        #expect(mode(of: fixture.keyFile) == 0o600)
        #expect(mode(of: fixture.caKeyFile) == 0o600)
        #expect(mode(of: fixture.certFile) == 0o644)
        #expect(mode(of: fixture.caFile) == 0o644)

        // Replacing keeps the modes, even under a permissive umask.
        let old = umask(0)
        defer { umask(old) }
        try fixture.node.write(certificateFile: fixture.certFile, privateKeyFile: fixture.keyFile, overwrite: true)
        #expect(mode(of: fixture.keyFile) == 0o600)
        #expect(mode(of: fixture.certFile) == 0o644)
        // No temporary file is left behind.
        let entries = try FileManager.default.contentsOfDirectory(atPath: fixture.directory.path)
        #expect(Set(entries) == ["ca.pem", "ca.key", "n1.pem", "n1.key"])
    }

    @Test func writingRefusesToOverwriteWithoutBeingAsked() throws {
        let fixture = try Fixture()
        defer { fixture.directory.remove() }
        let before = try String(contentsOfFile: fixture.caKeyFile, encoding: .utf8)
        let other = try CertificateAuthority.create()
        let error = expectCertificateError {
            try other.write(certificateFile: fixture.caFile, privateKeyFile: fixture.caKeyFile)
        }
        #expect(error?.code == .fileExists)
        #expect(error?.description.contains(fixture.caFile) == true)
        #expect(try String(contentsOfFile: fixture.caKeyFile, encoding: .utf8) == before)

        try other.write(certificateFile: fixture.caFile, privateKeyFile: fixture.caKeyFile, overwrite: true)
        #expect(try String(contentsOfFile: fixture.caKeyFile, encoding: .utf8) == other.privateKeyPEM)
    }

    @Test func refusesAKeyThatBelongsToAnotherCertificate() throws {
        let fixture = try Fixture()
        defer { fixture.directory.remove() }
        let second = try issueNodeCertificate(
            name: "n2", ipAddresses: ["127.0.0.2"], caCertPEM: fixture.ca.certificatePEM, caKeyPEM: fixture.ca.privateKeyPEM)
        let n2 = try fixture.write(second, as: "n2")
        let error = expectCertificateError {
            try CertificateCheck.validateNodeIdentity(certFile: fixture.certFile, keyFile: n2.key, caFile: fixture.caFile)
        }
        #expect(error?.code == .keyMismatch)
        #expect(error?.path == n2.key)
        #expect(error?.description.contains("does not belong to the certificate") == true)
    }

    @Test func refusesAnExpiredCertificate() throws {
        let fixture = try Fixture()
        defer { fixture.directory.remove() }
        let notAfter = Date(timeIntervalSince1970: 1_735_732_800)  // 2025-01-01 12:00:00 UTC
        let expired = try issueNodeCertificate(
            name: "old", ipAddresses: ["127.0.0.1"], notBefore: notAfter.addingTimeInterval(-86_400 * 30), notAfter: notAfter,
            caCertPEM: fixture.ca.certificatePEM, caKeyPEM: fixture.ca.privateKeyPEM)
        let paths = try fixture.write(expired, as: "old")
        let error = expectCertificateError {
            try CertificateCheck.validateNodeIdentity(certFile: paths.cert, keyFile: paths.key, caFile: fixture.caFile)
        }
        #expect(error?.code == .expired)
        #expect(error?.description == "\(paths.cert): certificate expired on 2025-01-01 12:00:00 UTC; issue a new one with `patina certs node`")
        #expect(try !inspect(certPEM: expired.certificatePEM).isValid())
    }

    @Test func refusesACertificateThatIsNotValidYet() throws {
        let fixture = try Fixture()
        defer { fixture.directory.remove() }
        let future = try issueNodeCertificate(
            name: "future", ipAddresses: ["127.0.0.1"], days: 30, notBefore: Date().addingTimeInterval(86_400 * 2),
            caCertPEM: fixture.ca.certificatePEM, caKeyPEM: fixture.ca.privateKeyPEM)
        let paths = try fixture.write(future, as: "future")
        let error = expectCertificateError {
            try CertificateCheck.validateNodeIdentity(certFile: paths.cert, keyFile: paths.key, caFile: fixture.caFile)
        }
        #expect(error?.code == .notYetValid)
        #expect(error?.path == paths.cert)
        #expect(error?.description.contains("not valid before") == true)

        // The same files pass when the check runs at a time inside the period.
        try CertificateCheck.validateNodeIdentity(
            certFile: paths.cert, keyFile: paths.key, caFile: fixture.caFile, now: Date().addingTimeInterval(86_400 * 3))
    }

    @Test func refusesACertificateFromAnotherCA() throws {
        let fixture = try Fixture()
        defer { fixture.directory.remove() }
        let otherCA = try CertificateAuthority.create()  // same subject name, different key
        let foreign = try issueNodeCertificate(
            name: "n1", ipAddresses: ["127.0.0.1"], caCertPEM: otherCA.certificatePEM, caKeyPEM: otherCA.privateKeyPEM)
        let paths = try fixture.write(foreign, as: "foreign")
        let error = expectCertificateError {
            try CertificateCheck.validateNodeIdentity(certFile: paths.cert, keyFile: paths.key, caFile: fixture.caFile)
        }
        #expect(error?.code == .untrustedIssuer)
        #expect(error?.path == paths.cert)
        #expect(error?.description.contains("not signed by the CA in \(fixture.caFile)") == true)
    }

    @Test func acceptsACABundleDuringRotation() throws {
        let fixture = try Fixture()
        defer { fixture.directory.remove() }
        let newCA = try CertificateAuthority.create(commonName: "Patina cluster CA 2027")
        let bundle = fixture.directory.file("bundle.pem")
        try PEMFile.write(fixture.ca.certificatePEM + newCA.certificatePEM, to: bundle, mode: PEMFile.certificateMode)
        let rotated = try fixture.write(
            issueNodeCertificate(name: "n1", ipAddresses: ["127.0.0.1"], caCertPEM: newCA.certificatePEM, caKeyPEM: newCA.privateKeyPEM),
            as: "rotated")
        try CertificateCheck.validateNodeIdentity(certFile: fixture.certFile, keyFile: fixture.keyFile, caFile: bundle)
        try CertificateCheck.validateNodeIdentity(certFile: rotated.cert, keyFile: rotated.key, caFile: bundle)
        // Without the bundle, the old CA alone does not trust the new certificate.
        #expect(expectCertificateError {
            try CertificateCheck.validateNodeIdentity(certFile: rotated.cert, keyFile: rotated.key, caFile: fixture.caFile)
        }?.code == .untrustedIssuer)
        #expect(try inspectAll(pem: fixture.ca.certificatePEM + newCA.certificatePEM).map(\.subject)
            == ["CN=Patina cluster CA", "CN=Patina cluster CA 2027"])
    }

    @Test func refusesGarbageAndMissingFiles() throws {
        let fixture = try Fixture()
        defer { fixture.directory.remove() }
        let garbage = fixture.directory.file("garbage.pem")
        try PEMFile.write("this is not PEM\n", to: garbage, mode: 0o600)
        let damaged = fixture.directory.file("damaged.pem")
        try PEMFile.write("-----BEGIN CERTIFICATE-----\nAAAA!!!!\n-----END CERTIFICATE-----\n", to: damaged, mode: 0o644)

        let cases: [(cert: String, key: String, ca: String, code: CertificateError.Code, path: String, words: String)] = [
            (garbage, fixture.keyFile, fixture.caFile, .malformedPEM, garbage, "no PEM certificate found"),
            (damaged, fixture.keyFile, fixture.caFile, .malformedPEM, damaged, "damaged"),
            (fixture.certFile, garbage, fixture.caFile, .malformedPEM, garbage, "no readable PEM private key"),
            (fixture.certFile, fixture.keyFile, garbage, .malformedPEM, garbage, "no PEM certificate found"),
            (fixture.keyFile, fixture.certFile, fixture.caFile, .malformedPEM, fixture.keyFile, "swapped"),
            (fixture.certFile, fixture.keyFile, fixture.directory.file("missing.pem"), .unreadableFile,
             fixture.directory.file("missing.pem"), "No such file or directory"),
            (fixture.certFile, fixture.keyFile, fixture.certFile, .notACertificateAuthority, fixture.certFile, "is not a CA"),
        ]
        for entry in cases {
            let error = expectCertificateError {
                try CertificateCheck.validateNodeIdentity(certFile: entry.cert, keyFile: entry.key, caFile: entry.ca)
            }
            #expect(error?.code == entry.code, "\(String(describing: error))")
            #expect(error?.path == entry.path, "\(String(describing: error))")
            #expect(error?.description.contains(entry.words) == true, "\(String(describing: error))")
        }
        #expect(throws: CertificateError.self) { try inspect(certPEM: "garbage") }
    }

    @Test func refusesAKeyFileOthersCanRead() throws {
        let fixture = try Fixture()
        defer { fixture.directory.remove() }
        #expect(chmod(fixture.keyFile, 0o644) == 0)
        let error = expectCertificateError {
            try CertificateCheck.validateNodeIdentity(certFile: fixture.certFile, keyFile: fixture.keyFile, caFile: fixture.caFile)
        }
        #expect(error?.code == .insecureKeyFile)
        #expect(error?.description.contains("chmod 600 \(fixture.keyFile)") == true)
        #expect(chmod(fixture.keyFile, 0o640) == 0)
        try CertificateCheck.validateNodeIdentity(certFile: fixture.certFile, keyFile: fixture.keyFile, caFile: fixture.caFile)
    }

    @Test func issuingRefusesBadInputs() throws {
        let ca = try CertificateAuthority.create()
        func issue(_ ips: [String], _ dns: [String], days: Int = 365) throws {
            _ = try issueNodeCertificate(
                name: "n", ipAddresses: ips, dnsNames: dns, days: days, caCertPEM: ca.certificatePEM, caKeyPEM: ca.privateKeyPEM)
        }
        #expect(expectCertificateError { try issue([], []) }?.code == .missingSubjectAltName)
        #expect(expectCertificateError { try issue(["10.0.0.300"], []) }?.code == .invalidArgument)
        #expect(expectCertificateError { try issue([], ["a,IP:1.2.3.4"]) }?.code == .invalidArgument)
        #expect(expectCertificateError { try issue([], ["-bad.example"]) }?.code == .invalidArgument)
        #expect(expectCertificateError { try issue(["127.0.0.1"], [], days: 0) }?.code == .invalidArgument)
        try issue([], ["*.nodes.example.com"])

        // A node certificate cannot sign others.
        let node = try issueNodeCertificate(name: "n", ipAddresses: ["127.0.0.1"], caCertPEM: ca.certificatePEM, caKeyPEM: ca.privateKeyPEM)
        #expect(expectCertificateError {
            _ = try issueNodeCertificate(name: "m", ipAddresses: ["127.0.0.1"], caCertPEM: node.certificatePEM, caKeyPEM: node.privateKeyPEM)
        }?.code == .notACertificateAuthority)
        // The CA key must match the CA certificate.
        let other = try CertificateAuthority.create()
        #expect(expectCertificateError {
            _ = try issueNodeCertificate(name: "m", ipAddresses: ["127.0.0.1"], caCertPEM: ca.certificatePEM, caKeyPEM: other.privateKeyPEM)
        }?.code == .keyMismatch)
    }

    /// The code path of `patina certs ca` and `patina certs node`.
    @Test func directoryLayoutRefusesToOverwriteWithoutForce() throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let directory = CertificateDirectory(temp.file("cluster/certs"))
        let ca = try directory.createAuthority()
        #expect(ca.isCertificateAuthority)
        #expect(mode(of: directory.path) == 0o700)
        #expect(mode(of: directory.caKeyFile) == 0o600)
        #expect(mode(of: directory.caCertificateFile) == 0o644)
        let caKey = try String(contentsOfFile: directory.caKeyFile, encoding: .utf8)

        let again = expectCertificateError { try directory.createAuthority() }
        #expect(again?.code == .fileExists)
        #expect(again?.path == directory.caCertificateFile)
        #expect(again?.description == "\(directory.caCertificateFile): already exists; refusing to overwrite it")
        #expect(try String(contentsOfFile: directory.caKeyFile, encoding: .utf8) == caKey)

        let node = try directory.issueNode(name: "n1", ipAddresses: ["127.0.0.1"], dnsNames: ["localhost"])
        #expect(node.ipAddresses == ["127.0.0.1"])
        #expect(mode(of: directory.keyFile(node: "n1")) == 0o600)
        try CertificateCheck.validateNodeIdentity(
            certFile: directory.certificateFile(node: "n1"), keyFile: directory.keyFile(node: "n1"), caFile: directory.caCertificateFile)
        #expect(expectCertificateError { try directory.issueNode(name: "n1", ipAddresses: ["127.0.0.1"]) }?.code == .fileExists)
        #expect(expectCertificateError { try directory.issueNode(name: "../n1", ipAddresses: ["127.0.0.1"]) }?.code == .invalidArgument)
        #expect(expectCertificateError { try directory.issueNode(name: "ca", ipAddresses: ["127.0.0.1"]) }?.code == .invalidArgument)

        // --force replaces the CA; the old node certificate no longer chains to it.
        try directory.createAuthority(force: true)
        #expect(try String(contentsOfFile: directory.caKeyFile, encoding: .utf8) != caKey)
        #expect(expectCertificateError {
            try CertificateCheck.validateNodeIdentity(
                certFile: directory.certificateFile(node: "n1"), keyFile: directory.keyFile(node: "n1"), caFile: directory.caCertificateFile)
        }?.code == .untrustedIssuer)

        // Problems with the CA name the CA's file.
        let elsewhere = CertificateDirectory(temp.file("other"))
        let missing = expectCertificateError { try elsewhere.issueNode(name: "n2", ipAddresses: ["127.0.0.1"]) }
        #expect(missing?.code == .unreadableFile)
        #expect(missing?.path == elsewhere.caCertificateFile)
        let swapped = CertificateDirectory(temp.file("swapped"))
        try swapped.createAuthority()
        try PEMFile.write(
            try String(contentsOfFile: directory.certificateFile(node: "n1"), encoding: .utf8), to: swapped.caCertificateFile,
            mode: PEMFile.certificateMode, overwrite: true)
        let notCA = expectCertificateError { try swapped.issueNode(name: "n2", ipAddresses: ["127.0.0.1"]) }
        #expect(notCA?.code == .notACertificateAuthority)
        #expect(notCA?.path == swapped.caCertificateFile)
    }

    @Test func descriptionsNeverContainKeyMaterial() throws {
        let ca = try CertificateAuthority.create()
        #expect(!"\(ca)".contains("PRIVATE KEY"))
        #expect(ca.privateKeyPEM.hasPrefix("-----BEGIN PRIVATE KEY-----"))
        #expect(ca.certificatePEM.hasPrefix("-----BEGIN CERTIFICATE-----"))
    }
}
