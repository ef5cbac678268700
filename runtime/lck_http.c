/*
 * Lua binding of the HTTP server: core.http_server(limits, on_request).
 *
 * on_request(req, method, path, query) runs on the callback thread; it is
 * expected to start a coroutine (lua/clusterkit/http.lua does) and return.
 * The request userdata stays valid until req:respond() or until the client
 * goes away, after which its methods report the request as finished.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ck_common.h"
#include "ck_hist.h"
#include "ck_http.h"
#include "ck_keyroute.h"
#include "lck.h"
#include "lck_tls.h"

#define SERVER_MT "clusterkit.http_server"
#define REQUEST_MT "clusterkit.http_request"
#define HIST_MT "clusterkit.histogram"
#define MAX_RESPONSE_HEADERS 64

struct lserver {
    struct ck_http_server *s; /* NULL once close started. */
    int cb_ref;
    int self_ref;
    int close_ref;
    bool fast;             /* kr is in use: server:fast_key() or fast_body() was called. */
    struct ck_keyroute kr; /* The HTTP fast path (ck_keyroute.h). */
    struct ck_hist *hist;  /* The key route's latency histogram, pinned by hist_ref. */
    int hist_ref;
    struct ck_hist *body_hist[CK_KEYROUTE_MAX_BODIES]; /* Each cached body's route histogram... */
    int body_hist_ref[CK_KEYROUTE_MAX_BODIES];         /* ...pinned. */
};

struct lrequest {
    struct ck_http_request *r; /* NULL once answered or aborted. */
    int self_ref;
};

/* The fast path: answered here, on the loop's callback, or false for Lua. */
static bool lserver_fast(struct lserver *b, struct ck_http_request *r)
{
    const char *body, *etag;
    size_t len, etag_len;
    uint64_t t0 = uv_hrtime();
    if (ck_keyroute_answer(&b->kr, r, &body, &len, &etag, &etag_len)) {
        const struct ck_http_header h[2] = {
            {"Content-Type", 12, "application/json", 16},
            {"ETag", 4, etag, etag_len},
        };
        ck_http_respond(r, 200, h, 2, body, len);
        if (b->hist != NULL) {
            ck_hist_observe(b->hist, uv_hrtime() - t0);
        }
        return true;
    }
    bool leader;
    int slot = ck_keyroute_answer_body(&b->kr, r, &body, &len, &etag, &etag_len, &leader);
    if (slot < 0) {
        return false;
    }
    const struct ck_http_header h[3] = {
        {"Content-Type", 12, "application/json", 16},
        {"ETag", 4, etag, etag_len},
        {"X-CK-Known-Leader", 17, leader ? "true" : "false", leader ? 4 : 5},
    };
    ck_http_respond(r, 200, h, 3, body, len);
    if (b->body_hist[slot] != NULL) {
        ck_hist_observe(b->body_hist[slot], uv_hrtime() - t0);
    }
    return true;
}

static void lserver_on_request(struct ck_http_request *r)
{
    struct lserver *b = ck_http_server_data(r->server);
    lua_State *L = lck_cbstate();
    if (L != NULL && b->fast && lserver_fast(b, r)) {
        return;
    }
    L = L != NULL ? lck_push_ref(b->cb_ref) : NULL;
    if (L == NULL) {
        ck_http_respond(r, 503, NULL, 0, NULL, 0);
        return;
    }
    struct lrequest *q = lua_newuserdata(L, sizeof *q);
    q->r = r;
    luaL_getmetatable(L, REQUEST_MT);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    q->self_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* Pinned while C holds r. */
    r->data = q;
    lua_pushlstring(L, r->method, r->method_len);
    lua_pushlstring(L, r->path, r->path_len);
    lua_pushlstring(L, r->query, r->query_len);
    if (lck_call(L, 4) != 0 && q->r != NULL) {
        static const struct ck_http_header h = {"Content-Type", 12, "application/json", 16};
        static const char body[] = "{\"error\":{\"code\":\"INTERNAL\",\"message\":\"request dispatch failed\"}}";
        q->r = NULL;
        ck_http_respond(r, 500, &h, 1, body, sizeof body - 1);
        lck_unref(&q->self_ref);
    }
}

