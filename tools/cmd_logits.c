/*
 * cmd_logits.c — `ferry logits`: run a token list through a model and
 * write the float32 little-endian logits of every position,
 * [n_tokens x vocab], to a file (a streamed model's plan goes to stderr).
 * A thin layer over ferry_forward.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tools/cli.h"
#include "tools/model_flags.h"
#include "tools/options.h"

static const char *const command = "logits";

static void print_help(FILE *out) {
    fprintf(out,
            "usage: ferry logits --model M --tokens 1,2,3 --out FILE [options]\n\n"
            "Runs the token ids through the model and writes the logits of every position\n"
            "as float32 little-endian, n_tokens rows of vocab_size values, to FILE.\n\n"
            "  --model M              the .ferry file, or synth:PRESET[:DTYPE[:SEED]] for\n"
            "                         the weights ferry synth would write, made in memory\n"
            "  --tokens LIST          comma-separated token ids, e.g. 1,15043,3186\n"
            "  --out FILE             where to write the logits\n"
            "  --backend B            cpu, cuda, cuda:N or auto (default auto)\n"
            "  --threads N            CPU worker threads (default 0: one per core)\n"
            "  --verify               check every tensor checksum while loading\n");
    cli_memory_flags_help(out, NULL, 22);
}

/* Write floats as little-endian bytes, whatever the host order. */
static int write_f32_le(FILE *file, const float *values, size_t n) {
    const uint16_t probe = 1;
    if (*(const unsigned char *)&probe == 1) return fwrite(values, sizeof(float), n, file) == n ? 0 : -1;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &values[i], sizeof bits);
        unsigned char bytes[4] = {(unsigned char)bits, (unsigned char)(bits >> 8),
                                  (unsigned char)(bits >> 16), (unsigned char)(bits >> 24)};
        if (fwrite(bytes, 1, 4, file) != 4) return -1;
    }
    return 0;
}

int cmd_logits(int argc, char **argv) {
    const char *model_path = NULL, *tokens_text = NULL, *out_path = NULL, *backend = "auto";
    int n_threads = 0, verify = 0;
    cli_memory_flags memory = CLI_MEMORY_FLAGS_DEFAULT;
    cli_option options[] = {
        {"--model", CLI_OPTION_STRING, &model_path, 0, 0, 0},
        {"--tokens", CLI_OPTION_STRING, &tokens_text, 0, 0, 0},
        {"--out", CLI_OPTION_STRING, &out_path, 0, 0, 0},
        {"--backend", CLI_OPTION_STRING, &backend, 0, 0, 0},
        {"--threads", CLI_OPTION_INT, &n_threads, 0, 1024, 0},
        {"--verify", CLI_OPTION_FLAG, &verify, 0, 0, 0},
        CLI_MEMORY_OPTIONS(&memory),
        CLI_NO_STREAM_OPTION(&memory),
    };
    int parsed = cli_parse_options(command, argc, argv, options,
                                   (int)(sizeof options / sizeof options[0]), print_help);
    if (parsed == CLI_HELP_SHOWN) return CLI_OK;
    if (parsed != CLI_PARSED) return CLI_USAGE;
    if (!model_path) return cli_usage_error(command, "--model is required");
    if (!tokens_text) return cli_usage_error(command, "--tokens is required");
    if (!out_path) return cli_usage_error(command, "--out is required");

    int32_t *tokens = NULL;
    int n_tokens = 0;
    if (cli_parse_int_list(command, tokens_text, &tokens, &n_tokens) != 0) return CLI_USAGE;

    int rc = CLI_FAILED;
    ferry_model *model = NULL;
    ferry_session *session = NULL;
    float *logits = NULL;
    ferry_model_options model_options = {.backend = backend, .n_threads = n_threads,
                                         .verify_checksums = verify,
                                         .on_progress = cli_load_progress,
                                         .progress_user = (void *)command};
    if (cli_memory_flags_apply(command, &memory, &model_options) != CLI_OK) {
        rc = CLI_USAGE;
        goto done;
    }
    model_options.stream_batch = 1;
    model_options.stream_context = n_tokens;
    ferry_status status = ferry_model_open(model_path, &model_options, &model);
    if (status != FERRY_OK) {
        rc = cli_fail(command, status, "cannot load the model");
        goto done;
    }
    cli_print_placement(command, model, &memory);
    cli_print_stream_report(stderr, command, model, "streaming plan");
    ferry_model_info info;
    ferry_model_get_info(model, &info);
    status = ferry_session_new(model, 1, n_tokens, &session);
    if (status != FERRY_OK) {
        rc = cli_fail(command, status, "cannot make a session");
        goto done;
    }
    size_t n_values = (size_t)n_tokens * (size_t)info.vocab_size;
    logits = malloc(n_values * sizeof *logits);
    if (!logits) {
        rc = cli_fail(command, FERRY_OK, "out of memory for %zu logits", n_values);
        goto done;
    }
    ferry_batch batch = {.n_seqs = 1, .n_tokens = &n_tokens, .tokens = tokens};
    double start_ms = cli_now_ms();
    status = ferry_forward(session, &batch, FERRY_LOGITS_ALL, logits, n_values);
    double elapsed_ms = cli_now_ms() - start_ms;
    if (status != FERRY_OK) {
        rc = cli_fail(command, status, "failed");
        goto done;
    }
    FILE *file = fopen(out_path, "wb");
    int write_failed = !file || write_f32_le(file, logits, n_values) != 0;
    if (file && fclose(file) != 0) write_failed = 1;
    if (write_failed) {
        rc = cli_fail(command, FERRY_OK, "cannot write %s: %s", out_path, strerror(errno));
        goto done;
    }
    fprintf(stderr, "ferry logits: %d tokens x %d vocab -> %s (%s, %.1f ms)\n", n_tokens,
            info.vocab_size, out_path, info.backend, elapsed_ms);
    rc = CLI_OK;
done:
    free(logits);
    free(tokens);
    ferry_session_free(session);
    ferry_model_close(model);
    return rc;
}
