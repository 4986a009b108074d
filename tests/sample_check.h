/*
 * sample_check.h — judging a token a backend's sample op picked against
 * the host's pick (ferry_sampler_pick_rule) for the same logits and rule.
 * Equal passes.  A different token passes only where float rounding can
 * explain it: written here from the rule's definition (include/ferry.h,
 * ferry_forward_next), the weights' cumulative sum along the walk order
 * at the boundary between the two tokens lies within a relative rounding
 * bound of the draw's target (and for top-p, the prefix the device kept
 * ends where the cumulative share is within that bound of top_p).  No
 * weight at all, greedy, and top-k are exact.  Header-only: included by
 * test_cuda_sample.c and test_cuda_engine.c.
 */
#ifndef FERRY_TESTS_SAMPLE_CHECK_H
#define FERRY_TESTS_SAMPLE_CHECK_H

#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime/sampler.h"

/* Rounding of sums of up to `vocab` float64 terms, in any order, and of
 * float64 exp (CUDA's is within 1 ulp), relative to the sum. */
static inline double sample_rounding_bound(int vocab) {
    return 8.0 * ((double)vocab + 16.0) * DBL_EPSILON;
}

/* Weights e^((logit - max) / T) (NaN: 0) into w; returns the largest
 * non-NaN logit (-inf if none). */
static inline double sample_check_weights(const float *logits, int vocab, double temperature,
                                          double *w) {
    double max = -INFINITY;
    for (int i = 0; i < vocab; i++)
        if (!isnan(logits[i]) && logits[i] > max) max = logits[i];
    for (int i = 0; i < vocab; i++)
        w[i] = isnan(logits[i]) ? 0.0 : exp(((double)logits[i] - max) / temperature);
    return max;
}

static int sample_check_by_weight(const void *a, const void *b, void *context) {
    const double *w = context;
    int ia = *(const int *)a, ib = *(const int *)b;
    if (w[ia] != w[ib]) return w[ia] > w[ib] ? -1 : 1;
    return (ia > ib) - (ia < ib);
}

/* Is `got` at the draw's boundary along order[0 .. n) (cumulative weights
 * cum[j] through j): the host takes the first j with target < cum[j]; a
 * later token needs the cumulative weight before it within bound of the
 * target, an earlier one its own cumulative weight. */
static inline int sample_draw_explains(const int *order, const double *cum, int n, double target,
                                       int32_t got, double bound) {
    int at = -1, host = n - 1;
    for (int j = 0; j < n; j++)
        if (order[j] == got) at = j;
    for (int j = 0; j < n; j++)
        if (target < cum[j]) {
            host = j;
            break;
        }
    if (at < 0) return 0;
    if (at == host) return 1;
    return at > host ? cum[at - 1] - target <= bound : target - cum[at] <= bound;
}

/* Can rounding explain `got` for this rule, given the weights w? */
static inline int sample_rounding_explains(const double *w, int vocab,
                                           const ferry_sample_rule *rule, int32_t got) {
    int *order = malloc(sizeof(int) * (size_t)vocab);
    double *cum = malloc(sizeof(double) * (size_t)vocab);
    for (int i = 0; i < vocab; i++) order[i] = i;
    const int unfiltered = rule->top_k == 0 && rule->top_p >= 1.0f;
    if (!unfiltered) qsort_r(order, (size_t)vocab, sizeof *order, sample_check_by_weight, (void *)w);
    double sum = 0;
    for (int j = 0; j < vocab; j++) cum[j] = (sum += w[order[j]]);
    const int n = rule->top_k > 0 && rule->top_k < vocab ? rule->top_k : vocab;
    const double kept = cum[n - 1], bound = sample_rounding_bound(vocab);
    int ok = 0;
    if (rule->top_p >= 1.0f) {
        ok = sample_draw_explains(order, cum, n, rule->uniform * kept, got, bound * kept);
    } else {
        /* every prefix length from the first whose cumulative share is
         * within the bound of top_p to the first that passes it by more */
        int first = n, last = n;
        for (int j = n - 1; j >= 0; j--) {
            if (cum[j] >= (rule->top_p - bound) * kept) first = j + 1;
            if (cum[j] >= (rule->top_p + bound) * kept) last = j + 1;
        }
        for (int length = first; length <= last && !ok; length++)
            ok = sample_draw_explains(order, cum, length, rule->uniform * cum[length - 1], got,
                                      bound * cum[length - 1]);
    }
    free(order), free(cum);
    return ok;
}

/* 1 when `got` is the host's pick or a rounding neighbour of it (counted
 * in *n_rounding when not NULL); 0 with the reason in why. */
static inline int sample_check_row(const float *logits, int vocab, const ferry_sample_rule *rule,
                                   int32_t host, int32_t got, int *n_rounding, char *why,
                                   size_t why_size) {
    snprintf(why, why_size, "device %d, host %d", (int)got, (int)host);
    if (got == host) return 1;
    if (rule->greedy || got < 0 || got >= vocab) return 0;
    double *w = malloc(sizeof(double) * (size_t)vocab);
    /* no weight at all, or a +inf logit: nothing is left to rounding */
    int ok = isfinite(sample_check_weights(logits, vocab, rule->temperature, w)) &&
             sample_rounding_explains(w, vocab, rule, got);
    free(w);
    if (ok && n_rounding) ++*n_rounding;
    snprintf(why, why_size, "device %d, host %d: %s", (int)got, (int)host,
             ok ? "a rounding neighbour" : "not explained by rounding");
    return ok;
}

/* Every row's token got[r] against the host's pick from logits row r with
 * rules[r]: equal when exact, else equal or a rounding neighbour.
 * Returns how many rows were rounding neighbours. */
static inline int sample_check_rows(const float *logits, const ferry_sample_rule *rules,
                                    const int32_t *got, int n, int vocab, int exact,
                                    const char *what) {
    ferry_sampler host;
    ferry_sampling defaults = ferry_sampling_default();
    cr_assert_eq(ferry_sampler_init(&host, &defaults, vocab), FERRY_OK, "%s", ferry_last_error());
    int n_rounding = 0;
    for (int r = 0; r < n; r++) {
        const float *row = logits + (size_t)r * vocab;
        const ferry_sample_rule *rule = &rules[r];
        int32_t want = ferry_sampler_pick_rule(&host, row, rule);
        char why[256];
        int ok = exact ? got[r] == want
                       : sample_check_row(row, vocab, rule, want, got[r], &n_rounding, why,
                                          sizeof why);
        if (exact) snprintf(why, sizeof why, "got %d, host %d", (int)got[r], (int)want);
        cr_assert(ok, "%s: vocab %d, row %d (greedy %d, T %g, top_k %d, top_p %.9g, u %.17g): %s",
                  what, vocab, r, rule->greedy, (double)rule->temperature, rule->top_k,
                  (double)rule->top_p, rule->uniform, why);
    }
    ferry_sampler_free(&host);
    return n_rounding;
}

#endif /* FERRY_TESTS_SAMPLE_CHECK_H */
