/*
 * stream.c — layer streaming for a model: turns a .ferry layout into the
 * plan's shape, makes the plan, keeps DRAM-tier layers in host memory and
 * an nvme/ reader on the file for the NVMe tier, and runs the slot ring with the
 * backend's device, handing the runtime per-tensor pointers into a slot or
 * into resident memory.  The only file of offload/ that knows tensors.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "offload/offload.h"
#include "runtime/engine.h"
#include "runtime/format.h"

struct offload_stream {
    offload_plan plan;
    int n_layers;
    uint64_t *layer_bytes;          /* [n_layers] */
    uint64_t *tensor_offsets;       /* [n_layers][KIND_COUNT] within the blob; UINT64_MAX: absent */
    void **host_layers;             /* [n_layers]: DRAM-tier copies */
    offload_source *sources;        /* [n_layers] */
    char path[200];                 /* model file, read by the NVMe tier */
    offload_model_shape shape;      /* what the plan was made from (layer_bytes above) */
    offload_request request;
    char bandwidth_note[1200];      /* where the plan's figures came from, for the report */
    offload_reader reader;
    offload_device device;
    int device_is_cuda;
    offload_ring *ring;
    pthread_mutex_t lock;
    ferry_backend *backend;         /* the model's, for the report's memory figure */
    /* Sessions' KV caches by tier (GPU, HOST): held now and the most held
     * at once (offload_stream_kv_reserve / _release; sessions may be made
     * on several threads). */
    _Atomic uint64_t kv_bytes[2], kv_peak_bytes[2];
};

/* What a layer pass carries through the ring to stream_compute. */
typedef struct stream_pass {
    offload_stream *stream;
    offload_stream_layer_fn run;
    void *user;
} stream_pass;

ferry_status offload_shape_from_layout(const ferry_layout *layout, size_t kv_element_bytes,
                                       uint64_t *layer_bytes, offload_model_shape *out) {
    const ferry_config *config = &layout->config;
    if (layout->n_extents != config->n_layers + 1)
        return ferry_fail(FERRY_ERR_FORMAT, "layout: %d extents for %d layers", layout->n_extents,
                          config->n_layers);
    memset(out, 0, sizeof *out);
    uint64_t weight_bytes = layout->extents[0].bytes;
    for (int i = 0; i < config->n_layers; i++) {
        layer_bytes[i] = layout->extents[1 + i].bytes;
        weight_bytes += layer_bytes[i];
    }
    uint64_t q_width = (uint64_t)config->n_heads * config->head_dim;
    uint64_t kv_width = (uint64_t)config->n_kv_heads * config->head_dim;
    out->n_layers = config->n_layers;
    out->layer_bytes = layer_bytes;
    out->globals_bytes = layout->extents[0].bytes;
    out->kv_bytes_per_token_layer = 2 * kv_width * kv_element_bytes;
    /* The session's scratch (runtime/session.c): per token of a chunk the
     * norm output, q, k, v, attention output, gate and up; per carried
     * token (every chunk of a zig-zag pass) the residual and three indices. */
    out->activation_bytes_per_token =
        ((uint64_t)config->hidden_size + 2 * q_width + 2 * kv_width +
         2 * (uint64_t)config->intermediate_size) * sizeof(float);
    out->activation_fixed_bytes =
        (uint64_t)FERRY_LOGITS_ROWS_PER_PASS * config->vocab_size * sizeof(float);
    out->max_tokens_per_pass = FERRY_CHUNK_TOKENS;
    out->carried_bytes_per_token = (uint64_t)config->hidden_size * sizeof(float) +
                                   3 * sizeof(int32_t);
    out->max_tokens_carried = ferry_zigzag_tokens();
    /* A multiply-add per weight and token. */
    out->flops_per_token = 2 * (weight_bytes / ferry_dtype_bytes(layout->dtype));
    /* q down and the attention output up, f32 */
    out->host_attention_bytes_per_token_layer = 2 * q_width * sizeof(float);
    return FERRY_OK;
}

/* --------------------------------------------------------------- open */

