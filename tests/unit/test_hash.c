/*
 * Unit tests for ck_hash: MD5 against RFC 1321 and hashlib, FNV-1a 64 +
 * fmix64 against a reference script, the key -> partition mapping of both
 * algorithms, the hash-tag rule, argument checks and distribution.
 *
 * Expected values that are not from RFC 1321 were computed with python3
 * (hashlib.md5 and a ten-line FNV-1a + fmix64), independently of this code.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "ck_common.h"
#include "ck_hash.h"

/* A string literal as (pointer, length), so embedded NULs count. */
#define KEY(s) (s), (sizeof(s) - 1)

static void md5_hex(const void *data, size_t len, char out[33])
{
    uint8_t d[16];

    ck_md5(data, len, d);
    for (int i = 0; i < 16; i++) {
        snprintf(out + 2 * i, 3, "%02x", d[i]);
    }
}

static struct ck_hasher hasher(const char *algo, uint32_t partitions, bool tags)
{
    struct ck_hasher h;

    assert_int_equal(ck_hasher_init(&h, algo, partitions, tags), 0);
    return h;
}

/* ---- MD5 ---------------------------------------------------------------- */

/* The seven vectors of RFC 1321's appendix A.5 hash to the published digests. */
static void test_md5_rfc1321_suite(void **state)
{
    static const struct {
        const char *in;
        const char *hex;
    } v[] = {
        {"", "d41d8cd98f00b204e9800998ecf8427e"},
        {"a", "0cc175b9c0f1b6a831c399e269772661"},
        {"abc", "900150983cd24fb0d6963f7d28e17f72"},
        {"message digest", "f96b697d7cb7938d525a2f31aaf161d0"},
        {"abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"},
        {"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "d174ab98d277d9f5a5611c2c9f419d9f"},
        {"1234567890123456789012345678901234567890"
         "1234567890123456789012345678901234567890",
         "57edf4a22be3c955ac49da2e2107b67a"},
    };
    char hex[33];

    (void)state;
    for (size_t i = 0; i < CK_ARRAY_SIZE(v); i++) {
        md5_hex(v[i].in, strlen(v[i].in), hex);
        assert_string_equal(hex, v[i].hex);
    }
}

/* Inputs on each side of the padding and block boundaries (55/56/63/64/65 and
 * their next-block twins) match hashlib, so the one- and two-block tails and
 * the full-block path all agree with MD5. */
static void test_md5_block_boundaries(void **state)
{
    static const struct {
        size_t len;
        const char *hex;
    } v[] = {
        {0, "d41d8cd98f00b204e9800998ecf8427e"},   {1, "8666683506aacd900bbd5a74ac4edf68"},
        {3, "c9aee4810523ef8658121b8d492c6b41"},   {55, "52c0e574e1198de5fe3f8f11440dcb1b"},
        {56, "46c9907fc908ee68b1e7b8e71286a518"},  {57, "1c805dd236c35cab25fcb1bc73802c51"},
        {63, "a62f6d59e837867693f042f5b8f5a236"},  {64, "7160b8fb5e9e4023d549c3971fbaeead"},
        {65, "70bd662e7aefbda85a0f7244167b7897"},  {119, "e84905d4214f4d1ca56c2cdcc152b143"},
        {120, "e3eb5a6c8669ea01a8c185b8abc8a5dc"}, {127, "acce2474d6cc8302120d09c818d17ef7"},
        {128, "10b2da1a82f16d99a81a7203fe9f02cb"}, {129, "03fefbbcebe2959cf2270241aafe0250"},
        {200, "4c79b81ac94bad7a875519ce6b964c66"},
    };
    unsigned char buf[200];
    char hex[33];

    (void)state;
    /* bytes(((i * 7 + 3) & 0xff) for i in range(n)) in the python script. */
    for (size_t i = 0; i < sizeof(buf); i++) {
        buf[i] = (unsigned char)((i * 7 + 3) & 0xff);
    }
    for (size_t i = 0; i < CK_ARRAY_SIZE(v); i++) {
        md5_hex(buf, v[i].len, hex);
        assert_string_equal(hex, v[i].hex);
    }
}

/* A million 'a's (15625 blocks, a bit length wider than 16 bits) match
 * hashlib, so long inputs and the 64-bit length field are right. */
static void test_md5_million_a(void **state)
{
    static char buf[1000000];
    char hex[33];

    (void)state;
    memset(buf, 'a', sizeof(buf));
    md5_hex(buf, sizeof(buf), hex);
    assert_string_equal(hex, "7707d6ae4e027c70eea2a935c2296f21");
}

/* ---- FNV-1a 64 + fmix64 ------------------------------------------------- */

/* ck_hash_fnv1a64 matches the reference script, including the empty input,
 * NUL bytes and every byte value 0..255 (which catches signed-char bugs). */
static void test_fnv1a64_vectors(void **state)
{
    static const struct {
        const char *in;
        size_t len;
        uint64_t h;
    } v[] = {
        {KEY(""), 0xefd01f60ba992926ull},       {KEY("a"), 0x82a2a958a9bece5bull},
        {KEY("foobar"), 0x2c22194922d1672bull}, {KEY("user:123"), 0x984080e52cd1950cull},
        {KEY("key-0"), 0x18137ad031db6589ull},  {KEY("hello world"), 0x7c6d8c019b6ee5d5ull},
        {KEY("a\0b"), 0xab78f5eca36d0e2bull},   {KEY("\0"), 0xb9034ad37056f5fbull},
    };
    unsigned char all[256];

    (void)state;
    for (size_t i = 0; i < CK_ARRAY_SIZE(v); i++) {
        assert_int_equal(ck_hash_fnv1a64(v[i].in, v[i].len), v[i].h);
    }
    for (int i = 0; i < 256; i++) {
        all[i] = (unsigned char)i;
    }
    assert_int_equal(ck_hash_fnv1a64(all, sizeof(all)), 0x2067db6dbd4efa06ull);
}

/* ---- Key -> partition --------------------------------------------------- */

struct map_vector {
    const char *key;
    size_t len;
    uint32_t part[4]; /* For P = 16, 64, 4096, 1000. */
};

static const uint32_t map_counts[4] = {16, 64, 4096, 1000};

static void check_map(const char *algo, const struct map_vector *v, size_t n)
{
    for (size_t j = 0; j < CK_ARRAY_SIZE(map_counts); j++) {
        struct ck_hasher h = hasher(algo, map_counts[j], false);

        for (size_t i = 0; i < n; i++) {
            assert_int_equal(ck_hash_partition(&h, v[i].key, v[i].len), v[i].part[j]);
        }
    }
}

/* md5 mode reproduces the Go ClusterKit: big-endian uint32 of md5(key)[0..3]
 * mod P, as hashlib computes it, for power-of-two and other counts. */
static void test_partition_md5_compat(void **state)
{
    static const struct map_vector v[] = {
        {KEY("user:123"), {0, 48, 48, 536}}, {KEY(""), {9, 25, 3289, 393}},       {KEY("key-0"), {14, 62, 2942, 966}},
        {KEY("key-1"), {11, 11, 2955, 459}}, {KEY("key-2"), {12, 12, 652, 12}},   {KEY("key-3"), {13, 61, 1597, 829}},
        {KEY("key-4"), {13, 61, 573, 589}},  {KEY("key-5"), {11, 43, 1579, 531}}, {KEY("key-6"), {14, 30, 2142, 798}},
        {KEY("key-7"), {3, 51, 371, 315}},   {KEY("key-8"), {7, 7, 1351, 631}},   {KEY("key-9"), {2, 34, 3810, 970}},
    };

    (void)state;
    check_map("md5", v, CK_ARRAY_SIZE(v));
}

/* fnv1a64 mode maps keys to (FNV-1a 64 + fmix64) mod P, as the reference
 * script computes it, for power-of-two and other counts. */
static void test_partition_fnv1a64(void **state)
{
    static const struct map_vector v[] = {
        {KEY("user:123"), {12, 12, 1292, 52}}, {KEY(""), {6, 38, 2342, 342}},      {KEY("key-0"), {9, 9, 1417, 129}},
        {KEY("key-1"), {12, 44, 1260, 852}},   {KEY("key-2"), {2, 50, 1330, 786}}, {KEY("key-3"), {3, 51, 1075, 331}},
        {KEY("key-4"), {7, 7, 3335, 23}},      {KEY("key-5"), {7, 39, 423, 23}},   {KEY("key-6"), {8, 56, 2360, 720}},
        {KEY("key-7"), {14, 14, 3214, 374}},   {KEY("key-8"), {11, 11, 2763, 43}}, {KEY("key-9"), {0, 48, 2800, 72}},
    };

    (void)state;
    check_map("fnv1a64", v, CK_ARRAY_SIZE(v));
}

/* ---- Hash tags ---------------------------------------------------------- */

/* Asserts that ck_hash_tag picks exactly @want out of @key. */
static void check_tag(const char *key, size_t len, const char *want, size_t want_len)
{
    const char *out = NULL;
    size_t n = ck_hash_tag(key, len, &out);

    assert_int_equal(n, want_len);
    assert_non_null(out);
    assert_memory_equal(out, want, want_len);
    /* The result points into the key, it is never a copy. */
    assert_true(out >= key && out + n <= key + len);
}

/* ck_hash_tag follows Redis Cluster's rule: the first '{', the first '}'
 * after it, a non-empty tag, otherwise the whole key. */
static void test_hash_tag_rules(void **state)
{
    (void)state;
    check_tag(KEY("user:{42}:cart"), KEY("42"));
    check_tag(KEY("{a}{b}"), KEY("a"));
    check_tag(KEY("x{y}z"), KEY("y"));
    check_tag(KEY("{abc}"), KEY("abc"));
    check_tag(KEY("a{{b}c"), KEY("{b")); /* Only the first '{' opens. */
    check_tag(KEY("a{b}}c"), KEY("b"));  /* The first '}' after it closes. */
    /* No valid tag: the whole key. */
    check_tag(KEY("{}"), KEY("{}"));
    check_tag(KEY("a{}b"), KEY("a{}b"));
    check_tag(KEY("{}x}"), KEY("{}x}")); /* An empty tag does not look further. */
    check_tag(KEY("a{b"), KEY("a{b"));
    check_tag(KEY("a}b{"), KEY("a}b{"));
    check_tag(KEY("{"), KEY("{"));
    check_tag(KEY("plain"), KEY("plain"));
    check_tag(KEY(""), KEY(""));
}

/* With tags on, ck_hash_partition hashes only the tag (both algorithms), so
 * "user:{42}:cart" lands where "42" does; with tags off it hashes the whole
 * key. P = 65536 makes an accidental match of a wrong choice unlikely. */
static void test_partition_applies_tags(void **state)
{
    static const struct {
        const char *key;
        size_t len;
        const char *hashed;
        size_t hashed_len;
    } v[] = {
        {KEY("user:{42}:cart"), KEY("42")}, {KEY("{a}{b}"), KEY("a")},
        {KEY("x{y}z"), KEY("y")},           {KEY("{}"), KEY("{}")},
        {KEY("a{}b"), KEY("a{}b")},         {KEY("a{b"), KEY("a{b")},
        {KEY("a}b{"), KEY("a}b{")},
    };
    struct ck_hasher on = hasher("fnv1a64", CK_MAX_PARTITIONS, true);
    struct ck_hasher off = hasher("fnv1a64", CK_MAX_PARTITIONS, false);

    (void)state;
    for (size_t i = 0; i < CK_ARRAY_SIZE(v); i++) {
        uint32_t tagged = (uint32_t)(ck_hash_fnv1a64(v[i].hashed, v[i].hashed_len) % CK_MAX_PARTITIONS);
        uint32_t whole = (uint32_t)(ck_hash_fnv1a64(v[i].key, v[i].len) % CK_MAX_PARTITIONS);

        assert_int_equal(ck_hash_partition(&on, v[i].key, v[i].len), tagged);
        assert_int_equal(ck_hash_partition(&off, v[i].key, v[i].len), whole);
    }

    /* The same in md5 mode, against hashlib: md5("42") -> 1768 and
     * md5("user:{42}:cart") -> 1624, mod 4096. */
    struct ck_hasher mon = hasher("md5", 4096, true);
    struct ck_hasher moff = hasher("md5", 4096, false);
    assert_int_equal(ck_hash_partition(&mon, KEY("user:{42}:cart")), 1768);
    assert_int_equal(ck_hash_partition(&mon, KEY("42")), 1768);
    assert_int_equal(ck_hash_partition(&moff, KEY("user:{42}:cart")), 1624);
    /* fnv1a64 with P = 4096 from the script: "42" -> 3308, whole -> 1323. */
    struct ck_hasher fon = hasher("fnv1a64", 4096, true);
    struct ck_hasher foff = hasher("fnv1a64", 4096, false);
    assert_int_equal(ck_hash_partition(&fon, KEY("user:{42}:cart")), 3308);
    assert_int_equal(ck_hash_partition(&foff, KEY("user:{42}:cart")), 1323);
}

/* Keys are (pointer, length): NUL bytes are hashed like any other byte, in
 * the key and inside a tag, and bytes after the length are never read. */
static void test_keys_with_nul_bytes(void **state)
{
    struct ck_hasher f = hasher("fnv1a64", 4096, false);
    struct ck_hasher m = hasher("md5", 4096, false);
    struct ck_hasher ft = hasher("fnv1a64", 4096, true);
    char hex[33];

    (void)state;
    /* From the scripts: "a\0b" -> fnv 3627, md5 3936; "a\0c" -> fnv 714,
     * md5 2855; "\0" -> fnv 1531, md5 1453; "\0\0" -> fnv 1645, md5 3858. */
    assert_int_equal(ck_hash_partition(&f, KEY("a\0b")), 3627);
    assert_int_equal(ck_hash_partition(&m, KEY("a\0b")), 3936);
    assert_int_equal(ck_hash_partition(&f, KEY("a\0c")), 714);
    assert_int_equal(ck_hash_partition(&m, KEY("a\0c")), 2855);
    assert_int_equal(ck_hash_partition(&f, KEY("\0")), 1531);
    assert_int_equal(ck_hash_partition(&m, KEY("\0")), 1453);
    assert_int_equal(ck_hash_partition(&f, KEY("\0\0")), 1645);
    assert_int_equal(ck_hash_partition(&m, KEY("\0\0")), 3858);
    md5_hex(KEY("a\0b"), hex);
    assert_string_equal(hex, "70350f6027bce3713f6b76473084309b");

    /* A tag containing a NUL, and a tag found after a NUL. */
    check_tag(KEY("x{a\0b}y"), KEY("a\0b"));
    check_tag(KEY("\0{k}"), KEY("k"));
    assert_int_equal(ck_hash_partition(&ft, KEY("x{a\0b}y")), 3627);

    /* The length bounds the key: a '{...}' past it is not a tag. */
    check_tag("ab{c}", 3, "ab{", 3);
}

/* ---- Configuration ------------------------------------------------------ */

/* ck_hasher_init accepts both names and 1..CK_MAX_PARTITIONS, and rejects a
 * count of 0 or above the maximum and unknown, miscased or NULL names with
 * CK_EINVAL, leaving the hasher untouched. */
static void test_hasher_init_validation(void **state)
{
    struct ck_hasher h;
    const struct ck_hasher sentinel = {.algo = 77, .partitions = 5, .tags = false};

    (void)state;
    assert_int_equal(ck_hasher_init(&h, "fnv1a64", 1, false), 0);
    assert_int_equal(h.algo, CK_HASH_FNV1A64);
    assert_int_equal(h.partitions, 1);
    assert_false(h.tags);
    assert_int_equal(ck_hasher_init(&h, "md5", CK_MAX_PARTITIONS, true), 0);
    assert_int_equal(h.algo, CK_HASH_MD5);
    assert_int_equal(h.partitions, CK_MAX_PARTITIONS);
    assert_true(h.tags);

    static const struct {
        const char *algo;
        uint32_t partitions;
    } bad[] = {
        {"fnv1a64", 0},      {"md5", 0},       {"fnv1a64", CK_MAX_PARTITIONS + 1},
        {"md5", UINT32_MAX}, {"sha1", 64},     {"MD5", 64},
        {"fnv1a", 64},       {"fnv1a64 ", 64}, {"", 64},
        {NULL, 64},
    };
    for (size_t i = 0; i < CK_ARRAY_SIZE(bad); i++) {
        h = sentinel;
        assert_int_equal(ck_hasher_init(&h, bad[i].algo, bad[i].partitions, false), CK_EINVAL);
        assert_memory_equal(&h, &sentinel, sizeof(h));
    }
    assert_int_equal(ck_hasher_init(NULL, "md5", 64, false), CK_EINVAL);
}

/* Algorithm names and codes convert both ways, and unknown ones give NULL / 0. */
static void test_algo_names(void **state)
{
    (void)state;
    assert_string_equal(ck_hash_algo_name(CK_HASH_FNV1A64), "fnv1a64");
    assert_string_equal(ck_hash_algo_name(CK_HASH_MD5), "md5");
    assert_null(ck_hash_algo_name(0));
    assert_null(ck_hash_algo_name(3));
    assert_int_equal(ck_hash_algo_from_name("fnv1a64"), CK_HASH_FNV1A64);
    assert_int_equal(ck_hash_algo_from_name("md5"), CK_HASH_MD5);
    assert_int_equal(ck_hash_algo_from_name("crc16"), 0);
    assert_int_equal(ck_hash_algo_from_name(NULL), 0);
}

/* ---- Range and distribution --------------------------------------------- */

/* The partition is always below the count, for counts that are and are not
 * powers of two, up to the maximum, in both algorithms, and every partition
 * of a small count is reachable. */
static void test_partition_in_range(void **state)
{
    static const uint32_t counts[] = {1, 2, 3, 7, 64, 100, 1000, 4096, 65535, CK_MAX_PARTITIONS};
    static const char *algos[] = {"fnv1a64", "md5"};
    char key[32];

    (void)state;
    for (size_t a = 0; a < CK_ARRAY_SIZE(algos); a++) {
        for (size_t c = 0; c < CK_ARRAY_SIZE(counts); c++) {
            struct ck_hasher h = hasher(algos[a], counts[c], true);
            uint32_t max = 0;

            for (int i = 0; i < 5000; i++) {
                int n = snprintf(key, sizeof(key), "k{%d}", i);
                uint32_t p = ck_hash_partition(&h, key, (size_t)n);

                assert_true(p < counts[c]);
                if (p > max) {
                    max = p;
                }
            }
            /* 5000 keys reach the top partition of the small counts. */
            if (counts[c] <= 100) {
                assert_int_equal(max, counts[c] - 1);
            }
        }
    }
}

/* 100000 keys "key-%d" spread over 64 partitions with every partition within
 * 15% of the mean (about six standard deviations), in both algorithms. */
static void test_distribution(void **state)
{
    static const char *algos[] = {"fnv1a64", "md5"};
    enum { NKEYS = 100000, NPART = 64 };
    const double mean = (double)NKEYS / NPART;
    char key[32];

    (void)state;
    for (size_t a = 0; a < CK_ARRAY_SIZE(algos); a++) {
        struct ck_hasher h = hasher(algos[a], NPART, false);
        unsigned counts[NPART] = {0};

        for (int i = 0; i < NKEYS; i++) {
            int n = snprintf(key, sizeof(key), "key-%d", i);
            counts[ck_hash_partition(&h, key, (size_t)n)]++;
        }
        for (int p = 0; p < NPART; p++) {
            if (counts[p] < mean * 0.85 || counts[p] > mean * 1.15) {
                fail_msg("%s: partition %d has %u keys, mean %.1f", algos[a], p, counts[p], mean);
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_md5_rfc1321_suite),    cmocka_unit_test(test_md5_block_boundaries),
        cmocka_unit_test(test_md5_million_a),        cmocka_unit_test(test_fnv1a64_vectors),
        cmocka_unit_test(test_partition_md5_compat), cmocka_unit_test(test_partition_fnv1a64),
        cmocka_unit_test(test_hash_tag_rules),       cmocka_unit_test(test_partition_applies_tags),
        cmocka_unit_test(test_keys_with_nul_bytes),  cmocka_unit_test(test_hasher_init_validation),
        cmocka_unit_test(test_algo_names),           cmocka_unit_test(test_partition_in_range),
        cmocka_unit_test(test_distribution),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
