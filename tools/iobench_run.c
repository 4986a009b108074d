/*
 * iobench_run.c — one `ferry iobench` configuration: one nvme/ engine per
 * thread, each keeping queue_depth transfers of block_bytes in flight over
 * its share of the target (sequential, random or writes), resubmitting
 * from the completion callback.  Latencies go into a log-linear histogram
 * (1.6% resolution), so a run of any length allocates nothing per I/O.
 */
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "tools/iobench.h"

/* Latency histogram: values below 64 ns exactly, above that 64 buckets per
 * power of two up to 2^42 ns (73 minutes). */
enum { SUB_BITS = 6, SUB_BUCKETS = 1 << SUB_BITS, MAX_EXPONENT = 42 };
enum { N_BUCKETS = SUB_BUCKETS * (MAX_EXPONENT - SUB_BITS + 2) };

static int bucket_of(uint64_t ns) {
    if (ns < SUB_BUCKETS) return (int)ns;
    int exponent = 63 - __builtin_clzll(ns);
    if (exponent > MAX_EXPONENT) return N_BUCKETS - 1;
    int sub = (int)((ns >> (exponent - SUB_BITS)) & (SUB_BUCKETS - 1));
    return (exponent - SUB_BITS + 1) * SUB_BUCKETS + sub;
}

/* Middle of a bucket's range, in ns. */
static double bucket_value(int bucket) {
    if (bucket < SUB_BUCKETS) return bucket;
    int exponent = bucket / SUB_BUCKETS - 1 + SUB_BITS;
    int sub = bucket % SUB_BUCKETS;
    double low = ldexp(1.0, exponent) * (1.0 + (double)sub / SUB_BUCKETS);
    return low + ldexp(1.0, exponent - SUB_BITS) / 2;
}

typedef struct run_state run_state;

typedef struct worker {
    run_state *run;
    nvme_engine *engine;
    int file;
    nvme_buffer buffer;
    nvme_request *requests;     /* [queue_depth] */
    iobench_segment *segments;  /* this thread's share */
    int n_segments;
    pthread_mutex_t cursor_lock;
    int cursor_segment;
    uint64_t cursor_offset;
    uint64_t random_ios_left;
    uint64_t rng;
    int active;                 /* requests in flight */
} worker;

struct run_state {
    const iobench_config *config;
    uint64_t slot_bytes;
    uint64_t start_ns, deadline_ns, end_ns;
    uint64_t bytes_done, ios_done;
    uint64_t histogram[N_BUCKETS];
    int active_workers;
    int stop;
    pthread_mutex_t error_lock;
    ferry_status error_status;
    char error[512];
};

