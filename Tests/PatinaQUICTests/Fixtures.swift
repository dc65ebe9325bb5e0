import Foundation
import Logging
import PatinaCerts
import Testing

@testable import PatinaQUIC

/// Certificates written to a temporary directory: a cluster CA, node certificates for
/// 127.0.0.1, and the bad ones the refusal tests need.
struct TestPKI {
    let directory: String
    let caPath: String

    init() throws {
        directory = NSTemporaryDirectory() + "patina-quic-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let ca = try CertificateAuthority.create(commonName: "Test CA")
        self.ca = ca
        caPath = directory + "/ca.pem"
        try ca.certificatePEM.write(toFile: caPath, atomically: true, encoding: .utf8)
    }

    private let ca: PEMPair

    /// A node certificate issued by this CA; `validity` shifts it into the past or future.
    func node(_ name: String, ip: [String] = ["127.0.0.1"], dns: [String] = ["localhost"],
              notBefore: Date? = nil, notAfter: Date? = nil, issuer: PEMPair? = nil) throws -> QUICTLSConfig {
        let issuer = issuer ?? ca
        let pair = try issueNodeCertificate(
            name: name, ipAddresses: ip, dnsNames: dns, notBefore: notBefore, notAfter: notAfter,
            caCertPEM: issuer.certificatePEM, caKeyPEM: issuer.privateKeyPEM)
        let cert = directory + "/\(name).pem"
        let key = directory + "/\(name).key"
        try pair.certificatePEM.write(toFile: cert, atomically: true, encoding: .utf8)
        try pair.privateKeyPEM.write(toFile: key, atomically: true, encoding: .utf8)
        return QUICTLSConfig(certificatePath: cert, privateKeyPath: key, caPath: caPath)
    }

    /// A node certificate from a different CA (it still trusts *our* CA file).
    func foreignNode(_ name: String) throws -> QUICTLSConfig {
        let other = try CertificateAuthority.create(commonName: "Other CA")
        return try node(name, issuer: other)
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }
}

/// Log lines captured per test, printed only when the test fails.
final class LogCapture: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []

    func append(_ line: String) {
        lock.lock()
        lines.append(line)
        lock.unlock()
    }

    var all: [String] {
        lock.lock()
        defer { lock.unlock() }
        return lines
    }

    func contains(_ text: String) -> Bool { all.contains { $0.contains(text) } }

    func logger(_ label: String) -> Logger {
        var logger = Logger(label: label) { label in CaptureHandler(label: label, capture: self) }
        logger.logLevel = .debug
        return logger
    }
}

struct CaptureHandler: LogHandler {
    let label: String
    let capture: LogCapture
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .debug

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = self.metadata.merging(event.metadata ?? [:]) { $1 }
        capture.append(
            "[\(label)] \(event.level) \(event.message) \(merged.map { "\($0)=\($1)" }.sorted().joined(separator: " "))")
    }
}

func config(_ tls: QUICTLSConfig, idle: Duration = .seconds(10)) -> QUICEndpointConfig {
    var c = QUICEndpointConfig(tls: tls)
    c.idleTimeout = idle
    c.keepAliveInterval = idle / 3
    c.handshakeTimeout = .seconds(5)
    return c
}

let loopback = QUICSocketAddress(host: "127.0.0.1", port: 0)

/// Runs `body` and fails the test if it has not finished by `limit`.
func withDeadline<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        guard let first = try await group.next(), let value = first else {
            group.cancelAll()
            throw DeadlineExceeded(limit: limit)
        }
        group.cancelAll()
        return value
    }
}

struct DeadlineExceeded: Error, CustomStringConvertible {
    let limit: Duration
    var description: String { "did not finish within \(limit)" }
}

/// The value of `task`, cancelling it once `limit` passes. Receive loops over
/// AsyncStreams end on cancellation and return what they have, so a message that
/// never comes fails the test's expectation instead of hanging the run (a task's
/// value cannot be abandoned by `withDeadline`).
func bounded<T: Sendable>(_ task: Task<T, any Error>, _ limit: Duration) async throws -> T {
    let timer = Task {
        try await Task.sleep(for: limit)
        task.cancel()
    }
    defer { timer.cancel() }
    return try await task.value
}

func bounded<T: Sendable>(_ task: Task<T, Never>, _ limit: Duration) async -> T {
    let timer = Task {
        try await Task.sleep(for: limit)
        task.cancel()
    }
    defer { timer.cancel() }
    return await task.value
}

/// Polls `condition` until it holds or `limit` passes.
func eventually(_ limit: Duration = .seconds(5), _ condition: @Sendable () async -> Bool) async -> Bool {
    let clock = ContinuousClock()
    let end = clock.now + limit
    while clock.now < end {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return await condition()
}
