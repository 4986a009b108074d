/*
 * main.c — the `ferry` program: finds the subcommand in a table and runs
 * it.  Subcommands are thin layers over the public API (iobench also
 * drives nvme/ directly); none of them holds logic the library lacks.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "tools/cli.h"

static const struct {
    const char *name;
    cli_command_fn run;
    const char *summary;
} commands[] = {
    {"convert", cmd_convert, "convert an HF checkpoint to a .ferry file"},
    {"synth", cmd_synth, "write a random-weight model of a standard shape"},
    {"info", cmd_info, "describe a .ferry file (--verify checks every checksum)"},
    {"logits", cmd_logits, "write float32 logits of every position of a token list"},
    {"generate", cmd_generate, "generate tokens from a prompt"},
    {"iobench", cmd_iobench, "measure NVMe / file read bandwidth (and NVMe -> GPU)"},
    {"plan", cmd_plan, "print where layers and KV cache would live, and the predicted speed"},
    {"tokenize", cmd_tokenize, "text <-> token ids with a tokenizer.json (--jsonl on stdin)"},
    {"batch", cmd_batch, "run a JSON-lines file of prompts, continuous batching, resumable"},
    {"bench", cmd_bench, "prefill/decode throughput and achieved bandwidth per batch size"},
};

static void print_usage(FILE *out) {
    fprintf(out,
            "ferry %s — run transformer models larger than GPU memory\n\n"
            "usage: ferry <command> [options]   (ferry <command> --help for details)\n\n"
            "commands:\n",
            ferry_version());
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        print_usage(stderr);
        return CLI_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        print_usage(stdout);
        return CLI_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("ferry %s\n", ferry_version());
        return CLI_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "ferry: unknown command '%s'\n\n", argv[1]);
    print_usage(stderr);
    return CLI_USAGE;
}

int cli_fail(const char *command, ferry_status status, const char *fmt, ...) {
    fprintf(stderr, "ferry %s: ", command);
    va_list args;
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    if (status != FERRY_OK) {
        const char *message = ferry_last_error();
        fprintf(stderr, "%s%s", fmt[0] ? ": " : "", message[0] ? message : ferry_status_str(status));
    }
    fputc('\n', stderr);
    return CLI_FAILED;
}

int cli_usage_error(const char *command, const char *fmt, ...) {
    fprintf(stderr, "ferry %s: ", command);
    va_list args;
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fprintf(stderr, "\nTry 'ferry %s --help'.\n", command);
    return CLI_USAGE;
}

int cli_parse_int_list(const char *command, const char *text, int32_t **out, int *out_count) {
    *out = NULL;
    *out_count = 0;
    size_t capacity = 1;
    for (const char *p = text; *p; p++) capacity += (*p == ',');
    int32_t *values = malloc(capacity * sizeof *values);
    if (!values) {
        fprintf(stderr, "ferry %s: out of memory\n", command);
        return -1;
    }
    int count = 0;
    const char *p = text;
    while (*p) {
        char *end = NULL;
        errno = 0;
        long value = strtol(p, &end, 10);
        if (end == p || errno || value < INT32_MIN || value > INT32_MAX ||
            (*end != ',' && *end != '\0')) {
            fprintf(stderr, "ferry %s: bad token list '%s' (expected integers like 1,2,3)\n",
                    command, text);
            free(values);
            return -1;
        }
        values[count++] = (int32_t)value;
        p = *end == ',' ? end + 1 : end;
    }
    if (count == 0) {
        fprintf(stderr, "ferry %s: empty token list\n", command);
        free(values);
        return -1;
    }
    *out = values;
    *out_count = count;
    return 0;
}

int cli_stderr_is_tty(void) { return isatty(STDERR_FILENO); }

/* Loading a large model (above all a synth: one, generated on the spot)
 * takes a while: a line every few seconds once it has taken more than one,
 * the last when everything is in. */
void cli_load_progress(void *command, uint64_t done_bytes, uint64_t total_bytes) {
    static uint64_t start_ns, last_ns;
    static int printed;
    uint64_t now_ns = ferry_now_ns();
    if (!start_ns) {
        start_ns = last_ns = now_ns;
        printed = 0;
    }
    int finished = done_bytes >= total_bytes;
    if (!finished && (now_ns - start_ns < 1000000000ull || now_ns - last_ns < 3000000000ull))
        return;
    if (finished && !printed) {
        start_ns = 0;
        return;
    }
    double seconds = (double)(now_ns - start_ns) / 1e9;
    fprintf(stderr, "ferry %s: weights %.1f of %.1f GB in %.1f s (%.2f GB/s)%s\n",
            (const char *)command, (double)done_bytes / 1e9, (double)total_bytes / 1e9, seconds,
            seconds > 0 ? (double)done_bytes / 1e9 / seconds : 0.0, finished ? ", done" : "");
    last_ns = now_ns;
    printed = 1;
    if (finished) start_ns = 0;
}
