// PatinaQUIC — the QUIC transport of a Patina node (ngtcp2 0.12.1 + GnuTLS 3.7, mutual TLS).
//
// Where things are:
//   EndpointCore.swift    the event loop: one thread, one UDP socket (GSO out, GRO in), eventfd
//                         wake-ups, ngtcp2 timers, packet dispatch by connection ID, accept.
//   ConnectionCore.swift  one ngtcp2_conn: handshake states, packet writing, close/drain, stats.
//   Callbacks.swift       every ngtcp2 application callback.
//   StreamCore.swift      stream send buffers (freed on ACK) and receive buffers (credit on read).
//   TLSContext.swift      GnuTLS credentials, sessions, and the peer-certificate check.
//   QUICEndpoint / QUICConnection / QUICStream / QUICConnectionCache: the async API.
//
// Decisions (see also ../../shared/DESIGN.md, "QUIC transport"):
// - Threading: ngtcp2 is not thread-safe, so each endpoint's connections live on its loop
//   thread; Swift tasks submit closures to it. Stream receive buffers are the one piece shared
//   with readers (behind a Mutex) so that reading buffered bytes needs no trip to the loop.
// - Wire format of ALPN `patina/1`: every stream a Patina endpoint opens starts with one kind
//   byte (0x00 bidirectional, 0x01 unidirectional) and Patina "uni" streams are QUIC
//   bidirectional streams whose receiver answers with a bare FIN. Reason: ngtcp2 0.12.1 never
//   closes a peer-opened QUIC uni stream (upstream fix 1d591bde, v0.13), which would leak state
//   and stream credit for every broadcast message. Peer-opened real QUIC uni streams (from other
//   stacks) are still accepted; their credit is returned when the application releases them.
// - Backpressure: `write` suspends while a stream holds `streamSendBuffer` unacknowledged bytes;
//   the peer's window only grows as `read` hands bytes to the application (ngtcp2 auto-tunes the
//   window up to maxStreamWindow/maxConnectionWindow while the reader keeps up). Peer-opened
//   streams return stream-count credit only when closed and released by the application.
// - Handshake: a client reports success only on HANDSHAKE_DONE (handshake confirmed), because in
//   TLS 1.3 the server checks the client certificate after the client has finished. A refusal is
//   logged at warning level on the refusing side with the precise cause (no certificate, other
//   CA, expired, not yet valid, name mismatch) and on the other side as the TLS alert received.
// - Releasing the last reference to a QUICConnection closes it (application error 0); servers
//   MUST keep accepted connections they want to keep. Releasing an unfinished stream resets it.
// - initialRTT defaults to 50 ms instead of RFC 9002's 333 ms: cluster links are known to be
//   short, and the initial RTT drives both the first PTO and ngtcp2's pacing of the handshake.
// - Stats: ngtcp2 0.12 exposes RTTs, cwnd and PTO count but no lost-packet counter; byte and
//   packet counts are the endpoint's own, datagram losses come from lost_datagram callbacks.
