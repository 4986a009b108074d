/*
 * attention.cu — the CUDA backend's attention ops: rotary embedding,
 * storing K/V into the f16 cache (and both in one launch, rope_kv_store,
 * for the decode step), and causal grouped-query attention over
 * the cache.  Attention is split over the context (flash-decoding): the
 * keys of one query head are dealt out, 32 at a time (one per lane), to
 * every warp of n_splits blocks (of 4 warps, or 8 with attn8); each warp
 * keeps an online softmax (running max, running sum, weighted V).  The
 * block of an item that finishes last merges the blocks' partial results,
 * and splits the context does not reach yet exit at once (attnmerge; with
 * it off a second kernel merges every split; FERRY_CUDA_FUSE names these
 * switches).  A warp asks for its 32 keys' K and V rows (into L1) before
 * it reads them (kvprefetch), and its first ones (into L2) before the wait
 * for rope_kv_store (kvearly).  Bad slots or positions raise the backend's
 * error flag instead of touching memory.
 * Hot path: no allocation once the partials scratch has grown.
 */
#include <cuda_fp16.h>
#include <math.h>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/rope.cuh"

enum {
    ATTENTION_WARPS = 4,            /* warps per block ... */
    ATTENTION_WIDE_WARPS = 8,       /* ... or, with attn8, twice as many: a context of
                                       256 keys fits one block, no merge */
    MAX_HEAD_DIM = 256,
    BLOCKS_PER_SM_TARGET = 4,       /* enough blocks in flight to cover the whole GPU */
    MIN_KEYS_PER_WARP = 32,         /* one key block: fewer leaves lanes idle */
};

/* ---------------------------------------------------------------- rope */

/* Grid (token, group of ROPE_THREADS pairs); each thread rotates one pair
 * (i, i + half) of one head:
 *   x'[i] = x[i] cos - x[i+half] sin,  x'[i+half] = x[i+half] cos + x[i] sin
 * The angle is formed in float32 as HF does, its sine and cosine in double
 * (fast-math sinf loses accuracy at angles of thousands of radians). */
enum { ROPE_THREADS = 128 };

/* Rotate the pair (x[i], x[i + half]) of one head by position * inv_freq[i]. */
__device__ __forceinline__ float2 rotate_pair(float *x, int i, int half, int32_t position,
                                              const float *inv_freq) {
    return rotate_by(x, i, half, rotation_of(i, position, inv_freq));
}

__global__ void rope_kernel(float *q, float *k, const int32_t *positions, const float *inv_freq,
                            int n_heads, int n_kv_heads, int head_dim) {
    pdl_trigger();
    pdl_wait();
    const int t = blockIdx.x, half = head_dim / 2;
    const int n_pairs = (n_heads + n_kv_heads) * half;
    const int item = blockIdx.y * blockDim.x + threadIdx.x;
    if (item >= n_pairs) return;
    int head = item / half, i = item % half;
    float *x = head < n_heads ? q + ((size_t)t * n_heads + head) * head_dim
                              : k + ((size_t)t * n_kv_heads + (head - n_heads)) * head_dim;
    rotate_pair(x, i, half, positions[t], inv_freq);
}

ferry_status cuda_rope(ferry_backend *backend, float *q, float *k, const ferry_token_batch *batch,
                       const float *inv_freq, ferry_attention_shape shape) {
    if (shape.head_dim % 2 != 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "rope: head_dim %d is odd", shape.head_dim);
    if (batch->n_tokens <= 0) return FERRY_OK;
    int n_pairs = (shape.n_heads + shape.n_kv_heads) * (shape.head_dim / 2);
    dim3 grid(batch->n_tokens, (n_pairs + ROPE_THREADS - 1) / ROPE_THREADS);
    CUDA_TRY(cuda_launch(cuda_state(backend), rope_kernel, grid, ROPE_THREADS, q, k,
                         batch->positions, inv_freq, shape.n_heads, shape.n_kv_heads,
                         shape.head_dim));
    return FERRY_OK;
}

/* ------------------------------------------------------------ kv_store */

