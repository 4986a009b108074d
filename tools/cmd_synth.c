/* cmd_synth.c — `ferry synth` (being written). */
#include "tools/cli.h"

int cmd_synth(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "ferry synth: not built yet\n");
    return CLI_FAILED;
}
