import Foundation
import Glibc
import HeapModule
import PatinaCore
import Synchronization

/// One emulated node: a process whose QUIC endpoint is bound at `realAddress`.
public struct WANNode: Sendable, Hashable {
    public var name: String
    /// A region of the topology.
    public var region: String
    /// `a.b.c.d:port` (IPv4), where the node's endpoint is bound.
    public var realAddress: String

    public init(name: String, region: String, realAddress: String) {
        self.name = name
        self.region = region
        self.realAddress = realAddress
    }
}

/// Counters of a running emulator. Lateness is how long after its scheduled time a
/// datagram actually left the relay: the error the emulator itself adds to every delay.
public struct WANStats: Sendable, Equatable, CustomStringConvertible {
    /// Traffic of one direction between two nodes, for node pairs that carried any.
    public struct Flow: Sendable, Equatable {
        public var from: String
        public var to: String
        public var forwarded: UInt64
        public var droppedByLoss: UInt64
    }

    /// Datagrams from known nodes; each is then forwarded, lost or queued, or dropped as
    /// the queue was full.
    public var received: UInt64 = 0
    public var forwarded: UInt64 = 0
    public var droppedByLoss: UInt64 = 0
    public var droppedUnknownSource: UInt64 = 0
    public var droppedQueueFull: UInt64 = 0
    /// Forwarded datagrams the kernel refused to send (counted in `forwarded` too).
    public var sendFailures: UInt64 = 0
    /// In the delay line now.
    public var queued: Int = 0
    public var latenessP50Milliseconds: Double = 0
    public var latenessP99Milliseconds: Double = 0
    public var latenessMaxMilliseconds: Double = 0
    public var flows: [Flow] = []

    public var description: String {
        func ms(_ value: Double) -> String { String(format: "%.3f", value) }
        return "received \(received), forwarded \(forwarded), lost \(droppedByLoss), "
            + "unknown source \(droppedUnknownSource), queue full \(droppedQueueFull), send failures \(sendFailures), "
            + "queued \(queued), lateness p50 \(ms(latenessP50Milliseconds)) ms p99 \(ms(latenessP99Milliseconds)) ms "
            + "max \(ms(latenessMaxMilliseconds)) ms"
    }
}

/// A user-space WAN between the nodes of a local cluster: a UDP relay that delays, jitters,
/// drops and rate-limits datagrams by the regions of their sender and receiver.
///
/// Each node gets a relay address R_i (`relayAddresses`), which it MUST advertise as its
/// external address so that peers dial R_i instead of its real address P_i. The relay
/// translates addresses the way the world would see them: a datagram from P_j arriving at
/// R_i is traffic j→i, and leaves R_j for P_i after the j→i link has done its work. Node i
/// therefore sees node j at R_j — the address j advertises — whether i dialled j or j
/// dialled i, and a reply from P_i to R_j is simply traffic i→j, delivered to P_j from R_i,
/// the address j sent to. One socket per node suffices; a datagram whose source is no
/// node's real address is dropped and counted.
///
/// Links: per direction, loss drops a datagram with the configured probability; on links
/// between regions a rate limit serializes datagrams one after another (a datagram starts
/// when the previous one on that directed link has finished); then the one-way delay plus
/// uniform jitter. Jitter never reorders one node pair's datagrams (a datagram is never due
/// before the previous one of its pair), as real paths rarely reorder and QUIC would count
/// reordering past its packet threshold as loss (RFC 9002 §6.1.1).
///
/// The relay runs on its own thread (at nice -10 where the process may raise priority):
/// non-blocking sockets, ppoll with a nanosecond timeout that sleeps until the next datagram
/// is due, a min-heap of scheduled datagrams.
public final class WANEmulator: Sendable {
    /// Node name → `127.0.0.1:R_i`, bound in `init`.
    public let relayAddresses: [String: String]
    private let relay: WANRelay
    private let lifecycle = Mutex(Lifecycle.idle)

    private enum Lifecycle { case idle, running, stopped }

