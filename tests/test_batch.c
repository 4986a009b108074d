/*
 * test_batch.c — `ferry batch` on a tiny random model: greedy results equal
 * one-at-a-time ferry_generate, sampled results do not depend on the batch
 * size, a run killed (SIGKILL, SIGINT) at random points and rerun loses and
 * duplicates nothing, a torn last line is repaired, bad and duplicate lines
 * are reported by number, empty input, a prompt longer than the context,
 * an unwritable output path, a stop string cutting a request short, the
 * admission order (longest first within the window) and streaming leaving
 * every result as it was.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/base.h"
#include "helpers.h"
#include "runtime/batch.h"
#include "runtime/tokenizer.h"

typedef struct fixture {
    char *dir, *model, *input, *output, *errors;
} fixture;

static fixture make_fixture(void) {
    fixture f;
    f.dir = test_tempdir();
    f.model = test_path(f.dir, "tiny.ferry");
    f.input = test_path(f.dir, "in.jsonl");
    f.output = test_path(f.dir, "out.jsonl");
    f.errors = test_path(f.dir, "err.txt");
    char command[1024];
    snprintf(command, sizeof command, "%s synth --preset tiny %s --dtype f32 --seed 11", test_cli(),
             f.model);
    cr_assert_eq(test_run(command, NULL, NULL), 0, "%s", command);
    return f;
}

static void free_fixture(fixture *f) {
    test_rmtree(f->dir);
    free(f->dir);
    free(f->model);
    free(f->input);
    free(f->output);
    free(f->errors);
}

/* n requests of random token prompts (ids < 512) and lengths. */
static void write_requests(const char *path, uint64_t *rng, int n, int max_prompt, int max_new,
                           const char *extra) {
    FILE *file = fopen(path, "w");
    cr_assert_not_null(file);
    for (int i = 0; i < n; i++) {
        int n_prompt = 1 + (int)(test_rand_u64(rng) % (uint64_t)max_prompt);
        fprintf(file, "{\"id\": \"r%d\", \"tokens\": [", i);
        for (int k = 0; k < n_prompt; k++)
            fprintf(file, k ? ", %d" : "%d", (int)(test_rand_u64(rng) % 512));
        fprintf(file, "], \"max_new_tokens\": %d%s}\n", 1 + (int)(test_rand_u64(rng) % (uint64_t)max_new),
                extra);
    }
    fclose(file);
}

static int run_batch(const fixture *f, const char *options) {
    char command[2048];
    snprintf(command, sizeof command, "%s batch --model %s --input %s --output %s --backend cpu %s",
             test_cli(), f->model, f->input, f->output, options);
    return test_run(command, NULL, f->errors);
}

/* The output's lines sorted, as one string (order of finishing varies). */
static char *sorted_output(const char *path) {
    char *text = test_read_file(path, NULL);
    cr_assert_not_null(text, "no output %s", path);
    size_t n = 0;
    char *lines[4096];
    for (char *p = strtok(text, "\n"); p && n < 4096; p = strtok(NULL, "\n")) lines[n++] = p;
    for (size_t i = 1; i < n; i++)
        for (size_t k = i; k > 0 && strcmp(lines[k - 1], lines[k]) > 0; k--) {
            char *t = lines[k];
            lines[k] = lines[k - 1];
            lines[k - 1] = t;
        }
    size_t total = 1;
    for (size_t i = 0; i < n; i++) total += strlen(lines[i]) + 1;
    char *joined = calloc(1, total);
    for (size_t i = 0; i < n; i++) {
        strcat(joined, lines[i]);
        strcat(joined, "\n");
    }
    free(text);
    return joined;
}

static int count_lines(const char *path) {
    char *text = test_read_file(path, NULL);
    int n = 0;
    for (char *p = text; p && *p; p++) n += *p == '\n';
    free(text);
    return n;
}

