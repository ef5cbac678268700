/*
 * The default placement policy: pure C (no libuv, no Lua), deterministic.
 *
 * Given the eligible nodes (sorted by id by the caller), their zones and
 * weights, and the current table, it computes a new table with:
 *
 *  - width w = min(RF, holders): every partition gets w distinct owners;
 *  - balance: owned slots per node within one of the node's exact weighted
 *    share of P*w (equal weights: counts differ by at most one), and the same
 *    for primaries over the nodes that may lead;
 *  - minimal movement: slots only leave nodes above their quota and only go
 *    to nodes below it, so on a join or leave the number of changed slots is
 *    the minimum that reaches the quotas, and no partition moves between two
 *    nodes that both stay (a last-resort two-step move exists only for the
 *    rare case where no direct move fits the constraints); primaries change
 *    by promoting an existing owner;
 *  - zones: owners of a partition in distinct zones whenever there are at
 *    least w zones, otherwise no zone more than ceil(w / zones) times, as far
 *    as balance allows (slots are swapped between partitions to fix zones,
 *    which keeps every node's counts);
 *  - holders that may not lead (a node down within its grace period) keep
 *    their slots as replicas but lose their primaries at once.
 *
 * With failover_only (maintenance mode) no slot moves: only primaries are
 * re-elected among current owners, and empty rows are filled.
 */
#ifndef CK_PLACE_H
#define CK_PLACE_H

#include <stdbool.h>
#include <stdint.h>

struct ck_place_node {
    uint32_t zone;   /* Small integer id of the node's zone. */
    uint32_t weight; /* > 0 */
    bool can_lead;   /* May be primary (active or suspect). */
};

struct ck_place_input {
    uint32_t partitions;
    uint32_t replication;
    uint32_t n_nodes;                   /* Holders, 0..65534, sorted by id. */
    const struct ck_place_node *nodes;
    const uint16_t *current;            /* partitions * current_width node indexes, CK_NO_NODE = empty; or NULL. */
    uint32_t current_width;
    bool failover_only;
};

struct ck_place_result {
    uint32_t width;
    uint16_t *rows;         /* partitions * width, primary first; malloc'd, free with ck_place_free. */
    uint32_t moved_slots;   /* (partition, node) slots that are new. */
    uint32_t moved_primaries;
    uint32_t min_moves;     /* Lower bound on moved_slots to reach the quotas from the current table. */
};

/* Returns 0, CK_EINVAL for bad input, or CK_ENOMEM. */
int ck_place_compute(const struct ck_place_input *in, struct ck_place_result *out);
void ck_place_free(struct ck_place_result *r);

/* The weighted quotas: out[i] = node i's share of @total, within one of
 * total * weight_i / sum(weights), each at most @cap; sums to @total when the
 * caps allow. Pure helper, exposed for tests. */
void ck_place_quotas(const struct ck_place_node *nodes, uint32_t n, const bool *mask,
                     uint64_t total, uint32_t cap, uint32_t *out);

#endif
