/* A multimap from 64-bit id hashes to pointers (open addressing, backward-shift deletion). */
#include "trace/idmap.h"

#include "core/mem.h"

#include <stdlib.h>
#include <string.h>

static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Folds bytes into h eight at a time (a byte-wise hash showed up in ingest profiles). */
static uint64_t absorb(uint64_t h, const uint8_t *p, size_t n)
{
    uint64_t w;
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&w, p, 8);
        h = mix(h ^ w);
    }
    if (n) {
        w = 0;
        memcpy(&w, p, n);
        h = mix(h ^ w ^ (uint64_t)n << 56);
    }
    return h;
}

uint64_t tr__idmap_hash(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    return mix(absorb(absorb(0x9e3779b97f4a7c15ULL, a, alen), b, blen) + alen);
}

static void grow(tr_idmap_t *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 64;
    tr_idmap_slot_t *old = m->slots;
    size_t ocap = m->cap;
    m->slots = tr_calloc(ncap, sizeof(*m->slots));
    m->cap = ncap;
    m->len = 0;
    for (size_t i = 0; i < ocap; i++)
        if (old[i].value) tr__idmap_put(m, old[i].key, old[i].value);
    free(old);
}

void tr__idmap_put(tr_idmap_t *m, uint64_t key, void *value)
{
    if ((m->len + 1) * 4 > m->cap * 3) grow(m);
    size_t mask = m->cap - 1;
    size_t i = key & mask;
    while (m->slots[i].value)
        i = (i + 1) & mask;
    m->slots[i] = (tr_idmap_slot_t){key, value};
    m->len++;
}

void *tr__idmap_next(const tr_idmap_t *m, uint64_t key, size_t *pos)
{
    if (!m->cap) return NULL;
    size_t mask = m->cap - 1;
    for (size_t off = *pos; off < m->cap; off++) {
        const tr_idmap_slot_t *s = &m->slots[(key + off) & mask];
        if (!s->value) return NULL;
        if (s->key == key) {
            *pos = off + 1;
            return s->value;
        }
    }
    return NULL;
}

bool tr__idmap_del(tr_idmap_t *m, uint64_t key, const void *value)
{
    if (!m->cap) return false;
    size_t mask = m->cap - 1, i = key & mask;
    for (;;) {
        if (!m->slots[i].value) return false;
        if (m->slots[i].key == key && m->slots[i].value == value) break;
        i = (i + 1) & mask;
    }
    /* Shift later members of the probe run back so lookups never stop at a hole early. */
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->slots[j].value) break;
        size_t home = m->slots[j].key & mask;
        bool between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (between) continue;
        m->slots[i] = m->slots[j];
        i = j;
    }
    m->slots[i].value = NULL;
    m->len--;
    return true;
}

void tr__idmap_free(tr_idmap_t *m)
{
    tr_free(&m->slots);
    m->cap = m->len = 0;
}
