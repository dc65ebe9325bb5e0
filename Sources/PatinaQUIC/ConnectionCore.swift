import CPatinaShims
import CQuic
import Glibc
import Logging
import Synchronization

/// One QUIC connection as the loop sees it: the `ngtcp2_conn`, its GnuTLS session, its
/// streams and datagram queue. Only the endpoint's loop thread touches it.
///
/// `@unchecked Sendable`: like `EndpointCore`, all mutable state is confined to the loop
/// thread; public handles only keep the reference and hand it to `submit` closures.
final class ConnectionCore: @unchecked Sendable {
    enum State { case handshaking, established, closing, draining, closed }

    /// Strong: a handle may outlive the endpoint's loop; the loop drops its tables when it stops.
    let endpoint: EndpointCore
    let isServer: Bool
    var conn: OpaquePointer?
    var session: gnutls_session_t?
    /// ngtcp2_crypto finds the connection through this struct, reached from the GnuTLS session.
    let connRef: UnsafeMutablePointer<ngtcp2_crypto_conn_ref>
    var remote: SockAddr
    var state = State.handshaking
    var localCIDs: [CIDKey] = []
    var isDirty = false
    var expiry = UInt64.max
    /// When a closing or draining connection may be forgotten.
    var closeDeadline = UInt64.max
    var closePacket: [UInt8] = []
    var closeResends = 0
    var logger: Logger
    /// The name or address the client dialled, checked against the server certificate.
    let expectedPeerName: String?
    var verifyFailure: String?
    var verifyRan = false
    var closeError: QUICError?

    var streams: [Int64: StreamCore] = [:]
    var sendQueue: [StreamCore] = []
    var connectionBlocked: [StreamCore] = []
    var datagrams: [OutgoingDatagram] = []
    /// Message datagrams sent and not yet acknowledged, by datagram id: sent
    /// again on a stream if ngtcp2 declares them lost (see `QUICConnection.sendMessage`),
    /// or if neither happens in time (see `expireUnackedMessages`).
    var unackedMessages: [UInt64: UnackedMessage] = [:]
    /// No unacknowledged message has a smaller id (ids only grow).
    var oldestUnackedID: UInt64 = 0
    /// Lost message datagrams waiting to be re-sent on a stream (not from inside a callback).
    var lostMessages: [[UInt8]] = []
    var messagesResent: UInt64 = 0
    /// Messages re-sent on a stream whose data the peer has not acknowledged yet, by resend
    /// order: if the connection ends first they go back to the application with the rest.
    var resentMessages: [UInt64: [UInt8]] = [:]
    var nextResendID: UInt64 = 0
    var datagramWaiters: [CheckedContinuation<Void, any Error>] = []
    var openWaiters: [(kind: StreamKind, opened: (Result<StreamCore, QUICError>) -> Void)] = []
    var drainWaiters: [CheckedContinuation<Void, Never>] = []
    var nextDatagramID: UInt64 = 0

    var handshakeWaiter: CheckedContinuation<QUICConnection, any Error>?
    /// Set once the handshake completes; the public handle given to the application.
    weak var handle: QUICConnection?
    let events: ConnectionEvents

    var bytesSent: UInt64 = 0
    var bytesReceived: UInt64 = 0
    var packetsSent: UInt64 = 0
    var packetsReceived: UInt64 = 0
    var datagramsLost: UInt64 = 0
    var messagesPresumedLost: UInt64 = 0
    var sendDrops: UInt64 = 0
    var probeTimeouts: UInt64 = 0

    static func from(_ user: UnsafeMutableRawPointer) -> ConnectionCore {
        Unmanaged<ConnectionCore>.fromOpaque(user).takeUnretainedValue()
    }

    private init(endpoint: EndpointCore, isServer: Bool, remote: SockAddr, expectedPeerName: String?) {
        self.endpoint = endpoint
        self.isServer = isServer
        self.remote = remote
        self.expectedPeerName = expectedPeerName
        self.connRef = .allocate(capacity: 1)
        self.logger = endpoint.logger
        self.logger[metadataKey: "peer"] = "\(remote.address)"
        self.logger[metadataKey: "role"] = isServer ? "server" : "client"
        self.events = ConnectionEvents(datagramBuffer: endpoint.config.datagramReceiveBuffer)
        connRef.initialize(to: ngtcp2_crypto_conn_ref(get_conn: getConnCallback, user_data: nil))
    }

    /// A server-side connection for a client Initial that `ngtcp2_accept` validated.
    convenience init(serverFor header: ngtcp2_pkt_hd, endpoint: EndpointCore, remote: SockAddr) throws(QUICError) {
        self.init(endpoint: endpoint, isServer: true, remote: remote, expectedPeerName: nil)
        let scid = makeRandomCID(length: localCIDLength)
        var params = makeTransportParams()
        params.original_dcid = header.dcid
        params.stateless_reset_token_present = 1
        withUnsafeMutableBytes(of: &params.stateless_reset_token) { randomBytes($0.baseAddress!, $0.count) }
        try create(dcid: header.scid, scid: scid, params: params, version: header.version)
    }

