/* The app: options, lifecycle, request dispatch, built-in endpoints and replies. */
#include "sdk/sdk.h"

#include "core/buf.h"
#include "core/mem.h"
#include "core/problem.h"
#include "trellis/http_json.h"
#include "trellis/log.h"
#include "trellis/net.h"
#include "trellis/runtime.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_MAX_BODY (1024 * 1024)
#define DEFAULT_GRACE_MS 10000

uint64_t tr__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- options and construction ---- */

void tr_app_options_init(tr_app_options_t *o)
{
    memset(o, 0, sizeof(*o));
    o->register_self = -1;
    o->max_body_bytes = DEFAULT_MAX_BODY;
    o->grace_ms = DEFAULT_GRACE_MS;
}

static const char *env_or(const char *value, const char *env, const char *fallback)
{
    if (value) return value;
    const char *e = getenv(env);
    return e && *e ? e : fallback;
}

static char *default_listen(void)
{
    const char *port = getenv("PORT");
    char buf[64];
    snprintf(buf, sizeof(buf), "127.0.0.1:%s", port && *port ? port : "8080");
    return tr_strdup(buf);
}

static int setup_logging(const tr_app_options_t *o, const char *name, char *err, size_t errlen)
{
    const char *level = env_or(NULL, "TRELLIS_LOG_LEVEL", o->log_level ? o->log_level : "info");
    int lv = tr_log_level_parse(level);
    const char *fmt = env_or(NULL, "TRELLIS_LOG_FORMAT", "auto");
    int f = tr_log_format_parse(fmt);
    if (lv < 0 || f < 0) {
        snprintf(err, errlen, "log level '%s' or format '%s' is not known", level, fmt);
        return TR_ECONFIG;
    }
    tr_log_options_t lo = {(tr_log_level_t)lv, (tr_log_format_t)f, 2, name};
    return tr_log_init(&lo);
}

