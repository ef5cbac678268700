/*
 * The replicated cluster state and the commands that change it.
 *
 * Pure C (no libuv, no Lua): the FSM in ck_node.c decodes every committed
 * raft entry with ck_cmd_decode() and applies it with ck_state_apply(). Apply
 * is deterministic: the same commands in the same order give byte-identical
 * snapshots on every node. A command that is invalid against the current
 * state (an unknown node in a table, a second INIT) is rejected the same way
 * on every node and leaves the state untouched.
 *
 * Command encoding, version 1 or 2 (all integers little-endian; str = u32
 * length + bytes, none of them NUL):
 *
 *   u8 version (=1) | u8 type | payload | 0..7 zero bytes of padding
 *   u8 version (=2) | u8 type | payload | fields | 0..7 zero bytes of padding
 *
 * Version 2 adds optional trailing fields, each u8 tag (1..255) | u32 length
 * | that many bytes; a zero byte where a tag would be starts the padding. A
 * reader skips the tags it does not know, so a later build can add a field
 * (a node attribute) that this one ignores. Encoders write version 1 when
 * there is no field, which is all that builds up to feature level 1 read.
 * Fields of NODE_UPSERT: the node's optional attributes, declared in
 * ck_node_attrs.h (tag 1: its build, the clusterkit version it runs).
 *
 * Feature levels. A new command type, status value, flag or field changes
 * what an older build can apply, so the leader proposes it only once the
 * cluster's committed feature level allows it (FEATURES, raised by the
 * leader when every member reported support; never lowered):
 *   1  what v0.1.0 (c24f3d8) reads: version 1 commands of types 1-6,
 *      statuses active..left, snapshots CKS1;
 *   2  status stopped, KV_TXN, version 2 commands, FEATURES, snapshots CKS3.
 * Apply accepts everything this build can decode whatever the level (an
 * older leader's entries must apply as they did); an entry this build
 * cannot decode stops the node (see ck_state_apply).
 *
 *   INIT        str cluster_id, str name, u32 partitions, u32 replication,
 *               u8 hash_algo, u8 hash_tags
 *   NODE_UPSERT str id, str name, str http_addr, str raft_addr, str zone,
 *               u64 raft_id, u32 weight, u8 status, u64 time_ms,
 *               u32 n_services, n * (str name, str addr)
 *   NODE_STATUS str id, u8 status, u64 time_ms
 *   NODE_REMOVE str id
 *   FLAGS       u32 flags (CK_FLAG_*; unknown bits are rejected)
 *   FEATURES    u32 level (2..CK_FEATURE_LEVEL; one above this build's is
 *               undecodable, one below the committed level is refused)
 *   TABLE       u32 partitions, u32 width, u32 n_ids, n_ids * str id,
 *               partitions * width * u16 (index into ids; 0xffff = empty,
 *               only at the end of a partition's row; slot 0 = primary)
 *   KV_TXN      a key-value transaction (the payload in ck_kv.h). It changes
 *               the store only: the state index (ETags, blocking queries on
 *               the cluster) stays, and the FSM reports it as a KV change.
 *               A compare that fails (CK_ECONFLICT) or a limit
 *               (CK_ETOOBIG) is the command's result, the same everywhere.
 *
 * Snapshot, version 2: "CKS2" | u64 index | u64 table_index | u8 initialized
 * | the INIT payload | u32 n_nodes | n * (NODE_UPSERT payload + u64
 * joined_index) | TABLE payload (ids = all nodes in order) | u32 n * u64
 * epochs | u32 flags | the key-value store (ck_kv.h's snapshot section).
 * Version 1 ("CKS1") is the same without the store. Version 3 ("CKS3") is
 * version 2 with, after each node's joined_index, u32 m | m bytes of the
 * node's fields (as in NODE_UPSERT), and after the flags, u32 feature level
 * | u32 m | m bytes of state fields (none yet); readers skip unknown tags.
 * A state at feature level 1 is written as CKS1 (CKS2 if its store is not
 * empty, which only a build between v0.1.0 and feature levels wrote), from
 * level 2 on as CKS3. All three are read.
 */
#ifndef CK_STATE_H
#define CK_STATE_H

#include <stdbool.h>
#include <stdint.h>

#include "ck_buf.h"
#include "ck_hash.h"
#include "ck_kv.h"
#include "ck_node_attrs.h"

