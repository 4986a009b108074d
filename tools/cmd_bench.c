/*
 * cmd_bench.c — `ferry bench`: prefill and decode throughput of a model at
 * several batch sizes, with the bytes each decode step must read (weights
 * and KV cache), the bandwidth that achieves and its ratio to a
 * device-to-device copy measured in the same run, and the GPU memory in
 * use.  --kernels adds the matmul op alone on the model's shapes, the
 * attention op alone on prefill chunks and on decode steps, and the sample
 * op alone.  Drives ferry_forward_next like any caller (greedy: the argmax
 * is taken where the logits are, so a step's time holds no logits
 * download); reads the model's config and backend through
 * runtime/engine.h for the byte counts and the measurement hooks.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "offload/offload.h"
#include "runtime/engine.h"
#include "tools/cli.h"
#include "tools/model_flags.h"
#include "tools/options.h"

static const char *const command = "bench";

enum { COPY_PROBE_BYTES = 1 << 30, MAX_BATCHES = 16 };

static void print_help(FILE *out) {
    fprintf(out,
            "usage: ferry bench --model M [--batch 1,16,64] [--prompt-len 128] [--gen-len 32]\n"
            "                   [--backend B] [--threads N] [--kernels] [--json]\n"
            "                   [--gpu-mem SIZE] [--host-mem SIZE] [--resident-layers N]\n"
            "                   [--slots N]\n\n"
            "For each batch size: prefill of B prompts of --prompt-len random tokens, then\n"
            "--gen-len greedy decode steps, after an untimed warm-up (a prefill and, for a\n"
            "resident model, two decode steps, which record the step's CUDA graph).  Prints\n"
            "prefill and decode tokens/s, the median step time, the bytes a decode step\n"
            "reads (weights, and the KV cache at the mean context), the bandwidth that is,\n"
            "its ratio to a device-to-device copy measured in the same run, and the device\n"
            "memory in use.\n\n"
            "  --model M        the .ferry file, or synth:PRESET[:DTYPE[:SEED]] for the\n"
            "                   weights ferry synth would write, generated in memory (no\n"
            "                   file: with --gpu-mem, --host-mem must hold every streamed layer)\n"
            "  --batch LIST     batch sizes, comma-separated (default 1,16,64)\n"
            "  --prompt-len N   prompt tokens per sequence (default 128)\n"
            "  --gen-len N      decode steps (default 32)\n"
            "  --backend B      cpu, cuda, cuda:N or auto (default auto)\n"
            "  --threads N      CPU worker threads (default 0: one per core)\n"
            "  --kernels        also time the matmul op alone on the model's matrix shapes\n"
            "                   for 1..512 tokens (bandwidth and TFLOP/s), the attention\n"
            "                   op on prefill chunks of 512 and 2,048 tokens (TFLOP/s) and\n"
            "                   on decode steps of 1..64 tokens over 160..4,096 keys (GB/s),\n"
            "                   and the sample op (next tokens from logits rows on the device)\n"
            "  --json           one JSON object per line instead of the table\n");
    cli_memory_flags_help(out, NULL, 16);
    fprintf(out, "A streamed run prints the plan first, and each batch's row adds the plan's\n"
                 "predicted step time and tokens/s, and measured / predicted.\n");
}

/* ------------------------------------------------------------- counting */

/* Bytes of weights one decode step of `batch` tokens reads: every matrix
 * and vector once, except the embedding table, of which only the batch's
 * rows are read (unless lm_head shares it). */
static double weight_bytes_per_step(const ferry_model *model, int batch) {
    const ferry_config *config = &model->config;
    double bytes = 0;
    for (int kind = 0; kind < FERRY_TENSOR_KIND_COUNT; kind++) {
        if (!ferry_tensor_present(config, (ferry_tensor_kind)kind)) continue;
        uint64_t rows = 0, cols = 0;
        ferry_tensor_shape(config, (ferry_tensor_kind)kind, &rows, &cols);
        size_t element = ferry_tensor_specs[kind].is_matrix ? ferry_dtype_bytes(model->dtype)
                                                            : sizeof(float);
        int copies = ferry_tensor_specs[kind].is_global ? 1 : config->n_layers;
        if (kind == FERRY_TENSOR_EMBED) rows = config->tie_embeddings ? rows : (uint64_t)batch;
        bytes += (double)rows * (double)cols * (double)element * copies;
    }
    return bytes;
}

/* Bytes of K and V a decode step reads for `batch` sequences of `context`
 * cached tokens each. */
static double kv_bytes_per_step(const ferry_model *model, int batch, double context) {
    const ferry_config *config = &model->config;
    double per_token = 2.0 * config->n_layers * config->n_kv_heads * config->head_dim *
                       (double)ferry_dtype_bytes(model->backend->ops->kv_dtype);
    return per_token * context * batch;
}

/* Multiply-adds x2 of the matrices for one token (attention scores aside). */
static double matrix_flops_per_token(const ferry_model *model) {
    const ferry_config *config = &model->config;
    double q = (double)config->n_heads * config->head_dim;
    double kv = (double)config->n_kv_heads * config->head_dim;
    double hidden = config->hidden_size, inter = config->intermediate_size;
    double per_layer = hidden * (q + 2 * kv) + q * hidden + 3 * hidden * inter;
    return 2.0 * (per_layer * config->n_layers + hidden * config->vocab_size);
}

static uint64_t next_random(uint64_t *state) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ------------------------------------------------------- one batch size */

