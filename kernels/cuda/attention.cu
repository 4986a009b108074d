/*
 * attention.cu — the CUDA backend's decode attention: causal grouped-query
 * attention over the f16 KV cache (the prefill kernels are in
 * attention_prefill.cu and attention_flash.cu; rope and the KV store in
 * rope_kv.cu).  Attention is split over the context (flash-decoding): the
 * keys of one query head are dealt out, 32 at a time, to every warp of
 * n_splits blocks; each warp keeps an online softmax (running max,
 * running sum, weighted V).  Two kernels do it.  The rows kernel (the
 * default, head_dim 64 or 128) spreads each K/V row over a group of lanes
 * and has all of a key block's rows in flight at once (V by cp.async into
 * shared memory, K into registers); the lanes kernel (every head_dim, and
 * FERRY_CUDA_DECODE_ATTN=lanes) gives each lane one key, and asks for its
 * key block's rows (into L1) before it reads them (kvprefetch).  The
 * block of an item that finishes last merges the blocks' partial results,
 * and splits the context does not reach yet exit at once (attnmerge; with
 * it off a second kernel merges every split; FERRY_CUDA_FUSE names these
 * switches).  Before the wait for rope_kv_store, a warp asks for its
 * first key block (into L2) (kvearly).  Bad slots or positions raise the
 * backend's error flag instead of touching memory.
 * Hot path: no allocation once the partials scratch has grown.
 */
#include <cuda_fp16.h>
#include <math.h>

#include "kernels/cuda/copy_async.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/warp.cuh"

enum {
    ATTENTION_WARPS = 4,            /* warps per block ... */
    ATTENTION_WIDE_WARPS = 8,       /* ... or, with attn8, twice as many: a context of
                                       256 keys fits one block, no merge */
    MAX_HEAD_DIM = 256,
    BLOCKS_PER_SM_TARGET = 4,       /* lanes kernel: enough blocks in flight to cover the GPU */
    KEYS_PER_WARP_BLOCK = 32,       /* a warp's keys at a time (fewer leaves lanes idle) */
    ROWS_WARPS = 4,                 /* rows kernel: warps per block ... */
    ROWS_BLOCKS_PER_SM = 4,         /* ... and its resident blocks per SM (registers) */
};

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

/* Where the result goes: float, or rounded to f16 or bf16 for the
 * projection that reads it next (attention_out).  [n, n_heads, head_dim]. */
struct attention_sink {
    float *out;
    void *out16;                /* non-NULL: here instead, rounded */
    int bf16;                   /* out16's type: bf16 (else f16) */

    __device__ __forceinline__ void store(size_t i, float value) const {
        if (!out16) out[i] = value;
        else if (bf16) static_cast<__nv_bfloat16 *>(out16)[i] = from_float<__nv_bfloat16>(value);
        else static_cast<__half *>(out16)[i] = from_float<__half>(value);
    }
};

struct attention_args {
    attention_sink sink;        /* the output (written directly when an item has one part) */
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
__device__ __forceinline__ void merge_partials(const attention_sink &sink, size_t at,
                                               const float *partials, int n_parts, int head_dim) {
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
        sink.store(at + d, denominator > 0.0f ? numerator / denominator : 0.0f);
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
    merge_partials(args.sink, (size_t)item * args.head_dim,
                   args.partials + (size_t)item * args.n_splits * (args.head_dim + 2), n_parts,
                   args.head_dim);
}

/* The max of a value over the warp's 32 lanes; every lane gets it. */
__device__ __forceinline__ float warp_max(float value) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
        value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
    return value;
}

/* Where a decode block's item reads and which splits take part, the same
 * for both decode kernels.  Reads slots and positions, after pdl_wait
 * unless args.early (the host writes them, no kernel does). */
struct decode_place {
    int item, split, kv_head, slot, last;
    bool valid;                 /* (slot, last) is inside the cache */
    int n_parts;                /* splits whose results are merged (1: out is written directly) */
};

