#include "ck_node.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ck_common.h"
#include "ck_fsm.h"
#include "ck_hash.h"
#include "ck_transport.h"

struct ck_node {
    uv_loop_t *loop;
    struct raft raft;
    struct raft_io io;
    struct raft_uv_transport transport;
    struct raft_fsm fsm;
    struct ck_fsm f;
    struct ck_node_options opts;
    char *dir;
    char *raft_addr;
    char *raft_bind;
    char *token;
    ck_node_event_cb cb;
    void *data;
    uv_timer_t notify_timer;
    uv_timer_t watch_timer;
    uv_timer_t lost_timer; /* Ticks raft once a lost leader's election is due (node_on_peer_closed). */
    uv_timer_t reap_timer; /* Close: waits out raft's late close callbacks. */
    uint64_t reap_deadline;
    struct node_req *done_head, *done_tail; /* Completed, not yet delivered. */
    uint64_t close_deadline;                /* Loop time when close stops waiting for writes. */
    /* raft_uv's append, interposed to see failed log writes (see
     * node_io_append), and the callbacks of the writes in flight. */
    int (*io_append)(struct raft_io *, struct raft_io_append *, const struct raft_entry[], unsigned, raft_io_append_cb);
    struct {
        struct raft_io_append *req;
        raft_io_append_cb cb;
        uint64_t since; /* Loop time the write was submitted. */
    } appends[64];
    /* raft_uv's start, interposed so that raft's tick and receive callbacks
     * pass through node_io_tick/node_io_recv (see node_count_elections). */
    int (*io_start)(struct raft_io *, unsigned, raft_io_tick_cb, raft_io_recv_cb);
    /* raft_uv's send, interposed to send a small message again when its
     * write failed on a connection the peer had closed (node_io_send). */
    int (*io_send)(struct raft_io *, struct raft_io_send *, const struct raft_message *, raft_io_send_cb);
    uint64_t resends;
    raft_io_tick_cb raft_tick;
    raft_io_recv_cb raft_recv;
    struct ck_hist commit_time; /* Leader: raft_apply to raft's apply callback (ck_node_counters). */
    uint64_t elections, elections_won;
    uint64_t votes_after_lease; /* RequestVotes let through by ck_node_vote_lease_over. */
    uint64_t leaders_lost;      /* Leaders whose connection closed (node_on_peer_closed). */
    raft_id lost_leader;        /* That leader, until it is heard from again or the term moves. */
    raft_term lost_term;
    int counted_state; /* raft's state when node_count_elections last looked. */
    bool failed, failed_reported;
    uint64_t last_watch;  /* Loop time of the last watch tick (stall detection). */
    struct ck_node *next; /* In node_list. */
    unsigned pending_closes;
    bool transport_inited, io_inited, raft_inited, started, closing, dirty, kv_dirty;
    bool raft_dirty; /* raft's state, term, leader or configuration moved (node_watch). */
    /* When each server last answered this node's replication (see
     * node_note_contact): open addressing on the raft id, capacity a power
     * of two, at most half full. */
    struct node_contact {
        raft_id id;
        uint64_t at; /* Loop time, ms. */
    } * contacts;
    size_t contacts_cap, contacts_n;
    /* A leader's first entry of its term (node_arm_term_entry): the index
     * that must be stored here before replication answers may count. */
    raft_index term_entry_index;
    uint64_t results_held; /* Answers dropped meanwhile (node_io_recv). */
    /* Commit flush (see node_flush_commit): entries applied since the last
     * flush, and the barrier in flight. */
    bool applied_since_flush, flush_inflight;
    struct raft_barrier flush_req;
    unsigned snapshot_threshold_set; /* What raft was last told (node_tune_snapshots). */
    int seen_state;
    uint64_t seen_term, seen_leader, seen_conf_index;
    char errmsg[512];
};

/* One request handed to raft (a proposal, a membership change or a
 * leadership transfer). raft's completion callback only records the outcome
 * and queues the request; node_deliver() calls the owner's callback on a
 * later loop turn. See "Callbacks" in ck_node.h for why. */
struct node_req {
    union {
        struct raft_apply apply;
        struct raft_change change;
        struct raft_transfer transfer;
    };
    struct node_req *next; /* In the node's done queue. */
    struct ck_node *node;
    ck_node_apply_cb apply_cb;   /* Proposals. */
    ck_node_change_cb change_cb; /* Everything else. */
    void *data;
    int status;
    uint64_t index;
    uint64_t t0; /* Proposals: uv_hrtime() when handed to raft_apply. */
};

/* Translate raft's positive error codes at the boundary. */
static int node_err(int rv)
{
    switch (rv) {
    case 0:
        return 0;
    case RAFT_NOMEM:
        return CK_ENOMEM;
    case RAFT_NOTLEADER:
    case RAFT_LEADERSHIPLOST:
        return CK_ENOTLEADER;
    case RAFT_CANCELED:
    case RAFT_SHUTDOWN:
        return CK_ECANCELED;
    case RAFT_BADID:
    case RAFT_BADROLE:
    case RAFT_DUPLICATEID:
    case RAFT_DUPLICATEADDRESS:
    case RAFT_NOTFOUND:
        return CK_EINVAL;
    case RAFT_CANTCHANGE:
        return CK_EBUSY;
    default:
        return CK_ERAFT;
    }
}

uint64_t ck_node_raft_id(const char *node_id)
{
    uint64_t id = ck_hash_fnv1a64(node_id, strlen(node_id));
    return id != 0 ? id : 1;
}

/* ------------------------------------------------------------------------
 * FSM
 * ------------------------------------------------------------------------ */

static void node_on_notify(uv_timer_t *t);
static void node_watch(struct ck_node *n);
static void node_check_writes(struct ck_node *n);

static void node_notify_soon(struct ck_node *n)
{
    if (!n->closing && !uv_is_active((uv_handle_t *)&n->notify_timer)) {
        uv_timer_start(&n->notify_timer, node_on_notify, 0, 0);
    }
}

static void node_mark_dirty(struct ck_node *n)
{
    n->dirty = true;
    node_notify_soon(n);
}

static void node_on_fsm_change(struct ck_fsm *f)
{
    struct ck_node *n = f->data;
    n->applied_since_flush = true;
    node_mark_dirty(n);
}

static void node_on_fsm_kv_change(struct ck_fsm *f)
{
    struct ck_node *n = f->data;
    n->kv_dirty = true;
    n->applied_since_flush = true;
    node_notify_soon(n);
}

static void node_on_flush(struct raft_barrier *req, int status)
{
    (void)status;
    struct ck_node *n = req->data;
    n->flush_inflight = false;
}

/* When to snapshot: raft counts entries only. A snapshot writes the whole
 * state (the KV store included), so taking one every 1024 entries, as this
 * node once did, stalled writes for 30-45 ms twice every 0.4 s under a
 * steady load of small puts (p99 35 ms at one client). Now every
 * snapshot_threshold entries (8192), or sooner when the entries applied
 * since the last snapshot add up to more than twice its size (at least
 * 8 MiB): that bounds the log raft keeps in memory and replays at start,
 * and writing a snapshot of S bytes costs at most half the log it
 * replaces. */
static void node_tune_snapshots(struct ck_node *n)
{
    if (!n->raft_inited || n->closing) {
        return;
    }
    uint64_t limit = 2 * n->f.snapshot_bytes;
    if (limit < 8u << 20) {
        limit = 8u << 20;
    }
    unsigned want = n->f.log_bytes >= limit ? 1 : n->opts.snapshot_threshold;
    if (want != n->snapshot_threshold_set) {
        raft_set_snapshot_threshold(&n->raft, want);
        n->snapshot_threshold_set = want;
    }
}

