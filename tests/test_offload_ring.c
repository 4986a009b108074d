/*
 * test_offload_ring.c — the slot ring scheduler driven by a simulated
 * device: a copy thread and a compute thread with artificial delays, like
 * two CUDA streams.  The device checks every compute sees its own layer's
 * bytes from start to end (a slot overwritten too early shows up), that
 * no copy is issued into a slot a queued compute still reads, and logs
 * the order of work.  A fake file reader injects read errors.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "helpers.h"
#include "offload/offload.h"

enum { MAX_LAYERS = 80, MAX_SLOTS = 8, MAX_EVENTS = 1 << 15, QUEUE = 256, MAX_LOG = 4096 };

/* ------------------------------------------------------ simulated device */

typedef struct sim_op {
    int layer, slot;
    void *dst;
    const void *src;
    uint64_t bytes;
    offload_event after, done;
} sim_op;

typedef struct sim_queue {
    sim_op ops[QUEUE];
    int head, tail;
    pthread_t thread;
} sim_queue;

typedef struct sim_device {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    sim_queue copies, computes;
    int stopping;
    uint64_t next_event;
    unsigned char done[MAX_EVENTS];
    unsigned char failed[MAX_EVENTS];
    useconds_t copy_us, compute_us;
    int fail_compute_layer;             /* -1: none */
    const uint64_t *layer_bytes;
    void *slot_memory[MAX_SLOTS];
    int queued_computes[MAX_SLOTS];     /* computes reading the slot, not finished */
    int violations;
    char violation[256];
    int compute_blocks_host;            /* compute returns once its work is done (host attention) */
    int compute_log[MAX_LOG];           /* layers in the order they were computed */
    int n_log;
    uint64_t compute_start_ns[MAX_LAYERS], compute_end_ns[MAX_LAYERS];
    uint64_t copy_start_ns[MAX_LAYERS];
} sim_device;

static unsigned char pattern_of(int layer) { return (unsigned char)(layer * 37 + 11); }

static void violation(sim_device *sim, const char *what, int layer) {
    if (sim->violations++ == 0)
        snprintf(sim->violation, sizeof sim->violation, "%s (layer %d)", what, layer);
}

static int weights_hold(const sim_device *sim, int layer, const unsigned char *weights) {
    for (uint64_t i = 0; i < sim->layer_bytes[layer]; i++)
        if (weights[i] != pattern_of(layer)) return 0;
    return 1;
}

static int slot_index(const sim_device *sim, const void *memory) {
    for (int s = 0; s < MAX_SLOTS; s++)
        if (sim->slot_memory[s] && sim->slot_memory[s] == memory) return s;
    return -1;
}

static offload_event new_event(sim_device *sim) {
    uint64_t e = ++sim->next_event;
    cr_assert_lt(e, MAX_EVENTS, "simulated device ran out of events");
    return e;
}

static void push(sim_device *sim, sim_queue *queue, sim_op op) {
    cr_assert_lt(queue->tail - queue->head, QUEUE, "simulated queue overflow");
    queue->ops[queue->tail++ % QUEUE] = op;
    pthread_cond_broadcast(&sim->changed);
}

/* Pop the next op, or return 0 when stopping. */
static int pop(sim_device *sim, sim_queue *queue, sim_op *op) {
    while (queue->head == queue->tail && !sim->stopping) pthread_cond_wait(&sim->changed, &sim->lock);
    if (queue->head == queue->tail) return 0;
    *op = queue->ops[queue->head++ % QUEUE];
    return 1;
}

static void *copy_thread(void *arg) {
    sim_device *sim = arg;
    pthread_mutex_lock(&sim->lock);
    sim_op op;
    while (pop(sim, &sim->copies, &op)) {
        sim->copy_start_ns[op.layer] = ferry_now_ns();
        pthread_mutex_unlock(&sim->lock);
        usleep(sim->copy_us);
        memcpy(op.dst, op.src, op.bytes);
        pthread_mutex_lock(&sim->lock);
        sim->done[op.done] = 1;
        pthread_cond_broadcast(&sim->changed);
    }
    pthread_mutex_unlock(&sim->lock);
    return NULL;
}

