/*
 * Lua binding of ck_hist: core.histogram() for the histograms kept in Lua
 * (HTTP routes, hooks, placement policies), core.histogram_bounds, and the
 * reading that node:counters() gives for raft's own (lck_push_hist), so that
 * /metrics writes every histogram from one shape.
 */
#include <string.h>

#include "ck_hist.h"
#include "lck.h"

#define HIST_MT "clusterkit.histogram"

void lck_push_hist(lua_State *L, const struct ck_hist *h)
{
    lua_createtable(L, 0, 3);
    lua_createtable(L, CK_HIST_BUCKETS + 1, 0);
    for (int i = 0; i <= CK_HIST_BUCKETS; i++) {
        lua_pushnumber(L, (lua_Number)h->counts[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "counts");
    lua_pushnumber(L, (lua_Number)h->count);
    lua_setfield(L, -2, "count");
    lua_pushnumber(L, (lua_Number)h->sum_ns / 1e9);
    lua_setfield(L, -2, "sum");
}

/* core.histogram() -> an empty histogram (plain userdata: nothing to close). */
static int hist_new(lua_State *L)
{
    struct ck_hist *h = lua_newuserdata(L, sizeof *h);
    memset(h, 0, sizeof *h);
    luaL_getmetatable(L, HIST_MT);
    lua_setmetatable(L, -2);
    return 1;
}

/* h:observe(seconds): files one duration (a negative one as 0). */
static int hist_observe(lua_State *L)
{
    struct ck_hist *h = luaL_checkudata(L, 1, HIST_MT);
    lua_Number s = luaL_checknumber(L, 2);
    ck_hist_observe(h, s > 0 ? (uint64_t)(s * 1e9) : 0);
    return 0;
}

/* h:read() -> {counts = {per bucket, the last above every bound}, count =, sum = seconds} */
static int hist_read(lua_State *L)
{
    lck_push_hist(L, luaL_checkudata(L, 1, HIST_MT));
    return 1;
}

static const luaL_Reg hist_methods[] = {
    {"observe", hist_observe},
    {"read", hist_read},
    {NULL, NULL},
};

static const luaL_Reg hist_funcs[] = {
    {"histogram", hist_new},
    {NULL, NULL},
};

void lck_open_hist(lua_State *L)
{
    lck_newclass(L, HIST_MT, hist_methods);
    lck_setfuncs(L, hist_funcs, 0);
    lua_createtable(L, CK_HIST_BUCKETS, 0);
    for (int i = 0; i < CK_HIST_BUCKETS; i++) {
        lua_pushnumber(L, (lua_Number)ck_hist_bounds_ns[i] / 1e9);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "histogram_bounds"); /* Upper bounds in seconds. */
}
