/*
 * Unit tests for ck_place: the weighted quotas, and the default policy's
 * promises (ck_place.h) on small tables whose right answer is known: balance
 * of owned slots and primaries, the 3 -> 4 join of issue #4 with its exact
 * numbers, leaves and down nodes with no slot moving between staying nodes,
 * zones, weights, maintenance mode, determinism and argument checks. The
 * random walks over many more cases are in test_place_sim.c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "ck_common.h"
#include "ck_place.h"
#include "ck_state.h"

#define MAXN 64u

/* ------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------ */

/* @n nodes, all able to lead, weight 1, zone i % @zones, no rack. */
static void nodes_init(struct ck_place_node *nodes, uint32_t n, uint32_t zones)
{
    for (uint32_t i = 0; i < n; i++) {
        nodes[i].zone = i % zones;
        nodes[i].weight = 1;
        nodes[i].can_lead = true;
        nodes[i].domain = CK_PLACE_NO_DOMAIN;
    }
}

static struct ck_place_result compute(const struct ck_place_node *nodes, uint32_t n, uint32_t P, uint32_t rf,
                                      const uint16_t *cur, uint32_t cw, bool failover_only)
{
    struct ck_place_input in = {P, rf, n, nodes, cur, cw, failover_only};
    struct ck_place_result out;

    assert_int_equal(ck_place_compute(&in, &out), 0);
    assert_non_null(out.rows);
    return out;
}

/* Every row lists out->width distinct nodes below @n; counts what each node
 * owns and leads. */
static void counts(const struct ck_place_result *r, uint32_t P, uint32_t n, uint32_t *held, uint32_t *prim)
{
    memset(held, 0, n * sizeof *held);
    memset(prim, 0, n * sizeof *prim);
    for (uint32_t p = 0; p < P; p++) {
        const uint16_t *row = r->rows + (size_t)p * r->width;
        for (uint32_t k = 0; k < r->width; k++) {
            assert_true(row[k] < n);
            for (uint32_t j = 0; j < k; j++) {
                assert_int_not_equal(row[j], row[k]);
            }
            held[row[k]]++;
        }
        prim[row[0]]++;
    }
}

static bool row_has(const uint16_t *row, uint32_t width, uint16_t x)
{
    for (uint32_t k = 0; k < width && row[k] != CK_NO_NODE; k++) {
        if (row[k] == x) {
            return true;
        }
    }
    return false;
}

/* max - min of @v over the nodes where @mask is set (all if NULL). */
static uint32_t spread(const uint32_t *v, uint32_t n, const bool *mask)
{
    uint32_t lo = UINT32_MAX, hi = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (mask == NULL || mask[i]) {
            lo = v[i] < lo ? v[i] : lo;
            hi = v[i] > hi ? v[i] : hi;
        }
    }
    return hi - lo;
}

/* The table @r as seen after node @gone leaves: its owners drop out of the
 * rows (which stay compacted, primary first) and the indexes above it shift
 * down by one, as the caller maps ids to indexes. Returns a malloc'd copy. */
static uint16_t *without_node(const struct ck_place_result *r, uint32_t P, uint16_t gone)
{
    uint16_t *cur = malloc((size_t)P * r->width * sizeof *cur);

    assert_non_null(cur);
    for (uint32_t p = 0; p < P; p++) {
        uint32_t k = 0;
        for (uint32_t j = 0; j < r->width; j++) {
            uint16_t x = r->rows[(size_t)p * r->width + j];
            if (x != gone) {
                cur[(size_t)p * r->width + k++] = x > gone ? x - 1 : x;
            }
        }
        while (k < r->width) {
            cur[(size_t)p * r->width + k++] = CK_NO_NODE;
        }
    }
    return cur;
}

/* Slots of @after not in the same row of @before (both P rows, their own
 * widths), counted per node into @gained (if not NULL). */
static uint32_t new_slots(const uint16_t *before, uint32_t bw, const struct ck_place_result *after, uint32_t P,
                          uint32_t *gained)
{
    uint32_t moved = 0;
    for (uint32_t p = 0; p < P; p++) {
        for (uint32_t k = 0; k < after->width; k++) {
            uint16_t x = after->rows[(size_t)p * after->width + k];
            if (!row_has(before + (size_t)p * bw, bw, x)) {
                moved++;
                if (gained != NULL) {
                    gained[x]++;
                }
            }
        }
    }
    return moved;
}

/* The owners of each row in at most @zmax per zone. */
static void assert_zone_limit(const struct ck_place_result *r, const struct ck_place_node *nodes, uint32_t P,
                              uint32_t zmax)
{
    for (uint32_t p = 0; p < P; p++) {
        const uint16_t *row = r->rows + (size_t)p * r->width;
        for (uint32_t k = 0; k < r->width; k++) {
            uint32_t same = 0;
            for (uint32_t j = 0; j < r->width; j++) {
                same += nodes[row[j]].zone == nodes[row[k]].zone;
            }
            assert_in_range(same, 1, zmax);
        }
    }
}

/* ------------------------------------------------------------------------
 * Quotas
 * ------------------------------------------------------------------------ */

