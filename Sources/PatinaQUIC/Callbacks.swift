import CPatinaShims
import CQuic
import PatinaCore

// The ngtcp2 application callbacks, all in one place. ngtcp2 calls them on the loop thread
// from inside read_pkt / writev_stream / handle_expiry; `user_data` is the ConnectionCore
// (unretained: the endpoint's tables keep it alive while its ngtcp2_conn exists).

private func core(_ user: UnsafeMutableRawPointer?) -> ConnectionCore {
    ConnectionCore.from(user!)
}

extension ConnectionCore {
    func installCallbacks(_ cb: inout ngtcp2_callbacks) {
        cb.handshake_completed = { _, user in
            core(user).handshakeCompleted()
            return 0
        }
        cb.handshake_confirmed = { _, user in
            core(user).handshakeConfirmed()
            return 0
        }
        cb.recv_stream_data = { conn, flags, streamID, _, data, length, user, _ in
            let c = core(user)
            guard let stream = c.streams[streamID] else {
                // Data for a stream the application released: return its credit at once.
                ngtcp2_conn_extend_max_offset(conn, UInt64(length))
                return 0
            }
            let fin = flags & UInt32(NGTCP2_STREAM_DATA_FLAG_FIN) != 0
            var data = data
            var length = length
            if stream.awaitingKind {
                guard let first = data, length > 0 else {
                    // FIN before the kind byte: nothing to announce.
                    stream.awaitingKind = false
                    return 0
                }
                // The kind byte is transport framing: its credit goes back at once.
                _ = ngtcp2_conn_extend_max_stream_offset(conn, streamID, 1)
                ngtcp2_conn_extend_max_offset(conn, 1)
                if !c.receivedKind(first.pointee, on: stream) { return 0 }
                data = first + 1
                length -= 1
            }
            if !stream.canReceive {
                // The receiving end of our uni stream sends only its FIN; anything else is dropped.
                if length > 0 { ngtcp2_conn_extend_max_offset(conn, UInt64(length)) }
                return 0
            }
            switch stream.shared.deliver(data, length, fin: fin) {
            case .stored: break
            case .wakeReader: c.endpoint.pendingWakes.append(stream)
            case .discarded(let bytes):
                if bytes > 0 { ngtcp2_conn_extend_max_offset(conn, bytes) }
            }
            return 0
        }
        cb.acked_stream_data_offset = { _, streamID, offset, length, user, _ in
            core(user).streams[streamID]?.acked(offset: offset, length: length)
            return 0
        }
        cb.stream_open = { _, streamID, user in
            core(user).remoteStreamOpened(streamID)
            return 0
        }
        cb.stream_close = { _, flags, streamID, appErrorCode, user, _ in
            let c = core(user)
            if let stream = c.streams.removeValue(forKey: streamID) {
                let hasCode = flags & UInt32(NGTCP2_STREAM_CLOSE_FLAG_APP_ERROR_CODE_SET) != 0
                stream.closed(appErrorCode: hasCode ? appErrorCode : 0)
            }
            c.checkDrained()
            return 0
        }
        cb.stream_reset = { _, streamID, _, appErrorCode, user, _ in
            core(user).streams[streamID]?.shared.fail(
                QUICError(.streamReset, "peer reset stream \(streamID)", errorCode: appErrorCode))
            return 0
        }
        // No `stream_stop_sending`: in ngtcp2 0.12 it reports that *this* side stopped
        // reading, from inside the write call that packs the STOP_SENDING frame. Resetting
        // the send side there (as a handler for the peer's STOP_SENDING would) puts a
        // RESET_STREAM with the final size so far into a packet that the same call then
        // fills with more of the stream's data: the peer ends the connection with
        // FINAL_SIZE_ERROR. A peer's STOP_SENDING needs no callback: ngtcp2 resets the
        // stream itself and refuses further writes (see `flush`).
        cb.extend_max_stream_data = { _, streamID, _, user, _ in
            let c = core(user)
            if let stream = c.streams[streamID], stream.blocked {
                stream.blocked = false
                c.enqueue(stream)
                c.endpoint.markDirty(c)
            }
            return 0
        }
        cb.extend_max_local_streams_bidi = { _, _, user in
            core(user).streamCreditArrived(bidirectional: true)
            return 0
        }
        cb.extend_max_local_streams_uni = { _, _, user in
            core(user).streamCreditArrived(bidirectional: false)
            return 0
        }
        cb.recv_datagram = { _, _, data, length, user in
            let c = core(user)
            guard let data else { return 0 }
            let inbox = c.events.datagrams
            // A waiting reader is woken once the whole packet batch is read (wakeReaders).
            if inbox.append([UInt8](UnsafeBufferPointer(start: data, count: length))) == .queued(readerWaiting: true),
               c.endpoint.pendingDatagramWakes.last !== inbox {
                c.endpoint.pendingDatagramWakes.append(inbox)
            }
            return 0
        }
        cb.ack_datagram = { _, id, user in
            core(user).messageDatagramAcked(id)
            return 0
        }
        cb.lost_datagram = { _, id, user in
            core(user).messageDatagramLost(id)
            return 0
        }
        cb.rand = { dest, length, _ in
            if let dest { randomBytes(dest, length) }
        }
        cb.get_new_connection_id = { _, cid, token, length, user in
            guard let cid, let token else { return NGTCP2_ERR_CALLBACK_FAILURE }
            let c = core(user)
            cid.pointee = makeRandomCID(length: length)
            // Stateless reset is not used by Patina: a random token never matches.
            randomBytes(token, Int(NGTCP2_STATELESS_RESET_TOKENLEN))
            c.endpoint.route(cid.pointee, to: c)
            return 0
        }
        cb.remove_connection_id = { _, cid, user in
            if let cid { core(user).endpoint.unroute(cid.pointee) }
            return 0
        }
    }
}
