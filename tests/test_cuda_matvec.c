/*
 * test_cuda_matvec.c — the tensor-core matvecs that serve 3..16 tokens
 * (the default in kernels/cuda/matmul.cu, also FERRY_CUDA_TC_MATVEC=old;
 * the split-K cluster kernel of matvec_tc.cu behind =split and =rows32,
 * its v2 kernel behind =v2 and =v2m2) against float64 sums of the same rounded
 * operands: K = 11008 (long rows, the split-K clusters), K = 4104 (not a
 * multiple of 32 or 64: partial chunks), 100 / 520 / 4096 / 4104 rows,
 * 3, 5, 12 and 16 tokens, bias, accumulate into a residual, x given as
 * float32 (matmul) or rounded once for several matrices (matmul_multi).
 * Outputs are poisoned, every element is checked, and a repeated call
 * must give the same bits (CUDA Graph replays are compared bit for bit).
 * Skips without a GPU.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_fixture.h"

TestSuite(cuda_matvec, .init = cuda_fixture_setup, .fini = cuda_fixture_teardown, .timeout = 600);

typedef struct matvec_case {
    ferry_dtype dtype;
    int n, rows, cols;
    int with_bias, accumulate;
} matvec_case;

/* The Llama-2-7B shapes at decode widths, and odd ones around them. */
static const matvec_case llama_and_odd_cases[] = {
    {FERRY_DTYPE_F16, 16, 4096, 11008, 0, 1},   /* w_down into the residual */
    {FERRY_DTYPE_F16, 16, 4104, 4096, 1, 1},
    {FERRY_DTYPE_BF16, 12, 4104, 4104, 1, 1},
    {FERRY_DTYPE_F16, 5, 4096, 4096, 0, 0},
    {FERRY_DTYPE_F16, 3, 520, 11008, 1, 0},
    {FERRY_DTYPE_BF16, 5, 100, 4104, 0, 1},
    {FERRY_DTYPE_BF16, 16, 520, 4104, 1, 0},
    {FERRY_DTYPE_F16, 12, 100, 11008, 1, 1},
    {FERRY_DTYPE_BF16, 3, 4096, 4096, 1, 1},
    {FERRY_DTYPE_F16, 9, 37, 8, 1, 1},          /* one partial chunk only */
    {FERRY_DTYPE_F16, 16, 1, 264, 0, 1},
};
enum { N_LLAMA_AND_ODD_CASES = sizeof llama_and_odd_cases / sizeof llama_and_odd_cases[0] };

