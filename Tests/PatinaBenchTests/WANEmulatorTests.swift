import Foundation
import Glibc
import Testing

@testable import PatinaBench

// MARK: - Topology files (instant)

@Suite struct WANTopologyTests {
    static let regionsFolder = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("config/regions")

    @Test func defaultTopologySpansFiveContinentsWithEveryPair() throws {
        let topology = try WANTopology.load(path: Self.regionsFolder.appendingPathComponent("default.toml").path)
        #expect(topology.regions.count >= 5)
        #expect(topology.regions.allSatisfy { $0.nodes == 3 })
        #expect(topology.loss == 0)
        #expect((1...2).contains(topology.jitterMilliseconds))
        var largest = 0.0
        for a in topology.regions {
            for b in topology.regions where a.name != b.name {
                let delay = topology.oneWayMilliseconds(from: a.name, to: b.name)
                #expect(delay > 10 && delay < 200, "\(a.name)-\(b.name)")
                #expect(delay == topology.oneWayMilliseconds(from: b.name, to: a.name))
                largest = max(largest, delay)
            }
        }
        #expect(topology.maxOneWayMilliseconds == largest)
    }

    @Test func smallTopologyIsTiny() throws {
        let topology = try WANTopology.load(path: Self.regionsFolder.appendingPathComponent("small.toml").path)
        #expect((2...3).contains(topology.regions.count))
        #expect(topology.regions.allSatisfy { $0.nodes == 1 })
        for a in topology.regions {
            for b in topology.regions where a.name != b.name {
                #expect((10...40).contains(topology.oneWayMilliseconds(from: a.name, to: b.name)))
            }
        }
    }

