/*
 * embed.c — a program that uses ferry only through the installed
 * <ferry.h> and libferry: open a model, run a forward pass, generate
 * greedily twice and check both runs agree, and check errors are reported.
 */
#include <ferry.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                                            \
    do {                                                                                       \
        ferry_status status_ = (call);                                                         \
        if (status_ != FERRY_OK) {                                                             \
            fprintf(stderr, "%s failed: %s: %s\n", #call, ferry_status_str(status_),           \
                    ferry_last_error());                                                       \
            return 1;                                                                          \
        }                                                                                      \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    if (strcmp(ferry_version(), FERRY_VERSION_STRING) != 0) {
        fprintf(stderr, "header %s vs library %s\n", FERRY_VERSION_STRING, ferry_version());
        return 1;
    }
    ferry_model *missing = NULL;
    if (ferry_model_open("/nonexistent/model.ferry", NULL, &missing) != FERRY_ERR_IO ||
        strstr(ferry_last_error(), "/nonexistent/model.ferry") == NULL) {
        fprintf(stderr, "missing file not reported: %s\n", ferry_last_error());
        return 1;
    }

    ferry_model_options options = {.backend = "cpu"};
    ferry_model *model = NULL;
    CHECK(ferry_model_open(argv[1], &options, &model));
    ferry_model_info info;
    CHECK(ferry_model_get_info(model, &info));
    ferry_session *session = NULL;
    CHECK(ferry_session_new(model, 2, 64, &session));

    int32_t prompt[] = {1, 5, 9, 2};
    int n_tokens = 4;
    ferry_batch batch = {.n_seqs = 1, .n_tokens = &n_tokens, .tokens = prompt};
    float *logits = malloc(sizeof(float) * (size_t)info.vocab_size);
    CHECK(ferry_forward(session, &batch, FERRY_LOGITS_LAST, logits, (size_t)info.vocab_size));
    for (int i = 0; i < info.vocab_size; i++)
        if (!isfinite(logits[i])) return 1;

    ferry_generate_params params = {.sampling = ferry_sampling_default(), .max_new_tokens = 8,
                                    .ignore_eos = 1};
    params.sampling.greedy = 1;
    int32_t first[8], second[8];
    int n_first = 0, n_second = 0;
    CHECK(ferry_generate(session, prompt, 4, &params, first, 8, &n_first));
    CHECK(ferry_generate(session, prompt, 4, &params, second, 8, &n_second));
    if (n_first != 8 || n_second != 8 || memcmp(first, second, sizeof first) != 0) {
        fprintf(stderr, "greedy generation is not repeatable\n");
        return 1;
    }
    /* the first greedy token again, picked where the logits are */
    int slot = 1;
    ferry_batch again = {.n_seqs = 1, .seq_ids = &slot, .n_tokens = &n_tokens, .tokens = prompt};
    ferry_sampling greedy = ferry_sampling_default();
    greedy.greedy = 1;
    uint64_t rng_state = greedy.seed;
    ferry_sample_rule rule = ferry_sample_rule_draw(&greedy, &rng_state);
    int32_t next = -1;
    CHECK(ferry_forward_next(session, &again, &rule, &next));
    if (next != first[0]) {
        fprintf(stderr, "ferry_forward_next picked %d, ferry_generate %d\n", next, first[0]);
        return 1;
    }
    ferry_session_free(session);
    ferry_model_close(model);
    free(logits);
    printf("embed: %s, %d layers, generated %d tokens\n", info.architecture, info.n_layers, n_first);
    return 0;
}
