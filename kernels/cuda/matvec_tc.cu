/*
 * matvec_tc.cu — out[t] (+)= x[t] W^T (+ bias) for 3..16 tokens on the
 * tensor cores (mma.sync m16n8k16, float32 accumulate), Hopper and newer:
 * the weight stream is what costs, so the kernel is built to keep HBM busy.
 * - A block of 4 warps owns 64 or 128 weight rows (one or two m16 tiles
 *   per warp: FERRY_CUDA_TC_MATVEC=rows32 picks two) and one K slice;
 *   the blocks of a thread-block cluster (1, 2, 4 or 8) cover the whole K
 *   range of the same rows (split-K), so a 4096-row matrix still has
 *   enough blocks for every SM.
 * - Each lane keeps 16 weight loads of 16 bytes in flight
 *   (a register ring refilled as each chunk is consumed); the first ring is
 *   loaded before pdl_wait (weights are written by no kernel).
 * - x for the slice (f32 converted on the way, or already 16-bit) is
 *   staged once per block in shared memory and read from there by all four
 *   warps; rows pad it so the fragment reads are free of bank conflicts.
 * - The cluster's partial sums meet in distributed shared memory and are
 *   added in a fixed rank order (deterministic, no atomics), then bias and
 *   the residual (accumulate) are applied once.
 * Hot path: no allocation, no host synchronisation.
 */
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/warp.cuh"

namespace cg = cooperative_groups;

enum {
    TC_WARPS = 4,
    TC_THREADS = 32 * TC_WARPS,
    TC_TILE_ROWS = 16,                  /* rows of one m16 tile; a warp has 1 or 2 */
    TC_CHUNK_COLS = 32,                 /* per lane: 8 columns (16 bytes) of 2 rows per tile */
    TC_LOADS_IN_FLIGHT = 16,            /* 16-byte weight loads in flight per lane */
    TC_MAX_SPLIT = 8,                   /* portable cluster size */
    TC_MIN_TOKENS = 3,
    TC_MAX_TOKENS = 16,
    TC_STATIC_SMEM_BYTES = 48 * 1024,   /* above this the kernel must opt in */
    TC_MAX_SMEM_BYTES = 200 * 1024,
};

struct tc_args {
    float *out;
    const void *x;       /* [n, cols], float or the weight dtype */
    const void *w;       /* [rows, cols] */
    const float *bias;   /* [rows] or NULL */
    int n, rows, cols;
    int slice_cols;      /* K columns per cluster rank, a multiple of TC_CHUNK_COLS */
    int x_stride;        /* elements between token rows of the staged x */
    int accumulate;
};

/* Eight x values (16 or 32 bytes as loaded) as 8 weight-dtype values. */
template <typename T, typename XT> struct x_group;
template <typename T> struct x_group<T, float> {
    enum { WORDS = 2 }; /* 16-byte words per 8 values */
    static __device__ __forceinline__ uint4 narrow(const uint4 (&raw)[WORDS]) {
        const uint4 a = raw[0], b = raw[1];
        return make_uint4(
            mma_m16n8k16<T>::pack(__uint_as_float(a.x), __uint_as_float(a.y)),
            mma_m16n8k16<T>::pack(__uint_as_float(a.z), __uint_as_float(a.w)),
            mma_m16n8k16<T>::pack(__uint_as_float(b.x), __uint_as_float(b.y)),
            mma_m16n8k16<T>::pack(__uint_as_float(b.z), __uint_as_float(b.w)));
    }
};
template <typename T> struct x_group<T, T> {
    enum { WORDS = 1 };
    static __device__ __forceinline__ uint4 narrow(const uint4 (&raw)[WORDS]) { return raw[0]; }
};

/* Ring slot `slot` <- chunk `chunk` of the lane's rows (zero past the
 * slice: the lane's 8 columns are all in or all out, as cols % 8 == 0). */
