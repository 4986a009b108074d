/*
 * test_offload_profile.c — where the plan's bandwidths come from: this
 * machine's `ferry iobench --save` profile under a temporary
 * XDG_CACHE_HOME when present, the defaults when absent, and the defaults
 * with a warning (never a failure) when it is corrupt; `ferry plan` and a
 * streaming model's report say where each figure came from.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.h"
#include "offload/offload.h"
#include "runtime/engine.h"

static char *cache_dir;

/* A fresh, empty XDG_CACHE_HOME for each test. */
static void use_temporary_cache(void) {
    cache_dir = test_tempdir();
    setenv("XDG_CACHE_HOME", cache_dir, 1);
}

static void remove_temporary_cache(void) {
    unsetenv("XDG_CACHE_HOME");
    test_rmtree(cache_dir);
    free(cache_dir);
}

TestSuite(offload_profile, .init = use_temporary_cache, .fini = remove_temporary_cache);

/* Write text as this machine's profile; returns its path (malloc'd). */
static char *write_profile(const char *text) {
    char *directory = test_path(cache_dir, "ferry");
    cr_assert(mkdir(directory, 0755) == 0 || errno == EEXIST);
    char host[256] = {0}, name[300];
    gethostname(host, sizeof host - 1);
    snprintf(name, sizeof name, "profile-%s.json", host);
    char *path = test_path(directory, name);
    cr_assert_eq(test_write_file(path, text, strlen(text)), 0);
    free(directory);
    return path;
}

/* `ferry ARGS` with stdout and stderr into one text (malloc'd). */
static char *run_cli(const char *args, int *exit_status) {
    char *log = test_path(cache_dir, "cli.log"), command[2048];
    int length = snprintf(command, sizeof command, "{ %s %s 2>&1; }", test_cli(), args);
    cr_assert(length > 0 && (size_t)length < sizeof command, "command too long: %s", args);
    *exit_status = test_run(command, log, NULL);
    char *text = test_read_file(log, NULL);
    free(log);
    return text;
}

/* `ferry synth --preset tiny` into the cache directory (its exit status
 * in *synth_status), opened with every layer streamed on the CPU. */
static ferry_model *open_streamed_tiny(int *synth_status) {
    char args[2048];
    snprintf(args, sizeof args, "synth --preset tiny %s/tiny.ferry", cache_dir);
    free(run_cli(args, synth_status));
    char *model_path = test_path(cache_dir, "tiny.ferry");
    ferry_model_options options = {.backend = "cpu", .n_threads = 1, .streaming = 1,
                                   .resident_layers = 0};
    ferry_model *model = NULL;
    cr_assert_eq(ferry_model_open(model_path, &options, &model), FERRY_OK, "%s",
                 ferry_last_error());
    free(model_path);
    return model;
}

static void assert_defaults(const offload_bandwidths *got) {
    offload_bandwidths want = offload_bandwidths_default();
    cr_assert(got->host_to_gpu_gbps == want.host_to_gpu_gbps &&
              got->disk_read_gbps == want.disk_read_gbps &&
              got->gpu_memory_gbps == want.gpu_memory_gbps && got->gpu_tflops == want.gpu_tflops);
}

Test(offload_profile, without_a_profile_the_defaults_are_used_silently) {
    offload_bandwidths bandwidths;
    offload_bandwidth_origins origins;
    char warning[512] = "x";
    cr_assert_eq(offload_bandwidths_from_profile(&bandwidths, &origins, warning, sizeof warning),
                 0);
    cr_assert_str_empty(warning);
    assert_defaults(&bandwidths);
    cr_assert_eq(origins.host_to_gpu, OFFLOAD_FROM_DEFAULT);
    cr_assert_eq(origins.disk_read, OFFLOAD_FROM_DEFAULT);
    int exit_status;
    char *out = run_cli("plan --preset tiny --resident-layers 0", &exit_status);
    cr_assert_eq(exit_status, 0, "%s", out);
    cr_assert(strstr(out, "host->gpu 55.0 GB/s (default), nvme 6.5 GB/s (default)"), "%s", out);
    cr_assert_null(strstr(out, "warning"), "%s", out);
    free(out);
}

