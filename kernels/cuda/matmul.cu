/*
 * matmul.cu — out[t] (+)= x[t] W^T (+ bias) on the GPU, three ways:
 * - 1..2 tokens: a matrix-vector kernel, one warp per weight row streaming
 *   it with 16-byte loads (eight in flight per lane), every token's dot
 *   product in float32 registers, warp-shuffle reductions, bias and
 *   residual accumulate in the epilogue, so W is read from HBM once;
 * - 3..16 tokens: a tensor-core matvec (mma.sync, float32 accumulate),
 *   by default matvec_mma.cu's, split-K over 8 warps, x first rounded to
 *   the weight dtype; on sm_90+ FERRY_CUDA_TC_MATVEC=split|rows32 picks
 *   the split-K cluster kernel of matvec_tc.cu, =v2|v2m2 its reworked copy
 *   of matvec_mma.cu's;
 * - more tokens (above state->matvec_max_tokens): cuBLAS (cublasGemmEx,
 *   float32 compute), x converted to the weight dtype in a scratch buffer.
 * Odd shapes or f32 weights fall back to a plain warp-per-row kernel.
 * The vector kernels load their first weights before waiting for the
 * previous kernel (programmatic dependent launch, launch.cuh).
 * Hot path: no allocation (the scratch is reserved at backend creation).
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/warp.cuh"

enum {
    MATVEC_THREADS = 128,               /* 4 warps */
    MATVEC_WARPS = MATVEC_THREADS / 32,
    MATVEC_ROWS_PER_BLOCK = MATVEC_WARPS, /* of the generic kernel: one row per warp */
    MATVEC_MAX_TILE = 16,               /* largest token tile of the vector kernel */
    COLS_PER_LANE_STEP = 8,             /* one 16-byte load of f16/bf16 */
    COLS_PER_WARP_STEP = 32 * COLS_PER_LANE_STEP,
    MATVEC_F32_MAX_TOKENS = 2,          /* beyond this the f32 FMAs are the limit (H100) */
};

/* Eight 16-bit weights (one 16-byte load) as floats. */
__device__ __forceinline__ void widen8(const uint4 packed, __half, float *w) {
    const __half2 *pairs = reinterpret_cast<const __half2 *>(&packed);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 f = __half22float2(pairs[i]);
        w[2 * i] = f.x;
        w[2 * i + 1] = f.y;
    }
}
__device__ __forceinline__ void widen8(const uint4 packed, __nv_bfloat16, float *w) {
    const __nv_bfloat162 *pairs = reinterpret_cast<const __nv_bfloat162 *>(&packed);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 f = __bfloat1622float2(pairs[i]);
        w[2 * i] = f.x;
        w[2 * i + 1] = f.y;
    }
}

/* acc[t][r] += x[t][c .. c+8) · wf[r] for the tile's n tokens: one 8-wide
 * column step of the vector kernel, shared by its unrolled main loop and
 * its tail. */
template <int TILE, int ROWS>
__device__ __forceinline__ void accumulate_step(float (&acc)[TILE][ROWS], const float *x, int n,
                                                int cols, int c, const float (&wf)[ROWS][8]) {
#pragma unroll
    for (int t = 0; t < TILE; t++) {
        if (t < n) {
            const float4 *xv = reinterpret_cast<const float4 *>(x + (size_t)t * cols + c);
            const float4 a = __ldg(xv), b = __ldg(xv + 1);
#pragma unroll
            for (int r = 0; r < ROWS; r++)
                acc[t][r] += a.x * wf[r][0] + a.y * wf[r][1] + a.z * wf[r][2] +
                             a.w * wf[r][3] + b.x * wf[r][4] + b.y * wf[r][5] +
                             b.z * wf[r][6] + b.w * wf[r][7];
        }
    }
}

/* Vector kernel: cols % 8 == 0, W and x 16-byte aligned, n <= TILE.
 * A warp owns ROWS consecutive weight rows; each x chunk it loads serves
 * all of them (x comes from L1, and at larger TILE the L1 traffic of x,
 * not HBM, would be the limit).  UNROLL column steps per iteration keep
 * UNROLL * ROWS 16-byte weight loads in flight per lane. */
template <int UNROLL, int ROWS>
__device__ __forceinline__ void load_weight_steps(uint4 (&packed)[UNROLL][ROWS],
                                                  const uint4 *const (&w_rows)[ROWS], int c) {
#pragma unroll
    for (int u = 0; u < UNROLL; u++)
#pragma unroll
        for (int r = 0; r < ROWS; r++)
            packed[u][r] = __ldg(w_rows[r] + (c + u * COLS_PER_WARP_STEP) / COLS_PER_LANE_STEP);
}

