/*
 * test_forward_next.c — ferry_forward_next on the CPU backend, which has
 * no sample op and so picks on the host: the tokens ferry_forward and
 * ferry_sampler_pick_rule give, for every kind of rule, on a resident and
 * on a streamed model; ferry_generate's tokens the same as the forward
 * and ferry_sampler_next chain it ran before; out_tokens may be the
 * batch's tokens; bad rules refused with no slot changed.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "forward_next_fixture.h"

TestSuite(forward_next, .timeout = 300);

static ferry_model *open_tiny(int streamed) {
    ferry_model_options options = {.backend = "cpu", .n_threads = 2};
    if (streamed) {
        options.streaming = 1;
        options.resident_layers = 0;
    }
    ferry_model *model = NULL;
    cr_assert_eq(ferry_model_open("synth:tiny:f16:5", &options, &model), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(model->stream != NULL, streamed, "streaming %d, but model->stream is %p", streamed,
                 (void *)model->stream);
    return model;
}

Test(forward_next, picks_what_forward_and_the_host_sampler_pick_on_a_resident_model) {
    ferry_model *model = open_tiny(0);
    cr_assert_null(model->backend->ops->sample, "the CPU backend is the host-pick fallback");
    next_fixture_run(model, 1, "cpu resident");
    ferry_model_close(model);
}

Test(forward_next, picks_what_forward_and_the_host_sampler_pick_on_a_streamed_model) {
    ferry_model *model = open_tiny(1);
    next_fixture_run(model, 1, "cpu streamed");
    ferry_model_close(model);
}

/* ferry_generate before ferry_forward_next: ferry_forward, then
 * ferry_sampler_next on the logits, feeding each token back. */
static void generate_by_hand(ferry_session *session, const ferry_sampling *sampling,
                             const int32_t *prompt, int n_prompt, int32_t *out, int n_out) {
    const int vocab = session->model->config.vocab_size;
    ferry_sampler sampler;
    cr_assert_eq(ferry_sampler_init(&sampler, sampling, vocab), FERRY_OK);
    float *logits = malloc(sizeof(float) * (size_t)vocab);
    int slot = 0, n = n_prompt;
    cr_assert_eq(ferry_session_reset(session, 0), FERRY_OK);
    ferry_batch batch = {.n_seqs = 1, .seq_ids = &slot, .n_tokens = &n, .tokens = prompt};
    for (int i = 0; i < n_out; i++) {
        cr_assert_eq(ferry_forward(session, &batch, FERRY_LOGITS_LAST, logits, (size_t)vocab),
                     FERRY_OK, "%s", ferry_last_error());
        out[i] = ferry_sampler_next(&sampler, logits);
        n = 1;
        batch.tokens = &out[i];
    }
    free(logits);
    ferry_sampler_free(&sampler);
}

Test(forward_next, generate_gives_the_tokens_of_forward_and_the_seeded_sampler) {
    enum { NEW = 24 };
    ferry_model *model = open_tiny(0);
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, 1, 64, &session), FERRY_OK, "%s", ferry_last_error());
    uint64_t rng = test_seed();
    int32_t prompt[5];
    for (int i = 0; i < 5; i++) prompt[i] = (int32_t)(test_rand_u64(&rng) % 512);
    for (int kind = 0; kind < 5; kind++) {
        ferry_generate_params params = {.sampling = ferry_sampling_default(),
                                        .max_new_tokens = NEW, .ignore_eos = 1};
        ferry_sampling *s = &params.sampling;
        s->seed = test_rand_u64(&rng);
        if (kind == 0) s->greedy = 1;
        if (kind == 1) s->temperature = 1.4f;
        if (kind == 2) s->top_k = 7;
        if (kind == 3) s->top_p = 0.8f;
        if (kind == 4) s->top_k = 40, s->top_p = 0.95f, s->temperature = 0.8f;
        int32_t generated[NEW], by_hand[NEW];
        int n_out = 0;
        cr_assert_eq(ferry_generate(session, prompt, 5, &params, generated, NEW, &n_out), FERRY_OK,
                     "%s", ferry_last_error());
        cr_assert_eq(n_out, NEW);
        generate_by_hand(session, s, prompt, 5, by_hand, NEW);
        for (int i = 0; i < NEW; i++)
            cr_assert_eq(generated[i], by_hand[i], "kind %d, token %d: generate %d, by hand %d",
                         kind, i, generated[i], by_hand[i]);
    }
    ferry_session_free(session);
    ferry_model_close(model);
}

