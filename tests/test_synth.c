/*
 * test_synth.c — `ferry synth` and `ferry info` through the command line:
 * same seed gives the same file, another seed another file, info --verify
 * passes on it and fails naming the tensor on a damaged copy, and bad
 * arguments exit non-zero with a message.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "helpers.h"
#include "runtime/format.h"

static int run_cli(const char *args, const char *out, const char *err) {
    char line[4096];
    snprintf(line, sizeof line, "%s %s", test_cli(), args);
    return test_run(line, out, err);
}

Test(synth, same_seed_same_file_other_seed_other_file) {
    char *dir = test_tempdir();
    char args[2048];
    const char *dtypes[] = {"f16", "bf16", "f32"};
    for (int d = 0; d < 3; d++) {
        for (int k = 0; k < 3; k++) {
            snprintf(args, sizeof args, "synth --preset tiny-qwen2 --dtype %s --seed %d %s/m%d.ferry",
                     dtypes[d], k == 2 ? 8 : 7, dir, k);
            cr_assert_eq(run_cli(args, NULL, NULL), 0, "%s", args);
        }
        char *a_path = test_path(dir, "m0.ferry"), *b_path = test_path(dir, "m1.ferry"),
             *c_path = test_path(dir, "m2.ferry");
        size_t a_bytes, b_bytes, c_bytes;
        char *a = test_read_file(a_path, &a_bytes), *b = test_read_file(b_path, &b_bytes),
             *c = test_read_file(c_path, &c_bytes);
        cr_assert(a && b && c);
        cr_assert_eq(a_bytes, b_bytes);
        cr_assert_eq(memcmp(a, b, a_bytes), 0, "same seed, different %s files", dtypes[d]);
        cr_assert_eq(a_bytes, c_bytes);
        cr_assert_neq(memcmp(a, c, a_bytes), 0, "different seeds, same file");
        ferry_file *file = NULL;
        cr_assert_eq(ferry_file_open(a_path, &file), FERRY_OK, "%s", ferry_last_error());
        cr_assert_str_eq(file->layout.config.architecture, "qwen2");
        cr_assert_str_eq(ferry_dtype_name(file->layout.dtype), dtypes[d]);
        ferry_file_close(file);
        free(a), free(b), free(c), free(a_path), free(b_path), free(c_path);
    }
    test_rmtree(dir);
    free(dir);
}

Test(synth, info_verify_passes_and_names_a_damaged_tensor) {
    char *dir = test_tempdir();
    char args[2048];
    snprintf(args, sizeof args, "synth --preset tiny --layers 3 --seed 1 %s/m.ferry", dir);
    cr_assert_eq(run_cli(args, NULL, NULL), 0);
    char *out = test_path(dir, "out.txt"), *err = test_path(dir, "err.txt");
    snprintf(args, sizeof args, "info --verify %s/m.ferry", dir);
    cr_assert_eq(run_cli(args, out, err), 0);
    char *text = test_read_file(out, NULL);
    cr_assert(strstr(text, "layers          3") && strstr(text, "ok"), "%s", text);
    free(text);

    /* damage the middle of layers.1.w_up */
    char *path = test_path(dir, "m.ferry");
    ferry_file *file = NULL;
    cr_assert_eq(ferry_file_open(path, &file), FERRY_OK);
    const ferry_tensor_entry *entry =
        &file->layout.tensors[ferry_layout_find(&file->layout, 1, FERRY_TENSOR_W_UP)];
    uint64_t at = entry->offset + entry->bytes / 2;
    ferry_file_close(file);
    size_t bytes;
    char *content = test_read_file(path, &bytes);
    content[at] ^= 1;
    test_write_file(path, content, bytes);
    free(content);
    cr_assert_eq(run_cli(args, out, err), 1);
    char *message = test_read_file(err, NULL);
    cr_assert(strstr(message, "layers.1.w_up"), "%s", message);
    free(message);
    test_rmtree(dir);
    free(dir);
    free(out);
    free(err);
    free(path);
}

