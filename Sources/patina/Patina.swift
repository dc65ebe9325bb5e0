import ArgumentParser
import PatinaNode

@main
struct Patina: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "patina",
        abstract: "A replication node: SQLite tables as CRDTs, replicated over QUIC with mutual TLS.",
        version: PatinaNode.version,
        subcommands: [
            AgentCommand.self, ExecCommand.self, QueryCommand.self, SubscribeCommand.self, ReloadCommand.self,
            BackupCommand.self, RestoreCommand.self, ClusterCommand.self, Certs.self, Bench.self,
        ])
}

/// `patina bench ...`: benchmarks of each layer.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure the store, the links between nodes, and the cluster.",
        subcommands: [BenchStore.self, BenchAPI.self, BenchLink.self, BenchRegions.self, BenchLive.self])
}