Test(forward_next, out_tokens_may_be_the_batch_tokens) {
    ferry_model *model = open_tiny(0);
    ferry_session *sessions[2];
    for (int b = 0; b < 2; b++)
        cr_assert_eq(ferry_session_new(model, 3, 32, &sessions[b]), FERRY_OK, "%s", ferry_last_error());
    const ferry_sample_rule rules[3] = {{.greedy = 1},
                                        {.uniform = 0.25, .temperature = 1.0f, .top_p = 1.0f},
                                        {.uniform = 0.75, .temperature = 0.5f, .top_p = 0.9f, .top_k = 9}};
    int ones[3] = {1, 1, 1};
    int32_t shared_tokens[3] = {3, 4, 5}, separate[3] = {3, 4, 5}, out[3];
    for (int step = 0; step < 4; step++) {
        ferry_batch aliased = {3, NULL, ones, shared_tokens}, apart = {3, NULL, ones, separate};
        cr_assert_eq(ferry_forward_next(sessions[0], &aliased, rules, shared_tokens), FERRY_OK, "%s",
                     ferry_last_error());
        cr_assert_eq(ferry_forward_next(sessions[1], &apart, rules, out), FERRY_OK, "%s",
                     ferry_last_error());
        for (int i = 0; i < 3; i++) {
            cr_assert_eq(shared_tokens[i], out[i], "step %d, sequence %d", step, i);
            separate[i] = out[i];
        }
    }
    ferry_session_free(sessions[0]);
    ferry_session_free(sessions[1]);
    ferry_model_close(model);
}

Test(forward_next, bad_rules_are_refused_and_change_no_slot) {
    ferry_model *model = open_tiny(0);
    ferry_session *session = NULL;
    cr_assert_eq(ferry_session_new(model, 2, 16, &session), FERRY_OK, "%s", ferry_last_error());
    int32_t tokens[2] = {7, 8}, out[2] = {-7, -7};
    int ones[2] = {1, 1};
    ferry_batch batch = {2, NULL, ones, tokens};
    const ferry_sample_rule good = {.uniform = 0.5, .temperature = 1.0f, .top_p = 1.0f};
    const ferry_sample_rule bad[] = {
        {.uniform = 0.5, .temperature = 0.0f, .top_p = 1.0f},
        {.uniform = 0.5, .temperature = NAN, .top_p = 1.0f},
        {.uniform = 0.5, .temperature = 1.0f, .top_p = 0.0f},
        {.uniform = 0.5, .temperature = 1.0f, .top_p = 1.5f},
        {.uniform = 0.5, .temperature = 1.0f, .top_p = 1.0f, .top_k = -1},
        {.uniform = 1.0, .temperature = 1.0f, .top_p = 1.0f},
        {.uniform = -0.1, .temperature = 1.0f, .top_p = 1.0f},
        {.uniform = NAN, .temperature = 1.0f, .top_p = 1.0f},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        ferry_sample_rule rules[2] = {good, bad[k]};
        cr_assert_eq(ferry_forward_next(session, &batch, rules, out), FERRY_ERR_INVALID_ARGUMENT,
                     "bad rule %zu accepted", k);
        cr_assert(strstr(ferry_last_error(), "sequence 1"), "rule %zu: %s", k, ferry_last_error());
    }
    ferry_sample_rule rules[2] = {good, good};
    cr_assert_eq(ferry_forward_next(session, &batch, NULL, out), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_forward_next(session, &batch, rules, NULL), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_forward_next(NULL, &batch, rules, out), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_forward_next(session, NULL, rules, out), FERRY_ERR_INVALID_ARGUMENT);
    int32_t outside[2] = {7, 512};
    ferry_batch bad_tokens = {2, NULL, ones, outside};
    cr_assert_eq(ferry_forward_next(session, &bad_tokens, rules, out), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "ferry_forward_next"), "%s", ferry_last_error());
    cr_assert_eq(out[0], -7, "out_tokens written by a refused call");
    cr_assert_eq(out[1], -7, "out_tokens written by a refused call");
    cr_assert_eq(ferry_session_length(session, 0), 0);
    cr_assert_eq(ferry_session_length(session, 1), 0);
    /* greedy reads nothing else: any temperature, top_k, top_p or uniform */
    ferry_sample_rule greedy[2] = {{.greedy = 1, .uniform = 7.0, .top_k = -3, .top_p = 9.0f},
                                   {.greedy = 1, .temperature = -1.0f}};
    cr_assert_eq(ferry_forward_next(session, &batch, greedy, out), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(ferry_session_length(session, 0), 1);
    ferry_session_free(session);
    ferry_model_close(model);
}
