/*
 * test_cuda_blocks.c — the CUDA backend's whole-block ops (kernels/ops.h):
 * attention_out (x += attention(q, cache) Wo^T) and mlp (x += SwiGLU of
 * rmsnorm(x)), against the CPU backend running the plain ops they stand
 * for.  Both work in place on the residual stream x, so what is compared
 * is the change each makes to x, element by element.  Fresh random inputs,
 * weights, slots and positions; poisoned scratch and cache rows no token
 * may read; f16 and bf16 weights; 1..40 tokens (the 1-2 token kernels,
 * the tensor-core hand-off at 3..16, cuBLAS); GQA 1, 4, 8; head_dim 32,
 * 64, 80, 128; contexts up to 2000 keys (the decode attention splits
 * them); widths that are not multiples of 32 (the fallbacks); the two
 * linked through next_norm as the runtime links them; the FERRY_CUDA_FUSE
 * choices that change the path.  Skips without a GPU.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_fixture.h"

static ferry_backend *cpu;
static double worst_in_u; /* the largest error seen in a test, in units of u */

static void setup(void) {
    cuda_fixture_setup();
    cpu = NULL;
    worst_in_u = 0;
    cr_assert_eq(ferry_backend_cpu_new(2, &cpu), FERRY_OK, "cpu: %s", ferry_last_error());
}

static void teardown(void) {
    ferry_backend_free(cpu);
    cuda_fixture_teardown();
}

TestSuite(cuda_blocks, .init = setup, .fini = teardown, .timeout = 300);

/* ---------------------------------------------------- shared helpers */

/* What one case allocated, freed together by free_case(). */
enum { MAX_TRACKED = 96 };
static void *host_buffers[MAX_TRACKED], *device_buffers[MAX_TRACKED];
static int n_host_buffers, n_device_buffers;

static void *host_tracked(void *host) {
    cr_assert_lt(n_host_buffers, MAX_TRACKED);
    return host_buffers[n_host_buffers++] = host;
}

static void *device_tracked(void *device) {
    cr_assert_lt(n_device_buffers, MAX_TRACKED);
    return device_buffers[n_device_buffers++] = device;
}

static void *upload(const void *host, size_t n) { return device_tracked(cuda_upload(host, n)); }
static float *poisoned(size_t n) { return device_tracked(cuda_poisoned(n)); }

static void free_case(void) {
    while (n_host_buffers > 0) free(host_buffers[--n_host_buffers]);
    while (n_device_buffers > 0) gpu->ops->free(gpu, device_buffers[--n_device_buffers]);
}

static float *random_floats(size_t n, float lo, float hi) {
    float *values = host_tracked(malloc(n * sizeof(float) + 4));
    test_fill_uniform(&rng, values, n, lo, hi);
    return values;
}

/* A [rows, cols] weight matrix in dtype, uniform in +-sqrt(3 / cols) (unit
 * variance of each output for unit-variance inputs); the host bits. */
static void *random_weights(ferry_dtype dtype, int rows, int cols) {
    const size_t count = (size_t)rows * cols;
    const float limit = sqrtf(3.0f / (float)cols);
    void *bits = host_tracked(malloc(count * ferry_dtype_bytes(dtype)));
    ferry_convert_dtype(bits, dtype, random_floats(count, -limit, limit), FERRY_DTYPE_F32, count);
    return bits;
}

static float *host_copy(const float *x, size_t n) {
    return memcpy(host_tracked(malloc(n * sizeof(float))), x, n * sizeof(float));
}

/* Skip without a GPU; fail, saying why, where the backend lacks the op. */
#define NEED_GPU_OP(op)                                                                      \
    do {                                                                                     \
        NEED_GPU();                                                                          \
        cr_assert_not_null(gpu->ops->op, "the CUDA backend has no " #op " op (optional in "  \
                                         "kernels/ops.h; this test is for one that has it)"); \
    } while (0)

