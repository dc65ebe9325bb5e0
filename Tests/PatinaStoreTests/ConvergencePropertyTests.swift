import PatinaCore
@testable import PatinaStore
import Testing

/// Property: replicas that run random scripts and then receive every change, in
/// any order, duplicated and split into partial chunks, hold identical tables
/// and identical clocks; delivering everything again changes nothing.
///
/// Seeded: a failing seed replays exactly (`PATINA_SEED` picks one seed).
@Suite struct ConvergencePropertyTests {
    static let schema = """
        CREATE TABLE kv (k INTEGER NOT NULL PRIMARY KEY, a TEXT, b INTEGER NOT NULL DEFAULT 0, c);
        CREATE TABLE pairs (x TEXT NOT NULL, y INTEGER NOT NULL, v, PRIMARY KEY (x, y));
        CREATE TABLE tags (name TEXT NOT NULL PRIMARY KEY);
        """

    static var seeds: [UInt64] {
        if let s = ProcessInfo.processInfo.environment["PATINA_SEED"], let seed = UInt64(s) { return [seed] }
        return Array(1...24)
    }

    @Test(arguments: seeds)
    func randomScriptsConverge(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let dir = TempDir()
        let replicaCount = 3 + Int(rng.next() % 3)
        let replicas = try (0..<replicaCount).map { try makeStore(dir, "r\($0).db", schema: Self.schema) }
        var log: [Changeset] = []

        for _ in 0..<(60 + Int(rng.next() % 60)) {
            let replica = replicas[Int(rng.next() % UInt64(replicaCount))]
            if rng.next() % 10 < 7 || log.isEmpty {
                let result = try replica.write { tx in
                    for _ in 0..<(1 + Int(rng.next() % 3)) { try Self.randomStatement(tx, &rng) }
                }
                log += result.changesets
            } else {
                let picked = (0..<(1 + Int(rng.next() % 6))).map { _ in log[Int(rng.next() % UInt64(log.count))] }
                let outcome = try replica.merge(Self.scramble(picked, &rng))
                #expect(outcome.rejections.isEmpty, "seed \(seed): \(outcome.rejections)")
            }
        }

        // Everyone receives everything: originals plus what a random replica relays
        // from its own state (current values and cleared versions).
        for replica in replicas {
            let relay = replicas[Int(rng.next() % UInt64(replicaCount))]
            var relayed: [Changeset] = []
            for (actor, head) in relay.heads() {
                relayed += try relay.changesets(actor: actor, versions: 1...head)
            }
            let batch = Self.scramble(log + log.filter { _ in rng.next() % 3 == 0 } + relayed, &rng)
            // Several batches, so partial versions wait across transactions.
            var start = 0
            while start < batch.count {
                let end = min(batch.count, start + 1 + Int(rng.next() % 40))
                let outcome = try replica.merge(Array(batch[start..<end]))
                #expect(outcome.rejections.isEmpty, "seed \(seed): \(outcome.rejections)")
                start = end
            }
        }

        let reference = replicas[0]
        for (i, replica) in replicas.enumerated().dropFirst() {
            for table in ["kv", "pairs", "tags"] {
                let rows: [[SQLValue]] = try replica.rows(table)
                let expectedRows: [[SQLValue]] = try reference.rows(table)
                #expect(rows == expectedRows, "seed \(seed): replica \(i) table \(table)")
                let clocks: [[SQLValue]] = try replica.clocks(table)
                let expectedClocks: [[SQLValue]] = try reference.clocks(table)
                #expect(clocks == expectedClocks, "seed \(seed): replica \(i) clocks of \(table)")
            }
            #expect(replica.heads() == reference.heads(), "seed \(seed): heads of replica \(i)")
        }
        for replica in replicas {
            for (_, book) in replica.bookkeeping() {
                #expect(book.gaps.isEmpty && book.partials.isEmpty, "seed \(seed): \(book)")
            }
        }

        // Idempotence: everything again, in another order, changes nothing.
        let before = try snapshot(replicas)
        for replica in replicas {
            let outcome = try replica.merge(Self.scramble(log, &rng))
            #expect(outcome.changesWritten == 0, "seed \(seed)")
        }
        let after = try snapshot(replicas)
        #expect(before == after, "seed \(seed): a second delivery changed something")
    }

