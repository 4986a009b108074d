/*
 * elementwise.cu — the CUDA backend's per-token ops that read each input
 * once: embedding lookup, RMSNorm and the SwiGLU gate.  Float32 math like
 * the CPU oracle.  Hot path: no allocation, one launch per op.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/warp.cuh"

enum { ROW_THREADS = 1024 }; /* a row of 4096 in one pass of 4 per thread */

__device__ __forceinline__ float load_weight(const void *data, ferry_dtype dtype, size_t i) {
    switch (dtype) {
    case FERRY_DTYPE_F16: return __half2float(((const __half *)data)[i]);
    case FERRY_DTYPE_BF16: return __bfloat162float(((const __nv_bfloat16 *)data)[i]);
    default: return ((const float *)data)[i];
    }
}

/* --------------------------------------------------------------- embed */

/* One block per token: out[t] = table[token[t]]. */
__global__ void embed_kernel(float *out, const void *table, ferry_dtype dtype,
                             const int32_t *tokens, int dim, int *error_flag) {
    pdl_trigger();
    pdl_wait();
    int t = blockIdx.x;
    int token = tokens[t];
    float *row = out + (size_t)t * dim;
    if (token < 0) {
        if (threadIdx.x == 0) atomicExch(error_flag, CUDA_BAD_TOKEN);
        for (int i = threadIdx.x; i < dim; i += blockDim.x) row[i] = 0.0f;
        return;
    }
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        row[i] = load_weight(table, dtype, (size_t)token * dim + i);
}

ferry_status cuda_embed(ferry_backend *backend, float *out, const void *table, ferry_dtype dtype,
                        const ferry_token_batch *batch, int dim) {
    cuda_backend *state = cuda_state(backend);
    if (batch->n_tokens <= 0) return FERRY_OK;
    CUDA_TRY(cuda_launch(state, embed_kernel, batch->n_tokens, ROW_THREADS, out, table, dtype,
                         batch->tokens, dim, state->error_flag));
    return FERRY_OK;
}

/* ------------------------------------------------------------- rmsnorm */

/* One block per row: out = weight * (x / sqrt(mean(x^2) + eps)), the same
 * order of rounding as the CPU (x * inv_rms first). */
__global__ void rmsnorm_kernel(float *out, const float *x, const float *weight, int dim,
                               float eps) {
    pdl_trigger();
    pdl_wait();
    const float *row = x + (size_t)blockIdx.x * dim;
    float *result = out + (size_t)blockIdx.x * dim;
    float sum_squares = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) sum_squares += row[i] * row[i];
    float total = block_sum<ROW_THREADS>(sum_squares);
    float inv_rms = 1.0f / sqrtf(total / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) result[i] = weight[i] * (row[i] * inv_rms);
}

ferry_status cuda_rmsnorm(ferry_backend *backend, float *out, const float *x, const float *weight,
                          int n, int dim, float eps) {
    if (n <= 0) return FERRY_OK;
    CUDA_TRY(cuda_launch(cuda_state(backend), rmsnorm_kernel, n, ROW_THREADS, out, x, weight, dim,
                         eps));
    return FERRY_OK;
}

/* ------------------------------------------------------------ silu_mul */

/* out[i] = silu(gate[i]) * up[i] = gate / (1 + e^-gate) * up */
__global__ void silu_mul_kernel(float *out, const float *gate, const float *up, size_t total) {
    pdl_trigger();
    pdl_wait();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

ferry_status cuda_silu_mul(ferry_backend *backend, float *out, const float *gate, const float *up,
                           int n, int dim) {
    size_t total = (size_t)n * (size_t)dim;
    if (total == 0) return FERRY_OK;
    size_t blocks = (total + ROW_THREADS - 1) / ROW_THREADS;
    if (blocks > 65535) blocks = 65535;
    CUDA_TRY(cuda_launch(cuda_state(backend), silu_mul_kernel, (unsigned)blocks, ROW_THREADS, out,
                         gate, up, total));
    return FERRY_OK;
}
