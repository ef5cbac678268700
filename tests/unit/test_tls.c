/*
 * Tests for ck_tls.h: contexts made from certificates that tests/tls/mkcerts.sh
 * generates with the openssl command at test time; sessions driven in memory
 * (the test moves the bytes between a client and a server); the pump on a real
 * libuv loop over 127.0.0.1 (port 0).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "ck_tls.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64];

/* @s contains @sub, or the test fails showing @s. */
#define assert_has(s, sub)                                         \
    do {                                                           \
        const char *s_ = (s);                                      \
        if (strstr(s_, (sub)) == NULL) {                           \
            fail_msg("\"%s\" does not contain \"%s\"", s_, (sub)); \
        }                                                          \
    } while (0)

static const char *path(const char *name)
{
    static char bufs[4][128];
    static int i;
    char *b = bufs[i++ % 4];
    snprintf(b, 128, "%s/%s", dir, name);
    return b;
}

static int setup_certs(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/ck-test-tls.XXXXXX");
    if (mkdtemp(dir) == NULL) {
        return -1;
    }
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "sh %s/tests/tls/mkcerts.sh %s", CK_SOURCE_DIR, dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int teardown_certs(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static SSL_CTX *ctx_of(const char *cert, const char *key, const char *ca, bool verify, enum ck_tls_role role)
{
    struct ck_tls_config c = {.cert_file = cert ? path(cert) : NULL,
                              .key_file = key ? path(key) : NULL,
                              .ca_file = ca ? path(ca) : NULL,
                              .verify_peers = verify};
    char err[256];
    SSL_CTX *ctx = ck_tls_ctx_new(&c, role, err, sizeof(err));
    if (ctx == NULL) {
        fprintf(stderr, "ctx: %s\n", err);
    }
    return ctx;
}

/* The error message for a context that must not be made. */
static const char *ctx_err(const char *cert, const char *key, const char *ca, bool verify, enum ck_tls_role role)
{
    static char err[256];
    struct ck_tls_config c = {.cert_file = cert ? path(cert) : NULL,
                              .key_file = key ? path(key) : NULL,
                              .ca_file = ca ? path(ca) : NULL,
                              .verify_peers = verify};
    SSL_CTX *ctx = ck_tls_ctx_new(&c, role, err, sizeof(err));
    assert_null(ctx);
    return err;
}

static void test_ctx_errors(void **state)
{
    (void)state;
    assert_has(ctx_err("missing.pem", "node.key", NULL, false, CK_TLS_SERVER), "TLS_CERT");
    assert_has(ctx_err("missing.pem", "node.key", NULL, false, CK_TLS_SERVER), "No such file");
    assert_has(ctx_err("node.pem", "client.key", NULL, false, CK_TLS_SERVER), "does not match");
    assert_has(ctx_err("expired.pem", "expired.key", NULL, false, CK_TLS_SERVER), "expired on");
    assert_has(ctx_err("node.pem", NULL, NULL, false, CK_TLS_SERVER), "go together");
    assert_has(ctx_err(NULL, NULL, NULL, false, CK_TLS_SERVER), "needs TLS_CERT");
    assert_has(ctx_err("node.pem", "node.key", NULL, true, CK_TLS_SERVER), "needs TLS_CA");
    assert_has(ctx_err("node.pem", "node.key", "node.key", false, CK_TLS_SERVER), "TLS_CA");
    assert_has(ctx_err("node.key", "node.key", NULL, false, CK_TLS_SERVER), "not a PEM certificate");

    SSL_CTX *ok = ctx_of("node.pem", "node.key", "ca.pem", true, CK_TLS_SERVER);
    assert_non_null(ok);
    char na[64], serial[64];
    ck_tls_ctx_describe(ok, na, sizeof(na), serial, sizeof(serial));
    assert_true(strlen(na) > 10);
    assert_true(strlen(serial) > 4);
    SSL_CTX_free(ok);
}

/* Move every pending byte from @a to @b and back until neither has any. */
static void shuttle(struct ck_tls *a, struct ck_tls *b)
{
    char buf[65536];
    for (int round = 0; round < 50; round++) {
        bool moved = false;
        struct ck_tls *from[2] = {a, b}, *to[2] = {b, a};
        for (int i = 0; i < 2; i++) {
            size_t n;
            while ((n = ck_tls_take(from[i], buf, sizeof(buf))) > 0) {
                assert_int_equal(ck_tls_push(to[i], buf, n), 0);
                moved = true;
            }
            char plain[256];
            ssize_t r = ck_tls_read(to[i], plain, sizeof(plain));
            (void)r;
        }
        if (!moved) {
            return;
        }
    }
    fail_msg("the handshake did not settle");
}

struct pair {
    SSL_CTX *sctx, *cctx;
    struct ck_tls s, c;
};

static void pair_start(struct pair *p, SSL_CTX *sctx, SSL_CTX *cctx, const char *peer)
{
    p->sctx = sctx;
    p->cctx = cctx;
    assert_non_null(sctx);
    assert_non_null(cctx);
    assert_int_equal(ck_tls_init(&p->s, sctx, CK_TLS_SERVER, NULL), 0);
    assert_int_equal(ck_tls_init(&p->c, cctx, CK_TLS_CLIENT, peer), 0);
    char plain[16];
    assert_int_equal(ck_tls_read(&p->c, plain, sizeof(plain)), CK_TLS_AGAIN); /* ClientHello out. */
    shuttle(&p->c, &p->s);
}

static void pair_free(struct pair *p)
{
    ck_tls_free(&p->s);
    ck_tls_free(&p->c);
    SSL_CTX_free(p->sctx);
    SSL_CTX_free(p->cctx);
}

static void test_session_roundtrip(void **state)
{
    (void)state;
    struct pair p;
    pair_start(&p, ctx_of("node.pem", "node.key", NULL, false, CK_TLS_SERVER),
               ctx_of(NULL, NULL, "ca.pem", false, CK_TLS_CLIENT), "127.0.0.1");
    assert_true(p.c.handshaken);
    assert_true(p.s.handshaken);

    assert_int_equal(ck_tls_write(&p.c, "GET / HTTP/1.1\r\n\r\n", 18), 0);
    char buf[65536];
    size_t n = ck_tls_take(&p.c, buf, sizeof(buf));
    assert_true(n > 18);
    assert_null(memmem(buf, n, "GET /", 5)); /* Encrypted on the wire. */
    ck_tls_push(&p.s, buf, n);
    char plain[64];
    assert_int_equal(ck_tls_read(&p.s, plain, sizeof(plain)), 18);
    assert_memory_equal(plain, "GET / HTTP/1.1\r\n\r\n", 18);
    assert_int_equal(ck_tls_read(&p.s, plain, sizeof(plain)), CK_TLS_AGAIN);

    /* Then a close_notify reads as EOF. */
    ck_tls_shutdown(&p.s);
    n = ck_tls_take(&p.s, buf, sizeof(buf));
    ck_tls_push(&p.c, buf, n);
    assert_int_equal(ck_tls_read(&p.c, plain, sizeof(plain)), CK_TLS_EOF);
    pair_free(&p);
}

static void test_session_host_name(void **state)
{
    (void)state;
    struct pair p;
    pair_start(&p, ctx_of("node.pem", "node.key", NULL, false, CK_TLS_SERVER),
               ctx_of(NULL, NULL, "ca.pem", false, CK_TLS_CLIENT), "localhost");
    assert_true(p.c.handshaken);
    pair_free(&p);

    /* A certificate for other.example does not pass for 127.0.0.1. */
    pair_start(&p, ctx_of("wrongname.pem", "wrongname.key", NULL, false, CK_TLS_SERVER),
               ctx_of(NULL, NULL, "ca.pem", false, CK_TLS_CLIENT), "127.0.0.1");
    char plain[16];
    assert_false(p.c.handshaken);
    assert_int_equal(ck_tls_read(&p.c, plain, sizeof(plain)), CK_TLS_ERROR);
    assert_has(p.c.err, "IP address mismatch");
    pair_free(&p);
}

static void test_session_untrusted_server(void **state)
{
    (void)state;
    struct pair p;
    pair_start(&p, ctx_of("rogue.pem", "rogue.key", NULL, false, CK_TLS_SERVER),
               ctx_of(NULL, NULL, "ca.pem", false, CK_TLS_CLIENT), "127.0.0.1");
    char plain[16];
    assert_false(p.c.handshaken);
    assert_int_equal(ck_tls_read(&p.c, plain, sizeof(plain)), CK_TLS_ERROR);
    assert_has(p.c.err, "certificate verify failed");
    assert_has(p.c.err, "local issuer");
    pair_free(&p);
}

static void test_session_mutual(void **state)
{
    (void)state;
    struct pair p;
    char plain[16];
    /* No client certificate: the server refuses. */
    pair_start(&p, ctx_of("node.pem", "node.key", "ca.pem", true, CK_TLS_SERVER),
               ctx_of(NULL, NULL, "ca.pem", false, CK_TLS_CLIENT), "127.0.0.1");
    assert_false(p.s.handshaken);
    assert_int_equal(ck_tls_read(&p.s, plain, sizeof(plain)), CK_TLS_ERROR);
    assert_has(p.s.err, "certificate");
    pair_free(&p);

    /* A certificate from another CA: refused too. */
    pair_start(&p, ctx_of("node.pem", "node.key", "ca.pem", true, CK_TLS_SERVER),
               ctx_of("rogue.pem", "rogue.key", "ca.pem", false, CK_TLS_CLIENT), "127.0.0.1");
    assert_false(p.s.handshaken);
    assert_int_equal(ck_tls_read(&p.s, plain, sizeof(plain)), CK_TLS_ERROR);
    pair_free(&p);

    /* The CA's client certificate: both sides agree. */
    pair_start(&p, ctx_of("node.pem", "node.key", "ca.pem", true, CK_TLS_SERVER),
               ctx_of("client.pem", "client.key", "ca.pem", false, CK_TLS_CLIENT), "localhost");
    assert_true(p.s.handshaken);
    assert_true(p.c.handshaken);
    assert_int_equal(ck_tls_write(&p.s, "hi", 2), 0);
    pair_free(&p);
}

/* ------------------------------------------------------------------------ */
/* The pump on a real loop                                                   */
/* ------------------------------------------------------------------------ */

#define BIG (3u << 20)

struct pump_test {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_connect_t connect;
    uv_tcp_t *client_tcp;
    uv_pipe_t *client_plain, *server_plain;
    SSL_CTX *sctx, *cctx;
    uv_timer_t guard;
    bool timed_out;
    /* The server echoes what it reads; the client counts the echo. */
    size_t echoed, received;
    unsigned char *sent;
    bool client_eof, server_eof;
    int errors;
    int pumps;          /* Started and not yet closed. */
    bool silent_server; /* Accept, then never answer. */
    uv_tcp_t *silent_tcp;
    char last_error[256];
    uv_write_t client_write;
};

static void free_handle(uv_handle_t *h)
{
    free(h);
}

static void on_pump_error(void *data, const char *msg)
{
    struct pump_test *t = data;
    t->errors++;
    snprintf(t->last_error, sizeof(t->last_error), "%s", msg);
}

static void on_pump_closed(void *data)
{
    struct pump_test *t = data;
    t->pumps--;
}

static void big_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    buf->base = malloc(suggested);
    buf->len = suggested;
}

struct echo_write {
    uv_write_t req;
    char data[];
};

static void echo_written(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

static void server_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct pump_test *t = s->loop->data;
    if (nread < 0) {
        t->server_eof = true;
        uv_close((uv_handle_t *)s, free_handle);
        t->server_plain = NULL;
    } else if (nread > 0) {
        struct echo_write *w = malloc(sizeof(*w) + (size_t)nread);
        memcpy(w->data, buf->base, (size_t)nread);
        uv_buf_t b = uv_buf_init(w->data, (unsigned)nread);
        assert_int_equal(uv_write(&w->req, s, &b, 1, echo_written), 0);
        t->echoed += (size_t)nread;
    }
    free(buf->base);
}

static void client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct pump_test *t = s->loop->data;
    if (nread < 0) {
        t->client_eof = true;
        uv_close((uv_handle_t *)s, free_handle);
        t->client_plain = NULL;
    } else if (nread > 0) {
        assert_memory_equal(buf->base, t->sent + t->received, (size_t)nread);
        t->received += (size_t)nread;
        if (t->received == BIG) {
            /* All echoed: closing our end must reach the server as EOF. */
            uv_close((uv_handle_t *)s, free_handle);
            t->client_plain = NULL;
        }
    }
    free(buf->base);
}

