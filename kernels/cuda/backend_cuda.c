/*
 * backend_cuda.c — the CUDA backend's life and memory: finding a usable
 * GPU (never aborting when there is no driver), the compute stream and
 * cuBLAS handle every op uses, device allocations, uploads/downloads
 * ordered on that stream, the device-side error flag that kernels raise
 * on bad token ids or cache places, and the op table.  Kernels live in
 * the .cu files beside this one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_backend.h"

enum {
    MIN_COMPUTE_MAJOR = 8,              /* bf16 loads and cp.async need Ampere or newer */
    /* n <= this: our matvec kernels (f32 FMAs for 1-2 tokens, tensor cores
     * for 3..16); above: cuBLAS.  See bench/RESULTS.md for the sweep. */
    DEFAULT_MATVEC_MAX_TOKENS = 16,
    /* 64 tokens x 32768 columns; (2 x 4 blocks per SM x 132 SMs) x (256 + 2) */
    PRESERVED_ACTIVATION_ELEMENTS = 64 * 32768,
    PRESERVED_PARTIAL_FLOATS = 2 * 4 * 132 * 258,
    /* the attention_out / mlp hand-off: 16 tokens x 65536 columns */
    PRESERVED_HANDOFF_ELEMENTS = 16 * 65536,
    /* a prepared norm: rows of 65536 in blocks of 16 rows */
    PRESERVED_NORM_PARTIAL_FLOATS = 65536 / 16 * CUDA_NORM_MAX_TOKENS,
    /* decode attention's per-(token, head) arrival counters (attnmerge) */
    ATTENTION_COUNTERS = 8192,
};

/* What runs fused when FERRY_CUDA_FUSE is unset, "1" or "all". */
static const unsigned DEFAULT_FUSIONS =
    CUDA_FUSE_NORM1 | CUDA_FUSE_NORM16 | CUDA_FUSE_ROPEKV | CUDA_FUSE_ATTN_MERGE |
    CUDA_FUSE_KV_PREFETCH | CUDA_FUSE_ATTN_WIDE | CUDA_FUSE_KV_EARLY | CUDA_FUSE_QKV_ROPE |
    CUDA_FUSE_SILU16 | CUDA_FUSE_HANDOFF | CUDA_FUSE_NORM_NEXT;

int ferry_cuda_available(void) {
    int count = 0;
    /* Without a driver this returns an error code; it never aborts. */
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky-free error so later calls start clean */
        return 0;
    }
    return count > 0;
}

ferry_status cuda_scratch_reserve(cuda_backend *state, void **buffer, size_t *capacity,
                                  size_t bytes) {
    if (bytes <= *capacity) return FERRY_OK;
    if (*buffer) {
        /* the old buffer may still be read by queued work */
        CUDA_TRY(cudaStreamSynchronize(state->stream));
        CUDA_TRY(cudaFree(*buffer));
        *buffer = NULL;
        *capacity = 0;
    }
    cudaError_t error = cudaMalloc(buffer, bytes);
    if (error != cudaSuccess) {
        *buffer = NULL;
        return ferry_fail(FERRY_ERR_NO_MEMORY, "cuda:%d: scratch of %zu bytes: %s", state->device,
                          bytes, cudaGetErrorString(error));
    }
    *capacity = bytes;
    state->scratch_epoch++; /* graphs recorded with the old buffer must not replay */
    return FERRY_OK;
}

ferry_status cuda_scratch_reserve_floats(cuda_backend *state, float **buffer, size_t *n_floats,
                                         size_t floats) {
    void *memory = *buffer;
    size_t capacity = *n_floats * sizeof(float);
    ferry_status status = cuda_scratch_reserve(state, &memory, &capacity, floats * sizeof(float));
    *buffer = (float *)memory;
    *n_floats = capacity / sizeof(float);
    return status;
}

/* -------------------------------------------------------------- memory */

static ferry_status cuda_alloc(ferry_backend *backend, size_t bytes, void **out) {
    cuda_backend *state = cuda_state(backend);
    *out = NULL;
    CUDA_TRY(cudaSetDevice(state->device));
    cudaError_t error = cudaMalloc(out, bytes ? bytes : 256);
    if (error != cudaSuccess) {
        *out = NULL;
        size_t free_bytes = 0, total_bytes = 0;
        cudaGetLastError();
        cudaMemGetInfo(&free_bytes, &total_bytes);
        return ferry_fail(FERRY_ERR_NO_MEMORY,
                          "cuda:%d: cannot allocate %zu bytes (%zu of %zu bytes free): %s",
                          state->device, bytes, free_bytes, total_bytes,
                          cudaGetErrorString(error));
    }
    return FERRY_OK;
}

