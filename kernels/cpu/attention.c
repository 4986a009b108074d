/*
 * attention.c — the CPU backend's attention ops: rotary position
 * embedding, storing K/V into the cache, and grouped-query causal
 * attention over the cache.  Plain C, float32 accumulation.  Hot path:
 * nothing allocates; the softmax is computed online (one pass over the
 * keys), so no buffer of scores is needed whatever the context length.
 */
#include <math.h>

#include "kernels/cpu/cpu.h"

/* ---------------------------------------------------------------- rope */

typedef struct rope_job {
    float *q, *k;
    const int32_t *positions;
    const float *inv_freq;
    ferry_attention_shape shape;
} rope_job;

/* Frequencies whose cos/sin are computed at once per token (stack bound). */
enum { ROPE_CHUNK = 64 };

/* Rotate frequencies [first, first + n) of each pair (x[i], x[i + half])
 * of every head by the angle whose cos/sin are c[i - first], s[i - first]
 * (HF's rotate_half layout):
 *   x'[i]        = x[i] cos - x[i+half] sin
 *   x'[i + half] = x[i+half] cos + x[i] sin */
static void rotate_heads(float *x, int n_heads, int head_dim, int first, int n, const float *c,
                         const float *s) {
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *head = x + (size_t)h * head_dim;
        for (int j = 0; j < n; j++) {
            int i = first + j;
            float x0 = head[i], x1 = head[i + half];
            head[i] = x0 * c[j] - x1 * s[j];
            head[i + half] = x1 * c[j] + x0 * s[j];
        }
    }
}

/* The angles depend only on the position: compute each cos/sin once per
 * token and apply it to every query and key head. */
static void rope_tokens(void *arg, int begin, int end) {
    const rope_job *job = arg;
    const ferry_attention_shape shape = job->shape;
    const int half = shape.head_dim / 2;
    float c[ROPE_CHUNK], s[ROPE_CHUNK];
    for (int t = begin; t < end; t++) {
        float position = (float)job->positions[t];
        float *q = job->q + (size_t)t * shape.n_heads * shape.head_dim;
        float *k = job->k + (size_t)t * shape.n_kv_heads * shape.head_dim;
        for (int first = 0; first < half; first += ROPE_CHUNK) {
            int n = half - first < ROPE_CHUNK ? half - first : ROPE_CHUNK;
            for (int j = 0; j < n; j++) {
                /* the angle in float32, as HF computes inv_freq @ position_ids */
                float angle = position * job->inv_freq[first + j];
                c[j] = cosf(angle);
                s[j] = sinf(angle);
            }
            rotate_heads(q, shape.n_heads, shape.head_dim, first, n, c, s);
            rotate_heads(k, shape.n_kv_heads, shape.head_dim, first, n, c, s);
        }
    }
}

ferry_status cpu_rope(ferry_backend *backend, float *q, float *k, const ferry_token_batch *batch,
                      const float *inv_freq, ferry_attention_shape shape) {
    if (shape.head_dim % 2 != 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "rope: head_dim %d is odd", shape.head_dim);
    rope_job job = {q, k, batch->positions, inv_freq, shape};
    cpu_pool_run(cpu_pool_of(backend), batch->n_tokens, 4, rope_tokens, &job);
    return FERRY_OK;
}

/* ------------------------------------------------------------ kv_store */

/* Offset in floats of (slot, position, head 0) in a cache layer. */
static size_t cache_offset(const ferry_kv_layer *cache, int slot, int position,
                           ferry_attention_shape shape) {
    size_t row = (size_t)slot * (size_t)cache->max_context + (size_t)position;
    return row * (size_t)shape.n_kv_heads * (size_t)shape.head_dim;
}

static ferry_status check_token_place(const ferry_kv_layer *cache, const ferry_token_batch *batch,
                                      int t, const char *op) {
    int slot = batch->slots[t], position = batch->positions[t];
    if (slot < 0 || slot >= cache->n_slots || position < 0 || position >= cache->max_context)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "%s: token %d at slot %d position %d is outside the cache "
                          "(%d slots x %d positions)",
                          op, t, slot, position, cache->n_slots, cache->max_context);
    return FERRY_OK;
}

