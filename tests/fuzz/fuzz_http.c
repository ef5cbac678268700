/*
 * Fuzz target for the socket-free half of the HTTP server
 * (runtime/ck_http_internal.h): request assembly on llhttp, the limits, and
 * the response serializers.
 *
 * Each input is parsed three ways under the same limits: fed whole, fed in
 * pieces cut at up to three points derived from the input, and (for inputs up
 * to 4 KiB) fed one byte at a time. Every way drives the parser the way a
 * connection does (feed, take the request, next, feed the rest) until it
 * fails or needs more, and records a transcript: each request's method, URL,
 * version, headers, body and keep-alive, then the final verdict. Besides the
 * sanitizers, the oracle is:
 *
 *  - the transcripts agree: how the bytes were split by the network must not
 *    change what the server sees;
 *  - each request keeps the seam's promises: NUL-terminated strings, header
 *    names that are tokens, trimmed values, counts and sizes within limits;
 *  - NEED_MORE consumed everything, an error is sticky, the error status is
 *    one the server documents;
 *  - a response built from a request (its headers echoed back, its body as
 *    the body) is either refused for a reason the oracle can see (a header
 *    the format cannot carry) or well formed: status line, one line per kept
 *    header, the right Content-Length, the body unless HEAD/1xx/204/304;
 *  - the server's JSON error for any code and message is a well-formed
 *    response whose body is JSON-safe (no raw control characters).
 *
 * Inputs are plain HTTP bytes, so that the seed corpus (corpus/http/) is a
 * set of readable requests; the limits and the cut points come from a hash of
 * the input.
 *
 * Builds:
 *  - clang -fsanitize=fuzzer,address,undefined: a libFuzzer target.
 *  - -DCK_FUZZ_REPLAY (any compiler): a main() that runs every file of the
 *    directories or files named on the command line, then N inputs generated
 *    from a fixed seed (mutations of those files and HTTP-shaped token
 *    soup), so that CI without clang exercises the same oracle.
 *      fuzz_http [-n N] [-seed S] [-v] corpus-dir-or-file...
 *    An oracle failure writes the input to fuzz_http-failure.bin (replay
 *    build) and aborts.
 */
#include "ck_common.h"
#include "ck_http_internal.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------------ */
/* Failure reporting                                                         */
/* ------------------------------------------------------------------------ */

/* The input being run, for the replay build's failure file. */
static const uint8_t *cur_data;
static size_t cur_size;

static void fuzz_save_input(void)
{
#ifdef CK_FUZZ_REPLAY
    FILE *f = fopen("fuzz_http-failure.bin", "wb");
    if (f != NULL) {
        fwrite(cur_data, 1, cur_size, f);
        fclose(f);
        fprintf(stderr, "fuzz_http: input (%zu bytes) written to fuzz_http-failure.bin\n", cur_size);
    }
#endif
}

#define CHECK(cond, ...)                                                                        \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            fprintf(stderr, "fuzz_http: %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                                       \
            fputc('\n', stderr);                                                                \
            fuzz_save_input();                                                                  \
            abort();                                                                            \
        }                                                                                       \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Transcripts                                                               */
/* ------------------------------------------------------------------------ */

struct tbuf {
    char *p;
    size_t len, cap;
    size_t verdict_off; /* Where the final verdict's record starts. */
    int err_status;     /* The verdict: 0, or the error's status. */
};

