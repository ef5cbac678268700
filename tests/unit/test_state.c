/*
 * Unit tests for ck_state: the command encoding (round trips, every way a
 * decoder must refuse input, padding), the apply semantics of each command,
 * the snapshot format (round trip, every way a restore must refuse input),
 * determinism, and a randomized run that feeds thousands of valid, mutated and
 * garbage commands while checking the state's invariants after every step.
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
#include "ck_hash.h"
#include "ck_state.h"

/* ------------------------------------------------------------------------
 * Helpers: encoded commands as owned byte blobs.
 * ------------------------------------------------------------------------ */

struct blob {
    uint8_t *p;
    size_t len;
};

static struct ck_str S(const char *s) {
    struct ck_str v = {s, (uint32_t)strlen(s)};
    return v;
}

/* A string of @n copies of 'x' (malloc'd, NUL-terminated). */
static char *
xs(size_t n)
{
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, 'x', n);
    s[n] = '\0';
    return s;
}

static struct blob take(struct ck_wbuf *w)
{
    struct blob b;

    assert_int_equal(w->err, 0);
    b.p = ck_wbuf_take(w, &b.len);
    assert_non_null(b.p);
    return b;
}

static struct blob blob_copy(const void *p, size_t len, size_t extra)
{
    struct blob b = {calloc(1, len + extra + 1), len + extra};
    assert_non_null(b.p);
    memcpy(b.p, p, len);
    return b;
}

static void blob_free(struct blob *b)
{
    free(b->p);
    b->p = NULL;
    b->len = 0;
}

static void assert_blob_equal(struct blob a, struct blob b)
{
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.p, b.p, a.len);
}

static struct blob enc_init_full(const struct ck_cmd_init *c)
{
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_init(&w, c);
    return take(&w);
}

static struct ck_cmd_init init_cmd(uint32_t partitions, uint32_t replication)
{
    struct ck_cmd_init c = {S("cluster-1"), S("demo"), partitions, replication, CK_HASH_FNV1A64, 1};
    return c;
}

static struct blob enc_init(uint32_t partitions, uint32_t replication)
{
    struct ck_cmd_init c = init_cmd(partitions, replication);
    return enc_init_full(&c);
}

static struct ck_str services[] = {
    {"http", 4}, {"10.0.0.1:8080", 13}, {"metrics", 7}, {"10.0.0.1:9100", 13},
    {"grpc", 4}, {"10.0.0.1:7000", 13}, {"admin", 5},   {"10.0.0.1:7001", 13},
};

static struct ck_cmd_node node_cmd(const char *id, uint64_t raft_id, uint8_t status, uint64_t time_ms)
{
    struct ck_cmd_node c = {0};
    c.id = S(id);
    c.name = S(id);
    c.http_addr = S("10.0.0.1:8080");
    c.raft_addr = S("10.0.0.1:9090");
    c.zone = S("zone-a");
    c.raft_id = raft_id;
    c.weight = 100;
    c.status = status;
    c.time_ms = time_ms;
    return c;
}

static struct blob enc_node_full(const struct ck_cmd_node *c)
{
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_node(&w, c);
    return take(&w);
}

static struct blob enc_node(const char *id, uint64_t raft_id, uint8_t status, uint64_t time_ms)
{
    struct ck_cmd_node c = node_cmd(id, raft_id, status, time_ms);
    return enc_node_full(&c);
}

/* A node with the first @n_services of the services above. */
static struct blob enc_node_svc(const char *id, uint64_t raft_id, uint32_t n_services)
{
    struct ck_cmd_node c = node_cmd(id, raft_id, CK_NODE_ACTIVE, 1000);
    c.n_services = n_services;
    c.services = services;
    return enc_node_full(&c);
}

static struct blob enc_status(const char *id, uint8_t status, uint64_t time_ms)
{
    struct ck_cmd_status c = {S(id), status, time_ms};
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_status(&w, &c);
    return take(&w);
}

static struct blob enc_remove(const char *id)
{
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_remove(&w, S(id));
    return take(&w);
}

#define MAX_IDS 16

/* A TABLE command over @ids; @rows holds partitions * width node indexes
 * into @ids (CK_NO_NODE for empty), written little-endian. */
static struct blob enc_table_sv(uint32_t partitions, uint32_t width, const struct ck_str *ids, uint32_t n_ids,
                                const uint16_t *rows)
{
    size_t slots = (size_t)partitions * width;
    uint8_t *owners = malloc(2 * slots + 1);
    struct ck_cmd_table c = {partitions, width, n_ids, (struct ck_str *)ids, owners};
    struct ck_wbuf w;

    assert_non_null(owners);
    for (size_t i = 0; i < slots; i++) {
        owners[2 * i] = (uint8_t)rows[i];
        owners[2 * i + 1] = (uint8_t)(rows[i] >> 8);
    }
    ck_wbuf_init(&w);
    ck_cmd_encode_table(&w, &c);
    free(owners);
    return take(&w);
}

static struct blob enc_table(uint32_t partitions, uint32_t width, const char *const *ids, uint32_t n_ids,
                             const uint16_t *rows)
{
    struct ck_str sv[MAX_IDS];

    assert_true(n_ids <= MAX_IDS);
    for (uint32_t i = 0; i < n_ids; i++) {
        sv[i] = S(ids[i]);
    }
    return enc_table_sv(partitions, width, sv, n_ids, rows);
}

/* Apply @b (then free it) and return the result. */
static int apply(struct ck_state *s, struct blob b, uint64_t index)
{
    int rv = ck_state_apply(s, b.p, b.len, index);
    free(b.p);
    return rv;
}

static int decode(struct blob b)
{
    struct ck_cmd c;
    int rv = ck_cmd_decode(&c, b.p, b.len);
    ck_cmd_free(&c);
    return rv;
}

/* Decode @b (then free it) and return the result. */
static int decode_free(struct blob b)
{
    int rv = decode(b);
    free(b.p);
    return rv;
}

static struct blob snap(const struct ck_state *s)
{
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_state_snapshot(s, &w);
    return take(&w);
}

static void assert_snap_equal(const struct ck_state *s, struct blob expected)
{
    struct blob b = snap(s);
    assert_blob_equal(b, expected);
    blob_free(&b);
}

/* The id of the node in slot @k of partition @p, or NULL when empty. */
static const char *owner_id(const struct ck_state *s, uint32_t p, uint32_t k)
{
    uint16_t v = s->table.owners[(size_t)p * s->table.width + k];
    if (v == CK_NO_NODE) {
        return NULL;
    }
    assert_true(v < s->n_nodes);
    return s->nodes[v].id;
}

static void assert_row(const struct ck_state *s, uint32_t p, const char *a, const char *b, const char *c)
{
    const char *want[3] = {a, b, c};
    for (uint32_t k = 0; k < 3 && k < s->table.width; k++) {
        const char *got = owner_id(s, p, k);
        if (want[k] == NULL) {
            assert_null(got);
        } else {
            assert_non_null(got);
            assert_string_equal(got, want[k]);
        }
    }
}

/* The structural invariants every reachable state must hold. */
static void assert_invariants(const struct ck_state *s)
{
    for (uint32_t i = 0; i < s->n_nodes; i++) {
        for (uint32_t j = 0; j < i; j++) {
            assert_string_not_equal(s->nodes[i].id, s->nodes[j].id);
            if (s->nodes[i].raft_id != 0) {
                assert_true(s->nodes[i].raft_id != s->nodes[j].raft_id);
            }
        }
    }
    if (!s->config.initialized) {
        assert_int_equal(s->table.partitions, 0);
        return;
    }
    assert_int_equal(s->table.partitions, s->config.partitions);
    for (uint32_t p = 0; p < s->table.partitions; p++) {
        const uint16_t *row = s->table.owners + (size_t)p * s->table.width;
        bool ended = false;
        for (uint32_t k = 0; k < s->table.width; k++) {
            if (row[k] == CK_NO_NODE) {
                ended = true;
                continue;
            }
            assert_false(ended);
            assert_true(row[k] < s->n_nodes);
            for (uint32_t j = 0; j < k; j++) {
                assert_true(row[j] != row[k]);
            }
        }
    }
}

/* Every command type once, for the tests that loop over "any command". */
static struct blob sample(int i)
{
    static const char *const ids[] = {"node-a", "node-b", "node-c"};
    static const uint16_t rows[] = {0, 1, 2, 1, 2, CK_NO_NODE, 2, CK_NO_NODE, CK_NO_NODE};
    switch (i) {
    case 0:
        return enc_init(3, 3);
    case 1:
        return enc_node_svc("node-a", 11, 3);
    case 2:
        return enc_status("node-a", CK_NODE_SUSPECT, 1234);
    case 3:
        return enc_remove("node-a");
    default:
        return enc_table(3, 3, ids, 3, rows);
    }
}
#define N_SAMPLES 5

/* ------------------------------------------------------------------------
 * Decoding
 * ------------------------------------------------------------------------ */

/* Decoding an INIT gives back every field, and re-encoding it gives the same
 * bytes. */
static void test_roundtrip_init(void **state)
{
    struct ck_cmd_init in = {S("c-42"), S("my cluster"), 4096, 5, CK_HASH_MD5, 1};
    struct blob b = enc_init_full(&in);
    struct ck_cmd c;

    (void)state;
    assert_int_equal(b.len, 2 + 4 + 4 + 4 + 10 + 4 + 4 + 1 + 1);
    assert_int_equal(ck_cmd_decode(&c, b.p, b.len), 0);
    assert_int_equal(c.type, CK_CMD_INIT);
    assert_int_equal(c.init.cluster_id.len, 4);
    assert_memory_equal(c.init.cluster_id.p, "c-42", 4);
    assert_int_equal(c.init.name.len, 10);
    assert_memory_equal(c.init.name.p, "my cluster", 10);
    assert_int_equal(c.init.partitions, 4096);
    assert_int_equal(c.init.replication, 5);
    assert_int_equal(c.init.hash_algo, CK_HASH_MD5);
    assert_int_equal(c.init.hash_tags, 1);
    struct blob again = enc_init_full(&c.init);
    assert_blob_equal(b, again);
    ck_cmd_free(&c);
    blob_free(&again);
    blob_free(&b);
}

/* Decoding a NODE_UPSERT with services gives back every field and every
 * service in order, and re-encoding it gives the same bytes. */
static void test_roundtrip_node(void **state)
{
    struct ck_cmd_node in = node_cmd("node-1", 0x0102030405060708ull, CK_NODE_DOWN, 0xfedcba9876543210ull);
    struct ck_cmd c;

    (void)state;
    in.name = S("Node One");
    in.zone = S("eu-west-1b");
    in.weight = 0xdeadbeef;
    in.n_services = 4;
    in.services = services;
    struct blob b = enc_node_full(&in);
    assert_int_equal(ck_cmd_decode(&c, b.p, b.len), 0);
    assert_int_equal(c.type, CK_CMD_NODE_UPSERT);
    assert_true(c.node.id.len == 6 && memcmp(c.node.id.p, "node-1", 6) == 0);
    assert_true(c.node.name.len == 8 && memcmp(c.node.name.p, "Node One", 8) == 0);
    assert_true(c.node.http_addr.len == 13 && memcmp(c.node.http_addr.p, "10.0.0.1:8080", 13) == 0);
    assert_true(c.node.raft_addr.len == 13 && memcmp(c.node.raft_addr.p, "10.0.0.1:9090", 13) == 0);
    assert_true(c.node.zone.len == 10 && memcmp(c.node.zone.p, "eu-west-1b", 10) == 0);
    assert_true(c.node.raft_id == 0x0102030405060708ull);
    assert_int_equal(c.node.weight, 0xdeadbeef);
    assert_int_equal(c.node.status, CK_NODE_DOWN);
    assert_true(c.node.time_ms == 0xfedcba9876543210ull);
    assert_int_equal(c.node.n_services, 4);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(c.node.services[i].len, services[i].len);
        assert_memory_equal(c.node.services[i].p, services[i].p, services[i].len);
    }
    struct blob again = enc_node_full(&c.node);
    assert_blob_equal(b, again);
    ck_cmd_free(&c);
    blob_free(&again);
    blob_free(&b);
}

