import Foundation

/// The file layout `patina certs` uses: `ca.pem` and `ca.key` for the cluster
/// CA, `NAME.pem` and `NAME.key` for node NAME, all in one directory (the
/// CA's may live in another one, kept offline).
public struct CertificateDirectory: Sendable, Equatable {
    public let path: String

    public init(_ path: String) { self.path = path }

    public var caCertificateFile: String { file("ca.pem") }
    public var caKeyFile: String { file("ca.key") }
    public func certificateFile(node name: String) -> String { file(name + ".pem") }
    public func keyFile(node name: String) -> String { file(name + ".key") }

    private func file(_ name: String) -> String {
        path.hasSuffix("/") ? path + name : path + "/" + name
    }

    /// Creates a new cluster CA in `ca.pem` and `ca.key` (see
    /// `CertificateAuthority.create`). Without `force`, existing files are an
    /// error (`.fileExists`) and stay untouched. Creates the directory (mode
    /// 0700) if needed.
    @discardableResult
    public func createAuthority(
        commonName: String = CertificateAuthority.defaultCommonName,
        days: Int = CertificateAuthority.defaultDays,
        force: Bool = false
    ) throws(CertificateError) -> CertificateSummary {
        try refuseExisting([caCertificateFile, caKeyFile], force: force)
        let pair = try CertificateAuthority.create(commonName: commonName, days: days)
        try makeDirectory()
        try pair.write(certificateFile: caCertificateFile, privateKeyFile: caKeyFile, overwrite: force)
        return try inspect(certPEM: pair.certificatePEM)
    }

    /// Issues node `name`'s certificate into `NAME.pem` and `NAME.key`, signed
    /// by the CA in `caDirectory` (default: this directory). See
    /// `issueNodeCertificate` for the certificate's contents. Errors about the
    /// CA name the CA file at fault.
    @discardableResult
    public func issueNode(
        name: String,
        ipAddresses: [String] = [],
        dnsNames: [String] = [],
        days: Int = 365,
        force: Bool = false,
        caDirectory: CertificateDirectory? = nil
    ) throws(CertificateError) -> CertificateSummary {
        try Self.checkNodeName(name)
        let ca = caDirectory ?? self
        let caCertificate = try PEMFile.read(ca.caCertificateFile).text
        let caKey = try PEMFile.read(ca.caKeyFile).text
        try refuseExisting([certificateFile(node: name), keyFile(node: name)], force: force)
        let pair = try CertificateAuthority.issue(
            name: name, ipAddresses: ipAddresses, dnsNames: dnsNames, days: days, notBefore: nil, notAfter: nil,
            caCertPEM: caCertificate, caKeyPEM: caKey, caCertLabel: ca.caCertificateFile, caKeyLabel: ca.caKeyFile)
        try makeDirectory()
        try pair.write(certificateFile: certificateFile(node: name), privateKeyFile: keyFile(node: name), overwrite: force)
        return try inspect(certPEM: pair.certificatePEM)
    }

    /// A node name becomes a file name: letters, digits, '.', '_' and '-',
    /// not starting with '.', at most 64 bytes, and not "ca".
    public static func checkNodeName(_ name: String) throws(CertificateError) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        guard !name.isEmpty, name.utf8.count <= 64, !name.hasPrefix("."), name.allSatisfy(allowed.contains) else {
            throw CertificateError(
                .invalidArgument, "node name '\(name)' must be 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'")
        }
        guard name != "ca" else {
            throw CertificateError(.invalidArgument, "'ca' is the CA's file name; choose another node name")
        }
    }

    private func refuseExisting(_ files: [String], force: Bool) throws(CertificateError) {
        guard !force else { return }
        for file in files where PEMFile.exists(file) {
            throw CertificateError(.fileExists, path: file, "already exists; refusing to overwrite it")
        }
    }

    private func makeDirectory() throws(CertificateError) {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else {
                throw CertificateError(.writeFailed, path: path, "exists and is not a directory")
            }
            return
        }
        do {
            try FileManager.default.createDirectory(
                atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw CertificateError(.writeFailed, path: path, "cannot create the directory: \(error.localizedDescription)")
        }
    }
}
