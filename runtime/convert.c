/*
 * convert.c — `ferry convert`'s work: read config.json, check the
 * checkpoint holds exactly the tensors the config implies (names, shapes),
 * and stream them one at a time, dtype-converted, into a ferry_writer.
 * Memory: one source tensor plus its converted copy, never more.
 */
#include "runtime/convert.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "runtime/config.h"
#include "runtime/format.h"
#include "runtime/safetensors.h"

#define MAX_CONFIG_BYTES (16ull << 20)
#define MAX_SIDE_TEXT_BYTES (256ull << 20)
#define LAYER_PREFIX "model.layers."
/* Elements compared per step when checking a tied lm_head. */
#define TIED_COMPARE_ELEMENTS (1u << 20)

/* Texts a later stage (tokenizer, generation defaults) reads from the file. */
static const char *const side_texts[] = {
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
};

typedef struct convert_state {
    const char *hf_dir;
    ferry_config config;
    ferry_checkpoint *checkpoint;
    ferry_writer *writer;
    void *source;               /* one tensor as read */
    size_t source_capacity;
    void *converted;            /* the same, in its stored dtype */
    size_t converted_capacity;
    ferry_convert_progress progress;
    uint64_t start_ns;
} convert_state;

static ferry_status grow(void **buffer, size_t *capacity, size_t bytes, const char *what) {
    if (bytes <= *capacity) return FERRY_OK;
    void *bigger = realloc(*buffer, bytes);
    if (!bigger)
        return ferry_fail(FERRY_ERR_NO_MEMORY, "out of memory for %s (%zu bytes)", what, bytes);
    *buffer = bigger;
    *capacity = bytes;
    return FERRY_OK;
}

/* The HF name of (layer, kind): "model.layers.3.self_attn.q_proj.weight". */
static void hf_tensor_name(int layer, ferry_tensor_kind kind, char *buf, size_t size) {
    const ferry_tensor_spec *spec = &ferry_tensor_specs[kind];
    if (spec->is_global)
        snprintf(buf, size, "%s", spec->hf_name);
    else
        snprintf(buf, size, LAYER_PREFIX "%d.%s", layer, spec->hf_name);
}

static ferry_status load_config(convert_state *state, ferry_dtype *checkpoint_dtype) {
    ferry_status status = FERRY_OK;
    char *text = NULL;
    char *path = ferry_path_join(state->hf_dir, "config.json");
    if (!path) return ferry_fail(FERRY_ERR_NO_MEMORY, "out of memory");
    FERRY_TRY_GOTO(ferry_read_text_file(path, MAX_CONFIG_BYTES, &text, NULL));
    FERRY_TRY_GOTO(ferry_config_from_hf_json(text, path, &state->config, checkpoint_dtype));
fail:
    free(text);
    free(path);
    return status;
}

/* Layer tensors beyond num_hidden_layers mean the config and the weights
 * disagree; better to stop than to silently drop layers. */
static ferry_status check_no_extra_layers(const convert_state *state) {
    int n = ferry_checkpoint_n_names(state->checkpoint);
    for (int i = 0; i < n; i++) {
        const char *name = ferry_checkpoint_name(state->checkpoint, i);
        if (strncmp(name, LAYER_PREFIX, strlen(LAYER_PREFIX)) != 0) continue;
        char *end = NULL;
        long layer = strtol(name + strlen(LAYER_PREFIX), &end, 10);
        if (end && *end == '.' && layer >= state->config.n_layers)
            return ferry_fail(FERRY_ERR_FORMAT,
                              "%s: the checkpoint has tensor '%s' but config.json says "
                              "num_hidden_layers = %d",
                              state->hf_dir, name, state->config.n_layers);
    }
    return FERRY_OK;
}

/* Find a tensor the layout needs; missing is an error naming it. */
static ferry_status find_required(convert_state *state, const char *name,
                                  const ferry_safetensors_file **file,
                                  const ferry_safetensors_tensor **tensor) {
    FERRY_TRY(ferry_checkpoint_find(state->checkpoint, name, file, tensor));
    if (!*tensor)
        return ferry_fail(FERRY_ERR_FORMAT, "%s: tensor '%s' is missing from the checkpoint",
                          state->hf_dir, name);
    return FERRY_OK;
}

/* The checkpoint's tensor must have the shape the config implies:
 * [rows, cols] for a matrix, [rows] for a vector. */
