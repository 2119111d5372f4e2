/* Unit tests for the health checker: HTTP and TCP checks against a server on the test's loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "registry/checker.h"
#include "trellis/http.h"
#include "trellis/net.h"

#define MAX_RESULTS 4096
#define MAX_IDS     128

typedef struct result_s {
    char id[64];
    tr_check_status_t status;
    char output[4608];
    uint64_t at; /* ms since the fixture started */
} result_t;

typedef struct fx_s {
    uv_loop_t loop;
    uv_timer_t tick; /* wakes UV_RUN_ONCE up so waits can end on time */
    tr_http_server_t *srv;
    tr_checker_t *ck;
    int port;
    uint64_t t0;
    result_t *results;
    size_t nresults;
    tr_http_req_t *slow[64];
    size_t nslow;
} fx_t;

/* ---- the test server ---- */

static void on_slow_abort(tr_http_req_t *req)
{
    fx_t *f = req->data;
    for (size_t i = 0; i < f->nslow; i++)
        if (f->slow[i] == req) f->slow[i] = f->slow[--f->nslow];
}

static void send_text(tr_http_req_t *req, int status, const char *text)
{
    tr_http_res_send(req, status, "text/plain", text, strlen(text));
}

typedef struct echo_s {
    char body[64];
    size_t len;
} echo_t;

static void on_echo_body(tr_http_req_t *req, const char *data, size_t len)
{
    echo_t *e = req->data;
    size_t n = sizeof(e->body) - 1 - e->len;
    if (n > len) n = len;
    memcpy(e->body + e->len, data, n);
    e->len += n;
}

/* Answers with what the checker sent: method, target, X-Test, Host and the body. */
static void on_echo_end(tr_http_req_t *req)
{
    echo_t *e = req->data;
    char buf[256];
    const char *x = tr_http_req_header(req, "X-Test");
    const char *host = tr_http_req_header(req, "Host");
    snprintf(buf, sizeof(buf), "%s %s %s %s %s", req->method, req->url, x ? x : "-",
             host ? host : "-", e->len ? e->body : "-");
    send_text(req, 200, buf);
}

static void on_request(tr_http_req_t *req, void *data)
{
    fx_t *f = data;
    if (strcmp(req->path, "/ok") == 0) {
        send_text(req, 200, "all good");
    } else if (strcmp(req->path, "/busy") == 0) {
        send_text(req, 429, "slow down");
    } else if (strcmp(req->path, "/fail") == 0) {
        send_text(req, 500, "boom");
    } else if (strcmp(req->path, "/echo") == 0) {
        echo_t *e = tr_http_req_alloc(req, sizeof(*e));
        memset(e, 0, sizeof(*e));
        req->data = e;
        req->on_body = on_echo_body;
        req->on_end = on_echo_end;
    } else if (strcmp(req->path, "/big") == 0) {
        static char big[10000];
        memset(big, 'b', sizeof(big));
        tr_http_res_send(req, 200, "text/plain", big, sizeof(big));
    } else if (strcmp(req->path, "/slow") == 0) {
        req->data = f;
        req->on_abort = on_slow_abort;
        if (f->nslow < 64) f->slow[f->nslow++] = req;
    } else {
        send_text(req, 404, "no");
    }
}

static void on_result(void *data, const char *id, tr_check_status_t status, const char *output)
{
    fx_t *f = data;
    assert_true(f->nresults < MAX_RESULTS);
    result_t *r = &f->results[f->nresults++];
    snprintf(r->id, sizeof(r->id), "%s", id);
    snprintf(r->output, sizeof(r->output), "%s", output);
    r->status = status;
    r->at = uv_now(&f->loop) - f->t0;
}

static void on_tick(uv_timer_t *t) {}

