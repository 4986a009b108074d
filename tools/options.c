/*
 * options.c — the option table walker behind the subcommands: strict number parsing (the whole text must be a
 * number, in range), one clear message per mistake.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "tools/cli.h"
#include "tools/options.h"

const cli_option *cli_option_find(const cli_option *options, int n_options, const char *name) {
    for (int i = 0; i < n_options; i++)
        if (strcmp(options[i].name, name) == 0) return &options[i];
    return NULL;
}

/* Store `value` into the option's target; nonzero with a message if bad. */
static int set_option(const char *command, cli_option *option, const char *value) {
    char *end = NULL;
    errno = 0;
    switch (option->kind) {
    case CLI_OPTION_STRING:
        if (!*value) return cli_usage_error(command, "%s needs a non-empty value", option->name);
        *(const char **)option->target = value;
        return 0;
    case CLI_OPTION_INT: {
        long parsed = strtol(value, &end, 10);
        if (end == value || *end || errno || parsed < option->min || parsed > option->max)
            return cli_usage_error(command, "%s '%s' is not an integer in %.0f..%.0f",
                                   option->name, value, option->min, option->max);
        *(int *)option->target = (int)parsed;
        return 0;
    }
    case CLI_OPTION_FLOAT:
    case CLI_OPTION_DOUBLE: {
        double parsed = strtod(value, &end);
        if (end == value || *end || errno || !isfinite(parsed) || parsed < option->min ||
            parsed > option->max)
            return cli_usage_error(command, "%s '%s' is not a number in %g..%g", option->name,
                                   value, option->min, option->max);
        if (option->kind == CLI_OPTION_FLOAT) *(float *)option->target = (float)parsed;
        else *(double *)option->target = parsed;
        return 0;
    }
    case CLI_OPTION_U64: {
        if (value[0] == '-')
            return cli_usage_error(command, "%s '%s' must not be negative", option->name, value);
        unsigned long long parsed = strtoull(value, &end, 0);
        if (end == value || *end || errno)
            return cli_usage_error(command, "%s '%s' is not a non-negative integer", option->name,
                                   value);
        *(uint64_t *)option->target = (uint64_t)parsed;
        return 0;
    }
    case CLI_OPTION_SIZE: {
        uint64_t bytes = 0;
        if (ferry_parse_size(value, &bytes) != FERRY_OK)
            return cli_usage_error(command, "%s: %s", option->name, ferry_last_error());
        if ((double)bytes < option->min)
            return cli_usage_error(command, "%s '%s' is %llu bytes; the least allowed is %.0f",
                                   option->name, value, (unsigned long long)bytes, option->min);
        *(uint64_t *)option->target = bytes;
        return 0;
    }
    case CLI_OPTION_FLAG: *(int *)option->target = 1; return 0;
    }
    return cli_usage_error(command, "internal: bad option kind");
}

int cli_parse_options(const char *command, int argc, char **argv, cli_option *options,
                      int n_options, void (*print_help)(FILE *out)) {
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            print_help(stdout);
            return CLI_HELP_SHOWN;
        }
        /* "--name=value" or "--name value" */
        const char *equals = strchr(arg, '=');
        size_t name_length = equals ? (size_t)(equals - arg) : strlen(arg);
        cli_option *option = NULL;
        for (int j = 0; j < n_options; j++)
            if (strlen(options[j].name) == name_length &&
                strncmp(options[j].name, arg, name_length) == 0)
                option = &options[j];
        if (!option) {
            cli_usage_error(command, arg[0] == '-' ? "unknown option '%s'" : "unexpected argument '%s'",
                            arg);
            return CLI_BAD_USAGE;
        }
        if (option->seen) {
            cli_usage_error(command, "%s given twice", option->name);
            return CLI_BAD_USAGE;
        }
        option->seen = 1;
        const char *value = NULL;
        if (option->kind == CLI_OPTION_FLAG) {
            if (equals) {
                cli_usage_error(command, "%s takes no value", option->name);
                return CLI_BAD_USAGE;
            }
        } else if (equals) {
            value = equals + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            cli_usage_error(command, "%s needs a value", option->name);
            return CLI_BAD_USAGE;
        }
        if (set_option(command, option, value) != 0) return CLI_BAD_USAGE;
    }
    return CLI_PARSED;
}

double cli_now_ms(void) { return (double)ferry_now_ns() / 1e6; }