template <int WARPS> __device__ __forceinline__ decode_place place_of(const attention_args &args) {
    decode_place place;
    place.item = blockIdx.x;
    place.split = blockIdx.y;
    const int t = place.item / args.n_heads, head = place.item % args.n_heads;
    place.kv_head = head / (args.n_heads / args.n_kv_heads);
    if (!args.early) pdl_wait();
    place.slot = args.slots[t];
    place.last = args.positions[t];
    place.valid = place_ok(place.slot, place.last, args.n_slots, args.max_context);
    /* merge_here: only the splits the context reaches take part (split s
     * sees its first keys at s * WARPS * 32); one of them alone writes out
     * itself.  The same count in every block of the item.  (A block that
     * leaves on it before pdl_wait has read only slots and positions, and
     * split 0 always waits.) */
    const int reach = place.valid ? place.last / (WARPS * 32) + 1 : 1;
    place.n_parts = args.merge_here && reach < args.n_splits ? reach : args.n_splits;
    return place;
}

/* kvearly: while the kernel before (rope_kv_store) still runs, this
 * warp's first key block's K and V rows into L2 (only the newest row is
 * that kernel's to write; a prefetch into L2 cannot go stale), then the
 * wait.  Lane l asks for key l of the block. */
template <int WARPS>
__device__ __forceinline__ void prefetch_first_keys_then_wait(const attention_args &args,
                                                              const decode_place &place) {
    const int p = (place.split * WARPS + threadIdx.x / 32) * 32 + threadIdx.x % 32;
    if (place.valid && p <= place.last) {
        const size_t row_width = (size_t)args.n_kv_heads * args.head_dim;
        const size_t at = ((size_t)place.slot * args.max_context + p) * row_width +
                          (size_t)place.kv_head * args.head_dim;
        for (int b = 0; b < args.head_dim * 2; b += 128) {
            prefetch_l2(reinterpret_cast<const char *>(args.cache_k + at) + b);
            prefetch_l2(reinterpret_cast<const char *>(args.cache_v + at) + b);
        }
    }
    pdl_wait();
}

/* Each warp's online softmax over its keys (max m, sum of weights l,
 * weighted values acc), gathered for the block's merge. */
template <int WARPS> struct warp_states {
    float max[WARPS], sum[WARPS];
    float acc[WARPS][MAX_HEAD_DIM];
};

/* The block's warps merged, acc = sum_w e^(m_w - M) acc_w and
 * l = sum_w e^(m_w - M) l_w (M: the max of the m_w): out = acc / l when
 * the item has one part, else this split's partial (M, l, acc), merged by
 * the item's last block (merge_here) or by attention_merge_kernel.  Every
 * thread calls it once its warp has written its state. */
template <int WARPS>
__device__ __forceinline__ void finish_block(const attention_args &args, const decode_place &place,
                                             const warp_states<WARPS> &states) {
    __syncthreads();
    const int head_dim = args.head_dim;
    float block_max = -INFINITY;
#pragma unroll
    for (int w = 0; w < WARPS; w++) block_max = fmaxf(block_max, states.max[w]);
    float block_sum = 0.0f;
    float factors[WARPS];
#pragma unroll
    for (int w = 0; w < WARPS; w++) {
        factors[w] = states.max[w] == -INFINITY ? 0.0f : __expf(states.max[w] - block_max);
        block_sum += factors[w] * states.sum[w];
    }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float value = 0.0f;
#pragma unroll
        for (int w = 0; w < WARPS; w++) value += factors[w] * states.acc[w][d];
        if (place.n_parts == 1) {
            const float mean = block_sum > 0.0f ? value / block_sum : 0.0f;
            args.sink.store((size_t)place.item * head_dim + d, mean);
        } else {
            float *partial =
                args.partials + ((size_t)place.item * args.n_splits + place.split) * (head_dim + 2);
            partial[2 + d] = value;
            if (d == 0) {
                partial[0] = block_max;
                partial[1] = block_sum;
            }
        }
    }
    if (args.merge_here && place.n_parts > 1) merge_if_last(args, place.item, place.n_parts);
}

/* ------------------------------------- decode kernel: one key per lane */

