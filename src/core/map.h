/* A string-keyed hash map (open addressing, linear probing) with borrowed keys. */
#ifndef TR_CORE_MAP_H
#define TR_CORE_MAP_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Keys are borrowed: the map stores the caller's key pointer, which must stay valid and
 * unchanged while the entry is in the map (typically it points into the value, e.g. an
 * object's own `id`). Values are opaque pointers the map never frees. Deletion shifts
 * entries back, so there are no tombstones and lookups stay short.
 */
typedef struct tr_map_entry_s {
    const char *key; /* NULL: empty slot */
    size_t hash;
    void *value;
} tr_map_entry_t;

typedef struct tr_map_s {
    tr_map_entry_t *slots; /* owned */
    size_t cap;            /* a power of two, or 0 */
    size_t len;
} tr_map_t;

#define TR_MAP_INIT                                                                                \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

/* The value stored under `key`, or NULL. */
void *tr_map_get(const tr_map_t *m, const char *key);
/* Stores `value` under `key` (borrowed), replacing and returning any previous value. */
void *tr_map_put(tr_map_t *m, const char *key, void *value);
/* Removes `key`; returns its value, or NULL when absent. */
void *tr_map_del(tr_map_t *m, const char *key);
/* Iteration: `*pos` starts at 0; returns false at the end. Don't modify the map meanwhile. */
bool tr_map_next(const tr_map_t *m, size_t *pos, const char **key, void **value);
/* Frees the table (not keys or values) and empties the map. */
void tr_map_free(tr_map_t *m);

#endif
