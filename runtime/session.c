/*
 * session.c — sessions: the per-layer KV cache for max_batch slots of
 * max_context tokens (in device memory, or for a streamed model whose
 * budget says so in pinned host memory the device reads in place), the
 * slot lengths, and the activation scratch: the residual stream of every
 * token a pass through the layers carries (one chunk of at most
 * FERRY_CHUNK_TOKENS tokens, or up to the zig-zag limit when the model
 * streams) and the rest for one chunk, and what ferry_forward_next picks
 * tokens with.  Everything a forward pass touches is allocated here, once.
 */
#include <stdlib.h>
#include <string.h>

#include "offload/offload.h"
#include "runtime/engine.h"

int ferry_zigzag_tokens(void) {
    long tokens = FERRY_ZIGZAG_TOKENS;
    const char *text = getenv("FERRY_ZIGZAG_TOKENS");
    if (text && *text) {
        char *end = NULL;
        long parsed = strtol(text, &end, 10);
        if (end && *end == '\0' && parsed > 0 && parsed <= (1L << 24)) tokens = parsed;
    }
    return (int)((tokens + FERRY_CHUNK_TOKENS - 1) / FERRY_CHUNK_TOKENS * FERRY_CHUNK_TOKENS);
}

/* Tokens one pass through the layers carries, in whole chunks: one chunk
 * for a resident model; for a streamed one every chunk of a call up to the
 * zig-zag limit (no call holds more than max_batch x max_context tokens). */
static int carried_tokens(const ferry_model *model, int chunk_tokens, uint64_t total_tokens) {
    if (!model->stream) return chunk_tokens;
    return (int)offload_tokens_carried(total_tokens, (uint64_t)ferry_zigzag_tokens(),
                                       (uint64_t)chunk_tokens);
}

/* Allocate `count` elements of `element_bytes` in backend memory, checking
 * the size arithmetic. */
static ferry_status backend_array(ferry_backend *backend, uint64_t count, size_t element_bytes,
                                  const char *what, void **out) {
    uint64_t bytes;
    if (ferry_mul_overflow(count, element_bytes, &bytes) || bytes > (uint64_t)SIZE_MAX)
        return ferry_fail(FERRY_ERR_NO_MEMORY, "session: %s would need more than 2^64 bytes", what);
    ferry_status status = backend->ops->alloc(backend, (size_t)bytes, out);
    if (status != FERRY_OK)
        return ferry_fail_prefix(status, "session: %s (%llu bytes): ", what,
                                 (unsigned long long)bytes);
    return FERRY_OK;
}

static ferry_status alloc_scratch(ferry_session *session) {
    const ferry_config *config = &session->model->config;
    ferry_backend *backend = session->model->backend;
    ferry_scratch *scratch = &session->scratch;
    uint64_t chunk = (uint64_t)session->chunk_tokens;
    uint64_t carried = (uint64_t)session->carried_tokens;
    uint64_t q_width = (uint64_t)config->n_heads * config->head_dim;
    uint64_t kv_width = (uint64_t)config->n_kv_heads * config->head_dim;
    const struct {
        void **place;
        uint64_t count;
        size_t element_bytes;
        const char *what;
    } arrays[] = {
        {(void **)&scratch->residuals, carried * config->hidden_size, sizeof(float), "residual"},
        {(void **)&scratch->normed, chunk * config->hidden_size, sizeof(float), "norm output"},
        {(void **)&scratch->q, chunk * q_width, sizeof(float), "queries"},
        {(void **)&scratch->k, chunk * kv_width, sizeof(float), "keys"},
        {(void **)&scratch->v, chunk * kv_width, sizeof(float), "values"},
        {(void **)&scratch->attention, chunk * q_width, sizeof(float), "attention output"},
        {(void **)&scratch->gate, chunk * config->intermediate_size, sizeof(float), "mlp gate"},
        {(void **)&scratch->up, chunk * config->intermediate_size, sizeof(float), "mlp up"},
        {(void **)&scratch->logits, (uint64_t)FERRY_LOGITS_ROWS_PER_PASS * config->vocab_size,
         sizeof(float), "logits"},
        {(void **)&scratch->tokens, carried, sizeof(int32_t), "token ids"},
        {(void **)&scratch->positions, carried, sizeof(int32_t), "positions"},
        {(void **)&scratch->slots, carried, sizeof(int32_t), "slots"},
    };
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        FERRY_TRY(backend_array(backend, arrays[i].count, arrays[i].element_bytes, arrays[i].what,
                                arrays[i].place));
    scratch->residual = scratch->residuals;
    return FERRY_OK;
}

