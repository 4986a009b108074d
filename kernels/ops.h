/*
 * ops.h — the op list a Llama-family layer needs, as a table of function
 * pointers that each backend (kernels/cpu, kernels/cuda) fills.  The
 * runtime calls through this table and never includes CUDA headers.
 *
 * Conventions for every op:
 * - Pointers are backend memory (host memory for the CPU backend, device
 *   memory for CUDA), made with the backend's alloc.
 * - Activations are float32, row-major, one row per token.
 * - Weight matrices are row-major [rows, cols] in `dtype` (HF [out, in]),
 *   so y = x W^T: out[t][r] = sum_c x[t][c] * W[r][c].
 * - Ops run in order on the backend's compute stream and may return before
 *   the work is done; synchronize() waits for it and reports errors.
 * - A token batch is described per token: its KV-cache slot (sequence) and
 *   its position in that sequence.
 */
#ifndef FERRY_KERNELS_OPS_H
#define FERRY_KERNELS_OPS_H

#include "base/base.h"

typedef struct ferry_backend ferry_backend;

/* Per-token description of a batch, in backend memory. */
typedef struct ferry_token_batch {
    int n_tokens;
    const int32_t *tokens;      /* [n_tokens] token ids */
    const int32_t *positions;   /* [n_tokens] position within its sequence */
    const int32_t *slots;       /* [n_tokens] KV-cache slot (sequence) */
} ferry_token_batch;

/* One layer's KV cache: [n_slots, max_context, n_kv_heads, head_dim] for K
 * and likewise for V, in the backend's kv_dtype. */
typedef struct ferry_kv_layer {
    void *k;
    void *v;
    int n_slots;
    int max_context;
} ferry_kv_layer;

/* An RMSNorm a fused op applies to its input first: x is replaced by
 * rmsnorm(x) * weight, as the rmsnorm op computes it (up to float
 * rounding order). */
typedef struct ferry_fused_norm {
    const float *weight;        /* [cols] */
    float eps;
    float *scratch;             /* [n, cols] backend memory the op may use for rmsnorm(x) */
    /* 1: the op issued just before this one was given this norm as its
     * next_norm and wrote x last, so the backend may use what it prepared
     * then (the caller vouches; a backend that prepared nothing
     * normalises x itself).  0: nothing is known. */
    int prepared;
} ferry_fused_norm;

/* Attention geometry. */
typedef struct ferry_attention_shape {
    int n_heads;
    int n_kv_heads;             /* n_heads is a multiple of n_kv_heads */
    int head_dim;
} ferry_attention_shape;

