/*
 * format.c — the .ferry layout and its writer.  The layout is a pure
 * function of (config, dtype): offsets of every tensor and extent, the
 * data offset and the size of the blob area.  The writer fills a
 * "<path>.partial" file tensor by tensor, in any order, and renames it into
 * place only when complete.  The reader is in format_read.c.
 *
 * The manifest is printed at finish (real checksums, fixed-width hex) into
 * the space before data_offset, which ferry_layout_build sizes from the
 * tensor count; the preamble is written last, after an fsync.
 *
 * Named texts (tokenizer.json ...) go after the last blob, 4 KiB aligned,
 * and are listed in the manifest's "texts" array (key, offset, bytes,
 * xxh3), so a large tokenizer never crowds the manifest.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <xxhash.h>

#include "runtime/format_internal.h"

static uint64_t align_up(uint64_t value, uint64_t alignment) {
    return (value + alignment - 1) / alignment * alignment;
}

void ferry_tensor_entry_name(const ferry_tensor_entry *entry, char *buf, size_t size) {
    const char *name = ferry_tensor_specs[entry->kind].name;
    if (entry->layer < 0)
        snprintf(buf, size, "%s", name);
    else
        snprintf(buf, size, "layers.%d.%s", entry->layer, name);
}

int ferry_layout_find(const ferry_layout *layout, int layer, ferry_tensor_kind kind) {
    for (int i = 0; i < layout->n_tensors; i++)
        if (layout->tensors[i].layer == layer && layout->tensors[i].kind == kind) return i;
    return -1;
}

void ferry_layout_free(ferry_layout *layout) {
    free(layout->tensors);
    free(layout->extents);
    layout->tensors = NULL;
    layout->extents = NULL;
}

/* Place the tensors of one extent (globals or one layer) starting at
 * `offset`; returns the extent's used bytes. */
static uint64_t place_extent(ferry_layout *layout, int layer, uint64_t offset) {
    const ferry_config *config = &layout->config;
    uint64_t cursor = offset;
    for (int kind = 0; kind < FERRY_TENSOR_KIND_COUNT; kind++) {
        const ferry_tensor_spec *spec = &ferry_tensor_specs[kind];
        if (spec->is_global != (layer < 0)) continue;
        if (!ferry_tensor_present(config, (ferry_tensor_kind)kind)) continue;
        ferry_tensor_entry *entry = &layout->tensors[layout->n_tensors++];
        memset(entry, 0, sizeof *entry);
        entry->kind = (ferry_tensor_kind)kind;
        entry->layer = layer;
        entry->dtype = spec->is_matrix ? layout->dtype : FERRY_DTYPE_F32;
        ferry_tensor_shape(config, entry->kind, &entry->rows, &entry->cols);
        cursor = align_up(cursor, FERRY_TENSOR_ALIGN);
        entry->offset = cursor;
        entry->bytes = entry->rows * entry->cols * ferry_dtype_bytes(entry->dtype);
        cursor += entry->bytes;
    }
    return cursor - offset;
}

static void place_all(ferry_layout *layout, uint64_t data_offset) {
    layout->n_tensors = 0;
    layout->data_offset = data_offset;
    uint64_t cursor = data_offset;
    for (int e = 0; e < layout->n_extents; e++) {
        ferry_extent *extent = &layout->extents[e];
        extent->layer = e - 1;
        extent->offset = cursor;
        extent->bytes = place_extent(layout, extent->layer, cursor);
        cursor = align_up(cursor + extent->bytes, FERRY_BLOB_ALIGN);
    }
    layout->file_bytes = cursor;
}

