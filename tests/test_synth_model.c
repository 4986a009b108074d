/*
 * test_synth_model.c — "synth:PRESET[:DTYPE[:SEED]]" models, generated in
 * memory: their logits are bit-identical to the file `ferry synth` writes
 * for the same preset, dtype and seed, resident and streamed from DRAM
 * (CPU backend); what needs a file (the NVMe tier, checksums, ferry info)
 * is refused with a clear message; loading reports its progress.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "helpers.h"
#include "offload/offload.h"
#include "runtime/engine.h"
#include "runtime/format.h"

enum { N_TOKENS = 6, MAX_VOCAB = 512 };

/* Write `ferry synth --preset P --dtype D --seed S` into dir; returns the path. */
static char *write_synth(const char *dir, const char *preset, const char *dtype, int seed) {
    char name[128], command[2048];
    snprintf(name, sizeof name, "%s-%s-%d.ferry", preset, dtype, seed);
    char *path = test_path(dir, name);
    snprintf(command, sizeof command, "%s synth --preset %s --dtype %s --seed %d %s", test_cli(),
             preset, dtype, seed, path);
    cr_assert_eq(test_run(command, NULL, NULL), 0, "%s", command);
    return path;
}

/* Logits of every position of one prompt. */
static void run_logits(const char *path, ferry_model_options options, float *out) {
    options.backend = "cpu";
    options.n_threads = 2;
    ferry_model *model = NULL;
    cr_assert_eq(ferry_model_open(path, &options, &model), FERRY_OK, "%s: %s", path,
                 ferry_last_error());
    cr_assert_eq(options.streaming != 0, model->stream != NULL, "%s", path);
    static const int32_t tokens[N_TOKENS] = {1, 17, 300, 4, 99, 511};
    const int n_tokens[] = {N_TOKENS};
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, 1, 16, &session), FERRY_OK, "%s", ferry_last_error());
    ferry_batch batch = {1, NULL, n_tokens, tokens};
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_ALL, out,
                               (size_t)N_TOKENS * MAX_VOCAB),
                 FERRY_OK, "%s", ferry_last_error());
    ferry_session_free(session);
    ferry_model_close(model);
}

static void assert_same_logits(const float *got, const float *want, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        cr_assert(memcmp(&got[i], &want[i], sizeof(float)) == 0 && isfinite(got[i]),
                  "%s: logit %zu is %.9g, the written file's %.9g", what, i, got[i], want[i]);
}

Test(synth_model, logits_match_the_written_file_resident_and_streamed) {
    static const struct {
        const char *preset, *dtype;
        int seed;
    } cases[] = {{"tiny", "f32", 5}, {"tiny-qwen2", "f16", 0}, {"tiny-llama3", "bf16", 9}};
    char *dir = test_tempdir();
    static float from_file[N_TOKENS * MAX_VOCAB], generated[N_TOKENS * MAX_VOCAB];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char *path = write_synth(dir, cases[c].preset, cases[c].dtype, cases[c].seed);
        char name[128];
        snprintf(name, sizeof name, "synth:%s:%s:%d", cases[c].preset, cases[c].dtype,
                 cases[c].seed);
        const size_t n = (size_t)N_TOKENS * ferry_preset_find(cases[c].preset)->config.vocab_size;
        ferry_model_options resident = {0};
        run_logits(path, resident, from_file);
        run_logits(name, resident, generated);
        assert_same_logits(generated, from_file, n, name);

        /* Every layer in DRAM, then one resident and one in DRAM. */
        for (int resident_layers = 0; resident_layers <= 1; resident_layers++) {
            ferry_model_options streamed = {.streaming = 1, .resident_layers = resident_layers};
            run_logits(name, streamed, generated);
            assert_same_logits(generated, from_file, n, name);
        }
        free(path);
    }
    test_rmtree(dir);
    free(dir);
}

Test(synth_model, defaults_are_f16_and_seed_0) {
    char *dir = test_tempdir();
    char *path = write_synth(dir, "tiny", "f16", 0);
    static float from_file[N_TOKENS * MAX_VOCAB], generated[N_TOKENS * MAX_VOCAB];
    ferry_model_options options = {0};
    run_logits(path, options, from_file);
    run_logits("synth:tiny", options, generated);
    assert_same_logits(generated, from_file, (size_t)N_TOKENS * 512, "synth:tiny");
    free(path);
    test_rmtree(dir);
    free(dir);
}

typedef struct progress_seen {
    int calls;
    uint64_t last_done, last_total;
    int went_back;
} progress_seen;

static void record_progress(void *user, uint64_t done_bytes, uint64_t total_bytes) {
    progress_seen *seen = user;
    seen->went_back |= done_bytes < seen->last_done;
    seen->calls++;
    seen->last_done = done_bytes;
    seen->last_total = total_bytes;
}

