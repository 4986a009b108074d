/*
 * copy_async.cuh — cp.async (sm_80+): 16-byte copies from global into
 * shared memory that the issuing thread does not wait for, in commit
 * groups, and the wait for them.  A thread sees its own copies' data
 * after copy_async_wait; other threads of the block after a barrier too.
 * Or an mbarrier counts the copies' arrivals, and a wait on it sees every
 * arrived thread's copies.
 * Device code only (attention_flash.cu, attention.cu).
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

/* The mbarrier at `barrier` (shared) expects `count` arrivals a phase. */
__device__ __forceinline__ void mbarrier_init(uint32_t barrier, int count) {
    asm volatile("mbarrier.init.shared.b64 [%0], %1;\n" ::"r"(barrier), "r"(count) : "memory");
}

/* One arrival on the mbarrier once this thread's copies so far have landed. */
__device__ __forceinline__ void copy_async_arrive(uint32_t barrier) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared.b64 [%0];\n" ::"r"(barrier) : "memory");
}

/* Wait for the mbarrier's phase of parity `phase` (0, 1, 0, ...) to
 * complete.  A loop, not one instruction: ptxas cannot move it above the
 * work before it, as it does with cp.async.wait_group.  (try_wait, which
 * may suspend the thread a while, is sm_90's; test_wait, sm_80's, polls.) */
__device__ __forceinline__ void mbarrier_wait(uint32_t barrier, uint32_t phase) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FERRY_MBARRIER_WAIT "mbarrier.try_wait.parity.shared.b64"
#else
#define FERRY_MBARRIER_WAIT "mbarrier.test_wait.parity.shared.b64"
#endif
    asm volatile("{\n"
                 ".reg .pred done;\n"
                 "wait_again:\n" FERRY_MBARRIER_WAIT " done, [%0], %1;\n"
                 "@!done bra wait_again;\n"
                 "}\n" ::"r"(barrier),
                 "r"(phase)
                 : "memory");
#undef FERRY_MBARRIER_WAIT
}

#endif /* FERRY_KERNELS_CUDA_COPY_ASYNC_CUH */
