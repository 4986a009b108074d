/*
 * matvec_mma.cu — out[t] (+)= x[t] W^T for 3..16 tokens on the tensor
 * cores (mma.sync m16n8k16, float32 accumulate), and the stacked launches
 * a decode layer wants from it:
 * - one matrix (cuda_mma_matvec), bias and residual add in the epilogue;
 * - Q, K and V in one launch, each block's rows paired (i, i + head_dim/2)
 *   so the epilogue applies RoPE and writes K and V straight into the KV
 *   cache (cuda_mma_qkv_rope);
 * - gate and up in one launch, each block taking 8 rows of each, so the
 *   epilogue writes silu(gate) * up, in float or already rounded for the
 *   down projection (cuda_mma_silu);
 * - up to three matrices of one x, plain (cuda_mma_stacked).
 * A block of 8 warps owns 16 rows (one m16 tile) and its warps split the
 * columns in chunks of 32; each lane reads 16 bytes of two rows and of x
 * (already rounded to the weight dtype) per chunk: the weights past L1
 * (each byte is used once), so L1 keeps x for the SM's other blocks (x
 * is as many bytes per block as its weights; from L2 each time, L2 and
 * not HBM would be the limit at 16 tokens).  The dot product does
 * not care in which order k is summed, so the fragments take k in the
 * order the 16-byte loads deliver it: lane (g, q) holds columns 8q .. 8q+7
 * of tile rows g and g + 8 and of token g, split over two mma steps.  The
 * C fragment leaves tile rows g and g + 8 of a token in one thread, which
 * is what the pairing uses.  Stacked launches: a matrix of 4096 rows alone
 * gives 256 blocks and pays a ramp and a tail per launch; three together
 * read HBM like one large matrix.
 * Hot path: no allocation, no host synchronisation.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/warp.cuh"

enum {
    MMA_WARPS = 8,
    MMA_ROWS = 16,                      /* rows of a block: tile rows 0..7 (lo) and 8..15 (hi) */
    MMA_HALF = MMA_ROWS / 2,
    MMA_CHUNK_COLS = CUDA_MMA_COLS_MULTIPLE,
    MMA_UNROLL = 4,
    MMA_MAX_SEGMENTS = 3,
    MMA_NORM_TOKENS = CUDA_NORM_MAX_TOKENS, /* tokens of a launch: 8 * N_TILES at most */
    MMA_NORM_GROUPS = MMA_WARPS * 32 / MMA_NORM_TOKENS, /* last block: threads per token */
};

/* What a block does with its sums. */
enum mma_epilogue {
    MMA_PLAIN,      /* out (+)= sum + bias */
    MMA_SILU,       /* segment 0 gate, 1 up: out_0 = silu(gate) * up */
    MMA_ROPE_KV,    /* segments q, k, v: rotate q into out_0, rotated k and v into the cache */
    MMA_NORM_NEXT,  /* MMA_PLAIN, one matrix, and the next RMSNorm of out prepared (mma_norm) */
};

/* One matrix of a launch: blocks [previous end_block, end_block). */
struct mma_segment {
    const void *w;
    const float *bias;
    float *out;
    int rows;
    int end_block;
    /* 0: a block's lo and hi rows are 16 i + (0..7) and 16 i + 8 + (0..7).
     * h (a multiple of 8): inside each group of 2h rows (a head), block i
     * takes rows j0 .. j0+7 and j0+h .. j0+h+7, j0 = 8 (i mod h/8): the
     * pairs RoPE rotates together. */
    int pair_half;
};

/* MMA_NORM_NEXT: the rows a launch writes (the residual stream) prepared
 * for the RMSNorm the next launch applies: x16 = out * weight rounded to
 * T, and inv_rms[t] = 1 / sqrt(mean(out[t]^2) + eps), which the next
 * launch multiplies its sums by (x16 is not normalised: the norm's scale
 * is per token, so it commutes with the matrix).  Each block adds up its
 * rows' squares per token into partials; the last block to finish (a
 * count on `counter`, which it leaves zero) adds those in block order. */
