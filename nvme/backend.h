/*
 * backend.h — private to nvme/: the engine's state and the small table of
 * functions each transfer backend (io_uring in uring.c, pread threads in
 * pread_pool.c) fills.  engine.c owns requests, chunking and completion
 * accounting; a backend only moves chunks and reports their results.
 */
#ifndef FERRY_NVME_BACKEND_H
#define FERRY_NVME_BACKEND_H

#include <pthread.h>

#include "nvme/nvme.h"

/* One transfer in flight: the unsent rest of one chunk of a request. */
typedef struct nvme_chunk {
    nvme_request *request;
    uint64_t request_offset;    /* where the rest starts, from the request's offset */
    uint32_t length;            /* bytes still to move */
    uint32_t retries;           /* EAGAIN/EINTR or no-progress retries so far */
    int index;                  /* position in engine->chunks (io_uring user_data) */
    struct nvme_chunk *next;    /* free list / resubmit list */
} nvme_chunk;

typedef struct nvme_file_entry {
    int fd;                     /* -1: slot free */
    int direct;
    int registered;             /* in the io_uring fixed-file table at this index */
    int writable;
    uint64_t bytes;
    char *path;
} nvme_file_entry;

typedef struct nvme_registered_buffer {
    uint8_t *data;              /* NULL: slot free */
    uint64_t bytes;
} nvme_registered_buffer;

typedef struct nvme_backend_ops {
    const char *name;
    /* Start the backend (threads, ring); FERRY_ERR_UNAVAILABLE means "use
     * the next backend", with *reason saying why. */
    ferry_status (*start)(nvme_engine *engine, char *reason, size_t reason_size);
    /* New work queued or shutdown asked: make the backend look. */
    void (*wake)(nvme_engine *engine);
    /* Drain in-flight transfers, stop threads, free.  Called once. */
    void (*stop)(nvme_engine *engine);
    /* Fixed files/buffers; may be NULL (then never registered). */
    int (*register_file)(nvme_engine *engine, int index, int fd);        /* 0 or -errno */
    int (*register_buffer)(nvme_engine *engine, int index, void *data, uint64_t bytes);
} nvme_backend_ops;

extern const nvme_backend_ops nvme_uring_backend;
extern const nvme_backend_ops nvme_pread_backend;

struct nvme_engine {
    nvme_options options;
    const nvme_backend_ops *backend;
    void *backend_state;

    pthread_mutex_t mutex;      /* guards everything below */
    pthread_cond_t done_cond;   /* a request finished */
    nvme_request *queue_head;   /* submitted, not all chunks issued (FIFO) */
    nvme_request *queue_tail;
    nvme_chunk *chunks;         /* [queue_depth] */
    nvme_chunk *free_chunks;
    int n_chunks_in_flight;
    int stopping;

    nvme_file_entry files[NVME_MAX_FILES];
    nvme_registered_buffer buffers[NVME_MAX_BUFFERS];
    int buffers_unavailable;    /* registration refused once: stop trying */
    int files_unavailable;

    unsigned noted;             /* bit per note kind already made */
    char notes[2048];
};

/* Note kinds, each made at most once per engine. */
enum {
    NVME_NOTE_NO_URING = 1u << 0,
    NVME_NOTE_NO_DIRECT = 1u << 1,
    NVME_NOTE_NO_FIXED_BUFFERS = 1u << 2,
    NVME_NOTE_NO_FIXED_FILES = 1u << 3,
    NVME_NOTE_BUFFER_TOO_LARGE = 1u << 4,
};
void nvme_note(nvme_engine *engine, unsigned kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- called by backends with engine->mutex held ---- */

/* The next chunk to send, or NULL when none is free or nothing is queued. */
nvme_chunk *nvme_core_next_chunk(nvme_engine *engine);
/* Account a finished transfer of `chunk` (result: bytes or -errno, after
 * the fault hook).  Returns 1 when the chunk must be sent again (its rest
 * updated), else 0; finished requests are pushed onto *finished. */
int nvme_core_complete(nvme_engine *engine, nvme_chunk *chunk, int32_t result,
                       nvme_request **finished);
/* Run callbacks of finished requests with the mutex released for the
 * duration, then take it again. */
void nvme_core_deliver_unlocked(nvme_engine *engine, nvme_request *finished);
/* Fault hook applied to a raw result. */
int32_t nvme_core_filter_result(nvme_engine *engine, nvme_chunk *chunk, int32_t result);
/* Where a chunk's transfer goes: file offset and memory. */
static inline uint64_t nvme_chunk_file_offset(const nvme_chunk *chunk) {
    return chunk->request->offset + chunk->request_offset;
}
static inline uint8_t *nvme_chunk_memory(const nvme_chunk *chunk) {
    return (uint8_t *)chunk->request->buffer + chunk->request_offset;
}
/* Index of the registered buffer holding [data, data + bytes), or -1. */
int nvme_core_find_buffer(const nvme_engine *engine, const void *data, uint64_t bytes);

/* Run the calling thread on a NUMA node (no-op on one-node machines or
 * node < 0). buffer.c. */
void nvme_bind_thread_to_node(int node);
/* Undo nvme_buffer_pin_cuda (no-op without CUDA). cuda.c. */
void nvme_buffer_unpin_cuda(nvme_buffer *buffer);

/* ---- called by backends WITHOUT the mutex ---- */

/* Run callbacks of requests nvme_core_complete finished (and wake waiters:
 * done is already set under the mutex). */
void nvme_core_deliver(nvme_engine *engine, nvme_request *finished);

#endif /* FERRY_NVME_BACKEND_H */
