/* Placement phase 5: primaries (see ck_place.c). */
#include <stdlib.h>
#include <string.h>

#include "ck_common.h"
#include "ck_place_internal.h"

/* ------------------------------------------------------------------------
 * Phase 5: primaries.
 *
 * One primary per row among its owners that may lead, each such node within
 * its primary floor and ceiling, is a bipartite b-matching (rows against
 * nodes). Current primaries that may lead stay; rows without one elect an
 * owner under its target (a previous owner first: a promotion, no copy);
 * primaries on nodes above their ceiling, then to nodes below their floor,
 * move in one direct pass each; whatever is left is settled by augmenting
 * paths (u takes row q from x, x takes a row from y, ... up to a node with
 * one to spare), breadth first so that few primaries change, and
 * promotions-only paths first. Nodes within their bounds are left alone.
 * ------------------------------------------------------------------------ */

struct prim_state {
    int32_t *prim; /* Row -> slot of its primary, -1: none yet. */
    bool *lead;
    uint32_t *pq, *pc; /* Primary quota and count per node. */
    /* Augmenting-path search: rows per node (CSR), BFS marks and queue. */
    uint32_t *start, *list;
    uint32_t *mark, *from, *via, *queue, *src;
    uint32_t gen;
    uint64_t budget;     /* Row visits left for all searches together. */
    uint32_t *plo, *phi; /* Bounds of each primary quota (see ck_place_quota_range()). */
    bool *has_old;       /* The node holds a slot it held before. */
    uint64_t ledrows;    /* Rows with an owner that may lead. */
};

/* Primary quotas: the weighted shares of the rows that have an owner able to
 * lead, over the nodes that may lead, with their floors and ceilings (plo,
 * phi). @have steers the free choice of ceilings (see ck_place_quota_range()). */
static void prim_quotas(struct place *s, struct prim_state *ps, const uint32_t *have)
{
    ck_place_quota_range(s->nodes, s->n, ps->lead, ps->ledrows, s->P, have, ps->pq, ps->plo, ps->phi);
}

/* A rank for making owner @x primary of row @p. For an election: under its
 * target before at or over it, then a previous owner (a promotion), then
 * the larger deficit. For a move (@move): a node below its floor that has
 * no old slot at all first (a joiner: its primaries can only be new copies,
 * and it needs them anyway), then a promotion (no copy), then a node below
 * its floor (else a chain of moves brings it one later), then the deficit. */
static int64_t prim_rank(struct place *s, struct prim_state *ps, uint32_t p, uint16_t x, bool move)
{
    int64_t deficit = (int64_t)ps->pq[x] - (int64_t)ps->pc[x];
    int64_t promo = cur_has(s, p, x) ? 1 : 0;
    if (move) {
        int64_t below = ps->pc[x] < ps->plo[x];
        return ((int64_t)(below && !ps->has_old[x]) << 43) + (promo << 42) + (below << 41) + deficit;
    }
    return (deficit > 0 ? (int64_t)1 << 42 : 0) + (promo << 41) + deficit;
}

/* What ends an augmenting path: a node with more primaries than its quota,
 * its ceiling or its floor. */
enum prim_goal { PRIM_OVER_CEIL, PRIM_OVER_FLOOR };

/* One augmenting path from a node x that meets @goal to one of the @n_src
 * nodes in @src: u takes row q from x1, x1 takes a row from x2, ... up to x,
 * found breadth first (over edges that are promotions only if
 * @promote_only). Returns true if one was applied. */
static bool prim_augment(struct place *s, struct prim_state *ps, const uint32_t *src, uint32_t n_src,
                         enum prim_goal goal, bool promote_only)
{
    uint32_t head = 0, tail = 0;
    ps->gen++;
    for (uint32_t i = 0; i < n_src; i++) {
        ps->mark[src[i]] = ps->gen;
        ps->from[src[i]] = src[i];
        ps->queue[tail++] = src[i];
    }
    while (head < tail && ps->budget > 0) {
        uint32_t y = ps->queue[head++];
        for (uint32_t i = ps->start[y]; i < ps->start[y + 1] && ps->budget > 0; i++, ps->budget--) {
            uint32_t q = ps->list[i];
            if (ps->prim[q] < 0) {
                continue;
            }
            uint16_t x = row(s, q)[ps->prim[q]];
            if (x == y || !ps->lead[x] || ps->mark[x] == ps->gen || (promote_only && !cur_has(s, q, (uint16_t)y))) {
                continue;
            }
            ps->mark[x] = ps->gen;
            ps->from[x] = y;
            ps->via[x] = q;
            if (ps->pc[x] > (goal == PRIM_OVER_CEIL ? ps->phi[x] : ps->plo[x])) {
                /* Shift one primary along the path: x ... -> the source. */
                uint32_t z = x;
                ps->pc[x]--;
                while (ps->from[z] != z) {
                    ps->prim[ps->via[z]] = row_find(s, ps->via[z], (uint16_t)ps->from[z]);
                    z = ps->from[z];
                }
                ps->pc[z]++;
                return true;
            }
            ps->queue[tail++] = x;
        }
    }
    return false;
}

