/*
 * test_offload_auto.c — FERRY_STREAMING_AUTO, the default of the commands
 * that run a model: the choice between all resident and streamed as a pure
 * function of the model, the sessions, the free figures and the margins
 * (hand-computed cases: fits, fits exactly, one byte short, a budget
 * given, a host too small, no device figure); the margins; the
 * FERRY_FAKE_FREE_MEMORY override; and end to end on the CPU backend with
 * faked figures: auto streams when the model does not fit, within the
 * right budgets, with logits bit-identical to the resident run, and opens
 * resident when it fits.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "offload/offload.h"
#include "runtime/engine.h"

#define MIB (1ull << 20)
#define GIB (1ull << 30)

/* ------------------------------------------------ the pure choice */

/* Four layers of 100 MiB, globals 50 MiB, 1 KiB of KV per token and
 * layer, 10 MiB of activations whatever the batch: for 2 sequences of
 * 1024 tokens everything resident needs 50 + 400 + 2*1024*4 KiB (8 MiB)
 * + 10 = 468 MiB. */
static const uint64_t layer_bytes[4] = {100 * MIB, 100 * MIB, 100 * MIB, 100 * MIB};
static const uint64_t resident_need = 468 * MIB;

static offload_model_shape hand_shape(void) {
    offload_model_shape shape;
    memset(&shape, 0, sizeof shape);
    shape.n_layers = 4;
    shape.layer_bytes = layer_bytes;
    shape.globals_bytes = 50 * MIB;
    shape.kv_bytes_per_token_layer = 1024;
    shape.activation_fixed_bytes = 10 * MIB;
    shape.flops_per_token = 1;
    return shape;
}

static offload_request two_sessions(void) {
    offload_request request;
    memset(&request, 0, sizeof request);
    request.batch = 2;
    request.context = 1024;
    request.resident_layers = 3; /* not read by auto: the choice takes as many as fit */
    request.gpu_mem_bytes = 1;   /* nor the request's budgets */
    request.host_mem_bytes = 1;
    return request;
}

static offload_auto_choice choose_ok(uint64_t gpu_free, uint64_t gpu_margin, uint64_t host_free,
                                     uint64_t host_margin) {
    offload_model_shape shape = hand_shape();
    offload_request sessions = two_sessions();
    offload_auto_memory memory = {gpu_free, host_free, gpu_margin, host_margin, 0, 0, 0};
    offload_auto_choice choice;
    memset(&choice, 0xA5, sizeof choice); /* poison: every field must be written */
    cr_assert_eq(offload_auto_choose(&shape, &sessions, &memory, &choice), FERRY_OK, "%s",
                 ferry_last_error());
    return choice;
}

Test(offload_auto, a_model_that_fits_the_gpu_share_stays_resident) {
    offload_auto_choice choice = choose_ok(1000 * MIB, 512 * MIB, 64 * GIB, 2 * GIB);
    cr_assert_eq(choice.stream, 0);
    cr_assert_eq(choice.resident_bytes, resident_need, "%llu",
                 (unsigned long long)choice.resident_bytes);
    cr_assert_eq(choice.gpu_share_bytes, 488 * MIB);
    cr_assert_eq(choice.gpu_mem_bytes, 0);
    cr_assert_eq(choice.host_mem_bytes, 0);
    /* exactly the need is still a fit */
    choice = choose_ok(resident_need + 512 * MIB, 512 * MIB, 64 * GIB, 2 * GIB);
    cr_assert_eq(choice.stream, 0);
}

Test(offload_auto, one_byte_short_streams_within_free_less_margin) {
    offload_auto_choice choice = choose_ok(resident_need + 512 * MIB - 1, 512 * MIB, 64 * GIB,
                                           2 * GIB);
    cr_assert_eq(choice.stream, 1);
    cr_assert_eq(choice.resident_bytes, resident_need);
    cr_assert_eq(choice.gpu_mem_bytes, resident_need - 1);
    cr_assert_eq(choice.host_mem_bytes, 62 * GIB);
    /* and the plan under those budgets keeps 1 layer resident: 468 MiB
     * less a byte, less globals, activations, 2 slots and the KV cache
     * (268 MiB) leaves room for one layer of 100 MiB */
    offload_model_shape shape = hand_shape();
    offload_request request = two_sessions();
    request.resident_layers = -1;
    request.gpu_mem_bytes = choice.gpu_mem_bytes;
    request.host_mem_bytes = choice.host_mem_bytes;
    offload_bandwidths bandwidths = offload_bandwidths_default();
    offload_plan plan;
    cr_assert_eq(offload_plan_make(&shape, &request, &bandwidths, &plan), FERRY_OK);
    cr_assert_eq(plan.n_resident, 1);
    cr_assert_eq(plan.n_host, 3);
    offload_plan_free(&plan);
}

