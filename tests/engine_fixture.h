/*
 * engine_fixture.h — tiny random models built in memory for the engine
 * tests, with their weights kept as float64, and an independent float64
 * forward pass written straight from the Llama equations (including the
 * llama3 RoPE frequency formula).  Header-only: included by the engine
 * and API tests.
 */
#ifndef FERRY_TESTS_ENGINE_FIXTURE_H
#define FERRY_TESTS_ENGINE_FIXTURE_H

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "helpers.h"
#include "runtime/engine.h"

/* A model's weights as float64, indexed like model->tensors. */
typedef struct reference_weights {
    ferry_config config;
    double *tensor[64][FERRY_TENSOR_KIND_COUNT]; /* [layer + 1][kind] */
} reference_weights;

/* Shapes written here from the HF layout, not taken from config.c. */
static inline void fixture_shape(const ferry_config *c, ferry_tensor_kind kind, int *rows, int *cols) {
    int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim, h = c->hidden_size;
    int shapes[FERRY_TENSOR_KIND_COUNT][2] = {
        [FERRY_TENSOR_EMBED] = {c->vocab_size, h}, [FERRY_TENSOR_FINAL_NORM] = {h, 1},
        [FERRY_TENSOR_LM_HEAD] = {c->vocab_size, h}, [FERRY_TENSOR_ATTN_NORM] = {h, 1},
        [FERRY_TENSOR_WQ] = {q, h}, [FERRY_TENSOR_WK] = {kv, h}, [FERRY_TENSOR_WV] = {kv, h},
        [FERRY_TENSOR_BQ] = {q, 1}, [FERRY_TENSOR_BK] = {kv, 1}, [FERRY_TENSOR_BV] = {kv, 1},
        [FERRY_TENSOR_WO] = {h, q}, [FERRY_TENSOR_MLP_NORM] = {h, 1},
        [FERRY_TENSOR_W_GATE] = {c->intermediate_size, h},
        [FERRY_TENSOR_W_UP] = {c->intermediate_size, h},
        [FERRY_TENSOR_W_DOWN] = {h, c->intermediate_size},
    };
    *rows = shapes[kind][0];
    *cols = shapes[kind][1];
}

static inline int fixture_has(const ferry_config *c, ferry_tensor_kind kind) {
    if (kind == FERRY_TENSOR_LM_HEAD) return !c->tie_embeddings;
    if (kind == FERRY_TENSOR_BQ || kind == FERRY_TENSOR_BK || kind == FERRY_TENSOR_BV)
        return c->attention_bias;
    return 1;
}

static inline int fixture_is_global(ferry_tensor_kind kind) {
    return kind == FERRY_TENSOR_EMBED || kind == FERRY_TENSOR_FINAL_NORM ||
           kind == FERRY_TENSOR_LM_HEAD;
}

static inline int fixture_is_vector(ferry_tensor_kind kind) {
    return kind == FERRY_TENSOR_FINAL_NORM || kind == FERRY_TENSOR_ATTN_NORM ||
           kind == FERRY_TENSOR_MLP_NORM || kind == FERRY_TENSOR_BQ || kind == FERRY_TENSOR_BK ||
           kind == FERRY_TENSOR_BV;
}

/* A small Llama-3 style config: GQA 4/2, head_dim 16 != hidden/heads. */
static inline ferry_config fixture_llama3_config(void) {
    ferry_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.architecture, sizeof c.architecture, "llama");
    c.vocab_size = 97;
    c.hidden_size = 40;
    c.intermediate_size = 72;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 16;
    c.max_position = 512;
    c.rms_norm_eps = 1e-5f;
    c.rope_type = FERRY_ROPE_LLAMA3;
    c.rope_theta = 10000.0;
    c.rope_factor = 8.0;
    c.rope_low_freq_factor = 1.0;
    c.rope_high_freq_factor = 4.0;
    c.rope_original_max_position = 64;
    c.bos_token_id = 1;
    c.n_eos_token_ids = 2;
    c.eos_token_ids[0] = 2;
    c.eos_token_ids[1] = 5;
    return c;
}