static void *compute_thread(void *arg) {
    sim_device *sim = arg;
    pthread_mutex_lock(&sim->lock);
    sim_op op;
    while (pop(sim, &sim->computes, &op)) {
        /* The compute stream waits for the copy event, as CUDA would. */
        while (op.after && !sim->done[op.after]) pthread_cond_wait(&sim->changed, &sim->lock);
        int failed = op.after && sim->failed[op.after];
        if (sim->n_log < MAX_LOG) sim->compute_log[sim->n_log++] = op.layer;
        sim->compute_start_ns[op.layer] = ferry_now_ns();
        pthread_mutex_unlock(&sim->lock);
        if (!weights_hold(sim, op.layer, op.src)) violation(sim, "compute started on wrong bytes", op.layer);
        usleep(sim->compute_us);
        if (!weights_hold(sim, op.layer, op.src))
            violation(sim, "slot overwritten while its compute ran", op.layer);
        pthread_mutex_lock(&sim->lock);
        sim->compute_end_ns[op.layer] = ferry_now_ns();
        if (op.slot >= 0) sim->queued_computes[op.slot]--;
        sim->failed[op.done] = failed || op.layer == sim->fail_compute_layer;
        sim->done[op.done] = 1;
        pthread_cond_broadcast(&sim->changed);
    }
    pthread_mutex_unlock(&sim->lock);
    return NULL;
}

static ferry_status sim_slot_alloc(void *device, int slot, uint64_t bytes, void **out) {
    sim_device *sim = device;
    cr_assert_lt(slot, MAX_SLOTS);
    FERRY_TRY(ferry_malloc(bytes, "simulated slot", out));
    memset(*out, 0xEE, bytes);
    sim->slot_memory[slot] = *out;
    return FERRY_OK;
}

static void sim_slot_free(void *device, int slot, void *memory) {
    sim_device *sim = device;
    sim->slot_memory[slot] = NULL;
    free(memory);
}

static ferry_status sim_copy_async(void *device, int slot, void *dst, const void *src,
                                   uint64_t bytes, offload_event *out_done) {
    sim_device *sim = device;
    pthread_mutex_lock(&sim->lock);
    int layer = -1;
    for (int i = 0; i < MAX_LAYERS && layer < 0; i++)
        if (sim->layer_bytes[i] == bytes && ((const unsigned char *)src)[0] == pattern_of(i)) layer = i;
    if (sim->queued_computes[slot] != 0) violation(sim, "copy issued into a slot still read", layer);
    sim_op op = {layer < 0 ? 0 : layer, slot, dst, src, bytes, 0, new_event(sim)};
    push(sim, &sim->copies, op);
    *out_done = op.done;
    pthread_mutex_unlock(&sim->lock);
    return FERRY_OK;
}

static ferry_status sim_compute(void *device, int layer, const void *weights, offload_event after,
                                void *step_user, offload_event *out_done) {
    sim_device *sim = device;
    (*(int *)step_user)++;
    pthread_mutex_lock(&sim->lock);
    int slot = slot_index(sim, weights);
    if (slot >= 0) sim->queued_computes[slot]++;
    sim_op op = {layer, slot, NULL, weights, 0, after, new_event(sim)};
    push(sim, &sim->computes, op);
    *out_done = op.done;
    while (sim->compute_blocks_host && !sim->done[op.done])
        pthread_cond_wait(&sim->changed, &sim->lock);
    pthread_mutex_unlock(&sim->lock);
    return FERRY_OK;
}

static ferry_status sim_event_wait(void *device, offload_event event) {
    sim_device *sim = device;
    pthread_mutex_lock(&sim->lock);
    while (!sim->done[event]) pthread_cond_wait(&sim->changed, &sim->lock);
    int failed = sim->failed[event];
    pthread_mutex_unlock(&sim->lock);
    return failed ? ferry_fail(FERRY_ERR_BACKEND, "simulated device fault") : FERRY_OK;
}

