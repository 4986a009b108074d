/*
 * fused.cu — matmul_multi: several projections of one activation in one
 * launch (Q, K and V; or gate and up with SwiGLU applied in the epilogue),
 * optionally behind the RMSNorm that feeds them, so a decode step pays one
 * launch and one tail instead of four.  For 1-2 tokens a warp streams one
 * weight row (of whichever matrix the row falls in) with 16-byte loads,
 * eight in flight per lane; the gate/up variant streams row r of both
 * matrices and writes silu(g) * u.  The norm costs no pass of its own:
 * rmsnorm(x) W^T = inv_rms * ((x * w_norm) W^T).  Each block (8 warps,
 * 8 rows) first writes x * w_norm into shared memory and sums x^2
 * (NORM_STAGED), so the rows read x from shared memory as the plain
 * kernel reads it from L1, and the epilogue scales by inv_rms; the older
 * NORM_PER_WARP variant has every warp fold the norm while it streams
 * (twice the L1 traffic, more registers; kept to measure against).
 * qkv_rope_store: a warp per RoPE pair (j, j + half) of Q, K or V, whose
 * epilogue rotates q and k and stores k and v in the KV cache.
 * 3..16 tokens: the norm is folded into the rounding of x for the
 * tensor-core matvec (one launch for all matrices' input), then every
 * matrix in one launch of matvec_mma.cu (SiLU or RoPE and the KV store in
 * its epilogue).  Other shapes,
 * or those fusions off (FERRY_CUDA_FUSE): rmsnorm into norm->scratch,
 * then cuda_matmul and cuda_silu_mul.  The first weights are loaded
 * before the wait for the previous kernel (PDL, launch.cuh).  Hot path:
 * no allocation.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/warp.cuh"

enum {
    MULTI_THREADS = 128,        /* 4 warps, one row (or row pair) each */
    MULTI_WARPS = MULTI_THREADS / 32,
    STAGED_WARPS = 8,           /* NORM_STAGED: 8 rows share one staging of x */
    MULTI_MAX_TOKENS = 2,
    MULTI_MAX_MATRICES = 3,
    LANE_COLS = 8,              /* one 16-byte load of f16/bf16 */
    WARP_COLS = 32 * LANE_COLS,
    /* NORM_STAGED's x in shared memory: tokens x columns rounded up to
     * WARP_COLS, in float32; beyond this the per-warp fold runs instead */
    STAGED_MAX_BYTES = 40 * 1024,
};

/* How the 1-2 token kernels meet the RMSNorm in front of them. */
enum norm_mode { NORM_NONE, NORM_PER_WARP, NORM_STAGED };

/* Block shape per mode (NORM_STAGED's launch bounds ask for 4 blocks,
 * 32 warps, per SM: at most 64 registers, as the plain kernel). */
template <int MODE> struct multi_block {
    static const int warps = MODE == NORM_STAGED ? STAGED_WARPS : MULTI_WARPS;
    static const int threads = warps * 32;
    static const int min_blocks = MODE == NORM_STAGED ? 4 : 0;
};
/* (__launch_bounds__(n, 1) is not the same as __launch_bounds__(n): with
 * it ptxas spends more registers on the plain kernels) */
#define MULTI_BOUNDS(MODE)                                                                   \
    __launch_bounds__(multi_block<MODE>::threads, multi_block<MODE>::min_blocks)

typedef struct multi_args {
    float *outs[MULTI_MAX_MATRICES];
    const void *weights[MULTI_MAX_MATRICES];
    const float *biases[MULTI_MAX_MATRICES];
    int rows[MULTI_MAX_MATRICES];
    int n_matrices;
    const float *x;
    const float *norm_weight;   /* with a norm: [cols] */
    float norm_eps;
    int n, cols;
    /* MULTI_QKV_ROPE: rows = q, k, v widths; pairs (j, j + half) of a head */
    int half;
    rope_store rope;
} multi_args;

/* What a launch computes. */
enum multi_kind {
    MULTI_STACKED,  /* each matrix's rows into its out */
    MULTI_SILU,     /* gate and up: silu(gate) * up */
    MULTI_QKV_ROPE, /* Q, K, V: q rotated, k rotated and v into the KV cache */
};

