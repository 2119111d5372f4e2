/* Unit tests for the span exporter and OTLP JSON encoding, against a local OTLP receiver. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/buf.h"
#include "trace/otlp_encode.h"
#include "trellis/error.h"
#include "trellis/http.h"
#include "trellis/log.h"
#include "trellis/metrics.h"
#include "trellis/net.h"
#include "trellis/trace.h"

/* ---- the receiver: a tr_http_server on its own thread ---- */

typedef struct rx_s {
    uv_loop_t loop;
    uv_async_t stop;
    uv_thread_t thread;
    tr_http_server_t *srv;
    int port;
    pthread_mutex_t mu;
    /* under mu */
    int requests, spans, fail_next, fail_status, bad_json;
    bool hold;
    char path[64], ctype[64];
    json_t *last; /* the last body, parsed */
    tr_buf_t body;
} rx_t;

typedef struct held_s {
    tr_http_req_t *req;
    tr_buf_t body;
} rq_t;

static size_t count_spans(json_t *doc)
{
    size_t n = 0, i, j;
    json_t *rs, *ss;
    json_array_foreach(json_object_get(doc, "resourceSpans"), i, rs)
        json_array_foreach(json_object_get(rs, "scopeSpans"), j, ss) n +=
        json_array_size(json_object_get(ss, "spans"));
    return n;
}

static void on_rq_body(tr_http_req_t *req, const char *data, size_t len)
{
    rq_t *q = req->data;
    tr_buf_append(&q->body, data, len);
}

static void on_rq_abort(tr_http_req_t *req)
{
    rq_t *q = req->data;
    tr_buf_free(&q->body);
    free(q);
}

static void on_rq_end(tr_http_req_t *req)
{
    rq_t *q = req->data;
    rx_t *rx = req->loop->data;
    json_t *doc = json_loadb(q->body.data ? q->body.data : "", q->body.len, 0, NULL);
    pthread_mutex_lock(&rx->mu);
    rx->requests++;
    int status = 200;
    if (rx->fail_next > 0) {
        rx->fail_next--;
        status = rx->fail_status;
    }
    bool hold = rx->hold;
    if (doc == NULL) rx->bad_json++;
    if (status == 200 && !hold && doc) rx->spans += (int)count_spans(doc);
    if (doc) {
        json_decref(rx->last);
        rx->last = json_incref(doc);
    }
    pthread_mutex_unlock(&rx->mu);
    json_decref(doc);
    if (hold) return; /* never answered: the exporter's deadline or stop cancels it */
    tr_buf_free(&q->body);
    free(q);
    req->data = NULL;
    tr_http_res_send(req, status, "application/json", "{}", 2);
}

static void on_rq(tr_http_req_t *req, void *data)
{
    rx_t *rx = data;
    rq_t *q = calloc(1, sizeof(*q));
    q->req = req;
    req->data = q;
    req->on_body = on_rq_body;
    req->on_end = on_rq_end;
    req->on_abort = on_rq_abort;
    const char *ct = tr_http_req_header(req, "content-type");
    pthread_mutex_lock(&rx->mu);
    snprintf(rx->path, sizeof(rx->path), "%s", req->url);
    snprintf(rx->ctype, sizeof(rx->ctype), "%s", ct ? ct : "");
    pthread_mutex_unlock(&rx->mu);
}

static void on_rx_stop(uv_async_t *a)
{
    rx_t *rx = a->data;
    tr_http_server_close(rx->srv, true, NULL, NULL);
    uv_close((uv_handle_t *)&rx->stop, NULL);
}

static void rx_main(void *arg)
{
    rx_t *rx = arg;
    uv_run(&rx->loop, UV_RUN_DEFAULT);
}

static void rx_start(rx_t *rx)
{
    memset(rx, 0, sizeof(*rx));
    pthread_mutex_init(&rx->mu, NULL);
    assert_int_equal(uv_loop_init(&rx->loop), 0);
    rx->loop.data = rx;
    uv_async_init(&rx->loop, &rx->stop, on_rx_stop);
    rx->stop.data = rx;
    struct sockaddr_storage addr, bound;
    assert_int_equal(tr_net_parse_addr("127.0.0.1:0", &addr), 0);
    int fd;
    assert_int_equal(tr_net_listen(&addr, 1, 64, &fd, &bound), 0);
    rx->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    tr_http_server_options_t so = {
        .handler = on_rq, .handler_data = rx, .max_body_bytes = 64 << 20};
    assert_int_equal(tr_http_server_start(&rx->loop, fd, &so, &rx->srv), 0);
    assert_int_equal(uv_thread_create(&rx->thread, rx_main, rx), 0);
}

