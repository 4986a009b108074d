/*
 * tokenizer_bpe.c — the BPE model: the vocabulary hash (text -> id), the
 * merge-rank hash ((left, right) -> rank, merged id) and the merge of one
 * word, done as HF's Word::merge_all does it (a min-heap on (rank,
 * position), stale entries skipped), so ties break the same way.
 * Hot path: tk_bpe_word runs per pre-tokenized word and allocates only
 * when its scratch must grow.
 */
#include <stdlib.h>
#include <xxhash.h>

#include "runtime/tokenizer_internal.h"

/* --------------------------------------------------------- vocabulary */

ferry_status tk_vocab_init(tk_vocab *vocab, int32_t n_ids) {
    *vocab = (tk_vocab){0};
    size_t capacity = 16;
    while (capacity < (size_t)n_ids * 2) capacity *= 2;
    if (ferry_calloc((size_t)n_ids + 1, sizeof *vocab->text, "tokenizer vocabulary",
                     (void **)&vocab->text) != FERRY_OK ||
        ferry_calloc((size_t)n_ids + 1, sizeof *vocab->bytes, "tokenizer vocabulary",
                     (void **)&vocab->bytes) != FERRY_OK ||
        ferry_malloc(capacity * sizeof *vocab->slots, "tokenizer vocabulary index",
                     (void **)&vocab->slots) != FERRY_OK) {
        tk_vocab_free(vocab);
        return FERRY_ERR_NO_MEMORY;
    }
    memset(vocab->slots, 0xFF, capacity * sizeof *vocab->slots);
    vocab->n_ids = n_ids;
    vocab->mask = capacity - 1;
    return FERRY_OK;
}

static size_t vocab_slot(const tk_vocab *vocab, const char *text, size_t bytes, int *found) {
    size_t slot = (size_t)XXH3_64bits(text, bytes) & vocab->mask;
    for (;; slot = (slot + 1) & vocab->mask) {
        int32_t id = vocab->slots[slot];
        if (id < 0) {
            *found = 0;
            return slot;
        }
        if (vocab->bytes[id] == bytes && memcmp(vocab->text[id], text, bytes) == 0) {
            *found = 1;
            return slot;
        }
    }
}

ferry_status tk_vocab_set(tk_vocab *vocab, int32_t id, const char *text, size_t bytes) {
    if (id < 0 || id >= vocab->n_ids)
        return ferry_fail(FERRY_ERR_FORMAT, "tokenizer: token id %d out of range", (int)id);
    if (vocab->text[id]) {
        /* an id given twice: the earlier text leaves the index */
        int found = 0;
        size_t slot = vocab_slot(vocab, vocab->text[id], vocab->bytes[id], &found);
        if (found && vocab->slots[slot] == id) {
            /* re-insert the cluster after the removed slot (open addressing) */
            vocab->slots[slot] = -1;
            for (size_t next = (slot + 1) & vocab->mask; vocab->slots[next] >= 0;
                 next = (next + 1) & vocab->mask) {
                int32_t moved = vocab->slots[next];
                vocab->slots[next] = -1;
                size_t to = vocab_slot(vocab, vocab->text[moved], vocab->bytes[moved], &found);
                vocab->slots[to] = moved;
            }
        }
        free(vocab->text[id]);
        vocab->text[id] = NULL;
    }
    char *copy = malloc(bytes + 1);
    if (!copy) return ferry_fail(FERRY_ERR_NO_MEMORY, "tokenizer: out of memory for a token");
    memcpy(copy, text, bytes);
    copy[bytes] = '\0';
    vocab->text[id] = copy;
    vocab->bytes[id] = (uint32_t)bytes;
    int found = 0;
    size_t slot = vocab_slot(vocab, text, bytes, &found);
    if (!found) vocab->slots[slot] = id;
    return FERRY_OK;
}

int32_t tk_vocab_find(const tk_vocab *vocab, const char *text, size_t bytes) {
    if (!vocab->slots) return -1;
    int found = 0;
    size_t slot = vocab_slot(vocab, text, bytes, &found);
    return found ? vocab->slots[slot] : -1;
}

void tk_vocab_free(tk_vocab *vocab) {
    for (int32_t i = 0; vocab->text && i < vocab->n_ids; i++) free(vocab->text[i]);
    free(vocab->text);
    free(vocab->bytes);
    free(vocab->slots);
    *vocab = (tk_vocab){0};
}

/* ------------------------------------------------------------ merges */

