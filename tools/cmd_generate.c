/* cmd_generate.c — `ferry generate` (being written). */
#include "tools/cli.h"

int cmd_generate(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "ferry generate: not built yet\n");
    return CLI_FAILED;
}
