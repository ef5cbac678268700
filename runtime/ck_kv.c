#include "ck_kv.h"

#include <stdlib.h>
#include <string.h>

#include "ck_common.h"

/* ---- Entries ---- */

static int key_cmp(const char *a, uint32_t an, const char *b, uint32_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c != 0) {
        return c;
    }
    return an < bn ? -1 : an > bn;
}

/* Binary search: true when found at *pos, else *pos is where it would go. */
static bool kv_find(const struct ck_kv *kv, const char *key, uint32_t len, uint32_t *pos)
{
    uint32_t lo = 0, hi = kv->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const struct ck_kv_entry *e = kv->entries[mid];
        int c = key_cmp(e->key, e->key_len, key, len);
        if (c == 0) {
            *pos = mid;
            return true;
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    *pos = lo;
    return false;
}

static uint64_t entry_bytes(const struct ck_kv_entry *e)
{
    return (uint64_t)e->key_len + e->value_len + CK_KV_ENTRY_OVERHEAD;
}

static void entry_free(struct ck_kv_entry *e)
{
    if (e != NULL) {
        free(e->key);
        free(e->value);
        free(e);
    }
}

/* A malloc'd copy of @n bytes (never NULL for n == 0 unless out of memory). */
static char *dup_bytes(const void *p, uint32_t n)
{
    char *c = malloc(n > 0 ? n : 1);
    if (c != NULL && n > 0) {
        memcpy(c, p, n);
    }
    return c;
}

static struct ck_kv_entry *entry_new(struct ck_str key, struct ck_str value)
{
    struct ck_kv_entry *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        return NULL;
    }
    e->key = dup_bytes(key.p, key.len);
    e->value = dup_bytes(value.p, value.len);
    if (e->key == NULL || e->value == NULL) {
        entry_free(e);
        return NULL;
    }
    e->key_len = key.len;
    e->value_len = value.len;
    return e;
}

static int kv_reserve(struct ck_kv *kv, uint32_t n)
{
    if (n <= kv->cap) {
        return 0;
    }
    uint32_t cap = kv->cap ? kv->cap : 16;
    while (cap < n) {
        cap *= 2;
    }
    void *p = realloc(kv->entries, (size_t)cap * sizeof(*kv->entries));
    if (p == NULL) {
        return CK_ENOMEM;
    }
    kv->entries = p;
    kv->cap = cap;
    return 0;
}

/* Insert at @pos; room must have been reserved. */
static void kv_insert_at(struct ck_kv *kv, uint32_t pos, struct ck_kv_entry *e)
{
    memmove(kv->entries + pos + 1, kv->entries + pos, (size_t)(kv->n - pos) * sizeof(*kv->entries));
    kv->entries[pos] = e;
    kv->n++;
    kv->bytes += entry_bytes(e);
}

static struct ck_kv_entry *kv_remove_at(struct ck_kv *kv, uint32_t pos)
{
    struct ck_kv_entry *e = kv->entries[pos];
    memmove(kv->entries + pos, kv->entries + pos + 1, (size_t)(kv->n - pos - 1) * sizeof(*kv->entries));
    kv->n--;
    kv->bytes -= entry_bytes(e);
    return e;
}

/* ---- Events ---- */

static uint64_t event_bytes(const struct ck_kv_event *ev)
{
    return (uint64_t)ev->e.key_len + ev->e.value_len + sizeof(*ev);
}

static void ring_drop_oldest(struct ck_kv *kv)
{
    struct ck_kv_event *ev = &kv->ev[kv->ev_head];
    kv->ev_bytes -= event_bytes(ev);
    /* Everything up to this index may now be incomplete for a watcher. */
    kv->compacted = ev->index;
    free(ev->e.key);
    free(ev->e.value);
    memset(ev, 0, sizeof(*ev));
    kv->ev_head = (kv->ev_head + 1) % kv->ev_cap;
    kv->ev_n--;
}

