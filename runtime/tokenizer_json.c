/*
 * tokenizer_json.c — JSON strings with every byte kept: pulling one string
 * member out of a JSON-lines object and writing a string literal.  cJSON
 * stores strings NUL-terminated, so a "\u0000" in a text would cut it;
 * tokenizer inputs and outputs (`ferry tokenize`, fixtures) go through here.
 */
#include <stdlib.h>

#include "runtime/tokenizer_internal.h"

static const char *skip_space(const char *p) {
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    return p;
}

static int hex4(const char *p, uint32_t *out) {
    uint32_t value = 0;
    for (int i = 0; i < 4; i++) {
        int digit = tk_hex_digit(p[i]);
        if (digit < 0) return 0;
        value = value * 16 + (uint32_t)digit;
    }
    *out = value;
    return 1;
}

/* Decode the string literal at p (at its opening quote) into out (when
 * not NULL); returns the position after the closing quote, or NULL. */
static const char *parse_string(const char *p, tk_text *out) {
    if (*p++ != '"') return NULL;
    while (*p != '"') {
        if (*p == '\0' || (uint8_t)*p < 0x20) return NULL;
        if (*p != '\\') {
            const char *run = p;
            while (*p && *p != '"' && *p != '\\' && (uint8_t)*p >= 0x20) p++;
            if (out && tk_text_append(out, run, (size_t)(p - run)) != FERRY_OK) return NULL;
            continue;
        }
        p++;
        static const char escapes[] = "\"\"\\\\//b\bf\fn\nr\rt\t";
        const char *e = NULL;
        for (int i = 0; escapes[i]; i += 2)
            if (escapes[i] == *p) e = &escapes[i + 1];
        if (e) {
            if (out && tk_text_append(out, e, 1) != FERRY_OK) return NULL;
            p++;
            continue;
        }
        uint32_t codepoint, low;
        if (*p != 'u' || !hex4(p + 1, &codepoint)) return NULL;
        p += 5;
        if (codepoint >= 0xD800 && codepoint <= 0xDBFF) {
            if (p[0] != '\\' || p[1] != 'u' || !hex4(p + 2, &low) || low < 0xDC00 || low > 0xDFFF)
                return NULL;
            codepoint = 0x10000 + ((codepoint - 0xD800) << 10) + (low - 0xDC00);
            p += 6;
        } else if (codepoint >= 0xDC00 && codepoint <= 0xDFFF) {
            return NULL;
        }
        if (out && tk_text_append_codepoint(out, codepoint) != FERRY_OK) return NULL;
    }
    return p + 1;
}

/* Step over any JSON value (checked only as far as nesting and strings). */
static const char *skip_value(const char *p) {
    p = skip_space(p);
    if (*p == '"') return parse_string(p, NULL);
    int depth = 0;
    do {
        if (*p == '\0') return NULL;
        if (*p == '"') {
            p = parse_string(p, NULL);
            if (!p) return NULL;
            continue;
        }
        if (*p == '[' || *p == '{') depth++;
        if (*p == ']' || *p == '}') depth--;
        if (depth < 0) return NULL;
        p++;
    } while (depth > 0 || (*p && *p != ',' && *p != '}' && *p != ']' && *p != ' '));
    return p;
}

ferry_status ferry_json_get_string(const char *json_text, const char *key, char **out,
                                   size_t *out_bytes) {
    *out = NULL;
    tk_text name = {0}, value = {0};
    const char *p = skip_space(json_text);
    if (*p++ != '{') goto bad;
    for (p = skip_space(p); *p != '}';) {
        name.bytes = 0;
        p = parse_string(p, &name);
        if (!p || *(p = skip_space(p)) != ':') goto bad;
        p = skip_space(p + 1);
        if (name.data && strlen(name.data) == name.bytes && strcmp(name.data, key) == 0) {
            if (*p != '"' || !(p = parse_string(p, &value))) goto bad;
            tk_text_free(&name);
            if (tk_text_append(&value, "", 0) != FERRY_OK) return FERRY_ERR_NO_MEMORY;
            *out = value.data;
            *out_bytes = value.bytes;
            return FERRY_OK;
        }
        if (!(p = skip_value(p))) goto bad;
        p = skip_space(p);
        if (*p == ',') p = skip_space(p + 1);
        else if (*p != '}') goto bad;
    }
bad:
    tk_text_free(&name);
    tk_text_free(&value);
    return ferry_fail(FERRY_ERR_FORMAT, "not a JSON object with a string \"%s\"", key);
}

void ferry_json_write_string(FILE *out, const char *s, size_t bytes) {
    fputc('"', out);
    for (size_t i = 0; i < bytes; i++) {
        uint8_t c = (uint8_t)s[i];
        if (c == '"' || c == '\\') {
            fputc('\\', out);
            fputc(c, out);
        } else if (c == '\n') {
            fputs("\\n", out);
        } else if (c < 0x20 || c == 0x7F) {
            fprintf(out, "\\u%04x", c);
        } else {
            fputc(c, out);
        }
    }
    fputc('"', out);
}