static void on_accept(uv_stream_t *listener, int status)
{
    assert_int_equal(status, 0);
    struct pump_test *t = listener->loop->data;
    uv_tcp_t *tcp = malloc(sizeof(*tcp));
    uv_tcp_init(&t->loop, tcp);
    assert_int_equal(uv_accept(listener, (uv_stream_t *)tcp), 0);
    if (t->silent_server) {
        t->silent_tcp = tcp;
        return;
    }
    struct ck_tls_pump_cbs cbs = {
        .on_error = on_pump_error, .on_close = on_pump_closed, .free_tcp = free_handle, .data = t};
    t->server_plain = malloc(sizeof(*t->server_plain));
    t->pumps++;
    assert_int_equal(ck_tls_pump_start(&t->loop, tcp, t->server_plain, t->sctx, CK_TLS_SERVER, NULL, &cbs), 0);
    uv_read_start((uv_stream_t *)t->server_plain, big_alloc, server_read);
}

static void on_connected(uv_connect_t *req, int status)
{
    struct pump_test *t = req->handle->loop->data;
    assert_int_equal(status, 0);
    struct ck_tls_pump_cbs cbs = {
        .on_error = on_pump_error, .on_close = on_pump_closed, .free_tcp = free_handle, .data = t};
    t->client_plain = malloc(sizeof(*t->client_plain));
    t->pumps++;
    assert_int_equal(
        ck_tls_pump_start(&t->loop, t->client_tcp, t->client_plain, t->cctx, CK_TLS_CLIENT, "127.0.0.1", &cbs), 0);
    /* Written before the handshake completes: waits in the socketpair. */
    if (t->sent != NULL) {
        uv_buf_t b = uv_buf_init((char *)t->sent, BIG);
        assert_int_equal(uv_write(&t->client_write, (uv_stream_t *)t->client_plain, &b, 1, NULL), 0);
    }
    if (t->silent_server) {
        /* Give up before the (never coming) handshake: the pump must notice. */
        uv_close((uv_handle_t *)t->client_plain, free_handle);
        t->client_plain = NULL;
        return;
    }
    uv_read_start((uv_stream_t *)t->client_plain, big_alloc, client_read);
}

