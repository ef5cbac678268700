#include "ck_hist.h"

#define US UINT64_C(1000)
#define MS UINT64_C(1000000)
#define S UINT64_C(1000000000)

/* The HTTP histogram's bounds from 100 us up, with three below them for
 * raft's FSM applies and small hooks, which take microseconds. */
const uint64_t ck_hist_bounds_ns[CK_HIST_BUCKETS] = {
    10 * US, 25 * US, 50 * US,  100 * US, 250 * US, 500 * US, 1 * MS,    2500 * US, 5 * MS, 10 * MS,
    25 * MS, 50 * MS, 100 * MS, 250 * MS, 500 * MS, 1 * S,    2500 * MS, 5 * S,     10 * S, 30 * S,
};

void ck_hist_observe(struct ck_hist *h, uint64_t ns)
{
    unsigned i = 0;
    /* Most durations are short: a scan from the smallest bound ends early. */
    while (i < CK_HIST_BUCKETS && ns > ck_hist_bounds_ns[i]) {
        i++;
    }
    h->counts[i]++;
    h->count++;
    h->sum_ns += ns;
}
