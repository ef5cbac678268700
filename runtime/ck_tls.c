/*
 * TLS contexts, memory-BIO sessions and the socketpair pump (see ck_tls.h).
 */
#include "ck_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "ck_common.h"

/* ------------------------------------------------------------------------
 * Contexts
 * --------------------------------------------------------------------- */

/* The reason of the oldest queued OpenSSL error ("no such file", "bad end
 * line", ...), and the queue cleared. */
static const char *ossl_reason(void)
{
    unsigned long e = ERR_get_error();
    ERR_clear_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    return r != NULL ? r : "unknown OpenSSL error";
}

static void asn1_time_text(const ASN1_TIME *t, char *out, size_t cap)
{
    out[0] = '\0';
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL) {
        return;
    }
    if (ASN1_TIME_print(b, t) == 1) {
        int n = BIO_read(b, out, (int)cap - 1);
        out[n > 0 ? n : 0] = '\0';
    }
    BIO_free(b);
}

static bool readable(const char *what, const char *path, char *err, size_t errlen)
{
    if (access(path, R_OK) != 0) {
        snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
        return false;
    }
    return true;
}

static bool check_validity(SSL_CTX *ctx, const char *path, char *err, size_t errlen)
{
    X509 *x = SSL_CTX_get0_certificate(ctx);
    if (x == NULL) {
        snprintf(err, errlen, "TLS_CERT %s: no certificate in the file", path);
        return false;
    }
    char when[64];
    if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0) {
        asn1_time_text(X509_get0_notAfter(x), when, sizeof(when));
        snprintf(err, errlen, "TLS_CERT %s: the certificate expired on %s; renew it, then restart or send SIGHUP", path,
                 when);
        return false;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0) {
        asn1_time_text(X509_get0_notBefore(x), when, sizeof(when));
        snprintf(err, errlen, "TLS_CERT %s: the certificate is not valid before %s (is the clock right?)", path, when);
        return false;
    }
    return true;
}

