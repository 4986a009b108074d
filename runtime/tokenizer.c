/*
 * tokenizer.c — the tokenizer's front: loading tokenizer.json (added
 * tokens here, the rest through tokenizer_load.c), and the encode / decode
 * pipelines in HF's order: added tokens cut out of the raw text, each
 * remaining piece normalized, normalized added tokens cut out, the rest
 * pre-tokenized and run through BPE, then the post-processor template.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime/tokenizer_internal.h"

ferry_status ferry_token_list_push(ferry_token_list *list, int32_t id) {
    FERRY_TRY(tk_grow((void **)&list->ids, &list->capacity, list->count + 1, sizeof *list->ids,
                      "token ids"));
    list->ids[list->count++] = id;
    return FERRY_OK;
}

void ferry_token_list_free(ferry_token_list *list) {
    free(list->ids);
    *list = (ferry_token_list){0};
}

/* ------------------------------------------------------ added tokens */

/* First byte, then longest first, then file order. */
static int compare_added(const void *a, const void *b, void *context) {
    const tk_added *all = context;
    const tk_added *x = &all[*(const int *)a], *y = &all[*(const int *)b];
    uint8_t fx = (uint8_t)x->pattern[0], fy = (uint8_t)y->pattern[0];
    if (fx != fy) return fx < fy ? -1 : 1;
    if (x->pattern_bytes != y->pattern_bytes) return x->pattern_bytes > y->pattern_bytes ? -1 : 1;
    return *(const int *)a - *(const int *)b;
}

static ferry_status index_added(ferry_tokenizer *t) {
    for (int group = 0; group < 2; group++) {
        FERRY_TRY(ferry_calloc((size_t)t->n_added + 1, sizeof(int), "added tokens",
                               (void **)&t->added_order[group]));
        int n = 0;
        for (int i = 0; i < t->n_added; i++)
            if (t->added[i].normalized == group && t->added[i].pattern_bytes > 0)
                t->added_order[group][n++] = i;
        qsort_r(t->added_order[group], (size_t)n, sizeof(int), compare_added, t->added);
        int k = 0;
        for (int byte = 0; byte <= 256; byte++) {
            while (k < n && (uint8_t)t->added[t->added_order[group][k]].pattern[0] < byte) k++;
            t->bucket_start[group][byte] = k;
        }
        t->bucket_start[group][256] = n;
    }
    return FERRY_OK;
}

static ferry_status load_added(ferry_tokenizer *t, const cJSON *list) {
    if (!list || cJSON_IsNull(list)) return FERRY_OK;
    if (!cJSON_IsArray(list))
        return ferry_fail(FERRY_ERR_FORMAT, "%s: \"added_tokens\" is not an array", t->source);
    FERRY_TRY(ferry_calloc((size_t)cJSON_GetArraySize(list) + 1, sizeof *t->added, "added tokens",
                           (void **)&t->added));
    for (const cJSON *item = list->child; item; item = item->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(item, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(item, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > INT32_MAX - 1 ||
            !cJSON_IsString(content))
            return ferry_fail(FERRY_ERR_FORMAT, "%s: added token %d needs an \"id\" and a "
                              "\"content\"", t->source, t->n_added);
        tk_added *added = &t->added[t->n_added++];
        added->id = (int32_t)id->valuedouble;
        added->content_bytes = strlen(content->valuestring);
        added->content = strdup(content->valuestring);
        if (!added->content) return ferry_fail(FERRY_ERR_NO_MEMORY, "tokenizer: out of memory");
        const char *flags[] = {"special", "lstrip", "rstrip", "single_word", "normalized"};
        int *values[] = {&added->special, &added->lstrip, &added->rstrip, &added->single_word,
                         &added->normalized};
        for (int f = 0; f < 5; f++)
            *values[f] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(item, flags[f]));
    }
    return FERRY_OK;
}

/* What added tokens are matched against: the content, normalized for
 * normalized tokens (as HF builds its normalized trie). */
static ferry_status make_added_patterns(ferry_tokenizer *t) {
    tk_text normalized = {0};
    for (int i = 0; i < t->n_added; i++) {
        tk_added *added = &t->added[i];
        normalized.bytes = 0;
        if (added->normalized && t->normalizers.count) {
            ferry_status status = tk_normalize(&t->normalizers, added->content,
                                               added->content_bytes, &normalized);
            if (status != FERRY_OK) {
                tk_text_free(&normalized);
                return status;
            }
            added->pattern = normalized.data;
            added->pattern_bytes = normalized.bytes;
            normalized = (tk_text){0};
        } else {
            added->pattern = strdup(added->content);
            added->pattern_bytes = added->content_bytes;
            if (!added->pattern) return ferry_fail(FERRY_ERR_NO_MEMORY, "tokenizer: out of memory");
        }
    }
    return FERRY_OK;
}

