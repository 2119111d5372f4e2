/* The proxy: one client request through route policies, the resilience chain and an upstream. */
#include "gateway/gateway_int.h"

#include "core/jsonw.h"
#include "core/mem.h"
#include "trellis/error.h"
#include "trellis/log.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#define MAX_TARGET   8192
#define ACCESS_FLUSH (64 * 1024)

typedef enum {
    OUT_OK = 0,
    OUT_CONNECT,
    OUT_RESET,
    OUT_TIMEOUT,
} out_kind_t;

/*
 * One client request. Pooled per worker (no allocation per request in steady state) and
 * not in the request's own memory: upstream callbacks may still arrive after the client
 * went away, and the exchange must outlive them.
 */
typedef struct gw_exchange_s {
    struct gw_exchange_s *next_free;
    gw_worker_t *wk;
    gw_gen_t *gen;
    const gw_route_t *route;
    gw_up_rt_t *up;
    tr_http_req_t *req; /* NULL once the client's request has ended */
    tr_http_client_req_t *creq;
    tr_endpoint_t *ep;
    tr_breaker_ticket_t ticket, route_ticket;
    bool has_ticket, has_route_ticket, has_bulkhead, has_budget, retry_slot, fell_back;
    bool client_gone;
    gw_shared_t *limits; /* the first upstream's bulkhead and retry budget */
    tr_deadline_t total, try_deadline;
    gw_timer_t *backoff;
    uint32_t attempts;
    bool buffered, streaming, body_done, discard, try_timed_out, total_timed_out;
    tr_buf_t body;
    tr_retry_outcome_t pending;
    int status;
    const char *error; /* x-trellis-error of a failed exchange */
    uint64_t start_ms, try_start_ms;
    uint64_t bytes_in, bytes_out;
    tr_http_client_header_t *hdrs;
    size_t nhdrs;
    char target[MAX_TARGET];
    char corr[40], reqid[40], trace_id[33], traceparent[56];
    uint8_t parent_span[8], server_span[8]; /* parent all zero for a new trace */
    tr_trace_ctx_t tctx;
    uint64_t start_ns, try_start_ns;
    char endpoint[64];
    /* Endpoints earlier attempts failed on (hashes of their IDs): retries go elsewhere, as
     * Envoy's previous_hosts predicate. */
    uint64_t failed[4];
    uint8_t nfailed;
    char method[16];
    char path[256];
    const char *origin;
} gw_exchange_t;

static void attempt(gw_exchange_t *x);
static void finish(gw_exchange_t *x);

/* ---- worker-owned pools: timers and exchanges */

uint64_t gw_rand(gw_worker_t *wk)
{
    wk->rng ^= wk->rng >> 12;
    wk->rng ^= wk->rng << 25;
    wk->rng ^= wk->rng >> 27;
    return wk->rng * 0x2545F4914F6CDD1DULL;
}

gw_timer_t *gw_timer_get(gw_worker_t *wk)
{
    gw_timer_t *t = wk->free_timers;
    if (t) {
        wk->free_timers = t->next_free;
        return t;
    }
    t = tr_calloc(1, sizeof(*t));
    uv_timer_init(wk->loop, &t->t);
    return t;
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h); /* the uv_timer_t is the first member of gw_timer_t */
}

/* Stops the timer and keeps its handle for reuse: no close, no free per request. */
void gw_timer_put(gw_worker_t *wk, gw_timer_t *t)
{
    if (!t) return;
    uv_timer_stop(&t->t);
    if (wk->stopping) {
        uv_close((uv_handle_t *)&t->t, on_timer_closed);
        return;
    }
    t->next_free = wk->free_timers;
    wk->free_timers = t;
}

void gw_timer_drain(gw_worker_t *wk)
{
    while (wk->free_timers) {
        gw_timer_t *t = wk->free_timers;
        wk->free_timers = t->next_free;
        uv_close((uv_handle_t *)&t->t, on_timer_closed);
    }
}

/* Copies at most cap-1 bytes of src[0..len) and terminates: snprintf("%s") without the
 * format machinery, for the per-request copies. */
static void copy_str(char *dst, size_t cap, const char *src, size_t len)
{
    if (len >= cap) len = cap - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

/* FNV-1a of an endpoint ID: retries compare these instead of keeping copies of the IDs. */
static uint64_t id_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

static gw_exchange_t *exchange_get(gw_worker_t *wk)
{
    gw_exchange_t *x = wk->free_exchanges;
    if (x)
        wk->free_exchanges = x->next_free;
    else
        x = tr_malloc(sizeof(*x));
    /* Only the head of the struct needs zeroing: the buffers are written before use. */
    memset(x, 0, offsetof(gw_exchange_t, target));
    x->target[0] = x->corr[0] = x->reqid[0] = x->trace_id[0] = x->endpoint[0] = '\0';
    x->method[0] = x->path[0] = '\0';
    x->nfailed = 0;
    x->body = (tr_buf_t)TR_BUF_INIT;
    x->wk = wk;
    return x;
}

static void exchange_put(gw_exchange_t *x)
{
    gw_worker_t *wk = x->wk;
    tr_buf_free(&x->body);
    gw_gen_release(x->gen);
    x->next_free = wk->free_exchanges;
    wk->free_exchanges = x;
}

/*
 * The client's request leaves the exchange: its callbacks are cleared first, because the
 * server still delivers the rest of a request body after the response is complete.
 */
static tr_http_req_t *detach(gw_exchange_t *x)
{
    tr_http_req_t *req = x->req;
    req->on_body = NULL;
    req->on_end = NULL;
    req->on_abort = NULL;
    req->on_drain = NULL;
    x->req = NULL;
    return req;
}

/* ---- headers */

static bool name_eq(const char *a, size_t alen, const char *b, size_t blen)
{
    return alen == blen && strncasecmp(a, b, alen) == 0;
}

#define NAME_IS(h, lit) name_eq((h)->name, (h)->name_len, lit, sizeof(lit) - 1)

/* RFC 9110 7.6.1: connection-specific headers never cross a proxy. */
static bool hop_by_hop(const char *name, size_t len)
{
    switch (len) {
    case 2:
        return name_eq(name, len, "te", 2);
    case 7:
        return name_eq(name, len, "trailer", 7) || name_eq(name, len, "upgrade", 7);
    case 10:
        return name_eq(name, len, "connection", 10) || name_eq(name, len, "keep-alive", 10);
    case 16:
        return name_eq(name, len, "proxy-connection", 16);
    case 17:
        return name_eq(name, len, "transfer-encoding", 17);
    case 19:
        return name_eq(name, len, "proxy-authorization", 19);
    default:
        return false;
    }
}

/* Whether `name` is listed in a Connection header value (also hop-by-hop, RFC 9110 7.6.1).
 * The value is counted, not terminated: upstream header bytes are passed through. */
static bool in_connection(const char *conn, size_t conn_len, const char *name, size_t len)
{
    const char *p = conn, *end = conn ? conn + conn_len : NULL;
    while (p && p < end) {
        while (p < end && (*p == ' ' || *p == ',' || *p == '\t'))
            p++;
        const char *s = p;
        while (p < end && *p != ',' && *p != ' ' && *p != '\t')
            p++;
        if (p > s && (size_t)(p - s) == len && !strncasecmp(s, name, len)) return true;
    }
    return false;
}

static const tr_http_header_t *find_header(const tr_http_req_t *req, const char *name, size_t len)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (name_eq(req->headers[i].name, req->headers[i].name_len, name, len))
            return &req->headers[i];
    return NULL;
}

