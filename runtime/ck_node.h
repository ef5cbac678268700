/*
 * A clusterkit node: one raft server (canonical raft over raft_uv) whose FSM
 * is the replicated ck_state, on a libuv loop.
 *
 * The owner learns about changes through one event callback, never from
 * inside the FSM apply: applies mark the node dirty and a zero-delay timer
 * reports CK_NODE_EV_APPLIED on the next loop turn (coalescing bursts); a
 * periodic watch timer reports CK_NODE_EV_RAFT when raft's role, term or
 * leader changed, or a configuration change was committed. So owner code (Lua) can never run inside the apply path.
 *
 * Callbacks (the rule the first fault campaign taught us): no owner code
 * runs inside a raft callback. raft calls back from the middle of its own
 * work: a leader that steps down fails its pending applies while it is
 * clearing its leader state, and a callback that proposed again from there
 * re-entered raft_apply on a half-cleared leader and crashed the node (seen
 * after SIGSTOP/SIGCONT of a leader). So every raft completion (apply,
 * membership change, transfer) is only recorded and queued; the queue is
 * delivered from the notify timer on a later loop turn, after the
 * CK_NODE_EV_APPLIED event of the same turn, in completion order. On close,
 * what raft cancelled is delivered (CK_ECANCELED) just before
 * CK_NODE_EV_CLOSED. An owner may call any ck_node function from any
 * callback it gets from this module.
 *
 * raft 0.15 notes (learned the hard way, read before changing the FSM):
 * - fsm->apply must return 0: a non-zero return stops raft's apply loop
 *   without advancing last_applied, so the same entry would be retried
 *   forever. Rejected commands therefore return 0 and carry their error code
 *   in the apply result.
 * - fsm->apply is not told the entry's index; while it runs,
 *   raft->last_applied is still the previous index, so index = last_applied+1.
 * - fsm->restore owns the buffer on success (raft_free it), raft frees it on
 *   failure.
 * - the election timeout is randomised between 1x and 2x of the set value.
 * - every entry buffer handed to raft_apply must be a multiple of 8 bytes
 *   long. Only a debug build of libraft asserts it; Debian's release build
 *   writes the batch with the padded size but copies only len bytes, so the
 *   open segment holds garbage and the next start fails to load it
 *   ("read header: short read"), then double-frees in its error path.
 *   ck_node_propose pads commands with zeros; the decoder accepts that.
 * - raft_close on a leader with log writes in flight crashes (the cancelled
 *   write's callback looks in leader state that close already cleared):
 *   ck_node_close waits, bounded, for raft to store what it appended.
 * - raft's close callback can fire while an open segment's writer is still
 *   closing, and that writer then runs raft's close path a second time
 *   (canonical/raft#341): after the first one, the node resets the fields
 *   raft freed, ignores the second, and frees raft_uv only once the loop
 *   has no closing handle left (see node_on_raft_closed).
 * - after a failed log write or segment preparation (a full disk) raft
 *   never recovers in-process, and closing it double-frees: ck_node reports
 *   CK_NODE_EV_FAILED (a write failed or hung for 5 s) and ckrun exits.
 */
#ifndef CK_NODE_H
#define CK_NODE_H

#include <openssl/ssl.h>
#include <raft.h>
#include <raft/uv.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "ck_hist.h"
#include "ck_state.h"

struct ck_node;

enum ck_node_event {
    CK_NODE_EV_APPLIED = 1, /* The state changed (state.index moved). */
    CK_NODE_EV_RAFT,        /* Role, term or leader changed, or a configuration change was committed. */
    CK_NODE_EV_CLOSED,      /* ck_node_close finished; the node is freed after the callback. */
    CK_NODE_EV_FAILED,      /* raft's storage failed or raft stopped by itself: close the node
                             * (ck_node_errmsg says why). It cannot recover in this process. */
    CK_NODE_EV_KV,          /* A key-value transaction was applied (state.kv.index may have moved); after
                             * CK_NODE_EV_APPLIED of the same turn, before its requests. */
};

typedef void (*ck_node_event_cb)(struct ck_node *n, int event);