    @Test func parsesEveryKeyAndDefaults() throws {
        let topology = try WANTopology(toml: """
            jitter_ms = 2
            loss = 0.25
            rate_mbit = 10.5
            intra_region_ms = 0.5
            [[region]]
            name = "fra"
            label = "Frankfurt"
            nodes = 2
            [[region]]
            name = "iad"
            [delays]
            "iad-fra" = 45
            """)
        #expect(topology.regions == [
            WANTopology.Region(name: "fra", label: "Frankfurt", nodes: 2),
            WANTopology.Region(name: "iad", label: "iad", nodes: 1),
        ])
        #expect(topology.jitterMilliseconds == 2)
        #expect(topology.loss == 0.25)
        #expect(topology.rateMegabitsPerSecond == 10.5)
        #expect(topology.oneWayMilliseconds(from: "fra", to: "iad") == 45)
        #expect(topology.oneWayMilliseconds(from: "fra", to: "fra") == 0.5)
        #expect(topology.maxOneWayMilliseconds == 45)

        let plain = try WANTopology(toml: "[[region]]\nname = \"solo\"")
        #expect(plain.jitterMilliseconds == 0 && plain.loss == 0 && plain.rateMegabitsPerSecond == 0)
        #expect(plain.intraRegionMilliseconds == 0)
    }

    @Test func overridesLossAndNodesPerRegion() throws {
        let topology = try WANTopology(toml: Self.threeRegions())
        let changed = try topology.overriding(loss: 0.1, nodesPerRegion: 4)
        #expect(changed.loss == 0.1)
        #expect(changed.regions.map(\.nodes) == [4, 4, 4])
        #expect(changed.oneWayMilliseconds(from: "a", to: "c") == 20)
        #expect(throws: WANError.self) { try topology.overriding(loss: 1) }
        #expect(throws: WANError.self) { try topology.overriding(nodesPerRegion: 0) }
    }

    static func threeRegions(top: String = "", regionExtra: String = "", delays: String = "a-b = 10\na-c = 20\nb-c = 30")
        -> String
    {
        """
        \(top)
        [[region]]
        name = "a"
        [[region]]
        name = "b"
        \(regionExtra)
        [[region]]
        name = "c"
        [delays]
        \(delays)
        """
    }

    @Test(arguments: [
        (threeRegions(top: "jitter = 1"), "unknown key jitter"),
        (threeRegions(regionExtra: "colour = \"red\""), "unknown key region[1].colour"),
        (threeRegions(delays: "a-b = 10\na-c = 20"), "missing key delays.b-c"),
        (threeRegions(regionExtra: "nodes = 0"), "region[1].nodes must be an integer of at least 1"),
        (threeRegions(delays: "a-b = -1\na-c = 20\nb-c = 30"), "delays.a-b must not be negative"),
        (threeRegions(delays: "a-b = 10\na-c = 20\nb-c = 30\nb-a = 10"), "delays.b-a repeats delays.a-b"),
        (threeRegions(delays: "a-b = 10\na-c = 20\nb-c = 30\na-x = 5"), "delays.a-x: unknown region x"),
        (threeRegions(delays: "a-b = 10\na-c = 20\nb-c = 30\na-a = 5"), "delays.a-a: a region to itself"),
        (threeRegions(delays: "a-b = \"far\"\na-c = 20\nb-c = 30"), "delays.a-b must be a number"),
        (threeRegions(top: "jitter_ms = -2"), "jitter_ms must not be negative"),
        (threeRegions(top: "intra_region_ms = -0.5"), "intra_region_ms must not be negative"),
        (threeRegions(top: "rate_mbit = -1"), "rate_mbit must not be negative"),
        (threeRegions(top: "loss = 1.0"), "loss must be in [0, 1)"),
        (threeRegions(top: "loss = -0.1"), "loss must not be negative"),
        ("[[region]]\nname = \"a\"\n[[region]]\nname = \"a\"", "region[1].name: duplicate region a"),
        ("[[region]]\nname = \"us-east\"", "region[0].name \"us-east\" must be letters, digits or _"),
        ("[[region]]\nlabel = \"x\"", "missing key region[0].name"),
        ("loss = 0", "missing key region"),
        ("[[region]\nname = \"a\"", "line 1"),
    ])
    func errorsAreOneLineNamingTheFileAndKey(toml: String, expected: String) {
        do {
            _ = try WANTopology(toml: toml, file: "regions.toml")
            Issue.record("no error; expected \(expected)")
        } catch let error as WANError {
            #expect(error.description.hasPrefix("topology regions.toml: "))
            #expect(error.description.contains(expected), "\(error.description)")
            #expect(!error.description.contains("\n"))
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test func unreadableFileIsNamed() {
        let error = #expect(throws: WANError.self) { try WANTopology.load(path: "/nonexistent/regions.toml") }
        #expect(error?.description == "topology /nonexistent/regions.toml: cannot read the file")
    }
}

// MARK: - Link model (instant, no sockets)

@Suite struct WANLinksStateMachineTests {
    static func topology(delay: Double, jitter: Double = 0, loss: Double = 0, rate: Double = 0, intra: Double = 0)
        throws -> WANTopology
    {
        try WANTopology(toml: """
            jitter_ms = \(jitter)
            loss = \(loss)
            rate_mbit = \(rate)
            intra_region_ms = \(intra)
            [[region]]
            name = "a"
            [[region]]
            name = "b"
            [delays]
            a-b = \(delay)
            """)
    }

    @Test func jitterSpreadsDelaysOverItsRange() throws {
        var links = WANLinks(topology: try Self.topology(delay: 30, jitter: 5), nodeRegions: ["a", "b"], seed: 7)
        var delays: [UInt64] = []
        // 10 ms apart: wider than the jitter range, so keeping the pair in order never lifts a delay.
        for k in 0..<500 {
            let now = UInt64(k) * 10_000_000
            let verdict = links.admit(from: 0, to: 1, bytes: 100, now: now)
            delays.append(try #require(verdict) - now)
        }
        #expect(delays.allSatisfy { (25_000_000...35_000_000).contains($0) })
        #expect(delays.min()! < 25_500_000 && delays.max()! > 34_500_000)
    }

    @Test func jitterNeverReordersANodePair() throws {
        var links = WANLinks(
            topology: try Self.topology(delay: 30, jitter: 5), nodeRegions: ["a", "b", "b"], seed: 7)
        var previous: [UInt64] = [0, 0]
        for k in 0..<2_000 {
            let now = UInt64(k) * 100_000
            let to = 1 + k % 2
            let verdict = links.admit(from: 0, to: to, bytes: 100, now: now)
            let due = try #require(verdict)
            #expect(due >= previous[to - 1])
            #expect(due >= now + 25_000_000 && due <= now + 35_000_000)
            previous[to - 1] = due
        }
    }

    @Test func rateSerializesDatagramsOnInterRegionLinksOnly() throws {
        // 8 Mbit/s: 1000 bytes take 1 ms on the wire.
        var links = WANLinks(
            topology: try Self.topology(delay: 10, rate: 8, intra: 1), nodeRegions: ["a", "a", "b"], seed: 1)
        let dues = (0..<10).map { _ in links.admit(from: 0, to: 2, bytes: 1_000, now: 0) }
        #expect(dues == (1...10).map { UInt64($0) * 1_000_000 + 10_000_000 })
        // The other direction has its own link; the region's own network has no rate limit.
        let reverse = links.admit(from: 2, to: 0, bytes: 1_000, now: 0)
        let local = [links.admit(from: 0, to: 1, bytes: 1_000, now: 0), links.admit(from: 0, to: 1, bytes: 1_000, now: 0)]
        #expect(reverse == 11_000_000)
        #expect(local == [1_000_000, 1_000_000])
    }

    @Test func lossReplaysFromItsSeed() throws {
        let topology = try Self.topology(delay: 1, loss: 0.2)
        var first = WANLinks(topology: topology, nodeRegions: ["a", "b"], seed: 42)
        var second = WANLinks(topology: topology, nodeRegions: ["a", "b"], seed: 42)
        var lost = 0
        for k in 0..<10_000 {
            let verdict = first.admit(from: 0, to: 1, bytes: 10, now: UInt64(k))
            let replayed = second.admit(from: 0, to: 1, bytes: 10, now: UInt64(k))
            #expect(verdict == replayed)
            if verdict == nil { lost += 1 }
        }
        #expect((1_800...2_200).contains(lost))
    }
}

// MARK: - Real sockets on 127.0.0.1 through a running emulator

/// A node of the tests: a plain UDP socket on 127.0.0.1. Each datagram carries the
/// kernel's arrival time (SO_TIMESTAMPNS), so a test thread kept off the CPU by other
/// builders does not inflate the delays it measures; the relay's own lateness stays in.
private final class TestNode {
    struct Received {
        var bytes: [UInt8]
        var from: String
        /// CLOCK_REALTIME nanoseconds when the datagram reached the socket.
        var arrivedAt: UInt64
    }

    /// SO_TIMESTAMPNS, also the control message type (SCM_TIMESTAMPNS), on 64-bit Linux;
    /// the macro is too involved for Swift to import.
    static let timestampOption: Int32 = 35

    let socket: UDPSocket
    let address: String
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65_535, alignment: 16)

    init() throws {
        socket = try UDPSocket.bind(IPv4Endpoint("127.0.0.1:0")!)
        address = socket.localEndpoint.description
        var on: Int32 = 1
        #expect(setsockopt(socket.fd, SOL_SOCKET, Self.timestampOption, &on, socklen_t(MemoryLayout<Int32>.size)) == 0)
    }

    deinit {
        socket.close()
        buffer.deallocate()
    }

    func send(_ bytes: [UInt8], to address: String) {
        #expect(socket.send(bytes, to: IPv4Endpoint(address)!))
    }

    /// The next datagram, or nil once `deadline` (monotonic ns) has passed without one.
    func receive(until deadline: UInt64) -> Received? {
        while true {
            if let received = receiveWaiting() { return received }
            let now = monotonicNanoseconds()
            if now >= deadline { return nil }
            _ = socket.waitReadable(timeoutNanoseconds: deadline - now)
        }
    }

    private func receiveWaiting() -> Received? {
        var source = sockaddr_in()
        var control = [UInt64](repeating: 0, count: 8)
        var controlLength = 0
        var vector = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        let count = withUnsafeMutablePointer(to: &source) { sourcePointer in
            control.withUnsafeMutableBytes { controlBytes in
                withUnsafeMutablePointer(to: &vector) { vectorPointer in
                    var message = msghdr()
                    message.msg_name = UnsafeMutableRawPointer(sourcePointer)
                    message.msg_namelen = socklen_t(MemoryLayout<sockaddr_in>.size)
                    message.msg_iov = vectorPointer
                    message.msg_iovlen = 1
                    message.msg_control = controlBytes.baseAddress
                    message.msg_controllen = controlBytes.count
                    let count = recvmsg(socket.fd, &message, 0)
                    controlLength = message.msg_controllen
                    return count
                }
            }
        }
        guard count >= 0 else { return nil }
        // One control message: cmsghdr (length, level, type: 16 bytes), then a timespec.
        let arrivedAt: UInt64? = control.withUnsafeBytes { raw in
            guard controlLength >= 32, raw.load(fromByteOffset: 8, as: Int32.self) == SOL_SOCKET,
                raw.load(fromByteOffset: 12, as: Int32.self) == Self.timestampOption
            else { return nil }
            let time = raw.load(fromByteOffset: 16, as: timespec.self)
            return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
        }
        guard let arrivedAt else {
            Issue.record("datagram without a kernel timestamp")
            return nil
        }
        return Received(
            bytes: Array(buffer[..<count]), from: IPv4Endpoint(source).description, arrivedAt: arrivedAt)
    }
}

/// Node a1 in region a, b1 in region b, and a running emulator between them.
private struct TwoNodes {
    let a = try! TestNode()
    let b = try! TestNode()
    let emulator: WANEmulator
    var relayA: String { emulator.relayAddresses["a1"]! }
    var relayB: String { emulator.relayAddresses["b1"]! }

    init(_ topology: WANTopology) throws {
        emulator = try WANEmulator(
            nodes: [
                WANNode(name: "a1", region: "a", realAddress: a.address),
                WANNode(name: "b1", region: "b", realAddress: b.address),
            ],
            topology: topology, seed: 2024)
        try emulator.start()
    }
}

/// The clock of kernel receive timestamps.
private func realtimeNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

private func timestamp() -> [UInt8] { withUnsafeBytes(of: realtimeNanoseconds()) { Array($0) } }

private func sentAt(_ bytes: [UInt8]) -> UInt64 { bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } }

