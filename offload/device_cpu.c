/*
 * device_cpu.c — the slot ring's device for the CPU backend: slots are
 * aligned host buffers, a copy is a memcpy and a compute is a direct call
 * of the runtime's layer function, both finished when they return (so
 * every event is 0, "already complete").  Correctness oracle for the ring,
 * not a fast path: nothing overlaps.
 */
#include <stdlib.h>

#include "offload/offload.h"

typedef struct cpu_device {
    offload_layer_fn run_layer;
    void *user;
} cpu_device;

static ferry_status cpu_slot_alloc(void *device, int slot, uint64_t bytes, void **out) {
    (void)device;
    (void)slot;
    /* Round up to whole pages so tensor offsets inside keep their alignment
     * (0 bytes gets one page: ferry_aligned_alloc sees to that). */
    uint64_t rounded = (bytes + 4095) / 4096 * 4096;
    return ferry_aligned_alloc(4096, rounded, "CPU layer slot", out);
}

static void cpu_slot_free(void *device, int slot, void *memory) {
    (void)device;
    (void)slot;
    free(memory);
}

static ferry_status cpu_copy(void *device, int slot, void *dst, const void *src, uint64_t bytes,
                             offload_event *out_done) {
    (void)device;
    (void)slot;
    memcpy(dst, src, bytes);
    *out_done = 0;
    return FERRY_OK;
}

static ferry_status cpu_compute(void *device, int layer, const void *weights, offload_event after,
                                void *step_user, offload_event *out_done) {
    cpu_device *cpu = device;
    (void)after; /* copies are done when they return */
    *out_done = 0;
    return cpu->run_layer(cpu->user, layer, weights, step_user);
}

static ferry_status cpu_event_wait(void *device, offload_event event) {
    (void)device;
    (void)event;
    return FERRY_OK;
}

static int cpu_event_query(void *device, offload_event event) {
    (void)device;
    (void)event;
    return 1;
}

static const offload_device_ops cpu_device_ops = {cpu_slot_alloc, cpu_slot_free, cpu_copy,
                                                  cpu_compute,    cpu_event_wait, cpu_event_query, NULL,           NULL};

ferry_status offload_device_cpu_new(offload_layer_fn run_layer, void *user, offload_device *out) {
    memset(out, 0, sizeof *out);
    if (!run_layer) return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "CPU device: no layer function");
    cpu_device *cpu = NULL;
    FERRY_TRY(ferry_calloc(1, sizeof *cpu, "CPU device", (void **)&cpu));
    cpu->run_layer = run_layer;
    cpu->user = user;
    out->ops = &cpu_device_ops;
    out->impl = cpu;
    return FERRY_OK;
}

void offload_device_cpu_free(offload_device *device) {
    if (!device) return;
    free(device->impl);
    device->impl = NULL;
    device->ops = NULL;
}
