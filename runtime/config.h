/*
 * config.h — a model's hyper-parameters (ferry_config), the table of the
 * tensors a Llama-family model is made of, and the presets `ferry synth`
 * knows.  Parsing of HF config.json lives in config.c; nothing here reads
 * weights.
 */
#ifndef FERRY_RUNTIME_CONFIG_H
#define FERRY_RUNTIME_CONFIG_H

#include "base/base.h"

typedef enum ferry_rope_type {
    FERRY_ROPE_DEFAULT = 0,
    FERRY_ROPE_LLAMA3 = 1,
    FERRY_ROPE_LINEAR = 2,
} ferry_rope_type;

enum { FERRY_MAX_EOS = 8 };

typedef struct ferry_config {
    char architecture[32];      /* "llama", "mistral", "qwen2" */
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;               /* need not be hidden_size / n_heads */
    int max_position;
    float rms_norm_eps;
    int tie_embeddings;         /* lm_head shares the embedding table */
    int attention_bias;         /* q/k/v projections carry a bias (Qwen2) */
    /* RoPE */
    ferry_rope_type rope_type;
    double rope_theta;
    double rope_factor;               /* llama3 and linear */
    double rope_low_freq_factor;      /* llama3 */
    double rope_high_freq_factor;     /* llama3 */
    int rope_original_max_position;   /* llama3 */
    /* special tokens (-1: none) */
    int bos_token_id;
    int n_eos_token_ids;
    int eos_token_ids[FERRY_MAX_EOS];
} ferry_config;

/* Check dimensions are positive, consistent and within sane bounds. */
ferry_status ferry_config_validate(const ferry_config *config);

/* Fill inv_freq[head_dim/2] with the RoPE inverse frequencies, llama3 or
 * linear scaling applied.  CPU and CUDA backends both rotate with it. */
void ferry_rope_inv_freq(const ferry_config *config, float *inv_freq);

/* Parse an HF config.json text (transformers 4 or 5 spellings).  Unknown
 * architectures or features fail with FERRY_ERR_UNSUPPORTED naming them. */
ferry_status ferry_config_from_hf_json(const char *json_text, const char *source_name,
                                       ferry_config *out, ferry_dtype *out_checkpoint_dtype);

/* Serialise to / parse from the manifest's "config" object (cJSON*). */
struct cJSON;
struct cJSON *ferry_config_to_json(const ferry_config *config);
ferry_status ferry_config_from_json(const struct cJSON *object, ferry_config *out);

/* ------------------------------------------------------ tensor table */

/* The tensors of a model.  Global tensors have layer -1 in the file. */
typedef enum ferry_tensor_kind {
    /* global */
    FERRY_TENSOR_EMBED = 0,     /* [vocab, hidden] */
    FERRY_TENSOR_FINAL_NORM,    /* [hidden], f32 */
    FERRY_TENSOR_LM_HEAD,       /* [vocab, hidden]; absent when tied */
    /* per layer */
    FERRY_TENSOR_ATTN_NORM,     /* [hidden], f32 */
    FERRY_TENSOR_WQ,            /* [n_heads*head_dim, hidden] */
    FERRY_TENSOR_WK,            /* [n_kv_heads*head_dim, hidden] */
    FERRY_TENSOR_WV,            /* [n_kv_heads*head_dim, hidden] */
    FERRY_TENSOR_BQ,            /* [n_heads*head_dim], f32; only with attention_bias */
    FERRY_TENSOR_BK,            /* [n_kv_heads*head_dim], f32; likewise */
    FERRY_TENSOR_BV,            /* [n_kv_heads*head_dim], f32; likewise */
    FERRY_TENSOR_WO,            /* [hidden, n_heads*head_dim] */
    FERRY_TENSOR_MLP_NORM,      /* [hidden], f32 */
    FERRY_TENSOR_W_GATE,        /* [intermediate, hidden] */
    FERRY_TENSOR_W_UP,          /* [intermediate, hidden] */
    FERRY_TENSOR_W_DOWN,        /* [hidden, intermediate] */
    FERRY_TENSOR_KIND_COUNT
} ferry_tensor_kind;

#define FERRY_FIRST_LAYER_TENSOR FERRY_TENSOR_ATTN_NORM

typedef struct ferry_tensor_spec {
    const char *name;           /* "embed", "wq", ... (file name: "layers.3.wq") */
    const char *hf_name;        /* HF suffix: "model.embed_tokens.weight", "self_attn.q_proj.weight" */
    int is_global;
    int is_matrix;              /* stored in the model dtype; vectors are always f32 */
} ferry_tensor_spec;

extern const ferry_tensor_spec ferry_tensor_specs[FERRY_TENSOR_KIND_COUNT];

/* Does this model have this tensor (biases, untied lm_head)? */
int ferry_tensor_present(const ferry_config *config, ferry_tensor_kind kind);
/* Shape as rows x cols (cols = 1 for vectors). */
void ferry_tensor_shape(const ferry_config *config, ferry_tensor_kind kind, uint64_t *rows,
                        uint64_t *cols);

/* Total parameter count. */
uint64_t ferry_config_n_parameters(const ferry_config *config);

/* -------------------------------------------------------------- presets */

typedef struct ferry_preset {
    const char *name;
    const char *description;
    ferry_config config;
} ferry_preset;

extern const ferry_preset ferry_presets[];
extern const int ferry_n_presets;
const ferry_preset *ferry_preset_find(const char *name);

#endif /* FERRY_RUNTIME_CONFIG_H */
