/*
 * The raft FSM over a ck_state, usable with any raft_io: ck_node runs it on
 * raft_uv, the unit tests on raft's in-memory fixture.
 *
 * See the raft 0.15 notes in ck_node.h: apply always returns 0 (a rejected
 * command carries its code in the apply result), the index of the entry
 * being applied is raft->last_applied + 1, restore owns the buffer on
 * success, and snapshots are one raft_malloc'd buffer.
 */
#ifndef CK_FSM_H
#define CK_FSM_H

#include <raft.h>

#include "ck_hist.h"
#include "ck_state.h"

struct ck_fsm {
    struct ck_state state;
    struct raft *raft;                   /* For the index of applied entries. */
    void (*on_change)(struct ck_fsm *f); /* After an apply that changed the state, or a restore. */
    /* After an accepted key-value transaction (also one that changed
     * nothing: a read barrier), or a restore (which calls both). Optional.
     * KV writes do not call on_change: they leave the cluster state (and
     * its index) alone. */
    void (*on_kv_change)(struct ck_fsm *f);
    void *data;
    /* Called when a command cannot be applied for want of memory
     * (CK_ENOMEM) or cannot be decoded by this build (CK_ECORRUPT). It must
     * not return (the default prints why and aborts: after ENOMEM the node
     * recovers by replaying its log on restart; after ECORRUPT it needs the
     * build that wrote the entry); treating either like a refused command
     * would let one replica skip what the others applied. */
    void (*on_fatal)(struct ck_fsm *f, int code, uint64_t index);
    uint64_t applied;          /* Commands applied (accepted or not). */
    uint64_t log_bytes;        /* Bytes of commands applied since the last snapshot. */
    uint64_t snapshot_bytes;   /* Size of the last snapshot taken or restored. */
    uint64_t rejected;         /* Commands the state refused. */
    struct ck_hist apply_time; /* Time spent in ck_state_apply, per command. */
};

/* Set up @fsm (version 1) over @f; @f->raft must be set before raft starts. */
void ck_fsm_init(struct raft_fsm *fsm, struct ck_fsm *f);
void ck_fsm_close(struct ck_fsm *f);

#endif