/* Eight x values x[c .. c+8) of one token (times w_norm[c .. c+8) when
 * NORM, their squares added to *sum_squares). */
template <bool NORM>
__device__ __forceinline__ void load_x8(const float *x, const float *norm_weight, int c,
                                        float (&xv)[8], float &sum_squares) {
    const float4 a = __ldg(reinterpret_cast<const float4 *>(x + c));
    const float4 b = __ldg(reinterpret_cast<const float4 *>(x + c) + 1);
    xv[0] = a.x, xv[1] = a.y, xv[2] = a.z, xv[3] = a.w;
    xv[4] = b.x, xv[5] = b.y, xv[6] = b.z, xv[7] = b.w;
    if (NORM) {
        const float4 wa = __ldg(reinterpret_cast<const float4 *>(norm_weight + c));
        const float4 wb = __ldg(reinterpret_cast<const float4 *>(norm_weight + c) + 1);
        const float w[8] = {wa.x, wa.y, wa.z, wa.w, wb.x, wb.y, wb.z, wb.w};
#pragma unroll
        for (int i = 0; i < 8; i++) {
            sum_squares += xv[i] * xv[i];
            xv[i] *= w[i];
        }
    }
}

/* NORM_STAGED's layout of one token's x * w_norm in shared memory, in
 * float4s: columns c .. c+3 (c % 4 == 0) sit at
 *   (c / 256) * 64 + ((c / 4) % 2) * 32 + (c % 256) / 8,
 * so when lane l reads columns 8l .. 8l+7 of a 256-column step, the
 * warp's first 16-byte loads hit 32 consecutive float4s, and so do its
 * second ones: no bank conflicts.  A token takes staged_stride4(cols)
 * float4s (the last step padded). */
__host__ __device__ __forceinline__ int staged_stride4(int cols) {
    return (cols + WARP_COLS - 1) / WARP_COLS * (WARP_COLS / 4);
}

/* Eight staged x values of one token for the lane's columns c .. c+8
 * (c % 256 == 8 * lane). */
__device__ __forceinline__ void load_staged_x8(const float4 *token_x, int c, float (&xv)[8]) {
    const int at = (c / WARP_COLS) * (WARP_COLS / 4) + threadIdx.x % 32;
    const float4 a = token_x[at], b = token_x[at + 32];
    xv[0] = a.x, xv[1] = a.y, xv[2] = a.z, xv[3] = a.w;
    xv[4] = b.x, xv[5] = b.y, xv[6] = b.z, xv[7] = b.w;
}

/* NORM_STAGED: the block writes x[t] * w_norm into shared memory (layout
 * above) and sets totals[t] = sum_c x[t][c]^2 in every thread.  Call
 * after pdl_wait, from every thread of the block. */
template <int TOKENS>
__device__ __forceinline__ void stage_x(float4 *staged, const float *x, const float *norm_weight,
                                        int n, int cols, float (&totals)[TOKENS]) {
    __shared__ float warp_sums[TOKENS][STAGED_WARPS];
    const int quads = cols / 4, stride4 = staged_stride4(cols);
    float partial[TOKENS];
#pragma unroll
    for (int t = 0; t < TOKENS; t++) partial[t] = 0.0f;
#pragma unroll 2 /* (more: registers the row loop's weights need) */
    for (int i = threadIdx.x; i < quads; i += STAGED_WARPS * 32) {
        const float4 w = __ldg(reinterpret_cast<const float4 *>(norm_weight) + i);
        const int at = (i / 64) * 64 + (i % 2) * 32 + (i % 64) / 2;
#pragma unroll
        for (int t = 0; t < TOKENS; t++)
            if (t < n) {
                const float4 v = reinterpret_cast<const float4 *>(x + (size_t)t * cols)[i];
                partial[t] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
                staged[t * stride4 + at] = make_float4(v.x * w.x, v.y * w.y, v.z * w.z, v.w * w.w);
            }
    }
#pragma unroll
    for (int t = 0; t < TOKENS; t++) {
        const float warp_total = warp_sum(partial[t]);
        if (threadIdx.x % 32 == 0) warp_sums[t][threadIdx.x / 32] = warp_total;
    }
    __syncthreads();
#pragma unroll
    for (int t = 0; t < TOKENS; t++) {
        totals[t] = 0.0f;
#pragma unroll
        for (int w = 0; w < STAGED_WARPS; w++) totals[t] += warp_sums[t][w];
    }
}

