/*
 * helpers.h — what the tests share: scratch directories, seeded random
 * data, running the `ferry` program, reading whole files, and a CUDA
 * backend made under a given environment switch.
 */
#ifndef FERRY_TESTS_HELPERS_H
#define FERRY_TESTS_HELPERS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"

/* A fresh directory under $TMPDIR (or /tmp), removed by test_rmtree. */
char *test_tempdir(void);
void test_rmtree(const char *path);
/* path joined with name, malloc'd. */
char *test_path(const char *dir, const char *name);

/* A seed that differs per run unless FERRY_TEST_SEED is set; printed so a
 * failure can be replayed. */
uint64_t test_seed(void);
/* splitmix64 stream. */
uint64_t test_rand_u64(uint64_t *state);
/* Uniform in [lo, hi). */
float test_rand_uniform(uint64_t *state, float lo, float hi);
/* A whole number in [lo, hi], both included. */
int test_rand_int(uint64_t *state, int lo, int hi);
void test_fill_uniform(uint64_t *state, float *data, size_t n, float lo, float hi);

/* Run a shell command line; returns its exit status (-1 if it did not exit
 * normally).  stdout/stderr go to the given files when not NULL. */
int test_run(const char *command_line, const char *stdout_path, const char *stderr_path);

/* Whole file into a malloc'd NUL-terminated buffer; NULL if unreadable. */
char *test_read_file(const char *path, size_t *out_bytes);
int test_write_file(const char *path, const void *data, size_t bytes);

/* Path of the built `ferry` program. */
const char *test_cli(void);

/* Run `ferry ARGUMENTS`, after the shell text `env` when not NULL (such
 * as "NAME=value" or "unset NAME;"), with stdout and stderr sent to files
 * in `dir` and read back into *out and *err (malloc'd, NULL if unreadable;
 * a NULL out or err leaves that one unread).  Returns what test_run does. */
int test_cli_capture(const char *dir, const char *env, const char *arguments, char **out,
                     char **err);

/* ferry_backend_cuda_new(0, out) with the environment variable `name` set
 * to `value` for that call only (the backend reads its switches, such as
 * FERRY_CUDA_FUSE, when it is made). */
ferry_status test_cuda_backend_with(const char *name, const char *value, ferry_backend **out);

#endif
