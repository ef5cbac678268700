/*
 * Unit tests for ck_fsm on raft's in-memory fixture: three servers, each with
 * its own ck_fsm, replicate commands to byte-identical states; a rejected
 * command is reported through the apply result while raft keeps applying;
 * a server that missed compacted entries catches up through InstallSnapshot;
 * and a leader failover keeps the replicas identical.
 *
 * The fixture's time is virtual and its election timeouts are fixed (server 0
 * times out first), so every run takes the same steps.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <raft.h>
#include <raft/fixture.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ck_buf.h"
#include "ck_common.h"
#include "ck_fsm.h"
#include "ck_state.h"

#define N_SERVERS 3
#define MAX_PROPOSALS 256
#define STEP_MS 10000 /* Virtual-time bound for each wait. */

struct proposal {
    struct raft_apply req;
    bool done;
    int status;
    int result;
};

struct cluster {
    struct raft_fixture fixture;
    struct raft_fsm fsms[N_SERVERS];
    struct ck_fsm f[N_SERVERS];
    unsigned changes[N_SERVERS];    /* on_change calls per server. */
    unsigned kv_changes[N_SERVERS]; /* on_kv_change calls per server. */
    /* Proposals outlive the fixture: raft may fire callbacks until closed. */
    struct proposal proposals[MAX_PROPOSALS];
    unsigned n_proposals;
    /* What every replica should equal: the same commands applied directly
     * at the indexes raft gave them. */
    struct ck_state reference;
};

static void fsm_on_change(struct ck_fsm *f)
{
    struct cluster *c = f->data;
    c->changes[f - c->f]++;
}

static void fsm_on_kv_change(struct ck_fsm *f)
{
    struct cluster *c = f->data;
    c->kv_changes[f - c->f]++;
}

static struct ck_str S(const char *s) {
    struct ck_str v = {s, (uint32_t)strlen(s)};
    return v;
}

/* ------------------------------------------------------------------------
 * Commands
 * ------------------------------------------------------------------------ */

struct blob {
    uint8_t *p;
    size_t len;
};

static struct blob take(struct ck_wbuf *w)
{
    struct blob b;
    assert_int_equal(w->err, 0);
    b.p = ck_wbuf_take(w, &b.len);
    return b;
}

static struct blob cmd_init(uint32_t partitions, uint32_t replication)
{
    struct ck_cmd_init c = {S("fsm-test"), S("demo"), partitions, replication, CK_HASH_FNV1A64, 1};
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_init(&w, &c);
    return take(&w);
}

static struct blob cmd_node(const char *id, uint64_t raft_id, uint8_t status, uint64_t time_ms)
{
    static struct ck_str svc[] = {{"http", 4}, {"127.0.0.1:8080", 14}, {"metrics", 7}, {"127.0.0.1:9100", 14}};
    struct ck_cmd_node c = {0};
    struct ck_wbuf w;
    c.id = S(id);
    c.name = S(id);
    c.http_addr = S("127.0.0.1:8080");
    c.raft_addr = S("127.0.0.1:9090");
    c.zone = S("z1");
    c.raft_id = raft_id;
    c.weight = 100;
    c.status = status;
    c.time_ms = time_ms;
    c.n_services = 2;
    c.services = svc;
    ck_wbuf_init(&w);
    ck_cmd_encode_node(&w, &c);
    return take(&w);
}

static struct blob cmd_status(const char *id, uint8_t status, uint64_t time_ms)
{
    struct ck_cmd_status c = {S(id), status, time_ms};
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_status(&w, &c);
    return take(&w);
}

static struct blob cmd_remove(const char *id)
{
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_remove(&w, S(id));
    return take(&w);
}

/* A TABLE over @n_ids ids with row p = ids p, p+1, ... (mod n_ids). */
static struct blob cmd_table(uint32_t partitions, uint32_t width, const char *const *ids, uint32_t n_ids)
{
    struct ck_str sv[8];
    uint8_t owners[64 * 4 * 2];
    struct ck_wbuf w;