static void ring_trim(struct ck_kv *kv)
{
    while (kv->ev_n > 0 && (kv->ev_n > kv->history || kv->ev_bytes > kv->history_bytes)) {
        ring_drop_oldest(kv);
    }
}

static void ring_clear(struct ck_kv *kv)
{
    while (kv->ev_n > 0) {
        ring_drop_oldest(kv);
    }
}

/* Append @ev (taking its key and value), dropping the oldest events when
 * full. Out of memory only loses history, which watchers then see as
 * CK_ECOMPACTED: the store itself never depends on the ring. */
static void ring_push(struct ck_kv *kv, struct ck_kv_event *ev)
{
    if (kv->ev_cap < kv->history && kv->ev_n == kv->ev_cap) {
        uint32_t cap = kv->ev_cap ? kv->ev_cap * 2 : 64;
        if (cap > kv->history) {
            cap = kv->history;
        }
        struct ck_kv_event *p = calloc(cap, sizeof(*p));
        if (p != NULL) {
            for (uint32_t i = 0; i < kv->ev_n; i++) {
                p[i] = kv->ev[(kv->ev_head + i) % kv->ev_cap];
            }
            free(kv->ev);
            kv->ev = p;
            kv->ev_cap = cap;
            kv->ev_head = 0;
        }
    }
    if (kv->ev_cap == 0) {
        kv->compacted = ev->index;
        free(ev->e.key);
        free(ev->e.value);
        return;
    }
    if (kv->ev_n == kv->ev_cap) {
        ring_drop_oldest(kv);
    }
    kv->ev[(kv->ev_head + kv->ev_n) % kv->ev_cap] = *ev;
    kv->ev_n++;
    kv->ev_bytes += event_bytes(ev);
    ring_trim(kv);
}

/* ---- Lifecycle ---- */

void ck_kv_init(struct ck_kv *kv)
{
    memset(kv, 0, sizeof(*kv));
    kv->history = CK_KV_DEFAULT_HISTORY;
    kv->history_bytes = CK_KV_DEFAULT_HISTORY_BYTES;
}

static void entries_free(struct ck_kv_entry **entries, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        entry_free(entries[i]);
    }
    free(entries);
}

static void sessions_free(struct ck_kv_session *sessions, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        free(sessions[i].owner);
    }
    free(sessions);
}

void ck_kv_free(struct ck_kv *kv)
{
    entries_free(kv->entries, kv->n);
    sessions_free(kv->sessions, kv->n_sessions);
    ring_clear(kv);
    free(kv->ev);
    memset(kv, 0, sizeof(*kv));
}

void ck_kv_set_history(struct ck_kv *kv, uint32_t max_events, uint64_t max_bytes)
{
    kv->history = max_events ? max_events : CK_KV_DEFAULT_HISTORY;
    kv->history_bytes = max_bytes ? max_bytes : CK_KV_DEFAULT_HISTORY_BYTES;
    ring_trim(kv);
}

/* ---- Lookups ---- */

const struct ck_kv_entry *ck_kv_get(const struct ck_kv *kv, const void *key, size_t len)
{
    uint32_t pos;
    if (len == 0 || len > CK_KV_MAX_KEY || !kv_find(kv, key, (uint32_t)len, &pos)) {
        return NULL;
    }
    return kv->entries[pos];
}

static bool has_prefix(const struct ck_kv_entry *e, const char *prefix, uint32_t len)
{
    return e->key_len >= len && memcmp(e->key, prefix, len) == 0;
}

uint32_t ck_kv_prefix(const struct ck_kv *kv, const void *prefix, size_t len, uint32_t *first)
{
    uint32_t pos = 0;
    *first = 0;
    if (len > CK_KV_MAX_KEY) {
        return 0;
    }
    if (len > 0) {
        kv_find(kv, prefix, (uint32_t)len, &pos);
    }
    /* Keys with the prefix sort right after the prefix itself. */
    uint32_t end = pos;
    while (end < kv->n && has_prefix(kv->entries[end], prefix, (uint32_t)len)) {
        end++;
    }
    *first = pos;
    return end - pos;
}

/* ---- Encoding ---- */

