/*
 * nvme.h — the file reader that the layers above nvme/ use: an engine that
 * moves byte extents between files and memory at the drive's peak
 * (io_uring, O_DIRECT, registered buffers and files, a deep queue), with
 * a pread thread pool behind the same interface when io_uring is missing.
 * Also page-aligned, NUMA-local I/O buffers and, in the CUDA build, their
 * pinning.  Knows nothing about models or transformers.
 *
 * Threads: one engine serves any number of submitting threads.  Reads run
 * on the engine's own I/O thread(s); completion callbacks run there too
 * (or on the thread that calls nvme_cancel / nvme_engine_close).
 */
#ifndef FERRY_NVME_H
#define FERRY_NVME_H

#include <stdint.h>

#include "base/base.h"

/* O_DIRECT alignment the engine asks of offsets and buffers (a superset of
 * 512-byte and 4 KiB logical blocks). */
#define NVME_BLOCK_BYTES 4096u
/* Files and registered buffers one engine can hold at once. */
#define NVME_MAX_FILES 64
#define NVME_MAX_BUFFERS 256

typedef struct nvme_engine nvme_engine;
typedef struct nvme_request nvme_request;

/* A one-line remark the engine makes once (a fallback it took). */
typedef void (*nvme_note_fn)(void *user, const char *message);
/* Test hook: sees every transfer's result (bytes or -errno) before the
 * engine does and returns the result to use instead (shorter, or an error). */
typedef int32_t (*nvme_fault_fn)(void *user, uint64_t file_offset, uint32_t length,
                                 int32_t result);
/* A request finished; runs on an engine thread.  From this moment the
 * request belongs to the callback (it may free or resubmit it). */
typedef void (*nvme_done_fn)(nvme_request *request, void *user);

typedef struct nvme_options {
    int queue_depth;            /* transfers in flight; 0: 64 */
    uint64_t chunk_bytes;       /* large requests split into chunks of this; 0: 1 MiB */
    int n_pread_threads;        /* fallback pool size; 0: min(queue_depth, 32) */
    int numa_node;              /* run the I/O thread on this node; -1: leave it */
    /* Force a fallback (tests, comparisons).  The environment variable
     * FERRY_NVME_FORCE="pread,buffered,unregistered" does the same. */
    int force_pread;
    int force_buffered;
    int force_unregistered;
    nvme_note_fn on_note;
    void *note_user;
    nvme_fault_fn inject_fault;
    void *fault_user;
} nvme_options;

nvme_options nvme_options_default(void);

/* Start an engine (io_uring when the kernel allows it, else a pread pool;
 * either way it works, and a note says which). */
ferry_status nvme_engine_open(const nvme_options *options, nvme_engine **out_engine);
/* Cancel every request not yet finished (each gets FERRY_ERR_CANCELLED
 * through its callback / nvme_wait), wait for transfers already sent to the
 * drive, stop the threads, close the files.  NULL is allowed. */
void nvme_engine_close(nvme_engine *engine);

/* "io_uring" or "pread". */
const char *nvme_engine_backend(const nvme_engine *engine);
/* Every note made so far, one per line ("" when none).  Owned by engine. */
const char *nvme_engine_notes(const nvme_engine *engine);

/* ------------------------------------------------------------- files */

enum {
    NVME_FILE_WRITE = 1 << 0,       /* open read-write (the file must exist) */
    NVME_FILE_BUFFERED = 1 << 1,    /* go through the page cache on purpose */
};

/* Open a regular file or block device.  O_DIRECT unless buffered was asked
 * for, forced, or the filesystem refuses it (then a note says so). */
ferry_status nvme_file_open(nvme_engine *engine, const char *path, int flags, int *out_file);
/* Close a file with no requests in flight on it. */
void nvme_file_close(nvme_engine *engine, int file);
uint64_t nvme_file_bytes(const nvme_engine *engine, int file);
int nvme_file_is_direct(const nvme_engine *engine, int file);
/* Bytes a buffer must hold to receive `length` bytes: O_DIRECT transfers
 * whole blocks, so length rounded up to NVME_BLOCK_BYTES on direct files. */
uint64_t nvme_transfer_bytes(const nvme_engine *engine, int file, uint64_t length);

/* ----------------------------------------------------------- buffers */

/* Register memory the engine will read into (fixed buffers: no per-read
 * page pinning).  Optional: unregistered memory works too.  When the kernel
 * refuses (RLIMIT_MEMLOCK) the engine notes it once and carries on. */
ferry_status nvme_register_buffer(nvme_engine *engine, void *data, uint64_t bytes);
/* Forget a registered buffer before freeing it (no reads in flight into it). */
void nvme_unregister_buffer(nvme_engine *engine, void *data);

