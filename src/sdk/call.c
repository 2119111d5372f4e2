/*
 * Calls to other services by name: circuit breaker, bulkhead, discovery, per-attempt
 * deadline, retries on other instances with backoff, fallback. The policies are the
 * resilience part's (the gateway uses the same breaker, bulkhead and retry code).
 */
#include "sdk/sdk.h"

#include "core/mem.h"
#include "trellis/log.h"
#include "trellis/retry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_AVOID         4 /* instances a call remembers as failed */
#define DISCOVERY_POLL_MS 5 /* while the first answer for a new watch is pending */

void tr_call_policy_init(tr_call_policy_t *p)
{
    memset(p, 0, sizeof(*p));
    p->timeout_ms = 2000;
    p->retries = 2;
    p->backoff_ms = 25;
    p->max_concurrent = 64;
    tr_breaker_config_init(&p->breaker);
}

static int target_init(tr__target_t *t, tr_app_t *app, const char *name, const tr_call_policy_t *p)
{
    int rc = tr_breaker_init(&t->breaker, &p->breaker);
    if (rc || !p->timeout_ms || !p->max_concurrent) return rc ? rc : UV_EINVAL;
    t->name = tr_strdup(name);
    t->policy = *p;
    tr_bulkhead_config_t bc;
    tr_bulkhead_config_init(&bc);
    bc.max[TR_BULKHEAD_REQUESTS] = p->max_concurrent;
    tr_bulkhead_init(&t->bulkhead, &bc);
    /* Retries as the gateway's retry_on: gateway-error = connect failure, reset, timeout,
     * 502/503/504; a connect failure is retried for any method (nothing was sent). */
    tr_retry_policy_init(&t->retry);
    t->retry.retry_on = TR_RETRY_ON_GATEWAY_ERROR;
    t->retry.attempts = p->retries + 1;
    t->retry.allow_non_idempotent = p->retry_unsafe;
    t->retry.backoff_base_ms = p->backoff_ms;
    t->retry.backoff_max_ms = p->backoff_ms * 32;
    const char *const outcome[][3] = {{name, "ok", NULL},
                                      {name, "error", NULL},
                                      {name, "fallback", NULL},
                                      {name, "rejected", NULL}};
    t->ok = tr_metric_series(app->calls, outcome[0]);
    t->error = tr_metric_series(app->calls, outcome[1]);
    t->fallback = tr_metric_series(app->calls, outcome[2]);
    t->rejected = tr_metric_series(app->calls, outcome[3]);
    t->state = tr_metric_series(app->breakers, (const char *const[]){name, NULL});
    return 0;
}

int tr_app_service(tr_app_t *app, const char *service, const tr_call_policy_t *p)
{
    tr_call_policy_t defaults;
    if (!p) {
        tr_call_policy_init(&defaults);
        p = &defaults;
    }
    if (!service || !*service) return UV_EINVAL;
    tr__target_t *t = tr_calloc(1, sizeof(*t));
    int rc = target_init(t, app, service, p);
    if (rc) {
        free(t);
        return rc;
    }
    tr__target_t *old = tr_map_put(&app->targets, t->name, t);
    if (old) tr__target_free(old);
    return 0;
}

tr__target_t *tr__app_target(tr_app_t *app, const char *service)
{
    tr__target_t *t = tr_map_get(&app->targets, service);
    if (!t && !tr_app_service(app, service, &app->default_policy))
        t = tr_map_get(&app->targets, service);
    return t;
}

tr__target_t *tr__app_target_fixed(tr_app_t *app, const char *service, const char *addr)
{
    tr__target_t *t = tr__app_target(app, service);
    if (!t || t->fixed) return t;
    tr_endpoint_t *ep = tr_calloc(1, sizeof(*ep));
    if (tr_http_endpoint_parse(&ep->http, addr)) {
        free(ep);
        return NULL;
    }
    ep->id = t->name;
    ep->address = t->name;
    ep->weight = ep->weight_warning = 1;
    t->fixed = ep;
    return t;
}

void tr__target_free(tr__target_t *t)
{
    if (!t) return;
    free(t->fixed);
    free(t->name);
    free(t);
}

/* ---- one call ---- */