/* raft 0.15 tells followers the new commit index only in its next
 * AppendEntries, and the leader sends one for a commit only at its next
 * heartbeat: measured, a follower applied a committed write 80-100 ms late
 * (raft checks the heartbeat on ticks of heartbeat_timeout, so up to two of
 * them), which made every read, watch and forwarded write on a follower
 * wait that long. So after the leader applied entries, it appends a barrier
 * (an entry the FSM never sees): replicating it carries the new commit
 * index to the followers at once. A barrier applies nothing, so it never
 * asks for another: one extra entry per burst of writes, coalesced per loop
 * turn and never more than one in flight. */
static void node_flush_commit(struct ck_node *n)
{
    if (!n->applied_since_flush || n->flush_inflight || n->closing || !n->raft_inited ||
        raft_state(&n->raft) != RAFT_LEADER) {
        return;
    }
    n->applied_since_flush = false;
    n->flush_req.data = n;
    if (raft_barrier(&n->raft, &n->flush_req, node_on_flush) == 0) {
        n->flush_inflight = true;
    }
}

/* ------------------------------------------------------------------------
 * Timers: change notification and raft watch
 * ------------------------------------------------------------------------ */

static void node_deliver(struct ck_node *n);

/* The state change first, then the requests that completed: an owner woken
 * by its proposal's callback already sees the state that proposal made. */
static void node_on_notify(uv_timer_t *t)
{
    struct ck_node *n = t->data;
    if (n->raft_dirty && !n->closing) {
        n->raft_dirty = false;
        n->cb(n, CK_NODE_EV_RAFT);
    }
    if (n->dirty && !n->closing) {
        n->dirty = false;
        n->cb(n, CK_NODE_EV_APPLIED);
    }
    if (n->kv_dirty && !n->closing) {
        n->kv_dirty = false;
        n->cb(n, CK_NODE_EV_KV);
    }
    node_flush_commit(n);
    node_tune_snapshots(n);
    node_deliver(n);
    if (n->failed && !n->failed_reported && !n->closing) {
        n->failed_reported = true;
        n->cb(n, CK_NODE_EV_FAILED);
    }
}

/* A node whose storage failed cannot go on: raft 0.15 keeps no way back
 * from a failed log write (a follower that could not store entries keeps
 * them in memory, rejects them, and never stores them when the leader
 * resends; after a disk filled up and was freed, the node never caught up
 * again). Nor from RAFT_UNAVAILABLE, where raft goes by itself on some I/O
 * errors. The owner is told once (CK_NODE_EV_FAILED) and closes the node;
 * restarted, it recovers from what it did store. */
static void node_fail(struct ck_node *n, const char *why)
{
    if (n->failed || n->closing) {
        return;
    }
    n->failed = true;
    snprintf(n->errmsg, sizeof n->errmsg, "%s", why);
    if (!uv_is_active((uv_handle_t *)&n->notify_timer)) {
        uv_timer_start(&n->notify_timer, node_on_notify, 0, 0);
    }
}

/* Every node of this process (one loop, one thread), so that the append
 * callback, which gets only raft's request, finds the node it belongs to. */
static struct ck_node *node_list;

static void node_on_io_appended(struct raft_io_append *req, int status)
{
    for (struct ck_node *n = node_list; n != NULL; n = n->next) {
        for (size_t i = 0; i < sizeof n->appends / sizeof n->appends[0]; i++) {
            if (n->appends[i].req == req) {
                raft_io_append_cb cb = n->appends[i].cb;
                n->appends[i].req = NULL;
                if (status != 0 && status != RAFT_CANCELED) {
                    char why[sizeof n->errmsg];
                    snprintf(why, sizeof why, "writing the raft log failed: %s%s%.200s", raft_strerror(status),
                             n->io.errmsg[0] ? ": " : "", n->io.errmsg);
                    node_fail(n, why);
                }
                cb(req, status);
                node_watch(n);
                return;
            }
        }
    }
}

static struct ck_node *node_of_io(struct raft_io *io)
{
    return (struct ck_node *)((char *)io - offsetof(struct ck_node, io));
}

static int node_io_append(struct raft_io *io, struct raft_io_append *req, const struct raft_entry entries[],
                          unsigned n_entries, raft_io_append_cb cb)
{
    struct ck_node *n = node_of_io(io);
    for (size_t i = 0; i < sizeof n->appends / sizeof n->appends[0]; i++) {
        if (n->appends[i].req == NULL) {
            n->appends[i].req = req;
            n->appends[i].cb = cb;
            n->appends[i].since = uv_now(n->loop);
            int rv = n->io_append(io, req, entries, n_entries, node_on_io_appended);
            if (rv != 0) {
                n->appends[i].req = NULL;
            }
            node_watch(n); /* A leader's new configuration entry, say. */
            return rv;
        }
    }
    return n->io_append(io, req, entries, n_entries, cb); /* Table full: not watched. */
}

/* raft 0.15 has no state-change callback, and polling from the watch timer
 * would miss most of them: a candidate wins or loses within a round trip.
 * raft changes state only from inside raft_start and its tick and receive
 * callbacks (convertToCandidate: start.c, tick.c, recv_timeout_now.c;
 * convertToLeader: convert.c, recv_request_vote_result.c), so looking after
 * each of those sees every candidacy and every win. This only reads raft's
 * state once raft has returned: no owner code runs here. A single voter
 * goes from follower to leader inside one call; that was a candidacy too. */
static void node_arm_term_entry(struct ck_node *n);

static void node_count_elections(struct ck_node *n)
{
    int state = n->raft.state;
    if (state == n->counted_state) {
        return;
    }
    if (state == RAFT_CANDIDATE || (state == RAFT_LEADER && n->counted_state != RAFT_CANDIDATE)) {
        n->elections++;
    }
    if (state == RAFT_LEADER) {
        n->elections_won++;
        node_arm_term_entry(n);
    }
    n->counted_state = state;
}

static void node_on_term_entry(struct raft_barrier *req, int status)
{
    (void)status;
    free(req);
}

/* raft 0.15 commits entries of earlier terms by counting replicas
 * (replicationQuorum has no term check: canonical/raft issue #220, fixed in
 * v0.17.1 by commit 524f735, "Don't commit entries from old terms by
 * counting"). That is the unsafe case of the Raft paper's Figure 8: a new
 * leader whose log ends with an entry of an older term commits it once a
 * majority stores it, and a later leader that never had it may overwrite
 * it; a node that applied it then meets a conflict below its commit index
 * and raft stops (RAFT_SHUTDOWN). The fault suite saw exactly that once
 * (pause-plus-split: an old leader paused through the split went
 * unavailable as soon as it learned of the next term).
 *
 * Debian ships 0.15, so the rule is kept from outside: on winning an
 * election the leader appends a barrier, an entry of its own term, at
 * index term_entry_index; until the leader itself has stored it, the
 * AppendEntries answers of this term do not reach raft (node_io_recv), so
 * raft counts no replicas of older entries. Once it is stored, raft counts
 * replicas of r->last_stored, which is of the current term, and committing
 * it commits what comes before, as the paper's rule does. raft sends
 * heartbeats every heartbeat_timeout, so an answer dropped costs at most
 * that much delay to the first commit of a term. A single voter commits by
 * itself (convertToLeader) and gets no answers. */
static void node_arm_term_entry(struct ck_node *n)
{
    struct raft_barrier *req = calloc(1, sizeof *req);
    if (req != NULL && raft_barrier(&n->raft, req, node_on_term_entry) == 0) {
        n->term_entry_index = raft_last_index(&n->raft);
        return;
    }
    free(req);
    /* No barrier: hold every answer of this term. Unable to count, this
     * leader loses its contact quorum within an election timeout and
     * another election follows; that is safe, an early commit is not. */
    n->term_entry_index = UINT64_MAX;
}