typedef struct ferry_backend_ops {
    const char *name;           /* "cpu", "cuda" */

    /* ---- memory ---- */
    ferry_status (*alloc)(ferry_backend *backend, size_t bytes, void **out);
    void (*free)(ferry_backend *backend, void *ptr);
    ferry_status (*upload)(ferry_backend *backend, void *dst, const void *host_src, size_t bytes);
    ferry_status (*download)(ferry_backend *backend, void *host_dst, const void *src,
                             size_t bytes);
    ferry_status (*synchronize)(ferry_backend *backend);
    void (*destroy)(ferry_backend *backend);

    /* ---- ops ---- */

    /* out[t] = table[tokens[t]] as float.  table: [vocab, dim] in dtype. */
    ferry_status (*embed)(ferry_backend *backend, float *out, const void *table,
                          ferry_dtype dtype, const ferry_token_batch *batch, int dim);

    /* out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight.  out may equal x. */
    ferry_status (*rmsnorm)(ferry_backend *backend, float *out, const float *x,
                            const float *weight, int n, int dim, float eps);

    /* out[t] (+)= x[t] W^T (+ bias).  W: [rows, cols] in dtype; bias [rows]
     * f32 or NULL; accumulate nonzero adds into out (residual fusion). */
    ferry_status (*matmul)(ferry_backend *backend, float *out, const float *x, const void *w,
                           ferry_dtype dtype, const float *bias, int n, int rows, int cols,
                           int accumulate);

    /* Rotate q [n, n_heads, head_dim] and k [n, n_kv_heads, head_dim] in
     * place by each token's position (HF rotate_half convention: element i
     * pairs with i + head_dim/2), using inv_freq[head_dim/2]. */
    ferry_status (*rope)(ferry_backend *backend, float *q, float *k,
                         const ferry_token_batch *batch, const float *inv_freq,
                         ferry_attention_shape shape);

    /* Store k, v [n, n_kv_heads, head_dim] into the cache at each token's
     * (slot, position). */
    ferry_status (*kv_store)(ferry_backend *backend, ferry_kv_layer *cache, const float *k,
                             const float *v, const ferry_token_batch *batch,
                             ferry_attention_shape shape);

    /* Causal attention: token t's query heads attend to positions
     * 0 .. positions[t] of its slot in the cache (its own K/V stored
     * already), softmax scaled by 1/sqrt(head_dim).  q, out: [n, n_heads,
     * head_dim]. */
    ferry_status (*attention)(ferry_backend *backend, float *out, const float *q,
                              const ferry_kv_layer *cache, const ferry_token_batch *batch,
                              ferry_attention_shape shape);

    /* out[i] = silu(gate[i]) * up[i] for n*dim elements (out may equal gate). */
    ferry_status (*silu_mul)(ferry_backend *backend, float *out, const float *gate,
                             const float *up, int n, int dim);

    /* KV cache element type (f32 on the CPU; the CUDA backend may choose). */
    ferry_dtype kv_dtype;

    /* The stream every op runs on (a cudaStream_t, never the legacy 0), for
     * work that must be ordered with the ops: offload/'s slot ring makes it
     * wait for a slot's copy event and records compute events on it.  NULL
     * (or a NULL result) where ops finish before they return (the CPU). */
    void *(*compute_stream)(ferry_backend *backend);

    /* ---- optional measurement hooks (NULL where a backend has none) ---- */

    /* Device-to-device copy bandwidth over `bytes`, counting bytes read
     * plus bytes written, in GB/s (10^9 bytes per second). */
    ferry_status (*copy_bandwidth)(ferry_backend *backend, size_t bytes, double *out_gbps);
    /* Device memory in use (by every process) and the device's total. */
    ferry_status (*memory_info)(ferry_backend *backend, size_t *used_bytes, size_t *total_bytes);

    /* ---- optional: host memory the device reads and writes in place ---- */

    /* Pinned host memory mapped into the device's address space: every op
     * takes the pointer like backend memory, and each access a kernel makes
     * crosses the host-device link (only the bytes touched move).  For a KV
     * cache the device budget cannot hold.  Fails with FERRY_ERR_NO_MEMORY
     * naming `bytes` when the host cannot pin them.  NULL where all backend
     * memory is host memory already (the CPU): alloc serves. */
    ferry_status (*host_mapped_alloc)(ferry_backend *backend, size_t bytes, void **out);
    void (*host_mapped_free)(ferry_backend *backend, void *ptr);

    /* ---- optional: record a sequence of ops once, replay it (NULL: none) ---- */

    /* Ops issued after graph_begin are recorded, not run, until graph_end,
     * which always ends the recording (also after a failed op) and gives a
     * replayable graph, or fails.  graph_launch replays it: the same ops on
     * the same buffers with whatever they hold now; *out_replayed is 0 when
     * the recording went stale (scratch it used was reallocated since), and
     * the caller then issues the ops itself.  graph_free releases it. */
    ferry_status (*graph_begin)(ferry_backend *backend);
    ferry_status (*graph_end)(ferry_backend *backend, void **out_graph);
    ferry_status (*graph_launch)(ferry_backend *backend, void *graph, int *out_replayed);
    void (*graph_free)(ferry_backend *backend, void *graph);

    /* ---- optional: next tokens chosen on the device (NULL: the runtime
     * downloads the logits and picks on the host) ---- */

    /* out_tokens[r] = the token rules[r] picks from logits row r ([n, vocab]
     * f32), as include/ferry.h describes at ferry_forward_next (the host's
     * runtime/sampler.c: ferry_sampler_pick_rule), up to float rounding where
     * a draw falls on the boundary between two tokens.  out_tokens, logits and
     * rules are backend memory; n rows, any vocab >= 1. */
    ferry_status (*sample)(ferry_backend *backend, int32_t *out_tokens, const float *logits,
                           const ferry_sample_rule *rules, int n, int vocab);

    /* ---- optional fused ops (NULL: the runtime issues the plain ops) ---- */

    /* outs[i][t] = x[t] W_i^T (+ biases[i]) for 1..3 matrices of `cols`
     * columns sharing x (Q, K, V), as matmul does each; biases may be NULL.
     * silu_pair (2 matrices of equal rows, gate and up): outs[0][t] =
     * silu(x W_0^T) * (x W_1^T) as silu_mul computes it; outs[1] is scratch
     * the backend may overwrite.  norm (NULL: none): x is RMS-normalised
     * first (the layer's input norm folded into its projections); x itself
     * is left as it was, and norm->scratch may be overwritten. */
    ferry_status (*matmul_multi)(ferry_backend *backend, int n_matrices, float *const *outs,
                                 const float *x, const ferry_fused_norm *norm,
                                 const void *const *weights, const float *const *biases,
                                 const int *rows, ferry_dtype dtype, int n, int cols,
                                 int silu_pair);

    /* rope, then kv_store of the rotated k and v, as one op: q and k are
     * rotated in place and the cache holds rotated k and v at each token's
     * (slot, position). */
    ferry_status (*rope_kv_store)(ferry_backend *backend, float *q, float *k, const float *v,
                                  ferry_kv_layer *cache, const ferry_token_batch *batch,
                                  const float *inv_freq, ferry_attention_shape shape);

    /* matmul_multi of Q, K and V (weights and biases [3], norm as there),
     * then rope_kv_store, as one op: q [n, n_heads * head_dim] gets the
     * rotated queries and the cache the rotated k and v at each token's
     * (slot, position); k and v ([n, n_kv_heads * head_dim]) are scratch
     * the backend may leave as it likes.  The fusion DeepSpeed-style
     * kernels do in the QKV projection's epilogue. */
    ferry_status (*qkv_rope_store)(ferry_backend *backend, float *q, float *k, float *v,
                                   const float *x, const ferry_fused_norm *norm,
                                   const void *const *weights, const float *const *biases,
                                   ferry_dtype dtype, int n, int cols, ferry_kv_layer *cache,
                                   const ferry_token_batch *batch, const float *inv_freq,
                                   ferry_attention_shape shape);

    /* ---- optional whole blocks of a layer (NULL: the runtime issues the
     * ops above); a backend hands the intermediate from one kernel to the
     * next already rounded to the weight dtype, as its matmul rounds x for
     * the tensor cores anyway ---- */

    /* The attention block's output side, in place on the residual stream
     * x [n, hidden]: x[t] += attention(q, cache)[t] Wo^T, as attention into
     * `scratch` ([n, n_heads * head_dim], left as the backend likes) then
     * matmul (accumulate) of wo ([hidden, n_heads * head_dim], dtype) give
     * it, up to rounding the attention output to dtype.  next_norm (NULL:
     * none): the norm the next op applies to x, which the backend may
     * prepare from the rows it writes (that op's norm then says
     * prepared). */
    ferry_status (*attention_out)(ferry_backend *backend, float *x, float *scratch,
                                  const float *q, const ferry_kv_layer *cache,
                                  const ferry_token_batch *batch, ferry_attention_shape shape,
                                  const void *wo, ferry_dtype dtype, int hidden,
                                  const ferry_fused_norm *next_norm);

    /* The MLP block (SwiGLU), in place on x [n, hidden]: with h = x[t]
     * RMS-normalised by norm, x[t] += (silu(h Wg^T) * (h Wu^T)) Wd^T, as
     * matmul_multi (silu_pair, norm) then matmul (accumulate) give it, up to
     * rounding the product to dtype.  weights: gate, up [inter, hidden] and
     * down [hidden, inter] in dtype; gate and up ([n, inter]) and
     * norm->scratch are scratch.  next_norm as attention_out's (the next
     * layer's input norm). */
    ferry_status (*mlp)(ferry_backend *backend, float *x, const ferry_fused_norm *norm,
                        const void *const *weights, ferry_dtype dtype, int n, int hidden,
                        int inter, float *gate, float *up, const ferry_fused_norm *next_norm);
} ferry_backend_ops;

