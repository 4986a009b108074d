/*
 * test_stream_cli.c — the layer-streaming flags (--gpu-mem, --host-mem,
 * --resident-layers, --slots) as a user gives them to `ferry logits` and
 * `ferry generate` on the CPU backend: a streamed run prints its plan and
 * gives the same logits and tokens as the all-resident run (the reference),
 * bad values are usage errors, and every command's --help shows the same
 * lines for them.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

enum { N_LAYERS = 8, VOCAB = 512, N_PROMPT = 12 };

static char *dir, *model_path;
static char prompt[256];    /* fresh random token ids, "a,b,c" */

/* Run `ferry ARGUMENTS`; stdout and stderr into *out and *err (malloc'd). */
static int run_cli(const char *arguments, char **out, char **err) {
    int exit_status = test_cli_capture(dir, NULL, arguments, out, err);
    cr_assert(*out && *err, "cannot read the output of: ferry %s", arguments);
    return exit_status;
}

static void setup(void) {
    dir = test_tempdir();
    model_path = test_path(dir, "tiny8.ferry");
    uint64_t state = test_seed();
    char command[4096];
    snprintf(command, sizeof command, "'%s' synth --preset tiny --layers %d --seed %llu '%s'",
             test_cli(), N_LAYERS, (unsigned long long)(test_rand_u64(&state) % 100000),
             model_path);
    cr_assert_eq(test_run(command, NULL, NULL), 0, "ferry synth failed");
    size_t used = 0;
    for (int i = 0; i < N_PROMPT; i++)
        used += (size_t)snprintf(prompt + used, sizeof prompt - used, i ? ",%d" : "%d",
                                 (int)(test_rand_u64(&state) % VOCAB));
}

static void teardown(void) {
    test_rmtree(dir);
    free(dir);
    free(model_path);
}

TestSuite(stream_cli, .init = setup, .fini = teardown, .timeout = 120);

/* The budgets that stream this model: all of it resident needs about 1 MiB
 * of "device" memory and streaming about 0.5 MiB, so 800K keeps some
 * layers resident and streams the rest; 400K of host memory holds the
 * staging buffers and a layer or so, the rest is read from the file. */
static const char *const streamed_runs[] = {
    "--gpu-mem 800K --host-mem 400K",
    "--resident-layers 0 --slots 1",
    "--gpu-mem 2M --resident-layers 3 --slots 3",
};

/* The stderr of a streamed run names the plan and places some layer
 * outside device memory. */
static void assert_streamed(const char *err, const char *command, const char *flags) {
    char title[64];
    snprintf(title, sizeof title, "ferry %s: streaming plan:", command);
    cr_assert(strstr(err, title), "%s: no plan on stderr:\n%s", flags, err);
    const char *counts = strstr(err, "resident, ");
    cr_assert(counts, "%s: no layer counts:\n%s", flags, err);
    while (counts > err && counts[-1] != '(') counts--;
    int resident = -1, in_dram = -1, on_disk = -1;
    cr_assert_eq(sscanf(counts, "%d resident, %d in DRAM, %d on NVMe", &resident, &in_dram,
                        &on_disk), 3, "%s: %s", flags, err);
    cr_assert_eq(resident + in_dram + on_disk, N_LAYERS, "%s: %s", flags, err);
    cr_assert_lt(resident, N_LAYERS, "%s: every layer resident:\n%s", flags, err);
}

static float *read_logits(const char *path, size_t *out_count) {
    size_t bytes = 0;
    char *data = test_read_file(path, &bytes);
    cr_assert_not_null(data, "%s not written", path);
    cr_assert_eq(bytes % sizeof(float), 0);
    *out_count = bytes / sizeof(float);
    return (float *)data;
}