SSL_CTX *ck_tls_ctx_new(const struct ck_tls_config *c, enum ck_tls_role role, char *err, size_t errlen)
{
    err[0] = '\0';
    bool has_cert = c->cert_file != NULL && c->cert_file[0] != '\0';
    bool has_key = c->key_file != NULL && c->key_file[0] != '\0';
    bool has_ca = c->ca_file != NULL && c->ca_file[0] != '\0';
    if (has_cert != has_key) {
        snprintf(err, errlen, "TLS_CERT and TLS_KEY go together: set both or neither");
        return NULL;
    }
    if (role == CK_TLS_SERVER && !has_cert) {
        snprintf(err, errlen, "a TLS server needs TLS_CERT and TLS_KEY");
        return NULL;
    }
    if (role == CK_TLS_SERVER && c->verify_peers && !has_ca) {
        snprintf(err, errlen, "TLS_VERIFY_PEERS needs TLS_CA: the CA that signs the peers' certificates");
        return NULL;
    }
    if ((has_cert && !readable("TLS_CERT", c->cert_file, err, errlen)) ||
        (has_key && !readable("TLS_KEY", c->key_file, err, errlen)) ||
        (has_ca && !readable("TLS_CA", c->ca_file, err, errlen))) {
        return NULL;
    }

    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(role == CK_TLS_SERVER ? TLS_server_method() : TLS_client_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "TLS: %s", ossl_reason());
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (has_cert) {
        if (SSL_CTX_use_certificate_chain_file(ctx, c->cert_file) != 1) {
            snprintf(err, errlen, "TLS_CERT %s: not a PEM certificate (%s)", c->cert_file, ossl_reason());
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, c->key_file, SSL_FILETYPE_PEM) != 1) {
            unsigned long e = ERR_peek_error();
            if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH) {
                goto mismatch;
            }
            snprintf(err, errlen, "TLS_KEY %s: not a PEM private key (%s)", c->key_file, ossl_reason());
            goto fail;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
        mismatch:
            ERR_clear_error();
            snprintf(err, errlen, "TLS_KEY %s does not match the certificate in TLS_CERT %s", c->key_file,
                     c->cert_file);
            goto fail;
        }
        if (!check_validity(ctx, c->cert_file, err, errlen)) {
            goto fail;
        }
    }
    if (has_ca) {
        if (SSL_CTX_load_verify_locations(ctx, c->ca_file, NULL) != 1) {
            snprintf(err, errlen, "TLS_CA %s: not a PEM CA certificate (%s)", c->ca_file, ossl_reason());
            goto fail;
        }
    } else if (role == CK_TLS_CLIENT) {
        SSL_CTX_set_default_verify_paths(ctx);
    }
    if (role == CK_TLS_CLIENT) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else if (c->verify_peers) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(c->ca_file);
        if (names != NULL) {
            SSL_CTX_set_client_CA_list(ctx, names);
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    ERR_clear_error();
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

void ck_tls_ctx_describe(SSL_CTX *ctx, char *not_after, size_t na_len, char *serial, size_t s_len)
{
    not_after[0] = '\0';
    serial[0] = '\0';
    X509 *x = ctx != NULL ? SSL_CTX_get0_certificate(ctx) : NULL;
    if (x == NULL) {
        return;
    }
    asn1_time_text(X509_get0_notAfter(x), not_after, na_len);
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn != NULL ? BN_bn2hex(bn) : NULL;
    if (hex != NULL) {
        snprintf(serial, s_len, "%s", hex);
    }
    OPENSSL_free(hex);
    BN_free(bn);
}

/* ------------------------------------------------------------------------
 * Sessions
 * --------------------------------------------------------------------- */

int ck_tls_init(struct ck_tls *t, SSL_CTX *ctx, enum ck_tls_role role, const char *peer)
{
    memset(t, 0, sizeof(*t));
    t->ssl = SSL_new(ctx);
    t->net_in = BIO_new(BIO_s_mem());
    t->net_out = BIO_new(BIO_s_mem());
    if (t->ssl == NULL || t->net_in == NULL || t->net_out == NULL) {
        snprintf(t->err, sizeof(t->err), "TLS: out of memory");
        BIO_free(t->net_in);
        BIO_free(t->net_out);
        SSL_free(t->ssl);
        memset(t, 0, sizeof(*t));
        return CK_TLS_ERROR;
    }
    SSL_set_bio(t->ssl, t->net_in, t->net_out); /* The SSL owns both BIOs from here. */
    if (role == CK_TLS_SERVER) {
        SSL_set_accept_state(t->ssl);
        return 0;
    }
    SSL_set_connect_state(t->ssl);
    if (peer != NULL && peer[0] != '\0') {
        unsigned char addr[16];
        int ok;
        if (inet_pton(AF_INET, peer, addr) == 1 || inet_pton(AF_INET6, peer, addr) == 1) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), peer);
        } else {
            ok = SSL_set1_host(t->ssl, peer) && SSL_set_tlsext_host_name(t->ssl, peer);
        }
        if (ok != 1) {
            snprintf(t->err, sizeof(t->err), "TLS: cannot verify the host name %s", peer);
            ck_tls_free(t);
            return CK_TLS_ERROR;
        }
    }
    return 0;
}

void ck_tls_free(struct ck_tls *t)
{
    SSL_free(t->ssl); /* Frees the BIOs too. */
    t->ssl = NULL;
    t->net_in = t->net_out = NULL;
}

int ck_tls_push(struct ck_tls *t, const void *data, size_t len)
{
    if (len > 0 && BIO_write(t->net_in, data, (int)len) != (int)len) {
        snprintf(t->err, sizeof(t->err), "TLS: out of memory");
        return CK_TLS_ERROR;
    }
    return 0;
}

/* Why @rv from SSL_do_handshake/SSL_read failed, or CK_TLS_AGAIN. */
static int session_failed(struct ck_tls *t, int rv)
{
    int e = SSL_get_error(t->ssl, rv);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        return CK_TLS_AGAIN;
    }
    if (e == SSL_ERROR_ZERO_RETURN) {
        return CK_TLS_EOF;
    }
    t->failed = true;
    long v = SSL_get_verify_result(t->ssl);
    const char *reason = e == SSL_ERROR_SSL ? ossl_reason() : "the connection broke off";
    ERR_clear_error();
    if (!t->handshaken && v != X509_V_OK) {
        snprintf(t->err, sizeof(t->err), "TLS handshake failed: %s (%s)", reason, X509_verify_cert_error_string(v));
    } else {
        snprintf(t->err, sizeof(t->err), "TLS %s failed: %s", t->handshaken ? "record" : "handshake", reason);
    }
    return CK_TLS_ERROR;
}

