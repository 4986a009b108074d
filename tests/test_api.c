/*
 * test_api.c — the public API end to end on a model written by
 * `ferry synth`: opening, info, forward, generation (repeatable, callback
 * stop, capacity and context checks), the `ferry logits` and
 * `ferry generate` commands agreeing with the API, and bad arguments or
 * bad files answered with an error, never a crash.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry.h"
#include "helpers.h"
#include "runtime/format.h"

static char *scratch_dir;
static char *model_path;

/* One tiny synthetic model shared by the tests of this file. */
static void make_model(void) {
    scratch_dir = test_tempdir();
    cr_assert_not_null(scratch_dir);
    model_path = test_path(scratch_dir, "tiny.ferry");
    char command[4096];
    snprintf(command, sizeof command, "%s synth --preset tiny --seed 11 %s", test_cli(), model_path);
    char *err = test_path(scratch_dir, "synth.err");
    int rc = test_run(command, NULL, err);
    char *message = test_read_file(err, NULL);
    cr_assert_eq(rc, 0, "ferry synth failed (%d): %s", rc, message ? message : "");
    free(message);
    free(err);
}

static void remove_model(void) {
    test_rmtree(scratch_dir);
    free(scratch_dir);
    free(model_path);
}

TestSuite(api, .init = make_model, .fini = remove_model);

static ferry_model *open_cpu(void) {
    ferry_model_options options = {.backend = "cpu", .n_threads = 2};
    ferry_model *model = NULL;
    cr_assert_eq(ferry_model_open(model_path, &options, &model), FERRY_OK, "%s", ferry_last_error());
    return model;
}

static ferry_session *new_session(ferry_model *model, int max_batch, int max_context) {
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, max_batch, max_context, &session), FERRY_OK, "%s",
                 ferry_last_error());
    return session;
}

Test(api, null_and_invalid_arguments_return_errors) {
    ferry_model *model = NULL;
    cr_assert_eq(ferry_model_open(NULL, NULL, &model), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_model_open(model_path, NULL, NULL), FERRY_ERR_INVALID_ARGUMENT);
    ferry_model_options bad_backend = {.backend = "tpu"};
    cr_assert_eq(ferry_model_open(model_path, &bad_backend, &model), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "tpu"), "%s", ferry_last_error());
    ferry_model_options bad_threads = {.backend = "cpu", .n_threads = -4};
    cr_assert_eq(ferry_model_open(model_path, &bad_threads, &model), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_null(model);
    ferry_model_close(NULL);
    ferry_session_free(NULL);
    ferry_model_info info;
    cr_assert_eq(ferry_model_get_info(NULL, &info), FERRY_ERR_INVALID_ARGUMENT);

    model = open_cpu();
    cr_assert_eq(ferry_model_get_info(model, NULL), FERRY_ERR_INVALID_ARGUMENT);
    ferry_session *session = new_session(model, 1, 16);
    int32_t prompt[] = {1, 2, 3}, out[4];
    int n_out = -1;
    ferry_generate_params params = {.sampling = ferry_sampling_default(), .max_new_tokens = 4};
    cr_assert_eq(ferry_generate(NULL, prompt, 3, &params, out, 4, &n_out), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_generate(session, NULL, 3, &params, out, 4, &n_out), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_generate(session, prompt, 3, NULL, out, 4, &n_out), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_generate(session, prompt, 3, &params, NULL, 4, &n_out), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_generate(session, prompt, 3, &params, out, 4, NULL), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_generate(session, prompt, 0, &params, out, 4, &n_out), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_generate(session, prompt, 3, &params, out, 3, &n_out), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "out_capacity"), "%s", ferry_last_error());
    params.max_new_tokens = -1;
    cr_assert_eq(ferry_generate(session, prompt, 3, &params, out, 4, &n_out), FERRY_ERR_INVALID_ARGUMENT);
    params.max_new_tokens = 4;
    params.sampling.temperature = 0;
    cr_assert_eq(ferry_generate(session, prompt, 3, &params, out, 4, &n_out), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "temperature"), "%s", ferry_last_error());
    params.sampling = ferry_sampling_default();
    params.max_new_tokens = 15; /* 3 + 15 - 1 = 17 > 16 */
    int32_t many[15];
    cr_assert_eq(ferry_generate(session, prompt, 3, &params, many, 15, &n_out), FERRY_ERR_CONTEXT_FULL);
    cr_assert_eq(n_out, 0);
    ferry_session_free(session);
    ferry_model_close(model);
}

