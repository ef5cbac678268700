/*
 * Unit tests for ck_keyroute, the C answer to GET /partitions/key: the query
 * decoding (the Lua router's rules), the JSON string escapes (lua-cjson's),
 * the UTF-8 check (json.utf8_safe's), and when it answers or passes to Lua.
 * tests/lua/http_spec.lua compares its bytes with the Lua handler's on a
 * real node.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "ck_common.h"
#include "ck_keyroute.h"

static long param(const char *q, const char *name, char *out, size_t cap)
{
    return ck_keyroute_query_param(q, strlen(q), name, out, cap);
}

static void assert_param(const char *q, const char *want)
{
    char out[64];
    long n = param(q, "key", out, sizeof out);
    if (want == NULL) {
        assert_int_equal(n, -1);
        return;
    }
    assert_int_equal(n, (long)strlen(want));
    assert_memory_equal(out, want, (size_t)n);
}

/* parse_query in lua/clusterkit/http.lua: '&' separates, the first '='
 * splits, '+' is a space, %XX (two hex digits, either case) is a byte and
 * any other '%' stays; names are decoded too; the last repeat wins. */
static void test_query_param(void **state)
{
    (void)state;
    assert_param("key=abc", "abc");
    assert_param("a=1&key=abc&b=2", "abc");
    assert_param("key=1&key=2", "2");
    assert_param("key=1&key", "");
    assert_param("key=", "");
    assert_param("keys=1", NULL);
    assert_param("", NULL);
    assert_param("&&key=x&&", "x");
    assert_param("k%65y=dec", "dec");
    assert_param("key=a+b", "a b");
    assert_param("key=a%2Bb%2fc", "a+b/c");
    assert_param("key=%7Buser%7d", "{user}");
    assert_param("key=%", "%");
    assert_param("key=%4", "%4");
    assert_param("key=%%41", "%A");
    assert_param("key=%zz", "%zz");
    assert_param("key=a=b", "a=b");
    char out[4];
    assert_int_equal(param("key=%00x", "key", out, sizeof out), 2);
    assert_memory_equal(out, "\0x", 2);
    assert_int_equal(param("key=abcd", "key", out, sizeof out), 4);
    assert_int_equal(param("key=abcde", "key", out, sizeof out), -2);
}

/* Every ASCII byte as lua-cjson writes it (checked against cjson by
 * tests/lua/http_spec.lua through a real node). */
static void test_json_string(void **state)
{
    (void)state;
    char out[16];
    for (int c = 0; c < 128; c++) {
        char in = (char)c;
        size_t n = ck_keyroute_json_string(&in, 1, out);
        char want[16];
        switch (c) {
        case '"':
            strcpy(want, "\"\\\"\"");
            break;
        case '\\':
            strcpy(want, "\"\\\\\"");
            break;
        case '/':
            strcpy(want, "\"\\/\"");
            break;
        case '\b':
            strcpy(want, "\"\\b\"");
            break;
        case '\f':
            strcpy(want, "\"\\f\"");
            break;
        case '\n':
            strcpy(want, "\"\\n\"");
            break;
        case '\r':
            strcpy(want, "\"\\r\"");
            break;
        case '\t':
            strcpy(want, "\"\\t\"");
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                snprintf(want, sizeof want, "\"\\u%04x\"", c);
            } else {
                snprintf(want, sizeof want, "\"%c\"", c);
            }
        }
        assert_int_equal(n, strlen(want));
        assert_memory_equal(out, want, n);
    }
    /* UTF-8 passes through; the worst case is 6 bytes per input byte. */
    size_t n = ck_keyroute_json_string("\xc3\xa9", 2, out);
    assert_int_equal(n, 4);
    assert_memory_equal(out, "\"\xc3\xa9\"", 4);
}

static void test_utf8(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        bool ok;
    } cases[] = {
        {"plain", true},
        {"\xc3\xa9", true},          /* é */
        {"\xe2\x82\xac", true},      /* € */
        {"\xf0\x9f\x98\x80", true},  /* U+1F600 */
        {"\xf4\x8f\xbf\xbf", true},  /* U+10FFFF */
        {"\xc0\xaf", false},         /* overlong */
        {"\xc1\xbf", false},         /* overlong */
        {"\xe0\x80\xaf", false},     /* overlong */
        {"\xed\xa0\x80", false},     /* surrogate */
        {"\xf0\x80\x80\xaf", false}, /* overlong */
        {"\xf4\x90\x80\x80", false}, /* above U+10FFFF */
        {"\xf5\x80\x80\x80", false},
        {"\xc3", false}, /* cut off */
        {"\xe2\x82", false},
        {"\x80", false}, /* lone continuation */
        {"a\xc3(", false},
        {"\xff", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(ck_keyroute_utf8_valid(cases[i].s, strlen(cases[i].s)), cases[i].ok);
    }
}