void ck_kv_encode_txn(struct ck_wbuf *w, const struct ck_kv_txn *t)
{
    ck_w_u32(w, t->max_value);
    ck_w_u64(w, t->max_bytes);
    ck_w_u32(w, t->n_cmp);
    for (uint32_t i = 0; i < t->n_cmp; i++) {
        const struct ck_kv_cmp *c = &t->cmp[i];
        ck_w_str(w, c->key.p, c->key.len);
        ck_w_u8(w, c->target);
        ck_w_u8(w, c->op);
        if (c->target == CK_KV_VALUE) {
            ck_w_str(w, c->value.p, c->value.len);
        } else {
            ck_w_u64(w, c->number);
        }
    }
    ck_w_u32(w, t->n_ops);
    for (uint32_t i = 0; i < t->n_ops; i++) {
        const struct ck_kv_op *o = &t->ops[i];
        ck_w_u8(w, o->type);
        ck_w_str(w, o->key.p, o->key.len);
        if (o->type == CK_KV_PUT) {
            ck_w_str(w, o->value.p, o->value.len);
            ck_w_u64(w, o->number);
        } else if (o->type >= CK_KV_SESSION_CREATE) {
            ck_w_u64(w, o->number);
        }
    }
}

void ck_kv_txn_free(struct ck_kv_txn *t)
{
    free(t->cmp);
    free(t->ops);
    memset(t, 0, sizeof(*t));
}

int ck_kv_decode_txn(struct ck_rbuf *r, struct ck_kv_txn *t)
{
    memset(t, 0, sizeof(*t));
    t->max_value = ck_r_u32(r);
    t->max_bytes = ck_r_u64(r);
    if (t->max_value > CK_KV_MAX_VALUE) {
        r->err = CK_ECORRUPT;
    }
    t->n_cmp = ck_r_u32(r);
    if (r->err == 0 && t->n_cmp > CK_KV_MAX_TXN_ITEMS) {
        r->err = CK_ECORRUPT;
    }
    if (r->err == 0 && t->n_cmp > 0 && (t->cmp = calloc(t->n_cmp, sizeof(*t->cmp))) == NULL) {
        return CK_ENOMEM;
    }
    for (uint32_t i = 0; r->err == 0 && i < t->n_cmp; i++) {
        struct ck_kv_cmp *c = &t->cmp[i];
        c->key = ck_r_str(r, CK_KV_MAX_KEY);
        c->target = ck_r_u8(r);
        c->op = ck_r_u8(r);
        if (c->target == CK_KV_VALUE) {
            c->value = ck_r_str(r, CK_KV_MAX_VALUE);
        } else {
            c->number = ck_r_u64(r);
        }
        if (c->key.len == 0 || c->target < CK_KV_MOD || c->target > CK_KV_VALUE || c->op < CK_KV_EQ ||
            c->op > CK_KV_GT) {
            r->err = CK_ECORRUPT;
        }
    }
    if (r->err == 0) {
        t->n_ops = ck_r_u32(r);
    }
    if (r->err == 0 && t->n_ops > CK_KV_MAX_TXN_ITEMS) {
        r->err = CK_ECORRUPT;
    }
    if (r->err == 0 && t->n_ops > 0 && (t->ops = calloc(t->n_ops, sizeof(*t->ops))) == NULL) {
        ck_kv_txn_free(t);
        return CK_ENOMEM;
    }
    uint32_t n_session_ops = 0, n_creates = 0;
    for (uint32_t i = 0; r->err == 0 && i < t->n_ops; i++) {
        struct ck_kv_op *o = &t->ops[i];
        o->type = ck_r_u8(r);
        o->key = ck_r_str(r, CK_KV_MAX_KEY);
        if (o->type == CK_KV_PUT) {
            o->value = ck_r_str(r, CK_KV_MAX_VALUE);
            o->number = ck_r_u64(r);
        } else if (o->type >= CK_KV_SESSION_CREATE && o->type <= CK_KV_SESSION_DESTROY) {
            o->number = ck_r_u64(r);
            n_session_ops++;
            n_creates += o->type == CK_KV_SESSION_CREATE;
        }
        /* Only a prefix may be empty (it then means every key); a create's
         * key is its owner, and renewals and destroys name no key. */
        bool key_ok = o->type == CK_KV_DELETE_PREFIX || o->type == CK_KV_SESSION_CREATE ? true
                      : o->type >= CK_KV_SESSION_RENEW ? o->key.len == 0 && o->number != 0
                                                       : o->key.len > 0;
        if (o->type < CK_KV_PUT || o->type > CK_KV_SESSION_DESTROY || !key_ok) {
            r->err = CK_ECORRUPT;
        }
    }
    /* Session operations stand alone: one create, or renewals and destroys
     * of one kind (see ck_kv.h). */
    if (r->err == 0 && n_session_ops > 0) {
        bool alone = n_session_ops == t->n_ops && (n_creates == 0 ? true : t->n_ops == 1);
        for (uint32_t i = 1; alone && i < t->n_ops; i++) {
            alone = t->ops[i].type == t->ops[0].type;
        }
        if (!alone) {
            r->err = CK_ECORRUPT;
        }
    }
    if (r->err != 0) {
        ck_kv_txn_free(t);
        return r->err;
    }
    return 0;
}

