/* Placement phases 2-4: move, unstick and zones (see ck_place.c). */
#include <stdlib.h>
#include <string.h>

#include "ck_common.h"
#include "ck_place_internal.h"

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

/* The exchange of ck_place_move for giver @o in row @p (see there). */
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

void ck_place_move(struct place *s)
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

void ck_place_unstick(struct place *s)
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

static void zones(struct place *s)
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
    bool costly = ck_place_zones_can_fit(s);
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
 * Racks within zones (after the zones): the owners of a row that share a
 * zone should not share a domain (ck_place_node.domain: a rack). A slot of
 * a row whose owner repeats a rack of its zone there is swapped with a slot
 * of another row held by a node of the same zone in another rack, where
 * neither row repeats a rack afterwards. Every count stays (slots per node,
 * owners per zone and row), so what the earlier phases promise holds.
 *
 * First only swaps of two slots that are new in this computation: they
 * move nothing that was not moving anyway. Then, when every rack can fit
 * (no rack of a zone holds more slots than there are rows, so that one per
 * row is possible), swaps that cost two more changed slots each, as the
 * zones' do: a cluster that formed one join at a time otherwise keeps the
 * rows its first two rack mates shared. A settled table is never touched
 * (ck_place.c skips the phases: a crash or a restart moves no data).
 * ------------------------------------------------------------------------ */

static inline uint32_t domain_of(struct place *s, uint16_t x)
{
    return s->nodes[x].domain;
}

/* True when node @x (slot @skip of row @p excluded, -1: none) would share
 * a rack of its zone with another owner of row @p. */
static bool rack_taken(struct place *s, uint32_t p, uint16_t x, int skip)
{
    uint32_t d = domain_of(s, x);
    if (d == CK_PLACE_NO_DOMAIN) {
        return false;
    }
    const uint16_t *r = row(s, p);
    for (uint32_t k = 0; k < s->cnt[p]; k++) {
        if ((int)k != skip && r[k] != x && s->zidx[r[k]] == s->zidx[x] && domain_of(s, r[k]) == d) {
            return true;
        }
    }
    return false;
}

/* Swaps slot @k of row @p with a slot of another row that takes the
 * repeat away without making one (@free: only a slot new in this
 * computation): true when it did. */
static bool rack_swap(struct place *s, uint32_t p, uint32_t k, bool free_only, uint64_t *budget)
{
    uint16_t a = row(s, p)[k];
    for (uint32_t i = 1; i<s->P && * budget> 0; i++) {
        uint32_t q = (p + i) % s->P;
        uint16_t *rq = row(s, q);
        (*budget)--;
        if (row_has(s, q, a)) {
            continue;
        }
        for (uint32_t m = 0; m < s->cnt[q]; m++) {
            uint16_t c = rq[m];
            if (s->zidx[c] != s->zidx[a] || domain_of(s, c) == domain_of(s, a) || (free_only && cur_has(s, q, c)) ||
                row_has(s, p, c) || rack_taken(s, p, c, (int)k) || rack_taken(s, q, a, (int)m)) {
                continue;
            }
            row(s, p)[k] = c;
            rq[m] = a;
            return true;
        }
    }
    return false;
}

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* True when no rack of a zone holds more slots than there are rows. */
static bool racks_can_fit(struct place *s)
{
    uint64_t *keys = malloc((s->n ? s->n : 1) * sizeof *keys);
    if (keys == NULL) {
        return false;
    }
    uint32_t m = 0;
    for (uint32_t i = 0; i < s->n; i++) {
        if (s->nodes[i].domain != CK_PLACE_NO_DOMAIN) {
            keys[m++] = ((uint64_t)s->zidx[i] << 32 | s->nodes[i].domain) << 16 | i;
        }
    }
    qsort(keys, m, sizeof *keys, u64_cmp);
    bool fit = true;
    for (uint32_t i = 0, j; i < m && fit; i = j) {
        uint64_t total = 0;
        for (j = i; j < m && keys[j] >> 16 == keys[i] >> 16; j++) {
            total += s->held[keys[j] & 0xffff];
        }
        fit = total <= s->P;
    }
    free(keys);
    return fit;
}

static void racks(struct place *s)
{
    bool any = false;
    for (uint32_t i = 0; i < s->n && !any; i++) {
        any = s->nodes[i].domain != CK_PLACE_NO_DOMAIN;
    }
    if (!any) {
        return;
    }
    uint64_t budget = ((uint64_t)s->P * s->w + 4096) * 16;
    for (int pass = 0; pass < 2 && budget > 0; pass++) {
        if (pass == 1 && !racks_can_fit(s)) {
            break;
        }
        for (uint32_t p = 0; p < s->P && budget > 0; p++) {
            for (uint32_t k = 0; k < s->cnt[p] && budget > 0; k++) {
                uint16_t a = row(s, p)[k];
                if ((pass == 1 || !cur_has(s, p, a)) && rack_taken(s, p, a, (int)k)) {
                    rack_swap(s, p, k, pass == 0, &budget);
                }
            }
        }
    }
}

/* Phase 4: zones, then racks within them. */
void ck_place_zones(struct place *s)
{
    zones(s);
    racks(s);
}
