/* The gateway's lifecycle: listeners, workers, config generations and hot reload. */
#include "gateway/gateway_int.h"

#include "core/mem.h"
#include "gateway/jwks.h"
#include "trellis/error.h"
#include "trellis/log.h"
#include "trellis/net.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SWEEP_MS         1000
#define FLUSH_MS         200
#define ACCESS_QUEUE_MAX (8u << 20) /* access-log bytes queued while a write is slow */

/* ---- metrics */

static tr_metric_t *m_up_breaker, *m_up_active, *m_up_ejected;
static tr_metric_t *m_up_requests, *m_up_errors, *m_up_retries, *m_up_ejections, *m_route_requests,
    *m_route_latency, *m_reloads;

static void register_metrics(void)
{
    tr_metrics_t *reg = tr_metrics_default();
    const char *const up[] = {"upstream", NULL};
    const char *const route_code[] = {"route", "code", NULL};
    const char *const route[] = {"route", NULL};
    m_up_requests = tr_metrics_counter(reg, "trellis_gateway_upstream_requests_total",
                                       "Requests proxied to an upstream.", up);
    m_up_errors = tr_metrics_counter(reg, "trellis_gateway_upstream_errors_total",
                                     "Requests to an upstream that ended in a gateway error.", up);
    m_up_retries = tr_metrics_counter(reg, "trellis_gateway_upstream_retries_total",
                                      "Retry attempts to an upstream.", up);
    m_up_breaker = tr_metrics_gauge(
        reg, "trellis_gateway_upstream_breaker_state",
        "Circuit breaker state per upstream and worker: 0 closed, 1 open, 2 half-open.",
        (const char *const[]){"upstream", "worker", NULL});
    m_up_active = tr_metrics_gauge(reg, "trellis_gateway_upstream_active_requests",
                                   "Requests in flight to an upstream (its bulkhead's use).", up);
    m_up_ejected = tr_metrics_gauge(reg, "trellis_gateway_upstream_ejected_endpoints",
                                    "Endpoints ejected by outlier detection, per worker.",
                                    (const char *const[]){"upstream", "worker", NULL});
    m_up_ejections = tr_metrics_counter(reg, "trellis_gateway_upstream_ejections_total",
                                        "Endpoints ejected by outlier detection.", up);
    m_route_requests = tr_metrics_counter(reg, "trellis_gateway_route_requests_total",
                                          "Requests per route by status class.", route_code);
    m_route_latency =
        tr_metrics_histogram(reg, "trellis_gateway_route_duration_seconds",
                             "Time from request head to response end, per route.", route, NULL, 0);
    m_reloads =
        tr_metrics_counter(reg, "trellis_gateway_reloads_total", "Config reloads by result.",
                           (const char *const[]){"result", NULL});
    tr_metric_series(m_reloads, (const char *const[]){"ok", NULL});
    tr_metric_series(m_reloads, (const char *const[]){"failed", NULL});
}

/* ---- upstream state, shared by the generations that keep its config */

static bool same_upstream(const gw_upstream_t *a, const gw_upstream_t *b)
{
    if (strcmp(a->name, b->name) || (!a->service != !b->service) ||
        (a->service && strcmp(a->service, b->service)) || a->naddrs != b->naddrs ||
        a->lb != b->lb || a->connect_timeout_ms != b->connect_timeout_ms ||
        a->max_idle != b->max_idle || a->has_breaker != b->has_breaker ||
        a->has_outlier != b->has_outlier ||
        memcmp(&a->bulkhead, &b->bulkhead, sizeof(a->bulkhead)) ||
        memcmp(&a->breaker, &b->breaker, sizeof(a->breaker)) ||
        memcmp(&a->outlier, &b->outlier, sizeof(a->outlier)) ||
        a->budget_percent != b->budget_percent || a->budget_min != b->budget_min)
        return false;
    for (size_t i = 0; i < a->naddrs; i++)
        if (strcmp(a->addrs[i], b->addrs[i]) || a->weights[i] != b->weights[i]) return false;
    return true;
}

/*
 * The process-wide limits of upstream `u`: the same object for every worker, and across
 * reloads while the limits stay the same, so slots taken before a reload are given back
 * to the bulkhead that counted them.
 */
