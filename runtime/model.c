/*
 * model.c — a model in memory: opening a .ferry file (or generating a
 * synth: model's weights), choosing the backend, reading every tensor
 * (checksums on request) into backend memory, the RoPE table, and
 * ferry_model_get_info.  Loading is not a hot path; the
 * forward pass only reads what is built here.
 */
#include <stdio.h>
#include <stdlib.h>

#include "offload/offload.h"
#include "runtime/engine.h"
#include "runtime/format.h"

static size_t n_tensor_slots(const ferry_config *config) {
    return (size_t)(config->n_layers + 1) * FERRY_TENSOR_KIND_COUNT;
}

static void tensor_label(int layer, ferry_tensor_kind kind, char *buf, size_t size) {
    if (layer < 0) snprintf(buf, size, "%s", ferry_tensor_specs[kind].name);
    else snprintf(buf, size, "layers.%d.%s", layer, ferry_tensor_specs[kind].name);
}

ferry_status ferry_model_create(const ferry_config *config, ferry_dtype dtype,
                                ferry_backend *backend, ferry_model **out) {
    *out = NULL;
    ferry_model *model = NULL;
    float *inv_freq_host = NULL;
    ferry_status status;
    if (!backend) return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "model: no backend");
    if ((unsigned)dtype >= FERRY_DTYPE_COUNT) {
        status = ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "model: bad weight dtype %d", (int)dtype);
        goto fail;
    }
    FERRY_TRY_GOTO(ferry_config_validate(config));
    FERRY_TRY_GOTO(ferry_calloc(1, sizeof *model, "model", (void **)&model));
    model->config = *config;
    model->dtype = dtype;
    model->backend = backend;
    backend = NULL; /* owned by the model from here */
    FERRY_TRY_GOTO(ferry_calloc(n_tensor_slots(config), sizeof *model->tensors, "tensor table",
                                (void **)&model->tensors));
    /* RoPE inverse frequencies, computed once on the host (llama3/linear
     * scaling included) and kept beside the weights. */
    size_t half = (size_t)config->head_dim / 2;
    FERRY_TRY_GOTO(ferry_malloc(half * sizeof(float), "rope table", (void **)&inv_freq_host));
    ferry_rope_inv_freq(config, inv_freq_host);
    ferry_backend *be = model->backend;
    FERRY_TRY_GOTO(be->ops->alloc(be, half * sizeof(float), (void **)&model->inv_freq));
    FERRY_TRY_GOTO(be->ops->upload(be, model->inv_freq, inv_freq_host, half * sizeof(float)));
    free(inv_freq_host);
    *out = model;
    return FERRY_OK;
fail:
    free(inv_freq_host);
    ferry_backend_free(backend);
    ferry_model_close(model);
    return status;
}

ferry_status ferry_model_load_tensor(ferry_model *model, int layer, ferry_tensor_kind kind,
                                     const void *host_data, size_t host_bytes) {
    const ferry_config *config = &model->config;
    char name[64];
    if ((unsigned)kind >= FERRY_TENSOR_KIND_COUNT || layer < -1 || layer >= config->n_layers)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "model: no tensor kind %d in layer %d",
                          (int)kind, layer);
    tensor_label(layer, kind, name, sizeof name);
    int is_global = ferry_tensor_specs[kind].is_global;
    if (is_global != (layer < 0) || !ferry_tensor_present(config, kind))
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "model: tensor %s does not belong to it",
                          name);
    uint64_t rows, cols, bytes;
    ferry_tensor_shape(config, kind, &rows, &cols);
    ferry_dtype dtype = ferry_tensor_specs[kind].is_matrix ? model->dtype : FERRY_DTYPE_F32;
    if (ferry_mul_overflow(rows * cols, ferry_dtype_bytes(dtype), &bytes) || bytes != host_bytes)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "model: tensor %s has %zu bytes, expected %llu x %llu %s", name,
                          host_bytes, (unsigned long long)rows, (unsigned long long)cols,
                          ferry_dtype_name(dtype));
    ferry_backend *backend = model->backend;
    void **place = &model->tensors[ferry_model_tensor_slot(layer, kind)];
    if (*place) {
        backend->ops->free(backend, *place);
        model->weight_bytes -= bytes;
        *place = NULL;
    }
    void *memory = NULL;
    ferry_status status = backend->ops->alloc(backend, bytes, &memory);
    if (status != FERRY_OK) return ferry_fail_prefix(status, "model: tensor %s: ", name);
    status = backend->ops->upload(backend, memory, host_data, bytes);
    if (status != FERRY_OK) {
        backend->ops->free(backend, memory);
        return ferry_fail_prefix(status, "model: tensor %s: ", name);
    }
    *place = memory;
    model->weight_bytes += bytes;
    return FERRY_OK;
}

