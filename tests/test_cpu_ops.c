/*
 * test_cpu_ops.c — each op of the CPU backend against a float64 version
 * written here from the equations, on random shapes (odd sizes, several
 * head sizes and GQA ratios) and every weight dtype.  Outputs are
 * poisoned with NaN first and every element is checked.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "helpers.h"
#include "kernels/ops.h"

static const ferry_dtype all_dtypes[] = {FERRY_DTYPE_F32, FERRY_DTYPE_F16, FERRY_DTYPE_BF16};

static ferry_backend *make_cpu(int n_threads) {
    ferry_backend *backend = NULL;
    ferry_status status = ferry_backend_cpu_new(n_threads, &backend);
    cr_assert_eq(status, FERRY_OK, "cpu backend: %s", ferry_last_error());
    return backend;
}

static float *random_floats(uint64_t *rng, size_t n, float lo, float hi) {
    float *data = malloc(n * sizeof *data + 1);
    test_fill_uniform(rng, data, n, lo, hi);
    return data;
}

static void poison(float *data, size_t n) {
    for (size_t i = 0; i < n; i++) data[i] = NAN;
}

/* Weights stored in `dtype`, plus the exact float64 values they hold. */
static void *weights_in(ferry_dtype dtype, const float *values, size_t n, double **out_exact) {
    void *stored = malloc(n * ferry_dtype_bytes(dtype) + 1);
    ferry_convert_dtype(stored, dtype, values, FERRY_DTYPE_F32, n);
    double *exact = malloc(n * sizeof *exact + 1);
    for (size_t i = 0; i < n; i++) exact[i] = ferry_load_f32(stored, dtype, i);
    *out_exact = exact;
    return stored;
}

/* Every element within its tolerance (NaN never is). */
static void expect_close(const char *what, const float *got, const double *want,
                         const double *tolerance, double common_tolerance, size_t n) {
    size_t n_bad = 0, first_bad = 0;
    for (size_t i = 0; i < n; i++) {
        double tol = tolerance ? tolerance[i] : common_tolerance;
        if (!(fabs((double)got[i] - want[i]) <= tol)) {
            if (n_bad++ == 0) first_bad = i;
        }
    }
    cr_assert_eq(n_bad, 0, "%s: %zu of %zu elements off; first at %zu: got %.9g want %.9g", what,
                 n_bad, n, first_bad, (double)got[first_bad], want[first_bad]);
}

Test(cpu_ops, embed_copies_the_rows_of_each_token_in_every_dtype) {
    uint64_t rng = test_seed();
    ferry_backend *backend = make_cpu(2);
    for (size_t d = 0; d < 3; d++) {
        int vocab = test_rand_int(&rng, 5, 300), dim = test_rand_int(&rng, 1, 200);
        int n = test_rand_int(&rng, 1, 40);
        float *table_values = random_floats(&rng, (size_t)vocab * dim, -2, 2);
        double *exact;
        void *table = weights_in(all_dtypes[d], table_values, (size_t)vocab * dim, &exact);
        int32_t *tokens = malloc(sizeof *tokens * (size_t)n);
        for (int t = 0; t < n; t++) tokens[t] = test_rand_int(&rng, 0, vocab - 1);
        ferry_token_batch batch = {.n_tokens = n, .tokens = tokens};
        float *out = malloc(sizeof *out * (size_t)n * dim);
        poison(out, (size_t)n * dim);
        cr_assert_eq(backend->ops->embed(backend, out, table, all_dtypes[d], &batch, dim), FERRY_OK);
        double *want = malloc(sizeof *want * (size_t)n * dim);
        for (int t = 0; t < n; t++)
            for (int i = 0; i < dim; i++)
                want[(size_t)t * dim + i] = exact[(size_t)tokens[t] * dim + i];
        expect_close(ferry_dtype_name(all_dtypes[d]), out, want, NULL, 0.0, (size_t)n * dim);
        free(table_values), free(exact), free(table), free(tokens), free(out), free(want);
    }
    ferry_backend_free(backend);
}