Test(api, missing_truncated_and_garbage_files_are_refused_with_their_name) {
    ferry_model *model = NULL;
    cr_assert_eq(ferry_model_open("/nonexistent/dir/model.ferry", NULL, &model), FERRY_ERR_IO);
    cr_assert(strstr(ferry_last_error(), "/nonexistent/dir/model.ferry"), "%s", ferry_last_error());
    size_t bytes = 0;
    char *whole = test_read_file(model_path, &bytes);
    cr_assert_not_null(whole);
    char *broken = test_path(scratch_dir, "broken.ferry");
    const size_t lengths[] = {0, 10, 64, 4096, bytes / 2, bytes - 1};
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        cr_assert_eq(test_write_file(broken, whole, lengths[i]), 0);
        ferry_model_options options = {.backend = "cpu"};
        ferry_status status = ferry_model_open(broken, &options, &model);
        cr_assert_neq(status, FERRY_OK, "a file cut to %zu of %zu bytes opened", lengths[i], bytes);
        cr_assert_null(model);
        cr_assert(strlen(ferry_last_error()) > 0);
    }
    free(broken);
    free(whole);
}

Test(api, a_flipped_weight_byte_fails_checksum_verification_only_when_asked) {
    ferry_file *file = NULL;
    cr_assert_eq(ferry_file_open(model_path, &file), FERRY_OK, "%s", ferry_last_error());
    const ferry_tensor_entry *entry = &file->layout.tensors[file->layout.n_tensors - 1];
    uint64_t offset = entry->offset + entry->bytes / 2;
    ferry_file_close(file);
    size_t bytes = 0;
    char *whole = test_read_file(model_path, &bytes);
    whole[offset] ^= 0x10;
    char *flipped = test_path(scratch_dir, "flipped.ferry");
    cr_assert_eq(test_write_file(flipped, whole, bytes), 0);
    ferry_model *model = NULL;
    ferry_model_options verify = {.backend = "cpu", .verify_checksums = 1};
    cr_assert_eq(ferry_model_open(flipped, &verify, &model), FERRY_ERR_CHECKSUM);
    cr_assert_null(model);
    ferry_model_options trust = {.backend = "cpu", .verify_checksums = 0};
    cr_assert_eq(ferry_model_open(flipped, &trust, &model), FERRY_OK, "%s", ferry_last_error());
    ferry_model_close(model);
    free(flipped);
    free(whole);
}

Test(api, info_describes_the_synthesised_model) {
    ferry_model *model = open_cpu();
    ferry_model_info info;
    cr_assert_eq(ferry_model_get_info(model, &info), FERRY_OK);
    cr_assert_str_eq(info.backend, "cpu");
    cr_assert(info.vocab_size > 0 && info.n_layers > 0 && info.hidden_size > 0);
    cr_assert(info.n_heads % info.n_kv_heads == 0);
    cr_assert(info.n_parameters > (uint64_t)info.vocab_size * info.hidden_size);
    ferry_model_close(model);
}

/* Stop after `limit` tokens, counting what the callback saw. */
typedef struct stopper {
    int limit;
    int seen;
    int32_t tokens[64];
} stopper;

static int stop_after_limit(void *user, int32_t token) {
    stopper *s = user;
    s->tokens[s->seen++] = token;
    return s->seen >= s->limit;
}