typedef struct call_s {
    tr_ctx_t *ctx;
    tr__target_t *t;
    char method[8];
    char *target, *body;
    size_t body_len;
    tr_call_cb cb;
    void *data;
    tr_breaker_ticket_t ticket;
    uint64_t started_ms; /* loop time, for the breaker */
    uint32_t attempts;
    char avoid[MAX_AVOID][96]; /* instance IDs that failed this call */
    size_t navoid;
    tr_endpoint_t *ep;
    tr_http_client_req_t *req;
    uint64_t attempt_start_ns, waited_ms;
    uint8_t span_id[8];
    bool timed_out;
    uv_timer_t timer; /* attempt deadline, backoff, discovery wait */
} call_t;

static void attempt(call_t *c);

static void on_call_closed(uv_handle_t *h)
{
    call_t *c = h->data;
    tr_ctx_t *ctx = c->ctx;
    free(c->target);
    free(c->body);
    free(c);
    ctx->pending_calls--;
    tr__ctx_maybe_free(ctx);
}

static json_t *parse_json(const char *body, size_t len)
{
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\n' || body[i] == '\r' || body[i] == '\t'))
        i++;
    if (i == len || (body[i] != '{' && body[i] != '[')) return NULL;
    return json_loadb(body, len, 0, NULL);
}

/* Hands the result to the caller (after the fallback had its say), then frees the call. */
static void deliver(call_t *c, int err, int status, const char *body, size_t len)
{
    tr__target_t *t = c->t;
    tr_call_result_t r = {.status = status,
                          .err = err,
                          .body = body ? body : "",
                          .body_len = body ? len : 0,
                          .attempts = c->attempts};
    bool failed = err || status >= 500;
    json_t *substitute = NULL;
    if (failed && t->policy.fallback) {
        int fstatus = 200;
        substitute = t->policy.fallback(c->ctx, t->name, err ? err : TR_EBAD_RESPONSE, &fstatus,
                                        t->policy.fallback_data);
        if (substitute) {
            r = (tr_call_result_t){.status = fstatus,
                                   .json = substitute,
                                   .body = "",
                                   .attempts = c->attempts,
                                   .fallback = true};
        }
    }
    if (r.fallback)
        tr_counter_inc(t->fallback);
    else if (err == TR_ECIRCUIT_OPEN || err == TR_EBUSY)
        tr_counter_inc(t->rejected);
    else
        tr_counter_inc(failed ? t->error : t->ok);
    if (!r.json && !r.fallback) r.json = parse_json(r.body, r.body_len);
    tr__ctx_log_context(c->ctx);
    if (failed && !r.fallback)
        tr_log_warn("call failed", TR_LOG_STR("target", t->name), TR_LOG_STR("method", c->method),
                    TR_LOG_STR("path", c->target), TR_LOG_INT("status", status),
                    TR_LOG_UINT("attempts", c->attempts), TR_LOG_ERR(err));
    c->cb(c->ctx, &r, c->data);
    tr_log_context_clear();
    json_decref(r.json);
    uv_close((uv_handle_t *)&c->timer, on_call_closed);
}

/* Publishes the breaker's state, logging each change (the story of an outage in the logs). */
static void note_state(tr__target_t *t, uint64_t now)
{
    tr_breaker_state_t st = tr_breaker_state(&t->breaker, now);
    if (st != t->last_state)
        tr_log_info("circuit breaker changed state", TR_LOG_STR("target", t->name),
                    TR_LOG_STR("from", tr_breaker_state_name(t->last_state)),
                    TR_LOG_STR("to", tr_breaker_state_name(st)));
    t->last_state = st;
    tr_gauge_set(t->state, (double)st);
}

/* The end of the call as a whole: breaker and bulkhead hear of it once. */
static void finish(call_t *c, int err, int status, const char *body, size_t len)
{
    tr__target_t *t = c->t;
    uint64_t now = uv_now(c->ctx->app->loop);
    bool failed = err || status >= 500;
    tr_breaker_record(&t->breaker, &c->ticket, now, !failed, now - c->started_ms);
    note_state(t, now);
    tr_bulkhead_release(&t->bulkhead, TR_BULKHEAD_REQUESTS);
    deliver(c, err, status, body, len);
}

