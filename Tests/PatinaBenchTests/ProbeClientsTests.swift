import Foundation
import Hummingbird
import Logging
@testable import PatinaBench
import PatinaNode
import Synchronization
import Testing

/// How many probe writes a node has in flight at once: one per client, and no
/// more. The node is a Hummingbird server on loopback that answers each write
/// after 60 ms and counts the writes it holds at once.
@Suite struct ProbeClientsTests {
    @Test(.timeLimit(.minutes(1)), arguments: [1, 4])
    func aNodeSeesOneWriteInFlightPerClient(clients: Int) async throws {
        let counts = Mutex<(inFlight: Int, most: Int, total: Int)>((0, 0, 0))
        let router = Router()
        router.post("/v1/transactions") { _, _ -> String in
            counts.withLock { c in
                c.inFlight += 1
                c.total += 1
                c.most = max(c.most, c.inFlight)
            }
            try await Task.sleep(for: .milliseconds(60))
            counts.withLock { $0.inFlight -= 1 }
            return "{}"
        }
        let (ports, portContinuation) = AsyncStream<Int>.makeStream()
        var logger = Logger(label: "test")
        logger.logLevel = .critical  // cancelling the server at the end logs its channels' shutdown as errors
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { portContinuation.yield($0.localAddress?.port ?? 0) }, logger: logger)
        let server = Task { try await app.runService() }
        defer { server.cancel() }
        var portIterator = ports.makeAsyncIterator()
        let port = try #require(await portIterator.next())

        let node = ProbeNode(name: "n1", region: "r1", client: HTTPClient(target: .tcp(host: "127.0.0.1", port: port)))
        let probe = ProbeRun(nodes: [node], writers: [0], idBase: 1)
        // 16 writes due 1 ms apart: every client is busy long before the last is due.
        // The run blocks, so it goes on a thread of its own, off the server's pool.
        let measured = try await withCheckedThrowingContinuation { continuation in
            Thread {
                continuation.resume(with: Result {
                    try probe.run(count: 16, rate: 1000, clientsPerWriter: clients, settle: .zero, rttMilliseconds: [0])
                })
            }.start()
        }
        #expect(measured.failedWrites == 0)
        #expect(counts.withLock { $0.total } == 16)
        #expect(counts.withLock { $0.most } == clients)
    }
}
