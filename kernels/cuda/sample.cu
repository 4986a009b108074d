/*
 * sample.cu — the sample op: each logits row's next token chosen on the
 * device, one block per row, so only token ids leave it.  The choice is
 * the host sampler's (runtime/sampler.c, ferry_sampler_pick).  Greedy is
 * one max reduction.  Sampling needs no sort: a token's probability grows
 * with its logit, so the top-k and top-p boundaries and the drawn token
 * are found by a radix search over the logits' ordered 32-bit keys, 4 bits
 * a round, from the count and the softmax weight (float64) of each
 * digit's tokens; inside a group of equal logits the lower id comes first,
 * as on the host.  Once the candidates are few (top-k, or the top-p
 * nucleus, of at most LIST_CAPACITY tokens), they are gathered into shared
 * memory and the later searches read only them.  The unfiltered draw
 * walks in id order, as the host does.  Sums run in a fixed order (the same logits and rule give the
 * same token every time), but not in the host's, so a draw within float
 * rounding of a boundary may take the neighbour.  Hot path: no
 * allocation, one launch.
 */
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/warp.cuh"

enum {
    SAMPLE_THREADS = 256,
    SAMPLE_WARPS = SAMPLE_THREADS / 32,
    DIGIT_BITS = 4,
    N_DIGITS = 1 << DIGIT_BITS,
    N_ROUNDS = 32 / DIGIT_BITS,
    MAX_TOKENS_PER_THREAD = 65535, /* a thread's digit counts are 16-bit */
    LIST_CAPACITY = 512,        /* candidates gathered into shared memory */
};

/* The keys of the values that need care (see logit_key). */
static constexpr uint32_t KEY_NAN = 0u;
static constexpr uint32_t KEY_MINUS_INF = 0x007fffffu;
static constexpr uint32_t KEY_PLUS_INF = 0xff800000u;

/* Shared memory of one row's block: the per-thread digit tallies of a
 * radix round, or the per-thread tallies of a contiguous chunk; and the
 * gathered candidates (key and id, in id order). */
struct sample_shared {
    union {
        struct {
            double mass[N_DIGITS][SAMPLE_THREADS];
            unsigned short count[N_DIGITS][SAMPLE_THREADS];
        } radix;
        struct {
            double mass[SAMPLE_THREADS];
            int last[SAMPLE_THREADS];
            int count[SAMPLE_THREADS];
        } chunk;
    };
    double digit_mass[N_DIGITS];
    int digit_count[N_DIGITS];
    unsigned long long warp_best[SAMPLE_WARPS];
    uint32_t list_keys[LIST_CAPACITY];
    int list_ids[LIST_CAPACITY];
    int list_count;
    int token;
};

/* ------------------------------------------------------------ keys */

/* An unsigned key that orders like the float: key(a) > key(b) exactly
 * when a > b.  -0 is +0's key; NaN is 0, below every number (the key of
 * -inf is 0x007fffff).  Bit tests only: no float compare, which
 * --use_fast_math would flush for subnormals. */
__device__ __forceinline__ uint32_t logit_key(float value) {
    uint32_t bits = __float_as_uint(value);
    const uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return KEY_NAN;
    if (magnitude == 0) bits = 0;
    return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

/* The logit of a key (not NaN's) as a double, exactly: a subnormal is
 * built from its mantissa, since the float unit flushes it. */
__device__ __forceinline__ double key_value(uint32_t key) {
    const uint32_t bits = (key & 0x80000000u) ? key & 0x7fffffffu : ~key;
    const uint32_t magnitude = bits & 0x7fffffffu;
    const double value = (magnitude >> 23) == 0 ? (double)magnitude * 0x1p-149
                                                : (double)__uint_as_float(magnitude);
    return (bits >> 31) ? -value : value;
}

typedef struct softmax_params {
    double max_logit;           /* the largest logit (finite) */
    double temperature;
} softmax_params;

/* e^((logit - max) / T) in float64, as the host computes it; NaN weighs 0. */
__device__ __forceinline__ double key_weight(uint32_t key, const softmax_params &softmax) {
    return key == KEY_NAN ? 0.0 : exp((key_value(key) - softmax.max_logit) / softmax.temperature);
}

/* Thread t's contiguous share [begin, end) of the row. */
__device__ __forceinline__ void chunk_of(int t, int vocab, int *begin, int *end) {
    const int chunk = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    *begin = min(t * chunk, vocab);
    *end = min(*begin + chunk, vocab);
}

/* The tokens a search reads: the whole row (token i is logit i) ... */
typedef struct row_tokens {
    const float *row;
    int n;
    __device__ uint32_t key(int i) const { return logit_key(row[i]); }
    __device__ int id(int i) const { return i; }
} row_tokens;

/* ... or the candidates gathered into shared memory, in id order. */
typedef struct listed_tokens {
    const uint32_t *keys;
    const int *ids;
    int n;
    __device__ uint32_t key(int i) const { return keys[i]; }
    __device__ int id(int i) const { return ids[i]; }
} listed_tokens;

/* ---------------------------------------------------------- argmax */

/* The largest logit's index, the lowest among ties, NaN never (all NaN:
 * 0), and its key in *out_max_key.  Packing the key above the inverted
 * index makes it one max over 64-bit values. */
__device__ int row_argmax(const float *row, int vocab, sample_shared &shared,
                          uint32_t *out_max_key) {
    unsigned long long best = 0;
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
        const unsigned long long packed =
            (unsigned long long)logit_key(row[i]) << 32 | (0xffffffffu - (uint32_t)i);
        best = packed > best ? packed : best;
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        const unsigned long long other = __shfl_xor_sync(0xffffffffu, best, offset);
        best = other > best ? other : best;
    }
    if (threadIdx.x % 32 == 0) shared.warp_best[threadIdx.x / 32] = best;
    __syncthreads();
    best = 0;
    for (int w = 0; w < SAMPLE_WARPS; w++) best = shared.warp_best[w] > best ? shared.warp_best[w] : best;
    __syncthreads(); /* warp_best is free again */
    *out_max_key = (uint32_t)(best >> 32);
    return *out_max_key == KEY_NAN ? 0 : (int)(0xffffffffu - (uint32_t)best);
}

