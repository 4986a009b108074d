/*
 * test_offload_cli.c — `ferry plan`: the table for a preset shape and for a
 * written .ferry file, --batch auto, an impossible budget refused with the
 * memory it needs, and bad options refused with a usage error.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "helpers.h"

/* Run `ferry plan ARGS`; returns the exit status, *out the stdout+stderr text. */
static int run_plan(const char *dir, const char *args, char **out) {
    char *log = test_path(dir, "plan.log");
    char command[1024];
    snprintf(command, sizeof command, "%s plan %s", test_cli(), args);
    int status = test_run(command, log, log);
    *out = test_read_file(log, NULL);
    cr_assert_not_null(*out);
    free(log);
    return status;
}

Test(offload_cli, plan_prints_every_layer_streamed_from_dram_for_resident_layers_0) {
    char *dir = test_tempdir(), *out = NULL;
    int status = run_plan(dir, "--preset llama2-7b --batch 1 --context 256 --resident-layers 0 "
                               "--gpu-mem 8G --host-mem 32G --link-gbps 55",
                          &out);
    cr_assert_eq(status, 0, "%s", out);
    const char *expected[] = {"model: llama2-7b (llama, 32 layers, f16)",
                              "plan: batch 1, context 256, 2 GPU slots of 386.03 MiB",
                              "  dram           0-31\n", "kv cache       gpu",
                              "(0 resident, 32 in DRAM, 0 on NVMe)", "tokens/s"};
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
        cr_assert(strstr(out, expected[i]), "missing '%s' in:\n%s", expected[i], out);
    free(out);
    test_rmtree(dir);
    free(dir);
}

Test(offload_cli, plan_batch_auto_picks_a_batch_within_the_budgets) {
    char *dir = test_tempdir(), *out = NULL;
    int status = run_plan(dir, "--preset llama2-7b --batch auto --context 128 --gpu-mem 4G "
                               "--host-mem 64G",
                          &out);
    cr_assert_eq(status, 0, "%s", out);
    int batch = 0;
    const char *line = strstr(out, "plan: batch ");
    cr_assert_not_null(line, "%s", out);
    cr_assert_eq(sscanf(line, "plan: batch %d", &batch), 1);
    cr_assert(batch > 1, "auto chose batch %d:\n%s", batch, out);
    free(out);
    test_rmtree(dir);
    free(dir);
}

Test(offload_cli, plan_refuses_an_impossible_budget_naming_what_it_needs) {
    char *dir = test_tempdir(), *out = NULL;
    int status = run_plan(dir, "--preset llama2-7b --gpu-mem 1G", &out);
    cr_assert_eq(status, 1, "%s", out);
    cr_assert(strstr(out, "needs at least") && strstr(out, "of GPU memory for 2 slots of 386.03 MiB"),
              "%s", out);
    free(out);
    test_rmtree(dir);
    free(dir);
}

Test(offload_cli, plan_reads_the_layout_of_a_ferry_file) {
    char *dir = test_tempdir(), *out = NULL;
    char *model = test_path(dir, "tiny.ferry");
    char command[1024];
    snprintf(command, sizeof command, "%s synth --preset tiny %s", test_cli(), model);
    if (test_run(command, NULL, NULL) != 0) cr_skip("ferry synth is not available yet");
    char args[600];
    snprintf(args, sizeof args, "--model %s --batch 2 --context 64 --resident-layers 1", model);
    int status = run_plan(dir, args, &out);
    cr_assert_eq(status, 0, "%s", out);
    /* tiny has 2 layers: the one resident is the last (it ends the step's
     * only stretch of streamed layers) */
    cr_assert(strstr(out, "  gpu            1\n") && strstr(out, "  dram           0\n"), "%s", out);
    free(out);
    free(model);
    test_rmtree(dir);
    free(dir);
}

Test(offload_cli, plan_refuses_bad_options_with_a_usage_error) {
    char *dir = test_tempdir(), *out = NULL;
    cr_assert_eq(run_plan(dir, "--preset llama2-7b --batch zero", &out), 2, "%s", out);
    cr_assert(strstr(out, "--batch zero"), "%s", out);
    free(out);
    cr_assert_eq(run_plan(dir, "--batch 1", &out), 2, "%s", out);
    cr_assert(strstr(out, "exactly one of --model"), "%s", out);
    free(out);
    cr_assert_eq(run_plan(dir, "--preset no-such-model", &out), 2, "%s", out);
    free(out);
    test_rmtree(dir);
    free(dir);
}