#define TC_LOAD_SLOT(slot, chunk)                                                        \
    do {                                                                                 \
        const bool in_slice = (chunk) * TC_CHUNK_COLS < lane_cols;                       \
        _Pragma("unroll") for (int m = 0; m < M_TILES; m++) {                            \
            lo[slot][m] = in_slice ? load_streaming(w_lo[m] + (chunk) * (TC_CHUNK_COLS / 8)) \
                                   : make_uint4(0, 0, 0, 0);                             \
            hi[slot][m] = in_slice ? load_streaming(w_hi[m] + (chunk) * (TC_CHUNK_COLS / 8)) \
                                   : make_uint4(0, 0, 0, 0);                             \
        }                                                                                \
    } while (0)

/* Grid (split, row tiles), cluster (split, 1, 1): cluster rank = K slice.
 * Fragments (k summed in any order, so the 16-byte loads set it): lane
 * (g, q) holds columns 8q .. 8q+7 of a chunk for rows g and g+8 (A) and
 * token g (B), as two k16 steps: columns 8q+0..3, then 8q+4..7. */
template <typename T, typename XT, int N_TILES, int M_TILES>
__global__ void __launch_bounds__(TC_THREADS, 4) tc_matvec_kernel(const tc_args args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __align__(16) unsigned char tc_shared[];
    constexpr int TOKENS = 8 * N_TILES;
    constexpr int WARP_ROWS = TC_TILE_ROWS * M_TILES, BLOCK_ROWS = TC_WARPS * WARP_ROWS;
    constexpr int DEPTH = TC_LOADS_IN_FLIGHT / (2 * M_TILES); /* chunks in the ring */
    pdl_trigger();
    cg::cluster_group cluster = cg::this_cluster();
    const int split = (int)cluster.num_blocks(), rank = (int)cluster.block_rank();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, q = lane & 3;
    const int block_row0 = blockIdx.y * BLOCK_ROWS;
    const int k0 = rank * args.slice_cols;
    const int k_end = min(k0 + args.slice_cols, args.cols);
    const int n_chunks = k_end > k0 ? (k_end - k0 + TC_CHUNK_COLS - 1) / TC_CHUNK_COLS : 0;
    /* rows g and g + 8 of each of the warp's tiles; rows past the end
     * re-read the last row, and their sums are dropped */
    const T *w = static_cast<const T *>(args.w);
    const uint4 *w_lo[M_TILES], *w_hi[M_TILES];
#pragma unroll
    for (int m = 0; m < M_TILES; m++) {
        const int first = block_row0 + warp * WARP_ROWS + m * TC_TILE_ROWS + g;
        const int row_lo = min(first, args.rows - 1), row_hi = min(first + 8, args.rows - 1);
        w_lo[m] = reinterpret_cast<const uint4 *>(w + (size_t)row_lo * args.cols + k0 + 8 * q);
        w_hi[m] = reinterpret_cast<const uint4 *>(w + (size_t)row_hi * args.cols + k0 + 8 * q);
    }
    const int lane_cols = k_end - k0 - 8 * q; /* chunk i is this lane's iff 32 i < lane_cols */

    uint4 lo[DEPTH][M_TILES], hi[DEPTH][M_TILES];
#pragma unroll
    for (int u = 0; u < DEPTH; u++) TC_LOAD_SLOT(u, u);
    pdl_wait();

    /* Stage x[0..TOKENS) [k0, k0 + slice_cols) as T, zero past n and k_end:
     * a batch of loads per thread in flight at once (one L2 round trip per
     * batch, not per group), then their conversion and store. */
    T *x_staged = reinterpret_cast<T *>(tc_shared);
    const XT *x = static_cast<const XT *>(args.x);
    constexpr int WORDS = x_group<T, XT>::WORDS, BATCH = 8 / WORDS;
    const int groups_per_token = args.slice_cols / 8, n_groups = TOKENS * groups_per_token;
    for (int first = threadIdx.x; first < n_groups; first += BATCH * TC_THREADS) {
        uint4 raw[BATCH][WORDS];
#pragma unroll
        for (int j = 0; j < BATCH; j++) {
            const int i = first + j * TC_THREADS;
            const int token = i / groups_per_token, col = 8 * (i % groups_per_token);
            const bool live = i < n_groups && token < args.n && k0 + col < k_end;
            const uint4 *source =
                reinterpret_cast<const uint4 *>(x + (size_t)token * args.cols + k0 + col);
#pragma unroll
            for (int word = 0; word < WORDS; word++)
                raw[j][word] = live ? source[word] : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int j = 0; j < BATCH; j++) {
            const int i = first + j * TC_THREADS;
            const int token = i / groups_per_token, col = 8 * (i % groups_per_token);
            if (i < n_groups)
                *reinterpret_cast<uint4 *>(x_staged + (size_t)token * args.x_stride + col) =
                    x_group<T, XT>::narrow(raw[j]);
        }
    }
    __syncthreads();

    float c[M_TILES][N_TILES][4];
#pragma unroll
    for (int m = 0; m < M_TILES; m++)
#pragma unroll
        for (int tile = 0; tile < N_TILES; tile++)
#pragma unroll
            for (int i = 0; i < 4; i++) c[m][tile][i] = 0.0f;
    const T *x_lane = x_staged + (size_t)g * args.x_stride + 8 * q;
    const int tile_stride = 8 * args.x_stride;
    for (int base = 0; base < n_chunks; base += DEPTH) {
#pragma unroll
        for (int u = 0; u < DEPTH; u++) {
            const int chunk = base + u;
            if (chunk < n_chunks) {
#pragma unroll
                for (int tile = 0; tile < N_TILES; tile++) {
                    const uint4 xv = *reinterpret_cast<const uint4 *>(
                        x_lane + tile * tile_stride + chunk * TC_CHUNK_COLS);
#pragma unroll
                    for (int m = 0; m < M_TILES; m++) {
                        const uint32_t a0[4] = {lo[u][m].x, hi[u][m].x, lo[u][m].y, hi[u][m].y};
                        const uint32_t a1[4] = {lo[u][m].z, hi[u][m].z, lo[u][m].w, hi[u][m].w};
                        mma_m16n8k16<T>::run(c[m][tile], a0, xv.x, xv.y);
                        mma_m16n8k16<T>::run(c[m][tile], a1, xv.z, xv.w);
                    }
                }
                TC_LOAD_SLOT(u, chunk + DEPTH);
            }
        }
    }

    /* This block's partial sums [BLOCK_ROWS][TOKENS] over the staged x
     * (no longer read).  C fragment: c[0], c[1] = row g, tokens 2q, 2q+1;
     * c[2], c[3] = row g + 8. */
    __syncthreads();
    float *partial = reinterpret_cast<float *>(tc_shared);
#pragma unroll
    for (int m = 0; m < M_TILES; m++)
#pragma unroll
        for (int tile = 0; tile < N_TILES; tile++) {
            const int r = warp * WARP_ROWS + m * TC_TILE_ROWS + g, t = 8 * tile + 2 * q;
            partial[r * TOKENS + t] = c[m][tile][0];
            partial[r * TOKENS + t + 1] = c[m][tile][1];
            partial[(r + 8) * TOKENS + t] = c[m][tile][2];
            partial[(r + 8) * TOKENS + t + 1] = c[m][tile][3];
        }
    cluster.sync(); /* every rank's partials written and visible */
    /* Rank `rank` finishes its share of the outputs, adding the ranks'
     * partials in rank order (the same order every run). */
    const int share = BLOCK_ROWS * TOKENS / split;
    for (int e = rank * share + threadIdx.x; e < (rank + 1) * share; e += TC_THREADS) {
        const int r = e / TOKENS, token = e % TOKENS, row = block_row0 + r;
        if (token >= args.n || row >= args.rows) continue;
        /* all remote reads in flight at once, then the sum in rank order */
        float parts[TC_MAX_SPLIT];
#pragma unroll
        for (int s = 0; s < TC_MAX_SPLIT; s++)
            parts[s] = s < split ? cluster.map_shared_rank(partial, s)[e] : 0.0f;
        float sum = 0.0f;
#pragma unroll
        for (int s = 0; s < TC_MAX_SPLIT; s++)
            if (s < split) sum += parts[s];
        if (args.bias) sum += args.bias[row];
        float *dst = args.out + (size_t)token * args.rows + row;
        *dst = args.accumulate ? *dst + sum : sum;
    }
    cluster.sync(); /* no block leaves while another reads its partials */
#endif
}
#undef TC_LOAD_SLOT

