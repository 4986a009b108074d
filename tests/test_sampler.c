/*
 * test_sampler.c — next-token choice: greedy ties, the exact candidate
 * sets of top-k and top-p (checked against a sort done here), seeds that
 * repeat, draws that follow the softmax (a chi-square test), and bad
 * parameters refused.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "helpers.h"
#include "runtime/sampler.h"

static ferry_sampler make_sampler(ferry_sampling params, int vocab) {
    ferry_sampler sampler;
    cr_assert_eq(ferry_sampler_init(&sampler, &params, vocab), FERRY_OK, "%s", ferry_last_error());
    return sampler;
}

static ferry_sampling sampling(float temperature, int top_k, float top_p, uint64_t seed) {
    ferry_sampling params = ferry_sampling_default();
    params.temperature = temperature;
    params.top_k = top_k;
    params.top_p = top_p;
    params.seed = seed;
    return params;
}

Test(sampler, argmax_takes_the_lowest_index_among_ties_and_skips_nan) {
    float ties[] = {1, 3, -2, 3, 2, 3};
    cr_assert_eq(ferry_argmax(ties, 6), 1);
    float flat[] = {0.5f, 0.5f, 0.5f};
    cr_assert_eq(ferry_argmax(flat, 3), 0);
    float with_nan[] = {NAN, -1, 4, NAN, 4};
    cr_assert_eq(ferry_argmax(with_nan, 5), 2);
    float negative[] = {-INFINITY, -7, -3};
    cr_assert_eq(ferry_argmax(negative, 3), 2);
}

Test(sampler, greedy_sampling_is_argmax_whatever_else_is_set) {
    uint64_t rng = test_seed();
    int vocab = 1000;
    float *logits = malloc(sizeof(float) * vocab);
    test_fill_uniform(&rng, logits, (size_t)vocab, -5, 5);
    ferry_sampling params = sampling(5.0f, 3, 0.1f, rng);
    params.greedy = 1;
    ferry_sampler sampler = make_sampler(params, vocab);
    int32_t best = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[best]) best = i;
    for (int i = 0; i < 5; i++) cr_assert_eq(ferry_sampler_next(&sampler, logits), best);
    ferry_sampler_free(&sampler);
    free(logits);
}

/* Softmax of logits / T in float64, written here. */
static void reference_probs(const float *logits, int vocab, double temperature, double *probs) {
    double max = -INFINITY, total = 0;
    for (int i = 0; i < vocab; i++) max = fmax(max, logits[i]);
    for (int i = 0; i < vocab; i++) total += (probs[i] = exp((logits[i] - max) / temperature));
    for (int i = 0; i < vocab; i++) probs[i] /= total;
}

/* Token ids by descending probability (selection sort: obviously right). */
static int *reference_order(const double *probs, int vocab) {
    int *order = malloc(sizeof(int) * vocab);
    char *taken = calloc((size_t)vocab, 1);
    for (int j = 0; j < vocab; j++) {
        int best = -1;
        for (int i = 0; i < vocab; i++)
            if (!taken[i] && (best < 0 || probs[i] > probs[best])) best = i;
        order[j] = best;
        taken[best] = 1;
    }
    free(taken);
    return order;
}

static void check_candidates(uint64_t *rng, int vocab, float temperature, int top_k, float top_p) {
    float *logits = malloc(sizeof(float) * vocab);
    test_fill_uniform(rng, logits, (size_t)vocab, -4, 4);
    double *probs = malloc(sizeof(double) * vocab);
    reference_probs(logits, vocab, temperature, probs);
    int *order = reference_order(probs, vocab);
    /* expected: first top_k, then the shortest prefix with renormalised
     * cumulative probability >= top_p */
    int expected_n = top_k > 0 && top_k < vocab ? top_k : vocab;
    double kept = 0;
    for (int j = 0; j < expected_n; j++) kept += probs[order[j]];
    if (top_p < 1.0f) {
        double cumulative = 0;
        int j = 0;
        while (j < expected_n) {
            cumulative += probs[order[j++]] / kept;
            if (cumulative >= top_p) break;
        }
        expected_n = j;
        kept = 0;
        for (j = 0; j < expected_n; j++) kept += probs[order[j]];
    }
    ferry_sampler sampler = make_sampler(sampling(temperature, top_k, top_p, 1), vocab);
    double *got_probs = malloc(sizeof(double) * vocab);
    int n = ferry_sampler_candidates(&sampler, logits, got_probs);
    cr_assert_eq(n, expected_n, "vocab %d T %g top_k %d top_p %g: %d candidates, expected %d",
                 vocab, (double)temperature, top_k, (double)top_p, n, expected_n);
    double sum = 0;
    for (int j = 0; j < n; j++) {
        cr_assert_eq(sampler.order[j], order[j], "candidate %d", j);
        cr_assert(fabs(got_probs[j] - probs[order[j]] / kept) <= 1e-12, "probability of candidate %d", j);
        sum += got_probs[j];
    }
    cr_assert(fabs(sum - 1) < 1e-9);
    ferry_sampler_free(&sampler);
    free(logits), free(probs), free(order), free(got_probs);
}

