/*
 * forward.c — ferry_forward and ferry_forward_next: checks a ragged batch, cuts its tokens into
 * chunks of at most session->chunk_tokens, and runs them through the
 * layers (norm, QKV, RoPE, KV store, attention, output projection, SwiGLU
 * MLP, residuals), then the final norm and lm_head for the rows the caller
 * asked for: downloaded into the caller's buffer (ferry_forward), or, for
 * ferry_forward_next, each sequence's next token picked from its row by
 * the backend's sample op (on the device; only token ids come back) or,
 * where the backend has none, on the host.  A resident model runs one
 * chunk per pass through the layers; a streamed one runs every chunk of
 * the call (up to the session's carried tokens) through a layer while its
 * weights sit in a slot, so a call costs one weight transfer (FlexGen's
 * zig-zag order).  Both do the same per-chunk operations, so their
 * results are bit-identical.  Hot path: allocates nothing; every buffer
 * comes from the session.  Slot lengths change only when the whole call
 * succeeds.
 */
#include "offload/offload.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"

/* ----------------------------------------------------------- checking */

/* Validate the call (every message starts with `who`); on success
 * *out_n_rows is the number of logit rows it makes. */
static ferry_status check_forward_call(ferry_session *session, const ferry_batch *batch,
                                       ferry_logits_mode mode, const char *who,
                                       int64_t *out_n_rows) {
    if (!session || !batch)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: session or batch is NULL", who);
    if (mode != FERRY_LOGITS_LAST && mode != FERRY_LOGITS_ALL)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: bad logits mode %d", who, (int)mode);
    if (batch->n_seqs < 1 || batch->n_seqs > session->max_batch)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "%s: batch of %d sequences (session holds 1..%d)", who, batch->n_seqs,
                          session->max_batch);
    if (!batch->n_tokens || !batch->tokens)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: n_tokens or tokens is NULL", who);
    const int vocab = session->model->config.vocab_size;
    int64_t n_total = 0;
    for (int i = 0; i < batch->n_seqs; i++) {
        int seq = batch->seq_ids ? batch->seq_ids[i] : i;
        if (seq < 0 || seq >= session->max_batch)
            return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                              "%s: sequence %d names slot %d (session has 0..%d)", who, i,
                              seq, session->max_batch - 1);
        /* slot_owner[seq] == i + 1 for the sequence i that uses the slot
         * in this call; stale values from earlier calls are told apart by
         * checking that the sequence they name really uses the slot. */
        int owner = session->slot_owner[seq] - 1;
        if (owner >= 0 && owner < i && (batch->seq_ids ? batch->seq_ids[owner] : owner) == seq)
            return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                              "%s: slot %d appears twice in one batch (sequences %d and %d)",
                              who, seq, owner, i);
        session->slot_owner[seq] = i + 1;
        int n = batch->n_tokens[i];
        if (n < 1)
            return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                              "%s: sequence %d has %d tokens (need at least 1)", who, i, n);
        if ((int64_t)session->lengths[seq] + n > session->max_context)
            return ferry_fail(FERRY_ERR_CONTEXT_FULL,
                              "%s: slot %d holds %d tokens; %d more exceed the session's "
                              "context of %d",
                              who, seq, session->lengths[seq], n, session->max_context);
        for (int j = 0; j < n; j++) {
            int32_t token = batch->tokens[n_total + j];
            if (token < 0 || token >= vocab)
                return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                                  "%s: token id %d (sequence %d, token %d) is not in the "
                                  "vocabulary 0..%d",
                                  who, (int)token, i, j, vocab - 1);
        }
        n_total += n;
    }
    *out_n_rows = mode == FERRY_LOGITS_ALL ? n_total : batch->n_seqs;
    return FERRY_OK;
}

/* ------------------------------------------------------------- chunks */

/* Where the next chunk starts in the flattened batch. */
typedef struct batch_cursor {
    int seq;                    /* index into the batch's sequences */
    int offset;                 /* tokens of that sequence already taken */
    int64_t flat;               /* tokens of the whole batch already taken */
} batch_cursor;