/* Grid (token, slice of the row): K[slot][position] = k[t],
 * V[slot][position] = v[t] rounded to f16. */
__global__ void kv_store_kernel(__half *cache_k, __half *cache_v, const float *k, const float *v,
                                const int32_t *positions, const int32_t *slots, int n_slots,
                                int max_context, int row_width, int *error_flag) {
    pdl_trigger();
    pdl_wait();
    const int t = blockIdx.x, slot = slots[t], position = positions[t];
    if (!place_ok(slot, position, n_slots, max_context)) {
        if (threadIdx.x == 0 && blockIdx.y == 0) atomicExch(error_flag, CUDA_BAD_KV_PLACE);
        return;
    }
    size_t at = ((size_t)slot * max_context + position) * row_width;
    for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < row_width;
         i += gridDim.y * blockDim.x) {
        cache_k[at + i] = __float2half_rn(k[(size_t)t * row_width + i]);
        cache_v[at + i] = __float2half_rn(v[(size_t)t * row_width + i]);
    }
}

ferry_status cuda_kv_store(ferry_backend *backend, ferry_kv_layer *cache, const float *k,
                           const float *v, const ferry_token_batch *batch,
                           ferry_attention_shape shape) {
    cuda_backend *state = cuda_state(backend);
    if (batch->n_tokens <= 0) return FERRY_OK;
    const int row_width = shape.n_kv_heads * shape.head_dim;
    dim3 grid(batch->n_tokens, (row_width + 255) / 256);
    CUDA_TRY(cuda_launch(state, kv_store_kernel, grid, 256, (__half *)cache->k,
                         (__half *)cache->v, k, v, batch->positions, batch->slots, cache->n_slots,
                         cache->max_context, row_width, state->error_flag));
    return FERRY_OK;
}

/* ------------------------------------------------------- rope_kv_store */

/* rope then kv_store in one launch.  Grid (token, group of ROPE_THREADS
 * items): the items are the (head, i) pairs (i, i + half) of the query
 * heads, then of the key heads, then of the value heads.  A query pair is
 * rotated in place; a key pair is rotated in place and stored (f16) into
 * the K cache; a value pair is stored into the V cache.  A bad (slot,
 * position) raises the error flag and stores nothing, as kv_store. */
__global__ void rope_kv_store_kernel(float *q, float *k, const float *v, __half *cache_k,
                                     __half *cache_v, const int32_t *positions,
                                     const int32_t *slots, const float *inv_freq, int n_heads,
                                     int n_kv_heads, int head_dim, int n_slots, int max_context,
                                     int *error_flag, int early) {
    pdl_trigger();
    const int t = blockIdx.x, half = head_dim / 2;
    const int item = blockIdx.y * blockDim.x + threadIdx.x;
    if (item >= (n_heads + 2 * n_kv_heads) * half) return; /* (item 0 always waits) */
    const int head = item / half, i = item % half;
    if (!early) pdl_wait();
    const int slot = slots[t], position = positions[t];
    /* a query or key pair's rotation: with early, its sine and cosine are
     * formed while the kernel before (the Q/K/V projection) still runs
     * (positions and inv_freq are written by no kernel, launch.cuh) */
    const float2 rotation =
        head < n_heads + n_kv_heads ? rotation_of(i, position, inv_freq) : make_float2(1.0f, 0.0f);
    if (early) pdl_wait();
    const bool place = place_ok(slot, position, n_slots, max_context);
    if (!place && item == 0) atomicExch(error_flag, CUDA_BAD_KV_PLACE);
    const size_t row_width = (size_t)n_kv_heads * head_dim;
    const size_t cache_row = place ? ((size_t)slot * max_context + position) * row_width : 0;
    if (head < n_heads) {
        rotate_by(q + ((size_t)t * n_heads + head) * head_dim, i, half, rotation);
    } else if (head < n_heads + n_kv_heads) {
        const int kv_head = head - n_heads;
        const float2 rotated =
            rotate_by(k + ((size_t)t * n_kv_heads + kv_head) * head_dim, i, half, rotation);
        if (place) {
            __half *dst = cache_k + cache_row + (size_t)kv_head * head_dim;
            dst[i] = __float2half_rn(rotated.x);
            dst[i + half] = __float2half_rn(rotated.y);
        }
    } else if (place) {
        const int kv_head = head - n_heads - n_kv_heads;
        const float *src = v + ((size_t)t * n_kv_heads + kv_head) * head_dim;
        __half *dst = cache_v + cache_row + (size_t)kv_head * head_dim;
        dst[i] = __float2half_rn(src[i]);
        dst[i + half] = __float2half_rn(src[i + half]);
    }
}