typedef struct batch_result {
    int batch;
    double prefill_ms, prefill_tok_s, prefill_tflops;
    double decode_tok_s, step_ms_median;
    double weight_bytes, kv_bytes;         /* per decode step */
    double achieved_gbps;                  /* (weights + KV) / median step */
    double used_gib;                       /* device memory in use after the run; <0: unknown */
    double predicted_step_ms, predicted_tok_s; /* the streaming plan's; 0: not streaming */
} batch_result;

static ferry_status bench_batch(ferry_model *model, int batch, int prompt_len, int gen_len,
                                batch_result *result) {
    const int vocab = model->config.vocab_size;
    ferry_status status = FERRY_OK;
    ferry_session *session = NULL;
    int32_t *tokens = NULL, *next = NULL;
    int *n_tokens = NULL;
    ferry_sample_rule *rules = NULL;
    double *step_ms = NULL;
    memset(result, 0, sizeof *result);
    result->batch = batch;
    /* the context the model's plan (stream_context) left room for */
    FERRY_TRY_GOTO(ferry_session_new(model, batch, prompt_len + gen_len + 1, &session));
    FERRY_TRY_GOTO(ferry_malloc((size_t)batch * prompt_len * sizeof *tokens, "bench tokens",
                                (void **)&tokens));
    FERRY_TRY_GOTO(ferry_malloc((size_t)batch * sizeof *n_tokens, "bench", (void **)&n_tokens));
    FERRY_TRY_GOTO(ferry_malloc((size_t)batch * sizeof *rules, "bench", (void **)&rules));
    FERRY_TRY_GOTO(ferry_malloc((size_t)batch * sizeof *next, "bench", (void **)&next));
    FERRY_TRY_GOTO(ferry_malloc((size_t)(gen_len + 1) * sizeof *step_ms, "bench",
                                (void **)&step_ms));
    uint64_t random_state = 0x9e3779b97f4a7c15ull ^ (uint64_t)batch;
    for (size_t i = 0; i < (size_t)batch * prompt_len; i++)
        tokens[i] = (int32_t)(next_random(&random_state) % (uint64_t)vocab);
    for (int i = 0; i < batch; i++) {
        n_tokens[i] = prompt_len;
        rules[i] = (ferry_sample_rule){.greedy = 1};
    }
    ferry_batch prompts = {.n_seqs = batch, .n_tokens = n_tokens, .tokens = tokens};
    /* a decode step (n_tokens all 1): each sequence appends its own greedy
     * token, and the call writes the next over it */
    ferry_batch step = {.n_seqs = batch, .n_tokens = n_tokens, .tokens = next};

    /* warm-up, untimed as HF's first decode step is in bench/hf_decode.py:
     * scratch growth, cuBLAS heuristics, first-touch of pages, and two
     * decode steps, the second of which records the step's graph (a
     * session records a decode shape the second time it sees it); the
     * recording outlives the reset, as an engine keeps it across requests.
     * (A streamed model records no graph, and its steps take seconds.) */
    FERRY_TRY_GOTO(ferry_forward_next(session, &prompts, rules, next));
    for (int i = 0; i < batch; i++) n_tokens[i] = 1;
    const int warm_steps = model->stream || gen_len < 1 ? 0 : 2;
    for (int s = 0; s < warm_steps; s++)
        FERRY_TRY_GOTO(ferry_forward_next(session, &step, rules, next));
    for (int i = 0; i < batch; i++) n_tokens[i] = prompt_len;
    FERRY_TRY_GOTO(ferry_session_reset(session, -1));

    double start_ms = cli_now_ms();
    FERRY_TRY_GOTO(ferry_forward_next(session, &prompts, rules, next));
    result->prefill_ms = cli_now_ms() - start_ms;
    double prompt_tokens = (double)batch * prompt_len;
    result->prefill_tok_s = prompt_tokens / (result->prefill_ms * 1e-3);
    result->prefill_tflops =
        matrix_flops_per_token(model) * prompt_tokens / (result->prefill_ms * 1e-3) / 1e12;

    for (int i = 0; i < batch; i++) n_tokens[i] = 1;
    double decode_total_ms = 0;
    for (int s = 0; s < gen_len; s++) {
        start_ms = cli_now_ms();
        FERRY_TRY_GOTO(ferry_forward_next(session, &step, rules, next));
        step_ms[s] = cli_now_ms() - start_ms;
        decode_total_ms += step_ms[s];
    }
    if (gen_len > 0) {
        result->decode_tok_s = (double)batch * gen_len / (decode_total_ms * 1e-3);
        qsort(step_ms, (size_t)gen_len, sizeof *step_ms, compare_doubles);
        result->step_ms_median = step_ms[gen_len / 2];
        result->weight_bytes = weight_bytes_per_step(model, batch);
        /* the step s attends over prompt_len + s + 1 tokens; take the mean */
        result->kv_bytes = kv_bytes_per_step(model, batch, prompt_len + (gen_len + 1) / 2.0);
        result->achieved_gbps = (result->weight_bytes + result->kv_bytes) /
                                (result->step_ms_median * 1e-3) / 1e9;
    }
    offload_plan plan;
    if (model->stream) {
        /* No prediction (the plan cannot place this batch) leaves the columns out. */
        if (offload_stream_predict(model->stream, batch, prompt_len + gen_len, &plan) == FERRY_OK) {
            result->predicted_step_ms = plan.step_s * 1e3;
            result->predicted_tok_s = plan.tokens_per_s;
            offload_plan_free(&plan);
        }
        ferry_clear_error();
    }
    result->used_gib = -1;
    ferry_backend *backend = model->backend;
    if (backend->ops->memory_info) {
        size_t used = 0, total = 0;
        FERRY_TRY_GOTO(backend->ops->memory_info(backend, &used, &total));
        result->used_gib = (double)used / (double)(1ull << 30);
    }
fail:
    free(step_ms);
    free(rules);
    free(next);
    free(n_tokens);
    free(tokens);
    ferry_session_free(session);
    return status;
}