bool ck_node_hold_result(int state, raft_term result_term, raft_term current_term, raft_index last_stored,
                         raft_index term_entry_index)
{
    /* An answer of a later term must reach raft: it makes the leader step
     * down. Followers and candidates get no answers to hold. */
    return state == RAFT_LEADER && result_term <= current_term && last_stored < term_entry_index;
}

/* Whether an AppendEntries answer must not reach raft yet: see
 * node_arm_term_entry. */
static bool node_hold_result(const struct ck_node *n, const struct raft_message *msg)
{
    const struct raft *r = &n->raft;
    return msg->type == RAFT_IO_APPEND_ENTRIES_RESULT &&
           ck_node_hold_result(r->state, msg->append_entries_result.term, r->current_term, r->last_stored,
                               n->term_entry_index);
}

static void node_io_tick(struct raft_io *io)
{
    struct ck_node *n = node_of_io(io);
    n->raft_tick(io);
    node_count_elections(n);
    node_check_writes(n);
    node_watch(n);
}

/* Leader stickiness as the Raft thesis states it (section 4.2.3): a server
 * that has heard from its leader within the *minimum* election timeout
 * refuses to vote; after that it votes as usual. raft 0.15 instead refuses
 * while the follower knows a leader at all (recv_request_vote.c), and a
 * follower forgets its leader only when its own *randomized* timer, drawn
 * from [T, 2T], fires and makes it a candidate. So after a leader dies, the
 * first survivor to time out is refused by the others until each of them
 * has timed out too: the election completes at the *last* survivor's timer
 * (the max of the timers, not the min). Measured with
 * tests/bench/cluster_failover.py --only=failover, 3 nodes at T = 300 ms:
 * median 539 ms, max 570 ms, beside etcd's 348 ms median at the same T
 * (etcd's lease is T itself: raft.go, inLease).
 *
 * The receiver decides, with its own clock: a RequestVote reaching a
 * follower whose last contact with the leader (raft's election_timer_start,
 * reset by each AppendEntries or snapshot from the current leader and by
 * each vote granted) is at least election_timeout old goes to raft marked
 * disrupt_leader, the flag raft uses to skip that one check (it has no
 * other effect on the receiving side). Terms, logs and the one vote per
 * term decide the election exactly as before, so safety is unchanged; what
 * changes is only that an idle follower no longer blocks an election the
 * thesis allows. A follower that still hears from a live leader within T
 * (say the candidate alone lost its link) refuses as before, and pre-vote
 * keeps such a candidate from bumping anyone's term. Leaders and candidates
 * are left alone: raft's own checks apply to them. */
bool ck_node_vote_lease_over(int state, raft_id leader, bool leader_closed, raft_time now, raft_time last_contact,
                             unsigned election_timeout)
{
    return state == RAFT_FOLLOWER && leader != 0 &&
           (leader_closed || (now >= last_contact && now - last_contact >= election_timeout));
}

/* Whether the leader this follower knows is the one whose connection closed
 * (node_on_peer_closed), in the same term. */
static bool node_leader_closed(struct ck_node *n)
{
    struct raft *r = &n->raft;
    return n->lost_leader != 0 && r->state == RAFT_FOLLOWER && r->follower_state.current_leader.id == n->lost_leader &&
           r->current_term == n->lost_term;
}

/* Contacts: raft's own traffic as evidence of life. A server that answers
 * AppendEntries (heartbeats included, every heartbeat_timeout) or an
 * InstallSnapshot (answered with an AppendEntriesResult too) is a live
 * follower of this leader, its loop turning and its log reachable; that is
 * stronger evidence than an HTTP heartbeat, and it costs nothing extra. The
 * leader's failure detector reads it (node:configuration()'s `heard`), so
 * that raft members need not heartbeat over HTTP every interval: at 100
 * nodes that was 500 requests a second on the leader. raft 0.15's own
 * recent_recv flag cannot serve: the leader clears it every election
 * timeout, so it says "heard within the last one or two election timeouts"
 * and nothing finer. Requests (votes, pre-votes) do not count: a candidate
 * stuck outside the leader's term sends those, and it is no follower. */
static struct node_contact *node_contact_slot(struct node_contact *t, size_t cap, raft_id id)
{
    size_t i = (size_t)(id * 0x9E3779B97F4A7C15ull) & (cap - 1);
    while (t[i].id != 0 && t[i].id != id) {
        i = (i + 1) & (cap - 1);
    }
    return &t[i];
}

static void node_note_contact(struct ck_node *n, raft_id id, uint64_t now)
{
    if (id == 0) {
        return;
    }
    if ((n->contacts_n + 1) * 2 > n->contacts_cap) {
        /* Grow; past 4096 servers ever seen (ids of long-gone servers pile
         * up in a cluster with churn), start afresh instead: a live server
         * answers again within a heartbeat. */
        size_t cap = n->contacts_cap == 0 ? 16 : n->contacts_cap * 2;
        bool reset = cap > 8192;
        if (reset) {
            cap = 16;
        }
        struct node_contact *t = calloc(cap, sizeof *t);
        if (t == NULL) {
            return;
        }
        size_t used = 0;
        for (size_t i = 0; !reset && i < n->contacts_cap; i++) {
            if (n->contacts[i].id != 0) {
                *node_contact_slot(t, cap, n->contacts[i].id) = n->contacts[i];
                used++;
            }
        }
        free(n->contacts);
        n->contacts = t;
        n->contacts_cap = cap;
        n->contacts_n = used;
    }
    struct node_contact *c = node_contact_slot(n->contacts, n->contacts_cap, id);
    if (c->id == 0) {
        c->id = id;
        n->contacts_n++;
    }
    c->at = now;
}

bool ck_node_last_contact(const struct ck_node *n, raft_id id, uint64_t *ms_ago)
{
    if (n->contacts_cap == 0 || id == 0) {
        return false;
    }
    const struct node_contact *c = node_contact_slot(n->contacts, n->contacts_cap, id);
    if (c->id != id) {
        return false;
    }
    uint64_t now = uv_now(n->loop);
    *ms_ago = now > c->at ? now - c->at : 0;
    return true;
}

static void node_io_recv(struct raft_io *io, struct raft_message *msg)
{
    struct ck_node *n = node_of_io(io);
    if (msg->type == RAFT_IO_APPEND_ENTRIES_RESULT) {
        node_note_contact(n, msg->server_id, uv_now(n->loop));
        if (node_hold_result(n, msg)) {
            n->results_held++; /* An answer owns no buffers: nothing to free. */
            return;
        }
    }
    if (n->lost_leader != 0 && msg->server_id == n->lost_leader &&
        (msg->type == RAFT_IO_APPEND_ENTRIES || msg->type == RAFT_IO_INSTALL_SNAPSHOT)) {
        n->lost_leader = 0; /* It is alive after all (it dialled again). */
    }
    if (msg->type == RAFT_IO_REQUEST_VOTE && !msg->request_vote.disrupt_leader) {
        struct raft *r = &n->raft;
        raft_id leader = r->state == RAFT_FOLLOWER ? r->follower_state.current_leader.id : 0;
        if (ck_node_vote_lease_over(r->state, leader, node_leader_closed(n), r->io->time(r->io),
                                    r->election_timer_start, r->election_timeout)) {
            msg->request_vote.disrupt_leader = true;
            n->votes_after_lease++;
        }
    }
    n->raft_recv(io, msg);
    node_count_elections(n);
    node_watch(n);
}

