/*
 * Unit tests for ck_hist: which bucket a duration lands in (bounds are
 * inclusive upper bounds, as Prometheus' le), the overflow bucket, and the
 * count and sum that /metrics writes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "ck_hist.h"

/* The bounds ascend, from 10 us to 30 s. */
static void test_bounds(void **state)
{
    (void)state;
    assert_int_equal(ck_hist_bounds_ns[0], 10000);
    assert_true(ck_hist_bounds_ns[CK_HIST_BUCKETS - 1] == UINT64_C(30000000000));
    for (int i = 1; i < CK_HIST_BUCKETS; i++) {
        assert_true(ck_hist_bounds_ns[i] > ck_hist_bounds_ns[i - 1]);
    }
}

/* A duration equal to a bound belongs to that bound's bucket, one above it
 * to the next; above every bound only the last bucket counts it. */
static void test_buckets(void **state)
{
    (void)state;
    struct ck_hist h;
    memset(&h, 0, sizeof h);
    ck_hist_observe(&h, 0);
    ck_hist_observe(&h, ck_hist_bounds_ns[0]);
    ck_hist_observe(&h, ck_hist_bounds_ns[0] + 1);
    ck_hist_observe(&h, ck_hist_bounds_ns[CK_HIST_BUCKETS - 1]);
    ck_hist_observe(&h, ck_hist_bounds_ns[CK_HIST_BUCKETS - 1] + 1);
    ck_hist_observe(&h, UINT64_MAX / 2);
    assert_int_equal(h.counts[0], 2);
    assert_int_equal(h.counts[1], 1);
    assert_int_equal(h.counts[CK_HIST_BUCKETS - 1], 1);
    assert_int_equal(h.counts[CK_HIST_BUCKETS], 2);
    assert_int_equal(h.count, 6);
    uint64_t total = 0;
    for (int i = 0; i <= CK_HIST_BUCKETS; i++) {
        total += h.counts[i];
    }
    assert_int_equal(total, h.count);
    assert_true(h.sum_ns ==
                2 * ck_hist_bounds_ns[0] + 1 + 2 * ck_hist_bounds_ns[CK_HIST_BUCKETS - 1] + 1 + UINT64_MAX / 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_buckets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
