/*
 * rope.cuh — the rotary embedding's per-pair math, shared by the rope
 * kernels (attention.cu) and the Q/K/V projection that rotates in its
 * epilogue (matmul.cu), so both round the same way.  Device code only.
 */
#ifndef FERRY_KERNELS_CUDA_ROPE_CUH
#define FERRY_KERNELS_CUDA_ROPE_CUH

#include <stdint.h>

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

#endif /* FERRY_KERNELS_CUDA_ROPE_CUH */
