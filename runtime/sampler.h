/*
 * sampler.h — choosing the next token from a row of logits on the host:
 * greedy argmax, or temperature, top-k and top-p (nucleus) sampling with
 * a seeded generator, so the same seed gives the same tokens.  Plain C;
 * knows nothing of models or backends.
 */
#ifndef FERRY_RUNTIME_SAMPLER_H
#define FERRY_RUNTIME_SAMPLER_H

#include "base/base.h"

typedef struct ferry_sampler {
    ferry_sampling params;
    int vocab_size;
    uint64_t rng_state;         /* splitmix64 state, started from params.seed */
    int *order;                 /* [vocab] token ids, most probable first */
    double *probs;              /* [vocab] probabilities by token id */
} ferry_sampler;

/* Check sampling settings: greedy, or temperature > 0 and finite, top_k
 * >= 0, 0 < top_p <= 1. */
ferry_status ferry_sampling_check(int greedy, float temperature, int top_k, float top_p);
/* The same for a rule, and its uniform in [0, 1) unless greedy. */
ferry_status ferry_sample_rule_check(const ferry_sample_rule *rule);

/* Check params (temperature > 0, top_k >= 0, 0 < top_p <= 1, unless
 * greedy) and allocate the scratch for vocab_size tokens. */
ferry_status ferry_sampler_init(ferry_sampler *sampler, const ferry_sampling *params,
                                int vocab_size);
void ferry_sampler_free(ferry_sampler *sampler);

/* Index of the largest logit; the lowest index wins ties; NaN never wins
 * (all NaN: 0). */
int32_t ferry_argmax(const float *logits, int vocab_size);

/* The candidates sampling draws from: softmax(logits / temperature), the
 * top_k most probable (ties: lower id first), then the smallest prefix
 * whose probability (renormalised after top-k) sums to >= top_p, always
 * at least one.  Writes the ids to sampler->order[0 .. n) most probable
 * first and their renormalised probabilities to out_probs (may be NULL,
 * else vocab_size doubles); returns n. */
int ferry_sampler_candidates(ferry_sampler *sampler, const float *logits, double *out_probs);

/* The uniform in [0, 1) the next ferry_sampler_next call draws, advancing
 * the generator as that call does (ferry_sample_rule_draw on the
 * sampler's params and state): greedy draws nothing, returns 0 and leaves
 * the state as it is. */
double ferry_sampler_uniform(ferry_sampler *sampler);

/* The token for the draw u: argmax when greedy (u unused).  Else unfiltered
 * (top_k 0, top_p 1): the first token in id order whose cumulative weight
 * exceeds u x the total; filtered: the candidates (above), and the first
 * whose cumulative weight, most probable first, exceeds u x theirs.  No
 * weight at all (every logit NaN or -inf): argmax unfiltered, the
 * candidates' first (token 0) filtered. */
int32_t ferry_sampler_pick(ferry_sampler *sampler, const float *logits, double u);

/* ferry_sampler_pick with the rule's settings (copied into sampler->params)
 * and its uniform: the host's version of the backends' sample op. */
int32_t ferry_sampler_pick_rule(ferry_sampler *sampler, const float *logits,
                                const ferry_sample_rule *rule);

/* The next token: ferry_sampler_pick(sampler, logits, ferry_sampler_uniform(sampler)). */
int32_t ferry_sampler_next(ferry_sampler *sampler, const float *logits);

#endif /* FERRY_RUNTIME_SAMPLER_H */
