/*
 * cpu.h — internals shared by the CPU backend's files: a small pool of
 * persistent worker threads that splits a range of work items (matrix rows,
 * attention heads, tokens) between them, and the fast weight-row decoders.
 * Nothing outside kernels/cpu includes this; the runtime sees only ops.h.
 */
#ifndef FERRY_KERNELS_CPU_H
#define FERRY_KERNELS_CPU_H

#include "kernels/ops.h"

typedef struct cpu_pool cpu_pool;

/* Work on items [begin, end) of a job; called once per thread per job. */
typedef void (*cpu_task_fn)(void *job, int begin, int end);

/* n_threads workers in all (the calling thread is one of them); 0 means one
 * per online core. */
ferry_status cpu_pool_new(int n_threads, cpu_pool **out);
void cpu_pool_free(cpu_pool *pool);
int cpu_pool_n_threads(const cpu_pool *pool);

/* Split items [0, n_items) into one contiguous range per thread, run
 * task on each and return when all are done.  Jobs from several threads
 * are serialised (a model, and so its backend, may be shared).  Allocates
 * nothing; small jobs (n_items < min_items_per_thread * 2) run inline. */
void cpu_pool_run(cpu_pool *pool, int n_items, int min_items_per_thread, cpu_task_fn task,
                  void *job);

/* Decode `n` weights starting at element `first` of a row-major array into
 * float (f32 is copied; f16 through a 64K-entry table; bf16 by a shift). */
void cpu_decode_weights(float *dst, const void *src, ferry_dtype dtype, size_t first, size_t n);

/* sum_i a[i] * b[i], float32 accumulation in eight-wide partial sums. */
float cpu_dot(const float *a, const float *b, int n);

/* y[i] += a * x[i] for i < n (the FMA contraction may differ between the
 * portable and AVX2 code, never between calls on one machine). */
void cpu_axpy(float *y, float a, const float *x, int n);

/* Make the f16 table and pick the vector code for this CPU (idempotent,
 * thread-safe; FERRY_CPU_PORTABLE=1 in the environment keeps the portable
 * code). */
void cpu_init_tables(void);

/* The backend's state (ferry_backend.impl). */
typedef struct cpu_backend {
    cpu_pool *pool;
} cpu_backend;

static inline cpu_pool *cpu_pool_of(ferry_backend *backend) {
    return ((cpu_backend *)backend->impl)->pool;
}

/* The ops of kernels/ops.h (contracts there). */
ferry_status cpu_embed(ferry_backend *backend, float *out, const void *table, ferry_dtype dtype,
                       const ferry_token_batch *batch, int dim);
ferry_status cpu_rmsnorm(ferry_backend *backend, float *out, const float *x, const float *weight,
                         int n, int dim, float eps);
ferry_status cpu_matmul(ferry_backend *backend, float *out, const float *x, const void *w,
                        ferry_dtype dtype, const float *bias, int n, int rows, int cols,
                        int accumulate);
ferry_status cpu_silu_mul(ferry_backend *backend, float *out, const float *gate, const float *up,
                          int n, int dim);
ferry_status cpu_rope(ferry_backend *backend, float *q, float *k, const ferry_token_batch *batch,
                      const float *inv_freq, ferry_attention_shape shape);
ferry_status cpu_kv_store(ferry_backend *backend, ferry_kv_layer *cache, const float *k,
                          const float *v, const ferry_token_batch *batch,
                          ferry_attention_shape shape);
ferry_status cpu_attention(ferry_backend *backend, float *out, const float *q,
                           const ferry_kv_layer *cache, const ferry_token_batch *batch,
                           ferry_attention_shape shape);

#endif /* FERRY_KERNELS_CPU_H */
