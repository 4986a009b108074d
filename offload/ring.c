/*
 * ring.c — the slot ring scheduler: streamed layers pass through N device
 * slots in step order; layer g's fetch (an NVMe read into a staging buffer
 * when it lives on disk, then a copy into slot g mod N) runs ahead of the
 * computes, and a slot is refilled only after the compute that read it has
 * finished.  Hot path: a step allocates nothing and takes no locks; it
 * blocks only on device events and reads.
 *
 * Streamed layers are numbered by a sequence g that runs on across steps
 * (layer = streamed[g mod S], slot = g mod N, staging = read count mod
 * n_staging), so the next step's first layers can be fetched while this
 * step's last layers compute.
 */
#include <stdlib.h>

#include "offload/offload.h"

struct offload_ring {
    offload_ring_options options;
    int n_layers;
    offload_source *sources;        /* [n_layers], copied */
    offload_device device;
    offload_reader reader;
    int n_streamed;                 /* S */
    int *streamed_layers;           /* [S]: layer of each stream position */
    /* slots */
    void **slot_memory;             /* [N] */
    offload_event *slot_copy_done;  /* [N] */
    offload_event *slot_compute_done; /* [N] */
    uint64_t *slot_sequence;        /* [N]: g last fetched into the slot (UINT64_MAX: none) */
    /* staging for the DISK tier */
    int n_staging;
    void **staging;                 /* [n_staging] */
    offload_event *staging_copy_done; /* [n_staging] */
    uint64_t *staging_sequence;     /* [n_staging]: g read into it (UINT64_MAX: none) */
    int *staging_read_pending;      /* [n_staging]: a read was issued and not yet waited */
    /* cursors over g */
    uint64_t step_base;             /* g of the current step's first streamed layer */
    uint64_t compute_cursor;        /* next g to compute */
    uint64_t copy_cursor;           /* next g to copy into a slot */
    uint64_t read_cursor;           /* next g to consider for a read */
    uint64_t n_reads;               /* reads issued, ever (picks the staging buffer) */
    int fetch_before_compute;       /* offload_ring_set_fetch_before_compute */
    offload_ring_stats stats;
};

static int layer_of(const offload_ring *ring, uint64_t g) {
    return ring->streamed_layers[g % (uint64_t)ring->n_streamed];
}

static const offload_source *source_of(const offload_ring *ring, uint64_t g) {
    return &ring->sources[layer_of(ring, g)];
}

/* ------------------------------------------------------------ fetches */

/* Wait for an event, saying which layer's work it finished on failure.
 * A completed event still has its status collected (a failure is reported
 * once); only a pending one counts as time blocked. */
static ferry_status wait_event(offload_ring *ring, offload_event event, uint64_t g,
                               const char *what, uint64_t *wait_ns) {
    if (event == 0) return FERRY_OK;
    ferry_status status;
    if (ring->device.ops->event_query(ring->device.impl, event)) {
        status = ring->device.ops->event_wait(ring->device.impl, event);
    } else {
        uint64_t start_ns = ferry_now_ns();
        status = ring->device.ops->event_wait(ring->device.impl, event);
        *wait_ns += ferry_now_ns() - start_ns;
    }
    if (status != FERRY_OK)
        return ferry_fail_prefix(status, "layer %d: %s: ", layer_of(ring, g), what);
    return FERRY_OK;
}

/* A read of g's layer failed: name the layer and its extent. */
static ferry_status read_failed(const offload_ring *ring, uint64_t g, ferry_status status) {
    const offload_source *source = source_of(ring, g);
    return ferry_fail_prefix(status, "layer %d (file offset %llu, %llu bytes): ",
                             layer_of(ring, g), (unsigned long long)source->file_offset,
                             (unsigned long long)source->bytes);
}

/* Start NVMe reads for DISK layers with g < limit while staging buffers
 * are free (their previous copy into a slot has finished). */
static ferry_status issue_reads(offload_ring *ring, uint64_t limit) {
    while (ring->read_cursor < limit) {
        uint64_t g = ring->read_cursor;
        const offload_source *source = source_of(ring, g);
        if (source->tier != OFFLOAD_TIER_DISK) {
            ring->read_cursor++;
            continue;
        }
        int staging = (int)(ring->n_reads % (uint64_t)ring->n_staging);
        if (ring->staging_read_pending[staging]) return FERRY_OK; /* all staging busy */
        /* The copy out of this buffer must be done before it is refilled. */
        if (ring->staging_sequence[staging] != UINT64_MAX)
            FERRY_TRY(wait_event(ring, ring->staging_copy_done[staging],
                                 ring->staging_sequence[staging], "copy from staging",
                                 &ring->stats.wait_staging_ns));
        ring->staging_copy_done[staging] = 0;
        ferry_status status = ring->reader.ops->read_async(
            ring->reader.impl, source->file_offset, source->bytes, ring->staging[staging], staging);
        if (status != FERRY_OK) return read_failed(ring, g, status);
        ring->staging_read_pending[staging] = 1;
        ring->staging_sequence[staging] = g;
        ring->n_reads++;
        ring->read_cursor++;
    }
    return FERRY_OK;
}

