/*
 * test_cuda_ops.c — each op of the CUDA backend against the same op of
 * the CPU backend (the oracle; the fused rope_kv_store against rope then
 * kv_store) on fresh random inputs: odd sizes, head_dim
 * 64 and 128, GQA ratios 1/4/8, contexts up to ~2k, f32/f16/bf16 weights.
 * GPU outputs are poisoned with NaN first and every element is checked.
 * Skips (and says so) where there is no CUDA GPU; bad-input tests that
 * need no GPU run everywhere.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "kernels/cuda/prefill_tiles.h"
#include "kernels/ops.h"

static ferry_backend *cpu, *gpu;
static uint64_t rng;

static void setup(void) {
    cpu = NULL;
    gpu = NULL;
    if (!ferry_cuda_available()) return;
    cr_assert_eq(ferry_backend_cpu_new(2, &cpu), FERRY_OK, "cpu: %s", ferry_last_error());
    cr_assert_eq(ferry_backend_cuda_new(0, &gpu), FERRY_OK, "cuda: %s", ferry_last_error());
    rng = test_seed();
}

static void teardown(void) {
    ferry_backend_free(gpu);
    ferry_backend_free(cpu);
}

TestSuite(cuda_ops, .init = setup, .fini = teardown, .timeout = 300);

#define NEED_GPU()                                                                           \
    do {                                                                                     \
        if (!gpu) cr_skip_test("no CUDA GPU: this build or machine cannot run the CUDA backend"); \
    } while (0)

/* ---------------------------------------------------------- helpers */

static float *random_floats(size_t n, float lo, float hi) {
    float *data = malloc(n * sizeof *data + 4);
    test_fill_uniform(&rng, data, n, lo, hi);
    return data;
}

static int rand_int(int lo, int hi) { return lo + (int)(test_rand_u64(&rng) % (uint64_t)(hi - lo + 1)); }

/* A device copy of host bytes. */
static void *to_gpu(const void *host, size_t bytes) {
    void *device = NULL;
    cr_assert_eq(gpu->ops->alloc(gpu, bytes, &device), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(gpu->ops->upload(gpu, device, host, bytes), FERRY_OK, "%s", ferry_last_error());
    return device;
}

/* A device buffer of n floats, all NaN. */
static float *gpu_poisoned(size_t n) {
    float *nan_host = malloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) nan_host[i] = NAN;
    float *device = to_gpu(nan_host, n * sizeof(float));
    free(nan_host);
    return device;
}

static float *from_gpu(const float *device, size_t n) {
    float *host = malloc(n * sizeof(float) + 4);
    cr_assert_eq(gpu->ops->synchronize(gpu), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(gpu->ops->download(gpu, host, device, n * sizeof(float)), FERRY_OK, "%s",
                 ferry_last_error());
    return host;
}

/* |got - want| <= atol + rtol * scale[i] (scale NULL: |want|) for every
 * element; NaN never passes.  Returns the worst |got - want| / scale. */
static double expect_close(const char *what, const float *got, const float *want,
                         const double *scale, size_t n, double rtol, double atol) {
    size_t n_bad = 0, first = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double s = scale ? scale[i] : fabs((double)want[i]);
        double diff = fabs((double)got[i] - (double)want[i]);
        if (!(diff <= atol + rtol * s)) {
            if (n_bad++ == 0) first = i;
        }
        if (s > 0 && diff / s > worst) worst = diff / s;
    }
    cr_assert_eq(n_bad, 0, "%s: %zu of %zu elements off; first at %zu: got %.9g want %.9g", what,
                 n_bad, n, first, (double)got[first], (double)want[first]);
    return worst;
}

/* The CPU and GPU versions of a batch's index arrays. */
typedef struct two_batches {
    ferry_token_batch host, device;
    void *device_arrays[3];
} two_batches;

static two_batches make_batches(int n, const int32_t *tokens, const int32_t *positions,
                                const int32_t *slots) {
    two_batches b;
    size_t bytes = (size_t)n * sizeof(int32_t);
    b.host = (ferry_token_batch){n, tokens, positions, slots};
    b.device_arrays[0] = tokens ? to_gpu(tokens, bytes) : NULL;
    b.device_arrays[1] = positions ? to_gpu(positions, bytes) : NULL;
    b.device_arrays[2] = slots ? to_gpu(slots, bytes) : NULL;
    b.device = (ferry_token_batch){n, b.device_arrays[0], b.device_arrays[1], b.device_arrays[2]};
    return b;
}

static void free_batches(two_batches *b) {
    for (int i = 0; i < 3; i++) gpu->ops->free(gpu, b->device_arrays[i]);
}

static const ferry_dtype all_dtypes[] = {FERRY_DTYPE_F32, FERRY_DTYPE_F16, FERRY_DTYPE_BF16};

/* ------------------------------------------------------------ matmul */

/* Activation rounding of the cuBLAS path: x goes to the weight dtype. */
static double matmul_rtol(ferry_dtype dtype, int uses_gemm) {
    if (!uses_gemm) return 2e-5;
    switch (dtype) {
    case FERRY_DTYPE_F16: return 1.5e-3;
    case FERRY_DTYPE_BF16: return 1e-2;
    default: return 2e-5;
    }
}

/* uses_gemm: the call may go through cuBLAS (x rounded to the weight
 * dtype), so the looser bar applies. */
static void check_matmul_path(ferry_dtype dtype, int n, int rows, int cols, int with_bias,
                              int accumulate, int uses_gemm) {
    size_t w_count = (size_t)rows * cols;
    float *w_values = random_floats(w_count, -1, 1);
    void *w = malloc(w_count * ferry_dtype_bytes(dtype) + 4);
    ferry_convert_dtype(w, dtype, w_values, FERRY_DTYPE_F32, w_count);
    float *x = random_floats((size_t)n * cols, -1, 1);
    float *bias = with_bias ? random_floats((size_t)rows, -1, 1) : NULL;
    float *base = random_floats((size_t)n * rows, -1, 1);
    /* error scale per output: sum_c |x w| + |bias| + |base| */
    double *scale = calloc((size_t)n * rows, sizeof(double));
    for (int t = 0; t < n; t++)
        for (int r = 0; r < rows; r++) {
            double s = 0;
            for (int c = 0; c < cols; c++)
                s += fabs((double)x[(size_t)t * cols + c] *
                          ferry_load_f32(w, dtype, (size_t)r * cols + c));
            scale[(size_t)t * rows + r] = s + (bias ? fabs(bias[r]) : 0) + fabs(base[(size_t)t * rows + r]);
        }
    float *want = malloc((size_t)n * rows * sizeof(float));
    memcpy(want, base, (size_t)n * rows * sizeof(float));
    cr_assert_eq(cpu->ops->matmul(cpu, want, x, w, dtype, bias, n, rows, cols, accumulate), FERRY_OK);

    void *w_gpu = to_gpu(w, w_count * ferry_dtype_bytes(dtype));
    float *x_gpu = to_gpu(x, (size_t)n * cols * sizeof(float));
    float *bias_gpu = bias ? to_gpu(bias, rows * sizeof(float)) : NULL;
    float *out_gpu = accumulate ? to_gpu(base, (size_t)n * rows * sizeof(float))
                                : gpu_poisoned((size_t)n * rows);
    cr_assert_eq(gpu->ops->matmul(gpu, out_gpu, x_gpu, w_gpu, dtype, bias_gpu, n, rows, cols,
                                  accumulate),
                 FERRY_OK, "%s", ferry_last_error());
    float *got = from_gpu(out_gpu, (size_t)n * rows);
    char what[160];
    snprintf(what, sizeof what, "matmul %s n=%d rows=%d cols=%d bias=%d acc=%d",
             ferry_dtype_name(dtype), n, rows, cols, with_bias, accumulate);
    expect_close(what, got, want, scale, (size_t)n * rows, matmul_rtol(dtype, uses_gemm), 1e-6);
    gpu->ops->free(gpu, w_gpu);
    gpu->ops->free(gpu, x_gpu);
    gpu->ops->free(gpu, bias_gpu);
    gpu->ops->free(gpu, out_gpu);
    free(w_values), free(w), free(x), free(bias), free(base), free(scale), free(want), free(got);
}

