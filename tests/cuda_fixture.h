/*
 * cuda_fixture.h — what the CUDA backend's own tests share: one CUDA
 * backend per test (NULL without a usable GPU), a fresh random stream,
 * and NEED_GPU(), which skips the test and says why.  Header-only:
 * included by test_cuda_graph.c and test_cuda_fused.c.
 */
#ifndef FERRY_TESTS_CUDA_FIXTURE_H
#define FERRY_TESTS_CUDA_FIXTURE_H

#include <criterion/criterion.h>

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

#define NEED_GPU()                                                                           \
    do {                                                                                     \
        if (!gpu) cr_skip_test("no CUDA GPU: this build or machine cannot run the CUDA backend"); \
    } while (0)

#endif /* FERRY_TESTS_CUDA_FIXTURE_H */
