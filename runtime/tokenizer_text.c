/*
 * tokenizer_text.c — the tokenizer's text plumbing: growable strings and
 * piece lists, UTF-8 decoding (strict and Rust-style lossy), GPT-2's
 * byte <-> character map, and PCRE2 helpers (compile, split spans,
 * replace).  No tokenizer rules live here.
 */
#include <stdlib.h>

#include "runtime/tokenizer_internal.h"

/* ------------------------------------------------------------ tk_text */

int tk_hex_digit(char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

ferry_status tk_grow(void **data, size_t *capacity, size_t needed, size_t item_bytes,
                     const char *what) {
    if (needed <= *capacity) return FERRY_OK;
    size_t capacity_new = *capacity ? *capacity : 16;
    while (capacity_new < needed) capacity_new *= 2;
    void *grown = realloc(*data, capacity_new * item_bytes);
    if (!grown) return ferry_fail(FERRY_ERR_NO_MEMORY, "tokenizer: out of memory growing %s", what);
    *data = grown;
    *capacity = capacity_new;
    return FERRY_OK;
}

ferry_status tk_text_append(tk_text *text, const void *data, size_t bytes) {
    FERRY_TRY(tk_grow((void **)&text->data, &text->capacity, text->bytes + bytes + 1, 1, "text"));
    if (bytes) memcpy(text->data + text->bytes, data, bytes);
    text->bytes += bytes;
    text->data[text->bytes] = '\0';
    return FERRY_OK;
}

ferry_status tk_text_append_codepoint(tk_text *text, uint32_t codepoint) {
    uint8_t out[4];
    size_t n;
    if (codepoint < 0x80) {
        out[0] = (uint8_t)codepoint;
        n = 1;
    } else if (codepoint < 0x800) {
        out[0] = (uint8_t)(0xC0 | (codepoint >> 6));
        out[1] = (uint8_t)(0x80 | (codepoint & 0x3F));
        n = 2;
    } else if (codepoint < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (codepoint >> 12));
        out[1] = (uint8_t)(0x80 | ((codepoint >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (codepoint & 0x3F));
        n = 3;
    } else {
        out[0] = (uint8_t)(0xF0 | (codepoint >> 18));
        out[1] = (uint8_t)(0x80 | ((codepoint >> 12) & 0x3F));
        out[2] = (uint8_t)(0x80 | ((codepoint >> 6) & 0x3F));
        out[3] = (uint8_t)(0x80 | (codepoint & 0x3F));
        n = 4;
    }
    return tk_text_append(text, out, n);
}

void tk_text_free(tk_text *text) {
    free(text->data);
    *text = (tk_text){0};
}

/* ---------------------------------------------------------- tk_pieces */

ferry_status tk_pieces_begin(tk_pieces *pieces, int at_start) {
    FERRY_TRY(tk_grow((void **)&pieces->items, &pieces->capacity, pieces->count + 1,
                   sizeof *pieces->items, "pieces"));
    pieces->items[pieces->count++] = (tk_piece){pieces->text.bytes, 0, at_start};
    return FERRY_OK;
}

void tk_pieces_end(tk_pieces *pieces) {
    tk_piece *last = &pieces->items[pieces->count - 1];
    last->bytes = pieces->text.bytes - last->offset;
}

ferry_status tk_pieces_add(tk_pieces *pieces, const char *data, size_t bytes, int at_start) {
    if (bytes == 0) return FERRY_OK;
    FERRY_TRY(tk_pieces_begin(pieces, at_start));
    FERRY_TRY(tk_text_append(&pieces->text, data, bytes));
    tk_pieces_end(pieces);
    return FERRY_OK;
}

void tk_pieces_clear(tk_pieces *pieces) {
    pieces->count = 0;
    pieces->text.bytes = 0;
}

void tk_pieces_free(tk_pieces *pieces) {
    tk_text_free(&pieces->text);
    free(pieces->items);
    *pieces = (tk_pieces){0};
}

/* ------------------------------------------------------------- UTF-8 */

int tk_utf8_next(const uint8_t *s, size_t bytes, uint32_t *codepoint) {
    uint8_t lead = s[0];
    if (lead < 0x80) {
        *codepoint = lead;
        return 1;
    }
    int width;
    uint8_t low = 0x80, high = 0xBF;    /* allowed range of the second byte */
    if (lead >= 0xC2 && lead <= 0xDF) width = 2;
    else if (lead >= 0xE0 && lead <= 0xEF) {
        width = 3;
        if (lead == 0xE0) low = 0xA0;
        if (lead == 0xED) high = 0x9F;   /* no surrogates */
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        width = 4;
        if (lead == 0xF0) low = 0x90;
        if (lead == 0xF4) high = 0x8F;
    } else
        return -1;
    uint32_t value = lead & (0x7F >> width);
    for (int i = 1; i < width; i++) {
        if ((size_t)i >= bytes) return -i;
        uint8_t byte = s[i];
        uint8_t lo = i == 1 ? low : 0x80, hi = i == 1 ? high : 0xBF;
        if (byte < lo || byte > hi) return -i;
        value = (value << 6) | (byte & 0x3F);
    }
    *codepoint = value;
    return width;
}

size_t tk_utf8_invalid_offset(const char *s, size_t bytes) {
    size_t i = 0;
    uint32_t codepoint;
    while (i < bytes) {
        int n = tk_utf8_next((const uint8_t *)s + i, bytes - i, &codepoint);
        if (n < 0) return i;
        i += (size_t)n;
    }
    return bytes;
}

ferry_status tk_utf8_append_lossy(tk_text *out, const char *s, size_t bytes) {
    size_t i = 0, run_start = 0;
    uint32_t codepoint;
    while (i < bytes) {
        int n = tk_utf8_next((const uint8_t *)s + i, bytes - i, &codepoint);
        if (n > 0) {
            i += (size_t)n;
            continue;
        }
        FERRY_TRY(tk_text_append(out, s + run_start, i - run_start));
        FERRY_TRY(tk_text_append(out, "\xEF\xBF\xBD", 3));
        i += (size_t)-n;
        run_start = i;
    }
    return tk_text_append(out, s + run_start, bytes - run_start);
}

/* ---------------------------------------------------- ByteLevel map */

/* Printable bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) stand for themselves;
 * the other 68 bytes take code points 256, 257, ... in byte order. */
static int byte_is_printable(unsigned byte) {
    return (byte >= 0x21 && byte <= 0x7E) || (byte >= 0xA1 && byte <= 0xAC) ||
           (byte >= 0xAE && byte <= 0xFF);
}

/* The non-printable bytes, in order, are 0x00..0x20 (33), 0x7F..0xA0 (34)
 * and 0xAD: the n-th of them maps to 256 + n. */
uint32_t tk_byte_to_codepoint(uint8_t byte) {
    if (byte_is_printable(byte)) return byte;
    if (byte <= 0x20) return 256u + byte;
    if (byte <= 0xA0) return 256u + 33u + (byte - 0x7Fu);
    return 256u + 67u;
}

int tk_codepoint_to_byte(uint32_t codepoint) {
    if (codepoint < 256) return byte_is_printable(codepoint) ? (int)codepoint : -1;
    uint32_t index = codepoint - 256;
    if (index < 33) return (int)index;
    if (index < 67) return (int)(0x7F + index - 33);
    return index == 67 ? 0xAD : -1;
}

/* ------------------------------------------------------------- regex */

ferry_status tk_regex_compile(const char *pattern, size_t bytes, int is_literal,
                              const char *what, pcre2_code **out) {
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    uint32_t options = PCRE2_UTF | (is_literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)pattern, bytes, options, &error_code,
                                     &error_offset, NULL);
    if (!code) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(error_code, message, sizeof message);
        return ferry_fail(FERRY_ERR_FORMAT, "%s: regex /%.*s/ does not compile at offset %zu: %s",
                          what, (int)bytes, pattern, (size_t)error_offset, (char *)message);
    }
    (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);   /* the interpreter serves if JIT fails */
    *out = code;
    return FERRY_OK;
}