/* Find the staging buffer holding g's read and wait for the read. */
static ferry_status finish_read(offload_ring *ring, uint64_t g, int *out_staging) {
    for (int i = 0; i < ring->n_staging; i++) {
        if (!ring->staging_read_pending[i] || ring->staging_sequence[i] != g) continue;
        const offload_source *source = source_of(ring, g);
        uint64_t start_ns = ferry_now_ns();
        ferry_status status = ring->reader.ops->read_wait(ring->reader.impl, i);
        ring->stats.wait_staging_ns += ferry_now_ns() - start_ns;
        ring->staging_read_pending[i] = 0;
        if (status != FERRY_OK) return read_failed(ring, g, status);
        ring->stats.bytes_read += source->bytes;
        *out_staging = i;
        return FERRY_OK;
    }
    return ferry_fail(FERRY_ERR_BACKEND, "layer %d: ring: no read was issued for it (bug)",
                      layer_of(ring, g));
}

/* Copy g's weights into its slot once the slot's last compute finished. */
static ferry_status copy_into_slot(offload_ring *ring, uint64_t g) {
    const offload_source *source = source_of(ring, g);
    int slot = (int)(g % (uint64_t)ring->options.n_slots);
    /* A slot is reused only after its compute event: the kernel that read
     * the previous layer may still be running. */
    if (ring->slot_sequence[slot] != UINT64_MAX)
        FERRY_TRY(wait_event(ring, ring->slot_compute_done[slot], ring->slot_sequence[slot],
                             "compute", &ring->stats.wait_slot_ns));
    ring->slot_compute_done[slot] = 0;
    const void *from = source->host;
    int staging = -1;
    if (source->tier == OFFLOAD_TIER_DISK) {
        FERRY_TRY(issue_reads(ring, g + 1)); /* its read, if not yet issued */
        FERRY_TRY(finish_read(ring, g, &staging));
        from = ring->staging[staging];
    }
    offload_event done = 0;
    ferry_status status = ring->device.ops->copy_async(ring->device.impl, slot,
                                                       ring->slot_memory[slot], from,
                                                       source->bytes, &done);
    if (status != FERRY_OK)
        return ferry_fail_prefix(status, "layer %d: copy into slot %d: ", layer_of(ring, g), slot);
    ring->slot_copy_done[slot] = done;
    ring->slot_sequence[slot] = g;
    if (staging >= 0) ring->staging_copy_done[staging] = done;
    ring->stats.bytes_copied += source->bytes;
    return FERRY_OK;
}

/* A fetch for the next step failed while this step still runs: drop the
 * next step's fetches, so that step fetches again and, if the fault stays,
 * reports it as its own.  Copies already issued stay ordered behind the
 * events the slots and staging buffers keep. */
static void forget_prefetch(offload_ring *ring) {
    uint64_t next = ring->step_base + (uint64_t)ring->n_streamed;
    for (int i = 0; i < ring->n_staging; i++)
        if (ring->staging_read_pending[i]) {
            (void)ring->reader.ops->read_wait(ring->reader.impl, i);
            ring->staging_read_pending[i] = 0;
        }
    ring->copy_cursor = ring->read_cursor = next;
    ferry_clear_error();
}

/* Fetch every streamed layer up to and including g = target (bounded by
 * the horizon), and keep the NVMe reads n_staging layers further ahead. */
static ferry_status advance(offload_ring *ring, uint64_t target) {
    const uint64_t next_step = ring->step_base + (uint64_t)ring->n_streamed;
    uint64_t horizon = ring->options.prefetch_next_step ? UINT64_MAX : next_step - 1;
    if (target > horizon) target = horizon;
    ferry_status status = FERRY_OK;
    uint64_t failed_g = 0;
    while (status == FERRY_OK && ring->copy_cursor <= target) {
        status = copy_into_slot(ring, ring->copy_cursor);
        if (status == FERRY_OK) ring->copy_cursor++;
        else failed_g = ring->copy_cursor;
    }
    if (status == FERRY_OK) {
        uint64_t read_limit = target + 1 + (uint64_t)ring->n_staging;
        if (read_limit > horizon + 1) read_limit = horizon + 1;
        status = issue_reads(ring, read_limit);
        failed_g = ring->read_cursor;
    }
    if (status != FERRY_OK && failed_g >= next_step) {
        forget_prefetch(ring);
        return FERRY_OK;
    }
    return status;
}