/* The report's line on the profile: used, absent, or why it was not. */
static void describe_profile(int used, char *note, size_t size) {
    if (note[0]) return; /* the loader's warning says it */
    char path[1024];
    offload_profile_path(path, sizeof path);
    if (used) snprintf(note, size, "profile %s", path);
    else snprintf(note, size, "no profile at %s (`ferry iobench --save` makes one)", path);
}

void offload_stream_request(const offload_stream_options *options, int max_position,
                            offload_request *out) {
    memset(out, 0, sizeof *out);
    out->gpu_mem_bytes = options->gpu_mem_bytes ? options->gpu_mem_bytes : UINT64_MAX;
    out->host_mem_bytes = options->host_mem_bytes ? options->host_mem_bytes : UINT64_MAX;
    out->batch = options->batch > 0 ? options->batch : 1;
    out->context = options->context > 0 ? options->context
                   : max_position < 2048 ? max_position
                                         : 2048;
    out->n_slots = options->n_slots;
    out->resident_layers = options->resident_layers;
    out->host_attention = options->host_attention;
}

ferry_status offload_stream_open(ferry_weight_source *source,
                                 const offload_stream_options *options, offload_stream **out) {
    *out = NULL;
    const ferry_layout *layout = source->layout;
    const int n_layers = layout->config.n_layers;
    offload_stream *stream = NULL;
    ferry_status status;
    FERRY_TRY_GOTO(ferry_calloc(1, sizeof *stream, "layer stream", (void **)&stream));
    pthread_mutex_init(&stream->lock, NULL);
    stream->n_layers = n_layers;
    snprintf(stream->path, sizeof stream->path, "%s", source->name ? source->name : "model file");
    FERRY_TRY_GOTO(ferry_calloc((size_t)n_layers, sizeof(uint64_t), "layer sizes",
                                (void **)&stream->layer_bytes));
    FERRY_TRY_GOTO(ferry_calloc((size_t)n_layers, sizeof(void *), "DRAM layers",
                                (void **)&stream->host_layers));
    FERRY_TRY_GOTO(ferry_calloc((size_t)n_layers, sizeof(offload_source), "layer sources",
                                (void **)&stream->sources));
    size_t n_offsets = (size_t)n_layers * FERRY_TENSOR_KIND_COUNT;
    FERRY_TRY_GOTO(ferry_malloc(n_offsets * sizeof(uint64_t), "tensor offsets",
                                (void **)&stream->tensor_offsets));
    for (size_t i = 0; i < n_offsets; i++) stream->tensor_offsets[i] = UINT64_MAX;
    for (int i = 0; i < layout->n_tensors; i++) {
        const ferry_tensor_entry *entry = &layout->tensors[i];
        if (entry->layer < 0) continue;
        stream->tensor_offsets[(size_t)entry->layer * FERRY_TENSOR_KIND_COUNT + entry->kind] =
            entry->offset - layout->extents[1 + entry->layer].offset;
    }

    offload_model_shape *shape = &stream->shape;
    FERRY_TRY_GOTO(offload_shape_from_layout(layout, options->kv_element_bytes,
                                             stream->layer_bytes, shape));
    offload_request request;
    offload_stream_request(options, layout->config.max_position, &request);
    stream->request = request;
    offload_bandwidths bandwidths;
    offload_bandwidth_origins origins;
    describe_profile(offload_bandwidths_from_profile(&bandwidths, &origins, stream->bandwidth_note,
                                                     sizeof stream->bandwidth_note),
                     stream->bandwidth_note, sizeof stream->bandwidth_note);
    FERRY_TRY_GOTO(offload_plan_make(shape, &request, &bandwidths, &stream->plan));
    stream->plan.bandwidths_from = origins;
    if (stream->plan.n_disk && !source->file) {
        char needed[32];
        status = ferry_fail(FERRY_ERR_UNSUPPORTED,
                            "a synthetic model has no file to stream from, but the plan reads %d "
                            "layers from NVMe: give --host-mem room for every streamed layer "
                            "(%s) or write the model with ferry synth",
                            stream->plan.n_disk,
                            offload_format_bytes(stream->plan.host_layer_bytes +
                                                     stream->plan.step_disk_bytes,
                                                 needed, sizeof needed));
        goto fail;
    }

    /* What this open and the model's load will produce: the globals, the
     * resident layers and the DRAM layers (NVMe layers are read later). */
    source->total_bytes = ferry_layout_tensor_bytes(layout, -1);
    for (int layer = 0; layer < n_layers; layer++)
        if (stream->plan.layer_tier[layer] != OFFLOAD_TIER_DISK)
            source->total_bytes += ferry_layout_tensor_bytes(layout, layer);
    for (int layer = 0; layer < n_layers; layer++) {
        const ferry_extent *extent = &layout->extents[1 + layer];
        offload_source *layer_source = &stream->sources[layer];
        layer_source->tier = stream->plan.layer_tier[layer];
        layer_source->bytes = extent->bytes;
        layer_source->file_offset = extent->offset;
        if (layer_source->tier != OFFLOAD_TIER_HOST) continue;
        uint64_t rounded = (extent->bytes + 4095) / 4096 * 4096;
        FERRY_TRY_GOTO(ferry_aligned_alloc(4096, rounded, "DRAM layer",
                                           &stream->host_layers[layer]));
        FERRY_TRY_GOTO(ferry_source_read_layer(source, layer, stream->host_layers[layer]));
        layer_source->host = stream->host_layers[layer];
    }
    *out = stream;
    return FERRY_OK;
fail:
    offload_stream_free(stream);
    return status;
}