/* Dot of 8 weights (one 16-byte load) with 8 x values. */
__device__ __forceinline__ float dot8(uint4 packed, __half, const float (&x)[8]) {
    const __half2 *pairs = reinterpret_cast<const __half2 *>(&packed);
    float2 w0 = __half22float2(pairs[0]), w1 = __half22float2(pairs[1]);
    float2 w2 = __half22float2(pairs[2]), w3 = __half22float2(pairs[3]);
    return x[0] * w0.x + x[1] * w0.y + x[2] * w1.x + x[3] * w1.y + x[4] * w2.x + x[5] * w2.y +
           x[6] * w3.x + x[7] * w3.y;
}
__device__ __forceinline__ float dot8(uint4 packed, __nv_bfloat16, const float (&x)[8]) {
    const __nv_bfloat162 *pairs = reinterpret_cast<const __nv_bfloat162 *>(&packed);
    float2 w0 = __bfloat1622float2(pairs[0]), w1 = __bfloat1622float2(pairs[1]);
    float2 w2 = __bfloat1622float2(pairs[2]), w3 = __bfloat1622float2(pairs[3]);
    return x[0] * w0.x + x[1] * w0.y + x[2] * w1.x + x[3] * w1.y + x[4] * w2.x + x[5] * w2.y +
           x[6] * w3.x + x[7] * w3.y;
}

template <int M, int UNROLL>
__device__ __forceinline__ void load_row_steps(uint4 (&packed)[M][UNROLL],
                                               const uint4 *const *w_rows, int c) {
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
            packed[m][u] = __ldg(w_rows[m] + (c + u * WARP_COLS) / LANE_COLS);
}

/* The eight x values of token t at columns c .. c+8, as MODE keeps them. */
template <int MODE>
__device__ __forceinline__ void x8_of(const float *x, const float *norm_weight,
                                      const float4 *staged, int t, int cols, int c,
                                      float (&xv)[8], float &sum_squares) {
    if constexpr (MODE == NORM_STAGED) load_staged_x8(staged + t * staged_stride4(cols), c, xv);
    else load_x8<MODE == NORM_PER_WARP>(x + (size_t)t * cols, norm_weight, c, xv, sum_squares);
}

/* acc[m][t] += row_m . x[t] for the M weight rows given (M = 1 or 2),
 * UNROLL column steps per matrix in flight per lane.  NORM_PER_WARP: x[t]
 * is taken times w_norm and sum_squares[t] gets this lane's share of
 * sum_c x[t][c]^2 (the warp's lanes together see every column once).
 * NORM_STAGED: the block stages x * w_norm first and sum_squares[t] gets
 * the whole sum (every warp of the block must call this).  The first
 * steps' weights are loaded before pdl_wait (launch.cuh), which this
 * calls: x is read only after it. */
template <typename T, int TOKENS, int M, int UNROLL, int MODE>
__device__ __forceinline__ void stream_rows(const uint4 *const *w_rows, const float *x,
                                            const float *norm_weight, int n, int cols,
                                            float (*acc)[TOKENS], float *sum_squares) {
    extern __shared__ float4 staged[];
    const int lane = threadIdx.x % 32;
    int c = lane * LANE_COLS;
    uint4 packed[M][UNROLL];
    bool full_step = c + (UNROLL - 1) * WARP_COLS < cols;
    if (full_step) load_row_steps<M, UNROLL>(packed, w_rows, c);
    pdl_wait();
    if constexpr (MODE == NORM_STAGED) {
        float totals[TOKENS];
        stage_x<TOKENS>(staged, x, norm_weight, n, cols, totals);
#pragma unroll
        for (int t = 0; t < TOKENS; t++) sum_squares[t] = totals[t];
    }
    while (full_step) {
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
#pragma unroll
            for (int t = 0; t < TOKENS; t++)
                if (t < n) {
                    float xv[8];
                    x8_of<MODE>(x, norm_weight, staged, t, cols, c + u * WARP_COLS, xv,
                                sum_squares[t]);
#pragma unroll
                    for (int m = 0; m < M; m++) acc[m][t] += dot8(packed[m][u], T(), xv);
                }
        c += UNROLL * WARP_COLS;
        full_step = c + (UNROLL - 1) * WARP_COLS < cols;
        if (full_step) load_row_steps<M, UNROLL>(packed, w_rows, c);
    }
    for (; c < cols; c += WARP_COLS) {
        uint4 tail[M];
#pragma unroll
        for (int m = 0; m < M; m++) tail[m] = __ldg(w_rows[m] + c / LANE_COLS);
#pragma unroll
        for (int t = 0; t < TOKENS; t++)
            if (t < n) {
                float xv[8];
                x8_of<MODE>(x, norm_weight, staged, t, cols, c, xv, sum_squares[t]);
#pragma unroll
                for (int m = 0; m < M; m++) acc[m][t] += dot8(tail[m], T(), xv);
            }
    }
}