/* The bar.  A block may hand its intermediate to the next matrix rounded
 * to the weight dtype (ops.h): the attention output, or the normalised
 * input and the SwiGLU product.  Each element then carries a relative
 * error |d_c| <= u (unit roundoff: 2^-11 f16, 2^-8 bf16), and an element
 * of the change to x, sum_c a_c W_jc, is off by sum_c a_c d_c W_jc: a
 * random projection of errors of about u/2.  Sixteen runs of these cases
 * over a CPU emulation of those roundings gave at most 0.8 u
 * (attention_out) and 1.3 u (mlp: two roundings in series; the two
 * linked), relative to the change's largest element.  3 u (1.5e-3 f16,
 * 1.2e-2 bf16) leaves room for that and float32 order; a missing residual
 * add, a wrong head or KV group, a key past a token's position or an
 * unwritten element is off by O(1), and rounding f16 work to bf16 by
 * ~4-7 u. */
static double unit_roundoff(ferry_dtype dtype) {
    return dtype == FERRY_DTYPE_BF16 ? 1.0 / 256 : 1.0 / 2048;
}
enum { BAR_IN_UNITS = 3 };

/* The GPU's x after the op against the CPU's: every element finite, and
 * the change each made to x0 the same within the bar. */
static void expect_same_change(const char *what, const float *x0, const float *want,
                               const float *gpu_x, size_t count, ferry_dtype dtype) {
    cr_assert_eq(gpu->ops->synchronize(gpu), FERRY_OK, "%s: %s", what, ferry_last_error());
    float *got = host_tracked(malloc(count * sizeof(float)));
    cr_assert_eq(gpu->ops->download(gpu, got, gpu_x, count * sizeof(float)), FERRY_OK);
    double max_diff = 0, max_change = 0;
    for (size_t i = 0; i < count; i++) {
        cr_assert(isfinite(got[i]), "%s: x[%zu] = %g", what, i, (double)got[i]);
        cr_assert(isfinite(want[i]), "%s: the reference's x[%zu] = %g", what, i, (double)want[i]);
        max_diff = fmax(max_diff, fabs((double)got[i] - want[i]));
        max_change = fmax(max_change, fabs((double)want[i] - x0[i]));
    }
    cr_assert_gt(max_change, 0, "%s: the reference left x as it was", what);
    const double error = max_diff / max_change, u = unit_roundoff(dtype);
    worst_in_u = fmax(worst_in_u, error / u);
    cr_assert_leq(error, BAR_IN_UNITS * u, "%s: relative error of the change %.3g > %.3g", what,
                  error, BAR_IN_UNITS * u);
}

static void report_worst(void) { cr_log_info("worst relative error %.2f u", worst_in_u); }

/* x on the GPU holds x0 still, bit for bit. */
static void expect_unchanged(const char *what, const float *gpu_x, const float *x0, size_t count) {
    cr_assert_eq(gpu->ops->synchronize(gpu), FERRY_OK, "%s: %s", what, ferry_last_error());
    float *after = host_tracked(malloc(count * sizeof(float)));
    cr_assert_eq(gpu->ops->download(gpu, after, gpu_x, count * sizeof(float)), FERRY_OK);
    cr_assert_arr_eq(after, x0, count * sizeof(float), "%s: x changed", what);
}

/* ------------------------------------------------------ attention_out */

typedef struct attention_case {
    ferry_dtype dtype;
    int n, hidden;
    ferry_attention_shape shape;
    int max_context;
    int one_sequence;   /* all tokens in slot 0 at consecutive positions (prefill-like);
                           else each its own slot (decode) */
} attention_case;

/* Slots and positions; token 0 sits at the last position, so some token
 * attends over the whole cache. */
static void place_tokens(const attention_case *c, int32_t *positions, int32_t *slots) {
    const int start = test_rand_int(&rng, 0, c->max_context - c->n);
    for (int t = 0; t < c->n; t++) {
        slots[t] = c->one_sequence ? 0 : t;
        positions[t] = c->one_sequence ? start + t : test_rand_int(&rng, 0, c->max_context - 1);
    }
    if (!c->one_sequence) positions[0] = c->max_context - 1;
}

/* Both caches from the same random K/V, rounded to f16 first so both hold
 * the same numbers, in each backend's kv_dtype.  Rows past the last
 * position of each slot (and the spare slot) hold NaN: no attention may
 * let them reach its output. */
