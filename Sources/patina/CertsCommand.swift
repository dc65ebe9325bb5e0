import ArgumentParser

/// `patina certs ...`: a cluster CA and node certificates (OpenSSL libcrypto).
struct Certs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a cluster CA and node certificates, and inspect certificates.",
        subcommands: [])
}
