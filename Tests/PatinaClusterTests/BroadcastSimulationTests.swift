import Dispatch
@testable import PatinaCluster
import PatinaCore
import Testing

/// Hundreds of virtual nodes, each a pure ``BroadcastStateMachine``, on a
/// discrete-event network with regional RTTs, message loss and dead members.
/// Seeded: a failure replays exactly.
@Suite struct BroadcastSimulationTests {
    struct Event {
        enum Kind {
            case deliver(to: Int, from: Int, changesets: [Changeset], hop: Int)
            case completed(node: Int, peer: Int, ok: Bool)
            case tick(node: Int)
        }
        var at: Duration
        var seq: Int
        var kind: Kind
    }

    /// A binary min-heap on (time, insertion order).
    struct EventQueue {
        private var heap: [Event] = []
        private var seq = 0
        var isEmpty: Bool { heap.isEmpty }

        mutating func push(_ at: Duration, _ kind: Event.Kind) {
            seq += 1
            heap.append(Event(at: at, seq: seq, kind: kind))
            var i = heap.count - 1
            while i > 0 {
                let p = (i - 1) / 2
                guard less(heap[i], heap[p]) else { break }
                heap.swapAt(i, p)
                i = p
            }
        }

        mutating func pop() -> Event? {
            guard !heap.isEmpty else { return nil }
            heap.swapAt(0, heap.count - 1)
            let top = heap.removeLast()
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < heap.count && less(heap[l], heap[m]) { m = l }
                if r < heap.count && less(heap[r], heap[m]) { m = r }
                if m == i { break }
                heap.swapAt(i, m)
                i = m
            }
            return top
        }

