/* The key-lookup fast path (see ck_keyroute.h). */
#include "ck_keyroute.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ck_common.h"

/* Copy @path into @dst (capacity 64, the size of every path field here) if
 * it is an absolute path that fits. */
static int copy_path(char dst[64], size_t *len, const char *path)
{
    size_t n = strlen(path);
    if (n == 0 || n >= 64 || path[0] != '/') {
        return CK_EINVAL;
    }
    memcpy(dst, path, n + 1);
    *len = n;
    return 0;
}

/* "\"<index>\"", the ETag Lua writes for a state index. */
static size_t format_etag(char etag[24], uint64_t index)
{
    return (size_t)snprintf(etag, 24, "\"%" PRIu64 "\"", index);
}

int ck_keyroute_init(struct ck_keyroute *kr, const char *path)
{
    memset(kr, 0, sizeof *kr);
    return path == NULL ? 0 : ck_keyroute_set_path(kr, path);
}

int ck_keyroute_set_path(struct ck_keyroute *kr, const char *path)
{
    if (kr->path_len != 0) {
        return CK_EINVAL;
    }
    return copy_path(kr->path, &kr->path_len, path);
}

static void drop_tails(struct ck_keyroute *kr)
{
    for (uint32_t i = 0; i < kr->n_tails; i++) {
        free(kr->tails[i].bytes);
    }
    free(kr->tails);
    kr->tails = NULL;
    kr->n_tails = 0;
}

void ck_keyroute_free(struct ck_keyroute *kr)
{
    for (unsigned i = 0; i < kr->n_bodies; i++) {
        free(kr->bodies[i].bytes);
        kr->bodies[i].bytes = NULL;
        kr->bodies[i].valid = false;
    }
    kr->n_bodies = 0;
    drop_tails(kr);
    free(kr->body);
    kr->body = NULL;
    kr->body_cap = 0;
    kr->primed = false;
}

int ck_keyroute_add_body(struct ck_keyroute *kr, const char *path)
{
    if (kr->n_bodies == CK_KEYROUTE_MAX_BODIES) {
        return CK_EINVAL;
    }
    struct ck_keyroute_body *b = &kr->bodies[kr->n_bodies];
    memset(b, 0, sizeof *b);
    if (copy_path(b->path, &b->path_len, path) != 0) {
        return CK_EINVAL;
    }
    return (int)kr->n_bodies++;
}

int ck_keyroute_put_body(struct ck_keyroute *kr, int slot, uint64_t index, const char *body, size_t len,
                         bool known_leader)
{
    if (slot < 0 || (unsigned)slot >= kr->n_bodies) {
        return CK_EINVAL;
    }
    struct ck_keyroute_body *b = &kr->bodies[slot];
    b->valid = false;
    if (len > b->cap) {
        char *bytes = realloc(b->bytes, len);
        if (bytes == NULL) {
            return CK_ENOMEM;
        }
        b->bytes = bytes;
        b->cap = len;
    }
    memcpy(b->bytes, body, len);
    b->len = len;
    b->known_leader = known_leader;
    b->etag_len = format_etag(b->etag, index);
    b->valid = true;
    return 0;
}

void ck_keyroute_reset(struct ck_keyroute *kr)
{
    /* The tails stay allocated until the next prime: a reset happens on
     * every commit, and most commits are followed by no lookup at all. */
    kr->primed = false;
    for (unsigned i = 0; i < kr->n_bodies; i++) {
        kr->bodies[i].valid = false;
    }
}

int ck_keyroute_prime(struct ck_keyroute *kr, uint64_t index, const struct ck_hasher *hasher)
{
    kr->primed = false;
    if (hasher->partitions == 0 || hasher->partitions > CK_MAX_PARTITIONS || ck_hash_algo_name(hasher->algo) == NULL) {
        return CK_EINVAL;
    }
    drop_tails(kr);
    kr->tails = calloc(hasher->partitions, sizeof *kr->tails);
    if (kr->tails == NULL) {
        return CK_ENOMEM;
    }
    kr->n_tails = hasher->partitions;
    kr->hasher = *hasher;
    kr->index = index;
    kr->etag_len = format_etag(kr->etag, index);
    kr->primed = true;
    return 0;
}

int ck_keyroute_put(struct ck_keyroute *kr, uint64_t index, uint32_t partition, const char *tail, size_t len)
{
    if (!kr->primed || index != kr->index) {
        return CK_ENOTREADY;
    }
    if (partition >= kr->n_tails || len == 0 || tail[len - 1] != '}') {
        return CK_EINVAL;
    }
    char *copy = malloc(len);
    if (copy == NULL) {
        return CK_ENOMEM;
    }
    memcpy(copy, tail, len);
    free(kr->tails[partition].bytes);
    kr->tails[partition].bytes = copy;
    kr->tails[partition].len = len;
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Lua's unescape(s, true): '+' is a space, then every %XX with two hex
 * digits is that byte; any other '%' stays as it is. */
static long decode(const char *s, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len; o++) {
        if (o == cap) {
            return -2;
        }
        int hi, lo;
        if (s[i] == '%' && i + 2 < len && (hi = hexval(s[i + 1])) >= 0 && (lo = hexval(s[i + 2])) >= 0) {
            out[o] = (char)(hi * 16 + lo);
            i += 3;
        } else {
            out[o] = s[i] == '+' ? ' ' : s[i];
            i++;
        }
    }
    return (long)o;
}