struct mma_norm {
    const float *weight;        /* [rows] */
    void *x16;                  /* [n, rows] */
    float *partials;            /* [blocks, MMA_NORM_TOKENS] */
    unsigned *counter;
    float *inv_rms;             /* [n] */
    float eps;
};

struct mma_args {
    mma_segment segment[MMA_MAX_SEGMENTS];
    void *out16;            /* MMA_SILU: the product rounded to T here [n, rows], not in out */
    const float *inv_rms;   /* MMA_SILU, MMA_ROPE_KV: the sums times inv_rms[token] first
                               (x16 came from an MMA_NORM_NEXT launch); NULL: as they are */
    const void *x16;
    int n, cols, accumulate;
    rope_store rope;            /* MMA_ROPE_KV */
    mma_norm norm;
};

/* Segment s's field, picked with constant indices only (a run-time index
 * into the kernel's argument arrays would copy them to local memory). */
#define SEGMENT_FIELD(s, field)                                                              \
    ((s) == 0 ? args.segment[0].field : (s) == 1 ? args.segment[1].field : args.segment[2].field)

/* A prepared norm's sum of squares of a token is formed in one order,
 * whether the launch that writes the rows forms it (MMA_NORM_NEXT) or
 * norm_prepare_kernel does from x in memory, so both give the same bits
 * (a streamed layer cannot prepare the next layer's norm, a resident one
 * does, and their logits must not differ): rows r and r + 8 of each block
 * of 16 rows squared and added (pair_squares), r = 0..7 in order (a block
 * partial), the partials of blocks g, g + 16, ... in order (group g), the
 * 16 groups in order.  Rounded operations, so the compiler fuses none. */
__device__ __forceinline__ float pair_squares(float a, float b) {
    return __fadd_rn(__fmul_rn(a, a), __fmul_rn(b, b));
}

/* Group `group`'s sum of the block partials partial(b), b < n_blocks. */
template <typename Partial>
__device__ __forceinline__ float norm_group_sum(Partial partial, int group, int n_blocks) {
    float sum = 0.0f;
    for (int b = group; b < n_blocks; b += MMA_NORM_GROUPS) sum = __fadd_rn(sum, partial(b));
    return sum;
}

/* 1 / rms of a token from its groups' sums. */
__device__ __forceinline__ float norm_inv_rms(const float *group_sums, int rows, float eps) {
    float total = 0.0f;
#pragma unroll
    for (int g = 0; g < MMA_NORM_GROUPS; g++) total = __fadd_rn(total, group_sums[g]);
    return 1.0f / sqrtf(total / (float)rows + eps);
}

/* MMA_NORM_NEXT, after the epilogue: this block's squares per token into
 * norm.partials; the last block to finish adds every block's (in the
 * order above, whichever block is last) into norm.inv_rms.  `rows`: the
 * width of the normalised rows. */
template <int TOKENS>
__device__ __forceinline__ void finish_norm_next(const mma_norm &norm,
                                                 float (*squares)[TOKENS], int rows, int n) {
    __shared__ bool last_block;
    __shared__ float group_sums[MMA_NORM_TOKENS][MMA_NORM_GROUPS];
    __syncthreads();
    if (threadIdx.x < TOKENS) {
        float sum = 0.0f;
#pragma unroll
        for (int r = 0; r < MMA_HALF; r++) sum = __fadd_rn(sum, squares[r][threadIdx.x]);
        norm.partials[(size_t)blockIdx.x * MMA_NORM_TOKENS + threadIdx.x] = sum;
    }
    __threadfence(); /* the partials, before the count */
    __syncthreads();
    if (threadIdx.x == 0) {
        last_block = atomicAdd(norm.counter, 1u) == gridDim.x - 1;
        if (last_block) *norm.counter = 0; /* every block has counted */
    }
    __syncthreads();
    if (!last_block) return;
    __threadfence();
    const int token = threadIdx.x % MMA_NORM_TOKENS, group = threadIdx.x / MMA_NORM_TOKENS;
    const float *partials = norm.partials + token;
    group_sums[token][group] = norm_group_sum(
        [&](int b) { return __ldcg(partials + (size_t)b * MMA_NORM_TOKENS); }, group,
        (int)gridDim.x);
    __syncthreads();
    if (threadIdx.x < n)
        norm.inv_rms[threadIdx.x] = norm_inv_rms(group_sums[threadIdx.x], rows, norm.eps);
}