    /// At most 65535 bytes per datagram (the largest UDP payload); beyond
    /// `maxQueuedDatagrams` waiting in the delay line, arrivals are dropped and counted.
    public init(
        nodes: [WANNode], topology: WANTopology, seed: UInt64 = .random(in: 0...UInt64.max),
        maxQueuedDatagrams: Int = 50_000
    ) throws {
        var names = Set<String>()
        var addresses = Set<IPv4Endpoint>()
        let regionNames = Set(topology.regions.map(\.name))
        var endpoints: [IPv4Endpoint] = []
        for node in nodes {
            guard names.insert(node.name).inserted else { throw WANError(message: "WAN node \(node.name): duplicate name") }
            guard regionNames.contains(node.region) else {
                throw WANError(message: "WAN node \(node.name): region \(node.region) is not in the topology")
            }
            guard let endpoint = IPv4Endpoint(node.realAddress) else {
                throw WANError(message: "WAN node \(node.name): real address \(node.realAddress) is not IPv4 a.b.c.d:port")
            }
            guard addresses.insert(endpoint).inserted else {
                throw WANError(message: "WAN node \(node.name): real address \(node.realAddress) is used by another node")
            }
            endpoints.append(endpoint)
        }
        relay = try WANRelay(
            nodeNames: nodes.map(\.name), realEndpoints: endpoints,
            links: WANLinks(topology: topology, nodeRegions: nodes.map(\.region), seed: seed),
            maxQueuedDatagrams: maxQueuedDatagrams)
        relayAddresses = Dictionary(uniqueKeysWithValues: zip(nodes.map(\.name), relay.relayEndpoints.map(\.description)))
    }

    deinit { stop() }

    /// Starts the relay thread. Datagrams that reached a relay address before are handled then.
    public func start() throws {
        try lifecycle.withLock { state in
            switch state {
            case .idle: state = .running
            case .running: throw WANError(message: "WAN emulator: already started")
            case .stopped: throw WANError(message: "WAN emulator: stopped, cannot start again")
            }
        }
        let relay = self.relay
        let thread = Thread { relay.run() }
        thread.name = "patina-wan"
        thread.start()
    }

    /// Stops the relay thread and closes every socket; queued datagrams are dropped. Returns
    /// once the thread has exited. Safe to call more than once and from any thread.
    public func stop() {
        let previous = lifecycle.withLock { state in
            defer { state = .stopped }
            return state
        }
        switch previous {
        case .idle: relay.close()
        case .running:
            relay.stopAndWait()
            relay.close()
        case .stopped: break
        }
    }

    public var stats: WANStats { relay.stats }
}

/// What the links do to one datagram. A pure value: time is an input, randomness comes
/// from a seeded generator, so a run replays from its seed.
struct WANLinks {
    private let nodeCount: Int
    private let regionCount: Int
    private let regionOfNode: [Int]
    /// One-way delay per ordered region pair, row-major.
    private let delayNanoseconds: [Double]
    private let jitterNanoseconds: Double
    private let loss: Double
    /// 0 when the rate is unlimited.
    private let nanosecondsPerByte: Double
    /// When each directed inter-region link finishes serializing what it has accepted.
    private var serializerFreeAt: [UInt64]
    /// The latest delivery time given to each directed node pair (no reordering).
    private var lastDeliveryAt: [UInt64]
    private var random: SplitMix64

    /// `nodeRegions[i]` is node i's region; every one MUST be a region of `topology`.
    init(topology: WANTopology, nodeRegions: [String], seed: UInt64) {
        let names = topology.regions.map(\.name)
        nodeCount = nodeRegions.count
        regionCount = names.count
        regionOfNode = nodeRegions.map { names.firstIndex(of: $0)! }
        delayNanoseconds = names.flatMap { from in
            names.map { to in topology.oneWayMilliseconds(from: from, to: to) * 1_000_000 }
        }
        jitterNanoseconds = topology.jitterMilliseconds * 1_000_000
        loss = topology.loss
        nanosecondsPerByte = topology.rateMegabitsPerSecond > 0 ? 8_000 / topology.rateMegabitsPerSecond : 0
        serializerFreeAt = Array(repeating: 0, count: regionCount * regionCount)
        lastDeliveryAt = Array(repeating: 0, count: nodeCount * nodeCount)
        random = SplitMix64(seed: seed)
    }

    /// When a datagram of `bytes` from node `from`, arriving `now`, is due at node `to`;
    /// nil when the link loses it.
    mutating func admit(from: Int, to: Int, bytes: Int, now: UInt64) -> UInt64? {
        if loss > 0, Double.random(in: 0..<1, using: &random) < loss { return nil }
        let fromRegion = regionOfNode[from]
        let toRegion = regionOfNode[to]
        let link = fromRegion * regionCount + toRegion
        var departure = now
        if nanosecondsPerByte > 0, fromRegion != toRegion {
            departure = max(now, serializerFreeAt[link]) + UInt64(Double(bytes) * nanosecondsPerByte)
            serializerFreeAt[link] = departure
        }
        var delay = delayNanoseconds[link]
        if jitterNanoseconds > 0 { delay += Double.random(in: -jitterNanoseconds...jitterNanoseconds, using: &random) }
        let flow = from * nodeCount + to
        let due = max(departure + UInt64(max(delay, 0)), lastDeliveryAt[flow])
        lastDeliveryAt[flow] = due
        return due
    }
}