static void client_span(call_t *c, int err, int status)
{
    tr_ctx_t *ctx = c->ctx;
    if (!ctx->app->exporter || !(ctx->trace.flags & TR_TRACE_FLAG_SAMPLED)) return;
    char name[TR_SPAN_NAME_MAX];
    snprintf(name, sizeof(name), "%s %s", c->method, c->t->name);
    tr_attr_t attrs[4] = {
        {.key = "http.request.method", .type = TR_ATTR_STRING, .v.s = c->method},
        {.key = "http.response.status_code", .type = TR_ATTR_INT, .v.i = status},
        {.key = "peer.service", .type = TR_ATTR_STRING, .v.s = c->t->name},
        {.key = "url.path", .type = TR_ATTR_STRING, .v.s = c->target},
    };
    tr_span_t sp = {.name = name,
                    .kind = TR_SPAN_CLIENT,
                    .start_ns = c->attempt_start_ns,
                    .end_ns = tr__now_ns(),
                    .status = err || status >= 500 ? TR_STATUS_ERROR : TR_STATUS_UNSET,
                    .status_message = err ? tr_strerror(err) : NULL,
                    .service = ctx->app->name,
                    .attrs = attrs,
                    .nattrs = 4};
    memcpy(sp.trace_id, ctx->trace.trace_id, 16);
    memcpy(sp.span_id, c->span_id, 8);
    memcpy(sp.parent_span_id, ctx->trace.span_id, 8);
    tr__app_span(ctx->app, &sp);
}

/* Whether the attempt that ended so is retried: the resilience part's rules. */
static bool retryable(const call_t *c, tr_http_client_req_t *req, int err, int status)
{
    tr_retry_outcome_t o = {.kind = TR_RETRY_STATUS, .status = status, .retry_after_ms = -1};
    if (err == TR_ERESPONSE_TIMEOUT)
        o.kind = TR_RETRY_TIMEOUT;
    else if (err)
        o.kind = tr_http_client_request_sent(req) ? TR_RETRY_RESET : TR_RETRY_CONNECT_FAILURE;
    return tr_retry_should(&c->t->retry, c->method, &o, c->attempts);
}

static void on_backoff(uv_timer_t *timer)
{
    attempt(timer->data);
}

static void on_response(tr_http_client_req_t *req, int err, const tr_http_client_response_t *res)
{
    call_t *c = tr_http_client_req_data(req);
    c->req = NULL;
    uv_timer_stop(&c->timer);
    if (c->timed_out) err = TR_ERESPONSE_TIMEOUT;
    int status = err ? 0 : res->status;
    client_span(c, err, status);
    if ((err || status >= 500) && c->navoid < MAX_AVOID)
        snprintf(c->avoid[c->navoid++], sizeof(c->avoid[0]), "%s", c->ep->id);
    if (!c->t->fixed) tr_discovery_done(c->ep);
    c->ep = NULL;
    if (retryable(c, req, err, status)) {
        uint64_t rnd = ((uint64_t)rand() << 32) ^ (uint64_t)rand();
        uv_timer_start(&c->timer, on_backoff, tr_retry_backoff_ms(&c->t->retry, c->attempts, rnd),
                       0);
        return;
    }
    finish(c, err, status, err ? NULL : res->body, err ? 0 : res->body_len);
}

static void on_attempt_deadline(uv_timer_t *timer)
{
    call_t *c = timer->data;
    c->timed_out = true;
    if (c->req) tr_http_client_cancel(c->req);
}

static bool not_avoided(tr_endpoint_t *ep, void *data)
{
    const call_t *c = data;
    for (size_t i = 0; i < c->navoid; i++)
        if (!strcmp(c->avoid[i], ep->id)) return false;
    return ep->http.addr.ss_family != AF_UNSPEC; /* a host name: not callable without DNS */
}

