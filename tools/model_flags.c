/*
 * model_flags.c — the shared layer-streaming flags (tools/model_flags.h):
 * help text, filling ferry_model_options (auto by default), the line that
 * says auto chose to stream, printing the stream plan.
 * Parsing itself is the option table walker's (tools/options.c).
 */
#include <stdlib.h>
#include <string.h>

#include "offload/offload.h"
#include "tools/cli.h"
#include "tools/model_flags.h"

void cli_memory_flags_help(FILE *out, const char *heading, int name_width) {
    /* Which commands a row, and its last line, are for. */
    enum { EVERY_COMMAND, RUN_COMMANDS };
    static const struct {
        const char *name;
        const char *lines[2];
        const char *last_line;
        int row_for, last_line_for;
    } rows[] = {
        {"--gpu-mem SIZE",
         {"device memory for layers, KV cache and activations (e.g.",
          "20G, 512M); layers beyond it stream from DRAM or the file"},
         "(default: the GPU's free memory less max(5%, 512M))", EVERY_COMMAND, RUN_COMMANDS},
        {"--host-mem SIZE",
         {"pinned DRAM for streamed layers and file staging; layers",
          "beyond it are read from the file on every pass"},
         "(default: available memory less max(10%, 2G))", EVERY_COMMAND, RUN_COMMANDS},
        {"--resident-layers N", {"stream, keeping exactly N layers in device memory", NULL},
         "(default: as many as --gpu-mem holds)", EVERY_COMMAND, EVERY_COMMAND},
        {"--slots N", {"device slots streamed layers pass through, 1..64", NULL}, "(default 2)",
         EVERY_COMMAND, EVERY_COMMAND},
        {"--no-stream", {"keep every layer in device memory even when the model", NULL},
         "does not fit what is free", RUN_COMMANDS, RUN_COMMANDS},
    };
    int run_command = heading == NULL;
    fprintf(out, "\n%s\n",
            heading ? heading
                    : "Layer streaming (default: every layer stays in device memory when the\n"
                      "model, its KV cache and activations fit the GPU's free memory less a\n"
                      "margin; otherwise layers stream within the defaults below, and a line\n"
                      "on stderr says so; --resident-layers and --slots always stream; the\n"
                      "CPU backend reads no free memory: it streams what does not fit --gpu-mem):");
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        if (rows[i].row_for == RUN_COMMANDS && !run_command) continue;
        const char *lines[3] = {rows[i].lines[0], rows[i].lines[1], NULL};
        int n_lines = lines[1] ? 2 : 1;
        if (run_command || rows[i].last_line_for == EVERY_COMMAND)
            lines[n_lines++] = rows[i].last_line;
        /* a name wider than the column gets a line of its own */
        int own_line = (int)strlen(rows[i].name) > name_width;
        if (own_line) fprintf(out, "  %s\n", rows[i].name);
        for (int j = 0; j < n_lines; j++)
            fprintf(out, "  %-*s %s\n", name_width, j || own_line ? "" : rows[i].name, lines[j]);
    }
}

/* Did the user give any of the four budget flags? */
static int memory_flags_given(const cli_memory_flags *flags) {
    return flags->gpu_mem_bytes || flags->host_mem_bytes || flags->resident_layers >= 0 ||
           flags->slots;
}

int cli_memory_flags_apply(const char *command, const cli_memory_flags *flags,
                           ferry_model_options *options) {
    if (flags->no_stream && memory_flags_given(flags))
        return cli_usage_error(command, "--no-stream cannot be combined with --gpu-mem, "
                                        "--host-mem, --resident-layers or --slots");
    int stream_asked = flags->resident_layers >= 0 || flags->slots;
    options->streaming = flags->no_stream ? 0
                         : stream_asked   ? FERRY_STREAMING_AUTO_BUDGETS
                                          : FERRY_STREAMING_AUTO;
    options->gpu_mem_bytes = flags->gpu_mem_bytes;
    options->host_mem_bytes = flags->host_mem_bytes;
    options->resident_layers = flags->resident_layers;
    options->slots = flags->slots;
    return CLI_OK;
}

void cli_print_placement(const char *command, const ferry_model *model,
                         const cli_memory_flags *flags) {
    ferry_model_placement placement;
    if (ferry_model_get_placement(model, &placement) != FERRY_OK || !placement.chosen_by_auto ||
        !placement.streaming)
        return;
    char need[32], gpu[32], host[32], free_text[32], margin[32];
    offload_format_bytes(placement.resident_bytes, need, sizeof need);
    offload_format_bytes(placement.gpu_mem_bytes, gpu, sizeof gpu);
    if (placement.host_mem_bytes) offload_format_bytes(placement.host_mem_bytes, host, sizeof host);
    else snprintf(host, sizeof host, "no limit");
    char why[160];
    if (flags->gpu_mem_bytes) {
        snprintf(why, sizeof why, "but --gpu-mem is %s", gpu);
    } else {
        offload_format_bytes(placement.gpu_free_bytes, free_text, sizeof free_text);
        offload_format_bytes(placement.gpu_margin_bytes, margin, sizeof margin);
        snprintf(why, sizeof why, "but the GPU has %s free less a %s margin%s", free_text,
                 margin, placement.figures_faked ? " (FERRY_FAKE_FREE_MEMORY)" : "");
    }
    fprintf(stderr,
            "ferry %s: the model needs %s of GPU memory to stay resident %s: streaming "
            "layers within GPU %s, host %s (--gpu-mem/--host-mem set these, --no-stream "
            "refuses)\n",
            command, need, why, gpu, host);
}

void cli_print_stream_report(FILE *out, const char *command, const ferry_model *model,
                             const char *title) {
    size_t needed = ferry_model_stream_report(model, NULL, 0);
    if (needed == 0) return;
    char *report = malloc(needed + 1);
    if (!report) {
        fprintf(stderr, "ferry %s: %s: out of memory for the report\n", command,
                title ? title : "streaming plan");
        return;
    }
    ferry_model_stream_report(model, report, needed + 1);
    if (title) fprintf(out, "ferry %s: %s:\n", command, title);
    fputs(report, out);
    free(report);
}
