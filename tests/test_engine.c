/*
 * test_engine.c — the runtime's forward pass on tiny random models built
 * in memory: logits against an independent float64 forward, chunked
 * prefill, one-shot prefill and token-by-token decode agreeing, ragged
 * batches agreeing with sequences run alone, and bad input refused with
 * the cache left as it was.
 */
#include <pthread.h>

#include "engine_fixture.h"

static ferry_session *new_session(ferry_model *model, int max_batch, int max_context) {
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, max_batch, max_context, &session), FERRY_OK, "%s",
                 ferry_last_error());
    return session;
}

/* Every position's logits of one sequence, through ferry_forward. */
static float *forward_all(ferry_session *session, int seq, const int32_t *tokens, int n) {
    int vocab = session->model->config.vocab_size;
    float *logits = poisoned_floats((size_t)n * vocab);
    ferry_batch batch = {.n_seqs = 1, .seq_ids = &seq, .n_tokens = &n, .tokens = tokens};
    ferry_status status = ferry_forward(session, &batch, FERRY_LOGITS_ALL, logits, (size_t)n * vocab);
    cr_assert_eq(status, FERRY_OK, "forward: %s", ferry_last_error());
    return logits;
}

static void check_against_reference(const char *name, const ferry_config *config, ferry_dtype dtype) {
    uint64_t rng = test_seed();
    reference_weights ref;
    ferry_model *model = fixture_model(config, dtype, rng, 2, &ref);
    int n = 37;
    int32_t *tokens = fixture_tokens(&rng, n, config->vocab_size);
    ferry_session *session = new_session(model, 2, 64);
    float *logits = forward_all(session, 1, tokens, n);
    double *want = reference_forward(&ref, tokens, n);
    double worst = 0;
    for (int t = 0; t < n; t++) {
        double error = relative_error(logits + (size_t)t * config->vocab_size,
                                      want + (size_t)t * config->vocab_size, config->vocab_size);
        if (!(error <= worst)) worst = error;
    }
    cr_assert(worst <= 2e-5, "%s %s: worst row relative error %.3g", name,
              ferry_dtype_name(dtype), worst);
    cr_assert_eq(ferry_session_length(session, 1), n);
    cr_assert_eq(ferry_session_length(session, 0), 0);
    free(logits), free(want), free(tokens);
    ferry_session_free(session);
    ferry_model_close(model);
    fixture_free_reference(&ref);
}

Test(engine, llama3_rope_gqa_model_matches_float64_forward_in_f16) {
    ferry_config config = fixture_llama3_config();
    check_against_reference("llama3", &config, FERRY_DTYPE_F16);
}

Test(engine, qwen2_bias_tied_mqa_model_matches_float64_forward_in_bf16) {
    ferry_config config = fixture_qwen2_config();
    check_against_reference("qwen2", &config, FERRY_DTYPE_BF16);
}

Test(engine, linear_rope_mha_model_matches_float64_forward_in_f32) {
    ferry_config config = fixture_mha_config();
    check_against_reference("mha", &config, FERRY_DTYPE_F32);
}

static void expect_same_logits(const char *what, const float *got, const float *want, size_t n) {
    size_t n_bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(got[i] - want[i]) <= 1e-5f * (1.0f + fabsf(want[i]))))
            if (n_bad++ == 0) first = i;
    cr_assert_eq(n_bad, 0, "%s: %zu of %zu differ; first at %zu: %.9g vs %.9g", what, n_bad, n,
                 first, (double)got[first], (double)want[first]);
}

