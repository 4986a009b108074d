/*
 * test_offload_cuda.c — the slot ring on a real GPU (skips without one):
 * layers from pinned DRAM and from a file pass through CUDA slots with
 * their bytes intact, and the ring keeps the host->GPU link near the
 * bandwidth a plain pinned cudaMemcpy reaches in the same run (printed, so
 * bench/RESULTS.md can quote it).  FERRY_OFFLOAD_BENCH_LAYERS and
 * FERRY_OFFLOAD_BENCH_LAYER_MIB size the bandwidth run (default 8 x 256).
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "helpers.h"
#include "offload/offload.h"

#ifndef FERRY_HAVE_CUDA

Test(offload_cuda, skipped_without_cuda) { cr_skip("ferry was built without CUDA"); }

#else
#include <cuda_runtime_api.h>

static int gpu_present(void) {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

/* Each "compute" copies the slot into its layer's place in a device
 * buffer on the compute stream: it reads every weight byte, as a matrix
 * kernel would, and leaves what it saw for the host to check. */
typedef struct check_compute {
    offload_device *device;
    unsigned char *seen;            /* device, [n_layers * layer_bytes] */
    uint64_t layer_bytes;
} check_compute;

static ferry_status copy_out(void *user, int layer, const void *weights, void *step_user) {
    check_compute *check = user;
    (void)step_user;
    cudaStream_t stream = (cudaStream_t)offload_device_cuda_stream(check->device);
    if (cudaMemcpyAsync(check->seen + (uint64_t)layer * check->layer_bytes, weights,
                        check->layer_bytes, cudaMemcpyDeviceToDevice, stream) != cudaSuccess)
        return ferry_fail(FERRY_ERR_BACKEND, "copy out of layer %d failed", layer);
    return FERRY_OK;
}

Test(offload_cuda, layers_from_dram_and_file_reach_the_gpu_intact) {
    if (!gpu_present()) cr_skip("no GPU");
    enum { N_LAYERS = 9 };
    const uint64_t layer_bytes = 3u << 20;
    uint64_t state = test_seed();
    char *dir = test_tempdir();
    char *path = test_path(dir, "layers.bin");
    unsigned char *host = NULL;
    cr_assert_eq(cudaMallocHost((void **)&host, N_LAYERS * layer_bytes), cudaSuccess);
    for (uint64_t i = 0; i < N_LAYERS * layer_bytes; i++) host[i] = (unsigned char)test_rand_u64(&state);
    cr_assert_eq(test_write_file(path, host, N_LAYERS * layer_bytes), 0);
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0);
    offload_source sources[N_LAYERS];
    for (int i = 0; i < N_LAYERS; i++) {
        sources[i] = (offload_source){i % 3 == 2 ? OFFLOAD_TIER_DISK : OFFLOAD_TIER_HOST, NULL,
                                      host + i * layer_bytes, i * layer_bytes, layer_bytes};
    }
    offload_device device;
    check_compute check = {&device, NULL, layer_bytes};
    cr_assert_eq(cudaMalloc((void **)&check.seen, N_LAYERS * layer_bytes), cudaSuccess);
    cr_assert_eq(cudaMemset(check.seen, 0, N_LAYERS * layer_bytes), cudaSuccess);
    cr_assert_eq(offload_device_cuda_new(0, NULL, copy_out, &check, &device), FERRY_OK, "%s",
                 ferry_last_error());
    offload_reader reader;
    cr_assert_eq(offload_reader_pread_new(fd, path, 2, &reader), FERRY_OK);
    offload_ring_options options = {2, -1, 1, 0};
    offload_ring *ring = NULL;
    cr_assert_eq(offload_ring_new(&options, N_LAYERS, sources, device, reader, &ring), FERRY_OK,
                 "%s", ferry_last_error());
    for (int step = 0; step < 3; step++)
        cr_assert_eq(offload_ring_step(ring, NULL, NULL), FERRY_OK, "%s", ferry_last_error());
    unsigned char *back = malloc(N_LAYERS * layer_bytes);
    cr_assert_eq(cudaMemcpy(back, check.seen, N_LAYERS * layer_bytes, cudaMemcpyDeviceToHost),
                 cudaSuccess);
    for (int i = 0; i < N_LAYERS; i++)
        cr_assert(memcmp(back + i * layer_bytes, host + i * layer_bytes, layer_bytes) == 0,
                  "layer %d reached the GPU changed", i);
    free(back);
    offload_ring_free(ring);
    offload_reader_pread_free(&reader);
    offload_device_cuda_free(&device);
    cudaFree(check.seen);
    cudaFreeHost(host);
    close(fd);
    test_rmtree(dir);
    free(path);
    free(dir);
}

/* The "compute" of the bandwidth run: reads the whole slot on the GPU
 * (device-to-device copy into scratch), like a batch-1 decode layer. */