static void rx_stop(rx_t *rx)
{
    uv_async_send(&rx->stop);
    uv_thread_join(&rx->thread);
    assert_int_equal(uv_loop_close(&rx->loop), 0);
    json_decref(rx->last);
    pthread_mutex_destroy(&rx->mu);
}

static int rx_get(rx_t *rx, int *field)
{
    pthread_mutex_lock(&rx->mu);
    int v = *field;
    pthread_mutex_unlock(&rx->mu);
    return v;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#define WAIT_UNTIL(cond)                                                                           \
    do {                                                                                           \
        uint64_t until_ = now_ms() + 5000;                                                         \
        while (!(cond) && now_ms() < until_)                                                       \
            usleep(2000);                                                                          \
        if (!(cond)) fail_msg("timed out waiting for: %s", #cond);                                 \
    } while (0)

/* ---- spans ---- */

static void make_span(tr_span_t *s, int i)
{
    static tr_attr_t attrs[4];
    static tr_span_event_t ev[1];
    static tr_attr_t ev_attrs[1];
    attrs[0] = (tr_attr_t){.key = "http.method", .type = TR_ATTR_STRING, .v.s = "GET"};
    attrs[1] = (tr_attr_t){.key = "http.status_code", .type = TR_ATTR_INT, .v.i = -5};
    attrs[2] = (tr_attr_t){.key = "ratio", .type = TR_ATTR_DOUBLE, .v.d = 0.5};
    attrs[3] = (tr_attr_t){.key = "cache.hit", .type = TR_ATTR_BOOL, .v.b = true};
    ev_attrs[0] = (tr_attr_t){.key = "attempt", .type = TR_ATTR_INT, .v.i = 2};
    ev[0] = (tr_span_event_t){
        .name = "retry", .time_ns = 1700000000000000500ULL, .attrs = ev_attrs, .nattrs = 1};
    memset(s, 0, sizeof(*s));
    tr_trace_ctx_t c;
    tr_trace_new_ids(&c, true);
    memcpy(s->trace_id, c.trace_id, 16);
    memcpy(s->span_id, c.span_id, 8);
    s->parent_span_id[7] = (uint8_t)(i & 1);
    s->name = "GET /orders";
    s->kind = TR_SPAN_SERVER;
    s->start_ns = 1700000000000000000ULL;
    s->end_ns = 1700000000000001000ULL + (uint64_t)i;
    s->status = TR_STATUS_ERROR;
    s->status_message = "upstream \"timeout\"";
    s->service = NULL;
    s->attrs = attrs;
    s->nattrs = 4;
    s->events = ev;
    s->nevents = 1;
}

static void emit_n(tr_exporter_t *e, int n)
{
    tr_span_sink_t sink = tr_exporter_sink(e);
    for (int i = 0; i < n; i++) {
        tr_span_t s;
        make_span(&s, i);
        sink.emit(sink.data, &s);
    }
}

static tr_exporter_t *start(rx_t *rx, tr_metrics_t *reg, size_t batch, size_t cap,
                            uint64_t flush_ms)
{
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/traces", rx->port);
    tr_exporter_options_t o;
    tr_exporter_options_init(&o);
    o.endpoint = url;
    o.service = "orders";
    o.batch_size = batch;
    o.queue_capacity = cap;
    o.flush_interval_ms = flush_ms;
    o.export_timeout_ms = 2000;
    o.retry_initial_ms = 10;
    o.retry_max_ms = 40;
    o.max_retries = 3;
    o.metrics = reg;
    tr_exporter_t *e = tr_exporter_start(&o);
    assert_non_null(e);
    return e;
}

static tr_exporter_stats_t stats(tr_exporter_t *e)
{
    tr_exporter_stats_t s;
    tr_exporter_stats(e, &s);
    return s;
}

/* ---- tests ---- */

static void test_json_shape(void **state)
{
    rx_t rx;
    rx_start(&rx);
    tr_metrics_t *reg = tr_metrics_create();
    tr_exporter_t *e = start(&rx, reg, 512, 1024, 20);
    emit_n(e, 3);
    WAIT_UNTIL(rx_get(&rx, &rx.spans) == 3);
    pthread_mutex_lock(&rx.mu);
    assert_string_equal(rx.path, "/v1/traces");
    assert_string_equal(rx.ctype, "application/json");
    json_t *rs = json_array_get(json_object_get(rx.last, "resourceSpans"), 0);
    json_t *ra = json_array_get(json_object_get(json_object_get(rs, "resource"), "attributes"), 0);
    assert_string_equal(json_string_value(json_object_get(ra, "key")), "service.name");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(ra, "value"), "stringValue")), "orders");
    json_t *ss = json_array_get(json_object_get(rs, "scopeSpans"), 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(ss, "scope"), "name")),
                        "trellis");
    json_t *sp = json_array_get(json_object_get(ss, "spans"), 1);
    assert_int_equal(strlen(json_string_value(json_object_get(sp, "traceId"))), 32);
    assert_int_equal(strlen(json_string_value(json_object_get(sp, "spanId"))), 16);
    assert_string_equal(json_string_value(json_object_get(sp, "parentSpanId")), "0000000000000001");
    assert_null(json_object_get(json_array_get(json_object_get(ss, "spans"), 0), "parentSpanId"));
    assert_string_equal(json_string_value(json_object_get(sp, "name")), "GET /orders");
    assert_int_equal(json_integer_value(json_object_get(sp, "kind")), 2);
    assert_string_equal(json_string_value(json_object_get(sp, "startTimeUnixNano")),
                        "1700000000000000000");
    assert_string_equal(json_string_value(json_object_get(sp, "endTimeUnixNano")),
                        "1700000000000001001");
    json_t *at = json_object_get(sp, "attributes");
    assert_int_equal(json_array_size(at), 4);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_array_get(at, 0), "value"), "stringValue")),
                        "GET");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_array_get(at, 1), "value"), "intValue")),
                        "-5");
    assert_true(json_real_value(json_object_get(json_object_get(json_array_get(at, 2), "value"),
                                                "doubleValue")) == 0.5);
    assert_true(json_is_true(
        json_object_get(json_object_get(json_array_get(at, 3), "value"), "boolValue")));
    json_t *ev = json_array_get(json_object_get(sp, "events"), 0);
    assert_string_equal(json_string_value(json_object_get(ev, "name")), "retry");
    assert_string_equal(json_string_value(json_object_get(ev, "timeUnixNano")),
                        "1700000000000000500");
    assert_int_equal(json_array_size(json_object_get(ev, "attributes")), 1);
    json_t *st = json_object_get(sp, "status");
    assert_int_equal(json_integer_value(json_object_get(st, "code")), 2);
    assert_string_equal(json_string_value(json_object_get(st, "message")), "upstream \"timeout\"");
    pthread_mutex_unlock(&rx.mu);
    WAIT_UNTIL(stats(e).exported == 3);
    tr_exporter_stop(e, 1000);
    tr_buf_t out = TR_BUF_INIT;
    tr_metrics_render(reg, &out);
    assert_non_null(strstr(tr_buf_cstr(&out), "trellis_trace_spans_exported_total 3"));
    tr_buf_free(&out);
    tr_metrics_free(reg);
    rx_stop(&rx);
}

