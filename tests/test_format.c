/*
 * test_format.c — the .ferry writer and reader: layout properties, a byte
 * exact round trip with tensors written in random order, and every kind of
 * damaged file giving a clear error instead of a crash.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <xxhash.h>

#include "helpers.h"
#include "runtime/format_internal.h"

static ferry_config test_config(int attention_bias, int tied) {
    const ferry_preset *tiny = ferry_preset_find("tiny");
    cr_assert_not_null(tiny);
    ferry_config config = tiny->config;
    config.attention_bias = attention_bias;
    config.tie_embeddings = tied;
    config.n_layers = 3;
    return config;
}

/* Random bytes for every tensor of a layout, written in shuffled order. */
static unsigned char **write_random_model(const char *path, const ferry_config *config,
                                          ferry_dtype dtype, uint64_t *state, int *n_out) {
    ferry_writer *writer = NULL;
    cr_assert_eq(ferry_writer_open(path, config, dtype, &writer), FERRY_OK, "%s",
                 ferry_last_error());
    const ferry_layout *layout = ferry_writer_layout(writer);
    int n = layout->n_tensors;
    unsigned char **data = calloc((size_t)n, sizeof *data);
    int *order = malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(test_rand_u64(state) % (uint64_t)(i + 1));
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int k = 0; k < n; k++) {
        const ferry_tensor_entry *entry = &layout->tensors[order[k]];
        data[order[k]] = malloc(entry->bytes);
        for (uint64_t b = 0; b < entry->bytes; b++)
            data[order[k]][b] = (unsigned char)test_rand_u64(state);
        cr_assert_eq(ferry_writer_put(writer, entry->layer, entry->kind, data[order[k]],
                                      entry->bytes),
                     FERRY_OK, "%s", ferry_last_error());
    }
    cr_assert_eq(ferry_writer_put_text(writer, "tokenizer.json", "{\"model\": {}}"), FERRY_OK);
    cr_assert_eq(ferry_writer_finish(writer), FERRY_OK, "%s", ferry_last_error());
    ferry_writer_free(writer);
    free(order);
    *n_out = n;
    return data;
}

Test(format, layout_aligns_every_blob_and_tensor) {
    for (int variant = 0; variant < 4; variant++) {
        ferry_config config = test_config(variant & 1, variant >> 1);
        ferry_layout layout;
        cr_assert_eq(ferry_layout_build(&config, FERRY_DTYPE_BF16, &layout), FERRY_OK);
        cr_assert_eq(layout.n_extents, config.n_layers + 1);
        uint64_t previous_end = layout.data_offset;
        for (int e = 0; e < layout.n_extents; e++) {
            cr_assert_eq(layout.extents[e].offset % FERRY_BLOB_ALIGN, 0);
            cr_assert_geq(layout.extents[e].offset, previous_end);
            previous_end = layout.extents[e].offset + layout.extents[e].bytes;
        }
        for (int i = 0; i < layout.n_tensors; i++) {
            const ferry_tensor_entry *entry = &layout.tensors[i];
            const ferry_extent *extent = &layout.extents[entry->layer + 1];
            cr_assert_eq(entry->offset % FERRY_TENSOR_ALIGN, 0);
            cr_assert_geq(entry->offset, extent->offset);
            cr_assert_leq(entry->offset + entry->bytes, extent->offset + extent->bytes);
            uint64_t element = ferry_tensor_specs[entry->kind].is_matrix ? 2 : 4;
            cr_assert_eq(entry->bytes, entry->rows * entry->cols * element);
        }
        /* checksums are fixed-width hex: the manifest's length does not
         * depend on them, so the space reserved before the data holds it */
        char *placeholder = NULL, *filled = NULL;
        cr_assert_eq(ferry_manifest_print(&layout, NULL, 0, &placeholder), FERRY_OK);
        for (int i = 0; i < layout.n_tensors; i++)
            layout.tensors[i].xxh3 = 0xfedcba9876543210ull >> (i % 60);
        cr_assert_eq(ferry_manifest_print(&layout, NULL, 0, &filled), FERRY_OK);
        cr_assert_eq(strlen(placeholder), strlen(filled));
        cr_assert_gt(layout.data_offset, FERRY_PREAMBLE_BYTES + strlen(filled));
        cr_assert_eq(layout.data_offset % FERRY_BLOB_ALIGN, 0);
        free(placeholder);
        free(filled);
        cr_assert_eq(ferry_layout_find(&layout, 0, FERRY_TENSOR_BQ) >= 0, (variant & 1) != 0);
        cr_assert_eq(ferry_layout_find(&layout, -1, FERRY_TENSOR_LM_HEAD) >= 0, (variant >> 1) == 0);
        ferry_layout_free(&layout);
    }
}

