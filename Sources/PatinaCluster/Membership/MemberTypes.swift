import PatinaCore

// Glossary (used with exactly these meanings throughout Membership/):
// - Member: another node this node knows about, identified by its ActorID, reachable
//   at an address "host:port", optionally labelled with a region.
// - Status: alive, suspect or down (SWIM §4.2 with the suspicion sub-protocol).
// - Incarnation: a counter only the member itself increases, to refute suspicion
//   (SWIM §4.2). Together with the status it orders what is known about a member.
// - Update: one piece of gossip, "member M is <status> at incarnation i".
// - Instance (`MembershipState`): the pure SWIM rules. Shell (`MembershipShell`): the
//   actor that runs them on a clock and a transport. Directive: what the instance
//   asks the shell to do.

/// The status of a member as seen by one node.
public enum MemberStatus: UInt8, Sendable, Hashable, CustomStringConvertible {
    case alive = 0
    case suspect = 1
    case down = 2

    public var description: String {
        switch self {
        case .alive: "alive"
        case .suspect: "suspect"
        case .down: "down"
        }
    }
}

/// One piece of membership gossip: "member `id` at `address` is `status` at
/// `incarnation`". For a suspicion, `suspectedBy` names the node that raised it, so
/// receivers can count independent confirmations (Lifeguard §IV-B).
public struct MemberUpdate: Sendable, Hashable {
    public var id: ActorID
    public var address: String
    public var region: String?
    public var incarnation: UInt64
    public var status: MemberStatus
    public var suspectedBy: ActorID?

    public init(
        id: ActorID, address: String, region: String? = nil, incarnation: UInt64,
        status: MemberStatus, suspectedBy: ActorID? = nil
    ) {
        self.id = id
        self.address = address
        self.region = region
        self.incarnation = incarnation
        self.status = status
        self.suspectedBy = status == .suspect ? suspectedBy : nil
    }

    /// Whether `self` carries newer knowledge than (`incarnation`, `status`): a higher
    /// incarnation wins; at equal incarnations suspect beats alive and down beats both.
    /// Unlike the SWIM paper, down does not beat a *higher* incarnation: a node that
    /// learns it was declared down refutes with incarnation + 1 and is alive again, so a
    /// false positive (or a restart) heals without a new identity.
    public func supersedes(incarnation: UInt64, status: MemberStatus) -> Bool {
        if self.incarnation != incarnation { return self.incarnation > incarnation }
        return self.status.rawValue > status.rawValue
    }
}

/// The identity a node puts on every message it sends.
public struct MemberIdentity: Sendable, Hashable {
    public var id: ActorID
    public var address: String
    public var region: String?
    public var incarnation: UInt64

    public init(id: ActorID, address: String, region: String? = nil, incarnation: UInt64 = 0) {
        self.id = id
        self.address = address
        self.region = region
        self.incarnation = incarnation
    }
}

/// Round-trip-time statistics of one member: the minimum of the last 20 samples (as
/// Corrosion uses for its RTT rings) and an exponentially smoothed value (RFC 6298
/// §2, alpha = 1/8).
public struct RTTStats: Sendable, Hashable {
    public static let window = 20
    private var samples: [Duration] = []
    private var next = 0
    public private(set) var smoothed: Duration?
    public private(set) var min: Duration?

    public init() {}

    public var sampleCount: Int { samples.count }

    public mutating func record(_ sample: Duration) {
        guard sample >= .zero else { return }
        if samples.count < Self.window {
            samples.append(sample)
        } else {
            samples[next] = sample
            next = (next + 1) % Self.window
        }
        min = samples.min()
        if let s = smoothed {
            smoothed = s * 0.875 + sample * 0.125
        } else {
            smoothed = sample
        }
    }
}

/// What a caller can see of a member: a snapshot, not a live view.
public struct MemberInfo: Sendable, Hashable {
    public var id: ActorID
    public var address: String
    public var region: String?
    public var status: MemberStatus
    public var incarnation: UInt64
    public var rttMin: Duration?
    public var rttSmoothed: Duration?

    public init(
        id: ActorID, address: String, region: String?, status: MemberStatus, incarnation: UInt64,
        rttMin: Duration? = nil, rttSmoothed: Duration? = nil
    ) {
        self.id = id
        self.address = address
        self.region = region
        self.status = status
        self.incarnation = incarnation
        self.rttMin = rttMin
        self.rttSmoothed = rttSmoothed
    }
}
