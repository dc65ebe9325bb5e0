import Logging
import PatinaCore

/// One datagram received by a `MembershipTransport`.
public struct MembershipDatagram: Sendable {
    public var bytes: [UInt8]
    /// The transport's idea of where it came from. Informational only (logs,
    /// refusals): replies go to the address inside the message.
    public var from: String

    public init(bytes: [UInt8], from: String) {
        self.bytes = bytes
        self.from = from
    }
}

/// Carries membership messages, one message per datagram (QUIC DATAGRAM frames in
/// Patina, RFC 9221). SWIM tolerates loss, so delivery is best effort.
public protocol MembershipTransport: Sendable {
    /// Sends one datagram to `address` ("host:port"). MUST NOT wait for long (a slow or
    /// unreachable peer must not stall the failure detector): queue or drop instead.
    /// MAY drop silently. Never called with more than `MembershipConfig.maxMessageSize`
    /// bytes.
    func send(_ bytes: [UInt8], to address: String) async

    /// Datagrams received for this node. Iterated by exactly one consumer, the shell's
    /// `run()`.
    var incoming: AsyncStream<MembershipDatagram> { get }
}

/// What survives a restart: this node's incarnation (so its next one supersedes what
/// others remember) and the members (so a node whose bootstrap peers are gone can
/// still announce to someone).
public struct PersistedMembership: Sendable, Hashable {
    public var incarnation: UInt64
    public var members: [MemberInfo]

    public init(incarnation: UInt64, members: [MemberInfo]) {
        self.incarnation = incarnation
        self.members = members
    }
}

/// Where the shell keeps `PersistedMembership` (Patina: a SQLite table).
/// `save` is called at most once per `persistInterval` while something changed, and
/// once when `run()` ends; `load` once when `run()` starts.
public struct MembershipPersistence: Sendable {
    public var load: @Sendable () async throws -> PersistedMembership?
    public var save: @Sendable (PersistedMembership) async throws -> Void

    public init(
        load: @escaping @Sendable () async throws -> PersistedMembership?,
        save: @escaping @Sendable (PersistedMembership) async throws -> Void
    ) {
        self.load = load
        self.save = save
    }
}

/// A member's status change, as published by `MembershipShell.events`.
public struct MembershipEvent: Sendable, Hashable {
    public var member: MemberInfo
    /// nil: the member was not known before.
    public var from: MemberStatus?
    /// nil: the member was forgotten (down for `downRemovalAfter`).
    public var to: MemberStatus?
}

