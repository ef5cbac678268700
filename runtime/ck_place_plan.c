/*
 * The leader's planned table, in one call from the committed state: who
 * may hold partitions, the current table in their terms, the built-in
 * placement, and the TABLE command to propose (see ck_place.h).
 *
 * Before, the reconciler copied the whole state into Lua (node:view()),
 * derived the holders and the current table there, crossed into C for the
 * placement, mapped the rows back to ids, compared them with the current
 * table and crossed again to encode: three copies of the table per
 * rebalance. The rules are the ones the Lua path keeps for custom policies
 * (clusterkit.reconciler), and tests/lua/reconciler_spec.lua checks that
 * both give the same table.
 */
#include <stdlib.h>
#include <string.h>

#include "ck_common.h"
#include "ck_place.h"

struct holder {
    const struct ck_node_info *n;
    uint32_t at; /* Position in the state's node list. */
    bool lead;
};

static int holder_cmp(const void *a, const void *b)
{
    return strcmp(((const struct holder *)a)->n->id, ((const struct holder *)b)->n->id);
}

/* The node's value of the attribute that is a placement domain within its
 * zone (CK_ATTR_DOMAIN in ck_node_attrs.h; "" when none is declared). */
static const char *domain_of(const struct ck_node_info *n)
{
#define X(attr, tag, flags, env, json) \
    if ((flags)&CK_ATTR_DOMAIN) {      \
        return n->attr;                \
    }
    CK_NODE_ATTRS(X)
#undef X
    (void)n;
    return "";
}

/* Small integer ids for the distinct strings of @n holders, in order of
 * first appearance (as core.place numbers them): zones, or (@domain) their
 * domains within the zone, where "" is none. */
static int number(const struct holder *h, uint32_t n, bool domain, uint32_t *out)
{
    const char **seen = malloc((n ? n : 1) * sizeof *seen);
    if (seen == NULL) {
        return CK_ENOMEM;
    }
    uint32_t distinct = 0;
    for (uint32_t i = 0; i < n; i++) {
        const char *v = domain ? domain_of(h[i].n) : h[i].n->zone;
        if (domain && v[0] == '\0') {
            out[i] = CK_PLACE_NO_DOMAIN;
            continue;
        }
        uint32_t j = 0;
        while (j < distinct && strcmp(seen[j], v) != 0) {
            j++;
        }
        if (j == distinct) {
            seen[distinct++] = v;
        }
        out[i] = j;
    }
    free(seen);
    return 0;
}

static bool row_holds(const uint16_t *r, uint32_t w, uint16_t x)
{
    for (uint32_t k = 0; k < w && r[k] != CK_NO_NODE; k++) {
        if (r[k] == x) {
            return true;
        }
    }
    return false;
}

