/*
 * tokenizer_load.c — reading tokenizer.json's parts into the tables of
 * tokenizer_internal.h: the BPE model (vocab, merges in "a b" or [a, b]
 * form, byte fallback, unk), normalizer, pre_tokenizer, decoder and
 * post_processor (flattened: nested Sequences become one list).  Anything
 * ferry cannot run exactly is FERRY_ERR_UNSUPPORTED naming the component.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime/tokenizer_internal.h"

/* GPT-2's word regex, used by ByteLevel when use_regex is true. */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static const cJSON *member(const cJSON *node, const char *name) {
    return cJSON_GetObjectItemCaseSensitive(node, name);
}

static const char *string_member(const cJSON *node, const char *name) {
    const cJSON *item = member(node, name);
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

static int bool_member(const cJSON *node, const char *name, int fallback) {
    const cJSON *item = member(node, name);
    return cJSON_IsBool(item) ? cJSON_IsTrue(item) : fallback;
}

/* ------------------------------------------------------------- model */

ferry_status tk_load_model(ferry_tokenizer *t, const cJSON *model) {
    if (!cJSON_IsObject(model))
        return ferry_fail(FERRY_ERR_FORMAT, "%s: no \"model\" object", t->source);
    const char *type = string_member(model, "type");
    if ((type && strcmp(type, "BPE") != 0) || (!type && !member(model, "merges")))
        return ferry_fail(FERRY_ERR_UNSUPPORTED,
                          "%s: model type \"%s\" is not supported (ferry reads BPE models)",
                          t->source, type ? type : "(none)");
    const cJSON *vocab = member(model, "vocab"), *merges = member(model, "merges");
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
        return ferry_fail(FERRY_ERR_FORMAT, "%s: BPE model needs a \"vocab\" object and a "
                          "\"merges\" array", t->source);
    const cJSON *dropout = member(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0)
        return ferry_fail(FERRY_ERR_UNSUPPORTED, "%s: BPE dropout is not supported", t->source);
    const char *fixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const char *fix = string_member(model, fixes[i]);
        if (fix && fix[0])
            return ferry_fail(FERRY_ERR_UNSUPPORTED, "%s: BPE %s is not supported", t->source,
                              fixes[i]);
    }
    int32_t n_ids = 0;
    for (const cJSON *item = vocab->child; item; item = item->next) {
        if (!cJSON_IsNumber(item) || item->valuedouble < 0 || item->valuedouble > INT32_MAX - 1 ||
            item->valuedouble != (double)(int32_t)item->valuedouble)
            return ferry_fail(FERRY_ERR_FORMAT, "%s: vocab entry \"%s\" has no valid id",
                              t->source, item->string);
        if ((int32_t)item->valuedouble + 1 > n_ids) n_ids = (int32_t)item->valuedouble + 1;
    }
    FERRY_TRY(tk_vocab_init(&t->model_vocab, n_ids));
    for (const cJSON *item = vocab->child; item; item = item->next)
        FERRY_TRY(tk_vocab_set(&t->model_vocab, (int32_t)item->valuedouble, item->string,
                               strlen(item->string)));
    t->byte_fallback = bool_member(model, "byte_fallback", 0);
    t->fuse_unk = bool_member(model, "fuse_unk", 0);
    t->ignore_merges = bool_member(model, "ignore_merges", 0);
    const char *unk = string_member(model, "unk_token");
    t->unk_id = unk ? tk_vocab_find(&t->model_vocab, unk, strlen(unk)) : -1;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_ids[b] = tk_vocab_find(&t->model_vocab, name, 6);
    }

    FERRY_TRY(tk_merges_init(&t->merges, (size_t)cJSON_GetArraySize(merges)));
    uint32_t rank = 0;
    tk_text merged = {0};
    ferry_status status = FERRY_OK;
    for (const cJSON *item = merges->child; item; item = item->next, rank++) {
        const char *left = NULL, *right = NULL;
        size_t left_bytes = 0, right_bytes = 0;
        if (cJSON_IsString(item)) {
            const char *space = strchr(item->valuestring, ' ');
            if (space && !strchr(space + 1, ' ')) {
                left = item->valuestring;
                left_bytes = (size_t)(space - left);
                right = space + 1;
                right_bytes = strlen(right);
            }
        } else if (cJSON_IsArray(item) && cJSON_GetArraySize(item) == 2 &&
                   cJSON_IsString(item->child) && cJSON_IsString(item->child->next)) {
            left = item->child->valuestring;
            left_bytes = strlen(left);
            right = item->child->next->valuestring;
            right_bytes = strlen(right);
        }
        if (!left) {
            status = ferry_fail(FERRY_ERR_FORMAT, "%s: merge %u is not \"a b\" nor [\"a\", \"b\"]",
                                t->source, rank);
            goto fail;
        }
        merged.bytes = 0;
        FERRY_TRY_GOTO(tk_text_append(&merged, left, left_bytes));
        FERRY_TRY_GOTO(tk_text_append(&merged, right, right_bytes));
        int32_t left_id = tk_vocab_find(&t->model_vocab, left, left_bytes);
        int32_t right_id = tk_vocab_find(&t->model_vocab, right, right_bytes);
        int32_t merged_id = tk_vocab_find(&t->model_vocab, merged.data, merged.bytes);
        const char *missing = left_id < 0 ? "left" : right_id < 0 ? "right" : "merged";
        if (left_id < 0 || right_id < 0 || merged_id < 0) {
            status = ferry_fail(FERRY_ERR_FORMAT,
                                "%s: merge %u (\"%.*s\" + \"%.*s\"): the %s token is not in the "
                                "vocab", t->source, rank, (int)left_bytes, left, (int)right_bytes,
                                right, missing);
            goto fail;
        }
        tk_merges_put(&t->merges, left_id, right_id, rank, merged_id);
    }
