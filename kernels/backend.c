/*
 * backend.c — choosing a backend from a user's spec ("cpu", "cuda:1",
 * "auto") and releasing it.  When ferry is built without CUDA the CUDA
 * constructor says so instead of failing obscurely.
 */
#include <stdlib.h>

#include "kernels/ops.h"

#ifndef FERRY_HAVE_CUDA
ferry_status ferry_backend_cuda_new(int device, ferry_backend **out) {
    *out = NULL;
    return ferry_fail(FERRY_ERR_UNAVAILABLE,
                      "backend 'cuda' is not available: this ferry was built without CUDA "
                      "(rebuild with nvcc on PATH, or -DFERRY_CUDA=ON)");
}

int ferry_cuda_available(void) { return 0; }
#endif

ferry_status ferry_backend_new(const char *spec, int n_threads, ferry_backend **out) {
    *out = NULL;
    if (!spec || strcmp(spec, "auto") == 0) {
        if (ferry_cuda_available()) return ferry_backend_cuda_new(0, out);
        return ferry_backend_cpu_new(n_threads, out);
    }
    if (strcmp(spec, "cpu") == 0) return ferry_backend_cpu_new(n_threads, out);
    if (strncmp(spec, "cuda", 4) == 0) {
        int device = 0;
        if (spec[4] == ':') {
            char *end = NULL;
            long value = strtol(spec + 5, &end, 10);
            if (end == spec + 5 || *end != '\0' || value < 0 || value > 1024)
                return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                                  "bad backend '%s' (expected cpu, cuda, cuda:N or auto)", spec);
            device = (int)value;
        } else if (spec[4] != '\0') {
            return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                              "bad backend '%s' (expected cpu, cuda, cuda:N or auto)", spec);
        }
        return ferry_backend_cuda_new(device, out);
    }
    return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                      "unknown backend '%s' (expected cpu, cuda, cuda:N or auto)", spec);
}

void ferry_backend_free(ferry_backend *backend) {
    if (backend && backend->ops && backend->ops->destroy) backend->ops->destroy(backend);
}
