/*
 * engine.c — the reader's front half: options and fallbacks, files,
 * registered buffers, request validation, splitting requests into chunks,
 * and completion accounting (short reads, retries, errors with file and
 * offset, end-of-file tails, cancellation).  The backends (uring.c,
 * pread_pool.c) only move chunks.  Hot path: nvme_submit and the
 * nvme_core_* functions allocate nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nvme/backend.h"

/* EAGAIN / EINTR / no-progress retries of one chunk before it is an error. */
enum { NVME_MAX_RETRIES = 16 };
/* io_uring transfers at most this per operation (int32 result). */
#define NVME_MAX_CHUNK_BYTES (1ull << 30)
#define NVME_FIXED_BUFFER_MAX_BYTES (1ull << 30)

static uint64_t round_up_block(uint64_t bytes) {
    return (bytes + NVME_BLOCK_BYTES - 1) & ~(uint64_t)(NVME_BLOCK_BYTES - 1);
}

nvme_options nvme_options_default(void) {
    nvme_options options;
    memset(&options, 0, sizeof options);
    options.queue_depth = 64;
    options.chunk_bytes = 1u << 20;
    options.numa_node = -1;
    return options;
}

void nvme_note(nvme_engine *engine, unsigned kind, const char *fmt, ...) {
    if (engine->noted & kind) return;
    engine->noted |= kind;
    char line[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(line, sizeof line, fmt, args);
    va_end(args);
    size_t used = strlen(engine->notes);
    snprintf(engine->notes + used, sizeof engine->notes - used, "%s\n", line);
    if (engine->options.on_note) engine->options.on_note(engine->options.note_user, line);
}

/* FERRY_NVME_FORCE="pread,buffered,unregistered" (any subset). */
static void apply_forced_fallbacks(nvme_options *options) {
    const char *force = getenv("FERRY_NVME_FORCE");
    if (!force) return;
    if (strstr(force, "pread")) options->force_pread = 1;
    if (strstr(force, "buffered")) options->force_buffered = 1;
    if (strstr(force, "unregistered")) options->force_unregistered = 1;
}

static ferry_status check_options(nvme_options *options) {
    if (options->queue_depth <= 0) options->queue_depth = 64;
    if (options->chunk_bytes == 0) options->chunk_bytes = 1u << 20;
    if (options->queue_depth > 4096)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "queue depth %d is above 4096",
                          options->queue_depth);
    if (options->chunk_bytes % NVME_BLOCK_BYTES || options->chunk_bytes > NVME_MAX_CHUNK_BYTES)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "chunk size %llu is not a multiple of %u up to 1 GiB",
                          (unsigned long long)options->chunk_bytes, NVME_BLOCK_BYTES);
    if (options->n_pread_threads <= 0)
        options->n_pread_threads = options->queue_depth < 32 ? options->queue_depth : 32;
    return FERRY_OK;
}

ferry_status nvme_engine_open(const nvme_options *options, nvme_engine **out_engine) {
    *out_engine = NULL;
    ferry_status status = FERRY_OK;
    nvme_engine *engine = NULL;
    FERRY_TRY(ferry_calloc(1, sizeof *engine, "the I/O engine", (void **)&engine));
    engine->options = options ? *options : nvme_options_default();
    apply_forced_fallbacks(&engine->options);
    FERRY_TRY_GOTO(check_options(&engine->options));
    pthread_mutex_init(&engine->mutex, NULL);
    pthread_cond_init(&engine->done_cond, NULL);
    for (int i = 0; i < NVME_MAX_FILES; i++) engine->files[i].fd = -1;
    FERRY_TRY_GOTO(ferry_calloc((size_t)engine->options.queue_depth, sizeof *engine->chunks,
                                "I/O chunk table", (void **)&engine->chunks));
    for (int i = engine->options.queue_depth - 1; i >= 0; i--) {
        engine->chunks[i].index = i;
        engine->chunks[i].next = engine->free_chunks;
        engine->free_chunks = &engine->chunks[i];
    }
    if (engine->options.force_unregistered) engine->buffers_unavailable = 1;

    char reason[256] = "forced (FERRY_NVME_FORCE=pread or force_pread)";
    engine->backend = &nvme_uring_backend;
    status = engine->options.force_pread ? FERRY_ERR_UNAVAILABLE
                                         : engine->backend->start(engine, reason, sizeof reason);
    if (status == FERRY_ERR_UNAVAILABLE) {
        nvme_note(engine, NVME_NOTE_NO_URING, "io_uring unavailable: %s; using a pool of pread threads",
                  reason);
        engine->backend = &nvme_pread_backend;
        status = engine->backend->start(engine, reason, sizeof reason);
    }
    if (status != FERRY_OK) {
        engine->backend = NULL;
        goto fail;
    }
    if (engine->options.force_unregistered && engine->backend->register_buffer)
        nvme_note(engine, NVME_NOTE_NO_FIXED_BUFFERS,
                  "registered buffers off (forced): each read pins its pages");
    *out_engine = engine;
    return FERRY_OK;
fail:
    nvme_engine_close(engine);
    return status;
}

