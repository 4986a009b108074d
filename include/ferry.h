/*
 * ferry.h — the public C API of ferry, the only header an embedder includes.
 *
 * ferry runs Llama-family language models stored in the .ferry format
 * (made by `ferry convert` or `ferry synth`).  Every function returns a
 * ferry_status; on failure ferry_last_error() gives a message with the
 * context (file, layer, offset) a user needs.  The library never calls
 * exit() or abort().
 *
 * Ownership: objects made by a *_open / *_new call are owned by the caller
 * and released by the matching *_close / *_free.  Pointers passed in are
 * borrowed for the duration of the call only, unless a comment says
 * otherwise.
 *
 * Threads: a ferry_model may be shared by several threads once opened
 * (sessions only read it).  A ferry_session is used by one thread at a
 * time.  ferry_last_error() is per thread.
 */
#ifndef FERRY_H
#define FERRY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FERRY_VERSION_MAJOR 0
#define FERRY_VERSION_MINOR 1
#define FERRY_VERSION_PATCH 0
#define FERRY_VERSION_STRING "0.1.0"

#if defined(__GNUC__)
#define FERRY_API __attribute__((visibility("default")))
#else
#define FERRY_API
#endif

/* Result of every fallible call.  FERRY_OK is zero. */
typedef enum ferry_status {
    FERRY_OK = 0,
    FERRY_ERR_INVALID_ARGUMENT, /* a bad parameter from the caller */
    FERRY_ERR_IO,               /* open/read/write failed */
    FERRY_ERR_FORMAT,           /* a file is corrupt, truncated or malformed */
    FERRY_ERR_CHECKSUM,         /* a tensor's checksum does not match */
    FERRY_ERR_UNSUPPORTED,      /* an architecture or feature ferry lacks */
    FERRY_ERR_NO_MEMORY,        /* host or device allocation failed */
    FERRY_ERR_UNAVAILABLE,      /* backend not built, or no device present */
    FERRY_ERR_BACKEND,          /* a CUDA / cuBLAS call failed */
    FERRY_ERR_CANCELLED,        /* stopped by a callback or a signal */
    FERRY_ERR_CONTEXT_FULL,     /* a sequence would exceed the session's context */
} ferry_status;

/* A short constant name for a status ("FERRY_ERR_IO" -> "I/O error"). */
FERRY_API const char *ferry_status_str(ferry_status status);

/* The message of the last failing call on this thread ("" if none).  The
 * string stays valid until the next ferry call on this thread. */
FERRY_API const char *ferry_last_error(void);

/* The library's version string, for checking header/library agreement. */
FERRY_API const char *ferry_version(void);

/* ---------------------------------------------------------------- models */

typedef struct ferry_model ferry_model;

/* ferry_model_options.streaming: choose at open from the free memory. */
#define FERRY_STREAMING_AUTO (-1)
/* ferry_model_options.streaming: always stream, resident_layers as given,
 * and a budget left 0 is the share auto would take (not "no limit"). */
#define FERRY_STREAMING_AUTO_BUDGETS (-2)