ferry_status ferry_layout_build(const ferry_config *config, ferry_dtype dtype,
                                ferry_layout *out) {
    memset(out, 0, sizeof *out);
    FERRY_TRY(ferry_config_validate(config));
    if ((unsigned)dtype >= FERRY_DTYPE_COUNT)
        return ferry_fail(FERRY_ERR_FORMAT, "unknown weight dtype %d", (int)dtype);
    out->config = *config;
    out->dtype = dtype;
    out->n_extents = config->n_layers + 1;
    int max_tensors = FERRY_TENSOR_KIND_COUNT * out->n_extents;
    ferry_status status;
    FERRY_TRY_GOTO(ferry_calloc((size_t)max_tensors, sizeof *out->tensors, "tensor table",
                                (void **)&out->tensors));
    FERRY_TRY_GOTO(ferry_calloc((size_t)out->n_extents, sizeof *out->extents, "extent table",
                                (void **)&out->extents));

    /* The manifest must fit before the first blob.  Its space follows from
     * the counts alone, never from how the JSON printer formats numbers, so
     * every ferry computes the same data offset for a (config, dtype): a
     * tensor entry prints in well under MANIFEST_BYTES_PER_TENSOR (names,
     * 20-digit offsets, fixed-width 16-hex-digit checksums), an extent in
     * under MANIFEST_BYTES_PER_EXTENT; the config object and the texts list
     * share MANIFEST_FIXED_BYTES.  Every model up to ~4000 tensors gets
     * 2 MiB.  ferry_writer_finish checks the real manifest fits. */
    enum {
        MANIFEST_BYTES_PER_TENSOR = 384,
        MANIFEST_BYTES_PER_EXTENT = 128,
        MANIFEST_FIXED_BYTES = 64 << 10,
    };
    uint64_t tensor_count = 0;
    for (int kind = 0; kind < FERRY_TENSOR_KIND_COUNT; kind++)
        if (ferry_tensor_present(config, (ferry_tensor_kind)kind))
            tensor_count += ferry_tensor_specs[kind].is_global ? 1 : (uint64_t)config->n_layers;
    uint64_t reserve = FERRY_PREAMBLE_BYTES + MANIFEST_FIXED_BYTES +
                       tensor_count * MANIFEST_BYTES_PER_TENSOR +
                       (uint64_t)out->n_extents * MANIFEST_BYTES_PER_EXTENT;
    place_all(out, align_up(reserve, FERRY_BLOB_ALIGN));
    return FERRY_OK;
fail:
    ferry_layout_free(out);
    return status;
}

/* -------------------------------------------------------- manifest text */

ferry_status ferry_manifest_print(const ferry_layout *layout, const ferry_text *texts,
                                  int n_texts, char **out) {
    *out = NULL;
    cJSON *root = cJSON_CreateObject();
    if (!root) return ferry_fail(FERRY_ERR_NO_MEMORY, "out of memory building the manifest");
    cJSON_AddStringToObject(root, "format", "ferry");
    cJSON_AddNumberToObject(root, "format_version", FERRY_FORMAT_VERSION);
    cJSON_AddItemToObject(root, "config", ferry_config_to_json(&layout->config));
    cJSON_AddStringToObject(root, "dtype", ferry_dtype_name(layout->dtype));
    cJSON_AddNumberToObject(root, "alignment", FERRY_BLOB_ALIGN);
    cJSON *extents = cJSON_AddArrayToObject(root, "extents");
    for (int e = 0; e < layout->n_extents; e++) {
        cJSON *item = cJSON_CreateObject();
        cJSON_AddNumberToObject(item, "layer", layout->extents[e].layer);
        cJSON_AddNumberToObject(item, "offset", (double)layout->extents[e].offset);
        cJSON_AddNumberToObject(item, "bytes", (double)layout->extents[e].bytes);
        cJSON_AddItemToArray(extents, item);
    }
    cJSON *tensors = cJSON_AddArrayToObject(root, "tensors");
    for (int i = 0; i < layout->n_tensors; i++) {
        const ferry_tensor_entry *entry = &layout->tensors[i];
        char name[64], hash[17];
        ferry_tensor_entry_name(entry, name, sizeof name);
        snprintf(hash, sizeof hash, "%016llx", (unsigned long long)entry->xxh3);
        cJSON *item = cJSON_CreateObject();
        cJSON_AddStringToObject(item, "name", name);
        cJSON_AddStringToObject(item, "dtype", ferry_dtype_name(entry->dtype));
        cJSON *shape = cJSON_AddArrayToObject(item, "shape");
        cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)entry->rows));
        if (ferry_tensor_specs[entry->kind].is_matrix)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)entry->cols));
        cJSON_AddNumberToObject(item, "layer", entry->layer);
        cJSON_AddNumberToObject(item, "offset", (double)entry->offset);
        cJSON_AddNumberToObject(item, "bytes", (double)entry->bytes);
        cJSON_AddStringToObject(item, "xxh3", hash);
        cJSON_AddItemToArray(tensors, item);
    }
    cJSON *text_list = cJSON_AddArrayToObject(root, "texts");
    for (int i = 0; i < n_texts; i++) {
        char hash[17];
        snprintf(hash, sizeof hash, "%016llx", (unsigned long long)texts[i].xxh3);
        cJSON *item = cJSON_CreateObject();
        cJSON_AddStringToObject(item, "key", texts[i].key);
        cJSON_AddNumberToObject(item, "offset", (double)texts[i].offset);
        cJSON_AddNumberToObject(item, "bytes", (double)texts[i].bytes);
        cJSON_AddStringToObject(item, "xxh3", hash);
        cJSON_AddItemToArray(text_list, item);
    }
    *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!*out) return ferry_fail(FERRY_ERR_NO_MEMORY, "out of memory printing the manifest");
    return FERRY_OK;
}