/* The same preparation from x in memory, for a launch whose norm no launch
 * before prepared: block t (one per token) writes x16[t] = x[t] * weight
 * rounded and inv_rms[t], the sum of squares in the order above. */
enum { NORM_PREPARE_THREADS = 256, NORM_PREPARE_MAX_BLOCKS = 4096 };
template <typename T>
__global__ void __launch_bounds__(NORM_PREPARE_THREADS)
    norm_prepare_kernel(T *x16, float *inv_rms, const float *x, const float *weight, int rows,
                        float eps) {
    __shared__ float partials[NORM_PREPARE_MAX_BLOCKS];
    __shared__ float group_sums[MMA_NORM_GROUPS];
    pdl_trigger();
    pdl_wait();
    const float *row = x + (size_t)blockIdx.x * rows;
    T *result = x16 + (size_t)blockIdx.x * rows;
    for (int i = threadIdx.x; i < rows; i += blockDim.x) result[i] = from_float<T>(row[i] * weight[i]);
    const int n_blocks = (rows + MMA_ROWS - 1) / MMA_ROWS;
    for (int b = threadIdx.x; b < n_blocks; b += blockDim.x) {
        float sum = 0.0f;
        for (int r = 0; r < MMA_HALF; r++) {
            const int row_a = b * MMA_ROWS + r, row_b = row_a + MMA_HALF;
            const float squares = row_a >= rows ? 0.0f
                                  : pair_squares(row[row_a], row_b < rows ? row[row_b] : 0.0f);
            sum = __fadd_rn(sum, squares);
        }
        partials[b] = sum;
    }
    __syncthreads();
    if (threadIdx.x < MMA_NORM_GROUPS)
        group_sums[threadIdx.x] =
            norm_group_sum([&](int b) { return partials[b]; }, threadIdx.x, n_blocks);
    __syncthreads();
    if (threadIdx.x == 0) inv_rms[blockIdx.x] = norm_inv_rms(group_sums, rows, eps);
}

/* N_TILES tiles of 8 tokens (1: n <= 8, 2: n <= 16).  cols % 32 == 0;
 * weights and x16 16-byte aligned. */