/* ---- Sessions ---- */

static bool session_find(const struct ck_kv *kv, uint64_t id, uint32_t *pos)
{
    uint32_t lo = 0, hi = kv->n_sessions;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (kv->sessions[mid].id == id) {
            *pos = mid;
            return true;
        }
        if (kv->sessions[mid].id < id) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    *pos = lo;
    return false;
}

const struct ck_kv_session *ck_kv_session(const struct ck_kv *kv, uint64_t id)
{
    uint32_t pos;
    return session_find(kv, id, &pos) ? &kv->sessions[pos] : NULL;
}

/* Inserts a session (ids only grow, so this is an append but for restores
 * of hand-made data); takes @owner. */
static int session_insert(struct ck_kv *kv, uint64_t id, uint64_t ttl_ms, uint64_t renewed, char *owner,
                          uint32_t owner_len)
{
    uint32_t pos;
    if (session_find(kv, id, &pos)) {
        free(owner);
        return CK_EINVAL;
    }
    if (kv->n_sessions == kv->cap_sessions) {
        uint32_t cap = kv->cap_sessions ? kv->cap_sessions * 2 : 8;
        void *p = realloc(kv->sessions, (size_t)cap * sizeof(*kv->sessions));
        if (p == NULL) {
            free(owner);
            return CK_ENOMEM;
        }
        kv->sessions = p;
        kv->cap_sessions = cap;
    }
    memmove(kv->sessions + pos + 1, kv->sessions + pos, (size_t)(kv->n_sessions - pos) * sizeof(*kv->sessions));
    kv->sessions[pos] = (struct ck_kv_session){id, ttl_ms, renewed, owner, owner_len};
    kv->n_sessions++;
    return 0;
}

static void session_remove_at(struct ck_kv *kv, uint32_t pos)
{
    free(kv->sessions[pos].owner);
    memmove(kv->sessions + pos, kv->sessions + pos + 1, (size_t)(kv->n_sessions - pos - 1) * sizeof(*kv->sessions));
    kv->n_sessions--;
}

/* ---- Apply ---- */

static bool cmp_holds(const struct ck_kv *kv, const struct ck_kv_cmp *c)
{
    const struct ck_kv_entry *e = ck_kv_get(kv, c->key.p, c->key.len);
    int order;
    if (c->target == CK_KV_VALUE) {
        if (e == NULL) {
            return false;
        }
        order = key_cmp(e->value, e->value_len, c->value.p, c->value.len);
    } else {
        uint64_t v = 0;
        if (e != NULL) {
            v = c->target == CK_KV_MOD ? e->mod_index : c->target == CK_KV_CREATE ? e->create_index : e->version;
        }
        order = v < c->number ? -1 : v > c->number;
    }
    switch (c->op) {
    case CK_KV_EQ:
        return order == 0;
    case CK_KV_NE:
        return order != 0;
    case CK_KV_LT:
        return order < 0;
    case CK_KV_GT:
        return order > 0;
    default:
        return false;
    }
}