Test(cpu_ops, rmsnorm_matches_float64_also_in_place) {
    uint64_t rng = test_seed();
    ferry_backend *backend = make_cpu(2);
    for (int round = 0; round < 6; round++) {
        int n = test_rand_int(&rng, 1, 37), dim = test_rand_int(&rng, 1, 999);
        float eps = round % 2 ? 1e-5f : 1e-6f;
        float *x = random_floats(&rng, (size_t)n * dim, -3, 3);
        float *weight = random_floats(&rng, (size_t)dim, -1.5f, 1.5f);
        double *want = malloc(sizeof *want * (size_t)n * dim);
        for (int t = 0; t < n; t++) {
            double sum_squares = 0;
            for (int i = 0; i < dim; i++) sum_squares += (double)x[t * dim + i] * x[t * dim + i];
            double inv_rms = 1.0 / sqrt(sum_squares / dim + eps);
            for (int i = 0; i < dim; i++)
                want[(size_t)t * dim + i] = x[(size_t)t * dim + i] * inv_rms * weight[i];
        }
        float *out = malloc(sizeof *out * (size_t)n * dim);
        poison(out, (size_t)n * dim);
        int in_place = round >= 3;
        if (in_place) memcpy(out, x, sizeof *out * (size_t)n * dim);
        cr_assert_eq(backend->ops->rmsnorm(backend, out, in_place ? out : x, weight, n, dim, eps),
                     FERRY_OK);
        expect_close("rmsnorm", out, want, NULL, 2e-5 * 3 * 1.5 * 2, (size_t)n * dim);
        free(x), free(weight), free(want), free(out);
    }
    ferry_backend_free(backend);
}

/* One random matmul: dtype, with or without bias, accumulate or not. */
static void check_matmul(ferry_backend *backend, uint64_t *rng, ferry_dtype dtype, int n, int rows,
                         int cols, int with_bias, int accumulate) {
    float *x = random_floats(rng, (size_t)n * cols, -1, 1);
    float *w_values = random_floats(rng, (size_t)rows * cols, -1, 1);
    double *w;
    void *w_stored = weights_in(dtype, w_values, (size_t)rows * cols, &w);
    float *bias = with_bias ? random_floats(rng, (size_t)rows, -1, 1) : NULL;
    float *out = malloc(sizeof *out * (size_t)n * rows);
    float *residual = random_floats(rng, (size_t)n * rows, -4, 4);
    if (accumulate) memcpy(out, residual, sizeof *out * (size_t)n * rows);
    else poison(out, (size_t)n * rows);
    double *want = malloc(sizeof *want * (size_t)n * rows);
    double *tol = malloc(sizeof *tol * (size_t)n * rows);
    for (int t = 0; t < n; t++)
        for (int r = 0; r < rows; r++) {
            double sum = 0, magnitude = 0;
            for (int c = 0; c < cols; c++) {
                double term = (double)x[(size_t)t * cols + c] * w[(size_t)r * cols + c];
                sum += term;
                magnitude += fabs(term);
            }
            if (bias) sum += bias[r], magnitude += fabs(bias[r]);
            if (accumulate) sum += residual[(size_t)t * rows + r], magnitude += 4;
            want[(size_t)t * rows + r] = sum;
            tol[(size_t)t * rows + r] = 2e-6 * magnitude + 1e-6;
        }
    ferry_status status = backend->ops->matmul(backend, out, x, w_stored, dtype, bias, n, rows,
                                               cols, accumulate);
    cr_assert_eq(status, FERRY_OK);
    char what[128];
    snprintf(what, sizeof what, "matmul %s n=%d rows=%d cols=%d bias=%d accumulate=%d",
             ferry_dtype_name(dtype), n, rows, cols, with_bias, accumulate);
    expect_close(what, out, want, tol, 0, (size_t)n * rows);
    free(x), free(w_values), free(w), free(w_stored), free(bias), free(out), free(residual);
    free(want), free(tol);
}

Test(cpu_ops, matmul_matches_float64_for_every_dtype_bias_and_accumulate) {
    uint64_t rng = test_seed();
    ferry_backend *backend = make_cpu(2);
    for (size_t d = 0; d < 3; d++)
        for (int variant = 0; variant < 4; variant++)
            check_matmul(backend, &rng, all_dtypes[d], test_rand_int(&rng, 1, 70),
                         test_rand_int(&rng, 1, 150), test_rand_int(&rng, 1, 1100), variant & 1,
                         variant >> 1);
    ferry_backend_free(backend);
}