template <typename T, int N_TILES, int EPILOGUE>
__global__ void __launch_bounds__(MMA_WARPS * 32) mma_rows_kernel(const mma_args args) {
    __shared__ float partial[MMA_WARPS][MMA_ROWS][8 * N_TILES];
    pdl_trigger();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, q = lane & 3;
    const int cols = args.cols;

    /* This block's segment and its first lo and hi rows. */
    const int block = blockIdx.x;
    const int s = block < args.segment[0].end_block ? 0 : block < args.segment[1].end_block ? 1 : 2;
    const int i = block - (s == 0 ? 0 : s == 1 ? args.segment[0].end_block : args.segment[1].end_block);
    const int rows = SEGMENT_FIELD(s, rows), half = SEGMENT_FIELD(s, pair_half);
    const T *w_lo_matrix = static_cast<const T *>(SEGMENT_FIELD(s, w)), *w_hi_matrix = w_lo_matrix;
    int lo0, hi0;
    if (EPILOGUE == MMA_SILU) {
        w_hi_matrix = static_cast<const T *>(args.segment[1].w);
        lo0 = hi0 = MMA_HALF * i;
    } else if (half == 0) {
        lo0 = MMA_ROWS * i;
        hi0 = lo0 + MMA_HALF;
    } else {
        const int per_group = half / MMA_HALF;
        lo0 = (i / per_group) * 2 * half + (i % per_group) * MMA_HALF;
        hi0 = lo0 + half;
    }
    /* rows past the end re-read the last row; their sums are dropped */
    const int row_lo = min(lo0 + g, rows - 1), row_hi = min(hi0 + g, rows - 1);
    const uint4 *w_lo = reinterpret_cast<const uint4 *>(w_lo_matrix + (size_t)row_lo * cols);
    const uint4 *w_hi = reinterpret_cast<const uint4 *>(w_hi_matrix + (size_t)row_hi * cols);
    const T *x16 = static_cast<const T *>(args.x16);
    const uint4 *x_rows[N_TILES];
    bool x_live[N_TILES];
#pragma unroll
    for (int tile = 0; tile < N_TILES; tile++) {
        int token = g + 8 * tile;
        x_live[tile] = token < args.n;
        x_rows[tile] = reinterpret_cast<const uint4 *>(x16 + (size_t)(x_live[tile] ? token : 0) * cols);
    }
    float c[N_TILES][4];
#pragma unroll
    for (int tile = 0; tile < N_TILES; tile++)
#pragma unroll
        for (int e = 0; e < 4; e++) c[tile][e] = 0.0f;

    const int n_chunks = cols / MMA_CHUNK_COLS;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    /* The first MMA_UNROLL chunks of weights are fetched into L2 before
     * the wait for the kernel that wrote x16 (into L2, not registers:
     * holding them across the wait costs registers and a block per SM). */
    int chunk = warp;
    if (chunk + (MMA_UNROLL - 1) * MMA_WARPS < n_chunks) {
#pragma unroll
        for (int u = 0; u < MMA_UNROLL; u++) {
            const int at = (chunk + u * MMA_WARPS) * (MMA_CHUNK_COLS / 8) + q;
            prefetch_l2(w_lo + at);
            prefetch_l2(w_hi + at);
        }
    }
    pdl_wait();
    for (; chunk + (MMA_UNROLL - 1) * MMA_WARPS < n_chunks; chunk += MMA_UNROLL * MMA_WARPS) {
        uint4 lo[MMA_UNROLL], hi[MMA_UNROLL], xv[MMA_UNROLL][N_TILES];
#pragma unroll
        for (int u = 0; u < MMA_UNROLL; u++) {
            /* 16-byte index of columns 32 * chunk + 8q .. +8 */
            const int at = (chunk + u * MMA_WARPS) * (MMA_CHUNK_COLS / 8) + q;
            lo[u] = load_streaming(w_lo + at);
            hi[u] = load_streaming(w_hi + at);
#pragma unroll
            for (int tile = 0; tile < N_TILES; tile++)
                xv[u][tile] = x_live[tile] ? __ldg(x_rows[tile] + at) : zero;
        }
#pragma unroll
        for (int u = 0; u < MMA_UNROLL; u++) {
            const uint32_t a0[4] = {lo[u].x, hi[u].x, lo[u].y, hi[u].y};
            const uint32_t a1[4] = {lo[u].z, hi[u].z, lo[u].w, hi[u].w};
#pragma unroll
            for (int tile = 0; tile < N_TILES; tile++) {
                mma_m16n8k16<T>::run(c[tile], a0, xv[u][tile].x, xv[u][tile].y);
                mma_m16n8k16<T>::run(c[tile], a1, xv[u][tile].z, xv[u][tile].w);
            }
        }
    }
    for (; chunk < n_chunks; chunk += MMA_WARPS) {
        const int at = chunk * (MMA_CHUNK_COLS / 8) + q;
        const uint4 lo = load_streaming(w_lo + at), hi = load_streaming(w_hi + at);
        const uint32_t a0[4] = {lo.x, hi.x, lo.y, hi.y};
        const uint32_t a1[4] = {lo.z, hi.z, lo.w, hi.w};
#pragma unroll
        for (int tile = 0; tile < N_TILES; tile++) {
            const uint4 xv = x_live[tile] ? __ldg(x_rows[tile] + at) : zero;
            mma_m16n8k16<T>::run(c[tile], a0, xv.x, xv.y);
            mma_m16n8k16<T>::run(c[tile], a1, xv.z, xv.w);
        }
    }
    /* C fragment: c[0], c[1] = tile row g, tokens 2q, 2q+1; c[2], c[3] = tile row g+8 */
#pragma unroll
    for (int tile = 0; tile < N_TILES; tile++) {
        partial[warp][g][8 * tile + 2 * q] = c[tile][0];
        partial[warp][g][8 * tile + 2 * q + 1] = c[tile][1];
        partial[warp][g + 8][8 * tile + 2 * q] = c[tile][2];
        partial[warp][g + 8][8 * tile + 2 * q + 1] = c[tile][3];
    }
    __syncthreads();

    /* Epilogue: a thread per (tile row r < 8, token) sums the warps'
     * split-K parts of lo row lo0 + r and hi row hi0 + r in warp order. */
    float *out = SEGMENT_FIELD(s, out);
    const float *bias = SEGMENT_FIELD(s, bias);
    __shared__ float squares[MMA_HALF][8 * N_TILES]; /* MMA_NORM_NEXT: out^2 of rows r, r + 8 */
    for (int e = threadIdx.x; e < MMA_HALF * 8 * N_TILES; e += blockDim.x) {
        const int r = e / (8 * N_TILES), token = e % (8 * N_TILES);
        const int row_a = lo0 + r, row_b = hi0 + r;
        if (EPILOGUE == MMA_NORM_NEXT) squares[r][token] = 0.0f;
        if (token >= args.n || row_a >= rows) continue;
        float a = 0.0f, b = 0.0f;
#pragma unroll
        for (int k = 0; k < MMA_WARPS; k++) {
            a += partial[k][r][token];
            b += partial[k][r + MMA_HALF][token];
        }
        if (args.inv_rms && (EPILOGUE == MMA_SILU || EPILOGUE == MMA_ROPE_KV)) {
            const float scale = args.inv_rms[token];
            a *= scale;
            b *= scale;
        }
        if (EPILOGUE == MMA_SILU) {
            /* the float math of cuda_silu_mul: g / (1 + e^-g) * u */
            const float product = a / (1.0f + expf(-a)) * b;
            const size_t at = (size_t)token * rows + row_a;
            if (args.out16) static_cast<T *>(args.out16)[at] = from_float<T>(product);
            else out[at] = product;
            continue;
        }
        const bool has_b = row_b < rows; /* (always, when rows pair) */
        if (bias) {
            a += bias[row_a];
            if (has_b) b += bias[row_b];
        }
        if (EPILOGUE == MMA_PLAIN || EPILOGUE == MMA_NORM_NEXT) {
            float *dst = out + (size_t)token * rows;
            a = args.accumulate ? dst[row_a] + a : a;
            b = args.accumulate && has_b ? dst[row_b] + b : b;
            dst[row_a] = a;
            if (has_b) dst[row_b] = b;
            if (EPILOGUE == MMA_NORM_NEXT) {
                T *x16 = static_cast<T *>(args.norm.x16) + (size_t)token * rows;
                x16[row_a] = from_float<T>(a * args.norm.weight[row_a]);
                if (has_b) x16[row_b] = from_float<T>(b * args.norm.weight[row_b]);
                squares[r][token] = pair_squares(a, has_b ? b : 0.0f);
            }
            continue;
        }
        /* MMA_ROPE_KV: (a, b) is the pair (j, j + half) of head `head` */
        const int head = row_a / (2 * half), j = row_a % (2 * half);
        bool to_q;
        const float2 pair = args.rope.place_pair(s, token, head, j, half, rows, a, b, &to_q);
        if (to_q) {
            out[(size_t)token * rows + row_a] = pair.x;
            out[(size_t)token * rows + row_b] = pair.y;
        }
    }
    if (EPILOGUE == MMA_NORM_NEXT) finish_norm_next<8 * N_TILES>(args.norm, squares, rows, args.n);
}
#undef SEGMENT_FIELD