static void free_scratch(ferry_backend *backend, ferry_scratch *scratch) {
    void *arrays[] = {scratch->residuals, scratch->normed, scratch->q,      scratch->k,
                      scratch->v,        scratch->attention, scratch->gate, scratch->up,
                      scratch->logits,   scratch->tokens, scratch->positions, scratch->slots,
                      scratch->rules,    scratch->sampled};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        if (arrays[i]) backend->ops->free(backend, arrays[i]);
    memset(scratch, 0, sizeof *scratch);
}

/* What ferry_forward_next needs: the picked tokens' host copy, and with
 * the backend's sample op backend room for every sequence's rule and
 * token; without it a host row for one sequence's logits and the host
 * sampler's scratch. */
static ferry_status alloc_sampling(ferry_session *session) {
    ferry_backend *backend = session->model->backend;
    const int vocab = session->model->config.vocab_size;
    const size_t max_batch = (size_t)session->max_batch;
    FERRY_TRY(ferry_malloc(max_batch * sizeof(int32_t), "sampled tokens",
                           (void **)&session->host_sampled));
    if (backend->ops->sample) {
        FERRY_TRY(backend_array(backend, max_batch, sizeof(ferry_sample_rule), "sampling rules",
                                (void **)&session->scratch.rules));
        return backend_array(backend, max_batch, sizeof(int32_t), "sampled tokens",
                             (void **)&session->scratch.sampled);
    }
    FERRY_TRY(ferry_malloc((size_t)vocab * sizeof(float), "logits row",
                           (void **)&session->host_logits));
    const ferry_sampling defaults = ferry_sampling_default();
    return ferry_sampler_init(&session->host_sampler, &defaults, vocab);
}

static void free_sampling(ferry_session *session) {
    free(session->host_sampled);
    free(session->host_logits);
    ferry_sampler_free(&session->host_sampler);
    session->host_sampled = NULL;
    session->host_logits = NULL;
}

/* ------------------------------------------------------------ KV cache */

/* `bytes` of host memory the device maps when `mapped` and the backend
 * has that hook, else backend memory (a backend without the hook, the
 * CPU, has only host memory). */
static ferry_status mapped_alloc(ferry_backend *backend, int mapped, size_t bytes, void **out) {
    return mapped && backend->ops->host_mapped_alloc
               ? backend->ops->host_mapped_alloc(backend, bytes, out)
               : backend->ops->alloc(backend, bytes, out);
}

static void mapped_free(ferry_backend *backend, int mapped, void *ptr) {
    if (!ptr) return;
    if (mapped && backend->ops->host_mapped_free) backend->ops->host_mapped_free(backend, ptr);
    else backend->ops->free(backend, ptr);
}

/* One K or V array where the session's caches live. */
static ferry_status kv_alloc(ferry_session *session, size_t bytes, const char *what, void **out) {
    ferry_status status =
        mapped_alloc(session->model->backend, session->kv_in_host_memory, bytes, out);
    if (status != FERRY_OK)
        return ferry_fail_prefix(status, "session: %s (%zu bytes%s): ", what, bytes,
                                 session->kv_in_host_memory ? ", pinned host memory" : "");
    return FERRY_OK;
}

/* K and V per layer: [max_batch, max_context, n_kv_heads, head_dim] each.
 * A streamed model's plan decides where (offload_stream_kv_reserve: the
 * GPU while its budget has room, else pinned host memory, which attention
 * and kv_store read and write in place over the link, so the cache streams
 * per layer beside the weights and only the rows a step uses move).
 * Without streaming there is no budget: device memory, as before. */
static ferry_status alloc_kv(ferry_session *session) {
    ferry_model *model = session->model;
    const ferry_config *config = &model->config;
    uint64_t layer_bytes, all_bytes;
    if (ferry_mul_overflow((uint64_t)session->max_batch * (uint64_t)session->max_context,
                           (uint64_t)config->n_kv_heads * (uint64_t)config->head_dim *
                               ferry_dtype_bytes(model->backend->ops->kv_dtype),
                           &layer_bytes) ||
        ferry_mul_overflow(layer_bytes, 2 * (uint64_t)config->n_layers, &all_bytes) ||
        layer_bytes > (uint64_t)SIZE_MAX)
        return ferry_fail(FERRY_ERR_NO_MEMORY,
                          "session: a KV cache of %d x %d tokens would need more than 2^64 bytes",
                          session->max_batch, session->max_context);
    FERRY_TRY(ferry_calloc((size_t)config->n_layers, sizeof *session->kv, "kv cache table",
                           (void **)&session->kv));
    if (model->stream) {
        offload_tier tier;
        ferry_status status = offload_stream_kv_reserve(model->stream, all_bytes, &tier);
        if (status != FERRY_OK)
            return ferry_fail_prefix(status, "session of batch %d, context %d: ",
                                     session->max_batch, session->max_context);
        session->kv_held_bytes = all_bytes;
        session->kv_in_host_memory = tier == OFFLOAD_TIER_HOST;
    }
    for (int layer = 0; layer < config->n_layers; layer++) {
        ferry_kv_layer *kv = &session->kv[layer];
        kv->n_slots = session->max_batch;
        kv->max_context = session->max_context;
        FERRY_TRY(kv_alloc(session, (size_t)layer_bytes, "kv cache keys", &kv->k));
        FERRY_TRY(kv_alloc(session, (size_t)layer_bytes, "kv cache values", &kv->v));
    }
    return FERRY_OK;
}

