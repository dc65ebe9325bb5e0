// Configuration and error types of the QUIC transport (see ../../shared/DESIGN.md, "QUIC transport").

/// Mutual TLS material, as PEM files. Every Patina connection presents `certificatePath`
/// and accepts only a peer whose certificate chains to `caPath` (the cluster CA).
public struct QUICTLSConfig: Sendable, Hashable {
    public var certificatePath: String
    public var privateKeyPath: String
    public var caPath: String

    public init(certificatePath: String, privateKeyPath: String, caPath: String) {
        self.certificatePath = certificatePath
        self.privateKeyPath = privateKeyPath
        self.caPath = caPath
    }
}

/// Settings of one endpoint; they apply to the connections it accepts and the ones it dials.
public struct QUICEndpointConfig: Sendable {
    public var tls: QUICTLSConfig
    /// ALPN protocol; node-to-node traffic uses `patina/1`.
    public var alpn: String = "patina/1"
    /// A connection with no packet for this long is gone (RFC 9000 §10.1).
    public var idleTimeout: Duration = .seconds(30)
    /// PING after this much quiet so that idle connections stay open; nil disables it.
    /// MUST be shorter than `idleTimeout` to have an effect.
    public var keepAliveInterval: Duration? = .seconds(10)
    /// RTT assumed before the first sample (RFC 9002 §6.2.2). The RFC's 333 ms suits unknown
    /// Internet paths; a cluster's links are known to be far shorter, and with 333 ms ngtcp2
    /// paces the server's second handshake datagram ~25 ms apart even on loopback.
    public var initialRTT: Duration = .milliseconds(50)
    /// How long a handshake may take before the attempt fails.
    public var handshakeTimeout: Duration = .seconds(10)
    /// Streams the peer may open at once.
    public var maxIncomingBidiStreams: UInt64 = 256
    public var maxIncomingUniStreams: UInt64 = 1024
    /// Initial flow-control windows; ngtcp2 grows them up to the max values while the reader keeps up.
    public var initialStreamWindow: UInt64 = 256 * 1024
    public var initialConnectionWindow: UInt64 = 1024 * 1024
    public var maxStreamWindow: UInt64 = 16 * 1024 * 1024
    public var maxConnectionWindow: UInt64 = 24 * 1024 * 1024
    /// Bytes a stream may hold unacknowledged before `write` suspends.
    public var streamSendBuffer: Int = 1024 * 1024
    /// Largest DATAGRAM frame accepted (RFC 9221 §3, max_datagram_frame_size); 0 disables datagrams.
    public var maxDatagramFrameSize: UInt64 = 1200
    /// Received datagrams kept for a slow reader; older ones are dropped beyond this.
    public var datagramReceiveBuffer: Int = 1024
    /// Datagrams queued for sending before `sendDatagram` suspends.
    public var datagramSendQueue: Int = 256
    /// Connections accepted but not yet taken from `incomingConnections`.
    public var acceptBacklog: Int = 128

    public init(tls: QUICTLSConfig) { self.tls = tls }
}

/// A transport failure. A struct over a private code so that cases can be added.
public struct QUICError: Error, Sendable, Hashable, CustomStringConvertible {
    enum Code: Sendable, Hashable {
        case configuration, socket, handshakeRefused, peerRefusedHandshake, handshakeTimeout,
            idleTimeout, closedByPeer, closedLocally, streamReset, protocolViolation,
            endpointClosed, datagramTooLarge, datagramsUnsupported, connectionFailed
    }

    let code: Code
    /// Human-readable reason, e.g. "server certificate expired".
    public let reason: String
    /// The QUIC error code carried by CONNECTION_CLOSE / RESET_STREAM, when one applies.
    public let errorCode: UInt64?

    init(_ code: Code, _ reason: String, errorCode: UInt64? = nil) {
        self.code = code
        self.reason = reason
        self.errorCode = errorCode
    }

    public static let configuration = QUICError(.configuration, "")
    public var description: String {
        let label: String = switch code {
        case .configuration: "configuration error"
        case .socket: "socket error"
        case .handshakeRefused: "TLS handshake refused"
        case .peerRefusedHandshake: "peer refused the TLS handshake"
        case .handshakeTimeout: "handshake timed out"
        case .idleTimeout: "idle timeout"
        case .closedByPeer: "connection closed by peer"
        case .closedLocally: "connection closed"
        case .streamReset: "stream reset"
        case .protocolViolation: "protocol error"
        case .endpointClosed: "endpoint closed"
        case .datagramTooLarge: "datagram too large"
        case .datagramsUnsupported: "datagrams not supported by peer"
        case .connectionFailed: "connection failed"
        }
        return reason.isEmpty ? label : "\(label): \(reason)"
    }

    /// True when the handshake was refused by either side (certificate, CA, name, ALPN).
    public var isHandshakeRefusal: Bool { code == .handshakeRefused || code == .peerRefusedHandshake }
    public var isIdleTimeout: Bool { code == .idleTimeout }
}

/// Per-connection statistics. RTTs come from ngtcp2's estimator (RFC 9002 §5);
/// byte and packet counts are UDP payloads counted by the endpoint.
public struct QUICConnectionStats: Sendable, Hashable {
    public var smoothedRTT: Duration
    public var minRTT: Duration
    public var latestRTT: Duration
    public var congestionWindow: UInt64
    public var bytesInFlight: UInt64
    public var bytesSent: UInt64
    public var bytesReceived: UInt64
    public var packetsSent: UInt64
    public var packetsReceived: UInt64
    /// ngtcp2 0.12 exposes no lost-packet counter; these are the losses it does report:
    /// probe timeouts fired and DATAGRAM frames declared lost.
    public var probeTimeouts: UInt64
    public var datagramsLost: UInt64
    /// Message datagrams (`QUICConnection.sendMessage`) declared lost, or presumed lost, and
    /// sent again on a stream.
    public var messagesResent: UInt64
    /// Message datagrams neither acknowledged nor declared lost within three probe timeouts
    /// (half a second at least), taken for lost and re-sent as the others (ngtcp2 0.12
    /// leaves some losses unreported; see `ConnectionCore.messageGiveUpPTOs`).
    public var messagesPresumedLost: UInt64
    /// UDP sends the kernel refused (socket buffer full), which QUIC recovers as loss.
    public var sendDrops: UInt64
}

extension Duration {
    var nanoseconds: UInt64 {
        let (s, a) = components
        return UInt64(max(0, s)) * 1_000_000_000 + UInt64(max(0, a / 1_000_000_000))
    }
}
