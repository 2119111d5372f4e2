/* Self-registration: an app not run by `trellis up` puts itself in the registry. */
#include "sdk/sdk.h"

#include "core/mem.h"
#include "trellis/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RETRY_MIN_MS 250
#define RETRY_MAX_MS 10000

struct tr__registration_s {
    tr_app_t *app;
    tr_http_endpoint_t registry;
    char id[160];
    char *body; /* the registration JSON */
    uv_timer_t retry;
    uint64_t delay_ms;
    bool registered, stopping, failing;
    tr_http_client_req_t *inflight;
    void (*done)(void *data);
    void *done_data;
};

static void send_register(tr__registration_t *r);

static void on_timer_closed(uv_handle_t *h)
{
    tr__registration_t *r = h->data;
    void (*done)(void *) = r->done;
    void *data = r->done_data;
    free(r->body);
    free(r);
    if (done) done(data);
}

static void finish(tr__registration_t *r)
{
    uv_close((uv_handle_t *)&r->retry, on_timer_closed);
}

static void on_retry(uv_timer_t *t)
{
    send_register(t->data);
}

static void registered(tr__registration_t *r, int err, int status)
{
    r->inflight = NULL;
    if (r->stopping) { /* deregistration waits for this answer; then it goes on */
        r->registered = !err && status == 200;
        tr__register_stop(r, r->done, r->done_data);
        return;
    }
    if (!err && status == 200) {
        r->registered = true;
        r->delay_ms = RETRY_MIN_MS;
        tr_log_info("app: registered", TR_LOG_STR("id", r->id),
                    TR_LOG_STR("registry", r->app->registry),
                    TR_LOG_BOOL("after_failures", r->failing));
        r->failing = false;
        return;
    }
    if (!r->failing)
        tr_log_warn("app: registration failed; retrying with backoff",
                    TR_LOG_STR("registry", r->app->registry), TR_LOG_INT("status", status),
                    TR_LOG_ERR(err));
    r->failing = true;
    uv_timer_start(&r->retry, on_retry, r->delay_ms, 0);
    r->delay_ms = r->delay_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : r->delay_ms * 2;
}

static void on_registered(tr_http_client_req_t *req, int err, const tr_http_client_response_t *res)
{
    registered(tr_http_client_req_data(req), err, err ? 0 : res->status);
}

static void send_register(tr__registration_t *r)
{
    static const tr_http_client_header_t ct[] = {{"content-type", 12, "application/json", 16}};
    tr_http_client_request_t rq = {.method = "PUT",
                                   .target = "/v1/agent/service/register",
                                   .headers = ct,
                                   .nheaders = 1,
                                   .body_mode = TR_HTTP_CLIENT_BODY_BUFFER,
                                   .body = r->body,
                                   .body_len = strlen(r->body),
                                   .flags = TR_HTTP_CLIENT_IDEMPOTENT,
                                   .data = r};
    int err = tr_http_client_fetch(r->app->client, &r->registry, &rq, on_registered, &r->inflight);
    if (err) registered(r, err, 0);
}

/* Splits "host:port" of the app's bound address. */
static void split_address(const char *addr, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(addr, ':');
    size_t n = colon ? (size_t)(colon - addr) : strlen(addr);
    if (n && addr[0] == '[') { /* [::1]:80 */
        addr++;
        n -= 2;
    }
    snprintf(host, hostlen, "%.*s", (int)n, addr);
    *port = colon ? atoi(colon + 1) : 0;
}

tr__registration_t *tr__register_start(tr_app_t *app)
{
    tr__registration_t *r = tr_calloc(1, sizeof(*r));
    r->app = app;
    if (tr_http_endpoint_parse(&r->registry, app->registry)) {
        tr_log_warn("app: registry address is not ip:port; not registering",
                    TR_LOG_STR("registry", app->registry));
        free(r);
        return NULL;
    }
    char host[64];
    int port;
    split_address(app->address, host, sizeof(host), &port);
    snprintf(r->id, sizeof(r->id), "%s-%s-%d", app->name, host, port);
    char url[128];
    snprintf(url, sizeof(url), "http://%s/health/ready", app->address);
    json_t *body =
        json_pack("{ss,ss,ss,si,s[s],s{ss,ss,ss,ss}}", "ID", r->id, "Name", app->name, "Address",
                  host, "Port", port, "Tags", "libtrellis", "Check", "HTTP", url, "Interval", "2s",
                  "Timeout", "1s", "DeregisterCriticalServiceAfter", "1m");
    r->body = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    r->delay_ms = RETRY_MIN_MS;
    uv_timer_init(app->loop, &r->retry);
    r->retry.data = r;
    send_register(r);
    return r;
}

static void on_deregistered(tr_http_client_req_t *req, int err,
                            const tr_http_client_response_t *res)
{
    tr__registration_t *r = tr_http_client_req_data(req);
    r->inflight = NULL;
    if (err || res->status != 200)
        tr_log_warn("app: deregistration failed; the registry's check will remove the instance",
                    TR_LOG_STR("id", r->id), TR_LOG_ERR(err));
    else
        tr_log_info("app: deregistered", TR_LOG_STR("id", r->id));
    finish(r);
}

void tr__register_stop(tr__registration_t *r, void (*done)(void *data), void *data)
{
    if (!r) {
        if (done) done(data);
        return;
    }
    r->done = done;
    r->done_data = data;
    r->stopping = true;
    uv_timer_stop(&r->retry);
    if (r->inflight) return; /* on_registered comes back here */
    if (!r->registered) {
        finish(r);
        return;
    }
    char target[200];
    snprintf(target, sizeof(target), "/v1/agent/service/deregister/%s", r->id);
    tr_http_client_request_t rq = {
        .method = "PUT", .target = target, .flags = TR_HTTP_CLIENT_IDEMPOTENT, .data = r};
    r->registered = false;
    if (tr_http_client_fetch(r->app->client, &r->registry, &rq, on_deregistered, &r->inflight))
        finish(r);
}