struct fixture {
    struct ck_keyroute kr;
    struct ck_hasher h;
    struct ck_http_header hdr[2];
    struct ck_http_request req;
};

static void get(struct fixture *f, const char *method, const char *path, const char *query)
{
    memset(&f->req, 0, sizeof f->req);
    f->req.method = method;
    f->req.method_len = strlen(method);
    f->req.path = path;
    f->req.path_len = strlen(path);
    f->req.query = query;
    f->req.query_len = strlen(query);
    f->req.headers = f->hdr;
}

static int setup(void **state)
{
    static struct fixture f;
    memset(&f, 0, sizeof f);
    assert_int_equal(ck_keyroute_init(&f.kr, "/partitions/key"), 0);
    assert_int_equal(ck_hasher_init(&f.h, "fnv1a64", 8, true), 0);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    ck_keyroute_free(&f->kr);
    return 0;
}

static bool answer(struct fixture *f, const char **body, size_t *len)
{
    const char *etag;
    size_t etag_len;
    return ck_keyroute_answer(&f->kr, &f->req, body, len, &etag, &etag_len);
}

static void test_init(void **state)
{
    (void)state;
    struct ck_keyroute kr;
    assert_int_equal(ck_keyroute_init(&kr, "relative"), CK_EINVAL);
    assert_int_equal(ck_keyroute_init(&kr, ""), CK_EINVAL);
    char longp[80];
    memset(longp, 'a', sizeof longp - 1);
    longp[0] = '/';
    longp[sizeof longp - 1] = '\0';
    assert_int_equal(ck_keyroute_init(&kr, longp), CK_EINVAL);
    /* One key path per route table: a second is refused. */
    assert_int_equal(ck_keyroute_init(&kr, "/a"), 0);
    assert_int_equal(ck_keyroute_set_path(&kr, "/b"), CK_EINVAL);
    assert_int_equal(kr.path_len, 2);
    ck_keyroute_free(&kr);
}

/* Nothing is answered before a prime, nor for a partition without a tail;
 * a primed partition's keys get {"key":K,<tail>} and the index's ETag. */
static void test_answers_only_what_is_cached(void **state)
{
    struct fixture *f = *state;
    const char *body;
    size_t len;
    get(f, "GET", "/partitions/key", "key=user:1");
    assert_false(answer(f, &body, &len));
    assert_int_equal(f->kr.passed, 1);

    assert_int_equal(ck_keyroute_prime(&f->kr, 42, &f->h), 0);
    assert_false(answer(f, &body, &len)); /* Primed, but no tail yet. */
    uint32_t p = ck_hash_partition(&f->h, "user:1", 6);
    assert_int_equal(ck_keyroute_put(&f->kr, 42, p, "\"p\":1}", 6), 0);
    const char *etag;
    size_t etag_len;
    assert_true(ck_keyroute_answer(&f->kr, &f->req, &body, &len, &etag, &etag_len));
    const char want[] = "{\"key\":\"user:1\",\"p\":1}";
    assert_int_equal(len, sizeof want - 1);
    assert_memory_equal(body, want, len);
    assert_int_equal(etag_len, 4);
    assert_memory_equal(etag, "\"42\"", 4);
    assert_int_equal(f->kr.answered, 1);

    /* The hash tag routes "x{user:1}" to the same partition. */
    get(f, "GET", "/partitions/key", "key=x%7Buser:1%7D");
    assert_int_equal(ck_hash_partition(&f->h, "x{user:1}", 9), p);
    assert_true(answer(f, &body, &len));
    const char want2[] = "{\"key\":\"x{user:1}\",\"p\":1}";
    assert_memory_equal(body, want2, sizeof want2 - 1);
}

/* A reset (a state change) stops every answer until the next prime; a tail
 * for another index is refused, so an answer encoded from an older view can
 * never be cached for a newer state. */
