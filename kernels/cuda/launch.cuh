/*
 * launch.cuh — how the CUDA backend's kernels start (included by the .cu
 * files only).  cuda_launch launches a kernel on the compute stream, with
 * Hopper's programmatic dependent launch (PDL) when the backend has it on:
 * the kernel may then be scheduled while the kernel before it still runs,
 * and must call pdl_wait() before it touches memory an earlier kernel
 * writes (or reads: a write before the wait could race with it).  Weights
 * are written by no kernel, so the matvec kernels load their first weights
 * before the wait, and a decode step's weight stream never drains between
 * kernels.  Token slots and positions are uploaded by the host (a copy on
 * the stream, which no kernel overlaps) and written by no kernel either,
 * nor are the model's RoPE frequencies, so rope_kv_store and the decode
 * attention may read them before the wait (kvearly).
 * pdl_trigger() lets the next kernel be scheduled; it does not publish
 * anything (pdl_wait waits for the previous grid to finish and its writes
 * to be visible), so every kernel calls it first thing.  Both are no-ops
 * in a kernel launched without the attribute.
 */
#ifndef FERRY_KERNELS_CUDA_LAUNCH_CUH
#define FERRY_KERNELS_CUDA_LAUNCH_CUH

#include "kernels/cuda/cuda_backend.h"

/* griddepcontrol.wait: the grids this one depends on have completed and
 * their writes are visible.  Every thread that reads or writes activations
 * passes it first; a block that returns before it must touch nothing an
 * earlier kernel wrote or reads (and some block of the grid always waits,
 * so the grid completes only after its predecessor). */
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* griddepcontrol.launch_dependents: once every block of this grid has
 * called it (or exited), the next kernel's blocks may be scheduled into
 * free SM slots; they spin in pdl_wait until this grid completes.  Called
 * at a kernel's start, the next kernel starts streaming its weights while
 * this kernel's last wave drains. */
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Fetch the line holding *address into L2 (no register holds it): a
 * kernel's first weights, requested before pdl_wait. */
__device__ __forceinline__ void prefetch_l2(const void *address) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(address));
}

/* A weight load that streams past L1 (each byte is used once) and asks L2
 * for the neighbouring sectors the next chunks will want.  Volatile, so
 * the compiler keeps it in program order with pdl_wait (an asm without
 * side effects may move anywhere); ptxas then needs a block boundary too
 * (matvec_tc.cu's tc_v2_kernel, its first ring). */
__device__ __forceinline__ uint4 load_streaming(const uint4 *address) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(address));
    return v;
}

/* kernel<<<grid, block, shared_bytes, state->stream>>>(args...), with the
 * programmatic stream serialization attribute when state->pdl; returns
 * the launch's error (a recorded launch also works: graphs keep PDL
 * edges, CUDA 12.3+).  shared_bytes: dynamic shared memory, at most 48 KiB
 * (no kernel here opts in to more). */
template <typename... Params, typename... Args>
static inline cudaError_t cuda_launch_shared(const cuda_backend *state,
                                             void (*kernel)(Params...), dim3 grid, dim3 block,
                                             size_t shared_bytes, Args &&...args) {
    cudaLaunchAttribute attributes[1];
    attributes[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = shared_bytes;
    config.stream = state->stream;
    config.attrs = attributes;
    config.numAttrs = state->pdl ? 1 : 0;
    return cudaLaunchKernelEx(&config, kernel, static_cast<Args &&>(args)...);
}

/* The same without dynamic shared memory. */
template <typename... Params, typename... Args>
static inline cudaError_t cuda_launch(const cuda_backend *state, void (*kernel)(Params...),
                                      dim3 grid, dim3 block, Args &&...args) {
    return cuda_launch_shared(state, kernel, grid, block, 0, static_cast<Args &&>(args)...);
}

#endif /* FERRY_KERNELS_CUDA_LAUNCH_CUH */
