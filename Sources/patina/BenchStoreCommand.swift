import ArgumentParser

/// `patina bench store`: replicated inserts and merges against plain SQLite.
struct BenchStore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "store", abstract: "Measure the CRDT store against plain SQLite.")
    func run() async throws {}
}
