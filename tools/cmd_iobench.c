/*
 * cmd_iobench.c — `ferry iobench`: what fio would be if made for this
 * workload.  Parses the sweep, prepares the target (creates a test file,
 * opens a device read-only, or lists a model's layer extents), runs each
 * configuration (iobench_run.c), prints a table or JSON lines, names the
 * best configuration and saves it to the per-machine profile.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "offload/offload.h"
#include "runtime/format.h"
#include "tools/cli.h"
#include "tools/iobench.h"

#define COMMAND "iobench"

typedef struct iobench_options {
    const char *file, *model, *size_text, *modes_text, *bs_text, *qd_text, *threads_text;
    const char *runtime_text, *device_text;
    int direct, buffered, to_gpu, json, save, write, quiet, help;
} iobench_options;

typedef struct option_row {
    const char *name;
    const char **text;          /* takes a value */
    int *flag;                  /* or is a flag */
    const char *help;
} option_row;

static void print_help(FILE *out, const option_row *rows, int n_rows) {
    fprintf(out, "usage: ferry iobench (--file PATH | --model FILE.ferry) [options]\n\n"
                 "Measures read (and write) bandwidth of a file or block device the way ferry\n"
                 "streams weights: io_uring, O_DIRECT, registered buffers, deep queues.\n\n");
    for (int i = 0; i < n_rows; i++)
        fprintf(out, "  %-18s %s\n", rows[i].name, rows[i].help);
    fprintf(out, "\nLists (--mode, --bs, --qd, --threads) sweep every combination.\n"
                 "GB/s is 1e9 bytes per second.\n");
}

/* ------------------------------------------------------------ parsing */

static int parse_size_list(const char *text, uint64_t **out, int *out_count) {
    *out = NULL;
    *out_count = 0;
    char *copy = strdup(text), *save = NULL;
    int capacity = 1;
    for (const char *c = text; *c; c++) capacity += *c == ',';
    uint64_t *values = calloc((size_t)capacity, sizeof *values);
    for (char *token = strtok_r(copy, ",", &save); token; token = strtok_r(NULL, ",", &save)) {
        if (ferry_parse_size(token, &values[*out_count]) != FERRY_OK) {
            free(copy);
            free(values);
            return cli_usage_error(COMMAND, "%s", ferry_last_error());
        }
        (*out_count)++;
    }
    free(copy);
    *out = values;
    return *out_count ? CLI_OK : cli_usage_error(COMMAND, "empty list '%s'", text);
}

static int parse_modes(const char *text, iobench_mode *modes, int *n_modes) {
    static const char *const names[] = {"read", "randread", "write"};
    char *copy = strdup(text), *save = NULL;
    *n_modes = 0;
    for (char *token = strtok_r(copy, ",", &save); token; token = strtok_r(NULL, ",", &save)) {
        int found = -1;
        for (int i = 0; i < 3; i++)
            if (strcmp(token, names[i]) == 0) found = i;
        if (found < 0 || *n_modes == 3) {
            int result = cli_usage_error(COMMAND, "unknown mode '%s' (read, randread or write)", token);
            free(copy);
            return result;
        }
        modes[(*n_modes)++] = (iobench_mode)found;
    }
    free(copy);
    return *n_modes ? CLI_OK : cli_usage_error(COMMAND, "empty --mode");
}

static int parse_positive_list(const char *name, const char *text, int32_t **out, int *count) {
    if (cli_parse_int_list(COMMAND, text, out, count) != 0) return CLI_USAGE;
    for (int i = 0; i < *count; i++)
        if ((*out)[i] <= 0)
            return cli_usage_error(COMMAND, "%s must be at least 1 (got %d)", name, (*out)[i]);
    return CLI_OK;
}

/* ------------------------------------------------------------- output */

static const char *mode_name(iobench_mode mode) {
    return mode == IOBENCH_READ ? "read" : mode == IOBENCH_RANDREAD ? "randread" : "write";
}

static void format_bytes(uint64_t bytes, char *out, size_t size) {
    if (bytes % (1u << 30) == 0) snprintf(out, size, "%llug", (unsigned long long)(bytes >> 30));
    else if (bytes % (1u << 20) == 0) snprintf(out, size, "%llum", (unsigned long long)(bytes >> 20));
    else if (bytes % (1u << 10) == 0) snprintf(out, size, "%lluk", (unsigned long long)(bytes >> 10));
    else snprintf(out, size, "%llu", (unsigned long long)bytes);
}

