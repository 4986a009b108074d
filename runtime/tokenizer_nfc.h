/*
 * tokenizer_nfc.h — Unicode NFC (UAX #15) for the NFC normalizer: the
 * quick check passes most text through untouched; the rest is decomposed,
 * canonically ordered and recomposed with the tables made by
 * tests/fixtures/tokenizers/make_nfc_table.py (Hangul algorithmically).
 */
#ifndef FERRY_RUNTIME_TOKENIZER_NFC_H
#define FERRY_RUNTIME_TOKENIZER_NFC_H

#include "runtime/tokenizer_internal.h"

typedef struct tk_nfc_range {
    uint32_t first, last;
    uint8_t combining_class;
    uint8_t quick_check_yes;
} tk_nfc_range;

/* Decomposition cp -> a, b (b = 0: a singleton), or composition a, b -> cp. */
typedef struct tk_nfc_pair {
    uint32_t key, a, b;
} tk_nfc_pair;

extern const tk_nfc_range tk_nfc_ranges[];
extern const size_t tk_nfc_n_ranges;
extern const tk_nfc_pair tk_nfc_decompositions[];   /* {cp, a, b} sorted by cp */
extern const size_t tk_nfc_n_decompositions;
extern const tk_nfc_pair tk_nfc_compositions[];     /* {a, b, cp} sorted by (a, b) */
extern const size_t tk_nfc_n_compositions;

/* Append NFC(s) to out (s valid UTF-8). */
ferry_status tk_nfc(const char *s, size_t bytes, tk_text *out);

#endif