Test(cpu_ops, matmul_result_does_not_depend_on_thread_count) {
    uint64_t rng = test_seed();
    int n = 9, rows = 131, cols = 517;
    float *x = random_floats(&rng, (size_t)n * cols, -1, 1);
    float *w = random_floats(&rng, (size_t)rows * cols, -1, 1);
    float *reference = NULL;
    for (int threads = 1; threads <= 3; threads++) {
        ferry_backend *backend = make_cpu(threads);
        float *out = malloc(sizeof *out * (size_t)n * rows);
        poison(out, (size_t)n * rows);
        cr_assert_eq(backend->ops->matmul(backend, out, x, w, FERRY_DTYPE_F32, NULL, n, rows,
                                          cols, 0),
                     FERRY_OK);
        if (!reference) reference = out;
        else {
            cr_assert_eq(memcmp(reference, out, sizeof *out * (size_t)n * rows), 0,
                         "%d threads differ from 1", threads);
            free(out);
        }
        ferry_backend_free(backend);
    }
    free(reference), free(x), free(w);
}

Test(cpu_ops, silu_mul_matches_float64_also_in_place) {
    uint64_t rng = test_seed();
    ferry_backend *backend = make_cpu(2);
    int n = test_rand_int(&rng, 1, 9), dim = test_rand_int(&rng, 1, 3001);
    size_t total = (size_t)n * dim;
    float *gate = random_floats(&rng, total, -12, 12);
    float *up = random_floats(&rng, total, -3, 3);
    double *want = malloc(sizeof *want * total);
    for (size_t i = 0; i < total; i++) want[i] = gate[i] / (1.0 + exp(-(double)gate[i])) * up[i];
    float *out = malloc(sizeof *out * total);
    poison(out, total);
    cr_assert_eq(backend->ops->silu_mul(backend, out, gate, up, n, dim), FERRY_OK);
    expect_close("silu_mul", out, want, NULL, 1e-5 * 12 * 3, total);
    cr_assert_eq(backend->ops->silu_mul(backend, gate, gate, up, n, dim), FERRY_OK);
    expect_close("silu_mul in place", gate, want, NULL, 1e-5 * 12 * 3, total);
    free(gate), free(up), free(want), free(out);
    ferry_backend_free(backend);
}

static const int head_dims[] = {16, 64, 128};
static const int gqa_ratios[] = {1, 2, 4};

Test(cpu_ops, rope_matches_float64_rotation_for_each_head_size) {
    uint64_t rng = test_seed();
    ferry_backend *backend = make_cpu(2);
    for (int hd = 0; hd < 3; hd++) {
        int head_dim = head_dims[hd], half = head_dim / 2;
        int n_kv_heads = test_rand_int(&rng, 1, 3), n_heads = n_kv_heads * gqa_ratios[hd];
        int n = test_rand_int(&rng, 1, 20);
        ferry_attention_shape shape = {n_heads, n_kv_heads, head_dim};
        float *inv_freq = malloc(sizeof *inv_freq * (size_t)half);
        for (int i = 0; i < half; i++) inv_freq[i] = (float)pow(10000.0, -2.0 * i / head_dim);
        int32_t *positions = malloc(sizeof *positions * (size_t)n);
        for (int t = 0; t < n; t++) positions[t] = test_rand_int(&rng, 0, 400);
        ferry_token_batch batch = {.n_tokens = n, .positions = positions};
        size_t q_count = (size_t)n * n_heads * head_dim, k_count = (size_t)n * n_kv_heads * head_dim;
        float *q = random_floats(&rng, q_count, -1, 1), *k = random_floats(&rng, k_count, -1, 1);
        double *want_q = malloc(sizeof(double) * q_count), *want_k = malloc(sizeof(double) * k_count);
        for (int pass = 0; pass < 2; pass++) {
            const float *x = pass ? k : q;
            double *want = pass ? want_k : want_q;
            int heads = pass ? n_kv_heads : n_heads;
            for (int t = 0; t < n; t++)
                for (int h = 0; h < heads; h++) {
                    size_t base = ((size_t)t * heads + h) * head_dim;
                    for (int i = 0; i < half; i++) {
                        double angle = positions[t] * (double)inv_freq[i];
                        double x0 = x[base + i], x1 = x[base + i + half];
                        want[base + i] = x0 * cos(angle) - x1 * sin(angle);
                        want[base + i + half] = x1 * cos(angle) + x0 * sin(angle);
                    }
                }
        }
        cr_assert_eq(backend->ops->rope(backend, q, k, &batch, inv_freq, shape), FERRY_OK);
        /* float32 angles at positions up to 400 carry ~1e-5 absolute error */
        expect_close("rope q", q, want_q, NULL, 1e-4, q_count);
        expect_close("rope k", k, want_k, NULL, 1e-4, k_count);
        free(inv_freq), free(positions), free(q), free(k), free(want_q), free(want_k);
    }
    ferry_backend_free(backend);
}