    /// A client-side connection to `remote`; the handshake starts on the next flush.
    convenience init(clientTo remote: SockAddr, expectedName: String, sni: String?, endpoint: EndpointCore,
                     timeout: Duration) throws(QUICError) {
        self.init(endpoint: endpoint, isServer: false, remote: remote, expectedPeerName: expectedName)
        let scid = makeRandomCID(length: localCIDLength)
        let dcid = makeRandomCID(length: 18)
        try create(dcid: dcid, scid: scid, params: makeTransportParams(), version: 1, sni: sni, handshakeTimeout: timeout)
    }

    deinit {
        if let conn { ngtcp2_conn_del(conn) }
        if let session { gnutls_deinit(session) }
        connRef.deallocate()
    }

    private func makeTransportParams() -> ngtcp2_transport_params {
        let c = endpoint.config
        var params = ngtcp2_transport_params()
        patina_ngtcp2_transport_params_default(&params)
        params.initial_max_stream_data_bidi_local = c.initialStreamWindow
        params.initial_max_stream_data_bidi_remote = c.initialStreamWindow
        params.initial_max_stream_data_uni = c.initialStreamWindow
        params.initial_max_data = c.initialConnectionWindow
        // Patina uni streams also travel on QUIC bidirectional streams (see StreamKind).
        params.initial_max_streams_bidi = c.maxIncomingBidiStreams + c.maxIncomingUniStreams
        params.initial_max_streams_uni = c.maxIncomingUniStreams
        params.max_idle_timeout = c.idleTimeout.nanoseconds
        params.active_connection_id_limit = 4
        params.max_datagram_frame_size = c.maxDatagramFrameSize
        return params
    }

    private func create(
        dcid: ngtcp2_cid, scid: ngtcp2_cid, params: ngtcp2_transport_params, version: UInt32, sni: String? = nil,
        handshakeTimeout: Duration? = nil
    ) throws(QUICError) {
        let c = endpoint.config
        var settings = ngtcp2_settings()
        patina_ngtcp2_settings_default(&settings)
        settings.initial_ts = endpoint.now
        settings.handshake_timeout = (handshakeTimeout ?? c.handshakeTimeout).nanoseconds
        settings.max_window = c.maxConnectionWindow
        settings.max_stream_window = c.maxStreamWindow
        settings.cc_algo = NGTCP2_CC_ALGO_CUBIC
        settings.initial_rtt = c.initialRTT.nanoseconds
        var callbacks = ngtcp2_callbacks()
        patina_ngtcp2_crypto_callbacks(&callbacks, isServer ? 1 : 0)
        installCallbacks(&callbacks)
        var dcid = dcid
        var scid = scid
        var params = params
        var local = endpoint.localAddress
        var remote = self.remote
        let user = Unmanaged.passUnretained(self).toOpaque()
        var conn: OpaquePointer?
        let rv = withUnsafeMutablePointer(to: &local.storage) { lp in
            withUnsafeMutablePointer(to: &remote.storage) { rp in
                lp.withMemoryRebound(to: sockaddr.self, capacity: 1) { lsa in
                    rp.withMemoryRebound(to: sockaddr.self, capacity: 1) { rsa in
                        var path = ngtcp2_path(
                            local: ngtcp2_addr(addr: lsa, addrlen: local.length),
                            remote: ngtcp2_addr(addr: rsa, addrlen: remote.length), user_data: nil)
                        return isServer
                            ? patina_ngtcp2_conn_server_new(&conn, &dcid, &scid, &path, version, &callbacks, &settings, &params, user)
                            : patina_ngtcp2_conn_client_new(&conn, &dcid, &scid, &path, &callbacks, &settings, &params, user)
                    }
                }
            }
        }
        guard rv == 0, let conn else {
            throw QUICError(.connectionFailed, "ngtcp2_conn_new: \(String(cString: ngtcp2_strerror(rv)))")
        }
        self.conn = conn
        connRef.pointee.user_data = user
        session = try endpoint.tls.makeSession(isServer: isServer, serverName: sni, connRef: connRef)
        ngtcp2_conn_set_tls_native_handle(conn, UnsafeMutableRawPointer(session))
        if let keepAlive = c.keepAliveInterval { ngtcp2_conn_set_keep_alive_timeout(conn, keepAlive.nanoseconds) }
        localCIDs.append(CIDKey(scid))
    }

    // MARK: TLS

    /// Checks the peer's certificate chain against the cluster CA, and for a client
    /// the dialled IP address or DNS name (RFC 9001 §4.4: both endpoints authenticated).
    func verifyPeerCertificate(_ session: gnutls_session_t) -> Int32 {
        verifyRan = true
        var status: UInt32 = 0
        let rv: Int32
        if isServer {
            rv = gnutls_certificate_verify_peers3(session, nil, &status)
        } else {
            rv = gnutls_certificate_verify_peers3(session, expectedPeerName, &status)
        }
        if rv < 0 {
            verifyFailure = "\(isServer ? "client" : "server") certificate: \(String(cString: gnutls_strerror(rv)))"
            return -1
        }
        if status != 0 {
            verifyFailure = describeVerification(status: status, isServer: isServer, expectedName: expectedPeerName)
            return -1
        }
        return 0
    }