Test(sampler, top_k_keeps_exactly_the_k_most_probable_tokens) {
    uint64_t rng = test_seed();
    check_candidates(&rng, 50, 1.0f, 7, 1.0f);
    check_candidates(&rng, 50, 0.5f, 1, 1.0f);
    check_candidates(&rng, 20, 2.0f, 40, 1.0f); /* k beyond the vocabulary: all */
    check_candidates(&rng, 3001, 1.0f, 100, 1.0f); /* selection of k, then a sort */
    check_candidates(&rng, 3001, 0.3f, 1, 1.0f);
}

Test(sampler, top_p_keeps_the_smallest_prefix_reaching_p_and_at_least_one) {
    uint64_t rng = test_seed();
    check_candidates(&rng, 60, 1.0f, 0, 0.9f);
    check_candidates(&rng, 60, 0.7f, 0, 0.5f);
    check_candidates(&rng, 60, 1.0f, 0, 1e-6f); /* one token only */
    check_candidates(&rng, 60, 1.3f, 10, 0.8f); /* top-k first, then top-p */
    /* large vocabularies: a nucleus inside the first sorted guess, one far
     * wider (every token nearly equal), and top-k before top-p */
    check_candidates(&rng, 4000, 0.2f, 0, 0.9f);
    check_candidates(&rng, 4000, 50.0f, 0, 0.95f);
    check_candidates(&rng, 4000, 1.0f, 700, 0.9f);
}

Test(sampler, top_p_is_exact_on_a_hand_made_distribution) {
    /* probabilities 0.5, 0.25, 0.125, 0.125 */
    float logits[] = {logf(0.125f), logf(0.5f), logf(0.125f), logf(0.25f)};
    ferry_sampler sampler = make_sampler(sampling(1.0f, 0, 0.75f, 0), 4);
    double probs[4];
    int n = ferry_sampler_candidates(&sampler, logits, probs);
    cr_assert_eq(n, 2, "0.5 + 0.25 reaches 0.75: two tokens, got %d", n);
    cr_assert_eq(sampler.order[0], 1);
    cr_assert_eq(sampler.order[1], 3);
    cr_assert(fabs(probs[0] - 2.0 / 3) < 1e-6 && fabs(probs[1] - 1.0 / 3) < 1e-6);
    ferry_sampler_free(&sampler);
    /* equal probabilities: ties go to the lower id */
    float flat[] = {0, 0, 0, 0};
    sampler = make_sampler(sampling(1.0f, 2, 1.0f, 0), 4);
    cr_assert_eq(ferry_sampler_candidates(&sampler, flat, NULL), 2);
    cr_assert(sampler.order[0] == 0 && sampler.order[1] == 1);
    ferry_sampler_free(&sampler);
}

static void draw_sequence(ferry_sampling params, const float *logits, int vocab, int n, int32_t *out) {
    ferry_sampler sampler = make_sampler(params, vocab);
    for (int i = 0; i < n; i++) out[i] = ferry_sampler_next(&sampler, logits);
    ferry_sampler_free(&sampler);
}