ferry_status cuda_rope_kv_store(ferry_backend *backend, float *q, float *k, const float *v,
                                ferry_kv_layer *cache, const ferry_token_batch *batch,
                                const float *inv_freq, ferry_attention_shape shape) {
    cuda_backend *state = cuda_state(backend);
    if (shape.head_dim % 2 != 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "rope: head_dim %d is odd", shape.head_dim);
    if (batch->n_tokens <= 0) return FERRY_OK;
    if (!(state->fuse & CUDA_FUSE_ROPEKV)) { /* measuring: the two kernels */
        FERRY_TRY(cuda_rope(backend, q, k, batch, inv_freq, shape));
        return cuda_kv_store(backend, cache, k, v, batch, shape);
    }
    const int n_items = (shape.n_heads + 2 * shape.n_kv_heads) * (shape.head_dim / 2);
    dim3 grid(batch->n_tokens, (n_items + ROPE_THREADS - 1) / ROPE_THREADS);
    CUDA_TRY(cuda_launch(state, rope_kv_store_kernel, grid, ROPE_THREADS, q, k, v,
                         (__half *)cache->k, (__half *)cache->v, batch->positions, batch->slots,
                         inv_freq, shape.n_heads, shape.n_kv_heads, shape.head_dim,
                         cache->n_slots, cache->max_context, state->error_flag,
                         (state->fuse & CUDA_FUSE_KV_EARLY) ? 1 : 0));
    return FERRY_OK;
}

/* ----------------------------------------------------------- attention */

/* DIMS consecutive f16 values (4 or 8 bytes, aligned) as floats. */
template <int DIMS> __device__ __forceinline__ void load_dims(const __half *src, float *v);
template <> __device__ __forceinline__ void load_dims<2>(const __half *src, float *v) {
    const float2 f = __half22float2(*reinterpret_cast<const __half2 *>(src));
    v[0] = f.x;
    v[1] = f.y;
}
template <> __device__ __forceinline__ void load_dims<4>(const __half *src, float *v) {
    const uint2 raw = *reinterpret_cast<const uint2 *>(src);
    const float2 lo = __half22float2(*reinterpret_cast<const __half2 *>(&raw.x));
    const float2 hi = __half22float2(*reinterpret_cast<const __half2 *>(&raw.y));
    v[0] = lo.x;
    v[1] = lo.y;
    v[2] = hi.x;
    v[3] = hi.y;
}
template <> __device__ __forceinline__ void load_dims<8>(const __half *src, float *v) {
    load_dims<4>(src, v);
    load_dims<4>(src + 4, v + 4);
}

/* Fetch the line holding *address into this SM's L1 (no register holds it). */
__device__ __forceinline__ void prefetch_l1(const void *address) {
    asm volatile("prefetch.global.L1 [%0];" ::"l"(address));
}

struct attention_args {
    float *out;                 /* [n, n_heads, head_dim] (written when n_splits == 1) */
    float *partials;            /* [n * n_heads, n_splits, head_dim + 2] otherwise */
    unsigned *counters;         /* merge_here: [n * n_heads], zero between kernels */
    int merge_here;             /* the last block of an item merges; splits past the
                                   context exit (else attention_merge_kernel merges all) */
    int prefetch;               /* head_dim 64/128: a key block's K and V rows into L1 first */
    int early;                  /* read slots and positions and prefetch the first K and V
                                   rows into L2 before pdl_wait */
    const float *q;
    const __half *cache_k, *cache_v;
    const int32_t *positions, *slots;
    int *error_flag;
    int n_heads, n_kv_heads, head_dim, n_slots, max_context, n_splits;
    float scale;
};

