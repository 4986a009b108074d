/*
 * engine.h — the runtime's internal view of a model (its config and its
 * weights in backend memory) and of a session (KV cache, slot lengths and
 * the scratch for one chunk of tokens).  model.c builds models, session.c
 * sessions, forward.c runs the layers, generate.c drives generation.
 * Tests and tools may include it; embedders see only include/ferry.h.
 */
#ifndef FERRY_RUNTIME_ENGINE_H
#define FERRY_RUNTIME_ENGINE_H

#include "kernels/ops.h"
#include "runtime/config.h"
#include "runtime/sampler.h"

/* Longest run of tokens pushed through the layers at once: longer prompts
 * are processed in chunks, so activation scratch stays bounded. */
enum { FERRY_CHUNK_TOKENS = 512 };
/* Rows of logits computed per lm_head pass (bounds the logits scratch). */
enum { FERRY_LOGITS_ROWS_PER_PASS = 32 };
/* Most tokens one pass of a streamed model's layers carries (FlexGen's
 * zig-zag order: every chunk of a call goes through a layer while its
 * weights sit in a slot, so a call costs one weight transfer however many
 * chunks it has).  Each carried token keeps its residual stream between
 * layers: 8192 x hidden 4096 x 4 B = 128 MiB for a 7B model.  A call with
 * more tokens runs as several passes. */
enum { FERRY_ZIGZAG_TOKENS = 8192 };

/* The zig-zag limit in use: FERRY_ZIGZAG_TOKENS, or the environment
 * variable of that name, rounded up to whole chunks of FERRY_CHUNK_TOKENS. */
int ferry_zigzag_tokens(void);

/* Where a session attends over its KV cache (FERRY_ATTENTION). */
typedef enum ferry_attention_place {
    FERRY_ATTENTION_AUTO = 0,   /* on the host when the cache is host memory a device maps */
    FERRY_ATTENTION_HOST,       /* on the host whenever the cache is host memory (the CPU too) */
    FERRY_ATTENTION_DEVICE,     /* the backend's attention op, always */
} ferry_attention_place;

/* FERRY_ATTENTION=auto|host|device (unset or empty: auto); any other value
 * fails with FERRY_ERR_INVALID_ARGUMENT naming it. */
ferry_status ferry_attention_place_from_env(ferry_attention_place *out);

/* Does a session on `backend` whose KV cache is (kv_in_host_memory) or is
 * not in the host memory a device maps attend on the host?  auto: when it
 * is; host: also on a backend whose memory is all host memory (the CPU);
 * device: never.  Fails on a bad FERRY_ATTENTION. */
ferry_status ferry_attention_on_host(const ferry_backend *backend, int kv_in_host_memory,
                                     int *out);

struct ferry_model {
    ferry_config config;
    ferry_dtype dtype;          /* dtype of the weight matrices; vectors are f32 */
    ferry_backend *backend;     /* owned */
    float *inv_freq;            /* backend memory, [head_dim / 2] RoPE frequencies */
    /* Backend memory per tensor, indexed by tensor_slot(layer, kind);
     * NULL where the model lacks the tensor. */
    void **tensors;
    uint64_t weight_bytes;
    /* Layers streamed through offload/ (NULL: every layer is in tensors). */
    struct offload_stream *stream;
    ferry_model_placement placement; /* how it was opened (runtime/placement.c) */
};

/* Index of (layer, kind) in model->tensors; layer -1 is the globals. */
static inline size_t ferry_model_tensor_slot(int layer, ferry_tensor_kind kind) {
    return (size_t)(layer + 1) * FERRY_TENSOR_KIND_COUNT + (size_t)kind;
}

static inline const void *ferry_model_tensor(const ferry_model *model, int layer,
                                             ferry_tensor_kind kind) {
    return model->tensors[ferry_model_tensor_slot(layer, kind)];
}

/* placement.c: resolve opts->streaming for a model whose backend exists:
 * fills model->placement, and *out_stream with the options to open the
 * stream with when model->placement.streaming is 1.  Under
 * FERRY_STREAMING_AUTO reads the free memory and may fail with the plan's
 * "needs at least" error when not even a streamed model fits. */
struct ferry_layout;
struct offload_stream_options;
ferry_status ferry_model_choose_placement(ferry_model *model, const struct ferry_layout *layout,
                                          const ferry_model_options *opts,
                                          struct offload_stream_options *out_stream);

