/*
 * test_offload_stream.c — layer streaming through the whole runtime on
 * the CPU backend: a small random model written as a .ferry file, opened
 * all-resident and with every tier mix (all layers in DRAM, all read from
 * the file, resident + DRAM + file, a budget-chosen mix); the logits of a
 * prompt batch and of a decode step must be bit-identical to the
 * all-resident run; calls of 1..3000 tokens take one weight pass (zig-zag
 * order: every chunk through a layer while it sits in its slot), or one
 * per group of chunks the session carries, bit-identical to resident,
 * and the plan counts the carried tokens.  A file truncated under a
 * streaming model makes ferry_forward fail naming the layer and offset; an
 * impossible budget is refused at open.  A KV cache the GPU budget cannot
 * hold lives in host memory with the same logits, and sessions take the
 * GPU budget's room for KV caches, then the host budget's, then are refused.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "helpers.h"
#include "offload/offload.h"
#include "runtime/engine.h"
#include "runtime/format.h"

static ferry_config small_config(void) {
    ferry_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.architecture, sizeof c.architecture, "llama");
    c.vocab_size = 97;
    c.hidden_size = 64;
    c.intermediate_size = 96;
    c.n_layers = 5;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 16;
    c.max_position = 256;
    c.rms_norm_eps = 1e-5f;
    c.rope_type = FERRY_ROPE_DEFAULT;
    c.rope_theta = 10000.0;
    c.bos_token_id = 1;
    c.n_eos_token_ids = 1;
    c.eos_token_ids[0] = 2;
    return c;
}

/* Write a model with random weights (norms near 1, matrices scaled by
 * 1/sqrt(cols)) and return its path. */
static char *write_model(const char *dir, uint64_t seed) {
    char *path = test_path(dir, "small.ferry");
    ferry_config config = small_config();
    ferry_writer *writer = NULL;
    cr_assert_eq(ferry_writer_open(path, &config, FERRY_DTYPE_F16, &writer), FERRY_OK, "%s",
                 ferry_last_error());
    const ferry_layout *layout = ferry_writer_layout(writer);
    uint64_t rng = seed;
    for (int i = 0; i < layout->n_tensors; i++) {
        const ferry_tensor_entry *entry = &layout->tensors[i];
        size_t n = (size_t)(entry->rows * entry->cols);
        float *values = malloc(n * sizeof *values);
        int is_norm = entry->kind == FERRY_TENSOR_ATTN_NORM || entry->kind == FERRY_TENSOR_MLP_NORM ||
                      entry->kind == FERRY_TENSOR_FINAL_NORM;
        float scale = entry->kind == FERRY_TENSOR_EMBED ? 1.0f : 1.7f / sqrtf((float)entry->cols);
        if (is_norm) test_fill_uniform(&rng, values, n, 0.6f, 1.4f);
        else test_fill_uniform(&rng, values, n, -scale, scale);
        void *stored = malloc(entry->bytes);
        ferry_convert_dtype(stored, entry->dtype, values, FERRY_DTYPE_F32, n);
        cr_assert_eq(ferry_writer_put(writer, entry->layer, entry->kind, stored, entry->bytes),
                     FERRY_OK, "%s", ferry_last_error());
        free(values);
        free(stored);
    }
    cr_assert_eq(ferry_writer_finish(writer), FERRY_OK, "%s", ferry_last_error());
    ferry_writer_free(writer);
    return path;
}

/* Every test gets a fresh model file (fresh seed) in its own directory,
 * removed afterwards. */
static char *dir, *path;

static void model_file_setup(void) {
    dir = test_tempdir();
    path = write_model(dir, test_seed());
}

static void model_file_teardown(void) {
    test_rmtree(dir);
    free(path);
    free(dir);
}

TestSuite(offload_stream, .init = model_file_setup, .fini = model_file_teardown);

/* Bytes of one layer's blob in the file (all layers are the same size). */
static uint64_t layer_blob_bytes(const char *path) {
    ferry_file *file = NULL;
    cr_assert_eq(ferry_file_open(path, &file), FERRY_OK, "%s", ferry_last_error());
    uint64_t bytes = file->layout.extents[1].bytes;
    ferry_file_close(file);
    return bytes;
}