static gw_shared_t *shared_get(tr_gateway_t *gw, const gw_upstream_t *u)
{
    uv_mutex_lock(&gw->lock);
    gw_shared_t *sh = gw->shared;
    while (sh && (strcmp(sh->name, u->name) ||
                  memcmp(&sh->bulkhead_cfg, &u->bulkhead, sizeof(u->bulkhead)) ||
                  sh->budget_percent != u->budget_percent || sh->budget_min != u->budget_min))
        sh = sh->next;
    if (!sh) {
        sh = tr_calloc(1, sizeof(*sh));
        sh->name = tr_strdup(u->name);
        sh->bulkhead_cfg = u->bulkhead;
        sh->budget_percent = u->budget_percent;
        sh->budget_min = u->budget_min;
        tr_bulkhead_init(&sh->bulkhead, &u->bulkhead);
        tr_retry_budget_init(&sh->budget, u->budget_percent, u->budget_min);
        sh->next = gw->shared;
        gw->shared = sh;
    }
    sh->refs++;
    uv_mutex_unlock(&gw->lock);
    return sh;
}

static void shared_put(tr_gateway_t *gw, gw_shared_t *sh)
{
    uv_mutex_lock(&gw->lock);
    if (--sh->refs == 0) {
        for (gw_shared_t **p = &gw->shared; *p; p = &(*p)->next)
            if (*p == sh) {
                *p = sh->next;
                break;
            }
        free(sh->name);
        free(sh);
    }
    uv_mutex_unlock(&gw->lock);
}

static gw_up_rt_t *up_new(gw_worker_t *wk, gw_config_t *cfg, const gw_upstream_t *u)
{
    gw_up_rt_t *up = tr_calloc(1, sizeof(*up));
    up->refs = 1;
    up->cfg = u;
    up->owner = cfg;
    gw_config_retain(cfg);
    tr_http_client_options_t co;
    tr_http_client_options_init(&co);
    co.connect_timeout_ms = u->connect_timeout_ms;
    co.max_idle_per_endpoint = u->max_idle;
    co.response_timeout_ms = 0; /* the route's timeouts govern */
    up->client = tr_http_client_new(wk->loop, &co);
    tr_breaker_init(&up->breaker, &u->breaker);
    up->shared = shared_get(wk->gw, u);
    tr_outlier_pool_init(&up->outlier, &u->outlier, 0);
    int err;
    if (u->service) {
        err = tr_discovery_watch(wk->disc, u->service, &up->watch);
    } else {
        char name[256];
        snprintf(name, sizeof(name), "static:%s#%u", u->name, wk->static_seq++);
        err =
            tr_discovery_watch_static(wk->disc, name, u->addrs, u->weights, u->naddrs, &up->watch);
    }
    if (err) {
        tr_log_error("gateway: cannot watch upstream", TR_LOG_STR("upstream", u->name),
                     TR_LOG_ERR(err));
        up->watch = NULL;
    }
    const char *const lv[] = {u->name, NULL};
    up->m_requests = tr_metric_series(m_up_requests, lv);
    up->m_errors = tr_metric_series(m_up_errors, lv);
    up->m_retries = tr_metric_series(m_up_retries, lv);
    up->m_ejections = tr_metric_series(m_up_ejections, lv);
    char wid[16];
    snprintf(wid, sizeof(wid), "%d", wk->id);
    up->m_breaker_open = tr_metric_series(m_up_breaker, (const char *const[]){u->name, wid, NULL});
    up->m_ejected = tr_metric_series(m_up_ejected, (const char *const[]){u->name, wid, NULL});
    up->m_active = tr_metric_series(m_up_active, lv);
    return up;
}

static void up_release(tr_gateway_t *gw, gw_up_rt_t *up)
{
    if (--up->refs > 0) return;
    shared_put(gw, up->shared);
    tr_http_client_close(up->client, NULL);
    gw_config_release(up->owner);
    free(up);
}

/* ---- generations */

