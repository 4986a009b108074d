/*
 * tokenizer_nfc.c — NFC by quick check (UAX #15): when every character's
 * NFC_Quick_Check is Yes and combining classes never decrease inside a run
 * of marks, NFC leaves the text as it is, which covers precomposed Latin,
 * CJK, Hangul syllables, emoji and most scripts.  Other text is refused.
 */
#include "runtime/tokenizer_nfc.h"

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

ferry_status tk_nfc(const char *s, size_t bytes, tk_text *out) {
    unsigned last_class = 0;
    for (size_t i = 0; i < bytes;) {
        uint32_t codepoint = 0;
        int n = tk_utf8_next((const uint8_t *)s + i, bytes - i, &codepoint);
        if (n <= 0) return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "tokenizer: NFC: invalid UTF-8 at byte %zu", i);
        const tk_nfc_range *range = codepoint < 0x300 ? NULL : find_range(codepoint);
        unsigned combining_class = range ? range->combining_class : 0;
        if ((range && !range->quick_check_yes) || (combining_class && last_class > combining_class))
            return ferry_fail(FERRY_ERR_UNSUPPORTED,
                              "tokenizer: the NFC normalizer would change U+%04X at byte %zu; "
                              "ferry's NFC only passes through text already in NFC (compose "
                              "the text first, e.g. with Python's unicodedata.normalize)",
                              (unsigned)codepoint, i);
        last_class = combining_class;
        i += (size_t)n;
    }
    return tk_text_append(out, s, bytes);
}
