import CPatinaShims
import CQuic
import Foundation
import Glibc
import Logging
import PatinaCore
import Synchronization

/// Length of the connection IDs this endpoint issues; short-header packets are routed by it.
let localCIDLength = 16

/// The endpoint's event loop: one thread that owns the UDP socket and every `ngtcp2_conn`.
///
/// ngtcp2 is not thread-safe, so all QUIC state lives here and is touched only on the
/// loop thread. Swift async code reaches it through `submit`, which queues a closure and
/// wakes the loop through an eventfd.
///
/// `@unchecked Sendable`: apart from `commands` (a Mutex), every stored property is read
/// and written only on the loop thread; other threads only hold the reference and pass
/// it into closures that `submit` runs on that thread.
final class EndpointCore: @unchecked Sendable {
    let config: QUICEndpointConfig
    let tls: TLSContext
    let logger: Logger
    let fd: Int32
    let wakeFD: Int32
    var localAddress: SockAddr

    private struct Commands {
        var queue: [@Sendable () -> Void] = []
        var sleeping = false
        var stopped = false
    }
    private let commands = Mutex(Commands())

    var routes: [CIDKey: ConnectionCore] = [:]
    var connections: [ObjectIdentifier: ConnectionCore] = [:]
    private var dirty: [ConnectionCore] = []
    private var running = true
    private var gsoEnabled = true
    let incoming: AsyncStream<QUICConnection>.Continuation
    let incomingStream: AsyncStream<QUICConnection>

    /// Scratch buffers owned by the loop: one datagram in, one GSO batch out.
    let receiveBuffer: UnsafeMutablePointer<UInt8>
    let sendBuffer: UnsafeMutablePointer<UInt8>
    /// Scratch for the pieces of one stream's data handed to ngtcp2 (reused by every flush).
    var streamVecs = [ngtcp2_vec](repeating: ngtcp2_vec(), count: 16)
    static let receiveBufferSize = 65536
    static let sendBufferSize = 65536

    /// Endpoint-level counters (garbage, unknown connections), for tests and logs.
    var droppedPackets: UInt64 = 0
    private var thread: Thread?
    private let finished = Mutex<[CheckedContinuation<Void, Never>]?>([])

    init(bind address: QUICSocketAddress, config: QUICEndpointConfig, logger: Logger) throws(QUICError) {
        self.config = config
        self.logger = logger
        self.tls = try TLSContext(config.tls, alpn: config.alpn)
        var addr = try SockAddr(resolving: address)
        let fd = addr.withSockAddr { patina_udp_bind($0, $1) }
        if fd < 0 { throw QUICError(.socket, "bind \(address): \(String(cString: strerror(-fd)))") }
        self.fd = fd
        self.wakeFD = patina_eventfd()
        _ = patina_local_address(fd, &addr.storage, &addr.length)
        self.localAddress = addr
        (incomingStream, incoming) = AsyncStream.makeStream(
            of: QUICConnection.self, bufferingPolicy: .bufferingOldest(config.acceptBacklog))
        receiveBuffer = .allocate(capacity: Self.receiveBufferSize)
        sendBuffer = .allocate(capacity: Self.sendBufferSize)
    }

    deinit {
        receiveBuffer.deallocate()
        sendBuffer.deallocate()
        close(fd)
        close(wakeFD)
    }

    func start() {
        let thread = Thread { [self] in run() }
        thread.name = "patina-quic-\(localAddress.address.port)"
        thread.stackSize = 1 << 20
        self.thread = thread
        thread.start()
    }

    /// Runs `body` on the loop thread. Returns false (and drops `body`) once the loop has stopped.
    @discardableResult
    func submit(_ body: @escaping @Sendable () -> Void) -> Bool {
        let wake: Bool? = commands.withLock { c in
            if c.stopped { return nil }
            c.queue.append(body)
            let wake = c.sleeping
            c.sleeping = false
            return wake
        }
        guard let wake else { return false }
        if wake { patina_eventfd_signal(wakeFD) }
        return true
    }

