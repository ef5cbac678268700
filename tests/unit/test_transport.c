/*
 * Tests for the raft transport (ck_transport.h) on a real libuv loop over
 * 127.0.0.1 with ports from port 0. Each peer is raft's own libuv I/O
 * (raft_uv_init) on top of a transport, so messages are real raft messages
 * sent and received by raft's code; raw libuv clients play silent or
 * malformed peers. A test runs the loop until its condition holds (bounded by
 * a guard timer), closes everything, asserts on counters and checks that the
 * loop closes cleanly.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "ck_tls.h"
#include "ck_transport.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GUARD_MS 10000
#define POLL_MS 2

/* ------------------------------------------------------------------------ */
/* Harness                                                                   */
/* ------------------------------------------------------------------------ */

struct peer {
    struct raft_uv_transport tr;
    struct raft_io io;
    bool raft_tcp; /* raft's own raft_uv_tcp instead of ck_transport. */
    bool started, closing, closed;
    int n_peer_closed;
    raft_id peer_closed_id;
    char dir[64];
    raft_id id;
    int port;
    int n_recv;
    int last_type;
    raft_id last_from;
    struct raft_io_send send_req;
    int n_sent, send_status;
    char log[4096];
    int n_logs;
    struct ck_transport_stats final; /* Taken just before the transport is freed. */
};

struct raw {
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    unsigned char out[64];
    size_t out_len;
    char in[256];
    bool connected, eof, closed;
};

struct tctx {
    uv_loop_t loop;
    uv_timer_t guard, poll;
    struct peer *peers[2];
    struct raw *raws[2];
    bool (*cond)(struct tctx *t);
    bool timed_out, done;
};

static void peer_log(void *data, const char *line)
{
    struct peer *p = data;
    size_t len = strlen(p->log);
    snprintf(p->log + len, sizeof p->log - len, "%s\n", line);
    p->n_logs++;
}

static void peer_on_peer_closed(void *data, raft_id id)
{
    struct peer *p = data;
    p->n_peer_closed++;
    p->peer_closed_id = id;
}

static void peer_on_recv(struct raft_io *io, struct raft_message *m)
{
    struct peer *p = io->data;
    p->n_recv++;
    p->last_type = m->type;
    p->last_from = m->server_id;
}

/* raft_uv_tcp keeps its listener to itself: find the listening TCP handle
 * that is not one of ours and ask it for its port. */
static void find_listener(uv_handle_t *h, void *arg)
{
    int *port = arg;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (h->type == UV_TCP && uv_is_active(h) && h->data != NULL &&
        uv_tcp_getsockname((uv_tcp_t *)h, (struct sockaddr *)&ss, &len) == 0 && ss.ss_family == AF_INET) {
        int p = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        if (p != 0 && *port == 0) {
            *port = p;
        }
    }
}

/* TLS contexts for the next peer_start (NULL: plain TCP); see tls_peers. */
static SSL_CTX *next_tls_server, *next_tls_client;

/* Start a peer listening on @addr ("127.0.0.1:0" or a hostname). */
static int peer_start(struct tctx *t, struct peer *p, raft_id id, const char *addr, const char *token,
                      unsigned timeout_ms, bool raft_tcp)
{
    int rv;
    memset(p, 0, sizeof *p);
    p->id = id;
    p->raft_tcp = raft_tcp;
    snprintf(p->dir, sizeof p->dir, "/tmp/ck-test-transport-XXXXXX");
    assert_non_null(mkdtemp(p->dir));
    if (raft_tcp) {
        assert_int_equal(raft_uv_tcp_init(&p->tr, &t->loop), 0);
    } else {
        struct ck_transport_options o = {
            .token = token,
            .handshake_timeout_ms = timeout_ms,
            .log = peer_log,
            .log_data = p,
            .peer_closed = peer_on_peer_closed,
            .peer_closed_data = p,
            .tls_server = next_tls_server,
            .tls_client = next_tls_client,
        };
        assert_int_equal(ck_transport_init(&p->tr, &t->loop, &o), 0);
    }
    assert_int_equal(raft_uv_init(&p->io, &t->loop, p->dir, &p->tr), 0);
    raft_uv_set_connect_retry_delay(&p->io, 20);
    p->io.data = p;
    assert_int_equal(p->io.init(&p->io, id, addr), 0);
    p->started = true;
    rv = p->io.start(&p->io, 1000, NULL, peer_on_recv);
    if (rv != 0) {
        return rv;
    }
    if (raft_tcp) {
        uv_walk(&t->loop, find_listener, &p->port);
    } else {
        p->port = ck_transport_port(&p->tr);
    }
    assert_true(p->port > 0);
    return 0;
}

