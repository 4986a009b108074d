/*
 * safetensors.c — the .safetensors reader: parse and validate the header
 * of one file, look tensors up, pread their bytes; and a checkpoint
 * directory, single-file or sharded through model.safetensors.index.json.
 * Every check says which file and which tensor is wrong; nothing here
 * trusts a number from the file before it is bounded.
 */
#include "runtime/safetensors.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Largest integer a JSON number (a double) holds exactly. */
#define JSON_MAX_EXACT_INTEGER 9007199254740992.0

static const struct {
    const char *name;
    ferry_dtype dtype;
} supported_dtypes[] = {
    {"F32", FERRY_DTYPE_F32},
    {"F16", FERRY_DTYPE_F16},
    {"BF16", FERRY_DTYPE_BF16},
};

static const char *safetensors_dtype_name(ferry_dtype dtype) {
    for (size_t i = 0; i < sizeof supported_dtypes / sizeof supported_dtypes[0]; i++)
        if (supported_dtypes[i].dtype == dtype) return supported_dtypes[i].name;
    return "?";
}

/* A JSON number that is a whole number in [0, 2^53]. */
static int json_uint(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return 0;
    double value = item->valuedouble;
    if (!(value >= 0.0) || value > JSON_MAX_EXACT_INTEGER || value != (double)(uint64_t)value)
        return 0;
    *out = (uint64_t)value;
    return 1;
}

static int compare_tensor_names(const void *a, const void *b) {
    return strcmp(((const ferry_safetensors_tensor *)a)->name,
                  ((const ferry_safetensors_tensor *)b)->name);
}

