import ArgumentParser
import Foundation
import PatinaStore

/// `patina bench store`: replicated inserts and merges against plain SQLite.
struct BenchStore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "Measure the CRDT store against plain SQLite inserts in the same run.")

    @Option(help: "Rows to insert.") var rows = 100_000
    @Option(help: "Rows per local write transaction.") var rowsPerTransaction = 100
    @Option(help: "Rows per merge (apply) transaction.") var applyRowsPerTransaction = 1000
    @Option(help: "Scratch directory (removed afterwards).") var dir: String?
    @Flag(help: "Print one JSON object.") var json = false

    func run() async throws {
        let scratch = dir ?? NSTemporaryDirectory() + "patina-bench-store-\(getpid())"
        defer { if dir == nil { try? FileManager.default.removeItem(atPath: scratch) } }
        var bench = StoreBenchmark(directory: scratch)
        bench.rows = rows
        bench.rowsPerTransaction = rowsPerTransaction
        bench.applyRowsPerTransaction = applyRowsPerTransaction
        let json = self.json
        let result = try bench.run { step in
            if !json { FileHandle.standardError.write(Data("… \(step)\n".utf8)) }
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(result), as: UTF8.self))
        } else {
            func f(_ v: Double) -> String { String(format: "%.0f", v) }
            print("""
                rows: \(result.rows) (local transactions of \(result.rows_per_transaction), merges of \(result.apply_rows_per_transaction))
                plain insert        \(f(result.plain_insert_rows_per_s)) rows/s
                replicated insert   \(f(result.crdt_insert_rows_per_s)) rows/s   overhead \(String(format: "%.2f", result.insert_overhead_ratio))×
                plain apply         \(f(result.plain_apply_rows_per_s)) rows/s
                merge               \(f(result.apply_rows_per_s)) rows/s = \(f(result.apply_changes_per_s)) changes/s   overhead \(String(format: "%.2f", result.apply_overhead_ratio))×
                sync serve          \(f(result.sync_serve_versions_per_s)) versions/s read and served
                sync hold back      \(f(result.sync_hold_back_versions_per_s)) versions/s held back as in flight   \(String(format: "%.1f", result.sync_hold_back_versions_per_s / result.sync_serve_versions_per_s))× faster
                """)
        }
    }
}
