/*
 * test_cuda_engine.c — the whole engine on the CUDA backend: logits of
 * synthesised models against the CPU backend (ragged batches, several
 * slots, prefill then decode steps), ferry_forward_next's tokens picked
 * on the device against ferry_forward and the host sampler (resident,
 * recorded decode steps, streamed), and logits and greedy tokens of the
 * HF fixtures against what transformers computed.  Skips (and says so)
 * without a CUDA GPU.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward_next_fixture.h"
#include "helpers.h"
#include "runtime/engine.h"

#define FIXTURES_DIR FERRY_SOURCE_DIR "/tests/fixtures/hf"

static char *dir;

static void setup(void) { dir = test_tempdir(); }
static void teardown(void) {
    test_rmtree(dir);
    free(dir);
}

TestSuite(cuda_engine, .init = setup, .fini = teardown, .timeout = 300);

#define NEED_GPU()                                                                           \
    do {                                                                                     \
        if (!ferry_cuda_available())                                                         \
            cr_skip_test("no CUDA GPU: this build or machine cannot run the CUDA backend");  \
    } while (0)

static void run_cli(const char *arguments) {
    char command[4096];
    char *stderr_path = test_path(dir, "stderr.txt");
    snprintf(command, sizeof command, "'%s' %s", test_cli(), arguments);
    int exit_status = test_run(command, NULL, stderr_path);
    char *message = test_read_file(stderr_path, NULL);
    cr_assert_eq(exit_status, 0, "ferry %s: exit %d: %s", arguments, exit_status,
                 message ? message : "");
    free(message);
    free(stderr_path);
}

static ferry_model *open_model(const char *path, const char *backend) {
    ferry_model_options options = {.backend = backend, .n_threads = 2};
    ferry_model *model = NULL;
    ferry_status status = ferry_model_open(path, &options, &model);
    cr_assert_eq(status, FERRY_OK, "%s on %s: %s", path, backend, ferry_last_error());
    return model;
}

/* Worst over rows of max|got - want| / max|want|. */
static double worst_row_error(const float *got, const float *want, int n_rows, int vocab) {
    double worst = 0;
    for (int r = 0; r < n_rows; r++) {
        double max_diff = 0, max_ref = 0;
        for (int v = 0; v < vocab; v++) {
            size_t i = (size_t)r * vocab + v;
            cr_assert(isfinite(got[i]), "logit [%d, %d] is %g", r, v, (double)got[i]);
            double diff = fabs((double)got[i] - want[i]);
            if (diff > max_diff) max_diff = diff;
            if (fabs(want[i]) > max_ref) max_ref = fabs(want[i]);
        }
        if (max_diff / max_ref > worst) worst = max_diff / max_ref;
    }
    return worst;
}

/* ------------------------------------------------- CUDA vs the CPU */

enum { N_SEQS = 3, DECODE_STEPS = 4 };

static void forward_both(ferry_session *sessions[2], const ferry_batch *batch,
                         ferry_logits_mode mode, int n_rows, int vocab, const char *what,
                         double bar) {
    size_t n = (size_t)n_rows * vocab;
    float *logits[2];
    for (int b = 0; b < 2; b++) {
        logits[b] = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) logits[b][i] = NAN;
        ferry_status status = ferry_forward(sessions[b], batch, mode, logits[b], n);
        cr_assert_eq(status, FERRY_OK, "%s: %s", what, ferry_last_error());
    }
    double error = worst_row_error(logits[1], logits[0], n_rows, vocab);
    fprintf(stderr, "[cuda-engine] %s: worst row max|diff|/max|ref| = %.3g\n", what, error);
    cr_assert_leq(error, bar, "%s: cuda vs cpu logits differ by %.3g > %.3g", what, error, bar);
    free(logits[0]);
    free(logits[1]);
}

