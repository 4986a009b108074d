/*
 * config.c — model hyper-parameters: validation, RoPE frequencies, the
 * tensor table, and reading them from HF config.json (transformers 4 and 5
 * spellings) or from a .ferry manifest.  Reads no weights.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "runtime/config.h"

/* HF names: globals are whole names, layer tensors are suffixes of
 * "model.layers.{i}.". */
const ferry_tensor_spec ferry_tensor_specs[FERRY_TENSOR_KIND_COUNT] = {
    [FERRY_TENSOR_EMBED] = {"embed", "model.embed_tokens.weight", 1, 1},
    [FERRY_TENSOR_FINAL_NORM] = {"final_norm", "model.norm.weight", 1, 0},
    [FERRY_TENSOR_LM_HEAD] = {"lm_head", "lm_head.weight", 1, 1},
    [FERRY_TENSOR_ATTN_NORM] = {"attn_norm", "input_layernorm.weight", 0, 0},
    [FERRY_TENSOR_WQ] = {"wq", "self_attn.q_proj.weight", 0, 1},
    [FERRY_TENSOR_WK] = {"wk", "self_attn.k_proj.weight", 0, 1},
    [FERRY_TENSOR_WV] = {"wv", "self_attn.v_proj.weight", 0, 1},
    [FERRY_TENSOR_BQ] = {"bq", "self_attn.q_proj.bias", 0, 0},
    [FERRY_TENSOR_BK] = {"bk", "self_attn.k_proj.bias", 0, 0},
    [FERRY_TENSOR_BV] = {"bv", "self_attn.v_proj.bias", 0, 0},
    [FERRY_TENSOR_WO] = {"wo", "self_attn.o_proj.weight", 0, 1},
    [FERRY_TENSOR_MLP_NORM] = {"mlp_norm", "post_attention_layernorm.weight", 0, 0},
    [FERRY_TENSOR_W_GATE] = {"w_gate", "mlp.gate_proj.weight", 0, 1},
    [FERRY_TENSOR_W_UP] = {"w_up", "mlp.up_proj.weight", 0, 1},
    [FERRY_TENSOR_W_DOWN] = {"w_down", "mlp.down_proj.weight", 0, 1},
};

int ferry_tensor_present(const ferry_config *config, ferry_tensor_kind kind) {
    switch (kind) {
    case FERRY_TENSOR_LM_HEAD: return !config->tie_embeddings;
    case FERRY_TENSOR_BQ:
    case FERRY_TENSOR_BK:
    case FERRY_TENSOR_BV: return config->attention_bias;
    default: return (unsigned)kind < FERRY_TENSOR_KIND_COUNT;
    }
}

void ferry_tensor_shape(const ferry_config *config, ferry_tensor_kind kind, uint64_t *rows,
                        uint64_t *cols) {
    uint64_t hidden = (uint64_t)config->hidden_size;
    uint64_t q_dim = (uint64_t)config->n_heads * (uint64_t)config->head_dim;
    uint64_t kv_dim = (uint64_t)config->n_kv_heads * (uint64_t)config->head_dim;
    uint64_t inter = (uint64_t)config->intermediate_size;
    uint64_t vocab = (uint64_t)config->vocab_size;
    uint64_t r = 0, c = 1;
    switch (kind) {
    case FERRY_TENSOR_EMBED:
    case FERRY_TENSOR_LM_HEAD: r = vocab, c = hidden; break;
    case FERRY_TENSOR_FINAL_NORM:
    case FERRY_TENSOR_ATTN_NORM:
    case FERRY_TENSOR_MLP_NORM: r = hidden; break;
    case FERRY_TENSOR_WQ: r = q_dim, c = hidden; break;
    case FERRY_TENSOR_WK:
    case FERRY_TENSOR_WV: r = kv_dim, c = hidden; break;
    case FERRY_TENSOR_BQ: r = q_dim; break;
    case FERRY_TENSOR_BK:
    case FERRY_TENSOR_BV: r = kv_dim; break;
    case FERRY_TENSOR_WO: r = hidden, c = q_dim; break;
    case FERRY_TENSOR_W_GATE:
    case FERRY_TENSOR_W_UP: r = inter, c = hidden; break;
    case FERRY_TENSOR_W_DOWN: r = hidden, c = inter; break;
    default: break;
    }
    *rows = r;
    *cols = c;
}