fail:
    tk_text_free(&merged);
    return status;
}

/* ------------------------------------------------------------- steps */

static ferry_status add_step(tk_steps *steps, const tk_step *step) {
    if (steps->count == steps->capacity) {
        int capacity = steps->capacity ? steps->capacity * 2 : 4;
        tk_step *grown = realloc(steps->items, (size_t)capacity * sizeof *grown);
        if (!grown) return ferry_fail(FERRY_ERR_NO_MEMORY, "tokenizer: out of memory (steps)");
        steps->items = grown;
        steps->capacity = capacity;
    }
    steps->items[steps->count++] = *step;
    return FERRY_OK;
}

/* {"String": "x"} or {"Regex": "..."} */
static ferry_status load_pattern(const ferry_tokenizer *t, const cJSON *node, const char *what,
                                 pcre2_code **out) {
    const cJSON *pattern = member(node, "pattern");
    const char *literal = string_member(pattern, "String"), *regex = string_member(pattern, "Regex");
    char context[160];
    snprintf(context, sizeof context, "%s: %s", t->source, what);
    if (literal) return tk_regex_compile(literal, strlen(literal), 1, context, out);
    if (regex) return tk_regex_compile(regex, strlen(regex), 0, context, out);
    return ferry_fail(FERRY_ERR_FORMAT, "%s: needs a \"pattern\" with \"String\" or \"Regex\"",
                      context);
}

static ferry_status set_text(tk_step *step, const char *text) {
    step->text_bytes = strlen(text);
    step->text = strdup(text);
    if (!step->text) return ferry_fail(FERRY_ERR_NO_MEMORY, "tokenizer: out of memory");
    uint32_t codepoint = 0;
    if (step->text_bytes && tk_utf8_next((const uint8_t *)text, step->text_bytes, &codepoint) > 0)
        step->codepoint = codepoint;
    return FERRY_OK;
}

/* Pre-tokenizers that are a Split with a fixed pattern: fills step's kind,
 * behavior and invert, and *pattern. */