/* out[item] = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s over the
 * n_parts partials of one (token, head) item (m: the split's max, l: its
 * sum of weights, acc: its weighted values; M: the max of the m_s), the
 * same math for attention_merge_kernel and a kernel's last block.
 * Partials are read through L2 (__ldcg): other blocks wrote them. */
__device__ __forceinline__ void merge_partials(float *out, const float *partials, int n_parts,
                                               int head_dim) {
    float global_max = -INFINITY;
    for (int s = 0; s < n_parts; s++)
        global_max = fmaxf(global_max, __ldcg(partials + (size_t)s * (head_dim + 2)));
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float numerator = 0.0f, denominator = 0.0f;
        for (int s = 0; s < n_parts; s++) {
            const float *partial = partials + (size_t)s * (head_dim + 2);
            const float split_max = __ldcg(partial);
            if (split_max == -INFINITY) continue; /* this split saw no keys */
            float factor = __expf(split_max - global_max);
            numerator += factor * __ldcg(partial + 2 + d);
            denominator += factor * __ldcg(partial + 1);
        }
        out[d] = denominator > 0.0f ? numerator / denominator : 0.0f;
    }
}

/* merge_here: after a block wrote its partial, it counts itself in; the
 * block that arrives last (the others' partials are then visible: each
 * fenced before counting) resets the counter for the next kernel and
 * merges the item's n_parts partials into out.  Every thread calls it. */
__device__ __forceinline__ void merge_if_last(const attention_args &args, int item, int n_parts) {
    __shared__ bool last_block;
    __threadfence(); /* this thread's partial writes, before the count */
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned arrived = atomicAdd(args.counters + item, 1u);
        last_block = arrived == (unsigned)n_parts - 1;
        if (last_block) atomicExch(args.counters + item, 0u);
    }
    __syncthreads();
    if (!last_block) return;
    __threadfence();
    merge_partials(args.out + (size_t)item * args.head_dim,
                   args.partials + (size_t)item * args.n_splits * (args.head_dim + 2), n_parts,
                   args.head_dim);
}

/* Block (item = token * n_heads + head, split).  Keys come in blocks of
 * 32, one key per lane: each lane scores its key against q (held in
 * shared memory), the warp takes the max and sum of the 32 weights with
 * two shuffle reductions, then walks the 32 values with lane l adding
 * dims l, l + 32, ... (up to DIMS_PER_LANE of them), or, when CONTIGUOUS
 * (head_dim == 32 * DIMS_PER_LANE), dims DIMS_PER_LANE * l .. + DIMS_PER_LANE
 * with one 4- or 8-byte load per value row.  Warp g of the
 * G = n_splits * WARPS warps of this item takes key blocks g, g + G, ... */