Test(offload_auto, given_budgets_win_over_the_free_figures) {
    offload_model_shape shape = hand_shape();
    offload_request sessions = two_sessions();
    /* a GPU with 80 GiB free, but a budget of 300 MiB: streams within it */
    offload_auto_memory memory = {80 * GIB, 500 * GIB, 4 * GIB, 50 * GIB, 300 * MIB, 0, 0};
    offload_auto_choice choice;
    cr_assert_eq(offload_auto_choose(&shape, &sessions, &memory, &choice), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(choice.stream, 1);
    cr_assert_eq(choice.gpu_mem_bytes, 300 * MIB);
    cr_assert_eq(choice.host_mem_bytes, 450 * GIB);
    /* a host budget given too */
    memory.host_mem_bytes = 1 * GIB;
    cr_assert_eq(offload_auto_choose(&shape, &sessions, &memory, &choice), FERRY_OK);
    cr_assert_eq(choice.host_mem_bytes, 1 * GIB);
    /* a GPU budget the model fits: resident, whatever is free */
    memory.gpu_mem_bytes = 468 * MIB;
    memory.gpu_free_bytes = 1;
    cr_assert_eq(offload_auto_choose(&shape, &sessions, &memory, &choice), FERRY_OK);
    cr_assert_eq(choice.stream, 0);
}

Test(offload_auto, no_device_figure_means_resident_and_always_stream_streams) {
    /* the CPU backend: nothing read, nothing given */
    offload_auto_choice choice = choose_ok(0, 0, 0, 0);
    cr_assert_eq(choice.stream, 0);
    cr_assert_eq(choice.resident_bytes, resident_need);
    /* --resident-layers: streams even when it fits; the request's count is read */
    offload_model_shape shape = hand_shape();
    offload_request sessions = two_sessions();
    sessions.resident_layers = 0;
    offload_auto_memory memory = {100 * GIB, 100 * GIB, 5 * GIB, 10 * GIB, 0, 0, 1};
    cr_assert_eq(offload_auto_choose(&shape, &sessions, &memory, &choice), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(choice.stream, 1);
    cr_assert_eq(choice.gpu_mem_bytes, 95 * GIB);
    cr_assert_eq(choice.host_mem_bytes, 90 * GIB);
    /* ... and on the CPU, with nothing known, without limits */
    memset(&memory, 0, sizeof memory);
    memory.always_stream = 1;
    cr_assert_eq(offload_auto_choose(&shape, &sessions, &memory, &choice), FERRY_OK);
    cr_assert_eq(choice.stream, 1);
    cr_assert_eq(choice.gpu_mem_bytes, 0);
    cr_assert_eq(choice.host_mem_bytes, 0);
}

Test(offload_auto, a_host_too_small_gives_the_plans_error) {
    /* GPU share 388 MiB: the ring (globals, activations, 2 slots: 260
     * MiB) and the KV cache (8 MiB) fit, one layer too; three stream.
     * Host share 100 MiB holds no layer, and reading them from the file
     * needs 2 staging buffers of 100 MiB. */
    offload_model_shape shape = hand_shape();
    offload_request sessions = two_sessions();
    offload_auto_memory memory = {900 * MIB, 2 * GIB + 100 * MIB, 512 * MIB, 2 * GIB, 0, 0, 0};
    offload_auto_choice choice;
    cr_assert_eq(offload_auto_choose(&shape, &sessions, &memory, &choice), FERRY_ERR_NO_MEMORY);
    char message[1024];
    snprintf(message, sizeof message, "%s", ferry_last_error());
    /* the plan's own words for those budgets */
    offload_request request = sessions;
    request.resident_layers = -1;
    request.gpu_mem_bytes = 388 * MIB;
    request.host_mem_bytes = 100 * MIB;
    offload_bandwidths bandwidths = offload_bandwidths_default();
    offload_plan plan;
    cr_assert_eq(offload_plan_make(&shape, &request, &bandwidths, &plan), FERRY_ERR_NO_MEMORY);
    cr_assert(strstr(message, ferry_last_error()), "'%s' lacks the plan's '%s'", message,
              ferry_last_error());
    cr_assert(strstr(message, "auto budgets:") && strstr(message, "of host memory"), "%s",
              message);
    /* a margin that takes the whole host: nothing to stream through */
    memory.host_available_bytes = 1 * GIB;
    cr_assert_eq(offload_auto_choose(&shape, &sessions, &memory, &choice), FERRY_ERR_NO_MEMORY);
    cr_assert(strstr(ferry_last_error(), "nothing left to stream through"), "%s",
              ferry_last_error());
    /* and one that takes the whole GPU */
    memory.gpu_free_bytes = 400 * MIB;
    cr_assert_eq(offload_auto_choose(&shape, &sessions, &memory, &choice), FERRY_ERR_NO_MEMORY);
    cr_assert(strstr(ferry_last_error(), "nothing left for a model"), "%s", ferry_last_error());
}

Test(offload_auto, margins_are_a_share_with_a_floor) {
    cr_assert_eq(offload_gpu_margin_bytes(1 * GIB), 512 * MIB);
    cr_assert_eq(offload_gpu_margin_bytes(10 * GIB), 512 * MIB);       /* 5% is 512 MiB */
    cr_assert_eq(offload_gpu_margin_bytes(80 * GIB), 4 * GIB);
    cr_assert_eq(offload_host_margin_bytes(8 * GIB), 2 * GIB);
    cr_assert_eq(offload_host_margin_bytes(100 * GIB), 10 * GIB);
    uint64_t available = 0;
    cr_assert_eq(offload_host_available_bytes(&available), FERRY_OK, "%s", ferry_last_error());
    cr_assert_gt(available, 0);
}

Test(offload_auto, the_fake_free_memory_variable_is_parsed_or_refused) {
    uint64_t figures[4];
    int set = -1;
    unsetenv("FERRY_FAKE_FREE_MEMORY");
    cr_assert_eq(offload_fake_free_memory(&set, figures), FERRY_OK);
    cr_assert_eq(set, 0);
    setenv("FERRY_FAKE_FREE_MEMORY", "6G,64G", 1);
    cr_assert_eq(offload_fake_free_memory(&set, figures), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(set, 1);
    cr_assert(figures[0] == 6 * GIB && figures[1] == 64 * GIB && !figures[2] && !figures[3]);
    setenv("FERRY_FAKE_FREE_MEMORY", "1100K,64M,100K,1M", 1);
    cr_assert_eq(offload_fake_free_memory(&set, figures), FERRY_OK, "%s", ferry_last_error());
    cr_assert(figures[0] == 1100 * 1024 && figures[1] == 64 * MIB && figures[2] == 100 * 1024 &&
              figures[3] == MIB);
    static const char *const bad[] = {"6G", "6G,", ",6G", "0,1G", "1G,0", "6G,64G,1M",
                                      "6G,64G,1M,2M,3M", "lots,1G", "1G,,1M,1M"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv("FERRY_FAKE_FREE_MEMORY", bad[i], 1);
        cr_assert_eq(offload_fake_free_memory(&set, figures), FERRY_ERR_INVALID_ARGUMENT, "%s",
                     bad[i]);
        cr_assert(strstr(ferry_last_error(), "FERRY_FAKE_FREE_MEMORY=") &&
                      strstr(ferry_last_error(), bad[i]),
                  "%s: %s", bad[i], ferry_last_error());
        cr_assert_eq(set, 0);
    }
    unsetenv("FERRY_FAKE_FREE_MEMORY");
}

/* --------------------------------------------- end to end on the CPU */

enum { N_LAYERS = 6, VOCAB = 512, N_SEQS = 2, CONTEXT = 24 };

static char *dir, *model_path;
static uint64_t seed;

static void setup(void) {
    dir = test_tempdir();
    model_path = test_path(dir, "tiny6.ferry");
    uint64_t state = test_seed();
    seed = test_rand_u64(&state);
    char command[4096];
    snprintf(command, sizeof command, "'%s' synth --preset tiny --layers %d --seed %llu '%s'",
             test_cli(), N_LAYERS, (unsigned long long)(seed % 100000), model_path);
    cr_assert_eq(test_run(command, NULL, NULL), 0, "ferry synth failed");
}

static void teardown(void) {
    unsetenv("FERRY_FAKE_FREE_MEMORY");
    test_rmtree(dir);
    free(dir);
    free(model_path);
}

typedef struct run_logits {
    float prompt[(5 + 3) * VOCAB];  /* every position of a ragged prompt batch */
    float decode[N_SEQS * VOCAB];   /* then one decode step */
} run_logits;

static ferry_model *open_auto(int streaming) {
    ferry_model_options options = {.backend = "cpu", .n_threads = 2, .streaming = streaming,
                                   .resident_layers = 0, /* auto must not read it */
                                   .stream_batch = N_SEQS, .stream_context = CONTEXT};
    ferry_model *model = NULL;
    cr_assert_eq(ferry_model_open(model_path, &options, &model), FERRY_OK, "%s",
                 ferry_last_error());
    return model;
}

static void run(ferry_model *model, const int32_t *tokens, run_logits *out) {
    static const int n_tokens[N_SEQS] = {5, 3};
    static const int one[N_SEQS] = {1, 1};
    for (size_t i = 0; i < sizeof out->prompt / sizeof(float); i++) out->prompt[i] = NAN;
    for (size_t i = 0; i < sizeof out->decode / sizeof(float); i++) out->decode[i] = NAN;
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, N_SEQS, CONTEXT, &session), FERRY_OK, "%s",
                 ferry_last_error());
    ferry_batch batch = {N_SEQS, NULL, n_tokens, tokens};
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_ALL, out->prompt,
                               sizeof out->prompt / sizeof(float)),
                 FERRY_OK, "%s", ferry_last_error());
    ferry_batch step = {N_SEQS, NULL, one, tokens + 8};
    cr_assert_eq(ferry_forward(session, &step, FERRY_LOGITS_LAST, out->decode,
                               sizeof out->decode / sizeof(float)),
                 FERRY_OK, "%s", ferry_last_error());
    ferry_session_free(session);
}