static cJSON *config_json(const iobench_config *config, const iobench_result *result) {
    cJSON *object = cJSON_CreateObject();
    cJSON_AddStringToObject(object, "mode", mode_name(config->mode));
    cJSON_AddNumberToObject(object, "bs", (double)config->block_bytes);
    cJSON_AddNumberToObject(object, "qd", config->queue_depth);
    cJSON_AddNumberToObject(object, "threads", config->n_threads);
    cJSON_AddBoolToObject(object, "direct", config->direct);
    cJSON_AddNumberToObject(object, "gbps", result->gbps);
    cJSON_AddNumberToObject(object, "iops", result->iops);
    cJSON_AddNumberToObject(object, "lat_p50_us", result->lat_p50_us);
    cJSON_AddNumberToObject(object, "lat_p99_us", result->lat_p99_us);
    cJSON_AddNumberToObject(object, "lat_p999_us", result->lat_p999_us);
    cJSON_AddNumberToObject(object, "bytes", (double)result->bytes);
    cJSON_AddNumberToObject(object, "seconds", result->seconds);
    cJSON_AddStringToObject(object, "backend", result->backend);
    return object;
}

static void print_json_line(cJSON *object) {
    char *text = cJSON_PrintUnformatted(object);
    printf("%s\n", text);
    fflush(stdout);
    free(text);
}

static void print_row(const iobench_config *config, const iobench_result *result) {
    char bs[24];
    format_bytes(config->block_bytes, bs, sizeof bs);
    printf("%-9s %6s %5d %7d %6s %9.3f %10.0f %10.1f %10.1f %10.1f\n", mode_name(config->mode), bs,
           config->queue_depth, config->n_threads, config->direct ? "yes" : "no", result->gbps,
           result->iops, result->lat_p50_us, result->lat_p99_us, result->lat_p999_us);
    fflush(stdout);
}

/* ---------------------------------------------------- progress, notes */

typedef struct ui_state {
    int tty, json, quiet;
    char label[96];
    uint64_t total_bytes;
    char notes[16][256];
    int n_notes;
} ui_state;

static void show_progress(void *user, uint64_t bytes_done, double seconds) {
    ui_state *ui = user;
    if (!ui->tty || ui->quiet || seconds <= 0) return;
    fprintf(stderr, "\r\033[K%s: %.2f GB, %.3f GB/s", ui->label, (double)bytes_done / 1e9,
            (double)bytes_done / seconds / 1e9);
}

static void clear_progress(const ui_state *ui) {
    if (ui->tty && !ui->quiet) fprintf(stderr, "\r\033[K");
}

/* Engines are made per configuration: say each distinct note once. */
static void show_note(void *user, const char *message) {
    ui_state *ui = user;
    for (int i = 0; i < ui->n_notes; i++)
        if (strcmp(ui->notes[i], message) == 0) return;
    if (ui->n_notes < 16) snprintf(ui->notes[ui->n_notes++], sizeof ui->notes[0], "%s", message);
    clear_progress(ui);
    fprintf(stderr, "ferry iobench: note: %s\n", message);
}

/* ------------------------------------------------------------ targets */

static int path_exists(const char *path, struct stat *st) { return stat(path, st) == 0; }

/* A test file of `bytes` bytes of incompressible data, made once. */
static int create_test_file(const char *path, uint64_t bytes, ui_state *ui) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return cli_fail(COMMAND, FERRY_OK, "cannot create %s: %s", path, strerror(errno));
    enum { CHUNK = 4 << 20 };
    uint64_t *chunk = malloc(CHUNK), state = 0x243f6a8885a308d3ull;
    uint64_t start_ns = ferry_now_ns();
    int result = CLI_OK;
    for (uint64_t done = 0; done < bytes && result == CLI_OK;) {
        for (size_t i = 0; i < CHUNK / 8; i++) {
            state ^= state << 13, state ^= state >> 7, state ^= state << 17;
            chunk[i] = state;
        }
        size_t piece = bytes - done < CHUNK ? (size_t)(bytes - done) : CHUNK;
        if (write(fd, chunk, piece) != (ssize_t)piece)
            result = cli_fail(COMMAND, FERRY_OK, "writing %s failed: %s", path, strerror(errno));
        done += piece;
        snprintf(ui->label, sizeof ui->label, "creating %s", path);
        show_progress(ui, done, (double)(ferry_now_ns() - start_ns) / 1e9);
    }
    if (result == CLI_OK && fsync(fd) != 0)
        result = cli_fail(COMMAND, FERRY_OK, "fsync of %s failed: %s", path, strerror(errno));
    clear_progress(ui);
    free(chunk);
    close(fd);
    if (result != CLI_OK) unlink(path);
    return result;
}