static void check_against_cpu(const char *preset, const char *dtype, double bar) {
    char arguments[1024], *path = test_path(dir, "synth.ferry");
    snprintf(arguments, sizeof arguments, "synth --preset %s --dtype %s --seed 7 '%s'", preset,
             dtype, path);
    run_cli(arguments);
    ferry_model *models[2] = {open_model(path, "cpu"), open_model(path, "cuda")};
    ferry_model_info info;
    ferry_model_get_info(models[0], &info);
    ferry_session *sessions[2];
    for (int b = 0; b < 2; b++)
        cr_assert_eq(ferry_session_new(models[b], N_SEQS, 64, &sessions[b]), FERRY_OK, "%s",
                     ferry_last_error());
    uint64_t rng = test_seed();
    /* ragged prefill: slots 2, 0, 1 with 11, 3 and 20 tokens (>8: the cuBLAS path) */
    int seq_ids[N_SEQS] = {2, 0, 1}, n_tokens[N_SEQS] = {11, 3, 20};
    int32_t tokens[34];
    for (int i = 0; i < 34; i++) tokens[i] = (int32_t)(test_rand_u64(&rng) % (uint64_t)info.vocab_size);
    ferry_batch prefill = {N_SEQS, seq_ids, n_tokens, tokens};
    char what[256];
    snprintf(what, sizeof what, "%s %s prefill", preset, dtype);
    forward_both(sessions, &prefill, FERRY_LOGITS_ALL, 34, info.vocab_size, what, bar);
    /* decode steps of 3, 1 and 2 sequences, one token each (1-2 tokens: the
     * fused matvec kernels, norm folded in; 3: the tensor cores) */
    static const int step_seqs[DECODE_STEPS] = {3, 1, 2, 3};
    int ones[N_SEQS] = {1, 1, 1};
    for (int step = 0; step < DECODE_STEPS; step++) {
        int32_t step_tokens[N_SEQS];
        for (int i = 0; i < N_SEQS; i++)
            step_tokens[i] = (int32_t)(test_rand_u64(&rng) % (uint64_t)info.vocab_size);
        ferry_batch decode = {step_seqs[step], seq_ids, ones, step_tokens};
        snprintf(what, sizeof what, "%s %s decode step %d (%d tokens)", preset, dtype, step,
                 step_seqs[step]);
        forward_both(sessions, &decode, FERRY_LOGITS_LAST, step_seqs[step], info.vocab_size, what,
                     bar);
    }
    /* 16 tokens over the three sequences: the tensor-core path's largest tile */
    int sixteen[N_SEQS] = {6, 5, 5};
    ferry_batch chunk = {N_SEQS, seq_ids, sixteen, tokens};
    snprintf(what, sizeof what, "%s %s 16 tokens", preset, dtype);
    forward_both(sessions, &chunk, FERRY_LOGITS_ALL, 16, info.vocab_size, what, bar);
    for (int b = 0; b < 2; b++) {
        ferry_session_free(sessions[b]);
        ferry_model_close(models[b]);
    }
    free(path);
}

/* f16 KV cache and f16/bf16 activations into cuBLAS set the bars. */
Test(cuda_engine, tiny_llama_logits_match_the_cpu_backend_for_every_dtype) {
    NEED_GPU();
    check_against_cpu("tiny", "f32", 2e-3);
    check_against_cpu("tiny", "f16", 2e-3);
    check_against_cpu("tiny", "bf16", 1e-2);
}

Test(cuda_engine, qwen2_bias_and_llama3_rope_logits_match_the_cpu_backend) {
    NEED_GPU();
    check_against_cpu("tiny-qwen2", "f16", 2e-3);
    check_against_cpu("tiny-llama3", "f16", 2e-3);
}

Test(cuda_engine, small_model_with_head_dim_64_matches_the_cpu_backend) {
    NEED_GPU();
    check_against_cpu("small", "f16", 2e-3);
}

/* ------------------------------------------- recorded decode steps */

enum { GRAPH_SEQS = 3, GRAPH_PROMPT = 5, GRAPH_STEPS = 8, GRAPH_STALE_AT = 4 };

/* Prefill GRAPH_SEQS prompts, then GRAPH_STEPS decode steps, in a fresh
 * session with graphs on or off (FERRY_GRAPHS is read when a session is
 * made); the logits of every step go to out[step].  With other_session, a
 * long prefill in another session of the same model runs before step
 * GRAPH_STALE_AT, between two replays (test_cuda_graph.c checks the
 * backend side of a recording going stale). */