static void fill_caches(const attention_case *c, const int32_t *positions, const int32_t *slots,
                        ferry_kv_layer *cpu_cache, ferry_kv_layer *gpu_cache) {
    const size_t row = (size_t)c->shape.n_kv_heads * c->shape.head_dim;
    const int n_slots = c->one_sequence ? 2 : c->n + 1;
    const size_t count = (size_t)n_slots * c->max_context * row;
    int *length = host_tracked(calloc((size_t)n_slots, sizeof(int)));
    for (int t = 0; t < c->n; t++)
        if (positions[t] + 1 > length[slots[t]]) length[slots[t]] = positions[t] + 1;
    *cpu_cache = (ferry_kv_layer){NULL, NULL, n_slots, c->max_context};
    *gpu_cache = *cpu_cache;
    for (int which = 0; which < 2; which++) {
        float *values = host_tracked(malloc(count * sizeof(float)));
        for (int s = 0; s < n_slots; s++) {
            float *slot = values + (size_t)s * c->max_context * row;
            const size_t used = (size_t)length[s] * row;
            test_fill_uniform(&rng, slot, used, -2.0f, 2.0f);
            for (size_t i = 0; i < used; i++) slot[i] = ferry_f16_to_f32(ferry_f32_to_f16(slot[i]));
            for (size_t i = used; i < (size_t)c->max_context * row; i++) slot[i] = NAN;
        }
        const ferry_dtype cpu_kv = cpu->ops->kv_dtype, gpu_kv = gpu->ops->kv_dtype;
        void *cpu_rows = host_tracked(malloc(count * ferry_dtype_bytes(cpu_kv)));
        void *gpu_rows = host_tracked(malloc(count * ferry_dtype_bytes(gpu_kv)));
        ferry_convert_dtype(cpu_rows, cpu_kv, values, FERRY_DTYPE_F32, count);
        ferry_convert_dtype(gpu_rows, gpu_kv, values, FERRY_DTYPE_F32, count);
        *(which ? &cpu_cache->v : &cpu_cache->k) = cpu_rows;
        *(which ? &gpu_cache->v : &gpu_cache->k) =
            upload(gpu_rows, count * ferry_dtype_bytes(gpu_kv));
    }
}

/* The batch on the host and its copy on the GPU. */
static void make_batches(int n, const int32_t *positions, const int32_t *slots,
                         ferry_token_batch *host, ferry_token_batch *device) {
    const size_t bytes = (size_t)n * sizeof(int32_t);
    int32_t *tokens = host_tracked(calloc((size_t)n + 1, sizeof(int32_t)));
    *host = (ferry_token_batch){n, tokens, positions, slots};
    *device = (ferry_token_batch){n, upload(tokens, bytes), upload(positions, bytes),
                                  upload(slots, bytes)};
}

/* x += attention(q, cache) Wo^T for case c: on the CPU's x (want) by the
 * plain ops, on the GPU's (gpu_x) by attention_out, told next_norm. */
static void add_attention_out(const attention_case *c, float *want, float *gpu_x,
                              const ferry_fused_norm *next_norm, const char *what) {
    const ferry_attention_shape shape = c->shape;
    const int n = c->n, hidden = c->hidden, width = shape.n_heads * shape.head_dim;
    int32_t *positions = host_tracked(malloc((size_t)n * sizeof(int32_t)));
    int32_t *slots = host_tracked(malloc((size_t)n * sizeof(int32_t)));
    place_tokens(c, positions, slots);
    ferry_kv_layer cpu_cache, gpu_cache;
    fill_caches(c, positions, slots, &cpu_cache, &gpu_cache);
    ferry_token_batch host_batch, gpu_batch;
    make_batches(n, positions, slots, &host_batch, &gpu_batch);
    const float *q = random_floats((size_t)n * width, -3.0f, 3.0f);
    const void *wo = random_weights(c->dtype, hidden, width);

    /* the CPU: attention into a buffer, then x += that Wo^T */
    float *attended = host_tracked(malloc((size_t)n * width * sizeof(float)));
    cr_assert_eq(cpu->ops->attention(cpu, attended, q, &cpu_cache, &host_batch, shape), FERRY_OK,
                 "%s: %s", what, ferry_last_error());
    cr_assert_eq(cpu->ops->matmul(cpu, want, attended, wo, c->dtype, NULL, n, hidden, width, 1),
                 FERRY_OK, "%s: %s", what, ferry_last_error());

    /* the GPU: one op, its scratch poisoned */
    const float *gpu_q = upload(q, (size_t)n * width * sizeof(float));
    const void *gpu_wo = upload(wo, (size_t)hidden * width * ferry_dtype_bytes(c->dtype));
    cr_assert_eq(gpu->ops->attention_out(gpu, gpu_x, poisoned((size_t)n * width), gpu_q,
                                         &gpu_cache, &gpu_batch, shape, gpu_wo, c->dtype, hidden,
                                         next_norm),
                 FERRY_OK, "%s: %s", what, ferry_last_error());
}