/* A .ferry model's extents, globals then layers in order: what the
 * runtime streams per step. */
static int model_segments(const char *path, iobench_target *target) {
    ferry_file *model = NULL;
    ferry_status status = ferry_file_open(path, &model);
    if (status != FERRY_OK) return cli_fail(COMMAND, status, "%s", "");
    const ferry_layout *layout = &model->layout;
    target->segments = calloc((size_t)layout->n_extents, sizeof *target->segments);
    for (int i = 0; i < layout->n_extents; i++) {
        target->segments[i].offset = layout->extents[i].offset;
        target->segments[i].bytes = layout->extents[i].bytes;
    }
    target->n_segments = layout->n_extents;
    target->file_bytes = model->file_bytes;
    ferry_file_close(model);
    return CLI_OK;
}

/* ------------------------------------------------------------ profile */

static int save_profile(cJSON *best, double best_read_gbps, const iobench_gpu_result *gpu,
                        const char *target_path) {
    char host[256] = "unknown", directory[4096], path[4400], temporary[4500];
    gethostname(host, sizeof host - 1);
    offload_profile_directory(directory, sizeof directory);
    for (char *slash = strchr(directory + 1, '/');; slash = strchr(slash + 1, '/')) {
        if (slash) *slash = '\0';
        if (mkdir(directory, 0755) != 0 && errno != EEXIST)
            return cli_fail(COMMAND, FERRY_OK, "cannot create %s: %s", directory, strerror(errno));
        if (!slash) break;
        *slash = '/';
    }
    offload_profile_path(path, sizeof path);
    snprintf(temporary, sizeof temporary, "%s.partial", path);
    cJSON *profile = cJSON_CreateObject();
    cJSON_AddStringToObject(profile, "host", host);
    cJSON_AddNumberToObject(profile, "time_unix", (double)time(NULL));
    cJSON_AddStringToObject(profile, "target", target_path);
    cJSON_AddItemToObject(profile, "best", cJSON_Duplicate(best, 1));
    cJSON_AddNumberToObject(profile, "nvme_read_gbps", best_read_gbps);
    if (gpu) {
        cJSON_AddNumberToObject(profile, "h2d_gbps", gpu->h2d_gbps);
        cJSON_AddNumberToObject(profile, "nvme_to_gpu_gbps", gpu->end_to_end_gbps);
    }
    char *text = cJSON_Print(profile);
    cJSON_Delete(profile);
    FILE *out = fopen(temporary, "w");
    int ok = out && fputs(text, out) >= 0 && fputc('\n', out) != EOF;
    if (out && fclose(out) != 0) ok = 0;
    free(text);
    if (!ok || rename(temporary, path) != 0) {
        unlink(temporary);
        return cli_fail(COMMAND, FERRY_OK, "cannot write %s: %s", path, strerror(errno));
    }
    fprintf(stderr, "ferry iobench: saved the profile to %s\n", path);
    return CLI_OK;
}

/* ---------------------------------------------------------------- run */

typedef struct sweep {
    iobench_mode modes[3];
    int n_modes;
    uint64_t *block_sizes;
    int n_block_sizes;
    int32_t *queue_depths, *thread_counts;
    int n_queue_depths, n_thread_counts;
    double runtime_seconds;
    int direct;
    int device;
} sweep;

