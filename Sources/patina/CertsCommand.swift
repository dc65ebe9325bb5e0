import ArgumentParser
import Foundation
import PatinaCerts

/// `patina certs ...`: a cluster CA and node certificates (OpenSSL libcrypto).
struct Certs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a cluster CA and node certificates, and inspect certificates.",
        discussion: "See certs/README.md: one CA per cluster, one certificate per node, used for mutual TLS.",
        subcommands: [CertsCA.self, CertsNode.self, CertsInspect.self, CertsCheck.self])
}

/// `patina certs ca --dir DIR`: the cluster CA.
struct CertsCA: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca",
        abstract: "Create the cluster CA: DIR/ca.pem (certificate) and DIR/ca.key (private key, mode 0600).",
        discussion: "Run once per cluster. Keep ca.key offline or on one admin host; nodes need only ca.pem.")

    @Option(help: "Directory for ca.pem and ca.key (created with mode 0700 if missing).")
    var dir: String

    @Flag(help: "Replace an existing ca.pem/ca.key. Certificates signed by the old CA stop being trusted.")
    var force = false

    @Option(help: "Validity in days.")
    var days = CertificateAuthority.defaultDays

    @Option(help: "Subject common name; name the cluster to tell CAs apart.")
    var commonName = CertificateAuthority.defaultCommonName

    func run() async throws {
        let directory = CertificateDirectory(dir)
        let summary = try withForceHint { () throws(CertificateError) in
            try directory.createAuthority(commonName: commonName, days: days, force: force)
        }
        print("Wrote \(directory.caCertificateFile) (CA certificate, mode 0644) and \(directory.caKeyFile) (private key, mode 0600).")
        print(render(summary, file: nil), terminator: "")
        print("Keep \(directory.caKeyFile) offline or on one admin host; copy only \(directory.caCertificateFile) to the nodes.")
    }
}

/// `patina certs node NAME --dir DIR --ip A --dns H`: one node's certificate.
struct CertsNode: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Issue a node certificate: DIR/NAME.pem and DIR/NAME.key (mode 0600), signed by the cluster CA.",
        discussion: """
            The certificate serves as both TLS server and TLS client certificate (mutual TLS). \
            Peers check it against the address or name they dial, so list every IP address (--ip) \
            and DNS name (--dns) peers use to reach this node.
            """)

    @Argument(help: "Node name: the certificate's common name and the file name (letters, digits, '.', '_', '-').")
    var name: String

    @Option(help: "Directory for NAME.pem and NAME.key.")
    var dir: String

    @Option(help: "Directory holding ca.pem and ca.key (default: --dir).")
    var caDir: String?

    @Option(name: .customLong("ip"), help: "An IP address peers dial (repeatable).")
    var ipAddresses: [String] = []

    @Option(name: .customLong("dns"), help: "A DNS name peers dial (repeatable).")
    var dnsNames: [String] = []

    @Option(help: "Validity in days.")
    var days = 365

    @Flag(help: "Replace an existing NAME.pem/NAME.key.")
    var force = false

    func validate() throws {
        guard !ipAddresses.isEmpty || !dnsNames.isEmpty else {
            throw ValidationError("Give at least one --ip or --dns: the addresses and names peers use to reach this node.")
        }
        do throws(CertificateError) {
            try CertificateDirectory.checkNodeName(name)
        } catch {
            throw ValidationError(error.detail)
        }
    }

    func run() async throws {
        let directory = CertificateDirectory(dir)
        let caDirectory = CertificateDirectory(caDir ?? dir)
        let summary = try withForceHint { () throws(CertificateError) in
            do throws(CertificateError) {
                return try directory.issueNode(
                    name: name, ipAddresses: ipAddresses, dnsNames: dnsNames, days: days, force: force,
                    caDirectory: caDirectory)
            } catch {
                guard error.code == .unreadableFile,
                      error.path == caDirectory.caCertificateFile || error.path == caDirectory.caKeyFile
                else { throw error }
                throw CertificateError(
                    error.code, path: error.path,
                    error.detail + " (create the CA first with `patina certs ca --dir \(caDirectory.path)`, or pass --ca-dir)")
            }
        }
        let certFile = directory.certificateFile(node: name)
        let keyFile = directory.keyFile(node: name)
        print("Wrote \(certFile) (certificate, mode 0644) and \(keyFile) (private key, mode 0600), signed by \(caDirectory.caCertificateFile).")
        print(render(summary, file: nil), terminator: "")
        if let caText = try? PEMFile.read(caDirectory.caCertificateFile).text, let ca = try? inspect(certPEM: caText),
           ca.notAfter < summary.notAfter {
            print("warning: this certificate outlives the CA, which expires on \(formatUTC(ca.notAfter)); it stops working then.")
        }
        print("On the node, set [gossip.tls] cert_file = \"\(certFile)\", key_file = \"\(keyFile)\", ca_file = \"\(caDirectory.caCertificateFile)\".")
    }
}

