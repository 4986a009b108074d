/*
 * cmd_plan.c — `ferry plan`: where each layer and the KV cache of a model
 * would live under the given budgets, the bytes each link moves per decode
 * step and the predicted tokens/s, without running anything.  The model
 * comes from a .ferry file or from a preset shape (no file needed).
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "offload/offload.h"
#include "runtime/engine.h"
#include "runtime/format.h"
#include "tools/cli.h"
#include "tools/model_flags.h"
#include "tools/options.h"

static const char *const command = "plan";

static void print_help(FILE *out) {
    fprintf(out,
            "usage: ferry plan (--model FILE | --model synth:PRESET[:DTYPE] |\n"
            "                   --preset NAME [--dtype f16]) [options]\n"
            "\n"
            "Print the placement plan: tier of each layer (gpu, dram, nvme), where the\n"
            "KV cache lives, memory per tier, bytes per decode step over each link,\n"
            "predicted step time and tokens/s.\n"
            "\n"
            "  --batch N|auto         sequences per step (default 1; auto: best predicted tokens/s)\n"
            "  --context N            tokens per sequence (default 2048, at most the model's)\n"
            "  --kv-dtype f16|f32     KV cache element type (default f16)\n"
            "  --link-gbps X          pinned host->GPU GB/s   (default: this machine's profile from\n"
            "                         `ferry iobench --save`, else the H100 test machine's)\n"
            "  --disk-gbps X          NVMe read GB/s\n"
            "  --gpu-gbps X           GPU memory read GB/s\n"
            "  --tflops X             sustained matmul TFLOP/s (0: leave compute out)\n"
            "  --host-gbps X          host DRAM read GB/s of all cores, for attention on the host\n"
            "                         over a KV cache in DRAM (FERRY_ATTENTION=auto|host, the\n"
            "                         default; =device: the GPU reads the cache over the link)\n");
    cli_memory_flags_help(out,
                          "Budgets, as the commands that run a model take them (here --gpu-mem\n"
                          "defaults to 80G and --host-mem to 80% of physical memory):",
                          22);
}

/* "auto" (0) or a whole number of sequences in 1..65536. */
static int parse_batch(const char *text, int *out) {
    if (strcmp(text, "auto") == 0) {
        *out = 0;
        return 0;
    }
    char *end = NULL;
    long value = strtol(text, &end, 10);
    if (end == text || *end || value < 1 || value > 65536)
        return cli_usage_error(command, "--batch %s: expected auto or a whole number in 1..65536",
                               text);
    *out = (int)value;
    return 0;
}

