/*
 * Tests for the HTTP server (ck_http.h): a real server on 127.0.0.1, port 0,
 * driven by libuv clients on the same loop. Each test counts callbacks,
 * asserts after uv_run, closes the server and checks that the loop closes
 * cleanly (uv_loop_close returns 0). The socket-free parser seam
 * (ck_http_internal.h) gets byte-at-a-time and random-input tests at the end.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "ck_common.h"
#include "ck_http.h"
#include "ck_http_internal.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------------ */
/* Harness                                                                   */
/* ------------------------------------------------------------------------ */

#define MAX_SEGS 8
#define MAX_CLIENTS 4
#define MAX_EVENTS 16
#define GUARD_MS 10000

struct tctx;

struct tclient {
    struct tctx *t;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect_req;
    const char *segs[MAX_SEGS];
    unsigned delay_ms[MAX_SEGS]; /* Wait before sending segment i (i > 0). */
    unsigned n_segs, next_seg;
    bool by_response; /* Send segment i once i final responses have arrived. */
    bool manual;      /* Only segment 0 is sent automatically. */
    int close_after;  /* Close after this many final responses; 0 waits for EOF. */
    char in[1 << 16];
    size_t in_len;
    bool started, eof, closing, done;
    int read_err;
    int open_handles;
    void (*on_data)(struct tclient *c);
    void (*on_done)(struct tclient *c);
};

struct deferred {
    uv_timer_t timer;
    struct tctx *t;
    struct ck_http_request *req;
};

struct tctx {
    uv_loop_t loop;
    uv_timer_t guard;
    uv_timer_t poll;
    struct ck_http_server *server;
    struct ck_http_limits limits;
    struct ck_http_stats stats; /* Snapshot taken when the server is closed. */
    int port;
    void (*handler)(struct tctx *t, struct ck_http_request *req);
    bool close_server_when_clients_done;
    bool server_closing;
    int n_requests, n_aborts, n_closed, aborts_at_close;
    int aborts_while_closing;
    int in_flight, max_in_flight;
    unsigned defer_ms;
    int respond_rc[MAX_EVENTS];
    int n_rc;
    char events[MAX_EVENTS][32]; /* "req /1", "resp /1", ... in order. */
    int n_events;
    uint64_t ids[MAX_EVENTS];
    /* Copy of the last request. */
    char method[16], path[256], query[256], body[4096], remote[64];
    size_t body_len, n_headers;
    char headers[16][2][128];
    bool keep_alive;
    unsigned short http_major, http_minor;
    int n_clients, clients_done;
    struct tclient clients[MAX_CLIENTS];
    int n_written_in_respond; /* handle_echo_counting: responses out before respond returned. */
};

static void t_event(struct tctx *t, const char *what, const char *path)
{
    if (t->n_events < MAX_EVENTS)
        snprintf(t->events[t->n_events++], sizeof(t->events[0]), "%s %s", what, path);
}

static const char *find_header(struct tctx *t, const char *name)
{
    for (size_t i = 0; i < t->n_headers && i < 16; i++)
        if (strcasecmp(t->headers[i][0], name) == 0)
            return t->headers[i][1];
    return NULL;
}

static void server_closed_cb(void *data)
{
    struct tctx *t = data;
    t->n_closed++;
    t->aborts_at_close = t->n_aborts;
}

static void t_close_server(struct tctx *t)
{
    if (t->server_closing)
        return;
    t->server_closing = true;
    ck_http_server_stats(t->server, &t->stats);
    ck_http_server_close(t->server, server_closed_cb);
}

static int t_respond(struct tctx *t, struct ck_http_request *req, int status, const char *body, size_t len)
{
    static const char ct_name[] = "Content-Type", ct_value[] = "text/plain";
    struct ck_http_header h = {ct_name, sizeof(ct_name) - 1, ct_value, sizeof(ct_value) - 1};
    t_event(t, "resp", req->path);
    t->in_flight--;
    return ck_http_respond(req, status, &h, 1, body, len);
}

/* Default handler: echo the body, or "ok". */
static void handle_echo(struct tctx *t, struct ck_http_request *req)
{
    int rc = req->body_len > 0 ? t_respond(t, req, 200, req->body, req->body_len) : t_respond(t, req, 200, "ok", 2);
    assert_int_equal(rc, 0);
}

static void deferred_closed(uv_handle_t *h)
{
    free(h->data);
}

static void deferred_fire(uv_timer_t *timer)
{
    struct deferred *d = timer->data;
    struct ck_http_request *req = d->req;
    /* The request's strings are still valid long after the callback. */
    assert_int_equal(req->path[req->path_len], '\0');
    int rc = t_respond(d->t, req, 200, req->path, req->path_len);
    assert_int_equal(rc, 0);
    uv_close((uv_handle_t *)timer, deferred_closed);
}

/* Answer each request t->defer_ms later, from a timer, with its path. */
static void handle_deferred(struct tctx *t, struct ck_http_request *req)
{
    struct deferred *d = calloc(1, sizeof(*d));
    assert_non_null(d);
    d->t = t;
    d->req = req;
    uv_timer_init(&t->loop, &d->timer);
    d->timer.data = d;
    uv_timer_start(&d->timer, deferred_fire, t->defer_ms, 0);
}

static void on_request(struct ck_http_request *req)
{
    struct tctx *t = ck_http_server_data(req->server);
    t->n_requests++;
    t->in_flight++;
    if (t->in_flight > t->max_in_flight)
        t->max_in_flight = t->in_flight;
    if (t->n_requests <= MAX_EVENTS)
        t->ids[t->n_requests - 1] = req->id;
    t_event(t, "req", req->path);
    assert_int_equal(req->method[req->method_len], '\0');
    assert_int_equal(req->path[req->path_len], '\0');
    assert_int_equal(req->query[req->query_len], '\0');
    assert_int_equal(req->body[req->body_len], '\0');
    snprintf(t->method, sizeof(t->method), "%s", req->method);
    snprintf(t->path, sizeof(t->path), "%s", req->path);
    snprintf(t->query, sizeof(t->query), "%s", req->query);
    snprintf(t->remote, sizeof(t->remote), "%s", req->remote_addr);
    t->body_len = req->body_len;
    memcpy(t->body, req->body, req->body_len < sizeof(t->body) ? req->body_len : 0);
    t->n_headers = req->n_headers;
    for (size_t i = 0; i < req->n_headers && i < 16; i++) {
        assert_int_equal(req->headers[i].name[req->headers[i].name_len], '\0');
        assert_int_equal(req->headers[i].value[req->headers[i].value_len], '\0');
        snprintf(t->headers[i][0], sizeof(t->headers[i][0]), "%s", req->headers[i].name);
        snprintf(t->headers[i][1], sizeof(t->headers[i][1]), "%s", req->headers[i].value);
    }
    t->keep_alive = req->keep_alive;
    t->http_major = req->http_major;
    t->http_minor = req->http_minor;
    t->handler(t, req);
}

