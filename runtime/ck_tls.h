/*
 * TLS for every socket clusterkit owns: the HTTP server, the Lua HTTP client
 * and the raft transport. OpenSSL (Debian's libssl-dev) does the protocol over
 * memory BIOs; the callers keep their own libuv sockets and move ciphertext
 * between them and a struct ck_tls:
 *
 *     network bytes --ck_tls_push()--> [ck_tls] --ck_tls_read()--> plaintext
 *     plaintext --ck_tls_write()--> [ck_tls] --ck_tls_take()--> network bytes
 *
 * After every push or write, whatever ck_tls_pending() reports must go to the
 * network (the handshake answers, session tickets and alerts come out that
 * way too, not only application data).
 *
 * Contexts (SSL_CTX) are made from files by ck_tls_ctx_new(), which checks
 * what OpenSSL alone would accept quietly: that the key matches the
 * certificate and that the certificate is valid now. A context is shared by
 * reference: each connection's SSL holds one, so replacing a server's context
 * on SIGHUP (ck_http_server_set_tls, ck_transport_set_tls) leaves the
 * connections already open on the old one until they close.
 *
 * The raft transport cannot use this byte interface directly: raft reads and
 * writes the uv_stream_t the transport hands it. ck_tls_pump wraps a TCP
 * connection in TLS and gives back one end of a socketpair carrying the
 * plaintext (see below).
 */
#ifndef CK_TLS_H
#define CK_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <openssl/ssl.h>
#include <uv.h>

enum ck_tls_role { CK_TLS_SERVER, CK_TLS_CLIENT };

struct ck_tls_config {
    const char *cert_file; /* PEM certificate chain (leaf first). Server: required. Client: optional (mTLS). */
    const char *key_file;  /* PEM private key of cert_file. */
    const char *ca_file;   /* PEM CA bundle peers are verified against. Client: NULL = the system's store. */
    /* Server: require a client certificate signed by ca_file (mutual TLS).
     * Client: servers are always verified (chain and host name). */
    bool verify_peers;
};

/* Build a context. Returns NULL on failure with a one-line message in @err
 * that names the file and says what is wrong ("TLS_CERT /x.pem: the
 * certificate expired on Jan  1 00:00:00 2025 GMT"). */
SSL_CTX *ck_tls_ctx_new(const struct ck_tls_config *c, enum ck_tls_role role, char *err, size_t errlen);

/* The certificate's expiry as "Mon DD HH:MM:SS YYYY GMT" and its serial in
 * hex, for logs and /metrics; "" when the context has none. */
void ck_tls_ctx_describe(SSL_CTX *ctx, char *not_after, size_t na_len, char *serial, size_t s_len);

enum {
    CK_TLS_AGAIN = 0,  /* ck_tls_read: no plaintext until more input arrives. */
    CK_TLS_EOF = -1,   /* The peer sent close_notify. */
    CK_TLS_ERROR = -2, /* Handshake or record failure: t->err says why. */
};

struct ck_tls {
    SSL *ssl;
    BIO *net_in;  /* Ciphertext from the network, read by OpenSSL. */
    BIO *net_out; /* Ciphertext OpenSSL produced, for the network. */
    bool handshaken;
    bool failed; /* Sticky: every later read or write returns CK_TLS_ERROR with the first err. */
    char err[256];
};

/* Start a session on @ctx. A client names the server it expects in @peer
 * (host name or IP literal, checked against the certificate; also sent as
 * SNI when it is a name). Returns 0 or CK_TLS_ERROR. */
int ck_tls_init(struct ck_tls *t, SSL_CTX *ctx, enum ck_tls_role role, const char *peer);
void ck_tls_free(struct ck_tls *t);

/* Hand over ciphertext received from the network. */
int ck_tls_push(struct ck_tls *t, const void *data, size_t len);

/* Run the handshake and decrypt: returns the number of plaintext bytes put in
 * @buf (> 0), CK_TLS_AGAIN, CK_TLS_EOF or CK_TLS_ERROR. Call until it stops
 * returning data; t->handshaken turns true on the way. */
ssize_t ck_tls_read(struct ck_tls *t, char *buf, size_t cap);

/* Encrypt @len bytes (all of them: the output BIO grows). Only after the
 * handshake (t->handshaken). Returns 0 or CK_TLS_ERROR. */
int ck_tls_write(struct ck_tls *t, const void *data, size_t len);

/* Queue a close_notify alert (then take it like any output). */
void ck_tls_shutdown(struct ck_tls *t);

/* Ciphertext waiting for the network, and a copy of up to @cap of it. */
size_t ck_tls_pending(const struct ck_tls *t);
size_t ck_tls_take(struct ck_tls *t, char *buf, size_t cap);

/*
 * The pump: TLS over a connected TCP socket, plaintext on a socketpair.
 *
 * ck_tls_pump_start() takes the TCP handle over and initializes @outer (the
 * caller's memory, not yet initialized) as a uv_pipe_t on the plaintext end
 * of a socketpair. The caller reads and writes @outer as if it were the TCP
 * connection and closes it with uv_close (freeing it itself). The pump runs
 * the handshake, forwards in both directions (plaintext the caller writes
 * before the handshake completes is held, up to 1 MiB, and sent after it),
 * and tears everything down when either side ends: the caller then reads EOF
 * on @outer, and closing @outer closes the TCP connection. A handshake or
 * record failure is reported once through on_error (with the reason) before
 * the teardown; on_close says the pump is gone (the TCP handle closed and
 * given to free_tcp), so that an owner that must outlive its pumps (the
 * raft transport) can wait for it. Returns 0, or a negative code with
 * nothing taken over (@tcp is still the caller's, @outer untouched).
 */
struct ck_tls_pump_cbs {
    void (*on_error)(void *data, const char *msg); /* Optional. */
    void (*on_handshake)(void *data);              /* Optional: the handshake completed (peer verified). */
    void (*on_close)(void *data);                  /* Optional. */
    void (*free_tcp)(uv_handle_t *tcp);            /* Optional: frees the TCP handle's memory. */
    void *data;
};

int ck_tls_pump_start(uv_loop_t *loop, uv_tcp_t *tcp, uv_pipe_t *outer, SSL_CTX *ctx, enum ck_tls_role role,
                      const char *peer, const struct ck_tls_pump_cbs *cbs);

#endif /* CK_TLS_H */