/* The plan's view of the file (f32 KV, as on the CPU backend). */
static offload_model_shape file_shape(const char *path, uint64_t *layer_bytes) {
    ferry_file *file = NULL;
    cr_assert_eq(ferry_file_open(path, &file), FERRY_OK, "%s", ferry_last_error());
    offload_model_shape shape;
    cr_assert_eq(offload_shape_from_layout(&file->layout, sizeof(float), layer_bytes, &shape),
                 FERRY_OK);
    ferry_file_close(file);
    return shape;
}

enum { N_SEQS = 3, VOCAB = 97, SESSION_CONTEXT = 32 };

/* Logits of a ragged prompt batch (every position) followed by one decode
 * step (last positions), concatenated. */
typedef struct run_logits {
    float prompt[(4 + 7 + 2) * VOCAB];
    float decode[N_SEQS * VOCAB];
} run_logits;

static ferry_model *open_model(const char *path, ferry_model_options options) {
    options.backend = "cpu";
    options.n_threads = 2;
    ferry_model *model = NULL;
    cr_assert_eq(ferry_model_open(path, &options, &model), FERRY_OK, "%s", ferry_last_error());
    return model;
}

/* As run_model; *kv_in_host_memory (unless NULL) says where the session's
 * KV cache lived. */
static ferry_status run_model_kv(ferry_model *model, run_logits *out, int *kv_in_host_memory) {
    static const int32_t prompt[] = {1, 5, 9, 33, 1, 40, 41, 42, 43, 44, 96, 1, 70};
    static const int n_tokens[N_SEQS] = {4, 7, 2};
    static const int32_t next[N_SEQS] = {11, 12, 13};
    static const int one[N_SEQS] = {1, 1, 1};
    for (size_t i = 0; i < sizeof out->prompt / sizeof(float); i++) out->prompt[i] = NAN;
    for (size_t i = 0; i < sizeof out->decode / sizeof(float); i++) out->decode[i] = NAN;
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, N_SEQS, SESSION_CONTEXT, &session), FERRY_OK, "%s", ferry_last_error());
    if (kv_in_host_memory) *kv_in_host_memory = session->kv_in_host_memory;
    ferry_batch batch = {N_SEQS, NULL, n_tokens, prompt};
    ferry_status status = ferry_forward(session, &batch, FERRY_LOGITS_ALL, out->prompt,
                                        sizeof out->prompt / sizeof(float));
    if (status == FERRY_OK) {
        ferry_batch step = {N_SEQS, NULL, one, next};
        status = ferry_forward(session, &step, FERRY_LOGITS_LAST, out->decode,
                               sizeof out->decode / sizeof(float));
    }
    ferry_session_free(session);
    return status;
}

static ferry_status run_model(ferry_model *model, run_logits *out) {
    return run_model_kv(model, out, NULL);
}

static void assert_tiers(const ferry_model *model, const char *expected) {
    cr_assert_not_null(model->stream, "the model does not stream");
    const offload_plan *plan = offload_stream_plan(model->stream);
    for (int i = 0; i < plan->n_layers; i++)
        cr_assert_eq("GHD"[plan->layer_tier[i]], expected[i], "layer %d: tier %s, expected %s", i,
                     offload_tier_name(plan->layer_tier[i]), expected);
}

static void assert_identical(const run_logits *got, const run_logits *want, const char *what) {
    for (size_t i = 0; i < sizeof got->prompt / sizeof(float); i++)
        cr_assert(memcmp(&got->prompt[i], &want->prompt[i], sizeof(float)) == 0,
                  "%s: prompt logit %zu is %.9g, all-resident %.9g", what, i, got->prompt[i],
                  want->prompt[i]);
    for (size_t i = 0; i < sizeof got->decode / sizeof(float); i++)
        cr_assert(memcmp(&got->decode[i], &want->decode[i], sizeof(float)) == 0,
                  "%s: decode logit %zu is %.9g, all-resident %.9g", what, i, got->decode[i],
                  want->decode[i]);
}

