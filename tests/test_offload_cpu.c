/*
 * test_offload_cpu.c — the slot ring with the CPU backend's device
 * (memcpy copies, direct layer calls) and the pread reader on a real
 * file: every layer function sees exactly its layer's bytes, in order,
 * whatever the tier mix and ring depth; a truncated file is an error
 * naming the layer, the file and the offset.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "helpers.h"
#include "offload/offload.h"

enum { N_LAYERS = 11, LAYER_STRIDE = 8192 };

typedef struct layer_check {
    uint64_t layer_bytes[N_LAYERS];
    int order[4 * N_LAYERS];
    int n_calls;
    int bad_layer;              /* first layer whose bytes were wrong, or -1 */
} layer_check;

static unsigned char byte_of(int layer, uint64_t i) { return (unsigned char)(layer * 31 + i * 7); }

static ferry_status check_layer(void *user, int layer, const void *weights, void *step_user) {
    layer_check *check = user;
    (void)step_user;
    const unsigned char *bytes = weights;
    for (uint64_t i = 0; i < check->layer_bytes[layer]; i++)
        if (bytes[i] != byte_of(layer, i)) {
            if (check->bad_layer < 0) check->bad_layer = layer;
            break;
        }
    if (check->n_calls < 4 * N_LAYERS) check->order[check->n_calls] = layer;
    check->n_calls++;
    return FERRY_OK;
}

typedef struct file_model {
    char *dir, *path;
    int fd;
    unsigned char *host[N_LAYERS];
    offload_source sources[N_LAYERS];
} file_model;

static void file_model_init(file_model *model, layer_check *check, const char *tiers) {
    memset(model, 0, sizeof *model);
    memset(check, 0, sizeof *check);
    check->bad_layer = -1;
    model->dir = test_tempdir();
    model->path = test_path(model->dir, "layers.bin");
    unsigned char *file = calloc(N_LAYERS, LAYER_STRIDE);
    for (int layer = 0; layer < N_LAYERS; layer++) {
        uint64_t bytes = 3000 + (uint64_t)layer * 377;
        check->layer_bytes[layer] = bytes;
        model->host[layer] = malloc(bytes);
        for (uint64_t i = 0; i < bytes; i++)
            model->host[layer][i] = file[(size_t)layer * LAYER_STRIDE + i] = byte_of(layer, i);
        offload_source *source = &model->sources[layer];
        char tier = tiers[layer % strlen(tiers)];
        source->tier = tier == 'G' ? OFFLOAD_TIER_GPU : tier == 'H' ? OFFLOAD_TIER_HOST : OFFLOAD_TIER_DISK;
        source->resident = source->host = model->host[layer];
        source->file_offset = (uint64_t)layer * LAYER_STRIDE;
        source->bytes = bytes;
    }
    cr_assert_eq(test_write_file(model->path, file, (size_t)N_LAYERS * LAYER_STRIDE), 0);
    free(file);
    model->fd = open(model->path, O_RDONLY);
    cr_assert_geq(model->fd, 0);
}

static void free_reader(offload_reader *reader, int use_nvme) {
    if (use_nvme) offload_reader_nvme_free(reader);
    else offload_reader_pread_free(reader);
}

static void file_model_free(file_model *model) {
    for (int i = 0; i < N_LAYERS; i++) free(model->host[i]);
    close(model->fd);
    test_rmtree(model->dir);
    free(model->dir);
    free(model->path);
}

/* use_nvme: the nvme/ engine (O_DIRECT, io_uring) instead of pread. */
static offload_ring *make_ring(file_model *model, layer_check *check, int n_slots, int use_nvme,
                               offload_device *device, offload_reader *reader) {
    cr_assert_eq(offload_device_cpu_new(check_layer, check, device), FERRY_OK);
    if (use_nvme)
        cr_assert_eq(offload_reader_nvme_new(model->path, n_slots, reader), FERRY_OK, "%s",
                     ferry_last_error());
    else
        cr_assert_eq(offload_reader_pread_new(model->fd, model->path, n_slots, reader), FERRY_OK);
    offload_ring_options options = {n_slots, -1, 1, 0};
    offload_ring *ring = NULL;
    cr_assert_eq(offload_ring_new(&options, N_LAYERS, model->sources, *device, *reader, &ring),
                 FERRY_OK, "%s", ferry_last_error());
    return ring;
}

Test(offload_cpu, every_layer_sees_its_own_bytes_for_every_tier_mix_and_depth) {
    const char *mixes[] = {"G", "H", "D", "GHD", "DDHG"};
    for (int use_nvme = 0; use_nvme <= 1; use_nvme++)
    for (size_t mix = 0; mix < sizeof mixes / sizeof mixes[0]; mix++)
        for (int n_slots = 1; n_slots <= 3; n_slots++) {
            file_model model;
            layer_check check;
            file_model_init(&model, &check, mixes[mix]);
            offload_device device;
            offload_reader reader;
            offload_ring *ring = make_ring(&model, &check, n_slots, use_nvme, &device, &reader);
            for (int step = 0; step < 3; step++)
                cr_assert_eq(offload_ring_step(ring, NULL, NULL), FERRY_OK, "%s", ferry_last_error());
            cr_assert_eq(check.bad_layer, -1, "%s, mix %s, %d slots: layer %d saw wrong bytes",
                         use_nvme ? "nvme" : "pread", mixes[mix], n_slots, check.bad_layer);
            cr_assert_eq(check.n_calls, 3 * N_LAYERS);
            for (int i = 0; i < 3 * N_LAYERS; i++) cr_assert_eq(check.order[i], i % N_LAYERS);
            offload_ring_free(ring);
            free_reader(&reader, use_nvme);
            offload_device_cpu_free(&device);
            file_model_free(&model);
        }
}

static void truncated_read_fails(int use_nvme, const char *expected_read) {
    file_model model;
    layer_check check;
    file_model_init(&model, &check, "D");
    cr_assert_eq(truncate(model.path, 6 * LAYER_STRIDE + 100), 0);
    offload_device device;
    offload_reader reader;
    offload_ring *ring = make_ring(&model, &check, 2, use_nvme, &device, &reader);
    cr_assert_eq(offload_ring_step(ring, NULL, NULL), FERRY_ERR_IO);
    const char *message = ferry_last_error();
    cr_assert(strstr(message, "layer 6 (file offset 49152, "), "message: %s", message);
    cr_assert(strstr(message, expected_read), "message: %s", message);
    cr_assert_eq(check.n_calls, 6, "layers 0-5 ran, then the step stopped");
    offload_ring_free(ring);
    free_reader(&reader, use_nvme);
    offload_device_cpu_free(&device);
    file_model_free(&model);
}

Test(offload_cpu, a_truncated_file_names_the_layer_file_and_offset) {
    truncated_read_fails(0, "layers.bin: read at offset 49252 failed: unexpected end of file");
}

Test(offload_cpu, a_truncated_file_read_through_nvme_names_the_layer_file_and_offset) {
    truncated_read_fails(1, "layers.bin: read at offset 49152: 100 of ");
}
