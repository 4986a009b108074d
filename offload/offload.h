/*
 * offload.h — the layer-streaming core that runtime/ uses: the placement
 * plan (which layers live on the GPU, in pinned DRAM or on NVMe, where the
 * KV cache lives, the predicted step time), and the slot ring that fetches
 * streamed layers into N device slots ahead of the compute that reads them.
 * The ring talks to the device only through offload_device (function
 * pointers), so a simulated device, the CPU backend and CUDA streams all
 * drive the same scheduler.  Nothing here knows about tensors or kernels.
 */
#ifndef FERRY_OFFLOAD_H
#define FERRY_OFFLOAD_H

#include <stdio.h>

#include "base/base.h"

/* =============================================================== plan */

typedef enum offload_tier {
    OFFLOAD_TIER_GPU = 0,       /* resident in device memory for the whole run */
    OFFLOAD_TIER_HOST = 1,      /* pinned DRAM, copied into a slot each step */
    OFFLOAD_TIER_DISK = 2,      /* read from the model file into staging, then copied */
    OFFLOAD_TIER_COUNT
} offload_tier;

/* "gpu", "dram", "nvme". */
const char *offload_tier_name(offload_tier tier);

/* What the plan needs to know about a model, in bytes; no tensor names. */
typedef struct offload_model_shape {
    int n_layers;
    const uint64_t *layer_bytes;        /* [n_layers]: each layer's blob */
    uint64_t globals_bytes;             /* embeddings, final norm, lm_head: always on the GPU */
    uint64_t kv_bytes_per_token_layer;  /* K + V of one token in one layer */
    uint64_t activation_bytes_per_token;/* scratch the forward pass needs per token in flight */
    uint64_t activation_fixed_bytes;    /* scratch independent of the batch (logits, ...) */
    int max_tokens_per_pass;            /* chunk limit on tokens in flight (0: no limit) */
    /* Scratch kept per token of every chunk one pass through the layers
     * carries (the residual stream between layers, in zig-zag order), and
     * the most tokens carried: counted in whole chunks of
     * max_tokens_per_pass, up to the smaller of batch x context and the
     * limit (0: no limit). */
    uint64_t carried_bytes_per_token;
    int max_tokens_carried;
    uint64_t flops_per_token;           /* ~2 x parameters: one token through every layer */
    /* Attention on the host: bytes one token's q (down) and attention
     * output (up) move over the link per layer. */
    uint64_t host_attention_bytes_per_token_layer;
} offload_model_shape;

/* Where a figure of offload_bandwidths came from (printed with the plan). */
typedef enum offload_figure_origin {
    OFFLOAD_FROM_DEFAULT = 0,   /* offload_bandwidths_default: nothing measured */
    OFFLOAD_FROM_PROFILE,       /* this machine's `ferry iobench --save` profile */
    OFFLOAD_FROM_PROBE,         /* measured on the device when the stream opened */
    OFFLOAD_FROM_GIVEN,         /* set by the caller (ferry plan --link-gbps ...) */
} offload_figure_origin;

/* "default", "profile", "probe", "given". */
const char *offload_figure_origin_name(offload_figure_origin origin);

/* Measured speeds (GB/s are 1e9 bytes per second). */
typedef struct offload_bandwidths {
    double host_to_gpu_gbps;    /* pinned host -> device copies */
    double disk_read_gbps;      /* the model file's drive, O_DIRECT */
    double gpu_memory_gbps;     /* device memory read bandwidth */
    double gpu_tflops;          /* sustained matmul throughput; 0: ignore compute */
    /* Host DRAM read bandwidth the CPU's cores reach together (attention on
     * the host reads the KV cache at it); 0: ignore host attention time */
    double host_memory_gbps;
} offload_bandwidths;

/* Where each figure of an offload_bandwidths came from (all zero: defaults). */
typedef struct offload_bandwidth_origins {
    offload_figure_origin host_to_gpu, disk_read, gpu_memory, gpu_tflops, host_memory;
} offload_bandwidth_origins;

/* The H100 test machine's figures, used when nothing was measured. */
offload_bandwidths offload_bandwidths_default(void);

/* bandwidth.c: the folder `ferry iobench --save` writes this machine's
 * profile to ($XDG_CACHE_HOME/ferry, else $HOME/.cache/ferry), and the
 * profile's path in it (profile-<hostname>.json), into buf. */
