/*
 * copy_async.cuh — cp.async (sm_80+): 16-byte copies from global into
 * shared memory that the issuing thread does not wait for, in commit
 * groups, and the wait for them.  A thread sees its own copies' data
 * after copy_async_wait; other threads of the block after a barrier too.
 * Device code only.
 */
#ifndef FERRY_KERNELS_CUDA_COPY_ASYNC_CUH
#define FERRY_KERNELS_CUDA_COPY_ASYNC_CUH

#include <stdint.h>

__device__ __forceinline__ uint32_t shared_address(const void *pointer) {
    return (uint32_t)__cvta_generic_to_shared(pointer);
}

/* 16 bytes global -> shared, bypassing L1; valid == false writes zeros
 * (src-size 0: nothing is read). */
__device__ __forceinline__ void copy_async_16(uint32_t dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void copy_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

/* Wait until at most `pending` committed groups are still in flight. */
template <int pending>
__device__ __forceinline__ void copy_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(pending) : "memory");
}

#endif /* FERRY_KERNELS_CUDA_COPY_ASYNC_CUH */
