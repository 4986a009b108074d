/*
 * blocks.c — the CUDA backend's whole-block ops, attention_out and mlp
 * (contracts in kernels/ops.h).  At 3..16 tokens on the tensor cores
 * (handoff, with silu16), the kernel that makes a block's intermediate
 * writes it already rounded to the weight dtype into the hand-off
 * scratch, and the projection after it reads it from there: the decode
 * attention kernel for the O projection, the gate/up launch's SiLU
 * epilogue for the down projection.  That saves the convert kernel the
 * plain matmul op runs in front of each (two a layer).  The O and down
 * projections, which add into the residual stream, also prepare the
 * RMSNorm the next op applies when told it (normnext): x * weight rounded
 * and each token's 1 / rms, so the gate/up and Q/K/V launches need no
 * norm kernel in front (two more a layer).  Elsewhere, and with the
 * fusions off, each op issues the ops it stands for.
 */
#include "kernels/cuda/cuda_backend.h"

/* Do the hand-off launches take n tokens through matrices of `cols`
 * columns (every w the same dtype, 16-byte aligned)? */
static int handoff_fits(const cuda_backend *state, const void *const *weights, int n_weights,
                        const int *cols, ferry_dtype dtype, int n) {
    if (!(state->fuse & CUDA_FUSE_HANDOFF) || !(state->fuse & CUDA_FUSE_SILU16) ||
        cuda_tc_matvec_enabled(state))
        return 0;
    for (int m = 0; m < n_weights; m++)
        if (!cuda_mma_matvec_fits(state, weights[m], dtype, n, cols[m])) return 0;
    return 1;
}

ferry_status cuda_norm_operand(ferry_backend *backend, const float *x,
                               const ferry_fused_norm *norm, int n, int cols, ferry_dtype dtype,
                               const void **x16, const float **inv_rms) {
    cuda_backend *state = cuda_state(backend);
    const int prepared = norm && norm->prepared && state->prepared.x == x &&
                         state->prepared.weight == norm->weight && state->prepared.n == n &&
                         state->prepared.cols == cols && state->prepared.dtype == dtype;
    state->prepared.x = NULL;
    *inv_rms = NULL;
    if (prepared) {
        *x16 = state->activations;
        *inv_rms = state->norm_inv_rms;
        return FERRY_OK;
    }
    FERRY_TRY(cuda_unfold_norm(backend, n, cols, &x, &norm));
    if (!norm) return cuda_x16_prepare(state, x, NULL, 0.0f, dtype, n, cols, x16);
    FERRY_TRY(cuda_mma_norm_prepare(state, x, norm->weight, norm->eps, dtype, n, cols, x16));
    *inv_rms = state->norm_inv_rms;
    return FERRY_OK;
}

/* x[t] += x16[t] W^T on the tensor cores ([hidden, cols] W), and with
 * next_norm (and normnext) that norm prepared for the next op, x * weight
 * rounded into the activations scratch (x16 must not be that scratch), and
 * recorded.  The caller has forgotten the record before. */
static ferry_status residual_projection(cuda_backend *state, float *x, const void *x16,
                                        const void *w, ferry_dtype dtype, int n, int hidden,
                                        int cols, const ferry_fused_norm *next_norm) {
    if (!next_norm || !(state->fuse & CUDA_FUSE_NORM_NEXT) || x16 == state->activations)
        return cuda_mma_matvec(state, x, x16, w, dtype, NULL, n, hidden, cols, 1);
    FERRY_TRY(cuda_scratch_reserve(state, &state->activations, &state->activations_bytes,
                                   (size_t)n * hidden * 2));
    FERRY_TRY(cuda_mma_matvec_norm_next(state, x, x16, w, dtype, n, hidden, cols,
                                        next_norm->weight, next_norm->eps, state->activations));
    state->prepared.x = x;
    state->prepared.weight = next_norm->weight;
    state->prepared.n = n;
    state->prepared.cols = hidden;
    state->prepared.dtype = dtype;
    return FERRY_OK;
}

ferry_status cuda_attention_out(ferry_backend *backend, float *x, float *scratch, const float *q,
                                const ferry_kv_layer *cache, const ferry_token_batch *batch,
                                ferry_attention_shape shape, const void *wo, ferry_dtype dtype,
                                int hidden, const ferry_fused_norm *next_norm) {
    cuda_backend *state = cuda_state(backend);
    const int n = batch->n_tokens, q_width = shape.n_heads * shape.head_dim;
    state->prepared.x = NULL;
    if (n <= 0) return FERRY_OK;
    if (!handoff_fits(state, &wo, 1, &q_width, dtype, n)) {
        FERRY_TRY(cuda_attention(backend, scratch, q, cache, batch, shape));
        return cuda_matmul(backend, x, scratch, wo, dtype, NULL, n, hidden, q_width, 1);
    }
    FERRY_TRY(cuda_scratch_reserve(state, &state->handoff, &state->handoff_bytes,
                                   (size_t)n * q_width * 2));
    int rounded = 0;
    FERRY_TRY(cuda_attention_rounded(backend, scratch, state->handoff, dtype, q, cache, batch,
                                     shape, &rounded));
    const void *x16 = state->handoff;
    if (!rounded) /* a kernel that writes float only (the prefill ones) */
        FERRY_TRY(cuda_x16_prepare(state, scratch, NULL, 0.0f, dtype, n, q_width, &x16));
    return residual_projection(state, x, x16, wo, dtype, n, hidden, q_width, next_norm);
}

ferry_status cuda_mlp(ferry_backend *backend, float *x, const ferry_fused_norm *norm,
                      const void *const *weights, ferry_dtype dtype, int n, int hidden, int inter,
                      float *gate, float *up, const ferry_fused_norm *next_norm) {
    cuda_backend *state = cuda_state(backend);
    const int cols[3] = {hidden, hidden, inter};
    if (n <= 0 || !handoff_fits(state, weights, 3, cols, dtype, n)) {
        state->prepared.x = NULL; /* (the hand-off path forgets it in cuda_norm_operand) */
        if (n <= 0) return FERRY_OK;
        float *const outs[2] = {gate, up};
        const int rows[2] = {inter, inter};
        FERRY_TRY(cuda_matmul_multi(backend, 2, outs, x, norm, weights, NULL, rows, dtype, n,
                                    hidden, 1));
        return cuda_matmul(backend, x, gate, weights[2], dtype, NULL, n, hidden, inter, 1);
    }
    const void *x16 = NULL;
    const float *inv_rms = NULL;
    FERRY_TRY(cuda_norm_operand(backend, x, norm, n, hidden, dtype, &x16, &inv_rms));
    FERRY_TRY(cuda_scratch_reserve(state, &state->handoff, &state->handoff_bytes,
                                   (size_t)n * inter * 2));
    FERRY_TRY(cuda_mma_silu(state, gate, state->handoff, x16, inv_rms, weights[0], weights[1],
                            dtype, n, inter, hidden));
    return residual_projection(state, x, state->handoff, weights[2], dtype, n, hidden, inter,
                               next_norm);
}