/* Every line of f's output (greedy, --ignore-eos) equals ferry_generate
 * run on its request alone; there are n_requests lines. */
static void expect_greedy_results_of_generate(const fixture *f, int n_requests) {
    ferry_model *model = NULL;
    ferry_model_options options = {.backend = "cpu"};
    cr_assert_eq(ferry_model_open(f->model, &options, &model), FERRY_OK, "%s", ferry_last_error());
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, 1, 64, &session), FERRY_OK);
    char *inputs = test_read_file(f->input, NULL), *outputs = test_read_file(f->output, NULL);
    int n_checked = 0;
    for (char *line = strtok(outputs, "\n"); line; line = strtok(NULL, "\n"), n_checked++) {
        cJSON *result = cJSON_Parse(line);
        const char *id = cJSON_GetObjectItem(result, "id")->valuestring;
        /* find the request line with this id */
        char needle[64];
        snprintf(needle, sizeof needle, "{\"id\": \"%s\",", id);
        const char *request_text = strstr(inputs, needle);
        cr_assert_not_null(request_text);
        cJSON *request = cJSON_ParseWithOpts(request_text, NULL, 0);
        int32_t prompt[64];
        int n_prompt = 0;
        for (const cJSON *t = cJSON_GetObjectItem(request, "tokens")->child; t; t = t->next)
            prompt[n_prompt++] = t->valueint;
        int max_new = cJSON_GetObjectItem(request, "max_new_tokens")->valueint;
        ferry_generate_params params = {.sampling = ferry_sampling_default(),
                                        .max_new_tokens = max_new, .ignore_eos = 1};
        params.sampling.greedy = 1;
        int32_t expected[64];
        int n_expected = 0;
        cr_assert_eq(ferry_generate(session, prompt, n_prompt, &params, expected, 64, &n_expected),
                     FERRY_OK, "%s", ferry_last_error());
        const cJSON *tokens = cJSON_GetObjectItem(result, "tokens");
        cr_assert_eq(cJSON_GetArraySize(tokens), n_expected, "request %s", id);
        int k = 0;
        for (const cJSON *t = tokens->child; t; t = t->next, k++)
            cr_assert_eq(t->valueint, expected[k], "request %s token %d", id, k);
        cr_assert_str_eq(cJSON_GetObjectItem(result, "finish_reason")->valuestring, "length");
        cr_assert_eq(cJSON_GetObjectItem(result, "prompt_tokens")->valueint, n_prompt);
        cJSON_Delete(request);
        cJSON_Delete(result);
    }
    cr_assert_eq(n_checked, n_requests);
    free(inputs);
    free(outputs);
    ferry_session_free(session);
    ferry_model_close(model);
}

Test(batch, greedy_results_equal_one_at_a_time_generate) {
    fixture f = make_fixture();
    uint64_t rng = test_seed();
    write_requests(f.input, &rng, 12, 30, 20, "");
    cr_assert_eq(run_batch(&f, "--batch 5 --greedy --ignore-eos"), 0);
    expect_greedy_results_of_generate(&f, 12);
    free_fixture(&f);
}

Test(batch, admission_order_and_streaming_change_no_result) {
    fixture f = make_fixture();
    uint64_t rng = test_seed();
    write_requests(f.input, &rng, 24, 30, 20, "");
    /* A 4-layer model: under --gpu-mem 1800K one layer is resident and
     * three stream from DRAM. */
    char command[1024];
    snprintf(command, sizeof command, "%s synth --preset tiny %s --dtype f32 --seed 11 --layers 4",
             test_cli(), f.model);
    cr_assert_eq(test_run(command, NULL, NULL), 0, "%s", command);
    const char *runs[] = {
        "--admission-window 1",         /* input order */
        "--admission-window 3",
        "",                             /* the longest of the whole input first */
        "--gpu-mem 1800K --max-context 50",
        "--gpu-mem 1800K --max-context 50 --admission-window 1 --prefill-tokens 40",
    };
    char *reference = NULL;
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        unlink(f.output);
        char options[256];
        snprintf(options, sizeof options, "--batch 5 --greedy --ignore-eos %s", runs[i]);
        cr_assert_eq(run_batch(&f, options), 0, "%s", options);
        char *errors = test_read_file(f.errors, NULL);
        if (strstr(runs[i], "--gpu-mem"))
            cr_assert(strstr(errors, "weight passes: 1.00 per step"), "%s: %s", options, errors);
        free(errors);
        char *got = sorted_output(f.output);
        if (!reference) {
            reference = got;
            expect_greedy_results_of_generate(&f, 24);
        } else {
            cr_assert_str_eq(got, reference, "%s", options);
            free(got);
        }
    }
    free(reference);
    free_fixture(&f);
}

