/*
 * forward_next_fixture.h — one scenario that checks ferry_forward_next on
 * a model of any backend against ferry_forward plus the host sampler:
 * two sessions of the model take the same calls, one through
 * ferry_forward (FERRY_LOGITS_LAST) and ferry_sampler_pick_rule, the other
 * through ferry_forward_next, with the same rules drawn from per-slot
 * seeded generators.  A ragged prefill of 601 tokens over four slots
 * (two chunks: the last tokens of three sequences end in the first, one
 * in the second), then decode steps of 4, 2, 3 and 1 sequences, each
 * size several times (a backend that records decode steps replays them),
 * every kind of rule.  Both sessions are fed the tokens ferry_forward_next
 * picked.  Header-only: included by test_forward_next.c (CPU) and
 * test_cuda_engine.c.
 */
#ifndef FERRY_TESTS_FORWARD_NEXT_FIXTURE_H
#define FERRY_TESTS_FORWARD_NEXT_FIXTURE_H

#include <criterion/criterion.h>

#include "helpers.h"
#include "runtime/engine.h"
#include "sample_check.h"

enum { NEXT_SLOTS = 4, NEXT_CONTEXT = 700, NEXT_PREFILL = 601 };

/* Each slot's sampling: greedy, top-p, top-k with a low temperature, and
 * the unfiltered draw in id order. */
static inline ferry_sampling next_fixture_sampling(int slot, uint64_t seed) {
    ferry_sampling sampling = ferry_sampling_default();
    sampling.seed = seed + (uint64_t)slot;
    switch (slot) {
    case 0: sampling.greedy = 1; break;
    case 1: sampling.top_p = 0.9f; break;
    case 2:
        sampling.top_k = 5;
        sampling.temperature = 0.7f;
        break;
    default: sampling.temperature = 1.3f; break;
    }
    return sampling;
}

/* One call on both sessions; next[i] gets sequence i's token.  Returns
 * how many tokens differed from the host's pick by rounding (0 required
 * when exact). */
static inline int next_fixture_step(ferry_session *by_logits, ferry_session *by_next,
                                    const ferry_batch *batch, const ferry_sample_rule *rules,
                                    int32_t *next, int exact, const char *what) {
    const int vocab = by_logits->model->config.vocab_size, n = batch->n_seqs;
    float *logits = malloc(sizeof(float) * (size_t)n * vocab);
    for (size_t i = 0; i < (size_t)n * vocab; i++) logits[i] = NAN;
    cr_assert_eq(ferry_forward(by_logits, batch, FERRY_LOGITS_LAST, logits, (size_t)n * vocab),
                 FERRY_OK, "%s: forward: %s", what, ferry_last_error());
    for (int i = 0; i < n; i++) next[i] = -7;
    cr_assert_eq(ferry_forward_next(by_next, batch, rules, next), FERRY_OK,
                 "%s: forward_next: %s", what, ferry_last_error());
    int n_rounding = sample_check_rows(logits, rules, next, n, vocab, exact, what);
    for (int slot = 0; slot < NEXT_SLOTS; slot++)
        cr_assert_eq(ferry_session_length(by_next, slot), ferry_session_length(by_logits, slot),
                     "%s: slot %d holds %d tokens, %d through ferry_forward", what, slot,
                     ferry_session_length(by_next, slot), ferry_session_length(by_logits, slot));
    free(logits);
    return n_rounding;
}

/* The whole scenario on `model`; exact: every token equals the host's. */
static inline void next_fixture_run(ferry_model *model, int exact, const char *what) {
    const int vocab = model->config.vocab_size;
    ferry_session *by_logits = NULL, *by_next = NULL;
    cr_assert_eq(ferry_session_new(model, NEXT_SLOTS, NEXT_CONTEXT, &by_logits), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(ferry_session_new(model, NEXT_SLOTS, NEXT_CONTEXT, &by_next), FERRY_OK, "%s",
                 ferry_last_error());
    uint64_t rng = test_seed(), seed = test_rand_u64(&rng);
    ferry_sampling sampling[NEXT_SLOTS];
    uint64_t state[NEXT_SLOTS];
    for (int slot = 0; slot < NEXT_SLOTS; slot++) {
        sampling[slot] = next_fixture_sampling(slot, seed);
        state[slot] = sampling[slot].seed;
    }
    int32_t prompt[NEXT_PREFILL], next[NEXT_SLOTS], last[NEXT_SLOTS];
    for (int i = 0; i < NEXT_PREFILL; i++) prompt[i] = (int32_t)(test_rand_u64(&rng) % (uint64_t)vocab);
    int seq_ids[NEXT_SLOTS] = {2, 0, 3, 1}, n_tokens[NEXT_SLOTS] = {200, 230, 170, 1};
    ferry_sample_rule rules[NEXT_SLOTS];
    for (int i = 0; i < NEXT_SLOTS; i++) rules[i] = ferry_sample_rule_draw(&sampling[seq_ids[i]], &state[seq_ids[i]]);
    ferry_batch prefill = {NEXT_SLOTS, seq_ids, n_tokens, prompt};
    char step_what[256];
    snprintf(step_what, sizeof step_what, "%s: prefill", what);
    int n_rounding = next_fixture_step(by_logits, by_next, &prefill, rules, next, exact, step_what);
    for (int i = 0; i < NEXT_SLOTS; i++) last[seq_ids[i]] = next[i];

    static const int step_sizes[] = {4, 4, 4, 2, 2, 2, 3, 3, 3, 1, 1, 1, 4};
    const int ones[NEXT_SLOTS] = {1, 1, 1, 1};
    for (size_t step = 0; step < sizeof step_sizes / sizeof step_sizes[0]; step++) {
        const int n = step_sizes[step];
        int ids[NEXT_SLOTS];
        int32_t feed[NEXT_SLOTS];
        for (int i = 0; i < n; i++) { /* n slots from a rotating start */
            ids[i] = (int)((step + (size_t)i) % NEXT_SLOTS);
            feed[i] = last[ids[i]];
            rules[i] = ferry_sample_rule_draw(&sampling[ids[i]], &state[ids[i]]);
        }
        ferry_batch decode = {n, ids, ones, feed};
        snprintf(step_what, sizeof step_what, "%s: decode step %zu (%d sequences)", what, step, n);
        n_rounding += next_fixture_step(by_logits, by_next, &decode, rules, next, exact, step_what);
        for (int i = 0; i < n; i++) last[ids[i]] = next[i];
    }
    cr_assert_leq(n_rounding, 1, "%s: %d tokens differ from the host's by rounding", what, n_rounding);
    ferry_session_free(by_logits);
    ferry_session_free(by_next);
}

#endif /* FERRY_TESTS_FORWARD_NEXT_FIXTURE_H */
