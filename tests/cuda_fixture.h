/*
 * cuda_fixture.h — what the CUDA backend's own tests share: one CUDA
 * backend per test (NULL without a usable GPU), a fresh random stream,
 * uploads and poisoned outputs, and NEED_GPU(), which skips the test and
 * says why.  Header-only: included by the test_cuda_*.c files.
 */
#ifndef FERRY_TESTS_CUDA_FIXTURE_H
#define FERRY_TESTS_CUDA_FIXTURE_H

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "helpers.h"
#include "kernels/ops.h"

static ferry_backend *gpu;
static uint64_t rng;

static void cuda_fixture_setup(void) {
    rng = test_seed();
    gpu = NULL;
    if (ferry_cuda_available())
        cr_assert_eq(ferry_backend_cuda_new(0, &gpu), FERRY_OK, "%s", ferry_last_error());
}

static void cuda_fixture_teardown(void) { ferry_backend_free(gpu); }

/* A device copy of `bytes` host bytes. */
static inline void *cuda_upload(const void *host, size_t bytes) {
    void *device = NULL;
    cr_assert_eq(gpu->ops->alloc(gpu, bytes, &device), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(gpu->ops->upload(gpu, device, host, bytes), FERRY_OK, "%s", ferry_last_error());
    return device;
}

/* A device buffer of n floats, all NaN (an output a kernel must write). */
static inline float *cuda_poisoned(size_t n) {
    float *host = malloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) host[i] = NAN;
    float *device = cuda_upload(host, n * sizeof(float));
    free(host);
    return device;
}

#define NEED_GPU()                                                                           \
    do {                                                                                     \
        if (!gpu) cr_skip_test("no CUDA GPU: this build or machine cannot run the CUDA backend"); \
    } while (0)

#endif /* FERRY_TESTS_CUDA_FIXTURE_H */