    /// Why our side aborted the handshake, for the log and the error.
    private func localRefusalReason() -> String {
        if let verifyFailure { return verifyFailure }
        if isServer, !verifyRan, let session, gnutls_certificate_get_peers(session, nil) == nil {
            return "client presented no certificate"
        }
        if let conn { return describeAlert(ngtcp2_conn_get_tls_alert(conn)) }
        return "TLS failure"
    }

    // MARK: Receiving

    func receive(_ data: UnsafeMutablePointer<UInt8>, _ length: Int, from: UnsafePointer<sockaddr>, _ fromLength: socklen_t) {
        guard let conn else { return }
        switch state {
        case .closing:
            // Answer a peer that keeps sending with our CONNECTION_CLOSE again, a few times (RFC 9000 §10.2.1).
            if closeResends < 4, !closePacket.isEmpty {
                closeResends += 1
                _ = closePacket.withUnsafeBufferPointer {
                    endpoint.send($0.baseAddress!, $0.count, segment: $0.count, to: remote)
                }
            }
            return
        case .draining, .closed:
            return
        case .handshaking, .established:
            break
        }
        bytesReceived += UInt64(length)
        packetsReceived += 1
        var local = endpoint.localAddress
        let rv = withUnsafeMutablePointer(to: &local.storage) { lp in
            lp.withMemoryRebound(to: sockaddr.self, capacity: 1) { lsa in
                var path = ngtcp2_path(
                    local: ngtcp2_addr(addr: lsa, addrlen: local.length),
                    remote: ngtcp2_addr(addr: UnsafeMutablePointer(mutating: from), addrlen: fromLength), user_data: nil)
                return patina_ngtcp2_conn_read_pkt(conn, &path, data, length, endpoint.now)
            }
        }
        if rv != 0 {
            handleReadError(rv)
            return
        }
        if !connectionBlocked.isEmpty, ngtcp2_conn_get_max_data_left(conn) > 0 {
            for stream in connectionBlocked { enqueue(stream) }
            connectionBlocked.removeAll()
        }
        endpoint.markDirty(self)
    }

    private func handleReadError(_ rv: Int32) {
        guard let conn else { return }
        switch rv {
        case NGTCP2_ERR_DRAINING:
            var ccerr = ngtcp2_connection_close_error()
            ngtcp2_conn_get_connection_close_error(conn, &ccerr)
            let error = peerCloseError(ccerr)
            startDraining(error)
        case NGTCP2_ERR_DROP_CONN:
            terminate(QUICError(.connectionFailed, "connection dropped"), sendClose: false)
        case NGTCP2_ERR_CRYPTO:
            let reason = localRefusalReason()
            var ccerr = ngtcp2_connection_close_error()
            ngtcp2_connection_close_error_set_transport_error_tls_alert(&ccerr, ngtcp2_conn_get_tls_alert(conn), nil, 0)
            if state == .handshaking {
                logger.warning("TLS handshake refused: \(reason)")
                terminate(QUICError(.handshakeRefused, reason), closeError: ccerr)
            } else {
                terminate(QUICError(.protocolViolation, reason), closeError: ccerr)
            }
        default:
            if state == .handshaking && !isServer && ngtcp2_conn_get_handshake_completed(conn) == 0 {
                logger.debug("packet refused during handshake: \(String(cString: ngtcp2_strerror(rv)))")
            }
            var ccerr = ngtcp2_connection_close_error()
            ngtcp2_connection_close_error_set_transport_error_liberr(&ccerr, rv, nil, 0)
            let error = QUICError(.protocolViolation, String(cString: ngtcp2_strerror(rv)))
            if state == .established {
                // A live connection ends here, and whatever it carried with it.
                logger.warning("closing connection: packet from \(remote.address) broke QUIC: \(error.reason)")
            }
            if state == .handshaking && isServer && packetsReceived <= 1 {
                // A first packet that does not decrypt is noise, not a peer: drop it quietly.
                terminate(error, sendClose: false)
            } else {
                terminate(error, closeError: ccerr)
            }
        }
    }

