/*
 * rope.cuh — the rotary embedding's per-pair math, shared by the rope
 * kernels (rope_kv.cu) and the Q/K/V projections that rotate in their
 * epilogue (fused.cu, matvec_mma.cu), so all round the same way; and what
 * those epilogues need to rotate a pair and store it in the KV cache
 * (rope_store).  Included by .cu files only.
 */
#ifndef FERRY_KERNELS_CUDA_ROPE_CUH
#define FERRY_KERNELS_CUDA_ROPE_CUH

#include <cuda_fp16.h>
#include <stdint.h>

#include "kernels/cuda/cuda_backend.h"

/* (cos, sin) of the angle position * inv_freq[i]. */
__device__ __forceinline__ float2 rotation_of(int i, int32_t position, const float *inv_freq) {
    float angle = (float)position * inv_freq[i];
    double sine, cosine;
    sincos((double)angle, &sine, &cosine);
    return make_float2((float)cosine, (float)sine);
}

/* The pair (x0, x1) = (x[i], x[i + half]) rotated by (cos, sin):
 *   x0' = x0 cos - x1 sin,  x1' = x1 cos + x0 sin */
__device__ __forceinline__ float2 rotated_pair(float x0, float x1, float2 rotation) {
    return make_float2(x0 * rotation.x - x1 * rotation.y, x1 * rotation.x + x0 * rotation.y);
}

/* Rotate the pair (x[i], x[i + half]) of one head in place; the rotated
 * values are also returned (rope_kv_store stores them). */
__device__ __forceinline__ float2 rotate_by(float *x, int i, int half, float2 rotation) {
    const float2 rotated = rotated_pair(x[i], x[i + half], rotation);
    x[i] = rotated.x;
    x[i + half] = rotated.y;
    return rotated;
}

/* Is (slot, position) inside a cache of n_slots x max_context? */
__device__ __forceinline__ bool place_ok(int slot, int position, int n_slots, int max_context) {
    return slot >= 0 && slot < n_slots && position >= 0 && position < max_context;
}

/* A Q/K/V epilogue's view of the batch and the f16 KV cache: the rows of
 * matrix 0 (q), 1 (k) and 2 (v) of `width` each, head by head, pairs
 * (j, j + half) of a head rotated (q, k) and stored (k, v). */
struct rope_store {
    const int32_t *positions, *slots;
    const float *inv_freq;
    __half *cache_k, *cache_v;
    int n_slots, max_context;
    int *error_flag;

    /* The pair (a, b) of rows (j, j + half) of `head`, for token t of
     * matrix m: rotated unless m is v; q's is returned for the caller to
     * store (*to_q = true), k's and v's go into the cache row of the
     * token's (slot, position) of kv_width elements, a bad place raising
     * the error flag as kv_store does. */
    __device__ __forceinline__ float2 place_pair(int m, int t, int head, int j, int half,
                                                 int kv_width, float a, float b,
                                                 bool *to_q) const {
        const int position = positions[t];
        const float2 pair = m == 2 ? make_float2(a, b)
                                   : rotated_pair(a, b, rotation_of(j, position, inv_freq));
        *to_q = m == 0;
        if (m == 0) return pair;
        const int slot = slots[t];
        if (!place_ok(slot, position, n_slots, max_context)) {
            atomicExch(error_flag, CUDA_BAD_KV_PLACE);
            return pair;
        }
        __half *dst = (m == 1 ? cache_k : cache_v) +
                      ((size_t)slot * max_context + position) * kv_width + (size_t)head * 2 * half;
        dst[j] = __float2half_rn(pair.x);
        dst[j + half] = __float2half_rn(pair.y);
        return pair;
    }
};

/* The rope_store of a batch, a cache (f16) and the model's frequencies. */
static inline rope_store rope_store_of(const cuda_backend *state, const ferry_kv_layer *cache,
                                       const ferry_token_batch *batch, const float *inv_freq) {
    rope_store store;
    store.positions = batch->positions;
    store.slots = batch->slots;
    store.inv_freq = inv_freq;
    store.cache_k = static_cast<__half *>(cache->k);
    store.cache_v = static_cast<__half *>(cache->v);
    store.n_slots = cache->n_slots;
    store.max_context = cache->max_context;
    store.error_flag = state->error_flag;
    return store;
}

#endif /* FERRY_KERNELS_CUDA_ROPE_CUH */
