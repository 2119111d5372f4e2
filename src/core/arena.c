/* Region allocator with cleanup hooks. */
#include "core/arena.h"

#include "core/mem.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN         16
#define ARENA_DEFAULT_BLOCK 4096

struct tr_arena_block_s {
    tr_arena_block_t *prev;
    char *pos;
    char *end;
    int owned; /* malloc'd by the arena */
};

struct tr_arena_cleanup_s {
    tr_arena_cleanup_t *next;
    tr_arena_cleanup_cb cb;
    void *data;
};

static char *align_up(char *p)
{
    uintptr_t u = (uintptr_t)p;
    return (char *)((u + ARENA_ALIGN - 1) & ~(uintptr_t)(ARENA_ALIGN - 1));
}

static void block_init(tr_arena_block_t *b, size_t total, int owned)
{
    b->prev = NULL;
    b->pos = align_up((char *)(b + 1));
    b->end = (char *)b + total;
    b->owned = owned;
}

void tr_arena_init(tr_arena_t *a, void *storage, size_t storage_len)
{
    memset(a, 0, sizeof(*a));
    a->block_size = ARENA_DEFAULT_BLOCK;
    /* The block header needs pointer alignment, which a caller's char array may lack. */
    char *s = storage ? align_up(storage) : NULL;
    size_t skip = (size_t)(s - (char *)storage);
    if (s && storage_len > skip + sizeof(tr_arena_block_t) + ARENA_ALIGN * 2) {
        a->first = (tr_arena_block_t *)s;
        block_init(a->first, storage_len - skip, 0);
        a->head = a->first;
    }
}

static void *alloc_slow(tr_arena_t *a, size_t n)
{
    size_t need = sizeof(tr_arena_block_t) + ARENA_ALIGN + n;
    size_t size = need > a->block_size ? need : a->block_size;
    tr_arena_block_t *b = tr_malloc(size);
    block_init(b, size, 1);
    b->prev = a->head;
    a->head = b;
    void *p = b->pos;
    b->pos = align_up(b->pos + n);
    if (b->pos > b->end) b->pos = b->end;
    return p;
}

void *tr_arena_alloc(tr_arena_t *a, size_t n)
{
    tr_arena_block_t *b = a->head;
    if (b && (size_t)(b->end - b->pos) >= n) {
        void *p = b->pos;
        b->pos = align_up(b->pos + n);
        if (b->pos > b->end) b->pos = b->end;
        return p;
    }
    return alloc_slow(a, n);
}

void *tr_arena_calloc(tr_arena_t *a, size_t n)
{
    void *p = tr_arena_alloc(a, n);
    memset(p, 0, n);
    return p;
}

char *tr_arena_strndup(tr_arena_t *a, const char *s, size_t n)
{
    char *d = tr_arena_alloc(a, n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *tr_arena_strdup(tr_arena_t *a, const char *s)
{
    return tr_arena_strndup(a, s, strlen(s));
}

char *tr_arena_printf(tr_arena_t *a, const char *fmt, ...)
{
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *d = tr_arena_alloc(a, (size_t)(n < 0 ? 0 : n) + 1);
    vsnprintf(d, (size_t)(n < 0 ? 0 : n) + 1, fmt, ap2);
    va_end(ap2);
    return d;
}

void *tr_arena_grow(tr_arena_t *a, void *p, size_t old, size_t new_len)
{
    tr_arena_block_t *b = a->head;
    if (p && b && (char *)p >= (char *)(b + 1) && align_up((char *)p + old) == b->pos &&
        (size_t)(b->end - (char *)p) >= new_len) {
        b->pos = align_up((char *)p + new_len);
        if (b->pos > b->end) b->pos = b->end;
        return p;
    }
    void *q = tr_arena_alloc(a, new_len);
    if (p && old) memcpy(q, p, old < new_len ? old : new_len);
    return q;
}

void tr_arena_on_reset(tr_arena_t *a, tr_arena_cleanup_cb cb, void *data)
{
    tr_arena_cleanup_t *c = tr_arena_alloc(a, sizeof(*c));
    c->cb = cb;
    c->data = data;
    c->next = a->cleanups;
    a->cleanups = c;
}

void tr_arena_reset(tr_arena_t *a)
{
    /* Cleanups live in the arena's own blocks, so run them all before freeing any. */
    for (tr_arena_cleanup_t *c = a->cleanups; c; c = c->next)
        c->cb(c->data);
    a->cleanups = NULL;
    tr_arena_block_t *b = a->head;
    while (b && b->owned) {
        tr_arena_block_t *prev = b->prev;
        free(b);
        b = prev;
    }
    a->head = a->first;
    if (a->first) a->first->pos = align_up((char *)(a->first + 1));
}

void tr_arena_destroy(tr_arena_t *a)
{
    tr_arena_reset(a);
}
