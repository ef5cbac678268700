#include "ck_transport.h"

#include "ck_common.h"
#include "ck_tls.h"

#include <errno.h>
#include <netdb.h>
#include <sys/socket.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------
 * Wire constants (see the format in ck_transport.h)
 * ------------------------------------------------------------------------ */

#define TR_PROTOCOL 1 /* raft's own handshake protocol number. */
#define TR_MAGIC 8
#define TR_NONCE 32
#define TR_MAC 32
#define TR_PREAMBLE 24
#define TR_HELLO (TR_MAGIC + TR_NONCE)
#define TR_CHALLENGE (TR_MAGIC + TR_NONCE + TR_MAC)
#define TR_MAX_ADDRS 8
#define TR_LOG_SLOTS 8
#define TR_LOG_WINDOW_MS 10000

static const unsigned char tr_magic_hello[TR_MAGIC] = {'C', 'K', 'R', 'A', 'F', 'T', 'A', '1'};
static const unsigned char tr_magic_challenge[TR_MAGIC] = {'C', 'K', 'R', 'A', 'F', 'T', 'B', '1'};
static const char tr_label_server[] = "clusterkit raft v1 server";
static const char tr_label_client[] = "clusterkit raft v1 client";

/* What a connection is reading. */
enum tr_read {
    RD_NONE,
    RD_HELLO,     /* Server, token: HELLO. */
    RD_PREAMBLE,  /* Server: raft's preamble (after Mc with a token). */
    RD_ADDRESS,   /* Server: the address that follows the preamble. */
    RD_CHALLENGE, /* Client, token: CHALLENGE. */
};

struct tr_log_slot {
    char host[256];
    uint64_t last_ms;
    unsigned suppressed;
    bool used;
};

struct tr {
    struct raft_uv_transport *iface;
    uv_loop_t *loop;
    raft_id id;
    char *address;
    char *bind_address;
    unsigned char *token;
    size_t token_len;
    unsigned timeout_ms, max_pending;
    char *log_context;
    void (*log)(void *data, const char *line);
    void *log_data;
    void (*peer_closed)(void *data, raft_id id);
    void *peer_closed_data;
    SSL_CTX *tls_server, *tls_client; /* Our references; NULL: plain TCP. */
    unsigned n_pumps;                 /* TLS pumps not yet gone (tr_maybe_closed waits). */
    uv_tcp_t listener;
    bool listener_inited, listener_closed;
    raft_uv_accept_cb accept_cb;
    struct tr_conn *conns; /* Handshakes in progress, both directions. */
    unsigned n_incoming;
    bool closing;
    raft_uv_transport_close_cb close_cb;
    struct ck_transport_stats stats;
    struct tr_log_slot slots[TR_LOG_SLOTS];
};

/* One connection until it is handed to raft or dropped. It is freed once
 * every handle and request it owns has called back (refs reaches 0). */
struct tr_conn {
    struct tr *t;
    struct tr_conn *prev, *next;
    bool outgoing, failed, done, verified, quiet, timer_closing, established;
    int status;    /* RAFT_* for the connect callback on failure. */
    unsigned refs; /* Open handles (timer, tcp) and a pending getaddrinfo. */
    unsigned writes_pending;
    /* The connection's stream: the TCP handle, or with TLS the plaintext end
     * of its pump (the pump owns the TCP handle then). raft_malloc'd: raft
     * frees it with raft_free once it owns it. */
    uv_stream_t *s;
    struct tr_pump *pump; /* With TLS, until the pump or the connection goes. */
    bool tls_ready;       /* The TLS handshake completed (the server's certificate checked). */
    bool last_written;    /* Outgoing: the preamble is out, raft gets the stream once TLS is ready. */
    uv_timer_t timer;
    uv_getaddrinfo_t gai;
    bool gai_pending;
    struct sockaddr_storage addrs[TR_MAX_ADDRS];
    unsigned n_addrs, next_addr;
    uv_connect_t connect;
    uv_write_t w_first, w_last;
    struct raft_uv_connect *req;
    raft_id target_id; /* Outgoing: the id raft asked for. */
    char *target;      /* Outgoing: the address raft asked for. */
    char peer[128];    /* For log lines. */
    char host[256];    /* Rate-limit key: the address dialled, or "from <ip>". */
    enum tr_read rd;
    unsigned char *rd_buf;
    size_t need, got;
    raft_id peer_id;
    unsigned char nonce_c[TR_NONCE], nonce_s[TR_NONCE];
    unsigned char out_first[TR_CHALLENGE];
    unsigned char out_last[TR_MAC + TR_PREAMBLE + CK_TRANSPORT_ADDRESS_MAX];
    unsigned char in[TR_CHALLENGE + TR_MAC + TR_PREAMBLE + CK_TRANSPORT_ADDRESS_MAX + 1];
};

/* An outgoing connection's TCP handle, with what the peer-closed watch needs
 * (see out_watch_read). The handle comes first: raft frees the whole block
 * with raft_free(handle) once it owns it, and libuv hands our callbacks the
 * handle, whose data field is raft's. t is safe to use from the watch:
 * raft_uv closes every stream it dialled (UvSendClose, and uv_close stops
 * reading at once) before it closes the transport (uv.c, uvClose). */
struct tr_out_tcp {
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe; /* With TLS: the plaintext end of the pump. */
    } h;
    struct tr *t;
    raft_id peer_id;
};

/* A TLS pump under one connection (ck_tls.h). It lives until the pump has
 * closed the TCP connection, which can be long after the handshake (it is
 * the connection raft uses); c is cleared when the connection record goes. */
struct tr_pump {
    struct tr *t;
    struct tr_conn *c;
    char host[256], peer[128]; /* For the log line of a late TLS failure. */
};