    func snapshot(_ replicas: [Store]) throws -> [[[SQLValue]]] {
        var result: [[[SQLValue]]] = []
        for r in replicas {
            for table in ["kv", "pairs", "tags"] {
                let rows: [[SQLValue]] = try r.rows(table)
                let clocks: [[SQLValue]] = try r.clocks(table)
                result.append(rows + clocks)
            }
        }
        return result
    }

    static func randomValue(_ rng: inout SplitMix64) -> SQLValue {
        switch rng.next() % 7 {
        case 0: .null
        case 1: .integer(Int64(rng.next() % 5) - 2)
        case 2: .real(Double(rng.next() % 4) / 2)
        case 3: .text(["a", "b", "", "zz"][Int(rng.next() % 4)])
        case 4: .blob([[], [0], [1, 2]][Int(rng.next() % 3)])
        case 5: .integer(Int64.max)
        default: .text("t\(rng.next() % 3)")
        }
    }

    static func randomStatement(_ tx: WriteTransaction, _ rng: inout SplitMix64) throws {
        let k = SQLValue.integer(Int64(rng.next() % 6))
        let x = SQLValue.text(["p", "q"][Int(rng.next() % 2)])
        let y = SQLValue.integer(Int64(rng.next() % 3))
        switch rng.next() % 11 {
        case 0, 1:
            try tx.execute("INSERT INTO kv (k, a, b, c) VALUES (?, ?, ?, ?) ON CONFLICT (k) DO UPDATE SET a = excluded.a",
                           [k, randomValue(&rng), .integer(Int64(rng.next() % 4)), randomValue(&rng)])
        case 2, 3:
            try tx.execute("UPDATE kv SET a = ? WHERE k = ?", [randomValue(&rng), k])
        case 4:
            try tx.execute("UPDATE kv SET b = b + 1, c = ? WHERE k = ?", [randomValue(&rng), k])
        case 5:
            try tx.execute("DELETE FROM kv WHERE k = ?", [k])
        case 6:
            try tx.execute("INSERT OR REPLACE INTO pairs (x, y, v) VALUES (?, ?, ?)", [x, y, randomValue(&rng)])
        case 7:
            try tx.execute("DELETE FROM pairs WHERE x = ? AND y = ?", [x, y])
        case 8:
            try tx.execute("INSERT OR IGNORE INTO tags (name) VALUES (?)", [x])
        case 9:
            try tx.execute("DELETE FROM tags WHERE name = ?", [x])
        default:
            try tx.execute("UPDATE kv SET k = ?1 WHERE k = ?2 AND NOT EXISTS (SELECT 1 FROM kv WHERE k = ?1)",
                           [.integer(Int64(rng.next() % 6)), k])
        }
    }

    /// Shuffles, and splits some changesets into partial chunks that tile their seqs.
    static func scramble(_ changesets: [Changeset], _ rng: inout SplitMix64) -> [Changeset] {
        var out: [Changeset] = []
        for cs in changesets {
            guard case .changes(let version, let changes, let seqs, let lastSeq, let ts) = cs.content,
                  seqs.count > 1, rng.next() % 2 == 0
            else {
                out.append(cs)
                continue
            }
            var cut = seqs.lowerBound
            while cut <= seqs.upperBound {
                let end = min(seqs.upperBound, cut + Int64(rng.next() % 3))
                let part = changes.filter { (cut...end).contains($0.seq) }
                out.append(.changes(actor: cs.actor, version: version, changes: part, seqs: cut...end, lastSeq: lastSeq, ts: ts))
                cut = end + 1
            }
        }
        out.shuffle(using: &rng)
        return out
    }
}

import Foundation