template <int DIMS_PER_LANE, bool CONTIGUOUS, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) attention_kernel(attention_args args) {
    /* CONTIGUOUS: bytes of one head's K (or V) row, f16 */
    constexpr int CONTIGUOUS_ROW_BYTES = 32 * DIMS_PER_LANE * 2;
    pdl_trigger();
    const int item = blockIdx.x, split = blockIdx.y;
    const int t = item / args.n_heads, head = item % args.n_heads;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int head_dim = args.head_dim;
    const int kv_head = head / (args.n_heads / args.n_kv_heads);
    if (!args.early) pdl_wait();
    const int slot = args.slots[t], last = args.positions[t];
    const bool valid = place_ok(slot, last, args.n_slots, args.max_context);
    /* merge_here: only the splits the context reaches take part (split s
     * sees its first keys at s * WARPS * 32); one of them alone writes out
     * itself.  The same count in every block of the item.  (A block that
     * leaves here before pdl_wait has read only slots and positions, and
     * split 0 always waits.) */
    const int reach = valid ? last / (WARPS * 32) + 1 : 1;
    const int n_parts = args.merge_here && reach < args.n_splits ? reach : args.n_splits;
    if (split >= n_parts) return;
    if (args.early) {
        /* While the kernel before (rope_kv_store) still runs: this warp's
         * first key block's K and V rows into L2 (only the newest row is
         * that kernel's to write; a prefetch into L2 cannot go stale). */
        const int p = (split * WARPS + warp) * 32 + lane;
        if (valid && p <= last) {
            const size_t at = ((size_t)slot * args.max_context + p) * args.n_kv_heads * head_dim +
                              (size_t)kv_head * head_dim;
            for (int b = 0; b < head_dim * 2; b += 128) {
                prefetch_l2(reinterpret_cast<const char *>(args.cache_k + at) + b);
                prefetch_l2(reinterpret_cast<const char *>(args.cache_v + at) + b);
            }
        }
        pdl_wait();
    }
    __shared__ float warp_max[WARPS], warp_sum_shared[WARPS];
    __shared__ float warp_acc[WARPS][MAX_HEAD_DIM];
    __shared__ float q_shared[MAX_HEAD_DIM];

    /* q / sqrt(head_dim), so a dot product is the score */
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
        q_shared[d] = args.q[(size_t)item * head_dim + d] * args.scale;
    __syncthreads();

    float running_max = -INFINITY, running_sum = 0.0f;
    float acc[DIMS_PER_LANE];
#pragma unroll
    for (int e = 0; e < DIMS_PER_LANE; e++) acc[e] = 0.0f;
    if (!valid && threadIdx.x == 0 && split == 0) atomicExch(args.error_flag, CUDA_BAD_KV_PLACE);
    if (valid) {
        const size_t row_width = (size_t)args.n_kv_heads * head_dim;
        const size_t base = (size_t)slot * args.max_context * row_width + (size_t)kv_head * head_dim;
        const int block_stride = args.n_splits * WARPS * 32;
        const bool vector_rows = head_dim % 8 == 0; /* 16-byte aligned K rows */
        for (int block_start = (split * WARPS + warp) * 32; block_start <= last;
             block_start += block_stride) {
            const int p = block_start + lane;
            float score = -INFINITY;
            if constexpr (CONTIGUOUS) {
                /* this key's K and V rows on their way to L1 at once: the
                 * loop below would wait for its K loads a few at a time
                 * (ptxas does not keep a whole row in flight), and the
                 * value loop reads the V row later, a lane per dims */
                if (args.prefetch && p <= last) {
                    const size_t at = base + (size_t)p * row_width;
                    const char *key_row = reinterpret_cast<const char *>(args.cache_k + at);
                    const char *value_row = reinterpret_cast<const char *>(args.cache_v + at);
#pragma unroll
                    for (int b = 0; b < CONTIGUOUS_ROW_BYTES; b += 128) {
                        prefetch_l1(key_row + b);
                        prefetch_l1(value_row + b);
                    }
                }
            }
            if (p <= last) {
                const __half *key = args.cache_k + base + (size_t)p * row_width;
                float dot = 0.0f;
                if (vector_rows) {
                    for (int d = 0; d < head_dim; d += 8) {
                        const uint4 packed = *reinterpret_cast<const uint4 *>(key + d);
                        const __half2 *pairs = reinterpret_cast<const __half2 *>(&packed);
#pragma unroll
                        for (int i = 0; i < 4; i++) {
                            const float2 f = __half22float2(pairs[i]);
                            dot += q_shared[d + 2 * i] * f.x + q_shared[d + 2 * i + 1] * f.y;
                        }
                    }
                } else {
                    for (int d = 0; d < head_dim; d++) dot += q_shared[d] * __half2float(key[d]);
                }
                score = dot;
            }
            /* online softmax over the block: the new running max (finite:
             * lane 0's key is always in range), rescale what we have */
            float block_max = score;
#pragma unroll
            for (int offset = 16; offset > 0; offset >>= 1)
                block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, offset));
            const float new_max = fmaxf(running_max, block_max);
            const float correction = __expf(running_max - new_max); /* 0 on the first block */
            const float weight = p <= last ? __expf(score - new_max) : 0.0f;
            float weight_sum = weight;
#pragma unroll
            for (int offset = 16; offset > 0; offset >>= 1)
                weight_sum += __shfl_xor_sync(0xffffffffu, weight_sum, offset);
            running_sum = running_sum * correction + weight_sum;
            running_max = new_max;
#pragma unroll
            for (int e = 0; e < DIMS_PER_LANE; e++) acc[e] *= correction;
            /* out += sum_j weight_j V[block_start + j] */
            const int n_keys = last - block_start + 1 < 32 ? last - block_start + 1 : 32;
#pragma unroll 4
            for (int j = 0; j < n_keys; j++) {
                const float weight_j = __shfl_sync(0xffffffffu, weight, j);
                const __half *value = args.cache_v + base + (size_t)(block_start + j) * row_width;
                if (CONTIGUOUS) {
                    float v[DIMS_PER_LANE];
                    load_dims<DIMS_PER_LANE>(value + lane * DIMS_PER_LANE, v);
#pragma unroll
                    for (int e = 0; e < DIMS_PER_LANE; e++) acc[e] += weight_j * v[e];
                } else {
#pragma unroll
                    for (int e = 0; e < DIMS_PER_LANE; e++) {
                        const int d = lane + 32 * e;
                        if (d < head_dim) acc[e] += weight_j * __half2float(value[d]);
                    }
                }
            }
        }
    }
    /* merge the block's warps */
    if (lane == 0) {
        warp_max[warp] = running_max;
        warp_sum_shared[warp] = running_sum;
    }
