/*
 * tokenizer_nfc.c — NFC (UAX #15).  The quick check first: when every
 * character's NFC_Quick_Check is Yes and combining classes never decrease
 * inside a run of marks, the text is already NFC and is copied (most text).
 * Otherwise: full canonical decomposition, canonical ordering of marks,
 * then canonical composition with the blocking rule.
 */
#include <stdlib.h>

#include "runtime/tokenizer_nfc.h"

enum {
    HANGUL_S = 0xAC00, HANGUL_L = 0x1100, HANGUL_V = 0x1161, HANGUL_T = 0x11A7,
    HANGUL_L_COUNT = 19, HANGUL_V_COUNT = 21, HANGUL_T_COUNT = 28,
    HANGUL_N_COUNT = HANGUL_V_COUNT * HANGUL_T_COUNT,
    HANGUL_S_COUNT = HANGUL_L_COUNT * HANGUL_N_COUNT,
};

static const tk_nfc_range *find_range(uint32_t codepoint) {
    size_t low = 0, high = tk_nfc_n_ranges;
    while (low < high) {
        size_t middle = (low + high) / 2;
        if (codepoint < tk_nfc_ranges[middle].first) high = middle;
        else if (codepoint > tk_nfc_ranges[middle].last) low = middle + 1;
        else return &tk_nfc_ranges[middle];
    }
    return NULL;
}

static unsigned combining_class(uint32_t codepoint) {
    const tk_nfc_range *range = codepoint < 0x300 ? NULL : find_range(codepoint);
    return range ? range->combining_class : 0;
}

static const tk_nfc_pair *find_pair(const tk_nfc_pair *table, size_t n, uint32_t key, uint32_t a,
                                    int by_key) {
    size_t low = 0, high = n;
    while (low < high) {
        size_t middle = (low + high) / 2;
        const tk_nfc_pair *pair = &table[middle];
        int before = by_key ? pair->key < key : (pair->key < key || (pair->key == key && pair->a < a));
        int equal = by_key ? pair->key == key : (pair->key == key && pair->a == a);
        if (equal) return pair;
        if (before) low = middle + 1;
        else high = middle;
    }
    return NULL;
}

typedef struct codepoints {
    uint32_t *items;
    size_t count, capacity;
} codepoints;

static ferry_status push(codepoints *list, uint32_t codepoint) {
    FERRY_TRY(tk_grow((void **)&list->items, &list->capacity, list->count + 1, sizeof(uint32_t),
                      "NFC code points"));
    list->items[list->count++] = codepoint;
    return FERRY_OK;
}

static ferry_status decompose(uint32_t codepoint, codepoints *out) {
    if (codepoint >= HANGUL_S && codepoint < HANGUL_S + HANGUL_S_COUNT) {
        uint32_t index = codepoint - HANGUL_S;
        FERRY_TRY(push(out, HANGUL_L + index / HANGUL_N_COUNT));
        FERRY_TRY(push(out, HANGUL_V + (index % HANGUL_N_COUNT) / HANGUL_T_COUNT));
        if (index % HANGUL_T_COUNT) FERRY_TRY(push(out, HANGUL_T + index % HANGUL_T_COUNT));
        return FERRY_OK;
    }
    const tk_nfc_pair *pair = find_pair(tk_nfc_decompositions, tk_nfc_n_decompositions, codepoint,
                                        0, 1);
    if (!pair) return push(out, codepoint);
    FERRY_TRY(decompose(pair->a, out));
    return pair->b ? decompose(pair->b, out) : FERRY_OK;
}

/* The primary composite of (a, b), or 0. */
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= HANGUL_L && a < HANGUL_L + HANGUL_L_COUNT && b >= HANGUL_V &&
        b < HANGUL_V + HANGUL_V_COUNT)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_V_COUNT + (b - HANGUL_V)) * HANGUL_T_COUNT;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_S_COUNT && (a - HANGUL_S) % HANGUL_T_COUNT == 0 &&
        b > HANGUL_T && b < HANGUL_T + HANGUL_T_COUNT)
        return a + (b - HANGUL_T);
    const tk_nfc_pair *pair = find_pair(tk_nfc_compositions, tk_nfc_n_compositions, a, b, 0);
    return pair ? pair->b : 0;
}

static int quick_check_passes(const char *s, size_t bytes) {
    unsigned last_class = 0;
    for (size_t i = 0; i < bytes;) {
        uint32_t codepoint = 0;
        int n = tk_utf8_next((const uint8_t *)s + i, bytes - i, &codepoint);
        if (n <= 0) return 0;
        const tk_nfc_range *range = codepoint < 0x300 ? NULL : find_range(codepoint);
        unsigned class_now = range ? range->combining_class : 0;
        if ((range && !range->quick_check_yes) || (class_now && last_class > class_now)) return 0;
        last_class = class_now;
        i += (size_t)n;
    }
    return 1;
}

ferry_status tk_nfc(const char *s, size_t bytes, tk_text *out) {
    if (quick_check_passes(s, bytes)) return tk_text_append(out, s, bytes);
    ferry_status status = FERRY_OK;
    codepoints decomposed = {0};
    for (size_t i = 0; i < bytes;) {
        uint32_t codepoint = 0;
        int n = tk_utf8_next((const uint8_t *)s + i, bytes - i, &codepoint);
        if (n <= 0)
            FERRY_TRY_GOTO(ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "tokenizer: NFC: invalid UTF-8 "
                                      "at byte %zu", i));
        FERRY_TRY_GOTO(decompose(codepoint, &decomposed));
        i += (size_t)n;
    }
    uint32_t *cp = decomposed.items;
    size_t n = decomposed.count;
    /* canonical ordering: stable insertion sort of each run of marks by class */
    for (size_t i = 1; i < n; i++) {
        uint32_t moving = cp[i];
        unsigned moving_class = combining_class(moving);
        if (moving_class == 0) continue;
        size_t k = i;
        while (k > 0 && combining_class(cp[k - 1]) > moving_class) {
            cp[k] = cp[k - 1];
            k--;
        }
        cp[k] = moving;
    }
    /* composition: a character joins the last starter unless blocked */
    size_t n_out = 0, starter = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        unsigned class_now = combining_class(cp[i]);
        if (starter != SIZE_MAX) {
            unsigned last_class = n_out - 1 == starter ? 0 : combining_class(cp[n_out - 1]);
            int blocked = n_out - 1 != starter && (last_class == 0 || last_class >= class_now);
            uint32_t composite = blocked ? 0 : compose(cp[starter], cp[i]);
            if (composite) {
                cp[starter] = composite;
                continue;
            }
        }
        if (class_now == 0) starter = n_out;
        cp[n_out++] = cp[i];
    }
    for (size_t i = 0; i < n_out; i++) FERRY_TRY_GOTO(tk_text_append_codepoint(out, cp[i]));
    if (n_out == 0) FERRY_TRY_GOTO(tk_text_append(out, "", 0));
fail:
    free(decomposed.items);
    return status;
}
