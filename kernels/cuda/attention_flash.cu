/*
 * attention_flash.cu — causal prefill attention on the tensor cores, in
 * the FlashAttention-2 shape: a block of 4 warps takes one tile of up to
 * 64 tokens of one slot (16 query rows per warp) for one query head, and
 * walks that slot's keys in tiles of 64, double-buffered in shared memory
 * by cp.async.  S = Q K^T and O += P V are mma.sync m16n8k16 (f16 inputs,
 * f32 accumulators); the online softmax lives in registers, in base 2
 * (log2(e) / sqrt(head_dim) is folded into Q).  The tiles come from
 * attention_prefill.cu, which decides when this kernel runs.
 * Hot path: no allocation.
 */
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/copy_async.cuh"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/warp.cuh"

/*
 * mma.sync.m16n8k16 fragments (PTX ISA, "Matrix fragments for mma.m16n8k16"),
 * lane = 4 g + c (g = lane / 4 in 0..7, c = lane % 4 in 0..3); each 32-bit
 * register holds two f16, the lower-indexed element in the low half:
 *   A 16x16 row-major (rows = queries, cols = k):
 *     a[0] = A[g][2c, 2c+1]     a[1] = A[g+8][2c, 2c+1]
 *     a[2] = A[g][2c+8, 2c+9]   a[3] = A[g+8][2c+8, 2c+9]
 *   B 16x8 "col" (k x n, each column contiguous in k):
 *     b[0] = B[2c, 2c+1][g]     b[1] = B[2c+8, 2c+9][g]
 *   C, D 16x8 f32: d[0], d[1] = D[g][2c, 2c+1]   d[2], d[3] = D[g+8][2c, 2c+1]
 * ldmatrix.m8n8 (lanes 8i..8i+7 give the 8 row addresses of matrix i):
 * lane receives M[g][2c, 2c+1] of each matrix; with .trans, M[2c, 2c+1][g].
 *
 * S = Q K^T: B[k = dim][n = key] = K[key][dim]: a K row (keys x dims in
 * shared memory) is a B column, so plain ldmatrix of 8 keys x 8 dims gives
 * b[0] (dims 0..7 of the step) and b[1] (dims 8..15).
 * O = P V: B[k = key][n = dim] = V[key][dim]: columns are strided in
 * shared memory, so ldmatrix.trans of 8 keys x 8 dims gives b[0] (keys
 * 0..7 of the step) and b[1] (keys 8..15).
 * P as an A operand: S's accumulators of key blocks 2s and 2s+1 are
 * exactly A's registers of key step s (a[0] = S[2s][0,1], a[1] = S[2s][2,3],
 * a[2] = S[2s+1][0,1], a[3] = S[2s+1][2,3]), so P never leaves registers.
 */

enum {
    FLASH_WARPS = 4,
    FLASH_KEYS = 64,            /* keys per shared-memory tile */
    FLASH_STAGES = 2,           /* tile j+1 is in flight while tile j is used */
    /* halves: a row 16 bytes longer than a multiple of 128, so the 8 row
     * reads of one ldmatrix hit 8 different groups of 4 banks */
    FLASH_ROW_PAD = 8,
};
static_assert(FLASH_WARPS * 16 == FLASH_TILE_TOKENS, "one m16 tile of queries per warp");

