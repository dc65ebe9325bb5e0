// Plain C functions for what Swift cannot import from the C libraries:
// macros that expand to casts, and variadic callbacks. Each is a thin,
// side-effect-free wrapper; see shims.c.
#ifndef PATINA_SHIMS_H
#define PATINA_SHIMS_H

// The preupdate API is declared only when this macro is set; Debian's
// libsqlite3 is built with it (see docs/store.md, "Capture").
#define SQLITE_ENABLE_PREUPDATE_HOOK 1
#include <sqlite3.h>
#include <stdint.h>

// SQLITE_TRANSIENT is `((sqlite3_destructor_type)-1)`, which Swift cannot import.
int patina_sqlite3_bind_text_transient(sqlite3_stmt *stmt, int index, const char *text, int length);
int patina_sqlite3_bind_blob_transient(sqlite3_stmt *stmt, int index, const void *bytes, int length);
void patina_sqlite3_result_text_transient(sqlite3_context *ctx, const char *text, int length);
void patina_sqlite3_result_blob_transient(sqlite3_context *ctx, const void *bytes, int length);

// Local-write capture (PatinaStore): the preupdate hook, re-declared here
// because sqlite3.h hides it behind SQLITE_ENABLE_PREUPDATE_HOOK, and
// sqlite3_db_config(SQLITE_DBCONFIG_ENABLE_TRIGGER), which is variadic.
typedef void (*patina_preupdate_callback)(void *, sqlite3 *, int, const char *, const char *, sqlite3_int64, sqlite3_int64);
void patina_sqlite3_preupdate_hook(sqlite3 *db, patina_preupdate_callback callback, void *context);
int patina_sqlite3_preupdate_count(sqlite3 *db);
// The value of column `index` before (old) or after (new) the change; NULL on error.
sqlite3_value *patina_sqlite3_preupdate_old(sqlite3 *db, int index);
sqlite3_value *patina_sqlite3_preupdate_new(sqlite3 *db, int index);
// Turns trigger execution off for this connection only; returns the new setting (0).
int patina_sqlite3_disable_triggers(sqlite3 *db);

// The library's runtime version string (ngtcp2 reports it through a struct).
const char *patina_ngtcp2_version_string(void);

// MARK: QUIC transport (PatinaQUIC). ngtcp2 0.12 exposes several entry points
// only as macros over `*_versioned` functions; these wrappers pin the struct
// versions of the installed headers. Socket helpers retry EINTR and return
// -errno instead of setting errno, so Swift never reads the thread-local.
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>
#include <gnutls/gnutls.h>
#include <sys/socket.h>
#include <sys/types.h>

void patina_ngtcp2_settings_default(ngtcp2_settings *settings);
void patina_ngtcp2_transport_params_default(ngtcp2_transport_params *params);
/// Fills the callbacks that ngtcp2_crypto implements (handshake, keys, AEAD,
/// header protection); the caller adds its application callbacks.
void patina_ngtcp2_crypto_callbacks(ngtcp2_callbacks *callbacks, int is_server);
int patina_ngtcp2_conn_client_new(ngtcp2_conn **pconn, const ngtcp2_cid *dcid, const ngtcp2_cid *scid,
                                  const ngtcp2_path *path, const ngtcp2_callbacks *callbacks,
                                  const ngtcp2_settings *settings, const ngtcp2_transport_params *params,
                                  void *user_data);
int patina_ngtcp2_conn_server_new(ngtcp2_conn **pconn, const ngtcp2_cid *dcid, const ngtcp2_cid *scid,
                                  const ngtcp2_path *path, uint32_t version, const ngtcp2_callbacks *callbacks,
                                  const ngtcp2_settings *settings, const ngtcp2_transport_params *params,
                                  void *user_data);
int patina_ngtcp2_conn_read_pkt(ngtcp2_conn *conn, const ngtcp2_path *path, const uint8_t *pkt, size_t pktlen,
                                uint64_t ts);
