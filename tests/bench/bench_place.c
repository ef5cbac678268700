/*
 * Benchmark of the default placement policy (ck_place_compute).
 *
 * For (P, N) = (64, 3), (4096, 50), (65536, 1000), RF 3, equal weights, nodes
 * spread over three zones, it times a fresh placement, then one join and one
 * leave starting from the balanced table, and prints the best and the median
 * of several runs in ms. It then replays fixed-seed sequences of joins,
 * leaves and crashes (a crash first marks the node unable to lead, a later
 * event removes it), in one zone and in three random zones, and prints the
 * slots moved against the minimum the policy reports
 * (tests/unit/test_place_sim.c checks that this minimum is the true one),
 * and the ratio: above 1 only in the corners ck_place.h documents (here,
 * mostly the zone rule, which wins over movement).
 *
 * Run: ./build/tests/bench_place [runs] (default 7).
 */
#include "ck_place.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ck_state.h"

#define BENCH_ZONES 3u

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void die(const char *what, int rv)
{
    fprintf(stderr, "bench_place: %s failed (%d)\n", what, rv);
    exit(1);
}

/* Times @runs computations of @in after one untimed warm-up run, prints the
 * best and the median, and leaves the last result in @out. */
static void bench_time(const char *label, const struct ck_place_input *in, int runs, struct ck_place_result *out)
{
    double *ms = calloc((size_t)runs, sizeof *ms);
    int rv;

    if (ms == NULL) {
        die("calloc", 0);
    }
    if ((rv = ck_place_compute(in, out)) != 0) {
        die(label, rv);
    }
    for (int r = 0; r < runs; r++) {
        ck_place_free(out);
        double t0 = now_ms();
        if ((rv = ck_place_compute(in, out)) != 0) {
            die(label, rv);
        }
        ms[r] = now_ms() - t0;
    }
    qsort(ms, (size_t)runs, sizeof *ms, cmp_double);
    printf("place P=%u N=%u RF=%u %s: %.2f ms (median %.2f ms, %d runs; moved %u slots, %u primaries, minimum %u)\n",
           in->partitions, in->n_nodes, in->replication, label, ms[0], ms[runs / 2], runs, out->moved_slots,
           out->moved_primaries, out->min_moves);
    free(ms);
}

static void bench_shape(uint32_t P, uint32_t N, int runs)
{
    const uint32_t RF = 3;
    struct ck_place_node *nodes = calloc(N + 1, sizeof *nodes);
    uint16_t *cur = malloc((size_t)P * RF * sizeof *cur);
    struct ck_place_result fresh, r;

    if (nodes == NULL || cur == NULL) {
        die("calloc", 0);
    }
    for (uint32_t i = 0; i <= N; i++) {
        nodes[i] = (struct ck_place_node){i % BENCH_ZONES, 1, true, CK_PLACE_NO_DOMAIN};
    }

    struct ck_place_input in = {P, RF, N, nodes, NULL, 0, false};
    bench_time("fresh", &in, runs, &fresh);

    /* A join: node N (the highest id) is added to the balanced table. */
    in.n_nodes = N + 1;
    in.current = fresh.rows;
    in.current_width = fresh.width;
    bench_time("join ", &in, runs, &r);
    ck_place_free(&r);

    /* A leave: node N/2 goes; the others shift down one index above it and
     * its slots become empty (rows stay compacted, primary first). */
    for (uint32_t p = 0; p < P; p++) {
        uint32_t k = 0;
        for (uint32_t j = 0; j < fresh.width; j++) {
            uint16_t x = fresh.rows[(size_t)p * fresh.width + j];
            if (x != N / 2) {
                cur[(size_t)p * fresh.width + k++] = x > N / 2 ? x - 1 : x;
            }
        }
        while (k < fresh.width) {
            cur[(size_t)p * fresh.width + k++] = CK_NO_NODE;
        }
    }
    memmove(&nodes[N / 2], &nodes[N / 2 + 1], (N - N / 2) * sizeof *nodes);
    in.n_nodes = N - 1;
    in.current = cur;
    bench_time("leave", &in, runs, &r);
    ck_place_free(&r);

    ck_place_free(&fresh);
    free(nodes);
    free(cur);
}

/* ------------------------------------------------------------------------
 * Moved / minimum over a sequence of events
 * ------------------------------------------------------------------------ */

