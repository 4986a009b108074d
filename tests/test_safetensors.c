/*
 * test_safetensors.c — the .safetensors reader and the checkpoint
 * directory (single file and sharded index).  Files are written byte by
 * byte here, so every corruption is exactly the one named by the test.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "runtime/safetensors.h"

static char *dir;

static void setup(void) { dir = test_tempdir(); }
static void teardown(void) {
    test_rmtree(dir);
    free(dir);
}

TestSuite(safetensors, .init = setup, .fini = teardown);

/* Write: 8-byte LE header length, header text, data. */
static char *write_raw(const char *name, uint64_t header_length, const char *header,
                       const void *data, size_t data_bytes) {
    char *path = test_path(dir, name);
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    uint8_t length[8];
    for (int i = 0; i < 8; i++) length[i] = (uint8_t)(header_length >> (8 * i));
    fwrite(length, 1, 8, f);
    fwrite(header, 1, strlen(header), f);
    if (data_bytes) fwrite(data, 1, data_bytes, f);
    fclose(f);
    return path;
}

static char *write_file(const char *name, const char *header, const void *data, size_t bytes) {
    return write_raw(name, strlen(header), header, data, bytes);
}

/* Opening must fail with status and a message containing each fragment. */
static void expect_open_error(const char *path, ferry_status status, const char *fragment1,
                              const char *fragment2) {
    ferry_safetensors_file *file = (void *)0x1;
    ferry_status got = ferry_safetensors_open(path, &file);
    const char *message = ferry_last_error();
    cr_assert_eq(got, status, "status %d (%s)", got, message);
    cr_assert_null(file);
    cr_assert(strstr(message, path), "message names the file: %s", message);
    if (fragment1) cr_assert(strstr(message, fragment1), "'%s' not in: %s", fragment1, message);
    if (fragment2) cr_assert(strstr(message, fragment2), "'%s' not in: %s", fragment2, message);
}

typedef struct tensor_spec {
    const char *name;
    const char *dtype;
    int n_dims;
    uint64_t shape[3];
} tensor_spec;

static size_t spec_bytes(const tensor_spec *spec) {
    size_t n = strcmp(spec->dtype, "F32") == 0 ? 4 : 2;
    for (int d = 0; d < spec->n_dims; d++) n *= spec->shape[d];
    return n;
}

/* A valid file holding the given tensors back to back, random bytes;
 * returns the data section (caller frees). */
static uint8_t *write_valid(const char *name, const tensor_spec *specs, int n, uint64_t *rng,
                            size_t *out_bytes, char **out_path) {
    char header[4096];
    size_t used = (size_t)snprintf(header, sizeof header,
                                   "{\"__metadata__\":{\"format\":\"pt\"}");
    size_t offset = 0;
    for (int i = 0; i < n; i++) {
        used += (size_t)snprintf(header + used, sizeof header - used,
                                 ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", specs[i].name,
                                 specs[i].dtype);
        for (int d = 0; d < specs[i].n_dims; d++)
            used += (size_t)snprintf(header + used, sizeof header - used, "%s%llu", d ? "," : "",
                                     (unsigned long long)specs[i].shape[d]);
        size_t bytes = spec_bytes(&specs[i]);
        used += (size_t)snprintf(header + used, sizeof header - used,
                                 "],\"data_offsets\":[%zu,%zu]}", offset, offset + bytes);
        offset += bytes;
    }
    snprintf(header + used, sizeof header - used, "}       "); /* padded, as HF pads to 8 */
    uint8_t *data = malloc(offset + 1);
    for (size_t i = 0; i < offset; i++) data[i] = (uint8_t)test_rand_u64(rng);
    *out_path = write_file(name, header, data, offset);
    *out_bytes = offset;
    return data;
}

static const tensor_spec three_tensors[] = {
    {"model.embed_tokens.weight", "BF16", 2, {37, 24}},
    {"model.norm.weight", "F32", 1, {24}},
    {"lm_head.weight", "F16", 2, {37, 24}},
};