Test(offload_stream, every_tier_mix_gives_logits_bit_identical_to_all_resident) {
    uint64_t layer = layer_blob_bytes(path);
    static run_logits resident, streamed;
    ferry_model_options plain = {0};
    ferry_model *model = open_model(path, plain);
    cr_assert_null(model->stream);
    char none[8] = "x";
    cr_assert_eq(ferry_model_stream_report(model, none, sizeof none), 0);
    cr_assert_str_empty(none);
    cr_assert_eq(run_model(model, &resident), FERRY_OK, "%s", ferry_last_error());
    ferry_model_close(model);
    for (size_t i = 0; i < sizeof resident.prompt / sizeof(float); i++)
        cr_assert(isfinite(resident.prompt[i]), "all-resident logit %zu is not finite", i);

    struct {
        const char *what;
        int resident_layers, slots;
        uint64_t host_mem_bytes, gpu_mem_bytes;
        const char *tiers;
    } mixes[] = {
        {"every layer in DRAM", 0, 2, 0, 0, "HHHHH"},
        {"every layer in DRAM, one slot", 0, 1, 0, 0, "HHHHH"},
        {"every layer read from the file", 0, 2, 2 * layer, 0, "DDDDD"},
        {"every layer read from the file, three slots", 0, 3, 3 * layer, 0, "DDDDD"},
        {"resident, DRAM and file", 1, 2, 3 * layer, 0, "HDDDG"},
        {"streaming asked, all fit", -1, 2, 0, 0, "GGGGG"},
    };
    for (size_t m = 0; m < sizeof mixes / sizeof mixes[0]; m++) {
        ferry_model_options options = {0};
        options.streaming = 1;
        options.resident_layers = mixes[m].resident_layers;
        options.slots = mixes[m].slots;
        options.host_mem_bytes = mixes[m].host_mem_bytes;
        options.gpu_mem_bytes = mixes[m].gpu_mem_bytes;
        model = open_model(path, options);
        assert_tiers(model, mixes[m].tiers);
        cr_assert_eq(run_model(model, &streamed), FERRY_OK, "%s: %s", mixes[m].what,
                     ferry_last_error());
        assert_identical(&streamed, &resident, mixes[m].what);
        offload_ring_stats stats = offload_stream_stats(model->stream);
        int n_streamed = 0;
        for (const char *t = mixes[m].tiers; *t; t++) n_streamed += *t != 'G';
        /* Every step copies every streamed layer once; the next step's
         * first layers may already sit in their slots (prefetch). */
        uint64_t per_steps = stats.steps * (uint64_t)n_streamed * layer;
        cr_assert(stats.bytes_copied >= per_steps &&
                      stats.bytes_copied <= per_steps + (uint64_t)mixes[m].slots * layer,
                  "%s: %llu bytes copied in %llu steps", mixes[m].what,
                  (unsigned long long)stats.bytes_copied, (unsigned long long)stats.steps);
        cr_assert_geq(stats.steps, 2, "%s: the prompt and the decode step streamed", mixes[m].what);
        char report[4096];
        size_t needed = ferry_model_stream_report(model, report, sizeof report);
        cr_assert(needed > 0 && needed < sizeof report, "%s: report of %zu bytes", mixes[m].what,
                  needed);
        cr_assert(strstr(report, "plan: batch ") && strstr(report, "measured     "),
                  "%s: report:\n%s", mixes[m].what, report);
        ferry_model_close(model);
    }
}

Test(offload_stream, a_gpu_budget_picks_the_mix_and_the_logits_stay_identical) {
    uint64_t layer = layer_blob_bytes(path);
    static run_logits resident, streamed;
    ferry_model_options plain = {0};
    ferry_model *model = open_model(path, plain);
    cr_assert_eq(run_model(model, &resident), FERRY_OK, "%s", ferry_last_error());
    ferry_model_close(model);

    /* The plan's fixed part for this file and the sessions run_model makes
     * (3 sequences of 32 tokens, f32 KV), then room for 2 slots, 2
     * resident layers and half a layer more. */
    uint64_t layer_bytes[5];
    offload_model_shape shape = file_shape(path, layer_bytes);
    const uint64_t tokens = N_SEQS * SESSION_CONTEXT;
    uint64_t fixed = shape.globals_bytes + shape.activation_fixed_bytes +
                     tokens * (shape.activation_bytes_per_token + shape.carried_bytes_per_token) +
                     tokens * 5 * shape.kv_bytes_per_token_layer;
    ferry_model_options options = {0};
    options.streaming = 1;
    options.resident_layers = -1;
    options.stream_batch = N_SEQS;
    options.stream_context = SESSION_CONTEXT;
    options.gpu_mem_bytes = fixed + 4 * layer + layer / 2;
    model = open_model(path, options);
    assert_tiers(model, "HHGHG"); /* 2 of 5 spread: layers 2 and 4 */
    const offload_plan *plan = offload_stream_plan(model->stream);
    cr_assert_leq(plan->gpu_total_bytes, options.gpu_mem_bytes);
    cr_assert_eq(run_model(model, &streamed), FERRY_OK, "%s", ferry_last_error());
    assert_identical(&streamed, &resident, "budget-chosen mix");
    ferry_model_close(model);
}

