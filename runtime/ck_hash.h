/*
 * Key -> partition hashing. Pure C: no libuv, no Lua, no allocation.
 *
 * The mapping is part of the cluster's replicated config and is advertised in
 * /cluster as "hash_config", so that clients in any language can route keys
 * on their own. Specification (also in README.md):
 *
 *   1. Hash tag (when tags are on): if the key contains '{' and, after it, a
 *      '}' with at least one byte between them, only the bytes between the
 *      first '{' and the first '}' after it are hashed (Redis Cluster's rule:
 *      "user:{42}:cart" hashes "42"; "a{}b" and "a{b" hash the whole key).
 *   2. Algorithm "fnv1a64" (the default): h = FNV-1a 64-bit over the hashed
 *      bytes (offset basis 0xcbf29ce484222325, prime 0x100000001b3), then the
 *      murmur3 fmix64 finalizer (h ^= h >> 33; h *= 0xff51afd7ed558ccd;
 *      h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53; h ^= h >> 33);
 *      partition = h mod partition_count.
 *   3. Algorithm "md5" (compatibility with the Go ClusterKit): h = the first
 *      4 bytes of md5(hashed bytes) read as a big-endian uint32;
 *      partition = h mod partition_count. With tags off this reproduces the
 *      Go library's mapping exactly.
 */
#ifndef CK_HASH_H
#define CK_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum ck_hash_algo {
    CK_HASH_FNV1A64 = 1,
    CK_HASH_MD5 = 2,
};

/* Hard upper bound on the partition count (the table stores u32 indexes, but
 * placement and encoding are sized for this). */
#define CK_MAX_PARTITIONS 65536u

struct ck_hasher {
    uint32_t algo;       /* enum ck_hash_algo */
    uint32_t partitions; /* 1 .. CK_MAX_PARTITIONS */
    bool tags;           /* Redis-style hash tags on/off. */
};

/* Fill @h. @algo is "fnv1a64" or "md5". Returns 0, or CK_EINVAL for an unknown
 * algorithm or a partition count outside 1..CK_MAX_PARTITIONS. */
int ck_hasher_init(struct ck_hasher *h, const char *algo, uint32_t partitions, bool tags);

/* The name of an algorithm ("fnv1a64", "md5"), or NULL if unknown. */
const char *ck_hash_algo_name(uint32_t algo);

/* The algorithm code for a name, or 0 if unknown. */
uint32_t ck_hash_algo_from_name(const char *name);

/* The partition index (0-based) of @key. Never allocates; @key need not be
 * NUL-terminated and may contain NUL bytes. @h must have been initialised. */
uint32_t ck_hash_partition(const struct ck_hasher *h, const char *key, size_t len);

/* The bytes that are hashed for @key under the hash-tag rule: sets *@out and
 * returns their length (the whole key when it has no valid tag). */
size_t ck_hash_tag(const char *key, size_t len, const char **out);

/* FNV-1a 64 followed by fmix64, as in the specification above. */
uint64_t ck_hash_fnv1a64(const void *data, size_t len);

/* MD5 (RFC 1321) of @data into @digest. */
void ck_md5(const void *data, size_t len, uint8_t digest[16]);

#endif /* CK_HASH_H */
