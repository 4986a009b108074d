/*
 * test_host_attention.c — ferry_host_attention (attention on the host over
 * an f16 or f32 KV cache) against a float64 softmax written here from the
 * equations: random caches, queries, slots and positions, head sizes 64
 * and 128, GQA ratios 1, 4 and 8, contexts up to 2k, several slots;
 * outputs poisoned with NaN and every element checked.  The result must
 * not depend on the number of threads.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "helpers.h"
#include "kernels/ops.h"
#include "offload/offload.h"
#include "runtime/engine.h"

typedef struct attention_case {
    ferry_attention_shape shape;
    ferry_dtype kv_dtype;
    int n_slots, max_context, n_tokens;
} attention_case;

static ferry_backend *make_cpu(int n_threads) {
    ferry_backend *backend = NULL;
    cr_assert_eq(ferry_backend_cpu_new(n_threads, &backend), FERRY_OK, "%s", ferry_last_error());
    return backend;
}

/* A cache filled with random values in kv_dtype, and their exact values. */
typedef struct test_cache {
    ferry_kv_layer layer;
    double *k_exact, *v_exact;
    size_t n;
} test_cache;

static void make_cache(uint64_t *rng, const attention_case *c, test_cache *out) {
    size_t n = (size_t)c->n_slots * c->max_context * c->shape.n_kv_heads * c->shape.head_dim;
    float *values = malloc(n * sizeof *values);
    out->n = n;
    out->layer.n_slots = c->n_slots;
    out->layer.max_context = c->max_context;
    void **stored[2] = {&out->layer.k, &out->layer.v};
    double **exact[2] = {&out->k_exact, &out->v_exact};
    for (int which = 0; which < 2; which++) {
        test_fill_uniform(rng, values, n, -2.0f, 2.0f);
        *stored[which] = malloc(n * ferry_dtype_bytes(c->kv_dtype));
        ferry_convert_dtype(*stored[which], c->kv_dtype, values, FERRY_DTYPE_F32, n);
        *exact[which] = malloc(n * sizeof(double));
        for (size_t i = 0; i < n; i++)
            (*exact[which])[i] = ferry_load_f32(*stored[which], c->kv_dtype, i);
    }
    free(values);
}

static void free_cache(test_cache *cache) {
    free(cache->layer.k);
    free(cache->layer.v);
    free(cache->k_exact);
    free(cache->v_exact);
}

/* out[t][h] = sum_p softmax_p(q[t][h] . K[s][p][h/group] / sqrt(d)) V[s][p][h/group]
 * over p = 0 .. positions[t], in float64; tolerance[i] scales with the
 * size of the terms summed (sum_p w_p |V|) so rounding in float32 fits. */
static void reference(const attention_case *c, const test_cache *cache, const float *q,
                      const int32_t *positions, const int32_t *slots, double *want,
                      double *tolerance) {
    const ferry_attention_shape s = c->shape;
    const int group = s.n_heads / s.n_kv_heads, d = s.head_dim;
    double *scores = malloc((size_t)c->max_context * sizeof *scores);
    for (int t = 0; t < c->n_tokens; t++)
        for (int h = 0; h < s.n_heads; h++) {
            const float *q_head = q + ((size_t)t * s.n_heads + h) * d;
            size_t row0 = (size_t)slots[t] * c->max_context;
            size_t head_offset = (size_t)(h / group) * d;
            double max_score = -INFINITY, sum = 0;
            for (int p = 0; p <= positions[t]; p++) {
                const double *key =
                    cache->k_exact + (row0 + p) * s.n_kv_heads * d + head_offset;
                double dot = 0;
                for (int i = 0; i < d; i++) dot += (double)q_head[i] * key[i];
                scores[p] = dot / sqrt((double)d);
                if (scores[p] > max_score) max_score = scores[p];
            }
            for (int p = 0; p <= positions[t]; p++) {
                scores[p] = exp(scores[p] - max_score);
                sum += scores[p];
            }
            for (int i = 0; i < d; i++) {
                double value_sum = 0, magnitude = 0;
                for (int p = 0; p <= positions[t]; p++) {
                    double v = cache->v_exact[(row0 + p) * s.n_kv_heads * d + head_offset + i];
                    value_sum += scores[p] * v;
                    magnitude += scores[p] * fabs(v);
                }
                size_t at = ((size_t)t * s.n_heads + h) * d + i;
                want[at] = value_sum / sum;
                tolerance[at] = 2e-5 * (magnitude / sum) + 1e-6;
            }
        }
    free(scores);
}