/* ------------------------------------------- v2: the original, deeper */

/* FERRY_CUDA_TC_MATVEC=v2 (v2m2: two m16 tiles per warp): the kernel of
 * matmul.cu, reworked for bytes in flight, no clusters.
 * - A block of WARPS warps owns 16 * M_TILES rows; warp w takes chunks
 *   w, w + WARPS, ... of 32 columns (the block reads a contiguous front of
 *   every row), and the warps' partial sums are added in shared memory in
 *   warp order (deterministic).  4096 rows: 256 blocks of 8 warps (v2), so
 *   every SM holds about 16 warps in one wave.
 * - Each lane keeps 16 weight loads of 16 bytes in flight, a register ring
 *   of 16 / (2 M_TILES) chunks refilled as each chunk is consumed; the
 *   first ring is issued before pdl_wait (weights are written by no kernel).
 * - Weights bypass L1 (each byte is used once), so x (rounded to the weight
 *   dtype once per step by the caller: half the bytes of float32) stays in
 *   L1 for the blocks of an SM, which sweep K at about the same pace; x is
 *   loaded V2_X_AHEAD chunks before its mma.
 * - cols % 8 == 0: a lane whose 8 columns of a chunk lie past the end loads
 *   zero weights and zero x (never memory past the rows).
 * Fragments as tc_matvec_kernel: lane (g, q) holds columns 8q .. 8q+7 of a
 * chunk for rows g and g + 8 (A) and token g (B), as two k16 steps. */