static int check_inputs(const iobench_options *o, sweep *s, uint64_t *size_bytes) {
    if (!o->file == !o->model)
        return cli_usage_error(COMMAND, "give exactly one of --file PATH or --model FILE.ferry");
    if (o->direct && o->buffered) return cli_usage_error(COMMAND, "--direct or --buffered, not both");
    s->direct = !o->buffered;
    int result;
    if ((result = parse_modes(o->modes_text, s->modes, &s->n_modes)) != CLI_OK) return result;
    if ((result = parse_size_list(o->bs_text, &s->block_sizes, &s->n_block_sizes)) != CLI_OK)
        return result;
    if ((result = parse_positive_list("--qd", o->qd_text, &s->queue_depths, &s->n_queue_depths)))
        return result;
    if ((result = parse_positive_list("--threads", o->threads_text, &s->thread_counts,
                                      &s->n_thread_counts)))
        return result;
    for (int i = 0; i < s->n_block_sizes; i++) {
        uint64_t bs = s->block_sizes[i];
        if (bs == 0 || bs > (1u << 30))
            return cli_usage_error(COMMAND, "--bs %llu is out of range (1 byte .. 1g)",
                                   (unsigned long long)bs);
        if (s->direct && bs % NVME_BLOCK_BYTES)
            return cli_usage_error(COMMAND,
                                   "--bs %llu is not a multiple of 4k, which O_DIRECT needs "
                                   "(or use --buffered)",
                                   (unsigned long long)bs);
    }
    for (int i = 0; i < s->n_queue_depths; i++)
        if (s->queue_depths[i] > 4096) return cli_usage_error(COMMAND, "--qd above 4096");
    if (ferry_parse_size(o->size_text, size_bytes) != FERRY_OK)
        return cli_usage_error(COMMAND, "--size: %s", ferry_last_error());
    if (*size_bytes == 0) return cli_usage_error(COMMAND, "--size must be above zero");
    char *end = NULL;
    s->runtime_seconds = o->runtime_text ? strtod(o->runtime_text, &end) : 0;
    if (o->runtime_text && (end == o->runtime_text || *end || s->runtime_seconds <= 0))
        return cli_usage_error(COMMAND, "--runtime wants seconds above zero, got '%s'",
                               o->runtime_text);
    s->device = o->device_text ? atoi(o->device_text) : 0;
    int wants_write = 0;
    for (int i = 0; i < s->n_modes; i++) wants_write |= s->modes[i] == IOBENCH_WRITE;
    struct stat st;
    const char *target = o->file ? o->file : o->model;
    if (wants_write && o->model)
        return cli_usage_error(COMMAND, "write mode never writes to a model file");
    if (wants_write && !o->write && path_exists(target, &st))
        return cli_usage_error(COMMAND,
                               "refusing to write to existing %s%s: add --write if its contents "
                               "may be destroyed",
                               S_ISBLK(st.st_mode) ? "device " : "", target);
    if (o->to_gpu && !nvme_cuda_available())
        return cli_fail(COMMAND, FERRY_OK,
                        "--to-gpu needs the CUDA build (-DFERRY_CUDA=ON) and a GPU; none here");
    return CLI_OK;
}

static int prepare_target(const iobench_options *o, uint64_t size_bytes, int direct, ui_state *ui,
                          iobench_target *target) {
    struct stat st;
    if (o->model) {
        target->path = o->model;
        return model_segments(o->model, target);
    }
    target->path = o->file;
    if (!path_exists(o->file, &st)) {
        if (direct) size_bytes = (size_bytes + NVME_BLOCK_BYTES - 1) / NVME_BLOCK_BYTES * NVME_BLOCK_BYTES;
        int result = create_test_file(o->file, size_bytes, ui);
        if (result != CLI_OK) return result;
    }
    /* The engine knows block devices' sizes too. */
    nvme_options options = nvme_options_default();
    options.force_pread = 1;
    options.n_pread_threads = 1;
    nvme_engine *engine = NULL;
    int file = -1;
    ferry_status status = nvme_engine_open(&options, &engine);
    if (status == FERRY_OK) status = nvme_file_open(engine, o->file, NVME_FILE_BUFFERED, &file);
    if (status == FERRY_OK) target->file_bytes = nvme_file_bytes(engine, file);
    nvme_engine_close(engine);
    if (status != FERRY_OK) return cli_fail(COMMAND, status, "%s", "");
    if (target->file_bytes == 0) return cli_fail(COMMAND, FERRY_OK, "%s is empty", o->file);
    target->segments = calloc(1, sizeof *target->segments);
    target->segments[0].bytes = target->file_bytes;
    target->n_segments = 1;
    return CLI_OK;
}

static void advise_buffered(const iobench_target *target) {
    fprintf(stderr,
            "ferry iobench: buffered reads are served from the page cache once cached; iobench "
            "drops this file's pages before each run, and for honest numbers you can drop "
            "them all: sync; echo 3 | sudo tee /proc/sys/vm/drop_caches\n");
    uint64_t ram = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    if (target->file_bytes < ram)
        fprintf(stderr,
                "ferry iobench: warning: %s (%.1f GB) is smaller than RAM (%.1f GB): buffered "
                "numbers may measure memory, not the drive (use a --size above RAM, or --direct)\n",
                target->path, (double)target->file_bytes / 1e9, (double)ram / 1e9);
}

