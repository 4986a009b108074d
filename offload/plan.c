/*
 * plan.c — the placement policy: from the budgets, the layer sizes and the
 * measured bandwidths, decide which layers stay on the GPU, which sit in
 * pinned DRAM and which are read from NVMe each step, where the KV cache
 * lives, and what a decode step should cost.  Pure arithmetic: no
 * allocation beyond the plan's tier table, no device, no files.
 */
#include <inttypes.h>
#include <stdlib.h>

#include "offload/offload.h"

static const char *const tier_names[OFFLOAD_TIER_COUNT] = {"gpu", "dram", "nvme"};

const char *offload_tier_name(offload_tier tier) {
    return (unsigned)tier < OFFLOAD_TIER_COUNT ? tier_names[tier] : "?";
}

offload_bandwidths offload_bandwidths_default(void) {
    /* H100 SXM test machine: pinned cudaMemcpy 55 GB/s (issue 5), one NVMe
     * drive ~6.5 GB/s, HBM3 ~3000 GB/s sustained, fp16 dense ~600 TFLOP/s,
     * ~50 GB/s of DRAM reads from its 16 cores (an estimate, not measured). */
    offload_bandwidths bandwidths = {55.0, 6.5, 3000.0, 600.0, 50.0};
    return bandwidths;
}

const char *offload_format_bytes(uint64_t bytes, char *buf, size_t size) {
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double value = (double)bytes;
    int unit = 0;
    while (value >= 1024.0 && unit < 4) {
        value /= 1024.0;
        unit++;
    }
    if (unit == 0) snprintf(buf, size, "%" PRIu64 " B", bytes);
    else if (value == (double)(uint64_t)value) snprintf(buf, size, "%.0f %s", value, units[unit]);
    else snprintf(buf, size, "%.2f %s", value, units[unit]);
    return buf;
}

/* Short alias for messages: up to four sizes in one printf. */
#define SIZE_TEXT(bytes, i) offload_format_bytes((bytes), text[i], sizeof text[i])

/* ---------------------------------------------------------- checking */

static ferry_status check_inputs(const offload_model_shape *shape, const offload_request *request,
                                 const offload_bandwidths *bandwidths) {
    if (!shape || !request || !bandwidths)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "plan: NULL argument");
    if (shape->n_layers < 1 || !shape->layer_bytes)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "plan: the model has %d layers",
                          shape->n_layers);
    for (int i = 0; i < shape->n_layers; i++)
        if (shape->layer_bytes[i] == 0)
            return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "plan: layer %d has 0 bytes", i);
    if (request->batch < 0 || request->context < 1 || request->n_slots < 0 ||
        request->max_auto_batch < 0)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "plan: batch %d, context %d, slots %d (need batch >= 0 with 0 = auto, "
                          "context >= 1, slots >= 0 with 0 = default)",
                          request->batch, request->context, request->n_slots);
    if (request->resident_layers < -1 || request->resident_layers > shape->n_layers)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "plan: resident layers %d is not in -1 (auto) .. %d",
                          request->resident_layers, shape->n_layers);
    if (!(bandwidths->host_to_gpu_gbps > 0) || !(bandwidths->disk_read_gbps > 0) ||
        !(bandwidths->gpu_memory_gbps > 0) || !(bandwidths->gpu_tflops >= 0) ||
        !(bandwidths->host_memory_gbps >= 0))
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "plan: bandwidths must be positive (host->gpu %g, disk %g, gpu memory "
                          "%g GB/s, %g TFLOP/s, host memory %g GB/s)",
                          bandwidths->host_to_gpu_gbps, bandwidths->disk_read_gbps,
                          bandwidths->gpu_memory_gbps, bandwidths->gpu_tflops,
                          bandwidths->host_memory_gbps);
    return FERRY_OK;
}

/* --------------------------------------------------------- placement */

/* a + b, saturating (budgets are compared, never exceeded). */
static uint64_t add_sat(uint64_t a, uint64_t b) { return a + b < a ? UINT64_MAX : a + b; }
static uint64_t mul_sat(uint64_t a, uint64_t b) {
    uint64_t product;
    return ferry_mul_overflow(a, b, &product) ? UINT64_MAX : product;
}

/* The step as the ring runs it: the device's time split over the layers
 * and the globals (after the last layer) by their bytes, the host's
 * attention evenly over the layers (each attends over the same rows).
 * Link bytes beyond the weights (a DRAM KV cache, host attention's q and
 * output) stay in link_s only, a lower bound beside this. */