static void tb_put(struct tbuf *b, const void *data, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        CHECK(p != NULL, "out of memory");
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

/* A length-prefixed field, so that no two transcripts collide. */
static void tb_field(struct tbuf *b, const char *data, size_t n)
{
    uint64_t len = n;
    tb_put(b, &len, sizeof(len));
    tb_put(b, data, n);
}

static void tb_num(struct tbuf *b, uint64_t v)
{
    tb_put(b, &v, sizeof(v));
}

static void tb_dump(const char *title, const struct tbuf *b)
{
    fprintf(stderr, "%s (%zu bytes): \"", title, b->len);
    for (size_t i = 0; i < b->len && i < 2048; i++) {
        unsigned char c = (unsigned char)b->p[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            fputc(c, stderr);
        else
            fprintf(stderr, "\\x%02x", c);
    }
    fprintf(stderr, "\"\n");
}

/* ------------------------------------------------------------------------ */
/* Request invariants                                                        */
/* ------------------------------------------------------------------------ */

static bool fz_is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static void check_request(const struct ck_http_request *r, const struct ck_http_limits *lim)
{
    CHECK(r->method != NULL && r->method_len == strlen(r->method) && r->method_len > 0, "method");
    CHECK(r->path != NULL && r->path[r->path_len] == '\0', "path not NUL-terminated");
    CHECK(memchr(r->path, '?', r->path_len) == NULL, "path holds the query's '?'");
    CHECK(r->query != NULL && r->query[r->query_len] == '\0', "query not NUL-terminated");
    CHECK(r->body != NULL && r->body[r->body_len] == '\0', "body not NUL-terminated");
    CHECK(r->body_len <= lim->max_body_size, "body %zu over limit %zu", r->body_len, lim->max_body_size);
    CHECK(r->n_headers <= lim->max_headers, "%zu headers over limit %u", r->n_headers, lim->max_headers);
    CHECK(r->path_len + r->query_len <= lim->max_header_size, "URL longer than the header limit");
    CHECK(r->n_headers == 0 || r->headers != NULL, "headers");
    for (size_t i = 0; i < r->n_headers; i++) {
        const struct ck_http_header *h = &r->headers[i];
        CHECK(h->name != NULL && h->name_len > 0 && h->name[h->name_len] == '\0', "header name");
        for (size_t k = 0; k < h->name_len; k++)
            CHECK(fz_is_tchar((unsigned char)h->name[k]), "header name byte 0x%02x not a token",
                  (unsigned char)h->name[k]);
        CHECK(h->value != NULL && h->value[h->value_len] == '\0', "header value");
        if (h->value_len > 0) {
            char first = h->value[0], last = h->value[h->value_len - 1];
            CHECK(first != ' ' && first != '\t' && last != ' ' && last != '\t', "header value not trimmed");
        }
    }
}

static void record_request(struct tbuf *t, const struct ck_http_request *r)
{
    tb_num(t, 'R');
    tb_field(t, r->method, r->method_len);
    tb_field(t, r->path, r->path_len);
    tb_field(t, r->query, r->query_len);
    tb_num(t, ((uint64_t)r->http_major << 16) | r->http_minor);
    tb_num(t, r->keep_alive);
    tb_num(t, r->n_headers);
    for (size_t i = 0; i < r->n_headers; i++) {
        tb_field(t, r->headers[i].name, r->headers[i].name_len);
        tb_field(t, r->headers[i].value, r->headers[i].value_len);
    }
    tb_field(t, r->body, r->body_len);
}

/* ------------------------------------------------------------------------ */
/* Response serialization                                                    */
/* ------------------------------------------------------------------------ */

static bool drops_header(const struct ck_http_header *h)
{
    static const char *const dropped[] = {"content-length", "transfer-encoding", "connection"};
    for (size_t i = 0; i < CK_ARRAY_SIZE(dropped); i++) {
        size_t n = strlen(dropped[i]);
        if (h->name_len == n && strncasecmp(h->name, dropped[i], n) == 0)
            return true;
    }
    return false;
}

/* Whether ck_http_format_response() may refuse these headers. */
static bool headers_unsendable(const struct ck_http_header *hs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct ck_http_header *h = &hs[i];
        if (h->name_len == 0)
            return true;
        for (size_t k = 0; k < h->name_len; k++)
            if (!fz_is_tchar((unsigned char)h->name[k]))
                return true;
        for (size_t k = 0; k < h->value_len; k++)
            if (h->value[k] == '\r' || h->value[k] == '\n' || h->value[k] == '\0')
                return true;
    }
    return false;
}

static const char *find_mem(const char *hay, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(hay + i, needle, m) == 0)
            return hay + i;
    return NULL;
}