/// A datagram in the delay line, ordered by due time, then by arrival.
private struct ScheduledDatagram: Comparable {
    let due: UInt64
    let sequence: UInt64
    let from: Int
    let to: Int
    let bytes: [UInt8]

    static func < (a: Self, b: Self) -> Bool { (a.due, a.sequence) < (b.due, b.sequence) }
    static func == (a: Self, b: Self) -> Bool { a.due == b.due && a.sequence == b.sequence }
}

/// Lateness in buckets of 5 µs up to 100 ms; beyond that only the maximum is exact.
private struct LatenessHistogram {
    static let bucketNanoseconds: UInt64 = 5_000
    private var buckets = [UInt64](repeating: 0, count: 20_000)
    private var count: UInt64 = 0
    private(set) var maxNanoseconds: UInt64 = 0

    mutating func record(_ nanoseconds: UInt64) {
        buckets[min(Int(nanoseconds / Self.bucketNanoseconds), buckets.count - 1)] += 1
        count += 1
        maxNanoseconds = max(maxNanoseconds, nanoseconds)
    }

    /// The upper edge of the bucket holding the `fraction` quantile, in milliseconds.
    func quantileMilliseconds(_ fraction: Double) -> Double {
        guard count > 0 else { return 0 }
        let rank = UInt64((Double(count) * fraction).rounded(.up))
        var seen: UInt64 = 0
        for (index, n) in buckets.enumerated() {
            seen += n
            if seen >= rank {
                let edge = UInt64(index + 1) * Self.bucketNanoseconds
                return Double(index == buckets.count - 1 ? maxNanoseconds : min(edge, maxNanoseconds)) / 1e6
            }
        }
        return Double(maxNanoseconds) / 1e6
    }
}

private struct RelayCounters {
    var received: UInt64 = 0
    var forwarded: UInt64 = 0
    var droppedByLoss: UInt64 = 0
    var droppedUnknownSource: UInt64 = 0
    var droppedQueueFull: UInt64 = 0
    var sendFailures: UInt64 = 0
    var queued = 0
    /// Per directed node pair, row-major.
    var forwardedByFlow: [UInt64]
    var lostByFlow: [UInt64]
    var lateness = LatenessHistogram()

    init(nodeCount: Int) {
        forwardedByFlow = Array(repeating: 0, count: nodeCount * nodeCount)
        lostByFlow = forwardedByFlow
    }
}

/// The relay's sockets and delay line.
///
/// `@unchecked Sendable`: `links`, `queue`, `sequence`, `pollSet` and `buffer` are touched
/// only by the relay thread while it runs, and by `close` after `stopAndWait` has seen the
/// thread exit (`exitCondition` orders the two), or before any thread started. Other
/// threads only read `counters` (a Mutex), set `stopRequested` (an Atomic) and wait for
/// `hasExited`, which is only touched under `exitCondition`.
private final class WANRelay: @unchecked Sendable {
    let relayEndpoints: [IPv4Endpoint]
    private let nodeNames: [String]
    private let sockets: [UDPSocket]
    private let realEndpoints: [IPv4Endpoint]
    private let nodeByRealEndpoint: [IPv4Endpoint: Int]
    private let wake: WakePipe
    private let maxQueuedDatagrams: Int
    private var links: WANLinks
    private var queue = Heap<ScheduledDatagram>()
    private var sequence: UInt64 = 0
    /// One entry per relay socket (index = node), then the wake pipe.
    private var pollSet: PollSet
    private let buffer = DatagramBuffer()
    private let counters: Mutex<RelayCounters>
    private let stopRequested = Atomic(false)
    private let exitCondition = NSCondition()
    private var hasExited = false

    /// Datagrams read from one socket before the loop looks at deadlines again, so a flood
    /// on one address cannot make others' datagrams late.
    private static let readBudget = 64

