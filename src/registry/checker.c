/* Health checks: a thread with its own loop runs HTTP and TCP checks and posts results back. */
#include "registry/checker.h"

#include <http_parser.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/mem.h"
#include "trellis/error.h"
#include "trellis/http_client.h"

#define OUTPUT_BODY_MAX    4096  /* like Consul: the first 4 KiB of the body go in the output */
#define TIMEOUT_CAP_MS     10000 /* default timeout: the interval, at most this */
#define CMDS_PER_WAKEUP    512   /* bounds the work of one async callback on either loop */
#define RESULTS_PER_WAKEUP 512

typedef struct check_s check_t;

/*
 * Everything one check needs, in one allocation made by tr_checker_upsert: the spec's
 * strings follow the struct. The checker thread owns it once queued.
 */
struct check_s {
    check_t *next; /* hash chain */
    tr_checker_t *ck;
    tr_check_spec_t spec;
    uint64_t timeout_ms;
    const char *invalid; /* why the spec cannot run; each run reports it as critical */
    const char *method;
    char *target;                     /* HTTP request target "/path?query" */
    tr_http_client_header_t *headers; /* one block with the strings */
    size_t nheaders;
    char host[256];
    int port;
    bool literal; /* host is an IP address: `ep` is ready, no lookup per run */
    tr_http_endpoint_t ep;
    uv_timer_t tick;     /* the schedule */
    uv_timer_t deadline; /* the running attempt's timeout */
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_getaddrinfo_t resolve;
    tr_http_client_req_t *req;
    char *body; /* first OUTPUT_BODY_MAX bytes of the response body, during a run */
    size_t body_len;
    int http_status;
    unsigned refs; /* open handles and operations in flight; freed at zero */
    bool running, removed, resolving, tcp_open;
};

enum cmd_type { CMD_UPSERT, CMD_REMOVE, CMD_STOP };

typedef struct cmd_s {
    struct cmd_s *next;
    enum cmd_type type;
    check_t *check; /* CMD_UPSERT */
    char id[];      /* CMD_UPSERT / CMD_REMOVE */
} cmd_t;

typedef struct result_s {
    struct result_s *next;
    tr_check_status_t status;
    char *output;
    char id[];
} result_t;

struct tr_checker_s {
    /* The registry side. */
    uv_loop_t *reg_loop;
    uv_async_t reg_async;
    tr_checker_result_cb cb;
    void *data;
    bool stopped;
    uv_thread_t thread;
    /* Shared, under `lock`. */
    uv_mutex_t lock;
    cmd_t *cmds, **cmds_tail;
    result_t *results, **results_tail;
    /* The checker thread. */
    uv_loop_t loop;
    uv_async_t cmd_async;
    tr_http_client_t *http;
    check_t **buckets;
    size_t nbuckets, nchecks;
    bool stopping;
};

/* ---- small helpers ---- */

