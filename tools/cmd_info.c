/*
 * cmd_info.c — `ferry info`: what a .ferry file holds (architecture,
 * shapes, bytes per layer, dtype, alignment); --verify checks every
 * tensor's checksum and names the first bad one.
 */
#include <getopt.h>
#include <stdlib.h>

#include "runtime/format_internal.h"
#include "tools/cli.h"

static const char info_usage[] =
    "usage: ferry info FILE.ferry [--verify] [--json]\n"
    "\n"
    "Describe a .ferry model file.\n"
    "  --verify   check every tensor's XXH3-64 checksum (reads the whole file)\n"
    "  --json     print one JSON object instead of the table\n";

static const char *rope_name(ferry_rope_type type) {
    static const char *const names[] = {"default", "llama3", "linear"};
    return (unsigned)type < 3 ? names[type] : "?";
}

static void print_table(const ferry_file *file) {
    const ferry_layout *layout = &file->layout;
    const ferry_config *c = &layout->config;
    uint64_t layer_bytes = layout->n_extents > 1 ? layout->extents[1].bytes : 0;
    printf("file            %s\n", file->path);
    printf("architecture    %s\n", c->architecture);
    printf("parameters      %.3fB\n", (double)ferry_config_n_parameters(c) / 1e9);
    printf("dtype           %s (norms and biases f32)\n", ferry_dtype_name(layout->dtype));
    printf("layers          %d\n", c->n_layers);
    printf("hidden          %d\n", c->hidden_size);
    printf("intermediate    %d\n", c->intermediate_size);
    printf("heads           %d query, %d key/value (GQA %d:1), head_dim %d\n", c->n_heads,
           c->n_kv_heads, c->n_heads / c->n_kv_heads, c->head_dim);
    printf("vocab           %d%s\n", c->vocab_size, c->tie_embeddings ? " (tied embeddings)" : "");
    printf("context         %d\n", c->max_position);
    printf("rope            %s, theta %g", rope_name(c->rope_type), c->rope_theta);
    if (c->rope_type != FERRY_ROPE_DEFAULT) printf(", factor %g", c->rope_factor);
    printf("\n");
    printf("qkv bias        %s\n", c->attention_bias ? "yes" : "no");
    printf("alignment       %u bytes per blob, %u per tensor\n", FERRY_BLOB_ALIGN,
           FERRY_TENSOR_ALIGN);
    printf("globals         %.2f MB at offset %llu\n", (double)layout->extents[0].bytes / 1e6,
           (unsigned long long)layout->extents[0].offset);
    printf("per layer       %.2f MB\n", (double)layer_bytes / 1e6);
    printf("file size       %.3f GB\n", (double)file->file_bytes / 1e9);
    for (int i = 0; i < file->n_texts; i++)
        printf("text            %s (%llu bytes)\n", file->texts[i].key,
               (unsigned long long)file->texts[i].bytes);
}

int cmd_info(int argc, char **argv) {
    int verify = 0, json = 0;
    static const struct option options[] = {{"verify", no_argument, 0, 'v'},
                                            {"json", no_argument, 0, 'j'},
                                            {"help", no_argument, 0, 'h'},
                                            {0, 0, 0, 0}};
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case 'v': verify = 1; break;
        case 'j': json = 1; break;
        case 'h': fputs(info_usage, stdout); return CLI_OK;
        default: return cli_usage_error("info", "bad option");
        }
    }
    if (optind != argc - 1) return cli_usage_error("info", "expected one .ferry file");
    ferry_file *file = NULL;
    ferry_status status = ferry_file_open(argv[optind], &file);
    if (status != FERRY_OK) return cli_fail("info", status, "failed");
    if (json) {
        /* The manifest is the machine-readable description. */
        printf("%s\n", file->manifest_json);
    } else {
        print_table(file);
    }
    int rc = CLI_OK;
    if (verify) {
        int bad = -1;
        uint64_t start_ns = ferry_now_ns();
        status = ferry_file_verify(file, &bad);
        if (status != FERRY_OK) {
            rc = cli_fail("info", status, "verify");
        } else if (!json) {
            printf("verify          %d tensors ok (%.1f s)\n", file->layout.n_tensors,
                   (double)(ferry_now_ns() - start_ns) / 1e9);
        }
    }
    ferry_file_close(file);
    return rc;
}
