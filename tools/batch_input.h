/*
 * batch_input.h — the requests of `ferry batch`: its options, one request
 * per input line (defaults from the options, overrides from the line), and
 * reading the input file with every bad line reported by number.
 */
#ifndef FERRY_TOOLS_BATCH_INPUT_H
#define FERRY_TOOLS_BATCH_INPUT_H

#include <stddef.h>

#include "runtime/batch.h"

typedef struct batch_options {
    const char *model_path, *input_path, *output_path, *tokenizer_path, *backend;
    int batch, n_threads, max_new_tokens, max_context, prefill_tokens, strict, ignore_eos;
    int admission_window;               /* 0: every request of the input */
    ferry_sampling sampling;
} batch_options;

typedef struct request_line {
    char *id_json;              /* the id as compact JSON, written back as it came */
    int32_t *prompt;
    int n_prompt;
    int max_new_tokens;
    ferry_sampling sampling;
    int ignore_eos;
    char **stops;               /* stop strings */
    int n_stops;
} request_line;

/* Read opts->input_path: requests whose id is not in done, in file order.
 * Bad lines and duplicate ids are reported on stderr with their line
 * number and skipped (fatal with opts->strict).  *tokenizer is opened when
 * a line has a "prompt" (or for decoding, when the model has one).
 * Returns 0, or -1 after printing why. */
int batch_read_input(const batch_options *opts, const ferry_id_set *done, request_line **out,
                     size_t *n_out, size_t *n_skipped_done, struct ferry_tokenizer **tokenizer);

void request_line_free(request_line *request);

#endif