/* A JSON string literal of `text` (quotes, backslashes and control bytes escaped). */
static void print_json_string(const char *text) {
    putchar('"');
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        if (*c == '"' || *c == '\\') printf("\\%c", *c);
        else if (*c < 0x20) printf("\\u%04x", *c);
        else putchar(*c);
    }
    putchar('"');
}

static void print_batch(const batch_result *r, double copy_gbps, int json) {
    double ratio = copy_gbps > 0 ? r->achieved_gbps / copy_gbps : NAN;
    if (json) {
        printf("{\"kind\":\"batch\",\"batch\":%d,\"prefill_ms\":%.3f,\"prefill_tok_s\":%.1f,"
               "\"prefill_tflops\":%.2f,\"decode_tok_s\":%.1f,\"step_ms\":%.4f,"
               "\"weight_bytes_per_step\":%.0f,\"kv_bytes_per_step\":%.0f,"
               "\"achieved_gbps\":%.1f,\"of_copy\":%.3f,\"gpu_used_gib\":%.2f",
               r->batch, r->prefill_ms, r->prefill_tok_s, r->prefill_tflops, r->decode_tok_s,
               r->step_ms_median, r->weight_bytes, r->kv_bytes, r->achieved_gbps,
               isnan(ratio) ? -1.0 : ratio, r->used_gib);
        if (r->predicted_tok_s > 0)
            printf(",\"predicted_step_ms\":%.4f,\"predicted_tok_s\":%.2f,\"of_predicted\":%.3f",
                   r->predicted_step_ms, r->predicted_tok_s, r->decode_tok_s / r->predicted_tok_s);
        printf("}\n");
        return;
    }
    char ratio_text[16] = "-", used_text[16] = "-";
    if (!isnan(ratio)) snprintf(ratio_text, sizeof ratio_text, "%.0f%%", 100 * ratio);
    if (r->used_gib >= 0) snprintf(used_text, sizeof used_text, "%.1f", r->used_gib);
    printf("%5d %12.0f %8.1f %12.1f %9.3f %9.2f %8.2f %8.0f %7s %8s", r->batch,
           r->prefill_tok_s, r->prefill_tflops, r->decode_tok_s, r->step_ms_median,
           r->weight_bytes / 1e9, r->kv_bytes / 1e9, r->achieved_gbps, ratio_text, used_text);
    if (r->predicted_tok_s > 0)
        printf(" %9.3f %10.2f %7.0f%%", r->predicted_step_ms, r->predicted_tok_s,
               100 * r->decode_tok_s / r->predicted_tok_s);
    printf("\n");
}

/* ------------------------------------------------------ matmul op alone */

typedef struct matrix_shape {
    const char *name;
    int rows, cols;
} matrix_shape;

/* Fill backend memory with random values in [-1, 1) of `dtype` (never
 * zeros: they hide unwritten outputs and can run faster than real data). */
static ferry_status fill_random(ferry_backend *backend, void *dst, ferry_dtype dtype,
                                size_t n_elements, uint64_t seed) {
    enum { CHUNK = 1 << 20 };
    ferry_status status = FERRY_OK;
    float *values = NULL;
    void *converted = NULL;
    uint64_t state = seed | 1;
    size_t element = ferry_dtype_bytes(dtype);
    FERRY_TRY_GOTO(ferry_malloc(CHUNK * sizeof *values, "bench fill", (void **)&values));
    FERRY_TRY_GOTO(ferry_malloc(CHUNK * element, "bench fill", &converted));
    for (size_t done = 0; done < n_elements; done += CHUNK) {
        size_t n = n_elements - done < CHUNK ? n_elements - done : CHUNK;
        for (size_t i = 0; i < n; i++)
            values[i] = (float)((double)(next_random(&state) >> 11) / 4503599627370496.0 - 1.0);
        ferry_convert_dtype(converted, dtype, values, FERRY_DTYPE_F32, n);
        FERRY_TRY_GOTO(backend->ops->upload(backend, (char *)dst + done * element, converted,
                                            n * element));
    }
fail:
    free(converted);
    free(values);
    return status;
}

/* The i-th call of a timed loop. */
typedef ferry_status (*timed_call)(void *context, int i);

/* Mean microseconds per call: 3 warm-up calls, a probe of probe_calls
 * calls that sizes the timed loop to ~30 ms (4..2000 calls), that loop. */
static ferry_status time_calls(ferry_backend *backend, timed_call call, void *context,
                               int probe_calls, double *out_us) {
    const ferry_backend_ops *ops = backend->ops;
    for (int i = 0; i < 3; i++) FERRY_TRY(call(context, i));
    FERRY_TRY(ops->synchronize(backend));
    double start_ms = cli_now_ms();
    for (int i = 0; i < probe_calls; i++) FERRY_TRY(call(context, i));
    FERRY_TRY(ops->synchronize(backend));
    double probe_ms = (cli_now_ms() - start_ms) / probe_calls;
    int repeats = (int)(30.0 / (probe_ms > 1e-3 ? probe_ms : 1e-3));
    if (repeats < 4) repeats = 4;
    if (repeats > 2000) repeats = 2000;
    start_ms = cli_now_ms();
    for (int i = 0; i < repeats; i++) FERRY_TRY(call(context, i));
    FERRY_TRY(ops->synchronize(backend));
    *out_us = (cli_now_ms() - start_ms) * 1e3 / repeats;
    return FERRY_OK;
}