Test(offload_stream, a_file_truncated_under_a_streaming_model_fails_forward_with_layer_and_offset) {
    uint64_t layer = layer_blob_bytes(path);
    ferry_file *file = NULL;
    cr_assert_eq(ferry_file_open(path, &file), FERRY_OK, "%s", ferry_last_error());
    uint64_t layer3_offset = file->layout.extents[1 + 3].offset;
    ferry_file_close(file);
    ferry_model_options options = {0};
    options.streaming = 1;
    options.resident_layers = 0;
    options.host_mem_bytes = 2 * layer; /* staging only: every layer from the file */
    ferry_model *model = open_model(path, options);
    cr_assert_eq(truncate(path, (off_t)layer3_offset + 64), 0);
    static run_logits out;
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, 1, 16, &session), FERRY_OK);
    int32_t tokens[] = {1, 2, 3};
    int n_tokens[] = {3};
    ferry_batch batch = {1, NULL, n_tokens, tokens};
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_LAST, out.decode, VOCAB), FERRY_ERR_IO);
    char expected[96];
    snprintf(expected, sizeof expected, "layer 3 (file offset %llu, ",
             (unsigned long long)layer3_offset);
    cr_assert(strstr(ferry_last_error(), expected), "message: %s", ferry_last_error());
    cr_assert(strstr(ferry_last_error(), "small.ferry"), "message: %s", ferry_last_error());
    cr_assert_eq(ferry_session_length(session, 0), 0, "a failed forward left tokens cached");
    ferry_session_free(session);
    ferry_model_close(model);
}

Test(offload_stream, an_impossible_budget_is_refused_at_open) {
    ferry_model_options options = {0};
    options.backend = "cpu";
    options.streaming = 1;
    options.resident_layers = -1;
    options.gpu_mem_bytes = 4096;
    ferry_model *model = NULL;
    cr_assert_eq(ferry_model_open(path, &options, &model), FERRY_ERR_NO_MEMORY);
    cr_assert(strstr(ferry_last_error(), "needs at least"), "message: %s", ferry_last_error());
    cr_assert(strstr(ferry_last_error(), "of GPU memory for 2 slots of"), "message: %s",
              ferry_last_error());
    cr_assert_null(model);
}

typedef struct forward_thread {
    ferry_model *model;
    run_logits *out;
    ferry_status status;
} forward_thread;

static void *forward_in_thread(void *arg) {
    forward_thread *job = arg;
    job->status = run_model(job->model, job->out);
    return NULL;
}

Test(offload_stream, sessions_on_two_threads_share_a_streamed_model_and_agree_with_resident) {
    uint64_t layer = layer_blob_bytes(path);
    static run_logits resident, first, second;
    ferry_model_options plain = {0};
    ferry_model *model = open_model(path, plain);
    cr_assert_eq(run_model(model, &resident), FERRY_OK, "%s", ferry_last_error());
    ferry_model_close(model);
    ferry_model_options options = {0};
    options.streaming = 1;
    options.resident_layers = 1;
    options.host_mem_bytes = 3 * layer; /* resident, DRAM and file layers */
    model = open_model(path, options);
    assert_tiers(model, "HDDDG");
    forward_thread jobs[2] = {{model, &first, FERRY_OK}, {model, &second, FERRY_OK}};
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) pthread_create(&threads[i], NULL, forward_in_thread, &jobs[i]);
    for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);
    for (int i = 0; i < 2; i++) cr_assert_eq(jobs[i].status, FERRY_OK, "thread %d failed", i);
    assert_identical(&first, &resident, "thread 0");
    assert_identical(&second, &resident, "thread 1");
    ferry_model_close(model);
}