/* Qwen2 style: q/k/v bias, tied embeddings, MQA. */
static inline ferry_config fixture_qwen2_config(void) {
    ferry_config c = fixture_llama3_config();
    snprintf(c.architecture, sizeof c.architecture, "qwen2");
    c.n_heads = 4;
    c.n_kv_heads = 1;
    c.head_dim = 8;
    c.hidden_size = 32;
    c.attention_bias = 1;
    c.tie_embeddings = 1;
    c.rope_type = FERRY_ROPE_DEFAULT;
    c.rope_theta = 1000000.0;
    c.rms_norm_eps = 1e-6f;
    return c;
}

/* Plain multi-head attention with linear RoPE scaling and 3 layers. */
static inline ferry_config fixture_mha_config(void) {
    ferry_config c = fixture_llama3_config();
    c.n_layers = 3;
    c.n_heads = 2;
    c.n_kv_heads = 2;
    c.head_dim = 20;
    c.rope_type = FERRY_ROPE_LINEAR;
    c.rope_factor = 2.0;
    return c;
}

/* Random weights (scaled so activations stay of order one) into a new CPU
 * model and into ref as float64 of the values actually stored. */
static inline ferry_model *fixture_model(const ferry_config *config, ferry_dtype dtype, uint64_t seed,
                                  int n_threads, reference_weights *ref) {
    ferry_backend *backend = NULL;
    cr_assert_eq(ferry_backend_cpu_new(n_threads, &backend), FERRY_OK, "%s", ferry_last_error());
    ferry_model *model = NULL;
    ferry_status status = ferry_model_create(config, dtype, backend, &model);
    cr_assert_eq(status, FERRY_OK, "model_create: %s", ferry_last_error());
    memset(ref, 0, sizeof *ref);
    ref->config = *config;
    uint64_t rng = seed;
    for (int layer = -1; layer < config->n_layers; layer++)
        for (int k = 0; k < FERRY_TENSOR_KIND_COUNT; k++) {
            ferry_tensor_kind kind = (ferry_tensor_kind)k;
            if (fixture_is_global(kind) != (layer < 0) || !fixture_has(config, kind)) continue;
            int rows, cols;
            fixture_shape(config, kind, &rows, &cols);
            size_t n = (size_t)rows * cols;
            float *values = malloc(n * sizeof *values);
            int is_norm = kind == FERRY_TENSOR_FINAL_NORM || kind == FERRY_TENSOR_ATTN_NORM ||
                          kind == FERRY_TENSOR_MLP_NORM;
            float scale = kind == FERRY_TENSOR_EMBED ? 1.0f : 1.7f / sqrtf((float)cols);
            if (is_norm) test_fill_uniform(&rng, values, n, 0.6f, 1.4f);
            else if (fixture_is_vector(kind)) test_fill_uniform(&rng, values, n, -0.3f, 0.3f);
            else test_fill_uniform(&rng, values, n, -scale, scale);
            ferry_dtype stored_dtype = fixture_is_vector(kind) ? FERRY_DTYPE_F32 : dtype;
            size_t bytes = n * ferry_dtype_bytes(stored_dtype);
            void *stored = malloc(bytes);
            ferry_convert_dtype(stored, stored_dtype, values, FERRY_DTYPE_F32, n);
            double *exact = malloc(n * sizeof *exact);
            for (size_t i = 0; i < n; i++) exact[i] = ferry_load_f32(stored, stored_dtype, i);
            ref->tensor[layer + 1][kind] = exact;
            status = ferry_model_load_tensor(model, layer, kind, stored, bytes);
            cr_assert_eq(status, FERRY_OK, "load layer %d kind %d: %s", layer, k,
                         ferry_last_error());
            free(values);
            free(stored);
        }
    cr_assert_eq(ferry_model_check_complete(model), FERRY_OK, "%s", ferry_last_error());
    return model;
}

static inline void fixture_free_reference(reference_weights *ref) {
    for (int i = 0; i < 64; i++)
        for (int k = 0; k < FERRY_TENSOR_KIND_COUNT; k++) free(ref->tensor[i][k]);
}