enum { MAX_WEIGHT_COPIES = 16 };

typedef struct matmul_call {
    ferry_backend *backend;
    ferry_dtype dtype;
    matrix_shape shape;
    int n, n_copies;
    void *weights[MAX_WEIGHT_COPIES];
    float *x, *out;
} matmul_call;

static ferry_status call_matmul(void *context, int i) {
    matmul_call *c = context;
    return c->backend->ops->matmul(c->backend, c->out, c->x, c->weights[i % c->n_copies], c->dtype,
                                   NULL, c->n, c->shape.rows, c->shape.cols, 0);
}

/* Time matmul on one shape for each token count: weights rotate through
 * enough copies to overflow the L2 cache, so every call reads HBM. */
static ferry_status bench_matmul_shape(ferry_model *model, matrix_shape shape, double copy_gbps,
                                       int json) {
    static const int token_counts[] = {1, 2, 4, 8, 12, 16, 24, 32, 64, 128, 256, 512};
    enum { MAX_TOKENS = 512, ROTATION_BYTES = 256 << 20 };
    ferry_backend *backend = model->backend;
    const ferry_backend_ops *ops = backend->ops;
    const ferry_dtype dtype = model->dtype;
    ferry_status status = FERRY_OK;
    size_t matrix_bytes = (size_t)shape.rows * shape.cols * ferry_dtype_bytes(dtype);
    matmul_call call = {.backend = backend, .dtype = dtype, .shape = shape};
    call.n_copies = (int)((ROTATION_BYTES + matrix_bytes - 1) / matrix_bytes);
    if (call.n_copies > MAX_WEIGHT_COPIES) call.n_copies = MAX_WEIGHT_COPIES;
    for (int i = 0; i < call.n_copies; i++) {
        FERRY_TRY_GOTO(ops->alloc(backend, matrix_bytes, &call.weights[i]));
        FERRY_TRY_GOTO(fill_random(backend, call.weights[i], dtype,
                                   (size_t)shape.rows * shape.cols, 1000 + (uint64_t)i));
    }
    FERRY_TRY_GOTO(ops->alloc(backend, (size_t)MAX_TOKENS * shape.cols * sizeof(float),
                              (void **)&call.x));
    FERRY_TRY_GOTO(ops->alloc(backend, (size_t)MAX_TOKENS * shape.rows * sizeof(float),
                              (void **)&call.out));
    FERRY_TRY_GOTO(fill_random(backend, call.x, FERRY_DTYPE_F32, (size_t)MAX_TOKENS * shape.cols, 7));
    for (size_t k = 0; k < sizeof token_counts / sizeof token_counts[0]; k++) {
        const int n = token_counts[k];
        call.n = n;
        double call_us = 0;
        FERRY_TRY_GOTO(time_calls(backend, call_matmul, &call, call.n_copies, &call_us));
        double bytes = (double)matrix_bytes + (double)n * (shape.rows + shape.cols) * 4.0;
        double gbps = bytes / (call_us * 1e-6) / 1e9;
        double tflops = 2.0 * n * (double)shape.rows * shape.cols / (call_us * 1e-6) / 1e12;
        double ratio = copy_gbps > 0 ? gbps / copy_gbps : -1;
        if (json)
            printf("{\"kind\":\"matmul\",\"matrix\":\"%s\",\"rows\":%d,\"cols\":%d,"
                   "\"tokens\":%d,\"us\":%.2f,\"gbps\":%.1f,\"of_copy\":%.3f,"
                   "\"tflops\":%.2f}\n",
                   shape.name, shape.rows, shape.cols, n, call_us, gbps, ratio, tflops);
        else
            printf("%-8s %6d x %-6d %6d %10.2f %8.0f %7.0f%% %8.2f\n", shape.name, shape.rows,
                   shape.cols, n, call_us, gbps, ratio > 0 ? 100 * ratio : 0.0, tflops);
        fflush(stdout);
    }
fail:
    for (int i = 0; i < call.n_copies; i++)
        if (call.weights[i]) ops->free(backend, call.weights[i]);
    if (call.x) ops->free(backend, call.x);
    if (call.out) ops->free(backend, call.out);
    return status;
}

/* The matmul op alone on each distinct matrix shape of the model. */
static ferry_status bench_matmul_shapes(ferry_model *model, double copy_gbps, int json) {
    const ferry_config *config = &model->config;
    const int q = config->n_heads * config->head_dim, kv = config->n_kv_heads * config->head_dim;
    const matrix_shape shapes[] = {
        {"wq", q, config->hidden_size},
        {"wk", kv, config->hidden_size},
        {"wo", config->hidden_size, q},
        {"w_up", config->intermediate_size, config->hidden_size},
        {"w_down", config->hidden_size, config->intermediate_size},
        {"lm_head", config->vocab_size, config->hidden_size},
    };
    if (!json)
        printf("\nmatmul op alone (%s weights, f32 activations; bytes = weights + x + out)\n"
               "%-8s %15s %6s %10s %8s %8s %8s\n",
               ferry_dtype_name(model->dtype), "matrix", "rows x cols", "tokens", "us/call",
               "GB/s", "of copy", "TFLOP/s");
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        int repeated = 0;
        for (size_t j = 0; j < i; j++)
            repeated |= shapes[j].rows == shapes[i].rows && shapes[j].cols == shapes[i].cols;
        if (repeated) continue;
        FERRY_TRY(bench_matmul_shape(model, shapes[i], copy_gbps, json));
    }
    return FERRY_OK;
}

