/*
 * Bounded binary writer and reader used by the command encoding and the
 * snapshot format. Integers are little-endian and fixed-width; strings are a
 * u32 length followed by the bytes (no NUL). Readers never read past the end:
 * any overrun sets a sticky error and every later read yields zero.
 */
#ifndef CK_BUF_H
#define CK_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ck_wbuf {
    uint8_t *p;
    size_t len;
    size_t cap;
    int err; /* Sticky: CK_ENOMEM after a failed growth. */
};

struct ck_rbuf {
    const uint8_t *p;
    size_t len;
    size_t pos;
    int err; /* Sticky: CK_ECORRUPT after an overrun or a bad value. */
};

/* A string view: not NUL-terminated. */
struct ck_str {
    const char *p;
    uint32_t len;
};

void ck_wbuf_init(struct ck_wbuf *w);
void ck_wbuf_free(struct ck_wbuf *w);
/* Take ownership of the bytes (malloc'd): the writer is reset. */
uint8_t *ck_wbuf_take(struct ck_wbuf *w, size_t *len);
void ck_w_u8(struct ck_wbuf *w, uint8_t v);
void ck_w_u16(struct ck_wbuf *w, uint16_t v);
void ck_w_u32(struct ck_wbuf *w, uint32_t v);
void ck_w_u64(struct ck_wbuf *w, uint64_t v);
void ck_w_bytes(struct ck_wbuf *w, const void *p, size_t n);
void ck_w_str(struct ck_wbuf *w, const char *p, size_t n);
/* Writes a NUL-terminated string, or an empty one for NULL. */
void ck_w_cstr(struct ck_wbuf *w, const char *s);

void ck_rbuf_init(struct ck_rbuf *r, const void *p, size_t len);
uint8_t ck_r_u8(struct ck_rbuf *r);
uint16_t ck_r_u16(struct ck_rbuf *r);
uint32_t ck_r_u32(struct ck_rbuf *r);
uint64_t ck_r_u64(struct ck_rbuf *r);
/* A view of the next @n bytes, or NULL (and the error set) on overrun. */
const uint8_t *ck_r_bytes(struct ck_rbuf *r, size_t n);
/* Reads a string of at most @max bytes; longer ones are an error. */
struct ck_str ck_r_str(struct ck_rbuf *r, uint32_t max);
bool ck_r_done(const struct ck_rbuf *r); /* No error and every byte read. */

/* A malloc'd NUL-terminated copy, or NULL on ENOMEM. */
char *ck_str_dup(struct ck_str s);
bool ck_str_eq(struct ck_str s, const char *c);

#endif /* CK_BUF_H */
