/*
 * tokenizer_internal.h — what the tokenizer_*.c files share: the loaded
 * tokenizer's tables (vocabulary hash, merge ranks, added tokens, the
 * normalizer / pre-tokenizer / decoder steps as flat lists), growable
 * byte strings and piece lists, UTF-8 and regex helpers.  Only
 * runtime/tokenizer*.c include it.
 */
#ifndef FERRY_RUNTIME_TOKENIZER_INTERNAL_H
#define FERRY_RUNTIME_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "runtime/tokenizer.h"

/* ------------------------------------------------ strings and pieces */

typedef struct tk_text {
    char *data;
    size_t bytes;
    size_t capacity;
} tk_text;

/* Grow an array to hold `needed` items (doubling); `what` names it in errors. */
ferry_status tk_grow(void **data, size_t *capacity, size_t needed, size_t item_bytes,
                     const char *what);
/* 0..15 for a hex digit, else -1. */
int tk_hex_digit(char c);

ferry_status tk_text_append(tk_text *text, const void *data, size_t bytes);
ferry_status tk_text_append_codepoint(tk_text *text, uint32_t codepoint);
void tk_text_free(tk_text *text);

/* A list of strings stored back to back in one buffer.  at_start marks a
 * piece that begins at the start of the original text (Metaspace "first"). */
typedef struct tk_piece {
    size_t offset;
    size_t bytes;
    int at_start;
} tk_piece;

typedef struct tk_pieces {
    tk_text text;
    tk_piece *items;
    size_t count;
    size_t capacity;
} tk_pieces;

/* Add a copy of data as a new piece (empty pieces are dropped). */
ferry_status tk_pieces_add(tk_pieces *pieces, const char *data, size_t bytes, int at_start);
/* Start a piece; tk_text_append onto pieces->text then grows it, and
 * tk_pieces_end fixes its size (an empty piece stays: decoders count them). */
ferry_status tk_pieces_begin(tk_pieces *pieces, int at_start);
void tk_pieces_end(tk_pieces *pieces);
void tk_pieces_clear(tk_pieces *pieces);
void tk_pieces_free(tk_pieces *pieces);
static inline const char *tk_piece_data(const tk_pieces *pieces, size_t i) {
    return pieces->text.data + pieces->items[i].offset;
}

/* ------------------------------------------------------------ UTF-8 */

/* Length of the valid character at s (1..4) with its code point, or the
 * negated length of the maximal invalid subpart there (as Rust's lossy
 * decoding counts it: each such subpart becomes one U+FFFD). */
int tk_utf8_next(const uint8_t *s, size_t bytes, uint32_t *codepoint);
/* Offset of the first invalid byte, or bytes when all is valid. */
size_t tk_utf8_invalid_offset(const char *s, size_t bytes);
/* Append s with each invalid subpart replaced by U+FFFD. */
ferry_status tk_utf8_append_lossy(tk_text *out, const char *s, size_t bytes);

/* GPT-2's byte <-> printable character map (ByteLevel). */
uint32_t tk_byte_to_codepoint(uint8_t byte);
int tk_codepoint_to_byte(uint32_t codepoint);   /* -1 when not in the map */

/* ------------------------------------------------------------ regex */

/* Compile a pattern (UTF + UCP; literal when is_literal) for error context
 * `what`; JIT-compiled when the platform allows. */
ferry_status tk_regex_compile(const char *pattern, size_t bytes, int is_literal,
                              const char *what, pcre2_code **out);

typedef struct tk_span {
    size_t start, end;
    int is_match;
} tk_span;

typedef struct tk_spans {
    tk_span *items;
    size_t count, capacity;
} tk_spans;

/* The string cut into alternating non-match / match spans covering it
 * (empty matches skipped). */
ferry_status tk_regex_spans(const pcre2_code *regex, const char *s, size_t bytes, tk_spans *out);
/* Append s with every match replaced by content. */
ferry_status tk_regex_replace(const pcre2_code *regex, const char *s, size_t bytes,
                              const char *content, size_t content_bytes, tk_text *out);
ferry_status tk_spans_push(tk_spans *spans, size_t start, size_t end, int is_match);
void tk_spans_free(tk_spans *spans);

/* ---------------------------------------------------- pipeline steps */

typedef enum tk_step_kind {
    TK_NORMALIZE_PREPEND,
    TK_NORMALIZE_REPLACE,
    TK_NORMALIZE_NFC,
    TK_PRETOKENIZE_SPLIT,
    TK_PRETOKENIZE_BYTELEVEL,
    TK_PRETOKENIZE_METASPACE,
    TK_DECODE_BYTELEVEL,
    TK_DECODE_REPLACE,
    TK_DECODE_BYTEFALLBACK,
    TK_DECODE_FUSE,
    TK_DECODE_STRIP,
    TK_DECODE_METASPACE,
} tk_step_kind;

/* HF's SplitDelimiterBehavior. */
typedef enum tk_split_behavior {
    TK_SPLIT_REMOVED,
    TK_SPLIT_ISOLATED,
    TK_SPLIT_MERGED_WITH_PREVIOUS,
    TK_SPLIT_MERGED_WITH_NEXT,
    TK_SPLIT_CONTIGUOUS,
} tk_split_behavior;

typedef enum tk_prepend_scheme { TK_PREPEND_NEVER, TK_PREPEND_FIRST, TK_PREPEND_ALWAYS } tk_prepend_scheme;