static int fixed_split(const char *type, const cJSON *node, tk_step *step, const char **pattern) {
    static const char whitespace_words[] =
        "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]+|"
        "[^\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}\\p{White_Space}]+";
    step->kind = TK_PRETOKENIZE_SPLIT;
    if (strcmp(type, "Digits") == 0) {
        *pattern = "\\p{N}";
        step->behavior = bool_member(node, "individual_digits", 0) ? TK_SPLIT_ISOLATED
                                                                   : TK_SPLIT_CONTIGUOUS;
    } else if (strcmp(type, "Punctuation") == 0) {
        /* Rust: is_ascii_punctuation() or a Unicode punctuation category */
        *pattern = "[\\p{P}\\x21-\\x2F\\x3A-\\x40\\x5B-\\x60\\x7B-\\x7E]";
        const char *behavior = string_member(node, "behavior");
        static const char *const behaviors[] = {"Removed", "Isolated", "MergedWithPrevious",
                                                "MergedWithNext", "Contiguous"};
        step->behavior = TK_SPLIT_ISOLATED;
        for (int i = 0; behavior && i < 5; i++)
            if (strcmp(behavior, behaviors[i]) == 0) step->behavior = (tk_split_behavior)i;
    } else if (strcmp(type, "WhitespaceSplit") == 0) {
        *pattern = "\\p{White_Space}+";
        step->behavior = TK_SPLIT_REMOVED;
    } else if (strcmp(type, "Whitespace") == 0) {
        *pattern = whitespace_words;
        step->behavior = TK_SPLIT_REMOVED;
        step->invert = 1;
    } else {
        return 0;
    }
    return 1;
}

typedef enum part { PART_NORMALIZER, PART_PRE_TOKENIZER, PART_DECODER } part;

static const char *const part_names[] = {"normalizer", "pre_tokenizer", "decoder"};
static const char *const sequence_members[] = {"normalizers", "pretokenizers", "decoders"};
static const char *const supported[] = {
    "Sequence, Prepend, Replace, NFC",
    "Sequence, Split, ByteLevel, Metaspace, Digits, Punctuation, Whitespace, WhitespaceSplit",
    "Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace"};

