/* Service discovery over Consul-style blocking health queries, with weighted load balancing. */
#include "trellis/discovery.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "core/mem.h"
#include "trellis/discovery_hub.h"
#include "trellis/log.h"

/*
 * Active request counts follow an instance (by Service.ID) across endpoint sets, so a
 * request picked before a change is still counted after it and its done lands on the
 * same counter.
 */
struct tr__endpoint_stat_s {
    unsigned refs;
    uint32_t active;
    _Alignas(16) unsigned char user[TR_ENDPOINT_USER_BYTES];
};

/* An immutable endpoint list, reference-counted: the watch holds one ref, each pick one. */
struct tr__endpoint_set_s {
    unsigned refs;
    size_t n;
    uint64_t total_weight;
    tr_endpoint_t *eps;
    int64_t *rr_current; /* smooth weighted round-robin state, one per endpoint */
    char *strings;       /* ids and addresses */
};

/*
 * Where a watch's endpoints come from: a Consul-compatible registry over HTTP, or a
 * registry in this process through a tr_discovery_hub_t.
 */
typedef struct source_vtable_s {
    void (*start)(tr_discovery_watch_t *w);
    void (*stop)(tr_discovery_watch_t *w);
} source_vtable_t;

struct tr_discovery_watch_s {
    tr_discovery_t *d;
    const struct source_vtable_s *source;
    tr_discovery_watch_t *next;
    char *service;
    tr__endpoint_set_t *set;
    bool ready;
    /* HTTP source */
    uv_timer_t retry;
    bool in_flight; /* a query is out; its callback will still run */
    uint64_t index;
    uint64_t backoff_ms;
    bool failing;
};

struct tr_discovery_s {
    uv_loop_t *loop;
    tr_discovery_options_t o;
    char *registry;
    char *datacenter;
    tr_http_endpoint_t registry_ep;
    tr_http_client_t *client;
    const source_vtable_t *source;
    tr_discovery_watch_t *watches;
    uint64_t rng;
    tr_discovery_hub_t *hub;
    uv_async_t hub_notify;
    bool closing;
    unsigned pending_closes;
    tr_discovery_close_cb close_cb;
};

/* ---- endpoint sets */

static void set_release(tr__endpoint_set_t *s)
{
    if (s == NULL || --s->refs > 0) return;
    for (size_t i = 0; i < s->n; i++) {
        if (--s->eps[i].stat->refs == 0) free(s->eps[i].stat);
    }
    free(s->eps);
    free(s->rr_current);
    free(s->strings);
    free(s);
}

static const tr_endpoint_t *set_find(const tr__endpoint_set_t *s, const char *id)
{
    for (size_t i = 0; s != NULL && i < s->n; i++) {
        if (strcmp(s->eps[i].id, id) == 0) return &s->eps[i];
    }
    return NULL;
}

static bool endpoint_same(const tr_endpoint_t *a, const tr_endpoint_t *b)
{
    return strcmp(a->id, b->id) == 0 && strcmp(a->address, b->address) == 0 && a->port == b->port &&
           a->weight == b->weight && a->weight_warning == b->weight_warning;
}

static bool set_equal(const tr__endpoint_set_t *a, const tr__endpoint_set_t *b)
{
    if (a == NULL || a->n != b->n) return false;
    for (size_t i = 0; i < a->n; i++) {
        if (!endpoint_same(&a->eps[i], &b->eps[i])) return false;
    }
    return true;
}

static const char *json_str(json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "";
}

static uint32_t json_weight(json_t *weights, const char *key)
{
    json_int_t v = json_integer_value(json_object_get(weights, key));
    if (v <= 0) return 1;
    return v > 65535 ? 65535 : (uint32_t)v;
}

static void endpoint_http(tr_endpoint_t *ep)
{
    char hp[128];
    memset(&ep->http, 0, sizeof(ep->http));
    if (strchr(ep->address, ':') != NULL)
        snprintf(hp, sizeof(hp), "[%s]:%u", ep->address, ep->port);
    else
        snprintf(hp, sizeof(hp), "%s:%u", ep->address, ep->port);
    if (tr_http_endpoint_parse(&ep->http, hp) != 0) {
        memset(&ep->http, 0, sizeof(ep->http));
        ep->http.addr.ss_family = AF_UNSPEC;
    }
}

