/*
 * batch.h — the continuous-batching scheduler behind `ferry batch`
 * (iteration-level, as in Orca): requests are pulled from the caller into
 * free sequence slots at every step (the longest waiting one first),
 * prompts are prefilled in the same forward call as other sequences'
 * decode tokens, and a finished sequence leaves at once.  Each request
 * samples with its own generator state, so its tokens do not depend on
 * what shares its batch or when it was admitted.  Files, resume and
 * progress are the caller's (tools/cmd_batch.c).  Internal to ferry.
 */
#ifndef FERRY_RUNTIME_BATCH_H
#define FERRY_RUNTIME_BATCH_H

#include <signal.h>

#include "base/base.h"

typedef struct ferry_batch_request {
    int64_t handle;             /* the caller's name for the request */
    const int32_t *prompt;      /* the caller's until the request's result */
    int n_prompt;
    int max_new_tokens;
    ferry_sampling sampling;
    int ignore_eos;
} ferry_batch_request;

typedef struct ferry_batch_result {
    int64_t handle;
    const int32_t *tokens;      /* generated tokens, valid during the callback */
    int n_tokens;
    int n_prompt;
    const char *finish_reason;  /* "stop" (EOS or on_token), "length", "error" */
    const char *error;          /* the message when finish_reason is "error" */
} ferry_batch_result;

typedef struct ferry_batch_callbacks {
    void *user;
    /* The next request to admit: 1 with *out filled, 0 when none is left. */
    int (*next_request)(void *user, ferry_batch_request *out);
    /* After each sampled token (may be NULL): nonzero finishes the request
     * with "stop" (stop strings are checked here). */
    int (*on_token)(void *user, int64_t handle, const int32_t *tokens, int n_tokens);
    /* A finished request.  A failing status (an output write) ends the run
     * with that status. */
    ferry_status (*on_result)(void *user, const ferry_batch_result *result);
    /* Set (from a signal handler) to stop after the current step; requests
     * not finished by then get no result.  May be NULL. */
    volatile sig_atomic_t *stop_flag;
} ferry_batch_callbacks;

typedef struct ferry_batch_options {
    /* Prompt tokens fed in one step at most.  0: FERRY_CHUNK_TOKENS for a
     * resident model (512); for a streamed one four chunks (2048, as far
     * as the session's carried tokens hold them beside a full batch of
     * decode tokens), since a zig-zag pass carries them all with one
     * weight transfer. */
    int max_prefill_tokens;
    /* Waiting requests read ahead of admission.  The one with the most work
     * left (max_new_tokens, then prompt length, then the earliest) is
     * admitted first, so the job ends on short requests and its tail, when
     * fewer requests than slots are left, is short (longest processing
     * time first).  0: 4 x the session's max_batch; 1: arrival order. */
    int admission_window;
} ferry_batch_options;

typedef struct ferry_batch_stats {
    uint64_t n_requests;        /* results delivered, errors included */
    uint64_t n_errors;
    uint64_t prompt_tokens;
    uint64_t completion_tokens;
    uint64_t n_steps;           /* forward calls */
    uint64_t n_passes;          /* weight passes of a streamed model's layers (0: resident) */
    uint64_t forward_ns;        /* time inside ferry_forward */
} ferry_batch_stats;

/* Run requests through the session's slots until next_request has none
 * left and every admitted request is finished (FERRY_OK), the stop flag is
 * seen (FERRY_ERR_CANCELLED), or a forward or on_result call fails.
 * options may be NULL (every field 0).  Requests read ahead but not
 * admitted when the run stops get no result, like unfinished ones.  A
 * request that cannot fit the session's context, or has bad sampling
 * parameters, gets an "error" result and the others go on.  stats may be
 * NULL; it is filled as results are delivered. */
ferry_status ferry_batch_run(ferry_session *session, const ferry_batch_options *options,
                             const ferry_batch_callbacks *callbacks, ferry_batch_stats *stats);

/* ------------------------------------------------ result files (batch_file.c) */

/* A set of request ids, each kept as its compact JSON text ("7", "\"a\""). */
typedef struct ferry_id_set {
    char **keys;                /* open addressing, NULL = empty */
    size_t mask;
    size_t count;
} ferry_id_set;

/* Add id_json; *added is 0 when it was already there. */
ferry_status ferry_id_set_add(ferry_id_set *set, const char *id_json, int *added);
int ferry_id_set_has(const ferry_id_set *set, const char *id_json);
void ferry_id_set_free(ferry_id_set *set);

/* Compact JSON text of the "id" member of a JSON object line (malloc'd),
 * or NULL when the line is not an object with an id. */
char *ferry_jsonl_id(const char *line);

/* Read an existing output file: add the id of every complete result line
 * to done.  A torn tail (a last line without its newline, or one that is
 * not a JSON object with an id: what a crash mid-write leaves) is cut off
 * so appending can go on; *repaired_bytes says how much was cut.  A file
 * that does not exist is empty. */
ferry_status ferry_batch_output_scan(const char *path, ferry_id_set *done,
                                     uint64_t *repaired_bytes);

#endif /* FERRY_RUNTIME_BATCH_H */