Test(batch, sampled_results_do_not_depend_on_the_batch_size) {
    fixture f = make_fixture();
    uint64_t rng = test_seed();
    write_requests(f.input, &rng, 20, 25, 25, ", \"temperature\": 0.9, \"top_p\": 0.95, \"seed\": 7");
    char *reference = NULL;
    const char *sizes[] = {"--batch 1", "--batch 3", "--batch 8", "--batch 20 --prefill-tokens 7"};
    for (int i = 0; i < 4; i++) {
        unlink(f.output);
        cr_assert_eq(run_batch(&f, sizes[i]), 0, "%s", sizes[i]);
        char *got = sorted_output(f.output);
        if (!reference) reference = got;
        else {
            cr_assert_str_eq(got, reference, "%s", sizes[i]);
            free(got);
        }
    }
    free(reference);
    free_fixture(&f);
}

/* Start the batch run in the background and kill it with signal_number
 * after delay_us; returns its exit status (or -signal). */
static int run_and_kill(const fixture *f, const char *options, int signal_number, unsigned delay_us) {
    char command[2048];
    snprintf(command, sizeof command, "exec %s batch --model %s --input %s --output %s "
             "--backend cpu %s 2>>%s", test_cli(), f->model, f->input, f->output, options, f->errors);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", command, (char *)NULL);
        _exit(127);
    }
    usleep(delay_us);
    kill(pid, signal_number);
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

static void check_resume_after(int signal_number) {
    fixture f = make_fixture();
    uint64_t rng = test_seed();
    const int n_requests = 40;
    write_requests(f.input, &rng, n_requests, 20, 60, ", \"temperature\": 0.8, \"seed\": 3");
    const char *options = "--batch 2 --ignore-eos";
    uint64_t start_ns = ferry_now_ns();
    cr_assert_eq(run_batch(&f, options), 0);
    uint64_t run_us = (ferry_now_ns() - start_ns) / 1000;
    char *reference = sorted_output(f.output);
    unlink(f.output);
    /* kill at a random point of what is left of the run, so kills land
     * mid-run; a run that beat the kill (a less loaded machine) is redone
     * with a shorter window until one is interrupted */
    int n_interrupted = 0;
    uint64_t scale = 2;
    for (int attempt = 0; attempt < 10; attempt++) {
        int n_left = n_requests - count_lines(f.output);
        if (n_left <= 0) {
            if (n_interrupted > 0 || attempt >= 8) break;
            unlink(f.output);
            scale *= 2;
            n_left = n_requests;
        }
        uint64_t window_us = run_us * (uint64_t)n_left / (uint64_t)n_requests / scale;
        unsigned delay_us = 2000 + (unsigned)(test_rand_u64(&rng) % (window_us + 1));
        int status = run_and_kill(&f, options, signal_number, delay_us);
        n_interrupted += status != 0;
        cr_log_info("attempt %d: signal %d after %u us of a %llu us run: status %d, %d lines",
                    attempt, signal_number, delay_us, (unsigned long long)run_us, status,
                    count_lines(f.output));
    }
    cr_expect_gt(n_interrupted, 0, "no attempt was interrupted mid-run");
    int rc = run_batch(&f, options);
    cr_assert_eq(rc, 0);
    char *got = sorted_output(f.output);
    cr_assert_str_eq(got, reference, "resumed output differs from an uninterrupted run");
    cr_assert_eq(count_lines(f.output), n_requests);
    free(got);
    free(reference);
    free_fixture(&f);
}