    /// Turns the peer's CONNECTION_CLOSE into an error, naming a refused handshake clearly.
    private func peerCloseError(_ ccerr: ngtcp2_connection_close_error) -> QUICError {
        let reasonText: String = {
            guard ccerr.reasonlen > 0, let reason = ccerr.reason else { return "" }
            return String(decoding: UnsafeBufferPointer(start: reason, count: ccerr.reasonlen), as: UTF8.self)
        }()
        if ccerr.type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_TRANSPORT, (0x100...0x1ff).contains(ccerr.error_code) {
            let why = describeAlert(UInt8(ccerr.error_code - 0x100))
            if state == .handshaking || isServer {
                logger.warning("peer refused the TLS handshake: \(why)")
            }
            return QUICError(.peerRefusedHandshake, why, errorCode: ccerr.error_code)
        }
        if ccerr.type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_APPLICATION {
            return QUICError(.closedByPeer, reasonText, errorCode: ccerr.error_code)
        }
        if ccerr.type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_TRANSPORT_IDLE_CLOSE {
            return QUICError(.idleTimeout, "")
        }
        if ccerr.error_code == 0 && state == .established {
            return QUICError(.closedByPeer, reasonText, errorCode: 0)
        }
        let error = QUICError(.closedByPeer, "transport error 0x\(String(ccerr.error_code, radix: 16)) \(reasonText)",
                              errorCode: ccerr.error_code)
        if state == .established { logger.warning("\(remote.address) closed the connection: \(error.reason)") }
        return error
    }

    // MARK: Timers

    func handleExpiry(now: UInt64) {
        guard let conn else {
            expiry = .max
            return
        }
        if state == .closing || state == .draining {
            if now >= closeDeadline {
                state = .closed
                endpoint.remove(self)
            }
            expiry = closeDeadline
            if state == .closed { expiry = .max }
            return
        }
        expireUnackedMessages(now: now)
        // Does nothing to ngtcp2's timers that are not due (the deadline may have been ours).
        let rv = ngtcp2_conn_handle_expiry(conn, now)
        if rv != 0 {
            switch rv {
            case NGTCP2_ERR_IDLE_CLOSE:
                terminate(QUICError(.idleTimeout, "no packet from the peer for \(endpoint.config.idleTimeout)"), sendClose: false)
            case NGTCP2_ERR_HANDSHAKE_TIMEOUT:
                terminate(QUICError(.handshakeTimeout, "no handshake with \(remote.address)"), sendClose: false)
            default:
                fatal(rv)
            }
            return
        }
        endpoint.markDirty(self)
    }

    private func updateExpiry() {
        guard let conn, state == .handshaking || state == .established else { return }
        expiry = min(ngtcp2_conn_get_expiry(conn), messageGiveUpDeadline() ?? .max)
    }

    // MARK: Sending

    func enqueue(_ stream: StreamCore) {
        if !stream.inSendQueue && !stream.blocked {
            stream.inSendQueue = true
            sendQueue.append(stream)
        }
    }