static void test_batching(void **state)
{
    rx_t rx;
    rx_start(&rx);
    tr_metrics_t *reg = tr_metrics_create();
    tr_exporter_t *e = start(&rx, reg, 10, 1024, 60000); /* only full batches wake it */
    emit_n(e, 35);
    WAIT_UNTIL(rx_get(&rx, &rx.spans) == 30);
    usleep(50000);
    assert_int_equal(rx_get(&rx, &rx.requests), 3);
    /* Stop flushes the partial batch. */
    tr_exporter_stop(e, 2000);
    assert_int_equal(rx_get(&rx, &rx.spans), 35);
    assert_int_equal(rx_get(&rx, &rx.requests), 4);
    tr_metrics_free(reg);
    rx_stop(&rx);
}

static void test_retry_on_503(void **state)
{
    rx_t rx;
    rx_start(&rx);
    rx.fail_next = 2;
    rx.fail_status = 503;
    tr_metrics_t *reg = tr_metrics_create();
    tr_exporter_t *e = start(&rx, reg, 100, 1024, 10);
    emit_n(e, 7);
    WAIT_UNTIL(stats(e).exported == 7);
    tr_exporter_stats_t s = stats(e);
    assert_int_equal(s.export_errors, 2);
    assert_int_equal(s.dropped_failed, 0);
    assert_int_equal(s.batches, 1);
    assert_int_equal(rx_get(&rx, &rx.requests), 3);
    tr_exporter_stop(e, 1000);
    tr_metrics_free(reg);
    rx_stop(&rx);
}

