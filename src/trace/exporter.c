/* Span exporter: a bounded lock-free queue drained by a background thread posting OTLP JSON. */
#include "trellis/trace.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <uv.h>

#include "core/buf.h"
#include "core/mem.h"
#include "trace/otlp_encode.h"
#include "trellis/config.h"
#include "trellis/error.h"
#include "trellis/http_client.h"
#include "trellis/log.h"
#include "trellis/metrics.h"

/*
 * The queue is Vyukov's bounded MPMC ring used with one consumer: each slot has a sequence
 * number; a producer claims a position with one CAS on `enq`, copies the span into the
 * slot, then publishes it by storing the sequence (release). No lock is ever held, so a
 * producer descheduled mid-copy delays only the consumer at that slot, never another
 * producer. Slots store `seq - index` so that a calloc'd (untouched, zero) ring is already
 * initialised and its pages are only committed as they are first used.
 */
typedef struct slot_s {
    atomic_size_t seq;
    tr__span_rec_t rec;
} slot_t;

struct tr_exporter_s {
    tr_exporter_options_t o;
    char *endpoint, *service;
    tr_http_url_t u;

    slot_t *slots;
    size_t cap, mask;
    _Alignas(64) atomic_size_t enq; /* producers */
    _Alignas(64) size_t deq;        /* the export thread */
    atomic_uint_fast64_t dropped_full;
    atomic_uint_fast64_t exported, dropped_failed, dropped_shutdown, batches, errors;
    tr_series_t *m_exported, *m_full, *m_failed, *m_shutdown, *m_errors;

    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t async;
    uv_timer_t flush, retry, attempt_deadline, stop_deadline, kick;
    tr_http_client_t *client;
    atomic_bool stop_requested;
    uint64_t stop_ms;

    /* The batch being exported (the thread's own state). */
    tr_buf_t body;
    const tr__span_rec_t **picked;
    size_t batch_n;
    unsigned attempt;
    bool busy, resolving, resolved, timed_out, stopping, gave_up, closing;
    tr_http_client_req_t *req;
    uv_getaddrinfo_t gai;
    uint64_t jitter;
};

static void pump(tr_exporter_t *e);
static void send_batch(tr_exporter_t *e);

void tr_exporter_options_init(tr_exporter_options_t *o)
{
    memset(o, 0, sizeof(*o));
    o->endpoint = "http://127.0.0.1:4318/v1/traces";
    o->service = "trellis";
    o->queue_capacity = 8192;
    o->batch_size = 512;
    o->flush_interval_ms = 1000;
    o->export_timeout_ms = 10000;
    o->max_retries = 5;
    o->retry_initial_ms = 100;
    o->retry_max_ms = 5000;
}

int tr_exporter_config(tr_config_t *cfg, const json_t *tracing, tr_exporter_options_t *o)
{
    int64_t q, b, r;
    int err = tr_config_get_string(cfg, tracing, "endpoint", o->endpoint, &o->endpoint);
    if (!err) err = tr_config_get_string(cfg, tracing, "service", o->service, &o->service);
    if (!err)
        err = tr_config_get_int(cfg, tracing, "queue_size", (int64_t)o->queue_capacity, 1, 1 << 20,
                                &q);
    if (!err)
        err = tr_config_get_int(cfg, tracing, "batch_size", (int64_t)o->batch_size, 1, 1 << 16, &b);
    if (!err)
        err = tr_config_get_duration(cfg, tracing, "flush_interval", o->flush_interval_ms,
                                     &o->flush_interval_ms);
    if (!err)
        err = tr_config_get_duration(cfg, tracing, "export_timeout", o->export_timeout_ms,
                                     &o->export_timeout_ms);
    if (!err) err = tr_config_get_int(cfg, tracing, "max_retries", o->max_retries, 0, 100, &r);
    if (err) return err;
    if (o->flush_interval_ms == 0)
        return tr_config_fail(cfg, tracing, "flush_interval", "must be more than 0");
    if (o->export_timeout_ms == 0)
        return tr_config_fail(cfg, tracing, "export_timeout", "must be more than 0");
    o->queue_capacity = (size_t)q;
    o->batch_size = (size_t)b;
    o->max_retries = (unsigned)r;
    return 0;
}

/* ---- endpoint URL (the same rules as the JWKS fetcher's) ---- */

/* ---- producers ---- */

