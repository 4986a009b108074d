/*
 * cmd_batch.c — `ferry batch`: a JSON-lines file of prompts in, a file of
 * completions out, through the continuous-batching scheduler
 * (runtime/batch.c).  Every result is appended and flushed as it
 * finishes; a rerun skips ids already in the output (a torn last line is
 * cut first); SIGINT/SIGTERM stop after the current step.  Bad input lines
 * are reported with their line number and skipped (--strict: fatal).
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>

#include "offload/offload.h"
#include "runtime/batch.h"
#include "runtime/engine.h"
#include "runtime/format.h"
#include "runtime/tokenizer.h"
#include "tools/batch_input.h"
#include "tools/cli.h"
#include "tools/model_flags.h"
#include "tools/options.h"

static const char *const command = "batch";

static void print_help(FILE *out) {
    fprintf(out,
            "usage: ferry batch --model M --input IN.jsonl --output OUT.jsonl [options]\n\n"
            "Input lines: {\"id\": ..., \"prompt\": \"...\"} or {\"id\": ..., \"tokens\": [...]},\n"
            "optionally with max_new_tokens, temperature (0: greedy), top_p, top_k, seed,\n"
            "stop (a string or a list), ignore_eos.  Output lines: {\"id\", \"text\", \"tokens\",\n"
            "\"finish_reason\", \"prompt_tokens\", \"completion_tokens\"} (or \"error\"), appended\n"
            "as each request finishes.  Rerunning with the same --output resumes.\n\n"
            "  --model M              the .ferry file\n"
            "  --input FILE           requests, one JSON object per line\n"
            "  --output FILE          results (appended; ids already there are skipped)\n"
            "  --batch N              sequences per step (default 0: auto: the plan's best\n"
            "                         predicted tokens/s within --gpu-mem, else up to 16)\n"
            "  --max-new-tokens N     default per request (default 128)\n"
            "  --greedy / --temperature T / --top-k K / --top-p P / --seed S\n"
            "                         default sampling (as in ferry generate)\n"
            "  --ignore-eos           keep going past end-of-sequence tokens\n"
            "  --max-context N        tokens per sequence (default: the longest request)\n"
            "  --prefill-tokens N     prompt tokens per step at most (default 512; 2048 when\n"
            "                         layers stream: one weight pass carries them all)\n"
            "  --admission-window N   waiting requests looked at when a slot frees; the one\n"
            "                         with the most work left goes first (default: all of\n"
            "                         the input; 1: input order)\n"
            "  --tokenizer FILE       a tokenizer.json instead of the model's\n"
            "  --strict               a malformed input line is fatal\n"
            "  --backend B / --threads N   as in ferry generate\n");
    cli_memory_flags_help(out, NULL, 22);
}

typedef struct batch_run {
    request_line *requests;
    size_t n_requests, next, n_done;
    FILE *output;
    const char *output_path;
    struct ferry_tokenizer *tokenizer;
    int progress_tty;
    double start_ms, last_progress_ms;
    ferry_batch_stats stats;
    uint64_t completion_tokens;
} batch_run;

static volatile sig_atomic_t stop_requested = 0;

static void on_signal(int signal_number) {
    (void)signal_number;
    stop_requested = 1;
}

/* ------------------------------------------------------------ results */

static int next_request(void *user, ferry_batch_request *out) {
    batch_run *run = user;
    if (run->next >= run->n_requests) return 0;
    size_t index = run->next++;
    const request_line *request = &run->requests[index];
    *out = (ferry_batch_request){.handle = (int64_t)index, .prompt = request->prompt,
                                 .n_prompt = request->n_prompt,
                                 .max_new_tokens = request->max_new_tokens,
                                 .sampling = request->sampling, .ignore_eos = request->ignore_eos};
    return 1;
}

/* Decoded completion; with stops, cut at the first stop string (its
 * position in *stop_at, else -1). */
static char *completion_text(const batch_run *run, const request_line *request,
                             const int32_t *tokens, int n_tokens, size_t *bytes, long *stop_at) {
    char *text = NULL;
    *bytes = 0;
    *stop_at = -1;
    if (!run->tokenizer ||
        ferry_tokenizer_decode(run->tokenizer, tokens, (size_t)n_tokens, 1, &text, bytes) != FERRY_OK)
        return NULL;
    for (int i = 0; i < request->n_stops; i++) {
        const char *found = memmem(text, *bytes, request->stops[i], strlen(request->stops[i]));
        if (found && (*stop_at < 0 || found - text < *stop_at)) *stop_at = found - text;
    }
    if (*stop_at >= 0) *bytes = (size_t)*stop_at;
    return text;
}

/* A stop string completed by the newest token lies in the last few tokens
 * (each gives at least a byte): decode only that tail, so checking stays
 * linear in the completion's length.  The written text is cut on the
 * whole decode (completion_text). */