struct ferry_backend {
    const ferry_backend_ops *ops;
    void *impl;                 /* the backend's own state */
    char label[16];             /* "cpu", "cuda:0" */
};

/* CPU backend with n_threads workers (0: one per online core). */
ferry_status ferry_backend_cpu_new(int n_threads, ferry_backend **out);

/* CUDA backend on device `device`; FERRY_ERR_UNAVAILABLE when ferry was
 * built without CUDA or no usable GPU is present. */
ferry_status ferry_backend_cuda_new(int device, ferry_backend **out);

/* Causal grouped-query attention computed by the host CPU on cpu_backend's
 * threads (a CPU backend), as the attention op defines it, over a cache in
 * host memory (the CPU backend's, or pinned memory a device maps) whose
 * elements are kv_dtype (f16 or f32).  q and out ([n, n_heads, head_dim]
 * f32) and the batch's positions and slots are host memory; tokens is not
 * read.  Float32 accumulation; the result does not depend on the number
 * of threads.  Synchronous: the cache rows must already hold what the
 * device wrote (a download on its stream sees to that). */
ferry_status ferry_host_attention(ferry_backend *cpu_backend, float *out, const float *q,
                                  const ferry_kv_layer *cache, ferry_dtype kv_dtype,
                                  const ferry_token_batch *batch, ferry_attention_shape shape);

/* Parse "cpu" / "cuda" / "cuda:N" / "auto" (NULL = auto) and make it. */
ferry_status ferry_backend_new(const char *spec, int n_threads, ferry_backend **out);

/* Does this build have the CUDA backend, and is a GPU present? */
int ferry_cuda_available(void);

void ferry_backend_free(ferry_backend *backend);

#endif /* FERRY_KERNELS_OPS_H */