gw_gen_t *gw_gen_new(gw_worker_t *wk, gw_config_t *cfg, gw_gen_t *prev)
{
    gw_gen_t *g = tr_calloc(1, sizeof(*g));
    g->refs = 1;
    wk->live_gens++;
    g->cfg = cfg;
    g->wk = wk;
    gw_config_retain(cfg);
    g->ups = tr_calloc(cfg->nupstreams + 1, sizeof(*g->ups));
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const gw_upstream_t *u = &cfg->upstreams[i];
        gw_up_rt_t *keep = NULL;
        for (size_t k = 0; prev && k < prev->cfg->nupstreams && !keep; k++)
            if (same_upstream(prev->ups[k]->cfg, u)) keep = prev->ups[k];
        if (keep) {
            keep->refs++;
            g->ups[i] = keep;
        } else {
            g->ups[i] = up_new(wk, cfg, u);
        }
    }
    g->route_breakers = tr_calloc(cfg->nroutes + 1, sizeof(*g->route_breakers));
    for (size_t r = 0; r < cfg->nroutes; r++)
        if (cfg->routes[r].has_breaker)
            tr_breaker_init(&g->route_breakers[r], &cfg->routes[r].breaker);
    g->m_route_requests = tr_calloc(cfg->nroutes * 5 + 1, sizeof(*g->m_route_requests));
    g->m_route_latency = tr_calloc(cfg->nroutes + 1, sizeof(*g->m_route_latency));
    static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
    for (size_t r = 0; r < cfg->nroutes; r++) {
        for (int c = 0; c < 5; c++)
            g->m_route_requests[r * 5 + c] = tr_metric_series(
                m_route_requests, (const char *const[]){cfg->routes[r].name, classes[c], NULL});
        g->m_route_latency[r] =
            tr_metric_series(m_route_latency, (const char *const[]){cfg->routes[r].name, NULL});
    }
    return g;
}

void gw_gen_release(gw_gen_t *g)
{
    if (!g || --g->refs > 0) return;
    gw_worker_t *wk = g->wk;
    for (size_t i = 0; i < g->cfg->nupstreams; i++)
        up_release(wk->gw, g->ups[i]);
    free(g->ups);
    free(g->route_breakers);
    free(g->m_route_requests);
    free(g->m_route_latency);
    gw_config_release(g->cfg);
    free(g);
    /* The discovery client outlives every generation whose upstreams watch through it. */
    if (--wk->live_gens == 0 && wk->stopping) {
        tr_discovery_close(wk->disc, NULL);
        wk->disc = NULL;
        tr_deadlines_close(wk->deadlines); /* no exchange is left to arm one */
        wk->deadlines = NULL;
    }
}

gw_config_t *gw_current_config(tr_gateway_t *gw)
{
    uv_mutex_lock(&gw->lock);
    gw_config_t *c = gw->cfg;
    gw_config_retain(c);
    uv_mutex_unlock(&gw->lock);
    return c;
}

/* ---- JWKS (worker 0 runs the fetchers of the config it serves) */

static void set_keys(gw_jwt_t *j, tr_jwt_keyset_t *set)
{
    /*
     * Readers load the pointer and verify synchronously, never holding it across a loop
     * turn; keeping the replaced set alive until the next refresh (at least 30 s later)
     * is the grace period that makes releasing it safe without a lock on the request path.
     */
    tr_jwt_keyset_t *old = atomic_exchange(&j->keys, tr_jwt_keyset_retain(set));
    tr_jwt_keyset_release(j->retired);
    j->retired = old;
}

static void on_jwks_keys(tr_jwt_keyset_t *set, void *data)
{
    gw_jwt_t *lead = data;
    size_t routes = 1;
    set_keys(lead, set);
    for (gw_jwt_t *f = lead->next_follower; f; f = f->next_follower, routes++)
        set_keys(f, set);
    tr_log_info("gateway: JWKS keys updated", TR_LOG_STR("url", lead->jwks_url),
                TR_LOG_UINT("keys", tr_jwt_keyset_count(set)), TR_LOG_UINT("routes", routes));
}

/* The route of cfg before `upto` whose JWT fetches `url` (the leader), or NULL. */
static gw_jwt_t *jwks_leader(gw_config_t *cfg, size_t upto, const char *url)
{
    for (size_t k = 0; k < upto; k++) {
        gw_jwt_t *o = cfg->routes[k].jwt;
        if (o && o->fetcher && !strcmp(o->jwks_url, url)) return o;
    }
    return NULL;
}