/// `patina certs inspect FILE`.
struct CertsInspect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show the subject, names, issuer, validity, key type and serial of each certificate in a PEM file.")

    @Argument(help: "A PEM certificate file (a CA bundle may hold several).")
    var file: String

    func run() async throws {
        let text = try PEMFile.read(file).text
        let summaries = try inspectAll(pem: text)
        guard !summaries.isEmpty else {
            do { _ = try inspect(certPEM: text) } catch { throw CertificateError(error.code, path: file, error.detail) }
            return
        }
        for (index, summary) in summaries.enumerated() {
            if index > 0 { print("") }
            print(render(summary, file: summaries.count > 1 ? "\(file) [\(index + 1) of \(summaries.count)]" : file), terminator: "")
        }
    }
}

/// `patina certs check --cert --key --ca`: the node's start-up check, on demand.
struct CertsCheck: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check that a node certificate, its key and the CA file fit together and are valid now.",
        discussion: "Runs the same check as a node at start-up and prints the first problem found.")

    @Option(help: "The node certificate ([gossip.tls] cert_file).")
    var cert: String

    @Option(help: "The node private key ([gossip.tls] key_file).")
    var key: String

    @Option(help: "The cluster CA certificate(s) ([gossip.tls] ca_file).")
    var ca: String

    func run() async throws {
        let summary = try CertificateCheck.validateNodeIdentity(certFile: cert, keyFile: key, caFile: ca)
        print("OK: \(cert) ('\(summary.subject)') matches \(key), chains to \(ca), \(summary.validityStatus()).")
    }
}

// MARK: Helpers

/// Adds the command-line way out to "already exists" errors.
private func withForceHint<T>(_ body: () throws(CertificateError) -> T) throws(CertificateError) -> T {
    do {
        return try body()
    } catch {
        guard error.code == .fileExists else { throw error }
        throw CertificateError(error.code, path: error.path, error.detail + " (pass --force to replace it)")
    }
}

/// The readable form `inspect`, `ca` and `node` print.
private func render(_ summary: CertificateSummary, file: String?) -> String {
    var lines: [(String, String)] = []
    if let file { lines.append(("File", file)) }
    lines.append(("Subject", summary.subject))
    lines.append(("Issuer", summary.issuer + (summary.subject == summary.issuer ? " (self-signed)" : "")))
    if !summary.ipAddresses.isEmpty { lines.append(("IP addresses", summary.ipAddresses.joined(separator: ", "))) }
    if !summary.dnsNames.isEmpty { lines.append(("DNS names", summary.dnsNames.joined(separator: ", "))) }
    if summary.ipAddresses.isEmpty && summary.dnsNames.isEmpty && !summary.isCertificateAuthority {
        lines.append(("Names", "none (no subjectAltName: peers cannot verify this certificate)"))
    }
    lines.append(("Not before", formatUTC(summary.notBefore)))
    lines.append(("Not after", formatUTC(summary.notAfter)))
    lines.append(("Status", summary.validityStatus()))
    lines.append(("Key", summary.keyType))
    lines.append(("Serial", summary.serialNumber))
    lines.append(("CA", summary.isCertificateAuthority ? "yes" : "no"))
    if let usage = summary.keyUsage { lines.append(("Key usage", usage.joined(separator: ", "))) }
    if let usage = summary.extendedKeyUsage { lines.append(("Extended usage", usage.joined(separator: ", "))) }
    lines.append(("SHA-256", summary.sha256Fingerprint))
    let width = lines.map(\.0.count).max() ?? 0
    return lines.map { "  \($0.0):" + String(repeating: " ", count: width - $0.0.count + 1) + $0.1 + "\n" }.joined()
}