/* The leader closed the connection this follower dialled to it: its process
 * is gone (a crash or kill closes every socket at once; a graceful stop
 * hands leadership over first), or, rarely, it dropped just that
 * connection. Waiting out the election timeout (a randomized 1-2x
 * ELECTION_TIMEOUT since its last heartbeat) would only confirm what the
 * socket already said, so the follower's election becomes due after a
 * short random delay instead, drawn from [0, 2 x heartbeat timeout) so that
 * the survivors rarely stand at once (a split vote falls back to raft's
 * usual randomized timeouts), and node_io_recv treats this leader's lease
 * as over, so the other survivors, which saw their own connections close,
 * grant the vote at once. This is safe by raft's own rules: the candidate
 * runs pre-vote first, and a follower still hearing from a live leader
 * refuses it without bumping any term; a heartbeat from the leader in the
 * meantime cancels the whole thing (node_io_recv clears lost_leader). The
 * trade-off: a leader that is alive but closed a connection costs one
 * refused pre-vote round, never a leader change.
 *
 * raft 0.15 has no call to start an election on a follower, so this sets
 * the follower's randomized_election_timeout, a field of struct raft in
 * raft.h that raft draws at each heartbeat and reads at each tick
 * (election.c, electionTimerExpired), and ticks raft when the new deadline
 * arrives (an extra tick only re-checks raft's timers). */
static void node_on_lost_timer(uv_timer_t *t)
{
    struct ck_node *n = t->data;
    if (!n->closing && n->started && n->raft_tick != NULL) {
        node_io_tick(&n->io);
    }
}

static void node_on_peer_closed(void *data, raft_id id)
{
    struct ck_node *n = data;
    struct raft *r = &n->raft;
    if (n->closing || !n->started || id == 0 || r->state != RAFT_FOLLOWER ||
        r->follower_state.current_leader.id != id) {
        return;
    }
    n->lost_leader = id;
    n->lost_term = r->current_term;
    n->leaders_lost++;
    unsigned spread = 2 * n->opts.heartbeat_timeout_ms;
    unsigned delay = (unsigned)r->io->random(r->io, 0, (int)(spread ? spread : 1));
    raft_time now = r->io->time(r->io);
    raft_time elapsed = now > r->election_timer_start ? now - r->election_timer_start : 0;
    if (elapsed + delay < r->follower_state.randomized_election_timeout) {
        r->follower_state.randomized_election_timeout = (unsigned)(elapsed + delay);
        uv_timer_start(&n->lost_timer, node_on_lost_timer, delay, 0);
    }
}

/* A message raft sent, copied so that it can go out once more. */
struct node_send {
    struct raft_io_send req; /* Ours, given to raft_uv. */
    struct raft_io_send *orig;
    raft_io_send_cb orig_cb;
    struct ck_node *n;
    struct raft_message msg;
    char *address;
    bool resent;
};

static void node_on_sent(struct raft_io_send *req, int status)
{
    struct node_send *s = req->data;
    struct ck_node *n = s->n;
    if (s->orig != NULL) {
        /* raft only frees its request in these callbacks (election.c,
         * recv_request_vote.c, recv_append_entries.c): telling it now, even
         * of a failure that is retried, changes nothing it relies on. */
        struct raft_io_send *orig = s->orig;
        s->orig = NULL;
        if (s->orig_cb != NULL) {
            s->orig_cb(orig, status);
        }
        node_watch(n);
    }
    if (status == RAFT_IOERR && !s->resent && !n->closing) {
        /* raft_uv has dropped the broken stream before calling back, so this
         * waits in its queue for the new connection (uv_send.c). */
        s->resent = true;
        if (n->io_send(&n->io, &s->req, &s->msg, node_on_sent) == 0) {
            n->resends++;
            return;
        }
    }
    free(s->address);
    free(s);
}

/* raft_uv drops a message whose write failed, and raft sends vote requests,
 * vote answers and append results only once: a lost one costs an election
 * timeout (votes) or a heartbeat (results). A write fails when the peer had
 * closed the connection (a crash and restart: see out_watch_read in
 * ck_transport.c), and then raft_uv dials again; so these small messages,
 * which carry no buffers that raft frees after the callback, are copied
 * and sent once more when their write failed. A duplicate is harmless:
 * votes are counted per voter and results are idempotent. AppendEntries
 * (entries owned by raft's log) and snapshots are not copied; raft sends
 * them again itself at the next heartbeat. */
static int node_io_send(struct raft_io *io, struct raft_io_send *req, const struct raft_message *message,
                        raft_io_send_cb cb)
{
    struct ck_node *n = node_of_io(io);
    switch (message->type) {
    case RAFT_IO_REQUEST_VOTE:
    case RAFT_IO_REQUEST_VOTE_RESULT:
    case RAFT_IO_APPEND_ENTRIES_RESULT:
    case RAFT_IO_TIMEOUT_NOW:
        break;
    default:
        return n->io_send(io, req, message, cb);
    }
    struct node_send *s = calloc(1, sizeof *s);
    char *address = message->server_address ? strdup(message->server_address) : NULL;
    if (s == NULL || (message->server_address != NULL && address == NULL)) {
        free(s);
        free(address);
        return n->io_send(io, req, message, cb);
    }
    s->req.data = s;
    s->orig = req;
    s->orig_cb = cb;
    s->n = n;
    s->msg = *message;
    s->msg.server_address = address;
    s->address = address;
    int rv = n->io_send(io, &s->req, &s->msg, node_on_sent);
    if (rv != 0) {
        free(address);
        free(s);
    }
    return rv;
}

static int node_io_start(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick, raft_io_recv_cb recv)
{
    struct ck_node *n = node_of_io(io);
    n->raft_tick = tick;
    n->raft_recv = recv;
    return n->io_start(io, msecs, node_io_tick, node_io_recv);
}

/* A log write that does not complete: raft 0.15 stops preparing new open
 * segments for good once preparing one failed (a full disk), and the
 * appends queued behind it then wait forever, even after space is freed. A
 * write outstanding this long means the node's storage is gone. */
#define NODE_WRITE_STALL_MS 5000

static void node_check_writes(struct ck_node *n)
{
    uint64_t now = uv_now(n->loop);
    /* A watch tick this late means the process itself stalled (stopped,
     * starved): the writes' completions were not read meanwhile, so their
     * clocks start again instead of failing a healthy disk. */
    bool stalled = n->last_watch != 0 && now - n->last_watch > NODE_WRITE_STALL_MS / 5;
    n->last_watch = now;
    for (size_t i = 0; i < sizeof n->appends / sizeof n->appends[0]; i++) {
        if (stalled && n->appends[i].req != NULL) {
            n->appends[i].since = now;
        }
        if (n->appends[i].req != NULL && now - n->appends[i].since > NODE_WRITE_STALL_MS) {
            char why[sizeof n->errmsg];
            snprintf(why, sizeof why, "a raft log write has not completed for %u ms (is the disk full?)%s%.200s",
                     (unsigned)(now - n->appends[i].since), n->io.errmsg[0] ? ": " : "", n->io.errmsg);
            node_fail(n, why);
            return;
        }
    }
}

/* Whether raft's state, term, leader or configuration moved since the owner
 * was last told: if so, the owner hears of it (CK_NODE_EV_RAFT) on the next
 * loop turn, from node_on_notify. Called after each of raft's tick, receive,
 * append and send callbacks (see node_count_elections for why those see
 * every change) and from inside node_io_append (a leader's new
 * configuration entry); it only compares and arms a timer, so it is safe
 * inside raft's own calls, and no owner code runs there.
 *
 * Before, a 20 ms timer polled raft for these: 50 wakeups a second on every
 * idle node, the largest share of an idle node's wakeups (strace -c on a
 * follower of 30: 475 epoll_waits in 5 s), and up to 20 ms late. The watch
 * timer now only backs this up (watch_interval, default 1 s), for the
 * changes raft makes from raft_uv's own completions. */
