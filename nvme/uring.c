/*
 * uring.c — the io_uring backend: one ring and one I/O thread per engine.
 * The thread keeps the submission queue full (chunks from engine.c, fixed
 * files and buffers where registered), submits and waits in one syscall,
 * and reaps completions in batches.  An eventfd read kept armed on the
 * ring wakes it when work arrives from another thread.  Hot path.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "nvme/backend.h"

/* user_data of the eventfd read (chunk indices are small). */
#define WAKE_TAG UINT64_MAX

typedef struct uring_state {
    struct io_uring ring;
    int ring_ready;
    pthread_t thread;
    int thread_started;
    int wake_fd;
    uint64_t wake_value;        /* the armed eventfd read lands here */
    int wake_armed;
    nvme_chunk *resend;         /* short reads / EAGAIN to send again */
} uring_state;

/* The engine whose I/O thread this is: submissions from its own callbacks
 * need no eventfd wake (the loop looks at the queue right after). */
static _Thread_local nvme_engine *io_thread_engine;

static void prepare_chunk(nvme_engine *engine, struct io_uring_sqe *sqe, nvme_chunk *chunk) {
    const nvme_request *request = chunk->request;
    const nvme_file_entry *file = &engine->files[request->file];
    uint8_t *memory = nvme_chunk_memory(chunk);
    uint64_t offset = nvme_chunk_file_offset(chunk);
    int fd = file->registered ? request->file : file->fd;
    int buffer = engine->buffers_unavailable ? -1
                                             : nvme_core_find_buffer(engine, memory, chunk->length);
    if (request->is_write) {
        if (buffer >= 0)
            io_uring_prep_write_fixed(sqe, fd, memory, chunk->length, offset, buffer);
        else
            io_uring_prep_write(sqe, fd, memory, chunk->length, offset);
    } else {
        if (buffer >= 0)
            io_uring_prep_read_fixed(sqe, fd, memory, chunk->length, offset, buffer);
        else
            io_uring_prep_read(sqe, fd, memory, chunk->length, offset);
    }
    if (file->registered) sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, (uint64_t)chunk->index);
}

/* Mutex held: fill free submission slots (wake read, resends, new chunks). */
static void fill_queue(nvme_engine *engine, uring_state *state) {
    struct io_uring *ring = &state->ring;
    if (!state->wake_armed && io_uring_sq_space_left(ring) > 0) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
        io_uring_prep_read(sqe, state->wake_fd, &state->wake_value, sizeof state->wake_value, 0);
        io_uring_sqe_set_data64(sqe, WAKE_TAG);
        state->wake_armed = 1;
    }
    while (state->resend && io_uring_sq_space_left(ring) > 0) {
        nvme_chunk *chunk = state->resend;
        state->resend = chunk->next;
        prepare_chunk(engine, io_uring_get_sqe(ring), chunk);
    }
    while (io_uring_sq_space_left(ring) > 0) {
        nvme_chunk *chunk = nvme_core_next_chunk(engine);
        if (!chunk) break;
        prepare_chunk(engine, io_uring_get_sqe(ring), chunk);
    }
}

/* Mutex held: account every completion waiting in the CQ. */
static void reap(nvme_engine *engine, uring_state *state, nvme_request **finished) {
    struct io_uring_cqe *cqe;
    unsigned head, count = 0;
    io_uring_for_each_cqe(&state->ring, head, cqe) {
        count++;
        if (cqe->user_data == WAKE_TAG) {
            state->wake_armed = 0;
            continue;
        }
        nvme_chunk *chunk = &engine->chunks[cqe->user_data];
        int32_t result = nvme_core_filter_result(engine, chunk, cqe->res);
        if (nvme_core_complete(engine, chunk, result, finished)) {
            chunk->next = state->resend;
            state->resend = chunk;
        }
    }
    io_uring_cq_advance(&state->ring, count);
}

static void *io_thread(void *arg) {
    nvme_engine *engine = arg;
    uring_state *state = engine->backend_state;
    io_thread_engine = engine;
    nvme_bind_thread_to_node(engine->options.numa_node);
    pthread_mutex_lock(&engine->mutex);
    for (;;) {
        fill_queue(engine, state);
        if (engine->stopping && engine->n_chunks_in_flight == 0 && !engine->queue_head) break;
        pthread_mutex_unlock(&engine->mutex);
        /* -EINTR / -EAGAIN / -EBUSY: nothing lost, the loop reaps and retries. */
        io_uring_submit_and_wait(&state->ring, 1);
        nvme_request *finished = NULL;
        pthread_mutex_lock(&engine->mutex);
        reap(engine, state, &finished);
        nvme_core_deliver_unlocked(engine, finished);
    }
    pthread_mutex_unlock(&engine->mutex);
    return NULL;
}