/* Decoding a NODE_STATUS gives back id, status and time. */
static void test_roundtrip_status(void **state)
{
    struct blob b = enc_status("node-9", CK_NODE_LEFT, 0x1122334455667788ull);
    struct ck_cmd c;

    (void)state;
    assert_int_equal(b.len, 2 + 4 + 6 + 1 + 8);
    assert_int_equal(ck_cmd_decode(&c, b.p, b.len), 0);
    assert_int_equal(c.type, CK_CMD_NODE_STATUS);
    assert_true(c.status.id.len == 6 && memcmp(c.status.id.p, "node-9", 6) == 0);
    assert_int_equal(c.status.status, CK_NODE_LEFT);
    assert_true(c.status.time_ms == 0x1122334455667788ull);
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_status(&w, &c.status);
    struct blob again = take(&w);
    assert_blob_equal(b, again);
    ck_cmd_free(&c);
    blob_free(&again);
    blob_free(&b);
}

/* Decoding a NODE_REMOVE gives back the id. */
static void test_roundtrip_remove(void **state)
{
    struct blob b = enc_remove("gone");
    struct ck_cmd c;

    (void)state;
    assert_int_equal(b.len, 2 + 4 + 4);
    assert_int_equal(ck_cmd_decode(&c, b.p, b.len), 0);
    assert_int_equal(c.type, CK_CMD_NODE_REMOVE);
    assert_true(c.remove_id.len == 4 && memcmp(c.remove_id.p, "gone", 4) == 0);
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_remove(&w, c.remove_id);
    struct blob again = take(&w);
    assert_blob_equal(b, again);
    ck_cmd_free(&c);
    blob_free(&again);
    blob_free(&b);
}

/* Decoding a TABLE gives back its shape, ids and little-endian owner slots
 * (empty slots at the ends of rows included). */
static void test_roundtrip_table(void **state)
{
    static const char *const ids[] = {"b", "a", "c"};
    static const uint16_t rows[] = {2,          0,          1,          1, CK_NO_NODE, CK_NO_NODE,
                                    CK_NO_NODE, CK_NO_NODE, CK_NO_NODE, 0, 2,          CK_NO_NODE};
    struct blob b = enc_table(4, 3, ids, 3, rows);
    struct ck_cmd c;

    (void)state;
    assert_int_equal(b.len, 2 + 12 + 3 * 5 + 4 * 3 * 2);
    assert_int_equal(ck_cmd_decode(&c, b.p, b.len), 0);
    assert_int_equal(c.type, CK_CMD_TABLE);
    assert_int_equal(c.table.partitions, 4);
    assert_int_equal(c.table.width, 3);
    assert_int_equal(c.table.n_ids, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(c.table.ids[i].len, 1);
        assert_memory_equal(c.table.ids[i].p, ids[i], 1);
    }
    for (int i = 0; i < 12; i++) {
        assert_int_equal(c.table.owners[2 * i] | (c.table.owners[2 * i + 1] << 8), rows[i]);
    }
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_table(&w, &c.table);
    struct blob again = take(&w);
    assert_blob_equal(b, again);
    ck_cmd_free(&c);
    blob_free(&again);
    blob_free(&b);
}

/* A command whose version byte is not 1 is corrupt, for every type. */
static void test_decode_rejects_version(void **state)
{
    (void)state;
    for (int i = 0; i < N_SAMPLES; i++) {
        struct blob b = sample(i);
        assert_int_equal(decode(b), 0);
        for (int v = 0; v < 256; v++) {
            b.p[0] = (uint8_t)v;
            /* Version 2 is version 1 plus (here: no) trailing fields. */
            assert_int_equal(decode(b), v == 1 || v == 2 ? 0 : CK_ECORRUPT);
        }
        blob_free(&b);
    }
}

/* A command type outside 1..6 is corrupt, whatever follows it. */
static void test_decode_rejects_unknown_type(void **state)
{
    (void)state;
    for (int i = 0; i < N_SAMPLES; i++) {
        struct blob b = sample(i);
        for (int t = 0; t < 256; t++) {
            if (t >= CK_CMD_INIT && t <= CK_CMD_FLAGS) {
                continue;
            }
            b.p[1] = (uint8_t)t;
            assert_int_equal(decode(b), CK_ECORRUPT);
        }
        blob_free(&b);
    }
}

/* Every strict prefix of every command type fails to decode (and never reads
 * past its end: each prefix is a fresh allocation of exactly that size). */
static void test_decode_rejects_every_truncation(void **state)
{
    (void)state;
    for (int i = 0; i < N_SAMPLES; i++) {
        struct blob b = sample(i);
        for (size_t n = 0; n < b.len; n++) {
            uint8_t *p = malloc(n ? n : 1);
            memcpy(p, b.p, n);
            struct blob prefix = {p, n};
            assert_int_not_equal(decode_free(prefix), 0);
        }
        assert_int_equal(decode(b), 0);
        blob_free(&b);
    }
}

/* 1..7 trailing zero bytes are padding and accepted; 8 or more, or any
 * non-zero trailing byte, make the command corrupt. */
static void test_decode_padding(void **state)
{
    (void)state;
    for (int i = 0; i < N_SAMPLES; i++) {
        struct blob b = sample(i);
        for (size_t pad = 1; pad <= 16; pad++) {
            struct blob padded = blob_copy(b.p, b.len, pad);
            assert_int_equal(decode(padded), pad <= 7 ? 0 : CK_ECORRUPT);
            for (size_t k = 0; k < pad; k++) {
                padded.p[b.len + k] = 0x01;
                assert_int_equal(decode(padded), CK_ECORRUPT);
                padded.p[b.len + k] = 0x80;
                assert_int_equal(decode(padded), CK_ECORRUPT);
                padded.p[b.len + k] = 0;
            }
            blob_free(&padded);
        }
        blob_free(&b);
    }
}

/* Every string field accepts CK_MAX_STR bytes and rejects one more; the
 * cluster id is capped at 64 bytes (ck_state.c's limit); ids and cluster ids
 * may not be empty. */
static void test_decode_rejects_long_strings(void **state)
{
    char *max = xs(CK_MAX_STR);
    char *over = xs(CK_MAX_STR + 1);
    char *id64 = xs(64);
    char *id65 = xs(65);
    const char *lens[2] = {max, over};

    (void)state;
    for (int o = 0; o < 2; o++) {
        int want = o == 0 ? 0 : CK_ECORRUPT;
        const char *v = lens[o];
        struct ck_cmd_init init = init_cmd(8, 3);
        init.name = S(v);
        assert_int_equal(decode_free(enc_init_full(&init)), want);

        for (int field = 0; field < 7; field++) {
            struct ck_cmd_node n = node_cmd("node-a", 1, CK_NODE_ACTIVE, 1);
            struct ck_str svc[4] = {S("http"), S("addr"), S("metrics"), S("addr2")};
            n.services = svc;
            n.n_services = 2;
            switch (field) {
            case 0:
                n.id = S(v);
                break;
            case 1:
                n.name = S(v);
                break;
            case 2:
                n.http_addr = S(v);
                break;
            case 3:
                n.raft_addr = S(v);
                break;
            case 4:
                n.zone = S(v);
                break;
            case 5:
                svc[2] = S(v);
                break;
            case 6:
                svc[3] = S(v);
                break;
            }
            assert_int_equal(decode_free(enc_node_full(&n)), want);
        }
        assert_int_equal(decode_free(enc_status(v, CK_NODE_DOWN, 5)), want);
        assert_int_equal(decode_free(enc_remove(v)), want);
        const char *ids[2] = {"a", v};
        uint16_t rows[2] = {1, 0};
        assert_int_equal(decode_free(enc_table(1, 2, ids, 2, rows)), want);
    }

    struct ck_cmd_init init = init_cmd(8, 3);
    init.cluster_id = S(id64);
    assert_int_equal(decode_free(enc_init_full(&init)), 0);
    init.cluster_id = S(id65);
    assert_int_not_equal(decode_free(enc_init_full(&init)), 0);
    init.cluster_id = S("");
    assert_int_not_equal(decode_free(enc_init_full(&init)), 0);
    assert_int_not_equal(decode_free(enc_node("", 1, CK_NODE_ACTIVE, 1)), 0);
    free(max);
    free(over);
    free(id64);
    free(id65);
}

/* A NUL byte inside any string is rejected: the state keeps C strings, so
 * "a\0x" would silently become "a" (and two such ids one duplicate). */
static void test_decode_rejects_nul_in_strings(void **state)
{
    struct ck_str nul = {"a\0x", 3};

    (void)state;
    struct ck_cmd_init init = init_cmd(8, 3);
    init.name = nul;
    assert_int_not_equal(decode_free(enc_init_full(&init)), 0);
    init = init_cmd(8, 3);
    init.cluster_id = nul;
    assert_int_not_equal(decode_free(enc_init_full(&init)), 0);
    for (int field = 0; field < 7; field++) {
        struct ck_cmd_node n = node_cmd("node-a", 1, CK_NODE_ACTIVE, 1);
        struct ck_str svc[2] = {S("http"), S("addr")};
        n.services = svc;
        n.n_services = 1;
        switch (field) {
        case 0:
            n.id = nul;
            break;
        case 1:
            n.name = nul;
            break;
        case 2:
            n.http_addr = nul;
            break;
        case 3:
            n.raft_addr = nul;
            break;
        case 4:
            n.zone = nul;
            break;
        case 5:
            svc[0] = nul;
            break;
        case 6:
            svc[1] = nul;
            break;
        }
        assert_int_not_equal(decode_free(enc_node_full(&n)), 0);
    }
    struct ck_cmd_status st = {nul, CK_NODE_DOWN, 1};
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_status(&w, &st);
    assert_int_not_equal(decode_free(take(&w)), 0);
    ck_cmd_encode_remove(&w, nul);
    assert_int_not_equal(decode_free(take(&w)), 0);
    struct ck_str ids[1] = {nul};
    uint16_t rows[1] = {0};
    assert_int_not_equal(decode_free(enc_table_sv(1, 1, ids, 1, rows)), 0);
}

/* INIT ranges: partitions 1..CK_MAX_PARTITIONS, replication 1..16, a known
 * hash algorithm and hash_tags 0/1 are accepted; anything else is not. */
static void test_decode_rejects_init_ranges(void **state)
{
    static const struct {
        uint32_t partitions, replication;
        uint8_t algo, tags;
        int ok;
    } v[] = {
        {1, 1, CK_HASH_FNV1A64, 0, 1},
        {CK_MAX_PARTITIONS, CK_MAX_REPLICATION, CK_HASH_MD5, 1, 1},
        {0, 3, CK_HASH_FNV1A64, 0, 0},
        {CK_MAX_PARTITIONS + 1, 3, CK_HASH_FNV1A64, 0, 0},
        {UINT32_MAX, 3, CK_HASH_FNV1A64, 0, 0},
        {8, 0, CK_HASH_FNV1A64, 0, 0},
        {8, CK_MAX_REPLICATION + 1, CK_HASH_FNV1A64, 0, 0},
        {8, UINT32_MAX, CK_HASH_FNV1A64, 0, 0},
        {8, 3, 0, 0, 0},
        {8, 3, 3, 0, 0},
        {8, 3, 255, 0, 0},
        {8, 3, CK_HASH_FNV1A64, 2, 0},
    };

    (void)state;
    for (size_t i = 0; i < CK_ARRAY_SIZE(v); i++) {
        struct ck_cmd_init c = init_cmd(v[i].partitions, v[i].replication);
        c.hash_algo = v[i].algo;
        c.hash_tags = v[i].tags;
        int rv = decode_free(enc_init_full(&c));
        if (v[i].ok) {
            assert_int_equal(rv, 0);
        } else {
            assert_int_equal(rv, CK_EINVAL);
        }
    }
}

