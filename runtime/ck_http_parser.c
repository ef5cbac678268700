/*
 * HTTP request assembly on llhttp, socket-free (ck_http_internal.h): limits,
 * the parser's callbacks and its arena. ck_http.c feeds it from libuv; the
 * unit tests and the fuzz target feed it arbitrary bytes.
 *
 * Notes on llhttp 8.1 that shaped this file (verified against Debian's
 * sources, which build in loose mode, LLHTTP_STRICT_MODE 0):
 *
 *  - Pausing: on_message_complete returns HPE_PAUSED; llhttp_execute() then
 *    returns HPE_PAUSED with llhttp_get_error_pos() pointing just past the
 *    request. After llhttp_resume(), execution continues by feeding the bytes
 *    from that position again; they were not consumed. on_headers_complete
 *    may pause too: resuming then runs llhttp__after_headers_complete (body
 *    framing, upgrade) exactly as if the callback had returned 0.
 *  - llhttp_should_keep_alive() must be read inside on_message_complete (or
 *    earlier): resuming runs llhttp__after_message_complete, which clears the
 *    parser's flags and with them F_CONNECTION_CLOSE/F_CONNECTION_KEEP_ALIVE.
 *  - Return codes differ by callback kind. A data callback (on_url, ...)
 *    returning -1 makes execute return HPE_USER; on_headers_complete returning
 *    -1 (or HPE_USER) gives HPE_CB_HEADERS_COMPLETE; *_complete callbacks give
 *    their own HPE_CB_* code. So the reason a callback refused input is kept
 *    in our struct (err_status/err_code/err_msg), never inferred from errno.
 *  - llhttp has no size limits of its own (Node enforces max header size
 *    outside the parser). Header bytes are counted here by position: a data
 *    callback's `at + length` relative to the executed buffer.
 *  - Header values are delivered with trailing whitespace ("x  ") and, in
 *    loose mode, obs-fold continuation lines arrive as a second value span
 *    (" folded") without the CRLF. Values are trimmed after assembly.
 *  - Empty header values still get an on_header_value call with length 0,
 *    followed by on_header_value_complete; spans of one element may come in
 *    several calls when the element crosses reads.
 *  - Chunked trailers are reported through on_header_field/on_header_value
 *    after the body. They are dropped here (but counted against the limit).
 *  - After a request that does not keep the connection alive (HTTP/1.0
 *    without keep-alive, "Connection: close"), loose mode silently discards
 *    any further bytes rather than failing. Upgrade/CONNECT requests end with
 *    HPE_PAUSED_UPGRADE after resume. We never resume such a parser: the
 *    connection closes after the response (phase CK_HTTP_CLOSED).
 *  - Loose mode does not check header names: "Bad Name: x" and ": x" pass
 *    (only whitespace before the colon is refused). Names are checked to be
 *    tokens here, in on_header_field_complete.
 *  - Bare LF is accepted after the request line but rejected after a header
 *    value ("Invalid header value char"); both are fine for a server.
 *  - llhttp_status_name() abort()s on codes it does not know, so reason
 *    phrases come from our own table (ck_http_reason).
 */
#include "ck_common.h"
#include "ck_http_internal.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

void ck_http_limits_default(struct ck_http_limits *l)
{
    l->max_header_size = 16 * 1024;
    l->max_body_size = 1024 * 1024;
    l->max_headers = 64;
    l->max_connections = 1024;
    l->header_timeout_ms = 10 * 1000;
    l->body_timeout_ms = 30 * 1000;
    l->idle_timeout_ms = 60 * 1000;
}

/* ------------------------------------------------------------------------ */
/* Request assembly (socket-free)                                            */
/* ------------------------------------------------------------------------ */

#define PARSER_ARENA_MIN 1024

static void parser_fail(struct ck_http_parser *p, int status, const char *code, const char *msg)
{
    if (p->err_status == 0) {
        p->err_status = status;
        p->err_code = code;
        p->err_msg = msg;
    }
}

static void parser_fail_nomem(struct ck_http_parser *p)
{
    parser_fail(p, 500, "INTERNAL", "out of memory");
}

/* Append @n bytes to the arena, keeping room for one more (a NUL). */
static int parser_append(struct ck_http_parser *p, const char *data, size_t n)
{
    size_t need = p->arena_len + n + 1;
    if (need > p->arena_cap) {
        size_t cap = p->arena_cap ? p->arena_cap : PARSER_ARENA_MIN;
        while (cap < need)
            cap *= 2;
        char *a = realloc(p->arena, cap);
        if (a == NULL)
            return CK_ENOMEM;
        p->arena = a;
        p->arena_cap = cap;
    }
    if (n > 0)
        memcpy(p->arena + p->arena_len, data, n);
    p->arena_len += n;
    return 0;
}

