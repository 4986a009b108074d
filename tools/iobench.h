/*
 * iobench.h — what cmd_iobench.c (options, sweep, output) and
 * iobench_run.c (driving the nvme/ engine for one configuration, and the
 * NVMe -> GPU pipeline) share.
 */
#ifndef FERRY_TOOLS_IOBENCH_H
#define FERRY_TOOLS_IOBENCH_H

#include <stdint.h>

#include "nvme/nvme.h"

typedef enum iobench_mode { IOBENCH_READ, IOBENCH_RANDREAD, IOBENCH_WRITE } iobench_mode;

/* A byte range of the target, read in order (a whole file, or a model's
 * layer extent). */
typedef struct iobench_segment {
    uint64_t offset;
    uint64_t bytes;
} iobench_segment;

typedef struct iobench_target {
    const char *path;
    uint64_t file_bytes;
    int n_segments;
    iobench_segment *segments;  /* in the order the runtime reads them */
} iobench_target;

typedef struct iobench_config {
    iobench_mode mode;
    uint64_t block_bytes;
    int queue_depth;
    int n_threads;
    int direct;
    double runtime_seconds;     /* 0: one whole pass */
} iobench_config;

typedef struct iobench_result {
    double gbps;                /* 1e9 bytes / s */
    double iops;
    double lat_p50_us, lat_p99_us, lat_p999_us;
    uint64_t bytes;
    double seconds;
    char backend[16];
} iobench_result;

/* Progress of the run in flight, for the terminal line. */
typedef void (*iobench_progress_fn)(void *user, uint64_t bytes_done, double seconds);
/* A note from the engine (fallbacks). */
typedef void (*iobench_note_fn)(void *user, const char *message);

typedef struct iobench_hooks {
    iobench_progress_fn on_progress;
    iobench_note_fn on_note;
    void *user;
} iobench_hooks;

ferry_status iobench_run(const iobench_target *target, const iobench_config *config,
                         const iobench_hooks *hooks, iobench_result *out);

typedef struct iobench_gpu_result {
    double disk_gbps;           /* NVMe -> pinned host buffers alone */
    double h2d_gbps;            /* pinned host -> GPU alone */
    double end_to_end_gbps;     /* NVMe -> pinned -> GPU, double-buffered */
    uint64_t slot_bytes;
    int n_slots;
} iobench_gpu_result;

/* The runtime's path, NVMe -> pinned slots -> cudaMemcpyAsync -> GPU,
 * with config's block size and queue depth (one thread, reads). */
ferry_status iobench_run_to_gpu(const iobench_target *target, const iobench_config *config,
                                int device, const iobench_hooks *hooks, iobench_gpu_result *out);

#endif /* FERRY_TOOLS_IOBENCH_H */