/* NODE_UPSERT and NODE_STATUS accept only the five known statuses, and a node
 * has at most CK_MAX_SERVICES services. */
static void test_decode_rejects_unknown_status(void **state)
{
    (void)state;
    for (int st = 0; st < 256; st++) {
        int want = st >= CK_NODE_ACTIVE && st <= CK_NODE_STOPPED ? 0 : CK_EINVAL;
        assert_int_equal(decode_free(enc_node("n", 1, (uint8_t)st, 1)), want);
        assert_int_equal(decode_free(enc_status("n", (uint8_t)st, 1)), want);
    }

    struct ck_str *svc = calloc(2 * (CK_MAX_SERVICES + 1), sizeof *svc);
    for (uint32_t i = 0; i < 2 * (CK_MAX_SERVICES + 1); i++) {
        svc[i] = S("s");
    }
    struct ck_cmd_node n = node_cmd("n", 1, CK_NODE_ACTIVE, 1);
    n.services = svc;
    n.n_services = CK_MAX_SERVICES;
    assert_int_equal(decode_free(enc_node_full(&n)), 0);
    n.n_services = CK_MAX_SERVICES + 1;
    assert_int_equal(decode_free(enc_node_full(&n)), CK_EINVAL);
    free(svc);
}

/* TABLE: partitions 1..CK_MAX_PARTITIONS, width 1..16, and rows whose slots
 * are distinct indexes into ids with empty slots only at the end. */
static void test_decode_rejects_bad_tables(void **state)
{
    static const char *const ids[] = {"a", "b", "c"};
    const uint16_t E = CK_NO_NODE;
    static uint16_t big[(CK_MAX_REPLICATION + 1) * 2];

    (void)state;
    /* Good ones first, so the bad ones below fail for the stated reason. */
    assert_int_equal(decode_free(enc_table(2, 3, ids, 3, (uint16_t[]){0, 1, 2, E, E, E})), 0);
    assert_int_equal(decode_free(enc_table(1, 3, ids, 3, (uint16_t[]){2, E, E})), 0);
    assert_int_equal(decode_free(enc_table(1, 1, ids, 0, (uint16_t[]){E})), 0);

    /* Duplicates, at any distance. */
    assert_int_equal(decode_free(enc_table(1, 3, ids, 3, (uint16_t[]){0, 0, E})), CK_EINVAL);
    assert_int_equal(decode_free(enc_table(1, 3, ids, 3, (uint16_t[]){1, 2, 1})), CK_EINVAL);
    assert_int_equal(decode_free(enc_table(2, 3, ids, 3, (uint16_t[]){0, 1, 2, 2, 0, 2})), CK_EINVAL);
    /* Holes: an owner after an empty slot. */
    assert_int_equal(decode_free(enc_table(1, 3, ids, 3, (uint16_t[]){E, 0, E})), CK_EINVAL);
    assert_int_equal(decode_free(enc_table(1, 3, ids, 3, (uint16_t[]){0, E, 1})), CK_EINVAL);
    assert_int_equal(decode_free(enc_table(2, 3, ids, 3, (uint16_t[]){0, 1, 2, E, E, 2})), CK_EINVAL);
    /* Indexes outside ids. */
    assert_int_equal(decode_free(enc_table(1, 3, ids, 3, (uint16_t[]){3, E, E})), CK_EINVAL);
    assert_int_equal(decode_free(enc_table(1, 3, ids, 2, (uint16_t[]){0, 2, E})), CK_EINVAL);
    assert_int_equal(decode_free(enc_table(1, 1, ids, 0, (uint16_t[]){0})), CK_EINVAL);
    assert_int_equal(decode_free(enc_table(1, 1, ids, 3, (uint16_t[]){0xfffe})), CK_EINVAL);
    /* Shape. */
    assert_int_equal(decode_free(enc_table(0, 3, ids, 3, (uint16_t[]){0})), CK_EINVAL);
    assert_int_equal(decode_free(enc_table(1, 0, ids, 3, (uint16_t[]){0})), CK_EINVAL);
    for (size_t i = 0; i < CK_ARRAY_SIZE(big); i++) {
        big[i] = E;
    }
    assert_int_equal(decode_free(enc_table(1, CK_MAX_REPLICATION, ids, 3, big)), 0);
    assert_int_equal(decode_free(enc_table(1, CK_MAX_REPLICATION + 1, ids, 3, big)), CK_EINVAL);

    /* Partition counts past the limit are refused from the header alone (a
     * hand-written header: the owners would be megabytes). */
    for (int k = 0; k < 2; k++) {
        uint32_t parts = k == 0 ? CK_MAX_PARTITIONS + 1 : UINT32_MAX;
        struct ck_wbuf w;
        ck_wbuf_init(&w);
        ck_w_u8(&w, CK_CMD_VERSION);
        ck_w_u8(&w, CK_CMD_TABLE);
        ck_w_u32(&w, parts);
        ck_w_u32(&w, 1);
        ck_w_u32(&w, 0);
        assert_int_equal(decode_free(take(&w)), CK_EINVAL);
    }
    /* So are more ids than CK_MAX_NODES. */
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_w_u8(&w, CK_CMD_VERSION);
    ck_w_u8(&w, CK_CMD_TABLE);
    ck_w_u32(&w, 1);
    ck_w_u32(&w, 1);
    ck_w_u32(&w, CK_MAX_NODES + 1);
    assert_int_equal(decode_free(take(&w)), CK_EINVAL);
}

/* ------------------------------------------------------------------------
 * Apply
 * ------------------------------------------------------------------------ */

/* INIT stores the config and the hasher, and allocates an empty table of
 * partitions x replication with epochs 0. */
static void test_apply_init(void **state)
{
    struct ck_state s;
    struct ck_cmd_init c = {S("c-1"), S("prod"), 64, 3, CK_HASH_MD5, 1};
    struct ck_hasher h;

    (void)state;
    ck_state_init(&s);
    assert_int_equal(apply(&s, enc_init_full(&c), 7), 0);
    assert_true(s.config.initialized);
    assert_string_equal(s.config.cluster_id, "c-1");
    assert_string_equal(s.config.name, "prod");
    assert_int_equal(s.config.partitions, 64);
    assert_int_equal(s.config.replication, 3);
    assert_int_equal(s.config.hasher.algo, CK_HASH_MD5);
    assert_int_equal(s.config.hasher.partitions, 64);
    assert_true(s.config.hasher.tags);
    assert_int_equal(ck_hasher_init(&h, "md5", 64, true), 0);
    assert_int_equal(ck_hash_partition(&s.config.hasher, "user:{42}", 9), ck_hash_partition(&h, "user:{42}", 9));
    assert_int_equal(s.table.partitions, 64);
    assert_int_equal(s.table.width, 3);
    for (uint32_t p = 0; p < 64; p++) {
        uint32_t n;
        ck_state_owners(&s, p, &n);
        assert_int_equal(n, 0);
        assert_int_equal(s.table.epochs[p], 0);
    }
    assert_int_equal(s.index, 7);
    assert_int_equal(s.table_index, 7);
    assert_int_equal(s.n_nodes, 0);
    ck_state_free(&s);
}

/* A second INIT (even an identical one) is rejected and changes nothing. */
static void test_apply_second_init_rejected(void **state)
{
    struct ck_state s;

    (void)state;
    ck_state_init(&s);
    assert_int_equal(apply(&s, enc_init(8, 3), 1), 0);
    assert_int_equal(apply(&s, enc_node_svc("a", 1, 2), 2), 0);
    struct blob before = snap(&s);
    assert_int_equal(apply(&s, enc_init(16, 2), 3), CK_EINVAL);
    assert_snap_equal(&s, before);
    assert_int_equal(apply(&s, enc_init(8, 3), 4), CK_EINVAL);
    assert_snap_equal(&s, before);
    assert_int_equal(s.index, 2);
    assert_int_equal(s.config.partitions, 8);
    blob_free(&before);
    ck_state_free(&s);
}

/* NODE_UPSERT adds a node (joined at its index), then updates it in place:
 * joined_index stays, status_since changes only when the status does. */
static void test_apply_node_upsert(void **state)
{
    struct ck_state s;

    (void)state;
    ck_state_init(&s);
    assert_int_equal(apply(&s, enc_node_svc("a", 11, 2), 5), 0);
    assert_int_equal(s.n_nodes, 1);
    struct ck_node_info *n = &s.nodes[0];
    assert_string_equal(n->id, "a");
    assert_string_equal(n->name, "a");
    assert_string_equal(n->http_addr, "10.0.0.1:8080");
    assert_string_equal(n->raft_addr, "10.0.0.1:9090");
    assert_string_equal(n->zone, "zone-a");
    assert_true(n->raft_id == 11);
    assert_int_equal(n->weight, 100);
    assert_int_equal(n->status, CK_NODE_ACTIVE);
    assert_int_equal(n->status_since_ms, 1000);
    assert_int_equal(n->joined_index, 5);
    assert_int_equal(n->n_services, 2);
    assert_string_equal(n->services[0].name, "http");
    assert_string_equal(n->services[0].addr, "10.0.0.1:8080");
    assert_string_equal(n->services[1].name, "metrics");
    assert_string_equal(n->services[1].addr, "10.0.0.1:9100");

    /* Same status, new fields and time: fields change, since stays. */
    struct ck_cmd_node c = node_cmd("a", 11, CK_NODE_ACTIVE, 2000);
    c.name = S("renamed");
    c.zone = S("zone-b");
    c.weight = 7;
    c.services = services + 4;
    c.n_services = 1;
    assert_int_equal(apply(&s, enc_node_full(&c), 9), 0);
    assert_int_equal(s.n_nodes, 1);
    n = &s.nodes[0];
    assert_string_equal(n->name, "renamed");
    assert_string_equal(n->zone, "zone-b");
    assert_int_equal(n->weight, 7);
    assert_int_equal(n->n_services, 1);
    assert_string_equal(n->services[0].name, "grpc");
    assert_int_equal(n->status_since_ms, 1000);
    assert_int_equal(n->joined_index, 5);
    assert_int_equal(s.index, 9);

    /* New status: since takes the command's time. */
    c = node_cmd("a", 11, CK_NODE_SUSPECT, 3000);
    assert_int_equal(apply(&s, enc_node_full(&c), 10), 0);
    n = &s.nodes[0];
    assert_int_equal(n->status, CK_NODE_SUSPECT);
    assert_int_equal(n->status_since_ms, 3000);
    assert_int_equal(n->joined_index, 5);
    assert_int_equal(n->n_services, 0);

    /* A second node goes after the first. */
    assert_int_equal(apply(&s, enc_node("b", 12, CK_NODE_ACTIVE, 4000), 11), 0);
    assert_int_equal(s.n_nodes, 2);
    assert_string_equal(s.nodes[1].id, "b");
    assert_int_equal(s.nodes[1].joined_index, 11);
    assert_int_equal(ck_state_find_node(&s, "b", 1), 1);
    assert_int_equal(ck_state_find_node(&s, "a", 1), 0);
    assert_int_equal(ck_state_find_node(&s, "c", 1), -1);
    assert_int_equal(ck_state_find_node_raft(&s, 12), 1);
    ck_state_free(&s);
}

/* A second id may not take a non-zero raft id that another node has; raft id
 * 0 (unknown) may be shared, and a node may keep or change its own. */