/* ------------------------------------------------ the draw by id */

/* No top-k, no top-p: the first token in id order whose cumulative weight
 * passes uniform x the total.  Each thread weighs a contiguous chunk; one
 * thread finds the chunk the target falls in and walks it (rounding past
 * its end: the chunk's last token with weight; past the row's: the row's). */
__device__ int draw_by_id(const float *row, int vocab, const softmax_params &softmax,
                          double uniform, int argmax, sample_shared &shared) {
    int begin, end;
    chunk_of(threadIdx.x, vocab, &begin, &end);
    double mass = 0.0;
    int last = -1;
    for (int i = begin; i < end; i++) {
        const double weight = key_weight(logit_key(row[i]), softmax);
        if (weight > 0) {
            mass += weight;
            last = i;
        }
    }
    shared.chunk.mass[threadIdx.x] = mass;
    shared.chunk.last[threadIdx.x] = last;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        int last_any = -1;
        for (int t = 0; t < SAMPLE_THREADS; t++) {
            total += shared.chunk.mass[t];
            if (shared.chunk.last[t] >= 0) last_any = shared.chunk.last[t];
        }
        int token = argmax; /* no weight at all: the host's argmax */
        if (total > 0) {
            const double target = uniform * total;
            double cumulative = 0.0;
            int t = 0;
            while (t < SAMPLE_THREADS && !(target < cumulative + shared.chunk.mass[t]))
                cumulative += shared.chunk.mass[t++];
            token = last_any;
            if (t < SAMPLE_THREADS) {
                token = shared.chunk.last[t];
                chunk_of(t, vocab, &begin, &end);
                for (int i = begin; i < end; i++) {
                    const double weight = key_weight(logit_key(row[i]), softmax);
                    if (weight <= 0) continue;
                    cumulative += weight;
                    if (target < cumulative) {
                        token = i;
                        break;
                    }
                }
            }
        }
        shared.token = token;
    }
    __syncthreads();
    return shared.token;
}

/* ---------------------------------------------------- radix search */

/* The tokens a search ranks (most probable first, then lower id): every
 * token, or (limited) those whose key is above floor_key and the first
 * floor_count by id of those whose key is floor_key, weighing
 * floor_weight each: the candidates an earlier search kept. */
typedef struct candidate_set {
    int limited;
    uint32_t floor_key;
    int floor_count;
    double floor_weight;
} candidate_set;

/* What a search finds: the largest key K such that the candidates with a
 * key >= K number at least goal_value (COUNT_REACHES), or weigh at least
 * (MASS_REACHES) or more than (MASS_PASSES) goal_value x the weight of
 * all the candidates. */
typedef enum search_goal { COUNT_REACHES, MASS_REACHES, MASS_PASSES } search_goal;

/* Where a search ends: the group of candidates with key K. */
typedef struct key_group {
    uint32_t key;
    int count_above;            /* candidates with a greater key */
    double mass_above;          /* and their weight */
    int count;                  /* candidates with key K */
    double weight;              /* the weight of each */
    double threshold;           /* the mass goal (goal_value x the candidates' weight) */
} key_group;