static ferry_status build_id_table(ferry_tokenizer *t) {
    int32_t n_ids = t->model_vocab.n_ids;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id + 1 > n_ids) n_ids = t->added[i].id + 1;
    FERRY_TRY(tk_vocab_init(&t->all_tokens, n_ids));
    FERRY_TRY(ferry_calloc((size_t)n_ids + 1, 1, "special flags", (void **)&t->is_special));
    for (int i = 0; i < t->n_added; i++) {
        /* HF names a normalized added token by its normalized text (decode too) */
        const tk_added *added = &t->added[i];
        FERRY_TRY(tk_vocab_set(&t->all_tokens, added->id, added->pattern, added->pattern_bytes));
        t->is_special[added->id] = (uint8_t)added->special;
    }
    for (int32_t id = 0; id < t->model_vocab.n_ids; id++)
        if (t->model_vocab.text[id] && !t->all_tokens.text[id])
            FERRY_TRY(tk_vocab_set(&t->all_tokens, id, t->model_vocab.text[id],
                                   t->model_vocab.bytes[id]));
    return FERRY_OK;
}

ferry_status ferry_tokenizer_from_json(const char *json_text, size_t json_bytes,
                                       const char *source, ferry_tokenizer **out) {
    *out = NULL;
    ferry_status status = FERRY_OK;
    cJSON *root = NULL;
    ferry_tokenizer *t = NULL;
    FERRY_TRY_GOTO(ferry_calloc(1, sizeof *t, "tokenizer", (void **)&t));
    t->source = strdup(source ? source : "tokenizer.json");
    if (!t->source) FERRY_TRY_GOTO(ferry_fail(FERRY_ERR_NO_MEMORY, "tokenizer: out of memory"));
    root = cJSON_ParseWithLength(json_text, json_bytes);
    if (!cJSON_IsObject(root))
        FERRY_TRY_GOTO(ferry_fail(FERRY_ERR_FORMAT, "%s: not a JSON object (bad JSON near byte "
                                  "%zu)", t->source,
                                  root ? (size_t)0 : (size_t)(cJSON_GetErrorPtr() - json_text)));
    FERRY_TRY_GOTO(tk_load_model(t, cJSON_GetObjectItemCaseSensitive(root, "model")));
    FERRY_TRY_GOTO(load_added(t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")));
    FERRY_TRY_GOTO(tk_load_steps(t, root));
    FERRY_TRY_GOTO(make_added_patterns(t));
    FERRY_TRY_GOTO(index_added(t));
    FERRY_TRY_GOTO(build_id_table(t));
    /* Rust regex's Unicode \w and \s, which HF's single_word / lstrip / rstrip use */
    static const char word_class[] = "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]";
    static const char space_class[] = "\\p{White_Space}";
    FERRY_TRY_GOTO(tk_regex_compile(word_class, sizeof word_class - 1, 0, "word character",
                                    &t->word_char));
    FERRY_TRY_GOTO(tk_regex_compile(space_class, sizeof space_class - 1, 0, "space character",
                                    &t->space_char));
    cJSON_Delete(root);
    *out = t;
    return FERRY_OK;
fail:
    cJSON_Delete(root);
    ferry_tokenizer_free(t);
    return status;
}

ferry_status ferry_tokenizer_load(const char *path, ferry_tokenizer **out) {
    *out = NULL;
    FILE *file = fopen(path, "rb");
    if (!file) return ferry_fail(FERRY_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    ferry_status status = FERRY_OK;
    tk_text text = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, file)) > 0)
        FERRY_TRY_GOTO(tk_text_append(&text, chunk, n));
    if (ferror(file))
        FERRY_TRY_GOTO(ferry_fail(FERRY_ERR_IO, "%s: read failed: %s", path, strerror(errno)));
    status = ferry_tokenizer_from_json(text.data ? text.data : "", text.bytes, path, out);
fail:
    fclose(file);
    tk_text_free(&text);
    return status;
}

void ferry_tokenizer_free(ferry_tokenizer *t) {
    if (!t) return;
    free(t->source);
    tk_vocab_free(&t->model_vocab);
    tk_vocab_free(&t->all_tokens);
    tk_merges_free(&t->merges);
    for (int i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].pattern);
    }
    free(t->added);
    free(t->added_order[0]);
    free(t->added_order[1]);
    pcre2_code_free(t->word_char);
    pcre2_code_free(t->space_char);
    free(t->is_special);
    tk_steps_free(&t->normalizers);
    tk_steps_free(&t->pre_tokenizers);
    tk_steps_free(&t->decoders);
    free(t->template_items);
    free(t);
}

