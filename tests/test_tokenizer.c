/*
 * test_tokenizer.c — the tokenizer against HF `tokenizers`: for every
 * string of tests/fixtures/tokenizers/strings.jsonl and each fixture
 * tokenizer (byte-level Llama-3 style, GPT-2 style with lstrip / rstrip /
 * single_word tokens, sentencepiece-style Llama-2, Metaspace Mistral, Qwen2
 * with NFC, Falcon's Punctuation/Digits, Whitespace with a BERT template), the
 * ids with and without special tokens and both decodes equal what HF gave
 * (make_tokenizers.py).  Also: random text round-trips, bad tokenizer.json
 * files give clear errors, and `ferry tokenize --jsonl` keeps order and
 * reads the tokenizer stored in a .ferry file.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "helpers.h"
#include "runtime/format.h"
#include "runtime/tokenizer.h"
#include "runtime/tokenizer_nfc.h"

#define FIXTURES FERRY_SOURCE_DIR "/tests/fixtures/tokenizers/"

static ferry_tokenizer *load_fixture(const char *name) {
    char path[512];
    snprintf(path, sizeof path, FIXTURES "%s.json", name);
    ferry_tokenizer *tokenizer = NULL;
    cr_assert_eq(ferry_tokenizer_load(path, &tokenizer), FERRY_OK, "%s", ferry_last_error());
    return tokenizer;
}

/* Lines of a file, split in place (the buffer is lines[0]'s owner). */
static char **read_lines(const char *path, size_t *count) {
    char *data = test_read_file(path, NULL);
    cr_assert_not_null(data, "cannot read %s", path);
    size_t n = 0, capacity = 1024;
    char **lines = malloc(capacity * sizeof *lines);
    for (char *p = data; *p;) {
        if (n == capacity) lines = realloc(lines, (capacity *= 2) * sizeof *lines);
        lines[n++] = p;
        char *newline = strchr(p, '\n');
        if (!newline) break;
        *newline = '\0';
        p = newline + 1;
    }
    *count = n;
    return lines;
}

static void free_lines(char **lines) {
    free(lines[0]);
    free(lines);
}

static int ids_equal(const ferry_token_list *got, const cJSON *expected) {
    if ((size_t)cJSON_GetArraySize(expected) != got->count) return 0;
    size_t i = 0;
    for (const cJSON *item = expected->child; item; item = item->next, i++)
        if (item->valueint != got->ids[i]) return 0;
    return 1;
}

