/* Placement phase 1: the fill, and its exact repair as a flow (see ck_place.c). */
#include <stdlib.h>
#include <string.h>

#include "ck_common.h"
#include "ck_place_internal.h"

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
bool ck_place_zones_can_fit(struct place *s)
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

void ck_place_fill(struct place *s)
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
    bool zones_fit = ck_place_zones_can_fit(s);
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