/* What one step of a transaction did, so that a failed transaction can be
 * undone in reverse: @added is the entry now in the store (NULL after a
 * delete), @old the one it displaced (NULL after an insert). */
struct undo {
    struct ck_kv_entry *added;
    struct ck_kv_entry *old;
};

struct txn_run {
    struct undo *undo;
    uint32_t n_undo;
    uint32_t cap_undo;
};

static int run_note(struct txn_run *run, struct ck_kv_entry *added, struct ck_kv_entry *old)
{
    if (run->n_undo == run->cap_undo) {
        uint32_t cap = run->cap_undo ? run->cap_undo * 2 : 8;
        void *p = realloc(run->undo, (size_t)cap * sizeof(*run->undo));
        if (p == NULL) {
            return CK_ENOMEM;
        }
        run->undo = p;
        run->cap_undo = cap;
    }
    run->undo[run->n_undo++] = (struct undo){added, old};
    return 0;
}

static void run_rollback(struct ck_kv *kv, struct txn_run *run)
{
    for (uint32_t i = run->n_undo; i-- > 0;) {
        struct undo *u = &run->undo[i];
        const struct ck_kv_entry *k = u->added ? u->added : u->old;
        uint32_t pos;
        bool found = kv_find(kv, k->key, k->key_len, &pos);
        if (found) {
            entry_free(kv_remove_at(kv, pos)); /* u->added */
        }
        if (u->old != NULL) {
            kv_insert_at(kv, pos, u->old); /* Room: the store held it before. */
        }
    }
}

static int step_put(struct ck_kv *kv, struct txn_run *run, const struct ck_kv_op *o, uint64_t index)
{
    uint32_t pos;
    bool found = kv_find(kv, o->key.p, o->key.len, &pos);
    struct ck_kv_entry *e = entry_new(o->key, o->value);
    int rv = e != NULL ? 0 : CK_ENOMEM;
    if (rv == 0 && !found) {
        rv = kv_reserve(kv, kv->n + 1);
    }
    if (rv == 0) {
        rv = run_note(run, e, found ? kv->entries[pos] : NULL);
    }
    if (rv != 0) {
        entry_free(e);
        return rv;
    }
    e->mod_index = index;
    e->session = o->number;
    if (found) {
        struct ck_kv_entry *old = kv_remove_at(kv, pos);
        e->create_index = old->create_index;
        e->version = old->version + 1;
    } else {
        e->create_index = index;
        e->version = 1;
    }
    kv_insert_at(kv, pos, e);
    return 0;
}

static int step_delete(struct ck_kv *kv, struct txn_run *run, const struct ck_kv_op *o)
{
    uint32_t first = 0, n = 1;
    if (o->type == CK_KV_DELETE_PREFIX) {
        n = ck_kv_prefix(kv, o->key.p, o->key.len, &first);
    } else if (!kv_find(kv, o->key.p, o->key.len, &first)) {
        return 0;
    }
    /* Each removal moves the next key of the run to @first. */
    for (uint32_t i = 0; i < n; i++) {
        int rv = run_note(run, NULL, kv->entries[first]);
        if (rv != 0) {
            return rv;
        }
        kv_remove_at(kv, first);
    }
    return 0;
}

/* Deletes every key attached to session @id (recorded for undo). */
static int step_drop_session_keys(struct ck_kv *kv, struct txn_run *run, uint64_t id)
{
    for (uint32_t i = 0; i < kv->n;) {
        if (kv->entries[i]->session != id) {
            i++;
            continue;
        }
        int rv = run_note(run, NULL, kv->entries[i]);
        if (rv != 0) {
            return rv;
        }
        kv_remove_at(kv, i);
    }
    return 0;
}

/* The events of a committed transaction, in the order of its steps (a
 * delete-prefix's keys in key order). */