enum { V2_LOADS_IN_FLIGHT = 16, V2_X_AHEAD = 2 };

/* Chunk `chunk` (32 columns; 4 16-byte words) of the lane's weight rows. */
template <int M_TILES>
__device__ __forceinline__ void v2_load_weights(uint4 (&lo)[M_TILES], uint4 (&hi)[M_TILES],
                                                const uint4 *const (&w_lo)[M_TILES],
                                                const uint4 *const (&w_hi)[M_TILES], int chunk,
                                                bool live) {
#pragma unroll
    for (int m = 0; m < M_TILES; m++) {
        lo[m] = live ? load_streaming(w_lo[m] + 4 * chunk) : make_uint4(0, 0, 0, 0);
        hi[m] = live ? load_streaming(w_hi[m] + 4 * chunk) : make_uint4(0, 0, 0, 0);
    }
}

/* Chunk `chunk` of the lane's token in each token tile (zero past n),
 * through L1: the SM's other blocks read it too. */
template <int N_TILES>
__device__ __forceinline__ void v2_load_x(uint4 (&xv)[N_TILES],
                                          const uint4 *const (&x_rows)[N_TILES],
                                          const bool (&x_live)[N_TILES], int chunk, bool live) {
#pragma unroll
    for (int tile = 0; tile < N_TILES; tile++)
        xv[tile] = live && x_live[tile] ? __ldg(x_rows[tile] + 4 * chunk)
                                        : make_uint4(0, 0, 0, 0);
}