static bool route_removes(const gw_headers_t *ops, const char *name, size_t len)
{
    for (size_t i = 0; i < ops->n; i++)
        if (name_eq(ops->ops[i].name, ops->ops[i].name_len, name, len)) return true;
    return false;
}

/* `bytes` random bytes from the worker's generator, as lowercase hex. */
static void hex_id(gw_worker_t *wk, char *out, size_t bytes)
{
    uint8_t raw[16];
    for (size_t i = 0; i < bytes; i += 8) {
        uint64_t r = gw_rand(wk);
        memcpy(raw + i, &r, bytes - i < 8 ? bytes - i : 8);
    }
    tr_trace_hex_encode(raw, bytes, out);
}

/*
 * Trace context: continue the client's (W3C traceparent, else B3 single or multi) with the
 * gateway's server span as the new parent, or start a trace; an invalid traceparent starts
 * a new trace and drops tracestate, as the W3C spec asks. The sampler decides whether
 * this request's spans are recorded, and the decision travels in the flags.
 */
static void trace_context(gw_exchange_t *x, const tr_http_req_t *req)
{
    tr_trace_ctx_t *c = &x->tctx;
    bool has_parent;
    tr_trace_extract(req->headers, req->nheaders, c, &has_parent);
    if (has_parent) {
        memcpy(x->parent_span, c->span_id, 8);
    } else {
        memset(x->parent_span, 0, 8);
        tr_trace_new_ids(c, true);
        c->tracestate[0] = '\0';
    }
    tr_trace_hex_encode(c->trace_id, 16, x->trace_id);
    bool sampled = tr_sampler_should(&x->gen->cfg->sampler, c, has_parent, c->trace_id);
    c->flags = sampled ? TR_TRACE_FLAG_SAMPLED : 0;
    tr_trace_new_ids(c, false); /* a fresh span id: the gateway's server span */
    memcpy(x->server_span, c->span_id, 8);
    tr_trace_new_ids(c, false); /* the first attempt's client span, sent upstream */
    tr_trace_format_traceparent(c, x->traceparent);
}

static void add_hdr(gw_exchange_t *x, const char *name, size_t nlen, const char *value, size_t vlen)
{
    x->hdrs[x->nhdrs++] = (tr_http_client_header_t){name, nlen, value, vlen};
}

/* The upstream request's headers, built once per exchange in the request's memory. */
static bool is_b3(const tr_http_header_t *h)
{
    return NAME_IS(h, "b3") || (h->name_len > 5 && !strncasecmp(h->name, "x-b3-", 5));
}

