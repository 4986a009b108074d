/*
 * format_internal.h — what format.c (layout, writer), format_read.c
 * (reader) and `ferry info` (verify with progress) share; nobody else
 * needs it.
 */
#ifndef FERRY_RUNTIME_FORMAT_INTERNAL_H
#define FERRY_RUNTIME_FORMAT_INTERNAL_H

#include "runtime/format.h"

/* Named texts are stored after the last blob, each starting on this
 * boundary; the file ends at the last one's end rounded up to it. */
#define FERRY_TEXT_ALIGN 4096u

/* A named text stored after the last blob. */
typedef struct ferry_text {
    char *key;
    char *text;                 /* NUL-terminated */
    uint64_t offset;
    uint64_t bytes;
    uint64_t xxh3;
} ferry_text;

/* The manifest JSON for a layout (checksums as stored in its entries). */
ferry_status ferry_manifest_print(const ferry_layout *layout, const ferry_text *texts,
                                  int n_texts, char **out);
/* ferry_file_verify, calling progress(context, tensors done, total, bytes
 * done) after each tensor (progress may be NULL). */
typedef void (*ferry_verify_progress_fn)(void *context, int n_done, int n_total,
                                         uint64_t done_bytes);
ferry_status ferry_file_verify_progress(const ferry_file *file, int *bad_index,
                                        ferry_verify_progress_fn progress, void *context);
void ferry_preamble_encode(const ferry_preamble *preamble,
                           unsigned char out[FERRY_PREAMBLE_BYTES]);

#endif