static void node_watch(struct ck_node *n)
{
    raft_id leader = 0;
    const char *addr = NULL;
    if (n->closing || !n->started) {
        return;
    }
    raft_leader(&n->raft, &leader, &addr);
    int state = raft_state(&n->raft);
    if (state == RAFT_UNAVAILABLE) {
        /* raft's own message says which error (an entry conflicting with a
         * committed one, a failed term write, ...); the node log shows it. */
        const char *why = raft_errmsg(&n->raft);
        char msg[sizeof n->errmsg];
        snprintf(msg, sizeof msg, "raft stopped after an error%s%.300s", why && why[0] ? ": " : "", why ? why : "");
        node_fail(n, msg);
    }
    if (state != n->seen_state || n->raft.current_term != n->seen_term || leader != n->seen_leader ||
        n->raft.configuration_index != n->seen_conf_index) {
        n->seen_state = state;
        n->seen_term = n->raft.current_term;
        n->seen_leader = leader;
        n->seen_conf_index = n->raft.configuration_index;
        n->raft_dirty = true;
        node_notify_soon(n);
    }
}

static void node_on_watch(uv_timer_t *t)
{
    struct ck_node *n = t->data;
    if (n->closing) {
        return;
    }
    node_check_writes(n);
    node_count_elections(n); /* A leader may step down elsewhere (a failed write's callback). */
    node_watch(n);
}

/* ------------------------------------------------------------------------
 * Lifecycle
 * ------------------------------------------------------------------------ */

static char *node_strdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

struct ck_node *ck_node_new(uv_loop_t *loop, const struct ck_node_options *o, ck_node_event_cb cb, void *data)
{
    struct ck_node *n = calloc(1, sizeof *n);
    if (n == NULL) {
        return NULL;
    }
    n->loop = loop;
    n->opts = *o;
    n->cb = cb;
    n->data = data;
    n->seen_state = -1;
    n->counted_state = RAFT_UNAVAILABLE;
    if (n->opts.election_timeout_ms == 0)
        n->opts.election_timeout_ms = 300;
    if (n->opts.heartbeat_timeout_ms == 0)
        n->opts.heartbeat_timeout_ms = 50;
    if (n->opts.watch_interval_ms == 0)
        n->opts.watch_interval_ms = 1000; /* A backstop only: see node_watch. */
    if (n->opts.segment_size == 0)
        n->opts.segment_size = 1024 * 1024;
    if (n->opts.snapshot_threshold == 0)
        n->opts.snapshot_threshold = 8192;
    if (n->opts.snapshot_trailing == 0)
        n->opts.snapshot_trailing = 128;
    size_t dlen = strlen(o->data_dir ? o->data_dir : ".") + sizeof "/raft";
    n->dir = malloc(dlen);
    n->raft_addr = node_strdup(o->raft_addr);
    n->raft_bind = node_strdup(o->raft_bind);
    n->token = node_strdup(o->token);
    if (n->dir == NULL || n->raft_addr == NULL || (o->raft_bind && n->raft_bind == NULL) ||
        (o->token && n->token == NULL)) {
        free(n->dir);
        free(n->raft_addr);
        free(n->raft_bind);
        free(n->token);
        free(n);
        return NULL;
    }
    snprintf(n->dir, dlen, "%s/raft", o->data_dir ? o->data_dir : ".");
    n->opts.data_dir = NULL;
    n->opts.raft_addr = n->raft_addr;
    n->opts.raft_bind = n->raft_bind;
    n->opts.token = n->token;
    if (o->tls_server != NULL) {
        SSL_CTX_up_ref(o->tls_server);
    }
    if (o->tls_client != NULL) {
        SSL_CTX_up_ref(o->tls_client);
    }
    ck_fsm_init(&n->fsm, &n->f);
    n->f.raft = &n->raft;
    n->f.on_change = node_on_fsm_change;
    n->f.on_kv_change = node_on_fsm_kv_change;
    n->f.data = n;
    uv_timer_init(loop, &n->notify_timer);
    uv_timer_init(loop, &n->watch_timer);
    uv_timer_init(loop, &n->reap_timer);
    uv_timer_init(loop, &n->lost_timer);
    n->lost_timer.data = n;
    n->notify_timer.data = n;
    n->watch_timer.data = n;
    n->reap_timer.data = n;
    n->next = node_list;
    node_list = n;
    return n;
}

void ck_node_set_tls(struct ck_node *n, SSL_CTX *server, SSL_CTX *client)
{
    if (server != NULL) {
        SSL_CTX_up_ref(server);
    }
    if (client != NULL) {
        SSL_CTX_up_ref(client);
    }
    SSL_CTX_free(n->opts.tls_server);
    SSL_CTX_free(n->opts.tls_client);
    n->opts.tls_server = server;
    n->opts.tls_client = client;
    if (n->transport_inited) {
        ck_transport_set_tls(&n->transport, server, client);
    }
}

void *ck_node_data(const struct ck_node *n)
{
    return n->data;
}

const char *ck_node_errmsg(const struct ck_node *n)
{
    return n->errmsg;
}

uv_loop_t *ck_node_loop(const struct ck_node *n)
{
    return n->loop;
}

const struct ck_state *ck_node_state(const struct ck_node *n)
{
    return &n->f.state;
}

void ck_node_take_changes(struct ck_node *n, struct ck_changes *out)
{
    ck_state_take_changes(&n->f.state, out);
}

static int mkdir_p(const char *path)
{
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof buf) {
        return CK_EINVAL;
    }
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
                return -errno;
            }
            *p = '/';
        }
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
        return -errno;
    }
    return 0;
}

/* Why listening on @addr ("ip:port") fails, found by trying it: raft 0.15
 * reports a failed listen only as RAFT_IOERR. Returns 0 or a libuv code. */
static int node_probe_listen(const char *addr)
{
    char host[256];
    struct sockaddr_storage ss;
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || (size_t)(colon - addr) >= sizeof host) {
        return 0;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    int port = atoi(colon + 1);
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0) {
        return 0;
    }
    uv_loop_t loop;
    uv_tcp_t tcp;
    if (uv_loop_init(&loop) != 0) {
        return 0;
    }
    uv_tcp_init(&loop, &tcp);
    int rv = uv_tcp_bind(&tcp, (struct sockaddr *)&ss, 0);
    if (rv == 0) {
        rv = uv_listen((uv_stream_t *)&tcp, 1, NULL);
    }
    uv_close((uv_handle_t *)&tcp, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return rv;
}