static int run_sweep(const iobench_options *o, const sweep *s, const iobench_target *target,
                     ui_state *ui) {
    iobench_hooks hooks = {show_progress, show_note, ui};
    uint64_t ram = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    int n_configs = s->n_modes * s->n_block_sizes * s->n_queue_depths * s->n_thread_counts;
    if (!o->json)
        printf("%-9s %6s %5s %7s %6s %9s %10s %10s %10s %10s\n", "mode", "bs", "qd", "threads",
               "direct", "GB/s", "IOPS", "p50 us", "p99 us", "p99.9 us");
    cJSON *best = NULL;
    double best_gbps = -1, best_read_gbps = 0;
    iobench_config best_config = {0};
    int index = 0, result = CLI_OK;
    for (int m = 0; m < s->n_modes; m++)
        for (int b = 0; b < s->n_block_sizes; b++)
            for (int q = 0; q < s->n_queue_depths; q++)
                for (int t = 0; t < s->n_thread_counts; t++) {
                    iobench_config config = {s->modes[m], s->block_sizes[b], s->queue_depths[q],
                                             s->thread_counts[t], s->direct, s->runtime_seconds};
                    index++;
                    char bs[24];
                    format_bytes(config.block_bytes, bs, sizeof bs);
                    snprintf(ui->label, sizeof ui->label, "[%d/%d] %s bs=%s qd=%d threads=%d",
                             index, n_configs, mode_name(config.mode), bs, config.queue_depth,
                             config.n_threads);
                    uint64_t buffers = config.block_bytes * (uint64_t)config.queue_depth *
                                       (uint64_t)config.n_threads;
                    if (buffers > ram / 2) {
                        fprintf(stderr, "ferry iobench: skipping %s: it needs %.1f GB of buffers\n",
                                ui->label, (double)buffers / 1e9);
                        continue;
                    }
                    iobench_result measured;
                    ferry_status status = iobench_run(target, &config, &hooks, &measured);
                    clear_progress(ui);
                    if (status != FERRY_OK) {
                        result = cli_fail(COMMAND, status, "%s", "");
                        goto done;
                    }
                    cJSON *row = config_json(&config, &measured);
                    if (o->json) print_json_line(row);
                    else print_row(&config, &measured);
                    if (config.mode != IOBENCH_WRITE && measured.gbps > best_read_gbps)
                        best_read_gbps = measured.gbps;
                    if (measured.gbps > best_gbps) {
                        cJSON_Delete(best);
                        best = row;
                        best_gbps = measured.gbps;
                        best_config = config;
                    } else {
                        cJSON_Delete(row);
                    }
                }
    if (!best) {
        result = cli_fail(COMMAND, FERRY_OK, "no configuration ran");
        goto done;
    }
    if (o->json) {
        cJSON *line = cJSON_CreateObject();
        cJSON_AddItemToObject(line, "best", cJSON_Duplicate(best, 1));
        print_json_line(line);
        cJSON_Delete(line);
    } else {
        char bs[24];
        format_bytes(best_config.block_bytes, bs, sizeof bs);
        printf("best: %s bs=%s qd=%d threads=%d %s: %.3f GB/s\n", mode_name(best_config.mode), bs,
               best_config.queue_depth, best_config.n_threads,
               best_config.direct ? "direct" : "buffered", best_gbps);
    }
    iobench_gpu_result gpu;
    int have_gpu = 0;
    if (o->to_gpu) {
        iobench_config gpu_config = best_config;
        if (gpu_config.mode == IOBENCH_WRITE) gpu_config.mode = IOBENCH_READ;
        snprintf(ui->label, sizeof ui->label, "to-gpu");
        ferry_status status = iobench_run_to_gpu(target, &gpu_config, s->device, &hooks, &gpu);
        clear_progress(ui);
        if (status != FERRY_OK) {
            result = cli_fail(COMMAND, status, "--to-gpu");
            goto done;
        }
        have_gpu = 1;
        double bound = gpu.disk_gbps < gpu.h2d_gbps ? gpu.disk_gbps : gpu.h2d_gbps;
        if (o->json) {
            cJSON *line = cJSON_CreateObject();
            cJSON_AddBoolToObject(line, "to_gpu", 1);
            cJSON_AddNumberToObject(line, "bs", (double)gpu_config.block_bytes);
            cJSON_AddNumberToObject(line, "qd", gpu_config.queue_depth);
            cJSON_AddNumberToObject(line, "slot_bytes", (double)gpu.slot_bytes);
            cJSON_AddNumberToObject(line, "slots", gpu.n_slots);
            cJSON_AddNumberToObject(line, "disk_gbps", gpu.disk_gbps);
            cJSON_AddNumberToObject(line, "h2d_gbps", gpu.h2d_gbps);
            cJSON_AddNumberToObject(line, "end_to_end_gbps", gpu.end_to_end_gbps);
            cJSON_AddNumberToObject(line, "fraction_of_bound", gpu.end_to_end_gbps / bound);
            print_json_line(line);
            cJSON_Delete(line);
        } else {
            printf("to-gpu (%d pinned slots of %llu MiB): NVMe->host %.3f GB/s, pinned host->GPU "
                   "%.3f GB/s, end to end %.3f GB/s (%.0f%% of the slower stage)\n",
                   gpu.n_slots, (unsigned long long)(gpu.slot_bytes >> 20), gpu.disk_gbps,
                   gpu.h2d_gbps, gpu.end_to_end_gbps, 100.0 * gpu.end_to_end_gbps / bound);
        }
    }
    if (o->save) result = save_profile(best, best_read_gbps, have_gpu ? &gpu : NULL, target->path);
done:
    cJSON_Delete(best);
    return result;
}

