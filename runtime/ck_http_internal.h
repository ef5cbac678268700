/*
 * The socket-free half of the HTTP server: request assembly on top of llhttp
 * and limit checks (ck_http_parser.c), and response serialization
 * (ck_http_format.c). ck_http.c wires them to libuv; unit tests and the fuzz
 * target drive them directly with arbitrary bytes.
 *
 * A parser assembles one request at a time. ck_http_parser_feed() consumes
 * bytes until the request is complete (CK_HTTP_REQUEST: the request is in
 * p->req and the bytes after it are NOT consumed), until it needs more input
 * (CK_HTTP_NEED_MORE: everything was consumed), or until the input is rejected
 * (CK_HTTP_ERROR: p->err_status, p->err_code and p->err_msg say why; the error
 * is sticky). After a request, ck_http_parser_next() readies the parser for
 * the next one; the request's strings are invalid from then on.
 *
 * Every string of a request is a NUL-terminated copy in the parser's arena, so
 * input buffers may be reused as soon as feed returns. The arena never grows
 * past the limits: header bytes are checked before they are copied, and the
 * body is checked against Content-Length and each chunk size before it arrives.
 */
#ifndef CK_HTTP_INTERNAL_H
#define CK_HTTP_INTERNAL_H

#include "ck_http.h"

#include <llhttp.h>
#include <string.h>

enum ck_http_phase {
    CK_HTTP_IDLE,    /* Between requests: nothing of the next one seen yet. */
    CK_HTTP_HEADERS, /* Inside the request line or the header section. */
    CK_HTTP_BODY,    /* Headers complete, body (or chunk trailers) pending. */
    CK_HTTP_DONE,    /* A complete request sits in p->req. */
    CK_HTTP_CLOSED,  /* The last request asked to close: input is ignored. */
};

enum ck_http_event {
    CK_HTTP_NEED_MORE,
    CK_HTTP_REQUEST,
    CK_HTTP_ERROR,
};

/* Arena offsets of one header while the arena may still move. */
struct ck_http_hspan {
    size_t name_off, name_len;
    size_t value_off, value_len;
};

struct ck_http_parser {
    llhttp_t ll;
    const struct ck_http_limits *limits;
    struct ck_http_request req; /* Filled when feed returns CK_HTTP_REQUEST. */
    enum ck_http_phase phase;

    char *arena; /* URL, header names and values, body; each NUL-terminated. */
    size_t arena_len, arena_cap;
    size_t elem_off; /* Where the element being received (URL, name, value) began. */
    size_t url_off, url_len;
    struct ck_http_hspan *spans; /* Parallel arrays, capacity headers_cap <= max_headers. */
    struct ck_http_header *headers;
    size_t n_headers, headers_cap;
    size_t body_off, body_len;
    size_t trailer_bytes; /* Chunked trailers are counted and dropped. */

    uint64_t fed;       /* Bytes consumed since init. */
    uint64_t msg_start; /* Value of fed where the current request began. */
    const char *chunk;  /* Start of the buffer being executed (for positions). */

    bool expect_continue; /* Client sent "Expect: 100-continue" and a body is due. */
    bool must_close;      /* No request may follow this one (keep-alive off, upgrade). */

    int err_status;       /* 0, or the HTTP status of the rejection. */
    const char *err_code; /* "BAD_REQUEST", "HEADER_TOO_LARGE", ... */
    const char *err_msg;  /* Static text, safe to show to the client. */
};

/* Ready @p to parse requests under @limits (kept by pointer; must outlive @p). */
void ck_http_parser_init(struct ck_http_parser *p, const struct ck_http_limits *limits);

/* Free the arena and header arrays. @p may be re-initialized afterwards. */
void ck_http_parser_free(struct ck_http_parser *p);

/* Parse @data. Sets *@consumed to the bytes used and returns the event (see
 * the top of this file). Must not be called while a request is pending
 * (phase CK_HTTP_DONE) before ck_http_parser_next(). */
enum ck_http_event ck_http_parser_feed(struct ck_http_parser *p, const char *data, size_t len, size_t *consumed);

/* Forget the current request and resume parsing. Shrinks an arena that a big
 * request grew, so that idle connections stay small. */
void ck_http_parser_next(struct ck_http_parser *p);

/* An arena or buffer that one big request or response grew past this is
 * released afterwards, so that a thousand idle keep-alive connections do not
 * pin a megabyte each. */
#define CK_HTTP_BUF_KEEP (64 * 1024)

/* Grow *@buf (capacity *@cap; doubling, from 512) to hold @need bytes.
 * Returns 0 or CK_ENOMEM (*@buf unchanged). */
int ck_http_buf_reserve(char **buf, size_t *cap, size_t need);

/* Optional whitespace of RFC 9110 §5.6.3: SP or HTAB. */
static inline bool ck_http_is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* RFC 9110 token characters, for header names. */
static inline bool ck_http_is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Flags for ck_http_format_response(). */
enum {
    CK_HTTP_FMT_CLOSE = 1,      /* Add "Connection: close". Also set on return if a header asked for it. */
    CK_HTTP_FMT_KEEP_ALIVE = 2, /* Add "Connection: keep-alive" (HTTP/1.0 clients need it). */
    CK_HTTP_FMT_HEAD = 4,       /* Answering HEAD: Content-Length of @body, but no body bytes. */
};

/* Serialize a response into *@buf (capacity *@cap; grown with realloc, and
 * kept by the caller for reuse). Header names must be tokens and values free
 * of CR, LF and NUL; a "Content-Length", "Transfer-Encoding" or "Connection"
 * header from the caller is dropped (the server writes its own), but a
 * "Connection" value containing "close" adds CK_HTTP_FMT_CLOSE to *@flags.
 * 1xx, 204 and 304 responses carry neither Content-Length nor body.
 * Returns 0 and the length in *@out_len, CK_EINVAL (nothing written, *@flags
 * unchanged) or CK_ENOMEM. */
int ck_http_format_response(char **buf, size_t *cap, int status, const struct ck_http_header *headers, size_t n_headers,
                            const void *body, size_t body_len, unsigned *flags, size_t *out_len);

/* Serialize the server's own JSON error response
 * {"error":{"code":@code,"message":@msg}} with "Connection: close". */
int ck_http_format_error(char **buf, size_t *cap, int status, const char *code, const char *msg, size_t *out_len);

#endif /* CK_HTTP_INTERNAL_H */
