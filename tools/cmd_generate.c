/*
 * cmd_generate.c — `ferry generate`: feed a prompt of token ids, sample
 * up to N new tokens and print them comma-separated on one line of
 * stdout; timings (and, for a streamed model, its plan) go to stderr.  A
 * thin layer over ferry_generate.
 */
#include <stdlib.h>

#include "runtime/tokenizer.h"
#include "tools/cli.h"
#include "tools/model_flags.h"
#include "tools/options.h"

static const char *const command = "generate";

static void print_help(FILE *out) {
    fprintf(out,
            "usage: ferry generate --model M --tokens 1,2,3 --max-new-tokens N [options]\n\n"
            "Feeds the prompt token ids to the model and prints the new token ids,\n"
            "comma-separated, on one line.  Timings go to stderr.\n\n"
            "  --model M              the .ferry file, or synth:PRESET[:DTYPE[:SEED]] for\n"
            "                         the weights ferry synth would write, made in memory\n"
            "  --tokens LIST          prompt token ids, e.g. 1,15043,3186\n"
            "  --prompt TEXT          prompt text, tokenized with the model's tokenizer.json\n"
            "                         (BOS added as it says); the new text is printed\n"
            "  --tokenizer FILE       a tokenizer.json to use instead of the model's\n"
            "  --max-new-tokens N     tokens to generate at most (0..1000000)\n"
            "  --greedy               always take the most likely token\n"
            "  --temperature T        divide logits by T > 0 before sampling (default 1)\n"
            "  --top-k K              sample among the K most likely tokens (0: all; default 0)\n"
            "  --top-p P              sample among the most likely tokens whose probability\n"
            "                         adds up to P, 0 < P <= 1 (default 1)\n"
            "  --seed S               random seed; the same seed gives the same tokens (default 0)\n"
            "  --ignore-eos           keep going past end-of-sequence tokens\n"
            "  --max-context N        session context (default: prompt + new tokens)\n"
            "  --backend B            cpu, cuda, cuda:N or auto (default auto)\n"
            "  --threads N            CPU worker threads (default 0: one per core)\n"
            "  --verify               check every tensor checksum while loading\n");
    cli_memory_flags_help(out, NULL, 22);
}

/* When the first token arrived: the end of the prefill. */
typedef struct generate_timing {
    double first_token_ms;
    int n_seen;
} generate_timing;

static int note_token(void *user, int32_t token) {
    (void)token;
    generate_timing *timing = user;
    if (timing->n_seen++ == 0) timing->first_token_ms = cli_now_ms();
    return 0;
}

