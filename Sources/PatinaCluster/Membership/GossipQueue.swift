import PatinaCore

/// Updates waiting to be piggybacked, at most one per member (the newest), each sent
/// a bounded number of times; the least-sent and, among those, the newest go first
/// (memberlist's TransmitLimitedQueue). Buckets by send count keep selection cheap
/// with thousands of entries: stale bucket slots are skipped lazily by token.
struct GossipQueue: Sendable {
    private struct Entry: Sendable {
        var update: MemberUpdate
        var size: Int
        var transmits: Int
        var token: UInt64
    }

    private var entries: [ActorID: Entry] = [:]
    private var buckets: [[(id: ActorID, token: UInt64)]] = [[]]
    private var nextToken: UInt64 = 0

    var count: Int { entries.count }
    var isEmpty: Bool { entries.isEmpty }

    /// Replaces whatever was queued about the same member; the update starts over.
    mutating func enqueue(_ update: MemberUpdate) {
        nextToken &+= 1
        entries[update.id] = Entry(
            update: update, size: MembershipCodec.size(of: update), transmits: 0, token: nextToken)
        buckets[0].append((update.id, nextToken))
    }

    mutating func remove(_ id: ActorID) { entries[id] = nil }

    /// Takes updates fitting in `budget` bytes (at most `maxCount`), counting one
    /// transmission for each; an update sent `limit` times is dropped. `skip` leaves
    /// out an update already in the message.
    mutating func select(budget: Int, maxCount: Int, limit: Int, skip: ActorID? = nil) -> [MemberUpdate] {
        var out: [MemberUpdate] = []
        var remaining = budget
        var moved: [(id: ActorID, token: UInt64, transmits: Int)] = []
        var deferred: [(id: ActorID, token: UInt64)] = []
        outer: for t in 0..<buckets.count {
            while let slot = buckets[t].last {
                guard let e = entries[slot.id], e.token == slot.token, e.transmits == t else {
                    buckets[t].removeLast()
                    continue
                }
                if t >= limit {
                    buckets[t].removeLast()
                    entries[slot.id] = nil
                    continue
                }
                if slot.id == skip {
                    buckets[t].removeLast()
                    deferred.append(slot)
                    continue
                }
                if out.count >= maxCount || e.size > remaining { break outer }
                buckets[t].removeLast()
                out.append(e.update)
                remaining -= e.size
                if t + 1 >= limit {
                    entries[slot.id] = nil
                } else {
                    entries[slot.id]!.transmits = t + 1
                    moved.append((slot.id, slot.token, t + 1))
                }
            }
        }
        for d in deferred.reversed() {
            if let e = entries[d.id], e.token == d.token { buckets[e.transmits].append(d) }
        }
        for m in moved {
            while buckets.count <= m.transmits { buckets.append([]) }
            buckets[m.transmits].append((m.id, m.token))
        }
        return out
    }
}
