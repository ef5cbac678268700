/*
 * Key -> partition hashing: the hash-tag rule, FNV-1a 64 + fmix64, and MD5
 * (written from RFC 1321) for compatibility with the Go ClusterKit.
 *
 * Everything here is pure: no allocation, no libuv, no Lua, no global state,
 * so any thread may call it and the unit tests can check it alone. The
 * mapping is replicated cluster config that clients in other languages
 * reproduce, so every function is byte-exact and independent of the host's
 * endianness.
 */
#include "ck_hash.h"

#include "ck_common.h"

#include <assert.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Algorithm names                                                           */
/* ------------------------------------------------------------------------ */

const char *ck_hash_algo_name(uint32_t algo)
{
    switch (algo) {
    case CK_HASH_FNV1A64:
        return "fnv1a64";
    case CK_HASH_MD5:
        return "md5";
    default:
        return NULL;
    }
}

uint32_t ck_hash_algo_from_name(const char *name)
{
    /* Names are exact and case-sensitive: they travel in hash_config and a
     * client comparing them as strings must agree with us. */
    if (name == NULL) {
        return 0;
    }
    if (strcmp(name, "fnv1a64") == 0) {
        return CK_HASH_FNV1A64;
    }
    if (strcmp(name, "md5") == 0) {
        return CK_HASH_MD5;
    }
    return 0;
}

/* On error @h is left untouched, so a caller can keep its previous config. A
 * NULL @h or @algo is CK_EINVAL too: there is no implicit default here, the
 * default belongs to the config layer that calls us. */