static void finish_request(nvme_engine *engine, nvme_request *request, nvme_request **finished);

void nvme_engine_close(nvme_engine *engine) {
    if (!engine) return;
    nvme_request *finished = NULL;
    pthread_mutex_lock(&engine->mutex);
    engine->stopping = 1;
    while (engine->queue_head) {
        nvme_request *request = engine->queue_head;
        engine->queue_head = request->internal.next;
        request->internal.queued = 0;
        request->internal.cancelled = 1;
        if (request->internal.chunks_in_flight == 0) finish_request(engine, request, &finished);
    }
    engine->queue_tail = NULL;
    for (int i = 0; engine->chunks && i < engine->options.queue_depth; i++)
        if (engine->chunks[i].request) engine->chunks[i].request->internal.cancelled = 1;
    pthread_mutex_unlock(&engine->mutex);
    nvme_core_deliver(engine, finished);
    if (engine->backend) engine->backend->stop(engine);
    for (int i = 0; i < NVME_MAX_FILES; i++) {
        if (engine->files[i].fd >= 0) close(engine->files[i].fd);
        free(engine->files[i].path);
    }
    free(engine->chunks);
    pthread_cond_destroy(&engine->done_cond);
    pthread_mutex_destroy(&engine->mutex);
    free(engine);
}

const char *nvme_engine_backend(const nvme_engine *engine) { return engine->backend->name; }
const char *nvme_engine_notes(const nvme_engine *engine) { return engine->notes; }

/* ------------------------------------------------------------- files */

static ferry_status file_size(int fd, const char *path, uint64_t *out_bytes) {
    struct stat st;
    if (fstat(fd, &st) != 0)
        return ferry_fail(FERRY_ERR_IO, "%s: stat failed: %s", path, strerror(errno));
    if (S_ISBLK(st.st_mode)) {
        if (ioctl(fd, BLKGETSIZE64, out_bytes) != 0)
            return ferry_fail(FERRY_ERR_IO, "%s: cannot read the device size: %s", path,
                              strerror(errno));
        return FERRY_OK;
    }
    if (!S_ISREG(st.st_mode))
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: not a regular file or block device",
                          path);
    *out_bytes = (uint64_t)st.st_size;
    return FERRY_OK;
}

