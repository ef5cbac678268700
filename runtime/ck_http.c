/*
 * HTTP/1.1 server: the libuv connection machinery (ck_http.h).
 *
 * Hot path, per request on a keep-alive connection: one read into the
 * server's shared read buffer, llhttp_execute() copying the request into the
 * connection's arena (paused once in on_headers_complete, where the size of
 * the header section is checked, and once in on_message_complete), the
 * request callback, one response serialized into the connection's reusable
 * write buffer and one uv_write(). No allocation once the buffers have warmed
 * up.
 *
 * Behaviour that ck_http.h leaves open, decided here:
 *  - A timeout of 0 in ck_http_limits disables that deadline. The header
 *    deadline of a new connection runs from the accept, so a client that
 *    connects and sends nothing is closed (silently: nothing to answer).
 *    An idle keep-alive connection is closed silently too; a request cut off
 *    in its headers or body gets 408. A response write that does not finish
 *    within idle_timeout_ms closes the connection.
 *  - The next pipelined request is parsed only once the previous response
 *    has been written (its write callback), so one write buffer per
 *    connection suffices and a client that does not read stalls itself.
 *  - EOF or a read error while the owner holds a request aborts it: a client
 *    that half-closes after sending is treated as gone.
 *  - If ck_http_respond() refuses the owner's response (CK_EINVAL), the
 *    client gets a 500 {"error":{"code":"INTERNAL",...}} and the connection
 *    closes; the request is consumed and never aborted.
 *  - Server-initiated closes shut the socket down and drop input for up to
 *    CK_HTTP_LINGER_MS, so that the client reads the error response rather
 *    than a reset caused by its unread bytes (e.g. an early 413).
 *  - Upgrade and CONNECT requests are handed over like others, but the
 *    connection closes after the response.
 *  - ck_http_server_new() sets SIGPIPE to SIG_IGN if it is still SIG_DFL.
 *
 * The socket-free halves live beside it: request assembly on llhttp in
 * ck_http_parser.c, response serialization in ck_http_format.c (both behind
 * ck_http_internal.h, which the unit tests and the fuzz target drive).
 */
#include "ck_http.h"

#include "ck_common.h"
#include "ck_http_internal.h"
#include "ck_tls.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------------ */
/* Connections                                                               */
/* ------------------------------------------------------------------------ */

/* After a server-initiated close the socket is shut down (FIN) and further
 * input is read and dropped for at most this long, so that the client reads
 * our response instead of a reset caused by its unread bytes. */
#define CK_HTTP_LINGER_MS 2000
/* Bytes buffered while a request is being handled; beyond this the
 * connection stops reading until the response is written. */
#define CK_HTTP_PENDING_MAX (64 * 1024)
/* The server's shared read buffer. */
#define CK_HTTP_READ_BUF (64 * 1024)
#define CK_HTTP_SPARES 64                       /* Big buffers kept per server... */
#define CK_HTTP_SPARE_BYTES (64u * 1024 * 1024) /* ...holding at most this much. */

enum conn_state {
    CONN_READING,  /* Parsing input; no request in the owner's hands. */
    CONN_HANDLING, /* The owner holds the request. */
    CONN_WRITING,  /* A response write is in flight. */
    CONN_LINGER,   /* Shut down; dropping input until EOF or the timer. */
    CONN_CLOSED,   /* uv_close called; waiting for the close callbacks. */
};

enum conn_timer {
    TIMER_NONE,
    TIMER_HEADER,
    TIMER_BODY,
    TIMER_IDLE,
    TIMER_WRITE,
    TIMER_LINGER,
};

struct ck_http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer; /* One timer for every deadline of the connection. */
    uv_write_t write_req;
    uv_write_t continue_req;
    uv_shutdown_t shutdown_req;
    struct ck_http_server *server;
    struct ck_http_conn *prev, *next;
    struct ck_http_parser parser;
    enum conn_state state;
    enum conn_timer timer_kind;
    int open_handles; /* Freed when both tcp and timer have closed. */
    bool reading;
    bool rejected; /* Over max_connections: only a 503 is written. */
    bool close_after_write;
    char *pend; /* Received but not yet parsed (pipelined) bytes. */
    size_t pend_off, pend_len, pend_cap;
    char *wbuf; /* Reused response buffer. */
    size_t wbuf_cap;
    /* HTTPS: the session (NULL for plain HTTP) and the ciphertext of the
     * response in flight (the handshake, 100-continue and alerts go out in
     * writes of their own, see conn_tls_flush). */
    struct ck_tls *tls;
    char *tbuf;
    size_t tbuf_cap;
};

