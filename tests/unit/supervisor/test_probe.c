/* Unit tests for probes: HTTP and TCP against a server on the test's loop, thresholds, timing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "supervisor/probe.h"
#include "trellis/http.h"
#include "trellis/net.h"

#define MAX_CHANGES 16

typedef struct fx_s {
    uv_loop_t loop;
    uv_timer_t wake;
    tr_http_server_t *srv;
    tr_http_client_t *http;
    tr_probe_t *p;
    uint16_t port;
    int status;       /* what the health paths answer */
    int fail_first;   /* answer 503 to this many requests first */
    int requests;     /* requests seen */
    char last_ua[64]; /* User-Agent of the last request */
    int nchanges;
    bool passing[MAX_CHANGES];
    char why[MAX_CHANGES][96];
    uint64_t at[MAX_CHANGES];
    uint64_t t0;
} fx_t;

static void on_wake(uv_timer_t *t) {}

static void handle(tr_http_req_t *req, void *data)
{
    fx_t *f = data;
    f->requests++;
    const char *ua = tr_http_req_header(req, "User-Agent");
    snprintf(f->last_ua, sizeof(f->last_ua), "%s", ua ? ua : "");
    if (strcmp(req->path, "/slow") == 0) return; /* never answers; closed by force at the end */
    int status = f->status;
    if (f->fail_first > 0) {
        f->fail_first--;
        status = 503;
    }
    tr_http_res_send(req, status, "text/plain", "x", 1);
}

static void on_change(tr_probe_t *p, bool passing, const char *why, void *data)
{
    fx_t *f = data;
    assert_true(f->nchanges < MAX_CHANGES);
    f->passing[f->nchanges] = passing;
    snprintf(f->why[f->nchanges], sizeof(f->why[0]), "%s", why);
    f->at[f->nchanges] = uv_now(&f->loop) - f->t0;
    f->nchanges++;
}

static fx_t *fx_new(void)
{
    fx_t *f = calloc(1, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->wake);
    uv_timer_start(&f->wake, on_wake, 5, 5);
    struct sockaddr_storage addr, bound;
    assert_int_equal(tr_net_parse_addr("127.0.0.1:0", &addr), 0);
    int fd;
    assert_int_equal(tr_net_listen(&addr, 1, 64, &fd, &bound), 0);
    f->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    tr_http_server_options_t so = {.handler = handle, .handler_data = f};
    assert_int_equal(tr_http_server_start(&f->loop, fd, &so, &f->srv), 0);
    tr_http_client_options_t ho;
    tr_http_client_options_init(&ho);
    ho.max_idle_per_endpoint = 0;
    f->http = tr_http_client_new(&f->loop, &ho);
    f->status = 200;
    uv_update_time(&f->loop);
    f->t0 = uv_now(&f->loop);
    return f;
}

static tr_probe_options_t fx_opts(fx_t *f, const char *path)
{
    tr_probe_options_t o = {0};
    o.spec.enabled = true;
    o.spec.http = path != NULL;
    o.spec.path = path;
    o.spec.period_ms = 20;
    o.spec.timeout_ms = 500;
    o.spec.failure_threshold = 1;
    o.port = f->port;
    o.http = f->http;
    o.on_change = on_change;
    o.data = f;
    return o;
}

static void fx_start(fx_t *f, const tr_probe_options_t *o)
{
    uv_update_time(&f->loop);
    f->t0 = uv_now(&f->loop);
    assert_int_equal(tr_probe_start(&f->loop, o, &f->p), 0);
}

static void run_for(fx_t *f, uint64_t ms)
{
    uv_update_time(&f->loop);
    uint64_t end = uv_now(&f->loop) + ms;
    while (uv_now(&f->loop) < end)
        uv_run(&f->loop, UV_RUN_ONCE);
}

static void run_until_changes(fx_t *f, int n, uint64_t timeout_ms)
{
    uv_update_time(&f->loop);
    uint64_t end = uv_now(&f->loop) + timeout_ms;
    while (f->nchanges < n && uv_now(&f->loop) < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->nchanges, n);
}