ferry_status nvme_file_open(nvme_engine *engine, const char *path, int flags, int *out_file) {
    *out_file = -1;
    ferry_status status = FERRY_OK;
    int fd = -1;
    int access = (flags & NVME_FILE_WRITE) ? O_RDWR : O_RDONLY;
    int want_direct = !(flags & NVME_FILE_BUFFERED) && !engine->options.force_buffered;
    int direct = want_direct;
    fd = open(path, access | O_CLOEXEC | (direct ? O_DIRECT : 0));
    if (fd < 0 && direct && errno == EINVAL) {
        direct = 0;
        fd = open(path, access | O_CLOEXEC);
        if (fd >= 0)
            nvme_note(engine, NVME_NOTE_NO_DIRECT,
                      "%s: the filesystem refuses O_DIRECT (tmpfs?); reading through the page "
                      "cache",
                      path);
    }
    if (fd < 0)
        return ferry_fail(errno == ENOENT ? FERRY_ERR_INVALID_ARGUMENT : FERRY_ERR_IO,
                          "%s: cannot open: %s", path, strerror(errno));
    if (!want_direct && engine->options.force_buffered && !(flags & NVME_FILE_BUFFERED))
        nvme_note(engine, NVME_NOTE_NO_DIRECT,
                  "O_DIRECT off (forced): reading through the page cache");
    uint64_t bytes = 0;
    FERRY_TRY_GOTO(file_size(fd, path, &bytes));

    pthread_mutex_lock(&engine->mutex);
    int index = -1;
    for (int i = 0; i < NVME_MAX_FILES && index < 0; i++)
        if (engine->files[i].fd < 0) index = i;
    if (index < 0) {
        pthread_mutex_unlock(&engine->mutex);
        status = ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: more than %d files open in one engine",
                            path, NVME_MAX_FILES);
        goto fail;
    }
    nvme_file_entry *file = &engine->files[index];
    file->path = strdup(path);
    file->fd = fd;
    file->direct = direct;
    file->writable = (flags & NVME_FILE_WRITE) != 0;
    file->bytes = bytes;
    file->registered = 0;
    if (engine->backend->register_file && !engine->files_unavailable) {
        int result = engine->backend->register_file(engine, index, fd);
        if (result == 0) {
            file->registered = 1;
        } else {
            engine->files_unavailable = 1;
            nvme_note(engine, NVME_NOTE_NO_FIXED_FILES,
                      "registered files refused (%s); using plain descriptors", strerror(-result));
        }
    }
    pthread_mutex_unlock(&engine->mutex);
    *out_file = index;
    return FERRY_OK;
fail:
    if (fd >= 0) close(fd);
    return status;
}

static nvme_file_entry *file_entry(const nvme_engine *engine, int file) {
    if (file < 0 || file >= NVME_MAX_FILES || engine->files[file].fd < 0) return NULL;
    return (nvme_file_entry *)&engine->files[file];
}

void nvme_file_close(nvme_engine *engine, int file) {
    pthread_mutex_lock(&engine->mutex);
    nvme_file_entry *entry = file_entry(engine, file);
    if (entry) {
        if (entry->registered) engine->backend->register_file(engine, file, -1);
        close(entry->fd);
        free(entry->path);
        memset(entry, 0, sizeof *entry);
        entry->fd = -1;
    }
    pthread_mutex_unlock(&engine->mutex);
}

uint64_t nvme_file_bytes(const nvme_engine *engine, int file) {
    const nvme_file_entry *entry = file_entry(engine, file);
    return entry ? entry->bytes : 0;
}

int nvme_file_is_direct(const nvme_engine *engine, int file) {
    const nvme_file_entry *entry = file_entry(engine, file);
    return entry ? entry->direct : 0;
}

uint64_t nvme_transfer_bytes(const nvme_engine *engine, int file, uint64_t length) {
    return nvme_file_is_direct(engine, file) ? round_up_block(length) : length;
}

/* ----------------------------------------------------------- buffers */

int nvme_core_find_buffer(const nvme_engine *engine, const void *data, uint64_t bytes) {
    const uint8_t *start = data;
    for (int i = 0; i < NVME_MAX_BUFFERS; i++) {
        const nvme_registered_buffer *buffer = &engine->buffers[i];
        if (buffer->data && start >= buffer->data &&
            start + bytes <= buffer->data + buffer->bytes)
            return i;
    }
    return -1;
}