Test(batch, a_run_killed_at_random_points_resumes_without_loss_or_duplicates) {
    check_resume_after(SIGKILL);
}

Test(batch, sigint_stops_after_flushing_and_a_rerun_finishes) { check_resume_after(SIGINT); }

Test(batch, a_torn_last_line_is_cut_and_its_request_redone) {
    fixture f = make_fixture();
    uint64_t rng = test_seed();
    write_requests(f.input, &rng, 6, 10, 10, "");
    cr_assert_eq(run_batch(&f, "--greedy"), 0);
    char *reference = sorted_output(f.output);
    size_t bytes = 0;
    char *text = test_read_file(f.output, &bytes);
    cr_assert_eq(test_write_file(f.output, text, bytes - 17), 0);   /* a crash mid-write */
    cr_assert_eq(run_batch(&f, "--greedy"), 0);
    char *errors = test_read_file(f.errors, NULL);
    cr_assert(strstr(errors, "torn last line"), "%s", errors);
    char *got = sorted_output(f.output);
    cr_assert_str_eq(got, reference);
    free(got);
    free(errors);
    free(text);
    free(reference);
    free_fixture(&f);
}

Test(batch, bad_and_duplicate_lines_are_reported_by_number_and_skipped) {
    fixture f = make_fixture();
    const char lines[] = "{\"id\": 1, \"tokens\": [1, 2, 3]}\n"
                         "{\"id\": 2, \"tokens\": [1, \"x\"]}\n"
                         "this is not json\n"
                         "\n"
                         "{\"tokens\": [4]}\n"
                         "{\"id\": 1, \"tokens\": [5]}\n"
                         "{\"id\": 3, \"tokens\": [7, 8], \"max_new_tokens\": 2}\n";
    cr_assert_eq(test_write_file(f.input, lines, sizeof lines - 1), 0);
    cr_assert_eq(run_batch(&f, "--max-new-tokens 3 --greedy"), 0);
    char *errors = test_read_file(f.errors, NULL);
    const char *expected[] = {"in.jsonl:2:", "in.jsonl:3:", "in.jsonl:5:", "in.jsonl:6: duplicate id 1"};
    for (int i = 0; i < 4; i++) cr_assert(strstr(errors, expected[i]), "no '%s' in %s", expected[i], errors);
    cr_assert_eq(count_lines(f.output), 2);
    free(errors);
    unlink(f.output);
    cr_assert_neq(run_batch(&f, "--max-new-tokens 3 --greedy --strict"), 0);
    char *output = test_read_file(f.output, NULL);
    cr_assert(!output || output[0] == '\0', "strict run wrote %s", output);
    free(output);
    free_fixture(&f);
}

Test(batch, empty_input_succeeds_and_writes_nothing) {
    fixture f = make_fixture();
    cr_assert_eq(test_write_file(f.input, "", 0), 0);
    cr_assert_eq(run_batch(&f, ""), 0);
    cr_assert_eq(count_lines(f.output), 0);
    free_fixture(&f);
}