ssize_t ck_tls_read(struct ck_tls *t, char *buf, size_t cap)
{
    if (t->failed) {
        return CK_TLS_ERROR;
    }
    ERR_clear_error();
    if (!t->handshaken) {
        int rv = SSL_do_handshake(t->ssl);
        if (rv != 1) {
            return session_failed(t, rv);
        }
        t->handshaken = true;
    }
    int n = SSL_read(t->ssl, buf, (int)(cap > INT32_MAX ? INT32_MAX : cap));
    return n > 0 ? n : session_failed(t, n);
}

int ck_tls_write(struct ck_tls *t, const void *data, size_t len)
{
    if (t->failed) {
        return CK_TLS_ERROR;
    }
    if (!t->handshaken) {
        snprintf(t->err, sizeof(t->err), "TLS: write before the handshake completed");
        return CK_TLS_ERROR;
    }
    ERR_clear_error();
    const char *p = data;
    while (len > 0) {
        int chunk = len > (1u << 30) ? 1 << 30 : (int)len;
        int n = SSL_write(t->ssl, p, chunk);
        if (n <= 0) {
            int rv = session_failed(t, n);
            return rv == CK_TLS_AGAIN ? (snprintf(t->err, sizeof(t->err), "TLS: write blocked"), CK_TLS_ERROR) : rv;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

void ck_tls_shutdown(struct ck_tls *t)
{
    if (t->handshaken && !t->failed) {
        SSL_shutdown(t->ssl);
        ERR_clear_error();
    }
}

size_t ck_tls_pending(const struct ck_tls *t)
{
    return t->net_out != NULL ? (size_t)BIO_ctrl_pending(t->net_out) : 0;
}

size_t ck_tls_take(struct ck_tls *t, char *buf, size_t cap)
{
    int n = BIO_read(t->net_out, buf, (int)(cap > INT32_MAX ? INT32_MAX : cap));
    return n > 0 ? (size_t)n : 0;
}

/* ------------------------------------------------------------------------
 * The pump
 *
 * Two handles: the TCP connection (ciphertext) and our end of a socketpair
 * (plaintext; the caller has the other end). Bytes read on one side are
 * written to the other through the session. Each side's write queue is
 * bounded: past PUMP_HIGH bytes queued towards a side, the pump stops reading
 * the other side until the queue drains (so a peer that stops reading cannot
 * make this process buffer without limit).
 * --------------------------------------------------------------------- */

#define PUMP_HIGH (8u << 20)
#define PUMP_EARLY_MAX (1u << 20)
#define PUMP_CHUNK 65536

struct ck_tls_pump {
    uv_tcp_t *tcp;
    uv_pipe_t inner; /* Our end of the socketpair. */
    struct ck_tls tls;
    struct ck_tls_pump_cbs cbs;
    bool inner_reading, tcp_reading, closing, inner_eof;
    int open_handles;
    char *early; /* Plaintext from the caller before the handshake completed. */
    size_t early_len;
    char buf[PUMP_CHUNK];
};

struct pump_write {
    uv_write_t req;
    struct ck_tls_pump *p;
    char data[];
};

static void pump_close(struct ck_tls_pump *p);
static void pump_tcp_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void pump_inner_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void pump_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct ck_tls_pump *p = h->data;
    buf->base = p->buf;
    buf->len = sizeof(p->buf);
}

static void pump_handle_closed(uv_handle_t *h)
{
    struct ck_tls_pump *p = h->data;
    if (h == (uv_handle_t *)p->tcp && p->cbs.free_tcp != NULL) {
        p->cbs.free_tcp(h);
    }
    if (--p->open_handles == 0) {
        struct ck_tls_pump_cbs cbs = p->cbs;
        ck_tls_free(&p->tls);
        free(p->early);
        free(p);
        if (cbs.on_close != NULL) {
            cbs.on_close(cbs.data);
        }
    }
}

static void pump_close(struct ck_tls_pump *p)
{
    if (p->closing) {
        return;
    }
    p->closing = true;
    uv_close((uv_handle_t *)p->tcp, pump_handle_closed);
    uv_close((uv_handle_t *)&p->inner, pump_handle_closed);
}

static void pump_fail(struct ck_tls_pump *p, const char *msg)
{
    if (!p->closing && p->cbs.on_error != NULL) {
        p->cbs.on_error(p->cbs.data, msg);
    }
    pump_close(p);
}

/* Resume reading a side whose peer's queue drained (see PUMP_HIGH). */
static void pump_resume(struct ck_tls_pump *p)
{
    if (p->closing) {
        return;
    }
    if (!p->tcp_reading && uv_stream_get_write_queue_size((uv_stream_t *)&p->inner) < PUMP_HIGH / 2) {
        p->tcp_reading = uv_read_start((uv_stream_t *)p->tcp, pump_alloc, pump_tcp_read) == 0;
    }
    if (!p->inner_reading && !p->inner_eof && uv_stream_get_write_queue_size((uv_stream_t *)p->tcp) < PUMP_HIGH / 2) {
        p->inner_reading = uv_read_start((uv_stream_t *)&p->inner, pump_alloc, pump_inner_read) == 0;
    }
}

static void pump_on_write(uv_write_t *req, int status)
{
    struct pump_write *w = (struct pump_write *)req;
    struct ck_tls_pump *p = w->p;
    free(w);
    if (status != 0) {
        pump_close(p);
        return;
    }
    pump_resume(p);
}

static int pump_write(struct ck_tls_pump *p, uv_stream_t *to, const char *data, size_t len)
{
    struct pump_write *w = malloc(sizeof(*w) + len);
    if (w == NULL) {
        return -1;
    }
    w->p = p;
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    if (uv_write(&w->req, to, &b, 1, pump_on_write) != 0) {
        free(w);
        return -1;
    }
    return 0;
}

/* Send whatever the session produced to the network. */
static int pump_flush(struct ck_tls_pump *p)
{
    size_t n;
    while ((n = ck_tls_pending(&p->tls)) > 0) {
        struct pump_write *w = malloc(sizeof(*w) + n);
        if (w == NULL) {
            return -1;
        }
        w->p = p;
        size_t got = ck_tls_take(&p->tls, w->data, n);
        uv_buf_t b = uv_buf_init(w->data, (unsigned)got);
        if (uv_write(&w->req, (uv_stream_t *)p->tcp, &b, 1, pump_on_write) != 0) {
            free(w);
            return -1;
        }
    }
    if (p->inner_reading && uv_stream_get_write_queue_size((uv_stream_t *)p->tcp) >= PUMP_HIGH) {
        uv_read_stop((uv_stream_t *)&p->inner);
        p->inner_reading = false;
    }
    return 0;
}

/* Decrypt what the session holds and pass it to the caller's end. */
static void pump_drain(struct ck_tls_pump *p)
{
    for (;;) {
        bool was = p->tls.handshaken;
        ssize_t n = ck_tls_read(&p->tls, p->buf, sizeof(p->buf));
        if (!was && p->tls.handshaken && p->cbs.on_handshake != NULL) {
            p->cbs.on_handshake(p->cbs.data);
        }
        if (!was && p->tls.handshaken && p->early_len > 0) {
            if (ck_tls_write(&p->tls, p->early, p->early_len) != 0) {
                pump_fail(p, p->tls.err);
                return;
            }
            free(p->early);
            p->early = NULL;
            p->early_len = 0;
        }
        if (pump_flush(p) != 0) {
            pump_close(p);
            return;
        }
        if (n == CK_TLS_AGAIN) {
            break;
        }
        if (n == CK_TLS_EOF) {
            pump_close(p);
            return;
        }
        if (n < 0) {
            pump_fail(p, p->tls.err);
            return;
        }
        if (pump_write(p, (uv_stream_t *)&p->inner, p->buf, (size_t)n) != 0) {
            pump_close(p);
            return;
        }
    }
    if (p->tcp_reading && uv_stream_get_write_queue_size((uv_stream_t *)&p->inner) >= PUMP_HIGH) {
        uv_read_stop((uv_stream_t *)p->tcp);
        p->tcp_reading = false;
    }
}

static void pump_tcp_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct ck_tls_pump *p = s->data;
    if (nread < 0) {
        if (!p->tls.handshaken) {
            pump_fail(p, nread == UV_EOF ? "TLS handshake failed: the peer closed the connection (does it speak "
                                           "TLS, and does it accept this node's certificate?)"
                                         : "TLS handshake failed: the connection broke off");
            return;
        }
        pump_close(p);
        return;
    }
    if (nread == 0) {
        return;
    }
    if (ck_tls_push(&p->tls, buf->base, (size_t)nread) != 0) {
        pump_fail(p, p->tls.err);
        return;
    }
    pump_drain(p);
}

static void pump_on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    struct ck_tls_pump *p = req->data;
    free(req);
    pump_close(p);
}