ferry_status ferry_model_check_complete(const ferry_model *model) {
    const ferry_config *config = &model->config;
    for (int layer = -1; layer < config->n_layers; layer++)
        for (int kind = 0; kind < FERRY_TENSOR_KIND_COUNT; kind++) {
            if (ferry_tensor_specs[kind].is_global != (layer < 0)) continue;
            if (!ferry_tensor_present(config, (ferry_tensor_kind)kind)) continue;
            if (layer >= 0 && !offload_stream_layer_resident(model->stream, layer)) continue;
            if (!ferry_model_tensor(model, layer, (ferry_tensor_kind)kind)) {
                char name[64];
                tensor_label(layer, (ferry_tensor_kind)kind, name, sizeof name);
                return ferry_fail(FERRY_ERR_FORMAT, "model: tensor %s was never loaded", name);
            }
        }
    return FERRY_OK;
}

/* Read (or generate) every tensor of the model's resident part through
 * one host buffer into backend memory. */
static ferry_status load_tensors(ferry_model *model, ferry_weight_source *source, int verify) {
    const ferry_layout *layout = source->layout;
    uint64_t largest = 0;
    for (int i = 0; i < layout->n_tensors; i++)
        if (layout->tensors[i].bytes > largest) largest = layout->tensors[i].bytes;
    void *staging = NULL;
    FERRY_TRY(ferry_malloc(largest ? largest : 1, "tensor staging buffer", &staging));
    ferry_status status = FERRY_OK;
    for (int i = 0; i < layout->n_tensors && status == FERRY_OK; i++) {
        const ferry_tensor_entry *entry = &layout->tensors[i];
        /* Streamed layers stay in DRAM or in the file (offload/). */
        if (entry->layer >= 0 && !offload_stream_layer_resident(model->stream, entry->layer))
            continue;
        status = ferry_source_read_tensor(source, entry, staging, verify);
        if (status == FERRY_OK)
            status = ferry_model_load_tensor(model, entry->layer, entry->kind, staging,
                                             entry->bytes);
    }
    free(staging);
    if (status == FERRY_OK) status = ferry_model_check_complete(model);
    return status;
}

/* Bytes of every tensor: what loading the whole model resident produces. */
static uint64_t tensors_bytes(const ferry_layout *layout) {
    uint64_t bytes = 0;
    for (int i = 0; i < layout->n_tensors; i++) bytes += layout->tensors[i].bytes;
    return bytes;
}

/* The weight source for path: the .ferry file it names (opened into
 * *file), or for a synth: name the layout of its preset (into *layout)
 * and the generator. */
static ferry_status open_source(const char *path, const ferry_model_options *opts,
                                ferry_file **file, ferry_layout *layout,
                                ferry_weight_source *source) {
    memset(source, 0, sizeof *source);
    source->name = path;
    source->on_progress = opts->on_progress;
    source->progress_user = opts->progress_user;
    if (!ferry_synth_is_name(path)) {
        FERRY_TRY(ferry_file_open(path, file));
        source->file = *file;
        source->layout = &(*file)->layout;
        source->total_bytes = tensors_bytes(source->layout);
        return FERRY_OK;
    }
    ferry_synth_spec spec;
    FERRY_TRY(ferry_synth_parse(path, &spec));
    if (opts->verify_checksums)
        return ferry_fail(FERRY_ERR_UNSUPPORTED,
                          "%s: a synthetic model has no file whose checksums could be verified",
                          path);
    FERRY_TRY(ferry_layout_build(&spec.preset->config, spec.dtype, layout));
    source->layout = layout;
    source->synth_seed = spec.seed;
    source->n_threads = ferry_synth_default_threads();
    source->total_bytes = tensors_bytes(layout);
    return FERRY_OK;
}