/* The factor the epilogue applies per token: 1 / sqrt(mean(x^2) + eps)
 * (as the rmsnorm op forms it), from this lane's share of the squares
 * (NORM_PER_WARP) or the whole sum (NORM_STAGED); 1 without a norm.
 * Every lane of the warp calls it. */
template <int MODE>
__device__ __forceinline__ float norm_scale(float sum_squares, int cols, float eps) {
    if (MODE == NORM_NONE) return 1.0f;
    const float total = MODE == NORM_PER_WARP ? warp_sum(sum_squares) : sum_squares;
    return 1.0f / sqrtf(total / (float)cols + eps);
}

/* One warp per row of the stacked matrices: out_m[t][r] = W_m[r] . x[t] + b_m[r].
 * A warp past the last row streams row 0 of matrix 0 and drops it when
 * the block stages x (every warp must reach the staging's barrier). */
template <typename T, int TOKENS, int MODE>
__global__ void MULTI_BOUNDS(MODE) stacked_matvec_kernel(multi_args args) {
    pdl_trigger();
    /* Pick the matrix with constant indices only: indexing the argument
     * arrays with a run-time value would copy them to local memory. */
    const int rows0 = args.rows[0], rows1 = args.rows[1], rows2 = args.rows[2];
    int row = blockIdx.x * multi_block<MODE>::warps + threadIdx.x / 32;
    int m = row < rows0 ? 0 : row < rows0 + rows1 ? 1 : 2;
    row -= m == 0 ? 0 : m == 1 ? rows0 : rows0 + rows1;
    const bool live = m < args.n_matrices && row < (m == 0 ? rows0 : m == 1 ? rows1 : rows2);
    if (!live && MODE != NORM_STAGED) return;
    if (!live) m = 0, row = 0;
    const void *weights = m == 0 ? args.weights[0] : m == 1 ? args.weights[1] : args.weights[2];
    const uint4 *w_row[1] = {reinterpret_cast<const uint4 *>(static_cast<const T *>(weights) +
                                                             (size_t)row * args.cols)};
    float acc[1][TOKENS] = {}, sum_squares[TOKENS] = {};
    stream_rows<T, TOKENS, 1, 8, MODE>(w_row, args.x, args.norm_weight, args.n, args.cols, acc,
                                       sum_squares);
    if (!live) return;
    /* (picked only now: fewer registers live across the stream) */
    const float *biases = m == 0 ? args.biases[0] : m == 1 ? args.biases[1] : args.biases[2];
    float *out = m == 0 ? args.outs[0] : m == 1 ? args.outs[1] : args.outs[2];
    const int rows_m = m == 0 ? rows0 : m == 1 ? rows1 : rows2;
    const float bias = biases ? biases[row] : 0.0f;
#pragma unroll
    for (int t = 0; t < TOKENS; t++) {
        const float scale = norm_scale<MODE>(sum_squares[t], args.cols, args.norm_eps);
        float sum = warp_sum(acc[0][t]);
        if (threadIdx.x % 32 == 0 && t < args.n) out[(size_t)t * rows_m + row] = sum * scale + bias;
    }
}

