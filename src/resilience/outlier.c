/* Outlier detection: consecutive-error ejection with growing, capped, decaying ejection times. */
#include "trellis/outlier.h"

#include <string.h>

void tr_outlier_config_init(tr_outlier_config_t *c)
{
    *c = (tr_outlier_config_t){
        .consecutive_5xx = 5,
        .consecutive_gateway_failure = 5,
        .base_ejection_ms = 30000,
        .max_ejection_ms = 300000,
        .max_ejection_percent = 0.1,
        .interval_ms = 10000,
    };
}

void tr_outlier_pool_init(tr_outlier_pool_t *p, const tr_outlier_config_t *c, uint32_t endpoints)
{
    memset(p, 0, sizeof(*p));
    if (c)
        p->cfg = *c;
    else
        tr_outlier_config_init(&p->cfg);
    p->endpoints = endpoints;
}

void tr_outlier_pool_resize(tr_outlier_pool_t *p, uint32_t endpoints)
{
    p->endpoints = endpoints;
}

void tr_outlier_endpoint_init(tr_outlier_endpoint_t *e)
{
    memset(e, 0, sizeof(*e));
}

void tr_outlier_endpoint_remove(tr_outlier_pool_t *p, tr_outlier_endpoint_t *e)
{
    if (e->ejected && p->ejected > 0) p->ejected--;
    e->ejected = false;
}

/* Envoy's rule: within the percentage counting this ejection, or the first ejection. */
static bool may_eject(const tr_outlier_pool_t *p)
{
    if (p->ejected == 0) return p->endpoints > 0;
    if (p->ejected >= p->endpoints) return false;
    return (double)(p->ejected + 1) <= p->cfg.max_ejection_percent * p->endpoints + 1e-9;
}

static void readmit(tr_outlier_pool_t *p, tr_outlier_endpoint_t *e, uint64_t at)
{
    e->ejected = false;
    e->readmitted_at = at;
    e->consecutive_5xx = e->consecutive_gateway = 0;
    if (p->ejected > 0) p->ejected--;
    p->readmissions++;
}

bool tr_outlier_available(tr_outlier_pool_t *p, tr_outlier_endpoint_t *e, uint64_t now)
{
    if (!e->ejected) return true;
    if (now < e->ejected_until) return false;
    readmit(p, e, e->ejected_until);
    return true;
}

static uint64_t ejection_ms(const tr_outlier_config_t *c, uint32_t n)
{
    if (c->base_ejection_ms && n > c->max_ejection_ms / c->base_ejection_ms)
        return c->max_ejection_ms;
    uint64_t t = c->base_ejection_ms * n;
    return t < c->max_ejection_ms ? t : c->max_ejection_ms;
}

static bool eject(tr_outlier_pool_t *p, tr_outlier_endpoint_t *e, uint64_t now)
{
    if (!may_eject(p)) {
        p->ejections_overflow++;
        return false;
    }
    /* Healthy intervals since the last readmission pay back earlier ejections (Envoy). */
    if (e->ejections && p->cfg.interval_ms && now > e->readmitted_at) {
        uint64_t healthy = (now - e->readmitted_at) / p->cfg.interval_ms;
        e->ejections = healthy >= e->ejections ? 0 : e->ejections - (uint32_t)healthy;
    }
    /* Stop growing once the cap is reached, so the multiplier cannot overflow. */
    if (ejection_ms(&p->cfg, e->ejections) < p->cfg.max_ejection_ms) e->ejections++;
    e->ejected = true;
    e->ejected_until = now + ejection_ms(&p->cfg, e->ejections);
    e->consecutive_5xx = e->consecutive_gateway = 0;
    p->ejected++;
    p->ejections_total++;
    return true;
}

bool tr_outlier_record(tr_outlier_pool_t *p, tr_outlier_endpoint_t *e, uint64_t now,
                       tr_outlier_result_t result, int status)
{
    bool local = result != TR_OUTLIER_STATUS;
    bool is_5xx = local || (status >= 500 && status <= 599);
    bool gateway = local || (status >= 502 && status <= 504);
    if (!is_5xx) {
        e->consecutive_5xx = e->consecutive_gateway = 0;
        return false;
    }
    e->consecutive_5xx++;
    e->consecutive_gateway = gateway ? e->consecutive_gateway + 1 : 0;
    if (e->ejected) return false;
    const tr_outlier_config_t *c = &p->cfg;
    bool hit = (c->consecutive_5xx && e->consecutive_5xx >= c->consecutive_5xx) ||
               (c->consecutive_gateway_failure &&
                e->consecutive_gateway >= c->consecutive_gateway_failure);
    if (!hit) return false;
    if (eject(p, e, now)) return true;
    /* Refused by max_ejection_percent: start counting afresh rather than retry every call. */
    e->consecutive_5xx = e->consecutive_gateway = 0;
    return false;
}

int tr_outlier_config_from_json(tr_config_t *cfg, const json_t *obj, tr_outlier_config_t *c)
{
    static const char *const keys[] = {"consecutive_5xx",
                                       "consecutive_gateway_failure",
                                       "base_ejection_time",
                                       "max_ejection_time",
                                       "max_ejection_percent",
                                       "interval",
                                       NULL};
    tr_outlier_config_init(c);
    if (!obj || json_is_null(obj)) return 0;
    if (!json_is_object(obj)) return tr_config_fail(cfg, obj, NULL, "expected a mapping");
    int64_t v5 = c->consecutive_5xx, vg = c->consecutive_gateway_failure;
    int rc = tr_config_check_keys(cfg, obj, keys);
    if (!rc) rc = tr_config_get_int(cfg, obj, "consecutive_5xx", v5, 0, 1000000, &v5);
    if (!rc) rc = tr_config_get_int(cfg, obj, "consecutive_gateway_failure", vg, 0, 1000000, &vg);
    if (!rc)
        rc = tr_config_get_duration(cfg, obj, "base_ejection_time", c->base_ejection_ms,
                                    &c->base_ejection_ms);
    if (!rc)
        rc = tr_config_get_duration(cfg, obj, "max_ejection_time", c->max_ejection_ms,
                                    &c->max_ejection_ms);
    if (!rc)
        rc = tr_config_get_percent(cfg, obj, "max_ejection_percent", c->max_ejection_percent,
                                   &c->max_ejection_percent);
    if (!rc) rc = tr_config_get_duration(cfg, obj, "interval", c->interval_ms, &c->interval_ms);
    if (rc) return rc;
    c->consecutive_5xx = (uint32_t)v5;
    c->consecutive_gateway_failure = (uint32_t)vg;
    if (c->max_ejection_ms < c->base_ejection_ms)
        return tr_config_fail(cfg, obj, "max_ejection_time",
                              "must not be below base_ejection_time (%llu ms)",
                              (unsigned long long)c->base_ejection_ms);
    return 0;
}
