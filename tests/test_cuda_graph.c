/*
 * test_cuda_graph.c — the CUDA backend's recorded graphs (graph_begin /
 * graph_end / graph_launch / graph_free in kernels/ops.h): a replay runs
 * the recorded ops on whatever the buffers hold now, a recording declines
 * to replay once a scratch buffer it used has moved, a recorded layer of
 * fused ops (norm folded into matmul_multi, rope_kv_store) replays equal
 * to its direct run, and a failed op while recording leaves the stream
 * usable.  Skips (and says so) without a GPU.
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

/* ---------------------------------------- a recorded fused decode layer */

enum { LAYER_HIDDEN = 512, LAYER_HEADS = 8, LAYER_KV_HEADS = 2, LAYER_HEAD_DIM = 64,
       LAYER_INTER = 1024, LAYER_SLOTS = 2, LAYER_CONTEXT = 64, LAYER_MAX_TOKENS = 16 };

typedef struct fused_layer {
    void *wq, *wk, *wv, *wo, *w_gate, *w_up, *w_down;      /* f16 weights */
    float *bq, *bk, *bv, *attn_norm, *mlp_norm, *inv_freq;
    float *x, *y, *normed, *q, *k, *v, *attention, *gate, *up;
    ferry_kv_layer cache;
    ferry_token_batch batch;
} fused_layer;

/* The ops of layer_forward with the fused hooks (runtime/forward.c), on
 * x, into y (y += attention part; y += MLP of rmsnorm(y)). */
