/* The live service dependency graph, updated span by span as they arrive (no batch job). */
#include "trace/deps.h"

#include "core/map.h"
#include "core/mem.h"
#include "trace/idmap.h"

#include <stdlib.h>
#include <string.h>

typedef struct pending_s {
    uint8_t trace_id[16];
    uint8_t parent_id[8];
    const char *service;
    bool error;
    bool live;
} pending_t;

typedef struct edge_s {
    tr_dep_edge_t e;
    char key[]; /* "parent\x1fchild", then the two names */
} edge_t;

struct tr_deps_s {
    tr_map_t edges; /* key → edge_t */
    size_t max_edges;
    pending_t *ring; /* grows to max_pending, then the oldest is overwritten first */
    size_t ring_cap, max_pending, head, npending;
    tr_idmap_t pending; /* hash(trace, parent) → ring index + 1 (the ring moves as it grows) */
};

tr_deps_t *tr_deps_new(size_t max_pending, size_t max_edges)
{
    tr_deps_t *d = tr_calloc(1, sizeof(*d));
    d->max_pending = max_pending ? max_pending : 1;
    d->max_edges = max_edges;
    return d;
}

void tr_deps_free(tr_deps_t *d)
{
    if (!d) return;
    size_t pos = 0;
    const char *key;
    void *value;
    while (tr_map_next(&d->edges, &pos, &key, &value))
        free(value);
    tr_map_free(&d->edges);
    tr__idmap_free(&d->pending);
    free(d->ring);
    free(d);
}

void tr_deps_link(tr_deps_t *d, const char *parent_service, const char *child_service,
                  bool child_error)
{
    if (!strcmp(parent_service, child_service)) return;
    size_t pl = strlen(parent_service), cl = strlen(child_service);
    char stack[256], *key = pl + cl + 2 <= sizeof(stack) ? stack : tr_malloc(pl + cl + 2);
    memcpy(key, parent_service, pl);
    key[pl] = '\x1f';
    memcpy(key + pl + 1, child_service, cl + 1);
    edge_t *e = tr_map_get(&d->edges, key);
    if (!e && d->edges.len < d->max_edges) {
        e = tr_calloc(1, sizeof(*e) + 2 * (pl + cl + 2));
        memcpy(e->key, key, pl + cl + 2);
        char *names = e->key + pl + cl + 2;
        memcpy(names, parent_service, pl + 1);
        memcpy(names + pl + 1, child_service, cl + 1);
        e->e.parent = names;
        e->e.child = names + pl + 1;
        tr_map_put(&d->edges, e->key, e);
    }
    if (key != stack) free(key);
    if (!e) return;
    e->e.calls++;
    if (child_error) e->e.errors++;
}

static uint64_t pend_key(const pending_t *p)
{
    return tr__idmap_hash(p->trace_id, 16, p->parent_id, 8);
}

/* The slot the next pending child goes to: a new one while the ring grows, else the oldest. */
static size_t pend_slot(tr_deps_t *d)
{
    if (d->head == d->ring_cap && d->ring_cap < d->max_pending) {
        size_t ncap = d->ring_cap ? d->ring_cap * 2 : 64;
        if (ncap > d->max_pending) ncap = d->max_pending;
        d->ring = tr_realloc(d->ring, ncap * sizeof(*d->ring));
        memset(d->ring + d->ring_cap, 0, (ncap - d->ring_cap) * sizeof(*d->ring));
        d->ring_cap = ncap;
    }
    size_t i = d->head % d->ring_cap;
    d->head = i + 1;
    return i;
}

void tr_deps_pend(tr_deps_t *d, const uint8_t trace_id[16], const uint8_t parent_id[8],
                  const char *child_service, bool child_error)
{
    size_t i = pend_slot(d);
    pending_t *p = &d->ring[i];
    if (p->live) {
        tr__idmap_del(&d->pending, pend_key(p), (void *)(uintptr_t)(i + 1));
        d->npending--;
    }
    memcpy(p->trace_id, trace_id, 16);
    memcpy(p->parent_id, parent_id, 8);
    p->service = child_service;
    p->error = child_error;
    p->live = true;
    tr__idmap_put(&d->pending, pend_key(p), (void *)(uintptr_t)(i + 1));
    d->npending++;
}

size_t tr_deps_resolve(tr_deps_t *d, const uint8_t trace_id[16], const uint8_t span_id[8],
                       const char *service)
{
    if (!d->npending) return 0;
    uint64_t key = tr__idmap_hash(trace_id, 16, span_id, 8);
    size_t n = 0, pos = 0;
    void *v;
    while ((v = tr__idmap_next(&d->pending, key, &pos))) {
        pending_t *p = &d->ring[(uintptr_t)v - 1];
        if (memcmp(p->trace_id, trace_id, 16) || memcmp(p->parent_id, span_id, 8)) continue;
        tr_deps_link(d, service, p->service, p->error);
        p->live = false;
        tr__idmap_del(&d->pending, key, v);
        d->npending--;
        n++;
        pos = 0; /* deletion moved entries: scan the run again */
    }
    return n;
}

static int cmp_edge(const void *a, const void *b)
{
    const tr_dep_edge_t *x = a, *y = b;
    int c = strcmp(x->parent, y->parent);
    return c ? c : strcmp(x->child, y->child);
}

size_t tr_deps_edges(const tr_deps_t *d, tr_dep_edge_t **out)
{
    *out = tr_malloc((d->edges.len ? d->edges.len : 1) * sizeof(**out));
    size_t pos = 0, n = 0;
    const char *key;
    void *value;
    while (tr_map_next(&d->edges, &pos, &key, &value))
        (*out)[n++] = ((edge_t *)value)->e;
    qsort(*out, n, sizeof(**out), cmp_edge);
    return n;
}

size_t tr_deps_pending(const tr_deps_t *d)
{
    return d->npending;
}
