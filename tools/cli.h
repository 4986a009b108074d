/*
 * cli.h — what the `ferry` subcommands share: the subcommand signature,
 * option parsing helpers and error printing.  Each subcommand lives in
 * its own tools/cmd_<name>.c and is a thin layer over the library.
 */
#ifndef FERRY_TOOLS_CLI_H
#define FERRY_TOOLS_CLI_H

#include <stdio.h>

#include "ferry.h"

/* Exit codes of every subcommand. */
enum { CLI_OK = 0, CLI_FAILED = 1, CLI_USAGE = 2 };

typedef int (*cli_command_fn)(int argc, char **argv);

int cmd_convert(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_iobench(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_batch(int argc, char **argv);

/* Print "ferry <command>: <message>" to stderr (with ferry_last_error()
 * when status is not FERRY_OK) and return CLI_FAILED. */
int cli_fail(const char *command, ferry_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Print "ferry <command>: <message>\nTry 'ferry <command> --help'." and return CLI_USAGE. */
int cli_usage_error(const char *command, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Parse "1,2,3" into a malloc'd int32 array (caller frees).  Returns 0 on
 * success, -1 with a message on stderr. */
int cli_parse_int_list(const char *command, const char *text, int32_t **out, int *out_count);

/* The tokenizer of tokenizer_path (a tokenizer.json) when given, else the
 * tokenizer.json stored in the .ferry file model_path (tools/cmd_tokenize.c;
 * runtime/tokenizer.h has the encode/decode calls). */
struct ferry_tokenizer;
ferry_status cli_open_tokenizer(const char *tokenizer_path, const char *model_path,
                                struct ferry_tokenizer **out);

/* Is stderr a terminal (for progress lines)? */
int cli_stderr_is_tty(void);

/* A ferry_model_options.on_progress that prints a line to stderr every few
 * seconds while a model takes long to load; user: the command's name. */
void cli_load_progress(void *command, uint64_t done_bytes, uint64_t total_bytes);

#endif /* FERRY_TOOLS_CLI_H */
