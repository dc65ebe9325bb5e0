import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Reading and writing PEM files with the modes a node's identity needs:
/// private keys 0600 (owner only, from the moment the file exists),
/// certificates 0644.
public enum PEMFile {
    public static let privateKeyMode: mode_t = 0o600
    public static let certificateMode: mode_t = 0o644
    /// Larger files are not certificates or keys; refusing them bounds memory.
    static let maximumSize = 1 << 20

    /// Writes `text` to `path` with exactly `mode` (whatever the umask).
    ///
    /// Without `overwrite`, an existing file is an error (`.fileExists`) and is
    /// left untouched; the file is created with O_EXCL, so a racing writer
    /// cannot be clobbered either. With `overwrite`, the text goes to a
    /// temporary file in the same directory (created with `mode`) that is then
    /// renamed over `path`, so readers see the old or the new file, never a
    /// partial one, and a key is never readable by others, not even briefly.
    public static func write(_ text: String, to path: String, mode: mode_t, overwrite: Bool = false) throws(CertificateError) {
        if !overwrite {
            try writeNew(text, to: path, mode: mode)
            return
        }
        let directory = (path as NSString).deletingLastPathComponent
        let base = (path as NSString).lastPathComponent
        let suffix = (0..<8).map { _ in String(UInt8.random(in: 0...255), radix: 16) }.joined()
        let temporary = (directory.isEmpty ? "" : directory + "/") + ".\(base).tmp-\(suffix)"
        try writeNew(text, to: temporary, mode: mode)
        guard rename(temporary, path) == 0 else {
            let reason = errnoDescription()
            unlink(temporary)
            throw CertificateError(.writeFailed, path: path, "cannot replace the file: \(reason)")
        }
    }

    private static func writeNew(_ text: String, to path: String, mode: mode_t) throws(CertificateError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else {
            if errno == EEXIST {
                throw CertificateError(.fileExists, path: path, "already exists; refusing to overwrite it")
            }
            throw CertificateError(.writeFailed, path: path, "cannot create the file: \(errnoDescription())")
        }
        var failure: String? = nil
        // open(2) applied the umask; fchmod sets the exact mode asked for.
        if fchmod(fd, mode) != 0 { failure = "fchmod: \(errnoDescription())" }
        if failure == nil {
            let bytes = Array(text.utf8)
            var written = 0
            while written < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) }
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = "write: \(errnoDescription())"
                    break
                }
                written += n
            }
        }
        if failure == nil, fsync(fd) != 0 { failure = "fsync: \(errnoDescription())" }
        if close(fd) != 0, failure == nil { failure = "close: \(errnoDescription())" }
        if let failure {
            unlink(path)
            throw CertificateError(.writeFailed, path: path, failure)
        }
    }

    /// The file's text and permission bits. Throws `.unreadableFile` naming
    /// `path` and the system's reason.
    public static func read(_ path: String) throws(CertificateError) -> (text: String, mode: mode_t) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw CertificateError(.unreadableFile, path: path, "cannot read the file: \(errnoDescription())")
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw CertificateError(.unreadableFile, path: path, "cannot stat the file: \(errnoDescription())")
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw CertificateError(.unreadableFile, path: path, "is not a regular file")
        }
        guard Int(info.st_size) <= maximumSize else {
            throw CertificateError(.malformedPEM, path: path, "is \(info.st_size) bytes, too large for a PEM certificate or key")
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while true {
            let n = Glibc.read(fd, &chunk, chunk.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw CertificateError(.unreadableFile, path: path, "cannot read the file: \(errnoDescription())")
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
            guard bytes.count <= maximumSize else {
                throw CertificateError(.malformedPEM, path: path, "is too large for a PEM certificate or key")
            }
        }
        return (String(decoding: bytes, as: UTF8.self), info.st_mode & 0o7777)
    }

    static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    static func errnoDescription() -> String {
        String(cString: strerror(errno))
    }
}

extension PEMPair {
    /// Writes the private key (mode 0600) and the certificate (mode 0644).
    ///
    /// Without `overwrite`, nothing is written if either file exists, and the
    /// error names the first existing one.
    public func write(certificateFile: String, privateKeyFile: String, overwrite: Bool = false) throws(CertificateError) {
        if !overwrite {
            for path in [certificateFile, privateKeyFile] where PEMFile.exists(path) {
                throw CertificateError(.fileExists, path: path, "already exists; refusing to overwrite it")
            }
        }
        try PEMFile.write(privateKeyPEM, to: privateKeyFile, mode: PEMFile.privateKeyMode, overwrite: overwrite)
        try PEMFile.write(certificatePEM, to: certificateFile, mode: PEMFile.certificateMode, overwrite: overwrite)
    }
}
