import ArgumentParser
import Foundation
import PatinaNode

/// `patina bench api`: HTTP transactions, streamed queries and subscription
/// latency, against direct SQLite in the same run.
struct BenchAPI: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "api", abstract: "Measure the HTTP API against direct SQLite.")
    @Option(help: "Concurrent HTTP clients.") var clients = 16
    @Option(help: "Single-row insert transactions.") var transactions = 4000
    @Option(help: "Rows streamed by one query.") var rows = 200_000
    @Option(help: "Subscriptions open during the latency test.") var subscriptions = 100
    @Flag(help: "Print one JSON object.") var json = false

    func run() async throws {
        var bench = APIBenchmark(directory: NSTemporaryDirectory() + "patina-bench-api-\(getpid())")
        bench.clients = clients
        bench.transactions = transactions
        bench.streamedRows = rows
        bench.subscriptions = subscriptions
        defer { try? FileManager.default.removeItem(atPath: bench.directory) }
        let quiet = json
        let result = try await bench.run { step in if !quiet { FileHandle.standardError.write(Data("… \(step)\n".utf8)) } }
        let encoder = JSONEncoder()
        encoder.outputFormatting = json ? [.sortedKeys] : [.sortedKeys, .prettyPrinted]
        print(String(decoding: try encoder.encode(result), as: UTF8.self))
    }
}