static void emit(void *data, const tr_span_t *span)
{
    tr_exporter_t *e = data;
    size_t pos = atomic_load_explicit(&e->enq, memory_order_relaxed);
    slot_t *s;
    for (;;) {
        size_t idx = pos & e->mask;
        s = &e->slots[idx];
        size_t seq = atomic_load_explicit(&s->seq, memory_order_acquire) + idx;
        intptr_t diff = (intptr_t)(seq - pos);
        if (diff == 0) {
            if (atomic_compare_exchange_weak_explicit(&e->enq, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed))
                break;
        } else if (diff < 0) {
            atomic_fetch_add_explicit(&e->dropped_full, 1, memory_order_relaxed);
            tr_counter_inc(e->m_full);
            return;
        } else {
            pos = atomic_load_explicit(&e->enq, memory_order_relaxed);
        }
    }
    tr__span_rec_copy(&s->rec, span);
    atomic_store_explicit(&s->seq, pos + 1 - (pos & e->mask), memory_order_release);
    /* The ring is megabytes: the next slot is cold. Fetch its head now so the next span
     * (microseconds away) does not wait on memory. */
    const slot_t *next = &e->slots[(pos + 1) & e->mask];
    for (int k = 0; k < 4; k++) {
        __builtin_prefetch((const char *)next + 64 * k, 1, 1);
        __builtin_prefetch(next->rec.text + 64 * k, 1, 1);
    }
    /* Wake the thread once per full batch, not per span; the flush timer sends the rest. */
    if ((pos + 1) % e->o.batch_size == 0) uv_async_send(&e->async);
}

tr_span_sink_t tr_exporter_sink(tr_exporter_t *exp)
{
    return (tr_span_sink_t){.emit = emit, .data = exp};
}

void tr_exporter_stats(const tr_exporter_t *e, tr_exporter_stats_t *out)
{
    tr_exporter_t *m = (tr_exporter_t *)e; /* atomics are read-only here */
    out->queued = atomic_load_explicit(&m->enq, memory_order_relaxed);
    out->dropped_full = atomic_load_explicit(&m->dropped_full, memory_order_relaxed);
    out->exported = atomic_load_explicit(&m->exported, memory_order_relaxed);
    out->dropped_failed = atomic_load_explicit(&m->dropped_failed, memory_order_relaxed);
    out->dropped_shutdown = atomic_load_explicit(&m->dropped_shutdown, memory_order_relaxed);
    out->batches = atomic_load_explicit(&m->batches, memory_order_relaxed);
    out->export_errors = atomic_load_explicit(&m->errors, memory_order_relaxed);
}

/* ---- the export thread ---- */

static size_t queued(tr_exporter_t *e)
{
    return atomic_load_explicit(&e->enq, memory_order_acquire) - e->deq;
}

static void count(tr_exporter_t *e, atomic_uint_fast64_t *stat, tr_series_t *series, size_t n)
{
    atomic_fetch_add_explicit(stat, n, memory_order_relaxed);
    tr_counter_add(series, n);
}

static void on_closed(uv_handle_t *h) {}

static void finish(tr_exporter_t *e)
{
    if (e->closing) return;
    e->closing = true;
    /* Whatever is still queued is lost with the process. */
    size_t left = queued(e);
    if (left) count(e, &e->dropped_shutdown, e->m_shutdown, left);
    e->deq += left;
    tr_http_client_close(e->client, NULL);
    uv_close((uv_handle_t *)&e->async, on_closed);
    uv_close((uv_handle_t *)&e->flush, on_closed);
    uv_close((uv_handle_t *)&e->retry, on_closed);
    uv_close((uv_handle_t *)&e->attempt_deadline, on_closed);
    uv_close((uv_handle_t *)&e->stop_deadline, on_closed);
    uv_close((uv_handle_t *)&e->kick, on_closed);
}

static void on_kick(uv_timer_t *t)
{
    pump(t->data);
}

/* Runs pump from a fresh callback, so a batch that fails at once cannot recurse. */
static void kick(tr_exporter_t *e, uint64_t ms)
{
    if (!e->closing) uv_timer_start(&e->kick, on_kick, ms, 0);
}

static void batch_done(tr_exporter_t *e)
{
    e->busy = false;
    e->batch_n = 0;
    tr_buf_reset(&e->body);
    if (e->stopping || queued(e) >= e->o.batch_size) kick(e, 0);
}

