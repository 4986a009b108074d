/*
 * tokenizer_steps.c — the string rules of tokenizer.json run the way HF
 * runs them: normalizers (Prepend, Replace, NFC), pre-tokenizers (Split
 * with its five behaviors, ByteLevel, Metaspace) and decoders (ByteLevel,
 * Replace, ByteFallback, Fuse, Strip, Metaspace), including HF's quirks
 * (Strip's stop count, Metaspace dropping every replacement in the first
 * token).  Parsing the rules is tokenizer_load.c's job.
 */
#include <stdlib.h>

#include "runtime/tokenizer_internal.h"
#include "runtime/tokenizer_nfc.h"

/* ------------------------------------------------------- normalizers */

static void swap_text(tk_text *a, tk_text *b) {
    tk_text t = *a;
    *a = *b;
    *b = t;
}

ferry_status tk_normalize(const tk_steps *steps, const char *s, size_t bytes, tk_text *out) {
    ferry_status status = FERRY_OK;
    tk_text work = {0};
    out->bytes = 0;
    FERRY_TRY_GOTO(tk_text_append(out, s, bytes));
    for (int i = 0; i < steps->count; i++) {
        const tk_step *step = &steps->items[i];
        work.bytes = 0;
        switch (step->kind) {
        case TK_NORMALIZE_PREPEND:
            if (out->bytes == 0) continue;
            FERRY_TRY_GOTO(tk_text_append(&work, step->text, step->text_bytes));
            FERRY_TRY_GOTO(tk_text_append(&work, out->data, out->bytes));
            break;
        case TK_NORMALIZE_REPLACE:
            FERRY_TRY_GOTO(tk_regex_replace(step->regex, out->data, out->bytes, step->text,
                                            step->text_bytes, &work));
            break;
        case TK_NORMALIZE_NFC:
            FERRY_TRY_GOTO(tk_nfc(out->data, out->bytes, &work));
            break;
        default:
            continue;
        }
        swap_text(out, &work);
    }
fail:
    tk_text_free(&work);
    return status;
}

/* ---------------------------------------------------- pre-tokenizers */

/* Group spans as HF's SplitDelimiterBehavior does (into out). */
static ferry_status apply_behavior(const tk_spans *spans, tk_split_behavior behavior,
                                   tk_spans *out) {
    out->count = 0;
    int previous_match = -1;
    size_t n = spans->count;
    for (size_t k = 0; k < n; k++) {
        /* MergedWithNext folds from the end, the others from the start */
        size_t i = behavior == TK_SPLIT_MERGED_WITH_NEXT ? n - 1 - k : k;
        const tk_span *span = &spans->items[i];
        int merge = 0;
        if (behavior == TK_SPLIT_REMOVED && span->is_match) continue;
        if (behavior == TK_SPLIT_MERGED_WITH_PREVIOUS || behavior == TK_SPLIT_MERGED_WITH_NEXT)
            merge = span->is_match && previous_match != 1;
        if (behavior == TK_SPLIT_CONTIGUOUS) merge = previous_match == span->is_match;
        previous_match = span->is_match;
        if (merge && out->count > 0) {
            tk_span *last = &out->items[out->count - 1];
            if (behavior == TK_SPLIT_MERGED_WITH_NEXT) last->start = span->start;
            else last->end = span->end;
            continue;
        }
        FERRY_TRY(tk_grow((void **)&out->items, &out->capacity, out->count + 1,
                          sizeof *out->items, "split"));
        out->items[out->count++] = *span;
    }
    if (behavior == TK_SPLIT_MERGED_WITH_NEXT)
        for (size_t i = 0; i < out->count / 2; i++) {
            tk_span t = out->items[i];
            out->items[i] = out->items[out->count - 1 - i];
            out->items[out->count - 1 - i] = t;
        }
    return FERRY_OK;
}

typedef struct split_scratch {
    tk_spans matches, groups;
    tk_text text;
} split_scratch;

