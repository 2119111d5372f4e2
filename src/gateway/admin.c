/* The gateway's admin listener: metrics, effective config, upstream state, reload, health. */
#include "gateway/gateway_int.h"

#include "core/buf.h"
#include "trellis/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void send_json(tr_http_req_t *req, int status, json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(j);
    tr_http_res_send(req, status, "application/json", s, strlen(s));
    free(s);
}

static bool is(const tr_http_req_t *req, const char *method, const char *path)
{
    return !strcmp(req->method, method) && req->path_len == strlen(path) &&
           !memcmp(req->path, path, req->path_len);
}

/* Every worker's published view (refreshed each second), keyed by worker. */
static void upstreams(gw_worker_t *wk, tr_http_req_t *req)
{
    tr_gateway_t *gw = wk->gw;
    json_t *out = json_object(), *workers = json_array();
    uv_mutex_lock(&gw->lock);
    for (int i = 0; i < gw->nworkers; i++) {
        json_t *j = gw->snapshots[i] ? json_loads(gw->snapshots[i], 0, NULL) : NULL;
        json_array_append_new(workers, j ? j : json_object());
    }
    json_object_set_new(out, "reloads", json_integer((json_int_t)gw->reloads));
    json_object_set_new(out, "reload_failures", json_integer((json_int_t)gw->reload_failures));
    uv_mutex_unlock(&gw->lock);
    json_object_set_new(out, "workers", workers);
    send_json(req, 200, out);
}

/* Ready when every upstream has had its first discovery answer on this worker. */
static bool ready(gw_worker_t *wk)
{
    gw_gen_t *g = wk->gen;
    for (size_t i = 0; g && i < g->cfg->nupstreams; i++)
        if (!g->ups[i]->watch || !tr_discovery_ready(g->ups[i]->watch)) return false;
    return g != NULL;
}

void gw_admin_handle(tr_http_req_t *req, void *data)
{
    gw_worker_t *wk = data;
    if (is(req, "GET", "/metrics")) {
        tr_buf_t out = TR_BUF_INIT;
        tr_metrics_render(tr_metrics_default(), &out);
        tr_http_res_send(req, 200, "text/plain; version=0.0.4; charset=utf-8", out.data, out.len);
        tr_buf_free(&out);
    } else if (is(req, "GET", "/admin/config")) {
        gw_config_t *c = gw_current_config(wk->gw);
        json_t *j = json_deep_copy(c->effective);
        json_object_set_new(j, "source", json_string(c->path));
        /* What is actually bound and running, command-line overrides included. */
        tr_gateway_t *gw = wk->gw;
        json_object_set_new(j, "listen", json_string(gw->listen_addr));
        json_object_set_new(json_object_get(j, "admin"), "listen",
                            gw->admin_addr[0] ? json_string(gw->admin_addr) : json_string("off"));
        json_object_set_new(j, "workers", json_integer(gw->nworkers));
        gw_config_release(c);
        send_json(req, 200, j);
    } else if (is(req, "GET", "/admin/upstreams")) {
        upstreams(wk, req);
    } else if (is(req, "POST", "/admin/reload")) {
        char err[1024];
        if (tr_gateway_reload(wk->gw, err, sizeof(err)) == 0)
            send_json(req, 200, json_pack("{s:b}", "reloaded", 1));
        else
            tr_http_res_problem(req, 422, "config-invalid", "Config refused",
                                "the old config keeps serving: %s", err);
    } else if (is(req, "GET", "/health/live")) {
        tr_http_res_send(req, 200, "text/plain", "ok\n", 3);
    } else if (is(req, "GET", "/health/ready")) {
        if (ready(wk))
            tr_http_res_send(req, 200, "text/plain", "ready\n", 6);
        else
            tr_http_res_send(req, 503, "text/plain", "discovery not ready\n", 20);
    } else {
        tr_http_res_problem(req, 404, "not-found", "Not found",
                            "the admin API serves GET /metrics, /admin/config, /admin/upstreams, "
                            "/health/live, /health/ready and POST /admin/reload");
    }
}