static void on_abort(struct ck_http_request *req)
{
    struct tctx *t = ck_http_server_data(req->server);
    t->n_aborts++;
    t->in_flight--;
    if (t->server_closing)
        t->aborts_while_closing++;
    t_event(t, "abort", req->path);
}

static void guard_fire(uv_timer_t *timer)
{
    fail_msg("test did not finish within %d ms", GUARD_MS);
}

static struct tctx *t_new(const struct ck_http_limits *limits)
{
    struct tctx *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    assert_int_equal(uv_loop_init(&t->loop), 0);
    if (limits != NULL)
        t->limits = *limits;
    else
        ck_http_limits_default(&t->limits);
    t->handler = handle_echo;
    t->close_server_when_clients_done = true;
    t->server = ck_http_server_new(&t->loop, &t->limits, on_request, on_abort, t);
    assert_non_null(t->server);
    assert_int_equal(ck_http_server_listen(t->server, "127.0.0.1", 0, &t->port), 0);
    assert_true(t->port > 0);
    uv_timer_init(&t->loop, &t->guard);
    uv_timer_start(&t->guard, guard_fire, GUARD_MS, 0);
    uv_unref((uv_handle_t *)&t->guard); /* Does not keep the loop alive. */
    uv_timer_init(&t->loop, &t->poll);
    return t;
}

/* Run until the server and every client have closed, then close the loop. */
static void t_run(struct tctx *t)
{
    uv_run(&t->loop, UV_RUN_DEFAULT);
    assert_int_equal(t->n_closed, 1);
    uv_close((uv_handle_t *)&t->guard, NULL);
    uv_close((uv_handle_t *)&t->poll, NULL);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&t->loop), 0);
}

/* ---- Clients ---- */

struct tresp {
    int status;
    const char *head; /* Status line and headers, up to the blank line. */
    size_t head_len;
    const char *body;
    size_t body_len;
};

/* Split @buf into complete responses (the server always sends Content-Length
 * on responses with a body). Returns how many are complete. */
static int parse_responses(const char *buf, size_t len, struct tresp *out, int max)
{
    size_t pos = 0;
    int n = 0;
    while (n < max && pos < len) {
        const char *end = memmem(buf + pos, len - pos, "\r\n\r\n", 4);
        if (end == NULL || len - pos < 12)
            break;
        struct tresp r = {0};
        r.head = buf + pos;
        r.head_len = (size_t)(end - r.head) + 2;
        r.status = atoi(buf + pos + 9);
        const char *cl = memmem(r.head, r.head_len, "\r\nContent-Length: ", 18);
        size_t body_len = cl != NULL ? strtoul(cl + 18, NULL, 10) : 0;
        size_t body_pos = (size_t)(end - buf) + 4;
        if (body_pos + body_len > len)
            break;
        r.body = buf + body_pos;
        r.body_len = body_len;
        out[n++] = r;
        pos = body_pos + body_len;
    }
    return n;
}

static int final_responses(struct tclient *c)
{
    struct tresp r[16];
    int n = parse_responses(c->in, c->in_len, r, 16), finals = 0;
    for (int i = 0; i < n; i++)
        finals += r[i].status >= 200;
    return finals;
}

/* The @i-th final response received by @c (1xx skipped). */
static struct tresp response(struct tclient *c, int i)
{
    struct tresp r[16], none = {0};
    int n = parse_responses(c->in, c->in_len, r, 16);
    for (int k = 0; k < n; k++) {
        if (r[k].status < 200)
            continue;
        if (i-- == 0)
            return r[k];
    }
    return none;
}

static bool head_has(struct tresp r, const char *text)
{
    return r.head != NULL && memmem(r.head, r.head_len, text, strlen(text)) != NULL;
}

static bool body_is(struct tresp r, const char *text)
{
    return r.body != NULL && r.body_len == strlen(text) && memcmp(r.body, text, r.body_len) == 0;
}

static void client_handle_closed(uv_handle_t *h)
{
    struct tclient *c = h->data;
    if (--c->open_handles > 0)
        return;
    c->done = true;
    struct tctx *t = c->t;
    t->clients_done++;
    if (c->on_done != NULL)
        c->on_done(c);
    if (t->close_server_when_clients_done && t->clients_done == t->n_clients)
        t_close_server(t);
}

static void client_close(struct tclient *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, client_handle_closed);
    uv_close((uv_handle_t *)&c->timer, client_handle_closed);
}

static void client_written(uv_write_t *w, int status)
{
    free(w);
}

static void client_write(struct tclient *c, const char *data, size_t len)
{
    uv_write_t *w = malloc(sizeof(*w));
    assert_non_null(w);
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    assert_int_equal(uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, client_written), 0);
}

static void client_send_next(struct tclient *c);

static void client_timer_fire(uv_timer_t *timer)
{
    client_send_next(timer->data);
}

/* Send the next segment; schedule the one after it if sending by delay. */
static void client_send_next(struct tclient *c)
{
    if (c->closing || c->next_seg >= c->n_segs)
        return;
    const char *seg = c->segs[c->next_seg++];
    client_write(c, seg, strlen(seg));
    if (!c->by_response && !c->manual && c->next_seg < c->n_segs)
        uv_timer_start(&c->timer, client_timer_fire, c->delay_ms[c->next_seg], 0);
}

static void client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct tclient *c = h->data;
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(sizeof(c->in) - c->in_len));
}

static void client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct tclient *c = s->data;
    if (nread < 0) {
        if (nread == UV_EOF)
            c->eof = true;
        else
            c->read_err = (int)nread;
        client_close(c);
        return;
    }
    c->in_len += (size_t)nread;
    assert_true(c->in_len < sizeof(c->in));
    int finals = final_responses(c);
    if (c->by_response && c->next_seg < c->n_segs && finals >= (int)c->next_seg)
        client_send_next(c);
    if (c->on_data != NULL)
        c->on_data(c);
    if (c->close_after > 0 && finals >= c->close_after)
        client_close(c);
}

