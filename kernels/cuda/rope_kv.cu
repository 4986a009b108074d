/*
 * rope_kv.cu — the CUDA backend's rotary embedding and KV-cache store ops:
 * rope (q and k rotated in place by each token's position), kv_store (k
 * and v rounded to f16 into the cache at each token's slot and position),
 * and both in one launch, rope_kv_store, for a decode step whose Q/K/V
 * projection did not rotate in its epilogue.  A bad slot or position
 * raises the backend's error flag instead of touching memory.
 * Hot path: no allocation, no host synchronisation.
 */
#include <cuda_fp16.h>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/rope.cuh"

/* ---------------------------------------------------------------- rope */

/* Grid (token, group of ROPE_THREADS pairs); each thread rotates one pair
 * (i, i + half) of one head:
 *   x'[i] = x[i] cos - x[i+half] sin,  x'[i+half] = x[i+half] cos + x[i] sin
 * The angle is formed in float32 as HF does, its sine and cosine in double
 * (fast-math sinf loses accuracy at angles of thousands of radians). */
enum { ROPE_THREADS = 128 };

/* Rotate the pair (x[i], x[i + half]) of one head by position * inv_freq[i]. */
__device__ __forceinline__ float2 rotate_pair(float *x, int i, int half, int32_t position,
                                              const float *inv_freq) {
    return rotate_by(x, i, half, rotation_of(i, position, inv_freq));
}

__global__ void rope_kernel(float *q, float *k, const int32_t *positions, const float *inv_freq,
                            int n_heads, int n_kv_heads, int head_dim) {
    pdl_trigger();
    pdl_wait();
    const int t = blockIdx.x, half = head_dim / 2;
    const int n_pairs = (n_heads + n_kv_heads) * half;
    const int item = blockIdx.y * blockDim.x + threadIdx.x;
    if (item >= n_pairs) return;
    int head = item / half, i = item % half;
    float *x = head < n_heads ? q + ((size_t)t * n_heads + head) * head_dim
                              : k + ((size_t)t * n_kv_heads + (head - n_heads)) * head_dim;
    rotate_pair(x, i, half, positions[t], inv_freq);
}

ferry_status cuda_rope(ferry_backend *backend, float *q, float *k, const ferry_token_batch *batch,
                       const float *inv_freq, ferry_attention_shape shape) {
    if (shape.head_dim % 2 != 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "rope: head_dim %d is odd", shape.head_dim);
    if (batch->n_tokens <= 0) return FERRY_OK;
    int n_pairs = (shape.n_heads + shape.n_kv_heads) * (shape.head_dim / 2);
    dim3 grid(batch->n_tokens, (n_pairs + ROPE_THREADS - 1) / ROPE_THREADS);
    CUDA_TRY(cuda_launch(cuda_state(backend), rope_kernel, grid, ROPE_THREADS, q, k,
                         batch->positions, inv_freq, shape.n_heads, shape.n_kv_heads,
                         shape.head_dim));
    return FERRY_OK;
}

/* ------------------------------------------------------------ kv_store */

/* Grid (token, slice of the row): K[slot][position] = k[t],
 * V[slot][position] = v[t] rounded to f16. */
__global__ void kv_store_kernel(__half *cache_k, __half *cache_v, const float *k, const float *v,
                                const int32_t *positions, const int32_t *slots, int n_slots,
                                int max_context, int row_width, int *error_flag) {
    pdl_trigger();
    pdl_wait();
    const int t = blockIdx.x, slot = slots[t], position = positions[t];
    if (!place_ok(slot, position, n_slots, max_context)) {
        if (threadIdx.x == 0 && blockIdx.y == 0) atomicExch(error_flag, CUDA_BAD_KV_PLACE);
        return;
    }
    size_t at = ((size_t)slot * max_context + position) * row_width;
    for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < row_width;
         i += gridDim.y * blockDim.x) {
        cache_k[at + i] = __float2half_rn(k[(size_t)t * row_width + i]);
        cache_v[at + i] = __float2half_rn(v[(size_t)t * row_width + i]);
    }
}

ferry_status cuda_kv_store(ferry_backend *backend, ferry_kv_layer *cache, const float *k,
                           const float *v, const ferry_token_batch *batch,
                           ferry_attention_shape shape) {
    cuda_backend *state = cuda_state(backend);
    if (batch->n_tokens <= 0) return FERRY_OK;
    const int row_width = shape.n_kv_heads * shape.head_dim;
    dim3 grid(batch->n_tokens, (row_width + 255) / 256);
    CUDA_TRY(cuda_launch(state, kv_store_kernel, grid, 256, (__half *)cache->k,
                         (__half *)cache->v, k, v, batch->positions, batch->slots, cache->n_slots,
                         cache->max_context, row_width, state->error_flag));
    return FERRY_OK;
}