static int sim_event_query(void *device, offload_event event) {
    sim_device *sim = device;
    pthread_mutex_lock(&sim->lock);
    int done = sim->done[event];
    pthread_mutex_unlock(&sim->lock);
    return done;
}

static const offload_device_ops sim_ops = {sim_slot_alloc, sim_slot_free, sim_copy_async,
                                           sim_compute,    sim_event_wait, sim_event_query, NULL, NULL};

static sim_device *sim_start(const uint64_t *layer_bytes, useconds_t copy_us, useconds_t compute_us) {
    sim_device *sim = calloc(1, sizeof *sim);
    cr_assert_not_null(sim);
    pthread_mutex_init(&sim->lock, NULL);
    pthread_cond_init(&sim->changed, NULL);
    sim->layer_bytes = layer_bytes;
    sim->copy_us = copy_us;
    sim->compute_us = compute_us;
    sim->fail_compute_layer = -1;
    pthread_create(&sim->copies.thread, NULL, copy_thread, sim);
    pthread_create(&sim->computes.thread, NULL, compute_thread, sim);
    return sim;
}

static void sim_stop(sim_device *sim) {
    pthread_mutex_lock(&sim->lock);
    sim->stopping = 1;
    pthread_cond_broadcast(&sim->changed);
    pthread_mutex_unlock(&sim->lock);
    pthread_join(sim->copies.thread, NULL);
    pthread_join(sim->computes.thread, NULL);
    cr_assert_eq(sim->violations, 0, "%d violations, first: %s", sim->violations, sim->violation);
    free(sim);
}

/* -------------------------------------------------------- fake reader */

typedef struct fake_reader {
    const unsigned char *file;
    uint64_t file_bytes;
    uint64_t fail_offset;               /* UINT64_MAX: none */
    int pending[MAX_SLOTS * 2];
    uint64_t offsets[MAX_SLOTS * 2];
    int max_pending, n_pending;
} fake_reader;

static ferry_status fake_read_async(void *impl, uint64_t offset, uint64_t bytes, void *dst, int ticket) {
    fake_reader *reader = impl;
    cr_assert(!reader->pending[ticket], "ticket %d reused before its wait", ticket);
    cr_assert_leq(offset + bytes, reader->file_bytes);
    /* The bytes land at once: a staging buffer refilled before the copy
     * out of it ran would corrupt a slot, and the device would see it. */
    memcpy(dst, reader->file + offset, bytes);
    reader->pending[ticket] = 1;
    reader->offsets[ticket] = offset;
    if (++reader->n_pending > reader->max_pending) reader->max_pending = reader->n_pending;
    return FERRY_OK;
}

static ferry_status fake_read_wait(void *impl, int ticket) {
    fake_reader *reader = impl;
    cr_assert(reader->pending[ticket], "wait on ticket %d that has no read", ticket);
    reader->pending[ticket] = 0;
    reader->n_pending--;
    if (reader->offsets[ticket] == reader->fail_offset)
        return ferry_fail(FERRY_ERR_IO, "model.ferry: read at offset %llu failed: Input/output error",
                          (unsigned long long)reader->offsets[ticket]);
    return FERRY_OK;
}

static uint64_t fake_transfer_bytes(void *impl, uint64_t bytes) { return (bytes + 4095) / 4096 * 4096; }

static const offload_reader_ops fake_reader_ops = {fake_read_async, fake_read_wait, fake_transfer_bytes};

/* ------------------------------------------------------------ a model */

/* n layers of 1000..3000 bytes, each filled with its pattern, in host
 * memory and in a fake file (layer i at offset i x 4096). */
typedef struct fake_model {
    int n_layers;
    uint64_t layer_bytes[MAX_LAYERS];
    unsigned char *host[MAX_LAYERS];
    unsigned char *file;
    offload_source sources[MAX_LAYERS];
    fake_reader reader;
} fake_model;