long ck_keyroute_query_param(const char *q, size_t qlen, const char *name, char *out, size_t cap)
{
    size_t want = strlen(name);
    const char *val = NULL;
    size_t val_len = 0;
    char nbuf[64];
    size_t i = 0;
    while (i < qlen) {
        const char *amp = memchr(q + i, '&', qlen - i);
        size_t end = amp != NULL ? (size_t)(amp - q) : qlen;
        if (end > i) {
            const char *eq = memchr(q + i, '=', end - i);
            size_t name_end = eq != NULL ? (size_t)(eq - q) : end;
            long n = decode(q + i, name_end - i, nbuf, sizeof nbuf);
            if (n >= 0 && (size_t)n == want && memcmp(nbuf, name, want) == 0) {
                val = eq != NULL ? eq + 1 : q + end;
                val_len = eq != NULL ? end - (name_end + 1) : 0;
            }
        }
        i = end + 1;
    }
    if (val == NULL) {
        return -1;
    }
    return decode(val, val_len, out, cap);
}

size_t ck_keyroute_json_string(const char *s, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        switch (c) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '/':
            esc = "\\/";
            break;
        case '\b':
            esc = "\\b";
            break;
        case '\f':
            esc = "\\f";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        default:
            break;
        }
        if (esc != NULL) {
            out[o++] = esc[0];
            out[o++] = esc[1];
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(out + o, "\\u00", 4);
            out[o + 4] = hex[c >> 4];
            out[o + 5] = hex[c & 15];
            o += 6;
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '"';
    return o;
}

bool ck_keyroute_utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 3;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        } else {
            return false;
        }
        if (i + n > len || s[i + 1] < lo || s[i + 1] > hi) {
            return false;
        }
        for (size_t k = 2; k < n; k++) {
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) {
                return false;
            }
        }
        i += n;
    }
    return true;
}

static bool has_header(const struct ck_http_request *req, const char *name, size_t len)
{
    for (size_t i = 0; i < req->n_headers; i++) {
        const struct ck_http_header *h = &req->headers[i];
        if (h->name_len == len && strncasecmp(h->name, name, len) == 0) {
            return true;
        }
    }
    return false;
}

int ck_keyroute_answer_body(struct ck_keyroute *kr, const struct ck_http_request *req, const char **body, size_t *len,
                            const char **etag, size_t *etag_len, bool *known_leader)
{
    for (unsigned i = 0; i < kr->n_bodies; i++) {
        struct ck_keyroute_body *b = &kr->bodies[i];
        if (req->path_len != b->path_len || memcmp(req->path, b->path, b->path_len) != 0) {
            continue;
        }
        if (!b->valid || req->query_len != 0 || req->method_len != 3 || memcmp(req->method, "GET", 3) != 0 ||
            has_header(req, "If-None-Match", 13)) {
            return -1;
        }
        *body = b->bytes;
        *len = b->len;
        *etag = b->etag;
        *etag_len = b->etag_len;
        *known_leader = b->known_leader;
        b->answered++;
        return (int)i;
    }
    return -1;
}

bool ck_keyroute_answer(struct ck_keyroute *kr, const struct ck_http_request *req, const char **body, size_t *len,
                        const char **etag, size_t *etag_len)
{
    if (kr->path_len == 0 || req->path_len != kr->path_len || memcmp(req->path, kr->path, kr->path_len) != 0) {
        return false;
    }
    char key[CK_KEYROUTE_MAX_KEY];
    long klen;
    if (!kr->primed || req->method_len != 3 || memcmp(req->method, "GET", 3) != 0 ||
        has_header(req, "If-None-Match", 13) ||
        (klen = ck_keyroute_query_param(req->query, req->query_len, "key", key, sizeof key)) <= 0 ||
        !ck_keyroute_utf8_valid(key, (size_t)klen)) {
        goto pass;
    }
    const struct ck_keyroute_tail *t = &kr->tails[ck_hash_partition(&kr->hasher, key, (size_t)klen)];
    if (t->bytes == NULL) {
        goto pass;
    }
    /* {"key": + the escaped key + , + the tail. */
    size_t need = 7 + 6 * (size_t)klen + 2 + 1 + t->len;
    if (need > kr->body_cap) {
        size_t cap = kr->body_cap != 0 ? kr->body_cap : 1024;
        while (cap < need) {
            cap *= 2;
        }
        char *b = realloc(kr->body, cap);
        if (b == NULL) {
            goto pass;
        }
        kr->body = b;
        kr->body_cap = cap;
    }
    size_t o = 0;
    memcpy(kr->body, "{\"key\":", 7);
    o = 7;
    o += ck_keyroute_json_string(key, (size_t)klen, kr->body + o);
    kr->body[o++] = ',';
    memcpy(kr->body + o, t->bytes, t->len);
    o += t->len;
    *body = kr->body;
    *len = o;
    *etag = kr->etag;
    *etag_len = kr->etag_len;
    kr->answered++;
    return true;
pass:
    kr->passed++;
    return false;
}