/* Equal weights split a total evenly: counts differ by at most one and sum
 * to the total, whether it divides or not. */
static void test_quotas_equal(void **state)
{
    struct ck_place_node nodes[MAXN];
    uint32_t q[MAXN];

    (void)state;
    nodes_init(nodes, 4, 1);
    ck_place_quotas(nodes, 4, NULL, 12, 100, q);
    for (uint32_t i = 0; i < 4; i++) {
        assert_int_equal(q[i], 3);
    }
    ck_place_quotas(nodes, 4, NULL, 10, 100, q);
    assert_int_equal(q[0] + q[1] + q[2] + q[3], 10);
    assert_true(spread(q, 4, NULL) <= 1);
    nodes_init(nodes, 7, 1);
    ck_place_quotas(nodes, 7, NULL, 196, 64, q);
    assert_int_equal(q[0] + q[1] + q[2] + q[3] + q[4] + q[5] + q[6], 196);
    assert_true(spread(q, 7, NULL) <= 1);
}

/* Unequal weights get their exact share within one: 2:1:1 of 10 is
 * 5 / 2.5 / 2.5, and 3:1 of 7 is 5.25 / 1.75. */
static void test_quotas_weighted(void **state)
{
    struct ck_place_node nodes[MAXN];
    uint32_t q[MAXN];

    (void)state;
    nodes_init(nodes, 3, 1);
    nodes[0].weight = 2;
    ck_place_quotas(nodes, 3, NULL, 10, 100, q);
    assert_int_equal(q[0], 5);
    assert_in_range(q[1], 2, 3);
    assert_in_range(q[2], 2, 3);
    assert_int_equal(q[0] + q[1] + q[2], 10);
    nodes_init(nodes, 2, 1);
    nodes[0].weight = 3;
    ck_place_quotas(nodes, 2, NULL, 7, 100, q);
    assert_in_range(q[0], 5, 6);
    assert_in_range(q[1], 1, 2);
    assert_int_equal(q[0] + q[1], 7);
}

/* A node whose share is above the cap (one slot per partition) gets the cap,
 * and the others share the rest by weight. */
static void test_quotas_cap(void **state)
{
    struct ck_place_node nodes[MAXN];
    uint32_t q[MAXN];

    (void)state;
    nodes_init(nodes, 3, 1);
    nodes[0].weight = 4;
    ck_place_quotas(nodes, 3, NULL, 30, 10, q); /* 20 / 5 / 5 before the cap. */
    assert_int_equal(q[0], 10);
    assert_int_equal(q[1], 10);
    assert_int_equal(q[2], 10);
    nodes_init(nodes, 4, 1);
    nodes[0].weight = 10;
    ck_place_quotas(nodes, 4, NULL, 20, 8, q); /* 15.4 capped at 8; 12 left for three. */
    assert_int_equal(q[0], 8);
    assert_int_equal(q[1], 4);
    assert_int_equal(q[2], 4);
    assert_int_equal(q[3], 4);
}

/* Nodes outside the mask get nothing; the total goes to the others. */
static void test_quotas_mask(void **state)
{
    struct ck_place_node nodes[MAXN];
    uint32_t q[MAXN];
    bool mask[4] = {true, false, true, false};

    (void)state;
    nodes_init(nodes, 4, 1);
    ck_place_quotas(nodes, 4, mask, 9, 100, q);
    assert_int_equal(q[1], 0);
    assert_int_equal(q[3], 0);
    assert_int_equal(q[0] + q[2], 9);
    assert_true(q[0] == 4 || q[0] == 5);
}

/* ------------------------------------------------------------------------
 * Fresh placement
 * ------------------------------------------------------------------------ */

/* A fresh table for several shapes (P < N, RF > N, RF 1, zones) has width
 * min(RF, N), distinct owners, owned slots and primaries within one of each
 * other, and counts every slot as moved. */
static void test_fresh_balance(void **state)
{
    static const struct {
        uint32_t P, n, rf, zones;
    } shapes[] = {
        {64, 3, 3, 1},  {64, 4, 3, 2}, {64, 5, 3, 3}, {100, 7, 1, 1}, {4096, 50, 3, 4},
        {16, 40, 3, 4}, {64, 2, 3, 1}, {64, 1, 3, 1}, {97, 9, 5, 3},  {1000, 16, 16, 4},
    };
    struct ck_place_node nodes[MAXN];
    uint32_t held[MAXN], prim[MAXN];

    (void)state;
    for (size_t i = 0; i < CK_ARRAY_SIZE(shapes); i++) {
        uint32_t P = shapes[i].P, n = shapes[i].n, w = shapes[i].rf < n ? shapes[i].rf : n;
        nodes_init(nodes, n, shapes[i].zones);
        struct ck_place_result r = compute(nodes, n, P, shapes[i].rf, NULL, 0, false);
        assert_int_equal(r.width, w);
        counts(&r, P, n, held, prim);
        assert_true(spread(held, n, NULL) <= 1);
        assert_true(spread(prim, n, NULL) <= 1);
        assert_int_equal(r.moved_slots, P * w);
        assert_int_equal(r.min_moves, P * w);
        ck_place_free(&r);
    }
}