static void test_apply_node_raft_id_conflict(void **state)
{
    struct ck_state s;

    (void)state;
    ck_state_init(&s);
    assert_int_equal(apply(&s, enc_node("a", 11, CK_NODE_ACTIVE, 1), 1), 0);
    assert_int_equal(apply(&s, enc_node("b", 12, CK_NODE_ACTIVE, 1), 2), 0);
    struct blob before = snap(&s);
    assert_int_equal(apply(&s, enc_node("c", 11, CK_NODE_ACTIVE, 1), 3), CK_EINVAL);
    assert_int_equal(apply(&s, enc_node("b", 11, CK_NODE_ACTIVE, 1), 4), CK_EINVAL);
    assert_snap_equal(&s, before);
    blob_free(&before);

    assert_int_equal(apply(&s, enc_node("a", 11, CK_NODE_DOWN, 2), 5), 0);
    assert_int_equal(apply(&s, enc_node("a", 13, CK_NODE_DOWN, 2), 6), 0);
    assert_int_equal(apply(&s, enc_node("c", 11, CK_NODE_ACTIVE, 1), 7), 0);
    assert_int_equal(apply(&s, enc_node("d", 0, CK_NODE_ACTIVE, 1), 8), 0);
    assert_int_equal(apply(&s, enc_node("e", 0, CK_NODE_ACTIVE, 1), 9), 0);
    assert_int_equal(s.n_nodes, 5);
    ck_state_free(&s);
}

/* A status's byte in a command never changes: NODE_STATUS entries written
 * before "stopped" existed (bytes 1..4) still decode to the same statuses,
 * and "stopped" is the new byte 5. */
static void test_status_bytes_are_stable(void **state)
{
    static const char *const names[] = {NULL, "active", "suspect", "down", "left", "stopped"};
    /* version 1, NODE_STATUS, id "n" (u32 length 1), status, time_ms 7. */
    uint8_t bytes[] = {1, 3, 1, 0, 0, 0, 'n', 0, 7, 0, 0, 0, 0, 0, 0, 0};
    struct ck_cmd c;

    (void)state;
    for (uint8_t st = 1; st <= 5; st++) {
        bytes[7] = st;
        assert_int_equal(ck_cmd_decode(&c, bytes, sizeof bytes), 0);
        assert_int_equal(c.status.status, st);
        assert_string_equal(ck_node_status_name(st), names[st]);
        assert_int_equal(ck_node_status_from_name(names[st]), st);
        ck_cmd_free(&c);
    }
    assert_int_equal(CK_NODE_STOPPED, 5);
    assert_null(ck_node_status_name(6));
    assert_int_equal(ck_node_status_from_name("stopping"), 0);
}

/* NODE_STATUS on an unknown node is CK_ENOTFOUND and changes nothing; on a
 * known one it sets the status and moves status_since only on a change. */
static void test_apply_node_status(void **state)
{
    struct ck_state s;

    (void)state;
    ck_state_init(&s);
    assert_int_equal(apply(&s, enc_node("a", 11, CK_NODE_ACTIVE, 100), 1), 0);
    struct blob before = snap(&s);
    assert_int_equal(apply(&s, enc_status("b", CK_NODE_DOWN, 200), 2), CK_ENOTFOUND);
    assert_int_equal(apply(&s, enc_status("", CK_NODE_DOWN, 200), 2), CK_ENOTFOUND);
    assert_int_equal(apply(&s, enc_status("aa", CK_NODE_DOWN, 200), 2), CK_ENOTFOUND);
    assert_snap_equal(&s, before);
    blob_free(&before);

    assert_int_equal(apply(&s, enc_status("a", CK_NODE_ACTIVE, 300), 3), 0);
    assert_int_equal(s.nodes[0].status_since_ms, 100);
    assert_int_equal(apply(&s, enc_status("a", CK_NODE_DOWN, 400), 4), 0);
    assert_int_equal(s.nodes[0].status, CK_NODE_DOWN);
    assert_int_equal(s.nodes[0].status_since_ms, 400);
    assert_int_equal(apply(&s, enc_status("a", CK_NODE_DOWN, 500), 5), 0);
    assert_int_equal(s.nodes[0].status_since_ms, 400);
    assert_int_equal(s.index, 5);
    assert_int_equal(apply(&s, enc_status("a", CK_NODE_STOPPED, 600), 6), 0);
    assert_int_equal(s.nodes[0].status, CK_NODE_STOPPED);
    assert_int_equal(s.nodes[0].status_since_ms, 600);
    ck_state_free(&s);
}

/* A TABLE before INIT, with another partition count, or naming an unknown
 * node is rejected and leaves the state as it was. */
static void test_apply_table_rejected(void **state)
{
    static const char *const ab[] = {"a", "b"};
    static const char *const ax[] = {"a", "x"};
    static const uint16_t rows2[] = {0, 1, 1, 0};
    struct ck_state s;

    (void)state;
    ck_state_init(&s);
    assert_int_equal(apply(&s, enc_node("a", 1, CK_NODE_ACTIVE, 1), 1), 0);
    assert_int_equal(apply(&s, enc_node("b", 2, CK_NODE_ACTIVE, 1), 2), 0);
    struct blob before = snap(&s);
    assert_int_equal(apply(&s, enc_table(2, 2, ab, 2, rows2), 3), CK_EINVAL);
    assert_snap_equal(&s, before);
    blob_free(&before);

    assert_int_equal(apply(&s, enc_init(2, 2), 4), 0);
    assert_int_equal(apply(&s, enc_table(2, 2, ab, 2, rows2), 5), 0);
    before = snap(&s);
    assert_int_equal(apply(&s, enc_table(2, 2, ax, 2, (uint16_t[]){0, CK_NO_NODE, 1, 0}), 6), CK_ENOTFOUND);
    /* An unknown id is refused even when no row uses it. */
    assert_int_equal(apply(&s, enc_table(2, 2, ax, 2, (uint16_t[]){0, CK_NO_NODE, 0, CK_NO_NODE}), 7), CK_ENOTFOUND);
    assert_int_equal(apply(&s, enc_table(3, 2, ab, 2, (uint16_t[]){0, 1, 1, 0, 0, 1}), 8), CK_EINVAL);
    assert_int_equal(apply(&s, enc_table(1, 2, ab, 2, (uint16_t[]){0, 1}), 9), CK_EINVAL);
    assert_snap_equal(&s, before);
    assert_int_equal(s.index, 5);
    assert_int_equal(s.table_index, 5);
    blob_free(&before);
    ck_state_free(&s);
}

/* A TABLE naming the same node twice in its id list is rejected: otherwise
 * two distinct row slots could map to one node and a row would hold it twice. */
static void test_apply_table_duplicate_ids_rejected(void **state)
{
    static const char *const aab[] = {"a", "a", "b"};
    struct ck_state s;

    (void)state;
    ck_state_init(&s);
    assert_int_equal(apply(&s, enc_init(1, 3), 1), 0);
    assert_int_equal(apply(&s, enc_node("a", 1, CK_NODE_ACTIVE, 1), 2), 0);
    assert_int_equal(apply(&s, enc_node("b", 2, CK_NODE_ACTIVE, 1), 3), 0);
    struct blob before = snap(&s);
    assert_int_not_equal(apply(&s, enc_table(1, 3, aab, 3, (uint16_t[]){0, 1, 2}), 4), 0);
    assert_snap_equal(&s, before);
    assert_invariants(&s);
    blob_free(&before);
    ck_state_free(&s);
}

/* A partition's epoch moves only when its primary or owner set changes (a
 * replica reorder changes the table and table_index but not the epoch, an
 * identical table changes nothing but s->index), whatever the order of the
 * command's ids. */
static void test_apply_table_epochs(void **state)
{
    static const char *const ids[] = {"c", "a", "b"}; /* State order: a b c. */
    const uint16_t E = CK_NO_NODE, A = 1, B = 2, C = 0;
    struct ck_state s;

    (void)state;
    ck_state_init(&s);
    assert_int_equal(apply(&s, enc_init(4, 3), 1), 0);
    assert_int_equal(apply(&s, enc_node("a", 1, CK_NODE_ACTIVE, 1), 2), 0);
    assert_int_equal(apply(&s, enc_node("b", 2, CK_NODE_ACTIVE, 1), 3), 0);
    assert_int_equal(apply(&s, enc_node("c", 3, CK_NODE_ACTIVE, 1), 4), 0);
    assert_int_equal(s.table_index, 1);

    uint16_t t1[] = {A, B, C, B, C, E, C, E, E, E, E, E};
    assert_int_equal(apply(&s, enc_table(4, 3, ids, 3, t1), 5), 0);
    assert_row(&s, 0, "a", "b", "c");
    assert_row(&s, 1, "b", "c", NULL);
    assert_row(&s, 2, "c", NULL, NULL);
    assert_row(&s, 3, NULL, NULL, NULL);
    uint64_t e1[] = {1, 1, 1, 0};
    assert_memory_equal(s.table.epochs, e1, sizeof e1);
    assert_int_equal(s.table_index, 5);

    /* Row 0: replicas reordered. Row 2: a replica added. */
    uint16_t t2[] = {A, C, B, B, C, E, C, A, E, E, E, E};
    assert_int_equal(apply(&s, enc_table(4, 3, ids, 3, t2), 6), 0);
    assert_row(&s, 0, "a", "c", "b");
    assert_row(&s, 2, "c", "a", NULL);
    uint64_t e2[] = {1, 1, 2, 0};
    assert_memory_equal(s.table.epochs, e2, sizeof e2);
    assert_int_equal(s.table_index, 6);

    /* Only a replica reorder: no epoch moves, but the state does change. */
    uint16_t t3[] = {A, B, C, B, C, E, C, A, E, E, E, E};
    assert_int_equal(apply(&s, enc_table(4, 3, ids, 3, t3), 7), 0);
    assert_row(&s, 0, "a", "b", "c");
    assert_memory_equal(s.table.epochs, e2, sizeof e2);
    assert_int_equal(s.table_index, 7);

    /* Row 0: primary swapped with a replica (same set). Row 1: a replica
     * dropped. Row 3: first assignment. */
    uint16_t t4[] = {B, A, C, B, E, E, C, A, E, A, E, E};
    assert_int_equal(apply(&s, enc_table(4, 3, ids, 3, t4), 8), 0);
    uint64_t e4[] = {2, 2, 2, 1};
    assert_memory_equal(s.table.epochs, e4, sizeof e4);
    assert_int_equal(s.table_index, 8);

    /* The same table again: accepted, index moves, nothing else. */
    struct blob before = snap(&s);
    assert_int_equal(apply(&s, enc_table(4, 3, ids, 3, t4), 9), 0);
    assert_memory_equal(s.table.epochs, e4, sizeof e4);
    assert_int_equal(s.table_index, 8);
    assert_int_equal(s.index, 9);
    /* Snapshots differ only in the index field (bytes 4..11). */
    struct blob after = snap(&s);
    assert_int_equal(after.len, before.len);
    assert_memory_equal(after.p + 12, before.p + 12, before.len - 12);
    blob_free(&after);
    blob_free(&before);

    /* Emptying a row is a change too. */
    uint16_t t5[] = {B, A, C, B, E, E, C, A, E, E, E, E};
    assert_int_equal(apply(&s, enc_table(4, 3, ids, 3, t5), 10), 0);
    uint64_t e5[] = {2, 2, 2, 2};
    assert_memory_equal(s.table.epochs, e5, sizeof e5);
    assert_invariants(&s);
    ck_state_free(&s);
}

/* A TABLE may change the width: narrower or wider rows with the same owners
 * keep their epochs, the table (and table_index) still changes. */