/* -------------------------------------------- prefill attention op alone */

typedef struct attention_call {
    ferry_backend *backend;
    float *out, *q;
    ferry_kv_layer cache;
    ferry_token_batch batch;
    ferry_attention_shape shape;
} attention_call;

static ferry_status call_attention(void *context, int i) {
    (void)i;
    attention_call *c = context;
    return c->backend->ops->attention(c->backend, c->out, c->q, &c->cache, &c->batch, c->shape);
}

/* The attention op alone on the model's heads: chunks of a prefill over
 * one sequence (queries at first .. first+n-1 over a cache holding every
 * earlier token).  FLOP/s count the causal work only: 2 x 2 x head_dim
 * multiply-adds per (query, key <= its position, head). */
static ferry_status bench_prefill_attention(ferry_model *model, int json) {
    static const struct { int first, n_tokens; } chunks[] = {{0, 512}, {1536, 512}, {0, 2048}};
    enum { MAX_CONTEXT = 2048 };
    const ferry_config *config = &model->config;
    ferry_backend *backend = model->backend;
    const ferry_backend_ops *ops = backend->ops;
    ferry_status status = FERRY_OK;
    int32_t *host_indices = NULL, *positions = NULL, *slots = NULL;
    attention_call call = {.backend = backend};
    call.shape = (ferry_attention_shape){config->n_heads, config->n_kv_heads, config->head_dim};
    call.cache = (ferry_kv_layer){NULL, NULL, 1, MAX_CONTEXT};
    const size_t q_count = (size_t)MAX_CONTEXT * config->n_heads * config->head_dim;
    const size_t cache_count = (size_t)MAX_CONTEXT * config->n_kv_heads * config->head_dim;
    const size_t cache_bytes = cache_count * ferry_dtype_bytes(ops->kv_dtype);
    FERRY_TRY_GOTO(ops->alloc(backend, q_count * sizeof(float), (void **)&call.q));
    FERRY_TRY_GOTO(ops->alloc(backend, q_count * sizeof(float), (void **)&call.out));
    FERRY_TRY_GOTO(ops->alloc(backend, cache_bytes, &call.cache.k));
    FERRY_TRY_GOTO(ops->alloc(backend, cache_bytes, &call.cache.v));
    FERRY_TRY_GOTO(ops->alloc(backend, MAX_CONTEXT * sizeof(int32_t), (void **)&positions));
    FERRY_TRY_GOTO(ops->alloc(backend, MAX_CONTEXT * sizeof(int32_t), (void **)&slots));
    FERRY_TRY_GOTO(fill_random(backend, call.q, FERRY_DTYPE_F32, q_count, 11));
    FERRY_TRY_GOTO(fill_random(backend, call.cache.k, ops->kv_dtype, cache_count, 12));
    FERRY_TRY_GOTO(fill_random(backend, call.cache.v, ops->kv_dtype, cache_count, 13));
    FERRY_TRY_GOTO(ferry_calloc(MAX_CONTEXT, sizeof *host_indices, "bench", (void **)&host_indices));
    FERRY_TRY_GOTO(ops->upload(backend, slots, host_indices, MAX_CONTEXT * sizeof(int32_t)));
    const char *kernel = getenv("FERRY_CUDA_PREFILL_ATTN");
    if (!json)
        printf("\nprefill attention op alone (%d heads, %d KV heads, head_dim %d, one sequence; "
               "FERRY_CUDA_PREFILL_ATTN=%s)\n%8s %8s %10s %8s\n",
               config->n_heads, config->n_kv_heads, config->head_dim,
               kernel && *kernel ? kernel : "(default)", "tokens", "at", "us/call", "TFLOP/s");
    for (size_t k = 0; k < sizeof chunks / sizeof chunks[0]; k++) {
        const int first = chunks[k].first, n = chunks[k].n_tokens;
        for (int t = 0; t < n; t++) host_indices[t] = first + t;
        FERRY_TRY_GOTO(ops->upload(backend, positions, host_indices, (size_t)n * sizeof(int32_t)));
        call.batch = (ferry_token_batch){n, NULL, positions, slots};
        double call_us = 0;
        FERRY_TRY_GOTO(time_calls(backend, call_attention, &call, 3, &call_us));
        double mean_keys = first + (n + 1) / 2.0; /* query t sees first + t + 1 keys */
        double flops = 4.0 * n * mean_keys * config->head_dim * config->n_heads;
        double tflops = flops / (call_us * 1e-6) / 1e12;
        if (json)
            printf("{\"kind\":\"attention\",\"tokens\":%d,\"first_position\":%d,\"heads\":%d,"
                   "\"kv_heads\":%d,\"head_dim\":%d,\"us\":%.2f,\"tflops\":%.2f}\n",
                   n, first, config->n_heads, config->n_kv_heads, config->head_dim, call_us,
                   tflops);
        else
            printf("%8d %8d %10.2f %8.2f\n", n, first, call_us, tflops);
        fflush(stdout);
    }
fail:
    free(host_indices);
    if (call.q) ops->free(backend, call.q);
    if (call.out) ops->free(backend, call.out);
    if (call.cache.k) ops->free(backend, call.cache.k);
    if (call.cache.v) ops->free(backend, call.cache.v);
    if (positions) ops->free(backend, positions);
    if (slots) ops->free(backend, slots);
    return status;
}