uint64_t ferry_config_n_parameters(const ferry_config *config) {
    uint64_t total = 0;
    for (int kind = 0; kind < FERRY_TENSOR_KIND_COUNT; kind++) {
        if (!ferry_tensor_present(config, (ferry_tensor_kind)kind)) continue;
        uint64_t rows, cols;
        ferry_tensor_shape(config, (ferry_tensor_kind)kind, &rows, &cols);
        uint64_t copies = ferry_tensor_specs[kind].is_global ? 1 : (uint64_t)config->n_layers;
        total += rows * cols * copies;
    }
    return total;
}

/* How each architecture decides on attention biases.  Qwen2 always has
 * q/k/v biases and no o_proj bias; Mistral never has any.  HF Llama's
 * "attention_bias" adds a bias to o_proj as well as q/k/v, which the
 * .ferry tensor table has no slot for, so it is refused by name. */
typedef enum {
    BIAS_QKV_ALWAYS,
    BIAS_NEVER,
    BIAS_KEY_ALSO_ON_O_PROJ,
} bias_rule;

/* Whether "sliding_window" takes effect: Llama has none, Mistral applies
 * it whenever set, Qwen2 only with "use_sliding_window" (default false). */
typedef enum {
    WINDOW_NONE,
    WINDOW_WHEN_SET,
    WINDOW_WHEN_ENABLED,
} window_rule;

static const struct {
    const char *hf_architecture;
    const char *architecture;
    bias_rule bias;
    window_rule window;
} architectures[] = {
    {"LlamaForCausalLM", "llama", BIAS_KEY_ALSO_ON_O_PROJ, WINDOW_NONE},
    {"MistralForCausalLM", "mistral", BIAS_NEVER, WINDOW_WHEN_SET},
    {"Qwen2ForCausalLM", "qwen2", BIAS_QKV_ALWAYS, WINDOW_WHEN_ENABLED},
};

ferry_status ferry_config_validate(const ferry_config *c) {
    static const struct {
        const char *name;
        size_t offset;
        int max;
    } dims[] = {
        {"vocab_size", offsetof(ferry_config, vocab_size), 1 << 24},
        {"hidden_size", offsetof(ferry_config, hidden_size), 1 << 17},
        {"intermediate_size", offsetof(ferry_config, intermediate_size), 1 << 20},
        {"num_hidden_layers", offsetof(ferry_config, n_layers), 4096},
        {"num_attention_heads", offsetof(ferry_config, n_heads), 4096},
        {"num_key_value_heads", offsetof(ferry_config, n_kv_heads), 4096},
        {"head_dim", offsetof(ferry_config, head_dim), 1024},
        {"max_position_embeddings", offsetof(ferry_config, max_position), 1 << 24},
    };
    int known_architecture = 0;
    for (size_t i = 0; i < sizeof architectures / sizeof architectures[0]; i++)
        if (strncmp(c->architecture, architectures[i].architecture, sizeof c->architecture) == 0)
            known_architecture = 1;
    if (!known_architecture)
        return ferry_fail(FERRY_ERR_FORMAT, "config: unknown architecture '%.*s'",
                          (int)sizeof c->architecture, c->architecture);
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        int value = *(const int *)((const char *)c + dims[i].offset);
        if (value <= 0 || value > dims[i].max)
            return ferry_fail(FERRY_ERR_FORMAT, "config: %s = %d is out of range (1..%d)",
                              dims[i].name, value, dims[i].max);
    }
    if (c->n_heads % c->n_kv_heads != 0)
        return ferry_fail(FERRY_ERR_FORMAT,
                          "config: num_attention_heads (%d) is not a multiple of "
                          "num_key_value_heads (%d)",
                          c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2 != 0)
        return ferry_fail(FERRY_ERR_FORMAT, "config: head_dim %d must be even for RoPE",
                          c->head_dim);
    if (!(c->rms_norm_eps > 0 && c->rms_norm_eps < 1))
        return ferry_fail(FERRY_ERR_FORMAT, "config: rms_norm_eps %g is out of range (0, 1)",
                          (double)c->rms_norm_eps);
    if (!(c->rope_theta > 0 && isfinite(c->rope_theta)))
        return ferry_fail(FERRY_ERR_FORMAT, "config: rope_theta %g must be positive",
                          c->rope_theta);
    if (c->rope_type == FERRY_ROPE_LINEAR && !(c->rope_factor > 0))
        return ferry_fail(FERRY_ERR_FORMAT, "config: linear rope needs a positive factor");
    if (c->rope_type == FERRY_ROPE_LLAMA3 &&
        !(c->rope_factor > 0 && c->rope_low_freq_factor > 0 &&
          c->rope_high_freq_factor > c->rope_low_freq_factor &&
          c->rope_original_max_position > 0))
        return ferry_fail(FERRY_ERR_FORMAT,
                          "config: llama3 rope needs factor > 0, high_freq_factor > "
                          "low_freq_factor > 0 and original_max_position_embeddings > 0");
    if ((unsigned)c->rope_type > FERRY_ROPE_LINEAR)
        return ferry_fail(FERRY_ERR_FORMAT, "config: unknown rope type %d", (int)c->rope_type);
    if (c->n_eos_token_ids < 0 || c->n_eos_token_ids > FERRY_MAX_EOS)
        return ferry_fail(FERRY_ERR_FORMAT, "config: %d eos tokens (at most %d)",
                          c->n_eos_token_ids, FERRY_MAX_EOS);
    if (c->bos_token_id < -1)
        return ferry_fail(FERRY_ERR_FORMAT, "config: bos_token_id %d is negative",
                          c->bos_token_id);
    for (int i = 0; i < c->n_eos_token_ids; i++)
        if (c->eos_token_ids[i] < 0)
            return ferry_fail(FERRY_ERR_FORMAT, "config: eos_token_id %d is negative",
                              c->eos_token_ids[i]);
    if (c->tie_embeddings != !!c->tie_embeddings || c->attention_bias != !!c->attention_bias)
        return ferry_fail(FERRY_ERR_FORMAT, "config: tie_embeddings and attention_bias are 0 or 1");
    return FERRY_OK;
}