static void build_headers(gw_exchange_t *x, const tr_jwt_claims_t *claims)
{
    tr_http_req_t *req = x->req;
    const gw_route_t *r = x->route;
    size_t cap = req->nheaders + r->req_headers.n + 12 + (r->jwt ? r->jwt->nclaims : 0);
    x->hdrs = tr_http_req_alloc(req, cap * sizeof(*x->hdrs));
    const tr_http_header_t *conn = find_header(req, "connection", 10);
    const char *xff = NULL;
    size_t xff_len = 0;
    for (size_t i = 0; i < req->nheaders; i++) {
        const tr_http_header_t *h = &req->headers[i];
        if (hop_by_hop(h->name, h->name_len)) continue;
        if (conn && in_connection(conn->value, conn->value_len, h->name, h->name_len)) continue;
        if (NAME_IS(h, "x-forwarded-for")) {
            xff = h->value;
            xff_len = h->value_len;
            continue;
        }
        /* The gateway's own context replaces the client's, in W3C form only. */
        if (NAME_IS(h, "traceparent") || NAME_IS(h, "tracestate") || is_b3(h)) continue;
        if (NAME_IS(h, "x-forwarded-proto") || NAME_IS(h, "x-forwarded-host") || NAME_IS(h, "via"))
            continue;
        if (r->req_headers.n && route_removes(&r->req_headers, h->name, h->name_len)) continue;
        /* Claim headers come only from a verified token, never from the client. */
        if (r->jwt && claims) {
            bool spoof = false;
            for (size_t k = 0; k < r->jwt->nclaims; k++)
                spoof |= !strcasecmp(h->name, r->jwt->claims[k].header);
            if (spoof) continue;
        }
        add_hdr(x, h->name, h->name_len, h->value, h->value_len);
    }
    char peer[64];
    tr_http_req_peer(req, peer, sizeof(peer));
    char *colon = strrchr(peer, ':');
    if (colon) *colon = '\0';
    const char *ip = peer[0] == '[' ? peer + 1 : peer;
    size_t iplen = strlen(ip) - (peer[0] == '[' ? 1 : 0);
    char *fwd = tr_http_req_alloc(req, xff_len + iplen + 3);
    size_t n = 0;
    if (xff) {
        memcpy(fwd, xff, xff_len);
        memcpy(fwd + xff_len, ", ", 2);
        n = xff_len + 2;
    }
    memcpy(fwd + n, ip, iplen);
    n += iplen;
    fwd[n] = '\0';
    add_hdr(x, "X-Forwarded-For", 15, fwd, n);
    add_hdr(x, "X-Forwarded-Proto", 17, "http", 4);
    const tr_http_header_t *host = find_header(req, "host", 4);
    if (host) add_hdr(x, "X-Forwarded-Host", 16, host->value, host->value_len);
    const tr_http_header_t *via = find_header(req, "via", 3);
    if (via) {
        char *v = tr_http_req_alloc(req, via->value_len + 16);
        int len = snprintf(v, via->value_len + 16, "%s, 1.1 trellis", via->value);
        add_hdr(x, "Via", 3, v, (size_t)len);
    } else {
        add_hdr(x, "Via", 3, "1.1 trellis", 11);
    }
    if (!find_header(req, "x-correlation-id", 16))
        add_hdr(x, "x-correlation-id", 16, x->corr, strlen(x->corr));
    if (!find_header(req, "x-request-id", 12))
        add_hdr(x, "x-request-id", 12, x->reqid, strlen(x->reqid));
    add_hdr(x, "traceparent", 11, x->traceparent, strlen(x->traceparent));
    if (x->tctx.tracestate[0])
        add_hdr(x, "tracestate", 10, x->tctx.tracestate, strlen(x->tctx.tracestate));
    for (size_t i = 0; i < r->req_headers.n; i++) {
        const gw_header_op_t *op = &r->req_headers.ops[i];
        if (op->value) add_hdr(x, op->name, op->name_len, op->value, op->value_len);
    }
    if (r->jwt && claims && claims->payload) {
        for (size_t k = 0; k < r->jwt->nclaims; k++) {
            json_t *v = json_object_get(claims->payload, r->jwt->claims[k].claim);
            char *s = NULL;
            if (json_is_string(v)) {
                s = tr_http_req_alloc(req, json_string_length(v) + 1);
                memcpy(s, json_string_value(v), json_string_length(v) + 1);
            } else if (v) {
                char *d = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
                s = tr_http_req_alloc(req, strlen(d) + 1);
                strcpy(s, d);
                free(d);
            }
            /* Header values cannot carry CR or LF: drop a claim that has them. */
            if (s && !strpbrk(s, "\r\n"))
                add_hdr(x, r->jwt->claims[k].header, strlen(r->jwt->claims[k].header), s,
                        strlen(s));
        }
    }
}

/* ---- ids, CORS and the gateway's own answers */

/* Keeps the client's correlation and request IDs (never overwritten) or makes them. */
static void ids(gw_exchange_t *x)
{
    const tr_http_header_t *c = find_header(x->req, "x-correlation-id", 16);
    const tr_http_header_t *r = find_header(x->req, "x-request-id", 12);
    if (c && c->value_len && c->value_len < sizeof(x->corr) && !strpbrk(c->value, "\"\\"))
        memcpy(x->corr, c->value, c->value_len + 1);
    else
        hex_id(x->wk, x->corr, 16);
    if (r && r->value_len && r->value_len < sizeof(x->reqid) && !strpbrk(r->value, "\"\\"))
        memcpy(x->reqid, r->value, r->value_len + 1);
    else
        hex_id(x->wk, x->reqid, 16);
}

static bool origin_allowed(const gw_cors_t *c, const char *origin)
{
    for (size_t i = 0; i < c->norigins; i++)
        if (!strcmp(c->origins[i], "*") || !strcasecmp(c->origins[i], origin)) return true;
    return false;
}

static void cors_headers(const gw_exchange_t *x)
{
    if (!x->route || !x->origin) return;
    const gw_cors_t *c = &x->route->cors;
    if (!c->on || !origin_allowed(c, x->origin)) return;
    bool any = false;
    for (size_t i = 0; i < c->norigins; i++)
        any |= !strcmp(c->origins[i], "*");
    tr_http_res_header(x->req, "Access-Control-Allow-Origin",
                       any && !c->credentials ? "*" : x->origin);
    if (!any || c->credentials) tr_http_res_header(x->req, "Vary", "Origin");
    if (c->credentials) tr_http_res_header(x->req, "Access-Control-Allow-Credentials", "true");
    if (c->expose && *c->expose)
        tr_http_res_header(x->req, "Access-Control-Expose-Headers", c->expose);
}

/* Headers every response the gateway sends or relays carries. */
static void common_headers(gw_exchange_t *x)
{
    tr_http_res_header(x->req, "x-correlation-id", x->corr);
    tr_http_res_header(x->req, "x-request-id", x->reqid);
    cors_headers(x);
}

static int http_status_of(const char *reason)
{
    if (!strcmp(reason, "upstream_timeout")) return 504;
    if (!strcmp(reason, "upstream_connect_failure") || !strcmp(reason, "upstream_reset"))
        return 502;
    if (!strcmp(reason, "rate_limited")) return 429;
    if (!strcmp(reason, "unauthorized")) return 401;
    if (!strcmp(reason, "no_route")) return 404;
    return 503;
}

/* Answers with the gateway's own problem+json and finishes the exchange. */
static void fail(gw_exchange_t *x, const char *reason, const char *title, const char *detail)
{
    x->error = reason;
    x->status = http_status_of(reason);
    if (!x->req) {
        finish(x);
        return;
    }
    common_headers(x);
    tr_http_res_header(x->req, "x-trellis-error", reason);
    char slug[40];
    snprintf(slug, sizeof(slug), "%s", reason);
    for (char *p = slug; *p; p++)
        if (*p == '_') *p = '-';
    tr_http_req_t *req = detach(x);
    tr_http_res_problem(req, x->status, slug, title, "%s", detail);
    finish(x);
}

/* The route's fallback answer (graceful degradation). True when it answered. */

static bool fallback(gw_exchange_t *x, const char *reason)
{
    const gw_fallback_t *f = &x->route->fallback;
    if (!f->on || !x->req) return false;
    if (f->upstream) {
        /* Degrade to the other upstream, once: if it fails too, the client gets the error. */
        if (x->fell_back || !x->up) return false;
        x->fell_back = true;
        x->up = x->gen->ups[f->upstream->index];
        x->nfailed = 0;
        tr_http_res_header(x->req, "x-trellis-fallback", reason);
        attempt(x);
        return true;
    }
    x->error = reason;
    x->status = f->status;
    common_headers(x);
    tr_http_res_header(x->req, "x-trellis-fallback", reason);
    tr_http_req_t *req = detach(x);
    tr_http_res_send(req, f->status, f->content_type, f->body, f->body_len);
    finish(x);
    return true;
}

