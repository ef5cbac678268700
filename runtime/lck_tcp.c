/*
 * Lua binding of a TCP client connection, the transport under the Lua HTTP
 * client (lua/clusterkit/httpc.lua):
 *
 *   core.tcp_connect(host, port, on_event [, tls_ctx [, peer_name]]) -> conn
 *     on_event("connect") | ("connect", nil, msg) | ("data", chunk) |
 *              ("eof") | ("error", msg); nothing after conn:close().
 *
 * With a client TLS context (core.tls_context{role = "client"}), the
 * connection is TLS: "connect" comes once the handshake is done (a failed
 * handshake is a failed connect, with OpenSSL's reason), data and writes are
 * plaintext. The server's certificate is checked against @peer_name
 * (default: @host).
 *   conn:write(data) -> true | nil, msg      (data is copied)
 *   conn:close()
 *
 * Host names are resolved with uv_getaddrinfo (off the loop thread).
 */
#include <stdlib.h>
#include <string.h>

#include "ck_common.h"
#include "lck.h"
#include "lck_tls.h"

#define TCP_MT "clusterkit.tcp"

struct tcp_conn {
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_getaddrinfo_t gai;
    int cb_ref;
    int self_ref;
    int port;
    int state; /* 0 resolving, 1 connecting (and the TLS handshake), 2 open, 3 closed */
    bool tls_on;
    struct ck_tls tls; /* With tls_on: the session (it holds its own context reference). */
};

struct tcp_box {
    struct tcp_conn *c; /* NULL once closed. */
};

struct tcp_write {
    uv_write_t req;
    char data[];
};

static void tcp_free(struct tcp_conn *c)
{
    if (c->tls_on) {
        ck_tls_free(&c->tls);
    }
    free(c);
}

static void tcp_on_close(uv_handle_t *h)
{
    tcp_free(h->data);
}

static void tcp_emit(struct tcp_conn *c, const char *ev, const char *s, size_t len, const char *err)
{
    if (c->state == 3 || lck_cbstate() == NULL) {
        return;
    }
    lua_State *L = lck_push_ref(c->cb_ref);
    lua_pushstring(L, ev);
    int n = 1;
    if (s != NULL) {
        lua_pushlstring(L, s, len);
        n++;
    } else if (err != NULL) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        n += 2;
    }
    lck_call(L, n);
}

/* Closing: unpin, and close the handle unless it was never initialised. */
static void tcp_close(struct tcp_conn *c)
{
    if (c->state == 3) {
        return;
    }
    int had_handle = c->state >= 1;
    int resolving = c->state == 0;
    c->state = 3;
    lck_unref(&c->cb_ref);
    lck_unref(&c->self_ref);
    if (had_handle) {
        uv_close((uv_handle_t *)&c->tcp, tcp_on_close);
    } else if (resolving) {
        /* The getaddrinfo callback frees us (cancel may be too late). */
        uv_cancel((uv_req_t *)&c->gai);
    }
}

static void tcp_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char slab[64 * 1024]; /* One loop thread; data is copied to Lua at once. */
    buf->base = slab;
    buf->len = sizeof slab;
}

static void tcp_on_write(uv_write_t *req, int status);

/* Send what the TLS session has for the network (handshake, records). */
static int tls_flush(struct tcp_conn *c)
{
    size_t n = ck_tls_pending(&c->tls);
    if (n == 0) {
        return 0;
    }
    struct tcp_write *w = malloc(sizeof *w + n);
    if (w == NULL) {
        return UV_ENOMEM;
    }
    n = ck_tls_take(&c->tls, w->data, n);
    w->req.data = c;
    uv_buf_t buf = uv_buf_init(w->data, (unsigned)n);
    int rv = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, tcp_on_write);
    if (rv != 0) {
        free(w);
    }
    return rv;
}

/* Ciphertext arrived (or the handshake starts: @len 0): decrypt and emit
 * in order: "connect" when the handshake completes, then data, eof or
 * error. Stops as soon as Lua closes the connection from a callback. */