/* ------------------------------------------------------------------------
 * Small helpers: integers, addresses, MACs, logging
 * ------------------------------------------------------------------------ */

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (unsigned char)(v >> (8 * i));
    }
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

static char *tr_strdup(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

/* Split "host:port" or "[v6]:port" into @host and @port (raft's default port
 * 8080 when there is none). Returns 0 or -1. */
static int tr_split(const char *address, char *host, size_t host_size, char *port, size_t port_size)
{
    const char *h = address, *hend, *p = NULL;
    if (address == NULL) {
        return -1;
    }
    if (address[0] == '[') {
        h = address + 1;
        hend = strchr(h, ']');
        if (hend == NULL || (hend[1] != '\0' && hend[1] != ':')) {
            return -1;
        }
        p = hend[1] == ':' ? hend + 2 : NULL;
    } else {
        hend = strrchr(address, ':');
        if (hend != NULL) {
            p = hend + 1;
        } else {
            hend = address + strlen(address);
        }
    }
    size_t hlen = (size_t)(hend - h);
    if (hlen == 0 || hlen >= host_size) {
        return -1;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    const char *ps = p != NULL ? p : "8080";
    size_t plen = strlen(ps);
    if (plen == 0 || plen >= port_size || strspn(ps, "0123456789") != plen || atoi(ps) > 65535) {
        return -1;
    }
    memcpy(port, ps, plen + 1);
    return 0;
}

/* A numeric host fills @ss without a lookup. Returns 0 or -1. */
static int tr_numeric(const char *host, const char *port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (uv_ip4_addr(host, atoi(port), (struct sockaddr_in *)ss) == 0) {
        return 0;
    }
    if (uv_ip6_addr(host, atoi(port), (struct sockaddr_in6 *)ss) == 0) {
        return 0;
    }
    return -1;
}

static void tr_sockaddr_name(const struct sockaddr *sa, char *out, size_t size)
{
    char ip[64] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET6) {
        uv_ip6_name((const struct sockaddr_in6 *)sa, ip, sizeof ip);
        port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
        snprintf(out, size, "[%s]:%d", ip, port);
    } else {
        uv_ip4_name((const struct sockaddr_in *)sa, ip, sizeof ip);
        port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
        snprintf(out, size, "%s:%d", ip, port);
    }
}

/* HMAC-SHA256(token, label | Nc | Ns | extra). Returns 0 or -1. */
static int tr_mac(const struct tr *t, const char *label, const struct tr_conn *c, const unsigned char *extra,
                  size_t extra_len, unsigned char out[TR_MAC])
{
    unsigned char buf[64 + 2 * TR_NONCE + TR_PREAMBLE + CK_TRANSPORT_ADDRESS_MAX];
    size_t llen = strlen(label), n = 0;
    if (llen > 64 || extra_len > TR_PREAMBLE + CK_TRANSPORT_ADDRESS_MAX) {
        return -1;
    }
    memcpy(buf, label, llen);
    n += llen;
    memcpy(buf + n, c->nonce_c, TR_NONCE);
    n += TR_NONCE;
    memcpy(buf + n, c->nonce_s, TR_NONCE);
    n += TR_NONCE;
    if (extra_len > 0) {
        memcpy(buf + n, extra, extra_len);
        n += extra_len;
    }
    unsigned int outlen = 0;
    if (HMAC(EVP_sha256(), t->token, (int)t->token_len, buf, n, out, &outlen) == NULL || outlen != TR_MAC) {
        return -1;
    }
    return 0;
}

static void tr_log_stderr(void *data, const char *line)
{
    struct timespec ts;
    struct tm tm;
    char stamp[32];
    (void)data;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %s\n", stamp, ts.tv_nsec / 1000000, line);
}

/* One WARN line about @host (a rate-limit key), at most one per TR_LOG_WINDOW_MS; the
 * next line that gets through says how many were held back. */
static void tr_warn(struct tr *t, const char *host, const char *fmt, const char *a, const char *b)
{
    uint64_t now = uv_now(t->loop);
    struct tr_log_slot *slot = NULL, *oldest = &t->slots[0];
    for (unsigned i = 0; i < TR_LOG_SLOTS; i++) {
        struct tr_log_slot *s = &t->slots[i];
        if (s->used && strcmp(s->host, host) == 0) {
            slot = s;
            break;
        }
        if (!s->used || (oldest->used && s->last_ms < oldest->last_ms)) {
            oldest = s;
        }
    }
    if (slot != NULL && now - slot->last_ms < TR_LOG_WINDOW_MS) {
        slot->suppressed++;
        return;
    }
    unsigned held = 0;
    if (slot == NULL) {
        slot = oldest;
        memset(slot, 0, sizeof *slot);
        slot->used = true;
        snprintf(slot->host, sizeof slot->host, "%s", host);
    } else {
        held = slot->suppressed;
    }
    slot->last_ms = now;
    slot->suppressed = 0;
    char msg[512], line[700], more[80] = "";
    snprintf(msg, sizeof msg, fmt, a, b);
    if (held > 0) {
        snprintf(more, sizeof more, " (%u more like it suppressed)", held);
    }
    snprintf(line, sizeof line, "WARN [%s] %s%s", t->log_context, msg, more);
    t->log(t->log_data, line);
}

/* ------------------------------------------------------------------------
 * Connection lifetime
 * ------------------------------------------------------------------------ */

static void tr_maybe_closed(struct tr *t)
{
    if (!t->closing || t->conns != NULL || t->n_pumps > 0 || (t->listener_inited && !t->listener_closed) ||
        t->close_cb == NULL) {
        return;
    }
    raft_uv_transport_close_cb cb = t->close_cb;
    t->close_cb = NULL;
    cb(t->iface);
}

static void conn_maybe_free(struct tr_conn *c)
{
    struct tr *t = c->t;
    if (c->refs > 0) {
        return;
    }
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        t->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    if (!c->outgoing) {
        t->n_incoming--;
    }
    struct raft_uv_connect *req = c->req;
    bool call = c->outgoing && !c->done && !c->quiet;
    int status = c->status;
    if (c->pump != NULL) {
        c->pump->c = NULL;
    }
    OPENSSL_cleanse(c->nonce_c, sizeof c->nonce_c);
    OPENSSL_cleanse(c->nonce_s, sizeof c->nonce_s);
    free(c->target);
    free(c);
    if (call) {
        req->cb(req, NULL, status);
    }
    tr_maybe_closed(t);
}

static void conn_on_handle_closed(uv_handle_t *h)
{
    struct tr_conn *c = h->data;
    c->refs--;
    conn_maybe_free(c);
}

static void conn_on_tcp_closed(uv_handle_t *h)
{
    struct tr_conn *c = h->data;
    raft_free(h);
    c->refs--;
    conn_maybe_free(c);
}

static void conn_close_timer(struct tr_conn *c)
{
    if (!c->timer_closing) {
        c->timer_closing = true;
        uv_close((uv_handle_t *)&c->timer, conn_on_handle_closed);
    }
}

/* Drop the connection. @why (may be NULL: nothing to log) is logged about
 * the peer, rate-limited. */
static void conn_fail(struct tr_conn *c, int status, const char *why)
{
    struct tr *t = c->t;
    if (c->failed || c->done) {
        return;
    }
    c->failed = true;
    c->status = status;
    if (why != NULL) {
        if (c->outgoing) {
            tr_warn(t, c->host, "raft handshake with %s refused: %s", c->peer, why);
        } else {
            tr_warn(t, c->host, "raft handshake from %s refused: %s", c->peer, why);
        }
    }
    if (c->gai_pending) {
        uv_cancel((uv_req_t *)&c->gai); /* Its callback still comes, with UV_ECANCELED or late. */
    }
    if (c->s != NULL && !uv_is_closing((uv_handle_t *)c->s)) {
        uv_close((uv_handle_t *)c->s, conn_on_tcp_closed);
    }
    conn_close_timer(c);
}

static void conn_auth_fail(struct tr_conn *c, const char *why)
{
    c->t->stats.auth_failures++;
    conn_fail(c, RAFT_NOCONNECTION, why);
}

static void conn_on_timeout(uv_timer_t *timer)
{
    struct tr_conn *c = timer->data;
    char why[96];
    /* An outgoing attempt that never reached its peer is an ordinary failed
     * connect (the peer is down): raft retries without a log line. */
    if (c->outgoing && !c->established) {
        conn_fail(c, RAFT_NOCONNECTION, NULL);
        return;
    }
    c->t->stats.timeouts++;
    snprintf(why, sizeof why, "no complete handshake within %u ms", c->t->timeout_ms);
    conn_fail(c, RAFT_NOCONNECTION, why);
}

static struct tr_conn *conn_new(struct tr *t, bool outgoing)
{
    struct tr_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return NULL;
    }
    c->t = t;
    c->outgoing = outgoing;
    c->next = t->conns;
    if (t->conns != NULL) {
        t->conns->prev = c;
    }
    t->conns = c;
    if (!outgoing) {
        t->n_incoming++;
    }
    uv_timer_init(t->loop, &c->timer);
    c->timer.data = c;
    c->refs = 1;
    uv_timer_start(&c->timer, conn_on_timeout, t->timeout_ms, 0);
    c->w_first.data = c;
    c->w_last.data = c;
    c->connect.data = c;
    c->gai.data = c;
    return c;
}

