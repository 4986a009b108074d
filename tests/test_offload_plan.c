/*
 * test_offload_plan.c — the placement plan: tiers, memory and bytes per
 * step checked against small cases worked out by hand (in the comments),
 * budgets never exceeded on random shapes, impossible budgets refused with
 * a message naming what is needed, --batch auto against a brute-force
 * search, and the printed table.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "helpers.h"
#include "offload/offload.h"

/* Four layers of 100 B, globals 50 B, K+V 2 B per token and layer, one
 * byte of activations per token: with batch 1 and context 10 the KV cache
 * is 20 B per layer (80 B in all), activations 10 B, globals+activations
 * 60 B. */
static const uint64_t four_layers[4] = {100, 100, 100, 100};

static offload_model_shape small_shape(void) {
    offload_model_shape shape = {0};
    shape.n_layers = 4;
    shape.layer_bytes = four_layers;
    shape.globals_bytes = 50;
    shape.kv_bytes_per_token_layer = 2;
    shape.activation_bytes_per_token = 1;
    return shape;
}

static offload_request request(uint64_t gpu, uint64_t host, int batch) {
    offload_request r = {0};
    r.gpu_mem_bytes = gpu;
    r.host_mem_bytes = host;
    r.batch = batch;
    r.context = 10;
    r.resident_layers = -1;
    return r;
}

/* host->gpu 2 GB/s, disk 1 GB/s, gpu memory 10 GB/s, no compute term. */
static const offload_bandwidths slow_links = {2.0, 1.0, 10.0, 0.0, 0.0};

static offload_plan make_ok(offload_model_shape shape, offload_request r) {
    offload_plan plan;
    ferry_status status = offload_plan_make(&shape, &r, &slow_links, &plan);
    cr_assert_eq(status, FERRY_OK, "%s", ferry_last_error());
    return plan;
}

static void assert_tiers(const offload_plan *plan, const char *expected) {
    for (int i = 0; i < plan->n_layers; i++) {
        char tier = "GHD"[plan->layer_tier[i]];
        cr_assert_eq(tier, expected[i], "layer %d: tier %c, expected %c (want %s)", i, tier,
                     expected[i], expected);
    }
}

static void assert_seconds(double got, double expected, const char *what) {
    cr_assert(fabs(got - expected) <= 1e-9 * expected + 1e-18, "%s: %.6g s, expected %.6g s", what,
              got, expected);
}

Test(offload_plan, everything_fits_so_every_layer_is_resident_and_nothing_moves) {
    /* 60 + 400 + 80 = 540 B <= 600 B */
    offload_plan plan = make_ok(small_shape(), request(600, 0, 1));
    assert_tiers(&plan, "GGGG");
    cr_assert_eq(plan.kv_tier, OFFLOAD_TIER_GPU);
    cr_assert_eq(plan.n_slots, 0);
    cr_assert_eq(plan.gpu_total_bytes, 540);
    cr_assert_eq(plan.step_link_bytes, 0);
    cr_assert_eq(plan.step_gpu_read_bytes, 530); /* 400 weights + 50 globals + 80 KV */
    assert_seconds(plan.step_s, 530 / 10e9, "step");
    offload_plan_free(&plan);
}

/* Batch 4 x context 10 = 40 tokens in passes of 10, carrying 2 B a
 * token: a streamed pass carries all 40 (80 B), a resident model one pass
 * of 10 (20 B), as the session sizes it.  Resident: 50 + 10 + 20 + 400 +
 * KV 320 = 800 B, which a budget of 800 B holds (with the streamed
 * carry, 860 B, it would stream a model that fits). */
