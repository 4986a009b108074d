/*
 * hf_checkpoint.c — an HF checkpoint directory as one set of tensors:
 * model.safetensors, or the shards that model.safetensors.index.json's
 * weight_map names.  Every mapped shard must exist when the directory is
 * opened; each is opened (its header read) only when first needed, once.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "runtime/safetensors.h"

#define INDEX_FILE_NAME "model.safetensors.index.json"
#define SINGLE_FILE_NAME "model.safetensors"
#define MAX_INDEX_BYTES (256ull << 20)

typedef struct checkpoint_entry {
    char *name;
    int shard;                  /* index into shards */
} checkpoint_entry;

typedef struct checkpoint_shard {
    char *path;
    ferry_safetensors_file *file;   /* NULL until first used */
} checkpoint_shard;

struct ferry_checkpoint {
    char *dir;
    int n_entries;
    checkpoint_entry *entries;  /* sorted by name */
    int n_shards;
    checkpoint_shard *shards;
};

ferry_status ferry_read_text_file(const char *path, uint64_t max_bytes, char **out_text,
                                  size_t *out_bytes) {
    ferry_status status = FERRY_OK;
    char *text = NULL;
    *out_text = NULL;
    FILE *stream = fopen(path, "rb");
    if (!stream) return ferry_fail(FERRY_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(stream), &st) != 0 || !S_ISREG(st.st_mode)) {
        status = ferry_fail(FERRY_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    if ((uint64_t)st.st_size > max_bytes) {
        status = ferry_fail(FERRY_ERR_FORMAT, "%s: %llu bytes, more than the %llu expected", path,
                            (unsigned long long)st.st_size, (unsigned long long)max_bytes);
        goto fail;
    }
    size_t bytes = (size_t)st.st_size;
    FERRY_TRY_GOTO(ferry_malloc(bytes + 1, path, (void **)&text));
    if (fread(text, 1, bytes, stream) != bytes) {
        status = ferry_fail(FERRY_ERR_IO, "%s: short read", path);
        goto fail;
    }
    text[bytes] = '\0';
    if (out_bytes) *out_bytes = bytes;
    *out_text = text;
    text = NULL;
fail:
    free(text);
    fclose(stream);
    return status;
}

static int compare_entries(const void *a, const void *b) {
    return strcmp(((const checkpoint_entry *)a)->name, ((const checkpoint_entry *)b)->name);
}

char *ferry_path_join(const char *dir, const char *name) {
    size_t bytes = strlen(dir) + strlen(name) + 2;
    char *path = malloc(bytes);
    if (path) snprintf(path, bytes, "%s/%s", dir, name);
    return path;
}

static ferry_status add_shard(ferry_checkpoint *checkpoint, const char *file_name, int *out_index) {
    for (int i = 0; i < checkpoint->n_shards; i++) {
        const char *existing = strrchr(checkpoint->shards[i].path, '/') + 1;
        if (strcmp(existing, file_name) == 0) {
            *out_index = i;
            return FERRY_OK;
        }
    }
    checkpoint_shard *grown =
        realloc(checkpoint->shards, (size_t)(checkpoint->n_shards + 1) * sizeof *grown);
    if (!grown) return ferry_fail(FERRY_ERR_NO_MEMORY, "%s: out of memory", checkpoint->dir);
    checkpoint->shards = grown;
    checkpoint_shard *shard = &grown[checkpoint->n_shards];
    shard->file = NULL;
    shard->path = ferry_path_join(checkpoint->dir, file_name);
    if (!shard->path) return ferry_fail(FERRY_ERR_NO_MEMORY, "%s: out of memory", checkpoint->dir);
    *out_index = checkpoint->n_shards++;
    return FERRY_OK;
}

/* A shard name from the index must be a plain file name in the directory. */
static int is_plain_file_name(const char *name) {
    return name[0] && !strchr(name, '/') && strcmp(name, ".") && strcmp(name, "..");
}

static ferry_status load_index(ferry_checkpoint *checkpoint, const char *index_path) {
    ferry_status status = FERRY_OK;
    char *text = NULL;
    cJSON *root = NULL;
    size_t bytes = 0;
    FERRY_TRY_GOTO(ferry_read_text_file(index_path, MAX_INDEX_BYTES, &text, &bytes));
    root = cJSON_ParseWithLength(text, bytes);
    const cJSON *weight_map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!root || !cJSON_IsObject(weight_map)) {
        status = ferry_fail(FERRY_ERR_FORMAT, "%s: %s", index_path,
                            root ? "no \"weight_map\" object" : "not valid JSON");
        goto fail;
    }
    int n = cJSON_GetArraySize(weight_map);
    FERRY_TRY_GOTO(ferry_calloc((size_t)n + 1, sizeof *checkpoint->entries, "checkpoint index",
                                (void **)&checkpoint->entries));
    for (const cJSON *item = weight_map->child; item; item = item->next) {
        if (!cJSON_IsString(item) || !is_plain_file_name(item->valuestring)) {
            status = ferry_fail(FERRY_ERR_FORMAT,
                                "%s: tensor '%s' maps to something other than a file name in "
                                "this directory",
                                index_path, item->string);
            goto fail;
        }
        checkpoint_entry *entry = &checkpoint->entries[checkpoint->n_entries];
        entry->name = strdup(item->string);
        if (!entry->name) {
            status = ferry_fail(FERRY_ERR_NO_MEMORY, "%s: out of memory", index_path);
            goto fail;
        }
        checkpoint->n_entries++;
        FERRY_TRY_GOTO(add_shard(checkpoint, item->valuestring, &entry->shard));
    }
    qsort(checkpoint->entries, (size_t)checkpoint->n_entries, sizeof *checkpoint->entries,
          compare_entries);
    for (int i = 1; i < checkpoint->n_entries; i++)
        if (strcmp(checkpoint->entries[i - 1].name, checkpoint->entries[i].name) == 0) {
            status = ferry_fail(FERRY_ERR_FORMAT, "%s: tensor '%s' is listed twice", index_path,
                                checkpoint->entries[i].name);
            goto fail;
        }
    /* Every shard must be there before any work starts. */
    for (int i = 0; i < checkpoint->n_entries; i++) {
        const checkpoint_shard *shard = &checkpoint->shards[checkpoint->entries[i].shard];
        struct stat st;
        if (stat(shard->path, &st) != 0) {
            status = ferry_fail(FERRY_ERR_IO, "%s: shard %s (holding '%s') is missing: %s",
                                index_path, shard->path, checkpoint->entries[i].name,
                                strerror(errno));
            goto fail;
        }
    }
fail:
    cJSON_Delete(root);
    free(text);
    return status;
}

