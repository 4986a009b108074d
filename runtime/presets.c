/*
 * presets.c — the model shapes `ferry synth` knows: published shapes of
 * common open models, plus tiny ones for tests and the quick start.
 */
#include "runtime/config.h"

#define LLAMA_TOKENS .bos_token_id = 1, .n_eos_token_ids = 1, .eos_token_ids = {2}
#define ROPE_DEFAULT(theta) .rope_type = FERRY_ROPE_DEFAULT, .rope_theta = (theta), .rope_factor = 1

const ferry_preset ferry_presets[] = {
    {"tiny", "2 layers, hidden 64, GQA 4:2, for tests",
     {.architecture = "llama", .vocab_size = 512, .hidden_size = 64, .intermediate_size = 172,
      .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .head_dim = 16, .max_position = 2048,
      .rms_norm_eps = 1e-5f, ROPE_DEFAULT(10000.0), LLAMA_TOKENS}},
    {"tiny-qwen2", "2 layers, q/k/v bias, tied embeddings, for tests",
     {.architecture = "qwen2", .vocab_size = 512, .hidden_size = 64, .intermediate_size = 128,
      .n_layers = 2, .n_heads = 4, .n_kv_heads = 1, .head_dim = 16, .max_position = 4096,
      .rms_norm_eps = 1e-6f, .tie_embeddings = 1, .attention_bias = 1,
      ROPE_DEFAULT(1000000.0), .bos_token_id = -1, .n_eos_token_ids = 1,
      .eos_token_ids = {511}}},
    {"tiny-llama3", "2 layers, llama3 rope scaling, head_dim != hidden/heads, for tests",
     {.architecture = "llama", .vocab_size = 512, .hidden_size = 96, .intermediate_size = 160,
      .n_layers = 2, .n_heads = 4, .n_kv_heads = 1, .head_dim = 32, .max_position = 8192,
      .rms_norm_eps = 1e-5f, .rope_type = FERRY_ROPE_LLAMA3, .rope_theta = 500000.0,
      .rope_factor = 8, .rope_low_freq_factor = 1, .rope_high_freq_factor = 4,
      .rope_original_max_position = 1024, LLAMA_TOKENS}},
    {"small", "about 60M parameters, Llama-2 vocabulary, for the quick start",
     {.architecture = "llama", .vocab_size = 32000, .hidden_size = 512,
      .intermediate_size = 1376, .n_layers = 8, .n_heads = 8, .n_kv_heads = 8,
      .head_dim = 64, .max_position = 4096, .rms_norm_eps = 1e-5f, ROPE_DEFAULT(10000.0),
      LLAMA_TOKENS}},
    {"llama2-7b", "Llama-2 7B shape",
     {.architecture = "llama", .vocab_size = 32000, .hidden_size = 4096,
      .intermediate_size = 11008, .n_layers = 32, .n_heads = 32, .n_kv_heads = 32,
      .head_dim = 128, .max_position = 4096, .rms_norm_eps = 1e-5f, ROPE_DEFAULT(10000.0),
      LLAMA_TOKENS}},
    {"llama2-13b", "Llama-2 13B shape",
     {.architecture = "llama", .vocab_size = 32000, .hidden_size = 5120,
      .intermediate_size = 13824, .n_layers = 40, .n_heads = 40, .n_kv_heads = 40,
      .head_dim = 128, .max_position = 4096, .rms_norm_eps = 1e-5f, ROPE_DEFAULT(10000.0),
      LLAMA_TOKENS}},
    {"codellama-34b", "CodeLlama 34B shape (GQA 64:8)",
     {.architecture = "llama", .vocab_size = 32000, .hidden_size = 8192,
      .intermediate_size = 22016, .n_layers = 48, .n_heads = 64, .n_kv_heads = 8,
      .head_dim = 128, .max_position = 16384, .rms_norm_eps = 1e-5f,
      ROPE_DEFAULT(1000000.0), LLAMA_TOKENS}},
    {"llama2-70b", "Llama-2 70B shape (GQA 64:8)",
     {.architecture = "llama", .vocab_size = 32000, .hidden_size = 8192,
      .intermediate_size = 28672, .n_layers = 80, .n_heads = 64, .n_kv_heads = 8,
      .head_dim = 128, .max_position = 4096, .rms_norm_eps = 1e-5f, ROPE_DEFAULT(10000.0),
      LLAMA_TOKENS}},
    {"llama3-8b", "Llama-3.1 8B shape (GQA 32:8, llama3 rope)",
     {.architecture = "llama", .vocab_size = 128256, .hidden_size = 4096,
      .intermediate_size = 14336, .n_layers = 32, .n_heads = 32, .n_kv_heads = 8,
      .head_dim = 128, .max_position = 131072, .rms_norm_eps = 1e-5f,
      .rope_type = FERRY_ROPE_LLAMA3, .rope_theta = 500000.0, .rope_factor = 8,
      .rope_low_freq_factor = 1, .rope_high_freq_factor = 4,
      .rope_original_max_position = 8192, .bos_token_id = 128000, .n_eos_token_ids = 1,
      .eos_token_ids = {128001}}},
    {"mistral-7b", "Mistral 7B v0.3 shape (GQA 32:8)",
     {.architecture = "mistral", .vocab_size = 32768, .hidden_size = 4096,
      .intermediate_size = 14336, .n_layers = 32, .n_heads = 32, .n_kv_heads = 8,
      .head_dim = 128, .max_position = 32768, .rms_norm_eps = 1e-5f,
      ROPE_DEFAULT(1000000.0), LLAMA_TOKENS}},
};

const int ferry_n_presets = (int)(sizeof ferry_presets / sizeof ferry_presets[0]);

const ferry_preset *ferry_preset_find(const char *name) {
    for (int i = 0; i < ferry_n_presets; i++)
        if (strcmp(ferry_presets[i].name, name) == 0) return &ferry_presets[i];
    return NULL;
}
