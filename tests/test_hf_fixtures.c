/*
 * test_hf_fixtures.c — ferry against HF transformers: each checkpoint in
 * tests/fixtures/hf/ (made by make_hf_fixtures.py) goes through
 * `ferry convert`, then `ferry logits` and `ferry generate --greedy` on the
 * CPU backend must reproduce what transformers computed.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

#define FIXTURES_DIR FERRY_SOURCE_DIR "/tests/fixtures/hf"
#define N_NEW_TOKENS 8

static char *dir;

static void setup(void) { dir = test_tempdir(); }
static void teardown(void) {
    test_rmtree(dir);
    free(dir);
}

TestSuite(hf_fixtures, .init = setup, .fini = teardown, .timeout = 120);

typedef struct fixture {
    char *tokens;               /* "5,17,..." as ferry takes it */
    char *greedy;               /* HF's 8 new tokens */
    float *logits;              /* [n_tokens, vocab] */
    size_t n_logits;
    int n_tokens, vocab;
    double gaps[N_NEW_TOKENS];  /* top-2 logit gap at each greedy step */
} fixture;

static char *fixture_file(const char *name, const char *file) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/%s", FIXTURES_DIR, name, file);
    return strdup(path);
}

static char *read_trimmed(const char *path) {
    char *text = test_read_file(path, NULL);
    cr_assert(text, "read %s", path);
    size_t n = strlen(text);
    while (n && (text[n - 1] == '\n' || text[n - 1] == ' ')) text[--n] = '\0';
    return text;
}

static void load_fixture(const char *name, fixture *fx) {
    char *path = fixture_file(name, "tokens.txt");
    fx->tokens = read_trimmed(path);
    free(path);
    path = fixture_file(name, "greedy.txt");
    fx->greedy = read_trimmed(path);
    free(path);
    path = fixture_file(name, "meta.json");
    char *meta_text = test_read_file(path, NULL);
    cr_assert(meta_text, "read %s", path);
    free(path);
    cJSON *meta = cJSON_Parse(meta_text);
    cr_assert(meta);
    fx->n_tokens = cJSON_GetObjectItem(meta, "n_tokens")->valueint;
    fx->vocab = cJSON_GetObjectItem(meta, "vocab_size")->valueint;
    const cJSON *gaps = cJSON_GetObjectItem(meta, "greedy_top2_gaps");
    cr_assert_eq(cJSON_GetArraySize(gaps), N_NEW_TOKENS);
    for (int i = 0; i < N_NEW_TOKENS; i++) fx->gaps[i] = cJSON_GetArrayItem(gaps, i)->valuedouble;
    cJSON_Delete(meta);
    free(meta_text);
    path = fixture_file(name, "logits.f32");
    size_t bytes = 0;
    fx->logits = (float *)test_read_file(path, &bytes);
    free(path);
    fx->n_logits = bytes / sizeof(float);
    cr_assert_eq(fx->n_logits, (size_t)fx->n_tokens * (size_t)fx->vocab);
}

static void free_fixture(fixture *fx) {
    free(fx->tokens);
    free(fx->greedy);
    free(fx->logits);
}

/* Run a ferry command line; skip the test if the subcommand is a stub. */
static int run_ferry(const char *arguments, const char *stdout_path, const char *what) {
    char command[8192];
    char *stderr_path = test_path(dir, "stderr.txt");
    snprintf(command, sizeof command, "'%s' %s", test_cli(), arguments);
    int exit_status = test_run(command, stdout_path, stderr_path);
    char *message = test_read_file(stderr_path, NULL);
    free(stderr_path);
    if (exit_status != 0 && message && strstr(message, "not built yet")) {
        free(message);
        cr_skip_test("`ferry %s` is not built yet", what);
    }
    cr_assert_eq(exit_status, 0, "ferry %s failed (exit %d): %s", what, exit_status,
                 message ? message : "");
    free(message);
    return exit_status;
}

static char *convert_fixture(const char *name, const char *dtype) {
    char *hf_dir = fixture_file(name, "hf");
    char *model = test_path(dir, "model.ferry");
    char arguments[4096];
    snprintf(arguments, sizeof arguments, "convert '%s' '%s' --dtype %s", hf_dir, model, dtype);
    run_ferry(arguments, NULL, "convert");
    free(hf_dir);
    return model;
}

/* Per position: max |ferry - hf| / max |hf| must stay under the bar. */
static void check_logits(const char *name, const char *model, const fixture *fx, double bar) {
    char *out = test_path(dir, "logits.f32");
    char arguments[4096];
    snprintf(arguments, sizeof arguments, "logits --model '%s' --tokens %s --out '%s' --backend cpu",
             model, fx->tokens, out);
    run_ferry(arguments, NULL, "logits");
    size_t bytes = 0;
    float *got = (float *)test_read_file(out, &bytes);
    cr_assert(got);
    cr_assert_eq(bytes, fx->n_logits * sizeof(float), "logits file has %zu bytes", bytes);
    double worst_row = 0, diff_squares = 0, ref_squares = 0;
    for (int t = 0; t < fx->n_tokens; t++) {
        const float *ref = fx->logits + (size_t)t * (size_t)fx->vocab;
        const float *ours = got + (size_t)t * (size_t)fx->vocab;
        double max_diff = 0, max_ref = 0;
        for (int v = 0; v < fx->vocab; v++) {
            cr_assert(isfinite(ours[v]), "%s: logit [%d, %d] is not finite", name, t, v);
            double diff = fabs((double)ours[v] - (double)ref[v]);
            if (diff > max_diff) max_diff = diff;
            if (fabs(ref[v]) > max_ref) max_ref = fabs(ref[v]);
            diff_squares += diff * diff;
            ref_squares += (double)ref[v] * ref[v];
        }
        double relative = max_diff / max_ref;
        if (relative > worst_row) worst_row = relative;
        cr_assert_leq(relative, bar, "%s: position %d: max |diff| / max |ref| = %.3g > %.3g", name,
                      t, relative, bar);
    }
    fprintf(stderr, "[hf] %s: worst row max|diff|/max|ref| = %.3g, ||diff||/||ref|| = %.3g\n",
            name, worst_row, sqrt(diff_squares / ref_squares));
    free(got);
    free(out);
}