static double pipeline_step_s(const offload_plan *plan, const offload_model_shape *shape,
                              double gpu_s) {
    double weight_bytes = (double)shape->globals_bytes;
    for (int i = 0; i < shape->n_layers; i++) weight_bytes += (double)shape->layer_bytes[i];
    offload_pipeline pipeline = {0};
    pipeline.n_layers = plan->n_layers;
    pipeline.layer_tier = plan->layer_tier;
    pipeline.layer_bytes = shape->layer_bytes;
    pipeline.n_slots = plan->n_slots;
    pipeline.link_bytes_per_s = plan->bandwidths.host_to_gpu_gbps * 1e9;
    pipeline.disk_bytes_per_s = plan->bandwidths.disk_read_gbps * 1e9;
    pipeline.compute_s_per_byte = weight_bytes > 0 ? gpu_s / weight_bytes : 0.0;
    pipeline.compute_s_per_layer = plan->host_attention_s / plan->n_layers;
    pipeline.tail_s = pipeline.compute_s_per_byte * (double)shape->globals_bytes;
    return offload_pipeline_step_s(&pipeline);
}

/* Predicted seconds per decode step: the lanes (NVMe reads, host->GPU
 * copies, the GPU itself) run concurrently in the pipeline, so the step
 * takes as long as the busiest; the GPU is busy for the larger of its
 * memory reads and its arithmetic (roofline).  Attention on the host runs
 * between a layer's projections and its output projection, so the device
 * waits for it: that lane is the device's time plus the host's (reading
 * the cache at host memory bandwidth), while the link copies ahead.
 * The lanes' sums are lower bounds; the pipeline simulation adds the
 * waits between them (a compute waiting for its copy, a copy for a free
 * slot), and the step takes the largest. */
static void predict(offload_plan *plan, const offload_model_shape *shape) {
    const offload_bandwidths *bw = &plan->bandwidths;
    plan->link_s = (double)plan->step_link_bytes / (bw->host_to_gpu_gbps * 1e9);
    plan->disk_s = (double)plan->step_disk_bytes / (bw->disk_read_gbps * 1e9);
    plan->gpu_memory_s = (double)plan->step_gpu_read_bytes / (bw->gpu_memory_gbps * 1e9);
    plan->compute_s = bw->gpu_tflops > 0 ? (double)shape->flops_per_token * plan->batch /
                                               (bw->gpu_tflops * 1e12)
                                         : 0.0;
    plan->host_attention_s = plan->attention_on_host && bw->host_memory_gbps > 0
                                 ? (double)plan->step_host_read_bytes /
                                       (bw->host_memory_gbps * 1e9)
                                 : 0.0;
    double gpu_s = plan->gpu_memory_s > plan->compute_s ? plan->gpu_memory_s : plan->compute_s;
    plan->pipeline_s = pipeline_step_s(plan, shape, gpu_s);
    gpu_s += plan->host_attention_s;
    double step_s = plan->link_s > plan->disk_s ? plan->link_s : plan->disk_s;
    step_s = step_s > gpu_s ? step_s : gpu_s;
    plan->step_s = step_s > plan->pipeline_s ? step_s : plan->pipeline_s;
    plan->tokens_per_s = plan->step_s > 0 ? plan->batch / plan->step_s : 0.0;
}

int offload_layer_spread_resident(int layer, int n_resident, int n_layers) {
    if (n_layers < 1 || layer < 0 || layer >= n_layers) return 0;
    /* Layer i is the k-th resident one when the running share i x R / L
     * passes the integer k at i: R layers, one per L / R of the step. */
    int64_t before = (int64_t)layer * n_resident / n_layers;
    int64_t after = (int64_t)(layer + 1) * n_resident / n_layers;
    return after > before;
}

/* Bytes of the layers offload_layer_spread_resident keeps for a count. */
static uint64_t spread_bytes(const offload_model_shape *shape, int n_resident) {
    uint64_t bytes = 0;
    for (int i = 0; i < shape->n_layers; i++)
        if (offload_layer_spread_resident(i, n_resident, shape->n_layers))
            bytes = add_sat(bytes, shape->layer_bytes[i]);
    return bytes;
}

uint64_t offload_tokens_carried(uint64_t tokens, uint64_t limit, uint64_t chunk) {
    uint64_t carried = limit > 0 && tokens > limit ? limit : tokens;
    uint64_t partial = chunk ? carried % chunk : 0;
    return partial ? add_sat(carried, chunk - partial) : carried;
}