ferry_status cpu_kv_store(ferry_backend *backend, ferry_kv_layer *cache, const float *k,
                          const float *v, const ferry_token_batch *batch,
                          ferry_attention_shape shape) {
    (void)backend;
    size_t row_floats = (size_t)shape.n_kv_heads * shape.head_dim;
    for (int t = 0; t < batch->n_tokens; t++)
        FERRY_TRY(check_token_place(cache, batch, t, "kv_store"));
    for (int t = 0; t < batch->n_tokens; t++) {
        /* K[slot][position] = k[t];  V[slot][position] = v[t] */
        size_t at = cache_offset(cache, batch->slots[t], batch->positions[t], shape);
        memcpy((float *)cache->k + at, k + (size_t)t * row_floats, row_floats * sizeof(float));
        memcpy((float *)cache->v + at, v + (size_t)t * row_floats, row_floats * sizeof(float));
    }
    return FERRY_OK;
}

/* ----------------------------------------------------------- attention */

typedef struct attention_job {
    float *out;
    const float *q;
    const ferry_kv_layer *cache;
    const ferry_token_batch *batch;
    ferry_attention_shape shape;
} attention_job;

/* Work items are (token, query head) pairs. */
static void attend_heads(void *arg, int begin, int end) {
    const attention_job *job = arg;
    const ferry_attention_shape shape = job->shape;
    const int head_dim = shape.head_dim;
    const int group = shape.n_heads / shape.n_kv_heads; /* query heads per KV head */
    const float scale = 1.0f / sqrtf((float)head_dim);
    const size_t kv_row_floats = (size_t)shape.n_kv_heads * head_dim;
    for (int item = begin; item < end; item++) {
        int t = item / shape.n_heads, h = item % shape.n_heads;
        int kv_head = h / group;
        const float *q = job->q + ((size_t)t * shape.n_heads + h) * head_dim;
        float *out = job->out + ((size_t)t * shape.n_heads + h) * head_dim;
        size_t base = cache_offset(job->cache, job->batch->slots[t], 0, shape) +
                      (size_t)kv_head * head_dim;
        const float *keys = (const float *)job->cache->k + base;
        const float *values = (const float *)job->cache->v + base;
        /* out = sum_p softmax_p(q . K[p] * scale) V[p] over p = 0 .. position,
         * computed online: keep the running maximum score m, the running
         * sum l of e^(score - m), and out = sum e^(score - m) V[p]; when m
         * grows, rescale l and out by e^(m_old - m_new). */
        float running_max = -INFINITY, running_sum = 0.0f;
        for (int i = 0; i < head_dim; i++) out[i] = 0.0f;
        int last = job->batch->positions[t];
        for (int p = 0; p <= last; p++) {
            const float *key = keys + (size_t)p * kv_row_floats;
            const float *value = values + (size_t)p * kv_row_floats;
            float score = cpu_dot(q, key, head_dim) * scale;
            if (score > running_max) {
                float correction = expf(running_max - score); /* 0 on the first key */
                running_sum *= correction;
                for (int i = 0; i < head_dim; i++) out[i] *= correction;
                running_max = score;
            }
            float weight = expf(score - running_max);
            running_sum += weight;
            for (int i = 0; i < head_dim; i++) out[i] += weight * value[i];
        }
        /* normalise: divide by the softmax denominator */
        float inv_sum = 1.0f / running_sum;
        for (int i = 0; i < head_dim; i++) out[i] *= inv_sum;
    }
}

ferry_status cpu_attention(ferry_backend *backend, float *out, const float *q,
                           const ferry_kv_layer *cache, const ferry_token_batch *batch,
                           ferry_attention_shape shape) {
    if (shape.n_kv_heads <= 0 || shape.n_heads % shape.n_kv_heads != 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "attention: %d query heads are not a multiple of %d KV heads",
                          shape.n_heads, shape.n_kv_heads);
    for (int t = 0; t < batch->n_tokens; t++)
        FERRY_TRY(check_token_place(cache, batch, t, "attention"));
    int64_t n_items = (int64_t)batch->n_tokens * shape.n_heads;
    if (n_items > INT32_MAX)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "attention: batch too large");
    attention_job job = {out, q, cache, batch, shape};
    cpu_pool_run(cpu_pool_of(backend), (int)n_items, 1, attend_heads, &job);
    return FERRY_OK;
}