#define CK_CMD_VERSION 1     /* Commands without trailing fields. */
#define CK_CMD_VERSION_MAX 2 /* With trailing fields. */
#define CK_FEATURE_LEVEL 2   /* The highest feature level this build applies. */
/* Trailing-field tags of a node: CK_FIELD_NODE_<name> (ck_node_attrs.h). */
enum {
#define X(attr, tag, flags, env, json) CK_FIELD_NODE_##attr = tag,
    CK_NODE_ATTRS(X)
#undef X
};
#define CK_MAX_NODES 4096u
#define CK_MAX_REPLICATION 16u
#define CK_MAX_SERVICES 64u
#define CK_MAX_STR 1024u /* Longest id, name, address or zone. */
#define CK_NO_NODE 0xffffu

enum ck_cmd_type {
    CK_CMD_INIT = 1,
    CK_CMD_NODE_UPSERT = 2,
    CK_CMD_NODE_STATUS = 3,
    CK_CMD_NODE_REMOVE = 4,
    CK_CMD_TABLE = 5,
    CK_CMD_FLAGS = 6,
    CK_CMD_KV_TXN = 7,
    CK_CMD_FEATURES = 8,
};

/* Cluster-wide switches (CK_CMD_FLAGS). */
enum {
    CK_FLAG_REBALANCE_PAUSED = 1u, /* Maintenance: the leader moves no data. */
};
#define CK_FLAGS_KNOWN 1u

/* A node's status (the u8 status of NODE_UPSERT, NODE_STATUS and snapshots).
 * Values are never renumbered, only appended, so every older encoding stays
 * readable. (A binary older than a value rejects commands that carry it.) */
enum ck_node_status {
    CK_NODE_ACTIVE = 1,
    CK_NODE_SUSPECT = 2,
    CK_NODE_DOWN = 3,
    CK_NODE_LEFT = 4,
    CK_NODE_STOPPED = 5, /* Announced a graceful stop; still a member, serves nothing. */
};
#define CK_NODE_STATUS_MAX CK_NODE_STOPPED

/* "active", "suspect", "down", "left", "stopped", or NULL. */
const char *ck_node_status_name(int status);
int ck_node_status_from_name(const char *name); /* 0 if unknown. */

struct ck_service {
    char *name;
    char *addr;
};

struct ck_node_info {
    char *id;
    char *name;
    char *http_addr;
    char *raft_addr;
    char *zone;
    uint64_t raft_id;
    uint32_t weight;
    uint8_t status;
    uint64_t status_since_ms; /* Leader's wall clock when status last changed. */
    uint64_t joined_index;    /* Raft index of the node's first entry. */
    struct ck_service *services;
    uint32_t n_services;
#define X(attr, tag, flags, env, json) char *attr;
    CK_NODE_ATTRS(X) /* Optional attributes ("" when unset): ck_node_attrs.h. */
#undef X
};

struct ck_config {
    bool initialized;
    uint32_t flags;         /* CK_FLAG_* */
    uint32_t feature_level; /* 1 until FEATURES raises it. */
    char *cluster_id;
    char *name;
    uint32_t partitions;
    uint32_t replication;
    struct ck_hasher hasher;
};

/* The partition table: row p holds up to @width node indexes, primary first,
 * CK_NO_NODE after the last owner. */
struct ck_table {
    uint32_t partitions;
    uint32_t width;
    uint16_t *owners; /* partitions * width */
    uint64_t *epochs; /* partitions; 0 = never assigned. */
};

/* What the table's rows went through since the owner last took the record
 * (ck_state_take_changes): every command that changes a row appends, per
 * changed row and in apply order, the partition, its epoch after the change
 * and its owners' ids, primary first. Several commits can be applied before
 * the owner looks (the node reports them in one event per loop turn); the
 * record keeps each intermediate row, so that a row that lost an owner and
 * got it back, or any change undone before the owner looked, is not missed.
 * Not part of the snapshot or of the replicated state. A restore, a record
 * over CK_CHANGES_MAX bytes or an allocation failure drop it and set `gap`:
 * the owner then knows only the state as it is. Entry encoding: u32
 * partition | u64 epoch | u32 n | n * str id.
 *
 * Beside the rows, the record says which node entries changed: `nodes`
 * holds the index (into s->nodes, u32, in apply order, maybe repeated) of
 * every entry an upsert or a status change touched, and `whole` is set by
 * a change that the indexes cannot describe (a removal renumbers the
 * entries; INIT, FLAGS and FEATURES change the configuration). With both,
 * the owner updates what it derived from the state in O(changes) instead
 * of copying all of it after every commit (issue 10, item 2). */
#define CK_CHANGES_MAX (16u << 20)
struct ck_changes {
    struct ck_wbuf buf;
    uint32_t count;
    struct ck_wbuf nodes; /* u32 node indexes. */
    uint32_t node_count;
    bool whole;
    bool gap;
};