/* Random x on both sides; after `add` the changes are compared. */
static void start_case(int n, int hidden, const float **x0, float **want, float **gpu_x) {
    *x0 = random_floats((size_t)n * hidden, -1.0f, 1.0f);
    *want = host_copy(*x0, (size_t)n * hidden);
    *gpu_x = upload(*x0, (size_t)n * hidden * sizeof(float));
}

/* An RMSNorm over `hidden` with a random weight: the host copy of the
 * weight, and the norm the GPU takes (its scratch poisoned). */
static ferry_fused_norm random_norm(int n, int hidden, const float **host_weight) {
    *host_weight = random_floats((size_t)hidden, 0.5f, 1.5f);
    return (ferry_fused_norm){upload(*host_weight, (size_t)hidden * sizeof(float)), 1e-5f,
                              poisoned((size_t)n * hidden), 0};
}

static void describe_attention(char *what, size_t size, const attention_case *c) {
    snprintf(what, size, "attention_out %s n=%d hidden=%d heads=%d/%d dim=%d context=%d%s",
             ferry_dtype_name(c->dtype), c->n, c->hidden, c->shape.n_heads, c->shape.n_kv_heads,
             c->shape.head_dim, c->max_context, c->one_sequence ? " one sequence" : "");
}

/* x += (silu(h Wg^T) * (h Wu^T)) Wd^T with h = rmsnorm(x) * norm weight: on
 * the CPU's x (want) by the plain ops, on the GPU's (gpu_x) by mlp. */
static void add_mlp(ferry_dtype dtype, int n, int hidden, int inter, float *want, float *gpu_x,
                    const float *norm_weight, const ferry_fused_norm *norm,
                    const ferry_fused_norm *next_norm, const char *what) {
    const void *weights[3] = {random_weights(dtype, inter, hidden),   /* gate */
                              random_weights(dtype, inter, hidden),   /* up */
                              random_weights(dtype, hidden, inter)};  /* down */
    const size_t weight_bytes = (size_t)inter * hidden * ferry_dtype_bytes(dtype);

    /* the CPU: h = rmsnorm(x), then x += (silu(h Wg^T) * (h Wu^T)) Wd^T */
    float *h = host_tracked(malloc((size_t)n * hidden * sizeof(float)));
    float *gate = host_tracked(malloc((size_t)n * inter * sizeof(float)));
    float *up = host_tracked(malloc((size_t)n * inter * sizeof(float)));
    cr_assert_eq(cpu->ops->rmsnorm(cpu, h, want, norm_weight, n, hidden, norm->eps), FERRY_OK);
    for (int m = 0; m < 2; m++)
        cr_assert_eq(cpu->ops->matmul(cpu, m ? up : gate, h, weights[m], dtype, NULL, n, inter,
                                      hidden, 0),
                     FERRY_OK);
    cr_assert_eq(cpu->ops->silu_mul(cpu, gate, gate, up, n, inter), FERRY_OK);
    cr_assert_eq(cpu->ops->matmul(cpu, want, gate, weights[2], dtype, NULL, n, hidden, inter, 1),
                 FERRY_OK);

    /* the GPU: one op, every scratch poisoned */
    const void *gpu_weights[3];
    for (int m = 0; m < 3; m++) gpu_weights[m] = upload(weights[m], weight_bytes);
    cr_assert_eq(gpu->ops->mlp(gpu, gpu_x, norm, gpu_weights, dtype, n, hidden, inter,
                               poisoned((size_t)n * inter), poisoned((size_t)n * inter),
                               next_norm),
                 FERRY_OK, "%s: %s", what, ferry_last_error());
}

/* Which blocks a case runs on the same x: attention_out, mlp, or both as
 * the runtime links them (attention_out told the mlp's norm as next_norm,
 * that norm then saying prepared, the mlp told a norm of its own to
 * prepare, the next layer's).  The change made to x is compared. */