    assert_true(n_ids <= 8 && partitions * width <= 64 * 4);
    for (uint32_t i = 0; i < n_ids; i++) {
        sv[i] = S(ids[i]);
    }
    for (uint32_t p = 0; p < partitions; p++) {
        for (uint32_t k = 0; k < width; k++) {
            uint16_t v = k < n_ids ? (uint16_t)((p + k) % n_ids) : CK_NO_NODE;
            owners[2 * (p * width + k)] = (uint8_t)v;
            owners[2 * (p * width + k) + 1] = (uint8_t)(v >> 8);
        }
    }
    struct ck_cmd_table c = {partitions, width, n_ids, sv, owners};
    ck_wbuf_init(&w);
    ck_cmd_encode_table(&w, &c);
    return take(&w);
}

/* ------------------------------------------------------------------------
 * Cluster helpers
 * ------------------------------------------------------------------------ */

static int setup(void **state)
{
    struct cluster *c = calloc(1, sizeof *c);
    struct raft_configuration conf;

    assert_non_null(c);
    assert_int_equal(raft_fixture_initialize(&c->fixture), 0);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        ck_fsm_init(&c->fsms[i], &c->f[i]);
        c->f[i].data = c;
        c->f[i].on_change = fsm_on_change;
        c->f[i].on_kv_change = fsm_on_kv_change;
        assert_int_equal(raft_fixture_grow(&c->fixture, &c->fsms[i]), 0);
        c->f[i].raft = raft_fixture_get(&c->fixture, i);
    }
    assert_int_equal(raft_fixture_configuration(&c->fixture, N_SERVERS, &conf), 0);
    assert_int_equal(raft_fixture_bootstrap(&c->fixture, &conf), 0);
    raft_configuration_close(&conf);
    ck_state_init(&c->reference);
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    struct cluster *c = *state;

    raft_fixture_close(&c->fixture);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        ck_fsm_close(&c->f[i]);
    }
    ck_state_free(&c->reference);
    free(c);
    return 0;
}

static void start(struct cluster *c)
{
    assert_int_equal(raft_fixture_start(&c->fixture), 0);
    assert_true(raft_fixture_step_until_has_leader(&c->fixture, STEP_MS));
}

static unsigned leader(struct cluster *c)
{
    unsigned l = raft_fixture_leader_index(&c->fixture);
    assert_true(l < N_SERVERS);
    return l;
}

static void apply_cb(struct raft_apply *req, int status, void *result)
{
    struct proposal *p = req->data;
    assert_false(p->done); /* Exactly once. */
    p->done = true;
    p->status = status;
    p->result = (int)(intptr_t)result;
}

/* Hand @cmd (freed here) to the leader's raft_apply as a raft_malloc'd,
 * zero-padded buffer of a multiple of 8 bytes. */
static struct proposal *propose(struct cluster *c, struct blob cmd)
{
    struct proposal *p;
    struct raft_buffer buf;

    assert_true(c->n_proposals < MAX_PROPOSALS);
    p = &c->proposals[c->n_proposals++];
    p->req.data = p;
    buf.len = (cmd.len + 7) & ~(size_t)7;
    buf.base = raft_malloc(buf.len);
    assert_non_null(buf.base);
    memset(buf.base, 0, buf.len);
    memcpy(buf.base, cmd.p, cmd.len);
    assert_int_equal(raft_apply(raft_fixture_get(&c->fixture, leader(c)), &p->req, &buf, 1, apply_cb), 0);
    assert_true(p->req.index > 0);
    /* The reference applies the very same bytes at the same index. */
    ck_state_apply(&c->reference, buf.base, buf.len, p->req.index);
    free(cmd.p);
    return p;
}

/* Step until server @i (or every alive server when @i == N_SERVERS) has
 * applied @index. */
static void wait_applied(struct cluster *c, unsigned i, raft_index index)
{
    if (i < N_SERVERS) {
        assert_true(raft_fixture_step_until_applied(&c->fixture, i, index, STEP_MS));
        return;
    }
    for (unsigned k = 0; k < N_SERVERS; k++) {
        if (raft_fixture_alive(&c->fixture, k)) {
            assert_true(raft_fixture_step_until_applied(&c->fixture, k, index, STEP_MS));
        }
    }
}

/* Propose @cmd, wait until every alive server applied it, and return the
 * result the leader's callback got. */
