/*
 * warp.cuh — the warp-level pieces the CUDA kernels share: the sum of a
 * value over a warp's 32 lanes (butterfly shuffles: every lane gets the
 * total, added in the same order on every lane) and over a block, and
 * the tensor-core step
 * D += A·B for a 16x16 A (row-major) and a 16x8 B (column-major) in f16 or
 * bf16 with f32 accumulation (mma.sync m16n8k16), and the packing of two
 * floats into the 32-bit register pair those operands travel in, and
 * from_float, a float rounded to f16 or bf16.  The fragment layouts are
 * described where the kernels load them.
 */
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

/* float, double or int: whatever __shfl_xor_sync carries. */
template <typename T> __device__ __forceinline__ T warp_sum(T value) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    return value;
}

/* The sum of a value over a block of THREADS threads (a multiple of 32):
 * warp sums, then those added in warp order; every thread gets the total.
 * Called by all threads of the block. */
template <int THREADS> __device__ __forceinline__ float block_sum(float value) {
    __shared__ float warp_sums[THREADS / 32];
    value = warp_sum(value);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = value;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < THREADS / 32; w++) total += warp_sums[w];
    __syncthreads(); /* warp_sums may be reused by the next call */
    return total;
}

template <typename T> __device__ __forceinline__ T from_float(float f);
template <> __device__ __forceinline__ __half from_float<__half>(float f) {
    return __float2half_rn(f);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float f) {
    return __float2bfloat16_rn(f);
}

template <typename T> struct mma_m16n8k16;

template <> struct mma_m16n8k16<__half> {
    static __device__ __forceinline__ void run(float *c, const uint32_t *a, uint32_t b0,
                                               uint32_t b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&h);
    }
};

template <> struct mma_m16n8k16<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float *c, const uint32_t *a, uint32_t b0,
                                               uint32_t b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&h);
    }
};