/* Random slots and positions (some tokens of one slot at neighbouring
 * positions, as a prefill chunk has), run at n_threads, check all. */
static void check_case(const attention_case *c, uint64_t seed) {
    uint64_t rng = seed;
    test_cache cache;
    make_cache(&rng, c, &cache);
    const ferry_attention_shape s = c->shape;
    size_t n_out = (size_t)c->n_tokens * s.n_heads * s.head_dim;
    float *q = malloc(n_out * sizeof *q);
    test_fill_uniform(&rng, q, n_out, -1.5f, 1.5f);
    int32_t *positions = malloc((size_t)c->n_tokens * sizeof *positions);
    int32_t *slots = malloc((size_t)c->n_tokens * sizeof *slots);
    for (int t = 0; t < c->n_tokens; t++) {
        slots[t] = test_rand_int(&rng, 0, c->n_slots - 1);
        positions[t] = t > 0 && slots[t - 1] == slots[t] && positions[t - 1] + 1 < c->max_context
                           ? positions[t - 1] + 1
                           : test_rand_int(&rng, 0, c->max_context - 1);
    }
    positions[0] = c->max_context - 1; /* the longest context is always there */
    double *want = malloc(n_out * sizeof *want), *tolerance = malloc(n_out * sizeof *tolerance);
    reference(c, &cache, q, positions, slots, want, tolerance);
    ferry_token_batch batch = {c->n_tokens, NULL, positions, slots};

    const int thread_counts[] = {1, 3, 0};
    float *first = NULL;
    for (size_t i = 0; i < sizeof thread_counts / sizeof thread_counts[0]; i++) {
        ferry_backend *cpu = make_cpu(thread_counts[i]);
        float *out = malloc(n_out * sizeof *out);
        for (size_t e = 0; e < n_out; e++) out[e] = NAN;
        cr_assert_eq(ferry_host_attention(cpu, out, q, &cache.layer, c->kv_dtype, &batch, s),
                     FERRY_OK, "%s", ferry_last_error());
        size_t n_bad = 0, bad = 0;
        for (size_t e = 0; e < n_out; e++)
            if (!(fabs((double)out[e] - want[e]) <= tolerance[e]) && n_bad++ == 0) bad = e;
        cr_assert_eq(n_bad, 0,
                     "%s cache, heads %d/%d, head_dim %d, context %d, %d threads: %zu of %zu "
                     "elements off; first at %zu: got %.9g want %.9g",
                     ferry_dtype_name(c->kv_dtype), s.n_heads, s.n_kv_heads, s.head_dim,
                     c->max_context, thread_counts[i], n_bad, n_out, bad, (double)out[bad],
                     want[bad]);
        if (!first) first = out;
        else {
            cr_assert_eq(memcmp(first, out, n_out * sizeof *out), 0,
                         "%d threads give other floats than 1 thread", thread_counts[i]);
            free(out);
        }
        ferry_backend_free(cpu);
    }
    free(first);
    free(want);
    free(tolerance);
    free(positions);
    free(slots);
    free(q);
    free_cache(&cache);
}

