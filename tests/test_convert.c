/*
 * test_convert.c — `ferry convert` on checkpoints made here: every tensor
 * of the .ferry file equals the source, converted with a rounding written
 * in this file (bf16: nearest of the two neighbours in double; f16: the
 * compiler's _Float16), and every bad checkpoint fails with a clear
 * message and leaves no output behind.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers.h"
#include "runtime/convert.h"
#include "runtime/format.h"

static char *dir;

static void setup(void) { dir = test_tempdir(); }
static void teardown(void) {
    test_rmtree(dir);
    free(dir);
}

TestSuite(convert, .init = setup, .fini = teardown, .timeout = 60);

/* ------------------------------------------------- a checkpoint in memory */

enum { HIDDEN = 32, INTERMEDIATE = 48, N_HEADS = 4, N_KV_HEADS = 2, HEAD_DIM = 12, VOCAB = 40,
       N_LAYERS = 2, MAX_TENSORS = 64 };

typedef enum { SRC_F32, SRC_F16, SRC_BF16 } source_dtype;
static const char *const source_dtype_names[] = {"F32", "F16", "BF16"};

typedef struct source_tensor {
    char name[128];
    source_dtype dtype;
    int n_dims;
    uint64_t shape[2];
    uint64_t n;
    float *values;              /* exactly representable in dtype */
    void *bytes;                /* the stored form */
} source_tensor;

typedef struct checkpoint {
    int n;
    source_tensor tensors[MAX_TENSORS];
} checkpoint;

static uint16_t bits16_of_float_truncated(float value) {
    uint32_t bits;
    memcpy(&bits, &value, 4);
    return (uint16_t)(bits >> 16);
}

static float float_of_bf16(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float value;
    memcpy(&value, &bits, 4);
    return value;
}

/* Round to the nearer of the two bf16 neighbours, ties to even; an
 * arithmetic statement of the rule, independent of ferry's bit trick. */
static uint16_t reference_bf16(float value) {
    uint16_t below = bits16_of_float_truncated(value);   /* toward zero */
    uint16_t above = (uint16_t)(below + 1);               /* away from zero */
    double distance_below = fabs((double)value - (double)float_of_bf16(below));
    double distance_above = fabs((double)value - (double)float_of_bf16(above));
    if (distance_below < distance_above) return below;
    if (distance_above < distance_below) return above;
    return (below & 1) ? above : below;
}

static uint16_t reference_f16(float value) {
    _Float16 half = (_Float16)value;
    uint16_t bits;
    memcpy(&bits, &half, 2);
    return bits;
}

static float float_of_f16(uint16_t bits) {
    _Float16 half;
    memcpy(&half, &bits, 2);
    return (float)half;
}