/* The plan for one batch size; plan->layer_tier must hold n_layers. */
static ferry_status place(const offload_model_shape *shape, const offload_request *request,
                          int batch, offload_plan *plan) {
    char text[5][32];
    const int n_layers = shape->n_layers;
    const int n_slots = request->n_slots ? request->n_slots : 2;
    uint64_t layers_bytes = 0, largest_layer = 0;
    for (int i = 0; i < n_layers; i++) {
        layers_bytes = add_sat(layers_bytes, shape->layer_bytes[i]);
        if (shape->layer_bytes[i] > largest_layer) largest_layer = shape->layer_bytes[i];
    }
    uint64_t tokens = mul_sat((uint64_t)batch, (uint64_t)request->context);
    uint64_t tokens_in_flight = tokens;
    if (shape->max_tokens_per_pass > 0 && tokens_in_flight > (uint64_t)shape->max_tokens_per_pass)
        tokens_in_flight = (uint64_t)shape->max_tokens_per_pass;
    const uint64_t carry_limit =
        shape->max_tokens_carried > 0 ? (uint64_t)shape->max_tokens_carried : 0;
    uint64_t kv_layer = mul_sat(tokens, shape->kv_bytes_per_token_layer);
    uint64_t kv_total = mul_sat(kv_layer, (uint64_t)n_layers);
    const uint64_t in_flight = add_sat(shape->activation_fixed_bytes,
                                       mul_sat(tokens_in_flight, shape->activation_bytes_per_token));
    /* A streamed pass carries every chunk of a call up to the zig-zag
     * limit; a resident model takes each chunk through every layer before
     * the next, so it carries one (as the session sizes it). */
    uint64_t activations = add_sat(
        in_flight, mul_sat(offload_tokens_carried(tokens, carry_limit, tokens_in_flight),
                           shape->carried_bytes_per_token));
    const uint64_t resident_activations =
        add_sat(in_flight, mul_sat(tokens_in_flight, shape->carried_bytes_per_token));
    uint64_t base = add_sat(shape->globals_bytes, activations);
    const uint64_t gpu_budget = request->gpu_mem_bytes, host_budget = request->host_mem_bytes;

    offload_bandwidths bandwidths = plan->bandwidths;
    offload_tier *tiers = plan->layer_tier;
    memset(plan, 0, sizeof *plan);
    plan->layer_tier = tiers;
    plan->bandwidths = bandwidths;
    plan->n_layers = n_layers;
    plan->gpu_budget_bytes = gpu_budget;
    plan->host_budget_bytes = host_budget;
    plan->batch = batch;
    plan->context = request->context;
    plan->gpu_globals_bytes = shape->globals_bytes;
    plan->gpu_activation_bytes = activations;

    /* Everything on the GPU: no slots, nothing moves. */
    const uint64_t resident_base = add_sat(shape->globals_bytes, resident_activations);
    uint64_t all_resident = add_sat(add_sat(resident_base, layers_bytes), kv_total);
    if (request->resident_layers == -1 || request->resident_layers == n_layers) {
        if (all_resident <= gpu_budget) {
            base = resident_base;
            plan->gpu_activation_bytes = resident_activations;
            for (int i = 0; i < n_layers; i++) tiers[i] = OFFLOAD_TIER_GPU;
            plan->kv_tier = OFFLOAD_TIER_GPU;
            plan->n_resident = n_layers;
            plan->gpu_resident_bytes = layers_bytes;
            plan->gpu_kv_bytes = kv_total;
            goto totals;
        }
        if (request->resident_layers == n_layers)
            return ferry_fail(FERRY_ERR_NO_MEMORY,
                              "plan: batch %d needs at least %s of GPU memory for all %d layers "
                              "resident (%s) + KV %s; the budget is %s",
                              batch, SIZE_TEXT(all_resident, 0), n_layers,
                              SIZE_TEXT(layers_bytes, 1), SIZE_TEXT(kv_total, 2),
                              SIZE_TEXT(gpu_budget, 3));
    }

    /* Streaming: the slot ring, then the KV cache: on the GPU if it fits
     * beside the ring, else in pinned DRAM mapped into the device, where
     * attention reads (and kv_store writes) it in place over the link:
     * no device memory at all, and only the rows a step touches move. */
    plan->n_slots = n_slots;
    plan->slot_bytes = largest_layer;
    plan->gpu_slot_bytes = mul_sat((uint64_t)n_slots, largest_layer);
    uint64_t ring = add_sat(base, plan->gpu_slot_bytes);
    if (add_sat(ring, kv_total) <= gpu_budget) {
        plan->kv_tier = OFFLOAD_TIER_GPU;
        plan->gpu_kv_bytes = kv_total;
    } else {
        plan->kv_tier = OFFLOAD_TIER_HOST;
        plan->host_kv_bytes = kv_total;
    }
    uint64_t fixed = add_sat(ring, plan->gpu_kv_bytes);
    if (fixed > gpu_budget)
        return ferry_fail(FERRY_ERR_NO_MEMORY,
                          "plan: batch %d needs at least %s of GPU memory for %d slots of %s "
                          "(+ globals and activations %s), with the KV cache (%s) in DRAM; the "
                          "budget is %s",
                          batch, SIZE_TEXT(fixed, 0), n_slots, SIZE_TEXT(largest_layer, 1),
                          SIZE_TEXT(base, 2), SIZE_TEXT(kv_total, 3), SIZE_TEXT(gpu_budget, 4));

    /* Whole layers into what is left, spread over the step (see
     * offload_layer_spread_resident): as many as fit. */
    uint64_t room = gpu_budget - fixed, resident_bytes = 0;
    int n_resident = 0;
    if (request->resident_layers >= 0) {
        n_resident = request->resident_layers;
        resident_bytes = spread_bytes(shape, n_resident);
        if (resident_bytes > room)
            return ferry_fail(FERRY_ERR_NO_MEMORY,
                              "plan: %d resident layers need %s of GPU memory; the budget "
                              "leaves %s beside %d slots of %s and KV %s",
                              n_resident, SIZE_TEXT(resident_bytes, 0), SIZE_TEXT(room, 1),
                              n_slots, SIZE_TEXT(largest_layer, 2),
                              SIZE_TEXT(plan->gpu_kv_bytes, 3));
    } else {
        /* The largest count whose layers fit (with layers of unequal
         * sizes a larger count may pick smaller layers: try each). */
        for (int count = n_layers - 1; count > 0; count--) {
            uint64_t bytes = spread_bytes(shape, count);
            if (bytes <= room) {
                n_resident = count;
                resident_bytes = bytes;
                break;
            }
        }
    }
    plan->n_resident = n_resident;
    plan->gpu_resident_bytes = resident_bytes;

    /* Pinned DRAM: the KV cache if it lives there, then layers; the rest
     * is read from NVMe through staging buffers (one per slot). */
    if (plan->host_kv_bytes > host_budget)
        return ferry_fail(FERRY_ERR_NO_MEMORY,
                          "plan: batch %d needs at least %s of host memory for the KV cache "
                          "(it does not fit in GPU memory); the budget is %s",
                          batch, SIZE_TEXT(plan->host_kv_bytes, 0), SIZE_TEXT(host_budget, 1));
    uint64_t streamed_bytes = layers_bytes - resident_bytes;
    uint64_t host_room = host_budget - plan->host_kv_bytes;
    if (streamed_bytes > host_room) {
        plan->host_staging_bytes = mul_sat((uint64_t)n_slots, largest_layer);
        if (plan->host_staging_bytes > host_room)
            return ferry_fail(FERRY_ERR_NO_MEMORY,
                              "plan: reading layers from NVMe needs at least %s of host memory "
                              "for %d staging buffers of %s (+ KV %s); the budget is %s",
                              SIZE_TEXT(add_sat(plan->host_staging_bytes, plan->host_kv_bytes), 0),
                              n_slots, SIZE_TEXT(largest_layer, 1),
                              SIZE_TEXT(plan->host_kv_bytes, 2), SIZE_TEXT(host_budget, 3));
        host_room -= plan->host_staging_bytes;
    }
    for (int i = 0; i < n_layers; i++) {
        if (offload_layer_spread_resident(i, n_resident, n_layers)) {
            tiers[i] = OFFLOAD_TIER_GPU;
        } else if (shape->layer_bytes[i] <= host_room) {
            tiers[i] = OFFLOAD_TIER_HOST;
            host_room -= shape->layer_bytes[i];
            plan->host_layer_bytes += shape->layer_bytes[i];
            plan->n_host++;
            plan->step_link_bytes += shape->layer_bytes[i];
        } else {
            tiers[i] = OFFLOAD_TIER_DISK;
            plan->n_disk++;
            plan->step_link_bytes += shape->layer_bytes[i];
            plan->step_disk_bytes += shape->layer_bytes[i];
        }
    }
    if (plan->n_disk == 0) plan->host_staging_bytes = 0;
    /* A DRAM KV cache crosses the link once per step, as the attention
     * kernels read it: batch x context rows per layer, the rows of a step
     * whose sequences hold `context` tokens (the run's last, slowest step;
     * kernels never touch rows past a sequence's length).  The new tokens'
     * rows going the other way are negligible. */
    /* Attended on the host instead, the cache stays put: the host reads it
     * (the same rows), and each layer sends the step's q down and its
     * attention output up. */
    if (plan->kv_tier == OFFLOAD_TIER_HOST && request->host_attention) {
        plan->attention_on_host = 1;
        plan->step_host_read_bytes = kv_total;
        plan->step_link_bytes = add_sat(
            plan->step_link_bytes,
            mul_sat(mul_sat((uint64_t)batch, (uint64_t)n_layers),
                    shape->host_attention_bytes_per_token_layer));
    } else if (plan->kv_tier == OFFLOAD_TIER_HOST) {
        plan->step_link_bytes = add_sat(plan->step_link_bytes, kv_total);
    }

totals:
    plan->gpu_total_bytes = add_sat(add_sat(add_sat(base, plan->gpu_resident_bytes),
                                            plan->gpu_slot_bytes),
                                    plan->gpu_kv_bytes);
    plan->host_total_bytes = add_sat(add_sat(plan->host_layer_bytes, plan->host_staging_bytes),
                                     plan->host_kv_bytes);
    /* Every weight and a GPU-resident KV cache are read from device memory
     * once per decode step (a DRAM KV cache is read over the link). */
    plan->step_gpu_read_bytes = add_sat(add_sat(layers_bytes, shape->globals_bytes),
                                        plan->kv_tier == OFFLOAD_TIER_GPU ? kv_total : 0);
    predict(plan, shape);
    return FERRY_OK;
}