static void fake(uint64_t gpu_free, uint64_t host_available, uint64_t gpu_margin,
                 uint64_t host_margin) {
    char text[128];
    snprintf(text, sizeof text, "%llu,%llu,%llu,%llu", (unsigned long long)gpu_free,
             (unsigned long long)host_available, (unsigned long long)gpu_margin,
             (unsigned long long)host_margin);
    setenv("FERRY_FAKE_FREE_MEMORY", text, 1);
}

TestSuite(offload_auto_cpu, .init = setup, .fini = teardown, .timeout = 120);

Test(offload_auto_cpu, auto_streams_what_does_not_fit_with_logits_identical_to_resident) {
    uint64_t state = seed;
    int32_t tokens[10];
    for (int i = 0; i < 10; i++) tokens[i] = (int32_t)(test_rand_u64(&state) % VOCAB);

    /* the reference: streaming off */
    run_logits *reference = malloc(sizeof *reference), *got = malloc(sizeof *got);
    ferry_model *model = open_auto(0);
    run(model, tokens, reference);
    ferry_model_close(model);

    /* auto on the CPU, nothing faked: resident, no figures read */
    unsetenv("FERRY_FAKE_FREE_MEMORY");
    model = open_auto(FERRY_STREAMING_AUTO);
    ferry_model_placement placement;
    cr_assert_eq(ferry_model_get_placement(model, &placement), FERRY_OK);
    cr_assert(placement.chosen_by_auto && !placement.streaming && !placement.figures_faked);
    cr_assert_null(model->stream);
    cr_assert_gt(placement.resident_bytes, 0);
    uint64_t need = placement.resident_bytes;
    ferry_model_close(model);

    /* a faked GPU whose share (free less margin) is exactly the need: resident */
    const uint64_t gpu_margin = 100 * 1024, host_margin = MIB;
    fake(need + gpu_margin, 64 * MIB, gpu_margin, host_margin);
    model = open_auto(FERRY_STREAMING_AUTO);
    cr_assert_eq(ferry_model_get_placement(model, &placement), FERRY_OK);
    cr_assert(placement.chosen_by_auto && placement.figures_faked && !placement.streaming);
    cr_assert_eq(placement.resident_bytes, need);
    cr_assert_null(model->stream);
    cr_assert_eq(ferry_model_stream_report(model, NULL, 0), 0);
    ferry_model_close(model);

    /* a quarter of the layers' worth less: streamed within the shares */
    uint64_t gpu_share = need - need / 4;
    fake(gpu_share + gpu_margin, 64 * MIB, gpu_margin, host_margin);
    model = open_auto(FERRY_STREAMING_AUTO);
    cr_assert_eq(ferry_model_get_placement(model, &placement), FERRY_OK);
    cr_assert(placement.chosen_by_auto && placement.figures_faked && placement.streaming);
    cr_assert_eq(placement.gpu_free_bytes, gpu_share + gpu_margin);
    cr_assert_eq(placement.gpu_margin_bytes, gpu_margin);
    cr_assert_eq(placement.gpu_mem_bytes, gpu_share);
    cr_assert_eq(placement.host_mem_bytes, 63 * MIB);
    cr_assert_not_null(model->stream);
    const offload_plan *plan = offload_stream_plan(model->stream);
    cr_assert_eq(plan->gpu_budget_bytes, gpu_share);
    cr_assert_eq(plan->host_budget_bytes, 63 * MIB);
    cr_assert(plan->n_resident >= 1 && plan->n_resident < N_LAYERS, "%d resident",
              plan->n_resident);
    cr_assert_gt(ferry_model_stream_report(model, NULL, 0), 0);
    run(model, tokens, got);
    cr_assert_gt(offload_stream_stats(model->stream).bytes_copied, 0, "nothing streamed");
    cr_assert(memcmp(got, reference, sizeof *got) == 0,
              "streamed logits differ from the resident run");
    ferry_model_close(model);

    /* --resident-layers 0 (FERRY_STREAMING_AUTO_BUDGETS): streams though
     * everything fits, within the shares, with exactly 0 layers resident */
    fake(4 * need + gpu_margin, 64 * MIB, gpu_margin, host_margin);
    model = open_auto(FERRY_STREAMING_AUTO_BUDGETS);
    cr_assert_eq(ferry_model_get_placement(model, &placement), FERRY_OK);
    cr_assert(!placement.chosen_by_auto && placement.streaming);
    cr_assert_eq(placement.gpu_mem_bytes, 4 * need);
    cr_assert_eq(placement.host_mem_bytes, 63 * MIB);
    cr_assert_not_null(model->stream);
    plan = offload_stream_plan(model->stream);
    cr_assert_eq(plan->n_resident, 0);
    cr_assert_eq(plan->gpu_budget_bytes, 4 * need);
    run(model, tokens, got);
    cr_assert(memcmp(got, reference, sizeof *got) == 0,
              "logits streamed with no resident layer differ from the resident run");
    ferry_model_close(model);

    /* a host whose share cannot hold the staging buffers: the plan's error */
    fake(gpu_share + gpu_margin, host_margin + 1024, gpu_margin, host_margin);
    ferry_model_options options = {.backend = "cpu", .streaming = FERRY_STREAMING_AUTO,
                                   .stream_batch = N_SEQS, .stream_context = CONTEXT};
    model = NULL;
    cr_assert_eq(ferry_model_open(model_path, &options, &model), FERRY_ERR_NO_MEMORY);
    cr_assert_null(model);
    cr_assert(strstr(ferry_last_error(), "auto budgets") &&
                  strstr(ferry_last_error(), "of host memory"),
              "%s", ferry_last_error());
    free(reference);
    free(got);
}

