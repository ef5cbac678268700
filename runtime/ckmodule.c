/* Entry point of clusterkit/core.so for `require "clusterkit"` from a plain
 * luajit. The module links the core statically with every other symbol
 * hidden; this is the one it exports.
 *
 * lua-cjson is not linked in here: Debian's liblua5.1-cjson.a is not
 * position-independent, so a shared object cannot contain it. A plain
 * luajit loads Debian's cjson.so (package lua-cjson) instead; ckrun links
 * the static archive. */
#include "lck.h"

__attribute__((visibility("default"))) int luaopen_clusterkit_core(lua_State *L)
{
    return ck_lua_open_core(L);
}