typedef struct tk_step {
    tk_step_kind kind;
    pcre2_code *regex;          /* Split / Replace pattern; ByteLevel's regex if use_regex */
    char *text;                 /* Prepend text, Replace content, Metaspace replacement */
    size_t text_bytes;
    tk_split_behavior behavior; /* Split (Metaspace split: merged with next) */
    int invert;                 /* Split */
    int add_prefix_space;       /* ByteLevel */
    tk_prepend_scheme prepend_scheme;   /* Metaspace */
    int split;                  /* Metaspace */
    uint32_t codepoint;         /* Metaspace replacement, Strip content */
    int strip_start, strip_stop;        /* Strip */
} tk_step;

typedef struct tk_steps {
    tk_step *items;
    int count, capacity;
} tk_steps;

/* Normalize one string (all normalizer steps in order) into out (cleared first). */
ferry_status tk_normalize(const tk_steps *steps, const char *s, size_t bytes, tk_text *out);
/* Run the pre-tokenizer steps over one string; pieces receive the words. */
ferry_status tk_pretokenize(const tk_steps *steps, const char *s, size_t bytes, int at_start,
                            tk_pieces *pieces, tk_pieces *scratch);
/* Run the decoder steps over tokens (consumed) and append the result. */
ferry_status tk_decode_steps(const tk_steps *steps, tk_pieces *tokens, tk_pieces *scratch,
                             tk_text *out);

/* ------------------------------------------------------- vocabulary */

/* Token texts by id with a hash index text -> id. */
typedef struct tk_vocab {
    char **text;                /* [n_ids], NULL where no token has the id */
    uint32_t *bytes;            /* [n_ids] */
    int32_t n_ids;
    int32_t *slots;             /* open addressing, -1 = empty */
    size_t mask;
} tk_vocab;

/* Make room for ids 0 .. n_ids-1 (all absent). */
ferry_status tk_vocab_init(tk_vocab *vocab, int32_t n_ids);
/* Set the text of id (copied) and index it; a text already present keeps
 * its first id in the index. */
ferry_status tk_vocab_set(tk_vocab *vocab, int32_t id, const char *text, size_t bytes);
int32_t tk_vocab_find(const tk_vocab *vocab, const char *text, size_t bytes);
void tk_vocab_free(tk_vocab *vocab);

/* Merge ranks: pair of ids -> (rank, merged id). */
typedef struct tk_merges {
    uint64_t *keys;             /* (left << 32) | right, UINT64_MAX = empty */
    uint32_t *ranks;
    int32_t *merged_ids;
    size_t mask;
    size_t count;
} tk_merges;

ferry_status tk_merges_init(tk_merges *merges, size_t expected);
/* A repeated pair takes the later rank, as HF's map does. */
void tk_merges_put(tk_merges *merges, int32_t left, int32_t right, uint32_t rank, int32_t merged);
int tk_merges_get(const tk_merges *merges, int32_t left, int32_t right, uint32_t *rank,
                  int32_t *merged);
void tk_merges_free(tk_merges *merges);

/* Per-call scratch of the BPE word merger. */
typedef struct tk_bpe_scratch {
    struct tk_symbol *symbols;
    struct tk_merge_entry *heap;
    size_t symbols_capacity, heap_capacity;
} tk_bpe_scratch;

void tk_bpe_scratch_free(tk_bpe_scratch *scratch);

/* ------------------------------------------------- the tokenizer */

typedef struct tk_added {
    int32_t id;
    char *content;
    size_t content_bytes;
    char *pattern;              /* what is matched: content, normalized when `normalized` */
    size_t pattern_bytes;
    int special, lstrip, rstrip, single_word, normalized;
} tk_added;

struct ferry_tokenizer {
    char *source;
    /* BPE model */
    tk_vocab model_vocab;
    tk_merges merges;
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t unk_id;             /* -1 without unk_token */
    int32_t byte_ids[256];      /* id of "<0xNN>", -1 when absent */
    /* added tokens: matched in the raw text (normalized = 0) or in the
     * normalized text (normalized = 1); index lists sorted by first byte
     * then longest first, bucket_start[group][byte] .. [byte + 1] */
    tk_added *added;
    int n_added;
    int *added_order[2];
    int bucket_start[2][257];
    pcre2_code *word_char;      /* \w, for single_word */
    pcre2_code *space_char;     /* \s, for lstrip / rstrip */
    /* every id's text as decode sees it (added tokens override) */
    tk_vocab all_tokens;
    uint8_t *is_special;        /* [all_tokens.n_ids] */
    tk_steps normalizers, pre_tokenizers, decoders;
    /* post-processor: template ids with -1 where the sequence goes */
    int32_t *template_items;
    size_t n_template_items;
};

/* BPE of one pre-tokenized word, ids appended to out. */
ferry_status tk_bpe_word(const ferry_tokenizer *tokenizer, const char *word, size_t bytes,
                         tk_bpe_scratch *scratch, ferry_token_list *out);

/* tokenizer_load.c: fill the tables from parsed tokenizer.json. */
struct cJSON;
ferry_status tk_load_model(ferry_tokenizer *tokenizer, const struct cJSON *model);
ferry_status tk_load_steps(ferry_tokenizer *tokenizer, const struct cJSON *root);
void tk_steps_free(tk_steps *steps);

#endif /* FERRY_RUNTIME_TOKENIZER_INTERNAL_H */