int ck_node_start(struct ck_node *n)
{
    int rv;

    if (n->started || n->closing) {
        return CK_EINVAL;
    }
    /* A raft port that another process holds fails here, before the data dir
     * is created or bootstrapped: raft_start would fail the same way, but only
     * after raft_bootstrap had written a first segment with this address, and
     * a fixed retry (a new RAFT_ADDR) would then start from that leftover.
     * The probe binds and closes at once (libuv sets SO_REUSEADDR, so a port
     * in TIME_WAIT passes); a port taken between the probe and raft_start
     * still fails in raft_start below. Hostnames are not probed. */
    const char *listen_addr = n->raft_bind ? n->raft_bind : n->raft_addr;
    if ((rv = node_probe_listen(listen_addr)) != 0) {
        snprintf(n->errmsg, sizeof n->errmsg, "raft start on %s: listen on %s: %s", n->raft_addr, listen_addr,
                 uv_strerror(rv));
        return CK_ERAFT; /* The same error raft_start gives, earlier. */
    }
    if ((rv = mkdir_p(n->dir)) != 0) {
        snprintf(n->errmsg, sizeof n->errmsg, "create %s: %s", n->dir, ck_strerror(rv));
        return rv;
    }
    /* Our transport, not raft_uv_tcp: it authenticates every connection
     * when a token is set and resolves hostnames (ck_transport.h). */
    char log_context[300];
    snprintf(log_context, sizeof log_context, "raft %s", n->raft_addr);
    struct ck_transport_options topts = {
        .token = n->token,
        .bind_address = n->raft_bind,
        .handshake_timeout_ms = n->opts.handshake_timeout_ms,
        .log_context = log_context,
        .peer_closed = node_on_peer_closed,
        .peer_closed_data = n,
        .tls_server = n->opts.tls_server,
        .tls_client = n->opts.tls_client,
    };
    if ((rv = ck_transport_init(&n->transport, n->loop, &topts)) != 0) {
        snprintf(n->errmsg, sizeof n->errmsg, "raft transport: %s", n->transport.errmsg);
        return rv == RAFT_INVALID ? CK_EINVAL : node_err(rv);
    }
    n->transport_inited = true;
    if ((rv = raft_uv_init(&n->io, n->loop, n->dir, &n->transport)) != 0) {
        snprintf(n->errmsg, sizeof n->errmsg, "raft io: %s", n->io.errmsg);
        return node_err(rv);
    }
    n->io_inited = true;
    /* Small preallocated segments: many nodes share one machine in tests and
     * demos, and the log is small (the state is a few commands per change). */
    raft_uv_set_segment_size(&n->io, n->opts.segment_size);
    raft_uv_set_connect_retry_delay(&n->io, 100);
    n->io_append = n->io.append;
    n->io.append = node_io_append;
    n->io_start = n->io.start;
    n->io.start = node_io_start;
    n->io_send = n->io.send;
    n->io.send = node_io_send;

    if ((rv = raft_init(&n->raft, &n->io, &n->fsm, n->opts.raft_id, n->raft_addr)) != 0) {
        snprintf(n->errmsg, sizeof n->errmsg, "raft init: %s", raft_errmsg(&n->raft));
        return node_err(rv);
    }
    n->raft_inited = true;
    n->raft.data = n;
    raft_set_election_timeout(&n->raft, n->opts.election_timeout_ms);
    raft_set_heartbeat_timeout(&n->raft, n->opts.heartbeat_timeout_ms);
    raft_set_pre_vote(&n->raft, true);
    raft_set_snapshot_threshold(&n->raft, n->opts.snapshot_threshold);
    n->snapshot_threshold_set = n->opts.snapshot_threshold;
    raft_set_snapshot_trailing(&n->raft, n->opts.snapshot_trailing);

    if (n->opts.bootstrap) {
        struct raft_configuration conf;
        raft_configuration_init(&conf);
        rv = raft_configuration_add(&conf, n->opts.raft_id, n->raft_addr, RAFT_VOTER);
        if (rv == 0) {
            rv = raft_bootstrap(&n->raft, &conf);
        }
        raft_configuration_close(&conf);
        if (rv != 0 && rv != RAFT_CANTBOOTSTRAP) { /* CANTBOOTSTRAP: we have data. */
            snprintf(n->errmsg, sizeof n->errmsg, "raft bootstrap: %s", raft_errmsg(&n->raft));
            return node_err(rv);
        }
    }
    if ((rv = raft_start(&n->raft)) != 0) {
        /* raft 0.15 leaves its errmsg empty when the transport's listen
         * fails inside raft_start; the io's message or the code says why. */
        const char *why = raft_errmsg(&n->raft);
        if ((why == NULL || why[0] == '\0') && n->transport.errmsg[0] != '\0') {
            why = n->transport.errmsg; /* ck_transport says why listen failed. */
        }
        if (why == NULL || why[0] == '\0') {
            why = n->io.errmsg[0] != '\0' ? n->io.errmsg : raft_strerror(rv);
            int probe = rv == RAFT_IOERR ? node_probe_listen(n->raft_bind ? n->raft_bind : n->raft_addr) : 0;
            if (probe != 0) {
                why = uv_strerror(probe);
            }
        }
        snprintf(n->errmsg, sizeof n->errmsg, "raft start on %s: %s", n->raft_addr, why);
        return node_err(rv);
    }
    n->started = true;
    node_count_elections(n); /* The only voter elects itself inside raft_start. */
    uv_timer_start(&n->watch_timer, node_on_watch, 0, n->opts.watch_interval_ms);
    if (n->f.state.index > 0) {
        node_mark_dirty(n); /* State was loaded from disk. */
    }
    return 0;
}

void ck_node_counters(const struct ck_node *n, struct ck_node_counters *out)
{
    out->commit = &n->commit_time;
    out->apply = &n->f.apply_time;
    out->elections = n->elections;
    out->elections_won = n->elections_won;
    struct ck_transport_stats ts = {0};
    if (n->transport_inited) {
        ck_transport_stats(&n->transport, &ts);
    }
    out->auth_failures = ts.auth_failures;
    out->tls_failures = ts.tls_failures;
    out->votes_after_lease = n->votes_after_lease;
    out->leaders_lost = n->leaders_lost;
    out->resends = n->resends;
    out->results_held = n->results_held;
}

const struct raft_configuration *ck_node_configuration(const struct ck_node *n)
{
    return &n->raft.configuration;
}

const struct raft_progress *ck_node_progress(const struct ck_node *n)
{
    if (!n->raft_inited || n->raft.state != RAFT_LEADER) {
        return NULL;
    }
    return n->raft.leader_state.progress;
}

void ck_node_raft_info(struct ck_node *n, struct ck_raft_info *out)
{
    raft_id leader = 0;
    const char *addr = NULL;
    memset(out, 0, sizeof *out);
    out->my_role = -1;
    if (!n->raft_inited) {
        out->state = RAFT_UNAVAILABLE;
        return;
    }
    raft_leader(&n->raft, &leader, &addr);
    out->state = raft_state(&n->raft);
    out->term = n->raft.current_term;
    out->leader_id = leader;
    out->leader_addr = addr;
    out->commit_index = n->raft.commit_index;
    out->last_applied = n->raft.last_applied;
    out->last_index = raft_last_index(&n->raft);
    out->snapshot_index = n->raft.log.snapshot.last_index;
    for (unsigned i = 0; i < n->raft.configuration.n; i++) {
        const struct raft_server *s = &n->raft.configuration.servers[i];
        out->voters += s->role == RAFT_VOTER;
        out->standbys += s->role == RAFT_STANDBY;
        out->spares += s->role == RAFT_SPARE;
        if (s->id == n->opts.raft_id) {
            out->my_role = s->role;
        }
    }
}

/* ------------------------------------------------------------------------
 * Proposals and membership
 * ------------------------------------------------------------------------ */

/* raft's callbacks for the requests below run inside raft: while a leader
 * steps down, raft fails its pending requests from the middle of its own
 * state change, and an owner that proposes again from there re-enters
 * raft_apply on a half-cleared leader (a paused leader that resumed crashed
 * that way). So a callback only records the outcome and queues the request;
 * node_on_notify delivers the queue on the next loop turn, after the APPLIED
 * event, in completion order. */
static void node_queue_done(struct node_req *r, int status, uint64_t index)
{
    struct ck_node *n = r->node;
    r->status = status;
    r->index = index;
    r->next = NULL;
    if (n->done_tail != NULL) {
        n->done_tail->next = r;
    } else {
        n->done_head = r;
    }
    n->done_tail = r;
    if (!n->closing && !uv_is_active((uv_handle_t *)&n->notify_timer)) {
        uv_timer_start(&n->notify_timer, node_on_notify, 0, 0);
    }
}