Test(offload_plan, a_resident_model_carries_one_pass_of_tokens_not_the_zigzag_window) {
    offload_model_shape shape = small_shape();
    shape.max_tokens_per_pass = 10;
    shape.carried_bytes_per_token = 2;
    offload_plan plan = make_ok(shape, request(800, 10000, 4));
    assert_tiers(&plan, "GGGG");
    cr_assert_eq(plan.gpu_activation_bytes, 30);
    cr_assert_eq(plan.gpu_total_bytes, 800);
    offload_plan_free(&plan);
    /* one byte less: streamed, and then the whole window is carried */
    plan = make_ok(shape, request(799, 10000, 4));
    cr_assert_lt(plan.n_resident, 4);
    cr_assert_eq(plan.gpu_activation_bytes, 90);
    offload_plan_free(&plan);
}

Test(offload_plan, streams_every_layer_from_dram_when_no_whole_layer_fits_beside_the_slots) {
    /* 60 + 2 slots x 100 + KV 80 = 340 B; 60 B left: no layer fits. */
    offload_plan plan = make_ok(small_shape(), request(400, 1000, 1));
    assert_tiers(&plan, "HHHH");
    cr_assert_eq(plan.kv_tier, OFFLOAD_TIER_GPU);
    cr_assert_eq(plan.n_slots, 2);
    cr_assert_eq(plan.slot_bytes, 100);
    cr_assert_eq(plan.gpu_total_bytes, 340);
    cr_assert_eq(plan.host_total_bytes, 400);
    cr_assert_eq(plan.step_link_bytes, 400);
    cr_assert_eq(plan.step_disk_bytes, 0);
    /* link 400 B / 2 GB/s = 200 ns beats gpu memory 530 B / 10 GB/s = 53 ns */
    assert_seconds(plan.link_s, 200e-9, "link");
    assert_seconds(plan.gpu_memory_s, 53e-9, "gpu memory");
    assert_seconds(plan.step_s, 200e-9, "step");
    cr_assert(fabs(plan.tokens_per_s - 5e6) < 1e-3, "%g tokens/s", plan.tokens_per_s);
    offload_plan_free(&plan);
}

Test(offload_plan, keeps_as_many_layers_resident_as_the_budget_leaves_room_for) {
    /* 450 - 340 = 110 B: one layer resident (the last: one per 4 layers,
     * ending the stretch), three in DRAM (300 B). */
    offload_plan plan = make_ok(small_shape(), request(450, 300, 1));
    assert_tiers(&plan, "HHHG");
    cr_assert_eq(plan.gpu_total_bytes, 440);
    cr_assert_eq(plan.host_total_bytes, 300);
    cr_assert_eq(plan.host_staging_bytes, 0);
    cr_assert_eq(plan.step_link_bytes, 300);
    offload_plan_free(&plan);
}

Test(offload_plan, the_step_is_the_rings_pipeline_over_the_plans_layers_and_bandwidths) {
    /* "HHHG" as above: copies of 100 B at 2 GB/s take 50 ns; the device's
     * 530 B at 10 GB/s (53 ns) split over 450 B of weights is ~11.8 ns a
     * layer: the 3 copies run back to back, 150 ns (offload_pipeline). */
    offload_plan plan = make_ok(small_shape(), request(450, 300, 1));
    assert_seconds(plan.pipeline_s, 150e-9, "pipeline");
    assert_seconds(plan.step_s, 150e-9, "step");
    /* With 0.2 GB/s of device memory (530 B in 2.65 us) each layer
     * computes ~589 ns, far more than a copy: no compute waits, and the
     * step is the device lane, 4 x 589 ns + the globals' 294 ns. */
    offload_model_shape shape = small_shape();
    offload_request r = request(450, 300, 1);
    offload_bandwidths slow_device = slow_links;
    slow_device.gpu_memory_gbps = 0.2;
    offload_plan_free(&plan);
    cr_assert_eq(offload_plan_make(&shape, &r, &slow_device, &plan), FERRY_OK);
    assert_seconds(plan.gpu_memory_s, 2650e-9, "gpu memory");
    assert_seconds(plan.pipeline_s, 2650e-9, "pipeline");
    assert_seconds(plan.step_s, 2650e-9, "step");
    offload_plan_free(&plan);
}