typedef struct ferry_model_options {
    /* "cpu", "cuda", "cuda:N" or "auto" (NULL means "auto": CUDA when a GPU
     * is present and the CUDA backend is built, else the CPU). */
    const char *backend;
    /* CPU worker threads; 0 means one per online core. */
    int n_threads;
    /* Verify every tensor checksum while loading (slower, thorough). */
    int verify_checksums;
    /* Layer streaming.  0 keeps every layer resident in backend memory and
     * ignores the fields below; 1 (any positive value) places layers by
     * the budgets (0: no limit): on the device, in DRAM, or read from the
     * file each forward pass.
     * FERRY_STREAMING_AUTO (what the ferry program uses) reads, once the
     * backend exists, the device's free memory and the host's available
     * memory and keeps a margin of each (see ferry_model_placement); when
     * the whole model with the planned sessions' KV cache and activations
     * (stream_batch x stream_context) fits the device's share it opens
     * resident, exactly as 0 does (the fastest decode: CUDA Graph replay
     * needs every layer resident), else it streams with gpu_mem_bytes the
     * device's share and host_mem_bytes the host's.  A budget given (not 0)
     * replaces the share it names, in the choice too; resident_layers is
     * not read (as many layers stay resident as the budget holds).  The CPU
     * backend has no device memory to stream into: there auto opens
     * resident unless the model does not fit a gpu_mem_bytes given (its
     * figures are not read; an unset budget stays "no limit").
     * ferry_model_get_placement says what was chosen and from what. */
    int streaming;
    uint64_t gpu_mem_bytes;     /* backend memory for layers; 0: no limit (auto: the share) */
    uint64_t host_mem_bytes;    /* pinned DRAM for streamed layers, file staging and KV
                                 * caches the GPU budget cannot hold; 0: no limit (auto:
                                 * the share) */
    int resident_layers;        /* -1: as many as gpu_mem_bytes holds; else exactly so many */
    int slots;                  /* depth of the slot ring that streamed layers pass through; 0: 2 */
    /* The sessions gpu_mem_bytes must leave room for (their KV cache and
     * activations): up to stream_batch sequences of stream_context tokens.
     * 0: batch 1, and the model's context up to 2048 tokens.  When that KV
     * cache does not fit beside the streamed layers' slots, the plan keeps
     * KV caches in pinned host memory, which the GPU reads in place.  A
     * session whose KV cache the GPU budget has no room left for (larger
     * than planned, or beside other sessions) takes host memory within
     * host_mem_bytes; ferry_session_new fails when neither has room. */
    int stream_batch;
    int stream_context;
    /* Called on the opening thread now and then while the weights are read
     * or generated (a large synth: model takes a while): bytes produced so
     * far of about total_bytes.  NULL: no calls. */
    void (*on_progress)(void *user, uint64_t done_bytes, uint64_t total_bytes);
    void *progress_user;
} ferry_model_options;

/* Open a .ferry file.  opts may be NULL for defaults.  Checks the preamble,
 * manifest, tensor table and file size; fails with FERRY_ERR_FORMAT and a
 * message naming the problem on anything inconsistent.
 *
 * A path "synth:PRESET[:DTYPE[:SEED]]" (e.g. "synth:codellama-34b:f16",
 * dtype f16 and seed 0 by default; presets as in `ferry synth --list`)
 * opens a synthetic model with no file: the weights `ferry synth --preset
 * PRESET --dtype DTYPE --seed SEED` would write are generated (on every
 * core) straight into backend memory and, when streaming, into the DRAM
 * tier.  It needs no disk, so it can be larger than the free disk space;
 * what needs the file is refused with FERRY_ERR_UNSUPPORTED: streaming
 * layers from NVMe (give host_mem_bytes room for every streamed layer)
 * and verify_checksums. */
FERRY_API ferry_status ferry_model_open(const char *path, const ferry_model_options *opts,
                                        ferry_model **out_model);
/* Release a model.  All sessions made from it must be freed first.  NULL is
 * allowed. */
FERRY_API void ferry_model_close(ferry_model *model);

typedef struct ferry_model_info {
    char architecture[32];  /* "llama", "mistral", "qwen2" */
    char dtype[8];          /* weight dtype: "f32", "f16", "bf16" */
    char backend[16];       /* backend in use: "cpu", "cuda:0", ... */
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int max_position;       /* the model's trained context length */
    int bos_token_id;       /* -1 if none */
    int n_eos_token_ids;
    int eos_token_ids[8];
    uint64_t n_parameters;
} ferry_model_info;

FERRY_API ferry_status ferry_model_get_info(const ferry_model *model, ferry_model_info *out_info);