/* RoPE: inv_freq[i] = theta^(-2i/d).  Linear scaling divides every
 * frequency by the factor.  Llama 3 leaves high frequencies (wavelength
 * shorter than original_max / high_freq_factor) alone, divides low ones
 * (wavelength longer than original_max / low_freq_factor) by the factor,
 * and blends linearly in between by smooth = (original_max / wavelength -
 * low) / (high - low). */
void ferry_rope_inv_freq(const ferry_config *config, float *inv_freq) {
    int half = config->head_dim / 2;
    for (int i = 0; i < half; i++) {
        double freq = pow(config->rope_theta, -(2.0 * i) / config->head_dim);
        if (config->rope_type == FERRY_ROPE_LINEAR) {
            freq /= config->rope_factor;
        } else if (config->rope_type == FERRY_ROPE_LLAMA3) {
            double original = config->rope_original_max_position;
            double low_wavelength = original / config->rope_low_freq_factor;
            double high_wavelength = original / config->rope_high_freq_factor;
            double wavelength = 2.0 * M_PI / freq;
            if (wavelength > low_wavelength) {
                freq /= config->rope_factor;
            } else if (wavelength >= high_wavelength) {
                double smooth = (original / wavelength - config->rope_low_freq_factor) /
                                (config->rope_high_freq_factor - config->rope_low_freq_factor);
                freq = (1.0 - smooth) * freq / config->rope_factor + smooth * freq;
            }
        }
        inv_freq[i] = (float)freq;
    }
}

/* ------------------------------------------------------- JSON helpers */

/* A number that does not fit an int becomes INT_MIN, which validation
 * rejects naming the field (converting it would be undefined behaviour). */
static int json_number_to_int(const cJSON *item) {
    double value = item->valuedouble;
    return value >= INT_MIN + 1.0 && value <= INT_MAX ? (int)value : INT_MIN;
}

static int json_int(const cJSON *object, const char *key, int fallback) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);
    return cJSON_IsNumber(item) ? json_number_to_int(item) : fallback;
}

static double json_double(const cJSON *object, const char *key, double fallback) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);
    return cJSON_IsNumber(item) ? item->valuedouble : fallback;
}

static int json_bool(const cJSON *object, const char *key, int fallback) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);
    if (cJSON_IsBool(item)) return cJSON_IsTrue(item);
    return fallback;
}

static const char *json_string(const cJSON *object, const char *key) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

