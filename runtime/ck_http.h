/*
 * HTTP/1.1 server on libuv, parsed by llhttp.
 *
 * One request at a time per connection: when a request is complete the server
 * stops parsing that connection (pipelined bytes stay buffered) and hands the
 * request to the request callback. The owner answers it, now or later, with
 * ck_http_respond(); then the server writes the response and resumes parsing
 * the buffered bytes. Responses therefore always leave in request order.
 *
 * Limits are explicit (struct ck_http_limits). Input that breaks them or that
 * llhttp rejects gets a JSON error response from the server itself
 * ({"error":{"code":..,"message":..}}: 400 malformed, 408 timeout, 413 body
 * too large, 431 header too large, 503 too many connections) and the
 * connection is closed after the write. Nothing a client sends can crash the
 * process or make it allocate past the limits.
 *
 * Lifetimes: a request is valid from the request callback until the owner
 * calls ck_http_respond() on it, or until the server calls the abort callback
 * for it (its connection closed first, or the server is closing). After either,
 * the owner must not touch it again. Exactly one of the two happens to every
 * request passed to the request callback.
 */
#ifndef CK_HTTP_H
#define CK_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct ck_http_server; /* Opaque. */

struct ck_http_limits {
    size_t max_header_size;     /* Request line + headers, bytes. Default 16 KiB. */
    size_t max_body_size;       /* Decoded body, bytes. Default 1 MiB. */
    unsigned max_headers;       /* Header count. Default 64. */
    unsigned max_connections;   /* Open connections. Default 1024. */
    unsigned header_timeout_ms; /* From first byte of a request to end of headers. Default 10 s. */
    unsigned body_timeout_ms;   /* From end of headers to end of body. Default 30 s. */
    unsigned idle_timeout_ms;   /* Keep-alive idle between requests. Default 60 s. */
};

/* Fill @l with the defaults above. */
void ck_http_limits_default(struct ck_http_limits *l);

struct ck_http_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

struct ck_http_request {
    void *data; /* Owner's slot; the server never touches it. */
    struct ck_http_server *server;
    uint64_t id;        /* Unique per server, increasing. */
    const char *method; /* "GET", ... (NUL-terminated). */
    size_t method_len;
    const char *path; /* Raw URL path, not percent-decoded (NUL-terminated). */
    size_t path_len;
    const char *query; /* Raw query after '?', without it; "" if none (NUL-terminated). */
    size_t query_len;
    const struct ck_http_header *headers; /* Names as sent; values trimmed. */
    size_t n_headers;
    const char *body; /* Decoded body (chunked is de-chunked); "" if none. */
    size_t body_len;
    unsigned short http_major, http_minor;
    bool keep_alive;      /* What the client asked for. */
    char remote_addr[64]; /* "ip:port" of the peer. */
};

/* Called with each complete request. */
typedef void (*ck_http_request_cb)(struct ck_http_request *req);

/* Called when a request handed out earlier will never be answered (its
 * connection closed, or the server is closing). @req is freed on return. */
typedef void (*ck_http_abort_cb)(struct ck_http_request *req);

/* Called once the server has closed every handle and freed its memory. */
typedef void (*ck_http_close_cb)(void *data);

struct ck_http_stats {
    uint64_t connections_accepted;
    uint64_t connections_rejected; /* Over max_connections. */
    uint64_t connections_active;
    uint64_t requests;     /* Handed to the request callback. */
    uint64_t responses;    /* Written, including the server's own errors. */
    uint64_t bad_requests; /* Rejected by the parser or by a limit. */
    uint64_t timeouts;
    uint64_t tls_handshakes; /* TLS connections that completed the handshake. */
    uint64_t tls_failures;   /* TLS connections refused: handshake or record errors. */
};

/* Create a server on @loop. @limits may be NULL for the defaults. @data is the
 * owner's pointer, returned by ck_http_server_data(). Returns NULL on ENOMEM. */
struct ck_http_server *ck_http_server_new(uv_loop_t *loop, const struct ck_http_limits *limits,
                                          ck_http_request_cb on_request, ck_http_abort_cb on_abort, void *data);

void *ck_http_server_data(const struct ck_http_server *s);

/* Bind and listen on @host:@port (IPv4 or IPv6 literal; "" or NULL means
 * 0.0.0.0; port 0 picks a free port). On success stores the bound port in
 * *@bound_port (if not NULL) and returns 0; otherwise a libuv error code. */
int ck_http_server_listen(struct ck_http_server *s, const char *host, int port, int *bound_port);

/* Answer @req. @headers (may be NULL when @n_headers is 0) and @body are
 * copied; the caller keeps ownership. The server adds Content-Length and, when
 * the connection will close, "Connection: close". @status must be 100..999.
 * Returns 0, or CK_EINVAL for a bad status or header (CR/LF in a name or value).
 * On any return @req is consumed and must not be used again. */
int ck_http_respond(struct ck_http_request *req, int status, const struct ck_http_header *headers, size_t n_headers,
                    const void *body, size_t body_len);

/* Stop listening, close every connection (aborting requests in flight through
 * the abort callback) and free the server; then call @cb (may be NULL) with the
 * owner's data. Safe to call once. */
void ck_http_server_close(struct ck_http_server *s, ck_http_close_cb cb);

void ck_http_server_stats(const struct ck_http_server *s, struct ck_http_stats *out);

/* Serve HTTPS from now on with @ctx (a CK_TLS_SERVER context of ck_tls.h; the
 * server takes its own reference), or plain HTTP with NULL. Connections
 * accepted before keep what they started with, so a certificate reloaded on
 * SIGHUP applies to new connections. Returns 0 or CK_ENOMEM. */
struct ssl_ctx_st;
int ck_http_server_set_tls(struct ck_http_server *s, struct ssl_ctx_st *ctx);

/* The message of the last refused TLS handshake ("" if none), for logs. */
const char *ck_http_server_tls_error(const struct ck_http_server *s);

/* The standard reason phrase for @status ("OK", "Not Found"), or "Unknown". */
const char *ck_http_reason(int status);

#endif /* CK_HTTP_H */