static uint64_t hash_id(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

uint64_t tr__checker_first_delay(const char *id, uint64_t interval_ms)
{
    return interval_ms ? hash_id(id) % interval_ms : 0;
}

static size_t str_size(const char *s)
{
    return s ? strlen(s) + 1 : 0;
}

static const char *str_put(char **p, const char *s)
{
    if (s == NULL) return NULL;
    size_t n = strlen(s) + 1;
    memcpy(*p, s, n);
    const char *r = *p;
    *p += n;
    return r;
}

/* ---- results: checker thread → registry loop ---- */

/* True when a command for `id` waits: the check's current run is already stale. */
static bool cmd_pending_for(tr_checker_t *ck, const char *id)
{
    for (cmd_t *c = ck->cmds; c; c = c->next)
        if (c->type != CMD_STOP && strcmp(c->id, id) == 0) return true;
    return false;
}

static void post_result(check_t *c, tr_check_status_t status, const char *output)
{
    tr_checker_t *ck = c->ck;
    size_t idlen = strlen(c->spec.id) + 1, outlen = strlen(output) + 1;
    result_t *r = tr_malloc(sizeof(*r) + idlen + outlen);
    r->next = NULL;
    r->status = status;
    memcpy(r->id, c->spec.id, idlen);
    r->output = r->id + idlen;
    memcpy(r->output, output, outlen);
    uv_mutex_lock(&ck->lock);
    bool stale = cmd_pending_for(ck, c->spec.id);
    if (!stale) {
        *ck->results_tail = r;
        ck->results_tail = &r->next;
    }
    uv_mutex_unlock(&ck->lock);
    if (stale) {
        free(r);
        return;
    }
    uv_async_send(&ck->reg_async);
}

/* Drops queued results for `id`; called with the lock held, on the registry thread. */
static void purge_results(tr_checker_t *ck, const char *id)
{
    result_t **pp = &ck->results;
    ck->results_tail = &ck->results;
    while (*pp) {
        result_t *r = *pp;
        if (id == NULL || strcmp(r->id, id) == 0) {
            *pp = r->next;
            free(r);
            continue;
        }
        ck->results_tail = &r->next;
        pp = &r->next;
    }
}

static void on_results(uv_async_t *h)
{
    tr_checker_t *ck = h->data;
    for (int i = 0; i < RESULTS_PER_WAKEUP && !ck->stopped; i++) {
        /* One at a time: a callback may remove a check whose result is queued next. */
        uv_mutex_lock(&ck->lock);
        result_t *r = ck->results;
        if (r) {
            ck->results = r->next;
            if (ck->results == NULL) ck->results_tail = &ck->results;
        }
        bool more = r && ck->results;
        uv_mutex_unlock(&ck->lock);
        if (r == NULL) return;
        ck->cb(ck->data, r->id, r->status, r->output);
        free(r);
        if (!more) return;
        if (i + 1 == RESULTS_PER_WAKEUP && !ck->stopped) uv_async_send(&ck->reg_async);
    }
}

/* ---- one run ---- */

static void check_maybe_free(check_t *c)
{
    if (c->refs) return;
    tr_free(&c->target);
    tr_free(&c->headers);
    tr_free(&c->body);
    free(c);
}

static void tcp_close(check_t *c);

/* Stops whatever the current attempt is doing; completions arrive later and are ignored. */
static void abandon_ops(check_t *c)
{
    uv_timer_stop(&c->deadline);
    if (c->req) tr_http_client_cancel(c->req);
    if (c->resolving) uv_cancel((uv_req_t *)&c->resolve);
    if (c->tcp_open) tcp_close(c); /* on_tcp_connect sees UV_ECANCELED */
}

static void finish_run(check_t *c, tr_check_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reports the run's result once; later completions of the same run find it finished. */
static void finish_run(check_t *c, tr_check_status_t status, const char *fmt, ...)
{
    if (!c->running) return;
    c->running = false;
    abandon_ops(c);
    va_list ap;
    va_start(ap, fmt);
    char small[512];
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    char *out = small;
    if (n >= (int)sizeof(small)) {
        out = tr_malloc((size_t)n + 1);
        va_start(ap, fmt);
        vsnprintf(out, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    if (!c->removed) post_result(c, status, out);
    if (out != small) free(out);
    tr_free(&c->body);
}

static void fail_run(check_t *c, int err)
{
    if (c->spec.kind == TR_CHECK_HTTP)
        finish_run(c, TR_CHECK_CRITICAL, "HTTP %s %s: %s", c->method, c->spec.target,
                   tr_strerror(err));
    else
        finish_run(c, TR_CHECK_CRITICAL, "TCP connect %s: %s", c->spec.target, tr_strerror(err));
}

static void on_deadline(uv_timer_t *t)
{
    check_t *c = t->data;
    if (c->spec.kind == TR_CHECK_HTTP)
        finish_run(c, TR_CHECK_CRITICAL, "HTTP %s %s: timed out after %llums", c->method,
                   c->spec.target, (unsigned long long)c->timeout_ms);
    else
        finish_run(c, TR_CHECK_CRITICAL, "TCP connect %s: timed out after %llums", c->spec.target,
                   (unsigned long long)c->timeout_ms);
}

static void on_http_headers(tr_http_client_req_t *req, int status,
                            const tr_http_client_header_t *headers, size_t nheaders)
{
    check_t *c = tr_http_client_req_data(req);
    c->http_status = status;
}

static void on_http_body(tr_http_client_req_t *req, const char *data, size_t len)
{
    check_t *c = tr_http_client_req_data(req);
    if (!c->running || c->body_len >= OUTPUT_BODY_MAX) return;
    if (c->body == NULL) c->body = tr_malloc(OUTPUT_BODY_MAX);
    size_t n = OUTPUT_BODY_MAX - c->body_len;
    if (n > len) n = len;
    memcpy(c->body + c->body_len, data, n);
    c->body_len += n;
}

static tr_check_status_t status_of(int code)
{
    if (code >= 200 && code < 300) return TR_CHECK_PASSING;
    if (code == 429) return TR_CHECK_WARNING;
    return TR_CHECK_CRITICAL;
}

static void on_http_done(tr_http_client_req_t *req, int err)
{
    check_t *c = tr_http_client_req_data(req);
    c->req = NULL;
    c->refs--;
    if (err) {
        fail_run(c, err);
    } else {
        const char *reason = http_status_str((enum http_status)c->http_status);
        if (strcmp(reason, "<unknown>") == 0) reason = "";
        finish_run(c, status_of(c->http_status), "HTTP %s %s: %d%s%s Output: %.*s", c->method,
                   c->spec.target, c->http_status, *reason ? " " : "", reason, (int)c->body_len,
                   c->body ? c->body : "");
    }
    tr_free(&c->body);
    check_maybe_free(c);
}

static void send_http(check_t *c, const tr_http_endpoint_t *ep)
{
    tr_http_client_request_t r = {0};
    r.method = c->method;
    r.target = c->target;
    r.headers = c->headers;
    r.nheaders = c->nheaders;
    if (c->spec.body && *c->spec.body) {
        r.body_mode = TR_HTTP_CLIENT_BODY_BUFFER;
        r.body = c->spec.body;
        r.body_len = strlen(c->spec.body);
    }
    r.on_headers = on_http_headers;
    r.on_body = on_http_body;
    r.on_complete = on_http_done;
    r.data = c;
    c->http_status = 0;
    c->body_len = 0;
    int rc = tr_http_client_request(c->ck->http, ep, &r, &c->req);
    if (rc) {
        c->req = NULL;
        fail_run(c, rc);
        return;
    }
    c->refs++;
}

static void on_tcp_closed(uv_handle_t *h)
{
    check_t *c = h->data;
    c->tcp_open = false;
    c->refs--;
    check_maybe_free(c);
}

static void on_tcp_connect(uv_connect_t *cr, int status)
{
    check_t *c = cr->data;
    if (status == 0)
        finish_run(c, TR_CHECK_PASSING, "TCP connect %s: Success", c->spec.target);
    else if (status != UV_ECANCELED)
        fail_run(c, status);
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
}

/* A handle closed by abandon_ops still needs its close callback to drop the reference. */
static void tcp_close(check_t *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, on_tcp_closed);
}

static void send_tcp(check_t *c, const struct sockaddr *addr)
{
    uv_tcp_init(&c->ck->loop, &c->tcp);
    c->tcp.data = c;
    c->connect.data = c;
    c->tcp_open = true;
    c->refs++;
    int rc = uv_tcp_connect(&c->connect, &c->tcp, addr, on_tcp_connect);
    if (rc) {
        tcp_close(c);
        fail_run(c, rc);
    }
}

static void dispatch(check_t *c, const tr_http_endpoint_t *ep)
{
    if (c->spec.kind == TR_CHECK_HTTP)
        send_http(c, ep);
    else
        send_tcp(c, (const struct sockaddr *)&ep->addr);
}

/* Prefers an IPv4 address: services commonly listen on 0.0.0.0 only. */
static const struct addrinfo *pick_addr(const struct addrinfo *res)
{
    for (const struct addrinfo *a = res; a; a = a->ai_next)
        if (a->ai_family == AF_INET) return a;
    return res;
}

/* Builds the endpoint of a looked-up address; the Host header names the host as the URL does. */
static int endpoint_from_lookup(check_t *c, const struct addrinfo *a, tr_http_endpoint_t *ep)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (a->ai_addrlen > sizeof(ss)) return UV_EAI_ADDRFAMILY;
    memcpy(&ss, a->ai_addr, a->ai_addrlen);
    if (a->ai_family == AF_INET)
        ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)c->port);
    else if (a->ai_family == AF_INET6)
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)c->port);
    if (tr_http_endpoint_from_addr(ep, (const struct sockaddr *)&ss) != 0) return UV_EAI_ADDRFAMILY;
    char port[8];
    int plen = snprintf(port, sizeof(port), ":%d", c->port);
    size_t hlen = strlen(c->host);
    if (hlen + (size_t)plen < sizeof(ep->host)) {
        memcpy(ep->host, c->host, hlen);
        memcpy(ep->host + hlen, port, (size_t)plen + 1);
    }
    return 0;
}