static const struct {
    const char *name;
    ferry_rope_type type;
} rope_types[] = {
    {"default", FERRY_ROPE_DEFAULT},
    {"llama3", FERRY_ROPE_LLAMA3},
    {"linear", FERRY_ROPE_LINEAR},
};

static const char *rope_type_name(ferry_rope_type type) {
    for (size_t i = 0; i < sizeof rope_types / sizeof rope_types[0]; i++)
        if (rope_types[i].type == type) return rope_types[i].name;
    return "?";
}

static ferry_status rope_type_parse(const char *name, const char *source, ferry_rope_type *out) {
    for (size_t i = 0; i < sizeof rope_types / sizeof rope_types[0]; i++)
        if (strcmp(name, rope_types[i].name) == 0) {
            *out = rope_types[i].type;
            return FERRY_OK;
        }
    return ferry_fail(FERRY_ERR_UNSUPPORTED,
                      "%s: unsupported rope type '%s' (supported: default, llama3, linear)",
                      source, name);
}

/* eos_token_id is an int or a list of ints. */
static void parse_eos(const cJSON *object, ferry_config *config) {
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(object, "eos_token_id");
    config->n_eos_token_ids = 0;
    if (cJSON_IsNumber(eos)) {
        config->eos_token_ids[config->n_eos_token_ids++] = json_number_to_int(eos);
    } else if (cJSON_IsArray(eos)) {
        const cJSON *item;
        cJSON_ArrayForEach(item, eos) {
            if (cJSON_IsNumber(item) && config->n_eos_token_ids < FERRY_MAX_EOS)
                config->eos_token_ids[config->n_eos_token_ids++] = json_number_to_int(item);
        }
    }
}

/* ------------------------------------------------------ HF config.json */


/* rope settings: transformers 5 keeps them in "rope_parameters" (theta
 * included); transformers 4 has "rope_theta" and "rope_scaling". */
static ferry_status parse_hf_rope(const cJSON *root, const char *source, ferry_config *config) {
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    if (!cJSON_IsObject(params)) params = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    config->rope_theta = json_double(root, "rope_theta", 10000.0);
    config->rope_type = FERRY_ROPE_DEFAULT;
    config->rope_factor = 1.0;
    if (!cJSON_IsObject(params)) return FERRY_OK;
    config->rope_theta = json_double(params, "rope_theta", config->rope_theta);
    const char *type = json_string(params, "rope_type");
    if (!type) type = json_string(params, "type");
    if (type) FERRY_TRY(rope_type_parse(type, source, &config->rope_type));
    config->rope_factor = json_double(params, "factor", 1.0);
    config->rope_low_freq_factor = json_double(params, "low_freq_factor", 1.0);
    config->rope_high_freq_factor = json_double(params, "high_freq_factor", 4.0);
    config->rope_original_max_position =
        json_int(params, "original_max_position_embeddings", config->max_position);
    return FERRY_OK;
}