/* RoPE inverse frequencies, from the HF formulas. */
static inline void reference_inv_freq(const ferry_config *c, double *inv_freq) {
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        double base = 1.0 / pow(c->rope_theta, (2.0 * i) / c->head_dim);
        if (c->rope_type == FERRY_ROPE_LINEAR) {
            base /= c->rope_factor;
        } else if (c->rope_type == FERRY_ROPE_LLAMA3) {
            double low_wavelen = c->rope_original_max_position / c->rope_low_freq_factor;
            double high_wavelen = c->rope_original_max_position / c->rope_high_freq_factor;
            double wavelen = 2 * M_PI / base;
            if (wavelen > low_wavelen) {
                base = base / c->rope_factor;            /* long waves: scaled down */
            } else if (wavelen >= high_wavelen) {        /* between: blend */
                double smooth = (c->rope_original_max_position / wavelen - c->rope_low_freq_factor) /
                                (c->rope_high_freq_factor - c->rope_low_freq_factor);
                base = (1 - smooth) * base / c->rope_factor + smooth * base;
            }                                            /* short waves: unchanged */
        }
        inv_freq[i] = base;
    }
}

static inline void reference_rmsnorm(double *out, const double *x, const double *w, int dim, double eps) {
    double sum = 0;
    for (int i = 0; i < dim; i++) sum += x[i] * x[i];
    double inv = 1.0 / sqrt(sum / dim + eps);
    for (int i = 0; i < dim; i++) out[i] = x[i] * inv * w[i];
}

/* y[r] = sum_c W[r][c] x[c] (+ b[r]) */
static inline void reference_linear(double *y, const double *w, const double *b, const double *x, int rows,
                             int cols) {
    for (int r = 0; r < rows; r++) {
        double sum = b ? b[r] : 0;
        for (int c = 0; c < cols; c++) sum += w[(size_t)r * cols + c] * x[c];
        y[r] = sum;
    }
}

static inline void reference_rope(double *head, int head_dim, int position, const double *inv_freq) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        double angle = position * inv_freq[i], x0 = head[i], x1 = head[i + half];
        head[i] = x0 * cos(angle) - x1 * sin(angle);
        head[i + half] = x1 * cos(angle) + x0 * sin(angle);
    }
}