template <typename T, int N_TILES, int M_TILES, int WARPS>
__global__ void __launch_bounds__(WARPS * 32, 512 / (WARPS * 32))
    tc_v2_kernel(float *out, const T *x16, const T *w, const float *bias, int n, int rows,
                 int cols, int accumulate) {
    constexpr int TOKENS = 8 * N_TILES, BLOCK_ROWS = TC_TILE_ROWS * M_TILES;
    constexpr int DEPTH = V2_LOADS_IN_FLIGHT / (2 * M_TILES); /* chunks in the ring */
    static_assert(DEPTH % V2_X_AHEAD == 0, "x slots follow the ring slots");
    __shared__ float partial[WARPS][BLOCK_ROWS][TOKENS];
    pdl_trigger();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, q = lane & 3;
    const int row0 = blockIdx.x * BLOCK_ROWS;
    /* rows past the end re-read the last row; their sums are dropped */
    const uint4 *w_lo[M_TILES], *w_hi[M_TILES];
#pragma unroll
    for (int m = 0; m < M_TILES; m++) {
        const int first = row0 + m * TC_TILE_ROWS + g;
        const int row_lo = min(first, rows - 1), row_hi = min(first + 8, rows - 1);
        w_lo[m] = reinterpret_cast<const uint4 *>(w + (size_t)row_lo * cols + 8 * q);
        w_hi[m] = reinterpret_cast<const uint4 *>(w + (size_t)row_hi * cols + 8 * q);
    }
    /* the warp's i-th chunk is warp + WARPS i; it is the lane's iff its
     * first column 32 (warp + WARPS i) + 8q is below cols */
    const int lane_cols = cols - 8 * q;
    const int n_chunks = (cols + TC_CHUNK_COLS - 1) / TC_CHUNK_COLS;
    const int my_chunks = warp < n_chunks ? (n_chunks - warp + WARPS - 1) / WARPS : 0;

    /* The first ring, issued before pdl_wait.  ptxas hoists
     * griddepcontrol.wait to the top of its basic block, above any load
     * there (SASS: ACQBULK before the LDGs); loads in a block of their own,
     * behind a branch it does not if-convert, stay above it. */
    uint4 lo[DEPTH][M_TILES], hi[DEPTH][M_TILES];
    if (my_chunks > 0) {
#pragma unroll
        for (int u = 0; u < DEPTH; u++) {
            const int chunk = warp + WARPS * u;
            v2_load_weights<M_TILES>(lo[u], hi[u], w_lo, w_hi, chunk,
                                     chunk * TC_CHUNK_COLS < lane_cols);
        }
    } else {
#pragma unroll
        for (int u = 0; u < DEPTH; u++)
            v2_load_weights<M_TILES>(lo[u], hi[u], w_lo, w_hi, 0, false);
    }
    pdl_wait();

    const uint4 *x_rows[N_TILES];
    bool x_live[N_TILES];
#pragma unroll
    for (int tile = 0; tile < N_TILES; tile++) {
        const int token = 8 * tile + g;
        x_live[tile] = token < n;
        const size_t at = (size_t)(x_live[tile] ? token : 0) * cols + 8 * q;
        x_rows[tile] = reinterpret_cast<const uint4 *>(x16 + at);
    }
    uint4 xr[V2_X_AHEAD][N_TILES];
#pragma unroll
    for (int a = 0; a < V2_X_AHEAD; a++) {
        const int chunk = warp + WARPS * a;
        v2_load_x<N_TILES>(xr[a], x_rows, x_live, chunk, chunk * TC_CHUNK_COLS < lane_cols);
    }
    float c[M_TILES][N_TILES][4] = {};

    /* the warp's chunk i sits in ring slot i % DEPTH and x slot
     * i % V2_X_AHEAD; each slot is refilled with chunk i + DEPTH (or
     * i + V2_X_AHEAD) as soon as it is consumed */
    for (int base = 0; base < my_chunks; base += DEPTH) {
#pragma unroll
        for (int u = 0; u < DEPTH; u++) {
            const int i = base + u;
            if (i < my_chunks) {
                const int a = u % V2_X_AHEAD;
#pragma unroll
                for (int m = 0; m < M_TILES; m++) {
                    const uint32_t a0[4] = {lo[u][m].x, hi[u][m].x, lo[u][m].y, hi[u][m].y};
                    const uint32_t a1[4] = {lo[u][m].z, hi[u][m].z, lo[u][m].w, hi[u][m].w};
#pragma unroll
                    for (int tile = 0; tile < N_TILES; tile++) {
                        mma_m16n8k16<T>::run(c[m][tile], a0, xr[a][tile].x, xr[a][tile].y);
                        mma_m16n8k16<T>::run(c[m][tile], a1, xr[a][tile].z, xr[a][tile].w);
                    }
                }
                const int next_w = warp + WARPS * (i + DEPTH);
                v2_load_weights<M_TILES>(lo[u], hi[u], w_lo, w_hi, next_w,
                                         next_w * TC_CHUNK_COLS < lane_cols);
                const int next_x = warp + WARPS * (i + V2_X_AHEAD);
                v2_load_x<N_TILES>(xr[a], x_rows, x_live, next_x,
                                   next_x * TC_CHUNK_COLS < lane_cols);
            }
        }
    }

    /* C fragment: c[0], c[1] = row g, tokens 2q, 2q+1; c[2], c[3] = row g+8 */
#pragma unroll
    for (int m = 0; m < M_TILES; m++)
#pragma unroll
        for (int tile = 0; tile < N_TILES; tile++) {
            const int r = m * TC_TILE_ROWS + g, t = 8 * tile + 2 * q;
            partial[warp][r][t] = c[m][tile][0];
            partial[warp][r][t + 1] = c[m][tile][1];
            partial[warp][r + 8][t] = c[m][tile][2];
            partial[warp][r + 8][t + 1] = c[m][tile][3];
        }
    __syncthreads();
    /* epilogue: the warps' split-K parts in warp order, bias, accumulate */
    for (int e = threadIdx.x; e < BLOCK_ROWS * TOKENS; e += WARPS * 32) {
        const int r = e / TOKENS, token = e % TOKENS, row = row0 + r;
        if (token >= n || row >= rows) continue;
        float sum = 0.0f;
#pragma unroll
        for (int k = 0; k < WARPS; k++) sum += partial[k][r][token];
        if (bias) sum += bias[row];
        float *dst = out + (size_t)token * rows + row;
        *dst = accumulate ? *dst + sum : sum;
    }
}