/* The candidates' tally of one digit: the threads' tallies, and the
 * floor group when the digit holds it. */
__device__ __forceinline__ int digit_count(const sample_shared &shared, int digit,
                                           int floor_digit, const candidate_set &set) {
    return shared.digit_count[digit] + (digit == floor_digit ? set.floor_count : 0);
}

__device__ __forceinline__ double digit_mass(const sample_shared &shared, int digit,
                                             int floor_digit, const candidate_set &set) {
    return shared.digit_mass[digit] +
           (digit == floor_digit ? (double)set.floor_count * set.floor_weight : 0.0);
}

/* One round's tallies: every thread counts (and weighs) its tokens whose
 * key lies in the range (bits above `shift + DIGIT_BITS` equal the
 * prefix's; round 0: all) by the digit at `shift`; the floor group is left
 * to digit_count.  Then the threads' tallies are added in a fixed order. */
template <typename Tokens>
__device__ void tally_digits(const Tokens &tokens, const softmax_params &softmax,
                             const candidate_set &set, int round, uint32_t prefix, int weigh,
                             sample_shared &shared) {
    const int tid = threadIdx.x, shift = 32 - DIGIT_BITS * (round + 1);
    for (int d = 0; d < N_DIGITS; d++) {
        shared.radix.mass[d][tid] = 0.0;
        shared.radix.count[d][tid] = 0;
    }
    for (int i = tid; i < tokens.n; i += SAMPLE_THREADS) {
        const uint32_t key = tokens.key(i);
        if (round > 0 && (key >> (shift + DIGIT_BITS)) != (prefix >> (shift + DIGIT_BITS)))
            continue;
        if (set.limited && key <= set.floor_key) continue; /* outside, or the floor group */
        const int d = (key >> shift) & (N_DIGITS - 1);
        shared.radix.count[d][tid]++;
        if (weigh) shared.radix.mass[d][tid] += key_weight(key, softmax);
    }
    __syncthreads();
    const int lane = tid % 32;
    for (int d = tid / 32; d < N_DIGITS; d += SAMPLE_WARPS) {
        double mass = 0.0;
        int count = 0;
        for (int t = lane; t < SAMPLE_THREADS; t += 32) {
            mass += shared.radix.mass[d][t];
            count += shared.radix.count[d][t];
        }
        mass = warp_sum(mass);
        count = warp_sum(count);
        if (lane == 0) {
            shared.digit_mass[d] = mass;
            shared.digit_count[d] = count;
        }
    }
    __syncthreads();
}

/* The search, 4 bits of K a round from the top.  Each round takes the
 * highest digit whose candidates, with those above, meet the goal; if none
 * does (sums of the same tokens in another order can round to just below
 * it), the lowest digit that holds candidates.  Every thread reads the
 * same tallies and makes the same choice. */
template <typename Tokens>
__device__ key_group radix_search(const Tokens &tokens, const softmax_params &softmax,
                                  const candidate_set &set, search_goal goal, double goal_value,
                                  sample_shared &shared) {
    key_group group = {0u, 0, 0.0, 0, 0.0, goal_value};
    uint32_t prefix = 0;
    for (int round = 0; round < N_ROUNDS; round++) {
        const int shift = 32 - DIGIT_BITS * (round + 1);
        tally_digits(tokens, softmax, set, round, prefix, goal != COUNT_REACHES, shared);
        int floor_digit = -1;
        if (set.limited && (round == 0 || (set.floor_key >> (shift + DIGIT_BITS)) ==
                                              (prefix >> (shift + DIGIT_BITS))))
            floor_digit = (set.floor_key >> shift) & (N_DIGITS - 1);
        if (round == 0 && goal != COUNT_REACHES) {
            double total = 0.0;
            for (int d = N_DIGITS - 1; d >= 0; d--) total += digit_mass(shared, d, floor_digit, set);
            group.threshold = goal_value * total;
        }
        int chosen = 0, count = group.count_above;
        double mass = group.mass_above;
        for (int d = N_DIGITS - 1; d >= 0; d--) {
            const int digit_tokens = digit_count(shared, d, floor_digit, set);
            if (digit_tokens == 0) continue;
            chosen = d;
            group.count_above = count;
            group.mass_above = mass;
            group.count = digit_tokens;
            count += digit_tokens;
            mass += digit_mass(shared, d, floor_digit, set);
            const bool met = goal == COUNT_REACHES ? count >= goal_value
                             : goal == MASS_REACHES ? mass >= group.threshold
                                                    : mass > group.threshold;
            if (met) break;
        }
        /* no barrier needed before the next round: the columns it clears
         * were read before this round's last barrier, and the digit
         * totals read above are rewritten only after its first */
        prefix |= (uint32_t)chosen << shift;
    }
    group.key = prefix;
    group.weight = key_weight(prefix, softmax);
    return group;
}

