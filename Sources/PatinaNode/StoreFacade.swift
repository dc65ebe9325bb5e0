import PatinaStore

/// Store operations the CLI runs without an agent.
public enum PatinaStoreFacade {
    public static func restore(from backup: String, to databasePath: String) throws {
        try Backup.restore(from: backup, to: databasePath)
    }
}
