/*
 * budget.c — the budgets a caller did not give (FERRY_STREAMING_AUTO): the
 * host's available memory, the margins kept back from free figures, the
 * FERRY_FAKE_FREE_MEMORY override, and the choice between opening a model
 * all resident and streaming it.  The choice is arithmetic over the plan
 * (plan.c); nothing here touches a device or allocates beyond a plan.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "offload/offload.h"

/* ---------------------------------------------------- what is free */

ferry_status offload_host_available_bytes(uint64_t *out) {
    *out = 0;
    /* MemAvailable counts free memory plus the page cache and slabs the
     * kernel can reclaim without swapping: what a new allocation can have.
     * MemFree alone would call a machine with a warm page cache full. */
    FILE *file = fopen("/proc/meminfo", "r");
    if (file) {
        char line[256];
        unsigned long long kib = 0;
        int found = 0;
        while (!found && fgets(line, sizeof line, file))
            found = sscanf(line, "MemAvailable: %llu kB", &kib) == 1;
        fclose(file);
        if (found && kib > 0) {
            *out = (uint64_t)kib * 1024;
            return FERRY_OK;
        }
    }
    /* Kernels before 3.14 lack MemAvailable: free pages (an underestimate). */
    long pages = sysconf(_SC_AVPHYS_PAGES), page_bytes = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page_bytes <= 0)
        return ferry_fail(FERRY_ERR_UNAVAILABLE,
                          "cannot read the host's available memory: no MemAvailable in "
                          "/proc/meminfo and sysconf(_SC_AVPHYS_PAGES) failed: %s",
                          strerror(errno));
    *out = (uint64_t)pages * (uint64_t)page_bytes;
    return FERRY_OK;
}

/* max(fraction of `bytes`, floor) */
static uint64_t margin(uint64_t bytes, uint64_t percent, uint64_t floor_bytes) {
    uint64_t share = bytes / 100 * percent + bytes % 100 * percent / 100; /* no overflow */
    return share > floor_bytes ? share : floor_bytes;
}

uint64_t offload_gpu_margin_bytes(uint64_t gpu_free_bytes) {
    /* After the open the device still gives memory to cuBLAS workspaces,
     * CUDA Graphs and lazily loaded kernels, allocations round up to 2 MiB
     * pages, and another process may start: 512 MiB covers the first on a
     * small GPU, 5% the rest on a large one. */
    return margin(gpu_free_bytes, 5, 512ull << 20);
}

uint64_t offload_host_margin_bytes(uint64_t host_available_bytes) {
    /* Pinned memory cannot be swapped: the system, the page cache the
     * model file is read through and this process's own buffers must fit
     * beside it, or the kernel's OOM killer picks a victim. */
    return margin(host_available_bytes, 10, 2ull << 30);
}

ferry_status offload_fake_free_memory(int *out_set, uint64_t figures[4]) {
    *out_set = 0;
    for (int i = 0; i < 4; i++) figures[i] = 0;
    const char *text = getenv("FERRY_FAKE_FREE_MEMORY");
    if (!text || !*text) return FERRY_OK;
    /* GPU,HOST then optionally GPU_MARGIN,HOST_MARGIN */
    int n = 0;
    for (const char *field = text; n < 4; n++) {
        const char *comma = strchr(field, ',');
        size_t length = comma ? (size_t)(comma - field) : strlen(field);
        char size[64];
        if (length == 0 || length >= sizeof size) break;
        memcpy(size, field, length);
        size[length] = '\0';
        if (ferry_parse_size(size, &figures[n]) != FERRY_OK || (n < 2 && figures[n] == 0)) break;
        if (!comma) {
            n++;
            if (n == 2 || n == 4) {
                ferry_clear_error();
                *out_set = 1;
                return FERRY_OK;
            }
            break;
        }
        field = comma + 1;
    }
    return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                      "FERRY_FAKE_FREE_MEMORY=%s: expected GPU,HOST sizes (nonzero), optionally "
                      "followed by GPU_MARGIN,HOST_MARGIN, e.g. 6G,64G or 6G,64G,0,1G",
                      text);
}