static void test_give_up_after_retries_and_on_400(void **state)
{
    rx_t rx;
    rx_start(&rx);
    rx.fail_next = 100;
    rx.fail_status = 503;
    tr_metrics_t *reg = tr_metrics_create();
    tr_exporter_t *e = start(&rx, reg, 100, 1024, 10);
    emit_n(e, 5);
    WAIT_UNTIL(stats(e).dropped_failed == 5);
    assert_int_equal(stats(e).export_errors, 4); /* 1 + max_retries 3 */
    pthread_mutex_lock(&rx.mu);
    rx.fail_next = 1;
    rx.fail_status = 400; /* not transient: no retry */
    pthread_mutex_unlock(&rx.mu);
    emit_n(e, 2);
    WAIT_UNTIL(stats(e).dropped_failed == 7);
    assert_int_equal(stats(e).export_errors, 5);
    emit_n(e, 1); /* and it recovers */
    WAIT_UNTIL(stats(e).exported == 1);
    tr_exporter_stop(e, 1000);
    tr_buf_t out = TR_BUF_INIT;
    tr_metrics_render(reg, &out);
    assert_non_null(
        strstr(tr_buf_cstr(&out), "trellis_trace_spans_dropped_total{reason=\"export_failed\"} 7"));
    assert_non_null(strstr(tr_buf_cstr(&out), "trellis_trace_export_errors_total 5"));
    tr_buf_free(&out);
    tr_metrics_free(reg);
    rx_stop(&rx);
}

static void test_drop_when_full(void **state)
{
    rx_t rx;
    rx_start(&rx);
    rx.hold = true; /* the receiver stalls */
    tr_metrics_t *reg = tr_metrics_create();
    tr_exporter_t *e = start(&rx, reg, 16, 64, 10);
    emit_n(e, 16);
    WAIT_UNTIL(rx_get(&rx, &rx.requests) == 1); /* one batch stuck in flight */
    uint64_t t0 = now_ms();
    emit_n(e, 1000);
    assert_true(now_ms() - t0 < 1000); /* never waits */
    tr_exporter_stats_t s = stats(e);
    assert_int_equal(s.queued, 16 + 64);
    assert_int_equal(s.dropped_full, 1000 - 64);
    /* Stop with the receiver still stalled: bounded by the deadline, the rest counted. */
    t0 = now_ms();
    tr_exporter_stop(e, 200);
    uint64_t took = now_ms() - t0;
    assert_true(took >= 150 && took < 1500);
    tr_buf_t out = TR_BUF_INIT;
    tr_metrics_render(reg, &out);
    assert_non_null(
        strstr(tr_buf_cstr(&out), "trellis_trace_spans_dropped_total{reason=\"queue_full\"} 936"));
    assert_non_null(
        strstr(tr_buf_cstr(&out), "trellis_trace_spans_dropped_total{reason=\"shutdown\"} 80"));
    tr_buf_free(&out);
    tr_metrics_free(reg);
    rx_stop(&rx);
}

static void test_flush_on_stop(void **state)
{
    rx_t rx;
    rx_start(&rx);
    tr_metrics_t *reg = tr_metrics_create();
    tr_exporter_t *e = start(&rx, reg, 512, 8192, 60000);
    emit_n(e, 1500);
    uint64_t t0 = now_ms();
    tr_exporter_stop(e, 5000);
    assert_true(now_ms() - t0 < 2000);
    assert_int_equal(rx_get(&rx, &rx.spans), 1500);
    assert_int_equal(rx_get(&rx, &rx.bad_json), 0);
    tr_metrics_free(reg);
    rx_stop(&rx);
}