Test(engine, chunked_prefill_equals_one_shot_prefill_and_token_by_token_decode) {
    uint64_t rng = test_seed();
    ferry_config config = fixture_llama3_config();
    reference_weights ref;
    ferry_model *model = fixture_model(&config, FERRY_DTYPE_F16, rng, 2, &ref);
    int n = 50, vocab = config.vocab_size;
    int32_t *tokens = fixture_tokens(&rng, n, vocab);

    ferry_session *one_shot = new_session(model, 1, 64);
    float *expected = forward_all(one_shot, 0, tokens, n);

    ferry_session *chunked = new_session(model, 1, 64);
    chunked->chunk_tokens = 7; /* scratch holds more; use less to force chunks */
    float *got = forward_all(chunked, 0, tokens, n);
    expect_same_logits("chunks of 7", got, expected, (size_t)n * vocab);
    free(got);

    ferry_session *stepwise = new_session(model, 1, 64);
    for (int t = 0; t < n; t++) {
        float *row = forward_all(stepwise, 0, tokens + t, 1);
        expect_same_logits("token by token", row, expected + (size_t)t * vocab, (size_t)vocab);
        free(row);
    }
    cr_assert_eq(ferry_session_length(stepwise, 0), n);

    /* LAST gives the final row of ALL */
    ferry_session_reset(one_shot, 0);
    float *last = poisoned_floats((size_t)vocab);
    ferry_batch batch = {.n_seqs = 1, .n_tokens = &n, .tokens = tokens};
    cr_assert_eq(ferry_forward(one_shot, &batch, FERRY_LOGITS_LAST, last, (size_t)vocab), FERRY_OK);
    expect_same_logits("last row", last, expected + (size_t)(n - 1) * vocab, (size_t)vocab);

    free(last), free(expected), free(tokens);
    ferry_session_free(one_shot), ferry_session_free(chunked), ferry_session_free(stepwise);
    ferry_model_close(model);
    fixture_free_reference(&ref);
}

Test(engine, a_prompt_longer_than_one_chunk_matches_the_reference) {
    uint64_t rng = test_seed();
    ferry_config config = fixture_qwen2_config();
    config.n_layers = 1;
    reference_weights ref;
    ferry_model *model = fixture_model(&config, FERRY_DTYPE_F32, rng, 2, &ref);
    int n = FERRY_CHUNK_TOKENS + 29, vocab = config.vocab_size;
    int32_t *tokens = fixture_tokens(&rng, n, vocab);
    ferry_session *session = new_session(model, 1, n);
    cr_assert_eq(session->chunk_tokens, FERRY_CHUNK_TOKENS);
    float *got = forward_all(session, 0, tokens, n);
    double *want = reference_forward(&ref, tokens, n);
    for (int t = 0; t < n; t++) {
        double error = relative_error(got + (size_t)t * vocab, want + (size_t)t * vocab, vocab);
        cr_assert(error <= 2e-5, "position %d: relative error %.3g", t, error);
    }
    free(got), free(want), free(tokens);
    ferry_session_free(session);
    ferry_model_close(model);
    fixture_free_reference(&ref);
}

Test(engine, ragged_batch_equals_each_sequence_run_alone) {
    uint64_t rng = test_seed();
    ferry_config config = fixture_llama3_config();
    reference_weights ref;
    ferry_model *model = fixture_model(&config, FERRY_DTYPE_BF16, rng, 2, &ref);
    int vocab = config.vocab_size;
    /* slots 2, 0, 3 get 9, 1 and 4 tokens after prefixes of 5, 3 and 0 */
    int seq_ids[] = {2, 0, 3}, prefix[] = {5, 3, 0}, counts[] = {9, 1, 4};
    int32_t *streams[3];
    for (int i = 0; i < 3; i++) streams[i] = fixture_tokens(&rng, prefix[i] + counts[i], vocab);

    ferry_session *batched = new_session(model, 4, 32);
    batched->chunk_tokens = 5; /* chunks cut across sequences too */
    for (int i = 0; i < 3; i++)
        if (prefix[i]) free(forward_all(batched, seq_ids[i], streams[i], prefix[i]));
    int32_t flat[14];
    int at = 0;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < counts[i]; j++) flat[at++] = streams[i][prefix[i] + j];
    ferry_batch batch = {.n_seqs = 3, .seq_ids = seq_ids, .n_tokens = counts, .tokens = flat};
    float *all = poisoned_floats((size_t)14 * vocab);
    cr_assert_eq(ferry_forward(batched, &batch, FERRY_LOGITS_ALL, all, (size_t)14 * vocab), FERRY_OK,
                 "%s", ferry_last_error());

    at = 0;
    for (int i = 0; i < 3; i++) {
        ferry_session *alone = new_session(model, 1, 32);
        float *expected = forward_all(alone, 0, streams[i], prefix[i] + counts[i]);
        char what[64];
        snprintf(what, sizeof what, "sequence %d (slot %d)", i, seq_ids[i]);
        expect_same_logits(what, all + (size_t)at * vocab, expected + (size_t)prefix[i] * vocab,
                           (size_t)counts[i] * vocab);
        cr_assert_eq(ferry_session_length(batched, seq_ids[i]), prefix[i] + counts[i]);
        at += counts[i];
        free(expected);
        ferry_session_free(alone);
    }
    cr_assert_eq(ferry_session_length(batched, 1), 0);
    free(all);
    for (int i = 0; i < 3; i++) free(streams[i]);
    ferry_session_free(batched);
    ferry_model_close(model);
    fixture_free_reference(&ref);
}

