/*
 * Unit tests for ck_kv, the replicated key-value store: puts, revisions,
 * compares (compare-and-swap, "must not exist", values), transactions that
 * apply all or nothing (a failed compare, a value or total over the limit),
 * deletes and prefixes over binary keys, the transaction encoding (round trip
 * and every truncation refused), the snapshot section (round trip, corrupt
 * input refused with the store unchanged), the event history for watches
 * (order, since, compaction), and a randomized run against a reference model.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ck_buf.h"
#include "ck_common.h"
#include "ck_kv.h"

static struct ck_str S(const char *s) {
    return (struct ck_str){s, (uint32_t)strlen(s)};
}

static struct ck_str
B(const void *p, size_t n) {
    return (struct ck_str){p, (uint32_t)n};
}

/* A transaction under construction. */
struct tx {
    struct ck_kv_txn t;
    struct ck_kv_cmp cmp[CK_KV_MAX_TXN_ITEMS];
    struct ck_kv_op ops[CK_KV_MAX_TXN_ITEMS];
};

static void tx_init(struct tx *x)
{
    memset(x, 0, sizeof(*x));
    x->t.max_value = CK_KV_DEFAULT_MAX_VALUE;
    x->t.max_bytes = CK_KV_DEFAULT_MAX_BYTES;
    x->t.cmp = x->cmp;
    x->t.ops = x->ops;
}

static void tx_cmp(struct tx *x, struct ck_str key, uint8_t target, uint8_t op, uint64_t number)
{
    x->cmp[x->t.n_cmp++] = (struct ck_kv_cmp){.key = key, .target = target, .op = op, .number = number};
}

static void tx_cmp_value(struct tx *x, struct ck_str key, uint8_t op, struct ck_str value)
{
    x->cmp[x->t.n_cmp++] = (struct ck_kv_cmp){.key = key, .target = CK_KV_VALUE, .op = op, .value = value};
}

static void tx_op(struct tx *x, uint8_t type, struct ck_str key, struct ck_str value)
{
    x->ops[x->t.n_ops++] = (struct ck_kv_op){.type = type, .key = key, .value = value};
}

/* Encodes and decodes @x before applying it, as the FSM does. */
static int apply(struct ck_kv *kv, struct tx *x, uint64_t index)
{
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_kv_encode_txn(&w, &x->t);
    assert_int_equal(w.err, 0);
    struct ck_rbuf r;
    ck_rbuf_init(&r, w.p, w.len);
    struct ck_kv_txn t;
    assert_int_equal(ck_kv_decode_txn(&r, &t), 0);
    assert_true(ck_r_done(&r));
    int rv = ck_kv_apply(kv, &t, index);
    ck_kv_txn_free(&t);
    ck_wbuf_free(&w);
    return rv;
}

static int put(struct ck_kv *kv, const char *k, const char *v, uint64_t index)
{
    struct tx x;
    tx_init(&x);
    tx_op(&x, CK_KV_PUT, S(k), S(v));
    return apply(kv, &x, index);
}

static void assert_value(const struct ck_kv *kv, const char *k, const char *v)
{
    const struct ck_kv_entry *e = ck_kv_get(kv, k, strlen(k));
    if (v == NULL) {
        assert_null(e);
        return;
    }
    assert_non_null(e);
    assert_int_equal(e->value_len, strlen(v));
    assert_memory_equal(e->value, v, e->value_len);
}

static uint8_t *snapshot(const struct ck_kv *kv, size_t *len)
{
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_kv_snapshot(kv, &w);
    assert_int_equal(w.err, 0);
    return ck_wbuf_take(&w, len);
}

/* The store's bytes, entry order and byte count are consistent. */
static void check_invariants(const struct ck_kv *kv)
{
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < kv->n; i++) {
        const struct ck_kv_entry *e = kv->entries[i];
        bytes += (uint64_t)e->key_len + e->value_len + CK_KV_ENTRY_OVERHEAD;
        assert_true(e->key_len >= 1 && e->create_index >= 1 && e->mod_index >= e->create_index);
        assert_true(e->version >= 1 && e->mod_index <= kv->index);
        if (i > 0) {
            const struct ck_kv_entry *p = kv->entries[i - 1];
            size_t m = p->key_len < e->key_len ? p->key_len : e->key_len;
            int c = memcmp(p->key, e->key, m);
            assert_true(c < 0 || (c == 0 && p->key_len < e->key_len));
        }
    }
    assert_int_equal(bytes, kv->bytes);
}

