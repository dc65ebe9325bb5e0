import CSQLite
import Foundation
import PatinaCore

/// The store's single-threaded core: one writer connection and the in-memory
/// mirror of its bookkeeping. ``Store`` serializes every call into it.
final class StoreCore {
    /// "patina/3": one clock row per data row, captured by the preupdate hook
    /// (see RowClock and CaptureFunctions); files of older formats are refused.
    static let formatTag = "patina/3"

    let path: String
    let db: SQLiteConnection
    let capture = CaptureState()
    let deadline = DeadlineBox()
    private(set) var actorID: ActorID = .random()
    var tables: [String: TableInfo] = [:]
    var hlc = HybridLogicalClock()
    /// Actor ↔ site ordinal (0 is this node).
    var siteOfActor: [ActorID: Int64] = [:]
    var actorOfSite: [Int64: ActorID] = [:]
    var books: [Int64: ActorBookkeeping] = [:]
    var listeners: [Int: @Sendable (CommitEvent) -> Void] = [:]
    var nextListenerID = 0
    var tableStatements: [String: TableStatements] = [:]
    /// Tables whose clock is keyed by their integer key (ReplicatedTableDDL.clockTable).
    var integerKeyTables: Set<String> = []
    /// Per table, the literal DEFAULT of each non-key column (see constantDefault).
    var columnDefaults: [String: [SQLValue?]] = [:]
    /// Prepared user statements, by SQL text (see prepareUserStatement).
    var userStatements: [String: SQLiteStatement] = [:]
    var lastUserStatement: (sql: String, statement: SQLiteStatement)?
    var now: () -> UInt64 = { UInt64(Date().timeIntervalSince1970 * 1000) }
    let lock: DatabaseLock

    init(path: String) throws {
        self.path = path
        try Self.checkFileHeader(path: path)
        lock = try DatabaseLock(path: path)
        do {
            db = try SQLiteConnection(path: path)
        } catch {
            throw StoreOpenError(path: path, reason: error.message)
        }
        CaptureFunctions.register(on: db.handle, state: capture)
        CaptureFunctions.installCapture(on: db.handle, state: capture)
        deadline.install(on: db.handle)
        do {
            try openOrInitialize()
        } catch let error as StoreOpenError {
            throw error
        } catch let error as SQLiteError where error.isCorrupt {
            throw StoreOpenError(path: path, reason: "the database is corrupt or not a database (\(error.message))")
        }
    }

    /// Refuses files that are not SQLite databases before SQLite touches them.
    private static func checkFileHeader(path: String) throws {
        guard let handle = FileHandle(forReadingAtPath: path) else { return }  // new file
        defer { try? handle.close() }
        let header = (try? handle.read(upToCount: 16)) ?? Data()
        if header.isEmpty { return }
        if header != Data("SQLite format 3\0".utf8) {
            throw StoreOpenError(path: path, reason: "not a SQLite database (bad file header); refusing to touch it")
        }
    }

    private func openOrInitialize() throws {
        let hasMeta = try db.scalar("SELECT count(*) FROM sqlite_master WHERE name = '__patina_meta'") == .integer(1)
        if hasMeta {
            let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
            if size < 256 << 20 {
                let check = try db.query("PRAGMA quick_check")
                if check.first?.first != .text("ok") {
                    throw StoreOpenError(path: path, reason: "the database is corrupt: \(check.prefix(3).map { "\($0[0])" }.joined(separator: "; "))")
                }
            }
            let format = try db.scalar("SELECT value FROM __patina_meta WHERE key = 'format'")
            guard format == .text(Self.formatTag) else {
                if case .text(let old)? = format, old.hasPrefix("patina/") {
                    throw StoreOpenError(path: path, reason: "unknown Patina database format \(old) (this build reads \(Self.formatTag) only): recreate the node's database and let sync refill it")
                }
                throw StoreOpenError(path: path, reason: "unknown Patina database format")
            }
            guard case .blob(let bytes) = try db.scalar("SELECT value FROM __patina_meta WHERE key = 'actor_id'"),
                let actor = ActorID(bytes: bytes)
            else { throw StoreOpenError(path: path, reason: "the node identity is missing or malformed") }
            actorID = actor
            try configure()
            if try db.scalar("SELECT value FROM __patina_meta WHERE key = 'needs_identity'") != nil {
                try adoptNewIdentity(previous: actor)
            }
        } else {
            let userObjects = try db.scalar("SELECT count(*) FROM sqlite_master")
            if userObjects != .integer(0) {
                throw StoreOpenError(path: path, reason: "an existing SQLite database that is not a Patina database; refusing to modify it")
            }
            try configure()
            try initialize()
        }
        try loadState()
    }