enum { ATTENTION_OUT = 1, MLP = 2, LINKED = ATTENTION_OUT | MLP };

/* c gives the mlp its dtype, n and hidden too. */
static void check_blocks(int blocks, const attention_case *c, int inter) {
    const int n = c->n, hidden = c->hidden;
    char what[240] = "";
    if (blocks & ATTENTION_OUT) describe_attention(what, sizeof what, c);
    if (blocks & MLP)
        snprintf(what + strlen(what), sizeof what - strlen(what),
                 "%smlp %s n=%d hidden=%d inter=%d", blocks & ATTENTION_OUT ? ", then " : "",
                 ferry_dtype_name(c->dtype), n, hidden, inter);
    const float *x0, *mlp_weight, *next_weight;
    float *want, *gpu_x;
    start_case(n, hidden, &x0, &want, &gpu_x);
    ferry_fused_norm mlp_norm = random_norm(n, hidden, &mlp_weight);
    const ferry_fused_norm next_norm = random_norm(n, hidden, &next_weight);
    if (blocks & ATTENTION_OUT)
        add_attention_out(c, want, gpu_x, blocks == LINKED ? &mlp_norm : NULL, what);
    mlp_norm.prepared = blocks == LINKED;
    if (blocks & MLP)
        add_mlp(c->dtype, n, hidden, inter, want, gpu_x, mlp_weight, &mlp_norm,
                blocks == LINKED ? &next_norm : NULL, what);
    expect_same_change(what, x0, want, gpu_x, (size_t)n * hidden, c->dtype);
    free_case();
}

/* 1, 2: the vector kernels; 3..16: the tensor-core hand-off; 17, 33: cuBLAS */
static const int attention_token_counts[] = {1, 2, 3, 8, 16, 17, 33};
static const ferry_attention_shape shapes[] = {
    {8, 8, 64},   /* GQA 1 */
    {8, 2, 128},  /* GQA 4 */
    {16, 2, 64},  /* GQA 8 */
    {6, 2, 80},   /* the lanes kernel (not 64 or 128) */
    {4, 4, 32},
};
/* hidden 200 (not a multiple of 32) and 100 (nor of 8): rows the
 * tensor-core and 16-byte kernels do not take, so the fallbacks */
static const int hidden_sizes[] = {256, 512, 200, 100};
static const ferry_dtype dtypes[] = {FERRY_DTYPE_F16, FERRY_DTYPE_BF16};
enum { N_ATTENTION_COUNTS = 7, N_SHAPES = 5, N_HIDDEN_SIZES = 4, N_DTYPES = 2 };

Test(cuda_blocks, attention_out_adds_the_projected_attention_to_x) {
    NEED_GPU_OP(attention_out);
    int k = 0;
    for (int d = 0; d < N_DTYPES; d++)
        for (int i = 0; i < N_ATTENTION_COUNTS; i++)
            for (int s = 0; s < N_SHAPES; s++, k++) {
                const int contexts[3] = {40, 137, 300};
                attention_case c = {dtypes[d], attention_token_counts[i],
                                    hidden_sizes[k % N_HIDDEN_SIZES], shapes[s], contexts[k % 3],
                                    (k / 2) % 2};
                check_blocks(ATTENTION_OUT, &c, 0);
            }
    report_worst();
}

/* Few (token, head) items over a long cache: the context is split over
 * blocks and the partial softmaxes merged. */
Test(cuda_blocks, attention_out_over_a_long_context_splits_and_still_matches) {
    NEED_GPU_OP(attention_out);
    const int counts[] = {1, 2, 3, 8, 17};
    for (int i = 0; i < 5; i++)
        for (int s = 0; s < 3; s++) {
            attention_case c = {dtypes[(i + s) % 2], counts[i], 512, shapes[s], 2000, s == 1};
            check_blocks(ATTENTION_OUT, &c, 0);
        }
    report_worst();
}