static void on_resolved(uv_getaddrinfo_t *gr, int status, struct addrinfo *res)
{
    check_t *c = gr->data;
    c->resolving = false;
    c->refs--;
    if (c->running) {
        tr_http_endpoint_t ep;
        int rc = status < 0 ? status : endpoint_from_lookup(c, pick_addr(res), &ep);
        if (rc)
            fail_run(c, rc);
        else
            dispatch(c, &ep);
    }
    uv_freeaddrinfo(res);
    check_maybe_free(c);
}

static void start_run(check_t *c)
{
    c->running = true;
    uv_timer_start(&c->deadline, on_deadline, c->timeout_ms, 0);
    if (c->invalid) {
        finish_run(c, TR_CHECK_CRITICAL, "%s", c->invalid);
        return;
    }
    if (c->literal) {
        dispatch(c, &c->ep);
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    c->resolve.data = c;
    int rc = uv_getaddrinfo(&c->ck->loop, &c->resolve, on_resolved, c->host, NULL, &hints);
    if (rc) {
        fail_run(c, rc);
        return;
    }
    c->resolving = true;
    c->refs++;
}

static void on_tick(uv_timer_t *t)
{
    check_t *c = t->data;
    /* The previous attempt is still being torn down: skip rather than overlap. */
    if (c->running || c->req || c->resolving || c->tcp_open) return;
    start_run(c);
}

/* ---- parsing a spec (on the checker thread, once per upsert) ---- */

static void set_endpoint(check_t *c)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (uv_ip4_addr(c->host, c->port, v4) == 0 || uv_ip6_addr(c->host, c->port, v6) == 0) {
        c->literal = tr_http_endpoint_from_addr(&c->ep, (struct sockaddr *)&ss) == 0;
    }
}