static void free_kv(ferry_session *session) {
    if (session->kv)
        for (int layer = 0; layer < session->model->config.n_layers; layer++) {
            mapped_free(session->model->backend, session->kv_in_host_memory,
                        session->kv[layer].k);
            mapped_free(session->model->backend, session->kv_in_host_memory,
                        session->kv[layer].v);
        }
    free(session->kv);
    session->kv = NULL;
    if (session->kv_held_bytes)
        offload_stream_kv_release(session->model->stream,
                                  session->kv_in_host_memory ? OFFLOAD_TIER_HOST : OFFLOAD_TIER_GPU,
                                  session->kv_held_bytes);
    session->kv_held_bytes = 0;
}

/* ---------------------------------------------------- host attention */

ferry_status ferry_attention_place_from_env(ferry_attention_place *out) {
    static const struct {
        const char *name;
        ferry_attention_place place;
    } places[] = {{"auto", FERRY_ATTENTION_AUTO},
                  {"host", FERRY_ATTENTION_HOST},
                  {"device", FERRY_ATTENTION_DEVICE}};
    const char *text = getenv("FERRY_ATTENTION");
    *out = FERRY_ATTENTION_AUTO;
    if (!text || !*text) return FERRY_OK;
    for (size_t i = 0; i < sizeof places / sizeof places[0]; i++)
        if (strcmp(text, places[i].name) == 0) {
            *out = places[i].place;
            return FERRY_OK;
        }
    return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                      "FERRY_ATTENTION=%s: expected auto, host or device", text);
}

/* Host memory for q and the attention output of one chunk: pinned and
 * mapped where the backend has it (fast copies), else the backend's own
 * memory (the CPU's is host memory). */
static ferry_status host_buffer(ferry_backend *backend, size_t bytes, const char *what,
                                void **out) {
    ferry_status status = mapped_alloc(backend, 1, bytes, out);
    if (status != FERRY_OK)
        return ferry_fail_prefix(status, "session: %s for attention on the host (%zu bytes): ",
                                 what, bytes);
    return FERRY_OK;
}

/* Decide where the session attends and, for the host, make its threads
 * and buffers.  The cache is host memory when it was put in mapped host
 * memory, or when every buffer of the backend is (the CPU, which has no
 * mapping hook). */
ferry_status ferry_attention_on_host(const ferry_backend *backend, int kv_in_host_memory,
                                     int *out) {
    ferry_attention_place place;
    *out = 0;
    FERRY_TRY(ferry_attention_place_from_env(&place));
    const int backend_is_host = !backend->ops->host_mapped_alloc &&
                                strcmp(backend->ops->name, "cpu") == 0;
    const int mapped = kv_in_host_memory && backend->ops->host_mapped_alloc;
    *out = place == FERRY_ATTENTION_HOST   ? mapped || backend_is_host
           : place == FERRY_ATTENTION_AUTO ? mapped
                                           : 0;
    return FERRY_OK;
}

static ferry_status setup_host_attention(ferry_session *session) {
    ferry_backend *backend = session->model->backend;
    const ferry_config *config = &session->model->config;
    FERRY_TRY(ferry_attention_on_host(backend, session->kv_in_host_memory,
                                      &session->attention_on_host));
    if (!session->attention_on_host) return FERRY_OK;
    const int backend_is_host = !backend->ops->host_mapped_alloc;
    if (backend_is_host) session->host_threads = backend;
    else FERRY_TRY(ferry_backend_cpu_new(0, &session->host_threads));
    size_t bytes = (size_t)session->chunk_tokens * (size_t)config->n_heads *
                   (size_t)config->head_dim * sizeof(float);
    FERRY_TRY(host_buffer(backend, bytes, "queries", (void **)&session->host_q));
    return host_buffer(backend, bytes, "output", (void **)&session->host_attention);
}

