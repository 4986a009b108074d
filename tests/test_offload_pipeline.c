/*
 * test_offload_pipeline.c — the plan's simulation of a step as the slot
 * ring runs it, against steady states worked out by hand (in the
 * comments): a link-bound and a compute-bound ring, one slot (no
 * overlap), NVMe reads as the bound, resident layers clustered at the
 * start against spread over the step.  (test_offload_plan.c checks the
 * plan feeding it.)
 */
#include <criterion/criterion.h>
#include <math.h>

#include "offload/offload.h"

/* Every layer 100 B over a 100 B/s link: a copy takes 1 s. */
static const uint64_t hundred_bytes[8] = {100, 100, 100, 100, 100, 100, 100, 100};

static offload_tier tiers[8];

/* A pipeline over layers whose tiers are "GHD" letters, each computing
 * for compute_s seconds (no device share), with n_slots slots. */
static offload_pipeline pipeline(const char *letters, int n_slots, double compute_s) {
    offload_pipeline p = {0};
    p.n_layers = (int)strlen(letters);
    cr_assert_leq(p.n_layers, 8);
    for (int i = 0; i < p.n_layers; i++)
        tiers[i] = letters[i] == 'G'   ? OFFLOAD_TIER_GPU
                   : letters[i] == 'H' ? OFFLOAD_TIER_HOST
                                       : OFFLOAD_TIER_DISK;
    p.layer_tier = tiers;
    p.layer_bytes = hundred_bytes;
    p.n_slots = n_slots;
    p.link_bytes_per_s = 100;
    p.disk_bytes_per_s = 100;
    p.compute_s_per_layer = compute_s;
    return p;
}

static void assert_step(const offload_pipeline *p, double expected_s, const char *what) {
    double got = offload_pipeline_step_s(p);
    cr_assert(fabs(got - expected_s) <= 1e-9 * expected_s, "%s: step %.9g s, expected %.9g s",
              what, got, expected_s);
}

Test(offload_pipeline, computes_shorter_than_copies_leave_the_step_link_bound) {
    /* Copy g waits for slot g mod 2, free once compute g - 2 ended at
     * copy_end(g - 2) + 0.25 <= copy_end(g - 1): the link never idles,
     * 4 copies of 1 s a step. */
    offload_pipeline p = pipeline("HHHH", 2, 0.25);
    assert_step(&p, 4.0, "link bound");
}

Test(offload_pipeline, computes_longer_than_copies_leave_the_step_compute_bound) {
    /* Copy g starts when compute g - 2 ends and lands 1 s later, before
     * compute g - 1 (3 s) ends: computes never wait, 4 x 3 s. */
    offload_pipeline p = pipeline("HHHH", 2, 3.0);
    assert_step(&p, 12.0, "compute bound");
}

Test(offload_pipeline, one_slot_serialises_each_copy_with_the_compute_before_it) {
    /* The only slot is refilled after its compute: copy 1 s, then
     * compute 0.5 s, per layer. */
    offload_pipeline p = pipeline("HHHH", 1, 0.5);
    assert_step(&p, 6.0, "one slot");
}

Test(offload_pipeline, nvme_reads_bound_the_step_when_slower_than_the_link) {
    /* Reads of 2 s back to back (each staging buffer is free long before
     * its next read), copies of 1 s behind them: 4 x 2 s. */
    offload_pipeline p = pipeline("DDDD", 2, 0.25);
    p.disk_bytes_per_s = 50;
    assert_step(&p, 8.0, "nvme bound");
}

Test(offload_pipeline, resident_layers_spread_keep_the_link_busy_where_clustered_ones_do_not) {
    /* Copies 1 s, computes 0.75 s, 2 slots, 4 of 8 layers resident.
     * Clustered (layers 0-3): copy of layer 7 ends at a, compute 7 runs
     * to a + 0.75; the next step's layers 4 and 5 copy in [a, a + 2];
     * layers 0-3 compute to a + 3.75, 4 to a + 4.5, when its slot frees
     * for layer 6 (link idle 2.5 s): 6 copies in [a + 4.5, a + 5.5], 7 in
     * [a + 5.5, a + 6.5]: a step of 6.5 s.  Spread (layers 1, 3, 5, 7):
     * between the end of compute g - 2 and the start of compute g run
     * three computes (2.25 s > a 1 s copy): computes never wait, 8 x
     * 0.75 s. */
    offload_pipeline clustered = pipeline("GGGGHHHH", 2, 0.75);
    assert_step(&clustered, 6.5, "clustered");
    offload_pipeline spread = pipeline("HGHGHGHG", 2, 0.75);
    assert_step(&spread, 6.0, "spread");
}

Test(offload_pipeline, device_time_by_bytes_and_the_tail_add_up_when_all_is_resident) {
    /* 3 layers x (100 B x 0.01 s/B + 0.5 s) + 2 s of globals. */
    offload_pipeline p = pipeline("GGG", 0, 0.5);
    p.compute_s_per_byte = 0.01;
    p.tail_s = 2.0;
    assert_step(&p, 6.5, "all resident");
}
