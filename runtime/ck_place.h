/*
 * The default placement policy: pure C (no libuv, no Lua), deterministic.
 *
 * Given the eligible nodes (sorted by id by the caller), their zones and
 * weights, and the current table, it computes a new table with:
 *
 *  - width w = min(RF, holders): every partition gets w distinct owners;
 *  - balance: owned slots per node within one of the node's exact weighted
 *    share of P*w (capped at P; equal weights: counts differ by at most one),
 *    and the same for primaries over the nodes that may lead;
 *  - minimal movement: slots only leave nodes above their quota and only go
 *    to nodes below it, and which nodes get the rounded-up quota is chosen to
 *    need the fewest moves, so on a join or leave the number of changed slots
 *    is min_moves and no partition moves between two nodes that both stay;
 *    primaries change by promoting an existing owner where that balances;
 *  - zones: owners of a partition in distinct zones whenever there are at
 *    least w zones, otherwise no zone more than ceil(w / zones) times;
 *  - racks (ck_place_node.domain): owners of a partition that share a zone
 *    in distinct racks, as far as swaps that keep every count allow; for
 *    free when the rows involved change anyway, and at two changed slots a
 *    swap when every rack can fit (no rack holding more slots than P);
 *  - holders that may not lead (a node down within its grace period) keep
 *    their slots as replicas but lose their primaries at once;
 *  - a table that already has every slot filled and every node at its quota
 *    keeps all its slots: a crash, a restart or a recomputation moves no data
 *    (only primaries).
 *
 * Where these cannot all hold, this is what yields (tests/unit/
 * test_place_sim.c checks each weaker form, and nothing weaker):
 *
 *  - Zones against counts: a zone whose nodes' quotas add up to more than
 *    P * zmax (zmax = 1 with at least w zones, else ceil(w / zones)) must
 *    exceed zmax in some rows whatever the placement, so the zone rule is
 *    promised only when every zone's slots fit. Otherwise repeats are only
 *    reduced by swaps that move nothing extra.
 *  - Zones against movement: where the rule is promised, it wins. When the
 *    placement with the fewest moves would break it (the current table may
 *    already), owners are swapped between rows, each swap changing two more
 *    slots, between nodes that both stay (a row can take a chain of swaps).
 *  - Tiny tables: a node may already own nearly every row that has room (few
 *    partitions per node, or N close to w); each slot it cannot get there
 *    pushes an old owner out elsewhere, up to two more changed slots each.
 *  - Unequal weights: a leave can lower a staying node's rounded share (or a
 *    join raise it, through the caps), so some slots must then move between
 *    staying nodes; only as many as the shares force.
 *  - Primaries: while nodes are down they keep their slots, so a node can be
 *    the only owner able to lead more rows than its share (and with very few
 *    rows per node the owners can also stand in the way). Primaries are then
 *    as balanced as the owners allow: no primary could move along a chain of
 *    owners from a node above its ceiling (floor) to one below its own.
 *
 * With failover_only (maintenance mode) no slot moves: only primaries are
 * re-elected among current owners, and empty rows are filled.
 *
 * The time is bounded: every search has a budget of O(P * w) steps, and at
 * (P, N) = (65536, 1000) a computation takes about 5 to 15 ms.
 */
#ifndef CK_PLACE_H
#define CK_PLACE_H

#include <stdbool.h>
#include <stdint.h>

#include "ck_buf.h"
#include "ck_state.h"

/* A node without a placement domain: distinct from every other. */
#define CK_PLACE_NO_DOMAIN UINT32_MAX

struct ck_place_node {
    uint32_t zone;   /* Small integer id of the node's zone. */
    uint32_t weight; /* > 0 */
    bool can_lead;   /* May be primary (active or suspect). */
    uint32_t domain; /* Id of its domain within the zone (a rack), or CK_PLACE_NO_DOMAIN. */
};

struct ck_place_input {
    uint32_t partitions;
    uint32_t replication;
    uint32_t n_nodes; /* Holders, 0..65534, sorted by id. */
    const struct ck_place_node *nodes;
    const uint16_t *current; /* partitions * current_width node indexes, CK_NO_NODE = empty; or NULL. */
    uint32_t current_width;
    bool failover_only;
};

struct ck_place_result {
    uint32_t width;
    uint16_t *rows;       /* partitions * width, primary first; malloc'd, free with ck_place_free. */
    uint32_t moved_slots; /* (partition, node) slots that are new. */
    uint32_t moved_primaries;
    uint32_t min_moves; /* The fewest new slots that reach balanced counts from the current table
                         * (each node's need, not which rows have room): moved_slots >= min_moves. */
};

/* Returns 0, CK_EINVAL for bad input, or CK_ENOMEM. */
int ck_place_compute(const struct ck_place_input *in, struct ck_place_result *out);

/* The leader's plan from a committed state, in one call (ck_place_plan.c):
 * the holders (members with a weight that are active or suspect, and down
 * or stopped ones until grace_ms after their status changed, which keep
 * their slots but may not lead), sorted by id, with their zones, weights and
 * domains (the CK_ATTR_DOMAIN attribute: a rack); the current table in their
 * terms; maintenance mode unless @force; and, when the table changes, the
 * TABLE command to propose. */
struct ck_plan_input {
    uint64_t now_ms;   /* The leader's wall clock (that of status_since). */
    uint64_t grace_ms; /* REBALANCE_DELAY. */
    bool force;        /* Ignore maintenance mode. */
};

struct ck_plan {
    bool has_table;     /* The table changes: cmd holds the TABLE command. */
    struct ck_wbuf cmd; /* Free with ck_plan_free. */
    uint32_t moves;     /* Rows that change (owners or primary). */
    uint32_t moved_slots, moved_primaries, min_moves;
    bool has_deadline; /* A holder's grace period ends at deadline_ms. */
    uint64_t deadline_ms;
    uint32_t width; /* Of rows: */
    uint16_t *rows; /* partitions * width positions in the state's node list, primary first
                     * (CK_NO_NODE: empty); when has_table. */
};

/* Returns 0 (then @out says whether the table changes), CK_EINVAL when the
 * state is not initialised or no node may hold partitions, or CK_ENOMEM. */
int ck_place_plan(const struct ck_state *s, const struct ck_plan_input *in, struct ck_plan *out);
void ck_plan_free(struct ck_plan *p);
void ck_place_free(struct ck_place_result *r);

/* The weighted quotas: out[i] = node i's share of @total, within one of
 * total * weight_i / sum(weights), each at most @cap; sums to @total when the
 * caps allow. Pure helper, exposed for tests. */
void ck_place_quotas(const struct ck_place_node *nodes, uint32_t n, const bool *mask, uint64_t total, uint32_t cap,
                     uint32_t *out);

#endif
