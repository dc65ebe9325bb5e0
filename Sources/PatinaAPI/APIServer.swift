import Foundation
import Hummingbird
import HTTPTypes
import Logging
import Metrics
import PatinaCore
import PatinaStore
import ServiceLifecycle
import Synchronization

/// What the API needs from the rest of the node.
public struct APIHooks: Sendable {
    /// Hands a local commit's changesets to the cluster (broadcast).
    public var onLocalCommit: @Sendable ([Changeset]) async -> Void = { _ in }
    /// Live figures for `/v1/health`.
    public var health: @Sendable () async -> HealthFigures = { HealthFigures() }
    /// The region of a remote actor, if membership knows it (labels the lag histogram).
    public var regionOf: @Sendable (ActorID) -> String? = { _ in nil }
    public init() {}
}

public struct HealthFigures: Sendable {
    public var members = 0
    public var p99LagSeconds = 0.0
    public var queueSize = 0
    public init(members: Int = 0, p99LagSeconds: Double = 0, queueSize: Int = 0) {
        self.members = members
        self.p99LagSeconds = p99LagSeconds
        self.queueSize = queueSize
    }
}

public struct APIConfig: Sendable {
    public var bearerToken: String?
    /// Requests handled at once before new ones get 503 (Corrosion: 128).
    public var maxConcurrency = 128
    public var statementTimeout: Duration = .seconds(30)
    public var maxBodyBytes = 16 << 20
    public init(bearerToken: String? = nil) { self.bearerToken = bearerToken }
}

/// The HTTP API, with Corrosion's paths and JSON shapes.
public struct PatinaAPI: Sendable {
    public let access: StoreAccess
    public let subscriptions: SubscriptionManager
    let config: APIConfig
    let hooks: APIHooks
    let updates: UpdateFeed
    public let lag: LagTracker

    public init(access: StoreAccess, config: APIConfig, hooks: APIHooks) {
        self.access = access
        self.config = config
        self.hooks = hooks
        subscriptions = SubscriptionManager(access: access)
        updates = UpdateFeed()
        lag = LagTracker(regionOf: hooks.regionOf)
        let subscriptions = self.subscriptions
        let updates = self.updates
        let lag = self.lag
        // Made once: a metrics factory lookup per commit is work under the store's lock.
        let rowsChangedRemote = Counter(label: "patina_rows_changed_total", dimensions: [("source", "remote")])
        let rowsChangedLocal = Counter(label: "patina_rows_changed_total", dimensions: [("source", "local")])
        // Listeners run under the store's lock: hand the event on, nothing more.
        access.store.addListener { event in
            let rows = event.rows.values.reduce(0) { $0 + $1.count }
            (event.source == .remote ? rowsChangedRemote : rowsChangedLocal).increment(by: rows)
            if event.source == .remote { lag.record(event.origins) }
            updates.publish(event)
            if !subscriptions.isEmpty { Task { await subscriptions.committed(tables: Set(event.rows.keys)) } }
        }
    }

