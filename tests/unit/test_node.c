/*
 * Unit tests for ck_node on a real libuv loop with real raft_uv over
 * 127.0.0.1: two nodes in one process, one loop.
 *
 * What they show: completion callbacks never run inside raft. A leader that
 * loses its quorum fails its pending proposals while it steps down; an owner
 * that proposes again from such a callback must get CK_ENOTLEADER, not
 * re-enter raft_apply on a half-cleared leader (which crashed the node when
 * the callback ran inside raft). Also: callbacks never run inside the call
 * that started the request, a proposal's callback comes after the APPLIED
 * event that shows its effect, and close delivers what raft cancelled
 * before CLOSED. And the counters behind /metrics: elections, commit and
 * apply times.
 *
 * Every wait is bounded (WAIT_MS of loop time) and waits on a condition.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ck_buf.h"
#include "ck_common.h"
#include "ck_node.h"
#include "ck_state.h"

#define WAIT_MS 20000
#define MAX_PENDING 64

struct peer {
    struct ck_node *node;
    char dir[64];
    char addr[32];
    uint64_t id;
    unsigned applied_events;
    bool closed;
};

struct fixture {
    uv_loop_t loop;
    struct peer p[2];
    /* Proposal bookkeeping. */
    unsigned started, done, failed_lost, reproposed, repropose_notleader;
    unsigned inside_call; /* Callbacks seen while a ck_node call was running. */
    bool in_call;
    int last_status;
    unsigned events_at_done; /* APPLIED events seen when the callback ran. */
    bool repropose;          /* Propose again from failure callbacks. */
    unsigned changes_done;
    int change_status;
};

static struct fixture *F;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static void on_event(struct ck_node *n, int ev)
{
    struct peer *p = ck_node_data(n);
    if (ev == CK_NODE_EV_APPLIED) {
        p->applied_events++;
    } else if (ev == CK_NODE_EV_CLOSED) {
        p->closed = true;
    }
}

/* Runs the loop until @pred holds or WAIT_MS of loop time passed. */
static bool run_until(bool (*pred)(void))
{
    uint64_t deadline = uv_now(&F->loop) + WAIT_MS;
    while (!pred()) {
        if (uv_now(&F->loop) > deadline) {
            return false;
        }
        uv_run(&F->loop, UV_RUN_ONCE);
    }
    return true;
}

static void peer_start(struct peer *p, const char *name, bool bootstrap)
{
    snprintf(p->dir, sizeof p->dir, "/tmp/ck-test-node-XXXXXX");
    assert_non_null(mkdtemp(p->dir));
    snprintf(p->addr, sizeof p->addr, "127.0.0.1:%d", free_port());
    p->id = ck_node_raft_id(name);
    struct ck_node_options o = {
        .data_dir = p->dir,
        .raft_addr = p->addr,
        .raft_id = p->id,
        .bootstrap = bootstrap,
        .election_timeout_ms = 100,
        .heartbeat_timeout_ms = 20,
        .watch_interval_ms = 5,
    };
    p->node = ck_node_new(&F->loop, &o, on_event, p);
    assert_non_null(p->node);
    assert_int_equal(ck_node_start(p->node), 0);
}

static void rm_rf(const char *dir)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static bool p0_leads(void)
{
    struct ck_raft_info i;
    ck_node_raft_info(F->p[0].node, &i);
    return i.state == RAFT_LEADER;
}

static bool p0_follows(void)
{
    return !p0_leads();
}

static void on_change(void *data, int status)
{
    (void)data;
    if (F->in_call) {
        F->inside_call++;
    }
    F->change_status = status;
    F->changes_done++;
}

static unsigned want_changes;
static bool changes_reached(void)
{
    return F->changes_done >= want_changes;
}

static bool p1_caught_up(void)
{
    struct ck_raft_info a, b;
    ck_node_raft_info(F->p[0].node, &a);
    ck_node_raft_info(F->p[1].node, &b);
    return b.last_applied >= a.commit_index && b.term == a.term && b.leader_id == F->p[0].id;
}