int cmd_plan(int argc, char **argv) {
    const char *model_path = NULL, *preset_name = NULL, *batch_text = "1";
    const char *dtype_name = "f16", *kv_dtype_name = "f16";
    ferry_dtype dtype = FERRY_DTYPE_F16, kv_dtype = FERRY_DTYPE_F16;
    offload_request request = {0};
    request.context = 2048;
    cli_memory_flags memory = CLI_MEMORY_FLAGS_DEFAULT;
    memory.gpu_mem_bytes = 80ull << 30;
    long pages = sysconf(_SC_PHYS_PAGES), page_bytes = sysconf(_SC_PAGESIZE);
    memory.host_mem_bytes =
        pages > 0 && page_bytes > 0 ? (uint64_t)pages * (uint64_t)page_bytes / 10 * 8 : 0;
    offload_bandwidths bandwidths;
    offload_bandwidth_origins origins;
    char profile_warning[600];
    offload_bandwidths_from_profile(&bandwidths, &origins, profile_warning,
                                    sizeof profile_warning);
    ferry_status status;
    cli_option options[] = {
        {"--model", CLI_OPTION_STRING, &model_path, 0, 0, 0},
        {"--preset", CLI_OPTION_STRING, &preset_name, 0, 0, 0},
        {"--dtype", CLI_OPTION_STRING, &dtype_name, 0, 0, 0},
        {"--batch", CLI_OPTION_STRING, &batch_text, 0, 0, 0},
        {"--context", CLI_OPTION_INT, &request.context, 1, 1 << 24, 0},
        {"--kv-dtype", CLI_OPTION_STRING, &kv_dtype_name, 0, 0, 0},
        {"--link-gbps", CLI_OPTION_DOUBLE, &bandwidths.host_to_gpu_gbps, 1e-9, 1e9, 0},
        {"--disk-gbps", CLI_OPTION_DOUBLE, &bandwidths.disk_read_gbps, 1e-9, 1e9, 0},
        {"--gpu-gbps", CLI_OPTION_DOUBLE, &bandwidths.gpu_memory_gbps, 1e-9, 1e9, 0},
        {"--tflops", CLI_OPTION_DOUBLE, &bandwidths.gpu_tflops, 0, 1e9, 0},
        {"--host-gbps", CLI_OPTION_DOUBLE, &bandwidths.host_memory_gbps, 1e-9, 1e9, 0},
        CLI_MEMORY_OPTIONS(&memory),
    };
    const int n_options = (int)(sizeof options / sizeof options[0]);
    int parsed = cli_parse_options(command, argc, argv, options, n_options, print_help);
    if (parsed == CLI_HELP_SHOWN) return CLI_OK;
    if (parsed != CLI_PARSED) return CLI_USAGE;
    if (parse_batch(batch_text, &request.batch) != 0) return CLI_USAGE;
    if (ferry_dtype_parse(dtype_name, &dtype) != FERRY_OK)
        return cli_usage_error(command, "--dtype: unknown dtype '%s' (f32, f16, bf16)", dtype_name);
    if (ferry_dtype_parse(kv_dtype_name, &kv_dtype) != FERRY_OK)
        return cli_usage_error(command, "--kv-dtype: unknown dtype '%s' (f32, f16, bf16)",
                               kv_dtype_name);
    if (profile_warning[0]) fprintf(stderr, "ferry plan: warning: %s\n", profile_warning);
    /* a figure given on the command line says so in the plan */
    const struct { const char *name; offload_figure_origin *origin; } given[] = {
        {"--link-gbps", &origins.host_to_gpu}, {"--disk-gbps", &origins.disk_read},
        {"--gpu-gbps", &origins.gpu_memory}, {"--tflops", &origins.gpu_tflops},
        {"--host-gbps", &origins.host_memory}};
    for (size_t i = 0; i < sizeof given / sizeof given[0]; i++)
        if (cli_option_find(options, n_options, given[i].name)->seen)
            *given[i].origin = OFFLOAD_FROM_GIVEN;
    request.gpu_mem_bytes = memory.gpu_mem_bytes;
    request.host_mem_bytes = memory.host_mem_bytes;
    request.resident_layers = memory.resident_layers;
    request.n_slots = memory.slots;
    ferry_attention_place attention;
    status = ferry_attention_place_from_env(&attention);
    if (status != FERRY_OK) return cli_fail(command, status, "environment");
    request.host_attention = attention != FERRY_ATTENTION_DEVICE;
    int context_given = cli_option_find(options, n_options, "--context")->seen;
    if (!model_path == !preset_name)
        return cli_usage_error(command, "give exactly one of --model FILE and --preset NAME");

    ferry_file *file = NULL;
    ferry_layout preset_layout;
    memset(&preset_layout, 0, sizeof preset_layout);
    const ferry_layout *layout = NULL;
    uint64_t *layer_bytes = NULL;
    offload_plan plan;
    memset(&plan, 0, sizeof plan);
    int result = CLI_FAILED;
    ferry_synth_spec synth;
    if (model_path && ferry_synth_is_name(model_path)) {
        /* synth:PRESET[:DTYPE]: the preset's layout, as --preset gives. */
        status = ferry_synth_parse(model_path, &synth);
        if (status == FERRY_OK)
            status = ferry_layout_build(&synth.preset->config, synth.dtype, &preset_layout);
        if (status != FERRY_OK) return cli_fail(command, status, "%s", model_path);
        layout = &preset_layout;
    } else if (model_path) {
        status = ferry_file_open(model_path, &file);
        if (status != FERRY_OK) return cli_fail(command, status, "%s", model_path);
        layout = &file->layout;
    } else {
        const ferry_preset *preset = ferry_preset_find(preset_name);
        if (!preset) return cli_usage_error(command, "unknown preset '%s'", preset_name);
        status = ferry_layout_build(&preset->config, dtype, &preset_layout);
        if (status != FERRY_OK) return cli_fail(command, status, "preset %s", preset_name);
        layout = &preset_layout;
    }
    if (!context_given && request.context > layout->config.max_position)
        request.context = layout->config.max_position;
    layer_bytes = calloc((size_t)layout->config.n_layers, sizeof *layer_bytes);
    if (!layer_bytes) {
        fprintf(stderr, "ferry plan: out of memory\n");
        goto done;
    }
    offload_model_shape shape;
    status = offload_shape_from_layout(layout, ferry_dtype_bytes(kv_dtype), layer_bytes, &shape);
    if (status == FERRY_OK) status = offload_plan_make(&shape, &request, &bandwidths, &plan);
    plan.bandwidths_from = origins;
    if (status != FERRY_OK) {
        cli_fail(command, status, "%s", model_path ? model_path : preset_name);
        goto done;
    }
    printf("model: %s (%s, %d layers, %s)\n", model_path ? model_path : preset_name,
           layout->config.architecture, layout->config.n_layers, ferry_dtype_name(layout->dtype));
    offload_plan_print(&plan, stdout);
    result = CLI_OK;
done:
    offload_plan_free(&plan);
    free(layer_bytes);
    ferry_layout_free(&preset_layout);
    ferry_file_close(file);
    return result;
}