struct ck_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    struct ck_http_limits limits;
    ck_http_request_cb on_request;
    ck_http_abort_cb on_abort;
    ck_http_close_cb close_cb;
    void *data;
    struct ck_http_conn *conns;
    unsigned n_active;    /* Served connections (not rejected), open. */
    unsigned n_rejecting; /* Rejected connections still writing their 503. */
    uint64_t next_id;
    struct ck_http_stats stats;
    bool closing;
    bool listener_closed;
    /* libuv on Unix calls alloc_cb and read_cb back to back for one stream
     * and we consume or copy every read before returning, so one buffer per
     * server serves all connections. */
    char rbuf[CK_HTTP_READ_BUF];
    /* Big response buffers (over CK_HTTP_BUF_KEEP) kept for the next big
     * response on any connection: a large /cluster otherwise costs an mmap,
     * page faults and an munmap per request. */
    char *spare[CK_HTTP_SPARES];
    size_t spare_cap[CK_HTTP_SPARES];
    unsigned n_spare;
    size_t spare_bytes;
    SSL_CTX *tls; /* New connections speak TLS with it when set. */
    char *plain;  /* TLS: decrypted input, CK_HTTP_READ_BUF bytes. */
    char tls_error[384];
};

static void conn_close(struct ck_http_conn *c);
static void conn_feed(struct ck_http_conn *c, const char *data, size_t len, bool from_pend);
static void conn_start_reading(struct ck_http_conn *c);
static void conn_write(struct ck_http_conn *c, size_t len, bool close_after);

static void server_maybe_finish(struct ck_http_server *s)
{
    if (!s->closing || !s->listener_closed || s->conns != NULL)
        return;
    ck_http_close_cb cb = s->close_cb;
    void *data = s->data;
    for (unsigned i = 0; i < s->n_spare; i++)
        free(s->spare[i]);
    SSL_CTX_free(s->tls);
    free(s->plain);
    free(s);
    if (cb != NULL)
        cb(data);
}

static void conn_timer_arm(struct ck_http_conn *c, enum conn_timer kind, unsigned ms);

static void conn_free(struct ck_http_conn *c)
{
    struct ck_http_server *s = c->server;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    ck_http_parser_free(&c->parser);
    free(c->pend);
    free(c->wbuf);
    if (c->tls != NULL) {
        ck_tls_free(c->tls);
        free(c->tls);
        free(c->tbuf);
    }
    free(c);
    server_maybe_finish(s);
}

static void conn_on_handle_closed(uv_handle_t *h)
{
    struct ck_http_conn *c = h->data;
    if (--c->open_handles == 0)
        conn_free(c);
}

/* Start closing @c. If the owner holds a request, it is aborted first, while
 * its memory is still valid. Idempotent. */
static void conn_close(struct ck_http_conn *c)
{
    if (c->state == CONN_CLOSED)
        return;
    struct ck_http_server *s = c->server;
    enum conn_state was = c->state;
    c->state = CONN_CLOSED;
    if (c->rejected)
        s->n_rejecting--;
    else
        s->n_active--;
    uv_close((uv_handle_t *)&c->tcp, conn_on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, conn_on_handle_closed);
    if (was == CONN_HANDLING && s->on_abort != NULL)
        s->on_abort(&c->parser.req);
}

static void conn_on_timer(uv_timer_t *t)
{
    struct ck_http_conn *c = t->data;
    struct ck_http_server *s = c->server;
    enum conn_timer kind = c->timer_kind;
    c->timer_kind = TIMER_NONE;
    switch (kind) {
    case TIMER_HEADER:
    case TIMER_BODY:
        s->stats.timeouts++;
        if (kind == TIMER_HEADER && c->parser.phase != CK_HTTP_HEADERS) {
            conn_close(c); /* Nothing of a request arrived: nobody to answer. */
            return;
        }
        {
            size_t len;
            if (ck_http_format_error(&c->wbuf, &c->wbuf_cap, 408, "TIMEOUT", "request timed out", &len) != 0) {
                conn_close(c);
                return;
            }
            conn_write(c, len, true);
        }
        return;
    case TIMER_WRITE:
        s->stats.timeouts++;
        conn_close(c);
        return;
    case TIMER_IDLE:
    case TIMER_LINGER:
    case TIMER_NONE:
        conn_close(c);
        return;
    }
}

