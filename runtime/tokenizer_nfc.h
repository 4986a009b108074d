/*
 * tokenizer_nfc.h — the NFC normalizer, as far as ferry has it: text that
 * the Unicode NFC quick check proves already normalized passes through
 * unchanged; anything else is FERRY_ERR_UNSUPPORTED naming the character
 * (full composition tables are not carried).
 */
#ifndef FERRY_RUNTIME_TOKENIZER_NFC_H
#define FERRY_RUNTIME_TOKENIZER_NFC_H

#include "runtime/tokenizer_internal.h"

typedef struct tk_nfc_range {
    uint32_t first, last;
    uint8_t combining_class;
    uint8_t quick_check_yes;
} tk_nfc_range;

extern const tk_nfc_range tk_nfc_ranges[];
extern const size_t tk_nfc_n_ranges;

/* Append NFC(s) to out, or fail with FERRY_ERR_UNSUPPORTED when s is not
 * provably in NFC already. */
ferry_status tk_nfc(const char *s, size_t bytes, tk_text *out);

#endif