/* With RF above the node count every node owns every partition, and each
 * join widens every row by the joiner alone (64 new slots), until RF. */
static void test_rf_above_nodes(void **state)
{
    struct ck_place_node nodes[MAXN];
    uint32_t held[MAXN], prim[MAXN];

    (void)state;
    nodes_init(nodes, 4, 1);
    struct ck_place_result r = compute(nodes, 1, 64, 3, NULL, 0, false);
    assert_int_equal(r.width, 1);
    for (uint32_t n = 2; n <= 4; n++) {
        struct ck_place_result next = compute(nodes, n, 64, 3, r.rows, r.width, false);
        uint32_t w = n < 3 ? n : 3;
        uint32_t gained[MAXN] = {0};
        assert_int_equal(next.width, w);
        counts(&next, 64, n, held, prim);
        if (n <= 3) {
            for (uint32_t i = 0; i < n; i++) {
                assert_int_equal(held[i], 64); /* Everybody owns everything. */
            }
        }
        assert_int_equal(next.moved_slots, new_slots(r.rows, r.width, &next, 64, gained));
        assert_int_equal(next.moved_slots, next.min_moves);
        assert_int_equal(gained[n - 1], next.moved_slots); /* Only the joiner gains. */
        assert_true(spread(prim, n, NULL) <= 1);
        ck_place_free(&r);
        r = next;
    }
    ck_place_free(&r);
}

/* ------------------------------------------------------------------------
 * Joins, leaves, down nodes
 * ------------------------------------------------------------------------ */

/* Issue #4's example: a fourth node joins three (P=64, RF=3): 16 primaries
 * and 48 owned slots each, exactly 48 slots and 16 primaries changed, all
 * of them to the joiner. */
static void test_join_three_to_four(void **state)
{
    struct ck_place_node nodes[MAXN];
    uint32_t held[MAXN], prim[MAXN], gained[MAXN] = {0};

    (void)state;
    nodes_init(nodes, 4, 1);
    struct ck_place_result three = compute(nodes, 3, 64, 3, NULL, 0, false);
    struct ck_place_result four = compute(nodes, 4, 64, 3, three.rows, three.width, false);
    counts(&four, 64, 4, held, prim);
    for (uint32_t i = 0; i < 4; i++) {
        assert_int_equal(prim[i], 16);
        assert_int_equal(held[i], 48);
    }
    assert_int_equal(four.moved_slots, 48);
    assert_int_equal(four.min_moves, 48);
    assert_int_equal(four.moved_primaries, 16);
    assert_int_equal(new_slots(three.rows, three.width, &four, 64, gained), 48);
    assert_int_equal(gained[3], 48);
    /* Primaries that changed went to the joiner: nothing else was shuffled. */
    for (uint32_t p = 0; p < 64; p++) {
        if (four.rows[p * 3] != three.rows[p * 3]) {
            assert_int_equal(four.rows[p * 3], 3);
        }
    }
    ck_place_free(&three);
    ck_place_free(&four);
}

/* A joiner with the lowest id (index 0, every other index shifts up) gets
 * the rounded-down quota: the stayers that already hold the rounded-up one
 * keep it, so 10 slots over 3 -> 4 nodes move 2 slots, not 3. */
static void test_join_low_id_moves_minimum(void **state)
{
    struct ck_place_node nodes[MAXN];
    uint32_t held[MAXN], prim[MAXN];

    (void)state;
    nodes_init(nodes, 4, 1);
    struct ck_place_result three = compute(nodes, 3, 10, 1, NULL, 0, false);
    uint16_t cur[10];
    for (uint32_t p = 0; p < 10; p++) {
        cur[p] = three.rows[p] + 1; /* The joiner takes index 0. */
    }
    struct ck_place_result four = compute(nodes, 4, 10, 1, cur, 1, false);
    counts(&four, 10, 4, held, prim);
    assert_true(spread(held, 4, NULL) <= 1);
    assert_int_equal(held[0], 2);
    assert_int_equal(four.min_moves, 2);
    assert_int_equal(four.moved_slots, 2);
    ck_place_free(&three);
    ck_place_free(&four);
}

/* A node leaves five (P=256, RF=3): the changed slots are exactly the
 * leaver's, each went from the leaver to a stayer (no stayer lost a slot),
 * and every partition it led is now led by one of its previous replicas. */