static float *download(const float *device, size_t n) {
    float *host = malloc(n * sizeof(float) + 4);
    cr_assert_eq(gpu->ops->synchronize(gpu), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(gpu->ops->download(gpu, host, device, n * sizeof(float)), FERRY_OK, "%s",
                 ferry_last_error());
    return host;
}

static float *random_floats(size_t n) {
    float *values = malloc(n * sizeof(float) + 4);
    test_fill_uniform(&rng, values, n, -1.0f, 1.0f);
    return values;
}

/* The operands of one case on both sides: weights in the case's dtype,
 * x in float32 (and as the kernels round it), bias, the residual. */
typedef struct matvec_operands {
    matvec_case shape;
    float *x, *bias, *residual;   /* host */
    void *w;                      /* host, in shape.dtype */
    void *w_gpu;
    float *x_gpu, *bias_gpu;
} matvec_operands;

static matvec_operands make_operands(const matvec_case *shape) {
    matvec_operands op = {.shape = *shape};
    const size_t w_count = (size_t)shape->rows * shape->cols;
    float *w_values = random_floats(w_count);
    op.w = malloc(w_count * ferry_dtype_bytes(shape->dtype) + 4);
    ferry_convert_dtype(op.w, shape->dtype, w_values, FERRY_DTYPE_F32, w_count);
    free(w_values);
    op.x = random_floats((size_t)shape->n * shape->cols);
    op.bias = shape->with_bias ? random_floats((size_t)shape->rows) : NULL;
    op.residual = random_floats((size_t)shape->n * shape->rows);
    op.w_gpu = cuda_upload(op.w, w_count * ferry_dtype_bytes(shape->dtype));
    op.x_gpu = cuda_upload(op.x, (size_t)shape->n * shape->cols * sizeof(float));
    op.bias_gpu = op.bias ? cuda_upload(op.bias, (size_t)shape->rows * sizeof(float)) : NULL;
    return op;
}

static void free_operands(matvec_operands *op) {
    gpu->ops->free(gpu, op->w_gpu);
    gpu->ops->free(gpu, op->x_gpu);
    if (op->bias_gpu) gpu->ops->free(gpu, op->bias_gpu);
    free(op->x), free(op->bias), free(op->residual), free(op->w);
}

/* The output buffer before the call: the residual when accumulating,
 * else NaN everywhere (an element the kernel skips stays NaN). */
static float *starting_output(const matvec_operands *op) {
    const size_t count = (size_t)op->shape.n * op->shape.rows;
    if (op->shape.accumulate) return cuda_upload(op->residual, count * sizeof(float));
    return cuda_poisoned(count);
}

/* float64 sums over x rounded to the weight dtype (as the kernels round
 * it) and the exact weights; only the order and width of the float32
 * accumulation differ from the GPU, hence a tight bar relative to
 * sum |x w| + |bias| + |residual| (one missing 32-column chunk of 11008
 * would be ~7e-4 of that). */
static void expect_matches_float64(const matvec_operands *op, const float *got, const char *via) {
    const matvec_case *s = &op->shape;
    const size_t x_count = (size_t)s->n * s->cols;
    void *x_rounded = malloc(x_count * ferry_dtype_bytes(s->dtype) + 4);
    ferry_convert_dtype(x_rounded, s->dtype, op->x, FERRY_DTYPE_F32, x_count);
    const double rtol = 1e-4, atol = 1e-6;
    size_t n_bad = 0, first_bad = 0;
    double first_want = 0;
    for (int t = 0; t < s->n; t++)
        for (int r = 0; r < s->rows; r++) {
            double sum = 0, scale = 0;
            for (int c = 0; c < s->cols; c++) {
                const double product =
                    (double)ferry_load_f32(x_rounded, s->dtype, (size_t)t * s->cols + c) *
                    ferry_load_f32(op->w, s->dtype, (size_t)r * s->cols + c);
                sum += product;
                scale += fabs(product);
            }
            const size_t at = (size_t)t * s->rows + r;
            if (op->bias) sum += op->bias[r], scale += fabs(op->bias[r]);
            if (s->accumulate) sum += op->residual[at], scale += fabs(op->residual[at]);
            if (!(fabs((double)got[at] - sum) <= atol + rtol * scale) && n_bad++ == 0) {
                first_bad = at;
                first_want = sum;
            }
        }
    cr_assert_eq(n_bad, 0,
                 "%s %s n=%d rows=%d cols=%d bias=%d acc=%d: %zu of %zu off; first at "
                 "token %zu row %zu: got %.9g want %.9g",
                 via, ferry_dtype_name(s->dtype), s->n, s->rows, s->cols, s->with_bias,
                 s->accumulate, n_bad, (size_t)s->n * s->rows, first_bad / s->rows,
                 first_bad % s->rows, (double)got[first_bad], first_want);
    free(x_rounded);
}

static float *run_matmul(const matvec_operands *op) {
    const matvec_case *s = &op->shape;
    float *out = starting_output(op);
    cr_assert_eq(gpu->ops->matmul(gpu, out, op->x_gpu, op->w_gpu, s->dtype, op->bias_gpu, s->n,
                                  s->rows, s->cols, s->accumulate),
                 FERRY_OK, "%s", ferry_last_error());
    float *got = download(out, (size_t)s->n * s->rows);
    gpu->ops->free(gpu, out);
    return got;
}

/* One matrix through matmul_multi: x rounded by its own kernel first (the
 * path of the fused Q/K/V and gate/up projections); never accumulates. */
static float *run_matmul_multi(const matvec_operands *op) {
    const matvec_case *s = &op->shape;
    float *out = starting_output(op);
    float *outs[1] = {out};
    const void *weights[1] = {op->w_gpu};
    const float *biases[1] = {op->bias_gpu};
    const int rows[1] = {s->rows};
    cr_assert_eq(gpu->ops->matmul_multi(gpu, 1, outs, op->x_gpu, NULL, weights, biases, rows,
                                        s->dtype, s->n, s->cols, 0),
                 FERRY_OK, "%s", ferry_last_error());
    float *got = download(out, (size_t)s->n * s->rows);
    gpu->ops->free(gpu, out);
    return got;
}

static void check_cases(const matvec_case *cases, size_t n_cases) {
    for (size_t i = 0; i < n_cases; i++) {
        matvec_operands op = make_operands(&cases[i]);
        float *got = run_matmul(&op);
        expect_matches_float64(&op, got, "matmul");
        free(got);
        if (!op.shape.accumulate) {
            got = run_matmul_multi(&op);
            expect_matches_float64(&op, got, "matmul_multi");
            free(got);
        }
        free_operands(&op);
    }
}

/* The environment names the kernel when the backend first uses it, so it
 * stays set while the backend of this test lives. */
static void use_kernel(const char *choice) {
    ferry_backend_free(gpu);
    gpu = NULL;
    cr_assert_eq(setenv("FERRY_CUDA_TC_MATVEC", choice, 1), 0);
    cr_assert_eq(ferry_backend_cuda_new(0, &gpu), FERRY_OK, "%s", ferry_last_error());
}

/* The kernel in matmul.cu takes cols % 32 == 0 only (other widths go to
 * the float32 vector kernel, which does not round x). */
static void check_cases_of_width32(const matvec_case *cases, size_t n_cases) {
    for (size_t i = 0; i < n_cases; i++)
        if (cases[i].cols % 32 == 0) check_cases(&cases[i], 1);
}

Test(cuda_matvec, default_kernel_matches_float64_at_llama_and_odd_shapes) {
    NEED_GPU();
    unsetenv("FERRY_CUDA_TC_MATVEC");
    check_cases_of_width32(llama_and_odd_cases, N_LLAMA_AND_ODD_CASES);
}

Test(cuda_matvec, two_tiles_per_warp_variant_matches_float64) {
    NEED_GPU();
    use_kernel("rows32");
    check_cases(llama_and_odd_cases, N_LLAMA_AND_ODD_CASES);
    unsetenv("FERRY_CUDA_TC_MATVEC");
}

Test(cuda_matvec, old_kernel_stays_selectable_and_matches_float64) {
    NEED_GPU();
    use_kernel("old");
    check_cases_of_width32(llama_and_odd_cases, N_LLAMA_AND_ODD_CASES);
    unsetenv("FERRY_CUDA_TC_MATVEC");
}

/* Random shapes: every token count 3..16, rows and widths (cols % 8 == 0,
 * or % 32 for the default kernel) that land on every split and on partial
 * row tiles. */
static void check_random_shapes(int col_multiple) {
    for (int n = 3; n <= 16; n++) {
        const matvec_case shape = {
            .dtype = n % 2 ? FERRY_DTYPE_F16 : FERRY_DTYPE_BF16,
            .n = n,
            .rows = 1 + (int)(test_rand_u64(&rng) % 700),
            .cols = col_multiple * (1 + (int)(test_rand_u64(&rng) % (5600 / col_multiple))),
            .with_bias = n % 3 == 0,
            .accumulate = n % 4 < 2,
        };
        check_cases(&shape, 1);
    }
}

Test(cuda_matvec, default_kernel_matches_float64_at_random_shapes) {
    NEED_GPU();
    unsetenv("FERRY_CUDA_TC_MATVEC");
    check_random_shapes(32);
}

/* Same inputs, same bits: the split-K partial sums meet in a fixed order. */
static void check_repeats_identical(void) {
    static const matvec_case shapes[] = {
        {FERRY_DTYPE_F16, 16, 4096, 11008, 1, 1},
        {FERRY_DTYPE_BF16, 7, 520, 4104, 0, 0},
    };
    for (size_t i = 0; i < 2; i++) {
        matvec_operands op = make_operands(&shapes[i]);
        float *first = run_matmul(&op);
        for (int repeat = 0; repeat < 3; repeat++) {
            float *again = run_matmul(&op);
            cr_assert_eq(memcmp(first, again, (size_t)op.shape.n * op.shape.rows * sizeof(float)),
                         0, "call %d of shape %zu differs from the first", repeat + 2, i);
            free(again);
        }
        free(first);
        free_operands(&op);
    }
}

Test(cuda_matvec, repeated_calls_give_identical_bits) {
    NEED_GPU();
    unsetenv("FERRY_CUDA_TC_MATVEC");
    check_repeats_identical();
}

/* A kernel of matvec_tc.cu (cols % 8 == 0): the Llama and odd shapes,
 * random shapes, and the same bits when called again. */
static void check_kernel_everywhere(const char *choice) {
    use_kernel(choice);
    check_cases(llama_and_odd_cases, N_LLAMA_AND_ODD_CASES);
    check_random_shapes(8);
    check_repeats_identical();
    unsetenv("FERRY_CUDA_TC_MATVEC");
}

Test(cuda_matvec, split_k_cluster_kernel_matches_float64_and_repeats_its_bits) {
    NEED_GPU();
    check_kernel_everywhere("split");
}

Test(cuda_matvec, v2_kernel_matches_float64_and_repeats_its_bits) {
    NEED_GPU();
    check_kernel_everywhere("v2");
}

Test(cuda_matvec, v2_two_tiles_per_warp_matches_float64_and_repeats_its_bits) {
    NEED_GPU();
    check_kernel_everywhere("v2m2");
}
