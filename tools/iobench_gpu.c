/*
 * iobench_gpu.c — `iobench --to-gpu`: the runtime's streaming path, NVMe
 * -> pinned host slots -> cudaMemcpyAsync -> GPU slots, double-buffered
 * (a slot is refilled only after its copy's event), timed end to end, and
 * each stage alone: the same reads without copies, and copies alone.
 */
#include <stdio.h>
#include <stdlib.h>

#include "tools/iobench.h"

enum { GPU_SLOTS = 4 };

typedef struct pipeline {
    const iobench_target *target;
    nvme_engine *engine;
    int file;
    nvme_buffer host[GPU_SLOTS];
    nvme_request reads[GPU_SLOTS];
    int reading[GPU_SLOTS];
    nvme_gpu_sink *sink;
    uint64_t slot_bytes;
    int cursor_segment;
    uint64_t cursor_offset;
} pipeline;

/* Next piece of the target (up to slot_bytes, within one segment). */
static int next_piece(pipeline *p, uint64_t *offset, uint64_t *length) {
    while (p->cursor_segment < p->target->n_segments) {
        const iobench_segment *segment = &p->target->segments[p->cursor_segment];
        if (p->cursor_offset < segment->bytes) {
            uint64_t left = segment->bytes - p->cursor_offset;
            *offset = segment->offset + p->cursor_offset;
            *length = left < p->slot_bytes ? left : p->slot_bytes;
            p->cursor_offset += *length;
            return 1;
        }
        p->cursor_segment++;
        p->cursor_offset = 0;
    }
    return 0;
}

static ferry_status start_read(pipeline *p, int slot) {
    nvme_request *request = &p->reads[slot];
    memset(request, 0, sizeof *request);
    request->file = p->file;
    request->buffer = p->host[slot].data;
    p->reading[slot] = next_piece(p, &request->offset, &request->length);
    return p->reading[slot] ? nvme_submit(p->engine, request) : FERRY_OK;
}

/* One pass over the target; with_copy sends each slot to the GPU before it
 * is read into again.  Returns bytes moved through *out_bytes. */
static ferry_status run_pass(pipeline *p, int with_copy, uint64_t *out_bytes, double *out_seconds) {
    ferry_status status = FERRY_OK;
    uint64_t bytes = 0;
    p->cursor_segment = 0;
    p->cursor_offset = 0;
    uint64_t start_ns = ferry_now_ns();
    for (int slot = 0; slot < GPU_SLOTS; slot++) FERRY_TRY(start_read(p, slot));
    for (uint64_t k = 0;; k++) {
        int slot = (int)(k % GPU_SLOTS);
        if (!p->reading[slot]) break;   /* slots finish in order: the pass is over */
        FERRY_TRY(nvme_wait(p->engine, &p->reads[slot]));
        bytes += p->reads[slot].bytes_done;
        if (with_copy) {
            FERRY_TRY(nvme_gpu_sink_copy(p->sink, slot, p->host[slot].data,
                                         p->reads[slot].bytes_done));
            /* Refill the previous slot: its copy was queued one step ago. */
            int previous = (slot + GPU_SLOTS - 1) % GPU_SLOTS;
            if (k > 0) {
                FERRY_TRY(nvme_gpu_sink_wait(p->sink, previous));
                FERRY_TRY(start_read(p, previous));
            }
        } else {
            FERRY_TRY(start_read(p, slot));
        }
    }
    if (with_copy)
        for (int slot = 0; slot < GPU_SLOTS; slot++) FERRY_TRY(nvme_gpu_sink_wait(p->sink, slot));
    *out_seconds = (double)(ferry_now_ns() - start_ns) / 1e9;
    *out_bytes = bytes;
    return status;
}

static ferry_status measure_h2d(pipeline *p, double *out_gbps) {
    enum { COPIES = 32 };
    FERRY_TRY(nvme_gpu_sink_copy(p->sink, 0, p->host[0].data, p->slot_bytes));   /* warm-up */
    FERRY_TRY(nvme_gpu_sink_wait(p->sink, 0));
    uint64_t start_ns = ferry_now_ns();
    for (int i = 0; i < COPIES; i++)
        FERRY_TRY(nvme_gpu_sink_copy(p->sink, i % GPU_SLOTS, p->host[i % GPU_SLOTS].data,
                                     p->slot_bytes));
    for (int slot = 0; slot < GPU_SLOTS; slot++) FERRY_TRY(nvme_gpu_sink_wait(p->sink, slot));
    double seconds = (double)(ferry_now_ns() - start_ns) / 1e9;
    *out_gbps = (double)p->slot_bytes * COPIES / seconds / 1e9;
    return FERRY_OK;
}

static void forward_note(void *user, const char *message) {
    const iobench_hooks *hooks = user;
    if (hooks && hooks->on_note) hooks->on_note(hooks->user, message);
}

ferry_status iobench_run_to_gpu(const iobench_target *target, const iobench_config *config,
                                int device, const iobench_hooks *hooks, iobench_gpu_result *out) {
    memset(out, 0, sizeof *out);
    ferry_status status = FERRY_OK;
    pipeline p;
    memset(&p, 0, sizeof p);
    p.target = target;
    /* A slot holds a queue's worth of blocks, between 16 and 256 MiB. */
    uint64_t slot = config->block_bytes * (uint64_t)config->queue_depth;
    if (slot < (16u << 20)) slot = 16u << 20;
    if (slot > (256u << 20)) slot = 256u << 20;
    p.slot_bytes = slot / config->block_bytes * config->block_bytes;
    int node = nvme_numa_node_of_cuda_device(device);
    if (node < 0) node = nvme_numa_node_of_path(target->path);
    nvme_options options = nvme_options_default();
    options.queue_depth = config->queue_depth;
    options.chunk_bytes = config->block_bytes;
    options.numa_node = node;
    options.on_note = forward_note;
    options.note_user = (void *)hooks;
    FERRY_TRY_GOTO(nvme_engine_open(&options, &p.engine));
    FERRY_TRY_GOTO(nvme_file_open(p.engine, target->path, config->direct ? 0 : NVME_FILE_BUFFERED,
                                  &p.file));
    for (int i = 0; i < GPU_SLOTS; i++) {
        FERRY_TRY_GOTO(nvme_buffer_alloc(p.slot_bytes, node, &p.host[i]));
        FERRY_TRY_GOTO(nvme_buffer_pin_cuda(&p.host[i]));
        FERRY_TRY_GOTO(nvme_register_buffer(p.engine, p.host[i].data, p.slot_bytes));
    }
    FERRY_TRY_GOTO(nvme_gpu_sink_open(device, GPU_SLOTS, p.slot_bytes, &p.sink));
    FERRY_TRY_GOTO(measure_h2d(&p, &out->h2d_gbps));
    uint64_t bytes = 0;
    double seconds = 0;
    FERRY_TRY_GOTO(run_pass(&p, 0, &bytes, &seconds));
    out->disk_gbps = (double)bytes / seconds / 1e9;
    if (hooks && hooks->on_progress) hooks->on_progress(hooks->user, bytes, seconds);
    FERRY_TRY_GOTO(run_pass(&p, 1, &bytes, &seconds));
    out->end_to_end_gbps = (double)bytes / seconds / 1e9;
    out->slot_bytes = p.slot_bytes;
    out->n_slots = GPU_SLOTS;
fail:
    nvme_engine_close(p.engine);   /* before the buffers it may still write */
    nvme_gpu_sink_close(p.sink);
    for (int i = 0; i < GPU_SLOTS; i++) nvme_buffer_free(&p.host[i]);
    return status;
}
