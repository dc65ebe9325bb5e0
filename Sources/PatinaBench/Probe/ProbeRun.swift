import Foundation
import PatinaNode
import Synchronization

/// A node a probe run writes to and watches: its API, and the region it is in.
public struct ProbeNode: Sendable {
    public var name: String
    public var region: String
    public var client: HTTPClient

    public init(name: String, region: String, client: HTTPClient) {
        self.name = name
        self.region = region
        self.client = client
    }
}

/// What a probe run measured, in one process's monotonic clock (nanoseconds).
public struct ProbeMeasurements: Sendable {
    public struct Write: Sendable {
        public var id: Int64
        public var origin: Int
        /// When the API answered; nil if the write failed.
        public var answeredAt: UInt64?
    }

    public var nodes: [ProbeNode]
    public var writes: [Write]
    /// Per node: probe id → when its update event arrived on that node's stream.
    public var seen: [[Int64: UInt64]]
    /// Per node: round-trip time of a small request to its API, milliseconds (min of several).
    public var rttMilliseconds: [Double]
    public var failedWrites: Int { writes.filter { $0.answeredAt == nil }.count }
    /// Answered writes per second, from the first answer to the last.
    public var sustainedWritesPerSecond: Double {
        let answers = writes.compactMap(\.answeredAt)
        guard answers.count > 1, let first = answers.min(), let last = answers.max(), last > first else { return 0 }
        return Double(answers.count - 1) / (Double(last - first) / 1e9)
    }

    /// One observation per (write, other node): commit on the origin until the
    /// update event left the destination.
    ///
    /// Commit time is the earlier of the origin's own update event and the
    /// API's answer (both come just after the commit), less half the RTT to the
    /// origin; a destination's event left it half its RTT before it arrived.
    /// On loopback the RTT corrections are a few microseconds; against a real
    /// deployment they remove the client's own distance from each node. When
    /// the origin reports its commit late (a busy machine), a latency can come
    /// out below zero: it is counted as 0 ms, not dropped, so the write is not
    /// mistaken for a missing one.
    public func observations() -> [LatencyObservation] {
        var out: [LatencyObservation] = []
        for w in writes {
            guard let answered = w.answeredAt else { continue }
            let committedNs = min(answered, seen[w.origin][w.id] ?? answered)
            let committed = Double(committedNs) / 1e6 - rttMilliseconds[w.origin] / 2
            for (j, node) in nodes.enumerated() where j != w.origin {
                guard let at = seen[j][w.id] else { continue }
                let emitted = Double(at) / 1e6 - rttMilliseconds[j] / 2
                out.append(LatencyObservation(
                    originRegion: nodes[w.origin].region, originNode: nodes[w.origin].name,
                    destinationRegion: node.region, destinationNode: node.name,
                    writeID: Int(w.id), milliseconds: max(0, emitted - committed)))
            }
        }
        return out
    }

    /// (write id, origin node name, origin region) of every write the API accepted.
    public var acceptedWrites: [(id: Int, originNode: String, originRegion: String)] {
        writes.compactMap { w in
            w.answeredAt == nil ? nil : (Int(w.id), nodes[w.origin].name, nodes[w.origin].region)
        }
    }
}

public struct ProbeError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Writes probe rows through nodes' HTTP APIs at a fixed rate and watches every
/// node's `/v1/updates/{table}` stream to see when each row becomes visible
/// there. Everything runs on dedicated threads (blocking sockets), timed with
/// one monotonic clock, so the figures are exact on one machine.
///
/// The table needs an integer primary key `id` and a text column `node`.
public final class ProbeRun: Sendable {
    public let nodes: [ProbeNode]
    public let table: String
    /// Indices of the nodes that take writes, in turn.
    public let writers: [Int]
    /// Probe ids start here, so runs against a long-lived cluster never collide.
    public let idBase: Int64

    private struct Shared {
        var streamsOpen = 0
        var streamErrors: [String] = []
        var writeErrors: [String] = []
    }

    /// What one thread records, behind a lock of its own.
    ///
    /// Why not one lock for all: 15 watchers taking one lock per line and 15 writers
    /// one per write formed a lock convoy on a saturated machine (Swift's Mutex is a
    /// priority-inheritance futex: each hand-off waits for the next waiter to be
    /// scheduled). At 1,000 writes/s the watchers slept on the lock while 100 KB of
    /// update lines piled up in their sockets, and the report showed seconds of
    /// "propagation" that were the observer's own queue.
    private final class Log<Value: Sendable>: Sendable {
        let value: Mutex<Value>
        init(_ initial: Value) { value = Mutex(initial) }
    }

    private let shared: Mutex<Shared>
    /// Per node: probe id → when its update event arrived there (the first one counts).
    private let seen: [Log<[Int64: UInt64]>]
    /// Per node: the writes made through it, in the order they were answered (its clients,
    /// and a node listed twice in `writers`, share one log).
    private let written: [Log<[ProbeMeasurements.Write]>]
    /// What counts() has taken in so far: how far into each writer's log, the writes
    /// sent and failed, how many accepted ones are visible everywhere, and the accepted
    /// ones not yet.
    private struct Progress {
        var cursors: [Int]
        var sent = 0
        var failed = 0
        var visible = 0
        var pending: [Int64] = []
    }
    private let progressState: Mutex<Progress>
    private let stopped = Atomic<Bool>(false)