/* ------------------------------------------------------------------------ */

static void test_put_get_revisions(void **state)
{
    struct ck_kv kv;
    ck_kv_init(&kv);
    assert_null(ck_kv_get(&kv, "a", 1));
    assert_int_equal(put(&kv, "a", "1", 5), 0);
    const struct ck_kv_entry *e = ck_kv_get(&kv, "a", 1);
    assert_int_equal(e->create_index, 5);
    assert_int_equal(e->mod_index, 5);
    assert_int_equal(e->version, 1);
    assert_int_equal(put(&kv, "a", "22", 9), 0);
    e = ck_kv_get(&kv, "a", 1);
    assert_int_equal(e->create_index, 5);
    assert_int_equal(e->mod_index, 9);
    assert_int_equal(e->version, 2);
    assert_value(&kv, "a", "22");
    assert_int_equal(kv.index, 9);
    /* An empty value is a value. */
    assert_int_equal(put(&kv, "empty", "", 10), 0);
    assert_value(&kv, "empty", "");
    assert_null(ck_kv_get(&kv, "", 0));
    check_invariants(&kv);
    ck_kv_free(&kv);
}

static void test_compare_and_swap(void **state)
{
    struct ck_kv kv;
    ck_kv_init(&kv);
    struct tx x;
    /* Create only if absent (create index == 0). */
    tx_init(&x);
    tx_cmp(&x, S("k"), CK_KV_CREATE, CK_KV_EQ, 0);
    tx_op(&x, CK_KV_PUT, S("k"), S("first"));
    assert_int_equal(apply(&kv, &x, 3), 0);
    assert_int_equal(apply(&kv, &x, 4), CK_ECONFLICT);
    assert_value(&kv, "k", "first");
    assert_int_equal(kv.index, 3);

    /* Swap on the modify index: a stale one conflicts. */
    tx_init(&x);
    tx_cmp(&x, S("k"), CK_KV_MOD, CK_KV_EQ, 2);
    tx_op(&x, CK_KV_PUT, S("k"), S("stale"));
    assert_int_equal(apply(&kv, &x, 5), CK_ECONFLICT);
    x.cmp[0].number = 3;
    assert_int_equal(apply(&kv, &x, 6), 0);
    assert_value(&kv, "k", "stale");
    assert_int_equal(ck_kv_get(&kv, "k", 1)->mod_index, 6);

    /* Every target and operator. */
    struct {
        uint8_t target, op;
        uint64_t n;
        bool holds;
    } cases[] = {
        {CK_KV_MOD, CK_KV_NE, 6, false},    {CK_KV_MOD, CK_KV_LT, 7, true},      {CK_KV_MOD, CK_KV_GT, 5, true},
        {CK_KV_MOD, CK_KV_GT, 6, false},    {CK_KV_CREATE, CK_KV_EQ, 3, true},   {CK_KV_CREATE, CK_KV_GT, 0, true},
        {CK_KV_VERSION, CK_KV_EQ, 2, true}, {CK_KV_VERSION, CK_KV_LT, 2, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tx_init(&x);
        tx_cmp(&x, S("k"), cases[i].target, cases[i].op, cases[i].n);
        assert_int_equal(apply(&kv, &x, 7), cases[i].holds ? 0 : CK_ECONFLICT);
    }
    /* A missing key has indexes and version 0, and no value. */
    tx_init(&x);
    tx_cmp(&x, S("missing"), CK_KV_MOD, CK_KV_EQ, 0);
    tx_cmp(&x, S("missing"), CK_KV_VERSION, CK_KV_EQ, 0);
    assert_int_equal(apply(&kv, &x, 8), 0);
    tx_init(&x);
    tx_cmp_value(&x, S("missing"), CK_KV_NE, S("x"));
    assert_int_equal(apply(&kv, &x, 8), CK_ECONFLICT);
    /* Values compare bytewise, a prefix first. */
    tx_init(&x);
    tx_cmp_value(&x, S("k"), CK_KV_EQ, S("stale"));
    tx_cmp_value(&x, S("k"), CK_KV_GT, S("stal"));
    tx_cmp_value(&x, S("k"), CK_KV_LT, S("stalf"));
    tx_op(&x, CK_KV_PUT, S("k"), S("v3"));
    assert_int_equal(apply(&kv, &x, 9), 0);
    assert_value(&kv, "k", "v3");
    check_invariants(&kv);
    ck_kv_free(&kv);
}

static void test_transactions_apply_all_or_nothing(void **state)
{
    struct ck_kv kv;
    ck_kv_init(&kv);
    assert_int_equal(put(&kv, "a", "1", 1), 0);
    assert_int_equal(put(&kv, "b", "2", 2), 0);
    size_t len0;
    uint8_t *before = snapshot(&kv, &len0);

    struct tx x;
    /* The second compare fails: nothing of the operations happens. */
    tx_init(&x);
    tx_cmp(&x, S("a"), CK_KV_MOD, CK_KV_EQ, 1);
    tx_cmp(&x, S("b"), CK_KV_MOD, CK_KV_EQ, 1);
    tx_op(&x, CK_KV_PUT, S("a"), S("x"));
    tx_op(&x, CK_KV_DELETE, S("b"), S(""));
    assert_int_equal(apply(&kv, &x, 3), CK_ECONFLICT);

    /* A value over the limit, after other operations: all undone. */
    tx_init(&x);
    x.t.max_value = 4;
    tx_op(&x, CK_KV_PUT, S("c"), S("ok"));
    tx_op(&x, CK_KV_DELETE, S("a"), S(""));
    tx_op(&x, CK_KV_PUT, S("b"), S("12345"));
    assert_int_equal(apply(&kv, &x, 3), CK_ETOOBIG);

    /* The total over the limit, after puts, replaces and deletes of the
     * same keys: all undone, byte for byte. */
    tx_init(&x);
    x.t.max_bytes = kv.bytes + 2;
    tx_op(&x, CK_KV_PUT, S("a"), S("replaced"));
    tx_op(&x, CK_KV_DELETE, S("b"), S(""));
    tx_op(&x, CK_KV_PUT, S("b"), S("back"));
    tx_op(&x, CK_KV_PUT, S("new"), S("0123456789"));
    tx_op(&x, CK_KV_DELETE_PREFIX, S(""), S(""));
    tx_op(&x, CK_KV_PUT, S("z"), S("0123456789012345678901234567890123456789012345678901234567890123456789"));
    assert_int_equal(apply(&kv, &x, 3), CK_ETOOBIG);
    size_t len1;
    uint8_t *after = snapshot(&kv, &len1);
    assert_int_equal(len0, len1);
    assert_memory_equal(before, after, len0);
    assert_int_equal(kv.ev_n, 2);
    free(after);

    /* Within the limit it applies, in order: the prefix delete then sees
     * what the earlier operations put. */
    x.t.max_bytes = CK_KV_DEFAULT_MAX_BYTES;
    assert_int_equal(apply(&kv, &x, 4), 0);
    assert_int_equal(kv.n, 1);
    assert_int_equal(ck_kv_get(&kv, "z", 1)->version, 1);
    /* A store over a lowered limit may still shrink, never grow. */
    tx_init(&x);
    x.t.max_bytes = 1;
    tx_op(&x, CK_KV_PUT, S("z"), S("short"));
    assert_int_equal(apply(&kv, &x, 5), 0);
    tx_init(&x);
    x.t.max_bytes = 1;
    tx_op(&x, CK_KV_PUT, S("z"), S("longer again"));
    assert_int_equal(apply(&kv, &x, 6), CK_ETOOBIG);
    check_invariants(&kv);
    free(before);
    ck_kv_free(&kv);
}

static void test_binary_keys_prefixes_and_deletes(void **state)
{
    struct ck_kv kv;
    ck_kv_init(&kv);
    const char *keys[] = {"app/", "app/a", "app/b", "app0", "ap", "app/a/x", "b"};
    for (size_t i = 0; i < 7; i++) {
        assert_int_equal(put(&kv, keys[i], keys[i], i + 1), 0);
    }
    struct tx x;
    tx_init(&x);
    const char nul[] = {'a', 'p', 'p', '/', 0, 1};
    const char ff[] = {'a', 'p', 'p', '/', (char)0xff};
    tx_op(&x, CK_KV_PUT, B(nul, sizeof(nul)), B(nul, sizeof(nul)));
    tx_op(&x, CK_KV_PUT, B(ff, sizeof(ff)), S("ff"));
    assert_int_equal(apply(&kv, &x, 10), 0);
    check_invariants(&kv);

    uint32_t first, n = ck_kv_prefix(&kv, "app/", 4, &first);
    assert_int_equal(n, 6);
    const char *want[] = {"app/", NULL, "app/a", "app/a/x", "app/b", NULL};
    for (uint32_t i = 0; i < n; i++) {
        const struct ck_kv_entry *e = kv.entries[first + i];
        if (want[i] != NULL) {
            assert_int_equal(e->key_len, strlen(want[i]));
            assert_memory_equal(e->key, want[i], e->key_len);
        }
    }
    assert_int_equal(kv.entries[first + 1]->key_len, sizeof(nul)); /* "app/\0\1" sorts before "app/a" */
    assert_int_equal(kv.entries[first + 5]->key_len, sizeof(ff));  /* "app/\xff" after "app/b" */
    assert_int_equal(ck_kv_prefix(&kv, "", 0, &first), kv.n);
    assert_int_equal(ck_kv_prefix(&kv, "zz", 2, &first), 0);
    assert_int_equal(ck_kv_prefix(&kv, "app/a", 5, &first), 2);

    /* Deleting a missing key is not an error and changes nothing. */
    uint64_t index = kv.index;
    tx_init(&x);
    tx_op(&x, CK_KV_DELETE, S("nope"), S(""));
    assert_int_equal(apply(&kv, &x, 11), 0);
    assert_int_equal(kv.index, index);
    tx_init(&x);
    tx_op(&x, CK_KV_DELETE_PREFIX, S("app/"), S(""));
    assert_int_equal(apply(&kv, &x, 12), 0);
    assert_int_equal(ck_kv_prefix(&kv, "app/", 4, &first), 0);
    assert_int_equal(kv.n, 3); /* ap, app0, b */
    assert_value(&kv, "app0", "app0");
    check_invariants(&kv);
    ck_kv_free(&kv);
}

static void test_encoding_refuses_malformed_input(void **state)
{
    struct tx x;
    tx_init(&x);
    tx_cmp(&x, S("k"), CK_KV_MOD, CK_KV_EQ, 7);
    tx_cmp_value(&x, S("k"), CK_KV_NE, S("v"));
    tx_op(&x, CK_KV_PUT, S("k"), S("value"));
    tx_op(&x, CK_KV_DELETE, S("j"), S(""));
    tx_op(&x, CK_KV_DELETE_PREFIX, S(""), S(""));
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_kv_encode_txn(&w, &x.t);
    struct ck_rbuf r;
    struct ck_kv_txn t;
    ck_rbuf_init(&r, w.p, w.len);
    assert_int_equal(ck_kv_decode_txn(&r, &t), 0);
    assert_true(ck_r_done(&r));
    assert_int_equal(t.n_cmp, 2);
    assert_int_equal(t.n_ops, 3);
    assert_int_equal(t.cmp[0].number, 7);
    assert_int_equal(t.cmp[1].value.len, 1);
    assert_memory_equal(t.ops[0].value.p, "value", 5);
    ck_kv_txn_free(&t);
    /* Every truncation is refused. */
    for (size_t cut = 0; cut < w.len; cut++) {
        ck_rbuf_init(&r, w.p, cut);
        int rv = ck_kv_decode_txn(&r, &t);
        assert_true(rv != 0 || !ck_r_done(&r));
        if (rv == 0) {
            ck_kv_txn_free(&t);
        }
    }
    ck_wbuf_free(&w);

    /* Bad fields: target, operator, op type, empty key, too many items, a
     * value limit above the hard cap. */
    struct tx bad[6];
    for (int i = 0; i < 6; i++) {
        tx_init(&bad[i]);
        tx_op(&bad[i], CK_KV_PUT, S("k"), S("v"));
    }
    tx_cmp(&bad[0], S("k"), 9, CK_KV_EQ, 0);
    tx_cmp(&bad[1], S("k"), CK_KV_MOD, 0, 0);
    bad[2].ops[0].type = 7;
    bad[3].ops[0].key = S("");
    bad[4].t.n_ops = CK_KV_MAX_TXN_ITEMS + 1;
    for (uint32_t i = 1; i < bad[4].t.n_ops && i < CK_KV_MAX_TXN_ITEMS; i++) {
        bad[4].ops[i] = bad[4].ops[0];
    }
    bad[5].t.max_value = CK_KV_MAX_VALUE + 1;
    for (int i = 0; i < 6; i++) {
        if (i == 4) {
            /* The encoder would read past ops[]: write the count by hand. */
            ck_wbuf_init(&w);
            ck_w_u32(&w, 1);
            ck_w_u64(&w, 1);
            ck_w_u32(&w, 0);
            ck_w_u32(&w, CK_KV_MAX_TXN_ITEMS + 1);
        } else {
            ck_wbuf_init(&w);
            ck_kv_encode_txn(&w, &bad[i].t);
        }
        ck_rbuf_init(&r, w.p, w.len);
        assert_int_equal(ck_kv_decode_txn(&r, &t), CK_ECORRUPT);
        ck_wbuf_free(&w);
    }
}

static void test_snapshot_round_trip_and_corruption(void **state)
{
    struct ck_kv kv, back;
    ck_kv_init(&kv);
    ck_kv_init(&back);
    for (int i = 0; i < 50; i++) {
        char k[16], v[16];
        snprintf(k, sizeof(k), "key/%03d", (i * 37) % 50);
        snprintf(v, sizeof(v), "v%d", i);
        assert_int_equal(put(&kv, k, v, (uint64_t)i + 1), 0);
    }
    size_t len;
    uint8_t *snap = snapshot(&kv, &len);
    struct ck_rbuf r;
    ck_rbuf_init(&r, snap, len);
    assert_int_equal(ck_kv_restore(&back, &r), 0);
    assert_true(ck_r_done(&r));
    check_invariants(&back);
    size_t len2;
    uint8_t *again = snapshot(&back, &len2);
    assert_int_equal(len, len2);
    assert_memory_equal(snap, again, len);
    free(again);
    /* Restored history starts at the snapshot: earlier is compacted. */
    const struct ck_kv_event *ev[4];
    uint32_t n;
    assert_int_equal(ck_kv_events(&back, back.index - 1, 4, ev, &n), CK_ECOMPACTED);
    assert_int_equal(ck_kv_events(&back, back.index, 4, ev, &n), 0);
    assert_int_equal(n, 0);

    /* Every truncation is refused, and the target keeps its contents. */
    assert_int_equal(put(&back, "marker", "m", 100), 0);
    for (size_t cut = 0; cut < len; cut += 7) {
        ck_rbuf_init(&r, snap, cut);
        if (ck_kv_restore(&back, &r) == 0) {
            assert_false(ck_r_done(&r) && cut < len);
        }
        assert_value(&back, "marker", "m");
    }
    /* Keys out of order: swap the first two entries' first key bytes. */
    uint8_t *bad = malloc(len);
    memcpy(bad, snap, len);
    /* u64 index, u32 n, then the first key: u32 len, "key/000" */
    bad[8 + 4 + 4 + 4] = 'z';
    ck_rbuf_init(&r, bad, len);
    assert_int_equal(ck_kv_restore(&back, &r), CK_ECORRUPT);
    assert_value(&back, "marker", "m");
    /* A count the buffer cannot hold. */
    memcpy(bad, snap, len);
    bad[8] = 0xff;
    bad[9] = 0xff;
    bad[10] = 0xff;
    ck_rbuf_init(&r, bad, len);
    assert_int_equal(ck_kv_restore(&back, &r), CK_ECORRUPT);
    free(bad);
    free(snap);
    ck_kv_free(&kv);
    ck_kv_free(&back);
}

static void test_events_for_watches(void **state)
{
    struct ck_kv kv;
    ck_kv_init(&kv);
    ck_kv_set_history(&kv, 4, 0);
    assert_int_equal(put(&kv, "a", "1", 1), 0);
    struct tx x;
    tx_init(&x);
    tx_op(&x, CK_KV_PUT, S("b"), S("2"));
    tx_op(&x, CK_KV_DELETE, S("a"), S(""));
    assert_int_equal(apply(&kv, &x, 2), 0);
    const struct ck_kv_event *ev[8];
    uint32_t n;
    assert_int_equal(ck_kv_events(&kv, 0, 8, ev, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(ev[0]->index, 1);
    assert_int_equal(ev[0]->type, CK_KV_PUT);
    assert_int_equal(ev[1]->index, 2);
    assert_memory_equal(ev[1]->e.key, "b", 1);
    assert_int_equal(ev[2]->type, CK_KV_DELETE);
    assert_memory_equal(ev[2]->e.key, "a", 1);
    assert_int_equal(ev[2]->e.mod_index, 1); /* The deleted entry's. */
    assert_int_equal(ck_kv_events(&kv, 1, 8, ev, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(ck_kv_events(&kv, 2, 8, ev, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(ck_kv_events(&kv, 0, 1, ev, &n), 0); /* max */
    assert_int_equal(n, 1);
    /* ...but never half a transaction: index 2 has two events. */
    assert_int_equal(ck_kv_events(&kv, 1, 1, ev, &n), 0);
    assert_int_equal(n, 2);
    /* A failed transaction leaves no event. */
    tx_init(&x);
    tx_cmp(&x, S("b"), CK_KV_MOD, CK_KV_EQ, 1);
    tx_op(&x, CK_KV_PUT, S("c"), S("3"));
    assert_int_equal(apply(&kv, &x, 3), CK_ECONFLICT);
    assert_int_equal(kv.ev_n, 3);
    /* Past the ring's size the oldest go, and asking for them says so. */
    assert_int_equal(put(&kv, "c", "3", 4), 0);
    assert_int_equal(put(&kv, "d", "4", 5), 0);
    assert_int_equal(kv.ev_n, 4);
    assert_int_equal(ck_kv_events(&kv, 0, 8, ev, &n), CK_ECOMPACTED);
    assert_int_equal(ck_kv_events(&kv, 1, 8, ev, &n), 0);
    assert_int_equal(n, 4);
    assert_int_equal(ev[3]->index, 5);
    /* A byte limit trims too. */
    ck_kv_set_history(&kv, 100, sizeof(struct ck_kv_event) + 2);
    assert_int_equal(kv.ev_n, 1);
    assert_int_equal(ck_kv_events(&kv, 3, 8, ev, &n), CK_ECOMPACTED);
    assert_int_equal(ck_kv_events(&kv, 4, 8, ev, &n), 0);
    assert_int_equal(n, 1);
    ck_kv_free(&kv);
}

static int session_op(struct ck_kv *kv, uint8_t type, const char *owner, uint64_t number, uint64_t index)
{
    struct tx x;
    tx_init(&x);
    tx_op(&x, type, S(owner), S(""));
    x.ops[0].number = number;
    return apply(kv, &x, index);
}

static int put_in(struct ck_kv *kv, const char *k, uint64_t session, uint64_t index)
{
    struct tx x;
    tx_init(&x);
    tx_cmp(&x, S(k), CK_KV_CREATE, CK_KV_EQ, 0);
    tx_op(&x, CK_KV_PUT, S(k), S("held"));
    x.ops[0].number = session;
    return apply(kv, &x, index);
}

static void test_sessions_own_keys(void **state)
{
    struct ck_kv kv;
    ck_kv_init(&kv);
    /* A TTL session and a node's own. */
    assert_int_equal(session_op(&kv, CK_KV_SESSION_CREATE, "", 10000, 5), 0);
    assert_int_equal(session_op(&kv, CK_KV_SESSION_CREATE, "node-2", 0, 6), 0);
    const struct ck_kv_session *ss = ck_kv_session(&kv, 5);
    assert_non_null(ss);
    assert_int_equal(ss->ttl_ms, 10000);
    assert_int_equal(ss->renewed, 5);
    assert_int_equal(put_in(&kv, "lock/a", 5, 7), 0);
    assert_int_equal(put_in(&kv, "lock/b", 6, 8), 0);
    assert_int_equal(put(&kv, "free", "x", 9), 0);
    /* A put or a renewal naming no session is refused whole. */
    assert_int_equal(put_in(&kv, "lock/c", 99, 10), CK_ENOTFOUND);
    assert_null(ck_kv_get(&kv, "lock/c", 6));
    assert_int_equal(session_op(&kv, CK_KV_SESSION_RENEW, "", 99, 10), CK_ENOTFOUND);
    assert_int_equal(session_op(&kv, CK_KV_SESSION_RENEW, "", 5, 11), 0);
    assert_int_equal(ck_kv_session(&kv, 5)->renewed, 11);
    /* Destroying deletes its keys (with events), and is idempotent. */
    uint32_t events = kv.ev_n;
    assert_int_equal(session_op(&kv, CK_KV_SESSION_DESTROY, "", 5, 12), 0);
    assert_null(ck_kv_session(&kv, 5));
    assert_null(ck_kv_get(&kv, "lock/a", 6));
    assert_non_null(ck_kv_get(&kv, "free", 4));
    assert_int_equal(kv.ev_n, events + 1);
    assert_int_equal(kv.index, 12);
    assert_int_equal(session_op(&kv, CK_KV_SESSION_DESTROY, "", 5, 13), 0);
    assert_int_equal(kv.index, 12);
    /* A node's sessions end with the node. */
    assert_int_equal(ck_kv_drop_owner(&kv, "node-3", 6, 14), 0);
    assert_non_null(ck_kv_session(&kv, 6));
    assert_int_equal(ck_kv_drop_owner(&kv, "node-2", 6, 15), 0);
    assert_null(ck_kv_session(&kv, 6));
    assert_null(ck_kv_get(&kv, "lock/b", 6));
    assert_int_equal(kv.index, 15);
    check_invariants(&kv);

    /* Session operations stand alone in their transaction. */
    struct tx x;
    tx_init(&x);
    tx_op(&x, CK_KV_SESSION_CREATE, S(""), S(""));
    tx_op(&x, CK_KV_PUT, S("k"), S("v"));
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_kv_encode_txn(&w, &x.t);
    struct ck_rbuf r;
    struct ck_kv_txn t;
    ck_rbuf_init(&r, w.p, w.len);
    assert_int_equal(ck_kv_decode_txn(&r, &t), CK_ECORRUPT);
    ck_wbuf_free(&w);
    tx_init(&x);
    tx_op(&x, CK_KV_SESSION_RENEW, S(""), S(""));
    x.ops[0].number = 0; /* No session 0. */
    ck_wbuf_init(&w);
    ck_kv_encode_txn(&w, &x.t);
    ck_rbuf_init(&r, w.p, w.len);
    assert_int_equal(ck_kv_decode_txn(&r, &t), CK_ECORRUPT);
    ck_wbuf_free(&w);

    /* Sessions and the keys' sessions travel in the snapshot. */
    assert_int_equal(session_op(&kv, CK_KV_SESSION_CREATE, "node-1", 0, 20), 0);
    assert_int_equal(put_in(&kv, "lock/z", 20, 21), 0);
    size_t len;
    uint8_t *snap = snapshot(&kv, &len);
    struct ck_kv back;
    ck_kv_init(&back);
    ck_rbuf_init(&r, snap, len);
    assert_int_equal(ck_kv_restore(&back, &r), 0);
    assert_non_null(ck_kv_session(&back, 20));
    assert_int_equal(ck_kv_get(&back, "lock/z", 6)->session, 20);
    assert_int_equal(ck_kv_drop_owner(&back, "node-1", 6, 22), 0);
    assert_null(ck_kv_get(&back, "lock/z", 6));
    /* A key whose session is missing is corrupt: drop the session table. */
    snap[len - (8 + 8 + 8 + 4 + 6) - 4] = 0; /* n_sessions = 0 ... */
    ck_rbuf_init(&r, snap, len - (8 + 8 + 8 + 4 + 6));
    assert_int_equal(ck_kv_restore(&back, &r), CK_ECORRUPT);
    free(snap);
    ck_kv_free(&back);
    ck_kv_free(&kv);
}

/* A reference model: at most 16 keys "k0".."k15" with values, and a random
 * run of transactions checked against it after every step. */
struct model {
    bool present[16];
    char value[16][8];
    uint64_t mod[16];
};

static void test_random_against_a_model(void **state)
{
    struct ck_kv kv;
    ck_kv_init(&kv);
    struct model m;
    memset(&m, 0, sizeof(m));
    char keys[16][4];
    for (int i = 0; i < 16; i++) {
        snprintf(keys[i], sizeof(keys[i]), "k%d", i);
    }
    srand(12345);
    for (uint64_t index = 1; index <= 20000; index++) {
        struct tx x;
        tx_init(&x);
        struct model next = m;
        bool ok = true;
        int n_cmp = rand() % 3;
        for (int c = 0; c < n_cmp; c++) {
            int k = rand() % 16;
            uint64_t want = rand() % 2 ? m.mod[k] : (uint64_t)(rand() % (int)index);
            tx_cmp(&x, S(keys[k]), CK_KV_MOD, CK_KV_EQ, want);
            ok = ok && (m.present[k] ? m.mod[k] : 0) == want;
        }
        int n_ops = 1 + rand() % 3;
        char vals[4][8];
        for (int o = 0; o < n_ops; o++) {
            int k = rand() % 16;
            if (rand() % 4 == 0) {
                tx_op(&x, CK_KV_DELETE, S(keys[k]), S(""));
                next.present[k] = false;
            } else {
                snprintf(vals[o], sizeof(vals[o]), "%d", rand() % 1000);
                tx_op(&x, CK_KV_PUT, S(keys[k]), S(vals[o]));
                next.present[k] = true;
                strcpy(next.value[k], vals[o]);
                next.mod[k] = index;
            }
        }
        /* Sometimes a total limit the result may break. */
        uint64_t limit = rand() % 8 == 0 ? 6 * (CK_KV_ENTRY_OVERHEAD + 5) : CK_KV_DEFAULT_MAX_BYTES;
        x.t.max_bytes = limit;
        uint64_t bytes = 0;
        for (int k = 0; k < 16; k++) {
            if (next.present[k]) {
                bytes += strlen(keys[k]) + strlen(next.value[k]) + CK_KV_ENTRY_OVERHEAD;
            }
        }
        uint64_t old_bytes = kv.bytes;
        int rv = apply(&kv, &x, index);
        if (!ok) {
            assert_int_equal(rv, CK_ECONFLICT);
        } else if (bytes > limit && bytes > old_bytes) {
            assert_int_equal(rv, CK_ETOOBIG);
        } else if (rv == 0) {
            m = next;
        } else {
            /* Over the limit but not larger than before: allowed to apply;
             * any refusal here would be a bug. */
            fail_msg("txn at %llu refused with %d", (unsigned long long)index, rv);
        }
        for (int k = 0; k < 16; k++) {
            assert_value(&kv, keys[k], m.present[k] ? m.value[k] : NULL);
        }
        check_invariants(&kv);
    }
    ck_kv_free(&kv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_revisions),
        cmocka_unit_test(test_compare_and_swap),
        cmocka_unit_test(test_transactions_apply_all_or_nothing),
        cmocka_unit_test(test_binary_keys_prefixes_and_deletes),
        cmocka_unit_test(test_encoding_refuses_malformed_input),
        cmocka_unit_test(test_snapshot_round_trip_and_corruption),
        cmocka_unit_test(test_events_for_watches),
        cmocka_unit_test(test_sessions_own_keys),
        cmocka_unit_test(test_random_against_a_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
