/*
 * pool.c — the CPU backend's worker threads.  Workers are created once with
 * the backend and sleep on a condition variable between jobs; a job is a
 * function plus a range of items that is cut into one contiguous piece per
 * thread.  Hot path: cpu_pool_run allocates nothing.
 */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "kernels/cpu/cpu.h"

struct cpu_pool {
    int n_threads;              /* including the caller of cpu_pool_run */
    int n_workers_started;
    pthread_t *workers;         /* n_threads - 1 background threads */
    pthread_mutex_t run_lock;   /* one job at a time */
    pthread_mutex_t lock;       /* guards everything below */
    pthread_cond_t job_ready;
    pthread_cond_t job_done;
    uint64_t generation;        /* bumped for each job */
    int n_busy;                 /* workers still running the current job */
    int stopping;
    cpu_task_fn task;
    void *job;
    int n_items;
};

typedef struct worker_start {
    cpu_pool *pool;
    int index;                  /* 1 .. n_threads-1; the caller is 0 */
} worker_start;

/* Thread `index` of n takes items [n_items*index/n, n_items*(index+1)/n). */
static void run_share(cpu_pool *pool, cpu_task_fn task, void *job, int n_items, int index) {
    int64_t begin = (int64_t)n_items * index / pool->n_threads;
    int64_t end = (int64_t)n_items * (index + 1) / pool->n_threads;
    if (end > begin) task(job, (int)begin, (int)end);
}

static void *worker_main(void *arg) {
    worker_start start = *(worker_start *)arg;
    free(arg);
    cpu_pool *pool = start.pool;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (pool->generation == seen && !pool->stopping)
            pthread_cond_wait(&pool->job_ready, &pool->lock);
        if (pool->stopping) break;
        seen = pool->generation;
        cpu_task_fn task = pool->task;
        void *job = pool->job;
        int n_items = pool->n_items;
        pthread_mutex_unlock(&pool->lock);
        run_share(pool, task, job, n_items, start.index);
        pthread_mutex_lock(&pool->lock);
        if (--pool->n_busy == 0) pthread_cond_signal(&pool->job_done);
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
    pthread_mutex_init(&pool->run_lock, NULL);
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->job_ready, NULL);
    pthread_cond_init(&pool->job_done, NULL);
    if (n_threads > 1) {
        FERRY_TRY_GOTO(ferry_calloc((size_t)n_threads - 1, sizeof *pool->workers,
                                    "cpu worker threads", (void **)&pool->workers));
    }
    for (int i = 1; i < n_threads; i++) {
        worker_start *start = malloc(sizeof *start);
        if (!start) {
            status = ferry_fail(FERRY_ERR_NO_MEMORY, "cpu backend: out of memory");
            goto fail;
        }
        *start = (worker_start){pool, i};
        int rc = pthread_create(&pool->workers[i - 1], NULL, worker_main, start);
        if (rc != 0) {
            free(start);
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
    pthread_cond_destroy(&pool->job_done);
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
    pthread_mutex_lock(&pool->run_lock);
    pthread_mutex_lock(&pool->lock);
    pool->task = task;
    pool->job = job;
    pool->n_items = n_items;
    pool->n_busy = pool->n_threads - 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->job_ready);
    pthread_mutex_unlock(&pool->lock);

    run_share(pool, task, job, n_items, 0);

    pthread_mutex_lock(&pool->lock);
    while (pool->n_busy > 0) pthread_cond_wait(&pool->job_done, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
    pthread_mutex_unlock(&pool->run_lock);
}