Test(synth, bad_arguments_exit_nonzero_with_a_message) {
    char *dir = test_tempdir();
    char *err = test_path(dir, "err.txt");
    static const struct {
        const char *args;
        const char *says;
    } cases[] = {
        {"synth --preset nope x.ferry", "unknown preset"},
        {"synth x.ferry", "--preset"},
        {"synth --preset tiny --dtype f8 x.ferry", "dtype"},
        {"synth --preset tiny --layers 0 x.ferry", "--layers"},
        {"synth --preset tiny /nonexistent/dir/x.ferry", "/nonexistent/dir"},
        {"info /nonexistent.ferry", "/nonexistent.ferry"},
        {"info", "expected one"},
        {"synth --preset tiny --seed 12x x.ferry", "--seed"},
        {"synth --preset tiny --layers many x.ferry", "--layers"},
        {"synth --preset tiny a.ferry b.ferry", "one output path"},
        {"synth --preset tiny --bogus x.ferry", "--help"},
        {"info --verify --bogus x.ferry", "--help"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = run_cli(cases[i].args, NULL, err);
        cr_assert(rc == 1 || rc == 2, "%s exited %d", cases[i].args, rc);
        char *message = test_read_file(err, NULL);
        cr_assert(message && strstr(message, cases[i].says), "%s: '%s'", cases[i].args, message);
        free(message);
    }
    test_rmtree(dir);
    free(dir);
    free(err);
}

Test(synth, list_and_help_exit_zero) {
    char *dir = test_tempdir();
    char *out = test_path(dir, "out.txt");
    cr_assert_eq(run_cli("synth --list", out, NULL), 0);
    char *text = test_read_file(out, NULL);
    for (int i = 0; i < ferry_n_presets; i++)
        cr_assert(strstr(text, ferry_presets[i].name), "--list lacks %s", ferry_presets[i].name);
    free(text);
    const char *help[] = {"synth --help", "info --help"};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(run_cli(help[i], out, NULL), 0, "%s", help[i]);
        text = test_read_file(out, NULL);
        cr_assert(strstr(text, "usage: ferry"), "%s: %s", help[i], text);
        free(text);
    }
    test_rmtree(dir);
    free(dir);
    free(out);
}

/* Weights uniform in +-0.02*sqrt(3) (standard deviation 0.02), norms in
 * 1 +- 0.1, biases in +-0.02*sqrt(3): checked element by element on an f32
 * file, with the mean and spread of each tensor. */
Test(synth, values_have_the_documented_distribution) {
    char *dir = test_tempdir();
    char args[2048];
    snprintf(args, sizeof args, "synth --preset tiny-qwen2 --dtype f32 --layers 3 --seed 5 %s/m.ferry",
             dir);
    cr_assert_eq(run_cli(args, NULL, NULL), 0);
    char *path = test_path(dir, "m.ferry");
    ferry_file *file = NULL;
    cr_assert_eq(ferry_file_open(path, &file), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(file->layout.config.n_layers, 3);
    const double weight_bound = 0.02 * sqrt(3.0);
    for (int t = 0; t < file->layout.n_tensors; t++) {
        const ferry_tensor_entry *entry = &file->layout.tensors[t];
        char name[64];
        ferry_tensor_entry_name(entry, name, sizeof name);
        float *values = malloc(entry->bytes);
        cr_assert_eq(ferry_file_read_tensor(file, entry, values, 1), FERRY_OK);
        uint64_t n = entry->rows * entry->cols;
        int is_norm = entry->kind == FERRY_TENSOR_FINAL_NORM ||
                      entry->kind == FERRY_TENSOR_ATTN_NORM || entry->kind == FERRY_TENSOR_MLP_NORM;
        double center = is_norm ? 1.0 : 0.0, bound = is_norm ? 0.1 : weight_bound;
        double sum = 0, sum_squares = 0;
        for (uint64_t i = 0; i < n; i++) {
            double deviation = values[i] - center;
            cr_assert(fabs(deviation) <= bound * (1 + 1e-6), "%s[%llu] = %g", name,
                      (unsigned long long)i, (double)values[i]);
            sum += deviation;
            sum_squares += deviation * deviation;
        }
        double mean = sum / (double)n, spread = sqrt(sum_squares / (double)n);
        double expected_spread = bound / sqrt(3.0);
        /* n >= 16 here; the bounds allow for the smallest tensors */
        cr_assert(fabs(mean) < 4 * expected_spread / sqrt((double)n) + 1e-9, "%s mean %g", name,
                  mean);
        cr_assert(fabs(spread - expected_spread) < expected_spread * (n > 4096 ? 0.02 : 0.35),
                  "%s spread %g, expected %g", name, spread, expected_spread);
        free(values);
    }
    ferry_file_close(file);
    free(path);
    test_rmtree(dir);
    free(dir);
}

Test(synth, info_json_is_one_object_with_the_byte_counts) {
    char *dir = test_tempdir();
    char args[2048];
    snprintf(args, sizeof args, "synth --preset tiny --layers 2 %s/m.ferry", dir);
    cr_assert_eq(run_cli(args, NULL, NULL), 0);
    char *out = test_path(dir, "out.json");
    snprintf(args, sizeof args, "info --json --verify %s/m.ferry", dir);
    cr_assert_eq(run_cli(args, out, NULL), 0);
    char *text = test_read_file(out, NULL);
    cJSON *root = cJSON_Parse(text);
    cr_assert(cJSON_IsObject(root), "%s", text);
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "verified")));
    const ferry_preset *tiny = ferry_preset_find("tiny");
    ferry_config config = tiny->config;
    config.n_layers = 2;
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(root, "parameters")->valuedouble,
                 (double)ferry_config_n_parameters(&config));
    ferry_config back;
    cr_assert_eq(ferry_config_from_json(cJSON_GetObjectItemCaseSensitive(root, "config"), &back),
                 FERRY_OK);
    cr_assert_eq(memcmp(&back, &config, sizeof back), 0);
    ferry_layout layout;
    cr_assert_eq(ferry_layout_build(&config, FERRY_DTYPE_F16, &layout), FERRY_OK);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(root, "layer_bytes")->valuedouble,
                 (double)layout.extents[1].bytes);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(root, "globals_bytes")->valuedouble,
                 (double)layout.extents[0].bytes);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(root, "file_bytes")->valuedouble,
                 (double)layout.file_bytes);
    ferry_layout_free(&layout);
    cJSON_Delete(root);
    free(text);
    free(out);
    test_rmtree(dir);
    free(dir);
}