    public func router() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: MetricsMiddleware())
        if let token = config.bearerToken { router.add(middleware: BearerTokenMiddleware(token: token)) }
        router.add(middleware: ConcurrencyLimitMiddleware(limit: config.maxConcurrency))
        router.post("/v1/transactions") { request, context in try await self.transactions(request, context) }
        router.post("/v1/queries") { request, context in try await self.query(request, context) }
        router.post("/v1/subscriptions") { request, context in try await self.subscribe(request, context) }
        router.get("/v1/subscriptions/:id") { request, context in try await self.resubscribe(request, context) }
        router.post("/v1/updates/:table") { request, context in try await self.updates(request, context) }
        router.get("/v1/health") { request, context in try await self.health(request, context) }
        return router
    }

    // MARK: Transactions

    func body(_ request: Request) async throws -> Data {
        do {
            var buffer = try await request.body.collect(upTo: config.maxBodyBytes)
            return Data(buffer.readBytes(length: buffer.readableBytes) ?? [])
        } catch let error as HTTPError where error.status == .contentTooLarge {
            throw APIError(.contentTooLarge, "request body larger than \(config.maxBodyBytes) bytes")
        }
    }

    func transactions(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let statements = try UserStatement.parseList(try await body(request))
        guard !statements.isEmpty else { throw APIError(.badRequest, "empty transaction: send at least one statement") }
        let timeout = try Self.timeout(request) ?? config.statementTimeout
        let store = access.store
        let started = ContinuousClock.now
        let outcome: TransactionOutcome = try await access.writer.run {
            var results: [String] = []
            var failure: (index: Int, error: any Error)?
            do {
                let written = try store.write(timeout: timeout) { tx -> [String] in
                    var lines: [String] = []
                    for (i, statement) in statements.enumerated() {
                        let t0 = ContinuousClock.now
                        do {
                            let n = try tx.execute(statement.sql, statement.parameters)
                            lines.append("{\"rows_affected\":\(n),\"time\":\(JSONWriter.seconds(ContinuousClock.now - t0))}")
                        } catch {
                            failure = (i, error)
                            throw error
                        }
                    }
                    return lines
                }
                results = written.value
                return TransactionOutcome(results: results, version: written.version, changesets: written.changesets, failure: nil)
            } catch {
                return TransactionOutcome(results: results, version: nil, changesets: [], failure: failure ?? (statements.count - 1, error))
            }
        }
        if !outcome.changesets.isEmpty {
            Counter(label: "patina_changes_captured_total").increment(by: outcome.changesets.reduce(0) { $0 + $1.changeCount })
            await hooks.onLocalCommit(outcome.changesets)
        }
        var json = "{\"results\":["
        var status = HTTPResponse.Status.ok
        if let failure = outcome.failure {
            // Statements before the failing one ran, then everything rolled back.
            var lines = Array(repeating: "{\"rows_affected\":0,\"time\":0.0}", count: failure.index)
            lines.append("{\"error\":\(JSONWriter.string(APIError.message(for: failure.error)))}")
            json += lines.joined(separator: ",")
            status = APIError.status(for: failure.error)
        } else {
            json += outcome.results.joined(separator: ",")
        }
        json += "],\"time\":\(JSONWriter.seconds(ContinuousClock.now - started))"
        if let version = outcome.version { json += ",\"version\":\(version)" }
        json += ",\"actor_id\":\"\(store.actorID)\"}\n"
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: json)))
    }

    struct TransactionOutcome: Sendable {
        var results: [String]
        var version: Int64?
        var changesets: [Changeset]
        var failure: (index: Int, error: any Error)?
    }

    static func timeout(_ request: Request) throws -> Duration? {
        guard let raw = request.uri.queryParameters["timeout"] else { return nil }
        guard let seconds = Double(String(raw)), seconds > 0, seconds <= 3600 else {
            throw APIError(.badRequest, "timeout must be a number of seconds in (0, 3600]")
        }
        return .milliseconds(Int64(seconds * 1000))
    }

    // MARK: Queries

    func query(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let statement = try UserStatement.parseOne(try await body(request))
        let timeout = try Self.timeout(request) ?? .seconds(60)
        let reader = await access.pool.acquire()
        let cursor: ReadCursor
        do {
            cursor = try await access.readers.run { try reader.open(statement.sql, statement.parameters, timeout: timeout) }
        } catch {
            await access.pool.release(reader)
            throw APIError(APIError.status(for: error), APIError.message(for: error))
        }
        let access = self.access
        let started = ContinuousClock.now
        let body = ResponseBody { writer in
            var rowID: Int64 = 0
            var header = "{\"columns\":["
            header += cursor.columns.map(JSONWriter.string).joined(separator: ",")
            header += "]}\n"
            try await writer.write(ByteBuffer(string: header))
            do {
                while true {
                    // Pages keep memory bounded; the writer's backpressure paces SQLite.
                    let page = try await access.readers.run { try cursor.next(limit: 512) }
                    if page.isEmpty { break }
                    var out = ""
                    out.reserveCapacity(page.count * 64)
                    for cells in page {
                        rowID += 1
                        out += "{\"row\":[\(rowID),"
                        JSONWriter.append(cells, to: &out)
                        out += "]}\n"
                    }
                    try await writer.write(ByteBuffer(string: out))
                }
                try await writer.write(ByteBuffer(string: "{\"eoq\":{\"time\":\(JSONWriter.seconds(ContinuousClock.now - started))}}\n"))
            } catch {
                try? await writer.write(ByteBuffer(string: "{\"error\":\(JSONWriter.string(APIError.message(for: error)))}\n"))
            }
            cursor.close()
            await access.pool.release(reader)
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: body)
    }

    // MARK: Subscriptions

    func subscribe(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let statement = try UserStatement.parseOne(try await body(request))
        let subscription: Subscription
        do {
            subscription = try await subscriptions.subscribe(sql: statement.sql, parameters: statement.parameters)
        } catch {
            throw APIError(APIError.status(for: error), APIError.message(for: error))
        }
        return try await stream(subscription, from: try Self.from(request))
    }

    func resubscribe(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        guard let raw = context.parameters.get("id"), let id = UUID(uuidString: raw),
              let subscription = await subscriptions.subscription(id)
        else { throw APIError(.notFound, "no such subscription") }
        return try await stream(subscription, from: try Self.from(request))
    }

    static func from(_ request: Request) throws -> Int64? {
        guard let raw = request.uri.queryParameters["from"] else { return nil }
        guard let n = Int64(String(raw)), n >= 0 else { throw APIError(.badRequest, "from must be a change id") }
        return n
    }

    func stream(_ subscription: Subscription, from: Int64?) async throws -> Response {
        guard let attached = await subscription.attach(from: from) else {
            throw APIError(.gone, "change \(from ?? 0) is no longer buffered; subscribe again without from")
        }
        let columns = await subscription.columns
        let started = ContinuousClock.now
        let body = ResponseBody { writer in
            if from == nil {
                var out = "{\"columns\":[" + columns.map(JSONWriter.string).joined(separator: ",") + "]}\n"
                for (rowID, cells) in attached.rows {
                    out += "{\"row\":[\(rowID),"
                    JSONWriter.append(cells, to: &out)
                    out += "]}\n"
                    if out.utf8.count > 64 << 10 {
                        try await writer.write(ByteBuffer(string: out))
                        out = ""
                    }
                }
                out += "{\"eoq\":{\"time\":\(JSONWriter.seconds(ContinuousClock.now - started)),\"change_id\":\(attached.changeID)}}\n"
                try await writer.write(ByteBuffer(string: out))
            }
            for event in attached.replay { try await writer.write(ByteBuffer(string: Self.line(event))) }
            // Ends on graceful shutdown, so an open subscription does not hold the exit.
            for await event in attached.events.cancelOnGracefulShutdown() {
                try await writer.write(ByteBuffer(string: Self.line(event)))
                if case .lagged = event { break }
            }
            try await writer.finish(nil)
        }
        var headers: HTTPFields = [.contentType: "application/x-ndjson"]
        headers[HTTPField.Name("corro-query-id")!] = subscription.id.uuidString.lowercased()
        return Response(status: .ok, headers: headers, body: body)
    }

    static func line(_ event: SubscriptionEvent) -> String {
        switch event {
        case .change(let kind, let rowID, let cells, let changeID):
            var out = "{\"change\":[\"\(kind.rawValue)\",\(rowID),"
            JSONWriter.append(cells, to: &out)
            out += ",\(changeID)]}\n"
            return out
        case .lagged:
            return "{\"error\":\"subscriber too far behind; subscribe again\"}\n"
        }
    }

    // MARK: Updates

    func updates(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        guard let table = context.parameters.get("table"), let info = access.store.tables.first(where: { $0.name == table }) else {
            throw APIError(.notFound, "no such replicated table")
        }
        let subscription = updates.subscribe(table: info.name)
        let inbox = subscription.inbox
        let body = ResponseBody { writer in
            // Also ends when the body is never written (a client gone before the head):
            // the subscription ends when the last reference to it goes.
            defer { subscription.cancel() }
            // On graceful shutdown the stream ends at once, after what is queued, instead
            // of holding the node's exit for the server's drain timeout.
            try await withGracefulShutdownHandler {
                // Everything queued since the last write goes as one write: a listener that
                // fell behind catches up instead of paying one write per commit.
                while let chunks = await inbox.next() {
                    var buffer = ByteBuffer()
                    buffer.reserveCapacity(chunks.reduce(0) { $0 + $1.count })
                    for chunk in chunks { buffer.writeBytes(chunk) }
                    try await writer.write(buffer)
                }
                if inbox.overflowed { try await writer.write(ByteBuffer(string: "{\"error\":\"listener too far behind\"}\n")) }
                try await writer.finish(nil)
            } onGracefulShutdown: {
                subscription.cancel()
            }
        }
        return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: body)
    }

    // MARK: Health

    func health(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        var figures = await hooks.health()
        figures.p99LagSeconds = max(figures.p99LagSeconds, lag.p99)
        // On a reader thread: bookkeeping takes the store's lock, which a merge
        // holds for a whole batch; a health probe must not park the async pool.
        let store = access.store
        let gaps = try await access.readers.run {
            store.bookkeeping().values.reduce(Int64(0)) { sum, book in
                sum + book.gaps.reduce(0) { $0 + Int64($1.count) }
            }
        }
        let q = request.uri.queryParameters
        var healthy = true
        if let limit = q["gaps"].flatMap({ Int64(String($0)) }), gaps > limit { healthy = false }
        if let limit = q["p99_lag"].flatMap({ Double(String($0)) }), figures.p99LagSeconds > limit { healthy = false }
        if let limit = q["queue_size"].flatMap({ Int(String($0)) }), figures.queueSize > limit { healthy = false }
        if let limit = q["members"].flatMap({ Int(String($0)) }), figures.members < limit { healthy = false }
        let json = "{\"response\":{\"gaps\":\(gaps),\"members\":\(figures.members),\"p99_lag\":\(figures.p99LagSeconds),\"queue_size\":\(figures.queueSize)}}\n"
        return Response(status: healthy ? .ok : .serviceUnavailable, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(string: json)))
    }
}