static int compare_tensor_offsets(const void *a, const void *b) {
    const ferry_safetensors_tensor *x = *(ferry_safetensors_tensor *const *)a;
    const ferry_safetensors_tensor *y = *(ferry_safetensors_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Fill one tensor from its header entry; offsets become absolute. */
static ferry_status parse_tensor_entry(const ferry_safetensors_file *file, const cJSON *entry,
                                       uint64_t data_bytes, ferry_safetensors_tensor *tensor) {
    const char *path = file->path, *name = tensor->name;
    if (!cJSON_IsObject(entry))
        return ferry_fail(FERRY_ERR_FORMAT, "%s: tensor '%s': header entry is not an object",
                          path, name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    if (!cJSON_IsString(dtype))
        return ferry_fail(FERRY_ERR_FORMAT, "%s: tensor '%s': missing \"dtype\" string", path,
                          name);
    size_t dtype_index = 0, n_dtypes = sizeof supported_dtypes / sizeof supported_dtypes[0];
    while (dtype_index < n_dtypes && strcmp(supported_dtypes[dtype_index].name, dtype->valuestring))
        dtype_index++;
    if (dtype_index == n_dtypes)
        return ferry_fail(FERRY_ERR_UNSUPPORTED,
                          "%s: tensor '%s': dtype %s is unsupported (ferry reads F32, F16, BF16)",
                          path, name, dtype->valuestring);
    tensor->dtype = supported_dtypes[dtype_index].dtype;

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    if (!cJSON_IsArray(shape))
        return ferry_fail(FERRY_ERR_FORMAT, "%s: tensor '%s': missing \"shape\" array", path,
                          name);
    int n_dims = cJSON_GetArraySize(shape);
    if (n_dims > FERRY_SAFETENSORS_MAX_DIMS)
        return ferry_fail(FERRY_ERR_FORMAT, "%s: tensor '%s': %d dimensions (at most %d)", path,
                          name, n_dims, FERRY_SAFETENSORS_MAX_DIMS);
    tensor->n_dims = n_dims;
    uint64_t n_elements = 1;
    int overflow = 0;
    for (int d = 0; d < n_dims; d++) {
        if (!json_uint(cJSON_GetArrayItem(shape, d), &tensor->shape[d]))
            return ferry_fail(FERRY_ERR_FORMAT,
                              "%s: tensor '%s': shape[%d] is not a non-negative integer", path,
                              name, d);
        overflow |= ferry_mul_overflow(n_elements, tensor->shape[d], &n_elements);
    }
    uint64_t expected_bytes = 0;
    overflow |= ferry_mul_overflow(n_elements, ferry_dtype_bytes(tensor->dtype), &expected_bytes);
    if (overflow)
        return ferry_fail(FERRY_ERR_FORMAT, "%s: tensor '%s': shape overflows 64-bit size", path,
                          name);
    tensor->n_elements = n_elements;

    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    uint64_t begin, end;
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
        !json_uint(cJSON_GetArrayItem(offsets, 0), &begin) ||
        !json_uint(cJSON_GetArrayItem(offsets, 1), &end))
        return ferry_fail(FERRY_ERR_FORMAT,
                          "%s: tensor '%s': \"data_offsets\" must be [begin, end] integers", path,
                          name);
    if (end < begin)
        return ferry_fail(FERRY_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] end < begin",
                          path, name, (unsigned long long)begin, (unsigned long long)end);
    if (end - begin != expected_bytes) {
        char described[128];
        ferry_safetensors_describe(tensor, described, sizeof described);
        return ferry_fail(FERRY_ERR_FORMAT,
                          "%s: tensor '%s': %s needs %llu bytes but data_offsets [%llu, %llu] "
                          "hold %llu",
                          path, name, described, (unsigned long long)expected_bytes,
                          (unsigned long long)begin, (unsigned long long)end,
                          (unsigned long long)(end - begin));
    }
    if (end > data_bytes)
        return ferry_fail(FERRY_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets [%llu, %llu] run past the %llu bytes of "
                          "data in the file (truncated?)",
                          path, name, (unsigned long long)begin, (unsigned long long)end,
                          (unsigned long long)data_bytes);
    tensor->offset = file->data_offset + begin;
    tensor->bytes = expected_bytes;
    return FERRY_OK;
}

/* __metadata__ must be an object of strings (the format says so). */
static ferry_status check_metadata(const char *path, const cJSON *metadata) {
    if (!cJSON_IsObject(metadata))
        return ferry_fail(FERRY_ERR_FORMAT, "%s: \"__metadata__\" is not an object", path);
    for (const cJSON *item = metadata->child; item; item = item->next)
        if (!cJSON_IsString(item))
            return ferry_fail(FERRY_ERR_FORMAT, "%s: \"__metadata__\" value '%s' is not a string",
                              path, item->string ? item->string : "?");
    return FERRY_OK;
}

/* Names unique, byte ranges disjoint. */
static ferry_status check_tensors_disjoint(ferry_safetensors_file *file) {
    ferry_safetensors_tensor **by_offset = NULL;
    ferry_status status = FERRY_OK;
    int n = file->n_tensors;
    qsort(file->tensors, (size_t)n, sizeof *file->tensors, compare_tensor_names);
    for (int i = 1; i < n; i++)
        if (strcmp(file->tensors[i - 1].name, file->tensors[i].name) == 0)
            return ferry_fail(FERRY_ERR_FORMAT, "%s: tensor '%s' appears twice in the header",
                              file->path, file->tensors[i].name);
    if (n < 2) return FERRY_OK;
    FERRY_TRY_GOTO(ferry_malloc((size_t)n * sizeof *by_offset, "safetensors offsets",
                                (void **)&by_offset));
    for (int i = 0; i < n; i++) by_offset[i] = &file->tensors[i];
    qsort(by_offset, (size_t)n, sizeof *by_offset, compare_tensor_offsets);
    const ferry_safetensors_tensor *previous = NULL;
    for (int i = 0; i < n; i++) {
        const ferry_safetensors_tensor *tensor = by_offset[i];
        if (tensor->bytes == 0) continue;
        if (previous && tensor->offset < previous->offset + previous->bytes) {
            status = ferry_fail(FERRY_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap in the file",
                                file->path, previous->name, tensor->name);
            goto fail;
        }
        previous = tensor;
    }
fail:
    free(by_offset);
    return status;
}

static ferry_status parse_header(ferry_safetensors_file *file, const char *text, size_t bytes) {
    ferry_status status = FERRY_OK;
    const char *parse_end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, bytes, &parse_end, 0);
    if (!root) {
        size_t at = cJSON_GetErrorPtr() ? (size_t)(cJSON_GetErrorPtr() - text) : 0;
        return ferry_fail(FERRY_ERR_FORMAT, "%s: header is not valid JSON (near byte %zu)",
                          file->path, at < bytes ? at : bytes);
    }
    for (const char *p = parse_end; p && p < text + bytes; p++)
        if (*p != ' ' && *p != '\n' && *p != '\t' && *p != '\r' && *p != '\0') {
            status = ferry_fail(FERRY_ERR_FORMAT, "%s: header has bytes after the JSON object",
                                file->path);
            goto fail;
        }
    if (!cJSON_IsObject(root)) {
        status = ferry_fail(FERRY_ERR_FORMAT, "%s: header is not a JSON object", file->path);
        goto fail;
    }
    int n_entries = cJSON_GetArraySize(root);
    FERRY_TRY_GOTO(ferry_calloc((size_t)n_entries + 1, sizeof *file->tensors, "safetensors tensors",
                                (void **)&file->tensors));
    uint64_t data_bytes = file->file_bytes - file->data_offset;
    for (const cJSON *entry = root->child; entry; entry = entry->next) {
        if (strcmp(entry->string, "__metadata__") == 0) {
            FERRY_TRY_GOTO(check_metadata(file->path, entry));
            continue;
        }
        ferry_safetensors_tensor *tensor = &file->tensors[file->n_tensors];
        tensor->name = strdup(entry->string);
        if (!tensor->name) {
            status = ferry_fail(FERRY_ERR_NO_MEMORY, "%s: out of memory for tensor names",
                                file->path);
            goto fail;
        }
        file->n_tensors++;
        FERRY_TRY_GOTO(parse_tensor_entry(file, entry, data_bytes, tensor));
    }
    FERRY_TRY_GOTO(check_tensors_disjoint(file));
fail:
    cJSON_Delete(root);
    return status;
}