/* Close the element that began at elem_off with a NUL; return its offset. */
static int parser_end_elem(struct ck_http_parser *p, size_t *off, size_t *len)
{
    if (parser_append(p, "", 0) != 0) /* Makes room for the NUL. */
        return CK_ENOMEM;
    *off = p->elem_off;
    *len = p->arena_len - p->elem_off;
    p->arena[p->arena_len++] = '\0';
    p->elem_off = p->arena_len;
    return 0;
}

static struct ck_http_parser *parser_of(llhttp_t *ll)
{
    return (struct ck_http_parser *)ll->data;
}

/* Bytes of the current request up to @end, a pointer into the buffer being
 * executed. Counting by position includes whitespace and CRLFs that llhttp
 * skips without a callback. */
static uint64_t parser_bytes_to(const struct ck_http_parser *p, const char *end)
{
    return p->fed + (uint64_t)(end - p->chunk) - p->msg_start;
}

/* Shared by the request line and header data callbacks: check the header
 * section's size before copying anything. */
static int parser_header_data(llhttp_t *ll, const char *at, size_t len)
{
    struct ck_http_parser *p = parser_of(ll);
    if (p->phase == CK_HTTP_BODY) {
        /* Chunked trailers: dropped, but bounded like a header section. */
        p->trailer_bytes += len;
        if (p->trailer_bytes > p->limits->max_header_size) {
            parser_fail(p, 431, "HEADER_TOO_LARGE", "request trailer section too large");
            return -1;
        }
        return 0;
    }
    if (parser_bytes_to(p, at + len) > p->limits->max_header_size) {
        parser_fail(p, 431, "HEADER_TOO_LARGE", "request header section too large");
        return -1;
    }
    if (parser_append(p, at, len) != 0) {
        parser_fail_nomem(p);
        return -1;
    }
    return 0;
}

static int parser_on_message_begin(llhttp_t *ll)
{
    parser_of(ll)->phase = CK_HTTP_HEADERS;
    return 0;
}

static int parser_on_url_complete(llhttp_t *ll)
{
    struct ck_http_parser *p = parser_of(ll);
    if (parser_end_elem(p, &p->url_off, &p->url_len) != 0) {
        parser_fail_nomem(p);
        return -1;
    }
    return 0;
}

static int parser_on_header_field_complete(llhttp_t *ll)
{
    struct ck_http_parser *p = parser_of(ll);
    if (p->phase == CK_HTTP_BODY)
        return 0;
    if (p->n_headers >= p->limits->max_headers) {
        parser_fail(p, 431, "HEADER_TOO_LARGE", "too many headers");
        return -1;
    }
    if (p->n_headers == p->headers_cap) {
        size_t cap = p->headers_cap ? p->headers_cap * 2 : 16; /* The check above bounds it. */
        struct ck_http_hspan *s = realloc(p->spans, cap * sizeof(*s));
        if (s == NULL) {
            parser_fail_nomem(p);
            return -1;
        }
        p->spans = s;
        struct ck_http_header *h = realloc(p->headers, cap * sizeof(*h));
        if (h == NULL) {
            parser_fail_nomem(p);
            return -1;
        }
        p->headers = h;
        p->headers_cap = cap;
    }
    struct ck_http_hspan *s = &p->spans[p->n_headers];
    if (parser_end_elem(p, &s->name_off, &s->name_len) != 0) {
        parser_fail_nomem(p);
        return -1;
    }
    /* llhttp 8.1 in loose mode accepts "Bad Name: x" and ": x". */
    bool token = s->name_len > 0;
    for (size_t i = 0; token && i < s->name_len; i++)
        token = ck_http_is_tchar((unsigned char)p->arena[s->name_off + i]);
    if (!token) {
        parser_fail(p, 400, "BAD_REQUEST", "invalid header name");
        return -1;
    }
    return 0;
}

static int parser_on_header_value_complete(llhttp_t *ll)
{
    struct ck_http_parser *p = parser_of(ll);
    if (p->phase == CK_HTTP_BODY)
        return 0;
    if (p->n_headers >= p->headers_cap) { /* llhttp always sends a name first; be sure. */
        parser_fail(p, 400, "BAD_REQUEST", "header value without a name");
        return -1;
    }
    struct ck_http_hspan *s = &p->spans[p->n_headers];
    size_t off, len;
    if (parser_end_elem(p, &off, &len) != 0) {
        parser_fail_nomem(p);
        return -1;
    }
    while (len > 0 && ck_http_is_ows(p->arena[off])) {
        off++;
        len--;
    }
    while (len > 0 && ck_http_is_ows(p->arena[off + len - 1]))
        len--;
    p->arena[off + len] = '\0';
    s->value_off = off;
    s->value_len = len;
    p->n_headers++;
    return 0;
}