int cmd_generate(int argc, char **argv) {
    const char *model_path = NULL, *tokens_text = NULL, *backend = "auto";
    int n_threads = 0, verify = 0, max_new_tokens = 0, max_context = 0;
    ferry_sampling sampling = ferry_sampling_default();
    int ignore_eos = 0;
    const char *prompt_text = NULL, *tokenizer_path = NULL;
    cli_memory_flags memory = CLI_MEMORY_FLAGS_DEFAULT;
    cli_option options[] = {
        {"--prompt", CLI_OPTION_STRING, &prompt_text, 0, 0, 0},
        {"--tokenizer", CLI_OPTION_STRING, &tokenizer_path, 0, 0, 0},
        {"--model", CLI_OPTION_STRING, &model_path, 0, 0, 0},
        {"--tokens", CLI_OPTION_STRING, &tokens_text, 0, 0, 0},
        {"--max-new-tokens", CLI_OPTION_INT, &max_new_tokens, 0, 1000000, 0},
        {"--greedy", CLI_OPTION_FLAG, &sampling.greedy, 0, 0, 0},
        {"--temperature", CLI_OPTION_FLOAT, &sampling.temperature, 1e-6, 1e6, 0},
        {"--top-k", CLI_OPTION_INT, &sampling.top_k, 0, 1 << 30, 0},
        {"--top-p", CLI_OPTION_FLOAT, &sampling.top_p, 1e-9, 1.0, 0},
        {"--seed", CLI_OPTION_U64, &sampling.seed, 0, 0, 0},
        {"--ignore-eos", CLI_OPTION_FLAG, &ignore_eos, 0, 0, 0},
        {"--max-context", CLI_OPTION_INT, &max_context, 1, 1 << 24, 0},
        {"--backend", CLI_OPTION_STRING, &backend, 0, 0, 0},
        {"--threads", CLI_OPTION_INT, &n_threads, 0, 1024, 0},
        {"--verify", CLI_OPTION_FLAG, &verify, 0, 0, 0},
        CLI_MEMORY_OPTIONS(&memory),
        CLI_NO_STREAM_OPTION(&memory),
    };
    const int n_options = (int)(sizeof options / sizeof options[0]);
    int parsed = cli_parse_options(command, argc, argv, options, n_options, print_help);
    if (parsed == CLI_HELP_SHOWN) return CLI_OK;
    if (parsed != CLI_PARSED) return CLI_USAGE;
    if (!model_path) return cli_usage_error(command, "--model is required");
    if (!tokens_text == !prompt_text)
        return cli_usage_error(command, "give one of --tokens LIST or --prompt TEXT");
    if (!cli_option_find(options, n_options, "--max-new-tokens")->seen)
        return cli_usage_error(command, "--max-new-tokens is required");
    if (sampling.greedy) {
        const char *sampling_flags[] = {"--temperature", "--top-k", "--top-p"};
        for (int i = 0; i < 3; i++)
            if (cli_option_find(options, n_options, sampling_flags[i])->seen)
                return cli_usage_error(command, "--greedy cannot be combined with %s",
                                       sampling_flags[i]);
    }

    int32_t *prompt = NULL;
    int n_prompt = 0;
    struct ferry_tokenizer *tokenizer = NULL;
    if (prompt_text) {
        ferry_token_list ids = {0};
        ferry_status status = cli_open_tokenizer(tokenizer_path, model_path, &tokenizer);
        if (status == FERRY_OK)
            status = ferry_tokenizer_encode(tokenizer, prompt_text, strlen(prompt_text), 1, &ids);
        if (status == FERRY_OK && ids.count == 0)
            status = ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "the prompt gives no tokens");
        if (status != FERRY_OK) {
            ferry_token_list_free(&ids);
            ferry_tokenizer_free(tokenizer);
            return cli_fail(command, status, "cannot tokenize the prompt");
        }
        prompt = ids.ids;
        n_prompt = (int)ids.count;
    } else if (cli_parse_int_list(command, tokens_text, &prompt, &n_prompt) != 0) {
        return CLI_USAGE;
    }
    if (max_context == 0) max_context = n_prompt + (max_new_tokens > 0 ? max_new_tokens : 1);

    int rc = CLI_FAILED;
    ferry_model *model = NULL;
    ferry_session *session = NULL;
    int32_t *generated = malloc(sizeof *generated * (size_t)(max_new_tokens > 0 ? max_new_tokens : 1));
    if (!generated) {
        rc = cli_fail(command, FERRY_OK, "out of memory");
        goto done;
    }
    ferry_model_options model_options = {.backend = backend, .n_threads = n_threads,
                                         .verify_checksums = verify,
                                         .on_progress = cli_load_progress,
                                         .progress_user = (void *)command};
    if (cli_memory_flags_apply(command, &memory, &model_options) != CLI_OK) {
        rc = CLI_USAGE;
        goto done;
    }
    model_options.stream_batch = 1;
    model_options.stream_context = max_context;
    ferry_status status = ferry_model_open(model_path, &model_options, &model);
    if (status == FERRY_OK) status = ferry_session_new(model, 1, max_context, &session);
    if (status != FERRY_OK) {
        rc = cli_fail(command, status, "cannot load the model");
        goto done;
    }
    cli_print_placement(command, model, &memory);
    cli_print_stream_report(stderr, command, model, "streaming plan");
    generate_timing timing = {0, 0};
    ferry_generate_params params = {.sampling = sampling, .max_new_tokens = max_new_tokens,
                                    .ignore_eos = ignore_eos, .on_token = note_token,
                                    .user = &timing};
    int n_generated = 0;
    double start_ms = cli_now_ms();
    status = ferry_generate(session, prompt, n_prompt, &params, generated, max_new_tokens,
                            &n_generated);
    double end_ms = cli_now_ms();
    if (status != FERRY_OK) {
        rc = cli_fail(command, status, "failed");
        goto done;
    }
    if (tokenizer) {
        char *text = NULL;
        size_t text_bytes = 0;
        status = ferry_tokenizer_decode(tokenizer, generated, (size_t)n_generated, 1, &text,
                                        &text_bytes);
        if (status != FERRY_OK) {
            rc = cli_fail(command, status, "cannot decode the new tokens");
            goto done;
        }
        fwrite(text, 1, text_bytes, stdout);
        free(text);
    } else {
        for (int i = 0; i < n_generated; i++) printf("%s%d", i ? "," : "", (int)generated[i]);
    }
    printf("\n");
    if (fflush(stdout) != 0) {
        rc = cli_fail(command, FERRY_OK, "cannot write to stdout");
        goto done;
    }
    ferry_model_info info;
    ferry_model_get_info(model, &info);
    double prefill_ms = n_generated ? timing.first_token_ms - start_ms : end_ms - start_ms;
    double decode_ms = n_generated ? end_ms - timing.first_token_ms : 0;
    fprintf(stderr,
            "ferry generate: %s: prefill %d tokens in %.1f ms (%.1f tok/s), "
            "decode %d tokens in %.1f ms (%.2f tok/s)\n",
            info.backend, n_prompt, prefill_ms, n_prompt / (prefill_ms / 1e3 + 1e-12),
            n_generated > 1 ? n_generated - 1 : 0, decode_ms,
            n_generated > 1 ? (n_generated - 1) / (decode_ms / 1e3 + 1e-12) : 0.0);
    rc = CLI_OK;
done:
    free(generated);
    free(prompt);
    ferry_tokenizer_free(tokenizer);
    ferry_session_free(session);
    ferry_model_close(model);
    return rc;
}