/* Fills one endpoint from a health entry; strings go to *cursor. Returns false to skip it. */
static bool parse_entry(json_t *entry, tr_endpoint_t *ep, char **cursor)
{
    json_t *svc = json_object_get(entry, "Service");
    json_t *port = json_object_get(svc, "Port");
    if (!json_is_object(svc) || !json_is_integer(port)) return false;
    json_int_t p = json_integer_value(port);
    const char *id = json_str(svc, "ID");
    const char *addr = json_str(svc, "Address");
    if (*addr == '\0') addr = json_str(json_object_get(entry, "Node"), "Address");
    if (p <= 0 || p > 65535 || *addr == '\0' || *id == '\0') return false;
    size_t idl = strlen(id) + 1, al = strlen(addr) + 1;
    memcpy(*cursor, id, idl);
    ep->id = *cursor;
    *cursor += idl;
    memcpy(*cursor, addr, al);
    ep->address = *cursor;
    *cursor += al;
    ep->port = (uint16_t)p;
    json_t *w = json_object_get(svc, "Weights");
    ep->weight = json_weight(w, "Passing");
    ep->weight_warning = json_weight(w, "Warning");
    endpoint_http(ep);
    return true;
}

static int cmp_endpoint(const void *a, const void *b)
{
    return strcmp(((const tr_endpoint_t *)a)->id, ((const tr_endpoint_t *)b)->id);
}

/* Sum of the string bytes the entries need; the body size bounds it. */
static size_t strings_size(json_t *root)
{
    size_t i, total = 1;
    json_t *entry;
    json_array_foreach(root, i, entry)
    {
        json_t *svc = json_object_get(entry, "Service");
        total += strlen(json_str(svc, "ID")) + strlen(json_str(svc, "Address")) +
                 strlen(json_str(json_object_get(entry, "Node"), "Address")) + 2;
    }
    return total;
}

/*
 * Builds a set from a /v1/health/service answer, sharing active counters with `prev`.
 * Entries without a usable address, port or ID are skipped. Returns NULL when the body is
 * not a JSON array.
 */
static tr__endpoint_set_t *set_parse(const char *body, size_t len, const tr__endpoint_set_t *prev)
{
    json_t *root = json_loadb(body, len, 0, NULL);
    if (!json_is_array(root)) {
        json_decref(root);
        return NULL;
    }
    size_t n = json_array_size(root);
    tr__endpoint_set_t *s = tr_calloc(1, sizeof(*s));
    s->refs = 1;
    s->eps = tr_calloc(n ? n : 1, sizeof(*s->eps));
    s->strings = tr_malloc(strings_size(root));
    char *cursor = s->strings;
    for (size_t i = 0; i < n; i++) {
        if (parse_entry(json_array_get(root, i), &s->eps[s->n], &cursor)) s->n++;
    }
    json_decref(root);
    /* A stable order makes change detection and round robin independent of answer order. */
    qsort(s->eps, s->n, sizeof(*s->eps), cmp_endpoint);
    s->rr_current = tr_calloc(s->n ? s->n : 1, sizeof(*s->rr_current));
    for (size_t i = 0; i < s->n; i++) {
        tr_endpoint_t *ep = &s->eps[i];
        const tr_endpoint_t *old = set_find(prev, ep->id);
        ep->stat = old ? old->stat : tr_calloc(1, sizeof(*ep->stat));
        ep->stat->refs++;
        ep->set = s;
        s->total_weight += ep->weight;
    }
    return s;
}

/* ---- picking */

static uint64_t rng_next(tr_discovery_t *d)
{
    /* xorshift64*: fast, and good enough to spread load. */
    d->rng ^= d->rng >> 12;
    d->rng ^= d->rng << 25;
    d->rng ^= d->rng >> 27;
    return d->rng * 0x2545F4914F6CDD1DULL;
}

static size_t pick_weighted(tr_discovery_t *d, const tr__endpoint_set_t *s)
{
    uint64_t r = rng_next(d) % s->total_weight;
    for (size_t i = 0; i < s->n; i++) {
        if (r < s->eps[i].weight) return i;
        r -= s->eps[i].weight;
    }
    return s->n - 1;
}

static size_t pick_round_robin(tr__endpoint_set_t *s)
{
    size_t best = 0;
    for (size_t i = 0; i < s->n; i++) {
        s->rr_current[i] += s->eps[i].weight;
        if (s->rr_current[i] > s->rr_current[best]) best = i;
    }
    s->rr_current[best] -= (int64_t)s->total_weight;
    return best;
}