Test(offload_plan, reads_from_nvme_through_staging_when_dram_is_short) {
    /* 300 B streamed > 250 B of DRAM: 2 staging buffers of 100 B leave
     * 50 B, no room for a layer, so layers 0-2 come from the file. */
    offload_plan plan = make_ok(small_shape(), request(450, 250, 1));
    assert_tiers(&plan, "DDDG");
    cr_assert_eq(plan.host_staging_bytes, 200);
    cr_assert_eq(plan.host_total_bytes, 200);
    cr_assert_eq(plan.step_disk_bytes, 300);
    cr_assert_eq(plan.step_link_bytes, 300);
    /* disk 300 B / 1 GB/s = 300 ns is the bound */
    assert_seconds(plan.disk_s, 300e-9, "disk");
    assert_seconds(plan.step_s, 300e-9, "step");
    offload_plan_free(&plan);

    /* Nothing resident (400 B of GPU), 350 B of DRAM: 400 B streamed do
     * not fit, staging takes 200 B, one layer (100 B) fits in the rest. */
    plan = make_ok(small_shape(), request(400, 350, 1));
    assert_tiers(&plan, "HDDD");
    cr_assert_eq(plan.host_total_bytes, 300);
    cr_assert_eq(plan.step_disk_bytes, 300);
    offload_plan_free(&plan);
}

Test(offload_plan, moves_the_kv_cache_to_dram_when_it_does_not_fit_beside_the_slots) {
    /* 260 + 80 = 340 > 300: KV in pinned DRAM, which the kernels read in
     * place (no device memory for it: 260 B on the GPU, 40 B unused since
     * no layer fits); its 80 B cross the link every step and are not read
     * from device memory (400 weights + 50 globals). */
    offload_plan plan = make_ok(small_shape(), request(300, 1000, 1));
    assert_tiers(&plan, "HHHH");
    cr_assert_eq(plan.kv_tier, OFFLOAD_TIER_HOST);
    cr_assert_eq(plan.gpu_kv_bytes, 0);
    cr_assert_eq(plan.gpu_total_bytes, 260);
    cr_assert_eq(plan.host_kv_bytes, 80);
    cr_assert_eq(plan.host_total_bytes, 480);
    cr_assert_eq(plan.step_link_bytes, 480);
    cr_assert_eq(plan.step_gpu_read_bytes, 450);
    cr_assert_eq(plan.gpu_budget_bytes, 300);
    cr_assert_eq(plan.host_budget_bytes, 1000);
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    offload_plan_print(&plan, out);
    fclose(out);
    cr_assert(strstr(text, "kv cache       dram  (pinned host memory"), "plan:\n%s", text);
    free(text);
    offload_plan_free(&plan);
}

Test(offload_plan, the_kv_cache_stays_on_the_gpu_while_it_fits_beside_the_slots) {
    /* 260 + 80 = 340 <= 340: the KV cache fits exactly. */
    offload_plan plan = make_ok(small_shape(), request(340, 1000, 1));
    cr_assert_eq(plan.kv_tier, OFFLOAD_TIER_GPU);
    cr_assert_eq(plan.gpu_kv_bytes, 80);
    cr_assert_eq(plan.host_kv_bytes, 0);
    offload_plan_free(&plan);
    /* one byte less: DRAM */
    plan = make_ok(small_shape(), request(339, 1000, 1));
    cr_assert_eq(plan.kv_tier, OFFLOAD_TIER_HOST);
    offload_plan_free(&plan);
}