Test(batch, a_prompt_longer_than_the_context_fails_alone) {
    fixture f = make_fixture();
    FILE *file = fopen(f.input, "w");
    fprintf(file, "{\"id\": \"short\", \"tokens\": [1, 2]}\n{\"id\": \"long\", \"tokens\": [");
    for (int i = 0; i < 40; i++) fprintf(file, i ? ", %d" : "%d", i);
    fprintf(file, "]}\n{\"id\": \"short2\", \"tokens\": [3]}\n");
    fclose(file);
    cr_assert_eq(run_batch(&f, "--max-context 16 --max-new-tokens 4 --greedy --ignore-eos"), 1);
    char *output = test_read_file(f.output, NULL);
    cr_assert(strstr(output, "{\"id\": \"long\", \"error\": \"40 prompt tokens"), "%s", output);
    cr_assert(strstr(output, "{\"id\": \"short\", \"text\""), "%s", output);
    cr_assert(strstr(output, "{\"id\": \"short2\", \"text\""), "%s", output);
    free(output);
    free_fixture(&f);
}

Test(batch, an_unwritable_output_path_fails_with_a_clear_message) {
    fixture f = make_fixture();
    write_requests(f.input, &(uint64_t){1}, 2, 3, 3, "");
    free(f.output);
    f.output = test_path(f.dir, "missing/dir/out.jsonl");
    cr_assert_eq(run_batch(&f, ""), 1);
    char *errors = test_read_file(f.errors, NULL);
    cr_assert(strstr(errors, "missing/dir/out.jsonl"), "%s", errors);
    free(errors);
    free_fixture(&f);
}

Test(batch, a_stop_string_ends_the_request_and_cuts_its_text) {
    fixture f = make_fixture();
    const char *tokenizer = "--tokenizer " FERRY_SOURCE_DIR "/tests/fixtures/tokenizers/tiny.json";
    char options[1024];
    const char plain[] = "{\"id\": 1, \"prompt\": \"the people of the world\"}\n";
    cr_assert_eq(test_write_file(f.input, plain, sizeof plain - 1), 0);
    snprintf(options, sizeof options, "%s --greedy --ignore-eos --max-new-tokens 40", tokenizer);
    cr_assert_eq(run_batch(&f, options), 0);
    char *line = test_read_file(f.output, NULL), *full = NULL;
    size_t full_bytes = 0;
    cr_assert_eq(ferry_json_get_string(line, "text", &full, &full_bytes), FERRY_OK, "%s", line);
    /* a stop: two ASCII letters from the second half of the text */
    char stop[3] = "";
    for (size_t i = full_bytes / 2; i + 1 < full_bytes && !stop[0]; i++)
        if (((full[i] | 32) >= 'a' && (full[i] | 32) <= 'z') &&
            ((full[i + 1] | 32) >= 'a' && (full[i + 1] | 32) <= 'z')) {
            stop[0] = full[i];
            stop[1] = full[i + 1];
        }
    cr_assert(stop[0], "no two letters in '%s'", full);
    size_t cut = (size_t)((char *)memmem(full, full_bytes, stop, 2) - full);
    char request[256];
    int n = snprintf(request, sizeof request, "{\"id\": 1, \"prompt\": \"the people of the world\", "
                     "\"stop\": [\"%s\"]}\n", stop);
    cr_assert_eq(test_write_file(f.input, request, (size_t)n), 0);
    unlink(f.output);
    cr_assert_eq(run_batch(&f, options), 0);
    char *stopped_line = test_read_file(f.output, NULL), *text = NULL;
    size_t text_bytes = 0;
    cr_assert_eq(ferry_json_get_string(stopped_line, "text", &text, &text_bytes), FERRY_OK);
    cr_assert(text_bytes == cut && memcmp(text, full, cut) == 0, "stop '%s': got '%s', full '%s'",
              stop, text, full);
    cr_assert(strstr(stopped_line, "\"finish_reason\": \"stop\""), "%s", stopped_line);
    free(text);
    free(stopped_line);
    free(full);
    free(line);
    free_fixture(&f);
}

/* ------------------------------------------------- the admission window */

enum { MAX_LOGGED = 8 };

/* Requests handed to ferry_batch_run and the order they were admitted in
 * (with one slot: the order of their first tokens). */
