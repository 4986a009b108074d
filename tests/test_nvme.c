/*
 * test_nvme.c — the nvme/ reader against pattern files in which every
 * 8-byte word holds its own file offset (xor a per-run salt), so any byte
 * read from the wrong place, twice or not at all is caught.  Each read
 * test runs on io_uring (skipped, with the reason, where the kernel lacks
 * it) and on the pread pool.  Faults come through the engine's test hook.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "helpers.h"
#include "nvme/nvme.h"

static uint64_t salt;
static char *scratch_dir;

static void setup(void) {
    uint64_t state = test_seed();
    salt = test_rand_u64(&state);
    scratch_dir = test_tempdir();
    cr_assert(scratch_dir, "cannot make a scratch directory");
    unsetenv("FERRY_NVME_FORCE");
}

static void teardown(void) {
    test_rmtree(scratch_dir);
    free(scratch_dir);
}

TestSuite(nvme, .init = setup, .fini = teardown);

static uint64_t pattern_word(uint64_t word_offset) { return word_offset ^ salt; }

static char *make_pattern_file(const char *name, uint64_t bytes) {
    char *path = test_path(scratch_dir, name);
    uint64_t padded = (bytes + 7) / 8 * 8;
    uint64_t *words = malloc(padded);
    cr_assert(words);
    for (uint64_t i = 0; i < padded / 8; i++) words[i] = pattern_word(i * 8);
    cr_assert_eq(test_write_file(path, words, bytes), 0, "cannot write %s", path);
    free(words);
    return path;
}

/* Every byte of data must be the pattern byte of file offset+i. */
static void check_pattern(const uint8_t *data, uint64_t file_offset, uint64_t bytes) {
    for (uint64_t i = 0; i < bytes; i++) {
        uint64_t position = file_offset + i;
        uint64_t word = pattern_word(position & ~7ull);
        uint8_t expected = (uint8_t)(word >> (8 * (position & 7)));
        if (data[i] != expected)
            cr_assert_fail("byte at file offset %llu is %02x, expected %02x",
                     (unsigned long long)position, data[i], expected);
    }
}

static void *poisoned_buffer(uint64_t bytes) {
    void *data = NULL;
    cr_assert_eq(posix_memalign(&data, NVME_BLOCK_BYTES, bytes), 0);
    memset(data, 0xA5, bytes);
    return data;
}

static nvme_engine *open_engine(nvme_options options, int use_pread) {
    options.force_pread = use_pread;
    nvme_engine *engine = NULL;
    cr_assert_eq(nvme_engine_open(&options, &engine), FERRY_OK, "%s", ferry_last_error());
    if (!use_pread && strcmp(nvme_engine_backend(engine), "io_uring") != 0) {
        char notes[512];
        snprintf(notes, sizeof notes, "%s", nvme_engine_notes(engine));
        nvme_engine_close(engine);
        cr_skip("io_uring unavailable on this machine: %s", notes);
    }
    return engine;
}

static nvme_options small_chunks(int queue_depth, uint64_t chunk_bytes) {
    nvme_options options = nvme_options_default();
    options.queue_depth = queue_depth;
    options.chunk_bytes = chunk_bytes;
    return options;
}

/* ----------------------------------------------------- byte exactness */

