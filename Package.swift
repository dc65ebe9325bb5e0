// swift-tools-version: 6.1
import PackageDescription

// Layers (bottom up) follow ../shared/DESIGN.md: system libraries, the C shim,
// PatinaCore (pure values), PatinaStore (SQLite CRDT), PatinaQUIC (transport),
// PatinaNode (wiring), and the `patina` executable. Arrows point down only.
let package = Package(
    name: "patina",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "patina", targets: ["patina"]),
        .library(name: "PatinaStore", targets: ["PatinaStore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // MARK: System libraries, each found through pkg-config.
        .systemLibrary(
            name: "CSQLite", path: "Sources/CSQLite", pkgConfig: "sqlite3",
            providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(
            name: "CQuic", path: "Sources/CQuic", pkgConfig: "libngtcp2_crypto_gnutls",
            providers: [.apt(["libngtcp2-dev", "libngtcp2-crypto-gnutls-dev", "libgnutls28-dev"])]),
        .systemLibrary(
            name: "CHTTP3", path: "Sources/CHTTP3", pkgConfig: "libnghttp3",
            providers: [.apt(["libnghttp3-dev"])]),
        .systemLibrary(
            name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]),
        .target(
            name: "CPatinaShims",
            dependencies: ["CQuic", "CSQLite"],
            path: "Sources/CPatinaShims",
            linkerSettings: [
                .linkedLibrary("ngtcp2"), .linkedLibrary("ngtcp2_crypto_gnutls"),
                .linkedLibrary("gnutls"), .linkedLibrary("sqlite3"),
            ]),

        // MARK: Patina layers.
        .target(name: "PatinaCore", path: "Sources/PatinaCore"),
        .target(
            name: "PatinaStore",
            dependencies: [
                "PatinaCore", "CSQLite", "CPatinaShims",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/PatinaStore"),
        .target(
            name: "PatinaCerts",
            dependencies: ["COpenSSL", "PatinaCore"],
            path: "Sources/PatinaCerts"),
        .target(
            name: "PatinaQUIC",
            dependencies: [
                "PatinaCore", "CQuic", "CPatinaShims",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/PatinaQUIC"),
        .target(
            name: "PatinaNode",
            dependencies: [
                "PatinaCore", "PatinaStore",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/PatinaNode"),
        .executableTarget(
            name: "patina",
            dependencies: [
                "PatinaNode", "PatinaStore", "PatinaCore", "PatinaQUIC", "PatinaCerts",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/patina"),

        // MARK: Tests.
        .testTarget(
            name: "SystemLibraryTests",
            dependencies: ["CSQLite", "CQuic", "CHTTP3", "COpenSSL", "CPatinaShims"],
            path: "Tests/SystemLibraryTests"),
        .testTarget(name: "PatinaCoreTests", dependencies: ["PatinaCore"], path: "Tests/PatinaCoreTests"),
        .testTarget(
            name: "PatinaStoreTests", dependencies: ["PatinaStore", "PatinaCore", "CSQLite"],
            path: "Tests/PatinaStoreTests"),
        .testTarget(
            name: "PatinaCertsTests", dependencies: ["PatinaCerts", "PatinaCore"],
            path: "Tests/PatinaCertsTests"),
        .testTarget(
            name: "PatinaQUICTests", dependencies: ["PatinaQUIC", "PatinaCerts", "PatinaCore"],
            path: "Tests/PatinaQUICTests"),
    ],
    swiftLanguageModes: [.v6]
)