static void tls_input(struct tcp_conn *c, const char *data, size_t len)
{
    static char plain[64 * 1024];
    for (;;) {
        ssize_t n =
            len > 0 && ck_tls_push(&c->tls, data, len) != 0 ? CK_TLS_ERROR : ck_tls_read(&c->tls, plain, sizeof plain);
        len = 0;
        if (c->state == 1 && c->tls.handshaken) {
            c->state = 2;
            tcp_emit(c, "connect", NULL, 0, NULL);
            if (c->state == 3) {
                return;
            }
        }
        if (n > 0) {
            tcp_emit(c, "data", plain, (size_t)n, NULL);
            if (c->state == 3) {
                return;
            }
            continue;
        }
        if (tls_flush(c) != 0 && n == CK_TLS_AGAIN) {
            n = CK_TLS_ERROR; /* The session's answer cannot be sent: the connection is gone. */
        }
        if (n == CK_TLS_AGAIN) {
            return;
        }
        uv_read_stop((uv_stream_t *)&c->tcp);
        const char *msg = c->tls.err[0] != '\0' ? c->tls.err : "TLS: the connection failed";
        if (c->state == 1) {
            tcp_emit(c, "connect", NULL, 0, n == CK_TLS_EOF ? "TLS: the server closed during the handshake" : msg);
        } else if (n == CK_TLS_EOF) {
            tcp_emit(c, "eof", NULL, 0, NULL);
        } else {
            tcp_emit(c, "error", NULL, 0, msg);
        }
        return;
    }
}

static void tcp_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct tcp_conn *c = s->data;
    if (c->tls_on && c->state != 3) {
        if (n > 0) {
            tls_input(c, buf->base, (size_t)n);
            return;
        }
        if (n < 0 && c->state == 1) {
            uv_read_stop(s);
            tcp_emit(c, "connect", NULL, 0,
                     n == UV_EOF ? "TLS: the server closed during the handshake" : uv_strerror((int)n));
            return;
        }
    }
    if (n > 0) {
        tcp_emit(c, "data", buf->base, (size_t)n, NULL);
    } else if (n == UV_EOF) {
        uv_read_stop(s);
        tcp_emit(c, "eof", NULL, 0, NULL);
    } else if (n < 0) {
        uv_read_stop(s);
        tcp_emit(c, "error", NULL, 0, uv_strerror((int)n));
    }
}

static void tcp_on_connect(uv_connect_t *req, int status)
{
    struct tcp_conn *c = req->data;
    if (c->state == 3) {
        return;
    }
    if (status != 0) {
        tcp_emit(c, "connect", NULL, 0, uv_strerror(status));
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, tcp_alloc, tcp_on_read);
    if (c->tls_on) {
        tls_input(c, NULL, 0); /* Sends the ClientHello; "connect" comes after the handshake. */
        return;
    }
    c->state = 2;
    tcp_emit(c, "connect", NULL, 0, NULL);
}

static int tcp_start_connect(struct tcp_conn *c, const struct sockaddr *addr)
{
    int rv = uv_tcp_init(lck_loop(), &c->tcp);
    if (rv != 0) {
        return rv;
    }
    c->state = 1;
    c->tcp.data = c;
    c->connect.data = c;
    return uv_tcp_connect(&c->connect, &c->tcp, addr, tcp_on_connect);
}

static void tcp_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct tcp_conn *c = req->data;
    if (c->state == 3) {
        uv_freeaddrinfo(res);
        tcp_free(c);
        return;
    }
    int rv = status;
    if (rv == 0) {
        ((struct sockaddr_in *)res->ai_addr)->sin_port = htons((uint16_t)c->port);
        rv = tcp_start_connect(c, res->ai_addr);
    }
    uv_freeaddrinfo(res);
    if (rv != 0) {
        tcp_emit(c, "connect", NULL, 0, uv_strerror(rv));
    }
}