/* FERRY_CUDA_DECODE_ATTN=lanes.  Block (item = token * n_heads + head,
 * split).  Keys come in blocks of 32, one key per lane: each lane scores
 * its key against q (held in shared memory), the warp takes the max and
 * sum of the 32 weights with two shuffle reductions, then walks the 32
 * values with lane l adding dims l, l + 32, ... (up to DIMS_PER_LANE of
 * them), or, when CONTIGUOUS (head_dim == 32 * DIMS_PER_LANE), dims
 * DIMS_PER_LANE * l .. + DIMS_PER_LANE with one 4- or 8-byte load per
 * value row.  Warp g of the G = n_splits * WARPS warps of this item takes
 * key blocks g, g + G, ... */
template <int DIMS_PER_LANE, bool CONTIGUOUS, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) attention_kernel(attention_args args) {
    /* CONTIGUOUS: bytes of one head's K (or V) row, f16 */
    constexpr int CONTIGUOUS_ROW_BYTES = 32 * DIMS_PER_LANE * 2;
    pdl_trigger();
    const decode_place place = place_of<WARPS>(args);
    if (place.split >= place.n_parts) return;
    if (args.early) prefetch_first_keys_then_wait<WARPS>(args, place);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int head_dim = args.head_dim;
    const int split = place.split, slot = place.slot, last = place.last;
    __shared__ warp_states<WARPS> states;
    __shared__ float q_shared[MAX_HEAD_DIM];

    /* q / sqrt(head_dim), so a dot product is the score */
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
        q_shared[d] = args.q[(size_t)place.item * head_dim + d] * args.scale;
    __syncthreads();

    float running_max = -INFINITY, running_sum = 0.0f;
    float acc[DIMS_PER_LANE];
#pragma unroll
    for (int e = 0; e < DIMS_PER_LANE; e++) acc[e] = 0.0f;
    if (!place.valid && threadIdx.x == 0 && split == 0)
        atomicExch(args.error_flag, CUDA_BAD_KV_PLACE);
    if (place.valid) {
        const size_t row_width = (size_t)args.n_kv_heads * head_dim;
        const size_t base =
            (size_t)slot * args.max_context * row_width + (size_t)place.kv_head * head_dim;
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
            const float new_max = fmaxf(running_max, warp_max(score));
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
    if (lane == 0) {
        states.max[warp] = running_max;
        states.sum[warp] = running_sum;
    }
#pragma unroll
    for (int e = 0; e < DIMS_PER_LANE; e++) {
        int d = CONTIGUOUS ? lane * DIMS_PER_LANE + e : lane + 32 * e;
        if (d < head_dim) states.acc[warp][d] = acc[e];
    }
    finish_block<WARPS>(args, place, states);
}

/* --------------------------- decode kernel: rows spread over lanes */

/* q . k over 8 dims: k as 8 packed f16 (one 16-byte load), q as floats. */
__device__ __forceinline__ float dot8(uint4 packed, const float *q) {
    const __half2 *pairs = reinterpret_cast<const __half2 *>(&packed);
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 f = __half22float2(pairs[i]);
        dot = fmaf(q[2 * i], f.x, dot);
        dot = fmaf(q[2 * i + 1], f.y, dot);
    }
    return dot;
}

/* acc += weight * v over 8 dims, v as 8 packed f16. */
__device__ __forceinline__ void add_weighted8(float *acc, float weight, uint4 packed) {
    const __half2 *pairs = reinterpret_cast<const __half2 *>(&packed);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 f = __half22float2(pairs[i]);
        acc[2 * i] = fmaf(weight, f.x, acc[2 * i]);
        acc[2 * i + 1] = fmaf(weight, f.y, acc[2 * i + 1]);
    }
}

/* Each lane r (0..N-1) of an aligned group of N lanes (N a power of two,
 * at most 32) holds values[0..N-1]; lane r gets the group's sum of
 * values[r], in N - 1 shuffles.  Halving (WIDTH = N/2, N/4, .. 1): a lane
 * keeps the half of its values whose index has the bit WIDTH that r has,
 * and adds the copy of that half the lane r ^ WIDTH holds (which keeps the
 * other half).  Written as a recursion so every index is a constant: an
 * array indexed at run time would live in local memory. */