/* Logits [n][vocab] for one sequence of n tokens from position 0. */
static inline double *reference_forward(const reference_weights *ref, const int32_t *tokens, int n) {
    const ferry_config *c = &ref->config;
    int H = c->hidden_size, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    int I = c->intermediate_size, V = c->vocab_size;
    double *x = calloc((size_t)n * H, sizeof *x), *h = malloc(sizeof(double) * H);
    double *q = malloc(sizeof(double) * (size_t)n * nh * hd);
    double *k = malloc(sizeof(double) * (size_t)n * nkv * hd);
    double *v = malloc(sizeof(double) * (size_t)n * nkv * hd);
    double *att = malloc(sizeof(double) * nh * hd), *o = malloc(sizeof(double) * H);
    double *g = malloc(sizeof(double) * I), *u = malloc(sizeof(double) * I);
    double *scores = malloc(sizeof(double) * n), *inv_freq = malloc(sizeof(double) * hd);
    double *logits = malloc(sizeof(double) * (size_t)n * V);
    reference_inv_freq(c, inv_freq);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < H; i++) x[(size_t)t * H + i] = ref->tensor[0][FERRY_TENSOR_EMBED][(size_t)tokens[t] * H + i];
    for (int layer = 0; layer < c->n_layers; layer++) {
        double *const *w = ref->tensor[layer + 1];
        for (int t = 0; t < n; t++) {
            reference_rmsnorm(h, x + (size_t)t * H, w[FERRY_TENSOR_ATTN_NORM], H, c->rms_norm_eps);
            reference_linear(q + (size_t)t * nh * hd, w[FERRY_TENSOR_WQ], w[FERRY_TENSOR_BQ], h, nh * hd, H);
            reference_linear(k + (size_t)t * nkv * hd, w[FERRY_TENSOR_WK], w[FERRY_TENSOR_BK], h, nkv * hd, H);
            reference_linear(v + (size_t)t * nkv * hd, w[FERRY_TENSOR_WV], w[FERRY_TENSOR_BV], h, nkv * hd, H);
            for (int head = 0; head < nh; head++) reference_rope(q + ((size_t)t * nh + head) * hd, hd, t, inv_freq);
            for (int head = 0; head < nkv; head++) reference_rope(k + ((size_t)t * nkv + head) * hd, hd, t, inv_freq);
        }
        for (int t = 0; t < n; t++) {
            /* causal attention: softmax over positions 0..t of q.k / sqrt(hd) */
            for (int head = 0; head < nh; head++) {
                int kvh = head / (nh / nkv);
                const double *qh = q + ((size_t)t * nh + head) * hd;
                double max_score = -INFINITY, total = 0;
                for (int p = 0; p <= t; p++) {
                    double dot = 0;
                    for (int i = 0; i < hd; i++) dot += qh[i] * k[((size_t)p * nkv + kvh) * hd + i];
                    scores[p] = dot / sqrt((double)hd);
                    if (scores[p] > max_score) max_score = scores[p];
                }
                for (int p = 0; p <= t; p++) total += (scores[p] = exp(scores[p] - max_score));
                for (int i = 0; i < hd; i++) {
                    double sum = 0;
                    for (int p = 0; p <= t; p++) sum += scores[p] / total * v[((size_t)p * nkv + kvh) * hd + i];
                    att[head * hd + i] = sum;
                }
            }
            reference_linear(o, w[FERRY_TENSOR_WO], NULL, att, H, nh * hd);
            for (int i = 0; i < H; i++) x[(size_t)t * H + i] += o[i];
            /* SwiGLU MLP */
            reference_rmsnorm(h, x + (size_t)t * H, w[FERRY_TENSOR_MLP_NORM], H, c->rms_norm_eps);
            reference_linear(g, w[FERRY_TENSOR_W_GATE], NULL, h, I, H);
            reference_linear(u, w[FERRY_TENSOR_W_UP], NULL, h, I, H);
            for (int i = 0; i < I; i++) g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            reference_linear(o, w[FERRY_TENSOR_W_DOWN], NULL, g, H, I);
            for (int i = 0; i < H; i++) x[(size_t)t * H + i] += o[i];
        }
    }
    const double *lm_head = ref->tensor[0][c->tie_embeddings ? FERRY_TENSOR_EMBED : FERRY_TENSOR_LM_HEAD];
    for (int t = 0; t < n; t++) {
        reference_rmsnorm(h, x + (size_t)t * H, ref->tensor[0][FERRY_TENSOR_FINAL_NORM], H, c->rms_norm_eps);
        reference_linear(logits + (size_t)t * V, lm_head, NULL, h, V, H);
    }
    free(x), free(h), free(q), free(k), free(v), free(att), free(o), free(g), free(u);
    free(scores), free(inv_freq);
    return logits;
}

/* ||got - want|| / ||want|| of one row. */
static inline double relative_error(const float *got, const double *want, int n) {
    double diff = 0, norm = 0;
    for (int i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        if (isnan(got[i])) return INFINITY;
        diff += d * d;
        norm += want[i] * want[i];
    }
    return sqrt(diff / (norm > 0 ? norm : 1));
}

static inline int32_t *fixture_tokens(uint64_t *rng, int n, int vocab) {
    int32_t *tokens = malloc(sizeof *tokens * (size_t)n);
    for (int i = 0; i < n; i++) tokens[i] = (int32_t)(test_rand_u64(rng) % (uint64_t)vocab);
    return tokens;
}

static inline float *poisoned_floats(size_t n) {
    float *data = malloc(n * sizeof *data);
    for (size_t i = 0; i < n; i++) data[i] = NAN;
    return data;
}

#endif /* FERRY_TESTS_ENGINE_FIXTURE_H */