static void cuda_free(ferry_backend *backend, void *ptr) {
    (void)backend;
    if (ptr) cudaFree(ptr);
}

/* Pinned host memory the kernels read and write in place over PCIe (a KV
 * cache larger than the GPU budget).  Portable: pinned for every context;
 * mapped: it has a device address, which on 64-bit unified addressing is
 * the host address itself; that is checked, since the ops and
 * cuda_host_mapped_free take the one pointer. */
static ferry_status cuda_host_mapped_alloc(ferry_backend *backend, size_t bytes, void **out) {
    cuda_backend *state = cuda_state(backend);
    *out = NULL;
    CUDA_TRY(cudaSetDevice(state->device));
    void *host = NULL, *device = NULL;
    cudaError_t error =
        cudaHostAlloc(&host, bytes ? bytes : 256, cudaHostAllocMapped | cudaHostAllocPortable);
    if (error != cudaSuccess) {
        cudaGetLastError();
        return ferry_fail(FERRY_ERR_NO_MEMORY,
                          "cuda:%d: cannot pin %zu bytes of host memory for the GPU to map (free "
                          "RAM, or the locked-memory limit, ulimit -l): %s",
                          state->device, bytes, cudaGetErrorString(error));
    }
    error = cudaHostGetDevicePointer(&device, host, 0);
    if (error != cudaSuccess || device != host) {
        cudaGetLastError();
        cudaFreeHost(host);
        return ferry_fail(FERRY_ERR_UNSUPPORTED,
                          "cuda:%d: %zu bytes of pinned host memory got no usable device address "
                          "(%s)",
                          state->device, bytes,
                          error != cudaSuccess ? cudaGetErrorString(error)
                                               : "it differs from the host address: no unified "
                                                 "addressing");
    }
    *out = host;
    return FERRY_OK;
}

/* Queued kernels may still read or write it: wait for them first. */
static void cuda_host_mapped_free(ferry_backend *backend, void *ptr) {
    if (!ptr) return;
    cudaStreamSynchronize(cuda_state(backend)->stream);
    cudaFreeHost(ptr);
}

/* Copies are ordered on the compute stream and waited for, so the host
 * buffer may be reused as soon as the call returns. */
static ferry_status cuda_upload(ferry_backend *backend, void *dst, const void *host_src,
                                size_t bytes) {
    cuda_backend *state = cuda_state(backend);
    if (!bytes) return FERRY_OK;
    CUDA_TRY(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, state->stream));
    CUDA_TRY(cudaStreamSynchronize(state->stream));
    return FERRY_OK;
}

static ferry_status check_error_flag(cuda_backend *state) {
    int code = 0;
    CUDA_TRY(cudaMemcpyAsync(&code, state->error_flag, sizeof code, cudaMemcpyDeviceToHost,
                             state->stream));
    CUDA_TRY(cudaStreamSynchronize(state->stream));
    if (code == 0) return FERRY_OK;
    CUDA_TRY(cudaMemsetAsync(state->error_flag, 0, sizeof(int), state->stream));
    CUDA_TRY(cudaStreamSynchronize(state->stream));
    if (code == CUDA_BAD_TOKEN)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "cuda:%d: embed: a token id is negative",
                          state->device);
    return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                      "cuda:%d: kv_store/attention: a token's slot or position is outside the "
                      "KV cache (its work was skipped)",
                      state->device);
}

static ferry_status cuda_download(ferry_backend *backend, void *host_dst, const void *src,
                                  size_t bytes) {
    cuda_backend *state = cuda_state(backend);
    if (bytes) {
        CUDA_TRY(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, state->stream));
    }
    CUDA_TRY(cudaStreamSynchronize(state->stream));
    return check_error_flag(state);
}

static ferry_status cuda_synchronize(ferry_backend *backend) {
    cuda_backend *state = cuda_state(backend);
    CUDA_TRY(cudaStreamSynchronize(state->stream));
    return check_error_flag(state);
}

static void release_state(cuda_backend *state) {
    if (!state) return;
    cudaSetDevice(state->device);
    if (state->stream) cudaStreamSynchronize(state->stream);
    if (state->cublas) cublasDestroy(state->cublas);
    if (state->error_flag) cudaFree(state->error_flag);
    if (state->activations) cudaFree(state->activations);
    if (state->handoff) cudaFree(state->handoff);
    if (state->norm_partials) cudaFree(state->norm_partials);
    if (state->norm_counter) cudaFree(state->norm_counter);
    if (state->norm_inv_rms) cudaFree(state->norm_inv_rms);
    if (state->attention_partials) cudaFree(state->attention_partials);
    if (state->attention_counters) cudaFree(state->attention_counters);
    if (state->tile_starts) cudaFree(state->tile_starts);
    if (state->stream) cudaStreamDestroy(state->stream);
    free(state->host_slots);
    free(state->host_tile_starts);
    free(state);
}

