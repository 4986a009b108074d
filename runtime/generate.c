/*
 * generate.c — ferry_generate: prefill a prompt into slot 0, then sample a
 * token, hand it to the callback, feed it back, until max_new_tokens, an
 * EOS token or the callback says stop.  Each step is one
 * ferry_forward_next: the token is picked where the logits are (on the
 * device for a GPU backend), with a uniform drawn here from the seed's
 * generator, so only the token comes back.  Allocates nothing.
 */
#include "runtime/engine.h"
#include "runtime/sampler.h"

/* Stopping: a callback returning nonzero ends generation normally
 * (FERRY_OK); the token it was shown is part of the output. */
ferry_status ferry_generate(ferry_session *session, const int32_t *prompt, int n_prompt,
                            const ferry_generate_params *params, int32_t *out_tokens,
                            int out_capacity, int *n_out) {
    if (n_out) *n_out = 0;
    if (!session || !prompt || !params || !n_out || (!out_tokens && params->max_new_tokens > 0))
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "ferry_generate: session, prompt, params, out_tokens or n_out is NULL");
    if (n_prompt < 1)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "ferry_generate: the prompt has %d tokens (need at least 1)", n_prompt);
    if (params->max_new_tokens < 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "ferry_generate: max_new_tokens %d < 0",
                          params->max_new_tokens);
    if (out_capacity < params->max_new_tokens)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "ferry_generate: out_capacity %d is less than max_new_tokens %d",
                          out_capacity, params->max_new_tokens);
    /* The prompt and every generated token but the last are fed back. */
    int64_t needed = (int64_t)n_prompt + (params->max_new_tokens > 0 ? params->max_new_tokens - 1 : 0);
    if (needed > session->max_context)
        return ferry_fail(FERRY_ERR_CONTEXT_FULL,
                          "ferry_generate: %d prompt tokens + %d new tokens need a context of "
                          "%lld; the session holds %d",
                          n_prompt, params->max_new_tokens, (long long)needed,
                          session->max_context);
    const ferry_config *config = &session->model->config;
    const ferry_sampling *sampling = &params->sampling;
    ferry_status status = ferry_sampling_check(sampling->greedy, sampling->temperature,
                                               sampling->top_k, sampling->top_p);
    if (status != FERRY_OK) return ferry_fail_prefix(status, "ferry_generate: ");
    FERRY_TRY(ferry_session_reset(session, 0));
    uint64_t rng_state = sampling->seed;

    /* prefill: the prompt's last position gives the first token */
    int seq = 0, n_feed = n_prompt;
    ferry_batch batch = {.n_seqs = 1, .seq_ids = &seq, .n_tokens = &n_feed, .tokens = prompt};
    ferry_sample_rule rule = ferry_sample_rule_draw(sampling, &rng_state);
    int32_t token = 0;
    FERRY_TRY(ferry_forward_next(session, &batch, &rule, &token));

    int n = 0;
    while (n < params->max_new_tokens) {
        out_tokens[n++] = token;
        *n_out = n;
        if (params->on_token && params->on_token(params->user, token)) break;
        if (!params->ignore_eos && ferry_is_eos(config, token)) break;
        if (n == params->max_new_tokens) break;
        /* decode: feed the token back for the next one */
        n_feed = 1;
        batch.tokens = &out_tokens[n - 1];
        rule = ferry_sample_rule_draw(sampling, &rng_state);
        FERRY_TRY(ferry_forward_next(session, &batch, &rule, &token));
    }
    return FERRY_OK;
}