static void lserver_on_abort(struct ck_http_request *r)
{
    struct lrequest *q = r->data;
    if (q != NULL && lck_cbstate() != NULL) {
        q->r = NULL;
        lck_unref(&q->self_ref);
    }
}

/* core.http_server({max_header_size=, max_body_size=, ...}, on_request) */
static int lserver_new(lua_State *L)
{
    struct ck_http_limits lim;
    ck_http_limits_default(&lim);
    if (!lua_isnoneornil(L, 1)) {
        luaL_checktype(L, 1, LUA_TTABLE);
#define LIMIT(field)                                                      \
    lua_getfield(L, 1, #field);                                           \
    if (!lua_isnil(L, -1)) {                                              \
        lua_Number v = luaL_checknumber(L, -1);                           \
        if (v < 0) {                                                      \
            return luaL_error(L, "http_server: " #field " must be >= 0"); \
        }                                                                 \
        lim.field = (__typeof__(lim.field))v;                             \
    }                                                                     \
    lua_pop(L, 1);
        LIMIT(max_header_size)
        LIMIT(max_body_size)
        LIMIT(max_headers)
        LIMIT(max_connections)
        LIMIT(header_timeout_ms)
        LIMIT(body_timeout_ms)
        LIMIT(idle_timeout_ms)
#undef LIMIT
    }
    luaL_checktype(L, 2, LUA_TFUNCTION);
    struct lserver *b = lua_newuserdata(L, sizeof *b);
    b->cb_ref = LUA_NOREF;
    b->self_ref = LUA_NOREF;
    b->close_ref = LUA_NOREF;
    b->fast = false;
    b->hist = NULL;
    b->hist_ref = LUA_NOREF;
    for (int i = 0; i < CK_KEYROUTE_MAX_BODIES; i++) {
        b->body_hist[i] = NULL;
        b->body_hist_ref[i] = LUA_NOREF;
    }
    ck_keyroute_init(&b->kr, NULL);
    b->s = ck_http_server_new(lck_loop(), &lim, lserver_on_request, lserver_on_abort, b);
    if (b->s == NULL) {
        return luaL_error(L, "http_server: out of memory");
    }
    luaL_getmetatable(L, SERVER_MT);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, 2);
    b->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    b->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 1;
}

static struct lserver *lserver_check(lua_State *L, const char *fn)
{
    struct lserver *b = luaL_checkudata(L, 1, SERVER_MT);
    if (b->s == NULL) {
        luaL_error(L, "%s: server is closed", fn);
    }
    return b;
}

/* server:listen(host, port) -> bound port | nil, msg, code */
static int lserver_listen(lua_State *L)
{
    struct lserver *b = lserver_check(L, "server:listen");
    const char *host = luaL_optstring(L, 2, "0.0.0.0");
    lua_Integer port = luaL_checkinteger(L, 3);
    int bound = 0;
    if (port < 0 || port > 65535) {
        return lck_pushfail(L, CK_EINVAL, "port out of range");
    }
    int rv = ck_http_server_listen(b->s, host, (int)port, &bound);
    if (rv != 0) {
        return lck_pushfail(L, rv, NULL);
    }
    lua_pushinteger(L, bound);
    return 1;
}

static void lserver_on_closed(void *data)
{
    struct lserver *b = data;
    if (lck_cbstate() == NULL) {
        return; /* The Lua state is gone, and the box with it. */
    }
    if (b->close_ref != LUA_NOREF) {
        lua_State *L = lck_push_ref(b->close_ref);
        lck_call(L, 0);
    }
    lck_unref(&b->close_ref);
    lck_unref(&b->cb_ref);
    lck_unref(&b->hist_ref);
    for (int i = 0; i < CK_KEYROUTE_MAX_BODIES; i++) {
        lck_unref(&b->body_hist_ref[i]);
    }
    lck_unref(&b->self_ref);
}

/* server:close([fn]) */
static int lserver_close(lua_State *L)
{
    struct lserver *b = luaL_checkudata(L, 1, SERVER_MT);
    if (b->s == NULL) {
        return 0;
    }
    if (lua_isfunction(L, 2)) {
        lua_pushvalue(L, 2);
        b->close_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    struct ck_http_server *s = b->s;
    b->s = NULL;
    if (b->fast) {
        /* No request reaches on_request once the close has started. */
        b->fast = false;
        b->hist = NULL;
        for (int i = 0; i < CK_KEYROUTE_MAX_BODIES; i++) {
            b->body_hist[i] = NULL;
        }
        ck_keyroute_free(&b->kr);
    }
    ck_http_server_close(s, lserver_on_closed);
    return 0;
}

static int lserver_stats(lua_State *L)
{
    struct lserver *b = lserver_check(L, "server:stats");
    struct ck_http_stats st;
    ck_http_server_stats(b->s, &st);
    lua_createtable(L, 0, 7);
#define STAT(f)                          \
    lua_pushnumber(L, (lua_Number)st.f); \
    lua_setfield(L, -2, #f);
    STAT(connections_accepted)
    STAT(connections_rejected)
    STAT(connections_active)
    STAT(requests)
    STAT(responses)
    STAT(bad_requests)
    STAT(timeouts)
    STAT(tls_handshakes)
    STAT(tls_failures)
#undef STAT
    /* kr is set up with the server (zero until a fast path is installed). */
    lua_pushnumber(L, (lua_Number)b->kr.answered);
    lua_setfield(L, -2, "fast_answered");
    lua_pushnumber(L, (lua_Number)b->kr.passed);
    lua_setfield(L, -2, "fast_passed");
    /* fast_bodies = {[path] = answered} */
    lua_createtable(L, 0, (int)b->kr.n_bodies);
    for (unsigned i = 0; i < b->kr.n_bodies; i++) {
        lua_pushnumber(L, (lua_Number)b->kr.bodies[i].answered);
        lua_setfield(L, -2, b->kr.bodies[i].path);
    }
    lua_setfield(L, -2, "fast_bodies");
    lua_pushstring(L, ck_http_server_tls_error(b->s));
    lua_setfield(L, -2, "tls_last_error");
    return 1;
}

/* server:set_tls(ctx | nil): HTTPS for connections accepted from now on. */
static int lserver_set_tls(lua_State *L)
{
    struct lserver *b = lserver_check(L, "server:set_tls");
    SSL_CTX *ctx = lck_opt_tls(L, 2);
    int rv = ck_http_server_set_tls(b->s, ctx);
    if (rv != 0) {
        return lck_pushfail(L, rv, "out of memory");
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- the key-lookup fast path (ck_keyroute.h) ---- */

/* true, or nil, msg, code for a clusterkit error code. */
static int push_result(lua_State *L, int rv)
{
    if (rv != 0) {
        return lck_pushfail(L, rv, NULL);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* The histogram (core.histogram()) at stack index 3, or NULL when none is
 * given; pinned in *@ref while C files durations into it. */
static struct ck_hist *pin_hist(lua_State *L, int *ref)
{
    if (lua_isnoneornil(L, 3)) {
        return NULL;
    }
    struct ck_hist *h = luaL_checkudata(L, 3, HIST_MT);
    lua_pushvalue(L, 3);
    *ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return h;
}

/* server:fast_key(path [, histogram]): answer GET @path?key= in C from the
 * tails Lua hands over; the histogram gets the durations. */
static int lserver_fast_key(lua_State *L)
{
    struct lserver *b = lserver_check(L, "server:fast_key");
    if (ck_keyroute_set_path(&b->kr, luaL_checkstring(L, 2)) != 0) {
        return luaL_error(L, "server:fast_key: already set, or a path that does not start with / or is not "
                             "under 64 bytes");
    }
    b->hist = pin_hist(L, &b->hist_ref);
    b->fast = true;
    return 0;
}

/* server:fast_body(path [, histogram]) -> slot: GET @path (no query) answered
 * in C from the body Lua hands over with fast_body_put. */
static int lserver_fast_body(lua_State *L)
{
    struct lserver *b = lserver_check(L, "server:fast_body");
    int slot = ck_keyroute_add_body(&b->kr, luaL_checkstring(L, 2));
    if (slot < 0) {
        return luaL_error(L, "server:fast_body: bad path, or more than %d bodies", CK_KEYROUTE_MAX_BODIES);
    }
    b->body_hist[slot] = pin_hist(L, &b->body_hist_ref[slot]);
    b->fast = true;
    lua_pushinteger(L, slot);
    return 1;
}

/* server:fast_body_put(slot, index, body, known_leader) -> true | nil, msg, code */
static int lserver_fast_body_put(lua_State *L)
{
    struct lserver *b = lserver_check(L, "server:fast_body_put");
    lua_Integer slot = luaL_checkinteger(L, 2);
    lua_Number index = luaL_checknumber(L, 3);
    size_t len;
    const char *body = luaL_checklstring(L, 4, &len);
    if (!b->fast || index < 0 || slot < 0 || slot >= CK_KEYROUTE_MAX_BODIES) {
        return lck_pushfail(L, CK_EINVAL, "bad slot or index");
    }
    return push_result(L, ck_keyroute_put_body(&b->kr, (int)slot, (uint64_t)index, body, len, lua_toboolean(L, 5)));
}

static struct lserver *lserver_check_fast(lua_State *L, const char *fn)
{
    struct lserver *b = lserver_check(L, fn);
    if (b->kr.path_len == 0) {
        luaL_error(L, "%s: no fast path (call server:fast_key first)", fn);
    }
    return b;
}

/* server:fast_key_reset(): the state changed; requests go to Lua until primed. */
static int lserver_fast_key_reset(lua_State *L)
{
    struct lserver *b = luaL_checkudata(L, 1, SERVER_MT);
    if (b->s != NULL && b->fast) {
        ck_keyroute_reset(&b->kr);
    }
    return 0;
}

/* server:fast_key_prime(index, algo, partitions, tags) -> true | nil, msg, code */
static int lserver_fast_key_prime(lua_State *L)
{
    struct lserver *b = lserver_check_fast(L, "server:fast_key_prime");
    lua_Number index = luaL_checknumber(L, 2);
    const char *algo = luaL_checkstring(L, 3);
    lua_Integer parts = luaL_checkinteger(L, 4);
    struct ck_hasher h;
    if (index < 0 || parts < 1 || parts > CK_MAX_PARTITIONS ||
        ck_hasher_init(&h, algo, (uint32_t)parts, lua_toboolean(L, 5)) != 0) {
        return lck_pushfail(L, CK_EINVAL, "bad index, hash algorithm or partition count");
    }
    return push_result(L, ck_keyroute_prime(&b->kr, (uint64_t)index, &h));
}

/* server:fast_key_put(index, partition, tail) -> true | nil, msg, code */
static int lserver_fast_key_put(lua_State *L)
{
    struct lserver *b = lserver_check_fast(L, "server:fast_key_put");
    lua_Number index = luaL_checknumber(L, 2);
    lua_Integer part = luaL_checkinteger(L, 3);
    size_t len;
    const char *tail = luaL_checklstring(L, 4, &len);
    if (index < 0 || part < 0 || part >= CK_MAX_PARTITIONS) {
        return lck_pushfail(L, CK_EINVAL, "bad index or partition");
    }
    return push_result(L, ck_keyroute_put(&b->kr, (uint64_t)index, (uint32_t)part, tail, len));
}

/* ---- requests ---- */

static struct lrequest *lrequest_get(lua_State *L, const char *fn)
{
    struct lrequest *q = luaL_checkudata(L, 1, REQUEST_MT);
    if (q->r == NULL) {
        luaL_error(L, "%s: request already finished", fn);
    }
    return q;
}

static int lrequest_body(lua_State *L)
{
    struct lrequest *q = lrequest_get(L, "req:body");
    lua_pushlstring(L, q->r->body, q->r->body_len);
    return 1;
}

/* req:headers() -> {lowercased-name = value} (repeats joined with ", ") */
static int lrequest_headers(lua_State *L)
{
    struct lrequest *q = lrequest_get(L, "req:headers");
    const struct ck_http_request *r = q->r;
    char name[256];
    lua_createtable(L, 0, (int)r->n_headers);
    for (size_t i = 0; i < r->n_headers; i++) {
        size_t n = r->headers[i].name_len < sizeof name ? r->headers[i].name_len : sizeof name - 1;
        for (size_t k = 0; k < n; k++) {
            char c = r->headers[i].name[k];
            name[k] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
        }
        lua_pushlstring(L, name, n);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushlstring(L, r->headers[i].value, r->headers[i].value_len);
        } else {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, r->headers[i].value, r->headers[i].value_len);
            lua_concat(L, 3);
        }
        lua_rawset(L, -3);
    }
    return 1;
}

/* req:header(name) -> first value with that name (case-insensitive) or nil */
static int lrequest_header(lua_State *L)
{
    struct lrequest *q = lrequest_get(L, "req:header");
    size_t len;
    const char *want = luaL_checklstring(L, 2, &len);
    for (size_t i = 0; i < q->r->n_headers; i++) {
        const struct ck_http_header *h = &q->r->headers[i];
        if (h->name_len == len && strncasecmp(h->name, want, len) == 0) {
            lua_pushlstring(L, h->value, h->value_len);
            return 1;
        }
    }
    return 0;
}

static int lrequest_remote(lua_State *L)
{
    struct lrequest *q = lrequest_get(L, "req:remote");
    lua_pushstring(L, q->r->remote_addr);
    return 1;
}

static int lrequest_finished(lua_State *L)
{
    struct lrequest *q = luaL_checkudata(L, 1, REQUEST_MT);
    lua_pushboolean(L, q->r == NULL);
    return 1;
}

/* req:respond(status, headers_table | nil, body | nil) -> true | nil, msg, code */
static int lrequest_respond(lua_State *L)
{
    struct lrequest *q = luaL_checkudata(L, 1, REQUEST_MT);
    lua_Integer status = luaL_checkinteger(L, 2);
    size_t blen = 0;
    const char *body = luaL_optlstring(L, 4, "", &blen);
    struct ck_http_header hs[MAX_RESPONSE_HEADERS];
    size_t n = 0;
    if (q->r == NULL) {
        return lck_pushfail(L, CK_ECLOSED, "request already finished");
    }
    if (status < 100 || status > 999) {
        return luaL_error(L, "req:respond: status out of range");
    }
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 3) != 0) {
            /* Strings only: their bytes stay owned by the table while we use
             * them (clusterkit/http.lua turns numbers into strings). */
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
                return luaL_error(L, "req:respond: headers must map names to strings");
            }
            if (n == MAX_RESPONSE_HEADERS) {
                return luaL_error(L, "req:respond: too many headers");
            }
            hs[n].name = lua_tolstring(L, -2, &hs[n].name_len);
            hs[n].value = lua_tolstring(L, -1, &hs[n].value_len);
            n++;
            lua_pop(L, 1);
        }
    }
    struct ck_http_request *r = q->r;
    q->r = NULL;
    int rv = ck_http_respond(r, (int)status, hs, n, body, blen);
    lck_unref(&q->self_ref);
    if (rv != 0) {
        return lck_pushfail(L, rv, "invalid response header");
    }
    lua_pushboolean(L, 1);
    return 1;
}

static const luaL_Reg lserver_methods[] = {
    {"listen", lserver_listen},
    {"close", lserver_close},
    {"stats", lserver_stats},
    {"set_tls", lserver_set_tls},
    {"fast_key", lserver_fast_key},
    {"fast_key_reset", lserver_fast_key_reset},
    {"fast_key_prime", lserver_fast_key_prime},
    {"fast_key_put", lserver_fast_key_put},
    {"fast_body", lserver_fast_body},
    {"fast_body_put", lserver_fast_body_put},
    {"__gc", lserver_close},
    {NULL, NULL},
};

static const luaL_Reg lrequest_methods[] = {
    {"body", lrequest_body},
    {"headers", lrequest_headers},
    {"header", lrequest_header},
    {"remote", lrequest_remote},
    {"finished", lrequest_finished},
    {"respond", lrequest_respond},
    {NULL, NULL},
};

static const luaL_Reg lhttp_funcs[] = {
    {"http_server", lserver_new},
    {NULL, NULL},
};

void lck_open_http(lua_State *L)
{
    lck_newclass(L, SERVER_MT, lserver_methods);
    lck_newclass(L, REQUEST_MT, lrequest_methods);
    lck_setfuncs(L, lhttp_funcs, 0);
}