template <typename T, int TILE, int ROWS, int UNROLL>
__global__ void __launch_bounds__(MATVEC_THREADS)
    matvec_kernel(float *out, const float *x, const T *w, const float *bias, int n, int rows,
                  int cols, int accumulate) {
    pdl_trigger();
    const int lane = threadIdx.x % 32;
    const int first_row = (blockIdx.x * MATVEC_WARPS + threadIdx.x / 32) * ROWS;
    if (first_row >= rows) return;
    const uint4 *w_rows[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        /* rows past the end re-read the last row; their sums are dropped */
        int row = first_row + r < rows ? first_row + r : rows - 1;
        w_rows[r] = reinterpret_cast<const uint4 *>(w + (size_t)row * cols);
    }
    float acc[TILE][ROWS];
#pragma unroll
    for (int t = 0; t < TILE; t++)
#pragma unroll
        for (int r = 0; r < ROWS; r++) acc[t][r] = 0.0f;
    /* The first UNROLL column steps of weights are in flight before the
     * wait for the kernel that wrote x (and reads out); each iteration
     * then uses its weights and loads the next ones. */
    int c = lane * COLS_PER_LANE_STEP;
    uint4 packed[UNROLL][ROWS];
    bool full_step = c + (UNROLL - 1) * COLS_PER_WARP_STEP < cols;
    if (full_step) load_weight_steps<UNROLL, ROWS>(packed, w_rows, c);
    pdl_wait();
    while (full_step) {
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            float wf[ROWS][8];
#pragma unroll
            for (int r = 0; r < ROWS; r++) widen8(packed[u][r], T(), wf[r]);
            accumulate_step<TILE, ROWS>(acc, x, n, cols, c + u * COLS_PER_WARP_STEP, wf);
        }
        c += UNROLL * COLS_PER_WARP_STEP;
        full_step = c + (UNROLL - 1) * COLS_PER_WARP_STEP < cols;
        if (full_step) load_weight_steps<UNROLL, ROWS>(packed, w_rows, c);
    }
    for (; c < cols; c += COLS_PER_WARP_STEP) {
        float wf[ROWS][8];
#pragma unroll
        for (int r = 0; r < ROWS; r++) widen8(__ldg(w_rows[r] + c / COLS_PER_LANE_STEP), T(), wf[r]);
        accumulate_step<TILE, ROWS>(acc, x, n, cols, c, wf);
    }
    /* epilogue: reduce over the warp, add bias, accumulate into out */
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int row = first_row + r;
        const float b = bias && row < rows ? bias[row] : 0.0f;
#pragma unroll
        for (int t = 0; t < TILE; t++) {
            float sum = warp_sum(acc[t][r]);
            if (lane == 0 && t < n && row < rows) {
                float *dst = out + (size_t)t * rows + row;
                float y = sum + b;
                *dst = accumulate ? *dst + y : y;
            }
        }
    }
}

__device__ __forceinline__ float load_any(const void *data, ferry_dtype dtype, size_t i) {
    switch (dtype) {
    case FERRY_DTYPE_F16: return __half2float(((const __half *)data)[i]);
    case FERRY_DTYPE_BF16: return __bfloat162float(((const __nv_bfloat16 *)data)[i]);
    default: return ((const float *)data)[i];
    }
}

/* Any shape, any dtype, any alignment: one warp per (row, token). */
__global__ void matvec_generic_kernel(float *out, const float *x, const void *w,
                                      ferry_dtype dtype, const float *bias, int rows, int cols,
                                      int accumulate) {
    pdl_trigger();
    pdl_wait();
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * MATVEC_ROWS_PER_BLOCK + threadIdx.x / 32;
    const int t = blockIdx.y;
    if (row >= rows) return;
    const float *xt = x + (size_t)t * cols;
    float acc = 0.0f;
    for (int c = lane; c < cols; c += 32) acc += xt[c] * load_any(w, dtype, (size_t)row * cols + c);
    acc = warp_sum(acc);
    if (lane == 0) {
        float *dst = out + (size_t)t * rows + row;
        float y = acc + (bias ? bias[row] : 0.0f);
        *dst = accumulate ? *dst + y : y;
    }
}