/* ---- spans: one server span per request, one client span per attempt */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static bool tracing(const gw_exchange_t *x)
{
    /* The sampled flag travels in the traceparent's last two hex digits. */
    return x->wk->gw->o.spans && (x->tctx.flags & TR_TRACE_FLAG_SAMPLED);
}

static void emit_span(gw_exchange_t *x, tr_span_kind_t kind, const uint8_t span_id[8],
                      const uint8_t parent_id[8], uint64_t start_ns, int status, const char *error)
{
    const tr_span_sink_t *sink = x->wk->gw->o.spans;
    tr_attr_t attrs[8];
    size_t n = 0;
    attrs[n++] = (tr_attr_t){"http.request.method", TR_ATTR_STRING, {.s = x->method}};
    if (kind == TR_SPAN_SERVER) {
        /* What the request was; its client spans (children) don't repeat it. */
        attrs[n++] = (tr_attr_t){"url.path", TR_ATTR_STRING, {.s = x->path}};
        attrs[n++] = (tr_attr_t){"correlation_id", TR_ATTR_STRING, {.s = x->corr}};
        if (x->route) attrs[n++] = (tr_attr_t){"http.route", TR_ATTR_STRING, {.s = x->route->name}};
    } else {
        attrs[n++] = (tr_attr_t){"server.address", TR_ATTR_STRING, {.s = x->endpoint}};
        if (x->up)
            attrs[n++] = (tr_attr_t){"trellis.upstream", TR_ATTR_STRING, {.s = x->up->cfg->name}};
    }
    if (status) attrs[n++] = (tr_attr_t){"http.response.status_code", TR_ATTR_INT, {.i = status}};
    if (error) attrs[n++] = (tr_attr_t){"trellis.error", TR_ATTR_STRING, {.s = error}};
    tr_span_t sp = {.name = kind == TR_SPAN_SERVER ? (x->route ? x->route->name : x->method)
                                                   : (x->up ? x->up->cfg->name : "upstream"),
                    .kind = kind,
                    .start_ns = start_ns,
                    .end_ns = now_ns(),
                    .status = (error || status >= 500) ? TR_STATUS_ERROR : TR_STATUS_UNSET,
                    .status_message = error,
                    .service = x->wk->gw->o.service_name ? x->wk->gw->o.service_name : "gateway",
                    .attrs = attrs,
                    .nattrs = n};
    memcpy(sp.trace_id, x->tctx.trace_id, 16);
    memcpy(sp.span_id, span_id, 8);
    memcpy(sp.parent_span_id, parent_id, 8);
    sink->emit(sink->data, &sp);
}

/* ---- the access log: one JSON line per request, written in batches */

void gw_access_flush(gw_worker_t *wk);

static void access_log(gw_exchange_t *x)
{
    gw_worker_t *wk = x->wk;
    if (wk->gw->access_fd < 0 && !wk->gw->o.access_sink) return;
    tr_buf_t *b = &wk->access;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[40];
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    char head[512];
    uint64_t now = uv_now(wk->loop);
    int n =
        snprintf(head, sizeof(head),
                 "{\"ts\":\"%s.%03dZ\",\"msg\":\"access\",\"status\":%d,\"duration_ms\":%" PRIu64
                 ",\"attempts\":%u,\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64 ",\"route\":",
                 ts, (int)(tv.tv_usec / 1000), x->status, now - x->start_ms, x->attempts,
                 x->bytes_in, x->bytes_out);
    tr_buf_append(b, head, (size_t)n);
    tr_jsonw_cstr(b, x->route ? x->route->name : "");
    tr_buf_append_str(b, ",\"upstream\":");
    tr_jsonw_cstr(b, x->up ? x->up->cfg->name : "");
    tr_buf_append_str(b, ",\"endpoint\":");
    tr_jsonw_cstr(b, x->endpoint);
    tr_buf_append_str(b, ",\"method\":");
    tr_jsonw_cstr(b, x->method);
    tr_buf_append_str(b, ",\"path\":");
    tr_jsonw_cstr(b, x->path);
    tr_buf_append_str(b, ",\"correlation_id\":");
    tr_jsonw_cstr(b, x->corr);
    tr_buf_append_str(b, ",\"trace_id\":");
    tr_jsonw_cstr(b, x->trace_id);
    if (x->error) {
        tr_buf_append_str(b, ",\"error\":");
        tr_jsonw_cstr(b, x->error);
    }
    tr_buf_append_str(b, "}\n");
    if (b->len >= ACCESS_FLUSH) gw_access_flush(wk);
}

/* ---- ending */

static void release_attempt_state(gw_exchange_t *x)
{
    tr_deadline_disarm(&x->try_deadline);
}

/* Ends the exchange once the client is answered (or gone) and nothing upstream is pending. */
static void finish(gw_exchange_t *x)
{
    if (x->req || x->creq) return;
    gw_worker_t *wk = x->wk;
    tr_deadline_disarm(&x->total);
    gw_timer_put(wk, x->backoff);
    release_attempt_state(x);
    x->backoff = NULL;
    if (x->has_bulkhead) tr_bulkhead_release(&x->limits->bulkhead, TR_BULKHEAD_REQUESTS);
    if (x->has_budget) tr_retry_budget_request_end(&x->limits->budget);
    if (x->route) {
        int cls = x->status / 100;
        if (cls >= 1 && cls <= 5)
            tr_counter_inc(x->gen->m_route_requests[x->route->index * 5 + cls - 1]);
        tr_histogram_observe(x->gen->m_route_latency[x->route->index],
                             (double)(uv_now(wk->loop) - x->start_ms) / 1000.0);
    }
    if (x->up) {
        tr_counter_inc(x->up->m_requests);
        if (x->error) tr_counter_inc(x->up->m_errors);
    }
    if (tracing(x))
        emit_span(x, TR_SPAN_SERVER, x->server_span, x->parent_span, x->start_ns, x->status,
                  x->error);
    access_log(x);
    exchange_put(x);
}