static int apply(struct cluster *c, struct blob cmd)
{
    struct proposal *p = propose(c, cmd);
    wait_applied(c, N_SERVERS, p->req.index);
    assert_true(p->done);
    assert_int_equal(p->status, 0);
    return p->result;
}

static struct blob snap(const struct ck_state *s)
{
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_state_snapshot(s, &w);
    return take(&w);
}

/* Every server listed in @mask (bit i = server i) has a state whose snapshot
 * is byte-identical to the reference's. */
static void assert_identical(struct cluster *c, unsigned mask)
{
    struct blob want = snap(&c->reference);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        if (mask & (1u << i)) {
            struct blob got = snap(&c->f[i].state);
            assert_int_equal(got.len, want.len);
            assert_memory_equal(got.p, want.p, want.len);
            free(got.p);
        }
    }
    free(want.p);
}
#define ALL ((1u << N_SERVERS) - 1)

static const char *const node_ids[] = {"node-1", "node-2", "node-3"};

/* INIT, one upsert per server and a table. */
static void populate(struct cluster *c)
{
    assert_int_equal(apply(c, cmd_init(16, 3)), 0);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        assert_int_equal(apply(c, cmd_node(node_ids[i], i + 1, CK_NODE_ACTIVE, 1000 + i)), 0);
    }
    assert_int_equal(apply(c, cmd_table(16, 3, node_ids, 3)), 0);
}

/* ------------------------------------------------------------------------
 * Tests
 * ------------------------------------------------------------------------ */

/* Commands of every type applied through the leader leave all three servers
 * with byte-identical states, equal to applying the same commands directly at
 * the indexes raft assigned (so the FSM passes the right index). */
static void test_replicates_identically(void **state)
{
    struct cluster *c = *state;

    start(c);
    populate(c);
    assert_int_equal(apply(c, cmd_status("node-2", CK_NODE_SUSPECT, 5000)), 0);
    assert_int_equal(apply(c, cmd_node("node-4", 4, CK_NODE_ACTIVE, 6000)), 0);
    static const char *const ids4[] = {"node-4", "node-3", "node-2", "node-1"};
    assert_int_equal(apply(c, cmd_table(16, 3, ids4, 4)), 0);
    assert_int_equal(apply(c, cmd_remove("node-2")), 0);
    assert_identical(c, ALL);

    struct ck_state *s = &c->f[0].state;
    assert_true(s->config.initialized);
    assert_int_equal(s->n_nodes, 3);
    /* Entry 1 is the bootstrap configuration; ours follow. */
    assert_true(s->index == c->proposals[c->n_proposals - 1].req.index);
    assert_true(s->index > 1);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        assert_int_equal(c->f[i].applied, c->n_proposals);
        assert_int_equal(c->f[i].rejected, 0);
        assert_int_equal(c->changes[i], c->n_proposals);
    }
}

/* A rejected command (a second INIT, an unknown node) gets its negative code
 * in the apply result with status 0, changes nothing, and raft keeps applying
 * the entries after it on every server. (An undecodable one is fatal
 * instead: test_undecodable_entry_is_fatal.) */
