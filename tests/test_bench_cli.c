/*
 * test_bench_cli.c — `ferry bench` as a user runs it, on the CPU backend
 * (the CUDA figures come from bench/gpu_run.sh): one JSON line per batch
 * size with the fields scripts read, bytes per step counted from the
 * model's shape (recomputed here from the preset's dimensions), and clear
 * usage errors for bad input.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

static char *dir, *model_path;

static int run_bench(const char *arguments, char **out_stdout, char **out_stderr) {
    char command[4096];
    char *stdout_path = test_path(dir, "stdout.txt"), *stderr_path = test_path(dir, "stderr.txt");
    snprintf(command, sizeof command, "'%s' bench %s", test_cli(), arguments);
    int exit_status = test_run(command, stdout_path, stderr_path);
    *out_stdout = test_read_file(stdout_path, NULL);
    *out_stderr = test_read_file(stderr_path, NULL);
    free(stdout_path);
    free(stderr_path);
    return exit_status;
}

static void setup(void) {
    dir = test_tempdir();
    model_path = test_path(dir, "tiny.ferry");
    char command[4096];
    char *stderr_path = test_path(dir, "synth.txt");
    snprintf(command, sizeof command, "'%s' synth --preset tiny --dtype f16 '%s'", test_cli(),
             model_path);
    cr_assert_eq(test_run(command, NULL, stderr_path), 0, "ferry synth failed");
    free(stderr_path);
}

static void teardown(void) {
    test_rmtree(dir);
    free(dir);
    free(model_path);
}

TestSuite(bench_cli, .init = setup, .fini = teardown, .timeout = 120);

Test(bench_cli, json_gives_one_line_per_batch_with_bytes_from_the_model_shape) {
    char arguments[2048], *out = NULL, *err = NULL;
    snprintf(arguments, sizeof arguments,
             "--model '%s' --backend cpu --threads 1 --batch 1,3 --prompt-len 5 --gen-len 3 "
             "--json",
             model_path);
    int exit_status = run_bench(arguments, &out, &err);
    cr_assert_eq(exit_status, 0, "exit %d: %s", exit_status, err ? err : "");
    /* tiny: vocab 512, hidden 64, intermediate 172, 2 layers, 4 heads, 2 KV heads, head_dim
     * 16, untied; f16 matrices, f32 norms, f32 KV cache on the CPU */
    const double hidden = 64, inter = 172, vocab = 512, q = 4 * 16, kv = 2 * 16, layers = 2;
    const double layer_bytes = 2 * (hidden * (q + 2 * kv) + q * hidden + 3 * hidden * inter) +
                               4 * 2 * hidden;
    const int expected_batches[] = {1, 3};
    int n_batch_lines = 0, saw_run = 0;
    char *save = NULL;
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *object = cJSON_Parse(line);
        cr_assert(object, "not JSON: %s", line);
        const char *kind = cJSON_GetObjectItem(object, "kind")->valuestring;
        if (strcmp(kind, "run") == 0) {
            saw_run = 1;
            cr_assert_str_eq(cJSON_GetObjectItem(object, "backend")->valuestring, "cpu");
        } else if (strcmp(kind, "batch") == 0) {
            cr_assert_lt(n_batch_lines, 2, "more batch lines than batch sizes");
            int batch = expected_batches[n_batch_lines++];
            cr_assert_eq(cJSON_GetObjectItem(object, "batch")->valueint, batch);
            const char *positive[] = {"prefill_tok_s", "decode_tok_s", "step_ms", "achieved_gbps"};
            for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++)
                cr_assert_gt(cJSON_GetObjectItem(object, positive[i])->valuedouble, 0,
                             "%s is not positive in %s", positive[i], line);
            /* every layer, the final norm, lm_head, and only the batch's embedding rows */
            double weights = layers * layer_bytes + 4 * hidden + 2 * vocab * hidden +
                             2 * hidden * batch;
            cr_assert_float_eq(cJSON_GetObjectItem(object, "weight_bytes_per_step")->valuedouble,
                               weights, 0.5, "batch %d", batch);
            /* K and V of every layer at the mean context 5 + (3 + 1) / 2 = 7 */
            double kv_bytes = 2 * layers * kv * 4 * 7.0 * batch;
            cr_assert_float_eq(cJSON_GetObjectItem(object, "kv_bytes_per_step")->valuedouble,
                               kv_bytes, 0.5, "batch %d", batch);
        } else {
            cr_assert_fail("unexpected kind %s", kind);
        }
        cJSON_Delete(object);
    }
    cr_assert(saw_run, "no run line");
    cr_assert_eq(n_batch_lines, 2);
    free(out);
    free(err);
}