static void test_apply_table_width_change(void **state)
{
    static const char *const ids[] = {"a", "b", "c"};
    const uint16_t E = CK_NO_NODE;
    struct ck_state s;

    (void)state;
    ck_state_init(&s);
    assert_int_equal(apply(&s, enc_init(3, 2), 1), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(apply(&s, enc_node(ids[i], (uint64_t)i + 1, CK_NODE_ACTIVE, 1), 2 + i), 0);
    }
    assert_int_equal(apply(&s, enc_table(3, 2, ids, 3, (uint16_t[]){0, 1, 1, 2, 2, E}), 5), 0);
    uint64_t e[] = {1, 1, 1};
    assert_memory_equal(s.table.epochs, e, sizeof e);

    /* Wider, same owners. */
    assert_int_equal(apply(&s, enc_table(3, 4, ids, 3, (uint16_t[]){0, 1, E, E, 1, 2, E, E, 2, E, E, E}), 6), 0);
    assert_int_equal(s.table.width, 4);
    assert_memory_equal(s.table.epochs, e, sizeof e);
    assert_int_equal(s.table_index, 6);
    assert_row(&s, 2, "c", NULL, NULL);

    /* Narrower, same owners. */
    assert_int_equal(apply(&s, enc_table(3, 2, ids, 3, (uint16_t[]){0, 1, 1, 2, 2, E}), 7), 0);
    assert_int_equal(s.table.width, 2);
    assert_memory_equal(s.table.epochs, e, sizeof e);
    assert_int_equal(s.table_index, 7);

    /* Narrower, losing an owner. */
    assert_int_equal(apply(&s, enc_table(3, 1, ids, 3, (uint16_t[]){0, 1, 2}), 8), 0);
    uint64_t e2[] = {2, 2, 1};
    assert_memory_equal(s.table.epochs, e2, sizeof e2);
    assert_invariants(&s);
    ck_state_free(&s);
}

/* NODE_REMOVE of the middle of three nodes drops it from every row keeping
 * the others' order, renumbers the last node, and bumps only the epochs of
 * rows that held it; removing an unknown node is CK_ENOTFOUND. */
static void test_apply_remove_middle(void **state)
{
    static const char *const ids[] = {"a", "b", "c"};
    const uint16_t E = CK_NO_NODE, A = 0, B = 1, C = 2;
    struct ck_state s;

    (void)state;
    ck_state_init(&s);
    assert_int_equal(apply(&s, enc_init(5, 3), 1), 0);
    assert_int_equal(apply(&s, enc_node_svc("a", 1, 1), 2), 0);
    assert_int_equal(apply(&s, enc_node_svc("b", 2, 2), 3), 0);
    assert_int_equal(apply(&s, enc_node_svc("c", 3, 3), 4), 0);
    uint16_t t[] = {A, B, C, C, A, E, B, E, E, C, E, E, B, C, A};
    assert_int_equal(apply(&s, enc_table(5, 3, ids, 3, t), 5), 0);
    uint64_t e1[] = {1, 1, 1, 1, 1};
    assert_memory_equal(s.table.epochs, e1, sizeof e1);

    struct blob before = snap(&s);
    assert_int_equal(apply(&s, enc_remove("x"), 6), CK_ENOTFOUND);
    assert_snap_equal(&s, before);
    blob_free(&before);

    assert_int_equal(apply(&s, enc_remove("b"), 7), 0);
    assert_int_equal(s.n_nodes, 2);
    assert_string_equal(s.nodes[0].id, "a");
    assert_string_equal(s.nodes[1].id, "c");
    assert_int_equal(s.nodes[1].n_services, 3);
    assert_int_equal(s.nodes[1].joined_index, 4);
    assert_int_equal(ck_state_find_node(&s, "c", 1), 1);
    assert_row(&s, 0, "a", "c", NULL);
    assert_row(&s, 1, "c", "a", NULL);
    assert_row(&s, 2, NULL, NULL, NULL);
    assert_row(&s, 3, "c", NULL, NULL);
    assert_row(&s, 4, "c", "a", NULL);
    /* The raw indexes, too: c is now 1. */
    const uint16_t want[] = {0, 1, E, 1, 0, E, E, E, E, 1, E, E, 1, 0, E};
    assert_memory_equal(s.table.owners, want, sizeof want);
    uint64_t e2[] = {2, 1, 2, 1, 2};
    assert_memory_equal(s.table.epochs, e2, sizeof e2);
    assert_int_equal(s.table_index, 7);
    assert_int_equal(s.index, 7);
    assert_invariants(&s);

    /* A node in no row: nodes shrink, the table does not change. */
    assert_int_equal(apply(&s, enc_node("d", 4, CK_NODE_ACTIVE, 1), 8), 0);
    assert_int_equal(apply(&s, enc_remove("d"), 9), 0);
    assert_int_equal(s.n_nodes, 2);
    assert_memory_equal(s.table.owners, want, sizeof want);
    assert_memory_equal(s.table.epochs, e2, sizeof e2);
    assert_int_equal(s.table_index, 7);
    assert_int_equal(s.index, 9);

    /* Before INIT there is no table to touch. */
    struct ck_state u;
    ck_state_init(&u);
    assert_int_equal(apply(&u, enc_node("a", 1, CK_NODE_ACTIVE, 1), 1), 0);
    assert_int_equal(apply(&u, enc_remove("a"), 2), 0);
    assert_int_equal(u.n_nodes, 0);
    ck_state_free(&u);
    ck_state_free(&s);
}

/* Reads the next entry of a change record: partition, epoch and owners
 * (a comma-separated string). */
static void next_change(struct ck_rbuf *r, uint32_t *p, uint64_t *epoch, char *owners, size_t cap)
{
    *p = ck_r_u32(r);
    *epoch = ck_r_u64(r);
    uint32_t n = ck_r_u32(r);
    size_t at = 0;
    owners[0] = '\0';
    for (uint32_t k = 0; k < n; k++) {
        struct ck_str id = ck_r_str(r, CK_MAX_STR);
        assert_true(at + id.len + 2 < cap);
        if (k > 0) {
            owners[at++] = ',';
        }
        memcpy(owners + at, id.p, id.len);
        at += id.len;
        owners[at] = '\0';
    }
    assert_int_equal(r->err, 0);
}

static void assert_change(struct ck_rbuf *r, uint32_t p, uint64_t epoch, const char *owners)
{
    uint32_t gp;
    uint64_t ge;
    char buf[256];
    next_change(r, &gp, &ge, buf, sizeof buf);
    assert_int_equal(gp, p);
    assert_int_equal(ge, epoch);
    assert_string_equal(buf, owners);
}

/* The change record keeps every intermediate row, in apply order, across
 * several commands: a row that loses a node and gets it back shows both
 * changes although the table ends as it began; a replica reorder is a change
 * without a new epoch; removing a node records the rows it left, with the
 * ids as they were; a restore drops the record and says so (gap). */
static void test_change_record(void **state)
{
    static const char *const ids[] = {"a", "b", "c"};
    const uint16_t E = CK_NO_NODE, A = 0, B = 1, C = 2;
    struct ck_state s;
    struct ck_changes c;
    struct ck_rbuf r;

    (void)state;
    ck_state_init(&s);
    assert_int_equal(apply(&s, enc_init(3, 3), 1), 0);
    assert_int_equal(apply(&s, enc_node("a", 1, CK_NODE_ACTIVE, 1), 2), 0);
    assert_int_equal(apply(&s, enc_node("b", 2, CK_NODE_ACTIVE, 1), 3), 0);
    assert_int_equal(apply(&s, enc_node("c", 3, CK_NODE_ACTIVE, 1), 4), 0);
    uint16_t t1[] = {A, B, C, B, C, A, C, A, B};
    assert_int_equal(apply(&s, enc_table(3, 3, ids, 3, t1), 5), 0);
    ck_state_take_changes(&s, &c);
    assert_false(c.gap);
    assert_int_equal(c.count, 3);
    /* INIT says "whole"; the three upserts name their positions. */
    assert_true(c.whole);
    assert_int_equal(c.node_count, 3);
    ck_rbuf_init(&r, c.nodes.p, c.nodes.len);
    assert_int_equal(ck_r_u32(&r), 0);
    assert_int_equal(ck_r_u32(&r), 1);
    assert_int_equal(ck_r_u32(&r), 2);
    assert_true(ck_r_done(&r));
    ck_changes_free(&c);

    /* a leaves row 0 (b takes over) and comes back as its primary: two
     * changes, the table as it began; row 1 only reorders its replicas. */
    uint16_t t2[] = {B, C, E, B, A, C, C, A, B};
    assert_int_equal(apply(&s, enc_table(3, 3, ids, 3, t2), 6), 0);
    assert_int_equal(apply(&s, enc_table(3, 3, ids, 3, t1), 7), 0);
    ck_state_take_changes(&s, &c);
    assert_false(c.gap);
    assert_int_equal(c.count, 4);
    ck_rbuf_init(&r, c.buf.p, c.buf.len);
    assert_change(&r, 0, 2, "b,c");
    assert_change(&r, 1, 1, "b,a,c");
    assert_change(&r, 0, 3, "a,b,c");
    assert_change(&r, 1, 1, "b,c,a");
    assert_true(ck_r_done(&r));
    ck_changes_free(&c);
    uint64_t e[] = {3, 1, 1};
    assert_memory_equal(s.table.epochs, e, sizeof e);

    /* Taking leaves an empty record; a command that changes no row adds
     * nothing; a rejected one neither. */
    assert_int_equal(apply(&s, enc_status("a", CK_NODE_DOWN, 2), 8), 0);
    assert_int_equal(apply(&s, enc_remove("x"), 9), CK_ENOTFOUND);
    ck_state_take_changes(&s, &c);
    assert_int_equal(c.count, 0);
    assert_int_equal(c.buf.len, 0);
    assert_false(c.gap);
    /* The status change names a's position; nothing else changed. */
    assert_false(c.whole);
    assert_int_equal(c.node_count, 1);
    ck_rbuf_init(&r, c.nodes.p, c.nodes.len);
    assert_int_equal(ck_r_u32(&r), 0);
    assert_true(ck_r_done(&r));
    ck_changes_free(&c);

    /* Removing b: every row lost it; the ids are right although the
     * remaining nodes are renumbered. */
    assert_int_equal(apply(&s, enc_remove("b"), 10), 0);
    ck_state_take_changes(&s, &c);
    assert_int_equal(c.count, 3);
    assert_true(c.whole); /* The positions after b moved. */
    ck_rbuf_init(&r, c.buf.p, c.buf.len);
    assert_change(&r, 0, 4, "a,c");
    assert_change(&r, 1, 2, "c,a");
    assert_change(&r, 2, 2, "c,a");
    assert_true(ck_r_done(&r));
    ck_changes_free(&c);

    /* A restore cannot say what changed. */
    struct blob b = snap(&s);
    assert_int_equal(ck_state_restore(&s, b.p, b.len), 0);
    blob_free(&b);
    ck_state_take_changes(&s, &c);
    assert_true(c.gap);
    assert_int_equal(c.count, 0);
    ck_changes_free(&c);
    ck_state_take_changes(&s, &c);
    assert_false(c.gap);
    ck_changes_free(&c);
    ck_state_free(&s);
}

/* s->index moves to the command's index on every accepted command and never
 * on a rejected or undecodable one. */
static void test_index_moves_only_on_success(void **state)
{
    static const uint8_t garbage[] = {1, 9, 0, 0, 0, 0, 0, 0};
    struct ck_state s;

    (void)state;
    ck_state_init(&s);
    assert_int_equal(s.index, 0);
    assert_int_not_equal(apply(&s, enc_status("a", CK_NODE_DOWN, 1), 3), 0);
    assert_int_equal(s.index, 0);
    assert_int_equal(apply(&s, enc_init(2, 1), 4), 0);
    assert_int_equal(s.index, 4);
    assert_int_not_equal(apply(&s, enc_init(2, 1), 5), 0);
    assert_int_equal(s.index, 4);
    assert_int_not_equal(ck_state_apply(&s, garbage, sizeof garbage, 6), 0);
    assert_int_not_equal(ck_state_apply(&s, garbage, 0, 6), 0);
    assert_int_equal(s.index, 4);
    assert_int_equal(apply(&s, enc_node("a", 1, CK_NODE_ACTIVE, 1), 8), 0);
    assert_int_equal(s.index, 8);
    assert_int_not_equal(apply(&s, enc_node("b", 1, CK_NODE_ACTIVE, 1), 9), 0);
    assert_int_equal(s.index, 8);
    assert_int_equal(apply(&s, enc_status("a", CK_NODE_DOWN, 1), 10), 0);
    assert_int_equal(s.index, 10);
    assert_int_not_equal(apply(&s, enc_remove("b"), 11), 0);
    assert_int_equal(s.index, 10);
    assert_int_equal(apply(&s, enc_remove("a"), 12), 0);
    assert_int_equal(s.index, 12);
    ck_state_free(&s);
}