/* One warp per row r of gate and up: out[t][r] = silu(g) * u, the same
 * float math as cuda_silu_mul (g / (1 + e^-g) * u).  Warps past the last
 * row: as stacked_matvec_kernel. */
template <typename T, int TOKENS, int MODE>
__global__ void MULTI_BOUNDS(MODE) gate_up_matvec_kernel(multi_args args) {
    pdl_trigger();
    const int warp_row = blockIdx.x * multi_block<MODE>::warps + threadIdx.x / 32;
    const bool live = warp_row < args.rows[0];
    if (!live && MODE != NORM_STAGED) return;
    const int row = live ? warp_row : 0;
    const uint4 *w_rows[2];
#pragma unroll
    for (int m = 0; m < 2; m++)
        w_rows[m] = reinterpret_cast<const uint4 *>(static_cast<const T *>(args.weights[m]) +
                                                    (size_t)row * args.cols);
    float acc[2][TOKENS] = {}, sum_squares[TOKENS] = {};
    stream_rows<T, TOKENS, 2, 4, MODE>(w_rows, args.x, args.norm_weight, args.n, args.cols, acc,
                                       sum_squares);
    if (!live) return;
#pragma unroll
    for (int t = 0; t < TOKENS; t++) {
        const float scale = norm_scale<MODE>(sum_squares[t], args.cols, args.norm_eps);
        float g = warp_sum(acc[0][t]) * scale, u = warp_sum(acc[1][t]) * scale;
        if (threadIdx.x % 32 == 0 && t < args.n)
            args.outs[0][(size_t)t * args.rows[0] + row] = g / (1.0f + expf(-g)) * u;
    }
}

/* One warp per RoPE pair (j, j + half) of a head of Q, K or V (in that
 * order), so the epilogue has both: q rotated into outs[0]; k rotated and
 * v as it is stored (f16) into the cache at each token's (slot, position),
 * a bad place raising the error flag as kv_store does.  Warps past the
 * last pair: as stacked_matvec_kernel. */
template <typename T, int TOKENS, int MODE>
__global__ void MULTI_BOUNDS(MODE) qkv_rope_matvec_kernel(multi_args args) {
    pdl_trigger();
    const int half = args.half, pairs0 = args.rows[0] / 2, pairs1 = args.rows[1] / 2;
    int pair = blockIdx.x * multi_block<MODE>::warps + threadIdx.x / 32;
    int m = pair < pairs0 ? 0 : pair < pairs0 + pairs1 ? 1 : 2;
    pair -= m == 0 ? 0 : m == 1 ? pairs0 : pairs0 + pairs1;
    const bool live = pair < (m == 0 ? pairs0 : pairs1); /* (k and v are equally wide) */
    if (!live && MODE != NORM_STAGED) return;
    if (!live) m = 0, pair = 0;
    const int head = pair / half, j = pair % half;
    const int row_a = head * 2 * half + j, row_b = row_a + half;
    const T *weights = static_cast<const T *>(m == 0   ? args.weights[0]
                                              : m == 1 ? args.weights[1]
                                                       : args.weights[2]);
    const uint4 *w_rows[2] = {reinterpret_cast<const uint4 *>(weights + (size_t)row_a * args.cols),
                              reinterpret_cast<const uint4 *>(weights + (size_t)row_b * args.cols)};
    float acc[2][TOKENS] = {}, sum_squares[TOKENS] = {};
    stream_rows<T, TOKENS, 2, 4, MODE>(w_rows, args.x, args.norm_weight, args.n, args.cols, acc,
                                       sum_squares);
    if (!live) return;
    const float *biases = m == 0 ? args.biases[0] : m == 1 ? args.biases[1] : args.biases[2];
    const float bias_a = biases ? biases[row_a] : 0.0f, bias_b = biases ? biases[row_b] : 0.0f;
#pragma unroll
    for (int t = 0; t < TOKENS; t++) {
        const float scale = norm_scale<MODE>(sum_squares[t], args.cols, args.norm_eps);
        const float a = warp_sum(acc[0][t]) * scale + bias_a;
        const float b = warp_sum(acc[1][t]) * scale + bias_b;
        if (threadIdx.x % 32 != 0 || t >= args.n) continue;
        bool to_q;
        const float2 pair = args.rope.place_pair(m, t, head, j, half, args.rows[1], a, b, &to_q);
        if (to_q) {
            args.outs[0][(size_t)t * args.rows[0] + row_a] = pair.x;
            args.outs[0][(size_t)t * args.rows[0] + row_b] = pair.y;
        }
    }
}