#pragma unroll
    for (int e = 0; e < DIMS_PER_LANE; e++) {
        int d = CONTIGUOUS ? lane * DIMS_PER_LANE + e : lane + 32 * e;
        if (d < head_dim) warp_acc[warp][d] = acc[e];
    }
    __syncthreads();
    float block_max = -INFINITY;
#pragma unroll
    for (int w = 0; w < WARPS; w++) block_max = fmaxf(block_max, warp_max[w]);
    float block_sum = 0.0f;
    float factors[WARPS];
#pragma unroll
    for (int w = 0; w < WARPS; w++) {
        factors[w] = warp_max[w] == -INFINITY ? 0.0f : __expf(warp_max[w] - block_max);
        block_sum += factors[w] * warp_sum_shared[w];
    }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float value = 0.0f;
#pragma unroll
        for (int w = 0; w < WARPS; w++) value += factors[w] * warp_acc[w][d];
        if (n_parts == 1) {
            args.out[(size_t)item * head_dim + d] = block_sum > 0.0f ? value / block_sum : 0.0f;
        } else {
            float *partial = args.partials + ((size_t)item * args.n_splits + split) * (head_dim + 2);
            partial[2 + d] = value;
            if (d == 0) {
                partial[0] = block_max;
                partial[1] = block_sum;
            }
        }
    }
    if (args.merge_here && n_parts > 1) merge_if_last(args, item, n_parts);
}

/* One block per (token, head): out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s. */
__global__ void attention_merge_kernel(float *out, const float *partials, int n_splits,
                                       int head_dim) {
    pdl_trigger();
    pdl_wait();
    const int item = blockIdx.x;
    merge_partials(out + (size_t)item * head_dim, partials + (size_t)item * n_splits * (head_dim + 2),
                   n_splits, head_dim);
}

/* The decode kernel for head_dim (1..MAX_HEAD_DIM), WARPS warps a block. */
template <int WARPS> static void (*attention_kernel_for(int head_dim))(attention_args) {
    return head_dim == 64    ? attention_kernel<2, true, WARPS>
           : head_dim == 128 ? attention_kernel<4, true, WARPS>
           : head_dim <= 64  ? attention_kernel<2, false, WARPS>
           : head_dim <= 128 ? attention_kernel<4, false, WARPS>
                             : attention_kernel<8, false, WARPS>;
}

