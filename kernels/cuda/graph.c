/*
 * graph.c — CUDA Graphs for the CUDA backend: the ops issued on the
 * compute stream between graph_begin and graph_end are recorded (stream
 * capture), not run, and graph_launch replays them with one launch, so a
 * decode step's few hundred small kernels pay no launch gaps.  A recording
 * holds raw pointers into the backend's scratch buffers, so it carries the
 * scratch epoch it was made in and declines to replay once a scratch
 * buffer has moved.  Hot path: graph_launch is one cudaGraphLaunch.
 */
#include <stdlib.h>

#include "kernels/cuda/cuda_backend.h"

typedef struct cuda_graph {
    cudaGraphExec_t exec;
    uint64_t scratch_epoch;     /* state->scratch_epoch when recorded */
} cuda_graph;

ferry_status cuda_graph_begin(ferry_backend *backend) {
    cuda_backend *state = cuda_state(backend);
    /* Thread-local mode: only this thread is barred from unsafe calls, so
     * offload/'s copy thread keeps working while a step is recorded. */
    CUDA_TRY(cudaStreamBeginCapture(state->stream, cudaStreamCaptureModeThreadLocal));
    return FERRY_OK;
}

ferry_status cuda_graph_end(ferry_backend *backend, void **out_graph) {
    cuda_backend *state = cuda_state(backend);
    cudaGraph_t graph = NULL;
    cuda_graph *recording = NULL;
    *out_graph = NULL;
    /* Always ends the capture, also when an op inside it failed, so the
     * stream runs work again. */
    cudaError_t error = cudaStreamEndCapture(state->stream, &graph);
    if (error != cudaSuccess || !graph) {
        cudaGetLastError();
        if (graph) cudaGraphDestroy(graph);
        return ferry_fail(FERRY_ERR_BACKEND, "cuda:%d: recording a graph failed: %s",
                          state->device, cudaGetErrorString(error));
    }
    recording = calloc(1, sizeof *recording);
    if (!recording) {
        cudaGraphDestroy(graph);
        return ferry_fail(FERRY_ERR_NO_MEMORY, "cuda:%d: out of host memory for a graph",
                          state->device);
    }
    error = cudaGraphInstantiate(&recording->exec, graph, 0);
    cudaGraphDestroy(graph);
    if (error != cudaSuccess) {
        cudaGetLastError();
        free(recording);
        return ferry_fail(FERRY_ERR_BACKEND, "cuda:%d: cudaGraphInstantiate failed: %s",
                          state->device, cudaGetErrorString(error));
    }
    recording->scratch_epoch = state->scratch_epoch;
    *out_graph = recording;
    return FERRY_OK;
}

ferry_status cuda_graph_launch(ferry_backend *backend, void *graph, int *out_replayed) {
    cuda_backend *state = cuda_state(backend);
    const cuda_graph *recording = graph;
    *out_replayed = 0;
    if (!recording || recording->scratch_epoch != state->scratch_epoch) return FERRY_OK;
    CUDA_TRY(cudaGraphLaunch(recording->exec, state->stream));
    *out_replayed = 1;
    return FERRY_OK;
}

void cuda_graph_free(ferry_backend *backend, void *graph) {
    (void)backend;
    cuda_graph *recording = graph;
    if (!recording) return;
    cudaGraphExecDestroy(recording->exec);
    free(recording);
}