static void test_leave(void **state)
{
    struct ck_place_node nodes[MAXN];
    uint32_t held[MAXN], prim[MAXN];
    const uint16_t gone = 2;

    (void)state;
    nodes_init(nodes, 5, 1);
    struct ck_place_result five = compute(nodes, 5, 256, 3, NULL, 0, false);
    uint16_t *cur = without_node(&five, 256, gone);
    uint32_t leaver_slots = 0;
    for (uint32_t i = 0; i < 256 * 3; i++) {
        leaver_slots += five.rows[i] == gone;
    }
    struct ck_place_result four = compute(nodes, 4, 256, 3, cur, 3, false);
    counts(&four, 256, 4, held, prim);
    assert_true(spread(held, 4, NULL) <= 1);
    assert_true(spread(prim, 4, NULL) <= 1);
    assert_int_equal(four.moved_slots, leaver_slots);
    assert_int_equal(four.min_moves, leaver_slots);
    for (uint32_t p = 0; p < 256; p++) {
        const uint16_t *was = cur + p * 3, *now = four.rows + p * 3;
        for (uint32_t k = 0; k < 3 && was[k] != CK_NO_NODE; k++) {
            assert_true(row_has(now, 3, was[k])); /* Stayers keep every slot. */
        }
        if (five.rows[p * 3] == gone) {
            assert_true(row_has(was, 3, now[0])); /* A promotion, no copy. */
        }
    }
    free(cur);
    ck_place_free(&five);
    ck_place_free(&four);
}

/* A node that goes down (can_lead = false) keeps every slot, leads nothing,
 * and exactly its former primaries moved, each to one of its replicas;
 * the others stay balanced among the nodes that may lead. */
static void test_down_node_keeps_slots(void **state)
{
    struct ck_place_node nodes[MAXN];
    uint32_t held[MAXN], prim[MAXN];
    bool lead[4] = {true, false, true, true};

    (void)state;
    nodes_init(nodes, 4, 1);
    struct ck_place_result up = compute(nodes, 4, 64, 3, NULL, 0, false);
    nodes[1].can_lead = false;
    struct ck_place_result down = compute(nodes, 4, 64, 3, up.rows, up.width, false);
    counts(&down, 64, 4, held, prim);
    assert_int_equal(down.moved_slots, 0);
    assert_int_equal(held[1], 48);
    assert_int_equal(prim[1], 0);
    assert_true(spread(prim, 4, lead) <= 1);
    uint32_t led = 0;
    for (uint32_t p = 0; p < 64; p++) {
        led += up.rows[p * 3] == 1;
        for (uint32_t k = 0; k < 3; k++) {
            assert_true(row_has(up.rows + p * 3, 3, down.rows[p * 3 + k]));
        }
    }
    assert_int_equal(led, 16);
    assert_int_equal(down.moved_primaries, led);
    /* Back up: it takes primaries again, still without moving data. */
    nodes[1].can_lead = true;
    struct ck_place_result back = compute(nodes, 4, 64, 3, down.rows, down.width, false);
    counts(&back, 64, 4, held, prim);
    assert_int_equal(back.moved_slots, 0);
    assert_true(spread(prim, 4, NULL) <= 1);
    ck_place_free(&up);
    ck_place_free(&down);
    ck_place_free(&back);
}

/* Recomputing a balanced table changes nothing at all; a complete table at
 * its quotas keeps every slot even when zone labels change under it (zone
 * repairs ride along with moves that happen anyway: ck_place.h). */
static void test_recompute_is_idempotent(void **state)
{
    struct ck_place_node nodes[MAXN], flat[MAXN];

    (void)state;
    nodes_init(nodes, 7, 3);
    nodes[2].weight = 3;
    struct ck_place_result a = compute(nodes, 7, 512, 3, NULL, 0, false);
    struct ck_place_result b = compute(nodes, 7, 512, 3, a.rows, a.width, false);
    assert_int_equal(b.moved_slots, 0);
    assert_int_equal(b.moved_primaries, 0);
    assert_int_equal(b.min_moves, 0);
    assert_memory_equal(a.rows, b.rows, 512 * 3 * sizeof *a.rows);
    nodes_init(flat, 6, 1);
    nodes_init(nodes, 6, 3);
    struct ck_place_result c = compute(flat, 6, 128, 3, NULL, 0, false);
    struct ck_place_result d = compute(nodes, 6, 128, 3, c.rows, c.width, false);
    assert_int_equal(d.moved_slots, 0);
    assert_memory_equal(c.rows, d.rows, 128 * 3 * sizeof *c.rows);
    ck_place_free(&a);
    ck_place_free(&b);
    ck_place_free(&c);
    ck_place_free(&d);
}

/* ------------------------------------------------------------------------
 * Zones and weights
 * ------------------------------------------------------------------------ */

/* With at least RF zones that can hold their share, every partition's
 * owners are in distinct zones: fresh (also when a zone's share is exactly
 * P), and after a join and a leave, which still move only the minimum. */
static void test_zones_distinct(void **state)
{
    struct ck_place_node nodes[MAXN], left[MAXN];
    uint32_t held[MAXN], prim[MAXN];

    (void)state;
    nodes_init(nodes, 10, 5);
    struct ck_place_result six = compute(nodes, 6, 128, 3, NULL, 0, false); /* Zone 0: 128 of 128. */
    assert_zone_limit(&six, nodes, 128, 1);
    struct ck_place_result nine = compute(nodes, 9, 128, 3, NULL, 0, false);
    assert_zone_limit(&nine, nodes, 128, 1);
    struct ck_place_result ten = compute(nodes, 10, 128, 3, nine.rows, nine.width, false);
    assert_zone_limit(&ten, nodes, 128, 1);
    counts(&ten, 128, 10, held, prim);
    assert_true(spread(held, 10, NULL) <= 1);
    assert_int_equal(ten.moved_slots, ten.min_moves);
    uint16_t *cur = without_node(&ten, 128, 4);
    memcpy(left, nodes, 4 * sizeof *left);
    memcpy(left + 4, nodes + 5, 5 * sizeof *left);
    struct ck_place_result after = compute(left, 9, 128, 3, cur, 3, false);
    assert_zone_limit(&after, left, 128, 1);
    assert_int_equal(after.moved_slots, after.min_moves);
    free(cur);
    ck_place_free(&six);
    ck_place_free(&nine);
    ck_place_free(&ten);
    ck_place_free(&after);
}

