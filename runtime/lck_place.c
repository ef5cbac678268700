/*
 * Lua binding of the default placement policy:
 *
 *   core.place(nodes, partitions, replication, current, current_width, failover_only)
 *     nodes:   array of {zone = string, weight = number, lead = bool,
 *              domain = string or nil (the node's placement domain within
 *              its zone: ck_place.h)}, sorted by id
 *     current: flat array (partitions * current_width) of 1-based positions
 *              into nodes, 0 = empty; or nil
 *   -> owners (flat, partitions * width, 1-based, 0 = empty), width,
 *      {moved_slots, moved_primaries, min_moves}
 */
#include <stdlib.h>
#include <string.h>

#include "ck_common.h"
#include "ck_place.h"
#include "ck_state.h"
#include "lck.h"

/* The small integer id of the string field @k of the table on top of the
 * stack, numbered in order of first appearance through the map at @map;
 * a field that is not a string counts as @dflt, or, with @dflt NULL, has
 * the id @none. */
static uint32_t name_id(lua_State *L, const char *k, int map, uint32_t *next, const char *dflt, uint32_t none)
{
    uint32_t id = none;
    lua_getfield(L, -1, k);
    if (lua_type(L, -1) != LUA_TSTRING && dflt != NULL) {
        lua_pop(L, 1);
        lua_pushstring(L, dflt);
    }
    if (lua_type(L, -1) == LUA_TSTRING) {
        lua_pushvalue(L, -1);
        lua_rawget(L, map);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            lua_pushinteger(L, *next);
            lua_rawset(L, map);
            id = (*next)++;
        } else {
            id = (uint32_t)lua_tointeger(L, -1);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return id;
}

static int l_place(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer parts = luaL_checkinteger(L, 2);
    lua_Integer repl = luaL_checkinteger(L, 3);
    lua_Integer cw = luaL_optinteger(L, 5, 0);
    bool failover_only = lua_toboolean(L, 6);
    size_t n = lua_objlen(L, 1);
    if (parts < 1 || parts > CK_MAX_PARTITIONS || repl < 1 || repl > CK_MAX_REPLICATION || n >= CK_NO_NODE) {
        return luaL_error(L, "place: partitions, replication or node count out of range");
    }
    bool has_cur = !lua_isnoneornil(L, 4);
    if (has_cur && (cw < 1 || cw > CK_MAX_REPLICATION)) {
        return luaL_error(L, "place: current_width out of range");
    }
    struct ck_place_node *nodes = calloc(n ? n : 1, sizeof *nodes);
    uint16_t *cur = has_cur ? malloc((size_t)parts * (size_t)cw * sizeof *cur) : NULL;
    if (nodes == NULL || (has_cur && cur == NULL)) {
        free(nodes);
        free(cur);
        return luaL_error(L, "place: out of memory");
    }
    const char *bad = NULL;
    lua_newtable(L); /* zone name -> id */
    int zmap = lua_gettop(L);
    lua_newtable(L); /* domain name -> id */
    int dmap = lua_gettop(L);
    uint32_t next_zone = 0, next_domain = 0;
    for (size_t i = 0; i < n && bad == NULL; i++) {
        lua_rawgeti(L, 1, (int)i + 1);
        if (!lua_istable(L, -1)) {
            bad = "nodes must be tables";
            lua_pop(L, 1);
            break;
        }
        nodes[i].zone = name_id(L, "zone", zmap, &next_zone, "", 0);
        nodes[i].domain = name_id(L, "domain", dmap, &next_domain, NULL, CK_PLACE_NO_DOMAIN);
        lua_getfield(L, -1, "weight");
        lua_Number w = lua_isnil(L, -1) ? 1 : lua_tonumber(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, -1, "lead");
        nodes[i].can_lead = lua_isnil(L, -1) ? true : lua_toboolean(L, -1);
        lua_pop(L, 2);
        if (!(w >= 1 && w <= 1000000)) {
            bad = "weights must be 1..1000000";
        }
        nodes[i].weight = (uint32_t)w;
    }
    for (size_t i = 0; has_cur && bad == NULL && i < (size_t)parts * (size_t)cw; i++) {
        lua_rawgeti(L, 4, (int)i + 1);
        lua_Number v = lua_tonumber(L, -1);
        lua_pop(L, 1);
        if (v < 0 || v > (lua_Number)n || v != (lua_Number)(int64_t)v) {
            bad = "current must hold positions into nodes or 0";
            break;
        }
        cur[i] = v == 0 ? CK_NO_NODE : (uint16_t)(v - 1);
    }
    if (bad != NULL) {
        free(nodes);
        free(cur);
        return luaL_error(L, "place: %s", bad);
    }
    struct ck_place_input in = {(uint32_t)parts, (uint32_t)repl, (uint32_t)n, nodes, cur, (uint32_t)cw, failover_only};
    struct ck_place_result out;
    int rv = ck_place_compute(&in, &out);
    free(nodes);
    free(cur);
    if (rv != 0) {
        return lck_pushfail(L, rv, NULL);
    }
    size_t slots = (size_t)parts * out.width;
    lua_createtable(L, (int)slots, 0);
    for (size_t i = 0; i < slots; i++) {
        lua_pushinteger(L, out.rows[i] == CK_NO_NODE ? 0 : out.rows[i] + 1);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_pushinteger(L, out.width);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, out.moved_slots);
    lua_setfield(L, -2, "moved_slots");
    lua_pushinteger(L, out.moved_primaries);
    lua_setfield(L, -2, "moved_primaries");
    lua_pushinteger(L, out.min_moves);
    lua_setfield(L, -2, "min_moves");
    ck_place_free(&out);
    return 3;
}

static const luaL_Reg place_funcs[] = {
    {"place", l_place},
    {NULL, NULL},
};

void lck_open_place(lua_State *L)
{
    lck_setfuncs(L, place_funcs, 0);
}