/* Checks a serialized response against what it was built from. */
static void check_response(const char *out, size_t len, int status, const struct ck_http_header *hs, size_t n,
                           size_t body_len, unsigned flags)
{
    CHECK(len >= 17 && memcmp(out, "HTTP/1.1 ", 9) == 0, "status line");
    char code[4] = {out[9], out[10], out[11], 0};
    CHECK(atoi(code) == status && out[12] == ' ', "status code %s for %d", code, status);
    const char *reason = ck_http_reason(status);
    CHECK(len >= 13 + strlen(reason) + 2 && memcmp(out + 13, reason, strlen(reason)) == 0 &&
              memcmp(out + 13 + strlen(reason), "\r\n", 2) == 0,
          "reason phrase");
    const char *end = find_mem(out, len, "\r\n\r\n");
    CHECK(end != NULL, "no end of header section");
    size_t head_len = (size_t)(end - out) + 4;

    /* Every line of the header section is "Name: value". */
    const char *line = out + 13 + strlen(reason) + 2;
    size_t kept = 0, idx = 0;
    bool saw_len = false, saw_close = false, saw_keep = false;
    uint64_t clen = 0;
    while (line < end + 2) {
        const char *eol = find_mem(line, (size_t)(end + 2 - line), "\r\n");
        CHECK(eol != NULL, "unterminated header line");
        size_t ll = (size_t)(eol - line);
        CHECK(memchr(line, '\n', ll) == NULL && memchr(line, '\r', ll) == NULL && memchr(line, '\0', ll) == NULL,
              "raw CR, LF or NUL in a header line");
        const char *colon = memchr(line, ':', ll);
        CHECK(colon != NULL && colon > line && colon + 1 < eol && colon[1] == ' ', "header line without \"Name: \"");
        size_t nl = (size_t)(colon - line);
        if (nl == 14 && strncasecmp(line, "Content-Length", 14) == 0) {
            CHECK(!saw_len, "two Content-Length headers");
            saw_len = true;
            for (const char *d = colon + 2; d < eol; d++) {
                CHECK(*d >= '0' && *d <= '9', "Content-Length not decimal");
                clen = clen * 10 + (uint64_t)(*d - '0');
            }
        } else if (nl == 10 && strncasecmp(line, "Connection", 10) == 0) {
            size_t vl = (size_t)(eol - colon - 2);
            saw_close |= vl == 5 && memcmp(colon + 2, "close", 5) == 0;
            saw_keep |= vl == 10 && memcmp(colon + 2, "keep-alive", 10) == 0;
        } else {
            /* The caller's headers come out in order, minus the dropped ones. */
            while (idx < n && drops_header(&hs[idx]))
                idx++;
            CHECK(idx < n, "a header the caller did not give");
            const struct ck_http_header *h = &hs[idx++];
            CHECK(nl == h->name_len && memcmp(line, h->name, nl) == 0 && (size_t)(eol - colon - 2) == h->value_len &&
                      memcmp(colon + 2, h->value, h->value_len) == 0,
                  "header %zu changed on the way out", idx - 1);
            kept++;
        }
        line = eol + 2;
    }
    while (idx < n && drops_header(&hs[idx]))
        idx++;
    CHECK(idx == n, "a header went missing");
    bool no_body = status < 200 || status == 204 || status == 304;
    CHECK(saw_len == !no_body, "Content-Length presence for %d", status);
    if (saw_len)
        CHECK(clen == body_len, "Content-Length %llu for a %zu-byte body", (unsigned long long)clen, body_len);
    CHECK(saw_close == ((flags & CK_HTTP_FMT_CLOSE) != 0), "Connection: close vs flags");
    CHECK(!(saw_close && saw_keep), "both close and keep-alive");
    bool send_body = !no_body && !(flags & CK_HTTP_FMT_HEAD);
    CHECK(len == head_len + (send_body ? body_len : 0), "length %zu, head %zu, body %zu", len, head_len, body_len);
    (void)kept;
}

/* A JSON error body must be {"error":{"code":"..","message":".."}} with no
 * raw control character or unescaped quote inside its strings. */
static void check_error_body(const char *body, size_t len)
{
    static const char pre[] = "{\"error\":{\"code\":\"";
    CHECK(len > sizeof(pre) && memcmp(body, pre, sizeof(pre) - 1) == 0, "error body prefix");
    CHECK(len >= 3 && memcmp(body + len - 3, "\"}}", 3) == 0, "error body suffix");
    int strings = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)body[i];
        if (in_str) {
            CHECK(c >= 0x20, "raw control character 0x%02x in a JSON string", c);
            if (c == '\\') {
                CHECK(i + 1 < len, "dangling escape");
                char e = body[++i];
                if (e == 'u') {
                    CHECK(i + 4 < len, "short \\u escape");
                    i += 4;
                } else {
                    CHECK(strchr("\"\\/bfnrt", e) != NULL, "bad escape \\%c", e);
                }
            } else if (c == '"') {
                in_str = false;
            }
        } else if (c == '"') {
            in_str = true;
            strings++;
        }
    }
    CHECK(!in_str && strings == 5, "error body has %d strings", strings);
}

