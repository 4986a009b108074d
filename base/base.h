/*
 * base.h — what every folder shares: error reporting, dtypes and their
 * conversions, and small checked helpers.  Knows nothing of models,
 * files or devices; everything else in ferry may include it.
 */
#ifndef FERRY_BASE_H
#define FERRY_BASE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ferry.h"

/* ------------------------------------------------------------ errors */

/* Set this thread's error message (printf-style) and return status, so a
 * failure is one line: `return ferry_fail(FERRY_ERR_IO, "%s: ...", path);` */
ferry_status ferry_fail(ferry_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prefix the current message with more context ("layer 3: " + old). */
ferry_status ferry_fail_prefix(ferry_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void ferry_clear_error(void);

/* Propagate a failing status. */
#define FERRY_TRY(expr)                                                                      \
    do {                                                                                     \
        ferry_status ferry_try_status_ = (expr);                                             \
        if (ferry_try_status_ != FERRY_OK) return ferry_try_status_;                         \
    } while (0)

/* Propagate into a function's single `fail:` cleanup path (needs `status`). */
#define FERRY_TRY_GOTO(expr)                                                                 \
    do {                                                                                     \
        status = (expr);                                                                     \
        if (status != FERRY_OK) goto fail;                                                   \
    } while (0)

/* ------------------------------------------------------------ dtypes */

typedef enum ferry_dtype {
    FERRY_DTYPE_F32 = 0,
    FERRY_DTYPE_F16 = 1,
    FERRY_DTYPE_BF16 = 2,
    FERRY_DTYPE_COUNT
} ferry_dtype;

/* "f32" / "f16" / "bf16". */
const char *ferry_dtype_name(ferry_dtype dtype);
/* Parse a name; accepts "f32"/"float32", "f16"/"float16", "bf16"/"bfloat16". */
ferry_status ferry_dtype_parse(const char *name, ferry_dtype *out);
size_t ferry_dtype_bytes(ferry_dtype dtype);

static inline float ferry_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Round to nearest even, as torch does; NaN stays NaN. */
static inline uint16_t ferry_f32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

float ferry_f16_to_f32(uint16_t h);
uint16_t ferry_f32_to_f16(float f);

/* Convert n elements between dtypes (src and dst must not overlap). */
void ferry_convert_dtype(void *dst, ferry_dtype dst_dtype, const void *src,
                         ferry_dtype src_dtype, size_t n);

/* Element i of a weight array as float. */
static inline float ferry_load_f32(const void *data, ferry_dtype dtype, size_t i) {
    switch (dtype) {
    case FERRY_DTYPE_F16: return ferry_f16_to_f32(((const uint16_t *)data)[i]);
    case FERRY_DTYPE_BF16: return ferry_bf16_to_f32(((const uint16_t *)data)[i]);
    default: return ((const float *)data)[i];
    }
}

/* ------------------------------------------------------------ memory */

/* malloc/calloc that set an error message naming what was being allocated. */
ferry_status ferry_malloc(size_t bytes, const char *what, void **out);
ferry_status ferry_calloc(size_t count, size_t size, const char *what, void **out);
/* Aligned allocation (alignment a power of two >= sizeof(void*)); free(). */
ferry_status ferry_aligned_alloc(size_t alignment, size_t bytes, const char *what, void **out);

/* Checked size arithmetic: returns nonzero on overflow. */
static inline int ferry_mul_overflow(uint64_t a, uint64_t b, uint64_t *out) {
    return __builtin_mul_overflow(a, b, out);
}

/* "1.5G", "512M", "4096" (bytes), "2GiB" -> bytes. */
ferry_status ferry_parse_size(const char *text, uint64_t *out_bytes);

/* Read all of [offset, offset + bytes) of fd into dst, retrying short reads
 * and EINTR.  A read error is FERRY_ERR_IO; the file ending first is
 * `at_end` (FERRY_ERR_FORMAT for a file being parsed, FERRY_ERR_IO for a
 * stream).  Messages name path and offset. */
ferry_status ferry_pread_all(int fd, void *dst, uint64_t bytes, uint64_t offset,
                             const char *path, ferry_status at_end);
/* Open a regular file read-only; *out_bytes gets its size.  On failure
 * *out_fd is -1 and the message names the path. */
ferry_status ferry_open_read(const char *path, int *out_fd, uint64_t *out_bytes);
/* Write all of data at offset, retrying short writes and EINTR. */
ferry_status ferry_pwrite_all(int fd, const void *data, uint64_t bytes, uint64_t offset,
                              const char *path);

/* Monotonic clock in nanoseconds. */
uint64_t ferry_now_ns(void);

#endif /* FERRY_BASE_H */