static fx_t *fx_new(void)
{
    fx_t *f = calloc(1, sizeof(*f));
    f->results = calloc(MAX_RESULTS, sizeof(*f->results));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->tick);
    uv_timer_start(&f->tick, on_tick, 10, 10);
    struct sockaddr_storage addr, bound;
    assert_int_equal(tr_net_parse_addr("127.0.0.1:0", &addr), 0);
    int fd;
    assert_int_equal(tr_net_listen(&addr, 1, 512, &fd, &bound), 0);
    f->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    tr_http_server_options_t opts = {0};
    opts.handler = on_request;
    opts.handler_data = f;
    assert_int_equal(tr_http_server_start(&f->loop, fd, &opts, &f->srv), 0);
    assert_int_equal(tr_checker_start(&f->loop, on_result, f, &f->ck), 0);
    uv_update_time(&f->loop);
    f->t0 = uv_now(&f->loop);
    return f;
}

static uint64_t fx_now(fx_t *f)
{
    uv_update_time(&f->loop);
    return uv_now(&f->loop) - f->t0;
}

/* Runs the loop for `ms`, or until `n` results arrived when n > 0. */
static void fx_run(fx_t *f, uint64_t ms, size_t n)
{
    uint64_t end = fx_now(f) + ms;
    while (fx_now(f) < end && (n == 0 || f->nresults < n))
        uv_run(&f->loop, UV_RUN_ONCE);
}

static void fx_finish(fx_t *f)
{
    if (f->ck) tr_checker_stop(f->ck);
    tr_http_server_close(f->srv, true, NULL, NULL);
    uv_close((uv_handle_t *)&f->tick, NULL);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f->results);
    free(f);
}

static tr_check_spec_t http_spec(const char *id, const char *url, uint64_t interval)
{
    tr_check_spec_t s = {0};
    s.id = id;
    s.kind = TR_CHECK_HTTP;
    s.target = url;
    s.interval_ms = interval;
    return s;
}

static char *url_of(fx_t *f, const char *path)
{
    static char buf[128];
    snprintf(buf, sizeof(buf), "http://127.0.0.1:%d%s", f->port, path);
    return buf;
}

/* One run of an HTTP check to `path`; checks the status and the exact output. */
static void expect_http(const char *path, tr_check_status_t status, const char *fmt)
{
    fx_t *f = fx_new();
    char url[128], want[256];
    snprintf(url, sizeof(url), "%s", url_of(f, path));
    snprintf(want, sizeof(want), fmt, url);
    tr_check_spec_t s = http_spec("web", url, 200);
    tr_checker_upsert(f->ck, &s);
    fx_run(f, 2000, 1);
    assert_int_equal(f->nresults, 1);
    assert_string_equal(f->results[0].id, "web");
    assert_int_equal(f->results[0].status, status);
    assert_string_equal(f->results[0].output, want);
    fx_finish(f);
}

static void test_http_passing(void **state)
{
    expect_http("/ok", TR_CHECK_PASSING, "HTTP GET %s: 200 OK Output: all good");
}

static void test_http_warning(void **state)
{
    expect_http("/busy", TR_CHECK_WARNING, "HTTP GET %s: 429 Too Many Requests Output: slow down");
}

static void test_http_critical(void **state)
{
    expect_http("/fail", TR_CHECK_CRITICAL, "HTTP GET %s: 500 Internal Server Error Output: boom");
    expect_http("/nope", TR_CHECK_CRITICAL, "HTTP GET %s: 404 Not Found Output: no");
}

static void test_http_method_headers_body(void **state)
{
    fx_t *f = fx_new();
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/echo?x=1#frag", f->port);
    tr_check_spec_t s = http_spec("echo", url, 300);
    s.method = "POST";
    s.headers = "{\"X-Test\": [\"v1\"], \"Accept\": [\"a\", \"b\"]}";
    s.body = "hello";
    tr_checker_upsert(f->ck, &s);
    fx_run(f, 2000, 1);
    assert_int_equal(f->nresults, 1);
    assert_int_equal(f->results[0].status, TR_CHECK_PASSING);
    char want[256];
    snprintf(want, sizeof(want),
             "HTTP POST %s: 200 OK Output: POST /echo?x=1 v1 127.0.0.1:%d hello", url, f->port);
    assert_string_equal(f->results[0].output, want);
    fx_finish(f);
}

