/*
 * placement.c — whether a model opens all resident or streamed, and with
 * which budgets: ferry_model_options.streaming as given (0 or 1), or under
 * FERRY_STREAMING_AUTO chosen from the device's free memory and the host's
 * available memory (offload/budget.c); and ferry_model_get_placement, which
 * tells the caller what was chosen.  The library prints nothing: the
 * ferry program says what auto chose.  Not a hot path.
 */
#include <stdlib.h>

#include "offload/offload.h"
#include "runtime/engine.h"
#include "runtime/format.h"

/* The device's free memory and the host's available memory, from
 * FERRY_FAKE_FREE_MEMORY when set; else read, on a backend with device
 * memory only (the CPU's memory is the host's: auto keeps it resident). */
static ferry_status read_free_memory(ferry_backend *backend, ferry_model_placement *placement) {
    int faked = 0;
    uint64_t figures[4];
    FERRY_TRY(offload_fake_free_memory(&faked, figures));
    placement->figures_faked = faked;
    if (faked) {
        placement->gpu_free_bytes = figures[0];
        placement->host_available_bytes = figures[1];
        placement->gpu_margin_bytes = figures[2];
        placement->host_margin_bytes = figures[3];
    }
    if (faked || !backend->ops->memory_info) return FERRY_OK;
    size_t used_bytes = 0, total_bytes = 0;
    ferry_status status = backend->ops->memory_info(backend, &used_bytes, &total_bytes);
    if (status != FERRY_OK)
        return ferry_fail_prefix(status, "auto budgets: cannot read the device's free memory: ");
    placement->gpu_free_bytes = total_bytes > used_bytes ? total_bytes - used_bytes : 0;
    if (placement->gpu_free_bytes == 0)
        return ferry_fail(FERRY_ERR_NO_MEMORY, "auto budgets: the device has no free memory");
    FERRY_TRY(offload_host_available_bytes(&placement->host_available_bytes));
    return FERRY_OK;
}

ferry_status ferry_model_choose_placement(ferry_model *model, const ferry_layout *layout,
                                          const ferry_model_options *opts,
                                          offload_stream_options *out_stream) {
    ferry_model_placement *placement = &model->placement;
    memset(placement, 0, sizeof *placement);
    memset(out_stream, 0, sizeof *out_stream);
    if (opts->streaming < FERRY_STREAMING_AUTO_BUDGETS)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "ferry_model_open: streaming %d is not 0 (off), positive (on), "
                          "FERRY_STREAMING_AUTO (-1) or FERRY_STREAMING_AUTO_BUDGETS (-2)",
                          opts->streaming);
    if (opts->streaming == 0) return FERRY_OK;
    int host_attention = 0;
    FERRY_TRY(ferry_attention_on_host(model->backend, 1, &host_attention));
    offload_stream_options stream = {
        opts->gpu_mem_bytes, opts->host_mem_bytes, opts->resident_layers, opts->slots,
        ferry_dtype_bytes(model->backend->ops->kv_dtype), opts->stream_batch,
        opts->stream_context, host_attention};
    if (opts->streaming > 0) {
        placement->streaming = 1;
        placement->gpu_mem_bytes = opts->gpu_mem_bytes;
        placement->host_mem_bytes = opts->host_mem_bytes;
        *out_stream = stream;
        return FERRY_OK;
    }

    /* Auto: the figures, the margins, then the plan's arithmetic. */
    placement->chosen_by_auto = opts->streaming == FERRY_STREAMING_AUTO;
    FERRY_TRY(read_free_memory(model->backend, placement));
    if (!placement->gpu_margin_bytes && placement->gpu_free_bytes)
        placement->gpu_margin_bytes = offload_gpu_margin_bytes(placement->gpu_free_bytes);
    if (!placement->host_margin_bytes && placement->host_available_bytes)
        placement->host_margin_bytes = offload_host_margin_bytes(placement->host_available_bytes);
    const int always_stream = opts->streaming == FERRY_STREAMING_AUTO_BUDGETS;
    if (!always_stream) stream.resident_layers = -1;
    offload_request sessions;
    offload_stream_request(&stream, layout->config.max_position, &sessions);
    uint64_t *layer_bytes = NULL;
    FERRY_TRY(ferry_calloc((size_t)layout->config.n_layers, sizeof *layer_bytes, "layer sizes",
                           (void **)&layer_bytes));
    offload_model_shape shape;
    offload_auto_memory memory = {placement->gpu_free_bytes, placement->host_available_bytes,
                                  placement->gpu_margin_bytes, placement->host_margin_bytes,
                                  opts->gpu_mem_bytes, opts->host_mem_bytes, always_stream};
    offload_auto_choice choice;
    memset(&choice, 0, sizeof choice);
    ferry_status status = offload_shape_from_layout(layout, stream.kv_element_bytes, layer_bytes,
                                                    &shape);
    if (status == FERRY_OK) status = offload_auto_choose(&shape, &sessions, &memory, &choice);
    free(layer_bytes);
    placement->resident_bytes = choice.resident_bytes;
    if (status != FERRY_OK) return status;
    if (!choice.stream) return FERRY_OK;
    placement->streaming = 1;
    placement->gpu_mem_bytes = stream.gpu_mem_bytes = choice.gpu_mem_bytes;
    placement->host_mem_bytes = stream.host_mem_bytes = choice.host_mem_bytes;
    *out_stream = stream;
    return FERRY_OK;
}

ferry_status ferry_model_get_placement(const ferry_model *model,
                                       ferry_model_placement *out_placement) {
    if (!model || !out_placement)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT, "ferry_model_get_placement: NULL argument");
    *out_placement = model->placement;
    return FERRY_OK;
}