static void test_reset_and_stale_tails(void **state)
{
    struct fixture *f = *state;
    const char *body;
    size_t len;
    uint32_t p = ck_hash_partition(&f->h, "k", 1);
    assert_int_equal(ck_keyroute_put(&f->kr, 7, p, "}", 1), CK_ENOTREADY);
    assert_int_equal(ck_keyroute_prime(&f->kr, 7, &f->h), 0);
    assert_int_equal(ck_keyroute_put(&f->kr, 7, p, "}", 1), 0);
    get(f, "GET", "/partitions/key", "key=k");
    assert_true(answer(f, &body, &len));
    ck_keyroute_reset(&f->kr);
    assert_false(answer(f, &body, &len));
    assert_int_equal(ck_keyroute_put(&f->kr, 7, p, "}", 1), CK_ENOTREADY);
    assert_int_equal(ck_keyroute_prime(&f->kr, 8, &f->h), 0);
    assert_false(answer(f, &body, &len)); /* The old tails are gone. */
    assert_int_equal(ck_keyroute_put(&f->kr, 7, p, "}", 1), CK_ENOTREADY);
    assert_int_equal(ck_keyroute_put(&f->kr, 8, p, "}", 1), 0);
    assert_true(answer(f, &body, &len));
    /* Bad tails and partitions. */
    assert_int_equal(ck_keyroute_put(&f->kr, 8, 8, "}", 1), CK_EINVAL);
    assert_int_equal(ck_keyroute_put(&f->kr, 8, 0, "{", 1), CK_EINVAL);
    assert_int_equal(ck_keyroute_put(&f->kr, 8, 0, "", 0), CK_EINVAL);
    struct ck_hasher bad = f->h;
    bad.partitions = 0;
    assert_int_equal(ck_keyroute_prime(&f->kr, 9, &bad), CK_EINVAL);
    assert_false(answer(f, &body, &len)); /* A failed prime leaves it reset. */
}

/* Everything the Lua handler decides differently goes to it. */
static void test_passes_the_unusual_to_lua(void **state)
{
    struct fixture *f = *state;
    const char *body;
    size_t len;
    assert_int_equal(ck_keyroute_prime(&f->kr, 1, &f->h), 0);
    for (uint32_t p = 0; p < 8; p++) {
        assert_int_equal(ck_keyroute_put(&f->kr, 1, p, "}", 1), 0);
    }
    get(f, "GET", "/partitions/key", "key=ok");
    assert_true(answer(f, &body, &len));

    uint64_t passed = f->kr.passed;
    get(f, "HEAD", "/partitions/key", "key=ok");
    assert_false(answer(f, &body, &len));
    get(f, "POST", "/partitions/key", "key=ok");
    assert_false(answer(f, &body, &len));
    get(f, "GET", "/partitions/key", "");
    assert_false(answer(f, &body, &len));
    get(f, "GET", "/partitions/key", "key=");
    assert_false(answer(f, &body, &len));
    get(f, "GET", "/partitions/key", "key=%ff"); /* Lua writes U+FFFD. */
    assert_false(answer(f, &body, &len));
    get(f, "GET", "/partitions/key", "key=ok");
    f->hdr[0] = (struct ck_http_header){"if-none-match", 13, "\"1\"", 3};
    f->req.n_headers = 1;
    assert_false(answer(f, &body, &len)); /* A 304 is Lua's to decide. */
    assert_int_equal(f->kr.passed, passed + 6);

    /* 4096 bytes is the longest key Lua accepts; longer ones get its 400. */
    static char q[4 + 4097 + 1];
    memcpy(q, "key=", 4);
    memset(q + 4, 'a', 4096);
    q[4 + 4096] = '\0';
    get(f, "GET", "/partitions/key", q);
    assert_true(answer(f, &body, &len));
    assert_int_equal(len, 7 + 4096 + 2 + 1 + 1);
    q[4 + 4096] = 'a';
    q[4 + 4097] = '\0';
    get(f, "GET", "/partitions/key", q);
    assert_false(answer(f, &body, &len));

    /* Other routes are not this one's: not answered, not counted. */
    passed = f->kr.passed;
    get(f, "GET", "/partitions/keys", "key=ok");
    assert_false(answer(f, &body, &len));
    get(f, "GET", "/partitions", "key=ok");
    assert_false(answer(f, &body, &len));
    assert_int_equal(f->kr.passed, passed);
}

/* The body buffer grows for a long tail and escaped key. */
static void test_body_grows(void **state)
{
    struct fixture *f = *state;
    static char tail[10000];
    memset(tail, 'x', sizeof tail - 1);
    tail[sizeof tail - 2] = '}';
    assert_int_equal(ck_keyroute_prime(&f->kr, 3, &f->h), 0);
    uint32_t p = ck_hash_partition(&f->h, "\x01", 1);
    assert_int_equal(ck_keyroute_put(&f->kr, 3, p, tail, sizeof tail - 1), 0);
    get(f, "GET", "/partitions/key", "key=%01");
    const char *body;
    size_t len;
    assert_true(answer(f, &body, &len));
    assert_int_equal(len, 7 + 8 + 1 + sizeof tail - 1);
    assert_memory_equal(body, "{\"key\":\"\\u0001\",x", 17);
    assert_int_equal(body[len - 1], '}');
}