/// Runs a `MembershipState` on a clock and a transport: feeds it datagrams and timer
/// ticks, executes its directives, publishes changes and persists members.
///
/// Lifecycle: `run()` does everything and returns when its task is cancelled (after
/// a last save); the caller owns that task (e.g. a ServiceGroup). No task is started
/// by `init`.
public actor MembershipShell<C: Clock> where C.Duration == Duration {
    /// Status changes, for one consumer. Finishes when `run()` returns.
    public nonisolated let events: AsyncStream<MembershipEvent>
    private let eventsContinuation: AsyncStream<MembershipEvent>.Continuation

    private var state: MembershipState
    private let transport: any MembershipTransport
    private let clock: C
    private let origin: C.Instant
    private let persistence: MembershipPersistence?
    private let persistIntervalMicros: UInt64
    private var logger: Logger

    /// Encoded messages in the order the instance produced them; one loop sends them.
    private let outbound: AsyncStream<(bytes: [UInt8], address: String)>
    private let outboundContinuation: AsyncStream<(bytes: [UInt8], address: String)>.Continuation

    private var sleeper: Task<Void, Never>?
    private var sleepingUntil: UInt64 = .max
    private var dirty = false
    private var lastSaveAt: UInt64 = 0
    private var savedIncarnation: UInt64?
    private var lastRefusalLog: UInt64?
    private var refusedSinceLog = 0
    private var malformedCount = 0

    /// - Parameters:
    ///   - myself: this node; address and region at most 255 UTF-8 bytes.
    ///   - bootstrap: addresses to announce to at start (and whenever alone).
    ///   - persistInterval: at most one save this often (Corrosion: 60 s).
    ///   - seed: seeds the instance's random choices; random by default.
    public init(
        myself: MemberIdentity, config: MembershipConfig, bootstrap: [String], transport: some MembershipTransport,
        clock: C, persistence: MembershipPersistence? = nil, persistInterval: Duration = .seconds(10),
        seed: UInt64 = UInt64.random(in: 0...UInt64.max), logger: Logger = Logger(label: "patina.membership")
    ) throws(MembershipShellError) {
        guard myself.address.utf8.count <= 255, (myself.region?.utf8.count ?? 0) <= 255 else {
            throw MembershipShellError(message: "address and region must be at most 255 bytes")
        }
        guard config.maxMessageSize >= 300 else {
            throw MembershipShellError(message: "maxMessageSize must be at least 300 bytes")
        }
        state = MembershipState(myself: myself, config: config, bootstrap: bootstrap, seed: seed)
        self.transport = transport
        self.clock = clock
        origin = clock.now
        self.persistence = persistence
        persistIntervalMicros = persistInterval.membershipMicros
        var logger = logger
        logger[metadataKey: "actor"] = "\(myself.id)"
        self.logger = logger
        (events, eventsContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(4096))
        // A transport that cannot keep up loses the newest messages, like a full socket.
        (outbound, outboundContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingOldest(1024))
    }

    // MARK: Queries

    public var myself: MemberIdentity { state.myself }
    /// Every known member but this node.
    public var members: [MemberInfo] { state.members }
    public func member(_ id: ActorID) -> MemberInfo? { state.member(id) }
    public var liveMemberCount: Int { state.liveMemberCount }
    /// Up to `k` alive members with the lowest minimum RTT.
    public func nearest(_ k: Int) -> [MemberInfo] { state.nearest(k) }

    /// Records an RTT sample (e.g. ngtcp2's smoothed RTT of the connection to `id`).
    public func recordRTT(_ id: ActorID, _ sample: Duration) { state.recordRTT(id, sample) }

    /// Adds bootstrap addresses at run time (e.g. `patina cluster rejoin`).
    public func addBootstrap(_ addresses: [String]) { state.addBootstrap(addresses) }

    // MARK: Running

    /// Loads persisted members, announces, then probes, gossips and answers until
    /// the task is cancelled; saves once more on the way out.
    public func run() async {
        await loadPersisted()
        execute(state.start(now: now()))
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.receiveLoop() }
            group.addTask { await self.timerLoop() }
            group.addTask { await self.sendLoop() }
            await group.waitForAll()
        }
        await save(force: true)
        eventsContinuation.finish()
    }

    /// Tells a few members this node is leaving (they mark it down at once instead of
    /// after a suspicion timeout). Call before cancelling `run()`.
    public func leave() async {
        for d in state.leave(now: now()) {
            if case .send(let message, let address) = d {
                await transport.send(MembershipCodec.encode(message), to: address)
            }
        }
    }

    private func sendLoop() async {
        let transport = self.transport
        for await message in outbound {
            await transport.send(message.bytes, to: message.address)
        }
    }

    private func receiveLoop() async {
        for await datagram in transport.incoming {
            let message: MembershipMessage
            do {
                message = try MembershipCodec.decode(datagram.bytes)
            } catch {
                malformedCount += 1
                logger.debug(
                    "malformed membership datagram",
                    metadata: ["from": "\(datagram.from)", "error": "\(error)", "count": "\(malformedCount)"])
                continue
            }
            execute(state.onMessage(message, from: datagram.from, now: now()))
        }
    }

    /// One sleep at a time until the instance's next deadline; an earlier deadline
    /// (set by a message) cancels the sleep. The sleep is a child of this loop in all
    /// but name: it is awaited at once and cancelled with it.
    private func timerLoop() async {
        while !Task.isCancelled {
            let current = now()
            var wake = state.nextDeadline
            if dirty, persistence != nil { wake = min(wake, lastSaveAt + persistIntervalMicros) }
            wake = min(wake, current + 1_000_000)
            if wake > current {
                let deadline = origin.advanced(by: .membershipMicros(wake))
                let clock = self.clock
                let sleep = Task { _ = try? await clock.sleep(until: deadline, tolerance: nil) }
                sleeper = sleep
                sleepingUntil = wake
                await withTaskCancellationHandler {
                    await sleep.value
                } onCancel: {
                    sleep.cancel()
                }
                sleeper = nil
                sleepingUntil = .max
                if Task.isCancelled { break }
            }
            execute(state.onTick(now: now()))
            await save(force: false)
        }
    }

    // MARK: Directives

    private func now() -> UInt64 { origin.duration(to: clock.now).membershipMicros }

    private func execute(_ directives: [MembershipDirective]) {
        for d in directives {
            switch d {
            case .send(let message, let address):
                outboundContinuation.yield((MembershipCodec.encode(message), address))
            case .scheduleTick(let at):
                if at < sleepingUntil { sleeper?.cancel() }
            case .membershipChanged(let member, let from, let to):
                dirty = true
                eventsContinuation.yield(MembershipEvent(member: member, from: from, to: to))
                logger.info(
                    "member \(from.map(\.description) ?? "new") -> \(to.map(\.description) ?? "removed")",
                    metadata: [
                        "member": "\(member.id)", "address": "\(member.address)",
                        "incarnation": "\(member.incarnation)",
                    ])
            case .refused(let from, let reason):
                refusedSinceLog += 1
                let t = now()
                if lastRefusalLog.map({ t >= $0 + 10_000_000 }) ?? true {
                    logger.warning(
                        "refused membership message", metadata: ["from": "\(from)", "reason": "\(reason)",
                            "refused": "\(refusedSinceLog)"])
                    lastRefusalLog = t
                    refusedSinceLog = 0
                }
            }
        }
        if state.myself.incarnation != savedIncarnation { dirty = true }
    }

    // MARK: Persistence

    private func loadPersisted() async {
        guard let persistence else { return }
        do {
            guard let saved = try await persistence.load() else { return }
            state.restoreIncarnation(atLeast: saved.incarnation + 1)
            state.addBootstrap(saved.members.filter { $0.status != .down }.map(\.address))
            savedIncarnation = saved.incarnation
            logger.info(
                "loaded persisted membership",
                metadata: ["members": "\(saved.members.count)", "incarnation": "\(state.myself.incarnation)"])
        } catch {
            logger.warning("could not load persisted membership", metadata: ["error": "\(error)"])
        }
    }

    private func save(force: Bool) async {
        guard let persistence, dirty || force else { return }
        let t = now()
        guard force || t >= lastSaveAt + persistIntervalMicros else { return }
        dirty = false
        lastSaveAt = t
        let snapshot = PersistedMembership(incarnation: state.myself.incarnation, members: state.members)
        savedIncarnation = snapshot.incarnation
        do {
            try await persistence.save(snapshot)
        } catch {
            dirty = true
            logger.warning("could not save membership", metadata: ["error": "\(error)"])
        }
    }
}

extension MembershipShell where C == ContinuousClock {
    public init(
        myself: MemberIdentity, config: MembershipConfig, bootstrap: [String], transport: some MembershipTransport,
        persistence: MembershipPersistence? = nil, persistInterval: Duration = .seconds(10),
        logger: Logger = Logger(label: "patina.membership")
    ) throws(MembershipShellError) {
        try self.init(
            myself: myself, config: config, bootstrap: bootstrap, transport: transport, clock: ContinuousClock(),
            persistence: persistence, persistInterval: persistInterval, logger: logger)
    }
}

public struct MembershipShellError: Error, Hashable, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}
