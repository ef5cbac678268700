#include "ck_buf.h"

#include <stdlib.h>
#include <string.h>

#include "ck_common.h"

void ck_wbuf_init(struct ck_wbuf *w)
{
    memset(w, 0, sizeof *w);
}

void ck_wbuf_free(struct ck_wbuf *w)
{
    free(w->p);
    memset(w, 0, sizeof *w);
}

uint8_t *ck_wbuf_take(struct ck_wbuf *w, size_t *len)
{
    uint8_t *p = w->p;
    *len = w->len;
    memset(w, 0, sizeof *w);
    return p;
}

static uint8_t *wbuf_reserve(struct ck_wbuf *w, size_t n)
{
    if (w->err != 0) {
        return NULL;
    }
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->len + n) {
            cap *= 2;
        }
        uint8_t *p = realloc(w->p, cap);
        if (p == NULL) {
            w->err = CK_ENOMEM;
            return NULL;
        }
        w->p = p;
        w->cap = cap;
    }
    uint8_t *at = w->p + w->len;
    w->len += n;
    return at;
}

void ck_w_bytes(struct ck_wbuf *w, const void *p, size_t n)
{
    uint8_t *at = wbuf_reserve(w, n);
    if (at != NULL && n > 0) {
        memcpy(at, p, n);
    }
}

void ck_w_u8(struct ck_wbuf *w, uint8_t v)
{
    ck_w_bytes(w, &v, 1);
}

void ck_w_u16(struct ck_wbuf *w, uint16_t v)
{
    uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    ck_w_bytes(w, b, 2);
}

void ck_w_u32(struct ck_wbuf *w, uint32_t v)
{
    uint8_t b[4];
    for (int i = 0; i < 4; i++) {
        b[i] = (uint8_t)(v >> (8 * i));
    }
    ck_w_bytes(w, b, 4);
}

void ck_w_u64(struct ck_wbuf *w, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++) {
        b[i] = (uint8_t)(v >> (8 * i));
    }
    ck_w_bytes(w, b, 8);
}

void ck_w_str(struct ck_wbuf *w, const char *p, size_t n)
{
    if (n > UINT32_MAX) {
        w->err = CK_ETOOBIG;
        return;
    }
    ck_w_u32(w, (uint32_t)n);
    ck_w_bytes(w, p, n);
}

void ck_w_cstr(struct ck_wbuf *w, const char *s)
{
    ck_w_str(w, s ? s : "", s ? strlen(s) : 0);
}

void ck_rbuf_init(struct ck_rbuf *r, const void *p, size_t len)
{
    r->p = p;
    r->len = len;
    r->pos = 0;
    r->err = 0;
}

const uint8_t *ck_r_bytes(struct ck_rbuf *r, size_t n)
{
    if (r->err != 0 || n > r->len - r->pos) {
        r->err = CK_ECORRUPT;
        return NULL;
    }
    const uint8_t *at = r->p + r->pos;
    r->pos += n;
    return at;
}

static uint64_t rbuf_le(struct ck_rbuf *r, int n)
{
    const uint8_t *b = ck_r_bytes(r, (size_t)n);
    uint64_t v = 0;
    if (b == NULL) {
        return 0;
    }
    for (int i = n - 1; i >= 0; i--) {
        v = (v << 8) | b[i];
    }
    return v;
}

uint8_t ck_r_u8(struct ck_rbuf *r)
{
    return (uint8_t)rbuf_le(r, 1);
}

uint16_t ck_r_u16(struct ck_rbuf *r)
{
    return (uint16_t)rbuf_le(r, 2);
}

uint32_t ck_r_u32(struct ck_rbuf *r)
{
    return (uint32_t)rbuf_le(r, 4);
}

uint64_t ck_r_u64(struct ck_rbuf *r)
{
    return rbuf_le(r, 8);
}

struct ck_str ck_r_str(struct ck_rbuf *r, uint32_t max)
{
    struct ck_str s = {"", 0};
    uint32_t n = ck_r_u32(r);
    if (r->err == 0 && n > max) {
        r->err = CK_ECORRUPT;
    }
    const uint8_t *b = ck_r_bytes(r, r->err == 0 ? n : 0);
    if (r->err == 0 && b != NULL) {
        s.p = (const char *)b;
        s.len = n;
    }
    return s;
}

bool ck_r_done(const struct ck_rbuf *r)
{
    return r->err == 0 && r->pos == r->len;
}

char *ck_str_dup(struct ck_str s)
{
    char *c = malloc((size_t)s.len + 1);
    if (c != NULL) {
        if (s.len > 0) {
            memcpy(c, s.p, s.len);
        }
        c[s.len] = '\0';
    }
    return c;
}

bool ck_str_eq(struct ck_str s, const char *c)
{
    return strlen(c) == s.len && memcmp(s.p, c, s.len) == 0;
}
