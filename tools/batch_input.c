/*
 * batch_input.c — reading `ferry batch`'s input: one JSON object per line,
 * an id (string or number), a "prompt" (tokenized with the model's
 * tokenizer) or "tokens", and optional per-request sampling and stops.
 * A bad line never stops the others unless --strict.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>

#include "runtime/tokenizer.h"
#include "tools/batch_input.h"
#include "tools/cli.h"

/* Fill one request from a parsed line; returns a message on bad input. */
static const char *parse_request(const char *line, const cJSON *root, request_line *request,
                                 const batch_options *opts, struct ferry_tokenizer **tokenizer_slot,
                                 char *message, size_t message_size) {
    struct ferry_tokenizer *tokenizer = *tokenizer_slot;
    const cJSON *tokens = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (cJSON_IsString(prompt)) {
        if (!tokenizer) {
            ferry_status status = cli_open_tokenizer(opts->tokenizer_path, opts->model_path,
                                                     tokenizer_slot);
            if (status != FERRY_OK) {
                snprintf(message, message_size, "a \"prompt\" needs a tokenizer: %s",
                         ferry_last_error());
                return message;
            }
            tokenizer = *tokenizer_slot;
        }
        char *text = NULL;
        size_t bytes = 0;
        ferry_token_list ids = {0};
        ferry_status status = ferry_json_get_string(line, "prompt", &text, &bytes);
        if (status == FERRY_OK) status = ferry_tokenizer_encode(tokenizer, text, bytes, 1, &ids);
        free(text);
        if (status != FERRY_OK) {
            ferry_token_list_free(&ids);
            snprintf(message, message_size, "%s", ferry_last_error());
            return message;
        }
        request->prompt = ids.ids;
        request->n_prompt = (int)ids.count;
    } else if (cJSON_IsArray(tokens)) {
        int n = cJSON_GetArraySize(tokens), k = 0;
        request->prompt = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
        if (!request->prompt) return "out of memory";
        for (const cJSON *item = tokens->child; item; item = item->next) {
            if (!cJSON_IsNumber(item) || item->valuedouble != (double)(int32_t)item->valuedouble)
                return "\"tokens\" must be a list of integers";
            request->prompt[k++] = (int32_t)item->valuedouble;
        }
        request->n_prompt = k;
    } else {
        return "needs a \"prompt\" string or a \"tokens\" list";
    }
    static const char *const numbers[] = {"max_new_tokens", "temperature", "top_p", "top_k", "seed"};
    for (int i = 0; i < 5; i++) {
        const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, numbers[i]);
        if (!item) continue;
        if (!cJSON_IsNumber(item)) {
            snprintf(message, message_size, "\"%s\" must be a number", numbers[i]);
            return message;
        }
        double value = item->valuedouble;
        if (i == 0) request->max_new_tokens = value < 0 ? -1 : value > 1e7 ? 10000000 : (int)value;
        if (i == 1) {
            request->sampling.greedy = value == 0;
            if (value != 0) request->sampling.temperature = (float)value;
        }
        if (i == 2) request->sampling.top_p = (float)value;
        if (i == 3) request->sampling.top_k = value < 0 ? -1 : (int)value;
        if (i == 4) request->sampling.seed = (uint64_t)value;
    }
    const cJSON *ignore_eos = cJSON_GetObjectItemCaseSensitive(root, "ignore_eos");
    if (cJSON_IsBool(ignore_eos)) request->ignore_eos = cJSON_IsTrue(ignore_eos);
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (stop && !cJSON_IsNull(stop)) {
        int n = cJSON_IsString(stop) ? 1 : cJSON_IsArray(stop) ? cJSON_GetArraySize(stop) : -1;
        if (n < 0) return "\"stop\" must be a string or a list of strings";
        request->stops = calloc((size_t)n + 1, sizeof *request->stops);
        if (!request->stops) return "out of memory";
        for (const cJSON *item = cJSON_IsString(stop) ? stop : stop->child; item && request->n_stops < n;
             item = item->next) {
            if (!cJSON_IsString(item) || !item->valuestring[0]) return "\"stop\" entries must be non-empty strings";
            request->stops[request->n_stops++] = strdup(item->valuestring);
        }
        if (request->n_stops && !tokenizer) return "\"stop\" needs a tokenizer";
    }
    return NULL;
}