/* Takes up to batch_size published records, encodes them and frees their slots. */
static size_t take_batch(tr_exporter_t *e)
{
    size_t n = 0, avail = queued(e);
    while (n < avail && n < e->o.batch_size) {
        size_t pos = e->deq + n, idx = pos & e->mask;
        size_t seq = atomic_load_explicit(&e->slots[idx].seq, memory_order_acquire) + idx;
        if (seq != pos + 1) break; /* a producer is still copying into it */
        e->picked[n++] = &e->slots[idx].rec;
    }
    if (n == 0) return 0;
    tr_buf_reset(&e->body);
    tr__otlp_encode(e->picked, n, e->service, &e->body);
    for (size_t i = 0; i < n; i++) {
        size_t pos = e->deq + i, idx = pos & e->mask;
        atomic_store_explicit(&e->slots[idx].seq, pos + e->cap - idx, memory_order_release);
    }
    e->deq += n;
    return n;
}

static void pump(tr_exporter_t *e)
{
    if (e->busy || e->closing) return;
    if (queued(e) == 0) {
        if (e->stopping) finish(e);
        return;
    }
    size_t n = take_batch(e);
    if (n == 0) {
        kick(e, 1); /* the head slot is being written; look again shortly */
        return;
    }
    e->busy = true;
    e->batch_n = n;
    e->attempt = 0;
    send_batch(e);
}

static uint64_t backoff_ms(tr_exporter_t *e)
{
    uint64_t ms = e->o.retry_initial_ms;
    for (unsigned i = 1; i < e->attempt && ms < e->o.retry_max_ms; i++)
        ms *= 2;
    if (ms > e->o.retry_max_ms) ms = e->o.retry_max_ms;
    e->jitter ^= e->jitter << 13;
    e->jitter ^= e->jitter >> 7;
    e->jitter ^= e->jitter << 17;
    return ms / 2 + (ms ? e->jitter % (ms / 2 + 1) : 0); /* 50–100 % of the step */
}

static void on_retry(uv_timer_t *t)
{
    send_batch(t->data);
}

static void drop_batch(tr_exporter_t *e, int err, int status)
{
    if (e->gave_up) {
        count(e, &e->dropped_shutdown, e->m_shutdown, e->batch_n);
    } else {
        count(e, &e->dropped_failed, e->m_failed, e->batch_n);
        tr_log_warn("trace: export failed; spans dropped", TR_LOG_STR("endpoint", e->endpoint),
                    TR_LOG_UINT("spans", e->batch_n), TR_LOG_INT("status", status),
                    TR_LOG_ERR(err ? err : TR_EBAD_RESPONSE));
    }
    batch_done(e);
}

/* A failed attempt: retried with backoff when the failure is transient and time allows. */
static void attempt_failed(tr_exporter_t *e, int err, int status)
{
    count(e, &e->errors, e->m_errors, 1);
    if (err) e->resolved = false; /* the address may have moved */
    bool transient = err != 0 || status == 429 || status == 502 || status == 503 || status == 504;
    if (e->gave_up || e->closing || !transient || e->attempt >= e->o.max_retries) {
        drop_batch(e, err, status);
        return;
    }
    e->attempt++;
    uint64_t wait = backoff_ms(e);
    if (e->stopping && uv_timer_get_due_in(&e->stop_deadline) <= wait) {
        drop_batch(e, err, status);
        return;
    }
    uv_timer_start(&e->retry, on_retry, wait, 0);
}

static void on_fetched(tr_http_client_req_t *req, int err, const tr_http_client_response_t *res)
{
    tr_exporter_t *e = tr_http_client_req_data(req);
    e->req = NULL;
    uv_timer_stop(&e->attempt_deadline);
    if (e->timed_out && err == TR_ECANCELED) err = TR_ERESPONSE_TIMEOUT;
    int status = res ? res->status : 0;
    if (err == 0 && status >= 200 && status < 300) {
        count(e, &e->exported, e->m_exported, e->batch_n);
        atomic_fetch_add_explicit(&e->batches, 1, memory_order_relaxed);
        batch_done(e);
        return;
    }
    attempt_failed(e, err, status);
}

static void send_request(tr_exporter_t *e)
{
    static const tr_http_client_header_t hdrs[] = {
        {"Content-Type", 12, "application/json", 16},
    };
    tr_http_client_request_t r = {.method = "POST",
                                  .target = e->u.target,
                                  .headers = hdrs,
                                  .nheaders = 1,
                                  .body_mode = TR_HTTP_CLIENT_BODY_BUFFER,
                                  .body = e->body.data,
                                  .body_len = e->body.len,
                                  .data = e};
    int err = tr_http_client_fetch(e->client, &e->u.ep, &r, on_fetched, &e->req);
    if (err) {
        e->req = NULL;
        uv_timer_stop(&e->attempt_deadline);
        attempt_failed(e, err, 0);
    }
}

