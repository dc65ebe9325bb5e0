import Foundation
import PatinaCore

/// One row of `__patina_members`: a cluster member as last seen by this node.
public struct StoredMember: Sendable, Hashable {
    public var actor: ActorID
    /// Gossip address, "host:port".
    public var address: String
    /// "alive", "suspect" or "down".
    public var state: String
    public var rttMilliseconds: Double?
    /// Unix milliseconds of the save.
    public var updatedAt: Int64

    public init(actor: ActorID, address: String, state: String, rttMilliseconds: Double? = nil, updatedAt: Int64) {
        self.actor = actor
        self.address = address
        self.state = state
        self.rttMilliseconds = rttMilliseconds
        self.updatedAt = updatedAt
    }
}

extension Store {
    /// Replaces the persisted members (and this node's membership incarnation) in one
    /// transaction. Runs on a connection of its own (WAL: it never blocks readers, and
    /// waits for the writer with SQLite's busy timeout), so call it off the cooperative
    /// pool.
    public func saveMembers(_ members: [StoredMember], incarnation: UInt64?) throws {
        let db = try SQLiteConnection(path: path, create: false)
        try db.execute("BEGIN IMMEDIATE")
        do {
            try db.run("DELETE FROM __patina_members")
            for m in members {
                try db.run(
                    "INSERT OR REPLACE INTO __patina_members (actor, address, state, rtt_ms, updated_at) VALUES (?, ?, ?, ?, ?)",
                    [.blob(m.actor.bytes), .text(m.address), .text(m.state),
                     m.rttMilliseconds.map { .real($0) } ?? .null, .integer(m.updatedAt)])
            }
            if let incarnation {
                try db.run("INSERT OR REPLACE INTO __patina_meta (key, value) VALUES ('membership_incarnation', ?)",
                           [.integer(Int64(bitPattern: incarnation))])
            }
            try db.execute("COMMIT")
        } catch {
            try? db.execute("ROLLBACK")
            throw error
        }
    }

    /// The persisted members and this node's last membership incarnation (nil if never saved).
    public func loadMembers() throws -> (members: [StoredMember], incarnation: UInt64?) {
        try Self.loadMembers(path: path)
    }
}

extension Store {
    /// `loadMembers` on a database file without opening it as a Store (read-only;
    /// works while an agent holds it), for tools and tests.
    public static func loadMembers(path: String) throws -> (members: [StoredMember], incarnation: UInt64?) {
        try readMembers(SQLiteConnection(path: path, readOnly: true, create: false))
    }

    static func readMembers(_ db: SQLiteConnection) throws -> (members: [StoredMember], incarnation: UInt64?) {
        var members: [StoredMember] = []
        for row in try db.query("SELECT actor, address, state, rtt_ms, updated_at FROM __patina_members") {
            guard row.count == 5, case .blob(let bytes) = row[0], let actor = ActorID(bytes: bytes),
                  case .text(let address) = row[1], case .text(let state) = row[2] else { continue }
            var rtt: Double?
            switch row[3] {
            case .real(let r): rtt = r
            case .integer(let i): rtt = Double(i)
            default: rtt = nil
            }
            var updated: Int64 = 0
            if case .integer(let u) = row[4] { updated = u }
            members.append(StoredMember(actor: actor, address: address, state: state, rttMilliseconds: rtt, updatedAt: updated))
        }
        var incarnation: UInt64?
        if case .integer(let i) = try db.scalar("SELECT value FROM __patina_meta WHERE key = 'membership_incarnation'") {
            incarnation = UInt64(bitPattern: i)
        }
        return (members, incarnation)
    }
}