/* ------------------------------------------------------------ zig-zag */

/* Ragged calls over 4 sequences of 1, 513, 4, 1700, 3000 and 4 tokens (0:
 * the sequence sits the call out): one chunk, just over one, decode steps,
 * several chunks, and a call longer than a small zig-zag limit. */
enum { ZIGZAG_SEQS = 4, ZIGZAG_CONTEXT = 1600, ZIGZAG_CALLS = 6, ZIGZAG_MOST = 3000 };
static const int zigzag_calls[ZIGZAG_CALLS][ZIGZAG_SEQS] = {
    {1, 0, 0, 0}, {200, 311, 0, 2}, {1, 1, 1, 1}, {700, 0, 900, 100}, {600, 1100, 600, 700},
    {1, 1, 1, 1},
};

typedef struct zigzag_run {
    float *logits[ZIGZAG_CALLS];    /* every position of each call */
    uint64_t passes[ZIGZAG_CALLS];  /* weight passes (ring steps) each call took */
} zigzag_run;

/* Run the calls on a fresh session; carried > 0 lowers the session's
 * carried tokens (what a smaller zig-zag limit would give). */
static void run_zigzag_calls(ferry_model *model, int carried, zigzag_run *out) {
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, ZIGZAG_SEQS, ZIGZAG_CONTEXT, &session), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(session->chunk_tokens, FERRY_CHUNK_TOKENS);
    if (carried) {
        cr_assert_leq(carried, session->carried_tokens);
        session->carried_tokens = carried;
    }
    uint64_t rng = 77;
    for (int call = 0; call < ZIGZAG_CALLS; call++) {
        int seq_ids[ZIGZAG_SEQS], n_tokens[ZIGZAG_SEQS], n_seqs = 0, n_total = 0;
        for (int seq = 0; seq < ZIGZAG_SEQS; seq++) {
            if (!zigzag_calls[call][seq]) continue;
            seq_ids[n_seqs] = ZIGZAG_SEQS - 1 - seq; /* slots in another order than sequences */
            n_tokens[n_seqs++] = zigzag_calls[call][seq];
            n_total += zigzag_calls[call][seq];
        }
        int32_t tokens[ZIGZAG_MOST];
        for (int t = 0; t < n_total; t++) tokens[t] = (int32_t)(test_rand_u64(&rng) % VOCAB);
        size_t n_logits = (size_t)n_total * VOCAB;
        out->logits[call] = malloc(n_logits * sizeof(float));
        ferry_batch batch = {n_seqs, seq_ids, n_tokens, tokens};
        uint64_t steps = model->stream ? offload_stream_stats(model->stream).steps : 0;
        cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_ALL, out->logits[call], n_logits),
                     FERRY_OK, "call %d: %s", call, ferry_last_error());
        out->passes[call] =
            model->stream ? offload_stream_stats(model->stream).steps - steps : 0;
    }
    ferry_session_free(session);
}

static void free_zigzag_run(zigzag_run *run) {
    for (int call = 0; call < ZIGZAG_CALLS; call++) free(run->logits[call]);
}

static int zigzag_call_tokens(int call) {
    int n = 0;
    for (int seq = 0; seq < ZIGZAG_SEQS; seq++) n += zigzag_calls[call][seq];
    return n;
}

