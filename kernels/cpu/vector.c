/*
 * vector.c — the CPU backend's inner loops: decoding a run of f16 /
 * bf16 / f32 weights to float, the float dot product and y += a x.  A portable
 * version (GCC vector types, a 64K-entry f16 table) runs everywhere; on
 * x86-64 with AVX2, FMA and F16C, versions compiled for those are picked
 * once at start-up.  Hot path: no allocation, no branches per element.
 */
#include <pthread.h>
#include <stdlib.h>

#include "kernels/cpu/cpu.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

typedef float float8 __attribute__((vector_size(32)));

/* An unaligned load of eight floats (a macro: a function returning a
 * 32-byte vector would have a different ABI with and without AVX). */
#define load8(p)                                                                                   \
    ({                                                                                             \
        float8 loaded_;                                                                            \
        memcpy(&loaded_, (p), sizeof loaded_);                                                     \
        loaded_;                                                                                   \
    })

/* ------------------------------------------------------------ portable */

static float f16_table[1 << 16];

static void decode_portable(float *dst, const void *src, ferry_dtype dtype, size_t first,
                            size_t n) {
    switch (dtype) {
    case FERRY_DTYPE_F16: {
        const uint16_t *half = (const uint16_t *)src + first;
        for (size_t i = 0; i < n; i++) dst[i] = f16_table[half[i]];
        break;
    }
    case FERRY_DTYPE_BF16: {
        /* bf16 is the top half of a float32 */
        const uint16_t *brain = (const uint16_t *)src + first;
        for (size_t i = 0; i < n; i++) dst[i] = ferry_bf16_to_f32(brain[i]);
        break;
    }
    default: memcpy(dst, (const float *)src + first, n * sizeof(float)); break;
    }
}

/* sum_i a[i] b[i] in two vectors of eight partial sums, then the tail. */
#define DOT_BODY                                                                                   \
    float8 sum0 = {0}, sum1 = {0};                                                                 \
    int i = 0;                                                                                     \
    for (; i + 16 <= n; i += 16) {                                                                 \
        sum0 += load8(a + i) * load8(b + i);                                                       \
        sum1 += load8(a + i + 8) * load8(b + i + 8);                                               \
    }                                                                                              \
    for (; i + 8 <= n; i += 8) sum0 += load8(a + i) * load8(b + i);                                \
    sum0 += sum1;                                                                                  \
    float total = 0.0f;                                                                            \
    for (int lane = 0; lane < 8; lane++) total += sum0[lane];                                      \
    for (; i < n; i++) total += a[i] * b[i];                                                       \
    return total;

static float dot_portable(const float *a, const float *b, int n) { DOT_BODY }

/* --------------------------------------------------------- x86-64 AVX2 */

/* y[i] += a * x[i]: one multiply-add per element, whatever the vector
 * width, so every version gives the same floats. */
#define AXPY_BODY                                                                                  \
    int i = 0;                                                                                     \
    for (; i + 8 <= n; i += 8) {                                                                   \
        float8 sum = load8(y + i) + a * load8(x + i);                                              \
        memcpy(y + i, &sum, sizeof sum);                                                           \
    }                                                                                              \
    for (; i < n; i++) y[i] += a * x[i];

static void axpy_portable(float *y, float a, const float *x, int n) { AXPY_BODY }

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static float dot_avx2(const float *a, const float *b, int n) {
    DOT_BODY
}

__attribute__((target("avx2,fma"))) static void axpy_avx2(float *y, float a, const float *x,
                                                           int n) {
    AXPY_BODY
}

__attribute__((target("avx2,f16c"))) static void decode_avx2(float *dst, const void *src,
                                                              ferry_dtype dtype, size_t first,
                                                              size_t n) {
    const uint16_t *in = (const uint16_t *)src + first;
    size_t i = 0;
    switch (dtype) {
    case FERRY_DTYPE_F16:
        /* vcvtph2ps: exact for every half value, subnormals included */
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i))));
        for (; i < n; i++) dst[i] = f16_table[in[i]];
        break;
    case FERRY_DTYPE_BF16:
        /* widen to 32 bits and shift into the top half */
        for (; i + 8 <= n; i += 8) {
            __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(in + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
        }
        for (; i < n; i++) dst[i] = ferry_bf16_to_f32(in[i]);
        break;
    default: memcpy(dst, (const float *)src + first, n * sizeof(float)); break;
    }
}
#endif

/* ------------------------------------------------------------ dispatch */

static float (*dot_impl)(const float *, const float *, int) = dot_portable;
static void (*axpy_impl)(float *, float, const float *, int) = axpy_portable;
static void (*decode_impl)(float *, const void *, ferry_dtype, size_t, size_t) = decode_portable;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init_vector_code(void) {
    for (uint32_t h = 0; h < (1u << 16); h++) f16_table[h] = ferry_f16_to_f32((uint16_t)h);
#if defined(__x86_64__)
    const char *portable = getenv("FERRY_CPU_PORTABLE");
    if (portable && strcmp(portable, "1") == 0) return;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
        dot_impl = dot_avx2;
        axpy_impl = axpy_avx2;
        decode_impl = decode_avx2;
    }
#endif
}

void cpu_init_tables(void) { pthread_once(&init_once, init_vector_code); }

void cpu_decode_weights(float *dst, const void *src, ferry_dtype dtype, size_t first, size_t n) {
    decode_impl(dst, src, dtype, first, n);
}

float cpu_dot(const float *a, const float *b, int n) { return dot_impl(a, b, n); }

void cpu_axpy(float *y, float a, const float *x, int n) { axpy_impl(y, a, x, n); }