static uint64_t bench_rng = 42;

static uint32_t bench_below(uint32_t n)
{
    bench_rng = bench_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)((bench_rng >> 33) % n);
}

/* Applies @steps random events to a cluster of @N nodes and sums moved slots
 * and the minimum. Nodes are kept in id order; ids only grow, so a joiner is
 * always last, and a removal shifts the indexes above it. */
static void bench_sequence(uint32_t P, uint32_t N, uint32_t steps, uint32_t zones)
{
    const uint32_t RF = 3, cap = N * 2 + steps;
    struct ck_place_node *nodes = calloc(cap, sizeof *nodes);
    uint16_t *cur = malloc((size_t)P * RF * sizeof *cur);
    uint64_t moved = 0, minimum = 0, moved_prim = 0;
    uint32_t n = N, width = 0, counts[3] = {0, 0, 0};
    double worst = 0;

    if (nodes == NULL || cur == NULL) {
        die("calloc", 0);
    }
    bench_rng = 42; /* The same events for every zone count. */
    for (uint32_t i = 0; i < n; i++) {
        nodes[i] = (struct ck_place_node){bench_below(zones), 1, true, CK_PLACE_NO_DOMAIN};
    }
    for (uint32_t step = 0; step <= steps; step++) {
        int kind = step == 0 ? -1 : (int)bench_below(3); /* 0 join, 1 leave, 2 crash */
        if (kind == 0 && n < cap) {
            nodes[n++] = (struct ck_place_node){bench_below(zones), 1, true, CK_PLACE_NO_DOMAIN};
        } else if (kind >= 1 && n > RF + 1) {
            /* A leave removes a node; a crash marks one down, or removes one
             * that is already down. */
            uint32_t at = bench_below(n);
            for (uint32_t i = 0; kind == 2 && i < n; i++) {
                if (!nodes[i].can_lead) {
                    at = i;
                    kind = 1;
                    break;
                }
            }
            if (kind == 2) {
                nodes[at].can_lead = false;
            } else {
                memmove(&nodes[at], &nodes[at + 1], (n - at - 1) * sizeof *nodes);
                n--;
                for (uint32_t p = 0; p < P; p++) {
                    uint32_t k = 0;
                    for (uint32_t j = 0; j < width; j++) {
                        uint16_t x = cur[(size_t)p * width + j];
                        if (x != at && x != CK_NO_NODE) {
                            cur[(size_t)p * width + k++] = x > at ? x - 1 : x;
                        }
                    }
                    while (k < width) {
                        cur[(size_t)p * width + k++] = CK_NO_NODE;
                    }
                }
            }
        } else if (step > 0) {
            continue;
        }
        if (kind >= 0) {
            counts[kind]++;
        }
        struct ck_place_input in = {P, RF, n, nodes, step == 0 ? NULL : cur, width, false};
        struct ck_place_result r;
        double t0 = now_ms();
        int rv = ck_place_compute(&in, &r);
        double ms = now_ms() - t0;
        if (rv != 0) {
            die("sequence", rv);
        }
        worst = ms > worst ? ms : worst;
        if (step > 0) {
            moved += r.moved_slots;
            minimum += r.min_moves;
            moved_prim += r.moved_primaries;
        }
        width = r.width;
        memcpy(cur, r.rows, (size_t)P * width * sizeof *cur);
        ck_place_free(&r);
    }
    printf("place P=%u N=%u RF=3 zones=%u sequence of %u events (%u joins, %u leaves, %u crashes): moved %llu slots, "
           "minimum %llu, ratio %.4f; %llu primaries moved; worst step %.2f ms\n",
           P, N, zones, steps, counts[0], counts[1], counts[2], (unsigned long long)moved, (unsigned long long)minimum,
           minimum ? (double)moved / (double)minimum : 1.0, (unsigned long long)moved_prim, worst);
    free(nodes);
    free(cur);
}

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : 7;

    if (runs < 1) {
        runs = 1;
    }
    bench_shape(64, 3, runs);
    bench_shape(4096, 50, runs);
    bench_shape(65536, 1000, runs);
    for (uint32_t zones = 1; zones <= BENCH_ZONES; zones += BENCH_ZONES - 1) {
        bench_sequence(64, 5, 200, zones);
        bench_sequence(4096, 50, 200, zones);
        bench_sequence(65536, 1000, 20, zones);
    }
    return 0;
}