static int l_tcp_connect(lua_State *L)
{
    const char *host = luaL_checkstring(L, 1);
    lua_Integer port = luaL_checkinteger(L, 2);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    SSL_CTX *tls = lck_opt_tls(L, 4);
    const char *peer = luaL_optstring(L, 5, host);
    if (port < 1 || port > 65535) {
        return lck_pushfail(L, CK_EINVAL, "port out of range");
    }
    struct tcp_box *b = lua_newuserdata(L, sizeof *b);
    struct tcp_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return luaL_error(L, "out of memory");
    }
    b->c = c;
    if (tls != NULL) {
        if (ck_tls_init(&c->tls, tls, CK_TLS_CLIENT, peer) != 0) {
            lua_pushnil(L);
            lua_pushstring(L, c->tls.err);
            free(c);
            b->c = NULL;
            return 2;
        }
        c->tls_on = true;
    }
    c->port = (int)port;
    c->cb_ref = LUA_NOREF;
    c->self_ref = LUA_NOREF;
    luaL_getmetatable(L, TCP_MT);
    lua_setmetatable(L, -2);

    struct sockaddr_storage ss;
    int literal = uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ss) == 0 ||
                  uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&ss) == 0;
    int rv;
    if (literal) {
        rv = tcp_start_connect(c, (struct sockaddr *)&ss);
    } else {
        struct addrinfo hints;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        c->gai.data = c;
        rv = uv_getaddrinfo(lck_loop(), &c->gai, tcp_on_resolved, host, NULL, &hints);
    }
    if (rv != 0) {
        if (c->state >= 1) {
            c->state = 3;
            uv_close((uv_handle_t *)&c->tcp, tcp_on_close);
        } else {
            tcp_free(c);
        }
        b->c = NULL;
        return lck_pushfail(L, rv, NULL);
    }
    lua_pushvalue(L, 3);
    c->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    c->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 1;
}

static void tcp_on_write(uv_write_t *req, int status)
{
    struct tcp_conn *c = req->data;
    free(req); /* The request is the first member of struct tcp_write. */
    if (status != 0 && status != UV_ECANCELED) {
        tcp_emit(c, "error", NULL, 0, uv_strerror(status));
    }
}

static int l_tcp_write(lua_State *L)
{
    struct tcp_box *b = luaL_checkudata(L, 1, TCP_MT);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    if (b->c == NULL || b->c->state != 2) {
        return lck_pushfail(L, CK_ECLOSED, "connection is not open");
    }
    if (b->c->tls_on) {
        int rv = ck_tls_write(&b->c->tls, data, len);
        if (rv == 0) {
            rv = tls_flush(b->c);
        }
        if (rv != 0) {
            return lck_pushfail(L, CK_ECLOSED, b->c->tls.failed ? b->c->tls.err : "TLS write failed");
        }
        lua_pushboolean(L, 1);
        return 1;
    }
    struct tcp_write *w = malloc(sizeof *w + len);
    if (w == NULL) {
        return luaL_error(L, "out of memory");
    }
    memcpy(w->data, data, len);
    w->req.data = b->c;
    uv_buf_t buf = uv_buf_init(w->data, (unsigned)len);
    int rv = uv_write(&w->req, (uv_stream_t *)&b->c->tcp, &buf, 1, tcp_on_write);
    if (rv != 0) {
        free(w);
        return lck_pushfail(L, rv, NULL);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_tcp_close(lua_State *L)
{
    struct tcp_box *b = luaL_checkudata(L, 1, TCP_MT);
    if (b->c != NULL) {
        tcp_close(b->c);
        b->c = NULL;
    }
    return 0;
}

/* conn:ref(bool): whether the connection keeps the loop alive (an idle
 * keep-alive connection in the client's pool must not). */
static int l_tcp_ref(lua_State *L)
{
    struct tcp_box *b = luaL_checkudata(L, 1, TCP_MT);
    if (b->c != NULL && b->c->state >= 1 && b->c->state < 3) {
        if (lua_toboolean(L, 2)) {
            uv_ref((uv_handle_t *)&b->c->tcp);
        } else {
            uv_unref((uv_handle_t *)&b->c->tcp);
        }
    }
    return 0;
}

static const luaL_Reg tcp_methods[] = {
    {"write", l_tcp_write}, {"ref", l_tcp_ref}, {"close", l_tcp_close}, {"__gc", l_tcp_close}, {NULL, NULL},
};

static const luaL_Reg tcp_funcs[] = {
    {"tcp_connect", l_tcp_connect},
    {NULL, NULL},
};

void lck_open_tcp(lua_State *L)
{
    lck_newclass(L, TCP_MT, tcp_methods);
    lck_setfuncs(L, tcp_funcs, 0);
}