/* Whole cached bodies: GET of the exact path without a query, until the
 * next reset; HEAD, a query (a blocking query) and If-None-Match go to Lua;
 * the key route is independent of them. */
static void test_cached_bodies(void **state)
{
    (void)state;
    struct ck_keyroute kr;
    struct ck_http_request req;
    const char *body, *etag;
    size_t len, etag_len;
    bool leader = false;
    assert_int_equal(ck_keyroute_init(&kr, NULL), 0);
    assert_int_equal(ck_keyroute_add_body(&kr, "/cluster"), 0);
    assert_int_equal(ck_keyroute_add_body(&kr, "/partitions"), 1);
    assert_int_equal(ck_keyroute_add_body(&kr, "relative"), CK_EINVAL);
    memset(&req, 0, sizeof req);
    req.method = "GET";
    req.method_len = 3;
    req.path = "/cluster";
    req.path_len = 8;
    req.query = "";
    assert_int_equal(ck_keyroute_answer_body(&kr, &req, &body, &len, &etag, &etag_len, &leader), -1);
    assert_int_equal(ck_keyroute_put_body(&kr, 0, 12, "{\"a\":1}", 7, true), 0);
    assert_int_equal(ck_keyroute_answer_body(&kr, &req, &body, &len, &etag, &etag_len, &leader), 0);
    assert_int_equal(len, 7);
    assert_memory_equal(body, "{\"a\":1}", 7);
    assert_memory_equal(etag, "\"12\"", etag_len);
    assert_true(leader);
    assert_int_equal(kr.bodies[0].answered, 1);
    /* The key route is off (no path): a key lookup is not answered. */
    assert_false(ck_keyroute_answer(&kr, &req, &body, &len, &etag, &etag_len));
    /* Lua's cases. */
    req.query = "index=12&wait=5s";
    req.query_len = strlen(req.query);
    assert_int_equal(ck_keyroute_answer_body(&kr, &req, &body, &len, &etag, &etag_len, &leader), -1);
    req.query = "";
    req.query_len = 0;
    req.method = "HEAD";
    req.method_len = 4;
    assert_int_equal(ck_keyroute_answer_body(&kr, &req, &body, &len, &etag, &etag_len, &leader), -1);
    req.method = "GET";
    req.method_len = 3;
    struct ck_http_header inm = {"If-None-Match", 13, "\"12\"", 4};
    req.headers = &inm;
    req.n_headers = 1;
    assert_int_equal(ck_keyroute_answer_body(&kr, &req, &body, &len, &etag, &etag_len, &leader), -1);
    req.n_headers = 0;
    req.path = "/partitions";
    req.path_len = 11;
    assert_int_equal(ck_keyroute_answer_body(&kr, &req, &body, &len, &etag, &etag_len, &leader), -1);
    /* A reset (a state or leader change) empties every slot; a bigger body
     * replaces a smaller one. */
    ck_keyroute_reset(&kr);
    req.path = "/cluster";
    req.path_len = 8;
    assert_int_equal(ck_keyroute_answer_body(&kr, &req, &body, &len, &etag, &etag_len, &leader), -1);
    static char big[100000];
    memset(big, 'x', sizeof big);
    assert_int_equal(ck_keyroute_put_body(&kr, 0, 13, big, sizeof big, false), 0);
    assert_int_equal(ck_keyroute_answer_body(&kr, &req, &body, &len, &etag, &etag_len, &leader), 0);
    assert_int_equal(len, sizeof big);
    assert_false(leader);
    assert_memory_equal(etag, "\"13\"", etag_len);
    assert_int_equal(ck_keyroute_put_body(&kr, 2, 13, "{}", 2, false), CK_EINVAL);
    for (int i = 2; i < CK_KEYROUTE_MAX_BODIES; i++) {
        assert_int_equal(ck_keyroute_add_body(&kr, "/x"), i);
    }
    assert_int_equal(ck_keyroute_add_body(&kr, "/y"), CK_EINVAL);
    ck_keyroute_free(&kr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_param),
        cmocka_unit_test(test_json_string),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_init),
        cmocka_unit_test_setup_teardown(test_answers_only_what_is_cached, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset_and_stale_tails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_passes_the_unusual_to_lua, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_grows, setup, teardown),
        cmocka_unit_test(test_cached_bodies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
