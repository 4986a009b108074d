/*
 * test_cuda_sample.c — the CUDA backend's sample op against the host
 * sampler (ferry_sampler_pick_rule, the same uniform) on fresh random
 * logits: vocabularies from 1 to 151936 tokens, up to 256 rows a launch,
 * every kind of rule (greedy, temperature only, top-k, top-p, both, top_k
 * at or past the vocabulary, top_p 1), rows with NaN, -inf and exact ties,
 * and draws placed on a boundary on purpose.  Tokens are poisoned before
 * each launch and every row is checked: a token may differ from the host's
 * only where rounding explains it (sample_check.h checks that).  Skips
 * without a CUDA GPU.
 */
#include <math.h>
#include <stdlib.h>

#include "cuda_fixture.h"
#include "sample_check.h"

TestSuite(cuda_sample, .init = cuda_fixture_setup, .fini = cuda_fixture_teardown, .timeout = 600);

enum { POISON = -7 };

/* ------------------------------------------------------ random rows */

typedef enum row_kind {
    ROW_SPREAD,                 /* uniform in [-s, s], s from 0.5 to 30 */
    ROW_TIES,                   /* the largest logit and a few others copied to other ids */
    ROW_QUANTISED,              /* multiples of 1/2: large groups of equal logits */
    ROW_NAN,                    /* about one logit in 8 NaN, sometimes the largest */
    ROW_SPECIAL,                /* -inf and NaN, or a row all NaN or all -inf */
    N_ROW_KINDS,
} row_kind;

static double rand_unit(void) { return (double)(test_rand_u64(&rng) >> 11) * 0x1p-53; }

static void fill_row(float *row, int vocab, row_kind kind) {
    static const float spreads[] = {0.5f, 2.0f, 6.0f, 30.0f};
    float spread = spreads[test_rand_int(&rng, 0, 3)];
    test_fill_uniform(&rng, row, (size_t)vocab, -spread, spread);
    int best = 0;
    for (int i = 1; i < vocab; i++)
        if (row[i] > row[best]) best = i;
    switch (kind) {
    case ROW_TIES:
        for (int copies = test_rand_int(&rng, 1, 6); copies > 0; copies--) {
            int from = test_rand_int(&rng, 0, 2) ? best : test_rand_int(&rng, 0, vocab - 1);
            row[test_rand_int(&rng, 0, vocab - 1)] = row[from];
        }
        break;
    case ROW_QUANTISED:
        for (int i = 0; i < vocab; i++) row[i] = roundf(row[i] * 2.0f) / 2.0f;
        break;
    case ROW_NAN:
        for (int i = 0; i < vocab; i++)
            if (test_rand_int(&rng, 0, 7) == 0) row[i] = NAN;
        if (test_rand_int(&rng, 0, 1)) row[best] = NAN;
        break;
    case ROW_SPECIAL: {
        int whole = test_rand_int(&rng, 0, 3);
        for (int i = 0; i < vocab; i++) {
            int pick = test_rand_int(&rng, 0, 5);
            if (whole == 0) row[i] = NAN;
            else if (whole == 1) row[i] = pick == 0 ? NAN : -INFINITY;
            else if (pick == 0) row[i] = -INFINITY;
            else if (pick == 1) row[i] = NAN;
        }
        break;
    }
    default: break;
    }
}

typedef enum rule_kind {
    RULE_GREEDY,
    RULE_TEMPERATURE,           /* top_k 0, top_p 1: the draw in id order */
    RULE_TOP_K,
    RULE_TOP_P,
    RULE_BOTH,
    RULE_K_PAST_VOCAB,          /* top_k >= vocab, top_p 1 or below */
    N_RULE_KINDS,
} rule_kind;

static float random_top_p(void) {
    static const float fixed[] = {0.5f, 0.9f, 0.95f, 0.999f};
    return test_rand_int(&rng, 0, 1) ? fixed[test_rand_int(&rng, 0, 3)]
                                     : (float)(0.01 + 0.98 * rand_unit());
}

/* Mostly small; sometimes 512 or 513 (the most candidates the kernel
 * gathers into shared memory, and one more); sometimes anything. */
static int random_top_k(int vocab) {
    int small = vocab < 64 ? vocab : 64, pick = test_rand_int(&rng, 0, 7);
    if (pick == 0 && vocab > 513) return test_rand_int(&rng, 512, 513);
    return pick < 6 ? test_rand_int(&rng, 1, small) : test_rand_int(&rng, 1, vocab);
}