static void fx_free(fx_t *f)
{
    if (f->p) tr_probe_close(f->p, NULL, NULL);
    tr_http_client_close(f->http, NULL);
    tr_http_server_close(f->srv, true, NULL, NULL);
    uv_close((uv_handle_t *)&f->wake, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
}

static void test_http_ready(void **state)
{
    fx_t *f = fx_new();
    tr_probe_options_t o = fx_opts(f, "/health/ready");
    fx_start(f, &o);
    assert_false(tr_probe_passing(f->p));
    run_until_changes(f, 1, 2000);
    assert_true(f->passing[0]);
    assert_true(tr_probe_passing(f->p));
    assert_string_equal(f->why[0], "GET /health/ready: HTTP 200");
    assert_string_equal(f->last_ua, "trellis-probe");
    assert_true(f->at[0] < 200); /* the first probe goes out at once */
    fx_free(f);
}

static void test_http_status_classes(void **state)
{
    fx_t *f = fx_new();
    f->status = 302; /* 3xx passes, like a kubelet's probe */
    tr_probe_options_t o = fx_opts(f, "/health/live");
    o.initially_passing = true;
    o.spec.failure_threshold = 2;
    fx_start(f, &o);
    run_for(f, 150);
    assert_int_equal(f->nchanges, 0);
    assert_true(tr_probe_runs(f->p) >= 3);
    f->status = 500;
    int before = f->requests;
    run_until_changes(f, 1, 2000);
    assert_false(f->passing[0]);
    assert_int_equal(f->requests - before, 2); /* exactly failure_threshold failures */
    assert_string_equal(f->why[0], "GET /health/live: HTTP 500");
    f->status = 404;
    run_for(f, 100);
    assert_int_equal(f->nchanges, 1); /* still failing: no new change */
    fx_free(f);
}

static void test_success_threshold(void **state)
{
    fx_t *f = fx_new();
    f->status = 503;
    tr_probe_options_t o = fx_opts(f, "/health/ready");
    o.spec.success_threshold = 3;
    fx_start(f, &o);
    run_for(f, 100);
    assert_int_equal(f->nchanges, 0);
    f->status = 200;
    int before = f->requests;
    run_until_changes(f, 1, 2000);
    assert_true(f->passing[0]);
    assert_int_equal(f->requests - before, 3);
    fx_free(f);
}

static void test_timeout(void **state)
{
    fx_t *f = fx_new();
    tr_probe_options_t o = fx_opts(f, "/slow");
    o.initially_passing = true;
    o.spec.timeout_ms = 60;
    fx_start(f, &o);
    run_until_changes(f, 1, 2000);
    assert_false(f->passing[0]);
    assert_string_equal(f->why[0], "timed out after 60ms");
    assert_true(f->at[0] >= 55 && f->at[0] < 500);
    fx_free(f);
}

static void test_tcp(void **state)
{
    fx_t *f = fx_new();
    tr_probe_options_t o = fx_opts(f, NULL);
    fx_start(f, &o);
    run_until_changes(f, 1, 2000);
    assert_true(f->passing[0]);
    assert_int_equal(f->requests, 0); /* a TCP probe sends nothing */
    /* The listener goes away: connections are refused. */
    tr_http_server_close(f->srv, true, NULL, NULL);
    f->srv = NULL;
    run_until_changes(f, 2, 2000);
    assert_false(f->passing[1]);
    assert_non_null(strstr(f->why[1], "TCP connect"));
    tr_probe_close(f->p, NULL, NULL);
    f->p = NULL;
    tr_http_client_close(f->http, NULL);
    uv_close((uv_handle_t *)&f->wake, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
}

static void test_fast_start_then_period(void **state)
{
    fx_t *f = fx_new();
    f->fail_first = 3;
    tr_probe_options_t o = fx_opts(f, "/health/ready");
    o.spec.period_ms = 10000;
    o.fast_period_ms = 20;
    fx_start(f, &o);
    run_until_changes(f, 1, 2000);
    assert_true(f->passing[0]);
    assert_int_equal(f->requests, 4);
    assert_true(f->at[0] < 500); /* not 3 periods of 10 s */
    run_for(f, 200);
    assert_int_equal(f->requests, 4); /* back to the 10 s period */
    fx_free(f);
}

static void test_initial_delay(void **state)
{
    fx_t *f = fx_new();
    tr_probe_options_t o = fx_opts(f, "/health/ready");
    o.spec.initial_delay_ms = 150;
    fx_start(f, &o);
    run_for(f, 100);
    assert_int_equal(f->requests, 0);
    run_until_changes(f, 1, 2000);
    assert_true(f->at[0] >= 145);
    fx_free(f);
}

static void on_probe_closed(void *data)
{
    (*(int *)data)++;
}

static void test_close_in_flight(void **state)
{
    fx_t *f = fx_new();
    tr_probe_options_t o = fx_opts(f, "/slow");
    o.initially_passing = true;
    fx_start(f, &o);
    while (f->requests == 0)
        uv_run(&f->loop, UV_RUN_ONCE);
    int closed = 0;
    tr_probe_close(f->p, on_probe_closed, &closed);
    tr_probe_close(f->p, on_probe_closed, &closed); /* twice is safe */
    f->p = NULL;
    run_for(f, 100);
    assert_int_equal(f->nchanges, 0);
    assert_int_equal(closed, 1);
    fx_free(f);
}

static void test_invalid(void **state)
{
    fx_t *f = fx_new();
    tr_probe_options_t o = fx_opts(f, "/x");
    tr_probe_t *p = NULL;
    o.port = 0;
    assert_int_equal(tr_probe_start(&f->loop, &o, &p), UV_EINVAL);
    o = fx_opts(f, "/x");
    o.http = NULL;
    assert_int_equal(tr_probe_start(&f->loop, &o, &p), UV_EINVAL);
    assert_null(p);
    tr_probe_spec_t s = {0};
    tr_probe_spec_defaults(&s, "/health/live");
    assert_string_equal(s.path, "/health/live");
    assert_int_equal(s.period_ms, 10000);
    assert_int_equal(s.timeout_ms, 1000);
    assert_int_equal(s.failure_threshold, 3);
    assert_int_equal(s.success_threshold, 1);
    fx_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_ready),
        cmocka_unit_test(test_http_status_classes),
        cmocka_unit_test(test_success_threshold),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_tcp),
        cmocka_unit_test(test_fast_start_then_period),
        cmocka_unit_test(test_initial_delay),
        cmocka_unit_test(test_close_in_flight),
        cmocka_unit_test(test_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