/* The single-file layout: its tensors are the entries, shard 0 is open. */
static ferry_status load_single(ferry_checkpoint *checkpoint, const char *path) {
    int shard = 0;
    FERRY_TRY(add_shard(checkpoint, SINGLE_FILE_NAME, &shard));
    FERRY_TRY(ferry_safetensors_open(path, &checkpoint->shards[0].file));
    const ferry_safetensors_file *file = checkpoint->shards[0].file;
    FERRY_TRY(ferry_calloc((size_t)file->n_tensors + 1, sizeof *checkpoint->entries,
                           "checkpoint entries", (void **)&checkpoint->entries));
    for (int i = 0; i < file->n_tensors; i++) {
        checkpoint->entries[i].name = strdup(file->tensors[i].name);
        if (!checkpoint->entries[i].name)
            return ferry_fail(FERRY_ERR_NO_MEMORY, "%s: out of memory", path);
        checkpoint->entries[i].shard = 0;
        checkpoint->n_entries++;
    }
    return FERRY_OK;   /* already sorted: the file sorts its tensors by name */
}

ferry_status ferry_checkpoint_open(const char *dir, ferry_checkpoint **out) {
    ferry_status status = FERRY_OK;
    ferry_checkpoint *checkpoint = NULL;
    char *index_path = NULL, *single_path = NULL;
    *out = NULL;
    FERRY_TRY_GOTO(ferry_calloc(1, sizeof *checkpoint, "checkpoint", (void **)&checkpoint));
    checkpoint->dir = strdup(dir);
    index_path = ferry_path_join(dir, INDEX_FILE_NAME);
    single_path = ferry_path_join(dir, SINGLE_FILE_NAME);
    if (!checkpoint->dir || !index_path || !single_path) {
        status = ferry_fail(FERRY_ERR_NO_MEMORY, "%s: out of memory", dir);
        goto fail;
    }
    struct stat st;
    if (stat(index_path, &st) == 0) {
        FERRY_TRY_GOTO(load_index(checkpoint, index_path));
    } else if (stat(single_path, &st) == 0) {
        FERRY_TRY_GOTO(load_single(checkpoint, single_path));
    } else {
        status = ferry_fail(FERRY_ERR_IO, "%s: neither %s nor %s found (is this an HF checkpoint?)",
                            dir, SINGLE_FILE_NAME, INDEX_FILE_NAME);
        goto fail;
    }
    *out = checkpoint;
    checkpoint = NULL;
fail:
    free(index_path);
    free(single_path);
    ferry_checkpoint_close(checkpoint);
    return status;
}

void ferry_checkpoint_close(ferry_checkpoint *checkpoint) {
    if (!checkpoint) return;
    for (int i = 0; i < checkpoint->n_entries; i++) free(checkpoint->entries[i].name);
    for (int i = 0; i < checkpoint->n_shards; i++) {
        ferry_safetensors_close(checkpoint->shards[i].file);
        free(checkpoint->shards[i].path);
    }
    free(checkpoint->entries);
    free(checkpoint->shards);
    free(checkpoint->dir);
    free(checkpoint);
}

int ferry_checkpoint_n_names(const ferry_checkpoint *checkpoint) { return checkpoint->n_entries; }

const char *ferry_checkpoint_name(const ferry_checkpoint *checkpoint, int index) {
    return index >= 0 && index < checkpoint->n_entries ? checkpoint->entries[index].name : NULL;
}

ferry_status ferry_checkpoint_find(ferry_checkpoint *checkpoint, const char *name,
                                   const ferry_safetensors_file **out_file,
                                   const ferry_safetensors_tensor **out_tensor) {
    *out_file = NULL;
    *out_tensor = NULL;
    checkpoint_entry key = {.name = (char *)name};
    const checkpoint_entry *entry =
        bsearch(&key, checkpoint->entries, (size_t)checkpoint->n_entries,
                sizeof *checkpoint->entries, compare_entries);
    if (!entry) return FERRY_OK;
    checkpoint_shard *shard = &checkpoint->shards[entry->shard];
    if (!shard->file) FERRY_TRY(ferry_safetensors_open(shard->path, &shard->file));
    const ferry_safetensors_tensor *tensor = ferry_safetensors_find(shard->file, name);
    if (!tensor)
        return ferry_fail(FERRY_ERR_FORMAT, "%s/%s lists tensor '%s' in %s, which does not hold it",
                          checkpoint->dir, INDEX_FILE_NAME, name, shard->path);
    *out_file = shard->file;
    *out_tensor = tensor;
    return FERRY_OK;
}