Test(offload_plan, a_kv_cache_too_big_for_the_gpu_and_for_dram_is_refused_naming_its_size) {
    offload_model_shape shape = small_shape();
    offload_request r = request(300, 79, 1);
    offload_plan plan;
    cr_assert_eq(offload_plan_make(&shape, &r, &slow_links, &plan), FERRY_ERR_NO_MEMORY);
    const char *message = ferry_last_error();
    cr_assert(strstr(message, "needs at least 80 B of host memory for the KV cache"), "message: %s",
              message);
    cr_assert(strstr(message, "the budget is 79 B"), "message: %s", message);
    cr_assert_null(plan.layer_tier);
}

Test(offload_plan, an_impossible_gpu_budget_names_the_memory_it_needs) {
    offload_model_shape shape = small_shape();
    offload_request r = request(259, 1000, 1);
    offload_plan plan;
    cr_assert_eq(offload_plan_make(&shape, &r, &slow_links, &plan), FERRY_ERR_NO_MEMORY);
    const char *message = ferry_last_error();
    cr_assert(strstr(message, "needs at least 260 B of GPU memory for 2 slots of 100 B (+ globals "
                              "and activations 60 B), with the KV cache (80 B) in DRAM"),
              "message: %s", message);
    cr_assert(strstr(message, "the budget is 259 B"), "message: %s", message);
    cr_assert_null(plan.layer_tier);
}

Test(offload_plan, too_little_dram_for_the_nvme_staging_is_refused) {
    offload_model_shape shape = small_shape();
    offload_request r = request(450, 150, 1);
    offload_plan plan;
    cr_assert_eq(offload_plan_make(&shape, &r, &slow_links, &plan), FERRY_ERR_NO_MEMORY);
    cr_assert(strstr(ferry_last_error(), "needs at least 200 B of host memory for 2 staging "
                                         "buffers of 100 B"),
              "message: %s", ferry_last_error());
}

Test(offload_plan, a_forced_resident_count_is_honoured_or_refused) {
    offload_request r = request(450, 1000, 1);
    r.resident_layers = 0;
    offload_plan plan = make_ok(small_shape(), r);
    assert_tiers(&plan, "HHHH");
    offload_plan_free(&plan);

    offload_model_shape shape = small_shape();
    r.resident_layers = 2;
    cr_assert_eq(offload_plan_make(&shape, &r, &slow_links, &plan), FERRY_ERR_NO_MEMORY);
    cr_assert(strstr(ferry_last_error(), "2 resident layers need 200 B of GPU memory"), "%s",
              ferry_last_error());
    r.resident_layers = 4;
    cr_assert_eq(offload_plan_make(&shape, &r, &slow_links, &plan), FERRY_ERR_NO_MEMORY);
    cr_assert(strstr(ferry_last_error(), "needs at least 540 B of GPU memory for all 4 layers"),
              "%s", ferry_last_error());
    r.resident_layers = 5;
    cr_assert_eq(offload_plan_make(&shape, &r, &slow_links, &plan), FERRY_ERR_INVALID_ARGUMENT);
}

Test(offload_plan, auto_batch_stops_where_the_link_stops_being_the_bound) {
    /* Every layer in DRAM: the link takes 400 B / 0.1 GB/s = 4 us per
     * step; compute takes 1000 FLOP x batch / 1 GFLOP/s = batch us.  So
     * tokens/s = batch / max(4 us, batch us): rising until batch 4, flat
     * after; the smallest batch of the best throughput is 4.  No globals:
     * no compute between steps, so the ring's pipeline (a copy of 1 us
     * per layer, a compute of batch / 4 us) never leaves the link idle
     * up to batch 4 nor the device after. */
    offload_model_shape shape = small_shape();
    shape.globals_bytes = 0;
    shape.kv_bytes_per_token_layer = 0;
    shape.activation_bytes_per_token = 0;
    shape.flops_per_token = 1000;
    offload_bandwidths links = {0.1, 1.0, 1000.0, 1e-3, 0.0};
    offload_request r = request(250, 1000, 0);
    offload_plan plan;
    cr_assert_eq(offload_plan_make(&shape, &r, &links, &plan), FERRY_OK, "%s", ferry_last_error());
    cr_assert_eq(plan.batch, 4);
    cr_assert(fabs(plan.tokens_per_s - 1e6) < 1e-3, "%g tokens/s", plan.tokens_per_s);
    offload_plan_free(&plan);
}