static void emit_events(struct ck_kv *kv, const struct txn_run *run, uint64_t index)
{
    for (uint32_t i = 0; i < run->n_undo; i++) {
        const struct undo *u = &run->undo[i];
        const struct ck_kv_entry *src = u->added ? u->added : u->old;
        struct ck_kv_event ev = {.index = index, .type = u->added ? CK_KV_PUT : CK_KV_DELETE, .e = *src};
        ev.e.key = dup_bytes(src->key, src->key_len);
        ev.e.value = u->added ? dup_bytes(src->value, src->value_len) : dup_bytes(NULL, 0);
        if (!u->added) {
            ev.e.value_len = 0;
        }
        if (ev.e.key == NULL || ev.e.value == NULL) {
            free(ev.e.key);
            free(ev.e.value);
            kv->compacted = index; /* A watcher must re-read: see ring_push. */
            continue;
        }
        ring_push(kv, &ev);
    }
}

/* Commits what a transaction's steps did: the events, the freed entries. */
static void run_commit(struct ck_kv *kv, struct txn_run *run, uint64_t index)
{
    if (run->n_undo > 0) {
        kv->index = index;
        emit_events(kv, run, index);
        for (uint32_t i = 0; i < run->n_undo; i++) {
            entry_free(run->undo[i].old);
        }
    }
    free(run->undo);
}

/* A transaction of session operations (they stand alone, see ck_kv.h). */
static int apply_sessions(struct ck_kv *kv, const struct ck_kv_txn *t, uint64_t index)
{
    uint8_t type = t->ops[0].type;
    uint32_t pos;
    if (type == CK_KV_SESSION_CREATE) {
        const struct ck_kv_op *o = &t->ops[0];
        char *owner = malloc((size_t)o->key.len + 1);
        if (owner == NULL) {
            return CK_ENOMEM;
        }
        memcpy(owner, o->key.p, o->key.len);
        owner[o->key.len] = '\0';
        int rv = session_insert(kv, index, o->number, index, owner, o->key.len);
        if (rv == 0) {
            kv->index = index;
        }
        return rv;
    }
    if (type == CK_KV_SESSION_RENEW) {
        for (uint32_t i = 0; i < t->n_ops; i++) {
            if (!session_find(kv, t->ops[i].number, &pos)) {
                return CK_ENOTFOUND;
            }
        }
        for (uint32_t i = 0; i < t->n_ops; i++) {
            session_find(kv, t->ops[i].number, &pos);
            kv->sessions[pos].renewed = index;
        }
        kv->index = index;
        return 0;
    }
    /* Destroys: idempotent (the leader may expire a session its owner just
     * closed). Keys first, undoable; then the sessions, which cannot fail. */
    struct txn_run run = {0};
    int rv = 0;
    for (uint32_t i = 0; rv == 0 && i < t->n_ops; i++) {
        if (session_find(kv, t->ops[i].number, &pos)) {
            rv = step_drop_session_keys(kv, &run, t->ops[i].number);
        }
    }
    if (rv != 0) {
        run_rollback(kv, &run);
        free(run.undo);
        return rv;
    }
    bool any = run.n_undo > 0;
    for (uint32_t i = 0; i < t->n_ops; i++) {
        if (session_find(kv, t->ops[i].number, &pos)) {
            session_remove_at(kv, pos);
            any = true;
        }
    }
    run_commit(kv, &run, index);
    if (any) {
        kv->index = index;
    }
    return 0;
}

int ck_kv_drop_owner(struct ck_kv *kv, const char *owner, size_t len, uint64_t index)
{
    struct ck_kv_op ops[CK_KV_MAX_TXN_ITEMS];
    uint32_t n = 0;
    /* A node has one session per process start at most: a handful. Past
     * CK_KV_MAX_TXN_ITEMS, a second pass takes the rest. */
    for (;;) {
        n = 0;
        for (uint32_t i = 0; i < kv->n_sessions && n < CK_KV_MAX_TXN_ITEMS; i++) {
            const struct ck_kv_session *ss = &kv->sessions[i];
            if (ss->owner_len == len && len > 0 && memcmp(ss->owner, owner, len) == 0) {
                ops[n++] = (struct ck_kv_op){.type = CK_KV_SESSION_DESTROY, .number = ss->id};
            }
        }
        if (n == 0) {
            return 0;
        }
        struct ck_kv_txn t = {.n_ops = n, .ops = ops};
        int rv = apply_sessions(kv, &t, index);
        if (rv != 0) {
            return rv;
        }
    }
}