__device__ __forceinline__ void load_matrix_x4(uint32_t (&r)[4], uint32_t address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

__device__ __forceinline__ void load_matrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

struct flash_args {
    float *out;
    const float *q;
    const __half *cache_k, *cache_v;
    const int32_t *positions, *slots, *tile_starts;
    int *error_flag;
    int n_tiles, n_heads, n_kv_heads, n_slots, max_context;
    float q_factor;             /* log2(e) / sqrt(head_dim): scores come out in base 2 */
};

template <int HEAD_DIM>
constexpr int flash_shared_bytes() {
    return 2 /* K and V */ * FLASH_STAGES * FLASH_KEYS * (HEAD_DIM + FLASH_ROW_PAD) *
           (int)sizeof(__half);
}

/* Grid (query head, tile), tiles in reverse: the last tiles see the most
 * keys, so they start first and the short ones fill the tail. */
template <int HEAD_DIM>
__global__ void __launch_bounds__(FLASH_WARPS * 32, 3) flash_prefill_kernel(flash_args args) {
    constexpr int ROW_HALVES = HEAD_DIM + FLASH_ROW_PAD;
    constexpr int STAGE_HALVES = FLASH_KEYS * ROW_HALVES;
    constexpr int DIM_STEPS = HEAD_DIM / 16;        /* k steps of Q K^T */
    constexpr int DIM_BLOCKS = HEAD_DIM / 8;        /* n blocks of O */
    constexpr int KEY_BLOCKS = FLASH_KEYS / 8;      /* n blocks of S */
    constexpr int KEY_STEPS = FLASH_KEYS / 16;      /* k steps of P V */
    constexpr int CHUNKS_PER_ROW = HEAD_DIM / 8;    /* 16-byte pieces of a K or V row */
    extern __shared__ __align__(16) unsigned char flash_shared[];
    __half *k_stages = reinterpret_cast<__half *>(flash_shared);
    __half *v_stages = k_stages + FLASH_STAGES * STAGE_HALVES;
    __shared__ int block_last;

    const int head = blockIdx.x, tile = args.n_tiles - 1 - (int)blockIdx.y;
    const int t_begin = args.tile_starts[tile], t_end = args.tile_starts[tile + 1];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, c = lane % 4;
    const int kv_head = head / (args.n_heads / args.n_kv_heads);
    const int slot = args.slots[t_begin]; /* every token of the tile has it */

    /* this thread's rows: g and g + 8 of the warp's 16; last key of each
     * (-1: past the tile, or a bad place, which raises the error flag) */
    int token[2], last[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        token[i] = t_begin + warp * 16 + g + 8 * i;
        last[i] = -1;
        if (token[i] < t_end) {
            const int position = args.positions[token[i]];
            if (slot >= 0 && slot < args.n_slots && position >= 0 && position < args.max_context)
                last[i] = position;
            else if (c == 0)
                atomicExch(args.error_flag, CUDA_BAD_KV_PLACE);
        }
    }
    int warp_max = max(last[0], last[1]), warp_min = min(last[0], last[1]);
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        warp_max = max(warp_max, __shfl_xor_sync(0xffffffffu, warp_max, offset));
        warp_min = min(warp_min, __shfl_xor_sync(0xffffffffu, warp_min, offset));
    }
    if (threadIdx.x == 0) block_last = -1;
    __syncthreads();
    if (lane == 0) atomicMax(&block_last, warp_max);
    __syncthreads();
    const int max_last = block_last; /* keys 0..max_last exist for this slot */

    /* Q as A fragments, scaled and rounded to f16, straight from global
     * memory (each quad reads 32 contiguous bytes of a row) */
    uint32_t q_frag[DIM_STEPS][4];
    {
        const float *q_row[2];
#pragma unroll
        for (int i = 0; i < 2; i++)
            q_row[i] = args.q + ((size_t)token[i] * args.n_heads + head) * HEAD_DIM + 2 * c;
#pragma unroll
        for (int step = 0; step < DIM_STEPS; step++)
#pragma unroll
            for (int upper = 0; upper < 2; upper++)     /* cols 2c.. or 2c+8.. of the step */
#pragma unroll
                for (int i = 0; i < 2; i++) {           /* row g or g+8 */
                    float2 pair = make_float2(0.0f, 0.0f);
                    if (token[i] < t_end)
                        pair = *reinterpret_cast<const float2 *>(q_row[i] + step * 16 + upper * 8);
                    q_frag[step][upper * 2 + i] =
                        mma_m16n8k16<__half>::pack(pair.x * args.q_factor, pair.y * args.q_factor);
                }
    }

    /* K and V rows key0 .. key0+63 into a stage; rows past max_last are
     * zeros (never read from the cache: they may hold anything).  A thread
     * copies the same 16-byte piece of every ROWS_PER_PASS-th row, so its
     * addresses are one pointer plus multiples of one stride. */
    constexpr int ROWS_PER_PASS = FLASH_WARPS * 32 / CHUNKS_PER_ROW;
    const int first_row = threadIdx.x / CHUNKS_PER_ROW, piece = threadIdx.x % CHUNKS_PER_ROW * 8;
    const size_t row_width = (size_t)args.n_kv_heads * HEAD_DIM;
    const size_t first_offset = (size_t)(slot > 0 ? slot : 0) * args.max_context * row_width +
                                (size_t)first_row * row_width + (size_t)kv_head * HEAD_DIM + piece;
    const __half *k_source = args.cache_k + first_offset, *v_source = args.cache_v + first_offset;
    auto load_tile = [&](int key0, int stage) {
        const uint32_t k_dst = shared_address(k_stages + stage * STAGE_HALVES +
                                              first_row * ROW_HALVES + piece);
        const uint32_t v_dst = shared_address(v_stages + stage * STAGE_HALVES +
                                              first_row * ROW_HALVES + piece);
#pragma unroll
        for (int pass = 0; pass < FLASH_KEYS / ROWS_PER_PASS; pass++) {
            const int r = first_row + pass * ROWS_PER_PASS;
            const bool valid = key0 + r <= max_last;
            const size_t at = valid ? (size_t)(key0 + pass * ROWS_PER_PASS) * row_width : 0;
            const uint32_t shared_offset = pass * ROWS_PER_PASS * ROW_HALVES * (int)sizeof(__half);
            copy_async_16(k_dst + shared_offset, valid ? k_source + at : args.cache_k, valid);
            copy_async_16(v_dst + shared_offset, valid ? v_source + at : args.cache_v, valid);
        }
    };

    float o[DIM_BLOCKS][4];
#pragma unroll
    for (int b = 0; b < DIM_BLOCKS; b++) o[b][0] = o[b][1] = o[b][2] = o[b][3] = 0.0f;
    float row_max[2] = {-INFINITY, -INFINITY}; /* base-2 scores */
    float row_sum[2] = {0.0f, 0.0f};           /* this lane's share; the quad adds up at the end */

    const int n_key_tiles = (max_last + FLASH_KEYS) / FLASH_KEYS; /* 0 when max_last = -1 */
    if (n_key_tiles > 0) load_tile(0, 0);
    copy_async_commit();
    for (int j = 0; j < n_key_tiles; j++) {
        if (j + 1 < n_key_tiles) load_tile((j + 1) * FLASH_KEYS, (j + 1) % FLASH_STAGES);
        copy_async_commit(); /* possibly empty: keeps "all but the newest group" meaning tile j */
        copy_async_wait<1>();
        __syncthreads(); /* tile j is in shared memory for every warp */
        const int key0 = j * FLASH_KEYS;
        if (key0 <= warp_max) { /* warp-uniform: some row of this warp sees a key here */
            const __half *k_tile = k_stages + (j % FLASH_STAGES) * STAGE_HALVES;
            const __half *v_tile = v_stages + (j % FLASH_STAGES) * STAGE_HALVES;

            /* S = Q K^T: one ldmatrix.x4 gives two dim steps of 8 keys
             * (lanes 0-7: dims +0, 8-15: +8, 16-23: +16, 24-31: +24) */
            float s[KEY_BLOCKS][4];
#pragma unroll
            for (int kb = 0; kb < KEY_BLOCKS; kb++) {
                s[kb][0] = s[kb][1] = s[kb][2] = s[kb][3] = 0.0f;
#pragma unroll
                for (int step = 0; step < DIM_STEPS; step += 2) {
                    uint32_t b[4];
                    load_matrix_x4(b, shared_address(k_tile + (kb * 8 + lane % 8) * ROW_HALVES +
                                                     step * 16 + (lane / 8) * 8));
                    mma_m16n8k16<__half>::run(s[kb], q_frag[step], b[0], b[1]);
                    mma_m16n8k16<__half>::run(s[kb], q_frag[step + 1], b[2], b[3]);
                }
            }
            /* causal mask, only where some row of the warp ends inside the tile */
            if (key0 + FLASH_KEYS - 1 > warp_min) {
#pragma unroll
                for (int kb = 0; kb < KEY_BLOCKS; kb++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        if (key0 + kb * 8 + 2 * c + (e & 1) > last[e / 2]) s[kb][e] = -INFINITY;
            }
            /* online softmax: new running max per row (the quad shares a row) */
            float reference[2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                float tile_max = -INFINITY;
#pragma unroll
                for (int kb = 0; kb < KEY_BLOCKS; kb++)
                    tile_max = fmaxf(tile_max, fmaxf(s[kb][2 * i], s[kb][2 * i + 1]));
                tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
                tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
                const float new_max = fmaxf(row_max[i], tile_max);
                /* a row with no key yet keeps max -inf; subtract 0 instead
                 * (exp2(-inf - -inf) would be NaN) */
                reference[i] = new_max == -INFINITY ? 0.0f : new_max;
                const float correction = exp2f(row_max[i] - reference[i]); /* 0 on the first keys */
                row_max[i] = new_max;
                row_sum[i] *= correction;
#pragma unroll
                for (int b = 0; b < DIM_BLOCKS; b++) {
                    o[b][2 * i] *= correction;
                    o[b][2 * i + 1] *= correction;
                }
            }
            /* P = exp2(S - max) in f16, straight into A fragments; O += P V.
             * ldmatrix.trans lanes: 0-7 keys +0 dims +0, 8-15 keys +8 dims +0,
             * 16-23 keys +0 dims +8, 24-31 keys +8 dims +8 */
#pragma unroll
            for (int step = 0; step < KEY_STEPS; step++) {
                float p[2][4];
#pragma unroll
                for (int half = 0; half < 2; half++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        p[half][e] = exp2f(s[2 * step + half][e] - reference[e / 2]);
                        row_sum[e / 2] += p[half][e];
                    }
                const uint32_t a[4] = {mma_m16n8k16<__half>::pack(p[0][0], p[0][1]), mma_m16n8k16<__half>::pack(p[0][2], p[0][3]),
                                       mma_m16n8k16<__half>::pack(p[1][0], p[1][1]), mma_m16n8k16<__half>::pack(p[1][2], p[1][3])};
                const __half *v_rows = v_tile + (step * 16 + lane % 8 + ((lane / 8) % 2) * 8) * ROW_HALVES +
                                       (lane / 16) * 8;
#pragma unroll
                for (int b = 0; b < DIM_BLOCKS; b += 2) {
                    uint32_t v[4];
                    load_matrix_x4_trans(v, shared_address(v_rows + b * 8));
                    mma_m16n8k16<__half>::run(o[b], a, v[0], v[1]);
                    mma_m16n8k16<__half>::run(o[b + 1], a, v[2], v[3]);
                }
            }
        }
        __syncthreads(); /* every warp is done with this stage before it is refilled */
    }

    /* out = O / sum; rows with no keys (bad places) get zeros */
#pragma unroll
    for (int i = 0; i < 2; i++) {
        float sum = row_sum[i];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
        if (token[i] >= t_end) continue;
        float *dst = args.out + ((size_t)token[i] * args.n_heads + head) * HEAD_DIM + 2 * c;
#pragma unroll
        for (int b = 0; b < DIM_BLOCKS; b++)
            *reinterpret_cast<float2 *>(dst + b * 8) =
                make_float2(o[b][2 * i] * inverse, o[b][2 * i + 1] * inverse);
    }
}

template <int HEAD_DIM>
static ferry_status launch_flash(cudaStream_t stream, const flash_args &args, int n_heads) {
    constexpr int bytes = flash_shared_bytes<HEAD_DIM>();
    /* above 48 KiB of dynamic shared memory a kernel must opt in (per device) */
    CUDA_TRY(cudaFuncSetAttribute(flash_prefill_kernel<HEAD_DIM>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    dim3 grid((unsigned)n_heads, (unsigned)args.n_tiles);
    flash_prefill_kernel<HEAD_DIM><<<grid, FLASH_WARPS * 32, bytes, stream>>>(args);
    CUDA_TRY_LAUNCH();
    return FERRY_OK;
}

ferry_status cuda_flash_prefill_attention(cuda_backend *state, float *out, const float *q,
                                          const ferry_kv_layer *cache,
                                          const ferry_token_batch *batch,
                                          ferry_attention_shape shape,
                                          const int32_t *tile_starts, int n_tiles) {
    flash_args args;
    args.out = out;
    args.q = q;
    args.cache_k = (const __half *)cache->k;
    args.cache_v = (const __half *)cache->v;
    args.positions = batch->positions;
    args.slots = batch->slots;
    args.tile_starts = tile_starts;
    args.error_flag = state->error_flag;
    args.n_tiles = n_tiles;
    args.n_heads = shape.n_heads;
    args.n_kv_heads = shape.n_kv_heads;
    args.n_slots = cache->n_slots;
    args.max_context = cache->max_context;
    args.q_factor = 1.4426950408889634f / sqrtf((float)shape.head_dim);
    if (shape.head_dim == 64) return launch_flash<64>(state->stream, args, shape.n_heads);
    return launch_flash<128>(state->stream, args, shape.n_heads);
}
