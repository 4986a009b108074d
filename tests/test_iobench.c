/*
 * test_iobench.c — `ferry iobench` as a user meets it: JSON lines with
 * every promised key, the best line, the saved profile, the page-cache
 * advice, model targets, forced fallbacks said once, and bad input that
 * gets a clear message and a usage exit code, never a run or a crash.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.h"
#include "nvme/nvme.h"

static char *dir;

static void setup(void) {
    dir = test_tempdir();
    cr_assert(dir);
    unsetenv("FERRY_NVME_FORCE");
}
static void teardown(void) {
    test_rmtree(dir);
    free(dir);
}
TestSuite(iobench, .init = setup, .fini = teardown);

/* Run `ferry iobench ARGS`; stdout/stderr land in dir/out, dir/err. */
static int iobench(const char *args, char **out, char **err) {
    char command[4096];
    snprintf(command, sizeof command, "%s iobench %s", test_cli(), args);
    char *out_path = test_path(dir, "out"), *err_path = test_path(dir, "err");
    int code = test_run(command, out_path, err_path);
    *out = test_read_file(out_path, NULL);
    *err = test_read_file(err_path, NULL);
    free(out_path);
    free(err_path);
    cr_assert(*out && *err);
    return code;
}

static const char *const config_keys[] = {"mode", "bs", "qd", "threads", "direct", "gbps",
                                          "iops", "lat_p50_us", "lat_p99_us", "lat_p999_us"};

/* Every line a JSON object; configuration lines carry every key. */
static int check_json_lines(char *text, int *out_best_lines) {
    int n_configs = 0;
    *out_best_lines = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *object = cJSON_Parse(line);
        cr_assert(object, "not JSON: %s", line);
        cJSON *best = cJSON_GetObjectItem(object, "best");
        cJSON *config = best ? best : object;
        if (cJSON_GetObjectItem(object, "to_gpu")) {
            cJSON_Delete(object);
            continue;
        }
        for (size_t k = 0; k < sizeof config_keys / sizeof config_keys[0]; k++)
            cr_assert(cJSON_GetObjectItem(config, config_keys[k]), "no '%s' in %s", config_keys[k],
                      line);
        cr_assert_gt(cJSON_GetObjectItem(config, "gbps")->valuedouble, 0, "%s", line);
        cr_assert_gt(cJSON_GetObjectItem(config, "iops")->valuedouble, 0, "%s", line);
        double p50 = cJSON_GetObjectItem(config, "lat_p50_us")->valuedouble;
        double p999 = cJSON_GetObjectItem(config, "lat_p999_us")->valuedouble;
        cr_assert(p50 > 0 && p50 <= p999, "%s", line);
        if (best) (*out_best_lines)++;
        else n_configs++;
        cJSON_Delete(object);
    }
    return n_configs;
}

Test(iobench, creates_a_missing_file_and_prints_a_json_line_per_configuration) {
    char args[1024], *out, *err;
    char *file = test_path(dir, "test.bin");
    snprintf(args, sizeof args, "--file %s --size 8m --bs 256k,1m --qd 1,4 --json", file);
    cr_assert_eq(iobench(args, &out, &err), 0, "stderr: %s", err);
    struct stat st;
    cr_assert_eq(stat(file, &st), 0);
    cr_assert_eq(st.st_size, 8 << 20);
    int best_lines = 0;
    cr_assert_eq(check_json_lines(out, &best_lines), 4);
    cr_assert_eq(best_lines, 1);
    free(out);
    free(err);
    free(file);
}

Test(iobench, table_output_names_the_best_configuration) {
    char args[1024], *out, *err;
    char *file = test_path(dir, "table.bin");
    snprintf(args, sizeof args, "--file %s --size 4m --bs 1m --qd 2 --mode read,randread,write",
             file);
    cr_assert_eq(iobench(args, &out, &err), 0, "stderr: %s", err);
    cr_assert(strstr(out, "GB/s") && strstr(out, "p99.9 us"), "%s", out);
    cr_assert(strstr(out, "randread"), "%s", out);
    cr_assert(strstr(out, "\nbest: "), "%s", out);
    free(out);
    free(err);
    free(file);
}

Test(iobench, save_stores_the_profile_in_the_xdg_cache) {
    char args[2048], *out, *err;
    char *file = test_path(dir, "save.bin"), *cache = test_path(dir, "cache");
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    snprintf(args, sizeof args, "--file %s --size 4m --bs 1m --qd 4 --save", file);
    setenv("XDG_CACHE_HOME", cache, 1);
    cr_assert_eq(iobench(args, &out, &err), 0, "stderr: %s", err);
    unsetenv("XDG_CACHE_HOME");
    char profile_name[512];
    snprintf(profile_name, sizeof profile_name, "ferry/profile-%s.json", host);
    char *profile_path = test_path(cache, profile_name);
    char *text = test_read_file(profile_path, NULL);
    cr_assert(text, "no profile at %s (stderr: %s)", profile_path, err);
    cJSON *profile = cJSON_Parse(text);
    cr_assert(profile);
    cJSON *best = cJSON_GetObjectItem(profile, "best");
    cr_assert(best && cJSON_GetObjectItem(best, "gbps"), "%s", text);
    cr_assert_gt(cJSON_GetObjectItem(profile, "nvme_read_gbps")->valuedouble, 0);
    cJSON_Delete(profile);
    free(text);
    free(profile_path);
    free(out);
    free(err);
    free(file);
    free(cache);
}