/* Only the 1-2 token kernel keeps x in float32; the tensor-core matvec
 * (3..16 tokens) and cuBLAS round it to the weight dtype. */
enum { F32_ACTIVATION_MAX_TOKENS = 2 };
static void check_matmul(ferry_dtype dtype, int n, int rows, int cols, int with_bias,
                         int accumulate) {
    check_matmul_path(dtype, n, rows, cols, with_bias, accumulate, n > F32_ACTIVATION_MAX_TOKENS);
}

Test(cuda_ops, matmul_matches_cpu_for_every_dtype_and_small_batch) {
    NEED_GPU();
    static const int batches[] = {1, 2, 3, 5, 8};
    for (size_t d = 0; d < 3; d++)
        for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
            int rows = rand_int(1, 300) | 1, cols = 8 * rand_int(1, 140);
            check_matmul(all_dtypes[d], batches[b], rows, cols, (int)(b % 2), (int)(b / 2 % 2));
        }
}

Test(cuda_ops, matmul_matches_cpu_on_odd_columns) {
    NEED_GPU();
    for (size_t d = 0; d < 3; d++) {
        check_matmul(all_dtypes[d], 1, 37, 999, 1, 0);
        check_matmul(all_dtypes[d], 4, 129, 1001, 0, 1);
        check_matmul(all_dtypes[d], 13, 65, 333, 1, 1);
    }
}

Test(cuda_ops, matmul_matches_cpu_for_large_batches_through_cublas) {
    NEED_GPU();
    for (size_t d = 0; d < 3; d++) {
        check_matmul(all_dtypes[d], 9, 257, 1024, 1, 0);
        check_matmul(all_dtypes[d], 16, 300, 512, 0, 1);
        check_matmul(all_dtypes[d], 67, 131, 776, 1, 1);
    }
}

/* With FERRY_CUDA_MATVEC_MAX=16, 3..16 tokens take the tensor-core matvec
 * (rows not a multiple of 16, columns a multiple of 32 or not). */
Test(cuda_ops, matvec_kernels_match_cpu_up_to_16_tokens) {
    NEED_GPU();
    ferry_backend *default_gpu = gpu;
    setenv("FERRY_CUDA_MATVEC_MAX", "16", 1);
    ferry_status status = ferry_backend_cuda_new(0, &gpu);
    unsetenv("FERRY_CUDA_MATVEC_MAX");
    cr_assert_eq(status, FERRY_OK, "%s", ferry_last_error());
    static const int batches[] = {3, 7, 8, 9, 12, 16};
    for (size_t d = 1; d < 3; d++)
        for (size_t b = 0; b < 6; b++) {
            int cols = b % 3 == 2 ? 8 * rand_int(1, 200) : 32 * rand_int(1, 150);
            check_matmul(all_dtypes[d], batches[b], rand_int(1, 200) * 2 + 1, cols, (int)(b % 2),
                         (int)(b % 3 != 1));
        }
    check_matmul(FERRY_DTYPE_F16, 16, 4096, 4096, 0, 1);
    ferry_backend_free(gpu);
    gpu = default_gpu;
}

Test(cuda_ops, matmul_matches_cpu_at_llama_width) {
    NEED_GPU();
    check_matmul(FERRY_DTYPE_F16, 1, 512, 4096, 0, 1);
    check_matmul(FERRY_DTYPE_BF16, 4, 256, 11008, 0, 0);
}

/* ------------------------------------------- embed, rmsnorm, silu_mul */

Test(cuda_ops, embed_matches_cpu_for_every_dtype) {
    NEED_GPU();
    for (size_t d = 0; d < 3; d++) {
        ferry_dtype dtype = all_dtypes[d];
        int vocab = rand_int(50, 400), dim = rand_int(1, 300), n = rand_int(1, 40);
        float *values = random_floats((size_t)vocab * dim, -2, 2);
        void *table = malloc((size_t)vocab * dim * ferry_dtype_bytes(dtype) + 4);
        ferry_convert_dtype(table, dtype, values, FERRY_DTYPE_F32, (size_t)vocab * dim);
        int32_t *tokens = malloc(n * sizeof(int32_t));
        for (int t = 0; t < n; t++) tokens[t] = rand_int(0, vocab - 1);
        two_batches b = make_batches(n, tokens, NULL, NULL);
        float *want = malloc((size_t)n * dim * sizeof(float));
        cr_assert_eq(cpu->ops->embed(cpu, want, table, dtype, &b.host, dim), FERRY_OK);
        void *table_gpu = to_gpu(table, (size_t)vocab * dim * ferry_dtype_bytes(dtype));
        float *out = gpu_poisoned((size_t)n * dim);
        cr_assert_eq(gpu->ops->embed(gpu, out, table_gpu, dtype, &b.device, dim), FERRY_OK);
        float *got = from_gpu(out, (size_t)n * dim);
        expect_close("embed", got, want, NULL, (size_t)n * dim, 0, 0);
        free_batches(&b);
        gpu->ops->free(gpu, table_gpu), gpu->ops->free(gpu, out);
        free(values), free(table), free(tokens), free(want), free(got);
    }
}