static ferry_status load_part(ferry_tokenizer *t, part which, const cJSON *node, tk_steps *steps) {
    if (!node || cJSON_IsNull(node)) return FERRY_OK;
    const char *type = string_member(node, "type");
    const char *name = part_names[which];
    if (!type) return ferry_fail(FERRY_ERR_FORMAT, "%s: %s without a \"type\"", t->source, name);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = member(node, sequence_members[which]);
        if (!cJSON_IsArray(list))
            return ferry_fail(FERRY_ERR_FORMAT, "%s: %s Sequence without \"%s\"", t->source, name,
                              sequence_members[which]);
        for (const cJSON *item = list->child; item; item = item->next)
            FERRY_TRY(load_part(t, which, item, steps));
        return FERRY_OK;
    }
    tk_step step = {0};
    ferry_status status = FERRY_OK;
    int known = 1;
    const char *pattern = NULL;
    if (which == PART_NORMALIZER && strcmp(type, "Prepend") == 0 && string_member(node, "prepend")) {
        step.kind = TK_NORMALIZE_PREPEND;
        FERRY_TRY_GOTO(set_text(&step, string_member(node, "prepend")));
    } else if ((which == PART_NORMALIZER || which == PART_DECODER) && strcmp(type, "Replace") == 0) {
        step.kind = which == PART_NORMALIZER ? TK_NORMALIZE_REPLACE : TK_DECODE_REPLACE;
        const char *content = string_member(node, "content");
        FERRY_TRY_GOTO(set_text(&step, content ? content : ""));
        FERRY_TRY_GOTO(load_pattern(t, node, "Replace", &step.regex));
    } else if (which == PART_NORMALIZER && strcmp(type, "NFC") == 0) {
        step.kind = TK_NORMALIZE_NFC;
    } else if (which == PART_PRE_TOKENIZER && strcmp(type, "Split") == 0) {
        static const char *const behaviors[] = {"Removed", "Isolated", "MergedWithPrevious",
                                                "MergedWithNext", "Contiguous"};
        const char *behavior = string_member(node, "behavior");
        int found = -1;
        for (int i = 0; behavior && i < 5; i++)
            if (strcmp(behavior, behaviors[i]) == 0) found = i;
        if (found < 0) {
            status = ferry_fail(FERRY_ERR_UNSUPPORTED, "%s: Split behavior \"%s\" is not known",
                                t->source, behavior ? behavior : "(none)");
            goto fail;
        }
        step.kind = TK_PRETOKENIZE_SPLIT;
        step.behavior = (tk_split_behavior)found;
        step.invert = bool_member(node, "invert", 0);
        FERRY_TRY_GOTO(load_pattern(t, node, "Split", &step.regex));
    } else if (which == PART_PRE_TOKENIZER && fixed_split(type, node, &step, &pattern)) {
        /* a fixed pattern; Rust's char classes spelled as Unicode properties */
        FERRY_TRY_GOTO(tk_regex_compile(pattern, strlen(pattern), 0, type, &step.regex));
    } else if (which != PART_NORMALIZER && strcmp(type, "ByteLevel") == 0) {
        step.kind = which == PART_DECODER ? TK_DECODE_BYTELEVEL : TK_PRETOKENIZE_BYTELEVEL;
        step.add_prefix_space = bool_member(node, "add_prefix_space", 1);
        if (which == PART_PRE_TOKENIZER && bool_member(node, "use_regex", 1))
            FERRY_TRY_GOTO(tk_regex_compile(gpt2_pattern, sizeof gpt2_pattern - 1, 0,
                                            "ByteLevel", &step.regex));
    } else if (which != PART_NORMALIZER && strcmp(type, "Metaspace") == 0) {
        step.kind = which == PART_DECODER ? TK_DECODE_METASPACE : TK_PRETOKENIZE_METASPACE;
        const char *replacement = string_member(node, "replacement");
        FERRY_TRY_GOTO(set_text(&step, replacement ? replacement : "\xE2\x96\x81"));
        const char *scheme = string_member(node, "prepend_scheme");
        step.prepend_scheme = bool_member(node, "add_prefix_space", 1) ? TK_PREPEND_ALWAYS
                                                                       : TK_PREPEND_NEVER;
        if (scheme && strcmp(scheme, "first") == 0) step.prepend_scheme = TK_PREPEND_FIRST;
        if (scheme && strcmp(scheme, "never") == 0) step.prepend_scheme = TK_PREPEND_NEVER;
        if (scheme && strcmp(scheme, "always") == 0) step.prepend_scheme = TK_PREPEND_ALWAYS;
        step.split = bool_member(node, "split", 1);
        FERRY_TRY_GOTO(tk_regex_compile(step.text, step.text_bytes, 1, "Metaspace", &step.regex));
    } else if (which == PART_DECODER && strcmp(type, "ByteFallback") == 0) {
        step.kind = TK_DECODE_BYTEFALLBACK;
    } else if (which == PART_DECODER && strcmp(type, "Fuse") == 0) {
        step.kind = TK_DECODE_FUSE;
    } else if (which == PART_DECODER && strcmp(type, "Strip") == 0) {
        step.kind = TK_DECODE_STRIP;
        const char *content = string_member(node, "content");
        FERRY_TRY_GOTO(set_text(&step, content ? content : " "));
        const cJSON *start = member(node, "start"), *stop = member(node, "stop");
        step.strip_start = cJSON_IsNumber(start) ? start->valueint : 0;
        step.strip_stop = cJSON_IsNumber(stop) ? stop->valueint : 0;
    } else {
        known = 0;
    }
    if (!known)
        return ferry_fail(FERRY_ERR_UNSUPPORTED, "%s: %s \"%s\" is not supported (ferry has %s)",
                          t->source, name, type, supported[which]);
    FERRY_TRY_GOTO(add_step(steps, &step));
    return FERRY_OK;
fail:
    free(step.text);
    pcre2_code_free(step.regex);
    return status;
}

void tk_steps_free(tk_steps *steps) {
    for (int i = 0; i < steps->count; i++) {
        free(steps->items[i].text);
        pcre2_code_free(steps->items[i].regex);
    }
    free(steps->items);
    *steps = (tk_steps){0};
}

/* ---------------------------------------------------- post-processor */

