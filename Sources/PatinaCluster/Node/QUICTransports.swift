import Logging
import PatinaQUIC
import Synchronization

/// SWIM datagrams over QUIC DATAGRAM frames on the cached connection to each peer.
/// A send never waits for a handshake: without a live connection it dials in the
/// background (at most a few sends parked per peer) and returns.
final class QUICMembershipTransport: MembershipTransport {
    let peers: PeerConnections
    let incoming: AsyncStream<MembershipDatagram>
    private let continuation: AsyncStream<MembershipDatagram>.Continuation
    private let parked = Mutex<[String: Int]>([:])
    private let logger: Logger
    static let maxParkedPerPeer = 8

    init(peers: PeerConnections, logger: Logger) {
        self.peers = peers
        self.logger = logger
        (incoming, continuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(4096))
    }

    /// A datagram received on any connection.
    func deliver(_ bytes: [UInt8], from peer: String) {
        continuation.yield(MembershipDatagram(bytes: bytes, from: peer))
    }

    func finish() { continuation.finish() }

    func send(_ bytes: [UInt8], to address: String) async {
        if let c = peers.existing(address) {
            do { try await c.sendDatagram(bytes) } catch {
                logger.debug("membership datagram not sent", metadata: ["peer": "\(address)", "error": "\(error)"])
            }
            return
        }
        let admitted = parked.withLock { p -> Bool in
            let n = p[address, default: 0]
            guard n < Self.maxParkedPerPeer else { return false }
            p[address] = n + 1
            return true
        }
        guard admitted else { return }
        let peers = self.peers
        let logger = self.logger
        Task {
            defer { _ = self.parked.withLock { $0[address, default: 1] -= 1 } }
            do {
                let c = try await peers.connection(to: address)
                try await c.sendDatagram(bytes)
            } catch {
                logger.debug("membership datagram not sent", metadata: ["peer": "\(address)", "error": "\(error)"])
            }
        }
    }
}

/// Broadcast frames as QUIC messages on the cached connection: a DATAGRAM frame
/// when the frame fits one (re-sent on a uni stream if lost), else a uni stream.
/// A broadcast frame starts with its u32 big-endian length, so its first byte is
/// 0 for any frame that fits a datagram; a membership datagram starts with its
/// version (1). The receiver tells them apart by that byte.
final class QUICChangesetTransport: ChangesetTransport {
    let peers: PeerConnections
    /// Sends handed to QUIC but not returned yet (for the shutdown flush).
    let inFlight = Atomic<Int>(0)

    /// Whether a datagram or message carries a broadcast frame (first byte 0, see above).
    static func isBroadcastFrame(_ bytes: [UInt8]) -> Bool { bytes.first == 0 }

    init(peers: PeerConnections) { self.peers = peers }

    func send(_ frame: [UInt8], to peer: String) async throws {
        inFlight.add(1, ordering: .relaxed)
        defer { inFlight.subtract(1, ordering: .relaxed) }
        if let c = peers.existing(peer) {
            try await c.sendMessage(frame)
        } else {
            try await peers.connection(to: peer).sendMessage(frame)
        }
    }
}

/// Sync sessions on QUIC bi streams.
struct QUICSyncConnector: SyncConnector {
    let peers: PeerConnections

    func openSyncStream(to peer: String) async throws -> any SyncStream {
        let c = try await peers.connection(to: peer)
        return QUICSyncStream(stream: try await c.openBiStream())
    }
}

struct QUICSyncStream: SyncStream {
    let stream: QUICStream
    func write(_ bytes: [UInt8]) async throws { try await stream.write(bytes) }
    func finish() async throws { try await stream.finish() }
    func read() async throws -> [UInt8]? { try await stream.read() }
}