Test(cuda_ops, rmsnorm_matches_cpu_in_place_and_out_of_place) {
    NEED_GPU();
    for (int in_place = 0; in_place < 2; in_place++) {
        int n = rand_int(1, 33), dim = rand_int(1, 5000);
        float *x = random_floats((size_t)n * dim, -3, 3);
        float *weight = random_floats((size_t)dim, -2, 2);
        float *want = malloc((size_t)n * dim * sizeof(float));
        cr_assert_eq(cpu->ops->rmsnorm(cpu, want, x, weight, n, dim, 1e-5f), FERRY_OK);
        float *x_gpu = to_gpu(x, (size_t)n * dim * sizeof(float));
        float *w_gpu = to_gpu(weight, (size_t)dim * sizeof(float));
        float *out = in_place ? x_gpu : gpu_poisoned((size_t)n * dim);
        cr_assert_eq(gpu->ops->rmsnorm(gpu, out, x_gpu, w_gpu, n, dim, 1e-5f), FERRY_OK);
        float *got = from_gpu(out, (size_t)n * dim);
        expect_close("rmsnorm", got, want, NULL, (size_t)n * dim, 1e-5, 1e-6);
        if (!in_place) gpu->ops->free(gpu, out);
        gpu->ops->free(gpu, x_gpu), gpu->ops->free(gpu, w_gpu);
        free(x), free(weight), free(want), free(got);
    }
}

Test(cuda_ops, silu_mul_matches_cpu) {
    NEED_GPU();
    int n = rand_int(1, 17), dim = rand_int(1, 12000);
    size_t total = (size_t)n * dim;
    float *gate = random_floats(total, -8, 8), *up = random_floats(total, -3, 3);
    float *want = malloc(total * sizeof(float));
    cr_assert_eq(cpu->ops->silu_mul(cpu, want, gate, up, n, dim), FERRY_OK);
    float *gate_gpu = to_gpu(gate, total * sizeof(float)), *up_gpu = to_gpu(up, total * sizeof(float));
    float *out = gpu_poisoned(total);
    cr_assert_eq(gpu->ops->silu_mul(gpu, out, gate_gpu, up_gpu, n, dim), FERRY_OK);
    float *got = from_gpu(out, total);
    expect_close("silu_mul", got, want, NULL, total, 1e-5, 1e-6);
    gpu->ops->free(gpu, gate_gpu), gpu->ops->free(gpu, up_gpu), gpu->ops->free(gpu, out);
    free(gate), free(up), free(want), free(got);
}

/* ------------------------------------------------- rope and attention */

Test(cuda_ops, rope_matches_cpu_at_long_positions) {
    NEED_GPU();
    static const int head_dims[] = {64, 128};
    for (int i = 0; i < 2; i++) {
        ferry_attention_shape shape = {8, 2, head_dims[i]};
        int n = rand_int(1, 40);
        size_t q_count = (size_t)n * shape.n_heads * shape.head_dim;
        size_t k_count = (size_t)n * shape.n_kv_heads * shape.head_dim;
        float *q = random_floats(q_count, -2, 2), *k = random_floats(k_count, -2, 2);
        float *inv_freq = malloc(shape.head_dim / 2 * sizeof(float));
        for (int j = 0; j < shape.head_dim / 2; j++)
            inv_freq[j] = (float)pow(10000.0, -2.0 * j / shape.head_dim);
        int32_t *positions = malloc(n * sizeof(int32_t));
        for (int t = 0; t < n; t++) positions[t] = rand_int(0, 4095);
        two_batches b = make_batches(n, NULL, positions, NULL);
        float *q_gpu = to_gpu(q, q_count * sizeof(float)), *k_gpu = to_gpu(k, k_count * sizeof(float));
        float *freq_gpu = to_gpu(inv_freq, shape.head_dim / 2 * sizeof(float));
        cr_assert_eq(cpu->ops->rope(cpu, q, k, &b.host, inv_freq, shape), FERRY_OK);
        cr_assert_eq(gpu->ops->rope(gpu, q_gpu, k_gpu, &b.device, freq_gpu, shape), FERRY_OK);
        float *q_got = from_gpu(q_gpu, q_count), *k_got = from_gpu(k_gpu, k_count);
        expect_close("rope q", q_got, q, NULL, q_count, 1e-5, 1e-5);
        expect_close("rope k", k_got, k, NULL, k_count, 1e-5, 1e-5);
        free_batches(&b);
        gpu->ops->free(gpu, q_gpu), gpu->ops->free(gpu, k_gpu), gpu->ops->free(gpu, freq_gpu);
        free(q), free(k), free(inv_freq), free(positions), free(q_got), free(k_got);
    }
}

/* Round to f16 and back: the values an f16 cache holds exactly. */
static void round_to_f16(float *data, size_t n) {
    for (size_t i = 0; i < n; i++) data[i] = ferry_f16_to_f32(ferry_f32_to_f16(data[i]));
}

/* Batches of this many tokens with head_dim 64 or 128 take the tensor-core
 * prefill kernel (PREFILL_MIN_TOKENS in kernels/cuda/cuda_backend.h). */
enum { TENSOR_CORE_MIN_TOKENS = 64 };

/* The tensor-core kernel rounds Q (times log2(e)/sqrt(head_dim)) and the
 * softmax numerators P to f16 for the mma (unit roundoff u = 2^-11 =
 * 4.9e-4); K and V are f16 in both caches already.  Each weight w_j then
 * carries a relative error of a few u, so an output element is off by at
 * most that times sum_j w_j |v_j| — the bar is relative to that sum, not
 * to |out| (a convex combination of mixed signs can cancel to ~0).  An
 * emulation of the kernel's rounding on these inputs gave at most 4.3e-4
 * (short contexts, where few weights dominate); 2e-3 is the end-to-end
 * bar of the HF logits tests. */
static const double TENSOR_CORE_ATTENTION_RTOL = 2e-3;

/* Fill slot s of both caches with lengths[s] random (f16-exact) K/V rows
 * through kv_store, then attend with `n` query tokens at (slots, positions)
 * and compare every output element. */