/* --------------------------------------------------------------- step */

/* Wait for everything in flight, keeping the first error's message. */
static void drain_quietly(offload_ring *ring) {
    const offload_device_ops *ops = ring->device.ops;
    for (int s = 0; s < ring->options.n_slots && ring->slot_memory; s++) {
        if (ring->slot_copy_done[s]) (void)ops->event_wait(ring->device.impl, ring->slot_copy_done[s]);
        if (ring->slot_compute_done[s])
            (void)ops->event_wait(ring->device.impl, ring->slot_compute_done[s]);
        ring->slot_copy_done[s] = ring->slot_compute_done[s] = 0;
        ring->slot_sequence[s] = UINT64_MAX;
    }
    for (int i = 0; i < ring->n_staging; i++) {
        if (ring->staging_read_pending[i]) (void)ring->reader.ops->read_wait(ring->reader.impl, i);
        if (ring->staging_copy_done[i])
            (void)ops->event_wait(ring->device.impl, ring->staging_copy_done[i]);
        ring->staging_read_pending[i] = 0;
        ring->staging_copy_done[i] = 0;
        ring->staging_sequence[i] = UINT64_MAX;
    }
}

/* After a failure: wait for all work, then start the next step clean. */
static ferry_status recover(offload_ring *ring, ferry_status status) {
    char message[512];
    snprintf(message, sizeof message, "%s", ferry_last_error());
    drain_quietly(ring);
    uint64_t next = ring->step_base + (uint64_t)ring->n_streamed;
    ring->step_base = ring->compute_cursor = ring->copy_cursor = ring->read_cursor = next;
    return ferry_fail(status, "%s", message);
}

ferry_status offload_ring_step(offload_ring *ring, void *step_user, const volatile int *stop) {
    if (!ring) return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "ring: NULL ring");
    const offload_device_ops *ops = ring->device.ops;
    const uint64_t run_ahead = (uint64_t)ring->options.run_ahead;
    const int fetch_first = ring->fetch_before_compute;
    const uint64_t start_ns = ferry_now_ns();
    ferry_status status = FERRY_OK;
    offload_event last_done = 0;
    int last_layer = -1;
    for (int layer = 0; layer < ring->n_layers; layer++) {
        if (stop && __atomic_load_n(stop, __ATOMIC_ACQUIRE)) {
            status = ferry_fail(FERRY_ERR_CANCELLED, "stopped before layer %d", layer);
            goto fail;
        }
        const offload_source *source = &ring->sources[layer];
        offload_event done = 0;
        if (source->tier == OFFLOAD_TIER_GPU) {
            if (fetch_first && ring->n_streamed)
                FERRY_TRY_GOTO(advance(ring, ring->compute_cursor + run_ahead));
            status = ops->compute(ring->device.impl, layer, source->resident, 0, step_user, &done);
            if (status != FERRY_OK) {
                ferry_fail_prefix(status, "layer %d: ", layer);
                goto fail;
            }
            /* While a resident layer computes, fill slots for the next
             * streamed layers (their slots' computes are already queued). */
            if (ring->n_streamed) FERRY_TRY_GOTO(advance(ring, ring->compute_cursor + run_ahead));
        } else {
            uint64_t g = ring->compute_cursor;
            int slot = (int)(g % (uint64_t)ring->options.n_slots);
            FERRY_TRY_GOTO(advance(ring, g));
            /* A compute that holds this thread (host attention) would hold
             * the next fetches back until it returns, leaving the link idle:
             * issue them first; they refill only slots other than g's. */
            if (fetch_first && run_ahead > 0) FERRY_TRY_GOTO(advance(ring, g + run_ahead));
            status = ops->compute(ring->device.impl, layer, ring->slot_memory[slot],
                                  ring->slot_copy_done[slot], step_user, &done);
            if (status != FERRY_OK) {
                ferry_fail_prefix(status, "layer %d: ", layer);
                goto fail;
            }
            ring->slot_compute_done[slot] = done;
            ring->compute_cursor++;
            /* Fetch ahead, but never into the slot just handed to compute:
             * waiting for it here would leave the device idle. */
            if (run_ahead > 0) FERRY_TRY_GOTO(advance(ring, g + run_ahead));
        }
        last_done = done;
        last_layer = layer;
    }
    /* The step is over when its last layer is. */
    if (last_done) {
        status = ops->event_wait(ring->device.impl, last_done);
        if (status != FERRY_OK) {
            ferry_fail_prefix(status, "layer %d: ", last_layer);
            goto fail;
        }
    }
    ring->step_base += (uint64_t)ring->n_streamed;
    ring->stats.steps++;
    ring->stats.step_ns += ferry_now_ns() - start_ns;
    return FERRY_OK;
