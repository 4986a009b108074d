/*
 * test_cuda_fused.c — the CUDA backend's fused ops (kernels/cuda/fused.cu)
 * against a float64 reference computed here: matmul_multi for Q/K/V-like
 * stacks with and without biases and for gate/up with SiLU in the
 * epilogue, each with and without the RMSNorm folded in front, on the fused
 * 1-2 token kernels, the tensor-core path (3..16 tokens) and the fallbacks
 * (odd column counts, cuBLAS), f16 and bf16, poisoned outputs, fresh random
 * inputs, every element; each FERRY_CUDA_FUSE choice of how the norm is
 * folded.  Skips without a GPU.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_fixture.h"

TestSuite(cuda_fused, .init = cuda_fixture_setup, .fini = cuda_fixture_teardown, .timeout = 120);

/* A random matrix in `dtype` on the GPU, and its exact values as doubles. */
static void *random_matrix(ferry_dtype dtype, size_t n, double *exact) {
    float *values = malloc(n * sizeof(float));
    void *converted = malloc(n * ferry_dtype_bytes(dtype));
    for (size_t i = 0; i < n; i++) values[i] = test_rand_uniform(&rng, -1.0f, 1.0f);
    ferry_convert_dtype(converted, dtype, values, FERRY_DTYPE_F32, n);
    for (size_t i = 0; i < n; i++) exact[i] = ferry_load_f32(converted, dtype, i);
    void *device = cuda_upload(converted, n * ferry_dtype_bytes(dtype));
    free(values);
    free(converted);
    return device;
}

/* max|got - want| / max|want| over every element, none unwritten. */
static double relative_error(const float *device, const double *want, size_t n, const char *what) {
    float *got = malloc(n * sizeof(float));
    cr_assert_eq(gpu->ops->download(gpu, got, device, n * sizeof(float)), FERRY_OK, "%s",
                 ferry_last_error());
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < n; i++) {
        cr_assert(isfinite(got[i]), "%s: element %zu not written (%g)", what, i, (double)got[i]);
        max_diff = fmax(max_diff, fabs(got[i] - want[i]));
        max_ref = fmax(max_ref, fabs(want[i]));
    }
    free(got);
    return max_diff / max_ref;
}

/* matmul_multi's optional RMSNorm in front: none, or rmsnorm(x) * weight. */
enum { NO_NORM = 0, WITH_NORM = 1 };
enum { NO_BIAS = 0, WITH_BIAS = 1 };