/* The space before the data holds the manifest of every preset (f32, the
 * longest offsets; every checksum digit set), and of the largest preset
 * with the most layers a config may have. */
Test(format, the_manifest_fits_before_the_data_for_every_preset) {
    for (int p = 0; p < ferry_n_presets; p++) {
        int deep_too = strcmp(ferry_presets[p].name, "llama2-70b") == 0;
        for (int deepest = 0; deepest <= deep_too; deepest++) {
            ferry_config config = ferry_presets[p].config;
            if (deepest) config.n_layers = 4096;
            ferry_layout layout;
            cr_assert_eq(ferry_layout_build(&config, FERRY_DTYPE_F32, &layout), FERRY_OK);
            for (int i = 0; i < layout.n_tensors; i++) layout.tensors[i].xxh3 = ~0ull;
            char *manifest = NULL;
            cr_assert_eq(ferry_manifest_print(&layout, NULL, 0, &manifest), FERRY_OK);
            cr_assert_lt(FERRY_PREAMBLE_BYTES + strlen(manifest) + (32u << 10),
                         layout.data_offset, "%s with %d layers", ferry_presets[p].name,
                         config.n_layers);
            if (!deepest) cr_assert_eq(layout.data_offset, FERRY_BLOB_ALIGN);
            free(manifest);
            ferry_layout_free(&layout);
        }
    }
}