/* Arm the connection's single timer; @ms 0 disables that deadline. */
static void conn_timer_arm(struct ck_http_conn *c, enum conn_timer kind, unsigned ms)
{
    c->timer_kind = kind;
    if (kind == TIMER_NONE || ms == 0) {
        uv_timer_stop(&c->timer);
        return;
    }
    uv_timer_start(&c->timer, conn_on_timer, ms, 0);
}

static void conn_on_shutdown(uv_shutdown_t *req, int status)
{
    struct ck_http_conn *c = req->data;
    if (status < 0)
        conn_close(c); /* No-op when the shutdown was cancelled by a close. */
}

/* ---- TLS ----
 *
 * Ciphertext the session produces outside a response (handshake messages,
 * session tickets, 100-continue, alerts) goes out in writes of its own, each
 * with a copy; the response in flight uses c->tbuf and c->write_req, so the
 * response path keeps its one write per response. */

struct tls_aux_write {
    uv_write_t req;
    char data[];
};

static void conn_on_aux_written(uv_write_t *req, int status)
{
    struct ck_http_conn *c = req->data;
    free(req);
    if (status < 0 && status != UV_ECANCELED && c->state != CONN_CLOSED)
        conn_close(c);
}

/* Write whatever the session holds. Returns 0 or -1 (then close). */
static int conn_tls_flush(struct ck_http_conn *c)
{
    size_t n = ck_tls_pending(c->tls);
    if (n == 0)
        return 0;
    struct tls_aux_write *w = malloc(sizeof(*w) + n);
    if (w == NULL)
        return -1;
    size_t got = ck_tls_take(c->tls, w->data, n);
    w->req.data = c;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)got);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, conn_on_aux_written) != 0) {
        free(w);
        return -1;
    }
    return 0;
}

/* Encrypt @len bytes of @data into c->tbuf; the ciphertext length in *@out. */
static int conn_tls_seal(struct ck_http_conn *c, const char *data, size_t len, size_t *out)
{
    if (ck_tls_write(c->tls, data, len) != 0)
        return -1;
    size_t n = ck_tls_pending(c->tls);
    if (ck_http_buf_reserve(&c->tbuf, &c->tbuf_cap, n) != 0)
        return -1;
    *out = ck_tls_take(c->tls, c->tbuf, n);
    return 0;
}

static void conn_linger(struct ck_http_conn *c);

static void conn_tls_failed(struct ck_http_conn *c)
{
    struct ck_http_server *s = c->server;
    s->stats.tls_failures++;
    snprintf(s->tls_error, sizeof(s->tls_error), "%s: %s", c->parser.req.remote_addr, c->tls->err);
    /* Send the alert that says why (the client then reports "unknown ca"
     * rather than a reset), then close once it is out. */
    if (c->state == CONN_HANDLING) {
        conn_close(c);
        return;
    }
    conn_linger(c);
}

/* Server-initiated close: FIN, then drop input until the client closes. */
static void conn_linger(struct ck_http_conn *c)
{
    if (c->tls != NULL) {
        ck_tls_shutdown(c->tls); /* close_notify (none after a failure), queued before the FIN. */
        if (conn_tls_flush(c) != 0) {
            conn_close(c);
            return;
        }
    }
    c->state = CONN_LINGER;
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, conn_on_shutdown) != 0) {
        conn_close(c);
        return;
    }
    conn_timer_arm(c, TIMER_LINGER, CK_HTTP_LINGER_MS);
    if (!c->reading)
        conn_start_reading(c);
}

/* The response is out: give a big buffer back, then read the next request
 * (or linger before the close). */
