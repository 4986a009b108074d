/*
 * dense.c — the CPU backend's per-token ops: embedding lookup, RMSNorm,
 * matrix multiply (y = x W^T + b) and the SwiGLU gate.  Plain C, float32
 * accumulation, written to be checked against the equations in ops.h.
 * Hot path: nothing here allocates; weight rows are decoded in small
 * chunks into stack buffers.  Work is split over the pool by rows/tokens.
 */
#include <math.h>

#include "kernels/cpu/cpu.h"

/* Columns of a weight row decoded at once, and tokens sharing one decode. */
enum { MATMUL_COL_CHUNK = 512, MATMUL_TOKEN_TILE = 32 };

/* --------------------------------------------------------------- embed */

typedef struct embed_job {
    float *out;
    const void *table;
    ferry_dtype dtype;
    const int32_t *tokens;
    int dim;
} embed_job;

static void embed_rows(void *arg, int begin, int end) {
    const embed_job *job = arg;
    for (int t = begin; t < end; t++)
        /* out[t] = table[token[t]] */
        cpu_decode_weights(job->out + (size_t)t * job->dim, job->table, job->dtype,
                           (size_t)job->tokens[t] * job->dim, (size_t)job->dim);
}

ferry_status cpu_embed(ferry_backend *backend, float *out, const void *table, ferry_dtype dtype,
                       const ferry_token_batch *batch, int dim) {
    embed_job job = {out, table, dtype, batch->tokens, dim};
    for (int t = 0; t < batch->n_tokens; t++)
        if (batch->tokens[t] < 0)
            return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "embed: negative token id %d",
                              batch->tokens[t]);
    cpu_pool_run(cpu_pool_of(backend), batch->n_tokens, 16, embed_rows, &job);
    return FERRY_OK;
}

/* ------------------------------------------------------------- rmsnorm */

typedef struct rmsnorm_job {
    float *out;
    const float *x;
    const float *weight;
    int dim;
    float eps;
} rmsnorm_job;

static void rmsnorm_rows(void *arg, int begin, int end) {
    const rmsnorm_job *job = arg;
    for (int t = begin; t < end; t++) {
        const float *x = job->x + (size_t)t * job->dim;
        float *out = job->out + (size_t)t * job->dim;
        /* mean of squares */
        float sum_squares = cpu_dot(x, x, job->dim);
        float mean_square = sum_squares / (float)job->dim;
        /* 1 / sqrt(mean(x^2) + eps) */
        float inv_rms = 1.0f / sqrtf(mean_square + job->eps);
        /* out = (x * inv_rms) * weight, in HF's order of rounding */
        for (int i = 0; i < job->dim; i++) out[i] = job->weight[i] * (x[i] * inv_rms);
    }
}

ferry_status cpu_rmsnorm(ferry_backend *backend, float *out, const float *x, const float *weight,
                         int n, int dim, float eps) {
    rmsnorm_job job = {out, x, weight, dim, eps};
    cpu_pool_run(cpu_pool_of(backend), n, 8, rmsnorm_rows, &job);
    return FERRY_OK;
}

/* -------------------------------------------------------------- matmul */

typedef struct matmul_job {
    float *out;
    const float *x;
    const void *w;
    ferry_dtype dtype;
    const float *bias;
    int n, rows, cols;
    int accumulate;
} matmul_job;

/* Rows [begin, end) of W for every token: out[t][r] (+)= x[t] . W[r] + b[r].
 * Tokens go in tiles so one decoded chunk of W[r] serves up to
 * MATMUL_TOKEN_TILE dot products. */
static void matmul_rows(void *arg, int begin, int end) {
    const matmul_job *job = arg;
    const int cols = job->cols;
    float decoded[MATMUL_COL_CHUNK];
    float sums[MATMUL_TOKEN_TILE];
    for (int t0 = 0; t0 < job->n; t0 += MATMUL_TOKEN_TILE) {
        int tile = job->n - t0 < MATMUL_TOKEN_TILE ? job->n - t0 : MATMUL_TOKEN_TILE;
        for (int r = begin; r < end; r++) {
            for (int t = 0; t < tile; t++) sums[t] = 0.0f;
            for (int c0 = 0; c0 < cols; c0 += MATMUL_COL_CHUNK) {
                int chunk = cols - c0 < MATMUL_COL_CHUNK ? cols - c0 : MATMUL_COL_CHUNK;
                size_t first = (size_t)r * cols + c0;
                const float *w_chunk;
                if (job->dtype == FERRY_DTYPE_F32) {
                    w_chunk = (const float *)job->w + first;
                } else {
                    cpu_decode_weights(decoded, job->w, job->dtype, first, (size_t)chunk);
                    w_chunk = decoded;
                }
                /* partial dot product of each token's x with this chunk of W[r] */
                for (int t = 0; t < tile; t++)
                    sums[t] += cpu_dot(job->x + (size_t)(t0 + t) * cols + c0, w_chunk, chunk);
            }
            for (int t = 0; t < tile; t++) {
                float y = sums[t] + (job->bias ? job->bias[r] : 0.0f);
                float *dst = job->out + (size_t)(t0 + t) * job->rows + r;
                *dst = job->accumulate ? *dst + y : y;
            }
        }
    }
}

ferry_status cpu_matmul(ferry_backend *backend, float *out, const float *x, const void *w,
                        ferry_dtype dtype, const float *bias, int n, int rows, int cols,
                        int accumulate) {
    matmul_job job = {out, x, w, dtype, bias, n, rows, cols, accumulate};
    /* Split by output rows: each thread streams its own slice of W. */
    cpu_pool_run(cpu_pool_of(backend), rows, 16, matmul_rows, &job);
    return FERRY_OK;
}

/* ------------------------------------------------------------ silu_mul */

typedef struct silu_job {
    float *out;
    const float *gate;
    const float *up;
} silu_job;

static void silu_range(void *arg, int begin, int end) {
    const silu_job *job = arg;
    for (int i = begin; i < end; i++) {
        float g = job->gate[i];
        /* silu(g) = g * sigmoid(g) = g / (1 + e^-g) */
        float silu = g / (1.0f + expf(-g));
        job->out[i] = silu * job->up[i];
    }
}

ferry_status cpu_silu_mul(ferry_backend *backend, float *out, const float *gate, const float *up,
                          int n, int dim) {
    int64_t total = (int64_t)n * dim;
    if (total > INT32_MAX)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "silu_mul: %d x %d elements is too many",
                          n, dim);
    silu_job job = {out, gate, up};
    cpu_pool_run(cpu_pool_of(backend), (int)total, 4096, silu_range, &job);
    return FERRY_OK;
}
