/* Liveness and readiness probes: HTTP GET on 127.0.0.1:port (2xx/3xx pass) or TCP connect. */
#include "supervisor/probe.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"
#include "trellis/error.h"

#define DEFAULT_PERIOD_MS  10000
#define DEFAULT_TIMEOUT_MS 1000
#define DEFAULT_FAILURES   3

struct tr_probe_s {
    uv_loop_t *loop;
    tr_probe_options_t opts;
    char *path;
    tr_http_endpoint_t ep;
    uv_timer_t tick;     /* the schedule */
    uv_timer_t deadline; /* the running probe's timeout */
    uv_tcp_t tcp;
    uv_connect_t connect;
    tr_http_client_req_t *req;
    int http_status;
    unsigned refs; /* open handles and requests in flight; freed at zero once closing */
    bool running, closing, passing, ever_passed;
    uint32_t successes, failures;
    uint64_t runs, run_started;
    void (*close_cb)(void *data);
    void *close_data;
};

void tr_probe_spec_defaults(tr_probe_spec_t *spec, const char *default_path)
{
    if (!spec->path || !*spec->path) spec->path = default_path;
    if (!spec->period_ms) spec->period_ms = DEFAULT_PERIOD_MS;
    if (!spec->timeout_ms) spec->timeout_ms = DEFAULT_TIMEOUT_MS;
    if (!spec->failure_threshold) spec->failure_threshold = DEFAULT_FAILURES;
    if (!spec->success_threshold) spec->success_threshold = 1;
}

static void maybe_free(tr_probe_t *p)
{
    if (!p->closing || p->refs > 0) return;
    void (*cb)(void *) = p->close_cb;
    void *data = p->close_data;
    free(p->path);
    free(p);
    if (cb) cb(data);
}

static void on_closed(uv_handle_t *h)
{
    tr_probe_t *p = h->data;
    p->refs--;
    maybe_free(p);
}

static void on_tick(uv_timer_t *t);

/* Ends the running probe, abandoning whatever is still in flight. */
static void abandon(tr_probe_t *p)
{
    p->running = false;
    uv_timer_stop(&p->deadline);
    if (p->req) tr_http_client_cancel(p->req); /* on_http_done drops the reference */
    if (!uv_is_closing((uv_handle_t *)&p->tcp) && p->tcp.loop != NULL)
        uv_close((uv_handle_t *)&p->tcp, on_closed);
}

static void record(tr_probe_t *p, bool ok, const char *why)
{
    bool before = p->passing;
    if (ok) {
        p->failures = 0;
        if (++p->successes >= p->opts.spec.success_threshold) p->passing = true;
    } else {
        p->successes = 0;
        if (++p->failures >= p->opts.spec.failure_threshold) p->passing = false;
    }
    if (p->passing) p->ever_passed = true;
    if (before != p->passing && p->opts.on_change)
        p->opts.on_change(p, p->passing, why, p->opts.data);
}

static void schedule_next(tr_probe_t *p)
{
    uint64_t period = p->opts.spec.period_ms;
    if (!p->ever_passed && p->opts.fast_period_ms) period = p->opts.fast_period_ms;
    uint64_t due = p->run_started + period, now = uv_now(p->loop);
    /*
     * At least 1 ms: a timer due now would run in this same timer pass, before the
     * previous run's TCP handle has finished closing.
     */
    uv_timer_start(&p->tick, on_tick, due > now + 1 ? due - now : 1, 0);
}

static void finish(tr_probe_t *p, bool ok, const char *why)
{
    if (!p->running) return;
    abandon(p);
    p->runs++;
    record(p, ok, why);
    if (!p->closing) schedule_next(p); /* on_change may have closed the probe */
}

static void on_deadline(uv_timer_t *t)
{
    tr_probe_t *p = t->data;
    char why[64];
    snprintf(why, sizeof(why), "timed out after %llums",
             (unsigned long long)p->opts.spec.timeout_ms);
    finish(p, false, why);
}

static void on_http_headers(tr_http_client_req_t *req, int status,
                            const tr_http_client_header_t *headers, size_t nheaders)
{
    tr_probe_t *p = tr_http_client_req_data(req);
    p->http_status = status;
}

