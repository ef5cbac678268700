/*
 * clusterkit.core: the C side of the Lua module. This file holds the module
 * table, the callback machinery, the loop, timers, signals and small
 * utilities; lck_node.c binds the raft node and lck_http.c the HTTP server.
 */
#include "lck.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "ck_common.h"
#include "ck_embedded.h"
#include "ck_hash.h"
#include "ck_node.h"

#ifndef CK_VERSION
#define CK_VERSION "0.0.0"
#endif

static lua_State *cb_state; /* Dedicated thread for callbacks. */
static int cb_state_ref = LUA_NOREF;
static int errhandler_ref = LUA_NOREF;
static int traceback_ref = LUA_NOREF; /* core_traceback, made once: pushing a
                                       * C function allocates a closure. */
static int loop_running;

/* ------------------------------------------------------------------------
 * Compat and helpers
 * ------------------------------------------------------------------------ */

void lck_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    luaL_checkstack(L, nup, "too many upvalues");
    for (; l->name != NULL; l++) {
        for (int i = 0; i < nup; i++) {
            lua_pushvalue(L, -nup);
        }
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}

void *lck_testudata(lua_State *L, int i, const char *tname)
{
    void *p = lua_touserdata(L, i);
    if (p == NULL || !lua_getmetatable(L, i)) {
        return NULL;
    }
    luaL_getmetatable(L, tname);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same ? p : NULL;
}

void lck_newclass(lua_State *L, const char *tname, const luaL_Reg *methods)
{
    luaL_newmetatable(L, tname);
    lua_newtable(L);
    lck_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_getfield(L, -1, "__index");
    lua_getfield(L, -1, "__gc");
    if (!lua_isnil(L, -1)) {
        lua_setfield(L, -3, "__gc");
    } else {
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
}

uv_loop_t *lck_loop(void)
{
    return uv_default_loop();
}

lua_State *lck_cbstate(void)
{
    return cb_state;
}

lua_State *lck_push_ref(int ref)
{
    lua_State *L = cb_state;
    if (L == NULL) {
        return NULL;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    return L;
}

static int core_traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

int lck_call(lua_State *L, int nargs)
{
    int base = lua_gettop(L) - nargs; /* The function's slot. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, traceback_ref);
    lua_insert(L, base);
    int rv = lua_pcall(L, nargs, 0, base);
    if (rv != 0) {
        /* Report through the Lua error handler if one is set (it logs with
         * the node's context), else to stderr. Never rethrow. */
        const char *msg = lua_tostring(L, -1);
        int handled = 0;
        if (errhandler_ref != LUA_NOREF) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, errhandler_ref);
            lua_pushvalue(L, -2);
            handled = lua_pcall(L, 1, 0, 0) == 0;
            if (!handled) {
                lua_pop(L, 1);
            }
        }
        if (!handled) {
            fprintf(stderr, "clusterkit: error in callback: %s\n", msg ? msg : "?");
        }
        lua_pop(L, 1);
    }
    lua_remove(L, base); /* The traceback function. */
    return rv != 0;
}

void lck_unref(int *ref)
{
    if (*ref != LUA_NOREF && *ref != LUA_REFNIL && cb_state != NULL) {
        luaL_unref(cb_state, LUA_REGISTRYINDEX, *ref);
    }
    *ref = LUA_NOREF;
}

int lck_argerror(lua_State *L, const char *fn, const char *msg)
{
    return luaL_error(L, "%s: %s", fn, msg);
}

int lck_pushfail(lua_State *L, int code, const char *msg)
{
    lua_pushnil(L);
    lua_pushstring(L, msg ? msg : ck_strerror(code));
    lua_pushstring(L, ck_errname(code));
    return 3;
}

/* ------------------------------------------------------------------------
 * Loop
 * ------------------------------------------------------------------------ */