static bool field_copy(const char *src, const struct http_parser_url *u, int f, char *dst,
                       size_t cap)
{
    size_t n = u->field_data[f].len;
    if (!(u->field_set & (1 << f)) || n == 0 || n >= cap) return false;
    memcpy(dst, src + u->field_data[f].off, n);
    dst[n] = '\0';
    return true;
}

static void parse_http_target(check_t *c)
{
    const char *url = c->spec.target;
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (url == NULL || http_parser_parse_url(url, strlen(url), 0, &u) != 0 ||
        !(u.field_set & (1 << UF_SCHEMA))) {
        c->invalid = "invalid URL: expected http://host[:port]/path";
        return;
    }
    const char *scheme = url + u.field_data[UF_SCHEMA].off;
    size_t slen = u.field_data[UF_SCHEMA].len;
    if (slen == 5 && strncasecmp(scheme, "https", 5) == 0) {
        c->invalid = "HTTPS checks are not supported yet";
        return;
    }
    if (slen != 4 || strncasecmp(scheme, "http", 4) != 0) {
        c->invalid = "invalid URL: only http:// is supported";
        return;
    }
    if (!field_copy(url, &u, UF_HOST, c->host, sizeof(c->host))) {
        c->invalid = "invalid URL: no host";
        return;
    }
    c->port = (u.field_set & (1 << UF_PORT)) ? u.port : 80;
    /* The request target runs from the path through the query, without the fragment. */
    size_t start = strlen(url), end = start;
    if (u.field_set & (1 << UF_PATH)) start = u.field_data[UF_PATH].off;
    if (u.field_set & (1 << UF_QUERY)) {
        if (!(u.field_set & (1 << UF_PATH))) start = u.field_data[UF_QUERY].off - 1u;
        end = (size_t)u.field_data[UF_QUERY].off + u.field_data[UF_QUERY].len;
    } else if (u.field_set & (1 << UF_PATH)) {
        end = (size_t)u.field_data[UF_PATH].off + u.field_data[UF_PATH].len;
    }
    bool slash = start == end || url[start] != '/';
    c->target = tr_malloc(end - start + 2);
    snprintf(c->target, end - start + 2, "%s%.*s", slash ? "/" : "", (int)(end - start),
             url + start);
    set_endpoint(c);
}