static void send_attempt(call_t *c)
{
    tr_ctx_t *ctx = c->ctx;
    tr_trace_ctx_t tc = ctx->trace;
    tr_trace_new_ids(&tc, false);
    memcpy(c->span_id, tc.span_id, 8);
    char traceparent[56];
    tr_trace_format_traceparent(&tc, traceparent);
    tr_http_client_header_t h[3] = {
        {"x-correlation-id", 16, ctx->correlation_id, strlen(ctx->correlation_id)},
        {"traceparent", 11, traceparent, TR_TRACEPARENT_LEN},
        {"content-type", 12, "application/json", 16},
    };
    tr_http_client_request_t rq = {
        .method = c->method,
        .target = c->target,
        .headers = h,
        .nheaders = c->body ? 3 : 2,
        .body_mode = c->body ? TR_HTTP_CLIENT_BODY_BUFFER : TR_HTTP_CLIENT_BODY_NONE,
        .body = c->body,
        .body_len = c->body_len,
        .flags =
            tr_retry_idempotent(c->method) ? TR_HTTP_CLIENT_IDEMPOTENT : TR_HTTP_CLIENT_NO_RETRY,
        .data = c};
    c->attempts++;
    c->timed_out = false;
    c->attempt_start_ns = tr__now_ns();
    int err = tr_http_client_fetch(ctx->app->client, &c->ep->http, &rq, on_response, &c->req);
    if (err) {
        if (!c->t->fixed) tr_discovery_done(c->ep);
        c->ep = NULL;
        finish(c, err, 0, NULL, 0);
        return;
    }
    uv_timer_start(&c->timer, on_attempt_deadline, c->t->policy.timeout_ms, 0);
}

static void on_discovery_wait(uv_timer_t *timer)
{
    attempt(timer->data);
}

static void attempt(call_t *c)
{
    tr_app_t *app = c->ctx->app;
    tr__target_t *t = c->t;
    if (t->fixed) {
        c->ep = t->fixed;
        send_attempt(c);
        return;
    }
    if (!app->discovery) {
        finish(c, TR_ENOTFOUND, 0, NULL, 0);
        return;
    }
    if (!t->watch && tr_discovery_watch(app->discovery, t->name, &t->watch)) {
        finish(c, TR_ENOTFOUND, 0, NULL, 0);
        return;
    }
    if (!tr_discovery_ready(t->watch)) { /* the first answer is on its way */
        if (c->waited_ms < t->policy.timeout_ms) {
            c->waited_ms += DISCOVERY_POLL_MS;
            uv_timer_start(&c->timer, on_discovery_wait, DISCOVERY_POLL_MS, 0);
        } else {
            finish(c, TR_ENOTFOUND, 0, NULL, 0);
        }
        return;
    }
    int err = tr_discovery_pick_if(t->watch, TR_LB_ROUND_ROBIN, not_avoided, c, &c->ep);
    if (err) {
        /* Every instance failed this call already, or there are none. */
        finish(c, c->attempts ? TR_ECONNECT_TIMEOUT : TR_ENOTFOUND, 0, NULL, 0);
        return;
    }
    send_attempt(c);
}

void tr_ctx_call(tr_ctx_t *ctx, const char *service, const char *method, const char *target,
                 const json_t *body, tr_call_cb cb, void *data)
{
    tr_app_t *app = ctx->app;
    call_t *c = tr_calloc(1, sizeof(*c));
    c->ctx = ctx;
    c->cb = cb;
    c->data = data;
    snprintf(c->method, sizeof(c->method), "%s", method);
    c->target = tr_strdup(target);
    if (body) {
        c->body = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
        c->body_len = c->body ? strlen(c->body) : 0;
    }
    ctx->pending_calls++;
    uv_timer_init(app->loop, &c->timer);
    c->timer.data = c;
    c->t = tr__app_target(app, service && *service ? service : "-"); /* "-": never found */
    c->started_ms = uv_now(app->loop);
    int open = tr_breaker_allow(&c->t->breaker, c->started_ms, &c->ticket);
    note_state(c->t, c->started_ms);
    if (open) {
        deliver(c, TR_ECIRCUIT_OPEN, 0, NULL, 0);
        return;
    }
    if (tr_bulkhead_acquire(&c->t->bulkhead, TR_BULKHEAD_REQUESTS)) {
        tr_breaker_cancel(&c->t->breaker, &c->ticket);
        deliver(c, TR_EBUSY, 0, NULL, 0);
        return;
    }
    attempt(c);
}