/* When the placement with the fewest moves would break the zone rule, the
 * rule wins (ck_place.h): a leave that leaves two zones exactly full keeps
 * every row in distinct zones, and pays at most two slots per owner that
 * the zone-blind placement puts beyond the limit. */
static void test_zones_win_over_movement(void **state)
{
    struct ck_place_node nodes[MAXN], left[MAXN], flat[MAXN];

    (void)state;
    nodes_init(nodes, 10, 3); /* Zones of 4, 3, 3 nodes: after the leave 3, 2, 3 of 9. */
    nodes[9].zone = 3;
    struct ck_place_result nine = compute(nodes, 9, 128, 3, NULL, 0, false);
    struct ck_place_result ten = compute(nodes, 10, 128, 3, nine.rows, nine.width, false);
    uint16_t *cur = without_node(&ten, 128, 4);
    memcpy(left, nodes, 4 * sizeof *left);
    memcpy(left + 4, nodes + 5, 5 * sizeof *left);
    memcpy(flat, left, 9 * sizeof *flat);
    for (uint32_t i = 0; i < 9; i++) {
        flat[i].zone = 0;
    }
    struct ck_place_result blind = compute(flat, 9, 128, 3, cur, 3, false);
    struct ck_place_result after = compute(left, 9, 128, 3, cur, 3, false);
    uint32_t excess = 0;
    for (uint32_t p = 0; p < 128; p++) {
        const uint16_t *row = blind.rows + p * 3;
        for (uint32_t k = 0; k < 3; k++) {
            for (uint32_t j = 0; j < k; j++) {
                if (left[row[j]].zone == left[row[k]].zone) {
                    excess++;
                    break;
                }
            }
        }
    }
    assert_int_equal(blind.moved_slots, blind.min_moves);
    assert_true(excess > 0); /* Else this would not test the corner. */
    assert_zone_limit(&after, left, 128, 1);
    assert_int_equal(after.min_moves, blind.min_moves);
    assert_true(after.moved_slots > after.min_moves);
    assert_true(after.moved_slots <= after.min_moves + 2 * excess);
    free(cur);
    ck_place_free(&nine);
    ck_place_free(&ten);
    ck_place_free(&blind);
    ck_place_free(&after);
}

/* With fewer zones than RF, owners spread as evenly as the zones allow:
 * RF 3 over 2 zones never puts 3 owners in one zone, RF 5 over 3 zones at
 * most 2. */
static void test_zones_spread(void **state)
{
    struct ck_place_node nodes[MAXN];

    (void)state;
    nodes_init(nodes, 4, 2);
    struct ck_place_result a = compute(nodes, 4, 64, 3, NULL, 0, false);
    assert_zone_limit(&a, nodes, 64, 2);
    nodes_init(nodes, 9, 3);
    struct ck_place_result b = compute(nodes, 9, 256, 5, NULL, 0, false);
    assert_zone_limit(&b, nodes, 256, 2);
    ck_place_free(&a);
    ck_place_free(&b);
}

/* Zones that cannot hold their share (one node alone in a zone, RF 3 over
 * zones of 1 and 3 nodes) do not break balance: counts win (ck_place.h). */
static void test_zones_yield_to_balance(void **state)
{
    struct ck_place_node nodes[MAXN];
    uint32_t held[MAXN], prim[MAXN];

    (void)state;
    nodes_init(nodes, 4, 1);
    nodes[0].zone = 1;
    struct ck_place_result r = compute(nodes, 4, 64, 3, NULL, 0, false);
    counts(&r, 64, 4, held, prim);
    assert_true(spread(held, 4, NULL) <= 1);
    assert_true(spread(prim, 4, NULL) <= 1);
    ck_place_free(&r);
}

/* ------------------------------------------------------------------------
 * Racks within zones (ck_place_node.domain)
 * ------------------------------------------------------------------------ */

/* Rows of @r whose owners in one zone share a rack. */
static uint32_t rack_repeats(const struct ck_place_result *r, const struct ck_place_node *nodes, uint32_t P)
{
    uint32_t bad = 0;
    for (uint32_t p = 0; p < P; p++) {
        const uint16_t *row = r->rows + (size_t)p * r->width;
        bool rep = false;
        for (uint32_t j = 0; j < r->width; j++) {
            for (uint32_t k = j + 1; k < r->width; k++) {
                const struct ck_place_node *a = &nodes[row[j]], *b = &nodes[row[k]];
                rep |= a->zone == b->zone && a->domain != CK_PLACE_NO_DOMAIN && a->domain == b->domain;
            }
        }
        bad += rep;
    }
    return bad;
}

