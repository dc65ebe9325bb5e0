import Foundation
import PatinaCore

/// `patina bench store`: the cost of replication against plain SQLite, measured
/// in one run on the same machine so the ratios hold on a noisy host.
public struct StoreBenchmark: Sendable {
    public struct Result: Codable, Sendable {
        public var rows: Int
        public var rows_per_transaction: Int
        public var plain_insert_rows_per_s: Double
        public var crdt_insert_rows_per_s: Double
        /// Time of replicated inserts divided by time of plain inserts.
        public var insert_overhead_ratio: Double
        public var apply_rows_per_transaction: Int
        public var plain_apply_rows_per_s: Double
        public var apply_rows_per_s: Double
        /// Remote changes (cells and sentinels) merged per second.
        public var apply_changes_per_s: Double
        public var apply_overhead_ratio: Double
        public var changes: Int
        /// A sync server answering for every version, 100 at a time: reading and
        /// serving them, and holding all of them back as still in flight (the
        /// newest second of writes under load). held-back ÷ serve time is the ratio.
        public var sync_serve_versions_per_s: Double
        public var sync_hold_back_versions_per_s: Double
    }

    public var rows = 100_000
    public var rowsPerTransaction = 100
    public var applyRowsPerTransaction = 1000
    public var directory: String

    public init(directory: String) { self.directory = directory }

    static let schema = "CREATE TABLE bench (id INTEGER NOT NULL PRIMARY KEY, name TEXT, value INTEGER);"
    static let insert = "INSERT INTO bench (id, name, value) VALUES (?, ?, ?)"

    func row(_ i: Int) -> [SQLValue] { [.integer(Int64(i)), .text("name-\(i)"), .integer(Int64(i * 7))] }

    public func run(progress: (String) -> Void = { _ in }) throws -> Result {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        func fresh(_ name: String) -> String {
            let path = directory + "/" + name
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
            return path
        }

        progress("plain SQLite inserts")
        let plainInsert = try timePlainInserts(path: fresh("plain-insert.db"), perTransaction: rowsPerTransaction)

        progress("replicated inserts")
        let source = try Store(path: fresh("crdt-source.db"))
        try source.applySchema(sql: Self.schema)
        var changesets: [Changeset] = []
        let start = DispatchTime.now().uptimeNanoseconds
        var i = 0
        while i < rows {
            let end = min(rows, i + rowsPerTransaction)
            let result = try source.write { tx in
                for r in i..<end { try tx.execute(Self.insert, .positional(row(r))) }
            }
            changesets += result.changesets
            i = end
        }
        let crdtInsert = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9

        progress("plain SQLite inserts of the same rows, in apply-sized transactions")
        let plainApply = try timePlainInserts(path: fresh("plain-apply.db"), perTransaction: applyRowsPerTransaction)

        progress("merging the replicated inserts into a fresh node")
        let target = try Store(path: fresh("crdt-target.db"))
        try target.applySchema(sql: Self.schema)
        let changeCount = changesets.reduce(0) { $0 + $1.changeCount }
        let perBatch = max(1, applyRowsPerTransaction / rowsPerTransaction)
        let applyStart = DispatchTime.now().uptimeNanoseconds
        var b = 0
        while b < changesets.count {
            let outcome = try target.merge(Array(changesets[b..<min(changesets.count, b + perBatch)]))
            guard outcome.rejections.isEmpty else { throw BenchmarkError(message: "\(outcome.rejections)") }
            b += perBatch
        }
        let apply = Double(DispatchTime.now().uptimeNanoseconds - applyStart) / 1e9
        let merged = try target.query("SELECT count(*) FROM bench")
        guard merged == [[.integer(Int64(rows))]] else { throw BenchmarkError(message: "merged \(merged), expected \(rows) rows") }

        progress("serving the versions for sync, then holding them all back")
        let versions = Int64(changesets.count)
        func timeServe(holdingBack: ClosedRange<UInt64>?) throws -> Double {
            let start = DispatchTime.now().uptimeNanoseconds
            var served = 0
            for lo in stride(from: Int64(1), through: versions, by: 100) {
                let read = try target.changesets(actor: source.actorID, versions: lo...min(versions, lo + 99), holdingBack: holdingBack)
                served += read.changesets.count + read.heldBack
            }
            guard served >= versions else { throw BenchmarkError(message: "sync read \(served) of \(versions) versions") }
            return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        }
        let serve = try timeServe(holdingBack: nil)
        let holdBack = try timeServe(holdingBack: 0...UInt64.max)  // every commit time

        return Result(
            rows: rows, rows_per_transaction: rowsPerTransaction,
            plain_insert_rows_per_s: Double(rows) / plainInsert,
            crdt_insert_rows_per_s: Double(rows) / crdtInsert,
            insert_overhead_ratio: crdtInsert / plainInsert,
            apply_rows_per_transaction: applyRowsPerTransaction,
            plain_apply_rows_per_s: Double(rows) / plainApply,
            apply_rows_per_s: Double(rows) / apply,
            apply_changes_per_s: Double(changeCount) / apply,
            apply_overhead_ratio: apply / plainApply,
            changes: changeCount,
            sync_serve_versions_per_s: Double(versions) / serve,
            sync_hold_back_versions_per_s: Double(versions) / holdBack)
    }

    /// Plain SQLite with the same settings as the store (WAL, synchronous NORMAL)
    /// and the same table, one prepared statement.
    private func timePlainInserts(path: String, perTransaction: Int) throws -> Double {
        let db = try SQLiteConnection(path: path)
        try db.execute("PRAGMA journal_mode = WAL; " + StoreCore.performancePragmas)
        try db.execute(Self.schema)
        let stmt = try db.prepare(Self.insert)
        let start = DispatchTime.now().uptimeNanoseconds
        var i = 0
        while i < rows {
            try db.execute("BEGIN IMMEDIATE")
            for r in i..<min(rows, i + perTransaction) {
                stmt.reset()
                try stmt.bind(row(r))
                try stmt.step()
            }
            try db.execute("COMMIT")
            i += perTransaction
        }
        return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    }

    struct BenchmarkError: Error, CustomStringConvertible {
        let message: String
        var description: String { "benchmark failed: \(message)" }
    }
}

/// Plain SQLite with the store's settings, for side-by-side baselines.
public final class PlainSQLite {
    let db: SQLiteConnection
    let insert: SQLiteStatement

    public init(path: String) throws {
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        db = try SQLiteConnection(path: path)
        try db.execute("PRAGMA journal_mode = WAL; " + StoreCore.performancePragmas)
        try db.execute(StoreBenchmark.schema)
        insert = try db.prepare(StoreBenchmark.insert)
    }

    /// One single-row insert in a transaction of its own.
    public func insertInOwnTransaction(_ i: Int) throws {
        try db.execute("BEGIN IMMEDIATE")
        insert.reset()
        try insert.bind([.integer(Int64(i)), .text("name-\(i)"), .integer(Int64(i * 7))])
        try insert.step()
        try db.execute("COMMIT")
    }
}
