/*
 * test_cuda_qkv_rope.c — the CUDA backend's qkv_rope_store op (the Q/K/V
 * projection with RoPE and the KV-cache store in its epilogue) against the
 * CPU backend running the plain ops it stands for: rmsnorm, three
 * matmuls, rope and kv_store.  Fresh random weights, inputs, biases,
 * slots and positions; a poisoned cache and q; every element of q and of
 * every cache row compared (rows no token writes must stay as poisoned).
 * Paths: the warp-per-pair kernel (1-2 tokens), the tensor-core launch
 * (3..16 tokens), and the fallbacks (cols not a multiple of 32, more than
 * 16 tokens, the fusion off); f16 and bf16; GQA ratios 1, 4 and 8;
 * head_dim 32, 64, 80 and 128.  Skips without a GPU.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_fixture.h"

static ferry_backend *cpu;

static void setup(void) {
    cuda_fixture_setup();
    cpu = NULL;
    cr_assert_eq(ferry_backend_cpu_new(2, &cpu), FERRY_OK, "cpu: %s", ferry_last_error());
}

static void teardown(void) {
    ferry_backend_free(cpu);
    cuda_fixture_teardown();
}

TestSuite(cuda_qkv_rope, .init = setup, .fini = teardown, .timeout = 180);

typedef struct qkv_case {
    ferry_dtype dtype;
    int n, cols;
    ferry_attention_shape shape;
    int with_norm, with_bias;
} qkv_case;

enum { N_SLOTS = 3, MAX_CONTEXT = 40 };
static const uint16_t POISON_F16 = 0x7e00; /* a NaN */

static float *random_floats(size_t n, float lo, float hi) {
    float *values = malloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) values[i] = test_rand_uniform(&rng, lo, hi);
    return values;
}

/* max |got - want| / max |want| over n elements; any unwritten (NaN) got fails. */
static double compare(const float *got, const float *want, size_t n, const char *what) {
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < n; i++) {
        cr_assert(isfinite(got[i]), "%s: element %zu not written (%g)", what, i, (double)got[i]);
        max_diff = fmax(max_diff, fabs((double)got[i] - want[i]));
        max_ref = fmax(max_ref, fabs((double)want[i]));
    }
    return max_ref > 0 ? max_diff / max_ref : max_diff;
}