Test(api, greedy_generation_is_the_argmax_chain_of_forward_and_repeats) {
    ferry_model *model = open_cpu();
    ferry_model_info info;
    ferry_model_get_info(model, &info);
    ferry_session *session = new_session(model, 2, 64);
    int32_t prompt[] = {1, 7, 3, 9};
    ferry_generate_params params = {.sampling = ferry_sampling_default(), .max_new_tokens = 12,
                                    .ignore_eos = 1};
    params.sampling.greedy = 1;
    int32_t first[12], second[12];
    int n_first = 0, n_second = 0;
    cr_assert_eq(ferry_generate(session, prompt, 4, &params, first, 12, &n_first), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(ferry_generate(session, prompt, 4, &params, second, 12, &n_second), FERRY_OK);
    cr_assert_eq(n_first, 12);
    cr_assert_eq(n_second, 12);
    cr_assert_eq(memcmp(first, second, sizeof first), 0);

    /* the same chain by hand in slot 1: forward, argmax, feed back */
    float *logits = malloc(sizeof(float) * info.vocab_size);
    int slot = 1, n = 4;
    ferry_batch batch = {.n_seqs = 1, .seq_ids = &slot, .n_tokens = &n, .tokens = prompt};
    for (int i = 0; i < 12; i++) {
        cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_LAST, logits, (size_t)info.vocab_size),
                     FERRY_OK);
        int32_t best = 0;
        for (int v = 1; v < info.vocab_size; v++)
            if (logits[v] > logits[best]) best = v;
        cr_assert_eq(best, first[i], "token %d: argmax %d, generate %d", i, best, first[i]);
        n = 1;
        batch.tokens = &first[i];
    }
    free(logits);

    /* a callback that says stop ends generation normally, its token included */
    stopper stop = {.limit = 5};
    params.on_token = stop_after_limit;
    params.user = &stop;
    int32_t partial[12];
    int n_partial = 0;
    cr_assert_eq(ferry_generate(session, prompt, 4, &params, partial, 12, &n_partial), FERRY_OK);
    cr_assert_eq(n_partial, 5);
    cr_assert_eq(stop.seen, 5);
    cr_assert_eq(memcmp(partial, first, 5 * sizeof(int32_t)), 0);
    cr_assert_eq(memcmp(stop.tokens, first, 5 * sizeof(int32_t)), 0);
    ferry_session_free(session);
    ferry_model_close(model);
}

Test(api, sampled_generation_repeats_with_the_same_seed) {
    ferry_model *model = open_cpu();
    ferry_session *session = new_session(model, 1, 64);
    int32_t prompt[] = {2, 4, 6};
    ferry_generate_params params = {.sampling = ferry_sampling_default(), .max_new_tokens = 20,
                                    .ignore_eos = 1};
    params.sampling.temperature = 1.5f;
    params.sampling.top_p = 0.95f;
    params.sampling.seed = test_seed();
    int32_t a[20], b[20];
    int n_a = 0, n_b = 0;
    cr_assert_eq(ferry_generate(session, prompt, 3, &params, a, 20, &n_a), FERRY_OK);
    cr_assert_eq(ferry_generate(session, prompt, 3, &params, b, 20, &n_b), FERRY_OK);
    cr_assert_eq(n_a, 20);
    cr_assert_eq(memcmp(a, b, sizeof a), 0);
    ferry_session_free(session);
    ferry_model_close(model);
}

/* Run the CLI; returns its exit status and its stderr (malloc'd). */
static int run_cli(const char *arguments, char **out_stdout, char **out_stderr) {
    return test_cli_capture(scratch_dir, NULL, arguments, out_stdout, out_stderr);
}

Test(api, logits_command_writes_every_position_as_the_api_computes_it) {
    char *out_file = test_path(scratch_dir, "logits.f32");
    char arguments[4096];
    snprintf(arguments, sizeof arguments, "logits --model %s --tokens 1,5,9,2,7 --out %s --backend cpu",
             model_path, out_file);
    char *err = NULL;
    int rc = run_cli(arguments, NULL, &err);
    cr_assert_eq(rc, 0, "ferry logits: %s", err);
    free(err);
    ferry_model *model = open_cpu();
    ferry_model_info info;
    ferry_model_get_info(model, &info);
    size_t bytes = 0;
    char *written = test_read_file(out_file, &bytes);
    cr_assert_eq(bytes, (size_t)5 * info.vocab_size * sizeof(float));
    ferry_session *session = new_session(model, 1, 5);
    int32_t tokens[] = {1, 5, 9, 2, 7};
    int n = 5;
    ferry_batch batch = {.n_seqs = 1, .n_tokens = &n, .tokens = tokens};
    float *logits = malloc(bytes);
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_ALL, logits, (size_t)5 * info.vocab_size),
                 FERRY_OK);
    cr_assert_eq(memcmp(written, logits, bytes), 0, "file differs from ferry_forward");
    for (size_t i = 0; i < (size_t)5 * info.vocab_size; i++) cr_assert(isfinite(logits[i]));
    free(logits), free(written), free(out_file);
    ferry_session_free(session);
    ferry_model_close(model);
}

