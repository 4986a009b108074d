/* cmd_convert.c — `ferry convert` (being written). */
#include "tools/cli.h"

int cmd_convert(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "ferry convert: not built yet\n");
    return CLI_FAILED;
}