static void check_format_error(char **buf, size_t *cap, int status, const char *code, const char *msg)
{
    size_t len = 0;
    int rc = ck_http_format_error(buf, cap, status, code, msg, &len);
    CHECK(rc == 0, "format_error failed: %d", rc);
    const char *end = find_mem(*buf, len, "\r\n\r\n");
    CHECK(end != NULL, "error response without a header section");
    static const char ct_name[] = "Content-Type", ct_value[] = "application/json";
    struct ck_http_header ct = {ct_name, sizeof(ct_name) - 1, ct_value, sizeof(ct_value) - 1};
    size_t head = (size_t)(end - *buf) + 4;
    check_response(*buf, len, status, &ct, 1, len - head, CK_HTTP_FMT_CLOSE);
    check_error_body(*buf + head, len - head);
}

/* Formats a response that echoes @r: its headers, its body, and a status and
 * flags picked by @salt. */
static void respond_to(const struct ck_http_request *r, uint64_t salt, char **buf, size_t *cap)
{
    static const int statuses[] = {200, 204, 304, 100, 101, 404, 500, 999, 42, 1000};
    int status = statuses[salt % CK_ARRAY_SIZE(statuses)];
    unsigned flags = 0;
    if (salt & 16)
        flags |= CK_HTTP_FMT_CLOSE;
    else if (salt & 32)
        flags |= CK_HTTP_FMT_KEEP_ALIVE;
    if (r->method_len == 4 && memcmp(r->method, "HEAD", 4) == 0)
        flags |= CK_HTTP_FMT_HEAD;
    unsigned in_flags = flags;
    size_t len = 0;
    int rc = ck_http_format_response(buf, cap, status, r->headers, r->n_headers, r->body, r->body_len, &flags, &len);
    if (status < 100 || status > 999) {
        CHECK(rc == CK_EINVAL, "status %d accepted", status);
        return;
    }
    if (rc == CK_EINVAL) {
        CHECK(headers_unsendable(r->headers, r->n_headers), "headers refused for no reason");
        CHECK(flags == in_flags, "flags changed on refusal");
        return;
    }
    CHECK(rc == 0, "format_response: %d", rc);
    CHECK((flags & in_flags) == in_flags, "flags lost");
    /* Only a Connection header asking to close may add a flag. */
    if (flags != in_flags) {
        CHECK(flags == (in_flags | CK_HTTP_FMT_CLOSE), "unexpected flag");
        bool asked = false;
        for (size_t i = 0; i < r->n_headers; i++) {
            const struct ck_http_header *h = &r->headers[i];
            if (h->name_len == 10 && strncasecmp(h->name, "connection", 10) == 0)
                for (size_t k = 0; k + 5 <= h->value_len; k++)
                    asked |= strncasecmp(h->value + k, "close", 5) == 0;
        }
        CHECK(asked, "close flag without a Connection: close header");
    }
    check_response(*buf, len, status, r->headers, r->n_headers, r->body_len, flags);
    /* The server's own error may carry any text (here the raw path). */
    check_format_error(buf, cap, 400 + (int)(salt % 100), r->path, r->path);
}

/* ------------------------------------------------------------------------ */
/* One parse                                                                 */
/* ------------------------------------------------------------------------ */