ferry_status nvme_register_buffer(nvme_engine *engine, void *data, uint64_t bytes) {
    if (!data || bytes == 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "registering an empty buffer");
    if (!engine->backend->register_buffer) return FERRY_OK;   /* pread: nothing to gain */
    pthread_mutex_lock(&engine->mutex);
    if (engine->buffers_unavailable) goto done;
    if (bytes > NVME_FIXED_BUFFER_MAX_BYTES) {
        nvme_note(engine, NVME_NOTE_BUFFER_TOO_LARGE,
                  "a buffer of %llu bytes is above io_uring's 1 GiB fixed-buffer limit; it is "
                  "read unregistered (allocate buffers of at most 1 GiB)",
                  (unsigned long long)bytes);
        goto done;
    }
    int index = -1;
    for (int i = 0; i < NVME_MAX_BUFFERS && index < 0; i++)
        if (!engine->buffers[i].data) index = i;
    if (index < 0) goto done;   /* table full: unregistered reads still work */
    int result = engine->backend->register_buffer(engine, index, data, bytes);
    if (result != 0) {
        struct rlimit limit = {0, 0};
        getrlimit(RLIMIT_MEMLOCK, &limit);
        engine->buffers_unavailable = 1;
        nvme_note(engine, NVME_NOTE_NO_FIXED_BUFFERS,
                  "registered buffers refused (%s; RLIMIT_MEMLOCK is %llu KiB): each read pins "
                  "its pages instead (raise it with `ulimit -l unlimited`)",
                  strerror(-result), (unsigned long long)(limit.rlim_cur / 1024));
        goto done;
    }
    engine->buffers[index].data = data;
    engine->buffers[index].bytes = bytes;
done:
    pthread_mutex_unlock(&engine->mutex);
    return FERRY_OK;
}

void nvme_unregister_buffer(nvme_engine *engine, void *data) {
    pthread_mutex_lock(&engine->mutex);
    for (int i = 0; i < NVME_MAX_BUFFERS; i++) {
        if (engine->buffers[i].data == data) {
            if (engine->backend->register_buffer) engine->backend->register_buffer(engine, i, NULL, 0);
            engine->buffers[i].data = NULL;
            engine->buffers[i].bytes = 0;
        }
    }
    pthread_mutex_unlock(&engine->mutex);
}

/* ---------------------------------------------------------- requests */

static ferry_status check_request(const nvme_engine *engine, const nvme_request *request,
                                  const nvme_file_entry *file) {
    if (!file)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "request names file %d, which is not open",
                          request->file);
    const char *op = request->is_write ? "write" : "read";
    if (!request->buffer || request->length == 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: %s of %llu bytes into %p", file->path,
                          op, (unsigned long long)request->length, request->buffer);
    if (request->is_write && !file->writable)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: opened read-only, cannot write",
                          file->path);
    if (!request->is_write && request->offset >= file->bytes)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "%s: read at offset %llu is past the end of the file (%llu bytes)",
                          file->path, (unsigned long long)request->offset,
                          (unsigned long long)file->bytes);
    if (file->direct) {
        if (request->offset % NVME_BLOCK_BYTES || (uintptr_t)request->buffer % NVME_BLOCK_BYTES)
            return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                              "%s: O_DIRECT %s needs offset and buffer aligned to %u bytes "
                              "(offset %llu, buffer %p)",
                              file->path, op, NVME_BLOCK_BYTES,
                              (unsigned long long)request->offset, request->buffer);
        if (request->is_write && request->length % NVME_BLOCK_BYTES)
            return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                              "%s: O_DIRECT write of %llu bytes is not a multiple of %u",
                              file->path, (unsigned long long)request->length, NVME_BLOCK_BYTES);
    }
    return engine->stopping ? ferry_fail(FERRY_ERR_CANCELLED, "the I/O engine is shutting down")
                            : FERRY_OK;
}

/* Hot path. */
ferry_status nvme_submit(nvme_engine *engine, nvme_request *request) {
    pthread_mutex_lock(&engine->mutex);
    const nvme_file_entry *file = file_entry(engine, request->file);
    ferry_status status = check_request(engine, request, file);
    if (status != FERRY_OK) {
        pthread_mutex_unlock(&engine->mutex);
        return status;
    }
    uint64_t valid = request->length;
    if (!request->is_write && request->offset + valid > file->bytes)
        valid = file->bytes - request->offset;
    memset(&request->internal, 0, sizeof request->internal);
    request->internal.valid_bytes = valid;
    request->internal.transfer_bytes = file->direct ? round_up_block(valid) : valid;
    request->internal.queued = 1;
    request->status = FERRY_OK;
    request->bytes_done = 0;
    request->error[0] = '\0';
    request->submit_ns = ferry_now_ns();
    request->complete_ns = 0;
    if (engine->queue_tail)
        engine->queue_tail->internal.next = request;
    else
        engine->queue_head = request;
    engine->queue_tail = request;
    pthread_mutex_unlock(&engine->mutex);
    engine->backend->wake(engine);
    return FERRY_OK;
}