/* One zone, six nodes in three racks (ids sorted so that rack mates are
 * neighbours, as ids often are): every row's three owners are in three
 * racks, with the balance of a rack-blind placement; recomputing moves
 * nothing. Without racks the same nodes repeat racks in many rows. */
static void test_racks_spread_within_a_zone(void **state)
{
    struct ck_place_node nodes[MAXN];
    uint32_t held[MAXN], prim[MAXN];

    (void)state;
    nodes_init(nodes, 6, 1);
    struct ck_place_result blind = compute(nodes, 6, 128, 3, NULL, 0, false);
    for (uint32_t i = 0; i < 6; i++) {
        nodes[i].domain = i / 2;
    }
    assert_true(rack_repeats(&blind, nodes, 128) > 0);
    struct ck_place_result r = compute(nodes, 6, 128, 3, NULL, 0, false);
    assert_int_equal(rack_repeats(&r, nodes, 128), 0);
    counts(&r, 128, 6, held, prim);
    assert_true(spread(held, 6, NULL) <= 1);
    assert_true(spread(prim, 6, NULL) <= 1);
    struct ck_place_result again = compute(nodes, 6, 128, 3, r.rows, r.width, false);
    assert_int_equal(again.moved_slots, 0);
    assert_int_equal(rack_repeats(&again, nodes, 128), 0);
    ck_place_free(&blind);
    ck_place_free(&r);
    ck_place_free(&again);
}

/* Zones come first: two zones of two racks of two nodes. With RF 2 the
 * owners are in two zones; with RF 4, two per zone, in its two racks. */
static void test_racks_within_zones(void **state)
{
    struct ck_place_node nodes[MAXN];

    (void)state;
    nodes_init(nodes, 8, 1);
    for (uint32_t i = 0; i < 8; i++) {
        nodes[i].zone = i / 4;
        nodes[i].domain = i / 2; /* racks 0, 1 in zone 0; 2, 3 in zone 1 */
    }
    struct ck_place_result two = compute(nodes, 8, 64, 2, NULL, 0, false);
    assert_zone_limit(&two, nodes, 64, 1);
    struct ck_place_result four = compute(nodes, 8, 64, 4, NULL, 0, false);
    assert_zone_limit(&four, nodes, 64, 2);
    assert_int_equal(rack_repeats(&four, nodes, 64), 0);
    ck_place_free(&two);
    ck_place_free(&four);
}

/* Where the racks cannot all fit (a rack of three nodes holds more slots
 * than there are rows), racks cost no moves: a join moves min_moves slots,
 * as without racks. */
static void test_racks_cost_no_moves(void **state)
{
    struct ck_place_node nodes[MAXN];

    (void)state;
    nodes_init(nodes, 7, 1);
    for (uint32_t i = 0; i < 7; i++) {
        nodes[i].domain = i % 3;
    }
    struct ck_place_result six = compute(nodes, 6, 256, 3, NULL, 0, false);
    assert_int_equal(rack_repeats(&six, nodes, 256), 0);
    struct ck_place_result seven = compute(nodes, 7, 256, 3, six.rows, six.width, false);
    assert_int_equal(seven.moved_slots, seven.min_moves);
    assert_true(rack_repeats(&seven, nodes, 256) <= seven.moved_slots);
    ck_place_free(&six);
    ck_place_free(&seven);
}

/* A cluster that forms one join at a time, its first two nodes in one
 * rack: once the racks fit, the rows those two shared are taken apart
 * (each swap costs two changed slots), and the balance holds. */
static void test_racks_after_joins(void **state)
{
    struct ck_place_node nodes[MAXN];
    uint32_t held[MAXN], prim[MAXN];

    (void)state;
    nodes_init(nodes, 4, 1);
    for (uint32_t i = 0; i < 4; i++) {
        nodes[i].domain = i / 2;
    }
    struct ck_place_result two = compute(nodes, 2, 64, 2, NULL, 0, false);
    assert_int_equal(rack_repeats(&two, nodes, 64), 64); /* Nothing else is possible. */
    struct ck_place_result three = compute(nodes, 3, 64, 2, two.rows, two.width, false);
    struct ck_place_result four = compute(nodes, 4, 64, 2, three.rows, three.width, false);
    assert_int_equal(rack_repeats(&four, nodes, 64), 0);
    counts(&four, 64, 4, held, prim);
    assert_true(spread(held, 4, NULL) <= 1);
    assert_true(four.moved_slots >= four.min_moves);
    ck_place_free(&two);
    ck_place_free(&three);
    ck_place_free(&four);
}

/* Weights 2:1:1 give 32/16/16 slots and primaries with RF 1; with RF 2 the
 * heavy node's share (64) is every partition; 3:1 with RF 2 caps the heavy
 * node at P too. */
