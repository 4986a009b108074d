/*
 * util.c — dtype conversions, checked allocation, size parsing and the
 * clock.  Shared by every folder; allocates nothing it does not return.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include "base.h"

static const struct {
    const char *name;
    const char *alias;
    size_t bytes;
} dtype_table[FERRY_DTYPE_COUNT] = {
    [FERRY_DTYPE_F32] = {"f32", "float32", 4},
    [FERRY_DTYPE_F16] = {"f16", "float16", 2},
    [FERRY_DTYPE_BF16] = {"bf16", "bfloat16", 2},
};

const char *ferry_dtype_name(ferry_dtype dtype) {
    return (unsigned)dtype < FERRY_DTYPE_COUNT ? dtype_table[dtype].name : "?";
}

size_t ferry_dtype_bytes(ferry_dtype dtype) {
    return (unsigned)dtype < FERRY_DTYPE_COUNT ? dtype_table[dtype].bytes : 0;
}

ferry_status ferry_dtype_parse(const char *name, ferry_dtype *out) {
    for (int i = 0; i < FERRY_DTYPE_COUNT; i++) {
        if (strcmp(name, dtype_table[i].name) == 0 || strcmp(name, dtype_table[i].alias) == 0) {
            *out = (ferry_dtype)i;
            return FERRY_OK;
        }
    }
    return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "unknown dtype '%s' (expected f32, f16 or bf16)",
                      name);
}

/* IEEE half <-> single, exact for every half value, round-to-nearest-even
 * on the way down (subnormals and infinities included). */
float ferry_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else { /* subnormal: value = mantissa * 2^-24 */
            float f = (float)mantissa * 0x1p-24f;
            memcpy(&bits, &f, sizeof bits);
            bits |= sign;
        }
    } else {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t ferry_f32_to_f16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    uint32_t abs_bits = bits & 0x7fffffffu;
    if (abs_bits > 0x7f800000u) return sign | 0x7e00u;           /* NaN */
    if (abs_bits >= 0x477ff000u) return sign | 0x7c00u;          /* overflow -> inf */
    if (abs_bits < 0x38800000u) {                                /* subnormal or zero */
        float abs_f;
        memcpy(&abs_f, &abs_bits, sizeof abs_f);
        /* Scale so the half subnormal unit (2^-24) becomes 1 and round
         * with the FPU's round-to-nearest-even. */
        float scaled = abs_f * 0x1p24f;
        uint32_t m = (uint32_t)__builtin_nearbyintf(scaled);
        return sign | (uint16_t)m;
    }
    uint32_t mantissa = abs_bits & 0x7fffffu;
    uint32_t exponent = (abs_bits >> 23) - 112;
    uint32_t half = (exponent << 10) | (mantissa >> 13);
    uint32_t rest = mantissa & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) half++;
    return sign | (uint16_t)half;
}

void ferry_convert_dtype(void *dst, ferry_dtype dst_dtype, const void *src,
                         ferry_dtype src_dtype, size_t n) {
    if (dst_dtype == src_dtype) {
        memcpy(dst, src, n * ferry_dtype_bytes(dst_dtype));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float value = ferry_load_f32(src, src_dtype, i);
        switch (dst_dtype) {
        case FERRY_DTYPE_F16: ((uint16_t *)dst)[i] = ferry_f32_to_f16(value); break;
        case FERRY_DTYPE_BF16: ((uint16_t *)dst)[i] = ferry_f32_to_bf16(value); break;
        default: ((float *)dst)[i] = value; break;
        }
    }
}

ferry_status ferry_malloc(size_t bytes, const char *what, void **out) {
    *out = malloc(bytes ? bytes : 1);
    if (!*out)
        return ferry_fail(FERRY_ERR_NO_MEMORY, "out of memory allocating %zu bytes for %s", bytes,
                          what);
    return FERRY_OK;
}

ferry_status ferry_calloc(size_t count, size_t size, const char *what, void **out) {
    *out = calloc(count ? count : 1, size ? size : 1);
    if (!*out)
        return ferry_fail(FERRY_ERR_NO_MEMORY, "out of memory allocating %zu x %zu bytes for %s",
                          count, size, what);
    return FERRY_OK;
}

ferry_status ferry_aligned_alloc(size_t alignment, size_t bytes, const char *what, void **out) {
    int rc = posix_memalign(out, alignment, bytes ? bytes : alignment);
    if (rc != 0) {
        *out = NULL;
        return ferry_fail(FERRY_ERR_NO_MEMORY, "out of memory allocating %zu bytes for %s", bytes,
                          what);
    }
    return FERRY_OK;
}

ferry_status ferry_parse_size(const char *text, uint64_t *out_bytes) {
    errno = 0;
    char *end = NULL;
    double value = strtod(text, &end);
    if (end == text || errno != 0 || value < 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "bad size '%s' (examples: 4096, 512M, 1.5G)",
                          text);
    while (isspace((unsigned char)*end)) end++;
    double scale = 1;
    switch (toupper((unsigned char)*end)) {
    case 'K': scale = 0x1p10; end++; break;
    case 'M': scale = 0x1p20; end++; break;
    case 'G': scale = 0x1p30; end++; break;
    case 'T': scale = 0x1p40; end++; break;
    case '\0': break;
    default:
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "bad size '%s' (examples: 4096, 512M, 1.5G)",
                          text);
    }
    if (*end == 'i' || *end == 'I') end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end != '\0' || value * scale > 0x1p63)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "bad size '%s' (examples: 4096, 512M, 1.5G)",
                          text);
    *out_bytes = (uint64_t)(value * scale);
    return FERRY_OK;
}

uint64_t ferry_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