Test(bench_cli, the_table_names_its_columns_and_kernels_adds_the_matmul_and_attention_rows) {
    char arguments[2048], *out = NULL, *err = NULL;
    snprintf(arguments, sizeof arguments,
             "--model '%s' --backend cpu --threads 1 --batch 2 --prompt-len 4 --gen-len 2 "
             "--kernels",
             model_path);
    int exit_status = run_bench(arguments, &out, &err);
    cr_assert_eq(exit_status, 0, "exit %d: %s", exit_status, err ? err : "");
    const char *expected[] = {"decode t/s", "step ms", "GB/s", "of copy", "matmul op alone",
                              "lm_head", "512 x 64", "decode attention op alone", "    16     4096"};
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
        cr_assert(strstr(out, expected[i]), "'%s' missing from:\n%s", expected[i], out);
    free(out);
    free(err);
}

Test(bench_cli, bad_input_is_a_usage_error_naming_the_problem) {
    const struct {
        const char *arguments;
        int exit_status;
        const char *message;
    } cases[] = {
        {"--batch 1", 2, "--model is required"},
        {"--model M --batch 0", 2, "--batch '0'"},
        {"--model M --batch 1,x", 2, "bad token list"},
        {"--model M --prompt-len 0", 2, "--prompt-len"},
        {"--model M --frobnicate", 2, "unknown option"},
        {"--model /nonexistent/model.ferry --backend cpu", 1, "cannot load the model"},
        {"--model M --gpu-mem lots", 2, "bad size 'lots'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = NULL, *err = NULL;
        int exit_status = run_bench(cases[i].arguments, &out, &err);
        cr_assert_eq(exit_status, cases[i].exit_status, "%s: exit %d: %s", cases[i].arguments,
                     exit_status, err ? err : "");
        cr_assert(err && strstr(err, cases[i].message), "%s: stderr lacks '%s': %s",
                  cases[i].arguments, cases[i].message, err ? err : "");
        free(out);
        free(err);
    }
}

Test(bench_cli, gpu_mem_streams_layers_and_refuses_an_impossible_budget) {
    char arguments[2048], *out = NULL, *err = NULL;
    snprintf(arguments, sizeof arguments,
             "--model '%s' --backend cpu --threads 1 --batch 2 --prompt-len 4 --gen-len 2 "
             "--gpu-mem 64M --host-mem 64M --json",
             model_path);
    int exit_status = run_bench(arguments, &out, &err);
    cr_assert_eq(exit_status, 0, "exit %d: %s", exit_status, err ? err : "");
    cr_assert(out && strstr(out, "\"batch\":2"), "no batch line: %s", out ? out : "");
    free(out);
    free(err);
    snprintf(arguments, sizeof arguments,
             "--model '%s' --backend cpu --batch 2 --prompt-len 4 --gen-len 2 --gpu-mem 4K",
             model_path);
    exit_status = run_bench(arguments, &out, &err);
    cr_assert_eq(exit_status, 1, "exit %d", exit_status);
    cr_assert(err && strstr(err, "needs at least"), "stderr: %s", err ? err : "");
    free(out);
    free(err);
}
