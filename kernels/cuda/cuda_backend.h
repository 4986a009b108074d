/*
 * cuda_backend.h — internals shared by the CUDA backend's files: the
 * backend state (device, compute stream, cuBLAS handle, scratch, the
 * device-side error flag), the CUDA_TRY / CUBLAS_TRY macros, and the C
 * entry points of the kernel families (one .cu file each).  Nothing
 * outside kernels/cuda includes this; the runtime sees only ops.h.
 */
#ifndef FERRY_KERNELS_CUDA_BACKEND_H
#define FERRY_KERNELS_CUDA_BACKEND_H

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "kernels/ops.h"

/* A failing CUDA runtime call becomes a ferry_fail with file, line, the
 * call and CUDA's own words; the function returns that status. */
#define CUDA_TRY(call)                                                                       \
    do {                                                                                     \
        cudaError_t cuda_try_error_ = (call);                                                \
        if (cuda_try_error_ != cudaSuccess)                                                  \
            return ferry_fail(FERRY_ERR_BACKEND, "%s:%d: %s failed: %s", __FILE__, __LINE__, \
                              #call, cudaGetErrorString(cuda_try_error_));                   \
    } while (0)

#define CUBLAS_TRY(call)                                                                     \
    do {                                                                                     \
        cublasStatus_t cublas_try_status_ = (call);                                          \
        if (cublas_try_status_ != CUBLAS_STATUS_SUCCESS)                                     \
            return ferry_fail(FERRY_ERR_BACKEND, "%s:%d: %s failed: %s", __FILE__, __LINE__, \
                              #call, cublasGetStatusString(cublas_try_status_));             \
    } while (0)

/* After a kernel launch: a bad configuration shows up here, not later. */
#define CUDA_TRY_LAUNCH() CUDA_TRY(cudaGetLastError())

/* Codes a kernel writes into the error flag when its input is bad (the
 * host cannot check device-resident token ids and positions without a
 * copy); synchronize() turns them into a message. */
enum {
    CUDA_BAD_TOKEN = 1,         /* embed: token id < 0 */
    CUDA_BAD_KV_PLACE = 2,      /* kv_store / attention: slot or position outside the cache */
};

/* The fusions of the decode path, each switchable (FERRY_CUDA_FUSE, read
 * in backend_cuda.c) so one run can measure what each gives.  Off, the
 * same math runs as separate kernels. */
enum {
    CUDA_FUSE_NORM1 = 1u << 0,      /* matmul_multi, 1-2 tokens: the block stages x * w_norm
                                       in shared memory once and sums x^2 (fused.cu) */
    CUDA_FUSE_NORM1_WARP = 1u << 1, /* the same, every warp folding the norm on its own
                                       (the first version; NORM1 wins when both are set) */
    CUDA_FUSE_NORM16 = 1u << 2,     /* matmul_multi, 3..16 tokens: norm in x's rounding */
    CUDA_FUSE_ROPEKV = 1u << 3,     /* rope_kv_store: one kernel for RoPE and the KV store */
    CUDA_FUSE_ATTN_MERGE = 1u << 4, /* decode attention: the last block of a (token, head)
                                       merges the splits (no merge kernel) and splits that
                                       the context does not reach exit at once */
    CUDA_FUSE_KV_PREFETCH = 1u << 5, /* decode attention: each key block's K and V rows are
                                        prefetched into L1 before the scores (not a fusion:
                                        a switch to measure it by) */
    CUDA_FUSE_ATTN_WIDE = 1u << 6,   /* decode attention: blocks of 8 warps (256 keys a pass)
                                        instead of 4, so half the splits */
    CUDA_FUSE_KV_EARLY = 1u << 7,    /* before pdl_wait, rope_kv_store forms its sines and
                                        cosines and the decode attention asks for its first
                                        K/V rows (into L2) (both read slots and positions) */
    CUDA_FUSE_QKV_ROPE = 1u << 10,   /* qkv_rope_store: the Q/K/V projection's epilogue
                                        rotates q and k and stores k and v in the cache (no
                                        rope_kv_store kernel); 3..16 tokens: Q, K and V in
                                        one tensor-core launch */
    CUDA_FUSE_SILU16 = 1u << 11,     /* matmul_multi, 3..16 tokens: gate and up in one
                                        tensor-core launch, silu(gate) * up in its epilogue;
                                        other stacks in one launch too */
    CUDA_FUSE_HANDOFF = 1u << 12,    /* attention_out and mlp, 3..16 tokens (with silu16):
                                        the attention kernel and the SiLU epilogue write
                                        their output rounded for the projection after them
                                        (no convert kernel between) */
    CUDA_FUSE_NORM_NEXT = 1u << 13,  /* attention_out and mlp, 3..16 tokens (with handoff):
                                        the projection that adds into the residual stream
                                        prepares the next op's RMSNorm in its epilogue (no
                                        norm kernel in front of QKV or gate/up) */
};

typedef struct cuda_backend {
    int device;
    cudaStream_t stream;        /* every op runs here, in order */
    cublasHandle_t cublas;
    int *error_flag;            /* device int: 0, or a CUDA_BAD_* code */
    void *activations;          /* scratch: x converted to the weight dtype for cuBLAS */
    size_t activations_bytes;
    void *handoff;              /* scratch: attention_out's and mlp's rounded intermediate */
    size_t handoff_bytes;
    float *norm_partials;       /* scratch: cuda_mma_matvec_norm_next's per-block squares */
    size_t norm_partials_floats;
    unsigned *norm_counter;     /* ... its blocks done (zero between launches) */
    float *norm_inv_rms;        /* ... its result: [16] scales of the prepared norm */
    /* The norm attention_out or mlp prepared last (x NULL: none): for x
     * [n, cols] and that weight, x * weight rounded in activations and the
     * scales in norm_inv_rms. */
    struct {
        const float *x, *weight;
        int n, cols;
        ferry_dtype dtype;
    } prepared;
    float *attention_partials;  /* scratch: flash-decoding partial results */
    size_t attention_partials_floats;
    unsigned *attention_counters; /* decode attention: blocks of a (token, head) that have
                                     written their partial; zero between kernels */
    int n_attention_counters;
    uint64_t scratch_epoch;     /* bumped whenever a scratch buffer moves (graphs go stale) */
    int32_t *host_slots;        /* prefill attention: slot ids read back to cut its tiles */
    int host_slots_capacity;
    int32_t *host_tile_starts;  /* prefill attention: the tiles cut on the host ... */
    int host_tile_starts_capacity;
    void *tile_starts;          /* ... and their device copy (int32) */
    size_t tile_starts_bytes;
    int prefill_simt;           /* FERRY_CUDA_PREFILL_ATTN=simt: the older SIMT prefill kernel */
    int decode_lanes;           /* FERRY_CUDA_DECODE_ATTN=lanes: the older decode attention
                                   kernel (one key per lane; attention.cu) */
    int attention_splits;       /* FERRY_CUDA_ATTN_SPLITS=N: decode attention's splits of the
                                   context (0: chosen per shape) */
    int n_multiprocessors;
    int matvec_max_tokens;      /* matmuls with n <= this use the matvec kernel */
    int pdl;                    /* launch kernels with programmatic dependent launch (sm_90+,
                                   FERRY_CUDA_PDL=0 turns it off); see launch.cuh */
    unsigned fuse;              /* CUDA_FUSE_* bits: which fusions run (FERRY_CUDA_FUSE) */
    int tc_matvec_kernel;       /* 3..16 tokens: 0 until first use, then which kernel
                                   (matvec_tc.cu; FERRY_CUDA_TC_MATVEC=split|rows32|v2|v2m2) */
} cuda_backend;

static inline cuda_backend *cuda_state(ferry_backend *backend) {
    return (cuda_backend *)backend->impl;
}

/* Grow a scratch buffer to at least `bytes` (outside the hot path once
 * the largest shape has been seen). */
ferry_status cuda_scratch_reserve(cuda_backend *state, void **buffer, size_t *capacity,
                                  size_t bytes);
/* The same for a buffer of floats, its capacity counted in floats. */
ferry_status cuda_scratch_reserve_floats(cuda_backend *state, float **buffer, size_t *n_floats,
                                         size_t floats);

/* ---- CUDA Graphs of a decode step (graph.c; contracts in kernels/ops.h) ---- */
ferry_status cuda_graph_begin(ferry_backend *backend);
ferry_status cuda_graph_end(ferry_backend *backend, void **out_graph);
ferry_status cuda_graph_launch(ferry_backend *backend, void *graph, int *out_replayed);
void cuda_graph_free(ferry_backend *backend, void *graph);
ferry_status cuda_matmul_multi(ferry_backend *backend, int n_matrices, float *const *outs,
                               const float *x, const ferry_fused_norm *norm,
                               const void *const *weights, const float *const *biases,
                               const int *rows, ferry_dtype dtype, int n, int cols,
                               int silu_pair);
ferry_status cuda_rope_kv_store(ferry_backend *backend, float *q, float *k, const float *v,
                                ferry_kv_layer *cache, const ferry_token_batch *batch,
                                const float *inv_freq, ferry_attention_shape shape);
ferry_status cuda_attention_out(ferry_backend *backend, float *x, float *scratch, const float *q,
                                const ferry_kv_layer *cache, const ferry_token_batch *batch,
                                ferry_attention_shape shape, const void *wo, ferry_dtype dtype,
                                int hidden, const ferry_fused_norm *next_norm);
ferry_status cuda_mlp(ferry_backend *backend, float *x, const ferry_fused_norm *norm,
                      const void *const *weights, ferry_dtype dtype, int n, int hidden, int inter,
                      float *gate, float *up, const ferry_fused_norm *next_norm);
/* blocks.c: the operand of a tensor-core launch of n tokens (3..16) that
 * applies `norm` (NULL: none) to x [n, cols]: *x16, and the scales its sums
 * take, *inv_rms (NULL: none).  What the op before prepared when norm says
 * so and the backend's record agrees (x, weight, n, cols, dtype), else a
 * preparation from x (or, with norm16 off, x normalised by the rmsnorm op
 * into norm->scratch and rounded).  Forgets the record. */
ferry_status cuda_norm_operand(ferry_backend *backend, const float *x,
                               const ferry_fused_norm *norm, int n, int cols, ferry_dtype dtype,
                               const void **x16, const float **inv_rms);
/* fused.cu: with the fusion that folds a norm into x's rounding off for n
 * tokens, x is normalised into norm->scratch first and *x, *norm say so
 * (x = the scratch, norm = NULL); else both are left as they are. */
ferry_status cuda_unfold_norm(ferry_backend *backend, int n, int cols, const float **x,
                              const ferry_fused_norm **norm);
ferry_status cuda_qkv_rope_store(ferry_backend *backend, float *q, float *k, float *v,
                                const float *x, const ferry_fused_norm *norm,
                                const void *const *weights, const float *const *biases,
                                ferry_dtype dtype, int n, int cols, ferry_kv_layer *cache,
                                const ferry_token_batch *batch, const float *inv_freq,
                                ferry_attention_shape shape);

/* ---- the tensor-core matvec (matmul.cu), for fused ops that share its input ---- */

/* Does the tensor-core matvec take n tokens of `cols` columns times w? */
int cuda_mma_matvec_fits(const cuda_backend *state, const void *w, ferry_dtype dtype, int n,
                         int cols);
/* x [n, cols] (with norm_weight: rmsnorm(x) * norm_weight, eps inside the
 * root, as the rmsnorm op) rounded to dtype into the activations scratch,
 * the operand of cuda_mma_matvec; valid until the next matmul. */
ferry_status cuda_x16_prepare(cuda_backend *state, const float *x, const float *norm_weight,
                              float eps, ferry_dtype dtype, int n, int cols, const void **out_x16);
/* matvec_mma.cu.  Shapes for all of them: _fits (cols a multiple of
 * CUDA_MMA_COLS_MULTIPLE, weights 16-byte aligned, f16/bf16, 3..16 tokens). */
enum {
    CUDA_MMA_COLS_MULTIPLE = 32,
    CUDA_NORM_MAX_TOKENS = 16,  /* tokens a prepared norm serves (norm_inv_rms's length) */
};
/* out[t] (+)= x16[t] W^T (+ bias) on the tensor cores (or matvec_tc.cu's
 * kernel when FERRY_CUDA_TC_MATVEC picks one). */
ferry_status cuda_mma_matvec(cuda_backend *state, float *out, const void *x16, const void *w,
                             ferry_dtype dtype, const float *bias, int n, int rows, int cols,
                             int accumulate);
/* outs[m][t] (+)= x16[t] W_m^T (+ biases[m]) for 1..3 matrices, one launch. */
ferry_status cuda_mma_stacked(cuda_backend *state, int n_matrices, float *const *outs,
                              const void *x16, const void *const *weights,
                              const float *const *biases, const int *rows, ferry_dtype dtype,
                              int n, int cols, int accumulate);
/* out[t] += x16[t] W^T (the residual stream, no bias), and for the RMSNorm
 * the next launch applies (weight norm_weight [rows], eps): norm_x16 [n,
 * rows] = out * norm_weight rounded to dtype, and state->norm_inv_rms[t]
 * = 1 / sqrt(mean(out[t]^2) + eps), the scale that launch's sums take
 * (its inv_rms argument).  At most 16 tokens. */
ferry_status cuda_mma_matvec_norm_next(cuda_backend *state, float *out, const void *x16,
                                       const void *w, ferry_dtype dtype, int n, int rows,
                                       int cols, const float *norm_weight, float eps,
                                       void *norm_x16);
/* The same preparation from x [n, cols] itself (norm_weight [cols], eps):
 * x * norm_weight rounded into the activations scratch (*out_x16) and the
 * scales into state->norm_inv_rms, in bits equal to what
 * cuda_mma_matvec_norm_next gives for the same x.  At most 16 tokens. */
ferry_status cuda_mma_norm_prepare(cuda_backend *state, const float *x, const float *norm_weight,
                                   float eps, ferry_dtype dtype, int n, int cols,
                                   const void **out_x16);
/* out[t] = silu(x16[t] Gate^T) * (x16[t] Up^T), as cuda_silu_mul computes
 * it; one launch, no bias.  out16 (NULL: none): the product goes there
 * instead, rounded to dtype, [n, rows] (the down projection's x16).
 * inv_rms (NULL: none): x16 is a prepared norm's (cuda_mma_matvec_norm_next)
 * and the sums are scaled by inv_rms[t] first. */
ferry_status cuda_mma_silu(cuda_backend *state, float *out, void *out16, const void *x16,
                           const float *inv_rms, const void *gate, const void *up,
                           ferry_dtype dtype, int n, int rows, int cols);
/* Q, K and V of x16 (weights[3], biases[3] or NULL) in one launch whose
 * epilogue rotates q and k (RoPE) and stores k and v into the f16 cache at
 * each token's (slot, position): the cuda_qkv_rope_store op on the tensor
 * cores.  _fits: head_dim a multiple of 16, a cache (the backend's are f16). */
int cuda_mma_qkv_rope_fits(ferry_attention_shape shape, const ferry_kv_layer *cache);
ferry_status cuda_mma_qkv_rope(cuda_backend *state, float *q, const void *x16,
                               const float *inv_rms, const void *const *weights,
                               const float *const *biases,
                               ferry_dtype dtype, int n, int cols, ferry_kv_layer *cache,
                               const ferry_token_batch *batch, const float *inv_freq,
                               ferry_attention_shape shape);
/* matvec_tc.cu: the split-K cluster kernel or v2 (sm_90+) behind the two calls
 * above; x is float (x_is_f32, rounded to dtype while it is staged) or
 * dtype, 16-byte aligned.  _fits: f16/bf16, 3..16 tokens, cols % 8 == 0,
 * w 16-byte aligned. */
int cuda_tc_matvec_fits(const void *w, ferry_dtype dtype, int n, int cols);
/* Is it the kernel for 3..16 tokens (sm_90+, FERRY_CUDA_TC_MATVEC=split|rows32|v2|v2m2)?
 * _takes_f32: does it take float x (split|rows32; v2 takes x rounded by
 * cuda_x16_prepare only)? */
int cuda_tc_matvec_enabled(const cuda_backend *state);
int cuda_tc_matvec_takes_f32(const cuda_backend *state);
ferry_status cuda_tc_matvec(cuda_backend *state, float *out, const void *x, int x_is_f32,
                            const void *w, ferry_dtype dtype, const float *bias, int n, int rows,
                            int cols, int accumulate);

/* ---- ops (contracts in kernels/ops.h) ---- */
ferry_status cuda_embed(ferry_backend *backend, float *out, const void *table, ferry_dtype dtype,
                        const ferry_token_batch *batch, int dim);
ferry_status cuda_rmsnorm(ferry_backend *backend, float *out, const float *x, const float *weight,
                          int n, int dim, float eps);
ferry_status cuda_silu_mul(ferry_backend *backend, float *out, const float *gate, const float *up,
                           int n, int dim);
ferry_status cuda_matmul(ferry_backend *backend, float *out, const float *x, const void *w,
                         ferry_dtype dtype, const float *bias, int n, int rows, int cols,
                         int accumulate);
ferry_status cuda_rope(ferry_backend *backend, float *q, float *k, const ferry_token_batch *batch,
                       const float *inv_freq, ferry_attention_shape shape);
ferry_status cuda_kv_store(ferry_backend *backend, ferry_kv_layer *cache, const float *k,
                           const float *v, const ferry_token_batch *batch,
                           ferry_attention_shape shape);
ferry_status cuda_attention(ferry_backend *backend, float *out, const float *q,
                            const ferry_kv_layer *cache, const ferry_token_batch *batch,
                            ferry_attention_shape shape);

/* sample.cu: the sample op (contract in kernels/ops.h); vocabularies up to
 * 256 x 65535 tokens. */
ferry_status cuda_sample(ferry_backend *backend, int32_t *out_tokens, const float *logits,
                         const ferry_sample_rule *rules, int n, int vocab);

/* Batches of at least this many tokens try a tiled prefill kernel; the
 * tensor-core one takes tiles of up to FLASH_TILE_TOKENS tokens. */
enum { PREFILL_MIN_TOKENS = 64, FLASH_TILE_TOKENS = 64 };
/* attention.cu: the attention op, or with out16 (f16 or bf16 out16_dtype)
 * its decode kernels write the result rounded into out16 instead of out;
 * *out_rounded says whether they did (else out holds it: the prefill
 * kernels, no out16, another dtype). */
ferry_status cuda_attention_rounded(ferry_backend *backend, float *out, void *out16,
                                    ferry_dtype out16_dtype, const float *q,
                                    const ferry_kv_layer *cache, const ferry_token_batch *batch,
                                    ferry_attention_shape shape, int *out_rounded);
/* attention_prefill.cu: a tiled kernel when the batch suits it (at least
 * PREFILL_MIN_TOKENS tokens, head_dim 64 or 128; the SIMT kernel also
 * needs each tile of 16 tokens in one slot): *out_used = 1; else nothing
 * is launched and *out_used = 0.  Reads the slot ids back, so never call
 * it while a graph is being recorded. */
ferry_status cuda_prefill_attention(ferry_backend *backend, float *out, const float *q,
                                    const ferry_kv_layer *cache, const ferry_token_batch *batch,
                                    ferry_attention_shape shape, int *out_used);
/* attention_flash.cu: the tensor-core kernel over n_tiles tiles of one
 * slot each (device tile_starts[n_tiles + 1], from ferry_prefill_tiles);
 * head_dim 64 or 128. */
ferry_status cuda_flash_prefill_attention(cuda_backend *state, float *out, const float *q,
                                          const ferry_kv_layer *cache,
                                          const ferry_token_batch *batch,
                                          ferry_attention_shape shape,
                                          const int32_t *tile_starts, int n_tiles);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_KERNELS_CUDA_BACKEND_H */