Test(format, round_trip_is_byte_exact_in_any_write_order) {
    uint64_t state = test_seed();
    char *dir = test_tempdir();
    char *path = test_path(dir, "m.ferry");
    ferry_config config = test_config(1, 0);
    int n = 0;
    unsigned char **data = write_random_model(path, &config, FERRY_DTYPE_F16, &state, &n);
    ferry_file *file = NULL;
    cr_assert_eq(ferry_file_open(path, &file), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(file->layout.n_tensors, n);
    cr_assert_eq(memcmp(&file->layout.config, &config, sizeof config), 0);
    for (int i = 0; i < n; i++) {
        const ferry_tensor_entry *entry = &file->layout.tensors[i];
        unsigned char *back = malloc(entry->bytes);
        cr_assert_eq(ferry_file_read_tensor(file, entry, back, 1), FERRY_OK, "%s",
                     ferry_last_error());
        cr_assert_eq(memcmp(back, data[i], entry->bytes), 0, "tensor %d differs", i);
        free(back);
        free(data[i]);
    }
    cr_assert_str_eq(ferry_file_text(file, "tokenizer.json"), "{\"model\": {}}");
    cr_assert_null(ferry_file_text(file, "missing"));
    int bad = 0;
    cr_assert_eq(ferry_file_verify(file, &bad), FERRY_OK);
    cr_assert_eq(bad, -1);
    ferry_file_close(file);
    free(data);
    test_rmtree(dir);
    free(dir);
    free(path);
}

/* Flip one byte at `offset` of a good file and open it. */
static ferry_status open_damaged(const char *good, const char *bad, uint64_t offset,
                                 ferry_file **out) {
    size_t bytes = 0;
    char *content = test_read_file(good, &bytes);
    cr_assert_not_null(content);
    content[offset] ^= 0x5a;
    cr_assert_eq(test_write_file(bad, content, bytes), 0);
    free(content);
    return ferry_file_open(bad, out);
}

Test(format, damaged_files_fail_with_clear_errors) {
    uint64_t state = test_seed();
    char *dir = test_tempdir();
    char *good = test_path(dir, "good.ferry");
    char *bad = test_path(dir, "bad.ferry");
    ferry_config config = test_config(0, 1);
    int n = 0;
    unsigned char **data = write_random_model(good, &config, FERRY_DTYPE_F32, &state, &n);
    for (int i = 0; i < n; i++) free(data[i]);
    free(data);
    ferry_file *file = NULL;

    /* wrong magic */
    cr_assert_eq(open_damaged(good, bad, 0, &file), FERRY_ERR_FORMAT);
    cr_assert(strstr(ferry_last_error(), "not a .ferry file"), "%s", ferry_last_error());
    /* a byte of the manifest */
    cr_assert_eq(open_damaged(good, bad, FERRY_PREAMBLE_BYTES + 40, &file), FERRY_ERR_FORMAT);
    cr_assert(strstr(ferry_last_error(), "manifest"), "%s", ferry_last_error());

    /* a byte inside one tensor: opens, verify names the tensor */
    ferry_file *good_file = NULL;
    cr_assert_eq(ferry_file_open(good, &good_file), FERRY_OK);
    int victim = (int)(test_rand_u64(&state) % (uint64_t)good_file->layout.n_tensors);
    const ferry_tensor_entry *entry = &good_file->layout.tensors[victim];
    char name[64];
    ferry_tensor_entry_name(entry, name, sizeof name);
    uint64_t at = entry->offset + test_rand_u64(&state) % entry->bytes;
    cr_assert_eq(open_damaged(good, bad, at, &file), FERRY_OK, "%s", ferry_last_error());
    int bad_index = -1;
    cr_assert_eq(ferry_file_verify(file, &bad_index), FERRY_ERR_CHECKSUM);
    cr_assert_eq(bad_index, victim);
    cr_assert(strstr(ferry_last_error(), name), "%s lacks %s", ferry_last_error(), name);
    ferry_file_close(file);

    /* a future format version */
    size_t bytes = 0;
    char *content = test_read_file(good, &bytes);
    content[8] = 9;
    test_write_file(bad, content, bytes);
    cr_assert_eq(ferry_file_open(bad, &file), FERRY_ERR_FORMAT);
    cr_assert(strstr(ferry_last_error(), "reconvert"), "%s", ferry_last_error());
    content[8] = (char)FERRY_FORMAT_VERSION;

    /* truncated at several points, including inside the preamble */
    uint64_t cuts[] = {0, 10, FERRY_PREAMBLE_BYTES + 5, good_file->layout.data_offset + 3,
                       bytes - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        test_write_file(bad, content, cuts[i]);
        cr_assert_eq(ferry_file_open(bad, &file), FERRY_ERR_FORMAT, "cut at %llu",
                     (unsigned long long)cuts[i]);
        cr_assert_neq(ferry_last_error()[0], '\0');
    }
    free(content);
    ferry_file_close(good_file);

    cr_assert_eq(ferry_file_open(dir, &file), FERRY_ERR_IO); /* a directory */
    cr_assert_eq(ferry_file_open("/nonexistent/x.ferry", &file), FERRY_ERR_IO);
    cr_assert(strstr(ferry_last_error(), "/nonexistent/x.ferry"));
    test_rmtree(dir);
    free(dir);
    free(good);
    free(bad);
}

Test(format, unfinished_writes_never_leave_a_file_at_the_target) {
    char *dir = test_tempdir();
    char *path = test_path(dir, "m.ferry");
    char *partial = test_path(dir, "m.ferry.partial");
    ferry_config config = test_config(0, 0);
    ferry_writer *writer = NULL;
    cr_assert_eq(ferry_writer_open(path, &config, FERRY_DTYPE_BF16, &writer), FERRY_OK);
    const ferry_layout *layout = ferry_writer_layout(writer);
    const ferry_tensor_entry *first = &layout->tensors[0];
    void *zeros = calloc(1, first->bytes);
    cr_assert_eq(ferry_writer_put(writer, first->layer, first->kind, zeros, first->bytes), FERRY_OK);
    cr_assert_eq(ferry_writer_put(writer, first->layer, first->kind, zeros, first->bytes - 2),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_writer_put(writer, 99, FERRY_TENSOR_WQ, zeros, 4), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ferry_writer_finish(writer), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "never written"), "%s", ferry_last_error());
    cr_assert_neq(access(path, F_OK), 0, "target exists after a failed finish");
    ferry_writer_free(writer);
    cr_assert_neq(access(partial, F_OK), 0, "partial file left behind");
    cr_assert_neq(access(path, F_OK), 0);
    free(zeros);
    test_rmtree(dir);
    free(dir);
    free(path);
    free(partial);
}