/* ---- upstream callbacks */

static void on_client_drain(tr_http_req_t *req)
{
    gw_exchange_t *x = req->data;
    if (x->creq) tr_http_client_resume(x->creq);
}

static void respond_headers(gw_exchange_t *x, int status, const tr_http_client_header_t *h,
                            size_t n)
{
    tr_http_req_t *req = x->req;
    const gw_headers_t *ops = &x->route->res_headers;
    const char *conn = NULL;
    size_t conn_len = 0;
    for (size_t i = 0; i < n; i++)
        if (NAME_IS(&h[i], "connection")) conn = h[i].value, conn_len = h[i].value_len;
    for (size_t i = 0; i < n; i++) {
        if (hop_by_hop(h[i].name, h[i].name_len)) continue;
        if (conn && in_connection(conn, conn_len, h[i].name, h[i].name_len)) continue;
        /* Our server writes its own Date; the IDs are ours to return. */
        if (NAME_IS(&h[i], "x-correlation-id") || NAME_IS(&h[i], "x-request-id") ||
            NAME_IS(&h[i], "date"))
            continue;
        if (ops->n && route_removes(ops, h[i].name, h[i].name_len)) continue;
        tr_http_res_headern(req, h[i].name, h[i].name_len, h[i].value, h[i].value_len);
    }
    for (size_t i = 0; i < ops->n; i++)
        if (ops->ops[i].value)
            tr_http_res_headern(req, ops->ops[i].name, ops->ops[i].name_len, ops->ops[i].value,
                                ops->ops[i].value_len);
    common_headers(x);
    x->status = status;
    tr_http_res_start(req, status);
}

static int64_t retry_after(const tr_http_client_header_t *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!NAME_IS(&h[i], "retry-after")) continue;
        uint64_t ms;
        if (tr_retry_after_parse(h[i].value, h[i].value_len, (int64_t)time(NULL), &ms) == 0)
            return (int64_t)ms;
    }
    return -1;
}

/* Whether another attempt may follow this outcome: policy, budget, deadlines, client. */
static bool may_retry(gw_exchange_t *x, const tr_retry_outcome_t *o)
{
    if (!x->req || x->total_timed_out || x->streaming) return false;
    if (!tr_retry_should(&x->route->retry, x->req->method, o, x->attempts)) return false;
    if (!tr_retry_budget_allow(&x->limits->budget)) return false;
    x->retry_slot = true;
    return true;
}

static void on_up_headers(tr_http_client_req_t *creq, int status,
                          const tr_http_client_header_t *headers, size_t n)
{
    gw_exchange_t *x = tr_http_client_req_data(creq);
    if (!x->req) return;
    if (status >= 500 || status == 409 || status == 429) {
        tr_retry_outcome_t o = {TR_RETRY_STATUS, status, retry_after(headers, n)};
        if (may_retry(x, &o)) {
            x->discard = true; /* read and drop this answer, then try again */
            x->pending = o;
            return;
        }
    }
    respond_headers(x, status, headers, n);
}

static void on_up_body(tr_http_client_req_t *creq, const char *data, size_t len)
{
    gw_exchange_t *x = tr_http_client_req_data(creq);
    if (x->discard || !x->req) return;
    x->bytes_out += len;
    if (!tr_http_res_write(x->req, data, len)) tr_http_client_pause(creq);
}

static out_kind_t classify(gw_exchange_t *x, tr_http_client_req_t *creq, int err)
{
    if (x->try_timed_out || x->total_timed_out || err == TR_ERESPONSE_TIMEOUT) return OUT_TIMEOUT;
    if (!tr_http_client_request_sent(creq) || err == TR_ECONNECT_TIMEOUT) return OUT_CONNECT;
    return OUT_RESET;
}

static void record(gw_exchange_t *x, out_kind_t kind, int status)
{
    gw_up_rt_t *up = x->up;
    uint64_t now = uv_now(x->wk->loop);
    if (tracing(x)) {
        static const char *const errs[] = {NULL, "upstream_connect_failure", "upstream_reset",
                                           "upstream_timeout"};
        /* The attempt's span id is the one its traceparent carried upstream. */
        emit_span(x, TR_SPAN_CLIENT, x->tctx.span_id, x->server_span, x->try_start_ns, status,
                  errs[kind]);
    }
    bool ok = kind == OUT_OK && status < 500;
    if (x->has_ticket) {
        tr_breaker_record(&up->breaker, &x->ticket, now, ok, now - x->try_start_ms);
        x->has_ticket = false;
    }
    if (x->has_route_ticket) {
        tr_breaker_record(&x->gen->route_breakers[x->route->index], &x->route_ticket, now, ok,
                          now - x->try_start_ms);
        x->has_route_ticket = false;
    }
    if (x->ep) {
        gw_epstats_record(x->wk, x->ep, !ok, now - x->try_start_ms);
        if (!ok) x->failed[x->nfailed++ % 4] = id_hash(x->ep->id);
        if (up->cfg->has_outlier) {
            static const tr_outlier_result_t map[] = {TR_OUTLIER_STATUS, TR_OUTLIER_CONNECT_FAILURE,
                                                      TR_OUTLIER_RESET, TR_OUTLIER_TIMEOUT};
            if (tr_outlier_record(&up->outlier, tr_endpoint_user(x->ep), now, map[kind], status)) {
                tr_counter_inc(up->m_ejections);
                tr_log_warn("gateway: endpoint ejected", TR_LOG_STR("upstream", up->cfg->name),
                            TR_LOG_STR("endpoint", x->ep->id));
            }
        }
        tr_discovery_done(x->ep);
        x->ep = NULL;
    }
    if (x->retry_slot && x->attempts > 1) {
        tr_retry_budget_retry_end(&x->limits->budget);
    }
}

static void on_backoff(uv_timer_t *t)
{
    gw_exchange_t *x = t->data;
    gw_timer_put(x->wk, x->backoff);
    x->backoff = NULL;
    if (!x->req) {
        finish(x);
        return;
    }
    tr_counter_inc(x->up->m_retries);
    attempt(x);
}