/*
 * Power of two choices: two distinct weighted-random candidates, keep the less loaded one.
 * Load is the active request count, divided by the weight when `per_weight`. Ties keep
 * the first candidate, so an idle set is still spread by weight.
 */
static size_t pick_two(tr_discovery_t *d, const tr__endpoint_set_t *s, bool per_weight)
{
    if (s->n == 1) return 0;
    size_t a = pick_weighted(d, s), b = a;
    for (int tries = 0; b == a && tries < 8; tries++)
        b = pick_weighted(d, s);
    if (b == a) b = (a + 1 + rng_next(d) % (s->n - 1)) % s->n;
    const tr_endpoint_t *ea = &s->eps[a], *eb = &s->eps[b];
    /* Compare active/weight without division. */
    uint64_t la = (uint64_t)ea->stat->active * (per_weight ? eb->weight : 1);
    uint64_t lb = (uint64_t)eb->stat->active * (per_weight ? ea->weight : 1);
    return lb < la ? b : a;
}

int tr_discovery_pick(tr_discovery_watch_t *w, tr_lb_policy_t policy, tr_endpoint_t **out)
{
    tr__endpoint_set_t *s = w->set;
    size_t i;
    if (s == NULL || s->n == 0) return TR_ENOTFOUND;
    switch (policy) {
    case TR_LB_ROUND_ROBIN:
        i = pick_round_robin(s);
        break;
    case TR_LB_RANDOM:
        i = pick_weighted(w->d, s);
        break;
    case TR_LB_LEAST_REQUEST:
        i = pick_two(w->d, s, true);
        break;
    case TR_LB_P2C:
        i = pick_two(w->d, s, false);
        break;
    default:
        return UV_EINVAL;
    }
    s->refs++;
    s->eps[i].stat->active++;
    *out = &s->eps[i];
    return 0;
}

int tr_discovery_pick_if(tr_discovery_watch_t *w, tr_lb_policy_t policy, tr_endpoint_filter_cb ok,
                         void *data, tr_endpoint_t **out)
{
    /* A few tries with the policy keep its distribution when few endpoints are excluded. */
    for (int tries = 0; tries < 3; tries++) {
        int err = tr_discovery_pick(w, policy, out);
        if (err) return err;
        if (ok(*out, data)) return 0;
        tr_discovery_done(*out);
    }
    tr__endpoint_set_t *s = w->set;
    size_t start = (size_t)(rng_next(w->d) % s->n);
    for (size_t k = 0; k < s->n; k++) {
        tr_endpoint_t *ep = &s->eps[(start + k) % s->n];
        if (!ok(ep, data)) continue;
        s->refs++;
        ep->stat->active++;
        *out = ep;
        return 0;
    }
    return TR_ENOTFOUND;
}

void *tr_endpoint_user(tr_endpoint_t *ep)
{
    return ep->stat->user;
}

void tr_discovery_done(tr_endpoint_t *ep)
{
    if (ep == NULL) return;
    if (ep->stat->active > 0) ep->stat->active--;
    set_release(ep->set);
}

uint32_t tr_discovery_active(const tr_endpoint_t *ep)
{
    return ep->stat->active;
}

size_t tr_discovery_endpoints(const tr_discovery_watch_t *w, const tr_endpoint_t **out)
{
    *out = (w->set && w->set->n) ? w->set->eps : NULL;
    return w->set ? w->set->n : 0;
}

bool tr_discovery_ready(const tr_discovery_watch_t *w)
{
    return w->ready;
}

const char *tr_discovery_service(const tr_discovery_watch_t *w)
{
    return w->service;
}

/* ---- the watch: applies answers and failures from any source */

static void watch_update(tr_discovery_watch_t *w, tr__endpoint_set_t *s)
{
    tr_discovery_t *d = w->d;
    bool first = !w->ready;
    w->ready = true;
    if (!first && set_equal(w->set, s)) {
        set_release(s);
        return;
    }
    set_release(w->set);
    w->set = s;
    tr_log_debug("discovery: endpoints changed", TR_LOG_STR("service", w->service),
                 TR_LOG_UINT("endpoints", s->n));
    if (d->o.on_change) d->o.on_change(w, d->o.data);
}

/* ---- HTTP source: blocking queries against a Consul-compatible registry */

static void http_query(tr_discovery_watch_t *w);
static void static_noop(tr_discovery_watch_t *w)
{
    (void)w;
}

