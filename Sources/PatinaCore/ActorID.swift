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

    // Inlinable so callers get a specialized copy: decoding a changeset builds
    // one actor id per change, and the unspecialized generic showed in profiles.
    @inlinable
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 16 else { return nil }
        var raw = uuid_t(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &raw) { dst in
            var i = 0
            for b in bytes {
                dst[i] = b
                i += 1
            }
        }
        self.init(UUID(uuid: raw))
    }

    public init?(string: String) {
        guard let uuid = UUID(uuidString: string) else { return nil }
        self.uuid = uuid
    }

    public var description: String { uuid.uuidString.lowercased() }

    /// Byte-wise order: the merge rule's last tie-breaker, identical on every node.
    public static func < (lhs: ActorID, rhs: ActorID) -> Bool {
        // Without allocating: merges compare actors once per conflicting cell.
        withUnsafeBytes(of: lhs.uuid.uuid) { a in
            withUnsafeBytes(of: rhs.uuid.uuid) { b in
                for i in 0..<16 where a[i] != b[i] { return a[i] < b[i] }
                return false
            }
        }
    }
}
