/*
 * cmd_synth.c — `ferry synth`: write a random-weight model of a standard
 * shape straight into the .ferry format, one tensor at a time, with no
 * checkpoint.  Same preset, dtype, layers and seed give the same file.
 */
#include <getopt.h>
#include <pthread.h>
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
    "  --list          list the presets\n";

/* xorshift64* stream: fast, and seeded per tensor so tensors can be made
 * in any order with the same result. */
static uint64_t stream_next(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dull;
}

static uint64_t tensor_seed(uint64_t seed, int layer, int kind) {
    uint64_t z = seed * 0x9e3779b97f4a7c15ull + (uint64_t)(layer + 2) * 0xbf58476d1ce4e5b9ull +
                 (uint64_t)kind * 0x94d049bb133111ebull;
    z = (z ^ (z >> 31)) * 0xd6e8feb86659fd93ull;
    return (z ^ (z >> 32)) | 1u;
}

/* Values are made in blocks of FILL_BLOCK elements, each block from its own
 * stream, so worker threads can fill one tensor together and the result
 * does not depend on the thread count. */
enum { FILL_BLOCK = 1 << 16, FILL_THREADS_MAX = 64 };

typedef struct fill_job {
    void *data;
    const ferry_tensor_entry *entry;
    uint64_t seed;
    uint64_t first_block, n_blocks, stride;
} fill_job;

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("f16c,avx"))) static void floats_to_f16_f16c(uint16_t *out,
                                                                     const float *in, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) out[i] = ferry_f32_to_f16(in[i]);
}
#endif

static void store_block(void *data, ferry_dtype dtype, uint64_t at, const float *values,
                        size_t n) {
#if defined(__x86_64__)
    if (dtype == FERRY_DTYPE_F16 && __builtin_cpu_supports("f16c")) {
        floats_to_f16_f16c((uint16_t *)data + at, values, n);
        return;
    }
#endif
    ferry_convert_dtype((char *)data + at * ferry_dtype_bytes(dtype), dtype, values,
                        FERRY_DTYPE_F32, n);
}

/* Matrices: uniform with standard deviation 0.02 (HF's initializer range);
 * norms: 1 +- 0.1; biases: +-0.02. */
static void *fill_worker(void *arg) {
    const fill_job *job = arg;
    const ferry_tensor_entry *entry = job->entry;
    uint64_t n = entry->rows * entry->cols;
    const ferry_tensor_spec *spec = &ferry_tensor_specs[entry->kind];
    int is_norm = !spec->is_matrix && entry->kind != FERRY_TENSOR_BQ &&
                  entry->kind != FERRY_TENSOR_BK && entry->kind != FERRY_TENSOR_BV;
    float center = is_norm ? 1.0f : 0.0f;
    float half_width = is_norm ? 0.1f : 0.02f * 1.7320508f;
    static _Thread_local float values[FILL_BLOCK];
    for (uint64_t block = job->first_block; block < job->n_blocks; block += job->stride) {
        uint64_t state = tensor_seed(job->seed ^ (block * 0x9e3779b97f4a7c15ull), entry->layer,
                                     (int)entry->kind);
        uint64_t at = block * FILL_BLOCK;
        size_t count = (size_t)(n - at < FILL_BLOCK ? n - at : FILL_BLOCK);
        for (size_t i = 0; i < count; i++) {
            float unit = (float)(stream_next(&state) >> 40) * 0x1p-24f; /* [0, 1) */
            values[i] = center + half_width * (2.0f * unit - 1.0f);
        }
        store_block(job->data, entry->dtype, at, values, count);
    }
    return NULL;
}

static void fill_tensor(void *data, const ferry_tensor_entry *entry, uint64_t seed,
                        int n_threads) {
    uint64_t n = entry->rows * entry->cols;
    uint64_t n_blocks = (n + FILL_BLOCK - 1) / FILL_BLOCK;
    if ((uint64_t)n_threads > n_blocks) n_threads = (int)n_blocks;
    fill_job jobs[FILL_THREADS_MAX];
    pthread_t threads[FILL_THREADS_MAX];
    int started[FILL_THREADS_MAX] = {0};
    for (int t = 1; t < n_threads; t++) {
        jobs[t] = (fill_job){data, entry, seed, (uint64_t)t, n_blocks, (uint64_t)n_threads};
        started[t] = pthread_create(&threads[t], NULL, fill_worker, &jobs[t]) == 0;
        if (!started[t]) fill_worker(&jobs[t]); /* no thread: do its share here */
    }
    jobs[0] = (fill_job){data, entry, seed, 0, n_blocks, (uint64_t)n_threads};
    fill_worker(&jobs[0]);
    for (int t = 1; t < n_threads; t++)
        if (started[t]) pthread_join(threads[t], NULL);
}

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
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int n_threads = cores < 1 ? 1 : cores > 16 ? 16 : (int)cores;
    uint64_t start_ns = ferry_now_ns(), written = 0;
    for (int i = 0; i < layout->n_tensors && status == FERRY_OK; i++) {
        const ferry_tensor_entry *entry = &layout->tensors[i];
        fill_tensor(buffer, entry, seed, n_threads);
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