    /// Durable across a process crash (WAL, synchronous NORMAL); a page cache big
    /// enough for the clock tables and `__patina_versions`, which a replicated
    /// write touches once per row and once per version.
    static let performancePragmas = "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY;"

    /// Only once the file is known to be ours: WAL changes the file header.
    private func configure() throws {
        try db.execute("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = OFF; " + Self.performancePragmas)
    }

    private func initialize() throws {
        try db.execute(
            """
            BEGIN;
            CREATE TABLE __patina_meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
            CREATE TABLE __patina_sites (ordinal INTEGER PRIMARY KEY, actor BLOB NOT NULL UNIQUE);
            CREATE TABLE __patina_bookkeeping (site INTEGER NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
                PRIMARY KEY (site, start)) WITHOUT ROWID;
            CREATE TABLE __patina_cleared (site INTEGER NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
                PRIMARY KEY (site, start)) WITHOUT ROWID;
            CREATE TABLE __patina_versions (site INTEGER NOT NULL, version INTEGER NOT NULL, last_seq INTEGER NOT NULL,
                ts INTEGER NOT NULL, keys BLOB NOT NULL, PRIMARY KEY (site, version)) WITHOUT ROWID;
            CREATE TABLE __patina_partials (site INTEGER NOT NULL, version INTEGER NOT NULL, last_seq INTEGER NOT NULL,
                ts INTEGER NOT NULL, seqs TEXT NOT NULL, PRIMARY KEY (site, version)) WITHOUT ROWID;
            CREATE TABLE __patina_buffer (site INTEGER NOT NULL, version INTEGER NOT NULL, seq INTEGER NOT NULL,
                tbl TEXT NOT NULL, pk BLOB NOT NULL, cid TEXT NOT NULL, val, col_version INTEGER NOT NULL, cl INTEGER NOT NULL);
            CREATE INDEX __patina_buffer_version ON __patina_buffer (site, version);
            CREATE TABLE __patina_members (actor BLOB PRIMARY KEY, address TEXT NOT NULL, state TEXT NOT NULL,
                rtt_ms REAL, updated_at INTEGER NOT NULL) WITHOUT ROWID;
            COMMIT;
            """)
        try db.run("INSERT INTO __patina_meta (key, value) VALUES ('format', ?), ('actor_id', ?)",
                   [.text(Self.formatTag), .blob(actorID.bytes)])
        try db.run("INSERT INTO __patina_sites (ordinal, actor) VALUES (0, ?)", [.blob(actorID.bytes)])
    }

    /// A node started from a backup takes a new actor id; the backed-up node's
    /// changes move to a site of their own, so their origin is kept.
    private func adoptNewIdentity(previous: ActorID) throws {
        let fresh = ActorID.random()
        try inTransaction {
            guard case .integer(let maxSite) = try db.scalar("SELECT max(ordinal) FROM __patina_sites") else { return }
            let moved = maxSite + 1
            // Local bookkeeping is derived at load (see loadState); the moved site needs it written.
            let head = try localHead()
            try db.run("DELETE FROM __patina_bookkeeping WHERE site = 0")
            if head > 0 { try db.run("INSERT INTO __patina_bookkeeping (site, start, \"end\") VALUES (0, 1, ?)", [.integer(head)]) }
            try db.run("UPDATE __patina_sites SET actor = ? WHERE ordinal = 0", [.blob(fresh.bytes)])
            try db.run("INSERT INTO __patina_sites (ordinal, actor) VALUES (?, ?)", [.integer(moved), .blob(previous.bytes)])
            let clocks = try db.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB '*__patina_clock'")
            let clockTables = clocks.compactMap { row -> String? in if case .text(let n) = row[0] { return n } else { return nil } }
            for table in clockTables { try moveLocalClocks(clockTable: table, to: moved) }
            let tables = ["__patina_bookkeeping", "__patina_cleared", "__patina_versions", "__patina_partials", "__patina_buffer"]
            for table in tables {
                try db.run("UPDATE \(quoteIdentifier(table)) SET site = ? WHERE site = 0", [.integer(moved)])
            }
            try db.run("UPDATE __patina_meta SET value = ? WHERE key = 'actor_id'", [.blob(fresh.bytes)])
            try db.run("DELETE FROM __patina_meta WHERE key = 'needs_identity'")
        }
        actorID = fresh
    }