template <int N, int WIDTH = N / 2>
__device__ __forceinline__ float group_reduce_scatter(float (&values)[N], int r) {
    if constexpr (WIDTH == 0) {
        return values[0];
    } else {
        const bool upper = (r & WIDTH) != 0;
#pragma unroll
        for (int k = 0; k < WIDTH; k++) {
            const float send = upper ? values[k] : values[k + WIDTH];
            const float keep = upper ? values[k + WIDTH] : values[k];
            values[k] = keep + __shfl_xor_sync(0xffffffffu, send, WIDTH);
        }
        return group_reduce_scatter<N, WIDTH / 2>(values, r);
    }
}

/* The default decode kernel (FERRY_CUDA_DECODE_ATTN=rows), head_dim 64 or
 * 128.  Block (item, split) of WARPS warps; warp g of the G = n_splits *
 * WARPS warps of the item takes the key blocks (32 keys) g, g + G, ... as
 * the lanes kernel.  A K or V row is read by ROW_LANES = HEAD_DIM / 8
 * lanes, 16 bytes (dims 8r .. 8r + 7) each, so a warp-wide read takes
 * 32 / ROW_LANES whole rows: read i of lane group g is key
 * g * ROW_LANES + i of the block.  Every K and V read of a key block
 * (ROW_LANES of each, 16 KB a warp at head_dim 128) is issued before any
 * is used, so a warp waits one memory latency per key block, not one per
 * few rows: the V rows go to shared memory by cp.async (each lane reads
 * back only what it copied), the K rows to registers.  (All 32 reads into
 * registers take ~190 registers, 2 blocks an SM; with fewer, ptxas
 * issues half the reads only after the first ones return.)  The lanes'
 * partial dot products are reduce-scattered over each group, which leaves
 * lane l holding the score of key l; the weights are shuffled to the
 * lanes that hold their V rows; the groups' sums are added at the end. */