/* A good tiny file to damage, f32, tied, with a stored text. */
static char *write_good_file(const char *dir, uint64_t *state) {
    char *path = test_path(dir, "good.ferry");
    ferry_config config = test_config(1, 1);
    int n = 0;
    unsigned char **data = write_random_model(path, &config, FERRY_DTYPE_F32, state, &n);
    for (int i = 0; i < n; i++) free(data[i]);
    free(data);
    return path;
}

static void copy_file(const char *from, const char *to) {
    size_t bytes = 0;
    char *content = test_read_file(from, &bytes);
    cr_assert_not_null(content);
    cr_assert_eq(test_write_file(to, content, bytes), 0);
    free(content);
}

static void xor_byte_at(int fd, uint64_t offset) {
    unsigned char byte;
    cr_assert_eq(pread(fd, &byte, 1, (off_t)offset), 1);
    byte ^= 0x21;
    cr_assert_eq(pwrite(fd, &byte, 1, (off_t)offset), 1);
}

Test(format, every_preamble_byte_and_manifest_bytes_are_checked) {
    uint64_t state = test_seed();
    char *dir = test_tempdir();
    char *good = write_good_file(dir, &state);
    char *bad = test_path(dir, "bad.ferry");
    copy_file(good, bad);
    ferry_file *file = NULL;
    cr_assert_eq(ferry_file_open(good, &file), FERRY_OK);
    uint64_t manifest_bytes = strlen(file->manifest_json);
    ferry_file_close(file);
    int fd = open(bad, O_RDWR);
    cr_assert_geq(fd, 0);
    uint64_t offsets[64 + 48];
    int n = 0;
    for (int i = 0; i < 64; i++) offsets[n++] = (uint64_t)i;
    while (n < (int)(sizeof offsets / sizeof offsets[0]))
        offsets[n++] = FERRY_PREAMBLE_BYTES + test_rand_u64(&state) % manifest_bytes;
    for (int i = 0; i < n; i++) {
        xor_byte_at(fd, offsets[i]);
        file = NULL;
        ferry_status status = ferry_file_open(bad, &file);
        cr_assert_neq(status, FERRY_OK, "a flip at byte %llu went unnoticed",
                      (unsigned long long)offsets[i]);
        cr_assert_null(file);
        cr_assert(strstr(ferry_last_error(), bad), "'%s' does not name the file",
                  ferry_last_error());
        xor_byte_at(fd, offsets[i]); /* restore */
    }
    close(fd);
    cr_assert_eq(ferry_file_open(bad, &file), FERRY_OK, "restored copy: %s", ferry_last_error());
    ferry_file_close(file);
    free(good);
    free(bad);
    test_rmtree(dir);
    free(dir);
}

/* Replace a file's manifest by `json` with a correct checksum, so only the
 * reader's structural checks stand between it and the caller. */
static void rewrite_manifest(const char *path, const char *json) {
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0);
    unsigned char preamble[FERRY_PREAMBLE_BYTES];
    cr_assert_eq(pread(fd, preamble, sizeof preamble, 0), (ssize_t)sizeof preamble);
    uint64_t data_offset = 0;
    for (int i = 7; i >= 0; i--) data_offset = data_offset << 8 | preamble[40 + i];
    size_t bytes = strlen(json);
    cr_assert_leq(FERRY_PREAMBLE_BYTES + bytes, data_offset);
    char *region = malloc(data_offset - FERRY_PREAMBLE_BYTES);
    memset(region, ' ', data_offset - FERRY_PREAMBLE_BYTES);
    memcpy(region, json, bytes);
    cr_assert_eq(pwrite(fd, region, data_offset - FERRY_PREAMBLE_BYTES, FERRY_PREAMBLE_BYTES),
                 (ssize_t)(data_offset - FERRY_PREAMBLE_BYTES));
    uint64_t hash = XXH3_64bits(json, bytes);
    for (int i = 0; i < 8; i++) {
        preamble[24 + i] = (unsigned char)((uint64_t)bytes >> (8 * i));
        preamble[32 + i] = (unsigned char)(hash >> (8 * i));
    }
    cr_assert_eq(pwrite(fd, preamble, sizeof preamble, 0), (ssize_t)sizeof preamble);
    close(fd);
    free(region);
}