fail:
    return recover(ring, status);
}

ferry_status offload_ring_drain(offload_ring *ring) {
    if (!ring) return FERRY_OK;
    ferry_status first = FERRY_OK;
    char message[512] = "";
    for (int s = 0; s < ring->options.n_slots && ring->slot_memory; s++) {
        offload_event events[2] = {ring->slot_copy_done[s], ring->slot_compute_done[s]};
        for (int e = 0; e < 2; e++) {
            if (!events[e]) continue;
            ferry_status status = ring->device.ops->event_wait(ring->device.impl, events[e]);
            if (status != FERRY_OK && first == FERRY_OK) {
                first = status;
                snprintf(message, sizeof message, "%s", ferry_last_error());
            }
        }
    }
    if (first != FERRY_OK) return recover(ring, ferry_fail(first, "%s", message));
    for (int i = 0; i < ring->n_staging; i++)
        if (ring->staging_read_pending[i]) {
            ferry_status status = ring->reader.ops->read_wait(ring->reader.impl, i);
            ring->staging_read_pending[i] = 0;
            if (status != FERRY_OK) return recover(ring, status);
        }
    /* Reads and copies for the next step are gone: fetch them again. */
    uint64_t next = ring->compute_cursor;
    for (int i = 0; i < ring->n_staging; i++) ring->staging_sequence[i] = UINT64_MAX;
    ring->copy_cursor = ring->read_cursor = next;
    return FERRY_OK;
}

void offload_ring_set_fetch_before_compute(offload_ring *ring, int on) {
    if (ring) ring->fetch_before_compute = on != 0;
}

offload_ring_stats offload_ring_get_stats(const offload_ring *ring) {
    offload_ring_stats none = {0};
    return ring ? ring->stats : none;
}

/* ---------------------------------------------------------- lifetime */