static void parse_tcp_target(check_t *c)
{
    const char *t = c->spec.target;
    struct http_parser_url u;
    http_parser_url_init(&u);
    /* The CONNECT form is exactly "host:port". */
    if (t == NULL || http_parser_parse_url(t, strlen(t), 1, &u) != 0 ||
        !field_copy(t, &u, UF_HOST, c->host, sizeof(c->host))) {
        c->invalid = "invalid TCP target: expected host:port";
        return;
    }
    c->port = u.port;
    set_endpoint(c);
}

static const char *const bad_headers = "invalid headers: expected a JSON object of string arrays";

/* Counts header lines and string bytes; false when the JSON has the wrong shape. */
static bool headers_measure(json_t *obj, size_t *n, size_t *bytes)
{
    const char *name;
    json_t *v, *e;
    size_t i;
    json_object_foreach(obj, name, v)
    {
        if (json_is_string(v)) {
            (*n)++;
            *bytes += strlen(name) + 1 + json_string_length(v) + 1;
            continue;
        }
        if (!json_is_array(v)) return false;
        json_array_foreach(v, i, e)
        {
            if (!json_is_string(e)) return false;
            (*n)++;
            *bytes += strlen(name) + 1 + json_string_length(e) + 1;
        }
    }
    return true;
}

static void header_put(check_t *c, char **p, const char *name, json_t *s)
{
    tr_http_client_header_t *h = &c->headers[c->nheaders++];
    h->name = str_put(p, name);
    h->name_len = strlen(name);
    h->value_len = json_string_length(s);
    memcpy(*p, json_string_value(s), h->value_len + 1);
    h->value = *p;
    *p += h->value_len + 1;
}

static void parse_headers(check_t *c)
{
    if (c->spec.headers == NULL || *c->spec.headers == '\0') return;
    json_t *obj = json_loads(c->spec.headers, 0, NULL);
    size_t n = 0, bytes = 0;
    if (!json_is_object(obj) || !headers_measure(obj, &n, &bytes)) {
        c->invalid = bad_headers;
        json_decref(obj);
        return;
    }
    c->headers = tr_malloc(n * sizeof(*c->headers) + bytes + 1);
    char *p = (char *)(c->headers + n);
    const char *name;
    json_t *v, *e;
    size_t i;
    json_object_foreach(obj, name, v)
    {
        if (json_is_string(v)) header_put(c, &p, name, v);
        json_array_foreach(v, i, e)
        {
            header_put(c, &p, name, e);
        }
    }
    json_decref(obj);
}

/* ---- the checks table (checker thread) ---- */

static check_t **bucket_of(tr_checker_t *ck, const char *id)
{
    return &ck->buckets[hash_id(id) & (ck->nbuckets - 1)];
}

static check_t *table_take(tr_checker_t *ck, const char *id)
{
    for (check_t **pp = bucket_of(ck, id); *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->spec.id, id) == 0) {
            check_t *c = *pp;
            *pp = c->next;
            ck->nchecks--;
            return c;
        }
    }
    return NULL;
}

static void table_grow(tr_checker_t *ck)
{
    size_t old = ck->nbuckets;
    check_t **ob = ck->buckets;
    ck->nbuckets = old ? old * 2 : 64;
    ck->buckets = tr_calloc(ck->nbuckets, sizeof(*ck->buckets));
    for (size_t i = 0; i < old; i++) {
        while (ob[i]) {
            check_t *c = ob[i];
            ob[i] = c->next;
            check_t **b = bucket_of(ck, c->spec.id);
            c->next = *b;
            *b = c;
        }
    }
    free(ob);
}

static void on_check_timer_closed(uv_handle_t *h)
{
    check_t *c = h->data;
    c->refs--;
    check_maybe_free(c);
}

