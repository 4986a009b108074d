/*
 * test_config.c — HF config.json in both transformers spellings, the
 * unsupported cases, RoPE frequencies against an independent float64
 * formula, the manifest round trip, and the presets.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "helpers.h"
#include "runtime/config.h"

static const char llama3_tf4[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 1000, \"hidden_size\": 96,"
    " \"intermediate_size\": 200, \"num_hidden_layers\": 3, \"num_attention_heads\": 4,"
    " \"num_key_value_heads\": 2, \"head_dim\": 32, \"max_position_embeddings\": 4096,"
    " \"rms_norm_eps\": 1e-5, \"rope_theta\": 500000.0, \"hidden_act\": \"silu\","
    " \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0,"
    " \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 512},"
    " \"torch_dtype\": \"bfloat16\", \"bos_token_id\": 7, \"eos_token_id\": [8, 9],"
    " \"tie_word_embeddings\": false}";

static const char llama3_tf5[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 1000, \"hidden_size\": 96,"
    " \"intermediate_size\": 200, \"num_hidden_layers\": 3, \"num_attention_heads\": 4,"
    " \"num_key_value_heads\": 2, \"head_dim\": 32, \"max_position_embeddings\": 4096,"
    " \"rms_norm_eps\": 1e-5, \"hidden_act\": \"silu\","
    " \"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": 500000.0, \"factor\": 8.0,"
    " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
    " \"original_max_position_embeddings\": 512},"
    " \"dtype\": \"bfloat16\", \"bos_token_id\": 7, \"eos_token_id\": [8, 9]}";

Test(config, both_transformers_spellings_give_the_same_config) {
    ferry_config a, b;
    ferry_dtype dtype_a, dtype_b;
    cr_assert_eq(ferry_config_from_hf_json(llama3_tf4, "tf4", &a, &dtype_a), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(ferry_config_from_hf_json(llama3_tf5, "tf5", &b, &dtype_b), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_eq(memcmp(&a, &b, sizeof a), 0);
    cr_assert_eq(dtype_a, FERRY_DTYPE_BF16);
    cr_assert_eq(dtype_b, FERRY_DTYPE_BF16);
    cr_assert_str_eq(a.architecture, "llama");
    cr_assert_eq(a.head_dim, 32);
    cr_assert_eq(a.n_kv_heads, 2);
    cr_assert_eq(a.rope_type, FERRY_ROPE_LLAMA3);
    cr_assert_eq(a.rope_original_max_position, 512);
    cr_assert_eq(a.n_eos_token_ids, 2);
    cr_assert_eq(a.eos_token_ids[1], 9);
    cr_assert_eq(a.bos_token_id, 7);
}

Test(config, qwen2_has_qkv_bias_and_defaults_fill_in) {
    const char *json =
        "{\"architectures\": [\"Qwen2ForCausalLM\"], \"vocab_size\": 300, \"hidden_size\": 64,"
        " \"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
        " \"rms_norm_eps\": 1e-6, \"tie_word_embeddings\": true, \"sliding_window\": 4096,"
        " \"use_sliding_window\": false, \"eos_token_id\": 5}";
    ferry_config c;
    cr_assert_eq(ferry_config_from_hf_json(json, "qwen", &c, NULL), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert(c.attention_bias);
    cr_assert(c.tie_embeddings);
    cr_assert_eq(c.n_kv_heads, 4);
    cr_assert_eq(c.head_dim, 16);
    cr_assert_eq(c.rope_type, FERRY_ROPE_DEFAULT);
    cr_assert_eq(c.rope_theta, 10000.0);
    cr_assert(ferry_tensor_present(&c, FERRY_TENSOR_BK));
    cr_assert(!ferry_tensor_present(&c, FERRY_TENSOR_LM_HEAD));
}

/* llama3_tf4 with the first `from` replaced by `to`, parsed. */
static ferry_status parse_edited(const char *from, const char *to, ferry_config *c,
                                 ferry_dtype *dtype) {
    char json[4096];
    const char *at = strstr(llama3_tf4, from);
    cr_assert_not_null(at, "pattern %s", from);
    snprintf(json, sizeof json, "%.*s%s%s", (int)(at - llama3_tf4), llama3_tf4, to,
             at + strlen(from));
    return ferry_config_from_hf_json(json, "cfg", c, dtype);
}

