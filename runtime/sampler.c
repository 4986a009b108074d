/*
 * sampler.c — next-token choice on host logits: greedy argmax, or a draw
 * from softmax(logits / temperature) restricted by top-k and top-p.  The
 * generator is splitmix64 started from the seed, so a generate call with
 * the same seed, model and prompt repeats exactly.  The draw (a uniform in
 * [0, 1)) is taken apart from the pick, so a backend's sample op can make
 * the same choice on the device from the same draw.  Allocates only in
 * ferry_sampler_init.
 */
#include <math.h>
#include <stdlib.h>

#include "runtime/sampler.h"

ferry_sampling ferry_sampling_default(void) {
    ferry_sampling sampling = {
        .greedy = 0, .temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 0};
    return sampling;
}

ferry_status ferry_sampling_check(int greedy, float temperature, int top_k, float top_p) {
    if (greedy) return FERRY_OK;
    if (!(temperature > 0.0f) || !isfinite(temperature))
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "sampling: temperature %g must be > 0 (use greedy for argmax)",
                          (double)temperature);
    if (top_k < 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "sampling: top_k %d must be >= 0 (0: no limit)", top_k);
    if (!(top_p > 0.0f && top_p <= 1.0f))
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "sampling: top_p %g must be in (0, 1] (1: no limit)", (double)top_p);
    return FERRY_OK;
}

ferry_status ferry_sample_rule_check(const ferry_sample_rule *rule) {
    FERRY_TRY(ferry_sampling_check(rule->greedy, rule->temperature, rule->top_k, rule->top_p));
    if (!rule->greedy && !(rule->uniform >= 0.0 && rule->uniform < 1.0))
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "sampling: the uniform draw %g must be in [0, 1)", rule->uniform);
    return FERRY_OK;
}

ferry_status ferry_sampler_init(ferry_sampler *sampler, const ferry_sampling *params,
                                int vocab_size) {
    memset(sampler, 0, sizeof *sampler);
    if (!params) return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "sampling parameters are NULL");
    if (vocab_size < 1)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "sampler: vocabulary of %d tokens",
                          vocab_size);
    FERRY_TRY(ferry_sampling_check(params->greedy, params->temperature, params->top_k,
                                   params->top_p));
    sampler->params = *params;
    sampler->vocab_size = vocab_size;
    sampler->rng_state = params->seed;
    ferry_status status;
    FERRY_TRY_GOTO(ferry_malloc((size_t)vocab_size * sizeof *sampler->order, "sampler order",
                                (void **)&sampler->order));
    FERRY_TRY_GOTO(ferry_malloc((size_t)vocab_size * sizeof *sampler->probs, "sampler probs",
                                (void **)&sampler->probs));
    return FERRY_OK;
fail:
    ferry_sampler_free(sampler);
    return status;
}

void ferry_sampler_free(ferry_sampler *sampler) {
    if (!sampler) return;
    free(sampler->order);
    free(sampler->probs);
    sampler->order = NULL;
    sampler->probs = NULL;
}

int32_t ferry_argmax(const float *logits, int vocab_size) {
    int32_t best = 0;
    float best_value = -INFINITY;
    int found = 0;
    for (int i = 0; i < vocab_size; i++) {
        if (isnan(logits[i])) continue;
        /* strictly greater: the lowest index keeps a tie */
        if (!found || logits[i] > best_value) {
            best = i;
            best_value = logits[i];
            found = 1;
        }
    }
    return best;
}