/* The stream leaves our hands: raft owns it (and raft_free's it) from now. */
static uv_stream_t *conn_release_stream(struct tr_conn *c)
{
    uv_stream_t *s = c->s;
    uv_read_stop(s);
    s->data = NULL;
    c->s = NULL;
    c->refs--;
    c->done = true;
    conn_close_timer(c);
    return s;
}

static void conn_accept(struct tr_conn *c)
{
    struct tr *t = c->t;
    uv_stream_t *s = conn_release_stream(c);
    t->stats.accepted++;
    t->accept_cb(t->iface, c->peer_id, (const char *)c->rd_buf, s);
}

/* raft 0.15 only ever writes to the connections it dials (uv_send.c never
 * reads them), so it learns that the peer is gone only when a write fails.
 * A peer that crashed and restarted has closed the old connection (its
 * kernel sent FIN), yet the first write after that still succeeds locally
 * and is lost: the peer answers it with RST. Measured in
 * tests/bench/cluster_failover.py: the first vote request or vote answer
 * to a node restarted in an earlier round vanished this way, and the
 * election then waited a whole extra election timeout (843 ms rounds).
 *
 * So the transport keeps reading the connection after raft owns it. EOF or
 * an error there means the peer closed it: the watch shuts our side down
 * for writing, so that raft's next write fails at once (EPIPE, reported
 * through raft's write callback), raft closes the stream and dials again,
 * and the node re-sends what failed (ck_node.c, node_io_send); the owner
 * hears of it too (peer_closed: a follower whose leader hung up elects a new
 * one at once). The watch uses only the handle's block (struct tr_out_tcp),
 * so raft may close and free it at any time: closing a handle stops its
 * reads.
 *
 * libuv must not do the reading: when its read fails (ECONNRESET, which is
 * what a peer killed with unread data sends), it marks the stream not
 * writable, and raft's next uv_write then fails synchronously (UV_EPIPE);
 * raft_uv reports that to raft as a failed send without dropping the
 * stream, and a failed send inside raft's receive path stops raft ("raft
 * stopped after an error", seen in tests/cluster/test_kv.py). So the alloc
 * callback offers no buffer, which makes libuv only report readiness
 * (UV_ENOBUFS, per uv_read_start's documentation), and the watch reads the
 * socket itself: 0 (EOF) or an error means the peer is gone; bytes (none
 * should come) are dropped. */
