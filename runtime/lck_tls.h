/* The TLS context userdata of the Lua binding (lck_tls.c), for the other
 * bindings that take one. */
#ifndef LCK_TLS_H
#define LCK_TLS_H

#include <lua.h>

#include "ck_tls.h"

/* The SSL_CTX of the context at @idx (raises an error for anything else).
 * Borrowed: up_ref it to keep it past the call. */
SSL_CTX *lck_check_tls(lua_State *L, int idx);

/* The same, or NULL when @idx is nil or absent. */
SSL_CTX *lck_opt_tls(lua_State *L, int idx);

#endif
