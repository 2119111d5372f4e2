/* A string-keyed hash map with borrowed keys: open addressing and backward-shift deletion. */
#include "core/map.h"

#include "core/mem.h"
#include <stdlib.h>

#include <string.h>

/* FNV-1a: short keys (IDs, names), cheap and good enough with a power-of-two table. */
static size_t hash_str(const char *s)
{
    size_t h = (size_t)14695981039346656037ULL;
    while (*s)
        h = (h ^ (unsigned char)*s++) * (size_t)1099511628211ULL;
    return h;
}

static tr_map_entry_t *lookup(const tr_map_t *m, const char *key, size_t h)
{
    if (!m->cap) return NULL;
    for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        tr_map_entry_t *e = &m->slots[i];
        if (!e->key) return NULL;
        if (e->hash == h && !strcmp(e->key, key)) return e;
    }
}

static void grow(tr_map_t *m)
{
    size_t old_cap = m->cap;
    tr_map_entry_t *old = m->slots;
    m->cap = old_cap ? old_cap * 2 : 16;
    m->slots = tr_calloc(m->cap, sizeof(*m->slots));
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i].key) continue;
        size_t j = old[i].hash & (m->cap - 1);
        while (m->slots[j].key)
            j = (j + 1) & (m->cap - 1);
        m->slots[j] = old[i];
    }
    free(old);
}

void *tr_map_get(const tr_map_t *m, const char *key)
{
    tr_map_entry_t *e = lookup(m, key, hash_str(key));
    return e ? e->value : NULL;
}

void *tr_map_put(tr_map_t *m, const char *key, void *value)
{
    size_t h = hash_str(key);
    tr_map_entry_t *e = lookup(m, key, h);
    if (e) {
        void *prev = e->value;
        e->key = key;
        e->value = value;
        return prev;
    }
    /* Keep the load factor at or below 3/4 so probe runs stay short. */
    if ((m->len + 1) * 4 > m->cap * 3) grow(m);
    size_t i = h & (m->cap - 1);
    while (m->slots[i].key)
        i = (i + 1) & (m->cap - 1);
    m->slots[i] = (tr_map_entry_t){key, h, value};
    m->len++;
    return NULL;
}

void *tr_map_del(tr_map_t *m, const char *key)
{
    tr_map_entry_t *e = lookup(m, key, hash_str(key));
    if (!e) return NULL;
    void *value = e->value;
    size_t mask = m->cap - 1, i = (size_t)(e - m->slots);
    /* Backward shift: move later entries of the run into the hole when their home allows. */
    for (size_t j = (i + 1) & mask; m->slots[j].key; j = (j + 1) & mask) {
        size_t home = m->slots[j].hash & mask;
        bool movable = i <= j ? (home <= i || home > j) : (home <= i && home > j);
        if (movable) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->slots[i] = (tr_map_entry_t){NULL, 0, NULL};
    m->len--;
    return value;
}

bool tr_map_next(const tr_map_t *m, size_t *pos, const char **key, void **value)
{
    for (; *pos < m->cap; (*pos)++) {
        tr_map_entry_t *e = &m->slots[*pos];
        if (!e->key) continue;
        if (key) *key = e->key;
        if (value) *value = e->value;
        (*pos)++;
        return true;
    }
    return false;
}

void tr_map_free(tr_map_t *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = m->len = 0;
}