static void out_watch_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    buf->base = NULL;
    buf->len = 0;
}

static void out_watch_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    uv_os_fd_t fd;
    if (nread != UV_ENOBUFS || uv_fileno((uv_handle_t *)s, &fd) != 0) {
        if (nread < 0 && nread != UV_ENOBUFS) {
            uv_read_stop(s); /* Not ours to judge: leave the stream to raft. */
        }
        return;
    }
    char drop[64];
    ssize_t n = recv(fd, drop, sizeof drop, MSG_DONTWAIT);
    if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))) {
        return;
    }
    uv_read_stop(s);
    shutdown(fd, SHUT_WR);
    struct tr_out_tcp *o = (struct tr_out_tcp *)s;
    o->t->stats.peer_closed++;
    if (o->t->peer_closed != NULL && !o->t->closing) {
        o->t->peer_closed(o->t->peer_closed_data, o->peer_id);
    }
}

static void conn_connected(struct tr_conn *c)
{
    uv_stream_t *s = conn_release_stream(c);
    c->t->stats.connected++;
    struct tr_out_tcp *o = (struct tr_out_tcp *)s;
    o->t = c->t;
    o->peer_id = c->target_id;
    uv_read_start(s, out_watch_alloc, out_watch_read); /* Best effort: without it, raft works as before. */
    c->req->cb(c->req, s, 0);
}

/* ------------------------------------------------------------------------
 * TLS under a connection
 *
 * With TLS on, each connection gets a pump (ck_tls.h) as soon as the TCP
 * connection is up: the pump owns the TCP handle and the rest of this file
 * (the token handshake, raft's preamble, then raft itself) reads and writes
 * the plaintext end of a socketpair, as it would the TCP handle. The pump
 * holds what is written before the TLS handshake completes, so nothing here
 * waits for it; a TLS failure during the transport's own handshake fails
 * the connection with OpenSSL's reason, and the handshake timer covers the
 * TLS handshake too. A client checks the server's certificate against the
 * host part of the raft address it dials (a name or an IP literal); a
 * server with verify_peers requires a client certificate from its CA.
 * ------------------------------------------------------------------------ */

static void tr_pump_error(void *data, const char *msg)
{
    struct tr_pump *p = data;
    struct tr *t = p->t;
    t->stats.tls_failures++; /* @msg says "TLS handshake failed: <why>" or the like. */
    if (p->c != NULL && !p->c->failed && !p->c->done) {
        conn_fail(p->c, RAFT_NOCONNECTION, msg);
        return;
    }
    tr_warn(t, p->host, "raft connection with %s dropped: %s", p->peer, msg);
}

/* Without a token, nothing the client reads proves the TLS handshake done:
 * raft gets an outgoing stream only once it is, so that a server whose
 * certificate is refused never counts as connected (raft's writes would
 * only have waited in the pump, never sent). */
static void tr_pump_handshake(void *data)
{
    struct tr_pump *p = data;
    struct tr_conn *c = p->c;
    if (c == NULL) {
        return;
    }
    c->tls_ready = true;
    if (c->last_written && !c->failed && !c->done) {
        conn_connected(c);
    }
}

static void tr_pump_closed(void *data)
{
    struct tr_pump *p = data;
    struct tr *t = p->t;
    if (p->c != NULL) {
        p->c->pump = NULL;
    }
    free(p);
    t->n_pumps--;
    tr_maybe_closed(t);
}

static void tr_pump_free_tcp(uv_handle_t *h)
{
    raft_free(h);
}

/* Put a pump under @c's TCP handle; c->s becomes the plaintext pipe.
 * Returns 0, or a negative code with c->s still the TCP handle. */
static int conn_start_tls(struct tr_conn *c, SSL_CTX *ctx, enum ck_tls_role role, const char *peer)
{
    struct tr *t = c->t;
    struct tr_out_tcp *o = raft_malloc(sizeof *o);
    struct tr_pump *p = calloc(1, sizeof *p);
    if (o == NULL || p == NULL) {
        raft_free(o);
        free(p);
        return CK_ENOMEM;
    }
    p->t = t;
    p->c = c;
    snprintf(p->host, sizeof p->host, "%s", c->host);
    snprintf(p->peer, sizeof p->peer, "%s", c->peer);
    struct ck_tls_pump_cbs cbs = {.on_error = tr_pump_error,
                                  .on_handshake = tr_pump_handshake,
                                  .on_close = tr_pump_closed,
                                  .free_tcp = tr_pump_free_tcp,
                                  .data = p};
    int rv = ck_tls_pump_start(t->loop, (uv_tcp_t *)c->s, &o->h.pipe, ctx, role, peer, &cbs);
    if (rv != 0) {
        raft_free(o);
        free(p);
        return rv;
    }
    t->n_pumps++;
    c->pump = p;
    c->s = (uv_stream_t *)&o->h.pipe; /* The TCP handle's ref on c passes to the pipe. */
    c->s->data = c;
    return 0;
}

/* ------------------------------------------------------------------------
 * Reading and writing handshake messages
 * ------------------------------------------------------------------------ */

