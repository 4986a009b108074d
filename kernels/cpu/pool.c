/*
 * pool.c — the CPU backend's worker threads.  Workers are created once with
 * the backend and sleep on a condition variable between jobs.  A job is a
 * function over a range of items, cut into chunks that threads claim from
 * an atomic counter: the caller works too, and never waits for a worker
 * that has not woken up yet (on a busy machine it may simply do every
 * chunk itself).  Which thread computes an item never changes its result.
 * Hot path: cpu_pool_run allocates nothing.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "kernels/cpu/cpu.h"

/* Chunks per thread a job is cut into (balance against claim overhead). */
enum { CHUNKS_PER_THREAD = 4 };

struct cpu_pool {
    int n_threads;              /* including the caller of cpu_pool_run */
    int n_workers_started;
    pthread_t *workers;         /* n_threads - 1 background threads */
    pthread_mutex_t run_lock;   /* one job at a time */
    pthread_mutex_t lock;       /* guards the fields below up to the job */
    pthread_cond_t job_ready;
    pthread_cond_t job_left;
    uint64_t generation;        /* bumped for each job */
    int job_open;               /* workers may still join the current job */
    int n_inside;               /* workers that joined it and have not left */
    int stopping;
    /* the current job; written by the caller before it opens the job */
    cpu_task_fn task;
    void *job;
    int n_items;
    int chunk_items;
    int n_chunks;
    atomic_int next_chunk;      /* next chunk to claim */
};

/* Claim and run chunks until none are left. */
static void run_chunks(cpu_pool *pool) {
    for (;;) {
        int chunk = atomic_fetch_add_explicit(&pool->next_chunk, 1, memory_order_relaxed);
        if (chunk >= pool->n_chunks) return;
        int begin = chunk * pool->chunk_items;
        int end = begin + pool->chunk_items < pool->n_items ? begin + pool->chunk_items
                                                            : pool->n_items;
        pool->task(pool->job, begin, end);
    }
}

static void *worker_main(void *arg) {
    cpu_pool *pool = arg;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (pool->generation == seen && !pool->stopping)
            pthread_cond_wait(&pool->job_ready, &pool->lock);
        if (pool->stopping) break;
        seen = pool->generation;
        /* A job already closed (the caller did it all) is skipped. */
        if (!pool->job_open) continue;
        pool->n_inside++;
        pthread_mutex_unlock(&pool->lock);
        run_chunks(pool);
        pthread_mutex_lock(&pool->lock);
        if (--pool->n_inside == 0) pthread_cond_signal(&pool->job_left);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

ferry_status cpu_pool_new(int n_threads, cpu_pool **out) {
    *out = NULL;
    if (n_threads < 0 || n_threads > 1024)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "cpu backend: bad thread count %d (expected 0..1024, 0 = one per core)",
                          n_threads);
    if (n_threads == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = online > 0 ? (int)(online < 256 ? online : 256) : 1;
    }
    cpu_pool *pool = NULL;
    ferry_status status = ferry_calloc(1, sizeof *pool, "cpu thread pool", (void **)&pool);
    if (status != FERRY_OK) return status;
    pool->n_threads = n_threads;
    atomic_init(&pool->next_chunk, 0);
    pthread_mutex_init(&pool->run_lock, NULL);
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->job_ready, NULL);
    pthread_cond_init(&pool->job_left, NULL);
    if (n_threads > 1) {
        FERRY_TRY_GOTO(ferry_calloc((size_t)n_threads - 1, sizeof *pool->workers,
                                    "cpu worker threads", (void **)&pool->workers));
    }
    for (int i = 1; i < n_threads; i++) {
        int rc = pthread_create(&pool->workers[i - 1], NULL, worker_main, pool);
        if (rc != 0) {
            status = ferry_fail(FERRY_ERR_NO_MEMORY,
                                "cpu backend: cannot start worker thread %d of %d (error %d)", i,
                                n_threads, rc);
            goto fail;
        }
        pool->n_workers_started++;
    }
    *out = pool;
    return FERRY_OK;
fail:
    cpu_pool_free(pool);
    return status;
}

void cpu_pool_free(cpu_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->lock);
    pool->stopping = 1;
    pthread_cond_broadcast(&pool->job_ready);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->n_workers_started; i++) pthread_join(pool->workers[i], NULL);
    pthread_cond_destroy(&pool->job_left);
    pthread_cond_destroy(&pool->job_ready);
    pthread_mutex_destroy(&pool->lock);
    pthread_mutex_destroy(&pool->run_lock);
    free(pool->workers);
    free(pool);
}

int cpu_pool_n_threads(const cpu_pool *pool) { return pool->n_threads; }

void cpu_pool_run(cpu_pool *pool, int n_items, int min_items_per_thread, cpu_task_fn task,
                  void *job) {
    if (n_items <= 0) return;
    if (min_items_per_thread < 1) min_items_per_thread = 1;
    if (pool->n_threads == 1 || n_items < 2 * min_items_per_thread) {
        task(job, 0, n_items);
        return;
    }
    /* chunk size: about CHUNKS_PER_THREAD chunks per thread, never below
     * the job's minimum */
    int64_t wanted_chunks = (int64_t)pool->n_threads * CHUNKS_PER_THREAD;
    int chunk_items = (int)(((int64_t)n_items + wanted_chunks - 1) / wanted_chunks);
    if (chunk_items < min_items_per_thread) chunk_items = min_items_per_thread;

    pthread_mutex_lock(&pool->run_lock);
    pthread_mutex_lock(&pool->lock);
    pool->task = task;
    pool->job = job;
    pool->n_items = n_items;
    pool->chunk_items = chunk_items;
    pool->n_chunks = (int)(((int64_t)n_items + chunk_items - 1) / chunk_items);
    atomic_store_explicit(&pool->next_chunk, 0, memory_order_relaxed);
    pool->job_open = 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->job_ready);
    pthread_mutex_unlock(&pool->lock);

    run_chunks(pool);

    /* Every chunk is claimed; wait for the workers still computing theirs,
     * then close the job so late wakers skip it. */
    pthread_mutex_lock(&pool->lock);
    while (pool->n_inside > 0) pthread_cond_wait(&pool->job_left, &pool->lock);
    pool->job_open = 0;
    pthread_mutex_unlock(&pool->lock);
    pthread_mutex_unlock(&pool->run_lock);
}