/* Fill the session's host arrays from index `first` on with the next
 * chunk of tokens and say, per token, which row of the caller's logits it
 * produces (-1: none).  Returns the number of tokens in the chunk. */
static int next_chunk(ferry_session *session, const ferry_batch *batch, ferry_logits_mode mode,
                      batch_cursor *cursor, int first) {
    int n = 0;
    while (n < session->chunk_tokens && cursor->seq < batch->n_seqs) {
        int i = cursor->seq;
        int slot = batch->seq_ids ? batch->seq_ids[i] : i;
        int n_seq_tokens = batch->n_tokens[i];
        int position = session->lengths[slot] + cursor->offset;
        int at = first + n;
        session->host_tokens[at] = batch->tokens[cursor->flat];
        session->host_positions[at] = position;
        session->host_slots[at] = slot;
        int is_last = cursor->offset == n_seq_tokens - 1;
        session->host_output_rows[at] =
            mode == FERRY_LOGITS_ALL ? (int)cursor->flat : (is_last ? i : -1);
        n++;
        cursor->flat++;
        if (++cursor->offset == n_seq_tokens) {
            cursor->seq++;
            cursor->offset = 0;
        }
    }
    return n;
}

/* The tokens of one pass through the layers, in the session's carried
 * arrays (host_*, scratch.residuals, tokens, positions, slots): chunk c
 * holds tokens [c * chunk_tokens, ...), every chunk full but the last. */
typedef struct layer_pass {
    ferry_session *session;
    int n_tokens;
} layer_pass;

/* Fill the host arrays with the next pass's chunks: as many whole chunks
 * as the carried arrays hold (one for a resident model: session.c carries
 * one chunk).  Returns the pass's number of tokens (0: the batch is done). */
static int next_pass(ferry_session *session, const ferry_batch *batch, ferry_logits_mode mode,
                     batch_cursor *cursor) {
    const int chunk = session->chunk_tokens;
    int n = 0;
    while (n + chunk <= session->carried_tokens) {
        int n_chunk = next_chunk(session, batch, mode, cursor, n);
        n += n_chunk;
        if (n_chunk < chunk) break; /* the batch ran out */
    }
    return n;
}

static int pass_chunks(const layer_pass *pass) {
    const int chunk = pass->session->chunk_tokens;
    return (pass->n_tokens + chunk - 1) / chunk;
}

/* Point the scratch's residual at chunk c of the pass and describe the
 * chunk's tokens (in backend memory). */
static ferry_token_batch enter_chunk(const layer_pass *pass, int c) {
    ferry_session *session = pass->session;
    ferry_scratch *s = &session->scratch;
    const int first = c * session->chunk_tokens;
    const int left = pass->n_tokens - first;
    s->residual = s->residuals + (size_t)first * session->model->config.hidden_size;
    ferry_token_batch tokens = {left < session->chunk_tokens ? left : session->chunk_tokens,
                                s->tokens + first, s->positions + first, s->slots + first};
    return tokens;
}

/* ------------------------------------------------------------- layers */

/* Decode-shaped: fewer than 4 tokens per sequence (a sequence's tokens
 * are consecutive in a chunk).  A prefill chunk reads each cached row
 * once for many queries, so the device reading the mapped cache moves few
 * bytes per query; a decode chunk reads every row for one query. */
static int chunk_is_decode_shaped(const int32_t *slots, int n) {
    int n_sequences = n > 0;
    for (int t = 1; t < n; t++) n_sequences += slots[t] != slots[t - 1];
    return n < 4 * n_sequences;
}

/* Does the host attend for this chunk: a session attending on the host
 * (its KV cache is host memory the device maps, FlexGen's way past the
 * link: the cache never crosses it) and a decode-shaped chunk? */
static int chunk_attends_on_host(const ferry_session *session, const ferry_token_batch *tokens) {
    /* the chunk's tokens in the host copies of the pass's batch arrays */
    const size_t first = (size_t)(tokens->positions - session->scratch.positions);
    return session->attention_on_host &&
           chunk_is_decode_shaped(session->host_slots + first, tokens->n_tokens);
}

