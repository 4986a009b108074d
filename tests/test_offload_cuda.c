/*
 * test_offload_cuda.c — the slot ring on a real GPU (skips without one):
 * layers from pinned DRAM and from a file pass through CUDA slots with
 * their bytes intact, and the ring keeps the host->GPU link near the
 * bandwidth a plain pinned cudaMemcpy reaches in the same run (printed, so
 * bench/RESULTS.md can quote it); a model streamed on the CUDA backend
 * gives logits bit-identical to the all-resident run.
 * FERRY_OFFLOAD_BENCH_LAYERS and FERRY_OFFLOAD_BENCH_LAYER_MIB size the
 * bandwidth run (default 8 x 256).  FERRY_OFFLOAD_BENCH_MODEL=file.ferry
 * runs the streamed decode benchmark (prompt 128, 8 new tokens, tokens/s
 * counted as batch x 7 / decode time) for FERRY_OFFLOAD_BENCH_BATCHES
 * (default 1,64,256) with FERRY_OFFLOAD_BENCH_RESIDENT layers resident
 * (default 0) or under FERRY_OFFLOAD_BENCH_GPU_MEM (e.g. 4G, auto plan),
 * with FERRY_OFFLOAD_BENCH_HOST_MEM of DRAM (default: no limit); it prints
 * where each batch's KV cache lived and the GPU memory in use.  A KV cache
 * the GPU budget cannot hold lives in pinned host memory and gives logits
 * bit-identical to the resident run, without taking device memory.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "helpers.h"
#include "offload/offload.h"
#include "runtime/engine.h"

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

/* ------------------------------------------- the runtime on the CUDA backend */

enum { TINY_VOCAB_MAX = 1 << 16 };

/* Logits of a 2-sequence prompt then one decode step. */
static void run_tiny(ferry_model *model, float *logits, size_t capacity) {
    static const int32_t prompt[] = {1, 5, 9, 33, 7, 1, 40, 41};
    static const int n_tokens[2] = {5, 3};
    static const int32_t next[2] = {11, 12};
    static const int one[2] = {1, 1};
    ferry_model_info info;
    ferry_model_get_info(model, &info);
    size_t vocab = (size_t)info.vocab_size;
    cr_assert_leq(10 * vocab, capacity);
    for (size_t i = 0; i < 10 * vocab; i++) logits[i] = NAN;
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, 2, 16, &session), FERRY_OK, "%s", ferry_last_error());
    ferry_batch batch = {2, NULL, n_tokens, prompt};
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_ALL, logits, 8 * vocab), FERRY_OK,
                 "%s", ferry_last_error());
    ferry_batch step = {2, NULL, one, next};
    cr_assert_eq(ferry_forward(session, &step, FERRY_LOGITS_LAST, logits + 8 * vocab, 2 * vocab),
                 FERRY_OK, "%s", ferry_last_error());
    ferry_session_free(session);
}