/* Is token one of the config's end-of-sequence ids? */
static inline int ferry_is_eos(const ferry_config *config, int32_t token) {
    for (int i = 0; i < config->n_eos_token_ids; i++)
        if (config->eos_token_ids[i] == token) return 1;
    return 0;
}

/* An empty model for (config, dtype) on `backend`, which it takes over
 * (freed with the model, or at once if this fails).  The RoPE table is
 * made here; weights come next through ferry_model_load_tensor. */
ferry_status ferry_model_create(const ferry_config *config, ferry_dtype dtype,
                                ferry_backend *backend, ferry_model **out);

/* Copy one tensor from host memory into backend memory.  host_bytes must be
 * rows x cols x (model dtype for matrices, f32 for vectors). */
ferry_status ferry_model_load_tensor(ferry_model *model, int layer, ferry_tensor_kind kind,
                                     const void *host_data, size_t host_bytes);

/* Every tensor the config calls for is loaded. */
ferry_status ferry_model_check_complete(const ferry_model *model);

/* Activations in backend memory: the residual stream and batch
 * description of every token a pass through the layers carries, and the
 * rest for one chunk of tokens at a time. */
typedef struct ferry_scratch {
    float *residuals;           /* [carried, hidden]: every carried token's residual stream */
    float *residual;            /* x: [chunk, hidden], the running chunk's rows of residuals */
    float *normed;              /* [chunk, hidden]: norm output (and lm_head input) */
    float *q;                   /* [chunk, n_heads * head_dim] */
    float *k, *v;               /* [chunk, n_kv_heads * head_dim] */
    float *attention;           /* [chunk, n_heads * head_dim] */
    float *gate, *up;           /* [chunk, intermediate] */
    float *logits;              /* [FERRY_LOGITS_ROWS_PER_PASS, vocab] */
    int32_t *tokens, *positions, *slots;   /* [carried] per-token batch description */
    /* ferry_forward_next on a backend with a sample op: each sequence's
     * rule and picked token, [max_batch] each (NULL without the op). */
    ferry_sample_rule *rules;
    int32_t *sampled;
} ferry_scratch;

struct ferry_session {
    ferry_model *model;
    int max_batch;
    int max_context;
    int *lengths;               /* host, [max_batch]: tokens cached per slot */
    int *slot_owner;            /* host, [max_batch]: duplicate-slot check scratch */
    ferry_kv_layer *kv;         /* [n_layers]: K and V in backend memory, or mapped host memory */
    int kv_in_host_memory;      /* the caches are pinned host memory the device maps */
    uint64_t kv_held_bytes;     /* K + V of every layer, held in the stream's KV budget (0: none) */
    /* Attention on the host (FlexGen): the cache is host memory and
     * FERRY_ATTENTION asks for it.  q comes down into host_q, the host's
     * threads attend over kv, host_attention goes up (forward.c). */
    int attention_on_host;
    ferry_backend *host_threads;  /* a CPU backend for its threads; owned unless == model's */
    float *host_q, *host_attention; /* [chunk_tokens, n_heads * head_dim], pinned where it can */
    int chunk_tokens;           /* capacity of the per-chunk scratch, in tokens */
    /* Tokens one pass through the layers carries, in whole chunks:
     * chunk_tokens for a resident model, up to ferry_zigzag_tokens() for a
     * streamed one (see forward.c). */
    int carried_tokens;
    ferry_scratch scratch;
    /* Host staging for the carried tokens' batch description, [carried_tokens] each. */
    int32_t *host_tokens, *host_positions, *host_slots;
    int *host_output_rows;      /* row of the caller's logits for the token, or -1 */
    /* ferry_forward_next: the picked tokens' host copy, [max_batch]; and
     * where the backend has no sample op, one logits row downloaded at a
     * time ([vocab]) and the host sampler that picks from it. */
    int32_t *host_sampled;
    float *host_logits;
    ferry_sampler host_sampler;
    /* Decode-shaped chunks (every token makes a logits row, one lm_head
     * pass) recorded as backend graphs, by chunk size; see forward.c. */
    void *graphs[FERRY_LOGITS_ROWS_PER_PASS + 1];
    unsigned char graph_seen[FERRY_LOGITS_ROWS_PER_PASS + 1]; /* ran once directly */
    int graphs_off;             /* FERRY_GRAPHS=0, or a recording failed */
};

#endif /* FERRY_RUNTIME_ENGINE_H */
