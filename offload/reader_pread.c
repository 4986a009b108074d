/*
 * reader_pread.c — DISK-tier reads with plain pread(2) on the model file,
 * done at once when a read is started (the ring's staging run-ahead then
 * only bounds memory).  The portable reader the CPU build and the tests
 * use; the io_uring engine in nvme/ plugs in behind the same interface.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "offload/offload.h"

typedef struct pread_ticket {
    ferry_status status;
    char error[512];
} pread_ticket;

typedef struct pread_reader {
    int fd;
    char path[200];
    int n_tickets;
    pread_ticket *tickets;
} pread_reader;

static ferry_status pread_read_async(void *impl, uint64_t offset, uint64_t bytes, void *dst,
                                     int ticket) {
    pread_reader *reader = impl;
    if (ticket < 0 || ticket >= reader->n_tickets)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "%s: read ticket %d of %d", reader->path,
                          ticket, reader->n_tickets);
    pread_ticket *t = &reader->tickets[ticket];
    t->status = FERRY_OK;
    /* The error is kept for the wait: the ring reports it when it needs the data. */
    t->status = ferry_pread_all(reader->fd, dst, bytes, offset, reader->path, FERRY_ERR_IO);
    if (t->status != FERRY_OK) snprintf(t->error, sizeof t->error, "%s", ferry_last_error());
    return FERRY_OK;
}

static ferry_status pread_read_wait(void *impl, int ticket) {
    pread_reader *reader = impl;
    pread_ticket *t = &reader->tickets[ticket];
    ferry_status status = t->status;
    t->status = FERRY_OK;
    return status == FERRY_OK ? FERRY_OK : ferry_fail(status, "%s", t->error);
}

static uint64_t pread_transfer_bytes(void *impl, uint64_t bytes) {
    (void)impl;
    return bytes;
}

static const offload_reader_ops pread_reader_ops = {pread_read_async, pread_read_wait,
                                                    pread_transfer_bytes};

ferry_status offload_reader_pread_new(int fd, const char *path, int n_tickets,
                                      offload_reader *out) {
    memset(out, 0, sizeof *out);
    if (fd < 0 || n_tickets < 1)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "pread reader: fd %d, %d tickets", fd,
                          n_tickets);
    pread_reader *reader = NULL;
    FERRY_TRY(ferry_calloc(1, sizeof *reader, "pread reader", (void **)&reader));
    ferry_status status = ferry_calloc((size_t)n_tickets, sizeof *reader->tickets,
                                       "pread reader tickets", (void **)&reader->tickets);
    if (status != FERRY_OK) {
        free(reader);
        return status;
    }
    reader->fd = fd;
    reader->n_tickets = n_tickets;
    snprintf(reader->path, sizeof reader->path, "%s", path ? path : "model file");
    out->ops = &pread_reader_ops;
    out->impl = reader;
    return FERRY_OK;
}

void offload_reader_pread_free(offload_reader *reader) {
    if (!reader || !reader->impl) return;
    pread_reader *impl = reader->impl;
    free(impl->tickets);
    free(impl);
    reader->impl = NULL;
    reader->ops = NULL;
}