static void on_guard(uv_timer_t *timer)
{
    struct pump_test *t = timer->loop->data;
    t->timed_out = true;
    uv_stop(&t->loop);
}

static void run_pump(struct pump_test *t, bool (*done)(struct pump_test *))
{
    uv_loop_init(&t->loop);
    t->loop.data = t;
    uv_tcp_init(&t->loop, &t->listener);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&t->listener, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&t->listener, 16, on_accept), 0);
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    uv_tcp_getsockname(&t->listener, (struct sockaddr *)&bound, &len);
    t->client_tcp = malloc(sizeof(*t->client_tcp));
    uv_tcp_init(&t->loop, t->client_tcp);
    assert_int_equal(uv_tcp_connect(&t->connect, t->client_tcp, (struct sockaddr *)&bound, on_connected), 0);
    uv_timer_init(&t->loop, &t->guard);
    uv_timer_start(&t->guard, on_guard, 10000, 0);
    for (int i = 0; i < 100000 && !done(t) && !t->timed_out; i++) {
        uv_run(&t->loop, UV_RUN_ONCE);
    }
    assert_false(t->timed_out);
    uv_close((uv_handle_t *)&t->listener, NULL);
    uv_close((uv_handle_t *)&t->guard, NULL);
    if (t->client_plain != NULL) {
        uv_close((uv_handle_t *)t->client_plain, free_handle);
    }
    if (t->server_plain != NULL) {
        uv_close((uv_handle_t *)t->server_plain, free_handle);
    }
    if (t->silent_tcp != NULL) {
        uv_close((uv_handle_t *)t->silent_tcp, free_handle);
    }
    /* The pumps see EOF on their ends and close their TCP handles. */
    for (int i = 0; i < 1000 && uv_run(&t->loop, UV_RUN_NOWAIT) != 0; i++) {
        usleep(1000);
    }
    assert_int_equal(t->pumps, 0); /* Every pump said it is gone. */
    assert_int_equal(uv_loop_close(&t->loop), 0);
    SSL_CTX_free(t->sctx);
    SSL_CTX_free(t->cctx);
}