Test(sampler, the_same_seed_repeats_the_same_tokens_and_another_seed_does_not) {
    uint64_t rng = test_seed();
    int vocab = 300, n = 200;
    float *logits = malloc(sizeof(float) * vocab);
    test_fill_uniform(&rng, logits, (size_t)vocab, -2, 2);
    int32_t a[200], b[200], c[200];
    const ferry_sampling variants[] = {sampling(0.8f, 0, 1.0f, rng), sampling(1.0f, 40, 0.9f, rng),
                                       sampling(1.5f, 0, 0.95f, rng)};
    for (size_t v = 0; v < 3; v++) {
        draw_sequence(variants[v], logits, vocab, n, a);
        draw_sequence(variants[v], logits, vocab, n, b);
        cr_assert_eq(memcmp(a, b, sizeof a), 0, "variant %zu is not repeatable", v);
        ferry_sampling other = variants[v];
        other.seed ^= 0x5deece66dull;
        draw_sequence(other, logits, vocab, n, c);
        cr_assert_neq(memcmp(a, c, sizeof a), 0, "variant %zu ignores the seed", v);
    }
    free(logits);
}

/* Pearson's chi-square of draws against expected probabilities; tokens
 * with probability 0 must never be drawn. */
static void check_distribution(ferry_sampling params, const float *logits, const double *expected,
                               int vocab, int n_draws) {
    ferry_sampler sampler = make_sampler(params, vocab);
    int counts[16] = {0};
    for (int i = 0; i < n_draws; i++) {
        int32_t token = ferry_sampler_next(&sampler, logits);
        cr_assert(token >= 0 && token < vocab);
        counts[token]++;
    }
    double chi_square = 0;
    int degrees = -1;
    for (int i = 0; i < vocab; i++) {
        if (expected[i] == 0) {
            cr_assert_eq(counts[i], 0, "token %d is outside the candidates but was drawn", i);
            continue;
        }
        double e = expected[i] * n_draws;
        chi_square += (counts[i] - e) * (counts[i] - e) / e;
        degrees++;
    }
    /* A correct sampler exceeds 40 with 5 or fewer degrees of freedom with
     * probability below 1e-6. */
    cr_assert(chi_square < 40, "chi-square %.1f with %d degrees of freedom", chi_square, degrees);
    ferry_sampler_free(&sampler);
}

Test(sampler, draws_follow_the_tempered_softmax_and_respect_top_k_and_top_p) {
    uint64_t seed = test_seed();
    float logits[] = {0.3f, -1.0f, 1.2f, 0.0f, 0.9f, -0.4f};
    int vocab = 6;
    double probs[6];
    reference_probs(logits, vocab, 0.7, probs);
    check_distribution(sampling(0.7f, 0, 1.0f, seed), logits, probs, vocab, 30000);

    /* top-k 3 at T=1: tokens 2, 4, 0 renormalised */
    reference_probs(logits, vocab, 1.0, probs);
    double top3[6] = {0}, kept = probs[2] + probs[4] + probs[0];
    top3[2] = probs[2] / kept, top3[4] = probs[4] / kept, top3[0] = probs[0] / kept;
    check_distribution(sampling(1.0f, 3, 1.0f, seed + 1), logits, top3, vocab, 30000);

    /* top-p just above p(2) + p(4): exactly the same three tokens */
    float top_p = (float)(probs[2] + probs[4] + 1e-3);
    check_distribution(sampling(1.0f, 0, top_p, seed + 2), logits, top3, vocab, 30000);
}

Test(sampler, bad_parameters_are_refused) {
    ferry_sampler sampler;
    const ferry_sampling bad[] = {sampling(0.0f, 0, 1.0f, 0), sampling(-1.0f, 0, 1.0f, 0),
                                  sampling(NAN, 0, 1.0f, 0),  sampling(INFINITY, 0, 1.0f, 0),
                                  sampling(1.0f, -1, 1.0f, 0), sampling(1.0f, 0, 0.0f, 0),
                                  sampling(1.0f, 0, 1.5f, 0),  sampling(1.0f, 0, NAN, 0)};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(ferry_sampler_init(&sampler, &bad[i], 10), FERRY_ERR_INVALID_ARGUMENT,
                     "case %zu accepted", i);
        cr_assert(strlen(ferry_last_error()) > 0);
    }
    ferry_sampling fine = ferry_sampling_default();
    cr_assert_eq(ferry_sampler_init(&sampler, &fine, 0), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_sampler_init(&sampler, NULL, 10), FERRY_ERR_INVALID_ARGUMENT);
    /* greedy needs no valid temperature */
    ferry_sampling greedy = sampling(0.0f, 0, 1.0f, 0);
    greedy.greedy = 1;
    cr_assert_eq(ferry_sampler_init(&sampler, &greedy, 10), FERRY_OK);
    ferry_sampler_free(&sampler);
}
