/*
 * Lua binding of TLS contexts (ck_tls.h):
 *
 *   core.tls_context{cert =, key =, ca =, verify_peers =, role = "server" | "client"}
 *     -> ctx | nil, msg        (msg names the file and what is wrong with it)
 *   ctx:info() -> {role =, not_after =, serial =, verify_peers =}
 *
 * A context is immutable: reloading certificates (SIGHUP) makes a new one and
 * hands it to the server, the transport and the client, which take their own
 * reference (SSL_CTX_up_ref), so the userdata may be collected at any time.
 */
#include <string.h>

#include "lck.h"
#include "lck_tls.h"

#define TLS_MT "clusterkit.tls"

struct tls_box {
    SSL_CTX *ctx;
    enum ck_tls_role role;
    int verify_peers;
};

SSL_CTX *lck_check_tls(lua_State *L, int idx)
{
    struct tls_box *b = luaL_checkudata(L, idx, TLS_MT);
    return b->ctx;
}

SSL_CTX *lck_opt_tls(lua_State *L, int idx)
{
    return lua_isnoneornil(L, idx) ? NULL : lck_check_tls(L, idx);
}

static const char *opt_field(lua_State *L, const char *name)
{
    lua_getfield(L, 1, name);
    const char *s = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
    lua_pop(L, 1);
    return s; /* Still referenced by the options table. */
}

static int ltls_context(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    struct ck_tls_config c = {0};
    c.cert_file = opt_field(L, "cert");
    c.key_file = opt_field(L, "key");
    c.ca_file = opt_field(L, "ca");
    lua_getfield(L, 1, "verify_peers");
    c.verify_peers = lua_toboolean(L, -1);
    lua_pop(L, 1);
    const char *role = opt_field(L, "role");
    enum ck_tls_role r;
    if (role == NULL || strcmp(role, "server") == 0) {
        r = CK_TLS_SERVER;
    } else if (strcmp(role, "client") == 0) {
        r = CK_TLS_CLIENT;
    } else {
        return lck_argerror(L, "tls_context", "role must be \"server\" or \"client\"");
    }
    char err[512];
    SSL_CTX *ctx = ck_tls_ctx_new(&c, r, err, sizeof(err));
    if (ctx == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    struct tls_box *b = lua_newuserdata(L, sizeof(*b));
    b->ctx = ctx;
    b->role = r;
    b->verify_peers = c.verify_peers;
    luaL_getmetatable(L, TLS_MT);
    lua_setmetatable(L, -2);
    return 1;
}

static int ltls_info(lua_State *L)
{
    struct tls_box *b = luaL_checkudata(L, 1, TLS_MT);
    char na[64], serial[80];
    ck_tls_ctx_describe(b->ctx, na, sizeof(na), serial, sizeof(serial));
    lua_createtable(L, 0, 4);
    lua_pushstring(L, b->role == CK_TLS_SERVER ? "server" : "client");
    lua_setfield(L, -2, "role");
    lua_pushstring(L, na);
    lua_setfield(L, -2, "not_after");
    lua_pushstring(L, serial);
    lua_setfield(L, -2, "serial");
    lua_pushboolean(L, b->verify_peers);
    lua_setfield(L, -2, "verify_peers");
    return 1;
}

static int ltls_gc(lua_State *L)
{
    struct tls_box *b = luaL_checkudata(L, 1, TLS_MT);
    SSL_CTX_free(b->ctx); /* Servers, transports and sessions hold their own references. */
    b->ctx = NULL;
    return 0;
}

static const luaL_Reg ltls_methods[] = {
    {"info", ltls_info},
    {"__gc", ltls_gc},
    {NULL, NULL},
};

static const luaL_Reg ltls_funcs[] = {
    {"tls_context", ltls_context},
    {NULL, NULL},
};

void lck_open_tls(lua_State *L)
{
    lck_newclass(L, TLS_MT, ltls_methods);
    lck_setfuncs(L, ltls_funcs, 0);
}