static void model_init(fake_model *model, int n_layers, const char *tiers) {
    memset(model, 0, sizeof *model);
    model->n_layers = n_layers;
    model->file = calloc((size_t)n_layers, 4096);
    for (int i = 0; i < n_layers; i++) {
        model->layer_bytes[i] = 1000 + (uint64_t)(i % 5) * 500;
        model->host[i] = malloc(model->layer_bytes[i]);
        memset(model->host[i], pattern_of(i), model->layer_bytes[i]);
        memset(model->file + (size_t)i * 4096, pattern_of(i), model->layer_bytes[i]);
        offload_source *source = &model->sources[i];
        char tier = tiers[i % strlen(tiers)];
        source->tier = tier == 'G' ? OFFLOAD_TIER_GPU : tier == 'H' ? OFFLOAD_TIER_HOST : OFFLOAD_TIER_DISK;
        source->resident = model->host[i];
        source->host = model->host[i];
        source->file_offset = (uint64_t)i * 4096;
        source->bytes = model->layer_bytes[i];
    }
    model->reader.file = model->file;
    model->reader.file_bytes = (uint64_t)n_layers * 4096;
    model->reader.fail_offset = UINT64_MAX;
}

static void model_free(fake_model *model) {
    for (int i = 0; i < model->n_layers; i++) free(model->host[i]);
    free(model->file);
}

static offload_ring *ring_new(fake_model *model, sim_device *sim, int n_slots, int run_ahead,
                              int prefetch) {
    offload_ring_options options = {n_slots, run_ahead, prefetch, 0};
    offload_device device = {&sim_ops, sim};
    offload_reader reader = {&fake_reader_ops, &model->reader};
    offload_ring *ring = NULL;
    cr_assert_eq(offload_ring_new(&options, model->n_layers, model->sources, device, reader, &ring),
                 FERRY_OK, "%s", ferry_last_error());
    return ring;
}

static void assert_steps_in_order(const sim_device *sim, int n_layers, int n_steps) {
    cr_assert_eq(sim->n_log, n_layers * n_steps, "%d computes for %d steps of %d layers", sim->n_log,
                 n_steps, n_layers);
    for (int i = 0; i < sim->n_log; i++)
        cr_assert_eq(sim->compute_log[i], i % n_layers, "compute %d was layer %d, expected %d", i,
                     sim->compute_log[i], i % n_layers);
}

/* -------------------------------------------------------------- tests */

