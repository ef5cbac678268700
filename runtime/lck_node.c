/*
 * Lua binding of ck_node: core.node_new(opts, on_event) and the command
 * encoders. Raft ids cross into Lua as 16-digit hex strings (Lua numbers are
 * doubles and cannot hold every u64).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ck_common.h"
#include "ck_node.h"
#include "ck_place.h"
#include "lck.h"
#include "lck_tls.h"

#define NODE_MT "clusterkit.node"

struct lnode {
    struct ck_node *node; /* NULL once close started. */
    int event_ref;
    int self_ref;
    /* The change record node:changes() is copying into Lua. It lives here,
     * not on the C stack, so that a Lua allocation error while copying
     * (which longjmps out) neither leaks it nor loses it silently: the next
     * call frees it and reports a gap; close frees it too. */
    struct ck_changes taken;
    bool taken_open;
};

/* Per-request context for proposals and membership changes. */
struct lnode_req {
    int cb_ref;
};

static struct lnode *lnode_check(lua_State *L, const char *fn)
{
    struct lnode *b = luaL_checkudata(L, 1, NODE_MT);
    if (b->node == NULL) {
        luaL_error(L, "%s: node is closed", fn);
    }
    return b;
}

static uint64_t check_raft_id(lua_State *L, int i)
{
    const char *s = luaL_checkstring(L, i);
    char *end;
    unsigned long long v = strtoull(s, &end, 16);
    if (*s == '\0' || *end != '\0') {
        luaL_argerror(L, i, "raft id must be a hex string");
    }
    return (uint64_t)v;
}

static void push_raft_id(lua_State *L, uint64_t id)
{
    char buf[17];
    snprintf(buf, sizeof buf, "%016" PRIx64, id);
    lua_pushstring(L, buf);
}

static const char *opt_string(lua_State *L, int t, const char *k, const char *def)
{
    lua_getfield(L, t, k);
    const char *s = lua_isnil(L, -1) ? def : lua_tostring(L, -1);
    lua_pop(L, 1); /* The table keeps the string alive. */
    return s;
}

static lua_Number opt_number(lua_State *L, int t, const char *k, lua_Number def)
{
    lua_getfield(L, t, k);
    lua_Number v = lua_isnil(L, -1) ? def : lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

/* ---- events ---- */

static void lnode_on_event(struct ck_node *n, int event)
{
    static const char *const names[] = {NULL, "applied", "raft", "closed", "failed", "kv"};
    if (lck_cbstate() == NULL) {
        return; /* The Lua state is gone, and the box with it. */
    }
    struct lnode *b = ck_node_data(n);
    lua_State *L = lck_push_ref(b->event_ref);
    if (L != NULL) {
        lua_pushstring(L, names[event]);
        lck_call(L, 1);
    }
    if (event == CK_NODE_EV_CLOSED) {
        lck_unref(&b->event_ref);
        lck_unref(&b->self_ref); /* The box may now be collected. */
    }
}

/* core.node_new{data_dir=, raft_addr=, raft_bind=, raft_id=hex, bootstrap=,
 *   token=, election_timeout=, heartbeat_timeout=, segment_size=, ...}, on_event */
static int lnode_new(lua_State *L)
{
    struct ck_node_options o;
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    memset(&o, 0, sizeof o);
    o.data_dir = opt_string(L, 1, "data_dir", NULL);
    o.raft_addr = opt_string(L, 1, "raft_addr", NULL);
    o.raft_bind = opt_string(L, 1, "raft_bind", NULL);
    o.token = opt_string(L, 1, "token", NULL); /* Raft connections must prove it. */
    lua_getfield(L, 1, "tls_server");
    o.tls_server = lck_opt_tls(L, -1); /* Borrowed: ck_node_new takes its own reference. */
    lua_getfield(L, 1, "tls_client");
    o.tls_client = lck_opt_tls(L, -1);
    lua_pop(L, 2);
    if ((o.tls_server == NULL) != (o.tls_client == NULL)) {
        return luaL_error(L, "node_new: tls_server and tls_client go together");
    }
    lua_getfield(L, 1, "raft_id"); /* Stays at index 3. */
    o.raft_id = check_raft_id(L, 3);
    lua_getfield(L, 1, "bootstrap");
    o.bootstrap = lua_toboolean(L, -1);
    lua_pop(L, 1);
    o.election_timeout_ms = (unsigned)opt_number(L, 1, "election_timeout", 0);
    o.heartbeat_timeout_ms = (unsigned)opt_number(L, 1, "heartbeat_timeout", 0);
    o.watch_interval_ms = (unsigned)opt_number(L, 1, "watch_interval", 0);
    o.segment_size = (size_t)opt_number(L, 1, "segment_size", 0);
    o.snapshot_threshold = (unsigned)opt_number(L, 1, "snapshot_threshold", 0);
    o.snapshot_trailing = (unsigned)opt_number(L, 1, "snapshot_trailing", 0);
    if (o.data_dir == NULL || o.raft_addr == NULL || o.raft_id == 0) {
        return luaL_error(L, "node_new: data_dir, raft_addr and a non-zero raft_id are required");
    }
    struct lnode *b = lua_newuserdata(L, sizeof *b);
    b->event_ref = LUA_NOREF;
    b->self_ref = LUA_NOREF;
    memset(&b->taken, 0, sizeof b->taken);
    b->taken_open = false;
    b->node = ck_node_new(lck_loop(), &o, lnode_on_event, b);
    if (b->node == NULL) {
        return luaL_error(L, "node_new: out of memory");
    }
    luaL_getmetatable(L, NODE_MT);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, 2);
    b->event_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    b->self_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* Pinned until closed. */
    return 1;
}

/* node:set_tls(server_ctx, client_ctx): new raft connections use them. */
static int lnode_set_tls(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:set_tls");
    SSL_CTX *server = lck_opt_tls(L, 2), *client = lck_opt_tls(L, 3);
    if ((server == NULL) != (client == NULL)) {
        return luaL_error(L, "node:set_tls: the server and client contexts go together");
    }
    ck_node_set_tls(b->node, server, client);
    lua_pushboolean(L, 1);
    return 1;
}

