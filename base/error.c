/*
 * error.c — per-thread error messages behind ferry_last_error(), and the
 * status names.  A failing call writes its message here and returns a
 * status; nothing in ferry prints errors itself or exits.
 */
#include <stdarg.h>
#include <stdio.h>

#include "base.h"

enum { ERROR_MESSAGE_BYTES = 1024 };

static _Thread_local char error_message[ERROR_MESSAGE_BYTES];

const char *ferry_last_error(void) { return error_message; }

void ferry_clear_error(void) { error_message[0] = '\0'; }

ferry_status ferry_fail(ferry_status status, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, args);
    va_end(args);
    return status;
}

ferry_status ferry_fail_prefix(ferry_status status, const char *fmt, ...) {
    char prefix[ERROR_MESSAGE_BYTES];
    char old[ERROR_MESSAGE_BYTES];
    va_list args;
    va_start(args, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, args);
    va_end(args);
    memcpy(old, error_message, sizeof old);
    size_t used = strlen(prefix);
    memcpy(error_message, prefix, used + 1);
    size_t room = sizeof error_message - 1 - used;
    size_t old_bytes = strnlen(old, room);
    memcpy(error_message + used, old, old_bytes);
    error_message[used + old_bytes] = '\0';
    return status;
}

static const char *const status_names[] = {
    [FERRY_OK] = "ok",
    [FERRY_ERR_INVALID_ARGUMENT] = "invalid argument",
    [FERRY_ERR_IO] = "I/O error",
    [FERRY_ERR_FORMAT] = "bad file format",
    [FERRY_ERR_CHECKSUM] = "checksum mismatch",
    [FERRY_ERR_UNSUPPORTED] = "unsupported",
    [FERRY_ERR_NO_MEMORY] = "out of memory",
    [FERRY_ERR_UNAVAILABLE] = "not available",
    [FERRY_ERR_BACKEND] = "backend error",
    [FERRY_ERR_CANCELLED] = "cancelled",
    [FERRY_ERR_CONTEXT_FULL] = "context full",
};

const char *ferry_status_str(ferry_status status) {
    if ((unsigned)status >= sizeof status_names / sizeof status_names[0]) return "unknown status";
    return status_names[status];
}

const char *ferry_version(void) { return FERRY_VERSION_STRING; }