Test(iobench, buffered_mode_advises_on_the_page_cache_and_small_files) {
    char args[1024], *out, *err;
    char *file = test_path(dir, "buffered.bin");
    snprintf(args, sizeof args, "--file %s --size 2m --bs 100000 --qd 2 --buffered --json", file);
    cr_assert_eq(iobench(args, &out, &err), 0, "stderr: %s", err);
    cr_assert(strstr(err, "drop_caches"), "%s", err);
    cr_assert(strstr(err, "smaller than RAM"), "%s", err);
    int best_lines;
    cr_assert_eq(check_json_lines(out, &best_lines), 1);
    free(out);
    free(err);
    free(file);
}

Test(iobench, forced_fallback_is_said_once_and_still_measures) {
    char args[1024], *out, *err;
    char *file = test_path(dir, "forced.bin");
    snprintf(args, sizeof args, "--file %s --size 4m --bs 1m --qd 1,2,4 --json", file);
    setenv("FERRY_NVME_FORCE", "pread", 1);
    cr_assert_eq(iobench(args, &out, &err), 0, "stderr: %s", err);
    unsetenv("FERRY_NVME_FORCE");
    char *first = strstr(err, "io_uring unavailable");
    cr_assert(first, "%s", err);
    cr_assert_null(strstr(first + 1, "io_uring unavailable"), "said twice: %s", err);
    cr_assert(strstr(out, "\"backend\":\"pread\""), "%s", out);
    free(out);
    free(err);
    free(file);
}

Test(iobench, model_target_reads_its_layer_extents) {
    char command[2048], args[1024], *out, *err;
    char *model = test_path(dir, "tiny.ferry");
    snprintf(command, sizeof command, "%s synth --preset tiny --layers 4 %s", test_cli(), model);
    cr_assert_eq(test_run(command, NULL, NULL), 0, "ferry synth failed");
    snprintf(args, sizeof args, "--model %s --bs 64k --qd 4 --json --threads 1,2", model);
    cr_assert_eq(iobench(args, &out, &err), 0, "stderr: %s", err);
    int best_lines;
    cr_assert_eq(check_json_lines(out, &best_lines), 2);
    free(out);
    free(err);
    free(model);
}

/* ------------------------------------------------------------ bad input */

typedef struct bad_case {
    const char *args;           /* %s: a scratch path; %e: an existing file */
    int exit_code;
    const char *says;
} bad_case;

Test(iobench, bad_input_gets_a_clear_message_and_no_run) {
    char *existing = test_path(dir, "existing.bin");
    cr_assert_eq(test_write_file(existing, "0123456789abcdef", 16), 0);
    char *missing = test_path(dir, "missing.ferry");
    const bad_case cases[] = {
        {"--model MISSING", 1, "missing.ferry"},
        {"--file NEW --size 0", 2, "above zero"},
        {"--file NEW --bs 6000", 2, "multiple of 4k"},
        {"--file NEW --qd 0", 2, "at least 1"},
        {"--file NEW --threads 0", 2, "at least 1"},
        {"--file EXISTING --mode write", 2, "--write"},
        {"--file /dev/null --mode write", 2, "refusing"},
        {"--file NEW --mode sideways", 2, "unknown mode"},
        {"--file NEW --runtime -1", 2, "--runtime"},
        {"--file NEW --bogus", 2, "unknown option"},
        {"--bs 1m", 2, "--file"},
        {"--file NEW --model MISSING", 2, "exactly one"},
        {"--file NEW --qd", 2, "needs a value"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[2048] = "", *out, *err;
        /* Substitute the placeholders. */
        const char *p = cases[i].args;
        while (*p) {
            const char *words[] = {"MISSING", "EXISTING", "NEW"};
            const char *paths[] = {missing, existing, "NEW"};
            int replaced = 0;
            for (int w = 0; w < 3 && !replaced; w++) {
                size_t n = strlen(words[w]);
                if (strncmp(p, words[w], n) == 0) {
                    char *fresh = w == 2 ? test_path(dir, "new.bin") : NULL;
                    strcat(args, fresh ? fresh : paths[w]);
                    free(fresh);
                    p += n;
                    replaced = 1;
                }
            }
            if (!replaced) strncat(args, p++, 1);
        }
        int code = iobench(args, &out, &err);
        cr_assert_eq(code, cases[i].exit_code, "'%s': exit %d, stderr: %s", args, code, err);
        cr_assert(strstr(err, cases[i].says), "'%s': stderr lacks '%s': %s", args, cases[i].says,
                  err);
        cr_assert_eq(out[0], '\0', "'%s' printed results: %s", args, out);
        free(out);
        free(err);
    }
    /* Nothing was written to the existing file or created by a refused run. */
    char *text = test_read_file(existing, NULL);
    cr_assert_str_eq(text, "0123456789abcdef");
    free(text);
    char *new_path = test_path(dir, "new.bin");
    cr_assert_neq(access(new_path, F_OK), 0, "a refused run created %s", new_path);
    free(new_path);
    free(existing);
    free(missing);
}

Test(iobench, to_gpu_without_cuda_says_so) {
    if (nvme_cuda_available()) cr_skip("a GPU is here: --to-gpu is measured by bench/, not refused");
    char args[1024], *out, *err;
    char *file = test_path(dir, "gpu.bin");
    snprintf(args, sizeof args, "--file %s --size 1m --bs 1m --qd 1 --to-gpu", file);
    cr_assert_eq(iobench(args, &out, &err), 1);
    cr_assert(strstr(err, "CUDA"), "%s", err);
    free(out);
    free(err);
    free(file);
}