typedef struct admission_log {
    ferry_batch_request requests[MAX_LOGGED];
    int n_requests, n_handed;
    int64_t admitted[MAX_LOGGED];
    int n_admitted;
} admission_log;

static int hand_next(void *user, ferry_batch_request *out) {
    admission_log *log = user;
    if (log->n_handed == log->n_requests) return 0;
    *out = log->requests[log->n_handed++];
    return 1;
}

static int log_first_token(void *user, int64_t handle, const int32_t *tokens, int n_tokens) {
    admission_log *log = user;
    (void)tokens;
    if (n_tokens == 1) log->admitted[log->n_admitted++] = handle;
    return 0;
}

static ferry_status ignore_result(void *user, const ferry_batch_result *result) {
    (void)user;
    cr_assert_null(result->error, "request %lld: %s", (long long)result->handle, result->error);
    return FERRY_OK;
}

/* Run requests of these max_new_tokens and prompt lengths through one
 * slot with the window; expect this admission order. */
static void expect_admission_order(ferry_session *session, int window, int n, const int *max_new,
                                   const int *n_prompt, const int64_t *expected) {
    static const int32_t prompt[8] = {5, 6, 7, 8, 9, 10, 11, 12};
    admission_log log = {.n_requests = n};
    for (int i = 0; i < n; i++) {
        ferry_batch_request *request = &log.requests[i];
        *request = (ferry_batch_request){.handle = i, .prompt = prompt, .n_prompt = n_prompt[i],
                                         .max_new_tokens = max_new[i],
                                         .sampling = ferry_sampling_default(), .ignore_eos = 1};
        request->sampling.greedy = 1;
    }
    ferry_batch_callbacks callbacks = {.user = &log, .next_request = hand_next,
                                       .on_token = log_first_token, .on_result = ignore_result};
    ferry_batch_options options = {.admission_window = window};
    cr_assert_eq(ferry_batch_run(session, &options, &callbacks, NULL), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(log.n_admitted, n, "window %d", window);
    for (int i = 0; i < n; i++)
        cr_assert_eq(log.admitted[i], expected[i], "window %d: admission %d is request %lld, "
                     "expected %lld", window, i, (long long)log.admitted[i],
                     (long long)expected[i]);
}

Test(batch, the_admission_window_admits_its_longest_request_first) {
    fixture f = make_fixture();
    ferry_model *model = NULL;
    ferry_model_options options = {.backend = "cpu"};
    cr_assert_eq(ferry_model_open(f.model, &options, &model), FERRY_OK, "%s", ferry_last_error());
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, 1, 32, &session), FERRY_OK);
    const int max_new[6] = {2, 5, 3, 9, 1, 4}, three[6] = {3, 3, 3, 3, 3, 3};
    /* window 1: arrival order */
    const int64_t in_order[6] = {0, 1, 2, 3, 4, 5};
    expect_admission_order(session, 1, 6, max_new, three, in_order);
    /* window 3: {2,5,3} -> 5; {2,3,9} -> 9; {2,3,1} -> 3; {2,1,4} -> 4; 2; 1 */
    const int64_t window3[6] = {1, 3, 2, 5, 0, 4};
    expect_admission_order(session, 3, 6, max_new, three, window3);
    /* default (4 x one slot): {2,5,3,9} -> 9; {2,5,3,1} -> 5; {2,3,1,4} -> 4; 3; 2; 1 */
    const int64_t window4[6] = {3, 1, 5, 2, 0, 4};
    expect_admission_order(session, 0, 6, max_new, three, window4);
    /* equal max_new_tokens: the longer prompt, then the earlier request */
    const int same[3] = {4, 4, 4}, prompts[3] = {2, 6, 6};
    const int64_t ties[3] = {1, 2, 0};
    expect_admission_order(session, 3, 3, same, prompts, ties);
    ferry_session_free(session);
    ferry_model_close(model);
    free_fixture(&f);
}