int offload_stream_layer_resident(const offload_stream *stream, int layer) {
    return !stream || stream->plan.layer_tier[layer] == OFFLOAD_TIER_GPU;
}

const offload_plan *offload_stream_plan(const offload_stream *stream) { return &stream->plan; }

/* ------------------------------------------------------ session KV caches */

/* What a tier's budget leaves for KV caches: the budget less everything
 * else the plan put there (the plan's own KV reservation is part of it). */
static uint64_t kv_room(const offload_plan *plan, offload_tier tier) {
    uint64_t budget = tier == OFFLOAD_TIER_GPU ? plan->gpu_budget_bytes : plan->host_budget_bytes;
    uint64_t others = tier == OFFLOAD_TIER_GPU ? plan->gpu_total_bytes - plan->gpu_kv_bytes
                                               : plan->host_total_bytes - plan->host_kv_bytes;
    return budget > others ? budget - others : 0;
}

/* Add bytes to the tier's held KV if that stays within room. */
static int kv_take(offload_stream *stream, offload_tier tier, uint64_t bytes, uint64_t room) {
    uint64_t held = atomic_load(&stream->kv_bytes[tier]);
    do {
        if (bytes > room || held > room - bytes) return 0;
    } while (!atomic_compare_exchange_weak(&stream->kv_bytes[tier], &held, held + bytes));
    uint64_t peak = atomic_load(&stream->kv_peak_bytes[tier]);
    while (held + bytes > peak &&
           !atomic_compare_exchange_weak(&stream->kv_peak_bytes[tier], &peak, held + bytes)) {
    }
    return 1;
}

ferry_status offload_stream_kv_reserve(offload_stream *stream, uint64_t bytes,
                                       offload_tier *out_tier) {
    char text[6][32];
    const offload_plan *plan = &stream->plan;
    uint64_t gpu_room = kv_room(plan, OFFLOAD_TIER_GPU);
    uint64_t host_room = kv_room(plan, OFFLOAD_TIER_HOST);
    if (plan->kv_tier == OFFLOAD_TIER_GPU && kv_take(stream, OFFLOAD_TIER_GPU, bytes, gpu_room)) {
        *out_tier = OFFLOAD_TIER_GPU;
        return FERRY_OK;
    }
    if (kv_take(stream, OFFLOAD_TIER_HOST, bytes, host_room)) {
        *out_tier = OFFLOAD_TIER_HOST;
        return FERRY_OK;
    }
#define KV_SIZE(bytes, i) offload_format_bytes((bytes), text[i], sizeof text[i])
    uint64_t gpu_held = atomic_load(&stream->kv_bytes[OFFLOAD_TIER_GPU]);
    uint64_t host_held = atomic_load(&stream->kv_bytes[OFFLOAD_TIER_HOST]);
    if (plan->kv_tier != OFFLOAD_TIER_GPU)
        return ferry_fail(FERRY_ERR_NO_MEMORY,
                          "a KV cache of %s needs pinned host memory (the plan keeps KV caches "
                          "there) and the host budget leaves %s for KV caches, %s of it held by "
                          "other sessions",
                          KV_SIZE(bytes, 0), KV_SIZE(host_room, 1), KV_SIZE(host_held, 2));
    return ferry_fail(FERRY_ERR_NO_MEMORY,
                      "a KV cache of %s fits neither the GPU budget (%s left for KV caches, %s "
                      "of it held by other sessions) nor the host budget (%s left, %s held)",
                      KV_SIZE(bytes, 0), KV_SIZE(gpu_room, 1), KV_SIZE(gpu_held, 2),
                      KV_SIZE(host_room, 3), KV_SIZE(host_held, 4));
#undef KV_SIZE
}