static const source_vtable_t static_source = {static_noop, static_noop};

int tr_discovery_watch_static(tr_discovery_t *d, const char *name, const char *const *addrs,
                              const uint32_t *weights, size_t n, tr_discovery_watch_t **out)
{
    if (d->closing) return TR_ESTATE;
    if (name == NULL || *name == '\0') return UV_EINVAL;
    for (tr_discovery_watch_t *w = d->watches; w; w = w->next)
        if (strcmp(w->service, name) == 0) return TR_EEXISTS;
    /* Static endpoints become the same answer a registry would give, parsed the same way. */
    json_t *answer = json_array();
    for (size_t i = 0; i < n; i++) {
        tr_http_endpoint_t ep;
        if (tr_http_endpoint_parse(&ep, addrs[i]) != 0) {
            json_decref(answer);
            return UV_EINVAL;
        }
        const char *colon = strrchr(addrs[i], ':');
        char ip[64];
        size_t iplen = (size_t)(colon - addrs[i]);
        const char *ipstart = addrs[i];
        if (ipstart[0] == '[') ipstart++, iplen -= 2;
        snprintf(ip, sizeof(ip), "%.*s", (int)iplen, ipstart);
        json_array_append_new(
            answer, json_pack("{s:{s:s}, s:{s:s, s:s, s:i, s:{s:i, s:i}}}", "Node", "Address", "",
                              "Service", "ID", addrs[i], "Address", ip, "Port", atoi(colon + 1),
                              "Weights", "Passing", weights ? (int)weights[i] : 1, "Warning", 1));
    }
    char *body = json_dumps(answer, JSON_COMPACT);
    json_decref(answer);
    tr__endpoint_set_t *set = set_parse(body, strlen(body), NULL);
    free(body);
    tr_discovery_watch_t *w = tr_calloc(1, sizeof(*w));
    w->d = d;
    w->service = tr_strdup(name);
    w->source = &static_source;
    uv_timer_init(d->loop, &w->retry);
    w->retry.data = w;
    w->next = d->watches;
    d->watches = w;
    watch_update(w, set);
    if (out) *out = w;
    return 0;
}

static void close_step(tr_discovery_t *d);

static void append_escaped(char *dst, size_t cap, const char *s)
{
    size_t len = strlen(dst);
    for (; *s && len + 4 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~') {
            dst[len++] = (char)c;
        } else {
            len += (size_t)snprintf(dst + len, cap - len, "%%%02X", c);
        }
    }
    dst[len] = '\0';
}

static uint64_t header_index(const tr_http_client_response_t *res)
{
    for (size_t i = 0; i < res->nheaders; i++) {
        const tr_http_client_header_t *h = &res->headers[i];
        if (h->name_len == 14 && strncasecmp(h->name, "X-Consul-Index", 14) == 0) {
            char buf[24];
            size_t n = h->value_len < sizeof(buf) - 1 ? h->value_len : sizeof(buf) - 1;
            memcpy(buf, h->value, n);
            buf[n] = '\0';
            return strtoull(buf, NULL, 10);
        }
    }
    return 0;
}

static void on_retry(uv_timer_t *t)
{
    http_query(t->data);
}

static void http_fail(tr_discovery_watch_t *w, int err, int status)
{
    tr_discovery_t *d = w->d;
    if (!w->failing) {
        w->failing = true;
        tr_log_warn("discovery: registry query failed; serving the last known endpoints",
                    TR_LOG_STR("service", w->service), TR_LOG_STR("registry", d->registry),
                    TR_LOG_ERR(err), TR_LOG_INT("status", status),
                    TR_LOG_UINT("endpoints", w->set ? w->set->n : 0));
    }
    /* The retry does not block, so a recovery is noticed (and logged) as soon as it happens,
     * and changes missed during the outage arrive at once. */
    w->index = 0;
    uv_timer_start(&w->retry, on_retry, w->backoff_ms, 0);
    w->backoff_ms = w->backoff_ms * 2 > d->o.retry_max_ms ? d->o.retry_max_ms : w->backoff_ms * 2;
}

/*
 * Consul's rules: an index that goes backwards means the registry restarted or its state
 * was restored, so start over from 0; an index must be at least 1 to block.
 */
static bool advance_index(tr_discovery_watch_t *w, uint64_t idx)
{
    if (idx < w->index || idx == 0) {
        w->index = 0;
        return false;
    }
    w->index = idx;
    return true;
}