static void test_rejected_command_reported(void **state)
{
    struct cluster *c = *state;

    start(c);
    populate(c);
    struct blob before = snap(&c->f[0].state);

    struct proposal *second_init = propose(c, cmd_init(8, 2));
    struct proposal *unknown = propose(c, cmd_status("nobody", CK_NODE_DOWN, 1));
    struct proposal *after = propose(c, cmd_status("node-3", CK_NODE_DOWN, 9000));
    wait_applied(c, N_SERVERS, after->req.index);

    assert_true(second_init->done && unknown->done && after->done);
    assert_int_equal(second_init->status, 0);
    assert_int_equal(second_init->result, CK_EINVAL);
    assert_int_equal(unknown->status, 0);
    assert_int_equal(unknown->result, CK_ENOTFOUND);
    assert_int_equal(after->status, 0);
    assert_int_equal(after->result, 0);

    for (unsigned i = 0; i < N_SERVERS; i++) {
        struct raft *r = raft_fixture_get(&c->fixture, i);
        assert_true(raft_last_applied(r) >= after->req.index);
        assert_true(raft_last_applied(r) > unknown->req.index);
        assert_int_equal(c->f[i].rejected, 2);
        assert_int_equal(c->f[i].applied, c->n_proposals);
        /* on_change fires for accepted commands only. */
        assert_int_equal(c->changes[i], c->n_proposals - 2);
        assert_int_equal(c->f[i].state.nodes[2].status, CK_NODE_DOWN);
        assert_int_equal(c->f[i].state.index, after->req.index);
    }
    /* Apart from the last command, nothing moved: roll it back on a copy of
     * the "before" snapshot and compare. */
    struct ck_state t;
    ck_state_init(&t);
    assert_int_equal(ck_state_restore(&t, before.p, before.len), 0);
    struct blob cmd = cmd_status("node-3", CK_NODE_DOWN, 9000);
    assert_int_equal(ck_state_apply(&t, cmd.p, cmd.len, after->req.index), 0);
    free(cmd.p);
    struct blob want = snap(&t);
    struct blob got = snap(&c->f[1].state);
    assert_int_equal(got.len, want.len);
    assert_memory_equal(got.p, want.p, want.len);
    free(got.p);
    free(want.p);
    free(before.p);
    ck_state_free(&t);
    assert_identical(c, ALL);
}

static struct blob cmd_kv_cas(const char *key, const char *value, uint64_t mod_index)
{
    struct ck_kv_cmp cmp = {.key = S(key), .target = CK_KV_MOD, .op = CK_KV_EQ, .number = mod_index};
    struct ck_kv_op op = {.type = CK_KV_PUT, .key = S(key), .value = S(value)};
    struct ck_kv_txn t = {.max_value = CK_KV_DEFAULT_MAX_VALUE,
                          .max_bytes = CK_KV_DEFAULT_MAX_BYTES,
                          .n_cmp = 1,
                          .cmp = &cmp,
                          .n_ops = 1,
                          .ops = &op};
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_kv_txn(&w, &t);
    return take(&w);
}

/* Key-value transactions through raft: every replica ends with the same
 * store; a stale compare-and-swap is refused everywhere with CK_ECONFLICT;
 * KV writes call on_kv_change and never on_change, and leave the cluster's
 * state index where it was. */
static void test_kv_replicates_apart_from_the_cluster_state(void **state)
{
    struct cluster *c = *state;

    start(c);
    populate(c);
    uint64_t index = c->f[0].state.index;
    unsigned changes = c->changes[0];
    assert_int_equal(apply(c, cmd_kv_cas("lock", "a", 0)), 0);
    uint64_t mod = c->f[0].state.kv.index;
    assert_int_equal(apply(c, cmd_kv_cas("lock", "b", 0)), CK_ECONFLICT);
    assert_int_equal(apply(c, cmd_kv_cas("lock", "c", mod)), 0);
    struct proposal *last = propose(c, cmd_kv_cas("other", "x", 0));
    wait_applied(c, N_SERVERS, last->req.index);
    assert_int_equal(last->result, 0);
    assert_identical(c, ALL);
    for (unsigned i = 0; i < N_SERVERS; i++) {
        const struct ck_state *s = &c->f[i].state;
        assert_int_equal(s->index, index);
        assert_int_equal(c->changes[i], changes);
        assert_int_equal(c->kv_changes[i], 3);
        const struct ck_kv_entry *e = ck_kv_get(&s->kv, "lock", 4);
        assert_non_null(e);
        assert_memory_equal(e->value, "c", 1);
        assert_int_equal(e->version, 2);
        assert_int_equal(s->kv.index, last->req.index);
    }
}

/* With a low snapshot threshold, a follower that was down while the leader
 * compacted its log catches up through InstallSnapshot (not by replaying the
 * missed entries) to a state identical to the others', and keeps applying
 * new entries afterwards. */