Test(stream_cli, logits_of_a_streamed_model_match_the_resident_run) {
    char arguments[2048], *out = NULL, *err = NULL;
    char *reference_path = test_path(dir, "resident.bin"), *streamed_path = test_path(dir, "s.bin");
    snprintf(arguments, sizeof arguments, "logits --model '%s' --backend cpu --tokens %s --out '%s'",
             model_path, prompt, reference_path);
    cr_assert_eq(run_cli(arguments, &out, &err), 0, "%s", err);
    cr_assert_null(strstr(err, "streaming plan"), "a resident run printed a plan:\n%s", err);
    free(out);
    free(err);
    size_t n_reference = 0;
    float *reference = read_logits(reference_path, &n_reference);
    cr_assert_eq(n_reference, (size_t)N_PROMPT * VOCAB);

    for (size_t r = 0; r < sizeof streamed_runs / sizeof streamed_runs[0]; r++) {
        /* poison: a run that writes nothing, or too little, cannot pass */
        float poison[VOCAB];
        for (int i = 0; i < VOCAB; i++) poison[i] = NAN;
        cr_assert_eq(test_write_file(streamed_path, poison, sizeof poison), 0);
        snprintf(arguments, sizeof arguments,
                 "logits --model '%s' --backend cpu --tokens %s --out '%s' %s", model_path, prompt,
                 streamed_path, streamed_runs[r]);
        cr_assert_eq(run_cli(arguments, &out, &err), 0, "%s: %s", streamed_runs[r], err);
        assert_streamed(err, "logits", streamed_runs[r]);
        size_t n_streamed = 0;
        float *streamed = read_logits(streamed_path, &n_streamed);
        cr_assert_eq(n_streamed, n_reference, "%s", streamed_runs[r]);
        for (size_t i = 0; i < n_reference; i++)
            cr_assert(fabsf(streamed[i] - reference[i]) <= 1e-5f * (1 + fabsf(reference[i])),
                      "%s: logit %zu (position %zu): %g streamed, %g resident", streamed_runs[r],
                      i, i / VOCAB, streamed[i], reference[i]);
        free(streamed);
        free(out);
        free(err);
    }
    free(reference);
    free(reference_path);
    free(streamed_path);
}

Test(stream_cli, generate_on_a_streamed_model_gives_the_resident_tokens) {
    /* sampled tokens follow small changes of the logits; greedy ones too */
    const char *const samplings[] = {"--seed 7", "--seed 12345 --top-k 40", "--greedy"};
    for (size_t s = 0; s < sizeof samplings / sizeof samplings[0]; s++) {
        char arguments[2048], *reference = NULL, *out = NULL, *err = NULL;
        snprintf(arguments, sizeof arguments,
                 "generate --model '%s' --backend cpu --tokens %s --max-new-tokens 20 "
                 "--ignore-eos %s",
                 model_path, prompt, samplings[s]);
        cr_assert_eq(run_cli(arguments, &reference, &err), 0, "%s", err);
        free(err);
        int n_commas = 0;
        for (const char *c = reference; *c; c++) n_commas += *c == ',';
        cr_assert_eq(n_commas, 19, "not 20 tokens: %s", reference);
        for (size_t r = 0; r < sizeof streamed_runs / sizeof streamed_runs[0]; r++) {
            char streamed_arguments[2300];
            snprintf(streamed_arguments, sizeof streamed_arguments, "%s %s", arguments,
                     streamed_runs[r]);
            cr_assert_eq(run_cli(streamed_arguments, &out, &err), 0, "%s: %s", streamed_runs[r],
                         err);
            assert_streamed(err, "generate", streamed_runs[r]);
            cr_assert_str_eq(out, reference, "%s %s", samplings[s], streamed_runs[r]);
            free(out);
            free(err);
        }
        free(reference);
    }
}