Test(offload_stream, zigzag_calls_of_1_to_3000_tokens_take_one_pass_and_match_resident_bits) {
    uint64_t layer = layer_blob_bytes(path);
    ferry_model_options plain = {0};
    ferry_model *model = open_model(path, plain);
    zigzag_run resident;
    run_zigzag_calls(model, 0, &resident);
    ferry_model_close(model);

    struct {
        const char *what;
        int resident_layers, slots;
        uint64_t host_mem_bytes;
        const char *tiers;
        int carried;            /* 0: the session's own (every call in one pass) */
    } mixes[] = {
        {"every layer in DRAM, one slot", 0, 1, 0, "HHHHH", 0},
        {"every layer read from the file, three slots", 0, 3, 3 * layer, "DDDDD", 0},
        {"resident, DRAM and file, two slots", 1, 2, 3 * layer, "HDDDG", 0},
        {"DRAM, two slots, passes of 2 chunks", 0, 2, 0, "HHHHH", 2 * FERRY_CHUNK_TOKENS},
        {"resident and DRAM, passes of 1 chunk", 2, 2, 0, "HHGHG",
         FERRY_CHUNK_TOKENS},
    };
    for (size_t m = 0; m < sizeof mixes / sizeof mixes[0]; m++) {
        ferry_model_options options = {0};
        options.streaming = 1;
        options.resident_layers = mixes[m].resident_layers;
        options.slots = mixes[m].slots;
        options.host_mem_bytes = mixes[m].host_mem_bytes;
        model = open_model(path, options);
        assert_tiers(model, mixes[m].tiers);
        zigzag_run streamed;
        run_zigzag_calls(model, mixes[m].carried, &streamed);
        int n_streamed = 0;
        for (const char *t = mixes[m].tiers; *t; t++) n_streamed += *t != 'G';
        offload_ring_stats stats = offload_stream_stats(model->stream);
        uint64_t total_passes = 0;
        for (int call = 0; call < ZIGZAG_CALLS; call++) {
            int n = zigzag_call_tokens(call);
            for (size_t i = 0; i < (size_t)n * VOCAB; i++)
                cr_assert(memcmp(&streamed.logits[call][i], &resident.logits[call][i],
                                 sizeof(float)) == 0,
                          "%s: call %d (%d tokens): logit %zu is %.9g, all-resident %.9g",
                          mixes[m].what, call, n, i, streamed.logits[call][i],
                          resident.logits[call][i]);
            /* One weight pass per call, or per group of whole chunks the
             * carried tokens hold. */
            int chunks = (n + FERRY_CHUNK_TOKENS - 1) / FERRY_CHUNK_TOKENS;
            int per_pass = mixes[m].carried ? mixes[m].carried / FERRY_CHUNK_TOKENS : chunks;
            uint64_t want = (uint64_t)((chunks + per_pass - 1) / per_pass);
            cr_assert_eq(streamed.passes[call], want, "%s: call %d (%d tokens): %llu passes",
                         mixes[m].what, call, n, (unsigned long long)streamed.passes[call]);
            total_passes += want;
        }
        /* Each pass copies every streamed layer once (plus the next pass's
         * prefetched first layers at the end). */
        uint64_t per_passes = total_passes * (uint64_t)n_streamed * layer;
        cr_assert(stats.bytes_copied >= per_passes &&
                      stats.bytes_copied <= per_passes + (uint64_t)mixes[m].slots * layer,
                  "%s: %llu bytes copied in %llu passes", mixes[m].what,
                  (unsigned long long)stats.bytes_copied, (unsigned long long)total_passes);
        free_zigzag_run(&streamed);
        ferry_model_close(model);
    }
    free_zigzag_run(&resident);
}