/* Calls the owner back for every queued request. Requests that complete
 * while this runs (an owner proposing from its callback) wait for the next
 * turn. */
static void node_deliver(struct ck_node *n)
{
    struct node_req *r = n->done_head;
    n->done_head = n->done_tail = NULL;
    while (r != NULL) {
        struct node_req *next = r->next;
        if (r->apply_cb != NULL) {
            r->apply_cb(r->data, r->status, r->index);
        } else {
            r->change_cb(r->data, r->status);
        }
        free(r);
        r = next;
    }
}

static struct node_req *req_new(struct ck_node *n, ck_node_apply_cb acb, ck_node_change_cb ccb, void *data)
{
    struct node_req *r = calloc(1, sizeof *r);
    if (r != NULL) {
        r->node = n;
        r->apply_cb = acb;
        r->change_cb = ccb;
        r->data = data;
    }
    return r;
}

static void node_on_applied(struct raft_apply *req, int status, void *result)
{
    struct node_req *r = req->data;
    if (status == 0) { /* Committed and applied: what a proposer waits for. */
        ck_hist_observe(&r->node->commit_time, uv_hrtime() - r->t0);
    }
    node_queue_done(r, status != 0 ? node_err(status) : (int)(intptr_t)result, req->index);
}

int ck_node_propose(struct ck_node *n, const void *buf, size_t len, ck_node_apply_cb cb, void *data)
{
    struct ck_cmd c;
    int rv;

    if (!n->started || n->closing) {
        return CK_ECLOSED;
    }
    if (raft_state(&n->raft) != RAFT_LEADER) {
        return CK_ENOTLEADER;
    }
    if ((rv = ck_cmd_decode(&c, buf, len)) != 0) { /* Refuse garbage before it reaches the log. */
        ck_cmd_free(&c);
        return rv;
    }
    ck_cmd_free(&c);
    /* Pad to a multiple of 8 bytes: see the raft notes in ck_node.h. */
    size_t padded = (len + 7) & ~(size_t)7;
    struct node_req *r = req_new(n, cb, NULL, data);
    struct raft_buffer b = {raft_malloc(padded), padded};
    if (r == NULL || b.base == NULL) {
        free(r);
        raft_free(b.base);
        return CK_ENOMEM;
    }
    memcpy(b.base, buf, len);
    memset((char *)b.base + len, 0, padded - len);
    r->apply.data = r;
    r->t0 = uv_hrtime();
    if ((rv = raft_apply(&n->raft, &r->apply, &b, 1, node_on_applied)) != 0) {
        raft_free(b.base);
        free(r);
        return node_err(rv);
    }
    return 0;
}

static void node_on_change(struct raft_change *req, int status)
{
    node_queue_done(req->data, node_err(status), 0);
}

static int change_check(struct ck_node *n)
{
    if (!n->started || n->closing) {
        return CK_ECLOSED;
    }
    return raft_state(&n->raft) == RAFT_LEADER ? 0 : CK_ENOTLEADER;
}

static void node_on_transfer(struct raft_transfer *req)
{
    struct node_req *r = req->data;
    raft_id leader = 0;
    const char *addr = NULL;
    raft_leader(&r->node->raft, &leader, &addr);
    node_queue_done(r, leader != r->node->opts.raft_id ? 0 : CK_EBUSY, 0);
}

enum { CHANGE_ADD, CHANGE_ASSIGN, CHANGE_REMOVE, CHANGE_TRANSFER };

/* One membership request; the public wrappers below only pick the kind. */
static int node_change(struct ck_node *n, int kind, uint64_t id, const char *address, int role, ck_node_change_cb cb,
                       void *data)
{
    static const char *const names[] = {"raft add", "raft assign", "raft remove", "raft transfer"};
    struct node_req *c;
    int rv = change_check(n);
    if (rv != 0) {
        return rv;
    }
    if ((c = req_new(n, NULL, cb, data)) == NULL) {
        return CK_ENOMEM;
    }
    c->change.data = c;
    switch (kind) {
    case CHANGE_ADD:
        rv = raft_add(&n->raft, &c->change, id, address, node_on_change);
        break;
    case CHANGE_ASSIGN:
        rv = raft_assign(&n->raft, &c->change, id, role, node_on_change);
        break;
    case CHANGE_REMOVE:
        rv = raft_remove(&n->raft, &c->change, id, node_on_change);
        break;
    default:
        c->transfer.data = c;
        rv = raft_transfer(&n->raft, &c->transfer, id, node_on_transfer);
        break;
    }
    if (rv != 0) {
        snprintf(n->errmsg, sizeof n->errmsg, "%s: %s", names[kind], raft_errmsg(&n->raft));
        free(c);
        return node_err(rv);
    }
    return 0;
}

int ck_node_add(struct ck_node *n, uint64_t id, const char *address, ck_node_change_cb cb, void *data)
{
    return node_change(n, CHANGE_ADD, id, address, 0, cb, data);
}

int ck_node_assign(struct ck_node *n, uint64_t id, int role, ck_node_change_cb cb, void *data)
{
    return node_change(n, CHANGE_ASSIGN, id, NULL, role, cb, data);
}

int ck_node_remove(struct ck_node *n, uint64_t id, ck_node_change_cb cb, void *data)
{
    return node_change(n, CHANGE_REMOVE, id, NULL, 0, cb, data);
}

int ck_node_transfer(struct ck_node *n, uint64_t id, ck_node_change_cb cb, void *data)
{
    return node_change(n, CHANGE_TRANSFER, id, NULL, 0, cb, data);
}

/* ------------------------------------------------------------------------
 * Close: timers, then raft, then raft_uv's io and transport, then free.
 * ------------------------------------------------------------------------ */

static void node_finish_close(struct ck_node *n)
{
    if (--n->pending_closes > 0) {
        return;
    }
    /* raft is closed: requests it cancelled while closing get their
     * callbacks now (CK_ECANCELED), before the owner hears CLOSED. */
    node_deliver(n);
    n->cb(n, CK_NODE_EV_CLOSED);
    ck_fsm_close(&n->f);
    for (struct ck_node **p = &node_list; *p != NULL; p = &(*p)->next) {
        if (*p == n) {
            *p = n->next;
            break;
        }
    }
    SSL_CTX_free(n->opts.tls_server);
    SSL_CTX_free(n->opts.tls_client);
    free(n->contacts);
    free(n->dir);
    free(n->raft_addr);
    free(n->raft_bind);
    if (n->token != NULL) {
        explicit_bzero(n->token, strlen(n->token));
        free(n->token);
    }
    free(n);
}

static void node_on_timer_closed(uv_handle_t *h)
{
    node_finish_close(h->data);
}

/* raft 0.15 quirk (canonical/raft#341, fixed later upstream): raft's close
 * callback can fire while an open segment's writer is still closing, and
 * that writer's own close callback then runs raft_uv's close check once
 * more, which calls raft's close path a second time: it frees the server
 * address, the log and the configuration again and calls our close
 * callback again, all on memory we would already have freed (seen as a
 * SIGSEGV in ioCloseCb in a process that stops nodes under CPU load). So
 * once raft says it is closed: its freed fields are reset so that a second
 * pass frees nothing, the second callback is a no-op, and the raft_uv
 * instance and this node stay allocated until the loop has no handle left
 * that is closing and no check handle active (raft's writers wait for the
 * thread pool with one), or NODE_REAP_MS passed. */
#define NODE_REAP_MS 10000

