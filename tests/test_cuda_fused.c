/*
 * test_cuda_fused.c — the CUDA backend's fused ops (kernels/cuda/fused.cu)
 * against a float64 reference computed here: matmul_multi for Q/K/V-like
 * stacks with biases and for gate/up with SiLU in the epilogue, on the
 * fused 1-2 token path and the fallbacks (3+ tokens, odd column counts),
 * f16 and bf16, poisoned outputs, fresh random inputs.  Skips without a GPU.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_fixture.h"

TestSuite(cuda_fused, .init = cuda_fixture_setup, .fini = cuda_fixture_teardown, .timeout = 120);

static void *upload(const void *host, size_t bytes) {
    void *device = NULL;
    cr_assert_eq(gpu->ops->alloc(gpu, bytes, &device), FERRY_OK);
    cr_assert_eq(gpu->ops->upload(gpu, device, host, bytes), FERRY_OK, "%s", ferry_last_error());
    return device;
}

/* A random matrix in `dtype` on the GPU, and its exact values as doubles. */
static void *random_matrix(ferry_dtype dtype, size_t n, double *exact) {
    float *values = malloc(n * sizeof(float));
    void *converted = malloc(n * ferry_dtype_bytes(dtype));
    for (size_t i = 0; i < n; i++) values[i] = test_rand_uniform(&rng, -1.0f, 1.0f);
    ferry_convert_dtype(converted, dtype, values, FERRY_DTYPE_F32, n);
    for (size_t i = 0; i < n; i++) exact[i] = ferry_load_f32(converted, dtype, i);
    void *device = upload(converted, n * ferry_dtype_bytes(dtype));
    free(values);
    free(converted);
    return device;
}

static float *poisoned_output(size_t n) {
    float *host = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) host[i] = NAN;
    float *device = upload(host, n * sizeof(float));
    free(host);
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

static void check_multi(ferry_dtype dtype, int n, int cols, int silu_pair) {
    enum { MAX_MATRICES = 3 };
    const int n_matrices = silu_pair ? 2 : 3;
    const int rows[MAX_MATRICES] = {silu_pair ? 300 : 264, silu_pair ? 300 : 72,
                                    silu_pair ? 0 : 72};
    double *exact_x = malloc((size_t)n * cols * sizeof(double));
    float *host_x = malloc((size_t)n * cols * sizeof(float));
    for (size_t i = 0; i < (size_t)n * cols; i++)
        exact_x[i] = host_x[i] = test_rand_uniform(&rng, -1.0f, 1.0f);
    float *x = upload(host_x, (size_t)n * cols * sizeof(float));
    void *weights[MAX_MATRICES] = {0};
    float *biases[MAX_MATRICES] = {0}, *outs[MAX_MATRICES] = {0};
    double *exact_w[MAX_MATRICES] = {0}, *exact_b[MAX_MATRICES] = {0};
    for (int m = 0; m < n_matrices; m++) {
        exact_w[m] = malloc((size_t)rows[m] * cols * sizeof(double));
        weights[m] = random_matrix(dtype, (size_t)rows[m] * cols, exact_w[m]);
        outs[m] = poisoned_output((size_t)n * rows[m]);
        if (!silu_pair) {
            exact_b[m] = malloc((size_t)rows[m] * sizeof(double));
            biases[m] = random_matrix(FERRY_DTYPE_F32, (size_t)rows[m], exact_b[m]);
        }
    }
    cr_assert_eq(gpu->ops->matmul_multi(gpu, n_matrices, outs, x, (const void *const *)weights,
                                        silu_pair ? NULL : (const float *const *)biases, rows,
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
    char what[128];
    if (silu_pair) {
        for (size_t i = 0; i < (size_t)n * rows[0]; i++) {
            double g = want[0][i];
            want[0][i] = g / (1.0 + exp(-g)) * want[1][i];
        }
        snprintf(what, sizeof what, "gate/up %s n=%d cols=%d", ferry_dtype_name(dtype), n, cols);
        double error = relative_error(outs[0], want[0], (size_t)n * rows[0], what);
        cr_assert_leq(error, bar, "%s: relative error %.3g > %.3g", what, error, bar);
    } else {
        for (int m = 0; m < n_matrices; m++) {
            snprintf(what, sizeof what, "stack %d %s n=%d cols=%d", m, ferry_dtype_name(dtype), n,
                     cols);
            double error = relative_error(outs[m], want[m], (size_t)n * rows[m], what);
            cr_assert_leq(error, bar, "%s: relative error %.3g > %.3g", what, error, bar);
        }
    }
    for (int m = 0; m < n_matrices; m++) {
        gpu->ops->free(gpu, weights[m]);
        gpu->ops->free(gpu, outs[m]);
        if (biases[m]) gpu->ops->free(gpu, biases[m]);
        free(exact_w[m]), free(exact_b[m]), free(want[m]);
    }
    gpu->ops->free(gpu, x);
    free(exact_x), free(host_x);
}

Test(cuda_fused, stacked_projections_with_biases_match_float64) {
    NEED_GPU();
    const ferry_dtype dtypes[] = {FERRY_DTYPE_F16, FERRY_DTYPE_BF16};
    const int token_counts[] = {1, 2, 5, 40}; /* fused, fused, tensor-core, cuBLAS */
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < 4; i++) {
            check_multi(dtypes[d], token_counts[i], 520, 0);
            check_multi(dtypes[d], token_counts[i], 4104, 0);
        }
    check_multi(FERRY_DTYPE_F16, 1, 100, 0); /* columns not a multiple of 8: fallback */
}

Test(cuda_fused, gate_and_up_with_silu_in_the_epilogue_match_float64) {
    NEED_GPU();
    const ferry_dtype dtypes[] = {FERRY_DTYPE_F16, FERRY_DTYPE_BF16};
    const int token_counts[] = {1, 2, 5, 40};
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < 4; i++) {
            check_multi(dtypes[d], token_counts[i], 520, 1);
            check_multi(dtypes[d], token_counts[i], 4104, 1);
        }
    check_multi(FERRY_DTYPE_BF16, 2, 100, 1);
}

Test(cuda_fused, bad_matrix_counts_fail_with_a_message) {
    NEED_GPU();
    int rows[4] = {8, 8, 8, 8};
    float *outs[4] = {0};
    const void *weights[4] = {0};
    cr_assert_eq(gpu->ops->matmul_multi(gpu, 4, outs, NULL, weights, NULL, rows, FERRY_DTYPE_F16,
                                        1, 64, 0),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "matmul_multi"), "%s", ferry_last_error());
    cr_assert_eq(gpu->ops->matmul_multi(gpu, 3, outs, NULL, weights, NULL, rows, FERRY_DTYPE_F16,
                                        1, 64, 1),
                 FERRY_ERR_INVALID_ARGUMENT);
}