const char *offload_profile_directory(char *buf, size_t size);
const char *offload_profile_path(char *buf, size_t size);

/* The defaults overlaid with the profile's figures (h2d_gbps: host->gpu,
 * nvme_read_gbps: disk read), and where each came from (origins may be
 * NULL).  Never fails: without a profile *out is the defaults; an
 * unreadable or corrupt profile, or a figure in it that is not a positive
 * number, leaves the defaults for what it cannot give and says why in
 * warning (else warning is ""; NULL: not wanted).  Returns 1 when at least
 * one figure came from the profile. */
int offload_bandwidths_from_profile(offload_bandwidths *out, offload_bandwidth_origins *origins,
                                    char *warning, size_t warning_size);

typedef struct offload_request {
    uint64_t gpu_mem_bytes;
    uint64_t host_mem_bytes;    /* pinned DRAM for the DRAM tier and staging */
    int batch;                  /* sequences per step; 0: auto (best predicted tokens/s) */
    int max_auto_batch;         /* upper end of the auto search; 0: 1024 */
    int context;                /* tokens per sequence the KV cache must hold */
    int n_slots;                /* GPU slot ring depth; 0: 2 */
    int resident_layers;        /* -1: as many as fit; else exactly this many */
    /* A KV cache in DRAM is attended over by the host CPU where it lives
     * (FlexGen): it never crosses the link, only q and the output do */
    int host_attention;
} offload_request;

typedef struct offload_plan {
    int n_layers;
    offload_tier *layer_tier;   /* [n_layers], owned (offload_plan_free) */
    /* GPU, or HOST: pinned DRAM mapped into the device, read and written
     * in place by the attention kernels (streamed per layer over the link
     * beside the weights; no device memory) */
    offload_tier kv_tier;
    int attention_on_host;      /* kv_tier HOST and the request's host_attention */
    int batch, context, n_slots;
    uint64_t gpu_budget_bytes, host_budget_bytes; /* the request's budgets */
    int n_resident, n_host, n_disk;
    uint64_t slot_bytes;        /* largest streamed layer (0 when nothing streams) */
    /* device memory */
    uint64_t gpu_globals_bytes, gpu_resident_bytes, gpu_slot_bytes, gpu_kv_bytes,
        gpu_activation_bytes, gpu_total_bytes;
    /* pinned host memory */
    uint64_t host_layer_bytes, host_staging_bytes, host_kv_bytes, host_total_bytes;
    /* bytes moved per decode step */
    uint64_t step_link_bytes;   /* host -> GPU (DRAM and NVMe layers, host KV) */
    uint64_t step_disk_bytes;   /* NVMe -> staging */
    uint64_t step_gpu_read_bytes; /* device memory read (every weight, the KV cache) */
    uint64_t step_host_read_bytes; /* host memory the CPU reads (KV cache, attention on the host) */
    /* predicted seconds per decode step, per concurrent lane, and overall */
    double link_s, disk_s, gpu_memory_s, compute_s, host_attention_s, step_s;
    /* the step as the slot ring runs it (offload_pipeline_step_s): the
     * lanes' sums above are lower bounds, this adds the waits between them */
    double pipeline_s;
    double tokens_per_s;        /* batch / step_s */
    offload_bandwidths bandwidths;
    offload_bandwidth_origins bandwidths_from; /* set by the caller; printed */
} offload_plan;

/* Which layers the plan keeps resident when n_resident of n_layers fit:
 * spread evenly over the step (layer i when floor((i + 1) R / L) >
 * floor(i R / L); the last layer is always one), so every stretch of
 * streamed layers is short and each resident layer's compute overlaps the
 * copies of the streamed layers after it.  1: resident. */
int offload_layer_spread_resident(int layer, int n_resident, int n_layers);

/* Tokens one pass through the layers carries: every chunk of a call of up
 * to `tokens` tokens, at most `limit` of them (0: no limit), in whole
 * chunks of `chunk` (the plan's budget and the session's scratch). */
uint64_t offload_tokens_carried(uint64_t tokens, uint64_t limit, uint64_t chunk);

