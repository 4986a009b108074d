/*
 * backend_cpu.c — the CPU backend's memory (aligned host allocations;
 * upload and download are memcpy) and the op table
 * that ties it together.  The ops live in dense.c and attention.c, the
 * inner loops in vector.c.  Every op runs synchronously, so synchronize() has nothing
 * to wait for.
 */
#include <stdio.h>
#include <stdlib.h>

#include "kernels/cpu/cpu.h"

enum { CPU_ALIGN_BYTES = 64 };

/* -------------------------------------------------------------- memory */

static ferry_status cpu_alloc(ferry_backend *backend, size_t bytes, void **out) {
    (void)backend;
    /* Round up so the allocation is a whole number of alignment units
     * (0 bytes gets one unit: ferry_aligned_alloc sees to that). */
    if (bytes > SIZE_MAX - CPU_ALIGN_BYTES)
        return ferry_fail(FERRY_ERR_NO_MEMORY, "cpu backend buffer of %zu bytes is too large",
                          bytes);
    size_t rounded = (bytes + CPU_ALIGN_BYTES - 1) / CPU_ALIGN_BYTES * CPU_ALIGN_BYTES;
    return ferry_aligned_alloc(CPU_ALIGN_BYTES, rounded, "cpu backend buffer", out);
}

static void cpu_free(ferry_backend *backend, void *ptr) {
    (void)backend;
    free(ptr);
}

static ferry_status cpu_upload(ferry_backend *backend, void *dst, const void *host_src,
                               size_t bytes) {
    (void)backend;
    if (bytes) memcpy(dst, host_src, bytes);
    return FERRY_OK;
}

static ferry_status cpu_download(ferry_backend *backend, void *host_dst, const void *src,
                                 size_t bytes) {
    (void)backend;
    if (bytes) memcpy(host_dst, src, bytes);
    return FERRY_OK;
}

static ferry_status cpu_synchronize(ferry_backend *backend) {
    (void)backend;
    return FERRY_OK;
}

static void cpu_destroy(ferry_backend *backend) {
    if (!backend) return;
    cpu_backend *state = backend->impl;
    if (state) cpu_pool_free(state->pool);
    free(state);
    free(backend);
}

static const ferry_backend_ops cpu_ops = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .synchronize = cpu_synchronize,
    .destroy = cpu_destroy,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .matmul = cpu_matmul,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .silu_mul = cpu_silu_mul,
    .kv_dtype = FERRY_DTYPE_F32,
};

ferry_status ferry_backend_cpu_new(int n_threads, ferry_backend **out) {
    *out = NULL;
    ferry_backend *backend = NULL;
    cpu_backend *state = NULL;
    ferry_status status;
    cpu_init_tables();
    FERRY_TRY_GOTO(ferry_calloc(1, sizeof *backend, "cpu backend", (void **)&backend));
    FERRY_TRY_GOTO(ferry_calloc(1, sizeof *state, "cpu backend", (void **)&state));
    FERRY_TRY_GOTO(cpu_pool_new(n_threads, &state->pool));
    backend->ops = &cpu_ops;
    backend->impl = state;
    snprintf(backend->label, sizeof backend->label, "cpu");
    *out = backend;
    return FERRY_OK;
fail:
    if (state) cpu_pool_free(state->pool);
    free(state);
    free(backend);
    return status;
}