static void test_http_name_lookup(void **state)
{
    fx_t *f = fx_new();
    char url[128];
    snprintf(url, sizeof(url), "http://localhost:%d/echo", f->port);
    tr_check_spec_t s = http_spec("named", url, 300);
    tr_checker_upsert(f->ck, &s);
    fx_run(f, 3000, 1);
    assert_int_equal(f->nresults, 1);
    assert_int_equal(f->results[0].status, TR_CHECK_PASSING);
    char want[256];
    snprintf(want, sizeof(want), "HTTP GET %s: 200 OK Output: GET /echo - localhost:%d -", url,
             f->port);
    assert_string_equal(f->results[0].output, want);
    fx_finish(f);
}

static void test_http_output_limit(void **state)
{
    fx_t *f = fx_new();
    char url[128];
    snprintf(url, sizeof(url), "%s", url_of(f, "/big"));
    tr_check_spec_t s = http_spec("big", url, 300);
    tr_checker_upsert(f->ck, &s);
    fx_run(f, 2000, 1);
    assert_int_equal(f->nresults, 1);
    assert_int_equal(f->results[0].status, TR_CHECK_PASSING);
    const char *out = strstr(f->results[0].output, "Output: ");
    assert_non_null(out);
    out += strlen("Output: ");
    assert_int_equal(strlen(out), 4096); /* only the first 4 KiB of the 10000-byte body */
    assert_int_equal(strspn(out, "b"), 4096);
    fx_finish(f);
}

static void test_http_timeout(void **state)
{
    fx_t *f = fx_new();
    char url[128], want[256];
    snprintf(url, sizeof(url), "%s", url_of(f, "/slow"));
    tr_check_spec_t s = http_spec("slow", url, 1000);
    s.timeout_ms = 150;
    tr_checker_upsert(f->ck, &s);
    fx_run(f, 2500, 1);
    assert_int_equal(f->nresults, 1);
    assert_int_equal(f->results[0].status, TR_CHECK_CRITICAL);
    snprintf(want, sizeof(want), "HTTP GET %s: timed out after 150ms", url);
    assert_string_equal(f->results[0].output, want);
    fx_finish(f);
}

/* A port nobody listens on: bind one, then close it. */
static int closed_port(void)
{
    struct sockaddr_storage addr, bound;
    assert_int_equal(tr_net_parse_addr("127.0.0.1:0", &addr), 0);
    int fd;
    assert_int_equal(tr_net_listen(&addr, 1, 1, &fd, &bound), 0);
    close(fd);
    return ntohs(((struct sockaddr_in *)&bound)->sin_port);
}