static bool header_is(const struct ck_http_parser *p, const struct ck_http_hspan *s, const char *name,
                      const char *value)
{
    size_t nl = strlen(name), vl = strlen(value);
    return s->name_len == nl && strncasecmp(p->arena + s->name_off, name, nl) == 0 && s->value_len == vl &&
           strncasecmp(p->arena + s->value_off, value, vl) == 0;
}

/* Pauses, so that ck_http_parser_feed() learns where the header section
 * ends (llhttp_get_error_pos) and runs parser_headers_done() there. */
static int parser_on_headers_complete(llhttp_t *ll)
{
    parser_of(ll)->phase = CK_HTTP_BODY;
    return HPE_PAUSED;
}

/* The header section ended just before @end. Only here is its full size
 * known whatever the reads were: the data callbacks count up to the last
 * element, the check at the end of each feed up to the end of that buffer,
 * and neither sees the bytes that llhttp skips without a callback when the
 * section ends inside the buffer (the spaces before the version, the final
 * CRLFs). Returns 0, or -1 with the parser failed. */
static int parser_headers_done(struct ck_http_parser *p, const char *end)
{
    llhttp_t *ll = &p->ll;
    if (parser_bytes_to(p, end) > p->limits->max_header_size) {
        parser_fail(p, 431, "HEADER_TOO_LARGE", "request header section too large");
        return -1;
    }
    /* A declared body over the limit is refused now, before the client
     * sends it (and before any 100 Continue). */
    if ((ll->flags & F_CONTENT_LENGTH) && !(ll->flags & F_CHUNKED) && ll->content_length > p->limits->max_body_size) {
        parser_fail(p, 413, "BODY_TOO_LARGE", "request body too large");
        return -1;
    }
    bool body_due = (ll->flags & F_CHUNKED) || ll->content_length > 0;
    if (body_due && (ll->http_major > 1 || (ll->http_major == 1 && ll->http_minor >= 1))) {
        for (size_t i = 0; i < p->n_headers; i++) {
            if (header_is(p, &p->spans[i], "expect", "100-continue")) {
                p->expect_continue = true;
                break;
            }
        }
    }
    p->body_off = p->arena_len;
    p->body_len = 0;
    return 0;
}

/* Called with each chunk's declared size: refuse a growing chunked body as
 * soon as its next chunk would pass the limit. */
static int parser_on_chunk_header(llhttp_t *ll)
{
    struct ck_http_parser *p = parser_of(ll);
    if (ll->content_length > p->limits->max_body_size - p->body_len) {
        parser_fail(p, 413, "BODY_TOO_LARGE", "request body too large");
        return -1;
    }
    return 0;
}

static int parser_on_body(llhttp_t *ll, const char *at, size_t len)
{
    struct ck_http_parser *p = parser_of(ll);
    if (len > p->limits->max_body_size - p->body_len) {
        parser_fail(p, 413, "BODY_TOO_LARGE", "request body too large");
        return -1;
    }
    if (parser_append(p, at, len) != 0) {
        parser_fail_nomem(p);
        return -1;
    }
    p->body_len += len;
    return 0;
}

static int parser_on_message_complete(llhttp_t *ll)
{
    struct ck_http_parser *p = parser_of(ll);
    struct ck_http_request *r = &p->req;

    if (parser_append(p, "", 0) != 0) {
        parser_fail_nomem(p);
        return -1;
    }
    if (p->phase != CK_HTTP_BODY) /* Defensive: headers_complete always runs first. */
        p->body_off = p->arena_len;
    p->arena[p->body_off + p->body_len] = '\0';
    p->phase = CK_HTTP_DONE;

    /* The arena no longer moves: resolve offsets into pointers. */
    char *url = p->arena + p->url_off;
    char *q = memchr(url, '?', p->url_len);
    r->path = url;
    if (q != NULL) {
        *q = '\0';
        r->path_len = (size_t)(q - url);
        r->query = q + 1;
        r->query_len = p->url_len - r->path_len - 1;
    } else {
        r->path_len = p->url_len;
        r->query = url + p->url_len; /* The URL's NUL: "". */
        r->query_len = 0;
    }
    for (size_t i = 0; i < p->n_headers; i++) {
        p->headers[i].name = p->arena + p->spans[i].name_off;
        p->headers[i].name_len = p->spans[i].name_len;
        p->headers[i].value = p->arena + p->spans[i].value_off;
        p->headers[i].value_len = p->spans[i].value_len;
    }
    r->headers = p->headers;
    r->n_headers = p->n_headers;
    r->body = p->arena + p->body_off;
    r->body_len = p->body_len;
    r->method = llhttp_method_name((llhttp_method_t)ll->method);
    r->method_len = strlen(r->method);
    r->http_major = ll->http_major;
    r->http_minor = ll->http_minor;
    /* Read now: resuming clears the flags this depends on. */
    r->keep_alive = llhttp_should_keep_alive(ll) != 0;
    p->must_close = !r->keep_alive || ll->upgrade;
    return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
    .on_message_begin = parser_on_message_begin,
    .on_url = parser_header_data,
    .on_header_field = parser_header_data,
    .on_header_value = parser_header_data,
    .on_headers_complete = parser_on_headers_complete,
    .on_body = parser_on_body,
    .on_message_complete = parser_on_message_complete,
    .on_url_complete = parser_on_url_complete,
    .on_header_field_complete = parser_on_header_field_complete,
    .on_header_value_complete = parser_on_header_value_complete,
    .on_chunk_header = parser_on_chunk_header,
};