static uint64_t fnv1a(const uint8_t *d, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= d[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* Parses @data fed in pieces cut before each of @cuts (sorted, n_cuts of
 * them), or one byte at a time if @bytewise, the way a connection drives the
 * parser, and records the transcript in @t. Returns the number of requests. */
static size_t parse_all(const uint8_t *data, size_t size, const size_t *cuts, size_t n_cuts, bool bytewise,
                        const struct ck_http_limits *lim, uint64_t salt, struct tbuf *t, char **wbuf, size_t *wcap)
{
    struct ck_http_parser p;
    ck_http_parser_init(&p, lim);
    size_t requests = 0;
    size_t pos = 0, next_cut = 0;
    /* Every turn consumes a byte or completes a request that consumed at
     * least one, so 2 * size + 4 turns are plenty. */
    size_t turns = 0, max_turns = 2 * size + 4;
    enum ck_http_event ev = CK_HTTP_NEED_MORE;
    while (pos < size) {
        size_t end;
        if (bytewise) {
            end = pos + 1;
        } else {
            while (next_cut < n_cuts && cuts[next_cut] <= pos)
                next_cut++;
            end = next_cut < n_cuts ? cuts[next_cut] : size;
        }
        /* Feed [pos, end) until it is used up, a request at a time. */
        while (pos < end) {
            CHECK(++turns <= max_turns, "no progress after %zu turns", turns);
            size_t used = 12345;
            ev = ck_http_parser_feed(&p, (const char *)data + pos, end - pos, &used);
            CHECK(used <= end - pos, "consumed %zu of %zu", used, end - pos);
            pos += used;
            if (ev == CK_HTTP_ERROR)
                goto done;
            if (ev == CK_HTTP_NEED_MORE) {
                CHECK(pos == end, "NEED_MORE left %zu bytes", end - pos);
                CHECK(p.phase != CK_HTTP_DONE, "NEED_MORE with a request pending");
                break;
            }
            CHECK(ev == CK_HTTP_REQUEST && p.phase == CK_HTTP_DONE, "event %d", (int)ev);
            CHECK(used > 0, "a request out of no bytes");
            /* Feeding again before next() must not lose the request. */
            size_t again = 99;
            CHECK(ck_http_parser_feed(&p, (const char *)data + pos, end - pos, &again) == CK_HTTP_REQUEST && again == 0,
                  "feed while a request is pending");
            requests++;
            check_request(&p.req, lim);
            record_request(t, &p.req);
            respond_to(&p.req, salt + requests, wbuf, wcap);
            ck_http_parser_next(&p);
            CHECK(p.phase == CK_HTTP_IDLE || p.phase == CK_HTTP_CLOSED, "phase after next");
            if (p.phase == CK_HTTP_CLOSED)
                tb_num(t, 'C');
        }
    }
done:
    t->verdict_off = t->len;
    if (ev == CK_HTTP_ERROR) {
        t->err_status = p.err_status;
        /* 500 (out of memory) cannot happen on inputs this small. */
        CHECK(p.err_status == 400 || p.err_status == 413 || p.err_status == 431, "error status %d", p.err_status);
        CHECK(p.err_code != NULL && p.err_msg != NULL, "error without code or message");
        tb_num(t, 'E');
        tb_num(t, (uint64_t)p.err_status);
        tb_field(t, p.err_code, strlen(p.err_code));
        /* Sticky: nothing more is consumed. */
        size_t used = 7;
        CHECK(ck_http_parser_feed(&p, "GET / HTTP/1.1\r\n\r\n", 18, &used) == CK_HTTP_ERROR && used == 0,
              "error not sticky");
        check_format_error(wbuf, wcap, p.err_status, p.err_code, p.err_msg);
    } else {
        tb_num(t, 'N');
        tb_num(t, p.phase == CK_HTTP_CLOSED);
    }
    ck_http_parser_free(&p);
    return requests;
}

/* Whether two transcripts tell the same story: byte for byte, but for one
 * case. A header section over the limit is cut off at the end of whichever
 * read crosses the limit, which may come before a syntax error that another
 * way of cutting the input reaches first; so two errors, one of them 431,
 * after the same requests, agree. */
static bool same_story(const struct tbuf *a, const struct tbuf *b)
{
    if (a->len == b->len && memcmp(a->p, b->p, a->len) == 0)
        return true;
    if (a->err_status == 0 || b->err_status == 0 || (a->err_status != 431 && b->err_status != 431))
        return false;
    return a->verdict_off == b->verdict_off && memcmp(a->p, b->p, a->verdict_off) == 0;
}

/* The limits for an input: the defaults for half of the inputs, small ones
 * for the other half, so that every limit is hit. */
static void pick_limits(uint64_t h, struct ck_http_limits *lim)
{
    static const size_t header_sizes[] = {256, 1000, 4096, 16384};
    static const size_t body_sizes[] = {0, 16, 1000, 1024 * 1024};
    static const unsigned header_counts[] = {1, 3, 8, 64};
    ck_http_limits_default(lim);
    if (h & 1)
        return;
    lim->max_header_size = header_sizes[(h >> 1) & 3];
    lim->max_body_size = body_sizes[(h >> 3) & 3];
    lim->max_headers = header_counts[(h >> 5) & 3];
}

static uint64_t stat_requests;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cur_data = data;
    cur_size = size;
    uint64_t h = mix(fnv1a(data, size));
    struct ck_http_limits lim;
    pick_limits(h, &lim);

    size_t cuts[3];
    size_t n_cuts = size > 1 ? 1 + (size_t)((h >> 8) % 3) : 0;
    for (size_t i = 0; i < n_cuts; i++)
        cuts[i] = 1 + (size_t)(mix(h + i + 1) % (size - 1));
    for (size_t i = 1; i < n_cuts; i++) /* Insertion sort of three. */
        for (size_t j = i; j > 0 && cuts[j - 1] > cuts[j]; j--) {
            size_t tmp = cuts[j];
            cuts[j] = cuts[j - 1];
            cuts[j - 1] = tmp;
        }

    char *wbuf = NULL; /* Reused across requests, as a connection does. */
    size_t wcap = 0;
    struct tbuf whole = {0}, split = {0}, bytes = {0};
    size_t n = parse_all(data, size, NULL, 0, false, &lim, h, &whole, &wbuf, &wcap);
    parse_all(data, size, cuts, n_cuts, false, &lim, h, &split, &wbuf, &wcap);
    bool same = same_story(&whole, &split);
    if (same && size <= 4096) {
        parse_all(data, size, NULL, 0, true, &lim, h, &bytes, &wbuf, &wcap);
        same = same_story(&whole, &bytes);
    }
    if (!same) {
        fprintf(stderr, "limits: header %zu, body %zu, headers %u; cuts:", lim.max_header_size, lim.max_body_size,
                lim.max_headers);
        for (size_t i = 0; i < n_cuts; i++)
            fprintf(stderr, " %zu", cuts[i]);
        fprintf(stderr, "\n");
        tb_dump("whole", &whole);
        tb_dump("split", &split);
        if (bytes.len > 0)
            tb_dump("bytewise", &bytes);
    }
    CHECK(same, "the way the input was cut changed what was parsed");
    stat_requests += n;
    free(whole.p);
    free(split.p);
    free(bytes.p);
    free(wbuf);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Replay driver                                                             */
/* ------------------------------------------------------------------------ */

#ifdef CK_FUZZ_REPLAY
#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>

/* Sanitizers call this before they exit on an error; it is absent (NULL)
 * in a build without them. */
extern void __sanitizer_set_death_callback(void (*cb)(void)) __attribute__((weak));

struct input {
    uint8_t *data;
    size_t size;
};

static struct input *inputs;
static size_t n_inputs, inputs_cap;

static int read_file(const char *path, struct input *out)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    struct tbuf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0 && b.len < (1u << 20))
        tb_put(&b, chunk, n);
    fclose(f);
    out->data = (uint8_t *)b.p;
    out->size = b.len;
    return 0;
}