static void expect_unsupported(const char *from, const char *to, const char *named) {
    ferry_config c;
    ferry_dtype dtype;
    ferry_status status = parse_edited(from, to, &c, &dtype);
    cr_assert_eq(status, FERRY_ERR_UNSUPPORTED, "%s -> %s gave %d", from, to, status);
    cr_assert(strstr(ferry_last_error(), named), "'%s' lacks '%s'", ferry_last_error(), named);
}

static void expect_accepted(const char *from, const char *to) {
    ferry_config c;
    ferry_dtype dtype;
    cr_assert_eq(parse_edited(from, to, &c, &dtype), FERRY_OK, "%s -> %s: %s", from, to,
                 ferry_last_error());
}

#define MISTRAL "\"MistralForCausalLM\"], \"sliding_window\": "
#define QWEN2 "\"Qwen2ForCausalLM\"], \"sliding_window\": "

Test(config, unsupported_features_are_named) {
    expect_unsupported("LlamaForCausalLM", "GPT2LMHeadModel", "GPT2LMHeadModel");
    expect_unsupported("\"LlamaForCausalLM\"", "", "(none given)");
    expect_unsupported("[\"LlamaForCausalLM\"]", "[], \"model_type\": \"gemma\"", "gemma");
    expect_unsupported("\"llama3\"", "\"yarn\"", "yarn");
    expect_unsupported("\"llama3\"", "\"dynamic\"", "dynamic");
    expect_unsupported("\"silu\"", "\"gelu\"", "gelu");
    expect_unsupported("\"rms_norm_eps\"", "\"mlp_bias\": true, \"rms_norm_eps\"", "mlp_bias");
    /* HF Llama's attention_bias also puts a bias on o_proj */
    expect_unsupported("\"rms_norm_eps\"", "\"attention_bias\": true, \"rms_norm_eps\"",
                       "attention_bias");
    expect_unsupported("\"LlamaForCausalLM\"]", MISTRAL "128", "sliding_window");
    expect_unsupported("\"LlamaForCausalLM\"]", QWEN2 "128, \"use_sliding_window\": true",
                       "sliding_window");
    expect_unsupported("\"bfloat16\"", "\"float8\"", "float8");
}

Test(config, sliding_windows_that_never_bind_are_accepted) {
    expect_accepted("\"LlamaForCausalLM\"]", MISTRAL "null");
    expect_accepted("\"LlamaForCausalLM\"]", MISTRAL "4096");   /* = max_position */
    expect_accepted("\"LlamaForCausalLM\"]", MISTRAL "100000");
    expect_accepted("\"LlamaForCausalLM\"]", QWEN2 "128");      /* use_sliding_window off */
    expect_accepted("\"LlamaForCausalLM\"]", QWEN2 "128, \"use_sliding_window\": false");
    expect_accepted("\"rms_norm_eps\"", "\"attention_bias\": false, \"rms_norm_eps\"");
}

Test(config, model_type_stands_in_for_a_missing_architectures_list) {
    ferry_config c;
    ferry_dtype dtype;
    cr_assert_eq(parse_edited("[\"LlamaForCausalLM\"]", "[], \"model_type\": \"qwen2\"", &c,
                              &dtype),
                 FERRY_OK, "%s", ferry_last_error());
    cr_assert_str_eq(c.architecture, "qwen2");
    cr_assert(c.attention_bias);
}