/* Open `good`'s manifest, let `edit` change it, write it into `bad`. */
static ferry_status open_edited(const char *good, const char *bad, void (*edit)(cJSON *root),
                                ferry_file **out) {
    ferry_file *file = NULL;
    cr_assert_eq(ferry_file_open(good, &file), FERRY_OK);
    cJSON *root = cJSON_Parse(file->manifest_json);
    ferry_file_close(file);
    if (edit) edit(root);
    char *json = cJSON_Print(root); /* formatted: differs in every byte position */
    cJSON_Delete(root);
    copy_file(good, bad);
    rewrite_manifest(bad, json);
    free(json);
    return ferry_file_open(bad, out);
}

static cJSON *tensor_item(cJSON *root, int index) {
    return cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "tensors"), index);
}
static void shift_tensor_5(cJSON *root) {
    cJSON *offset = cJSON_GetObjectItemCaseSensitive(tensor_item(root, 5), "offset");
    cJSON_SetNumberValue(offset, offset->valuedouble + FERRY_TENSOR_ALIGN);
}
static void transpose_tensor_5(cJSON *root) {
    cJSON *shape = cJSON_GetObjectItemCaseSensitive(tensor_item(root, 5), "shape");
    double rows = cJSON_GetArrayItem(shape, 0)->valuedouble;
    cJSON_SetNumberValue(cJSON_GetArrayItem(shape, 0), cJSON_GetArrayItem(shape, 1)->valuedouble);
    cJSON_SetNumberValue(cJSON_GetArrayItem(shape, 1), rows);
}
static void rename_tensor_5(cJSON *root) {
    cJSON_ReplaceItemInObject(tensor_item(root, 5), "name", cJSON_CreateString("layers.0.wx"));
}
static void drop_last_tensor(cJSON *root) {
    cJSON *tensors = cJSON_GetObjectItemCaseSensitive(root, "tensors");
    cJSON_DeleteItemFromArray(tensors, cJSON_GetArraySize(tensors) - 1);
}
static void drop_an_extent(cJSON *root) {
    cJSON_DeleteItemFromArray(cJSON_GetObjectItemCaseSensitive(root, "extents"), 1);
}
static void claim_f16(cJSON *root) {
    cJSON_ReplaceItemInObject(root, "dtype", cJSON_CreateString("f16"));
}
static void add_a_layer(cJSON *root) {
    cJSON *layers = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(root, "config"), "n_layers");
    cJSON_SetNumberValue(layers, layers->valuedouble + 1);
}
static void future_manifest_version(cJSON *root) {
    cJSON_ReplaceItemInObject(root, "format_version", cJSON_CreateNumber(2));
}
static void unknown_architecture(cJSON *root) {
    cJSON_ReplaceItemInObject(cJSON_GetObjectItemCaseSensitive(root, "config"), "architecture",
                              cJSON_CreateString("gpt2"));
}
static void break_kv_heads(cJSON *root) {
    cJSON_ReplaceItemInObject(cJSON_GetObjectItemCaseSensitive(root, "config"), "n_kv_heads",
                              cJSON_CreateNumber(3));
}