static void peer_on_sent(struct raft_io_send *req, int status)
{
    struct peer *p = req->data;
    p->n_sent++;
    p->send_status = status;
}

/* Queue a RequestVote from @p to server @to_id at @to_addr. */
static void peer_send_vote(struct peer *p, raft_id to_id, const char *to_addr)
{
    struct raft_message m;
    memset(&m, 0, sizeof m);
    m.type = RAFT_IO_REQUEST_VOTE;
    m.server_id = to_id;
    m.server_address = to_addr;
    m.request_vote.term = 7;
    m.request_vote.candidate_id = p->id;
    m.request_vote.last_log_index = 1;
    m.request_vote.last_log_term = 1;
    p->send_req.data = p;
    assert_int_equal(p->io.send(&p->io, &p->send_req, &m, peer_on_sent), 0);
}

static void peer_on_io_closed(struct raft_io *io)
{
    struct peer *p = io->data;
    raft_uv_close(&p->io);
    if (p->raft_tcp) {
        raft_uv_tcp_close(&p->tr);
    } else {
        ck_transport_stats(&p->tr, &p->final);
        ck_transport_close(&p->tr);
    }
    p->closed = true;
}

static void peer_stats(struct peer *p, struct ck_transport_stats *s)
{
    if (p->closed) {
        *s = p->final;
    } else {
        ck_transport_stats(&p->tr, s);
    }
}

static void raw_on_closed(uv_handle_t *h)
{
    struct raw *r = h->data;
    r->closed = true;
}

static void raw_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct raw *r = h->data;
    (void)suggested;
    buf->base = r->in;
    buf->len = sizeof r->in;
}

static void raw_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct raw *r = s->data;
    (void)buf;
    if (nread < 0) {
        r->eof = true;
        uv_close((uv_handle_t *)&r->tcp, raw_on_closed);
    }
}

static void raw_on_write(uv_write_t *w, int status)
{
    (void)w;
    (void)status;
}

static void raw_on_connect(uv_connect_t *req, int status)
{
    struct raw *r = req->data;
    if (status != 0) {
        r->eof = true;
        uv_close((uv_handle_t *)&r->tcp, raw_on_closed);
        return;
    }
    r->connected = true;
    if (r->out_len > 0) {
        uv_buf_t b = uv_buf_init((char *)r->out, (unsigned)r->out_len);
        uv_write(&r->write, (uv_stream_t *)&r->tcp, &b, 1, raw_on_write);
    }
    uv_read_start((uv_stream_t *)&r->tcp, raw_alloc, raw_on_read);
}

/* A raw client that connects to 127.0.0.1:@port and sends @out (or nothing). */
static void raw_start(struct tctx *t, struct raw *r, int port, const void *out, size_t len)
{
    struct sockaddr_in sa;
    memset(r, 0, sizeof *r);
    if (len > 0) {
        memcpy(r->out, out, len);
    }
    r->out_len = len;
    uv_tcp_init(&t->loop, &r->tcp);
    r->tcp.data = r;
    r->connect.data = r;
    assert_int_equal(uv_ip4_addr("127.0.0.1", port, &sa), 0);
    assert_int_equal(uv_tcp_connect(&r->connect, &r->tcp, (struct sockaddr *)&sa, raw_on_connect), 0);
}

static void tctx_stop(struct tctx *t)
{
    if (t->done) {
        return;
    }
    t->done = true;
    uv_close((uv_handle_t *)&t->guard, NULL);
    uv_close((uv_handle_t *)&t->poll, NULL);
    for (int i = 0; i < 2; i++) {
        if (t->peers[i] != NULL && t->peers[i]->started && !t->peers[i]->closing) {
            t->peers[i]->closing = true;
            t->peers[i]->io.close(&t->peers[i]->io, peer_on_io_closed);
        }
        if (t->raws[i] != NULL && !t->raws[i]->eof && !uv_is_closing((uv_handle_t *)&t->raws[i]->tcp)) {
            uv_close((uv_handle_t *)&t->raws[i]->tcp, raw_on_closed);
        }
    }
}

static void tctx_on_guard(uv_timer_t *timer)
{
    struct tctx *t = timer->data;
    t->timed_out = true;
    tctx_stop(t);
}

static void tctx_on_poll(uv_timer_t *timer)
{
    struct tctx *t = timer->data;
    if (t->cond(t)) {
        tctx_stop(t);
    }
}