static void conn_on_write(uv_write_t *w, int status)
{
    struct tr_conn *c = w->data;
    c->writes_pending--;
    if (c->failed || c->done) {
        return;
    }
    if (status != 0) {
        conn_fail(c, RAFT_NOCONNECTION, NULL);
        return;
    }
    if (c->outgoing && w == &c->w_last) {
        c->last_written = true;
        if (c->pump == NULL || c->tls_ready) {
            conn_connected(c);
        }
    } else if (!c->outgoing && c->verified && c->writes_pending == 0) {
        conn_accept(c);
    }
}

static int conn_write(struct tr_conn *c, uv_write_t *w, unsigned char *buf, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
    int rv = uv_write(w, c->s, &b, 1, conn_on_write);
    if (rv == 0) {
        c->writes_pending++;
    }
    return rv;
}

static void conn_expect(struct tr_conn *c, enum tr_read what, unsigned char *buf, size_t len)
{
    c->rd = what;
    c->rd_buf = buf;
    c->need = len;
    c->got = 0;
}

static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct tr_conn *c = h->data;
    (void)suggested;
    /* Exactly what the current message still lacks: never a byte of raft's. */
    buf->base = (char *)c->rd_buf + c->got;
    buf->len = c->need - c->got;
}

static void conn_process(struct tr_conn *c);

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct tr_conn *c = s->data;
    (void)buf;
    if (c->failed || c->done || nread == 0) {
        return;
    }
    if (nread < 0) {
        c->t->stats.auth_failures++;
        conn_fail(c, RAFT_NOCONNECTION,
                  nread == UV_EOF ? "the peer closed the connection during the handshake (a different token, or none?)"
                                  : "read error during the handshake");
        return;
    }
    c->got += (size_t)nread;
    if (c->got == c->need) {
        conn_process(c);
    }
}

/* The client's last message: [Mc] | preamble | address. */
static void conn_send_preamble(struct tr_conn *c)
{
    struct tr *t = c->t;
    size_t off = t->token != NULL ? TR_MAC : 0;
    size_t alen = (strlen(t->address) + 1 + 7) & ~(size_t)7;
    unsigned char *p = c->out_last + off;
    memset(p, 0, TR_PREAMBLE + alen);
    put64(p, TR_PROTOCOL);
    put64(p + 8, t->id);
    put64(p + 16, alen);
    memcpy(p + TR_PREAMBLE, t->address, strlen(t->address));
    if (t->token != NULL && tr_mac(t, tr_label_client, c, p, TR_PREAMBLE + alen, c->out_last) != 0) {
        conn_fail(c, RAFT_NOCONNECTION, "cannot compute the handshake MAC");
        return;
    }
    if (conn_write(c, &c->w_last, c->out_last, off + TR_PREAMBLE + alen) != 0) {
        conn_fail(c, RAFT_NOCONNECTION, NULL);
    }
}

static void conn_process_server(struct tr_conn *c)
{
    struct tr *t = c->t;
    size_t off = t->token != NULL ? TR_MAC : 0;
    unsigned char mac[TR_MAC];

    switch (c->rd) {
    case RD_HELLO:
        if (memcmp(c->in, tr_magic_hello, TR_MAGIC) != 0) {
            conn_auth_fail(c, get64(c->in) == TR_PROTOCOL
                                  ? "the peer sent raft's plain handshake: it has no cluster token"
                                  : "not a clusterkit raft handshake");
            return;
        }
        memcpy(c->nonce_c, c->in + TR_MAGIC, TR_NONCE);
        if (RAND_bytes(c->nonce_s, TR_NONCE) != 1 || tr_mac(t, tr_label_server, c, NULL, 0, mac) != 0) {
            conn_fail(c, RAFT_NOCONNECTION, "no randomness or MAC for the handshake");
            return;
        }
        memcpy(c->out_first, tr_magic_challenge, TR_MAGIC);
        memcpy(c->out_first + TR_MAGIC, c->nonce_s, TR_NONCE);
        memcpy(c->out_first + TR_MAGIC + TR_NONCE, mac, TR_MAC);
        if (conn_write(c, &c->w_first, c->out_first, TR_CHALLENGE) != 0) {
            conn_fail(c, RAFT_NOCONNECTION, NULL);
            return;
        }
        conn_expect(c, RD_PREAMBLE, c->in, off + TR_PREAMBLE);
        return;
    case RD_PREAMBLE: {
        const unsigned char *p = c->in + off;
        if (t->token == NULL && memcmp(p, tr_magic_hello, TR_MAGIC) == 0) {
            conn_auth_fail(c, "the peer sent a token handshake, but this node has no cluster token");
            return;
        }
        uint64_t alen = get64(p + 16);
        if (get64(p) != TR_PROTOCOL || alen == 0 || alen > CK_TRANSPORT_ADDRESS_MAX) {
            conn_auth_fail(c, "malformed raft handshake");
            return;
        }
        c->peer_id = get64(p + 8);
        conn_expect(c, RD_ADDRESS, c->in + off + TR_PREAMBLE, (size_t)alen);
        return;
    }
    case RD_ADDRESS:
        if (t->token != NULL) {
            if (tr_mac(t, tr_label_client, c, c->in + off, TR_PREAMBLE + c->need, mac) != 0 ||
                CRYPTO_memcmp(mac, c->in, TR_MAC) != 0) {
                conn_auth_fail(c, "wrong cluster token");
                return;
            }
        }
        if (memchr(c->rd_buf, '\0', c->need) == NULL || c->peer_id == 0) {
            conn_auth_fail(c, "malformed raft handshake");
            return;
        }
        uv_read_stop(c->s);
        c->verified = true;
        if (c->writes_pending == 0) {
            conn_accept(c);
        }
        return;
    default:
        return;
    }
}