static void free_host_attention(ferry_session *session) {
    ferry_backend *backend = session->model->backend;
    mapped_free(backend, 1, session->host_q);
    mapped_free(backend, 1, session->host_attention);
    if (session->host_threads && session->host_threads != backend)
        ferry_backend_free(session->host_threads);
    session->host_q = session->host_attention = NULL;
    session->host_threads = NULL;
}

/* ------------------------------------------------------------ sessions */

ferry_status ferry_session_new(ferry_model *model, int max_batch, int max_context,
                               ferry_session **out_session) {
    if (!out_session)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "ferry_session_new: out_session is NULL");
    *out_session = NULL;
    if (!model) return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "ferry_session_new: model is NULL");
    if (max_batch < 1 || max_batch > 65536)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "ferry_session_new: max_batch %d is not in 1..65536", max_batch);
    if (max_context < 1 || max_context > (1 << 24))
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "ferry_session_new: max_context %d is not in 1..16777216", max_context);
    ferry_session *session = NULL;
    ferry_status status;
    FERRY_TRY_GOTO(ferry_calloc(1, sizeof *session, "session", (void **)&session));
    session->model = model;
    session->max_batch = max_batch;
    session->max_context = max_context;
    uint64_t total_tokens = (uint64_t)max_batch * (uint64_t)max_context;
    session->chunk_tokens =
        total_tokens < FERRY_CHUNK_TOKENS ? (int)total_tokens : FERRY_CHUNK_TOKENS;
    session->carried_tokens = carried_tokens(model, session->chunk_tokens, total_tokens);
    FERRY_TRY_GOTO(ferry_calloc((size_t)max_batch, sizeof *session->lengths, "slot lengths",
                                (void **)&session->lengths));
    FERRY_TRY_GOTO(ferry_calloc((size_t)max_batch, sizeof *session->slot_owner, "slot owners",
                                (void **)&session->slot_owner));
    FERRY_TRY_GOTO(alloc_kv(session));
    FERRY_TRY_GOTO(alloc_scratch(session));
    FERRY_TRY_GOTO(alloc_sampling(session));
    FERRY_TRY_GOTO(setup_host_attention(session));
    size_t carried = (size_t)session->carried_tokens;
    FERRY_TRY_GOTO(ferry_malloc(carried * sizeof(int32_t), "chunk tokens",
                                (void **)&session->host_tokens));
    FERRY_TRY_GOTO(ferry_malloc(carried * sizeof(int32_t), "chunk positions",
                                (void **)&session->host_positions));
    FERRY_TRY_GOTO(ferry_malloc(carried * sizeof(int32_t), "chunk slots",
                                (void **)&session->host_slots));
    FERRY_TRY_GOTO(ferry_malloc(carried * sizeof(int), "chunk output rows",
                                (void **)&session->host_output_rows));
    const char *graphs = getenv("FERRY_GRAPHS");
    session->graphs_off = graphs && strcmp(graphs, "0") == 0;
    *out_session = session;
    return FERRY_OK;
fail:
    ferry_session_free(session);
    return status;
}

void ferry_session_free(ferry_session *session) {
    if (!session) return;
    ferry_backend *backend = session->model->backend;
    free_host_attention(session);
    free_kv(session);
    if (backend->ops->graph_free)
        for (int n = 0; n <= FERRY_LOGITS_ROWS_PER_PASS; n++)
            if (session->graphs[n]) backend->ops->graph_free(backend, session->graphs[n]);
    free_scratch(backend, &session->scratch);
    free_sampling(session);
    free(session->lengths);
    free(session->slot_owner);
    free(session->host_tokens);
    free(session->host_positions);
    free(session->host_slots);
    free(session->host_output_rows);
    free(session);
}

ferry_status ferry_session_reset(ferry_session *session, int seq) {
    if (!session) return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "ferry_session_reset: session is NULL");
    if (seq >= session->max_batch)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "ferry_session_reset: slot %d is not in 0..%d", seq,
                          session->max_batch - 1);
    /* Cached K/V beyond a slot's length are never read, so forgetting is
     * setting the length to zero. */
    if (seq < 0) memset(session->lengths, 0, sizeof *session->lengths * (size_t)session->max_batch);
    else session->lengths[seq] = 0;
    return FERRY_OK;
}

int ferry_session_length(const ferry_session *session, int seq) {
    if (!session || seq < 0 || seq >= session->max_batch) return -1;
    return session->lengths[seq];
}
