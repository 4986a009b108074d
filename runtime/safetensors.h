/*
 * safetensors.h — reading HF checkpoints: one .safetensors file (validated
 * header, tensor lookup, pread of a tensor's bytes) and a checkpoint
 * directory (model.safetensors, or shards named by
 * model.safetensors.index.json, each opened once, on first use).
 * Reads only; knows nothing of ferry's own format or of model shapes.
 */
#ifndef FERRY_RUNTIME_SAFETENSORS_H
#define FERRY_RUNTIME_SAFETENSORS_H

#include "base/base.h"

enum {
    FERRY_SAFETENSORS_MAX_DIMS = 8,
};
/* A header longer than this is refused (real ones are a few hundred KiB). */
#define FERRY_SAFETENSORS_MAX_HEADER_BYTES (100ull << 20)

typedef struct ferry_safetensors_tensor {
    char *name;
    ferry_dtype dtype;
    int n_dims;
    uint64_t shape[FERRY_SAFETENSORS_MAX_DIMS];
    uint64_t n_elements;
    uint64_t offset;            /* absolute file offset of the first byte */
    uint64_t bytes;
} ferry_safetensors_tensor;

typedef struct ferry_safetensors_file {
    char *path;
    int fd;
    uint64_t file_bytes;
    uint64_t data_offset;       /* 8 + header length */
    int n_tensors;
    ferry_safetensors_tensor *tensors;   /* sorted by name */
} ferry_safetensors_file;

/* Open and validate a .safetensors file: header length bounds, JSON,
 * dtypes (F32, F16, BF16), shapes, byte sizes, offsets inside the data
 * section, no overlaps, no duplicate names.  Errors name the file and the
 * tensor (FERRY_ERR_FORMAT, FERRY_ERR_UNSUPPORTED for other dtypes). */
ferry_status ferry_safetensors_open(const char *path, ferry_safetensors_file **out);
void ferry_safetensors_close(ferry_safetensors_file *file);

/* The tensor called name, or NULL. */
const ferry_safetensors_tensor *ferry_safetensors_find(const ferry_safetensors_file *file,
                                                       const char *name);

/* Read bytes [offset, offset + bytes) of a tensor into dst. */
ferry_status ferry_safetensors_read_range(const ferry_safetensors_file *file,
                                          const ferry_safetensors_tensor *tensor,
                                          uint64_t offset, void *dst, size_t bytes);
/* Read a whole tensor; dst_bytes must be at least tensor->bytes. */
ferry_status ferry_safetensors_read(const ferry_safetensors_file *file,
                                    const ferry_safetensors_tensor *tensor, void *dst,
                                    size_t dst_bytes);

/* "F32[320, 64]" for messages. */
void ferry_safetensors_describe(const ferry_safetensors_tensor *tensor, char *buf, size_t size);

/* ------------------------------------------------------- checkpoints */

/* An HF checkpoint directory: model.safetensors, or the shards listed in
 * model.safetensors.index.json (every listed shard must exist; each is
 * opened the first time one of its tensors is asked for). */
typedef struct ferry_checkpoint ferry_checkpoint;

ferry_status ferry_checkpoint_open(const char *dir, ferry_checkpoint **out);
void ferry_checkpoint_close(ferry_checkpoint *checkpoint);

/* Every tensor name the checkpoint lists (sorted). */
int ferry_checkpoint_n_names(const ferry_checkpoint *checkpoint);
const char *ferry_checkpoint_name(const ferry_checkpoint *checkpoint, int index);

/* Find a tensor by name.  Not listed: FERRY_OK with *out_tensor = NULL.
 * Listed in the index but absent from its shard, or a bad shard: an error. */
ferry_status ferry_checkpoint_find(ferry_checkpoint *checkpoint, const char *name,
                                   const ferry_safetensors_file **out_file,
                                   const ferry_safetensors_tensor **out_tensor);

/* A whole small file (config.json, tokenizer.json, an index) as a
 * malloc'd NUL-terminated string; more than max_bytes is an error. */
ferry_status ferry_read_text_file(const char *path, uint64_t max_bytes, char **out_text,
                                  size_t *out_bytes);

/* dir + "/" + name, malloc'd (NULL when out of memory). */
char *ferry_path_join(const char *dir, const char *name);

#endif /* FERRY_RUNTIME_SAFETENSORS_H */
