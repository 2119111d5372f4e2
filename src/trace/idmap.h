/* A multimap from 64-bit hashes of binary ids to pointers, for the collector's indexes. */
#ifndef TR_TRACE_IDMAP_H
#define TR_TRACE_IDMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Open addressing with linear probing and backward-shift deletion (no tombstones). Several
 * values may share a key: ids are hashed to 64 bits, so callers compare the full id of
 * every value a lookup yields. Values are borrowed and never NULL.
 */
typedef struct tr_idmap_slot_s {
    uint64_t key;
    void *value; /* NULL: empty */
} tr_idmap_slot_t;

typedef struct tr_idmap_s {
    tr_idmap_slot_t *slots;
    size_t cap; /* a power of two, or 0 */
    size_t len;
} tr_idmap_t;

/* Hash of two byte strings (an id and, optionally, a second id). */
uint64_t tr__idmap_hash(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen);
void tr__idmap_put(tr_idmap_t *m, uint64_t key, void *value);
/* Yields the values stored under `key` one by one: `*pos` starts at 0; NULL at the end. */
void *tr__idmap_next(const tr_idmap_t *m, uint64_t key, size_t *pos);
/* Removes the entry (key, value); false when absent. Invalidates iteration positions. */
bool tr__idmap_del(tr_idmap_t *m, uint64_t key, const void *value);
void tr__idmap_free(tr_idmap_t *m);

#endif