/* The forward of `next` after a refused call equals a forward that never saw it. */
static void expect_cache_untouched(ferry_model *model, ferry_session *session, const int32_t *prefix,
                                   int n_prefix, int32_t next) {
    ferry_session *clean = new_session(model, session->max_batch, session->max_context);
    free(forward_all(clean, 0, prefix, n_prefix));
    float *want = forward_all(clean, 0, &next, 1);
    float *got = forward_all(session, 0, &next, 1);
    expect_same_logits("after a refused call", got, want, (size_t)model->config.vocab_size);
    free(want), free(got);
    ferry_session_free(clean);
}

Test(engine, bad_batches_are_refused_and_change_no_slot) {
    uint64_t rng = test_seed();
    ferry_config config = fixture_llama3_config();
    reference_weights ref;
    ferry_model *model = fixture_model(&config, FERRY_DTYPE_F16, rng, 1, &ref);
    int vocab = config.vocab_size;
    ferry_session *session = new_session(model, 2, 8);
    int32_t prefix[] = {3, 4, 5};
    free(forward_all(session, 0, prefix, 3));
    float *logits = poisoned_floats((size_t)16 * vocab);
    size_t capacity = (size_t)16 * vocab;

    int32_t out_of_range[] = {7, vocab};
    int two = 2, one = 1, zero = 0, six = 6, seq0 = 0;
    ferry_batch batch = {.n_seqs = 1, .n_tokens = &two, .tokens = out_of_range};
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_ALL, logits, capacity),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "vocabulary"), "%s", ferry_last_error());
    int32_t negative[] = {-1};
    batch = (ferry_batch){.n_seqs = 1, .n_tokens = &one, .tokens = negative};
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_ALL, logits, capacity),
                 FERRY_ERR_INVALID_ARGUMENT);

    int32_t many[6] = {1, 2, 3, 4, 5, 6};
    batch = (ferry_batch){.n_seqs = 1, .seq_ids = &seq0, .n_tokens = &six, .tokens = many};
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_ALL, logits, capacity),
                 FERRY_ERR_CONTEXT_FULL);
    cr_assert(strstr(ferry_last_error(), "context"), "%s", ferry_last_error());

    int dup_ids[] = {1, 1}, dup_counts[] = {1, 1};
    batch = (ferry_batch){.n_seqs = 2, .seq_ids = dup_ids, .n_tokens = dup_counts, .tokens = many};
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_ALL, logits, capacity),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "twice"), "%s", ferry_last_error());

    int bad_slot = 2;
    batch = (ferry_batch){.n_seqs = 1, .seq_ids = &bad_slot, .n_tokens = &one, .tokens = many};
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_ALL, logits, capacity),
                 FERRY_ERR_INVALID_ARGUMENT);
    batch = (ferry_batch){.n_seqs = 1, .n_tokens = &zero, .tokens = many};
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_ALL, logits, capacity),
                 FERRY_ERR_INVALID_ARGUMENT);
    batch = (ferry_batch){.n_seqs = 3, .n_tokens = dup_counts, .tokens = many};
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_LAST, logits, capacity),
                 FERRY_ERR_INVALID_ARGUMENT);
    batch = (ferry_batch){.n_seqs = 1, .n_tokens = &two, .tokens = many};
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_ALL, logits, (size_t)2 * vocab - 1),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_forward(session, &batch, (ferry_logits_mode)7, logits, capacity),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_ALL, NULL, capacity),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_forward(session, NULL, FERRY_LOGITS_ALL, logits, capacity),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_forward(NULL, &batch, FERRY_LOGITS_ALL, logits, capacity),
                 FERRY_ERR_INVALID_ARGUMENT);
    for (size_t i = 0; i < capacity; i++) cr_assert(isnan(logits[i]), "logits written at %zu", i);

    cr_assert_eq(ferry_session_length(session, 0), 3);
    cr_assert_eq(ferry_session_length(session, 1), 0);
    cr_assert_eq(ferry_session_length(session, 2), -1);
    expect_cache_untouched(model, session, prefix, 3, 9);
    free(logits);
    ferry_session_free(session);
    ferry_model_close(model);
    fixture_free_reference(&ref);
}