/* Wrap the current template (ids with -1 for the text) in `outer`. */
static ferry_status compose_template(ferry_tokenizer *t, const int32_t *outer, size_t n_outer) {
    size_t n_inner = t->n_template_items ? t->n_template_items : 1;
    int32_t identity = -1;
    const int32_t *inner = t->n_template_items ? t->template_items : &identity;
    int32_t *items = malloc((n_outer * n_inner + 1) * sizeof *items);
    if (!items) return ferry_fail(FERRY_ERR_NO_MEMORY, "tokenizer: out of memory (template)");
    size_t n = 0;
    for (size_t i = 0; i < n_outer; i++) {
        if (outer[i] >= 0) items[n++] = outer[i];
        else for (size_t k = 0; k < n_inner; k++) items[n++] = inner[k];
    }
    free(t->template_items);
    t->template_items = items;
    t->n_template_items = n;
    return FERRY_OK;
}

static ferry_status load_template(ferry_tokenizer *t, const cJSON *node) {
    const cJSON *single = member(node, "single"), *specials = member(node, "special_tokens");
    if (!cJSON_IsArray(single))
        return ferry_fail(FERRY_ERR_FORMAT, "%s: TemplateProcessing without \"single\"", t->source);
    int32_t items[256];
    size_t n = 0;
    for (const cJSON *item = single->child; item; item = item->next) {
        const cJSON *special = member(item, "SpecialToken");
        if (member(item, "Sequence")) {
            if (n < 256) items[n++] = -1;
            continue;
        }
        const char *name = string_member(special, "id");
        const cJSON *ids = member(member(specials, name ? name : ""), "ids");
        if (!name || !cJSON_IsArray(ids))
            return ferry_fail(FERRY_ERR_FORMAT, "%s: TemplateProcessing special token \"%s\" has "
                              "no ids in \"special_tokens\"", t->source, name ? name : "(none)");
        for (const cJSON *id = ids->child; id && n < 256; id = id->next)
            if (cJSON_IsNumber(id) && id->valueint >= 0) items[n++] = id->valueint;
    }
    return compose_template(t, items, n);
}

/* Bert / Roberta: [cls] text [sep], each given as ["token", id]. */
static ferry_status load_cls_sep(ferry_tokenizer *t, const cJSON *node) {
    const cJSON *cls = member(node, "cls"), *sep = member(node, "sep");
    const cJSON *cls_id = cJSON_GetArrayItem(cls, 1), *sep_id = cJSON_GetArrayItem(sep, 1);
    if (!cJSON_IsNumber(cls_id) || !cJSON_IsNumber(sep_id))
        return ferry_fail(FERRY_ERR_FORMAT, "%s: post_processor needs \"cls\" and \"sep\"", t->source);
    int32_t items[3] = {cls_id->valueint, -1, sep_id->valueint};
    return compose_template(t, items, 3);
}

static ferry_status load_post_processor(ferry_tokenizer *t, const cJSON *node) {
    if (!node || cJSON_IsNull(node)) return FERRY_OK;
    const char *type = string_member(node, "type");
    if (type && strcmp(type, "Sequence") == 0) {
        const cJSON *list = member(node, "processors");
        for (const cJSON *item = cJSON_IsArray(list) ? list->child : NULL; item; item = item->next)
            FERRY_TRY(load_post_processor(t, item));
        return FERRY_OK;
    }
    if (type && strcmp(type, "ByteLevel") == 0) return FERRY_OK;   /* offsets only */
    if (type && strcmp(type, "TemplateProcessing") == 0) return load_template(t, node);
    if (type && (strcmp(type, "BertProcessing") == 0 || strcmp(type, "RobertaProcessing") == 0))
        return load_cls_sep(t, node);
    return ferry_fail(FERRY_ERR_UNSUPPORTED, "%s: post_processor \"%s\" is not supported (ferry "
                      "has Sequence, ByteLevel, TemplateProcessing, BertProcessing, "
                      "RobertaProcessing)", t->source, type ? type : "(no type)");
}

ferry_status tk_load_steps(ferry_tokenizer *t, const cJSON *root) {
    FERRY_TRY(load_part(t, PART_NORMALIZER, member(root, "normalizer"), &t->normalizers));
    FERRY_TRY(load_part(t, PART_PRE_TOKENIZER, member(root, "pre_tokenizer"), &t->pre_tokenizers));
    FERRY_TRY(load_part(t, PART_DECODER, member(root, "decoder"), &t->decoders));
    return load_post_processor(t, member(root, "post_processor"));
}