/* Run `ferry ARGUMENTS` with FERRY_FAKE_FREE_MEMORY=fake (NULL: unset);
 * stderr into *err, stdout into *out unless out is NULL. */
static int run_cli_out(const char *fake_text, const char *arguments, char **out, char **err) {
    char env[256];
    if (fake_text) snprintf(env, sizeof env, "FERRY_FAKE_FREE_MEMORY=%s", fake_text);
    else snprintf(env, sizeof env, "unset FERRY_FAKE_FREE_MEMORY;");
    int exit_status = test_cli_capture(dir, env, arguments, out, err);
    cr_assert_not_null(*err);
    if (out) cr_assert_not_null(*out);
    return exit_status;
}

static int run_cli(const char *fake_text, const char *arguments, char **err) {
    return run_cli_out(fake_text, arguments, NULL, err);
}

Test(offload_auto_cpu, the_cli_defaults_to_auto_and_says_when_it_streams) {
    char arguments[2048], *err = NULL;
    char *resident_out = test_path(dir, "r.bin"), *streamed_out = test_path(dir, "s.bin");
    snprintf(arguments, sizeof arguments,
             "logits --model '%s' --backend cpu --tokens 3,1,4,1,5,9 --out '%s'", model_path,
             resident_out);
    cr_assert_eq(run_cli(NULL, arguments, &err), 0, "%s", err);
    cr_assert_null(strstr(err, "stream"), "a resident run talked of streaming:\n%s", err);
    free(err);
    /* a GPU of 300 KiB free less 100 KiB: the tiny model (~1.5 MiB) streams */
    snprintf(arguments, sizeof arguments,
             "logits --model '%s' --backend cpu --tokens 3,1,4,1,5,9 --out '%s'", model_path,
             streamed_out);
    cr_assert_eq(run_cli("700K,64M,100K,1M", arguments, &err), 0, "%s", err);
    cr_assert(strstr(err, "ferry logits: the model needs ") &&
                  strstr(err, "but the GPU has 700 KiB free less a 100 KiB margin") &&
                  strstr(err, "streaming layers within GPU 600 KiB, host 63 MiB"),
              "%s", err);
    cr_assert(strstr(err, "ferry logits: streaming plan:"), "%s", err);
    free(err);
    size_t resident_bytes = 0, streamed_bytes = 0;
    char *resident = test_read_file(resident_out, &resident_bytes);
    char *streamed = test_read_file(streamed_out, &streamed_bytes);
    cr_assert(resident && streamed && resident_bytes == 6 * VOCAB * sizeof(float));
    cr_assert(streamed_bytes == resident_bytes && !memcmp(resident, streamed, resident_bytes),
              "streamed logits differ");
    free(resident);
    free(streamed);
    /* --no-stream keeps it resident whatever is free; beside a budget it is a usage error */
    snprintf(arguments, sizeof arguments,
             "logits --model '%s' --backend cpu --tokens 3,1 --out '%s' --no-stream", model_path,
             streamed_out);
    cr_assert_eq(run_cli("700K,64M,100K,1M", arguments, &err), 0, "%s", err);
    cr_assert_null(strstr(err, "stream"), "%s", err);
    free(err);
    snprintf(arguments, sizeof arguments,
             "logits --model '%s' --backend cpu --tokens 3,1 --out '%s' --no-stream --gpu-mem 1G",
             model_path, streamed_out);
    cr_assert_eq(run_cli(NULL, arguments, &err), 2);
    cr_assert(strstr(err, "--no-stream cannot be combined with --gpu-mem"), "%s", err);
    free(err);
    free(resident_out);
    free(streamed_out);
}