/* One fetcher per distinct JWKS URL (the first route's refresh and timeout settings). */
static void jwks_start(gw_worker_t *wk, gw_config_t *cfg)
{
    for (size_t i = 0; i < cfg->nroutes; i++) {
        gw_jwt_t *j = cfg->routes[i].jwt;
        if (!j || !j->jwks_url || j->fetcher || j->leader) continue;
        gw_jwt_t *lead = jwks_leader(cfg, i, j->jwks_url);
        if (lead) {
            j->leader = lead;
            j->next_follower = lead->next_follower;
            lead->next_follower = j;
            tr_jwt_keyset_t *now = atomic_load(&lead->keys);
            if (now) set_keys(j, now);
            continue;
        }
        tr_jwks_options_t o;
        tr_jwks_options_init(&o);
        o.url = j->jwks_url;
        o.refresh_ms = j->jwks_refresh_ms;
        o.min_interval_ms = j->jwks_min_interval_ms;
        o.timeout_ms = j->jwks_timeout_ms;
        o.on_keys = on_jwks_keys;
        o.data = j;
        int err = tr_jwks_start(wk->loop, &o, &j->fetcher);
        if (err)
            tr_log_error("gateway: cannot fetch JWKS", TR_LOG_STR("url", j->jwks_url),
                         TR_LOG_ERR(err));
    }
}

static void jwks_stop(gw_config_t *cfg)
{
    for (size_t i = 0; i < cfg->nroutes; i++) {
        gw_jwt_t *j = cfg->routes[i].jwt;
        if (!j) continue;
        if (j->fetcher) tr_jwks_close(j->fetcher, NULL);
        j->fetcher = NULL;
        j->leader = j->next_follower = NULL;
    }
}

void gw_jwks_unknown_kid(gw_worker_t *wk, gw_jwt_t *j)
{
    (void)wk;
    gw_jwt_t *f = j->leader ? j->leader : j;
    if (f->fetcher) tr_jwks_refresh(f->fetcher); /* thread-safe and rate limited */
}

/* ---- access log */

/* Lines not yet handed to the access sink (trellis up's log store) go there now. */
static void access_sink(gw_worker_t *wk)
{
    if (wk->gw->o.access_sink && wk->access.len > wk->access_sunk)
        wk->gw->o.access_sink(wk->gw->o.access_sink_data, wk->access.data + wk->access_sunk,
                              wk->access.len - wk->access_sunk);
    wk->access_sunk = wk->access.len;
}

static void access_write(gw_worker_t *wk);

static void on_access_written(uv_fs_t *req)
{
    gw_worker_t *wk = req->data;
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    wk->access_off += n > 0 ? (size_t)n : 0;
    /* A full disk or closed pipe loses log lines, never requests. */
    if (n > 0 && wk->access_off < wk->access_out.len) {
        access_write(wk);
        return;
    }
    wk->access_out.len = wk->access_off = 0;
    wk->access_busy = false;
}

/* The write runs on libuv's threadpool: a slow disk or an unread pipe never stalls the loop. */
static void access_write(gw_worker_t *wk)
{
    uv_buf_t b = uv_buf_init(wk->access_out.data + wk->access_off,
                             (unsigned)(wk->access_out.len - wk->access_off));
    wk->access_req.data = wk;
    wk->access_busy = true;
    if (uv_fs_write(wk->loop, &wk->access_req, wk->gw->access_fd, &b, 1, -1, on_access_written))
        wk->access_busy = false, wk->access_out.len = wk->access_off = 0;
}

void gw_access_flush(gw_worker_t *wk)
{
    access_sink(wk);
    if (wk->gw->access_fd < 0) {
        wk->access.len = wk->access_sunk = 0;
        return;
    }
    if (wk->access_busy) {
        /* Still writing the last batch; keep queueing, but never without bound. */
        if (wk->access.len > ACCESS_QUEUE_MAX) wk->access.len = wk->access_sunk = 0;
        return;
    }
    if (!wk->access.len) return;
    tr_buf_t t = wk->access_out;
    wk->access_out = wk->access;
    wk->access = t;
    wk->access.len = wk->access_sunk = 0;
    wk->access_off = 0;
    access_write(wk);
}