    init(nodeNames: [String], realEndpoints: [IPv4Endpoint], links: WANLinks, maxQueuedDatagrams: Int) throws {
        self.nodeNames = nodeNames
        self.realEndpoints = realEndpoints
        self.links = links
        self.maxQueuedDatagrams = maxQueuedDatagrams
        nodeByRealEndpoint = Dictionary(uniqueKeysWithValues: realEndpoints.enumerated().map { ($1, $0) })
        counters = Mutex(RelayCounters(nodeCount: nodeNames.count))
        var sockets: [UDPSocket] = []
        do {
            for _ in nodeNames { sockets.append(try UDPSocket.bind(IPv4Endpoint("127.0.0.1:0")!)) }
            wake = try WakePipe()
        } catch {
            for socket in sockets { socket.close() }
            throw error
        }
        self.sockets = sockets
        relayEndpoints = sockets.map(\.localEndpoint)
        pollSet = PollSet(sockets.map(\.fd) + [wake.readFD])
    }

    func run() {
        raiseThreadPriority()
        while !stopRequested.load(ordering: .acquiring) {
            sendDue()
            waitForTraffic()
            receive()
        }
        exitCondition.lock()
        hasExited = true
        exitCondition.broadcast()
        exitCondition.unlock()
    }

    func stopAndWait() {
        stopRequested.store(true, ordering: .releasing)
        wake.signal()
        exitCondition.lock()
        while !hasExited { exitCondition.wait() }
        exitCondition.unlock()
    }

    func close() {
        for socket in sockets { socket.close() }
        wake.close()
        queue = Heap()
        counters.withLock { $0.queued = 0 }
    }

    var stats: WANStats {
        counters.withLock { c in
            var stats = WANStats(
                received: c.received, forwarded: c.forwarded, droppedByLoss: c.droppedByLoss,
                droppedUnknownSource: c.droppedUnknownSource, droppedQueueFull: c.droppedQueueFull,
                sendFailures: c.sendFailures, queued: c.queued,
                latenessP50Milliseconds: c.lateness.quantileMilliseconds(0.5),
                latenessP99Milliseconds: c.lateness.quantileMilliseconds(0.99),
                latenessMaxMilliseconds: Double(c.lateness.maxNanoseconds) / 1e6)
            let n = nodeNames.count
            for from in 0..<n {
                for to in 0..<n where c.forwardedByFlow[from * n + to] + c.lostByFlow[from * n + to] > 0 {
                    stats.flows.append(WANStats.Flow(
                        from: nodeNames[from], to: nodeNames[to],
                        forwarded: c.forwardedByFlow[from * n + to], droppedByLoss: c.lostByFlow[from * n + to]))
                }
            }
            return stats
        }
    }

    // MARK: The loop (relay thread only)

    private func sendDue() {
        while let next = queue.min {
            let now = monotonicNanoseconds()
            guard next.due <= now else { return }
            _ = queue.popMin()
            let sent = sockets[next.from].send(next.bytes, to: realEndpoints[next.to])
            let queued = queue.count
            counters.withLock { c in
                c.forwarded += 1
                c.forwardedByFlow[next.from * nodeNames.count + next.to] += 1
                if !sent { c.sendFailures += 1 }
                c.lateness.record(now - next.due)
                c.queued = queued
            }
        }
    }

    private func waitForTraffic() {
        var timeout: UInt64?
        if let next = queue.min {
            let now = monotonicNanoseconds()
            timeout = next.due > now ? next.due - now : 0
        }
        guard pollSet.wait(timeoutNanoseconds: timeout) else { return }
        if pollSet.isSignalled(sockets.count) { wake.drain() }
    }

    private func receive() {
        for to in sockets.indices where pollSet.isReadable(to) {
            for _ in 0..<Self.readBudget {
                guard let datagram = buffer.receive(from: sockets[to]) else { break }
                guard let from = nodeByRealEndpoint[datagram.from] else {
                    counters.withLock { $0.droppedUnknownSource += 1 }
                    continue
                }
                admit(from: from, to: to, bytes: datagram.bytes)
            }
        }
    }

    private func admit(from: Int, to: Int, bytes: [UInt8]) {
        guard queue.count < maxQueuedDatagrams else {
            counters.withLock { c in
                c.received += 1
                c.droppedQueueFull += 1
            }
            return
        }
        guard let due = links.admit(from: from, to: to, bytes: bytes.count, now: monotonicNanoseconds()) else {
            counters.withLock { c in
                c.received += 1
                c.droppedByLoss += 1
                c.lostByFlow[from * nodeNames.count + to] += 1
            }
            return
        }
        sequence += 1
        queue.insert(ScheduledDatagram(
            due: due, sequence: sequence, from: from, to: to, bytes: bytes))
        let queued = queue.count
        counters.withLock { c in
            c.received += 1
            c.queued = queued
        }
    }
}