static void add_input(struct input in)
{
    if (n_inputs == inputs_cap) {
        inputs_cap = inputs_cap ? inputs_cap * 2 : 64;
        inputs = realloc(inputs, inputs_cap * sizeof(*inputs));
        CHECK(inputs != NULL, "out of memory");
    }
    inputs[n_inputs++] = in;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Loads a file, or every regular file of a directory in name order. */
static int load_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "fuzz_http: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        struct input in;
        if (read_file(path, &in) != 0) {
            fprintf(stderr, "fuzz_http: %s: %s\n", path, strerror(errno));
            return -1;
        }
        add_input(in);
        return 0;
    }
    DIR *d = opendir(path);
    if (d == NULL) {
        fprintf(stderr, "fuzz_http: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 32;
            names = realloc(names, cap * sizeof(*names));
            CHECK(names != NULL, "out of memory");
        }
        size_t len = strlen(path) + strlen(e->d_name) + 2;
        names[n] = malloc(len);
        CHECK(names[n] != NULL, "out of memory");
        snprintf(names[n], len, "%s/%s", path, e->d_name);
        n++;
    }
    closedir(d);
    qsort(names, n, sizeof(*names), cmp_names);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        struct stat fs;
        if (stat(names[i], &fs) == 0 && S_ISREG(fs.st_mode) && load_path(names[i]) != 0)
            rc = -1;
        free(names[i]);
    }
    free(names);
    return rc;
}