tr_app_t *tr_app_new(const tr_app_options_t *o, char *err, size_t errlen)
{
    tr_app_options_t defaults;
    if (!o) {
        tr_app_options_init(&defaults);
        o = &defaults;
    }
    const char *name = env_or(o->name, "TRELLIS_SERVICE", NULL);
    if (!name || !*name) {
        snprintf(err, errlen, "no service name: set options.name or TRELLIS_SERVICE");
        return NULL;
    }
    if (setup_logging(o, name, err, errlen)) return NULL;
    tr_app_t *app = tr_calloc(1, sizeof(*app));
    app->fd = -1;
    app->name = tr_strdup(name);
    app->listen = o->listen ? tr_strdup(o->listen) : default_listen();
    app->registry = tr_strdup(env_or(o->registry, "TRELLIS_REGISTRY", "127.0.0.1:8500"));
    app->otlp = tr_strdup(env_or(o->otlp_endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT", ""));
    const char *managed = getenv("TRELLIS_INSTANCE");
    app->register_self = o->register_self >= 0 ? o->register_self : !(managed && *managed);
    app->ready = o->ready;
    app->ready_data = o->ready_data;
    app->max_body = o->max_body_bytes ? o->max_body_bytes : DEFAULT_MAX_BODY;
    app->grace_ms = o->grace_ms ? o->grace_ms : DEFAULT_GRACE_MS;
    tr_call_policy_init(&app->default_policy);
    struct sockaddr_storage addr;
    if (tr_net_parse_addr(app->listen, &addr)) {
        snprintf(err, errlen, "listen address '%s' is not HOST:PORT", app->listen);
        tr_app_free(app);
        return NULL;
    }
    if (o->db_path) {
        app->db_path = tr_strdup(o->db_path);
        if (tr_db_open(o->db_path, o->migrations, &app->db, err, errlen)) {
            tr_app_free(app);
            return NULL;
        }
    }
    tr_metrics_t *m = tr_metrics_default();
    app->requests = tr_metrics_counter(m, "trellis_app_requests_total",
                                       "Requests answered by the app, by route, method and status.",
                                       (const char *const[]){"route", "method", "code", NULL});
    app->durations = tr_metrics_histogram(
        m, "trellis_app_request_duration_seconds", "Time from request to reply, by route.",
        (const char *const[]){"route", NULL}, (const double[])TR_METRICS_DEFAULT_BUCKETS,
        sizeof((const double[])TR_METRICS_DEFAULT_BUCKETS) / sizeof(double));
    app->calls = tr_metrics_counter(m, "trellis_app_calls_total",
                                    "Calls to other services, by target and outcome "
                                    "(ok, error, fallback, rejected).",
                                    (const char *const[]){"target", "outcome", NULL});
    app->breakers = tr_metrics_gauge(m, "trellis_app_breaker_state",
                                     "Circuit breaker of each called service: 0 closed, 1 open, "
                                     "2 half-open.",
                                     (const char *const[]){"target", NULL});
    tr_metrics_register_process(m);
    return app;
}

int tr_app_route(tr_app_t *app, const char *method, const char *pattern, tr_route_cb cb, void *data)
{
    tr__route_t *r = tr_calloc(1, sizeof(*r));
    int rc = cb ? tr__route_compile(r, method, pattern) : UV_EINVAL;
    for (size_t i = 0; !rc && i < app->nroutes; i++)
        if (!strcmp(app->routes[i]->method, r->method) &&
            !strcmp(app->routes[i]->pattern, r->pattern))
            rc = TR_EEXISTS;
    if (rc) {
        tr__route_free(r);
        free(r);
        return rc;
    }
    r->cb = cb;
    r->data = data;
    r->duration = tr_metric_series(app->durations, (const char *const[]){r->pattern, NULL});
    app->routes = tr_realloc(app->routes, (app->nroutes + 1) * sizeof(*app->routes));
    app->routes[app->nroutes++] = r;
    return 0;
}

void tr_app_free(tr_app_t *app)
{
    if (!app) return;
    for (size_t i = 0; i < app->nprojections; i++) /* never started: no handles to close */
        tr__projection_free(app->projections[i]);
    free(app->projections);
    for (size_t i = 0; i < app->nroutes; i++) {
        tr__route_free(app->routes[i]);
        free(app->routes[i]);
    }
    free(app->routes);
    size_t pos = 0;
    const char *key;
    void *t;
    while (tr_map_next(&app->targets, &pos, &key, &t))
        tr__target_free(t);
    tr_map_free(&app->targets);
    tr_db_close(app->db);
    free(app->name);
    free(app->listen);
    free(app->registry);
    free(app->otlp);
    free(app->db_path);
    free(app);
}

tr_db_t *tr_app_db(tr_app_t *app)
{
    return app->db;
}

const char *tr_app_name(const tr_app_t *app)
{
    return app->name;
}

const char *tr_app_address(const tr_app_t *app)
{
    return app->address;
}

uv_loop_t *tr_app_loop(const tr_app_t *app)
{
    return app->loop;
}

bool tr_app_stopping(const tr_app_t *app)
{
    return app->stopping;
}

const char *tr__app_eventstore(const tr_app_t *app)
{
    const char *store = getenv("TRELLIS_EVENTSTORE");
    return store && *store ? store : app->registry;
}

/* ---- the request context ---- */

static void ctx_free(tr_ctx_t *ctx)
{
    tr__route_match_free(&ctx->match);
    json_decref(ctx->body);
    for (size_t i = 0; i < ctx->nheaders; i++) {
        free(ctx->headers[i].name);
        free(ctx->headers[i].value);
    }
    free(ctx->headers);
    for (size_t i = 0; i < ctx->nallocs; i++)
        free(ctx->allocs[i]);
    free(ctx->allocs);
    ctx->app->inflight--;
    free(ctx);
}

void tr__ctx_maybe_free(tr_ctx_t *ctx)
{
    if (ctx->replied && !ctx->pending_calls) ctx_free(ctx);
}

void tr__ctx_log_context(tr_ctx_t *ctx)
{
    tr_log_context_set(ctx->correlation_id, ctx->trace_hex);
}

static void on_ctx_abort(tr_http_req_t *req)
{
    tr_ctx_t *ctx = req->data;
    ctx->req = NULL; /* the reply, when it comes, is dropped */
}

/* Correlation ID: the client's x-correlation-id, else x-request-id, else the trace id. */
static void set_correlation(tr_ctx_t *ctx, const tr_http_req_t *req)
{
    const char *c = tr_http_req_header(req, "x-correlation-id");
    if (!c || !*c) c = tr_http_req_header(req, "x-request-id");
    if (c && *c && strlen(c) < sizeof(ctx->correlation_id))
        snprintf(ctx->correlation_id, sizeof(ctx->correlation_id), "%s", c);
    else
        snprintf(ctx->correlation_id, sizeof(ctx->correlation_id), "%s", ctx->trace_hex);
}

static tr_ctx_t *ctx_new(tr_app_t *app, tr_http_req_t *req, json_t *body)
{
    tr_ctx_t *ctx = tr_calloc(1, sizeof(*ctx));
    ctx->app = app;
    ctx->req = req;
    snprintf(ctx->method, sizeof(ctx->method), "%s", req->method);
    ctx->start_ns = tr__now_ns();
    ctx->body = body ? json_incref(body) : NULL;
    bool has_parent;
    tr_trace_extract(req->headers, req->nheaders, &ctx->trace, &has_parent);
    if (has_parent) memcpy(ctx->parent_span, ctx->trace.span_id, 8);
    if (!has_parent) ctx->trace.flags = TR_TRACE_FLAG_SAMPLED;
    tr_trace_new_ids(&ctx->trace, !has_parent);
    tr_trace_hex_encode(ctx->trace.trace_id, 16, ctx->trace_hex);
    set_correlation(ctx, req);
    tr__route_find(app->routes, app->nroutes, req->method, req->path, req->path_len, &ctx->match);
    ctx->route = ctx->match.route;
    req->data = ctx;
    req->on_abort = on_ctx_abort;
    app->inflight++;
    return ctx;
}

/* Runs the handler. The ctx is held meanwhile, so a handler may still log (with the
 * request's IDs) or read it after replying. */
static void dispatch(tr_ctx_t *ctx)
{
    ctx->pending_calls++;
    tr__ctx_log_context(ctx);
    ctx->route->cb(ctx, ctx->route->data);
    tr_log_context_clear();
    ctx->pending_calls--;
    tr__ctx_maybe_free(ctx);
}

/* ---- built-in endpoints ---- */

static void send_json_text(tr_http_req_t *req, int status, const char *text)
{
    tr_http_res_send(req, status, "application/json", text, strlen(text));
}

static void serve_ready(tr_app_t *app, tr_http_req_t *req)
{
    char why[256] = "";
    if (app->stopping) snprintf(why, sizeof(why), "the app is stopping");
    if (!why[0] && app->ready && !app->ready(app, why, sizeof(why), app->ready_data) && !why[0])
        snprintf(why, sizeof(why), "the app's readiness check failed");
    if (why[0])
        tr_http_res_problem(req, 503, "not-ready", "Not ready", "%s", why);
    else
        send_json_text(req, 200, "{\"status\":\"ready\"}");
}

static void serve_metrics(tr_http_req_t *req)
{
    tr_buf_t out = TR_BUF_INIT;
    tr_metrics_render(tr_metrics_default(), &out);
    tr_http_res_send(req, 200, "text/plain; version=0.0.4; charset=utf-8", out.data, out.len);
    tr_buf_free(&out);
}

static bool path_is(const tr_http_req_t *req, const char *p)
{
    return req->path_len == strlen(p) && !memcmp(req->path, p, req->path_len);
}

/* Answers /health/live, /health/ready and /metrics; false for any other path. */
static bool serve_builtin(tr_app_t *app, tr_http_req_t *req)
{
    bool get = !strcmp(req->method, "GET") || req->head;
    if (path_is(req, "/health/live")) {
        if (get) send_json_text(req, 200, "{\"status\":\"live\"}");
    } else if (path_is(req, "/health/ready")) {
        if (get) serve_ready(app, req);
    } else if (path_is(req, "/metrics")) {
        if (get) serve_metrics(req);
    } else {
        return false;
    }
    if (!get) {
        tr_http_res_header(req, "allow", "GET, HEAD");
        tr_http_res_problem(req, 405, "method-not-allowed", "Method not allowed",
                            "%s accepts GET and HEAD only", req->path);
    }
    return true;
}

/* ---- requests ---- */

static void on_json_body(tr_http_req_t *req, json_t *body, void *data)
{
    tr_ctx_t *ctx = ctx_new(data, req, body);
    if (!ctx->route) { /* cannot happen: the route was found before the body was read */
        tr_ctx_problem(ctx, 404, "not-found", "Not found", "no route for this path");
        return;
    }
    dispatch(ctx);
}

static bool has_body(const tr_http_req_t *req)
{
    return req->content_length > 0 || req->chunked;
}

static void on_request(tr_http_req_t *req, void *data)
{
    tr_app_t *app = data;
    if (serve_builtin(app, req)) return;
    tr__route_match_t m;
    tr__route_find(app->routes, app->nroutes, req->method, req->path, req->path_len, &m);
    bool found = m.route != NULL, known = m.path_known;
    tr__route_match_free(&m);
    if (!found) {
        tr_ctx_t *ctx = ctx_new(app, req, NULL);
        if (known) {
            char allow[64];
            tr__route_allow(app->routes, app->nroutes, req->path, req->path_len, allow,
                            sizeof(allow));
            tr_ctx_set_header(ctx, "allow", allow);
            tr_ctx_problem(ctx, 405, "method-not-allowed", "Method not allowed", "%.*s accepts %s",
                           (int)req->path_len, req->path, allow);
        } else {
            tr_ctx_problem(ctx, 404, "not-found", "Not found", "no route for %s %.*s", req->method,
                           (int)req->path_len, req->path);
        }
        return;
    }
    if (has_body(req)) {
        tr_http_req_read_json(req, app->max_body, TR_HTTP_JSON_EMPTY_OK, on_json_body, app);
        return;
    }
    dispatch(ctx_new(app, req, NULL));
}

/* ---- reading the request ---- */

const char *tr_ctx_method(const tr_ctx_t *ctx)
{
    return ctx->method;
}

const char *tr_ctx_path(const tr_ctx_t *ctx)
{
    return ctx->req ? ctx->req->path : "";
}

const char *tr_ctx_param(const tr_ctx_t *ctx, const char *name)
{
    for (size_t i = 0; i < ctx->match.nparams; i++)
        if (!strcmp(ctx->match.name[i], name)) return ctx->match.value[i];
    return NULL;
}

bool tr_ctx_param_id(const tr_ctx_t *ctx, const char *name, int64_t *out)
{
    const char *s = tr_ctx_param(ctx, name);
    if (!s || !*s || strlen(s) > 18) return false;
    int64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return false;
        v = v * 10 + (*p - '0');
    }
    *out = v;
    return v > 0;
}

const char *tr_ctx_query(tr_ctx_t *ctx, const char *name)
{
    const char *v = NULL;
    return ctx->req && tr_http_query_param(ctx->req, name, &v) ? v : NULL;
}

const char *tr_ctx_header(const tr_ctx_t *ctx, const char *name)
{
    return ctx->req ? tr_http_req_header(ctx->req, name) : NULL;
}

json_t *tr_ctx_body(const tr_ctx_t *ctx)
{
    return ctx->body;
}

bool tr_ctx_client_gone(const tr_ctx_t *ctx)
{
    return ctx->req == NULL;
}

const char *tr_ctx_correlation_id(const tr_ctx_t *ctx)
{
    return ctx->correlation_id;
}

const char *tr_ctx_trace_id(const tr_ctx_t *ctx)
{
    return ctx->trace_hex;
}

tr_db_t *tr_ctx_db(const tr_ctx_t *ctx)
{
    return ctx->app->db;
}

tr_app_t *tr_ctx_app(const tr_ctx_t *ctx)
{
    return ctx->app;
}

void *tr_ctx_alloc(tr_ctx_t *ctx, size_t n)
{
    ctx->allocs = tr_realloc(ctx->allocs, (ctx->nallocs + 1) * sizeof(*ctx->allocs));
    return ctx->allocs[ctx->nallocs++] = tr_calloc(1, n ? n : 1);
}

/* ---- replies ---- */

void tr_ctx_set_header(tr_ctx_t *ctx, const char *name, const char *value)
{
    ctx->headers = tr_realloc(ctx->headers, (ctx->nheaders + 1) * sizeof(*ctx->headers));
    ctx->headers[ctx->nheaders].name = tr_strdup(name);
    ctx->headers[ctx->nheaders++].value = tr_strdup(value);
}

static void server_span(tr_ctx_t *ctx, int status)
{
    if (!ctx->app->exporter || !(ctx->trace.flags & TR_TRACE_FLAG_SAMPLED)) return;
    char name[TR_SPAN_NAME_MAX];
    const char *method = ctx->method;
    snprintf(name, sizeof(name), "%s %s", method, ctx->route ? ctx->route->pattern : "unmatched");
    tr_attr_t attrs[4] = {
        {.key = "http.request.method", .type = TR_ATTR_STRING, .v.s = method},
        {.key = "http.response.status_code", .type = TR_ATTR_INT, .v.i = status},
        {.key = "correlation_id", .type = TR_ATTR_STRING, .v.s = ctx->correlation_id},
        {.key = "http.route", .type = TR_ATTR_STRING, .v.s = ctx->route ? ctx->route->pattern : ""},
    };
    tr_span_t sp = {.name = name,
                    .kind = TR_SPAN_SERVER,
                    .start_ns = ctx->start_ns,
                    .end_ns = tr__now_ns(),
                    .status = status >= 500 ? TR_STATUS_ERROR : TR_STATUS_UNSET,
                    .service = ctx->app->name,
                    .attrs = attrs,
                    .nattrs = 4};
    memcpy(sp.trace_id, ctx->trace.trace_id, 16);
    memcpy(sp.span_id, ctx->trace.span_id, 8);
    memcpy(sp.parent_span_id, ctx->parent_span, 8);
    tr__app_span(ctx->app, &sp);
}

/* Metrics, the access line (carrying the request's IDs) and the server span of a reply. */
static void record(tr_ctx_t *ctx, int status)
{
    char code[8];
    snprintf(code, sizeof(code), "%d", status);
    const char *route = ctx->route ? ctx->route->pattern : "unmatched";
    const char *method = ctx->method;
    double secs = (double)(tr__now_ns() - ctx->start_ns) / 1e9;
    tr_counter_inc(
        tr_metric_series(ctx->app->requests, (const char *const[]){route, method, code, NULL}));
    if (ctx->route) tr_histogram_observe(ctx->route->duration, secs);
    if (tr_log_enabled(TR_LOG_INFO)) {
        const char *corr, *trace;
        tr_log_context_get(&corr, &trace); /* the handler's, restored after this line */
        tr__ctx_log_context(ctx);
        tr_log_info("request", TR_LOG_STR("method", method), TR_LOG_STR("route", route),
                    TR_LOG_INT("status", status), TR_LOG_DOUBLE("duration_ms", secs * 1e3),
                    TR_LOG_BOOL("client_gone", ctx->req == NULL));
        tr_log_context_set(corr, trace);
    }
    server_span(ctx, status);
}

/* Common to every reply: once only, headers, metrics, span, then the ctx may go. */
static bool reply_begin(tr_ctx_t *ctx, int status)
{
    if (ctx->replied) {
        tr_log_error("app: a handler replied twice",
                     TR_LOG_STR("route", ctx->route ? ctx->route->pattern : "unmatched"));
        return false;
    }
    ctx->replied = true;
    ctx->status = status;
    record(ctx, status);
    if (!ctx->req) return false;
    tr_http_res_header(ctx->req, "x-correlation-id", ctx->correlation_id);
    for (size_t i = 0; i < ctx->nheaders; i++)
        tr_http_res_header(ctx->req, ctx->headers[i].name, ctx->headers[i].value);
    ctx->req->on_abort = NULL;
    return true;
}

void tr_ctx_reply(tr_ctx_t *ctx, int status, const char *content_type, const void *body, size_t len)
{
    if (reply_begin(ctx, status)) tr_http_res_send(ctx->req, status, content_type, body, len);
    tr__ctx_maybe_free(ctx);
}

void tr_ctx_reply_json(tr_ctx_t *ctx, int status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(body);
    if (text)
        tr_ctx_reply(ctx, status, "application/json", text, strlen(text));
    else
        tr_ctx_reply(ctx, status, NULL, "", 0);
    free(text);
}

void tr_ctx_problem(tr_ctx_t *ctx, int status, const char *slug, const char *title,
                    const char *detail_fmt, ...)
{
    char detail[1024];
    va_list ap;
    va_start(ap, detail_fmt);
    vsnprintf(detail, sizeof(detail), detail_fmt, ap);
    va_end(ap);
    tr_buf_t out = TR_BUF_INIT;
    tr_problem_render(&out, status, slug, title, detail);
    tr_ctx_reply(ctx, status, TR_PROBLEM_CONTENT_TYPE, out.data, out.len);
    tr_buf_free(&out);
}

/* ---- running ---- */

static tr_app_t *running; /* for tr_app_stop; one app per process runs at a time */

void tr__app_span(tr_app_t *app, const tr_span_t *span)
{
    if (app->exporter) app->spans.emit(app->spans.data, span);
}

static void start_exporter(tr_app_t *app)
{
    if (!app->otlp[0]) return;
    char url[512];
    size_t n = strlen(app->otlp);
    bool has_path = n > 10 && strstr(app->otlp, "/v1/traces");
    snprintf(url, sizeof(url), "%s%s", app->otlp, has_path ? "" : "/v1/traces");
    tr_exporter_options_t eo;
    tr_exporter_options_init(&eo);
    eo.endpoint = url;
    eo.service = app->name;
    app->exporter = tr_exporter_start(&eo);
    if (app->exporter)
        app->spans = tr_exporter_sink(app->exporter);
    else
        tr_log_warn("app: spans off: the OTLP endpoint is not usable",
                    TR_LOG_STR("endpoint", app->otlp));
}

static int on_start(tr_worker_t *w, void *data)
{
    tr_app_t *app = data;
    app->loop = tr_worker_loop(w);
    tr_http_server_options_t so = {
        .handler = on_request, .handler_data = app, .max_body_bytes = app->max_body};
    int err = tr_http_server_start(app->loop, app->fd, &so, &app->server);
    if (err) return err;
    app->client = tr_http_client_new(app->loop, NULL);
    tr_discovery_options_t dopt;
    tr_discovery_options_init(&dopt);
    dopt.registry = app->registry;
    app->discovery = tr_discovery_new(app->loop, &dopt);
    if (!app->discovery)
        tr_log_warn("app: registry address is not ip:port; calls by name will fail",
                    TR_LOG_STR("registry", app->registry));
    if (app->register_self) app->reg = tr__register_start(app);
    tr__projections_start(app);
    tr__app_outbox_start(app);
    tr_log_info("app: serving", TR_LOG_STR("addr", app->address),
                TR_LOG_STR("registry", app->registry),
                TR_LOG_BOOL("self_registered", app->register_self),
                TR_LOG_INT("routes", (int64_t)app->nroutes));
    return 0;
}

static void on_server_closed(void *data)
{
    tr_app_t *app = data;
    app->server = NULL;
    if (app->discovery) tr_discovery_close(app->discovery, NULL);
    app->discovery = NULL;
    if (app->client) tr_http_client_close(app->client, NULL);
    app->client = NULL;
}

/* Deregistered (or no registration): now let in-flight requests finish and close. */
static void close_server(void *data)
{
    tr_app_t *app = data;
    app->reg = NULL;
    if (app->server && !app->closing) {
        app->closing = true;
        tr_http_server_close(app->server, false, on_server_closed, app);
    }
}

/*
 * Stop: readiness turns 503 at once, the instance leaves the registry (so discovery stops
 * sending new calls here), then the server drains. `force` (grace over, or a second
 * signal) closes every connection now.
 */
static void on_stop(tr_worker_t *w, bool force, void *data)
{
    (void)w;
    tr_app_t *app = data;
    if (force) {
        tr__projections_stop(app);
        tr__app_outbox_stop(app);
        bool first = !app->closing;
        app->closing = true;
        if (app->server)
            tr_http_server_close(app->server, true, first ? on_server_closed : NULL, app);
        return;
    }
    tr_log_info("app: stopping", TR_LOG_UINT("in_flight", app->inflight));
    app->stopping = true;
    tr__projections_stop(app);
    tr__app_outbox_stop(app);
    if (app->reg)
        tr__register_stop(app->reg, close_server, app);
    else
        close_server(app);
}

int tr_app_run(tr_app_t *app)
{
    struct sockaddr_storage addr, bound;
    tr_net_parse_addr(app->listen, &addr);
    int err = tr_net_listen(&addr, 1, 1024, &app->fd, &bound);
    if (err) {
        tr_log_error("app: cannot listen", TR_LOG_STR("addr", app->listen), TR_LOG_ERR(err));
        return err;
    }
    tr_net_format_addr((struct sockaddr *)&bound, app->address, sizeof(app->address));
    start_exporter(app);
    running = app;
    tr_runtime_options_t ro = {.workers = 1,
                               .grace_ms = app->grace_ms,
                               .on_start = on_start,
                               .on_stop = on_stop,
                               .data = app};
    err = tr_runtime_run(&ro);
    running = NULL;
    if (app->exporter) tr_exporter_stop(app->exporter, 2000);
    app->exporter = NULL;
    tr_log_info("app: stopped");
    return err;
}

void tr_app_stop(tr_app_t *app)
{
    if (app && running == app) tr_runtime_stop();
}
