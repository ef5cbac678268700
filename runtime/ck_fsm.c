#include "ck_fsm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "ck_common.h"

static void fsm_default_fatal(struct ck_fsm *f, int code, uint64_t index)
{
    (void)f;
    if (code == CK_ECORRUPT) {
        fprintf(stderr,
                "clusterkit: fatal: raft entry %llu is a command this build cannot decode (written by a newer "
                "clusterkit?); stopping instead of skipping it, which would leave this node's state behind "
                "the others for good: run this node on the version the rest of the cluster runs\n",
                (unsigned long long)index);
    } else {
        fprintf(stderr,
                "clusterkit: fatal: %s while applying raft entry %llu; aborting so that this node "
                "recovers by replaying its log on restart instead of diverging from the others\n",
                ck_strerror(code), (unsigned long long)index);
    }
    abort();
}

/* Returns 0 for every command the state decided on, accepted or refused:
 * raft 0.15 would stop applying and retry forever on non-zero. Two
 * exceptions, where the state could not decide at all and skipping the
 * command would make this replica differ from the others for good, so the
 * node stops (on_fatal aborts; see ck_fsm.h): running out of memory, and an
 * entry this build cannot decode (CK_ECORRUPT). ck_node refuses undecodable
 * proposals before they reach the log, so a committed one comes from another
 * build: during a rolling upgrade, a newer leader's new command on an older
 * follower. Before, that follower counted it as refused and went on without
 * it. */
static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
    struct ck_fsm *f = fsm->data;
    uint64_t index = f->raft->last_applied + 1;
    uint64_t kv_index = f->state.kv.index;
    uint64_t t0 = uv_hrtime();
    int rv = ck_state_apply(&f->state, buf->base, buf->len, index);
    ck_hist_observe(&f->apply_time, uv_hrtime() - t0);
    if (rv == CK_ENOMEM || rv == CK_ECORRUPT) {
        f->on_fatal(f, rv, index);
        return rv == CK_ENOMEM ? RAFT_NOMEM : RAFT_CORRUPT; /* Only a test's on_fatal returns. */
    }
    *result = (void *)(intptr_t)rv;
    f->applied++;
    f->log_bytes += buf->len;
    if (rv != 0) {
        f->rejected++;
    } else if (buf->len > 1 && ((const uint8_t *)buf->base)[1] == CK_CMD_KV_TXN) {
        /* Also when the store did not change: an empty transaction is a
         * read barrier, and its waiters watch the applied index. */
        if (f->on_kv_change != NULL) {
            f->on_kv_change(f);
        }
    } else {
        if (f->on_change != NULL) {
            f->on_change(f);
        }
        /* A node marked down or removed ends its sessions and their keys. */
        if (f->state.kv.index != kv_index && f->on_kv_change != NULL) {
            f->on_kv_change(f);
        }
    }
    return 0;
}

static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct ck_fsm *f = fsm->data;
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_state_snapshot(&f->state, &w);
    struct raft_buffer *b = w.err == 0 ? raft_malloc(sizeof *b) : NULL;
    void *base = b != NULL ? raft_malloc(w.len) : NULL;
    if (base == NULL) {
        raft_free(b);
        ck_wbuf_free(&w);
        return RAFT_NOMEM;
    }
    memcpy(base, w.p, w.len);
    b->base = base;
    b->len = w.len;
    f->snapshot_bytes = w.len;
    f->log_bytes = 0;
    ck_wbuf_free(&w);
    *bufs = b;
    *n_bufs = 1;
    return 0;
}

static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    struct ck_fsm *f = fsm->data;
    int rv = ck_state_restore(&f->state, buf->base, buf->len);
    if (rv != 0) {
        return rv == CK_ENOMEM ? RAFT_NOMEM : RAFT_CORRUPT; /* raft frees buf. */
    }
    f->snapshot_bytes = buf->len;
    f->log_bytes = 0;
    raft_free(buf->base); /* Ours on success. */
    if (f->on_change != NULL) {
        f->on_change(f);
    }
    if (f->on_kv_change != NULL) {
        f->on_kv_change(f);
    }
    return 0;
}

void ck_fsm_init(struct raft_fsm *fsm, struct ck_fsm *f)
{
    ck_state_init(&f->state);
    f->applied = 0;
    f->rejected = 0;
    f->on_kv_change = NULL;
    memset(&f->apply_time, 0, sizeof f->apply_time);
    f->on_fatal = fsm_default_fatal;
    memset(fsm, 0, sizeof *fsm);
    fsm->version = 1;
    fsm->data = f;
    fsm->apply = fsm_apply;
    fsm->snapshot = fsm_snapshot;
    fsm->restore = fsm_restore;
}

void ck_fsm_close(struct ck_fsm *f)
{
    ck_state_free(&f->state);
}
