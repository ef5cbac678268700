/*
 * HTTP/1.1 server: llhttp request assembly (the socket-free part, declared in
 * ck_http_internal.h) and the libuv connection machinery (ck_http.h).
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
/* Limits and reason phrases                                                 */
/* ------------------------------------------------------------------------ */

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

const char *ck_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 421:
        return "Misdirected Request";
    case 422:
        return "Unprocessable Entity";
    case 425:
        return "Too Early";
    case 426:
        return "Upgrade Required";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

/* ------------------------------------------------------------------------ */
/* Request assembly (socket-free)                                            */
/* ------------------------------------------------------------------------ */

#define PARSER_ARENA_MIN 1024
/* An arena grown past this by one big request is released afterwards, so
 * that a thousand idle keep-alive connections do not pin a megabyte each. */
#define PARSER_ARENA_KEEP (64 * 1024)

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

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* RFC 9110 token characters, for header names. */
static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
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
        token = is_tchar((unsigned char)p->arena[s->name_off + i]);
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
    while (len > 0 && is_ows(p->arena[off])) {
        off++;
        len--;
    }
    while (len > 0 && is_ows(p->arena[off + len - 1]))
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
    if (p->arena_cap > PARSER_ARENA_KEEP) {
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

/* ------------------------------------------------------------------------ */
/* Response serialization (socket-free)                                      */
/* ------------------------------------------------------------------------ */

static bool name_is(const struct ck_http_header *h, const char *name)
{
    size_t n = strlen(name);
    return h->name_len == n && strncasecmp(h->name, name, n) == 0;
}

/* True if the comma-separated @value contains the token "close". */
static bool value_has_close(const char *v, size_t len)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (is_ows(v[i]) || v[i] == ','))
            i++;
        size_t start = i;
        while (i < len && v[i] != ',')
            i++;
        size_t end = i;
        while (end > start && is_ows(v[end - 1]))
            end--;
        if (end - start == 5 && strncasecmp(v + start, "close", 5) == 0)
            return true;
    }
    return false;
}

static int buf_reserve(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 512;
    while (c < need)
        c *= 2;
    char *b = realloc(*buf, c);
    if (b == NULL)
        return CK_ENOMEM;
    *buf = b;
    *cap = c;
    return 0;
}

static char *put(char *w, const void *s, size_t n)
{
    memcpy(w, s, n);
    return w + n;
}

#define PUT_LIT(w, s) put((w), (s), sizeof(s) - 1)

/* Decimal digits of @v at @w; cheaper than snprintf on the response path. */
static char *put_dec(char *w, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        *w++ = tmp[--n];
    return w;
}

int ck_http_format_response(char **buf, size_t *cap, int status, const struct ck_http_header *headers, size_t n_headers,
                            const void *body, size_t body_len, unsigned *flags, size_t *out_len)
{
    if (status < 100 || status > 999 || (n_headers > 0 && headers == NULL) || (body_len > 0 && body == NULL) ||
        body_len > UINT32_MAX / 2)
        return CK_EINVAL;

    unsigned f = *flags;
    const char *reason = ck_http_reason(status);
    /* Status line, Content-Length, Connection, blank line. */
    size_t need = 9 + 3 + 1 + strlen(reason) + 2 + 16 + 20 + 2 + 24 + 2;
    for (size_t i = 0; i < n_headers; i++) {
        const struct ck_http_header *h = &headers[i];
        if (h->name_len == 0 || h->name == NULL || (h->value_len > 0 && h->value == NULL))
            return CK_EINVAL;
        for (size_t k = 0; k < h->name_len; k++)
            if (!is_tchar((unsigned char)h->name[k]))
                return CK_EINVAL;
        for (size_t k = 0; k < h->value_len; k++) {
            char c = h->value[k];
            if (c == '\r' || c == '\n' || c == '\0')
                return CK_EINVAL;
        }
        if (h->name_len > UINT32_MAX || h->value_len > UINT32_MAX)
            return CK_EINVAL; /* Keeps the sum below from overflowing. */
        need += h->name_len + 2 + h->value_len + 2;
        if (name_is(h, "connection") && value_has_close(h->value, h->value_len))
            f |= CK_HTTP_FMT_CLOSE;
    }
    bool no_body = status < 200 || status == 204 || status == 304;
    bool send_body = !no_body && !(f & CK_HTTP_FMT_HEAD);
    if (send_body)
        need += body_len;
    if (need > UINT32_MAX) /* uv_buf_init() takes an unsigned int. */
        return CK_EINVAL;
    if (buf_reserve(buf, cap, need) != 0)
        return CK_ENOMEM;

    char *w = *buf;
    w = PUT_LIT(w, "HTTP/1.1 ");
    w = put_dec(w, (uint64_t)status); /* 100..999: always three digits. */
    *w++ = ' ';
    w = put(w, reason, strlen(reason));
    w = PUT_LIT(w, "\r\n");
    for (size_t i = 0; i < n_headers; i++) {
        const struct ck_http_header *h = &headers[i];
        if (name_is(h, "content-length") || name_is(h, "transfer-encoding") || name_is(h, "connection"))
            continue;
        w = put(w, h->name, h->name_len);
        w = PUT_LIT(w, ": ");
        w = put(w, h->value, h->value_len);
        w = PUT_LIT(w, "\r\n");
    }
    if (!no_body) {
        w = PUT_LIT(w, "Content-Length: ");
        w = put_dec(w, body_len);
        w = PUT_LIT(w, "\r\n");
    }
    if (f & CK_HTTP_FMT_CLOSE)
        w = PUT_LIT(w, "Connection: close\r\n");
    else if (f & CK_HTTP_FMT_KEEP_ALIVE)
        w = PUT_LIT(w, "Connection: keep-alive\r\n");
    w = PUT_LIT(w, "\r\n");
    if (send_body && body_len > 0)
        w = put(w, body, body_len);

    *flags = f;
    *out_len = (size_t)(w - *buf);
    return 0;
}

/* Escape @s as the inside of a JSON string into @out (NUL-terminated,
 * truncated to fit). */
static void json_escape(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (; *s != '\0' && o + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
}

int ck_http_format_error(char **buf, size_t *cap, int status, const char *code, const char *msg, size_t *out_len)
{
    char esc_code[64], esc_msg[256], body[400];
    json_escape(esc_code, sizeof(esc_code), code);
    json_escape(esc_msg, sizeof(esc_msg), msg);
    int n = snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", esc_code, esc_msg);
    if (n < 0 || (size_t)n >= sizeof(body))
        return CK_EINVAL;
    static const char ct_name[] = "Content-Type", ct_value[] = "application/json";
    struct ck_http_header ct = {ct_name, sizeof(ct_name) - 1, ct_value, sizeof(ct_value) - 1};
    unsigned flags = CK_HTTP_FMT_CLOSE;
    return ck_http_format_response(buf, cap, status, &ct, 1, body, (size_t)n, &flags, out_len);
}

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
    /* Big response buffers (over PARSER_ARENA_KEEP) kept for the next big
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
    if (buf_reserve(&c->tbuf, &c->tbuf_cap, n) != 0)
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
    if (c->wbuf_cap > PARSER_ARENA_KEEP) { /* A big response: give its buffer back. */
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
    if (buf_reserve(&c->pend, &c->pend_cap, c->pend_len + len) != 0)
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