/// `/v1/updates/{table}`: one NDJSON line per changed row, from commit events; a
/// listener more than 100,000 commits or 16 MiB of lines behind is cut off with an
/// error line.
final class UpdateFeed: Sendable {
    static let maxQueuedCommits = 100_000
    static let maxQueuedBytes = 16 << 20
    private let listeners = Mutex<[UUID: (table: String, inbox: ChunkInbox)]>([:])

    /// One listener's place in the feed; it leaves the feed when cancelled or released.
    final class Subscription: Sendable {
        let inbox: ChunkInbox
        private let id: UUID
        private let feed: UpdateFeed

        init(feed: UpdateFeed, id: UUID, inbox: ChunkInbox) {
            self.feed = feed
            self.id = id
            self.inbox = inbox
        }

        func cancel() { feed.unsubscribe(id) }
        deinit { feed.unsubscribe(id) }
    }

    func subscribe(table: String) -> Subscription {
        let inbox = ChunkInbox(capacity: Self.maxQueuedCommits, maxBytes: Self.maxQueuedBytes, overflow: .finish)
        let id = UUID()
        listeners.withLock { $0[id] = (table, inbox) }
        return Subscription(feed: self, id: id, inbox: inbox)
    }

    var listenerCount: Int { listeners.withLock { $0.count } }