template <typename T, int EPILOGUE>
static cudaError_t launch_rows_typed(const cuda_backend *state, const mma_args &args) {
    int n_blocks = 0;
    for (int s = 0; s < MMA_MAX_SEGMENTS; s++)
        if (args.segment[s].end_block > n_blocks) n_blocks = args.segment[s].end_block;
    if (args.n <= 8)
        return cuda_launch(state, mma_rows_kernel<T, 1, EPILOGUE>, n_blocks, MMA_WARPS * 32, args);
    return cuda_launch(state, mma_rows_kernel<T, 2, EPILOGUE>, n_blocks, MMA_WARPS * 32, args);
}

static ferry_status launch_rows(const cuda_backend *state, const mma_args &args,
                                ferry_dtype dtype, int epilogue) {
    const bool f16 = dtype == FERRY_DTYPE_F16;
    cudaError_t error;
    switch (epilogue) {
    case MMA_SILU:
        error = f16 ? launch_rows_typed<__half, MMA_SILU>(state, args)
                    : launch_rows_typed<__nv_bfloat16, MMA_SILU>(state, args);
        break;
    case MMA_ROPE_KV:
        error = f16 ? launch_rows_typed<__half, MMA_ROPE_KV>(state, args)
                    : launch_rows_typed<__nv_bfloat16, MMA_ROPE_KV>(state, args);
        break;
    case MMA_NORM_NEXT:
        error = f16 ? launch_rows_typed<__half, MMA_NORM_NEXT>(state, args)
                    : launch_rows_typed<__nv_bfloat16, MMA_NORM_NEXT>(state, args);
        break;
    default:
        error = f16 ? launch_rows_typed<__half, MMA_PLAIN>(state, args)
                    : launch_rows_typed<__nv_bfloat16, MMA_PLAIN>(state, args);
    }
    CUDA_TRY(error);
    return FERRY_OK;
}