static int core_run(lua_State *L)
{
    static const char *const modes[] = {"default", "once", "nowait", NULL};
    static const uv_run_mode map[] = {UV_RUN_DEFAULT, UV_RUN_ONCE, UV_RUN_NOWAIT};
    int mode = luaL_checkoption(L, 1, "default", modes);
    if (loop_running) {
        return luaL_error(L, "clusterkit.run: the loop is already running (call it from the top level only)");
    }
    loop_running = 1;
    int rv = uv_run(lck_loop(), map[mode]);
    loop_running = 0;
    lua_pushboolean(L, rv != 0);
    return 1;
}

static int core_stop(lua_State *L)
{
    uv_stop(lck_loop());
    return 0;
}

static int core_running(lua_State *L)
{
    lua_pushboolean(L, loop_running);
    return 1;
}

/* ------------------------------------------------------------------------
 * Handles: timers and signals
 * ------------------------------------------------------------------------ */

#define HANDLE_MT "clusterkit.handle"

struct core_handle {
    union {
        uv_handle_t handle;
        uv_timer_t timer;
        uv_signal_t signal;
    };
    int cb_ref;
    int self_ref;
};

struct core_box {
    struct core_handle *h; /* NULL once closed. */
};

static struct core_box *handle_check(lua_State *L, const char *fn)
{
    struct core_box *b = luaL_checkudata(L, 1, HANDLE_MT);
    if (b->h == NULL) {
        luaL_error(L, "%s: handle is closed", fn);
    }
    return b;
}

static void handle_on_close(uv_handle_t *h)
{
    free(h->data);
}

static void handle_close(struct core_box *b)
{
    struct core_handle *h = b->h;
    if (h == NULL) {
        return;
    }
    b->h = NULL;
    lck_unref(&h->cb_ref);
    lck_unref(&h->self_ref);
    uv_close(&h->handle, handle_on_close);
}