static void conn_written(struct ck_http_conn *c)
{
    c->server->stats.responses++;
    if (c->wbuf_cap > CK_HTTP_BUF_KEEP) { /* A big response: give its buffer back. */
        struct ck_http_server *s = c->server;
        if (s->n_spare < CK_HTTP_SPARES && s->spare_bytes + c->wbuf_cap <= CK_HTTP_SPARE_BYTES) {
            s->spare[s->n_spare] = c->wbuf;
            s->spare_cap[s->n_spare++] = c->wbuf_cap;
            s->spare_bytes += c->wbuf_cap;
        } else {
            free(c->wbuf);
        }
        c->wbuf = NULL;
        c->wbuf_cap = 0;
    }
    if (c->close_after_write) {
        conn_linger(c);
        return;
    }
    c->state = CONN_READING;
    conn_timer_arm(c, TIMER_IDLE, c->server->limits.idle_timeout_ms);
    if (!c->reading) {
        conn_start_reading(c);
        if (c->state == CONN_CLOSED)
            return;
    }
    if (c->pend_len > 0)
        conn_feed(c, c->pend + c->pend_off, c->pend_len, true);
}

static void conn_on_write(uv_write_t *req, int status)
{
    struct ck_http_conn *c = req->data;
    if (c->state == CONN_CLOSED)
        return; /* Cancelled by the close; the close callbacks free @c. */
    if (status < 0) {
        conn_close(c);
        return;
    }
    conn_written(c);
}

/* Write the first @len bytes of c->wbuf as the response to the current
 * request (or as the server's own error). */
static void conn_write(struct ck_http_conn *c, size_t len, bool close_after)
{
    c->state = CONN_WRITING;
    c->close_after_write = close_after;
    c->write_req.data = c;
    uv_buf_t b = uv_buf_init(c->wbuf, (unsigned)len);
    if (c->tls != NULL) {
        size_t n;
        if (conn_tls_seal(c, c->wbuf, len, &n) != 0) {
            conn_close(c);
            return;
        }
        b = uv_buf_init(c->tbuf, (unsigned)n);
    }
    /* Most responses fit the socket buffer: try to write them now. A write
     * that completes inside uv_write still goes through libuv's pending
     * queue, whose drain stops POLLOUT on the watcher, and libuv 1.44 then
     * re-arms it with an epoll_ctl(MOD) although nothing changed: one extra
     * system call per request (strace -c: as many epoll_ctl as writes).
     * Done synchronously, the write needs no request and no callback.
     * Only when nothing is pipelined behind this request: conn_written()
     * would parse and dispatch the next one from inside this call, and a
     * pipelined burst would recurse once per request. uv_try_write itself
     * refuses (EAGAIN) while earlier writes (a 100 Continue, TLS records)
     * are queued, so bytes never overtake each other. */
    if (c->pend_len == 0) {
        int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n == (int)b.len) {
            conn_written(c);
            return;
        }
        if (n > 0) {
            b.base += n;
            b.len -= (unsigned)n;
        } else if (n != UV_EAGAIN) {
            conn_close(c);
            return;
        }
    }
    if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &b, 1, conn_on_write) != 0) {
        conn_close(c);
        return;
    }
    conn_timer_arm(c, TIMER_WRITE, c->server->limits.idle_timeout_ms);
}

/* Answer a request the server rejects itself, then close. */
static void conn_fail(struct ck_http_conn *c, int status, const char *code, const char *msg)
{
    size_t len;
    if (ck_http_format_error(&c->wbuf, &c->wbuf_cap, status, code, msg, &len) != 0) {
        conn_close(c);
        return;
    }
    conn_write(c, len, true);
}

static void conn_on_continue_written(uv_write_t *req, int status)
{
    struct ck_http_conn *c = req->data;
    if (status < 0 && c->state != CONN_CLOSED)
        conn_close(c);
}

static void conn_send_continue(struct ck_http_conn *c)
{
    static const char msg[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (c->tls != NULL) {
        if (ck_tls_write(c->tls, msg, sizeof(msg) - 1) != 0 || conn_tls_flush(c) != 0)
            conn_close(c);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)msg, sizeof(msg) - 1);
    c->continue_req.data = c;
    if (uv_write(&c->continue_req, (uv_stream_t *)&c->tcp, &b, 1, conn_on_continue_written) != 0)
        conn_close(c);
}