static void check_attention(ferry_attention_shape shape, int n_slots, const int *lengths,
                            int max_context, int n, const int32_t *slots,
                            const int32_t *positions) {
    size_t row = (size_t)shape.n_kv_heads * shape.head_dim;
    size_t cache_elements = (size_t)n_slots * max_context * row;
    ferry_kv_layer host_cache = {calloc(cache_elements, 4), calloc(cache_elements, 4), n_slots,
                                 max_context};
    ferry_kv_layer gpu_cache = {NULL, NULL, n_slots, max_context};
    cr_assert_eq(gpu->ops->kv_dtype, FERRY_DTYPE_F16);
    cr_assert_eq(gpu->ops->alloc(gpu, cache_elements * 2, &gpu_cache.k), FERRY_OK);
    cr_assert_eq(gpu->ops->alloc(gpu, cache_elements * 2, &gpu_cache.v), FERRY_OK);
    /* rows never written hold f16 NaN (all bits set): no kernel may let
     * them reach an output, not even times a zero weight */
    void *nan_rows = malloc(cache_elements * 2);
    memset(nan_rows, 0xff, cache_elements * 2);
    cr_assert_eq(gpu->ops->upload(gpu, gpu_cache.k, nan_rows, cache_elements * 2), FERRY_OK);
    cr_assert_eq(gpu->ops->upload(gpu, gpu_cache.v, nan_rows, cache_elements * 2), FERRY_OK);
    free(nan_rows);
    for (int s = 0; s < n_slots; s++) {
        int len = lengths[s];
        float *k = random_floats((size_t)len * row, -2, 2), *v = random_floats((size_t)len * row, -2, 2);
        round_to_f16(k, (size_t)len * row);
        round_to_f16(v, (size_t)len * row);
        int32_t *fill_positions = malloc(len * sizeof(int32_t)), *fill_slots = malloc(len * sizeof(int32_t));
        for (int p = 0; p < len; p++) fill_positions[p] = p, fill_slots[p] = s;
        two_batches b = make_batches(len, NULL, fill_positions, fill_slots);
        float *k_gpu = to_gpu(k, (size_t)len * row * 4), *v_gpu = to_gpu(v, (size_t)len * row * 4);
        cr_assert_eq(cpu->ops->kv_store(cpu, &host_cache, k, v, &b.host, shape), FERRY_OK);
        cr_assert_eq(gpu->ops->kv_store(gpu, &gpu_cache, k_gpu, v_gpu, &b.device, shape), FERRY_OK);
        cr_assert_eq(gpu->ops->synchronize(gpu), FERRY_OK, "%s", ferry_last_error());
        free_batches(&b);
        gpu->ops->free(gpu, k_gpu), gpu->ops->free(gpu, v_gpu);
        free(k), free(v), free(fill_positions), free(fill_slots);
    }
    size_t q_count = (size_t)n * shape.n_heads * shape.head_dim;
    float *q = random_floats(q_count, -1, 1);
    float *want = malloc(q_count * sizeof(float));
    two_batches b = make_batches(n, NULL, positions, slots);
    cr_assert_eq(cpu->ops->attention(cpu, want, q, &host_cache, &b.host, shape), FERRY_OK);
    float *q_gpu = to_gpu(q, q_count * sizeof(float));
    float *out = gpu_poisoned(q_count);
    cr_assert_eq(gpu->ops->attention(gpu, out, q_gpu, &gpu_cache, &b.device, shape), FERRY_OK,
                 "%s", ferry_last_error());
    float *got = from_gpu(out, q_count);
    char what[160];
    snprintf(what, sizeof what, "attention heads=%d kv=%d dim=%d n=%d", shape.n_heads,
             shape.n_kv_heads, shape.head_dim, n);
    int tensor_cores = n >= TENSOR_CORE_MIN_TOKENS && (shape.head_dim == 64 || shape.head_dim == 128);
    if (!tensor_cores) {
        /* outputs are convex combinations of values in [-2, 2] */
        expect_close(what, got, want, NULL, q_count, 2e-5, 2e-5);
    } else {
        /* the scale sum_j w_j |v_j|: the same attention over |V| */
        for (size_t i = 0; i < cache_elements; i++)
            ((float *)host_cache.v)[i] = fabsf(((float *)host_cache.v)[i]);
        float *weighted_abs = malloc(q_count * sizeof(float));
        cr_assert_eq(cpu->ops->attention(cpu, weighted_abs, q, &host_cache, &b.host, shape), FERRY_OK);
        double *scale = malloc(q_count * sizeof(double));
        for (size_t i = 0; i < q_count; i++) scale[i] = weighted_abs[i];
        double worst = expect_close(what, got, want, scale, q_count, TENSOR_CORE_ATTENTION_RTOL, 1e-6);
        cr_log_info("%s: worst error %.3g of sum w|v|", what, worst);
        free(weighted_abs), free(scale);
    }
    free_batches(&b);
    gpu->ops->free(gpu, q_gpu), gpu->ops->free(gpu, out);
    gpu->ops->free(gpu, gpu_cache.k), gpu->ops->free(gpu, gpu_cache.v);
    free(host_cache.k), free(host_cache.v), free(q), free(want), free(got);
}

/* One chunk of n tokens of one sequence at positions first .. first+n-1,
 * over a cache that holds the first `first` tokens already. */
static void check_chunk(ferry_attention_shape shape, int first, int n) {
    int lengths[1] = {first + n};
    int32_t *slots = calloc(n, sizeof(int32_t)), *positions = malloc(n * sizeof(int32_t));
    for (int t = 0; t < n; t++) positions[t] = first + t;
    check_attention(shape, 1, lengths, first + n + 5, n, slots, positions);
    free(slots), free(positions);
}

Test(cuda_ops, decode_attention_matches_cpu_for_gqa_ratios_and_long_contexts) {
    NEED_GPU();
    static const int head_dims[] = {64, 128};
    static const int ratios[] = {1, 4, 8};
    for (int i = 0; i < 2; i++)
        for (int r = 0; r < 3; r++) {
            ferry_attention_shape shape = {2 * ratios[r], 2, head_dims[i]};
            int lengths[3] = {rand_int(1800, 2100), rand_int(2, 700), 1};
            int32_t slots[5] = {0, 1, 1, 2, 0};
            int32_t positions[5] = {lengths[0] - 1, lengths[1] - 1, lengths[1] / 2, 0, 0};
            check_attention(shape, 3, lengths, 2112, 5, slots, positions);
        }
}

/* A backend made with FERRY_CUDA_FUSE=fusions in place of the suite's. */
static void use_fusions(const char *fusions) {
    ferry_backend_free(gpu);
    gpu = NULL;
    ferry_status status = test_cuda_backend_with("FERRY_CUDA_FUSE", fusions, &gpu);
    cr_assert_eq(status, FERRY_OK, "FERRY_CUDA_FUSE=%s: %s", fusions, ferry_last_error());
}

/* A backend made with FERRY_CUDA_DECODE_ATTN=kernel, FERRY_CUDA_ATTN_SPLITS=
 * splits (NULL: unset, the count chosen per shape) and FERRY_CUDA_FUSE=
 * fusions in place of the suite's. */
static void use_decode(const char *kernel, const char *splits, const char *fusions) {
    setenv("FERRY_CUDA_DECODE_ATTN", kernel, 1);
    if (splits) setenv("FERRY_CUDA_ATTN_SPLITS", splits, 1);
    use_fusions(fusions);
    unsetenv("FERRY_CUDA_DECODE_ATTN");
    unsetenv("FERRY_CUDA_ATTN_SPLITS");
}