/* Abandons the check: no run of it is reported any more; freed when its handles close. */
static void check_remove(check_t *c)
{
    c->removed = true;
    c->running = false;
    abandon_ops(c);
    uv_close((uv_handle_t *)&c->tick, on_check_timer_closed);
    uv_close((uv_handle_t *)&c->deadline, on_check_timer_closed);
}

static void check_add(tr_checker_t *ck, check_t *c)
{
    check_t *old = table_take(ck, c->spec.id);
    if (old) check_remove(old);
    c->ck = ck;
    c->method = c->spec.method && *c->spec.method ? c->spec.method : "GET";
    c->timeout_ms = c->spec.timeout_ms;
    if (c->timeout_ms == 0)
        c->timeout_ms = c->spec.interval_ms < TIMEOUT_CAP_MS ? c->spec.interval_ms : TIMEOUT_CAP_MS;
    if (c->spec.kind == TR_CHECK_HTTP) {
        parse_http_target(c);
        if (!c->invalid) parse_headers(c);
    } else {
        parse_tcp_target(c);
    }
    uv_timer_init(&ck->loop, &c->tick);
    uv_timer_init(&ck->loop, &c->deadline);
    c->tick.data = c->deadline.data = c;
    c->refs = 2;
    uint64_t interval = c->spec.interval_ms ? c->spec.interval_ms : 1;
    uv_timer_start(&c->tick, on_tick, tr__checker_first_delay(c->spec.id, interval), interval);
    if (ck->nchecks + 1 > ck->nbuckets) table_grow(ck);
    check_t **b = bucket_of(ck, c->spec.id);
    c->next = *b;
    *b = c;
    ck->nchecks++;
}

/* ---- commands: registry loop → checker thread ---- */

static void checker_shutdown(tr_checker_t *ck)
{
    ck->stopping = true;
    for (size_t i = 0; i < ck->nbuckets; i++) {
        while (ck->buckets[i]) {
            check_t *c = ck->buckets[i];
            ck->buckets[i] = c->next;
            check_remove(c);
        }
    }
    ck->nchecks = 0;
    tr_http_client_close(ck->http, NULL);
    ck->http = NULL;
    uv_close((uv_handle_t *)&ck->cmd_async, NULL);
}

static void run_cmd(tr_checker_t *ck, cmd_t *cmd)
{
    if (ck->stopping) {
        if (cmd->check) check_maybe_free(cmd->check);
        return;
    }
    if (cmd->type == CMD_UPSERT) {
        check_add(ck, cmd->check);
    } else if (cmd->type == CMD_REMOVE) {
        check_t *c = table_take(ck, cmd->id);
        if (c) check_remove(c);
    } else {
        checker_shutdown(ck);
    }
}

static void on_cmds(uv_async_t *h)
{
    tr_checker_t *ck = h->data;
    for (int i = 0; i < CMDS_PER_WAKEUP; i++) {
        uv_mutex_lock(&ck->lock);
        cmd_t *cmd = ck->cmds;
        if (cmd) {
            ck->cmds = cmd->next;
            if (ck->cmds == NULL) ck->cmds_tail = &ck->cmds;
        }
        uv_mutex_unlock(&ck->lock);
        if (cmd == NULL) return;
        run_cmd(ck, cmd);
        free(cmd);
        if (ck->stopping) return;
    }
    uv_async_send(&ck->cmd_async); /* more queued: continue on the next loop iteration */
}

static void thread_main(void *arg)
{
    tr_checker_t *ck = arg;
    uv_run(&ck->loop, UV_RUN_DEFAULT);
    /* checker_shutdown closed every handle, so this succeeds and uv_run has returned. */
    uv_loop_close(&ck->loop);
    free(ck->buckets);
    ck->buckets = NULL;
}

static void push_cmd(tr_checker_t *ck, enum cmd_type type, const char *id, check_t *check)
{
    size_t idlen = id ? strlen(id) + 1 : 1;
    cmd_t *cmd = tr_malloc(sizeof(*cmd) + idlen);
    cmd->next = NULL;
    cmd->type = type;
    cmd->check = check;
    memcpy(cmd->id, id ? id : "", idlen);
    uv_mutex_lock(&ck->lock);
    /* A queued result of the check being replaced or removed must not be delivered. */
    if (id) purge_results(ck, id);
    *ck->cmds_tail = cmd;
    ck->cmds_tail = &cmd->next;
    /*
     * Sent under the lock: the thread cannot take the stop command, close its loop and
     * exit before this send (to a possibly closed loop) is done.
     */
    uv_async_send(&ck->cmd_async);
    uv_mutex_unlock(&ck->lock);
}

