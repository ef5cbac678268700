/*
 * The replicated key-value store: small shared state for applications
 * (configuration, feature flags, the Go library's "custom data"), applied by
 * the FSM beside the cluster state. Pure C (no libuv, no Lua) and
 * deterministic: the same transactions in the same order give the same store
 * on every node.
 *
 * Keys are 1..CK_KV_MAX_KEY arbitrary bytes, kept sorted bytewise (a shorter
 * key first on a common prefix), so the keys under a prefix are one
 * contiguous run. Every entry carries the raft index that created it, the one
 * that last modified it, and its version (puts since creation, from 1).
 *
 * Every write is a transaction: compares, which must all hold (else
 * CK_ECONFLICT and nothing changes), then operations (put, delete, delete
 * every key under a prefix), applied all or none. A plain put is a
 * transaction without compares; compare-and-swap compares the modify index
 * ("must not exist" is create index == 0). The transaction carries the
 * proposer's limits (largest value, total bytes), so every replica applies the
 * same check: CK_ETOOBIG, and nothing changes, when a value or the resulting
 * store would exceed them. The total counts each entry's key and value plus
 * CK_KV_ENTRY_OVERHEAD, so that many tiny entries are bounded too.
 *
 * Sessions: a session (id = the raft index that created it) is either a
 * node's own (it ends when the FSM marks that node down, stopped or left:
 * ck_kv_drop_owner) or one with a TTL, renewed by keep-alives (committed
 * CK_KV_SESSION_RENEW operations) and ended by the leader, which commits
 * CK_KV_SESSION_DESTROY when no renewal came within the TTL (the timing is
 * the leader's, in Lua; the store only records the raft index of the last
 * renewal). A put may attach its key to a session; the key is deleted with
 * the session. Session operations stand alone in their transaction (one
 * create; or renewals; or destroys), so that undoing a failed transaction
 * only ever concerns keys.
 *
 * Transaction encoding (the payload of a CK_CMD_KV_TXN command; integers
 * little-endian, str = u32 length + bytes, any bytes):
 *
 *   u32 max_value | u64 max_bytes
 *   | u32 n_cmp | n_cmp * (str key, u8 target, u8 op, u64 number, or str
 *                          value when target is CK_KV_VALUE)
 *   | u32 n_ops | n_ops * (u8 type, str key, then for PUT: str value,
 *                          u64 session (0 = none); for SESSION_*: u64 number
 *                          (the TTL in ms for CREATE, whose key is the owner
 *                          node id or empty; the session id otherwise))
 *
 * Snapshot section: u64 index | u32 n | n * (str key, str value,
 * u64 create_index, u64 mod_index, u64 version, u64 session) | u32 n_sessions
 * | n * (u64 id, u64 ttl_ms, u64 renewed, str owner).
 *
 * History: every change is also kept as an event in a bounded ring (count
 * and bytes), for watches. The ring is this node's own: it is not in the
 * snapshot and starts empty after a restore. ck_kv_events() answers
 * CK_ECOMPACTED when a watcher asks for events the ring no longer has, so
 * that it re-reads the keys instead of missing a change.
 */
#ifndef CK_KV_H
#define CK_KV_H

#include <stdbool.h>
#include <stdint.h>

#include "ck_buf.h"

#define CK_KV_MAX_KEY 1024u
#define CK_KV_MAX_VALUE (16u << 20) /* Hard cap on the per-value limit. */
#define CK_KV_DEFAULT_MAX_VALUE (1u << 20)
#define CK_KV_DEFAULT_MAX_BYTES (64ull << 20)
#define CK_KV_MAX_TXN_ITEMS 128u /* Compares, and operations, per transaction. */
#define CK_KV_ENTRY_OVERHEAD 64u
#define CK_KV_DEFAULT_HISTORY 10000u              /* Events kept for watches... */
#define CK_KV_DEFAULT_HISTORY_BYTES (16ull << 20) /* ...and at most this many bytes of them. */

enum ck_kv_target {
    CK_KV_MOD = 1,     /* The modify index (0 when the key does not exist). */
    CK_KV_CREATE = 2,  /* The create index (0 when the key does not exist). */
    CK_KV_VERSION = 3, /* Puts since creation (0 when the key does not exist). */
    CK_KV_VALUE = 4,   /* The value, bytewise; never holds for a missing key. */
};

enum ck_kv_cmp_op {
    CK_KV_EQ = 1,
    CK_KV_NE = 2,
    CK_KV_LT = 3,
    CK_KV_GT = 4,
};

enum ck_kv_op_type {
    CK_KV_PUT = 1,
    CK_KV_DELETE = 2,
    CK_KV_DELETE_PREFIX = 3,
    CK_KV_SESSION_CREATE = 4,
    CK_KV_SESSION_RENEW = 5,
    CK_KV_SESSION_DESTROY = 6,
};

struct ck_kv_session {
    uint64_t id;      /* Raft index of the transaction that created it. */
    uint64_t ttl_ms;  /* 0: a node's own session, without a TTL. */
    uint64_t renewed; /* Raft index of the last renewal (the creation at first). */
    char *owner;      /* The node whose session it is ("" for a TTL session). */
    uint32_t owner_len;
};