/* table_index moves with INIT and with table changes (TABLE, or NODE_REMOVE
 * of an owner) and with nothing else. */
static void test_table_index_moves_only_on_table_change(void **state)
{
    static const char *const ids[] = {"a", "b"};
    static const char *const ax[] = {"a", "x"};
    struct ck_state s;

    (void)state;
    ck_state_init(&s);
    assert_int_equal(apply(&s, enc_node("a", 1, CK_NODE_ACTIVE, 1), 2), 0);
    assert_int_equal(s.table_index, 0);
    assert_int_equal(apply(&s, enc_init(2, 2), 3), 0);
    assert_int_equal(s.table_index, 3);
    assert_int_equal(apply(&s, enc_node("b", 2, CK_NODE_ACTIVE, 1), 4), 0);
    assert_int_equal(apply(&s, enc_node("c", 3, CK_NODE_ACTIVE, 1), 5), 0);
    assert_int_equal(apply(&s, enc_status("a", CK_NODE_DOWN, 1), 6), 0);
    assert_int_equal(s.table_index, 3);
    assert_int_equal(apply(&s, enc_table(2, 2, ids, 2, (uint16_t[]){0, 1, 1, CK_NO_NODE}), 7), 0);
    assert_int_equal(s.table_index, 7);
    assert_int_equal(apply(&s, enc_table(2, 2, ids, 2, (uint16_t[]){0, 1, 1, CK_NO_NODE}), 8), 0);
    assert_int_equal(s.table_index, 7);
    assert_int_equal(apply(&s, enc_remove("c"), 9), 0);
    assert_int_equal(s.table_index, 7);
    assert_int_not_equal(apply(&s, enc_table(2, 2, ax, 2, (uint16_t[]){1, 0, 0, CK_NO_NODE}), 10), 0);
    assert_int_equal(s.table_index, 7);
    assert_int_equal(apply(&s, enc_remove("b"), 11), 0);
    assert_int_equal(s.table_index, 11);
    assert_int_equal(s.index, 11);
    ck_state_free(&s);
}

/* ------------------------------------------------------------------------
 * Snapshots
 * ------------------------------------------------------------------------ */

/* A state with config, four nodes with services (one removed), statuses,
 * and a table with differing epochs. */
static void build_rich(struct ck_state *s)
{
    static const char *const ids[] = {"node-d", "node-a", "node-b", "node-c"};
    const uint16_t E = CK_NO_NODE;
    struct ck_cmd_init init = {S("cluster-rich"), S("Rich cluster"), 6, 3, CK_HASH_MD5, 1};
    uint64_t i = 10;

    ck_state_init(s);
    assert_int_equal(apply(s, enc_init_full(&init), i++), 0);
    assert_int_equal(apply(s, enc_node_svc("node-a", 101, 1), i++), 0);
    assert_int_equal(apply(s, enc_node_svc("node-b", 102, 2), i++), 0);
    assert_int_equal(apply(s, enc_node_svc("node-c", 103, 4), i++), 0);
    assert_int_equal(apply(s, enc_node_svc("node-d", 104, 3), i++), 0);
    assert_int_equal(apply(s, enc_node_svc("node-x", 0, 0), i++), 0);
    assert_int_equal(apply(s, enc_status("node-b", CK_NODE_SUSPECT, 5555), i++), 0);
    assert_int_equal(apply(s, enc_status("node-c", CK_NODE_STOPPED, 6666), i++), 0);
    uint16_t t1[] = {1, 2, 3, 2, 3, 0, 3, 0, 1, 0, 1, 2, 1, E, E, E, E, E};
    assert_int_equal(apply(s, enc_table(6, 3, ids, 4, t1), i++), 0);
    uint16_t t2[] = {1, 3, 2, 2, 3, 1, 3, 0, 1, 0, 2, E, 1, E, E, E, E, E};
    assert_int_equal(apply(s, enc_table(6, 3, ids, 4, t2), i++), 0);
    assert_int_equal(apply(s, enc_remove("node-x"), i++), 0);
    assert_int_equal(apply(s, enc_status("node-d", CK_NODE_DOWN, 7777), i++), 0);
    assert_int_equal(apply(s, enc_node("node-e", 105, CK_NODE_LEFT, 8888), i++), 0);
    assert_int_equal(s->n_nodes, 5);
    assert_true(s->table.epochs[1] == 2 && s->table.epochs[0] == 1 && s->table.epochs[5] == 0);
}

/* Snapshot -> restore -> snapshot of a rich state is byte-identical, and the
 * restored state has the same content (restore replaces a non-empty state). */
static void test_snapshot_roundtrip(void **state)
{
    struct ck_state a, b;

    (void)state;
    build_rich(&a);
    struct blob sa = snap(&a);
    ck_state_init(&b);
    assert_int_equal(apply(&b, enc_node_svc("junk", 9, 2), 1), 0);
    assert_int_equal(ck_state_restore(&b, sa.p, sa.len), 0);
    assert_snap_equal(&b, sa);
    assert_int_equal(b.index, a.index);
    assert_int_equal(b.table_index, a.table_index);
    assert_string_equal(b.config.cluster_id, "cluster-rich");
    assert_int_equal(b.config.hasher.algo, CK_HASH_MD5);
    assert_true(b.config.hasher.tags);
    assert_int_equal(b.config.hasher.partitions, 6);
    assert_int_equal(b.n_nodes, a.n_nodes);
    for (uint32_t i = 0; i < a.n_nodes; i++) {
        assert_string_equal(b.nodes[i].id, a.nodes[i].id);
        assert_int_equal(b.nodes[i].status, a.nodes[i].status);
        assert_int_equal(b.nodes[i].status_since_ms, a.nodes[i].status_since_ms);
        assert_int_equal(b.nodes[i].joined_index, a.nodes[i].joined_index);
        assert_int_equal(b.nodes[i].n_services, a.nodes[i].n_services);
        for (uint32_t k = 0; k < a.nodes[i].n_services; k++) {
            assert_string_equal(b.nodes[i].services[k].name, a.nodes[i].services[k].name);
            assert_string_equal(b.nodes[i].services[k].addr, a.nodes[i].services[k].addr);
        }
    }
    assert_int_equal(b.table.width, a.table.width);
    assert_memory_equal(b.table.owners, a.table.owners, 6 * 3 * sizeof *a.table.owners);
    assert_memory_equal(b.table.epochs, a.table.epochs, 6 * sizeof *a.table.epochs);

    /* The restored state keeps working like the original. */
    assert_int_equal(apply(&a, enc_remove("node-a"), 100), 0);
    assert_int_equal(apply(&b, enc_remove("node-a"), 100), 0);
    blob_free(&sa);
    sa = snap(&a);
    assert_snap_equal(&b, sa);
    blob_free(&sa);
    ck_state_free(&a);
    ck_state_free(&b);
}

/* A KV transaction as a state command: it changes the store and its index,
 * never the cluster's state index; its compare failure is the command's
 * result; the store travels in the snapshot (version 2), and a version 1
 * snapshot (no store) still restores. */
static struct blob enc_kv_put(const char *key, const char *value, bool must_not_exist)
{
    struct ck_kv_cmp cmp = {.key = {key, (uint32_t)strlen(key)}, .target = CK_KV_CREATE, .op = CK_KV_EQ};
    struct ck_kv_op op = {
        .type = CK_KV_PUT, .key = {key, (uint32_t)strlen(key)}, .value = {value, (uint32_t)strlen(value)}};
    struct ck_kv_txn t = {.max_value = CK_KV_DEFAULT_MAX_VALUE,
                          .max_bytes = CK_KV_DEFAULT_MAX_BYTES,
                          .n_cmp = must_not_exist ? 1 : 0,
                          .cmp = &cmp,
                          .n_ops = 1,
                          .ops = &op};
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_kv_txn(&w, &t);
    return take(&w);
}

static void test_kv_commands_and_snapshots(void **state)
{
    struct ck_state a, b;

    (void)state;
    ck_state_init(&a);
    ck_state_init(&b);
    assert_int_equal(apply(&a, enc_node_svc("a", 1, 2), 3), 0);
    assert_int_equal(a.index, 3);
    assert_int_equal(apply(&a, enc_kv_put("cfg/x", "1", true), 4), 0);
    assert_int_equal(apply(&a, enc_kv_put("cfg/x", "2", true), 5), CK_ECONFLICT);
    assert_int_equal(apply(&a, enc_kv_put("cfg/y", "3", false), 6), 0);
    assert_int_equal(a.index, 3); /* The cluster's index did not move. */
    assert_int_equal(a.kv.index, 6);
    assert_int_equal(a.kv.n, 2);

    struct blob s2 = snap(&a);
    assert_memory_equal(s2.p, "CKS2", 4);
    assert_int_equal(ck_state_restore(&b, s2.p, s2.len), 0);
    assert_snap_equal(&b, s2);
    const struct ck_kv_entry *e = ck_kv_get(&b.kv, "cfg/x", 5);
    assert_non_null(e);
    assert_int_equal(e->mod_index, 4);
    /* A truncated store section is refused, the target unchanged. */
    assert_int_not_equal(ck_state_restore(&b, s2.p, s2.len - 1), 0);
    assert_snap_equal(&b, s2);

    /* Version 1 (what a level-1 state whose store was never used writes):
     * the same bytes as version 2 without the store. */
    struct ck_state c;
    ck_state_init(&c);
    assert_int_equal(apply(&c, enc_node_svc("a", 1, 2), 3), 0);
    struct blob s1 = snap(&c);
    assert_memory_equal(s1.p, "CKS1", 4);
    struct blob s1b = blob_copy(s1.p, s1.len, 16); /* An empty store: u64 index, u32 keys, u32 sessions. */
    s1b.p[3] = '2';
    assert_int_equal(ck_state_restore(&b, s1b.p, s1b.len), 0);
    assert_snap_equal(&b, s1);
    blob_free(&s1b);
    assert_int_equal(ck_state_restore(&b, s1.p, s1.len), 0);
    assert_int_equal(b.kv.n, 0);
    assert_int_equal(b.n_nodes, 1);
    s1.p[3] = '3';
    assert_int_equal(ck_state_restore(&b, s1.p, s1.len), CK_ECORRUPT);
    blob_free(&s1);
    blob_free(&s2);
    ck_state_free(&a);
    ck_state_free(&b);
    ck_state_free(&c);
}

/* An empty state, and one with nodes but no INIT, round-trip as well. */
static void test_snapshot_roundtrip_uninitialized(void **state)
{
    struct ck_state a, b;

    (void)state;
    ck_state_init(&a);
    ck_state_init(&b);
    struct blob s0 = snap(&a);
    assert_memory_equal(s0.p, "CKS1", 4);            /* Feature level 1, store unused. */
    assert_int_equal(s0.len, 4 + 8 + 8 + 1 + 4 + 4); /* ... initialized, n_nodes, flags */
    assert_int_equal(ck_state_restore(&b, s0.p, s0.len), 0);
    assert_snap_equal(&b, s0);
    assert_int_equal(apply(&a, enc_node_svc("a", 1, 2), 3), 0);
    assert_int_equal(apply(&a, enc_node_svc("b", 2, 0), 4), 0);
    struct blob s1 = snap(&a);
    assert_int_equal(ck_state_restore(&b, s1.p, s1.len), 0);
    assert_snap_equal(&b, s1);
    assert_false(b.config.initialized);
    assert_int_equal(b.n_nodes, 2);
    blob_free(&s0);
    blob_free(&s1);
    ck_state_free(&a);
    ck_state_free(&b);
}