void offload_stream_kv_release(offload_stream *stream, offload_tier tier, uint64_t bytes) {
    atomic_fetch_sub(&stream->kv_bytes[tier], bytes);
}

ferry_status offload_stream_predict(const offload_stream *stream, int batch, int context,
                                    offload_plan *out) {
    offload_request request = stream->request;
    request.batch = batch;
    request.context = context;
    request.resident_layers = stream->plan.n_resident;
    FERRY_TRY(offload_plan_make(&stream->shape, &request, &stream->plan.bandwidths, out));
    out->bandwidths_from = stream->plan.bandwidths_from;
    return FERRY_OK;
}

/* ------------------------------------------------------------ running */

/* The device's compute: per-tensor pointers for the layer, then the
 * runtime's layer function. */
static ferry_status stream_compute(void *user, int layer, const void *weights, void *step_user) {
    offload_stream *stream = user;
    stream_pass *pass = step_user;
    if (stream->plan.layer_tier[layer] == OFFLOAD_TIER_GPU)
        return pass->run(pass->user, layer, (const void *const *)weights);
    const void *tensors[FERRY_TENSOR_KIND_COUNT];
    const uint64_t *offsets = &stream->tensor_offsets[(size_t)layer * FERRY_TENSOR_KIND_COUNT];
    for (int kind = 0; kind < FERRY_TENSOR_KIND_COUNT; kind++)
        tensors[kind] = offsets[kind] == UINT64_MAX ? NULL : (const char *)weights + offsets[kind];
    return pass->run(pass->user, layer, tensors);
}

/* The ring's device for the model's backend: the CPU (memcpy, direct
 * calls) or CUDA (copy stream, events on the backend's compute stream). */
static ferry_status make_device(offload_stream *stream, ferry_backend *backend) {
    if (strcmp(backend->ops->name, "cpu") == 0)
        return offload_device_cpu_new(stream_compute, stream, &stream->device);
    if (strcmp(backend->ops->name, "cuda") == 0) {
        void *compute_stream =
            backend->ops->compute_stream ? backend->ops->compute_stream(backend) : NULL;
        if (!compute_stream)
            return ferry_fail(FERRY_ERR_UNSUPPORTED,
                              "layer streaming on %s needs the backend's compute stream "
                              "(ops.compute_stream)",
                              backend->label);
        int gpu = 0;
        if (sscanf(backend->label, "cuda:%d", &gpu) != 1) gpu = 0;
        stream->device_is_cuda = 1;
        return offload_device_cuda_new(gpu, compute_stream, stream_compute, stream,
                                       &stream->device);
    }
    return ferry_fail(FERRY_ERR_UNSUPPORTED, "layer streaming is not built for the %s backend",
                      backend->label);
}

static void free_device(offload_stream *stream) {
    if (!stream->device.ops) return;
    if (stream->device.ops->host_unregister)
        for (int i = 0; i < stream->n_layers; i++)
            if (stream->host_layers[i])
                stream->device.ops->host_unregister(stream->device.impl, stream->host_layers[i]);
    if (stream->device_is_cuda) offload_device_cuda_free(&stream->device);
    else offload_device_cpu_free(&stream->device);
}

static void note_failed_probe(offload_stream *stream, const char *what) {
    size_t length = strlen(stream->bandwidth_note);
    snprintf(stream->bandwidth_note + length, sizeof stream->bandwidth_note - length,
             "; %s probe failed (%s)", what, ferry_last_error());
    ferry_clear_error();
}