int ck_kv_apply(struct ck_kv *kv, const struct ck_kv_txn *t, uint64_t index)
{
    for (uint32_t i = 0; i < t->n_cmp; i++) {
        if (!cmp_holds(kv, &t->cmp[i])) {
            return CK_ECONFLICT;
        }
    }
    if (t->n_ops > 0 && t->ops[0].type >= CK_KV_SESSION_CREATE) {
        return apply_sessions(kv, t, index);
    }
    uint32_t pos;
    for (uint32_t i = 0; i < t->n_ops; i++) {
        const struct ck_kv_op *o = &t->ops[i];
        if (o->type == CK_KV_PUT && o->value.len > t->max_value) {
            return CK_ETOOBIG;
        }
        if (o->type == CK_KV_PUT && o->number != 0 && !session_find(kv, o->number, &pos)) {
            return CK_ENOTFOUND;
        }
    }
    struct txn_run run = {0};
    uint64_t bytes_before = kv->bytes;
    int rv = 0;
    for (uint32_t i = 0; rv == 0 && i < t->n_ops; i++) {
        const struct ck_kv_op *o = &t->ops[i];
        rv = o->type == CK_KV_PUT ? step_put(kv, &run, o, index) : step_delete(kv, &run, o);
    }
    /* The limit holds for the result, so a transaction that frees room
     * before it uses it is fine. A store already over a lowered limit may
     * still shrink. */
    if (rv == 0 && kv->bytes > t->max_bytes && kv->bytes > bytes_before) {
        rv = CK_ETOOBIG;
    }
    if (rv != 0) {
        run_rollback(kv, &run);
        free(run.undo);
        return rv;
    }
    run_commit(kv, &run, index);
    return 0;
}

/* ---- Snapshot ---- */

void ck_kv_snapshot(const struct ck_kv *kv, struct ck_wbuf *w)
{
    ck_w_u64(w, kv->index);
    ck_w_u32(w, kv->n);
    for (uint32_t i = 0; i < kv->n; i++) {
        const struct ck_kv_entry *e = kv->entries[i];
        ck_w_str(w, e->key, e->key_len);
        ck_w_str(w, e->value, e->value_len);
        ck_w_u64(w, e->create_index);
        ck_w_u64(w, e->mod_index);
        ck_w_u64(w, e->version);
        ck_w_u64(w, e->session);
    }
    ck_w_u32(w, kv->n_sessions);
    for (uint32_t i = 0; i < kv->n_sessions; i++) {
        const struct ck_kv_session *ss = &kv->sessions[i];
        ck_w_u64(w, ss->id);
        ck_w_u64(w, ss->ttl_ms);
        ck_w_u64(w, ss->renewed);
        ck_w_str(w, ss->owner, ss->owner_len);
    }
}

