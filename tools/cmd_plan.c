/*
 * cmd_plan.c — `ferry plan`: where each layer and the KV cache of a model
 * would live under the given budgets, the bytes each link moves per decode
 * step and the predicted tokens/s, without running anything.  The model
 * comes from a .ferry file or from a preset shape (no file needed).
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "offload/offload.h"
#include "runtime/format.h"
#include "tools/cli.h"

static const char plan_usage[] =
    "usage: ferry plan (--model FILE | --model synth:PRESET[:DTYPE] | --preset NAME [--dtype f16])\n"
    "                  [options]\n"
    "\n"
    "Print the placement plan: tier of each layer (gpu, dram, nvme), where the\n"
    "KV cache lives, memory per tier, bytes per decode step over each link,\n"
    "predicted step time and tokens/s.\n"
    "\n"
    "  --batch N|auto         sequences per step (default 1; auto: best predicted tokens/s)\n"
    "  --context N            tokens per sequence (default 2048, at most the model's)\n"
    "  --gpu-mem SIZE         GPU memory budget (default 80G)\n"
    "  --host-mem SIZE        pinned DRAM budget (default 80% of physical memory)\n"
    "  --slots N              GPU slot ring depth (default 2)\n"
    "  --resident-layers N    keep exactly N layers on the GPU (default: as many as fit)\n"
    "  --kv-dtype f16|f32     KV cache element type (default f16)\n"
    "  --link-gbps X          pinned host->GPU GB/s   (default: this machine's profile from\n"
    "                         `ferry iobench --save`, else the H100 test machine's)\n"
    "  --disk-gbps X          NVMe read GB/s\n"
    "  --gpu-gbps X           GPU memory read GB/s\n"
    "  --tflops X             sustained matmul TFLOP/s (0: leave compute out)\n";

enum {
    OPT_MODEL = 256, OPT_PRESET, OPT_DTYPE, OPT_BATCH, OPT_CONTEXT, OPT_GPU_MEM, OPT_HOST_MEM,
    OPT_SLOTS, OPT_RESIDENT, OPT_KV_DTYPE, OPT_LINK, OPT_DISK, OPT_GPU, OPT_TFLOPS, OPT_HELP
};

static const struct option plan_options[] = {
    {"model", required_argument, NULL, OPT_MODEL},
    {"preset", required_argument, NULL, OPT_PRESET},
    {"dtype", required_argument, NULL, OPT_DTYPE},
    {"batch", required_argument, NULL, OPT_BATCH},
    {"context", required_argument, NULL, OPT_CONTEXT},
    {"gpu-mem", required_argument, NULL, OPT_GPU_MEM},
    {"host-mem", required_argument, NULL, OPT_HOST_MEM},
    {"slots", required_argument, NULL, OPT_SLOTS},
    {"resident-layers", required_argument, NULL, OPT_RESIDENT},
    {"kv-dtype", required_argument, NULL, OPT_KV_DTYPE},
    {"link-gbps", required_argument, NULL, OPT_LINK},
    {"disk-gbps", required_argument, NULL, OPT_DISK},
    {"gpu-gbps", required_argument, NULL, OPT_GPU},
    {"tflops", required_argument, NULL, OPT_TFLOPS},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

/* A whole number in [low, high], or -1 with a usage message. */
static int parse_int(const char *name, const char *text, int low, int high, int *out) {
    char *end = NULL;
    long value = strtol(text, &end, 10);
    if (end == text || *end || value < low || value > high) {
        cli_usage_error("plan", "--%s %s: expected a whole number in %d..%d", name, text, low, high);
        return -1;
    }
    *out = (int)value;
    return 0;
}

static int parse_double(const char *name, const char *text, double *out) {
    char *end = NULL;
    double value = strtod(text, &end);
    if (end == text || *end || !(value >= 0)) {
        cli_usage_error("plan", "--%s %s: expected a number >= 0", name, text);
        return -1;
    }
    *out = value;
    return 0;
}

