/*
 * convert.h — HF checkpoint (config.json + safetensors) to a .ferry file,
 * streaming one tensor at a time.  Used by `ferry convert`; the work is
 * here so embedders and tests can call it without the CLI.
 */
#ifndef FERRY_RUNTIME_CONVERT_H
#define FERRY_RUNTIME_CONVERT_H

#include "base/base.h"

typedef struct ferry_convert_progress {
    int n_tensors_done;
    int n_tensors;
    int n_layers_done;
    int n_layers;
    uint64_t bytes_read;        /* from the checkpoint so far */
    uint64_t elapsed_ns;
} ferry_convert_progress;

/* Called after every tensor; a nonzero return stops the conversion
 * (FERRY_ERR_CANCELLED, partial output removed): how Ctrl-C is honoured. */
typedef int (*ferry_convert_progress_fn)(const ferry_convert_progress *progress, void *user);

typedef struct ferry_convert_options {
    int keep_dtype;             /* nonzero: matrices keep the checkpoint's dtype */
    ferry_dtype dtype;          /* else matrices are stored in this dtype (vectors: f32) */
    ferry_convert_progress_fn progress;   /* optional */
    void *progress_user;
} ferry_convert_options;

/* Convert the checkpoint in hf_dir to out_path.  The output appears only
 * when complete (written as out_path + ".partial", then renamed); on any
 * failure the partial file is removed and an existing out_path is left
 * untouched.  Holds at most one tensor (and its converted copy) in memory. */
ferry_status ferry_convert_hf(const char *hf_dir, const char *out_path,
                              const ferry_convert_options *options);

#endif /* FERRY_RUNTIME_CONVERT_H */