template <typename T, int TOKENS, int MODE>
static cudaError_t launch_multi_kernel(const cuda_backend *state, const multi_args &args,
                                       int kind, int total_rows) {
    const int warps = multi_block<MODE>::warps;
    dim3 grid((unsigned)((total_rows + warps - 1) / warps));
    const size_t shared_bytes =
        MODE == NORM_STAGED ? (size_t)TOKENS * staged_stride4(args.cols) * sizeof(float4) : 0;
    if (kind == MULTI_SILU)
        return cuda_launch_shared(state, gate_up_matvec_kernel<T, TOKENS, MODE>, grid,
                                  multi_block<MODE>::threads, shared_bytes, args);
    if (kind == MULTI_QKV_ROPE)
        return cuda_launch_shared(state, qkv_rope_matvec_kernel<T, TOKENS, MODE>, grid,
                                  multi_block<MODE>::threads, shared_bytes, args);
    return cuda_launch_shared(state, stacked_matvec_kernel<T, TOKENS, MODE>, grid,
                              multi_block<MODE>::threads, shared_bytes, args);
}

template <typename T, int TOKENS>
static cudaError_t launch_multi_tokens(const cuda_backend *state, const multi_args &args,
                                       int kind, int total_rows) {
    if (!args.norm_weight)
        return launch_multi_kernel<T, TOKENS, NORM_NONE>(state, args, kind, total_rows);
    const size_t staged_bytes = (size_t)TOKENS * staged_stride4(args.cols) * sizeof(float4);
    if ((state->fuse & CUDA_FUSE_NORM1) && staged_bytes <= STAGED_MAX_BYTES)
        return launch_multi_kernel<T, TOKENS, NORM_STAGED>(state, args, kind, total_rows);
    return launch_multi_kernel<T, TOKENS, NORM_PER_WARP>(state, args, kind, total_rows);
}

/* One warp per row (MULTI_STACKED), per row pair of gate and up
 * (MULTI_SILU) or per RoPE pair (MULTI_QKV_ROPE). */
template <typename T>
static cudaError_t launch_multi(const cuda_backend *state, const multi_args &args, int kind) {
    int total_rows = 0;
    for (int m = 0; m < args.n_matrices; m++) total_rows += args.rows[m];
    if (kind == MULTI_SILU) total_rows = args.rows[0];
    if (kind == MULTI_QKV_ROPE) total_rows /= 2;
    return args.n <= 1 ? launch_multi_tokens<T, 1>(state, args, kind, total_rows)
                       : launch_multi_tokens<T, 2>(state, args, kind, total_rows);
}

static int aligned16(const void *p) { return ((uintptr_t)p % 16) == 0; }

/* A fusion of the norm switched off (FERRY_CUDA_FUSE, to measure it): the
 * norm as its own kernel in front, into norm->scratch; *x and *norm then
 * describe the normalised input and no norm. */
ferry_status cuda_unfold_norm(ferry_backend *backend, int n, int cols, const float **x,
                              const ferry_fused_norm **norm) {
    const unsigned folds = n <= MULTI_MAX_TOKENS ? CUDA_FUSE_NORM1 | CUDA_FUSE_NORM1_WARP
                                                 : CUDA_FUSE_NORM16;
    if (!*norm || (cuda_state(backend)->fuse & folds)) return FERRY_OK;
    FERRY_TRY(cuda_rmsnorm(backend, (*norm)->scratch, *x, (*norm)->weight, n, cols,
                           (*norm)->eps));
    *x = (*norm)->scratch;
    *norm = NULL;
    return FERRY_OK;
}