int ck_place_plan(const struct ck_state *s, const struct ck_plan_input *in, struct ck_plan *out)
{
    memset(out, 0, sizeof *out);
    ck_wbuf_init(&out->cmd);
    const struct ck_config *cfg = &s->config;
    if (!cfg->initialized) {
        return CK_EINVAL;
    }
    uint32_t P = s->table.partitions, cw = s->table.width, rf = cfg->replication;
    int rv = CK_ENOMEM;
    struct holder *h = malloc((s->n_nodes ? s->n_nodes : 1) * sizeof *h);
    uint32_t *pos = malloc((s->n_nodes ? s->n_nodes : 1) * sizeof *pos);
    struct ck_place_node *pn = NULL;
    uint32_t *zones = NULL, *racks = NULL;
    uint16_t *cur = malloc((size_t)P * cw * sizeof *cur);
    struct ck_place_result res = {0};
    uint8_t *owners = NULL;
    struct ck_str *ids = NULL;
    if (h == NULL || pos == NULL || cur == NULL) {
        goto done;
    }
    /* Holders: members with a weight that are in service, and down or
     * stopped ones within their grace period (they keep their slots as
     * replicas and may not lead). */
    uint32_t n = 0;
    for (uint32_t i = 0; i < s->n_nodes; i++) {
        const struct ck_node_info *x = &s->nodes[i];
        if (x->weight == 0) {
            continue;
        }
        bool serving = x->status == CK_NODE_ACTIVE || x->status == CK_NODE_SUSPECT;
        bool out_now = x->status == CK_NODE_DOWN || x->status == CK_NODE_STOPPED;
        uint64_t end = x->status_since_ms + in->grace_ms;
        if (serving || (out_now && in->now_ms < end)) {
            h[n++] = (struct holder){x, i, serving};
            if (!serving && (!out->has_deadline || end < out->deadline_ms)) {
                out->has_deadline = true;
                out->deadline_ms = end;
            }
        }
    }
    if (n == 0) {
        rv = CK_EINVAL; /* No eligible node: keep the table. */
        goto done;
    }
    qsort(h, n, sizeof *h, holder_cmp);
    pn = calloc(n, sizeof *pn);
    zones = malloc(n * sizeof *zones);
    racks = malloc(n * sizeof *racks);
    if (pn == NULL || zones == NULL || racks == NULL || number(h, n, false, zones) != 0 ||
        number(h, n, true, racks) != 0) {
        goto done;
    }
    for (uint32_t i = 0; i < s->n_nodes; i++) {
        pos[i] = CK_NO_NODE;
    }
    for (uint32_t i = 0; i < n; i++) {
        pos[h[i].at] = i;
        pn[i] = (struct ck_place_node){zones[i], h[i].n->weight, h[i].lead, racks[i]};
    }
    /* The current rows in holders' positions, non-holders left out (the
     * others keep their order). */
    for (uint32_t p = 0; p < P; p++) {
        uint32_t k = 0;
        for (uint32_t j = 0; j < cw; j++) {
            uint16_t at = s->table.owners[(size_t)p * cw + j];
            if (at != CK_NO_NODE && pos[at] != CK_NO_NODE) {
                cur[(size_t)p * cw + k++] = (uint16_t)pos[at];
            }
        }
        while (k < cw) {
            cur[(size_t)p * cw + k++] = CK_NO_NODE;
        }
    }
    struct ck_place_input pin = {P, rf, n, pn, cur, cw, cfg->flags & CK_FLAG_REBALANCE_PAUSED && !in->force};
    rv = ck_place_compute(&pin, &res);
    if (rv != 0) {
        goto done;
    }
    out->min_moves = res.min_moves;
    /* What changes against the committed rows (as the state holds them,
     * non-holders included): rows, new slots, primaries. */
    for (uint32_t p = 0; p < P; p++) {
        const uint16_t *was = s->table.owners + (size_t)p * cw;
        const uint16_t *is = res.rows + (size_t)p * res.width;
        uint32_t gained = 0, len = 0, old_len = 0;
        while (old_len < cw && was[old_len] != CK_NO_NODE) {
            old_len++;
        }
        for (uint32_t k = 0; k < res.width && is[k] != CK_NO_NODE; k++, len++) {
            gained += !row_holds(was, cw, (uint16_t)h[is[k]].at);
        }
        bool new_primary = len > 0 && (old_len == 0 || was[0] != h[is[0]].at);
        if (gained > 0 || len != old_len || new_primary) {
            out->moves++;
        }
        out->moved_slots += gained;
        out->moved_primaries += old_len > 0 && (len == 0 || was[0] != h[is[0]].at);
    }
    if (out->moves == 0) {
        rv = 0;
        goto done;
    }
    /* The TABLE command: ids are the holders, rows of width RF. */
    owners = malloc((size_t)P * rf * 2);
    ids = malloc(n * sizeof *ids);
    if (owners == NULL || ids == NULL) {
        rv = CK_ENOMEM;
        goto done;
    }
    for (uint32_t i = 0; i < n; i++) {
        ids[i] = (struct ck_str){h[i].n->id, (uint32_t)strlen(h[i].n->id)};
    }
    for (uint32_t p = 0; p < P; p++) {
        for (uint32_t k = 0; k < rf; k++) {
            uint16_t v = k < res.width ? res.rows[(size_t)p * res.width + k] : CK_NO_NODE;
            owners[((size_t)p * rf + k) * 2] = (uint8_t)(v & 0xff);
            owners[((size_t)p * rf + k) * 2 + 1] = (uint8_t)(v >> 8);
        }
    }
    struct ck_cmd_table t = {P, rf, n, ids, owners};
    ck_cmd_encode_table(&out->cmd, &t);
    out->rows = malloc((size_t)P * res.width * sizeof *out->rows);
    rv = out->cmd.err != 0 ? out->cmd.err : out->rows == NULL ? CK_ENOMEM : 0;
    for (size_t i = 0; rv == 0 && i < (size_t)P * res.width; i++) {
        out->rows[i] = res.rows[i] == CK_NO_NODE ? CK_NO_NODE : (uint16_t)h[res.rows[i]].at;
    }
    out->width = res.width;
    out->has_table = rv == 0;
done:
    ck_place_free(&res);
    free(h);
    free(pos);
    free(pn);
    free(zones);
    free(racks);
    free(cur);
    free(owners);
    free(ids);
    if (rv != 0) {
        ck_plan_free(out);
    }
    return rv;
}

void ck_plan_free(struct ck_plan *p)
{
    ck_wbuf_free(&p->cmd);
    free(p->rows);
    p->rows = NULL;
    p->has_table = false;
}