int nvme_request_done(const nvme_request *request) {
    return __atomic_load_n(&request->internal.done, __ATOMIC_ACQUIRE);
}

ferry_status nvme_wait(nvme_engine *engine, nvme_request *request) {
    pthread_mutex_lock(&engine->mutex);
    while (!nvme_request_done(request)) pthread_cond_wait(&engine->done_cond, &engine->mutex);
    pthread_mutex_unlock(&engine->mutex);
    if (request->status != FERRY_OK)
        return ferry_fail(request->status, "%s",
                          request->error[0] ? request->error : ferry_status_str(request->status));
    return FERRY_OK;
}

static void unlink_queued(nvme_engine *engine, nvme_request *request) {
    nvme_request *previous = NULL;
    for (nvme_request *r = engine->queue_head; r; previous = r, r = r->internal.next) {
        if (r != request) continue;
        if (previous)
            previous->internal.next = r->internal.next;
        else
            engine->queue_head = r->internal.next;
        if (engine->queue_tail == r) engine->queue_tail = previous;
        break;
    }
    request->internal.queued = 0;
}

void nvme_cancel(nvme_engine *engine, nvme_request *request) {
    nvme_request *finished = NULL;
    pthread_mutex_lock(&engine->mutex);
    if (!nvme_request_done(request) && !request->internal.cancelled) {
        request->internal.cancelled = 1;
        if (request->internal.queued) unlink_queued(engine, request);
        if (request->internal.chunks_in_flight == 0) finish_request(engine, request, &finished);
    }
    pthread_mutex_unlock(&engine->mutex);
    nvme_core_deliver(engine, finished);
}

ferry_status nvme_read_sync(nvme_engine *engine, int file, uint64_t offset, uint64_t length,
                            void *buffer, uint64_t *out_bytes_read) {
    nvme_request request;
    memset(&request, 0, sizeof request);
    request.file = file;
    request.offset = offset;
    request.length = length;
    request.buffer = buffer;
    if (out_bytes_read) *out_bytes_read = 0;
    FERRY_TRY(nvme_submit(engine, &request));
    FERRY_TRY(nvme_wait(engine, &request));
    if (out_bytes_read) *out_bytes_read = request.bytes_done;
    return FERRY_OK;
}

/* ------------------------------------------- completion accounting */

/* Mutex held.  Requests with a callback go on *finished for delivery;
 * the rest are only marked done (a poller may reuse them at once). */
static void finish_request(nvme_engine *engine, nvme_request *request, nvme_request **finished) {
    if (request->internal.failed)
        request->status = FERRY_ERR_IO;
    else if (request->internal.cancelled)
        request->status = FERRY_ERR_CANCELLED;
    else
        request->status = FERRY_OK;
    if (request->status == FERRY_ERR_CANCELLED)
        snprintf(request->error, sizeof request->error, "%s: %s at offset %llu cancelled",
                 engine->files[request->file].path, request->is_write ? "write" : "read",
                 (unsigned long long)request->offset);
    request->bytes_done = request->status == FERRY_OK ? request->internal.valid_bytes : 0;
    request->complete_ns = ferry_now_ns();
    if (request->on_done) {
        request->internal.next = *finished;
        *finished = request;
    }
    __atomic_store_n(&request->internal.done, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&engine->done_cond);
}