    /// The highest version of this node (site 0): listed, cleared or in persisted bookkeeping.
    private func localHead() throws -> Int64 {
        var head: Int64 = 0
        for sql in ["SELECT max(version) FROM __patina_versions WHERE site = 0",
                    "SELECT max(\"end\") FROM __patina_cleared WHERE site = 0",
                    "SELECT max(\"end\") FROM __patina_bookkeeping WHERE site = 0"] {
            if case .integer(let v)? = try db.scalar(sql) { head = max(head, v) }
        }
        return head
    }

    /// Re-attributes the clocks of site 0 to `moved`: compact rows in SQL,
    /// explicit ones (packed entries) decoded and rewritten.
    private func moveLocalClocks(clockTable: String, to moved: Int64) throws {
        let name = quoteIdentifier(clockTable)
        try db.run("UPDATE \(name) SET site = ? WHERE site = 0", [.integer(moved)])
        var rewritten: [(SQLValue, [UInt8])] = []
        for row in try db.query("SELECT pk, cells FROM \(name) WHERE typeof(cells) = 'blob'") {
            guard case .blob(let bytes) = row[1] else { continue }
            var clock = try RowClock(.explicit(bytes))
            var changed = false
            if clock.sentinel?.site == 0 { clock.sentinel!.site = moved; changed = true }
            for i in clock.cells.indices where clock.cells[i]?.site == 0 {
                clock.cells[i]!.site = moved
                changed = true
            }
            guard changed, case .explicit(let out) = clock.stored else { continue }
            rewritten.append((row[0], out))
        }
        for (pk, bytes) in rewritten {
            try db.run("UPDATE \(name) SET cells = ? WHERE pk = ?", [.blob(bytes), pk])
        }
    }

    private func loadState() throws {
        for row in try db.query("SELECT ordinal, actor FROM __patina_sites") {
            guard case .integer(let site) = row[0], case .blob(let bytes) = row[1], let actor = ActorID(bytes: bytes) else { continue }
            siteOfActor[actor] = site
            actorOfSite[site] = actor
            books[site] = ActorBookkeeping()
        }
        for row in try db.query("SELECT site, start, \"end\" FROM __patina_bookkeeping") {
            guard case .integer(let site) = row[0], case .integer(let s) = row[1], case .integer(let e) = row[2] else { continue }
            books[site, default: ActorBookkeeping()].applied.insert(s...e)
        }
        for row in try db.query("SELECT site, start, \"end\" FROM __patina_cleared") {
            guard case .integer(let site) = row[0], case .integer(let s) = row[1], case .integer(let e) = row[2] else { continue }
            books[site, default: ActorBookkeeping()].cleared.insert(s...e)
        }
        for row in try db.query("SELECT site, version, last_seq, seqs FROM __patina_partials") {
            guard case .integer(let site) = row[0], case .integer(let v) = row[1], case .integer(let last) = row[2],
                case .text(let seqs) = row[3]
            else { continue }
            books[site, default: ActorBookkeeping()].partials[v] = (Self.decodeRanges(seqs), last)
        }
        // This node's versions are 1...head with no gaps; commits do not rewrite the
        // range (one page less per commit), so it is derived here.
        let head = try localHead()
        if head > 0 { books[0, default: ActorBookkeeping()].applied.insert(1...head) }
        if case .integer(let maxTs) = try db.scalar("SELECT max(ts) FROM __patina_versions") {
            hlc.observe(HybridTimestamp(rawValue: UInt64(bitPattern: maxTs)))
        }
        try loadTables()
    }

    /// Replicated tables are those with a clock table.
    func loadTables() throws {
        tables = [:]
        integerKeyTables = []
        capture.watched = []
        tableStatements = [:]
        userStatements = [:]
        lastUserStatement = nil
        db.clearStatementCache()
        let names = try db.query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '%__patina%' AND name NOT LIKE 'sqlite_%'")
        for row in names {
            guard case .text(let name) = row[0] else { continue }
            let clock = name + "__patina_clock"
            guard try db.scalar("SELECT count(*) FROM sqlite_master WHERE name = ?", [.text(clock)]) == .integer(1) else { continue }
            let columns = try ParsedSchema.columnInfo(of: name, in: db)
            let info = TableInfo(
                name: name,
                pkColumns: columns.filter { $0.pkIndex > 0 }.sorted { $0.pkIndex < $1.pkIndex }.map(\.name),
                columns: columns.filter { $0.pkIndex == 0 }.map(\.name),
                realColumns: Set(columns.filter(\.hasRealAffinity).map(\.name)))
            tables[name] = info
            let integerKey = try ReplicatedTableDDL.clockHasIntegerKey(info, in: db)
            if integerKey { integerKeyTables.insert(name) }
            capture.watched.append(CapturedTable(table: info, declarationOrder: columns.map(\.name), rowidKey: integerKey))
            columnDefaults[name] = try columns.filter { $0.pkIndex == 0 }.map { try constantDefault($0.defaultSQL) }
        }
    }