/* Place the model for the request.  Never exceeds either budget; when the
 * budgets cannot hold even the minimum (globals, activations, the slot ring
 * and the KV cache or its per-layer staging) fails with
 * FERRY_ERR_NO_MEMORY and a message "needs at least X of GPU memory for
 * ...".  With batch 0 tries every batch 1..max_auto_batch and keeps the one
 * with the highest predicted tokens/s (the smallest on ties). */
ferry_status offload_plan_make(const offload_model_shape *shape, const offload_request *request,
                               const offload_bandwidths *bandwidths, offload_plan *out);
void offload_plan_free(offload_plan *plan);
/* The plan's predictions again with other bandwidths (e.g. probed once the
 * device exists); the placement stays as it is. */
void offload_plan_predict(offload_plan *plan, const offload_model_shape *shape,
                          const offload_bandwidths *bandwidths);

/* A decode step's lanes as the slot ring runs them (pipeline.c), for the
 * plan's prediction.  Streamed layers (tier not GPU) are copied in step
 * order, one at a time over the link, each into slot g mod n_slots once
 * the compute of the layer n_slots streamed layers before it ended (DISK
 * layers are first read into one of n_slots staging buffers, one read at
 * a time); computes run one at a time in layer order, a streamed one once
 * its copy landed; copies run on into the next step. */
typedef struct offload_pipeline {
    int n_layers;
    const offload_tier *layer_tier;     /* [n_layers] */
    const uint64_t *layer_bytes;        /* [n_layers] */
    int n_slots;                        /* 1..64 */
    double link_bytes_per_s, disk_bytes_per_s; /* > 0 */
    /* A layer's compute: layer_bytes x compute_s_per_byte (the device)
     * + compute_s_per_layer (e.g. its share of attention on the host). */
    double compute_s_per_byte, compute_s_per_layer;
    double tail_s;                      /* compute after the last layer (lm_head) */
} offload_pipeline;

/* Seconds per step once the ring runs steadily (the first step's empty
 * slots left out): deterministic, a few steps simulated. */
double offload_pipeline_step_s(const offload_pipeline *pipeline);

/* A table: tiers of layer ranges, memory per tier, bytes per step per link,
 * predicted step time and tokens/s. */
void offload_plan_print(const offload_plan *plan, FILE *out);

/* "1.50 GiB", "512 MiB", "4 KiB", "17 B" into buf. */
const char *offload_format_bytes(uint64_t bytes, char *buf, size_t size);

/* ======================================================= auto budgets */

/* budget.c: the budgets when the caller gave none, from what the machine
 * has free (FERRY_STREAMING_AUTO), and the choice between an all-resident
 * model and a streamed one.  The choice is pure arithmetic over the plan. */

/* The host's available memory: MemAvailable of /proc/meminfo (what can be
 * allocated without swapping), else sysconf's available pages. */
ferry_status offload_host_available_bytes(uint64_t *out);

/* The margins kept back from a free figure: max(5%, 512 MiB) of a
 * device's, max(10%, 2 GiB) of the host's (include/ferry.h says why). */
uint64_t offload_gpu_margin_bytes(uint64_t gpu_free_bytes);
uint64_t offload_host_margin_bytes(uint64_t host_available_bytes);

/* FERRY_FAKE_FREE_MEMORY="GPU,HOST[,GPU_MARGIN,HOST_MARGIN]" (sizes as
 * ferry_parse_size reads them; the free figures nonzero): *out_set 1 and
 * figures[] = {gpu free, host available, gpu margin, host margin} (margins
 * 0 when not given: the usual ones), or *out_set 0 when unset or empty;
 * FERRY_ERR_INVALID_ARGUMENT naming the value when malformed. */
ferry_status offload_fake_free_memory(int *out_set, uint64_t figures[4]);

typedef struct offload_auto_memory {
    uint64_t gpu_free_bytes;        /* 0: unknown (no device memory to stream into) */
    uint64_t host_available_bytes;  /* 0: unknown (no host limit) */
    uint64_t gpu_margin_bytes, host_margin_bytes;
    /* Budgets the caller gave; 0: the free figure less its margin. */
    uint64_t gpu_mem_bytes, host_mem_bytes;
    int always_stream;              /* stream even when everything fits (only budgets chosen) */
} offload_auto_memory;