/* Do the 1-2 token kernels take these matrices (kind: multi_kind)? */
static int multi_fits(const cuda_backend *state, int n_matrices, const float *x,
                      const ferry_fused_norm *norm, const void *const *weights,
                      const float *const *biases, const int *rows, ferry_dtype dtype, int n,
                      int cols, int kind) {
    int fits = n <= MULTI_MAX_TOKENS && n <= state->matvec_max_tokens &&
               (dtype == FERRY_DTYPE_F16 || dtype == FERRY_DTYPE_BF16) &&
               cols % LANE_COLS == 0 && aligned16(x) && (!norm || aligned16(norm->weight));
    for (int m = 0; m < n_matrices; m++)
        fits = fits && aligned16(weights[m]) && rows[m] > 0 &&
               !(kind == MULTI_SILU && biases && biases[m]);
    return fits;
}

/* Does the tensor-core matvec (3..16 tokens) take every matrix? */
static int mma_fits(const cuda_backend *state, int n_matrices, const void *const *weights,
                    ferry_dtype dtype, int n, int cols) {
    int fits = 1;
    for (int m = 0; m < n_matrices; m++)
        fits = fits && cuda_mma_matvec_fits(state, weights[m], dtype, n, cols);
    return fits;
}

static void multi_args_fill(multi_args *args, int n_matrices, float *const *outs,
                            const float *x, const ferry_fused_norm *norm,
                            const void *const *weights, const float *const *biases,
                            const int *rows, int n, int cols) {
    memset(args, 0, sizeof *args);
    for (int m = 0; m < n_matrices; m++) {
        args->outs[m] = outs[m];
        args->weights[m] = weights[m];
        args->biases[m] = biases ? biases[m] : NULL;
        args->rows[m] = rows[m];
    }
    args->n_matrices = n_matrices;
    args->x = x;
    args->norm_weight = norm ? norm->weight : NULL;
    args->norm_eps = norm ? norm->eps : 0.0f;
    args->n = n;
    args->cols = cols;
}

static ferry_status launch_multi_typed(const cuda_backend *state, const multi_args &args,
                                       ferry_dtype dtype, int kind) {
    if (dtype == FERRY_DTYPE_F16) CUDA_TRY(launch_multi<__half>(state, args, kind));
    else CUDA_TRY(launch_multi<__nv_bfloat16>(state, args, kind));
    return FERRY_OK;
}

/* 3..16 tokens on the tensor cores: x (normalised when norm) rounded once
 * for every matrix, then one launch for them all (silu_pair: with SiLU in
 * its epilogue) or, with that fusion off, one per matrix.  *out_silu_done
 * says whether silu(gate) * up is in outs[0] already. */
static ferry_status multi_on_tensor_cores(cuda_backend *state, int n_matrices,
                                          float *const *outs, const float *x,
                                          const ferry_fused_norm *norm,
                                          const void *const *weights,
                                          const float *const *biases, const int *rows,
                                          ferry_dtype dtype, int n, int cols, int silu_pair,
                                          int *out_silu_done) {
    const void *x16 = NULL;
    FERRY_TRY(cuda_x16_prepare(state, x, norm ? norm->weight : NULL, norm ? norm->eps : 0.0f,
                               dtype, n, cols, &x16));
    *out_silu_done = 0;
    if ((state->fuse & CUDA_FUSE_SILU16) && !cuda_tc_matvec_enabled(state)) {
        if (silu_pair && !(biases && (biases[0] || biases[1]))) {
            *out_silu_done = 1;
            return cuda_mma_silu(state, outs[0], NULL, x16, NULL, weights[0], weights[1], dtype,
                                 n, rows[0], cols);
        }
        return cuda_mma_stacked(state, n_matrices, outs, x16, weights, biases, rows, dtype, n,
                                cols, 0);
    }
    for (int m = 0; m < n_matrices; m++)
        FERRY_TRY(cuda_mma_matvec(state, outs[m], x16, weights[m], dtype,
                                  biases ? biases[m] : NULL, n, rows[m], cols, 0));
    return FERRY_OK;
}