Test(host_attention, matches_float64_softmax_for_f16_and_f32_caches) {
    uint64_t seed = test_seed();
    const ferry_dtype dtypes[] = {FERRY_DTYPE_F16, FERRY_DTYPE_F32};
    const int head_dims[] = {64, 128};
    const int groups[] = {1, 4, 8};
    for (size_t di = 0; di < 2; di++)
        for (size_t hi = 0; hi < 2; hi++)
            for (size_t gi = 0; gi < 3; gi++) {
                int n_kv_heads = groups[gi] == 1 ? 3 : 2;
                attention_case c = {{n_kv_heads * groups[gi], n_kv_heads, head_dims[hi]},
                                    dtypes[di], 3, 40 + (int)(gi * 37), 9};
                check_case(&c, seed + di * 100 + hi * 10 + gi);
            }
}

Test(host_attention, long_contexts_and_decode_batches) {
    uint64_t seed = test_seed();
    /* 2k positions, one token per slot (decode), f16 as the GPU stores it */
    attention_case decode = {{8, 2, 128}, FERRY_DTYPE_F16, 6, 2048, 6};
    check_case(&decode, seed);
    /* a prefill-like chunk: many tokens over few slots, GQA 4, f32 */
    attention_case prefill = {{16, 4, 64}, FERRY_DTYPE_F32, 2, 700, 40};
    check_case(&prefill, seed + 1);
    /* odd head size: the vector loops' tails */
    attention_case odd = {{6, 3, 36}, FERRY_DTYPE_F16, 2, 33, 5};
    check_case(&odd, seed + 2);
}

Test(host_attention, bad_places_and_dtypes_are_refused) {
    ferry_backend *cpu = make_cpu(2);
    float k[64], v[64], q[32], out[32];
    ferry_kv_layer cache = {k, v, 1, 4};
    int32_t positions[1] = {4}, slots[1] = {0};
    ferry_token_batch batch = {1, NULL, positions, slots};
    ferry_attention_shape shape = {2, 2, 8};
    cr_assert_eq(ferry_host_attention(cpu, out, q, &cache, FERRY_DTYPE_F32, &batch, shape),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "outside the cache"), "%s", ferry_last_error());
    positions[0] = 3;
    cr_assert_eq(ferry_host_attention(cpu, out, q, &cache, FERRY_DTYPE_BF16, &batch, shape),
                 FERRY_ERR_UNSUPPORTED);
    ferry_attention_shape uneven = {3, 2, 8};
    cr_assert_eq(ferry_host_attention(cpu, out, q, &cache, FERRY_DTYPE_F32, &batch, uneven),
                 FERRY_ERR_INVALID_ARGUMENT);
    ferry_backend_free(cpu);
}

/* ------------------------------------------------ through the runtime */

enum { RUN_SEQS = 3, RUN_CONTEXT = 40, RUN_STEPS = 4, RUN_VOCAB_MAX = 4096 };

/* Logits of a ragged prompt batch (every position), then RUN_STEPS decode
 * steps of fixed tokens (last positions), concatenated into out. */
static size_t run_session(ferry_model *model, float *out, size_t capacity, int *attention_on_host,
                          int *kv_in_host_memory) {
    static const int32_t prompt[] = {1, 5, 9, 33, 1, 40, 41, 42, 43, 44, 50, 1, 20};
    static const int n_tokens[RUN_SEQS] = {4, 7, 2};
    static const int one[RUN_SEQS] = {1, 1, 1};
    const int vocab = model->config.vocab_size;
    for (size_t i = 0; i < capacity; i++) out[i] = NAN;
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, RUN_SEQS, RUN_CONTEXT, &session), FERRY_OK, "%s",
                 ferry_last_error());
    *attention_on_host = session->attention_on_host;
    *kv_in_host_memory = session->kv_in_host_memory;
    ferry_batch batch = {RUN_SEQS, NULL, n_tokens, prompt};
    size_t used = (size_t)13 * vocab;
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_ALL, out, capacity), FERRY_OK, "%s",
                 ferry_last_error());
    for (int step = 0; step < RUN_STEPS; step++) {
        int32_t next[RUN_SEQS] = {7 + step, 11 + step, 30 + step};
        ferry_batch decode = {RUN_SEQS, NULL, one, next};
        cr_assert_eq(ferry_forward(session, &decode, FERRY_LOGITS_LAST, out + used,
                                   capacity - used),
                     FERRY_OK, "%s", ferry_last_error());
        used += (size_t)RUN_SEQS * vocab;
    }
    ferry_session_free(session);
    return used;
}