static void test_snapshot_install(void **state)
{
    struct cluster *c = *state;

    for (unsigned i = 0; i < N_SERVERS; i++) {
        raft_set_snapshot_threshold(raft_fixture_get(&c->fixture, i), 8);
        raft_set_snapshot_trailing(raft_fixture_get(&c->fixture, i), 2);
    }
    start(c);
    populate(c);
    unsigned l = leader(c);
    unsigned victim = (l + 1) % N_SERVERS;
    assert_identical(c, ALL);
    uint64_t applied_before = c->f[victim].applied;
    unsigned changes_before = c->changes[victim];

    raft_fixture_kill(&c->fixture, victim);
    char id[32];
    for (unsigned i = 0; i < 40; i++) {
        snprintf(id, sizeof id, "extra-%u", i);
        assert_int_equal(apply(c, cmd_node(id, 100 + i, CK_NODE_ACTIVE, i)), 0);
        if (i % 3 == 0) {
            assert_int_equal(apply(c, cmd_status("node-1", i % 2 ? CK_NODE_ACTIVE : CK_NODE_SUSPECT, i)), 0);
        }
    }
    assert_int_equal(apply(c, cmd_remove("extra-7")), 0);
    raft_index last = c->proposals[c->n_proposals - 1].req.index;
    /* The leader compacted past everything the victim has. */
    struct raft *lr = raft_fixture_get(&c->fixture, l);
    assert_true(lr->log.snapshot.last_index > raft_last_applied(raft_fixture_get(&c->fixture, victim)));
    assert_int_equal(c->f[victim].applied, applied_before);
    assert_int_equal(raft_fixture_n_recv(&c->fixture, victim, RAFT_IO_INSTALL_SNAPSHOT), 0);

    raft_fixture_revive(&c->fixture, victim);
    wait_applied(c, victim, last);
    assert_true(raft_fixture_n_recv(&c->fixture, victim, RAFT_IO_INSTALL_SNAPSHOT) >= 1);
    /* The victim restored rather than replayed: it applied far fewer than
     * the commands it missed, and on_change saw the restore. */
    assert_true(c->f[victim].applied - applied_before < 10);
    assert_true(c->changes[victim] > changes_before);
    assert_identical(c, ALL);
    assert_int_equal(c->f[victim].state.n_nodes, N_SERVERS + 39);

    /* And it follows new entries normally. */
    assert_int_equal(apply(c, cmd_remove("extra-8")), 0);
    assert_identical(c, ALL);
}

/* Killing the leader elects another server, which keeps applying on top of
 * the same state; when the old leader comes back it converges too. */
static void test_leader_failover(void **state)
{
    struct cluster *c = *state;

    start(c);
    populate(c);
    unsigned old = leader(c);
    assert_identical(c, ALL);

    /* The fixture only notices on its next step that the leader is gone:
     * until then step_until_has_leader would return the dead one. */
    raft_fixture_kill(&c->fixture, old);
    assert_true(raft_fixture_step_until_has_no_leader(&c->fixture, STEP_MS));
    assert_true(raft_fixture_step_until_has_leader(&c->fixture, STEP_MS));
    unsigned l = leader(c);
    assert_int_not_equal(l, old);
    assert_int_equal(raft_state(raft_fixture_get(&c->fixture, l)), RAFT_LEADER);

    assert_int_equal(apply(c, cmd_status("node-1", CK_NODE_DOWN, 7000)), 0);
    assert_int_equal(apply(c, cmd_node("node-5", 5, CK_NODE_ACTIVE, 7001)), 0);
    static const char *const ids[] = {"node-2", "node-3", "node-5"};
    assert_int_equal(apply(c, cmd_table(16, 3, ids, 3)), 0);
    assert_int_equal(apply(c, cmd_init(4, 1)), CK_EINVAL);
    unsigned others = ALL & ~(1u << old);
    assert_identical(c, others);

    raft_fixture_revive(&c->fixture, old);
    raft_index last = c->proposals[c->n_proposals - 1].req.index;
    wait_applied(c, old, last);
    assert_identical(c, ALL);

    /* The revived server follows; a command through the current leader
     * reaches all three. */
    assert_int_equal(apply(c, cmd_remove("node-1")), 0);
    assert_identical(c, ALL);
    assert_int_not_equal(raft_state(raft_fixture_get(&c->fixture, old)), RAFT_LEADER);
}

/* The allocator seam: this test is linked with --wrap for malloc and calloc
 * (tests/CMakeLists.txt), so allocations made by the core fail on demand. */