Test(engine, sessions_and_models_refuse_bad_arguments) {
    uint64_t rng = test_seed();
    ferry_config config = fixture_qwen2_config();
    reference_weights ref;
    ferry_model *model = fixture_model(&config, FERRY_DTYPE_F32, rng, 1, &ref);
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, 0, 8, &session), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_session_new(model, 1, 0, &session), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_session_new(NULL, 1, 8, &session), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_session_new(model, 1, 8, NULL), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_null(session);
    cr_assert_eq(ferry_session_reset(NULL, 0), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_session_length(NULL, 0), -1);
    session = new_session(model, 2, 8);
    cr_assert_eq(ferry_session_reset(session, 2), FERRY_ERR_INVALID_ARGUMENT);
    int32_t tokens[] = {1, 2};
    free(forward_all(session, 1, tokens, 2));
    free(forward_all(session, 0, tokens, 1));
    cr_assert_eq(ferry_session_reset(session, 1), FERRY_OK);
    cr_assert_eq(ferry_session_length(session, 1), 0);
    cr_assert_eq(ferry_session_length(session, 0), 1);
    cr_assert_eq(ferry_session_reset(session, -1), FERRY_OK);
    cr_assert_eq(ferry_session_length(session, 0), 0);

    /* a tensor of the wrong size, or one the model does not have */
    float small[3] = {0};
    cr_assert_eq(ferry_model_load_tensor(model, 0, FERRY_TENSOR_ATTN_NORM, small, sizeof small),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_model_load_tensor(model, -1, FERRY_TENSOR_LM_HEAD, small, sizeof small),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_model_load_tensor(model, config.n_layers, FERRY_TENSOR_WQ, small, sizeof small),
                 FERRY_ERR_INVALID_ARGUMENT);
    ferry_model_info info;
    cr_assert_eq(ferry_model_get_info(NULL, &info), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_model_get_info(model, &info), FERRY_OK);
    cr_assert_str_eq(info.architecture, "qwen2");
    cr_assert_str_eq(info.dtype, "f32");
    cr_assert_str_eq(info.backend, "cpu");
    cr_assert_eq(info.head_dim, 8);
    cr_assert_eq(info.n_kv_heads, 1);
    cr_assert_eq(info.n_eos_token_ids, 2);
    cr_assert_eq(info.eos_token_ids[1], 5);
    ferry_session_free(session);
    ferry_model_close(model);
    fixture_free_reference(&ref);
}

Test(engine, a_model_missing_a_tensor_is_reported_incomplete) {
    ferry_config config = fixture_llama3_config();
    ferry_backend *backend = NULL;
    cr_assert_eq(ferry_backend_cpu_new(1, &backend), FERRY_OK);
    ferry_model *model = NULL;
    cr_assert_eq(ferry_model_create(&config, FERRY_DTYPE_F16, backend, &model), FERRY_OK);
    cr_assert_eq(ferry_model_check_complete(model), FERRY_ERR_FORMAT);
    cr_assert(strstr(ferry_last_error(), "embed"), "%s", ferry_last_error());
    ferry_model_close(model);
}