static int setup(void **state)
{
    F = calloc(1, sizeof *F);
    assert_int_equal(uv_loop_init(&F->loop), 0);
    peer_start(&F->p[0], "node-a", true);
    peer_start(&F->p[1], "node-b", false);
    assert_true(run_until(p0_leads));
    /* Make node-b a voter: from now on node-a needs it to commit. */
    F->in_call = true;
    assert_int_equal(ck_node_add(F->p[0].node, F->p[1].id, F->p[1].addr, on_change, NULL), 0);
    F->in_call = false;
    want_changes = 1;
    assert_true(run_until(changes_reached));
    assert_int_equal(F->change_status, 0);
    F->in_call = true;
    assert_int_equal(ck_node_assign(F->p[0].node, F->p[1].id, RAFT_VOTER, on_change, NULL), 0);
    F->in_call = false;
    want_changes = 2;
    assert_true(run_until(changes_reached));
    assert_int_equal(F->change_status, 0);
    assert_true(run_until(p1_caught_up));
    *state = F;
    return 0;
}

static bool all_closed(void)
{
    return (F->p[0].node == NULL || F->p[0].closed) && (F->p[1].node == NULL || F->p[1].closed);
}

static bool p0_closed(void)
{
    return F->p[0].closed;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++) {
        if (F->p[i].node != NULL && !F->p[i].closed) {
            ck_node_close(F->p[i].node);
        }
    }
    assert_true(run_until(all_closed));
    uv_run(&F->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&F->loop), 0);
    rm_rf(F->p[0].dir);
    rm_rf(F->p[1].dir);
    free(F);
    F = NULL;
    return 0;
}

static void on_applied(void *data, int status, uint64_t index)
{
    (void)data;
    (void)index;
    if (F->in_call) {
        F->inside_call++;
    }
    F->done++;
    F->last_status = status;
    F->events_at_done = F->p[0].applied_events;
    if (status == CK_ENOTLEADER) {
        F->failed_lost++;
        if (F->repropose) {
            /* What the Lua control plane does: try again at once. */
            F->reproposed++;
            F->in_call = true;
            struct ck_wbuf w;
            ck_wbuf_init(&w);
            ck_cmd_encode_flags(&w, 0);
            int rv = ck_node_propose(F->p[0].node, w.p, w.len, on_applied, NULL);
            ck_wbuf_free(&w);
            F->in_call = false;
            if (rv == CK_ENOTLEADER) {
                F->repropose_notleader++;
            } else if (rv == 0) {
                F->started++;
            }
        }
    }
}

static void propose_flags(void)
{
    struct ck_wbuf w;
    ck_wbuf_init(&w);
    ck_cmd_encode_flags(&w, CK_FLAG_REBALANCE_PAUSED);
    F->in_call = true;
    int rv = ck_node_propose(F->p[0].node, w.p, w.len, on_applied, NULL);
    F->in_call = false;
    ck_wbuf_free(&w);
    assert_int_equal(rv, 0);
    F->started++;
}

static bool all_done(void)
{
    return F->done >= F->started;
}

/* A committed proposal calls back after the APPLIED event that shows it,
 * never from inside ck_node_propose. */
static void test_callback_after_applied_event(void **state)
{
    (void)state;
    unsigned before = F->p[0].applied_events;
    propose_flags();
    assert_int_equal(F->done, 0); /* Not from inside the call. */
    assert_true(run_until(all_done));
    assert_int_equal(F->last_status, 0);
    assert_int_equal(F->inside_call, 0);
    assert_true(F->events_at_done > before);
}

static struct ck_node_counters counters(int i)
{
    struct ck_node_counters c;
    ck_node_counters(F->p[i].node, &c);
    return c;
}

static bool p0_stood_again(void)
{
    return counters(0).elections > 1;
}