ferry_status tk_spans_push(tk_spans *spans, size_t start, size_t end, int is_match) {
    FERRY_TRY(tk_grow((void **)&spans->items, &spans->capacity, spans->count + 1,
                   sizeof *spans->items, "spans"));
    spans->items[spans->count++] = (tk_span){start, end, is_match};
    return FERRY_OK;
}

ferry_status tk_regex_spans(const pcre2_code *regex, const char *s, size_t bytes, tk_spans *out) {
    ferry_status status = FERRY_OK;
    out->count = 0;
    pcre2_match_data *match = pcre2_match_data_create_from_pattern(regex, NULL);
    if (!match) return ferry_fail(FERRY_ERR_NO_MEMORY, "tokenizer: out of memory for regex match");
    size_t offset = 0, previous_end = 0;
    while (offset < bytes) {
        /* the text was checked once as UTF-8: skip PCRE2's per-call check */
        int rc = pcre2_match(regex, (PCRE2_SPTR)s, bytes, offset, PCRE2_NO_UTF_CHECK, match, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR message[256];
            pcre2_get_error_message(rc, message, sizeof message);
            status = ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "tokenizer: regex match failed: %s",
                                (char *)message);
            goto fail;
        }
        PCRE2_SIZE *vector = pcre2_get_ovector_pointer(match);
        size_t start = vector[0], end = vector[1];
        if (end == start) {   /* empty match: step over one character */
            uint32_t codepoint;
            int n = tk_utf8_next((const uint8_t *)s + start, bytes - start, &codepoint);
            offset = start + (size_t)(n > 0 ? n : 1);
            continue;
        }
        if (start > previous_end) FERRY_TRY_GOTO(tk_spans_push(out, previous_end, start, 0));
        FERRY_TRY_GOTO(tk_spans_push(out, start, end, 1));
        previous_end = offset = end;
    }
    if (previous_end < bytes) FERRY_TRY_GOTO(tk_spans_push(out, previous_end, bytes, 0));
fail:
    pcre2_match_data_free(match);
    return status;
}

ferry_status tk_regex_replace(const pcre2_code *regex, const char *s, size_t bytes,
                              const char *content, size_t content_bytes, tk_text *out) {
    tk_spans spans = {0};
    ferry_status status;
    FERRY_TRY_GOTO(tk_regex_spans(regex, s, bytes, &spans));
    for (size_t i = 0; i < spans.count; i++) {
        const tk_span *span = &spans.items[i];
        if (span->is_match) FERRY_TRY_GOTO(tk_text_append(out, content, content_bytes));
        else FERRY_TRY_GOTO(tk_text_append(out, s + span->start, span->end - span->start));
    }
    if (bytes == 0) FERRY_TRY_GOTO(tk_text_append(out, "", 0));
fail:
    tk_spans_free(&spans);
    return status;
}

void tk_spans_free(tk_spans *spans) {
    free(spans->items);
    *spans = (tk_spans){0};
}