/* Split s by regex with a behavior; each group becomes a piece of out
 * (byte-mapped when byte_level). */
static ferry_status split_into(const pcre2_code *regex, tk_split_behavior behavior, int invert,
                               const char *s, size_t bytes, int at_start, int byte_level,
                               split_scratch *scratch, tk_pieces *out) {
    if (regex) {
        FERRY_TRY(tk_regex_spans(regex, s, bytes, &scratch->matches));
        for (size_t i = 0; invert && i < scratch->matches.count; i++)
            scratch->matches.items[i].is_match = !scratch->matches.items[i].is_match;
        FERRY_TRY(apply_behavior(&scratch->matches, behavior, &scratch->groups));
    } else {
        scratch->groups.count = 0;
        tk_span whole = {0, bytes, 0};
        tk_spans one = {&whole, bytes ? 1 : 0, 1};
        FERRY_TRY(apply_behavior(&one, TK_SPLIT_ISOLATED, &scratch->groups));
    }
    for (size_t g = 0; g < scratch->groups.count; g++) {
        const tk_span *group = &scratch->groups.items[g];
        int group_at_start = at_start && group->start == 0;
        if (group->end == group->start) continue;
        if (!byte_level) {
            FERRY_TRY(tk_pieces_add(out, s + group->start, group->end - group->start,
                                    group_at_start));
            continue;
        }
        FERRY_TRY(tk_pieces_begin(out, group_at_start));
        for (size_t i = group->start; i < group->end; i++)
            FERRY_TRY(tk_text_append_codepoint(&out->text, tk_byte_to_codepoint((uint8_t)s[i])));
        tk_pieces_end(out);
    }
    return FERRY_OK;
}

static ferry_status pretokenize_piece(const tk_step *step, const char *s, size_t bytes,
                                      int at_start, split_scratch *scratch, tk_pieces *out) {
    tk_text *text = &scratch->text;
    text->bytes = 0;
    switch (step->kind) {
    case TK_PRETOKENIZE_SPLIT:
        return split_into(step->regex, step->behavior, step->invert, s, bytes, at_start, 0,
                          scratch, out);
    case TK_PRETOKENIZE_BYTELEVEL:
        if (step->add_prefix_space && s[0] != ' ') FERRY_TRY(tk_text_append(text, " ", 1));
        FERRY_TRY(tk_text_append(text, s, bytes));
        return split_into(step->regex, TK_SPLIT_ISOLATED, 0, text->data, text->bytes, at_start,
                          1, scratch, out);
    case TK_PRETOKENIZE_METASPACE: {
        int prepend = step->prepend_scheme == TK_PREPEND_ALWAYS ||
                      (step->prepend_scheme == TK_PREPEND_FIRST && at_start);
        /* spaces become the replacement first, then "starts with it" is asked */
        int starts_with = (bytes > 0 && s[0] == ' ') ||
                          (bytes >= step->text_bytes && memcmp(s, step->text, step->text_bytes) == 0);
        if (prepend && !starts_with)
            FERRY_TRY(tk_text_append(text, step->text, step->text_bytes));
        for (size_t i = 0; i < bytes; i++) {
            if (s[i] == ' ') FERRY_TRY(tk_text_append(text, step->text, step->text_bytes));
            else FERRY_TRY(tk_text_append(text, s + i, 1));
        }
        return split_into(step->split ? step->regex : NULL, TK_SPLIT_MERGED_WITH_NEXT, 0,
                          text->data, text->bytes, at_start, 0, scratch, out);
    }
    default:
        return FERRY_OK;
    }
}