/* Greedy tokens equal HF's up to the first step whose top-2 gap is within
 * rounding (a near-tie may legitimately flip; everything after it then
 * follows another prefix). */
static void check_greedy(const char *name, const char *model, const fixture *fx, double tie_gap) {
    char *out = test_path(dir, "generated.txt");
    char arguments[4096];
    snprintf(arguments, sizeof arguments,
             "generate --model '%s' --tokens %s --max-new-tokens %d --greedy --ignore-eos "
             "--backend cpu",
             model, fx->tokens, N_NEW_TOKENS);
    run_ferry(arguments, out, "generate");
    char *generated = read_trimmed(out);
    const char *ours = generated, *theirs = fx->greedy;
    for (int step = 0; step < N_NEW_TOKENS; step++) {
        char *ours_end, *theirs_end;
        long our_token = strtol(ours, &ours_end, 10);
        long their_token = strtol(theirs, &theirs_end, 10);
        cr_assert_neq(ours_end, ours, "%s: ferry printed '%s', fewer than %d tokens", name,
                      generated, N_NEW_TOKENS);
        if (our_token != their_token) {
            cr_assert_lt(fx->gaps[step], tie_gap,
                         "%s: step %d: ferry %ld, HF %ld (HF's top-2 gap %.3g is no tie); "
                         "ferry %s vs HF %s",
                         name, step, our_token, their_token, fx->gaps[step], generated, fx->greedy);
            fprintf(stderr, "[hf] %s: step %d differs at a near-tie (gap %.3g): stop comparing\n",
                    name, step, fx->gaps[step]);
            break;
        }
        ours = *ours_end == ',' ? ours_end + 1 : ours_end;
        theirs = *theirs_end == ',' ? theirs_end + 1 : theirs_end;
    }
    free(generated);
    free(out);
}

static void check_fixture(const char *name, const char *dtype, double logits_bar,
                          double tie_gap) {
    fixture fx = {0};
    load_fixture(name, &fx);
    char *model = convert_fixture(name, dtype);
    check_logits(name, model, &fx, logits_bar);
    check_greedy(name, model, &fx, tie_gap);
    free(model);
    free_fixture(&fx);
}

/* f32 checkpoints: float32 everywhere on both sides. */
#define F32_LOGITS_BAR 1e-4
#define F32_TIE_GAP 1e-4
/* The bf16 checkpoint's reference ran the same bf16-rounded weights in
 * float32 (HF loads them upcast), and ferry's CPU engine accumulates in
 * float32 too: the bar is the same.  (A RoPE table rounded to bf16 alone
 * gives ~2e-4, so a looser bar would hide real mistakes.) */
#define BF16_LOGITS_BAR 1e-4
#define BF16_TIE_GAP 1e-4

Test(hf_fixtures, llama_gqa_with_head_dim_and_llama3_rope_matches_hf) {
    check_fixture("llama_gqa_llama3", "keep", F32_LOGITS_BAR, F32_TIE_GAP);
}

Test(hf_fixtures, mistral_mqa_matches_hf) {
    check_fixture("mistral_mqa", "keep", F32_LOGITS_BAR, F32_TIE_GAP);
}

Test(hf_fixtures, qwen2_with_bias_and_tied_embeddings_matches_hf) {
    check_fixture("qwen2_bias_tied", "keep", F32_LOGITS_BAR, F32_TIE_GAP);
}

Test(hf_fixtures, sharded_bf16_llama_with_linear_rope_matches_hf) {
    check_fixture("llama_linear_bf16_sharded", "keep", BF16_LOGITS_BAR, BF16_TIE_GAP);
}

Test(hf_fixtures, transformers4_config_spelling_matches_hf) {
    check_fixture("llama_tf4_spelling", "keep", F32_LOGITS_BAR, F32_TIE_GAP);
}

/* Widened to f32 at conversion, the bf16 weights are exactly HF's float32
 * copies: the f32 bar applies. */
Test(hf_fixtures, sharded_bf16_llama_widened_to_f32_matches_hf_at_the_f32_bar) {
    check_fixture("llama_linear_bf16_sharded", "f32", F32_LOGITS_BAR, F32_TIE_GAP);
}

Test(hf_fixtures, f16_llama_with_gqa_8_to_2_matches_hf) {
    check_fixture("llama_gqa_f16", "keep", F32_LOGITS_BAR, F32_TIE_GAP);
}