int ck_hasher_init(struct ck_hasher *h, const char *algo, uint32_t partitions, bool tags)
{
    uint32_t code = ck_hash_algo_from_name(algo);

    if (h == NULL || code == 0 || partitions == 0 || partitions > CK_MAX_PARTITIONS) {
        return CK_EINVAL;
    }
    h->algo = code;
    h->partitions = partitions;
    h->tags = tags;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Hash tags                                                                 */
/* ------------------------------------------------------------------------ */

/* Redis Cluster's rule: only the first '{' counts, and only the first '}'
 * after it; an empty tag ("{}") means "no tag", not "look further". memchr
 * keeps long keys cheap and handles NUL bytes inside keys. */
size_t ck_hash_tag(const char *key, size_t len, const char **out)
{
    const char *open = len > 0 ? memchr(key, '{', len) : NULL;

    if (open != NULL) {
        const char *start = open + 1;
        size_t rest = len - (size_t)(start - key);
        const char *close = rest > 0 ? memchr(start, '}', rest) : NULL;

        if (close != NULL && close > start) {
            *out = start;
            return (size_t)(close - start);
        }
    }
    *out = key;
    return len;
}

/* ------------------------------------------------------------------------ */
/* FNV-1a 64 + fmix64                                                        */
/* ------------------------------------------------------------------------ */

/* fmix64 is there because in plain FNV-1a the low k bits of the hash depend
 * only on the low k bits of each input byte (a multiplication carries upward
 * only), and "mod partition_count" keeps just those bits for power-of-two
 * counts; murmur3's finalizer folds the high bits down over the whole word. */
uint64_t ck_hash_fnv1a64(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/* ------------------------------------------------------------------------ */
/* MD5 (RFC 1321)                                                            */
/* ------------------------------------------------------------------------ */

/* The auxiliary functions of RFC 1321 section 3.4, rewritten so that the
 * newest word (x, the "b" of each step) comes in as late as possible: MD5 is
 * one long dependency chain, so every operation taken off it saves time on
 * short keys. F is "x ? y : z" bitwise; G is "z ? x : y" bitwise, and its two
 * halves have no bits in common, so they may be added instead of OR-ed, which
 * lets the step add the half without x before x is known. */
#define MD5_F(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define MD5_G(x, y, z) (((y) & ~(z)) + ((x) & (z)))
#define MD5_H(x, y, z) ((x) ^ ((y) ^ (z)))
#define MD5_I(x, y, z) ((y) ^ ((x) | ~(z)))

#define MD5_ROTL(v, s) (((v) << (s)) | ((v) >> (32 - (s))))

/* One step: a = b + ((a + f(b,c,d) + X[k] + T[i]) <<< s). The message word
 * and constant are added first, off the chain through b. */
#define MD5_STEP(f, a, b, c, d, xk, t, s) \
    do {                                  \
        (a) += (xk) + (uint32_t)(t);      \
        (a) += f((b), (c), (d));          \
        (a) = MD5_ROTL((a), (s));         \
        (a) += (b);                       \
    } while (0)

static inline uint32_t md5_load32le(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void md5_store32le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* Process one 64-byte block into @st (RFC 1321 section 3.4). The table T[i]
 * is floor(2^32 * abs(sin(i))) for i = 1..64, written inline per step. */
static void md5_block(uint32_t st[4], const unsigned char *block)
{
    uint32_t x[16];
    uint32_t a = st[0], b = st[1], c = st[2], d = st[3];

    for (int i = 0; i < 16; i++) {
        x[i] = md5_load32le(block + 4 * i);
    }

    /* Round 1: X[k] with k = i. */
    MD5_STEP(MD5_F, a, b, c, d, x[0], 0xd76aa478, 7);
    MD5_STEP(MD5_F, d, a, b, c, x[1], 0xe8c7b756, 12);
    MD5_STEP(MD5_F, c, d, a, b, x[2], 0x242070db, 17);
    MD5_STEP(MD5_F, b, c, d, a, x[3], 0xc1bdceee, 22);
    MD5_STEP(MD5_F, a, b, c, d, x[4], 0xf57c0faf, 7);
    MD5_STEP(MD5_F, d, a, b, c, x[5], 0x4787c62a, 12);
    MD5_STEP(MD5_F, c, d, a, b, x[6], 0xa8304613, 17);
    MD5_STEP(MD5_F, b, c, d, a, x[7], 0xfd469501, 22);
    MD5_STEP(MD5_F, a, b, c, d, x[8], 0x698098d8, 7);
    MD5_STEP(MD5_F, d, a, b, c, x[9], 0x8b44f7af, 12);
    MD5_STEP(MD5_F, c, d, a, b, x[10], 0xffff5bb1, 17);
    MD5_STEP(MD5_F, b, c, d, a, x[11], 0x895cd7be, 22);
    MD5_STEP(MD5_F, a, b, c, d, x[12], 0x6b901122, 7);
    MD5_STEP(MD5_F, d, a, b, c, x[13], 0xfd987193, 12);
    MD5_STEP(MD5_F, c, d, a, b, x[14], 0xa679438e, 17);
    MD5_STEP(MD5_F, b, c, d, a, x[15], 0x49b40821, 22);

    /* Round 2: k = (1 + 5i) mod 16. */
    MD5_STEP(MD5_G, a, b, c, d, x[1], 0xf61e2562, 5);
    MD5_STEP(MD5_G, d, a, b, c, x[6], 0xc040b340, 9);
    MD5_STEP(MD5_G, c, d, a, b, x[11], 0x265e5a51, 14);
    MD5_STEP(MD5_G, b, c, d, a, x[0], 0xe9b6c7aa, 20);
    MD5_STEP(MD5_G, a, b, c, d, x[5], 0xd62f105d, 5);
    MD5_STEP(MD5_G, d, a, b, c, x[10], 0x02441453, 9);
    MD5_STEP(MD5_G, c, d, a, b, x[15], 0xd8a1e681, 14);
    MD5_STEP(MD5_G, b, c, d, a, x[4], 0xe7d3fbc8, 20);
    MD5_STEP(MD5_G, a, b, c, d, x[9], 0x21e1cde6, 5);
    MD5_STEP(MD5_G, d, a, b, c, x[14], 0xc33707d6, 9);
    MD5_STEP(MD5_G, c, d, a, b, x[3], 0xf4d50d87, 14);
    MD5_STEP(MD5_G, b, c, d, a, x[8], 0x455a14ed, 20);
    MD5_STEP(MD5_G, a, b, c, d, x[13], 0xa9e3e905, 5);
    MD5_STEP(MD5_G, d, a, b, c, x[2], 0xfcefa3f8, 9);
    MD5_STEP(MD5_G, c, d, a, b, x[7], 0x676f02d9, 14);
    MD5_STEP(MD5_G, b, c, d, a, x[12], 0x8d2a4c8a, 20);

    /* Round 3: k = (5 + 3i) mod 16. */
    MD5_STEP(MD5_H, a, b, c, d, x[5], 0xfffa3942, 4);
    MD5_STEP(MD5_H, d, a, b, c, x[8], 0x8771f681, 11);
    MD5_STEP(MD5_H, c, d, a, b, x[11], 0x6d9d6122, 16);
    MD5_STEP(MD5_H, b, c, d, a, x[14], 0xfde5380c, 23);
    MD5_STEP(MD5_H, a, b, c, d, x[1], 0xa4beea44, 4);
    MD5_STEP(MD5_H, d, a, b, c, x[4], 0x4bdecfa9, 11);
    MD5_STEP(MD5_H, c, d, a, b, x[7], 0xf6bb4b60, 16);
    MD5_STEP(MD5_H, b, c, d, a, x[10], 0xbebfbc70, 23);
    MD5_STEP(MD5_H, a, b, c, d, x[13], 0x289b7ec6, 4);
    MD5_STEP(MD5_H, d, a, b, c, x[0], 0xeaa127fa, 11);
    MD5_STEP(MD5_H, c, d, a, b, x[3], 0xd4ef3085, 16);
    MD5_STEP(MD5_H, b, c, d, a, x[6], 0x04881d05, 23);
    MD5_STEP(MD5_H, a, b, c, d, x[9], 0xd9d4d039, 4);
    MD5_STEP(MD5_H, d, a, b, c, x[12], 0xe6db99e5, 11);
    MD5_STEP(MD5_H, c, d, a, b, x[15], 0x1fa27cf8, 16);
    MD5_STEP(MD5_H, b, c, d, a, x[2], 0xc4ac5665, 23);

    /* Round 4: k = 7i mod 16. */
    MD5_STEP(MD5_I, a, b, c, d, x[0], 0xf4292244, 6);
    MD5_STEP(MD5_I, d, a, b, c, x[7], 0x432aff97, 10);
    MD5_STEP(MD5_I, c, d, a, b, x[14], 0xab9423a7, 15);
    MD5_STEP(MD5_I, b, c, d, a, x[5], 0xfc93a039, 21);
    MD5_STEP(MD5_I, a, b, c, d, x[12], 0x655b59c3, 6);
    MD5_STEP(MD5_I, d, a, b, c, x[3], 0x8f0ccc92, 10);
    MD5_STEP(MD5_I, c, d, a, b, x[10], 0xffeff47d, 15);
    MD5_STEP(MD5_I, b, c, d, a, x[1], 0x85845dd1, 21);
    MD5_STEP(MD5_I, a, b, c, d, x[8], 0x6fa87e4f, 6);
    MD5_STEP(MD5_I, d, a, b, c, x[15], 0xfe2ce6e0, 10);
    MD5_STEP(MD5_I, c, d, a, b, x[6], 0xa3014314, 15);
    MD5_STEP(MD5_I, b, c, d, a, x[13], 0x4e0811a1, 21);
    MD5_STEP(MD5_I, a, b, c, d, x[4], 0xf7537e82, 6);
    MD5_STEP(MD5_I, d, a, b, c, x[11], 0xbd3af235, 10);
    MD5_STEP(MD5_I, c, d, a, b, x[2], 0x2ad7d2bb, 15);
    MD5_STEP(MD5_I, b, c, d, a, x[9], 0xeb86d391, 21);

    st[0] += a;
    st[1] += b;
    st[2] += c;
    st[3] += d;
}

/* One-shot MD5: full blocks straight from @data, then the tail with its
 * padding (a 0x80 byte, zeros up to 56 mod 64, the bit length as 64-bit
 * little-endian) in a stack buffer of one or two blocks. */
void ck_md5(const void *data, size_t len, uint8_t digest[16])
{
    const unsigned char *p = data;
    uint32_t st[4] = {0x67452301u, 0xefcdab89u, 0x98badcfeu, 0x10325476u};
    unsigned char tail[128];
    size_t full = len & ~(size_t)63;
    size_t rest = len - full;
    size_t tail_len = rest < 56 ? 64 : 128;
    uint64_t bits = (uint64_t)len << 3; /* RFC 1321: length mod 2^64 bits. */

    for (size_t off = 0; off < full; off += 64) {
        md5_block(st, p + off);
    }

    if (rest > 0) {
        memcpy(tail, p + full, rest);
    }
    tail[rest] = 0x80;
    memset(tail + rest + 1, 0, tail_len - 8 - (rest + 1));
    for (size_t i = 0; i < 8; i++) {
        tail[tail_len - 8 + i] = (unsigned char)(bits >> (8 * i));
    }
    md5_block(st, tail);
    if (tail_len == 128) {
        md5_block(st, tail + 64);
    }

    for (int i = 0; i < 4; i++) {
        md5_store32le(digest + 4 * i, st[i]);
    }
}

/* ------------------------------------------------------------------------ */
/* Key -> partition                                                          */
/* ------------------------------------------------------------------------ */

/* The reduction is an exact "h mod n" (the spec, and what other clients
 * compute); power-of-two counts, the common choice, take a mask instead of a
 * 64-bit division (about 10% of an fnv1a64 lookup on a short key). */
static inline uint32_t hash_reduce(uint64_t h, uint32_t n)
{
    if ((n & (n - 1)) == 0) {
        return (uint32_t)(h & (n - 1));
    }
    return (uint32_t)(h % n);
}

uint32_t ck_hash_partition(const struct ck_hasher *h, const char *key, size_t len)
{
    const char *bytes = key;
    size_t n = len;

    assert(h->partitions >= 1 && h->partitions <= CK_MAX_PARTITIONS);
    if (h->tags) {
        n = ck_hash_tag(key, len, &bytes);
    }

    if (h->algo == CK_HASH_MD5) {
        uint8_t d[16];
        uint32_t v;

        ck_md5(bytes, n, d);
        v = (uint32_t)d[0] << 24 | (uint32_t)d[1] << 16 | (uint32_t)d[2] << 8 | (uint32_t)d[3];
        return hash_reduce(v, h->partitions);
    }
    /* CK_HASH_FNV1A64, the only other value ck_hasher_init produces. */
    return hash_reduce(ck_hash_fnv1a64(bytes, n), h->partitions);
}