static void node_on_raft_closed_again(struct raft *r)
{
    (void)r;
}

static void node_count_closing(uv_handle_t *h, void *arg)
{
    struct ck_node *n = ((void **)arg)[0];
    unsigned *busy = ((void **)arg)[1];
    if (h == (uv_handle_t *)&n->reap_timer) {
        return;
    }
    if (uv_is_closing(h) || (h->type == UV_CHECK && uv_is_active(h))) {
        (*busy)++;
    }
}

static void node_on_reap(uv_timer_t *t)
{
    struct ck_node *n = t->data;
    unsigned busy = 0;
    void *arg[2] = {n, &busy};
    uv_walk(n->loop, node_count_closing, arg);
    if (busy > 0 && uv_now(n->loop) < n->reap_deadline) {
        uv_timer_start(&n->reap_timer, node_on_reap, 1, 0);
        return;
    }
    raft_uv_close(&n->io);
    ck_transport_close(&n->transport);
    uv_close((uv_handle_t *)&n->reap_timer, node_on_timer_closed);
}

static void node_on_raft_closed(struct raft *r)
{
    struct ck_node *n = r->data;
    r->address = NULL;
    memset(&r->log, 0, sizeof r->log);
    raft_configuration_init(&r->configuration);
    r->close_cb = node_on_raft_closed_again;
    n->reap_deadline = uv_now(n->loop) + NODE_REAP_MS;
    uv_timer_start(&n->reap_timer, node_on_reap, 0, 0);
}

/* raft 0.15 quirk: raft_close on a leader whose log writes are still in
 * flight crashes. raft_close first clears the leader state (a union shared
 * with the follower state), then closes the io, which cancels the pending
 * writes; their callback (appendLeaderCb) looks the entry's request up in
 * leader_state.requests, which is no longer a queue, and dereferences
 * garbage (seen in tests/unit/test_node.c: close right after proposing).
 * So close waits, a bounded time, until raft has stored everything it
 * appended; no new proposal is accepted meanwhile. */
#define NODE_CLOSE_DRAIN_MS 2000

static void node_close_now(struct ck_node *n);

static bool node_writes_in_flight(struct ck_node *n)
{
    return n->raft_inited && n->started && raft_state(&n->raft) == RAFT_LEADER &&
           n->raft.last_stored < raft_last_index(&n->raft);
}

static void node_on_close_wait(uv_timer_t *t)
{
    struct ck_node *n = t->data;
    if (node_writes_in_flight(n) && uv_now(n->loop) < n->close_deadline) {
        uv_timer_start(&n->watch_timer, node_on_close_wait, 1, 0);
        return;
    }
    node_close_now(n);
}

void ck_node_close(struct ck_node *n)
{
    if (n->closing) {
        return;
    }
    n->closing = true;
    if (node_writes_in_flight(n)) {
        n->close_deadline = uv_now(n->loop) + NODE_CLOSE_DRAIN_MS;
        uv_timer_stop(&n->notify_timer);
        uv_timer_start(&n->watch_timer, node_on_close_wait, 1, 0);
        return;
    }
    node_close_now(n);
}

static void node_close_now(struct ck_node *n)
{
    n->pending_closes = 4; /* Three timers, and the reap timer once raft is done. */
    uv_close((uv_handle_t *)&n->lost_timer, node_on_timer_closed);
    uv_close((uv_handle_t *)&n->notify_timer, node_on_timer_closed);
    uv_close((uv_handle_t *)&n->watch_timer, node_on_timer_closed);
    if (n->raft_inited) {
        n->raft.data = n;
        raft_close(&n->raft, node_on_raft_closed);
        return;
    }
    /* raft_init never succeeded: release what was set up before it (the
     * reap timer's close is the third pending close). */
    uv_close((uv_handle_t *)&n->reap_timer, node_on_timer_closed);
    if (n->io_inited) {
        raft_uv_close(&n->io);
    }
    if (n->transport_inited) {
        ck_transport_close(&n->transport);
    }
}

/* ---- Quorum recovery (ck_node_recover) ---- */

static int recover_fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
    (void)fsm, (void)buf, (void)result;
    return RAFT_INVALID; /* Never called: raft does not start. */
}

static int recover_fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n)
{
    (void)fsm, (void)bufs, (void)n;
    return RAFT_INVALID;
}

static int recover_fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    (void)fsm, (void)buf;
    return RAFT_INVALID;
}

static void recover_on_closed_again(struct raft *r)
{
    (void)r;
}

static void recover_on_closed(struct raft *r)
{
    /* raft 0.15 may call the close callback twice (canonical/raft#341, see
     * node_on_raft_closed): only the first one counts. */
    *(bool *)r->data = true;
    r->close_cb = recover_on_closed_again;
}

int ck_node_recover(const char *dir, uint64_t id, const char *address, unsigned n, const uint64_t *ids,
                    const char *const *addrs, char *errmsg, size_t errlen)
{
    uv_loop_t loop;
    struct raft_uv_transport transport;
    struct raft_io io;
    struct raft_fsm fsm = {
        .version = 1, .apply = recover_fsm_apply, .snapshot = recover_fsm_snapshot, .restore = recover_fsm_restore};
    struct raft r;
    struct raft_configuration conf;
    bool closed = false;
    int rv;

    errmsg[0] = '\0';
    if (n == 0) {
        snprintf(errmsg, errlen, "recover: the new configuration needs at least one voter");
        return CK_EINVAL;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(errmsg, errlen, "recover: %s is not a raft data directory", dir);
        return CK_EINVAL;
    }
    if ((rv = uv_loop_init(&loop)) != 0) {
        snprintf(errmsg, errlen, "recover: loop: %s", uv_strerror(rv));
        return CK_ERAFT;
    }
    /* raft_uv wants a transport; nothing connects or listens (raft never
     * starts), so raft's plain TCP one is enough. */
    if ((rv = raft_uv_tcp_init(&transport, &loop)) != 0) {
        snprintf(errmsg, errlen, "recover: transport: %s", raft_strerror(rv));
        uv_loop_close(&loop);
        return node_err(rv);
    }
    if ((rv = raft_uv_init(&io, &loop, dir, &transport)) != 0) {
        snprintf(errmsg, errlen, "recover: raft io on %s: %s", dir, io.errmsg);
        raft_uv_tcp_close(&transport);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        return node_err(rv);
    }
    rv = raft_init(&r, &io, &fsm, id, address);
    if (rv != 0) {
        snprintf(errmsg, errlen, "recover: raft init on %s: %s", dir, raft_errmsg(&r));
        raft_uv_close(&io);
        raft_uv_tcp_close(&transport);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        return node_err(rv);
    }
    r.data = &closed;
    raft_configuration_init(&conf);
    for (unsigned i = 0; i < n && rv == 0; i++) {
        rv = raft_configuration_add(&conf, ids[i], addrs[i], RAFT_VOTER);
    }
    if (rv == 0) {
        rv = raft_recover(&r, &conf);
        if (rv != 0) {
            snprintf(errmsg, errlen, "recover: %s: %s", dir,
                     raft_errmsg(&r)[0] != '\0' ? raft_errmsg(&r) : raft_strerror(rv));
        }
    } else {
        snprintf(errmsg, errlen, "recover: configuration: %s", raft_strerror(rv));
    }
    raft_configuration_close(&conf);
    raft_close(&r, recover_on_closed);
    for (int i = 0; i < 1000 && !closed; i++) {
        uv_run(&loop, UV_RUN_ONCE);
    }
    raft_uv_close(&io);
    raft_uv_tcp_close(&transport);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) {
        uv_print_all_handles(&loop, stderr);
    }
    return rv == 0 ? 0 : node_err(rv);
}
