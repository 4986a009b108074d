/*
 * format_read.c — opening a .ferry file and trusting nothing in it: the
 * preamble, the manifest's checksum and JSON, the config, and that the
 * tensor table is exactly the layout (config, dtype) implies and lies
 * inside the file.  Also per-tensor reads and checksum verification.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <xxhash.h>

#include "runtime/format_internal.h"

static uint64_t decode_le64(const unsigned char *in) {
    uint64_t value = 0;
    for (int i = 7; i >= 0; i--) value = (value << 8) | in[i];
    return value;
}

static uint32_t decode_le32(const unsigned char *in) {
    return (uint32_t)in[0] | (uint32_t)in[1] << 8 | (uint32_t)in[2] << 16 | (uint32_t)in[3] << 24;
}

static ferry_status read_preamble(ferry_file *file, uint64_t actual_bytes,
                                  ferry_preamble *out) {
    const char *path = file->path;
    if (actual_bytes < FERRY_PREAMBLE_BYTES)
        return ferry_fail(FERRY_ERR_FORMAT, "%s: %llu bytes is too short for a .ferry file", path,
                          (unsigned long long)actual_bytes);
    unsigned char raw[FERRY_PREAMBLE_BYTES];
    FERRY_TRY(ferry_pread_all(file->fd, raw, sizeof raw, 0, path, FERRY_ERR_FORMAT));
    memcpy(out->magic, raw, 8);
    if (memcmp(out->magic, FERRY_FILE_MAGIC, 8) != 0)
        return ferry_fail(FERRY_ERR_FORMAT,
                          "%s: not a .ferry file (bad magic; an unfinished conversion?)", path);
    out->format_version = decode_le32(raw + 8);
    out->preamble_bytes = decode_le32(raw + 12);
    out->manifest_offset = decode_le64(raw + 16);
    out->manifest_bytes = decode_le64(raw + 24);
    out->manifest_xxh3 = decode_le64(raw + 32);
    out->data_offset = decode_le64(raw + 40);
    out->file_bytes = decode_le64(raw + 48);
    out->reserved = decode_le64(raw + 56);
    if (out->format_version != FERRY_FORMAT_VERSION)
        return ferry_fail(FERRY_ERR_FORMAT,
                          "%s: format version %u, this ferry reads version %u: reconvert the "
                          "model with this ferry's `ferry convert` (or `ferry synth`)",
                          path, out->format_version, FERRY_FORMAT_VERSION);
    if (out->preamble_bytes != FERRY_PREAMBLE_BYTES ||
        out->manifest_offset != FERRY_PREAMBLE_BYTES || out->data_offset == 0 ||
        out->data_offset % FERRY_BLOB_ALIGN != 0 || out->data_offset > actual_bytes ||
        out->manifest_bytes == 0 || out->reserved != 0 ||
        out->manifest_bytes > out->data_offset - FERRY_PREAMBLE_BYTES)
        return ferry_fail(FERRY_ERR_FORMAT, "%s: corrupt preamble (manifest %llu bytes, data at %llu)",
                          path, (unsigned long long)out->manifest_bytes,
                          (unsigned long long)out->data_offset);
    if (out->file_bytes != actual_bytes)
        return ferry_fail(FERRY_ERR_FORMAT,
                          "%s: file is %llu bytes but its preamble says %llu: truncated or "
                          "damaged",
                          path, (unsigned long long)actual_bytes,
                          (unsigned long long)out->file_bytes);
    return FERRY_OK;
}

static ferry_status parse_hex64(const char *text, uint64_t *out) {
    if (!text || strlen(text) != 16) return FERRY_ERR_FORMAT;
    char *end = NULL;
    *out = strtoull(text, &end, 16);
    return (*end == '\0') ? FERRY_OK : FERRY_ERR_FORMAT;
}

static double number_of(const cJSON *object, const char *key) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);
    return cJSON_IsNumber(item) ? item->valuedouble : -1.0;
}

/* "shape": [rows, cols] for matrices, [rows] for vectors. */
static int shape_matches(const cJSON *shape, const ferry_tensor_entry *entry) {
    int is_matrix = ferry_tensor_specs[entry->kind].is_matrix;
    if (!cJSON_IsArray(shape) || cJSON_GetArraySize(shape) != (is_matrix ? 2 : 1)) return 0;
    const cJSON *rows = cJSON_GetArrayItem(shape, 0), *cols = cJSON_GetArrayItem(shape, 1);
    return cJSON_IsNumber(rows) && rows->valuedouble == (double)entry->rows &&
           (!is_matrix || (cJSON_IsNumber(cols) && cols->valuedouble == (double)entry->cols));
}