static void schedule_retry(gw_exchange_t *x, const tr_retry_outcome_t *o)
{
    uint64_t delay;
    if (tr_retry_delay_ms(&x->route->retry, x->attempts, gw_rand(x->wk), o, &delay) != 0) delay = 0;
    x->backoff = gw_timer_get(x->wk);
    x->backoff->t.data = x;
    uv_timer_start(&x->backoff->t, on_backoff, delay, 0);
}

static void cancel_tickets(gw_exchange_t *x);

static void on_up_complete(tr_http_client_req_t *creq, int err)
{
    gw_exchange_t *x = tr_http_client_req_data(creq);
    x->creq = NULL;
    release_attempt_state(x);
    if (err == TR_ECANCELED && x->client_gone && !x->try_timed_out && !x->total_timed_out) {
        /* We cancelled because the client left: that says nothing about the upstream, so
         * neither the breakers nor outlier detection hear of it. */
        cancel_tickets(x);
        if (x->ep) tr_discovery_done(x->ep);
        x->ep = NULL;
        if (x->retry_slot && x->attempts > 1) tr_retry_budget_retry_end(&x->limits->budget);
        finish(x);
        return;
    }
    out_kind_t kind = err ? classify(x, creq, err) : OUT_OK;
    record(x, kind, err ? 0 : (x->discard ? x->pending.status : x->status));
    if (!x->req) { /* the client went away */
        finish(x);
        return;
    }
    if (!err && !x->discard) {
        tr_http_res_end(detach(x));
        finish(x);
        return;
    }
    if (!err && x->discard) {
        x->discard = false;
        schedule_retry(x, &x->pending);
        return;
    }
    if (tr_http_res_started(x->req)) { /* too late for an error answer: cut the response */
        x->error = "upstream_reset";
        tr_http_res_abort(detach(x));
        finish(x);
        return;
    }
    static const tr_retry_outcome_kind_t rk[] = {TR_RETRY_STATUS, TR_RETRY_CONNECT_FAILURE,
                                                 TR_RETRY_RESET, TR_RETRY_TIMEOUT};
    tr_retry_outcome_t o = {rk[kind], 0, -1};
    if (!x->total_timed_out && may_retry(x, &o)) {
        x->try_timed_out = false;
        schedule_retry(x, &o);
        return;
    }
    if (kind == OUT_TIMEOUT)
        fail(x, "upstream_timeout", "Upstream timed out",
             x->total_timed_out ? "the upstream did not answer within the route's timeout"
                                : "the upstream did not answer within the per-try timeout");
    else if (kind == OUT_CONNECT)
        fail(x, "upstream_connect_failure", "Upstream unreachable",
             "could not connect to any endpoint of the upstream");
    else
        fail(x, "upstream_reset", "Upstream reset",
             "the upstream closed the connection before answering");
}

static void on_up_drain(tr_http_client_req_t *creq)
{
    gw_exchange_t *x = tr_http_client_req_data(creq);
    if (x->req) tr_http_req_resume(x->req);
}

static void on_try_timeout(tr_deadline_t *d)
{
    gw_exchange_t *x = d->data;
    x->try_timed_out = true;
    if (x->creq) tr_http_client_cancel(x->creq);
}

static void on_total_timeout(tr_deadline_t *d)
{
    gw_exchange_t *x = d->data;
    x->total_timed_out = true;
    if (x->creq) {
        tr_http_client_cancel(x->creq);
    } else if (x->backoff && x->req) {
        gw_timer_put(x->wk, x->backoff);
        x->backoff = NULL;
        fail(x, "upstream_timeout", "Upstream timed out",
             "the upstream did not answer within the route's timeout");
    }
}

/* ---- attempts */

static bool endpoint_ok(tr_endpoint_t *ep, void *data)
{
    gw_exchange_t *x = data;
    if (x->nfailed) {
        uint64_t h = id_hash(ep->id);
        for (unsigned i = 0; i < x->nfailed && i < 4; i++)
            if (x->failed[i] == h) return false;
    }
    return !x->up->cfg->has_outlier ||
           tr_outlier_available(&x->up->outlier, tr_endpoint_user(ep), uv_now(x->wk->loop));
}

/* An endpoint that is not ejected and, on a retry, none that an earlier attempt failed on. */
static int pick(gw_exchange_t *x)
{
    gw_up_rt_t *up = x->up;
    if (!up->watch) return TR_ENOTFOUND;
    if (!up->cfg->has_outlier && !x->nfailed)
        return tr_discovery_pick(up->watch, up->cfg->lb, &x->ep);
    int err = tr_discovery_pick_if(up->watch, up->cfg->lb, endpoint_ok, x, &x->ep);
    /* Every endpoint ejected (or the failed one is the only one): Envoy's panic mode
     * routes to all rather than fail. */
    if (err == TR_ENOTFOUND) err = tr_discovery_pick(up->watch, up->cfg->lb, &x->ep);
    return err;
}

static void circuit_open(gw_exchange_t *x, const char *whose)
{
    if (fallback(x, "circuit_open")) return;
    char detail[128];
    snprintf(detail, sizeof(detail),
             "the %s circuit breaker is open after recent failures; retry later", whose);
    fail(x, "circuit_open", "Circuit open", detail);
}

static void cancel_tickets(gw_exchange_t *x)
{
    if (x->has_ticket) tr_breaker_cancel(&x->up->breaker, &x->ticket);
    if (x->has_route_ticket)
        tr_breaker_cancel(&x->gen->route_breakers[x->route->index], &x->route_ticket);
    x->has_ticket = x->has_route_ticket = false;
}

/* The route's own breaker (when it has one), then the upstream's. */
static bool breakers_allow(gw_exchange_t *x, uint64_t now)
{
    if (x->route->has_breaker) {
        tr_breaker_t *rb = &x->gen->route_breakers[x->route->index];
        if (tr_breaker_allow(rb, now, &x->route_ticket) != 0) {
            circuit_open(x, "route's");
            return false;
        }
        x->has_route_ticket = true;
    }
    if (x->up->cfg->has_breaker) {
        if (tr_breaker_allow(&x->up->breaker, now, &x->ticket) != 0) {
            cancel_tickets(x);
            circuit_open(x, "upstream's");
            return false;
        }
        x->has_ticket = true;
    }
    return true;
}