static void pump_inner_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct ck_tls_pump *p = s->data;
    if (nread < 0) {
        /* The caller closed its end: say goodbye, let the queued writes
         * finish, then close. */
        p->inner_eof = true;
        uv_read_stop(s);
        p->inner_reading = false;
        if (!p->tls.handshaken) {
            pump_close(p);
            return;
        }
        ck_tls_shutdown(&p->tls);
        uv_shutdown_t *req = malloc(sizeof(*req));
        if (pump_flush(p) != 0 || req == NULL) {
            free(req);
            pump_close(p);
            return;
        }
        req->data = p;
        if (uv_shutdown(req, (uv_stream_t *)p->tcp, pump_on_shutdown) != 0) {
            free(req);
            pump_close(p);
        }
        return;
    }
    if (nread == 0) {
        return;
    }
    if (!p->tls.handshaken) {
        /* Kept until the handshake completes; reading goes on so that the
         * caller closing its end is noticed even if the peer never answers. */
        char *e =
            p->early_len + (size_t)nread <= PUMP_EARLY_MAX ? realloc(p->early, p->early_len + (size_t)nread) : NULL;
        if (e == NULL) {
            pump_fail(p, "TLS: too much data before the handshake completed");
            return;
        }
        memcpy(e + p->early_len, buf->base, (size_t)nread);
        p->early = e;
        p->early_len += (size_t)nread;
        return;
    }
    if (ck_tls_write(&p->tls, buf->base, (size_t)nread) != 0) {
        pump_fail(p, p->tls.err);
        return;
    }
    if (pump_flush(p) != 0) {
        pump_close(p);
    }
}

