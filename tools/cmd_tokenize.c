/*
 * cmd_tokenize.c — `ferry tokenize`: text to token ids and back with a
 * tokenizer.json (or the one stored in a .ferry file).  --jsonl reads
 * {"text": ...} lines on stdin and writes {"ids": [...], "decoded": "..."}
 * lines in the same order; a bad line gets {"error": "..."} in its place.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/format.h"
#include "runtime/tokenizer.h"
#include "tools/cli.h"

static void print_help(void) {
    printf("usage: ferry tokenize (--tokenizer FILE | --model M.ferry) (--jsonl | --text TEXT)\n"
           "                      [--no-special] [--skip-special]\n\n"
           "  --tokenizer FILE   an HF tokenizer.json\n"
           "  --model M          the tokenizer.json stored in a .ferry file\n"
           "  --jsonl            read {\"text\": ...} lines on stdin, write\n"
           "                     {\"ids\": [...], \"decoded\": \"...\"} lines on stdout\n"
           "  --text TEXT        tokenize one text\n"
           "  --no-special       do not add the template's special tokens (BOS)\n"
           "  --skip-special     leave special tokens out of the decoded text\n");
}

ferry_status cli_open_tokenizer(const char *tokenizer_path, const char *model_path,
                                struct ferry_tokenizer **out) {
    if (tokenizer_path) return ferry_tokenizer_load(tokenizer_path, out);
    ferry_file *file = NULL;
    FERRY_TRY(ferry_file_open(model_path, &file));
    const char *json = ferry_file_text(file, "tokenizer.json");
    ferry_status status;
    if (!json) {
        status = ferry_fail(FERRY_ERR_UNSUPPORTED, "%s holds no tokenizer.json (convert from a "
                            "checkpoint that has one)", model_path);
    } else {
        char source[512];
        snprintf(source, sizeof source, "%s: tokenizer.json", model_path);
        status = ferry_tokenizer_from_json(json, strlen(json), source, out);
    }
    ferry_file_close(file);
    return status;
}

/* Tokenize one text and write its output line; returns the status. */
static ferry_status write_result(const ferry_tokenizer *tokenizer, const char *text,
                                 size_t bytes, int add_special, int skip_special) {
    ferry_token_list ids = {0};
    char *decoded = NULL;
    size_t decoded_bytes = 0;
    ferry_status status = ferry_tokenizer_encode(tokenizer, text, bytes, add_special, &ids);
    if (status == FERRY_OK)
        status = ferry_tokenizer_decode(tokenizer, ids.ids, ids.count, skip_special, &decoded,
                                        &decoded_bytes);
    if (status == FERRY_OK) {
        fputs("{\"ids\": [", stdout);
        for (size_t i = 0; i < ids.count; i++) printf(i ? ", %d" : "%d", (int)ids.ids[i]);
        fputs("], \"decoded\": ", stdout);
        ferry_json_write_string(stdout, decoded, decoded_bytes);
        fputs("}\n", stdout);
    }
    free(decoded);
    ferry_token_list_free(&ids);
    return status;
}

static int run_jsonl(const ferry_tokenizer *tokenizer, int add_special, int skip_special) {
    char *line = NULL;
    size_t capacity = 0;
    ssize_t length;
    long line_number = 0, n_failed = 0;
    while ((length = getline(&line, &capacity, stdin)) >= 0) {
        line_number++;
        char *text = NULL;
        size_t bytes = 0;
        ferry_status status = ferry_json_get_string(line, "text", &text, &bytes);
        if (status == FERRY_OK) status = write_result(tokenizer, text, bytes, add_special, skip_special);
        free(text);
        if (status != FERRY_OK) {
            const char *message = ferry_last_error();
            fprintf(stderr, "ferry tokenize: stdin line %ld: %s\n", line_number, message);
            fputs("{\"error\": ", stdout);
            ferry_json_write_string(stdout, message, strlen(message));
            fputs("}\n", stdout);
            n_failed++;
        }
    }
    free(line);
    if (fflush(stdout) != 0) return cli_fail("tokenize", FERRY_OK, "writing stdout failed");
    return n_failed ? CLI_FAILED : CLI_OK;
}

int cmd_tokenize(int argc, char **argv) {
    static const struct option options[] = {
        {"tokenizer", required_argument, 0, 't'}, {"model", required_argument, 0, 'm'},
        {"jsonl", no_argument, 0, 'j'},           {"text", required_argument, 0, 'x'},
        {"no-special", no_argument, 0, 'n'},      {"skip-special", no_argument, 0, 's'},
        {"help", no_argument, 0, 'h'},            {0, 0, 0, 0}};
    const char *tokenizer_path = NULL, *model_path = NULL, *text = NULL;
    int jsonl = 0, add_special = 1, skip_special = 0, option;
    optind = 1;
    while ((option = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (option) {
        case 't': tokenizer_path = optarg; break;
        case 'm': model_path = optarg; break;
        case 'j': jsonl = 1; break;
        case 'x': text = optarg; break;
        case 'n': add_special = 0; break;
        case 's': skip_special = 1; break;
        case 'h': print_help(); return CLI_OK;
        default: return cli_usage_error("tokenize", "unknown option");
        }
    }
    if (!tokenizer_path == !model_path)
        return cli_usage_error("tokenize", "give one of --tokenizer FILE or --model M");
    if (!jsonl == !text) return cli_usage_error("tokenize", "give one of --jsonl or --text TEXT");
    ferry_tokenizer *tokenizer = NULL;
    ferry_status status = cli_open_tokenizer(tokenizer_path, model_path, &tokenizer);
    if (status != FERRY_OK) return cli_fail("tokenize", status, "cannot load the tokenizer");
    int rc;
    if (jsonl) {
        rc = run_jsonl(tokenizer, add_special, skip_special);
    } else {
        status = write_result(tokenizer, text, strlen(text), add_special, skip_special);
        rc = status == FERRY_OK ? CLI_OK : cli_fail("tokenize", status, "cannot tokenize");
    }
    ferry_tokenizer_free(tokenizer);
    return rc;
}
