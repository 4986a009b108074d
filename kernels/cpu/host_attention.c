/*
 * host_attention.c — causal grouped-query attention computed by the host
 * CPU over a KV cache in host memory, f16 or f32: the CPU backend's f32
 * cache, or the pinned cache a GPU session maps when its budget cannot
 * hold it (FlexGen's answer to the link limit: the cache never crosses
 * PCIe, only q and the output do).  Decode reads every cached row once per
 * step, so this is a memory-bandwidth loop: a work item is one token and a
 * block of its KV heads; K and V rows are read once per item, a tile of
 * positions at a time, converted to f32 (F16C where the CPU has it) and
 * used by every query head of the block's groups.  Float32 accumulation,
 * online softmax one tile at a time.  Hot path: allocates nothing (tiles
 * live on the worker's stack).  Each output element's arithmetic depends
 * only on the shape, never on the thread count or on how items are cut.
 */
#include <math.h>

#include "kernels/cpu/cpu.h"

/* Positions per tile: scores for a tile are computed before its softmax
 * update, so the running maximum is rescaled once per tile. */
enum { TILE_POSITIONS = 16 };
/* Most cache elements of one row an item covers (its KV heads x head_dim):
 * 1 KiB of f16 rows read contiguously, tiles of 2 x 32 KiB of floats. */
enum { ITEM_ROW_ELEMENTS = 512 };
/* Most query heads one item serves (running max and sum per head). */
enum { ITEM_QUERY_HEADS = 256 };

typedef struct host_attention_job {
    float *out;
    const float *q;
    const ferry_kv_layer *cache;
    ferry_dtype kv_dtype;
    const int32_t *positions, *slots;
    ferry_attention_shape shape;
    int heads_per_item;         /* KV heads per work item (divides n_kv_heads) */
} host_attention_job;

/* One tile of cached rows for the item's KV heads, decoded to f32:
 * rows[j * width + i] is element i of position first + j.  The item's
 * share of a row is short and rows are far apart (the other heads lie
 * between), too short a run for the hardware prefetcher: each row of the
 * next tile is requested while this tile's row is decoded. */
static void load_tile(float *rows, const void *cache, ferry_dtype dtype, size_t row_elements,
                      size_t base, int first, int n, int width, int n_positions) {
    const size_t element_bytes = ferry_dtype_bytes(dtype);
    const size_t row_bytes = (size_t)width * element_bytes;
    for (int j = 0; j < n; j++) {
        int ahead = first + TILE_POSITIONS + j;
        if (ahead < n_positions) {
            const char *next = (const char *)cache + (base + (size_t)ahead * row_elements) *
                                                          element_bytes;
            for (size_t line = 0; line < row_bytes; line += 64) __builtin_prefetch(next + line);
        }
        cpu_decode_weights(rows + (size_t)j * width, cache,
                           dtype, base + (size_t)(first + j) * row_elements, (size_t)width);
    }
}

/* Items are (token, block of heads_per_item KV heads). */
static void attend_items(void *arg, int begin, int end) {
    const host_attention_job *job = arg;
    const ferry_attention_shape shape = job->shape;
    const int head_dim = shape.head_dim;
    const int group = shape.n_heads / shape.n_kv_heads; /* query heads per KV head */
    const int blocks = shape.n_kv_heads / job->heads_per_item;
    const int width = job->heads_per_item * head_dim;   /* cache elements per row */
    const int n_query = job->heads_per_item * group;    /* query heads of the item */
    const float scale = 1.0f / sqrtf((float)head_dim);
    const size_t row_elements = (size_t)shape.n_kv_heads * head_dim;
    float keys[TILE_POSITIONS * ITEM_ROW_ELEMENTS];
    float values[TILE_POSITIONS * ITEM_ROW_ELEMENTS];
    float scores[ITEM_QUERY_HEADS][TILE_POSITIONS];
    float running_max[ITEM_QUERY_HEADS], running_sum[ITEM_QUERY_HEADS];
    for (int item = begin; item < end; item++) {
        const int t = item / blocks, block = item % blocks;
        const int first_kv_head = block * job->heads_per_item;
        /* query heads of the block: first_kv_head * group onwards, contiguous */
        const size_t head0 = (size_t)t * shape.n_heads + (size_t)first_kv_head * group;
        const float *q = job->q + head0 * head_dim;
        float *out = job->out + head0 * head_dim;
        const size_t base = ((size_t)job->slots[t] * (size_t)job->cache->max_context) *
                                row_elements +
                            (size_t)first_kv_head * head_dim;
        const int n_positions = job->positions[t] + 1;
        for (int h = 0; h < n_query; h++) {
            running_max[h] = -INFINITY;
            running_sum[h] = 0.0f;
        }
        memset(out, 0, (size_t)n_query * head_dim * sizeof(float));
        /* out_h = sum_p softmax_p(q_h . K[p] * scale) V[p], online: per tile,
         * the new maximum m' = max(m, tile scores); out and the sum of
         * weights are rescaled by e^(m - m'), then each position adds its
         * weight e^(score - m') times V[p]. */
        for (int first = 0; first < n_positions; first += TILE_POSITIONS) {
            const int n = n_positions - first < TILE_POSITIONS ? n_positions - first
                                                               : TILE_POSITIONS;
            load_tile(keys, job->cache->k, job->kv_dtype, row_elements, base, first, n, width,
                      n_positions);
            load_tile(values, job->cache->v, job->kv_dtype, row_elements, base, first, n, width,
                      n_positions);
            for (int h = 0; h < n_query; h++) {
                const int kv = h / group;   /* KV head within the block */
                const float *q_head = q + (size_t)h * head_dim;
                float *out_head = out + (size_t)h * head_dim;
                float tile_max = -INFINITY;
                for (int j = 0; j < n; j++) {
                    float score =
                        cpu_dot(q_head, keys + (size_t)j * width + (size_t)kv * head_dim,
                                head_dim) * scale;
                    scores[h][j] = score;
                    if (score > tile_max) tile_max = score;
                }
                if (tile_max > running_max[h]) {
                    float correction = expf(running_max[h] - tile_max); /* 0 on the first tile */
                    running_sum[h] *= correction;
                    for (int i = 0; i < head_dim; i++) out_head[i] *= correction;
                    running_max[h] = tile_max;
                }
                for (int j = 0; j < n; j++) {
                    float weight = expf(scores[h][j] - running_max[h]);
                    running_sum[h] += weight;
                    cpu_axpy(out_head, weight, values + (size_t)j * width + (size_t)kv * head_dim,
                             head_dim);
                }
            }
        }
        /* normalise by the softmax denominator */
        for (int h = 0; h < n_query; h++) {
            float inv_sum = 1.0f / running_sum[h];
            float *out_head = out + (size_t)h * head_dim;
            for (int i = 0; i < head_dim; i++) out_head[i] *= inv_sum;
        }
    }
}