/* The same with the splits merged by a second kernel (attnmerge off) or
 * by an item's last block (on: only the splits the context reaches take
 * part), with and without the K/V prefetches (after and before the wait),
 * for both decode kernels (rows, and lanes in blocks of 4 or 8 warps:
 * attn8): head_dim 128, a context of 2100 keys in many splits, positions
 * from 0 to the end. */
Test(cuda_ops, decode_attention_matches_cpu_with_the_merge_kernel_or_the_last_block) {
    NEED_GPU();
    static const char *const kernels[] = {"rows", "lanes"};
    static const char *const fusions[] = {"none", "attnmerge", "kvprefetch", "kvearly", "attn8",
                                          "attn8,attnmerge,kvprefetch,kvearly"};
    for (int k = 0; k < 2; k++)
        for (int f = 0; f < 6; f++) {
            use_decode(kernels[k], NULL, fusions[f]);
            for (int r = 1; r <= 8; r *= 8) {
                ferry_attention_shape shape = {2 * r, 2, 128};
                int lengths[2] = {2100, rand_int(129, 700)};
                int32_t slots[6] = {0, 1, 0, 1, 0, 0};
                int32_t positions[6] = {2099, lengths[1] - 1, 127, 128, 0, rand_int(1, 2098)};
                check_attention(shape, 2, lengths, 2112, 6, slots, positions);
            }
        }
}

/* A decode step of 16 sequences of 130..300 cached keys each (in slots
 * other than their token's index; one attends from the middle of its
 * keys, one from position 0) over a cache of 320: with 32 query heads,
 * 512 (token, head) items, one block each whose warps take up to 3 key
 * blocks; with 8, 128 items in 3 splits.  GQA ratios 1 to 8, head_dim 128
 * and 64. */
Test(cuda_ops, decode_attention_matches_cpu_for_16_sequences_of_different_lengths) {
    NEED_GPU();
    enum { N = 16, MAX_CONTEXT = 320 };
    static const ferry_attention_shape shapes[] = {{32, 8, 128}, {32, 4, 64}, {8, 8, 128}, {8, 1, 64}};
    for (int i = 0; i < 4; i++) {
        int lengths[N];
        int32_t slots[N], positions[N];
        for (int s = 0; s < N; s++) lengths[s] = rand_int(130, 300);
        for (int t = 0; t < N; t++) {
            slots[t] = (5 * t + 3) % N;
            positions[t] = lengths[slots[t]] - 1;
        }
        positions[4] = lengths[slots[4]] / 2;
        positions[9] = 0;
        check_attention(shapes[i], N, lengths, MAX_CONTEXT, N, slots, positions);
    }
}

/* FERRY_CUDA_ATTN_SPLITS=N sets the split count (at most one key block
 * per warp at max_context: 40 becomes 3 or 2 here), for both kernels,
 * merged by the last block or by the merge kernel. */
Test(cuda_ops, decode_attention_matches_cpu_for_every_split_count_asked_for) {
    NEED_GPU();
    enum { N = 16, MAX_CONTEXT = 320 };
    static const char *const kernels[] = {"rows", "lanes"};
    static const char *const splits[] = {"1", "2", "40"};
    static const char *const fusions[] = {"all", "none"};
    for (int k = 0; k < 2; k++)
        for (int n = 0; n < 3; n++) {
            use_decode(kernels[k], splits[n], fusions[n % 2]);
            ferry_attention_shape shape = {8 * (1 + n % 2), 2, 128 >> (n % 2)};
            int lengths[N];
            int32_t slots[N], positions[N];
            for (int t = 0; t < N; t++) {
                lengths[t] = rand_int(1, 300);
                slots[t] = N - 1 - t;
            }
            for (int t = 0; t < N; t++) positions[t] = lengths[slots[t]] - 1;
            check_attention(shape, N, lengths, MAX_CONTEXT, N, slots, positions);
        }
}

/* (read before the GPU is looked for: this runs in any CUDA build) */
Test(cuda_ops, an_unknown_decode_kernel_or_split_count_is_refused) {
#ifndef FERRY_HAVE_CUDA
    cr_skip_test("built without CUDA: no backend reads FERRY_CUDA_DECODE_ATTN");
#endif
    ferry_backend *backend = NULL;
    cr_assert_eq(test_cuda_backend_with("FERRY_CUDA_DECODE_ATTN", "fast", &backend),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_null(backend);
    cr_assert(strstr(ferry_last_error(), "rows or lanes"), "%s", ferry_last_error());
    static const char *const bad_counts[] = {"two", "-1", "3x", "5000"};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(test_cuda_backend_with("FERRY_CUDA_ATTN_SPLITS", bad_counts[i], &backend),
                     FERRY_ERR_INVALID_ARGUMENT, "%s", bad_counts[i]);
        cr_assert_null(backend);
        cr_assert(strstr(ferry_last_error(), "FERRY_CUDA_ATTN_SPLITS"), "%s", ferry_last_error());
    }
}

Test(cuda_ops, prefill_attention_matches_cpu_for_many_tokens) {
    NEED_GPU();
    check_chunk((ferry_attention_shape){32, 4, 128}, 0, rand_int(250, 400));
}

/* Token counts on both sides of the tensor-core threshold and off the
 * 64-token tile, at both head sizes and GQA ratios 1, 4 and 8. */
Test(cuda_ops, prefill_attention_matches_cpu_for_head_dims_gqa_ratios_and_token_counts) {
    NEED_GPU();
    static const int head_dims[] = {64, 128}, ratios[] = {1, 4, 8};
    static const int token_counts[] = {1, 17, 64, 100, 300, 512};
    for (int i = 0; i < 2; i++)
        for (int r = 0; r < 3; r++)
            for (int k = 0; k < 6; k++)
                check_chunk((ferry_attention_shape){2 * ratios[r], 2, head_dims[i]}, 0,
                            token_counts[k]);
}

/* The last chunk of a 2,048-token prefill in chunks of 512: queries at
 * 1536..2047 over 1536 cached tokens (diagonal tiles are not aligned to
 * key tiles when the chunk start is not a multiple of 64: 1500 too). */
Test(cuda_ops, prefill_attention_matches_cpu_for_a_late_chunk_over_a_long_context) {
    NEED_GPU();
    static const int head_dims[] = {64, 128}, ratios[] = {1, 4, 8};
    for (int i = 0; i < 2; i++)
        for (int r = 0; r < 3; r++)
            check_chunk((ferry_attention_shape){2 * ratios[r], 2, head_dims[i]}, 1536, 512);
    check_chunk((ferry_attention_shape){8, 2, 128}, 1500, 300);
}

/* Chunks of 1, 17, 100 and 70 tokens of four sequences in one batch, each
 * after its own cached context: tiles end at every slot change. */
