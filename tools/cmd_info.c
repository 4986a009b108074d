/*
 * cmd_info.c — `ferry info`: what a .ferry file holds (architecture,
 * shapes, rope, parameters, bytes per layer, dtype, alignment), as a table
 * or one JSON object; --verify checks every tensor's checksum and names
 * the first bad one.
 */
#include <getopt.h>
#include <stdlib.h>

#include <cjson/cJSON.h>

#include "runtime/format_internal.h"
#include "tools/cli.h"

static const char info_usage[] =
    "usage: ferry info FILE.ferry [--verify] [--json]\n"
    "\n"
    "Describe a .ferry model file.\n"
    "  --verify   check every tensor's XXH3-64 checksum (reads the whole file);\n"
    "             exits 1 naming the first damaged tensor\n"
    "  --json     print one JSON object instead of the table\n";

static const char *rope_name(ferry_rope_type type) {
    static const char *const names[] = {"default", "llama3", "linear"};
    return (unsigned)type < 3 ? names[type] : "?";
}

/* Bytes of one layer's blob (every layer has the same layout). */
static uint64_t layer_bytes(const ferry_layout *layout) {
    return layout->n_extents > 1 ? layout->extents[1].bytes : 0;
}

static void print_table(const ferry_file *file) {
    const ferry_layout *layout = &file->layout;
    const ferry_config *c = &layout->config;
    printf("file            %s\n", file->path);
    printf("architecture    %s\n", c->architecture);
    printf("parameters      %.3fB (%llu)\n", (double)ferry_config_n_parameters(c) / 1e9,
           (unsigned long long)ferry_config_n_parameters(c));
    printf("dtype           %s (norms and biases f32)\n", ferry_dtype_name(layout->dtype));
    printf("layers          %d\n", c->n_layers);
    printf("hidden          %d\n", c->hidden_size);
    printf("intermediate    %d\n", c->intermediate_size);
    printf("heads           %d query, %d key/value (GQA %d:1), head_dim %d\n", c->n_heads,
           c->n_kv_heads, c->n_heads / c->n_kv_heads, c->head_dim);
    printf("vocab           %d%s\n", c->vocab_size, c->tie_embeddings ? " (tied embeddings)" : "");
    printf("context         %d\n", c->max_position);
    printf("rms_norm_eps    %g\n", (double)c->rms_norm_eps);
    printf("rope            %s, theta %g", rope_name(c->rope_type), c->rope_theta);
    if (c->rope_type != FERRY_ROPE_DEFAULT) printf(", factor %g", c->rope_factor);
    if (c->rope_type == FERRY_ROPE_LLAMA3)
        printf(", low_freq_factor %g, high_freq_factor %g, original context %d",
               c->rope_low_freq_factor, c->rope_high_freq_factor, c->rope_original_max_position);
    printf("\n");
    printf("qkv bias        %s\n", c->attention_bias ? "yes" : "no");
    printf("tokens          bos %d, eos", c->bos_token_id);
    for (int i = 0; i < c->n_eos_token_ids; i++) printf("%s%d", i ? "," : " ", c->eos_token_ids[i]);
    printf("%s\n", c->n_eos_token_ids ? "" : " none");
    printf("alignment       %u bytes per blob, %u per tensor\n", FERRY_BLOB_ALIGN,
           FERRY_TENSOR_ALIGN);
    printf("globals         %.2f MB (%llu bytes) at offset %llu\n",
           (double)layout->extents[0].bytes / 1e6, (unsigned long long)layout->extents[0].bytes,
           (unsigned long long)layout->extents[0].offset);
    printf("per layer       %.2f MB (%llu bytes)\n", (double)layer_bytes(layout) / 1e6,
           (unsigned long long)layer_bytes(layout));
    printf("tensors         %d\n", layout->n_tensors);
    printf("file size       %.3f GB (%llu bytes)\n", (double)file->file_bytes / 1e9,
           (unsigned long long)file->file_bytes);
    for (int i = 0; i < file->n_texts; i++)
        printf("text            %s (%llu bytes)\n", file->texts[i].key,
               (unsigned long long)file->texts[i].bytes);
}

/* verified: 1 ok, 0 failed, -1 not checked. */
static int print_json(const ferry_file *file, int verified) {
    const ferry_layout *layout = &file->layout;
    cJSON *root = cJSON_CreateObject();
    if (!root) return -1;
    cJSON_AddStringToObject(root, "file", file->path);
    cJSON_AddNumberToObject(root, "file_bytes", (double)file->file_bytes);
    cJSON_AddNumberToObject(root, "parameters", (double)ferry_config_n_parameters(&layout->config));
    cJSON_AddStringToObject(root, "dtype", ferry_dtype_name(layout->dtype));
    cJSON_AddNumberToObject(root, "alignment", FERRY_BLOB_ALIGN);
    cJSON_AddNumberToObject(root, "tensor_alignment", FERRY_TENSOR_ALIGN);
    cJSON_AddNumberToObject(root, "globals_bytes", (double)layout->extents[0].bytes);
    cJSON_AddNumberToObject(root, "layer_bytes", (double)layer_bytes(layout));
    cJSON_AddNumberToObject(root, "n_tensors", layout->n_tensors);
    cJSON_AddItemToObject(root, "config", ferry_config_to_json(&layout->config));
    cJSON *texts = cJSON_AddArrayToObject(root, "texts");
    for (int i = 0; i < file->n_texts; i++)
        cJSON_AddItemToArray(texts, cJSON_CreateString(file->texts[i].key));
    if (verified >= 0) cJSON_AddBoolToObject(root, "verified", verified);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return -1;
    printf("%s\n", text);
    free(text);
    return 0;
}

typedef struct verify_progress {
    uint64_t start_ns;
    int shown;
} verify_progress;

static void show_progress(void *context, int n_done, int n_total, uint64_t done_bytes) {
    verify_progress *progress = context;
    double seconds = (double)(ferry_now_ns() - progress->start_ns) / 1e9;
    fprintf(stderr, "\rverify: %d/%d tensors  %.2f GB  %.2f GB/s   ", n_done, n_total,
            (double)done_bytes / 1e9, seconds > 0 ? (double)done_bytes / 1e9 / seconds : 0.0);
    progress->shown = 1;
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
    if (!json) print_table(file);
    int rc = CLI_OK, verified = -1;
    if (verify) {
        int bad = -1;
        verify_progress progress = {.start_ns = ferry_now_ns()};
        status = ferry_file_verify_progress(file, &bad, cli_stderr_is_tty() ? show_progress : NULL,
                                            &progress);
        if (progress.shown) fputc('\n', stderr);
        verified = status == FERRY_OK;
        if (status != FERRY_OK) {
            rc = cli_fail("info", status, "verify");
        } else if (!json) {
            double seconds = (double)(ferry_now_ns() - progress.start_ns) / 1e9;
            printf("verify          %d tensors ok (%.1f s)\n", file->layout.n_tensors, seconds);
        }
    }
    if (json && print_json(file, verified) != 0) rc = cli_fail("info", FERRY_OK, "out of memory");
    ferry_file_close(file);
    return rc;
}