static void decode_logits(ferry_model *model, int graphs, int other_session, const int32_t *prompt,
                          const int32_t *step_tokens, int vocab, float *out) {
    setenv("FERRY_GRAPHS", graphs ? "1" : "0", 1);
    ferry_session *session = NULL, *other = NULL;
    cr_assert_eq(ferry_session_new(model, GRAPH_SEQS, 64, &session), FERRY_OK, "%s",
                 ferry_last_error());
    unsetenv("FERRY_GRAPHS");
    size_t step_floats = (size_t)GRAPH_SEQS * vocab;
    int prompt_lengths[GRAPH_SEQS] = {GRAPH_PROMPT, GRAPH_PROMPT, GRAPH_PROMPT};
    ferry_batch prefill = {GRAPH_SEQS, NULL, prompt_lengths, prompt};
    cr_assert_eq(ferry_forward(session, &prefill, FERRY_LOGITS_LAST, out, step_floats), FERRY_OK,
                 "%s", ferry_last_error());
    int ones[GRAPH_SEQS] = {1, 1, 1};
    for (int step = 0; step < GRAPH_STEPS; step++) {
        if (other_session && step == GRAPH_STALE_AT) {
            enum { LONG = 300 };
            int32_t long_prompt[LONG];
            for (int i = 0; i < LONG; i++) long_prompt[i] = (int32_t)(i * 7 % vocab);
            int long_length = LONG;
            float *ignored = malloc((size_t)vocab * sizeof(float));
            cr_assert_eq(ferry_session_new(model, 1, LONG, &other), FERRY_OK);
            ferry_batch long_batch = {1, NULL, &long_length, long_prompt};
            cr_assert_eq(ferry_forward(other, &long_batch, FERRY_LOGITS_LAST, ignored, vocab),
                         FERRY_OK, "%s", ferry_last_error());
            free(ignored);
        }
        float *logits = out + (size_t)step * step_floats;
        for (size_t i = 0; i < step_floats; i++) logits[i] = NAN;
        ferry_batch decode = {GRAPH_SEQS, NULL, ones, step_tokens + step * GRAPH_SEQS};
        cr_assert_eq(ferry_forward(session, &decode, FERRY_LOGITS_LAST, logits, step_floats),
                     FERRY_OK, "step %d: %s", step, ferry_last_error());
    }
    /* the recording exists exactly when graphs are on */
    cr_assert_eq(session->graphs[GRAPH_SEQS] != NULL, graphs != 0,
                 "graphs %s, but a recording %s", graphs ? "on" : "off",
                 session->graphs[GRAPH_SEQS] ? "exists" : "is missing");
    ferry_session_free(other);
    ferry_session_free(session);
}

/* A CUDA model whose backend launches kernels with programmatic dependent
 * launch (pdl 1: the default on Hopper) or without (FERRY_CUDA_PDL=0, read
 * when the backend is made). */
static ferry_model *open_cuda_model(const char *path, int pdl) {
    if (!pdl) setenv("FERRY_CUDA_PDL", "0", 1);
    ferry_model *model = open_model(path, "cuda");
    unsetenv("FERRY_CUDA_PDL");
    return model;
}

/* Decode logits of `pdl_off` (PDL off, graphs on) equal `want` bit for bit. */
static void check_pdl_off_equals(const char *path, const int32_t *prompt, const int32_t *steps,
                                 int vocab, const float *want) {
    size_t n = (size_t)GRAPH_STEPS * GRAPH_SEQS * vocab;
    float *pdl_off = malloc(n * sizeof(float));
    ferry_model *model = open_cuda_model(path, 0);
    decode_logits(model, 1, 0, prompt, steps, vocab, pdl_off);
    ferry_model_close(model);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(memcmp(&want[i], &pdl_off[i], sizeof(float)), 0,
                     "step %zu: logit %zu: without PDL %.9g, with PDL %.9g",
                     i / ((size_t)GRAPH_SEQS * vocab), i, (double)pdl_off[i], (double)want[i]);
    free(pdl_off);
}

