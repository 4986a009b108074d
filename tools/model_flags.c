/*
 * model_flags.c — the shared layer-streaming flags (tools/model_flags.h):
 * help text, filling ferry_model_options, printing the stream plan.
 * Parsing itself is the option table walker's (tools/options.c).
 */
#include <stdlib.h>
#include <string.h>

#include "tools/model_flags.h"

void cli_memory_flags_help(FILE *out, const char *heading, int name_width) {
    static const struct {
        const char *name;
        const char *lines[3];
    } rows[] = {
        {"--gpu-mem SIZE", {"device memory for layers, KV cache and activations (e.g.",
                            "20G, 512M); layers beyond it stream from DRAM or the file"}},
        {"--host-mem SIZE", {"pinned DRAM for streamed layers and file staging; layers",
                             "beyond it are read from the file on every pass"}},
        {"--resident-layers N", {"keep exactly N layers in device memory (default: as many",
                                 "as --gpu-mem holds)"}},
        {"--slots N", {"device slots streamed layers pass through, 1..64 (default 2)"}},
    };
    fprintf(out, "\n%s\n", heading ? heading
                                   : "Layer streaming, for a model larger than the GPU (without these\n"
                                     "flags every layer stays in device memory):");
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        /* a name wider than the column gets a line of its own */
        int own_line = (int)strlen(rows[i].name) > name_width;
        if (own_line) fprintf(out, "  %s\n", rows[i].name);
        for (int j = 0; j < 3 && rows[i].lines[j]; j++)
            fprintf(out, "  %-*s %s\n", name_width, j || own_line ? "" : rows[i].name,
                    rows[i].lines[j]);
    }
}

int cli_memory_flags_given(const cli_memory_flags *flags) {
    return flags->gpu_mem_bytes || flags->host_mem_bytes || flags->resident_layers >= 0 ||
           flags->slots;
}

void cli_memory_flags_apply(const cli_memory_flags *flags, ferry_model_options *options) {
    options->streaming = cli_memory_flags_given(flags);
    options->gpu_mem_bytes = flags->gpu_mem_bytes;
    options->host_mem_bytes = flags->host_mem_bytes;
    options->resident_layers = flags->resident_layers;
    options->slots = flags->slots;
}

void cli_print_stream_report(const char *command, const ferry_model *model, const char *title) {
    size_t needed = ferry_model_stream_report(model, NULL, 0);
    if (needed == 0) return;
    char *report = malloc(needed + 1);
    if (!report) {
        fprintf(stderr, "ferry %s: %s: out of memory for the report\n", command, title);
        return;
    }
    ferry_model_stream_report(model, report, needed + 1);
    fprintf(stderr, "ferry %s: %s:\n%s", command, title, report);
    free(report);
}