static void client_connected(uv_connect_t *req, int status)
{
    struct tclient *c = req->data;
    assert_int_equal(status, 0);
    assert_int_equal(uv_read_start((uv_stream_t *)&c->tcp, client_alloc, client_read), 0);
    if (c->n_segs > 0) {
        if (c->delay_ms[0] > 0)
            uv_timer_start(&c->timer, client_timer_fire, c->delay_ms[0], 0);
        else
            client_send_next(c);
    }
}

/* A client that sends @segs (NULL-terminated) once connected. */
static struct tclient *t_client(struct tctx *t, int close_after, ...)
{
    assert_true(t->n_clients < MAX_CLIENTS);
    struct tclient *c = &t->clients[t->n_clients++];
    c->t = t;
    c->close_after = close_after;
    va_list ap;
    va_start(ap, close_after);
    const char *seg;
    while ((seg = va_arg(ap, const char *)) != NULL) {
        assert_true(c->n_segs < MAX_SEGS);
        c->delay_ms[c->n_segs] = c->n_segs > 0 ? 20 : 0;
        c->segs[c->n_segs++] = seg;
    }
    va_end(ap);
    return c;
}

static void client_start(struct tclient *c)
{
    struct sockaddr_in addr;
    c->started = true;
    assert_int_equal(uv_ip4_addr("127.0.0.1", c->t->port, &addr), 0);
    assert_int_equal(uv_tcp_init(&c->t->loop, &c->tcp), 0);
    assert_int_equal(uv_timer_init(&c->t->loop, &c->timer), 0);
    c->tcp.data = c;
    c->timer.data = c;
    c->connect_req.data = c;
    c->open_handles = 2;
    assert_int_equal(uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&addr, client_connected), 0);
}

static void t_start_all(struct tctx *t)
{
    for (int i = 0; i < t->n_clients; i++)
        if (!t->clients[i].started)
            client_start(&t->clients[i]);
}

static void t_free(struct tctx *t)
{
    free(t);
}