static int check_stop(void *user, int64_t handle, const int32_t *tokens, int n_tokens) {
    batch_run *run = user;
    const request_line *request = &run->requests[handle];
    if (request->n_stops == 0) return 0;
    int tail = 16;
    for (int i = 0; i < request->n_stops; i++) tail += (int)strlen(request->stops[i]);
    int first = n_tokens > tail ? n_tokens - tail : 0;
    size_t bytes;
    long stop_at;
    free(completion_text(run, request, tokens + first, n_tokens - first, &bytes, &stop_at));
    return stop_at >= 0;
}

static void print_progress(batch_run *run, int final) {
    double now_ms = cli_now_ms();
    if (!final && now_ms - run->last_progress_ms < (run->progress_tty ? 200 : 5000)) return;
    run->last_progress_ms = now_ms;
    double elapsed_s = (now_ms - run->start_ms) / 1e3;
    double rate = run->completion_tokens / (elapsed_s > 0 ? elapsed_s : 1e-9);
    double done_fraction = run->n_requests ? (double)run->n_done / (double)run->n_requests : 1;
    double eta_s = run->n_done ? elapsed_s * (1 - done_fraction) / done_fraction : 0;
    if (run->progress_tty) {
        char bar[31];
        int filled = (int)(done_fraction * 30);
        for (int i = 0; i < 30; i++) bar[i] = i < filled ? '#' : '.';
        bar[30] = '\0';
        fprintf(stderr, "\r[%s] %zu/%zu requests, %.1f tok/s, ETA %.0fs   %s", bar, run->n_done,
                run->n_requests, rate, eta_s, final ? "\n" : "");
    } else {
        fprintf(stderr, "ferry batch: %zu/%zu requests, %.1f tok/s, ETA %.0fs\n", run->n_done,
                run->n_requests, rate, eta_s);
    }
}

static ferry_status write_result(void *user, const ferry_batch_result *result) {
    batch_run *run = user;
    const request_line *request = &run->requests[result->handle];
    FILE *out = run->output;
    fprintf(out, "{\"id\": %s", request->id_json);
    if (result->error) {
        fputs(", \"error\": ", out);
        ferry_json_write_string(out, result->error, strlen(result->error));
        fputs(", \"finish_reason\": \"error\"", out);
    } else {
        size_t bytes;
        long stop_at;
        char *text = completion_text(run, request, result->tokens, result->n_tokens, &bytes,
                                     &stop_at);
        fputs(", \"text\": ", out);
        if (text) ferry_json_write_string(out, text, bytes);
        else fputs("null", out);
        free(text);
        fputs(", \"tokens\": [", out);
        for (int i = 0; i < result->n_tokens; i++) fprintf(out, i ? ", %d" : "%d", result->tokens[i]);
        fprintf(out, "], \"finish_reason\": \"%s\", \"prompt_tokens\": %d, "
                "\"completion_tokens\": %d", result->finish_reason, result->n_prompt,
                result->n_tokens);
        run->completion_tokens += (uint64_t)result->n_tokens;
    }
    fputs("}\n", out);
    /* a finished result reaches the kernel before the next step starts */
    if (fflush(out) != 0 || ferror(out))
        return ferry_fail(FERRY_ERR_IO, "%s: write failed: %s", run->output_path, strerror(errno));
    run->n_done++;
    print_progress(run, 0);
    return FERRY_OK;
}

/* ----------------------------------------------------------- the command */

/* --batch auto: with a GPU budget, the placement plan's batch of best
 * predicted tokens/s (KV counted as f32, the larger case); else up to 16. */
static int auto_batch(const ferry_file *file, const ferry_model_options *model_options,
                      int max_context, size_t n_pending) {
    int fallback = n_pending < 16 ? (int)n_pending : 16;
    if (!model_options->gpu_mem_bytes) return fallback;
    uint64_t *layer_bytes = NULL;
    offload_plan plan = {0};
    int batch = fallback;
    layer_bytes = calloc((size_t)file->layout.config.n_layers, sizeof *layer_bytes);
    offload_model_shape shape;
    offload_request request = {.gpu_mem_bytes = model_options->gpu_mem_bytes,
                               .host_mem_bytes = model_options->host_mem_bytes,
                               .batch = 0, .max_auto_batch = n_pending < 1024 ? (int)n_pending : 1024,
                               .context = max_context, .n_slots = model_options->slots,
                               .resident_layers = model_options->resident_layers};
    ferry_attention_place attention = FERRY_ATTENTION_AUTO;
    (void)ferry_attention_place_from_env(&attention); /* a bad value fails the model's open */
    ferry_clear_error();
    request.host_attention = attention != FERRY_ATTENTION_DEVICE;
    offload_bandwidths bandwidths;
    offload_bandwidths_from_profile(&bandwidths, NULL, NULL, 0);
    if (layer_bytes &&
        offload_shape_from_layout(&file->layout, sizeof(float), layer_bytes, &shape) == FERRY_OK &&
        offload_plan_make(&shape, &request, &bandwidths, &plan) == FERRY_OK) {
        batch = plan.batch;
        fprintf(stderr, "ferry batch: --batch auto: the plan predicts %.1f tokens/s at batch %d\n",
                plan.tokens_per_s, batch);
    } else {
        fprintf(stderr, "ferry batch: --batch auto: no plan (%s); batch %d\n", ferry_last_error(),
                fallback);
    }
    offload_plan_free(&plan);
    free(layer_bytes);
    return batch;
}

