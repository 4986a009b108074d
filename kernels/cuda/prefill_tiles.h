/*
 * prefill_tiles.h — how the tensor-core prefill attention cuts a batch
 * into tiles: runs of consecutive tokens of one slot, at most tile_tokens
 * long (a block reads one slot's keys).  Plain C with no CUDA types, so
 * the tests check it on machines without a GPU.
 */
#ifndef FERRY_KERNELS_CUDA_PREFILL_TILES_H
#define FERRY_KERNELS_CUDA_PREFILL_TILES_H

#include <stdint.h>

/* Tile i holds tokens starts[i] .. starts[i+1]-1; a tile ends where the
 * slot changes or it reaches tile_tokens.  starts needs room for n + 1
 * entries; returns the number of tiles (0 when n <= 0, with starts[0] = 0). */
static inline int ferry_prefill_tiles(const int32_t *slots, int n, int tile_tokens,
                                      int32_t *starts) {
    int n_tiles = 0, t = 0;
    while (t < n) {
        int end = t + 1;
        while (end < n && end - t < tile_tokens && slots[end] == slots[t]) end++;
        starts[n_tiles++] = t;
        t = end;
    }
    starts[n_tiles] = n > 0 ? n : 0;
    return n_tiles;
}

#endif /* FERRY_KERNELS_CUDA_PREFILL_TILES_H */