/* v2: 8 warps of one m16 tile; v2m2: 16 warps of two (32 rows a block). */
template <typename T>
static cudaError_t v2_launch(const cuda_backend *state, float *out, const void *x16,
                             const void *w, const float *bias, int n, int rows, int cols,
                             int accumulate, int two_tiles) {
    void (*kernel)(float *, const T *, const T *, const float *, int, int, int, int);
    if (two_tiles)
        kernel = n <= 8 ? tc_v2_kernel<T, 1, 2, 16> : tc_v2_kernel<T, 2, 2, 16>;
    else
        kernel = n <= 8 ? tc_v2_kernel<T, 1, 1, 8> : tc_v2_kernel<T, 2, 1, 8>;
    const int block_rows = two_tiles ? 2 * TC_TILE_ROWS : TC_TILE_ROWS;
    const dim3 grid((unsigned)((rows + block_rows - 1) / block_rows));
    return cuda_launch(state, kernel, grid, two_tiles ? 16 * 32 : 8 * 32, out,
                       static_cast<const T *>(x16), static_cast<const T *>(w), bias, n, rows,
                       cols, accumulate);
}

/* ------------------------------------------------------------- host */

/* Which kernel serves 3..16 tokens, chosen once per backend (the choice
 * is a cache, hence the cast): the one in matmul.cu by default (faster on
 * the H100: 7.13 against 8.65 ms a batch-16 step), before Hopper, or with
 * FERRY_CUDA_TC_MATVEC=old; this file's on sm_90+ with
 * FERRY_CUDA_TC_MATVEC=split (one m16 tile per warp), rows32 (two), v2
 * (tc_v2_kernel, one m16 tile per warp, 8 warps) or v2m2 (two, 16 warps). */
enum {
    TC_CHOICE_UNSET = 0,
    TC_CHOICE_ROWS16 = 1,
    TC_CHOICE_ROWS32 = 2,
    TC_CHOICE_OLD = 3,
    TC_CHOICE_V2 = 4,
    TC_CHOICE_V2M2 = 5,
};

static int tc_choice(const cuda_backend *state) {
    cuda_backend *cache = const_cast<cuda_backend *>(state);
    if (cache->tc_matvec_kernel == TC_CHOICE_UNSET) {
        const char *choice = getenv("FERRY_CUDA_TC_MATVEC");
        int major = 0;
        if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, state->device) !=
            cudaSuccess) {
            (void)cudaGetLastError(); /* not sticky: the older kernel serves */
            major = 0;
        }
        if (major >= 9 && choice && strcmp(choice, "split") == 0)
            cache->tc_matvec_kernel = TC_CHOICE_ROWS16;
        else if (major >= 9 && choice && strcmp(choice, "rows32") == 0)
            cache->tc_matvec_kernel = TC_CHOICE_ROWS32;
        else if (major >= 9 && choice && strcmp(choice, "v2") == 0)
            cache->tc_matvec_kernel = TC_CHOICE_V2;
        else if (major >= 9 && choice && strcmp(choice, "v2m2") == 0)
            cache->tc_matvec_kernel = TC_CHOICE_V2M2;
        else
            cache->tc_matvec_kernel = TC_CHOICE_OLD;
    }
    return cache->tc_matvec_kernel;
}