Test(offload_stream, the_zigzag_limit_bounds_carried_tokens_and_the_plan_counts_them) {
    cr_assert_eq(setenv("FERRY_ZIGZAG_TOKENS", "1000", 1), 0);
    cr_assert_eq(ferry_zigzag_tokens(), 2 * FERRY_CHUNK_TOKENS, "rounded up to whole chunks");
    ferry_model_options options = {0};
    options.streaming = 1;
    options.resident_layers = 0;
    options.stream_batch = ZIGZAG_SEQS;
    options.stream_context = ZIGZAG_CONTEXT;
    ferry_model *model = open_model(path, options);
    /* The plan holds the per-chunk scratch for one chunk and the residual
     * stream of the 1024 carried tokens. */
    uint64_t layer_bytes[5];
    offload_model_shape shape = file_shape(path, layer_bytes);
    cr_assert_eq(shape.max_tokens_carried, 2 * FERRY_CHUNK_TOKENS);
    cr_assert_eq(shape.carried_bytes_per_token, 64 * sizeof(float) + 3 * sizeof(int32_t));
    const offload_plan *plan = offload_stream_plan(model->stream);
    cr_assert_eq(plan->gpu_activation_bytes,
                 shape.activation_fixed_bytes +
                     FERRY_CHUNK_TOKENS * shape.activation_bytes_per_token +
                     2 * FERRY_CHUNK_TOKENS * shape.carried_bytes_per_token);
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, ZIGZAG_SEQS, ZIGZAG_CONTEXT, &session), FERRY_OK);
    cr_assert_eq(session->carried_tokens, 2 * FERRY_CHUNK_TOKENS);
    ferry_session_free(session);
    /* A session too small for the limit carries what one call can hold. */
    cr_assert_eq(ferry_session_new(model, 1, 600, &session), FERRY_OK);
    cr_assert_eq(session->carried_tokens, 2 * FERRY_CHUNK_TOKENS);
    ferry_session_free(session);
    cr_assert_eq(ferry_session_new(model, 2, 100, &session), FERRY_OK);
    cr_assert_eq(session->chunk_tokens, 200);
    cr_assert_eq(session->carried_tokens, 200);
    ferry_session_free(session);
    ferry_model_close(model);
    /* A resident model carries one chunk. */
    ferry_model_options plain = {0};
    model = open_model(path, plain);
    cr_assert_eq(ferry_session_new(model, ZIGZAG_SEQS, ZIGZAG_CONTEXT, &session), FERRY_OK);
    cr_assert_eq(session->carried_tokens, FERRY_CHUNK_TOKENS);
    ferry_session_free(session);
    ferry_model_close(model);
    unsetenv("FERRY_ZIGZAG_TOKENS");
}

/* ------------------------------------------------ where KV caches live */

/* The plan for every layer streamed from DRAM with sessions of N_SEQS x
 * SESSION_CONTEXT and no budgets: its GPU total (globals, activations,
 * slots and the KV cache), the KV cache's bytes and the DRAM layers'. */
typedef struct unlimited_plan {
    uint64_t gpu_total_bytes, kv_bytes, host_layer_bytes;
} unlimited_plan;

static ferry_model_options streamed_options(void) {
    ferry_model_options options = {0};
    options.streaming = 1;
    options.resident_layers = 0;
    options.stream_batch = N_SEQS;
    options.stream_context = SESSION_CONTEXT;
    return options;
}

static unlimited_plan plan_without_budgets(const char *path) {
    ferry_model *model = open_model(path, streamed_options());
    const offload_plan *plan = offload_stream_plan(model->stream);
    cr_assert_eq(plan->kv_tier, OFFLOAD_TIER_GPU);
    unlimited_plan out = {plan->gpu_total_bytes, plan->gpu_kv_bytes, plan->host_layer_bytes};
    /* K + V, f32, of every layer for every token the sessions hold */
    cr_assert_eq(out.kv_bytes, (uint64_t)N_SEQS * SESSION_CONTEXT * 5 * 2 * 2 * 16 * sizeof(float));
    ferry_model_close(model);
    return out;
}