void ck_place_primaries(struct place *s, int32_t *prim)
{
    struct prim_state ps;
    const size_t nn = s->n ? s->n : 1;
    memset(&ps, 0, sizeof ps);
    ps.prim = prim;
    ps.pq = calloc(nn, sizeof *ps.pq);
    ps.pc = calloc(nn, sizeof *ps.pc);
    ps.lead = calloc(nn, sizeof *ps.lead);
    uint32_t *kept = calloc(nn, sizeof *kept);
    for (uint32_t p = 0; p < s->P; p++) {
        prim[p] = -1;
    }
    if (ps.pq == NULL || ps.pc == NULL || ps.lead == NULL || kept == NULL) {
        goto out;
    }
    uint64_t ledrows = 0;
    for (uint32_t i = 0; i < s->n; i++) {
        ps.lead[i] = s->nodes[i].can_lead;
    }
    ps.plo = calloc(nn, sizeof *ps.plo);
    ps.phi = calloc(nn, sizeof *ps.phi);
    ps.has_old = calloc(nn, sizeof *ps.has_old);
    if (ps.plo == NULL || ps.phi == NULL || ps.has_old == NULL) {
        goto out;
    }
    for (uint32_t p = 0; p < s->P && s->cur != NULL; p++) {
        for (uint32_t k = 0; k < s->cnt[p]; k++) {
            ps.has_old[row(s, p)[k]] |= cur_has(s, p, row(s, p)[k]);
        }
    }
    for (uint32_t p = 0; p < s->P; p++) {
        bool any = false;
        for (uint32_t k = 0; k < s->cnt[p] && !any; k++) {
            any = ps.lead[row(s, p)[k]];
        }
        ledrows += any;
    }
    ps.ledrows = ledrows;

    /* Keep current primaries that may still lead. */
    for (uint32_t p = 0; p < s->P && s->cur != NULL; p++) {
        uint16_t c0 = s->cur[(size_t)p * s->cw];
        int k = c0 != CK_NO_NODE ? row_find(s, p, c0) : -1;
        if (k >= 0 && ps.lead[c0]) {
            prim[p] = k;
            ps.pc[c0]++;
        }
    }
    memcpy(kept, ps.pc, nn * sizeof *kept);
    prim_quotas(s, &ps, kept);

    /* Elect where there is none. */
    for (uint32_t p = 0; p < s->P; p++) {
        if (prim[p] >= 0) {
            continue;
        }
        int best = -1;
        int64_t best_rank = INT64_MIN;
        for (uint32_t k = 0; k < s->cnt[p]; k++) {
            uint16_t x = row(s, p)[k];
            int64_t rank = ps.lead[x] ? prim_rank(s, &ps, p, x, false) : INT64_MIN;
            if (ps.lead[x] && rank > best_rank) {
                best_rank = rank;
                best = (int)k;
            }
        }
        if (best < 0 && s->cnt[p] > 0) {
            best = 0; /* No owner may lead: keep a holder first anyway. */
        } else if (best >= 0) {
            ps.pc[row(s, p)[best]]++;
        }
        prim[p] = best;
    }

    /* Direct moves, one pass each: a primary on a node above its ceiling
     * goes to an owner below its own, then an owner below its floor takes
     * one from a node above its own (promotions first). Nodes within their
     * bounds are left alone: which of them end on a ceiling is free, and
     * moving primaries to reach a particular choice would only cost moves. */
    for (int low = 0; low < 2; low++) {
        for (uint32_t p = 0; p < s->P; p++) {
            if (prim[p] < 0) {
                continue;
            }
            uint16_t o = row(s, p)[prim[p]];
            if (!ps.lead[o] || ps.pc[o] <= (low ? ps.plo[o] : ps.phi[o])) {
                continue;
            }
            int best = -1;
            int64_t best_rank = INT64_MIN;
            for (uint32_t k = 0; k < s->cnt[p]; k++) {
                uint16_t u = row(s, p)[k];
                if ((int)k == prim[p] || !ps.lead[u] || ps.pc[u] >= (low ? ps.plo[u] : ps.phi[u])) {
                    continue;
                }
                int64_t rank = prim_rank(s, &ps, p, u, true);
                if (rank > best_rank) {
                    best_rank = rank;
                    best = (int)k;
                }
            }
            if (best >= 0) {
                ps.pc[o]--;
                ps.pc[row(s, p)[best]]++;
                prim[p] = best;
            }
        }
    }

    /* Augmenting paths for what is left. */
    bool short_of = false;
    for (uint32_t i = 0; i < s->n && !short_of; i++) {
        short_of = ps.lead[i] && (ps.pc[i] < ps.plo[i] || ps.pc[i] > ps.phi[i]);
    }
    if (!short_of) {
        goto out;
    }
    ps.start = calloc(nn + 1, sizeof *ps.start);
    ps.list = malloc(((size_t)s->P * s->w + 1) * sizeof *ps.list);
    ps.mark = calloc(nn, sizeof *ps.mark);
    ps.from = calloc(nn, sizeof *ps.from);
    ps.via = calloc(nn, sizeof *ps.via);
    ps.queue = calloc(nn, sizeof *ps.queue);
    ps.src = calloc(nn, sizeof *ps.src);
    if (ps.start == NULL || ps.list == NULL || ps.mark == NULL || ps.from == NULL || ps.via == NULL ||
        ps.queue == NULL || ps.src == NULL) {
        goto out;
    }
    for (uint32_t p = 0; p < s->P; p++) {
        for (uint32_t k = 0; k < s->cnt[p]; k++) {
            ps.start[row(s, p)[k] + 1]++;
        }
    }
    for (uint32_t i = 0; i < s->n; i++) {
        ps.start[i + 1] += ps.start[i];
    }
    memcpy(ps.from, ps.start, nn * sizeof *ps.from); /* Fill cursors, reset below. */
    for (uint32_t p = 0; p < s->P; p++) {
        for (uint32_t k = 0; k < s->cnt[p]; k++) {
            ps.list[ps.from[row(s, p)[k]]++] = p;
        }
    }
    /* Each search visits at most every slot once; these bound them all, per
     * stage, so that failed searches in one stage leave the next its share.
     * First no node above its ceiling (paths from any node below its own),
     * then none below its floor; promotions-only paths first. */
    const uint64_t stage_budget = ((uint64_t)s->P * s->w + 4096) * 32;
    ps.budget = stage_budget;
    for (uint32_t x = 0; x < s->n; x++) {
        while (ps.lead[x] && ps.pc[x] > ps.phi[x]) {
            uint32_t n_src = 0;
            for (uint32_t y = 0; y < s->n; y++) {
                if (ps.lead[y] && ps.pc[y] < ps.phi[y]) {
                    ps.src[n_src++] = y;
                }
            }
            if (n_src == 0 || (!(s->cur != NULL && prim_augment(s, &ps, ps.src, n_src, PRIM_OVER_CEIL, true)) &&
                               !prim_augment(s, &ps, ps.src, n_src, PRIM_OVER_CEIL, false))) {
                break;
            }
        }
    }
    ps.budget = stage_budget;
    for (uint32_t u = 0; u < s->n; u++) {
        while (ps.lead[u] && ps.pc[u] < ps.plo[u]) {
            if (!(s->cur != NULL && prim_augment(s, &ps, &u, 1, PRIM_OVER_FLOOR, true)) &&
                !prim_augment(s, &ps, &u, 1, PRIM_OVER_FLOOR, false)) {
                break; /* The owners do not allow it (or the budget ran out). */
            }
        }
    }
out:
    free(ps.pq);
    free(ps.pc);
    free(ps.lead);
    free(kept);
    free(ps.start);
    free(ps.list);
    free(ps.mark);
    free(ps.from);
    free(ps.via);
    free(ps.queue);
    free(ps.src);
    free(ps.plo);
    free(ps.phi);
    free(ps.has_old);
}
