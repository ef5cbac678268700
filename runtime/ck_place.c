/*
 * The default placement policy (see ck_place.h for the properties).
 *
 * Phases, each deterministic (ties go to the lower node index, which is the
 * lower id since the caller sorts nodes by id):
 *
 *   0. keep:      rows start as the current owners that are still holders;
 *   1. fill:      empty slots are dealt round-robin to nodes under quota;
 *   2. move:      nodes over quota hand slots (replicas before primaries) to
 *                 nodes under quota, one slot per move;
 *   3. unstick:   when no direct move fits (the receiver already owns every
 *                 partition the giver could hand over), a two-step move
 *                 through a node at quota;
 *   4. zones:     rows whose zones repeat more than allowed swap one owner
 *                 with another row's owner (every node keeps its counts);
 *   5. primaries: the current primary stays if it may lead; rows without one
 *                 elect an owner (preferring previous owners: a promotion, no
 *                 copy); then primaries move from nodes over their primary
 *                 quota to owners under it.
 */
#include "ck_place.h"

#include <stdlib.h>
#include <string.h>

#include "ck_common.h"
#include "ck_state.h"

struct place {
    uint32_t P, w, n;
    const struct ck_place_node *nodes;
    uint16_t *rows;   /* P * w */
    uint8_t *cnt;     /* owners per row */
    uint32_t *held;   /* slots per node */
    uint32_t *quota;  /* slot quota per node */
    uint32_t *qlo, *qhi; /* floor and ceiling a node's quota may take */
    const uint16_t *cur;
    uint32_t cw;
    uint32_t *zidx;   /* node -> dense zone index, 0 .. zones-1 */
    uint32_t zones;   /* distinct zones among nodes */
    uint32_t zmax;    /* max owners of one zone per row */
};

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
static void quotas(const struct ck_place_node *nodes, uint32_t n, const bool *mask, uint64_t total, uint32_t cap,
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

void ck_place_quotas(const struct ck_place_node *nodes, uint32_t n, const bool *mask,
                     uint64_t total, uint32_t cap, uint32_t *out)
{
    quotas(nodes, n, mask, total, cap, NULL, out, NULL, NULL);
}

/* A zone whose share is exactly P * zmax can still go over it by the
 * rounding of its nodes' quotas (three nodes of 42.67 each hold 43, 43, 42
 * or 43, 43, 43). Hands such ceilings to nodes of zones with room, where
 * that needs no more moves: then the zone rule can hold. */
static void quotas_zone_fit(struct place *s)
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
                if (s->zidx[i] == z && s->quota[i] > s->qlo[i] && (from < 0 || (paid && s->held[from] > s->qlo[from]))) {
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

/* ------------------------------------------------------------------------
 * Row helpers
 * ------------------------------------------------------------------------ */

static inline uint16_t *row(struct place *s, uint32_t p)
{
    return s->rows + (size_t)p * s->w;
}

static bool row_has(struct place *s, uint32_t p, uint16_t x)
{
    const uint16_t *r = row(s, p);
    for (uint32_t k = 0; k < s->cnt[p]; k++) {
        if (r[k] == x) {
            return true;
        }
    }
    return false;
}

static int row_find(struct place *s, uint32_t p, uint16_t x)
{
    const uint16_t *r = row(s, p);
    for (uint32_t k = 0; k < s->cnt[p]; k++) {
        if (r[k] == x) {
            return (int)k;
        }
    }
    return -1;
}

/* Owners of zone @z (a dense index) in row @p, not counting slot @skip
 * (-1: none). */
static uint32_t zone_count(struct place *s, uint32_t p, uint32_t z, int skip)
{
    const uint16_t *r = row(s, p);
    uint32_t c = 0;
    for (uint32_t k = 0; k < s->cnt[p]; k++) {
        if ((int)k != skip && s->zidx[r[k]] == z) {
            c++;
        }
    }
    return c;
}

static bool cur_has(struct place *s, uint32_t p, uint16_t x)
{
    if (s->cur == NULL) {
        return false;
    }
    const uint16_t *r = s->cur + (size_t)p * s->cw;
    for (uint32_t k = 0; k < s->cw && r[k] != CK_NO_NODE; k++) {
        if (r[k] == x) {
            return true;
        }
    }
    return false;
}

/* ------------------------------------------------------------------------
 * Phase 1: fill empty slots round-robin over nodes under quota.
 * ------------------------------------------------------------------------ */

static void place_fill(struct place *s)
{
    uint32_t cursor = 0;
    for (uint32_t p = 0; p < s->P; p++) {
        while (s->cnt[p] < s->w) {
            int64_t pick = -1, fallback = -1, overflow = -1;
            for (uint32_t step = 0; step < s->n; step++) {
                uint32_t x = (cursor + step) % s->n;
                if (row_has(s, p, (uint16_t)x)) {
                    continue;
                }
                bool under = s->held[x] < s->quota[x];
                bool zone_ok = zone_count(s, p, s->zidx[x], -1) < s->zmax;
                if (under && zone_ok) {
                    pick = x;
                    break;
                }
                if (under && fallback < 0) {
                    fallback = x;
                }
                if (overflow < 0 || s->held[x] * 1.0 / (s->quota[x] + 1) <
                                        s->held[overflow] * 1.0 / (s->quota[overflow] + 1)) {
                    overflow = x;
                }
            }
            if (pick < 0) {
                pick = fallback >= 0 ? fallback : overflow;
            }
            if (pick < 0) {
                return; /* Fewer nodes than width: cannot happen (w <= n). */
            }
            row(s, p)[s->cnt[p]++] = (uint16_t)pick;
            s->held[pick]++;
            cursor = ((uint32_t)pick + 1) % s->n;
        }
    }
}

/* ------------------------------------------------------------------------
 * Phase 2: direct moves from nodes over quota to nodes under quota.
 * ------------------------------------------------------------------------ */

/* The best receiver for slot @k of row @p: under quota, not in the row,
 * zone allowed (else any under node not in the row). -1 if none. */
static int64_t pick_receiver(struct place *s, const uint32_t *under, uint32_t n_under, uint32_t p, int k)
{
    int64_t fallback = -1;
    for (uint32_t i = 0; i < n_under; i++) {
        uint32_t u = under[i];
        if (s->held[u] >= s->quota[u] || row_has(s, p, (uint16_t)u)) {
            continue;
        }
        if (zone_count(s, p, s->zidx[u], k) < s->zmax) {
            return u;
        }
        if (fallback < 0) {
            fallback = u;
        }
    }
    return fallback;
}

static void place_move(struct place *s)
{
    uint32_t *under = malloc((s->n ? s->n : 1) * sizeof *under);
    uint32_t *start = calloc((size_t)s->n + 1, sizeof *start);
    uint32_t *list = malloc(((size_t)s->P * s->w + 1) * sizeof *list);
    if (under == NULL || start == NULL || list == NULL) {
        goto out;
    }
    /* Each node's rows (CSR), taken once: a node's list only ever shrinks
     * while it gives slots away, and row_find re-checks. */
    for (uint32_t p = 0; p < s->P; p++) {
        for (uint32_t k = 0; k < s->cnt[p]; k++) {
            start[row(s, p)[k] + 1]++;
        }
    }
    for (uint32_t i = 0; i < s->n; i++) {
        start[i + 1] += start[i];
    }
    {
        uint32_t *fill = calloc(s->n ? s->n : 1, sizeof *fill);
        if (fill == NULL) {
            goto out;
        }
        for (uint32_t p = 0; p < s->P; p++) {
            for (uint32_t k = 0; k < s->cnt[p]; k++) {
                uint16_t x = row(s, p)[k];
                list[start[x] + fill[x]++] = p;
            }
        }
        free(fill);
    }
    for (uint32_t o = 0; o < s->n; o++) {
        /* Two passes over o's rows: first where o is a replica, then where
         * it is the (current) primary, so that primaries stay put. */
        for (int pass = 0; pass < 2 && s->held[o] > s->quota[o]; pass++) {
            uint32_t n_under = 0;
            for (uint32_t u = 0; u < s->n; u++) {
                if (s->held[u] < s->quota[u]) {
                    under[n_under++] = u;
                }
            }
            if (n_under == 0) {
                break;
            }
            for (uint32_t i = start[o]; i < start[o + 1] && s->held[o] > s->quota[o]; i++) {
                uint32_t p = list[i];
                int k = row_find(s, p, (uint16_t)o);
                if (k < 0 || (pass == 0) != (k > 0)) {
                    continue;
                }
                int64_t u = pick_receiver(s, under, n_under, p, k);
                if (u < 0) {
                    continue;
                }
                row(s, p)[k] = (uint16_t)u;
                s->held[o]--;
                s->held[u]++;
            }
        }
    }
out:
    free(under);
    free(start);
    free(list);
}

/* ------------------------------------------------------------------------
 * Phase 3: two-step moves o -> x (row p), x -> u (row q), x at quota.
 * ------------------------------------------------------------------------ */

static void place_unstick(struct place *s)
{
    for (uint32_t o = 0; o < s->n; o++) {
        for (uint32_t u = 0; u < s->n && s->held[o] > s->quota[o]; u++) {
            if (s->held[u] >= s->quota[u]) {
                continue;
            }
            bool moved = true;
            while (moved && s->held[o] > s->quota[o] && s->held[u] < s->quota[u]) {
                moved = false;
                for (uint32_t p = 0; p < s->P && !moved; p++) {
                    int k = row_find(s, p, (uint16_t)o);
                    if (k < 0) {
                        continue;
                    }
                    for (uint32_t x = 0; x < s->n && !moved; x++) {
                        if (x == o || x == u || row_has(s, p, (uint16_t)x)) {
                            continue;
                        }
                        for (uint32_t q = 0; q < s->P; q++) {
                            int kx = row_find(s, q, (uint16_t)x);
                            if (q == p || kx < 0 || row_has(s, q, (uint16_t)u)) {
                                continue;
                            }
                            row(s, p)[k] = (uint16_t)x;
                            row(s, q)[kx] = (uint16_t)u;
                            s->held[o]--;
                            s->held[u]++;
                            moved = true;
                            break;
                        }
                    }
                }
            }
        }
    }
}

/* ------------------------------------------------------------------------
 * Phase 4: zone repair by swapping owners between rows.
 * ------------------------------------------------------------------------ */

static void place_zones(struct place *s)
{
    if (s->zones <= 1) {
        return;
    }
    uint32_t budget = s->P * 64; /* Rows scanned in all: bounds the worst case. */
    for (uint32_t p = 0; p < s->P && budget > 0; p++) {
        for (uint32_t k = s->cnt[p]; k-- > 0 && budget > 0;) {
            uint16_t a = row(s, p)[k];
            uint32_t za = s->zidx[a];
            if (zone_count(s, p, za, -1) <= s->zmax) {
                continue;
            }
            /* Find row q and its owner c: c's zone fits in p, a's zone fits in q. */
            bool done = false;
            for (uint32_t step = 1; step < s->P && budget > 0 && !done; step++, budget--) {
                uint32_t q = (p + step) % s->P;
                if (row_has(s, q, a)) {
                    continue;
                }
                for (uint32_t kc = 0; kc < s->cnt[q]; kc++) {
                    uint16_t c = row(s, q)[kc];
                    uint32_t zc = s->zidx[c];
                    if (zc == za || row_has(s, p, c)) {
                        continue;
                    }
                    if (zone_count(s, p, zc, (int)k) >= s->zmax || zone_count(s, q, za, (int)kc) >= s->zmax) {
                        continue;
                    }
                    row(s, p)[k] = c;
                    row(s, q)[kc] = a;
                    done = true;
                    break;
                }
            }
        }
    }
}

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
    int32_t *prim;      /* Row -> slot of its primary, -1: none yet. */
    bool *lead;
    uint32_t *pq, *pc;  /* Primary quota and count per node. */
    /* Augmenting-path search: rows per node (CSR), BFS marks and queue. */
    uint32_t *start, *list;
    uint32_t *mark, *from, *via, *queue, *src;
    uint32_t gen;
    uint64_t budget;    /* Row visits left for all searches together. */
    uint32_t *plo, *phi; /* Bounds of each primary quota (see quotas()). */
    bool *has_old;      /* The node holds a slot it held before. */
    uint64_t ledrows;   /* Rows with an owner that may lead. */
};

/* Primary quotas: the weighted shares of the rows that have an owner able to
 * lead, over the nodes that may lead, with their floors and ceilings (plo,
 * phi). @have steers the free choice of ceilings (see quotas()). */
static void prim_quotas(struct place *s, struct prim_state *ps, const uint32_t *have)
{
    quotas(s->nodes, s->n, ps->lead, ps->ledrows, s->P, have, ps->pq, ps->plo, ps->phi);
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
            if (x == y || !ps->lead[x] || ps->mark[x] == ps->gen ||
                (promote_only && !cur_has(s, q, (uint16_t)y))) {
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

static void place_primaries(struct place *s, int32_t *prim)
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
    quotas(in->nodes, s.n, NULL, (uint64_t)s.P * s.w, s.P, s.held, s.quota, s.qlo, s.qhi);
    quotas_zone_fit(&s);
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
                place_fill(&one);
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
            place_fill(&s);
            place_move(&s);
            place_unstick(&s);
            place_zones(&s);
        }
    }
    place_primaries(&s, prim);

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