Test(offload_cuda, streamed_logits_on_the_gpu_are_bit_identical_to_all_resident, .timeout = 120) {
    if (!gpu_present()) cr_skip("no GPU");
    char *dir = test_tempdir();
    char *path = test_path(dir, "tiny.ferry");
    char command[1024];
    snprintf(command, sizeof command, "%s synth --preset tiny %s", test_cli(), path);
    cr_assert_eq(test_run(command, NULL, NULL), 0, "ferry synth failed");
    size_t capacity = 10 * (size_t)TINY_VOCAB_MAX;
    float *resident = malloc(capacity * sizeof(float)), *streamed = malloc(capacity * sizeof(float));
    ferry_model_options options = {0};
    options.backend = "cuda";
    ferry_model *model = NULL;
    cr_assert_eq(ferry_model_open(path, &options, &model), FERRY_OK, "%s", ferry_last_error());
    run_tiny(model, resident, capacity);
    ferry_model_info info;
    ferry_model_get_info(model, &info);
    ferry_model_close(model);
    /* every layer from DRAM; then every layer from the file (staging only) */
    uint64_t host_budgets[] = {0, 1};
    for (int mix = 0; mix < 2; mix++) {
        options.streaming = 1;
        options.resident_layers = 0;
        options.host_mem_bytes = host_budgets[mix];
        if (mix == 1) {
            /* one slot, and DRAM for its staging buffer only (the tiny
             * model has 2 layers: two buffers would hold them all) */
            ferry_model_options probe = options;
            probe.host_mem_bytes = 0;
            cr_assert_eq(ferry_model_open(path, &probe, &model), FERRY_OK, "%s", ferry_last_error());
            options.host_mem_bytes = offload_stream_plan(model->stream)->slot_bytes;
            options.slots = 1;
            ferry_model_close(model);
        }
        cr_assert_eq(ferry_model_open(path, &options, &model), FERRY_OK, "%s", ferry_last_error());
        const offload_plan *plan = offload_stream_plan(model->stream);
        cr_assert_eq(mix == 0 ? plan->n_host : plan->n_disk, info.n_layers, "mix %d: %d in DRAM, %d on NVMe",
                     mix, plan->n_host, plan->n_disk);
        run_tiny(model, streamed, capacity);
        for (size_t i = 0; i < 10 * (size_t)info.vocab_size; i++)
            cr_assert(memcmp(&resident[i], &streamed[i], sizeof(float)) == 0,
                      "mix %d: logit %zu is %.9g streamed, %.9g resident", mix, i, streamed[i],
                      resident[i]);
        ferry_model_close(model);
    }
    /* The same weights generated in memory (synth:tiny is what ferry synth
     * --preset tiny wrote), every layer in DRAM; with no profile (an empty
     * XDG_CACHE_HOME) the link and device memory figures are probed. */
    setenv("XDG_CACHE_HOME", dir, 1);
    options.host_mem_bytes = 0;
    options.slots = 0;
    cr_assert_eq(ferry_model_open("synth:tiny", &options, &model), FERRY_OK, "%s",
                 ferry_last_error());
    unsetenv("XDG_CACHE_HOME");
    const offload_plan *plan = offload_stream_plan(model->stream);
    cr_assert_eq(plan->n_host, info.n_layers);
    cr_assert_eq(plan->bandwidths_from.host_to_gpu, OFFLOAD_FROM_PROBE);
    cr_assert_eq(plan->bandwidths_from.gpu_memory, OFFLOAD_FROM_PROBE);
    cr_assert_gt(plan->bandwidths.host_to_gpu_gbps, 0.5);
    cr_assert_gt(plan->bandwidths.gpu_memory_gbps, 10);
    printf("probed: host->gpu %.1f GB/s, gpu memory %.0f GB/s\n", plan->bandwidths.host_to_gpu_gbps,
           plan->bandwidths.gpu_memory_gbps);
    run_tiny(model, streamed, capacity);
    for (size_t i = 0; i < 10 * (size_t)info.vocab_size; i++)
        cr_assert(memcmp(&resident[i], &streamed[i], sizeof(float)) == 0,
                  "synth:tiny: logit %zu is %.9g, the file's %.9g resident", i, streamed[i],
                  resident[i]);
    ferry_model_close(model);
    free(resident);
    free(streamed);
    test_rmtree(dir);
    free(path);
    free(dir);
}

/* Device memory in use on this GPU (every process), in bytes. */
static uint64_t gpu_used_bytes(void) {
    size_t free_bytes = 0, total_bytes = 0;
    cr_assert_eq(cudaMemGetInfo(&free_bytes, &total_bytes), cudaSuccess);
    return (uint64_t)(total_bytes - free_bytes);
}

enum { HOST_KV_BATCH = 4, HOST_KV_CONTEXT = 2048, HOST_KV_STEPS = 3 };

