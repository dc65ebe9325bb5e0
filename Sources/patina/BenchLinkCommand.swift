import ArgumentParser

/// `patina bench link`: an iperf-like measurement of one QUIC + mTLS link.
struct BenchLink: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "link", abstract: "Measure a QUIC link between two hosts (not yet built).")
    func run() async throws { throw ValidationError("patina bench link is not built yet") }
}
