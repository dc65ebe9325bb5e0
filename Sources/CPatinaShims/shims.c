#define _GNU_SOURCE 1 // ppoll, used by the QUIC event loop
#include "CPatinaShims.h"
#include <ngtcp2/ngtcp2.h>

int patina_sqlite3_bind_text_transient(sqlite3_stmt *stmt, int index, const char *text, int length) {
    return sqlite3_bind_text(stmt, index, text, length, SQLITE_TRANSIENT);
}

int patina_sqlite3_bind_blob_transient(sqlite3_stmt *stmt, int index, const void *bytes, int length) {
    return sqlite3_bind_blob(stmt, index, bytes, length, SQLITE_TRANSIENT);
}

void patina_sqlite3_result_text_transient(sqlite3_context *ctx, const char *text, int length) {
    sqlite3_result_text(ctx, text, length, SQLITE_TRANSIENT);
}

void patina_sqlite3_result_blob_transient(sqlite3_context *ctx, const void *bytes, int length) {
    sqlite3_result_blob(ctx, bytes, length, SQLITE_TRANSIENT);
}

// Repeated from sqlite3.h in case the header was read without the macro above
// (identical redeclarations are valid C).
void *sqlite3_preupdate_hook(sqlite3 *, void (*)(void *, sqlite3 *, int, char const *, char const *, sqlite3_int64, sqlite3_int64), void *);
int sqlite3_preupdate_old(sqlite3 *, int, sqlite3_value **);
int sqlite3_preupdate_count(sqlite3 *);
int sqlite3_preupdate_new(sqlite3 *, int, sqlite3_value **);

void patina_sqlite3_preupdate_hook(sqlite3 *db, patina_preupdate_callback callback, void *context) {
    sqlite3_preupdate_hook(db, callback, context);
}

int patina_sqlite3_preupdate_count(sqlite3 *db) { return sqlite3_preupdate_count(db); }

sqlite3_value *patina_sqlite3_preupdate_old(sqlite3 *db, int index) {
    sqlite3_value *value = NULL;
    return sqlite3_preupdate_old(db, index, &value) == SQLITE_OK ? value : NULL;
}

sqlite3_value *patina_sqlite3_preupdate_new(sqlite3 *db, int index) {
    sqlite3_value *value = NULL;
    return sqlite3_preupdate_new(db, index, &value) == SQLITE_OK ? value : NULL;
}

int patina_sqlite3_disable_triggers(sqlite3 *db) {
    int enabled = -1;
    sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_TRIGGER, 0, &enabled);
    return enabled;
}

const char *patina_ngtcp2_version_string(void) {
    const ngtcp2_info *info = ngtcp2_version(0);
    return info ? info->version_str : "unknown";
}

// MARK: QUIC transport (PatinaQUIC)

#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

void patina_ngtcp2_settings_default(ngtcp2_settings *settings) { ngtcp2_settings_default(settings); }

void patina_ngtcp2_transport_params_default(ngtcp2_transport_params *params) {
    ngtcp2_transport_params_default(params);
}

void patina_ngtcp2_crypto_callbacks(ngtcp2_callbacks *cb, int is_server) {
    memset(cb, 0, sizeof(*cb));
    if (is_server) {
        cb->recv_client_initial = ngtcp2_crypto_recv_client_initial_cb;
    } else {
        cb->client_initial = ngtcp2_crypto_client_initial_cb;
        cb->recv_retry = ngtcp2_crypto_recv_retry_cb;
    }
    cb->recv_crypto_data = ngtcp2_crypto_recv_crypto_data_cb;
    cb->encrypt = ngtcp2_crypto_encrypt_cb;
    cb->decrypt = ngtcp2_crypto_decrypt_cb;
    cb->hp_mask = ngtcp2_crypto_hp_mask_cb;
    cb->update_key = ngtcp2_crypto_update_key_cb;
    cb->delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb;
    cb->delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb;
    cb->get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb;
    cb->version_negotiation = ngtcp2_crypto_version_negotiation_cb;
}

int patina_ngtcp2_conn_client_new(ngtcp2_conn **pconn, const ngtcp2_cid *dcid, const ngtcp2_cid *scid,
                                  const ngtcp2_path *path, const ngtcp2_callbacks *callbacks,
                                  const ngtcp2_settings *settings, const ngtcp2_transport_params *params,
                                  void *user_data) {
    return ngtcp2_conn_client_new(pconn, dcid, scid, path, NGTCP2_PROTO_VER_V1, callbacks, settings, params, NULL,
                                  user_data);
}

int patina_ngtcp2_conn_server_new(ngtcp2_conn **pconn, const ngtcp2_cid *dcid, const ngtcp2_cid *scid,
                                  const ngtcp2_path *path, uint32_t version, const ngtcp2_callbacks *callbacks,
                                  const ngtcp2_settings *settings, const ngtcp2_transport_params *params,
                                  void *user_data) {
    return ngtcp2_conn_server_new(pconn, dcid, scid, path, version, callbacks, settings, params, NULL, user_data);
}

