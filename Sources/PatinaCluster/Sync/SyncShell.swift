import Foundation
import Logging
import PatinaCore
import PatinaStore

/// One bi-directional byte stream carrying a sync session (a QUIC bi stream in
/// production, an in-memory pipe in tests).
public protocol SyncStream: Sendable {
    func write(_ bytes: [UInt8]) async throws
    /// Closes the write side (the peer's `read` then returns nil).
    func finish() async throws
    /// The next chunk, of any size; nil at end of stream.
    func read() async throws -> [UInt8]?
}

/// Opens sync streams to peers.
public protocol SyncConnector: Sendable {
    func openSyncStream(to peer: String) async throws -> any SyncStream
}

/// Why a sync session ended early. A struct over a private code, so cases can be added.
public struct SyncError: Error, Hashable, Sendable, CustomStringConvertible {
    enum Code: Hashable, Sendable {
        case timeout
        case busy
        case protocolViolation(String)
        case remoteAbort(String)
        case malformed(WireError)
    }

    let code: Code
    init(_ code: Code) { self.code = code }

    public static let timeout = SyncError(.timeout)
    public static let busy = SyncError(.busy)

    public var isMalformed: Bool {
        if case .malformed = code { return true }
        return false
    }

    public var description: String {
        switch code {
        case .timeout: "sync: peer too slow (timed out)"
        case .busy: "sync: peer is busy serving other sessions"
        case .protocolViolation(let s): "sync: protocol violation: \(s)"
        case .remoteAbort(let s): "sync: peer aborted: \(s)"
        case .malformed(let e): "sync: \(e)"
        }
    }
}

/// What a client session pulled.
public struct SyncSessionReport: Sendable, Hashable {
    public var peer: String
    public var remoteHeads: [ActorID: Int64] = [:]
    /// Need items computed from both states before the transfer.
    public var needs = 0
    public var frames = 0
    public var changesetsReceived = 0
    public var changesReceived = 0
    /// Changesets the peer held back as still in flight (`inFlightGrace`).
    public var heldBack = 0
    /// The peer had something this node lacks, sent or held back: either way
    /// the next round should come soon.
    public var foundMissing: Bool { changesetsReceived > 0 || heldBack > 0 }
}

/// What a served session sent.
public struct SyncServeReport: Sendable, Hashable {
    public var busy = false
    public var needs = 0
    public var frames = 0
    public var changesetsSent = 0
    /// Changesets left out as still in flight (`SyncConfig.inFlightGrace`).
    public var heldBack = 0
}

/// What sync did since the shell started, for the metrics endpoint.
public struct SyncStats: Sendable, Hashable {
    /// Rounds that came due (one that found no peer to sync with included).
    public var rounds = 0
    /// Sessions this node pulled, by outcome.
    public var pulledOK = 0
    public var pulledFailed = 0
    /// Changesets and changes pulled (by sessions that failed later too): what
    /// broadcast missed, as changes still in flight are held back (`inFlightGrace`).
    public var changesetsPulled = 0
    public var changesPulled = 0
    /// Sessions peers opened here, by outcome.
    public var servedOK = 0
    public var servedBusy = 0
    public var servedFailed = 0
    public var changesetsServed = 0
    /// Changesets left out of served sessions as still in flight (`inFlightGrace`).
    public var changesetsHeldBack = 0
}