ferry_status ferry_safetensors_open(const char *path, ferry_safetensors_file **out) {
    ferry_status status = FERRY_OK;
    ferry_safetensors_file *file = NULL;
    char *header = NULL;
    *out = NULL;
    FERRY_TRY_GOTO(ferry_calloc(1, sizeof *file, "safetensors file", (void **)&file));
    file->fd = -1;
    file->path = strdup(path);
    if (!file->path) {
        status = ferry_fail(FERRY_ERR_NO_MEMORY, "%s: out of memory", path);
        goto fail;
    }
    FERRY_TRY_GOTO(ferry_open_read(path, &file->fd, &file->file_bytes));
    if (file->file_bytes < 8) {
        status = ferry_fail(FERRY_ERR_FORMAT,
                            "%s: %llu bytes, too short for the 8-byte header length", path,
                            (unsigned long long)file->file_bytes);
        goto fail;
    }
    uint8_t length_bytes[8];
    FERRY_TRY_GOTO(ferry_pread_all(file->fd, length_bytes, sizeof length_bytes, 0, path,
                                   FERRY_ERR_FORMAT));
    uint64_t header_bytes = 0;
    for (int i = 7; i >= 0; i--) header_bytes = (header_bytes << 8) | length_bytes[i];
    if (header_bytes == 0 || header_bytes > FERRY_SAFETENSORS_MAX_HEADER_BYTES ||
        header_bytes > file->file_bytes - 8) {
        status = ferry_fail(FERRY_ERR_FORMAT,
                            "%s: header length %llu is out of bounds (file is %llu bytes, "
                            "limit %llu)",
                            path, (unsigned long long)header_bytes,
                            (unsigned long long)file->file_bytes,
                            (unsigned long long)FERRY_SAFETENSORS_MAX_HEADER_BYTES);
        goto fail;
    }
    file->data_offset = 8 + header_bytes;
    FERRY_TRY_GOTO(ferry_malloc(header_bytes + 1, "safetensors header", (void **)&header));
    FERRY_TRY_GOTO(ferry_pread_all(file->fd, header, header_bytes, 8, path, FERRY_ERR_FORMAT));
    header[header_bytes] = '\0';
    FERRY_TRY_GOTO(parse_header(file, header, header_bytes));
    *out = file;
    file = NULL;
fail:
    free(header);
    ferry_safetensors_close(file);
    return status;
}

void ferry_safetensors_close(ferry_safetensors_file *file) {
    if (!file) return;
    if (file->fd >= 0) close(file->fd);
    for (int i = 0; i < file->n_tensors; i++) free(file->tensors[i].name);
    free(file->tensors);
    free(file->path);
    free(file);
}

const ferry_safetensors_tensor *ferry_safetensors_find(const ferry_safetensors_file *file,
                                                       const char *name) {
    ferry_safetensors_tensor key = {.name = (char *)name};
    return bsearch(&key, file->tensors, (size_t)file->n_tensors, sizeof *file->tensors,
                   compare_tensor_names);
}

ferry_status ferry_safetensors_read_range(const ferry_safetensors_file *file,
                                          const ferry_safetensors_tensor *tensor,
                                          uint64_t offset, void *dst, size_t bytes) {
    if (offset > tensor->bytes || bytes > tensor->bytes - offset)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "%s: tensor '%s': read of %zu bytes at %llu is outside its %llu bytes",
                          file->path, tensor->name, bytes, (unsigned long long)offset,
                          (unsigned long long)tensor->bytes);
    ferry_status status = ferry_pread_all(file->fd, dst, bytes, tensor->offset + offset,
                                          file->path, FERRY_ERR_FORMAT);
    if (status != FERRY_OK) return ferry_fail_prefix(status, "tensor '%s': ", tensor->name);
    return FERRY_OK;
}

ferry_status ferry_safetensors_read(const ferry_safetensors_file *file,
                                    const ferry_safetensors_tensor *tensor, void *dst,
                                    size_t dst_bytes) {
    if (dst_bytes < tensor->bytes)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "%s: tensor '%s' has %llu bytes, the buffer only %zu", file->path,
                          tensor->name, (unsigned long long)tensor->bytes, dst_bytes);
    return ferry_safetensors_read_range(file, tensor, 0, dst, (size_t)tensor->bytes);
}

void ferry_safetensors_describe(const ferry_safetensors_tensor *tensor, char *buf, size_t size) {
    size_t used = (size_t)snprintf(buf, size, "%s[", safetensors_dtype_name(tensor->dtype));
    for (int d = 0; d < tensor->n_dims && used < size; d++)
        used += (size_t)snprintf(buf + used, size - used, "%s%llu", d ? ", " : "",
                                 (unsigned long long)tensor->shape[d]);
    if (used < size) snprintf(buf + used, size - used, "]");
}