/* The chunk's attention into scratch.attention: the backend's op, or where
 * the host attends, q comes down (the download waits for the device's
 * queued work, the K and V rows it just wrote into the mapped cache
 * included), the host's threads attend over the cache in place, and the
 * output goes up. */
static ferry_status chunk_attention(ferry_session *session, int layer,
                                    const ferry_token_batch *tokens,
                                    ferry_attention_shape shape) {
    ferry_backend *backend = session->model->backend;
    ferry_scratch *s = &session->scratch;
    if (!chunk_attends_on_host(session, tokens))
        return backend->ops->attention(backend, s->attention, s->q, &session->kv[layer], tokens,
                                       shape);
    const size_t first = (size_t)(tokens->positions - s->positions);
    const ferry_token_batch host_tokens = {tokens->n_tokens, session->host_tokens + first,
                                           session->host_positions + first,
                                           session->host_slots + first};
    const size_t bytes =
        (size_t)tokens->n_tokens * (size_t)shape.n_heads * (size_t)shape.head_dim * sizeof(float);
    FERRY_TRY(backend->ops->download(backend, session->host_q, s->q, bytes));
    FERRY_TRY(ferry_host_attention(session->host_threads, session->host_attention,
                                   session->host_q, &session->kv[layer],
                                   backend->ops->kv_dtype, &host_tokens, shape));
    return backend->ops->upload(backend, s->attention, session->host_attention, bytes);
}

/* Norm, Q/K/V projections, RoPE and the KV store of one layer over the
 * chunk: q into scratch, rotated k and v into the layer's cache, in as few
 * ops as the backend offers (qkv_rope_store; else matmul_multi and
 * rope_kv_store; else the plain ops). */
static ferry_status qkv_into_cache(ferry_session *session, int layer,
                                   const ferry_token_batch *tokens,
                                   const void *const *layer_tensors, int norm_prepared) {
    const ferry_model *model = session->model;
    const ferry_config *config = &model->config;
    ferry_backend *backend = model->backend;
    const ferry_backend_ops *ops = backend->ops;
    ferry_scratch *s = &session->scratch;
    const int n = tokens->n_tokens, hidden = config->hidden_size;
    const ferry_attention_shape shape = {config->n_heads, config->n_kv_heads, config->head_dim};
    const int q_width = config->n_heads * config->head_dim;
    const int kv_width = config->n_kv_heads * config->head_dim;
#define W(kind) layer_tensors[FERRY_TENSOR_##kind]
    float *const outs[3] = {s->q, s->k, s->v};
    const void *const weights[3] = {W(WQ), W(WK), W(WV)};
    const float *const biases[3] = {W(BQ), W(BK), W(BV)};
    const int rows[3] = {q_width, kv_width, kv_width};
    const ferry_fused_norm norm = {W(ATTN_NORM), config->rms_norm_eps, s->normed, norm_prepared};
    ferry_kv_layer *cache = &session->kv[layer];
    if (ops->qkv_rope_store)
        return ops->qkv_rope_store(backend, s->q, s->k, s->v, s->residual, &norm, weights, biases,
                                   model->dtype, n, hidden, cache, tokens, model->inv_freq, shape);
    if (ops->matmul_multi) {
        FERRY_TRY(ops->matmul_multi(backend, 3, outs, s->residual, &norm, weights, biases, rows,
                                    model->dtype, n, hidden, 0));
    } else {
        FERRY_TRY(ops->rmsnorm(backend, s->normed, s->residual, W(ATTN_NORM), n, hidden,
                               config->rms_norm_eps));
        for (int m = 0; m < 3; m++)
            FERRY_TRY(ops->matmul(backend, outs[m], s->normed, weights[m], model->dtype,
                                  biases[m], n, rows[m], hidden, 0));
    }
#undef W
    if (ops->rope_kv_store)
        return ops->rope_kv_store(backend, s->q, s->k, s->v, cache, tokens, model->inv_freq,
                                  shape);
    FERRY_TRY(ops->rope(backend, s->q, s->k, tokens, model->inv_freq, shape));
    return ops->kv_store(backend, cache, s->k, s->v, tokens, shape);
}

