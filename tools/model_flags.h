/*
 * model_flags.h — the layer-streaming flags every command that runs or
 * plans a model shares (--gpu-mem, --host-mem, --resident-layers, --slots,
 * and --no-stream for the run commands): their option-table rows, their
 * --help lines, how they fill ferry_model_options (FERRY_STREAMING_AUTO
 * unless told otherwise), and what is printed before a streamed run.  One
 * place, so the four run commands and `ferry plan` agree on names, ranges
 * and messages.
 */
#ifndef FERRY_TOOLS_MODEL_FLAGS_H
#define FERRY_TOOLS_MODEL_FLAGS_H

#include <stdint.h>
#include <stdio.h>

#include "ferry.h"
#include "tools/options.h"

typedef struct cli_memory_flags {
    uint64_t gpu_mem_bytes;     /* 0: not given (the run commands: what is free) */
    uint64_t host_mem_bytes;    /* 0: not given (the run commands: what is available) */
    int resident_layers;        /* -1: as many as fit */
    int slots;                  /* 0: the default ring depth (2) */
    int no_stream;              /* --no-stream: every layer resident, whatever is free */
} cli_memory_flags;

#define CLI_MEMORY_FLAGS_DEFAULT ((cli_memory_flags){0, 0, -1, 0, 0})

/* The four rows, to list inside a command's cli_option table.  A size of
 * 0 bytes is refused (leave the flag out for no limit), so a nonzero
 * field always means the flag was given. */
#define CLI_MEMORY_OPTIONS(flags)                                                         \
    {"--gpu-mem", CLI_OPTION_SIZE, &(flags)->gpu_mem_bytes, 1, 0, 0},                     \
    {"--host-mem", CLI_OPTION_SIZE, &(flags)->host_mem_bytes, 1, 0, 0},                   \
    {"--resident-layers", CLI_OPTION_INT, &(flags)->resident_layers, 0, 1 << 20, 0},      \
    {"--slots", CLI_OPTION_INT, &(flags)->slots, 1, 64, 0}

/* The run commands' fifth row (not `ferry plan`'s). */
#define CLI_NO_STREAM_OPTION(flags) {"--no-stream", CLI_OPTION_FLAG, &(flags)->no_stream, 0, 0, 0}

/* Their --help lines after a blank line and `heading` (NULL: the one the
 * run commands share, with --no-stream and the defaults), the flag names
 * padded to `name_width` columns after a two-space indent (so they line up
 * with the command's other lines). */
void cli_memory_flags_help(FILE *out, const char *heading, int name_width);

/* Fill `options` for a run command: --no-stream keeps every layer
 * resident; --resident-layers or --slots stream, as they ask
 * (FERRY_STREAMING_AUTO_BUDGETS); else FERRY_STREAMING_AUTO.  Either way
 * with the budgets given; the others default to what is free less a
 * margin.  --no-stream beside any of the four is a usage error: returns
 * CLI_USAGE after saying so, else CLI_OK.  The caller sets stream_batch
 * and stream_context to the sessions it will make. */
int cli_memory_flags_apply(const char *command, const cli_memory_flags *flags,
                           ferry_model_options *options);

/* When auto chose to stream: one line on stderr saying why and within
 * which budgets.  Nothing otherwise. */
void cli_print_placement(const char *command, const ferry_model *model,
                         const cli_memory_flags *flags);

/* For a streamed model: the placement plan (with what was measured, if
 * any passes ran) on `out`, after the line "ferry <command>: <title>:"
 * unless title is NULL.  Nothing for a model whose layers are all
 * resident.  The report is as long as it needs to be. */
void cli_print_stream_report(FILE *out, const char *command, const ferry_model *model,
                             const char *title);

#endif /* FERRY_TOOLS_MODEL_FLAGS_H */