int ck_tls_pump_start(uv_loop_t *loop, uv_tcp_t *tcp, uv_pipe_t *outer, SSL_CTX *ctx, enum ck_tls_role role,
                      const char *peer, const struct ck_tls_pump_cbs *cbs)
{
    struct ck_tls_pump *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return CK_ENOMEM;
    }
    if (ck_tls_init(&p->tls, ctx, role, peer) != 0) {
        free(p);
        return CK_EINVAL;
    }
    uv_os_sock_t fds[2];
    int rv = uv_socketpair(SOCK_STREAM, 0, fds, UV_NONBLOCK_PIPE, UV_NONBLOCK_PIPE);
    if (rv != 0) {
        ck_tls_free(&p->tls);
        free(p);
        return rv;
    }
    uv_pipe_init(loop, &p->inner, 0);
    uv_pipe_init(loop, outer, 0);
    uv_pipe_open(&p->inner, fds[1]);
    uv_pipe_open(outer, fds[0]);
    p->tcp = tcp;
    if (cbs != NULL) {
        p->cbs = *cbs;
    }
    p->open_handles = 2;
    tcp->data = p;
    p->inner.data = p;
    pump_resume(p); /* Starts reading both sides. */
    if (!p->tcp_reading || !p->inner_reading) {
        pump_close(p); /* The caller reads EOF on @outer. */
        return 0;
    }
    if (role == CK_TLS_CLIENT) {
        pump_drain(p); /* Sends the ClientHello. */
    }
    return 0;
}