/* The bootstrap node elected itself once; the joiner never led. A commit is
 * timed on the leader only, its apply on both nodes. */
static void test_counters(void **state)
{
    (void)state;
    struct ck_node_counters a = counters(0), b = counters(1);
    assert_int_equal(a.elections, 1);
    assert_int_equal(a.elections_won, 1);
    assert_int_equal(b.elections_won, 0); /* (A slow loop may let it stand, never win: node-a leads.) */
    assert_int_equal(a.commit->count, 0); /* Membership changes are not proposals. */
    uint64_t applied_a = a.apply->count, applied_b = b.apply->count;
    propose_flags();
    assert_true(run_until(all_done));
    assert_int_equal(F->last_status, 0);
    assert_true(run_until(p1_caught_up));
    assert_int_equal(a.commit->count, 1); /* The pointers stay valid: live figures. */
    assert_int_equal(b.commit->count, 0);
    assert_int_equal(a.apply->count, applied_a + 1);
    assert_int_equal(b.apply->count, applied_b + 1);
}

static uint64_t flush_index; /* The proposal's raft index, for the predicates below. */

static bool leader_appended_barrier(void)
{
    struct ck_raft_info i;
    ck_node_raft_info(F->p[0].node, &i);
    return i.last_index > flush_index;
}

static bool barrier_committed(void)
{
    struct ck_raft_info a, b;
    ck_node_raft_info(F->p[0].node, &a);
    ck_node_raft_info(F->p[1].node, &b);
    return a.commit_index > flush_index && b.last_applied >= flush_index;
}

/* After the leader applies entries it appends one barrier, whose
 * replication tells the follower the new commit index at once (raft 0.15
 * would wait for its next heartbeat); the barrier applies nothing, so it
 * asks for no other one. */
static void test_commit_is_flushed_to_followers(void **state)
{
    (void)state;
    propose_flags();
    assert_true(run_until(all_done));
    assert_int_equal(F->last_status, 0);
    struct ck_raft_info i;
    ck_node_raft_info(F->p[0].node, &i);
    flush_index = i.last_applied; /* The proposal was the last entry applied. */
    assert_true(run_until(leader_appended_barrier));
    assert_true(run_until(barrier_committed));
    /* Once the barrier is committed and applied, nothing follows it. */
    for (int k = 0; k < 50; k++) {
        uv_run(&F->loop, UV_RUN_NOWAIT);
    }
    ck_node_raft_info(F->p[0].node, &i);
    assert_int_equal(i.last_index, flush_index + 1);
}

/* A leader that loses its quorum with proposals pending fails them with
 * CK_ENOTLEADER; proposing again from those callbacks is refused cleanly
 * (raft has stepped down by then) instead of re-entering raft. */
static void test_stepdown_with_pending_proposals(void **state)
{
    (void)state;
    F->repropose = true;
    /* node-a's only follower goes away: nothing can commit any more. */
    ck_node_close(F->p[1].node);
    for (int i = 0; i < MAX_PENDING; i++) {
        propose_flags();
    }
    assert_true(run_until(p0_follows));
    assert_true(run_until(all_done));
    assert_int_equal(F->inside_call, 0);
    assert_true(F->failed_lost > 0);
    assert_int_equal(F->reproposed, F->failed_lost);
    /* Every proposal made from a failure callback was refused: the node no
     * longer led when the callback ran. */
    assert_int_equal(F->repropose_notleader, F->reproposed);
    /* None committed, so none was timed. Alone, node-a stands for election
     * again (and cannot win): each candidacy counts. */
    assert_int_equal(counters(0).commit->count, 0);
    assert_true(run_until(p0_stood_again));
    assert_int_equal(counters(0).elections_won, 1);
}

/* Closing a leader right after proposing (its log writes still in flight,
 * which crashes raft 0.15's close) works, and every proposal's callback is
 * delivered before CLOSED, once. */
