/*
 * The default placement policy's internals (see ck_place.c for the phases):
 * the working state every phase shares, the row helpers, and each phase's
 * entry point. Phases live in files of their own: quotas (ck_place_quota.c),
 * fill and its flow repair (ck_place_fill.c), move, unstick and zones
 * (ck_place_balance.c), primaries (ck_place_primary.c); ck_place.c runs them.
 */
#ifndef CK_PLACE_INTERNAL_H
#define CK_PLACE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "ck_place.h"
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
 * Row helpers
 * ------------------------------------------------------------------------ */

static inline uint16_t *row(struct place *s, uint32_t p)
{
    return s->rows + (size_t)p * s->w;
}

static inline bool row_has(struct place *s, uint32_t p, uint16_t x)
{
    const uint16_t *r = row(s, p);
    for (uint32_t k = 0; k < s->cnt[p]; k++) {
        if (r[k] == x) {
            return true;
        }
    }
    return false;
}

static inline int row_find(struct place *s, uint32_t p, uint16_t x)
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
static inline uint32_t zone_count(struct place *s, uint32_t p, uint32_t z, int skip)
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

static inline bool cur_has(struct place *s, uint32_t p, uint16_t x)
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

/* ---- Phases and what they share ---- */

/* Quotas of @n nodes for @total slots, at most @cap each, over the nodes in
 * @mask (all when NULL); @have (may be NULL) is what each already holds, and
 * @lo/@hi (may be NULL) receive each node's floor and ceiling. */
void ck_place_quota_range(const struct ck_place_node *nodes, uint32_t n, const bool *mask, uint64_t total, uint32_t cap,
                          const uint32_t *have, uint32_t *out, uint32_t *lo, uint32_t *hi);
void ck_place_quotas_zone_fit(struct place *s);
bool ck_place_zones_can_fit(struct place *s);
void ck_place_fill(struct place *s);                     /* Phase 1 (and 1b). */
void ck_place_move(struct place *s);                     /* Phase 2. */
void ck_place_unstick(struct place *s);                  /* Phase 3. */
void ck_place_zones(struct place *s);                    /* Phase 4. */
void ck_place_primaries(struct place *s, int32_t *prim); /* Phase 5. */

#endif /* CK_PLACE_INTERNAL_H */
