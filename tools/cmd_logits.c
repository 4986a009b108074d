/* cmd_logits.c — `ferry logits` (being written). */
#include "tools/cli.h"

int cmd_logits(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "ferry logits: not built yet\n");
    return CLI_FAILED;
}