template <int HEAD_DIM, int WARPS>
__global__ void __launch_bounds__(WARPS * 32, ROWS_BLOCKS_PER_SM)
    attention_rows_kernel(attention_args args) {
    constexpr int ROW_LANES = HEAD_DIM / 8;
    static_assert(HEAD_DIM % 8 == 0 && 32 % ROW_LANES == 0, "a row is 1..32 lanes of 16 bytes");
    pdl_trigger();
    const decode_place place = place_of<WARPS>(args);
    if (place.split >= place.n_parts) return;
    if (args.early) prefetch_first_keys_then_wait<WARPS>(args, place);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int group = lane / ROW_LANES, part = lane % ROW_LANES;
    __shared__ warp_states<WARPS> states;
    /* [warp][read i][lane]: a warp-wide copy or read is 512 contiguous bytes */
    __shared__ uint4 v_staged[WARPS][ROW_LANES][32];
    __shared__ uint64_t v_landed[WARPS]; /* mbarriers */

    /* this lane's 8 dims of q / sqrt(head_dim), so a dot product is the score */
    float q_part[8];
    const float *q = args.q + (size_t)place.item * HEAD_DIM + 8 * part;
#pragma unroll
    for (int e = 0; e < 8; e++) q_part[e] = q[e] * args.scale;

    float running_max = -INFINITY, lane_sum = 0.0f; /* lane_sum: this lane's keys' weights */
    float acc[8];
#pragma unroll
    for (int e = 0; e < 8; e++) acc[e] = 0.0f;
    if (!place.valid && threadIdx.x == 0 && place.split == 0)
        atomicExch(args.error_flag, CUDA_BAD_KV_PLACE);
    if (place.valid) {
        const int last = place.last;
        const size_t row_width = (size_t)args.n_kv_heads * HEAD_DIM;
        const size_t base = (size_t)place.slot * args.max_context * row_width +
                            (size_t)place.kv_head * HEAD_DIM + 8 * part;
        const __half *keys = args.cache_k + base, *values = args.cache_v + base;
        const __half *k_last = keys + (size_t)last * row_width;
        const __half *v_last = values + (size_t)last * row_width;
        /* the warp's V rows have landed: 32 arrivals (a phase) a key block */
        const uint32_t v_ready = shared_address(&v_landed[warp]);
        uint32_t phase = 0;
        if (lane == 0) mbarrier_init(v_ready, 32);
        __syncwarp();
        for (int block_start = (place.split * WARPS + warp) * 32; block_start <= last;
             block_start += args.n_splits * WARPS * 32) {
            /* this lane group's keys first .. first + ROW_LANES - 1; those
             * past the last are read as the last (weight 0): rows past it
             * may never have been written (NaN times 0 is NaN) */
            const int first = block_start + group * ROW_LANES;
            __syncwarp(); /* the last block's reads of v_staged come before these copies */
            const __half *v_at = values + (size_t)first * row_width;
#pragma unroll
            for (int i = 0; i < ROW_LANES; i++) {
                copy_async_16(shared_address(&v_staged[warp][i][lane]),
                              first + i <= last ? v_at : v_last, true);
                v_at += row_width;
            }
            copy_async_arrive(v_ready);
            const __half *k_at = keys + (size_t)first * row_width;
            uint4 k_rows[ROW_LANES];
#pragma unroll
            for (int i = 0; i < ROW_LANES; i++) {
                k_rows[i] = *reinterpret_cast<const uint4 *>(first + i <= last ? k_at : k_last);
                k_at += row_width;
            }
            float dots[ROW_LANES];
#pragma unroll
            for (int i = 0; i < ROW_LANES; i++) dots[i] = dot8(k_rows[i], q_part);
            float score = group_reduce_scatter<ROW_LANES>(dots, part);
            if (block_start + lane > last) score = -INFINITY;
            /* online softmax: the new running max (finite: the block's key
             * 0 is in range), rescale what we have */
            const float new_max = fmaxf(running_max, warp_max(score));
            const float correction = __expf(running_max - new_max); /* 0 on the first block */
            const float weight = __expf(score - new_max);          /* 0 past the last key */
            lane_sum = lane_sum * correction + weight;
            running_max = new_max;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[e] *= correction;
            /* acc += sum_i weight(key g * ROW_LANES + i) V[that key], this lane's dims */
            mbarrier_wait(v_ready, phase);
            phase ^= 1;
#pragma unroll
            for (int i = 0; i < ROW_LANES; i++)
                add_weighted8(acc, __shfl_sync(0xffffffffu, weight, group * ROW_LANES + i),
                              v_staged[warp][i][lane]);
        }
    }
    /* the groups' keys together: every group then holds the warp's sums */
#pragma unroll
    for (int offset = ROW_LANES; offset < 32; offset *= 2)
#pragma unroll
        for (int e = 0; e < 8; e++) acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], offset);
    lane_sum = warp_sum(lane_sum);
    if (lane == 0) {
        states.max[warp] = running_max;
        states.sum[warp] = lane_sum;
    }
    if (lane < ROW_LANES) {
#pragma unroll
        for (int e = 0; e < 8; e++) states.acc[warp][8 * part + e] = acc[e];
    }
    finish_block<WARPS>(args, place, states);
}

/* One block per (token, head): out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s. */
__global__ void attention_merge_kernel(attention_sink sink, const float *partials, int n_splits,
                                       int head_dim) {
    pdl_trigger();
    pdl_wait();
    const int item = blockIdx.x;
    merge_partials(sink, (size_t)item * head_dim,
                   partials + (size_t)item * n_splits * (head_dim + 2), n_splits, head_dim);
}

/* ------------------------------------------------------- the launch */

/* The lanes kernel for head_dim (1..MAX_HEAD_DIM), WARPS warps a block. */
template <int WARPS> static void (*lanes_kernel_for(int head_dim))(attention_args) {
    return head_dim == 64    ? attention_kernel<2, true, WARPS>
           : head_dim == 128 ? attention_kernel<4, true, WARPS>
           : head_dim <= 64  ? attention_kernel<2, false, WARPS>
           : head_dim <= 128 ? attention_kernel<4, false, WARPS>
                             : attention_kernel<8, false, WARPS>;
}

/* A decode kernel and how its launch is cut. */
typedef struct decode_launch {
    void (*kernel)(attention_args);
    int warps;
    int blocks_per_sm;          /* the kernel's resident blocks per SM (lanes: a target) */
    int fill_one_wave;          /* splits: the most whose blocks all fit at once (rows), or
                                   the fewest that fill blocks_per_sm (lanes) */
} decode_launch;