Test(offload_auto_cpu, every_run_command_states_the_defaults_and_plan_keeps_its_own) {
    const char *const commands[] = {"logits", "generate", "bench", "batch"};
    const char *const lines[] = {"(default: the GPU's free memory less max(5%, 512M))",
                                 "(default: available memory less max(10%, 2G))", "--no-stream",
                                 "fit the GPU's free memory less a"};
    for (size_t c = 0; c < sizeof commands / sizeof commands[0]; c++) {
        char arguments[64], *out = NULL, *err = NULL;
        snprintf(arguments, sizeof arguments, "%s --help", commands[c]);
        cr_assert_eq(run_cli_out(NULL, arguments, &out, &err), 0, "%s: %s", commands[c], err);
        for (size_t l = 0; l < sizeof lines / sizeof lines[0]; l++)
            cr_assert(strstr(out, lines[l]), "ferry %s --help lacks '%s':\n%s", commands[c],
                      lines[l], out);
        free(out);
        free(err);
    }
    char *out = NULL, *err = NULL;
    cr_assert_eq(run_cli_out(NULL, "plan --help", &out, &err), 0, "%s", err);
    cr_assert(strstr(out, "defaults to 80G") && !strstr(out, "--no-stream") &&
                  !strstr(out, "free memory less"),
              "%s", out);
    free(out);
    free(err);
}