static void test_weights(void **state)
{
    struct ck_place_node nodes[MAXN];
    uint32_t held[MAXN], prim[MAXN];

    (void)state;
    nodes_init(nodes, 3, 1);
    nodes[0].weight = 2;
    struct ck_place_result a = compute(nodes, 3, 64, 1, NULL, 0, false);
    counts(&a, 64, 3, held, prim);
    assert_int_equal(held[0], 32);
    assert_int_equal(held[1], 16);
    assert_int_equal(held[2], 16);
    assert_int_equal(prim[0], 32);
    struct ck_place_result b = compute(nodes, 3, 64, 2, NULL, 0, false);
    counts(&b, 64, 3, held, prim);
    assert_int_equal(held[0], 64);
    assert_int_equal(held[1], 32);
    assert_int_equal(held[2], 32);
    assert_int_equal(prim[0], 32); /* Primaries by weight too: 32 / 16 / 16. */
    assert_int_equal(prim[1], 16);
    nodes_init(nodes, 2, 1);
    nodes[0].weight = 3;
    struct ck_place_result c = compute(nodes, 2, 60, 2, NULL, 0, false);
    counts(&c, 60, 2, held, prim);
    assert_int_equal(held[0], 60);
    assert_int_equal(held[1], 60);
    assert_int_equal(prim[0], 45);
    ck_place_free(&a);
    ck_place_free(&b);
    ck_place_free(&c);
}

/* A weight change lands on the new shares and moves only the minimum:
 * 1:1:1:1 -> 4:1:1:1 of 280 slots (RF 2) gives the heavy node all 140
 * partitions (160 capped at P) and only it gains. */
static void test_weight_change(void **state)
{
    struct ck_place_node nodes[MAXN];
    uint32_t held[MAXN], prim[MAXN], gained[MAXN] = {0};

    (void)state;
    nodes_init(nodes, 4, 1);
    struct ck_place_result a = compute(nodes, 4, 140, 2, NULL, 0, false);
    nodes[0].weight = 4;
    struct ck_place_result b = compute(nodes, 4, 140, 2, a.rows, a.width, false);
    counts(&b, 140, 4, held, prim);
    assert_int_equal(held[0], 140); /* 160 capped at P. */
    assert_int_equal(held[1] + held[2] + held[3], 140);
    assert_true(spread(held + 1, 3, NULL) <= 1);
    assert_int_equal(b.moved_slots, b.min_moves);
    assert_int_equal(new_slots(a.rows, a.width, &b, 140, gained), b.moved_slots);
    assert_int_equal(gained[0], b.moved_slots); /* Only the heavier node gains. */
    /* 3 nodes, RF 1, P 12: 4/4/4, then 2:3:3 is 3 / 4.5 / 4.5: the node
     * whose share is whole gets exactly it, though it holds more (the spare
     * unit goes to a node with a fraction). */
    nodes_init(nodes, 3, 1);
    struct ck_place_result c = compute(nodes, 3, 12, 1, NULL, 0, false);
    nodes[0].weight = 2;
    nodes[1].weight = 3;
    nodes[2].weight = 3;
    struct ck_place_result d = compute(nodes, 3, 12, 1, c.rows, c.width, false);
    counts(&d, 12, 3, held, prim);
    assert_int_equal(held[0], 3);
    assert_in_range(held[1], 4, 5);
    assert_in_range(held[2], 4, 5);
    ck_place_free(&a);
    ck_place_free(&b);
    ck_place_free(&c);
    ck_place_free(&d);
}

/* ------------------------------------------------------------------------
 * Maintenance, determinism, arguments
 * ------------------------------------------------------------------------ */

/* With failover_only no slot moves (a joiner gets nothing, a down node keeps
 * its rows), primaries leave a node that may not lead, and only rows that
 * lost every owner are filled. */
static void test_failover_only(void **state)
{
    struct ck_place_node nodes[MAXN];
    uint32_t held[MAXN], prim[MAXN];

    (void)state;
    nodes_init(nodes, 5, 1);
    struct ck_place_result a = compute(nodes, 4, 64, 3, NULL, 0, false);
    nodes[2].can_lead = false;
    struct ck_place_result b = compute(nodes, 5, 64, 3, a.rows, a.width, true);
    counts(&b, 64, 5, held, prim);
    assert_int_equal(b.moved_slots, 0);
    assert_int_equal(b.min_moves, 0);
    assert_int_equal(held[4], 0);
    assert_int_equal(held[2], 48);
    assert_int_equal(prim[2], 0);
    for (uint32_t p = 0; p < 64; p++) {
        for (uint32_t k = 0; k < 3; k++) {
            assert_true(row_has(a.rows + p * 3, 3, b.rows[p * 3 + k]));
        }
    }
    /* RF 1, a node leaves in maintenance: its rows have no owner left, so
     * they get one; the others do not move. */
    nodes_init(nodes, 3, 1);
    struct ck_place_result c = compute(nodes, 3, 30, 1, NULL, 0, false);
    uint16_t *cur = without_node(&c, 30, 1);
    struct ck_place_result d = compute(nodes, 2, 30, 1, cur, 1, true);
    uint32_t orphans = 0;
    for (uint32_t p = 0; p < 30; p++) {
        assert_true(d.rows[p] < 2);
        if (cur[p] == CK_NO_NODE) {
            orphans++;
        } else {
            assert_int_equal(d.rows[p], cur[p]);
        }
    }
    assert_int_equal(d.moved_slots, orphans);
    free(cur);
    ck_place_free(&a);
    ck_place_free(&b);
    ck_place_free(&c);
    ck_place_free(&d);
}