/* How a layer's norms meet the ops around it: the next layer's input
 * norm (NULL: not known, or another op comes between), which the backend's
 * mlp op may prepare, and whether this layer's was so prepared. */
typedef struct layer_links {
    const float *next_attn_norm;
    int attn_norm_prepared;
} layer_links;

/* One decoder layer over the chunk, in place on the residual stream:
 *   x += Wo · attention(rope(Wq·norm(x) + bq), rope(Wk·norm(x) + bk), Wv·norm(x) + bv)
 *   x += Wdown · (silu(Wgate·norm(x)) * (Wup·norm(x))) */
static ferry_status layer_forward(ferry_session *session, int layer,
                                  const ferry_token_batch *tokens,
                                  const void *const *layer_tensors, layer_links links) {
    const ferry_model *model = session->model;
    const ferry_config *config = &model->config;
    ferry_backend *backend = model->backend;
    const ferry_backend_ops *ops = backend->ops;
    ferry_scratch *s = &session->scratch;
    const ferry_dtype dtype = model->dtype;
    const int n = tokens->n_tokens;
    const int hidden = config->hidden_size;
    const int q_width = config->n_heads * config->head_dim;
    const ferry_attention_shape shape = {config->n_heads, config->n_kv_heads, config->head_dim};
    /* The layer's weights by kind: resident, or in a streaming slot. */
#define W(kind) layer_tensors[FERRY_TENSOR_##kind]

    /* attention block; residual: x += attention · Wo^T */
    FERRY_TRY(qkv_into_cache(session, layer, tokens, layer_tensors, links.attn_norm_prepared));
    ferry_fused_norm norm = {W(MLP_NORM), config->rms_norm_eps, s->normed, 0};
    if (ops->attention_out && !chunk_attends_on_host(session, tokens)) {
        /* the mlp op comes next, and may find its norm prepared */
        norm.prepared = ops->mlp != NULL;
        FERRY_TRY(ops->attention_out(backend, s->residual, s->attention, s->q, &session->kv[layer],
                                     tokens, shape, W(WO), dtype, hidden,
                                     norm.prepared ? &norm : NULL));
    } else {
        FERRY_TRY(chunk_attention(session, layer, tokens, shape));
        FERRY_TRY(ops->matmul(backend, s->residual, s->attention, W(WO), dtype, NULL, n, hidden,
                              q_width, 1));
    }

    /* MLP block (SwiGLU) */
    const int inter = config->intermediate_size;
    if (ops->mlp) { /* the whole block as the backend fuses it */
        const void *const weights[3] = {W(W_GATE), W(W_UP), W(W_DOWN)};
        const ferry_fused_norm next = {links.next_attn_norm, config->rms_norm_eps, s->normed, 1};
        return ops->mlp(backend, s->residual, &norm, weights, dtype, n, hidden, inter, s->gate,
                        s->up, links.next_attn_norm ? &next : NULL);
    }
    if (ops->matmul_multi) { /* norm, gate and up in one launch, SiLU * up in its epilogue */
        float *const outs[2] = {s->gate, s->up};
        const void *const weights[2] = {W(W_GATE), W(W_UP)};
        const int rows[2] = {inter, inter};
        FERRY_TRY(ops->matmul_multi(backend, 2, outs, s->residual, &norm, weights, NULL, rows,
                                    dtype, n, hidden, 1));
    } else {
        FERRY_TRY(ops->rmsnorm(backend, s->normed, s->residual, W(MLP_NORM), n, hidden,
                               config->rms_norm_eps));
        FERRY_TRY(ops->matmul(backend, s->gate, s->normed, W(W_GATE), dtype, NULL, n, inter, hidden, 0));
        FERRY_TRY(ops->matmul(backend, s->up, s->normed, W(W_UP), dtype, NULL, n, inter, hidden, 0));
        FERRY_TRY(ops->silu_mul(backend, s->gate, s->gate, s->up, n, inter));
    }
    /* residual: x += mlp · Wdown^T */
    FERRY_TRY(ops->matmul(backend, s->residual, s->gate, W(W_DOWN), dtype, NULL, n, hidden, inter,
                          1));
#undef W
    return FERRY_OK;
}