static void tctx_init(struct tctx *t)
{
    memset(t, 0, sizeof *t);
    assert_int_equal(uv_loop_init(&t->loop), 0);
    uv_timer_init(&t->loop, &t->guard);
    uv_timer_init(&t->loop, &t->poll);
    t->guard.data = t;
    t->poll.data = t;
}

/* Run until @cond holds (or the guard gives up), close everything, and check
 * that the loop has nothing left. */
static void tctx_run(struct tctx *t, bool (*cond)(struct tctx *t))
{
    t->cond = cond;
    uv_timer_start(&t->guard, tctx_on_guard, GUARD_MS, 0);
    uv_timer_start(&t->poll, tctx_on_poll, POLL_MS, POLL_MS);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    for (int i = 0; i < 2; i++) {
        if (t->peers[i] != NULL && t->peers[i]->started) {
            assert_true(t->peers[i]->closed);
        }
    }
    assert_int_equal(uv_loop_close(&t->loop), 0);
}

static void tctx_cleanup(struct tctx *t)
{
    char cmd[128];
    for (int i = 0; i < 2; i++) {
        if (t->peers[i] != NULL && t->peers[i]->dir[0] != '\0') {
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->peers[i]->dir);
            assert_int_equal(system(cmd), 0);
        }
    }
}

static void peer_addr(const struct peer *p, const char *host, char *out, size_t size)
{
    snprintf(out, size, "%s:%d", host, p->port);
}

/* ------------------------------------------------------------------------ */
/* Conditions                                                                */
/* ------------------------------------------------------------------------ */

static bool cond_delivered(struct tctx *t)
{
    return t->peers[1]->n_recv >= 1;
}

static bool cond_both_refused(struct tctx *t)
{
    struct ck_transport_stats a, b;
    peer_stats(t->peers[0], &a);
    peer_stats(t->peers[1], &b);
    return a.auth_failures >= 1 && b.auth_failures >= 1;
}

static bool cond_server_refused(struct tctx *t)
{
    struct ck_transport_stats b;
    peer_stats(t->peers[1], &b);
    return b.auth_failures >= 1;
}

static bool cond_raws_closed(struct tctx *t)
{
    for (int i = 0; i < 2; i++) {
        if (t->raws[i] != NULL && !t->raws[i]->eof) {
            return false;
        }
    }
    return true;
}

