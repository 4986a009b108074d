/*
 * buffer.c — host memory for I/O and where it should live: page-aligned
 * anonymous mappings faulted in on a chosen NUMA node (libnuma), and the
 * node a drive or a PCI device hangs off (sysfs, hwloc).  On a machine
 * with one node all of this quietly does nothing special.
 */
#include <errno.h>
#include <hwloc.h>
#include <limits.h>
#include <numa.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "nvme/backend.h"

#define HUGE_PAGE_BYTES (2ull << 20)

int nvme_numa_node_count(void) {
    if (numa_available() < 0) return 1;
    int nodes = numa_num_configured_nodes();
    return nodes > 0 ? nodes : 1;
}

void nvme_bind_thread_to_node(int node) {
    if (node < 0 || nvme_numa_node_count() < 2) return;
    numa_run_on_node(node);   /* best effort: an offline node leaves the thread where it is */
}

ferry_status nvme_buffer_alloc(uint64_t bytes, int numa_node, nvme_buffer *out) {
    memset(out, 0, sizeof *out);
    out->numa_node = -1;
    if (bytes == 0) return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "I/O buffer of 0 bytes");
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    int huge = bytes >= HUGE_PAGE_BYTES;
    uint64_t align = huge ? HUGE_PAGE_BYTES : page;
    uint64_t mapped = (bytes + align - 1) / align * align;
    /* Map one alignment unit more, then trim, so large buffers start on a
     * 2 MiB boundary and can be backed by transparent huge pages. */
    uint64_t reserve = mapped + (huge ? align : 0);
    uint8_t *base = mmap(NULL, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return ferry_fail(FERRY_ERR_NO_MEMORY, "cannot map %llu bytes of I/O buffer: %s",
                          (unsigned long long)bytes, strerror(errno));
    uint8_t *start = base;
    if (huge) {
        start = (uint8_t *)(((uintptr_t)base + align - 1) & ~(uintptr_t)(align - 1));
        if (start > base) munmap(base, (size_t)(start - base));
        uint8_t *end = start + mapped;
        if (base + reserve > end) munmap(end, (size_t)(base + reserve - end));
        madvise(start, mapped, MADV_HUGEPAGE);
    }
    if (numa_node >= 0 && nvme_numa_node_count() > 1) {
        numa_tonode_memory(start, mapped, numa_node);
        out->numa_node = numa_node;
    }
    /* Fault every page in now, on the bound node, not on the first read. */
    for (uint64_t i = 0; i < mapped; i += page) start[i] = 0;
    out->data = start;
    out->bytes = bytes;
    out->mapped_bytes = mapped;
    return FERRY_OK;
}

void nvme_buffer_free(nvme_buffer *buffer) {
    if (!buffer || !buffer->data) return;
    nvme_buffer_unpin_cuda(buffer);
    munmap(buffer->data, buffer->mapped_bytes);
    memset(buffer, 0, sizeof *buffer);
    buffer->numa_node = -1;
}

/* The block device holding path, walked up sysfs to the first directory
 * with a numa_node file (the PCI function of the controller). */
int nvme_numa_node_of_path(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    dev_t device = S_ISBLK(st.st_mode) ? st.st_rdev : st.st_dev;
    char link[64], resolved[PATH_MAX];
    snprintf(link, sizeof link, "/sys/dev/block/%u:%u", major(device), minor(device));
    if (!realpath(link, resolved)) return -1;
    while (strlen(resolved) > strlen("/sys/devices")) {
        char file[PATH_MAX + 16];
        snprintf(file, sizeof file, "%s/numa_node", resolved);
        FILE *f = fopen(file, "r");
        if (f) {
            int node = -1;
            if (fscanf(f, "%d", &node) != 1) node = -1;
            fclose(f);
            return node;
        }
        char *slash = strrchr(resolved, '/');
        if (!slash) break;
        *slash = '\0';
    }
    return -1;
}

int nvme_numa_node_of_pci(const char *pci_bus_id) {
    hwloc_topology_t topology;
    if (hwloc_topology_init(&topology) != 0) return -1;
    int node = -1;
    hwloc_topology_set_io_types_filter(topology, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    if (hwloc_topology_load(topology) == 0) {
        hwloc_obj_t device = hwloc_get_pcidev_by_busidstring(topology, pci_bus_id);
        hwloc_obj_t ancestor = device ? hwloc_get_non_io_ancestor_obj(topology, device) : NULL;
        if (ancestor && ancestor->nodeset && !hwloc_bitmap_iszero(ancestor->nodeset) &&
            hwloc_bitmap_weight(ancestor->nodeset) == 1)
            node = hwloc_bitmap_first(ancestor->nodeset);
    }
    hwloc_topology_destroy(topology);
    return node;
}
