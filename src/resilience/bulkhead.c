/* Bulkhead counters: lock-free try-acquire and release against fixed limits. */
#include "trellis/bulkhead.h"

void tr_bulkhead_config_init(tr_bulkhead_config_t *c)
{
    for (int k = 0; k < TR_BULKHEAD_KINDS; k++)
        c->max[k] = 1024;
}

void tr_bulkhead_init(tr_bulkhead_t *b, const tr_bulkhead_config_t *c)
{
    tr_bulkhead_config_t def;
    if (!c) {
        tr_bulkhead_config_init(&def);
        c = &def;
    }
    for (int k = 0; k < TR_BULKHEAD_KINDS; k++) {
        b->max[k] = c->max[k];
        atomic_init(&b->used[k], 0);
        atomic_init(&b->rejected[k], 0);
    }
}

int tr_bulkhead_acquire(tr_bulkhead_t *b, tr_bulkhead_kind_t kind)
{
    uint32_t cur = atomic_load_explicit(&b->used[kind], memory_order_relaxed);
    while (cur < b->max[kind]) {
        if (atomic_compare_exchange_weak_explicit(&b->used[kind], &cur, cur + 1,
                                                  memory_order_acquire, memory_order_relaxed))
            return 0;
    }
    atomic_fetch_add_explicit(&b->rejected[kind], 1, memory_order_relaxed);
    return TR_EBUSY;
}

void tr_bulkhead_release(tr_bulkhead_t *b, tr_bulkhead_kind_t kind)
{
    atomic_fetch_sub_explicit(&b->used[kind], 1, memory_order_release);
}

uint32_t tr_bulkhead_used(const tr_bulkhead_t *b, tr_bulkhead_kind_t kind)
{
    return atomic_load_explicit(&((tr_bulkhead_t *)b)->used[kind], memory_order_relaxed);
}

int tr_bulkhead_config_from_json(tr_config_t *cfg, const json_t *obj, tr_bulkhead_config_t *c)
{
    static const char *const keys[] = {"max_connections", "max_pending_requests", "max_requests",
                                       NULL};
    tr_bulkhead_config_init(c);
    if (!obj || json_is_null(obj)) return 0;
    if (!json_is_object(obj)) return tr_config_fail(cfg, obj, NULL, "expected a mapping");
    int rc = tr_config_check_keys(cfg, obj, keys);
    for (int k = 0; k < TR_BULKHEAD_KINDS && !rc; k++) {
        int64_t v;
        rc = tr_config_get_int(cfg, obj, keys[k], c->max[k], 1, UINT32_MAX, &v);
        if (!rc) c->max[k] = (uint32_t)v;
    }
    return rc;
}