/* ------------------------------------------------------------ choice */

/* The given budget, else the free figure less its margin (0 when the
 * margin takes it all); *known 0 when neither exists. */
static uint64_t share(uint64_t given, uint64_t free_bytes, uint64_t margin_bytes, int *known) {
    *known = 1;
    if (given) return given;
    if (!free_bytes) {
        *known = 0;
        return 0;
    }
    return free_bytes > margin_bytes ? free_bytes - margin_bytes : 0;
}

ferry_status offload_auto_choose(const offload_model_shape *shape, const offload_request *sessions,
                                 const offload_auto_memory *memory, offload_auto_choice *out) {
    char text[6][32];
#define SIZE_TEXT(bytes, i) offload_format_bytes((bytes), text[i], sizeof text[i])
    if (!shape || !sessions || !memory || !out)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "auto budgets: NULL argument");
    memset(out, 0, sizeof *out);
    offload_bandwidths bandwidths = offload_bandwidths_default(); /* placement ignores them */
    offload_request request = *sessions;
    request.batch = sessions->batch > 0 ? sessions->batch : 1;
    request.max_auto_batch = 0;

    /* All resident: the plan's total with no budget in the way. */
    offload_plan plan;
    request.gpu_mem_bytes = UINT64_MAX;
    request.host_mem_bytes = UINT64_MAX;
    request.resident_layers = shape->n_layers;
    FERRY_TRY(offload_plan_make(shape, &request, &bandwidths, &plan));
    out->resident_bytes = plan.gpu_total_bytes;
    offload_plan_free(&plan);

    int gpu_known = 0, host_known = 0;
    uint64_t gpu = share(memory->gpu_mem_bytes, memory->gpu_free_bytes, memory->gpu_margin_bytes,
                         &gpu_known);
    uint64_t host = share(memory->host_mem_bytes, memory->host_available_bytes,
                          memory->host_margin_bytes, &host_known);
    out->gpu_share_bytes = gpu;
    /* No device memory to stream into (the CPU), or room for everything. */
    if (!memory->always_stream && (!gpu_known || out->resident_bytes <= gpu)) return FERRY_OK;

    out->stream = 1;
    if (gpu_known && gpu == 0)
        return ferry_fail(FERRY_ERR_NO_MEMORY,
                          "auto budgets: the GPU has %s free and keeps a margin of %s: nothing "
                          "left for a model (all resident it needs %s)",
                          SIZE_TEXT(memory->gpu_free_bytes, 0),
                          SIZE_TEXT(memory->gpu_margin_bytes, 1),
                          SIZE_TEXT(out->resident_bytes, 2));
    if (host_known && host == 0)
        return ferry_fail(FERRY_ERR_NO_MEMORY,
                          "auto budgets: the model (%s all resident) does not fit the GPU's %s, "
                          "and the host has %s available with a margin of %s: nothing left to "
                          "stream through",
                          SIZE_TEXT(out->resident_bytes, 0), SIZE_TEXT(gpu, 1),
                          SIZE_TEXT(memory->host_available_bytes, 2),
                          SIZE_TEXT(memory->host_margin_bytes, 3));
    out->gpu_mem_bytes = gpu;
    out->host_mem_bytes = host;
    /* Streamed within the shares: the plan refuses what cannot run. */
    request.gpu_mem_bytes = gpu_known ? gpu : UINT64_MAX;
    request.host_mem_bytes = host_known ? host : UINT64_MAX;
    request.resident_layers = memory->always_stream ? sessions->resident_layers : -1;
    ferry_status status = offload_plan_make(shape, &request, &bandwidths, &plan);
    if (status != FERRY_OK)
        return ferry_fail_prefix(status,
                                 "auto budgets: the model needs %s of GPU memory all resident; "
                                 "streamed within GPU %s and host %s: ",
                                 SIZE_TEXT(out->resident_bytes, 0),
                                 gpu_known ? SIZE_TEXT(gpu, 1) : "no limit",
                                 host_known ? SIZE_TEXT(host, 2) : "no limit");
    offload_plan_free(&plan);
    return FERRY_OK;
#undef SIZE_TEXT
}