static void check_multi(ferry_dtype dtype, int n, int cols, int silu_pair, int with_norm,
                        int with_bias) {
    enum { MAX_MATRICES = 3 };
    const float eps = 1e-5f;
    const int n_matrices = silu_pair ? 2 : 3;
    /* 404 and 300 rows: the last block of 8 (or 4) rows is partly past the end */
    const int rows[MAX_MATRICES] = {silu_pair ? 300 : 264, silu_pair ? 300 : 72,
                                    silu_pair ? 0 : 68};
    const size_t x_count = (size_t)n * cols;
    double *exact_x = malloc(x_count * sizeof(double));
    float *host_x = calloc(x_count, sizeof(float));
    for (size_t i = 0; i < x_count; i++)
        exact_x[i] = host_x[i] = test_rand_uniform(&rng, -3.0f, 3.0f);
    float *x = cuda_upload(host_x, x_count * sizeof(float));
    /* float64 reference input: x, or w_norm * x / sqrt(mean(x^2) + eps) */
    double *exact_norm = NULL;
    ferry_fused_norm norm = {NULL, eps, NULL, 0};
    if (with_norm) {
        exact_norm = malloc((size_t)cols * sizeof(double));
        norm.weight = random_matrix(FERRY_DTYPE_F32, (size_t)cols, exact_norm);
        norm.scratch = cuda_poisoned(x_count);
        for (int t = 0; t < n; t++) {
            double sum_squares = 0;
            for (int c = 0; c < cols; c++) sum_squares += exact_x[(size_t)t * cols + c] * exact_x[(size_t)t * cols + c];
            double inv_rms = 1.0 / sqrt(sum_squares / cols + eps);
            for (int c = 0; c < cols; c++) exact_x[(size_t)t * cols + c] *= inv_rms * exact_norm[c];
        }
    }
    void *weights[MAX_MATRICES] = {0};
    float *biases[MAX_MATRICES] = {0}, *outs[MAX_MATRICES] = {0};
    double *exact_w[MAX_MATRICES] = {0}, *exact_b[MAX_MATRICES] = {0};
    for (int m = 0; m < n_matrices; m++) {
        exact_w[m] = malloc((size_t)rows[m] * cols * sizeof(double));
        weights[m] = random_matrix(dtype, (size_t)rows[m] * cols, exact_w[m]);
        outs[m] = cuda_poisoned((size_t)n * rows[m]);
        if (with_bias) {
            exact_b[m] = malloc((size_t)rows[m] * sizeof(double));
            biases[m] = random_matrix(FERRY_DTYPE_F32, (size_t)rows[m], exact_b[m]);
        }
    }
    cr_assert_eq(gpu->ops->matmul_multi(gpu, n_matrices, outs, x, with_norm ? &norm : NULL,
                                        (const void *const *)weights,
                                        with_bias ? (const float *const *)biases : NULL, rows,
                                        dtype, n, cols, silu_pair),
                 FERRY_OK, "%s", ferry_last_error());
    /* float64: y_m[t][r] = x[t] . W_m[r] + b_m[r]; SwiGLU: silu(y_0) * y_1 */
    double *want[MAX_MATRICES] = {0};
    for (int m = 0; m < n_matrices; m++) {
        want[m] = malloc((size_t)n * rows[m] * sizeof(double));
        for (int t = 0; t < n; t++)
            for (int r = 0; r < rows[m]; r++) {
                double sum = exact_b[m] ? exact_b[m][r] : 0.0;
                for (int c = 0; c < cols; c++)
                    sum += exact_x[(size_t)t * cols + c] * exact_w[m][(size_t)r * cols + c];
                want[m][(size_t)t * rows[m] + r] = sum;
            }
    }
    /* 1-2 tokens keep x in float32; 3+ tokens round it to the weight dtype
     * for the tensor cores / cuBLAS (8 bits of mantissa for bf16) */
    const double bar = n <= 2 ? 1e-4 : dtype == FERRY_DTYPE_F16 ? 2e-3 : 1.5e-2;
    char what[160];
    snprintf(what, sizeof what, "%s %s n=%d cols=%d norm=%d bias=%d",
             silu_pair ? "gate/up" : "stack", ferry_dtype_name(dtype), n, cols, with_norm,
             with_bias);
    if (silu_pair) {
        for (size_t i = 0; i < (size_t)n * rows[0]; i++) {
            double g = want[0][i];
            want[0][i] = g / (1.0 + exp(-g)) * want[1][i];
        }
        double error = relative_error(outs[0], want[0], (size_t)n * rows[0], what);
        cr_assert_leq(error, bar, "%s: relative error %.3g > %.3g", what, error, bar);
    } else {
        for (int m = 0; m < n_matrices; m++) {
            char matrix[200];
            snprintf(matrix, sizeof matrix, "%s matrix %d", what, m);
            double error = relative_error(outs[m], want[m], (size_t)n * rows[m], matrix);
            cr_assert_leq(error, bar, "%s: relative error %.3g > %.3g", matrix, error, bar);
        }
    }
    /* the input is left as it was */
    float *x_after = malloc(x_count * sizeof(float));
    cr_assert_eq(gpu->ops->download(gpu, x_after, x, x_count * sizeof(float)), FERRY_OK);
    cr_assert_eq(memcmp(x_after, host_x, x_count * sizeof(float)), 0, "%s: x was changed", what);
    for (int m = 0; m < n_matrices; m++) {
        gpu->ops->free(gpu, weights[m]);
        gpu->ops->free(gpu, outs[m]);
        if (biases[m]) gpu->ops->free(gpu, biases[m]);
        free(exact_w[m]), free(exact_b[m]), free(want[m]);
    }
    if (with_norm) {
        gpu->ops->free(gpu, (void *)norm.weight);
        gpu->ops->free(gpu, norm.scratch);
    }
    gpu->ops->free(gpu, x);
    free(exact_x), free(host_x), free(exact_norm), free(x_after);
}

/* 1, 2: the fused matvec kernels; 3, 5, 16: the tensor-core matvec (x
 * rounded once for every matrix) where cols % 32 == 0, else the plain
 * matmuls; 40: cuBLAS.  cols 4096: no tail; 520, 4104: a tail step. */
static const int token_counts[] = {1, 2, 3, 5, 16, 40};
static const int column_counts[] = {520, 4096, 4104};
enum { N_TOKEN_COUNTS = 6, N_COLUMN_COUNTS = 3 };

Test(cuda_fused, stacked_projections_with_and_without_biases_match_float64) {
    NEED_GPU();
    const ferry_dtype dtypes[] = {FERRY_DTYPE_F16, FERRY_DTYPE_BF16};
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < N_TOKEN_COUNTS; i++)
            for (int c = 0; c < N_COLUMN_COUNTS; c++)
                check_multi(dtypes[d], token_counts[i], column_counts[c], 0, NO_NORM,
                            (i + c) % 2 ? WITH_BIAS : NO_BIAS);
    check_multi(FERRY_DTYPE_F16, 1, 100, 0, NO_NORM, WITH_BIAS); /* cols % 8 != 0: fallback */
}

Test(cuda_fused, gate_and_up_with_silu_in_the_epilogue_match_float64) {
    NEED_GPU();
    const ferry_dtype dtypes[] = {FERRY_DTYPE_F16, FERRY_DTYPE_BF16};
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < N_TOKEN_COUNTS; i++)
            for (int c = 0; c < N_COLUMN_COUNTS; c++)
                check_multi(dtypes[d], token_counts[i], column_counts[c], 1, NO_NORM, NO_BIAS);
    check_multi(FERRY_DTYPE_BF16, 2, 100, 1, NO_NORM, NO_BIAS);
}