Test(stream_cli, bad_budget_values_are_usage_errors_naming_the_flag) {
    const struct {
        const char *flags;
        int exit_status;
        const char *message;
    } cases[] = {
        {"--gpu-mem lots", 2, "--gpu-mem: bad size 'lots'"},
        {"--host-mem 12Q", 2, "--host-mem: bad size '12Q'"},
        {"--gpu-mem -1G", 2, "bad size '-1G'"},
        {"--gpu-mem 0", 2, "--gpu-mem '0' is 0 bytes"},
        {"--host-mem=0", 2, "--host-mem '0' is 0 bytes"},
        {"--slots 0", 2, "--slots '0' is not an integer in 1..64"},
        {"--slots 65", 2, "--slots"},
        {"--resident-layers -2", 2, "--resident-layers '-2'"},
        {"--resident-layers x", 2, "--resident-layers 'x'"},
        {"--gpu-mem 1G --gpu-mem 2G", 2, "--gpu-mem given twice"},
        {"--gpu-mem", 2, "--gpu-mem needs a value"},
        /* well-formed but impossible: the library says what it needs */
        {"--gpu-mem 4K", 1, "needs at least"},
        {"--resident-layers 9", 1, "resident layers 9"},
    };
    const char *const commands[] = {"logits --out /dev/null", "generate --max-new-tokens 2"};
    for (size_t c = 0; c < sizeof commands / sizeof commands[0]; c++) {
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            char arguments[2048], *out = NULL, *err = NULL;
            snprintf(arguments, sizeof arguments, "%s --model '%s' --backend cpu --tokens 1,2 %s",
                     commands[c], model_path, cases[i].flags);
            int exit_status = run_cli(arguments, &out, &err);
            cr_assert_eq(exit_status, cases[i].exit_status, "%s: exit %d: %s", arguments,
                         exit_status, err);
            cr_assert(strstr(err, cases[i].message), "%s: stderr lacks '%s': %s", arguments,
                      cases[i].message, err);
            free(out);
            free(err);
        }
    }
    /* batch and plan read the same flags the same way */
    const char *const others[] = {"batch --input /dev/null --output /dev/null --gpu-mem lots",
                                  "plan --gpu-mem lots", "bench --gpu-mem lots",
                                  "batch --input /dev/null --output /dev/null --slots 0",
                                  "plan --slots 0", "bench --slots 0"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        char arguments[2048], *out = NULL, *err = NULL;
        snprintf(arguments, sizeof arguments, "%s --model '%s'", others[i], model_path);
        cr_assert_eq(run_cli(arguments, &out, &err), 2, "%s: %s", arguments, err);
        cr_assert(strstr(err, "bad size 'lots'") || strstr(err, "--slots '0'"), "%s: %s",
                  arguments, err);
        free(out);
        free(err);
    }
}

Test(stream_cli, every_command_that_takes_the_flags_describes_them_alike) {
    const char *const commands[] = {"logits", "generate", "bench", "batch", "plan"};
    const char *const lines[] = {"--gpu-mem SIZE", "--host-mem SIZE", "--resident-layers N",
                                 "--slots N", "device slots streamed layers pass through, 1..64",
                                 "layers beyond it stream from DRAM or the file"};
    for (size_t c = 0; c < sizeof commands / sizeof commands[0]; c++) {
        char arguments[64], *out = NULL, *err = NULL;
        snprintf(arguments, sizeof arguments, "%s --help", commands[c]);
        cr_assert_eq(run_cli(arguments, &out, &err), 0, "%s: %s", commands[c], err);
        for (size_t l = 0; l < sizeof lines / sizeof lines[0]; l++)
            cr_assert(strstr(out, lines[l]), "ferry %s --help lacks '%s':\n%s", commands[c],
                      lines[l], out);
        free(out);
        free(err);
    }
}

Test(stream_cli, plan_takes_the_shared_flags_and_its_own_defaults) {
    char arguments[2048], *out = NULL, *err = NULL;
    snprintf(arguments, sizeof arguments,
             "plan --model '%s' --batch 1 --context 32 --resident-layers 2 --slots 3 "
             "--host-mem=4M --link-gbps 20.5 --tflops 0",
             model_path);
    cr_assert_eq(run_cli(arguments, &out, &err), 0, "%s", err);
    cr_assert(strstr(out, "3 GPU slots") && strstr(out, "(2 resident, 6 in DRAM, 0 on NVMe)") &&
                  strstr(out, "host->gpu 20.5 GB/s"),
              "%s", out);
    free(out);
    free(err);
}