/* One layer over every chunk of the pass, chunk after chunk: chunk c + 1
 * reads the K and V chunk c just stored in this layer, as it would have
 * had chunk c gone through every layer first. */
static ferry_status pass_layer_forward(const layer_pass *pass, int layer,
                                       const void *const *layer_tensors, layer_links links) {
    const int n_chunks = pass_chunks(pass);
    for (int c = 0; c < n_chunks; c++) {
        ferry_token_batch tokens = enter_chunk(pass, c);
        FERRY_TRY(layer_forward(pass->session, layer, &tokens, layer_tensors, links));
    }
    return FERRY_OK;
}

/* offload_stream_run's callback: the layer sits in a slot (or resident);
 * the next layer's weights may not be anywhere yet. */
static ferry_status streamed_layer_forward(void *user, int layer, const void *const *tensors) {
    const layer_links unlinked = {NULL, 0};
    return pass_layer_forward(user, layer, tensors, unlinked);
}

/* Final norm and lm_head for the next pass of the chunk's tokens that
 * produce logits, starting at token *t: normed[j] = final_norm(x[t_j])
 * (one rmsnorm per run of consecutive tokens), then logits = normed ·
 * lm_head^T for at most FERRY_LOGITS_ROWS_PER_PASS rows.  rows[j] is the
 * caller's row of pass row j; *n_pass is 0 when no token is left. */
static ferry_status compute_logits_pass(ferry_session *session, const int *output_rows, int n,
                                        int *t, int *rows, int *n_pass) {
    const ferry_model *model = session->model;
    const ferry_config *config = &model->config;
    ferry_backend *backend = model->backend;
    const ferry_backend_ops *ops = backend->ops;
    ferry_scratch *s = &session->scratch;
    const int hidden = config->hidden_size, vocab = config->vocab_size;
    const void *final_norm = ferry_model_tensor(model, -1, FERRY_TENSOR_FINAL_NORM);
    const void *lm_head = config->tie_embeddings
                              ? ferry_model_tensor(model, -1, FERRY_TENSOR_EMBED)
                              : ferry_model_tensor(model, -1, FERRY_TENSOR_LM_HEAD);
    *n_pass = 0;
    while (*t < n && *n_pass < FERRY_LOGITS_ROWS_PER_PASS) {
        if (output_rows[*t] < 0) {
            ++*t;
            continue;
        }
        int run = 1;
        while (*t + run < n && *n_pass + run < FERRY_LOGITS_ROWS_PER_PASS &&
               output_rows[*t + run] >= 0)
            run++;
        FERRY_TRY(ops->rmsnorm(backend, s->normed + (size_t)*n_pass * hidden,
                               s->residual + (size_t)*t * hidden, final_norm, run, hidden,
                               config->rms_norm_eps));
        for (int j = 0; j < run; j++) rows[*n_pass + j] = output_rows[*t + j];
        *n_pass += run;
        *t += run;
    }
    if (*n_pass == 0) return FERRY_OK;
    return ops->matmul(backend, s->logits, s->normed, lm_head, model->dtype, NULL, *n_pass, vocab,
                       hidden, 0);
}

/* ----------------------------------------------------- logits out */

/* Where the logits rows of a call go: into the caller's buffer
 * (ferry_forward), or into the token each sequence's rule picks from its
 * row (ferry_forward_next). */
typedef struct logits_sink {
    float *logits;                  /* host [rows, vocab]; NULL: pick tokens */
    const ferry_sample_rule *rules; /* host [n_seqs]: the rules, when picking */
} logits_sink;

/* Length of the run of consecutive caller rows that starts at rows[0]. */
static int consecutive_rows(const int *rows, int n) {
    int run = 1;
    while (run < n && rows[run] == rows[0] + run) run++;
    return run;
}