ferry_status tk_merges_init(tk_merges *merges, size_t expected) {
    *merges = (tk_merges){0};
    size_t capacity = 16;
    while (capacity < expected * 2) capacity *= 2;
    if (ferry_malloc(capacity * sizeof *merges->keys, "merge table", (void **)&merges->keys) ||
        ferry_malloc(capacity * sizeof *merges->ranks, "merge table", (void **)&merges->ranks) ||
        ferry_malloc(capacity * sizeof *merges->merged_ids, "merge table",
                     (void **)&merges->merged_ids)) {
        tk_merges_free(merges);
        return FERRY_ERR_NO_MEMORY;
    }
    memset(merges->keys, 0xFF, capacity * sizeof *merges->keys);
    merges->mask = capacity - 1;
    return FERRY_OK;
}

static size_t merge_slot(const tk_merges *merges, uint64_t key) {
    uint64_t hash = key * 0x9E3779B97F4A7C15ull;
    size_t slot = (size_t)(hash >> 20) & merges->mask;
    while (merges->keys[slot] != UINT64_MAX && merges->keys[slot] != key)
        slot = (slot + 1) & merges->mask;
    return slot;
}

void tk_merges_put(tk_merges *merges, int32_t left, int32_t right, uint32_t rank, int32_t merged) {
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t slot = merge_slot(merges, key);
    if (merges->keys[slot] == UINT64_MAX) merges->count++;
    merges->keys[slot] = key;
    merges->ranks[slot] = rank;
    merges->merged_ids[slot] = merged;
}

int tk_merges_get(const tk_merges *merges, int32_t left, int32_t right, uint32_t *rank,
                  int32_t *merged) {
    if (!merges->keys) return 0;
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t slot = merge_slot(merges, key);
    if (merges->keys[slot] == UINT64_MAX) return 0;
    *rank = merges->ranks[slot];
    *merged = merges->merged_ids[slot];
    return 1;
}

void tk_merges_free(tk_merges *merges) {
    free(merges->keys);
    free(merges->ranks);
    free(merges->merged_ids);
    *merges = (tk_merges){0};
}

/* ------------------------------------------------------- word merging */

typedef struct tk_symbol {
    int32_t id;
    int32_t prev, next;         /* -1 at the ends */
    uint32_t bytes;             /* 0 once merged into its left neighbour */
} tk_symbol;

typedef struct tk_merge_entry {
    uint32_t rank;
    uint32_t position;
    int32_t merged;
} tk_merge_entry;

static int entry_before(const tk_merge_entry *a, const tk_merge_entry *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->position < b->position;
}

static void heap_push(tk_merge_entry *heap, size_t *count, tk_merge_entry entry) {
    size_t i = (*count)++;
    while (i > 0 && entry_before(&entry, &heap[(i - 1) / 2])) {
        heap[i] = heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    heap[i] = entry;
}

static tk_merge_entry heap_pop(tk_merge_entry *heap, size_t *count) {
    tk_merge_entry top = heap[0], last = heap[--*count];
    size_t i = 0, n = *count;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && entry_before(&heap[child + 1], &heap[child])) child++;
        if (!entry_before(&heap[child], &last)) break;
        heap[i] = heap[child];
        i = child;
    }
    if (n) heap[i] = last;
    return top;
}

static ferry_status reserve(tk_bpe_scratch *scratch, size_t n_symbols) {
    if (n_symbols > scratch->symbols_capacity) {
        size_t capacity = n_symbols * 2;
        tk_symbol *symbols = realloc(scratch->symbols, capacity * sizeof *symbols);
        if (!symbols) return ferry_fail(FERRY_ERR_NO_MEMORY, "tokenizer: out of memory (BPE)");
        scratch->symbols = symbols;
        scratch->symbols_capacity = capacity;
    }
    /* each merge pushes at most two entries */
    size_t heap_needed = 3 * n_symbols + 1;
    if (heap_needed > scratch->heap_capacity) {
        tk_merge_entry *heap = realloc(scratch->heap, heap_needed * sizeof *heap);
        if (!heap) return ferry_fail(FERRY_ERR_NO_MEMORY, "tokenizer: out of memory (BPE)");
        scratch->heap = heap;
        scratch->heap_capacity = heap_needed;
    }
    return FERRY_OK;
}