ngtcp2_ssize patina_ngtcp2_conn_writev_stream(ngtcp2_conn *conn, uint8_t *dest, size_t destlen,
                                              ngtcp2_ssize *pdatalen, uint32_t flags, int64_t stream_id,
                                              const ngtcp2_vec *datav, size_t datavcnt, uint64_t ts);
ngtcp2_ssize patina_ngtcp2_conn_writev_datagram(ngtcp2_conn *conn, uint8_t *dest, size_t destlen, int *paccepted,
                                                uint32_t flags, uint64_t dgram_id, const uint8_t *data,
                                                size_t datalen, uint64_t ts);
ngtcp2_ssize patina_ngtcp2_conn_write_connection_close(ngtcp2_conn *conn, uint8_t *dest, size_t destlen,
                                                       const ngtcp2_connection_close_error *ccerr, uint64_t ts);
void patina_ngtcp2_conn_get_conn_stat(ngtcp2_conn *conn, ngtcp2_conn_stat *stat);
/// The header fields a dispatcher needs; 0, or -1 for garbage, or 1 when the
/// version is unsupported (the caller answers with Version Negotiation).
int patina_ngtcp2_decode_dcid(const uint8_t *data, size_t datalen, size_t short_dcidlen, uint8_t *dcid,
                              size_t *dcidlen, uint8_t *scid, size_t *scidlen, uint32_t *version);

/// CLOCK_MONOTONIC in nanoseconds: ngtcp2's only notion of time.
uint64_t patina_monotonic_ns(void);

/// A non-blocking UDP socket bound to `addr`; returns the fd or -errno.
int patina_udp_bind(const struct sockaddr *addr, socklen_t addrlen);
/// One datagram, or -EAGAIN when the queue is empty, or another -errno.
ssize_t patina_udp_recv(int fd, uint8_t *buf, size_t buflen, struct sockaddr_storage *from, socklen_t *fromlen);
/// Like patina_udp_recv, but with UDP GRO the kernel may hand over several datagrams of
/// *segment bytes each (the last may be shorter); *segment is 0 for a single datagram.
ssize_t patina_udp_recv_gro(int fd, uint8_t *buf, size_t buflen, struct sockaddr_storage *from, socklen_t *fromlen,
                            size_t *segment);
/// Sends `len` bytes; when gso_size > 0 and len > gso_size the kernel splits
/// them into datagrams of gso_size (UDP_SEGMENT). Returns bytes or -errno.
ssize_t patina_udp_send(int fd, const uint8_t *buf, size_t len, const struct sockaddr *to, socklen_t tolen,
                        size_t gso_size);
int patina_local_address(int fd, struct sockaddr_storage *addr, socklen_t *addrlen);
/// Parses a numeric IPv4/IPv6 host (or resolves a name) into a socket address.
int patina_resolve(const char *host, uint16_t port, struct sockaddr_storage *out, socklen_t *outlen);
/// "1.2.3.4" / "::1" and the port of a socket address; returns 0 on success.
int patina_format_address(const struct sockaddr *addr, char *host, size_t hostlen, uint16_t *port);
int patina_eventfd(void);
void patina_eventfd_signal(int fd);
void patina_eventfd_drain(int fd);
/// Waits for readability of fd_a or fd_b with a nanosecond timeout (-1 = forever).
/// Returns a bit mask: 1 = fd_a readable, 2 = fd_b readable.
int patina_poll2(int fd_a, int fd_b, int64_t timeout_ns);

/// ngtcp2_crypto_conn_ref's user data back from a GnuTLS session (set by the
/// connection before the handshake starts).
void *patina_gnutls_session_conn_user_data(gnutls_session_t session);
/// Sets ALPN, priorities and credentials, and the certificate policy of mutual
/// TLS: servers REQUIRE a client certificate.
/// gnutls_free is a function-pointer variable, which Swift 6 treats as shared mutable state.
void patina_gnutls_free(void *p);
int patina_gnutls_session_setup(gnutls_session_t session, int is_server, gnutls_certificate_credentials_t cred,
                                const char *alpn, const char *sni);

#endif
