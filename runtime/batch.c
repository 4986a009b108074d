/*
 * batch.c — ferry_batch_run: iteration-level scheduling over a session's
 * slots.  Each step admits waiting requests into free slots (the one with
 * the most work left first, from a window read ahead), feeds every active
 * slot (a prompt chunk, or its last token) in one ferry_forward_next call,
 * which picks one token per slot (on the device for a GPU backend, from a
 * uniform each request's own generator draws here), keeps those of slots
 * whose prompt is complete, and retires finished slots at once.  Hot path: the step loop allocates only when a
 * request is admitted (its token buffer) or the window grows.
 */
#include <stdio.h>
#include <stdlib.h>

#include "offload/offload.h"
#include "runtime/batch.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"

/* A streamed model's default prompt tokens per step, in chunks: one
 * zig-zag pass carries them and the decode tokens with one weight
 * transfer, so a step holds more prompt at almost no cost. */
enum { STREAMED_PREFILL_CHUNKS = 4 };

typedef struct slot_state {
    int active;
    ferry_batch_request request;
    int n_fed;                  /* prompt tokens already in the KV cache */
    int32_t *tokens;            /* [max_new_tokens] generated */
    int n_tokens;
    uint64_t rng_state;         /* this request's generator, carried between steps */
} slot_state;

/* ------------------------------------------------------ waiting requests */

/* Requests read ahead of admission: a max-heap on the work they have left
 * (max_new_tokens, then prompt length), the earliest first among equals. */
typedef struct waiting_request {
    ferry_batch_request request;
    uint64_t arrival;
} waiting_request;

typedef struct waiting_heap {
    waiting_request *items;
    int count, capacity;
    uint64_t n_arrived;
} waiting_heap;

static int runs_longer(const waiting_request *a, const waiting_request *b) {
    if (a->request.max_new_tokens != b->request.max_new_tokens)
        return a->request.max_new_tokens > b->request.max_new_tokens;
    if (a->request.n_prompt != b->request.n_prompt) return a->request.n_prompt > b->request.n_prompt;
    return a->arrival < b->arrival;
}

static void swap_waiting(waiting_request *a, waiting_request *b) {
    waiting_request t = *a;
    *a = *b;
    *b = t;
}

static ferry_status waiting_push(waiting_heap *heap, const ferry_batch_request *request) {
    if (heap->count == heap->capacity) {
        int capacity = heap->capacity ? 2 * heap->capacity : 64;
        waiting_request *items = realloc(heap->items, (size_t)capacity * sizeof *items);
        if (!items) return ferry_fail(FERRY_ERR_NO_MEMORY, "batch: %d waiting requests", capacity);
        heap->items = items;
        heap->capacity = capacity;
    }
    int at = heap->count++;
    heap->items[at] = (waiting_request){*request, heap->n_arrived++};
    while (at > 0 && runs_longer(&heap->items[at], &heap->items[(at - 1) / 2])) {
        swap_waiting(&heap->items[at], &heap->items[(at - 1) / 2]);
        at = (at - 1) / 2;
    }
    return FERRY_OK;
}

/* The waiting request with the most work left; the heap is not empty. */
static ferry_batch_request waiting_pop(waiting_heap *heap) {
    ferry_batch_request top = heap->items[0].request;
    heap->items[0] = heap->items[--heap->count];
    for (int at = 0;;) {
        int longest = at, left = 2 * at + 1, right = left + 1;
        if (left < heap->count && runs_longer(&heap->items[left], &heap->items[longest]))
            longest = left;
        if (right < heap->count && runs_longer(&heap->items[right], &heap->items[longest]))
            longest = right;
        if (longest == at) break;
        swap_waiting(&heap->items[at], &heap->items[longest]);
        at = longest;
    }
    return top;
}

/* Read requests from the caller until `window` wait or it has no more
 * (*more_requests 0). */
static ferry_status read_ahead(const ferry_batch_callbacks *callbacks, int window,
                               waiting_heap *waiting, int *more_requests) {
    while (*more_requests && waiting->count < window) {
        ferry_batch_request request;
        *more_requests = callbacks->next_request(callbacks->user, &request);
        if (*more_requests) FERRY_TRY(waiting_push(waiting, &request));
    }
    return FERRY_OK;
}

/* ---------------------------------------------------------------- slots */

static ferry_status deliver(const ferry_batch_callbacks *callbacks, ferry_batch_stats *stats,
                            slot_state *slot, const char *finish_reason, const char *error) {
    ferry_batch_result result = {
        .handle = slot->request.handle, .tokens = slot->tokens, .n_tokens = slot->n_tokens,
        .n_prompt = slot->request.n_prompt, .finish_reason = finish_reason, .error = error};
    stats->n_requests++;
    stats->n_errors += error != NULL;
    if (!error) {
        stats->prompt_tokens += (uint64_t)slot->request.n_prompt;
        stats->completion_tokens += (uint64_t)slot->n_tokens;
    }
    ferry_status status = callbacks->on_result(callbacks->user, &result);
    free(slot->tokens);
    *slot = (slot_state){0};
    return status;
}