/* The same input gives the same table and counters, fresh and from a
 * current table. */
static void test_determinism(void **state)
{
    struct ck_place_node nodes[MAXN];

    (void)state;
    nodes_init(nodes, 20, 4);
    nodes[3].weight = 3;
    nodes[7].can_lead = false;
    struct ck_place_result a = compute(nodes, 19, 4096, 3, NULL, 0, false);
    struct ck_place_result b = compute(nodes, 19, 4096, 3, NULL, 0, false);
    assert_memory_equal(a.rows, b.rows, 4096 * 3 * sizeof *a.rows);
    struct ck_place_result c = compute(nodes, 20, 4096, 3, a.rows, a.width, false);
    struct ck_place_result d = compute(nodes, 20, 4096, 3, a.rows, a.width, false);
    assert_memory_equal(c.rows, d.rows, 4096 * 3 * sizeof *c.rows);
    assert_int_equal(c.moved_slots, d.moved_slots);
    assert_int_equal(c.moved_primaries, d.moved_primaries);
    assert_int_equal(c.min_moves, d.min_moves);
    ck_place_free(&a);
    ck_place_free(&b);
    ck_place_free(&c);
    ck_place_free(&d);
}

/* Bad input is refused with CK_EINVAL and no table: a zero weight, no
 * partitions or too many, RF 0 or above 16, a current table 0 or 17 wide. */
static void test_invalid_input(void **state)
{
    struct ck_place_node nodes[MAXN];
    uint16_t cur[64 * 17];
    struct ck_place_result out;

    (void)state;
    nodes_init(nodes, 3, 1);
    for (size_t i = 0; i < CK_ARRAY_SIZE(cur); i++) {
        cur[i] = CK_NO_NODE;
    }
    struct ck_place_input ok = {64, 3, 3, nodes, NULL, 0, false};
    struct ck_place_input in;
    in = ok;
    nodes[1].weight = 0;
    assert_int_equal(ck_place_compute(&in, &out), CK_EINVAL);
    assert_null(out.rows);
    nodes[1].weight = 1;
    in = ok;
    in.partitions = 0;
    assert_int_equal(ck_place_compute(&in, &out), CK_EINVAL);
    in = ok;
    in.partitions = CK_MAX_PARTITIONS + 1;
    assert_int_equal(ck_place_compute(&in, &out), CK_EINVAL);
    in = ok;
    in.replication = 0;
    assert_int_equal(ck_place_compute(&in, &out), CK_EINVAL);
    in = ok;
    in.replication = CK_MAX_REPLICATION + 1;
    assert_int_equal(ck_place_compute(&in, &out), CK_EINVAL);
    in = ok;
    in.current = cur;
    in.current_width = CK_MAX_REPLICATION + 1;
    assert_int_equal(ck_place_compute(&in, &out), CK_EINVAL);
    in.current_width = 0;
    assert_int_equal(ck_place_compute(&in, &out), CK_EINVAL);
    /* The largest valid width, and no nodes at all, are accepted. */
    in.current_width = CK_MAX_REPLICATION;
    in.replication = CK_MAX_REPLICATION;
    assert_int_equal(ck_place_compute(&in, &out), 0);
    ck_place_free(&out);
    in = ok;
    in.n_nodes = 0;
    assert_int_equal(ck_place_compute(&in, &out), 0);
    for (uint32_t i = 0; i < 64 * out.width; i++) {
        assert_int_equal(out.rows[i], CK_NO_NODE);
    }
    ck_place_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quotas_equal),
        cmocka_unit_test(test_quotas_weighted),
        cmocka_unit_test(test_quotas_cap),
        cmocka_unit_test(test_quotas_mask),
        cmocka_unit_test(test_fresh_balance),
        cmocka_unit_test(test_rf_above_nodes),
        cmocka_unit_test(test_join_three_to_four),
        cmocka_unit_test(test_join_low_id_moves_minimum),
        cmocka_unit_test(test_leave),
        cmocka_unit_test(test_down_node_keeps_slots),
        cmocka_unit_test(test_recompute_is_idempotent),
        cmocka_unit_test(test_zones_distinct),
        cmocka_unit_test(test_zones_win_over_movement),
        cmocka_unit_test(test_zones_spread),
        cmocka_unit_test(test_zones_yield_to_balance),
        cmocka_unit_test(test_racks_spread_within_a_zone),
        cmocka_unit_test(test_racks_within_zones),
        cmocka_unit_test(test_racks_cost_no_moves),
        cmocka_unit_test(test_racks_after_joins),
        cmocka_unit_test(test_weights),
        cmocka_unit_test(test_weight_change),
        cmocka_unit_test(test_failover_only),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_invalid_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