static void attempt(gw_exchange_t *x)
{
    uint64_t now = uv_now(x->wk->loop);
    if (!breakers_allow(x, now)) return;
    if (pick(x) != 0) {
        cancel_tickets(x);
        if (!fallback(x, "no_healthy_endpoint"))
            fail(x, "no_healthy_endpoint", "No healthy endpoint",
                 "the upstream has no passing endpoint right now");
        return;
    }
    copy_str(x->endpoint, sizeof(x->endpoint), x->ep->http.host, strlen(x->ep->http.host));
    x->attempts++;
    x->try_start_ms = now;
    if (x->attempts > 1) {
        /* Each attempt is its own client span; the upstream sees it as its parent. */
        tr_trace_new_ids(&x->tctx, false);
        tr_trace_format_traceparent(&x->tctx, x->traceparent);
    }
    if (x->wk->gw->o.spans) x->try_start_ns = now_ns();
    tr_http_req_t *req = x->req;
    tr_http_client_request_t r = {
        .method = req->method,
        .target = x->target,
        .headers = x->hdrs,
        .nheaders = x->nhdrs,
        .body_mode = x->streaming  ? TR_HTTP_CLIENT_BODY_STREAM
                     : x->buffered ? TR_HTTP_CLIENT_BODY_BUFFER
                                   : TR_HTTP_CLIENT_BODY_NONE,
        .body = x->body.data,
        .body_len = x->body.len,
        .content_length = req->chunked ? -1 : req->content_length,
        .flags = tr_retry_idempotent(req->method) ? TR_HTTP_CLIENT_IDEMPOTENT : 0,
        .on_headers = on_up_headers,
        .on_body = on_up_body,
        .on_complete = on_up_complete,
        .on_drain = on_up_drain,
        .data = x,
    };
    int err = tr_http_client_request(x->up->client, &x->ep->http, &r, &x->creq);
    if (err) {
        x->creq = NULL;
        record(x, OUT_CONNECT, 0);
        fail(x, "upstream_connect_failure", "Upstream unreachable", tr_strerror(err));
        return;
    }
    uint64_t per_try = x->route->per_try_timeout_ms;
    if (per_try) tr_deadline_arm(x->wk->deadlines, &x->try_deadline, per_try, on_try_timeout, x);
}

/* ---- the client side */

static void on_req_abort(tr_http_req_t *req)
{
    gw_exchange_t *x = req->data;
    x->req = NULL;
    x->client_gone = true;
    if (!x->error) x->error = "client_closed";
    if (x->creq) tr_http_client_cancel(x->creq);
    finish(x);
}

static void on_req_body(tr_http_req_t *req, const char *data, size_t len)
{
    gw_exchange_t *x = req->data;
    x->bytes_in += len;
    if (x->buffered) {
        tr_buf_append(&x->body, data, len);
    } else if (x->creq && tr_http_client_write(x->creq, data, len) == 0) {
        tr_http_req_pause(req);
    }
}

static void on_req_end(tr_http_req_t *req)
{
    gw_exchange_t *x = req->data;
    x->body_done = true;
    if (x->buffered)
        attempt(x);
    else if (x->creq)
        tr_http_client_end(x->creq);
}

/* ---- edge policies */

static bool preflight(gw_exchange_t *x)
{
    const gw_cors_t *c = &x->route->cors;
    tr_http_req_t *req = x->req;
    if (!c->on || !x->origin || strcmp(req->method, "OPTIONS") ||
        !find_header(req, "access-control-request-method", 29))
        return false;
    if (!origin_allowed(c, x->origin)) {
        x->status = 403;
        x->error = "cors_origin";
        tr_http_res_problem(req, 403, "cors-origin", "Origin not allowed",
                            "the origin %s may not call this route", x->origin);
        return true;
    }
    cors_headers(x);
    tr_http_res_header(req, "Access-Control-Allow-Methods", c->methods);
    tr_http_res_header(req, "Access-Control-Allow-Headers", c->headers);
    char age[24];
    snprintf(age, sizeof(age), "%llu", (unsigned long long)c->max_age_s);
    tr_http_res_header(req, "Access-Control-Max-Age", age);
    x->status = 204;
    tr_http_res_send(req, 204, NULL, NULL, 0);
    return true;
}

/* Verifies the bearer token. Returns false after answering 401. */
static bool authenticate(gw_exchange_t *x, tr_jwt_claims_t *claims)
{
    gw_jwt_t *j = x->route->jwt;
    const tr_http_header_t *h = find_header(x->req, "authorization", 13);
    const char *reason = "missing bearer token";
    if (!h && j->optional) return true;
    if (h && h->value_len > 7 && !strncasecmp(h->value, "Bearer ", 7)) {
        tr_jwt_verifier_t v = j->verifier;
        v.keys = atomic_load(&j->keys);
        v.cache = x->wk->jwt_cache;
        const char *tok = h->value + 7;
        while (*tok == ' ')
            tok++;
        int rc = tr_jwt_verify(&v, tok, h->value_len - (size_t)(tok - h->value),
                               (uint64_t)time(NULL), claims, &reason);
        if (rc == 0) return true;
        if (rc == TR_ENOTFOUND) gw_jwks_unknown_kid(x->wk, j);
    }
    x->error = "unauthorized";
    x->status = 401;
    common_headers(x);
    char www[160];
    if (h) /* RFC 6750 3.1: no error code when the request carried no credentials */
        snprintf(www, sizeof(www), "Bearer error=\"invalid_token\", error_description=\"%s\"",
                 reason);
    else
        snprintf(www, sizeof(www), "Bearer");
    tr_http_res_header(x->req, "WWW-Authenticate", www);
    tr_http_res_header(x->req, "x-trellis-error", "unauthorized");
    tr_http_res_problem(x->req, 401, "unauthorized", "Unauthorized", "%s", reason);
    return false;
}