int cmd_batch(int argc, char **argv) {
    batch_options opts = {.backend = "auto", .max_new_tokens = 128,
                          .sampling = ferry_sampling_default()};
    cli_memory_flags memory = CLI_MEMORY_FLAGS_DEFAULT;
    cli_option options[] = {
        {"--model", CLI_OPTION_STRING, &opts.model_path, 0, 0, 0},
        {"--input", CLI_OPTION_STRING, &opts.input_path, 0, 0, 0},
        {"--output", CLI_OPTION_STRING, &opts.output_path, 0, 0, 0},
        {"--tokenizer", CLI_OPTION_STRING, &opts.tokenizer_path, 0, 0, 0},
        {"--batch", CLI_OPTION_INT, &opts.batch, 0, 4096, 0},
        {"--max-new-tokens", CLI_OPTION_INT, &opts.max_new_tokens, 0, 1000000, 0},
        {"--greedy", CLI_OPTION_FLAG, &opts.sampling.greedy, 0, 0, 0},
        {"--temperature", CLI_OPTION_FLOAT, &opts.sampling.temperature, 1e-6, 1e6, 0},
        {"--top-k", CLI_OPTION_INT, &opts.sampling.top_k, 0, 1 << 30, 0},
        {"--top-p", CLI_OPTION_FLOAT, &opts.sampling.top_p, 1e-9, 1.0, 0},
        {"--seed", CLI_OPTION_U64, &opts.sampling.seed, 0, 0, 0},
        {"--ignore-eos", CLI_OPTION_FLAG, &opts.ignore_eos, 0, 0, 0},
        {"--max-context", CLI_OPTION_INT, &opts.max_context, 1, 1 << 24, 0},
        {"--prefill-tokens", CLI_OPTION_INT, &opts.prefill_tokens, 1, 1 << 20, 0},
        {"--admission-window", CLI_OPTION_INT, &opts.admission_window, 1, 1 << 30, 0},
        {"--strict", CLI_OPTION_FLAG, &opts.strict, 0, 0, 0},
        {"--backend", CLI_OPTION_STRING, &opts.backend, 0, 0, 0},
        {"--threads", CLI_OPTION_INT, &opts.n_threads, 0, 1024, 0},
        CLI_MEMORY_OPTIONS(&memory),
        CLI_NO_STREAM_OPTION(&memory),
    };
    const int n_options = (int)(sizeof options / sizeof options[0]);
    int parsed = cli_parse_options(command, argc, argv, options, n_options, print_help);
    if (parsed == CLI_HELP_SHOWN) return CLI_OK;
    if (parsed != CLI_PARSED) return CLI_USAGE;
    if (!opts.model_path || !opts.input_path || !opts.output_path)
        return cli_usage_error(command, "--model, --input and --output are required");
    ferry_model_options model_options = {.backend = opts.backend, .n_threads = opts.n_threads};
    if (cli_memory_flags_apply(command, &memory, &model_options) != CLI_OK) return CLI_USAGE;

    batch_run run = {.output_path = opts.output_path, .progress_tty = cli_stderr_is_tty()};
    ferry_id_set done = {0};
    ferry_model *model = NULL;
    ferry_session *session = NULL;
    int rc = CLI_FAILED;
    uint64_t repaired = 0;
    ferry_status status = ferry_batch_output_scan(opts.output_path, &done, &repaired);
    if (status != FERRY_OK) {
        rc = cli_fail(command, status, "cannot resume");
        goto done;
    }
    if (repaired)
        fprintf(stderr, "ferry batch: %s: cut a torn last line (%llu bytes) left by an "
                "interrupted run\n", opts.output_path, (unsigned long long)repaired);
    size_t n_skipped_done = 0;
    if (batch_read_input(&opts, &done, &run.requests, &run.n_requests, &n_skipped_done,
                         &run.tokenizer) != 0)
        goto done;
    if (n_skipped_done)
        fprintf(stderr, "ferry batch: %zu requests already in %s, skipped\n", n_skipped_done,
                opts.output_path);
    run.output = fopen(opts.output_path, "ab");
    if (!run.output) {
        rc = cli_fail(command, FERRY_OK, "%s: cannot open for appending: %s", opts.output_path,
                      strerror(errno));
        goto done;
    }
    if (run.n_requests == 0) {
        fprintf(stderr, "ferry batch: nothing to do\n");
        rc = CLI_OK;
        goto done;
    }
    /* the session's shape first: a streamed model leaves room for it */
    ferry_file *file = NULL;
    int max_context = opts.max_context, batch = opts.batch;
    status = ferry_file_open(opts.model_path, &file);
    if (status == FERRY_OK) {
        if (max_context == 0) {
            for (size_t i = 0; i < run.n_requests; i++) {
                int needed = run.requests[i].n_prompt + run.requests[i].max_new_tokens;
                if (needed > max_context) max_context = needed;
            }
            if (max_context > file->layout.config.max_position)
                max_context = file->layout.config.max_position;
        }
        if (batch == 0) batch = auto_batch(file, &model_options, max_context, run.n_requests);
        model_options.stream_batch = batch;
        model_options.stream_context = max_context;
    }
    ferry_file_close(file);
    if (status == FERRY_OK) status = ferry_model_open(opts.model_path, &model_options, &model);
    ferry_model_info info;
    if (status == FERRY_OK) status = ferry_model_get_info(model, &info);
    if (status != FERRY_OK) {
        rc = cli_fail(command, status, "cannot load the model");
        goto done;
    }
    cli_print_placement(command, model, &memory);
    status = ferry_session_new(model, batch, max_context, &session);
    if (status != FERRY_OK) {
        rc = cli_fail(command, status, "cannot make a session of %d x %d tokens", batch, max_context);
        goto done;
    }
    fprintf(stderr, "ferry batch: %zu requests, batch %d, context %d, backend %s\n",
            run.n_requests, batch, max_context, info.backend);
    struct sigaction action = {.sa_handler = on_signal};
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    ferry_batch_callbacks callbacks = {.user = &run, .next_request = next_request,
                                       .on_token = check_stop, .on_result = write_result,
                                       .stop_flag = &stop_requested};
    run.start_ms = run.last_progress_ms = cli_now_ms();
    /* The whole input is in memory: the window may cover all of it. */
    ferry_batch_options batch_options = {
        .max_prefill_tokens = opts.prefill_tokens,
        .admission_window = opts.admission_window ? opts.admission_window
                            : run.n_requests < (1u << 30) ? (int)run.n_requests
                                                          : 1 << 30};
    status = ferry_batch_run(session, &batch_options, &callbacks, &run.stats);
    print_progress(&run, 1);
    double wall_s = (cli_now_ms() - run.start_ms) / 1e3;
    fprintf(stderr,
            "ferry batch: %llu requests (%llu errors), %llu prompt + %llu completion tokens in "
            "%.2f s: %.1f completion tok/s, %.1f total tok/s (batch %d, %llu steps, forward %.2f s",
            (unsigned long long)run.stats.n_requests, (unsigned long long)run.stats.n_errors,
            (unsigned long long)run.stats.prompt_tokens,
            (unsigned long long)run.stats.completion_tokens, wall_s,
            run.stats.completion_tokens / (wall_s > 0 ? wall_s : 1e-9),
            (run.stats.prompt_tokens + run.stats.completion_tokens) / (wall_s > 0 ? wall_s : 1e-9),
            batch, (unsigned long long)run.stats.n_steps, run.stats.forward_ns / 1e9);
    if (run.stats.n_passes)
        fprintf(stderr, ", %llu weight passes: %.2f per step",
                (unsigned long long)run.stats.n_passes,
                (double)run.stats.n_passes / (double)run.stats.n_steps);
    fputs(")\n", stderr);
    cli_print_stream_report(stderr, command, model, "streaming plan and measured passes");
    if (status == FERRY_ERR_CANCELLED) {
        rc = cli_fail(command, FERRY_OK, "stopped by a signal after %zu of %zu requests; rerun "
                      "with the same --output to finish", run.n_done, run.n_requests);
    } else if (status != FERRY_OK) {
        rc = cli_fail(command, status, "failed");
    } else {
        rc = run.stats.n_errors ? CLI_FAILED : CLI_OK;
    }
done:
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (run.output && fclose(run.output) != 0 && rc == CLI_OK)
        rc = cli_fail(command, FERRY_OK, "%s: close failed: %s", opts.output_path, strerror(errno));
    for (size_t i = 0; i < run.n_requests; i++) request_line_free(&run.requests[i]);
    free(run.requests);
    ferry_id_set_free(&done);
    ferry_session_free(session);
    ferry_model_close(model);
    ferry_tokenizer_free(run.tokenizer);
    return rc;
}
