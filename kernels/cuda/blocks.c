/*
 * blocks.c — the CUDA backend's whole-block ops, attention_out and mlp
 * (contracts in kernels/ops.h).  At 3..16 tokens on the tensor cores
 * (handoff, with silu16), the kernel that makes a block's intermediate
 * writes it already rounded to the weight dtype into the hand-off
 * scratch, and the projection after it reads it from there: the decode
 * attention kernel for the O projection, the gate/up launch's SiLU
 * epilogue for the down projection.  That saves the convert kernel the
 * plain matmul op runs in front of each (two a layer).  Elsewhere, and
 * with the fusion off, each op issues the ops it stands for.
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

ferry_status cuda_attention_out(ferry_backend *backend, float *x, float *scratch, const float *q,
                                const ferry_kv_layer *cache, const ferry_token_batch *batch,
                                ferry_attention_shape shape, const void *wo, ferry_dtype dtype,
                                int hidden) {
    cuda_backend *state = cuda_state(backend);
    const int n = batch->n_tokens, q_width = shape.n_heads * shape.head_dim;
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
    return cuda_mma_matvec(state, x, x16, wo, dtype, NULL, n, hidden, q_width, 1);
}

ferry_status cuda_mlp(ferry_backend *backend, float *x, const ferry_fused_norm *norm,
                      const void *const *weights, ferry_dtype dtype, int n, int hidden, int inter,
                      float *gate, float *up) {
    cuda_backend *state = cuda_state(backend);
    if (n <= 0) return FERRY_OK;
    const int cols[3] = {hidden, hidden, inter};
    if (!handoff_fits(state, weights, 3, cols, dtype, n)) {
        float *const outs[2] = {gate, up};
        const int rows[2] = {inter, inter};
        FERRY_TRY(cuda_matmul_multi(backend, 2, outs, x, norm, weights, NULL, rows, dtype, n,
                                    hidden, 1));
        return cuda_matmul(backend, x, gate, weights[2], dtype, NULL, n, hidden, inter, 1);
    }
    const float *source = x;
    FERRY_TRY(cuda_unfold_norm(backend, n, hidden, &source, &norm));
    const void *x16 = NULL;
    FERRY_TRY(cuda_x16_prepare(state, source, norm ? norm->weight : NULL, norm ? norm->eps : 0.0f,
                               dtype, n, hidden, &x16));
    FERRY_TRY(cuda_scratch_reserve(state, &state->handoff, &state->handoff_bytes,
                                   (size_t)n * inter * 2));
    FERRY_TRY(cuda_mma_silu(state, gate, state->handoff, x16, weights[0], weights[1], dtype, n,
                            inter, hidden));
    return cuda_mma_matvec(state, x, state->handoff, weights[2], dtype, NULL, n, hidden, inter, 1);
}