static void describe_failure(int error, char *reason, size_t reason_size) {
    int disabled = 0;
    FILE *sysctl = fopen("/proc/sys/kernel/io_uring_disabled", "r");
    if (sysctl) {
        if (fscanf(sysctl, "%d", &disabled) != 1) disabled = 0;
        fclose(sysctl);
    }
    if (disabled)
        snprintf(reason, reason_size, "%s (kernel.io_uring_disabled = %d)", strerror(error),
                 disabled);
    else if (error == EPERM || error == EACCES)
        snprintf(reason, reason_size, "%s (a seccomp filter or container policy?)",
                 strerror(error));
    else if (error == ENOSYS)
        snprintf(reason, reason_size, "%s (kernel built without io_uring?)", strerror(error));
    else
        snprintf(reason, reason_size, "%s", strerror(error));
}

static void uring_stop(nvme_engine *engine);

static ferry_status uring_start(nvme_engine *engine, char *reason, size_t reason_size) {
    uring_state *state = NULL;
    FERRY_TRY(ferry_calloc(1, sizeof *state, "io_uring state", (void **)&state));
    state->wake_fd = -1;
    engine->backend_state = state;
    unsigned entries = (unsigned)engine->options.queue_depth + 1;
    int result = io_uring_queue_init(entries, &state->ring, IORING_SETUP_COOP_TASKRUN);
    if (result == -EINVAL) result = io_uring_queue_init(entries, &state->ring, 0);
    if (result < 0) {
        describe_failure(-result, reason, reason_size);
        goto unavailable;
    }
    state->ring_ready = 1;
    struct io_uring_probe *probe = io_uring_get_probe_ring(&state->ring);
    int has_ops = probe && io_uring_opcode_supported(probe, IORING_OP_READ) &&
                  io_uring_opcode_supported(probe, IORING_OP_READ_FIXED);
    if (probe) io_uring_free_probe(probe);
    if (!has_ops) {
        snprintf(reason, reason_size, "the kernel's io_uring lacks IORING_OP_READ (too old)");
        goto unavailable;
    }
    result = io_uring_register_files_sparse(&state->ring, NVME_MAX_FILES);
    if (result < 0) {
        engine->files_unavailable = 1;
        nvme_note(engine, NVME_NOTE_NO_FIXED_FILES,
                  "registered files unavailable (%s); using plain descriptors", strerror(-result));
    }
    if (!engine->buffers_unavailable) {
        result = io_uring_register_buffers_sparse(&state->ring, NVME_MAX_BUFFERS);
        if (result < 0) {
            engine->buffers_unavailable = 1;
            nvme_note(engine, NVME_NOTE_NO_FIXED_BUFFERS,
                      "registered buffers unavailable (%s): each read pins its pages instead",
                      strerror(-result));
        }
    }
    state->wake_fd = eventfd(0, EFD_CLOEXEC);
    if (state->wake_fd < 0) {
        snprintf(reason, reason_size, "eventfd failed: %s", strerror(errno));
        goto unavailable;
    }
    if (pthread_create(&state->thread, NULL, io_thread, engine) != 0) {
        uring_stop(engine);
        return ferry_fail(FERRY_ERR_NO_MEMORY, "cannot start the I/O thread");
    }
    state->thread_started = 1;
    return FERRY_OK;
unavailable:
    uring_stop(engine);
    return FERRY_ERR_UNAVAILABLE;
}

static void uring_wake(nvme_engine *engine) {
    if (io_thread_engine == engine) return;
    uring_state *state = engine->backend_state;
    uint64_t one = 1;
    /* Fails only if the counter would overflow: then a wake is pending anyway. */
    if (write(state->wake_fd, &one, sizeof one) < 0) return;
}

static void uring_stop(nvme_engine *engine) {
    uring_state *state = engine->backend_state;
    if (!state) return;
    if (state->thread_started) {
        uring_wake(engine);
        pthread_join(state->thread, NULL);
    }
    if (state->ring_ready) io_uring_queue_exit(&state->ring);
    if (state->wake_fd >= 0) close(state->wake_fd);
    free(state);
    engine->backend_state = NULL;
}

static int uring_register_file(nvme_engine *engine, int index, int fd) {
    uring_state *state = engine->backend_state;
    int result = io_uring_register_files_update(&state->ring, (unsigned)index, &fd, 1);
    return result < 0 ? result : 0;
}

static int uring_register_buffer(nvme_engine *engine, int index, void *data, uint64_t bytes) {
    uring_state *state = engine->backend_state;
    struct iovec iov = {.iov_base = data, .iov_len = (size_t)bytes};
    int result = io_uring_register_buffers_update_tag(&state->ring, (unsigned)index, &iov, NULL, 1);
    return result < 0 ? result : 0;
}

const nvme_backend_ops nvme_uring_backend = {
    .name = "io_uring",
    .start = uring_start,
    .wake = uring_wake,
    .stop = uring_stop,
    .register_file = uring_register_file,
    .register_buffer = uring_register_buffer,
};