static void handle_pin(lua_State *L, struct core_handle *h, int fn_index)
{
    lck_unref(&h->cb_ref);
    lua_pushvalue(L, fn_index);
    h->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (h->self_ref == LUA_NOREF) {
        lua_pushvalue(L, 1);
        h->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
}

static struct core_box *handle_new(lua_State *L)
{
    struct core_box *b = lua_newuserdata(L, sizeof *b);
    b->h = calloc(1, sizeof *b->h);
    if (b->h == NULL) {
        luaL_error(L, "out of memory");
    }
    b->h->cb_ref = LUA_NOREF;
    b->h->self_ref = LUA_NOREF;
    b->h->handle.data = b->h;
    luaL_getmetatable(L, HANDLE_MT);
    lua_setmetatable(L, -2);
    return b;
}

static void timer_on_fire(uv_timer_t *t)
{
    struct core_handle *h = t->data;
    int ref = h->cb_ref;
    if (uv_timer_get_repeat(t) == 0) {
        /* One-shot: unpin before calling, so the callback may restart it. */
        h->cb_ref = LUA_NOREF;
        lua_State *L = lck_push_ref(ref);
        lck_unref(&h->self_ref);
        if (L != NULL) {
            luaL_unref(L, LUA_REGISTRYINDEX, ref);
            lck_call(L, 0);
        }
        return;
    }
    lua_State *L = lck_push_ref(ref);
    if (L != NULL) {
        lck_call(L, 0);
    }
}

/* core.timer() -> handle; handle:start(ms, repeat_ms, fn) */
static int core_timer(lua_State *L)
{
    struct core_box *b = handle_new(L);
    uv_timer_init(lck_loop(), &b->h->timer);
    return 1;
}

static int handle_start(lua_State *L)
{
    struct core_box *b = handle_check(L, "timer:start");
    lua_Number ms = luaL_checknumber(L, 2);
    lua_Number rep = luaL_optnumber(L, 3, 0);
    luaL_checktype(L, 4, LUA_TFUNCTION);
    if (b->h->handle.type != UV_TIMER) {
        return luaL_error(L, "timer:start: not a timer");
    }
    if (ms < 0 || rep < 0) {
        return luaL_error(L, "timer:start: negative time");
    }
    handle_pin(L, b->h, 4);
    uv_timer_start(&b->h->timer, timer_on_fire, (uint64_t)ms, (uint64_t)rep);
    return 0;
}

static int handle_stop(lua_State *L)
{
    struct core_box *b = luaL_checkudata(L, 1, HANDLE_MT);
    if (b->h == NULL) {
        return 0;
    }
    if (b->h->handle.type == UV_TIMER) {
        uv_timer_stop(&b->h->timer);
    } else {
        uv_signal_stop(&b->h->signal);
    }
    lck_unref(&b->h->cb_ref);
    lck_unref(&b->h->self_ref);
    return 0;
}

static int handle_gc_close(lua_State *L)
{
    handle_close(luaL_checkudata(L, 1, HANDLE_MT));
    return 0;
}

static int handle_unref(lua_State *L)
{
    struct core_box *b = handle_check(L, "handle:unref");
    uv_unref(&b->h->handle);
    return 0;
}

static void signal_on_fire(uv_signal_t *s, int signum)
{
    struct core_handle *h = s->data;
    lua_State *L = lck_push_ref(h->cb_ref);
    if (L != NULL) {
        lua_pushinteger(L, signum);
        lck_call(L, 1);
    }
}

/* core.signal(signum, fn) -> handle */
static int core_signal(lua_State *L)
{
    int signum = (int)luaL_checkinteger(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    struct core_box *b = handle_new(L);
    lua_replace(L, 1); /* handle at 1 for handle_pin */
    uv_signal_init(lck_loop(), &b->h->signal);
    int rv = uv_signal_start(&b->h->signal, signal_on_fire, signum);
    if (rv != 0) {
        handle_close(b);
        return lck_pushfail(L, rv, NULL);
    }
    handle_pin(L, b->h, 2);
    lua_pushvalue(L, 1);
    return 1;
}

/* ------------------------------------------------------------------------
 * Files: atomic, asynchronous replace (write tmp, fsync, rename).
 * ------------------------------------------------------------------------ */

struct file_write {
    uv_fs_t req;
    uv_file fd;
    int cb_ref;
    int status;
    char *path;
    char *tmp;
    char *data;
    size_t len;
};

static void fw_step(uv_fs_t *req);

static void fw_finish(struct file_write *w)
{
    lua_State *L = lck_push_ref(w->cb_ref);
    if (L != NULL) {
        if (w->status == 0) {
            lua_pushboolean(L, 1);
            lck_call(L, 1);
        } else {
            lua_pushnil(L);
            lua_pushfstring(L, "%s: %s", w->path, uv_strerror(w->status));
            lck_call(L, 2);
        }
    }
    lck_unref(&w->cb_ref);
    free(w->path);
    free(w->tmp);
    free(w->data);
    free(w);
}

enum { FW_OPEN, FW_WRITE, FW_FSYNC, FW_CLOSE, FW_RENAME };

static void fw_step(uv_fs_t *req)
{
    struct file_write *w = req->data;
    ssize_t result = req->result;
    uv_fs_type type = req->fs_type;
    uv_loop_t *loop = req->loop;
    int rv = 0;
    uv_fs_req_cleanup(req);
    if (result < 0 && w->status == 0) {
        w->status = (int)result;
    }
    switch (type) {
    case UV_FS_OPEN:
        if (w->status != 0) {
            fw_finish(w);
            return;
        }
        w->fd = (uv_file)result;
        {
            uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
            rv = uv_fs_write(loop, req, w->fd, &b, 1, 0, fw_step);
        }
        break;
    case UV_FS_WRITE:
        if (w->status == 0 && (size_t)result != w->len) {
            w->status = UV_EIO;
        }
        rv = w->status == 0 ? uv_fs_fsync(loop, req, w->fd, fw_step) : uv_fs_close(loop, req, w->fd, fw_step);
        break;
    case UV_FS_FSYNC:
        rv = uv_fs_close(loop, req, w->fd, fw_step);
        break;
    case UV_FS_CLOSE:
        if (w->status != 0) {
            unlink(w->tmp);
            fw_finish(w);
            return;
        }
        rv = uv_fs_rename(loop, req, w->tmp, w->path, fw_step);
        break;
    default:
        fw_finish(w);
        return;
    }
    if (rv != 0) {
        w->status = rv;
        fw_finish(w);
    }
}

/* core.write_file(path, data, fn(ok, err)) */
static int core_write_file(lua_State *L)
{
    size_t plen, len;
    const char *path = luaL_checklstring(L, 1, &plen);
    const char *data = luaL_checklstring(L, 2, &len);
    luaL_checktype(L, 3, LUA_TFUNCTION);
    struct file_write *w = calloc(1, sizeof *w);
    if (w == NULL) {
        return luaL_error(L, "out of memory");
    }
    w->path = strdup(path);
    w->tmp = malloc(plen + 8);
    w->data = malloc(len ? len : 1);
    if (w->path == NULL || w->tmp == NULL || w->data == NULL) {
        free(w->path);
        free(w->tmp);
        free(w->data);
        free(w);
        return luaL_error(L, "out of memory");
    }
    snprintf(w->tmp, plen + 8, "%s.tmp", path);
    memcpy(w->data, data, len);
    w->len = len;
    lua_pushvalue(L, 3);
    w->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    w->req.data = w;
    int rv = uv_fs_open(lck_loop(), &w->req, w->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644, fw_step);
    if (rv != 0) {
        w->status = rv;
        lck_unref(&w->cb_ref);
        free(w->path);
        free(w->tmp);
        free(w->data);
        free(w);
        return lck_pushfail(L, rv, NULL);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* ------------------------------------------------------------------------
 * Small utilities
 * ------------------------------------------------------------------------ */

static int core_hrtime(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)uv_hrtime());
    return 1;
}

static int core_now(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)uv_now(lck_loop()));
    return 1;
}