static bool echo_done(struct pump_test *t)
{
    return t->received == BIG && t->server_eof;
}

static void test_pump_echo(void **state)
{
    (void)state;
    struct pump_test t = {0};
    t.sctx = ctx_of("node.pem", "node.key", "ca.pem", true, CK_TLS_SERVER);
    t.cctx = ctx_of("node.pem", "node.key", "ca.pem", false, CK_TLS_CLIENT);
    t.sent = malloc(BIG);
    for (size_t i = 0; i < BIG; i++) {
        t.sent[i] = (unsigned char)(i * 7 + (i >> 11));
    }
    run_pump(&t, echo_done);
    assert_int_equal(t.echoed, BIG);
    assert_int_equal(t.received, BIG);
    assert_int_equal(t.errors, 0);
    free(t.sent);
}

static bool refused(struct pump_test *t)
{
    return t->client_eof && t->server_eof && t->errors >= 1;
}

static void test_pump_refused(void **state)
{
    (void)state;
    /* mTLS server, client without a certificate: both ends read EOF, and the
     * refusal is reported with OpenSSL's reason. */
    struct pump_test t = {0};
    t.sctx = ctx_of("node.pem", "node.key", "ca.pem", true, CK_TLS_SERVER);
    t.cctx = ctx_of(NULL, NULL, "ca.pem", false, CK_TLS_CLIENT);
    run_pump(&t, refused);
    assert_true(t.errors >= 1);
    assert_has(t.last_error, "TLS");
}

static bool pumps_gone(struct pump_test *t)
{
    return t->silent_tcp != NULL && t->pumps == 0;
}

static void test_pump_abandoned(void **state)
{
    (void)state;
    /* The peer accepts and never answers; the caller closed its
     * end during the handshake (before the peer said anything). The pump closes without the peer's help. */
    struct pump_test t = {0};
    t.silent_server = true;
    t.sctx = ctx_of("node.pem", "node.key", NULL, false, CK_TLS_SERVER);
    t.cctx = ctx_of(NULL, NULL, "ca.pem", false, CK_TLS_CLIENT);
    run_pump(&t, pumps_gone);
    assert_int_equal(t.pumps, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ctx_errors),        cmocka_unit_test(test_session_roundtrip),
        cmocka_unit_test(test_session_host_name), cmocka_unit_test(test_session_untrusted_server),
        cmocka_unit_test(test_session_mutual),    cmocka_unit_test(test_pump_echo),
        cmocka_unit_test(test_pump_refused),      cmocka_unit_test(test_pump_abandoned),
    };
    return cmocka_run_group_tests(tests, setup_certs, teardown_certs);
}