static ferry_status check_shape(const convert_state *state, ferry_tensor_kind kind,
                                const ferry_safetensors_tensor *tensor) {
    uint64_t rows = 0, cols = 0;
    ferry_tensor_shape(&state->config, kind, &rows, &cols);
    int is_matrix = ferry_tensor_specs[kind].is_matrix;
    int matches = is_matrix ? tensor->n_dims == 2 && tensor->shape[0] == rows &&
                                  tensor->shape[1] == cols
                            : tensor->n_dims == 1 && tensor->shape[0] == rows;
    if (matches) return FERRY_OK;
    char found[160], expected[64];
    ferry_safetensors_describe(tensor, found, sizeof found);
    if (is_matrix)
        snprintf(expected, sizeof expected, "[%llu, %llu]", (unsigned long long)rows,
                 (unsigned long long)cols);
    else
        snprintf(expected, sizeof expected, "[%llu]", (unsigned long long)rows);
    return ferry_fail(FERRY_ERR_FORMAT,
                      "%s: tensor '%s' has shape %s but config.json implies %s", state->hf_dir,
                      tensor->name, found, expected);
}

static ferry_status report_progress(convert_state *state, const ferry_convert_options *options) {
    state->progress.elapsed_ns = ferry_now_ns() - state->start_ns;
    if (options->progress && options->progress(&state->progress, options->progress_user))
        return ferry_fail(FERRY_ERR_CANCELLED, "%s: stopped after %d of %d tensors; no output written",
                          state->hf_dir, state->progress.n_tensors_done, state->progress.n_tensors);
    return FERRY_OK;
}

/* Read, convert and write one tensor of the layout. */
static ferry_status convert_tensor(convert_state *state, const ferry_tensor_entry *entry) {
    char name[256];
    hf_tensor_name(entry->layer, entry->kind, name, sizeof name);
    const ferry_safetensors_file *file;
    const ferry_safetensors_tensor *tensor;
    FERRY_TRY(find_required(state, name, &file, &tensor));
    FERRY_TRY(check_shape(state, entry->kind, tensor));
    if (tensor->n_elements * ferry_dtype_bytes(entry->dtype) != entry->bytes)
        return ferry_fail(FERRY_ERR_FORMAT,
                          "%s: tensor '%s': %llu elements do not fill the %llu bytes the layout "
                          "reserves",
                          state->hf_dir, name, (unsigned long long)tensor->n_elements,
                          (unsigned long long)entry->bytes);
    FERRY_TRY(grow(&state->source, &state->source_capacity, (size_t)tensor->bytes, name));
    FERRY_TRY(ferry_safetensors_read(file, tensor, state->source, state->source_capacity));
    state->progress.bytes_read += tensor->bytes;
    const void *stored = state->source;
    if (tensor->dtype != entry->dtype) {
        FERRY_TRY(grow(&state->converted, &state->converted_capacity, (size_t)entry->bytes, name));
        ferry_convert_dtype(state->converted, entry->dtype, state->source, tensor->dtype,
                            (size_t)tensor->n_elements);
        stored = state->converted;
    }
    ferry_status status = ferry_writer_put(state->writer, entry->layer, entry->kind, stored,
                                           (size_t)entry->bytes);
    if (status != FERRY_OK) return ferry_fail_prefix(status, "%s: ", name);
    return FERRY_OK;
}

/* With tied embeddings the file has no lm_head; a checkpoint may still
 * carry one, which is accepted only if it equals the embedding table. */
static ferry_status check_tied_lm_head(convert_state *state) {
    const char *lm_head_name = ferry_tensor_specs[FERRY_TENSOR_LM_HEAD].hf_name;
    const char *embed_name = ferry_tensor_specs[FERRY_TENSOR_EMBED].hf_name;
    const ferry_safetensors_file *lm_head_file, *embed_file;
    const ferry_safetensors_tensor *lm_head, *embed;
    FERRY_TRY(ferry_checkpoint_find(state->checkpoint, lm_head_name, &lm_head_file, &lm_head));
    if (!lm_head) return FERRY_OK;
    FERRY_TRY(find_required(state, embed_name, &embed_file, &embed));
    if (lm_head->n_elements != embed->n_elements)
        return ferry_fail(FERRY_ERR_FORMAT,
                          "%s: config.json ties the embeddings but '%s' and '%s' differ in shape",
                          state->hf_dir, lm_head_name, embed_name);
    size_t lm_head_bytes = TIED_COMPARE_ELEMENTS * ferry_dtype_bytes(lm_head->dtype);
    size_t embed_bytes = TIED_COMPARE_ELEMENTS * ferry_dtype_bytes(embed->dtype);
    FERRY_TRY(grow(&state->source, &state->source_capacity, lm_head_bytes, lm_head_name));
    FERRY_TRY(grow(&state->converted, &state->converted_capacity, embed_bytes, embed_name));
    for (uint64_t first = 0; first < embed->n_elements; first += TIED_COMPARE_ELEMENTS) {
        uint64_t n = embed->n_elements - first;
        if (n > TIED_COMPARE_ELEMENTS) n = TIED_COMPARE_ELEMENTS;
        FERRY_TRY(ferry_safetensors_read_range(lm_head_file, lm_head,
                                               first * ferry_dtype_bytes(lm_head->dtype),
                                               state->source,
                                               (size_t)n * ferry_dtype_bytes(lm_head->dtype)));
        FERRY_TRY(ferry_safetensors_read_range(embed_file, embed,
                                               first * ferry_dtype_bytes(embed->dtype),
                                               state->converted,
                                               (size_t)n * ferry_dtype_bytes(embed->dtype)));
        for (uint64_t i = 0; i < n; i++)
            if (ferry_load_f32(state->source, lm_head->dtype, i) !=
                ferry_load_f32(state->converted, embed->dtype, i))
                return ferry_fail(FERRY_ERR_FORMAT,
                                  "%s: config.json ties the embeddings but '%s' differs from "
                                  "'%s' at element %llu",
                                  state->hf_dir, lm_head_name, embed_name,
                                  (unsigned long long)(first + i));
    }
    return FERRY_OK;
}