static bool fail_allocs;
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__wrap_malloc(size_t n)
{
    return fail_allocs ? NULL : __real_malloc(n);
}
void *__wrap_calloc(size_t n, size_t size)
{
    return fail_allocs ? NULL : __real_calloc(n, size);
}

static int fatal_code;
static uint64_t fatal_index;
static void record_fatal(struct ck_fsm *f, int code, uint64_t index)
{
    (void)f;
    fatal_code = code;
    fatal_index = index;
}

/* An FSM over a bare raft struct (no fixture) whose next entry is at
 * @last_applied + 1, with record_fatal as its on_fatal. */
static void fsm_alone(struct raft_fsm *fsm, struct ck_fsm *f, struct raft *r, uint64_t last_applied)
{
    memset(r, 0, sizeof *r);
    memset(f, 0, sizeof *f);
    r->last_applied = last_applied;
    ck_fsm_init(fsm, f);
    f->raft = r;
    f->on_fatal = record_fatal;
    fatal_code = 0;
}

/* Out of memory inside apply is fatal for the node, never a refused command
 * that this replica skips while the others apply it; the same command
 * applies once memory is back (what a restart's log replay does). */
static void test_enomem_in_apply_is_fatal(void **state)
{
    (void)state;
    struct raft_fsm fsm;
    struct ck_fsm f;
    struct raft r;
    fsm_alone(&fsm, &f, &r, 41);
    struct blob init = cmd_init(16, 3);
    struct raft_buffer buf = {init.p, init.len};
    void *result = (void *)(intptr_t)-1;

    fail_allocs = true;
    int rv = fsm.apply(&fsm, &buf, &result);
    fail_allocs = false;
    assert_int_equal(fatal_code, CK_ENOMEM);
    assert_int_equal(fatal_index, 42);
    assert_int_not_equal(rv, 0);
    assert_int_equal(f.rejected, 0);
    assert_false(f.state.config.initialized);

    assert_int_equal(fsm.apply(&fsm, &buf, &result), 0);
    assert_int_equal((int)(intptr_t)result, 0);
    assert_true(f.state.config.initialized);
    free(init.p);
    ck_fsm_close(&f);
}

/* An entry this build cannot decode (another version byte, an unknown
 * command type, a flag bit it does not know, bytes left over: what a newer
 * leader's new command looks like to an older follower) stops the node
 * through on_fatal with CK_ECORRUPT. Before, the follower counted it as
 * refused and applied the entries after it without it, for good. */
static void test_undecodable_entry_is_fatal(void **state)
{
    (void)state;
    static const uint8_t newer_version[] = {2, 1, 0, 0, 0, 0, 0, 0};
    static const uint8_t unknown_type[] = {1, 42, 0xff, 0xff};
    static const uint8_t unknown_flag[] = {1, CK_CMD_FLAGS, 0, 0, 0, 0x80};
    const struct {
        const uint8_t *p;
        size_t len;
    } entries[] = {
        {newer_version, sizeof newer_version},
        {unknown_type, sizeof unknown_type},
        {unknown_flag, sizeof unknown_flag},
    };
    for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++) {
        struct raft_fsm fsm;
        struct ck_fsm f;
        struct raft r;
        fsm_alone(&fsm, &f, &r, 6);
        struct blob init = cmd_init(16, 3);
        struct raft_buffer ib = {init.p, init.len};
        void *result = NULL;
        assert_int_equal(fsm.apply(&fsm, &ib, &result), 0);
        r.last_applied = 7;
        struct raft_buffer buf = {(void *)entries[i].p, entries[i].len};
        int rv = fsm.apply(&fsm, &buf, &result);
        assert_int_equal(fatal_code, CK_ECORRUPT);
        assert_int_equal(fatal_index, 8);
        assert_int_not_equal(rv, 0);
        assert_int_equal(f.rejected, 0);
        assert_int_equal(f.state.index, 7); /* The INIT's: nothing applied. */
        free(init.p);
        ck_fsm_close(&f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enomem_in_apply_is_fatal),
        cmocka_unit_test_setup_teardown(test_replicates_identically, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejected_command_reported, setup, teardown),
        cmocka_unit_test(test_undecodable_entry_is_fatal),
        cmocka_unit_test_setup_teardown(test_kv_replicates_apart_from_the_cluster_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_install, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leader_failover, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