ferry_status ferry_config_from_hf_json(const char *json_text, const char *source,
                                       ferry_config *out, ferry_dtype *out_checkpoint_dtype) {
    ferry_status status = FERRY_OK;
    cJSON *root = cJSON_Parse(json_text);
    if (!cJSON_IsObject(root)) {
        status = ferry_fail(FERRY_ERR_FORMAT, "%s: not a valid JSON object", source);
        goto fail;
    }
    ferry_config config;
    memset(&config, 0, sizeof config);

    const cJSON *arch_list = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *first = cJSON_IsArray(arch_list) ? cJSON_GetArrayItem(arch_list, 0) : NULL;
    const char *hf_arch = cJSON_IsString(first) ? first->valuestring : NULL;
    /* Without "architectures", HF picks the class from "model_type", which
     * is our short architecture name. */
    const char *model_type = hf_arch ? NULL : json_string(root, "model_type");
    int arch_index = -1;
    for (size_t i = 0; i < sizeof architectures / sizeof architectures[0]; i++)
        if ((hf_arch && strcmp(hf_arch, architectures[i].hf_architecture) == 0) ||
            (model_type && strcmp(model_type, architectures[i].architecture) == 0))
            arch_index = (int)i;
    if (arch_index >= 0) hf_arch = architectures[arch_index].hf_architecture;
    if (arch_index < 0) {
        status = ferry_fail(FERRY_ERR_UNSUPPORTED,
                            "%s: unsupported architecture '%s' (supported: LlamaForCausalLM, "
                            "MistralForCausalLM, Qwen2ForCausalLM)",
                            source, hf_arch ? hf_arch : model_type ? model_type : "(none given)");
        goto fail;
    }
    snprintf(config.architecture, sizeof config.architecture, "%s",
             architectures[arch_index].architecture);

    const char *activation = json_string(root, "hidden_act");
    if (activation && strcmp(activation, "silu") != 0) {
        status = ferry_fail(FERRY_ERR_UNSUPPORTED,
                            "%s: unsupported feature hidden_act '%s' (only silu)", source,
                            activation);
        goto fail;
    }
    if (json_bool(root, "mlp_bias", 0)) {
        status = ferry_fail(FERRY_ERR_UNSUPPORTED, "%s: unsupported feature mlp_bias", source);
        goto fail;
    }

    config.vocab_size = json_int(root, "vocab_size", 0);
    config.hidden_size = json_int(root, "hidden_size", 0);
    config.intermediate_size = json_int(root, "intermediate_size", 0);
    config.n_layers = json_int(root, "num_hidden_layers", 0);
    config.n_heads = json_int(root, "num_attention_heads", 0);
    config.n_kv_heads = json_int(root, "num_key_value_heads", config.n_heads);
    config.head_dim = json_int(root, "head_dim", 0);
    if (config.head_dim <= 0 && config.n_heads > 0) config.head_dim = config.hidden_size / config.n_heads;
    config.max_position = json_int(root, "max_position_embeddings", 2048);
    config.rms_norm_eps = (float)json_double(root, "rms_norm_eps", 1e-6);
    config.tie_embeddings = json_bool(root, "tie_word_embeddings", 0);
    config.attention_bias = architectures[arch_index].bias == BIAS_QKV_ALWAYS;
    if (architectures[arch_index].bias == BIAS_KEY_ALSO_ON_O_PROJ &&
        json_bool(root, "attention_bias", 0)) {
        status = ferry_fail(FERRY_ERR_UNSUPPORTED,
                            "%s: unsupported feature attention_bias on %s (it adds an "
                            "o_proj bias, which ferry does not implement)",
                            source, hf_arch);
        goto fail;
    }
    config.bos_token_id = json_int(root, "bos_token_id", -1);
    parse_eos(root, &config);

    /* A sliding window shorter than the context changes attention; ferry
     * implements full causal attention only. */
    const cJSON *window = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
    window_rule window_use = architectures[arch_index].window;
    int use_window = window_use == WINDOW_WHEN_SET ||
                     (window_use == WINDOW_WHEN_ENABLED && json_bool(root, "use_sliding_window", 0));
    if (use_window && cJSON_IsNumber(window) && window->valuedouble < config.max_position) {
        status = ferry_fail(FERRY_ERR_UNSUPPORTED,
                            "%s: unsupported feature sliding_window %d (shorter than "
                            "max_position_embeddings %d)",
                            source, (int)window->valuedouble, config.max_position);
        goto fail;
    }

    FERRY_TRY_GOTO(parse_hf_rope(root, source, &config));

    if (out_checkpoint_dtype) {
        const char *dtype = json_string(root, "dtype");
        if (!dtype) dtype = json_string(root, "torch_dtype");
        *out_checkpoint_dtype = FERRY_DTYPE_F32;
        if (dtype && ferry_dtype_parse(dtype, out_checkpoint_dtype) != FERRY_OK) {
            status = ferry_fail(FERRY_ERR_UNSUPPORTED, "%s: unsupported checkpoint dtype '%s'",
                                source, dtype);
            goto fail;
        }
    }
    status = ferry_config_validate(&config);
    if (status != FERRY_OK) {
        ferry_fail_prefix(status, "%s: ", source);
        goto fail;
    }
    *out = config;
fail:
    cJSON_Delete(root);
    return status;
}

/* ------------------------------------------------ manifest "config" */