    /// Writes every packet ngtcp2 will give now (congestion control and pacing permitting),
    /// batched for UDP GSO, then re-arms the timer.
    func flush() {
        guard let conn, state == .handshaking || state == .established else { return }
        if !lostMessages.isEmpty { resendLostMessages() }
        let maxPacket = ngtcp2_conn_get_max_tx_udp_payload_size(conn)
        let quantum = ngtcp2_conn_get_send_quantum(conn)
        let maxBatch = max(1, min(EndpointCore.sendBufferSize / maxPacket, max(1, quantum / maxPacket), 64))
        let buffer = endpoint.sendBuffer
        var used = 0
        var segment = 0
        var packets = 0
        // Borrowed from the endpoint (left empty meanwhile, so writes need no copy): no allocation per flush.
        var vecs = endpoint.streamVecs
        endpoint.streamVecs = []
        if vecs.isEmpty { vecs = [ngtcp2_vec](repeating: ngtcp2_vec(), count: 16) }  // a nested flush
        defer { endpoint.streamVecs = vecs }
        let ts = endpoint.now
        var queueIndex = 0

        func sendBatch() {
            if used > 0 {
                if !endpoint.send(buffer, used, segment: segment, to: remote) { sendDrops += 1 }
                bytesSent += UInt64(used)
            }
            used = 0
            segment = 0
        }

        while true {
            let dest = buffer + used
            var nwrite: Int
            if !datagrams.isEmpty {
                var accepted: Int32 = 0
                let id = nextDatagramID
                nwrite = datagrams[0].bytes.withUnsafeBufferPointer { d in
                    patina_ngtcp2_conn_writev_datagram(
                        conn, dest, maxPacket, &accepted, UInt32(NGTCP2_WRITE_DATAGRAM_FLAG_MORE), id, d.baseAddress, d.count, ts)
                }
                if accepted != 0 || (nwrite < 0 && nwrite != Int(NGTCP2_ERR_WRITE_MORE)) {
                    // Accepted, or refused as too large for any packet: either way it leaves the queue.
                    if accepted == 0 {
                        logger.debug("datagram dropped: \(String(cString: ngtcp2_strerror(Int32(nwrite))))")
                        if datagrams[0].resendIfLost { lostMessages.append(datagrams[0].bytes) }
                    } else if datagrams[0].resendIfLost {
                        rememberUnacked(id: id, datagrams[0].bytes)
                    }
                    datagrams.removeFirst()
                    nextDatagramID += 1
                    if let waiter = datagramWaiters.first {
                        datagramWaiters.removeFirst()
                        waiter.resume()
                    }
                }
                if nwrite == Int(NGTCP2_ERR_WRITE_MORE) { continue }
                if nwrite < 0 {
                    if nwrite == Int(NGTCP2_ERR_INVALID_ARGUMENT) || nwrite == Int(NGTCP2_ERR_INVALID_STATE) { continue }
                    fatal(Int32(nwrite))
                    return
                }
            } else if queueIndex < sendQueue.count {
                let stream = sendQueue[queueIndex]
                if stream.isWriteDone {
                    dequeue(at: queueIndex)
                    if queueIndex >= sendQueue.count { queueIndex = 0 }
                    continue
                }
                let (count, unsentTotal, coversAll) = stream.fillVecs(&vecs)
                var flags = UInt32(NGTCP2_WRITE_STREAM_FLAG_MORE)
                let wantsFin = stream.finQueued && !stream.finWritten && coversAll
                if wantsFin { flags |= UInt32(NGTCP2_WRITE_STREAM_FLAG_FIN) }
                var ndatalen: Int = -1
                nwrite = vecs.withUnsafeBufferPointer { v in
                    patina_ngtcp2_conn_writev_stream(conn, dest, maxPacket, &ndatalen, flags, stream.id, v.baseAddress, count, ts)
                }
                if ndatalen >= 0 {
                    stream.writtenOffset += UInt64(ndatalen)
                    if wantsFin && UInt64(ndatalen) == unsentTotal { stream.finWritten = true }
                }
                let done = stream.isWriteDone
                if nwrite < 0 {
                    switch Int32(nwrite) {
                    case NGTCP2_ERR_WRITE_MORE:
                        if done { dequeue(at: queueIndex) } else { queueIndex += 1 }
                        continue
                    case NGTCP2_ERR_STREAM_DATA_BLOCKED:
                        dequeue(at: queueIndex)
                        if ngtcp2_conn_get_max_data_left(conn) == 0 {
                            connectionBlocked.append(stream)
                        } else {
                            stream.blocked = true
                        }
                        continue
                    case NGTCP2_ERR_STREAM_SHUT_WR, NGTCP2_ERR_STREAM_NOT_FOUND:
                        // Reset, by this side or by ngtcp2 on the peer's STOP_SENDING: what is
                        // still queued will not go, so its writers must not wait for it.
                        stream.failSend(QUICError(.streamReset, "stream \(stream.id) can no longer send"))
                        dequeue(at: queueIndex)
                        continue
                    default:
                        fatal(Int32(nwrite))
                        return
                    }
                }
                if done { dequeue(at: queueIndex) } else if nwrite > 0 { queueIndex += 1 }
                if nwrite == 0 {
                    break
                }
            } else {
                var ndatalen: Int = -1
                nwrite = patina_ngtcp2_conn_writev_stream(conn, dest, maxPacket, &ndatalen, 0, -1, nil, 0, ts)
                if nwrite < 0 {
                    fatal(Int32(nwrite))
                    return
                }
                if nwrite == 0 { break }
            }
            if queueIndex >= sendQueue.count { queueIndex = 0 }
            if nwrite == 0 { break }
            // A packet is complete: batch it for GSO while sizes match.
            packetsSent += 1
            if used == 0 {
                segment = nwrite
                used = nwrite
            } else if nwrite == segment {
                used += nwrite
            } else if nwrite < segment {
                used += nwrite
                sendBatch()
            } else {
                // Larger than the batch's segment size: send the batch, then start anew with this packet.
                let tmp = [UInt8](UnsafeBufferPointer(start: dest, count: nwrite))
                sendBatch()
                tmp.withUnsafeBufferPointer { buffer.update(from: $0.baseAddress!, count: nwrite) }
                segment = nwrite
                used = nwrite
            }
            packets += 1
            if used + maxPacket > EndpointCore.sendBufferSize { sendBatch() }
            if packets >= maxBatch { break }
        }
        sendBatch()
        ngtcp2_conn_update_pkt_tx_time(conn, ts)
        updateExpiry()
        // Stopping at the send quantum leaves the rest to the pacing timer in ngtcp2's expiry.
    }

    private func dequeue(at index: Int) {
        let stream = sendQueue.remove(at: index)
        stream.inSendQueue = false
    }

    private func fatal(_ rv: Int32) {
        var ccerr = ngtcp2_connection_close_error()
        ngtcp2_connection_close_error_set_transport_error_liberr(&ccerr, rv, nil, 0)
        terminate(QUICError(.protocolViolation, String(cString: ngtcp2_strerror(rv))), closeError: ccerr)
    }

    // MARK: Closing

    /// Closes with CONNECTION_CLOSE carrying `errorCode` (an application error, RFC 9000 §10.2).
    func closeLocally(errorCode: UInt64, reason: String) {
        var ccerr = ngtcp2_connection_close_error()
        let bytes = Array(reason.utf8.prefix(200))
        bytes.withUnsafeBufferPointer { r in
            ngtcp2_connection_close_error_set_application_error(&ccerr, errorCode, r.baseAddress, r.count)
            terminate(QUICError(.closedLocally, reason, errorCode: errorCode), closeError: ccerr)
        }
    }