/* Is the manifest's list an array of exactly `expected` items? */
static ferry_status check_list_length(const ferry_file *file, const cJSON *list,
                                      const char *what, int expected) {
    int actual = cJSON_IsArray(list) ? cJSON_GetArraySize(list) : 0;
    if (!cJSON_IsArray(list) || actual != expected)
        return ferry_fail(FERRY_ERR_FORMAT, "%s: manifest lists %d %s, the model needs %d",
                          file->path, actual, what, expected);
    return FERRY_OK;
}

/* Does a manifest item say (layer, offset, bytes)? */
static int placed_at(const cJSON *item, int layer, uint64_t offset, uint64_t bytes) {
    return number_of(item, "layer") == layer && number_of(item, "offset") == (double)offset &&
           number_of(item, "bytes") == (double)bytes;
}

/* The manifest's extent list must be the layout's, blob for blob. */
static ferry_status check_extents(ferry_file *file, const cJSON *extents) {
    const ferry_layout *layout = &file->layout;
    FERRY_TRY(check_list_length(file, extents, "extents", layout->n_extents));
    int index = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, extents) {
        const ferry_extent *extent = &layout->extents[index++];
        if (!placed_at(item, extent->layer, extent->offset, extent->bytes))
            return ferry_fail(FERRY_ERR_FORMAT,
                              "%s: extent %d (layer %d) is not %llu bytes at %llu as the "
                              "config implies",
                              file->path, index - 1, extent->layer,
                              (unsigned long long)extent->bytes,
                              (unsigned long long)extent->offset);
    }
    return FERRY_OK;
}

/* The manifest's tensor list must be the layout, entry for entry. */
static ferry_status check_tensors(ferry_file *file, const cJSON *tensors) {
    ferry_layout *layout = &file->layout;
    FERRY_TRY(check_list_length(file, tensors, "tensors", layout->n_tensors));
    int index = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, tensors) {
        ferry_tensor_entry *entry = &layout->tensors[index++];
        char name[64];
        ferry_tensor_entry_name(entry, name, sizeof name);
        const cJSON *name_item = cJSON_GetObjectItemCaseSensitive(item, "name");
        const cJSON *dtype_item = cJSON_GetObjectItemCaseSensitive(item, "dtype");
        int same = cJSON_IsString(name_item) && strcmp(name_item->valuestring, name) == 0 &&
                   cJSON_IsString(dtype_item) &&
                   strcmp(dtype_item->valuestring, ferry_dtype_name(entry->dtype)) == 0 &&
                   shape_matches(cJSON_GetObjectItemCaseSensitive(item, "shape"), entry) &&
                   placed_at(item, entry->layer, entry->offset, entry->bytes);
        if (!same)
            return ferry_fail(FERRY_ERR_FORMAT,
                              "%s: tensor table entry %d is not %s (%s, %llu bytes at %llu) as "
                              "the config implies",
                              file->path, index - 1, name, ferry_dtype_name(entry->dtype),
                              (unsigned long long)entry->bytes,
                              (unsigned long long)entry->offset);
        const cJSON *hash = cJSON_GetObjectItemCaseSensitive(item, "xxh3");
        if (parse_hex64(cJSON_IsString(hash) ? hash->valuestring : NULL, &entry->xxh3) != FERRY_OK)
            return ferry_fail(FERRY_ERR_FORMAT, "%s: tensor %s has a bad checksum field",
                              file->path, name);
        if (entry->offset + entry->bytes > file->file_bytes)
            return ferry_fail(FERRY_ERR_FORMAT, "%s: tensor %s ends past the end of the file",
                              file->path, name);
    }
    return FERRY_OK;
}