Test(format, tensor_table_must_be_the_layout_the_config_implies) {
    uint64_t state = test_seed();
    char *dir = test_tempdir();
    char *good = write_good_file(dir, &state);
    char *bad = test_path(dir, "bad.ferry");
    ferry_file *file = NULL;
    /* control: the same manifest re-printed opens, so failures below come
     * from the edits */
    cr_assert_eq(open_edited(good, bad, NULL, &file), FERRY_OK, "%s", ferry_last_error());
    char name[64];
    ferry_tensor_entry_name(&file->layout.tensors[5], name, sizeof name);
    ferry_file_close(file);
    static const struct {
        void (*edit)(cJSON *root);
        const char *says;
    } cases[] = {
        {shift_tensor_5, NULL},       {transpose_tensor_5, NULL},
        {rename_tensor_5, NULL},      {drop_last_tensor, "tensors"},
        {drop_an_extent, "extents"},  {claim_f16, NULL},
        {add_a_layer, NULL},          {future_manifest_version, "version"},
        {break_kv_heads, "num_key_value_heads"}, {unknown_architecture, "gpt2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        file = NULL;
        cr_assert_eq(open_edited(good, bad, cases[i].edit, &file), FERRY_ERR_FORMAT, "case %zu",
                     i);
        cr_assert_null(file);
        const char *says = cases[i].says ? cases[i].says : i < 3 ? name : "";
        cr_assert(strstr(ferry_last_error(), says), "case %zu: '%s' lacks '%s'", i,
                  ferry_last_error(), says);
    }
    free(good);
    free(bad);
    test_rmtree(dir);
    free(dir);
}

Test(format, empty_random_and_headerless_files_are_rejected) {
    uint64_t state = test_seed();
    char *dir = test_tempdir();
    char *path = test_path(dir, "x.ferry");
    size_t sizes[] = {0, 1, 63, 64, 100, 3 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        for (int with_header = 0; with_header < 2; with_header++) {
            unsigned char *content = malloc(sizes[i] + 1);
            for (size_t b = 0; b < sizes[i]; b++) content[b] = (unsigned char)test_rand_u64(&state);
            if (with_header && sizes[i] >= 12) {
                memcpy(content, FERRY_FILE_MAGIC, 8);
                memcpy(content + 8, "\x01\x00\x00\x00", 4);
            }
            cr_assert_eq(test_write_file(path, content, sizes[i]), 0);
            free(content);
            ferry_file *file = NULL;
            cr_assert_eq(ferry_file_open(path, &file), FERRY_ERR_FORMAT, "%zu bytes", sizes[i]);
            cr_assert_null(file);
            cr_assert(strstr(ferry_last_error(), path), "%s", ferry_last_error());
        }
    }
    free(path);
    test_rmtree(dir);
    free(dir);
}

Test(format, reading_a_tensor_past_a_truncation_names_the_offset) {
    uint64_t state = test_seed();
    char *dir = test_tempdir();
    char *good = write_good_file(dir, &state);
    ferry_file *file = NULL;
    cr_assert_eq(ferry_file_open(good, &file), FERRY_OK);
    const ferry_tensor_entry *last = &file->layout.tensors[file->layout.n_tensors - 1];
    cr_assert_eq(truncate(good, (off_t)(last->offset + last->bytes / 2)), 0);
    void *buffer = malloc(last->bytes);
    cr_assert_eq(ferry_file_read_tensor(file, last, buffer, 0), FERRY_ERR_FORMAT);
    char name[64], offset[32];
    ferry_tensor_entry_name(last, name, sizeof name);
    snprintf(offset, sizeof offset, "%llu", (unsigned long long)(last->offset + last->bytes / 2));
    cr_assert(strstr(ferry_last_error(), name) && strstr(ferry_last_error(), offset) &&
                  strstr(ferry_last_error(), "truncated"),
              "%s", ferry_last_error());
    int bad = -1;
    cr_assert_eq(ferry_file_verify(file, &bad), FERRY_ERR_FORMAT);
    cr_assert_eq(bad, file->layout.n_tensors - 1);
    free(buffer);
    ferry_file_close(file);
    free(good);
    test_rmtree(dir);
    free(dir);
}

/* A writer for `path` with every tensor already put: random bytes from
 * state, or zeros when state is NULL.  Not finished. */
static ferry_writer *writer_with_every_tensor(const char *path, const ferry_config *config,
                                              ferry_dtype dtype, uint64_t *state) {
    ferry_writer *writer = NULL;
    cr_assert_eq(ferry_writer_open(path, config, dtype, &writer), FERRY_OK, "%s",
                 ferry_last_error());
    const ferry_layout *layout = ferry_writer_layout(writer);
    for (int i = 0; i < layout->n_tensors; i++) {
        const ferry_tensor_entry *entry = &layout->tensors[i];
        unsigned char *bytes = calloc(1, entry->bytes);
        for (uint64_t b = 0; state && b < entry->bytes; b++)
            bytes[b] = (unsigned char)test_rand_u64(state);
        cr_assert_eq(ferry_writer_put(writer, entry->layer, entry->kind, bytes, entry->bytes),
                     FERRY_OK, "%s", ferry_last_error());
        free(bytes);
    }
    return writer;
}

Test(format, an_existing_target_is_untouched_until_finish) {
    uint64_t state = test_seed();
    char *dir = test_tempdir();
    char *path = test_path(dir, "m.ferry");
    char *partial = test_path(dir, "m.ferry.partial");
    ferry_config config = test_config(0, 0);
    for (int finish = 0; finish < 2; finish++) {
        cr_assert_eq(test_write_file(path, "old model", 9), 0);
        ferry_writer *writer = writer_with_every_tensor(path, &config, FERRY_DTYPE_BF16, &state);
        char *content = test_read_file(path, NULL);
        cr_assert_str_eq(content, "old model");
        free(content);
        cr_assert_eq(access(partial, F_OK), 0, "the partial file is where the header says");
        if (finish) cr_assert_eq(ferry_writer_finish(writer), FERRY_OK, "%s", ferry_last_error());
        ferry_writer_free(writer);
        cr_assert_neq(access(partial, F_OK), 0, "partial file left behind");
        ferry_file *file = NULL;
        if (!finish) {
            content = test_read_file(path, NULL);
            cr_assert_str_eq(content, "old model");
            free(content);
        } else {
            cr_assert_eq(ferry_file_open(path, &file), FERRY_OK, "%s", ferry_last_error());
            ferry_file_close(file);
        }
    }
    free(path);
    free(partial);
    test_rmtree(dir);
    free(dir);
}

Test(format, a_manifest_too_large_for_its_space_fails_finish_clearly) {
    char *dir = test_tempdir();
    char *path = test_path(dir, "m.ferry");
    ferry_config config = test_config(0, 0);
    ferry_writer *writer = writer_with_every_tensor(path, &config, FERRY_DTYPE_F16, NULL);
    const ferry_layout *layout = ferry_writer_layout(writer);
    /* keys live in the manifest; a key longer than the reserved space */
    size_t key_bytes = (size_t)layout->data_offset;
    char *key = malloc(key_bytes + 1);
    memset(key, 'k', key_bytes);
    key[key_bytes] = '\0';
    cr_assert_eq(ferry_writer_put_text(writer, key, "text"), FERRY_OK);
    cr_assert_eq(ferry_writer_finish(writer), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "does not fit"), "%s", ferry_last_error());
    ferry_writer_free(writer);
    cr_assert_neq(access(path, F_OK), 0);
    free(key);
    free(path);
    test_rmtree(dir);
    free(dir);
}