void offload_plan_predict(offload_plan *plan, const offload_model_shape *shape,
                          const offload_bandwidths *bandwidths) {
    plan->bandwidths = *bandwidths;
    predict(plan, shape);
}

ferry_status offload_plan_make(const offload_model_shape *shape, const offload_request *request,
                               const offload_bandwidths *bandwidths, offload_plan *out) {
    if (!out) return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "plan: out is NULL");
    memset(out, 0, sizeof *out);
    FERRY_TRY(check_inputs(shape, request, bandwidths));
    offload_plan plan;
    memset(&plan, 0, sizeof plan);
    plan.bandwidths = *bandwidths;
    FERRY_TRY(ferry_calloc((size_t)shape->n_layers, sizeof *plan.layer_tier, "plan tiers",
                           (void **)&plan.layer_tier));
    ferry_status status;
    int batch = request->batch;
    if (batch == 0) {
        /* --batch auto: the batch with the best predicted tokens/s.  More
         * sequences only ever need more memory, so the search stops at the
         * first batch the budgets cannot hold. */
        int max_batch = request->max_auto_batch ? request->max_auto_batch : 1024;
        double best_tokens_per_s = -1;
        for (int candidate = 1; candidate <= max_batch; candidate++) {
            status = place(shape, request, candidate, &plan);
            if (status != FERRY_OK) {
                if (candidate == 1) goto fail;
                break;
            }
            /* Better by more than rounding; ties go to the smaller batch. */
            if (plan.tokens_per_s > best_tokens_per_s * (1 + 1e-9)) {
                best_tokens_per_s = plan.tokens_per_s;
                batch = candidate;
            }
        }
        ferry_clear_error();
    }
    FERRY_TRY_GOTO(place(shape, request, batch, &plan));
    *out = plan;
    return FERRY_OK;