ferry_status ferry_model_open(const char *path, const ferry_model_options *opts,
                              ferry_model **out_model) {
    if (!out_model) return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "ferry_model_open: out_model is NULL");
    *out_model = NULL;
    if (!path) return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "ferry_model_open: path is NULL");
    ferry_model_options defaults = {0};
    if (!opts) opts = &defaults;
    ferry_file *file = NULL;
    ferry_layout synth_layout;
    memset(&synth_layout, 0, sizeof synth_layout);
    ferry_weight_source source;
    ferry_backend *backend = NULL;
    ferry_model *model = NULL;
    ferry_status status;
    /* The backend first: a build without CUDA says so before any I/O. */
    FERRY_TRY_GOTO(ferry_backend_new(opts->backend, opts->n_threads, &backend));
    FERRY_TRY_GOTO(open_source(path, opts, &file, &synth_layout, &source));
    status = ferry_model_create(&source.layout->config, source.layout->dtype, backend, &model);
    backend = NULL; /* the model owns it, or freed it on failure */
    if (status != FERRY_OK) goto fail;
    offload_stream_options stream_options;
    status = ferry_model_choose_placement(model, source.layout, opts, &stream_options);
    if (status != FERRY_OK) {
        ferry_fail_prefix(status, "%s: ", path);
        goto fail;
    }
    if (model->placement.streaming) {
        status = offload_stream_open(&source, &stream_options, &model->stream);
        if (status != FERRY_OK) {
            ferry_fail_prefix(status, "%s: ", path);
            goto fail;
        }
    }
    status = load_tensors(model, &source, opts->verify_checksums);
    if (status == FERRY_OK && model->stream) status = offload_stream_attach(model->stream, model);
    if (status != FERRY_OK) {
        ferry_fail_prefix(status, "%s: ", path);
        goto fail;
    }
    ferry_layout_free(&synth_layout);
    ferry_file_close(file);
    *out_model = model;
    return FERRY_OK;
fail:
    ferry_model_close(model);
    ferry_backend_free(backend);
    ferry_layout_free(&synth_layout);
    ferry_file_close(file);
    return status;
}

void ferry_model_close(ferry_model *model) {
    if (!model) return;
    ferry_backend *backend = model->backend;
    if (model->tensors)
        for (size_t i = 0; i < n_tensor_slots(&model->config); i++)
            if (model->tensors[i]) backend->ops->free(backend, model->tensors[i]);
    if (model->inv_freq) backend->ops->free(backend, model->inv_freq);
    offload_stream_free(model->stream);
    free(model->tensors);
    ferry_backend_free(backend);
    free(model);
}

ferry_status ferry_model_get_info(const ferry_model *model, ferry_model_info *out_info) {
    if (!model || !out_info)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "ferry_model_get_info: NULL argument");
    const ferry_config *config = &model->config;
    ferry_model_info info;
    memset(&info, 0, sizeof info);
    snprintf(info.architecture, sizeof info.architecture, "%s", config->architecture);
    snprintf(info.dtype, sizeof info.dtype, "%s", ferry_dtype_name(model->dtype));
    snprintf(info.backend, sizeof info.backend, "%s", model->backend->label);
    info.vocab_size = config->vocab_size;
    info.hidden_size = config->hidden_size;
    info.intermediate_size = config->intermediate_size;
    info.n_layers = config->n_layers;
    info.n_heads = config->n_heads;
    info.n_kv_heads = config->n_kv_heads;
    info.head_dim = config->head_dim;
    info.max_position = config->max_position;
    info.bos_token_id = config->bos_token_id;
    int n_eos = config->n_eos_token_ids;
    if (n_eos > (int)(sizeof info.eos_token_ids / sizeof info.eos_token_ids[0]))
        n_eos = (int)(sizeof info.eos_token_ids / sizeof info.eos_token_ids[0]);
    info.n_eos_token_ids = n_eos;
    for (int i = 0; i < n_eos; i++) info.eos_token_ids[i] = config->eos_token_ids[i];
    info.n_parameters = ferry_config_n_parameters(config);
    *out_info = info;
    return FERRY_OK;
}
