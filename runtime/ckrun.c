/*
 * ckrun: LuaJIT with clusterkit built in.
 *
 * The Lua files of the module (lua/clusterkit/ *.lua) are compiled into the
 * binary and registered in package.preload, as are clusterkit.core and
 * lua-cjson, so ckrun needs no LUA_PATH. (Built with CK_EMBED_CJSON=OFF, as
 * where no static lua-cjson exists, ckrun requires cjson from package.cpath
 * like a plain luajit instead.) The program itself is Lua
 * (clusterkit.ckrun); this file only sets up the state, hands it argv, and
 * closes things in the right order: Lua first (its finalizers only start
 * closes), then the loop, which must end with no handle left.
 *
 * The same file builds ckctl, the operator CLI: CMake defines CK_PROGRAM
 * (the binary's name), CK_PROGRAM_MODULE and CK_PROGRAM_ENTRY (the Lua
 * module and its function that takes argv and returns the exit code).
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

#include "ck_embedded.h"
#include "lck.h"

#ifndef CK_PROGRAM
#define CK_PROGRAM "ckrun"
#define CK_PROGRAM_MODULE "clusterkit.ckrun"
#define CK_PROGRAM_ENTRY "main"
#endif

#ifdef CK_EMBED_CJSON
int luaopen_cjson(lua_State *L);
int luaopen_cjson_safe(lua_State *L);
#endif

static int embedded_loader(lua_State *L)
{
    const struct ck_embedded_file *f = lua_touserdata(L, lua_upvalueindex(1));
    if (luaL_loadbuffer(L, f->data, f->len, f->chunkname) != 0) {
        return lua_error(L);
    }
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);
    return 1;
}

static void preload(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, ck_lua_open_core);
    lua_setfield(L, -2, "clusterkit.core");
#ifdef CK_EMBED_CJSON
    lua_pushcfunction(L, luaopen_cjson);
    lua_setfield(L, -2, "cjson");
    lua_pushcfunction(L, luaopen_cjson_safe);
    lua_setfield(L, -2, "cjson.safe");
#endif
    for (const struct ck_embedded_file *f = ck_embedded_lua; f->module != NULL; f++) {
        lua_pushlightuserdata(L, (void *)f);
        lua_pushcclosure(L, embedded_loader, 1);
        lua_setfield(L, -2, f->module);
    }
    lua_pop(L, 2);
}

static int traceback(lua_State *L)
{
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
}

int main(int argc, char **argv)
{
    int status = 1;
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        fprintf(stderr, CK_PROGRAM ": cannot create the Lua state\n");
        return 1;
    }
    luaL_openlibs(L);
    preload(L);

    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "require");
    lua_pushliteral(L, CK_PROGRAM_MODULE);
    if (lua_pcall(L, 1, 1, 1) != 0) {
        fprintf(stderr, CK_PROGRAM ": %s\n", lua_tostring(L, -1));
        lua_close(L);
        return 1;
    }
    lua_getfield(L, -1, CK_PROGRAM_ENTRY);
    lua_createtable(L, argc, 0);
    for (int i = 1; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    if (lua_pcall(L, 1, 1, 1) != 0) {
        fprintf(stderr, CK_PROGRAM ": %s\n", lua_tostring(L, -1));
    } else {
        status = (int)lua_tointeger(L, -1);
    }
    lua_close(L);

    /* Finalizers may have started closes: let them finish, then close what
     * is left (nothing, when the app stopped its nodes). */
    uv_loop_t *loop = uv_default_loop();
    uv_run(loop, UV_RUN_DEFAULT);
    if (uv_loop_close(loop) != 0) {
        uv_print_all_handles(loop, stderr);
        fprintf(stderr, CK_PROGRAM ": handles still open at exit\n");
        if (status == 0) {
            status = 1;
        }
    }
    return status;
}