    private func startDraining(_ error: QUICError) {
        terminate(error, sendClose: false, linger: true)
    }

    /// Ends the connection: writes CONNECTION_CLOSE when asked, fails every waiter with
    /// `error`, and keeps the connection IDs routed for three PTOs so late packets are absorbed.
    func terminate(_ error: QUICError, closeError: ngtcp2_connection_close_error? = nil, sendClose: Bool = true,
                   linger: Bool = false) {
        guard state != .closing && state != .draining && state != .closed else { return }
        let wasHandshaking = state == .handshaking
        self.closeError = error
        var lingerNs: UInt64 = 0
        if let conn {
            lingerNs = 3 * ngtcp2_conn_get_pto(conn)
            if sendClose, var ccerr = closeError {
                var packet = [UInt8](repeating: 0, count: 1500)
                let n = packet.withUnsafeMutableBufferPointer { p in
                    patina_ngtcp2_conn_write_connection_close(conn, p.baseAddress!, p.count, &ccerr, endpoint.now)
                }
                if n > 0 {
                    packet.removeLast(packet.count - n)
                    closePacket = packet
                    _ = packet.withUnsafeBufferPointer { endpoint.send($0.baseAddress!, n, segment: n, to: remote) }
                    bytesSent += UInt64(n)
                    packetsSent += 1
                }
            }
        }
        if (sendClose && !closePacket.isEmpty) || linger {
            state = sendClose ? .closing : .draining
            closeDeadline = endpoint.now + max(lingerNs, 10_000_000)
            expiry = closeDeadline
        } else {
            state = .closed
            expiry = .max
            endpoint.remove(self)
        }
        if wasHandshaking && isServer {
            logger.debug("handshake did not complete: \(error)")
        } else if !wasHandshaking {
            logger.debug("connection closed: \(error)")
        }
        failEverything(error)
    }

    private func failEverything(_ error: QUICError) {
        if let waiter = handshakeWaiter {
            handshakeWaiter = nil
            waiter.resume(throwing: error)
        }
        // Messages taken and not known delivered go back to the application, which may
        // send them again on another connection (QUICConnection.takeUndeliveredMessages):
        // re-sent on streams (lost earliest), lost, unacknowledged, still queued. Taken
        // before the streams fail, which would drop the re-sent ones (see failSend).
        events.keepUndelivered(resentMessages.sorted { $0.key < $1.key }.map(\.value) + lostMessages
                               + unackedMessages.sorted { $0.key < $1.key }.map(\.value.bytes)
                               + datagrams.filter(\.resendIfLost).map(\.bytes))
        resentMessages.removeAll()
        for stream in streams.values { stream.fail(error) }
        streams.removeAll()
        sendQueue.removeAll()
        connectionBlocked.removeAll()
        datagrams.removeAll()
        unackedMessages.removeAll()
        lostMessages.removeAll()
        for w in datagramWaiters { w.resume(throwing: error) }
        datagramWaiters.removeAll()
        let waiting = openWaiters
        openWaiters = []
        for w in waiting { w.opened(.failure(error)) }
        for w in drainWaiters { w.resume() }
        drainWaiters.removeAll()
        events.finish(error)
    }

    // MARK: Handshake

    func handshakeCompleted() {
        guard state == .handshaking else { return }
        // A client waits for HANDSHAKE_DONE (handshake confirmed): only then has the server
        // accepted our certificate (RFC 9001 §4.1.2).
        if isServer { establish() }
    }

    func handshakeConfirmed() {
        if !isServer && state == .handshaking { establish() }
    }

    private func establish() {
        state = .established
        let handle = QUICConnection(core: self)
        self.handle = handle
        logger.debug("connection established")
        if isServer {
            if case .dropped = endpoint.incoming.yield(handle) {
                closeLocally(errorCode: 0x1, reason: "accept backlog full")
            }
        } else if let waiter = handshakeWaiter {
            handshakeWaiter = nil
            waiter.resume(returning: handle)
        }
    }

    // MARK: Messages

    /// Message datagrams kept for a resend at most; beyond it the oldest are
    /// forgotten (their loss then goes unrepaired here, as for a plain datagram).
    static let maxUnackedMessages = 4096

    /// A message datagram neither acknowledged nor declared lost after this many
    /// probe timeouts (and at least `messageGiveUpFloor`) is taken for lost. ngtcp2 0.12
    /// never reports the loss of a DATAGRAM frame whose packet it had reclaimed on a probe
    /// timeout (`rtb_on_pkt_lost` returns early for PTO-reclaimed packets), and it reclaims
    /// any lost packet that also carried a retransmittable frame (stream data, flow-control
    /// credit, …): without this such a message was gone for good, and a broadcast change
    /// waited seconds for anti-entropy sync. Three PTOs leave ngtcp2's own loss detection
    /// (a PTO, then an RTT for the probe's ack) time to act first.
    static let messageGiveUpPTOs: UInt64 = 3
    /// Inside a region three PTOs are under 100 ms; a receiver busy for longer would get
    /// every message twice (datagram and stream), adding load exactly when it has none to
    /// spare. The floor keeps that to stalls of half a second.
    static let messageGiveUpFloor: UInt64 = 500_000_000