int patina_ngtcp2_conn_read_pkt(ngtcp2_conn *conn, const ngtcp2_path *path, const uint8_t *pkt, size_t pktlen,
                                uint64_t ts) {
    ngtcp2_pkt_info pi = {0};
    return ngtcp2_conn_read_pkt(conn, path, &pi, pkt, pktlen, ts);
}

ngtcp2_ssize patina_ngtcp2_conn_writev_stream(ngtcp2_conn *conn, uint8_t *dest, size_t destlen,
                                              ngtcp2_ssize *pdatalen, uint32_t flags, int64_t stream_id,
                                              const ngtcp2_vec *datav, size_t datavcnt, uint64_t ts) {
    // Patina never migrates: the path written is always the connection's own.
    return ngtcp2_conn_writev_stream(conn, NULL, NULL, dest, destlen, pdatalen, flags, stream_id, datav, datavcnt,
                                     ts);
}

ngtcp2_ssize patina_ngtcp2_conn_writev_datagram(ngtcp2_conn *conn, uint8_t *dest, size_t destlen, int *paccepted,
                                                uint32_t flags, uint64_t dgram_id, const uint8_t *data,
                                                size_t datalen, uint64_t ts) {
    ngtcp2_vec v = {(uint8_t *)data, datalen};
    return ngtcp2_conn_writev_datagram(conn, NULL, NULL, dest, destlen, paccepted, flags, dgram_id, &v, 1, ts);
}

ngtcp2_ssize patina_ngtcp2_conn_write_connection_close(ngtcp2_conn *conn, uint8_t *dest, size_t destlen,
                                                       const ngtcp2_connection_close_error *ccerr, uint64_t ts) {
    return ngtcp2_conn_write_connection_close(conn, NULL, NULL, dest, destlen, ccerr, ts);
}

void patina_ngtcp2_conn_get_conn_stat(ngtcp2_conn *conn, ngtcp2_conn_stat *stat) {
    ngtcp2_conn_get_conn_stat(conn, stat);
}

int patina_ngtcp2_decode_dcid(const uint8_t *data, size_t datalen, size_t short_dcidlen, uint8_t *dcid,
                              size_t *dcidlen, uint8_t *scid, size_t *scidlen, uint32_t *version) {
    ngtcp2_version_cid vc;
    int rv = ngtcp2_pkt_decode_version_cid(&vc, data, datalen, short_dcidlen);
    if (rv != 0 && rv != NGTCP2_ERR_VERSION_NEGOTIATION) return -1;
    if (vc.dcidlen > NGTCP2_MAX_CIDLEN || vc.scidlen > NGTCP2_MAX_CIDLEN) return -1;
    memcpy(dcid, vc.dcid, vc.dcidlen);
    *dcidlen = vc.dcidlen;
    if (vc.scid) memcpy(scid, vc.scid, vc.scidlen);
    *scidlen = vc.scid ? vc.scidlen : 0;
    *version = vc.version;
    return rv == NGTCP2_ERR_VERSION_NEGOTIATION ? 1 : 0;
}