static void conn_process(struct tr_conn *c)
{
    struct tr *t = c->t;
    unsigned char mac[TR_MAC];
    if (!c->outgoing) {
        conn_process_server(c);
        return;
    }
    /* Client: the CHALLENGE. */
    if (memcmp(c->in, tr_magic_challenge, TR_MAGIC) != 0) {
        conn_auth_fail(c, "the peer answered with something other than a clusterkit challenge");
        return;
    }
    memcpy(c->nonce_s, c->in + TR_MAGIC, TR_NONCE);
    if (tr_mac(t, tr_label_server, c, NULL, 0, mac) != 0 ||
        CRYPTO_memcmp(mac, c->in + TR_MAGIC + TR_NONCE, TR_MAC) != 0) {
        conn_auth_fail(c, "the peer does not know the cluster token");
        return;
    }
    uv_read_stop(c->s);
    c->rd = RD_NONE;
    conn_send_preamble(c);
}

/* ------------------------------------------------------------------------
 * Outgoing connections
 * ------------------------------------------------------------------------ */

static void conn_dial_next(struct tr_conn *c);

static void conn_on_retry_closed(uv_handle_t *h)
{
    struct tr_conn *c = h->data;
    raft_free(h);
    c->refs--;
    if (c->failed) {
        conn_maybe_free(c);
        return;
    }
    conn_dial_next(c);
}

static void conn_retry(struct tr_conn *c)
{
    uv_stream_t *tcp = c->s;
    c->s = NULL;
    uv_close((uv_handle_t *)tcp, conn_on_retry_closed);
}

static void conn_on_connect(uv_connect_t *req, int status)
{
    struct tr_conn *c = req->data;
    struct tr *t = c->t;
    if (c->failed || c->done) {
        return;
    }
    if (status != 0) {
        if (c->next_addr < c->n_addrs) {
            conn_retry(c);
        } else {
            conn_fail(c, RAFT_NOCONNECTION, NULL);
        }
        return;
    }
    c->established = true;
    if (t->tls_client != NULL) {
        char host[256], port[16];
        if (tr_split(c->target, host, sizeof host, port, sizeof port) != 0 ||
            conn_start_tls(c, t->tls_client, CK_TLS_CLIENT, host) != 0) {
            conn_fail(c, RAFT_NOCONNECTION, "cannot start TLS");
            return;
        }
    }
    if (t->token == NULL) {
        conn_send_preamble(c);
        return;
    }
    if (RAND_bytes(c->nonce_c, TR_NONCE) != 1) {
        conn_fail(c, RAFT_NOCONNECTION, "no randomness for the handshake");
        return;
    }
    memcpy(c->out_first, tr_magic_hello, TR_MAGIC);
    memcpy(c->out_first + TR_MAGIC, c->nonce_c, TR_NONCE);
    conn_expect(c, RD_CHALLENGE, c->in, TR_CHALLENGE);
    if (conn_write(c, &c->w_first, c->out_first, TR_HELLO) != 0 || uv_read_start(c->s, conn_alloc, conn_on_read) != 0) {
        conn_fail(c, RAFT_NOCONNECTION, NULL);
    }
}

static void conn_dial_next(struct tr_conn *c)
{
    struct tr *t = c->t;
    if (c->next_addr >= c->n_addrs) {
        conn_fail(c, RAFT_NOCONNECTION, NULL);
        return;
    }
    const struct sockaddr *sa = (const struct sockaddr *)&c->addrs[c->next_addr++];
    char name[96];
    tr_sockaddr_name(sa, name, sizeof name);
    if (strcmp(name, c->target) == 0) {
        snprintf(c->peer, sizeof c->peer, "%s", c->target);
    } else {
        snprintf(c->peer, sizeof c->peer, "%s (%s)", c->target, name);
    }
    struct tr_out_tcp *o = raft_malloc(sizeof *o); /* Its first member (see out_watch_read). */
    if (o == NULL) {
        conn_fail(c, RAFT_NOMEM, NULL);
        return;
    }
    uv_tcp_init(t->loop, &o->h.tcp);
    o->h.tcp.data = c;
    c->s = (uv_stream_t *)&o->h.tcp;
    c->refs++;
    if (uv_tcp_connect(&c->connect, &o->h.tcp, sa, conn_on_connect) != 0) {
        if (c->next_addr < c->n_addrs) {
            conn_retry(c);
        } else {
            conn_fail(c, RAFT_NOCONNECTION, NULL);
        }
    }
}

static void conn_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct tr_conn *c = req->data;
    c->gai_pending = false;
    c->refs--;
    if (c->failed) {
        uv_freeaddrinfo(res);
        conn_maybe_free(c);
        return;
    }
    if (status != 0) {
        tr_warn(c->t, c->host, "raft: cannot resolve %s: %s", c->target, uv_strerror(status));
        conn_fail(c, RAFT_NOCONNECTION, NULL);
        return;
    }
    for (struct addrinfo *ai = res; ai != NULL && c->n_addrs < TR_MAX_ADDRS; ai = ai->ai_next) {
        if ((ai->ai_family == AF_INET || ai->ai_family == AF_INET6) && ai->ai_addrlen <= sizeof c->addrs[0]) {
            memcpy(&c->addrs[c->n_addrs++], ai->ai_addr, ai->ai_addrlen);
        }
    }
    uv_freeaddrinfo(res);
    conn_dial_next(c);
}