static uint64_t next_random(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The next transfer of this worker, or 0 when its pass is over. */
static int next_io(worker *w, uint64_t *offset, uint64_t *length) {
    const iobench_config *config = w->run->config;
    uint64_t block = config->block_bytes;
    int more = 0;
    pthread_mutex_lock(&w->cursor_lock);
    if (w->n_segments == 0) goto done;
    if (config->mode == IOBENCH_RANDREAD) {
        if (config->runtime_seconds == 0 && w->random_ios_left == 0) goto done;
        w->random_ios_left--;
        const iobench_segment *segment = &w->segments[next_random(&w->rng) % (uint64_t)w->n_segments];
        uint64_t n_blocks = (segment->bytes + block - 1) / block;
        uint64_t start = (next_random(&w->rng) % n_blocks) * block;
        *offset = segment->offset + start;
        *length = segment->bytes - start < block ? segment->bytes - start : block;
        more = 1;
        goto done;
    }
    for (int wrapped = 0; wrapped < 2 && !more; wrapped++) {
        while (w->cursor_segment < w->n_segments) {
            const iobench_segment *segment = &w->segments[w->cursor_segment];
            if (w->cursor_offset < segment->bytes) {
                uint64_t left = segment->bytes - w->cursor_offset;
                *offset = segment->offset + w->cursor_offset;
                *length = left < block ? left : block;
                w->cursor_offset += *length;
                more = 1;
                break;
            }
            w->cursor_segment++;
            w->cursor_offset = 0;
        }
        if (more || config->runtime_seconds == 0) break;
        w->cursor_segment = 0;   /* timed runs go round again */
        w->cursor_offset = 0;
    }
done:
    pthread_mutex_unlock(&w->cursor_lock);
    return more;
}

static void record_error(run_state *run, ferry_status status, const char *message) {
    pthread_mutex_lock(&run->error_lock);
    if (run->error_status == FERRY_OK) {
        run->error_status = status;
        snprintf(run->error, sizeof run->error, "%s", message);
    }
    __atomic_store_n(&run->stop, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&run->error_lock);
}

static void retire(worker *w) {
    if (__atomic_sub_fetch(&w->active, 1, __ATOMIC_ACQ_REL) != 0) return;
    run_state *run = w->run;
    uint64_t now = ferry_now_ns();
    if (__atomic_sub_fetch(&run->active_workers, 1, __ATOMIC_ACQ_REL) == 0)
        __atomic_store_n(&run->end_ns, now, __ATOMIC_RELEASE);
}

/* Completion callback, on an engine thread: account, then reuse the slot. */
static void on_transfer_done(nvme_request *request, void *user) {
    worker *w = user;
    run_state *run = w->run;
    if (request->status != FERRY_OK) {
        record_error(run, request->status, request->error);
    } else {
        __atomic_fetch_add(&run->bytes_done, request->bytes_done, __ATOMIC_RELAXED);
        __atomic_fetch_add(&run->ios_done, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&run->histogram[bucket_of(request->complete_ns - request->submit_ns)], 1,
                           __ATOMIC_RELAXED);
    }
    int more = !__atomic_load_n(&run->stop, __ATOMIC_RELAXED) &&
               (run->deadline_ns == 0 || request->complete_ns < run->deadline_ns) &&
               next_io(w, &request->offset, &request->length);
    if (more) {
        ferry_status status = nvme_submit(w->engine, request);
        if (status == FERRY_OK) return;
        record_error(run, status, ferry_last_error());
    }
    retire(w);
}

/* Split the target among the threads: one file in contiguous pieces,
 * a model's extents round-robin (each thread reads whole layers). */
static ferry_status share_segments(const iobench_target *target, const iobench_config *config,
                                   int thread, worker *w) {
    int threads = config->n_threads;
    FERRY_TRY(ferry_calloc((size_t)target->n_segments, sizeof *w->segments, "iobench segments",
                           (void **)&w->segments));
    uint64_t align = config->mode == IOBENCH_WRITE && config->direct ? NVME_BLOCK_BYTES : 1;
    if (target->n_segments == 1) {
        uint64_t total = target->segments[0].bytes / align * align;
        uint64_t piece = total / (uint64_t)threads / config->block_bytes * config->block_bytes;
        uint64_t start = piece * (uint64_t)thread;
        uint64_t bytes = thread == threads - 1 ? total - start : piece;
        if (bytes > 0) {
            w->segments[0].offset = target->segments[0].offset + start;
            w->segments[0].bytes = bytes;
            w->n_segments = 1;
        }
    } else {
        for (int i = thread; i < target->n_segments; i += threads)
            w->segments[w->n_segments++] = target->segments[i];
    }
    uint64_t share = 0;
    for (int i = 0; i < w->n_segments; i++) share += w->segments[i].bytes;
    w->random_ios_left = (share + config->block_bytes - 1) / config->block_bytes;
    return FERRY_OK;
}

static void forward_note(void *user, const char *message) {
    const iobench_hooks *hooks = user;
    if (hooks && hooks->on_note) hooks->on_note(hooks->user, message);
}

static ferry_status start_worker(const iobench_target *target, const iobench_config *config,
                                 const iobench_hooks *hooks, int thread, worker *w) {
    run_state *run = w->run;
    pthread_mutex_init(&w->cursor_lock, NULL);
    FERRY_TRY(share_segments(target, config, thread, w));
    w->rng = 0x5eed0000ull + (uint64_t)thread * 7919u + ferry_now_ns();
    nvme_options options = nvme_options_default();
    options.queue_depth = config->queue_depth;
    options.chunk_bytes = run->slot_bytes;
    options.numa_node = nvme_numa_node_of_path(target->path);
    options.on_note = forward_note;
    options.note_user = (void *)hooks;
    FERRY_TRY(nvme_engine_open(&options, &w->engine));
    int flags = (config->direct ? 0 : NVME_FILE_BUFFERED) |
                (config->mode == IOBENCH_WRITE ? NVME_FILE_WRITE : 0);
    FERRY_TRY(nvme_file_open(w->engine, target->path, flags, &w->file));
    uint64_t slots = (uint64_t)config->queue_depth;
    FERRY_TRY(nvme_buffer_alloc(slots * run->slot_bytes, options.numa_node, &w->buffer));
    uint8_t *memory = w->buffer.data;
    if (config->mode == IOBENCH_WRITE)   /* data that no layer can compress away */
        for (uint64_t i = 0; i < slots * run->slot_bytes; i += 8) {
            uint64_t word = next_random(&w->rng);
            memcpy(memory + i, &word, 8);
        }
    for (uint64_t i = 0; i < slots; i++)
        FERRY_TRY(nvme_register_buffer(w->engine, memory + i * run->slot_bytes, run->slot_bytes));
    FERRY_TRY(ferry_calloc(slots, sizeof *w->requests, "iobench requests",
                           (void **)&w->requests));
    for (uint64_t i = 0; i < slots; i++) {
        w->requests[i].file = w->file;
        w->requests[i].is_write = config->mode == IOBENCH_WRITE;
        w->requests[i].buffer = memory + i * run->slot_bytes;
        w->requests[i].on_done = on_transfer_done;
        w->requests[i].user = w;
    }
    return FERRY_OK;
}

static void stop_worker(worker *w) {
    nvme_engine_close(w->engine);
    nvme_buffer_free(&w->buffer);
    free(w->requests);
    free(w->segments);
    pthread_mutex_destroy(&w->cursor_lock);
}

static double percentile_us(const run_state *run, double fraction) {
    uint64_t total = 0;
    for (int i = 0; i < N_BUCKETS; i++) total += run->histogram[i];
    if (total == 0) return 0;
    uint64_t rank = (uint64_t)ceil(fraction * (double)total), seen = 0;
    for (int i = 0; i < N_BUCKETS; i++) {
        seen += run->histogram[i];
        if (seen >= rank && run->histogram[i]) return bucket_value(i) / 1000.0;
    }
    return bucket_value(N_BUCKETS - 1) / 1000.0;
}

/* Buffered runs start cold: ask the kernel to drop this file's clean pages. */
static void drop_cached_pages(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

ferry_status iobench_run(const iobench_target *target, const iobench_config *config,
                         const iobench_hooks *hooks, iobench_result *out) {
    memset(out, 0, sizeof *out);
    ferry_status status = FERRY_OK;
    run_state *run = NULL;
    worker *workers = NULL;
    int n_started = 0;
    FERRY_TRY(ferry_calloc(1, sizeof *run, "iobench run", (void **)&run));
    run->config = config;
    run->slot_bytes = (config->block_bytes + NVME_BLOCK_BYTES - 1) / NVME_BLOCK_BYTES *
                      NVME_BLOCK_BYTES;
    pthread_mutex_init(&run->error_lock, NULL);
    FERRY_TRY_GOTO(ferry_calloc((size_t)config->n_threads, sizeof *workers, "iobench workers",
                                (void **)&workers));
    if (!config->direct && config->mode != IOBENCH_WRITE) drop_cached_pages(target->path);
    for (; n_started < config->n_threads; n_started++) {
        workers[n_started].run = run;
        FERRY_TRY_GOTO(start_worker(target, config, hooks, n_started, &workers[n_started]));
    }
    snprintf(out->backend, sizeof out->backend, "%s", nvme_engine_backend(workers[0].engine));

    /* Give every worker its first queue_depth transfers, then let the
     * callbacks keep the queues full. */
    run->active_workers = config->n_threads;
    run->start_ns = ferry_now_ns();
    if (config->runtime_seconds > 0)
        run->deadline_ns = run->start_ns + (uint64_t)(config->runtime_seconds * 1e9);
    for (int t = 0; t < config->n_threads; t++) {
        worker *w = &workers[t];
        w->active = config->queue_depth + 1;   /* +1: held until all are submitted */
        for (int i = 0; i < config->queue_depth; i++) {
            nvme_request *request = &w->requests[i];
            if (__atomic_load_n(&run->stop, __ATOMIC_RELAXED) ||
                !next_io(w, &request->offset, &request->length)) {
                retire(w);
                continue;
            }
            ferry_status submitted = nvme_submit(w->engine, request);
            if (submitted != FERRY_OK) {
                record_error(run, submitted, ferry_last_error());
                retire(w);
            }
        }
        retire(w);
    }
    while (__atomic_load_n(&run->active_workers, __ATOMIC_ACQUIRE) > 0) {
        usleep(20000);
        if (hooks && hooks->on_progress)
            hooks->on_progress(hooks->user, __atomic_load_n(&run->bytes_done, __ATOMIC_RELAXED),
                               (double)(ferry_now_ns() - run->start_ns) / 1e9);
    }
    if (run->error_status != FERRY_OK) {
        status = ferry_fail(run->error_status, "%s", run->error);
        goto fail;
    }
    uint64_t end_ns = __atomic_load_n(&run->end_ns, __ATOMIC_ACQUIRE);
    out->seconds = (double)(end_ns - run->start_ns) / 1e9;
    out->bytes = run->bytes_done;
    if (out->seconds > 0) {
        out->gbps = (double)run->bytes_done / out->seconds / 1e9;
        out->iops = (double)run->ios_done / out->seconds;
    }
    out->lat_p50_us = percentile_us(run, 0.50);
    out->lat_p99_us = percentile_us(run, 0.99);
    out->lat_p999_us = percentile_us(run, 0.999);
fail:
    for (int t = 0; workers && t < config->n_threads; t++)
        if (workers[t].run) stop_worker(&workers[t]);
    free(workers);
    pthread_mutex_destroy(&run->error_lock);
    free(run);
    return status;
}