    /// The value of a literal DEFAULT (what a row written before its column was
    /// added reads as); nil for none or an expression.
    private func constantDefault(_ sql: String?) throws -> SQLValue? {
        guard let sql, let first = sql.first else { return nil }
        let literal = first == "'" || first == "-" || first == "+" || first.isNumber
            || sql.uppercased().hasPrefix("X'") || ["NULL", "TRUE", "FALSE"].contains(sql.uppercased())
        guard literal else { return nil }
        return try db.scalar("SELECT " + sql)
    }

    // MARK: Sites and bookkeeping persistence

    func site(for actor: ActorID) throws -> Int64 {
        if let site = siteOfActor[actor] { return site }
        let site = Int64(siteOfActor.count)
        try db.run("INSERT INTO __patina_sites (ordinal, actor) VALUES (?, ?)", [.integer(site), .blob(actor.bytes)])
        siteOfActor[actor] = site
        actorOfSite[site] = actor
        books[site] = ActorBookkeeping()
        return site
    }

    func persistRanges(table: String, site: Int64, ranges: VersionRangeSet) throws {
        try db.run("DELETE FROM \(table) WHERE site = ?", [.integer(site)])
        for r in ranges.ranges {
            try db.run("INSERT INTO \(table) (site, start, \"end\") VALUES (?, ?, ?)",
                       [.integer(site), .integer(r.lowerBound), .integer(r.upperBound)])
        }
    }

    /// Writes the range sets of `sites` that differ from `before` (the books as
    /// of the transaction's start): cleared ranges fragment as history grows, and
    /// rewriting them on every merge batch would cost more the older the node.
    func persistBooks(sites: some Sequence<Int64>, before: [Int64: ActorBookkeeping]) throws {
        for site in Set(sites) {
            let book = books[site] ?? ActorBookkeeping()
            let old = before[site]
            if old?.applied != book.applied {
                try persistRanges(table: "__patina_bookkeeping", site: site, ranges: book.applied)
            }
            if old?.cleared != book.cleared {
                try persistRanges(table: "__patina_cleared", site: site, ranges: book.cleared)
            }
        }
    }

    static func encodeRanges(_ set: VersionRangeSet) -> String {
        set.ranges.map { "\($0.lowerBound)-\($0.upperBound)" }.joined(separator: ",")
    }

    static func decodeRanges(_ text: String) -> VersionRangeSet {
        var set = VersionRangeSet()
        for part in text.split(separator: ",") {
            let bounds = part.split(separator: "-").compactMap { Int64($0) }
            if bounds.count == 2, bounds[0] <= bounds[1] { set.insert(bounds[0]...bounds[1]) }
        }
        return set
    }

    // MARK: Transactions

    /// Runs `body` in one write transaction. On any error the transaction rolls
    /// back, and so does the in-memory state that mirrors the database (the
    /// bookkeeping and the site ordinals), or it would claim versions whose data
    /// is gone (and serve them later as cleared).
    func inTransaction<T>(_ body: () throws -> T) throws -> T {
        let (booksBefore, sitesBefore, actorsBefore) = (books, siteOfActor, actorOfSite)
        // Prepared once and kept: parsing them is a few percent of a busy merge.
        try db.run("BEGIN IMMEDIATE")
        do {
            let value = try body()
            try db.run("COMMIT")
            return value
        } catch {
            capture.capturing = false
            capture.userStatementsActive = false
            if !db.isAutocommit { try? db.execute("ROLLBACK") }
            (books, siteOfActor, actorOfSite) = (booksBefore, sitesBefore, actorsBefore)
            throw error
        }
    }

    func notify(_ event: CommitEvent) {
        if event.rows.isEmpty { return }
        for listener in listeners.values { listener(event) }
    }
}
