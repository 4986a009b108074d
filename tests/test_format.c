/*
 * test_format.c — the .ferry writer and reader: layout properties, a byte
 * exact round trip with tensors written in random order, and every kind of
 * damaged file giving a clear error instead of a crash.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.h"
#include "runtime/format.h"

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
        cr_assert_eq(ferry_layout_find(&layout, 0, FERRY_TENSOR_BQ) >= 0, (variant & 1) != 0);
        cr_assert_eq(ferry_layout_find(&layout, -1, FERRY_TENSOR_LM_HEAD) >= 0, (variant >> 1) == 0);
        ferry_layout_free(&layout);
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
}