Test(config, older_spellings_and_defaults_are_read) {
    ferry_config c;
    ferry_dtype dtype;
    /* transformers 4.3x: rope_scaling {"type": ...} */
    cr_assert_eq(parse_edited("{\"rope_type\": \"llama3\", \"factor\": 8.0",
                              "{\"type\": \"linear\", \"factor\": 2.5", &c, &dtype),
                 FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(c.rope_type, FERRY_ROPE_LINEAR);
    cr_assert_eq(c.rope_factor, 2.5);
    cr_assert_eq(c.rope_theta, 500000.0);
    /* rope_scaling null: default rope; no dtype key: f32; scalar eos; null bos */
    const char *json =
        "{\"architectures\": [\"MistralForCausalLM\"], \"vocab_size\": 300, \"hidden_size\": 64,"
        " \"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
        " \"num_key_value_heads\": 1, \"head_dim\": null, \"rope_scaling\": null,"
        " \"rope_theta\": 1000000.0, \"bos_token_id\": null, \"eos_token_id\": 3}";
    cr_assert_eq(ferry_config_from_hf_json(json, "mistral", &c, &dtype), FERRY_OK, "%s",
                 ferry_last_error());
    cr_assert_str_eq(c.architecture, "mistral");
    cr_assert_eq(c.rope_type, FERRY_ROPE_DEFAULT);
    cr_assert_eq(c.rope_theta, 1e6);
    cr_assert_eq(c.head_dim, 16);
    cr_assert_eq(c.n_kv_heads, 1);
    cr_assert_eq(dtype, FERRY_DTYPE_F32);
    cr_assert_eq(c.bos_token_id, -1);
    cr_assert_eq(c.n_eos_token_ids, 1);
    cr_assert_eq(c.eos_token_ids[0], 3);
    cr_assert(!c.tie_embeddings);
    cr_assert(!c.attention_bias);
    cr_assert(ferry_tensor_present(&c, FERRY_TENSOR_LM_HEAD));
}

Test(config, out_of_range_numbers_are_errors_not_overflows) {
    ferry_config c;
    ferry_dtype dtype;
    static const struct {
        const char *from, *to, *named;
    } cases[] = {
        {"\"hidden_size\": 96", "\"hidden_size\": 1e30", "hidden_size"},
        {"\"hidden_size\": 96", "\"hidden_size\": -96", "hidden_size"},
        {"\"num_hidden_layers\": 3", "\"num_hidden_layers\": 0", "num_hidden_layers"},
        {"\"head_dim\": 32", "\"head_dim\": 31", "head_dim"},
        {"\"rms_norm_eps\": 1e-5", "\"rms_norm_eps\": 0", "rms_norm_eps"},
        {"\"bos_token_id\": 7", "\"bos_token_id\": -1e300", "bos_token_id"},
        {"\"high_freq_factor\": 4.0", "\"high_freq_factor\": 0.5", "llama3"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cr_assert_eq(parse_edited(cases[i].from, cases[i].to, &c, &dtype), FERRY_ERR_FORMAT,
                     "%s", cases[i].to);
        cr_assert(strstr(ferry_last_error(), cases[i].named), "'%s' lacks '%s'",
                  ferry_last_error(), cases[i].named);
        cr_assert(strstr(ferry_last_error(), "cfg"), "'%s' lacks the source name",
                  ferry_last_error());
    }
}

Test(config, impossible_shapes_are_rejected) {
    ferry_config c;
    char json[4096];
    snprintf(json, sizeof json, "%s", llama3_tf4);
    char *kv = strstr(json, "\"num_key_value_heads\": 2");
    kv[strlen("\"num_key_value_heads\": ")] = '3';
    cr_assert_eq(ferry_config_from_hf_json(json, "cfg", &c, NULL), FERRY_ERR_FORMAT);
    cr_assert(strstr(ferry_last_error(), "multiple"), "%s", ferry_last_error());
    cr_assert_eq(ferry_config_from_hf_json("{not json", "cfg", &c, NULL), FERRY_ERR_FORMAT);
    cr_assert_eq(ferry_config_from_hf_json("[1,2]", "cfg", &c, NULL), FERRY_ERR_FORMAT);
}

/* Llama 3 frequency scaling written from the published description, in
 * float64, independently of config.c. */
static double llama3_reference(int i, int dim, double theta, double factor, double low,
                               double high, double original) {
    double base = 1.0 / pow(theta, (double)(2 * i) / dim);
    double wavelength = 2 * M_PI / base;
    if (wavelength < original / high) return base;
    if (wavelength > original / low) return base / factor;
    double smooth = (original / wavelength - low) / (high - low);
    return (1 - smooth) * base / factor + smooth * base;
}

Test(config, rope_frequencies_match_a_float64_reference) {
    ferry_config c;
    cr_assert_eq(ferry_config_from_hf_json(llama3_tf4, "tf4", &c, NULL), FERRY_OK);
    float inv[64];
    for (int variant = 0; variant < 3; variant++) {
        c.rope_type = (ferry_rope_type)variant;
        ferry_rope_inv_freq(&c, inv);
        int saw_middle_band = 0;
        for (int i = 0; i < c.head_dim / 2; i++) {
            double base = 1.0 / pow(c.rope_theta, (double)(2 * i) / c.head_dim);
            double expected = variant == 0   ? base
                              : variant == 2 ? base / c.rope_factor
                                             : llama3_reference(i, c.head_dim, c.rope_theta, 8, 1,
                                                                4, 512);
            if (variant == 1 && expected != base && expected != base / 8) saw_middle_band = 1;
            cr_assert_float_eq(inv[i], (float)expected, fabs(expected) * 1e-6, "variant %d i %d",
                               variant, i);
        }
        if (variant == 1) cr_assert(saw_middle_band, "no frequency fell in the blended band");
    }
}

Test(config, manifest_json_round_trips_every_preset) {
    for (int i = 0; i < ferry_n_presets; i++) {
        cJSON *json = ferry_config_to_json(&ferry_presets[i].config);
        char *text = cJSON_PrintUnformatted(json);
        cJSON *parsed = cJSON_Parse(text);
        ferry_config back;
        cr_assert_eq(ferry_config_from_json(parsed, &back), FERRY_OK, "%s: %s",
                     ferry_presets[i].name, ferry_last_error());
        cr_assert_eq(memcmp(&back, &ferry_presets[i].config, sizeof back), 0, "%s",
                     ferry_presets[i].name);
        cJSON_Delete(json);
        cJSON_Delete(parsed);
        free(text);
    }
}

Test(config, presets_have_published_parameter_counts) {
    static const struct {
        const char *name;
        double billions;
    } expected[] = {{"llama2-7b", 6.74}, {"llama2-13b", 13.02}, {"codellama-34b", 33.74},
                    {"llama2-70b", 68.98}, {"llama3-8b", 8.03}, {"mistral-7b", 7.25}};
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        const ferry_preset *preset = ferry_preset_find(expected[i].name);
        cr_assert_not_null(preset, "%s", expected[i].name);
        double billions = (double)ferry_config_n_parameters(&preset->config) / 1e9;
        cr_assert_float_eq(billions, expected[i].billions, 0.01, "%s: %.3f", expected[i].name,
                           billions);
        cr_assert_eq(ferry_config_validate(&preset->config), FERRY_OK);
    }
    cr_assert_null(ferry_preset_find("gpt-5"));
}

/* Published config.json files (abridged to the keys that matter) give
 * exactly the presets of the same name. */
Test(config, published_configs_give_the_presets) {
    static const struct {
        const char *preset;
        const char *json;
    } cases[] = {
        {"llama3-8b",
         "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false,"
         " \"bos_token_id\": 128000, \"eos_token_id\": 128001, \"hidden_act\": \"silu\","
         " \"hidden_size\": 4096, \"intermediate_size\": 14336,"
         " \"max_position_embeddings\": 131072, \"mlp_bias\": false, \"num_attention_heads\": 32,"
         " \"num_hidden_layers\": 32, \"num_key_value_heads\": 8, \"rms_norm_eps\": 1e-05,"
         " \"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
         " \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"},"
         " \"rope_theta\": 500000.0, \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\","
         " \"vocab_size\": 128256}"},
        {"mistral-7b",
         "{\"architectures\": [\"MistralForCausalLM\"], \"bos_token_id\": 1, \"eos_token_id\": 2,"
         " \"hidden_act\": \"silu\", \"hidden_size\": 4096, \"intermediate_size\": 14336,"
         " \"max_position_embeddings\": 32768, \"num_attention_heads\": 32,"
         " \"num_hidden_layers\": 32, \"num_key_value_heads\": 8, \"rms_norm_eps\": 1e-05,"
         " \"rope_theta\": 1000000.0, \"sliding_window\": null, \"tie_word_embeddings\": false,"
         " \"torch_dtype\": \"bfloat16\", \"vocab_size\": 32768}"},
        {"llama2-7b",
         "{\"architectures\": [\"LlamaForCausalLM\"], \"bos_token_id\": 1, \"eos_token_id\": 2,"
         " \"hidden_act\": \"silu\", \"hidden_size\": 4096, \"intermediate_size\": 11008,"
         " \"max_position_embeddings\": 4096, \"num_attention_heads\": 32,"
         " \"num_hidden_layers\": 32, \"num_key_value_heads\": 32, \"rms_norm_eps\": 1e-05,"
         " \"rope_scaling\": null, \"tie_word_embeddings\": false, \"torch_dtype\": \"float16\","
         " \"vocab_size\": 32000}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ferry_config parsed;
        ferry_dtype dtype;
        cr_assert_eq(ferry_config_from_hf_json(cases[i].json, cases[i].preset, &parsed, &dtype),
                     FERRY_OK, "%s", ferry_last_error());
        const ferry_preset *preset = ferry_preset_find(cases[i].preset);
        cr_assert_not_null(preset);
        cr_assert_eq(memcmp(&parsed, &preset->config, sizeof parsed), 0, "%s differs",
                     cases[i].preset);
    }
}
