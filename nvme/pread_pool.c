/*
 * pread_pool.c — the fallback backend when io_uring is unavailable: a pool
 * of threads, each taking the next chunk from engine.c and moving it with
 * pread/pwrite.  Queue depth is the number of threads.  Correctness
 * (short reads, retries, errors) lives in engine.c, shared with io_uring.
 */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "nvme/backend.h"

typedef struct pread_state {
    pthread_t *threads;
    int n_started;
    pthread_cond_t work_cond;   /* with engine->mutex: new work or stopping */
} pread_state;

static int32_t transfer(const nvme_file_entry *file, const nvme_chunk *chunk) {
    ssize_t result = chunk->request->is_write
                         ? pwrite(file->fd, nvme_chunk_memory(chunk), chunk->length,
                                  (off_t)nvme_chunk_file_offset(chunk))
                         : pread(file->fd, nvme_chunk_memory(chunk), chunk->length,
                                 (off_t)nvme_chunk_file_offset(chunk));
    return result < 0 ? -errno : (int32_t)result;
}

static void *worker(void *arg) {
    nvme_engine *engine = arg;
    pread_state *state = engine->backend_state;
    nvme_bind_thread_to_node(engine->options.numa_node);
    pthread_mutex_lock(&engine->mutex);
    for (;;) {
        nvme_chunk *chunk = nvme_core_next_chunk(engine);
        if (!chunk) {
            if (engine->stopping) break;
            pthread_cond_wait(&state->work_cond, &engine->mutex);
            continue;
        }
        int resend = 1;
        while (resend) {
            const nvme_file_entry *file = &engine->files[chunk->request->file];
            pthread_mutex_unlock(&engine->mutex);
            int32_t result = transfer(file, chunk);
            pthread_mutex_lock(&engine->mutex);
            result = nvme_core_filter_result(engine, chunk, result);
            nvme_request *finished = NULL;
            resend = nvme_core_complete(engine, chunk, result, &finished);
            nvme_core_deliver_unlocked(engine, finished);
        }
    }
    pthread_mutex_unlock(&engine->mutex);
    return NULL;
}

static void pread_stop(nvme_engine *engine);

static ferry_status pread_start(nvme_engine *engine, char *reason, size_t reason_size) {
    (void)reason;
    (void)reason_size;
    pread_state *state = NULL;
    FERRY_TRY(ferry_calloc(1, sizeof *state, "pread pool", (void **)&state));
    engine->backend_state = state;
    pthread_cond_init(&state->work_cond, NULL);
    int n_threads = engine->options.n_pread_threads;
    ferry_status status = ferry_calloc((size_t)n_threads, sizeof *state->threads,
                                       "pread pool threads", (void **)&state->threads);
    if (status != FERRY_OK) goto fail;
    for (int i = 0; i < n_threads; i++) {
        if (pthread_create(&state->threads[i], NULL, worker, engine) != 0) {
            status = ferry_fail(FERRY_ERR_NO_MEMORY, "cannot start pread thread %d of %d", i,
                                n_threads);
            goto fail;
        }
        state->n_started++;
    }
    return FERRY_OK;
fail:
    pthread_mutex_lock(&engine->mutex);
    engine->stopping = 1;
    pthread_mutex_unlock(&engine->mutex);
    pread_stop(engine);
    return status;
}

static void pread_wake(nvme_engine *engine) {
    pread_state *state = engine->backend_state;
    pthread_cond_signal(&state->work_cond);
}

static void pread_stop(nvme_engine *engine) {
    pread_state *state = engine->backend_state;
    if (!state) return;
    pthread_mutex_lock(&engine->mutex);
    pthread_cond_broadcast(&state->work_cond);
    pthread_mutex_unlock(&engine->mutex);
    for (int i = 0; i < state->n_started; i++) pthread_join(state->threads[i], NULL);
    pthread_cond_destroy(&state->work_cond);
    free(state->threads);
    free(state);
    engine->backend_state = NULL;
}

const nvme_backend_ops nvme_pread_backend = {
    .name = "pread",
    .start = pread_start,
    .wake = pread_wake,
    .stop = pread_stop,
};