template <typename T, int TILE, int ROWS>
static cudaError_t launch_tile(const cuda_backend *state, float *out, const float *x,
                               const T *w, const float *bias, int n, int rows, int cols,
                               int accumulate) {
    const int rows_per_block = MATVEC_WARPS * ROWS;
    dim3 grid((rows + rows_per_block - 1) / rows_per_block);
    return cuda_launch(state, matvec_kernel<T, TILE, ROWS, 8 / ROWS>, grid, MATVEC_THREADS, out,
                       x, w, bias, n, rows, cols, accumulate);
}

/* Small batches: one row per warp, eight column steps in flight; larger
 * tiles: more rows per warp so each x load serves several rows. */
template <typename T>
static cudaError_t launch_matvec(const cuda_backend *state, float *out, const float *x,
                                 const void *w, const float *bias, int n, int rows, int cols,
                                 int accumulate) {
    const T *weights = static_cast<const T *>(w);
    if (n <= 1) return launch_tile<T, 1, 1>(state, out, x, weights, bias, n, rows, cols, accumulate);
    if (n <= 2) return launch_tile<T, 2, 1>(state, out, x, weights, bias, n, rows, cols, accumulate);
    if (n <= 4) return launch_tile<T, 4, 2>(state, out, x, weights, bias, n, rows, cols, accumulate);
    if (n <= 8) return launch_tile<T, 8, 2>(state, out, x, weights, bias, n, rows, cols, accumulate);
    return launch_tile<T, 16, 4>(state, out, x, weights, bias, n, rows, cols, accumulate);
}

/* --------------------------------------------------------- cuBLAS path */

template <typename T>
__global__ void convert_kernel(T *dst, const float *src, size_t total) {
    pdl_trigger();
    pdl_wait();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = from_float<T>(src[i]);
}

/* out[t][r] = (accumulate ? out[t][r] : 0) + bias[r], so the GEMM can add
 * into it with beta = 1. */
__global__ void bias_prefill_kernel(float *out, const float *bias, int rows, size_t total,
                                    int accumulate) {
    pdl_trigger();
    pdl_wait();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = (accumulate ? out[i] : 0.0f) + bias[i % rows];
}

static unsigned grid_for(size_t total) {
    size_t blocks = (total + 255) / 256;
    return (unsigned)(blocks > 65535 ? 65535 : blocks);
}

/* One block of NORM_THREADS per token: dst[t] = weight * (x[t] * inv_rms)
 * rounded to T, with the sum of squares, inv_rms and the product formed
 * exactly as rmsnorm_kernel (elementwise.cu) forms them, so rmsnorm then
 * convert and this kernel give the same bits. */
enum { NORM_THREADS = 1024 };
template <typename T>
__global__ void __launch_bounds__(NORM_THREADS)
    norm_convert_kernel(T *dst, const float *x, const float *weight, int dim, float eps) {
    pdl_trigger();
    pdl_wait();
    const float *row = x + (size_t)blockIdx.x * dim;
    T *result = dst + (size_t)blockIdx.x * dim;
    float sum_squares = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) sum_squares += row[i] * row[i];
    const float total = block_sum<NORM_THREADS>(sum_squares);
    const float inv_rms = 1.0f / sqrtf(total / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        result[i] = from_float<T>(weight[i] * (row[i] * inv_rms));
}

int cuda_mma_matvec_fits(const cuda_backend *state, const void *w, ferry_dtype dtype, int n,
                         int cols) {
    if (n <= MATVEC_F32_MAX_TOKENS || n > MATVEC_MAX_TILE || n > state->matvec_max_tokens)
        return 0;
    if (cuda_tc_matvec_enabled(state)) return cuda_tc_matvec_fits(w, dtype, n, cols);
    return (dtype == FERRY_DTYPE_F16 || dtype == FERRY_DTYPE_BF16) &&
           cols % CUDA_MMA_COLS_MULTIPLE == 0 && ((uintptr_t)w % 16) == 0;
}

template <typename T>
static cudaError_t launch_x16(const cuda_backend *state, T *x16, const float *x,
                              const float *norm_weight, float eps, int n, int cols) {
    if (norm_weight)
        return cuda_launch(state, norm_convert_kernel<T>, n, NORM_THREADS, x16, x, norm_weight,
                           cols, eps);
    const size_t x_elements = (size_t)n * cols;
    return cuda_launch(state, convert_kernel<T>, grid_for(x_elements), 256, x16, x, x_elements);
}