static void fail_request(nvme_engine *engine, nvme_request *request, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_request(nvme_engine *engine, nvme_request *request, const char *fmt, ...) {
    if (!request->internal.failed) {
        va_list args;
        va_start(args, fmt);
        vsnprintf(request->error, sizeof request->error, fmt, args);
        va_end(args);
    }
    request->internal.failed = 1;
    if (request->internal.queued) unlink_queued(engine, request);
}

nvme_chunk *nvme_core_next_chunk(nvme_engine *engine) {
    nvme_request *request = engine->queue_head;
    nvme_chunk *chunk = engine->free_chunks;
    if (!request || !chunk) return NULL;
    engine->free_chunks = chunk->next;
    uint64_t left = request->internal.transfer_bytes - request->internal.issued_bytes;
    uint64_t length = left < engine->options.chunk_bytes ? left : engine->options.chunk_bytes;
    chunk->request = request;
    chunk->request_offset = request->internal.issued_bytes;
    chunk->length = (uint32_t)length;
    chunk->retries = 0;
    chunk->next = NULL;
    request->internal.issued_bytes += length;
    request->internal.chunks_in_flight++;
    engine->n_chunks_in_flight++;
    if (request->internal.issued_bytes == request->internal.transfer_bytes) {
        engine->queue_head = request->internal.next;
        if (!engine->queue_head) engine->queue_tail = NULL;
        request->internal.queued = 0;
    }
    return chunk;
}

int32_t nvme_core_filter_result(nvme_engine *engine, nvme_chunk *chunk, int32_t result) {
    if (!engine->options.inject_fault) return result;
    return engine->options.inject_fault(engine->options.fault_user, nvme_chunk_file_offset(chunk),
                                        chunk->length, result);
}

/* Is the transfer of this chunk complete after `result` bytes, needing a
 * resend (1, chunk advanced), or failed (request marked)? */
static int account_result(nvme_engine *engine, nvme_chunk *chunk, int32_t result) {
    nvme_request *request = chunk->request;
    const nvme_file_entry *file = &engine->files[request->file];
    uint64_t file_offset = nvme_chunk_file_offset(chunk);
    const char *op = request->is_write ? "write" : "read";
    if (request->internal.failed || request->internal.cancelled) return 0;
    if (result == -EAGAIN || result == -EINTR) {
        if (++chunk->retries <= NVME_MAX_RETRIES) return 1;
        fail_request(engine, request, "%s: %s at offset %llu still failing after %d retries: %s",
                     file->path, op, (unsigned long long)file_offset, NVME_MAX_RETRIES,
                     strerror(-result));
        return 0;
    }
    if (result < 0) {
        fail_request(engine, request, "%s: %s of %u bytes at offset %llu failed: %s", file->path,
                     op, chunk->length, (unsigned long long)file_offset, strerror(-result));
        return 0;
    }
    if ((uint32_t)result >= chunk->length) return 0;
    /* Short transfer.  A read that reached the end of the file is the
     * O_DIRECT tail (the last block was read whole and the kernel stopped
     * at EOF); anything else is resent from where it stopped. */
    if (!request->is_write && file_offset + (uint64_t)result >= file->bytes) return 0;
    if (result == 0 && !request->is_write) {
        fail_request(engine, request,
                     "%s: unexpected end of file at offset %llu (the file was %llu bytes when "
                     "opened; did it shrink?)",
                     file->path, (unsigned long long)file_offset, (unsigned long long)file->bytes);
        return 0;
    }
    /* O_DIRECT resends must stay block aligned: re-read the partial block. */
    uint32_t progress = (uint32_t)result;
    if (file->direct) progress &= ~(NVME_BLOCK_BYTES - 1u);
    if (progress == 0 && ++chunk->retries > NVME_MAX_RETRIES) {
        fail_request(engine, request, "%s: %s at offset %llu makes no progress (%d short %ss)",
                     file->path, op, (unsigned long long)file_offset, NVME_MAX_RETRIES, op);
        return 0;
    }
    chunk->request_offset += progress;
    chunk->length -= progress;
    return 1;
}

int nvme_core_complete(nvme_engine *engine, nvme_chunk *chunk, int32_t result,
                       nvme_request **finished) {
    if (account_result(engine, chunk, result)) return 1;
    nvme_request *request = chunk->request;
    chunk->request = NULL;
    chunk->next = engine->free_chunks;
    engine->free_chunks = chunk;
    engine->n_chunks_in_flight--;
    request->internal.chunks_in_flight--;
    if (request->internal.chunks_in_flight == 0 && !request->internal.queued)
        finish_request(engine, request, finished);
    return 0;
}

void nvme_core_deliver(nvme_engine *engine, nvme_request *finished) {
    (void)engine;
    while (finished) {
        nvme_request *next = finished->internal.next;   /* the callback may resubmit it */
        finished->on_done(finished, finished->user);
        finished = next;
    }
}

void nvme_core_deliver_unlocked(nvme_engine *engine, nvme_request *finished) {
    if (!finished) return;
    pthread_mutex_unlock(&engine->mutex);
    nvme_core_deliver(engine, finished);
    pthread_mutex_lock(&engine->mutex);
}