/* After the loop ended (no write in flight): what is left, synchronously. */
static void access_flush_final(gw_worker_t *wk)
{
    access_sink(wk);
    int fd = wk->gw->access_fd;
    size_t off = 0;
    while (fd >= 0 && off < wk->access.len) {
        ssize_t n = write(fd, wk->access.data + off, wk->access.len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        off += (size_t)n;
    }
    wk->access.len = wk->access_sunk = 0;
}

static void on_flush(uv_timer_t *t)
{
    gw_access_flush(t->data);
}

/* ---- the periodic sweep: readmit outliers, resize pools, publish state for the admin API */

static void publish_state(gw_worker_t *wk)
{
    gw_gen_t *g = wk->gen;
    uint64_t now = uv_now(wk->loop);
    json_t *out = json_object();
    for (size_t i = 0; i < g->cfg->nupstreams; i++) {
        gw_up_rt_t *up = g->ups[i];
        json_t *eps = json_array();
        const tr_endpoint_t *list = NULL;
        size_t n = up->watch ? tr_discovery_endpoints(up->watch, &list) : 0;
        if (up->outlier.endpoints != n) tr_outlier_pool_resize(&up->outlier, (uint32_t)n);
        for (size_t k = 0; k < n; k++) {
            tr_endpoint_t *ep = (tr_endpoint_t *)&list[k];
            tr_outlier_endpoint_t *o = tr_endpoint_user(ep);
            bool avail = !up->cfg->has_outlier || tr_outlier_available(&up->outlier, o, now);
            tr_gateway_ep_stats_t st; /* every worker's attempts at this endpoint */
            gw_epstats_sum(((gw_ep_user_t *)o)->stats, &st);
            json_array_append_new(
                eps, json_pack("{s:s, s:s, s:i, s:b, s:i, s:I, s:I, s:I}", "id", ep->id, "address",
                               ep->http.host, "weight", (int)ep->weight, "ejected", !avail,
                               "ejections", (int)o->ejections, "active",
                               (json_int_t)tr_discovery_active(ep), "attempts",
                               (json_int_t)st.attempts, "failures", (json_int_t)st.failures));
        }
        tr_breaker_state_t bs = tr_breaker_state(&up->breaker, now);
        tr_gauge_set(up->m_breaker_open, up->cfg->has_breaker ? (double)bs : 0);
        tr_gauge_set(up->m_ejected, (double)up->outlier.ejected);
        if (wk->id == 0)
            tr_gauge_set(up->m_active,
                         (double)tr_bulkhead_used(&up->shared->bulkhead, TR_BULKHEAD_REQUESTS));
        json_object_set_new(
            out, up->cfg->name,
            json_pack("{s:s?, s:b, s:o, s:{s:b, s:s, s:I, s:I}, s:{s:I, s:I}, s:{s:I, s:I, s:I}}",
                      "service", up->cfg->service, "ready",
                      up->watch && tr_discovery_ready(up->watch), "endpoints", eps, "breaker",
                      "enabled", up->cfg->has_breaker, "state",
                      up->cfg->has_breaker ? tr_breaker_state_name(bs) : "closed", "opened",
                      (json_int_t)up->breaker.stats.opened, "rejected",
                      (json_int_t)up->breaker.stats.rejected, "outlier", "ejections_total",
                      (json_int_t)up->outlier.ejections_total, "ejected",
                      (json_int_t)up->outlier.ejected, "bulkhead", "active_requests",
                      (json_int_t)tr_bulkhead_used(&up->shared->bulkhead, TR_BULKHEAD_REQUESTS),
                      "rejected", (json_int_t)up->shared->bulkhead.rejected[TR_BULKHEAD_REQUESTS],
                      "max_requests", (json_int_t)up->shared->bulkhead.max[TR_BULKHEAD_REQUESTS]));
    }
    char *text = json_dumps(out, JSON_COMPACT);
    json_decref(out);
    uv_mutex_lock(&wk->gw->lock);
    free(wk->gw->snapshots[wk->id]);
    wk->gw->snapshots[wk->id] = text;
    uv_mutex_unlock(&wk->gw->lock);
}

static void on_sweep(uv_timer_t *t)
{
    gw_worker_t *wk = t->data;
    if (wk->gen) publish_state(wk);
}

/* ---- reload */

/* On the worker's loop: switch to the newest config between requests. */
static void on_reload_async(uv_async_t *a)
{
    gw_worker_t *wk = a->data;
    gw_config_t *cfg = gw_current_config(wk->gw);
    if (cfg != wk->gen->cfg) {
        gw_gen_t *old = wk->gen;
        wk->gen = gw_gen_new(wk, cfg, old);
        if (wk->id == 0) {
            jwks_stop(old->cfg);
            jwks_start(wk, cfg);
        }
        gw_gen_release(old); /* requests in flight hold their own reference */
        publish_state(wk);
    }
    gw_config_release(cfg);
}

int tr_gateway_reload(tr_gateway_t *gw, char *err, size_t errlen)
{
    gw_config_t *cfg;
    int rc = gw->o.config_tree
                 ? gw_config_load_tree(gw->o.config_tree, gw->o.config_root, &cfg, err, errlen)
                 : gw_config_load(gw->o.config_path, gw->o.config_text, &cfg, err, errlen);
    uv_mutex_lock(&gw->lock);
    if (rc) {
        gw->reload_failures++;
        uv_mutex_unlock(&gw->lock);
        tr_counter_inc(tr_metric_series(m_reloads, (const char *const[]){"failed", NULL}));
        tr_log_error("gateway: reload refused, the old config keeps serving",
                     TR_LOG_STR("error", err));
        return rc;
    }
    gw_config_t *old = gw->cfg;
    gw->cfg = cfg;
    gw->reloads++;
    uv_mutex_unlock(&gw->lock);
    gw_config_release(old);
    for (int i = 0; i < gw->nworkers; i++)
        if (gw->workers[i]) uv_async_send(&gw->workers[i]->reload);
    tr_counter_inc(tr_metric_series(m_reloads, (const char *const[]){"ok", NULL}));
    tr_log_info("gateway: config reloaded", TR_LOG_STR("config", gw->o.config_path),
                TR_LOG_UINT("routes", cfg->nroutes), TR_LOG_UINT("upstreams", cfg->nupstreams));
    return 0;
}

static void on_file_event(uv_fs_event_t *h, const char *name, int events, int status);

/* Editors replace files in bursts of events: reload once things settle. */
static void on_debounced_reload(uv_timer_t *t)
{
    gw_worker_t *wk = t->data;
    char err[512];
    tr_gateway_reload(wk->gw, err, sizeof(err));
    /* A rename-replace leaves the watch on the old inode: watch the path again. */
    uv_fs_event_stop(&wk->watch_file);
    uv_fs_event_start(&wk->watch_file, on_file_event, wk->gw->o.config_path, 0);
}

static void on_file_event(uv_fs_event_t *h, const char *name, int events, int status)
{
    (void)name;
    (void)events;
    (void)status;
    gw_worker_t *wk = h->data;
    uv_timer_start(&wk->reload_debounce, on_debounced_reload, 100, 0);
}

/* ---- workers */

static void on_disc_change(tr_discovery_watch_t *w, void *data)
{
    gw_worker_t *wk = data;
    gw_gen_t *g = wk->gen;
    if (!g) return;
    const tr_endpoint_t *list;
    size_t n = tr_discovery_endpoints(w, &list);
    for (size_t i = 0; i < g->cfg->nupstreams; i++)
        if (g->ups[i]->watch == w) tr_outlier_pool_resize(&g->ups[i]->outlier, (uint32_t)n);
}

int tr_gateway_worker_start(tr_gateway_t *gw, tr_worker_t *w)
{
    gw_worker_t *wk = tr_calloc(1, sizeof(*wk));
    wk->gw = gw;
    wk->id = tr_worker_id(w);
    wk->loop = tr_worker_loop(w);
    wk->deadlines = tr_deadlines_new(wk->loop);
    wk->rng = (uv_hrtime() ^ ((uint64_t)(uintptr_t)wk << 16)) | 1;
    wk->access = (tr_buf_t)TR_BUF_INIT;
    wk->access_out = (tr_buf_t)TR_BUF_INIT;
    wk->jwt_cache = tr_jwt_cache_new(4096);
    gw_config_t *cfg = gw_current_config(gw);
    tr_discovery_options_t dopt;
    tr_discovery_options_init(&dopt);
    dopt.registry = cfg->registry;
    dopt.datacenter = cfg->datacenter;
    dopt.hub = gw->o.hub;
    dopt.on_change = on_disc_change;
    dopt.data = wk;
    wk->disc = tr_discovery_new(wk->loop, &dopt);
    wk->gen = gw_gen_new(wk, cfg, NULL);
    gw_config_release(cfg);
    uv_async_init(wk->loop, &wk->reload, on_reload_async);
    wk->reload.data = wk;
    uv_timer_init(wk->loop, &wk->flush);
    wk->flush.data = wk;
    uv_timer_start(&wk->flush, on_flush, FLUSH_MS, FLUSH_MS);
    uv_timer_init(wk->loop, &wk->sweep);
    wk->sweep.data = wk;
    uv_timer_start(&wk->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    uv_timer_init(wk->loop, &wk->reload_debounce);
    wk->reload_debounce.data = wk;
    uv_fs_event_init(wk->loop, &wk->watch_file);
    wk->watch_file.data = wk;
    if (wk->id == 0) {
        jwks_start(wk, wk->gen->cfg);
        if (!gw->o.config_text && !gw->o.config_tree) /* a file of its own: watch it */
            uv_fs_event_start(&wk->watch_file, on_file_event, gw->o.config_path, 0);
    }
    tr_http_server_options_t so = {0};
    so.handler = gw_proxy_handle;
    so.handler_data = wk;
    so.max_body_bytes = wk->gen->cfg->max_body_bytes;
    so.header_timeout_ms = wk->gen->cfg->header_timeout_ms;
    so.idle_timeout_ms = wk->gen->cfg->idle_timeout_ms;
    int err = tr_http_server_start(wk->loop, gw->fds[wk->id], &so, &wk->srv);
    if (!err && wk->id == 0 && gw->admin_fd >= 0) {
        tr_http_server_options_t ao = {0};
        ao.handler = gw_admin_handle;
        ao.handler_data = wk;
        err = tr_http_server_start(wk->loop, gw->admin_fd, &ao, &wk->admin);
    }
    gw->workers[wk->id] = wk;
    tr_worker_set_data(w, wk);
    publish_state(wk);
    return err;
}

static void close_timer(uv_timer_t *t)
{
    if (!uv_is_closing((uv_handle_t *)t)) uv_close((uv_handle_t *)t, NULL);
}

void tr_gateway_worker_stop(tr_gateway_t *gw, tr_worker_t *w, bool force)
{
    gw_worker_t *wk = tr_worker_data(w);
    if (!wk) return;
    if (wk->srv) tr_http_server_close(wk->srv, force, NULL, NULL);
    if (wk->admin) tr_http_server_close(wk->admin, force, NULL, NULL);
    if (wk->stopping) return;
    wk->stopping = true;
    gw_access_flush(wk);
    uv_timer_stop(&wk->flush);
    close_timer(&wk->flush);
    close_timer(&wk->sweep);
    close_timer(&wk->reload_debounce);
    uv_close((uv_handle_t *)&wk->watch_file, NULL);
    uv_close((uv_handle_t *)&wk->reload, NULL);
    if (wk->id == 0) jwks_stop(wk->gen->cfg);
    gw_timer_drain(wk);
    /* Requests in flight hold their generation; the last one closes its upstream clients. */
    gw_gen_release(wk->gen);
    wk->gen = NULL;
    (void)gw;
}

/* After the worker's loop ended: free what it owned. Runs on the worker's thread. */
static void worker_free(gw_worker_t *wk)
{
    access_flush_final(wk);
    tr_buf_free(&wk->access);
    tr_buf_free(&wk->access_out);
    tr_jwt_cache_free(wk->jwt_cache);
    while (wk->free_exchanges) {
        struct gw_exchange_s *x = wk->free_exchanges;
        wk->free_exchanges = *(struct gw_exchange_s **)x;
        free(x);
    }
    free(wk);
}

/* ---- open / close */

static int open_access_log(const char *where)
{
    if (!strcmp(where, "off")) return -1;
    if (!strcmp(where, "stdout")) return STDOUT_FILENO;
    if (!strcmp(where, "stderr")) return STDERR_FILENO;
    return open(where, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

static int bind_one(const char *addr_text, int n, int *fds, char *bound_text, size_t blen,
                    const char *what, char *err, size_t errlen)
{
    struct sockaddr_storage addr, bound;
    if (tr_net_parse_addr(addr_text, &addr)) {
        snprintf(err, errlen, "%s: '%s' is not HOST:PORT (e.g. 127.0.0.1:8080)", what, addr_text);
        return TR_ECONFIG;
    }
    int rc = tr_net_listen(&addr, n, 1024, fds, &bound);
    if (rc) {
        snprintf(err, errlen, "%s: cannot listen on %s: %s", what, addr_text, tr_strerror(rc));
        return rc;
    }
    tr_net_format_addr((struct sockaddr *)&bound, bound_text, blen);
    return 0;
}

int tr_gateway_open(const tr_gateway_options_t *o, tr_gateway_t **out, char *err, size_t errlen)
{
    static uv_once_t once = UV_ONCE_INIT;
    uv_once(&once, register_metrics);
    *out = NULL;
    gw_config_t *cfg;
    int rc = o->config_tree ? gw_config_load_tree(o->config_tree, o->config_root, &cfg, err, errlen)
                            : gw_config_load(o->config_path, o->config_text, &cfg, err, errlen);
    if (rc) return rc;
    tr_gateway_t *gw = tr_calloc(1, sizeof(*gw));
    gw->o = *o;
    gw->cfg = cfg;
    gw->admin_fd = -1;
    uv_mutex_init(&gw->lock);
    gw->nworkers = o->workers ? o->workers : cfg->workers ? cfg->workers : tr_cpu_count();
    gw->fds = tr_calloc((size_t)gw->nworkers, sizeof(int));
    gw->workers = tr_calloc((size_t)gw->nworkers, sizeof(*gw->workers));
    gw->snapshots = tr_calloc((size_t)gw->nworkers, sizeof(char *));
    const char *listen = o->listen ? o->listen : cfg->listen;
    const char *admin = o->admin_listen ? o->admin_listen : cfg->admin_listen;
    rc = bind_one(listen, gw->nworkers, gw->fds, gw->listen_addr, sizeof(gw->listen_addr), "listen",
                  err, errlen);
    if (!rc && strcmp(admin, "off"))
        rc = bind_one(admin, 1, &gw->admin_fd, gw->admin_addr, sizeof(gw->admin_addr),
                      "admin.listen", err, errlen);
    if (!rc) {
        gw->access_fd = open_access_log(cfg->access_log);
        if (gw->access_fd < 0 && strcmp(cfg->access_log, "off")) {
            snprintf(err, errlen, "access_log: cannot open %s: %s", cfg->access_log,
                     strerror(errno));
            rc = TR_ECONFIG;
        }
    }
    if (rc) {
        tr_gateway_close(gw);
        return rc;
    }
    *out = gw;
    return 0;
}

const tr_exporter_options_t *tr_gateway_tracing(const tr_gateway_t *gw)
{
    return gw->cfg->tracing ? &gw->cfg->exporter : NULL;
}

void tr_gateway_set_spans(tr_gateway_t *gw, const tr_span_sink_t *spans)
{
    gw->o.spans = spans;
    if (gw->cfg->tracing && !gw->o.service_name) gw->o.service_name = gw->cfg->exporter.service;
}

int tr_gateway_workers(const tr_gateway_t *gw)
{
    return gw->nworkers;
}

const char *tr_gateway_listen_addr(const tr_gateway_t *gw)
{
    return gw->listen_addr;
}

const char *tr_gateway_admin_addr(const tr_gateway_t *gw)
{
    return gw->admin_addr;
}

void tr_gateway_close(tr_gateway_t *gw)
{
    if (!gw) return;
    for (int i = 0; i < gw->nworkers; i++) {
        if (gw->workers[i]) worker_free(gw->workers[i]);
        free(gw->snapshots[i]);
    }
    if (gw->access_fd > STDERR_FILENO) close(gw->access_fd);
    gw_epstats_free(gw);
    gw_config_release(gw->cfg);
    uv_mutex_destroy(&gw->lock);
    free(gw->fds);
    free(gw->workers);
    free(gw->snapshots);
    free(gw);
}