static void check_case(const qkv_case *c) {
    const ferry_attention_shape shape = c->shape;
    const int n = c->n, cols = c->cols, head_dim = shape.head_dim;
    const int rows[3] = {shape.n_heads * head_dim, shape.n_kv_heads * head_dim,
                         shape.n_kv_heads * head_dim};
    const int kv_width = rows[1];
    const float eps = 1e-5f;
    char what[200];
    snprintf(what, sizeof what, "%s n=%d cols=%d heads=%d/%d dim=%d norm=%d bias=%d",
             ferry_dtype_name(c->dtype), n, cols, shape.n_heads, shape.n_kv_heads, head_dim,
             c->with_norm, c->with_bias);

    /* inputs, on the host (CPU backend memory) and on the GPU */
    float *x = random_floats((size_t)n * cols, -2.0f, 2.0f);
    float *norm_weight = random_floats((size_t)cols, 0.5f, 1.5f);
    void *weights[3], *gpu_weights[3];
    float *biases[3] = {0}, *gpu_biases[3] = {0};
    for (int m = 0; m < 3; m++) {
        const size_t count = (size_t)rows[m] * cols;
        float *values = random_floats(count, -0.1f, 0.1f);
        weights[m] = malloc(count * ferry_dtype_bytes(c->dtype));
        ferry_convert_dtype(weights[m], c->dtype, values, FERRY_DTYPE_F32, count);
        gpu_weights[m] = cuda_upload(weights[m], count * ferry_dtype_bytes(c->dtype));
        free(values);
        if (c->with_bias) {
            biases[m] = random_floats((size_t)rows[m], -0.5f, 0.5f);
            gpu_biases[m] = cuda_upload(biases[m], (size_t)rows[m] * sizeof(float));
        }
    }
    float *inv_freq = malloc((size_t)head_dim / 2 * sizeof(float));
    for (int j = 0; j < head_dim / 2; j++)
        inv_freq[j] = (float)pow(10000.0, -2.0 * j / head_dim);
    /* each token a distinct (slot, position), positions spread to ~MAX_CONTEXT */
    int32_t tokens[64] = {0}, positions[64], slots[64];
    cr_assert(n <= 64);
    for (int t = 0; t < n; t++) {
        slots[t] = t % N_SLOTS;
        positions[t] = t / N_SLOTS + (int)(test_rand_u64(&rng) % (MAX_CONTEXT - 64 / N_SLOTS));
    }
    for (int t = 0; t < n; t++) /* distinct places: later tokens of a slot step past earlier */
        for (int u = 0; u < t; u++)
            if (slots[u] == slots[t] && positions[u] >= positions[t]) positions[t] = positions[u] + 1;
    for (int t = 0; t < n; t++) cr_assert_lt(positions[t], MAX_CONTEXT);
    ferry_token_batch host_batch = {n, tokens, positions, slots};
    const size_t index_bytes = (size_t)n * sizeof(int32_t);
    ferry_token_batch gpu_batch = {n, cuda_upload(tokens, index_bytes),
                                   cuda_upload(positions, index_bytes),
                                   cuda_upload(slots, index_bytes)};

    /* the CPU backend: the plain ops */
    float *normed = malloc((size_t)n * cols * sizeof(float));
    const float *input = x;
    if (c->with_norm) {
        cr_assert_eq(cpu->ops->rmsnorm(cpu, normed, x, norm_weight, n, cols, eps), FERRY_OK);
        input = normed;
    }
    float *want[3];
    for (int m = 0; m < 3; m++) {
        want[m] = malloc((size_t)n * rows[m] * sizeof(float));
        cr_assert_eq(cpu->ops->matmul(cpu, want[m], input, weights[m], c->dtype, biases[m], n,
                                      rows[m], cols, 0),
                     FERRY_OK, "%s", ferry_last_error());
    }
    cr_assert_eq(cpu->ops->rope(cpu, want[0], want[1], &host_batch, inv_freq, shape), FERRY_OK);
    const size_t cache_count = (size_t)N_SLOTS * MAX_CONTEXT * kv_width;
    ferry_kv_layer cpu_cache = {calloc(cache_count, sizeof(float)),
                                calloc(cache_count, sizeof(float)), N_SLOTS, MAX_CONTEXT};
    cr_assert_eq(cpu->ops->kv_store(cpu, &cpu_cache, want[1], want[2], &host_batch, shape),
                 FERRY_OK);

    /* the GPU: one op, into a poisoned q and cache */
    uint16_t *poison = malloc(cache_count * sizeof(uint16_t));
    for (size_t i = 0; i < cache_count; i++) poison[i] = POISON_F16;
    ferry_kv_layer gpu_cache = {cuda_upload(poison, cache_count * 2),
                                cuda_upload(poison, cache_count * 2), N_SLOTS, MAX_CONTEXT};
    float *gpu_x = cuda_upload(x, (size_t)n * cols * sizeof(float));
    ferry_fused_norm norm = {cuda_upload(norm_weight, (size_t)cols * sizeof(float)), eps,
                             cuda_poisoned((size_t)n * cols), 0};
    float *gpu_q = cuda_poisoned((size_t)n * rows[0]);
    float *gpu_k = cuda_poisoned((size_t)n * rows[1]), *gpu_v = cuda_poisoned((size_t)n * rows[2]);
    float *gpu_inv_freq = cuda_upload(inv_freq, (size_t)head_dim / 2 * sizeof(float));
    cr_assert_eq(gpu->ops->qkv_rope_store(gpu, gpu_q, gpu_k, gpu_v, gpu_x,
                                          c->with_norm ? &norm : NULL,
                                          (const void *const *)gpu_weights,
                                          c->with_bias ? (const float *const *)gpu_biases : NULL,
                                          c->dtype, n, cols, &gpu_cache, &gpu_batch, gpu_inv_freq,
                                          shape),
                 FERRY_OK, "%s: %s", what, ferry_last_error());
    cr_assert_eq(gpu->ops->synchronize(gpu), FERRY_OK, "%s: %s", what, ferry_last_error());

    /* 1-2 tokens keep x in float32; 3+ round it to the weight dtype; the
     * cache holds f16 */
    const double q_bar = n <= 2 ? 1e-4 : c->dtype == FERRY_DTYPE_F16 ? 2e-3 : 1.5e-2;
    const double kv_bar = fmax(q_bar, 1e-3);
    float *got_q = malloc((size_t)n * rows[0] * sizeof(float));
    cr_assert_eq(gpu->ops->download(gpu, got_q, gpu_q, (size_t)n * rows[0] * sizeof(float)),
                 FERRY_OK);
    double error = compare(got_q, want[0], (size_t)n * rows[0], what);
    cr_assert_leq(error, q_bar, "%s: q relative error %.3g > %.3g", what, error, q_bar);
    uint16_t *got_cache = malloc(cache_count * sizeof(uint16_t));
    float *got_row = malloc((size_t)kv_width * sizeof(float));
    for (int which = 0; which < 2; which++) {
        const float *want_cache = which == 0 ? cpu_cache.k : cpu_cache.v;
        cr_assert_eq(gpu->ops->download(gpu, got_cache, which == 0 ? gpu_cache.k : gpu_cache.v,
                                        cache_count * 2),
                     FERRY_OK);
        /* the rows the batch writes match; every other row is untouched */
        char *written = calloc((size_t)N_SLOTS * MAX_CONTEXT, 1);
        for (int t = 0; t < n; t++) {
            const size_t row = (size_t)slots[t] * MAX_CONTEXT + positions[t];
            written[row] = 1;
            ferry_convert_dtype(got_row, FERRY_DTYPE_F32, got_cache + row * kv_width,
                                FERRY_DTYPE_F16, (size_t)kv_width);
            char where[260];
            snprintf(where, sizeof where, "%s %s token %d", what, which == 0 ? "K" : "V", t);
            error = compare(got_row, want_cache + row * kv_width, (size_t)kv_width, where);
            cr_assert_leq(error, kv_bar, "%s: relative error %.3g > %.3g", where, error, kv_bar);
        }
        for (size_t row = 0; row < (size_t)N_SLOTS * MAX_CONTEXT; row++)
            if (!written[row])
                for (int i = 0; i < kv_width; i++)
                    cr_assert_eq(got_cache[row * kv_width + i], POISON_F16,
                                 "%s: cache row %zu written by no token changed", what, row);
        free(written);
    }

    for (int m = 0; m < 3; m++) {
        free(weights[m]), free(biases[m]), free(want[m]);
        gpu->ops->free(gpu, gpu_weights[m]);
        if (gpu_biases[m]) gpu->ops->free(gpu, gpu_biases[m]);
    }
    gpu->ops->free(gpu, gpu_cache.k), gpu->ops->free(gpu, gpu_cache.v);
    gpu->ops->free(gpu, gpu_x), gpu->ops->free(gpu, (void *)norm.weight);
    gpu->ops->free(gpu, norm.scratch), gpu->ops->free(gpu, gpu_q);
    gpu->ops->free(gpu, gpu_k), gpu->ops->free(gpu, gpu_v), gpu->ops->free(gpu, gpu_inv_freq);
    gpu->ops->free(gpu, (void *)gpu_batch.tokens), gpu->ops->free(gpu, (void *)gpu_batch.positions);
    gpu->ops->free(gpu, (void *)gpu_batch.slots);
    free(cpu_cache.k), free(cpu_cache.v), free(poison), free(got_q), free(got_cache);
    free(got_row), free(x), free(norm_weight), free(inv_freq), free(normed);
}