Test(engine, generation_stops_at_an_eos_token_unless_told_to_ignore_it) {
    uint64_t rng = test_seed();
    ferry_config config = fixture_llama3_config();
    reference_weights ref;
    ferry_model *model = fixture_model(&config, FERRY_DTYPE_F32, rng, 2, &ref);
    ferry_session *session = new_session(model, 1, 32);
    int32_t prompt[] = {4, 8, 15};
    ferry_generate_params params = {.sampling = ferry_sampling_default(), .max_new_tokens = 10,
                                    .ignore_eos = 1};
    params.sampling.greedy = 1;
    int32_t all[10], stopped[10];
    int n_all = 0, n_stopped = 0;
    cr_assert_eq(ferry_generate(session, prompt, 3, &params, all, 10, &n_all), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(n_all, 10);
    /* make the third generated token the only EOS token */
    model->config.n_eos_token_ids = 1;
    model->config.eos_token_ids[0] = all[2];
    int expected = 0;
    while (all[expected] != all[2]) expected++;
    params.ignore_eos = 0;
    cr_assert_eq(ferry_generate(session, prompt, 3, &params, stopped, 10, &n_stopped), FERRY_OK);
    cr_assert_eq(n_stopped, expected + 1, "stopped after %d tokens, expected %d", n_stopped,
                 expected + 1);
    cr_assert_eq(memcmp(stopped, all, sizeof(int32_t) * (size_t)n_stopped), 0);
    cr_assert_eq(stopped[n_stopped - 1], all[2], "the EOS token is part of the output");
    params.ignore_eos = 1;
    cr_assert_eq(ferry_generate(session, prompt, 3, &params, stopped, 10, &n_stopped), FERRY_OK);
    cr_assert_eq(n_stopped, 10);
    /* zero new tokens: the prompt is still checked, nothing is written */
    params.max_new_tokens = 0;
    int32_t bad_prompt[] = {1, config.vocab_size};
    cr_assert_eq(ferry_generate(session, bad_prompt, 2, &params, stopped, 0, &n_stopped),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_generate(session, prompt, 3, &params, stopped, 0, &n_stopped), FERRY_OK);
    cr_assert_eq(n_stopped, 0);
    ferry_session_free(session);
    ferry_model_close(model);
    fixture_free_reference(&ref);
}

typedef struct generate_job {
    ferry_model *model;
    int32_t tokens[16];
    int n_tokens;
    ferry_status status;
} generate_job;

static void *generate_in_thread(void *arg) {
    generate_job *job = arg;
    ferry_session *session = NULL;
    job->status = ferry_session_new(job->model, 1, 40, &session);
    int32_t prompt[] = {9, 8, 7, 6, 5};
    ferry_generate_params params = {.sampling = ferry_sampling_default(), .max_new_tokens = 16,
                                    .ignore_eos = 1};
    params.sampling.seed = 42;
    for (int round = 0; round < 3 && job->status == FERRY_OK; round++)
        job->status = ferry_generate(session, prompt, 5, &params, job->tokens, 16, &job->n_tokens);
    ferry_session_free(session);
    return NULL;
}

Test(engine, threads_sharing_a_model_generate_what_one_thread_does) {
    uint64_t rng = test_seed();
    ferry_config config = fixture_qwen2_config();
    reference_weights ref;
    ferry_model *model = fixture_model(&config, FERRY_DTYPE_BF16, rng, 2, &ref);
    generate_job alone = {.model = model};
    generate_in_thread(&alone);
    cr_assert_eq(alone.status, FERRY_OK);
    generate_job jobs[3];
    pthread_t threads[3];
    for (int i = 0; i < 3; i++) {
        jobs[i] = (generate_job){.model = model};
        pthread_create(&threads[i], NULL, generate_in_thread, &jobs[i]);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(threads[i], NULL);
        cr_assert_eq(jobs[i].status, FERRY_OK);
        cr_assert_eq(jobs[i].n_tokens, 16);
        cr_assert_eq(memcmp(jobs[i].tokens, alone.tokens, sizeof alone.tokens), 0, "thread %d", i);
    }
    ferry_model_close(model);
    fixture_free_reference(&ref);
}