/* 6 query heads over 4 KV heads: an error with a message, x untouched. */
static void check_bad_heads(int n) {
    const ferry_attention_shape shape = {6, 4, 64};
    const int hidden = 256, width = shape.n_heads * shape.head_dim;
    /* a well-formed cache of 4 KV heads; only the query heads are wrong */
    attention_case c = {FERRY_DTYPE_F16, n, hidden, {4, 4, 64}, 40, 0};
    int32_t positions[8], slots[8];
    place_tokens(&c, positions, slots);
    ferry_kv_layer cpu_cache, gpu_cache;
    fill_caches(&c, positions, slots, &cpu_cache, &gpu_cache);
    ferry_token_batch host_batch, gpu_batch;
    make_batches(n, positions, slots, &host_batch, &gpu_batch);
    const float *x0, *next_weight;
    float *want, *gpu_x;
    start_case(n, hidden, &x0, &want, &gpu_x);
    const ferry_fused_norm next_norm = random_norm(n, hidden, &next_weight);
    ferry_clear_error();
    ferry_status status = gpu->ops->attention_out(
        gpu, gpu_x, poisoned((size_t)n * width), poisoned((size_t)n * width), &gpu_cache,
        &gpu_batch, shape, upload(random_weights(FERRY_DTYPE_F16, hidden, width),
                                  (size_t)hidden * width * 2),
        FERRY_DTYPE_F16, hidden, &next_norm);
    cr_assert_neq(status, FERRY_OK, "n=%d: 6 query heads over 4 KV heads were taken", n);
    cr_assert_gt(strlen(ferry_last_error()), 0, "no message for the failure");
    expect_unchanged("a rejected attention_out", gpu_x, x0, (size_t)n * hidden);
    free_case();
}

/* 2 tokens: the plain ops; 8: the hand-off path */
Test(cuda_blocks, attention_out_rejects_query_heads_not_a_multiple_of_kv_heads) {
    NEED_GPU_OP(attention_out);
    for (int n = 2; n <= 8; n += 6) check_bad_heads(n);
}

/* ---------------------------------------------------------------- mlp */

/* 1, 2: the fused pair kernels; 3..16: the tensor-core hand-off; 17, 40: cuBLAS */
static const int mlp_token_counts[] = {1, 2, 3, 8, 16, 17, 40};
/* (hidden, inter): inter 688 is a multiple of 16, not 32, so the down
 * projection's tensor-core path (and the hand-off) does not take it; 704
 * it does; hidden 200 and 100 as for attention_out */
static const int mlp_sizes[][2] = {{256, 688}, {256, 704}, {512, 1024}, {200, 704}, {100, 688}};
enum { N_MLP_COUNTS = 7, N_MLP_SIZES = 5 };

Test(cuda_blocks, mlp_adds_the_swiglu_block_to_x) {
    NEED_GPU_OP(mlp);
    for (int d = 0; d < N_DTYPES; d++)
        for (int i = 0; i < N_MLP_COUNTS; i++)
            for (int m = 0; m < N_MLP_SIZES; m++) {
                attention_case c = {.dtype = dtypes[d], .n = mlp_token_counts[i],
                                    .hidden = mlp_sizes[m][0]};
                check_blocks(MLP, &c, mlp_sizes[m][1]);
            }
    report_worst();
}

Test(cuda_blocks, mlp_of_no_tokens_leaves_x_unchanged) {
    NEED_GPU_OP(mlp);
    const int hidden = 256, inter = 704, rows = 4;
    const float *x0, *norm_weight;
    float *want, *gpu_x;
    start_case(rows, hidden, &x0, &want, &gpu_x);
    const ferry_fused_norm norm = random_norm(rows, hidden, &norm_weight);
    const size_t weight_bytes = (size_t)inter * hidden * 2;
    const void *w = upload(random_weights(FERRY_DTYPE_BF16, inter, hidden), weight_bytes);
    const void *weights[3] = {w, w, w}; /* (read by no kernel) */
    cr_assert_eq(gpu->ops->mlp(gpu, gpu_x, &norm, weights, FERRY_DTYPE_BF16, 0, hidden, inter,
                               poisoned((size_t)rows * inter), poisoned((size_t)rows * inter),
                               NULL),
                 FERRY_OK, "%s", ferry_last_error());
    expect_unchanged("mlp of 0 tokens", gpu_x, x0, (size_t)rows * hidden);
    free_case();
}