typedef struct read_compute {
    offload_device *device;
    void *scratch;
    uint64_t layer_bytes;
} read_compute;

static ferry_status read_slot(void *user, int layer, const void *weights, void *step_user) {
    read_compute *compute = user;
    (void)layer;
    (void)step_user;
    cudaStream_t stream = (cudaStream_t)offload_device_cuda_stream(compute->device);
    if (cudaMemcpyAsync(compute->scratch, weights, compute->layer_bytes, cudaMemcpyDeviceToDevice,
                        stream) != cudaSuccess)
        return ferry_fail(FERRY_ERR_BACKEND, "slot read failed");
    return FERRY_OK;
}

static long env_long(const char *name, long fallback) {
    const char *text = getenv(name);
    return text && *text ? strtol(text, NULL, 10) : fallback;
}

Test(offload_cuda, the_ring_keeps_the_link_within_ten_percent_of_pinned_memcpy, .timeout = 300) {
    if (!gpu_present()) cr_skip("no GPU");
    const int n_layers = (int)env_long("FERRY_OFFLOAD_BENCH_LAYERS", 8);
    const uint64_t layer_bytes = (uint64_t)env_long("FERRY_OFFLOAD_BENCH_LAYER_MIB", 256) << 20;
    unsigned char *host = NULL;
    cr_assert_eq(cudaMallocHost((void **)&host, n_layers * layer_bytes), cudaSuccess,
                 "pinning %d x %llu bytes", n_layers, (unsigned long long)layer_bytes);
    memset(host, 1, n_layers * layer_bytes);
    void *target = NULL, *scratch = NULL;
    cr_assert_eq(cudaMalloc(&target, layer_bytes), cudaSuccess);
    cr_assert_eq(cudaMalloc(&scratch, layer_bytes), cudaSuccess);

    /* Reference: back-to-back pinned copies of every layer. */
    cr_assert_eq(cudaMemcpy(target, host, layer_bytes, cudaMemcpyHostToDevice), cudaSuccess);
    uint64_t start_ns = ferry_now_ns();
    for (int repeat = 0; repeat < 3; repeat++)
        for (int i = 0; i < n_layers; i++)
            cudaMemcpyAsync(target, host + i * layer_bytes, layer_bytes, cudaMemcpyHostToDevice, 0);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    double memcpy_gbps = 3.0 * n_layers * layer_bytes / (double)(ferry_now_ns() - start_ns);

    offload_source *sources = calloc((size_t)n_layers, sizeof *sources);
    for (int i = 0; i < n_layers; i++)
        sources[i] = (offload_source){OFFLOAD_TIER_HOST, NULL, host + i * layer_bytes, 0, layer_bytes};
    for (int n_slots = 2; n_slots <= 3; n_slots++) {
        offload_device device;
        read_compute compute = {&device, scratch, layer_bytes};
        cr_assert_eq(offload_device_cuda_new(0, NULL, read_slot, &compute, &device), FERRY_OK, "%s",
                     ferry_last_error());
        offload_ring_options options = {n_slots, -1, 1, 0};
        offload_ring *ring = NULL;
        offload_reader none = {NULL, NULL};
        cr_assert_eq(offload_ring_new(&options, n_layers, sources, device, none, &ring), FERRY_OK,
                     "%s", ferry_last_error());
        cr_assert_eq(offload_ring_step(ring, NULL, NULL), FERRY_OK, "%s", ferry_last_error());
        const int n_steps = 4;
        start_ns = ferry_now_ns();
        for (int step = 0; step < n_steps; step++)
            cr_assert_eq(offload_ring_step(ring, NULL, NULL), FERRY_OK, "%s", ferry_last_error());
        double seconds = (double)(ferry_now_ns() - start_ns) * 1e-9;
        double ring_gbps = (double)n_steps * n_layers * layer_bytes / seconds * 1e-9;
        printf("offload ring: %d slots, %d layers x %llu MiB: %.2f GB/s through the ring, "
               "%.2f GB/s pinned cudaMemcpy (%.1f%%), %.2f steps/s\n",
               n_slots, n_layers, (unsigned long long)(layer_bytes >> 20), ring_gbps, memcpy_gbps,
               100.0 * ring_gbps / memcpy_gbps, n_steps / seconds);
        fflush(stdout);
        cr_expect_geq(ring_gbps, 0.9 * memcpy_gbps, "%d slots: ring %.2f GB/s vs memcpy %.2f GB/s",
                      n_slots, ring_gbps, memcpy_gbps);
        offload_ring_free(ring);
        offload_device_cuda_free(&device);
    }
    free(sources);
    cudaFree(target);
    cudaFree(scratch);
    cudaFreeHost(host);
}
#endif