/* Check a request and place it in a free slot; a request that cannot run
 * is answered with an error result at once (and the slot stays free). */
static ferry_status admit(ferry_session *session, int seq, slot_state *slot,
                          const ferry_batch_request *request,
                          const ferry_batch_callbacks *callbacks, ferry_batch_stats *stats) {
    *slot = (slot_state){.request = *request};
    char message[256] = "";
    const ferry_sampling *sampling = &request->sampling;
    int64_t needed = (int64_t)request->n_prompt +
                     (request->max_new_tokens > 0 ? request->max_new_tokens - 1 : 0);
    if (request->n_prompt < 1) {
        snprintf(message, sizeof message, "the prompt has no tokens");
    } else if (request->max_new_tokens < 0) {
        snprintf(message, sizeof message, "max_new_tokens %d < 0", request->max_new_tokens);
    } else if (needed > session->max_context) {
        snprintf(message, sizeof message,
                 "%d prompt tokens + %d new tokens need a context of %lld; the session holds %d",
                 request->n_prompt, request->max_new_tokens, (long long)needed,
                 session->max_context);
    } else if (ferry_sampling_check(sampling->greedy, sampling->temperature, sampling->top_k,
                                    sampling->top_p) != FERRY_OK) {
        snprintf(message, sizeof message, "%s", ferry_last_error());
    } else {
        for (int k = 0; k < request->n_prompt; k++)
            if (request->prompt[k] < 0 || request->prompt[k] >= session->model->config.vocab_size) {
                snprintf(message, sizeof message, "prompt token %d is %d, outside the vocabulary "
                         "of %d", k, (int)request->prompt[k], session->model->config.vocab_size);
                break;
            }
    }
    if (message[0]) return deliver(callbacks, stats, slot, "error", message);
    if (request->max_new_tokens == 0) return deliver(callbacks, stats, slot, "length", NULL);
    FERRY_TRY(ferry_malloc((size_t)request->max_new_tokens * sizeof *slot->tokens,
                           "generated tokens", (void **)&slot->tokens));
    FERRY_TRY(ferry_session_reset(session, seq));
    slot->rng_state = request->sampling.seed;
    slot->active = 1;
    return FERRY_OK;
}

/* Prompt tokens per step when the caller leaves it to us: one chunk for a
 * resident model; for a streamed one as many chunks as one zig-zag pass
 * carries beside a full batch of decode tokens, up to
 * STREAMED_PREFILL_CHUNKS. */
static int default_prefill_tokens(const ferry_session *session) {
    if (!session->model->stream) return FERRY_CHUNK_TOKENS;
    int tokens = STREAMED_PREFILL_CHUNKS * FERRY_CHUNK_TOKENS;
    int room = session->carried_tokens - session->max_batch;
    if (room < tokens) tokens = room;
    return tokens < FERRY_CHUNK_TOKENS ? FERRY_CHUNK_TOKENS : tokens;
}

/* Weight passes the model's layers have made (0 for a resident model). */
static uint64_t weight_passes(const ferry_session *session) {
    return session->model->stream ? offload_stream_stats(session->model->stream).steps : 0;
}

