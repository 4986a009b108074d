/*
 * helpers.c — scratch directories, seeded randomness, running commands,
 * file I/O and environment-switched CUDA backends for the tests.
 */
#include "helpers.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

char *test_tempdir(void) {
    const char *base = getenv("TMPDIR");
    char pattern[4096];
    snprintf(pattern, sizeof pattern, "%s/ferry-test-XXXXXX", base && *base ? base : "/tmp");
    char *dir = mkdtemp(pattern);
    return dir ? strdup(dir) : NULL;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void test_rmtree(const char *path) {
    if (path) nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

char *test_path(const char *dir, const char *name) {
    size_t bytes = strlen(dir) + strlen(name) + 2;
    char *path = malloc(bytes);
    snprintf(path, bytes, "%s/%s", dir, name);
    return path;
}

uint64_t test_seed(void) {
    const char *fixed = getenv("FERRY_TEST_SEED");
    uint64_t seed;
    if (fixed && *fixed) {
        seed = strtoull(fixed, NULL, 0);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40);
    }
    fprintf(stderr, "[seed] FERRY_TEST_SEED=%llu\n", (unsigned long long)seed);
    return seed;
}

uint64_t test_rand_u64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float test_rand_uniform(uint64_t *state, float lo, float hi) {
    double unit = (double)(test_rand_u64(state) >> 11) * 0x1p-53;
    return (float)(lo + (hi - lo) * unit);
}

int test_rand_int(uint64_t *state, int lo, int hi) {
    return lo + (int)(test_rand_u64(state) % (uint64_t)(hi - lo + 1));
}

void test_fill_uniform(uint64_t *state, float *data, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) data[i] = test_rand_uniform(state, lo, hi);
}

int test_run(const char *command_line, const char *stdout_path, const char *stderr_path) {
    size_t bytes = strlen(command_line) + 8192;
    char *full = malloc(bytes);
    snprintf(full, bytes, "%s >%s 2>%s", command_line, stdout_path ? stdout_path : "/dev/null",
             stderr_path ? stderr_path : "/dev/null");
    int status = system(full);
    free(full);
    if (status == -1 || !WIFEXITED(status)) return -1;
    return WEXITSTATUS(status);
}

char *test_read_file(const char *path, size_t *out_bytes) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc((size_t)size + 1);
    if (data && fread(data, 1, (size_t)size, f) != (size_t)size) {
        free(data);
        data = NULL;
    }
    fclose(f);
    if (data) {
        data[size] = '\0';
        if (out_bytes) *out_bytes = (size_t)size;
    }
    return data;
}

int test_write_file(const char *path, const void *data, size_t bytes) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t written = fwrite(data, 1, bytes, f);
    int rc = fclose(f);
    return (written == bytes && rc == 0) ? 0 : -1;
}

const char *test_cli(void) { return FERRY_CLI; }

int test_cli_capture(const char *dir, const char *env, const char *arguments, char **out,
                     char **err) {
    size_t bytes = (env ? strlen(env) : 0) + strlen(test_cli()) + strlen(arguments) + 8;
    char *command = malloc(bytes);
    snprintf(command, bytes, "%s%s'%s' %s", env ? env : "", env ? " " : "", test_cli(), arguments);
    char *out_path = test_path(dir, "cli.stdout"), *err_path = test_path(dir, "cli.stderr");
    int status = test_run(command, out_path, err_path);
    if (out) *out = test_read_file(out_path, NULL);
    if (err) *err = test_read_file(err_path, NULL);
    free(out_path);
    free(err_path);
    free(command);
    return status;
}

ferry_status test_cuda_backend_with(const char *name, const char *value, ferry_backend **out) {
    setenv(name, value, 1);
    ferry_status status = ferry_backend_cuda_new(0, out);
    unsetenv(name);
    return status;
}