static void check_replay_equals_direct(int other_session) {
    NEED_GPU();
    char arguments[1024], *path = test_path(dir, "synth.ferry");
    snprintf(arguments, sizeof arguments, "synth --preset tiny --dtype f16 --seed 3 '%s'", path);
    run_cli(arguments);
    ferry_model *model = open_cuda_model(path, 1);
    ferry_model_info info;
    ferry_model_get_info(model, &info);
    cr_assert(model->backend->ops->graph_begin, "the CUDA backend records no graphs");
    uint64_t rng = test_seed();
    int32_t prompt[GRAPH_SEQS * GRAPH_PROMPT], steps[GRAPH_SEQS * GRAPH_STEPS];
    for (int i = 0; i < GRAPH_SEQS * GRAPH_PROMPT; i++)
        prompt[i] = (int32_t)(test_rand_u64(&rng) % (uint64_t)info.vocab_size);
    for (int i = 0; i < GRAPH_SEQS * GRAPH_STEPS; i++)
        steps[i] = (int32_t)(test_rand_u64(&rng) % (uint64_t)info.vocab_size);
    size_t n = (size_t)GRAPH_STEPS * GRAPH_SEQS * info.vocab_size;
    float *direct = malloc(n * sizeof(float)), *replayed = malloc(n * sizeof(float));
    decode_logits(model, 0, other_session, prompt, steps, info.vocab_size, direct);
    decode_logits(model, 1, other_session, prompt, steps, info.vocab_size, replayed);
    /* the same kernels on the same inputs: equal bit for bit */
    for (size_t i = 0; i < n; i++) {
        cr_assert(isfinite(replayed[i]), "step %zu: logit %zu is %g",
                  i / ((size_t)GRAPH_SEQS * info.vocab_size), i, (double)replayed[i]);
        cr_assert_eq(memcmp(&direct[i], &replayed[i], sizeof(float)), 0,
                     "step %zu: logit %zu: replayed %.9g, direct %.9g",
                     i / ((size_t)GRAPH_SEQS * info.vocab_size), i, (double)replayed[i],
                     (double)direct[i]);
    }
    ferry_model_close(model);
    /* launch overlap (PDL) changes when kernels start, never what they compute */
    if (!other_session) check_pdl_off_equals(path, prompt, steps, info.vocab_size, direct);
    free(direct), free(replayed), free(path);
}

/* Bit for bit: replays equal direct runs, and both equal the replays of a
 * backend that launches without PDL (FERRY_CUDA_PDL=0). */
Test(cuda_engine, decode_steps_replayed_from_a_graph_equal_direct_runs) {
    check_replay_equals_direct(0);
}

Test(cuda_engine, replays_stay_exact_when_another_session_runs_between_them) {
    check_replay_equals_direct(1);
}

/* --------------------------------------- tokens picked on the device */

/* A synthesised model on the CUDA backend, all resident or every layer
 * streamed from DRAM. */
static ferry_model *open_synth_on_cuda(const char *path, int streamed) {
    ferry_model_options options = {.backend = "cuda", .n_threads = 2};
    if (streamed) {
        options.streaming = 1;
        options.resident_layers = 0;
    }
    ferry_model *model = NULL;
    cr_assert_eq(ferry_model_open(path, &options, &model), FERRY_OK, "%s: %s", path,
                 ferry_last_error());
    cr_assert_eq(model->stream != NULL, streamed, "%s: streaming %d", path, streamed);
    cr_assert(model->backend->ops->sample, "the CUDA backend has no sample op");
    return model;
}

/* Every rule kind, ragged prefill over two chunks, decode steps replayed
 * from graphs (resident) or streamed: the device's tokens are the host's
 * picks from the same logits, up to rounding at a boundary. */
Test(cuda_engine, forward_next_picks_on_the_device_what_the_host_picks_from_the_logits) {
    NEED_GPU();
    static const struct {
        const char *path;
        int streamed;
    } runs[] = {{"synth:tiny:f16:3", 0}, {"synth:tiny:f16:3", 1}, {"synth:small:f16:4", 0}};
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        ferry_model *model = open_synth_on_cuda(runs[r].path, runs[r].streamed);
        char what[128];
        snprintf(what, sizeof what, "%s%s", runs[r].path, runs[r].streamed ? " streamed" : "");
        next_fixture_run(model, 0, what);
        ferry_model_close(model);
    }
}

/* ------------------------------------------------ CUDA vs HF fixtures */

static char *fixture_text(const char *name, const char *file, size_t *bytes) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/%s", FIXTURES_DIR, name, file);
    char *text = test_read_file(path, bytes);
    cr_assert(text, "read %s", path);
    return text;
}