/* Restore into @s must fail and leave @s byte-for-byte as it was. */
static void assert_restore_fails(struct ck_state *s, const void *buf, size_t len)
{
    struct blob before = snap(s);
    assert_int_not_equal(ck_state_restore(s, buf, len), 0);
    assert_snap_equal(s, before);
    blob_free(&before);
}

/* A snapshot without the "CKS1" magic is refused. */
static void test_restore_rejects_bad_magic(void **state)
{
    struct ck_state a, t;

    (void)state;
    build_rich(&a);
    build_rich(&t);
    assert_int_equal(apply(&t, enc_remove("node-c"), 500), 0);
    struct blob s = snap(&a);
    for (int i = 0; i < 4; i++) {
        uint8_t saved = s.p[i];
        s.p[i] ^= 0x20;
        assert_restore_fails(&t, s.p, s.len);
        s.p[i] = saved;
    }
    assert_int_equal(ck_state_restore(&t, s.p, s.len), 0);
    blob_free(&s);
    ck_state_free(&a);
    ck_state_free(&t);
}

/* Every strict prefix of a rich snapshot is refused (each one a fresh
 * allocation of exactly that size), and the target state is untouched. */
static void test_restore_rejects_every_truncation(void **state)
{
    struct ck_state a, t;

    (void)state;
    build_rich(&a);
    ck_state_init(&t);
    assert_int_equal(apply(&t, enc_node_svc("keep", 1, 2), 1), 0);
    struct blob s = snap(&a);
    for (size_t n = 0; n < s.len; n++) {
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, s.p, n);
        assert_restore_fails(&t, p, n);
        free(p);
    }
    blob_free(&s);
    ck_state_free(&a);
    ck_state_free(&t);
}

/* A snapshot with any bytes after its end (even zeros) is refused. */
static void test_restore_rejects_trailing_bytes(void **state)
{
    struct ck_state a, t;

    (void)state;
    build_rich(&a);
    ck_state_init(&t);
    struct blob s = snap(&a);
    for (size_t extra = 1; extra <= 9; extra++) {
        struct blob b = blob_copy(s.p, s.len, extra);
        assert_restore_fails(&t, b.p, b.len);
        b.p[b.len - 1] = 0xff;
        assert_restore_fails(&t, b.p, b.len);
        blob_free(&b);
    }
    blob_free(&s);
    ck_state_free(&a);
    ck_state_free(&t);
}

static uint8_t *find_bytes(struct blob b, const void *needle, size_t n)
{
    for (size_t i = 0; i + n <= b.len; i++) {
        if (memcmp(b.p + i, needle, n) == 0) {
            return b.p + i;
        }
    }
    return NULL;
}

/* A snapshot in which two nodes share an id (or a non-zero raft id) is
 * refused. */
static void test_restore_rejects_duplicate_nodes(void **state)
{
    struct ck_state a, t;

    (void)state;
    build_rich(&a);
    build_rich(&t);
    struct blob s = snap(&a);
    /* Node ids come first in each node record: "node-b" -> "node-a". */
    uint8_t *at = find_bytes(s, "\x06\0\0\0node-b", 10);
    assert_non_null(at);
    at[9] = 'a';
    assert_restore_fails(&t, s.p, s.len);
    at[9] = 'z'; /* The control: a distinct id restores. */
    assert_int_equal(ck_state_restore(&t, s.p, s.len), 0);
    blob_free(&s);

    /* node-c's raft id (103) -> node-a's (101). */
    s = snap(&a);
    static const uint8_t rid[8] = {103, 0, 0, 0, 0, 0, 0, 0};
    at = find_bytes(s, rid, 8);
    assert_non_null(at);
    at[0] = 101;
    assert_restore_fails(&t, s.p, s.len);
    at[0] = 99;
    assert_int_equal(ck_state_restore(&t, s.p, s.len), 0);
    blob_free(&s);
    ck_state_free(&a);
    ck_state_free(&t);
}

/* A table slot holding a node index >= n_nodes is refused (CK_NO_NODE and
 * n_nodes - 1 are fine). */
static void test_restore_rejects_owner_out_of_range(void **state)
{
    struct ck_state a, t;

    (void)state;
    build_rich(&a);
    build_rich(&t);
    assert_int_equal(apply(&t, enc_remove("node-b"), 600), 0);
    struct blob s = snap(&a);
    uint32_t P = a.table.partitions, W = a.table.width;
    assert_memory_equal(s.p, "CKS1", 4); /* Level 1, no store section. */
    uint8_t *owners = s.p + s.len - 4 /* flags */ - P * 8 - (size_t)P * W * 2;
    /* Partition 5 is empty: setting its primary keeps rows well-formed. */
    uint8_t *slot = owners + (size_t)5 * W * 2;
    assert_int_equal(slot[0] | (slot[1] << 8), CK_NO_NODE);
    uint16_t bad[] = {(uint16_t)a.n_nodes, (uint16_t)(a.n_nodes + 1), 0xfffe};
    for (size_t i = 0; i < CK_ARRAY_SIZE(bad); i++) {
        slot[0] = (uint8_t)bad[i];
        slot[1] = (uint8_t)(bad[i] >> 8);
        assert_restore_fails(&t, s.p, s.len);
    }
    slot[0] = (uint8_t)(a.n_nodes - 1);
    slot[1] = 0;
    assert_int_equal(ck_state_restore(&t, s.p, s.len), 0);
    assert_string_equal(owner_id(&t, 5, 0), a.nodes[a.n_nodes - 1].id);
    blob_free(&s);
    ck_state_free(&a);
    ck_state_free(&t);
}

/* ------------------------------------------------------------------------
 * Rolling upgrades: feature levels and trailing fields
 * ------------------------------------------------------------------------ */

static struct blob enc_features(uint32_t level)
{
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_features(&w, level);
    return take(&w);
}

/* FEATURES raises the level, never lowers it, and moves the state index; a
 * level this build does not know cannot be decoded (the FSM stops on it). */
static void test_feature_level(void **state)
{
    struct ck_state a;

    (void)state;
    ck_state_init(&a);
    assert_int_equal(a.config.feature_level, 1);
    assert_int_equal(apply(&a, enc_init(8, 2), 1), 0);
    assert_int_equal(a.config.feature_level, 1); /* INIT leaves it alone. */
    assert_int_equal(decode_free(enc_features(CK_FEATURE_LEVEL + 1)), CK_ECORRUPT);
    assert_int_equal(decode_free(enc_features(1)), CK_ECORRUPT);
    assert_int_equal(decode_free(enc_features(0)), CK_ECORRUPT);
    assert_int_equal(apply(&a, enc_features(2), 7), 0);
    assert_int_equal(a.config.feature_level, 2);
    assert_int_equal(a.index, 7);
    assert_int_equal(apply(&a, enc_features(2), 8), 0); /* The same level: nothing changes but the index. */
    assert_int_equal(a.config.feature_level, 2);
    /* A snapshot keeps it (CKS3 from level 2 on). */
    struct ck_state b;
    ck_state_init(&b);
    struct blob s = snap(&a);
    assert_memory_equal(s.p, "CKS3", 4);
    assert_int_equal(ck_state_restore(&b, s.p, s.len), 0);
    assert_int_equal(b.config.feature_level, 2);
    assert_snap_equal(&b, s);
    /* A CKS3 that claims a level this build does not have is refused. */
    struct blob bad = blob_copy(s.p, s.len, 0);
    size_t at = bad.len - 16 /* empty store */ - 4 /* m */ - 4 /* level */;
    assert_int_equal(bad.p[at], 2);
    bad.p[at] = CK_FEATURE_LEVEL + 1;
    assert_int_equal(ck_state_restore(&b, bad.p, bad.len), CK_ECORRUPT);
    assert_snap_equal(&b, s);
    blob_free(&bad);
    blob_free(&s);
    ck_state_free(&a);
    ck_state_free(&b);
}

/* A node's build travels as a version-2 trailing field; without one the
 * command is byte for byte version 1; unknown tags are skipped, a field that
 * overruns the command is corrupt. */
static void test_trailing_fields(void **state)
{
    struct ck_state a;
    struct ck_cmd c;

    (void)state;
    struct ck_cmd_node n = node_cmd("a", 1, CK_NODE_ACTIVE, 5);
    struct blob v1 = enc_node_full(&n);
    assert_int_equal(v1.p[0], 1);
    n.build = S("0.2.0");
    struct blob v2 = enc_node_full(&n);
    assert_int_equal(v2.p[0], 2);
    assert_int_equal(v2.len, v1.len + 1 + 4 + 5);
    assert_memory_equal(v2.p + 1, v1.p + 1, v1.len - 1);
    assert_int_equal(ck_cmd_decode(&c, v2.p, v2.len), 0);
    assert_int_equal(c.node.build.len, 5);
    assert_memory_equal(c.node.build.p, "0.2.0", 5);
    ck_cmd_free(&c);

    /* An unknown field before it, and padding after: still read. */
    struct blob x = blob_copy(v1.p, v1.len, 1 + 4 + 3 + 1 + 4 + 5 + 3);
    x.p[0] = 2;
    uint8_t *q = x.p + v1.len;
    const uint8_t unknown[] = {200, 3, 0, 0, 0, 'z', 'z', 'z', CK_FIELD_NODE_build, 5, 0, 0, 0};
    memcpy(q, unknown, sizeof unknown);
    memcpy(q + sizeof unknown, "0.3.1", 5); /* then 3 zero bytes of padding */
    assert_int_equal(ck_cmd_decode(&c, x.p, x.len), 0);
    assert_int_equal(c.node.build.len, 5);
    assert_memory_equal(c.node.build.p, "0.3.1", 5);
    ck_cmd_free(&c);
    /* A field longer than what is left. */
    q[1] = 30;
    assert_int_equal(decode(x), CK_ECORRUPT);
    q[1] = 3;
    /* A non-zero byte in the padding. */
    x.p[x.len - 1] = 1;
    assert_int_equal(decode(x), CK_ECORRUPT);
    /* An unknown field on another command type is skipped too. */
    struct blob st = enc_status("a", CK_NODE_DOWN, 9);
    struct blob st2 = blob_copy(st.p, st.len, 8);
    st2.p[0] = 2;
    memcpy(st2.p + st.len, unknown, 8);
    assert_int_equal(decode(st2), 0);
    blob_free(&st2);
    blob_free(&st);
    blob_free(&x);

    /* Applied, the build is kept; a level-2 snapshot carries it. */
    ck_state_init(&a);
    assert_int_equal(apply(&a, enc_features(2), 2), 0);
    assert_int_equal(ck_state_apply(&a, v2.p, v2.len, 3), 0);
    assert_string_equal(a.nodes[0].build, "0.2.0");
    struct ck_state b;
    ck_state_init(&b);
    struct blob s = snap(&a);
    assert_int_equal(ck_state_restore(&b, s.p, s.len), 0);
    assert_string_equal(b.nodes[0].build, "0.2.0");
    assert_snap_equal(&b, s);
    /* A version-1 upsert replaces the entry: no build any more. */
    assert_int_equal(ck_state_apply(&a, v1.p, v1.len, 4), 0);
    assert_string_equal(a.nodes[0].build, "");
    blob_free(&s);

    /* Every attribute of ck_node_attrs.h travels the same way: a rack. */
    n.rack = S("r7");
    struct blob v3 = enc_node_full(&n);
    assert_int_equal(ck_cmd_decode(&c, v3.p, v3.len), 0);
    assert_int_equal(c.node.rack.len, 2);
    assert_memory_equal(c.node.rack.p, "r7", 2);
    ck_cmd_free(&c);
    assert_int_equal(ck_state_apply(&a, v3.p, v3.len, 5), 0);
    assert_string_equal(a.nodes[0].rack, "r7");
    assert_string_equal(a.nodes[0].build, "0.2.0");
    struct ck_state d;
    ck_state_init(&d);
    s = snap(&a);
    assert_int_equal(ck_state_restore(&d, s.p, s.len), 0);
    assert_string_equal(d.nodes[0].rack, "r7");
    assert_snap_equal(&d, s);
    ck_state_free(&d);
    blob_free(&v3);
    blob_free(&s);
    blob_free(&v1);
    blob_free(&v2);
    ck_state_free(&a);
    ck_state_free(&b);
}