/* Segments for n_matrices matrices of `rows` (pair_half[m]: 0 or the
 * RoPE half), in order; a segment's blocks cover its rows in tiles of 16. */
static void fill_segments(mma_args *args, int n_matrices, float *const *outs,
                          const void *const *weights, const float *const *biases,
                          const int *rows, const int *pair_half) {
    int end = 0;
    for (int m = 0; m < MMA_MAX_SEGMENTS; m++) {
        mma_segment *segment = &args->segment[m];
        if (m < n_matrices) {
            segment->w = weights[m];
            segment->bias = biases ? biases[m] : NULL;
            segment->out = outs[m];
            segment->rows = rows[m];
            segment->pair_half = pair_half ? pair_half[m] : 0;
            end += (rows[m] + MMA_ROWS - 1) / MMA_ROWS;
        }
        segment->end_block = end; /* unused segments: empty */
    }
}

ferry_status cuda_mma_stacked(cuda_backend *state, int n_matrices, float *const *outs,
                              const void *x16, const void *const *weights,
                              const float *const *biases, const int *rows, ferry_dtype dtype,
                              int n, int cols, int accumulate) {
    if (n <= 0) return FERRY_OK;
    if (n_matrices < 1 || n_matrices > MMA_MAX_SEGMENTS)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "mma matvec: %d matrices (1..%d)",
                          n_matrices, MMA_MAX_SEGMENTS);
    mma_args args = {};
    fill_segments(&args, n_matrices, outs, weights, biases, rows, NULL);
    args.x16 = x16;
    args.n = n;
    args.cols = cols;
    args.accumulate = accumulate;
    return launch_rows(state, args, dtype, MMA_PLAIN);
}

ferry_status cuda_mma_matvec(cuda_backend *state, float *out, const void *x16, const void *w,
                             ferry_dtype dtype, const float *bias, int n, int rows, int cols,
                             int accumulate) {
    if (n <= 0 || rows <= 0) return FERRY_OK;
    if (cuda_tc_matvec_enabled(state))
        return cuda_tc_matvec(state, out, x16, 0, w, dtype, bias, n, rows, cols, accumulate);
    return cuda_mma_stacked(state, 1, &out, x16, &w, &bias, &rows, dtype, n, cols, accumulate);
}

ferry_status cuda_mma_matvec_norm_next(cuda_backend *state, float *out, const void *x16,
                                       const void *w, ferry_dtype dtype, int n, int rows,
                                       int cols, const float *norm_weight, float eps,
                                       void *norm_x16) {
    if (n <= 0 || rows <= 0) return FERRY_OK;
    if (n > MMA_NORM_TOKENS)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "mma matvec: %d tokens to prepare a norm for "
                          "(at most %d)", n, MMA_NORM_TOKENS);
    const size_t partial_floats = (size_t)((rows + MMA_ROWS - 1) / MMA_ROWS) * MMA_NORM_TOKENS;
    FERRY_TRY(cuda_scratch_reserve_floats(state, &state->norm_partials,
                                          &state->norm_partials_floats, partial_floats));
    mma_args args = {};
    const float *no_bias = NULL;
    fill_segments(&args, 1, &out, &w, &no_bias, &rows, NULL);
    args.x16 = x16;
    args.n = n;
    args.cols = cols;
    args.accumulate = 1;
    args.norm.weight = norm_weight;
    args.norm.x16 = norm_x16;
    args.norm.partials = state->norm_partials;
    args.norm.counter = state->norm_counter;
    args.norm.inv_rms = state->norm_inv_rms;
    args.norm.eps = eps;
    return launch_rows(state, args, dtype, MMA_NORM_NEXT);
}