ferry_status ferry_batch_run(ferry_session *session, const ferry_batch_options *options,
                             const ferry_batch_callbacks *callbacks, ferry_batch_stats *stats) {
    ferry_batch_stats local_stats = {0};
    if (!stats) stats = &local_stats;
    *stats = (ferry_batch_stats){0};
    if (!session || !callbacks || !callbacks->next_request || !callbacks->on_result)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "ferry_batch_run: session or callbacks missing");
    const ferry_batch_options no_options = {0};
    if (!options) options = &no_options;
    const int max_prefill_tokens = options->max_prefill_tokens > 0
                                       ? options->max_prefill_tokens
                                       : default_prefill_tokens(session);
    const ferry_config *config = &session->model->config;
    const int max_batch = session->max_batch;
    const int window = options->admission_window > 0 ? options->admission_window : 4 * max_batch;
    ferry_status status = FERRY_OK;
    waiting_heap waiting = {0};
    slot_state *slots = NULL;
    int *seq_ids = NULL, *n_feed = NULL;
    int32_t *feed = NULL, *picked = NULL;
    ferry_sample_rule *rules = NULL;
    FERRY_TRY_GOTO(ferry_calloc((size_t)max_batch, sizeof *slots, "batch slots", (void **)&slots));
    FERRY_TRY_GOTO(ferry_malloc((size_t)max_batch * sizeof *rules, "batch", (void **)&rules));
    FERRY_TRY_GOTO(ferry_malloc((size_t)max_batch * sizeof *picked, "batch", (void **)&picked));
    FERRY_TRY_GOTO(ferry_malloc((size_t)max_batch * sizeof *seq_ids, "batch", (void **)&seq_ids));
    FERRY_TRY_GOTO(ferry_malloc((size_t)max_batch * sizeof *n_feed, "batch", (void **)&n_feed));
    FERRY_TRY_GOTO(ferry_malloc(((size_t)max_prefill_tokens + (size_t)max_batch) * sizeof *feed,
                                "batch tokens", (void **)&feed));
    int more_requests = 1;
    for (;;) {
        int stopping = callbacks->stop_flag && *callbacks->stop_flag;
        /* admit waiting requests into free slots, the longest first */
        for (int seq = 0; seq < max_batch && !stopping; seq++) {
            while (!slots[seq].active) {
                FERRY_TRY_GOTO(read_ahead(callbacks, window, &waiting, &more_requests));
                if (waiting.count == 0) break;
                ferry_batch_request request = waiting_pop(&waiting);
                FERRY_TRY_GOTO(admit(session, seq, &slots[seq], &request, callbacks, stats));
            }
        }
        if (stopping) {
            status = ferry_fail(FERRY_ERR_CANCELLED, "batch stopped by a signal");
            goto fail;
        }
        /* one step: decode tokens first, then prompt chunks within the budget */
        int n_seqs = 0, n_fed_tokens = 0, prefill_left = max_prefill_tokens;
        for (int pass = 0; pass < 2; pass++)
            for (int seq = 0; seq < max_batch; seq++) {
                slot_state *slot = &slots[seq];
                int prefilling = slot->active && slot->n_fed < slot->request.n_prompt;
                if (!slot->active || prefilling != pass) continue;
                int n = 1;
                const int32_t *source = &slot->tokens[slot->n_tokens > 0 ? slot->n_tokens - 1 : 0];
                if (prefilling) {
                    n = slot->request.n_prompt - slot->n_fed;
                    if (n > prefill_left) n = prefill_left;
                    if (n == 0) continue;
                    prefill_left -= n;
                    source = slot->request.prompt + slot->n_fed;
                }
                memcpy(feed + n_fed_tokens, source, (size_t)n * sizeof *feed);
                seq_ids[n_seqs] = seq;
                n_feed[n_seqs++] = n;
                n_fed_tokens += n;
            }
        if (n_seqs == 0) break;   /* nothing active and nothing waiting */
        /* a slot whose prompt is complete after this step draws from its own
         * generator; a mid-prompt chunk's pick is not used (greedy: no draw) */
        for (int i = 0; i < n_seqs; i++) {
            slot_state *slot = &slots[seq_ids[i]];
            int samples = slot->n_fed + n_feed[i] >= slot->request.n_prompt;
            rules[i] = samples ? ferry_sample_rule_draw(&slot->request.sampling, &slot->rng_state)
                               : (ferry_sample_rule){.greedy = 1};
        }
        ferry_batch batch = {.n_seqs = n_seqs, .seq_ids = seq_ids, .n_tokens = n_feed, .tokens = feed};
        uint64_t start_ns = ferry_now_ns(), passes = weight_passes(session);
        FERRY_TRY_GOTO(ferry_forward_next(session, &batch, rules, picked));
        stats->forward_ns += ferry_now_ns() - start_ns;
        stats->n_passes += weight_passes(session) - passes;
        stats->n_steps++;
        for (int i = 0; i < n_seqs; i++) {
            slot_state *slot = &slots[seq_ids[i]];
            if (slot->n_fed < slot->request.n_prompt) {
                slot->n_fed += n_feed[i];
                if (slot->n_fed < slot->request.n_prompt) continue;   /* mid-prompt chunk */
            }
            int32_t token = picked[i];
            slot->tokens[slot->n_tokens++] = token;
            const char *finish = NULL;
            if (callbacks->on_token &&
                callbacks->on_token(callbacks->user, slot->request.handle, slot->tokens,
                                    slot->n_tokens))
                finish = "stop";
            else if (!slot->request.ignore_eos && ferry_is_eos(config, token))
                finish = "stop";
            else if (slot->n_tokens == slot->request.max_new_tokens)
                finish = "length";
            if (finish) FERRY_TRY_GOTO(deliver(callbacks, stats, slot, finish, NULL));
        }
    }
fail:
    for (int seq = 0; slots && seq < max_batch; seq++) free(slots[seq].tokens);
    free(slots);
    free(waiting.items);
    free(rules);
    free(picked);
    free(seq_ids);
    free(n_feed);
    free(feed);
    return status;
}