/* A cache with random contents for n_slots x max_context positions. */
static ferry_kv_layer random_cache(uint64_t *rng, int n_slots, int max_context,
                                   ferry_attention_shape shape) {
    size_t count = (size_t)n_slots * max_context * shape.n_kv_heads * shape.head_dim;
    ferry_kv_layer cache = {random_floats(rng, count, -1, 1), random_floats(rng, count, -1, 1),
                            n_slots, max_context};
    return cache;
}

Test(cpu_ops, kv_store_writes_exactly_the_rows_of_each_slot_and_position) {
    uint64_t rng = test_seed();
    ferry_backend *backend = make_cpu(2);
    ferry_attention_shape shape = {4, 2, 16};
    int n_slots = 3, max_context = 11, n = 5;
    ferry_kv_layer cache = random_cache(&rng, n_slots, max_context, shape);
    size_t row = (size_t)shape.n_kv_heads * shape.head_dim;
    size_t count = (size_t)n_slots * max_context * row;
    float *before_k = malloc(sizeof(float) * count), *before_v = malloc(sizeof(float) * count);
    memcpy(before_k, cache.k, sizeof(float) * count);
    memcpy(before_v, cache.v, sizeof(float) * count);
    int32_t slots[] = {2, 0, 2, 1, 0}, positions[] = {0, 10, 7, 3, 4};
    ferry_token_batch batch = {.n_tokens = n, .slots = slots, .positions = positions};
    float *k = random_floats(&rng, (size_t)n * row, -1, 1), *v = random_floats(&rng, (size_t)n * row, -1, 1);
    cr_assert_eq(backend->ops->kv_store(backend, &cache, k, v, &batch, shape), FERRY_OK);
    for (int s = 0; s < n_slots; s++)
        for (int p = 0; p < max_context; p++) {
            const float *expect_k = before_k + ((size_t)s * max_context + p) * row;
            const float *expect_v = before_v + ((size_t)s * max_context + p) * row;
            for (int t = 0; t < n; t++)
                if (slots[t] == s && positions[t] == p) expect_k = k + t * row, expect_v = v + t * row;
            size_t at = ((size_t)s * max_context + p) * row;
            cr_assert_eq(memcmp((float *)cache.k + at, expect_k, row * sizeof(float)), 0,
                         "K slot %d position %d", s, p);
            cr_assert_eq(memcmp((float *)cache.v + at, expect_v, row * sizeof(float)), 0,
                         "V slot %d position %d", s, p);
        }
    int32_t bad_position[] = {11};
    ferry_token_batch bad = {.n_tokens = 1, .slots = slots, .positions = bad_position};
    cr_assert_eq(backend->ops->kv_store(backend, &cache, k, v, &bad, shape),
                 FERRY_ERR_INVALID_ARGUMENT);
    free(cache.k), free(cache.v), free(before_k), free(before_v), free(k), free(v);
    ferry_backend_free(backend);
}