/* Result of a proposal: @status is 0 when the command was committed and
 * applied, the apply's rejection code when the FSM refused it, or an error
 * (CK_ENOTLEADER when leadership was lost, CK_ECANCELED on close). */
typedef void (*ck_node_apply_cb)(void *data, int status, uint64_t index);
typedef void (*ck_node_change_cb)(void *data, int status);

struct ck_node_options {
    const char *data_dir;          /* Raft files go to <data_dir>/raft (created). */
    const char *raft_addr;         /* "host:port" peers use to reach us; host may be a name. */
    const char *raft_bind;         /* Optional "host:port" to bind instead. */
    const char *token;             /* Cluster token: raft connections must prove it (see ck_transport.h). */
    unsigned handshake_timeout_ms; /* Raft connection handshake bound. Default 3000. */
    /* Optional TLS for raft (ck_transport.h): both or neither. The node takes
     * its own references; ck_node_set_tls replaces them (SIGHUP). */
    SSL_CTX *tls_server;
    SSL_CTX *tls_client;
    uint64_t raft_id;              /* Non-zero. */
    bool bootstrap;                /* Bootstrap a one-voter cluster if pristine. */
    unsigned election_timeout_ms;  /* Default 300. */
    unsigned heartbeat_timeout_ms; /* Default 50. */
    unsigned watch_interval_ms;    /* Backstop poll of raft (node_watch). Default 1000. */
    size_t segment_size; /* Preallocated segment bytes. Default 1 MiB (each rollover costs a pause of tens of ms; raft
                            keeps 3 prepared). */
    unsigned snapshot_threshold; /* Entries between snapshots, default 8192; sooner by
                                  * bytes, see node_tune_snapshots in ck_node.c. */
    unsigned snapshot_trailing;  /* Default 128. */
};

struct ck_raft_info {
    int state; /* RAFT_FOLLOWER, ... */
    uint64_t term;
    uint64_t leader_id;      /* 0 if unknown. */
    const char *leader_addr; /* NULL if unknown. */
    uint64_t commit_index;
    uint64_t last_applied;
    uint64_t last_index;
    uint64_t snapshot_index;
    unsigned voters, standbys, spares;
    int my_role; /* RAFT_VOTER/STANDBY/SPARE, or -1 if not in the configuration. */
};

/* New raft connections use these contexts from now on (the open ones keep
 * theirs until they close): a certificate reload. */
void ck_node_set_tls(struct ck_node *n, SSL_CTX *server, SSL_CTX *client);

/* Create a node on @loop (nothing starts yet). Returns NULL on ENOMEM. */
struct ck_node *ck_node_new(uv_loop_t *loop, const struct ck_node_options *o, ck_node_event_cb cb, void *data);

void *ck_node_data(const struct ck_node *n);
const char *ck_node_errmsg(const struct ck_node *n);
uv_loop_t *ck_node_loop(const struct ck_node *n);

/* Open the data dir, load raft's log and snapshot, bootstrap when asked and
 * pristine, and start raft. Returns 0 or an error (details in errmsg). */
int ck_node_start(struct ck_node *n);

/* The replicated state; valid until the node is closed. */
const struct ck_state *ck_node_state(const struct ck_node *n);

/* The table's row changes applied since the last call (ck_state.h, struct
 * ck_changes); the caller frees out->buf with ck_wbuf_free. */
void ck_node_take_changes(struct ck_node *n, struct ck_changes *out);

void ck_node_raft_info(struct ck_node *n, struct ck_raft_info *out);

/* Counters for /metrics since ck_node_new. The histograms stay valid until
 * the node is closed. */
struct ck_node_counters {
    const struct ck_hist *commit; /* Leader: from raft_apply to raft's callback, for each command committed. */
    const struct ck_hist *apply;  /* Time in the FSM's apply, per command (on every node). */
    uint64_t elections;           /* Times this node became a candidate (a single voter too). */
    uint64_t elections_won;       /* Times it became the leader. */
    uint64_t votes_after_lease;   /* Vote requests answered although a leader was known: its lease was over. */
    uint64_t leaders_lost;        /* Times the leader closed this follower's connection to it. */
    uint64_t resends;             /* Small raft messages sent again after a failed write. */
    uint64_t results_held;        /* Replication answers held back until the leader stored its term's first entry. */
    uint64_t auth_failures;       /* Raft connections refused by the token handshake (ck_transport_stats). */
    uint64_t tls_failures;        /* Raft connections whose TLS failed (ck_transport_stats). */
};