static source_tensor *add_tensor(checkpoint *ckpt, const char *name, source_dtype dtype,
                                 uint64_t rows, uint64_t cols, uint64_t *rng) {
    cr_assert_lt(ckpt->n, MAX_TENSORS);
    source_tensor *t = &ckpt->tensors[ckpt->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dtype;
    t->n_dims = cols ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->n = rows * (cols ? cols : 1);
    t->values = malloc(t->n * sizeof(float));
    t->bytes = malloc(t->n * 4);
    for (uint64_t i = 0; i < t->n; i++) {
        float value = test_rand_uniform(rng, -2.0f, 2.0f);
        if (dtype == SRC_F32) {
            memcpy((char *)t->bytes + 4 * i, &value, 4);
        } else {
            uint16_t bits = dtype == SRC_BF16 ? reference_bf16(value) : reference_f16(value);
            value = dtype == SRC_BF16 ? float_of_bf16(bits) : float_of_f16(bits);
            memcpy((char *)t->bytes + 2 * i, &bits, 2);
        }
        t->values[i] = value;
    }
    return t;
}

static size_t stored_bytes(const source_tensor *t) { return t->n * (t->dtype == SRC_F32 ? 4 : 2); }

static source_tensor *find_source(checkpoint *ckpt, const char *name) {
    for (int i = 0; i < ckpt->n; i++)
        if (strcmp(ckpt->tensors[i].name, name) == 0) return &ckpt->tensors[i];
    return NULL;
}

static void remove_source(checkpoint *ckpt, const char *name) {
    source_tensor *t = find_source(ckpt, name);
    cr_assert(t, "%s exists", name);
    free(t->values);
    free(t->bytes);
    *t = ckpt->tensors[--ckpt->n];
}

static void free_checkpoint(checkpoint *ckpt) {
    for (int i = 0; i < ckpt->n; i++) {
        free(ckpt->tensors[i].values);
        free(ckpt->tensors[i].bytes);
    }
    ckpt->n = 0;
}

/* The HF names of a Llama layer, and whether each is a matrix [rows, cols]. */
static void add_layer(checkpoint *ckpt, int layer, source_dtype dtype, int with_bias,
                      uint64_t *rng) {
    char name[128];
    const struct {
        const char *suffix;
        uint64_t rows, cols;
    } parts[] = {
        {"input_layernorm.weight", HIDDEN, 0},
        {"self_attn.q_proj.weight", N_HEADS * HEAD_DIM, HIDDEN},
        {"self_attn.k_proj.weight", N_KV_HEADS * HEAD_DIM, HIDDEN},
        {"self_attn.v_proj.weight", N_KV_HEADS * HEAD_DIM, HIDDEN},
        {"self_attn.o_proj.weight", HIDDEN, N_HEADS * HEAD_DIM},
        {"post_attention_layernorm.weight", HIDDEN, 0},
        {"mlp.gate_proj.weight", INTERMEDIATE, HIDDEN},
        {"mlp.up_proj.weight", INTERMEDIATE, HIDDEN},
        {"mlp.down_proj.weight", HIDDEN, INTERMEDIATE},
        {"self_attn.q_proj.bias", N_HEADS * HEAD_DIM, 0},
        {"self_attn.k_proj.bias", N_KV_HEADS * HEAD_DIM, 0},
        {"self_attn.v_proj.bias", N_KV_HEADS * HEAD_DIM, 0},
    };
    int n_parts = with_bias ? 12 : 9;
    for (int i = 0; i < n_parts; i++) {
        snprintf(name, sizeof name, "model.layers.%d.%s", layer, parts[i].suffix);
        add_tensor(ckpt, name, dtype, parts[i].rows, parts[i].cols, rng);
    }
}

/* A full model: llama (untied) or qwen2 (bias, tied). */
static void make_model(checkpoint *ckpt, source_dtype dtype, int qwen2, uint64_t *rng) {
    ckpt->n = 0;
    add_tensor(ckpt, "model.embed_tokens.weight", dtype, VOCAB, HIDDEN, rng);
    add_tensor(ckpt, "model.norm.weight", dtype, HIDDEN, 0, rng);
    if (!qwen2) add_tensor(ckpt, "lm_head.weight", dtype, VOCAB, HIDDEN, rng);
    for (int layer = 0; layer < N_LAYERS; layer++) add_layer(ckpt, layer, dtype, qwen2, rng);
    /* A buffer some exporters keep: not a weight, to be ignored. */
    add_tensor(ckpt, "model.layers.0.self_attn.rotary_emb.inv_freq", SRC_F32, HEAD_DIM / 2, 0, rng);
}

static void write_config(const char *hf_dir, const char *architecture, int qwen2,
                         source_dtype dtype) {
    static const char *const torch_names[] = {"float32", "float16", "bfloat16"};
    char text[2048];
    snprintf(text, sizeof text,
             "{\"architectures\": [\"%s\"], \"model_type\": \"%s\", \"vocab_size\": %d,"
             " \"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": %d,"
             " \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d,"
             " \"max_position_embeddings\": 128, \"rms_norm_eps\": 1e-06,"
             " \"hidden_act\": \"silu\", \"tie_word_embeddings\": %s,"
             " \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 10000.0},"
             " \"bos_token_id\": 1, \"eos_token_id\": 2, \"dtype\": \"%s\"}",
             architecture, qwen2 ? "qwen2" : "llama", VOCAB, HIDDEN, INTERMEDIATE, N_LAYERS,
             N_HEADS, N_KV_HEADS, HEAD_DIM, qwen2 ? "true" : "false", torch_names[dtype]);
    char *path = test_path(hf_dir, "config.json");
    cr_assert_eq(test_write_file(path, text, strlen(text)), 0);
    free(path);
}

/* model.safetensors with the checkpoint's tensors in order. */
static void write_safetensors(const char *hf_dir, const checkpoint *ckpt) {
    size_t capacity = 64 * 1024, used = 0, offset = 0;
    char *header = malloc(capacity);
    used += (size_t)snprintf(header + used, capacity - used, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < ckpt->n; i++) {
        const source_tensor *t = &ckpt->tensors[i];
        used += (size_t)snprintf(header + used, capacity - used,
                                 ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%llu", t->name,
                                 source_dtype_names[t->dtype], (unsigned long long)t->shape[0]);
        if (t->n_dims == 2)
            used += (size_t)snprintf(header + used, capacity - used, ",%llu",
                                     (unsigned long long)t->shape[1]);
        used += (size_t)snprintf(header + used, capacity - used, "],\"data_offsets\":[%zu,%zu]}",
                                 offset, offset + stored_bytes(t));
        offset += stored_bytes(t);
    }
    used += (size_t)snprintf(header + used, capacity - used, "}");
    cr_assert_lt(used, capacity - 1);
    char *path = test_path(hf_dir, "model.safetensors");
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    uint64_t length = used;
    uint8_t length_bytes[8];
    for (int i = 0; i < 8; i++) length_bytes[i] = (uint8_t)(length >> (8 * i));
    fwrite(length_bytes, 1, 8, f);
    fwrite(header, 1, used, f);
    for (int i = 0; i < ckpt->n; i++) fwrite(ckpt->tensors[i].bytes, 1, stored_bytes(&ckpt->tensors[i]), f);
    fclose(f);
    free(path);
    free(header);
}

static char *write_checkpoint(const checkpoint *ckpt, const char *architecture, int qwen2,
                              source_dtype dtype) {
    char *hf_dir = test_path(dir, "hf");
    mkdir(hf_dir, 0755);
    write_config(hf_dir, architecture, qwen2, dtype);
    write_safetensors(hf_dir, ckpt);
    return hf_dir;
}

/* ------------------------------------------------------ running convert */

static char *stderr_path;

/* Run `ferry convert HF OUT [--dtype D]`; returns the exit status. */
static int run_convert(const char *hf_dir, const char *out, const char *dtype) {
    char command[4096];
    free(stderr_path);
    stderr_path = test_path(dir, "stderr.txt");
    snprintf(command, sizeof command, "'%s' convert '%s' '%s'%s%s", test_cli(), hf_dir, out,
             dtype ? " --dtype " : "", dtype ? dtype : "");
    return test_run(command, NULL, stderr_path);
}

static char *read_stderr(void) {
    char *text = test_read_file(stderr_path, NULL);
    cr_assert(text);
    return text;
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* A failed convert says `fragment`, exits nonzero and leaves nothing. */
static void expect_failure(const char *hf_dir, const char *fragment1, const char *fragment2) {
    char *out = test_path(dir, "out.ferry");
    char *partial = test_path(dir, "out.ferry.partial");
    int exit_status = run_convert(hf_dir, out, NULL);
    char *message = read_stderr();
    cr_assert_eq(exit_status, 1, "exit %d: %s", exit_status, message);
    cr_assert(strstr(message, fragment1), "'%s' not in: %s", fragment1, message);
    if (fragment2) cr_assert(strstr(message, fragment2), "'%s' not in: %s", fragment2, message);
    cr_assert(strchr(message, '\n') == message + strlen(message) - 1, "one line: %s", message);
    cr_assert(!file_exists(out), "no output file");
    cr_assert(!file_exists(partial), "no partial file");
    free(message);
    free(out);
    free(partial);
}

/* Our own map from the file's tensor kinds to HF names. */
static void hf_name_of(const ferry_tensor_entry *entry, char *buf, size_t size) {
    static const char *const suffix[FERRY_TENSOR_KIND_COUNT] = {
        [FERRY_TENSOR_EMBED] = "model.embed_tokens.weight",
        [FERRY_TENSOR_FINAL_NORM] = "model.norm.weight",
        [FERRY_TENSOR_LM_HEAD] = "lm_head.weight",
        [FERRY_TENSOR_ATTN_NORM] = "input_layernorm.weight",
        [FERRY_TENSOR_WQ] = "self_attn.q_proj.weight",
        [FERRY_TENSOR_WK] = "self_attn.k_proj.weight",
        [FERRY_TENSOR_WV] = "self_attn.v_proj.weight",
        [FERRY_TENSOR_BQ] = "self_attn.q_proj.bias",
        [FERRY_TENSOR_BK] = "self_attn.k_proj.bias",
        [FERRY_TENSOR_BV] = "self_attn.v_proj.bias",
        [FERRY_TENSOR_WO] = "self_attn.o_proj.weight",
        [FERRY_TENSOR_MLP_NORM] = "post_attention_layernorm.weight",
        [FERRY_TENSOR_W_GATE] = "mlp.gate_proj.weight",
        [FERRY_TENSOR_W_UP] = "mlp.up_proj.weight",
        [FERRY_TENSOR_W_DOWN] = "mlp.down_proj.weight",
    };
    if (entry->layer < 0)
        snprintf(buf, size, "%s", suffix[entry->kind]);
    else
        snprintf(buf, size, "model.layers.%d.%s", entry->layer, suffix[entry->kind]);
}

/* Expected stored bits of one element in dtype. */
static uint32_t expected_bits(float value, ferry_dtype dtype) {
    if (dtype == FERRY_DTYPE_BF16) return reference_bf16(value);
    if (dtype == FERRY_DTYPE_F16) return reference_f16(value);
    uint32_t bits;
    memcpy(&bits, &value, 4);
    return bits;
}

/* Every tensor of the file equals its source in the file's dtype; matrices
 * in matrix_dtype, vectors f32; n_expected tensors in all. */
static void check_file_matches(const char *path, checkpoint *ckpt, ferry_dtype matrix_dtype,
                               int n_expected) {
    ferry_file *file = NULL;
    cr_assert_eq(ferry_file_open(path, &file), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(file->layout.dtype, matrix_dtype);
    cr_assert_eq(file->layout.n_tensors, n_expected);
    for (int i = 0; i < file->layout.n_tensors; i++) {
        const ferry_tensor_entry *entry = &file->layout.tensors[i];
        char name[160];
        hf_name_of(entry, name, sizeof name);
        source_tensor *source = find_source(ckpt, name);
        cr_assert(source, "file tensor %s has a source", name);
        int is_matrix = source->n_dims == 2;
        ferry_dtype want = is_matrix ? matrix_dtype : FERRY_DTYPE_F32;
        cr_assert_eq(entry->dtype, want, "%s dtype", name);
        size_t element_bytes = want == FERRY_DTYPE_F32 ? 4 : 2;
        cr_assert_eq(entry->bytes, source->n * element_bytes, "%s bytes", name);
        uint8_t *data = malloc(entry->bytes);
        memset(data, 0xFF, entry->bytes);
        cr_assert_eq(ferry_file_read_tensor(file, entry, data, 1), FERRY_OK, "%s",
                     ferry_last_error());
        for (uint64_t e = 0; e < source->n; e++) {
            uint32_t got = 0;
            memcpy(&got, data + e * element_bytes, element_bytes);
            uint32_t want_bits = expected_bits(source->values[e], want);
            cr_assert_eq(got, want_bits, "%s[%llu]: got %#x want %#x (value %.9g)", name,
                         (unsigned long long)e, got, want_bits, (double)source->values[e]);
        }
        free(data);
    }
    ferry_file_close(file);
}

/* Globals + per layer 9 tensors (12 with biases). */
static int n_file_tensors(int qwen2) { return (qwen2 ? 2 : 3) + N_LAYERS * (qwen2 ? 12 : 9); }

static void convert_and_check(source_dtype source, const char *dtype_option, ferry_dtype expected,
                              int qwen2) {
    uint64_t rng = test_seed();
    checkpoint ckpt;
    make_model(&ckpt, source, qwen2, &rng);
    char *hf_dir = write_checkpoint(&ckpt, qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM", qwen2,
                                    source);
    char *out = test_path(dir, "model.ferry");
    int exit_status = run_convert(hf_dir, out, dtype_option);
    char *message = read_stderr();
    cr_assert_eq(exit_status, 0, "exit %d: %s", exit_status, message);
    check_file_matches(out, &ckpt, expected, n_file_tensors(qwen2));
    free(message);
    free(out);
    free(hf_dir);
    free_checkpoint(&ckpt);
}

Test(convert, f32_checkpoint_to_f16_rounds_to_nearest_even) {
    convert_and_check(SRC_F32, "f16", FERRY_DTYPE_F16, 0);
}

Test(convert, f32_checkpoint_to_bf16_rounds_to_nearest_even) {
    convert_and_check(SRC_F32, "bf16", FERRY_DTYPE_BF16, 0);
}

Test(convert, bf16_checkpoint_kept_is_bit_identical) {
    convert_and_check(SRC_BF16, "keep", FERRY_DTYPE_BF16, 0);
}

Test(convert, bf16_checkpoint_to_f32_widens_exactly) {
    convert_and_check(SRC_BF16, "f32", FERRY_DTYPE_F32, 0);
}

Test(convert, f16_checkpoint_without_dtype_option_keeps_f16) {
    convert_and_check(SRC_F16, NULL, FERRY_DTYPE_F16, 0);
}

Test(convert, f16_checkpoint_to_bf16_rounds_from_the_f16_values) {
    convert_and_check(SRC_F16, "bf16", FERRY_DTYPE_BF16, 0);
}

Test(convert, qwen2_with_biases_and_tied_embeddings_converts) {
    convert_and_check(SRC_F32, "f32", FERRY_DTYPE_F32, 1);
}

Test(convert, tied_lm_head_present_and_equal_is_accepted) {
    uint64_t rng = test_seed();
    checkpoint ckpt;
    make_model(&ckpt, SRC_F32, 1, &rng);
    source_tensor *embed = find_source(&ckpt, "model.embed_tokens.weight");
    source_tensor *lm_head = add_tensor(&ckpt, "lm_head.weight", SRC_F32, VOCAB, HIDDEN, &rng);
    memcpy(lm_head->values, embed->values, embed->n * 4);
    memcpy(lm_head->bytes, embed->bytes, embed->n * 4);
    char *hf_dir = write_checkpoint(&ckpt, "Qwen2ForCausalLM", 1, SRC_F32);
    char *out = test_path(dir, "model.ferry");
    cr_assert_eq(run_convert(hf_dir, out, NULL), 0);
    check_file_matches(out, &ckpt, FERRY_DTYPE_F32, n_file_tensors(1));
    free(out);
    free(hf_dir);
    free_checkpoint(&ckpt);
}

Test(convert, tied_lm_head_that_differs_is_an_error) {
    uint64_t rng = test_seed();
    checkpoint ckpt;
    make_model(&ckpt, SRC_F32, 1, &rng);
    add_tensor(&ckpt, "lm_head.weight", SRC_F32, VOCAB, HIDDEN, &rng);
    char *hf_dir = write_checkpoint(&ckpt, "Qwen2ForCausalLM", 1, SRC_F32);
    expect_failure(hf_dir, "lm_head.weight", "differs");
    free(hf_dir);
    free_checkpoint(&ckpt);
}

Test(convert, missing_tensor_is_named_and_no_file_is_left) {
    uint64_t rng = test_seed();
    checkpoint ckpt;
    make_model(&ckpt, SRC_F32, 0, &rng);
    remove_source(&ckpt, "model.layers.1.mlp.up_proj.weight");
    char *hf_dir = write_checkpoint(&ckpt, "LlamaForCausalLM", 0, SRC_F32);
    expect_failure(hf_dir, "model.layers.1.mlp.up_proj.weight", "missing");
    free(hf_dir);
    free_checkpoint(&ckpt);
}

Test(convert, wrong_shape_names_tensor_expected_and_found) {
    uint64_t rng = test_seed();
    checkpoint ckpt;
    make_model(&ckpt, SRC_F32, 0, &rng);
    source_tensor *wk = find_source(&ckpt, "model.layers.0.self_attn.k_proj.weight");
    wk->shape[0] = HIDDEN;                       /* transposed: [32, 24] */
    wk->shape[1] = N_KV_HEADS * HEAD_DIM;
    char *hf_dir = write_checkpoint(&ckpt, "LlamaForCausalLM", 0, SRC_F32);
    expect_failure(hf_dir, "model.layers.0.self_attn.k_proj.weight", "[32, 24]");
    char *message = read_stderr();
    cr_assert(strstr(message, "[24, 32]"), "expected shape named: %s", message);
    free(message);
    free(hf_dir);
    free_checkpoint(&ckpt);
}

Test(convert, layer_beyond_num_hidden_layers_is_an_error) {
    uint64_t rng = test_seed();
    checkpoint ckpt;
    make_model(&ckpt, SRC_F32, 0, &rng);
    add_layer(&ckpt, N_LAYERS, SRC_F32, 0, &rng);
    char *hf_dir = write_checkpoint(&ckpt, "LlamaForCausalLM", 0, SRC_F32);
    expect_failure(hf_dir, "model.layers.2.", "num_hidden_layers");
    free(hf_dir);
    free_checkpoint(&ckpt);
}

Test(convert, unsupported_architecture_is_an_error) {
    uint64_t rng = test_seed();
    checkpoint ckpt;
    make_model(&ckpt, SRC_F32, 0, &rng);
    char *hf_dir = write_checkpoint(&ckpt, "GPT2LMHeadModel", 0, SRC_F32);
    expect_failure(hf_dir, "GPT2LMHeadModel", NULL);
    free(hf_dir);
    free_checkpoint(&ckpt);
}

Test(convert, missing_config_or_weights_is_an_error) {
    char *hf_dir = test_path(dir, "empty");
    mkdir(hf_dir, 0755);
    expect_failure(hf_dir, "config.json", NULL);
    write_config(hf_dir, "LlamaForCausalLM", 0, SRC_F32);
    expect_failure(hf_dir, "model.safetensors", NULL);
    free(hf_dir);
}

Test(convert, failed_convert_leaves_an_existing_output_untouched) {
    uint64_t rng = test_seed();
    checkpoint ckpt;
    make_model(&ckpt, SRC_F32, 0, &rng);
    remove_source(&ckpt, "model.norm.weight");
    char *hf_dir = write_checkpoint(&ckpt, "LlamaForCausalLM", 0, SRC_F32);
    char *out = test_path(dir, "old.ferry");
    cr_assert_eq(test_write_file(out, "previous", 8), 0);
    cr_assert_eq(run_convert(hf_dir, out, NULL), 1);
    size_t bytes = 0;
    char *kept = test_read_file(out, &bytes);
    cr_assert(kept && bytes == 8 && memcmp(kept, "previous", 8) == 0);
    free(kept);
    free(out);
    free(hf_dir);
    free_checkpoint(&ckpt);
}

Test(convert, tokenizer_and_generation_texts_are_stored) {
    uint64_t rng = test_seed();
    checkpoint ckpt;
    make_model(&ckpt, SRC_F32, 0, &rng);
    char *hf_dir = write_checkpoint(&ckpt, "LlamaForCausalLM", 0, SRC_F32);
    static const char tokenizer[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}";
    static const char generation[] = "{\"eos_token_id\": [2, 7]}";
    char *path = test_path(hf_dir, "tokenizer.json");
    cr_assert_eq(test_write_file(path, tokenizer, strlen(tokenizer)), 0);
    free(path);
    path = test_path(hf_dir, "generation_config.json");
    cr_assert_eq(test_write_file(path, generation, strlen(generation)), 0);
    free(path);
    char *out = test_path(dir, "model.ferry");
    cr_assert_eq(run_convert(hf_dir, out, NULL), 0);
    ferry_file *file = NULL;
    cr_assert_eq(ferry_file_open(out, &file), FERRY_OK, "%s", ferry_last_error());
    cr_assert_str_eq(ferry_file_text(file, "tokenizer.json"), tokenizer);
    cr_assert_str_eq(ferry_file_text(file, "generation_config.json"), generation);
    cr_assert_null(ferry_file_text(file, "tokenizer_config.json"));
    ferry_file_close(file);
    free(out);
    free(hf_dir);
    free_checkpoint(&ckpt);
}

Test(convert, help_and_bad_options) {
    cr_assert_eq(test_run("'" FERRY_CLI "' convert --help", "/dev/null", NULL), 0);
    cr_assert_eq(test_run("'" FERRY_CLI "' convert a b --dtype f8", NULL, "/dev/null"), 2);
    cr_assert_eq(test_run("'" FERRY_CLI "' convert onlyone", NULL, "/dev/null"), 2);
    cr_assert_eq(test_run("'" FERRY_CLI "' convert a b c", NULL, "/dev/null"), 2);
}

Test(convert, truncated_checkpoint_is_a_one_line_error) {
    uint64_t rng = test_seed();
    checkpoint ckpt;
    make_model(&ckpt, SRC_F32, 0, &rng);
    char *hf_dir = write_checkpoint(&ckpt, "LlamaForCausalLM", 0, SRC_F32);
    char *weights = test_path(hf_dir, "model.safetensors");
    struct stat st;
    cr_assert_eq(stat(weights, &st), 0);
    cr_assert_eq(truncate(weights, st.st_size - 100), 0);
    expect_failure(hf_dir, "model.safetensors", "truncated");
    free(weights);
    free(hf_dir);
    free_checkpoint(&ckpt);
}

Test(convert, index_naming_a_missing_shard_is_an_error) {
    uint64_t rng = test_seed();
    checkpoint ckpt;
    make_model(&ckpt, SRC_F32, 0, &rng);
    char *hf_dir = write_checkpoint(&ckpt, "LlamaForCausalLM", 0, SRC_F32);
    char index[8192];
    size_t used = (size_t)snprintf(index, sizeof index, "{\"weight_map\": {");
    for (int i = 0; i < ckpt.n; i++)
        used += (size_t)snprintf(index + used, sizeof index - used, "%s\"%s\": \"%s\"", i ? ", " : "",
                                 ckpt.tensors[i].name,
                                 strcmp(ckpt.tensors[i].name, "model.norm.weight") == 0
                                     ? "model-00002-of-00002.safetensors"
                                     : "model.safetensors");
    snprintf(index + used, sizeof index - used, "}}");
    char *path = test_path(hf_dir, "model.safetensors.index.json");
    cr_assert_eq(test_write_file(path, index, strlen(index)), 0);
    expect_failure(hf_dir, "model-00002-of-00002.safetensors", "missing");
    free(path);
    free(hf_dir);
    free_checkpoint(&ckpt);
}

static int stop_after_three(const ferry_convert_progress *progress, void *user) {
    int *calls = user;
    ++*calls;
    cr_assert_eq(progress->n_tensors_done, *calls);
    cr_assert_eq(progress->n_tensors, n_file_tensors(0));
    return progress->n_tensors_done == 3;
}

Test(convert, progress_callback_can_stop_it_and_nothing_is_left) {
    uint64_t rng = test_seed();
    checkpoint ckpt;
    make_model(&ckpt, SRC_F32, 0, &rng);
    char *hf_dir = write_checkpoint(&ckpt, "LlamaForCausalLM", 0, SRC_F32);
    char *out = test_path(dir, "stopped.ferry");
    char *partial = test_path(dir, "stopped.ferry.partial");
    int calls = 0;
    ferry_convert_options options = {.keep_dtype = 1, .progress = stop_after_three,
                                      .progress_user = &calls};
    cr_assert_eq(ferry_convert_hf(hf_dir, out, &options), FERRY_ERR_CANCELLED);
    cr_assert(strstr(ferry_last_error(), "stopped after 3"), "%s", ferry_last_error());
    cr_assert_eq(calls, 3);
    cr_assert(!file_exists(out) && !file_exists(partial));
    free(partial);
    free(out);
    free(hf_dir);
    free_checkpoint(&ckpt);
}