    /// Waits until the loop thread has exited.
    func waitStopped() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let done = finished.withLock { waiters -> Bool in
                guard waiters != nil else { return true }
                waiters!.append(c)
                return false
            }
            if done { c.resume() }
        }
    }

    var now: UInt64 { patina_monotonic_ns() }

    /// Streams that got data while their reader waited. Readers are woken once per batch of
    /// packets rather than once per packet: a bulk receiver then takes many packets' worth in
    /// one chunk, and the cooperative pool sees one job instead of dozens.
    var pendingWakes: [StreamCore] = []
    /// Datagram inboxes with a waiting reader that got datagrams in this packet batch (for
    /// the same reason: one wake-up per batch, see `ChunkInbox`).
    var pendingDatagramWakes: [ChunkInbox] = []

    private func wakeReaders() {
        while !pendingWakes.isEmpty {
            let list = pendingWakes
            pendingWakes.removeAll(keepingCapacity: true)
            for stream in list { stream.wakeReader() }
        }
        for inbox in pendingDatagramWakes { inbox.wakeReader() }
        pendingDatagramWakes.removeAll(keepingCapacity: true)
    }

    func markDirty(_ connection: ConnectionCore) {
        if !connection.isDirty {
            connection.isDirty = true
            dirty.append(connection)
        }
    }

    // MARK: The loop

    private func run() {
        while running {
            let batch = commands.withLock { c in
                let q = c.queue
                c.queue.removeAll(keepingCapacity: true)
                return q
            }
            for command in batch { command() }
            readPackets()
            wakeReaders()
            handleTimers()
            flushDirty()
            if !running { break }
            // Sleep only if no command arrived meanwhile; `sleeping` tells submitters to signal.
            let mayBlock = commands.withLock { c in
                if c.queue.isEmpty { c.sleeping = true }
                return c.queue.isEmpty
            }
            if mayBlock {
                let timeout = nextTimeout()
                let ready = patina_poll2(fd, wakeFD, timeout)
                if ready & 2 != 0 { patina_eventfd_drain(wakeFD) }
                commands.withLock { $0.sleeping = false }
            }
        }
        // Stopped: refuse further commands, fail what is left.
        let leftover = commands.withLock { c in
            c.stopped = true
            return c.queue
        }
        for command in leftover { command() }
        for connection in Array(connections.values) {
            connection.terminate(QUICError(.endpointClosed, ""), sendClose: false)
        }
        // Break the endpoint ↔ connection cycles: handles still held keep only their own state.
        for connection in connections.values { connection.streams.removeAll() }
        connections.removeAll()
        routes.removeAll()
        dirty.removeAll()
        pendingWakes.removeAll()
        pendingDatagramWakes.removeAll()
        incoming.finish()
        let waiters = finished.withLock { w in
            let list = w ?? []
            w = nil
            return list
        }
        for waiter in waiters { waiter.resume() }
    }

    func stopLoop() { running = false }

    private func nextTimeout() -> Int64 {
        var earliest = UInt64.max
        for connection in connections.values where connection.expiry < earliest { earliest = connection.expiry }
        if earliest == .max { return -1 }
        let now = self.now
        return earliest <= now ? 0 : Int64(min(earliest - now, 3_600_000_000_000))
    }

    private func handleTimers() {
        let now = self.now
        for connection in connections.values where connection.expiry <= now {
            connection.handleExpiry(now: now)
        }
    }

    private func flushDirty() {
        while !dirty.isEmpty {
            let list = dirty
            dirty.removeAll(keepingCapacity: true)
            for connection in list {
                connection.isDirty = false
                connection.flush()
            }
        }
    }

    // MARK: Receiving

    private func readPackets() {
        var from = sockaddr_storage()
        var fromLength: socklen_t = 0
        var segment = 0
        // A bounded batch keeps commands and timers responsive under a flood.
        for _ in 0..<512 {
            let n = patina_udp_recv_gro(fd, receiveBuffer, Self.receiveBufferSize, &from, &fromLength, &segment)
            if n < 0 {
                if n != -Int(EAGAIN) && n != -Int(EWOULDBLOCK) {
                    logger.debug("recvfrom failed", metadata: ["errno": "\(-n)"])
                }
                return
            }
            withUnsafePointer(to: &from) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    if segment == 0 {
                        handlePacket(receiveBuffer, Int(n), from: sa, fromLength)
                    } else {
                        var offset = 0
                        while offset < n {
                            let length = min(segment, n - offset)
                            handlePacket(receiveBuffer + offset, length, from: sa, fromLength)
                            offset += length
                        }
                    }
                }
            }
        }
    }

    private func handlePacket(
        _ data: UnsafeMutablePointer<UInt8>, _ length: Int, from: UnsafePointer<sockaddr>, _ fromLength: socklen_t
    ) {
        guard length > 0 else { return }
        var dcid = (UInt64(0), UInt64(0), UInt32(0), UInt32(0))
        var scid = (UInt64(0), UInt64(0), UInt32(0), UInt32(0))
        var dcidLength = 0
        var scidLength = 0
        var version: UInt32 = 0
        let rv = withUnsafeMutableBytes(of: &dcid) { d in
            withUnsafeMutableBytes(of: &scid) { s in
                patina_ngtcp2_decode_dcid(
                    data, length, localCIDLength, d.baseAddress!.assumingMemoryBound(to: UInt8.self), &dcidLength,
                    s.baseAddress!.assumingMemoryBound(to: UInt8.self), &scidLength, &version)
            }
        }
        if rv < 0 {
            droppedPackets += 1
            return
        }
        if rv == 1 {
            sendVersionNegotiation(dcid: &dcid, dcidLength, scid: &scid, scidLength, length: length, to: from, fromLength)
            return
        }
        let key = withUnsafeBytes(of: &dcid) { CIDKey($0.baseAddress!.assumingMemoryBound(to: UInt8.self), dcidLength) }
        if let connection = routes[key] {
            connection.receive(data, length, from: from, fromLength)
            return
        }
        accept(data, length, from: from, fromLength)
    }

    private func sendVersionNegotiation(
        dcid: inout (UInt64, UInt64, UInt32, UInt32), _ dcidLength: Int,
        scid: inout (UInt64, UInt64, UInt32, UInt32), _ scidLength: Int,
        length: Int, to: UnsafePointer<sockaddr>, _ toLength: socklen_t
    ) {
        // Answer only datagrams big enough to be Initials, so we never amplify (RFC 9000 §6.1).
        guard length >= 1200 else {
            droppedPackets += 1
            return
        }
        var unused: UInt8 = 0
        randomBytes(&unused, 1)
        var versions: UInt32 = 1
        // The VN packet echoes the client's SCID as DCID and vice versa (RFC 9000 §17.2.1).
        let n = withUnsafeBytes(of: &dcid) { d in
            withUnsafeBytes(of: &scid) { s in
                ngtcp2_pkt_write_version_negotiation(
                    sendBuffer, 1500, unused, s.baseAddress!.assumingMemoryBound(to: UInt8.self), scidLength,
                    d.baseAddress!.assumingMemoryBound(to: UInt8.self), dcidLength, &versions, 1)
            }
        }
        if n > 0 { _ = patina_udp_send(fd, sendBuffer, Int(n), to, toLength, 0) }
    }

    private func accept(
        _ data: UnsafeMutablePointer<UInt8>, _ length: Int, from: UnsafePointer<sockaddr>, _ fromLength: socklen_t
    ) {
        var header = ngtcp2_pkt_hd()
        guard ngtcp2_accept(&header, data, length) == 0 else {
            droppedPackets += 1
            return
        }
        var remote = SockAddr()
        withUnsafeMutableBytes(of: &remote.storage) { raw in
            raw.baseAddress!.copyMemory(from: from, byteCount: Int(fromLength))
        }
        remote.length = fromLength
        let connection: ConnectionCore
        do {
            connection = try ConnectionCore(serverFor: header, endpoint: self, remote: remote)
        } catch {
            logger.warning("cannot accept connection", metadata: ["peer": "\(remote.address)", "error": "\(error)"])
            return
        }
        register(connection)
        route(header.dcid, to: connection)
        connection.receive(data, length, from: from, fromLength)
    }

    func register(_ connection: ConnectionCore) {
        connections[ObjectIdentifier(connection)] = connection
        for cid in connection.localCIDs { routes[cid] = connection }
    }

    func route(_ cid: ngtcp2_cid, to connection: ConnectionCore) {
        let key = CIDKey(cid)
        routes[key] = connection
        connection.localCIDs.append(key)
    }

    func unroute(_ cid: ngtcp2_cid) {
        routes.removeValue(forKey: CIDKey(cid))
    }

    /// Forgets a connection that has finished closing or draining.
    func remove(_ connection: ConnectionCore) {
        for key in connection.localCIDs where routes[key] === connection { routes.removeValue(forKey: key) }
        connection.localCIDs.removeAll()
        connections.removeValue(forKey: ObjectIdentifier(connection))
    }

    // MARK: Sending

    /// Sends `length` bytes of packets of `segment` bytes each (the last may be shorter).
    func send(_ buffer: UnsafePointer<UInt8>, _ length: Int, segment: Int, to remote: SockAddr) -> Bool {
        var rv = remote.withSockAddr { sa, sl in
            patina_udp_send(fd, buffer, length, sa, sl, gsoEnabled && length > segment ? segment : 0)
        }
        if rv == -Int(EIO) || rv == -Int(EINVAL), gsoEnabled, length > segment {
            // No UDP GSO on this path: send one datagram at a time from now on.
            gsoEnabled = false
            logger.debug("UDP GSO unavailable; sending datagrams one by one")
        }
        if !gsoEnabled && length > segment {
            var offset = 0
            var ok = true
            while offset < length {
                let n = min(segment, length - offset)
                let r = remote.withSockAddr { sa, sl in patina_udp_send(fd, buffer + offset, n, sa, sl, 0) }
                if r < 0 { ok = false }
                offset += n
            }
            return ok
        }
        if rv < 0, rv == -Int(EINTR) { rv = 0 }
        return rv >= 0
    }
}