    private func unsubscribe(_ id: UUID) {
        let gone = listeners.withLock { $0.removeValue(forKey: id) }
        gone?.inbox.finish()
    }

    func publish(_ event: CommitEvent) {
        let waiting: [ChunkInbox] = listeners.withLock { listeners in
            // Lines are built once per table, however many listen to it (this runs
            // under the store's lock, on the writer's path). A commit's lines are one
            // chunk, and the stream's writer takes every chunk queued in one write.
            var textByTable: [String: [UInt8]] = [:]
            var waiting: [ChunkInbox] = []
            var behind: [UUID] = []
            for (id, listener) in listeners {
                guard let rows = event.rows[listener.table] else { continue }
                let text = textByTable[listener.table] ?? Self.text(rows)
                textByTable[listener.table] = text
                switch listener.inbox.append(text) {
                case .queued(let readerWaiting): if readerWaiting { waiting.append(listener.inbox) }
                case .refused: behind.append(id)  // too far behind: its stream ends with an error line
                }
            }
            for id in behind { listeners[id] = nil }
            return waiting
        }
        for inbox in waiting { inbox.wakeReader() }
    }

    /// One commit's lines for one table, in key order: an NDJSON line per changed row.
    static func text(_ rows: [PackedPrimaryKey: RowChangeKind]) -> [UInt8] {
        var text = ""
        for (pk, kind) in rows.sorted(by: { $0.key < $1.key }) {
            text += "{\"notify\":[\"\(kind == .delete ? "delete" : "update")\","
            JSONWriter.append((try? pk.decode()) ?? [], to: &text)
            text += "]}\n"
        }
        return Array(text.utf8)
    }
}

/// Requires `Authorization: Bearer <token>` on every request.
struct BearerTokenMiddleware<Context: RequestContext>: RouterMiddleware {
    let token: [UInt8]
    init(token: String) { self.token = Array(token.utf8) }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let header = request.headers[.authorization], header.hasPrefix("Bearer ") else {
            throw APIError(.unauthorized, "missing bearer token")
        }
        let given = Array(header.dropFirst("Bearer ".count).utf8)
        // Constant time in the token's length, so timing does not leak a prefix.
        var diff = given.count == token.count ? 0 : 1
        for i in 0..<token.count { diff |= Int(token[i] ^ (i < given.count ? given[i] : 0)) }
        guard diff == 0 else { throw APIError(.unauthorized, "wrong bearer token") }
        return try await next(request, context)
    }
}

/// Sheds load: beyond `limit` requests in progress, answer 503 at once.
struct ConcurrencyLimitMiddleware<Context: RequestContext>: RouterMiddleware {
    let limit: Int
    let inFlight = InFlightCounter()

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard inFlight.enter(limit: limit) else {
            throw APIError(.serviceUnavailable, "max concurrency limit reached")
        }
        defer { inFlight.leave() }
        return try await next(request, context)
    }
}

final class InFlightCounter: Sendable {
    private let count = Atomic<Int>(0)
    func enter(limit: Int) -> Bool {
        if count.wrappingAdd(1, ordering: .relaxed).newValue > limit {
            count.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        return true
    }
    func leave() { count.wrappingSubtract(1, ordering: .relaxed) }
}
