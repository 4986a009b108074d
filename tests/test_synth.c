/*
 * test_synth.c — `ferry synth` and `ferry info` through the command line:
 * same seed gives the same file, another seed another file, info --verify
 * passes on it and fails naming the tensor on a damaged copy, and bad
 * arguments exit non-zero with a message.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

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
