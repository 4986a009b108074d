/*
 * cuda.c — the reader's only CUDA touch points: pinning I/O buffers
 * (cudaHostRegister), the NUMA node of a GPU, and the small GPU slot ring
 * `iobench --to-gpu` copies into.  Without FERRY_HAVE_CUDA each function
 * says FERRY_ERR_UNAVAILABLE (or -1 / 0) and nothing else changes.
 */
#include <stdlib.h>

#include "nvme/backend.h"

#ifdef FERRY_HAVE_CUDA
#include <cuda_runtime.h>

#define CUDA_TRY_GOTO(call, what)                                                            \
    do {                                                                                     \
        cudaError_t cuda_error_ = (call);                                                    \
        if (cuda_error_ != cudaSuccess) {                                                    \
            status = ferry_fail(FERRY_ERR_BACKEND, "%s failed: %s", what,                    \
                                cudaGetErrorString(cuda_error_));                            \
            goto fail;                                                                       \
        }                                                                                    \
    } while (0)

int nvme_cuda_available(void) {
    int n_devices = 0;
    return cudaGetDeviceCount(&n_devices) == cudaSuccess && n_devices > 0;
}

ferry_status nvme_buffer_pin_cuda(nvme_buffer *buffer) {
    if (buffer->cuda_pinned) return FERRY_OK;
    cudaError_t error = cudaHostRegister(buffer->data, buffer->mapped_bytes, cudaHostRegisterDefault);
    if (error != cudaSuccess)
        return ferry_fail(FERRY_ERR_BACKEND, "cudaHostRegister of %llu bytes failed: %s",
                          (unsigned long long)buffer->mapped_bytes, cudaGetErrorString(error));
    buffer->cuda_pinned = 1;
    return FERRY_OK;
}

void nvme_buffer_unpin_cuda(nvme_buffer *buffer) {
    if (!buffer->cuda_pinned) return;
    cudaHostUnregister(buffer->data);
    buffer->cuda_pinned = 0;
}

int nvme_numa_node_of_cuda_device(int device) {
    char bus_id[32];
    if (cudaDeviceGetPCIBusId(bus_id, (int)sizeof bus_id, device) != cudaSuccess) return -1;
    return nvme_numa_node_of_pci(bus_id);
}

struct nvme_gpu_sink {
    int device;
    int n_slots;
    uint64_t slot_bytes;
    cudaStream_t stream;
    void **slots;
    cudaEvent_t *events;
};

ferry_status nvme_gpu_sink_open(int device, int n_slots, uint64_t slot_bytes,
                                nvme_gpu_sink **out_sink) {
    *out_sink = NULL;
    ferry_status status = FERRY_OK;
    nvme_gpu_sink *sink = NULL;
    FERRY_TRY(ferry_calloc(1, sizeof *sink, "GPU sink", (void **)&sink));
    sink->device = device;
    sink->n_slots = n_slots;
    sink->slot_bytes = slot_bytes;
    FERRY_TRY_GOTO(ferry_calloc((size_t)n_slots, sizeof *sink->slots, "GPU slots",
                                (void **)&sink->slots));
    FERRY_TRY_GOTO(ferry_calloc((size_t)n_slots, sizeof *sink->events, "GPU slot events",
                                (void **)&sink->events));
    CUDA_TRY_GOTO(cudaSetDevice(device), "cudaSetDevice");
    CUDA_TRY_GOTO(cudaStreamCreateWithFlags(&sink->stream, cudaStreamNonBlocking),
                  "cudaStreamCreate");
    for (int i = 0; i < n_slots; i++) {
        CUDA_TRY_GOTO(cudaMalloc(&sink->slots[i], slot_bytes), "cudaMalloc of a GPU slot");
        CUDA_TRY_GOTO(cudaEventCreateWithFlags(&sink->events[i], cudaEventDisableTiming),
                      "cudaEventCreate");
    }
    *out_sink = sink;
    return FERRY_OK;
fail:
    nvme_gpu_sink_close(sink);
    return status;
}

ferry_status nvme_gpu_sink_copy(nvme_gpu_sink *sink, int slot, const void *host, uint64_t bytes) {
    ferry_status status = FERRY_OK;
    if (slot < 0 || slot >= sink->n_slots || bytes > sink->slot_bytes)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "GPU slot %d / %llu bytes out of range",
                          slot, (unsigned long long)bytes);
    CUDA_TRY_GOTO(cudaSetDevice(sink->device), "cudaSetDevice");
    CUDA_TRY_GOTO(cudaMemcpyAsync(sink->slots[slot], host, bytes, cudaMemcpyHostToDevice,
                                  sink->stream),
                  "cudaMemcpyAsync host->GPU");
    CUDA_TRY_GOTO(cudaEventRecord(sink->events[slot], sink->stream), "cudaEventRecord");
fail:
    return status;
}

ferry_status nvme_gpu_sink_wait(nvme_gpu_sink *sink, int slot) {
    ferry_status status = FERRY_OK;
    CUDA_TRY_GOTO(cudaEventSynchronize(sink->events[slot]), "waiting for a host->GPU copy");
fail:
    return status;
}

void nvme_gpu_sink_close(nvme_gpu_sink *sink) {
    if (!sink) return;
    if (sink->stream) cudaStreamSynchronize(sink->stream);
    for (int i = 0; i < sink->n_slots; i++) {
        if (sink->slots && sink->slots[i]) cudaFree(sink->slots[i]);
        if (sink->events && sink->events[i]) cudaEventDestroy(sink->events[i]);
    }
    if (sink->stream) cudaStreamDestroy(sink->stream);
    free(sink->slots);
    free(sink->events);
    free(sink);
}

#else /* no CUDA */

static ferry_status no_cuda(void) {
    return ferry_fail(FERRY_ERR_UNAVAILABLE, "ferry was built without CUDA (-DFERRY_CUDA=ON)");
}

int nvme_cuda_available(void) { return 0; }
ferry_status nvme_buffer_pin_cuda(nvme_buffer *buffer) {
    (void)buffer;
    return no_cuda();
}
void nvme_buffer_unpin_cuda(nvme_buffer *buffer) { (void)buffer; }
int nvme_numa_node_of_cuda_device(int device) {
    (void)device;
    return -1;
}
ferry_status nvme_gpu_sink_open(int device, int n_slots, uint64_t slot_bytes,
                                nvme_gpu_sink **out_sink) {
    (void)device;
    (void)n_slots;
    (void)slot_bytes;
    *out_sink = NULL;
    return no_cuda();
}
ferry_status nvme_gpu_sink_copy(nvme_gpu_sink *sink, int slot, const void *host, uint64_t bytes) {
    (void)sink;
    (void)slot;
    (void)host;
    (void)bytes;
    return no_cuda();
}
ferry_status nvme_gpu_sink_wait(nvme_gpu_sink *sink, int slot) {
    (void)sink;
    (void)slot;
    return no_cuda();
}
void nvme_gpu_sink_close(nvme_gpu_sink *sink) { (void)sink; }

#endif