Test(cuda_ops, prefill_attention_matches_cpu_for_several_slots_in_one_batch) {
    NEED_GPU();
    static const int head_dims[] = {64, 128};
    enum { N_SLOTS = 4 };
    static const int order[N_SLOTS] = {2, 0, 3, 1}; /* slots in batch order */
    static const int counts[N_SLOTS] = {1, 17, 100, 70};
    for (int i = 0; i < 2; i++) {
        ferry_attention_shape shape = {8, 2, head_dims[i]};
        int cached[N_SLOTS] = {rand_int(0, 700), 0, rand_int(1, 63), rand_int(64, 900)};
        int lengths[N_SLOTS], n = 0;
        for (int s = 0; s < N_SLOTS; s++) lengths[s] = cached[s] + counts[s], n += counts[s];
        int32_t *slots = malloc(n * sizeof(int32_t)), *positions = malloc(n * sizeof(int32_t));
        int t = 0;
        for (int k = 0; k < N_SLOTS; k++)
            for (int j = 0; j < counts[order[k]]; j++, t++) {
                slots[t] = order[k];
                positions[t] = cached[order[k]] + j;
            }
        check_attention(shape, N_SLOTS, lengths, 1000, n, slots, positions);
        free(slots), free(positions);
    }
}

/* Queries at any positions of their slot (not consecutive), in runs of 16
 * tokens per slot or split once mid-batch: both match the CPU. */
Test(cuda_ops, prefill_attention_matches_cpu_for_tiles_across_slots_and_positions) {
    NEED_GPU();
    static const int head_dims[] = {64, 128};
    for (int i = 0; i < 2; i++)
        for (int straddle = 0; straddle < 2; straddle++) {
            ferry_attention_shape shape = {4 * (i + 1), i + 1, head_dims[i]};
            int lengths[2] = {rand_int(300, 700), rand_int(20, 90)};
            int n = 96 + straddle * 5;
            int32_t *slots = malloc(n * sizeof(int32_t)), *positions = malloc(n * sizeof(int32_t));
            for (int t = 0; t < n; t++) {
                int slot = straddle ? (t < 41 ? 0 : 1) : (t / 16) % 2;
                slots[t] = slot;
                positions[t] = rand_int(0, lengths[slot] - 1);
            }
            check_attention(shape, 2, lengths, 712, n, slots, positions);
            free(slots), free(positions);
        }
}

/* FERRY_CUDA_PREFILL_ATTN=simt brings back the SIMT kernel (for timing
 * comparisons); it still matches the CPU.  Any other word but flash is an
 * error when the backend is made. */
Test(cuda_ops, simt_prefill_attention_is_selectable_by_environment) {
    NEED_GPU();
    ferry_backend_free(gpu);
    gpu = NULL;
    setenv("FERRY_CUDA_PREFILL_ATTN", "fast", 1);
    cr_assert_eq(ferry_backend_cuda_new(0, &gpu), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "FERRY_CUDA_PREFILL_ATTN"), "%s", ferry_last_error());
    setenv("FERRY_CUDA_PREFILL_ATTN", "simt", 1);
    cr_assert_eq(ferry_backend_cuda_new(0, &gpu), FERRY_OK, "%s", ferry_last_error());
    unsetenv("FERRY_CUDA_PREFILL_ATTN");
    check_chunk((ferry_attention_shape){32, 4, 128}, 100, 200);
}

Test(cuda_ops, kv_store_rounds_to_f16_exactly) {
    NEED_GPU();
    ferry_attention_shape shape = {4, 2, 64};
    int n = 7, max_context = 33, n_slots = 2;
    size_t row = (size_t)shape.n_kv_heads * shape.head_dim, cache_elements = n_slots * max_context * row;
    ferry_kv_layer cache = {NULL, NULL, n_slots, max_context};
    cr_assert_eq(gpu->ops->alloc(gpu, cache_elements * 2, &cache.k), FERRY_OK);
    cr_assert_eq(gpu->ops->alloc(gpu, cache_elements * 2, &cache.v), FERRY_OK);
    float *k = random_floats(n * row, -100, 100), *v = random_floats(n * row, -1e-3f, 1e-3f);
    int32_t positions[7], slots[7];
    for (int t = 0; t < n; t++) positions[t] = rand_int(0, max_context - 1), slots[t] = t % 2;
    positions[1] = positions[0] + 1 < max_context ? positions[0] + 1 : 0; /* distinct places */
    for (int t = 2; t < n; t++) positions[t] = (positions[0] + 2 + t) % max_context;
    two_batches b = make_batches(n, NULL, positions, slots);
    float *k_gpu = to_gpu(k, n * row * 4), *v_gpu = to_gpu(v, n * row * 4);
    cr_assert_eq(gpu->ops->kv_store(gpu, &cache, k_gpu, v_gpu, &b.device, shape), FERRY_OK);
    cr_assert_eq(gpu->ops->synchronize(gpu), FERRY_OK, "%s", ferry_last_error());
    uint16_t *k_cache = malloc(cache_elements * 2), *v_cache = malloc(cache_elements * 2);
    cr_assert_eq(gpu->ops->download(gpu, k_cache, cache.k, cache_elements * 2), FERRY_OK);
    cr_assert_eq(gpu->ops->download(gpu, v_cache, cache.v, cache_elements * 2), FERRY_OK);
    for (int t = 0; t < n; t++)
        for (size_t i = 0; i < row; i++) {
            size_t at = ((size_t)slots[t] * max_context + positions[t]) * row + i;
            cr_assert_eq(k_cache[at], ferry_f32_to_f16(k[t * row + i]), "K token %d element %zu", t, i);
            cr_assert_eq(v_cache[at], ferry_f32_to_f16(v[t * row + i]), "V token %d element %zu", t, i);
        }
    free_batches(&b);
    gpu->ops->free(gpu, k_gpu), gpu->ops->free(gpu, v_gpu);
    gpu->ops->free(gpu, cache.k), gpu->ops->free(gpu, cache.v);
    free(k), free(v), free(k_cache), free(v_cache);
}

/* ------------------------------------------- prefill tiles (no GPU) */

Test(cuda_ops, prefill_tiles_end_at_slot_changes_and_at_64_tokens) {
    enum { N = 212 };
    int32_t slots[N], starts[N + 1];
    for (int t = 0; t < N; t++) slots[t] = t < 130 ? 0 : t < 131 ? 1 : t < 148 ? 2 : 0;
    static const int32_t want[] = {0, 64, 128, 130, 131, 148, 212};
    int n_tiles = ferry_prefill_tiles(slots, N, 64, starts);
    cr_assert_eq(n_tiles, 6);
    for (int i = 0; i <= n_tiles; i++) cr_assert_eq(starts[i], want[i], "tile %d", i);
    cr_assert_eq(ferry_prefill_tiles(slots, 0, 64, starts), 0);
    cr_assert_eq(starts[0], 0);
    /* alternating slots: one token per tile */
    for (int t = 0; t < 5; t++) slots[t] = t % 2;
    cr_assert_eq(ferry_prefill_tiles(slots, 5, 64, starts), 5);
    for (int i = 0; i <= 5; i++) cr_assert_eq(starts[i], i);
}