static int tr_connect(struct raft_uv_transport *iface, struct raft_uv_connect *req, raft_id id, const char *address,
                      raft_uv_connect_cb cb)
{
    struct tr *t = iface->impl;
    char host[256], port[16];
    if (t->closing) {
        return RAFT_CANCELED;
    }
    if (tr_split(address, host, sizeof host, port, sizeof port) != 0) {
        snprintf(iface->errmsg, sizeof iface->errmsg, "bad raft address: %s", address ? address : "(null)");
        return RAFT_NOCONNECTION;
    }
    struct tr_conn *c = conn_new(t, true);
    if (c == NULL || (c->target = strdup(address)) == NULL) {
        if (c != NULL) {
            c->quiet = true;
            conn_fail(c, RAFT_NOMEM, NULL);
        }
        snprintf(iface->errmsg, sizeof iface->errmsg, "out of memory");
        return RAFT_NOMEM;
    }
    req->cb = cb;
    c->req = req;
    c->target_id = id;
    snprintf(c->host, sizeof c->host, "%s", address); /* One peer: its address is stable. */
    snprintf(c->peer, sizeof c->peer, "%s", address);
    if (tr_numeric(host, port, &c->addrs[0]) == 0) {
        c->n_addrs = 1;
        conn_dial_next(c);
        return 0;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rv = uv_getaddrinfo(t->loop, &c->gai, conn_on_resolved, host, port, &hints);
    if (rv != 0) {
        c->quiet = true; /* A failed call never calls back. */
        conn_fail(c, RAFT_NOCONNECTION, NULL);
        snprintf(iface->errmsg, sizeof iface->errmsg, "resolve %s: %s", address, uv_strerror(rv));
        return RAFT_NOCONNECTION;
    }
    c->gai_pending = true;
    c->refs++;
    return 0;
}

/* ------------------------------------------------------------------------
 * Listening
 * ------------------------------------------------------------------------ */

static void tr_on_overflow_closed(uv_handle_t *h)
{
    raft_free(h);
}

static void tr_on_connection(uv_stream_t *server, int status)
{
    struct tr *t = server->data;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (status != 0 || t->closing) {
        return;
    }
    uv_tcp_t *tcp = raft_malloc(sizeof *tcp);
    if (tcp == NULL) {
        return;
    }
    uv_tcp_init(t->loop, tcp);
    if (uv_accept(server, (uv_stream_t *)tcp) != 0) {
        uv_close((uv_handle_t *)tcp, tr_on_overflow_closed);
        return;
    }
    char peer[96] = "?", host[64] = "?";
    if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &len) == 0) {
        tr_sockaddr_name((struct sockaddr *)&ss, peer, sizeof peer);
        if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof host);
        } else {
            uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof host);
        }
    }
    struct tr_conn *c = t->n_incoming < t->max_pending ? conn_new(t, false) : NULL;
    if (c == NULL) {
        t->stats.overflows++;
        tr_warn(t, host, "raft: dropped a connection from %s: %s", peer,
                t->n_incoming >= t->max_pending ? "too many handshakes at once" : "out of memory");
        uv_close((uv_handle_t *)tcp, tr_on_overflow_closed);
        return;
    }
    c->s = (uv_stream_t *)tcp;
    tcp->data = c;
    c->refs++;
    c->established = true;
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    snprintf(c->host, sizeof c->host, "from %s", host); /* The source port changes on every try. */
    if (t->tls_server != NULL && conn_start_tls(c, t->tls_server, CK_TLS_SERVER, NULL) != 0) {
        conn_fail(c, RAFT_NOCONNECTION, "cannot start TLS");
        return;
    }
    if (t->token != NULL) {
        conn_expect(c, RD_HELLO, c->in, TR_HELLO);
    } else {
        conn_expect(c, RD_PREAMBLE, c->in, TR_PREAMBLE);
    }
    if (uv_read_start(c->s, conn_alloc, conn_on_read) != 0) {
        conn_fail(c, RAFT_NOCONNECTION, NULL);
    }
}

