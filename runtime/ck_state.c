#include "ck_state.h"

#include <stdlib.h>
#include <string.h>

#include "ck_common.h"

/* ------------------------------------------------------------------------
 * Names
 * ------------------------------------------------------------------------ */

static const char *const status_names[] = {NULL, "active", "suspect", "down", "left", "stopped"};

const char *ck_node_status_name(int status)
{
    return status >= CK_NODE_ACTIVE && status <= CK_NODE_STATUS_MAX ? status_names[status] : NULL;
}

int ck_node_status_from_name(const char *name)
{
    for (int i = CK_NODE_ACTIVE; i <= CK_NODE_STATUS_MAX; i++) {
        if (strcmp(name, status_names[i]) == 0) {
            return i;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Encoding
 * ------------------------------------------------------------------------ */

static void w_sv(struct ck_wbuf *w, struct ck_str s)
{
    ck_w_str(w, s.p, s.len);
}

static void w_header(struct ck_wbuf *w, uint8_t type)
{
    ck_w_u8(w, CK_CMD_VERSION);
    ck_w_u8(w, type);
}

static void w_field(struct ck_wbuf *w, uint8_t tag, struct ck_str v)
{
    ck_w_u8(w, tag);
    ck_w_str(w, v.p, v.len);
}

/* A node's trailing fields (NODE_UPSERT, CKS3 node records): its set
 * attributes (ck_node_attrs.h). */
static void w_node_fields(struct ck_wbuf *w, const struct ck_cmd_node *c)
{
#define X(attr, tag, flags, env, json) \
    if (c->attr.len > 0) {             \
        w_field(w, tag, c->attr);      \
    }
    CK_NODE_ATTRS(X)
#undef X
}

static bool has_node_fields(const struct ck_cmd_node *c)
{
    uint32_t len = 0;
#define X(attr, tag, flags, env, json) len |= c->attr.len;
    CK_NODE_ATTRS(X)
#undef X
    return len > 0;
}

static void w_init_payload(struct ck_wbuf *w, const struct ck_cmd_init *c)
{
    w_sv(w, c->cluster_id);
    w_sv(w, c->name);
    ck_w_u32(w, c->partitions);
    ck_w_u32(w, c->replication);
    ck_w_u8(w, c->hash_algo);
    ck_w_u8(w, c->hash_tags);
}

static void w_node_payload(struct ck_wbuf *w, const struct ck_cmd_node *c)
{
    w_sv(w, c->id);
    w_sv(w, c->name);
    w_sv(w, c->http_addr);
    w_sv(w, c->raft_addr);
    w_sv(w, c->zone);
    ck_w_u64(w, c->raft_id);
    ck_w_u32(w, c->weight);
    ck_w_u8(w, c->status);
    ck_w_u64(w, c->time_ms);
    ck_w_u32(w, c->n_services);
    for (uint32_t i = 0; i < 2 * c->n_services; i++) {
        w_sv(w, c->services[i]);
    }
}

static void w_table_payload(struct ck_wbuf *w, const struct ck_cmd_table *c)
{
    ck_w_u32(w, c->partitions);
    ck_w_u32(w, c->width);
    ck_w_u32(w, c->n_ids);
    for (uint32_t i = 0; i < c->n_ids; i++) {
        w_sv(w, c->ids[i]);
    }
    ck_w_bytes(w, c->owners, (size_t)c->partitions * c->width * 2);
}

void ck_cmd_encode_init(struct ck_wbuf *w, const struct ck_cmd_init *c)
{
    w_header(w, CK_CMD_INIT);
    w_init_payload(w, c);
}

void ck_cmd_encode_node(struct ck_wbuf *w, const struct ck_cmd_node *c)
{
    /* Version 1 unless a field must travel: level-1 readers take only that. */
    ck_w_u8(w, has_node_fields(c) ? 2 : CK_CMD_VERSION);
    ck_w_u8(w, CK_CMD_NODE_UPSERT);
    w_node_payload(w, c);
    w_node_fields(w, c);
}

void ck_cmd_encode_status(struct ck_wbuf *w, const struct ck_cmd_status *c)
{
    w_header(w, CK_CMD_NODE_STATUS);
    w_sv(w, c->id);
    ck_w_u8(w, c->status);
    ck_w_u64(w, c->time_ms);
}

void ck_cmd_encode_remove(struct ck_wbuf *w, struct ck_str id)
{
    w_header(w, CK_CMD_NODE_REMOVE);
    w_sv(w, id);
}

void ck_cmd_encode_flags(struct ck_wbuf *w, uint32_t flags)
{
    w_header(w, CK_CMD_FLAGS);
    ck_w_u32(w, flags);
}

void ck_cmd_encode_kv_txn(struct ck_wbuf *w, const struct ck_kv_txn *t)
{
    w_header(w, CK_CMD_KV_TXN);
    ck_kv_encode_txn(w, t);
}

void ck_cmd_encode_features(struct ck_wbuf *w, uint32_t level)
{
    w_header(w, CK_CMD_FEATURES);
    ck_w_u32(w, level);
}

void ck_cmd_encode_table(struct ck_wbuf *w, const struct ck_cmd_table *c)
{
    w_header(w, CK_CMD_TABLE);
    w_table_payload(w, c);
}

/* ------------------------------------------------------------------------
 * Decoding: structure and ranges only.
 * ------------------------------------------------------------------------ */

/* A string the state keeps as a C string: a NUL byte would silently cut it
 * short (and make ids "a\0x" and "a\0y" one duplicate id in snapshots, which
 * then fail to restore), so it is corrupt. */
static struct ck_str r_text(struct ck_rbuf *r, uint32_t max)
{
    struct ck_str s = ck_r_str(r, max);
    if (r->err == 0 && memchr(s.p, 0, s.len) != NULL) {
        r->err = CK_ECORRUPT;
    }
    return s;
}

static int r_init_payload(struct ck_rbuf *r, struct ck_cmd_init *c)
{
    c->cluster_id = r_text(r, 64);
    c->name = r_text(r, CK_MAX_STR);
    c->partitions = ck_r_u32(r);
    c->replication = ck_r_u32(r);
    c->hash_algo = ck_r_u8(r);
    c->hash_tags = ck_r_u8(r);
    if (r->err != 0) {
        return r->err;
    }
    if (c->cluster_id.len == 0 || c->partitions == 0 || c->partitions > CK_MAX_PARTITIONS || c->replication == 0 ||
        c->replication > CK_MAX_REPLICATION || ck_hash_algo_name(c->hash_algo) == NULL || c->hash_tags > 1) {
        return CK_EINVAL;
    }
    return 0;
}

static int r_node_payload(struct ck_rbuf *r, struct ck_cmd_node *c)
{
    c->id = r_text(r, CK_MAX_STR);
    c->name = r_text(r, CK_MAX_STR);
    c->http_addr = r_text(r, CK_MAX_STR);
    c->raft_addr = r_text(r, CK_MAX_STR);
    c->zone = r_text(r, CK_MAX_STR);
    c->raft_id = ck_r_u64(r);
    c->weight = ck_r_u32(r);
    c->status = ck_r_u8(r);
    c->time_ms = ck_r_u64(r);
    c->n_services = ck_r_u32(r);
    if (r->err != 0) {
        return r->err;
    }
    if (c->id.len == 0 || ck_node_status_name(c->status) == NULL || c->n_services > CK_MAX_SERVICES) {
        return CK_EINVAL;
    }
    if (c->n_services > 0) {
        c->services = calloc(2 * (size_t)c->n_services, sizeof *c->services);
        if (c->services == NULL) {
            return CK_ENOMEM;
        }
        for (uint32_t i = 0; i < 2 * c->n_services; i++) {
            c->services[i] = r_text(r, CK_MAX_STR);
        }
    }
    return r->err;
}

/* Reads trailing fields up to @end (or, with @padded, up to a zero tag byte)
 * into @c when it is a node command (@c may be NULL: every field is
 * skipped). Unknown tags are skipped; a known one must be well formed. */
static int r_fields(struct ck_rbuf *r, size_t end, bool padded, struct ck_cmd_node *c)
{
    while (r->err == 0 && r->pos < end) {
        if (padded && r->p[r->pos] == 0) {
            break;
        }
        uint8_t tag = ck_r_u8(r);
        uint32_t len = ck_r_u32(r);
        if (r->err != 0 || len > end - r->pos) {
            return CK_ECORRUPT;
        }
        bool known = false;
#define X(attr, tag_, flags, env, json)              \
    if (c != NULL && tag == (tag_)) {                \
        r->pos -= 4; /* Read it as the str it is. */ \
        c->attr = r_text(r, CK_MAX_STR);             \
        known = true;                                \
    }
        CK_NODE_ATTRS(X)
#undef X
        if (!known) {
            ck_r_bytes(r, len);
        }
    }
    return r->err != 0 ? r->err : r->pos <= end ? 0 : CK_ECORRUPT;
}

static int r_table_payload(struct ck_rbuf *r, struct ck_cmd_table *c)
{
    c->partitions = ck_r_u32(r);
    c->width = ck_r_u32(r);
    c->n_ids = ck_r_u32(r);
    if (r->err != 0) {
        return r->err;
    }
    if (c->partitions == 0 || c->partitions > CK_MAX_PARTITIONS || c->width == 0 || c->width > CK_MAX_REPLICATION ||
        c->n_ids > CK_MAX_NODES) {
        return CK_EINVAL;
    }
    if (c->n_ids > 0) {
        c->ids = calloc(c->n_ids, sizeof *c->ids);
        if (c->ids == NULL) {
            return CK_ENOMEM;
        }
    }
    for (uint32_t i = 0; i < c->n_ids; i++) {
        c->ids[i] = r_text(r, CK_MAX_STR);
    }
    c->owners = ck_r_bytes(r, (size_t)c->partitions * c->width * 2);
    if (r->err != 0) {
        return r->err;
    }
    /* Rows: indexes within ids, no duplicates, empty slots only at the end. */
    for (uint32_t p = 0; p < c->partitions; p++) {
        const uint8_t *row = c->owners + (size_t)p * c->width * 2;
        bool ended = false;
        for (uint32_t k = 0; k < c->width; k++) {
            uint16_t v = (uint16_t)(row[2 * k] | (row[2 * k + 1] << 8));
            if (v == CK_NO_NODE) {
                ended = true;
                continue;
            }
            if (ended || v >= c->n_ids) {
                return CK_EINVAL;
            }
            for (uint32_t j = 0; j < k; j++) {
                if ((uint16_t)(row[2 * j] | (row[2 * j + 1] << 8)) == v) {
                    return CK_EINVAL;
                }
            }
        }
    }
    return 0;
}

int ck_cmd_decode(struct ck_cmd *c, const void *buf, size_t len)
{
    struct ck_rbuf r;
    int rv;

    memset(c, 0, sizeof *c);
    ck_rbuf_init(&r, buf, len);
    uint8_t version = ck_r_u8(&r);
    if (version < CK_CMD_VERSION || version > CK_CMD_VERSION_MAX) {
        return CK_ECORRUPT;
    }
    c->type = ck_r_u8(&r);
    switch (c->type) {
    case CK_CMD_INIT:
        rv = r_init_payload(&r, &c->init);
        break;
    case CK_CMD_NODE_UPSERT:
        rv = r_node_payload(&r, &c->node);
        break;
    case CK_CMD_NODE_STATUS:
        c->status.id = r_text(&r, CK_MAX_STR);
        c->status.status = ck_r_u8(&r);
        c->status.time_ms = ck_r_u64(&r);
        rv = r.err != 0 ? r.err : ck_node_status_name(c->status.status) ? 0 : CK_EINVAL;
        break;
    case CK_CMD_NODE_REMOVE:
        c->remove_id = r_text(&r, CK_MAX_STR);
        rv = r.err;
        break;
    case CK_CMD_TABLE:
        rv = r_table_payload(&r, &c->table);
        break;
    case CK_CMD_FLAGS:
        c->flags = ck_r_u32(&r);
        rv = r.err != 0 ? r.err : (c->flags & ~CK_FLAGS_KNOWN) ? CK_EINVAL : 0;
        break;
    case CK_CMD_KV_TXN:
        rv = ck_kv_decode_txn(&r, &c->kv);
        break;
    case CK_CMD_FEATURES:
        c->level = ck_r_u32(&r);
        rv = r.err != 0 ? r.err : (c->level < 2 || c->level > CK_FEATURE_LEVEL) ? CK_ECORRUPT : 0;
        break;
    default:
        rv = CK_ECORRUPT;
        break;
    }
    if (rv == 0 && version >= 2) {
        rv = r_fields(&r, r.len, true, c->type == CK_CMD_NODE_UPSERT ? &c->node : NULL);
    }
    /* Up to 7 trailing zero bytes are padding (raft needs entries to be a
     * multiple of 8 bytes long, see ck_node.h); anything else is corrupt. */
    if (rv == 0 && (r.len - r.pos >= 8 || r.err != 0)) {
        rv = CK_ECORRUPT;
    }
    for (size_t i = r.pos; rv == 0 && i < r.len; i++) {
        if (r.p[i] != 0) {
            rv = CK_ECORRUPT;
        }
    }
    return rv;
}

void ck_cmd_free(struct ck_cmd *c)
{
    if (c->type == CK_CMD_NODE_UPSERT) {
        free(c->node.services);
    } else if (c->type == CK_CMD_TABLE) {
        free(c->table.ids);
    } else if (c->type == CK_CMD_KV_TXN) {
        ck_kv_txn_free(&c->kv);
    }
    memset(c, 0, sizeof *c);
}

/* ------------------------------------------------------------------------
 * State
 * ------------------------------------------------------------------------ */

void ck_state_init(struct ck_state *s)
{
    memset(s, 0, sizeof *s);
    s->config.feature_level = 1;
    ck_kv_init(&s->kv);
}

static void node_free(struct ck_node_info *n)
{
    free(n->id);
    free(n->name);
    free(n->http_addr);
    free(n->raft_addr);
    free(n->zone);
    for (uint32_t i = 0; i < n->n_services; i++) {
        free(n->services[i].name);
        free(n->services[i].addr);
    }
    free(n->services);
#define X(attr, tag, flags, env, json) free(n->attr);
    CK_NODE_ATTRS(X)
#undef X
    memset(n, 0, sizeof *n);
}

static void table_free(struct ck_table *t)
{
    free(t->owners);
    free(t->epochs);
    memset(t, 0, sizeof *t);
}

void ck_state_free(struct ck_state *s)
{
    for (uint32_t i = 0; i < s->n_nodes; i++) {
        node_free(&s->nodes[i]);
    }
    free(s->nodes);
    free(s->config.cluster_id);
    free(s->config.name);
    table_free(&s->table);
    ck_kv_free(&s->kv);
    ck_wbuf_free(&s->changes.buf);
    ck_wbuf_free(&s->changes.nodes);
    memset(s, 0, sizeof *s);
}

void ck_state_take_changes(struct ck_state *s, struct ck_changes *out)
{
    *out = s->changes;
    memset(&s->changes, 0, sizeof s->changes);
}

void ck_changes_free(struct ck_changes *c)
{
    ck_wbuf_free(&c->buf);
    ck_wbuf_free(&c->nodes);
    memset(c, 0, sizeof *c);
}

static void changes_gap(struct ck_changes *c)
{
    ck_wbuf_free(&c->buf);
    ck_wbuf_free(&c->nodes);
    c->count = 0;
    c->node_count = 0;
    c->gap = true;
}

/* Records that node entry @id (now in the state) changed. */
static void changes_node(struct ck_state *s, struct ck_str id)
{
    struct ck_changes *c = &s->changes;
    int at = ck_state_find_node(s, id.p, id.len);
    if (c->gap || at < 0) {
        return;
    }
    ck_w_u32(&c->nodes, (uint32_t)at);
    c->node_count++;
    if (c->nodes.err != 0 || c->nodes.len > CK_CHANGES_MAX) {
        changes_gap(c);
    }
}

/* Records row @p as it is after a change: @epoch, and @row's node indexes
 * (into s->nodes; an index >= @shift is one below the node's position, for
 * apply_remove, which renumbers the row before it drops the node). */
static void changes_add(struct ck_state *s, uint32_t p, uint64_t epoch, const uint16_t *row, uint32_t width,
                        uint32_t shift)
{
    struct ck_changes *c = &s->changes;
    if (c->gap) {
        return;
    }
    uint32_t n = 0;
    while (n < width && row[n] != CK_NO_NODE) {
        n++;
    }
    ck_w_u32(&c->buf, p);
    ck_w_u64(&c->buf, epoch);
    ck_w_u32(&c->buf, n);
    for (uint32_t k = 0; k < n; k++) {
        uint32_t at = row[k] >= shift ? row[k] + 1u : row[k];
        ck_w_cstr(&c->buf, s->nodes[at].id);
    }
    c->count++;
    if (c->buf.err != 0 || c->buf.len > CK_CHANGES_MAX) {
        changes_gap(c);
    }
}

int ck_state_find_node(const struct ck_state *s, const char *id, size_t len)
{
    for (uint32_t i = 0; i < s->n_nodes; i++) {
        if (strlen(s->nodes[i].id) == len && memcmp(s->nodes[i].id, id, len) == 0) {
            return (int)i;
        }
    }
    return -1;
}

int ck_state_find_node_raft(const struct ck_state *s, uint64_t raft_id)
{
    for (uint32_t i = 0; i < s->n_nodes; i++) {
        if (s->nodes[i].raft_id == raft_id) {
            return (int)i;
        }
    }
    return -1;
}

static int table_alloc(struct ck_table *t, uint32_t partitions, uint32_t width)
{
    size_t slots = (size_t)partitions * width;
    t->owners = malloc(slots * sizeof *t->owners);
    t->epochs = calloc(partitions, sizeof *t->epochs);
    if (t->owners == NULL || t->epochs == NULL) {
        table_free(t);
        return CK_ENOMEM;
    }
    for (size_t i = 0; i < slots; i++) {
        t->owners[i] = CK_NO_NODE;
    }
    t->partitions = partitions;
    t->width = width;
    return 0;
}

static int apply_init(struct ck_state *s, const struct ck_cmd_init *c, uint64_t index)
{
    struct ck_config cfg = {0};
    struct ck_table t = {0};

    if (s->config.initialized) {
        return CK_EINVAL; /* The first INIT wins; a racing second one is void. */
    }
    if (ck_hasher_init(&cfg.hasher, ck_hash_algo_name(c->hash_algo), c->partitions, c->hash_tags) != 0) {
        return CK_EINVAL;
    }
    cfg.initialized = true;
    cfg.partitions = c->partitions;
    cfg.replication = c->replication;
    cfg.cluster_id = ck_str_dup(c->cluster_id);
    cfg.name = ck_str_dup(c->name);
    if (cfg.cluster_id == NULL || cfg.name == NULL || table_alloc(&t, c->partitions, c->replication) != 0) {
        free(cfg.cluster_id);
        free(cfg.name);
        return CK_ENOMEM;
    }
    table_free(&s->table);
    cfg.feature_level = s->config.feature_level; /* Not INIT's to set. */
    s->config = cfg;
    s->table = t;
    s->table_index = index;
    return 0;
}

/* Fill @n from a decoded node command; on ENOMEM @n is left freed. */
static int node_from_cmd(struct ck_node_info *n, const struct ck_cmd_node *c)
{
    memset(n, 0, sizeof *n);
    n->id = ck_str_dup(c->id);
    n->name = ck_str_dup(c->name);
    n->http_addr = ck_str_dup(c->http_addr);
    n->raft_addr = ck_str_dup(c->raft_addr);
    n->zone = ck_str_dup(c->zone);
    bool ok = true;
#define X(attr, tag, flags, env, json) \
    n->attr = ck_str_dup(c->attr);     \
    ok = ok && n->attr != NULL;
    CK_NODE_ATTRS(X)
#undef X
    n->raft_id = c->raft_id;
    n->weight = c->weight;
    n->status = c->status;
    n->status_since_ms = c->time_ms;
    n->n_services = c->n_services;
    n->services = c->n_services ? calloc(c->n_services, sizeof *n->services) : NULL;
    ok = ok && n->id && n->name && n->http_addr && n->raft_addr && n->zone && (c->n_services == 0 || n->services);
    for (uint32_t i = 0; ok && i < c->n_services; i++) {
        n->services[i].name = ck_str_dup(c->services[2 * i]);
        n->services[i].addr = ck_str_dup(c->services[2 * i + 1]);
        ok = n->services[i].name && n->services[i].addr;
    }
    if (!ok) {
        node_free(n);
        return CK_ENOMEM;
    }
    return 0;
}

static int apply_node(struct ck_state *s, const struct ck_cmd_node *c, uint64_t index)
{
    struct ck_node_info n;
    int at = ck_state_find_node(s, c->id.p, c->id.len);
    int other = c->raft_id ? ck_state_find_node_raft(s, c->raft_id) : -1;

    if (other >= 0 && other != at) {
        return CK_EINVAL; /* Two ids may not share a raft id. */
    }
    if (at < 0 && s->n_nodes >= CK_MAX_NODES) {
        return CK_ETOOBIG;
    }
    int rv = node_from_cmd(&n, c);
    if (rv != 0) {
        return rv;
    }
    if (at >= 0) {
        struct ck_node_info *old = &s->nodes[at];
        n.joined_index = old->joined_index;
        if (old->status == n.status) {
            n.status_since_ms = old->status_since_ms;
        }
        node_free(old);
        *old = n;
        return 0;
    }
    struct ck_node_info *nodes = realloc(s->nodes, (s->n_nodes + 1) * sizeof *nodes);
    if (nodes == NULL) {
        node_free(&n);
        return CK_ENOMEM;
    }
    n.joined_index = index;
    nodes[s->n_nodes++] = n;
    s->nodes = nodes;
    return 0;
}

/* A node that no longer serves (down, stopped on purpose, left) ends its
 * sessions (ck_kv.h): locks and elections it held go to the next in line.
 * Suspect is not enough. */
static bool status_ends_sessions(uint8_t status)
{
    return status == CK_NODE_DOWN || status == CK_NODE_STOPPED || status == CK_NODE_LEFT;
}

static int apply_status(struct ck_state *s, const struct ck_cmd_status *c, uint64_t index)
{
    int at = ck_state_find_node(s, c->id.p, c->id.len);
    if (at < 0) {
        return CK_ENOTFOUND;
    }
    if (status_ends_sessions(c->status)) {
        /* First: ENOMEM there must leave the state untouched. */
        int rv = ck_kv_drop_owner(&s->kv, c->id.p, c->id.len, index);
        if (rv != 0) {
            return rv;
        }
    }
    if (s->nodes[at].status != c->status) {
        s->nodes[at].status = c->status;
        s->nodes[at].status_since_ms = c->time_ms;
    }
    return 0;
}

static int apply_remove(struct ck_state *s, struct ck_str id, uint64_t index)
{
    int at = ck_state_find_node(s, id.p, id.len);
    if (at < 0) {
        return CK_ENOTFOUND;
    }
    int rv = ck_kv_drop_owner(&s->kv, id.p, id.len, index);
    if (rv != 0) {
        return rv;
    }
    /* Drop the node from every row (keeping the others' order) and renumber
     * the nodes after it; a row that loses an owner gets a new epoch. */
    struct ck_table *t = &s->table;
    bool changed = false;
    for (uint32_t p = 0; p < t->partitions; p++) {
        uint16_t *row = t->owners + (size_t)p * t->width;
        uint32_t out = 0;
        bool hit = false;
        for (uint32_t k = 0; k < t->width; k++) {
            uint16_t v = row[k];
            if (v == (uint16_t)at) {
                hit = true;
                continue;
            }
            row[out++] = (v != CK_NO_NODE && v > at) ? (uint16_t)(v - 1) : v;
        }
        while (out < t->width) {
            row[out++] = CK_NO_NODE;
        }
        if (hit) {
            t->epochs[p]++;
            changed = true;
            changes_add(s, p, t->epochs[p], row, t->width, (uint32_t)at);
        }
    }
    if (changed) {
        s->table_index = index;
    }
    node_free(&s->nodes[at]);
    memmove(&s->nodes[at], &s->nodes[at + 1], (s->n_nodes - (uint32_t)at - 1) * sizeof *s->nodes);
    s->n_nodes--;
    return 0;
}

static uint16_t row_get(const uint8_t *row, uint32_t k)
{
    return (uint16_t)(row[2 * k] | (row[2 * k + 1] << 8));
}

static bool row_contains(const uint16_t *row, uint32_t width, uint16_t v)
{
    for (uint32_t k = 0; k < width && row[k] != CK_NO_NODE; k++) {
        if (row[k] == v) {
            return true;
        }
    }
    return false;
}

/* Same primary and same owner set (order of replicas aside). */
static bool row_same(const uint16_t *a, uint32_t wa, const uint16_t *b, uint32_t wb)
{
    uint32_t na = 0, nb = 0;
    while (na < wa && a[na] != CK_NO_NODE) {
        na++;
    }
    while (nb < wb && b[nb] != CK_NO_NODE) {
        nb++;
    }
    if (na != nb || (na > 0 && a[0] != b[0])) {
        return false;
    }
    for (uint32_t k = 0; k < na; k++) {
        if (!row_contains(b, wb, a[k])) {
            return false;
        }
    }
    return true;
}

static int apply_table(struct ck_state *s, const struct ck_cmd_table *c, uint64_t index)
{
    struct ck_table t = {0};
    uint16_t *map;

    if (!s->config.initialized || c->partitions != s->config.partitions) {
        return CK_EINVAL;
    }
    map = malloc(((size_t)c->n_ids + 1) * sizeof *map);
    bool *seen = calloc((size_t)s->n_nodes + 1, sizeof *seen);
    if (map == NULL || seen == NULL) {
        free(map);
        free(seen);
        return CK_ENOMEM;
    }
    for (uint32_t i = 0; i < c->n_ids; i++) {
        int at = ck_state_find_node(s, c->ids[i].p, c->ids[i].len);
        /* An id listed twice would let a row hold one node twice. */
        int rv = at < 0 ? CK_ENOTFOUND : seen[at] ? CK_EINVAL : 0;
        if (rv != 0) {
            free(map);
            free(seen);
            return rv;
        }
        seen[at] = true;
        map[i] = (uint16_t)at;
    }
    free(seen);
    if (table_alloc(&t, c->partitions, c->width) != 0) {
        free(map);
        return CK_ENOMEM;
    }
    bool changed = c->width != s->table.width;
    for (uint32_t p = 0; p < c->partitions; p++) {
        const uint8_t *in = c->owners + (size_t)p * c->width * 2;
        uint16_t *row = t.owners + (size_t)p * c->width;
        for (uint32_t k = 0; k < c->width; k++) {
            uint16_t v = row_get(in, k);
            row[k] = v == CK_NO_NODE ? CK_NO_NODE : map[v];
        }
        const uint16_t *old = s->table.owners + (size_t)p * s->table.width;
        t.epochs[p] = s->table.epochs[p];
        if (!row_same(row, t.width, old, s->table.width)) {
            t.epochs[p]++;
            changed = true;
            changes_add(s, p, t.epochs[p], row, t.width, UINT32_MAX);
        } else if (t.width != s->table.width || memcmp(row, old, t.width * sizeof *row) != 0) {
            changed = true; /* Replica order only: no new epoch. */
            changes_add(s, p, t.epochs[p], row, t.width, UINT32_MAX);
        }
    }
    free(map);
    table_free(&s->table);
    s->table = t;
    if (changed) {
        s->table_index = index;
    }
    return 0;
}

int ck_state_apply(struct ck_state *s, const void *buf, size_t len, uint64_t index)
{
    struct ck_cmd c;
    int rv = ck_cmd_decode(&c, buf, len);
    if (rv != 0 && rv != CK_ENOMEM) {
        /* Whatever the decoder disliked (a version, a type, a status or flag
         * bit it does not know, bytes left over), this build cannot apply
         * the command: the FSM stops the node rather than skip it. */
        rv = CK_ECORRUPT;
    }
    if (rv == 0) {
        switch (c.type) {
        case CK_CMD_INIT:
            rv = apply_init(s, &c.init, index);
            break;
        case CK_CMD_NODE_UPSERT:
            rv = apply_node(s, &c.node, index);
            break;
        case CK_CMD_NODE_STATUS:
            rv = apply_status(s, &c.status, index);
            break;
        case CK_CMD_NODE_REMOVE:
            rv = apply_remove(s, c.remove_id, index);
            break;
        case CK_CMD_TABLE:
            rv = apply_table(s, &c.table, index);
            break;
        case CK_CMD_FLAGS:
            s->config.flags = c.flags;
            break;
        case CK_CMD_FEATURES:
            /* Never lowered: a lower level is refused, the same one is a no-op. */
            if (c.level < s->config.feature_level) {
                rv = CK_EINVAL;
            } else {
                s->config.feature_level = c.level;
            }
            break;
        case CK_CMD_KV_TXN:
            rv = ck_kv_apply(&s->kv, &c.kv, index);
            break;
        }
    }
    bool kv = c.type == CK_CMD_KV_TXN;
    if (rv == 0) {
        switch (c.type) {
        case CK_CMD_NODE_UPSERT:
            changes_node(s, c.node.id);
            break;
        case CK_CMD_NODE_STATUS:
            changes_node(s, c.status.id);
            break;
        case CK_CMD_INIT:
        case CK_CMD_NODE_REMOVE:
        case CK_CMD_FLAGS:
        case CK_CMD_FEATURES:
            s->changes.whole = true;
            break;
        default:
            break;
        }
    }
    ck_cmd_free(&c);
    if (rv == 0 && !kv) {
        s->index = index;
    }
    return rv;
}

/* ------------------------------------------------------------------------
 * Snapshots
 * ------------------------------------------------------------------------ */

static struct ck_str sv(const char *c)
{
    struct ck_str s = {c ? c : "", c ? (uint32_t)strlen(c) : 0};
    return s;
}

/* True while no KV_TXN ever applied: CKS1 (which has no store) loses nothing. */
static bool kv_unused(const struct ck_kv *kv)
{
    return kv->index == 0 && kv->n == 0 && kv->n_sessions == 0;
}

/* A CKS3 node record's fields: u32 m | m bytes. */
static int r_node_fields(struct ck_rbuf *r, struct ck_node_info *n)
{
    struct ck_cmd_node c = {0};
    uint32_t m = ck_r_u32(r);
    if (r->err != 0 || m > r->len - r->pos) {
        return CK_ECORRUPT;
    }
    int rv = r_fields(r, r->pos + m, false, &c);
#define X(attr, tag, flags, env, json) \
    if (rv == 0 && c.attr.len > 0) {   \
        char *v = ck_str_dup(c.attr);  \
        if (v == NULL) {               \
            return CK_ENOMEM;          \
        }                              \
        free(n->attr);                 \
        n->attr = v;                   \
    }
    CK_NODE_ATTRS(X)
#undef X
    return rv;
}

void ck_state_snapshot(const struct ck_state *s, struct ck_wbuf *w)
{
    const struct ck_config *cfg = &s->config;
    /* See the format notes in ck_state.h: a level-1 state is written so that
     * v0.1.0 can install it (a rolling upgrade sends new leaders' snapshots
     * to old followers). */
    char version = cfg->feature_level >= 2 ? '3' : kv_unused(&s->kv) ? '1' : '2';
    char magic[4] = {'C', 'K', 'S', version};

    ck_w_bytes(w, magic, 4);
    ck_w_u64(w, s->index);
    ck_w_u64(w, s->table_index);
    ck_w_u8(w, cfg->initialized);
    if (cfg->initialized) {
        struct ck_cmd_init init = {sv(cfg->cluster_id),       sv(cfg->name),   cfg->partitions, cfg->replication,
                                   (uint8_t)cfg->hasher.algo, cfg->hasher.tags};
        w_init_payload(w, &init);
    }
    ck_w_u32(w, s->n_nodes);
    for (uint32_t i = 0; i < s->n_nodes; i++) {
        const struct ck_node_info *n = &s->nodes[i];
        ck_w_cstr(w, n->id);
        ck_w_cstr(w, n->name);
        ck_w_cstr(w, n->http_addr);
        ck_w_cstr(w, n->raft_addr);
        ck_w_cstr(w, n->zone);
        ck_w_u64(w, n->raft_id);
        ck_w_u32(w, n->weight);
        ck_w_u8(w, n->status);
        ck_w_u64(w, n->status_since_ms);
        ck_w_u32(w, n->n_services);
        for (uint32_t k = 0; k < n->n_services; k++) {
            ck_w_cstr(w, n->services[k].name);
            ck_w_cstr(w, n->services[k].addr);
        }
        ck_w_u64(w, n->joined_index);
        if (version == '3') {
            struct ck_wbuf f;
            ck_wbuf_init(&f);
            struct ck_cmd_node c = {0};
#define X(attr, tag, flags, env, json) c.attr = sv(n->attr);
            CK_NODE_ATTRS(X)
#undef X
            w_node_fields(&f, &c);
            w->err = w->err != 0 ? w->err : f.err;
            ck_w_u32(w, (uint32_t)f.len);
            ck_w_bytes(w, f.p, f.len);
            ck_wbuf_free(&f);
        }
    }
    if (cfg->initialized) {
        /* Table rows already hold node indexes, which are the ids' positions. */
        ck_w_u32(w, s->table.partitions);
        ck_w_u32(w, s->table.width);
        for (size_t i = 0; i < (size_t)s->table.partitions * s->table.width; i++) {
            ck_w_u16(w, s->table.owners[i]);
        }
        for (uint32_t p = 0; p < s->table.partitions; p++) {
            ck_w_u64(w, s->table.epochs[p]);
        }
    }
    ck_w_u32(w, cfg->flags);
    if (version == '3') {
        ck_w_u32(w, cfg->feature_level);
        ck_w_u32(w, 0); /* No state fields yet. */
    }
    if (version != '1') {
        ck_kv_snapshot(&s->kv, w);
    }
}

int ck_state_restore(struct ck_state *s, const void *buf, size_t len)
{
    struct ck_state n;
    struct ck_rbuf r;
    int rv = CK_ECORRUPT;

    ck_state_init(&n);
    /* The history limits are this node's setting, not the snapshot's. */
    ck_kv_set_history(&n.kv, s->kv.history, s->kv.history_bytes);
    ck_rbuf_init(&r, buf, len);
    const uint8_t *magic = ck_r_bytes(&r, 4);
    if (magic == NULL || memcmp(magic, "CKS", 3) != 0 || magic[3] < '1' || magic[3] > '3') {
        return CK_ECORRUPT;
    }
    char version = (char)magic[3];
    bool has_kv = version != '1';
    n.index = ck_r_u64(&r);
    n.table_index = ck_r_u64(&r);
    bool initialized = ck_r_u8(&r) != 0;
    struct ck_cmd_init init = {0};
    if (initialized) {
        if ((rv = r_init_payload(&r, &init)) != 0 || (rv = apply_init(&n, &init, n.table_index)) != 0) {
            goto err;
        }
    }
    uint32_t n_nodes = ck_r_u32(&r);
    if (r.err != 0 || n_nodes > CK_MAX_NODES) {
        rv = CK_ECORRUPT;
        goto err;
    }
    for (uint32_t i = 0; i < n_nodes; i++) {
        struct ck_cmd_node c = {0};
        if ((rv = r_node_payload(&r, &c)) == 0) {
            rv = apply_node(&n, &c, 0);
        }
        free(c.services);
        if (rv == 0 && n.n_nodes != i + 1) {
            rv = CK_ECORRUPT; /* A duplicate id. */
        }
        if (rv != 0) {
            goto err;
        }
        n.nodes[n.n_nodes - 1].joined_index = ck_r_u64(&r);
        if (version == '3' && (rv = r_node_fields(&r, &n.nodes[n.n_nodes - 1])) != 0) {
            goto err;
        }
    }
    if (initialized) {
        uint32_t partitions = ck_r_u32(&r);
        uint32_t width = ck_r_u32(&r);
        if (r.err != 0 || partitions != n.config.partitions || width == 0 || width > CK_MAX_REPLICATION) {
            rv = CK_ECORRUPT;
            goto err;
        }
        table_free(&n.table);
        if ((rv = table_alloc(&n.table, partitions, width)) != 0) {
            goto err;
        }
        for (size_t i = 0; i < (size_t)partitions * width; i++) {
            uint16_t v = ck_r_u16(&r);
            if (v != CK_NO_NODE && v >= n.n_nodes) {
                rv = CK_ECORRUPT;
                goto err;
            }
            n.table.owners[i] = v;
        }
        for (uint32_t p = 0; p < partitions; p++) {
            n.table.epochs[p] = ck_r_u64(&r);
        }
    }
    n.config.flags = ck_r_u32(&r);
    if ((n.config.flags & ~CK_FLAGS_KNOWN) != 0) {
        rv = CK_ECORRUPT;
        goto err;
    }
    if (version == '3') {
        n.config.feature_level = ck_r_u32(&r);
        uint32_t m = ck_r_u32(&r);
        if (r.err != 0 || n.config.feature_level < 2 || n.config.feature_level > CK_FEATURE_LEVEL ||
            m > r.len - r.pos || (rv = r_fields(&r, r.pos + m, false, NULL)) != 0) {
            rv = CK_ECORRUPT;
            goto err;
        }
    }
    if (has_kv && (rv = ck_kv_restore(&n.kv, &r)) != 0) {
        goto err;
    }
    if (!ck_r_done(&r)) {
        rv = CK_ECORRUPT;
        goto err;
    }
    /* The record cannot say what a restore changed: the owner compares. */
    ck_state_free(s);
    *s = n;
    changes_gap(&s->changes);
    return 0;

err:
    ck_state_free(&n);
    return rv != 0 ? rv : CK_ECORRUPT;
}
