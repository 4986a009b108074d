/*
 * format.h — the .ferry model file: layout, writer and reader.
 *
 * Layout (all integers little-endian):
 *   [0, 64)              preamble (ferry_preamble)
 *   [64, data_offset)    JSON manifest (config, dtype, extents, tensor table),
 *                        padded with spaces up to data_offset
 *   [data_offset, ...)   extents: the globals blob, then one blob per layer,
 *                        each starting on a FERRY_BLOB_ALIGN boundary; inside
 *                        a blob, tensors in ferry_tensor_kind order, each on
 *                        a FERRY_TENSOR_ALIGN boundary
 * Matrices are row-major [rows, cols] in the model dtype (HF's [out, in]
 * nn.Linear layout: one output row is contiguous, what a matrix-vector
 * kernel wants); norms and biases are f32.  Each tensor carries the XXH3-64
 * of its bytes.
 *
 * The layout follows from (config, dtype) alone, so a writer knows every
 * offset before any weight arrives and accepts tensors in any order: a
 * converter streams one tensor at a time.
 */
#ifndef FERRY_RUNTIME_FORMAT_H
#define FERRY_RUNTIME_FORMAT_H

#include "runtime/config.h"

#define FERRY_FILE_MAGIC "FERRYMDL"
#define FERRY_FORMAT_VERSION 1u
#define FERRY_PREAMBLE_BYTES 64u
#define FERRY_BLOB_ALIGN (2u << 20)
#define FERRY_TENSOR_ALIGN 256u

typedef struct ferry_preamble {
    char magic[8];              /* FERRY_FILE_MAGIC, no terminator */
    uint32_t format_version;
    uint32_t preamble_bytes;    /* 64 */
    uint64_t manifest_offset;   /* 64 */
    uint64_t manifest_bytes;    /* JSON text length, padding excluded */
    uint64_t manifest_xxh3;     /* XXH3-64 of the JSON text */
    uint64_t data_offset;       /* first blob; multiple of FERRY_BLOB_ALIGN */
    uint64_t file_bytes;        /* total file size */
    uint64_t reserved;
} ferry_preamble;

typedef struct ferry_tensor_entry {
    ferry_tensor_kind kind;
    int layer;                  /* -1 for global tensors */
    ferry_dtype dtype;
    uint64_t rows, cols;
    uint64_t offset;            /* absolute file offset */
    uint64_t bytes;
    uint64_t xxh3;
} ferry_tensor_entry;

/* A contiguous byte range holding the globals (layer -1) or one layer. */
typedef struct ferry_extent {
    int layer;
    uint64_t offset;            /* multiple of FERRY_BLOB_ALIGN */
    uint64_t bytes;             /* used bytes (not rounded up) */
} ferry_extent;

/* The computed layout of a file for a (config, dtype). */
typedef struct ferry_layout {
    ferry_config config;
    ferry_dtype dtype;
    uint64_t data_offset;
    uint64_t file_bytes;
    int n_tensors;
    ferry_tensor_entry *tensors;   /* globals first, then layer by layer */
    int n_extents;                 /* n_layers + 1: extents[0] globals, [1+i] layer i */
    ferry_extent *extents;
} ferry_layout;

/* Compute the layout (allocates tensors/extents; free with ferry_layout_free). */
ferry_status ferry_layout_build(const ferry_config *config, ferry_dtype dtype,
                                ferry_layout *out);
void ferry_layout_free(ferry_layout *layout);
/* Index into layout->tensors of (layer, kind), or -1 if absent. */
int ferry_layout_find(const ferry_layout *layout, int layer, ferry_tensor_kind kind);

/* ------------------------------------------------------------- writer */

typedef struct ferry_writer ferry_writer;

/* Create path + ".partial", sized to the final length.  Nothing at `path`
 * is touched until ferry_writer_finish renames the complete file over it. */
ferry_status ferry_writer_open(const char *path, const ferry_config *config, ferry_dtype dtype,
                               ferry_writer **out);
/* The layout being written (offsets, shapes, dtypes of every tensor). */
const ferry_layout *ferry_writer_layout(const ferry_writer *writer);
/* Write one tensor's bytes, already in its stored dtype and exact size. */
ferry_status ferry_writer_put(ferry_writer *writer, int layer, ferry_tensor_kind kind,
                              const void *data, size_t bytes);