/* ------------------------------------------------------ sample op alone */

typedef struct sample_call {
    ferry_backend *backend;
    int32_t *tokens;
    float *logits;
    ferry_sample_rule *rules;
    int n, vocab;
} sample_call;

static ferry_status call_sample(void *context, int i) {
    (void)i;
    sample_call *c = context;
    return c->backend->ops->sample(c->backend, c->tokens, c->logits, c->rules, c->n, c->vocab);
}

/* The sample op alone on rows of the model's vocabulary, every row under
 * one rule: greedy, temperature only, top-p 0.95, top-k 40 with top-p 0.9.
 * The logits are uniform in [-1, 1): a flat softmax, whose top-p nucleus
 * is most of the vocabulary (the search's slowest case). */
static ferry_status bench_sample(ferry_model *model, int json) {
    static const int row_counts[] = {1, 16, 64, 256};
    static const struct { const char *name; ferry_sample_rule rule; } rules[] = {
        {"greedy", {.greedy = 1}},
        {"temperature", {.uniform = 0.5, .temperature = 1.0f, .top_p = 1.0f}},
        {"top_p", {.uniform = 0.5, .temperature = 0.8f, .top_p = 0.95f}},
        {"top_k_top_p", {.uniform = 0.5, .temperature = 0.8f, .top_p = 0.9f, .top_k = 40}}};
    enum { MAX_ROWS = 256 };
    ferry_backend *backend = model->backend;
    const ferry_backend_ops *ops = backend->ops;
    if (!ops->sample) return FERRY_OK;
    const int vocab = model->config.vocab_size;
    ferry_status status = FERRY_OK;
    sample_call call = {.backend = backend, .vocab = vocab};
    ferry_sample_rule *host_rules = NULL;
    FERRY_TRY_GOTO(ops->alloc(backend, (size_t)MAX_ROWS * vocab * sizeof(float), (void **)&call.logits));
    FERRY_TRY_GOTO(ops->alloc(backend, MAX_ROWS * sizeof *call.rules, (void **)&call.rules));
    FERRY_TRY_GOTO(ops->alloc(backend, MAX_ROWS * sizeof(int32_t), (void **)&call.tokens));
    FERRY_TRY_GOTO(ferry_malloc(MAX_ROWS * sizeof *host_rules, "bench", (void **)&host_rules));
    FERRY_TRY_GOTO(fill_random(backend, call.logits, FERRY_DTYPE_F32, (size_t)MAX_ROWS * vocab, 14));
    if (!json) printf("\nsample op alone (vocab %d, logits uniform in [-1, 1))\n%12s %6s %10s\n",
                      vocab, "rule", "rows", "us/call");
    for (size_t r = 0; r < sizeof rules / sizeof rules[0]; r++) {
        for (int i = 0; i < MAX_ROWS; i++) host_rules[i] = rules[r].rule;
        FERRY_TRY_GOTO(ops->upload(backend, call.rules, host_rules, MAX_ROWS * sizeof *host_rules));
        for (size_t k = 0; k < sizeof row_counts / sizeof row_counts[0]; k++) {
            call.n = row_counts[k];
            double call_us = 0;
            FERRY_TRY_GOTO(time_calls(backend, call_sample, &call, 3, &call_us));
            if (json)
                printf("{\"kind\":\"sample\",\"rule\":\"%s\",\"rows\":%d,\"vocab\":%d,"
                       "\"us\":%.2f}\n", rules[r].name, call.n, vocab, call_us);
            else
                printf("%12s %6d %10.2f\n", rules[r].name, call.n, call_us);
            fflush(stdout);
        }
    }
fail:
    free(host_rules);
    if (call.logits) ops->free(backend, call.logits);
    if (call.rules) ops->free(backend, call.rules);
    if (call.tokens) ops->free(backend, call.tokens);
    return status;
}

/* -------------------------------------------- decode attention op alone */

enum { MAX_CACHE_COPIES = 16 };

typedef struct decode_call {
    ferry_backend *backend;
    float *out, *q;
    ferry_kv_layer caches[MAX_CACHE_COPIES];
    int n_copies;
    ferry_token_batch batch;
    ferry_attention_shape shape;
} decode_call;

static ferry_status call_decode_attention(void *context, int i) {
    decode_call *c = context;
    return c->backend->ops->attention(c->backend, c->out, c->q, &c->caches[i % c->n_copies],
                                      &c->batch, c->shape);
}

/* A decode step's attention op alone on the model's heads: `batch` tokens,
 * each at the last of `context` cached keys of its own slot.  On a GPU
 * (copy_gbps > 0) the caches rotate through enough copies to overflow the
 * L2 cache, so every call reads K and V from HBM; bytes = the K and V rows
 * read. */
