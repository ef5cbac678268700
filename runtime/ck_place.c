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
#include "ck_place.h"

#include <stdlib.h>
#include <string.h>

#include "ck_common.h"
#include "ck_state.h"

struct place {
    uint32_t P, w, n;
    const struct ck_place_node *nodes;
    uint16_t *rows;      /* P * w */
    uint8_t *cnt;        /* owners per row */
    uint32_t *held;      /* slots per node */
    uint32_t *quota;     /* slot quota per node */
    uint32_t *qlo, *qhi; /* floor and ceiling a node's quota may take */
    const uint16_t *cur;
    uint32_t cw;
    uint32_t *zidx; /* node -> dense zone index, 0 .. zones-1 */
    uint32_t zones; /* distinct zones among nodes */
    uint32_t zmax;  /* max owners of one zone per row */
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

void ck_place_quotas(const struct ck_place_node *nodes, uint32_t n, const bool *mask, uint64_t total, uint32_t cap,
                     uint32_t *out)
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
 * Phase 1: fill empty slots with nodes under quota.
 *
 * The slots each node under quota still needs form a deck, shuffled by a
 * fixed-seed generator and dealt to the empty slots in row order; a card that
 * does not fit a row (the node is in it already, or its zone is full there)
 * waits for a later row. A fixed round-robin cursor instead repeats the same
 * owner sets with a period of about n / w rows: a node then shares nearly all
 * its rows with the same few peers, and when it goes down only those peers
 * can take over its primaries. Drawing from the nodes' remaining needs also
 * keeps any node from falling behind and finding, in the last rows, no row
 * left that lacks it; when few rows are to fill (a leave), a node with no
 * more rows left that lack it than slots it needs is dealt first.
 *
 * When no card fits a row: a chain of trades with rows filled earlier in
 * this phase (all those slots are new anyway, so nothing extra moves); or a
 * node at its floor that fits takes the ceiling from a node under quota that
 * does not (same balance, same number of moves); only then a zone is
 * repeated, and as a last resort a node goes over quota (phase 2 moves the
 * excess).
 * ------------------------------------------------------------------------ */

/* True if no zone's quotas add up to more than zmax owners in every row:
 * otherwise some rows must break the zone rule whatever the placement. */
static bool zones_can_fit(struct place *s)
{
    uint64_t *total = calloc(s->zones, sizeof *total);
    bool fit = total != NULL;
    for (uint32_t i = 0; i < s->n && fit; i++) {
        total[s->zidx[i]] += s->quota[i];
    }
    for (uint32_t z = 0; z < s->zones && fit; z++) {
        fit = total[z] <= (uint64_t)s->P * s->zmax;
    }
    free(total);
    return fit;
}

/* splitmix64: the deck's shuffle depends only on the input. */
static uint64_t fill_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

struct fill_state {
    uint8_t *base;   /* Row -> owners kept by phase 0 (fill appends after). */
    uint32_t *frows; /* Rows that got a slot in this phase, in order. */
    uint32_t n_frows;
    uint32_t *under; /* Nodes under quota (refreshed per search). */
    uint32_t n_under;
    uint32_t *mark, gen; /* Per (row, slot) search state: row * w + slot. */
    uint32_t *par;       /* State -> the state it hands its node to. */
    uint32_t *queue;
    uint32_t *ns_start, *ns_list, *ns_fill; /* New slots per node (CSR). */
    uint64_t budget;                        /* Row visits left for all searches. */
    uint16_t *deck;                         /* One card per slot a node under quota needs. */
    size_t n_deck, pos;                     /* Cards before pos are dealt (or stale). */
    uint64_t *zrem;                         /* Cards left (from pos on) per zone. */
    uint32_t *avail;                        /* Rows still to fill that lack the node, or NULL. */
    bool trouble;                           /* A node went over quota, or a zone that fits broke. */
    uint64_t seed;
};

/* True if row @p lacks @x and (if @strict) x's zone fits, not counting the
 * owner in slot @skip (-1: none), which is leaving the row. */
static bool fill_fits(struct place *s, uint32_t p, uint16_t x, int skip, bool strict)
{
    const uint16_t *r = row(s, p);
    for (uint32_t k = 0; k < s->cnt[p]; k++) {
        if ((int)k != skip && r[k] == x) {
            return false;
        }
    }
    return !strict || zone_count(s, p, s->zidx[x], skip) < s->zmax;
}

/* Row @p needs one more owner, and no node under quota fits it. Searches,
 * breadth first, for a chain of slots filled earlier in this phase: p takes
 * y1 from row q1, q1 takes y2 from q2, ..., the last row takes a node u under
 * quota (or one at a quota below its ceiling, which then takes the ceiling
 * of a node under quota: see fill_flex). Every slot involved is new in this
 * computation, so the chain moves nothing extra; only u's count grows. A
 * search state is a (row, slot) to hand over; a row appears at most once on
 * a chain. */
#define CHAIN_MAX_CHECKS (1u << 20)
#define CHAIN_ROOT UINT32_MAX

static bool chain_on_path(struct fill_state *fs, uint32_t st, uint32_t q, uint32_t w)
{
    for (; st != CHAIN_ROOT; st = fs->par[st]) {
        if (st / w == q) {
            return true;
        }
    }
    return false;
}

/* Visits search state @st = (q, kq), reached from @cur (row r): marks it,
 * and if q can take a node from the terminal list in place of slot kq,
 * applies the chain. Returns 1 if applied, 0 if @st was queued, -1 if it
 * was skipped. */
static int chain_visit(struct place *s, struct fill_state *fs, uint32_t p, uint32_t cur, uint32_t st, bool strict,
                       int64_t donor, uint64_t *left, uint32_t *tail)
{
    const uint32_t w = s->w;
    uint32_t q = st / w, kq = st % w;
    fs->mark[st] = fs->gen;
    fs->par[st] = cur;
    for (uint32_t j = 0; j<fs->n_under && * left> 0; j++) {
        uint16_t u = (uint16_t)fs->under[j];
        (*left)--;
        if (!fill_fits(s, q, u, (int)kq, strict)) {
            continue;
        }
        /* Shift along the chain: q takes u, each row hands its slot to its
         * parent, p appends the last. */
        uint16_t val = row(s, q)[kq];
        row(s, q)[kq] = u;
        if (s->held[u] >= s->quota[u]) {
            s->quota[u]++;
            s->quota[donor]--;
        }
        s->held[u]++;
        for (uint32_t c = cur; c != CHAIN_ROOT; c = fs->par[c]) {
            uint16_t next = row(s, c / w)[c % w];
            row(s, c / w)[c % w] = val;
            val = next;
        }
        row(s, p)[s->cnt[p]++] = val;
        return 1;
    }
    fs->queue[(*tail)++] = st;
    return 0;
}

static bool fill_chain(struct place *s, struct fill_state *fs, uint32_t p, bool strict)
{
    const uint32_t w = s->w;
    uint32_t head = 0, tail = 0;
    int64_t donor = -1;
    fs->n_under = 0;
    for (uint32_t x = 0; x < s->n; x++) {
        if (s->held[x] < s->quota[x]) {
            fs->under[fs->n_under++] = x;
            if (donor < 0 && s->quota[x] > s->qlo[x]) {
                donor = x;
            }
        }
    }
    for (uint32_t x = 0; x < s->n && donor >= 0; x++) {
        if (s->held[x] >= s->quota[x] && s->quota[x] < s->qhi[x]) {
            fs->under[fs->n_under++] = x;
        }
    }
    /* Checks left: this search's share of the phase's budget. */
    uint64_t left = fs->budget < CHAIN_MAX_CHECKS ? fs->budget : CHAIN_MAX_CHECKS;
    fs->budget -= left;
    /* A state's successors are the new slots whose node fits its row. With
     * few nodes, list the new slots per node (CSR) and go through the nodes
     * that fit; with many, scan the rows filled so far. */
    bool by_node = s->n < fs->n_frows && (uint64_t)fs->n_frows * w <= (1u << 16);
    if (by_node) {
        memset(fs->ns_start, 0, (s->n + 1) * sizeof *fs->ns_start);
        for (uint32_t i = 0; i < fs->n_frows; i++) {
            uint32_t q = fs->frows[i];
            for (uint32_t kq = fs->base[q]; kq < s->cnt[q]; kq++) {
                fs->ns_start[row(s, q)[kq] + 1]++;
            }
        }
        for (uint32_t x = 0; x < s->n; x++) {
            fs->ns_start[x + 1] += fs->ns_start[x];
        }
        for (uint32_t i = 0; i < fs->n_frows; i++) {
            uint32_t q = fs->frows[i];
            for (uint32_t kq = fs->base[q]; kq < s->cnt[q]; kq++) {
                uint16_t x = row(s, q)[kq];
                fs->ns_list[fs->ns_start[x] + fs->ns_fill[x]++] = q * w + kq;
            }
        }
        memset(fs->ns_fill, 0, s->n * sizeof *fs->ns_fill);
        left = left > fs->n_frows * w ? left - fs->n_frows * w : 0;
    }
    fs->gen++;
    fs->queue[tail++] = CHAIN_ROOT;
    while (head < tail && left > 0) {
        uint32_t cur = fs->queue[head++];
        uint32_t r = cur == CHAIN_ROOT ? p : cur / w;
        int rskip = cur == CHAIN_ROOT ? -1 : (int)(cur % w);
        if (by_node) {
            for (uint32_t y = 0; y < s->n && left > 0; y++) {
                left--;
                if (!fill_fits(s, r, (uint16_t)y, rskip, strict)) {
                    continue;
                }
                for (uint32_t i = fs->ns_start[y]; i < fs->ns_start[y + 1] && left > 0; i++) {
                    uint32_t st = fs->ns_list[i], q = st / w;
                    left--;
                    if (q == p || q == r || fs->mark[st] == fs->gen || row(s, q)[st % w] != y ||
                        (cur != CHAIN_ROOT && chain_on_path(fs, cur, q, w))) {
                        continue;
                    }
                    if (chain_visit(s, fs, p, cur, st, strict, donor, &left, &tail) > 0) {
                        fs->budget += left;
                        return true;
                    }
                }
            }
            continue;
        }
        for (uint32_t i = 0; i < fs->n_frows && left > 0; i++) {
            uint32_t q = fs->frows[i];
            left--;
            if (q == p || q == r || (cur != CHAIN_ROOT && chain_on_path(fs, cur, q, w))) {
                continue;
            }
            for (uint32_t kq = fs->base[q]; kq < s->cnt[q] && left > 0; kq++) {
                uint32_t st = q * w + kq;
                if (fs->mark[st] == fs->gen || !fill_fits(s, r, row(s, q)[kq], rskip, strict)) {
                    continue;
                }
                if (chain_visit(s, fs, p, cur, st, strict, donor, &left, &tail) > 0) {
                    fs->budget += left;
                    return true;
                }
            }
        }
    }
    return false;
}

/* Deals a card from the deck that fits row @p (zones too if @strict),
 * looking at most @look cards ahead. Cards of nodes that reached their quota
 * another way are dropped on the way. Among the first few cards that fit, the
 * one of the zone with the most cards left wins: dealing the largest zones
 * first keeps the last rows from facing only cards of zones they already
 * have. With a short look, a card that does not fit trades places with a
 * random later one: otherwise the cards of a zone with more slots than rows
 * (which many rows refuse) would pile up at the front and be looked at again
 * for every slot. */
static bool fill_deal(struct place *s, struct fill_state *fs, uint32_t p, bool strict, size_t look)
{
    const uint32_t choice = s->zones > 1 ? 4 : 1;
    size_t end = look < fs->n_deck - fs->pos ? fs->pos + look : fs->n_deck;
    size_t best = SIZE_MAX;
    uint32_t found = 0;
    for (size_t j = fs->pos; j < end && found < choice; j++) {
        uint16_t x = fs->deck[j];
        if (s->held[x] >= s->quota[x]) {
            if (best == fs->pos) {
                best = j;
            }
            fs->deck[j] = fs->deck[fs->pos];
            fs->deck[fs->pos++] = x;
            fs->zrem[s->zidx[x]]--;
            continue;
        }
        if (!fill_fits(s, p, x, -1, strict)) {
            if (look != SIZE_MAX && j + 1 < fs->n_deck) {
                size_t r = j + 1 + fill_rand(&fs->seed) % (fs->n_deck - j - 1);
                fs->deck[j] = fs->deck[r];
                fs->deck[r] = x;
            }
            continue;
        }
        found++;
        if (best == SIZE_MAX || fs->zrem[s->zidx[x]] > fs->zrem[s->zidx[fs->deck[best]]]) {
            best = j;
        }
    }
    if (best == SIZE_MAX) {
        return false;
    }
    uint16_t x = fs->deck[best];
    fs->deck[best] = fs->deck[fs->pos];
    fs->deck[fs->pos++] = x;
    fs->zrem[s->zidx[x]]--;
    row(s, p)[s->cnt[p]++] = x;
    s->held[x]++;
    return true;
}

/* A node at its quota that could as well have the ceiling, and fits row
 * @p, takes the ceiling (and the slot) from a node under quota that does
 * not fit p: both quotas stay within their bounds, and the number of slots
 * to move is the same. */
static bool fill_flex(struct place *s, uint32_t p, bool strict)
{
    int64_t donor = -1;
    for (uint32_t u = 0; u < s->n && donor < 0; u++) {
        if (s->held[u] < s->quota[u] && s->quota[u] > s->qlo[u] && !fill_fits(s, p, (uint16_t)u, -1, strict)) {
            donor = u;
        }
    }
    if (donor < 0) {
        return false;
    }
    for (uint32_t x = 0; x < s->n; x++) {
        if (s->held[x] >= s->quota[x] && s->quota[x] < s->qhi[x] && fill_fits(s, p, (uint16_t)x, -1, strict)) {
            s->quota[donor]--;
            s->quota[x]++;
            row(s, p)[s->cnt[p]++] = (uint16_t)x;
            s->held[x]++;
            return true;
        }
    }
    return false;
}

/* Fills one more slot of row @p, trying in turn: a node that would
 * otherwise run out of rows; a card that fits; with zones that can fit, any
 * card, a chain, a ceiling handed over; the same with zones broken; last, a
 * node over quota. */
static void fill_step(struct place *s, struct fill_state *fs, uint32_t p, bool zones_fit, bool zoned)
{
    if (fs->avail != NULL) {
        int64_t best = -1, best_slack = 0;
        for (uint32_t x = 0; x < s->n; x++) {
            int64_t need = s->held[x] < s->quota[x] ? (int64_t)s->quota[x] - s->held[x] : 0;
            int64_t slack = (int64_t)fs->avail[x] - need;
            if (need > 0 && slack <= 0 && (best < 0 || slack < best_slack) &&
                fill_fits(s, p, (uint16_t)x, -1, zones_fit)) {
                best = x;
                best_slack = slack;
            }
        }
        if (best >= 0) {
            /* Its card stays in the deck and is dropped once the node is
             * full. */
            row(s, p)[s->cnt[p]++] = (uint16_t)best;
            s->held[best]++;
            return;
        }
    }
    if (fill_deal(s, fs, p, true, 64)) {
        return;
    }
    if (zones_fit && (fill_deal(s, fs, p, true, SIZE_MAX) || (fs->budget > 0 && fill_chain(s, fs, p, true)) ||
                      fill_flex(s, p, true))) {
        return;
    }
    if (zoned && (fill_deal(s, fs, p, false, SIZE_MAX) || (fs->budget > 0 && fill_chain(s, fs, p, false)) ||
                  fill_flex(s, p, false))) {
        fs->trouble |= zones_fit;
        return;
    }
    fs->trouble = true;
    /* Over quota: the node the least loaded for its quota. */
    int64_t over = -1;
    for (uint32_t x = 0; x < s->n; x++) {
        if (!row_has(s, p, (uint16_t)x) &&
            (over < 0 || (uint64_t)s->held[x] * (s->quota[over] + 1) < (uint64_t)s->held[over] * (s->quota[x] + 1))) {
            over = x;
        }
    }
    if (over >= 0) {
        row(s, p)[s->cnt[p]++] = (uint16_t)over;
        s->held[over]++;
    }
}

/* ------------------------------------------------------------------------
 * Phase 1b: exact repair of a small fill.
 *
 * The deal above is greedy: in a small table it can leave a node short with
 * every row that still has room already holding it (it then goes over quota
 * elsewhere and phase 2 moves a slot between staying nodes), or break a zone
 * that could have been kept. Filling the empty slots is a flow problem (rows
 * with room -> [row, zone] -> nodes that lack the row -> each node up to its
 * floor, then its ceiling), so for small tables the greedy result is kept as
 * a starting flow, its bad slots are taken out, and augmenting paths finish
 * the job exactly. Only when no node was above its quota before the fill
 * (then every count the flow gives is a valid quota).
 * ------------------------------------------------------------------------ */

#define REPAIR_MAX_SIZE (1u << 16) /* Rows with room x (nodes + zones). */

struct repair {
    uint32_t V, Z;
    uint32_t *vrow;       /* Rows with room. */
    uint8_t *used;        /* V x n: the node fills a slot of the row. */
    uint8_t *zuse, *zcap; /* V x Z: new owners per zone, and room. */
    uint8_t *su, *vac;    /* Per row: slots filled, slots empty at first. */
    uint32_t *cap;        /* Per node: target count this round. */
    int32_t *prev;        /* BFS: vertex -> previous vertex. */
    uint32_t *queue;
};

/* Vertex ids: rows 0..V-1, nodes V..V+n-1, (row, zone) V+n+v*Z+z. */
/* One augmenting path to a node below its cap, from a row with an empty
 * slot or (with @release) from a node above its floor, which gives up a
 * slot. */
static bool repair_augment(struct place *s, struct repair *rp, bool zoned, bool release)
{
    const uint32_t V = rp->V, n = s->n, Z = rp->Z;
    const uint32_t nv = V + n + (zoned ? V * Z : 0);
    uint32_t head = 0, tail = 0;
    int64_t end = -1;
    for (uint32_t i = 0; i < nv; i++) {
        rp->prev[i] = -2; /* Unvisited; -1: reached from the source. */
    }
    for (uint32_t v = 0; v < V; v++) {
        if (rp->su[v] < rp->vac[v]) {
            rp->prev[v] = -1;
            rp->queue[tail++] = v;
        }
    }
    for (uint32_t x = 0; release && x < n; x++) {
        if (s->held[x] > s->qlo[x]) {
            rp->prev[V + x] = -3;
            rp->queue[tail++] = V + x;
        }
    }
    while (head < tail && end < 0) {
        uint32_t u = rp->queue[head++];
        if (u < V || u >= V + n) {
            /* A row, or a (row, zone): on to nodes that lack the row. */
            uint32_t v = u < V ? u : (u - V - n) / Z, z = u < V ? 0 : (u - V - n) % Z;
            if (u < V && zoned) {
                for (uint32_t zz = 0; zz < Z; zz++) {
                    uint32_t t = V + n + v * Z + zz;
                    if (rp->zuse[v * Z + zz] < rp->zcap[v * Z + zz] && rp->prev[t] == -2) {
                        rp->prev[t] = (int32_t)u;
                        rp->queue[tail++] = t;
                    }
                }
                continue;
            }
            if (u >= V && rp->zuse[v * Z + z] > 0 && rp->prev[v] == -2) {
                rp->prev[v] = (int32_t)u; /* Back along row -> (row, zone). */
                rp->queue[tail++] = v;
            }
            for (uint32_t x = 0; x < n && end < 0; x++) {
                uint32_t t = V + x;
                if ((u >= V && s->zidx[x] != z) || rp->used[(size_t)v * n + x] || rp->prev[t] != -2) {
                    continue;
                }
                bool kept = false;
                for (uint32_t k = 0; k < s->cnt[rp->vrow[v]] && !kept; k++) {
                    kept = row(s, rp->vrow[v])[k] == x;
                }
                if (kept) {
                    continue;
                }
                rp->prev[t] = (int32_t)u;
                if (s->held[x] < rp->cap[x]) {
                    end = t;
                } else {
                    rp->queue[tail++] = t;
                }
            }
        } else {
            /* A node: back to the rows (or row zones) it fills. */
            uint32_t x = u - V;
            for (uint32_t v = 0; v < V; v++) {
                uint32_t t = zoned ? V + n + v * Z + s->zidx[x] : v;
                if (rp->used[(size_t)v * n + x] && rp->prev[t] == -2) {
                    rp->prev[t] = (int32_t)u;
                    rp->queue[tail++] = t;
                }
            }
        }
    }
    if (end < 0) {
        return false;
    }
    s->held[end - V]++;
    for (uint32_t t = (uint32_t)end;;) {
        int32_t f = rp->prev[t];
        if (f == -1) {
            rp->su[t]++;
            break;
        }
        if (f == -3) {
            s->held[t - V]--;
            break;
        }
        uint32_t u = (uint32_t)f;
        bool t_node = t >= V && t < V + n, u_node = u >= V && u < V + n;
        if (t_node) {
            /* Into a node from its row (or row zone): a new slot. */
            uint32_t v = u < V ? u : (u - V - n) / Z;
            rp->used[(size_t)v * n + (t - V)] = 1;
        } else if (u_node) {
            /* Out of a node back to a row it filled: that slot goes. */
            uint32_t v = t < V ? t : (t - V - n) / Z;
            rp->used[(size_t)v * n + (u - V)] = 0;
        } else if (t >= V + n && u < V) {
            rp->zuse[t - V - n]++; /* Row -> (row, zone). */
        } else if (t < V && u >= V + n) {
            rp->zuse[u - V - n]--; /* (row, zone) -> row, backwards. */
        }
        t = u;
    }
    return true;
}

static void fill_repair(struct place *s, const uint8_t *base, bool zones_strict)
{
    struct repair rp;
    memset(&rp, 0, sizeof rp);
    const uint32_t n = s->n, w = s->w;
    uint16_t *save_rows = malloc((size_t)s->P * w * sizeof *save_rows);
    uint8_t *save_cnt = malloc(s->P);
    uint32_t *save_held = malloc(n * sizeof *save_held);
    for (uint32_t p = 0; p < s->P; p++) {
        rp.V += base[p] < w;
    }
    rp.Z = s->zones;
    rp.vrow = malloc((rp.V + 1) * sizeof *rp.vrow);
    rp.used = calloc((size_t)rp.V * n + 1, 1);
    rp.zuse = calloc((size_t)rp.V * rp.Z + 1, 1);
    rp.zcap = calloc((size_t)rp.V * rp.Z + 1, 1);
    rp.su = calloc(rp.V + 1, 1);
    rp.vac = calloc(rp.V + 1, 1);
    rp.cap = calloc(n, sizeof *rp.cap);
    rp.prev = malloc(((size_t)rp.V * (rp.Z + 1) + n + 1) * sizeof *rp.prev);
    rp.queue = malloc(((size_t)rp.V * (rp.Z + 1) + n + 1) * sizeof *rp.queue);
    if (save_rows == NULL || save_cnt == NULL || save_held == NULL || rp.vrow == NULL || rp.used == NULL ||
        rp.zuse == NULL || rp.zcap == NULL || rp.su == NULL || rp.vac == NULL || rp.cap == NULL || rp.prev == NULL ||
        rp.queue == NULL) {
        goto out;
    }
    memcpy(save_rows, s->rows, (size_t)s->P * w * sizeof *save_rows);
    memcpy(save_cnt, s->cnt, s->P);
    memcpy(save_held, s->held, n * sizeof *save_held);
    /* The starting flow: the new slots of the greedy fill, without those
     * over a quota or (if @zones_strict) over zmax in their row. */
    rp.V = 0;
    for (uint32_t p = 0; p < s->P; p++) {
        if (base[p] >= w) {
            continue;
        }
        uint32_t v = rp.V++;
        rp.vrow[v] = p;
        rp.vac[v] = (uint8_t)(w - base[p]);
        for (uint32_t z = 0; z < rp.Z; z++) {
            rp.zcap[v * rp.Z + z] = (uint8_t)(zones_strict ? s->zmax : w);
        }
        for (uint32_t k = 0; k < base[p]; k++) {
            uint32_t z = s->zidx[row(s, p)[k]];
            rp.zcap[v * rp.Z + z] = rp.zcap[v * rp.Z + z] > 0 ? rp.zcap[v * rp.Z + z] - 1 : 0;
        }
        for (uint32_t k = base[p]; k < s->cnt[p]; k++) {
            uint16_t x = row(s, p)[k];
            uint32_t z = s->zidx[x];
            if (s->held[x] > s->quota[x] || rp.zuse[v * rp.Z + z] >= rp.zcap[v * rp.Z + z]) {
                s->held[x]--;
                continue;
            }
            rp.used[(size_t)v * n + x] = 1;
            rp.zuse[v * rp.Z + z]++;
            rp.su[v]++;
        }
        s->cnt[p] = base[p]; /* The kept owners; new ones are in used[]. */
    }
    /* Augment: every node up to its floor first, then up to its ceiling. */
    uint64_t missing = 0;
    for (uint32_t v = 0; v < rp.V; v++) {
        missing += rp.vac[v] - rp.su[v];
    }
    for (int round = 0; round < 2 && missing > 0; round++) {
        for (uint32_t x = 0; x < n; x++) {
            rp.cap[x] = round == 0 ? s->qlo[x] : s->qhi[x];
        }
        while (missing > 0 && repair_augment(s, &rp, rp.Z > 1 && zones_strict, false)) {
            missing--;
        }
    }
    /* Floors still not reached: take slots from nodes above theirs. */
    for (uint32_t x = 0; x < n; x++) {
        rp.cap[x] = s->qlo[x];
    }
    while (missing == 0 && repair_augment(s, &rp, rp.Z > 1 && zones_strict, true)) {
    }
    bool ok = missing == 0;
    for (uint32_t x = 0; x < n && ok; x++) {
        ok = s->held[x] >= s->qlo[x] && s->held[x] <= s->qhi[x];
    }
    if (!ok) {
        memcpy(s->rows, save_rows, (size_t)s->P * w * sizeof *save_rows);
        memcpy(s->cnt, save_cnt, s->P);
        memcpy(s->held, save_held, n * sizeof *save_held);
        goto out;
    }
    for (uint32_t v = 0; v < rp.V; v++) {
        uint32_t p = rp.vrow[v];
        for (uint32_t x = 0; x < n; x++) {
            if (rp.used[(size_t)v * n + x]) {
                row(s, p)[s->cnt[p]++] = (uint16_t)x;
            }
        }
    }
    for (uint32_t x = 0; x < n; x++) {
        s->quota[x] = s->held[x]; /* Within [floor, ceiling], summing to P * w. */
    }
out:
    free(save_rows);
    free(save_cnt);
    free(save_held);
    free(rp.vrow);
    free(rp.used);
    free(rp.zuse);
    free(rp.zcap);
    free(rp.su);
    free(rp.vac);
    free(rp.cap);
    free(rp.prev);
    free(rp.queue);
}

static void place_fill(struct place *s)
{
    struct fill_state fs;
    memset(&fs, 0, sizeof fs);
    size_t n_deck = 0;
    bool over_before = false;
    for (uint32_t x = 0; x < s->n; x++) {
        n_deck += s->held[x] < s->quota[x] ? s->quota[x] - s->held[x] : 0;
        over_before |= s->held[x] > s->quota[x];
    }
    fs.base = malloc(s->P);
    fs.frows = malloc(s->P * sizeof *fs.frows);
    fs.under = malloc(s->n * sizeof *fs.under);
    fs.mark = calloc((size_t)s->P * s->w, sizeof *fs.mark);
    fs.par = malloc((size_t)s->P * s->w * sizeof *fs.par);
    fs.queue = malloc(((size_t)s->P * s->w + 1) * sizeof *fs.queue);
    fs.ns_start = calloc((size_t)s->n + 1, sizeof *fs.ns_start);
    fs.ns_fill = calloc(s->n, sizeof *fs.ns_fill);
    fs.ns_list = malloc(((size_t)s->P * s->w + 1) * sizeof *fs.ns_list);
    fs.deck = malloc((n_deck + 1) * sizeof *fs.deck);
    fs.zrem = calloc(s->zones, sizeof *fs.zrem);
    if (fs.base == NULL || fs.frows == NULL || fs.under == NULL || fs.mark == NULL || fs.par == NULL ||
        fs.queue == NULL || fs.ns_start == NULL || fs.ns_fill == NULL || fs.ns_list == NULL || fs.deck == NULL ||
        fs.zrem == NULL) {
        goto out; /* The move phase still reaches the quotas, less well. */
    }
    memcpy(fs.base, s->cnt, s->P);
    /* Rows visited by chain searches in all: keeps a hopeless end game
     * (the rows with room all hold the node that needs slots) cheap. */
    fs.budget = (uint64_t)s->P * s->w * 4 + (1u << 20);
    fs.seed = (uint64_t)s->P << 40 ^ (uint64_t)s->w << 32 ^ s->n;
    for (uint32_t x = 0; x < s->n; x++) {
        for (uint32_t k = s->held[x]; k < s->quota[x]; k++) {
            fs.deck[fs.n_deck++] = (uint16_t)x;
            fs.zrem[s->zidx[x]]++;
        }
    }
    for (size_t i = fs.n_deck; i > 1; i--) {
        size_t j = fill_rand(&fs.seed) % i;
        uint16_t t = fs.deck[i - 1];
        fs.deck[i - 1] = fs.deck[j];
        fs.deck[j] = t;
    }
    /* Zone chains and swaps only help when the zones can hold the quotas. */
    bool zones_fit = zones_can_fit(s);
    bool zoned = s->zones > 1 && s->zmax < s->w;
    /* Few rows to fill (a leave): count, per node, the rows still to fill
     * that lack it. A node with no more such rows than slots it needs is
     * dealt first wherever it fits (the deck would leave it behind: it
     * already owns most of those rows). Too costly for a fresh table, whose
     * rows all have room. */
    uint64_t n_vac = 0;
    for (uint32_t p = 0; p < s->P; p++) {
        n_vac += s->cnt[p] < s->w;
    }
    fs.avail = n_vac * s->n <= (1u << 22) ? calloc(s->n, sizeof *fs.avail) : NULL;
    for (uint32_t p = 0; fs.avail != NULL && p < s->P; p++) {
        for (uint32_t x = 0; x < s->n && s->cnt[p] < s->w; x++) {
            fs.avail[x] += !row_has(s, p, (uint16_t)x);
        }
    }
    for (uint32_t p = 0; p < s->P; p++) {
        bool vacant = s->cnt[p] < s->w;
        while (s->cnt[p] < s->w) {
            uint32_t before = s->cnt[p];
            fill_step(s, &fs, p, zones_fit, zoned);
            if (s->cnt[p] == before) {
                break; /* Fewer nodes than width: cannot happen (w <= n). */
            }
            if (fs.avail != NULL) {
                fs.avail[row(s, p)[s->cnt[p] - 1]]--;
            }
        }
        for (uint32_t x = 0; fs.avail != NULL && vacant && x < s->n; x++) {
            fs.avail[x] -= !row_has(s, p, (uint16_t)x);
        }
        if (s->cnt[p] > fs.base[p]) {
            fs.frows[fs.n_frows++] = p;
        }
    }
    if (fs.trouble && !over_before && n_vac * (s->n + s->zones) <= REPAIR_MAX_SIZE) {
        fill_repair(s, fs.base, zones_fit && zoned);
    }
out:
    free(fs.avail);
    free(fs.base);
    free(fs.frows);
    free(fs.under);
    free(fs.mark);
    free(fs.par);
    free(fs.queue);
    free(fs.ns_start);
    free(fs.ns_fill);
    free(fs.ns_list);
    free(fs.deck);
    free(fs.zrem);
}

/* ------------------------------------------------------------------------
 * Phase 2: direct moves from nodes over quota to nodes under quota.
 * ------------------------------------------------------------------------ */

/* The receiver for slot @k of row @p: under quota, not in the row, and
 * (if @strict) leaving the row's zones within zmax. Among those, one of the
 * zone with the most slots (@zload): few rows have room for such a zone, so
 * it takes the row while it can, and nodes of sparser zones, which fit
 * almost anywhere, take the others. -1 if none. */
static int64_t pick_receiver(struct place *s, const uint32_t *under, uint32_t n_under, uint32_t p, int k, bool strict,
                             const uint64_t *zload)
{
    int64_t best = -1;
    for (uint32_t i = 0; i < n_under; i++) {
        uint32_t u = under[i];
        if (s->held[u] >= s->quota[u] || row_has(s, p, (uint16_t)u)) {
            continue;
        }
        if (!strict) {
            return u;
        }
        if (zone_count(s, p, s->zidx[u], k) < s->zmax && (best < 0 || zload[s->zidx[u]] > zload[s->zidx[best]])) {
            best = u;
        }
    }
    return best;
}

/* Givers go in order of quota, smallest first (keys quota << 32 | index):
 * a node with a small quota has few rows to give from, and a large giver
 * that went first could fill the receiver into exactly those rows (it may
 * be in every row). */
static int move_order_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The exchange of place_move for giver @o in row @p (see there). */
static void move_exchange(struct place *s, uint32_t p, uint16_t o, const uint32_t *start, const uint32_t *list)
{
    int ko = row_find(s, p, o);
    const uint16_t *c = s->cur != NULL ? s->cur + (size_t)p * s->cw : NULL;
    if (ko < 0 || c == NULL) {
        return;
    }
    for (uint32_t j = 0; j < s->cw && c[j] != CK_NO_NODE; j++) {
        uint16_t o2 = c[j];
        if (o2 == o || o2 >= s->n || row_has(s, p, o2)) {
            continue; /* Not a giver that left p in this phase. */
        }
        for (uint32_t k = 0; k < s->cnt[p]; k++) {
            uint16_t u = row(s, p)[k];
            if (cur_has(s, p, u) || s->held[u] >= s->quota[u]) {
                continue; /* Not a receiver new in p, or one that is full. */
            }
            for (uint32_t i = start[o2]; i < start[o2 + 1]; i++) {
                uint32_t q = list[i];
                int k2 = row_find(s, q, o2);
                if (q == p || k2 < 0 || row_has(s, q, u)) {
                    continue;
                }
                row(s, q)[k2] = u;
                row(s, p)[ko] = o2;
                s->held[o]--;
                s->held[u]++;
                return;
            }
        }
    }
}

static void place_move(struct place *s)
{
    uint32_t *under = malloc((s->n ? s->n : 1) * sizeof *under);
    uint32_t *start = calloc((size_t)s->n + 1, sizeof *start);
    uint32_t *list = malloc(((size_t)s->P * s->w + 1) * sizeof *list);
    uint64_t *zload = calloc(s->zones, sizeof *zload);
    uint64_t *order = malloc((s->n ? s->n : 1) * sizeof *order);
    if (under == NULL || start == NULL || list == NULL || zload == NULL || order == NULL) {
        goto out;
    }
    for (uint32_t i = 0; i < s->n; i++) {
        zload[s->zidx[i]] += s->held[i];
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
    /* Moves that keep the zones first, from every giver, and only then any
     * move; within each, a giver's rows where it is a replica before those
     * it leads, so that primaries stay put. */
    for (uint32_t i = 0; i < s->n; i++) {
        order[i] = (uint64_t)s->quota[i] << 32 | i;
    }
    qsort(order, s->n, sizeof *order, move_order_cmp);
    for (int strict = 1; strict >= 0; strict--) {
        for (uint32_t oi = 0; oi < s->n; oi++) {
            uint32_t o = (uint32_t)order[oi];
            for (int pass = 0; pass < 2 && s->held[o] > s->quota[o]; pass++) {
                uint32_t n_under = 0;
                for (uint32_t u = 0; u < s->n; u++) {
                    if (s->held[u] < s->quota[u]) {
                        under[n_under++] = u;
                    }
                }
                if (n_under == 0) {
                    goto out;
                }
                for (uint32_t i = start[o]; i < start[o + 1] && s->held[o] > s->quota[o]; i++) {
                    uint32_t p = list[i];
                    int k = row_find(s, p, (uint16_t)o);
                    if (k < 0 || (pass == 0) != (k > 0)) {
                        continue;
                    }
                    int64_t u = pick_receiver(s, under, n_under, p, k, strict, zload);
                    if (u < 0) {
                        continue;
                    }
                    row(s, p)[k] = (uint16_t)u;
                    s->held[o]--;
                    s->held[u]++;
                    zload[s->zidx[o]]--;
                    zload[s->zidx[u]]++;
                }
            }
        }
    }
    /* A giver still over quota: every row it could give already holds the
     * receivers. In such a row p, a receiver u took the slot of another giver
     * o2 (o2 held p before): o2 takes p back in o's place, and gives u a row
     * q of its own instead. o loses a slot, u keeps its count, o2 gives q
     * rather than p: still only givers lose and receivers gain. */
    for (uint32_t oi = 0; oi < s->n; oi++) {
        uint32_t o = (uint32_t)order[oi];
        for (uint32_t i = start[o]; i < start[o + 1] && s->held[o] > s->quota[o]; i++) {
            move_exchange(s, list[i], (uint16_t)o, start, list);
        }
    }
out:
    free(under);
    free(start);
    free(list);
    free(zload);
    free(order);
}

/* ------------------------------------------------------------------------
 * Phase 3: two-step moves o -> x (row p), x -> u (row q), x at quota.
 * ------------------------------------------------------------------------ */

static void place_unstick(struct place *s)
{
    /* Rows looked at in all: the search is quadratic in P at worst (when
     * the receiver is in nearly every row), and this phase is rare. */
    uint64_t budget = ((uint64_t)s->P * s->w + 4096) * 64;
    for (uint32_t o = 0; o < s->n && budget > 0; o++) {
        for (uint32_t u = 0; u < s->n && s->held[o] > s->quota[o]; u++) {
            if (s->held[u] >= s->quota[u]) {
                continue;
            }
            bool moved = true;
            while (moved && s->held[o] > s->quota[o] && s->held[u] < s->quota[u]) {
                moved = false;
                for (uint32_t p = 0; p < s->P && !moved && budget > 0; p++, budget--) {
                    int k = row_find(s, p, (uint16_t)o);
                    if (k < 0) {
                        continue;
                    }
                    for (uint32_t x = 0; x < s->n && !moved; x++) {
                        if (x == o || x == u || row_has(s, p, (uint16_t)x)) {
                            continue;
                        }
                        for (uint32_t q = 0; q < s->P && budget > 0; q++, budget--) {
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
 *
 * A swap keeps every node's counts, and so every zone's total. A zone with
 * more slots than P * zmax must exceed zmax in some rows whatever is done:
 * its surplus is tracked, and once the rows over zmax in a zone are down to
 * that surplus, its remaining ones are left alone instead of searched for.
 *
 * Swaps that give neither node a new slot it did not have (two new slots
 * trading places, or slots returning to rows their nodes held) cost no
 * movement, and those are tried first, among the rows this computation
 * touched (a swap between two untouched rows is never free). Then any swap:
 * the zone rule wins over minimal movement, and such a repair moves two more
 * slots, between nodes that both stay. This phase only runs when slots move
 * anyway (see ck_place_compute), so a crash or a restart never moves data.
 * ------------------------------------------------------------------------ */

struct zone_state {
    uint64_t *total, *over;
    uint32_t *vrows, n_vrows; /* Rows over zmax at the start. */
    uint32_t *nrows, n_nrows; /* Rows with a new slot. */
    uint32_t **room, *n_room; /* Per zone, when few: rows with room for it. */
    uint32_t room_cap, n_lists;
    uint8_t *room_state; /* 0: not built, 1: built, 2: too many rows. */
    uint64_t budget;     /* Row visits left for all searches. */
};

#define ZONE_MAX_LISTS 16

/* The rows with room for zone @z (fewer than zmax of its owners), built on
 * first use: when a zone is nearly full these are few and hard to find by
 * scanning. NULL (scan instead) for the zones beyond the first
 * ZONE_MAX_LISTS that need one, which bounds the memory. */
static const uint32_t *zone_room(struct place *s, struct zone_state *zs, uint32_t z, uint32_t *n)
{
    if (zs->room_state[z] == 0 && zs->n_lists >= ZONE_MAX_LISTS) {
        zs->room_state[z] = 2; /* Enough memory spent on lists: scan. */
    }
    if (zs->room_state[z] == 0) {
        zs->n_lists++;
        uint32_t cap = zs->room_cap, len = 0;
        uint32_t *list = malloc(cap * sizeof *list);
        for (uint32_t q = 0; q < s->P && list != NULL; q++) {
            if (zone_count(s, q, z, -1) < s->zmax) {
                if (len == cap) {
                    free(list);
                    list = NULL;
                    break;
                }
                list[len++] = q;
            }
        }
        zs->room[z] = list;
        zs->n_room[z] = len;
        zs->room_state[z] = list != NULL ? 1 : 2;
    }
    *n = zs->n_room[z];
    return zs->room[z];
}

/* After a swap, rows @p and @q may have room for zones whose lists were
 * built before: add them (a list that would grow too long is dropped, and
 * scanning takes over). */
static void zone_room_update(struct place *s, struct zone_state *zs, uint32_t p, uint32_t q)
{
    for (uint32_t z = 0; z < s->zones; z++) {
        if (zs->room_state[z] != 1) {
            continue;
        }
        for (int i = 0; i < 2; i++) {
            uint32_t r = i == 0 ? p : q;
            bool listed = false;
            if (zone_count(s, r, z, -1) >= s->zmax) {
                continue;
            }
            for (uint32_t j = 0; j < zs->n_room[z] && !listed; j++) {
                listed = zs->room[z][j] == r;
            }
            if (listed) {
                continue;
            }
            if (zs->n_room[z] == zs->room_cap) {
                free(zs->room[z]);
                zs->room[z] = NULL;
                zs->room_state[z] = 2;
                break;
            }
            zs->room[z][zs->n_room[z]++] = r;
        }
    }
}

/* Owners beyond zmax in row @p, over all zones; with @over, added to each
 * zone's count there (sign @sign). */
static uint32_t zone_excess(struct place *s, uint32_t p, uint64_t *over, int sign)
{
    const uint16_t *r = row(s, p);
    uint32_t ex = 0;
    for (uint32_t k = 0; k < s->cnt[p]; k++) {
        uint32_t before = 0;
        for (uint32_t j = 0; j < k; j++) {
            before += s->zidx[r[j]] == s->zidx[r[k]];
        }
        if (before >= s->zmax) {
            ex++;
            if (over != NULL) {
                over[s->zidx[r[k]]] += (uint64_t)(int64_t)sign;
            }
        }
    }
    return ex;
}

/* Swaps slot @k of row @p (a zone over zmax) with an owner c of a row q
 * taken from @rows (or, if NULL, every row from p + 1 on) that has room for
 * a's zone, when that lowers the two rows' excess together (which allows a
 * swap that moves p's excess to another zone while clearing q's: a chain of
 * such swaps clears cycles like {A,A,B} {B,B,C} {C,C,A}). With @free_only
 * both nodes must end with no new slot they did not have before. */
static bool zone_swap(struct place *s, struct zone_state *zs, uint32_t p, uint32_t k, const uint32_t *rows,
                      uint32_t n_rows, bool free_only)
{
    uint16_t a = row(s, p)[k];
    uint32_t za = s->zidx[a];
    uint32_t ex_p = zone_excess(s, p, NULL, 0);
    /* Searching za's own room list: drop the rows that lost their room on
     * the way, or every search would step over them again. */
    bool prune = rows != NULL && rows == zs->room[za];
    for (uint32_t i = 0; i < n_rows && zs->budget > 0; i++, zs->budget--) {
        uint32_t q = rows != NULL ? rows[i] : (p + 1 + i) % s->P;
        if (zone_count(s, q, za, -1) >= s->zmax) {
            if (prune) {
                zs->room[za][i--] = zs->room[za][--zs->n_room[za]];
                n_rows--;
            }
            continue;
        }
        if (q == p || row_has(s, q, a)) {
            continue;
        }
        uint32_t ex_q = zone_excess(s, q, NULL, 0);
        for (uint32_t kc = 0; kc < s->cnt[q]; kc++) {
            uint16_t c = row(s, q)[kc];
            if (s->zidx[c] == za || row_has(s, p, c)) {
                continue;
            }
            /* Free: neither node gets a new slot it did not have before (a
             * new slot may return to a row its node held, or trade places
             * with another new slot of the same node). */
            if (free_only && ((!cur_has(s, q, a) && cur_has(s, p, a)) || (!cur_has(s, p, c) && cur_has(s, q, c)))) {
                continue;
            }
            row(s, p)[k] = c;
            row(s, q)[kc] = a;
            if (zone_excess(s, p, NULL, 0) + zone_excess(s, q, NULL, 0) < ex_p + ex_q) {
                row(s, p)[k] = a;
                row(s, q)[kc] = c;
                zone_excess(s, p, zs->over, -1);
                zone_excess(s, q, zs->over, -1);
                row(s, p)[k] = c;
                row(s, q)[kc] = a;
                zone_excess(s, p, zs->over, 1);
                zone_excess(s, q, zs->over, 1);
                zone_room_update(s, zs, p, q);
                return true;
            }
            row(s, p)[k] = a;
            row(s, q)[kc] = c;
        }
    }
    return false;
}

static void place_zones(struct place *s)
{
    struct zone_state zs;
    memset(&zs, 0, sizeof zs);
    if (s->zones <= 1) {
        return;
    }
    zs.total = calloc(s->zones, sizeof *zs.total);
    zs.over = calloc(s->zones, sizeof *zs.over);
    zs.vrows = malloc(s->P * sizeof *zs.vrows);
    zs.nrows = malloc(s->P * sizeof *zs.nrows);
    zs.room = calloc(s->zones, sizeof *zs.room);
    zs.n_room = calloc(s->zones, sizeof *zs.n_room);
    zs.room_state = calloc(s->zones, 1);
    if (zs.total == NULL || zs.over == NULL || zs.vrows == NULL || zs.nrows == NULL || zs.room == NULL ||
        zs.n_room == NULL || zs.room_state == NULL) {
        goto out;
    }
    for (uint32_t p = 0; p < s->P; p++) {
        bool bad = false, fresh = false;
        for (uint32_t k = 0; k < s->cnt[p]; k++) {
            uint32_t z = s->zidx[row(s, p)[k]];
            zs.total[z]++;
            /* Counted once per owner beyond zmax: at the zmax+1-th and on. */
            uint32_t before = 0;
            for (uint32_t j = 0; j < k; j++) {
                before += s->zidx[row(s, p)[j]] == z;
            }
            zs.over[z] += before >= s->zmax;
            bad |= before >= s->zmax;
            fresh |= !cur_has(s, p, row(s, p)[k]);
        }
        if (bad) {
            zs.vrows[zs.n_vrows++] = p;
        }
        if (fresh) {
            zs.nrows[zs.n_nrows++] = p;
        }
    }
    /* Swaps that cost moves only where the rule is promised: when the zones
     * cannot all hold their share, some rows repeat a zone anyway, and
     * moving data to trade one repeat for another is not worth it. */
    bool costly = zones_can_fit(s);
    /* Row visits in all: a share per row to repair (a table can come out of
     * a long spell of zones that did not fit with many rows to repair at
     * once), within bounds. */
    zs.budget = ((uint64_t)s->P * s->w + 4096) * 16 + (uint64_t)zs.n_vrows * 2048;
    if (zs.budget > ((uint64_t)s->P * s->w + 4096) * 128) {
        zs.budget = ((uint64_t)s->P * s->w + 4096) * 128;
    }
    zs.room_cap = s->P;
    /* Rounds over the rows that broke the rule: a swap that clears one row
     * can make a row that found no partner earlier fixable (a few rounds:
     * each retries every failed search). */
    bool progress = true;
    for (int round = 0; round < 3 && progress && zs.budget > 0; round++) {
        progress = false;
        for (uint32_t v = 0; v < zs.n_vrows && zs.budget > 0; v++) {
            uint32_t p = zs.vrows[v];
            bool swapped = true;
            while (swapped && zs.budget > 0) {
                swapped = false;
                for (int pass = 0; pass < (costly ? 2 : 1) && !swapped; pass++) {
                    for (uint32_t k = s->cnt[p]; k-- > 0 && zs.budget > 0 && !swapped;) {
                        uint32_t za = s->zidx[row(s, p)[k]];
                        uint64_t cap = (uint64_t)s->P * s->zmax;
                        uint64_t surplus = zs.total[za] > cap ? zs.total[za] - cap : 0;
                        if (zs.over[za] <= surplus || zone_count(s, p, za, -1) <= s->zmax) {
                            continue;
                        }
                        /* Partners: free swaps among the rows this computation
                         * touched (a swap with an untouched row is free only if
                         * it undoes a move of p), then rows with room for a's
                         * zone. */
                        uint32_t n_room = 0;
                        const uint32_t *room = pass == 0 ? NULL : zone_room(s, &zs, za, &n_room);
                        if (pass == 0) {
                            swapped = zone_swap(s, &zs, p, k, zs.nrows, zs.n_nrows, true);
                        } else {
                            swapped = room != NULL ? zone_swap(s, &zs, p, k, room, n_room, false)
                                                   : zone_swap(s, &zs, p, k, NULL, s->P - 1, false);
                        }
                        progress |= swapped;
                    }
                }
            }
        }
    }
out:
    for (uint32_t z = 0; zs.room != NULL && z < s->zones; z++) {
        free(zs.room[z]);
    }
    free(zs.room);
    free(zs.n_room);
    free(zs.room_state);
    free(zs.total);
    free(zs.over);
    free(zs.vrows);
    free(zs.nrows);
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
    int32_t *prim; /* Row -> slot of its primary, -1: none yet. */
    bool *lead;
    uint32_t *pq, *pc; /* Primary quota and count per node. */
    /* Augmenting-path search: rows per node (CSR), BFS marks and queue. */
    uint32_t *start, *list;
    uint32_t *mark, *from, *via, *queue, *src;
    uint32_t gen;
    uint64_t budget;     /* Row visits left for all searches together. */
    uint32_t *plo, *phi; /* Bounds of each primary quota (see quotas()). */
    bool *has_old;       /* The node holds a slot it held before. */
    uint64_t ledrows;    /* Rows with an owner that may lead. */
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