static void large_extent_is_byte_exact(int use_pread) {
    uint64_t bytes = (9u << 20) + 3 * 4096;
    char *path = make_pattern_file("large.bin", bytes);
    nvme_engine *engine = open_engine(small_chunks(8, 256 << 10), use_pread);
    int file = -1;
    cr_assert_eq(nvme_file_open(engine, path, 0, &file), FERRY_OK, "%s", ferry_last_error());
    uint8_t *buffer = poisoned_buffer(bytes);
    cr_assert_eq(nvme_register_buffer(engine, buffer, bytes), FERRY_OK);
    uint64_t got = 0;
    cr_assert_eq(nvme_read_sync(engine, file, 0, bytes, buffer, &got), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(got, bytes);
    check_pattern(buffer, 0, bytes);
    nvme_unregister_buffer(engine, buffer);
    nvme_engine_close(engine);
    free(buffer);
    free(path);
}
Test(nvme, uring_reads_a_large_extent_in_chunks_byte_exact) { large_extent_is_byte_exact(0); }
Test(nvme, pread_pool_reads_a_large_extent_in_chunks_byte_exact) { large_extent_is_byte_exact(1); }

static void odd_tail_reports_true_bytes(int use_pread) {
    uint64_t bytes = (1u << 20) + 1234;
    char *path = make_pattern_file("odd.bin", bytes);
    nvme_engine *engine = open_engine(small_chunks(4, 64 << 10), use_pread);
    int file = -1;
    cr_assert_eq(nvme_file_open(engine, path, 0, &file), FERRY_OK, "%s", ferry_last_error());
    /* The whole file: a length that is no multiple of the block size. */
    uint64_t capacity = nvme_transfer_bytes(engine, file, bytes);
    cr_assert_geq(capacity, bytes);
    uint8_t *buffer = poisoned_buffer(capacity);
    uint64_t got = 0;
    cr_assert_eq(nvme_read_sync(engine, file, 0, bytes, buffer, &got), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(got, bytes);
    check_pattern(buffer, 0, bytes);
    /* A read that runs past the end stops at the true end. */
    memset(buffer, 0xA5, capacity);
    cr_assert_eq(nvme_read_sync(engine, file, 1u << 20, 64 << 10, buffer, &got), FERRY_OK);
    cr_assert_eq(got, 1234);
    check_pattern(buffer, 1u << 20, 1234);
    nvme_engine_close(engine);
    free(buffer);
    free(path);
}
Test(nvme, uring_odd_sized_tail_reports_true_byte_count) { odd_tail_reports_true_bytes(0); }
Test(nvme, pread_pool_odd_sized_tail_reports_true_byte_count) { odd_tail_reports_true_bytes(1); }

static void random_extents_complete(int use_pread) {
    uint64_t bytes = 6u << 20;
    char *path = make_pattern_file("random.bin", bytes);
    nvme_engine *engine = open_engine(small_chunks(16, 128 << 10), use_pread);
    int file = -1;
    cr_assert_eq(nvme_file_open(engine, path, 0, &file), FERRY_OK, "%s", ferry_last_error());
    enum { N = 48 };
    nvme_request requests[N];
    uint8_t *buffers[N];
    uint64_t state = salt;
    memset(requests, 0, sizeof requests);
    for (int i = 0; i < N; i++) {
        uint64_t offset = (test_rand_u64(&state) % (bytes / 4096)) * 4096;
        uint64_t length = 1 + test_rand_u64(&state) % (700 << 10);
        buffers[i] = poisoned_buffer(nvme_transfer_bytes(engine, file, length));
        requests[i].file = file;
        requests[i].offset = offset;
        requests[i].length = length;
        requests[i].buffer = buffers[i];
        cr_assert_eq(nvme_submit(engine, &requests[i]), FERRY_OK, "%s", ferry_last_error());
    }
    for (int i = N - 1; i >= 0; i--) {   /* wait in reverse: any order works */
        cr_assert_eq(nvme_wait(engine, &requests[i]), FERRY_OK, "%s", ferry_last_error());
        uint64_t expected = requests[i].length;
        if (requests[i].offset + expected > bytes) expected = bytes - requests[i].offset;
        cr_assert_eq(requests[i].bytes_done, expected, "request %d", i);
        check_pattern(buffers[i], requests[i].offset, expected);
        free(buffers[i]);
    }
    nvme_engine_close(engine);
    free(path);
}
Test(nvme, uring_many_random_extents_all_land_byte_exact) { random_extents_complete(0); }
Test(nvme, pread_pool_many_random_extents_all_land_byte_exact) { random_extents_complete(1); }

Test(nvme, write_then_read_back_round_trips) {
    char *path = make_pattern_file("write.bin", 1u << 20);
    nvme_engine *engine = open_engine(small_chunks(4, 64 << 10), 0);
    int file = -1;
    cr_assert_eq(nvme_file_open(engine, path, NVME_FILE_WRITE, &file), FERRY_OK, "%s",
                 ferry_last_error());
    uint8_t *data = poisoned_buffer(256 << 10);
    uint64_t state = salt;
    for (size_t i = 0; i < (256 << 10); i++) data[i] = (uint8_t)test_rand_u64(&state);
    nvme_request request = {.file = file, .is_write = 1, .offset = 512 << 10,
                            .length = 256 << 10, .buffer = data};
    cr_assert_eq(nvme_submit(engine, &request), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(nvme_wait(engine, &request), FERRY_OK, "%s", ferry_last_error());
    uint8_t *back = poisoned_buffer(256 << 10);
    uint64_t got = 0;
    cr_assert_eq(nvme_read_sync(engine, file, 512 << 10, 256 << 10, back, &got), FERRY_OK);
    cr_assert_eq(got, 256u << 10);
    cr_assert_eq(memcmp(back, data, 256 << 10), 0);
    nvme_engine_close(engine);
    free(data);
    free(back);
    free(path);
}

/* -------------------------------------------------------- fallbacks */

typedef struct note_log {
    int count;
    char text[2048];
} note_log;

static void record_note(void *user, const char *message) {
    note_log *log = user;
    log->count++;
    size_t used = strlen(log->text);
    snprintf(log->text + used, sizeof log->text - used, "%s\n", message);
}

static nvme_options noted_options(note_log *log) {
    nvme_options options = small_chunks(4, 64 << 10);
    options.on_note = record_note;
    options.note_user = log;
    return options;
}

/* Read [0, bytes) of a pattern file (registering the buffer) and check it. */
static void read_and_check(nvme_engine *engine, int file, uint64_t bytes) {
    uint64_t capacity = nvme_transfer_bytes(engine, file, bytes);
    uint8_t *buffer = poisoned_buffer(capacity);
    cr_assert_eq(nvme_register_buffer(engine, buffer, capacity), FERRY_OK);
    uint64_t got = 0;
    cr_assert_eq(nvme_read_sync(engine, file, 0, bytes, buffer, &got), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(got, bytes);
    check_pattern(buffer, 0, bytes);
    nvme_unregister_buffer(engine, buffer);
    free(buffer);
}

Test(nvme, forced_pread_fallback_says_so_once_and_reads) {
    note_log log = {0};
    nvme_engine *engine = open_engine(noted_options(&log), 1);
    cr_assert_str_eq(nvme_engine_backend(engine), "pread");
    cr_assert(strstr(log.text, "io_uring unavailable"), "notes: %s", log.text);
    cr_assert_eq(log.count, 1, "notes: %s", log.text);
    cr_assert_str_eq(nvme_engine_notes(engine), log.text);
    nvme_engine_close(engine);
}

Test(nvme, environment_forces_every_fallback_and_reads_still_match) {
    setenv("FERRY_NVME_FORCE", "pread,buffered,unregistered", 1);
    note_log log = {0};
    char *path = make_pattern_file("env.bin", (2u << 20) + 77);
    nvme_options options = noted_options(&log);
    nvme_engine *engine = NULL;
    cr_assert_eq(nvme_engine_open(&options, &engine), FERRY_OK, "%s", ferry_last_error());
    cr_assert_str_eq(nvme_engine_backend(engine), "pread");
    int file = -1;
    cr_assert_eq(nvme_file_open(engine, path, 0, &file), FERRY_OK, "%s", ferry_last_error());
    cr_assert_not(nvme_file_is_direct(engine, file));
    cr_assert(strstr(log.text, "O_DIRECT off"), "notes: %s", log.text);
    read_and_check(engine, file, (2u << 20) + 77);
    /* An unaligned read is fine through the page cache. */
    uint8_t *buffer = poisoned_buffer(4096);
    uint64_t got = 0;
    cr_assert_eq(nvme_read_sync(engine, file, 4097, 333, buffer + 1, &got), FERRY_OK, "%s",
                 ferry_last_error());
    check_pattern(buffer + 1, 4097, 333);
    nvme_engine_close(engine);
    unsetenv("FERRY_NVME_FORCE");
    free(buffer);
    free(path);
}

Test(nvme, forced_buffered_io_on_uring_notes_and_reads) {
    note_log log = {0};
    char *path = make_pattern_file("buffered.bin", 1u << 20);
    nvme_options options = noted_options(&log);
    options.force_buffered = 1;
    nvme_engine *engine = open_engine(options, 0);
    int file = -1;
    cr_assert_eq(nvme_file_open(engine, path, 0, &file), FERRY_OK);
    cr_assert_eq(nvme_file_open(engine, path, 0, &file), FERRY_OK);   /* noted only once */
    cr_assert_eq(log.count, 1, "notes: %s", log.text);
    cr_assert_not(nvme_file_is_direct(engine, file));
    read_and_check(engine, file, 1u << 20);
    nvme_engine_close(engine);
    free(path);
}

Test(nvme, unregistered_buffer_fallback_notes_and_reads) {
    note_log log = {0};
    char *path = make_pattern_file("unreg.bin", 1u << 20);
    nvme_options options = noted_options(&log);
    options.force_unregistered = 1;
    nvme_engine *engine = open_engine(options, 0);
    cr_assert(strstr(log.text, "registered buffers off"), "notes: %s", log.text);
    int file = -1;
    cr_assert_eq(nvme_file_open(engine, path, 0, &file), FERRY_OK);
    read_and_check(engine, file, 1u << 20);
    cr_assert_eq(log.count, 1, "notes: %s", log.text);
    nvme_engine_close(engine);
    free(path);
}

Test(nvme, tmpfs_file_reads_with_or_without_o_direct) {
    if (access("/dev/shm", W_OK) != 0) cr_skip("no writable /dev/shm here");
    char path[64];
    snprintf(path, sizeof path, "/dev/shm/ferry-nvme-%d.bin", (int)getpid());
    uint64_t bytes = (1u << 20) + 5;
    uint8_t *data = malloc(bytes);
    for (uint64_t i = 0; i < bytes; i += 8) {
        uint64_t word = pattern_word(i);
        memcpy(data + i, &word, i + 8 <= bytes ? 8 : bytes - i);
    }
    cr_assert_eq(test_write_file(path, data, bytes), 0);
    free(data);
    note_log log = {0};
    nvme_engine *engine = open_engine(noted_options(&log), 0);
    int file = -1;
    cr_assert_eq(nvme_file_open(engine, path, 0, &file), FERRY_OK, "%s", ferry_last_error());
    /* Older kernels refuse O_DIRECT on tmpfs: then a note must say so. */
    if (!nvme_file_is_direct(engine, file))
        cr_assert(strstr(log.text, "refuses O_DIRECT"), "notes: %s", log.text);
    read_and_check(engine, file, bytes);
    nvme_engine_close(engine);
    unlink(path);
}

/* ---------------------------------------------------- injected faults */

typedef struct fault_plan {
    int calls;
    int mode;                   /* one of the enum below */
    uint64_t target_offset;
    int eagain_left;
} fault_plan;
enum { FAULT_SHORT_EVERY_OTHER, FAULT_EIO_AT, FAULT_EAGAIN_N, FAULT_EOF_AT, FAULT_SLOW };

static int32_t inject(void *user, uint64_t file_offset, uint32_t length, int32_t result) {
    fault_plan *plan = user;
    int call = __atomic_fetch_add(&plan->calls, 1, __ATOMIC_RELAXED);
    switch (plan->mode) {
    case FAULT_SHORT_EVERY_OTHER:
        /* Unaligned shortfalls too: O_DIRECT resends must realign. */
        return (call % 2 == 0 && result > 1) ? result / 3 + 1 : result;
    case FAULT_EIO_AT:
        return file_offset == plan->target_offset ? -EIO : result;
    case FAULT_EAGAIN_N:
        return __atomic_fetch_sub(&plan->eagain_left, 1, __ATOMIC_RELAXED) > 0 ? -EAGAIN : result;
    case FAULT_EOF_AT:
        return file_offset == plan->target_offset ? 0 : result;
    case FAULT_SLOW:
        usleep(20000);
        return result;
    }
    (void)length;
    return result;
}

static nvme_engine *faulty_engine(fault_plan *plan, int use_pread, int queue_depth) {
    nvme_options options = small_chunks(queue_depth, 64 << 10);
    options.inject_fault = inject;
    options.fault_user = plan;
    return open_engine(options, use_pread);
}

/* A pattern file, an engine with the fault hook, the file open and a
 * poisoned buffer for all of it. */
typedef struct faulty {
    char *path;
    nvme_engine *engine;
    int file;
    uint8_t *buffer;
    uint64_t bytes;
} faulty;

static faulty open_faulty(const char *name, uint64_t bytes, fault_plan *plan, int use_pread,
                          int queue_depth) {
    faulty f = {.path = make_pattern_file(name, bytes), .bytes = bytes};
    f.engine = faulty_engine(plan, use_pread, queue_depth);
    cr_assert_eq(nvme_file_open(f.engine, f.path, 0, &f.file), FERRY_OK, "%s", ferry_last_error());
    f.buffer = poisoned_buffer(nvme_transfer_bytes(f.engine, f.file, bytes));
    return f;
}

static ferry_status read_all(faulty *f) {
    return nvme_read_sync(f->engine, f->file, 0, f->bytes, f->buffer, NULL);
}

static void close_faulty(faulty *f) {
    nvme_engine_close(f->engine);
    free(f->buffer);
    free(f->path);
}

static void short_reads_resubmitted(int use_pread) {
    fault_plan plan = {.mode = FAULT_SHORT_EVERY_OTHER};
    faulty f = open_faulty("short.bin", (3u << 20) + 999, &plan, use_pread, 8);
    uint64_t got = 0;
    cr_assert_eq(nvme_read_sync(f.engine, f.file, 0, f.bytes, f.buffer, &got), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(got, f.bytes);
    check_pattern(f.buffer, 0, f.bytes);
    cr_assert_gt(plan.calls, (int)(f.bytes / (64 << 10)), "short reads were not resubmitted");
    close_faulty(&f);
}
Test(nvme, uring_short_reads_are_resubmitted) { short_reads_resubmitted(0); }
Test(nvme, pread_pool_short_reads_are_resubmitted) { short_reads_resubmitted(1); }

static void eio_reported(int use_pread) {
    fault_plan plan = {.mode = FAULT_EIO_AT, .target_offset = 1u << 20};
    faulty f = open_faulty("eio.bin", 2u << 20, &plan, use_pread, 4);
    cr_assert_eq(read_all(&f), FERRY_ERR_IO);
    const char *message = ferry_last_error();
    cr_assert(strstr(message, f.path), "message lacks the file: %s", message);
    cr_assert(strstr(message, "offset 1048576"), "message lacks the offset: %s", message);
    cr_assert(strstr(message, strerror(EIO)), "message lacks the cause: %s", message);
    /* The engine carries on after the error. */
    uint64_t got = 0;
    cr_assert_eq(nvme_read_sync(f.engine, f.file, 0, 64 << 10, f.buffer, &got), FERRY_OK);
    check_pattern(f.buffer, 0, 64 << 10);
    close_faulty(&f);
}
Test(nvme, uring_eio_is_reported_with_file_and_offset) { eio_reported(0); }
Test(nvme, pread_pool_eio_is_reported_with_file_and_offset) { eio_reported(1); }

Test(nvme, eagain_is_retried_until_it_succeeds) {
    fault_plan plan = {.mode = FAULT_EAGAIN_N, .eagain_left = 5};
    faulty f = open_faulty("eagain.bin", 512 << 10, &plan, 0, 4);
    cr_assert_eq(read_all(&f), FERRY_OK, "%s", ferry_last_error());
    check_pattern(f.buffer, 0, f.bytes);
    close_faulty(&f);
}

Test(nvme, endless_eagain_gives_up_with_an_error) {
    fault_plan plan = {.mode = FAULT_EAGAIN_N, .eagain_left = 1 << 30};
    faulty f = open_faulty("eagain2.bin", 64 << 10, &plan, 1, 2);
    cr_assert_eq(read_all(&f), FERRY_ERR_IO);
    cr_assert(strstr(ferry_last_error(), "retries"), "%s", ferry_last_error());
    close_faulty(&f);
}

Test(nvme, file_shrinking_under_a_read_is_an_error_not_a_hang) {
    fault_plan plan = {.mode = FAULT_EOF_AT, .target_offset = 512 << 10};
    faulty f = open_faulty("eof.bin", 1u << 20, &plan, 0, 4);
    cr_assert_eq(read_all(&f), FERRY_ERR_IO);
    cr_assert(strstr(ferry_last_error(), "unexpected end of file"), "%s", ferry_last_error());
    close_faulty(&f);
}

/* ------------------------------------- callbacks, cancel, shutdown */

typedef struct callback_count {
    int calls;
    int cancelled;
    int ok;
} callback_count;

static void count_done(nvme_request *request, void *user) {
    callback_count *count = user;
    __atomic_fetch_add(&count->calls, 1, __ATOMIC_RELAXED);
    if (request->status == FERRY_ERR_CANCELLED) __atomic_fetch_add(&count->cancelled, 1, __ATOMIC_RELAXED);
    if (request->status == FERRY_OK) __atomic_fetch_add(&count->ok, 1, __ATOMIC_RELAXED);
}

static void cancel_in_flight(int use_pread) {
    fault_plan plan = {.mode = FAULT_SLOW};
    faulty f = open_faulty("cancel.bin", 4u << 20, &plan, use_pread, 2);
    callback_count count = {0};
    nvme_request request = {.file = f.file, .length = f.bytes, .buffer = f.buffer,
                            .on_done = count_done, .user = &count};
    cr_assert_eq(nvme_submit(f.engine, &request), FERRY_OK);
    usleep(30000);   /* some chunks land, most are still to come (64 chunks x 20 ms) */
    nvme_cancel(f.engine, &request);
    cr_assert_eq(nvme_wait(f.engine, &request), FERRY_ERR_CANCELLED);
    cr_assert_lt(plan.calls, 64, "every chunk was read despite the cancel");
    close_faulty(&f);
    cr_assert_eq(count.calls, 1);
    cr_assert_eq(count.cancelled, 1);
}
Test(nvme, uring_cancel_stops_a_request_in_flight) { cancel_in_flight(0); }
Test(nvme, pread_pool_cancel_stops_a_request_in_flight) { cancel_in_flight(1); }

static void close_with_reads_in_flight(int use_pread) {
    char *path = make_pattern_file("close.bin", 2u << 20);
    fault_plan plan = {.mode = FAULT_SLOW};
    nvme_engine *engine = faulty_engine(&plan, use_pread, 2);
    int file = -1;
    cr_assert_eq(nvme_file_open(engine, path, 0, &file), FERRY_OK);
    enum { N = 8 };
    nvme_request requests[N];
    uint8_t *buffers[N];
    callback_count count = {0};
    memset(requests, 0, sizeof requests);
    for (int i = 0; i < N; i++) {
        buffers[i] = poisoned_buffer(256 << 10);
        requests[i] = (nvme_request){.file = file, .offset = (uint64_t)i * (256 << 10),
                                     .length = 256 << 10, .buffer = buffers[i],
                                     .on_done = count_done, .user = &count};
        cr_assert_eq(nvme_submit(engine, &requests[i]), FERRY_OK);
    }
    usleep(10000);
    nvme_engine_close(engine);   /* must not hang, leak or lose a callback */
    cr_assert_eq(count.calls, N);
    cr_assert_gt(count.cancelled, 0);
    cr_assert_eq(count.ok + count.cancelled, N);
    for (int i = 0; i < N; i++) {
        cr_assert(nvme_request_done(&requests[i]));
        if (requests[i].status == FERRY_OK) check_pattern(buffers[i], requests[i].offset, 256 << 10);
        free(buffers[i]);
    }
    free(path);
}
Test(nvme, uring_close_with_reads_in_flight_finishes_each_once) { close_with_reads_in_flight(0); }
Test(nvme, pread_pool_close_with_reads_in_flight_finishes_each_once) { close_with_reads_in_flight(1); }

typedef struct chain {
    nvme_engine *engine;
    int remaining;
    uint64_t file_bytes;
    int mismatches;
} chain;

/* A callback that checks its data and submits the next read itself. */
static void chain_next(nvme_request *request, void *user) {
    chain *state = user;
    if (request->status != FERRY_OK) {
        state->mismatches++;
    } else {
        uint64_t word;
        memcpy(&word, request->buffer, 8);
        if (word != pattern_word(request->offset)) state->mismatches++;
    }
    if (--state->remaining > 0) {
        request->offset = (request->offset + (64 << 10)) % state->file_bytes;
        if (nvme_submit(state->engine, request) != FERRY_OK) state->mismatches++;
    } else {
        __atomic_store_n(&state->remaining, -1, __ATOMIC_RELEASE);
    }
}

Test(nvme, callbacks_may_submit_the_next_read) {
    char *path = make_pattern_file("chain.bin", 1u << 20);
    nvme_engine *engine = open_engine(small_chunks(4, 64 << 10), 0);
    int file = -1;
    cr_assert_eq(nvme_file_open(engine, path, 0, &file), FERRY_OK);
    uint8_t *buffer = poisoned_buffer(64 << 10);
    chain state = {.engine = engine, .remaining = 100, .file_bytes = 1u << 20};
    nvme_request request = {.file = file, .length = 64 << 10, .buffer = buffer,
                            .on_done = chain_next, .user = &state};
    cr_assert_eq(nvme_submit(engine, &request), FERRY_OK);
    for (int spins = 0; __atomic_load_n(&state.remaining, __ATOMIC_ACQUIRE) != -1; spins++) {
        cr_assert_lt(spins, 5000, "the chain of reads stalled");
        usleep(1000);
    }
    cr_assert_eq(state.mismatches, 0);
    nvme_engine_close(engine);
    free(buffer);
    free(path);
}

/* -------------------------------------------------------- bad input */

Test(nvme, bad_requests_are_refused_with_a_reason) {
    char *path = make_pattern_file("bad.bin", 1u << 20);
    nvme_engine *engine = open_engine(small_chunks(4, 64 << 10), 0);
    int file = -1;
    cr_assert_eq(nvme_file_open(engine, path, 0, &file), FERRY_OK);
    uint8_t *buffer = poisoned_buffer(2u << 20);
    struct {
        nvme_request request;
        const char *says;
    } cases[] = {
        {{.file = 7, .length = 4096, .buffer = buffer}, "not open"},
        {{.file = file, .length = 0, .buffer = buffer}, "read of 0 bytes"},
        {{.file = file, .offset = 2u << 20, .length = 4096, .buffer = buffer}, "past the end"},
        {{.file = file, .is_write = 1, .length = 4096, .buffer = buffer}, "read-only"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cr_assert_eq(nvme_submit(engine, &cases[i].request), FERRY_ERR_INVALID_ARGUMENT, "case %zu",
                     i);
        cr_assert(strstr(ferry_last_error(), cases[i].says), "case %zu: %s", i, ferry_last_error());
    }
    if (nvme_file_is_direct(engine, file)) {
        nvme_request misaligned = {.file = file, .offset = 100, .length = 4096, .buffer = buffer};
        cr_assert_eq(nvme_submit(engine, &misaligned), FERRY_ERR_INVALID_ARGUMENT);
        cr_assert(strstr(ferry_last_error(), "O_DIRECT"), "%s", ferry_last_error());
        nvme_request odd_buffer = {.file = file, .length = 4096, .buffer = buffer + 1};
        cr_assert_eq(nvme_submit(engine, &odd_buffer), FERRY_ERR_INVALID_ARGUMENT);
    }
    nvme_engine_close(engine);
    free(buffer);
    free(path);
}

Test(nvme, missing_file_names_the_path) {
    nvme_engine *engine = open_engine(small_chunks(4, 64 << 10), 1);
    int file = -1;
    char *path = test_path(scratch_dir, "does-not-exist.bin");
    cr_assert_neq(nvme_file_open(engine, path, 0, &file), FERRY_OK);
    cr_assert(strstr(ferry_last_error(), path), "%s", ferry_last_error());
    cr_assert_eq(file, -1);
    nvme_engine_close(engine);
    free(path);
}

Test(nvme, bad_options_are_refused) {
    nvme_options options = nvme_options_default();
    options.chunk_bytes = 5000;
    nvme_engine *engine = NULL;
    cr_assert_eq(nvme_engine_open(&options, &engine), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_null(engine);
    cr_assert(strstr(ferry_last_error(), "chunk"), "%s", ferry_last_error());
}

/* ----------------------------------------------------------- buffers */

Test(nvme, buffers_are_aligned_zeroed_and_freeable) {
    uint64_t sizes[] = {1, 4096, 12345, 3u << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        nvme_buffer buffer;
        cr_assert_eq(nvme_buffer_alloc(sizes[i], 0, &buffer), FERRY_OK, "%s", ferry_last_error());
        cr_assert_eq((uintptr_t)buffer.data % 4096, 0);
        if (sizes[i] >= (2u << 20)) cr_assert_eq((uintptr_t)buffer.data % (2u << 20), 0);
        cr_assert_geq(buffer.mapped_bytes, sizes[i]);
        const uint8_t *bytes = buffer.data;
        for (uint64_t b = 0; b < sizes[i]; b++) cr_assert_eq(bytes[b], 0);
        memset(buffer.data, 0xff, sizes[i]);
        nvme_buffer_free(&buffer);
        cr_assert_null(buffer.data);
    }
    nvme_buffer none = {0};
    nvme_buffer_free(&none);
    cr_assert_geq(nvme_numa_node_count(), 1);
    cr_assert_geq(nvme_numa_node_of_path(scratch_dir), -1);
}

Test(nvme, cuda_pinning_is_unavailable_or_works) {
    nvme_buffer buffer;
    cr_assert_eq(nvme_buffer_alloc(1u << 20, -1, &buffer), FERRY_OK);
    ferry_status status = nvme_buffer_pin_cuda(&buffer);
    if (nvme_cuda_available())
        cr_assert_eq(status, FERRY_OK, "%s", ferry_last_error());
    else
        cr_assert_neq(status, FERRY_OK);
    nvme_buffer_free(&buffer);
}