/* The Raft thesis's lease (4.2.3), which node_io_recv applies before raft
 * 0.15 sees a vote request: a follower that heard from its leader within
 * the minimum election timeout refuses; after it, or once that leader's
 * connection closed, it may vote. raft 0.15 alone refused until the
 * follower's own randomized timer (1-2x the timeout) fired. */
static void test_vote_lease(void **state)
{
    (void)state;
    /* Within the lease: refuse (raft's own check stays). */
    assert_false(ck_node_vote_lease_over(RAFT_FOLLOWER, 7, false, 1299, 1000, 300));
    /* At and after the minimum timeout: the lease is over. */
    assert_true(ck_node_vote_lease_over(RAFT_FOLLOWER, 7, false, 1300, 1000, 300));
    assert_true(ck_node_vote_lease_over(RAFT_FOLLOWER, 7, false, 1599, 1000, 300));
    /* The leader's connection closed: over at once. */
    assert_true(ck_node_vote_lease_over(RAFT_FOLLOWER, 7, true, 1001, 1000, 300));
    /* No leader known: raft votes anyway, nothing to change. */
    assert_false(ck_node_vote_lease_over(RAFT_FOLLOWER, 0, true, 5000, 1000, 300));
    /* Leaders and candidates keep raft's rules (a leader never hears
     * AppendEntries, so "not heard from" would depose a live leader). */
    assert_false(ck_node_vote_lease_over(RAFT_LEADER, 7, false, 5000, 1000, 300));
    assert_false(ck_node_vote_lease_over(RAFT_CANDIDATE, 7, true, 5000, 1000, 300));
    /* A clock behind the last contact is not a lease gone by. */
    assert_false(ck_node_vote_lease_over(RAFT_FOLLOWER, 7, false, 900, 1000, 300));
}

/* The Figure 8 guard for raft 0.15 (node_arm_term_entry): a leader holds
 * back replication answers of its term until it has stored the first entry
 * of that term, so that raft counts no replicas of an older term's entry. */
static void test_hold_results_until_term_entry_stored(void **state)
{
    (void)state;
    /* A new leader of term 5 whose first entry (index 12) is not stored
     * yet: answers of term 5 (and stale ones) are held. */
    assert_true(ck_node_hold_result(RAFT_LEADER, 5, 5, 11, 12));
    assert_true(ck_node_hold_result(RAFT_LEADER, 4, 5, 11, 12));
    /* Stored: raft counts replicas of index >= 12, an entry of term 5. */
    assert_false(ck_node_hold_result(RAFT_LEADER, 5, 5, 12, 12));
    assert_false(ck_node_hold_result(RAFT_LEADER, 5, 5, 40, 12));
    /* An answer of a later term always reaches raft: the leader steps down. */
    assert_false(ck_node_hold_result(RAFT_LEADER, 6, 5, 11, 12));
    /* No barrier could be appended: hold everything of this term. */
    assert_true(ck_node_hold_result(RAFT_LEADER, 5, 5, 1000000, UINT64_MAX));
    /* Only leaders count replicas. */
    assert_false(ck_node_hold_result(RAFT_FOLLOWER, 5, 5, 11, 12));
    assert_false(ck_node_hold_result(RAFT_CANDIDATE, 5, 5, 11, 12));
}

static void test_close_cancels_pending(void **state)
{
    (void)state;
    for (int i = 0; i < 8; i++) {
        propose_flags();
    }
    ck_node_close(F->p[0].node); /* At once: the log writes are in flight. */
    assert_true(run_until(p0_closed));
    assert_int_equal(F->done, F->started);
    assert_int_equal(F->inside_call, 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* As ckrun does: raft writes to peers that went away. */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_callback_after_applied_event, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_is_flushed_to_followers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stepdown_with_pending_proposals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_cancels_pending, setup, teardown),
        cmocka_unit_test(test_vote_lease),
        cmocka_unit_test(test_hold_results_until_term_entry_stored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
