/* cmd_info.c — `ferry info` (being written). */
#include "tools/cli.h"

int cmd_info(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "ferry info: not built yet\n");
    return CLI_FAILED;
}