/* --------------------------------------------------------------- encode */

/* Does the one character at s match regex (\w or \s)? */
static int char_is(const pcre2_code *regex, const char *s, size_t bytes) {
    pcre2_match_data *match = pcre2_match_data_create(1, NULL);
    if (!match) return 0;
    int rc = pcre2_match(regex, (PCRE2_SPTR)s, bytes, 0, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK,
                         match, NULL);
    pcre2_match_data_free(match);
    return rc > 0;
}

static size_t char_before(const char *s, size_t at) {
    size_t p = at - 1;
    while (p > 0 && ((uint8_t)s[p] & 0xC0) == 0x80) p--;
    return p;
}

static size_t char_after(const char *s, size_t bytes, size_t at) {
    uint32_t codepoint;
    int n = tk_utf8_next((const uint8_t *)s + at, bytes - at, &codepoint);
    return at + (size_t)(n > 0 ? n : 1);
}

/* Cut s at the added tokens of one group, as HF's find_matches does
 * (leftmost-longest, then single_word / lstrip / rstrip); spans with
 * is_match hold the added index + 1. */
static ferry_status split_added(const ferry_tokenizer *t, int group, const char *s, size_t bytes,
                                tk_spans *out) {
    out->count = 0;
    size_t start_offset = 0;
    const int *order = t->added_order[group];
    for (size_t pos = 0; pos < bytes;) {
        uint8_t first = (uint8_t)s[pos];
        int found = -1;
        for (int k = t->bucket_start[group][first]; k < t->bucket_start[group][first + 1]; k++) {
            const tk_added *added = &t->added[order[k]];
            if (added->pattern_bytes <= bytes - pos &&
                memcmp(s + pos, added->pattern, added->pattern_bytes) == 0) {
                found = order[k];
                break;
            }
        }
        if (found < 0) {
            pos++;
            continue;
        }
        const tk_added *added = &t->added[found];
        size_t start = pos, stop = pos + added->pattern_bytes;
        pos = stop;
        if (added->single_word) {
            size_t before = start > 0 ? char_before(s, start) : 0;
            int word_before = start > 0 && char_is(t->word_char, s + before, start - before);
            int word_after = stop < bytes &&
                             char_is(t->word_char, s + stop, char_after(s, bytes, stop) - stop);
            if (word_before || word_after) continue;
        }
        if (added->lstrip) {
            size_t new_start = start;
            while (new_start > 0) {
                size_t before = char_before(s, new_start);
                if (!char_is(t->space_char, s + before, new_start - before)) break;
                new_start = before;
            }
            start = new_start > start_offset ? new_start : start_offset;
        }
        if (added->rstrip)
            while (stop < bytes) {
                size_t next = char_after(s, bytes, stop);
                if (!char_is(t->space_char, s + stop, next - stop)) break;
                stop = next;
            }
        if (start_offset < start) FERRY_TRY(tk_spans_push(out, start_offset, start, 0));
        FERRY_TRY(tk_spans_push(out, start, stop, found + 1));
        start_offset = stop;
    }
    if (start_offset < bytes) FERRY_TRY(tk_spans_push(out, start_offset, bytes, 0));
    return FERRY_OK;
}

typedef struct encode_scratch {
    tk_spans raw_cuts, normalized_cuts;
    tk_text normalized;
    tk_pieces words, pieces_scratch;
    tk_bpe_scratch bpe;
} encode_scratch;

/* One piece of text between raw added tokens: normalize, cut normalized
 * added tokens, pre-tokenize, BPE. */
static ferry_status encode_piece(const ferry_tokenizer *t, const char *s, size_t bytes,
                                 int at_start, encode_scratch *scratch, ferry_token_list *out) {
    if (t->normalizers.count) {
        FERRY_TRY(tk_normalize(&t->normalizers, s, bytes, &scratch->normalized));
        s = scratch->normalized.data;
        bytes = scratch->normalized.bytes;
    }
    FERRY_TRY(split_added(t, 1, s, bytes, &scratch->normalized_cuts));
    for (size_t c = 0; c < scratch->normalized_cuts.count; c++) {
        const tk_span *cut = &scratch->normalized_cuts.items[c];
        if (cut->is_match) {
            FERRY_TRY(ferry_token_list_push(out, t->added[cut->is_match - 1].id));
            continue;
        }
        FERRY_TRY(tk_pretokenize(&t->pre_tokenizers, s + cut->start, cut->end - cut->start,
                                 at_start && cut->start == 0, &scratch->words,
                                 &scratch->pieces_scratch));
        for (size_t w = 0; w < scratch->words.count; w++)
            FERRY_TRY(tk_bpe_word(t, tk_piece_data(&scratch->words, w),
                                  scratch->words.items[w].bytes, &scratch->bpe, out));
    }
    return FERRY_OK;
}