/* Copy a pass's logits out, one download per run of consecutive rows. */
static ferry_status download_logits(ferry_session *session, const int *rows, int n_pass,
                                    float *logits) {
    ferry_backend *backend = session->model->backend;
    const int vocab = session->model->config.vocab_size;
    for (int j = 0; j < n_pass;) {
        int run = consecutive_rows(rows + j, n_pass - j);
        FERRY_TRY(backend->ops->download(backend, logits + (size_t)rows[j] * vocab,
                                         session->scratch.logits + (size_t)j * vocab,
                                         (size_t)run * vocab * sizeof(float)));
        j += run;
    }
    return FERRY_OK;
}

/* The tokens of a pass's rows: the backend's sample op, one launch per run
 * of consecutive rows, into scratch.sampled with the rules uploaded into
 * scratch.rules; or, on a backend without it, each row downloaded and
 * picked on the host (the same pick, with the same uniform) into
 * host_sampled. */
static ferry_status pick_tokens(ferry_session *session, const int *rows, int n_pass,
                                const ferry_sample_rule *rules) {
    ferry_backend *backend = session->model->backend;
    ferry_scratch *s = &session->scratch;
    const int vocab = session->model->config.vocab_size;
    if (backend->ops->sample) {
        for (int j = 0; j < n_pass;) {
            int run = consecutive_rows(rows + j, n_pass - j);
            FERRY_TRY(backend->ops->sample(backend, s->sampled + rows[j],
                                           s->logits + (size_t)j * vocab, s->rules + rows[j],
                                           run, vocab));
            j += run;
        }
        return FERRY_OK;
    }
    for (int j = 0; j < n_pass; j++) {
        FERRY_TRY(backend->ops->download(backend, session->host_logits,
                                         s->logits + (size_t)j * vocab,
                                         (size_t)vocab * sizeof(float)));
        session->host_sampled[rows[j]] =
            ferry_sampler_pick_rule(&session->host_sampler, session->host_logits, &rules[rows[j]]);
    }
    return FERRY_OK;
}

static ferry_status emit_logits(ferry_session *session, const int *rows, int n_pass,
                                const logits_sink *sink) {
    return sink->logits ? download_logits(session, rows, n_pass, sink->logits)
                        : pick_tokens(session, rows, n_pass, sink->rules);
}

/* Final norm and lm_head for the pass's tokens that produce logits, chunk
 * by chunk, in lm_head passes, each pass's rows handed to the sink. */
static ferry_status write_logits(const layer_pass *pass, const logits_sink *sink) {
    ferry_session *session = pass->session;
    const int n_chunks = pass_chunks(pass);
    for (int c = 0; c < n_chunks; c++) {
        ferry_token_batch tokens = enter_chunk(pass, c);
        const int *output_rows = session->host_output_rows + (size_t)c * session->chunk_tokens;
        int t = 0;
        for (;;) {
            int rows[FERRY_LOGITS_ROWS_PER_PASS];
            int n_pass = 0;
            FERRY_TRY(compute_logits_pass(session, output_rows, tokens.n_tokens, &t, rows,
                                          &n_pass));
            if (n_pass == 0) break;
            FERRY_TRY(emit_logits(session, rows, n_pass, sink));
        }
    }
    return FERRY_OK;
}

/* Embedding and every layer over the pass's chunks, each on its own
 * residual stream. */
static ferry_status layers_forward(layer_pass *pass) {
    ferry_session *session = pass->session;
    const ferry_model *model = session->model;
    ferry_backend *backend = model->backend;
    const int n_chunks = pass_chunks(pass);
    for (int c = 0; c < n_chunks; c++) {
        ferry_token_batch tokens = enter_chunk(pass, c);
        FERRY_TRY(backend->ops->embed(backend, session->scratch.residual,
                                      ferry_model_tensor(model, -1, FERRY_TENSOR_EMBED),
                                      model->dtype, &tokens, model->config.hidden_size));
    }
    if (model->stream) {
        /* offload/ fetches each streamed layer into a slot and calls back
         * once per layer: every chunk of the pass runs in that call. */
        return offload_stream_run(model->stream, streamed_layer_forward, pass,
                                  session->attention_on_host);
    }
    /* One chunk: a layer's last op (mlp) and the next layer's first are
     * adjacent, so the one may prepare the other's norm. */
    const int n_layers = model->config.n_layers;
    const int linked = n_chunks == 1 && backend->ops->mlp;
    for (int layer = 0; layer < n_layers; layer++) {
        const void *const *layer_tensors =
            (const void *const *)&model->tensors[ferry_model_tensor_slot(layer, 0)];
        const layer_links links = {
            linked && layer + 1 < n_layers
                ? (const float *)ferry_model_tensor(model, layer + 1, FERRY_TENSOR_ATTN_NORM)
                : NULL,
            linked && layer > 0};
        ferry_status status = pass_layer_forward(pass, layer, layer_tensors, links);
        if (status != FERRY_OK) return ferry_fail_prefix(status, "layer %d: ", layer);
    }
    return FERRY_OK;
}

