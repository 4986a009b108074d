/*
 * attention_prefill.cu — causal attention for prefill-sized batches: the
 * dispatcher that cuts a batch into tiles and picks the kernel, and the
 * older SIMT kernel.  By default tiles of up to 64 tokens of one slot go
 * to the tensor-core kernel (attention_flash.cu).  FERRY_CUDA_PREFILL_ATTN=simt
 * keeps the SIMT kernel, for comparisons: a block takes a tile of 16
 * consecutive tokens of one sequence for one query head and walks the
 * keys in blocks of 32 staged in shared memory, so each K/V row is read
 * from L2/HBM once per tile instead of once per token.  Each warp owns 4
 * of the tile's queries (one key per lane for the scores, online softmax,
 * value rows from shared memory); it needs every tile of 16 tokens in one
 * slot.  Batches neither kernel takes fall back to the per-token kernel.
 */
#include <cuda_fp16.h>
#include <math.h>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/prefill_tiles.h"

enum {
    TILE_TOKENS = 16,
    TILE_WARPS = 4,
    QUERIES_PER_WARP = TILE_TOKENS / TILE_WARPS,
    KEY_BLOCK = 32,
    ROW_PAD = 8,                /* halves: 16 bytes, so lanes reading rows hit different banks */
};

__device__ __forceinline__ bool place_ok_prefill(int slot, int position, int n_slots,
                                                 int max_context) {
    return slot >= 0 && slot < n_slots && position >= 0 && position < max_context;
}

struct prefill_args {
    float *out;
    const float *q;
    const __half *cache_k, *cache_v;
    const int32_t *positions, *slots;
    int *error_flag;
    int n_tokens, n_heads, n_kv_heads, n_slots, max_context;
    float scale;
};

template <int HEAD_DIM>
__global__ void __launch_bounds__(TILE_WARPS * 32) prefill_attention_kernel(prefill_args args) {
    constexpr int DIMS_PER_LANE = HEAD_DIM / 32;
    __shared__ float q_shared[TILE_TOKENS][HEAD_DIM];
    __shared__ __align__(16) __half k_shared[KEY_BLOCK][HEAD_DIM + ROW_PAD];
    __shared__ __align__(16) __half v_shared[KEY_BLOCK][HEAD_DIM];
    const int t0 = blockIdx.x * TILE_TOKENS, head = blockIdx.y;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int kv_head = head / (args.n_heads / args.n_kv_heads);
    const int slot = args.slots[t0];
    const size_t row_width = (size_t)args.n_kv_heads * HEAD_DIM;

    /* the tile's queries (scaled by 1/sqrt(head_dim)) and the last key any needs */
    int max_last = -1;
    for (int i = 0; i < TILE_TOKENS; i++) {
        int t = t0 + i;
        if (t < args.n_tokens && place_ok_prefill(args.slots[t], args.positions[t], args.n_slots,
                                                  args.max_context))
            max_last = max(max_last, args.positions[t]);
    }
    for (int i = threadIdx.x; i < TILE_TOKENS * HEAD_DIM; i += blockDim.x) {
        int t = t0 + i / HEAD_DIM;
        q_shared[i / HEAD_DIM][i % HEAD_DIM] =
            t < args.n_tokens
                ? args.q[((size_t)t * args.n_heads + head) * HEAD_DIM + i % HEAD_DIM] * args.scale
                : 0.0f;
    }

    int last[QUERIES_PER_WARP];
    float running_max[QUERIES_PER_WARP], running_sum[QUERIES_PER_WARP];
    float acc[QUERIES_PER_WARP][DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < QUERIES_PER_WARP; i++) {
        int t = t0 + warp * QUERIES_PER_WARP + i;
        last[i] = -1; /* -1: no keys (past the batch, or a bad place) */
        if (t < args.n_tokens) {
            if (place_ok_prefill(args.slots[t], args.positions[t], args.n_slots, args.max_context))
                last[i] = args.positions[t];
            else if (lane == 0)
                atomicExch(args.error_flag, CUDA_BAD_KV_PLACE);
        }
        running_max[i] = -INFINITY;
        running_sum[i] = 0.0f;
#pragma unroll
        for (int e = 0; e < DIMS_PER_LANE; e++) acc[i][e] = 0.0f;
    }

    const size_t base = (size_t)slot * args.max_context * row_width + (size_t)kv_head * HEAD_DIM;
    for (int block_start = 0; block_start <= max_last; block_start += KEY_BLOCK) {
        __syncthreads(); /* the previous block's K/V are no longer read */
        constexpr int VECTORS_PER_ROW = HEAD_DIM / 8;
        for (int i = threadIdx.x; i < KEY_BLOCK * VECTORS_PER_ROW; i += blockDim.x) {
            int r = i / VECTORS_PER_ROW, d = (i % VECTORS_PER_ROW) * 8;
            uint4 k_row = make_uint4(0, 0, 0, 0), v_row = make_uint4(0, 0, 0, 0);
            if (block_start + r <= max_last) {
                size_t at = base + (size_t)(block_start + r) * row_width + d;
                k_row = *reinterpret_cast<const uint4 *>(args.cache_k + at);
                v_row = *reinterpret_cast<const uint4 *>(args.cache_v + at);
            }
            *reinterpret_cast<uint4 *>(&k_shared[r][d]) = k_row;
            *reinterpret_cast<uint4 *>(&v_shared[r][d]) = v_row;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < QUERIES_PER_WARP; i++) {
            if (block_start > last[i]) continue; /* warp-uniform */
            const float *query = q_shared[warp * QUERIES_PER_WARP + i];
            const int p = block_start + lane;
            float score = -INFINITY;
            if (p <= last[i]) {
                /* four partial sums: independent FMA chains */
                float dot[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int d = 0; d < HEAD_DIM; d += 8) {
                    const uint4 packed = *reinterpret_cast<const uint4 *>(&k_shared[lane][d]);
                    const __half2 *pairs = reinterpret_cast<const __half2 *>(&packed);
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        const float2 f = __half22float2(pairs[j]);
                        dot[j] += query[d + 2 * j] * f.x + query[d + 2 * j + 1] * f.y;
                    }
                }
                score = (dot[0] + dot[1]) + (dot[2] + dot[3]);
            }
            float block_max = score;
#pragma unroll
            for (int offset = 16; offset > 0; offset >>= 1)
                block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, offset));
            const float new_max = fmaxf(running_max[i], block_max);
            const float correction = __expf(running_max[i] - new_max);
            const float weight = p <= last[i] ? __expf(score - new_max) : 0.0f;
            float weight_sum = weight;