static int conn_pend_append(struct ck_http_conn *c, const char *data, size_t len)
{
    if (c->pend_off > 0 && c->pend_len > 0)
        memmove(c->pend, c->pend + c->pend_off, c->pend_len);
    c->pend_off = 0;
    if (ck_http_buf_reserve(&c->pend, &c->pend_cap, c->pend_len + len) != 0)
        return CK_ENOMEM;
    memcpy(c->pend + c->pend_len, data, len);
    c->pend_len += len;
    return 0;
}

static void conn_dispatch(struct ck_http_conn *c)
{
    struct ck_http_server *s = c->server;
    struct ck_http_request *r = &c->parser.req;
    c->state = CONN_HANDLING;
    conn_timer_arm(c, TIMER_NONE, 0);
    r->server = s;
    r->id = ++s->next_id;
    r->data = NULL;
    s->stats.requests++;
    s->on_request(r);
    /* The owner may have answered (CONN_WRITING), closed the server
     * (CONN_CLOSED) or kept the request (CONN_HANDLING); the write callback
     * or ck_http_respond() carries on from here. */
}

/* Parse @data; stops at a complete request, which is dispatched with the
 * unparsed rest left in c->pend. */
static void conn_feed(struct ck_http_conn *c, const char *data, size_t len, bool from_pend)
{
    struct ck_http_parser *p = &c->parser;
    const struct ck_http_limits *lim = &c->server->limits;
    while (len > 0 && c->state == CONN_READING) {
        size_t used;
        enum ck_http_event ev = ck_http_parser_feed(p, data, len, &used);
        data += used;
        len -= used;
        if (from_pend) {
            c->pend_off += used;
            c->pend_len -= used;
            if (c->pend_len == 0) {
                c->pend_off = 0;
                if (c->pend_cap > CK_HTTP_PENDING_MAX) {
                    free(c->pend);
                    c->pend = NULL;
                    c->pend_cap = 0;
                }
            }
        }
        if (ev == CK_HTTP_ERROR) {
            c->server->stats.bad_requests++;
            conn_fail(c, p->err_status, p->err_code, p->err_msg);
            return;
        }
        if (ev == CK_HTTP_REQUEST) {
            if (!from_pend && len > 0 && conn_pend_append(c, data, len) != 0) {
                conn_close(c);
                return;
            }
            conn_dispatch(c);
            return;
        }
        /* Need more: the deadline follows the phase. */
        if (p->phase == CK_HTTP_HEADERS && c->timer_kind != TIMER_HEADER)
            conn_timer_arm(c, TIMER_HEADER, lim->header_timeout_ms);
        else if (p->phase == CK_HTTP_BODY && c->timer_kind != TIMER_BODY)
            conn_timer_arm(c, TIMER_BODY, lim->body_timeout_ms);
        if (p->expect_continue && p->phase == CK_HTTP_BODY) {
            p->expect_continue = false;
            conn_send_continue(c);
        }
        if (p->phase == CK_HTTP_CLOSED)
            return;
    }
}

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct ck_http_conn *c = h->data;
    *buf = uv_buf_init(c->server->rbuf, sizeof(c->server->rbuf));
}

static void conn_on_plain(struct ck_http_conn *c, uv_stream_t *stream, const char *data, size_t n);

static void conn_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct ck_http_conn *c = stream->data;
    if (nread == 0 || c->state == CONN_CLOSED)
        return;
    if (nread < 0) {
        /* EOF or error. A request in the owner's hands is aborted: a client
         * that half-closes after sending is treated as gone. */
        conn_close(c);
        return;
    }
    if (c->tls == NULL) {
        conn_on_plain(c, stream, buf->base, (size_t)nread);
        return;
    }
    if (c->state == CONN_LINGER)
        return;
    struct ck_http_server *s = c->server;
    bool was_handshaken = c->tls->handshaken;
    if (ck_tls_push(c->tls, buf->base, (size_t)nread) != 0) {
        conn_tls_failed(c);
        return;
    }
    /* Decrypt record by record into the server's plaintext buffer and treat
     * each piece as if it had been read in the clear. */
    while (c->state != CONN_CLOSED && c->state != CONN_LINGER) {
        ssize_t got = ck_tls_read(c->tls, s->plain, CK_HTTP_READ_BUF);
        if (!was_handshaken && c->tls->handshaken) {
            was_handshaken = true;
            s->stats.tls_handshakes++;
        }
        if (got == CK_TLS_AGAIN)
            break;
        if (got == CK_TLS_EOF) {
            conn_close(c);
            return;
        }
        if (got < 0) {
            conn_tls_failed(c);
            return;
        }
        conn_on_plain(c, stream, s->plain, (size_t)got);
    }
    if (c->state != CONN_CLOSED && conn_tls_flush(c) != 0)
        conn_close(c);
}