Test(api, generate_command_prints_the_tokens_of_ferry_generate) {
    char arguments[4096];
    snprintf(arguments, sizeof arguments,
             "generate --model %s --tokens 3,1,4,1,5 --max-new-tokens 6 --greedy --ignore-eos "
             "--backend cpu --threads 2",
             model_path);
    char *out = NULL, *err = NULL;
    int rc = run_cli(arguments, &out, &err);
    cr_assert_eq(rc, 0, "ferry generate: %s", err);
    cr_assert(strstr(err, "tok/s"), "timing on stderr: %s", err);
    ferry_model *model = open_cpu();
    ferry_session *session = new_session(model, 1, 16);
    int32_t prompt[] = {3, 1, 4, 1, 5}, tokens[6];
    int n_out = 0;
    ferry_generate_params params = {.sampling = ferry_sampling_default(), .max_new_tokens = 6,
                                    .ignore_eos = 1};
    params.sampling.greedy = 1;
    cr_assert_eq(ferry_generate(session, prompt, 5, &params, tokens, 6, &n_out), FERRY_OK);
    char expected[256] = "";
    for (int i = 0; i < n_out; i++)
        snprintf(expected + strlen(expected), sizeof expected - strlen(expected), "%s%d",
                 i ? "," : "", (int)tokens[i]);
    strcat(expected, "\n");
    cr_assert_str_eq(out, expected);
    free(out), free(err);
    ferry_session_free(session);
    ferry_model_close(model);
}

/* Each case: arguments (model path substituted for %s), expected exit status,
 * a piece of the one-line message. */
Test(api, bad_command_lines_fail_with_a_one_line_reason) {
    const struct {
        const char *arguments;
        int exit_status;
        const char *message;
    } cases[] = {
        {"logits --model %s --tokens 1,x,3 --out /dev/null", 2, "token list"},
        {"logits --model %s --tokens 1,99999999,3 --out /dev/null", 1, "vocabulary"},
        {"logits --model %s --tokens 1,2", 2, "--out"},
        {"logits --model %s/missing --tokens 1 --out /dev/null", 1, "missing"},
        {"logits --model %s --tokens 1 --out /nonexistent/dir/x", 1, "/nonexistent/dir/x"},
        {"generate --model %s --tokens 1,2", 2, "--max-new-tokens"},
        {"generate --model %s --tokens 1,2 --max-new-tokens 3 --top-p 1.5", 2, "--top-p"},
        {"generate --model %s --tokens 1,2 --max-new-tokens 3 --temperature abc", 2, "--temperature"},
        {"generate --model %s --tokens 1,2 --max-new-tokens 3 --greedy --temperature 2", 2, "--greedy"},
        {"generate --model %s --tokens 1,2 --max-new-tokens 3 --threads -1", 2, "--threads"},
        {"generate --model %s --tokens -5 --max-new-tokens 3", 1, "vocabulary"},
        {"generate --model %s --tokens 1 --max-new-tokens 3 --backend tpu", 1, "tpu"},
        {"generate --model %s --tokens 1 --max-new-tokens 3 --wat", 2, "--wat"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char arguments[4096];
        snprintf(arguments, sizeof arguments, cases[i].arguments, model_path);
        char *err = NULL;
        int rc = run_cli(arguments, NULL, &err);
        cr_assert_eq(rc, cases[i].exit_status, "`ferry %s` exited %d: %s", arguments, rc, err);
        cr_assert(strstr(err, cases[i].message), "`ferry %s`: message lacks '%s': %s", arguments,
                  cases[i].message, err);
        free(err);
    }
}

Test(api, cuda_backend_says_it_is_unavailable_when_it_is) {
    char arguments[4096];
    snprintf(arguments, sizeof arguments,
             "generate --model %s --tokens 1 --max-new-tokens 1 --backend cuda", model_path);
    char *err = NULL;
    int rc = run_cli(arguments, NULL, &err);
    if (rc == 0) {
        free(err);
        cr_skip_test("a CUDA backend is available here");
    }
    cr_assert_eq(rc, 1, "%s", err);
    cr_assert(strstr(err, "not available") || strstr(err, "no usable"), "%s", err);
    free(err);
}

Test(api, help_is_printed_for_both_commands) {
    char *out = NULL;
    cr_assert_eq(run_cli("logits --help", &out, NULL), 0);
    cr_assert(strstr(out, "--tokens"));
    free(out);
    cr_assert_eq(run_cli("generate --help", &out, NULL), 0);
    cr_assert(strstr(out, "--top-p") && strstr(out, "--seed"));
    free(out);
}