    public init(nodes: [ProbeNode], writers: [Int], table: String = "patina_probe",
                idBase: Int64 = Int64(Date().timeIntervalSince1970) * 10_000_000) {
        precondition(!writers.isEmpty && writers.allSatisfy { nodes.indices.contains($0) })
        self.nodes = nodes
        self.writers = writers
        self.table = table
        self.idBase = idBase
        shared = Mutex(Shared())
        seen = nodes.map { _ in Log([:]) }
        written = nodes.map { _ in Log([]) }
        progressState = Mutex(Progress(cursors: Array(repeating: 0, count: nodes.count)))
    }

    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    // MARK: Round-trip times

    /// The smallest of `samples` round trips of `GET /v1/health` to each node,
    /// on a kept-alive connection (the first, which connects, is not counted).
    public func measureRTTs(samples: Int = 20) throws -> [Double] {
        try nodes.map { node in
            let connection = HTTPClient.KeepAlive(node.client)
            _ = try connection.send("GET", "/v1/health", body: nil)
            var best = Double.infinity
            for _ in 0..<samples {
                let start = Self.now()
                _ = try connection.send("GET", "/v1/health", body: nil)
                best = min(best, Double(Self.now() - start) / 1e6)
            }
            return best
        }
    }

    // MARK: Watching

    /// Opens every node's update stream on its own thread; returns once all are
    /// open (the server subscribes before it answers) or throws at `timeout`.
    public func startWatching(timeout: Duration = .seconds(30)) throws {
        for index in nodes.indices {
            let thread = Thread { [self] in watch(index) }
            thread.name = "probe-watch-\(nodes[index].name)"
            thread.start()
        }
        let ok = pollUntil(timeout) { self.shared.withLock { $0.streamsOpen == self.nodes.count || !$0.streamErrors.isEmpty } }
        if let error = shared.withLock({ $0.streamErrors.first }) { throw ProbeError(error) }
        guard ok else { throw ProbeError("update streams did not open within \(timeout)") }
    }

    private func watch(_ index: Int) {
        // The observer's own waits for a CPU would land in the figures.
        raiseThreadPriority()
        var client = nodes[index].client
        client.timeout = .seconds(3600)  // a stream is quiet between runs; only the run's end closes it
        do {
            try client.lines("POST", "/v1/updates/\(table)", onHead: { status, _ in
                self.shared.withLock { s in
                    if status == 200 { s.streamsOpen += 1 } else { s.streamErrors.append("\(self.nodes[index].name): updates stream answered \(status)") }
                }
            }) { line in
                let at = Self.now()
                if let id = Self.probeID(in: line) {
                    // The earliest event counts; a repeat leaves it alone.
                    seen[index].value.withLock { if $0[id] == nil { $0[id] = at } }
                } else if line.contains("\"error\"") {
                    shared.withLock { $0.streamErrors.append("\(self.nodes[index].name): \(line)") }
                }
                return !stopped.load(ordering: .relaxed)
            }
        } catch {
            if !stopped.load(ordering: .relaxed) {
                shared.withLock { $0.streamErrors.append("\(self.nodes[index].name): update stream: \(error)") }
            }
        }
    }

    /// The id in `{"notify":["update",[ID]]}`.
    static func probeID(in line: String) -> Int64? {
        guard line.contains("\"update\""), let open = line.lastIndex(of: "["),
              let close = line[open...].firstIndex(of: "]") else { return nil }
        return Int64(line[line.index(after: open)..<close])
    }

    // MARK: Writing

    /// `count` writes at `rate` per second, spread over the writer nodes in turn,
    /// then waits (up to `settle`) until every accepted write is visible on every
    /// node. `progress` is called about once a second.
    ///
    /// Each writer node takes its writes over `clientsPerWriter` connections, in turn.
    /// A connection waits for one answer before it sends the next write, so it caps
    /// its node at 1 / (answer time) writes per second: at 1,000/s over 15 nodes the
    /// API answered in 20–40 ms on a busy machine, and one client per node sustained
    /// only 360 writes/s. A write due while all of its node's clients wait goes as
    /// soon as one is free (and its latency still counts from its commit).
    public func run(count: Int, rate: Double, clientsPerWriter: Int = 1, settle: Duration, rttMilliseconds: [Double],
                    progress: @escaping @Sendable (_ sent: Int, _ visibleEverywhere: Int) -> Void = { _, _ in }) throws -> ProbeMeasurements {
        precondition(clientsPerWriter >= 1)
        let start = Self.now()
        let interval = 1e9 / rate
        // Slot i goes to client i mod lanes.count; lanes repeat `writers`, so node turns are unchanged.
        let lanes = (0..<clientsPerWriter).flatMap { _ in writers }
        let perLane = lanes.indices.map { l in stride(from: l, to: count, by: lanes.count).map { $0 } }
        let done = Atomic<Int>(0)
        var threads: [Thread] = []
        for (l, slots) in perLane.enumerated() {
            let thread = Thread { [self] in
                write(from: lanes[l], slots: slots, start: start, interval: interval)
                done.add(1, ordering: .sequentiallyConsistent)
            }
            thread.name = "probe-write-\(l)"
            threads.append(thread)
            thread.start()
        }
        var lastReport = Self.now()
        func reportIfDue() {
            guard Self.now() - lastReport >= 1_000_000_000 else { return }
            lastReport = Self.now()
            let (sent, _, visible) = counts()
            progress(sent, visible)
        }
        while done.load(ordering: .sequentiallyConsistent) < threads.count {
            usleep(20_000)
            reportIfDue()
        }
        _ = pollUntil(settle) {
            reportIfDue()
            return self.allVisible()
        }
        let (sent, _, visible) = counts()
        progress(sent, visible)
        return ProbeMeasurements(nodes: nodes, writes: allWrites().sorted { $0.id < $1.id },
                                 seen: seen.map { $0.value.withLock { $0 } }, rttMilliseconds: rttMilliseconds)
    }