/* Every logit within 1e-5 of the largest reference logit. */
static void expect_logits_close(const char *what, const float *got, const float *want, size_t n) {
    double largest = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(want[i]) > largest) largest = fabs(want[i]);
    for (size_t i = 0; i < n; i++)
        cr_assert(fabs((double)got[i] - want[i]) <= 1e-5 * largest, "%s: logit %zu is %.9g, want %.9g",
                  what, i, (double)got[i], (double)want[i]);
}

static ferry_model *open_synth(ferry_model_options options) {
    options.backend = "cpu";
    options.n_threads = 3;
    ferry_model *model = NULL;
    cr_assert_eq(ferry_model_open("synth:tiny:f16", &options, &model), FERRY_OK, "%s",
                 ferry_last_error());
    return model;
}

Test(host_attention, cpu_backend_logits_match_the_attention_op) {
    static float want[RUN_VOCAB_MAX * 32], got[RUN_VOCAB_MAX * 32];
    ferry_model_options plain = {0};
    ferry_model *model = open_synth(plain);
    cr_assert_leq(model->config.vocab_size, RUN_VOCAB_MAX);
    int on_host = -1, kv_host = -1;
    unsetenv("FERRY_ATTENTION");
    size_t n = run_session(model, want, sizeof want / sizeof want[0], &on_host, &kv_host);
    cr_assert_eq(on_host, 0, "auto on the CPU backend: its own attention op");
    setenv("FERRY_ATTENTION", "host", 1);
    run_session(model, got, sizeof got / sizeof got[0], &on_host, &kv_host);
    cr_assert_eq(on_host, 1, "FERRY_ATTENTION=host on the CPU backend");
    expect_logits_close("resident, attention on the host", got, want, n);
    ferry_model_close(model);
}

Test(host_attention, a_streamed_model_with_its_kv_cache_in_dram_attends_on_the_host) {
    static float want[RUN_VOCAB_MAX * 32], got[RUN_VOCAB_MAX * 32];
    ferry_model_options plain = {0};
    ferry_model *model = open_synth(plain);
    int on_host = -1, kv_host = -1;
    unsetenv("FERRY_ATTENTION");
    size_t n = run_session(model, want, sizeof want / sizeof want[0], &on_host, &kv_host);
    ferry_model_close(model);

    /* Every layer streamed, the GPU budget half a KV cache short. */
    ferry_model_options streamed = {0};
    streamed.streaming = 1;
    streamed.resident_layers = 0;
    streamed.stream_batch = RUN_SEQS;
    streamed.stream_context = RUN_CONTEXT;
    model = open_synth(streamed);
    const offload_plan *unlimited = offload_stream_plan(model->stream);
    cr_assert_eq(unlimited->kv_tier, OFFLOAD_TIER_GPU);
    streamed.gpu_mem_bytes = unlimited->gpu_total_bytes - unlimited->gpu_kv_bytes / 2;
    ferry_model_close(model);

    setenv("FERRY_ATTENTION", "host", 1);
    model = open_synth(streamed);
    const offload_plan *plan = offload_stream_plan(model->stream);
    cr_assert_eq(plan->kv_tier, OFFLOAD_TIER_HOST);
    cr_assert_eq(plan->attention_on_host, 1);
    run_session(model, got, sizeof got / sizeof got[0], &on_host, &kv_host);
    cr_assert_eq(kv_host, 1);
    cr_assert_eq(on_host, 1);
    expect_logits_close("streamed, KV cache in DRAM, attention on the host", got, want, n);
    char report[4096];
    ferry_model_stream_report(model, report, sizeof report);
    cr_assert(strstr(report, "kv cache       dram  (attention on the host"), "%s", report);
    cr_assert(strstr(report, "host attention"), "%s", report);
    ferry_model_close(model);

    /* device: the plan and the session keep the attention op */
    setenv("FERRY_ATTENTION", "device", 1);
    model = open_synth(streamed);
    cr_assert_eq(offload_stream_plan(model->stream)->attention_on_host, 0);
    run_session(model, got, sizeof got / sizeof got[0], &on_host, &kv_host);
    cr_assert_eq(on_host, 0);
    ferry_model_close(model);
}