/* A ragged prompt batch of HOST_KV_BATCH sequences (every position's
 * logits), then HOST_KV_STEPS decode steps (each sequence's last), into
 * logits; the session is made first, and *kv_device_bytes gets the device
 * memory its creation took and *kv_in_host_memory where its KV lived. */
static size_t run_batch4(ferry_model *model, float *logits, size_t capacity,
                         uint64_t *session_device_bytes, int *kv_in_host_memory) {
    static const int n_tokens[HOST_KV_BATCH] = {5, 3, 7, 2};
    static const int32_t prompt[17] = {1, 5, 9, 33, 7, 1, 40, 41, 1, 2, 3, 4, 5, 6, 7, 1, 80};
    static const int one[HOST_KV_BATCH] = {1, 1, 1, 1};
    ferry_model_info info;
    ferry_model_get_info(model, &info);
    const size_t vocab = (size_t)info.vocab_size;
    size_t rows = 17 + (size_t)HOST_KV_STEPS * HOST_KV_BATCH;
    cr_assert_leq(rows * vocab, capacity);
    for (size_t i = 0; i < rows * vocab; i++) logits[i] = NAN;
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    uint64_t before = gpu_used_bytes();
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, HOST_KV_BATCH, HOST_KV_CONTEXT, &session), FERRY_OK,
                 "%s", ferry_last_error());
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    uint64_t after = gpu_used_bytes();
    *session_device_bytes = after > before ? after - before : 0;
    *kv_in_host_memory = session->kv_in_host_memory;
    /* Where the driver says each cache is: pinned host memory, or device. */
    for (int layer = 0; layer < info.n_layers; layer++) {
        void *arrays[2] = {session->kv[layer].k, session->kv[layer].v};
        for (int i = 0; i < 2; i++) {
            struct cudaPointerAttributes attributes;
            cr_assert_eq(cudaPointerGetAttributes(&attributes, arrays[i]), cudaSuccess);
            cr_assert_eq(attributes.type,
                         session->kv_in_host_memory ? cudaMemoryTypeHost : cudaMemoryTypeDevice,
                         "layer %d %s: memory type %d", layer, i ? "V" : "K",
                         (int)attributes.type);
        }
    }
    ferry_batch batch = {HOST_KV_BATCH, NULL, n_tokens, prompt};
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_ALL, logits, 17 * vocab), FERRY_OK,
                 "%s", ferry_last_error());
    for (int step = 0; step < HOST_KV_STEPS; step++) {
        int32_t next[HOST_KV_BATCH];
        for (int i = 0; i < HOST_KV_BATCH; i++) next[i] = (int32_t)(10 + 7 * step + i);
        ferry_batch decode = {HOST_KV_BATCH, NULL, one, next};
        float *out = logits + (17 + (size_t)step * HOST_KV_BATCH) * vocab;
        cr_assert_eq(ferry_forward(session, &decode, FERRY_LOGITS_LAST, out,
                                   HOST_KV_BATCH * vocab),
                     FERRY_OK, "%s", ferry_last_error());
    }
    ferry_session_free(session);
    return rows * vocab;
}

/* A run of tiny64.ferry (64 layers of the tiny shape: K+V is 128 B per
 * token and layer in f16, so 4 x 2048 tokens hold 64 MiB of KV cache,
 * well above the device allocator's granularity) all resident, and the
 * model opened again with every layer streamed and a GPU budget half a KV
 * cache short of the plan without one, so the plan puts the KV cache in
 * DRAM. */
typedef struct host_kv_fixture {
    char *dir, *path;
    float *resident, *streamed;
    size_t capacity, n;         /* floats each holds; logits a run writes */
    uint64_t resident_session_bytes, kv_bytes;
    ferry_model *model;         /* the streamed one */
} host_kv_fixture;