static void conn_on_plain(struct ck_http_conn *c, uv_stream_t *stream, const char *data, size_t n)
{
    if (c->state == CONN_LINGER || c->close_after_write || c->parser.phase == CK_HTTP_CLOSED ||
        (c->parser.phase == CK_HTTP_DONE && c->parser.must_close))
        return; /* No further request will be read from this connection. */
    if (c->state == CONN_READING && c->pend_len == 0) {
        conn_feed(c, data, n, false); /* Fast path: straight from the read buffer. */
        return;
    }
    if (conn_pend_append(c, data, n) != 0) {
        conn_close(c);
        return;
    }
    if (c->state == CONN_READING) {
        conn_feed(c, c->pend + c->pend_off, c->pend_len, true);
    } else if (c->pend_len >= CK_HTTP_PENDING_MAX) {
        uv_read_stop(stream); /* Back-pressure until the response is out. */
        c->reading = false;
    }
}

static void conn_start_reading(struct ck_http_conn *c)
{
    if (uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read) != 0) {
        conn_close(c);
        return;
    }
    c->reading = true;
}

static void conn_set_remote(struct ck_http_conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    char *out = c->parser.req.remote_addr;
    size_t cap = sizeof(c->parser.req.remote_addr);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
            uv_ip6_name(a, ip, sizeof(ip));
            port = ntohs(a->sin6_port);
            snprintf(out, cap, "[%s]:%d", ip, port);
            return;
        }
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        uv_ip4_name(a, ip, sizeof(ip));
        port = ntohs(a->sin_port);
    }
    snprintf(out, cap, "%s:%d", ip, port);
}

