import Foundation
import PatinaCluster
import PatinaCore

// Helpers shared by the membership tests: identities, a binary heap, and a seeded
// discrete-event network that runs many `MembershipState` instances on virtual time.

func testActor(_ n: Int) -> ActorID {
    var bytes = [UInt8](repeating: 0, count: 16)
    var v = UInt64(n) &+ 1
    for i in 0..<8 {
        bytes[15 - i] = UInt8(truncatingIfNeeded: v)
        v >>= 8
    }
    bytes[0] = 0xA5
    return ActorID(bytes: bytes)!
}

func testAddress(_ n: Int) -> String { "10.\(n / 65536).\((n / 256) % 256).\(n % 256):4001" }

func ms(_ value: UInt64) -> UInt64 { value * 1000 }

/// A min-heap on `(time, sequence)`: ties keep insertion order, so runs are exact replays.
struct EventHeap {
    struct Event {
        var time: UInt64
        var sequence: UInt64
        var node: Int32
        /// Index into the payload store, or `tick` / `start`.
        var payload: Int32
    }

    private(set) var items: [Event] = []
    var count: Int { items.count }

    private static func less(_ a: Event, _ b: Event) -> Bool {
        a.time != b.time ? a.time < b.time : a.sequence < b.sequence
    }

    mutating func push(_ e: Event) {
        items.append(e)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard Self.less(items[i], items[parent]) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    var first: Event? { items.first }

    mutating func pop() -> Event? {
        guard !items.isEmpty else { return nil }
        let top = items[0]
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            let n = items.count
            while true {
                let l = 2 * i + 1
                let r = l + 1
                var m = i
                if l < n, Self.less(items[l], items[m]) { m = l }
                if r < n, Self.less(items[r], items[m]) { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
        }
        return top
    }
}

/// Many membership instances on one virtual clock, linked by a lossy network with a
/// random delay. Single-threaded and seeded: the same seed replays the same run.
final class SimNetwork {
    static let tick: Int32 = -1
    static let start: Int32 = -2

    var config: MembershipConfig
    private(set) var nodes: [MembershipState?] = []
    private(set) var alive: [Bool] = []
    private var addressIndex: [String: Int] = [:]
    private var heap = EventHeap()
    private var payloads: [MembershipMessage?] = []
    private var freePayloads: [Int32] = []
    private var sequence: UInt64 = 0
    private var rng: SplitMix64
    private(set) var now: UInt64 = 0

    var lossRate: Double = 0
    var minDelay: UInt64 = ms(1)
    var maxDelay: UInt64 = ms(1)
    /// Round-trip every message through the codec (slower; proves sizes and format).
    var encodeMessages = false
    /// Extra drop rule, e.g. a partition: (from, to) -> drop.
    var dropRule: ((Int, Int) -> Bool)?
    var onChange: ((_ observer: Int, _ member: MemberInfo, _ from: MemberStatus?, _ to: MemberStatus?, _ at: UInt64) -> Void)?
    var onRefused: ((_ node: Int, _ reason: String) -> Void)?

    private(set) var messagesSent = 0
    private(set) var messagesDropped = 0
    private(set) var maxEncodedSize = 0
    private(set) var sentByKind: [String: Int] = [:]

    init(config: MembershipConfig, seed: UInt64) {
        self.config = config
        self.rng = SplitMix64(seed: seed)
    }

    /// Adds node `nodes.count` (not started yet); returns its index.
    @discardableResult
    func addNode(bootstrap: [Int], config: MembershipConfig? = nil, region: String? = nil) -> Int {
        let i = nodes.count
        let me = MemberIdentity(id: testActor(i), address: testAddress(i), region: region)
        nodes.append(
            MembershipState(
                myself: me, config: config ?? self.config, bootstrap: bootstrap.map(testAddress),
                seed: UInt64(i) &* 0x9E37_79B9 &+ 17))
        alive.append(true)
        addressIndex[me.address] = i
        return i
    }

    func start(_ node: Int, at time: UInt64) {
        push(time: time, node: node, payload: Self.start)
    }

    func kill(_ node: Int) { alive[node] = false }

    func state(_ node: Int) -> MembershipState { nodes[node]! }

    func run(until end: UInt64) {
        while let e = heap.first, e.time <= end {
            _ = heap.pop()
            now = e.time
            let i = Int(e.node)
            if e.payload >= 0 {
                let m = payloads[Int(e.payload)]!
                payloads[Int(e.payload)] = nil
                freePayloads.append(e.payload)
                guard alive[i] else { continue }
                let out = nodes[i]!.onMessage(m, now: now)
                execute(out, node: i)
            } else if alive[i] {
                let out = e.payload == Self.start ? nodes[i]!.start(now: now) : nodes[i]!.onTick(now: now)
                execute(out, node: i)
            }
        }
        now = max(now, end)
    }

    /// Runs in steps of `step` until `done()` holds (returns that virtual time) or
    /// `deadline` passes (returns nil).
    func run(until deadline: UInt64, step: UInt64 = ms(10), done: () -> Bool) -> UInt64? {
        while true {
            if done() { return now }
            if now >= deadline { return nil }
            run(until: min(deadline, now + step))
        }
    }

    private func push(time: UInt64, node: Int, payload: Int32) {
        sequence += 1
        heap.push(EventHeap.Event(time: time, sequence: sequence, node: Int32(node), payload: payload))
    }

    private func execute(_ directives: [MembershipDirective], node: Int) {
        for d in directives {
            switch d {
            case .send(let message, let address):
                send(message, from: node, to: address)
            case .scheduleTick(let at):
                push(time: max(at, now), node: node, payload: Self.tick)
            case .membershipChanged(let member, let from, let to):
                onChange?(node, member, from, to, now)
            case .refused(_, let reason):
                onRefused?(node, reason)
            }
        }
    }

    private func send(_ message: MembershipMessage, from: Int, to address: String) {
        messagesSent += 1
        let kind: String
        switch message.body {
        case .ping: kind = "ping"
        case .ack: kind = "ack"
        case .nack: kind = "nack"
        case .pingRequest: kind = "ping-req"
        case .announce: kind = "announce"
        case .snapshot: kind = "snapshot"
        case .gossip: kind = "gossip"
        }
        sentByKind[kind, default: 0] += 1
        var message = message
        if encodeMessages {
            let bytes = MembershipCodec.encode(message)
            maxEncodedSize = max(maxEncodedSize, bytes.count)
            message = try! MembershipCodec.decode(bytes)
        }
        guard let to = addressIndex[address] else { return }
        if lossRate > 0, Double.random(in: 0..<1, using: &rng) < lossRate {
            messagesDropped += 1
            return
        }
        if let rule = dropRule, rule(from, to) {
            messagesDropped += 1
            return
        }
        let delay = minDelay == maxDelay ? minDelay : UInt64.random(in: minDelay...maxDelay, using: &rng)
        let slot: Int32
        if let free = freePayloads.popLast() {
            slot = free
            payloads[Int(slot)] = message
        } else {
            slot = Int32(payloads.count)
            payloads.append(message)
        }
        push(time: now + delay, node: to, payload: slot)
    }

    /// For each live node, the ids of the members it holds alive or suspect.
    func liveView(_ node: Int) -> Set<ActorID> {
        Set(nodes[node]!.members.filter { $0.status != .down }.map(\.id))
    }
}