static void cuda_destroy(ferry_backend *backend) {
    if (!backend) return;
    release_state(backend->impl);
    free(backend);
}

/* ------------------------------------------------------ measurement */

/* Device-to-device copy bandwidth, counting bytes read plus written,
 * median-free but warmed up: best of 5 copies of `bytes`. */
static ferry_status cuda_copy_bandwidth(ferry_backend *backend, size_t bytes, double *out_gbps) {
    cuda_backend *state = cuda_state(backend);
    ferry_status status = FERRY_OK;
    void *source = NULL, *target = NULL;
    cudaEvent_t start = NULL, stop = NULL;
    double best_ms = 1e30;
    *out_gbps = 0;
    FERRY_TRY_GOTO(cuda_alloc(backend, bytes, &source));
    FERRY_TRY_GOTO(cuda_alloc(backend, bytes, &target));
    if (cudaMemsetAsync(source, 1, bytes, state->stream) != cudaSuccess ||
        cudaEventCreate(&start) != cudaSuccess || cudaEventCreate(&stop) != cudaSuccess) {
        status = ferry_fail(FERRY_ERR_BACKEND, "cuda: copy bandwidth: setup failed");
        goto fail;
    }
    for (int i = 0; i < 7; i++) {
        float ms = 0;
        if (cudaEventRecord(start, state->stream) != cudaSuccess ||
            cudaMemcpyAsync(target, source, bytes, cudaMemcpyDeviceToDevice, state->stream) !=
                cudaSuccess ||
            cudaEventRecord(stop, state->stream) != cudaSuccess ||
            cudaEventSynchronize(stop) != cudaSuccess ||
            cudaEventElapsedTime(&ms, start, stop) != cudaSuccess) {
            status = ferry_fail(FERRY_ERR_BACKEND, "cuda: copy bandwidth: a timed copy failed");
            goto fail;
        }
        if (i >= 2 && ms < best_ms) best_ms = ms; /* two warm-up copies */
    }
    *out_gbps = 2.0 * (double)bytes / (best_ms * 1e-3) / 1e9;
fail:
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
    cuda_free(backend, source);
    cuda_free(backend, target);
    return status;
}

static ferry_status cuda_memory_info(ferry_backend *backend, size_t *used_bytes,
                                     size_t *total_bytes) {
    size_t free_bytes = 0;
    CUDA_TRY(cudaSetDevice(cuda_state(backend)->device));
    CUDA_TRY(cudaMemGetInfo(&free_bytes, total_bytes));
    *used_bytes = *total_bytes - free_bytes;
    return FERRY_OK;
}

/* offload/'s slot ring orders its copy events with the ops on this stream. */
static void *cuda_compute_stream(ferry_backend *backend) {
    return (void *)cuda_state(backend)->stream;
}

static const ferry_backend_ops cuda_ops = {
    .name = "cuda",
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .synchronize = cuda_synchronize,
    .destroy = cuda_destroy,
    .embed = cuda_embed,
    .rmsnorm = cuda_rmsnorm,
    .matmul = cuda_matmul,
    .rope = cuda_rope,
    .kv_store = cuda_kv_store,
    .attention = cuda_attention,
    .silu_mul = cuda_silu_mul,
    .kv_dtype = FERRY_DTYPE_F16,
    .copy_bandwidth = cuda_copy_bandwidth,
    .memory_info = cuda_memory_info,
    .host_mapped_alloc = cuda_host_mapped_alloc,
    .host_mapped_free = cuda_host_mapped_free,
    .compute_stream = cuda_compute_stream,
    .graph_begin = cuda_graph_begin,
    .graph_end = cuda_graph_end,
    .graph_launch = cuda_graph_launch,
    .graph_free = cuda_graph_free,
    .matmul_multi = cuda_matmul_multi,
    .rope_kv_store = cuda_rope_kv_store,
    .qkv_rope_store = cuda_qkv_rope_store,
    .sample = cuda_sample,
    .attention_out = cuda_attention_out,
    .mlp = cuda_mlp,
};

/* ------------------------------------------------------------ creation */