static int lnode_start(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:start");
    int rv = ck_node_start(b->node);
    if (rv != 0) {
        return lck_pushfail(L, rv, ck_node_errmsg(b->node));
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int lnode_close(lua_State *L)
{
    struct lnode *b = luaL_checkudata(L, 1, NODE_MT);
    if (b->taken_open) {
        ck_changes_free(&b->taken);
        b->taken_open = false;
    }
    if (b->node != NULL) {
        struct ck_node *n = b->node;
        b->node = NULL;
        ck_node_close(n);
    }
    return 0;
}

/* node:errmsg() -> why the last operation or the node failed ("" if nothing). */
static int lnode_errmsg(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:errmsg");
    lua_pushstring(L, ck_node_errmsg(b->node));
    return 1;
}

static int lnode_closed(lua_State *L)
{
    struct lnode *b = luaL_checkudata(L, 1, NODE_MT);
    lua_pushboolean(L, b->node == NULL);
    return 1;
}

/* ---- proposals and membership ---- */

static void lnode_on_applied(void *data, int status, uint64_t index)
{
    struct lnode_req *r = data;
    lua_State *L = lck_push_ref(r->cb_ref);
    if (L != NULL) {
        if (status == 0) {
            lua_pushnumber(L, (lua_Number)index);
            lck_call(L, 1);
        } else {
            lua_pushnil(L);
            lua_pushstring(L, ck_strerror(status));
            lua_pushstring(L, ck_errname(status));
            lck_call(L, 3);
        }
    }
    lck_unref(&r->cb_ref);
    free(r);
}

static void lnode_on_change(void *data, int status)
{
    lnode_on_applied(data, status, 0);
}

static struct lnode_req *lnode_req_new(lua_State *L, int fn_index)
{
    luaL_checktype(L, fn_index, LUA_TFUNCTION);
    struct lnode_req *r = malloc(sizeof *r);
    if (r == NULL) {
        luaL_error(L, "out of memory");
    }
    lua_pushvalue(L, fn_index);
    r->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return r;
}

static int lnode_req_done(lua_State *L, struct lnode *b, struct lnode_req *r, int rv)
{
    if (rv != 0) {
        lck_unref(&r->cb_ref);
        free(r);
        return lck_pushfail(L, rv, rv == CK_ERAFT || rv == CK_EINVAL ? ck_node_errmsg(b->node) : NULL);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* node:propose(bytes, fn(index | nil, msg, code)) -> true | nil, msg, code */
static int lnode_propose(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:propose");
    size_t len;
    const char *buf = luaL_checklstring(L, 2, &len);
    struct lnode_req *r = lnode_req_new(L, 3);
    int rv = ck_node_propose(b->node, buf, len, lnode_on_applied, r);
    if (rv == CK_EINVAL || rv == CK_ECORRUPT) {
        lck_unref(&r->cb_ref);
        free(r);
        return lck_pushfail(L, rv, "malformed command");
    }
    return lnode_req_done(L, b, r, rv);
}

static int lnode_add(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:add");
    uint64_t id = check_raft_id(L, 2);
    const char *addr = luaL_checkstring(L, 3);
    struct lnode_req *r = lnode_req_new(L, 4);
    return lnode_req_done(L, b, r, ck_node_add(b->node, id, addr, lnode_on_change, r));
}

static int lnode_assign(lua_State *L)
{
    static const char *const roles[] = {"standby", "voter", "spare", NULL};
    static const int map[] = {RAFT_STANDBY, RAFT_VOTER, RAFT_SPARE};
    struct lnode *b = lnode_check(L, "node:assign");
    uint64_t id = check_raft_id(L, 2);
    int role = map[luaL_checkoption(L, 3, NULL, roles)];
    struct lnode_req *r = lnode_req_new(L, 4);
    return lnode_req_done(L, b, r, ck_node_assign(b->node, id, role, lnode_on_change, r));
}

static int lnode_remove(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:remove");
    uint64_t id = check_raft_id(L, 2);
    struct lnode_req *r = lnode_req_new(L, 3);
    return lnode_req_done(L, b, r, ck_node_remove(b->node, id, lnode_on_change, r));
}

static int lnode_transfer(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:transfer");
    uint64_t id = lua_isnoneornil(L, 2) ? 0 : check_raft_id(L, 2);
    struct lnode_req *r = lnode_req_new(L, 3);
    return lnode_req_done(L, b, r, ck_node_transfer(b->node, id, lnode_on_change, r));
}

/* ---- reading the state ---- */

static const char *raft_state_name(int s)
{
    switch (s) {
    case RAFT_FOLLOWER:
        return "follower";
    case RAFT_CANDIDATE:
        return "candidate";
    case RAFT_LEADER:
        return "leader";
    default:
        return "unavailable";
    }
}

static void set_num(lua_State *L, const char *k, lua_Number v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

static void set_str(lua_State *L, const char *k, const char *v)
{
    lua_pushstring(L, v ? v : "");
    lua_setfield(L, -2, k);
}

/* node:raft() -> {state=, term=, leader_id=, leader_addr=, commit_index=, ...} */
static int lnode_raft(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:raft");
    struct ck_raft_info i;
    static const char *const roles[] = {"standby", "voter", "spare"};
    ck_node_raft_info(b->node, &i);
    lua_createtable(L, 0, 12);
    set_str(L, "state", raft_state_name(i.state));
    set_num(L, "term", (lua_Number)i.term);
    if (i.leader_id != 0) {
        push_raft_id(L, i.leader_id);
        lua_setfield(L, -2, "leader_id");
        set_str(L, "leader_addr", i.leader_addr);
    }
    set_num(L, "commit_index", (lua_Number)i.commit_index);
    set_num(L, "last_applied", (lua_Number)i.last_applied);
    set_num(L, "last_index", (lua_Number)i.last_index);
    set_num(L, "snapshot_index", (lua_Number)i.snapshot_index);
    set_num(L, "voters", i.voters);
    set_num(L, "standbys", i.standbys);
    set_num(L, "spares", i.spares);
    if (i.my_role >= 0 && i.my_role <= 2) {
        set_str(L, "role", roles[i.my_role]);
    }
    return 1;
}

/* node:counters() -> {commit = reading, apply = reading, elections =, elections_won =,
 * votes_after_lease =, leaders_lost =, resends =, auth_failures =, tls_failures =}: copies, so
 * nothing Lua keeps points into the node (readings: see lck_push_hist). */
static int lnode_counters(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:counters");
    struct ck_node_counters c;
    ck_node_counters(b->node, &c);
    lua_createtable(L, 0, 9);
    lck_push_hist(L, c.commit);
    lua_setfield(L, -2, "commit");
    lck_push_hist(L, c.apply);
    lua_setfield(L, -2, "apply");
    set_num(L, "elections", (lua_Number)c.elections);
    set_num(L, "elections_won", (lua_Number)c.elections_won);
    set_num(L, "votes_after_lease", (lua_Number)c.votes_after_lease);
    set_num(L, "leaders_lost", (lua_Number)c.leaders_lost);
    set_num(L, "resends", (lua_Number)c.resends);
    set_num(L, "results_held", (lua_Number)c.results_held);
    set_num(L, "auth_failures", (lua_Number)c.auth_failures);
    set_num(L, "tls_failures", (lua_Number)c.tls_failures);
    return 1;
}

/* node:configuration() -> {{id = hex, address =, role = "voter"|..., recent = bool (leader only),
 *   heard = seconds since it last answered this node's replication (nil: never)}, ...} */
static int lnode_configuration(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:configuration");
    const struct raft_configuration *c = ck_node_configuration(b->node);
    static const char *const roles[] = {"standby", "voter", "spare"};
    const struct raft_progress *progress = ck_node_progress(b->node);
    lua_createtable(L, (int)c->n, 0);
    for (unsigned i = 0; i < c->n; i++) {
        lua_createtable(L, 0, 4);
        if (progress != NULL) {
            /* Leader only: whether this server answered within the last
             * election timeout (raft's own liveness view). */
            lua_pushboolean(L, progress[i].recent_recv);
            lua_setfield(L, -2, "recent");
        }
        uint64_t ago;
        if (ck_node_last_contact(b->node, c->servers[i].id, &ago)) {
            set_num(L, "heard", (lua_Number)ago / 1000);
        }
        push_raft_id(L, c->servers[i].id);
        lua_setfield(L, -2, "id");
        set_str(L, "address", c->servers[i].address);
        set_str(L, "role", c->servers[i].role >= 0 && c->servers[i].role <= 2 ? roles[c->servers[i].role] : "unknown");
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

/* node:changes() -> list, gap, nodes, whole: the table's row changes
 * applied since the last call, in apply order, each {index = partition
 * (0-based), epoch, owners = {id, ...} (primary first)}; gap is true when
 * some changes are not in the list (a snapshot was installed, or the record
 * outgrew its bound): then compare with the state. nodes lists the
 * (1-based) positions in view().nodes of the entries that changed, whole
 * says that something else changed too (a removal, the configuration): see
 * ck_changes. The record is copied into Lua and freed. */
static int lnode_changes(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:changes");
    bool lost = b->taken_open; /* The last copy raised: its changes are lost. */
    if (lost) {
        ck_changes_free(&b->taken);
    }
    ck_node_take_changes(b->node, &b->taken);
    b->taken_open = true;
    const struct ck_changes c = b->taken;
    struct ck_rbuf r;
    ck_rbuf_init(&r, c.buf.p, c.buf.len);
    lua_createtable(L, (int)c.count, 0);
    for (uint32_t i = 0; i < c.count && r.err == 0; i++) {
        lua_createtable(L, 0, 3);
        set_num(L, "index", ck_r_u32(&r));
        set_num(L, "epoch", (lua_Number)ck_r_u64(&r));
        uint32_t n = ck_r_u32(&r);
        lua_createtable(L, (int)(n <= CK_MAX_REPLICATION ? n : 0), 0);
        for (uint32_t k = 0; k < n && r.err == 0; k++) {
            struct ck_str id = ck_r_str(&r, CK_MAX_STR);
            lua_pushlstring(L, id.p != NULL ? id.p : "", id.len);
            lua_rawseti(L, -2, (int)k + 1);
        }
        lua_setfield(L, -2, "owners");
        lua_rawseti(L, -2, (int)i + 1);
    }
    bool gap = c.gap || lost || !ck_r_done(&r);
    lua_pushboolean(L, gap);
    struct ck_rbuf rn;
    ck_rbuf_init(&rn, c.nodes.p, c.nodes.len);
    lua_createtable(L, (int)(c.node_count <= 4096 ? c.node_count : 0), 0);
    for (uint32_t i = 0; i < c.node_count && rn.err == 0; i++) {
        lua_pushnumber(L, (lua_Number)ck_r_u32(&rn) + 1);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_pushboolean(L, c.whole || !ck_r_done(&rn));
    ck_changes_free(&b->taken);
    b->taken_open = false;
    return 4;
}

static void push_node_info(lua_State *L, const struct ck_node_info *n);

/* node:node_at(i) -> the entry at 1-based position i of view().nodes, in
 * the same shape, or nil. */
static int lnode_node_at(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:node_at");
    const struct ck_state *s = ck_node_state(b->node);
    lua_Integer i = luaL_checkinteger(L, 2);
    if (i < 1 || (uint64_t)i > s->n_nodes) {
        lua_pushnil(L);
        return 1;
    }
    push_node_info(L, &s->nodes[i - 1]);
    return 1;
}

/* node:index() -> state index, table index */
static int lnode_index(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:index");
    const struct ck_state *s = ck_node_state(b->node);
    lua_pushnumber(L, (lua_Number)s->index);
    lua_pushnumber(L, (lua_Number)s->table_index);
    return 2;
}

/* node:flags() -> rebalance_paused, feature level: the two cluster switches
 * without copying the whole state (a /metrics scrape reads them). */
static int lnode_flags(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:flags");
    const struct ck_config *c = &ck_node_state(b->node)->config;
    lua_pushboolean(L, (c->flags & CK_FLAG_REBALANCE_PAUSED) != 0);
    lua_pushinteger(L, c->feature_level);
    return 2;
}

/* node:plan(now_ms, grace_ms, force[, rows]) -> the built-in placement's
 * plan for the committed state (ck_place_plan): encoded TABLE command or
 * false when the table stays, and {moves, moved_slots, moved_primaries,
 * min_moves, deadline (ms, or nil), rows (with `rows`, when the table
 * changes: rows[p] = {ids, primary first})}; or nil, err (no eligible node,
 * not initialised). */
static int lnode_plan(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:plan");
    lua_Number now = luaL_checknumber(L, 2), grace = luaL_checknumber(L, 3);
    if (now < 0 || grace < 0) {
        return luaL_error(L, "node:plan: times must not be negative");
    }
    struct ck_plan_input in = {(uint64_t)now, (uint64_t)grace, lua_toboolean(L, 4)};
    struct ck_plan plan;
    int rv = ck_place_plan(ck_node_state(b->node), &in, &plan);
    if (rv != 0) {
        return lck_pushfail(L, rv, rv == CK_EINVAL ? "no eligible node" : NULL);
    }
    if (plan.has_table) {
        lua_pushlstring(L, (const char *)plan.cmd.p, plan.cmd.len);
    } else {
        lua_pushboolean(L, false);
    }
    lua_createtable(L, 0, 5);
    set_num(L, "moves", plan.moves);
    set_num(L, "moved_slots", plan.moved_slots);
    set_num(L, "moved_primaries", plan.moved_primaries);
    set_num(L, "min_moves", plan.min_moves);
    if (plan.has_deadline) {
        set_num(L, "deadline", (lua_Number)plan.deadline_ms);
    }
    const struct ck_state *s = ck_node_state(b->node);
    if (plan.has_table && lua_toboolean(L, 5)) {
        lua_createtable(L, (int)s->table.partitions, 0);
        for (uint32_t p = 0; p < s->table.partitions; p++) {
            lua_newtable(L);
            for (uint32_t k = 0; k < plan.width; k++) {
                uint16_t at = plan.rows[(size_t)p * plan.width + k];
                if (at == CK_NO_NODE) {
                    break;
                }
                lua_pushstring(L, s->nodes[at].id);
                lua_rawseti(L, -2, (int)k + 1);
            }
            lua_rawseti(L, -2, (int)p + 1);
        }
        lua_setfield(L, -2, "rows");
    }
    ck_plan_free(&plan);
    return 2;
}

/* node:hasher() -> lightuserdata to the committed struct ck_hasher (stable
 * for the node's life), or nil before the cluster is initialised. */
static int lnode_hasher(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:hasher");
    const struct ck_state *s = ck_node_state(b->node);
    if (!s->config.initialized) {
        return 0;
    }
    lua_pushlightuserdata(L, (void *)&s->config.hasher);
    return 1;
}

static void push_node_info(lua_State *L, const struct ck_node_info *n)
{
    lua_createtable(L, 0, 12);
    set_str(L, "id", n->id);
    set_str(L, "name", n->name);
    set_str(L, "http_addr", n->http_addr);
    set_str(L, "raft_addr", n->raft_addr);
    set_str(L, "zone", n->zone);
    push_raft_id(L, n->raft_id);
    lua_setfield(L, -2, "raft_id");
    set_num(L, "weight", n->weight);
    set_str(L, "status", ck_node_status_name(n->status));
    set_num(L, "status_since", (lua_Number)n->status_since_ms);
    set_num(L, "joined_index", (lua_Number)n->joined_index);
#define X(attr, tag, flags, env, json) set_str(L, #attr, n->attr);
    CK_NODE_ATTRS(X) /* ck_node_attrs.h */
#undef X
    lua_createtable(L, 0, (int)n->n_services);
    for (uint32_t k = 0; k < n->n_services; k++) {
        set_str(L, n->services[k].name, n->services[k].addr);
    }
    lua_setfield(L, -2, "services");
}

/* node:view() -> the whole committed state as plain Lua tables:
 * {index, table_index, initialized, cluster_id, name, partitions,
 *  replication, hash_algo, hash_tags, nodes = {...}, width,
 *  owners = {flat, 1-based node positions, 0 = empty}, epochs = {...}} */
static int lnode_view(lua_State *L)
{
    struct lnode *b = lnode_check(L, "node:view");
    const struct ck_state *s = ck_node_state(b->node);
    const struct ck_config *c = &s->config;
    lua_createtable(L, 0, 16);
    set_num(L, "index", (lua_Number)s->index);
    set_num(L, "table_index", (lua_Number)s->table_index);
    lua_pushboolean(L, c->initialized);
    lua_setfield(L, -2, "initialized");
    lua_pushboolean(L, (c->flags & CK_FLAG_REBALANCE_PAUSED) != 0);
    lua_setfield(L, -2, "rebalance_paused");
    set_num(L, "feature_level", c->feature_level);
    if (c->initialized) {
        set_str(L, "cluster_id", c->cluster_id);
        set_str(L, "name", c->name);
        set_num(L, "partitions", c->partitions);
        set_num(L, "replication", c->replication);
        set_str(L, "hash_algo", ck_hash_algo_name(c->hasher.algo));
        lua_pushboolean(L, c->hasher.tags);
        lua_setfield(L, -2, "hash_tags");
    }
    lua_createtable(L, (int)s->n_nodes, 0);
    for (uint32_t i = 0; i < s->n_nodes; i++) {
        push_node_info(L, &s->nodes[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "nodes");
    if (c->initialized) {
        size_t slots = (size_t)s->table.partitions * s->table.width;
        set_num(L, "width", s->table.width);
        lua_createtable(L, (int)slots, 0);
        for (size_t i = 0; i < slots; i++) {
            uint16_t v = s->table.owners[i];
            lua_pushinteger(L, v == CK_NO_NODE ? 0 : v + 1);
            lua_rawseti(L, -2, (int)i + 1);
        }
        lua_setfield(L, -2, "owners");
        lua_createtable(L, (int)s->table.partitions, 0);
        for (uint32_t p = 0; p < s->table.partitions; p++) {
            lua_pushnumber(L, (lua_Number)s->table.epochs[p]);
            lua_rawseti(L, -2, (int)p + 1);
        }
        lua_setfield(L, -2, "epochs");
    }
    return 1;
}

/* ---- command encoders (tables in, binary strings out) ---- */

static struct ck_str field_str(lua_State *L, int t, const char *k, bool required, const char *fn)
{
    struct ck_str s = {"", 0};
    size_t len;
    lua_getfield(L, t, k);
    if (lua_type(L, -1) == LUA_TSTRING) {
        s.p = lua_tolstring(L, -1, &len);
        if (len > CK_MAX_STR) {
            luaL_error(L, "%s: %s longer than %d bytes", fn, k, CK_MAX_STR);
        }
        /* The decoder refuses a NUL in a str: a command carrying one would
         * stop every node that applies it. */
        if (memchr(s.p, '\0', len) != NULL) {
            luaL_error(L, "%s: %s must not contain NUL bytes", fn, k);
        }
        s.len = (uint32_t)len;
    } else if (!lua_isnil(L, -1) || required) {
        luaL_error(L, "%s: %s must be a string", fn, k);
    }
    lua_pop(L, 1); /* Still referenced by the table. */
    return s;
}

static lua_Number field_num(lua_State *L, int t, const char *k, lua_Number def, lua_Number lo, lua_Number hi,
                            const char *fn)
{
    lua_getfield(L, t, k);
    lua_Number v = def;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER) {
            luaL_error(L, "%s: %s must be a number", fn, k);
        }
        v = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    if (v < lo || v > hi || v != (lua_Number)(int64_t)v) {
        luaL_error(L, "%s: %s out of range", fn, k);
    }
    return v;
}

static int push_wbuf(lua_State *L, struct ck_wbuf *w)
{
    if (w->err != 0) {
        ck_wbuf_free(w);
        return luaL_error(L, "encode: out of memory");
    }
    lua_pushlstring(L, (const char *)w->p, w->len);
    ck_wbuf_free(w);
    return 1;
}

static int l_encode_init(lua_State *L)
{
    const char *fn = "encode_init";
    struct ck_cmd_init c;
    struct ck_wbuf w;
    luaL_checktype(L, 1, LUA_TTABLE);
    c.cluster_id = field_str(L, 1, "cluster_id", true, fn);
    c.name = field_str(L, 1, "name", false, fn);
    c.partitions = (uint32_t)field_num(L, 1, "partitions", 0, 1, CK_MAX_PARTITIONS, fn);
    c.replication = (uint32_t)field_num(L, 1, "replication", 0, 1, CK_MAX_REPLICATION, fn);
    lua_getfield(L, 1, "hash_algo");
    c.hash_algo = (uint8_t)ck_hash_algo_from_name(luaL_optstring(L, -1, "fnv1a64"));
    lua_pop(L, 1);
    if (c.hash_algo == 0) {
        return luaL_error(L, "%s: unknown hash algorithm", fn);
    }
    lua_getfield(L, 1, "hash_tags");
    c.hash_tags = (uint8_t)lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (c.cluster_id.len == 0 || c.cluster_id.len > 64) {
        return luaL_error(L, "%s: cluster_id must be 1..64 bytes", fn);
    }
    ck_wbuf_init(&w);
    ck_cmd_encode_init(&w, &c);
    return push_wbuf(L, &w);
}

static int l_encode_node(lua_State *L)
{
    const char *fn = "encode_node";
    struct ck_cmd_node c;
    struct ck_str svc[2 * CK_MAX_SERVICES];
    struct ck_wbuf w;
    luaL_checktype(L, 1, LUA_TTABLE);
    memset(&c, 0, sizeof c);
    c.id = field_str(L, 1, "id", true, fn);
    c.name = field_str(L, 1, "name", false, fn);
    c.http_addr = field_str(L, 1, "http_addr", false, fn);
    c.raft_addr = field_str(L, 1, "raft_addr", false, fn);
    c.zone = field_str(L, 1, "zone", false, fn);
    /* Optional attributes (ck_node_attrs.h): the leader leaves them out
     * before feature level 2. */
#define X(attr, tag, flags, env, json) c.attr = field_str(L, 1, #attr, false, fn);
    CK_NODE_ATTRS(X)
#undef X
    lua_getfield(L, 1, "raft_id");
    c.raft_id = lua_isnil(L, -1) ? 0 : check_raft_id(L, lua_gettop(L));
    lua_pop(L, 1);
    c.weight = (uint32_t)field_num(L, 1, "weight", 1, 0, 1000000, fn);
    c.time_ms = (uint64_t)field_num(L, 1, "time_ms", 0, 0, 9007199254740991.0, fn);
    lua_getfield(L, 1, "status");
    c.status = (uint8_t)ck_node_status_from_name(luaL_optstring(L, -1, "active"));
    lua_pop(L, 1);
    if (c.id.len == 0 || c.status == 0) {
        return luaL_error(L, "%s: id must be non-empty and status known", fn);
    }
    lua_getfield(L, 1, "services");
    if (lua_istable(L, -1)) {
        int t = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, t) != 0) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
                return luaL_error(L, "%s: services must map names to addresses", fn);
            }
            if (c.n_services >= CK_MAX_SERVICES) {
                return luaL_error(L, "%s: too many services", fn);
            }
            size_t kl, vl;
            svc[2 * c.n_services].p = lua_tolstring(L, -2, &kl);
            svc[2 * c.n_services + 1].p = lua_tolstring(L, -1, &vl);
            if (kl > CK_MAX_STR || vl > CK_MAX_STR) {
                return luaL_error(L, "%s: service name or address too long", fn);
            }
            svc[2 * c.n_services].len = (uint32_t)kl;
            svc[2 * c.n_services + 1].len = (uint32_t)vl;
            c.n_services++;
            lua_pop(L, 1);
        }
    }
    /* Deterministic order: sort services by name so equal maps encode equally. */
    for (uint32_t i = 1; i < c.n_services; i++) {
        for (uint32_t j = i; j > 0; j--) {
            struct ck_str *a = &svc[2 * (j - 1)], *b = &svc[2 * j];
            uint32_t m = a->len < b->len ? a->len : b->len;
            int cmp = memcmp(a->p, b->p, m);
            if (cmp < 0 || (cmp == 0 && a->len <= b->len)) {
                break;
            }
            struct ck_str t0 = a[0], t1 = a[1];
            a[0] = b[0];
            a[1] = b[1];
            b[0] = t0;
            b[1] = t1;
        }
    }
    c.services = svc;
    ck_wbuf_init(&w);
    ck_cmd_encode_node(&w, &c);
    lua_pop(L, 1); /* services (kept alive until here) */
    return push_wbuf(L, &w);
}

static int l_encode_status(lua_State *L)
{
    struct ck_cmd_status c;
    struct ck_wbuf w;
    size_t len;
    c.id.p = luaL_checklstring(L, 1, &len);
    c.id.len = (uint32_t)len;
    c.status = (uint8_t)ck_node_status_from_name(luaL_checkstring(L, 2));
    c.time_ms = (uint64_t)luaL_optnumber(L, 3, 0);
    if (c.status == 0 || len == 0 || len > CK_MAX_STR) {
        return luaL_error(L, "encode_status: bad id or status");
    }
    ck_wbuf_init(&w);
    ck_cmd_encode_status(&w, &c);
    return push_wbuf(L, &w);
}

static int l_encode_remove(lua_State *L)
{
    struct ck_str id;
    struct ck_wbuf w;
    size_t len;
    id.p = luaL_checklstring(L, 1, &len);
    id.len = (uint32_t)len;
    if (len == 0 || len > CK_MAX_STR) {
        return luaL_error(L, "encode_remove: bad id");
    }
    ck_wbuf_init(&w);
    ck_cmd_encode_remove(&w, id);
    return push_wbuf(L, &w);
}

/* encode_table(partitions, width, ids, owners): owners is a flat array of
 * partitions*width 1-based positions into ids, 0 for an empty slot. */
static int l_encode_table(lua_State *L)
{
    const char *fn = "encode_table";
    lua_Integer parts = luaL_checkinteger(L, 1);
    lua_Integer width = luaL_checkinteger(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    luaL_checktype(L, 4, LUA_TTABLE);
    if (parts < 1 || parts > CK_MAX_PARTITIONS || width < 1 || width > CK_MAX_REPLICATION) {
        return luaL_error(L, "%s: partitions or width out of range", fn);
    }
    size_t n_ids = lua_objlen(L, 3);
    if (n_ids > CK_MAX_NODES) {
        return luaL_error(L, "%s: too many nodes", fn);
    }
    struct ck_cmd_table c = {(uint32_t)parts, (uint32_t)width, (uint32_t)n_ids, NULL, NULL};
    size_t slots = (size_t)parts * (size_t)width;
    struct ck_str *ids = calloc(n_ids + 1, sizeof *ids);
    uint8_t *owners = malloc(slots * 2);
    if (ids == NULL || owners == NULL) {
        free(ids);
        free(owners);
        return luaL_error(L, "%s: out of memory", fn);
    }
    const char *bad = NULL;
    for (size_t i = 0; i < n_ids && bad == NULL; i++) {
        size_t len;
        lua_rawgeti(L, 3, (int)i + 1);
        ids[i].p = lua_tolstring(L, -1, &len);
        ids[i].len = (uint32_t)len;
        if (lua_type(L, -1) != LUA_TSTRING || len == 0 || len > CK_MAX_STR) {
            bad = "ids must be non-empty strings";
        }
        lua_pop(L, 1); /* Held by the ids table. */
    }
    for (size_t i = 0; i < slots && bad == NULL; i++) {
        lua_rawgeti(L, 4, (int)i + 1);
        lua_Number v = lua_tonumber(L, -1);
        lua_pop(L, 1);
        if (v < 0 || v > (lua_Number)n_ids || v != (lua_Number)(int64_t)v) {
            bad = "owners must be positions into ids or 0";
            break;
        }
        uint16_t u = v == 0 ? CK_NO_NODE : (uint16_t)(v - 1);
        owners[2 * i] = (uint8_t)u;
        owners[2 * i + 1] = (uint8_t)(u >> 8);
    }
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    if (bad == NULL) {
        c.ids = ids;
        c.owners = owners;
        ck_cmd_encode_table(&w, &c);
        /* Check the rows (no duplicates, no holes) before anything proposes it. */
        struct ck_cmd check;
        int rv = w.err == 0 ? ck_cmd_decode(&check, w.p, w.len) : 0;
        if (w.err == 0) {
            ck_cmd_free(&check);
        }
        if (rv != 0) {
            bad = "a partition lists a node twice or has a hole";
        }
    }
    free(ids);
    free(owners);
    if (bad != NULL) {
        ck_wbuf_free(&w);
        return luaL_error(L, "%s: %s", fn, bad);
    }
    return push_wbuf(L, &w);
}

/* encode_features(level): raises the cluster's feature level (ck_state.h). */
static int l_encode_features(lua_State *L)
{
    struct ck_wbuf w;
    lua_Integer level = luaL_checkinteger(L, 1);
    if (level < 2 || level > CK_FEATURE_LEVEL) {
        return luaL_error(L, "encode_features: level must be 2..%d", (int)CK_FEATURE_LEVEL);
    }
    ck_wbuf_init(&w);
    ck_cmd_encode_features(&w, (uint32_t)level);
    return push_wbuf(L, &w);
}

/* encode_flags{rebalance_paused = bool} */
static int l_encode_flags(lua_State *L)
{
    struct ck_wbuf w;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "rebalance_paused");
    uint32_t flags = lua_toboolean(L, -1) ? CK_FLAG_REBALANCE_PAUSED : 0;
    ck_wbuf_init(&w);
    ck_cmd_encode_flags(&w, flags);
    return push_wbuf(L, &w);
}

/* ------------------------------------------------------------------------
 * The key-value store (ck_kv.h). Reads copy into Lua strings, so nothing
 * Lua holds points into the store, which the next apply may change.
 * ------------------------------------------------------------------------ */

static const struct ck_kv *lnode_kv(lua_State *L, const char *fn)
{
    struct lnode *b = lnode_check(L, fn);
    return &ck_node_state(b->node)->kv;
}

static void push_kv_entry(lua_State *L, const struct ck_kv_entry *e, bool keys_only)
{
    lua_createtable(L, 0, 5);
    lua_pushlstring(L, e->key, e->key_len);
    lua_setfield(L, -2, "key");
    if (!keys_only) {
        lua_pushlstring(L, e->value, e->value_len);
        lua_setfield(L, -2, "value");
    }
    set_num(L, "create_index", (lua_Number)e->create_index);
    set_num(L, "mod_index", (lua_Number)e->mod_index);
    set_num(L, "version", (lua_Number)e->version);
    if (e->session != 0) {
        set_num(L, "session", (lua_Number)e->session);
    }
}

/* node:kv_get(key) -> value, create_index, mod_index, version | nil */
static int lnode_kv_get(lua_State *L)
{
    const struct ck_kv *kv = lnode_kv(L, "node:kv_get");
    size_t len;
    const char *key = luaL_checklstring(L, 2, &len);
    const struct ck_kv_entry *e = ck_kv_get(kv, key, len);
    if (e == NULL) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushlstring(L, e->value, e->value_len);
    lua_pushnumber(L, (lua_Number)e->create_index);
    lua_pushnumber(L, (lua_Number)e->mod_index);
    lua_pushnumber(L, (lua_Number)e->version);
    return 4;
}

/* node:kv_list(prefix, limit, after, keys_only) -> {entry, ...}, more: the
 * keys under prefix (sorted), after the key `after` when given. */
static int lnode_kv_list(lua_State *L)
{
    const struct ck_kv *kv = lnode_kv(L, "node:kv_list");
    size_t plen, alen = 0;
    const char *prefix = luaL_checklstring(L, 2, &plen);
    lua_Integer limit = luaL_checkinteger(L, 3);
    const char *after = luaL_optlstring(L, 4, NULL, &alen);
    bool keys_only = lua_toboolean(L, 5);
    uint32_t first, n = ck_kv_prefix(kv, prefix, plen, &first);
    uint32_t start = first;
    if (after != NULL) {
        /* The run is sorted: skip keys <= after (a binary search would
         * need the comparison here too; runs are short next to a reply). */
        while (start < first + n) {
            const struct ck_kv_entry *e = kv->entries[start];
            size_t m = e->key_len < alen ? e->key_len : alen;
            int c = memcmp(e->key, after, m);
            if (c > 0 || (c == 0 && e->key_len > alen)) {
                break;
            }
            start++;
        }
    }
    uint32_t end = first + n;
    uint32_t count = end - start;
    if (limit >= 0 && (lua_Integer)count > limit) {
        count = (uint32_t)limit;
    }
    lua_createtable(L, (int)count, 0);
    for (uint32_t i = 0; i < count; i++) {
        push_kv_entry(L, kv->entries[start + i], keys_only);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_pushboolean(L, start + count < end);
    return 2;
}

/* node:kv_sessions() -> {{id =, ttl_ms =, renewed =, owner =}, ...} in id order */
static int lnode_kv_sessions(lua_State *L)
{
    const struct ck_kv *kv = lnode_kv(L, "node:kv_sessions");
    lua_createtable(L, (int)kv->n_sessions, 0);
    for (uint32_t i = 0; i < kv->n_sessions; i++) {
        const struct ck_kv_session *ss = &kv->sessions[i];
        lua_createtable(L, 0, 4);
        set_num(L, "id", (lua_Number)ss->id);
        set_num(L, "ttl_ms", (lua_Number)ss->ttl_ms);
        set_num(L, "renewed", (lua_Number)ss->renewed);
        lua_pushlstring(L, ss->owner, ss->owner_len);
        lua_setfield(L, -2, "owner");
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

/* node:kv_info() -> {index =, compacted =, keys =, bytes =, events =, sessions =} */
static int lnode_kv_info(lua_State *L)
{
    const struct ck_kv *kv = lnode_kv(L, "node:kv_info");
    lua_createtable(L, 0, 6);
    set_num(L, "index", (lua_Number)kv->index);
    set_num(L, "compacted", (lua_Number)kv->compacted);
    set_num(L, "keys", (lua_Number)kv->n);
    set_num(L, "bytes", (lua_Number)kv->bytes);
    set_num(L, "events", (lua_Number)kv->ev_n);
    set_num(L, "sessions", (lua_Number)kv->n_sessions);
    return 1;
}

/* node:kv_events(since, max) -> {{index =, type = "put"|"delete", key =,
 * value =, create_index =, mod_index =, version =}, ...} | nil, msg, "COMPACTED" */
static int lnode_kv_events(lua_State *L)
{
    const struct ck_kv *kv = lnode_kv(L, "node:kv_events");
    uint64_t since = (uint64_t)luaL_checknumber(L, 2);
    lua_Integer max = luaL_checkinteger(L, 3);
    if (max < 1) {
        return lck_argerror(L, "node:kv_events", "max must be at least 1");
    }
    /* A userdata, not malloc: the pushes below may raise (out of memory),
     * and the collector then frees it. */
    const struct ck_kv_event **ev = lua_newuserdata(L, ((size_t)kv->ev_n + 1) * sizeof(*ev));
    uint32_t n;
    int rv = ck_kv_events(kv, since, max > UINT32_MAX ? UINT32_MAX : (uint32_t)max, ev, &n);
    if (rv != 0) {
        return lck_pushfail(L, rv, NULL);
    }
    lua_createtable(L, (int)n, 0);
    for (uint32_t i = 0; i < n; i++) {
        push_kv_entry(L, &ev[i]->e, false);
        set_num(L, "index", (lua_Number)ev[i]->index);
        set_str(L, "type", ev[i]->type == CK_KV_PUT ? "put" : "delete");
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

static struct ck_str kv_field_str(lua_State *L, int t, const char *k, bool required)
{
    size_t len = 0;
    lua_getfield(L, t, k);
    const char *p = lua_tolstring(L, -1, &len);
    if (p == NULL && required) {
        luaL_error(L, "encode_kv_txn: %s must be a string", k);
    }
    lua_pop(L, 1); /* The table still holds the string. */
    return (struct ck_str){p ? p : "", (uint32_t)len};
}

/* core.encode_kv_txn{max_value =, max_bytes =, compares = {{key =,
 * target = "mod"|"create"|"version"|"value", op = "=="|"!="|"<"|">",
 * number = | value =}, ...}, ops = {{type = "put"|"delete"|"delete_prefix",
 * key =, value =}, ...}} -> bytes. The caller (clusterkit.kv) checks the
 * arguments for users; a malformed table here raises. */
static int l_encode_kv_txn(lua_State *L)
{
    static const char *const targets[] = {"", "mod", "create", "version", "value", NULL};
    static const char *const ops[] = {"", "==", "!=", "<", ">", NULL};
    static const char *const types[] = {
        "", "put", "delete", "delete_prefix", "session_create", "session_renew", "session_destroy", NULL};
    luaL_checktype(L, 1, LUA_TTABLE);
    struct ck_kv_cmp cmp[CK_KV_MAX_TXN_ITEMS];
    struct ck_kv_op op[CK_KV_MAX_TXN_ITEMS];
    struct ck_kv_txn t = {.cmp = cmp, .ops = op};
    t.max_value = (uint32_t)opt_number(L, 1, "max_value", CK_KV_DEFAULT_MAX_VALUE);
    t.max_bytes = (uint64_t)opt_number(L, 1, "max_bytes", (lua_Number)CK_KV_DEFAULT_MAX_BYTES);
    lua_getfield(L, 1, "compares");
    lua_getfield(L, 1, "ops");
    int ci = lua_gettop(L) - 1, oi = lua_gettop(L);
    size_t nc = lua_istable(L, ci) ? lua_objlen(L, ci) : 0;
    size_t no = lua_istable(L, oi) ? lua_objlen(L, oi) : 0;
    if (nc > CK_KV_MAX_TXN_ITEMS || no > CK_KV_MAX_TXN_ITEMS) {
        return luaL_error(L, "encode_kv_txn: at most %d compares and %d ops", (int)CK_KV_MAX_TXN_ITEMS,
                          (int)CK_KV_MAX_TXN_ITEMS);
    }
    for (size_t i = 0; i < nc; i++) {
        lua_rawgeti(L, ci, (int)i + 1);
        int e = lua_gettop(L);
        luaL_checktype(L, e, LUA_TTABLE);
        struct ck_kv_cmp *c = &cmp[t.n_cmp++];
        memset(c, 0, sizeof *c);
        c->key = kv_field_str(L, e, "key", true);
        lua_getfield(L, e, "target");
        c->target = (uint8_t)luaL_checkoption(L, -1, NULL, targets);
        lua_getfield(L, e, "op");
        c->op = (uint8_t)luaL_checkoption(L, -1, NULL, ops);
        lua_pop(L, 2);
        if (c->target == CK_KV_VALUE) {
            c->value = kv_field_str(L, e, "value", true);
        } else {
            c->number = (uint64_t)opt_number(L, e, "number", 0);
        }
        /* Leave the element on the stack: its strings stay referenced. */
    }
    for (size_t i = 0; i < no; i++) {
        lua_rawgeti(L, oi, (int)i + 1);
        int e = lua_gettop(L);
        luaL_checktype(L, e, LUA_TTABLE);
        struct ck_kv_op *o = &op[t.n_ops++];
        memset(o, 0, sizeof *o);
        lua_getfield(L, e, "type");
        o->type = (uint8_t)luaL_checkoption(L, -1, NULL, types);
        lua_pop(L, 1);
        o->key = kv_field_str(L, e, "key", o->type < CK_KV_SESSION_CREATE);
        if (o->type == CK_KV_PUT) {
            o->value = kv_field_str(L, e, "value", true);
        }
        /* PUT: the session (0: none); SESSION_CREATE: the TTL in ms; the
         * others: the session id. */
        o->number = (uint64_t)opt_number(L, e, "number", 0);
    }
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_kv_txn(&w, &t);
    return push_wbuf(L, &w);
}

/* core.kv_txn_limit(bytes, max_value, max_bytes) -> bytes | nil, msg, code:
 * a KV_TXN command that came from another node, checked (it must decode as
 * one) and re-encoded with this node's limits, which the leader imposes. */
static int l_kv_txn_limit(lua_State *L)
{
    size_t len;
    const char *buf = luaL_checklstring(L, 1, &len);
    struct ck_cmd c;
    if (ck_cmd_decode(&c, buf, len) != 0 || c.type != CK_CMD_KV_TXN) {
        ck_cmd_free(&c);
        return lck_pushfail(L, CK_ECORRUPT, "not a key-value transaction");
    }
    c.kv.max_value = (uint32_t)luaL_checknumber(L, 2);
    c.kv.max_bytes = (uint64_t)luaL_checknumber(L, 3);
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_kv_txn(&w, &c.kv);
    ck_cmd_free(&c);
    return push_wbuf(L, &w);
}

/* raft_recover{dir = , node_id = , raft_addr = , voters = {{node_id = , raft_addr = }, ...}}
 * -> true | nil, message. Forces the raft configuration stored in dir (see
 * ck_node_recover); the node that owns dir must be stopped. The raft ids come
 * from the node ids, as ck_node_raft_id makes them for running nodes. */
static int l_raft_recover(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "dir");
    lua_getfield(L, 1, "node_id");
    lua_getfield(L, 1, "raft_addr");
    const char *dir = luaL_checkstring(L, -3);
    const char *node_id = luaL_checkstring(L, -2);
    const char *addr = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "voters");
    luaL_checktype(L, -1, LUA_TTABLE);
    int voters = lua_gettop(L);
    size_t n = lua_objlen(L, voters);
    if (n == 0 || n > CK_MAX_NODES) {
        return luaL_error(L, "raft_recover: voters must list 1 to %d nodes", (int)CK_MAX_NODES);
    }
    uint64_t *ids = calloc(n, sizeof *ids);
    const char **addrs = calloc(n, sizeof *addrs);
    if (ids == NULL || addrs == NULL) {
        free(ids);
        free(addrs);
        return luaL_error(L, "raft_recover: out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, voters, (int)i + 1);
        lua_getfield(L, -1, "node_id");
        lua_getfield(L, -2, "raft_addr");
        /* The strings stay referenced by the voters table until we return. */
        const char *vid = lua_tostring(L, -2), *vaddr = lua_tostring(L, -1);
        lua_pop(L, 3);
        if (vid == NULL || vaddr == NULL || vid[0] == '\0' || vaddr[0] == '\0') {
            free(ids);
            free(addrs);
            return luaL_error(L, "raft_recover: every voter needs a node_id and a raft_addr");
        }
        ids[i] = ck_node_raft_id(vid);
        addrs[i] = vaddr;
    }
    char errmsg[512];
    int rv = ck_node_recover(dir, ck_node_raft_id(node_id), addr, (unsigned)n, ids, addrs, errmsg, sizeof errmsg);
    free(ids);
    free(addrs);
    if (rv != 0) {
        lua_pushnil(L);
        lua_pushstring(L, errmsg[0] != '\0' ? errmsg : ck_strerror(rv));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static const luaL_Reg lnode_methods[] = {
    {"start", lnode_start},
    {"set_tls", lnode_set_tls},
    {"close", lnode_close},
    {"closed", lnode_closed},
    {"errmsg", lnode_errmsg},
    {"propose", lnode_propose},
    {"add", lnode_add},
    {"assign", lnode_assign},
    {"remove", lnode_remove},
    {"transfer", lnode_transfer},
    {"raft", lnode_raft},
    {"counters", lnode_counters},
    {"configuration", lnode_configuration},
    {"index", lnode_index},
    {"flags", lnode_flags},
    {"plan", lnode_plan},
    {"changes", lnode_changes},
    {"node_at", lnode_node_at},
    {"hasher", lnode_hasher},
    {"view", lnode_view},
    {"kv_get", lnode_kv_get},
    {"kv_list", lnode_kv_list},
    {"kv_info", lnode_kv_info},
    {"kv_events", lnode_kv_events},
    {"kv_sessions", lnode_kv_sessions},
    {"__gc", lnode_close},
    {NULL, NULL},
};

static const luaL_Reg lnode_funcs[] = {
    {"node_new", lnode_new},
    {"encode_init", l_encode_init},
    {"encode_node", l_encode_node},
    {"encode_status", l_encode_status},
    {"encode_features", l_encode_features},
    {"encode_remove", l_encode_remove},
    {"encode_table", l_encode_table},
    {"encode_flags", l_encode_flags},
    {"encode_kv_txn", l_encode_kv_txn},
    {"kv_txn_limit", l_kv_txn_limit},
    {"raft_recover", l_raft_recover},
    {NULL, NULL},
};

void lck_open_node(lua_State *L)
{
    lck_newclass(L, NODE_MT, lnode_methods);
    lck_setfuncs(L, lnode_funcs, 0);
    lua_pushinteger(L, CK_FEATURE_LEVEL);
    lua_setfield(L, -2, "FEATURE_LEVEL");
    /* core.NODE_ATTRS: {{name, tag, json, env, operator, reported, domain}...}
     * in declaration order (ck_node_attrs.h), for clusterkit.attrs. */
    lua_newtable(L);
    int i = 0;
#define X(attr, tag, flags, env, json)                   \
    lua_createtable(L, 0, 7);                            \
    set_str(L, "name", #attr);                           \
    set_num(L, "tag", tag);                              \
    set_str(L, "json", json);                            \
    {                                                    \
        const char *e = env;                             \
        if (e != NULL) {                                 \
            set_str(L, "env", e);                        \
        }                                                \
    }                                                    \
    lua_pushboolean(L, ((flags)&CK_ATTR_OPERATOR) != 0); \
    lua_setfield(L, -2, "operator");                     \
    lua_pushboolean(L, ((flags)&CK_ATTR_REPORTED) != 0); \
    lua_setfield(L, -2, "reported");                     \
    lua_pushboolean(L, ((flags)&CK_ATTR_DOMAIN) != 0);   \
    lua_setfield(L, -2, "domain");                       \
    lua_rawseti(L, -2, ++i);
    CK_NODE_ATTRS(X)
#undef X
    lua_setfield(L, -2, "NODE_ATTRS");
}