static void server_on_connection(uv_stream_t *listener, int status)
{
    struct ck_http_server *s = listener->data;
    if (status < 0 || s->closing)
        return;
    struct ck_http_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return; /* The pending connection stays in the backlog. */
    c->server = s;
    ck_http_parser_init(&c->parser, &s->limits);
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    c->state = CONN_READING;

    bool reject = s->n_active >= s->limits.max_connections;
    if (reject) {
        c->rejected = true;
        s->n_rejecting++;
        s->stats.connections_rejected++;
    } else {
        s->n_active++;
        s->stats.connections_accepted++;
    }
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    if (reject) {
        /* Answer politely while that stays cheap; past that, just close.
         * (HTTPS: just close; a 503 would cost a handshake.) */
        if (s->n_rejecting > s->limits.max_connections + 16 || s->tls != NULL) {
            conn_close(c);
            return;
        }
        conn_fail(c, 503, "TOO_MANY_CONNECTIONS", "too many connections");
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    conn_set_remote(c);
    if (s->tls != NULL) {
        c->tls = malloc(sizeof(*c->tls));
        if (c->tls == NULL || ck_tls_init(c->tls, s->tls, CK_TLS_SERVER, NULL) != 0) {
            free(c->tls);
            c->tls = NULL;
            conn_close(c);
            return;
        }
    }
    /* The connect starts the first request's header deadline, so a client
     * that connects and says nothing is dropped like a slow one. */
    conn_timer_arm(c, TIMER_HEADER, s->limits.header_timeout_ms);
    conn_start_reading(c);
}

/* ------------------------------------------------------------------------ */
/* Public API                                                                */
/* ------------------------------------------------------------------------ */

struct ck_http_server *ck_http_server_new(uv_loop_t *loop, const struct ck_http_limits *limits,
                                          ck_http_request_cb on_request, ck_http_abort_cb on_abort, void *data)
{
    if (loop == NULL || on_request == NULL)
        return NULL;
    ck_ignore_sigpipe();
    struct ck_http_server *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->loop = loop;
    if (limits != NULL)
        s->limits = *limits;
    else
        ck_http_limits_default(&s->limits);
    s->on_request = on_request;
    s->on_abort = on_abort;
    s->data = data;
    if (uv_tcp_init(loop, &s->listener) != 0) {
        free(s);
        return NULL;
    }
    s->listener.data = s;
    return s;
}

void *ck_http_server_data(const struct ck_http_server *s)
{
    return s->data;
}

int ck_http_server_listen(struct ck_http_server *s, const char *host, int port, int *bound_port)
{
    if (s->closing)
        return UV_EINVAL;
    if (host == NULL || host[0] == '\0')
        host = "0.0.0.0";
    struct sockaddr_storage ss;
    int rc;
    if (strchr(host, ':') != NULL)
        rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
    else
        rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    if (rc != 0)
        return rc;
    rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (rc != 0)
        return rc;
    rc = uv_listen((uv_stream_t *)&s->listener, 511, server_on_connection);
    if (rc != 0)
        return rc;
    if (bound_port != NULL) {
        int len = sizeof(ss);
        rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len);
        if (rc != 0)
            return rc;
        *bound_port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                               : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    return 0;
}

static struct ck_http_conn *conn_of(struct ck_http_request *req)
{
    return (struct ck_http_conn *)((char *)req - offsetof(struct ck_http_conn, parser.req));
}

int ck_http_respond(struct ck_http_request *req, int status, const struct ck_http_header *headers, size_t n_headers,
                    const void *body, size_t body_len)
{
    if (req == NULL)
        return CK_EINVAL;
    struct ck_http_conn *c = conn_of(req);
    if (c->state != CONN_HANDLING)
        return CK_EINVAL; /* Already answered or aborted: a bug in the owner. */
    struct ck_http_parser *p = &c->parser;
    unsigned flags = 0;
    if (p->must_close || c->server->closing)
        flags |= CK_HTTP_FMT_CLOSE;
    else if (req->http_major == 1 && req->http_minor == 0)
        flags |= CK_HTTP_FMT_KEEP_ALIVE;
    if (req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0)
        flags |= CK_HTTP_FMT_HEAD;
    struct ck_http_server *s = c->server;
    if (body_len > c->wbuf_cap && s->n_spare > 0) { /* Reuse a big buffer. */
        free(c->wbuf);
        c->wbuf = s->spare[--s->n_spare];
        c->wbuf_cap = s->spare_cap[s->n_spare];
        s->spare_bytes -= c->wbuf_cap;
    }
    size_t len;
    int rc = ck_http_format_response(&c->wbuf, &c->wbuf_cap, status, headers, n_headers, body, body_len, &flags, &len);
    /* The request is consumed either way: its strings may have been the
     * response's source, so the arena is reset only now. */
    ck_http_parser_next(p);
    if (rc != 0) {
        /* The owner's response was unusable; the client still gets an
         * answer and the connection is not reused. */
        c->state = CONN_READING;
        conn_fail(c, 500, "INTERNAL", rc == CK_ENOMEM ? "out of memory" : "invalid response");
        return rc;
    }
    conn_write(c, len, (flags & CK_HTTP_FMT_CLOSE) != 0);
    return 0;
}

static void server_on_listener_closed(uv_handle_t *h)
{
    struct ck_http_server *s = h->data;
    s->listener_closed = true;
    server_maybe_finish(s);
}

void ck_http_server_close(struct ck_http_server *s, ck_http_close_cb cb)
{
    if (s == NULL || s->closing)
        return;
    s->closing = true;
    s->close_cb = cb;
    uv_close((uv_handle_t *)&s->listener, server_on_listener_closed);
    /* conn_close never frees synchronously, so the list stays walkable even
     * if an abort callback re-enters the server. */
    for (struct ck_http_conn *c = s->conns; c != NULL; c = c->next)
        conn_close(c);
}

int ck_http_server_set_tls(struct ck_http_server *s, SSL_CTX *ctx)
{
    if (ctx != NULL && s->plain == NULL) {
        s->plain = malloc(CK_HTTP_READ_BUF);
        if (s->plain == NULL)
            return CK_ENOMEM;
    }
    if (ctx != NULL)
        SSL_CTX_up_ref(ctx);
    SSL_CTX_free(s->tls);
    s->tls = ctx;
    return 0;
}

const char *ck_http_server_tls_error(const struct ck_http_server *s)
{
    return s->tls_error;
}

void ck_http_server_stats(const struct ck_http_server *s, struct ck_http_stats *out)
{
    *out = s->stats;
    out->connections_active = s->n_active;
}
