import Foundation
import PatinaCore

/// `patina backup` / `patina restore`: a consistent copy of a node's database
/// that a new node can start from with an identity of its own.
public enum Backup {
    /// Copies the database with `VACUUM INTO` (a consistent snapshot while the
    /// node runs), forgets the cluster members, and marks the copy so that the
    /// node opening it takes a new actor id. The old id's changes keep their
    /// origin: they become a remote actor's.
    public static func create(store: Store, to path: String) throws {
        if FileManager.default.fileExists(atPath: path) {
            throw StoreOpenError(path: path, reason: "already exists; refusing to overwrite a file")
        }
        let reader = try store.makeReader()
        do {
            try reader.backup(to: path)
            let copy = try SQLiteConnection(path: path, create: false)
            try copy.execute("""
                DELETE FROM __patina_members;
                INSERT OR REPLACE INTO __patina_meta (key, value) VALUES ('needs_identity', 1);
                """)
        } catch {
            // A copy without its mark would start a second node under the same actor id.
            for suffix in ["", "-wal", "-shm", "-journal"] { try? FileManager.default.removeItem(atPath: path + suffix) }
            throw error
        }
    }

    /// Installs a backup as the database at `databasePath`. Refuses while a node
    /// has that database open.
    public static func restore(from backup: String, to databasePath: String) throws {
        guard FileManager.default.fileExists(atPath: backup) else {
            throw StoreOpenError(path: backup, reason: "no such file")
        }
        let lock = try DatabaseLock(path: databasePath)  // fails if an agent holds it
        defer { lock.release() }
        // Check the backup is ours before replacing anything.
        let check = try SQLiteConnection(path: backup, readOnly: true, create: false)
        guard try check.scalar("SELECT value FROM __patina_meta WHERE key = 'format'") == .text(StoreCore.formatTag) else {
            throw StoreOpenError(path: backup, reason: "not a Patina backup")
        }
        // Made by `create`, which marks the copy to take a new identity; a copy of a
        // database file made otherwise would bring back the original node's actor id.
        guard try check.scalar("SELECT value FROM __patina_meta WHERE key = 'needs_identity'") != nil else {
            throw StoreOpenError(path: backup, reason: "not made by `patina backup` (it keeps its node's identity); refusing to restore it")
        }
        let temporary = databasePath + ".restore"
        try? FileManager.default.removeItem(atPath: temporary)
        try FileManager.default.copyItem(atPath: backup, toPath: temporary)
        for suffix in ["-wal", "-shm"] { try? FileManager.default.removeItem(atPath: databasePath + suffix) }
        if rename(temporary, databasePath) != 0 {
            throw StoreOpenError(path: databasePath, reason: "cannot move the restored copy into place: \(String(cString: strerror(errno)))")
        }
    }
}

/// An exclusive advisory lock next to the database: one node per database file.
final class DatabaseLock {
    private var fd: Int32

    init(path: String) throws {
        fd = open(path + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StoreOpenError(path: path + ".lock", reason: String(cString: strerror(errno))) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            close(fd)
            fd = -1
            throw StoreOpenError(path: path, reason: "another patina process has this database open")
        }
    }

    func release() {
        if fd >= 0 {
            flock(fd, LOCK_UN)
            close(fd)
            fd = -1
        }
    }

    deinit { release() }
}