ferry_status ferry_tokenizer_encode(const ferry_tokenizer *t, const char *text, size_t text_bytes,
                                    int add_special_tokens, ferry_token_list *out) {
    size_t invalid = tk_utf8_invalid_offset(text, text_bytes);
    if (invalid < text_bytes)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "tokenizer: text is not valid UTF-8 at byte %zu",
                          invalid);
    ferry_status status = FERRY_OK;
    encode_scratch scratch = {0};
    size_t template_index = 0;
    if (add_special_tokens)
        for (; template_index < t->n_template_items && t->template_items[template_index] >= 0;
             template_index++)
            FERRY_TRY_GOTO(ferry_token_list_push(out, t->template_items[template_index]));
    FERRY_TRY_GOTO(split_added(t, 0, text, text_bytes, &scratch.raw_cuts));
    for (size_t c = 0; c < scratch.raw_cuts.count; c++) {
        const tk_span *cut = &scratch.raw_cuts.items[c];
        if (cut->is_match)
            FERRY_TRY_GOTO(ferry_token_list_push(out, t->added[cut->is_match - 1].id));
        else
            FERRY_TRY_GOTO(encode_piece(t, text + cut->start, cut->end - cut->start,
                                        cut->start == 0, &scratch, out));
    }
    if (add_special_tokens)
        for (template_index++; template_index < t->n_template_items; template_index++)
            FERRY_TRY_GOTO(ferry_token_list_push(out, t->template_items[template_index]));
fail:
    tk_spans_free(&scratch.raw_cuts);
    tk_spans_free(&scratch.normalized_cuts);
    tk_text_free(&scratch.normalized);
    tk_pieces_free(&scratch.words);
    tk_pieces_free(&scratch.pieces_scratch);
    tk_bpe_scratch_free(&scratch.bpe);
    return status;
}

/* --------------------------------------------------------------- decode */

ferry_status ferry_tokenizer_decode(const ferry_tokenizer *t, const int32_t *ids, size_t n_ids,
                                    int skip_special_tokens, char **out_text, size_t *out_bytes) {
    *out_text = NULL;
    ferry_status status = FERRY_OK;
    tk_pieces tokens = {0}, scratch = {0};
    tk_text text = {0};
    for (size_t i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->all_tokens.n_ids || !t->all_tokens.text[id]) continue;
        if (skip_special_tokens && t->is_special[id]) continue;
        FERRY_TRY_GOTO(tk_pieces_begin(&tokens, 0));
        FERRY_TRY_GOTO(tk_text_append(&tokens.text, t->all_tokens.text[id], t->all_tokens.bytes[id]));
        tk_pieces_end(&tokens);
    }
    if (t->decoders.count) {
        FERRY_TRY_GOTO(tk_decode_steps(&t->decoders, &tokens, &scratch, &text));
    } else {
        for (size_t i = 0; i < tokens.count; i++) {
            if (i) FERRY_TRY_GOTO(tk_text_append(&text, " ", 1));
            FERRY_TRY_GOTO(tk_text_append(&text, tk_piece_data(&tokens, i), tokens.items[i].bytes));
        }
    }
    FERRY_TRY_GOTO(tk_text_append(&text, "", 0));
    *out_text = text.data;
    if (out_bytes) *out_bytes = text.bytes;
    text = (tk_text){0};
fail:
    tk_pieces_free(&tokens);
    tk_pieces_free(&scratch);
    tk_text_free(&text);
    return status;
}

/* ------------------------------------------------------------ lookups */

int32_t ferry_tokenizer_vocab_size(const ferry_tokenizer *t) { return t->all_tokens.n_ids; }

const char *ferry_tokenizer_token_text(const ferry_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->all_tokens.n_ids ? t->all_tokens.text[id] : NULL;
}

int32_t ferry_tokenizer_token_id(const ferry_tokenizer *t, const char *text) {
    size_t bytes = strlen(text);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].content_bytes == bytes && memcmp(t->added[i].content, text, bytes) == 0)
            return t->added[i].id;
    return tk_vocab_find(&t->model_vocab, text, bytes);
}

int ferry_tokenizer_is_special(const ferry_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->all_tokens.n_ids && t->is_special[id];
}