static void on_resolved(uv_getaddrinfo_t *gai, int status, struct addrinfo *res)
{
    tr_exporter_t *e = gai->data;
    e->resolving = false;
    char host[sizeof(e->u.ep.host)];
    memcpy(host, e->u.ep.host, sizeof(host));
    int err = status ? status
              : res  ? tr_http_endpoint_from_addr(&e->u.ep, res->ai_addr)
                     : UV_EAI_NONAME;
    uv_freeaddrinfo(res);
    memcpy(e->u.ep.host, host, sizeof(host)); /* Host names the server, not its address */
    if (e->closing) {
        if (e->busy) drop_batch(e, TR_ECANCELED, 0);
        return;
    }
    if (e->timed_out && err) err = TR_ECONNECT_TIMEOUT;
    if (err) {
        uv_timer_stop(&e->attempt_deadline);
        attempt_failed(e, err, 0);
        return;
    }
    e->resolved = true;
    send_request(e);
}

static void on_attempt_deadline(uv_timer_t *t)
{
    tr_exporter_t *e = t->data;
    e->timed_out = true;
    if (e->req) tr_http_client_cancel(e->req);
    if (e->resolving) uv_cancel((uv_req_t *)&e->gai);
}

static void send_batch(tr_exporter_t *e)
{
    if (e->closing) return;
    e->timed_out = false;
    uv_timer_start(&e->attempt_deadline, on_attempt_deadline, e->o.export_timeout_ms, 0);
    if (e->u.literal || e->resolved) {
        send_request(e);
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    e->gai.data = e;
    int err = uv_getaddrinfo(&e->loop, &e->gai, on_resolved, e->u.host, e->u.port, &hints);
    if (err) {
        uv_timer_stop(&e->attempt_deadline);
        attempt_failed(e, err, 0);
        return;
    }
    e->resolving = true;
}

/* The stop deadline passed: abandon the batch in flight and whatever is queued. */
static void on_stop_deadline(uv_timer_t *t)
{
    tr_exporter_t *e = t->data;
    e->gave_up = true;
    if (e->busy && uv_is_active((uv_handle_t *)&e->retry)) {
        uv_timer_stop(&e->retry);
        drop_batch(e, TR_ECANCELED, 0);
    }
    if (e->req) tr_http_client_cancel(e->req); /* its callback drops the batch */
    if (e->resolving) uv_cancel((uv_req_t *)&e->gai);
    if (e->busy && !e->req && !e->resolving) drop_batch(e, TR_ECANCELED, 0);
    finish(e);
}

static void on_flush(uv_timer_t *t)
{
    pump(t->data);
}

static void on_async(uv_async_t *a)
{
    tr_exporter_t *e = a->data;
    if (!e->stopping && atomic_load(&e->stop_requested)) {
        e->stopping = true;
        uv_timer_stop(&e->flush);
        if (e->stop_ms == 0) {
            on_stop_deadline(&e->stop_deadline);
            return;
        }
        uv_timer_start(&e->stop_deadline, on_stop_deadline, e->stop_ms, 0);
        pump(e);
        return;
    }
    if (queued(e) >= e->o.batch_size) pump(e);
}

static void thread_main(void *arg)
{
    tr_exporter_t *e = arg;
    uv_run(&e->loop, UV_RUN_DEFAULT);
}

/* ---- start and stop ---- */

static void register_metrics(tr_exporter_t *e)
{
    tr_metrics_t *reg = e->o.metrics ? e->o.metrics : tr_metrics_default();
    static const char *const reason[] = {"reason", NULL};
    tr_metric_t *m = tr_metrics_counter(reg, "trellis_trace_spans_exported_total",
                                        "Spans accepted by the trace export endpoint.", NULL);
    e->m_exported = m ? tr_metric_series(m, NULL) : NULL;
    m = tr_metrics_counter(reg, "trellis_trace_spans_dropped_total",
                           "Finished spans that were never exported, by reason.", reason);
    e->m_full = m ? tr_metric_series(m, (const char *const[]){"queue_full", NULL}) : NULL;
    e->m_failed = m ? tr_metric_series(m, (const char *const[]){"export_failed", NULL}) : NULL;
    e->m_shutdown = m ? tr_metric_series(m, (const char *const[]){"shutdown", NULL}) : NULL;
    m = tr_metrics_counter(reg, "trellis_trace_export_errors_total",
                           "Failed span export attempts (retried or not).", NULL);
    e->m_errors = m ? tr_metric_series(m, NULL) : NULL;
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 2;
    while (c < n)
        c <<= 1;
    return c;
}

static void exporter_free(tr_exporter_t *e)
{
    free(e->slots);
    free(e->picked);
    free(e->endpoint);
    free(e->service);
    tr_http_url_free(&e->u);
    tr_buf_free(&e->body);
    free(e);
}

static void init_loop(tr_exporter_t *e)
{
    uv_loop_init(&e->loop);
    uv_async_init(&e->loop, &e->async, on_async);
    uv_timer_t *timers[] = {&e->flush, &e->retry, &e->attempt_deadline, &e->stop_deadline,
                            &e->kick};
    for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++) {
        uv_timer_init(&e->loop, timers[i]);
        timers[i]->data = e;
    }
    e->async.data = e;
    tr_http_client_options_t co;
    tr_http_client_options_init(&co);
    co.max_idle_per_endpoint = 2;
    co.response_timeout_ms = e->o.export_timeout_ms;
    if (co.connect_timeout_ms > e->o.export_timeout_ms)
        co.connect_timeout_ms = e->o.export_timeout_ms;
    e->client = tr_http_client_new(&e->loop, &co);
    uv_timer_start(&e->flush, on_flush, e->o.flush_interval_ms, e->o.flush_interval_ms);
}

