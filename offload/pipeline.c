/*
 * pipeline.c — the plan's model of a decode step as the slot ring runs it:
 * a small, deterministic simulation over the layer order with three lanes
 * (NVMe reads, host->GPU copies, computes), N slots and N staging buffers.
 * Pure arithmetic on doubles: no allocation, no device, no clock.
 *
 * The rules are the ring's (ring.c): streamed layers are copied in step
 * order, one copy at a time; the copy of streamed layer g goes into slot
 * g mod N once the compute of layer g - N (the slot's last reader) has
 * ended; a streamed layer computes once its copy landed, a resident one at
 * once; computes run one at a time in layer order; fetches run ahead into
 * the next step (weights do not change between steps).
 */
#include "offload/offload.h"

/* Steps simulated: the first starts with empty slots; the answer is the
 * mean of the last STEPS_AVERAGED, once the start no longer shows (a
 * pattern that repeats every 2 or 4 steps averages out exactly). */
enum { STEPS_WARM = 4, STEPS_AVERAGED = 4, MAX_SLOTS = 64 };

static double later(double a, double b) { return a > b ? a : b; }

/* One layer's compute: device time by its bytes, plus the fixed share. */
static double compute_s(const offload_pipeline *p, int layer) {
    return (double)p->layer_bytes[layer] * p->compute_s_per_byte + p->compute_s_per_layer;
}

/* The lanes' state while the simulation runs, in seconds from its start. */
typedef struct lanes {
    double link_free, disk_free, compute_free;
    double slot_free[MAX_SLOTS];    /* compute end of the slot's last layer */
    double copy_done[MAX_SLOTS];    /* copy end of the layer the slot holds */
    double staging_free[MAX_SLOTS]; /* copy end out of the staging buffer */
    uint64_t n_copied, n_computed, n_reads; /* streamed layers, counted across steps */
    int copy_layer;                 /* layer the next copy brings */
} lanes;

/* The next streamed layer after `layer`, in step order, wrapping. */
static int next_streamed(const offload_pipeline *p, int layer) {
    do layer = (layer + 1) % p->n_layers;
    while (p->layer_tier[layer] == OFFLOAD_TIER_GPU);
    return layer;
}

/* Copy the next streamed layer into its slot (reading it from NVMe into
 * a staging buffer first when it lives there). */
static void copy_next(const offload_pipeline *p, lanes *l, int n_slots) {
    const int layer = l->copy_layer;
    const double bytes = (double)p->layer_bytes[layer];
    const int slot = (int)(l->n_copied % (uint64_t)n_slots);
    double start = later(l->link_free, l->slot_free[slot]);
    int staging = -1;
    if (p->layer_tier[layer] == OFFLOAD_TIER_DISK) {
        staging = (int)(l->n_reads++ % (uint64_t)n_slots);
        double read_end = later(l->disk_free, l->staging_free[staging]) +
                          bytes / p->disk_bytes_per_s;
        l->disk_free = read_end;
        start = later(start, read_end);
    }
    double end = start + bytes / p->link_bytes_per_s;
    l->link_free = end;
    l->copy_done[slot] = end;
    if (staging >= 0) l->staging_free[staging] = end;
    l->n_copied++;
    l->copy_layer = next_streamed(p, layer);
}

double offload_pipeline_step_s(const offload_pipeline *p) {
    int n_streamed = 0;
    double serial_s = p->tail_s;
    for (int i = 0; i < p->n_layers; i++) {
        serial_s += compute_s(p, i);
        n_streamed += p->layer_tier[i] != OFFLOAD_TIER_GPU;
    }
    if (n_streamed == 0) return serial_s;
    const int n_slots = p->n_slots < 1 ? 1 : p->n_slots > MAX_SLOTS ? MAX_SLOTS : p->n_slots;
    lanes l;
    memset(&l, 0, sizeof l);
    l.copy_layer = next_streamed(p, p->n_layers - 1);
    double warm_end = 0;
    for (int step = 0; step < STEPS_WARM + STEPS_AVERAGED; step++) {
        for (int layer = 0; layer < p->n_layers; layer++) {
            /* Fetch ahead: every streamed layer up to N - 1 past the next
             * one to compute (its slot's reader has been issued). */
            while (l.n_copied < l.n_computed + (uint64_t)n_slots) copy_next(p, &l, n_slots);
            double start = l.compute_free;
            const int streamed = p->layer_tier[layer] != OFFLOAD_TIER_GPU;
            const int slot = (int)(l.n_computed % (uint64_t)n_slots);
            if (streamed) start = later(start, l.copy_done[slot]);
            l.compute_free = start + compute_s(p, layer);
            if (streamed) {
                l.slot_free[slot] = l.compute_free;
                l.n_computed++;
            }
        }
        l.compute_free += p->tail_s; /* the globals: copies go on meanwhile */
        if (step == STEPS_WARM - 1) warm_end = l.compute_free;
    }
    return (l.compute_free - warm_end) / STEPS_AVERAGED;
}