/* One table drives both directions of the manifest's config object. */
typedef enum { FIELD_INT, FIELD_FLOAT, FIELD_DOUBLE } field_type;
static const struct {
    const char *key;
    size_t offset;
    field_type type;
} manifest_fields[] = {
    {"vocab_size", offsetof(ferry_config, vocab_size), FIELD_INT},
    {"hidden_size", offsetof(ferry_config, hidden_size), FIELD_INT},
    {"intermediate_size", offsetof(ferry_config, intermediate_size), FIELD_INT},
    {"n_layers", offsetof(ferry_config, n_layers), FIELD_INT},
    {"n_heads", offsetof(ferry_config, n_heads), FIELD_INT},
    {"n_kv_heads", offsetof(ferry_config, n_kv_heads), FIELD_INT},
    {"head_dim", offsetof(ferry_config, head_dim), FIELD_INT},
    {"max_position", offsetof(ferry_config, max_position), FIELD_INT},
    {"rms_norm_eps", offsetof(ferry_config, rms_norm_eps), FIELD_FLOAT},
    {"tie_embeddings", offsetof(ferry_config, tie_embeddings), FIELD_INT},
    {"attention_bias", offsetof(ferry_config, attention_bias), FIELD_INT},
    {"rope_theta", offsetof(ferry_config, rope_theta), FIELD_DOUBLE},
    {"rope_factor", offsetof(ferry_config, rope_factor), FIELD_DOUBLE},
    {"rope_low_freq_factor", offsetof(ferry_config, rope_low_freq_factor), FIELD_DOUBLE},
    {"rope_high_freq_factor", offsetof(ferry_config, rope_high_freq_factor), FIELD_DOUBLE},
    {"rope_original_max_position", offsetof(ferry_config, rope_original_max_position), FIELD_INT},
    {"bos_token_id", offsetof(ferry_config, bos_token_id), FIELD_INT},
};

cJSON *ferry_config_to_json(const ferry_config *config) {
    cJSON *object = cJSON_CreateObject();
    if (!object) return NULL;
    cJSON_AddStringToObject(object, "architecture", config->architecture);
    cJSON_AddStringToObject(object, "rope_type", rope_type_name(config->rope_type));
    for (size_t i = 0; i < sizeof manifest_fields / sizeof manifest_fields[0]; i++) {
        const char *field = (const char *)config + manifest_fields[i].offset;
        double value = manifest_fields[i].type == FIELD_INT     ? *(const int *)field
                       : manifest_fields[i].type == FIELD_FLOAT ? *(const float *)field
                                                                : *(const double *)field;
        cJSON_AddNumberToObject(object, manifest_fields[i].key, value);
    }
    cJSON *eos = cJSON_AddArrayToObject(object, "eos_token_ids");
    for (int i = 0; eos && i < config->n_eos_token_ids; i++)
        cJSON_AddItemToArray(eos, cJSON_CreateNumber(config->eos_token_ids[i]));
    return object;
}

ferry_status ferry_config_from_json(const cJSON *object, ferry_config *out) {
    ferry_config config;
    memset(&config, 0, sizeof config);
    const char *architecture = json_string(object, "architecture");
    const char *rope = json_string(object, "rope_type");
    if (!architecture || !rope)
        return ferry_fail(FERRY_ERR_FORMAT, "manifest config lacks architecture or rope_type");
    snprintf(config.architecture, sizeof config.architecture, "%s", architecture);
    ferry_status status = rope_type_parse(rope, "manifest config", &config.rope_type);
    if (status != FERRY_OK) return ferry_fail(FERRY_ERR_FORMAT, "%s", ferry_last_error());
    for (size_t i = 0; i < sizeof manifest_fields / sizeof manifest_fields[0]; i++) {
        const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, manifest_fields[i].key);
        if (!cJSON_IsNumber(item))
            return ferry_fail(FERRY_ERR_FORMAT, "manifest config lacks number '%s'",
                              manifest_fields[i].key);
        char *field = (char *)&config + manifest_fields[i].offset;
        switch (manifest_fields[i].type) {
        case FIELD_INT: *(int *)field = json_number_to_int(item); break;
        case FIELD_FLOAT: *(float *)field = (float)item->valuedouble; break;
        case FIELD_DOUBLE: *(double *)field = item->valuedouble; break;
        }
    }
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(object, "eos_token_ids");
    const cJSON *item;
    cJSON_ArrayForEach(item, eos) {
        if (cJSON_IsNumber(item) && config.n_eos_token_ids < FERRY_MAX_EOS)
            config.eos_token_ids[config.n_eos_token_ids++] = json_number_to_int(item);
    }
    FERRY_TRY(ferry_config_validate(&config));
    *out = config;
    return FERRY_OK;
}