/* --------------------------------------------------------------- writer */

struct ferry_writer {
    char *path;
    char *partial_path;
    int fd;
    ferry_layout layout;
    unsigned char *written;     /* per tensor */
    ferry_text *texts;
    int n_texts;
    int finished;
};

ferry_status ferry_writer_open(const char *path, const ferry_config *config, ferry_dtype dtype,
                               ferry_writer **out) {
    *out = NULL;
    ferry_status status;
    ferry_writer *writer = NULL;
    FERRY_TRY(ferry_calloc(1, sizeof *writer, "writer", (void **)&writer));
    writer->fd = -1;
    FERRY_TRY_GOTO(ferry_layout_build(config, dtype, &writer->layout));
    FERRY_TRY_GOTO(ferry_calloc((size_t)writer->layout.n_tensors, 1, "writer",
                                (void **)&writer->written));
    writer->path = strdup(path);
    size_t partial_bytes = strlen(path) + sizeof ".partial";
    FERRY_TRY_GOTO(ferry_malloc(partial_bytes, "path", (void **)&writer->partial_path));
    snprintf(writer->partial_path, partial_bytes, "%s.partial", path);
    if (!writer->path) {
        status = ferry_fail(FERRY_ERR_NO_MEMORY, "out of memory");
        goto fail;
    }
    writer->fd = open(writer->partial_path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (writer->fd < 0) {
        status = ferry_fail(FERRY_ERR_IO, "%s: cannot create: %s", writer->partial_path,
                            strerror(errno));
        goto fail;
    }
    /* Reserve the space now so a full disk fails at once, not hours in. */
    uint64_t file_bytes = writer->layout.file_bytes;
    if (fallocate(writer->fd, 0, 0, (off_t)file_bytes) != 0 && errno != EOPNOTSUPP &&
        errno != ENOSYS) {
        status = ferry_fail(FERRY_ERR_IO, "%s: cannot reserve %.2f GB: %s", writer->partial_path,
                            (double)file_bytes / 1e9, strerror(errno));
        goto fail;
    }
    if (ftruncate(writer->fd, (off_t)file_bytes) != 0) {
        status = ferry_fail(FERRY_ERR_IO, "%s: cannot size to %llu bytes: %s",
                            writer->partial_path, (unsigned long long)file_bytes,
                            strerror(errno));
        goto fail;
    }
    *out = writer;
    return FERRY_OK;
fail:
    ferry_writer_free(writer);
    return status;
}

const ferry_layout *ferry_writer_layout(const ferry_writer *writer) { return &writer->layout; }

static ferry_status check_unfinished(const ferry_writer *writer) {
    if (writer->finished)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: the file is already finished",
                          writer->path);
    return FERRY_OK;
}