struct ck_kv_entry {
    char *key;
    char *value;
    uint32_t key_len;
    uint32_t value_len;
    uint64_t create_index;
    uint64_t mod_index;
    uint64_t version;
    uint64_t session; /* The session the key goes with (0: none). */
};

/* A change, as watches see it. For a delete, value is empty and the
 * indexes and version are the deleted entry's. */
struct ck_kv_event {
    uint64_t index; /* Raft index of the transaction. */
    uint8_t type;   /* CK_KV_PUT or CK_KV_DELETE. */
    struct ck_kv_entry e;
};

struct ck_kv {
    struct ck_kv_entry **entries; /* Sorted by key. */
    uint32_t n;
    uint32_t cap;
    uint64_t bytes;                 /* Keys + values + CK_KV_ENTRY_OVERHEAD per entry. */
    uint64_t index;                 /* Raft index of the last change (0: never changed). */
    struct ck_kv_session *sessions; /* Sorted by id. */
    uint32_t n_sessions;
    uint32_t cap_sessions;
    /* The event ring: ev[(ev_head + i) % ev_cap] for i < ev_n, oldest first. */
    struct ck_kv_event *ev;
    uint32_t ev_cap;
    uint32_t ev_head;
    uint32_t ev_n;
    uint64_t ev_bytes;
    uint32_t history; /* Limits of the ring. */
    uint64_t history_bytes;
    uint64_t compacted; /* Events with index <= compacted may be gone. */
};

/* A decoded transaction: views into the encoded buffer, which must outlive it. */
struct ck_kv_cmp {
    struct ck_str key;
    uint8_t target;
    uint8_t op;
    uint64_t number;
    struct ck_str value;
};

struct ck_kv_op {
    uint8_t type;
    struct ck_str key; /* The owner for SESSION_CREATE. */
    struct ck_str value;
    uint64_t number; /* PUT: the session (0: none); SESSION_CREATE: the TTL
                      * in ms; RENEW, DESTROY: the session id. */
};

struct ck_kv_txn {
    uint32_t max_value;
    uint64_t max_bytes;
    uint32_t n_cmp;
    uint32_t n_ops;
    struct ck_kv_cmp *cmp;
    struct ck_kv_op *ops;
};

void ck_kv_init(struct ck_kv *kv);
void ck_kv_free(struct ck_kv *kv);
/* Limits of the event ring (0 keeps the default). Trims at once. */
void ck_kv_set_history(struct ck_kv *kv, uint32_t max_events, uint64_t max_bytes);

/* The entry for @key, or NULL. Valid until the next apply or restore. */
const struct ck_kv_entry *ck_kv_get(const struct ck_kv *kv, const void *key, size_t len);
/* The keys starting with @prefix are entries[*first .. *first + return). */
uint32_t ck_kv_prefix(const struct ck_kv *kv, const void *prefix, size_t len, uint32_t *first);

/* Append @t's encoding (the payload above) to @w. */
void ck_kv_encode_txn(struct ck_wbuf *w, const struct ck_kv_txn *t);
/* Decode a transaction from @r (checks structure and limits, not the store).
 * Returns 0 or CK_ECORRUPT / CK_ENOMEM; release with ck_kv_txn_free(). */
int ck_kv_decode_txn(struct ck_rbuf *r, struct ck_kv_txn *t);
void ck_kv_txn_free(struct ck_kv_txn *t);

/* Apply @t committed at raft @index: 0 when every compare held and the
 * operations were applied (also when they changed nothing), CK_ECONFLICT when
 * a compare failed, CK_ETOOBIG over a limit, CK_ENOTFOUND for a put or a
 * renewal naming a session that does not exist, CK_ENOMEM; on any error the
 * store is unchanged. */
int ck_kv_apply(struct ck_kv *kv, const struct ck_kv_txn *t, uint64_t index);

/* The session @id, or NULL. */
const struct ck_kv_session *ck_kv_session(const struct ck_kv *kv, uint64_t id);

/* Ends every session owned by node @owner and deletes their keys, at raft
 * @index (called by the state when it marks the node down, stopped or
 * left). Returns 0 or CK_ENOMEM (then nothing changed). */
int ck_kv_drop_owner(struct ck_kv *kv, const char *owner, size_t len, uint64_t index);

void ck_kv_snapshot(const struct ck_kv *kv, struct ck_wbuf *w);
/* Replace @kv's entries with the snapshot section read from @r; on error
 * (CK_ECORRUPT, CK_ENOMEM) @kv is unchanged. Empties the event ring. */
int ck_kv_restore(struct ck_kv *kv, struct ck_rbuf *r);

/* The events after raft index @since, oldest first, in *out (pointers valid
 * until the next apply or restore; room for kv->ev_n of them), *n set: @max
 * of them (at least 1), and then the rest of the last one's transaction, so
 * that a watcher may resume after its index. Returns 0, or CK_ECOMPACTED
 * when some event after @since is no longer kept. */
int ck_kv_events(const struct ck_kv *kv, uint64_t since, uint32_t max, const struct ck_kv_event **out, uint32_t *n);

#endif /* CK_KV_H */