ferry_status cuda_attention(ferry_backend *backend, float *out, const float *q,
                            const ferry_kv_layer *cache, const ferry_token_batch *batch,
                            ferry_attention_shape shape) {
    cuda_backend *state = cuda_state(backend);
    if (shape.n_kv_heads <= 0 || shape.n_heads % shape.n_kv_heads != 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "attention: %d query heads are not a multiple of %d KV heads",
                          shape.n_heads, shape.n_kv_heads);
    if (shape.head_dim <= 0 || shape.head_dim > MAX_HEAD_DIM)
        return ferry_fail(FERRY_ERR_UNSUPPORTED, "attention: head_dim %d (the CUDA kernels take 1..%d)",
                          shape.head_dim, MAX_HEAD_DIM);
    if (batch->n_tokens <= 0) return FERRY_OK;
    int used_prefill_kernel = 0;
    FERRY_TRY(cuda_prefill_attention(backend, out, q, cache, batch, shape, &used_prefill_kernel));
    if (used_prefill_kernel) return FERRY_OK;
    const long items = (long)batch->n_tokens * shape.n_heads;
    if (items > INT32_MAX) return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "attention: batch too large");
    /* Split the context only while there are too few (token, head) items
     * to fill the GPU; never into pieces of fewer than a few keys per warp. */
    long target_blocks = (long)state->n_multiprocessors * BLOCKS_PER_SM_TARGET;
    long by_occupancy = (target_blocks + items - 1) / items;
    const int warps = state->fuse & CUDA_FUSE_ATTN_WIDE ? ATTENTION_WIDE_WARPS : ATTENTION_WARPS;
    long by_length = (cache->max_context + warps * MIN_KEYS_PER_WARP - 1) /
                     (warps * MIN_KEYS_PER_WARP);
    int n_splits = (int)(by_occupancy < by_length ? by_occupancy : by_length);
    if (n_splits < 1) n_splits = 1;
    if (n_splits > 1) {
        size_t bytes = (size_t)items * n_splits * (shape.head_dim + 2) * sizeof(float);
        void *buffer = state->attention_partials;
        size_t capacity = state->attention_partials_floats * sizeof(float);
        FERRY_TRY(cuda_scratch_reserve(state, &buffer, &capacity, bytes));
        state->attention_partials = (float *)buffer;
        state->attention_partials_floats = capacity / sizeof(float);
    }
    attention_args args;
    args.out = out;
    args.partials = state->attention_partials;
    args.q = q;
    args.cache_k = (const __half *)cache->k;
    args.cache_v = (const __half *)cache->v;
    args.positions = batch->positions;
    args.slots = batch->slots;
    args.error_flag = state->error_flag;
    args.n_heads = shape.n_heads;
    args.n_kv_heads = shape.n_kv_heads;
    args.head_dim = shape.head_dim;
    args.n_slots = cache->n_slots;
    args.max_context = cache->max_context;
    args.n_splits = n_splits;
    args.counters = state->attention_counters;
    args.merge_here = n_splits > 1 && (state->fuse & CUDA_FUSE_ATTN_MERGE) &&
                      items <= state->n_attention_counters;
    args.prefetch = (state->fuse & CUDA_FUSE_KV_PREFETCH) != 0;
    args.early = (state->fuse & CUDA_FUSE_KV_EARLY) != 0;
    args.scale = 1.0f / sqrtf((float)shape.head_dim);
    dim3 grid((unsigned)items, (unsigned)n_splits);
    void (*kernel)(attention_args) = warps == ATTENTION_WIDE_WARPS
                                         ? attention_kernel_for<ATTENTION_WIDE_WARPS>(shape.head_dim)
                                         : attention_kernel_for<ATTENTION_WARPS>(shape.head_dim);
    CUDA_TRY(cuda_launch(state, kernel, grid, warps * 32, args));
    if (n_splits > 1 && !args.merge_here)
        CUDA_TRY(cuda_launch(state, attention_merge_kernel, (unsigned)items, 128, out,
                             (const float *)state->attention_partials, n_splits, shape.head_dim));
    return FERRY_OK;
}