static ferry_sample_rule random_rule(rule_kind kind, int vocab) {
    static const float temperatures[] = {0.05f, 0.3f, 0.7f, 1.0f, 1.5f, 4.0f};
    ferry_sample_rule rule = {.uniform = rand_unit(),
                              .temperature = temperatures[test_rand_int(&rng, 0, 5)],
                              .top_p = 1.0f};
    switch (kind) {
    case RULE_GREEDY:
        rule = (ferry_sample_rule){.greedy = 1, .temperature = 0.0f, .top_p = 0.0f, .top_k = -1};
        break; /* the rest is not read */
    case RULE_TOP_K: rule.top_k = random_top_k(vocab); break;
    case RULE_TOP_P: rule.top_p = random_top_p(); break;
    case RULE_BOTH:
        rule.top_k = random_top_k(vocab);
        rule.top_p = random_top_p();
        break;
    case RULE_K_PAST_VOCAB:
        rule.top_k = vocab + test_rand_int(&rng, 0, 3);
        if (test_rand_int(&rng, 0, 1)) rule.top_p = random_top_p();
        break;
    default: break;
    }
    return rule;
}

/* ------------------------------------------------------- the check */

/* The op's tokens for n rows (host memory in and out); out is poisoned
 * on the device first. */
static void device_sample(int32_t *out, const float *logits, const ferry_sample_rule *rules, int n,
                          int vocab) {
    for (int r = 0; r < n; r++) out[r] = POISON;
    float *d_logits = cuda_upload(logits, (size_t)n * vocab * sizeof(float));
    ferry_sample_rule *d_rules = cuda_upload(rules, (size_t)n * sizeof *rules);
    int32_t *d_out = cuda_upload(out, (size_t)n * sizeof *out);
    cr_assert_eq(gpu->ops->sample(gpu, d_out, d_logits, d_rules, n, vocab), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(gpu->ops->synchronize(gpu), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(gpu->ops->download(gpu, out, d_out, (size_t)n * sizeof *out), FERRY_OK, "%s",
                 ferry_last_error());
    gpu->ops->free(gpu, d_logits);
    gpu->ops->free(gpu, d_rules);
    gpu->ops->free(gpu, d_out);
}

/* Every row's device token against the host's pick; returns how many
 * differed by rounding. */
static int check_rows(const float *logits, const ferry_sample_rule *rules, int n, int vocab,
                      const char *what) {
    int32_t *tokens = malloc(sizeof *tokens * (size_t)n);
    device_sample(tokens, logits, rules, n, vocab);
    int n_rounding = sample_check_rows(logits, rules, tokens, n, vocab, 0, what);
    free(tokens);
    return n_rounding;
}

/* n random rows of `vocab`, each of a random row kind and rule kind (the
 * kinds cycle, so every pair turns up), checked in one launch. */
static void check_random_rows(int vocab, int n) {
    float *logits = malloc(sizeof(float) * (size_t)n * vocab);
    ferry_sample_rule *rules = malloc(sizeof *rules * (size_t)n);
    int offset = test_rand_int(&rng, 0, N_RULE_KINDS * N_ROW_KINDS - 1);
    for (int r = 0; r < n; r++) {
        int kinds = (r + offset) % (N_RULE_KINDS * N_ROW_KINDS);
        fill_row(logits + (size_t)r * vocab, vocab, (row_kind)(kinds / N_RULE_KINDS));
        rules[r] = random_rule((rule_kind)(kinds % N_RULE_KINDS), vocab);
    }
    char what[64];
    snprintf(what, sizeof what, "%d random rows", n);
    int n_rounding = check_rows(logits, rules, n, vocab, what);
    /* a random draw lands within ~1e-11 of a boundary almost never */
    cr_assert_leq(n_rounding, 1, "vocab %d: %d of %d rows differ by rounding", vocab, n_rounding, n);
    free(logits);
    free(rules);
}

/* ------------------------------------------------------------ tests */

Test(cuda_sample, every_rule_on_every_kind_of_row_picks_the_host_token) {
    NEED_GPU();
    static const int vocabs[] = {1, 2, 7, 33, 257, 4099, 32000, 50257, 151936};
    for (size_t v = 0; v < sizeof vocabs / sizeof vocabs[0]; v++) {
        int rows = vocabs[v] > 60000 ? 36 : 64;
        check_random_rows(vocabs[v], rows);
    }
}

Test(cuda_sample, a_launch_of_256_rows_checks_out_row_by_row) {
    NEED_GPU();
    check_random_rows(32000, 256);
    check_random_rows(test_rand_int(&rng, 3, 3000), 256);
}

/* The target u x kept placed on the host's cumulative weight after a
 * random token (unfiltered: in id order), so the device may take that
 * token or the next: both must pass, nothing further. */
Test(cuda_sample, draws_on_a_boundary_take_one_of_its_two_neighbours) {
    NEED_GPU();
    enum { ROWS = 48 };
    const int vocab = test_rand_int(&rng, 50, 40000);
    float *logits = malloc(sizeof(float) * (size_t)ROWS * vocab);
    double *w = malloc(sizeof(double) * (size_t)vocab);
    ferry_sample_rule rules[ROWS];
    for (int r = 0; r < ROWS; r++) {
        float *row = logits + (size_t)r * vocab;
        fill_row(row, vocab, r % 2 ? ROW_SPREAD : ROW_QUANTISED);
        rules[r] = random_rule(RULE_TEMPERATURE, vocab);
        sample_check_weights(row, vocab, rules[r].temperature, w);
        double total = 0, cum = 0;
        for (int i = 0; i < vocab; i++) total += w[i];
        int stop = test_rand_int(&rng, 0, vocab - 2);
        for (int i = 0; i <= stop; i++) cum += w[i];
        rules[r].uniform = fmin(cum / total, 1.0 - 0x1p-53);
    }
    int n_rounding = check_rows(logits, rules, ROWS, vocab, "draws on a boundary");
    cr_log_info("boundary draws: %d of %d rows took the neighbour", n_rounding, ROWS);
    free(logits), free(w);
}

Test(cuda_sample, the_same_row_and_rule_give_the_same_token_every_time) {
    NEED_GPU();
    enum { ROWS = 64 };
    const int vocab = 32000;
    float *logits = malloc(sizeof(float) * (size_t)ROWS * vocab);
    ferry_sample_rule rules[ROWS];
    /* one row, every rule kind, repeated */
    fill_row(logits, vocab, ROW_SPREAD);
    for (int r = 0; r < ROWS; r++) {
        if (r > 0) memcpy(logits + (size_t)r * vocab, logits, sizeof(float) * vocab);
        rules[r] = random_rule((rule_kind)(r / 2 % N_RULE_KINDS), vocab);
        if (r % 2) rules[r] = rules[r - 1];
    }
    int32_t first[ROWS], second[ROWS];
    device_sample(first, logits, rules, ROWS, vocab);
    device_sample(second, logits, rules, ROWS, vocab);
    for (int r = 0; r < ROWS; r++) {
        cr_assert_eq(first[r], second[r], "row %d: %d, then %d", r, first[r], second[r]);
        if (r % 2) cr_assert_eq(first[r], first[r - 1], "row %d: %d, its twin %d", r, first[r], first[r - 1]);
    }
    free(logits);
}

/* The op reads rows and rules and writes tokens exactly where the
 * pointers say: a launch on rows [3, 3 + n) of larger buffers leaves the
 * tokens around them as they were. */
Test(cuda_sample, only_the_rows_given_are_read_and_written) {
    NEED_GPU();
    enum { ALL = 16, FIRST = 3, N = 9 };
    const int vocab = 97;
    float logits[ALL * 97];
    ferry_sample_rule rules[ALL];
    int32_t tokens[ALL];
    for (int r = 0; r < ALL; r++) {
        fill_row(logits + r * vocab, vocab, ROW_SPREAD);
        rules[r] = random_rule((rule_kind)(r % N_RULE_KINDS), vocab);
        tokens[r] = POISON;
    }
    float *d_logits = cuda_upload(logits, sizeof logits);
    ferry_sample_rule *d_rules = cuda_upload(rules, sizeof rules);
    int32_t *d_tokens = cuda_upload(tokens, sizeof tokens);
    cr_assert_eq(gpu->ops->sample(gpu, d_tokens + FIRST, d_logits + FIRST * vocab, d_rules + FIRST,
                                  N, vocab),
                 FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(gpu->ops->download(gpu, tokens, d_tokens, sizeof tokens), FERRY_OK, "%s",
                 ferry_last_error());
    for (int r = 0; r < ALL; r++)
        if (r < FIRST || r >= FIRST + N)
            cr_assert_eq(tokens[r], POISON, "token %d outside the launch was written", r);
    sample_check_rows(logits + FIRST * vocab, rules + FIRST, tokens + FIRST, N, vocab, 0,
                      "rows 3..11");
    gpu->ops->free(gpu, d_logits);
    gpu->ops->free(gpu, d_rules);
    gpu->ops->free(gpu, d_tokens);
}

Test(cuda_sample, a_vocabulary_the_kernel_cannot_take_is_refused) {
    NEED_GPU();
    ferry_sample_rule rule = {.greedy = 1};
    cr_assert_eq(gpu->ops->sample(gpu, NULL, NULL, &rule, 1, 0), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(gpu->ops->sample(gpu, NULL, NULL, &rule, 1, 1 << 25), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "vocabulary"), "%s", ferry_last_error());
    cr_assert_eq(gpu->ops->sample(gpu, NULL, NULL, NULL, 0, 100), FERRY_OK, "no rows: no launch");
}
