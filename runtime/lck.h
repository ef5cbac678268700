/*
 * Internal header of the Lua binding (lck_*.c): the module `clusterkit.core`.
 *
 * Conventions (after luv): a userdata boxes a pointer to C memory; while C
 * may still call back, the userdata and its callbacks are pinned with
 * luaL_ref; __gc only starts a close, and C memory is freed in the close
 * callback. C calls into Lua only through lck_call(), on a dedicated Lua
 * thread, in protected mode with a traceback; an error there is reported to
 * the Lua error handler (or stderr) and never propagates into libuv or raft.
 *
 * One Lua state per process drives the one loop (uv_default_loop()).
 *
 * Closing order (ckrun): lua_close() runs every finalizer while userdata
 * memory is still valid (they only start closes), then frees it; callbacks
 * that arrive after that (close callbacks, aborts) find lck_cbstate() NULL
 * and must not touch any box: check it before dereferencing box memory.
 */
#ifndef LCK_H
#define LCK_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <uv.h>

/* ---- Lua 5.1 compat (LuaJIT has only the 5.1 C API). ---- */
void lck_setfuncs(lua_State *L, const luaL_Reg *l, int nup);
void *lck_testudata(lua_State *L, int i, const char *tname);
void lck_newclass(lua_State *L, const char *tname, const luaL_Reg *methods);

/* The loop every object of the module lives on. */
uv_loop_t *lck_loop(void);

/* The Lua thread callbacks run on, or NULL once the state is closing. */
lua_State *lck_cbstate(void);

/* Push the registry value @ref onto the callback thread and return that
 * thread (NULL if the state is gone: then nothing was pushed). */
lua_State *lck_push_ref(int ref);

/* Call the function below @nargs arguments on the callback thread in
 * protected mode. Errors are logged with a traceback. Returns 0 or 1 (error);
 * the stack is left balanced (results are dropped). */
int lck_call(lua_State *L, int nargs);

void lck_unref(int *ref);

/* Raise a Lua error "name: message". */
int lck_argerror(lua_State *L, const char *fn, const char *msg);

/* Push nil, message, code name (the `nil, err` convention's raw form). */
int lck_pushfail(lua_State *L, int code, const char *msg);

void lck_open_node(lua_State *L);  /* Adds node_new, encode_* to the module table on top. */
void lck_open_http(lua_State *L);  /* Adds http_server to the module table on top. */
void lck_open_tcp(lua_State *L);   /* Adds tcp_connect to the module table on top. */
void lck_open_place(lua_State *L); /* Adds place to the module table on top. */
void lck_open_hist(lua_State *L);  /* Adds histogram, histogram_bounds to the module table on top. */
void lck_open_tls(lua_State *L);   /* Adds tls_context to the module table on top. */

/* Push a histogram's reading: {counts = {...}, count =, sum = seconds} (lck_hist.c). */
struct ck_hist;
void lck_push_hist(lua_State *L, const struct ck_hist *h);

int ck_lua_open_core(lua_State *L);

#endif
