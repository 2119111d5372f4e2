/* Aggregation routes (backend for frontend): fan out to several upstreams, merge one JSON. */
#include "gateway/gateway_int.h"

#include "core/mem.h"
#include "trellis/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One fan-out. Heap-owned: parts may answer after the client is gone. */
typedef struct agg_s {
    gw_worker_t *wk;
    gw_gen_t *gen;
    tr_http_req_t *req; /* NULL once the client went away */
    const gw_route_t *route;
    json_t *result;
    json_t *failed;
    size_t pending;
    char corr[40], traceparent[56];
} agg_t;

typedef struct agg_part_s {
    agg_t *agg;
    const gw_part_t *part;
    tr_http_client_req_t *creq;
    tr_endpoint_t *ep;
    gw_timer_t *timer;
    bool timed_out;
} agg_part_t;

static void agg_done(agg_t *a)
{
    if (a->req) {
        a->req->on_abort = NULL;
        tr_http_res_header(a->req, "x-correlation-id", a->corr);
        if (json_array_size(a->failed)) {
            char list[512] = "";
            size_t i;
            json_t *v;
            json_array_foreach(a->failed, i, v)
            {
                if (i) strncat(list, ",", sizeof(list) - strlen(list) - 1);
                strncat(list, json_string_value(v), sizeof(list) - strlen(list) - 1);
            }
            tr_http_res_header(a->req, "x-trellis-partial", list);
        }
        char *body = json_dumps(a->result, JSON_COMPACT | JSON_PRESERVE_ORDER);
        tr_http_res_send(a->req, 200, "application/json", body, strlen(body));
        free(body);
    }
    json_decref(a->result);
    json_decref(a->failed);
    gw_gen_release(a->gen);
    free(a);
}

static void part_fail(agg_part_t *p, const char *reason, int status)
{
    json_t *e = json_pack("{s:s, s:i}", "error", reason, "status", status);
    json_object_set_new(p->agg->result, p->part->name, e);
    json_array_append_new(p->agg->failed, json_string(p->part->name));
}

static void part_end(agg_part_t *p)
{
    agg_t *a = p->agg;
    gw_timer_put(a->wk, p->timer);
    if (p->ep) tr_discovery_done(p->ep);
    free(p);
    if (--a->pending == 0) agg_done(a);
}

static void on_part(tr_http_client_req_t *creq, int err, const tr_http_client_response_t *res)
{
    agg_part_t *p = tr_http_client_req_data(creq);
    p->creq = NULL;
    if (err) {
        part_fail(p, p->timed_out ? "upstream_timeout" : "upstream_connect_failure",
                  p->timed_out ? 504 : 502);
    } else if (res->status < 200 || res->status > 299) {
        part_fail(p, "upstream_status", res->status);
    } else {
        json_t *j = json_loadb(res->body, res->body_len, JSON_DECODE_ANY, NULL);
        if (j)
            json_object_set_new(p->agg->result, p->part->name, j);
        else
            part_fail(p, "not_json", res->status);
    }
    part_end(p);
}

static void on_part_timeout(uv_timer_t *t)
{
    agg_part_t *p = t->data;
    p->timed_out = true;
    if (p->creq) tr_http_client_cancel(p->creq);
}

static void on_agg_abort(tr_http_req_t *req)
{
    agg_t *a = req->data;
    a->req = NULL;
}

static void start_part(agg_t *a, const gw_part_t *part)
{
    agg_part_t *p = tr_calloc(1, sizeof(*p));
    p->agg = a;
    p->part = part;
    a->pending++;
    gw_up_rt_t *up = a->gen->ups[part->upstream->index];
    if (!up->watch || tr_discovery_pick(up->watch, up->cfg->lb, &p->ep) != 0) {
        part_fail(p, "no_healthy_endpoint", 503);
        part_end(p);
        return;
    }
    const tr_http_client_header_t hdrs[] = {
        {"x-correlation-id", 16, a->corr, strlen(a->corr)},
        {"traceparent", 11, a->traceparent, strlen(a->traceparent)},
        {"Accept", 6, "application/json", 16},
    };
    tr_http_client_request_t r = {.method = "GET",
                                  .target = part->path,
                                  .headers = hdrs,
                                  .nheaders = 3,
                                  .flags = TR_HTTP_CLIENT_IDEMPOTENT,
                                  .data = p};
    if (tr_http_client_fetch(up->client, &p->ep->http, &r, on_part, &p->creq) != 0) {
        part_fail(p, "upstream_connect_failure", 502);
        part_end(p);
        return;
    }
    p->timer = gw_timer_get(a->wk);
    p->timer->t.data = p;
    uv_timer_start(&p->timer->t, on_part_timeout, part->timeout_ms ? part->timeout_ms : 15000, 0);
}

void gw_aggregate_start(gw_worker_t *wk, tr_http_req_t *req, const gw_route_t *route,
                        const char *correlation_id, const char *traceparent)
{
    agg_t *a = tr_calloc(1, sizeof(*a));
    a->wk = wk;
    a->gen = wk->gen;
    a->gen->refs++;
    a->req = req;
    a->route = route;
    a->result = json_object();
    a->failed = json_array();
    snprintf(a->corr, sizeof(a->corr), "%s", correlation_id);
    snprintf(a->traceparent, sizeof(a->traceparent), "%s", traceparent);
    req->data = a;
    req->on_abort = on_agg_abort;
    a->pending = 1; /* held until every part started, so none can finish the whole early */
    for (size_t i = 0; i < route->nparts; i++)
        start_part(a, &route->parts[i]);
    if (--a->pending == 0) agg_done(a);
}