static int core_time_ms(lua_State *L)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    lua_pushnumber(L, (lua_Number)tv.tv_sec * 1000 + tv.tv_usec / 1000);
    return 1;
}

static int core_update_time(lua_State *L)
{
    uv_update_time(lck_loop());
    return 0;
}

static int core_random_hex(lua_State *L)
{
    int n = (int)luaL_optinteger(L, 1, 16);
    unsigned char buf[64];
    char out[129];
    if (n < 1 || n > 64) {
        return luaL_error(L, "random_hex: 1..64 bytes");
    }
    int rv = uv_random(NULL, NULL, buf, (size_t)n, 0, NULL);
    if (rv != 0) {
        return lck_pushfail(L, rv, NULL);
    }
    for (int i = 0; i < n; i++) {
        snprintf(out + 2 * i, 3, "%02x", buf[i]);
    }
    lua_pushlstring(L, out, 2 * (size_t)n);
    return 1;
}

static int core_getpid(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)getpid());
    return 1;
}

static int core_raft_id(lua_State *L)
{
    char buf[17];
    snprintf(buf, sizeof buf, "%016llx", (unsigned long long)ck_node_raft_id(luaL_checkstring(L, 1)));
    lua_pushstring(L, buf);
    return 1;
}

static int core_hash_partition(lua_State *L)
{
    size_t len;
    const char *algo = luaL_checkstring(L, 1);
    lua_Integer parts = luaL_checkinteger(L, 2);
    int tags = lua_toboolean(L, 3);
    const char *key = luaL_checklstring(L, 4, &len);
    struct ck_hasher h;
    if (parts < 1 || parts > CK_MAX_PARTITIONS || ck_hasher_init(&h, algo, (uint32_t)parts, tags) != 0) {
        return lck_pushfail(L, CK_EINVAL, "bad hash configuration");
    }
    lua_pushinteger(L, (lua_Integer)ck_hash_partition(&h, key, len));
    return 1;
}

