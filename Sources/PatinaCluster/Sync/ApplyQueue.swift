import Logging
import PatinaCore
import PatinaStore

/// The one queue through which remote changesets, from broadcast and from
/// sync, reach ``Store/merge(_:)``.
///
/// No timer: when the queue is idle a changeset is merged at once; while a
/// merge runs, arrivals accumulate and go as the next batch (bounded by
/// `maxBatchChanges` / `maxBatchChangesets`). Merges run on a
/// ``BlockingExecutor``, never on the cooperative pool. Memory is bounded by
/// `maxQueuedChanges`: ``enqueue(_:)`` waits for room (sync uses it, so a
/// fast server is slowed to the speed of the local disk), ``offer(_:)``
/// refuses instead (broadcast uses it; sync repairs what was refused).
///
/// ``run()`` does the merging; the caller owns its task (service style).
public actor ApplyQueue {
    public struct Config: Sendable {
        public var maxBatchChanges = 16_000
        public var maxBatchChangesets = 2_000
        public var maxQueuedChanges = 200_000

        public init() {}
    }

    public struct Stats: Sendable, Hashable {
        public var enqueuedChangesets = 0
        public var mergedChangesets = 0
        public var batches = 0
        public var refused = 0
        public var rejections = 0
        public var mergeErrors = 0
        public var largestBatch = 0
    }

    public let config: Config
    public private(set) var stats = Stats()
    private let store: Store
    private let worker: BlockingExecutor
    private let logger: Logger
    private let onMerged: (@Sendable (MergeOutcome) -> Void)?
    private var queue: [Changeset] = []
    private var head = 0
    private var queuedChanges = 0
    private var merging = false
    private var roomWaiters: [CheckedContinuation<Void, Never>] = []
    private var idleWaiters: [CheckedContinuation<Void, Never>] = []
    private let signals: AsyncStream<Void>
    private let signal: AsyncStream<Void>.Continuation

    public init(store: Store, config: Config = Config(), worker: BlockingExecutor = BlockingExecutor(label: "patina.apply"),
                logger: Logger = Logger(label: "patina.apply"), onMerged: (@Sendable (MergeOutcome) -> Void)? = nil) {
        self.store = store
        self.config = config
        self.worker = worker
        self.logger = logger
        self.onMerged = onMerged
        (signals, signal) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Changesets waiting (not counting the batch being merged).
    public var depth: Int { queue.count - head }

    /// Queues `changesets`, waiting while the queue is full.
    public func enqueue(_ changesets: [Changeset]) async {
        guard !changesets.isEmpty else { return }
        let weight = Self.weight(changesets)
        while queuedChanges > 0 && queuedChanges + weight > config.maxQueuedChanges {
            await withCheckedContinuation { roomWaiters.append($0) }
        }
        append(changesets, weight: weight)
    }

    /// Queues `changesets` unless the queue is full; false when refused.
    @discardableResult
    public func offer(_ changesets: [Changeset]) -> Bool {
        guard !changesets.isEmpty else { return true }
        let weight = Self.weight(changesets)
        if queuedChanges > 0 && queuedChanges + weight > config.maxQueuedChanges {
            stats.refused += changesets.count
            return false
        }
        append(changesets, weight: weight)
        return true
    }

    /// Returns once everything queued so far has been merged.
    public func waitUntilIdle() async {
        if depth == 0 && !merging { return }
        await withCheckedContinuation { idleWaiters.append($0) }
    }

    /// Merges batches until the calling task is cancelled.
    public func run() async {
        for await _ in signals {
            await drain()
        }
    }

    private func append(_ changesets: [Changeset], weight: Int) {
        queue += changesets
        queuedChanges += weight
        stats.enqueuedChangesets += changesets.count
        signal.yield()
    }

    private func drain() async {
        while depth > 0 {
            var batch: [Changeset] = []
            var changes = 0
            while head < queue.count, batch.count < config.maxBatchChangesets {
                let w = Self.weight(queue[head])
                if !batch.isEmpty && changes + w > config.maxBatchChanges { break }
                batch.append(queue[head])
                changes += w
                head += 1
            }
            queuedChanges -= changes
            if head > 1024 && head * 2 > queue.count {
                queue.removeFirst(head)
                head = 0
            }
            merging = true
            let store = self.store
            let toMerge = batch
            do {
                let outcome = try await worker.run { try store.merge(toMerge) }
                stats.rejections += outcome.rejections.count
                if !outcome.rejections.isEmpty {
                    logger.warning("merge rejected changesets", metadata: ["rejections": "\(outcome.rejections.prefix(3))"])
                }
                onMerged?(outcome)
            } catch {
                stats.mergeErrors += 1
                logger.error("merge failed", metadata: ["error": "\(error)", "changesets": "\(batch.count)"])
            }
            merging = false
            stats.batches += 1
            stats.mergedChangesets += batch.count
            stats.largestBatch = max(stats.largestBatch, batch.count)
            let waiters = roomWaiters
            roomWaiters = []
            for w in waiters { w.resume() }
        }
        if head == queue.count {
            queue = []
            head = 0
        }
        let idle = idleWaiters
        idleWaiters = []
        for w in idle { w.resume() }
    }

    /// Changes count toward the bound; a cleared range counts as one.
    static func weight(_ changesets: [Changeset]) -> Int {
        changesets.reduce(0) { $0 + weight($1) }
    }

    static func weight(_ changeset: Changeset) -> Int { max(1, changeset.changeCount) }
}
