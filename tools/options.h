/*
 * options.h — table-driven option parsing for the subcommands: each
 * option is a row naming its flag, its type, where the value goes and its
 * allowed range, so validation and error messages are the same everywhere.
 * The streaming budget rows every model-running command shares are in
 * tools/model_flags.h.
 */
#ifndef FERRY_TOOLS_OPTIONS_H
#define FERRY_TOOLS_OPTIONS_H

#include <stdint.h>
#include <stdio.h>

typedef enum cli_option_kind {
    CLI_OPTION_STRING,          /* const char * */
    CLI_OPTION_INT,             /* int, within [min, max] */
    CLI_OPTION_FLOAT,           /* float, within [min, max] */
    CLI_OPTION_DOUBLE,          /* double, within [min, max] */
    CLI_OPTION_U64,             /* uint64_t */
    CLI_OPTION_SIZE,            /* uint64_t bytes ("512M", "1.5G": ferry_parse_size), >= min */
    CLI_OPTION_FLAG,            /* int set to 1; takes no value */
} cli_option_kind;

typedef struct cli_option {
    const char *name;           /* "--model" */
    cli_option_kind kind;
    void *target;
    double min, max;            /* for INT, FLOAT and DOUBLE; min for SIZE */
    int seen;                   /* set when the option was given */
} cli_option;

enum { CLI_PARSED = 0, CLI_HELP_SHOWN = 1, CLI_BAD_USAGE = 2 };

/* Parse argv[1..argc) ("--name value" or "--name=value") into the table.
 * Prints help (through print_help, to stdout) for --help/-h, and a usage
 * error naming the option for anything unknown, missing or out of range. */
int cli_parse_options(const char *command, int argc, char **argv, cli_option *options,
                      int n_options, void (*print_help)(FILE *out));

/* The row for `name` (to check .seen). */
const cli_option *cli_option_find(const cli_option *options, int n_options, const char *name);

/* Monotonic clock in milliseconds, for the timings commands print. */
double cli_now_ms(void);

#endif /* FERRY_TOOLS_OPTIONS_H */
