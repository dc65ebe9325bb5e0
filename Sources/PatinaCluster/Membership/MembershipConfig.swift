/// Parameters of the membership protocol. The defaults suit a LAN or loopback:
/// a dead member of a small cluster is declared down in about 2 s (probe every
/// 500 ms, ack within 300 ms, indirect probes until the end of the period, then a
/// suspicion of 1–2 s), and a joining node learns the whole membership from the
/// first answer to its announce.
///
/// For a WAN, scale `probeInterval`, `probeTimeout` and `indirectProbeTimeout`
/// together (Corrosion's foca WAN preset probes every 5 s with a 3 s RTT budget).
public struct MembershipConfig: Sendable, Hashable {
    /// Messages whose cluster id differs are refused (never added, never answered).
    public var clusterID: UInt16

    /// Time between two probes started by this node (SWIM §3.1 "protocol period").
    public var probeInterval: Duration = .milliseconds(500)
    /// How long to wait for the direct ack before asking `indirectProbes` members.
    public var probeTimeout: Duration = .milliseconds(300)
    /// How long, after the indirect probes are sent, to wait for any ack before
    /// suspecting the target. Also the relay's wait before it answers with a nack.
    public var indirectProbeTimeout: Duration = .milliseconds(200)
    /// Members asked to probe on our behalf (SWIM §3.1 "k").
    public var indirectProbes: Int = 3

    /// Suspicion timeout (Lifeguard §IV-B): the minimum is
    /// `suspicionMultiplier · max(1, log10(n)) · probeInterval`; without confirmations
    /// the timeout is `suspicionMaxMultiplier` times that, shrinking logarithmically to
    /// the minimum as `expectedConfirmations` independent suspicions arrive.
    public var suspicionMultiplier: Double = 2
    public var suspicionMaxMultiplier: Double = 2
    public var expectedConfirmations: Int = 3

    /// Each update is piggybacked `retransmitMultiplier · ceil(log10(n + 1))` times
    /// (memberlist's "RetransmitMult", SWIM §4.1 "λ log n").
    public var retransmitMultiplier: Int = 4
    /// Members a gossip round goes to.
    public var gossipFanout: Int = 3
    /// Gossip rounds happen this often while there is something to gossip.
    public var gossipInterval: Duration = .milliseconds(200)
    /// News (a new member, a status change) is gossiped at once, but rounds are at
    /// least this far apart, so a burst of news shares messages.
    public var eagerGossipSpacing: Duration = .milliseconds(20)

    /// Announce to a random bootstrap address or member this often (heals partitions,
    /// repairs missed gossip: the answer is a full snapshot).
    public var announceInterval: Duration = .seconds(30)
    /// While no member is alive, announce to the bootstrap list this often.
    public var rejoinInterval: Duration = .seconds(1)
    /// At most this many bootstrap addresses are announced to at once.
    public var announceFanout: Int = 3

    /// For this long after a member goes down, about one probe in four also sends it
    /// its down status, so a member that is in fact alive refutes soon.
    public var deadGossipWindow: Duration = .seconds(30)

    /// A down member is forgotten this long after it went down (Corrosion: 2 days).
    public var downRemovalAfter: Duration = .seconds(48 * 3600)

    /// Every encoded message fits in this many bytes (a QUIC DATAGRAM frame payload).
    public var maxMessageSize: Int = 1100

    /// Record the time from ping to direct ack as an RTT sample of the target. Turn
    /// off when the shell feeds better samples (QUIC's own RTT estimate).
    public var recordProbeRTT: Bool = true

    public init(clusterID: UInt16 = 0) {
        self.clusterID = clusterID
    }
}

extension Duration {
    /// Whole microseconds, saturating at zero; the state machine's time unit.
    var membershipMicros: UInt64 {
        let (s, atto) = components
        let value = s * 1_000_000 + atto / 1_000_000_000_000
        return value < 0 ? 0 : UInt64(value)
    }

    static func membershipMicros(_ value: UInt64) -> Duration { .microseconds(Int64(clamping: value)) }
}