/* ---------------------------------------------------------- requests */

/* A read or write of [offset, offset + length) of a file, owned by the
 * caller, alive from nvme_submit until it is finished.  Fill the inputs
 * (memset the rest to 0), submit, then poll nvme_request_done, call
 * nvme_wait, or let on_done run. */
struct nvme_request {
    /* inputs */
    int file;
    int is_write;
    uint64_t offset;            /* multiple of NVME_BLOCK_BYTES on a direct file */
    uint64_t length;
    void *buffer;               /* holds nvme_transfer_bytes(length); aligned on a direct file */
    nvme_done_fn on_done;       /* may be NULL */
    void *user;
    /* outputs, valid once finished */
    ferry_status status;
    uint64_t bytes_done;        /* true bytes moved (stops at end of file) */
    uint64_t submit_ns, complete_ns;
    char error[224];            /* message when status != FERRY_OK */
    /* engine-private */
    struct {
        nvme_request *next;
        uint64_t transfer_bytes;    /* bytes to issue (aligned up, clipped at EOF) */
        uint64_t issued_bytes;
        uint64_t valid_bytes;       /* bytes of real data the request covers */
        int chunks_in_flight;
        int queued;
        int cancelled;
        int failed;
        int done;                   /* read/written with __atomic */
    } internal;
};

/* Queue a request.  Bad arguments (unknown file, misaligned offset or
 * buffer on a direct file) fail here and nothing is queued. */
ferry_status nvme_submit(nvme_engine *engine, nvme_request *request);
/* Nonzero once the request has finished (any status). */
int nvme_request_done(const nvme_request *request);
/* Block until the request finishes; returns its status and, on failure,
 * sets this thread's error message (file and offset).  Don't call from a
 * completion callback. */
ferry_status nvme_wait(nvme_engine *engine, nvme_request *request);
/* Stop a request: chunks not yet sent are dropped; it finishes with
 * FERRY_ERR_CANCELLED once the transfers already in the kernel land (the
 * buffer may be partly written).  A finished request is left alone. */
void nvme_cancel(nvme_engine *engine, nvme_request *request);

/* Read [offset, offset + length) and wait (convenience). */
ferry_status nvme_read_sync(nvme_engine *engine, int file, uint64_t offset, uint64_t length,
                            void *buffer, uint64_t *out_bytes_read);

/* ------------------------------------------- host memory and locality */

typedef struct nvme_buffer {
    void *data;                 /* page aligned (2 MiB aligned when large) */
    uint64_t bytes;             /* as asked */
    uint64_t mapped_bytes;
    int numa_node;              /* node it was bound to, or -1 */
    int cuda_pinned;
} nvme_buffer;

/* Anonymous memory, faulted in on numa_node (-1: wherever the thread runs). */
ferry_status nvme_buffer_alloc(uint64_t bytes, int numa_node, nvme_buffer *out);
/* Unpins (CUDA) and unmaps.  Safe on a zeroed struct. */
void nvme_buffer_free(nvme_buffer *buffer);

/* NUMA nodes of this machine (1 when libnuma is unavailable). */
int nvme_numa_node_count(void);
/* Node the drive holding `path` is attached to, or -1 if unknown. */
int nvme_numa_node_of_path(const char *path);
/* Node a PCI device ("0000:3b:00.0") is attached to (hwloc), or -1. */
int nvme_numa_node_of_pci(const char *pci_bus_id);

/* --------------------------------------------- CUDA (nvme/cuda.c) */

/* Nonzero in the CUDA build with a GPU present. */
int nvme_cuda_available(void);
/* Make a buffer CUDA pinned memory (cudaHostRegister); FERRY_ERR_UNAVAILABLE
 * without CUDA. */
ferry_status nvme_buffer_pin_cuda(nvme_buffer *buffer);
/* NUMA node of a GPU, or -1. */
int nvme_numa_node_of_cuda_device(int device);

/* A ring of GPU buffers fed from pinned host memory by cudaMemcpyAsync on
 * one copy stream, one event per slot: what `iobench --to-gpu` measures. */
typedef struct nvme_gpu_sink nvme_gpu_sink;
ferry_status nvme_gpu_sink_open(int device, int n_slots, uint64_t slot_bytes,
                                nvme_gpu_sink **out_sink);
/* Start copying bytes from pinned host memory into GPU slot `slot`. */
ferry_status nvme_gpu_sink_copy(nvme_gpu_sink *sink, int slot, const void *host,
                                uint64_t bytes);
/* Wait for the slot's last copy. */
ferry_status nvme_gpu_sink_wait(nvme_gpu_sink *sink, int slot);
void nvme_gpu_sink_close(nvme_gpu_sink *sink);

#endif /* FERRY_NVME_H */