/* 1, 2: the pair kernel; 3, 8, 16: tensor cores; 17, 40: the plain ops */
static const int token_counts[] = {1, 2, 3, 8, 16, 17, 40};
static const ferry_attention_shape shapes[] = {
    {8, 8, 64},   /* GQA 1 */
    {8, 2, 128},  /* GQA 4 */
    {16, 2, 64},  /* GQA 8 */
    {4, 4, 32},
    {6, 2, 80},   /* half 40: pairs cross the 16-row tiles' natural order */
};
enum { N_TOKEN_COUNTS = 7, N_SHAPES = 5 };

Test(cuda_qkv_rope, the_fused_projection_matches_the_plain_cpu_ops) {
    NEED_GPU();
    int k = 0;
    for (int i = 0; i < N_TOKEN_COUNTS; i++)
        for (int s = 0; s < N_SHAPES; s++, k++) {
            qkv_case c = {k % 2 ? FERRY_DTYPE_BF16 : FERRY_DTYPE_F16, token_counts[i],
                          k % 3 == 0 ? 512 : 1024, shapes[s], (k / 2) % 2, (k / 3) % 2};
            check_case(&c);
        }
}

/* cols % 32 != 0: the tensor cores do not take it; cols % 8 == 0 still
 * suits the pair kernel */