/* Carry tokenizer.json and friends along when the checkpoint has them. */
static ferry_status store_side_texts(convert_state *state) {
    for (size_t i = 0; i < sizeof side_texts / sizeof side_texts[0]; i++) {
        ferry_status status = FERRY_OK;
        char *text = NULL;
        char *path = ferry_path_join(state->hf_dir, side_texts[i]);
        if (!path) return ferry_fail(FERRY_ERR_NO_MEMORY, "out of memory");
        struct stat st;
        if (stat(path, &st) == 0) {
            status = ferry_read_text_file(path, MAX_SIDE_TEXT_BYTES, &text, NULL);
            if (status == FERRY_OK)
                status = ferry_writer_put_text(state->writer, side_texts[i], text);
        }
        free(text);
        free(path);
        FERRY_TRY(status);
    }
    return FERRY_OK;
}

/* "keep" means the dtype the weights are actually stored in, which is the
 * embedding table's (config.json's dtype field is only a hint). */
static ferry_status pick_dtype(convert_state *state, const ferry_convert_options *options,
                               ferry_dtype *out) {
    if (!options->keep_dtype) {
        *out = options->dtype;
        return FERRY_OK;
    }
    const ferry_safetensors_file *file;
    const ferry_safetensors_tensor *embed;
    FERRY_TRY(find_required(state, ferry_tensor_specs[FERRY_TENSOR_EMBED].hf_name, &file, &embed));
    *out = embed->dtype;
    return FERRY_OK;
}

ferry_status ferry_convert_hf(const char *hf_dir, const char *out_path,
                              const ferry_convert_options *options) {
    ferry_status status = FERRY_OK;
    convert_state state = {.hf_dir = hf_dir, .start_ns = ferry_now_ns()};
    ferry_convert_options defaults = {.keep_dtype = 1};
    if (!options) options = &defaults;
    if (!options->keep_dtype && (unsigned)options->dtype >= FERRY_DTYPE_COUNT)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "convert: unknown target dtype %d",
                          (int)options->dtype);
    ferry_dtype checkpoint_dtype = FERRY_DTYPE_F32, dtype = FERRY_DTYPE_F32;
    FERRY_TRY_GOTO(load_config(&state, &checkpoint_dtype));
    FERRY_TRY_GOTO(ferry_checkpoint_open(hf_dir, &state.checkpoint));
    FERRY_TRY_GOTO(check_no_extra_layers(&state));
    if (state.config.tie_embeddings) FERRY_TRY_GOTO(check_tied_lm_head(&state));
    FERRY_TRY_GOTO(pick_dtype(&state, options, &dtype));
    FERRY_TRY_GOTO(ferry_writer_open(out_path, &state.config, dtype, &state.writer));

    const ferry_layout *layout = ferry_writer_layout(state.writer);
    state.progress.n_tensors = layout->n_tensors;
    state.progress.n_layers = state.config.n_layers;
    for (int i = 0; i < layout->n_tensors; i++) {
        const ferry_tensor_entry *entry = &layout->tensors[i];
        FERRY_TRY_GOTO(convert_tensor(&state, entry));
        state.progress.n_tensors_done = i + 1;
        int last_of_layer = i + 1 == layout->n_tensors || layout->tensors[i + 1].layer != entry->layer;
        if (entry->layer >= 0 && last_of_layer) state.progress.n_layers_done = entry->layer + 1;
        FERRY_TRY_GOTO(report_progress(&state, options));
    }
    FERRY_TRY_GOTO(store_side_texts(&state));
    FERRY_TRY_GOTO(ferry_writer_finish(state.writer));
fail:
    if (state.writer) ferry_writer_free(state.writer);   /* removes the .partial file */
    ferry_checkpoint_close(state.checkpoint);
    free(state.source);
    free(state.converted);
    return status;
}
