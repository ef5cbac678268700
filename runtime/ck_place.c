/*
 * The default placement policy (see ck_place.h for the properties).
 *
 * Phases, each deterministic (ties go to the lower node index, which is the
 * lower id since the caller sorts nodes by id; the one random choice, the
 * fill's deck, is shuffled by a generator seeded from the input's shape):
 *
 *   0. keep:      rows start as the current owners that are still holders;
 *                 quotas are set (ceilings to nodes that already hold them,
 *                 and away from zones that would not fit); a table that is
 *                 already complete and at its quotas skips phases 1-4;
 *   1. fill:      empty slots are dealt from a shuffled deck of what each
 *                 node under quota needs, zones kept; a slot no card fits is
 *                 won by a chain of trades among new slots, or by handing a
 *                 ceiling to a node that fits; a small fill that still went
 *                 wrong is redone exactly as a flow (1b);
 *   2. move:      nodes over quota hand slots (replicas before primaries) to
 *                 nodes under quota, zone-keeping moves first, smallest givers
 *                 first; a stuck giver trades rows with another giver;
 *   3. unstick:   when no direct move fits (the receiver already owns every
 *                 partition the giver could hand over), a two-step move
 *                 through a node at quota;
 *   4. zones:     rows whose zones repeat more than allowed swap one owner
 *                 with another row's owner (every node keeps its counts),
 *                 free swaps first, costly ones only where the rule is
 *                 promised;
 *   5. primaries: the current primary stays if it may lead; rows without one
 *                 elect an owner (preferring previous owners: a promotion, no
 *                 copy); then primaries move until every node is within its
 *                 floor and ceiling (direct moves, then augmenting paths).
 *
 * Every search has a budget, so the time stays O(P * w) (times a constant)
 * whatever the input.
 */
#include <stdlib.h>
#include <string.h>

#include "ck_common.h"
#include "ck_place_internal.h"

/* ------------------------------------------------------------------------
 * Entry point
 * ------------------------------------------------------------------------ */

static int zone_pair_cmp(const void *a, const void *b)
{
    const uint32_t *x = a, *y = b;
    return x[0] != y[0] ? (x[0] < y[0] ? -1 : 1) : (x[1] < y[1] ? -1 : x[1] > y[1]);
}