private func milliseconds(_ nanoseconds: UInt64) -> Double { Double(nanoseconds) / 1e6 }

/// Polls `condition` every millisecond until it holds or `seconds` have passed.
private func eventually(within seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
    while !condition() {
        if monotonicNanoseconds() > deadline { return false }
        usleep(1_000)
    }
    return true
}

/// Scheduling slack allowed on top of the configured delays: this is a loaded 2-core machine.
private let epsilonMilliseconds = 3.0

/// Serialized: the timing figures mean something only when the tests do not compete.
@Suite(.serialized) struct WANEmulatorClusterTests {
    @Test func delayAndJitterMatchTheConfiguration() throws {
        let nodes = try TwoNodes(try WANLinksStateMachineTests.topology(delay: 30, jitter: 5))
        defer { nodes.emulator.stop() }
        // 4 ms apart, so keeping a pair in order rarely lifts a delay above its own draw
        // and the low end of the jitter range stays visible.
        let count = 200
        let spacing: UInt64 = 4_000_000
        var delays: [Double] = []
        var sources = Set<String>()
        func record(_ received: TestNode.Received) {
            delays.append(milliseconds(received.arrivedAt - sentAt(received.bytes)))
            sources.insert(received.from)
        }
        let start = monotonicNanoseconds()
        for k in 0..<count {
            while let received = nodes.b.receive(until: start + UInt64(k) * spacing) { record(received) }
            nodes.a.send(timestamp(), to: nodes.relayB)
        }
        let end = monotonicNanoseconds() + 1_000_000_000
        while delays.count < count, let received = nodes.b.receive(until: end) { record(received) }

        #expect(delays.count == count)
        #expect(sources == [nodes.relayA])
        let (low, high) = (delays.min() ?? 0, delays.max() ?? 0)
        // Never early, whatever the load: the test stamps before sending, the kernel on arrival.
        #expect(low >= 25, "delays \(low)…\(high) ms")
        // Late only when the relay waited for a CPU (arrival times come from the kernel, so
        // the test thread's own waits do not count): on a quiet machine no datagram is; when
        // other builders hold both cores, a few may be.
        let late = delays.filter { $0 > 35 + epsilonMilliseconds }
        #expect(late.count <= count / 20, "\(late.count) of \(count) later than 35 + ε ms: \(late)")
        #expect(low < 28 && high > 32, "jitter should spread delays: \(low)…\(high) ms")
        // The relay counts a datagram just after sending it, so b may have it first.
        #expect(eventually(within: 1) { nodes.emulator.stats.forwarded == UInt64(count) })
        let stats = nodes.emulator.stats
        print("WAN delay test: delays \(low)…\(high) ms; \(stats)")
        #expect(stats.latenessP50Milliseconds < 1)
    }