ferry_status cuda_x16_prepare(cuda_backend *state, const float *x, const float *norm_weight,
                              float eps, ferry_dtype dtype, int n, int cols, const void **out_x16) {
    FERRY_TRY(cuda_scratch_reserve(state, &state->activations, &state->activations_bytes,
                                   (size_t)n * cols * 2));
    if (dtype == FERRY_DTYPE_F16)
        CUDA_TRY(launch_x16(state, (__half *)state->activations, x, norm_weight, eps, n, cols));
    else
        CUDA_TRY(launch_x16(state, (__nv_bfloat16 *)state->activations, x, norm_weight, eps, n,
                            cols));
    *out_x16 = state->activations;
    return FERRY_OK;
}

static ferry_status gemm(cuda_backend *state, float *out, const float *x, const void *w,
                         ferry_dtype dtype, const float *bias, int n, int rows, int cols,
                         int accumulate) {
    size_t x_elements = (size_t)n * cols;
    const void *x_operand = x;
    cudaDataType_t operand_type = CUDA_R_32F;
    if (dtype != FERRY_DTYPE_F32) {
        FERRY_TRY(cuda_scratch_reserve(state, &state->activations, &state->activations_bytes,
                                       x_elements * 2));
        if (dtype == FERRY_DTYPE_F16) {
            CUDA_TRY(cuda_launch(state, convert_kernel<__half>, grid_for(x_elements), 256,
                                 (__half *)state->activations, x, x_elements));
            operand_type = CUDA_R_16F;
        } else {
            CUDA_TRY(cuda_launch(state, convert_kernel<__nv_bfloat16>, grid_for(x_elements), 256,
                                 (__nv_bfloat16 *)state->activations, x, x_elements));
            operand_type = CUDA_R_16BF;
        }
        x_operand = state->activations;
    }
    if (bias) {
        size_t total = (size_t)n * rows;
        CUDA_TRY(cuda_launch(state, bias_prefill_kernel, grid_for(total), 256, out, bias, rows,
                             total, accumulate));
    }
    /* Column-major view: out^T [rows, n] = W [rows, cols] . x^T [cols, n],
     * where row-major W is a column-major [cols, rows] matrix, hence OP_T. */
    const float alpha = 1.0f, beta = (accumulate || bias) ? 1.0f : 0.0f;
    CUBLAS_TRY(cublasGemmEx(state->cublas, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &alpha, w,
                            operand_type, cols, x_operand, operand_type, cols, &beta, out,
                            CUDA_R_32F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return FERRY_OK;
}

ferry_status cuda_matmul(ferry_backend *backend, float *out, const float *x, const void *w,
                         ferry_dtype dtype, const float *bias, int n, int rows, int cols,
                         int accumulate) {
    cuda_backend *state = cuda_state(backend);
    if (n <= 0 || rows <= 0) return FERRY_OK;
    if (cols <= 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "matmul: %d columns", cols);
    if (n > state->matvec_max_tokens)
        return gemm(state, out, x, w, dtype, bias, n, rows, cols, accumulate);
    /* 3..16 tokens: tensor cores (x rounded to the weight dtype, as cuBLAS;
     * the cluster kernel rounds it as it stages it, no separate kernel) */
    if (cuda_mma_matvec_fits(state, w, dtype, n, cols)) {
        if (cuda_tc_matvec_takes_f32(state) && ((uintptr_t)x % 16) == 0)
            return cuda_tc_matvec(state, out, x, 1, w, dtype, bias, n, rows, cols, accumulate);
        const void *x16 = NULL;
        FERRY_TRY(cuda_x16_prepare(state, x, NULL, 0.0f, dtype, n, cols, &x16));
        return cuda_mma_matvec(state, out, x16, w, dtype, bias, n, rows, cols, accumulate);
    }
    int vector_ok = dtype != FERRY_DTYPE_F32 && n <= MATVEC_MAX_TILE &&
                    cols % COLS_PER_LANE_STEP == 0 && ((uintptr_t)w % 16) == 0 &&
                    ((uintptr_t)x % 16) == 0;
    if (vector_ok && dtype == FERRY_DTYPE_F16)
        CUDA_TRY(launch_matvec<__half>(state, out, x, w, bias, n, rows, cols, accumulate));
    else if (vector_ok)
        CUDA_TRY(launch_matvec<__nv_bfloat16>(state, out, x, w, bias, n, rows, cols, accumulate));
    else
        CUDA_TRY(cuda_launch(state, matvec_generic_kernel,
                             dim3((rows + MATVEC_ROWS_PER_BLOCK - 1) / MATVEC_ROWS_PER_BLOCK, n),
                             MATVEC_THREADS, out, x, w, dtype, bias, rows, cols, accumulate));
    return FERRY_OK;
}