int cmd_iobench(int argc, char **argv) {
    iobench_options o = {.size_text = "1g", .modes_text = "read", .bs_text = "1m,4m,16m",
                         .qd_text = "4,16,64", .threads_text = "1"};
    const option_row rows[] = {
        {"--file", &o.file, NULL, "PATH: file or block device (a missing file is created)"},
        {"--model", &o.model, NULL, "FILE.ferry: read the model's layer extents in order"},
        {"--size", &o.size_text, NULL, "SIZE of a created test file (default 1g)"},
        {"--mode", &o.modes_text, NULL, "read,randread,write (default read)"},
        {"--bs", &o.bs_text, NULL, "block sizes (default 1m,4m,16m)"},
        {"--qd", &o.qd_text, NULL, "queue depths per thread (default 4,16,64)"},
        {"--threads", &o.threads_text, NULL, "thread counts, one engine each (default 1)"},
        {"--direct", NULL, &o.direct, "O_DIRECT (the default)"},
        {"--buffered", NULL, &o.buffered, "through the page cache"},
        {"--runtime", &o.runtime_text, NULL, "S seconds per configuration (default: one pass)"},
        {"--to-gpu", NULL, &o.to_gpu, "also NVMe -> pinned -> GPU (CUDA build)"},
        {"--device", &o.device_text, NULL, "N: GPU for --to-gpu (default 0)"},
        {"--json", NULL, &o.json, "one JSON object per configuration per line"},
        {"--save", NULL, &o.save, "store the best in $XDG_CACHE_HOME/ferry/profile-<host>.json"},
        {"--write", NULL, &o.write, "allow write mode to overwrite an existing file or device"},
        {"--quiet", NULL, &o.quiet, "no progress line"},
        {"--help", NULL, &o.help, "this text"},
    };
    const int n_rows = (int)(sizeof rows / sizeof rows[0]);
    for (int i = 1; i < argc; i++) {
        const option_row *row = NULL;
        for (int r = 0; r < n_rows && !row; r++)
            if (strcmp(argv[i], rows[r].name) == 0) row = &rows[r];
        if (!row && strcmp(argv[i], "-h") == 0) row = &rows[n_rows - 1];
        if (!row) return cli_usage_error(COMMAND, "unknown option '%s'", argv[i]);
        if (row->flag) {
            *row->flag = 1;
        } else {
            if (i + 1 >= argc) return cli_usage_error(COMMAND, "%s needs a value", row->name);
            *row->text = argv[++i];
        }
    }
    if (o.help) {
        print_help(stdout, rows, n_rows);
        return CLI_OK;
    }
    sweep s;
    memset(&s, 0, sizeof s);
    uint64_t size_bytes = 0;
    iobench_target target;
    memset(&target, 0, sizeof target);
    ui_state ui;
    memset(&ui, 0, sizeof ui);
    ui.tty = cli_stderr_is_tty();
    ui.json = o.json;
    ui.quiet = o.quiet;
    int result = check_inputs(&o, &s, &size_bytes);
    if (result == CLI_OK) result = prepare_target(&o, size_bytes, s.direct, &ui, &target);
    if (result == CLI_OK) {
        if (!s.direct) advise_buffered(&target);
        result = run_sweep(&o, &s, &target, &ui);
    }
    free(s.block_sizes);
    free(s.queue_depths);
    free(s.thread_counts);
    free(target.segments);
    return result;
}
