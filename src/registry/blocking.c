/* Consul blocking queries: parsing ?index= and ?wait=, and the X-Consul-* headers. */
#include "registry/blocking.h"

#include "core/mem.h"
#include "trellis/config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

/* Consul's JitterFraction: a wait gets a random extra of up to wait/16 so that watchers
 * started together do not all come back in the same instant. */
#define JITTER_FRACTION 16

bool tr__blocking_parse_u64(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9') return false; /* no sign, no space, no empty */
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return false;
    *out = v;
    return true;
}

/* A per-thread xorshift: jitter needs spread, not unpredictability, and no lock. */
static uint64_t jitter_random(void)
{
    static __thread uint64_t state;
    if (!state) state = uv_hrtime() | 1;
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

/*
 * Go's time.ParseDuration, which Consul uses, wants a unit on every number except a lone
 * "0"; tr_parse_duration_ms follows the same rule, so "10" is refused as Consul does.
 */
static bool parse_wait(tr_http_req_t *req, uint64_t *wait_ms)
{
    const char *v;
    *wait_ms = TR_BLOCKING_DEFAULT_WAIT_MS;
    if (!tr_http_query_param(req, "wait", &v)) return true;
    uint64_t ms;
    if (tr_parse_duration_ms(v, &ms) < 0) {
        tr_http_res_problem(req, 400, "bad-query", "Invalid wait time",
                            "wait=%s is not a duration; use a number with a unit, such as "
                            "wait=10s, wait=5m or wait=100ms",
                            v);
        return false;
    }
    /* Like Consul: zero means the default, and the cap applies before the jitter. */
    if (ms == 0) ms = TR_BLOCKING_DEFAULT_WAIT_MS;
    if (ms > TR_BLOCKING_MAX_WAIT_MS) ms = TR_BLOCKING_MAX_WAIT_MS;
    *wait_ms = ms;
    return true;
}

bool tr_blocking_parse(tr_http_req_t *req, tr_blocking_t *out)
{
    *out = (tr_blocking_t){0};
    const char *v;
    if (tr_http_query_param(req, "index", &v) && !tr__blocking_parse_u64(v, &out->index)) {
        tr_http_res_problem(req, 400, "bad-query", "Invalid index",
                            "index=%s is not an unsigned integer; pass the X-Consul-Index of "
                            "the previous answer, such as index=42",
                            v);
        return false;
    }
    if (!parse_wait(req, &out->wait_ms)) return false;
    uint64_t span = out->wait_ms / JITTER_FRACTION;
    if (span) out->wait_ms += jitter_random() % (span + 1);
    out->blocking = out->index > 0;
    return true;
}

void tr_blocking_headers(tr_http_req_t *req, uint64_t index)
{
    char buf[24];
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)(index ? index : 1));
    tr_http_res_header(req, "X-Consul-Index", buf);
    tr_http_res_header(req, "X-Consul-KnownLeader", "true");
    tr_http_res_header(req, "X-Consul-LastContact", "0");
}

/* ---- parked requests */

static void on_waiter_closed(uv_handle_t *h)
{
    free(h->data);
}

/* Unlinks the watcher and closes its timer; the memory goes in the close callback. */
static void waiter_finish(tr_waiter_t *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        *w->head = w->next;
    if (w->next) w->next->prev = w->prev;
    w->req = NULL;
    if (w->gauge) tr_gauge_add(w->gauge, -1);
    if (w->dispose) w->dispose(w);
    uv_timer_stop(&w->timer);
    uv_close((uv_handle_t *)&w->timer, on_waiter_closed);
}

void tr_waiter_wake(tr_waiter_t *w)
{
    tr_http_req_t *req = w->req;
    req->on_abort = NULL;
    w->answer(w, req);
    waiter_finish(w);
}

static void on_waiter_timeout(uv_timer_t *t)
{
    tr_waiter_wake(t->data);
}

static void on_waiter_abort(tr_http_req_t *req)
{
    waiter_finish(req->data);
}

void *tr_waiter_park(uv_loop_t *loop, tr_http_req_t *req, tr_waiter_t **head, size_t size,
                     const tr_blocking_t *b, tr_waiter_answer_cb answer, tr_series_t *gauge)
{
    tr_waiter_t *w = tr_calloc(1, size < sizeof(*w) ? sizeof(*w) : size);
    w->req = req;
    w->index = b->index;
    w->head = head;
    w->answer = answer;
    w->gauge = gauge;
    uv_timer_init(loop, &w->timer);
    w->timer.data = w;
    uv_timer_start(&w->timer, on_waiter_timeout, b->wait_ms, 0);
    w->next = *head;
    if (w->next) w->next->prev = w;
    *head = w;
    req->data = w;
    req->on_abort = on_waiter_abort;
    if (gauge) tr_gauge_add(gauge, 1);
    return w;
}