static void parser_reset_request(struct ck_http_parser *p)
{
    char remote[sizeof(p->req.remote_addr)];
    memcpy(remote, p->req.remote_addr, sizeof(remote));
    memset(&p->req, 0, sizeof(p->req));
    memcpy(p->req.remote_addr, remote, sizeof(remote));
    p->arena_len = 0;
    p->elem_off = 0;
    p->url_off = p->url_len = 0;
    p->n_headers = 0;
    p->body_off = p->body_len = 0;
    p->trailer_bytes = 0;
    p->expect_continue = false;
}

void ck_http_parser_init(struct ck_http_parser *p, const struct ck_http_limits *limits)
{
    memset(p, 0, sizeof(*p));
    llhttp_init(&p->ll, HTTP_REQUEST, &parser_settings);
    p->ll.data = p;
    p->limits = limits;
    p->phase = CK_HTTP_IDLE;
}

void ck_http_parser_free(struct ck_http_parser *p)
{
    free(p->arena);
    free(p->spans);
    free(p->headers);
    p->arena = NULL;
    p->spans = NULL;
    p->headers = NULL;
    p->arena_cap = p->headers_cap = 0;
}

enum ck_http_event ck_http_parser_feed(struct ck_http_parser *p, const char *data, size_t len, size_t *consumed)
{
    *consumed = 0;
    if (p->err_status != 0)
        return CK_HTTP_ERROR;
    if (p->phase == CK_HTTP_DONE)
        return CK_HTTP_REQUEST; /* Misuse: the pending request was not released. */
    if (p->phase == CK_HTTP_CLOSED) {
        *consumed = len;
        p->fed += len;
        return CK_HTTP_NEED_MORE;
    }
    if (len == 0)
        return CK_HTTP_NEED_MORE;

    p->chunk = data;
    llhttp_errno_t e = llhttp_execute(&p->ll, data, len);
    if (e == HPE_PAUSED && p->phase == CK_HTTP_BODY) {
        /* Paused by on_headers_complete, just past the header section. A
         * feed ends with its request, so this happens once per feed at most. */
        const char *end = llhttp_get_error_pos(&p->ll);
        if (parser_headers_done(p, end) != 0)
            return CK_HTTP_ERROR;
        llhttp_resume(&p->ll);
        e = llhttp_execute(&p->ll, end, (size_t)(data + len - end));
    }
    if (e == HPE_OK) {
        *consumed = len;
        p->fed += len;
        /* Catches what no callback saw: whitespace, CRLF-only input. */
        if ((p->phase == CK_HTTP_IDLE || p->phase == CK_HTTP_HEADERS) &&
            p->fed - p->msg_start > p->limits->max_header_size) {
            parser_fail(p, 431, "HEADER_TOO_LARGE", "request header section too large");
            return CK_HTTP_ERROR;
        }
        return CK_HTTP_NEED_MORE;
    }
    if (e == HPE_PAUSED && p->phase == CK_HTTP_DONE) {
        size_t used = (size_t)(llhttp_get_error_pos(&p->ll) - data);
        *consumed = used;
        p->fed += used;
        p->msg_start = p->fed;
        return CK_HTTP_REQUEST;
    }
    const char *reason = llhttp_get_error_reason(&p->ll);
    parser_fail(p, 400, "BAD_REQUEST", reason != NULL ? reason : "malformed request");
    return CK_HTTP_ERROR;
}

void ck_http_parser_next(struct ck_http_parser *p)
{
    if (p->phase != CK_HTTP_DONE)
        return;
    bool closed = p->must_close;
    parser_reset_request(p);
    if (p->arena_cap > CK_HTTP_BUF_KEEP) {
        free(p->arena);
        p->arena = NULL;
        p->arena_cap = 0;
    }
    if (closed) {
        /* Never resume: after an upgrade llhttp would stop with
         * HPE_PAUSED_UPGRADE, and the connection closes anyway. */
        p->phase = CK_HTTP_CLOSED;
        return;
    }
    p->phase = CK_HTTP_IDLE;
    llhttp_resume(&p->ll);
}