void ck_node_counters(const struct ck_node *n, struct ck_node_counters *out);

/* Whether a follower that knows leader (0: none) and last heard from it at
 * last_contact (raft time, ms) may answer a vote request at now: the
 * leader's lease, election_timeout long, is over, or the leader closed its
 * connection (see node_io_recv). Pure, exposed for tests. */
bool ck_node_vote_lease_over(int state, raft_id leader, bool leader_closed, raft_time now, raft_time last_contact,
                             unsigned election_timeout);

/* Whether a leader holds back a replication answer of @result_term: until
 * it has stored its term's first entry (index @term_entry_index), raft 0.15
 * would commit entries of older terms by counting their replicas (see
 * node_arm_term_entry). Pure, exposed for tests. */
bool ck_node_hold_result(int state, raft_term result_term, raft_term current_term, raft_index last_stored,
                         raft_index term_entry_index);

/* The raft configuration as raft currently has it (committed or not). */
const struct raft_configuration *ck_node_configuration(const struct ck_node *n);

/* On the leader, raft's per-server progress, indexed like the
 * configuration's servers (recent_recv: heard from within the last election
 * timeout); NULL on any other node. */
const struct raft_progress *ck_node_progress(const struct ck_node *n);

/* When server @id last answered this node's replication (an
 * AppendEntriesResult: only a leader gets those), as ms before now: false
 * if never. See node_note_contact. */
bool ck_node_last_contact(const struct ck_node *n, raft_id id, uint64_t *ms_ago);

/* Propose command @buf (copied). On 0, @cb is called exactly once, on a
 * later loop turn (never from inside this call or a raft callback); on error
 * (CK_ENOTLEADER, CK_ECLOSED, CK_EINVAL for an undecodable command) never. */
int ck_node_propose(struct ck_node *n, const void *buf, size_t len, ck_node_apply_cb cb, void *data);

/* Membership changes (leader only). Same callback rules as ck_node_propose. */
int ck_node_add(struct ck_node *n, uint64_t id, const char *address, ck_node_change_cb cb, void *data);
int ck_node_assign(struct ck_node *n, uint64_t id, int role, ck_node_change_cb cb, void *data);
int ck_node_remove(struct ck_node *n, uint64_t id, ck_node_change_cb cb, void *data);
/* Hand leadership to @id (0: any voter). @cb fires when done or timed out. */
int ck_node_transfer(struct ck_node *n, uint64_t id, ck_node_change_cb cb, void *data);

/* Close raft and every handle; pending proposals get CK_ECANCELED. Then the
 * event callback gets CK_NODE_EV_CLOSED and the node is freed. */
void ck_node_close(struct ck_node *n);

/* Quorum recovery (canonical raft's raft_recover): force the raft
 * configuration stored in @dir to @n voters (@ids[i] at @addrs[i]), by
 * appending a configuration entry to the log on disk. The node that owns @dir
 * (@id, @address) must be stopped. Runs on a private loop and returns when the
 * files are written: 0, or an error with the reason in @errmsg.
 *
 * Only for a cluster that lost its quorum for good. Entries that only the
 * lost voters stored are gone; run it on the survivor with the highest term
 * and the longest log, exactly once, then start that node and make the other
 * survivors rejoin (empty data dir + JOIN_ADDR) or copy the recovered dir to
 * them (raft.h, raft_recover). */
int ck_node_recover(const char *dir, uint64_t id, const char *address, unsigned n, const uint64_t *ids,
                    const char *const *addrs, char *errmsg, size_t errlen);

/* A raft id from a node id string (stable, never 0). */
uint64_t ck_node_raft_id(const char *node_id);

#endif /* CK_NODE_H */