ferry_status ferry_writer_put(ferry_writer *writer, int layer, ferry_tensor_kind kind,
                              const void *data, size_t bytes) {
    FERRY_TRY(check_unfinished(writer));
    int index = ferry_layout_find(&writer->layout, layer, kind);
    if (index < 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "%s: this model has no tensor %s in layer %d", writer->path,
                          (unsigned)kind < FERRY_TENSOR_KIND_COUNT ? ferry_tensor_specs[kind].name
                                                                   : "?",
                          layer);
    ferry_tensor_entry *entry = &writer->layout.tensors[index];
    char name[64];
    ferry_tensor_entry_name(entry, name, sizeof name);
    if (bytes != entry->bytes)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: tensor %s has %zu bytes, expected %llu",
                          writer->path, name, bytes, (unsigned long long)entry->bytes);
    FERRY_TRY(ferry_pwrite_all(writer->fd, data, bytes, entry->offset, writer->partial_path));
    entry->xxh3 = XXH3_64bits(data, bytes);
    writer->written[index] = 1;
    return FERRY_OK;
}

ferry_status ferry_writer_put_text(ferry_writer *writer, const char *key, const char *text) {
    FERRY_TRY(check_unfinished(writer));
    for (int i = 0; i < writer->n_texts; i++)
        if (strcmp(writer->texts[i].key, key) == 0)
            return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: text %s is stored twice",
                              writer->path, key);
    ferry_text *grown = realloc(writer->texts, sizeof *grown * (size_t)(writer->n_texts + 1));
    if (!grown) return ferry_fail(FERRY_ERR_NO_MEMORY, "out of memory storing text %s", key);
    writer->texts = grown;
    ferry_text *slot = &writer->texts[writer->n_texts];
    memset(slot, 0, sizeof *slot);
    slot->key = strdup(key);
    slot->text = strdup(text);
    if (!slot->key || !slot->text) {
        free(slot->key);
        free(slot->text);
        return ferry_fail(FERRY_ERR_NO_MEMORY, "out of memory storing text %s", key);
    }
    slot->bytes = strlen(text);
    slot->xxh3 = XXH3_64bits(text, slot->bytes);
    writer->n_texts++;
    return FERRY_OK;
}

static void encode_le64(unsigned char *out, uint64_t value) {
    for (int i = 0; i < 8; i++) out[i] = (unsigned char)(value >> (8 * i));
}

void ferry_preamble_encode(const ferry_preamble *preamble, unsigned char out[FERRY_PREAMBLE_BYTES]) {
    memset(out, 0, FERRY_PREAMBLE_BYTES);
    memcpy(out, preamble->magic, 8);
    for (int i = 0; i < 4; i++) {
        out[8 + i] = (unsigned char)(preamble->format_version >> (8 * i));
        out[12 + i] = (unsigned char)(preamble->preamble_bytes >> (8 * i));
    }
    encode_le64(out + 16, preamble->manifest_offset);
    encode_le64(out + 24, preamble->manifest_bytes);
    encode_le64(out + 32, preamble->manifest_xxh3);
    encode_le64(out + 40, preamble->data_offset);
    encode_le64(out + 48, preamble->file_bytes);
    encode_le64(out + 56, preamble->reserved);
}

static ferry_status sync_directory_of(const char *path) {
    char *copy = strdup(path);
    if (!copy) return ferry_fail(FERRY_ERR_NO_MEMORY, "out of memory");
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    return FERRY_OK;
}

