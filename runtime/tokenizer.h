/*
 * tokenizer.h — text <-> token ids with the rules of an HF tokenizer.json:
 * BPE (byte-level like GPT-2 / Llama-3 / Qwen2, or sentencepiece-style like
 * Llama-2 / Mistral with byte fallback), added and special tokens,
 * normalizers, pre-tokenizers, the BOS template and the decoders.  The goal
 * is the ids and text HF `tokenizers` gives, exactly; a component ferry
 * lacks is refused at load time with FERRY_ERR_UNSUPPORTED naming it.
 * Internal to ferry (tools and tests use it; embedders do not).
 * A loaded tokenizer is read-only: encode/decode may run on many threads.
 */
#ifndef FERRY_RUNTIME_TOKENIZER_H
#define FERRY_RUNTIME_TOKENIZER_H

#include <stdio.h>

#include "base/base.h"

typedef struct ferry_tokenizer ferry_tokenizer;

/* A growable list of token ids (free with ferry_token_list_free). */
typedef struct ferry_token_list {
    int32_t *ids;
    size_t count;
    size_t capacity;
} ferry_token_list;

ferry_status ferry_token_list_push(ferry_token_list *list, int32_t id);
void ferry_token_list_free(ferry_token_list *list);

/* Parse tokenizer.json text.  source names it in error messages (a path,
 * "model.ferry: tokenizer.json"). */
ferry_status ferry_tokenizer_from_json(const char *json_text, size_t json_bytes,
                                       const char *source, ferry_tokenizer **out);
/* Read and parse a tokenizer.json file. */
ferry_status ferry_tokenizer_load(const char *path, ferry_tokenizer **out);
void ferry_tokenizer_free(ferry_tokenizer *tokenizer);

/* Append the ids of text (UTF-8, text_bytes long, may hold NULs) to out.
 * add_special_tokens applies the post-processor template (e.g. BOS).
 * Invalid UTF-8 is FERRY_ERR_INVALID_ARGUMENT naming the byte offset. */
ferry_status ferry_tokenizer_encode(const ferry_tokenizer *tokenizer, const char *text,
                                    size_t text_bytes, int add_special_tokens,
                                    ferry_token_list *out);

/* The text of ids through the decoders, malloc'd and NUL-terminated (the
 * caller frees *out_text; *out_bytes excludes the NUL).  Special tokens
 * are left out when skip_special_tokens; ids the tokenizer lacks are
 * skipped, as HF does. */
ferry_status ferry_tokenizer_decode(const ferry_tokenizer *tokenizer, const int32_t *ids,
                                    size_t n_ids, int skip_special_tokens, char **out_text,
                                    size_t *out_bytes);

/* One more than the largest id (vocabulary and added tokens). */
int32_t ferry_tokenizer_vocab_size(const ferry_tokenizer *tokenizer);
/* The stored text of a token (added tokens first, as HF), or NULL. */
const char *ferry_tokenizer_token_text(const ferry_tokenizer *tokenizer, int32_t id);
/* The id of a token text (added tokens first), or -1. */
int32_t ferry_tokenizer_token_id(const ferry_tokenizer *tokenizer, const char *text);
/* Is id an added token marked special? */
int ferry_tokenizer_is_special(const ferry_tokenizer *tokenizer, int32_t id);

/* JSON lines carry texts with NUL and other control characters, which
 * cJSON's NUL-terminated strings lose; these keep every byte. */
/* The string value of top-level `key` in the JSON object text (malloc'd,
 * NUL-terminated, *out_bytes counts embedded NULs).  FERRY_ERR_FORMAT when
 * the line is not an object with that key as a string. */
ferry_status ferry_json_get_string(const char *json_text, const char *key, char **out,
                                   size_t *out_bytes);
/* Write s as a JSON string literal (quotes included). */
void ferry_json_write_string(FILE *out, const char *s, size_t bytes);

#endif /* FERRY_RUNTIME_TOKENIZER_H */