static ferry_status bench_decode_shape(ferry_model *model, int batch, int context,
                                       double copy_gbps, int json) {
    enum { ROTATION_BYTES = 256 << 20 };
    const ferry_config *config = &model->config;
    ferry_backend *backend = model->backend;
    const ferry_backend_ops *ops = backend->ops;
    ferry_status status = FERRY_OK;
    int32_t *host_indices = NULL;
    decode_call call = {.backend = backend};
    call.shape = (ferry_attention_shape){config->n_heads, config->n_kv_heads, config->head_dim};
    const size_t q_count = (size_t)batch * config->n_heads * config->head_dim;
    const size_t cache_count = (size_t)batch * context * config->n_kv_heads * config->head_dim;
    const size_t cache_bytes = cache_count * ferry_dtype_bytes(ops->kv_dtype);
    call.n_copies = (int)((ROTATION_BYTES + 2 * cache_bytes - 1) / (2 * cache_bytes));
    if (call.n_copies > MAX_CACHE_COPIES) call.n_copies = MAX_CACHE_COPIES;
    if (copy_gbps <= 0) call.n_copies = 1;
    for (int i = 0; i < call.n_copies; i++) {
        ferry_kv_layer *cache = &call.caches[i];
        *cache = (ferry_kv_layer){NULL, NULL, batch, context};
        FERRY_TRY_GOTO(ops->alloc(backend, cache_bytes, &cache->k));
        FERRY_TRY_GOTO(ops->alloc(backend, cache_bytes, &cache->v));
        FERRY_TRY_GOTO(fill_random(backend, cache->k, ops->kv_dtype, cache_count, 20 + 2 * i));
        FERRY_TRY_GOTO(fill_random(backend, cache->v, ops->kv_dtype, cache_count, 21 + 2 * i));
    }
    call.batch.n_tokens = batch;
    FERRY_TRY_GOTO(ops->alloc(backend, q_count * sizeof(float), (void **)&call.q));
    FERRY_TRY_GOTO(ops->alloc(backend, q_count * sizeof(float), (void **)&call.out));
    FERRY_TRY_GOTO(ops->alloc(backend, batch * sizeof(int32_t), (void **)&call.batch.positions));
    FERRY_TRY_GOTO(ops->alloc(backend, batch * sizeof(int32_t), (void **)&call.batch.slots));
    FERRY_TRY_GOTO(fill_random(backend, call.q, FERRY_DTYPE_F32, q_count, 19));
    FERRY_TRY_GOTO(ferry_calloc(batch, sizeof *host_indices, "bench", (void **)&host_indices));
    for (int t = 0; t < batch; t++) host_indices[t] = context - 1;
    FERRY_TRY_GOTO(ops->upload(backend, (void *)call.batch.positions, host_indices,
                               batch * sizeof(int32_t)));
    for (int t = 0; t < batch; t++) host_indices[t] = t;
    FERRY_TRY_GOTO(ops->upload(backend, (void *)call.batch.slots, host_indices,
                               batch * sizeof(int32_t)));
    double call_us = 0;
    FERRY_TRY_GOTO(time_calls(backend, call_decode_attention, &call, call.n_copies, &call_us));
    double gbps = 2.0 * (double)cache_bytes / (call_us * 1e-6) / 1e9;
    double ratio = copy_gbps > 0 ? gbps / copy_gbps : -1;
    if (json)
        printf("{\"kind\":\"decode_attention\",\"batch\":%d,\"context\":%d,\"us\":%.2f,"
               "\"gbps\":%.1f,\"of_copy\":%.3f}\n",
               batch, context, call_us, gbps, ratio);
    else
        printf("%6d %8d %10.2f %8.0f %7.0f%%\n", batch, context, call_us, gbps,
               ratio > 0 ? 100 * ratio : 0.0);
    fflush(stdout);
fail:
    free(host_indices);
    for (int i = 0; i < call.n_copies; i++) {
        if (call.caches[i].k) ops->free(backend, call.caches[i].k);
        if (call.caches[i].v) ops->free(backend, call.caches[i].v);
    }
    if (call.q) ops->free(backend, call.q);
    if (call.out) ops->free(backend, call.out);
    if (call.batch.positions) ops->free(backend, (void *)call.batch.positions);
    if (call.batch.slots) ops->free(backend, (void *)call.batch.slots);
    return status;
}

/* The decode attention op alone at a few batch sizes and contexts. */
static ferry_status bench_decode_attention(ferry_model *model, double copy_gbps, int json) {
    static const struct { int batch, context; } shapes[] = {
        {1, 160}, {16, 160}, {64, 160}, {16, 1024}, {1, 4096}, {16, 4096},
    };
    const ferry_config *config = &model->config;
    const char *kernel = getenv("FERRY_CUDA_DECODE_ATTN");
    if (!json)
        printf("\ndecode attention op alone (%d heads, %d KV heads, head_dim %d, each token at the "
               "end of its own sequence; FERRY_CUDA_DECODE_ATTN=%s; bytes = K and V read)\n"
               "%6s %8s %10s %8s %8s\n",
               config->n_heads, config->n_kv_heads, config->head_dim,
               kernel && *kernel ? kernel : "(default)", "batch", "context", "us/call", "GB/s",
               "of copy");
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        FERRY_TRY(bench_decode_shape(model, shapes[i].batch, shapes[i].context, copy_gbps, json));
    return FERRY_OK;
}

/* ------------------------------------------------------------- command */