int cuda_tc_matvec_enabled(const cuda_backend *state) { return tc_choice(state) != TC_CHOICE_OLD; }

int cuda_tc_matvec_takes_f32(const cuda_backend *state) {
    const int choice = tc_choice(state);
    return choice == TC_CHOICE_ROWS16 || choice == TC_CHOICE_ROWS32;
}

/* K columns per rank for a split, a multiple of the chunk. */
static int tc_slice_cols(int cols, int split) {
    const int per_rank = (cols + split - 1) / split;
    return (per_rank + TC_CHUNK_COLS - 1) / TC_CHUNK_COLS * TC_CHUNK_COLS;
}

/* Staged x rows are slice_cols + pad elements apart, pad making the
 * stride 64 bytes mod 128: the 8 lanes of a 16-byte shared-memory phase
 * (two tokens, 4 x 16 bytes each) then hit 8 different bank groups. */
static int tc_x_stride(int slice_cols) { return slice_cols + (slice_cols % 64 == 0 ? 32 : 0); }

static size_t tc_smem_bytes(int n, int slice_cols, int block_rows) {
    const int tokens = n <= 8 ? 8 : 16;
    const size_t x_bytes = (size_t)tokens * tc_x_stride(slice_cols) * 2;
    const size_t partial_bytes = (size_t)block_rows * tokens * sizeof(float);
    return x_bytes > partial_bytes ? x_bytes : partial_bytes;
}

/* The split (cluster size): enough blocks to fill every SM about evenly.
 * Score = how evenly the blocks spread over the SMs (blocks / (SMs *
 * ceil(blocks / SMs))) times how close they come to 3 blocks (12 warps)
 * per SM; a larger split must score clearly better (it costs a reduction
 * and shorter blocks); no split leaves a rank without columns. */
static int tc_choose_split(int rows, int cols, int block_rows, int n_multiprocessors) {
    const int row_tiles = (rows + block_rows - 1) / block_rows;
    const double sms = n_multiprocessors > 0 ? n_multiprocessors : 132;
    int best = 1;
    double best_score = -1.0;
    for (int split = 1; split <= TC_MAX_SPLIT; split *= 2) {
        const int slice = tc_slice_cols(cols, split);
        if (split > 1 && (long)slice * (split - 1) >= cols) break;
        const double blocks = (double)row_tiles * split;
        const double per_sm = blocks / sms;
        double waves = (double)(long)per_sm;
        if (waves < per_sm) waves += 1.0;
        double fill = blocks / (3.0 * sms);
        if (fill > 1.0) fill = 1.0;
        const double score = per_sm / waves * fill;
        if (score > best_score + 0.05) {
            best_score = score;
            best = split;
        }
    }
    return best;
}

/* Any rows; cols % 8 == 0; n 3..16; W 16-byte aligned; the x slice of the
 * largest split fits in shared memory. */
int cuda_tc_matvec_fits(const void *w, ferry_dtype dtype, int n, int cols) {
    if (dtype != FERRY_DTYPE_F16 && dtype != FERRY_DTYPE_BF16) return 0;
    if (n < TC_MIN_TOKENS || n > TC_MAX_TOKENS || cols <= 0 || cols % 8 != 0) return 0;
    if ((uintptr_t)w % 16 != 0) return 0;
    return tc_smem_bytes(n, tc_slice_cols(cols, TC_MAX_SPLIT), 2 * TC_WARPS * TC_TILE_ROWS) <=
           TC_MAX_SMEM_BYTES;
}