tr_exporter_t *tr_exporter_start(const tr_exporter_options_t *opts)
{
    tr_exporter_options_t o;
    tr_exporter_options_init(&o);
    if (opts) o = *opts;
    tr_exporter_options_t d;
    tr_exporter_options_init(&d);
    if (o.endpoint == NULL) o.endpoint = d.endpoint;
    if (o.service == NULL || o.service[0] == '\0') o.service = d.service;
    if (o.queue_capacity == 0) o.queue_capacity = d.queue_capacity;
    if (o.batch_size == 0) o.batch_size = d.batch_size;
    if (o.flush_interval_ms == 0) o.flush_interval_ms = d.flush_interval_ms;
    if (o.export_timeout_ms == 0) o.export_timeout_ms = d.export_timeout_ms;
    if (o.retry_max_ms < o.retry_initial_ms) o.retry_max_ms = o.retry_initial_ms;

    tr_exporter_t *e = tr_calloc(1, sizeof(*e));
    int err = tr_http_url_parse(o.endpoint, &e->u);
    if (err) {
        tr_log_error("trace: bad export endpoint (expected http://host[:port]/path)",
                     TR_LOG_STR("endpoint", o.endpoint), TR_LOG_ERR(err));
        exporter_free(e);
        return NULL;
    }
    e->endpoint = tr_strdup(o.endpoint);
    e->service = tr_strdup(o.service);
    o.endpoint = e->endpoint;
    o.service = e->service;
    e->cap = pow2_at_least(o.queue_capacity);
    e->mask = e->cap - 1;
    if (o.batch_size > e->cap) o.batch_size = e->cap;
    e->o = o;
    e->slots = tr_calloc(e->cap, sizeof(slot_t));
    e->picked = tr_calloc(o.batch_size, sizeof(*e->picked));
    e->jitter = uv_hrtime() | 1;
    register_metrics(e);
    init_loop(e);
    if (uv_thread_create(&e->thread, thread_main, e) != 0) {
        tr_log_error("trace: cannot start the export thread");
        finish(e);
        uv_run(&e->loop, UV_RUN_DEFAULT);
        uv_loop_close(&e->loop);
        exporter_free(e);
        return NULL;
    }
    return e;
}

void tr_exporter_stop(tr_exporter_t *e, uint64_t flush_deadline_ms)
{
    if (e == NULL) return;
    e->stop_ms = flush_deadline_ms; /* published by the atomic store below */
    atomic_store(&e->stop_requested, true);
    uv_async_send(&e->async);
    uv_thread_join(&e->thread);
    int err = uv_loop_close(&e->loop);
    if (err) tr_log_error("trace: exporter loop still had handles at stop", TR_LOG_ERR(err));
    exporter_free(e);
}