/* xorshift64*: a fixed seed gives the same inputs on every machine. */
static uint64_t rng_state;

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static size_t rnd_below(size_t n)
{
    return n == 0 ? 0 : (size_t)(rnd() % n);
}

/* Pieces of HTTP that random bytes would rarely hit. */
static const char *const methods[] = {
    "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "PATCH", "PRI", "FOO", "get",
};
static const char *const versions[] = {
    " HTTP/1.1\r\n", " HTTP/1.0\r\n", " HTTP/9.9\r\n", " HTTP/1.1\n",
    " HTTP/2.0\r\n", " HTTP/1.1",     "\r\n",          " HTTP/1.10\r\n",
};
static const char *const headers[] = {
    "Host: x\r\n",
    "Content-Length: ",
    "Content-Length: 0\r\n",
    "Content-Length: 5\r\n",
    "Content-Length: 99999999999999999999\r\n",
    "Content-Length: -1\r\n",
    "Content-Length: 1\r\nContent-Length: 2\r\n",
    "Transfer-Encoding: chunked\r\n",
    "Transfer-Encoding: gzip, chunked\r\n",
    "Transfer-Encoding: identity\r\n",
    "Connection: close\r\n",
    "Connection: keep-alive\r\n",
    "Connection: upgrade\r\nUpgrade: websocket\r\n",
    "Expect: 100-continue\r\n",
    "X-Fold: a\r\n b\r\n",
    "X-Empty:\r\n",
    "Bad Name: x\r\n",
    ": x\r\n",
    "NoColon\r\n",
    "X-Ws:   padded  \r\n",
};
static const char *const misc[] = {
    " ",
    "  ",
    "\t",
    "\r\n",
    "\n",
    "\r",
    "\r\n\r\n",
    ":",
    ": ",
    ";",
    ",",
    "?",
    "&",
    "=",
    "#",
    "%",
    "%00",
    "%zz",
    "%41",
    "/",
    "//",
    "/..",
    "*",
    "\0",
    "HTTP/",
    " folded\r\n",
    "0\r\n\r\n",
    "5\r\nhello\r\n",
    "ffffffffffffffff\r\n",
    "1;ext=1\r\nx\r\n",
    "0\r\nTrailer: t\r\n\r\n",
    "10\r\n",
    "hello",
    "{\"a\":1}",
    "/health",
    "/partitions/key?key=",
    "/join",
    "\x80",
    "\xff",
    "\x7f",
    "key=%E2%82%AC",
};

#define PICK(a) (a)[rnd_below(CK_ARRAY_SIZE(a))]

/* Any token of the lists above. */
static const char *any_token(void)
{
    switch (rnd_below(4)) {
    case 0:
        return PICK(methods);
    case 1:
        return PICK(versions);
    case 2:
        return PICK(headers);
    default:
        return PICK(misc);
    }
}

static void gen_put(struct tbuf *b, const char *s)
{
    /* The empty token stands for a NUL byte. */
    tb_put(b, s, s[0] == '\0' ? 1 : strlen(s));
}

/* HTTP-shaped token soup: one to three request-like messages. */
static void gen_soup(struct tbuf *b)
{
    size_t messages = 1 + rnd_below(3);
    for (size_t m = 0; m < messages; m++) {
        if (rnd_below(8) == 0)
            gen_put(b, "\r\n");
        gen_put(b, PICK(methods));
        gen_put(b, " /");
        for (size_t i = rnd_below(6); i > 0; i--)
            gen_put(b, rnd_below(2) ? PICK(misc) : any_token());
        gen_put(b, PICK(versions));
        for (size_t i = rnd_below(8); i > 0; i--)
            gen_put(b, rnd_below(4) == 0 ? any_token() : PICK(headers));
        gen_put(b, "\r\n");
        for (size_t i = rnd_below(4); i > 0; i--)
            gen_put(b, rnd_below(2) ? PICK(misc) : any_token());
    }
}