/* ---------------------------------------------------- recorded steps */

/* A decode-shaped pass (one chunk: every token makes a logits row, all in
 * one lm_head pass, layers resident) on a backend that records graphs: its
 * device work depends only on n, so it is recorded once per n and then
 * replayed with one launch. */
static int chunk_is_recordable(const ferry_session *session, int n) {
    const ferry_model *model = session->model;
    if (!model->backend->ops->graph_begin || session->graphs_off || model->stream ||
        session->attention_on_host || n > FERRY_LOGITS_ROWS_PER_PASS)
        return 0;
    for (int t = 0; t < n; t++)
        if (session->host_output_rows[t] < 0) return 0;
    return 1;
}

/* Run the chunk's device work from its recording (recording it on its
 * second sight of n: the first, direct run has grown every scratch
 * buffer).  *out_replayed 0: the caller runs the chunk directly. */
static ferry_status replay_chunk(layer_pass *pass, int *rows, int *n_pass,
                                 int *out_replayed) {
    ferry_session *session = pass->session;
    ferry_backend *backend = session->model->backend;
    const ferry_backend_ops *ops = backend->ops;
    const int n = pass->n_tokens;
    void **graph = &session->graphs[n];
    *out_replayed = 0;
    if (*graph) {
        FERRY_TRY(ops->graph_launch(backend, *graph, out_replayed));
        if (!*out_replayed) { /* stale: record it again below */
            ops->graph_free(backend, *graph);
            *graph = NULL;
        }
    } else if (!session->graph_seen[n]) {
        session->graph_seen[n] = 1;
        return FERRY_OK;
    } else {
        int t = 0;
        void *recorded = NULL;
        FERRY_TRY(ops->graph_begin(backend));
        ferry_status status = layers_forward(pass);
        if (status == FERRY_OK)
            status = compute_logits_pass(session, session->host_output_rows, n, &t, rows, n_pass);
        ferry_status end_status = ops->graph_end(backend, &recorded);
        if (status != FERRY_OK || end_status != FERRY_OK) {
            /* Nothing ran: fall back to direct runs for this session (a
             * real error shows up again there). */
            if (recorded) ops->graph_free(backend, recorded);
            session->graphs_off = 1;
            ferry_clear_error();
            return FERRY_OK;
        }
        *graph = recorded;
        FERRY_TRY(ops->graph_launch(backend, *graph, out_replayed));
    }
    if (*out_replayed) {
        for (int j = 0; j < n; j++) rows[j] = session->host_output_rows[j];
        *n_pass = n;
    }
    return FERRY_OK;
}

/* Embedding, every layer, and the logits of one pass of n tokens, handed
 * to the sink.  Logits downloaded have been waited for; picked tokens may
 * still be on their way (ferry_forward_next's download waits). */
static ferry_status pass_forward(ferry_session *session, int n, const logits_sink *sink) {
    const ferry_model *model = session->model;
    ferry_backend *backend = model->backend;
    const ferry_backend_ops *ops = backend->ops;
    ferry_scratch *s = &session->scratch;
    size_t index_bytes = (size_t)n * sizeof(int32_t);
    FERRY_TRY(ops->upload(backend, s->tokens, session->host_tokens, index_bytes));
    FERRY_TRY(ops->upload(backend, s->positions, session->host_positions, index_bytes));
    FERRY_TRY(ops->upload(backend, s->slots, session->host_slots, index_bytes));
    layer_pass pass = {session, n};

    int replayed = 0;
    if (chunk_is_recordable(session, n)) {
        int rows[FERRY_LOGITS_ROWS_PER_PASS], n_pass = 0;
        FERRY_TRY(replay_chunk(&pass, rows, &n_pass, &replayed));
        if (replayed) FERRY_TRY(emit_logits(session, rows, n_pass, sink));
    }
    if (!replayed) {
        FERRY_TRY(layers_forward(&pass));
        FERRY_TRY(write_logits(&pass, sink));
    }
    return sink->logits ? ops->synchronize(backend) : FERRY_OK;
}

