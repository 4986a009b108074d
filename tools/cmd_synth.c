/*
 * cmd_synth.c — `ferry synth`: write a random-weight model of a standard
 * shape straight into the .ferry format, one tensor at a time, with no
 * checkpoint.  Same preset, dtype, layers and seed give the same file.
 * The values come from runtime/synth.c, which also fills synth: models.
 */
#include <getopt.h>
#include <unistd.h>
#include <stdlib.h>

#include "runtime/format.h"
#include "tools/cli.h"

static const char synth_usage[] =
    "usage: ferry synth --preset NAME OUT.ferry [--dtype f16|bf16|f32] [--layers N] [--seed S]\n"
    "       ferry synth --list\n"
    "\n"
    "Write a random-weight model of a standard shape (no checkpoint needed).\n"
    "  --preset NAME   model shape (see --list)\n"
    "  --dtype D       weight dtype: f16 (default), bf16 or f32\n"
    "  --layers N      override the number of decoder layers\n"
    "  --seed S        random seed (default 0); same seed, same file\n"
    "  --list          list the presets\n"
    "\n"
    "The same weights without a file: --model synth:PRESET[:DTYPE[:SEED]] (bench,\n"
    "generate, logits, plan) generates them in memory when the model opens.\n";

static void list_presets(FILE *out) {
    for (int i = 0; i < ferry_n_presets; i++) {
        const ferry_preset *preset = &ferry_presets[i];
        fprintf(out, "  %-14s %6.2fB params  %s\n", preset->name,
                (double)ferry_config_n_parameters(&preset->config) / 1e9, preset->description);
    }
}

int cmd_synth(int argc, char **argv) {
    const char *preset_name = NULL, *dtype_name = "f16";
    long layers = 0;
    unsigned long long seed = 0;
    static const struct option options[] = {
        {"preset", required_argument, 0, 'p'}, {"dtype", required_argument, 0, 'd'},
        {"layers", required_argument, 0, 'l'}, {"seed", required_argument, 0, 's'},
        {"list", no_argument, 0, 'L'},         {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        char *end = NULL;
        switch (opt) {
        case 'p': preset_name = optarg; break;
        case 'd': dtype_name = optarg; break;
        case 'l':
            layers = strtol(optarg, &end, 10);
            if (*end || layers <= 0 || layers > 4096)
                return cli_usage_error("synth", "--layers must be a positive integer, got '%s'",
                                       optarg);
            break;
        case 's':
            seed = strtoull(optarg, &end, 0);
            if (*end || !*optarg)
                return cli_usage_error("synth", "--seed must be an integer, got '%s'", optarg);
            break;
        case 'L': list_presets(stdout); return CLI_OK;
        case 'h': fputs(synth_usage, stdout); return CLI_OK;
        default: return cli_usage_error("synth", "bad option");
        }
    }
    if (optind != argc - 1) return cli_usage_error("synth", "expected one output path");
    const char *out_path = argv[optind];
    if (!preset_name) return cli_usage_error("synth", "--preset is required (see --list)");
    const ferry_preset *preset = ferry_preset_find(preset_name);
    if (!preset) {
        fprintf(stderr, "ferry synth: unknown preset '%s'; presets:\n", preset_name);
        list_presets(stderr);
        return CLI_USAGE;
    }
    ferry_dtype dtype;
    if (ferry_dtype_parse(dtype_name, &dtype) != FERRY_OK)
        return cli_usage_error("synth", "%s", ferry_last_error());
    ferry_config config = preset->config;
    if (layers > 0) config.n_layers = (int)layers;

    ferry_writer *writer = NULL;
    ferry_status status = ferry_writer_open(out_path, &config, dtype, &writer);
    if (status != FERRY_OK) return cli_fail("synth", status, "failed");
    const ferry_layout *layout = ferry_writer_layout(writer);
    uint64_t largest = 0;
    for (int i = 0; i < layout->n_tensors; i++)
        if (layout->tensors[i].bytes > largest) largest = layout->tensors[i].bytes;
    void *buffer = malloc(largest);
    if (!buffer) {
        ferry_writer_free(writer);
        return cli_fail("synth", FERRY_OK, "out of memory for a %llu-byte tensor",
                        (unsigned long long)largest);
    }
    int progress = cli_stderr_is_tty();
    int n_threads = ferry_synth_default_threads();
    uint64_t start_ns = ferry_now_ns(), written = 0;
    for (int i = 0; i < layout->n_tensors && status == FERRY_OK; i++) {
        const ferry_tensor_entry *entry = &layout->tensors[i];
        ferry_synth_fill_tensor(buffer, entry, seed, n_threads);
        status = ferry_writer_put(writer, entry->layer, entry->kind, buffer, entry->bytes);
        written += entry->bytes;
        if (progress) {
            double seconds = (double)(ferry_now_ns() - start_ns) / 1e9;
            fprintf(stderr, "\rsynth: layer %d/%d  %.2f GB  %.2f GB/s   ", entry->layer + 1,
                    config.n_layers, (double)written / 1e9,
                    seconds > 0 ? (double)written / 1e9 / seconds : 0.0);
        }
    }
    if (progress) fputc('\n', stderr);
    free(buffer);
    if (status == FERRY_OK) status = ferry_writer_finish(writer);
    ferry_writer_free(writer);
    if (status != FERRY_OK) return cli_fail("synth", status, "failed");
    double seconds = (double)(ferry_now_ns() - start_ns) / 1e9;
    double parameters = (double)ferry_config_n_parameters(&config);
    double parameter_scale = parameters >= 1e9 ? 1e9 : parameters >= 1e6 ? 1e6 : 1e3;
    double byte_scale = written >= 1000000000u ? 1e9 : 1e6;
    printf("wrote %s: preset %s, %d layers, %s, %.3f%s parameters, %.2f %s in %.1f s "
           "(%.2f GB/s)\n",
           out_path, preset->name, config.n_layers, ferry_dtype_name(dtype),
           parameters / parameter_scale,
           parameter_scale == 1e9 ? "B" : parameter_scale == 1e6 ? "M" : "K",
           (double)written / byte_scale, byte_scale == 1e9 ? "GB" : "MB", seconds,
           seconds > 0 ? (double)written / 1e9 / seconds : 0.0);
    return CLI_OK;
}