/* Layer sizes, budgets and links drawn at random. */
typedef struct random_case {
    uint64_t layers[24];
    offload_model_shape shape;
    offload_request request;
    offload_bandwidths links;
} random_case;

static void draw_case(uint64_t *state, random_case *c) {
    memset(c, 0, sizeof *c);
    c->shape.n_layers = 1 + (int)(test_rand_u64(state) % 24);
    for (int i = 0; i < c->shape.n_layers; i++) c->layers[i] = 1000 + test_rand_u64(state) % 9000;
    c->shape.layer_bytes = c->layers;
    c->shape.globals_bytes = test_rand_u64(state) % 20000;
    c->shape.kv_bytes_per_token_layer = test_rand_u64(state) % 64;
    c->shape.activation_bytes_per_token = test_rand_u64(state) % 100;
    c->shape.activation_fixed_bytes = test_rand_u64(state) % 1000;
    c->shape.max_tokens_per_pass = (int)(test_rand_u64(state) % 3) * 256;
    c->shape.carried_bytes_per_token = test_rand_u64(state) % 50;
    c->shape.max_tokens_carried = (int)(test_rand_u64(state) % 3) * 1024;
    c->shape.flops_per_token = test_rand_u64(state) % 100000;
    c->request.gpu_mem_bytes = test_rand_u64(state) % 200000;
    c->request.host_mem_bytes = test_rand_u64(state) % 200000;
    c->request.batch = (int)(test_rand_u64(state) % 9); /* 0 = auto */
    c->request.max_auto_batch = 64;
    c->request.context = 1 + (int)(test_rand_u64(state) % 300);
    c->request.n_slots = (int)(test_rand_u64(state) % 5);
    c->request.resident_layers = -1;
    c->links.host_to_gpu_gbps = 0.5 + (double)(test_rand_u64(state) % 100);
    c->links.disk_read_gbps = 0.5 + (double)(test_rand_u64(state) % 20);
    c->links.gpu_memory_gbps = 10 + (double)(test_rand_u64(state) % 3000);
    c->links.gpu_tflops = (double)(test_rand_u64(state) % 4) * 1e-4;
}