/// Runs sync sessions over ``SyncStream``s and the ``SyncStateMachine`` that
/// schedules them.
///
/// Protocol (client pulls): the client sends `syncState` and finishes its
/// side; the server answers `syncBusy`, or `syncState` followed by
/// `syncChangesets` frames of at most `maxChangesPerFrame` changes /
/// `maxBytesPerFrame` bytes, then `syncDone`. Every read and write has a
/// timeout; any malformed frame ends the session with an error.
public actor SyncShell {
    public let config: SyncConfig
    private let store: Store
    private let worker: BlockingExecutor
    private let apply: @Sendable ([Changeset]) async -> Void
    private let logger: Logger
    private let wallClockMilliseconds: @Sendable () -> UInt64
    private var machine: SyncStateMachine
    private var started = false
    private var counts = SyncStats()

    /// - Parameters:
    ///   - wallClockMilliseconds: Unix time in ms, compared with the origin's
    ///     hybrid timestamps for `inFlightGrace`.
    ///   - apply: receives each pulled chunk; awaiting it is the session's
    ///     backpressure (hand it to ``ApplyQueue/enqueue(_:)``).
    public init(store: Store, config: SyncConfig = SyncConfig(), seed: UInt64, worker: BlockingExecutor = BlockingExecutor(label: "patina.sync"),
                logger: Logger = Logger(label: "patina.sync"),
                wallClockMilliseconds: @escaping @Sendable () -> UInt64 = { UInt64(max(0, Date().timeIntervalSince1970 * 1000)) },
                apply: @escaping @Sendable ([Changeset]) async -> Void) {
        self.store = store
        self.wallClockMilliseconds = wallClockMilliseconds
        self.config = config
        self.worker = worker
        self.apply = apply
        self.logger = logger
        self.machine = SyncStateMachine(config: config, rng: SplitMix64(seed: seed))
    }

    public var stateMachine: SyncStateMachine { machine }
    public var stats: SyncStats {
        var s = counts
        s.rounds = machine.rounds
        return s
    }

    public func membersChanged(_ peers: [SyncPeer]) {
        machine.membersChanged(peers)
    }

    // MARK: Rounds

    /// Manual tick: starts a round when one is due and runs its sessions to
    /// the end. Returns each session's outcome; `now` is the caller's clock.
    @discardableResult
    public func tick(now: Duration, connector: any SyncConnector) async -> [Result<SyncSessionReport, SyncError>] {
        if !started {
            started = true
            _ = machine.start(now: now)
        }
        let store = self.store
        let heads = (try? await worker.run { store.heads() }) ?? [:]
        let directives = machine.tick(now: now, localHeads: heads)
        var sessions: [(UInt64, String)] = []
        for d in directives {
            if case .startSession(let id, let peer) = d { sessions.append((id, peer)) }
        }
        guard !sessions.isEmpty else { return [] }
        let results = await withTaskGroup(of: (UInt64, Result<SyncSessionReport, SyncError>).self) { group in
            for (id, peer) in sessions {
                group.addTask {
                    do {
                        let stream = try await connector.openSyncStream(to: peer)
                        return (id, .success(try await self.pull(from: peer, over: stream)))
                    } catch let e as SyncError {
                        return (id, .failure(e))
                    } catch {
                        return (id, .failure(SyncError(.protocolViolation("\(error)"))))
                    }
                }
            }
            var out: [(UInt64, Result<SyncSessionReport, SyncError>)] = []
            for await r in group { out.append(r) }
            return out
        }
        for (id, result) in results {
            switch result {
            case .success(let report):
                counts.pulledOK += 1
                _ = machine.sessionCompleted(id, now: now, remoteHeads: report.remoteHeads, foundMissing: report.foundMissing)
            case .failure(let error):
                logger.debug("sync session failed", metadata: ["error": "\(error)"])
                counts.pulledFailed += 1
                _ = machine.sessionFailed(id, now: now)
            }
        }
        return results.sorted { $0.0 < $1.0 }.map(\.1)
    }

    /// Runs rounds on `clock` until the task is cancelled.
    public func run<C: Clock>(connector: any SyncConnector, clock: C) async where C.Duration == Duration {
        let origin = clock.now
        while !Task.isCancelled {
            _ = await tick(now: origin.duration(to: clock.now), connector: connector)
            let wait = machine.nextRoundAt.map { max(.milliseconds(10), $0 - origin.duration(to: clock.now)) } ?? config.minInterval
            do { try await clock.sleep(for: wait) } catch { return }
        }
    }

    // MARK: Client

    /// Pulls what this node lacks from the peer at the other end of `stream`.
    public func pull(from peer: String, over stream: any SyncStream) async throws(SyncError) -> SyncSessionReport {
        let config = self.config
        let apply = self.apply
        let local = try await localState()
        do {
            return try await withSyncTimeout(config.sessionTimeout) {
                var report = SyncSessionReport(peer: peer)
                try await withSyncTimeout(config.ioTimeout) {
                    try await stream.write(WireMessage.syncState(local).encodeFrame())
                    try await stream.finish()
                }
                var reader = FrameReader(stream: stream, timeout: config.ioTimeout)
                switch try await reader.next() {
                case .syncBusy: throw SyncError.busy
                case .syncAbort(let reason): throw SyncError(.remoteAbort(reason))
                case .syncState(let remote):
                    report.remoteHeads = remote.heads
                    report.needs = SyncState.needs(local: local, remote: remote).count
                case nil: throw SyncError(.protocolViolation("stream ended before the peer's state"))
                case let other?: throw SyncError(.protocolViolation("expected syncState, got \(other.frameType)"))
                }
                while true {
                    switch try await reader.next() {
                    case .syncChangesets(let changesets):
                        report.frames += 1
                        report.changesetsReceived += changesets.count
                        report.changesReceived += changesets.reduce(0) { $0 + $1.changeCount }
                        await self.notePulled(changesets)
                        await apply(changesets)
                    case .syncDone(let heldBack):
                        report.heldBack = heldBack
                        guard try await reader.next() == nil else {
                            throw SyncError(.protocolViolation("data after syncDone"))
                        }
                        return report
                    case .syncAbort(let reason): throw SyncError(.remoteAbort(reason))
                    case nil: throw SyncError(.protocolViolation("stream ended before syncDone"))
                    case let other?: throw SyncError(.protocolViolation("unexpected \(other.frameType)"))
                    }
                }
            }
        } catch let e as SyncError {
            throw e
        } catch let e as WireError {
            throw SyncError(.malformed(e))
        } catch {
            throw SyncError(.protocolViolation("\(error)"))
        }
    }

    // MARK: Server

    /// Serves one session opened by a peer: answers `syncBusy` when this node
    /// already serves `maxServedSessions`.
    @discardableResult
    public func serve(_ stream: any SyncStream) async throws(SyncError) -> SyncServeReport {
        var report = SyncServeReport()
        guard machine.acceptIncoming() else {
            report.busy = true
            counts.servedBusy += 1
            try? await withSyncTimeout(config.ioTimeout) {
                try await stream.write(WireMessage.syncBusy.encodeFrame())
                try await stream.finish()
            }
            return report
        }
        defer { machine.servingEnded() }
        let config = self.config
        do {
            var reader = FrameReader(stream: stream, timeout: config.ioTimeout)
            let remote: SyncState
            switch try await reader.next() {
            case .syncState(let s): remote = s
            case nil: throw SyncError(.protocolViolation("stream ended before the peer's state"))
            case let other?: throw SyncError(.protocolViolation("expected syncState, got \(other.frameType)"))
            }
            let local = try await localState()
            try await write(.syncState(local), to: stream)
            let needs = SyncState.needs(local: remote, remote: local)
            report.needs = needs.count
            var chunker = SyncChunker(maxChanges: config.maxChangesPerFrame, maxBytes: config.maxBytesPerFrame)
            let graceMilliseconds = config.inFlightGraceMilliseconds
            // In flight: committed within the grace, by this node's clock. A timestamp
            // further ahead than the grace comes from a clock that is off: holding
            // those back would leave that node's lost changes unrepaired until this
            // clock caught up, so they are served.
            let now = wallClockMilliseconds()
            let inFlight = graceMilliseconds > 0
                ? now.saturatingSubtract(graceMilliseconds)...now.saturatingAdd(graceMilliseconds) : nil
            for need in needs {
                let (changesets, heldBack) = try await fetch(need, holdingBack: inFlight)
                report.heldBack += heldBack
                for c in changesets {
                    for frame in chunker.add(c) {
                        report.frames += 1
                        report.changesetsSent += frame.count
                        try await write(.syncChangesets(frame), to: stream)
                    }
                }
            }
            if let last = chunker.flush() {
                report.frames += 1
                report.changesetsSent += last.count
                try await write(.syncChangesets(last), to: stream)
            }
            try await write(.syncDone(heldBack: report.heldBack), to: stream)
            try await withSyncTimeout(config.ioTimeout) { try await stream.finish() }
            counts.servedOK += 1
            counts.changesetsServed += report.changesetsSent
            counts.changesetsHeldBack += report.heldBack
            return report
        } catch {
            counts.servedFailed += 1
            let e: SyncError =
                switch error {
                case let e as SyncError: e
                case let e as WireError: SyncError(.malformed(e))
                default: SyncError(.protocolViolation("\(error)"))
                }
            try? await withSyncTimeout(.seconds(1)) {
                try await stream.write(WireMessage.syncAbort(e.description).encodeFrame())
                try await stream.finish()
            }
            throw e
        }
    }

    // MARK: Helpers

    private func notePulled(_ changesets: [Changeset]) {
        counts.changesetsPulled += changesets.count
        counts.changesPulled += changesets.reduce(0) { $0 + $1.changeCount }
    }

    private func localState() async throws(SyncError) -> SyncState {
        let store = self.store
        do {
            let book = try await worker.run { store.bookkeeping() }
            return SyncState(actor: store.actorID, bookkeeping: book)
        } catch {
            throw SyncError(.protocolViolation("local store: \(error)"))
        }
    }

    private func write(_ m: WireMessage, to stream: any SyncStream) async throws {
        let bytes = m.encodeFrame()
        try await withSyncTimeout(config.ioTimeout) { try await stream.write(bytes) }
    }

    /// The changesets answering one need, read from the store in bounded steps,
    /// less the versions committed in `holdingBack` (counted, not read).
    private func fetch(_ need: SyncNeed, holdingBack: ClosedRange<UInt64>?) async throws
        -> (changesets: [Changeset], heldBack: Int)
    {
        let store = self.store
        switch need {
        case .full(let actor, let versions):
            var out: [Changeset] = []
            var heldBack = 0
            var lo = versions.lowerBound
            while lo <= versions.upperBound {
                let (end, overflow) = lo.addingReportingOverflow(max(1, config.versionsPerRead) - 1)
                let hi = overflow ? versions.upperBound : min(versions.upperBound, end)
                let range = lo...hi
                let read = try await worker.run { try store.changesets(actor: actor, versions: range, holdingBack: holdingBack) }
                out += read.changesets
                heldBack += read.heldBack
                if hi == versions.upperBound { break }
                lo = hi + 1
            }
            return (out, heldBack)
        case .partial(let actor, let version, let seqs):
            let read = try await worker.run {
                try store.changesets(actor: actor, versions: version...version, holdingBack: holdingBack)
            }
            return (Self.restrict(read.changesets, to: seqs), read.heldBack)
        }
    }

    /// The parts of `changesets` (of one version) covering `seqs`, each a valid
    /// seq sub-range carrying exactly its changes; cleared ones pass unchanged.
    static func restrict(_ changesets: [Changeset], to seqs: [ClosedRange<Int64>]) -> [Changeset] {
        var out: [Changeset] = []
        for c in changesets {
            guard case .changes(let v, let changes, let have, let lastSeq, let ts) = c.content else {
                out.append(c)
                continue
            }
            for r in seqs where r.upperBound >= have.lowerBound && r.lowerBound <= have.upperBound {
                let sub = max(r.lowerBound, have.lowerBound)...min(r.upperBound, have.upperBound)
                out.append(.changes(actor: c.actor, version: v, changes: changes.filter { sub.contains($0.seq) },
                                    seqs: sub, lastSeq: lastSeq, ts: ts))
            }
        }
        return out
    }
}