typedef struct offload_auto_choice {
    int stream;                 /* 0: open every layer resident; 1: stream */
    uint64_t resident_bytes;    /* device memory all resident needs (globals, layers, KV,
                                 * activations) */
    uint64_t gpu_share_bytes;   /* what the device offers the model; 0: unknown */
    /* Budgets for the stream (0: no limit); set when stream is 1. */
    uint64_t gpu_mem_bytes, host_mem_bytes;
} offload_auto_choice;

/* Resident when the device's share (the given budget, else free less
 * margin) holds the whole model and the sessions of `sessions` (its batch,
 * context, slots and host_attention are read, resident_layers only under
 * always_stream, budgets never), or when the share is unknown; else (and
 * always under always_stream) streamed within the shares (an unknown one:
 * no limit), checked by offload_plan_make, whose "needs at least" error
 * comes back prefixed with the figures when they cannot hold the stream. */
ferry_status offload_auto_choose(const offload_model_shape *shape, const offload_request *sessions,
                                 const offload_auto_memory *memory, offload_auto_choice *out);

/* ============================================================ device */

/* An event the device recorded: completion of a copy or a compute.  Its
 * meaning belongs to the device; 0 is "nothing to wait for". */
typedef uint64_t offload_event;

/* What the ring needs from a device.  Calls come from one thread (the one
 * running the step); the device may run the work on others. */
typedef struct offload_device_ops {
    /* Device memory for one slot, and its release. */
    ferry_status (*slot_alloc)(void *device, int slot, uint64_t bytes, void **out);
    void (*slot_free)(void *device, int slot, void *memory);
    /* Start copying `bytes` from host memory src into slot memory dst;
     * *out_done completes when the bytes have landed. */
    ferry_status (*copy_async)(void *device, int slot, void *dst, const void *src, uint64_t bytes,
                               offload_event *out_done);
    /* Run layer `layer` reading its weights at `weights` (slot or resident
     * memory), after event `after` (0: none) completed; *out_done completes
     * when the compute no longer reads `weights`.  step_user is what the
     * caller gave offload_ring_step. */
    ferry_status (*compute)(void *device, int layer, const void *weights, offload_event after,
                            void *step_user, offload_event *out_done);
    /* Block until the event completed; a failure of the work behind it
     * comes back here. */
    ferry_status (*event_wait)(void *device, offload_event event);
    /* 1: completed, 0: pending. */
    int (*event_query)(void *device, offload_event event);
    /* Optional (NULL: nothing to do): make host memory the ring allocated
     * (NVMe staging) fit for copy_async, e.g. CUDA-pinned, and undo it. */
    ferry_status (*host_register)(void *device, void *memory, uint64_t bytes);
    void (*host_unregister)(void *device, void *memory);
} offload_device_ops;

typedef struct offload_device {
    const offload_device_ops *ops;
    void *impl;
} offload_device;

/* Where a streamed layer's bytes come from. */
typedef struct offload_source {
    offload_tier tier;
    const void *resident;       /* GPU tier: the layer in device memory */
    const void *host;           /* HOST tier: the layer in pinned DRAM */
    uint64_t file_offset;       /* DISK tier: the layer's extent in the model file */
    uint64_t bytes;
} offload_source;

/* Reads for the DISK tier (offload/reader_nvme.c wraps nvme/; tests fake
 * it).  A read is started, then waited for by its ticket. */
typedef struct offload_reader_ops {
    ferry_status (*read_async)(void *reader, uint64_t file_offset, uint64_t bytes, void *dst,
                               int ticket);
    /* Wait for ticket's read; on failure the message names the offset. */
    ferry_status (*read_wait)(void *reader, int ticket);
    /* Bytes a destination must hold to receive `bytes` (O_DIRECT rounding). */
    uint64_t (*transfer_bytes)(void *reader, uint64_t bytes);
} offload_reader_ops;

typedef struct offload_reader {
    const offload_reader_ops *ops;
    void *impl;
} offload_reader;

/* Pinned host -> device GB/s through device.ops->copy_async: `bytes` of
 * host memory (registered with the device, for CUDA) copied into one
 * temporary slot, best of a few after a warm-up.  Takes milliseconds. */
ferry_status offload_device_probe_copy(offload_device device, const void *host, uint64_t bytes,
                                       double *out_gbps);