Test(offload_plan, random_plans_never_exceed_either_budget_and_add_up) {
    uint64_t state = test_seed();
    int n_ok = 0, n_refused = 0;
    for (int trial = 0; trial < 400; trial++) {
        random_case c;
        draw_case(&state, &c);
        offload_plan plan;
        ferry_status status = offload_plan_make(&c.shape, &c.request, &c.links, &plan);
        if (status != FERRY_OK) {
            cr_assert_eq(status, FERRY_ERR_NO_MEMORY, "trial %d: %s", trial, ferry_last_error());
            cr_assert(strstr(ferry_last_error(), "needs at least"), "trial %d: %s", trial,
                      ferry_last_error());
            n_refused++;
            continue;
        }
        n_ok++;
        /* Recount the memory from the tiers, independently of the plan's sums. */
        uint64_t resident = 0, in_dram = 0, largest = 0, streamed = 0;
        int n[OFFLOAD_TIER_COUNT] = {0};
        for (int i = 0; i < c.shape.n_layers; i++) {
            n[plan.layer_tier[i]]++;
            if (c.layers[i] > largest) largest = c.layers[i];
            if (plan.layer_tier[i] == OFFLOAD_TIER_GPU) resident += c.layers[i];
            else streamed += c.layers[i];
            if (plan.layer_tier[i] == OFFLOAD_TIER_HOST) in_dram += c.layers[i];
        }
        cr_assert_eq(n[0], plan.n_resident);
        cr_assert_eq(n[1], plan.n_host);
        cr_assert_eq(n[2], plan.n_disk);
        uint64_t tokens = (uint64_t)plan.batch * (uint64_t)plan.context;
        uint64_t in_flight = tokens;
        if (c.shape.max_tokens_per_pass && in_flight > (uint64_t)c.shape.max_tokens_per_pass)
            in_flight = (uint64_t)c.shape.max_tokens_per_pass;
        /* Carried tokens: streamed, whole chunks of in_flight up to the
         * limit; all resident, one chunk (each goes through every layer
         * before the next). */
        uint64_t carried = tokens;
        if (c.shape.max_tokens_carried && carried > (uint64_t)c.shape.max_tokens_carried)
            carried = (uint64_t)c.shape.max_tokens_carried;
        while (carried % in_flight) carried++;
        if (!streamed) carried = in_flight;
        uint64_t kv_layer = tokens * c.shape.kv_bytes_per_token_layer;
        uint64_t kv_on_gpu =
            plan.kv_tier == OFFLOAD_TIER_GPU ? kv_layer * (uint64_t)c.shape.n_layers : 0;
        uint64_t slots = streamed ? (uint64_t)plan.n_slots * largest : 0;
        uint64_t gpu = c.shape.globals_bytes + c.shape.activation_fixed_bytes +
                       in_flight * c.shape.activation_bytes_per_token +
                       carried * c.shape.carried_bytes_per_token + resident + slots +
                       kv_on_gpu;
        uint64_t host = in_dram + (n[2] ? (uint64_t)plan.n_slots * largest : 0) +
                        (plan.kv_tier == OFFLOAD_TIER_HOST ? kv_layer * c.shape.n_layers : 0);
        cr_assert_eq(gpu, plan.gpu_total_bytes, "trial %d", trial);
        cr_assert_eq(host, plan.host_total_bytes, "trial %d", trial);
        cr_assert_leq(gpu, c.request.gpu_mem_bytes, "trial %d", trial);
        cr_assert_leq(host, c.request.host_mem_bytes, "trial %d", trial);
        /* Resident layers spread over the step: layer i when the share
         * i x R / L passes an integer at i (R of L layers) ... */
        const int n_layers = c.shape.n_layers, count = plan.n_resident;
        for (int i = 0; i < n_layers && count < n_layers; i++) {
            int passes = (i + 1) * count / n_layers > i * count / n_layers;
            cr_assert_eq(plan.layer_tier[i] == OFFLOAD_TIER_GPU, passes,
                         "trial %d: layer %d of %d with %d resident", trial, i, n_layers, count);
        }
        /* ... and no larger spread set (short of all) fits beside the rest. */
        for (int more = count + 1; count < n_layers && more < n_layers; more++) {
            uint64_t bytes = 0;
            for (int i = 0; i < n_layers; i++)
                if ((i + 1) * more / n_layers > i * more / n_layers) bytes += c.layers[i];
            cr_assert_gt(gpu - resident + bytes, c.request.gpu_mem_bytes,
                         "trial %d: %d resident layers would fit, the plan kept %d", trial, more,
                         count);
        }
        cr_assert_eq(plan.step_disk_bytes,
                     streamed - in_dram, "trial %d: nvme bytes per step", trial);
        /* The step is the busiest lane, or the ring's pipeline where its
         * waits make it longer; never more than every lane one after
         * another, and the device lane is in the pipeline whole. */
        double lanes[] = {plan.link_s, plan.disk_s, plan.gpu_memory_s, plan.compute_s};
        double longest = 0;
        for (int i = 0; i < 4; i++) longest = lanes[i] > longest ? lanes[i] : longest;
        double gpu_s = plan.gpu_memory_s > plan.compute_s ? plan.gpu_memory_s : plan.compute_s;
        cr_assert_eq(plan.step_s, plan.pipeline_s > longest ? plan.pipeline_s : longest,
                     "trial %d", trial);
        cr_assert_geq(plan.pipeline_s, gpu_s * (1 - 1e-9), "trial %d", trial);
        cr_assert_leq(plan.step_s, (plan.link_s + plan.disk_s + gpu_s) * (1 + 1e-9),
                      "trial %d: step %g s, link %g, nvme %g, device %g", trial, plan.step_s,
                      plan.link_s, plan.disk_s, gpu_s);
        cr_assert(fabs(plan.tokens_per_s * plan.step_s - plan.batch) < 1e-6 * plan.batch);
        offload_plan_free(&plan);
    }
    cr_assert(n_ok > 20 && n_refused > 20, "%d plans, %d refusals: draws too one-sided", n_ok,
              n_refused);
}