    @Test func repliesComeBackFromTheAddressDialled() throws {
        let nodes = try TwoNodes(try WANLinksStateMachineTests.topology(delay: 20))
        defer { nodes.emulator.stop() }
        var roundTrips: [Double] = []
        for round in 0..<5 {
            let sent = realtimeNanoseconds()
            let deadline = monotonicNanoseconds() + 1_000_000_000
            nodes.a.send([UInt8(round)], to: nodes.relayB)
            let ping = try #require(nodes.b.receive(until: deadline))
            // b sees a at a's relay address, and answers there.
            #expect(ping.from == nodes.relayA)
            #expect(ping.bytes == [UInt8(round)])
            nodes.b.send([UInt8(round), 1], to: ping.from)
            let pong = try #require(nodes.a.receive(until: deadline))
            #expect(pong.from == nodes.relayB)
            #expect(pong.bytes == [UInt8(round), 1])
            roundTrips.append(milliseconds(pong.arrivedAt - sent))
        }
        #expect(roundTrips.allSatisfy { $0 >= 40 }, "round trips \(roundTrips) ms")
        #expect(roundTrips.sorted()[2] <= 40 + 2 * epsilonMilliseconds, "round trips \(roundTrips) ms")
        #expect(eventually(within: 1) { nodes.emulator.stats.forwarded == 10 })
        let stats = nodes.emulator.stats
        #expect(stats.flows.map { "\($0.from)>\($0.to):\($0.forwarded)" }.sorted() == ["a1>b1:5", "b1>a1:5"])
    }