/* splitmix64: a fixed, well-mixed sequence from any seed. */
static uint64_t next_random(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform double in [0, 1) with 53 random bits. */
static double next_uniform(uint64_t *state) { return (double)(next_random(state) >> 11) * 0x1p-53; }

/* probs[i] = e^((logit_i - max) / T), unnormalised; NaN logits get 0.
 * Returns the sum. */
static double softmax_weights(const float *logits, int vocab, double temperature, double *probs) {
    double max_logit = -INFINITY;
    for (int i = 0; i < vocab; i++)
        if (!isnan(logits[i]) && logits[i] > max_logit) max_logit = logits[i];
    double total = 0;
    for (int i = 0; i < vocab; i++) {
        probs[i] = isnan(logits[i]) || max_logit == -INFINITY
                       ? 0.0
                       : exp(((double)logits[i] - max_logit) / temperature);
        total += probs[i];
    }
    return total;
}

/* Most probable first; equal probabilities by lower token id. */
static int by_probability(const void *a, const void *b, void *context) {
    const double *probs = context;
    int ia = *(const int *)a, ib = *(const int *)b;
    if (probs[ia] != probs[ib]) return probs[ia] > probs[ib] ? -1 : 1;
    return (ia > ib) - (ia < ib);
}

/* Is token a ahead of token b in the candidate order? */
static int ranks_before(int a, int b, const double *probs) {
    return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
}

/* Quickselect: reorder so that order[0 .. m) hold the m best tokens (in no
 * particular order), in O(n) on average. */
static void select_best(int *order, int n, int m, const double *probs) {
    int lo = 0, hi = n - 1, target = m - 1;
    while (lo < hi) {
        int pivot = order[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (ranks_before(order[i], pivot, probs)) i++;
            while (ranks_before(pivot, order[j], probs)) j--;
            if (i <= j) {
                int swap = order[i];
                order[i++] = order[j];
                order[j--] = swap;
            }
        }
        /* [lo, j] rank before [i, hi]; between them sits the pivot */
        if (target <= j) hi = j;
        else if (target >= i) lo = i;
        else break;
    }
}

/* The shortest prefix of order[0 .. n) whose mass, divided by kept,
 * reaches top_p; 0 if even all n do not. */
static int top_p_prefix(const int *order, int n, const double *probs, double kept, double top_p) {
    double cumulative = 0;
    for (int j = 0; j < n; j++) {
        cumulative += probs[order[j]] / kept;
        if (cumulative >= top_p) return j + 1;
    }
    return 0;
}

/* Tokens sorted first when top-p runs without top-k: the nucleus almost
 * always lies within them, and sorting them beats sorting the vocabulary. */
enum { NUCLEUS_GUESS = 512 };

int ferry_sampler_candidates(ferry_sampler *sampler, const float *logits, double *out_probs) {
    const int vocab = sampler->vocab_size;
    const ferry_sampling *p = &sampler->params;
    double *probs = sampler->probs;
    int *order = sampler->order;
    double total = softmax_weights(logits, vocab, p->temperature, probs);
    for (int i = 0; i < vocab; i++) order[i] = i;

    /* top-k: the k most probable, sorted */
    int n = (p->top_k > 0 && p->top_k < vocab) ? p->top_k : vocab;
    int use_top_p = p->top_p < 1.0f && total > 0;
    int sorted = n;
    if (n == vocab && use_top_p && vocab > NUCLEUS_GUESS) sorted = NUCLEUS_GUESS;
    if (sorted < vocab) select_best(order, vocab, sorted, probs);
    qsort_r(order, (size_t)sorted, sizeof *order, by_probability, probs);
    double kept = 0;
    if (n < vocab) {
        for (int j = 0; j < n; j++) kept += probs[order[j]];
    } else {
        kept = total;
    }

    /* top-p: the shortest prefix whose renormalised mass reaches top_p
     * (the first candidate always stays) */
    if (use_top_p && kept > 0) {
        int prefix = top_p_prefix(order, sorted, probs, kept, (double)p->top_p);
        if (prefix == 0 && sorted < n) {
            /* the nucleus is wider than the guess: sort everything */
            qsort_r(order, (size_t)n, sizeof *order, by_probability, probs);
            prefix = top_p_prefix(order, n, probs, kept, (double)p->top_p);
        }
        n = prefix > 0 ? prefix : n; /* rounding: all of them */
        kept = 0;
        for (int j = 0; j < n; j++) kept += probs[order[j]];
    } else if (sorted < n) {
        qsort_r(order, (size_t)n, sizeof *order, by_probability, probs);
    }
    if (out_probs)
        for (int j = 0; j < n; j++)
            out_probs[j] = kept > 0 ? probs[sampler->order[j]] / kept : (j == 0 ? 1.0 : 0.0);
    return n;
}

ferry_sample_rule ferry_sample_rule_draw(const ferry_sampling *sampling, uint64_t *rng_state) {
    ferry_sample_rule rule = {.uniform = 0.0,
                              .temperature = sampling->temperature,
                              .top_p = sampling->top_p,
                              .top_k = sampling->top_k,
                              .greedy = sampling->greedy != 0};
    if (!rule.greedy) rule.uniform = next_uniform(rng_state);
    return rule;
}

double ferry_sampler_uniform(ferry_sampler *sampler) {
    return ferry_sample_rule_draw(&sampler->params, &sampler->rng_state).uniform;
}

int32_t ferry_sampler_pick(ferry_sampler *sampler, const float *logits, double u) {
    const int vocab = sampler->vocab_size;
    const ferry_sampling *p = &sampler->params;
    if (p->greedy) return ferry_argmax(logits, vocab);
    if (p->top_k == 0 && p->top_p >= 1.0f) {
        /* No filtering: draw straight from the softmax in id order. */
        double total = softmax_weights(logits, vocab, p->temperature, sampler->probs);
        if (!(total > 0)) return ferry_argmax(logits, vocab);
        double target = u * total, cumulative = 0;
        int32_t last_possible = 0;
        for (int i = 0; i < vocab; i++) {
            if (sampler->probs[i] <= 0) continue;
            cumulative += sampler->probs[i];
            last_possible = i;
            if (target < cumulative) return i;
        }
        return last_possible; /* rounding left u just past the end */
    }
    int n = ferry_sampler_candidates(sampler, logits, NULL);
    double kept = 0;
    for (int j = 0; j < n; j++) kept += sampler->probs[sampler->order[j]];
    if (!(kept > 0)) return sampler->order[0];
    double target = u * kept, cumulative = 0;
    for (int j = 0; j < n; j++) {
        cumulative += sampler->probs[sampler->order[j]];
        if (target < cumulative) return sampler->order[j];
    }
    return sampler->order[n - 1];
}

int32_t ferry_sampler_pick_rule(ferry_sampler *sampler, const float *logits,
                                const ferry_sample_rule *rule) {
    sampler->params.greedy = rule->greedy;
    sampler->params.temperature = rule->temperature;
    sampler->params.top_k = rule->top_k;
    sampler->params.top_p = rule->top_p;
    return ferry_sampler_pick(sampler, logits, rule->uniform);
}

int32_t ferry_sampler_next(ferry_sampler *sampler, const float *logits) {
    return ferry_sampler_pick(sampler, logits, ferry_sampler_uniform(sampler));
}