static int core_set_error_handler(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    if (errhandler_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, errhandler_ref);
    }
    lua_pushvalue(L, 1);
    errhandler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

/* The table of C functions that Lua calls through the FFI on hot paths (the
 * JIT compiles FFI calls inline; a lua_CFunction call would end the trace).
 * Layout must match the cdef in lua/clusterkit/init.lua. */
struct core_ffi_api {
    uint32_t (*partition)(const struct ck_hasher *h, const char *key, size_t len);
};

static const struct core_ffi_api core_ffi = {ck_hash_partition};

static int core_ffi_api(lua_State *L)
{
    lua_pushlightuserdata(L, (void *)&core_ffi);
    return 1;
}

static int core_errname(lua_State *L)
{
    lua_pushstring(L, ck_errname((int)luaL_checkinteger(L, 1)));
    return 1;
}

/* At state close: forget the callback thread so that C callbacks arriving
 * later (handles closing after lua_close) never touch a dead state. */
static int core_sentinel_gc(lua_State *L)
{
    cb_state = NULL;
    cb_state_ref = LUA_NOREF;
    errhandler_ref = LUA_NOREF;
    traceback_ref = LUA_NOREF;
    return 0;
}

/* core.ui_assets() -> {["app.js"] = {body = "...", type = "text/javascript; ..."}, ...}:
 * the dashboard's files (ui/, embedded at build time). The bodies are
 * copied into Lua strings, so nothing here needs pinning. */
static int core_ui_assets(lua_State *L)
{
    lua_newtable(L);
    for (const struct ck_embedded_asset *a = ck_embedded_ui; a->name != NULL; a++) {
        lua_createtable(L, 0, 2);
        lua_pushlstring(L, a->data, a->len);
        lua_setfield(L, -2, "body");
        lua_pushstring(L, a->content_type);
        lua_setfield(L, -2, "type");
        lua_setfield(L, -2, a->name);
    }
    return 1;
}

static const luaL_Reg handle_methods[] = {
    {"start", handle_start}, {"stop", handle_stop},     {"close", handle_gc_close},
    {"unref", handle_unref}, {"__gc", handle_gc_close}, {NULL, NULL},
};

static const luaL_Reg core_funcs[] = {
    {"run", core_run},
    {"stop", core_stop},
    {"running", core_running},
    {"timer", core_timer},
    {"signal", core_signal},
    {"write_file", core_write_file},
    {"hrtime", core_hrtime},
    {"now", core_now},
    {"update_time", core_update_time},
    {"time_ms", core_time_ms},
    {"random_hex", core_random_hex},
    {"getpid", core_getpid},
    {"raft_id", core_raft_id},
    {"hash_partition", core_hash_partition},
    {"set_error_handler", core_set_error_handler},
    {"ffi_api", core_ffi_api},
    {"errname", core_errname},
    {"ui_assets", core_ui_assets},
    {NULL, NULL},
};

int ck_lua_open_core(lua_State *L)
{
    ck_ignore_sigpipe(); /* libuv and raft write to sockets (ck_common.h). */
    if (cb_state == NULL) {
        cb_state = lua_newthread(L);
        cb_state_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        lua_pushcfunction(L, core_traceback);
        traceback_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        lua_newuserdata(L, 1);
        lua_newtable(L);
        lua_pushcfunction(L, core_sentinel_gc);
        lua_setfield(L, -2, "__gc");
        lua_setmetatable(L, -2);
        luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lck_newclass(L, HANDLE_MT, handle_methods);
    lua_newtable(L);
    lck_setfuncs(L, core_funcs, 0);
    lua_pushstring(L, CK_VERSION);
    lua_setfield(L, -2, "version");
    lck_open_node(L);
    lck_open_http(L);
    lck_open_tcp(L);
    lck_open_tls(L);
    lck_open_place(L);
    lck_open_hist(L);
    return 1;
}