/* How ferry_model_open placed the layers and, under FERRY_STREAMING_AUTO,
 * the figures it chose from.  The margins kept back: on the device
 * max(5% of the free memory, 512 MiB), for what the CUDA context, cuBLAS
 * workspaces, CUDA Graphs and lazily loaded kernels take after the open,
 * allocation rounding, and other processes; on the host max(10% of the
 * available memory, 2 GiB), because pinned memory cannot be swapped out:
 * the operating system, the page cache the file's reads go through and
 * this process's unpinned buffers must still fit beside it.  The
 * environment variable FERRY_FAKE_FREE_MEMORY="GPU,HOST" (sizes such as
 * 6G,64G), optionally followed by ",GPU_MARGIN,HOST_MARGIN" (0: the usual
 * margin), replaces the figures read (tests, or trying a smaller machine);
 * on the CPU backend it makes auto choose as on a GPU. */
typedef struct ferry_model_placement {
    int streaming;              /* 1: layers stream (ferry_model_stream_report); 0: all resident */
    int chosen_by_auto;         /* 1: FERRY_STREAMING_AUTO chose, from the figures below */
    int figures_faked;          /* 1: the figures came from FERRY_FAKE_FREE_MEMORY */
    uint64_t gpu_free_bytes;    /* device memory free once the backend started; 0: not read */
    uint64_t host_available_bytes; /* host memory available (MemAvailable); 0: not read */
    uint64_t gpu_margin_bytes, host_margin_bytes; /* kept back from the two figures */
    /* Device memory the whole model resident needs: weights, and the KV
     * cache and activations of stream_batch x stream_context tokens. */
    uint64_t resident_bytes;
    uint64_t gpu_mem_bytes, host_mem_bytes; /* the budgets streaming runs within; 0: no limit */
} ferry_model_placement;

FERRY_API ferry_status ferry_model_get_placement(const ferry_model *model,
                                                 ferry_model_placement *out_placement);

/* For a model opened with streaming: the placement plan (tier of each
 * layer, memory, bytes per pass, predicted time) and what was measured so
 * far (passes, time per pass, bytes copied, effective host->device GB/s),
 * as text into buf (always NUL-terminated).  Returns the length the full
 * text needs; 0 when the model does not stream. */
FERRY_API size_t ferry_model_stream_report(const ferry_model *model, char *buf, size_t size);

/* -------------------------------------------------------------- sessions */

/* A session holds the KV cache for up to max_batch sequences of up to
 * max_context tokens each, plus scratch buffers.  Sequence slots are
 * numbered 0 .. max_batch-1 and start empty. */
typedef struct ferry_session ferry_session;

FERRY_API ferry_status ferry_session_new(ferry_model *model, int max_batch, int max_context,
                                         ferry_session **out_session);
FERRY_API void ferry_session_free(ferry_session *session);

/* Forget the tokens of one sequence slot (seq < 0: every slot). */
FERRY_API ferry_status ferry_session_reset(ferry_session *session, int seq);

/* Number of tokens currently cached for a slot (-1 if session is NULL or
 * seq is not a slot). */
FERRY_API int ferry_session_length(const ferry_session *session, int seq);

/* A ragged batch: sequence i appends n_tokens[i] tokens (taken in order
 * from tokens[]) to slot seq_ids[i] (seq_ids NULL means slot i).  A slot
 * may appear at most once per call. */
typedef struct ferry_batch {
    int n_seqs;
    const int *seq_ids;
    const int *n_tokens;
    const int32_t *tokens;
} ferry_batch;

typedef enum ferry_logits_mode {
    FERRY_LOGITS_LAST = 0, /* one row per sequence: its last position */
    FERRY_LOGITS_ALL = 1,  /* one row per input token */
} ferry_logits_mode;

/* Run the model over a batch, extending each sequence's KV cache, and write
 * float32 logits (rows of vocab_size) to logits[0 .. logits_capacity).  On
 * failure no slot's cache is changed. */
FERRY_API ferry_status ferry_forward(ferry_session *session, const ferry_batch *batch,
                                     ferry_logits_mode mode, float *logits,
                                     size_t logits_capacity);

/* ------------------------------------------------------------ generation */