static void host_kv_begin(host_kv_fixture *f, int expect_attention_on_host) {
    memset(f, 0, sizeof *f);
    f->dir = test_tempdir();
    f->path = test_path(f->dir, "tiny64.ferry");
    f->capacity = 64 * (size_t)TINY_VOCAB_MAX;
    f->resident = malloc(f->capacity * sizeof(float));
    f->streamed = malloc(f->capacity * sizeof(float));
    char command[1024];
    snprintf(command, sizeof command, "%s synth --preset tiny --layers 64 %s", test_cli(),
             f->path);
    cr_assert_eq(test_run(command, NULL, NULL), 0, "ferry synth failed");
    ferry_model_options options = {0};
    options.backend = "cuda";
    ferry_model *model = NULL;
    cr_assert_eq(ferry_model_open(f->path, &options, &model), FERRY_OK, "%s", ferry_last_error());
    int kv_in_host = -1;
    f->n = run_batch4(model, f->resident, f->capacity, &f->resident_session_bytes, &kv_in_host);
    cr_assert_eq(kv_in_host, 0);
    ferry_model_close(model);

    options.streaming = 1;
    options.resident_layers = 0;
    options.stream_batch = HOST_KV_BATCH;
    options.stream_context = HOST_KV_CONTEXT;
    cr_assert_eq(ferry_model_open(f->path, &options, &model), FERRY_OK, "%s", ferry_last_error());
    const offload_plan *plan = offload_stream_plan(model->stream);
    cr_assert_eq(plan->kv_tier, OFFLOAD_TIER_GPU);
    f->kv_bytes = plan->gpu_kv_bytes;
    uint64_t unlimited_gpu_bytes = plan->gpu_total_bytes;
    cr_assert_eq(f->kv_bytes, (uint64_t)HOST_KV_BATCH * HOST_KV_CONTEXT * 64 * 128);
    ferry_model_close(model);
    options.gpu_mem_bytes = unlimited_gpu_bytes - f->kv_bytes / 2;
    cr_assert_eq(ferry_model_open(f->path, &options, &f->model), FERRY_OK, "%s",
                 ferry_last_error());
    plan = offload_stream_plan(f->model->stream);
    cr_assert_eq(plan->kv_tier, OFFLOAD_TIER_HOST);
    cr_assert_eq(plan->host_kv_bytes, f->kv_bytes);
    cr_assert_eq(plan->attention_on_host, expect_attention_on_host);
}

static void host_kv_end(host_kv_fixture *f) {
    ferry_model_close(f->model);
    free(f->resident);
    free(f->streamed);
    test_rmtree(f->dir);
    free(f->path);
    free(f->dir);
}

Test(offload_cuda, a_kv_cache_in_pinned_host_memory_gives_logits_bit_identical_to_resident,
     .timeout = 300) {
    if (!gpu_present()) cr_skip("no GPU");
    /* the GPU's attention kernels read the cache over the link */
    setenv("FERRY_ATTENTION", "device", 1);
    host_kv_fixture f;
    host_kv_begin(&f, 0);
    uint64_t streamed_session_bytes = 0;
    int kv_in_host = -1;
    cr_assert_eq(run_batch4(f.model, f.streamed, f.capacity, &streamed_session_bytes, &kv_in_host),
                 f.n);
    cr_assert_eq(kv_in_host, 1, "the plan put the KV cache in host memory");
    printf("host kv: session creation took %.1f MiB of device memory with the KV cache on the "
           "GPU, %.1f MiB with it in pinned host memory (KV cache %.1f MiB)\n",
           f.resident_session_bytes / 1048576.0, streamed_session_bytes / 1048576.0,
           f.kv_bytes / 1048576.0);
    fflush(stdout);
    cr_assert_geq(f.resident_session_bytes, f.kv_bytes,
                  "the GPU-resident KV cache took device memory");
    cr_assert_lt(streamed_session_bytes, f.kv_bytes / 4,
                 "a host KV cache took %llu bytes of device memory",
                 (unsigned long long)streamed_session_bytes);
    for (size_t i = 0; i < f.n; i++)
        cr_assert(memcmp(&f.resident[i], &f.streamed[i], sizeof(float)) == 0,
                  "logit %zu is %.9g with the KV cache in host memory, %.9g resident", i,
                  f.streamed[i], f.resident[i]);
    host_kv_end(&f);
}