#pragma unroll
            for (int offset = 16; offset > 0; offset >>= 1)
                weight_sum += __shfl_xor_sync(0xffffffffu, weight_sum, offset);
            running_sum[i] = running_sum[i] * correction + weight_sum;
            running_max[i] = new_max;
#pragma unroll
            for (int e = 0; e < DIMS_PER_LANE; e++) acc[i][e] *= correction;
            /* weights of keys past last[i] are 0, so a whole block can be
             * walked unrolled (all value loads in flight at once) */
#pragma unroll 16
            for (int j = 0; j < KEY_BLOCK; j++) {
                const float weight_j = __shfl_sync(0xffffffffu, weight, j);
                float v[DIMS_PER_LANE];
                const __half *value = &v_shared[j][lane * DIMS_PER_LANE];
                if constexpr (DIMS_PER_LANE == 4) {
                    const uint2 raw = *reinterpret_cast<const uint2 *>(value);
                    const float2 lo = __half22float2(*reinterpret_cast<const __half2 *>(&raw.x));
                    const float2 hi = __half22float2(*reinterpret_cast<const __half2 *>(&raw.y));
                    v[0] = lo.x, v[1] = lo.y, v[2] = hi.x, v[3] = hi.y;
                } else {
                    const float2 f = __half22float2(*reinterpret_cast<const __half2 *>(value));
                    v[0] = f.x, v[1] = f.y;
                }
                /* skip, not multiply: rows past a query's last key may hold
                 * anything (0 * inf is NaN); weight_j is the same in every lane */
                if (weight_j != 0.0f) {
#pragma unroll
                    for (int e = 0; e < DIMS_PER_LANE; e++) acc[i][e] += weight_j * v[e];
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < QUERIES_PER_WARP; i++) {
        int t = t0 + warp * QUERIES_PER_WARP + i;
        if (t >= args.n_tokens) continue;
        float inv_sum = running_sum[i] > 0.0f ? 1.0f / running_sum[i] : 0.0f;
        float *dst = args.out + ((size_t)t * args.n_heads + head) * HEAD_DIM + lane * DIMS_PER_LANE;
#pragma unroll
        for (int e = 0; e < DIMS_PER_LANE; e++) dst[e] = acc[i][e] * inv_sum;
    }
}