static bool cond_client_logged(struct tctx *t)
{
    return t->peers[0]->n_logs >= 1;
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                     */
/* ------------------------------------------------------------------------ */

static void run_delivers(const char *token, const char *dial_host, bool tls);

/* A sends B a RequestVote over two transports with the same token, and the
 * message arrives through raft's own receive path. */
static void run_same_token(const char *dial_host)
{
    run_delivers("s3cret", dial_host, false);
}

static void test_same_token_delivers(void **state)
{
    (void)state;
    run_same_token("127.0.0.1");
}

/* A raft address may be a hostname: "localhost:PORT" is resolved when
 * connecting. */
static void test_hostname_connects(void **state)
{
    (void)state;
    run_same_token("localhost");
}

/* A listener given a hostname binds what it resolves to. */
static void test_hostname_listens(void **state)
{
    struct tctx t;
    struct peer a, b;
    char to[64];
    (void)state;
    tctx_init(&t);
    t.peers[0] = &a;
    t.peers[1] = &b;
    assert_int_equal(peer_start(&t, &b, 2, "localhost:0", "s3cret", 0, false), 0);
    assert_int_equal(peer_start(&t, &a, 1, "127.0.0.1:0", "s3cret", 0, false), 0);
    peer_addr(&b, "localhost", to, sizeof to);
    peer_send_vote(&a, 2, to);
    tctx_run(&t, cond_delivered);
    assert_false(t.timed_out);
    assert_int_equal(b.n_recv, 1);
    tctx_cleanup(&t);
}

/* Different tokens: both sides refuse the connection, log it with the peer's
 * address, and raft never gets the connection or the message. */
static void test_wrong_token_refused(void **state)
{
    struct tctx t;
    struct peer a, b;
    char to[64];
    struct ck_transport_stats sa, sb;
    (void)state;
    tctx_init(&t);
    t.peers[0] = &a;
    t.peers[1] = &b;
    assert_int_equal(peer_start(&t, &b, 2, "127.0.0.1:0", "right", 0, false), 0);
    assert_int_equal(peer_start(&t, &a, 1, "127.0.0.1:0", "wrong", 0, false), 0);
    peer_addr(&b, "127.0.0.1", to, sizeof to);
    peer_send_vote(&a, 2, to);
    tctx_run(&t, cond_both_refused);
    assert_false(t.timed_out);
    peer_stats(&a, &sa);
    peer_stats(&b, &sb);
    assert_int_equal(b.n_recv, 0);
    assert_int_equal(sa.connected, 0);
    assert_int_equal(sb.accepted, 0);
    assert_non_null(strstr(a.log, "does not know the cluster token"));
    assert_non_null(strstr(a.log, to));
    assert_non_null(strstr(b.log, "refused"));
    assert_non_null(strstr(b.log, "127.0.0.1:"));
    /* raft retries every 20 ms, but the log is rate-limited per peer host. */
    assert_int_equal(a.n_logs, 1);
    tctx_cleanup(&t);
}

/* A sends B a RequestVote at @dial_host (the address dialled goes to @to),
 * the loop runs until @cond, and B must have handed raft nothing. */
static void send_refused(struct tctx *t, struct peer *a, struct peer *b, const char *dial_host,
                         bool (*cond)(struct tctx *t), char *to, size_t to_size)
{
    struct ck_transport_stats sb;
    peer_addr(b, dial_host, to, to_size);
    peer_send_vote(a, 2, to);
    tctx_run(t, cond);
    assert_false(t->timed_out);
    peer_stats(b, &sb);
    assert_int_equal(b->n_recv, 0);
    assert_int_equal(sb.accepted, 0);
}

/* A node with a token refuses a peer without one (raft's plain handshake),
 * and says so. */
static void test_token_refuses_tokenless_peer(void **state)
{
    struct tctx t;
    struct peer a, b;
    char to[64];
    (void)state;
    tctx_init(&t);
    t.peers[0] = &a;
    t.peers[1] = &b;
    assert_int_equal(peer_start(&t, &b, 2, "127.0.0.1:0", "right", 0, false), 0);
    assert_int_equal(peer_start(&t, &a, 1, "127.0.0.1:0", NULL, 0, false), 0);
    send_refused(&t, &a, &b, "127.0.0.1", cond_server_refused, to, sizeof to);
    assert_non_null(strstr(b.log, "no cluster token"));
    tctx_cleanup(&t);
}

/* A node without a token refuses a peer that opens with the token handshake
 * (and the peer, getting no challenge, gives up too). */
static void test_tokenless_refuses_token_peer(void **state)
{
    struct tctx t;
    struct peer a, b;
    char to[64];
    (void)state;
    tctx_init(&t);
    t.peers[0] = &a;
    t.peers[1] = &b;
    assert_int_equal(peer_start(&t, &b, 2, "127.0.0.1:0", NULL, 0, false), 0);
    assert_int_equal(peer_start(&t, &a, 1, "127.0.0.1:0", "s3cret", 0, false), 0);
    send_refused(&t, &a, &b, "127.0.0.1", cond_both_refused, to, sizeof to);
    tctx_cleanup(&t);
}

/* Without a token on either side the message flows as before. */
static void test_no_token_delivers(void **state)
{
    struct tctx t;
    struct peer a, b;
    char to[64];
    (void)state;
    tctx_init(&t);
    t.peers[0] = &a;
    t.peers[1] = &b;
    assert_int_equal(peer_start(&t, &b, 2, "127.0.0.1:0", NULL, 0, false), 0);
    assert_int_equal(peer_start(&t, &a, 1, "127.0.0.1:0", NULL, 0, false), 0);
    peer_addr(&b, "127.0.0.1", to, sizeof to);
    peer_send_vote(&a, 2, to);
    tctx_run(&t, cond_delivered);
    assert_false(t.timed_out);
    assert_int_equal(b.n_recv, 1);
    assert_int_equal(b.last_from, 1);
    tctx_cleanup(&t);
}

/* Without a token the wire is raft_uv_tcp's: raft's own transport talks to
 * ours in both directions. */
static void run_interop(bool raft_sender)
{
    struct tctx t;
    struct peer a, b;
    char to[64];
    tctx_init(&t);
    t.peers[0] = &a;
    t.peers[1] = &b;
    assert_int_equal(peer_start(&t, &b, 2, "127.0.0.1:0", NULL, 0, !raft_sender), 0);
    assert_int_equal(peer_start(&t, &a, 1, "127.0.0.1:0", NULL, 0, raft_sender), 0);
    peer_addr(&b, "127.0.0.1", to, sizeof to);
    peer_send_vote(&a, 2, to);
    tctx_run(&t, cond_delivered);
    assert_false(t.timed_out);
    assert_int_equal(b.n_recv, 1);
    assert_int_equal(b.last_type, RAFT_IO_REQUEST_VOTE);
    assert_int_equal(b.last_from, 1);
    tctx_cleanup(&t);
}

static void test_interop_from_raft_tcp(void **state)
{
    (void)state;
    run_interop(true);
}

static void test_interop_to_raft_tcp(void **state)
{
    (void)state;
    run_interop(false);
}

/* A peer that connects and says nothing is dropped once the handshake bound
 * passes, with a token and without. */
static void run_silent_peer(const char *token)
{
    struct tctx t;
    struct peer b;
    struct raw r;
    struct ck_transport_stats sb;
    tctx_init(&t);
    t.peers[1] = &b;
    t.raws[0] = &r;
    assert_int_equal(peer_start(&t, &b, 2, "127.0.0.1:0", token, 50, false), 0);
    raw_start(&t, &r, b.port, NULL, 0);
    tctx_run(&t, cond_raws_closed);
    assert_false(t.timed_out);
    assert_true(r.connected);
    peer_stats(&b, &sb);
    assert_int_equal(sb.timeouts, 1);
    assert_int_equal(sb.accepted, 0);
    assert_non_null(strstr(b.log, "no complete handshake within 50 ms"));
    tctx_cleanup(&t);
}

static void test_silent_peer_dropped(void **state)
{
    (void)state;
    run_silent_peer("s3cret");
}

static void test_silent_peer_dropped_without_token(void **state)
{
    (void)state;
    run_silent_peer(NULL);
}

/* A raft preamble announcing a huge address is refused at once instead of
 * being allocated and waited for. */
static void test_huge_address_refused(void **state)
{
    struct tctx t;
    struct peer b;
    struct raw r;
    struct ck_transport_stats sb;
    unsigned char pre[24] = {0};
    (void)state;
    pre[0] = 1;         /* protocol */
    pre[8] = 9;         /* id */
    pre[16 + 5] = 0x10; /* address length 1 TiB */
    tctx_init(&t);
    t.peers[1] = &b;
    t.raws[0] = &r;
    assert_int_equal(peer_start(&t, &b, 2, "127.0.0.1:0", NULL, 5000, false), 0);
    raw_start(&t, &r, b.port, pre, sizeof pre);
    tctx_run(&t, cond_raws_closed);
    assert_false(t.timed_out);
    peer_stats(&b, &sb);
    assert_int_equal(sb.auth_failures, 1);
    assert_int_equal(sb.timeouts, 0);
    assert_non_null(strstr(b.log, "malformed"));
    tctx_cleanup(&t);
}

/* With max_pending handshakes running, a further connection is closed at
 * once; the first is still dropped by the time bound. */
static void test_pending_bound(void **state)
{
    struct tctx t;
    struct peer b;
    struct raw r1, r2;
    struct ck_transport_stats sb;
    struct ck_transport_options o = {.token = "s3cret", .handshake_timeout_ms = 200, .max_pending = 1};
    (void)state;
    tctx_init(&t);
    t.peers[1] = &b;
    t.raws[0] = &r1;
    t.raws[1] = &r2;
    memset(&b, 0, sizeof b);
    b.id = 2;
    snprintf(b.dir, sizeof b.dir, "/tmp/ck-test-transport-XXXXXX");
    assert_non_null(mkdtemp(b.dir));
    o.log = peer_log;
    o.log_data = &b;
    assert_int_equal(ck_transport_init(&b.tr, &t.loop, &o), 0);
    assert_int_equal(raft_uv_init(&b.io, &t.loop, b.dir, &b.tr), 0);
    b.io.data = &b;
    assert_int_equal(b.io.init(&b.io, 2, "127.0.0.1:0"), 0);
    b.started = true;
    assert_int_equal(b.io.start(&b.io, 1000, NULL, peer_on_recv), 0);
    b.port = ck_transport_port(&b.tr);
    raw_start(&t, &r1, b.port, NULL, 0);
    raw_start(&t, &r2, b.port, NULL, 0);
    tctx_run(&t, cond_raws_closed);
    assert_false(t.timed_out);
    peer_stats(&b, &sb);
    assert_int_equal(sb.overflows, 1);
    assert_int_equal(sb.timeouts, 1);
    tctx_cleanup(&t);
}

/* Listening on a name that does not resolve fails with a message naming it. */
static void test_unresolvable_listen(void **state)
{
    struct tctx t;
    struct peer b;
    (void)state;
    tctx_init(&t);
    t.peers[1] = &b;
    assert_int_not_equal(peer_start(&t, &b, 2, "no-such-host.invalid:9001", "s3cret", 0, false), 0);
    assert_non_null(strstr(b.tr.errmsg, "cannot resolve no-such-host.invalid:9001"));
    tctx_run(&t, cond_raws_closed); /* Nothing to wait for: close. */
    tctx_cleanup(&t);
}

/* Connecting to a name that does not resolve fails that attempt (logged),
 * without crashing or delivering anything. */
/* raft_uv never reads the connections it dials, so a peer that crashed (its
 * kernel closed the connection) used to look alive until a write failed,
 * and the first write after the close still "succeeded" and was lost. The
 * transport watches those connections: A dials B, B goes away, A's
 * transport reports B's id as closed, and A's next send to B fails instead
 * of vanishing (raft_uv then dials again). */
static unsigned closed_step;
static char closed_to[64];

static bool cond_peer_closed_steps(struct tctx *t)
{
    struct peer *a = t->peers[0], *b = t->peers[1];
    switch (closed_step) {
    case 0:
        if (b->n_recv >= 1) {
            b->closing = true;
            b->io.close(&b->io, peer_on_io_closed);
            closed_step = 1;
        }
        return false;
    case 1:
        if (b->closed && a->n_peer_closed >= 1) {
            peer_send_vote(a, 2, closed_to);
            closed_step = 2;
        }
        return false;
    default:
        return a->n_sent >= 2;
    }
}

static void test_peer_closed_reported(void **state)
{
    (void)state;
    struct tctx t;
    struct peer a, b;
    struct ck_transport_stats sa;
    tctx_init(&t);
    t.peers[0] = &a;
    t.peers[1] = &b;
    closed_step = 0;
    assert_int_equal(peer_start(&t, &b, 2, "127.0.0.1:0", "s3cret", 0, false), 0);
    assert_int_equal(peer_start(&t, &a, 1, "127.0.0.1:0", "s3cret", 0, false), 0);
    peer_addr(&b, "127.0.0.1", closed_to, sizeof closed_to);
    peer_send_vote(&a, 2, closed_to);
    tctx_run(&t, cond_peer_closed_steps);
    assert_false(t.timed_out);
    assert_int_equal(a.n_peer_closed, 1);
    assert_int_equal(a.peer_closed_id, 2);
    assert_int_not_equal(a.send_status, 0); /* The write after the close failed: not lost silently. */
    peer_stats(&a, &sa);
    assert_int_equal(sa.peer_closed, 1);
    tctx_cleanup(&t);
}

static void test_unresolvable_connect(void **state)
{
    struct tctx t;
    struct peer a;
    (void)state;
    tctx_init(&t);
    t.peers[0] = &a;
    assert_int_equal(peer_start(&t, &a, 1, "127.0.0.1:0", "s3cret", 0, false), 0);
    peer_send_vote(&a, 2, "no-such-host.invalid:9001");
    tctx_run(&t, cond_client_logged);
    assert_false(t.timed_out);
    assert_non_null(strstr(a.log, "cannot resolve no-such-host.invalid:9001"));
    tctx_cleanup(&t);
}

/* ------------------------------------------------------------------------ */
/* TLS                                                                       */
/* ------------------------------------------------------------------------ */

static char certdir[64];

static int setup_certs(void **state)
{
    (void)state;
    snprintf(certdir, sizeof certdir, "/tmp/ck-test-transport-tls.XXXXXX");
    if (mkdtemp(certdir) == NULL) {
        return -1;
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "sh %s/tests/tls/mkcerts.sh %s", CK_SOURCE_DIR, certdir);
    return system(cmd) == 0 ? 0 : -1;
}

static int teardown_certs(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", certdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A context from certdir: @name.pem/.key (NULL: none), @ca.pem. */
static SSL_CTX *tls_ctx(const char *name, const char *ca, bool verify, enum ck_tls_role role)
{
    char cert[128], key[128], cap[128], err[256];
    snprintf(cert, sizeof cert, "%s/%s.pem", certdir, name ? name : "");
    snprintf(key, sizeof key, "%s/%s.key", certdir, name ? name : "");
    snprintf(cap, sizeof cap, "%s/%s.pem", certdir, ca);
    struct ck_tls_config c = {
        .cert_file = name ? cert : NULL, .key_file = name ? key : NULL, .ca_file = cap, .verify_peers = verify};
    SSL_CTX *ctx = ck_tls_ctx_new(&c, role, err, sizeof err);
    if (ctx == NULL) {
        fprintf(stderr, "tls_ctx %s: %s\n", name ? name : "-", err);
    }
    assert_non_null(ctx);
    return ctx;
}

/* Set the contexts of the next peer: its certificate @name, trusting
 * @ca, requiring client certificates; name NULL: plain TCP. The peer's
 * transport takes its own references. */
static void tls_next(const char *name, const char *ca)
{
    SSL_CTX_free(next_tls_server);
    SSL_CTX_free(next_tls_client);
    next_tls_server = next_tls_client = NULL;
    if (name != NULL) {
        next_tls_server = tls_ctx(name, ca, true, CK_TLS_SERVER);
        next_tls_client = tls_ctx(name, ca, false, CK_TLS_CLIENT);
    }
}

static bool cond_server_tls_refused(struct tctx *t)
{
    struct ck_transport_stats b;
    peer_stats(t->peers[1], &b);
    return b.tls_failures >= 1 && t->peers[0]->n_logs + t->peers[1]->n_logs >= 1;
}

static bool cond_client_tls_refused(struct tctx *t)
{
    struct ck_transport_stats a;
    peer_stats(t->peers[0], &a);
    return a.tls_failures >= 1 && t->peers[0]->n_logs >= 1;
}

/* A sends B a RequestVote and it arrives through raft's receive path, each
 * connection counted once, nothing refused or logged. With @tls both peers
 * have certificates from the same CA (and mutual TLS): then with or without
 * a token inside TLS, dialled by IP or by name (each checked against the
 * certificate's SAN). */
static void run_delivers(const char *token, const char *dial_host, bool tls)
{
    struct tctx t;
    struct peer a, b;
    char to[64];
    struct ck_transport_stats sa, sb;
    tctx_init(&t);
    t.peers[0] = &a;
    t.peers[1] = &b;
    tls_next(tls ? "node" : NULL, "ca");
    assert_int_equal(peer_start(&t, &b, 2, "127.0.0.1:0", token, 0, false), 0);
    tls_next(tls ? "node2" : NULL, "ca");
    assert_int_equal(peer_start(&t, &a, 1, "127.0.0.1:0", token, 0, false), 0);
    tls_next(NULL, NULL);
    peer_addr(&b, dial_host, to, sizeof to);
    peer_send_vote(&a, 2, to);
    tctx_run(&t, cond_delivered);
    assert_false(t.timed_out);
    assert_int_equal(b.n_recv, 1);
    assert_int_equal(b.last_type, RAFT_IO_REQUEST_VOTE);
    assert_int_equal(b.last_from, 1);
    peer_stats(&a, &sa);
    peer_stats(&b, &sb);
    assert_int_equal(sa.connected, 1);
    assert_int_equal(sb.accepted, 1);
    assert_int_equal(sa.tls_failures + sb.tls_failures + sa.auth_failures + sb.auth_failures, 0);
    assert_int_equal(a.n_logs + b.n_logs, 0);
    tctx_cleanup(&t); /* Also proves the transports wait for their pumps to close. */
}

static void test_tls_delivers(void **state)
{
    (void)state;
    run_delivers("s3cret", "127.0.0.1", true);
}

static void test_tls_delivers_without_token(void **state)
{
    (void)state;
    run_delivers(NULL, "localhost", true);
}

/* Mutual TLS: a peer whose certificate comes from another CA is refused by
 * the server's TLS, with OpenSSL's reason in the log, and raft never sees
 * the connection. */
static void test_tls_rogue_client_refused(void **state)
{
    struct tctx t;
    struct peer a, b;
    char to[64];
    (void)state;
    tctx_init(&t);
    t.peers[0] = &a;
    t.peers[1] = &b;
    tls_next("node", "ca");
    assert_int_equal(peer_start(&t, &b, 2, "127.0.0.1:0", "s3cret", 0, false), 0);
    /* A trusts B's CA but presents a certificate B does not trust. */
    tls_next(NULL, NULL);
    next_tls_server = tls_ctx("rogue", "rogue-ca", true, CK_TLS_SERVER);
    next_tls_client = tls_ctx("rogue", "ca", false, CK_TLS_CLIENT);
    assert_int_equal(peer_start(&t, &a, 1, "127.0.0.1:0", "s3cret", 0, false), 0);
    tls_next(NULL, NULL);
    send_refused(&t, &a, &b, "127.0.0.1", cond_server_tls_refused, to, sizeof to);
    assert_non_null(strstr(b.log, "TLS"));
    assert_non_null(strstr(b.log, "certificate"));
    tctx_cleanup(&t);
}

/* The client checks the server's certificate against the name it dials. */
static void test_tls_wrong_name_refused(void **state)
{
    struct tctx t;
    struct peer a, b;
    char to[64];
    struct ck_transport_stats sa;
    (void)state;
    tctx_init(&t);
    t.peers[0] = &a;
    t.peers[1] = &b;
    tls_next("wrongname", "ca");
    assert_int_equal(peer_start(&t, &b, 2, "127.0.0.1:0", NULL, 0, false), 0);
    tls_next("node", "ca");
    assert_int_equal(peer_start(&t, &a, 1, "127.0.0.1:0", NULL, 0, false), 0);
    tls_next(NULL, NULL);
    send_refused(&t, &a, &b, "localhost", cond_client_tls_refused, to, sizeof to);
    peer_stats(&a, &sa);
    assert_int_equal(sa.connected, 0);
    assert_non_null(strstr(a.log, "TLS"));
    assert_non_null(strstr(a.log, to));
    tctx_cleanup(&t);
}

/* A TLS node refuses a plaintext peer (and the plaintext peer, with its
 * token, refuses the TLS node's answer). */
static void test_tls_refuses_plain_peer(void **state)
{
    struct tctx t;
    struct peer a, b;
    char to[64];
    (void)state;
    tctx_init(&t);
    t.peers[0] = &a;
    t.peers[1] = &b;
    tls_next("node", "ca");
    assert_int_equal(peer_start(&t, &b, 2, "127.0.0.1:0", "s3cret", 0, false), 0);
    tls_next(NULL, NULL);
    assert_int_equal(peer_start(&t, &a, 1, "127.0.0.1:0", "s3cret", 0, false), 0);
    send_refused(&t, &a, &b, "127.0.0.1", cond_server_tls_refused, to, sizeof to);
    assert_non_null(strstr(b.log, "TLS"));
    tctx_cleanup(&t);
}

/* The peer-closed watch works over TLS too: it watches the plaintext pipe,
 * which ends when the pump sees the peer's TCP connection close. */
static void test_tls_peer_closed_reported(void **state)
{
    (void)state;
    struct tctx t;
    struct peer a, b;
    tctx_init(&t);
    t.peers[0] = &a;
    t.peers[1] = &b;
    closed_step = 0;
    tls_next("node", "ca");
    assert_int_equal(peer_start(&t, &b, 2, "127.0.0.1:0", "s3cret", 0, false), 0);
    assert_int_equal(peer_start(&t, &a, 1, "127.0.0.1:0", "s3cret", 0, false), 0);
    tls_next(NULL, NULL);
    peer_addr(&b, "127.0.0.1", closed_to, sizeof closed_to);
    peer_send_vote(&a, 2, closed_to);
    tctx_run(&t, cond_peer_closed_steps);
    assert_false(t.timed_out);
    assert_int_equal(a.n_peer_closed, 1);
    assert_int_equal(a.peer_closed_id, 2);
    assert_int_not_equal(a.send_status, 0);
    tctx_cleanup(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_token_delivers),
        cmocka_unit_test(test_peer_closed_reported),
        cmocka_unit_test(test_hostname_connects),
        cmocka_unit_test(test_hostname_listens),
        cmocka_unit_test(test_wrong_token_refused),
        cmocka_unit_test(test_token_refuses_tokenless_peer),
        cmocka_unit_test(test_tokenless_refuses_token_peer),
        cmocka_unit_test(test_no_token_delivers),
        cmocka_unit_test(test_interop_from_raft_tcp),
        cmocka_unit_test(test_interop_to_raft_tcp),
        cmocka_unit_test(test_silent_peer_dropped),
        cmocka_unit_test(test_silent_peer_dropped_without_token),
        cmocka_unit_test(test_huge_address_refused),
        cmocka_unit_test(test_pending_bound),
        cmocka_unit_test(test_unresolvable_listen),
        cmocka_unit_test(test_unresolvable_connect),
        cmocka_unit_test(test_tls_delivers),
        cmocka_unit_test(test_tls_delivers_without_token),
        cmocka_unit_test(test_tls_rogue_client_refused),
        cmocka_unit_test(test_tls_wrong_name_refused),
        cmocka_unit_test(test_tls_refuses_plain_peer),
        cmocka_unit_test(test_tls_peer_closed_reported),
    };
    return cmocka_run_group_tests(tests, setup_certs, teardown_certs);
}