void request_line_free(request_line *request) {
    free(request->id_json);
    free(request->prompt);
    for (int i = 0; i < request->n_stops; i++) free(request->stops[i]);
    free(request->stops);
    *request = (request_line){0};
}


static int only_space(const char *line) {
    for (; *line; line++)
        if (*line != ' ' && *line != '\t' && *line != '\n' && *line != '\r') return 0;
    return 1;
}

int batch_read_input(const batch_options *opts, const ferry_id_set *done, request_line **out,
                     size_t *n_out, size_t *n_skipped_done, struct ferry_tokenizer **tokenizer) {
    *out = NULL;
    *n_out = *n_skipped_done = 0;
    FILE *input = fopen(opts->input_path, "rb");
    if (!input) {
        fprintf(stderr, "ferry batch: %s: cannot open: %s\n", opts->input_path, strerror(errno));
        return -1;
    }
    ferry_id_set seen = {0};
    request_line *requests = NULL;
    size_t n = 0, capacity = 0, line_capacity = 0;
    char *line = NULL, message[768];
    long line_number = 0;
    int rc = 0;
    while (getline(&line, &line_capacity, input) >= 0) {
        line_number++;
        if (only_space(line)) continue;
        request_line request = {.max_new_tokens = opts->max_new_tokens, .sampling = opts->sampling,
                                .ignore_eos = opts->ignore_eos};
        cJSON *root = cJSON_Parse(line);
        const char *problem = NULL;
        int added = 0;
        if (!cJSON_IsObject(root)) problem = "not a JSON object";
        else if (!(request.id_json = ferry_jsonl_id(line)))
            problem = "needs an \"id\" (a string or a number)";
        else if (ferry_id_set_has(done, request.id_json)) {
            (*n_skipped_done)++;
            cJSON_Delete(root);
            request_line_free(&request);
            continue;
        } else if (ferry_id_set_add(&seen, request.id_json, &added) != FERRY_OK)
            problem = "out of memory";
        else if (!added) {
            snprintf(message, sizeof message, "duplicate id %s (an earlier line has it)",
                     request.id_json);
            problem = message;
        } else
            problem = parse_request(line, root, &request, opts, tokenizer, message, sizeof message);
        cJSON_Delete(root);
        if (problem) {
            fprintf(stderr, "ferry batch: %s:%ld: %s%s\n", opts->input_path, line_number, problem,
                    opts->strict ? "" : " (line skipped)");
            request_line_free(&request);
            if (opts->strict) {
                rc = -1;
                break;
            }
            continue;
        }
        if (n == capacity) {
            capacity = capacity ? capacity * 2 : 64;
            request_line *grown = realloc(requests, capacity * sizeof *grown);
            if (!grown) {
                fprintf(stderr, "ferry batch: out of memory reading %s\n", opts->input_path);
                request_line_free(&request);
                rc = -1;
                break;
            }
            requests = grown;
        }
        requests[n++] = request;
    }
    if (rc == 0 && ferror(input)) {
        fprintf(stderr, "ferry batch: %s: read failed: %s\n", opts->input_path, strerror(errno));
        rc = -1;
    }
    /* token-only input still gets "text" when the model has a tokenizer */
    if (rc == 0 && !*tokenizer && cli_open_tokenizer(opts->tokenizer_path, opts->model_path,
                                                     tokenizer) != FERRY_OK)
        *tokenizer = NULL;
    free(line);
    fclose(input);
    ferry_id_set_free(&seen);
    if (rc != 0) {
        for (size_t i = 0; i < n; i++) request_line_free(&requests[i]);
        free(requests);
        return rc;
    }
    *out = requests;
    *n_out = n;
    return 0;
}
