/*
 * Per-endpoint attempt statistics, kept for rollouts and /admin/upstreams. One record per
 * endpoint ID for the gateway's life, with one cache-line-aligned slot per worker: a worker
 * only writes its own slot (relaxed atomics, no lock, no sharing), readers sum the slots.
 * A worker finds the record once per endpoint (under the gateway's lock) and keeps the
 * pointer in the endpoint's per-instance memory.
 */
#include "gateway/gateway_int.h"

#include "core/mem.h"

#include <stdlib.h>
#include <string.h>

const uint32_t tr_gateway_lat_bounds_ms[TR_GATEWAY_LAT_BUCKETS] = {
    1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 750, 1000, 2000, 5000, 10000, UINT32_MAX};

typedef struct gw_ep_slot_s {
    _Alignas(64) _Atomic uint64_t attempts;
    _Atomic uint64_t failures;
    _Atomic uint64_t latency[TR_GATEWAY_LAT_BUCKETS];
} gw_ep_slot_t;

struct gw_epstats_s {
    gw_epstats_t *next;
    char *id;
    int nslots;
    gw_ep_slot_t *slots; /* nslots, aligned */
};

static gw_epstats_t *find(tr_gateway_t *gw, const char *id)
{
    for (gw_epstats_t *e = gw->epstats; e; e = e->next)
        if (!strcmp(e->id, id)) return e;
    return NULL;
}

static gw_epstats_t *lookup(gw_worker_t *wk, const tr_endpoint_t *ep)
{
    tr_gateway_t *gw = wk->gw;
    uv_mutex_lock(&gw->lock);
    gw_epstats_t *e = find(gw, ep->id);
    if (!e) {
        e = tr_calloc(1, sizeof(*e));
        e->id = tr_strdup(ep->id);
        e->nslots = gw->nworkers;
        e->slots = aligned_alloc(64, sizeof(gw_ep_slot_t) * (size_t)e->nslots);
        if (!e->slots) abort();
        memset(e->slots, 0, sizeof(gw_ep_slot_t) * (size_t)e->nslots);
        e->next = gw->epstats;
        gw->epstats = e;
    }
    uv_mutex_unlock(&gw->lock);
    return e;
}

static unsigned bucket(uint64_t ms)
{
    unsigned i = 0;
    while (i < TR_GATEWAY_LAT_BUCKETS - 1 && ms > tr_gateway_lat_bounds_ms[i])
        i++;
    return i;
}

void gw_epstats_record(gw_worker_t *wk, tr_endpoint_t *ep, bool failed, uint64_t ms)
{
    gw_ep_user_t *u = tr_endpoint_user(ep);
    if (!u->stats) u->stats = lookup(wk, ep);
    gw_ep_slot_t *s = &u->stats->slots[wk->id];
    /* Single writer per slot: load + store, not a locked add. */
    atomic_store_explicit(&s->attempts,
                          atomic_load_explicit(&s->attempts, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (failed)
        atomic_store_explicit(&s->failures,
                              atomic_load_explicit(&s->failures, memory_order_relaxed) + 1,
                              memory_order_relaxed);
    _Atomic uint64_t *b = &s->latency[bucket(ms)];
    atomic_store_explicit(b, atomic_load_explicit(b, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

void gw_epstats_sum(const gw_epstats_t *e, tr_gateway_ep_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    for (int w = 0; e && w < e->nslots; w++) {
        gw_ep_slot_t *s = &e->slots[w];
        out->attempts += atomic_load_explicit(&s->attempts, memory_order_relaxed);
        out->failures += atomic_load_explicit(&s->failures, memory_order_relaxed);
        for (int b = 0; b < TR_GATEWAY_LAT_BUCKETS; b++)
            out->latency[b] += atomic_load_explicit(&s->latency[b], memory_order_relaxed);
    }
}

bool tr_gateway_endpoint_stats(tr_gateway_t *gw, const char *id, tr_gateway_ep_stats_t *out)
{
    uv_mutex_lock(&gw->lock);
    gw_epstats_t *e = find(gw, id);
    gw_epstats_sum(e, out);
    uv_mutex_unlock(&gw->lock);
    return e != NULL;
}

void tr_gateway_ep_stats_sub(tr_gateway_ep_stats_t *now, const tr_gateway_ep_stats_t *before)
{
    now->attempts -= before->attempts;
    now->failures -= before->failures;
    for (int b = 0; b < TR_GATEWAY_LAT_BUCKETS; b++)
        now->latency[b] -= before->latency[b];
}

void tr_gateway_ep_stats_add(tr_gateway_ep_stats_t *sum, const tr_gateway_ep_stats_t *x)
{
    sum->attempts += x->attempts;
    sum->failures += x->failures;
    for (int b = 0; b < TR_GATEWAY_LAT_BUCKETS; b++)
        sum->latency[b] += x->latency[b];
}

uint32_t tr_gateway_ep_stats_quantile(const tr_gateway_ep_stats_t *s, double q)
{
    uint64_t total = 0;
    for (int b = 0; b < TR_GATEWAY_LAT_BUCKETS; b++)
        total += s->latency[b];
    if (!total) return 0;
    /* The rank of the quantile, rounded up: p99 of 100 calls is the 99th. */
    uint64_t rank = (uint64_t)(q * (double)total);
    if ((double)rank < q * (double)total) rank++;
    if (rank == 0) rank = 1;
    uint64_t seen = 0;
    for (int b = 0; b < TR_GATEWAY_LAT_BUCKETS; b++) {
        seen += s->latency[b];
        if (seen >= rank) return tr_gateway_lat_bounds_ms[b];
    }
    return UINT32_MAX;
}

void gw_epstats_free(tr_gateway_t *gw)
{
    while (gw->epstats) {
        gw_epstats_t *e = gw->epstats;
        gw->epstats = e->next;
        free(e->slots);
        free(e->id);
        free(e);
    }
}