/* Reads the named texts; *texts_end becomes the end of the last one,
 * rounded up as the writer does (unchanged when there are none). */
static ferry_status read_texts(ferry_file *file, const cJSON *texts, uint64_t *texts_end) {
    if (!texts) return FERRY_OK;
    if (!cJSON_IsArray(texts)) return ferry_fail(FERRY_ERR_FORMAT, "%s: bad texts list", file->path);
    int n = cJSON_GetArraySize(texts);
    FERRY_TRY(ferry_calloc((size_t)n, sizeof *file->texts, "texts", (void **)&file->texts));
    const cJSON *item;
    cJSON_ArrayForEach(item, texts) {
        ferry_text *text = &file->texts[file->n_texts];
        const cJSON *key = cJSON_GetObjectItemCaseSensitive(item, "key");
        const cJSON *hash = cJSON_GetObjectItemCaseSensitive(item, "xxh3");
        double offset = number_of(item, "offset"), bytes = number_of(item, "bytes");
        if (!cJSON_IsString(key) || offset < (double)file->layout.file_bytes || bytes < 0 ||
            offset + bytes > (double)file->file_bytes ||
            parse_hex64(cJSON_IsString(hash) ? hash->valuestring : NULL, &text->xxh3) != FERRY_OK)
            return ferry_fail(FERRY_ERR_FORMAT, "%s: bad entry in the texts list", file->path);
        text->offset = (uint64_t)offset;
        text->bytes = (uint64_t)bytes;
        text->key = strdup(key->valuestring);
        FERRY_TRY(ferry_malloc(text->bytes + 1, "text", (void **)&text->text));
        file->n_texts++;
        if (!text->key) return ferry_fail(FERRY_ERR_NO_MEMORY, "out of memory");
        FERRY_TRY(ferry_pread_all(file->fd, text->text, text->bytes, text->offset, file->path,
                                  FERRY_ERR_FORMAT));
        text->text[text->bytes] = '\0';
        uint64_t end = (text->offset + text->bytes + FERRY_TEXT_ALIGN - 1) / FERRY_TEXT_ALIGN *
                       FERRY_TEXT_ALIGN;
        if (end > *texts_end) *texts_end = end;
        if (XXH3_64bits(text->text, text->bytes) != text->xxh3)
            return ferry_fail(FERRY_ERR_CHECKSUM, "%s: stored text %s fails its checksum",
                              file->path, text->key);
    }
    return FERRY_OK;
}