/* The largest logit of a row: the greedy token. */
static size_t greedy_token(const float *row, size_t vocab) {
    size_t best = 0;
    for (size_t i = 1; i < vocab; i++)
        if (row[i] > row[best]) best = i;
    return best;
}

Test(offload_cuda, a_host_kv_cache_attended_on_the_host_matches_resident_within_2e_3,
     .timeout = 300) {
    if (!gpu_present()) cr_skip("no GPU");
    unsetenv("FERRY_ATTENTION"); /* auto: on the host, as the cache is in DRAM */
    host_kv_fixture f;
    host_kv_begin(&f, 1);
    uint64_t streamed_session_bytes = 0;
    int kv_in_host = -1;
    cr_assert_eq(run_batch4(f.model, f.streamed, f.capacity, &streamed_session_bytes, &kv_in_host),
                 f.n);
    cr_assert_eq(kv_in_host, 1);
    /* The same f16 cache values, read by the GPU or the host: only the
     * order of float sums differs. */
    ferry_model_info info;
    ferry_model_get_info(f.model, &info);
    const size_t vocab = (size_t)info.vocab_size;
    double largest = 0, worst = 0;
    for (size_t i = 0; i < f.n; i++) {
        cr_assert(isfinite(f.streamed[i]), "logit %zu is %g", i, f.streamed[i]);
        if (fabs(f.resident[i]) > largest) largest = fabs(f.resident[i]);
    }
    for (size_t i = 0; i < f.n; i++) {
        double error = fabs((double)f.streamed[i] - f.resident[i]) / largest;
        if (error > worst) worst = error;
        cr_assert(error <= 2e-3, "logit %zu is %.9g attended on the host, %.9g resident", i,
                  f.streamed[i], f.resident[i]);
    }
    for (size_t row = 0; row < f.n / vocab; row++)
        cr_assert_eq(greedy_token(f.streamed + row * vocab, vocab),
                     greedy_token(f.resident + row * vocab, vocab),
                     "row %zu: another greedy token", row);
    printf("host attention: largest logit difference %.3g of the largest logit\n", worst);
    fflush(stdout);
    host_kv_end(&f);
}