Test(cpu_ops, attention_matches_float64_softmax_for_gqa_ratios_and_head_sizes) {
    uint64_t rng = test_seed();
    ferry_backend *backend = make_cpu(2);
    for (int hd = 0; hd < 3; hd++)
        for (int g = 0; g < 3; g++) {
            int head_dim = head_dims[hd];
            int n_kv_heads = test_rand_int(&rng, 1, 2), n_heads = n_kv_heads * gqa_ratios[g];
            ferry_attention_shape shape = {n_heads, n_kv_heads, head_dim};
            int n_slots = test_rand_int(&rng, 1, 3), max_context = test_rand_int(&rng, 1, 300);
            ferry_kv_layer cache = random_cache(&rng, n_slots, max_context, shape);
            int n = test_rand_int(&rng, 1, 12);
            int32_t *slots = malloc(sizeof(int32_t) * n), *positions = malloc(sizeof(int32_t) * n);
            for (int t = 0; t < n; t++) {
                slots[t] = test_rand_int(&rng, 0, n_slots - 1);
                positions[t] = test_rand_int(&rng, 0, max_context - 1);
            }
            ferry_token_batch batch = {.n_tokens = n, .slots = slots, .positions = positions};
            size_t q_count = (size_t)n * n_heads * head_dim;
            /* scores of a few units: a peaked but not one-hot softmax */
            float *q = random_floats(&rng, q_count, -1, 1);
            double *want = malloc(sizeof(double) * q_count);
            double *scores = malloc(sizeof(double) * (size_t)max_context);
            size_t kv_row = (size_t)n_kv_heads * head_dim;
            for (int t = 0; t < n; t++)
                for (int h = 0; h < n_heads; h++) {
                    int kv_head = h / (n_heads / n_kv_heads);
                    const float *qh = q + ((size_t)t * n_heads + h) * head_dim;
                    const float *k0 = (const float *)cache.k +
                                      (size_t)slots[t] * max_context * kv_row + kv_head * head_dim;
                    const float *v0 = (const float *)cache.v +
                                      (size_t)slots[t] * max_context * kv_row + kv_head * head_dim;
                    double max_score = -INFINITY, total = 0;
                    for (int p = 0; p <= positions[t]; p++) {
                        double dot = 0;
                        for (int i = 0; i < head_dim; i++) dot += (double)qh[i] * k0[p * kv_row + i];
                        scores[p] = dot / sqrt((double)head_dim);
                        if (scores[p] > max_score) max_score = scores[p];
                    }
                    for (int p = 0; p <= positions[t]; p++) total += exp(scores[p] - max_score);
                    for (int i = 0; i < head_dim; i++) {
                        double sum = 0;
                        for (int p = 0; p <= positions[t]; p++)
                            sum += exp(scores[p] - max_score) / total * v0[p * kv_row + i];
                        want[((size_t)t * n_heads + h) * head_dim + i] = sum;
                    }
                }
            float *out = malloc(sizeof(float) * q_count);
            poison(out, q_count);
            cr_assert_eq(backend->ops->attention(backend, out, q, &cache, &batch, shape), FERRY_OK);
            char what[96];
            snprintf(what, sizeof what, "attention head_dim=%d heads=%d/%d context=%d", head_dim,
                     n_heads, n_kv_heads, max_context);
            expect_close(what, out, want, NULL, 2e-5, q_count);
            free(cache.k), free(cache.v), free(slots), free(positions), free(q), free(want);
            free(scores), free(out);
        }
    ferry_backend_free(backend);
}

Test(cpu_ops, attention_rejects_positions_outside_the_cache) {
    ferry_backend *backend = make_cpu(1);
    uint64_t rng = test_seed();
    ferry_attention_shape shape = {2, 1, 16};
    ferry_kv_layer cache = random_cache(&rng, 2, 8, shape);
    int32_t slots[] = {2}, positions[] = {0};
    ferry_token_batch batch = {.n_tokens = 1, .slots = slots, .positions = positions};
    float q[32] = {0}, out[32];
    cr_assert_eq(backend->ops->attention(backend, out, q, &cache, &batch, shape),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "slot 2") != NULL, "message: %s", ferry_last_error());
    free(cache.k), free(cache.v);
    ferry_backend_free(backend);
}

Test(cpu_ops, backend_rejects_a_negative_thread_count) {
    ferry_backend *backend = NULL;
    cr_assert_eq(ferry_backend_cpu_new(-1, &backend), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_null(backend);
}

Test(cpu_ops, memory_round_trips_through_upload_and_download) {
    ferry_backend *backend = make_cpu(0);
    cr_assert_str_eq(backend->ops->name, "cpu");
    cr_assert_eq(backend->ops->kv_dtype, FERRY_DTYPE_F32);
    unsigned char host[1000], back[1000];
    for (int i = 0; i < 1000; i++) host[i] = (unsigned char)(i * 7);
    void *memory = NULL;
    cr_assert_eq(backend->ops->alloc(backend, sizeof host, &memory), FERRY_OK);
    cr_assert_eq((uintptr_t)memory % 64, 0);
    cr_assert_eq(backend->ops->upload(backend, memory, host, sizeof host), FERRY_OK);
    cr_assert_eq(backend->ops->download(backend, back, memory, sizeof back), FERRY_OK);
    cr_assert_eq(backend->ops->synchronize(backend), FERRY_OK);
    cr_assert_eq(memcmp(host, back, sizeof host), 0);
    backend->ops->free(backend, memory);
    ferry_backend_free(backend);
}

Test(cpu_ops, portable_code_matches_float64_too) {
    /* Each test runs in its own process, so this only affects this one. */
    setenv("FERRY_CPU_PORTABLE", "1", 1);
    uint64_t rng = test_seed();
    ferry_backend *backend = make_cpu(2);
    for (size_t d = 0; d < 3; d++)
        check_matmul(backend, &rng, all_dtypes[d], test_rand_int(&rng, 1, 40),
                     test_rand_int(&rng, 1, 90), test_rand_int(&rng, 1, 700), 1, 1);
    ferry_backend_free(backend);
}