uint64_t patina_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int patina_udp_bind(const struct sockaddr *addr, socklen_t addrlen) {
    int fd = socket(addr->sa_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (addr->sa_family == AF_INET6) {
        int off = 0; // dual-stack when bound to ::
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
    }
    // Large socket buffers: bulk transfers on loopback otherwise drop bursts.
    int size = 8 * 1024 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
    int on = 1; // receive coalesced datagrams where the kernel supports it (Linux >= 5.0)
    setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof(on));
    if (bind(fd, addr, addrlen) != 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

ssize_t patina_udp_recv(int fd, uint8_t *buf, size_t buflen, struct sockaddr_storage *from, socklen_t *fromlen) {
    for (;;) {
        *fromlen = sizeof(*from);
        ssize_t n = recvfrom(fd, buf, buflen, 0, (struct sockaddr *)from, fromlen);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        return -errno;
    }
}

ssize_t patina_udp_recv_gro(int fd, uint8_t *buf, size_t buflen, struct sockaddr_storage *from, socklen_t *fromlen,
                            size_t *segment) {
    struct iovec iov = {buf, buflen};
    char control[CMSG_SPACE(sizeof(int))];
    struct msghdr msg;
    *segment = 0;
    for (;;) {
        memset(&msg, 0, sizeof(msg));
        msg.msg_name = from;
        msg.msg_namelen = sizeof(*from);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        ssize_t n = recvmsg(fd, &msg, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        *fromlen = msg.msg_namelen;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
            if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
                int seg;
                memcpy(&seg, CMSG_DATA(cm), sizeof(seg));
                if (seg > 0 && (ssize_t)seg < n) *segment = (size_t)seg;
            }
        }
        return n;
    }
}

ssize_t patina_udp_send(int fd, const uint8_t *buf, size_t len, const struct sockaddr *to, socklen_t tolen,
                        size_t gso_size) {
    struct iovec iov = {(void *)buf, len};
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_name = (void *)to;
    msg.msg_namelen = tolen;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    char control[CMSG_SPACE(sizeof(uint16_t))];
    if (gso_size > 0 && len > gso_size) {
        memset(control, 0, sizeof(control));
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t seg = (uint16_t)gso_size;
        memcpy(CMSG_DATA(cm), &seg, sizeof(seg));
    }
    for (;;) {
        ssize_t n = sendmsg(fd, &msg, 0);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        return -errno;
    }
}

int patina_local_address(int fd, struct sockaddr_storage *addr, socklen_t *addrlen) {
    *addrlen = sizeof(*addr);
    return getsockname(fd, (struct sockaddr *)addr, addrlen) == 0 ? 0 : -errno;
}

int patina_resolve(const char *host, uint16_t port, struct sockaddr_storage *out, socklen_t *outlen) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%u", (unsigned)port);
    int rv = getaddrinfo(host, portstr, &hints, &res);
    if (rv != 0 || res == NULL) return -1;
    memcpy(out, res->ai_addr, res->ai_addrlen);
    *outlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int patina_format_address(const struct sockaddr *addr, char *host, size_t hostlen, uint16_t *port) {
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        if (!inet_ntop(AF_INET, &in->sin_addr, host, hostlen)) return -1;
        *port = ntohs(in->sin_port);
        return 0;
    }
    if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        if (!inet_ntop(AF_INET6, &in6->sin6_addr, host, hostlen)) return -1;
        *port = ntohs(in6->sin6_port);
        return 0;
    }
    return -1;
}

int patina_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

void patina_eventfd_signal(int fd) {
    uint64_t one = 1;
    while (write(fd, &one, sizeof(one)) < 0 && errno == EINTR) {}
}

void patina_eventfd_drain(int fd) {
    uint64_t value;
    while (read(fd, &value, sizeof(value)) < 0 && errno == EINTR) {}
}

int patina_poll2(int fd_a, int fd_b, int64_t timeout_ns) {
    struct pollfd fds[2] = {{fd_a, POLLIN, 0}, {fd_b, POLLIN, 0}};
    struct timespec ts, *pts = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000;
        ts.tv_nsec = timeout_ns % 1000000000;
        pts = &ts;
    }
    int rv = ppoll(fds, 2, pts, NULL);
    if (rv <= 0) return 0;
    return ((fds[0].revents & (POLLIN | POLLERR)) ? 1 : 0) | ((fds[1].revents & (POLLIN | POLLERR)) ? 2 : 0);
}

void *patina_gnutls_session_conn_user_data(gnutls_session_t session) {
    ngtcp2_crypto_conn_ref *ref = gnutls_session_get_ptr(session);
    return ref ? ref->user_data : NULL;
}

int patina_gnutls_session_setup(gnutls_session_t session, int is_server, gnutls_certificate_credentials_t cred,
                                const char *alpn, const char *sni) {
    int rv = gnutls_priority_set_direct(
        session,
        "%DISABLE_TLS13_COMPAT_MODE:NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"
        "+CHACHA20-POLY1305:-GROUP-ALL:+GROUP-X25519:+GROUP-SECP256R1:+GROUP-SECP384R1",
        NULL);
    if (rv != 0) return rv;
    rv = is_server ? ngtcp2_crypto_gnutls_configure_server_session(session)
                   : ngtcp2_crypto_gnutls_configure_client_session(session);
    if (rv != 0) return GNUTLS_E_INTERNAL_ERROR;
    rv = gnutls_credentials_set(session, GNUTLS_CRD_CERTIFICATE, cred);
    if (rv != 0) return rv;
    gnutls_datum_t proto = {(unsigned char *)alpn, (unsigned int)strlen(alpn)};
    rv = gnutls_alpn_set_protocols(session, &proto, 1,
                                   GNUTLS_ALPN_MANDATORY | (is_server ? GNUTLS_ALPN_SERVER_PRECEDENCE : 0));
    if (rv != 0) return rv;
    if (is_server) {
        gnutls_certificate_server_set_request(session, GNUTLS_CERT_REQUIRE);
        // Send no CA name list: the client then offers its certificate even
        // when it was issued by another CA, so the refusal names the real cause.
        gnutls_certificate_send_x509_rdn_sequence(session, 1);
    } else if (sni && *sni) {
        rv = gnutls_server_name_set(session, GNUTLS_NAME_DNS, sni, strlen(sni));
        if (rv != 0) return rv;
    }
    return 0;
}

void patina_gnutls_free(void *p) { gnutls_free(p); }