/* The figures no profile gave are measured on the GPU now, in
 * milliseconds, and the predictions redone: pinned host->device copies
 * from the first DRAM-tier layer (already registered) and the backend's
 * device-to-device copy (read + written bytes: the device memory's
 * bandwidth).  A failed probe keeps the figure it had and says so in the
 * report. */
static void probe_bandwidths(offload_stream *stream, ferry_backend *backend) {
    enum { PROBE_BYTES = 256 << 20 };
    if (!stream->device_is_cuda || stream->plan.n_resident == stream->n_layers) return;
    offload_bandwidths bandwidths = stream->plan.bandwidths;
    offload_bandwidth_origins *from = &stream->plan.bandwidths_from;
    double gbps = 0;
    if (from->host_to_gpu == OFFLOAD_FROM_DEFAULT) {
        int layer = 0;
        while (layer < stream->n_layers && !stream->host_layers[layer]) layer++;
        if (layer < stream->n_layers) {
            uint64_t bytes = stream->layer_bytes[layer] < PROBE_BYTES ? stream->layer_bytes[layer]
                                                                      : PROBE_BYTES;
            if (offload_device_probe_copy(stream->device, stream->host_layers[layer], bytes,
                                          &gbps) == FERRY_OK && gbps > 0) {
                bandwidths.host_to_gpu_gbps = gbps;
                from->host_to_gpu = OFFLOAD_FROM_PROBE;
            } else {
                note_failed_probe(stream, "host->gpu");
            }
        }
    }
    if (from->gpu_memory == OFFLOAD_FROM_DEFAULT && backend->ops->copy_bandwidth) {
        if (backend->ops->copy_bandwidth(backend, PROBE_BYTES, &gbps) == FERRY_OK && gbps > 0) {
            bandwidths.gpu_memory_gbps = gbps;
            from->gpu_memory = OFFLOAD_FROM_PROBE;
        } else {
            note_failed_probe(stream, "gpu memory");
        }
    }
    offload_plan_predict(&stream->plan, &stream->shape, &bandwidths);
}

ferry_status offload_stream_attach(offload_stream *stream, ferry_model *model) {
    ferry_status status;
    for (int layer = 0; layer < stream->n_layers; layer++)
        if (stream->sources[layer].tier == OFFLOAD_TIER_GPU)
            stream->sources[layer].resident =
                (const void *)&model->tensors[ferry_model_tensor_slot(layer, 0)];
    stream->backend = model->backend;
    FERRY_TRY(make_device(stream, model->backend));
    /* DRAM-tier layers are copied asynchronously: the device may want them
     * pinned (CUDA).  Pinning fails on a short RLIMIT_MEMLOCK: say so. */
    if (stream->device.ops->host_register)
        for (int layer = 0; layer < stream->n_layers; layer++) {
            if (!stream->host_layers[layer]) continue;
            uint64_t rounded = (stream->layer_bytes[layer] + 4095) / 4096 * 4096;
            status = stream->device.ops->host_register(stream->device.impl,
                                                       stream->host_layers[layer], rounded);
            if (status != FERRY_OK) {
                ferry_fail_prefix(status, "layer %d in DRAM (%llu bytes): ", layer,
                                  (unsigned long long)rounded);
                /* Unregister only what was registered. */
                for (int later = layer; later < stream->n_layers; later++) {
                    free(stream->host_layers[later]);
                    stream->host_layers[later] = NULL;
                }
                goto fail;
            }
        }
    probe_bandwidths(stream, model->backend);
    const int n_slots = stream->plan.n_slots ? stream->plan.n_slots : 1;
    if (stream->plan.n_disk)
        FERRY_TRY_GOTO(offload_reader_nvme_new(stream->path, n_slots, &stream->reader));
    offload_ring_options options = {n_slots, -1, 1, n_slots};
    FERRY_TRY_GOTO(offload_ring_new(&options, stream->n_layers, stream->sources, stream->device,
                                    stream->reader, &stream->ring));
    return FERRY_OK;
fail:
    offload_reader_nvme_free(&stream->reader);
    free_device(stream);
    return status;
}

