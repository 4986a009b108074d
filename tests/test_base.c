/*
 * test_base.c — dtype conversions against the C compiler's own _Float16
 * and a bit-exact bf16 rounding reference; size parsing; error messages.
 */
#include <criterion/criterion.h>
#include <math.h>

#include "base/base.h"
#include "helpers.h"

Test(base, f16_round_trip_is_exact_for_every_half) {
    for (uint32_t h = 0; h < 0x10000u; h++) {
        float f = ferry_f16_to_f32((uint16_t)h);
        _Float16 reference;
        uint16_t bits = (uint16_t)h;
        memcpy(&reference, &bits, 2);
        if (isnan(f)) {
            cr_assert(isnan((float)reference), "half %04x", h);
            continue;
        }
        cr_assert_eq(f, (float)reference, "half %04x", h);
        cr_assert_eq(ferry_f32_to_f16(f), (uint16_t)h, "half %04x", h);
    }
}

Test(base, f32_to_f16_rounds_like_the_compiler) {
    uint64_t state = test_seed();
    for (int i = 0; i < 2000000; i++) {
        uint32_t bits = (uint32_t)test_rand_u64(&state);
        float f;
        memcpy(&f, &bits, 4);
        if (isnan(f)) continue;
        _Float16 reference = (_Float16)f;
        uint16_t expected;
        memcpy(&expected, &reference, 2);
        cr_assert_eq(ferry_f32_to_f16(f), expected, "f32 bits %08x", bits);
    }
}

Test(base, f32_to_bf16_rounds_to_nearest_even) {
    uint64_t state = test_seed();
    for (int i = 0; i < 1000000; i++) {
        uint32_t bits = (uint32_t)test_rand_u64(&state);
        float f;
        memcpy(&f, &bits, 4);
        if (isnan(f)) continue;
        /* Reference: pick the nearer of the two truncations in double. */
        uint32_t low = bits & 0xffff0000u, high = low + 0x10000u;
        float lo_f, hi_f;
        memcpy(&lo_f, &low, 4);
        memcpy(&hi_f, &high, 4);
        /* Past the largest bf16 the next step up is 2^128 (which rounds to inf). */
        double hi_d = isinf(hi_f) ? copysign(0x1p128, (double)f) : (double)hi_f;
        double d_lo = fabs((double)f - (double)lo_f), d_hi = fabs(hi_d - (double)f);
        uint16_t expected = (uint16_t)(low >> 16);
        if (d_hi < d_lo || (d_hi == d_lo && (expected & 1u))) expected = (uint16_t)(high >> 16);
        cr_assert_eq(ferry_f32_to_bf16(f), expected, "f32 bits %08x", bits);
    }
}

Test(base, sizes_parse_with_binary_suffixes) {
    uint64_t bytes = 0;
    cr_assert_eq(ferry_parse_size("4096", &bytes), FERRY_OK);
    cr_assert_eq(bytes, 4096);
    cr_assert_eq(ferry_parse_size("512M", &bytes), FERRY_OK);
    cr_assert_eq(bytes, 512ull << 20);
    cr_assert_eq(ferry_parse_size("1.5G", &bytes), FERRY_OK);
    cr_assert_eq(bytes, 3ull << 29);
    cr_assert_eq(ferry_parse_size("2GiB", &bytes), FERRY_OK);
    cr_assert_eq(bytes, 2ull << 30);
    cr_assert_eq(ferry_parse_size("lots", &bytes), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_parse_size("-1G", &bytes), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_parse_size("3X", &bytes), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "3X") != NULL);
}

Test(base, failures_carry_their_message_and_prefix) {
    cr_assert_eq(ferry_fail(FERRY_ERR_IO, "read at offset %d failed", 7), FERRY_ERR_IO);
    ferry_fail_prefix(FERRY_ERR_IO, "layer %d: ", 3);
    cr_assert_str_eq(ferry_last_error(), "layer 3: read at offset 7 failed");
    cr_assert_str_eq(ferry_status_str(FERRY_ERR_IO), "I/O error");
    cr_assert_str_eq(ferry_status_str((ferry_status)999), "unknown status");
}