static int decode_matches(const ferry_tokenizer *tokenizer, const ferry_token_list *ids,
                          int skip_special, const char *expected_line, const char *key) {
    char *decoded = NULL, *expected = NULL;
    size_t decoded_bytes = 0, expected_bytes = 0;
    cr_assert_eq(ferry_tokenizer_decode(tokenizer, ids->ids, ids->count, skip_special, &decoded,
                                        &decoded_bytes), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(ferry_json_get_string(expected_line, key, &expected, &expected_bytes), FERRY_OK);
    int same = decoded_bytes == expected_bytes && memcmp(decoded, expected, decoded_bytes) == 0;
    free(decoded);
    free(expected);
    return same;
}

/* Every string: ids (with / without specials) and decodes (keeping /
 * skipping specials) as HF made them. */
static void check_fixture(const char *name) {
    ferry_tokenizer *tokenizer = load_fixture(name);
    char path[512];
    size_t n_strings = 0, n_expected = 0, n_wrong = 0;
    char **strings = read_lines(FIXTURES "strings.jsonl", &n_strings);
    snprintf(path, sizeof path, FIXTURES "%s.expected.jsonl", name);
    char **expected = read_lines(path, &n_expected);
    cr_assert_eq(n_strings, n_expected, "%s: %zu strings but %zu expected rows", name, n_strings,
                 n_expected);
    cr_assert_geq(n_strings, 2000);
    for (size_t i = 0; i < n_strings; i++) {
        char *text = NULL;
        size_t text_bytes = 0;
        cr_assert_eq(ferry_json_get_string(strings[i], "text", &text, &text_bytes), FERRY_OK);
        cJSON *row = cJSON_Parse(expected[i]);
        cr_assert_not_null(row);
        const char *what[4] = {"ids", "ids_plain", "decoded", "decoded_skip"};
        int ok[4];
        ferry_token_list ids = {0}, plain = {0};
        ferry_status status = ferry_tokenizer_encode(tokenizer, text, text_bytes, 1, &ids);
        cr_assert_eq(status, FERRY_OK, "%s: line %zu: %s", name, i + 1, ferry_last_error());
        cr_assert_eq(ferry_tokenizer_encode(tokenizer, text, text_bytes, 0, &plain), FERRY_OK);
        ok[0] = ids_equal(&ids, cJSON_GetObjectItem(row, "ids"));
        ok[1] = ids_equal(&plain, cJSON_GetObjectItem(row, "ids_plain"));
        /* decode HF's ids, so a decode check does not hang on the encode */
        ferry_token_list hf_ids = {0};
        for (const cJSON *item = cJSON_GetObjectItem(row, "ids")->child; item; item = item->next)
            ferry_token_list_push(&hf_ids, item->valueint);
        ok[2] = decode_matches(tokenizer, &hf_ids, 0, expected[i], "decoded");
        ok[3] = decode_matches(tokenizer, &hf_ids, 1, expected[i], "decoded_skip");
        for (int k = 0; k < 4; k++)
            if (!ok[k] && n_wrong++ < 5)
                cr_log_error("%s: strings.jsonl line %zu: %s differs from HF: %s", name, i + 1,
                             what[k], strings[i]);
        ferry_token_list_free(&ids);
        ferry_token_list_free(&plain);
        ferry_token_list_free(&hf_ids);
        cJSON_Delete(row);
        free(text);
    }
    cr_expect_eq(n_wrong, 0, "%s: %zu results differ from HF tokenizers", name, n_wrong);
    free_lines(strings);
    free_lines(expected);
    ferry_tokenizer_free(tokenizer);
}

Test(tokenizer, byte_level_llama3_style_matches_hf_on_every_string) { check_fixture("bytelevel"); }
Test(tokenizer, gpt2_style_with_stripped_and_single_word_tokens_matches_hf) { check_fixture("gpt2"); }
Test(tokenizer, sentencepiece_style_with_byte_fallback_matches_hf) { check_fixture("spm"); }
Test(tokenizer, metaspace_style_matches_hf) { check_fixture("metaspace"); }
Test(tokenizer, qwen2_style_with_nfc_matches_hf_on_every_string) { check_fixture("qwen2"); }
Test(tokenizer, tiny_512_token_vocabulary_matches_hf) { check_fixture("tiny"); }
Test(tokenizer, falcon_style_punctuation_and_digits_match_hf) { check_fixture("falcon"); }
Test(tokenizer, whitespace_split_without_decoder_or_unk_matches_hf) { check_fixture("words"); }

/* A random string of code points from everywhere in Unicode except
 * surrogates, controls included. */
static size_t random_text(uint64_t *rng, char *out, size_t capacity) {
    size_t bytes = 0, n_chars = test_rand_u64(rng) % 40;
    for (size_t i = 0; i < n_chars && bytes + 4 < capacity; i++) {
        uint64_t r = test_rand_u64(rng);
        uint32_t cp = r % 4 == 0 ? (uint32_t)(r >> 8) % 0x80
                      : r % 4 == 1 ? (uint32_t)(r >> 8) % 0x800
                                   : (uint32_t)(r >> 8) % 0x110000;
        if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
        if (cp < 0x80) out[bytes++] = (char)cp;
        else if (cp < 0x800) {
            out[bytes++] = (char)(0xC0 | (cp >> 6));
            out[bytes++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out[bytes++] = (char)(0xE0 | (cp >> 12));
            out[bytes++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[bytes++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[bytes++] = (char)(0xF0 | (cp >> 18));
            out[bytes++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            out[bytes++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[bytes++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return bytes;
}

Test(tokenizer, byte_level_decode_of_encode_gives_back_random_text) {
    uint64_t rng = test_seed();
    ferry_tokenizer *tokenizer = load_fixture("bytelevel");
    char text[256];
    for (int round = 0; round < 2000; round++) {
        size_t bytes = random_text(&rng, text, sizeof text);
        ferry_token_list ids = {0};
        cr_assert_eq(ferry_tokenizer_encode(tokenizer, text, bytes, 0, &ids), FERRY_OK, "%s",
                     ferry_last_error());
        char *decoded = NULL;
        size_t decoded_bytes = 0;
        cr_assert_eq(ferry_tokenizer_decode(tokenizer, ids.ids, ids.count, 0, &decoded,
                                            &decoded_bytes), FERRY_OK);
        cr_assert(decoded_bytes == bytes && memcmp(decoded, text, bytes) == 0,
                  "round %d: text of %zu bytes came back as %zu bytes", round, bytes, decoded_bytes);
        free(decoded);
        ferry_token_list_free(&ids);
    }
    ferry_tokenizer_free(tokenizer);
}

/* One shared tokenizer encoding every fixture string on several threads
 * at once gives the single-threaded ids (a loaded tokenizer is read-only). */
typedef struct encode_job {
    const ferry_tokenizer *tokenizer;
    char **strings;
    size_t n_strings;
    uint64_t *hashes;           /* XOR-fold of the ids per string */
    int failed;
} encode_job;

static uint64_t fold_ids(const ferry_token_list *ids) {
    uint64_t hash = ids->count;
    for (size_t i = 0; i < ids->count; i++) hash = hash * 1000003u ^ (uint64_t)ids->ids[i];
    return hash;
}

static void *encode_all(void *argument) {
    encode_job *job = argument;
    for (size_t i = 0; i < job->n_strings; i++) {
        char *text = NULL;
        size_t bytes = 0;
        ferry_token_list ids = {0};
        if (ferry_json_get_string(job->strings[i], "text", &text, &bytes) != FERRY_OK ||
            ferry_tokenizer_encode(job->tokenizer, text, bytes, 1, &ids) != FERRY_OK)
            job->failed = 1;
        job->hashes[i] = fold_ids(&ids);
        ferry_token_list_free(&ids);
        free(text);
    }
    return NULL;
}

Test(tokenizer, encoding_on_many_threads_at_once_gives_the_same_ids) {
    ferry_tokenizer *tokenizer = load_fixture("qwen2");
    size_t n = 0;
    char **strings = read_lines(FIXTURES "strings.jsonl", &n);
    encode_job jobs[5];
    pthread_t threads[4];
    for (int j = 0; j < 5; j++) {
        jobs[j] = (encode_job){tokenizer, strings, n, calloc(n, sizeof(uint64_t)), 0};
    }
    encode_all(&jobs[4]);   /* the reference, alone */
    for (int j = 0; j < 4; j++) cr_assert_eq(pthread_create(&threads[j], NULL, encode_all, &jobs[j]), 0);
    for (int j = 0; j < 4; j++) pthread_join(threads[j], NULL);
    for (int j = 0; j < 4; j++) {
        cr_assert_eq(jobs[j].failed, 0);
        cr_assert_eq(memcmp(jobs[j].hashes, jobs[4].hashes, n * sizeof(uint64_t)), 0,
                     "thread %d got different ids", j);
    }
    for (int j = 0; j < 5; j++) free(jobs[j].hashes);
    free_lines(strings);
    ferry_tokenizer_free(tokenizer);
}

Test(tokenizer, special_tokens_in_text_become_their_ids_and_bos_is_added_once) {
    ferry_tokenizer *tokenizer = load_fixture("spm");
    const char text[] = "hi</s><s>";
    ferry_token_list ids = {0};
    cr_assert_eq(ferry_tokenizer_encode(tokenizer, text, sizeof text - 1, 1, &ids), FERRY_OK);
    cr_assert_geq(ids.count, 4);
    cr_assert_eq(ids.ids[0], ferry_tokenizer_token_id(tokenizer, "<s>"));
    cr_assert_eq(ids.ids[ids.count - 2], ferry_tokenizer_token_id(tokenizer, "</s>"));
    cr_assert_eq(ids.ids[ids.count - 1], ferry_tokenizer_token_id(tokenizer, "<s>"));
    cr_assert(ferry_tokenizer_is_special(tokenizer, ids.ids[0]));
    ferry_token_list_free(&ids);
    ferry_tokenizer_free(tokenizer);
}

Test(tokenizer, invalid_utf8_text_is_refused_with_its_offset) {
    ferry_tokenizer *tokenizer = load_fixture("bytelevel");
    const char text[] = "ok \xC3\x28";
    ferry_token_list ids = {0};
    cr_assert_eq(ferry_tokenizer_encode(tokenizer, text, sizeof text - 1, 1, &ids),
                 FERRY_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(ferry_last_error(), "byte 3"), "%s", ferry_last_error());
    ferry_token_list_free(&ids);
    ferry_tokenizer_free(tokenizer);
}

/* Parse json; expect status and a message containing needle. */
static void expect_refused(const char *json, ferry_status status, const char *needle) {
    ferry_tokenizer *tokenizer = NULL;
    ferry_status got = ferry_tokenizer_from_json(json, strlen(json), "bad.json", &tokenizer);
    cr_assert_eq(got, status, "%s: got %s (%s)", json, ferry_status_str(got), ferry_last_error());
    cr_assert_null(tokenizer);
    cr_assert(strstr(ferry_last_error(), needle), "message '%s' lacks '%s'", ferry_last_error(),
              needle);
    cr_assert(strstr(ferry_last_error(), "bad.json"), "%s", ferry_last_error());
}

#define MODEL(extra) "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}" extra "}"

Test(tokenizer, bad_tokenizer_json_files_are_refused_with_clear_errors) {
    expect_refused("{\"model\": ", FERRY_ERR_FORMAT, "JSON");
    expect_refused("{\"added_tokens\": []}", FERRY_ERR_FORMAT, "\"model\"");
    expect_refused("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", FERRY_ERR_UNSUPPORTED,
                   "WordPiece");
    expect_refused(MODEL(", \"merges\": [\"a c\"]}"), FERRY_ERR_FORMAT, "merge 0");
    expect_refused(MODEL(", \"merges\": [\"a b\", \"ab\"]}"), FERRY_ERR_FORMAT, "merge 1");
    expect_refused(MODEL(", \"merges\": [[\"b\", \"a\"]]}"), FERRY_ERR_FORMAT, "merged token");
    expect_refused(MODEL("}"), FERRY_ERR_FORMAT, "merges");
    expect_refused("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}}",
                   FERRY_ERR_FORMAT, "vocab entry");
    expect_refused(MODEL(", \"merges\": []}, \"normalizer\": {\"type\": \"Lowercase\"}"),
                   FERRY_ERR_UNSUPPORTED, "Lowercase");
    expect_refused(MODEL(", \"merges\": []}, \"pre_tokenizer\": {\"type\": \"BertPreTokenizer\"}"),
                   FERRY_ERR_UNSUPPORTED, "BertPreTokenizer");
    expect_refused(MODEL(", \"merges\": []}, \"decoder\": {\"type\": \"WordPiece\"}"),
                   FERRY_ERR_UNSUPPORTED, "decoder \"WordPiece\"");
    expect_refused(MODEL(", \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": "
                         "{\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}"),
                   FERRY_ERR_FORMAT, "does not compile");
    expect_refused(MODEL(", \"merges\": []}, \"post_processor\": {\"type\": \"Mystery\"}"),
                   FERRY_ERR_UNSUPPORTED, "Mystery");
    expect_refused(MODEL(", \"merges\": []}, \"added_tokens\": [{\"content\": \"x\"}]"),
                   FERRY_ERR_FORMAT, "added token 0");
}

/* Examples worked by hand from UAX #15: composition, mark reordering,
 * Hangul, singletons, non-starter decompositions, exclusions. */
Test(tokenizer, nfc_composes_reorders_and_respects_exclusions) {
    static const char *const cases[][2] = {
        {"e\xCC\x81", "\xC3\xA9"},                          /* e + acute -> é */
        {"a\xCC\x87\xCC\xA3", "\xE1\xBA\xA1\xCC\x87"},    /* dot below sorts first, composes */
        {"\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", "\xEA\xB0\x81"},   /* L V T -> 각 */
        {"\xE2\x84\xAB", "\xC3\x85"},                      /* Angstrom sign -> Å */
        {"\xCD\x84", "\xCC\x88\xCC\x81"},                  /* U+0344 stays decomposed */
        {"\xE0\xA5\x98", "\xE0\xA4\x95\xE0\xA4\xBC"},      /* U+0958 is excluded */
        {"caf\xC3\xA9 \xE6\x97\xA5", "caf\xC3\xA9 \xE6\x97\xA5"},    /* already NFC */
        {"", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tk_text out = {0};
        cr_assert_eq(tk_nfc(cases[i][0], strlen(cases[i][0]), &out), FERRY_OK);
        cr_assert(out.bytes == strlen(cases[i][1]) && memcmp(out.data, cases[i][1], out.bytes) == 0,
                  "case %zu: got %.*s", i, (int)out.bytes, out.data);
        tk_text_free(&out);
    }
}

Test(tokenizer, cli_jsonl_writes_one_line_per_input_in_order_and_flags_bad_lines) {
    char *dir = test_tempdir();
    char *input = test_path(dir, "in.jsonl"), *output = test_path(dir, "out.jsonl");
    char *errors = test_path(dir, "err.txt");
    const char lines[] = "{\"text\": \"hello world\"}\n{\"nope\": 1}\n{\"text\": \"a\\u0000b\"}\n";
    cr_assert_eq(test_write_file(input, lines, sizeof lines - 1), 0);
    char command[2048];
    snprintf(command, sizeof command, "%s tokenize --tokenizer %sbytelevel.json --jsonl < %s",
             test_cli(), FIXTURES, input);
    cr_assert_eq(test_run(command, output, errors), 1);
    size_t n = 0;
    char **out = read_lines(output, &n);
    cr_assert_eq(n, 3);
    cr_assert(strstr(out[0], "\"decoded\": \"<|begin_of_text|>hello world\""), "%s", out[0]);
    cr_assert(strstr(out[1], "\"error\""), "%s", out[1]);
    cr_assert(strstr(out[2], "\"decoded\": \"<|begin_of_text|>a\\u0000b\""), "%s", out[2]);
    char *stderr_text = test_read_file(errors, NULL);
    cr_assert(strstr(stderr_text, "line 2"), "%s", stderr_text);
    free(stderr_text);
    free_lines(out);
    test_rmtree(dir);
    free(input);
    free(output);
    free(errors);
    free(dir);
}

/* A tiny random-weight .ferry file holding tokenizer_json (NULL: none). */
static void write_model(const char *path, const char *tokenizer_json) {
    const ferry_preset *tiny = ferry_preset_find("tiny");
    cr_assert_not_null(tiny);
    ferry_writer *writer = NULL;
    cr_assert_eq(ferry_writer_open(path, &tiny->config, FERRY_DTYPE_F32, &writer), FERRY_OK, "%s",
                 ferry_last_error());
    const ferry_layout *layout = ferry_writer_layout(writer);
    for (int i = 0; i < layout->n_tensors; i++) {
        const ferry_tensor_entry *entry = &layout->tensors[i];
        void *zeros = calloc(1, entry->bytes);
        cr_assert_eq(ferry_writer_put(writer, entry->layer, entry->kind, zeros, entry->bytes),
                     FERRY_OK, "%s", ferry_last_error());
        free(zeros);
    }
    if (tokenizer_json)
        cr_assert_eq(ferry_writer_put_text(writer, "tokenizer.json", tokenizer_json), FERRY_OK);
    cr_assert_eq(ferry_writer_finish(writer), FERRY_OK, "%s", ferry_last_error());
    ferry_writer_free(writer);
}

Test(tokenizer, cli_reads_the_tokenizer_stored_in_a_model_file) {
    char *dir = test_tempdir();
    char *model = test_path(dir, "m.ferry"), *bare = test_path(dir, "bare.ferry");
    char *input = test_path(dir, "in.jsonl"), *from_model = test_path(dir, "a.jsonl");
    char *from_file = test_path(dir, "b.jsonl"), *errors = test_path(dir, "err.txt");
    char *json = test_read_file(FIXTURES "spm.json", NULL);
    write_model(model, json);
    write_model(bare, NULL);
    const char lines[] = "{\"text\": \"Hello world, caf\\u00e9 \\u65e5\\u672c</s>\"}\n{\"text\": \"\"}\n";
    cr_assert_eq(test_write_file(input, lines, sizeof lines - 1), 0);
    char command[2048];
    snprintf(command, sizeof command, "%s tokenize --model %s --jsonl < %s", test_cli(), model, input);
    cr_assert_eq(test_run(command, from_model, errors), 0);
    snprintf(command, sizeof command, "%s tokenize --tokenizer %sspm.json --jsonl < %s", test_cli(),
             FIXTURES, input);
    cr_assert_eq(test_run(command, from_file, errors), 0);
    char *a = test_read_file(from_model, NULL), *b = test_read_file(from_file, NULL);
    cr_assert_str_eq(a, b);
    cr_assert(strstr(a, "\"ids\": [1, "), "%s", a);
    snprintf(command, sizeof command, "%s tokenize --model %s --jsonl < %s", test_cli(), bare, input);
    cr_assert_eq(test_run(command, from_model, errors), 1);
    char *message = test_read_file(errors, NULL);
    cr_assert(strstr(message, "no tokenizer.json"), "%s", message);
    free(message);
    free(a);
    free(b);
    free(json);
    test_rmtree(dir);
    char *paths[] = {model, bare, input, from_model, from_file, errors, dir};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) free(paths[i]);
}

/* "1,2,3\n" -> ids (malloc'd). */
static int cli_like_parse(const char *text, int32_t **out, int *count) {
    *out = malloc(sizeof(int32_t) * (strlen(text) + 1));
    *count = 0;
    for (const char *p = text; *p && *p != '\n';) {
        char *end = NULL;
        long value = strtol(p, &end, 10);
        if (end == p) return -1;
        (*out)[(*count)++] = (int32_t)value;
        p = *end == ',' ? end + 1 : end;
    }
    return 0;
}

/* Run a command line, returning its stdout (malloc'd); asserts exit 0. */
static char *run_ok(const char *dir, const char *command) {
    char *out = test_path(dir, "stdout.txt"), *err = test_path(dir, "stderr.txt");
    int rc = test_run(command, out, err);
    char *text = test_read_file(out, NULL), *errors = test_read_file(err, NULL);
    cr_assert_eq(rc, 0, "%s\n%s", command, errors ? errors : "");
    free(errors);
    free(out);
    free(err);
    return text;
}

/* generate --prompt on model (with --tokenizer when tokenizer_option is
 * not empty) prints the decode of what generate --tokens gives for the
 * prompt's ids. */
static void check_generate_prompt(const char *dir, const char *model, const char *fixture,
                                  const char *tokenizer_option) {
    char command[4096];
    const char *prompt = "Hello world, the model";
    ferry_tokenizer *tokenizer = load_fixture(fixture);
    ferry_token_list ids = {0};
    cr_assert_eq(ferry_tokenizer_encode(tokenizer, prompt, strlen(prompt), 1, &ids), FERRY_OK);
    char tokens_option[2048];
    int n = 0;
    for (size_t i = 0; i < ids.count; i++)
        n += snprintf(tokens_option + n, sizeof tokens_option - (size_t)n, "%s%d", i ? "," : "",
                      ids.ids[i]);
    snprintf(command, sizeof command, "%s generate --model %s --tokens %s --max-new-tokens 12 "
             "--greedy --ignore-eos --backend cpu", test_cli(), model, tokens_option);
    char *id_text = run_ok(dir, command);
    int32_t *generated = NULL;
    int n_generated = 0;
    cr_assert_eq(cli_like_parse(id_text, &generated, &n_generated), 0, "%s", id_text);
    char *expected = NULL;
    size_t expected_bytes = 0;
    cr_assert_eq(ferry_tokenizer_decode(tokenizer, generated, (size_t)n_generated, 1, &expected,
                                        &expected_bytes), FERRY_OK);
    snprintf(command, sizeof command, "%s generate --model %s %s --prompt '%s' "
             "--max-new-tokens 12 --greedy --ignore-eos --backend cpu", test_cli(), model,
             tokenizer_option, prompt);
    char *text = run_ok(dir, command);
    cr_assert(strlen(text) == expected_bytes + 1 && memcmp(text, expected, expected_bytes) == 0 &&
              text[expected_bytes] == '\n', "printed '%s', expected '%s'", text, expected);
    free(text);
    free(expected);
    free(generated);
    free(id_text);
    ferry_token_list_free(&ids);
    ferry_tokenizer_free(tokenizer);
}

Test(tokenizer, generate_with_a_text_prompt_prints_the_decoded_continuation) {
    char *dir = test_tempdir();
    char *model = test_path(dir, "tiny.ferry");
    char command[4096];
    snprintf(command, sizeof command, "%s synth --preset tiny %s --seed 5", test_cli(), model);
    free(run_ok(dir, command));
    check_generate_prompt(dir, model, "tiny", "--tokenizer " FIXTURES "tiny.json");
    test_rmtree(dir);
    free(model);
    free(dir);
}

/* The path: a checkpoint with tokenizer.json, ferry convert, then
 * the .ferry file alone tokenizes and generates from text. */
Test(tokenizer, a_converted_checkpoint_carries_its_tokenizer_to_generate) {
    char *dir = test_tempdir();
    char *hf = test_path(dir, "hf"), *model = test_path(dir, "qwen2.ferry");
    char command[4096];
    snprintf(command, sizeof command, "mkdir -p %s && cp %s/tests/fixtures/hf/qwen2_bias_tied/hf/* "
             "%s/ && cp %sqwen2_384.json %s/tokenizer.json", hf, FERRY_SOURCE_DIR, hf, FIXTURES, hf);
    free(run_ok(dir, command));
    snprintf(command, sizeof command, "%s convert %s %s", test_cli(), hf, model);
    free(run_ok(dir, command));
    snprintf(command, sizeof command, "%s tokenize --model %s --text 'caf\xc3\xa9 <|im_start|>42'",
             test_cli(), model);
    char *from_model = run_ok(dir, command);
    snprintf(command, sizeof command, "%s tokenize --tokenizer %sqwen2_384.json --text "
             "'caf\xc3\xa9 <|im_start|>42'", test_cli(), FIXTURES);
    char *from_file = run_ok(dir, command);
    cr_assert_str_eq(from_model, from_file);
    check_generate_prompt(dir, model, "qwen2_384", "");
    free(from_model);
    free(from_file);
    test_rmtree(dir);
    free(hf);
    free(model);
    free(dir);
}
