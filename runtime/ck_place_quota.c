/* Placement phase 0: quotas (see ck_place.c). */
#include <stdlib.h>
#include <string.h>

#include "ck_common.h"
#include "ck_place_internal.h"

/* ------------------------------------------------------------------------
 * Quotas
 * ------------------------------------------------------------------------ */

/* A candidate for one unit of the remainder: nodes whose exact share has a
 * fraction, ranked by whether they already have more than the floor (giving
 * them the ceiling costs no move), then by the fraction, then by index. */
struct quota_cand {
    uint32_t idx;
    uint32_t keeps; /* 1 if the node has more than its floor already. */
    uint64_t frac;
};

static int quota_cand_cmp(const void *a, const void *b)
{
    const struct quota_cand *x = a, *y = b;
    if (x->keeps != y->keeps) {
        return x->keeps > y->keeps ? -1 : 1;
    }
    if (x->frac != y->frac) {
        return x->frac > y->frac ? -1 : 1;
    }
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* ck_place_quotas, where @have (or NULL) is what each node holds now: the
 * remainder goes first to nodes that hold more than their floor, so that the
 * quotas are the ones that need the fewest moves. If @lo and @hi are not
 * NULL they receive each node's floor and ceiling: any quota between them
 * (with the same sum) is as balanced. */
void ck_place_quota_range(const struct ck_place_node *nodes, uint32_t n, const bool *mask, uint64_t total, uint32_t cap,
                          const uint32_t *have, uint32_t *out, uint32_t *lo, uint32_t *hi)
{
    bool *capped = calloc(n ? n : 1, sizeof *capped);
    uint64_t *frac = calloc(n ? n : 1, sizeof *frac);
    struct quota_cand *cand = calloc(n ? n : 1, sizeof *cand);
    if (capped == NULL || frac == NULL || cand == NULL) {
        /* Degrade to zero quotas rather than fail: still deterministic. */
        for (uint32_t i = 0; i < n; i++) {
            out[i] = 0;
        }
        goto out;
    }
    for (;;) {
        uint64_t W = 0, rest = total;
        for (uint32_t i = 0; i < n; i++) {
            out[i] = 0;
            if (mask != NULL && !mask[i]) {
                continue;
            }
            if (capped[i]) {
                out[i] = cap;
                rest = rest > cap ? rest - cap : 0;
            } else {
                W += nodes[i].weight;
            }
        }
        if (W == 0) {
            break;
        }
        bool recap = false;
        uint64_t given = 0;
        for (uint32_t i = 0; i < n; i++) {
            if ((mask != NULL && !mask[i]) || capped[i]) {
                continue;
            }
            uint64_t exact = rest * nodes[i].weight / W;
            frac[i] = rest * nodes[i].weight % W;
            if (exact >= cap) {
                capped[i] = true;
                recap = true;
            }
            out[i] = (uint32_t)exact;
            given += exact;
        }
        if (recap) {
            continue;
        }
        /* Hand out the remainder, one unit per node with a fraction (there
         * are more such nodes than units left). */
        uint32_t nc = 0;
        for (uint32_t i = 0; i < n; i++) {
            if ((mask != NULL && !mask[i]) || capped[i] || out[i] >= cap || frac[i] == 0) {
                continue;
            }
            cand[nc].idx = i;
            cand[nc].keeps = have != NULL && have[i] > out[i];
            cand[nc].frac = frac[i];
            nc++;
        }
        if (lo != NULL && hi != NULL) {
            for (uint32_t i = 0; i < n; i++) {
                lo[i] = hi[i] = out[i];
            }
            for (uint32_t k = 0; k < nc; k++) {
                hi[cand[k].idx]++;
            }
        }
        qsort(cand, nc, sizeof *cand, quota_cand_cmp);
        for (uint64_t k = 0; k < rest - given && k < nc; k++) {
            out[cand[k].idx]++;
        }
        break;
    }
out:
    free(capped);
    free(frac);
    free(cand);
}

void ck_place_quotas(const struct ck_place_node *nodes, uint32_t n, const bool *mask, uint64_t total, uint32_t cap,
                     uint32_t *out)
{
    ck_place_quota_range(nodes, n, mask, total, cap, NULL, out, NULL, NULL);
}

/* A zone whose share is exactly P * zmax can still go over it by the
 * rounding of its nodes' quotas (three nodes of 42.67 each hold 43, 43, 42
 * or 43, 43, 43). Hands such ceilings to nodes of zones with room, where
 * that needs no more moves: then the zone rule can hold. */
void ck_place_quotas_zone_fit(struct place *s)
{
    uint64_t *total = calloc(s->zones, sizeof *total);
    const uint64_t cap = (uint64_t)s->P * s->zmax;
    if (total == NULL) {
        return;
    }
    for (uint32_t i = 0; i < s->n; i++) {
        total[s->zidx[i]] += s->quota[i];
    }
    for (uint32_t z = 0; z < s->zones; z++) {
        while (total[z] > cap) {
            /* A ceiling to give up (one that needs a move, if any), and one
             * to take (one that needs none, if any), no dearer. */
            int64_t from = -1, to = -1;
            for (uint32_t i = 0; i < s->n; i++) {
                bool paid = s->held[i] <= s->qlo[i];
                if (s->zidx[i] == z && s->quota[i] > s->qlo[i] &&
                    (from < 0 || (paid && s->held[from] > s->qlo[from]))) {
                    from = i;
                }
                if (s->zidx[i] != z && s->quota[i] < s->qhi[i] && total[s->zidx[i]] < cap &&
                    (to < 0 || (!paid && s->held[to] <= s->qlo[to]))) {
                    to = i;
                }
            }
            if (from < 0 || to < 0 || (s->held[to] <= s->qlo[to] && s->held[from] > s->qlo[from])) {
                break;
            }
            s->quota[from]--;
            s->quota[to]++;
            total[z]--;
            total[s->zidx[to]]++;
        }
    }
    free(total);
}