static ferry_status parse_manifest(ferry_file *file, const ferry_preamble *preamble) {
    cJSON *root = cJSON_Parse(file->manifest_json);
    ferry_status status = FERRY_OK;
    if (!cJSON_IsObject(root)) {
        status = ferry_fail(FERRY_ERR_FORMAT, "%s: manifest is not valid JSON", file->path);
        goto fail;
    }
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(format) || strcmp(format->valuestring, "ferry") != 0 ||
        number_of(root, "format_version") != FERRY_FORMAT_VERSION ||
        number_of(root, "alignment") != FERRY_BLOB_ALIGN) {
        status = ferry_fail(FERRY_ERR_FORMAT,
                            "%s: manifest does not say format \"ferry\" version %u with "
                            "alignment %u",
                            file->path, FERRY_FORMAT_VERSION, FERRY_BLOB_ALIGN);
        goto fail;
    }
    const cJSON *config_json = cJSON_GetObjectItemCaseSensitive(root, "config");
    const cJSON *dtype_json = cJSON_GetObjectItemCaseSensitive(root, "dtype");
    ferry_config config;
    ferry_dtype dtype;
    if (!cJSON_IsString(dtype_json) || ferry_dtype_parse(dtype_json->valuestring, &dtype) != FERRY_OK) {
        status = ferry_fail(FERRY_ERR_FORMAT, "%s: manifest has no valid dtype", file->path);
        goto fail;
    }
    status = ferry_config_from_json(config_json, &config);
    if (status != FERRY_OK) {
        ferry_fail_prefix(FERRY_ERR_FORMAT, "%s: ", file->path);
        status = FERRY_ERR_FORMAT;
        goto fail;
    }
    FERRY_TRY_GOTO(ferry_layout_build(&config, dtype, &file->layout));
    if (file->layout.data_offset != preamble->data_offset ||
        file->layout.file_bytes > file->file_bytes) {
        status = ferry_fail(FERRY_ERR_FORMAT,
                            "%s: data offset %llu / blob end %llu do not match the model's "
                            "layout (%llu / %llu)",
                            file->path, (unsigned long long)preamble->data_offset,
                            (unsigned long long)file->file_bytes,
                            (unsigned long long)file->layout.data_offset,
                            (unsigned long long)file->layout.file_bytes);
        goto fail;
    }
    FERRY_TRY_GOTO(check_extents(file, cJSON_GetObjectItemCaseSensitive(root, "extents")));
    FERRY_TRY_GOTO(check_tensors(file, cJSON_GetObjectItemCaseSensitive(root, "tensors")));
    uint64_t expected_bytes = file->layout.file_bytes;
    FERRY_TRY_GOTO(read_texts(file, cJSON_GetObjectItemCaseSensitive(root, "texts"),
                              &expected_bytes));
    if (expected_bytes != file->file_bytes) {
        status = ferry_fail(FERRY_ERR_FORMAT,
                            "%s: file is %llu bytes, its contents end at %llu: damaged",
                            file->path, (unsigned long long)file->file_bytes,
                            (unsigned long long)expected_bytes);
        goto fail;
    }
fail:
    cJSON_Delete(root);
    return status;
}

ferry_status ferry_file_open(const char *path, ferry_file **out) {
    *out = NULL;
    if (ferry_synth_is_name(path))
        return ferry_fail(FERRY_ERR_UNSUPPORTED,
                          "%s is a synthetic model generated in memory: it has no file for this "
                          "(write one with ferry synth --preset NAME OUT.ferry)",
                          path);
    ferry_status status;
    ferry_file *file = NULL;
    FERRY_TRY(ferry_calloc(1, sizeof *file, "model file", (void **)&file));
    file->fd = -1;
    file->path = strdup(path);
    if (!file->path) {
        status = ferry_fail(FERRY_ERR_NO_MEMORY, "out of memory");
        goto fail;
    }
    FERRY_TRY_GOTO(ferry_open_read(path, &file->fd, &file->file_bytes));
    ferry_preamble preamble;
    FERRY_TRY_GOTO(read_preamble(file, file->file_bytes, &preamble));
    FERRY_TRY_GOTO(ferry_malloc(preamble.manifest_bytes + 1, "manifest",
                                (void **)&file->manifest_json));
    FERRY_TRY_GOTO(ferry_pread_all(file->fd, file->manifest_json, preamble.manifest_bytes,
                                   preamble.manifest_offset, path, FERRY_ERR_FORMAT));
    file->manifest_json[preamble.manifest_bytes] = '\0';
    if (XXH3_64bits(file->manifest_json, preamble.manifest_bytes) != preamble.manifest_xxh3) {
        status = ferry_fail(FERRY_ERR_FORMAT, "%s: manifest fails its checksum: file is damaged",
                            path);
        goto fail;
    }
    FERRY_TRY_GOTO(parse_manifest(file, &preamble));
    *out = file;
    return FERRY_OK;
fail:
    ferry_file_close(file);
    return status;
}

void ferry_file_close(ferry_file *file) {
    if (!file) return;
    if (file->fd >= 0) close(file->fd);
    for (int i = 0; i < file->n_texts; i++) {
        free(file->texts[i].key);
        free(file->texts[i].text);
    }
    free(file->texts);
    ferry_layout_free(&file->layout);
    free(file->manifest_json);
    free(file->path);
    free(file);
}