Test(cuda_qkv_rope, odd_column_counts_fall_back_and_still_match) {
    NEED_GPU();
    for (int i = 0; i < N_TOKEN_COUNTS; i++) {
        qkv_case c = {FERRY_DTYPE_F16, token_counts[i], 520, shapes[i % N_SHAPES], 1, i % 2};
        check_case(&c);
    }
}

Test(cuda_qkv_rope, with_the_fusion_off_the_plain_kernels_match_too) {
    NEED_GPU();
    ferry_backend_free(gpu);
    gpu = NULL;
    ferry_status status = test_cuda_backend_with("FERRY_CUDA_FUSE", "norm1,norm16,ropekv", &gpu);
    cr_assert_eq(status, FERRY_OK, "%s", ferry_last_error());
    for (int i = 0; i < 4; i++) {
        qkv_case c = {FERRY_DTYPE_BF16, token_counts[i * 2], 1024, shapes[i], 1, 1};
        check_case(&c);
    }
}

Test(cuda_qkv_rope, a_token_outside_the_cache_raises_an_error_at_synchronize) {
    NEED_GPU();
    const ferry_attention_shape shape = {4, 4, 32};
    const int n = 4, cols = 256, width = 128;
    for (int fused_path = 0; fused_path < 2; fused_path++) {
        const int count = fused_path ? 2 : n; /* the pair kernel, then tensor cores */
        uint16_t *weights = calloc((size_t)width * cols, 2);
        void *w = cuda_upload(weights, (size_t)width * cols * 2);
        const void *ws[3] = {w, w, w};
        float *x = cuda_poisoned((size_t)count * cols);
        float *zeros = calloc((size_t)count * cols, sizeof(float));
        cr_assert_eq(gpu->ops->upload(gpu, x, zeros, (size_t)count * cols * sizeof(float)), FERRY_OK);
        int32_t positions[4] = {0, 1, MAX_CONTEXT, 2}, slots[4] = {0, 0, 0, 0}, tokens[4] = {0};
        ferry_token_batch batch = {count, cuda_upload(tokens, sizeof tokens),
                                   cuda_upload(positions, sizeof positions),
                                   cuda_upload(slots, sizeof slots)};
        if (fused_path) { /* the bad place in reach of two tokens */
            int32_t bad[2] = {0, MAX_CONTEXT};
            cr_assert_eq(gpu->ops->upload(gpu, (void *)batch.positions, bad, sizeof bad), FERRY_OK);
        }
        const size_t cache_bytes = (size_t)N_SLOTS * MAX_CONTEXT * width * 2;
        ferry_kv_layer cache = {cuda_poisoned(cache_bytes / 4), cuda_poisoned(cache_bytes / 4),
                                N_SLOTS, MAX_CONTEXT};
        float *freq = cuda_poisoned(16), *q = cuda_poisoned((size_t)count * width);
        float *k = cuda_poisoned((size_t)count * width), *v = cuda_poisoned((size_t)count * width);
        cr_assert_eq(gpu->ops->qkv_rope_store(gpu, q, k, v, x, NULL, ws, NULL, FERRY_DTYPE_F16,
                                              count, cols, &cache, &batch, freq, shape),
                     FERRY_OK, "%s", ferry_last_error());
        cr_assert_neq(gpu->ops->synchronize(gpu), FERRY_OK, "a position past the cache passed");
        cr_assert(strstr(ferry_last_error(), "slot") || strstr(ferry_last_error(), "position"),
                  "%s", ferry_last_error());
        free(weights), free(zeros);
        /* the backend's error flag is cleared by the report; free and go on */
        gpu->ops->free(gpu, w), gpu->ops->free(gpu, x), gpu->ops->free(gpu, cache.k);
        gpu->ops->free(gpu, cache.v), gpu->ops->free(gpu, freq), gpu->ops->free(gpu, q);
        gpu->ops->free(gpu, k), gpu->ops->free(gpu, v);
        gpu->ops->free(gpu, (void *)batch.tokens), gpu->ops->free(gpu, (void *)batch.positions);
        gpu->ops->free(gpu, (void *)batch.slots);
    }
}