int cmd_bench(int argc, char **argv) {
    const char *model_path = NULL, *batch_text = "1,16,64", *backend_spec = "auto";
    cli_memory_flags memory = CLI_MEMORY_FLAGS_DEFAULT;
    int prompt_len = 128, gen_len = 32, n_threads = 0, json = 0, kernels = 0;
    cli_option options[] = {
        CLI_MEMORY_OPTIONS(&memory),
        CLI_NO_STREAM_OPTION(&memory),
        {"--model", CLI_OPTION_STRING, &model_path, 0, 0, 0},
        {"--batch", CLI_OPTION_STRING, &batch_text, 0, 0, 0},
        {"--prompt-len", CLI_OPTION_INT, &prompt_len, 1, 1 << 20, 0},
        {"--gen-len", CLI_OPTION_INT, &gen_len, 0, 1 << 20, 0},
        {"--backend", CLI_OPTION_STRING, &backend_spec, 0, 0, 0},
        {"--threads", CLI_OPTION_INT, &n_threads, 0, 1024, 0},
        {"--kernels", CLI_OPTION_FLAG, &kernels, 0, 0, 0},
        {"--json", CLI_OPTION_FLAG, &json, 0, 0, 0},
    };
    int parsed = cli_parse_options(command, argc, argv, options,
                                   (int)(sizeof options / sizeof options[0]), print_help);
    if (parsed == CLI_HELP_SHOWN) return CLI_OK;
    if (parsed != CLI_PARSED) return CLI_USAGE;
    if (!model_path) return cli_usage_error(command, "--model is required");
    int32_t *batches = NULL;
    int n_batches = 0;
    if (cli_parse_int_list(command, batch_text, &batches, &n_batches) != 0) return CLI_USAGE;
    for (int i = 0; i < n_batches; i++) {
        if (batches[i] < 1 || batches[i] > 4096 || n_batches > MAX_BATCHES) {
            free(batches);
            return cli_usage_error(command, "--batch '%s': give up to %d sizes in 1..4096",
                                   batch_text, MAX_BATCHES);
        }
    }

    int rc = CLI_FAILED;
    ferry_model *model = NULL;
    ferry_model_options model_options = {.backend = backend_spec, .n_threads = n_threads,
                                         .stream_context = prompt_len + gen_len + 1,
                                         .on_progress = cli_load_progress,
                                         .progress_user = (void *)command};
    if (cli_memory_flags_apply(command, &memory, &model_options) != CLI_OK) {
        rc = CLI_USAGE;
        goto done;
    }
    for (int i = 0; i < n_batches; i++)
        if (batches[i] > model_options.stream_batch) model_options.stream_batch = batches[i];
    ferry_status status = ferry_model_open(model_path, &model_options, &model);
    if (status != FERRY_OK) {
        rc = cli_fail(command, status, "cannot load the model");
        goto done;
    }
    cli_print_placement(command, model, &memory);
    ferry_model_info info;
    ferry_model_get_info(model, &info);
    ferry_backend *backend = model->backend;
    double copy_gbps = 0;
    if (backend->ops->copy_bandwidth) {
        status = backend->ops->copy_bandwidth(backend, COPY_PROBE_BYTES, &copy_gbps);
        if (status != FERRY_OK) {
            rc = cli_fail(command, status, "device-to-device copy probe failed");
            goto done;
        }
    }
    if (json) {
        printf("{\"kind\":\"run\",\"model\":");
        print_json_string(model_path);
        printf(",\"backend\":\"%s\",\"dtype\":\"%s\",\"n_parameters\":%llu,\"n_layers\":%d,"
               "\"hidden\":%d,\"prompt_len\":%d,\"gen_len\":%d,\"copy_gbps\":%.1f}\n",
               info.backend, info.dtype, (unsigned long long)info.n_parameters, info.n_layers,
               info.hidden_size, prompt_len, gen_len, copy_gbps);
    } else {
        printf("ferry bench: %s (%s, %.2f B parameters, %s), prompt %d, %d decode steps\n",
               model_path, info.dtype, (double)info.n_parameters / 1e9, info.backend,
               prompt_len, gen_len);
        if (copy_gbps > 0)
            printf("device-to-device copy: %.0f GB/s (bytes read + written)\n", copy_gbps);
        cli_print_stream_report(stdout, command, model, NULL);
        printf("%5s %12s %8s %12s %9s %9s %8s %8s %7s %8s", "batch", "prefill t/s", "TFLOP/s",
               "decode t/s", "step ms", "weight GB", "KV GB", "GB/s", "of copy", "GPU GiB");
        if (model->stream) printf(" %9s %10s %8s", "plan ms", "plan t/s", "of plan");
        printf("\n");
    }
    fflush(stdout);
    for (int i = 0; i < n_batches; i++) {
        batch_result result;
        status = bench_batch(model, batches[i], prompt_len, gen_len, &result);
        if (status != FERRY_OK) {
            rc = cli_fail(command, status, "batch %d", batches[i]);
            goto done;
        }
        print_batch(&result, copy_gbps, json);
        fflush(stdout);
    }
    /* A streamed model: the plan (where layers and KV caches lived) and
     * what the passes measured. */
    if (!json && model->stream) {
        putchar('\n');
        cli_print_stream_report(stdout, command, model, NULL);
    }
    if (kernels) {
        status = bench_matmul_shapes(model, copy_gbps, json);
        if (status != FERRY_OK) {
            rc = cli_fail(command, status, "matmul kernels");
            goto done;
        }
        status = bench_prefill_attention(model, json);
        if (status != FERRY_OK) {
            rc = cli_fail(command, status, "prefill attention");
            goto done;
        }
        status = bench_sample(model, json);
        if (status != FERRY_OK) {
            rc = cli_fail(command, status, "sample op");
            goto done;
        }
        status = bench_decode_attention(model, copy_gbps, json);
        if (status != FERRY_OK) {
            rc = cli_fail(command, status, "decode attention");
            goto done;
        }
    }
    rc = CLI_OK;
done:
    free(batches);
    ferry_model_close(model);
    return rc;
}