ferry_status tk_pretokenize(const tk_steps *steps, const char *s, size_t bytes, int at_start,
                            tk_pieces *pieces, tk_pieces *scratch) {
    ferry_status status = FERRY_OK;
    split_scratch split = {0};
    tk_pieces_clear(pieces);
    FERRY_TRY_GOTO(tk_pieces_add(pieces, s, bytes, at_start));
    for (int k = 0; k < steps->count; k++) {
        tk_pieces_clear(scratch);
        for (size_t i = 0; i < pieces->count; i++)
            FERRY_TRY_GOTO(pretokenize_piece(&steps->items[k], tk_piece_data(pieces, i),
                                             pieces->items[i].bytes, pieces->items[i].at_start,
                                             &split, scratch));
        tk_pieces swapped = *pieces;
        *pieces = *scratch;
        *scratch = swapped;
    }
fail:
    tk_spans_free(&split.matches);
    tk_spans_free(&split.groups);
    tk_text_free(&split.text);
    return status;
}

/* ---------------------------------------------------------- decoders */

/* "<0xAB>" -> 0xAB, else -1. */
static int byte_token_value(const char *s, size_t bytes) {
    if (bytes != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int value = 0;
    for (int i = 3; i < 5; i++) {
        int digit = tk_hex_digit(s[i]);
        if (digit < 0) return -1;
        value = value * 16 + digit;
    }
    return value;
}

/* ByteFallback: a run of byte tokens becomes its text when valid UTF-8,
 * else one U+FFFD per byte. */
static ferry_status flush_bytes(tk_text *run, size_t n_bytes, tk_pieces *out) {
    if (n_bytes == 0) return FERRY_OK;
    if (tk_utf8_invalid_offset(run->data, run->bytes) == run->bytes) {
        FERRY_TRY(tk_pieces_begin(out, 0));
        FERRY_TRY(tk_text_append(&out->text, run->data, run->bytes));
        tk_pieces_end(out);
    } else {
        for (size_t i = 0; i < n_bytes; i++) {
            FERRY_TRY(tk_pieces_begin(out, 0));
            FERRY_TRY(tk_text_append(&out->text, "\xEF\xBF\xBD", 3));
            tk_pieces_end(out);
        }
    }
    run->bytes = 0;
    return FERRY_OK;
}

/* Strip: drop up to strip_start leading and strip_stop trailing copies
 * of a character.  HF counts the cuts in characters but then takes
 * (bytes - cuts) characters after the leading cut (wrapping when
 * negative), so with multi-byte text the trailing cut has no effect;
 * that is kept, since matching HF is the point. */
static ferry_status strip_token(const tk_step *step, const char *s, size_t bytes, tk_text *out) {
    uint32_t codepoint = 0;
    size_t start_byte = 0, start_cut = 0, stop_cut = 0, end = bytes;
    while (start_byte < bytes && start_cut < (size_t)step->strip_start) {
        int n = tk_utf8_next((const uint8_t *)s + start_byte, bytes - start_byte, &codepoint);
        if (n <= 0 || codepoint != step->codepoint) break;
        start_byte += (size_t)n;
        start_cut++;
    }
    while (end > 0 && stop_cut < (size_t)step->strip_stop) {
        size_t p = end - 1;
        while (p > 0 && ((uint8_t)s[p] & 0xC0) == 0x80) p--;
        int n = tk_utf8_next((const uint8_t *)s + p, bytes - p, &codepoint);
        if (n <= 0 || codepoint != step->codepoint) break;
        end = p;
        stop_cut++;
    }
    size_t take = bytes >= start_cut + stop_cut ? bytes - start_cut - stop_cut : SIZE_MAX;
    size_t stop_byte = start_byte;
    for (size_t n_taken = 0; stop_byte < bytes && n_taken < take; n_taken++) {
        int n = tk_utf8_next((const uint8_t *)s + stop_byte, bytes - stop_byte, &codepoint);
        stop_byte += (size_t)(n > 0 ? n : 1);
    }
    return tk_text_append(out, s + start_byte, stop_byte - start_byte);
}

static ferry_status decode_step(const tk_step *step, const tk_pieces *tokens, tk_text *work,
                                tk_pieces *out) {
    work->bytes = 0;
    size_t n_run_bytes = 0;
    if (step->kind == TK_DECODE_BYTELEVEL || step->kind == TK_DECODE_FUSE) {
        for (size_t i = 0; i < tokens->count; i++) {
            const char *s = tk_piece_data(tokens, i);
            size_t bytes = tokens->items[i].bytes, mark = work->bytes;
            for (size_t k = 0; step->kind == TK_DECODE_BYTELEVEL && k < bytes;) {
                uint32_t codepoint = 0;
                int n = tk_utf8_next((const uint8_t *)s + k, bytes - k, &codepoint);
                int byte = n > 0 ? tk_codepoint_to_byte(codepoint) : -1;
                if (byte < 0) {   /* a character outside the map: the token stays as it is */
                    work->bytes = mark;
                    break;
                }
                uint8_t b = (uint8_t)byte;
                FERRY_TRY(tk_text_append(work, &b, 1));
                k += (size_t)n;
                if (k == bytes) goto next_token;
            }
            FERRY_TRY(tk_text_append(work, s, bytes));
        next_token:;
        }
        FERRY_TRY(tk_pieces_begin(out, 0));
        FERRY_TRY(tk_utf8_append_lossy(&out->text, work->data ? work->data : "", work->bytes));
        tk_pieces_end(out);
        return FERRY_OK;
    }
    for (size_t i = 0; i < tokens->count; i++) {
        const char *s = tk_piece_data(tokens, i);
        size_t bytes = tokens->items[i].bytes;
        if (step->kind == TK_DECODE_BYTEFALLBACK) {
            int value = byte_token_value(s, bytes);
            if (value >= 0) {
                uint8_t b = (uint8_t)value;
                FERRY_TRY(tk_text_append(work, &b, 1));
                n_run_bytes++;
                continue;
            }
            FERRY_TRY(flush_bytes(work, n_run_bytes, out));
            n_run_bytes = 0;
        }
        FERRY_TRY(tk_pieces_begin(out, 0));
        tk_text *text = &out->text;
        if (step->kind == TK_DECODE_REPLACE) {
            FERRY_TRY(tk_regex_replace(step->regex, s, bytes, step->text, step->text_bytes, text));
        } else if (step->kind == TK_DECODE_STRIP) {
            FERRY_TRY(strip_token(step, s, bytes, text));
        } else if (step->kind == TK_DECODE_METASPACE) {
            size_t run = 0;
            for (size_t k = 0; k < bytes;) {
                if (k + step->text_bytes <= bytes && memcmp(s + k, step->text, step->text_bytes) == 0) {
                    FERRY_TRY(tk_text_append(text, s + run, k - run));
                    if (!(i == 0 && step->prepend_scheme != TK_PREPEND_NEVER))
                        FERRY_TRY(tk_text_append(text, " ", 1));
                    k += step->text_bytes;
                    run = k;
                } else {
                    k++;
                }
            }
            FERRY_TRY(tk_text_append(text, s + run, bytes - run));
        } else {
            FERRY_TRY(tk_text_append(text, s, bytes));
        }
        tk_pieces_end(out);
    }
    return step->kind == TK_DECODE_BYTEFALLBACK ? flush_bytes(work, n_run_bytes, out) : FERRY_OK;
}

ferry_status tk_decode_steps(const tk_steps *steps, tk_pieces *tokens, tk_pieces *scratch,
                             tk_text *out) {
    ferry_status status = FERRY_OK;
    tk_text work = {0};
    for (int k = 0; k < steps->count; k++) {
        tk_pieces_clear(scratch);
        FERRY_TRY_GOTO(decode_step(&steps->items[k], tokens, &work, scratch));
        tk_pieces swapped = *tokens;
        *tokens = *scratch;
        *scratch = swapped;
    }
    for (size_t i = 0; i < tokens->count; i++)
        FERRY_TRY_GOTO(tk_text_append(out, tk_piece_data(tokens, i), tokens->items[i].bytes));
fail:
    tk_text_free(&work);
    return status;
}