ferry_status offload_stream_run(offload_stream *stream, offload_stream_layer_fn run, void *user,
                                int computes_block_host) {
    if (!stream->ring) return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "stream: not attached");
    stream_pass pass = {stream, run, user};
    pthread_mutex_lock(&stream->lock);
    offload_ring_set_fetch_before_compute(stream->ring, computes_block_host);
    ferry_status status = offload_ring_step(stream->ring, &pass, NULL);
    pthread_mutex_unlock(&stream->lock);
    return status;
}

size_t ferry_model_stream_report(const ferry_model *model, char *buf, size_t size) {
    if (buf && size) buf[0] = '\0';
    if (!model || !model->stream) return 0;
    const offload_stream *stream = model->stream;
    char *text = NULL;
    size_t length = 0;
    FILE *out = open_memstream(&text, &length);
    if (!out) return 0;
    offload_plan_print(&stream->plan, out);
    char sizes[6][32];
#define REPORT_SIZE(bytes, i) offload_format_bytes((bytes), sizes[i], sizeof sizes[i])
    const offload_plan *plan = &stream->plan;
    fprintf(out,
            "kv caches    held now: gpu %s, pinned dram %s; at most: gpu %s, pinned dram %s; "
            "budgets leave gpu %s, dram %s for them\n",
            REPORT_SIZE(stream->kv_bytes[OFFLOAD_TIER_GPU], 0),
            REPORT_SIZE(stream->kv_bytes[OFFLOAD_TIER_HOST], 1),
            REPORT_SIZE(stream->kv_peak_bytes[OFFLOAD_TIER_GPU], 2),
            REPORT_SIZE(stream->kv_peak_bytes[OFFLOAD_TIER_HOST], 3),
            plan->kv_tier != OFFLOAD_TIER_GPU     ? "none"
            : plan->gpu_budget_bytes == UINT64_MAX ? "no limit"
                                                   : REPORT_SIZE(kv_room(plan, OFFLOAD_TIER_GPU), 4),
            plan->host_budget_bytes == UINT64_MAX ? "no limit"
                                                  : REPORT_SIZE(kv_room(plan, OFFLOAD_TIER_HOST), 5));
    size_t used_bytes = 0, total_bytes = 0;
    if (stream->backend && stream->backend->ops->memory_info &&
        stream->backend->ops->memory_info(stream->backend, &used_bytes, &total_bytes) == FERRY_OK)
        fprintf(out, "device       %s in use now of %s (every process; the budget is %s)\n",
                REPORT_SIZE(used_bytes, 0), REPORT_SIZE(total_bytes, 1),
                plan->gpu_budget_bytes == UINT64_MAX ? "no limit"
                                                     : REPORT_SIZE(plan->gpu_budget_bytes, 2));
#undef REPORT_SIZE
    fprintf(out, "sources      %s\n", stream->bandwidth_note);
    offload_ring_stats stats = offload_ring_get_stats(stream->ring);
    if (stats.steps) {
        double pass_s = (double)stats.step_ns * 1e-9 / (double)stats.steps;
        double copied_gb = (double)stats.bytes_copied * 1e-9;
        fprintf(out,
                "measured     %llu layer passes, %.3f ms each (predicted decode step %.3f ms), "
                "%.2f GB copied, %.2f GB/s host->device, %.2f GB read from the file\n",
                (unsigned long long)stats.steps, pass_s * 1e3, stream->plan.step_s * 1e3,
                copied_gb, stats.step_ns ? copied_gb / ((double)stats.step_ns * 1e-9) : 0.0,
                (double)stats.bytes_read * 1e-9);
    }
    fclose(out);
    if (buf && size) snprintf(buf, size, "%s", text ? text : "");
    free(text);
    return length;
}

offload_ring_stats offload_stream_stats(const offload_stream *stream) {
    return offload_ring_get_stats(stream ? stream->ring : NULL);
}

void offload_stream_free(offload_stream *stream) {
    if (!stream) return;
    offload_ring_free(stream->ring);
    offload_reader_nvme_free(&stream->reader);
    free_device(stream);
    if (stream->host_layers)
        for (int i = 0; i < stream->n_layers; i++) free(stream->host_layers[i]);
    offload_plan_free(&stream->plan);
    free(stream->host_layers);
    free(stream->layer_bytes);
    free(stream->tensor_offsets);
    free(stream->sources);
    pthread_mutex_destroy(&stream->lock);
    free(stream);
}