Test(format, bytes_after_the_last_text_are_refused) {
    uint64_t state = test_seed();
    char *dir = test_tempdir();
    char *good = write_good_file(dir, &state);
    size_t bytes = 0;
    char *content = test_read_file(good, &bytes);
    /* append a page and make the preamble agree, so only the check that the
     * contents end where the file ends can object */
    char *longer = calloc(1, bytes + 4096);
    memcpy(longer, content, bytes);
    uint64_t new_bytes = bytes + 4096;
    for (int i = 0; i < 8; i++) longer[48 + i] = (char)(new_bytes >> (8 * i));
    cr_assert_eq(test_write_file(good, longer, new_bytes), 0);
    ferry_file *file = NULL;
    cr_assert_eq(ferry_file_open(good, &file), FERRY_ERR_FORMAT);
    cr_assert(strstr(ferry_last_error(), "contents end at"), "%s", ferry_last_error());
    free(content);
    free(longer);
    free(good);
    test_rmtree(dir);
    free(dir);
}

Test(format, a_finished_writer_takes_nothing_more_and_texts_are_unique) {
    char *dir = test_tempdir();
    char *path = test_path(dir, "m.ferry");
    ferry_config config = test_config(0, 1);
    ferry_writer *writer = writer_with_every_tensor(path, &config, FERRY_DTYPE_F16, NULL);
    const ferry_layout *layout = ferry_writer_layout(writer);
    void *zeros = calloc(1, layout->tensors[0].bytes);
    cr_assert_eq(ferry_writer_put_text(writer, "a", "one"), FERRY_OK);
    cr_assert_eq(ferry_writer_put_text(writer, "a", "two"), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "twice"), "%s", ferry_last_error());
    cr_assert_eq(ferry_writer_finish(writer), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(ferry_writer_put(writer, -1, FERRY_TENSOR_EMBED, zeros, layout->tensors[0].bytes),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "already finished"), "%s", ferry_last_error());
    cr_assert_eq(ferry_writer_finish(writer), FERRY_ERR_INVALID_ARGUMENT);
    ferry_writer_free(writer);
    ferry_file *file = NULL;
    cr_assert_eq(ferry_file_open(path, &file), FERRY_OK, "%s", ferry_last_error());
    cr_assert_str_eq(ferry_file_text(file, "a"), "one");
    ferry_file_close(file);
    free(zeros);
    free(path);
    test_rmtree(dir);
    free(dir);
}
