/* cmd_iobench.c — `ferry iobench` (being written). */
#include "tools/cli.h"

int cmd_iobench(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "ferry iobench: not built yet\n");
    return CLI_FAILED;
}