int ck_place_compute(const struct ck_place_input *in, struct ck_place_result *out)
{
    struct place s;
    int32_t *prim = NULL;
    uint32_t *zone_ids = NULL;
    int rv = CK_ENOMEM;

    memset(out, 0, sizeof *out);
    if (in->partitions == 0 || in->partitions > CK_MAX_PARTITIONS || in->replication == 0 ||
        in->replication > CK_MAX_REPLICATION || in->n_nodes >= CK_NO_NODE ||
        (in->current != NULL && (in->current_width == 0 || in->current_width > CK_MAX_REPLICATION))) {
        return CK_EINVAL;
    }
    for (uint32_t i = 0; i < in->n_nodes; i++) {
        if (in->nodes[i].weight == 0) {
            return CK_EINVAL;
        }
    }
    memset(&s, 0, sizeof s);
    s.P = in->partitions;
    s.n = in->n_nodes;
    s.w = in->replication < in->n_nodes ? in->replication : in->n_nodes;
    s.nodes = in->nodes;
    s.cur = in->current;
    s.cw = in->current_width;
    out->width = s.w ? s.w : 1;
    out->rows = malloc((size_t)s.P * out->width * sizeof *out->rows);
    if (out->rows == NULL) {
        return CK_ENOMEM;
    }
    for (size_t i = 0; i < (size_t)s.P * out->width; i++) {
        out->rows[i] = CK_NO_NODE;
    }
    if (s.n == 0) {
        return 0; /* Nobody to place on: every row stays empty. */
    }
    s.rows = malloc((size_t)s.P * s.w * sizeof *s.rows);
    s.cnt = calloc(s.P, 1);
    s.held = calloc(s.n, sizeof *s.held);
    s.quota = calloc(s.n, sizeof *s.quota);
    s.qlo = calloc(s.n, sizeof *s.qlo);
    s.qhi = calloc(s.n, sizeof *s.qhi);
    prim = malloc(s.P * sizeof *prim);
    zone_ids = calloc(2 * (size_t)s.n, sizeof *zone_ids);
    s.zidx = calloc(s.n, sizeof *s.zidx);
    if (s.rows == NULL || s.cnt == NULL || s.held == NULL || s.quota == NULL || s.qlo == NULL || s.qhi == NULL ||
        prim == NULL || zone_ids == NULL || s.zidx == NULL) {
        goto done;
    }
    /* Dense zone indexes (sorted by zone id), and how many owners of one
     * zone a row may have. */
    for (uint32_t i = 0; i < s.n; i++) {
        zone_ids[2 * i] = in->nodes[i].zone;
        zone_ids[2 * i + 1] = i;
    }
    qsort(zone_ids, s.n, 2 * sizeof *zone_ids, zone_pair_cmp);
    for (uint32_t i = 0; i < s.n; i++) {
        if (i > 0 && zone_ids[2 * i] != zone_ids[2 * i - 2]) {
            s.zones++;
        }
        s.zidx[zone_ids[2 * i + 1]] = s.zones;
    }
    s.zones++;
    s.zmax = s.zones >= s.w ? 1 : (s.w + s.zones - 1) / s.zones;

    /* Phase 0: keep current owners that are still holders. */
    for (uint32_t p = 0; p < s.P; p++) {
        if (s.cur == NULL) {
            break;
        }
        const uint16_t *c = s.cur + (size_t)p * s.cw;
        for (uint32_t k = 0; k < s.cw && c[k] != CK_NO_NODE && s.cnt[p] < s.w; k++) {
            if (c[k] < s.n && !row_has(&s, p, c[k])) {
                row(&s, p)[s.cnt[p]++] = c[k];
                s.held[c[k]]++;
            }
        }
    }
    ck_place_quota_range(in->nodes, s.n, NULL, (uint64_t)s.P * s.w, s.P, s.held, s.quota, s.qlo, s.qhi);
    ck_place_quotas_zone_fit(&s);
    for (uint32_t i = 0; i < s.n; i++) {
        out->min_moves += s.quota[i] > s.held[i] ? s.quota[i] - s.held[i] : 0;
    }

    if (in->failover_only) {
        /* Maintenance: no data moves; only rows that lost every owner are
         * filled (there is no data to move for them anyway). */
        for (uint32_t p = 0; p < s.P; p++) {
            if (s.cnt[p] == 0) {
                struct place one = s;
                one.P = 1;
                one.rows = row(&s, p);
                one.cnt = &s.cnt[p];
                ck_place_fill(&one);
            }
        }
        out->min_moves = 0;
    } else {
        /* A table that already has every slot and every quota is left as it
         * is: recomputing is idempotent, and a crash or a restart (which only
         * changes who may lead) moves no data. */
        bool settled = true;
        for (uint32_t p = 0; p < s.P && settled; p++) {
            settled = s.cnt[p] == s.w;
        }
        for (uint32_t i = 0; i < s.n && settled; i++) {
            settled = s.held[i] == s.quota[i];
        }
        if (!settled) {
            ck_place_fill(&s);
            ck_place_move(&s);
            ck_place_unstick(&s);
            ck_place_zones(&s);
        }
    }
    ck_place_primaries(&s, prim);

    /* Output: primary first, the other owners in their order. */
    for (uint32_t p = 0; p < s.P; p++) {
        uint16_t *o = out->rows + (size_t)p * out->width;
        const uint16_t *r = row(&s, p);
        uint32_t k = 0;
        if (prim[p] >= 0) {
            o[k++] = r[prim[p]];
        }
        for (uint32_t j = 0; j < s.cnt[p]; j++) {
            if ((int)j != prim[p]) {
                o[k++] = r[j];
            }
        }
        for (uint32_t j = 0; j < k; j++) {
            if (!cur_has(&s, p, o[j])) {
                out->moved_slots++;
            }
        }
        if (s.cur != NULL && k > 0 && s.cur[(size_t)p * s.cw] != o[0]) {
            out->moved_primaries++;
        }
    }
    rv = 0;
done:
    free(s.rows);
    free(s.cnt);
    free(s.held);
    free(s.quota);
    free(s.qlo);
    free(s.qhi);
    free(prim);
    free(zone_ids);
    free(s.zidx);
    if (rv != 0) {
        ck_place_free(out);
    }
    return rv;
}

void ck_place_free(struct ck_place_result *r)
{
    free(r->rows);
    r->rows = NULL;
}