/* rope_kv_store (one launch) against the CPU's rope then kv_store: q and k
 * rotated in place, the rotated k and v in the f16 cache at each token's
 * (slot, position), every other cache element untouched. */
static void check_rope_kv_store(ferry_attention_shape shape, int n) {
    enum { N_SLOTS = 3, MAX_CONTEXT = 2100, MAX_TOKENS = 16 };
    cr_assert_leq(n, MAX_TOKENS);
    const size_t row = (size_t)shape.n_kv_heads * shape.head_dim;
    const size_t cache_elements = (size_t)N_SLOTS * MAX_CONTEXT * row;
    const size_t q_count = (size_t)n * shape.n_heads * shape.head_dim, k_count = (size_t)n * row;
    float *q = random_floats(q_count, -2, 2), *k = random_floats(k_count, -2, 2);
    float *v = random_floats(k_count, -2, 2);
    float *inv_freq = malloc(shape.head_dim / 2 * sizeof(float));
    for (int j = 0; j < shape.head_dim / 2; j++)
        inv_freq[j] = (float)pow(10000.0, -2.0 * j / shape.head_dim);
    /* distinct places: token t in slot t % N_SLOTS, consecutive positions
     * from a random start (up to ~2k: rope's large angles) */
    int32_t positions[MAX_TOKENS], slots[MAX_TOKENS];
    int start[N_SLOTS];
    for (int s = 0; s < N_SLOTS; s++) start[s] = rand_int(0, MAX_CONTEXT - MAX_TOKENS);
    for (int t = 0; t < n; t++) {
        slots[t] = t % N_SLOTS;
        positions[t] = start[t % N_SLOTS] + t / N_SLOTS;
    }
    two_batches b = make_batches(n, NULL, positions, slots);
    float *q_gpu = to_gpu(q, q_count * sizeof(float)), *k_gpu = to_gpu(k, k_count * sizeof(float));
    float *v_gpu = to_gpu(v, k_count * sizeof(float));
    float *freq_gpu = to_gpu(inv_freq, shape.head_dim / 2 * sizeof(float));
    uint16_t *poison = malloc(cache_elements * 2);
    for (size_t i = 0; i < cache_elements; i++) poison[i] = 0xFFFF; /* an f16 NaN */
    ferry_kv_layer gpu_cache = {to_gpu(poison, cache_elements * 2),
                                to_gpu(poison, cache_elements * 2), N_SLOTS, MAX_CONTEXT};
    ferry_kv_layer host_cache = {calloc(cache_elements, 4), calloc(cache_elements, 4), N_SLOTS,
                                 MAX_CONTEXT};
    cr_assert_eq(cpu->ops->rope(cpu, q, k, &b.host, inv_freq, shape), FERRY_OK);
    cr_assert_eq(cpu->ops->kv_store(cpu, &host_cache, k, v, &b.host, shape), FERRY_OK);
    cr_assert(gpu->ops->rope_kv_store, "the CUDA backend has no rope_kv_store");
    cr_assert_eq(gpu->ops->rope_kv_store(gpu, q_gpu, k_gpu, v_gpu, &gpu_cache, &b.device,
                                         freq_gpu, shape),
                 FERRY_OK, "%s", ferry_last_error());
    char what[160];
    snprintf(what, sizeof what, "rope_kv_store heads=%d kv=%d dim=%d n=%d", shape.n_heads,
             shape.n_kv_heads, shape.head_dim, n);
    float *q_got = from_gpu(q_gpu, q_count), *k_got = from_gpu(k_gpu, k_count);
    expect_close(what, q_got, q, NULL, q_count, 1e-5, 1e-5);
    expect_close(what, k_got, k, NULL, k_count, 1e-5, 1e-5);
    /* the caches: written rows hold f16(rotated k) and f16(v) (one f16 step
     * of slack, and rope's own 1e-5: the backends' rotations differ in the
     * last float bits) */
    uint16_t *caches[2] = {malloc(cache_elements * 2), malloc(cache_elements * 2)};
    const float *host_caches[2] = {host_cache.k, host_cache.v};
    cr_assert_eq(gpu->ops->download(gpu, caches[0], gpu_cache.k, cache_elements * 2), FERRY_OK);
    cr_assert_eq(gpu->ops->download(gpu, caches[1], gpu_cache.v, cache_elements * 2), FERRY_OK);
    unsigned char *written = calloc((size_t)N_SLOTS * MAX_CONTEXT, 1);
    for (int t = 0; t < n; t++) written[(size_t)slots[t] * MAX_CONTEXT + positions[t]] = 1;
    for (int which = 0; which < 2; which++)
        for (size_t place = 0; place < (size_t)N_SLOTS * MAX_CONTEXT; place++)
            for (size_t i = 0; i < row; i++) {
                const size_t at = place * row + i;
                const uint16_t got = caches[which][at];
                if (!written[place]) {
                    cr_assert_eq(got, 0xFFFF, "%s: %s cache place %zu element %zu was written",
                                 what, which ? "V" : "K", place, i);
                    continue;
                }
                const float want = host_caches[which][at], got_f = ferry_f16_to_f32(got);
                cr_assert(fabsf(got_f - want) <= 1e-3f * fabsf(want) + 2e-5f,
                          "%s: %s cache place %zu element %zu: got %.9g want %.9g", what,
                          which ? "V" : "K", place, i, (double)got_f, (double)want);
            }
    free_batches(&b);
    gpu->ops->free(gpu, q_gpu), gpu->ops->free(gpu, k_gpu), gpu->ops->free(gpu, v_gpu);
    gpu->ops->free(gpu, freq_gpu), gpu->ops->free(gpu, gpu_cache.k), gpu->ops->free(gpu, gpu_cache.v);
    free(host_cache.k), free(host_cache.v), free(poison), free(caches[0]), free(caches[1]);
    free(written), free(q), free(k), free(v), free(inv_freq), free(q_got), free(k_got);
}

Test(cuda_ops, rope_kv_store_matches_cpu_rope_then_kv_store) {
    NEED_GPU();
    static const int head_dims[] = {64, 128};
    static const int ratios[] = {1, 4, 8};
    static const int token_counts[] = {1, 2, 3, 16};
    for (int i = 0; i < 2; i++)
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 4; c++) {
                ferry_attention_shape shape = {2 * ratios[r], 2, head_dims[i]};
                check_rope_kv_store(shape, token_counts[c]);
            }
}

/* The fused kernel with its sines and cosines formed after the wait for
 * the kernel before and before it (kvearly). */