static void on_http_done(tr_http_client_req_t *req, int err)
{
    tr_probe_t *p = tr_http_client_req_data(req);
    p->req = NULL;
    p->refs--;
    if (p->running) {
        char why[96];
        if (err)
            snprintf(why, sizeof(why), "GET %s: %s", p->path, tr_strerror(err));
        else
            snprintf(why, sizeof(why), "GET %s: HTTP %d", p->path, p->http_status);
        /* Kubernetes semantics: any 2xx or 3xx passes; redirects are not followed. */
        finish(p, err == 0 && p->http_status >= 200 && p->http_status < 400, why);
    }
    maybe_free(p);
}

static int send_http(tr_probe_t *p)
{
    static const tr_http_client_header_t ua = {"User-Agent", 10, "trellis-probe", 13};
    tr_http_client_request_t r = {0};
    r.method = "GET";
    r.target = p->path;
    r.headers = &ua;
    r.nheaders = 1;
    r.flags = TR_HTTP_CLIENT_NO_RETRY; /* one attempt per probe, like a kubelet */
    r.on_headers = on_http_headers;
    r.on_complete = on_http_done;
    r.data = p;
    p->http_status = 0;
    int rc = tr_http_client_request(p->opts.http, &p->ep, &r, &p->req);
    if (rc == 0) p->refs++;
    return rc;
}

static void on_tcp_connect(uv_connect_t *cr, int status)
{
    tr_probe_t *p = cr->data;
    if (status == UV_ECANCELED || !p->running) return;
    char why[96];
    snprintf(why, sizeof(why), "TCP connect :%u: %s", p->opts.port,
             status ? tr_strerror(status) : "ok");
    finish(p, status == 0, why);
}

static int send_tcp(tr_probe_t *p)
{
    uv_tcp_init(p->loop, &p->tcp);
    p->tcp.data = p;
    p->connect.data = p;
    p->refs++;
    int rc =
        uv_tcp_connect(&p->connect, &p->tcp, (const struct sockaddr *)&p->ep.addr, on_tcp_connect);
    if (rc) uv_close((uv_handle_t *)&p->tcp, on_closed);
    return rc;
}

static void on_tick(uv_timer_t *t)
{
    tr_probe_t *p = t->data;
    p->running = true;
    p->run_started = uv_now(p->loop);
    p->tcp.loop = NULL; /* marks the TCP handle unused for abandon() */
    uv_timer_start(&p->deadline, on_deadline, p->opts.spec.timeout_ms, 0);
    int rc = p->opts.spec.http ? send_http(p) : send_tcp(p);
    if (rc) {
        char why[96];
        snprintf(why, sizeof(why), "probe not sent: %s", tr_strerror(rc));
        finish(p, false, why);
    }
}

int tr_probe_start(uv_loop_t *loop, const tr_probe_options_t *opts, tr_probe_t **out)
{
    if (opts->port == 0 || (opts->spec.http && !opts->http)) return UV_EINVAL;
    tr_probe_t *p = tr_calloc(1, sizeof(*p));
    p->loop = loop;
    p->opts = *opts;
    tr_probe_spec_defaults(&p->opts.spec, "/");
    p->path = tr_strdup(p->opts.spec.path);
    p->opts.spec.path = p->path;
    p->passing = opts->initially_passing;
    struct sockaddr_in sin;
    uv_ip4_addr("127.0.0.1", opts->port, &sin);
    tr_http_endpoint_from_addr(&p->ep, (const struct sockaddr *)&sin);
    uv_timer_init(loop, &p->tick);
    uv_timer_init(loop, &p->deadline);
    p->tick.data = p->deadline.data = p;
    p->refs = 2;
    uv_timer_start(&p->tick, on_tick, p->opts.spec.initial_delay_ms, 0);
    *out = p;
    return 0;
}

bool tr_probe_passing(const tr_probe_t *p)
{
    return p->passing;
}

uint64_t tr_probe_runs(const tr_probe_t *p)
{
    return p->runs;
}

void tr_probe_close(tr_probe_t *p, void (*cb)(void *data), void *data)
{
    if (p->closing) return;
    p->closing = true;
    p->close_cb = cb;
    p->close_data = data;
    if (p->running) abandon(p);
    uv_close((uv_handle_t *)&p->tick, on_closed);
    uv_close((uv_handle_t *)&p->deadline, on_closed);
}