static void add_symbol(tk_symbol *symbols, size_t *count, int32_t id, size_t bytes) {
    size_t i = (*count)++;
    symbols[i] = (tk_symbol){id, (int32_t)i - 1, -1, (uint32_t)bytes};
    if (i > 0) symbols[i - 1].next = (int32_t)i;
}

static void push_pair(const tk_merges *merges, const tk_symbol *symbols, int32_t position,
                      tk_merge_entry *heap, size_t *n_heap) {
    uint32_t rank;
    int32_t merged;
    int32_t next = symbols[position].next;
    if (next >= 0 && tk_merges_get(merges, symbols[position].id, symbols[next].id, &rank, &merged))
        heap_push(heap, n_heap, (tk_merge_entry){rank, (uint32_t)position, merged});
}

ferry_status tk_bpe_word(const ferry_tokenizer *tokenizer, const char *word, size_t bytes,
                         tk_bpe_scratch *scratch, ferry_token_list *out) {
    if (bytes == 0) return FERRY_OK;
    if (tokenizer->ignore_merges) {
        int32_t whole = tk_vocab_find(&tokenizer->model_vocab, word, bytes);
        if (whole >= 0) return ferry_token_list_push(out, whole);
    }
    /* a character may fall back to one symbol per byte */
    FERRY_TRY(reserve(scratch, bytes + 1));
    tk_symbol *symbols = scratch->symbols;
    size_t n_symbols = 0, unk_bytes = 0;
    for (size_t i = 0; i < bytes;) {
        uint32_t codepoint;
        int n = tk_utf8_next((const uint8_t *)word + i, bytes - i, &codepoint);
        size_t char_bytes = (size_t)(n > 0 ? n : -n);
        int32_t id = tk_vocab_find(&tokenizer->model_vocab, word + i, char_bytes);
        if (id >= 0) {
            if (unk_bytes) add_symbol(symbols, &n_symbols, tokenizer->unk_id, unk_bytes);
            unk_bytes = 0;
            add_symbol(symbols, &n_symbols, id, char_bytes);
        } else {
            int all_bytes = tokenizer->byte_fallback;
            for (size_t k = 0; all_bytes && k < char_bytes; k++)
                all_bytes = tokenizer->byte_ids[(uint8_t)word[i + k]] >= 0;
            if (all_bytes) {
                /* as HF: a pending unknown is not flushed before the bytes */
                for (size_t k = 0; k < char_bytes; k++)
                    add_symbol(symbols, &n_symbols, tokenizer->byte_ids[(uint8_t)word[i + k]], 1);
            } else if (tokenizer->unk_id >= 0) {
                if (unk_bytes && !tokenizer->fuse_unk) {
                    add_symbol(symbols, &n_symbols, tokenizer->unk_id, unk_bytes);
                    unk_bytes = 0;
                }
                unk_bytes += char_bytes;
            }
        }
        i += char_bytes;
    }
    if (unk_bytes) add_symbol(symbols, &n_symbols, tokenizer->unk_id, unk_bytes);

    tk_merge_entry *heap = scratch->heap;
    size_t n_heap = 0;
    for (size_t i = 0; i + 1 < n_symbols; i++)
        push_pair(&tokenizer->merges, symbols, (int32_t)i, heap, &n_heap);
    while (n_heap > 0) {
        tk_merge_entry top = heap_pop(heap, &n_heap);
        tk_symbol *left = &symbols[top.position];
        if (left->bytes == 0 || left->next < 0) continue;
        tk_symbol *right = &symbols[left->next];
        uint32_t rank;
        int32_t merged;
        /* an entry whose pair changed since it was pushed is stale */
        if (!tk_merges_get(&tokenizer->merges, left->id, right->id, &rank, &merged) ||
            merged != top.merged)
            continue;
        left->id = top.merged;
        left->bytes += right->bytes;
        left->next = right->next;
        right->bytes = 0;
        if (right->next >= 0) symbols[right->next].prev = (int32_t)top.position;
        if (left->prev >= 0) push_pair(&tokenizer->merges, symbols, left->prev, heap, &n_heap);
        push_pair(&tokenizer->merges, symbols, (int32_t)top.position, heap, &n_heap);
    }
    for (size_t i = 0; i < n_symbols; i++)
        if (symbols[i].bytes) FERRY_TRY(ferry_token_list_push(out, symbols[i].id));
    return FERRY_OK;
}

void tk_bpe_scratch_free(tk_bpe_scratch *scratch) {
    free(scratch->symbols);
    free(scratch->heap);
    *scratch = (tk_bpe_scratch){0};
}