/* The place (from 1) in the group of the token whose cumulative weight
 * first reaches (MASS_REACHES) or passes (MASS_PASSES) the threshold; for
 * a group without weight, or rounding past its end, the last. */
__device__ int rank_in_group(const key_group &group, search_goal goal) {
    if (!(group.weight > 0)) return group.count;
    const double steps = (group.threshold - group.mass_above) / group.weight;
    const double rank = goal == MASS_PASSES ? floor(steps) + 1.0 : ceil(steps);
    if (!(rank >= 1.0)) return 1;
    return rank >= (double)group.count ? group.count : (int)rank;
}

/* The id of the rank-th token (from 1, in id order) whose key is `key`:
 * each thread counts its contiguous chunk, one thread finds the chunk
 * and walks it. */
template <typename Tokens>
__device__ int locate_in_group(const Tokens &tokens, uint32_t key, int rank, sample_shared &shared) {
    int begin, end, count = 0;
    chunk_of(threadIdx.x, tokens.n, &begin, &end);
    for (int i = begin; i < end; i++) count += tokens.key(i) == key;
    shared.chunk.count[threadIdx.x] = count;
    __syncthreads();
    if (threadIdx.x == 0) {
        int before = 0, t = 0;
        while (t < SAMPLE_THREADS - 1 && before + shared.chunk.count[t] < rank)
            before += shared.chunk.count[t++];
        int token = 0;
        chunk_of(t, tokens.n, &begin, &end);
        for (int i = begin; i < end; i++)
            if (tokens.key(i) == key && ++before == rank) {
                token = tokens.id(i);
                break;
            }
        shared.token = token;
    }
    __syncthreads();
    return shared.token;
}

/* The candidates of a limited set (at most LIST_CAPACITY) copied out of
 * the row into shared memory, in id order: each thread counts, in its
 * chunk, the keys above the floor and those at it; one thread turns the
 * counts into starts; each thread copies its chunk's candidates there
 * (of the floor group, only the first floor_count by id). */
__device__ listed_tokens gather_candidates(const float *row, int vocab, const candidate_set &set,
                                           sample_shared &shared) {
    const int tid = threadIdx.x;
    int begin, end, above = 0, at_floor = 0;
    chunk_of(tid, vocab, &begin, &end);
    for (int i = begin; i < end; i++) {
        const uint32_t key = logit_key(row[i]);
        above += key > set.floor_key;
        at_floor += key == set.floor_key;
    }
    shared.chunk.count[tid] = above;
    shared.chunk.last[tid] = at_floor;
    __syncthreads();
    if (tid == 0) { /* exclusive sums, in place */
        int all_above = 0, all_at_floor = 0;
        for (int t = 0; t < SAMPLE_THREADS; t++) {
            const int a = shared.chunk.count[t], f = shared.chunk.last[t];
            shared.chunk.count[t] = all_above;
            shared.chunk.last[t] = all_at_floor;
            all_above += a;
            all_at_floor += f;
        }
        shared.list_count = all_above + min(all_at_floor, set.floor_count);
    }
    __syncthreads();
    int floor_before = shared.chunk.last[tid];
    int at = shared.chunk.count[tid] + min(floor_before, set.floor_count);
    for (int i = begin; i < end; i++) {
        const uint32_t key = logit_key(row[i]);
        const bool kept = key > set.floor_key || (key == set.floor_key && floor_before++ < set.floor_count);
        if (kept) {
            shared.list_keys[at] = key;
            shared.list_ids[at++] = i;
        }
    }
    __syncthreads();
    return listed_tokens{shared.list_keys, shared.list_ids, shared.list_count};
}

/* The shortest prefix of the candidates (most probable first) whose
 * weight reaches top_p of theirs, as a limited set; *out_group: where the
 * search ended. */
template <typename Tokens>
__device__ candidate_set top_p_candidates(const Tokens &tokens, const softmax_params &softmax,
                                          const candidate_set &set, float top_p,
                                          sample_shared &shared, key_group *out_group) {
    *out_group = radix_search(tokens, softmax, set, MASS_REACHES, (double)top_p, shared);
    return candidate_set{1, out_group->key, rank_in_group(*out_group, MASS_REACHES),
                         out_group->weight};
}

/* The token whose cumulative weight, most probable first, passes uniform x
 * the candidates' weight. */