static ferry_status open_device(int device, cuda_backend *state) {
    int count = 0;
    cudaError_t error = cudaGetDeviceCount(&count);
    if (error != cudaSuccess) {
        cudaGetLastError();
        return ferry_fail(FERRY_ERR_UNAVAILABLE,
                          "backend 'cuda': no usable CUDA driver or GPU (%s); use --backend cpu",
                          cudaGetErrorString(error));
    }
    if (device < 0 || device >= count)
        return ferry_fail(FERRY_ERR_UNAVAILABLE,
                          "backend 'cuda:%d': no such GPU (this machine has %d)", device, count);
    struct cudaDeviceProp properties;
    CUDA_TRY(cudaGetDeviceProperties(&properties, device));
    if (properties.major < MIN_COMPUTE_MAJOR)
        return ferry_fail(FERRY_ERR_UNSUPPORTED,
                          "backend 'cuda:%d': %s has compute capability %d.%d; ferry's kernels "
                          "need %d.0 or newer (use --backend cpu)",
                          device, properties.name, properties.major, properties.minor,
                          MIN_COMPUTE_MAJOR);
    state->n_multiprocessors = properties.multiProcessorCount;
    /* Programmatic dependent launch needs Hopper (9.0); FERRY_CUDA_PDL=0
     * turns it off, to measure what it gives. */
    const char *pdl = getenv("FERRY_CUDA_PDL");
    state->pdl = properties.major >= 9 && !(pdl && strcmp(pdl, "0") == 0);
    CUDA_TRY(cudaSetDevice(device));
    CUDA_TRY(cudaStreamCreateWithFlags(&state->stream, cudaStreamNonBlocking));
    CUBLAS_TRY(cublasCreate(&state->cublas));
    CUBLAS_TRY(cublasSetStream(state->cublas, state->stream));
    CUDA_TRY(cudaMalloc((void **)&state->error_flag, sizeof(int)));
    CUDA_TRY(cudaMemsetAsync(state->error_flag, 0, sizeof(int), state->stream));
    CUDA_TRY(cudaStreamSynchronize(state->stream));
    /* Scratch for every decode-sized call up front, so a recorded decode
     * step (graph) never sees a scratch buffer move. */
    FERRY_TRY(cuda_scratch_reserve(state, &state->activations, &state->activations_bytes,
                                   (size_t)PRESERVED_ACTIVATION_ELEMENTS * 2));
    FERRY_TRY(cuda_scratch_reserve(state, &state->handoff, &state->handoff_bytes,
                                   (size_t)PRESERVED_HANDOFF_ELEMENTS * 2));
    FERRY_TRY(cuda_scratch_reserve_floats(state, &state->attention_partials,
                                          &state->attention_partials_floats,
                                          PRESERVED_PARTIAL_FLOATS));
    FERRY_TRY(cuda_scratch_reserve_floats(state, &state->norm_partials,
                                          &state->norm_partials_floats,
                                          PRESERVED_NORM_PARTIAL_FLOATS));
    CUDA_TRY(cudaMalloc((void **)&state->norm_inv_rms, CUDA_NORM_MAX_TOKENS * sizeof(float)));
    CUDA_TRY(cudaMalloc((void **)&state->norm_counter, sizeof(unsigned)));
    CUDA_TRY(cudaMemsetAsync(state->norm_counter, 0, sizeof(unsigned), state->stream));
    /* zero once; the block that uses a counter leaves it zero again */
    CUDA_TRY(cudaMalloc((void **)&state->attention_counters,
                        ATTENTION_COUNTERS * sizeof(unsigned)));
    CUDA_TRY(cudaMemsetAsync(state->attention_counters, 0, ATTENTION_COUNTERS * sizeof(unsigned),
                             state->stream));
    CUDA_TRY(cudaStreamSynchronize(state->stream));
    state->n_attention_counters = ATTENTION_COUNTERS;
    return FERRY_OK;
}

/* FERRY_CUDA_FUSE: unset = the default set; "0" or "none": every fusion
 * off; "1" or "all": the default set; else a comma list of names from
 * the table (e.g. "norm1,ropekv"), to measure each fusion alone. */
static const struct {
    const char *name;
    unsigned bits;
} fusion_names[] = {
    {"norm1", CUDA_FUSE_NORM1},   {"norm1warp", CUDA_FUSE_NORM1_WARP},
    {"norm16", CUDA_FUSE_NORM16}, {"ropekv", CUDA_FUSE_ROPEKV},
    {"attnmerge", CUDA_FUSE_ATTN_MERGE}, {"kvprefetch", CUDA_FUSE_KV_PREFETCH},
    {"attn8", CUDA_FUSE_ATTN_WIDE},     {"kvearly", CUDA_FUSE_KV_EARLY},
    {"qkvrope", CUDA_FUSE_QKV_ROPE},    {"silu16", CUDA_FUSE_SILU16},
    {"handoff", CUDA_FUSE_HANDOFF},     {"normnext", CUDA_FUSE_NORM_NEXT},
};