/* A file-size limit makes the disk "full" for this process: synth must say
 * so and leave neither the target nor the partial file. */
Test(synth, a_full_disk_is_a_clear_error_and_leaves_no_file) {
    char *dir = test_tempdir();
    char *err = test_path(dir, "err.txt");
    char line[4096];
    snprintf(line, sizeof line,
             "sh -c \"trap '' XFSZ; ulimit -f 1024; exec %s synth --preset tiny %s/m.ferry\"",
             test_cli(), dir);
    int rc = test_run(line, NULL, err);
    cr_assert_eq(rc, 1, "exit %d", rc);
    char *message = test_read_file(err, NULL);
    cr_assert(strstr(message, "m.ferry.partial") && strstr(message, "File too large"), "%s",
              message);
    free(message);
    char *target = test_path(dir, "m.ferry"), *partial = test_path(dir, "m.ferry.partial");
    cr_assert_neq(access(target, F_OK), 0);
    cr_assert_neq(access(partial, F_OK), 0);
    free(target);
    free(partial);
    free(err);
    test_rmtree(dir);
    free(dir);
}

/* Damaged files through the command line: exit 1 and one line naming the
 * file, quickly, never a signal. */
Test(synth, info_refuses_damaged_files_in_one_line) {
    char *dir = test_tempdir();
    char args[2048];
    snprintf(args, sizeof args, "synth --preset tiny --layers 2 %s/good.ferry", dir);
    cr_assert_eq(run_cli(args, NULL, NULL), 0);
    char *good = test_path(dir, "good.ferry"), *bad = test_path(dir, "bad.ferry"),
         *err = test_path(dir, "err.txt");
    size_t bytes = 0;
    char *content = test_read_file(good, &bytes);
    uint64_t state = test_seed();
    static const char *const kinds[] = {"empty", "truncated", "random", "manifest flip",
                                        "preamble flip"};
    for (int k = 0; k < 5; k++) {
        char *copy = malloc(bytes);
        memcpy(copy, content, bytes);
        size_t length = bytes;
        switch (k) {
        case 0: length = 0; break;
        case 1: length = (size_t)(test_rand_u64(&state) % bytes); break;
        case 2:
            for (size_t i = 0; i < length; i++) copy[i] = (char)test_rand_u64(&state);
            break;
        case 3: copy[FERRY_PREAMBLE_BYTES + test_rand_u64(&state) % 200] ^= 4; break;
        case 4: copy[test_rand_u64(&state) % FERRY_PREAMBLE_BYTES] ^= 0x10; break;
        }
        cr_assert_eq(test_write_file(bad, copy, length), 0);
        free(copy);
        char line[4096];
        snprintf(line, sizeof line, "timeout 20 %s info --verify %s", test_cli(), bad);
        int rc = test_run(line, NULL, err);
        cr_assert_eq(rc, 1, "%s file: exit %d", kinds[k], rc);
        char *message = test_read_file(err, NULL);
        cr_assert(strstr(message, bad), "%s file: '%s'", kinds[k], message);
        char *newline = strchr(message, '\n');
        cr_assert(newline && newline[1] == '\0', "%s file: not one line: '%s'", kinds[k], message);
        free(message);
    }
    free(content);
    free(good);
    free(bad);
    free(err);
    test_rmtree(dir);
    free(dir);
}