typedef struct ferry_sampling {
    int greedy;          /* nonzero: argmax, ignore the rest */
    float temperature;   /* > 0; 1.0 leaves logits as they are */
    int top_k;           /* 0: no limit */
    float top_p;         /* 1.0: no limit */
    uint64_t seed;       /* same seed, same model, same prompt: same tokens */
} ferry_sampling;

/* Defaults: temperature 1, top_k 0, top_p 1, seed 0, not greedy. */
FERRY_API ferry_sampling ferry_sampling_default(void);

/* One sequence's rule for choosing its next token (ferry_forward_next). */
typedef struct ferry_sample_rule {
    double uniform;      /* the draw in [0, 1) that picks the token; not read when greedy */
    float temperature;   /* > 0 */
    float top_p;         /* (0, 1]; 1: no limit */
    int32_t top_k;       /* >= 0; 0: no limit */
    int32_t greedy;      /* nonzero: argmax, the rest not read */
} ferry_sample_rule;

/* The rule for a sequence's next token under `sampling`: its settings,
 * and a uniform drawn from *rng_state (splitmix64; start it at
 * sampling->seed), which advances as ferry_generate's generator does for
 * one token.  Greedy draws nothing and leaves *rng_state as it is.  So a
 * sequence stepped with a rule drawn before each ferry_forward_next gets
 * the tokens ferry_generate would. */
FERRY_API ferry_sample_rule ferry_sample_rule_draw(const ferry_sampling *sampling,
                                                   uint64_t *rng_state);

/* ferry_forward with FERRY_LOGITS_LAST, then each sequence's next token
 * chosen from its last position's logits by rules[i] (one per sequence of
 * the batch, host memory) into out_tokens[i]; the logits never leave the
 * backend, only the token ids come back (a GPU picks on the device).
 * The choice: greedy: the largest logit (the lowest id among ties; NaN
 * never wins).  Else the weights softmax(logits / temperature) (NaN:
 * weight 0); with top_k 0 and top_p 1 the token where the cumulative
 * weight in id order first exceeds uniform x the total; else the top_k
 * most probable tokens (ties: lower id first), of those the shortest
 * prefix (most probable first) whose share of their weight reaches top_p,
 * and the token where the cumulative weight along that order first
 * exceeds uniform x the prefix's weight.  A backend that picks on the
 * device sums in its own order: where the draw falls within float
 * rounding of the boundary between two tokens it may take the neighbour
 * (the CPU backend picks exactly as this says).  out_tokens may be
 * batch->tokens (written after every token is read).  Bad rules fail with
 * FERRY_ERR_INVALID_ARGUMENT before any work; on failure no slot's cache
 * is changed. */
FERRY_API ferry_status ferry_forward_next(ferry_session *session, const ferry_batch *batch,
                                          const ferry_sample_rule *rules, int32_t *out_tokens);

/* Called for each generated token; return nonzero to stop generation. */
typedef int (*ferry_token_callback)(void *user, int32_t token);

typedef struct ferry_generate_params {
    ferry_sampling sampling;
    int max_new_tokens;
    int ignore_eos;               /* nonzero: keep going past EOS tokens */
    ferry_token_callback on_token; /* may be NULL */
    void *user;
} ferry_generate_params;

/* Reset slot 0, feed the prompt, then sample up to max_new_tokens tokens
 * into out_tokens (capacity out_capacity).  *n_out receives the count.
 * Stops early at an EOS token (included in the output) unless ignore_eos.
 * A callback that returns nonzero also ends generation normally: FERRY_OK,
 * with the token it was shown counted in *n_out.  out_capacity must be at
 * least max_new_tokens, and the session's max_context must hold the prompt
 * plus every new token but the last (else FERRY_ERR_CONTEXT_FULL, before
 * any work).  max_new_tokens 0 still runs and checks the prompt. */
FERRY_API ferry_status ferry_generate(ferry_session *session, const int32_t *prompt,
                                      int n_prompt, const ferry_generate_params *params,
                                      int32_t *out_tokens, int out_capacity, int *n_out);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_H */