static void test_refused_and_hostname(void **state)
{
    rx_t rx;
    rx_start(&rx);
    tr_metrics_t *reg = tr_metrics_create();
    tr_exporter_options_t o;
    tr_exporter_options_init(&o);
    o.metrics = reg;
    o.endpoint = "http://127.0.0.1:1/v1/traces"; /* nothing listens on port 1 */
    o.flush_interval_ms = 10;
    o.retry_initial_ms = 5;
    o.max_retries = 1;
    tr_exporter_t *e = tr_exporter_start(&o);
    emit_n(e, 3);
    WAIT_UNTIL(stats(e).dropped_failed == 3);
    assert_int_equal(stats(e).export_errors, 2);
    tr_exporter_stop(e, 100);

    char url[128];
    snprintf(url, sizeof(url), "http://localhost:%d/v1/traces", rx.port);
    o.endpoint = url;
    e = tr_exporter_start(&o);
    assert_non_null(e);
    emit_n(e, 2);
    tr_exporter_stop(e, 3000); /* resolves, then flushes */
    assert_int_equal(rx_get(&rx, &rx.spans), 2);

    const char *bad[] = {
        "https://127.0.0.1/v1/traces", "ftp://x/",     "127.0.0.1:4318", "http://:80/",
        "http://host:99999/",          "http://ho st/"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        o.endpoint = bad[i];
        if (tr_exporter_start(&o) != NULL) fail_msg("accepted %s", bad[i]);
    }
    tr_exporter_stop(NULL, 0);
    tr_metrics_free(reg);
    rx_stop(&rx);
}

static void test_record_limits(void **state)
{
    char longname[400], longval[600];
    memset(longname, 'n', sizeof(longname));
    longname[sizeof(longname) - 1] = '\0';
    memset(longval, 'v', sizeof(longval));
    /* An é straddling the 256-byte cut must not be split. */
    memcpy(longval + 255, "\xc3\xa9", 2);
    longval[sizeof(longval) - 1] = '\0';
    tr_attr_t attrs[20];
    char keys[20][8];
    for (int i = 0; i < 20; i++) {
        snprintf(keys[i], sizeof(keys[i]), "k%d", i);
        attrs[i] = (tr_attr_t){.key = keys[i], .type = TR_ATTR_STRING, .v.s = i ? "x" : longval};
    }
    attrs[1].v.s = "ctl\x01\n\"\\ bad\xff utf8 \xe2\x82\xac";
    tr_span_t s;
    make_span(&s, 0);
    s.name = longname;
    s.service = "svc";
    s.attrs = attrs;
    s.nattrs = 20;
    tr__span_rec_t *r = malloc(sizeof(*r));
    tr__span_rec_copy(r, &s);
    assert_int_equal(r->name.len, TR_SPAN_NAME_MAX);
    assert_int_equal(r->nattrs, TR_SPAN_ATTRS_MAX);
    assert_int_equal(r->dropped_attrs, 4);
    assert_int_equal(r->attrs[0].v.s.len, 255);
    const tr__span_rec_t *recs[] = {r};
    tr_buf_t out = TR_BUF_INIT;
    tr__otlp_encode(recs, 1, "def", &out);
    json_error_t je;
    json_t *doc = json_loadb(out.data, out.len, 0, &je);
    if (doc == NULL) fail_msg("invalid JSON: %s", je.text);
    json_t *rs = json_array_get(json_object_get(doc, "resourceSpans"), 0);
    json_t *sp = json_array_get(
        json_object_get(json_array_get(json_object_get(rs, "scopeSpans"), 0), "spans"), 0);
    assert_int_equal(json_integer_value(json_object_get(sp, "droppedAttributesCount")), 4);
    json_t *a1 = json_array_get(json_object_get(sp, "attributes"), 1);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(a1, "value"), "stringValue")),
        "ctl\x01\n\"\\ bad\xef\xbf\xbd utf8 \xe2\x82\xac");
    json_decref(doc);
    tr_buf_free(&out);
    free(r);
}

