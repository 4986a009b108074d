/*
 * bandwidth.c — where the plan's speeds come from: this machine's profile
 * (`ferry iobench --save`), else a quick probe of the device a stream runs
 * on, else the defaults; each figure remembers its origin so the printed
 * plan can say it.  A missing or corrupt profile is never an error: the
 * caller gets the defaults and, for a corrupt one, a warning to show.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "offload/offload.h"

static const char *const origin_names[] = {"default", "profile", "probe", "given"};

const char *offload_figure_origin_name(offload_figure_origin origin) {
    return (unsigned)origin < sizeof origin_names / sizeof origin_names[0] ? origin_names[origin]
                                                                           : "?";
}

const char *offload_profile_directory(char *buf, size_t size) {
    const char *cache = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    if (cache && *cache) snprintf(buf, size, "%s/ferry", cache);
    else snprintf(buf, size, "%s/.cache/ferry", home && *home ? home : "/tmp");
    return buf;
}

const char *offload_profile_path(char *buf, size_t size) {
    char directory[4096], host[256] = "unknown";
    gethostname(host, sizeof host - 1);
    snprintf(buf, size, "%s/profile-%s.json", offload_profile_directory(directory, sizeof directory),
             host);
    return buf;
}

/* The profile's keys and the figures they set (GB/s). */
static const struct {
    const char *key;
    size_t value_offset, origin_offset;
} profile_figures[] = {
    {"h2d_gbps", offsetof(offload_bandwidths, host_to_gpu_gbps),
     offsetof(offload_bandwidth_origins, host_to_gpu)},
    {"nvme_read_gbps", offsetof(offload_bandwidths, disk_read_gbps),
     offsetof(offload_bandwidth_origins, disk_read)},
};

/* The profile's text, or NULL when there is none (ENOENT) or with *warning
 * set when it cannot be read. */
static char *read_profile(const char *path, char *warning, size_t warning_size) {
    FILE *file = fopen(path, "rb");
    if (!file) {
        if (errno != ENOENT)
            snprintf(warning, warning_size, "cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    char *text = NULL;
    size_t length = 0;
    enum { MAX_PROFILE_BYTES = 1 << 20 };
    if (ferry_malloc(MAX_PROFILE_BYTES + 1, "profile", (void **)&text) == FERRY_OK) {
        length = fread(text, 1, MAX_PROFILE_BYTES, file);
        if (ferror(file) || !feof(file)) {
            snprintf(warning, warning_size, "cannot read %s (or it is over 1 MiB)", path);
            free(text);
            text = NULL;
        } else {
            text[length] = '\0';
        }
    } else {
        ferry_clear_error();
        snprintf(warning, warning_size, "no memory to read %s", path);
    }
    fclose(file);
    return text;
}

int offload_bandwidths_from_profile(offload_bandwidths *out, offload_bandwidth_origins *origins,
                                    char *warning, size_t warning_size) {
    offload_bandwidth_origins unused_origins;
    if (!origins) origins = &unused_origins;
    memset(origins, 0, sizeof *origins);
    if (warning && warning_size) warning[0] = '\0';
    char scratch[8];
    if (!warning || !warning_size) {
        warning = scratch;
        warning_size = sizeof scratch;
    }
    *out = offload_bandwidths_default();
    char path[4400];
    offload_profile_path(path, sizeof path);
    char *text = read_profile(path, warning, warning_size);
    if (!text) return 0;
    int used = 0;
    cJSON *profile = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(profile)) {
        snprintf(warning, warning_size, "%s is not a JSON object; using the default bandwidths",
                 path);
        cJSON_Delete(profile);
        return 0;
    }
    for (size_t i = 0; i < sizeof profile_figures / sizeof profile_figures[0]; i++) {
        const cJSON *item = cJSON_GetObjectItemCaseSensitive(profile, profile_figures[i].key);
        if (!item) continue;    /* e.g. no h2d_gbps: iobench ran without a GPU */
        double value = cJSON_IsNumber(item) ? item->valuedouble : NAN;
        if (!(value > 0) || !isfinite(value)) {
            snprintf(warning, warning_size, "%s: \"%s\" is not a positive number; using the default",
                     path, profile_figures[i].key);
            continue;
        }
        *(double *)((char *)out + profile_figures[i].value_offset) = value;
        *(offload_figure_origin *)((char *)origins + profile_figures[i].origin_offset) =
            OFFLOAD_FROM_PROFILE;
        used = 1;
    }
    cJSON_Delete(profile);
    return used;
}

ferry_status offload_device_probe_copy(offload_device device, const void *host, uint64_t bytes,
                                       double *out_gbps) {
    enum { WARM_UP = 1, TIMED = 4 };
    *out_gbps = 0;
    void *slot = NULL;
    FERRY_TRY(device.ops->slot_alloc(device.impl, 0, bytes, &slot));
    ferry_status status = FERRY_OK;
    uint64_t best_ns = UINT64_MAX;
    for (int i = 0; i < WARM_UP + TIMED && status == FERRY_OK; i++) {
        offload_event done = 0;
        uint64_t start_ns = ferry_now_ns();
        status = device.ops->copy_async(device.impl, 0, slot, host, bytes, &done);
        if (status == FERRY_OK) status = device.ops->event_wait(device.impl, done);
        uint64_t elapsed_ns = ferry_now_ns() - start_ns;
        if (i >= WARM_UP && elapsed_ns < best_ns) best_ns = elapsed_ns;
    }
    device.ops->slot_free(device.impl, 0, slot);
    if (status != FERRY_OK) return ferry_fail_prefix(status, "host->device copy probe: ");
    *out_gbps = (double)bytes / (double)(best_ns ? best_ns : 1);
    return FERRY_OK;
}
