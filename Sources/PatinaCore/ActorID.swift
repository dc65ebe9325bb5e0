import Foundation

/// The identity of a node's writer: a random UUID chosen when its database is
/// created and kept across restarts. Every change names the actor that made it.
public struct ActorID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let uuid: UUID

    public init(_ uuid: UUID) { self.uuid = uuid }
    public static func random() -> ActorID { ActorID(UUID()) }

    /// The 16 raw bytes, as stored in SQLite and sent on the wire.
    public var bytes: [UInt8] {
        withUnsafeBytes(of: uuid.uuid) { Array($0) }
    }

    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 16 else { return nil }
        var raw = uuid_t(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &raw) { dst in
            for (i, b) in bytes.enumerated() { dst[i] = b }
        }
        self.uuid = UUID(uuid: raw)
    }

    public init?(string: String) {
        guard let uuid = UUID(uuidString: string) else { return nil }
        self.uuid = uuid
    }

    public var description: String { uuid.uuidString.lowercased() }

    /// Byte-wise order: the merge rule's last tie-breaker, identical on every node.
    public static func < (lhs: ActorID, rhs: ActorID) -> Bool {
        lhs.bytes.lexicographicallyPrecedes(rhs.bytes)
    }
}