/* The CPU backend's device (device_cpu.c): slots are aligned host memory,
 * copies are memcpy, compute calls run_layer(user, layer, weights,
 * step_user) at once; every event is complete when its call returns. */
typedef ferry_status (*offload_layer_fn)(void *user, int layer, const void *weights,
                                         void *step_user);
ferry_status offload_device_cpu_new(offload_layer_fn run_layer, void *user, offload_device *out);
void offload_device_cpu_free(offload_device *device);

/* The CUDA device (device_cuda.c): slots in device memory, copies on a
 * copy stream, computes on compute_stream (NULL: its own) after a
 * cudaStreamWaitEvent on the copy, one CUDA event per copy and compute.
 * run_layer must enqueue its kernels on that stream.  FERRY_ERR_UNAVAILABLE
 * without CUDA or a GPU. */
ferry_status offload_device_cuda_new(int gpu, void *compute_stream, offload_layer_fn run_layer,
                                     void *user, offload_device *out);
void offload_device_cuda_free(offload_device *device);
/* The stream computes run on (a cudaStream_t). */
void *offload_device_cuda_stream(const offload_device *device);

/* DISK-tier reads with pread(2) on an open file (reader_pread.c); errors
 * name `path` and the offset.  n_tickets: the ring's staging count. */
ferry_status offload_reader_pread_new(int fd, const char *path, int n_tickets,
                                      offload_reader *out);
void offload_reader_pread_free(offload_reader *reader);

/* DISK-tier reads through the nvme/ engine (reader_nvme.c): O_DIRECT,
 * io_uring (or its pread pool), one request in flight per ticket. */
ferry_status offload_reader_nvme_new(const char *path, int n_tickets, offload_reader *out);
void offload_reader_nvme_free(offload_reader *reader);
/* "io_uring" / "pread" for an nvme reader, "" for any other. */
const char *offload_reader_nvme_backend(const offload_reader *reader);

/* ============================================================== ring */

typedef struct offload_ring offload_ring;

typedef struct offload_ring_options {
    int n_slots;                /* >= 1 */
    int run_ahead;              /* streamed layers fetched ahead of compute: 0..n_slots-1;
                                 * -1: n_slots - 1 */
    int prefetch_next_step;     /* keep fetching the next step's first layers at a
                                 * step's end (weights do not change between steps) */
    int n_staging;              /* host staging buffers for the DISK tier; 0: n_slots */
} offload_ring_options;

/* A ring for n_layers layers whose sources are copied (borrowed: they must
 * outlive the ring).  Allocates the slots through the device and, when a
 * layer is on DISK, aligned staging buffers.  reader may be NULL when no
 * layer is on DISK. */
ferry_status offload_ring_new(const offload_ring_options *options, int n_layers,
                              const offload_source *sources, offload_device device,
                              offload_reader reader, offload_ring **out);
/* Waits for everything in flight (errors dropped), frees slots.  NULL ok. */
void offload_ring_free(offload_ring *ring);

/* One step: every layer in order, each computed once its weights sit in a
 * slot (or resident); fetches run ahead.  Hot path: allocates nothing.  On
 * error returns a status naming the layer (and file offset for reads);
 * everything in flight has finished when it returns, and the next step
 * starts afresh.  If *stop becomes nonzero (another thread may set it) the
 * step stops at the next layer with FERRY_ERR_CANCELLED. */
ferry_status offload_ring_step(offload_ring *ring, void *step_user, const volatile int *stop);

/* Between steps: issue a streamed layer's fetches ahead before handing
 * the layer to compute, not after (off when a ring is made).  For computes
 * that block the calling thread for most of their time (attention on the
 * host), so the link keeps copying while the host computes; costs a wait
 * for the compute that last read the slot being refilled before the next
 * compute is issued. */
void offload_ring_set_fetch_before_compute(offload_ring *ring, int on);

/* Wait for every fetch and compute in flight (e.g. before shutdown). */
ferry_status offload_ring_drain(offload_ring *ring);

typedef struct offload_ring_stats {
    uint64_t steps;
    uint64_t bytes_copied;      /* into slots */
    uint64_t bytes_read;        /* from the file */
    uint64_t wait_slot_ns;      /* host time blocked for a slot to free */
    uint64_t wait_staging_ns;   /* host time blocked on reads */
    uint64_t step_ns;           /* wall time inside successful steps */
} offload_ring_stats;

