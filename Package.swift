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
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
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
            name: "PatinaCluster",
            dependencies: [
                "PatinaCore", "PatinaStore", "PatinaQUIC",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            path: "Sources/PatinaCluster"),
        .target(
            name: "PatinaAPI",
            dependencies: [
                "PatinaCore", "PatinaStore", "PatinaCluster",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/PatinaAPI"),
        .target(
            name: "PatinaNode",
            dependencies: [
                "PatinaCore", "PatinaStore", "PatinaQUIC", "PatinaCerts", "PatinaCluster", "PatinaAPI",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            path: "Sources/PatinaNode"),
        // Benchmarks that drive whole clusters: the WAN emulator, `bench regions`, `bench live`.
        .target(
            name: "PatinaBench",
            dependencies: [
                "PatinaCore", "PatinaNode", "PatinaCerts",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "HeapModule", package: "swift-collections"),
            ],
            path: "Sources/PatinaBench"),
        .executableTarget(
            name: "patina",
            dependencies: [
                "PatinaBench", "PatinaNode", "PatinaStore", "PatinaCore", "PatinaQUIC", "PatinaCerts",
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
            name: "PatinaClusterTests", dependencies: ["PatinaCluster", "PatinaCore", "PatinaStore", "PatinaNode"],
            path: "Tests/PatinaClusterTests"),
        .testTarget(
            name: "PatinaAPITests",
            dependencies: [
                "PatinaAPI", "PatinaNode", "PatinaStore", "PatinaCore",
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            path: "Tests/PatinaAPITests"),
        .testTarget(
            name: "PatinaBenchTests",
            dependencies: ["PatinaBench", "PatinaCore", .product(name: "Hummingbird", package: "hummingbird")],
            path: "Tests/PatinaBenchTests"),
        .testTarget(
            name: "PatinaQUICTests", dependencies: ["PatinaQUIC", "PatinaCerts", "PatinaCore"],
            path: "Tests/PatinaQUICTests"),
    ],
    swiftLanguageModes: [.v6]
)