        private func less(_ a: Event, _ b: Event) -> Bool { a.at != b.at ? a.at < b.at : a.seq < b.seq }
    }

    struct Outcome: Sendable {
        var reachedAll: Bool
        var missing: Int
        var p50: Duration
        var p99: Duration
        var maxTime: Duration
        var maxHops: Int
        var sends: Int
        var duplicates: Int
        var lost: Int
    }

    /// Runs `commits` broadcasts (one changeset each, from random live origins,
    /// 50 ms apart) through `nodeCount` nodes in 5 regions.
    static func simulate(nodeCount: Int, seed: UInt64, loss: Double, deadFraction: Double, commits: Int) -> Outcome {
        var rng = SplitMix64(seed: seed)
        let regions = 5
        let region = (0..<nodeCount).map { _ in Int(rng.next() % UInt64(regions)) }
        // Inter-region RTTs 30…150 ms, intra-region 1…4 ms (per pair, fixed).
        var regionRTT = [[Duration]](repeating: [Duration](repeating: .zero, count: regions), count: regions)
        for i in 0..<regions {
            for j in i..<regions {
                let ms = i == j ? 2 : 30 + Int(rng.next() % 120)
                regionRTT[i][j] = .milliseconds(ms)
                regionRTT[j][i] = .milliseconds(ms)
            }
        }
        func rtt(_ a: Int, _ b: Int) -> Duration {
            let base = regionRTT[region[a]][region[b]]
            let spread = Duration.microseconds(Int64((a * 7919 + b * 104_729) % 2000))
            return base + spread
        }
        var dead = Set<Int>()
        while Double(dead.count) < deadFraction * Double(nodeCount) {
            dead.insert(Int(rng.next() % UInt64(nodeCount)))
        }
        let actors = (0..<nodeCount).map { i in ActorID(bytes: withUnsafeBytes(of: UInt64(i + 1).bigEndian) { Array($0) } + [UInt8](repeating: 7, count: 8))! }
        var machines: [BroadcastStateMachine] = (0..<nodeCount).map { i in
            var m = BroadcastStateMachine(localActor: actors[i], rng: SplitMix64(seed: seed &+ UInt64(i) &* 0x9E37))
            // Everyone, dead ones included: failure detection lags in real life.
            _ = m.membersChanged((0..<nodeCount).filter { $0 != i }.map { BroadcastMember(id: String($0), rtt: rtt(i, $0)) })
            return m
        }
        var queue = EventQueue()
        var scheduledTick = [Duration?](repeating: nil, count: nodeCount)
        var firstSeen: [[Duration?]] = []  // per commit, per node
        var hops = [[Int]](repeating: [Int](repeating: 0, count: nodeCount), count: commits)
        var commitOf: [ActorID: Int] = [:]
        var sends = 0
        var lost = 0
        var nodeHop = [[ActorID: Int]](repeating: [:], count: nodeCount)

        func execute(_ directives: [BroadcastDirective], node: Int, now: Duration, queue: inout EventQueue) {
            for d in directives {
                switch d {
                case .send(let to, let changesets):
                    let peer = Int(to)!
                    sends += 1
                    let oneWay = rtt(node, peer) / 2
                    let hop = (changesets.first.flatMap { nodeHop[node][$0.actor] } ?? 0) + 1
                    if dead.contains(peer) || Double(rng.next() >> 11) / Double(1 << 53) < loss {
                        lost += 1
                        queue.push(now + rtt(node, peer) * 2, .completed(node: node, peer: peer, ok: false))
                    } else {
                        queue.push(now + oneWay, .deliver(to: peer, from: node, changesets: changesets, hop: hop))
                        queue.push(now + oneWay, .completed(node: node, peer: peer, ok: true))
                    }
                case .apply(let changesets):
                    for c in changesets {
                        if let k = commitOf[c.actor], firstSeen[k][node] == nil { firstSeen[k][node] = now }
                    }
                case .scheduleTick(let after):
                    let at = now + after
                    if scheduledTick[node] == nil || at < scheduledTick[node]! {
                        scheduledTick[node] = at
                        queue.push(at, .tick(node: node))
                    }
                }
            }
        }

        var origins: [Int] = []
        for _ in 0..<commits {
            var origin = Int(rng.next() % UInt64(nodeCount))
            while dead.contains(origin) { origin = (origin + 1) % nodeCount }
            origins.append(origin)
            firstSeen.append([Duration?](repeating: nil, count: nodeCount))
        }
        // Commits are injected as events at 50 ms spacing, tracked by actor.
        var pendingCommits = Array(0..<commits)
        var now = Duration.zero
        var nextCommitAt = Duration.zero
        while true {
            if let k = pendingCommits.first, queue.isEmpty || nextCommitAt <= now {
                pendingCommits.removeFirst()
                let o = origins[k]
                let version = Int64(1 + k)
                let cs = makeChangeset(actors[o], version: version, count: 3)
                commitOf[actors[o]] = k
                firstSeen[k][o] = nextCommitAt
                now = max(now, nextCommitAt)
                execute(machines[o].localCommit([cs], now: now), node: o, now: now, queue: &queue)
                nextCommitAt = now + .milliseconds(50)
                continue
            }
            guard let e = queue.pop() else { break }
            now = e.at
            switch e.kind {
            case .deliver(let to, let from, let changesets, let hop):
                for c in changesets where nodeHop[to][c.actor] == nil {
                    nodeHop[to][c.actor] = hop
                    if let k = commitOf[c.actor] { hops[k][to] = hop }
                }
                execute(machines[to].received(changesets, from: String(from), now: now), node: to, now: now, queue: &queue)
            case .completed(let node, let peer, let ok):
                let d = ok ? machines[node].sendCompleted(String(peer)) : machines[node].sendFailed(String(peer))
                execute(d, node: node, now: now, queue: &queue)
            case .tick(let node):
                if scheduledTick[node] == e.at { scheduledTick[node] = nil }
                execute(machines[node].tick(now: now), node: node, now: now, queue: &queue)
            }
        }

        var times: [Duration] = []
        var missing = 0
        var maxHops = 0
        for k in 0..<commits {
            let start = firstSeen[k][origins[k]]!
            for n in 0..<nodeCount where !dead.contains(n) {
                if let t = firstSeen[k][n] { times.append(t - start) } else { missing += 1 }
                maxHops = max(maxHops, hops[k][n])
            }
        }
        times.sort()
        let duplicates = machines.reduce(0) { $0 + $1.metrics.duplicates }
        return Outcome(reachedAll: missing == 0, missing: missing,
                       p50: times[times.count / 2], p99: times[min(times.count - 1, times.count * 99 / 100)],
                       maxTime: times.last!, maxHops: maxHops, sends: sends, duplicates: duplicates, lost: lost)
    }

    /// Runs the CPU-bound simulation on a dispatch thread, so it does not
    /// starve the cooperative pool other suites' timers run on.
    static func simulateOffPool(nodeCount: Int, seed: UInt64, loss: Double, deadFraction: Double, commits: Int) async -> Outcome {
        await withCheckedContinuation { c in
            DispatchQueue.global().async {
                c.resume(returning: simulate(nodeCount: nodeCount, seed: seed, loss: loss, deadFraction: deadFraction, commits: commits))
            }
        }
    }

    @Test(arguments: [UInt64(1), 2])
    func broadcastReachesEveryLiveNodeOf500DespiteLoss(seed: UInt64) async {
        let o = await Self.simulateOffPool(nodeCount: 500, seed: seed, loss: 0.10, deadFraction: 0.02, commits: 3)
        print("broadcast sim seed \(seed): 500 nodes, 10% loss, 2% dead, 3 commits: reached all=\(o.reachedAll) missing=\(o.missing) p50=\(o.p50) p99=\(o.p99) max=\(o.maxTime) hops≤\(o.maxHops) sends=\(o.sends) lost=\(o.lost) duplicates=\(o.duplicates)")
        #expect(o.reachedAll, "\(o.missing) node-deliveries missing")
        #expect(o.p99 < .seconds(2))
        #expect(o.maxHops < 20)
    }

    @Test func heavyLossStillConvergesThroughRetransmission() async {
        let o = await Self.simulateOffPool(nodeCount: 500, seed: 42, loss: 0.30, deadFraction: 0.05, commits: 2)
        print("broadcast sim heavy: 500 nodes, 30% loss, 5% dead: reached all=\(o.reachedAll) missing=\(o.missing) p50=\(o.p50) p99=\(o.p99) max=\(o.maxTime) hops≤\(o.maxHops) sends=\(o.sends)")
        #expect(o.missing <= 2, "sync repairs a handful; broadcast alone must get nearly all")
    }
}