    func rememberUnacked(id: UInt64, _ bytes: [UInt8]) {
        if unackedMessages.isEmpty { oldestUnackedID = id }
        unackedMessages[id] = UnackedMessage(bytes: bytes, sentAt: endpoint.now)
        if unackedMessages.count > 2 * Self.maxUnackedMessages {
            let floor = id &- UInt64(Self.maxUnackedMessages)
            unackedMessages = unackedMessages.filter { $0.key > floor }
        }
    }

    /// The peer acknowledged all of a re-sent message's stream, or its stream failed while
    /// the connection lives (the peer reset it or stopped reading: sending it once more
    /// could go round forever, so anti-entropy sync has it).
    func resentMessageSettled(_ id: UInt64) {
        if resentMessages.removeValue(forKey: id) != nil { checkDrained() }
    }

    func messageDatagramAcked(_ id: UInt64) {
        if unackedMessages.removeValue(forKey: id) != nil { checkDrained() }
    }

    func messageDatagramLost(_ id: UInt64) {
        datagramsLost += 1
        if let message = unackedMessages.removeValue(forKey: id) {
            lostMessages.append(message.bytes)
            endpoint.markDirty(self)
        }
    }

    /// The oldest unacknowledged message, skipping ids already settled.
    private func oldestUnacked() -> UnackedMessage? {
        guard !unackedMessages.isEmpty else { return nil }
        while true {
            if let m = unackedMessages[oldestUnackedID] { return m }
            oldestUnackedID &+= 1
        }
    }

    private func messageGiveUpAfter() -> UInt64? {
        guard let conn else { return nil }
        let (ptos, overflow) = Self.messageGiveUpPTOs.multipliedReportingOverflow(by: ngtcp2_conn_get_pto(conn))
        return overflow ? nil : max(ptos, Self.messageGiveUpFloor)
    }

    private func messageGiveUpDeadline() -> UInt64? {
        guard let after = messageGiveUpAfter(), let oldest = oldestUnacked() else { return nil }
        let (deadline, overflow) = oldest.sentAt.addingReportingOverflow(after)
        return overflow ? nil : deadline
    }

    /// Takes message datagrams unacknowledged for `messageGiveUpAfter` for lost: they go
    /// again on streams (the peer may then get one twice).
    func expireUnackedMessages(now: UInt64) {
        guard let giveUpAfter = messageGiveUpAfter() else { return }
        var expired = false
        while let oldest = oldestUnacked(), oldest.sentAt < now, now - oldest.sentAt >= giveUpAfter {
            unackedMessages[oldestUnackedID] = nil
            lostMessages.append(oldest.bytes)
            messagesPresumedLost += 1
            expired = true
        }
        if expired { endpoint.markDirty(self) }
    }

    /// Sends lost message datagrams again, each as one whole uni stream.
    /// Called from `flush`, outside ngtcp2's callbacks.
    func resendLostMessages() {
        guard !lostMessages.isEmpty, state == .established else { return }
        let lost = lostMessages
        lostMessages = []
        let limit = endpoint.config.streamSendBuffer
        for bytes in lost {
            messagesResent += 1
            let id = nextResendID
            nextResendID += 1
            resentMessages[id] = bytes
            openStream(kind: .unidirectional) { result in
                guard case .success(let stream) = result else {
                    // Ended with the connection: failEverything handed it back. Failed while
                    // the connection lives: left to sync, as a reset stream's would be.
                    if self.state == .established { self.resentMessageSettled(id) }
                    return
                }
                stream.resentMessageID = id
                stream.write(bytes, fin: true, limit: limit, nil)
            }
        }
    }

    // MARK: Streams

    /// Opens a Patina stream. Both kinds travel on QUIC bidirectional streams whose first byte
    /// is the kind; see `StreamKind` for why. Waits (FIFO) while the peer's stream limit is reached.
    func openStream(kind: StreamKind, opened: @escaping (Result<StreamCore, QUICError>) -> Void) {
        guard conn != nil, state == .established else {
            opened(.failure(closeError ?? QUICError(.closedLocally, "connection not open")))
            return
        }
        openWaiters.append((kind, opened))
        streamCreditArrived(bidirectional: true)
    }

    func openStream(kind: StreamKind, _ continuation: CheckedContinuation<QUICStream, any Error>) {
        openStream(kind: kind) { [weak self] result in
            switch result {
            case .success(let stream): continuation.resume(returning: QUICStream(core: stream, connection: self?.handle))
            case .failure(let error): continuation.resume(throwing: error)
            }
        }
    }