fail:
    free(plan.layer_tier);
    return status;
}

void offload_plan_free(offload_plan *plan) {
    if (!plan) return;
    free(plan->layer_tier);
    plan->layer_tier = NULL;
}

/* ------------------------------------------------------------ printing */

/* One row per tier: its layers as runs, "0-4,6-9,11". */
static void print_tier_layers(const offload_plan *plan, offload_tier tier, FILE *out) {
    int printed = 0;
    for (int first = 0; first < plan->n_layers; first++) {
        if (plan->layer_tier[first] != tier) continue;
        int last = first;
        while (last + 1 < plan->n_layers && plan->layer_tier[last + 1] == tier) last++;
        if (!printed) fprintf(out, "  %-14s ", offload_tier_name(tier));
        fprintf(out, "%s%d", printed ? "," : "", first);
        if (last > first) fprintf(out, "-%d", last);
        printed = 1;
        first = last;
    }
    if (printed) fprintf(out, "\n");
}

void offload_plan_print(const offload_plan *plan, FILE *out) {
    char text[5][32];
    fprintf(out, "plan: batch %d, context %d, ", plan->batch, plan->context);
    if (plan->n_slots)
        fprintf(out, "%d GPU slots of %s\n", plan->n_slots, SIZE_TEXT(plan->slot_bytes, 0));
    else
        fprintf(out, "every layer resident (no slots)\n");
    fprintf(out, "  %-14s %-5s\n", "tier", "layers");
    for (int tier = 0; tier < OFFLOAD_TIER_COUNT; tier++)
        print_tier_layers(plan, (offload_tier)tier, out);
    fprintf(out, "  %-14s %-5s %s\n", "kv cache", offload_tier_name(plan->kv_tier),
            plan->kv_tier == OFFLOAD_TIER_GPU ? "(device memory)"
            : plan->attention_on_host
                ? "(attention on the host: the CPU reads it in place, q and the output cross "
                  "the link)"
                : "(pinned host memory the GPU reads in place, per layer over the link)");
    fprintf(out, "  (%d resident, %d in DRAM, %d on NVMe)\n", plan->n_resident, plan->n_host,
            plan->n_disk);
    fprintf(out, "gpu memory   %s: globals %s, resident layers %s, slots %s, ",
            SIZE_TEXT(plan->gpu_total_bytes, 0), SIZE_TEXT(plan->gpu_globals_bytes, 1),
            SIZE_TEXT(plan->gpu_resident_bytes, 2), SIZE_TEXT(plan->gpu_slot_bytes, 3));
    fprintf(out, "kv %s, activations %s\n", SIZE_TEXT(plan->gpu_kv_bytes, 0),
            SIZE_TEXT(plan->gpu_activation_bytes, 1));
    fprintf(out, "host memory  %s: layers %s, nvme staging %s, kv %s\n",
            SIZE_TEXT(plan->host_total_bytes, 0), SIZE_TEXT(plan->host_layer_bytes, 1),
            SIZE_TEXT(plan->host_staging_bytes, 2), SIZE_TEXT(plan->host_kv_bytes, 3));
    fprintf(out, "per step     host->gpu %s, nvme read %s, gpu memory read %s",
            SIZE_TEXT(plan->step_link_bytes, 0), SIZE_TEXT(plan->step_disk_bytes, 1),
            SIZE_TEXT(plan->step_gpu_read_bytes, 2));
    if (plan->attention_on_host)
        fprintf(out, ", host memory read %s", SIZE_TEXT(plan->step_host_read_bytes, 0));
    fprintf(out, "\n");
    const offload_bandwidths *bw = &plan->bandwidths;
    const offload_bandwidth_origins *from = &plan->bandwidths_from;
    fprintf(out,
            "bandwidths   host->gpu %.1f GB/s (%s), nvme %.1f GB/s (%s), gpu memory %.0f GB/s "
            "(%s), %.0f TFLOP/s (%s)\n",
            bw->host_to_gpu_gbps, offload_figure_origin_name(from->host_to_gpu),
            bw->disk_read_gbps, offload_figure_origin_name(from->disk_read), bw->gpu_memory_gbps,
            offload_figure_origin_name(from->gpu_memory), bw->gpu_tflops,
            offload_figure_origin_name(from->gpu_tflops));
    if (plan->attention_on_host)
        fprintf(out, "             host memory %.0f GB/s (%s%s) for attention on the host\n",
                bw->host_memory_gbps, offload_figure_origin_name(from->host_memory),
                from->host_memory == OFFLOAD_FROM_DEFAULT ? ": an estimate for 16 cores" : "");
    fprintf(out, "predicted    link %.3f ms, nvme %.3f ms, gpu memory %.3f ms, compute %.3f ms",
            plan->link_s * 1e3, plan->disk_s * 1e3, plan->gpu_memory_s * 1e3,
            plan->compute_s * 1e3);
    if (plan->attention_on_host)
        fprintf(out, ", + host attention %.3f ms", plan->host_attention_s * 1e3);
    fprintf(out, "\n             as the slot ring runs them: pipeline %.3f ms -> step %.3f ms, %.1f "
            "tokens/s\n",
            plan->pipeline_s * 1e3, plan->step_s * 1e3, plan->tokens_per_s);
}