static int tr_listen(struct raft_uv_transport *iface, raft_uv_accept_cb cb)
{
    struct tr *t = iface->impl;
    const char *addr = t->bind_address != NULL ? t->bind_address : t->address;
    char host[256], port[16];
    struct sockaddr_storage ss;
    int rv;

    t->accept_cb = cb;
    if (!t->listener_inited) {
        snprintf(iface->errmsg, sizeof iface->errmsg, "raft transport: listen before init");
        return RAFT_INVALID;
    }
    if (tr_split(addr, host, sizeof host, port, sizeof port) != 0) {
        snprintf(iface->errmsg, sizeof iface->errmsg, "bad raft address %s (host:port expected)", addr);
        return RAFT_INVALID;
    }
    if (tr_numeric(host, port, &ss) != 0) {
        /* A hostname: resolve it now, synchronously (no callback), once. */
        uv_getaddrinfo_t req;
        struct addrinfo hints;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        rv = uv_getaddrinfo(t->loop, &req, NULL, host, port, &hints);
        if (rv != 0) {
            snprintf(iface->errmsg, sizeof iface->errmsg, "cannot resolve %s: %s", addr, uv_strerror(rv));
            return RAFT_IOERR;
        }
        struct addrinfo *ai = req.addrinfo;
        while (ai != NULL && ai->ai_family != AF_INET && ai->ai_family != AF_INET6) {
            ai = ai->ai_next;
        }
        if (ai == NULL || ai->ai_addrlen > sizeof ss) {
            uv_freeaddrinfo(req.addrinfo);
            snprintf(iface->errmsg, sizeof iface->errmsg, "cannot resolve %s: no IP address", addr);
            return RAFT_IOERR;
        }
        memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
        uv_freeaddrinfo(req.addrinfo);
    }
    char name[96];
    tr_sockaddr_name((struct sockaddr *)&ss, name, sizeof name);
    if ((rv = uv_tcp_bind(&t->listener, (struct sockaddr *)&ss, 0)) == 0) {
        rv = uv_listen((uv_stream_t *)&t->listener, 128, tr_on_connection);
    }
    if (rv != 0) {
        snprintf(iface->errmsg, sizeof iface->errmsg, "listen on %s%s%s%s: %s", addr, strcmp(name, addr) ? " (" : "",
                 strcmp(name, addr) ? name : "", strcmp(name, addr) ? ")" : "", uv_strerror(rv));
        return RAFT_IOERR;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * The interface
 * ------------------------------------------------------------------------ */

static int tr_init(struct raft_uv_transport *iface, raft_id id, const char *address)
{
    struct tr *t = iface->impl;
    char host[256], port[16];
    if (tr_split(address, host, sizeof host, port, sizeof port) != 0) {
        snprintf(iface->errmsg, sizeof iface->errmsg, "bad raft address %s (host:port expected)", address);
        return RAFT_INVALID;
    }
    free(t->address);
    if ((t->address = strdup(address)) == NULL) {
        return RAFT_NOMEM;
    }
    if (strlen(address) + 1 > CK_TRANSPORT_ADDRESS_MAX) {
        snprintf(iface->errmsg, sizeof iface->errmsg, "raft address too long");
        return RAFT_INVALID;
    }
    t->id = id;
    if (!t->listener_inited) {
        uv_tcp_init(t->loop, &t->listener);
        t->listener.data = t;
        t->listener_inited = true;
    }
    return 0;
}

static void tr_on_listener_closed(uv_handle_t *h)
{
    struct tr *t = h->data;
    t->listener_closed = true;
    tr_maybe_closed(t);
}

static void tr_close(struct raft_uv_transport *iface, raft_uv_transport_close_cb cb)
{
    struct tr *t = iface->impl;
    t->closing = true;
    t->close_cb = cb;
    for (struct tr_conn *c = t->conns; c != NULL; c = c->next) {
        conn_fail(c, RAFT_CANCELED, NULL);
    }
    if (t->listener_inited) {
        uv_close((uv_handle_t *)&t->listener, tr_on_listener_closed);
        return;
    }
    tr_maybe_closed(t);
}

int ck_transport_init(struct raft_uv_transport *iface, uv_loop_t *loop, const struct ck_transport_options *o)
{
    char host[256], port[16];
    memset(iface, 0, sizeof *iface);
    struct tr *t = calloc(1, sizeof *t);
    if (t == NULL) {
        snprintf(iface->errmsg, sizeof iface->errmsg, "out of memory");
        return RAFT_NOMEM;
    }
    t->iface = iface;
    iface->impl = t;
    t->loop = loop;
    t->timeout_ms = o->handshake_timeout_ms ? o->handshake_timeout_ms : 3000;
    t->max_pending = o->max_pending ? o->max_pending : 64;
    t->log = o->log ? o->log : tr_log_stderr;
    t->log_data = o->log_data;
    ck_ignore_sigpipe(); /* raft writes to the connections we hand it (ck_common.h). */
    t->peer_closed = o->peer_closed;
    t->peer_closed_data = o->peer_closed_data;
    ck_transport_set_tls(iface, o->tls_server, o->tls_client);
    t->log_context = strdup(o->log_context ? o->log_context : "raft");
    t->bind_address = tr_strdup(o->bind_address);
    if (o->token != NULL && o->token[0] != '\0') {
        t->token_len = strlen(o->token);
        t->token = malloc(t->token_len);
        if (t->token != NULL) {
            memcpy(t->token, o->token, t->token_len);
        }
    }
    if (t->log_context == NULL || (o->bind_address && !t->bind_address) || (t->token_len && !t->token)) {
        ck_transport_close(iface);
        snprintf(iface->errmsg, sizeof iface->errmsg, "out of memory");
        return RAFT_NOMEM;
    }
    if (o->bind_address != NULL && tr_split(o->bind_address, host, sizeof host, port, sizeof port) != 0) {
        ck_transport_close(iface);
        snprintf(iface->errmsg, sizeof iface->errmsg, "bad bind address %s (host:port expected)", o->bind_address);
        return RAFT_INVALID;
    }
    iface->init = tr_init;
    iface->listen = tr_listen;
    iface->connect = tr_connect;
    iface->close = tr_close;
    return 0;
}

void ck_transport_close(struct raft_uv_transport *iface)
{
    struct tr *t = iface->impl;
    if (t == NULL) {
        return;
    }
    if (t->token != NULL) {
        OPENSSL_cleanse(t->token, t->token_len);
        free(t->token);
    }
    SSL_CTX_free(t->tls_server);
    SSL_CTX_free(t->tls_client);
    free(t->address);
    free(t->bind_address);
    free(t->log_context);
    free(t);
    iface->impl = NULL;
}

void ck_transport_set_tls(struct raft_uv_transport *iface, SSL_CTX *server, SSL_CTX *client)
{
    struct tr *t = iface->impl;
    if (t == NULL) {
        return; /* Closed. */
    }
    if (server != NULL) {
        SSL_CTX_up_ref(server);
    }
    if (client != NULL) {
        SSL_CTX_up_ref(client);
    }
    SSL_CTX_free(t->tls_server);
    SSL_CTX_free(t->tls_client);
    t->tls_server = server;
    t->tls_client = client;
}

int ck_transport_port(const struct raft_uv_transport *iface)
{
    const struct tr *t = iface->impl;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (t == NULL || !t->listener_inited) {
        return UV_EINVAL;
    }
    int rv = uv_tcp_getsockname(&t->listener, (struct sockaddr *)&ss, &len);
    if (rv != 0) {
        return rv;
    }
    return ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                    : ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

void ck_transport_stats(const struct raft_uv_transport *iface, struct ck_transport_stats *out)
{
    const struct tr *t = iface->impl;
    if (t == NULL) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = t->stats;
}