enum { WIDE_SEQS = 600 };

/* Two decode-shaped calls over 600 sequences: one or two tokens each,
 * then one more; each sequence's last logits.  900 and 600 tokens are two
 * chunks of one pass when streamed, so the second chunk attends on the
 * host too. */
static size_t run_wide_batch(ferry_model *model, float *out, size_t capacity) {
    static int32_t tokens[2 * WIDE_SEQS];
    static int n_tokens[WIDE_SEQS];
    const size_t vocab = (size_t)model->config.vocab_size;
    for (size_t i = 0; i < capacity; i++) out[i] = NAN;
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, WIDE_SEQS, 4, &session), FERRY_OK, "%s",
                 ferry_last_error());
    for (int call = 0; call < 2; call++) {
        for (int i = 0; i < 2 * WIDE_SEQS; i++)
            tokens[i] = (int32_t)((i * 7 + call * 13 + 3) % model->config.vocab_size);
        for (int i = 0; i < WIDE_SEQS; i++) n_tokens[i] = call == 0 ? 1 + i % 2 : 1;
        ferry_batch batch = {WIDE_SEQS, NULL, n_tokens, tokens};
        cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_LAST,
                                   out + (size_t)call * WIDE_SEQS * vocab,
                                   capacity - (size_t)call * WIDE_SEQS * vocab),
                     FERRY_OK, "%s", ferry_last_error());
    }
    ferry_session_free(session);
    return 2 * WIDE_SEQS * vocab;
}

Test(host_attention, chunks_after_the_first_of_a_streamed_pass_attend_on_the_host) {
    static float want[RUN_VOCAB_MAX * 2 * WIDE_SEQS], got[RUN_VOCAB_MAX * 2 * WIDE_SEQS];
    unsetenv("FERRY_ATTENTION");
    ferry_model_options plain = {0};
    ferry_model *model = open_synth(plain);
    size_t n = run_wide_batch(model, want, sizeof want / sizeof want[0]);
    ferry_model_close(model);
    setenv("FERRY_ATTENTION", "host", 1);
    ferry_model_options streamed = {0};
    streamed.streaming = 1;
    streamed.resident_layers = 0;
    model = open_synth(streamed);
    run_wide_batch(model, got, sizeof got / sizeof got[0]);
    expect_logits_close("two chunks of a streamed pass", got, want, n);
    ferry_model_close(model);
}

Test(host_attention, a_bad_ferry_attention_value_is_refused) {
    setenv("FERRY_ATTENTION", "gpu", 1);
    ferry_model_options plain = {0};
    plain.backend = "cpu";
    ferry_model *model = NULL;
    ferry_model_options streamed = plain;
    streamed.streaming = 1;
    cr_assert_eq(ferry_model_open("synth:tiny:f16", &streamed, &model), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "FERRY_ATTENTION=gpu"), "%s", ferry_last_error());
    unsetenv("FERRY_ATTENTION");
    cr_assert_eq(ferry_model_open("synth:tiny:f16", &plain, &model), FERRY_OK, "%s",
                 ferry_last_error());
    setenv("FERRY_ATTENTION", "gpu", 1);
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, 1, 8, &session), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_null(session);
    ferry_model_close(model);
}