static void issue_fused_layer(fused_layer *l, int n) {
    const ferry_backend_ops *ops = gpu->ops;
    const ferry_attention_shape shape = {LAYER_HEADS, LAYER_KV_HEADS, LAYER_HEAD_DIM};
    const int q_width = LAYER_HEADS * LAYER_HEAD_DIM, kv_width = LAYER_KV_HEADS * LAYER_HEAD_DIM;
    l->batch.n_tokens = n;
    const ferry_fused_norm attn_norm = {l->attn_norm, 1e-5f, l->normed, 0};
    float *const qkv[3] = {l->q, l->k, l->v};
    const void *const qkv_weights[3] = {l->wq, l->wk, l->wv};
    const float *const qkv_biases[3] = {l->bq, l->bk, l->bv};
    const int qkv_rows[3] = {q_width, kv_width, kv_width};
    cr_assert_eq(ops->matmul_multi(gpu, 3, qkv, l->x, &attn_norm, qkv_weights, qkv_biases,
                                   qkv_rows, FERRY_DTYPE_F16, n, LAYER_HIDDEN, 0),
                 FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(ops->rope_kv_store(gpu, l->q, l->k, l->v, &l->cache, &l->batch, l->inv_freq,
                                    shape),
                 FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(ops->attention(gpu, l->attention, l->q, &l->cache, &l->batch, shape), FERRY_OK,
                 "%s", ferry_last_error());
    cr_assert_eq(ops->matmul(gpu, l->y, l->attention, l->wo, FERRY_DTYPE_F16, NULL, n,
                             LAYER_HIDDEN, q_width, 1),
                 FERRY_OK, "%s", ferry_last_error());
    const ferry_fused_norm mlp_norm = {l->mlp_norm, 1e-5f, l->normed, 0};
    float *const gate_up[2] = {l->gate, l->up};
    const void *const gate_up_weights[2] = {l->w_gate, l->w_up};
    const int gate_up_rows[2] = {LAYER_INTER, LAYER_INTER};
    cr_assert_eq(ops->matmul_multi(gpu, 2, gate_up, l->y, &mlp_norm, gate_up_weights, NULL,
                                   gate_up_rows, FERRY_DTYPE_F16, n, LAYER_HIDDEN, 1),
                 FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(ops->matmul(gpu, l->y, l->gate, l->w_down, FERRY_DTYPE_F16, NULL, n,
                             LAYER_HIDDEN, LAYER_INTER, 1),
                 FERRY_OK, "%s", ferry_last_error());
}

/* Upload host values into a device buffer. */
static void put(void *device, const void *host, size_t bytes) {
    cr_assert_eq(gpu->ops->upload(gpu, device, host, bytes), FERRY_OK, "%s", ferry_last_error());
}

/* Record the fused layer for n tokens, then for fresh x, y and positions
 * replay it and run it directly: y, q and the cache rows written are
 * equal bit for bit (with PDL on, the default on Hopper, the recording
 * holds programmatic edges). */
static void check_fused_layer_replay(int n) {
    const ferry_backend_ops *ops = gpu->ops;
    const int q_width = LAYER_HEADS * LAYER_HEAD_DIM, kv_width = LAYER_KV_HEADS * LAYER_HEAD_DIM;
    const size_t cache_elements = (size_t)LAYER_SLOTS * LAYER_CONTEXT * kv_width;
    fused_layer l;
    l.wq = random_on_gpu(FERRY_DTYPE_F16, (size_t)q_width * LAYER_HIDDEN);
    l.wk = random_on_gpu(FERRY_DTYPE_F16, (size_t)kv_width * LAYER_HIDDEN);
    l.wv = random_on_gpu(FERRY_DTYPE_F16, (size_t)kv_width * LAYER_HIDDEN);
    l.wo = random_on_gpu(FERRY_DTYPE_F16, (size_t)LAYER_HIDDEN * q_width);
    l.w_gate = random_on_gpu(FERRY_DTYPE_F16, (size_t)LAYER_INTER * LAYER_HIDDEN);
    l.w_up = random_on_gpu(FERRY_DTYPE_F16, (size_t)LAYER_INTER * LAYER_HIDDEN);
    l.w_down = random_on_gpu(FERRY_DTYPE_F16, (size_t)LAYER_HIDDEN * LAYER_INTER);
    l.bq = random_on_gpu(FERRY_DTYPE_F32, q_width);
    l.bk = random_on_gpu(FERRY_DTYPE_F32, kv_width);
    l.bv = random_on_gpu(FERRY_DTYPE_F32, kv_width);
    l.attn_norm = random_on_gpu(FERRY_DTYPE_F32, LAYER_HIDDEN);
    l.mlp_norm = random_on_gpu(FERRY_DTYPE_F32, LAYER_HIDDEN);
    float inv_freq[LAYER_HEAD_DIM / 2];
    for (int j = 0; j < LAYER_HEAD_DIM / 2; j++)
        inv_freq[j] = (float)pow(10000.0, -2.0 * j / LAYER_HEAD_DIM);
    l.inv_freq = random_on_gpu(FERRY_DTYPE_F32, LAYER_HEAD_DIM / 2);
    put(l.inv_freq, inv_freq, sizeof inv_freq);
    const size_t x_count = (size_t)n * LAYER_HIDDEN;
    l.x = random_on_gpu(FERRY_DTYPE_F32, x_count);
    l.y = random_on_gpu(FERRY_DTYPE_F32, x_count);
    l.normed = random_on_gpu(FERRY_DTYPE_F32, x_count);
    l.q = random_on_gpu(FERRY_DTYPE_F32, (size_t)n * q_width);
    l.k = random_on_gpu(FERRY_DTYPE_F32, (size_t)n * kv_width);
    l.v = random_on_gpu(FERRY_DTYPE_F32, (size_t)n * kv_width);
    l.attention = random_on_gpu(FERRY_DTYPE_F32, (size_t)n * q_width);
    l.gate = random_on_gpu(FERRY_DTYPE_F32, (size_t)n * LAYER_INTER);
    l.up = random_on_gpu(FERRY_DTYPE_F32, (size_t)n * LAYER_INTER);
    /* a cache full of finite values: attention reads every earlier position */
    l.cache = (ferry_kv_layer){random_on_gpu(FERRY_DTYPE_F16, cache_elements),
                               random_on_gpu(FERRY_DTYPE_F16, cache_elements), LAYER_SLOTS,
                               LAYER_CONTEXT};
    int32_t positions[LAYER_MAX_TOKENS] = {0}, slots[LAYER_MAX_TOKENS] = {0};
    void *positions_gpu = random_on_gpu(FERRY_DTYPE_F32, LAYER_MAX_TOKENS);
    void *slots_gpu = random_on_gpu(FERRY_DTYPE_F32, LAYER_MAX_TOKENS);
    for (int t = 0; t < n; t++) slots[t] = t % LAYER_SLOTS, positions[t] = t / LAYER_SLOTS;
    put(positions_gpu, positions, sizeof positions);
    put(slots_gpu, slots, sizeof slots);
    l.batch = (ferry_token_batch){n, NULL, positions_gpu, slots_gpu};

    issue_fused_layer(&l, n); /* direct first: grows any scratch */
    cr_assert_eq(ops->synchronize(gpu), FERRY_OK, "%s", ferry_last_error());
    void *graph = NULL;
    cr_assert_eq(ops->graph_begin(gpu), FERRY_OK, "%s", ferry_last_error());
    issue_fused_layer(&l, n);
    cr_assert_eq(ops->graph_end(gpu, &graph), FERRY_OK, "%s", ferry_last_error());
    for (int round = 0; round < 3; round++) {
        float *x_values = malloc(x_count * sizeof(float)), *y_values = malloc(x_count * sizeof(float));
        for (size_t i = 0; i < x_count; i++) {
            x_values[i] = test_rand_uniform(&rng, -3.0f, 3.0f);
            y_values[i] = test_rand_uniform(&rng, -1.0f, 1.0f);
        }
        for (int t = 0; t < n; t++) positions[t] = 8 * (round + 1) + t / LAYER_SLOTS;
        put(positions_gpu, positions, sizeof positions);
        put(l.x, x_values, x_count * sizeof(float));
        put(l.y, y_values, x_count * sizeof(float));
        int replayed = 0;
        cr_assert_eq(ops->graph_launch(gpu, graph, &replayed), FERRY_OK, "%s", ferry_last_error());
        cr_assert(replayed, "a fresh recording declined to replay");
        float *y_replayed = download(l.y, x_count);
        float *q_replayed = download(l.q, (size_t)n * q_width);
        put(l.y, y_values, x_count * sizeof(float));
        issue_fused_layer(&l, n);
        float *y_direct = download(l.y, x_count);
        float *q_direct = download(l.q, (size_t)n * q_width);
        for (size_t i = 0; i < x_count; i++) {
            cr_assert(isfinite(y_replayed[i]), "n=%d round %d: y[%zu] is %g", n, round, i,
                      (double)y_replayed[i]);
            cr_assert_eq(memcmp(&y_replayed[i], &y_direct[i], sizeof(float)), 0,
                         "n=%d round %d: y[%zu]: replay %.9g, direct %.9g", n, round, i,
                         (double)y_replayed[i], (double)y_direct[i]);
        }
        cr_assert_eq(memcmp(q_replayed, q_direct, (size_t)n * q_width * sizeof(float)), 0,
                     "n=%d round %d: the rotated q differs between replay and direct run", n,
                     round);
        free(x_values), free(y_values), free(y_replayed), free(q_replayed), free(y_direct),
            free(q_direct);
    }
    ops->graph_free(gpu, graph);
    void *buffers[] = {l.wq,     l.wk,     l.wv,     l.wo,       l.w_gate,  l.w_up,
                       l.w_down, l.bq,     l.bk,     l.bv,       l.attn_norm, l.mlp_norm,
                       l.inv_freq, l.x,    l.y,      l.normed,   l.q,       l.k,
                       l.v,      l.attention, l.gate, l.up,      l.cache.k, l.cache.v,
                       positions_gpu, slots_gpu};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++) ops->free(gpu, buffers[i]);
}

/* 1, 2: the fused matvec kernels (norm folded in); 3, 16: norm folded into
 * the tensor cores' input rounding; rope_kv_store throughout. */
Test(cuda_graph, a_recorded_fused_layer_replays_equal_to_its_direct_run) {
    NEED_GPU();
    cr_assert(gpu->ops->matmul_multi && gpu->ops->rope_kv_store);
    static const int token_counts[] = {1, 2, 3, 16};
    for (int i = 0; i < 4; i++) check_fused_layer_replay(token_counts[i]);
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