/// Packs changesets into `syncChangesets` frames of bounded size.
struct SyncChunker {
    let maxChanges: Int
    let maxBytes: Int
    private var current: [Changeset] = []
    private var changes = 0
    private var bytes = 0

    init(maxChanges: Int, maxBytes: Int) {
        self.maxChanges = max(1, maxChanges)
        self.maxBytes = max(1024, maxBytes)
    }

    /// Adds one changeset (split by seq if needed); returns frames now full.
    mutating func add(_ c: Changeset) -> [[Changeset]] {
        var full: [[Changeset]] = []
        for piece in c.split(maxBytes: maxBytes - 16, maxChanges: maxChanges) {
            let size = ChangesetCodec.encodedSize(piece)
            let n = max(1, piece.changeCount)
            if !current.isEmpty && (changes + n > maxChanges || bytes + size > maxBytes) {
                if let f = flush() { full.append(f) }
            }
            current.append(piece)
            changes += n
            bytes += size
        }
        return full
    }

    mutating func flush() -> [Changeset]? {
        guard !current.isEmpty else { return nil }
        defer {
            current = []
            changes = 0
            bytes = 0
        }
        return current
    }
}

/// Reads whole messages from a stream, with a timeout per read.
struct FrameReader {
    let stream: any SyncStream
    let timeout: Duration
    var decoder = FrameDecoder()
    var ready: [Frame] = []
    var ended = false

    init(stream: any SyncStream, timeout: Duration, maxFrameSize: Int = Frame.defaultMaxSize) {
        self.stream = stream
        self.timeout = timeout
        self.decoder = FrameDecoder(maxFrameSize: maxFrameSize)
    }

    /// The next message; nil at a clean end of stream. Throws ``WireError`` on
    /// malformed data, ``SyncError/timeout`` when the peer is too slow.
    mutating func next() async throws -> WireMessage? {
        while ready.isEmpty {
            if ended { return nil }
            let stream = self.stream
            let chunk = try await withSyncTimeout(timeout) { try await stream.read() }
            if let chunk {
                ready += try decoder.feed(chunk)
            } else {
                try decoder.finish()
                ended = true
            }
        }
        return try WireMessage.decode(ready.removeFirst())
    }
}

/// Runs `body`, throwing ``SyncError/timeout`` if it takes longer than `limit`.
func withSyncTimeout<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw SyncError.timeout }
        return value
    }
}

extension UInt64 {
    fileprivate func saturatingSubtract(_ other: UInt64) -> UInt64 { self > other ? self - other : 0 }
    fileprivate func saturatingAdd(_ other: UInt64) -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}
