/*
 * io.c — whole-range pread/pwrite: the loops that turn short transfers and
 * EINTR into retries and anything else into a message naming the file and
 * offset.  Every synchronous file read or write in ferry goes through here
 * (the io_uring engine in nvme/ has its own asynchronous path), and
 * opening a regular file for reading.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base.h"

/* One call moves at most this much: Linux caps a transfer a little below
 * 2 GiB anyway. */
enum { MAX_TRANSFER_BYTES = 1 << 30 };

ferry_status ferry_pread_all(int fd, void *dst, uint64_t bytes, uint64_t offset,
                             const char *path, ferry_status at_end) {
    char *cursor = dst;
    while (bytes > 0) {
        size_t chunk = bytes < MAX_TRANSFER_BYTES ? (size_t)bytes : MAX_TRANSFER_BYTES;
        ssize_t n = pread(fd, cursor, chunk, (off_t)offset);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0)
            return ferry_fail(FERRY_ERR_IO, "%s: read at offset %llu failed: %s", path,
                              (unsigned long long)offset, strerror(errno));
        if (n == 0)
            return ferry_fail(at_end,
                              "%s: read at offset %llu failed: unexpected end of file "
                              "(truncated?)",
                              path, (unsigned long long)offset);
        cursor += n;
        bytes -= (uint64_t)n;
        offset += (uint64_t)n;
    }
    return FERRY_OK;
}

ferry_status ferry_pwrite_all(int fd, const void *data, uint64_t bytes, uint64_t offset,
                              const char *path) {
    const char *cursor = data;
    while (bytes > 0) {
        size_t chunk = bytes < MAX_TRANSFER_BYTES ? (size_t)bytes : MAX_TRANSFER_BYTES;
        ssize_t n = pwrite(fd, cursor, chunk, (off_t)offset);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
            return ferry_fail(FERRY_ERR_IO, "%s: write of %llu bytes at offset %llu failed: %s",
                              path, (unsigned long long)bytes, (unsigned long long)offset,
                              n < 0 ? strerror(errno) : "no progress");
        cursor += n;
        bytes -= (uint64_t)n;
        offset += (uint64_t)n;
    }
    return FERRY_OK;
}

ferry_status ferry_open_read(const char *path, int *out_fd, uint64_t *out_bytes) {
    *out_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*out_fd < 0)
        return ferry_fail(FERRY_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(*out_fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(*out_fd);
        *out_fd = -1;
        return ferry_fail(FERRY_ERR_IO, "%s: not a regular file", path);
    }
    *out_bytes = (uint64_t)st.st_size;
    return FERRY_OK;
}