Test(cuda_ops, rope_kv_store_matches_cpu_with_and_without_kvearly) {
    NEED_GPU();
    static const char *const fusions[] = {"ropekv", "ropekv,kvearly"};
    for (int f = 0; f < 2; f++) {
        use_fusions(fusions[f]);
        check_rope_kv_store((ferry_attention_shape){8, 2, 128}, 1);
        check_rope_kv_store((ferry_attention_shape){2, 2, 64}, 3);
    }
}

/* ---------------------------------------------------------- bad input */

Test(cuda_ops, cuda_backend_without_gpu_or_with_a_bad_device_fails_cleanly) {
    ferry_backend *backend = (ferry_backend *)1;
    ferry_status status = ferry_backend_cuda_new(4000, &backend);
    cr_assert_neq(status, FERRY_OK);
    cr_assert_null(backend);
    cr_assert(strlen(ferry_last_error()) > 10, "message: '%s'", ferry_last_error());
    fprintf(stderr, "[cuda] cuda:4000 -> %s\n", ferry_last_error());
    if (!ferry_cuda_available()) {
        cr_assert_neq(ferry_backend_cuda_new(0, &backend), FERRY_OK);
        cr_assert_null(backend);
        fprintf(stderr, "[cuda] cuda:0 without a GPU -> %s\n", ferry_last_error());
    }
}

Test(cuda_ops, kv_store_outside_the_cache_is_reported_at_synchronize) {
    NEED_GPU();
    ferry_attention_shape shape = {2, 2, 64};
    ferry_kv_layer cache = {NULL, NULL, 1, 4};
    cr_assert_eq(gpu->ops->alloc(gpu, 1 * 4 * 128 * 2, &cache.k), FERRY_OK);
    cr_assert_eq(gpu->ops->alloc(gpu, 1 * 4 * 128 * 2, &cache.v), FERRY_OK);
    float *k = random_floats(128, -1, 1);
    int32_t positions[1] = {4}, slots[1] = {0};
    two_batches b = make_batches(1, NULL, positions, slots);
    float *k_gpu = to_gpu(k, 128 * 4);
    cr_assert_eq(gpu->ops->kv_store(gpu, &cache, k_gpu, k_gpu, &b.device, shape), FERRY_OK);
    cr_assert_eq(gpu->ops->synchronize(gpu), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "outside the KV cache"), "%s", ferry_last_error());
    /* the flag is cleared: the backend is usable afterwards */
    cr_assert_eq(gpu->ops->synchronize(gpu), FERRY_OK, "%s", ferry_last_error());
    /* the fused rope + kv_store reports it the same way */
    float *freq_gpu = gpu_poisoned(32), *q_gpu = gpu_poisoned(128);
    cr_assert_eq(gpu->ops->rope_kv_store(gpu, q_gpu, k_gpu, k_gpu, &cache, &b.device, freq_gpu,
                                         shape),
                 FERRY_OK);
    cr_assert_eq(gpu->ops->synchronize(gpu), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "outside the KV cache"), "%s", ferry_last_error());
    cr_assert_eq(gpu->ops->synchronize(gpu), FERRY_OK, "%s", ferry_last_error());
    gpu->ops->free(gpu, freq_gpu), gpu->ops->free(gpu, q_gpu);
    free_batches(&b);
    gpu->ops->free(gpu, k_gpu), gpu->ops->free(gpu, cache.k), gpu->ops->free(gpu, cache.v);
    free(k);
}

/* n tokens of one slot at positions 0 .., token 2n/3 one past the cache
 * (and, with bad_slot, token 0 in a slot the cache lacks): the attention
 * runs, the error shows at synchronize, and the backend is usable after. */
static void check_attention_outside_the_cache(int n, int bad_slot) {
    ferry_attention_shape shape = {4, 2, 64};
    enum { MAX_CONTEXT = 128 };
    ferry_kv_layer cache = {NULL, NULL, 1, MAX_CONTEXT};
    size_t cache_bytes = (size_t)MAX_CONTEXT * 2 * 64 * 2;
    cr_assert_eq(gpu->ops->alloc(gpu, cache_bytes, &cache.k), FERRY_OK);
    cr_assert_eq(gpu->ops->alloc(gpu, cache_bytes, &cache.v), FERRY_OK);
    int32_t *positions = malloc(n * sizeof(int32_t)), *slots = calloc(n, sizeof(int32_t));
    for (int t = 0; t < n; t++) positions[t] = t;
    positions[2 * n / 3] = MAX_CONTEXT; /* one past the cache */
    if (bad_slot) slots[0] = 1;
    two_batches b = make_batches(n, NULL, positions, slots);
    float *q = gpu_poisoned((size_t)n * 4 * 64), *out = gpu_poisoned((size_t)n * 4 * 64);
    cr_assert_eq(gpu->ops->attention(gpu, out, q, &cache, &b.device, shape), FERRY_OK);
    cr_assert_eq(gpu->ops->synchronize(gpu), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "outside the KV cache"), "%s", ferry_last_error());
    cr_assert_eq(gpu->ops->synchronize(gpu), FERRY_OK, "%s", ferry_last_error());
    free_batches(&b);
    free(positions), free(slots);
    gpu->ops->free(gpu, q), gpu->ops->free(gpu, out);
    gpu->ops->free(gpu, cache.k), gpu->ops->free(gpu, cache.v);
}

Test(cuda_ops, prefill_attention_outside_the_cache_is_reported_at_synchronize) {
    NEED_GPU();
    check_attention_outside_the_cache(100, 0);
}

Test(cuda_ops, decode_attention_outside_the_cache_is_reported_at_synchronize) {
    NEED_GPU();
    static const char *const kernels[] = {"rows", "lanes"};
    for (int k = 0; k < 2; k++) {
        use_decode(kernels[k], NULL, "all");
        check_attention_outside_the_cache(3, 1);
    }
}

Test(cuda_ops, attention_with_a_bad_geometry_is_an_error) {
    NEED_GPU();
    ferry_kv_layer cache = {NULL, NULL, 1, 4};
    ferry_token_batch batch = {1, NULL, NULL, NULL};
    cr_assert_eq(gpu->ops->attention(gpu, NULL, NULL, &cache, &batch, (ferry_attention_shape){6, 4, 64}),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(gpu->ops->attention(gpu, NULL, NULL, &cache, &batch, (ferry_attention_shape){4, 4, 512}),
                 FERRY_ERR_UNSUPPORTED);
    cr_assert_eq(gpu->ops->rope(gpu, NULL, NULL, &batch, NULL, (ferry_attention_shape){4, 4, 63}),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(gpu->ops->rope_kv_store(gpu, NULL, NULL, NULL, &cache, &batch, NULL,
                                         (ferry_attention_shape){4, 4, 63}),
                 FERRY_ERR_INVALID_ARGUMENT);
}