static void test_http_refused(void **state)
{
    fx_t *f = fx_new();
    char url[128], want[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/ok", closed_port());
    tr_check_spec_t s = http_spec("down", url, 200);
    tr_checker_upsert(f->ck, &s);
    fx_run(f, 2000, 1);
    assert_int_equal(f->nresults, 1);
    assert_int_equal(f->results[0].status, TR_CHECK_CRITICAL);
    snprintf(want, sizeof(want), "HTTP GET %s: connection refused", url);
    assert_string_equal(f->results[0].output, want);
    fx_finish(f);
}

static void test_http_bad_specs(void **state)
{
    fx_t *f = fx_new();
    tr_check_spec_t s = http_spec("tls", "https://127.0.0.1:1/x", 200);
    tr_checker_upsert(f->ck, &s);
    s = http_spec("url", "not a url", 200);
    tr_checker_upsert(f->ck, &s);
    s = http_spec("hdr", url_of(f, "/ok"), 200);
    s.headers = "{\"X\": 5}";
    tr_checker_upsert(f->ck, &s);
    fx_run(f, 2000, 3);
    assert_int_equal(f->nresults, 3);
    for (size_t i = 0; i < 3; i++) {
        result_t *r = &f->results[i];
        assert_int_equal(r->status, TR_CHECK_CRITICAL);
        if (strcmp(r->id, "tls") == 0)
            assert_string_equal(r->output, "HTTPS checks are not supported yet");
        else if (strcmp(r->id, "url") == 0)
            assert_non_null(strstr(r->output, "invalid URL"));
        else
            assert_non_null(strstr(r->output, "invalid headers"));
    }
    fx_finish(f);
}

static void test_tcp(void **state)
{
    fx_t *f = fx_new();
    char up[64], down[64], want[128];
    snprintf(up, sizeof(up), "127.0.0.1:%d", f->port);
    snprintf(down, sizeof(down), "127.0.0.1:%d", closed_port());
    tr_check_spec_t s = {.id = "up", .kind = TR_CHECK_TCP, .target = up, .interval_ms = 200};
    tr_checker_upsert(f->ck, &s);
    s.id = "down";
    s.target = down;
    tr_checker_upsert(f->ck, &s);
    fx_run(f, 2000, 2);
    assert_int_equal(f->nresults, 2);
    for (size_t i = 0; i < 2; i++) {
        result_t *r = &f->results[i];
        if (strcmp(r->id, "up") == 0) {
            assert_int_equal(r->status, TR_CHECK_PASSING);
            snprintf(want, sizeof(want), "TCP connect %s: Success", up);
        } else {
            assert_int_equal(r->status, TR_CHECK_CRITICAL);
            snprintf(want, sizeof(want), "TCP connect %s: connection refused", down);
        }
        assert_string_equal(r->output, want);
    }
    fx_finish(f);
}

static size_t count(fx_t *f, size_t from, tr_check_status_t status)
{
    size_t n = 0;
    for (size_t i = from; i < f->nresults; i++)
        n += f->results[i].status == status;
    return n;
}

static void test_upsert_replaces(void **state)
{
    fx_t *f = fx_new();
    tr_check_spec_t s = http_spec("web", url_of(f, "/fail"), 60000);
    s.timeout_ms = 1000;
    tr_checker_upsert(f->ck, &s);
    fx_run(f, 100, 0);
    /* The same id with a short interval and a new URL: the new schedule applies at once. */
    s = http_spec("web", url_of(f, "/ok"), 50);
    tr_checker_upsert(f->ck, &s);
    fx_run(f, 600, 0);
    assert_true(f->nresults >= 5);
    assert_int_equal(count(f, 0, TR_CHECK_CRITICAL), 0);
    /* Back to failing: every result after the upsert call is the new spec's. */
    s = http_spec("web", url_of(f, "/fail"), 50);
    tr_checker_upsert(f->ck, &s);
    size_t mark = f->nresults;
    fx_run(f, 400, 0);
    assert_true(f->nresults >= mark + 3);
    assert_int_equal(count(f, mark, TR_CHECK_PASSING), 0);
    fx_finish(f);
}

static void test_remove_stops_results(void **state)
{
    fx_t *f = fx_new();
    tr_check_spec_t s = http_spec("web", url_of(f, "/ok"), 30);
    tr_checker_upsert(f->ck, &s);
    s = http_spec("slow", url_of(f, "/slow"), 100);
    s.timeout_ms = 400;
    tr_checker_upsert(f->ck, &s);
    fx_run(f, 2000, 3);
    assert_true(f->nresults >= 3);
    tr_checker_remove(f->ck, "web");
    tr_checker_remove(f->ck, "slow"); /* in flight now: its timeout must never be reported */
    tr_checker_remove(f->ck, "unknown");
    size_t mark = f->nresults;
    fx_run(f, 700, 0);
    assert_int_equal(f->nresults, mark);
    assert_int_equal(count(f, 0, TR_CHECK_CRITICAL), 0);
    fx_finish(f);
}

static void test_first_runs_spread(void **state)
{
    assert_int_equal(tr__checker_first_delay("a", 0), 0);
    assert_int_equal(tr__checker_first_delay("svc:1", 1000),
                     tr__checker_first_delay("svc:1", 1000));
    fx_t *f = fx_new();
    char target[64], id[MAX_IDS][16];
    snprintf(target, sizeof(target), "127.0.0.1:%d", f->port);
    for (int i = 0; i < 100; i++) {
        snprintf(id[i], sizeof(id[i]), "svc:%d", i);
        tr_check_spec_t s = {
            .id = id[i], .kind = TR_CHECK_TCP, .target = target, .interval_ms = 1000};
        tr_checker_upsert(f->ck, &s);
    }
    fx_run(f, 1100, 100);
    assert_int_equal(f->nresults, 100); /* each ran once, within its interval */
    size_t early = 0, late = 0;
    for (size_t i = 0; i < f->nresults; i++) {
        assert_int_equal(f->results[i].status, TR_CHECK_PASSING);
        early += f->results[i].at < 50;
        late += f->results[i].at >= 500;
    }
    assert_true(early < 20);
    assert_true(late > 20);
    fx_finish(f);
}

/* Many checks on one endpoint: every one runs within its first interval, none is lost. */
static void test_many_checks(void **state)
{
    fx_t *f = fx_new();
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", f->port);
    static char ids[2000][16];
    for (int i = 0; i < 2000; i++) {
        snprintf(ids[i], sizeof(ids[i]), "tcp:%d", i);
        tr_check_spec_t s = {
            .id = ids[i], .kind = TR_CHECK_TCP, .target = target, .interval_ms = 1000};
        tr_checker_upsert(f->ck, &s);
    }
    fx_run(f, 1150, 0);
    static bool seen[2000];
    memset(seen, 0, sizeof(seen));
    for (size_t i = 0; i < f->nresults; i++) {
        int k = atoi(f->results[i].id + 4);
        assert_true(k >= 0 && k < 2000);
        seen[k] = true;
    }
    for (int i = 0; i < 2000; i++)
        assert_true(seen[i]);
    assert_int_equal(count(f, 0, TR_CHECK_PASSING), f->nresults);
    fx_finish(f);
}

static void test_stop_in_flight(void **state)
{
    fx_t *f = fx_new();
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", f->port);
    for (int i = 0; i < 20; i++) {
        char id[16];
        snprintf(id, sizeof(id), "slow%d", i);
        tr_check_spec_t s = http_spec(id, url_of(f, "/slow"), 50);
        s.timeout_ms = 3000;
        tr_checker_upsert(f->ck, &s);
    }
    tr_check_spec_t s = http_spec("named", "http://localhost:1/", 20);
    tr_checker_upsert(f->ck, &s);
    fx_run(f, 200, 0);
    assert_true(f->nslow > 0);
    size_t mark = f->nresults;
    uint64_t t = fx_now(f);
    tr_checker_stop(f->ck);
    f->ck = NULL;
    assert_true(fx_now(f) - t < 1000);
    fx_run(f, 100, 0);
    assert_int_equal(f->nresults, mark);
    fx_finish(f);
}

static void test_stop_right_away(void **state)
{
    fx_t *f = fx_new();
    tr_check_spec_t s = http_spec("web", url_of(f, "/ok"), 10);
    tr_checker_upsert(f->ck, &s);
    fx_finish(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_passing),      cmocka_unit_test(test_http_warning),
        cmocka_unit_test(test_http_critical),     cmocka_unit_test(test_http_method_headers_body),
        cmocka_unit_test(test_http_name_lookup),  cmocka_unit_test(test_http_output_limit),
        cmocka_unit_test(test_http_timeout),      cmocka_unit_test(test_http_refused),
        cmocka_unit_test(test_http_bad_specs),    cmocka_unit_test(test_tcp),
        cmocka_unit_test(test_upsert_replaces),   cmocka_unit_test(test_remove_stops_results),
        cmocka_unit_test(test_first_runs_spread), cmocka_unit_test(test_many_checks),
        cmocka_unit_test(test_stop_in_flight),    cmocka_unit_test(test_stop_right_away),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