Test(offload_ring, computes_every_layer_in_order_over_several_steps, .timeout = 30) {
    fake_model model;
    model_init(&model, 12, "GHHDHGDD");
    sim_device *sim = sim_start(model.layer_bytes, 50, 80);
    offload_ring *ring = ring_new(&model, sim, 2, -1, 1);
    int n_computes = 0;
    for (int step = 0; step < 3; step++)
        cr_assert_eq(offload_ring_step(ring, &n_computes, NULL), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(n_computes, 36);
    offload_ring_stats stats = offload_ring_get_stats(ring);
    cr_assert_eq(stats.steps, 3);
    offload_ring_free(ring);
    assert_steps_in_order(sim, 12, 3);
    sim_stop(sim);
    model_free(&model);
}

Test(offload_ring, no_deadlock_or_early_reuse_for_depths_1_to_4_and_every_run_ahead, .timeout = 120) {
    const char *mixes[] = {"H", "D", "HDG", "GGHD"};
    for (int mix = 0; mix < 4; mix++)
        for (int n_slots = 1; n_slots <= 4; n_slots++)
            for (int run_ahead = 0; run_ahead < n_slots; run_ahead++)
                for (int prefetch = 0; prefetch <= 1; prefetch++) {
                    fake_model model;
                    model_init(&model, 29, mixes[mix]);
                    /* Alternate which side is slower. */
                    sim_device *sim = (n_slots + run_ahead) % 2 ? sim_start(model.layer_bytes, 0, 20)
                                                                : sim_start(model.layer_bytes, 20, 0);
                    offload_ring *ring = ring_new(&model, sim, n_slots, run_ahead, prefetch);
                    int n_computes = 0;
                    for (int step = 0; step < 3; step++)
                        cr_assert_eq(offload_ring_step(ring, &n_computes, NULL), FERRY_OK,
                                     "mix %s, %d slots, run-ahead %d: %s", mixes[mix], n_slots,
                                     run_ahead, ferry_last_error());
                    offload_ring_free(ring);
                    assert_steps_in_order(sim, 29, 3);
                    sim_stop(sim);
                    model_free(&model);
                }
}

Test(offload_ring, fetches_run_ahead_of_compute, .timeout = 30) {
    /* Copies and computes of 2 ms each: with two slots the copy of layer
     * i+1 starts before the compute of layer i ends. */
    fake_model model;
    model_init(&model, 8, "H");
    sim_device *sim = sim_start(model.layer_bytes, 2000, 2000);
    offload_ring *ring = ring_new(&model, sim, 2, 1, 0);
    int n_computes = 0;
    cr_assert_eq(offload_ring_step(ring, &n_computes, NULL), FERRY_OK, "%s", ferry_last_error());
    int overlapped = 0;
    for (int i = 0; i + 1 < 8; i++) overlapped += sim->copy_start_ns[i + 1] < sim->compute_end_ns[i];
    cr_assert_geq(overlapped, 6, "only %d of 7 copies overlapped the previous compute", overlapped);
    offload_ring_free(ring);
    sim_stop(sim);
    model_free(&model);
}

/* Copies of layer i + 1 that started before the compute of layer i ended,
 * in the second step of 8 DRAM layers of 2 ms copies and computes that hold the
 * calling thread until they finish (attention on the host). */
static int overlaps_with_blocking_computes(int fetch_before_compute) {
    fake_model model;
    model_init(&model, 8, "H");
    sim_device *sim = sim_start(model.layer_bytes, 2000, 2000);
    sim->compute_blocks_host = 1;
    offload_ring *ring = ring_new(&model, sim, 2, 1, 1);
    offload_ring_set_fetch_before_compute(ring, fetch_before_compute);
    int n_computes = 0;
    for (int step = 0; step < 2; step++)
        cr_assert_eq(offload_ring_step(ring, &n_computes, NULL), FERRY_OK, "%s",
                     ferry_last_error());
    int overlapped = 0;
    for (int i = 0; i + 1 < 8; i++)
        overlapped += sim->copy_start_ns[i + 1] < sim->compute_end_ns[i];
    offload_ring_free(ring);
    assert_steps_in_order(sim, 8, 2);
    sim_stop(sim);
    model_free(&model);
    return overlapped;
}

Test(offload_ring, computes_that_hold_the_host_still_overlap_fetches_when_told, .timeout = 30) {
    /* Issued after such a compute returns, the next fetch would wait for
     * it: nothing overlaps.  Issued before it, every fetch does. */
    cr_assert_eq(overlaps_with_blocking_computes(0), 0);
    cr_assert_eq(overlaps_with_blocking_computes(1), 7);
}

Test(offload_ring, a_single_slot_serialises_but_still_finishes, .timeout = 30) {
    fake_model model;
    model_init(&model, 9, "HD");
    sim_device *sim = sim_start(model.layer_bytes, 30, 30);
    offload_ring *ring = ring_new(&model, sim, 1, 0, 1);
    int n_computes = 0;
    for (int step = 0; step < 2; step++)
        cr_assert_eq(offload_ring_step(ring, &n_computes, NULL), FERRY_OK, "%s", ferry_last_error());
    for (int i = 0; i + 1 < 9; i++)
        cr_assert_geq(sim->copy_start_ns[i + 1], sim->compute_end_ns[i],
                      "layer %d copied into the only slot before layer %d finished", i + 1, i);
    offload_ring_free(ring);
    sim_stop(sim);
    model_free(&model);
}

Test(offload_ring, all_resident_layers_need_no_slots, .timeout = 30) {
    fake_model model;
    model_init(&model, 5, "G");
    sim_device *sim = sim_start(model.layer_bytes, 0, 10);
    offload_ring *ring = ring_new(&model, sim, 2, -1, 1);
    int n_computes = 0;
    cr_assert_eq(offload_ring_step(ring, &n_computes, NULL), FERRY_OK, "%s", ferry_last_error());
    for (int s = 0; s < MAX_SLOTS; s++) cr_assert_null(sim->slot_memory[s]);
    offload_ring_stats stats = offload_ring_get_stats(ring);
    cr_assert_eq(stats.bytes_copied, 0);
    offload_ring_free(ring);
    assert_steps_in_order(sim, 5, 1);
    sim_stop(sim);
    model_free(&model);
}

typedef struct step_thread_args {
    offload_ring *ring;
    volatile int stop;
    int n_computes;
    ferry_status status;
    char message[512];
} step_thread_args;

static void *run_step(void *arg) {
    step_thread_args *args = arg;
    args->status = offload_ring_step(args->ring, &args->n_computes, &args->stop);
    snprintf(args->message, sizeof args->message, "%s", ferry_last_error());
    return NULL;
}

Test(offload_ring, stopping_mid_step_returns_cancelled_and_the_ring_runs_again, .timeout = 30) {
    fake_model model;
    model_init(&model, 60, "HDG");
    sim_device *sim = sim_start(model.layer_bytes, 200, 1000);
    offload_ring *ring = ring_new(&model, sim, 3, -1, 1);
    step_thread_args args = {ring, 0, 0, FERRY_OK, ""};
    pthread_t thread;
    pthread_create(&thread, NULL, run_step, &args);
    usleep(10000);
    __atomic_store_n(&args.stop, 1, __ATOMIC_RELEASE);
    pthread_join(thread, NULL);
    cr_assert_eq(args.status, FERRY_ERR_CANCELLED, "%s", args.message);
    int layer = -1;
    cr_assert_eq(sscanf(args.message, "stopped before layer %d", &layer), 1, "%s", args.message);
    cr_assert(layer > 0 && layer < 60, "stopped at layer %d", layer);
    /* Every fetch and compute in flight finished before it returned. */
    pthread_mutex_lock(&sim->lock);
    cr_assert_eq(sim->copies.head, sim->copies.tail);
    cr_assert_eq(sim->computes.head, sim->computes.tail);
    pthread_mutex_unlock(&sim->lock);
    /* The next step starts clean and runs every layer. */
    sim->n_log = 0;
    sim->compute_us = 0;
    int n_computes = 0;
    cr_assert_eq(offload_ring_step(ring, &n_computes, NULL), FERRY_OK, "%s", ferry_last_error());
    assert_steps_in_order(sim, 60, 1);
    offload_ring_free(ring);
    sim_stop(sim);
    model_free(&model);
}

Test(offload_ring, a_failed_read_names_the_layer_and_file_offset_and_does_not_hang, .timeout = 30) {
    fake_model model;
    model_init(&model, 10, "HD");   /* odd layers on disk */
    model.reader.fail_offset = 7 * 4096;
    sim_device *sim = sim_start(model.layer_bytes, 20, 20);
    offload_ring *ring = ring_new(&model, sim, 2, -1, 1);
    int n_computes = 0;
    cr_assert_eq(offload_ring_step(ring, &n_computes, NULL), FERRY_ERR_IO);
    const char *message = ferry_last_error();
    cr_assert(strstr(message, "layer 7 (file offset 28672, 2000 bytes)"), "message: %s", message);
    cr_assert(strstr(message, "Input/output error"), "message: %s", message);
    cr_assert_eq(model.reader.n_pending, 0, "reads left pending after the failure");
    /* Layers before it were computed, layer 7 never was. */
    for (int i = 0; i < sim->n_log; i++) cr_assert_lt(sim->compute_log[i], 7);
    /* Once the drive recovers, the next step is whole. */
    model.reader.fail_offset = UINT64_MAX;
    sim->n_log = 0;
    cr_assert_eq(offload_ring_step(ring, &n_computes, NULL), FERRY_OK, "%s", ferry_last_error());
    assert_steps_in_order(sim, 10, 1);
    offload_ring_free(ring);
    sim_stop(sim);
    model_free(&model);
}

Test(offload_ring, a_failed_prefetch_for_the_next_step_fails_that_step_not_this_one, .timeout = 30) {
    fake_model model;
    model_init(&model, 6, "DH");   /* layer 0 on disk: the first thing prefetched */
    sim_device *sim = sim_start(model.layer_bytes, 10, 10);
    offload_ring *ring = ring_new(&model, sim, 2, -1, 1);
    int n_computes = 0;
    cr_assert_eq(offload_ring_step(ring, &n_computes, NULL), FERRY_OK, "%s", ferry_last_error());
    /* Step 2's layer 0 was fetched during step 1; the drive fails now, so
     * step 2 runs whole and only step 3's prefetch of layer 0 fails. */
    model.reader.fail_offset = 0;
    cr_assert_eq(offload_ring_step(ring, &n_computes, NULL), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(offload_ring_step(ring, &n_computes, NULL), FERRY_ERR_IO);
    cr_assert(strstr(ferry_last_error(), "layer 0 (file offset 0, "), "%s", ferry_last_error());
    cr_assert_eq(model.reader.n_pending, 0, "reads left pending");
    model.reader.fail_offset = UINT64_MAX;
    sim->n_log = 0;
    cr_assert_eq(offload_ring_step(ring, &n_computes, NULL), FERRY_OK, "%s", ferry_last_error());
    assert_steps_in_order(sim, 6, 1);
    offload_ring_free(ring);
    sim_stop(sim);
    model_free(&model);
}

Test(offload_ring, draining_between_steps_loses_nothing, .timeout = 30) {
    fake_model model;
    model_init(&model, 7, "HDG");
    sim_device *sim = sim_start(model.layer_bytes, 10, 10);
    offload_ring *ring = ring_new(&model, sim, 3, -1, 1);
    int n_computes = 0;
    for (int step = 0; step < 3; step++) {
        cr_assert_eq(offload_ring_step(ring, &n_computes, NULL), FERRY_OK, "%s", ferry_last_error());
        cr_assert_eq(offload_ring_drain(ring), FERRY_OK, "%s", ferry_last_error());
        cr_assert_eq(model.reader.n_pending, 0);
    }
    offload_ring_free(ring);
    assert_steps_in_order(sim, 7, 3);
    sim_stop(sim);
    model_free(&model);
}

Test(offload_ring, a_device_fault_names_the_layer, .timeout = 30) {
    fake_model model;
    model_init(&model, 10, "H");
    sim_device *sim = sim_start(model.layer_bytes, 10, 10);
    sim->fail_compute_layer = 4;
    offload_ring *ring = ring_new(&model, sim, 2, -1, 1);
    int n_computes = 0;
    cr_assert_eq(offload_ring_step(ring, &n_computes, NULL), FERRY_ERR_BACKEND);
    cr_assert(strstr(ferry_last_error(), "layer 4"), "message: %s", ferry_last_error());
    cr_assert(strstr(ferry_last_error(), "simulated device fault"), "%s", ferry_last_error());
    sim->fail_compute_layer = -1;
    cr_assert_eq(offload_ring_step(ring, &n_computes, NULL), FERRY_OK, "%s", ferry_last_error());
    offload_ring_free(ring);
    sim_stop(sim);
    model_free(&model);
}

Test(offload_ring, bad_options_are_refused, .timeout = 30) {
    fake_model model;
    model_init(&model, 4, "HD");
    sim_device *sim = sim_start(model.layer_bytes, 0, 0);
    offload_device device = {&sim_ops, sim};
    offload_reader reader = {&fake_reader_ops, &model.reader};
    offload_reader no_reader = {NULL, NULL};
    offload_ring *ring = NULL;
    offload_ring_options too_far = {2, 2, 1, 0};
    cr_assert_eq(offload_ring_new(&too_far, 4, model.sources, device, reader, &ring),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "run-ahead 2 with 2 slots"), "%s", ferry_last_error());
    offload_ring_options no_slots = {0, -1, 1, 0};
    cr_assert_eq(offload_ring_new(&no_slots, 4, model.sources, device, reader, &ring),
                 FERRY_ERR_INVALID_ARGUMENT);
    offload_ring_options fine = {2, -1, 1, 0};
    cr_assert_eq(offload_ring_new(&fine, 4, model.sources, device, no_reader, &ring),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "no reader"), "%s", ferry_last_error());
    cr_assert_null(ring);
    sim_stop(sim);
    model_free(&model);
}