/* One to eight mutations of a loaded input. */
static void gen_mutation(struct tbuf *b)
{
    const struct input *src = &inputs[rnd_below(n_inputs)];
    tb_put(b, src->data, src->size);
    for (size_t k = 1 + rnd_below(8); k > 0; k--) {
        size_t at = rnd_below(b->len + 1);
        switch (rnd_below(7)) {
        case 0: /* Flip a byte. */
            if (b->len > 0)
                b->p[rnd_below(b->len)] ^= (char)(1u << rnd_below(8));
            break;
        case 1: /* Set a byte to something interesting. */
            if (b->len > 0)
                b->p[rnd_below(b->len)] = "\0\r\n :\t\x7f\xff"[rnd_below(8)];
            break;
        case 2: { /* Insert a token. */
            const char *tok = any_token();
            size_t tl = tok[0] == '\0' ? 1 : strlen(tok);
            tb_put(b, tok, tl); /* Grow, then move the tail. */
            memmove(b->p + at + tl, b->p + at, b->len - tl - at);
            memcpy(b->p + at, tok, tl);
            break;
        }
        case 3: { /* Delete a range. */
            size_t n = rnd_below(b->len - at + 1);
            if (n > 16)
                n = 1 + n % 16;
            memmove(b->p + at, b->p + at + n, b->len - at - n);
            b->len -= n;
            break;
        }
        case 4: { /* Duplicate a range (a repeated header, a second request). */
            if (b->len == 0 || b->len > 8192)
                break;
            size_t from = rnd_below(b->len);
            size_t n = 1 + rnd_below(b->len - from);
            char *copy = malloc(n);
            CHECK(copy != NULL, "out of memory");
            memcpy(copy, b->p + from, n);
            tb_put(b, copy, n);
            memmove(b->p + at + n, b->p + at, b->len - n - at);
            memcpy(b->p + at, copy, n);
            free(copy);
            break;
        }
        case 5: { /* Splice in the start of another input. */
            const struct input *o = &inputs[rnd_below(n_inputs)];
            b->len = at;
            tb_put(b, o->data, rnd_below(o->size + 1));
            break;
        }
        case 6: /* Truncate. */
            b->len = at;
            break;
        }
    }
}

static void on_sanitizer_death(void)
{
    fuzz_save_input();
}

int main(int argc, char **argv)
{
    unsigned long long n_gen = 20000, seed = 0x636b66757a7aULL; /* "ckfuzz" */
    bool verbose = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            n_gen = strtoull(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "-seed") == 0 && i + 1 < argc) {
            seed = strtoull(argv[++i], NULL, 0);
        } else if (strcmp(argv[i], "-v") == 0) {
            verbose = true;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "usage: %s [-n N] [-seed S] [-v] corpus-dir-or-file...\n", argv[0]);
            return 2;
        } else if (load_path(argv[i]) != 0) {
            return 2;
        }
    }
    if (__sanitizer_set_death_callback != NULL)
        __sanitizer_set_death_callback(on_sanitizer_death);

    size_t files = n_inputs;
    for (size_t i = 0; i < files; i++) {
        if (verbose)
            fprintf(stderr, "fuzz_http: corpus input %zu (%zu bytes)\n", i, inputs[i].size);
        LLVMFuzzerTestOneInput(inputs[i].data, inputs[i].size);
    }
    uint64_t corpus_requests = stat_requests;

    rng_state = seed ? seed : 1;
    for (unsigned long long i = 0; i < n_gen; i++) {
        struct tbuf b = {0};
        if (n_inputs > 0 && rnd_below(4) != 0)
            gen_mutation(&b);
        else
            gen_soup(&b);
        if (verbose)
            fprintf(stderr, "fuzz_http: generated input %llu (%zu bytes)\n", i, b.len);
        LLVMFuzzerTestOneInput((const uint8_t *)(b.p ? b.p : ""), b.len);
        free(b.p);
    }

    printf("fuzz_http: %zu corpus inputs (%llu requests parsed), %llu generated inputs "
           "(seed %#llx, %llu requests parsed): no failure\n",
           files, (unsigned long long)corpus_requests, n_gen, seed,
           (unsigned long long)(stat_requests - corpus_requests));
    for (size_t i = 0; i < n_inputs; i++)
        free(inputs[i].data);
    free(inputs);
    return 0;
}
#endif /* CK_FUZZ_REPLAY */