/* FlexGen's count: batch x (new tokens - 1) / decode time. */
Test(offload_cuda, streamed_decode_benchmark, .timeout = 1800) {
    const char *path = getenv("FERRY_OFFLOAD_BENCH_MODEL");
    if (!path || !*path) cr_skip("set FERRY_OFFLOAD_BENCH_MODEL to run the decode benchmark");
    if (!gpu_present()) cr_skip("no GPU");
    const char *batches_text = getenv("FERRY_OFFLOAD_BENCH_BATCHES");
    if (!batches_text || !*batches_text) batches_text = "1,64,256";
    int batches[16], n_batches = 0, max_batch = 1;
    for (const char *p = batches_text; *p && n_batches < 16;) {
        batches[n_batches] = (int)strtol(p, (char **)&p, 10);
        if (batches[n_batches] > max_batch) max_batch = batches[n_batches];
        n_batches++;
        if (*p == ',') p++;
    }
    enum { PROMPT = 128, NEW_TOKENS = 8 };
    ferry_model_options options = {0};
    options.backend = "cuda";
    options.streaming = 1;
    options.resident_layers = (int)env_long("FERRY_OFFLOAD_BENCH_RESIDENT", 0);
    const char *gpu_mem = getenv("FERRY_OFFLOAD_BENCH_GPU_MEM");
    if (gpu_mem && *gpu_mem) {
        cr_assert_eq(ferry_parse_size(gpu_mem, &options.gpu_mem_bytes), FERRY_OK);
        options.resident_layers = -1;
    }
    const char *host_mem = getenv("FERRY_OFFLOAD_BENCH_HOST_MEM");
    if (host_mem && *host_mem)
        cr_assert_eq(ferry_parse_size(host_mem, &options.host_mem_bytes), FERRY_OK);
    options.stream_batch = max_batch;
    options.stream_context = PROMPT + NEW_TOKENS;
    uint64_t open_ns = ferry_now_ns();
    ferry_model *model = NULL;
    cr_assert_eq(ferry_model_open(path, &options, &model), FERRY_OK, "%s", ferry_last_error());
    printf("bench: opened %s in %.1f s\n", path, (double)(ferry_now_ns() - open_ns) * 1e-9);
    ferry_model_info info;
    ferry_model_get_info(model, &info);
    const size_t vocab = (size_t)info.vocab_size;
    float *logits = malloc((size_t)max_batch * vocab * sizeof(float));
    int32_t *tokens = malloc((size_t)max_batch * PROMPT * sizeof(int32_t));
    int *n_tokens = malloc((size_t)max_batch * sizeof(int));
    uint64_t state = 12345;
    for (int i = 0; i < max_batch * PROMPT; i++)
        tokens[i] = (int32_t)(3 + test_rand_u64(&state) % (uint64_t)(info.vocab_size - 3));
    for (int b = 0; b < n_batches; b++) {
        int batch = batches[b];
        ferry_session *session = NULL;
        cr_assert_eq(ferry_session_new(model, batch, PROMPT + NEW_TOKENS, &session), FERRY_OK, "%s",
                     ferry_last_error());
        for (int i = 0; i < batch; i++) n_tokens[i] = PROMPT;
        ferry_batch prompt = {batch, NULL, n_tokens, tokens};
        offload_ring_stats before = offload_stream_stats(model->stream);
        uint64_t start_ns = ferry_now_ns();
        cr_assert_eq(ferry_forward(session, &prompt, FERRY_LOGITS_LAST, logits, batch * vocab),
                     FERRY_OK, "%s", ferry_last_error());
        uint64_t prefill_ns = ferry_now_ns() - start_ns;
        for (int i = 0; i < batch; i++) n_tokens[i] = 1;
        offload_ring_stats mid = offload_stream_stats(model->stream);
        start_ns = ferry_now_ns();
        for (int step = 1; step < NEW_TOKENS; step++) {
            ferry_batch next = {batch, NULL, n_tokens, tokens + (size_t)step * batch};
            cr_assert_eq(ferry_forward(session, &next, FERRY_LOGITS_LAST, logits, batch * vocab),
                         FERRY_OK, "%s", ferry_last_error());
        }
        double decode_s = (double)(ferry_now_ns() - start_ns) * 1e-9;
        offload_ring_stats after = offload_stream_stats(model->stream);
        double copied_gb = (double)(after.bytes_copied - mid.bytes_copied) * 1e-9;
        printf("bench: batch %d: prefill %.2f s (%llu layer passes), decode %.3f s for %d steps: "
               "%.2f tokens/s, %.2f GB/s host->gpu during decode (weight copies; KV cache in %s"
               "), GPU memory in use %.2f GiB\n",
               batch, (double)prefill_ns * 1e-9,
               (unsigned long long)(mid.steps - before.steps), decode_s, NEW_TOKENS - 1,
               (double)batch * (NEW_TOKENS - 1) / decode_s, copied_gb / decode_s,
               !session->kv_in_host_memory  ? "GPU memory"
               : session->attention_on_host ? "pinned host memory, attention on the host"
                                            : "pinned host memory, read over the link",
               (double)gpu_used_bytes() / (double)(1ull << 30));
        fflush(stdout);
        ferry_session_free(session);
    }
    char report[8192];
    ferry_model_stream_report(model, report, sizeof report);
    printf("%s", report);
    free(logits);
    free(tokens);
    free(n_tokens);
    ferry_model_close(model);
}
#endif