Test(synth_model, loading_reports_progress_up_to_the_total) {
    for (int streaming = 0; streaming <= 1; streaming++) {
        progress_seen seen = {0};
        ferry_model_options options = {.backend = "cpu", .n_threads = 1, .streaming = streaming,
                                       .resident_layers = 0, .on_progress = record_progress,
                                       .progress_user = &seen};
        ferry_model *model = NULL;
        cr_assert_eq(ferry_model_open("synth:tiny", &options, &model), FERRY_OK, "%s",
                     ferry_last_error());
        ferry_model_close(model);
        cr_assert_gt(seen.calls, 2);
        cr_assert_not(seen.went_back);
        cr_assert_gt(seen.last_total, 0);
        cr_assert_eq(seen.last_done, seen.last_total, "done %llu of %llu",
                     (unsigned long long)seen.last_done, (unsigned long long)seen.last_total);
    }
}

Test(synth_model, what_needs_a_file_is_refused_with_a_clear_message) {
    /* One slot, and room in DRAM for its staging buffer and half a layer
     * more: the plan reads both layers from NVMe. */
    ferry_layout layout;
    cr_assert_eq(ferry_layout_build(&ferry_preset_find("tiny")->config, FERRY_DTYPE_F16, &layout),
                 FERRY_OK);
    uint64_t layer_bytes = layout.extents[1].bytes;
    ferry_layout_free(&layout);
    ferry_model_options options = {.backend = "cpu", .streaming = 1, .resident_layers = 0,
                                   .slots = 1, .host_mem_bytes = layer_bytes + layer_bytes / 2};
    ferry_model *model = NULL;
    cr_assert_eq(ferry_model_open("synth:tiny", &options, &model), FERRY_ERR_UNSUPPORTED, "%s",
                 ferry_last_error());
    cr_assert_null(model);
    cr_assert(strstr(ferry_last_error(), "synth:tiny") &&
                  strstr(ferry_last_error(), "no file to stream from") &&
                  strstr(ferry_last_error(), "NVMe"),
              "%s", ferry_last_error());

    ferry_model_options verify = {.backend = "cpu", .verify_checksums = 1};
    cr_assert_eq(ferry_model_open("synth:tiny", &verify, &model), FERRY_ERR_UNSUPPORTED);
    cr_assert(strstr(ferry_last_error(), "checksums"), "%s", ferry_last_error());

    ferry_file *file = NULL;
    cr_assert_eq(ferry_file_open("synth:tiny", &file), FERRY_ERR_UNSUPPORTED);
    cr_assert(strstr(ferry_last_error(), "synthetic model"), "%s", ferry_last_error());

    char *dir = test_tempdir();
    char *err = test_path(dir, "err.txt"), command[2048];
    snprintf(command, sizeof command, "%s info --verify synth:llama2-7b", test_cli());
    cr_assert_eq(test_run(command, NULL, err), 1);
    char *message = test_read_file(err, NULL);
    cr_assert(message && strstr(message, "synth:llama2-7b is a synthetic model"), "%s", message);
    free(message);
    snprintf(command, sizeof command, "%s bench --model synth:no-such-preset --backend cpu",
             test_cli());
    cr_assert_eq(test_run(command, NULL, err), 1);
    message = test_read_file(err, NULL);
    cr_assert(message && strstr(message, "unknown preset 'no-such-preset'"), "%s", message);
    free(message);
    free(err);
    test_rmtree(dir);
    free(dir);
}

Test(synth_model, names_are_parsed_and_bad_ones_named) {
    ferry_synth_spec spec;
    cr_assert_eq(ferry_synth_parse("synth:codellama-34b", &spec), FERRY_OK);
    cr_assert_str_eq(spec.preset->name, "codellama-34b");
    cr_assert_eq(spec.dtype, FERRY_DTYPE_F16);
    cr_assert_eq(spec.seed, 0);
    cr_assert_eq(ferry_synth_parse("synth:llama2-7b:bf16:0x10", &spec), FERRY_OK);
    cr_assert_eq(spec.dtype, FERRY_DTYPE_BF16);
    cr_assert_eq(spec.seed, 16);
    static const struct {
        const char *name, *says;
    } bad[] = {
        {"synth:", "expected synth:PRESET"},      {"synth:tiny:", "expected synth:PRESET"},
        {"synth:tiny:f16:1:2", "expected"},       {"synth:huge", "unknown preset 'huge'"},
        {"synth:tiny:f8", "unknown dtype 'f8'"},  {"synth:tiny:f16:seven", "seed 'seven'"},
        {"model.ferry", "not a synth:"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(ferry_synth_parse(bad[i].name, &spec), FERRY_ERR_INVALID_ARGUMENT, "%s",
                     bad[i].name);
        cr_assert(strstr(ferry_last_error(), bad[i].says), "%s: %s", bad[i].name,
                  ferry_last_error());
    }
}