/* Every pass of a checked call. */
static ferry_status run_passes(ferry_session *session, const ferry_batch *batch,
                               ferry_logits_mode mode, const logits_sink *sink, const char *who) {
    batch_cursor cursor = {0, 0, 0};
    for (;;) {
        int n = next_pass(session, batch, mode, &cursor);
        if (n == 0) break;
        ferry_status status = pass_forward(session, n, sink);
        if (status != FERRY_OK) return ferry_fail_prefix(status, "%s: ", who);
    }
    return FERRY_OK;
}

/* Every chunk went through: the new tokens now count as cached. */
static void commit_lengths(ferry_session *session, const ferry_batch *batch) {
    for (int i = 0; i < batch->n_seqs; i++)
        session->lengths[batch->seq_ids ? batch->seq_ids[i] : i] += batch->n_tokens[i];
}

ferry_status ferry_forward(ferry_session *session, const ferry_batch *batch,
                           ferry_logits_mode mode, float *logits, size_t logits_capacity) {
    static const char who[] = "ferry_forward";
    int64_t n_rows = 0;
    FERRY_TRY(check_forward_call(session, batch, mode, who, &n_rows));
    const int vocab = session->model->config.vocab_size;
    if (!logits) return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: logits is NULL", who);
    if ((uint64_t)n_rows * (uint64_t)vocab > logits_capacity)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "%s: logits buffer holds %zu floats; %lld rows of %d need %llu", who,
                          logits_capacity, (long long)n_rows, vocab,
                          (unsigned long long)((uint64_t)n_rows * (uint64_t)vocab));
    const logits_sink sink = {logits, NULL};
    FERRY_TRY(run_passes(session, batch, mode, &sink, who));
    commit_lengths(session, batch);
    return FERRY_OK;
}

ferry_status ferry_forward_next(ferry_session *session, const ferry_batch *batch,
                                const ferry_sample_rule *rules, int32_t *out_tokens) {
    static const char who[] = "ferry_forward_next";
    int64_t n_rows = 0;
    FERRY_TRY(check_forward_call(session, batch, FERRY_LOGITS_LAST, who, &n_rows));
    if (!rules || !out_tokens)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: rules or out_tokens is NULL", who);
    for (int i = 0; i < batch->n_seqs; i++) {
        ferry_status status = ferry_sample_rule_check(&rules[i]);
        if (status != FERRY_OK) return ferry_fail_prefix(status, "%s: sequence %d: ", who, i);
    }
    ferry_backend *backend = session->model->backend;
    ferry_scratch *s = &session->scratch;
    const size_t token_bytes = (size_t)batch->n_seqs * sizeof(int32_t);
    const logits_sink sink = {NULL, rules};
    ferry_status status = FERRY_OK;
    if (backend->ops->sample) {
        status = backend->ops->upload(backend, s->rules, rules,
                                      (size_t)batch->n_seqs * sizeof *rules);
        if (status != FERRY_OK) return ferry_fail_prefix(status, "%s: rules: ", who);
    }
    FERRY_TRY(run_passes(session, batch, FERRY_LOGITS_LAST, &sink, who));
    /* a sample op's picks come down now (the download waits for them) */
    status = backend->ops->sample
                 ? backend->ops->download(backend, session->host_sampled, s->sampled, token_bytes)
                 : backend->ops->synchronize(backend);
    if (status != FERRY_OK) return ferry_fail_prefix(status, "%s: ", who);
    memcpy(out_tokens, session->host_sampled, token_bytes);
    commit_lengths(session, batch);
    return FERRY_OK;
}
