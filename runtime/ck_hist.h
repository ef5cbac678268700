/*
 * Fixed-bucket duration histograms, the shape of a Prometheus histogram.
 *
 * Every histogram clusterkit exports (HTTP requests, raft commits and FSM
 * applies, hooks, placement policies) uses the one set of bounds below, so
 * that they can be compared and the bucket logic exists once: ck_node files
 * raft's durations here, and the Lua side gets the same type as
 * core.histogram() for its own. Pure C: observing is a short scan and three
 * additions, cheap enough for the FSM apply path.
 */
#ifndef CK_HIST_H
#define CK_HIST_H

#include <stdint.h>

#define CK_HIST_BUCKETS 20

/* Upper bounds of the buckets in nanoseconds, ascending: 10 us to 30 s. */
extern const uint64_t ck_hist_bounds_ns[CK_HIST_BUCKETS];

struct ck_hist {
    uint64_t counts[CK_HIST_BUCKETS + 1]; /* Per bucket, not cumulative; the last one is above every bound. */
    uint64_t count;
    uint64_t sum_ns;
};

/* File one duration of @ns nanoseconds. A zeroed struct is an empty histogram. */
void ck_hist_observe(struct ck_hist *h, uint64_t ns);

#endif /* CK_HIST_H */