ferry_status ferry_writer_finish(ferry_writer *writer) {
    FERRY_TRY(check_unfinished(writer));
    ferry_layout *layout = &writer->layout;
    for (int i = 0; i < layout->n_tensors; i++) {
        if (!writer->written[i]) {
            char name[64];
            ferry_tensor_entry_name(&layout->tensors[i], name, sizeof name);
            return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: tensor %s was never written",
                              writer->path, name);
        }
    }
    uint64_t cursor = layout->file_bytes;
    for (int i = 0; i < writer->n_texts; i++) {
        ferry_text *text = &writer->texts[i];
        text->offset = cursor;
        FERRY_TRY(ferry_pwrite_all(writer->fd, text->text, text->bytes, cursor,
                                   writer->partial_path));
        cursor = align_up(cursor + text->bytes, FERRY_TEXT_ALIGN);
    }
    char *manifest = NULL;
    FERRY_TRY(ferry_manifest_print(layout, writer->texts, writer->n_texts, &manifest));
    size_t manifest_bytes = strlen(manifest);
    ferry_status status = FERRY_OK;
    if (FERRY_PREAMBLE_BYTES + manifest_bytes > layout->data_offset) {
        status = ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                            "%s: manifest of %zu bytes does not fit before the first blob "
                            "(%llu bytes reserved): too many texts",
                            writer->path, manifest_bytes,
                            (unsigned long long)layout->data_offset);
        goto fail;
    }
    /* Pad the manifest region with spaces: valid JSON whitespace. */
    size_t region = (size_t)(layout->data_offset - FERRY_PREAMBLE_BYTES);
    char *padded = NULL;
    FERRY_TRY_GOTO(ferry_malloc(region, "manifest", (void **)&padded));
    memset(padded, ' ', region);
    memcpy(padded, manifest, manifest_bytes);
    status = ferry_pwrite_all(writer->fd, padded, region, FERRY_PREAMBLE_BYTES,
                              writer->partial_path);
    free(padded);
    if (status != FERRY_OK) goto fail;

    ferry_preamble preamble = {
        .format_version = FERRY_FORMAT_VERSION,
        .preamble_bytes = FERRY_PREAMBLE_BYTES,
        .manifest_offset = FERRY_PREAMBLE_BYTES,
        .manifest_bytes = manifest_bytes,
        .manifest_xxh3 = XXH3_64bits(manifest, manifest_bytes),
        .data_offset = layout->data_offset,
        .file_bytes = cursor,
    };
    memcpy(preamble.magic, FERRY_FILE_MAGIC, 8);
    unsigned char encoded[FERRY_PREAMBLE_BYTES];
    ferry_preamble_encode(&preamble, encoded);
    if (ftruncate(writer->fd, (off_t)cursor) != 0) {
        status = ferry_fail(FERRY_ERR_IO, "%s: cannot size file: %s", writer->partial_path,
                            strerror(errno));
        goto fail;
    }
    /* The preamble goes last, after the data is on disk, so a crash leaves
     * a file without a valid magic. */
    if (fsync(writer->fd) != 0) {
        status = ferry_fail(FERRY_ERR_IO, "%s: fsync failed: %s", writer->partial_path,
                            strerror(errno));
        goto fail;
    }
    FERRY_TRY_GOTO(ferry_pwrite_all(writer->fd, encoded, sizeof encoded, 0, writer->partial_path));
    if (fsync(writer->fd) != 0 || close(writer->fd) != 0) {
        writer->fd = -1;
        status = ferry_fail(FERRY_ERR_IO, "%s: fsync/close failed: %s", writer->partial_path,
                            strerror(errno));
        goto fail;
    }
    writer->fd = -1;
    if (rename(writer->partial_path, writer->path) != 0) {
        status = ferry_fail(FERRY_ERR_IO, "cannot rename %s to %s: %s", writer->partial_path,
                            writer->path, strerror(errno));
        goto fail;
    }
    writer->finished = 1;
    sync_directory_of(writer->path);
fail:
    free(manifest);
    return status;
}

void ferry_writer_free(ferry_writer *writer) {
    if (!writer) return;
    if (writer->fd >= 0) close(writer->fd);
    if (!writer->finished && writer->partial_path) unlink(writer->partial_path);
    for (int i = 0; i < writer->n_texts; i++) {
        free(writer->texts[i].key);
        free(writer->texts[i].text);
    }
    free(writer->texts);
    ferry_layout_free(&writer->layout);
    free(writer->written);
    free(writer->path);
    free(writer->partial_path);
    free(writer);
}
