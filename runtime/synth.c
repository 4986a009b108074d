/*
 * synth.c — synthetic weights: the deterministic per-tensor generator that
 * `ferry synth` writes into a .ferry file and that a "synth:PRESET" model
 * fills its memory with (one implementation, so both hold the same bytes),
 * the "synth:PRESET[:DTYPE[:SEED]]" names, and the weight source that hands
 * a model its tensors and layers from a file or from the generator.
 */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "runtime/format.h"

/* ------------------------------------------------------------ generator */

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

void ferry_synth_fill_tensor(void *dst, const ferry_tensor_entry *entry, uint64_t seed,
                             int n_threads) {
    uint64_t n = entry->rows * entry->cols;
    uint64_t n_blocks = (n + FILL_BLOCK - 1) / FILL_BLOCK;
    if (n_threads > FILL_THREADS_MAX) n_threads = FILL_THREADS_MAX;
    if ((uint64_t)n_threads > n_blocks) n_threads = (int)n_blocks;
    if (n_threads < 1) n_threads = 1;
    fill_job jobs[FILL_THREADS_MAX];
    pthread_t threads[FILL_THREADS_MAX];
    int started[FILL_THREADS_MAX] = {0};
    for (int t = 1; t < n_threads; t++) {
        jobs[t] = (fill_job){dst, entry, seed, (uint64_t)t, n_blocks, (uint64_t)n_threads};
        started[t] = pthread_create(&threads[t], NULL, fill_worker, &jobs[t]) == 0;
        if (!started[t]) fill_worker(&jobs[t]); /* no thread: do its share here */
    }
    jobs[0] = (fill_job){dst, entry, seed, 0, n_blocks, (uint64_t)n_threads};
    fill_worker(&jobs[0]);
    for (int t = 1; t < n_threads; t++)
        if (started[t]) pthread_join(threads[t], NULL);
}

int ferry_synth_default_threads(void) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return cores < 1 ? 1 : cores > FILL_THREADS_MAX ? FILL_THREADS_MAX : (int)cores;
}

/* ---------------------------------------------------------------- names */

int ferry_synth_is_name(const char *path) {
    return path && strncmp(path, FERRY_SYNTH_PREFIX, strlen(FERRY_SYNTH_PREFIX)) == 0;
}

ferry_status ferry_synth_parse(const char *name, ferry_synth_spec *out) {
    memset(out, 0, sizeof *out);
    if (!ferry_synth_is_name(name))
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "'%s' is not a synth:PRESET[:DTYPE[:SEED]] name",
                          name ? name : "(null)");
    char fields[3][64] = {{0}};
    const char *cursor = name + strlen(FERRY_SYNTH_PREFIX);
    int n_fields = 0, well_formed = 0;
    while (n_fields < 3) {
        size_t length = strcspn(cursor, ":");
        if (length == 0 || length >= sizeof fields[0]) break;
        memcpy(fields[n_fields++], cursor, length);
        cursor += length;
        if (*cursor != ':') {
            well_formed = 1;
            break;
        }
        cursor++;
    }
    if (!well_formed || *cursor)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "%s: expected synth:PRESET[:DTYPE[:SEED]], e.g. synth:llama2-7b:f16:0", name);
    out->preset = ferry_preset_find(fields[0]);
    if (!out->preset)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: unknown preset '%s' (ferry synth --list)",
                          name, fields[0]);
    out->dtype = FERRY_DTYPE_F16;
    if (n_fields > 1 && ferry_dtype_parse(fields[1], &out->dtype) != FERRY_OK)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: unknown dtype '%s' (f16, bf16, f32)",
                          name, fields[1]);
    if (n_fields > 2) {
        char *end = NULL;
        out->seed = strtoull(fields[2], &end, 0);
        if (*end)
            return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: seed '%s' is not an integer", name,
                              fields[2]);
    }
    return FERRY_OK;
}

/* --------------------------------------------------------------- source */

static void count_progress(ferry_weight_source *source, uint64_t bytes) {
    source->done_bytes += bytes;
    if (source->on_progress)
        source->on_progress(source->progress_user, source->done_bytes, source->total_bytes);
}

uint64_t ferry_layout_tensor_bytes(const ferry_layout *layout, int layer) {
    uint64_t bytes = 0;
    for (int i = 0; i < layout->n_tensors; i++)
        if (layout->tensors[i].layer == layer) bytes += layout->tensors[i].bytes;
    return bytes;
}

ferry_status ferry_source_read_tensor(ferry_weight_source *source,
                                      const ferry_tensor_entry *entry, void *dst, int verify) {
    if (source->file) {
        FERRY_TRY(ferry_file_read_tensor(source->file, entry, dst, verify));
    } else {
        ferry_synth_fill_tensor(dst, entry, source->synth_seed, source->n_threads);
    }
    count_progress(source, entry->bytes);
    return FERRY_OK;
}

ferry_status ferry_source_read_layer(ferry_weight_source *source, int layer, void *dst) {
    const ferry_layout *layout = source->layout;
    const ferry_extent *extent = &layout->extents[1 + layer];
    if (source->file) {
        ferry_status status = ferry_pread_all(source->file->fd, dst, extent->bytes, extent->offset,
                                              source->name, FERRY_ERR_IO);
        if (status != FERRY_OK) return ferry_fail_prefix(status, "layer %d: ", layer);
    } else {
        /* Each tensor where the file would hold it; the alignment gaps
         * between them zero, as in a file ferry synth wrote. */
        uint64_t end = 0;
        for (int i = 0; i < layout->n_tensors; i++) {
            const ferry_tensor_entry *entry = &layout->tensors[i];
            if (entry->layer != layer) continue;
            uint64_t at = entry->offset - extent->offset;
            memset((char *)dst + end, 0, at - end);
            ferry_synth_fill_tensor((char *)dst + at, entry, source->synth_seed,
                                    source->n_threads);
            end = at + entry->bytes;
        }
    }
    count_progress(source, ferry_layout_tensor_bytes(layout, layer));
    return FERRY_OK;
}