ferry_status cuda_matmul_multi(ferry_backend *backend, int n_matrices, float *const *outs,
                               const float *x, const ferry_fused_norm *norm,
                               const void *const *weights, const float *const *biases,
                               const int *rows, ferry_dtype dtype, int n, int cols,
                               int silu_pair) {
    cuda_backend *state = cuda_state(backend);
    if (n_matrices < 1 || n_matrices > MULTI_MAX_MATRICES || (silu_pair && n_matrices != 2) ||
        (silu_pair && rows[0] != rows[1]))
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "matmul_multi: %d matrices%s (1..3; silu_pair needs 2 of equal rows)",
                          n_matrices, silu_pair ? " with silu_pair" : "");
    if (n <= 0) return FERRY_OK;
    FERRY_TRY(cuda_unfold_norm(backend, n, cols, &x, &norm));
    const int kind = silu_pair ? MULTI_SILU : MULTI_STACKED;
    if (multi_fits(state, n_matrices, x, norm, weights, biases, rows, dtype, n, cols, kind)) {
        multi_args args;
        multi_args_fill(&args, n_matrices, outs, x, norm, weights, biases, rows, n, cols);
        return launch_multi_typed(state, args, dtype, kind);
    }
    int silu_done = 0;
    if (mma_fits(state, n_matrices, weights, dtype, n, cols)) {
        FERRY_TRY(multi_on_tensor_cores(state, n_matrices, outs, x, norm, weights, biases, rows,
                                        dtype, n, cols, silu_pair, &silu_done));
    } else {
        if (norm) { /* the plain ops: normalise into the caller's scratch first */
            FERRY_TRY(cuda_rmsnorm(backend, norm->scratch, x, norm->weight, n, cols, norm->eps));
            x = norm->scratch;
        }
        for (int m = 0; m < n_matrices; m++)
            FERRY_TRY(cuda_matmul(backend, outs[m], x, weights[m], dtype,
                                  biases ? biases[m] : NULL, n, rows[m], cols, 0));
    }
    if (silu_pair && !silu_done)
        FERRY_TRY(cuda_silu_mul(backend, outs[0], outs[0], outs[1], n, rows[0]));
    return FERRY_OK;
}

ferry_status cuda_qkv_rope_store(ferry_backend *backend, float *q, float *k, float *v,
                                const float *x, const ferry_fused_norm *norm,
                                const void *const *weights, const float *const *biases,
                                ferry_dtype dtype, int n, int cols, ferry_kv_layer *cache,
                                const ferry_token_batch *batch, const float *inv_freq,
                                ferry_attention_shape shape) {
    cuda_backend *state = cuda_state(backend);
    if (shape.head_dim <= 0 || shape.head_dim % 2 != 0 || shape.n_heads <= 0 ||
        shape.n_kv_heads <= 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "qkv_rope_store: %d heads, %d KV heads of %d dims", shape.n_heads,
                          shape.n_kv_heads, shape.head_dim);
    if (n <= 0) return FERRY_OK;
    float *const outs[3] = {q, k, v};
    const int rows[3] = {shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim,
                         shape.n_kv_heads * shape.head_dim};
    const int epilogue = (state->fuse & CUDA_FUSE_QKV_ROPE) &&
                         cuda_mma_qkv_rope_fits(shape, cache) &&
                         batch->n_tokens == n;
    if (epilogue) {
        if (mma_fits(state, 3, weights, dtype, n, cols) && !cuda_tc_matvec_enabled(state)) {
            const void *x16 = NULL;
            const float *inv_rms = NULL;
            FERRY_TRY(cuda_norm_operand(backend, x, norm, n, cols, dtype, &x16, &inv_rms));
            return cuda_mma_qkv_rope(state, q, x16, inv_rms, weights, biases, dtype, n, cols,
                                     cache, batch, inv_freq, shape);
        }
        FERRY_TRY(cuda_unfold_norm(backend, n, cols, &x, &norm));
        if (multi_fits(state, 3, x, norm, weights, biases, rows, dtype, n, cols,
                       MULTI_QKV_ROPE)) {
            multi_args args;
            multi_args_fill(&args, 3, outs, x, norm, weights, biases, rows, n, cols);
            args.half = shape.head_dim / 2;
            args.rope = rope_store_of(state, cache, batch, inv_freq);
            return launch_multi_typed(state, args, dtype, MULTI_QKV_ROPE);
        }
    }
    FERRY_TRY(cuda_matmul_multi(backend, 3, outs, x, norm, weights, biases, rows, dtype, n, cols,
                                0));
    return cuda_rope_kv_store(backend, q, k, v, cache, batch, inv_freq, shape);
}