int cmd_plan(int argc, char **argv) {
    const char *model_path = NULL, *preset_name = NULL;
    ferry_dtype dtype = FERRY_DTYPE_F16, kv_dtype = FERRY_DTYPE_F16;
    offload_request request = {0};
    request.batch = 1;
    request.context = 2048;
    request.resident_layers = -1;
    request.gpu_mem_bytes = 80ull << 30;
    long pages = sysconf(_SC_PHYS_PAGES), page_bytes = sysconf(_SC_PAGESIZE);
    request.host_mem_bytes =
        pages > 0 && page_bytes > 0 ? (uint64_t)pages * (uint64_t)page_bytes / 10 * 8 : 0;
    int context_given = 0;
    offload_bandwidths bandwidths;
    offload_bandwidth_origins origins;
    char profile_warning[600];
    offload_bandwidths_from_profile(&bandwidths, &origins, profile_warning,
                                    sizeof profile_warning);
    if (profile_warning[0]) fprintf(stderr, "ferry plan: warning: %s\n", profile_warning);
    ferry_status status;
    optind = 1;
    int option;
    while ((option = getopt_long(argc, argv, "h", plan_options, NULL)) != -1) {
        switch (option) {
        case OPT_MODEL: model_path = optarg; break;
        case OPT_PRESET: preset_name = optarg; break;
        case OPT_DTYPE:
        case OPT_KV_DTYPE:
            if (ferry_dtype_parse(optarg, option == OPT_DTYPE ? &dtype : &kv_dtype) != FERRY_OK)
                return cli_usage_error("plan", "unknown dtype '%s' (f32, f16, bf16)", optarg);
            break;
        case OPT_BATCH:
            if (strcmp(optarg, "auto") == 0) request.batch = 0;
            else if (parse_int("batch", optarg, 1, 65536, &request.batch)) return CLI_USAGE;
            break;
        case OPT_CONTEXT:
            if (parse_int("context", optarg, 1, 1 << 24, &request.context)) return CLI_USAGE;
            context_given = 1;
            break;
        case OPT_GPU_MEM:
        case OPT_HOST_MEM:
            if (ferry_parse_size(optarg, option == OPT_GPU_MEM ? &request.gpu_mem_bytes
                                                               : &request.host_mem_bytes) != FERRY_OK)
                return cli_usage_error("plan", "%s", ferry_last_error());
            break;
        case OPT_SLOTS:
            if (parse_int("slots", optarg, 1, 64, &request.n_slots)) return CLI_USAGE;
            break;
        case OPT_RESIDENT:
            if (parse_int("resident-layers", optarg, 0, 1 << 20, &request.resident_layers))
                return CLI_USAGE;
            break;
        case OPT_LINK:
            if (parse_double("link-gbps", optarg, &bandwidths.host_to_gpu_gbps)) return CLI_USAGE;
            origins.host_to_gpu = OFFLOAD_FROM_GIVEN;
            break;
        case OPT_DISK:
            if (parse_double("disk-gbps", optarg, &bandwidths.disk_read_gbps)) return CLI_USAGE;
            origins.disk_read = OFFLOAD_FROM_GIVEN;
            break;
        case OPT_GPU:
            if (parse_double("gpu-gbps", optarg, &bandwidths.gpu_memory_gbps)) return CLI_USAGE;
            origins.gpu_memory = OFFLOAD_FROM_GIVEN;
            break;
        case OPT_TFLOPS:
            if (parse_double("tflops", optarg, &bandwidths.gpu_tflops)) return CLI_USAGE;
            origins.gpu_tflops = OFFLOAD_FROM_GIVEN;
            break;
        case 'h':
        case OPT_HELP: fputs(plan_usage, stdout); return CLI_OK;
        default: return cli_usage_error("plan", "unknown option");
        }
    }
    if (optind < argc) return cli_usage_error("plan", "unexpected argument '%s'", argv[optind]);
    if (!model_path == !preset_name)
        return cli_usage_error("plan", "give exactly one of --model FILE and --preset NAME");

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
        if (status != FERRY_OK) return cli_fail("plan", status, "%s", model_path);
        layout = &preset_layout;
    } else if (model_path) {
        status = ferry_file_open(model_path, &file);
        if (status != FERRY_OK) return cli_fail("plan", status, "%s", model_path);
        layout = &file->layout;
    } else {
        const ferry_preset *preset = ferry_preset_find(preset_name);
        if (!preset) return cli_usage_error("plan", "unknown preset '%s'", preset_name);
        status = ferry_layout_build(&preset->config, dtype, &preset_layout);
        if (status != FERRY_OK) return cli_fail("plan", status, "preset %s", preset_name);
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
        cli_fail("plan", status, "%s", model_path ? model_path : preset_name);
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