/* Grow a host array of int32 to at least n entries. */
static ferry_status reserve_host_ints(int32_t **buffer, int *capacity, int n, const char *what) {
    if (*capacity >= n) return FERRY_OK;
    int32_t *grown = (int32_t *)realloc(*buffer, (size_t)n * sizeof(int32_t));
    if (!grown) return ferry_fail(FERRY_ERR_NO_MEMORY, "prefill attention: %d %s", n, what);
    *buffer = grown;
    *capacity = n;
    return FERRY_OK;
}

/* The tensor-core kernel: tiles cut at slot changes (state->host_slots
 * holds the batch's slots), uploaded, then one launch. */
static ferry_status flash_prefill(cuda_backend *state, float *out, const float *q,
                                  const ferry_kv_layer *cache, const ferry_token_batch *batch,
                                  ferry_attention_shape shape, int *out_used) {
    enum { MAX_GRID_Y = 65535 };
    const int n = batch->n_tokens;
    FERRY_TRY(reserve_host_ints(&state->host_tile_starts, &state->host_tile_starts_capacity, n + 1,
                                "tile starts"));
    const int n_tiles =
        ferry_prefill_tiles(state->host_slots, n, FLASH_TILE_TOKENS, state->host_tile_starts);
    if (n_tiles > MAX_GRID_Y) return FERRY_OK; /* the per-token kernel takes it */
    const size_t bytes = (size_t)(n_tiles + 1) * sizeof(int32_t);
    FERRY_TRY(cuda_scratch_reserve(state, &state->tile_starts, &state->tile_starts_bytes, bytes));
    /* from pageable memory: staged before the call returns, so the host
     * array may change again at once */
    CUDA_TRY(cudaMemcpyAsync(state->tile_starts, state->host_tile_starts, bytes,
                             cudaMemcpyHostToDevice, state->stream));
    FERRY_TRY(cuda_flash_prefill_attention(state, out, q, cache, batch, shape,
                                           (const int32_t *)state->tile_starts, n_tiles));
    *out_used = 1;
    return FERRY_OK;
}

ferry_status cuda_prefill_attention(ferry_backend *backend, float *out, const float *q,
                                    const ferry_kv_layer *cache, const ferry_token_batch *batch,
                                    ferry_attention_shape shape, int *out_used) {
    cuda_backend *state = cuda_state(backend);
    const int n = batch->n_tokens;
    *out_used = 0;
    if (n < PREFILL_MIN_TOKENS || (shape.head_dim != 64 && shape.head_dim != 128)) return FERRY_OK;
    /* Tiles follow the slots: read them back (prefill only, so never
     * inside a recorded graph). */
    FERRY_TRY(reserve_host_ints(&state->host_slots, &state->host_slots_capacity, n, "slot ids"));
    CUDA_TRY(cudaMemcpyAsync(state->host_slots, batch->slots, (size_t)n * sizeof(int32_t),
                             cudaMemcpyDeviceToHost, state->stream));
    CUDA_TRY(cudaStreamSynchronize(state->stream));
    if (!state->prefill_simt) return flash_prefill(state, out, q, cache, batch, shape, out_used);
    /* the SIMT kernel: every tile of 16 consecutive tokens in one slot */
    for (int t0 = 0; t0 < n; t0 += TILE_TOKENS)
        for (int t = t0 + 1; t < n && t < t0 + TILE_TOKENS; t++)
            if (state->host_slots[t] != state->host_slots[t0]) return FERRY_OK;
    prefill_args args;
    args.out = out;
    args.q = q;
    args.cache_k = (const __half *)cache->k;
    args.cache_v = (const __half *)cache->v;
    args.positions = batch->positions;
    args.slots = batch->slots;
    args.error_flag = state->error_flag;
    args.n_tokens = n;
    args.n_heads = shape.n_heads;
    args.n_kv_heads = shape.n_kv_heads;
    args.n_slots = cache->n_slots;
    args.max_context = cache->max_context;
    args.scale = 1.0f / sqrtf((float)shape.head_dim);
    dim3 grid((n + TILE_TOKENS - 1) / TILE_TOKENS, shape.n_heads);
    if (shape.head_dim == 64)
        prefill_attention_kernel<64><<<grid, TILE_WARPS * 32, 0, state->stream>>>(args);
    else
        prefill_attention_kernel<128><<<grid, TILE_WARPS * 32, 0, state->stream>>>(args);
    CUDA_TRY_LAUNCH();
    *out_used = 1;
    return FERRY_OK;
}