/* inter 688 (i == 4): the mlp off the hand-off ignores what was prepared */
Test(cuda_blocks, attention_out_then_mlp_linked_by_next_norm_match_the_plain_ops) {
    NEED_GPU_OP(attention_out);
    NEED_GPU_OP(mlp);
    for (int i = 0; i < N_MLP_COUNTS; i++) {
        attention_case c = {dtypes[i % 2], mlp_token_counts[i], 256, shapes[i % N_SHAPES], 300,
                            i % 3 == 0};
        check_blocks(LINKED, &c, i == 4 ? 688 : 704);
    }
    report_worst();
}

/* The other paths a backend made with FERRY_CUDA_FUSE (the fusions that
 * are on) takes at 3..16 tokens: the hand-off without normnext, with the
 * attention's merge kernel (no attnmerge) and the norm as its own kernel
 * (no norm16); the hand-off off (the plain ops). */
Test(cuda_blocks, the_blocks_match_under_other_fusion_choices) {
    NEED_GPU_OP(attention_out);
    NEED_GPU_OP(mlp);
    const char *choices[] = {"silu16,handoff", "norm1,norm16,attnmerge,silu16"};
    for (int f = 0; f < 2; f++) {
        ferry_backend_free(gpu);
        gpu = NULL;
        cr_assert_eq(test_cuda_backend_with("FERRY_CUDA_FUSE", choices[f], &gpu), FERRY_OK, "%s",
                     ferry_last_error());
        for (int i = 2; i <= 4; i++) {
            attention_case c = {dtypes[i % 2], mlp_token_counts[i], 512, shapes[i - 2], 2000, f};
            check_blocks(LINKED, &c, 704);
        }
    }
    report_worst();
}

/* ------------------------------------- a prepared norm, bit for bit */

/* Device bytes read back. */
static void *downloaded(const void *device, size_t bytes) {
    void *host = host_tracked(malloc(bytes));
    cr_assert_eq(gpu->ops->download(gpu, host, device, bytes), FERRY_OK, "%s", ferry_last_error());
    return host;
}

/* A layer's second half and the next layer's first, on x (a copy of x0):
 * attention_out, mlp, then qkv_rope_store into a cache of NaN rows;
 * linked (each projection into x told the next norm, which then says
 * prepared), as the runtime runs resident layers, or not, as it runs
 * streamed ones.  Returns x, q and both cache halves, downloaded. */
typedef struct layer_seam {
    const attention_case *c;
    const float *x0, *q, *inv_freq;
    const void *wo, *mlp[3], *qkv[3];
    ferry_fused_norm mlp_norm, attn_norm;
    ferry_kv_layer cache;
    const ferry_token_batch *batch;
    int inter;
} layer_seam;

