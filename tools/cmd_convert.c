/*
 * cmd_convert.c — `ferry convert HF_DIR OUT.ferry [--dtype keep|f32|f16|bf16]`:
 * option parsing and a progress line over ferry_convert_hf (runtime/convert.c).
 */
#include <signal.h>
#include <string.h>

#include "runtime/convert.h"
#include "tools/cli.h"

static const char usage[] =
    "usage: ferry convert HF_DIR OUT.ferry [--dtype keep|f32|f16|bf16]\n"
    "\n"
    "Convert a Hugging Face checkpoint directory (config.json and model.safetensors,\n"
    "or shards listed in model.safetensors.index.json) to a .ferry file.\n"
    "Architectures: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM.\n"
    "\n"
    "options:\n"
    "  --dtype D   dtype of the weight matrices in the output: keep (the\n"
    "              checkpoint's, default), f32, f16 or bf16; norms and biases\n"
    "              are always f32\n"
    "  --help      show this help\n"
    "\n"
    "tokenizer.json, tokenizer_config.json and generation_config.json are stored\n"
    "in the file when HF_DIR has them.  The output appears only once complete.\n";

static volatile sig_atomic_t stop_requested;

static void request_stop(int signal_number) {
    (void)signal_number;
    stop_requested = 1;
}

/* "\r  layers 12/32, tensors 110/291, 3.42 GB read, 1.10 GB/s" on a
 * terminal; says stop once Ctrl-C or SIGTERM arrived. */
static int on_progress(const ferry_convert_progress *progress, void *user) {
    if (!*(const int *)user) return stop_requested;
    double seconds = (double)progress->elapsed_ns * 1e-9;
    double gigabytes = (double)progress->bytes_read * 1e-9;
    fprintf(stderr, "\r  layers %d/%d, tensors %d/%d, %.2f GB read, %.2f GB/s   ",
            progress->n_layers_done, progress->n_layers, progress->n_tensors_done,
            progress->n_tensors, gigabytes, seconds > 0 ? gigabytes / seconds : 0.0);
    if (progress->n_tensors_done == progress->n_tensors) fputc('\n', stderr);
    return stop_requested;
}

int cmd_convert(int argc, char **argv) {
    const char *positional[2] = {NULL, NULL};
    int n_positional = 0;
    ferry_convert_options options = {.keep_dtype = 1};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            return CLI_OK;
        }
        if (strcmp(argv[i], "--dtype") == 0) {
            if (i + 1 >= argc) return cli_usage_error("convert", "--dtype needs a value");
            const char *name = argv[++i];
            if (strcmp(name, "keep") == 0) {
                options.keep_dtype = 1;
            } else if (ferry_dtype_parse(name, &options.dtype) == FERRY_OK) {
                options.keep_dtype = 0;
            } else {
                return cli_usage_error("convert", "--dtype '%s': expected keep, f32, f16 or bf16",
                                       name);
            }
        } else if (strncmp(argv[i], "--", 2) == 0) {
            return cli_usage_error("convert", "unknown option '%s'", argv[i]);
        } else if (n_positional < 2) {
            positional[n_positional++] = argv[i];
        } else {
            return cli_usage_error("convert", "unexpected argument '%s'", argv[i]);
        }
    }
    if (n_positional != 2) return cli_usage_error("convert", "needs HF_DIR and OUT.ferry");
    int show_progress = cli_stderr_is_tty();
    options.progress = on_progress;
    options.progress_user = &show_progress;
    struct sigaction action = {.sa_handler = request_stop};
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    ferry_status status = ferry_convert_hf(positional[0], positional[1], &options);
    if (status != FERRY_OK) {
        if (show_progress) fputc('\n', stderr);
        return cli_fail("convert", status, "failed");
    }
    fprintf(stderr, "ferry convert: wrote %s\n", positional[1]);
    return CLI_OK;
}