/* ------------------------------------------------------------------------
 * Determinism and a randomized run
 * ------------------------------------------------------------------------ */

/* Two states fed the same commands (accepted and rejected) have identical
 * snapshots after every command. */
static void test_determinism(void **state)
{
    static const char *const ids[] = {"b", "a", "c"};
    const uint16_t E = CK_NO_NODE;
    struct ck_state a, b;
    struct blob cmds[] = {
        enc_node_svc("a", 1, 2),
        enc_init(3, 2),
        enc_init(4, 2),
        enc_node_svc("b", 2, 1),
        enc_node_svc("c", 3, 3),
        enc_node_svc("d", 3, 3),
        enc_table(3, 2, ids, 3, (uint16_t[]){0, 1, 1, 2, 2, E}),
        enc_status("b", CK_NODE_SUSPECT, 50),
        enc_table(3, 2, ids, 3, (uint16_t[]){1, 0, 1, 2, 2, 0}),
        enc_remove("a"),
        enc_status("zz", CK_NODE_DOWN, 60),
        enc_node("a", 1, CK_NODE_ACTIVE, 70),
    };

    (void)state;
    ck_state_init(&a);
    ck_state_init(&b);
    for (size_t i = 0; i < CK_ARRAY_SIZE(cmds); i++) {
        int ra = ck_state_apply(&a, cmds[i].p, cmds[i].len, 100 + i);
        int rb = ck_state_apply(&b, cmds[i].p, cmds[i].len, 100 + i);
        assert_int_equal(ra, rb);
        struct blob sa = snap(&a);
        assert_snap_equal(&b, sa);
        blob_free(&sa);
        blob_free(&cmds[i]);
    }
    assert_int_equal(a.n_nodes, 3);
    ck_state_free(&a);
    ck_state_free(&b);
}

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64*: deterministic across platforms. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static uint32_t rnd_below(uint32_t n)
{
    return (uint32_t)(rnd() % n);
}

/* Ids include near-duplicates (a prefix, an embedded NUL) that a sloppy
 * comparison would confuse. */
static const struct ck_str rnd_ids[] = {
    {"n0", 2}, {"n1", 2}, {"n2", 2}, {"n3", 2}, {"n4", 2}, {"n", 1}, {"n1\0x", 4}, {"n10", 3},
};

static struct blob rnd_command(const struct ck_state *s)
{
    uint32_t kind = rnd_below(100);
    struct ck_str id = rnd_ids[rnd_below(CK_ARRAY_SIZE(rnd_ids))];

    if (kind < 4) {
        struct ck_cmd_init c = init_cmd(1 + rnd_below(6), 1 + rnd_below(4));
        c.hash_algo = (uint8_t)(1 + rnd_below(2));
        return enc_init_full(&c);
    }
    if (kind < 30) {
        struct ck_cmd_node c = node_cmd("", rnd_below(7), (uint8_t)(1 + rnd_below(4)), rnd_below(1000));
        c.id = id;
        c.n_services = rnd_below(5);
        c.services = services;
        return enc_node_full(&c);
    }
    if (kind < 45) {
        struct ck_cmd_status c = {id, (uint8_t)(1 + rnd_below(4)), rnd_below(1000)};
        struct ck_wbuf w;
        ck_wbuf_init(&w);
        ck_cmd_encode_status(&w, &c);
        return take(&w);
    }
    if (kind < 52) {
        struct ck_wbuf w;
        ck_wbuf_init(&w);
        ck_cmd_encode_remove(&w, id);
        return take(&w);
    }
    if (kind < 85) {
        /* Mostly well-formed tables over random (possibly unknown or
         * repeated) ids; partitions usually small enough to match INIT. */
        uint32_t parts = s->config.initialized && rnd_below(5) != 0 ? s->config.partitions : 1 + rnd_below(6);
        uint32_t width = 1 + rnd_below(4), n_ids = rnd_below(5);
        struct ck_str ids[5];
        uint16_t rows[6 * 4];
        for (uint32_t i = 0; i < n_ids; i++) {
            ids[i] = rnd_ids[rnd_below(rnd_below(4) == 0 ? CK_ARRAY_SIZE(rnd_ids) : 5)];
        }
        for (uint32_t p = 0; p < parts; p++) {
            uint32_t n = n_ids == 0 ? 0 : rnd_below((n_ids < width ? n_ids : width) + 1);
            uint32_t start = n_ids ? rnd_below(n_ids) : 0;
            for (uint32_t k = 0; k < width; k++) {
                rows[p * width + k] = k < n ? (uint16_t)((start + k) % n_ids) : CK_NO_NODE;
            }
        }
        return enc_table_sv(parts, width, ids, n_ids, rows);
    }
    /* Garbage: random bytes, often behind a valid header. */
    size_t len = rnd_below(40);
    struct blob b = {malloc(len + 1), len};
    for (size_t i = 0; i < len; i++) {
        b.p[i] = (uint8_t)rnd();
    }
    if (len >= 2 && rnd_below(2)) {
        b.p[0] = CK_CMD_VERSION;
        b.p[1] = (uint8_t)(1 + rnd_below(5));
    }
    return b;
}

/* Mutate a valid command: flip a byte, truncate, or pad (validly or not). */
static struct blob rnd_mutate(struct blob b)
{
    switch (rnd_below(8)) {
    case 0:
        if (b.len > 0) {
            b.p[rnd_below((uint32_t)b.len)] ^= (uint8_t)(1 + rnd_below(255));
        }
        return b;
    case 1:
        b.len = rnd_below((uint32_t)b.len + 1);
        return b;
    case 2: {
        size_t pad = rnd_below(10);
        struct blob c = blob_copy(b.p, b.len, pad);
        if (pad > 0 && rnd_below(3) == 0) {
            c.p[c.len - 1] = 1;
        }
        free(b.p);
        return c;
    }
    default:
        return b;
    }
}

/* FLAGS sets the cluster-wide switches, survives a snapshot, and refuses
 * unknown bits without touching the state. */
static void test_flags(void **state)
{
    struct ck_state a, b;
    struct ck_wbuf w;

    (void)state;
    ck_state_init(&a);
    ck_state_init(&b);
    ck_wbuf_init(&w);
    ck_cmd_encode_flags(&w, CK_FLAG_REBALANCE_PAUSED);
    assert_int_equal(ck_state_apply(&a, w.p, w.len, 7), 0);
    assert_int_equal(a.config.flags, CK_FLAG_REBALANCE_PAUSED);
    assert_int_equal(a.index, 7);
    struct blob s = snap(&a);
    assert_int_equal(ck_state_restore(&b, s.p, s.len), 0);
    assert_int_equal(b.config.flags, CK_FLAG_REBALANCE_PAUSED);
    w.len = 0;
    ck_cmd_encode_flags(&w, 0x80);
    /* An unknown bit is a flag of a newer build: not decodable here. */
    assert_int_equal(ck_state_apply(&a, w.p, w.len, 8), CK_ECORRUPT);
    assert_int_equal(a.config.flags, CK_FLAG_REBALANCE_PAUSED);
    assert_int_equal(a.index, 7);
    s.p[s.len - 4] = 0x80; /* An unknown bit in a snapshot is corrupt. */
    assert_int_not_equal(ck_state_restore(&b, s.p, s.len), 0);
    blob_free(&s);
    ck_wbuf_free(&w);
    ck_state_free(&a);
    ck_state_free(&b);
}

/* Thousands of random commands (valid, mutated, garbage) never crash apply,
 * keep the state's invariants, give identical results on two replicas, and
 * snapshot -> restore -> snapshot is stable after every step. */
static void test_random_commands(void **state)
{
    struct ck_state a, b, r;
    unsigned accepted[CK_CMD_TABLE + 1] = {0};

    (void)state;
    rng_state = 0x9e3779b97f4a7c15ull;
    ck_state_init(&a);
    ck_state_init(&b);
    ck_state_init(&r);
    for (uint64_t i = 1; i <= 4000; i++) {
        struct blob cmd = rnd_mutate(rnd_command(&a));
        /* An exact-size copy, so ASan sees any read past the end. */
        uint8_t *exact = malloc(cmd.len ? cmd.len : 1);
        memcpy(exact, cmd.p, cmd.len);
        int ra = ck_state_apply(&a, exact, cmd.len, i);
        int rb = ck_state_apply(&b, exact, cmd.len, i);
        free(exact);
        assert_int_equal(ra, rb);
        if (ra == 0) {
            accepted[cmd.p[1]]++;
        }
        free(cmd.p);
        assert_invariants(&a);

        struct blob sa = snap(&a);
        assert_snap_equal(&b, sa);
        assert_int_equal(ck_state_restore(&r, sa.p, sa.len), 0);
        assert_snap_equal(&r, sa);
        assert_invariants(&r);
        blob_free(&sa);
    }
    /* The run must have exercised every command, not just the decoder. */
    for (int t = CK_CMD_INIT; t <= CK_CMD_TABLE; t++) {
        printf("# accepted type %d: %u\n", t, accepted[t]);
        assert_true(accepted[t] >= (t == CK_CMD_INIT ? 1u : 100u));
    }
    assert_true(a.config.initialized);
    ck_state_free(&a);
    ck_state_free(&b);
    ck_state_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_init),
        cmocka_unit_test(test_roundtrip_node),
        cmocka_unit_test(test_roundtrip_status),
        cmocka_unit_test(test_roundtrip_remove),
        cmocka_unit_test(test_roundtrip_table),
        cmocka_unit_test(test_decode_rejects_version),
        cmocka_unit_test(test_decode_rejects_unknown_type),
        cmocka_unit_test(test_decode_rejects_every_truncation),
        cmocka_unit_test(test_decode_padding),
        cmocka_unit_test(test_decode_rejects_long_strings),
        cmocka_unit_test(test_decode_rejects_nul_in_strings),
        cmocka_unit_test(test_decode_rejects_init_ranges),
        cmocka_unit_test(test_decode_rejects_unknown_status),
        cmocka_unit_test(test_decode_rejects_bad_tables),
        cmocka_unit_test(test_apply_init),
        cmocka_unit_test(test_apply_second_init_rejected),
        cmocka_unit_test(test_apply_node_upsert),
        cmocka_unit_test(test_apply_node_raft_id_conflict),
        cmocka_unit_test(test_status_bytes_are_stable),
        cmocka_unit_test(test_apply_node_status),
        cmocka_unit_test(test_apply_table_rejected),
        cmocka_unit_test(test_apply_table_duplicate_ids_rejected),
        cmocka_unit_test(test_apply_table_epochs),
        cmocka_unit_test(test_apply_table_width_change),
        cmocka_unit_test(test_apply_remove_middle),
        cmocka_unit_test(test_change_record),
        cmocka_unit_test(test_index_moves_only_on_success),
        cmocka_unit_test(test_table_index_moves_only_on_table_change),
        cmocka_unit_test(test_snapshot_roundtrip),
        cmocka_unit_test(test_snapshot_roundtrip_uninitialized),
        cmocka_unit_test(test_kv_commands_and_snapshots),
        cmocka_unit_test(test_restore_rejects_bad_magic),
        cmocka_unit_test(test_restore_rejects_every_truncation),
        cmocka_unit_test(test_restore_rejects_trailing_bytes),
        cmocka_unit_test(test_restore_rejects_duplicate_nodes),
        cmocka_unit_test(test_restore_rejects_owner_out_of_range),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_flags),
        cmocka_unit_test(test_feature_level),
        cmocka_unit_test(test_trailing_fields),
        cmocka_unit_test(test_random_commands),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
