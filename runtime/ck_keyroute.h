/*
 * The HTTP fast path: GET /partitions/key?key=K, and GET of whole cached
 * bodies (/cluster, /partitions, ...), answered in C on the loop's callback
 * without entering Lua. Pure: no libuv, no Lua.
 *
 * The answer is {"key":K,<tail>} where the tail (everything after the key:
 * partition, primary, replicas, nodes, and the closing brace) depends only on
 * the partition and the committed state. Lua stays the one place that builds
 * it: when the fast path cannot answer (nothing cached for that partition),
 * the request goes to the Lua handler, which answers it and hands the tail it
 * encoded back with ck_keyroute_put(). The cache belongs to one state index:
 * the owner calls ck_keyroute_reset() on every state change (before any
 * request can see the new state) and ck_keyroute_prime() with the new index
 * and hasher on the next Lua answer; tails for another index are refused. So
 * C never answers from a state the Lua view has not reached, and the bytes
 * are the same as Lua's (the unit test and the Lua spec compare them).
 *
 * Anything unusual goes to Lua, which knows every rule: a method other than
 * GET, If-None-Match (a 304 is Lua's to decide), a missing, empty or too long
 * key, a key that is not valid UTF-8 (Lua substitutes U+FFFD), a partition
 * with no tail yet. The owner does not install the fast path at all when the
 * route needs a read token or every request must reach the access log.
 */
#ifndef CK_KEYROUTE_H
#define CK_KEYROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ck_hash.h"
#include "ck_http.h"

#define CK_KEYROUTE_MAX_KEY 4096 /* Longer keys get Lua's 400. */
#define CK_KEYROUTE_MAX_BODIES 8

struct ck_keyroute_tail {
    char *bytes;
    size_t len;
};

/* A whole body served for GET of an exact path without a query: a state read
 * whose answer is a function of the state index (and of whether a leader is
 * known, which Lua reports with it: X-CK-Known-Leader). Valid from
 * ck_keyroute_put_body() to the next reset, which the owner also calls when
 * raft's leader changes. */
struct ck_keyroute_body {
    char path[64];
    size_t path_len;
    bool valid;
    bool known_leader;
    char etag[24];
    size_t etag_len;
    char *bytes;
    size_t len, cap;
    uint64_t answered;
};

struct ck_keyroute {
    char path[64]; /* The route ("/partitions/key"). */
    size_t path_len;
    bool primed;    /* False: every request passes to Lua. */
    uint64_t index; /* State index of the cached tails. */
    char etag[24];  /* "\"<index>\"", as Lua writes it. */
    size_t etag_len;
    struct ck_hasher hasher;
    struct ck_keyroute_tail *tails; /* [hasher.partitions] while primed. */
    uint32_t n_tails;               /* Allocated length of tails. */
    char *body;                     /* Scratch for the last answer. */
    size_t body_cap;
    uint64_t answered; /* Requests answered here. */
    uint64_t passed;   /* Requests on the route handed to Lua. */
    struct ck_keyroute_body bodies[CK_KEYROUTE_MAX_BODIES];
    unsigned n_bodies;
};

/* Ready @kr, with the key lookup on @path (at most 63 bytes), or with none
 * when @path is NULL (cached bodies only). Returns 0 or CK_EINVAL. */
int ck_keyroute_init(struct ck_keyroute *kr, const char *path);

/* Turn the key lookup on, at @path (at most 63 bytes). Returns 0, or
 * CK_EINVAL (a bad path, or a path already set). */
int ck_keyroute_set_path(struct ck_keyroute *kr, const char *path);

/* Free every tail and the scratch. @kr may be initialised again. */
void ck_keyroute_free(struct ck_keyroute *kr);

/* The state changed: nothing cached is current any more. */
void ck_keyroute_reset(struct ck_keyroute *kr);

/* Start caching for state @index under @hasher (keys map to its partitions),
 * dropping every tail. Returns 0, CK_EINVAL (hasher not initialised) or
 * CK_ENOMEM (then @kr is left reset). */
int ck_keyroute_prime(struct ck_keyroute *kr, uint64_t index, const struct ck_hasher *hasher);

/* Cache @tail (the answer after `{"key":K,`) for partition @partition of
 * state @index. Returns 0; CK_ENOTREADY (an index other than the primed one,
 * or not primed: nothing is kept); CK_EINVAL (partition out of range, or a tail
 * that does not end the object); CK_ENOMEM. */
int ck_keyroute_put(struct ck_keyroute *kr, uint64_t index, uint32_t partition, const char *tail, size_t len);

/* Answer @req if it is this route's and the fast path can: returns true and
 * sets the body and the ETag (valid until the next call on @kr).
 * Returns false when the request is not the route's, or must go to Lua (then
 * it counts as passed). */
bool ck_keyroute_answer(struct ck_keyroute *kr, const struct ck_http_request *req, const char **body, size_t *len,
                        const char **etag, size_t *etag_len);

/* Serve GET @path (exact, no query) from a cached body from now on.
 * Returns the slot (>= 0), or CK_EINVAL (a bad path, or no slot left). */
int ck_keyroute_add_body(struct ck_keyroute *kr, const char *path);

/* Cache @body (@len bytes) as slot @slot's answer at state @index, with
 * X-CK-Known-Leader @known_leader. Returns 0, CK_EINVAL or CK_ENOMEM (then
 * the slot is left empty). */
int ck_keyroute_put_body(struct ck_keyroute *kr, int slot, uint64_t index, const char *body, size_t len,
                         bool known_leader);

/* Answer @req from a cached body: its slot (>= 0) with the body, ETag and
 * leader flag; -1 when no slot has the path, the slot is empty (since the
 * last reset), or the request is a HEAD, has a query or If-None-Match (those
 * are Lua's: blocking queries, 304s). */
int ck_keyroute_answer_body(struct ck_keyroute *kr, const struct ck_http_request *req, const char **body, size_t *len,
                            const char **etag, size_t *etag_len, bool *known_leader);

/* The value of query parameter @name in the raw query @q (percent-decoded,
 * '+' as space, the last repeat winning, as the Lua router's parse_query) into
 * @out (capacity @cap). Returns the decoded length, -1 when absent, or -2 when
 * it does not fit. Exposed for the tests. */
long ck_keyroute_query_param(const char *q, size_t qlen, const char *name, char *out, size_t cap);

/* Append @s as a JSON string with lua-cjson's escapes (\" \\ \/ \b \f \n \r
 * \t, \u00xx for other controls and DEL) to @out, which must hold 6 * @len + 2
 * bytes. Returns the bytes written. */
size_t ck_keyroute_json_string(const char *s, size_t len, char *out);

/* True when @s is valid UTF-8 by the rules of json.utf8_safe (no overlongs,
 * no surrogates, nothing above U+10FFFF). */
bool ck_keyroute_utf8_valid(const char *s, size_t len);

#endif /* CK_KEYROUTE_H */