int ck_kv_restore(struct ck_kv *kv, struct ck_rbuf *r)
{
    uint64_t index = ck_r_u64(r);
    uint32_t n = ck_r_u32(r);
    /* Every entry takes at least 2 * 4 + 4 * 8 + 1 bytes: a count the
     * buffer cannot hold is corrupt, not a huge allocation. */
    if (r->err == 0 && n > (r->len - r->pos) / 41) {
        r->err = CK_ECORRUPT;
    }
    if (r->err != 0) {
        return r->err;
    }
    struct ck_kv next;
    ck_kv_init(&next);
    int rv = kv_reserve(&next, n);
    for (uint32_t i = 0; rv == 0 && i < n; i++) {
        struct ck_str key = ck_r_str(r, CK_KV_MAX_KEY);
        struct ck_str value = ck_r_str(r, CK_KV_MAX_VALUE);
        uint64_t create = ck_r_u64(r), mod = ck_r_u64(r), version = ck_r_u64(r), session = ck_r_u64(r);
        if (r->err != 0 || key.len == 0 || create == 0 || mod < create || version == 0 || mod > index ||
            (next.n > 0 &&
             key_cmp(next.entries[next.n - 1]->key, next.entries[next.n - 1]->key_len, key.p, key.len) >= 0)) {
            rv = CK_ECORRUPT; /* Also: keys out of order or repeated. */
            break;
        }
        struct ck_kv_entry *e = entry_new(key, value);
        if (e == NULL) {
            rv = CK_ENOMEM;
            break;
        }
        e->create_index = create;
        e->mod_index = mod;
        e->version = version;
        e->session = session;
        kv_insert_at(&next, next.n, e);
    }
    uint32_t n_sessions = rv == 0 ? ck_r_u32(r) : 0;
    if (rv == 0 && (r->err != 0 || n_sessions > (r->len - r->pos) / 28)) {
        rv = CK_ECORRUPT;
    }
    for (uint32_t i = 0; rv == 0 && i < n_sessions; i++) {
        uint64_t id = ck_r_u64(r), ttl = ck_r_u64(r), renewed = ck_r_u64(r);
        struct ck_str owner = ck_r_str(r, CK_KV_MAX_KEY);
        /* In id order, renewed at or after creation, never after the store. */
        if (r->err != 0 || id == 0 || renewed < id || renewed > index ||
            (next.n_sessions > 0 && next.sessions[next.n_sessions - 1].id >= id)) {
            rv = CK_ECORRUPT;
            break;
        }
        char *o = malloc((size_t)owner.len + 1);
        if (o == NULL) {
            rv = CK_ENOMEM;
            break;
        }
        memcpy(o, owner.p, owner.len);
        o[owner.len] = '\0';
        rv = session_insert(&next, id, ttl, renewed, o, owner.len);
    }
    /* Every key's session exists. */
    for (uint32_t i = 0; rv == 0 && i < next.n; i++) {
        uint32_t pos;
        if (next.entries[i]->session != 0 && !session_find(&next, next.entries[i]->session, &pos)) {
            rv = CK_ECORRUPT;
        }
    }
    if (rv != 0) {
        ck_kv_free(&next);
        if (r->err == 0) {
            r->err = rv == CK_ENOMEM ? 0 : rv;
        }
        return rv;
    }
    entries_free(kv->entries, kv->n);
    sessions_free(kv->sessions, kv->n_sessions);
    kv->entries = next.entries;
    kv->n = next.n;
    kv->cap = next.cap;
    kv->sessions = next.sessions;
    kv->n_sessions = next.n_sessions;
    kv->cap_sessions = next.cap_sessions;
    kv->bytes = next.bytes;
    kv->index = index;
    ring_clear(kv);
    /* Nothing before the snapshot can be replayed to a watcher. */
    kv->compacted = index;
    return 0;
}

/* ---- History ---- */

int ck_kv_events(const struct ck_kv *kv, uint64_t since, uint32_t max, const struct ck_kv_event **out, uint32_t *n)
{
    *n = 0;
    if (since < kv->compacted) {
        return CK_ECOMPACTED;
    }
    /* The first event after @since (the ring is in index order). */
    uint32_t lo = 0, hi = kv->ev_n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (kv->ev[(kv->ev_head + mid) % kv->ev_cap].index <= since) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    for (uint32_t i = lo; i < kv->ev_n; i++) {
        const struct ck_kv_event *ev = &kv->ev[(kv->ev_head + i) % kv->ev_cap];
        /* Past @max only to finish the last transaction: a watcher resumes
         * after an index, so it must have all of that index's events. */
        if (*n >= max && ev->index != out[*n - 1]->index) {
            break;
        }
        out[(*n)++] = ev;
    }
    return 0;
}