template <typename T, typename XT, int N_TILES, int M_TILES>
static cudaError_t tc_launch(const cuda_backend *state, const tc_args &args) {
    const int block_rows = TC_WARPS * TC_TILE_ROWS * M_TILES;
    /* a slice too wide for 48 KB of shared memory takes a larger split */
    int split = tc_choose_split(args.rows, args.cols, block_rows, state->n_multiprocessors);
    while (split < TC_MAX_SPLIT &&
           tc_smem_bytes(args.n, tc_slice_cols(args.cols, split), block_rows) >
               TC_STATIC_SMEM_BYTES)
        split *= 2;
    tc_args a = args;
    a.slice_cols = tc_slice_cols(args.cols, split);
    a.x_stride = tc_x_stride(a.slice_cols);
    const size_t smem = tc_smem_bytes(args.n, a.slice_cols, block_rows);
    void (*kernel)(const tc_args) = tc_matvec_kernel<T, XT, N_TILES, M_TILES>;
    if (smem > TC_STATIC_SMEM_BYTES) {
        cudaError_t error = cudaFuncSetAttribute(
            kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (error != cudaSuccess) return error;
    }
    cudaLaunchAttribute attributes[2];
    attributes[0].id = cudaLaunchAttributeClusterDimension;
    attributes[0].val.clusterDim.x = (unsigned)split;
    attributes[0].val.clusterDim.y = 1;
    attributes[0].val.clusterDim.z = 1;
    attributes[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[1].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3((unsigned)split, (unsigned)((args.rows + block_rows - 1) / block_rows));
    config.blockDim = dim3(TC_THREADS);
    config.dynamicSmemBytes = smem;
    config.stream = state->stream;
    config.attrs = attributes;
    config.numAttrs = state->pdl ? 2 : 1;
    return cudaLaunchKernelEx(&config, kernel, a);
}

template <typename T, typename XT>
static cudaError_t tc_launch_shape(const cuda_backend *state, const tc_args &args) {
    if (tc_choice(state) == TC_CHOICE_ROWS32)
        return args.n <= 8 ? tc_launch<T, XT, 1, 2>(state, args) : tc_launch<T, XT, 2, 2>(state, args);
    return args.n <= 8 ? tc_launch<T, XT, 1, 1>(state, args) : tc_launch<T, XT, 2, 1>(state, args);
}

ferry_status cuda_tc_matvec(cuda_backend *state, float *out, const void *x, int x_is_f32,
                            const void *w, ferry_dtype dtype, const float *bias, int n, int rows,
                            int cols, int accumulate) {
    if (n <= 0 || rows <= 0) return FERRY_OK;
    if (!cuda_tc_matvec_enabled(state) || !cuda_tc_matvec_fits(w, dtype, n, cols) ||
        ((uintptr_t)x % 16) != 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "tensor-core matvec: unsupported call (n=%d, cols=%d)", n, cols);
    tc_args args = {};
    args.out = out;
    args.x = x;
    args.w = w;
    args.bias = bias;
    args.n = n;
    args.rows = rows;
    args.cols = cols;
    args.accumulate = accumulate;
    cudaError_t error;
    const int choice = tc_choice(state);
    if (choice == TC_CHOICE_V2 || choice == TC_CHOICE_V2M2) {
        if (x_is_f32)
            return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                              "tensor-core matvec v2: x must be rounded to the weight dtype");
        const int two_tiles = choice == TC_CHOICE_V2M2;
        if (dtype == FERRY_DTYPE_F16)
            error = v2_launch<__half>(state, out, x, w, bias, n, rows, cols, accumulate, two_tiles);
        else
            error = v2_launch<__nv_bfloat16>(state, out, x, w, bias, n, rows, cols, accumulate,
                                             two_tiles);
        CUDA_TRY(error);
        return FERRY_OK;
    }
    if (dtype == FERRY_DTYPE_F16)
        error = x_is_f32 ? tc_launch_shape<__half, float>(state, args)
                         : tc_launch_shape<__half, __half>(state, args);
    else
        error = x_is_f32 ? tc_launch_shape<__nv_bfloat16, float>(state, args)
                         : tc_launch_shape<__nv_bfloat16, __nv_bfloat16>(state, args);
    CUDA_TRY(error);
    return FERRY_OK;
}