struct ck_state {
    struct ck_config config;
    struct ck_node_info *nodes;
    uint32_t n_nodes;
    struct ck_table table;
    uint64_t index;       /* Raft index of the last command that changed anything but the store. */
    uint64_t table_index; /* Raft index of the last table change. */
    struct ck_kv kv;      /* The key-value store (its own index in kv.index). */
    struct ck_changes changes;
};

/* ---- Commands (decoded form: views into the encoded buffer). ---- */

struct ck_cmd_init {
    struct ck_str cluster_id, name;
    uint32_t partitions, replication;
    uint8_t hash_algo, hash_tags;
};

struct ck_cmd_node {
    struct ck_str id, name, http_addr, raft_addr, zone;
    uint64_t raft_id;
    uint32_t weight;
    uint8_t status;
    uint64_t time_ms;
    uint32_t n_services;
    struct ck_str *services; /* 2 * n_services: name, addr, ... */
#define X(attr, tag, flags, env, json) struct ck_str attr;
    CK_NODE_ATTRS(X) /* Trailing fields; empty = none. */
#undef X
};

struct ck_cmd_status {
    struct ck_str id;
    uint8_t status;
    uint64_t time_ms;
};

struct ck_cmd_table {
    uint32_t partitions, width, n_ids;
    struct ck_str *ids;
    const uint8_t *owners; /* partitions * width little-endian u16 */
};

struct ck_cmd {
    uint8_t type;
    union {
        struct ck_cmd_init init;
        struct ck_cmd_node node;
        struct ck_cmd_status status;
        struct ck_str remove_id;
        uint32_t flags;
        uint32_t level;
        struct ck_cmd_table table;
        struct ck_kv_txn kv;
    };
};

/* Encoders append a whole command to @w (which reports CK_ENOMEM through its
 * err field). */
void ck_cmd_encode_init(struct ck_wbuf *w, const struct ck_cmd_init *c);
void ck_cmd_encode_node(struct ck_wbuf *w, const struct ck_cmd_node *c);
void ck_cmd_encode_status(struct ck_wbuf *w, const struct ck_cmd_status *c);
void ck_cmd_encode_remove(struct ck_wbuf *w, struct ck_str id);
void ck_cmd_encode_table(struct ck_wbuf *w, const struct ck_cmd_table *c);
void ck_cmd_encode_flags(struct ck_wbuf *w, uint32_t flags);
void ck_cmd_encode_kv_txn(struct ck_wbuf *w, const struct ck_kv_txn *t);
void ck_cmd_encode_features(struct ck_wbuf *w, uint32_t level);

/* Decode @len bytes into @c. Views point into @buf, which must outlive @c.
 * Checks structure and ranges (not consistency with a state). Returns 0 or
 * CK_ECORRUPT / CK_EINVAL / CK_ENOMEM; always release with ck_cmd_free(). */
int ck_cmd_decode(struct ck_cmd *c, const void *buf, size_t len);
void ck_cmd_free(struct ck_cmd *c);

/* ---- State ---- */

void ck_state_init(struct ck_state *s);
void ck_state_free(struct ck_state *s);

/* Apply one encoded command committed at raft @index. Returns 0 when the
 * state changed or was already as asked, or a negative code when the command
 * was rejected (the state is then unchanged): CK_ECORRUPT when it could not
 * be decoded at all (which the FSM treats as fatal), CK_ENOMEM, or the
 * state's refusal (CK_EINVAL, CK_ENOTFOUND, ...). Never partially applies. */
int ck_state_apply(struct ck_state *s, const void *buf, size_t len, uint64_t index);

/* Serialize the whole state (the snapshot format above) into @w. */
void ck_state_snapshot(const struct ck_state *s, struct ck_wbuf *w);

/* Replace @s with the state in snapshot @buf. On error @s is unchanged. */
int ck_state_restore(struct ck_state *s, const void *buf, size_t len);

/* Moves the change record into @out (the caller frees out->buf with
 * ck_wbuf_free) and starts a new, empty one without a gap. */
void ck_state_take_changes(struct ck_state *s, struct ck_changes *out);

/* Frees what a taken record holds (both buffers) and empties it. */
void ck_changes_free(struct ck_changes *c);

/* Lookups. */
int ck_state_find_node(const struct ck_state *s, const char *id, size_t len); /* index or -1 */
int ck_state_find_node_raft(const struct ck_state *s, uint64_t raft_id);      /* index or -1 */

/* The owners of partition @p (primary first) and their count. */
static inline const uint16_t *ck_state_owners(const struct ck_state *s, uint32_t p, uint32_t *n)
{
    const uint16_t *row = s->table.owners + (size_t)p * s->table.width;
    uint32_t k = 0;
    while (k < s->table.width && row[k] != CK_NO_NODE) {
        k++;
    }
    *n = k;
    return row;
}

#endif /* CK_STATE_H */