/* The layer's RMSNorm folded in: every path (fused kernels, tensor cores,
 * plain ops behind an rmsnorm into the scratch, cuBLAS), Q/K/V-like
 * stacks with biases (Qwen2) and without, and gate/up. */
Test(cuda_fused, projections_behind_a_folded_rmsnorm_match_float64) {
    NEED_GPU();
    const ferry_dtype dtypes[] = {FERRY_DTYPE_F16, FERRY_DTYPE_BF16};
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < N_TOKEN_COUNTS; i++)
            for (int c = 0; c < N_COLUMN_COUNTS; c++) {
                check_multi(dtypes[d], token_counts[i], column_counts[c], 0, WITH_NORM,
                            (i + c + d) % 2 ? WITH_BIAS : NO_BIAS);
                check_multi(dtypes[d], token_counts[i], column_counts[c], 1, WITH_NORM, NO_BIAS);
            }
    check_multi(FERRY_DTYPE_F16, 1, 100, 0, WITH_NORM, WITH_BIAS);
    check_multi(FERRY_DTYPE_BF16, 2, 100, 1, WITH_NORM, NO_BIAS);
}

/* A backend made with FERRY_CUDA_FUSE=fusions in place of the fixture's. */
static void use_fusions(const char *fusions) {
    ferry_backend_free(gpu);
    gpu = NULL;
    ferry_status status = test_cuda_backend_with("FERRY_CUDA_FUSE", fusions, &gpu);
    cr_assert_eq(status, FERRY_OK, "FERRY_CUDA_FUSE=%s: %s", fusions, ferry_last_error());
}

/* 1-2 tokens behind the norm, each way of meeting it: staged once per
 * block (norm1), folded by every warp (norm1warp), a separate rmsnorm
 * (none); cols 12288 (1 token) and 8192 (2 tokens) stage more than the
 * kernel's shared memory takes, so norm1 falls back to the per-warp fold. */
Test(cuda_fused, each_way_of_folding_the_norm_at_one_and_two_tokens_matches_float64) {
    NEED_GPU();
    static const char *const fusions[] = {"norm1", "norm1warp", "none", "norm1,norm1warp"};
    for (int f = 0; f < 4; f++) {
        use_fusions(fusions[f]);
        for (int n = 1; n <= 2; n++) {
            for (int c = 0; c < N_COLUMN_COUNTS; c++) {
                const ferry_dtype dtype = (n + c) % 2 ? FERRY_DTYPE_F16 : FERRY_DTYPE_BF16;
                check_multi(dtype, n, column_counts[c], 0, WITH_NORM, c % 2 ? WITH_BIAS : NO_BIAS);
                check_multi(dtype, n, column_counts[c], 1, WITH_NORM, NO_BIAS);
            }
            check_multi(FERRY_DTYPE_F16, n, n == 1 ? 12288 : 8192, 0, WITH_NORM, WITH_BIAS);
            check_multi(FERRY_DTYPE_BF16, n, n == 1 ? 12288 : 8192, 1, WITH_NORM, NO_BIAS);
        }
    }
}

/* 3..16 tokens with the norm in x's rounding (norm16) and without. */
Test(cuda_fused, the_norm_with_and_without_norm16_matches_float64) {
    NEED_GPU();
    static const char *const fusions[] = {"norm16", "ropekv"};
    for (int f = 0; f < 2; f++) {
        use_fusions(fusions[f]);
        check_multi(FERRY_DTYPE_F16, 5, 4096, 0, WITH_NORM, WITH_BIAS);
        check_multi(FERRY_DTYPE_BF16, 16, 520, 1, WITH_NORM, NO_BIAS);
    }
}

/* (the list is read before the GPU is looked for: this runs in any CUDA
 * build, with or without a GPU) */
Test(cuda_fused, an_unknown_fusion_name_is_refused_with_the_known_ones) {
#ifndef FERRY_HAVE_CUDA
    cr_skip_test("built without CUDA: no backend reads FERRY_CUDA_FUSE");
#endif
    ferry_backend *backend = NULL;
    ferry_status status = test_cuda_backend_with("FERRY_CUDA_FUSE", "norm1,fast", &backend);
    cr_assert_eq(status, FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_null(backend);
    cr_assert(strstr(ferry_last_error(), "'fast'") && strstr(ferry_last_error(), "ropekv"), "%s",
              ferry_last_error());
}

Test(cuda_fused, bad_matrix_counts_fail_with_a_message) {
    NEED_GPU();
    int rows[4] = {8, 8, 8, 8};
    float *outs[4] = {0};
    const void *weights[4] = {0};
    cr_assert_eq(gpu->ops->matmul_multi(gpu, 4, outs, NULL, NULL, weights, NULL, rows,
                                        FERRY_DTYPE_F16, 1, 64, 0),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "matmul_multi"), "%s", ferry_last_error());
    cr_assert_eq(gpu->ops->matmul_multi(gpu, 3, outs, NULL, NULL, weights, NULL, rows,
                                        FERRY_DTYPE_F16, 1, 64, 1),
                 FERRY_ERR_INVALID_ARGUMENT);
}