/* KV heads per item: the most that keep a row's share within
 * ITEM_ROW_ELEMENTS and its query heads within ITEM_QUERY_HEADS (a
 * divisor of n_kv_heads), fewer while that leaves under four items per
 * thread.  Depends on the shape and thread count only; results do not
 * depend on it. */
static int pick_heads_per_item(ferry_attention_shape shape, int n_tokens, int n_threads) {
    const int group = shape.n_heads / shape.n_kv_heads;
    int best = 1;
    for (int heads = 1; heads <= shape.n_kv_heads; heads++) {
        if (shape.n_kv_heads % heads != 0) continue;
        if (heads * shape.head_dim > ITEM_ROW_ELEMENTS || heads * group > ITEM_QUERY_HEADS) break;
        if (heads > 1 && (int64_t)n_tokens * (shape.n_kv_heads / heads) < 4 * (int64_t)n_threads)
            break;
        best = heads;
    }
    return best;
}

ferry_status ferry_host_attention(ferry_backend *cpu_backend, float *out, const float *q,
                                  const ferry_kv_layer *cache, ferry_dtype kv_dtype,
                                  const ferry_token_batch *batch, ferry_attention_shape shape) {
    if (!cpu_backend || strcmp(cpu_backend->ops->name, "cpu") != 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "host attention: needs a cpu backend for its threads");
    if (kv_dtype != FERRY_DTYPE_F16 && kv_dtype != FERRY_DTYPE_F32)
        return ferry_fail(FERRY_ERR_UNSUPPORTED,
                          "host attention: KV cache dtype %s (f16 or f32 only)",
                          ferry_dtype_name(kv_dtype));
    if (shape.n_kv_heads <= 0 || shape.n_heads % shape.n_kv_heads != 0 || shape.head_dim <= 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "host attention: %d query heads, %d KV heads, head_dim %d (query heads "
                          "must be a multiple of KV heads)",
                          shape.n_heads, shape.n_kv_heads, shape.head_dim);
    if (shape.head_dim > ITEM_ROW_ELEMENTS || shape.n_heads / shape.n_kv_heads > ITEM_QUERY_HEADS)
        return ferry_fail(FERRY_ERR_UNSUPPORTED,
                          "host attention: head_dim %d or %d query heads per KV head exceed "
                          "%d and %d",
                          shape.head_dim, shape.n_heads / shape.n_kv_heads, ITEM_ROW_ELEMENTS,
                          ITEM_QUERY_HEADS);
    for (int t = 0; t < batch->n_tokens; t++) {
        int slot = batch->slots[t], position = batch->positions[t];
        if (slot < 0 || slot >= cache->n_slots || position < 0 || position >= cache->max_context)
            return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                              "host attention: token %d at slot %d position %d is outside the "
                              "cache (%d slots x %d positions)",
                              t, slot, position, cache->n_slots, cache->max_context);
    }
    cpu_pool *pool = cpu_pool_of(cpu_backend);
    const int heads_per_item =
        pick_heads_per_item(shape, batch->n_tokens, cpu_pool_n_threads(pool));
    int64_t n_items = (int64_t)batch->n_tokens * (shape.n_kv_heads / heads_per_item);
    if (n_items > INT32_MAX)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "host attention: batch too large");
    host_attention_job job = {out,   q, cache, kv_dtype, batch->positions, batch->slots,
                              shape, heads_per_item};
    cpu_pool_run(pool, (int)n_items, 1, attend_items, &job);
    return FERRY_OK;
}