Test(offload_profile, a_saved_profile_gives_the_link_and_disk_figures) {
    char *path = write_profile("{\"host\": \"h\", \"nvme_read_gbps\": 3.5, \"h2d_gbps\": 23.5,"
                               " \"nvme_to_gpu_gbps\": 3.0, \"best\": {\"gbps\": 3.5}}\n");
    offload_bandwidths bandwidths;
    offload_bandwidth_origins origins;
    char warning[512];
    cr_assert_eq(offload_bandwidths_from_profile(&bandwidths, &origins, warning, sizeof warning),
                 1);
    cr_assert_str_empty(warning);
    cr_assert_float_eq(bandwidths.host_to_gpu_gbps, 23.5, 1e-12);
    cr_assert_float_eq(bandwidths.disk_read_gbps, 3.5, 1e-12);
    cr_assert_float_eq(bandwidths.gpu_memory_gbps, offload_bandwidths_default().gpu_memory_gbps,
                       1e-12);
    cr_assert_eq(origins.host_to_gpu, OFFLOAD_FROM_PROFILE);
    cr_assert_eq(origins.disk_read, OFFLOAD_FROM_PROFILE);
    cr_assert_eq(origins.gpu_memory, OFFLOAD_FROM_DEFAULT);
    cr_assert_eq(origins.gpu_tflops, OFFLOAD_FROM_DEFAULT);

    int exit_status;
    char *out = run_cli("plan --preset tiny --resident-layers 0 --tflops 100", &exit_status);
    cr_assert_eq(exit_status, 0, "%s", out);
    cr_assert(strstr(out, "host->gpu 23.5 GB/s (profile), nvme 3.5 GB/s (profile), gpu memory "
                          "3000 GB/s (default), 100 TFLOP/s (given)"),
              "%s", out);
    free(out);
    out = run_cli("plan --preset tiny --resident-layers 0 --link-gbps 9", &exit_status);
    cr_assert(strstr(out, "host->gpu 9.0 GB/s (given)"), "%s", out);
    free(out);

    /* A streaming model plans with the profile and its report names it. */
    ferry_model *model = open_streamed_tiny(&exit_status);
    cr_assert_eq(exit_status, 0);
    const offload_plan *plan = offload_stream_plan(model->stream);
    cr_assert_float_eq(plan->bandwidths.host_to_gpu_gbps, 23.5, 1e-12);
    cr_assert_eq(plan->bandwidths_from.host_to_gpu, OFFLOAD_FROM_PROFILE);
    char report[4096], expected[1200];
    ferry_model_stream_report(model, report, sizeof report);
    snprintf(expected, sizeof expected, "sources      profile %s\n", path);
    cr_assert(strstr(report, expected), "%s", report);
    cr_assert(strstr(report, "host->gpu 23.5 GB/s (profile)"), "%s", report);
    ferry_model_close(model);
    free(path);
}

Test(offload_profile, a_corrupt_profile_is_a_warning_and_the_defaults) {
    char *path = write_profile("{\"nvme_read_gbps\": 3.5, \"h2d_gbps\": ");
    offload_bandwidths bandwidths;
    offload_bandwidth_origins origins;
    char warning[1200];
    cr_assert_eq(offload_bandwidths_from_profile(&bandwidths, &origins, warning, sizeof warning),
                 0);
    cr_assert(strstr(warning, path) && strstr(warning, "not a JSON object"), "%s", warning);
    assert_defaults(&bandwidths);
    cr_assert_eq(origins.disk_read, OFFLOAD_FROM_DEFAULT);

    int exit_status;
    char *out = run_cli("plan --preset tiny --resident-layers 0", &exit_status);
    cr_assert_eq(exit_status, 0, "%s", out);
    cr_assert(strstr(out, "warning") && strstr(out, path), "%s", out);
    cr_assert(strstr(out, "host->gpu 55.0 GB/s (default)"), "%s", out);
    free(out);

    /* A figure that is not a positive number: that one falls back. */
    free(path);
    path = write_profile("{\"nvme_read_gbps\": 3.5, \"h2d_gbps\": \"fast\"}");
    cr_assert_eq(offload_bandwidths_from_profile(&bandwidths, &origins, warning, sizeof warning),
                 1);
    cr_assert(strstr(warning, "\"h2d_gbps\" is not a positive number"), "%s", warning);
    cr_assert_float_eq(bandwidths.disk_read_gbps, 3.5, 1e-12);
    cr_assert_float_eq(bandwidths.host_to_gpu_gbps, offload_bandwidths_default().host_to_gpu_gbps,
                       1e-12);
    cr_assert_eq(origins.host_to_gpu, OFFLOAD_FROM_DEFAULT);
    cr_assert_eq(origins.disk_read, OFFLOAD_FROM_PROFILE);

    /* Opening a streaming model is not affected, and the report says why. */
    ferry_model *model = open_streamed_tiny(&exit_status);
    char report[4096];
    ferry_model_stream_report(model, report, sizeof report);
    cr_assert(strstr(report, "\"h2d_gbps\" is not a positive number"), "%s", report);
    ferry_model_close(model);
    free(path);
}
