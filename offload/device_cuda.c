/*
 * device_cuda.c — the slot ring's CUDA device: slots in device memory, a
 * copy stream for host->device transfers, a compute stream the layer
 * kernels run on, and a CUDA event per copy and per compute.  The compute
 * stream waits for a slot's copy event on the device (no host round trip);
 * the ring waits on the host only before reusing a slot or staging buffer.
 * Hot path: events come from a fixed pool, nothing is allocated per layer.
 * Without CUDA every entry point says FERRY_ERR_UNAVAILABLE.
 */
#include <stdlib.h>

#include "offload/offload.h"

#ifdef FERRY_HAVE_CUDA
#include <cuda_runtime_api.h>

/* More than the ring ever holds at once (2 per slot, 1 per staging buffer,
 * the last compute), so an id's event is not re-recorded while waited on. */
enum { EVENT_POOL = 256 };

typedef struct cuda_device {
    int gpu;
    cudaStream_t copy_stream, compute_stream;
    int owns_compute_stream;
    cudaEvent_t events[EVENT_POOL];
    uint64_t next_event;            /* ids start at 1; id % EVENT_POOL picks the event */
    offload_layer_fn run_layer;
    void *user;
} cuda_device;

static ferry_status cuda_status(cudaError_t error, const char *what) {
    if (error == cudaSuccess) return FERRY_OK;
    return ferry_fail(FERRY_ERR_BACKEND, "CUDA %s: %s", what, cudaGetErrorString(error));
}

#define CUDA_TRY(call, what) FERRY_TRY(cuda_status((call), (what)))

static ferry_status record(cuda_device *cuda, cudaStream_t stream, offload_event *out) {
    uint64_t id = ++cuda->next_event;
    CUDA_TRY(cudaEventRecord(cuda->events[id % EVENT_POOL], stream), "event record");
    *out = id;
    return FERRY_OK;
}

static ferry_status cuda_slot_alloc(void *device, int slot, uint64_t bytes, void **out) {
    cuda_device *cuda = device;
    (void)slot;
    CUDA_TRY(cudaSetDevice(cuda->gpu), "set device");
    return cuda_status(cudaMalloc(out, bytes), "slot allocation");
}

static void cuda_slot_free(void *device, int slot, void *memory) {
    (void)device;
    (void)slot;
    cudaFree(memory);
}

static ferry_status cuda_copy(void *device, int slot, void *dst, const void *src, uint64_t bytes,
                              offload_event *out_done) {
    cuda_device *cuda = device;
    (void)slot;
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cuda->copy_stream),
             "copy into slot");
    return record(cuda, cuda->copy_stream, out_done);
}

static ferry_status cuda_compute(void *device, int layer, const void *weights,
                                 offload_event after, void *step_user, offload_event *out_done) {
    cuda_device *cuda = device;
    /* The kernels read the slot only once its copy has landed. */
    if (after)
        CUDA_TRY(cudaStreamWaitEvent(cuda->compute_stream, cuda->events[after % EVENT_POOL], 0),
                 "wait for copy");
    FERRY_TRY(cuda->run_layer(cuda->user, layer, weights, step_user));
    return record(cuda, cuda->compute_stream, out_done);
}

static ferry_status cuda_event_wait(void *device, offload_event event) {
    cuda_device *cuda = device;
    if (!event) return FERRY_OK;
    return cuda_status(cudaEventSynchronize(cuda->events[event % EVENT_POOL]), "stream work");
}

static int cuda_event_query(void *device, offload_event event) {
    cuda_device *cuda = device;
    if (!event) return 1;
    return cudaEventQuery(cuda->events[event % EVENT_POOL]) != cudaErrorNotReady;
}

static ferry_status cuda_host_register(void *device, void *memory, uint64_t bytes) {
    (void)device;
    return cuda_status(cudaHostRegister(memory, bytes, cudaHostRegisterDefault),
                       "pinning staging memory");
}

static void cuda_host_unregister(void *device, void *memory) {
    (void)device;
    cudaHostUnregister(memory);
}

static const offload_device_ops cuda_device_ops = {
    cuda_slot_alloc, cuda_slot_free,  cuda_copy,          cuda_compute,
    cuda_event_wait, cuda_event_query, cuda_host_register, cuda_host_unregister};

ferry_status offload_device_cuda_new(int gpu, void *compute_stream, offload_layer_fn run_layer,
                                     void *user, offload_device *out) {
    memset(out, 0, sizeof *out);
    if (!run_layer) return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "CUDA device: no layer function");
    int n_gpus = 0;
    if (cudaGetDeviceCount(&n_gpus) != cudaSuccess || gpu < 0 || gpu >= n_gpus)
        return ferry_fail(FERRY_ERR_UNAVAILABLE, "CUDA device: no GPU %d (%d present)", gpu, n_gpus);
    cuda_device *cuda = NULL;
    ferry_status status;
    FERRY_TRY(ferry_calloc(1, sizeof *cuda, "CUDA device", (void **)&cuda));
    cuda->gpu = gpu;
    cuda->run_layer = run_layer;
    cuda->user = user;
    FERRY_TRY_GOTO(cuda_status(cudaSetDevice(gpu), "set device"));
    FERRY_TRY_GOTO(cuda_status(cudaStreamCreateWithFlags(&cuda->copy_stream, cudaStreamNonBlocking),
                               "copy stream"));
    if (compute_stream) {
        cuda->compute_stream = (cudaStream_t)compute_stream;
    } else {
        FERRY_TRY_GOTO(cuda_status(
            cudaStreamCreateWithFlags(&cuda->compute_stream, cudaStreamNonBlocking),
            "compute stream"));
        cuda->owns_compute_stream = 1;
    }
    for (int i = 0; i < EVENT_POOL; i++)
        FERRY_TRY_GOTO(cuda_status(cudaEventCreateWithFlags(&cuda->events[i],
                                                            cudaEventDisableTiming),
                                   "event"));
    out->ops = &cuda_device_ops;
    out->impl = cuda;
    return FERRY_OK;
fail:
    out->impl = cuda;
    offload_device_cuda_free(out);
    return status;
}

void offload_device_cuda_free(offload_device *device) {
    if (!device || !device->impl) return;
    cuda_device *cuda = device->impl;
    if (cuda->copy_stream) cudaStreamSynchronize(cuda->copy_stream);
    if (cuda->compute_stream) cudaStreamSynchronize(cuda->compute_stream);
    for (int i = 0; i < EVENT_POOL; i++)
        if (cuda->events[i]) cudaEventDestroy(cuda->events[i]);
    if (cuda->copy_stream) cudaStreamDestroy(cuda->copy_stream);
    if (cuda->owns_compute_stream && cuda->compute_stream) cudaStreamDestroy(cuda->compute_stream);
    free(cuda);
    device->impl = NULL;
    device->ops = NULL;
}

void *offload_device_cuda_stream(const offload_device *device) {
    return device && device->impl ? (void *)((cuda_device *)device->impl)->compute_stream : NULL;
}

#else /* no CUDA in this build */

ferry_status offload_device_cuda_new(int gpu, void *compute_stream, offload_layer_fn run_layer,
                                     void *user, offload_device *out) {
    (void)gpu;
    (void)compute_stream;
    (void)run_layer;
    (void)user;
    memset(out, 0, sizeof *out);
    return ferry_fail(FERRY_ERR_UNAVAILABLE, "CUDA device: ferry was built without CUDA");
}

void offload_device_cuda_free(offload_device *device) { (void)device; }

void *offload_device_cuda_stream(const offload_device *device) {
    (void)device;
    return NULL;
}

#endif