/* Takes a token from the route's bucket. Returns false after answering 429. */
static bool rate_limit(gw_exchange_t *x, const tr_jwt_claims_t *claims)
{
    gw_ratelimit_t *rl = x->route->rate_limit;
    tr_ratelimit_result_t res;
    uint64_t now = uv_now(x->wk->loop);
    tr_ratelimit_verdict_t v;
    if (rl->key == GW_RL_KEY_ROUTE) {
        v = tr_ratelimit_take(&rl->bucket, now, &res);
    } else {
        const char *key = "";
        size_t len = 0;
        char peer[64];
        if (rl->key == GW_RL_KEY_SUBJECT && claims && claims->sub) {
            key = claims->sub;
        } else if (rl->key == GW_RL_KEY_HEADER) {
            const char *hv = tr_http_req_header(x->req, rl->header);
            key = hv ? hv : "";
        } else {
            tr_http_req_peer(x->req, peer, sizeof(peer));
            char *colon = strrchr(peer, ':');
            if (colon) *colon = '\0';
            key = peer;
        }
        len = strlen(key);
        v = tr_ratelimit_table_take(rl->table, key, len, now, &res);
    }
    char buf[24];
    snprintf(buf, sizeof(buf), "%u", res.limit);
    tr_http_res_header(x->req, "RateLimit-Limit", buf);
    snprintf(buf, sizeof(buf), "%u", res.remaining);
    tr_http_res_header(x->req, "RateLimit-Remaining", buf);
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)res.reset_s);
    tr_http_res_header(x->req, "RateLimit-Reset", buf);
    if (v == TR_RATELIMIT_ALLOWED) return true;
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)res.retry_after_s);
    tr_http_res_header(x->req, "Retry-After", buf);
    x->error = "rate_limited";
    x->status = 429;
    common_headers(x);
    tr_http_res_header(x->req, "x-trellis-error", "rate_limited");
    tr_http_res_problem(x->req, 429, "rate-limited", "Too many requests",
                        "the rate limit of this route is spent; retry after %llu s",
                        (unsigned long long)res.retry_after_s);
    return false;
}

/* ---- entry */

/* The response was sent by a policy before any upstream work. */
static void answer_early(gw_exchange_t *x)
{
    x->req = NULL;
    finish(x);
}

void gw_proxy_handle(tr_http_req_t *req, void *data)
{
    gw_worker_t *wk = data;
    gw_gen_t *gen = wk->gen;
    if (!gen) { /* stopping: a request that was already queued on a connection */
        tr_http_res_close(req);
        tr_http_res_problem(req, 503, "shutting-down", "Shutting down",
                            "the gateway is stopping; retry on another instance");
        return;
    }
    gw_exchange_t *x = exchange_get(wk);
    x->req = req;
    x->gen = gen;
    gen->refs++;
    x->start_ms = uv_now(wk->loop);
    if (wk->gw->o.spans) x->start_ns = now_ns();
    copy_str(x->method, sizeof(x->method), req->method, strlen(req->method));
    copy_str(x->path, sizeof(x->path), req->path, req->path_len);
    ids(x);
    trace_context(x, req);
    tr_route_request_t rq = {req->method, strlen(req->method), req->path,    req->path_len,
                             req->query,  req->query_len,      req->headers, req->nheaders};
    tr_route_match_t m;
    int rc = tr_router_match(gen->cfg->router, &rq, gw_rand(wk), &m, x->target, sizeof(x->target));
    if (rc) {
        x->status = rc == TR_ENOTFOUND ? 404 : rc == TR_ETOOLARGE ? 414 : 400;
        x->error = rc == TR_ENOTFOUND ? "no_route" : "bad_path";
        common_headers(x);
        tr_http_res_header(req, "x-trellis-error", x->error);
        if (rc == TR_ENOTFOUND)
            tr_http_res_problem(req, 404, "no-route", "No route",
                                "no route of this gateway matches %s %.*s", req->method,
                                (int)(req->path_len < 200 ? req->path_len : 200), req->path);
        else
            tr_http_res_problem(req, x->status, "bad-path", "Bad request path",
                                "the path is malformed (bad percent-encoding, an encoded '/' or "
                                "'\\', or too long)");
        answer_early(x);
        return;
    }
    x->route = tr_route_data(m.route);
    const tr_http_header_t *origin = find_header(req, "origin", 6);
    x->origin = origin ? origin->value : NULL;
    if (preflight(x)) {
        answer_early(x);
        return;
    }
    tr_jwt_claims_t claims = {0};
    if (x->route->jwt && !authenticate(x, &claims)) {
        answer_early(x);
        return;
    }
    if (x->route->rate_limit && !rate_limit(x, &claims)) {
        tr_jwt_claims_clear(&claims);
        answer_early(x);
        return;
    }
    req->data = x;
    req->on_abort = on_req_abort;
    req->on_drain = on_client_drain;
    if (x->route->nparts) {
        tr_jwt_claims_clear(&claims);
        x->status = 200;
        gw_aggregate_start(x->wk, detach(x), x->route, x->corr, x->traceparent);
        finish(x);
        return;
    }
    if (!m.destination) {
        tr_jwt_claims_clear(&claims);
        if (!fallback(x, "fallback_route"))
            fail(x, "no_healthy_endpoint", "No destination", "the route has no destination");
        return;
    }
    const gw_upstream_t *u = m.destination->target;
    x->up = gen->ups[u->index];
    build_headers(x, &claims);
    tr_jwt_claims_clear(&claims);
    x->limits = x->up->shared;
    if (tr_bulkhead_acquire(&x->limits->bulkhead, TR_BULKHEAD_REQUESTS) != 0) {
        fail(x, "overloaded", "Upstream overloaded",
             "the upstream's concurrent request limit is reached; retry shortly");
        return;
    }
    x->has_bulkhead = true;
    tr_retry_budget_request_begin(&x->limits->budget);
    x->has_budget = true;
    if (x->route->timeout_ms)
        tr_deadline_arm(wk->deadlines, &x->total, x->route->timeout_ms, on_total_timeout, x);
    bool has_body = req->chunked || req->content_length > 0;
    if (!has_body) {
        x->body_done = true;
        attempt(x);
        return;
    }
    req->on_body = on_req_body;
    req->on_end = on_req_end;
    if (x->route->retry.attempts > 1 && req->content_length >= 0 &&
        (uint64_t)req->content_length <= x->route->retry_buffer) {
        x->buffered = true; /* attempt() once the body is complete */
    } else {
        x->streaming = true;
        attempt(x);
    }
}