/* The rows kernel where it applies (head_dim 64 or 128) unless the lanes
 * kernel is asked for (FERRY_CUDA_DECODE_ATTN=lanes): its launch bounds
 * make ROWS_BLOCKS_PER_SM blocks fit an SM's registers (119 and 93 of
 * them at head_dim 128 and 64, ptxas 13.0; shared memory: 37 and 21 KB a
 * block).  The lanes kernel: 4 or (attn8) 8 warps, BLOCKS_PER_SM_TARGET. */
static decode_launch decode_kernel(const cuda_backend *state, int head_dim) {
    if (!state->decode_lanes && (head_dim == 64 || head_dim == 128))
        return decode_launch{head_dim == 64 ? attention_rows_kernel<64, ROWS_WARPS>
                                            : attention_rows_kernel<128, ROWS_WARPS>,
                             ROWS_WARPS, ROWS_BLOCKS_PER_SM, 1};
    if (state->fuse & CUDA_FUSE_ATTN_WIDE)
        return decode_launch{lanes_kernel_for<ATTENTION_WIDE_WARPS>(head_dim), ATTENTION_WIDE_WARPS,
                             BLOCKS_PER_SM_TARGET, 0};
    return decode_launch{lanes_kernel_for<ATTENTION_WARPS>(head_dim), ATTENTION_WARPS,
                         BLOCKS_PER_SM_TARGET, 0};
}

/* Split the context only while there are too few (token, head) items for
 * the GPU's resident blocks, and never so far that a warp has no key block
 * at max_context; FERRY_CUDA_ATTN_SPLITS (measuring) sets the count, within
 * that last bound.  The rows kernel stays within one wave: a block whose
 * warps take two key blocks each costs less than a second wave of blocks
 * and a merge.  The count depends on the cache's shape only, never on the
 * positions (device data), so a recorded decode step stays right. */
static int split_count(const cuda_backend *state, const decode_launch *launch, long items,
                       int max_context) {
    const long keys_per_pass = (long)launch->warps * KEYS_PER_WARP_BLOCK;
    const long by_length = (max_context + keys_per_pass - 1) / keys_per_pass;
    const long resident = (long)state->n_multiprocessors * launch->blocks_per_sm;
    long n_splits = launch->fill_one_wave ? resident / items : (resident + items - 1) / items;
    if (state->attention_splits > 0) n_splits = state->attention_splits;
    if (n_splits > by_length) n_splits = by_length;
    return n_splits < 1 ? 1 : (int)n_splits;
}

ferry_status cuda_attention(ferry_backend *backend, float *out, const float *q,
                            const ferry_kv_layer *cache, const ferry_token_batch *batch,
                            ferry_attention_shape shape) {
    int rounded = 0;
    return cuda_attention_rounded(backend, out, NULL, FERRY_DTYPE_F32, q, cache, batch, shape,
                                  &rounded);
}

ferry_status cuda_attention_rounded(ferry_backend *backend, float *out, void *out16,
                                    ferry_dtype out16_dtype, const float *q,
                                    const ferry_kv_layer *cache, const ferry_token_batch *batch,
                                    ferry_attention_shape shape, int *out_rounded) {
    cuda_backend *state = cuda_state(backend);
    *out_rounded = 0;
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
    const decode_launch launch = decode_kernel(state, shape.head_dim);
    const int n_splits = split_count(state, &launch, items, cache->max_context);
    if (n_splits > 1) {
        FERRY_TRY(cuda_scratch_reserve_floats(state, &state->attention_partials,
                                              &state->attention_partials_floats,
                                              (size_t)items * n_splits * (shape.head_dim + 2)));
    }
    attention_args args;
    const int round = out16 && (out16_dtype == FERRY_DTYPE_F16 || out16_dtype == FERRY_DTYPE_BF16);
    args.sink.out = out;
    args.sink.out16 = round ? out16 : NULL;
    args.sink.bf16 = out16_dtype == FERRY_DTYPE_BF16;
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
    CUDA_TRY(cuda_launch(state, launch.kernel, grid, launch.warps * 32, args));
    if (n_splits > 1 && !args.merge_here)
        CUDA_TRY(cuda_launch(state, attention_merge_kernel, (unsigned)items, 128, args.sink,
                             (const float *)state->attention_partials, n_splits, shape.head_dim));
    *out_rounded = round;
    return FERRY_OK;
}