ferry_status offload_ring_new(const offload_ring_options *options, int n_layers,
                              const offload_source *sources, offload_device device,
                              offload_reader reader, offload_ring **out) {
    if (!out) return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "ring: out is NULL");
    *out = NULL;
    if (!options || !sources || n_layers < 1 || !device.ops)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "ring: needs options, %d layer sources and "
                          "a device", n_layers);
    if (options->n_slots < 1 || options->n_slots > 64)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "ring: %d slots (need 1..64)",
                          options->n_slots);
    if (options->run_ahead < -1 || options->run_ahead > options->n_slots - 1)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "ring: run-ahead %d with %d slots (need -1 or 0..%d: fetching further "
                          "ahead would wait on the compute it feeds)",
                          options->run_ahead, options->n_slots, options->n_slots - 1);
    offload_ring *ring = NULL;
    ferry_status status;
    FERRY_TRY_GOTO(ferry_calloc(1, sizeof *ring, "slot ring", (void **)&ring));
    ring->options = *options;
    if (ring->options.run_ahead < 0) ring->options.run_ahead = options->n_slots - 1;
    ring->n_layers = n_layers;
    ring->device = device;
    ring->reader = reader;
    const int n_slots = options->n_slots;
    FERRY_TRY_GOTO(ferry_malloc((size_t)n_layers * sizeof *sources, "ring sources",
                                (void **)&ring->sources));
    memcpy(ring->sources, sources, (size_t)n_layers * sizeof *sources);
    FERRY_TRY_GOTO(ferry_calloc((size_t)n_layers, sizeof(int), "ring stream order",
                                (void **)&ring->streamed_layers));
    uint64_t slot_bytes = 0, largest_disk = 0;
    for (int layer = 0; layer < n_layers; layer++) {
        const offload_source *source = &sources[layer];
        if ((unsigned)source->tier >= OFFLOAD_TIER_COUNT || source->bytes == 0 ||
            (source->tier == OFFLOAD_TIER_GPU && !source->resident) ||
            (source->tier == OFFLOAD_TIER_HOST && !source->host)) {
            status = ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                                "ring: layer %d: tier %d, %llu bytes, no memory for its tier",
                                layer, (int)source->tier, (unsigned long long)source->bytes);
            goto fail;
        }
        if (source->tier == OFFLOAD_TIER_GPU) continue;
        ring->streamed_layers[ring->n_streamed++] = layer;
        if (source->bytes > slot_bytes) slot_bytes = source->bytes;
        if (source->tier == OFFLOAD_TIER_DISK && source->bytes > largest_disk)
            largest_disk = source->bytes;
    }
    if (largest_disk && !reader.ops) {
        status = ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "ring: layers on NVMe but no reader");
        goto fail;
    }
    if (ring->n_streamed) {
        FERRY_TRY_GOTO(ferry_calloc((size_t)n_slots, sizeof(void *), "ring slots",
                                    (void **)&ring->slot_memory));
        FERRY_TRY_GOTO(ferry_calloc((size_t)n_slots, sizeof(offload_event), "ring events",
                                    (void **)&ring->slot_copy_done));
        FERRY_TRY_GOTO(ferry_calloc((size_t)n_slots, sizeof(offload_event), "ring events",
                                    (void **)&ring->slot_compute_done));
        FERRY_TRY_GOTO(ferry_malloc((size_t)n_slots * sizeof(uint64_t), "ring slot state",
                                    (void **)&ring->slot_sequence));
        for (int s = 0; s < n_slots; s++) {
            ring->slot_sequence[s] = UINT64_MAX;
            status = device.ops->slot_alloc(device.impl, s, slot_bytes, &ring->slot_memory[s]);
            if (status != FERRY_OK) {
                ferry_fail_prefix(status, "ring: slot %d of %d (%llu bytes): ", s, n_slots,
                                  (unsigned long long)slot_bytes);
                goto fail;
            }
        }
    }
    if (largest_disk) {
        ring->n_staging = options->n_staging > 0 ? options->n_staging : n_slots;
        size_t n = (size_t)ring->n_staging;
        uint64_t staging_bytes = reader.ops->transfer_bytes(reader.impl, largest_disk);
        FERRY_TRY_GOTO(ferry_calloc(n, sizeof(void *), "staging table", (void **)&ring->staging));
        FERRY_TRY_GOTO(ferry_calloc(n, sizeof(offload_event), "staging events",
                                    (void **)&ring->staging_copy_done));
        FERRY_TRY_GOTO(ferry_calloc(n, sizeof(int), "staging state",
                                    (void **)&ring->staging_read_pending));
        FERRY_TRY_GOTO(ferry_malloc(n * sizeof(uint64_t), "staging state",
                                    (void **)&ring->staging_sequence));
        for (size_t i = 0; i < n; i++) {
            ring->staging_sequence[i] = UINT64_MAX;
            /* O_DIRECT wants aligned buffers; 2 MiB also suits huge pages. */
            uint64_t rounded = (staging_bytes + (2u << 20) - 1) & ~(uint64_t)((2u << 20) - 1);
            FERRY_TRY_GOTO(ferry_aligned_alloc(2u << 20, rounded, "NVMe staging buffer",
                                               &ring->staging[i]));
            if (device.ops->host_register) {
                status = device.ops->host_register(device.impl, ring->staging[i], rounded);
                if (status != FERRY_OK) {
                    free(ring->staging[i]);
                    ring->staging[i] = NULL;
                    goto fail;
                }
            }
        }
    }
    *out = ring;
    return FERRY_OK;
fail:
    offload_ring_free(ring);
    return status;
}

void offload_ring_free(offload_ring *ring) {
    if (!ring) return;
    if (ring->slot_copy_done && ring->slot_sequence && ring->slot_compute_done &&
        (!ring->n_staging || (ring->staging_read_pending && ring->staging_copy_done &&
                              ring->staging_sequence)))
        drain_quietly(ring);
    if (ring->slot_memory)
        for (int s = 0; s < ring->options.n_slots; s++)
            if (ring->slot_memory[s])
                ring->device.ops->slot_free(ring->device.impl, s, ring->slot_memory[s]);
    if (ring->staging)
        for (int i = 0; i < ring->n_staging; i++) {
            if (ring->staging[i] && ring->device.ops->host_unregister)
                ring->device.ops->host_unregister(ring->device.impl, ring->staging[i]);
            free(ring->staging[i]);
        }
    free(ring->staging);
    free(ring->staging_copy_done);
    free(ring->staging_read_pending);
    free(ring->staging_sequence);
    free(ring->slot_memory);
    free(ring->slot_copy_done);
    free(ring->slot_compute_done);
    free(ring->slot_sequence);
    free(ring->streamed_layers);
    free(ring->sources);
    free(ring);
}