    /// Write errors and stream errors seen so far (for the report).
    public var errors: [String] { shared.withLock { $0.writeErrors + $0.streamErrors } }

    /// Ends the watch threads at their next line; their streams close when the
    /// process or the agents end.
    public func stop() { stopped.store(true, ordering: .relaxed) }

    private func allWrites() -> [ProbeMeasurements.Write] { written.flatMap { $0.value.withLock { $0 } } }

    /// Writes sent and failed, and accepted writes seen on every node. Incremental: each
    /// call takes only the writes logged since the last one (copied out under the
    /// writer's lock, so the writer's array is never shared), and looks again only at
    /// writes not yet seen everywhere.
    private func counts() -> (sent: Int, failed: Int, visible: Int) {
        progressState.withLock { p in
            for (w, log) in written.enumerated() {
                let new = log.value.withLock { writes in writes[p.cursors[w]...].map { ($0.id, $0.answeredAt != nil) } }
                p.cursors[w] += new.count
                p.sent += new.count
                for (id, accepted) in new {
                    if accepted { p.pending.append(id) } else { p.failed += 1 }
                }
            }
            // Looked up in place, node by node: a copy of a watcher's map would make its
            // next insert copy the whole map.
            var everywhere = p.pending
            for log in seen {
                guard !everywhere.isEmpty else { break }
                log.value.withLock { map in everywhere.removeAll { map[$0] == nil } }
            }
            if !everywhere.isEmpty {
                let done = Set(everywhere)
                p.pending.removeAll { done.contains($0) }
                p.visible += done.count
            }
            return (p.sent, p.failed, p.visible)
        }
    }

    private func allVisible() -> Bool {
        let (sent, failed, visible) = counts()
        return visible == sent - failed
    }

    private func write(from node: Int, slots: [Int], start: UInt64, interval: Double) {
        let connection = HTTPClient.KeepAlive(nodes[node].client)
        for slot in slots {
            let due = start + UInt64(Double(slot) * interval)
            let now = Self.now()
            if due > now + 50_000 { usleep(UInt32((due - now) / 1000)) }
            let id = idBase + Int64(slot)
            let sql = "INSERT INTO \(table) (id, node) VALUES (\(id), '\(nodes[node].name)')"
            let body = Data("[\(jsonString(sql))]".utf8)
            var answeredAt: UInt64?
            var failure: String?
            do {
                let response = try connection.send("POST", "/v1/transactions", body: body)
                if response.status == 200 { answeredAt = Self.now() } else { failure = "\(response.status) \(response.text)" }
            } catch {
                failure = "\(error)"
            }
            written[node].value.withLock { $0.append(ProbeMeasurements.Write(id: id, origin: node, answeredAt: answeredAt)) }
            if let failure {
                shared.withLock { s in
                    if s.writeErrors.count < 20 { s.writeErrors.append("\(nodes[node].name): write \(id): \(failure)") }
                }
            }
        }
    }

    /// Deletes this run's probe rows through the first writer (one transaction).
    public func deleteProbes(count: Int) throws {
        let sql = "DELETE FROM \(table) WHERE id >= \(idBase) AND id < \(idBase + Int64(count))"
        let response = try nodes[writers[0]].client.send("POST", "/v1/transactions", body: Data("[\(jsonString(sql))]".utf8))
        guard response.status == 200 else { throw ProbeError("deleting probe rows: \(response.status) \(response.text)") }
    }
}

/// Polls `condition` every 10 ms until it holds (true) or `timeout` passes (false).
func pollUntil(_ timeout: Duration, _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while true {
        if condition() { return true }
        if ContinuousClock.now >= deadline { return false }
        usleep(10_000)
    }
}

func jsonString(_ s: String) -> String {
    let data = try! JSONSerialization.data(withJSONObject: [s], options: [.withoutEscapingSlashes])
    return String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
}