Test(safetensors, valid_file_reads_back_every_tensor_exactly) {
    uint64_t rng = test_seed();
    size_t data_bytes;
    char *path;
    uint8_t *data = write_valid("ok.safetensors", three_tensors, 3, &rng, &data_bytes, &path);
    ferry_safetensors_file *file = NULL;
    cr_assert_eq(ferry_safetensors_open(path, &file), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(file->n_tensors, 3);
    size_t offset = 0;
    static const ferry_dtype dtypes[] = {FERRY_DTYPE_BF16, FERRY_DTYPE_F32, FERRY_DTYPE_F16};
    for (int i = 0; i < 3; i++) {
        const ferry_safetensors_tensor *t = ferry_safetensors_find(file, three_tensors[i].name);
        cr_assert(t, "%s found", three_tensors[i].name);
        cr_assert_eq(t->dtype, dtypes[i]);
        cr_assert_eq(t->n_dims, three_tensors[i].n_dims);
        for (int d = 0; d < t->n_dims; d++) cr_assert_eq(t->shape[d], three_tensors[i].shape[d]);
        size_t bytes = spec_bytes(&three_tensors[i]);
        cr_assert_eq(t->bytes, bytes);
        uint8_t *got = malloc(bytes);
        memset(got, 0xA5, bytes);
        cr_assert_eq(ferry_safetensors_read(file, t, got, bytes), FERRY_OK);
        cr_assert(memcmp(got, data + offset, bytes) == 0, "%s bytes differ", t->name);
        free(got);
        offset += bytes;
    }
    cr_assert_null(ferry_safetensors_find(file, "model.layers.0.mlp.up_proj.weight"));
    ferry_safetensors_close(file);
    free(data);
    free(path);
}

Test(safetensors, read_range_returns_the_middle_of_a_tensor_and_refuses_outside) {
    uint64_t rng = test_seed();
    size_t data_bytes;
    char *path;
    uint8_t *data = write_valid("range.safetensors", three_tensors, 3, &rng, &data_bytes, &path);
    ferry_safetensors_file *file = NULL;
    cr_assert_eq(ferry_safetensors_open(path, &file), FERRY_OK);
    const ferry_safetensors_tensor *norm = ferry_safetensors_find(file, "model.norm.weight");
    uint8_t got[40];
    cr_assert_eq(ferry_safetensors_read_range(file, norm, 8, got, 40), FERRY_OK);
    size_t norm_start = spec_bytes(&three_tensors[0]);
    cr_assert(memcmp(got, data + norm_start + 8, 40) == 0);
    cr_assert_neq(ferry_safetensors_read_range(file, norm, 90, got, 8), FERRY_OK);
    cr_assert_neq(ferry_safetensors_read(file, norm, got, 40), FERRY_OK);
    ferry_safetensors_close(file);
    free(data);
    free(path);
}

Test(safetensors, empty_tensor_and_scalar_are_accepted) {
    static const char header[] = "{\"empty\":{\"dtype\":\"F16\",\"shape\":[0,5],\"data_offsets\":[0,0]},"
                                 "\"scalar\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}";
    float value = 3.5f;
    char *path = write_file("small.safetensors", header, &value, 4);
    ferry_safetensors_file *file = NULL;
    cr_assert_eq(ferry_safetensors_open(path, &file), FERRY_OK, "%s", ferry_last_error());
    const ferry_safetensors_tensor *scalar = ferry_safetensors_find(file, "scalar");
    float got = 0;
    cr_assert_eq(ferry_safetensors_read(file, scalar, &got, 4), FERRY_OK);
    cr_assert_eq(got, 3.5f);
    cr_assert_eq(ferry_safetensors_find(file, "empty")->bytes, 0);
    ferry_safetensors_close(file);
    free(path);
}

static const char one_tensor[] = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
static const float four_floats[4] = {1, 2, 3, 4};

Test(safetensors, header_length_beyond_the_file_is_rejected) {
    char *path = write_raw("long.safetensors", 1000, one_tensor, four_floats, 16);
    expect_open_error(path, FERRY_ERR_FORMAT, "header length 1000", NULL);
    free(path);
}

Test(safetensors, header_length_over_100_mb_is_rejected) {
    char *path = write_raw("huge.safetensors", 1ull << 40, one_tensor, four_floats, 16);
    expect_open_error(path, FERRY_ERR_FORMAT, "out of bounds", NULL);
    free(path);
}

Test(safetensors, zero_header_length_is_rejected) {
    char *path = write_raw("zero.safetensors", 0, "", NULL, 0);
    expect_open_error(path, FERRY_ERR_FORMAT, "header length 0", NULL);
    free(path);
}

Test(safetensors, file_shorter_than_the_length_field_is_rejected) {
    char *path = test_path(dir, "tiny.safetensors");
    cr_assert_eq(test_write_file(path, "\x05\x00\x00", 3), 0);
    expect_open_error(path, FERRY_ERR_FORMAT, "too short", NULL);
    free(path);
}

Test(safetensors, missing_file_is_an_io_error) {
    char *path = test_path(dir, "absent.safetensors");
    expect_open_error(path, FERRY_ERR_IO, "cannot open", NULL);
    free(path);
}

Test(safetensors, truncated_data_is_rejected) {
    char *path = write_file("cut.safetensors", one_tensor, four_floats, 12);
    expect_open_error(path, FERRY_ERR_FORMAT, "'w'", "truncated");
    free(path);
}

Test(safetensors, bad_json_is_rejected) {
    char *path = write_file("json.safetensors", "{\"w\":{\"dtype\":\"F32\",", NULL, 0);
    expect_open_error(path, FERRY_ERR_FORMAT, "not valid JSON", NULL);
    free(path);
}

Test(safetensors, header_that_is_not_an_object_is_rejected) {
    char *path = write_file("array.safetensors", "[1, 2, 3]", NULL, 0);
    expect_open_error(path, FERRY_ERR_FORMAT, "not a JSON object", NULL);
    free(path);
}

Test(safetensors, unknown_dtype_is_named_as_unsupported) {
    char *path = write_file("i64.safetensors",
                            "{\"ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}",
                            four_floats, 16);
    expect_open_error(path, FERRY_ERR_UNSUPPORTED, "'ids'", "dtype I64 is unsupported");
    free(path);
}

Test(safetensors, shape_that_disagrees_with_the_byte_size_is_rejected) {
    char *path = write_file("size.safetensors",
                            "{\"w\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,16]}}",
                            four_floats, 16);
    expect_open_error(path, FERRY_ERR_FORMAT, "'w'", "needs 12 bytes");
    free(path);
}

Test(safetensors, shape_with_a_negative_or_fractional_size_is_rejected) {
    char *negative = write_file("neg.safetensors",
                                "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2,-2],\"data_offsets\":[0,16]}}",
                                four_floats, 16);
    expect_open_error(negative, FERRY_ERR_FORMAT, "shape[0]", NULL);
    char *fraction = write_file("frac.safetensors",
                                "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,1.5],\"data_offsets\":[0,12]}}",
                                four_floats, 16);
    expect_open_error(fraction, FERRY_ERR_FORMAT, "shape[1]", NULL);
    free(negative);
    free(fraction);
}

Test(safetensors, shape_whose_product_overflows_is_rejected) {
    char *path = write_file("overflow.safetensors",
                            "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
                            "\"data_offsets\":[0,16]}}",
                            four_floats, 16);
    expect_open_error(path, FERRY_ERR_FORMAT, "overflows", NULL);
    free(path);
}

Test(safetensors, offsets_outside_the_data_are_rejected) {
    char *path = write_file("outside.safetensors",
                            "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[8,24]}}",
                            four_floats, 16);
    expect_open_error(path, FERRY_ERR_FORMAT, "'w'", "run past");
    free(path);
}

Test(safetensors, end_before_begin_is_rejected) {
    char *path = write_file("reversed.safetensors",
                            "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[16,0]}}",
                            four_floats, 16);
    expect_open_error(path, FERRY_ERR_FORMAT, "end < begin", NULL);
    free(path);
}

Test(safetensors, overlapping_tensors_are_rejected) {
    char *path = write_file("overlap.safetensors",
                            "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                            "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                            four_floats, 16);
    expect_open_error(path, FERRY_ERR_FORMAT, "'a' and 'b' overlap", NULL);
    free(path);
}

Test(safetensors, duplicate_tensor_names_are_rejected) {
    char *path = write_file("dup.safetensors",
                            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                            "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                            four_floats, 16);
    expect_open_error(path, FERRY_ERR_FORMAT, "'a' appears twice", NULL);
    free(path);
}

Test(safetensors, missing_fields_and_non_string_metadata_are_rejected) {
    char *no_offsets = write_file("nooff.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4]}}",
                                  four_floats, 16);
    expect_open_error(no_offsets, FERRY_ERR_FORMAT, "data_offsets", NULL);
    char *metadata = write_file("meta.safetensors", "{\"__metadata__\":{\"step\":3}}", NULL, 0);
    expect_open_error(metadata, FERRY_ERR_FORMAT, "__metadata__", "'step'");
    free(no_offsets);
    free(metadata);
}

/* Any corruption of a valid file is either still readable or a clean error. */
Test(safetensors, random_corruptions_never_crash) {
    uint64_t rng = test_seed();
    size_t data_bytes;
    char *path;
    uint8_t *data = write_valid("base.safetensors", three_tensors, 3, &rng, &data_bytes, &path);
    size_t file_bytes = 0;
    uint8_t *original = (uint8_t *)test_read_file(path, &file_bytes);
    uint8_t *mutated = malloc(file_bytes);
    char *mutated_path = test_path(dir, "mutated.safetensors");
    for (int trial = 0; trial < 300; trial++) {
        memcpy(mutated, original, file_bytes);
        size_t bytes = file_bytes;
        uint64_t header_end = 8 + (original[0] | (uint64_t)original[1] << 8);
        if (trial % 3 == 0) {
            bytes = test_rand_u64(&rng) % file_bytes;   /* truncate */
        } else {
            for (int flips = 1 + (int)(test_rand_u64(&rng) % 4); flips > 0; flips--) {
                size_t at = test_rand_u64(&rng) % header_end;   /* the header is what's parsed */
                mutated[at] ^= (uint8_t)(1u << (test_rand_u64(&rng) % 8));
            }
        }
        cr_assert_eq(test_write_file(mutated_path, mutated, bytes), 0);
        ferry_safetensors_file *file = NULL;
        ferry_status status = ferry_safetensors_open(mutated_path, &file);
        if (status == FERRY_OK) {
            for (int i = 0; i < file->n_tensors; i++) {
                void *buffer = malloc(file->tensors[i].bytes + 1);
                cr_assert_eq(ferry_safetensors_read(file, &file->tensors[i], buffer,
                                                    file->tensors[i].bytes),
                             FERRY_OK);
                free(buffer);
            }
            ferry_safetensors_close(file);
        } else {
            cr_assert(strlen(ferry_last_error()) > 0);
        }
    }
    free(mutated_path);
    free(mutated);
    free(original);
    free(data);
    free(path);
}

/* ------------------------------------------------------- checkpoints */

static void write_text(const char *name, const char *text) {
    char *path = test_path(dir, name);
    cr_assert_eq(test_write_file(path, text, strlen(text)), 0);
    free(path);
}

static const tensor_spec shard1[] = {{"a.weight", "F32", 2, {3, 4}}, {"b.weight", "BF16", 1, {6}}};
static const tensor_spec shard2[] = {{"c.weight", "F16", 2, {2, 5}}};

static const char index_json[] =
    "{\"metadata\":{\"total_size\":70},\"weight_map\":{"
    "\"a.weight\":\"model-00001-of-00002.safetensors\","
    "\"b.weight\":\"model-00001-of-00002.safetensors\","
    "\"c.weight\":\"model-00002-of-00002.safetensors\"}}";

Test(safetensors, sharded_checkpoint_finds_every_tensor_in_its_shard) {
    uint64_t rng = test_seed();
    size_t bytes1, bytes2;
    char *path1, *path2;
    uint8_t *data1 = write_valid("model-00001-of-00002.safetensors", shard1, 2, &rng, &bytes1, &path1);
    uint8_t *data2 = write_valid("model-00002-of-00002.safetensors", shard2, 1, &rng, &bytes2, &path2);
    write_text("model.safetensors.index.json", index_json);
    ferry_checkpoint *checkpoint = NULL;
    cr_assert_eq(ferry_checkpoint_open(dir, &checkpoint), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(ferry_checkpoint_n_names(checkpoint), 3);
    cr_assert_str_eq(ferry_checkpoint_name(checkpoint, 2), "c.weight");
    const ferry_safetensors_file *file;
    const ferry_safetensors_tensor *tensor;
    cr_assert_eq(ferry_checkpoint_find(checkpoint, "c.weight", &file, &tensor), FERRY_OK);
    cr_assert_str_eq(file->path, path2);
    uint8_t got[20];
    cr_assert_eq(ferry_safetensors_read(file, tensor, got, sizeof got), FERRY_OK);
    cr_assert(memcmp(got, data2, 20) == 0);
    cr_assert_eq(ferry_checkpoint_find(checkpoint, "b.weight", &file, &tensor), FERRY_OK);
    cr_assert_eq(ferry_safetensors_read(file, tensor, got, 12), FERRY_OK);
    cr_assert(memcmp(got, data1 + 48, 12) == 0);
    cr_assert_eq(ferry_checkpoint_find(checkpoint, "lm_head.weight", &file, &tensor), FERRY_OK);
    cr_assert_null(tensor);
    ferry_checkpoint_close(checkpoint);
    free(data1);
    free(data2);
    free(path1);
    free(path2);
}

Test(safetensors, missing_shard_is_named_when_the_checkpoint_opens) {
    uint64_t rng = test_seed();
    size_t bytes1;
    char *path1;
    uint8_t *data1 = write_valid("model-00001-of-00002.safetensors", shard1, 2, &rng, &bytes1, &path1);
    write_text("model.safetensors.index.json", index_json);
    ferry_checkpoint *checkpoint = NULL;
    cr_assert_eq(ferry_checkpoint_open(dir, &checkpoint), FERRY_ERR_IO);
    cr_assert_null(checkpoint);
    cr_assert(strstr(ferry_last_error(), "model-00002-of-00002.safetensors"), "%s",
              ferry_last_error());
    cr_assert(strstr(ferry_last_error(), "missing"), "%s", ferry_last_error());
    free(data1);
    free(path1);
}

Test(safetensors, shard_that_lacks_a_listed_tensor_is_an_error) {
    uint64_t rng = test_seed();
    size_t bytes;
    char *path1, *path2;
    uint8_t *data1 = write_valid("model-00001-of-00002.safetensors", shard1, 1, &rng, &bytes, &path1);
    uint8_t *data2 = write_valid("model-00002-of-00002.safetensors", shard2, 1, &rng, &bytes, &path2);
    write_text("model.safetensors.index.json", index_json);
    ferry_checkpoint *checkpoint = NULL;
    cr_assert_eq(ferry_checkpoint_open(dir, &checkpoint), FERRY_OK, "%s", ferry_last_error());
    const ferry_safetensors_file *file;
    const ferry_safetensors_tensor *tensor;
    cr_assert_eq(ferry_checkpoint_find(checkpoint, "b.weight", &file, &tensor), FERRY_ERR_FORMAT);
    cr_assert(strstr(ferry_last_error(), "'b.weight'"), "%s", ferry_last_error());
    cr_assert(strstr(ferry_last_error(), "does not hold it"), "%s", ferry_last_error());
    ferry_checkpoint_close(checkpoint);
    free(data1);
    free(data2);
    free(path1);
    free(path2);
}

Test(safetensors, bad_index_files_are_rejected) {
    static const char *bad[] = {
        "{\"weight_map\": [1, 2]}",
        "{\"weight_map\": {\"a\": 3}}",
        "{\"weight_map\": {\"a\": \"../elsewhere.safetensors\"}}",
        "not json",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_text("model.safetensors.index.json", bad[i]);
        ferry_checkpoint *checkpoint = NULL;
        cr_assert_eq(ferry_checkpoint_open(dir, &checkpoint), FERRY_ERR_FORMAT, "%s", bad[i]);
        cr_assert_null(checkpoint);
        cr_assert(strstr(ferry_last_error(), "model.safetensors.index.json"), "%s",
                  ferry_last_error());
    }
}

Test(safetensors, directory_without_weights_is_an_error) {
    ferry_checkpoint *checkpoint = NULL;
    cr_assert_eq(ferry_checkpoint_open(dir, &checkpoint), FERRY_ERR_IO);
    cr_assert(strstr(ferry_last_error(), "model.safetensors"), "%s", ferry_last_error());
}

Test(safetensors, single_file_checkpoint_lists_its_tensors) {
    uint64_t rng = test_seed();
    size_t bytes;
    char *path;
    uint8_t *data = write_valid("model.safetensors", three_tensors, 3, &rng, &bytes, &path);
    ferry_checkpoint *checkpoint = NULL;
    cr_assert_eq(ferry_checkpoint_open(dir, &checkpoint), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(ferry_checkpoint_n_names(checkpoint), 3);
    const ferry_safetensors_file *file;
    const ferry_safetensors_tensor *tensor;
    cr_assert_eq(ferry_checkpoint_find(checkpoint, "lm_head.weight", &file, &tensor), FERRY_OK);
    cr_assert(tensor);
    cr_assert_eq(tensor->dtype, FERRY_DTYPE_F16);
    ferry_checkpoint_close(checkpoint);
    free(data);
    free(path);
}