static void run_seam(const layer_seam *l, int linked, void **out) {
    const attention_case *c = l->c;
    const int n = c->n, hidden = c->hidden, head_dim = c->shape.head_dim;
    const int q_width = c->shape.n_heads * head_dim, kv_width = c->shape.n_kv_heads * head_dim;
    const size_t cache_floats = (size_t)l->cache.n_slots * l->cache.max_context * kv_width / 2;
    float *x = upload(l->x0, (size_t)n * hidden * sizeof(float));
    ferry_kv_layer cache = {poisoned(cache_floats), poisoned(cache_floats), l->cache.n_slots,
                            l->cache.max_context};
    ferry_fused_norm mlp_norm = l->mlp_norm, attn_norm = l->attn_norm;
    mlp_norm.prepared = attn_norm.prepared = linked;
    cr_assert_eq(gpu->ops->attention_out(gpu, x, poisoned((size_t)n * q_width), l->q, &l->cache,
                                         l->batch, c->shape, l->wo, c->dtype, hidden,
                                         linked ? &mlp_norm : NULL),
                 FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(gpu->ops->mlp(gpu, x, &mlp_norm, l->mlp, c->dtype, n, hidden, l->inter,
                               poisoned((size_t)n * l->inter), poisoned((size_t)n * l->inter),
                               linked ? &attn_norm : NULL),
                 FERRY_OK, "%s", ferry_last_error());
    float *q = poisoned((size_t)n * q_width);
    cr_assert_eq(gpu->ops->qkv_rope_store(gpu, q, poisoned((size_t)n * kv_width),
                                          poisoned((size_t)n * kv_width), x, &attn_norm, l->qkv,
                                          NULL, c->dtype, n, hidden, &cache, l->batch,
                                          l->inv_freq, c->shape),
                 FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(gpu->ops->synchronize(gpu), FERRY_OK, "%s", ferry_last_error());
    out[0] = downloaded(x, (size_t)n * hidden * sizeof(float));
    out[1] = downloaded(q, (size_t)n * q_width * sizeof(float));
    out[2] = downloaded(cache.k, cache_floats * sizeof(float));
    out[3] = downloaded(cache.v, cache_floats * sizeof(float));
}

/* A projection into x that prepares the next norm must give the bits a
 * norm prepared from x gives (a resident layer links to the next one, a
 * streamed layer cannot, and their logits must not differ). */
Test(cuda_blocks, a_norm_prepared_by_the_op_before_gives_the_bits_of_one_made_from_x) {
    NEED_GPU_OP(attention_out);
    NEED_GPU_OP(mlp);
    const int counts[] = {2, 3, 8, 16};
    for (int i = 0; i < 8; i++) {
        const int hidden = 512, inter = 704;
        attention_case c = {dtypes[i % 2], counts[i / 2], hidden, {8, 2, 64}, 64, 0};
        const int head_dim = c.shape.head_dim, q_width = c.shape.n_heads * head_dim;
        const int kv_width = c.shape.n_kv_heads * head_dim;
        int32_t *positions = host_tracked(malloc((size_t)c.n * sizeof(int32_t)));
        int32_t *slots = host_tracked(malloc((size_t)c.n * sizeof(int32_t)));
        place_tokens(&c, positions, slots);
        ferry_kv_layer cpu_cache;
        layer_seam l = {.c = &c, .inter = inter};
        fill_caches(&c, positions, slots, &cpu_cache, &l.cache);
        ferry_token_batch host_batch, gpu_batch;
        make_batches(c.n, positions, slots, &host_batch, &gpu_batch);
        l.batch = &gpu_batch;
        l.x0 = random_floats((size_t)c.n * hidden, -1.0f, 1.0f);
        l.q = upload(random_floats((size_t)c.n * q_width, -3.0f, 3.0f),
                     (size_t)c.n * q_width * sizeof(float));
        float *inv_freq = host_tracked(malloc((size_t)head_dim / 2 * sizeof(float)));
        for (int j = 0; j < head_dim / 2; j++) inv_freq[j] = (float)pow(10000.0, -2.0 * j / head_dim);
        l.inv_freq = upload(inv_freq, (size_t)head_dim / 2 * sizeof(float));
        const size_t unit = ferry_dtype_bytes(c.dtype);
        l.wo = upload(random_weights(c.dtype, hidden, q_width), (size_t)hidden * q_width * unit);
        const int mlp_shapes[3][2] = {{inter, hidden}, {inter, hidden}, {hidden, inter}};
        const int qkv_rows[3] = {q_width, kv_width, kv_width};
        for (int m = 0; m < 3; m++) {
            l.mlp[m] = upload(random_weights(c.dtype, mlp_shapes[m][0], mlp_shapes[m][1]),
                              (size_t)inter * hidden * unit);
            l.qkv[m] = upload(random_weights(c.dtype, qkv_rows[m], hidden),
                              (size_t)qkv_rows[m] * hidden * unit);
        }
        const float *weight;
        l.mlp_norm = random_norm(c.n, hidden, &weight);
        l.attn_norm = random_norm(c.n, hidden, &weight);
        void *linked[4], *unlinked[4];
        run_seam(&l, 1, linked);
        run_seam(&l, 0, unlinked);
        const size_t cache_bytes = (size_t)l.cache.n_slots * l.cache.max_context * kv_width * 2;
        const size_t bytes[4] = {(size_t)c.n * hidden * sizeof(float),
                                 (size_t)c.n * q_width * sizeof(float), cache_bytes, cache_bytes};
        const char *names[4] = {"x", "q", "the K cache", "the V cache"};
        for (int k = 0; k < 4; k++)
            cr_assert(memcmp(linked[k], unlinked[k], bytes[k]) == 0,
                      "%s n=%d: %s differs between a linked and an unlinked norm",
                      ferry_dtype_name(c.dtype), c.n, names[k]);
        free_case();
    }
}
