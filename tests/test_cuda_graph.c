/*
 * test_cuda_graph.c — the CUDA backend's recorded graphs (graph_begin /
 * graph_end / graph_launch / graph_free in kernels/ops.h): a replay runs
 * the recorded ops on whatever the buffers hold now, a recording declines
 * to replay once a scratch buffer it used has moved, and a failed op while
 * recording leaves the stream usable.  Skips (and says so) without a GPU.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_fixture.h"

TestSuite(cuda_graph, .init = cuda_fixture_setup, .fini = cuda_fixture_teardown, .timeout = 120);

/* Backend memory holding `n` random values of `dtype` in [-1, 1). */
static void *random_on_gpu(ferry_dtype dtype, size_t n) {
    float *values = malloc(n * sizeof(float));
    void *converted = malloc(n * ferry_dtype_bytes(dtype));
    for (size_t i = 0; i < n; i++) values[i] = test_rand_uniform(&rng, -1.0f, 1.0f);
    ferry_convert_dtype(converted, dtype, values, FERRY_DTYPE_F32, n);
    void *device = NULL;
    cr_assert_eq(gpu->ops->alloc(gpu, n * ferry_dtype_bytes(dtype), &device), FERRY_OK);
    cr_assert_eq(gpu->ops->upload(gpu, device, converted, n * ferry_dtype_bytes(dtype)), FERRY_OK);
    free(values);
    free(converted);
    return device;
}

static float *download(const float *device, size_t n) {
    float *host = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) host[i] = NAN;
    cr_assert_eq(gpu->ops->download(gpu, host, device, n * sizeof(float)), FERRY_OK, "%s",
                 ferry_last_error());
    return host;
}

/* out = silu(x W1^T) * (x W2^T): two matmuls and an elementwise op. */
static void issue_ops(float *out, float *gate, const float *x, const void *w1, const void *w2,
                      int n, int rows, int cols) {
    const ferry_backend_ops *ops = gpu->ops;
    cr_assert_eq(ops->matmul(gpu, gate, x, w1, FERRY_DTYPE_F16, NULL, n, rows, cols, 0), FERRY_OK);
    cr_assert_eq(ops->matmul(gpu, out, x, w2, FERRY_DTYPE_F16, NULL, n, rows, cols, 0), FERRY_OK);
    cr_assert_eq(ops->silu_mul(gpu, out, gate, out, n, rows), FERRY_OK);
}

static void check_replay_on_new_inputs(int n) {
    enum { ROWS = 1000, COLS = 512 };
    const ferry_backend_ops *ops = gpu->ops;
    cr_assert(ops->graph_begin && ops->graph_end && ops->graph_launch && ops->graph_free);
    void *w1 = random_on_gpu(FERRY_DTYPE_F16, (size_t)ROWS * COLS);
    void *w2 = random_on_gpu(FERRY_DTYPE_F16, (size_t)ROWS * COLS);
    float *x = random_on_gpu(FERRY_DTYPE_F32, (size_t)n * COLS);
    float *gate = random_on_gpu(FERRY_DTYPE_F32, (size_t)n * ROWS);
    float *out = random_on_gpu(FERRY_DTYPE_F32, (size_t)n * ROWS);
    /* a direct run first: it grows any scratch the ops need */
    issue_ops(out, gate, x, w1, w2, n, ROWS, COLS);
    cr_assert_eq(ops->synchronize(gpu), FERRY_OK);
    void *graph = NULL;
    cr_assert_eq(ops->graph_begin(gpu), FERRY_OK, "%s", ferry_last_error());
    issue_ops(out, gate, x, w1, w2, n, ROWS, COLS);
    cr_assert_eq(ops->graph_end(gpu, &graph), FERRY_OK, "%s", ferry_last_error());
    cr_assert(graph);
    for (int round = 0; round < 3; round++) {
        /* new inputs, poisoned output: the replay must compute on them */
        float *fresh = random_on_gpu(FERRY_DTYPE_F32, (size_t)n * COLS);
        float *host_x = download(fresh, (size_t)n * COLS);
        cr_assert_eq(ops->upload(gpu, x, host_x, (size_t)n * COLS * sizeof(float)), FERRY_OK);
        float *poison = malloc((size_t)n * ROWS * sizeof(float));
        for (size_t i = 0; i < (size_t)n * ROWS; i++) poison[i] = NAN;
        cr_assert_eq(ops->upload(gpu, out, poison, (size_t)n * ROWS * sizeof(float)), FERRY_OK);
        int replayed = 0;
        cr_assert_eq(ops->graph_launch(gpu, graph, &replayed), FERRY_OK, "%s", ferry_last_error());
        cr_assert(replayed, "a fresh recording declined to replay");
        float *got = download(out, (size_t)n * ROWS);
        issue_ops(out, gate, x, w1, w2, n, ROWS, COLS);
        float *want = download(out, (size_t)n * ROWS);
        for (size_t i = 0; i < (size_t)n * ROWS; i++) {
            cr_assert(isfinite(got[i]), "n=%d round %d: element %zu not written (%g)", n, round,
                      i, (double)got[i]);
            cr_assert_eq(memcmp(&got[i], &want[i], sizeof(float)), 0,
                         "n=%d round %d: element %zu: replay %.9g, direct %.9g", n, round, i,
                         (double)got[i], (double)want[i]);
        }
        free(got), free(want), free(poison), free(host_x);
        ops->free(gpu, fresh);
    }
    ops->graph_free(gpu, graph);
    void *buffers[] = {w1, w2, x, gate, out};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++) ops->free(gpu, buffers[i]);
}