ferry_status ferry_file_read_tensor(const ferry_file *file, const ferry_tensor_entry *entry,
                                    void *dst, int verify) {
    ferry_status status = ferry_pread_all(file->fd, dst, entry->bytes, entry->offset, file->path,
                                          FERRY_ERR_FORMAT);
    char name[64];
    ferry_tensor_entry_name(entry, name, sizeof name);
    if (status != FERRY_OK) return ferry_fail_prefix(status, "tensor %s: ", name);
    if (verify && XXH3_64bits(dst, entry->bytes) != entry->xxh3)
        return ferry_fail(FERRY_ERR_CHECKSUM,
                          "%s: tensor %s (%llu bytes at offset %llu) fails its checksum",
                          file->path, name, (unsigned long long)entry->bytes,
                          (unsigned long long)entry->offset);
    return FERRY_OK;
}

/* Hash one tensor through `buffer` in pieces, so verifying never needs a
 * tensor-sized allocation (an embedding table can be gigabytes). */
static ferry_status check_tensor(const ferry_file *file, const ferry_tensor_entry *entry,
                                 XXH3_state_t *state, void *buffer, size_t buffer_bytes) {
    char name[64];
    ferry_tensor_entry_name(entry, name, sizeof name);
    XXH3_64bits_reset(state);
    for (uint64_t done = 0; done < entry->bytes;) {
        size_t piece = entry->bytes - done < buffer_bytes ? (size_t)(entry->bytes - done)
                                                          : buffer_bytes;
        ferry_status status = ferry_pread_all(file->fd, buffer, piece, entry->offset + done,
                                              file->path, FERRY_ERR_FORMAT);
        if (status != FERRY_OK) return ferry_fail_prefix(status, "tensor %s: ", name);
        XXH3_64bits_update(state, buffer, piece);
        done += piece;
    }
    if (XXH3_64bits_digest(state) != entry->xxh3)
        return ferry_fail(FERRY_ERR_CHECKSUM,
                          "%s: tensor %s (%llu bytes at offset %llu) fails its checksum",
                          file->path, name, (unsigned long long)entry->bytes,
                          (unsigned long long)entry->offset);
    return FERRY_OK;
}

ferry_status ferry_file_verify_progress(const ferry_file *file, int *bad_index,
                                        ferry_verify_progress_fn progress, void *context) {
    enum { VERIFY_BUFFER_BYTES = 16 << 20 };
    *bad_index = -1;
    void *buffer = NULL;
    XXH3_state_t *state = XXH3_createState();
    ferry_status status = FERRY_OK;
    if (!state) {
        status = ferry_fail(FERRY_ERR_NO_MEMORY, "out of memory for a checksum state");
        goto fail;
    }
    FERRY_TRY_GOTO(ferry_malloc(VERIFY_BUFFER_BYTES, "verify buffer", &buffer));
    uint64_t done_bytes = 0;
    for (int i = 0; i < file->layout.n_tensors; i++) {
        const ferry_tensor_entry *entry = &file->layout.tensors[i];
        status = check_tensor(file, entry, state, buffer, VERIFY_BUFFER_BYTES);
        if (status != FERRY_OK) {
            *bad_index = i;
            goto fail;
        }
        done_bytes += entry->bytes;
        if (progress) progress(context, i + 1, file->layout.n_tensors, done_bytes);
    }
fail:
    free(buffer);
    XXH3_freeState(state);
    return status;
}

ferry_status ferry_file_verify(const ferry_file *file, int *bad_index) {
    return ferry_file_verify_progress(file, bad_index, NULL, NULL);
}

const char *ferry_file_text(const ferry_file *file, const char *key) {
    for (int i = 0; i < file->n_texts; i++)
        if (strcmp(file->texts[i].key, key) == 0) return file->texts[i].text;
    return NULL;
}