static void test_group_by_service(void **state)
{
    tr__span_rec_t *r = calloc(3, sizeof(*r));
    const char *svc[] = {"a", NULL, "a"};
    for (int i = 0; i < 3; i++) {
        tr_span_t s;
        make_span(&s, i);
        s.service = svc[i];
        tr__span_rec_copy(&r[i], &s);
    }
    const tr__span_rec_t *recs[] = {&r[0], &r[1], &r[2]};
    tr_buf_t out = TR_BUF_INIT;
    tr__otlp_encode(recs, 3, "dflt", &out);
    json_t *doc = json_loadb(out.data, out.len, 0, NULL);
    assert_non_null(doc);
    json_t *rs = json_object_get(doc, "resourceSpans");
    assert_int_equal(json_array_size(rs), 2);
    assert_int_equal(count_spans(doc), 3);
    json_decref(doc);
    tr_buf_free(&out);
    free(r);
}

static void *producer(void *arg)
{
    emit_n(arg, 20000);
    return NULL;
}

/* Two threads emitting while the exporter drains: nothing lost or torn, all accounted. */
static void test_concurrent_producers(void **state)
{
    rx_t rx;
    rx_start(&rx);
    tr_metrics_t *reg = tr_metrics_create();
    tr_exporter_t *e = start(&rx, reg, 256, 4096, 5);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, producer, e), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    tr_exporter_stats_t s = stats(e); /* producers are done: queued and dropped are final */
    assert_int_equal(s.queued + s.dropped_full, 40000);
    tr_exporter_stop(e, 10000);
    tr_metrics_free(reg);
    rx_stop(&rx);
    assert_int_equal(rx.bad_json, 0);
    assert_int_equal(rx.spans, (int)s.queued);
}

/* Prints ns per emit and encoded spans per second; asserts nothing about speed. */
static void test_bench(void **state)
{
    rx_t rx;
    rx_start(&rx);
    tr_metrics_t *reg = tr_metrics_create();
    /* One batch is the whole queue: the export thread sleeps while we measure. */
    const int n = 8192;
    tr_exporter_t *e = start(&rx, reg, (size_t)n, (size_t)n, 60000);
    tr_span_sink_t sink = tr_exporter_sink(e);
    tr_span_t s;
    make_span(&s, 1);
    emit_n(e, n); /* warm-up: commits the queue's pages; the full batch wakes the exporter */
    WAIT_UNTIL(stats(e).exported == (uint64_t)n);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n - 1; i++) {
        s.end_ns++;
        sink.emit(sink.data, &s);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / (n - 1);
    assert_int_equal(stats(e).dropped_full, 0);
    tr_exporter_stop(e, 10000);
    tr_metrics_free(reg);
    rx_stop(&rx);

    tr__span_rec_t *r = malloc(sizeof(*r));
    tr__span_rec_copy(r, &s);
    const tr__span_rec_t *recs[512];
    for (int i = 0; i < 512; i++)
        recs[i] = r;
    tr_buf_t out = TR_BUF_INIT;
    int rounds = 400;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < rounds; i++) {
        tr_buf_reset(&out);
        tr__otlp_encode(recs, 512, "svc", &out);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    printf("bench: emit %.1f ns/span (4 attrs, 1 event); encode %.0f spans/s (%zu bytes/span)\n",
           ns, rounds * 512 / secs, out.len / 512);
    tr_buf_free(&out);
    free(r);
}

int main(void)
{
    tr_log_options_t lo = TR_LOG_OPTIONS_INIT;
    lo.level = TR_LOG_ERROR;
    tr_log_init(&lo);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_shape),
        cmocka_unit_test(test_batching),
        cmocka_unit_test(test_retry_on_503),
        cmocka_unit_test(test_give_up_after_retries_and_on_400),
        cmocka_unit_test(test_drop_when_full),
        cmocka_unit_test(test_flush_on_stop),
        cmocka_unit_test(test_refused_and_hostname),
        cmocka_unit_test(test_record_limits),
        cmocka_unit_test(test_group_by_service),
        cmocka_unit_test(test_concurrent_producers),
        cmocka_unit_test(test_bench),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tr_log_shutdown();
    return rc;
}