Test(offload_stream, a_kv_cache_the_gpu_budget_cannot_hold_lives_in_host_memory_same_logits) {
    static run_logits resident, streamed;
    ferry_model_options plain = {0};
    ferry_model *model = open_model(path, plain);
    cr_assert_eq(run_model(model, &resident), FERRY_OK, "%s", ferry_last_error());
    ferry_model_close(model);
    unlimited_plan unlimited = plan_without_budgets(path);

    /* The GPU tier, every layer streamed: the same logits. */
    model = open_model(path, streamed_options());
    int kv_in_host = -1;
    cr_assert_eq(run_model_kv(model, &streamed, &kv_in_host), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(kv_in_host, 0, "no budget: the KV cache belongs in device memory");
    assert_identical(&streamed, &resident, "KV cache on the GPU");
    ferry_model_close(model);

    /* Half the KV cache short of GPU memory: the plan puts it in DRAM. */
    ferry_model_options options = streamed_options();
    options.gpu_mem_bytes = unlimited.gpu_total_bytes - unlimited.kv_bytes / 2;
    model = open_model(path, options);
    const offload_plan *plan = offload_stream_plan(model->stream);
    cr_assert_eq(plan->kv_tier, OFFLOAD_TIER_HOST);
    cr_assert_eq(plan->host_kv_bytes, unlimited.kv_bytes);
    cr_assert_eq(plan->gpu_kv_bytes, 0);
    cr_assert_leq(plan->gpu_total_bytes, options.gpu_mem_bytes);
    kv_in_host = -1;
    cr_assert_eq(run_model_kv(model, &streamed, &kv_in_host), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(kv_in_host, 1, "the plan put the KV cache in host memory");
    assert_identical(&streamed, &resident, "KV cache in host memory");
    char report[4096];
    ferry_model_stream_report(model, report, sizeof report);
    char expected[160], size[32];
    snprintf(expected, sizeof expected,
             "kv caches    held now: gpu 0 B, pinned dram 0 B; at most: gpu 0 B, pinned dram %s",
             offload_format_bytes(unlimited.kv_bytes, size, sizeof size));
    cr_assert(strstr(report, expected), "want '%s' in:\n%s", expected, report);
    cr_assert(strstr(report, "kv cache       dram  (pinned host memory"), "report:\n%s", report);
    ferry_model_close(model);
}

Test(offload_stream, sessions_take_the_gpu_room_for_kv_then_host_memory_then_are_refused) {
    unlimited_plan unlimited = plan_without_budgets(path);
    /* GPU: room for exactly one session's KV cache; DRAM: the layers and
     * one more. */
    ferry_model_options options = streamed_options();
    options.gpu_mem_bytes = unlimited.gpu_total_bytes;
    options.host_mem_bytes = unlimited.host_layer_bytes + unlimited.kv_bytes;
    ferry_model *model = open_model(path, options);
    cr_assert_eq(offload_stream_plan(model->stream)->kv_tier, OFFLOAD_TIER_GPU);
    ferry_session *first = NULL, *second = NULL, *third = NULL;
    cr_assert_eq(ferry_session_new(model, N_SEQS, SESSION_CONTEXT, &first), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(first->kv_in_host_memory, 0, "the first fits the GPU");
    cr_assert_eq(ferry_session_new(model, N_SEQS, SESSION_CONTEXT, &second), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(second->kv_in_host_memory, 1, "the second finds the GPU's room taken");
    cr_assert_eq(ferry_session_new(model, 1, 1, &third), FERRY_ERR_NO_MEMORY);
    cr_assert_null(third);
    cr_assert(strstr(ferry_last_error(), "session of batch 1, context 1: a KV cache of "),
              "message: %s", ferry_last_error());
    cr_assert(strstr(ferry_last_error(), "fits neither the GPU budget"), "message: %s",
              ferry_last_error());
    /* Freed caches give their room back. */
    ferry_session_free(first);
    cr_assert_eq(ferry_session_new(model, 1, 1, &third), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(third->kv_in_host_memory, 0);
    ferry_session_free(third);
    ferry_session_free(second);
    ferry_model_close(model);

    /* The plan keeps KV caches in DRAM: one of the planned size fits the
     * host budget, a larger one is refused naming the bytes. */
    options.gpu_mem_bytes = unlimited.gpu_total_bytes - 1;
    model = open_model(path, options);
    cr_assert_eq(offload_stream_plan(model->stream)->kv_tier, OFFLOAD_TIER_HOST);
    cr_assert_eq(ferry_session_new(model, N_SEQS, SESSION_CONTEXT, &first), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(first->kv_in_host_memory, 1);
    ferry_session_free(first);
    first = NULL;
    cr_assert_eq(ferry_session_new(model, N_SEQS, SESSION_CONTEXT + 1, &first),
                 FERRY_ERR_NO_MEMORY);
    char size[32], expected[96];
    uint64_t bigger = unlimited.kv_bytes / SESSION_CONTEXT * (SESSION_CONTEXT + 1);
    snprintf(expected, sizeof expected, "a KV cache of %s needs pinned host memory",
             offload_format_bytes(bigger, size, sizeof size));
    cr_assert(strstr(ferry_last_error(), expected), "want '%s' in: %s", expected,
              ferry_last_error());
    ferry_model_close(model);
}