    func streamCreditArrived(bidirectional: Bool) {
        guard bidirectional, let conn else { return }
        while !openWaiters.isEmpty {
            var id: Int64 = -1
            let rv = ngtcp2_conn_open_bidi_stream(conn, &id, nil)
            if rv == NGTCP2_ERR_STREAM_ID_BLOCKED { return }
            let (kind, opened) = openWaiters.removeFirst()
            if rv != 0 {
                opened(.failure(QUICError(.protocolViolation, String(cString: ngtcp2_strerror(rv)))))
                continue
            }
            let stream = StreamCore(id: id, connection: self, local: true, bidirectional: kind == .bidirectional)
            stream.queueHeader(kind.rawValue)
            streams[id] = stream
            endpoint.markDirty(self)
            opened(.success(stream))
        }
    }

    func remoteStreamOpened(_ id: Int64) {
        let quicBidi = id & 0x2 == 0
        let stream = StreamCore(id: id, connection: self, local: false, bidirectional: quicBidi)
        streams[id] = stream
        if quicBidi {
            // Announced once its kind byte arrives.
            stream.awaitingKind = true
        } else {
            events.streams.yield(QUICStream(core: stream, connection: handle))
        }
    }

    /// The first byte of a peer-opened bidirectional stream: its kind. Returns false for a
    /// byte that is no kind, and the stream is then reset.
    func receivedKind(_ byte: UInt8, on stream: StreamCore) -> Bool {
        stream.awaitingKind = false
        switch StreamKind(rawValue: byte) {
        case .bidirectional: break
        case .unidirectional: stream.becomeReceiveOnly()
        case nil:
            if let conn { _ = ngtcp2_conn_shutdown_stream(conn, stream.id, 0x101) }
            return false
        }
        events.streams.yield(QUICStream(core: stream, connection: handle))
        endpoint.markDirty(self)
        return true
    }

    /// Returns flow-control credit for bytes the application consumed (RFC 9000 §4.1).
    func extendCredit(stream id: Int64, bytes: UInt64) {
        guard let conn, bytes > 0, state == .established else { return }
        if streams[id] != nil { _ = ngtcp2_conn_extend_max_stream_offset(conn, id, bytes) }
        ngtcp2_conn_extend_max_offset(conn, bytes)
        endpoint.markDirty(self)
    }

    /// Resolves `close(drain:)` callers once every stream's data and every message
    /// datagram has been acknowledged (a lost one goes again on a stream first).
    func checkDrained() {
        guard !drainWaiters.isEmpty else { return }
        if streams.values.allSatisfy({ $0.isSendSettled }) && datagrams.isEmpty && unackedMessages.isEmpty && lostMessages.isEmpty
            && resentMessages.isEmpty {
            let waiters = drainWaiters
            drainWaiters.removeAll()
            for w in waiters { w.resume() }
        }
    }

    func stats() -> QUICConnectionStats {
        var stat = ngtcp2_conn_stat()
        if let conn { patina_ngtcp2_conn_get_conn_stat(conn, &stat) }
        return QUICConnectionStats(
            smoothedRTT: .nanoseconds(Int64(stat.smoothed_rtt)), minRTT: .nanoseconds(Int64(min(stat.min_rtt, UInt64(Int64.max)))),
            latestRTT: .nanoseconds(Int64(stat.latest_rtt)), congestionWindow: stat.cwnd,
            bytesInFlight: stat.bytes_in_flight, bytesSent: bytesSent, bytesReceived: bytesReceived,
            packetsSent: packetsSent, packetsReceived: packetsReceived, probeTimeouts: probeTimeouts + UInt64(stat.pto_count),
            datagramsLost: datagramsLost, messagesResent: messagesResent,
            messagesPresumedLost: messagesPresumedLost, sendDrops: sendDrops)
    }

    /// The largest datagram payload that fits the peer's limit and one packet, or nil when the
    /// peer does not accept datagrams (RFC 9221 §3).
    func maxDatagramPayload() -> Int? {
        guard let conn, let params = ngtcp2_conn_get_remote_transport_params(conn) else { return nil }
        let peerMax = Int(min(params.pointee.max_datagram_frame_size, 65535))
        if peerMax == 0 { return nil }
        // Frame type + length varint take up to 1 + 2 bytes of the frame; a short header with our
        // 20-byte DCID max, 4-byte packet number and 16-byte AEAD tag take 41 bytes of the packet.
        let packet = ngtcp2_conn_get_max_tx_udp_payload_size(conn)
        return max(0, min(peerMax - 3, min(packet, 1200) - 41 - 3))
    }
}

private let getConnCallback: @convention(c) (UnsafeMutablePointer<ngtcp2_crypto_conn_ref>?) -> OpaquePointer? = { ref in
    guard let user = ref?.pointee.user_data else { return nil }
    return ConnectionCore.from(user).conn
}

/// A message datagram sent and not yet acknowledged.
struct UnackedMessage {
    var bytes: [UInt8]
    /// Endpoint clock (ns) when ngtcp2 took it into a packet.
    var sentAt: UInt64
}

/// A DATAGRAM frame waiting to be written; a message's is re-sent on a stream if lost.
struct OutgoingDatagram {
    var bytes: [UInt8]
    var resendIfLost: Bool
}