static void on_health(tr_http_client_req_t *req, int err, const tr_http_client_response_t *res)
{
    tr_discovery_watch_t *w = tr_http_client_req_data(req);
    w->in_flight = false;
    if (w->d->closing) {
        close_step(w->d);
        return;
    }
    if (err == 0 && res->status != 200) err = TR_EBAD_RESPONSE;
    tr__endpoint_set_t *s = err ? NULL : set_parse(res->body, res->body_len, w->set);
    if (err == 0 && s == NULL) err = TR_EPARSE;
    if (err) {
        http_fail(w, err, res ? res->status : 0);
        return;
    }
    if (w->failing) {
        w->failing = false;
        tr_log_info("discovery: registry reachable again", TR_LOG_STR("service", w->service),
                    TR_LOG_UINT("endpoints", s->n));
    }
    w->backoff_ms = w->d->o.retry_min_ms;
    bool blocking = advance_index(w, header_index(res));
    watch_update(w, s);
    if (w->d->closing) return;
    /* Without a usable index the next query would not block: pace it to avoid a busy loop. */
    if (blocking)
        http_query(w);
    else
        uv_timer_start(&w->retry, on_retry, w->d->o.retry_min_ms, 0);
}

static void http_query(tr_discovery_watch_t *w)
{
    tr_discovery_t *d = w->d;
    char target[1024] = "/v1/health/service/";
    append_escaped(target, sizeof(target) - 128, w->service);
    size_t len = strlen(target);
    len +=
        (size_t)snprintf(target + len, sizeof(target) - len, "?passing=1&index=%" PRIu64, w->index);
    if (w->index > 0)
        len += (size_t)snprintf(target + len, sizeof(target) - len, "&wait=%" PRIu64 "ms",
                                d->o.wait_ms);
    if (d->datacenter) {
        strcat(target, "&dc=");
        append_escaped(target, sizeof(target), d->datacenter);
    }
    tr_http_client_request_t r = {
        .method = "GET", .target = target, .flags = TR_HTTP_CLIENT_IDEMPOTENT, .data = w};
    w->in_flight = true;
    int err = tr_http_client_fetch(d->client, &d->registry_ep, &r, on_health, NULL);
    if (err) {
        w->in_flight = false;
        http_fail(w, err, 0);
    }
}

static void http_start(tr_discovery_watch_t *w)
{
    http_query(w);
}

static void http_stop(tr_discovery_watch_t *w)
{
    /* In-flight queries fail with TR_ECANCELED when the client closes; nothing to do. */
    uv_timer_stop(&w->retry);
}

static const source_vtable_t http_source = {http_start, http_stop};

/* ---- in-process source: the registry's answers through a hub */

/* Applies the hub's answer for `w` when its index moved. */
static void hub_poll(tr_discovery_watch_t *w)
{
    char *body;
    size_t len;
    if (!tr_discovery_hub_read(w->d->hub, w->service, &w->index, &body, &len)) return;
    tr__endpoint_set_t *s = set_parse(body, len, w->set);
    free(body);
    if (!s) {
        tr_log_error("discovery: unreadable answer from the in-process registry",
                     TR_LOG_STR("service", w->service));
        return;
    }
    watch_update(w, s);
}

static void on_hub_notify(uv_async_t *a)
{
    tr_discovery_t *d = a->data;
    for (tr_discovery_watch_t *w = d->watches; w && !d->closing; w = w->next)
        hub_poll(w);
}

static void hub_start(tr_discovery_watch_t *w)
{
    w->index = UINT64_MAX; /* any published index, even 0, is news */
    tr_discovery_hub_want(w->d->hub, w->service);
    hub_poll(w);
}

static void hub_stop(tr_discovery_watch_t *w)
{
    (void)w; /* nothing in flight: the hub is read synchronously */
}

static const source_vtable_t hub_source = {hub_start, hub_stop};

/* ---- lifecycle */

void tr_discovery_options_init(tr_discovery_options_t *o)
{
    memset(o, 0, sizeof(*o));
    o->registry = "127.0.0.1:8500";
    o->wait_ms = 5 * 60 * 1000;
    o->retry_min_ms = 250;
    o->retry_max_ms = 10 * 1000;
    o->max_body_bytes = 8u << 20;
}

