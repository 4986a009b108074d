/*
 * reader_nvme.c — DISK-tier reads through the nvme/ engine: O_DIRECT on
 * the model file, io_uring with a deep queue (or its pread pool), one
 * request per ring staging buffer, so the NVMe reads of the next layers
 * run while the current ones are copied and computed.  Errors come back
 * from the engine naming the file and offset.
 */
#include <stdio.h>
#include <stdlib.h>

#include "nvme/nvme.h"
#include "offload/offload.h"

typedef struct nvme_reader {
    char path[200];
    nvme_engine *engine;
    int file;
    int n_tickets;
    nvme_request *requests;     /* [n_tickets], one per staging buffer */
    int *in_flight;             /* [n_tickets] */
} nvme_reader;

static ferry_status nvme_read_async(void *impl, uint64_t offset, uint64_t bytes, void *dst,
                                    int ticket) {
    nvme_reader *reader = impl;
    if (ticket < 0 || ticket >= reader->n_tickets || reader->in_flight[ticket])
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "nvme reader: ticket %d busy or not in 0..%d",
                          ticket, reader->n_tickets - 1);
    nvme_request *request = &reader->requests[ticket];
    memset(request, 0, sizeof *request);
    request->file = reader->file;
    request->offset = offset;
    request->length = bytes;
    request->buffer = dst;
    FERRY_TRY(nvme_submit(reader->engine, request));
    reader->in_flight[ticket] = 1;
    return FERRY_OK;
}

static ferry_status nvme_read_wait(void *impl, int ticket) {
    nvme_reader *reader = impl;
    if (!reader->in_flight[ticket]) return FERRY_OK;
    reader->in_flight[ticket] = 0;
    nvme_request *request = &reader->requests[ticket];
    FERRY_TRY(nvme_wait(reader->engine, request));
    if (request->bytes_done < request->length)
        return ferry_fail(FERRY_ERR_IO,
                          "%s: read at offset %llu: %llu of %llu bytes (file truncated?)",
                          reader->path, (unsigned long long)request->offset,
                          (unsigned long long)request->bytes_done,
                          (unsigned long long)request->length);
    return FERRY_OK;
}

static uint64_t nvme_reader_transfer_bytes(void *impl, uint64_t bytes) {
    nvme_reader *reader = impl;
    return nvme_transfer_bytes(reader->engine, reader->file, bytes);
}

static const offload_reader_ops nvme_reader_ops = {nvme_read_async, nvme_read_wait,
                                                   nvme_reader_transfer_bytes};

ferry_status offload_reader_nvme_new(const char *path, int n_tickets, offload_reader *out) {
    memset(out, 0, sizeof *out);
    if (!path || n_tickets < 1)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "nvme reader: path %s, %d tickets",
                          path ? path : "(null)", n_tickets);
    nvme_reader *reader = NULL;
    ferry_status status;
    FERRY_TRY(ferry_calloc(1, sizeof *reader, "nvme reader", (void **)&reader));
    reader->file = -1;
    reader->n_tickets = n_tickets;
    snprintf(reader->path, sizeof reader->path, "%s", path);
    FERRY_TRY_GOTO(ferry_calloc((size_t)n_tickets, sizeof *reader->requests, "nvme requests",
                                (void **)&reader->requests));
    FERRY_TRY_GOTO(ferry_calloc((size_t)n_tickets, sizeof *reader->in_flight, "nvme requests",
                                (void **)&reader->in_flight));
    nvme_options options = nvme_options_default();
    FERRY_TRY_GOTO(nvme_engine_open(&options, &reader->engine));
    FERRY_TRY_GOTO(nvme_file_open(reader->engine, path, 0, &reader->file));
    out->ops = &nvme_reader_ops;
    out->impl = reader;
    return FERRY_OK;
fail:
    out->impl = reader;
    offload_reader_nvme_free(out);
    return status;
}

void offload_reader_nvme_free(offload_reader *reader) {
    if (!reader || !reader->impl) return;
    nvme_reader *impl = reader->impl;
    if (impl->engine) {
        for (int i = 0; i < impl->n_tickets && impl->in_flight; i++)
            if (impl->in_flight[i]) (void)nvme_wait(impl->engine, &impl->requests[i]);
        if (impl->file >= 0) nvme_file_close(impl->engine, impl->file);
        nvme_engine_close(impl->engine);
    }
    free(impl->requests);
    free(impl->in_flight);
    free(impl);
    reader->impl = NULL;
    reader->ops = NULL;
}

const char *offload_reader_nvme_backend(const offload_reader *reader) {
    if (!reader || reader->ops != &nvme_reader_ops) return "";
    return nvme_engine_backend(((nvme_reader *)reader->impl)->engine);
}
