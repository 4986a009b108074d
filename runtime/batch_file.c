/*
 * batch_file.c — what makes `ferry batch` resumable: the set of ids already
 * answered, read back from the output file, and the repair of a torn last
 * line left by a crash in the middle of a write (cut back to the last
 * complete line, so the rerun appends after whole results only).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <xxhash.h>

#include "runtime/batch.h"

static size_t id_slot(const ferry_id_set *set, const char *id_json) {
    size_t slot = (size_t)XXH3_64bits(id_json, strlen(id_json)) & set->mask;
    while (set->keys[slot] && strcmp(set->keys[slot], id_json) != 0) slot = (slot + 1) & set->mask;
    return slot;
}

int ferry_id_set_has(const ferry_id_set *set, const char *id_json) {
    return set->keys && set->keys[id_slot(set, id_json)] != NULL;
}

ferry_status ferry_id_set_add(ferry_id_set *set, const char *id_json, int *added) {
    *added = 0;
    if (!set->keys || (set->count + 1) * 2 > set->mask + 1) {
        size_t capacity = set->keys ? (set->mask + 1) * 2 : 64;
        ferry_id_set grown = {0};
        FERRY_TRY(ferry_calloc(capacity, sizeof *grown.keys, "id set", (void **)&grown.keys));
        grown.mask = capacity - 1;
        for (size_t i = 0; set->keys && i <= set->mask; i++)
            if (set->keys[i]) grown.keys[id_slot(&grown, set->keys[i])] = set->keys[i];
        grown.count = set->count;
        free(set->keys);
        *set = grown;
    }
    size_t slot = id_slot(set, id_json);
    if (set->keys[slot]) return FERRY_OK;
    set->keys[slot] = strdup(id_json);
    if (!set->keys[slot]) return ferry_fail(FERRY_ERR_NO_MEMORY, "id set: out of memory");
    set->count++;
    *added = 1;
    return FERRY_OK;
}

void ferry_id_set_free(ferry_id_set *set) {
    for (size_t i = 0; set->keys && i <= set->mask; i++) free(set->keys[i]);
    free(set->keys);
    *set = (ferry_id_set){0};
}

char *ferry_jsonl_id(const char *line) {
    cJSON *root = cJSON_Parse(line);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "id");
    char *text = NULL;
    if (cJSON_IsObject(root) && id && (cJSON_IsString(id) || cJSON_IsNumber(id)))
        text = cJSON_PrintUnformatted(id);
    cJSON_Delete(root);
    return text;
}

ferry_status ferry_batch_output_scan(const char *path, ferry_id_set *done,
                                     uint64_t *repaired_bytes) {
    *repaired_bytes = 0;
    FILE *file = fopen(path, "r+b");
    if (!file) {
        if (errno == ENOENT) return FERRY_OK;
        return ferry_fail(FERRY_ERR_IO, "%s: cannot open the output for resuming: %s", path,
                          strerror(errno));
    }
    ferry_status status = FERRY_OK;
    char *line = NULL;
    size_t capacity = 0;
    ssize_t length;
    uint64_t good_end = 0, offset = 0;
    while ((length = getline(&line, &capacity, file)) > 0) {
        offset += (uint64_t)length;
        int complete = line[length - 1] == '\n';
        char *id = complete ? ferry_jsonl_id(line) : NULL;
        if (!id) {
            /* only the last line may be torn; a bad line inside is kept */
            if (!complete || getc(file) == EOF) break;
            fseeko(file, (off_t)offset, SEEK_SET);
            good_end = offset;
            continue;
        }
        int added;
        status = ferry_id_set_add(done, id, &added);
        free(id);
        if (status != FERRY_OK) goto fail;
        good_end = offset;
    }
    fseeko(file, 0, SEEK_END);
    uint64_t size = (uint64_t)ftello(file);
    if (size > good_end) {
        if (ftruncate(fileno(file), (off_t)good_end) != 0) {
            status = ferry_fail(FERRY_ERR_IO, "%s: cannot cut the torn last line: %s", path,
                                strerror(errno));
            goto fail;
        }
        *repaired_bytes = size - good_end;
    }
fail:
    free(line);
    fclose(file);
    return status;
}