ferry_status cuda_mma_norm_prepare(cuda_backend *state, const float *x, const float *norm_weight,
                                   float eps, ferry_dtype dtype, int n, int cols,
                                   const void **out_x16) {
    if (n > MMA_NORM_TOKENS || (cols + MMA_ROWS - 1) / MMA_ROWS > NORM_PREPARE_MAX_BLOCKS)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "norm prepare: %d tokens of %d columns (at most %d of %d)", n, cols,
                          MMA_NORM_TOKENS, NORM_PREPARE_MAX_BLOCKS * MMA_ROWS);
    FERRY_TRY(cuda_scratch_reserve(state, &state->activations, &state->activations_bytes,
                                   (size_t)n * cols * 2));
    if (dtype == FERRY_DTYPE_F16)
        CUDA_TRY(cuda_launch(state, norm_prepare_kernel<__half>, n, NORM_PREPARE_THREADS,
                             (__half *)state->activations, state->norm_inv_rms, x, norm_weight,
                             cols, eps));
    else
        CUDA_TRY(cuda_launch(state, norm_prepare_kernel<__nv_bfloat16>, n, NORM_PREPARE_THREADS,
                             (__nv_bfloat16 *)state->activations, state->norm_inv_rms, x,
                             norm_weight, cols, eps));
    *out_x16 = state->activations;
    return FERRY_OK;
}

ferry_status cuda_mma_silu(cuda_backend *state, float *out, void *out16, const void *x16,
                           const float *inv_rms, const void *gate, const void *up,
                           ferry_dtype dtype, int n, int rows, int cols) {
    if (n <= 0 || rows <= 0) return FERRY_OK;
    mma_args args = {};
    args.segment[0].w = gate;
    args.segment[0].out = out;
    args.segment[0].rows = rows;
    args.segment[1].w = up;
    args.segment[1].rows = rows;
    /* 8 rows of gate and the same 8 of up per block */
    for (int s = 0; s < MMA_MAX_SEGMENTS; s++)
        args.segment[s].end_block = (rows + MMA_HALF - 1) / MMA_HALF;
    args.out16 = out16;
    args.inv_rms = inv_rms;
    args.x16 = x16;
    args.n = n;
    args.cols = cols;
    return launch_rows(state, args, dtype, MMA_SILU);
}

int cuda_mma_qkv_rope_fits(ferry_attention_shape shape, const ferry_kv_layer *cache) {
    return shape.head_dim % (2 * MMA_HALF) == 0 && cache && cache->k && cache->v;
}

ferry_status cuda_mma_qkv_rope(cuda_backend *state, float *q, const void *x16,
                               const float *inv_rms, const void *const *weights,
                               const float *const *biases,
                               ferry_dtype dtype, int n, int cols, ferry_kv_layer *cache,
                               const ferry_token_batch *batch, const float *inv_freq,
                               ferry_attention_shape shape) {
    if (n <= 0) return FERRY_OK;
    const int half = shape.head_dim / 2;
    const int rows[3] = {shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim,
                         shape.n_kv_heads * shape.head_dim};
    const int pair_half[3] = {half, half, half};
    float *const outs[3] = {q, NULL, NULL};
    mma_args args = {};
    fill_segments(&args, 3, outs, weights, biases, rows, pair_half);
    args.inv_rms = inv_rms;
    args.x16 = x16;
    args.n = n;
    args.cols = cols;
    args.rope = rope_store_of(state, cache, batch, inv_freq);
    return launch_rows(state, args, dtype, MMA_ROPE_KV);
}