    @Test func datagramsFromStrangersAreDroppedAndCounted() throws {
        let nodes = try TwoNodes(try WANLinksStateMachineTests.topology(delay: 1))
        defer { nodes.emulator.stop() }
        let stranger = try TestNode()
        stranger.send([1, 2, 3], to: nodes.relayB)
        #expect(eventually(within: 2) { nodes.emulator.stats.droppedUnknownSource == 1 })
        #expect(nodes.b.receive(until: monotonicNanoseconds() + 20_000_000) == nil)
        #expect(nodes.emulator.stats.received == 0)
    }

    @Test func lossDropsTheConfiguredFraction() throws {
        let nodes = try TwoNodes(try WANLinksStateMachineTests.topology(delay: 1, loss: 0.2))
        defer { nodes.emulator.stop() }
        let total = 2_000
        var delivered = 0
        // Batches of 100, each read by the relay before the next, so no socket buffer overflows.
        for batch in 0..<(total / 100) {
            for _ in 0..<100 { nodes.a.send(timestamp(), to: nodes.relayB) }
            let ok = eventually(within: 5) {
                while nodes.b.receive(until: 0) != nil { delivered += 1 }
                return nodes.emulator.stats.received == UInt64((batch + 1) * 100)
            }
            try #require(ok, "relay read \(nodes.emulator.stats.received) of \((batch + 1) * 100)")
        }
        #expect(eventually(within: 2) {
            let stats = nodes.emulator.stats
            return stats.forwarded + stats.droppedByLoss == UInt64(total)
        })
        let stats = nodes.emulator.stats
        let end = monotonicNanoseconds() + 1_000_000_000
        while delivered < Int(stats.forwarded), nodes.b.receive(until: end) != nil { delivered += 1 }
        #expect(delivered == Int(stats.forwarded))
        #expect(Int(stats.droppedByLoss) + delivered == total)
        // Binomial(2000, 0.2): mean 400 lost, σ ≈ 18; ±5σ.
        let lostFraction = Double(total - delivered) / Double(total)
        #expect(lostFraction > 0.155 && lostFraction < 0.245, "lost \(lostFraction)")
        #expect(stats.flows == [WANStats.Flow(from: "a1", to: "b1", forwarded: stats.forwarded, droppedByLoss: stats.droppedByLoss)])
    }

    @Test func rateLimitSetsTheThroughput() throws {
        // 4 Mbit/s: 100 datagrams of 1000 bytes take 200 ms on the link.
        let nodes = try TwoNodes(try WANLinksStateMachineTests.topology(delay: 5, rate: 4))
        defer { nodes.emulator.stop() }
        let count = 100
        let payload = [UInt8](repeating: 7, count: 1_000)
        let start = realtimeNanoseconds()
        let end = monotonicNanoseconds() + 2_000_000_000
        for _ in 0..<count { nodes.a.send(payload, to: nodes.relayB) }
        var arrivals: [UInt64] = []
        while arrivals.count < count, let received = nodes.b.receive(until: end) { arrivals.append(received.arrivedAt) }
        try #require(arrivals.count == count)
        // One datagram every 2 ms; the median gap ignores a burst after a scheduling hiccup.
        let gaps = zip(arrivals.dropFirst(), arrivals).map { milliseconds($0 - $1) }.sorted()
        #expect(gaps[gaps.count / 2] > 1.8 && gaps[gaps.count / 2] < 2.2, "median gap \(gaps[gaps.count / 2]) ms")
        let bitsPerSecond = Double((count - 1) * payload.count * 8) / (Double(arrivals.last! - arrivals.first!) / 1e9)
        #expect(bitsPerSecond > 3.4e6 && bitsPerSecond < 4.6e6, "throughput \(bitsPerSecond / 1e6) Mbit/s")
        let total = milliseconds(arrivals.last! - start)
        #expect(total >= 205, "last arrival after \(total) ms")
    }

    @Test func stopClosesEverySocketAndIsIdempotent() throws {
        let nodes = try TwoNodes(try WANLinksStateMachineTests.topology(delay: 1))
        let relayB = try #require(IPv4Endpoint(nodes.relayB))
        nodes.emulator.stop()
        nodes.emulator.stop()
        #expect(throws: WANError.self) { try nodes.emulator.start() }
        // The relay's port is free again.
        let rebound = try UDPSocket.bind(relayB)
        rebound.close()

        let neverStarted = try WANEmulator(
            nodes: [WANNode(name: "n", region: "a", realAddress: "127.0.0.1:9")],
            topology: try WANLinksStateMachineTests.topology(delay: 1))
        neverStarted.stop()
        neverStarted.stop()
    }

    @Test func refusesBadNodeLists() throws {
        let topology = try WANLinksStateMachineTests.topology(delay: 1)
        let cases: [([WANNode], String)] = [
            ([WANNode(name: "n", region: "x", realAddress: "127.0.0.1:1")], "WAN node n: region x is not in the topology"),
            ([WANNode(name: "n", region: "a", realAddress: "localhost:1")], "WAN node n: real address localhost:1 is not IPv4"),
            (
                [WANNode(name: "n", region: "a", realAddress: "127.0.0.1:1"), WANNode(name: "n", region: "b", realAddress: "127.0.0.1:2")],
                "WAN node n: duplicate name"
            ),
            (
                [WANNode(name: "n", region: "a", realAddress: "127.0.0.1:1"), WANNode(name: "m", region: "b", realAddress: "127.0.0.1:1")],
                "WAN node m: real address 127.0.0.1:1 is used by another node"
            ),
        ]
        for (nodes, expected) in cases {
            let error = #expect(throws: WANError.self) { _ = try WANEmulator(nodes: nodes, topology: topology) }
            #expect(error?.description.hasPrefix(expected) == true, "\(String(describing: error))")
        }
    }
}