tr_discovery_t *tr_discovery_new(uv_loop_t *loop, const tr_discovery_options_t *o)
{
    tr_discovery_options_t defaults;
    tr_discovery_options_init(&defaults);
    if (o == NULL) o = &defaults;
    tr_http_endpoint_t ep = {0};
    const char *registry = o->registry ? o->registry : defaults.registry;
    if (!o->hub && tr_http_endpoint_parse(&ep, registry) != 0) return NULL;
    tr_discovery_t *d = tr_calloc(1, sizeof(*d));
    d->loop = loop;
    d->o = *o;
    if (d->o.wait_ms == 0) d->o.wait_ms = defaults.wait_ms;
    if (d->o.retry_min_ms == 0) d->o.retry_min_ms = defaults.retry_min_ms;
    if (d->o.retry_max_ms < d->o.retry_min_ms) d->o.retry_max_ms = d->o.retry_min_ms;
    if (d->o.max_body_bytes == 0) d->o.max_body_bytes = defaults.max_body_bytes;
    d->registry = tr_strdup(registry);
    d->datacenter = o->datacenter && *o->datacenter ? tr_strdup(o->datacenter) : NULL;
    d->o.registry = d->registry;
    d->o.datacenter = d->datacenter;
    d->registry_ep = ep;
    d->source = &http_source;
    if (o->hub) {
        d->hub = o->hub;
        d->source = &hub_source;
        uv_async_init(loop, &d->hub_notify, on_hub_notify);
        d->hub_notify.data = d;
        tr_discovery_hub_subscribe(d->hub, &d->hub_notify);
    }
    d->rng = (uv_hrtime() ^ (uint64_t)(uintptr_t)d) | 1;
    tr_http_client_options_t co;
    tr_http_client_options_init(&co);
    /* A blocking query may legitimately take wait + wait/16 (Consul's jitter); allow 5 s more. */
    co.response_timeout_ms = d->o.wait_ms + d->o.wait_ms / 16 + 5000;
    co.max_body_bytes = d->o.max_body_bytes;
    co.max_idle_per_endpoint = 4;
    d->client = tr_http_client_new(loop, &co);
    return d;
}

int tr_discovery_watch(tr_discovery_t *d, const char *service, tr_discovery_watch_t **out)
{
    if (d->closing) return TR_ESTATE;
    if (service == NULL || *service == '\0') return UV_EINVAL;
    for (tr_discovery_watch_t *w = d->watches; w; w = w->next) {
        if (strcmp(w->service, service) == 0) {
            if (out) *out = w;
            return 0;
        }
    }
    tr_discovery_watch_t *w = tr_calloc(1, sizeof(*w));
    w->d = d;
    w->service = tr_strdup(service);
    w->backoff_ms = d->o.retry_min_ms;
    uv_timer_init(d->loop, &w->retry);
    w->retry.data = w;
    w->source = d->source;
    w->next = d->watches;
    d->watches = w;
    if (out) *out = w;
    w->source->start(w);
    return 0;
}

static void close_step(tr_discovery_t *d)
{
    if (--d->pending_closes > 0) return;
    while (d->watches) {
        tr_discovery_watch_t *w = d->watches;
        d->watches = w->next;
        set_release(w->set);
        free(w->service);
        free(w);
    }
    if (d->close_cb) d->close_cb(d);
    free(d->registry);
    free(d->datacenter);
    free(d);
}

static void on_timer_closed(uv_handle_t *h)
{
    tr_discovery_watch_t *w = h->data;
    close_step(w->d);
}

static void on_hub_closed(uv_handle_t *h)
{
    close_step(h->data);
}

void tr_discovery_close(tr_discovery_t *d, tr_discovery_close_cb cb)
{
    if (d == NULL || d->closing) return;
    d->closing = true;
    d->close_cb = cb;
    d->pending_closes = 1;
    for (tr_discovery_watch_t *w = d->watches; w; w = w->next) {
        w->source->stop(w);
        d->pending_closes++;
        uv_close((uv_handle_t *)&w->retry, on_timer_closed);
        /* Each in-flight query still calls on_health (TR_ECANCELED) once the client closes. */
        if (w->in_flight) d->pending_closes++;
    }
    if (d->hub) {
        tr_discovery_hub_unsubscribe(d->hub, &d->hub_notify);
        d->pending_closes++;
        uv_close((uv_handle_t *)&d->hub_notify, on_hub_closed);
    }
    /* The client frees itself; only its in-flight callbacks refer to us, and they are counted. */
    tr_http_client_close(d->client, NULL);
    d->client = NULL;
    close_step(d);
}