/* ------------------------------------------------------- rope_kv_store */

/* rope then kv_store in one launch.  Grid (token, group of ROPE_THREADS
 * items): the items are the (head, i) pairs (i, i + half) of the query
 * heads, then of the key heads, then of the value heads.  A query pair is
 * rotated in place; a key pair is rotated in place and stored (f16) into
 * the K cache; a value pair is stored into the V cache.  A bad (slot,
 * position) raises the error flag and stores nothing, as kv_store. */
__global__ void rope_kv_store_kernel(float *q, float *k, const float *v, __half *cache_k,
                                     __half *cache_v, const int32_t *positions,
                                     const int32_t *slots, const float *inv_freq, int n_heads,
                                     int n_kv_heads, int head_dim, int n_slots, int max_context,
                                     int *error_flag, int early) {
    pdl_trigger();
    const int t = blockIdx.x, half = head_dim / 2;
    const int item = blockIdx.y * blockDim.x + threadIdx.x;
    if (item >= (n_heads + 2 * n_kv_heads) * half) return; /* (item 0 always waits) */
    const int head = item / half, i = item % half;
    if (!early) pdl_wait();
    const int slot = slots[t], position = positions[t];
    /* a query or key pair's rotation: with early, its sine and cosine are
     * formed while the kernel before (the Q/K/V projection) still runs
     * (positions and inv_freq are written by no kernel, launch.cuh) */
    const float2 rotation =
        head < n_heads + n_kv_heads ? rotation_of(i, position, inv_freq) : make_float2(1.0f, 0.0f);
    if (early) pdl_wait();
    const bool place = place_ok(slot, position, n_slots, max_context);
    if (!place && item == 0) atomicExch(error_flag, CUDA_BAD_KV_PLACE);
    const size_t row_width = (size_t)n_kv_heads * head_dim;
    const size_t cache_row = place ? ((size_t)slot * max_context + position) * row_width : 0;
    if (head < n_heads) {
        rotate_by(q + ((size_t)t * n_heads + head) * head_dim, i, half, rotation);
    } else if (head < n_heads + n_kv_heads) {
        const int kv_head = head - n_heads;
        const float2 rotated =
            rotate_by(k + ((size_t)t * n_kv_heads + kv_head) * head_dim, i, half, rotation);
        if (place) {
            __half *dst = cache_k + cache_row + (size_t)kv_head * head_dim;
            dst[i] = __float2half_rn(rotated.x);
            dst[i + half] = __float2half_rn(rotated.y);
        }
    } else if (place) {
        const int kv_head = head - n_heads - n_kv_heads;
        const float *src = v + ((size_t)t * n_kv_heads + kv_head) * head_dim;
        __half *dst = cache_v + cache_row + (size_t)kv_head * head_dim;
        dst[i] = __float2half_rn(src[i]);
        dst[i + half] = __float2half_rn(src[i + half]);
    }
}

ferry_status cuda_rope_kv_store(ferry_backend *backend, float *q, float *k, const float *v,
                                ferry_kv_layer *cache, const ferry_token_batch *batch,
                                const float *inv_freq, ferry_attention_shape shape) {
    cuda_backend *state = cuda_state(backend);
    if (shape.head_dim % 2 != 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "rope: head_dim %d is odd", shape.head_dim);
    if (batch->n_tokens <= 0) return FERRY_OK;
    if (!(state->fuse & CUDA_FUSE_ROPEKV)) { /* measuring: the two kernels */
        FERRY_TRY(cuda_rope(backend, q, k, batch, inv_freq, shape));
        return cuda_kv_store(backend, cache, k, v, batch, shape);
    }
    const int n_items = (shape.n_heads + 2 * shape.n_kv_heads) * (shape.head_dim / 2);
    dim3 grid(batch->n_tokens, (n_items + ROPE_THREADS - 1) / ROPE_THREADS);
    CUDA_TRY(cuda_launch(state, rope_kv_store_kernel, grid, ROPE_THREADS, q, k, v,
                         (__half *)cache->k, (__half *)cache->v, batch->positions, batch->slots,
                         inv_freq, shape.n_heads, shape.n_kv_heads, shape.head_dim,
                         cache->n_slots, cache->max_context, state->error_flag,
                         (state->fuse & CUDA_FUSE_KV_EARLY) ? 1 : 0));
    return FERRY_OK;
}
