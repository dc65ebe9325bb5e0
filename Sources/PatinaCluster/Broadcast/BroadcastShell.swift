import Logging
import PatinaCore

/// Carries broadcast frames to peers. On QUIC each call is one uni stream.
/// `send` returns once the frame is handed over (or throws); it MUST NOT wait
/// for the peer to process it.
public protocol ChangesetTransport: Sendable {
    func send(_ frame: [UInt8], to peer: String) async throws
}

/// Executes ``BroadcastStateMachine`` directives: sends frames through a
/// ``ChangesetTransport``, hands fresh remote changesets to `apply`, and ticks
/// retransmissions.
///
/// Time comes from the `now` closure (offset from any origin), so tests pass a
/// manual clock and call ``tick()`` and ``performPendingSends()`` themselves;
/// production runs ``run(clock:)``, which owns the send tasks and the ticker.
public actor BroadcastShell {
    struct SendRequest: Sendable {
        var peer: String
        var frame: [UInt8]
    }

    private var machine: BroadcastStateMachine
    private let transport: any ChangesetTransport
    private let apply: @Sendable ([Changeset]) async -> Void
    private let now: @Sendable () -> Duration
    private let logger: Logger
    private var nextTick: Duration?
    private var outbox: [SendRequest] = []
    private let wake: AsyncStream<Void>
    private let wakeContinuation: AsyncStream<Void>.Continuation
    public private(set) var malformedFrames = 0

    /// - Parameters:
    ///   - apply: receives fresh remote changesets; hand them to
    ///     ``ApplyQueue/offer(_:)`` (broadcast never waits on the disk).
    ///   - now: the current time as an offset from a fixed origin.
    public init(localActor: ActorID, config: BroadcastConfig = BroadcastConfig(), seed: UInt64,
                transport: any ChangesetTransport, logger: Logger = Logger(label: "patina.broadcast"),
                now: @escaping @Sendable () -> Duration = BroadcastShell.continuousNow(),
                apply: @escaping @Sendable ([Changeset]) async -> Void) {
        self.machine = BroadcastStateMachine(localActor: localActor, config: config, rng: SplitMix64(seed: seed))
        self.transport = transport
        self.apply = apply
        self.now = now
        self.logger = logger
        (wake, wakeContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// A `now` reading the continuous clock from the moment it is made.
    public static func continuousNow() -> @Sendable () -> Duration {
        let origin = ContinuousClock.now
        return { origin.duration(to: .now) }
    }

    public var metrics: BroadcastMetrics { machine.metrics }
    public var stateMachine: BroadcastStateMachine { machine }
    /// When the next retransmission tick is due, if any.
    public var nextTickAt: Duration? { nextTick }
    /// Sends decided but not yet handed to the transport.
    public var pendingSendCount: Int { outbox.count }

    // MARK: Events

    public func membersChanged(_ members: [BroadcastMember]) async {
        await execute(machine.membersChanged(members))
    }

    public func localCommit(_ changesets: [Changeset]) async {
        await execute(machine.localCommit(changesets, now: now()))
    }

    public func received(_ changesets: [Changeset], from peer: String) async {
        await execute(machine.received(changesets, from: peer, now: now()))
    }

    /// The bytes of one broadcast uni stream: one or more `changesets` frames.
    /// A malformed stream is dropped whole and counted.
    public func received(streamBytes: [UInt8], from peer: String, maxFrameSize: Int = Frame.defaultMaxSize) async throws(WireError) {
        let changesets = try decode(streamBytes, from: peer, maxFrameSize: maxFrameSize)
        await received(changesets, from: peer)
    }

    /// Broadcast datagrams that arrived together from `peer`, each holding whole frames:
    /// decoded one by one (a malformed one is dropped alone and counted), then handled
    /// as one event, so relays to a peer leave as one frame and the apply queue is
    /// offered one batch.
    public func received(datagrams: [[UInt8]], from peer: String, maxFrameSize: Int = Frame.defaultMaxSize) async {
        var changesets: [Changeset] = []
        for datagram in datagrams {
            if let decoded = try? decode(datagram, from: peer, maxFrameSize: maxFrameSize) { changesets += decoded }
        }
        if !changesets.isEmpty { await received(changesets, from: peer) }
    }

    /// The changesets of whole `changesets` frames; a malformed message is counted and logged.
    private func decode(_ bytes: [UInt8], from peer: String, maxFrameSize: Int) throws(WireError) -> [Changeset] {
        var decoder = BroadcastStreamDecoder(maxFrameSize: maxFrameSize)
        do throws(WireError) {
            try decoder.feed(bytes)
            try decoder.finish()
            return decoder.changesets
        } catch {
            malformedFrames += 1
            logger.warning("malformed broadcast message", metadata: ["peer": "\(peer)", "error": "\(error)"])
            throw error
        }
    }

    /// Runs due retransmissions.
    public func tick() async {
        let t = now()
        if let n = nextTick, n <= t { nextTick = nil }
        await execute(machine.tick(now: t))
    }

    public func sendCompleted(_ peer: String) async {
        await execute(machine.sendCompleted(peer))
    }

    public func sendFailed(_ peer: String) async {
        await execute(machine.sendFailed(peer))
    }

    // MARK: Running

    /// Manual mode: hands every decided send to the transport, one after the
    /// other, reporting each outcome (which may decide more sends, also done).
    public func performPendingSends() async {
        while !outbox.isEmpty {
            let request = outbox.removeFirst()
            do {
                try await transport.send(request.frame, to: request.peer)
                await sendCompleted(request.peer)
            } catch {
                await sendFailed(request.peer)
            }
        }
    }

    /// Sends concurrently (at most one in flight per peer, as the machine
    /// decides) and ticks on `clock` until the task is cancelled.
    public func run<C: Clock>(clock: C, tickResolution: Duration = .milliseconds(10)) async where C.Duration == Duration {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    let wait = await self.untilNextTick(resolution: tickResolution)
                    do { try await clock.sleep(for: wait) } catch { return }
                    await self.tick()
                }
            }
            for await _ in wake {
                for request in takeOutbox() {
                    let transport = self.transport
                    group.addTask {
                        do {
                            try await transport.send(request.frame, to: request.peer)
                            await self.sendCompleted(request.peer)
                        } catch {
                            await self.sendFailed(request.peer)
                        }
                    }
                }
            }
            group.cancelAll()
        }
    }

    private func untilNextTick(resolution: Duration) -> Duration {
        guard let n = nextTick else { return .milliseconds(50) }
        return max(resolution, n - now())
    }

    private func takeOutbox() -> [SendRequest] {
        defer { outbox = [] }
        return outbox
    }

    /// Sends are queued before anything is applied: relaying first keeps the
    /// local disk off the propagation path.
    private func execute(_ directives: [BroadcastDirective]) async {
        var toApply: [[Changeset]] = []
        var sends = 0
        for d in directives {
            switch d {
            case .send(let peer, let changesets):
                outbox.append(SendRequest(peer: peer, frame: WireMessage.changesets(changesets).encodeFrame()))
                sends += 1
            case .apply(let changesets):
                toApply.append(changesets)
            case .scheduleTick(let after):
                let at = now() + after
                if nextTick == nil || at < nextTick! { nextTick = at }
            }
        }
        // One wake for all of them: the sender takes the whole outbox at once.
        if sends > 0 { wakeContinuation.yield() }
        for c in toApply { await apply(c) }
    }
}
