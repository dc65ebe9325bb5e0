import ArgumentParser
import PatinaNode

struct Patina: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "patina",
        abstract: "A replication node: SQLite tables as CRDTs, replicated over QUIC with mutual TLS.",
        version: PatinaNode.version,
        subcommands: [])
}

Patina.main()