offload_ring_stats offload_ring_get_stats(const offload_ring *ring);

/* ====================================================== model streaming */

/* stream.c: the glue between a .ferry file, the plan, the ring and the
 * runtime's model (it alone in offload/ knows tensors and layouts). */
struct ferry_layout;
struct ferry_model;

/* The plan's view of a file: layer_bytes must hold layout->config.n_layers
 * and outlive *out.  kv_element_bytes: the backend's KV dtype size. */
ferry_status offload_shape_from_layout(const struct ferry_layout *layout, size_t kv_element_bytes,
                                       uint64_t *layer_bytes, offload_model_shape *out);

typedef struct offload_stream offload_stream;

typedef struct offload_stream_options {
    uint64_t gpu_mem_bytes;     /* 0: no limit */
    uint64_t host_mem_bytes;    /* 0: no limit */
    int resident_layers;        /* -1: as many as fit */
    int n_slots;                /* 0: 2 */
    size_t kv_element_bytes;
    int batch, context;         /* sessions to leave room for; 0: 1 and min(model, 2048) */
    int host_attention;         /* sessions attend over a DRAM KV cache on the host */
} offload_stream_options;

/* The plan's request for these options on a model trained for
 * max_position tokens: 0 budgets become no limit (UINT64_MAX), batch 0
 * becomes 1 and context 0 min(max_position, 2048). */
void offload_stream_request(const offload_stream_options *options, int max_position,
                            offload_request *out);

/* Plan the placement of the source's layers leaving room for sessions of
 * batch x context tokens (their KV cache and activations), set
 * source->total_bytes to what the model's load will produce (globals,
 * resident and DRAM layers), read or generate the DRAM-tier layers into
 * host memory, and keep the file's path for the NVMe tier.  A synthetic
 * source (no file) whose plan needs the NVMe tier is refused with
 * FERRY_ERR_UNSUPPORTED. */
struct ferry_weight_source;
ferry_status offload_stream_open(struct ferry_weight_source *source,
                                 const offload_stream_options *options, offload_stream **out);
/* Is the layer kept resident (loaded into backend memory by the model)? */
int offload_stream_layer_resident(const offload_stream *stream, int layer);
const offload_plan *offload_stream_plan(const offload_stream *stream);
/* Where a session's KV cache of `bytes` lives: on the GPU when the plan
 * puts KV caches there and the GPU budget still has room for it (the room
 * is the budget less the plan's layers, slots and activations, less the
 * caches of live sessions), else in pinned host memory within the host
 * budget's room likewise; else FERRY_ERR_NO_MEMORY naming the bytes and
 * the rooms.  The bytes stay held until offload_stream_kv_release.  Safe
 * from several threads. */
ferry_status offload_stream_kv_reserve(offload_stream *stream, uint64_t bytes,
                                       offload_tier *out_tier);
void offload_stream_kv_release(offload_stream *stream, offload_tier tier, uint64_t bytes);
/* The plan's prediction for another session shape: the same budgets,
 * resident layers and bandwidths, `batch` sequences of `context` tokens.
 * Free *out with offload_plan_free. */
ferry_status offload_stream_predict(const offload_stream *stream, int batch, int context,
                                    offload_plan *out);
/* Build the slot ring once the model holds its resident layers. */
ferry_status offload_stream_attach(offload_stream *stream, struct ferry_model *model);

/* Run every layer in order: run(user, layer, tensors) with tensors[kind]
 * pointing at the layer's weights (resident or in a slot).
 * computes_block_host: run blocks its thread for most of a layer
 * (attention on the host), so fetches go out before each compute
 * (offload_ring_set_fetch_before_compute).  One pass at a
 * time per stream (a mutex serialises sessions sharing the model). */
typedef ferry_status (*offload_stream_layer_fn)(void *user, int layer,
                                                const void *const *tensors);
ferry_status offload_stream_run(offload_stream *stream, offload_stream_layer_fn run, void *user,
                                int computes_block_host);
offload_ring_stats offload_stream_stats(const offload_stream *stream);
void offload_stream_free(offload_stream *stream);

#endif /* FERRY_OFFLOAD_H */