/* An error response from the server itself: JSON, the given code, closed. */
static void assert_server_error(struct tclient *c, int status, const char *code)
{
    struct tresp r = response(c, 0);
    char want[96];
    assert_int_equal(r.status, status);
    assert_true(head_has(r, "\r\nContent-Type: application/json\r\n"));
    assert_true(head_has(r, "\r\nConnection: close\r\n"));
    snprintf(want, sizeof(want), "{\"error\":{\"code\":\"%s\",\"message\":\"", code);
    assert_true(r.body_len > strlen(want) && memcmp(r.body, want, strlen(want)) == 0);
    assert_true(r.body[r.body_len - 1] == '}');
    assert_true(c->eof);
    assert_int_equal(final_responses(c), 1);
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                  */
/* ------------------------------------------------------------------------ */

/* A GET split across reads arrives with method, path, query and trimmed
 * headers as NUL-terminated copies, and its 200 keeps the connection open. */
static void test_get_with_query(void **state)
{
    struct tctx *t = t_new(NULL);
    struct tclient *c = t_client(t, 1, "GET /kv/x?key=a%20b&n=2 HTTP/1.1\r\nHo", "st: example\r\nX-Pad: \t spa",
                                 "ced value \t\r\n\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 1);
    assert_string_equal(t->method, "GET");
    assert_string_equal(t->path, "/kv/x");
    assert_string_equal(t->query, "key=a%20b&n=2");
    assert_int_equal(t->n_headers, 2);
    assert_string_equal(t->headers[0][0], "Host");
    assert_string_equal(find_header(t, "host"), "example");
    assert_string_equal(find_header(t, "x-pad"), "spaced value");
    assert_int_equal(t->body_len, 0);
    assert_true(t->keep_alive);
    assert_int_equal(t->http_major, 1);
    assert_int_equal(t->http_minor, 1);
    assert_true(strncmp(t->remote, "127.0.0.1:", 10) == 0);
    struct tresp r = response(c, 0);
    assert_int_equal(r.status, 200);
    assert_true(strncmp(r.head, "HTTP/1.1 200 OK\r\n", 17) == 0);
    assert_true(head_has(r, "\r\nContent-Length: 2\r\n"));
    assert_true(head_has(r, "\r\nContent-Type: text/plain\r\n"));
    assert_false(head_has(r, "Connection"));
    assert_true(body_is(r, "ok"));
    assert_false(c->eof);
    assert_int_equal(t->stats.requests, 1);
    assert_int_equal(t->stats.responses, 1);
    t_free(t);
}

/* A request without a query gets "" as query, and a GET with no body "". */
static void test_get_without_query(void **state)
{
    struct tctx *t = t_new(NULL);
    t_client(t, 1, "GET /health HTTP/1.1\r\n\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 1);
    assert_string_equal(t->path, "/health");
    assert_string_equal(t->query, "");
    assert_int_equal(t->n_headers, 0);
    t_free(t);
}

/* A POST body announced by Content-Length and sent in a later read reaches
 * the handler whole. */
static void test_post_content_length(void **state)
{
    struct tctx *t = t_new(NULL);
    struct tclient *c = t_client(t, 1, "POST /echo HTTP/1.1\r\nContent-Length: 11\r\n\r\nhel", "lo world", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 1);
    assert_string_equal(t->method, "POST");
    assert_int_equal(t->body_len, 11);
    assert_memory_equal(t->body, "hello world", 11);
    assert_true(body_is(response(c, 0), "hello world"));
    t_free(t);
}

/* A chunked body is de-chunked across reads, and its trailers are dropped. */
static void test_chunked_body(void **state)
{
    struct tctx *t = t_new(NULL);
    struct tclient *c = t_client(t, 1, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                                 "lo\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 1);
    assert_int_equal(t->body_len, 11);
    assert_memory_equal(t->body, "hello world", 11);
    assert_int_equal(t->n_headers, 1);
    assert_null(find_header(t, "x-trailer"));
    assert_true(body_is(response(c, 0), "hello world"));
    t_free(t);
}

/* Two requests sent one after the other share one connection. */
static void test_keep_alive_sequential(void **state)
{
    struct tctx *t = t_new(NULL);
    struct tclient *c =
        t_client(t, 2, "GET /1 HTTP/1.1\r\n\r\n", "POST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\ntwo", NULL);
    c->by_response = true;
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 2);
    assert_true(t->ids[0] < t->ids[1]);
    assert_int_equal(t->stats.connections_accepted, 1);
    assert_int_equal(t->stats.responses, 2);
    assert_true(body_is(response(c, 0), "ok"));
    assert_true(body_is(response(c, 1), "two"));
    assert_false(c->eof);
    t_free(t);
}

/* Two requests in one write are answered in order, and the second reaches
 * the handler only after the first response was written. */
static void test_pipelining(void **state)
{
    struct tctx *t = t_new(NULL);
    t->handler = handle_deferred;
    t->defer_ms = 30;
    struct tclient *c = t_client(t, 2, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: b\r\n\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 2);
    assert_int_equal(t->max_in_flight, 1);
    assert_int_equal(t->n_events, 4);
    assert_string_equal(t->events[0], "req /1");
    assert_string_equal(t->events[1], "resp /1");
    assert_string_equal(t->events[2], "req /2");
    assert_string_equal(t->events[3], "resp /2");
    assert_string_equal(find_header(t, "host"), "b");
    assert_true(body_is(response(c, 0), "/1"));
    assert_true(body_is(response(c, 1), "/2"));
    t_free(t);
}

/* Echo the path, counting the responses that were on the socket by the time
 * ck_http_respond() returned. */
static void handle_echo_counting(struct tctx *t, struct ck_http_request *req)
{
    struct ck_http_stats before, after;
    ck_http_server_stats(t->server, &before);
    assert_int_equal(t_respond(t, req, 200, req->path, req->path_len), 0);
    ck_http_server_stats(t->server, &after);
    if (after.responses == before.responses + 1)
        t->n_written_in_respond++;
}

/* A response given inside the request callback leaves before
 * ck_http_respond() returns when the socket takes it: no write request and
 * no write callback a loop turn later (whose drain cost libuv 1.44 an
 * epoll_ctl per request). Keep-alive goes on as before. */
static void test_immediate_response_written_in_respond(void **state)
{
    struct tctx *t = t_new(NULL);
    t->handler = handle_echo_counting;
    struct tclient *c = t_client(t, 2, "GET /a HTTP/1.1\r\n\r\n", "GET /b HTTP/1.1\r\n\r\n", NULL);
    c->by_response = true;
    t_start_all(t);
    t_run(t);
    assert_int_equal(t->n_requests, 2);
    assert_int_equal(t->n_written_in_respond, 2);
    assert_int_equal(t->stats.responses, 2);
    assert_true(body_is(response(c, 0), "/a"));
    assert_true(body_is(response(c, 1), "/b"));
    t_free(t);
}

/* Many pipelined requests answered inside the callback come out complete
 * and in order (the server must not recurse once per pipelined request). */
static void test_pipelined_burst_answered_immediately(void **state)
{
    enum { N = 400 };
    static char burst[N * 32];
    size_t off = 0;
    for (int i = 0; i < N; i++) /* The last one closes: the client reads until EOF. */
        off += (size_t)snprintf(burst + off, sizeof burst - off, "GET /%03d HTTP/1.1\r\n%s\r\n", i,
                                i == N - 1 ? "Connection: close\r\n" : "");
    struct tctx *t = t_new(NULL);
    t->handler = handle_echo_counting;
    struct tclient *c = t_client(t, 0, burst, NULL);
    t_start_all(t);
    t_run(t);
    assert_int_equal(t->n_requests, N);
    assert_int_equal(t->stats.responses, N);
    assert_int_equal(t->max_in_flight, 1);
    const char *at = c->in, *end = c->in + c->in_len;
    for (int i = 0; i < N; i++) {
        char want[40];
        int n = snprintf(want, sizeof want, "\r\n\r\n/%03d", i);
        const char *hit = memmem(at, (size_t)(end - at), want, (size_t)n);
        assert_non_null(hit);
        at = hit + n;
    }
    t_free(t);
}

/* A request answered later from a timer keeps its fields valid until then. */
static void test_deferred_response(void **state)
{
    struct tctx *t = t_new(NULL);
    t->handler = handle_deferred;
    t->defer_ms = 50;
    struct tclient *c = t_client(t, 1, "GET /later?x=1 HTTP/1.1\r\n\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 1);
    assert_int_equal(t->n_aborts, 0);
    assert_int_equal(t->in_flight, 0);
    assert_true(body_is(response(c, 0), "/later"));
    t_free(t);
}

/* An HTTP/1.0 request without keep-alive is answered with Connection: close,
 * the connection closes, and bytes after the request are ignored. */
static void test_http10_closes(void **state)
{
    struct tctx *t = t_new(NULL);
    struct tclient *c = t_client(t, 0, "GET /old HTTP/1.0\r\n\r\nGET /again HTTP/1.0\r\n\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 1);
    assert_false(t->keep_alive);
    assert_int_equal(t->http_minor, 0);
    assert_int_equal(final_responses(c), 1);
    assert_true(head_has(response(c, 0), "\r\nConnection: close\r\n"));
    assert_true(c->eof);
    t_free(t);
}

/* An HTTP/1.0 client asking for keep-alive is told so and kept. */
static void test_http10_keep_alive(void **state)
{
    struct tctx *t = t_new(NULL);
    struct tclient *c = t_client(t, 1, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_true(t->keep_alive);
    assert_true(head_has(response(c, 0), "\r\nConnection: keep-alive\r\n"));
    assert_false(c->eof);
    t_free(t);
}

/* "Connection: close" is honoured: one response, then the server closes. */
static void test_connection_close(void **state)
{
    struct tctx *t = t_new(NULL);
    struct tclient *c = t_client(t, 0, "GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 1);
    assert_false(t->keep_alive);
    assert_int_equal(final_responses(c), 1);
    assert_true(head_has(response(c, 0), "\r\nConnection: close\r\n"));
    assert_true(c->eof);
    t_free(t);
}

/* A HEAD response carries the Content-Length of its body but not the body,
 * and the next pipelined request is answered right after it. */
static void test_head_has_no_body(void **state)
{
    struct tctx *t = t_new(NULL);
    struct tclient *c = t_client(t, 0, "HEAD /h HTTP/1.1\r\n\r\nGET /g HTTP/1.1\r\nConnection: close\r\n\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 2);
    assert_true(c->eof);
    /* The client-side parser does not know HEAD, so check the raw bytes:
     * the second status line follows the first blank line directly. */
    const char *blank = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    assert_non_null(blank);
    assert_true(memmem(c->in, (size_t)(blank + 2 - c->in), "\r\nContent-Length: 2\r\n", 21) != NULL);
    assert_true(strncmp(blank + 4, "HTTP/1.1 200 OK\r\n", 17) == 0);
    const char *end = c->in + c->in_len;
    assert_true(end - blank > 6 && memcmp(end - 6, "\r\n\r\nok", 6) == 0);
    t_free(t);
}

/* ------------------------------------------------------------------------ */
/* Malformed input and limits                                                */
/* ------------------------------------------------------------------------ */

/* A malformed request line gets a 400 JSON error and the connection closes. */
static void test_malformed_request_line(void **state)
{
    struct tctx *t = t_new(NULL);
    struct tclient *c = t_client(t, 0, "HELLO THERE\r\n\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 0);
    assert_server_error(c, 400, "BAD_REQUEST");
    assert_int_equal(t->stats.bad_requests, 1);
    assert_int_equal(t->stats.responses, 1);
    t_free(t);
}

static char big_header[4096];
static char ok_header[2048];

/* A header section over max_header_size gets 431; one just under passes. */
static void test_header_too_large(void **state)
{
    struct ck_http_limits lim;
    ck_http_limits_default(&lim);
    lim.max_header_size = 1024;
    struct tctx *t = t_new(&lim);
    char pad[2001];
    memset(pad, 'a', 2000);
    pad[2000] = '\0';
    snprintf(big_header, sizeof(big_header), "GET / HTTP/1.1\r\nX-Big: %s\r\n\r\n", pad);
    pad[1024 - 30] = '\0'; /* 16 + 6 + 994 + 4 = 1020 bytes in all. */
    snprintf(ok_header, sizeof(ok_header), "GET / HTTP/1.1\r\nX-Ok: %s\r\n\r\n", pad);
    assert_true(strlen(ok_header) <= 1024);
    struct tclient *big = t_client(t, 0, big_header, NULL);
    struct tclient *ok = t_client(t, 1, ok_header, NULL);
    t_start_all(t);
    t_run(t);

    assert_server_error(big, 431, "HEADER_TOO_LARGE");
    assert_int_equal(response(ok, 0).status, 200);
    assert_int_equal(t->n_requests, 1);
    t_free(t);
}

/* A header section that crosses the limit slowly, over many reads, is cut off
 * as well. */
static void test_header_too_large_in_pieces(void **state)
{
    struct ck_http_limits lim;
    ck_http_limits_default(&lim);
    lim.max_header_size = 64;
    struct tctx *t = t_new(&lim);
    struct tclient *c = t_client(t, 0, "GET / HTTP/1.1\r\n", "X-A: 0123456789\r\n", "X-B: 0123456789\r\n",
                                 "X-C: 0123456789\r\n", "X-D: 0123456789\r\n", "\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 0);
    assert_server_error(c, 431, "HEADER_TOO_LARGE");
    t_free(t);
}

/* More than max_headers headers get 431; exactly max_headers pass. */
static void test_too_many_headers(void **state)
{
    struct ck_http_limits lim;
    ck_http_limits_default(&lim);
    lim.max_headers = 4;
    struct tctx *t = t_new(&lim);
    struct tclient *five = t_client(t, 0, "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n", NULL);
    struct tclient *four = t_client(t, 1, "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_server_error(five, 431, "HEADER_TOO_LARGE");
    assert_int_equal(response(four, 0).status, 200);
    assert_int_equal(t->n_requests, 1);
    assert_int_equal(t->n_headers, 4);
    t_free(t);
}

/* A Content-Length over max_body_size is refused as soon as the headers end,
 * without waiting for a body that never comes. */
static void test_body_too_large_declared(void **state)
{
    struct ck_http_limits lim;
    ck_http_limits_default(&lim);
    lim.max_body_size = 100;
    struct tctx *t = t_new(&lim);
    struct tclient *c = t_client(t, 0, "POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", NULL);
    struct tclient *ok = t_client(t, 1, "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 1);
    assert_server_error(c, 413, "BODY_TOO_LARGE");
    assert_true(body_is(response(ok, 0), "hello"));
    t_free(t);
}

/* A chunked body that grows past max_body_size is refused at the size line
 * of the chunk that crosses it, before that chunk's data is sent. */
static void test_body_too_large_chunked(void **state)
{
    struct ck_http_limits lim;
    ck_http_limits_default(&lim);
    lim.max_body_size = 100;
    struct tctx *t = t_new(&lim);
    static char chunk[80];
    memset(chunk, 0, sizeof(chunk));
    strcpy(chunk, "3c\r\n");
    memset(chunk + 4, 'x', 60);
    strcat(chunk, "\r\n");
    struct tclient *c = t_client(t, 0, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", chunk, "3c\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 0);
    assert_server_error(c, 413, "BODY_TOO_LARGE");
    assert_int_equal(t->stats.timeouts, 0);
    t_free(t);
}

static void start_second_when_first_active(uv_timer_t *timer)
{
    struct tctx *t = timer->data;
    struct ck_http_stats st;
    ck_http_server_stats(t->server, &st);
    if (st.connections_active == 1) {
        uv_timer_stop(timer);
        client_start(&t->clients[1]);
    }
}

static void finish_first(struct tclient *c)
{
    client_send_next(&c->t->clients[0]);
}

/* A connection over max_connections gets a 503 JSON error and is closed,
 * while the connection already open is still served. */
static void test_max_connections(void **state)
{
    struct ck_http_limits lim;
    ck_http_limits_default(&lim);
    lim.max_connections = 1;
    struct tctx *t = t_new(&lim);
    struct tclient *a = t_client(t, 1, "GET /a HTTP/1.1\r\n", "\r\n", NULL);
    a->manual = true;
    struct tclient *b = t_client(t, 0, NULL);
    b->on_done = finish_first;
    client_start(a);
    t->poll.data = t;
    uv_timer_start(&t->poll, start_second_when_first_active, 5, 5);
    t_run(t);

    assert_server_error(b, 503, "TOO_MANY_CONNECTIONS");
    assert_int_equal(response(a, 0).status, 200);
    assert_int_equal(t->n_requests, 1);
    assert_int_equal(t->stats.connections_accepted, 1);
    assert_int_equal(t->stats.connections_rejected, 1);
    t_free(t);
}

/* ------------------------------------------------------------------------ */
/* Timeouts                                                                  */
/* ------------------------------------------------------------------------ */

/* A client that stops in the middle of its headers gets 408 and is closed. */
static void test_header_timeout(void **state)
{
    struct ck_http_limits lim;
    ck_http_limits_default(&lim);
    lim.header_timeout_ms = 50;
    struct tctx *t = t_new(&lim);
    struct tclient *c = t_client(t, 0, "GET / HTTP/1.1\r\nHost: x\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 0);
    assert_server_error(c, 408, "TIMEOUT");
    assert_int_equal(t->stats.timeouts, 1);
    t_free(t);
}

/* A client that stops in the middle of its body gets 408 and is closed. */
static void test_body_timeout(void **state)
{
    struct ck_http_limits lim;
    ck_http_limits_default(&lim);
    lim.body_timeout_ms = 50;
    struct tctx *t = t_new(&lim);
    struct tclient *c = t_client(t, 0, "POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 0);
    assert_server_error(c, 408, "TIMEOUT");
    assert_int_equal(t->stats.timeouts, 1);
    t_free(t);
}

/* A keep-alive connection idle after its response is closed silently. */
static void test_idle_timeout(void **state)
{
    struct ck_http_limits lim;
    ck_http_limits_default(&lim);
    lim.idle_timeout_ms = 50;
    struct tctx *t = t_new(&lim);
    struct tclient *c = t_client(t, 0, "GET / HTTP/1.1\r\n\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 1);
    assert_int_equal(final_responses(c), 1);
    assert_false(head_has(response(c, 0), "Connection: close"));
    struct tresp r = response(c, 0);
    assert_ptr_equal(r.body + r.body_len, c->in + c->in_len); /* Nothing after it. */
    assert_true(c->eof);
    t_free(t);
}

/* ------------------------------------------------------------------------ */
/* Request lifetime                                                          */
/* ------------------------------------------------------------------------ */

static void handle_hold_and_disconnect(struct tctx *t, struct ck_http_request *req)
{
    client_close(&t->clients[0]);
}

static void abort_then_close(uv_timer_t *timer)
{
    struct tctx *t = timer->data;
    if (t->n_aborts == 1) {
        uv_timer_stop(timer);
        t_close_server(t);
    }
}

/* A client that disconnects while its request is held gets the request
 * aborted exactly once, without a response ever being needed. */
static void test_client_disconnect_in_flight(void **state)
{
    struct tctx *t = t_new(NULL);
    t->handler = handle_hold_and_disconnect;
    t->close_server_when_clients_done = false;
    t_client(t, 0, "GET /held HTTP/1.1\r\n\r\n", NULL);
    t_start_all(t);
    t->poll.data = t;
    uv_timer_start(&t->poll, abort_then_close, 5, 5);
    t_run(t);

    assert_int_equal(t->n_requests, 1);
    assert_int_equal(t->n_aborts, 1);
    assert_int_equal(t->aborts_while_closing, 0); /* From the disconnect, not the close. */
    assert_int_equal(t->aborts_at_close, 1);
    assert_string_equal(t->events[1], "abort /held");
    assert_int_equal(t->stats.responses, 0);
    t_free(t);
}

static void handle_hold_then_close_server(struct tctx *t, struct ck_http_request *req)
{
    if (t->n_requests == 2)
        t_close_server(t);
}

/* Closing the server with requests held aborts each of them once, before
 * the close callback; the clients see their connections end. */
static void test_server_close_in_flight(void **state)
{
    struct tctx *t = t_new(NULL);
    t->handler = handle_hold_then_close_server;
    t->close_server_when_clients_done = false;
    struct tclient *a = t_client(t, 0, "GET /a HTTP/1.1\r\n\r\n", NULL);
    struct tclient *b = t_client(t, 0, "GET /b HTTP/1.1\r\n\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 2);
    assert_int_equal(t->n_aborts, 2);
    assert_int_equal(t->aborts_while_closing, 2);
    assert_int_equal(t->aborts_at_close, 2);
    assert_int_equal(t->in_flight, 0);
    assert_int_equal(a->in_len, 0);
    assert_int_equal(b->in_len, 0);
    assert_true(a->done && b->done);
    t_free(t);
}

static void handle_bad_response(struct tctx *t, struct ck_http_request *req)
{
    struct ck_http_header h = {"X-Ok", 4, "fine", 4};
    int status = 200;
    if (strcmp(req->path, "/value") == 0) {
        h.value = "a\r\nInjected: yes";
        h.value_len = strlen(h.value);
    } else if (strcmp(req->path, "/name") == 0) {
        h.name = "Bad Name";
        h.name_len = strlen(h.name);
    } else if (strcmp(req->path, "/status") == 0) {
        status = 1000;
    }
    t->in_flight--;
    if (t->n_rc < MAX_EVENTS)
        t->respond_rc[t->n_rc++] = ck_http_respond(req, status, &h, 1, "body", 4);
}

/* ck_http_respond refuses CR/LF in a header value, a non-token header name
 * and a bad status with CK_EINVAL; the client gets a 500 and the connection
 * is closed and freed without an abort. */
static void test_respond_rejects_bad_header(void **state)
{
    struct tctx *t = t_new(NULL);
    t->handler = handle_bad_response;
    struct tclient *v = t_client(t, 0, "GET /value HTTP/1.1\r\n\r\n", NULL);
    struct tclient *n = t_client(t, 0, "GET /name HTTP/1.1\r\n\r\n", NULL);
    struct tclient *s = t_client(t, 0, "GET /status HTTP/1.1\r\n\r\n", NULL);
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 3);
    assert_int_equal(t->n_rc, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(t->respond_rc[i], CK_EINVAL);
    assert_int_equal(t->n_aborts, 0);
    assert_server_error(v, 500, "INTERNAL");
    assert_server_error(n, 500, "INTERNAL");
    assert_server_error(s, 500, "INTERNAL");
    assert_null(memmem(v->in, v->in_len, "Injected", 8));
    t_free(t);
}

static void send_body_after_continue(struct tclient *c)
{
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (c->next_seg == 1 && c->in_len >= sizeof(cont) - 1) {
        assert_memory_equal(c->in, cont, sizeof(cont) - 1);
        assert_int_equal(c->t->n_requests, 0); /* The request is not complete yet. */
        client_send_next(c);
    }
}

/* "Expect: 100-continue" gets "HTTP/1.1 100 Continue" before the client
 * sends its body, then the final response. */
static void test_expect_continue(void **state)
{
    struct tctx *t = t_new(NULL);
    struct tclient *c =
        t_client(t, 1, "POST /up HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", "hello", NULL);
    c->manual = true;
    c->on_data = send_body_after_continue;
    t_start_all(t);
    t_run(t);

    assert_int_equal(t->n_requests, 1);
    assert_int_equal(c->next_seg, 2);
    assert_true(strncmp(c->in, "HTTP/1.1 100 Continue\r\n\r\n", 25) == 0);
    assert_true(body_is(response(c, 0), "hello"));
    t_free(t);
}

static void sigpipe_handler(int sig)
{
}

/* A server makes SIGPIPE harmless (a client hanging up before its response
 * is written would otherwise kill the process), but leaves an application's
 * own handler alone. */
static void test_sigpipe_ignored(void **state)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    assert_int_equal(sigaction(SIGPIPE, &sa, &old), 0);
    struct tctx *t = t_new(NULL);
    struct sigaction now;
    assert_int_equal(sigaction(SIGPIPE, NULL, &now), 0);
    assert_true(now.sa_handler == SIG_IGN);
    t_close_server(t);
    t_run(t);
    t_free(t);

    sa.sa_handler = sigpipe_handler;
    assert_int_equal(sigaction(SIGPIPE, &sa, NULL), 0);
    t = t_new(NULL);
    assert_int_equal(sigaction(SIGPIPE, NULL, &now), 0);
    assert_true(now.sa_handler == sigpipe_handler);
    t_close_server(t);
    t_run(t);
    t_free(t);
    assert_int_equal(sigaction(SIGPIPE, &old, NULL), 0);
}

/* ------------------------------------------------------------------------ */
/* The socket-free parser and serializer                                     */
/* ------------------------------------------------------------------------ */

static const char two_requests[] =
    "POST /p/q?a=b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX-V:  v v  \r\n\r\n"
    "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    "GET /second HTTP/1.1\r\n\r\n";

/* Fed one byte at a time, the parser assembles the same request and stops
 * exactly where the next pipelined request begins. */
static void test_parser_byte_at_a_time(void **state)
{
    struct ck_http_limits lim;
    ck_http_limits_default(&lim);
    struct ck_http_parser p;
    ck_http_parser_init(&p, &lim);
    size_t len = strlen(two_requests), pos = 0, used;
    enum ck_http_event ev = CK_HTTP_NEED_MORE;
    while (pos < len) {
        ev = ck_http_parser_feed(&p, two_requests + pos, 1, &used);
        pos += used;
        if (ev != CK_HTTP_NEED_MORE)
            break;
        assert_int_equal(used, 1);
    }
    assert_int_equal(ev, CK_HTTP_REQUEST);
    assert_string_equal(two_requests + pos, "GET /second HTTP/1.1\r\n\r\n");
    assert_string_equal(p.req.method, "POST");
    assert_string_equal(p.req.path, "/p/q");
    assert_string_equal(p.req.query, "a=b");
    assert_int_equal(p.req.n_headers, 3);
    assert_string_equal(p.req.headers[2].name, "X-V");
    assert_string_equal(p.req.headers[2].value, "v v");
    assert_int_equal(p.req.headers[2].value_len, 3);
    assert_string_equal(p.req.body, "abcde");
    assert_true(p.req.keep_alive);

    ck_http_parser_next(&p);
    ev = ck_http_parser_feed(&p, two_requests + pos, len - pos, &used);
    assert_int_equal(ev, CK_HTTP_REQUEST);
    assert_int_equal(used, len - pos);
    assert_string_equal(p.req.path, "/second");
    assert_int_equal(p.req.n_headers, 0);
    assert_int_equal(p.req.body_len, 0);
    ck_http_parser_free(&p);
}

/* Errors from the parser are sticky and carry the status and code the
 * server answers with. */
static void test_parser_errors(void **state)
{
    struct ck_http_limits lim;
    ck_http_limits_default(&lim);
    lim.max_body_size = 10;
    struct {
        const char *in;
        int status;
        const char *code;
    } cases[] = {
        {"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "BAD_REQUEST"},
        {"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400, "BAD_REQUEST"},
        {"GET / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 413, "BODY_TOO_LARGE"},
        {"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400, "BAD_REQUEST"},
        {"GET / HTTP/1.1\r\n: x\r\n\r\n", 400, "BAD_REQUEST"},
        {"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "BAD_REQUEST"},
        {"GET / HTTP/9.9\r\n\r\n", 400, "BAD_REQUEST"},
        {"GET /a b HTTP/1.1\r\n\r\n", 400, "BAD_REQUEST"},
    };
    for (size_t i = 0; i < CK_ARRAY_SIZE(cases); i++) {
        struct ck_http_parser p;
        size_t used;
        ck_http_parser_init(&p, &lim);
        enum ck_http_event ev = ck_http_parser_feed(&p, cases[i].in, strlen(cases[i].in), &used);
        assert_int_equal(ev, CK_HTTP_ERROR);
        assert_int_equal(p.err_status, cases[i].status);
        assert_string_equal(p.err_code, cases[i].code);
        assert_non_null(p.err_msg);
        assert_int_equal(ck_http_parser_feed(&p, "GET / HTTP/1.1\r\n\r\n", 18, &used), CK_HTTP_ERROR);
        ck_http_parser_free(&p);
    }
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)rng_state;
}

/* Mutated and random input, cut at random points, never breaks the parser's
 * invariants (run under ASan this also shows it never misuses memory). */
static void test_parser_random_input(void **state)
{
    static const char *seeds[] = {
        two_requests,
        "GET /a?b HTTP/1.1\r\nA: b\r\nContent-Length: 3\r\n\r\nxyzGET / HTTP/1.0\r\n\r\n",
        "PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=1\r\na\r\n0\r\nT: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        "CONNECT host:443 HTTP/1.1\r\n\r\n\x16\x03\x01",
    };
    struct ck_http_limits lim;
    ck_http_limits_default(&lim);
    lim.max_header_size = 256;
    lim.max_body_size = 64;
    lim.max_headers = 4;
    char buf[512];
    for (int iter = 0; iter < 20000; iter++) {
        const char *seed = seeds[rng() % CK_ARRAY_SIZE(seeds)];
        size_t len = strlen(seed);
        memcpy(buf, seed, len);
        int mutations = (int)(rng() % 4);
        for (int m = 0; m < mutations; m++) {
            size_t at = rng() % len;
            switch (rng() % 3) {
            case 0:
                buf[at] = (char)rng();
                break;
            case 1: /* Duplicate a slice. */
                if (len + 16 < sizeof(buf)) {
                    memmove(buf + at + 16, buf + at, len - at);
                    len += 16;
                }
                break;
            default:
                memmove(buf + at, buf + at + 1, len - at - 1);
                len--;
                break;
            }
        }
        if (iter % 10 == 0) {
            len = rng() % sizeof(buf);
            for (size_t k = 0; k < len; k++)
                buf[k] = (char)rng();
        }
        struct ck_http_parser p;
        ck_http_parser_init(&p, &lim);
        size_t pos = 0;
        int requests = 0;
        while (pos < len) {
            size_t n = 1 + rng() % (len - pos), used;
            enum ck_http_event ev = ck_http_parser_feed(&p, buf + pos, n, &used);
            assert_true(used <= n);
            pos += used;
            if (ev == CK_HTTP_ERROR) {
                assert_true(p.err_status >= 400 && p.err_status < 600);
                break;
            }
            if (ev == CK_HTTP_REQUEST) {
                requests++;
                assert_int_equal(p.req.path[p.req.path_len], '\0');
                assert_int_equal(p.req.query[p.req.query_len], '\0');
                assert_int_equal(p.req.body[p.req.body_len], '\0');
                assert_true(p.req.body_len <= lim.max_body_size);
                assert_true(p.req.n_headers <= lim.max_headers);
                for (size_t h = 0; h < p.req.n_headers; h++)
                    assert_int_equal(p.req.headers[h].value[p.req.headers[h].value_len], '\0');
                ck_http_parser_next(&p);
            } else {
                assert_int_equal(used, n);
            }
        }
        assert_true(p.arena_cap <= 2 * (lim.max_header_size + lim.max_body_size) + 4096);
        ck_http_parser_free(&p);
    }
}

/* The serializer writes status line, headers, Content-Length and body,
 * drops framing headers from the caller, and knows HEAD, 204 and close. */
static void test_format_response(void **state)
{
    char *buf = NULL;
    size_t cap = 0, len;
    unsigned flags = 0;
    struct ck_http_header h[] = {
        {"X-A", 3, "1", 1},
        {"Content-Length", 14, "999", 3},
        {"Connection", 10, "Close", 5},
    };
    assert_int_equal(ck_http_format_response(&buf, &cap, 404, h, 3, "nope", 4, &flags, &len), 0);
    const char want[] = "HTTP/1.1 404 Not Found\r\nX-A: 1\r\nContent-Length: 4\r\n"
                        "Connection: close\r\n\r\nnope";
    assert_int_equal(len, sizeof(want) - 1);
    assert_memory_equal(buf, want, len);
    assert_true(flags & CK_HTTP_FMT_CLOSE);

    flags = CK_HTTP_FMT_HEAD;
    assert_int_equal(ck_http_format_response(&buf, &cap, 200, NULL, 0, "body", 4, &flags, &len), 0);
    const char head[] = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n";
    assert_int_equal(len, sizeof(head) - 1);
    assert_memory_equal(buf, head, len);

    flags = CK_HTTP_FMT_KEEP_ALIVE;
    assert_int_equal(ck_http_format_response(&buf, &cap, 204, NULL, 0, "x", 1, &flags, &len), 0);
    const char none[] = "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n";
    assert_int_equal(len, sizeof(none) - 1);
    assert_memory_equal(buf, none, len);

    struct ck_http_header bad[] = {{"X", 1, "a\nb", 3}, {"X", 1, "a\rb", 3}, {"X:", 2, "v", 1}};
    for (size_t i = 0; i < CK_ARRAY_SIZE(bad); i++) {
        flags = CK_HTTP_FMT_HEAD;
        assert_int_equal(ck_http_format_response(&buf, &cap, 200, &bad[i], 1, NULL, 0, &flags, &len), CK_EINVAL);
        assert_int_equal(flags, CK_HTTP_FMT_HEAD);
    }
    assert_int_equal(ck_http_format_response(&buf, &cap, 99, NULL, 0, NULL, 0, &flags, &len), CK_EINVAL);
    assert_int_equal(ck_http_format_response(&buf, &cap, 1000, NULL, 0, NULL, 0, &flags, &len), CK_EINVAL);

    assert_int_equal(ck_http_format_error(&buf, &cap, 400, "BAD_REQUEST", "a \"quoted\"\n", &len), 0);
    const char json[] = "{\"error\":{\"code\":\"BAD_REQUEST\",\"message\":\"a \\\"quoted\\\"\\u000a\"}}";
    assert_true(len > sizeof(json) - 1);
    assert_memory_equal(buf + len - (sizeof(json) - 1), json, sizeof(json) - 1);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_with_query),
        cmocka_unit_test(test_get_without_query),
        cmocka_unit_test(test_post_content_length),
        cmocka_unit_test(test_chunked_body),
        cmocka_unit_test(test_keep_alive_sequential),
        cmocka_unit_test(test_pipelining),
        cmocka_unit_test(test_immediate_response_written_in_respond),
        cmocka_unit_test(test_pipelined_burst_answered_immediately),
        cmocka_unit_test(test_deferred_response),
        cmocka_unit_test(test_http10_closes),
        cmocka_unit_test(test_http10_keep_alive),
        cmocka_unit_test(test_connection_close),
        cmocka_unit_test(test_head_has_no_body),
        cmocka_unit_test(test_malformed_request_line),
        cmocka_unit_test(test_header_too_large),
        cmocka_unit_test(test_header_too_large_in_pieces),
        cmocka_unit_test(test_too_many_headers),
        cmocka_unit_test(test_body_too_large_declared),
        cmocka_unit_test(test_body_too_large_chunked),
        cmocka_unit_test(test_max_connections),
        cmocka_unit_test(test_header_timeout),
        cmocka_unit_test(test_body_timeout),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_client_disconnect_in_flight),
        cmocka_unit_test(test_server_close_in_flight),
        cmocka_unit_test(test_respond_rejects_bad_header),
        cmocka_unit_test(test_expect_continue),
        cmocka_unit_test(test_sigpipe_ignored),
        cmocka_unit_test(test_parser_byte_at_a_time),
        cmocka_unit_test(test_parser_errors),
        cmocka_unit_test(test_parser_random_input),
        cmocka_unit_test(test_format_response),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