/* Store an optional named blob (e.g. "tokenizer.json") in the manifest. */
ferry_status ferry_writer_put_text(ferry_writer *writer, const char *key, const char *text);
/* Check every tensor was written, write manifest and preamble, fsync, rename. */
ferry_status ferry_writer_finish(ferry_writer *writer);
/* Remove the partial file and free the writer (also after a failed finish). */
void ferry_writer_free(ferry_writer *writer);

/* ------------------------------------------------------------- reader */

typedef struct ferry_file {
    char *path;
    int fd;
    ferry_layout layout;        /* config, dtype, tensors and extents as stored */
    uint64_t file_bytes;
    char *manifest_json;        /* the manifest text (NUL-terminated) */
    int n_texts;                /* named texts (ferry_file_text) */
    struct ferry_text *texts;
} ferry_file;

/* Open and validate: magic, version, manifest checksum and JSON, config,
 * that the tensor table matches the layout for (config, dtype) and lies
 * inside the file.  A format-version mismatch says "reconvert". */
ferry_status ferry_file_open(const char *path, ferry_file **out);
void ferry_file_close(ferry_file *file);

/* Read a tensor's bytes into dst (size entry->bytes); verify its checksum
 * when verify is nonzero. */
ferry_status ferry_file_read_tensor(const ferry_file *file, const ferry_tensor_entry *entry,
                                    void *dst, int verify);

/* Check every tensor's checksum.  On a mismatch returns FERRY_ERR_CHECKSUM
 * with a message naming the tensor and sets *bad_index (else -1). */
ferry_status ferry_file_verify(const ferry_file *file, int *bad_index);

/* "layers.3.wq", "embed" */
void ferry_tensor_entry_name(const ferry_tensor_entry *entry, char *buf, size_t size);

/* A named text stored with ferry_writer_put_text, or NULL. Owned by file. */
const char *ferry_file_text(const ferry_file *file, const char *key);

/* --------------------------------------------------- synthetic weights */

/* Models named "synth:PRESET[:DTYPE[:SEED]]" (dtype f16 and seed 0 by
 * default) have no file: ferry_model_open generates the weights `ferry
 * synth --preset PRESET --dtype DTYPE --seed SEED` would write, straight
 * into memory (runtime/synth.c). */
#define FERRY_SYNTH_PREFIX "synth:"

typedef struct ferry_synth_spec {
    const ferry_preset *preset;
    ferry_dtype dtype;
    uint64_t seed;
} ferry_synth_spec;

/* Does path start with "synth:"? */
int ferry_synth_is_name(const char *path);
/* Parse a synth: name; FERRY_ERR_INVALID_ARGUMENT naming what is wrong. */
ferry_status ferry_synth_parse(const char *name, ferry_synth_spec *out);

/* The values of tensor `entry` for `seed`, in its stored dtype, into dst
 * (entry->bytes).  n_threads (1..64) share the work; the bytes do not
 * depend on it. */
void ferry_synth_fill_tensor(void *dst, const ferry_tensor_entry *entry, uint64_t seed,
                             int n_threads);
/* One per online core, at most 64. */
int ferry_synth_default_threads(void);

/* Where a model's weights come from while it loads: a .ferry file, or the
 * generator.  Counts the bytes it produced and reports them. */
typedef struct ferry_weight_source {
    const char *name;               /* the path or the synth: name, for messages */
    const ferry_layout *layout;
    const ferry_file *file;         /* NULL: synthetic */
    uint64_t synth_seed;
    int n_threads;                  /* generator threads */
    void (*on_progress)(void *user, uint64_t done_bytes, uint64_t total_bytes);
    void *progress_user;
    uint64_t done_bytes, total_bytes; /* total: set by whoever knows what will be read */
} ferry_weight_source;

/* Bytes of the tensors of one layer (-1: the globals), padding excluded:
 * what a source counts as produced when it reads them. */
uint64_t ferry_layout_tensor_bytes(const ferry_layout *layout, int layer);
/* One tensor into dst (entry->bytes); verify: check the file's checksum. */
ferry_status ferry_source_read_tensor(ferry_weight_source *source,
                                      const ferry_tensor_entry *entry, void *dst, int verify);
/* One layer's extent into dst (extents[1 + layer].bytes), laid out as in
 * the file; errors name the layer. */
ferry_status ferry_source_read_layer(ferry_weight_source *source, int layer, void *dst);

#endif /* FERRY_RUNTIME_FORMAT_H */