Test(offload_plan, auto_batch_matches_a_search_over_every_fixed_batch) {
    uint64_t state = test_seed();
    for (int trial = 0; trial < 60; trial++) {
        random_case c;
        draw_case(&state, &c);
        c.request.batch = 0;
        offload_plan best;
        if (offload_plan_make(&c.shape, &c.request, &c.links, &best) != FERRY_OK) continue;
        double best_seen = -1;
        int best_batch = 0;
        for (int batch = 1; batch <= c.request.max_auto_batch; batch++) {
            offload_request fixed = c.request;
            fixed.batch = batch;
            offload_plan plan;
            if (offload_plan_make(&c.shape, &fixed, &c.links, &plan) != FERRY_OK) continue;
            if (plan.tokens_per_s > best_seen * (1 + 1e-9)) {
                best_seen = plan.tokens_per_s;
                best_batch = batch;
            }
            offload_plan_free(&plan);
        }
        cr_assert_eq(best.batch, best_batch, "trial %d", trial);
        offload_plan_free(&best);
    }
}

Test(offload_plan, prints_layer_ranges_tiers_and_the_prediction) {
    offload_plan plan = make_ok(small_shape(), request(400, 350, 1));
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    offload_plan_print(&plan, out);
    fclose(out);
    const char *expected[] = {"batch 1, context 10, 2 GPU slots of 100 B",
                              "  dram           0\n", "  nvme           1-3\n",
                              "kv cache       gpu", "nvme read 300 B", "tokens/s"};
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
        cr_assert(strstr(text, expected[i]), "missing '%s' in:\n%s", expected[i], text);
    free(text);
    offload_plan_free(&plan);
}

Test(offload_plan, bad_inputs_are_refused_not_crashed_on) {
    offload_model_shape shape = small_shape();
    offload_request r = request(1000, 1000, 1);
    offload_plan plan;
    offload_bandwidths zero_link = slow_links;
    zero_link.host_to_gpu_gbps = 0;
    cr_assert_eq(offload_plan_make(&shape, &r, &zero_link, &plan), FERRY_ERR_INVALID_ARGUMENT);
    r.context = 0;
    cr_assert_eq(offload_plan_make(&shape, &r, &slow_links, &plan), FERRY_ERR_INVALID_ARGUMENT);
    r = request(1000, 1000, 1);
    shape.n_layers = 0;
    cr_assert_eq(offload_plan_make(&shape, &r, &slow_links, &plan), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(offload_plan_make(NULL, &r, &slow_links, &plan), FERRY_ERR_INVALID_ARGUMENT);
    cr_assert_eq(offload_plan_make(&shape, &r, &slow_links, NULL), FERRY_ERR_INVALID_ARGUMENT);
}

Test(offload_plan, sizes_print_in_binary_units) {
    char buf[32];
    cr_assert_str_eq(offload_format_bytes(17, buf, sizeof buf), "17 B");
    cr_assert_str_eq(offload_format_bytes(4096, buf, sizeof buf), "4 KiB");
    cr_assert_str_eq(offload_format_bytes(3u << 29, buf, sizeof buf), "1.50 GiB");
}