template <typename Tokens>
__device__ int draw_by_weight(const Tokens &tokens, const softmax_params &softmax,
                              const candidate_set &set, double uniform, sample_shared &shared) {
    const key_group group = radix_search(tokens, softmax, set, MASS_PASSES, uniform, shared);
    return locate_in_group(tokens, group.key, rank_in_group(group, MASS_PASSES), shared);
}

/* top-k and top-p over gathered candidates, then the draw. */
__device__ int choose_listed(const listed_tokens &listed, const softmax_params &softmax,
                             const ferry_sample_rule &rule, sample_shared &shared) {
    candidate_set set = {0, 0u, 0, 0.0};
    key_group group;
    if (rule.top_p < 1.0f) set = top_p_candidates(listed, softmax, set, rule.top_p, shared, &group);
    return draw_by_weight(listed, softmax, set, rule.uniform, shared);
}

/* The filtered draw: the top_k most probable, then of those the shortest
 * prefix reaching top_p of their weight, then the draw among what is
 * left, reading the whole row until the candidates fit in the list. */
__device__ int choose_filtered(const float *row, int vocab, const softmax_params &softmax,
                               const ferry_sample_rule &rule, sample_shared &shared) {
    const row_tokens all = {row, vocab};
    candidate_set set = {0, 0u, 0, 0.0};
    if (rule.top_k > 0 && rule.top_k < vocab) {
        const key_group group =
            radix_search(all, softmax, set, COUNT_REACHES, (double)rule.top_k, shared);
        set = candidate_set{1, group.key, rule.top_k - group.count_above, group.weight};
        if (rule.top_k <= LIST_CAPACITY)
            return choose_listed(gather_candidates(row, vocab, set, shared), softmax, rule, shared);
    }
    if (rule.top_p < 1.0f) {
        key_group group;
        set = top_p_candidates(all, softmax, set, rule.top_p, shared, &group);
        if (group.count_above + set.floor_count <= LIST_CAPACITY) {
            const listed_tokens listed = gather_candidates(row, vocab, set, shared);
            return draw_by_weight(listed, softmax, candidate_set{0, 0u, 0, 0.0}, rule.uniform,
                                  shared);
        }
    }
    return draw_by_weight(all, softmax, set, rule.uniform, shared);
}

/* ---------------------------------------------------------- a row */

__device__ int choose_token(const float *row, int vocab, const ferry_sample_rule &rule,
                            sample_shared &shared) {
    uint32_t max_key;
    const int argmax = row_argmax(row, vocab, shared, &max_key);
    if (rule.greedy) return argmax;
    const bool unfiltered = rule.top_k == 0 && rule.top_p >= 1.0f;
    /* No finite largest logit.  Every logit NaN or -inf: no weight
     * anywhere, and the host takes the argmax unfiltered, its first
     * candidate (token 0) filtered.  +inf: the host's weights are NaN; the
     * argmax is the one sensible choice. */
    if (max_key == KEY_NAN || max_key == KEY_MINUS_INF) return unfiltered ? argmax : 0;
    if (max_key == KEY_PLUS_INF) return argmax;
    const softmax_params softmax = {key_value(max_key), (double)rule.temperature};
    if (unfiltered) return draw_by_id(row, vocab, softmax, rule.uniform, argmax, shared);
    return choose_filtered(row, vocab, softmax, rule, shared);
}

/* One block per row: out_tokens[row] = the token rules[row] picks. */
__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(int32_t *out_tokens, const float *logits, const ferry_sample_rule *rules,
                  int vocab) {
    __shared__ sample_shared shared;
    pdl_trigger();
    pdl_wait();
    const size_t row = blockIdx.x;
    const ferry_sample_rule rule = rules[row];
    const int token = choose_token(logits + row * (size_t)vocab, vocab, rule, shared);
    if (threadIdx.x == 0) out_tokens[row] = token;
}

ferry_status cuda_sample(ferry_backend *backend, int32_t *out_tokens, const float *logits,
                         const ferry_sample_rule *rules, int n, int vocab) {
    const int max_vocab = SAMPLE_THREADS * MAX_TOKENS_PER_THREAD;
    if (n <= 0) return FERRY_OK;
    if (vocab < 1 || vocab > max_vocab)
        return ferry_fail(FERRY_ERR_INVALID_ARGUMENT,
                          "cuda: sample: a vocabulary of %d tokens (the kernel takes 1..%d)",
                          vocab, max_vocab);
    CUDA_TRY(cuda_launch(cuda_state(backend), sample_kernel, (unsigned)n, SAMPLE_THREADS,
                         out_tokens, logits, rules, vocab));
    return FERRY_OK;
}