static void check_fixture_on_cuda(const char *name, double bar, double tie_gap) {
    char *meta_text = fixture_text(name, "meta.json", NULL);
    cJSON *meta = cJSON_Parse(meta_text);
    cr_assert(meta);
    int n_tokens = cJSON_GetObjectItem(meta, "n_tokens")->valueint;
    int vocab = cJSON_GetObjectItem(meta, "vocab_size")->valueint;
    int n_new = cJSON_GetObjectItem(meta, "n_new_tokens")->valueint;
    const cJSON *gaps = cJSON_GetObjectItem(meta, "greedy_top2_gaps");
    int32_t *prompt = NULL, *hf_greedy = NULL;
    int n_prompt = 0, n_greedy = 0;
    char *tokens_text = fixture_text(name, "tokens.txt", NULL);
    char *greedy_text = fixture_text(name, "greedy.txt", NULL);
    prompt = malloc(strlen(tokens_text) * sizeof(int32_t));
    hf_greedy = malloc(strlen(greedy_text) * sizeof(int32_t));
    for (char *p = tokens_text; *p;) {
        char *end;
        long value = strtol(p, &end, 10);
        if (end == p) break;
        prompt[n_prompt++] = (int32_t)value;
        p = *end == ',' ? end + 1 : end;
    }
    for (char *p = greedy_text; *p;) {
        char *end;
        long value = strtol(p, &end, 10);
        if (end == p) break;
        hf_greedy[n_greedy++] = (int32_t)value;
        p = *end == ',' ? end + 1 : end;
    }
    cr_assert_eq(n_prompt, n_tokens);
    size_t logit_bytes = 0;
    float *hf_logits = (float *)fixture_text(name, "logits.f32", &logit_bytes);
    cr_assert_eq(logit_bytes, (size_t)n_tokens * vocab * sizeof(float));

    char arguments[2048], *model_path = test_path(dir, "fixture.ferry");
    snprintf(arguments, sizeof arguments, "convert '%s/%s/hf' '%s' --dtype keep", FIXTURES_DIR,
             name, model_path);
    run_cli(arguments);
    ferry_model *model = open_model(model_path, "cuda");
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, 1, n_tokens + n_new + 1, &session), FERRY_OK);
    size_t n = (size_t)n_tokens * vocab;
    float *logits = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) logits[i] = NAN;
    ferry_batch batch = {.n_seqs = 1, .n_tokens = &n_tokens, .tokens = prompt};
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_ALL, logits, n), FERRY_OK, "%s",
                 ferry_last_error());
    double error = worst_row_error(logits, hf_logits, n_tokens, vocab);
    fprintf(stderr, "[cuda-hf] %s: worst row max|diff|/max|ref| = %.3g\n", name, error);
    cr_assert_leq(error, bar, "%s: cuda vs HF logits differ by %.3g > %.3g", name, error, bar);

    /* greedy tokens equal HF's up to the first near-tie */
    ferry_generate_params params = {.sampling = ferry_sampling_default(), .max_new_tokens = n_new,
                                    .ignore_eos = 1};
    params.sampling.greedy = 1;
    int32_t ours[64];
    int n_out = 0;
    cr_assert_eq(ferry_generate(session, prompt, n_prompt, &params, ours, 64, &n_out), FERRY_OK,
                 "%s", ferry_last_error());
    cr_assert_eq(n_out, n_new);
    for (int step = 0; step < n_new && step < n_greedy; step++) {
        if (ours[step] == hf_greedy[step]) continue;
        double gap = cJSON_GetArrayItem(gaps, step)->valuedouble;
        cr_assert_lt(gap, tie_gap, "%s: step %d: cuda %d, HF %d, and HF's top-2 gap %.3g is no tie",
                     name, step, ours[step], hf_greedy[step], gap);
        fprintf(stderr, "[cuda-hf] %s: step %d differs at a near-tie (gap %.3g)\n", name, step, gap);
        break;
    }
    ferry_session_free(session);
    ferry_model_close(model);
    cJSON_Delete(meta);
    free(meta_text), free(tokens_text), free(greedy_text), free(prompt), free(hf_greedy);
    free(hf_logits), free(logits), free(model_path);
}

/* f32 checkpoints: the f16 KV cache and f32 activations stay within 2e-3. */
Test(cuda_engine, hf_fixtures_logits_and_greedy_tokens_match_on_cuda) {
    NEED_GPU();
    check_fixture_on_cuda("llama_gqa_llama3", 2e-3, 1e-2);
    check_fixture_on_cuda("mistral_mqa", 2e-3, 1e-2);
    check_fixture_on_cuda("qwen2_bias_tied", 2e-3, 1e-2);
    check_fixture_on_cuda("llama_tf4_spelling", 2e-3, 1e-2);
}

/* bf16 weights: the cuBLAS path rounds activations to bf16 (8 bits). */
Test(cuda_engine, hf_bf16_fixture_matches_on_cuda_at_the_bf16_bar) {
    NEED_GPU();
    check_fixture_on_cuda("llama_linear_bf16_sharded", 1e-2, 3e-2);
}