/* ---- public API ---- */

static void on_reg_async_closed(uv_handle_t *h)
{
    tr_checker_t *ck = h->data;
    free(ck);
}

int tr_checker_start(uv_loop_t *loop, tr_checker_result_cb cb, void *data, tr_checker_t **out)
{
    if (loop == NULL || cb == NULL || out == NULL) return UV_EINVAL;
    tr_checker_t *ck = tr_calloc(1, sizeof(*ck));
    ck->reg_loop = loop;
    ck->cb = cb;
    ck->data = data;
    ck->cmds_tail = &ck->cmds;
    ck->results_tail = &ck->results;
    int rc = uv_loop_init(&ck->loop);
    if (rc) goto fail_loop;
    rc = uv_mutex_init(&ck->lock);
    if (rc) goto fail_mutex;
    uv_async_init(&ck->loop, &ck->cmd_async, on_cmds);
    ck->cmd_async.data = ck;
    tr_http_client_options_t opts;
    tr_http_client_options_init(&opts);
    opts.max_idle_per_endpoint = 2;
    opts.idle_timeout_ms = 15000;
    opts.connect_timeout_ms = TIMEOUT_CAP_MS; /* each check's own deadline is usually first */
    opts.response_timeout_ms = 0;             /* likewise: per check, see on_deadline */
    ck->http = tr_http_client_new(&ck->loop, &opts);
    table_grow(ck);
    uv_async_init(loop, &ck->reg_async, on_results);
    ck->reg_async.data = ck;
    rc = uv_thread_create(&ck->thread, thread_main, ck);
    if (rc == 0) {
        *out = ck;
        return 0;
    }
    /* The thread never ran: tear its loop down here, and the registry handle by close. */
    checker_shutdown(ck);
    uv_run(&ck->loop, UV_RUN_DEFAULT);
    uv_loop_close(&ck->loop);
    tr_free(&ck->buckets);
    uv_mutex_destroy(&ck->lock);
    ck->stopped = true;
    uv_close((uv_handle_t *)&ck->reg_async, on_reg_async_closed);
    return rc;
fail_mutex:
    uv_loop_close(&ck->loop);
fail_loop:
    free(ck);
    return rc;
}

void tr_checker_upsert(tr_checker_t *ck, const tr_check_spec_t *spec)
{
    const tr_check_spec_t *s = spec;
    size_t n = str_size(s->id ? s->id : "") + str_size(s->target) + str_size(s->method) +
               str_size(s->headers) + str_size(s->body);
    check_t *c = tr_calloc(1, sizeof(*c) + n);
    char *p = (char *)(c + 1);
    c->spec = *s;
    c->spec.id = str_put(&p, s->id ? s->id : "");
    c->spec.target = str_put(&p, s->target);
    c->spec.method = str_put(&p, s->method);
    c->spec.headers = str_put(&p, s->headers);
    c->spec.body = str_put(&p, s->body);
    push_cmd(ck, CMD_UPSERT, c->spec.id, c);
}

void tr_checker_remove(tr_checker_t *ck, const char *id)
{
    push_cmd(ck, CMD_REMOVE, id, NULL);
}

void tr_checker_stop(tr_checker_t *ck)
{
    if (ck == NULL || ck->stopped) return;
    push_cmd(ck, CMD_STOP, NULL, NULL);
    uv_thread_join(&ck->thread);
    ck->stopped = true;
    uv_mutex_lock(&ck->lock);
    purge_results(ck, NULL);
    while (ck->cmds) { /* nothing can be queued after stop; stay safe anyway */
        cmd_t *cmd = ck->cmds;
        ck->cmds = cmd->next;
        if (cmd->check) free(cmd->check);
        free(cmd);
    }
    uv_mutex_unlock(&ck->lock);
    uv_mutex_destroy(&ck->lock);
    uv_close((uv_handle_t *)&ck->reg_async, on_reg_async_closed);
}