static ferry_status parse_fusions(const char *text, unsigned *out_bits) {
    *out_bits = DEFAULT_FUSIONS;
    if (!text || strcmp(text, "1") == 0 || strcmp(text, "all") == 0) return FERRY_OK;
    *out_bits = 0;
    if (strcmp(text, "0") == 0 || strcmp(text, "none") == 0) return FERRY_OK;
    for (const char *item = text; *item;) {
        size_t length = strcspn(item, ",");
        size_t i = 0, n_names = sizeof fusion_names / sizeof fusion_names[0];
        while (i < n_names && !(strlen(fusion_names[i].name) == length &&
                                strncmp(fusion_names[i].name, item, length) == 0))
            i++;
        if (i == n_names)
            return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                              "FERRY_CUDA_FUSE='%s': unknown fusion '%.*s' (expected 0, 1, or a "
                              "comma list of norm1, norm1warp, norm16, ropekv, attnmerge, kvprefetch, "
                              "attn8, kvearly, qkvrope, silu16, handoff, normnext)",
                              text, (int)length, item);
        *out_bits |= fusion_names[i].bits;
        item += length;
        if (*item == ',') item++;
    }
    return FERRY_OK;
}

/* FERRY_CUDA_DECODE_ATTN=rows|lanes: the decode attention kernel (rows,
 * the default; lanes, the older one key per lane) and
 * FERRY_CUDA_ATTN_SPLITS=N: its splits of the context (unset or 0: chosen
 * per shape), to measure one choice against another (attention.cu). */
static ferry_status parse_decode_attention(cuda_backend *state) {
    const char *kernel = getenv("FERRY_CUDA_DECODE_ATTN");
    if (kernel && *kernel) {
        state->decode_lanes = strcmp(kernel, "lanes") == 0;
        if (!state->decode_lanes && strcmp(kernel, "rows") != 0)
            return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                              "FERRY_CUDA_DECODE_ATTN='%s' (expected rows or lanes)", kernel);
    }
    const char *splits = getenv("FERRY_CUDA_ATTN_SPLITS");
    if (splits && *splits) {
        char *end = NULL;
        long n = strtol(splits, &end, 10);
        if (*end != '\0' || n < 0 || n > 4096)
            return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                              "FERRY_CUDA_ATTN_SPLITS='%s' (expected 0..4096; 0: chosen per shape)",
                              splits);
        state->attention_splits = (int)n;
    }
    return FERRY_OK;
}

ferry_status ferry_backend_cuda_new(int device, ferry_backend **out) {
    *out = NULL;
    ferry_backend *backend = NULL;
    cuda_backend *state = NULL;
    ferry_status status;
    FERRY_TRY_GOTO(ferry_calloc(1, sizeof *backend, "cuda backend", (void **)&backend));
    FERRY_TRY_GOTO(ferry_calloc(1, sizeof *state, "cuda backend", (void **)&state));
    state->device = device;
    state->matvec_max_tokens = DEFAULT_MATVEC_MAX_TOKENS;
    /* FERRY_CUDA_MATVEC_MAX overrides the switch point (for measuring it). */
    const char *matvec_max = getenv("FERRY_CUDA_MATVEC_MAX");
    if (matvec_max && *matvec_max) state->matvec_max_tokens = atoi(matvec_max);
    /* FERRY_CUDA_PREFILL_ATTN=simt keeps the older SIMT prefill attention
     * (for comparing it with the tensor-core kernel, the default "flash"). */
    const char *prefill_kernel = getenv("FERRY_CUDA_PREFILL_ATTN");
    if (prefill_kernel && *prefill_kernel) {
        state->prefill_simt = strcmp(prefill_kernel, "simt") == 0;
        if (!state->prefill_simt && strcmp(prefill_kernel, "flash") != 0) {
            status = ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                                "FERRY_CUDA_PREFILL_ATTN='%s' (expected flash or simt)",
                                prefill_kernel);
            goto fail;
        }
    }
    FERRY_TRY_GOTO(parse_fusions(getenv("FERRY_CUDA_FUSE"), &state->fuse));
    FERRY_TRY_GOTO(parse_decode_attention(state));
    FERRY_TRY_GOTO(open_device(device, state));
    backend->ops = &cuda_ops;
    backend->impl = state;
    snprintf(backend->label, sizeof backend->label, "cuda:%d", device);
    *out = backend;
    return FERRY_OK;
fail:
    release_state(state);
    free(backend);
    return status;
}