/* 1 and 7 tokens: the matvec kernels; 40: cuBLAS with its converted-x scratch. */
Test(cuda_graph, a_replay_computes_the_recorded_ops_on_new_inputs) {
    NEED_GPU();
    check_replay_on_new_inputs(1);
    check_replay_on_new_inputs(7);
    check_replay_on_new_inputs(40);
}

Test(cuda_graph, a_recording_declines_to_replay_after_its_scratch_moved) {
    NEED_GPU();
    enum { ROWS = 256, COLS = 512, SMALL_N = 40, BIG_N = 512, BIG_COLS = 16384 };
    const ferry_backend_ops *ops = gpu->ops;
    void *w = random_on_gpu(FERRY_DTYPE_F16, (size_t)ROWS * BIG_COLS);
    float *x = random_on_gpu(FERRY_DTYPE_F32, (size_t)BIG_N * BIG_COLS);
    float *out = random_on_gpu(FERRY_DTYPE_F32, (size_t)BIG_N * ROWS);
    void *graph = NULL;
    cr_assert_eq(ops->graph_begin(gpu), FERRY_OK);
    cr_assert_eq(ops->matmul(gpu, out, x, w, FERRY_DTYPE_F16, NULL, SMALL_N, ROWS, COLS, 0),
                 FERRY_OK);
    cr_assert_eq(ops->graph_end(gpu, &graph), FERRY_OK, "%s", ferry_last_error());
    /* 512 x 16384 activations (8M elements) outgrow any scratch reserved up front */
    cr_assert_eq(ops->matmul(gpu, out, x, w, FERRY_DTYPE_F16, NULL, BIG_N, ROWS, BIG_COLS, 0),
                 FERRY_OK, "%s", ferry_last_error());
    int replayed = 1;
    cr_assert_eq(ops->graph_launch(gpu, graph, &replayed), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(replayed, 0, "a recording replayed over a freed scratch buffer");
    cr_assert_eq(ops->synchronize(gpu), FERRY_OK, "%s", ferry_last_error());
    ops->graph_free(gpu, graph);
    ops->free(gpu, w), ops->free(gpu, x), ops->free(gpu, out);
}

Test(cuda_graph, a_failed_op_while_recording_fails_graph_end_and_leaves_the_stream_usable) {
    NEED_GPU();
    const ferry_backend_ops *ops = gpu->ops;
    float *a = random_on_gpu(FERRY_DTYPE_F32, 256), *b = random_on_gpu(FERRY_DTYPE_F32, 256);
    float host[256];
    memset(host, 0, sizeof host);
    void *graph = NULL;
    cr_assert_eq(ops->graph_begin(gpu), FERRY_OK);
    /* an upload waits for the stream: not allowed while it is being recorded */
    ferry_status status = ops->upload(gpu, a, host, sizeof host);
    ferry_status end_status = ops->graph_end(gpu, &graph);
    cr_assert(status != FERRY_OK || end_status != FERRY_OK,
              "a synchronous upload inside a recording went unnoticed");
    cr_assert_null(graph);
    cr_assert_neq(strlen(ferry_last_error()), 0, "no message for the failed recording");
    /* the stream runs work again */
    cr_assert_eq(ops->silu_mul(gpu, a, a, b, 1, 256), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(ops->synchronize(gpu), FERRY_OK, "%s", ferry_last_error());
    ops->free(gpu, a), ops->free(gpu, b);
}
