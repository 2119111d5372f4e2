/* Unit tests for the JWKS fetcher against a fake issuer served on the test loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/jwks.h"
#include "trellis/error.h"
#include "trellis/http.h"
#include "trellis/log.h"
#include "trellis/net.h"

#define WAIT_MS 5000

/* Two oct keys (32-byte secrets, base64url). */
#define KEY_A  "{\"kty\":\"oct\",\"kid\":\"a\",\"alg\":\"HS256\",\"k\":\"" SECRET "\"}"
#define KEY_B  "{\"kty\":\"oct\",\"kid\":\"b\",\"alg\":\"HS256\",\"k\":\"" SECRET "\"}"
#define SECRET "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"
#define DOC_A  "{\"keys\":[" KEY_A "]}"
#define DOC_AB "{\"keys\":[" KEY_A "," KEY_B "]}"

typedef struct fx_s {
    uv_loop_t loop;
    uv_timer_t deadline, sleep;
    bool timed_out, slept;
    tr_http_server_t *srv;
    struct sockaddr_storage addr;
    char addr_text[64];
    char url[128];
    int status;
    bool hold; /* never answer */
    tr_http_req_t *held;
    char body[2048];
    int requests;
    char last_path[128];
    bool srv_done;
    tr_jwks_t *j;
    int published;
    bool has_b;
    bool closed;
    int warns;
} fx_t;

static fx_t *g_fx; /* for on_closed */

static void on_deadline(uv_timer_t *t)
{
    ((fx_t *)t->data)->timed_out = true;
}

#define RUN_UNTIL(f, cond)                                                                         \
    do {                                                                                           \
        (f)->timed_out = false;                                                                    \
        uv_timer_start(&(f)->deadline, on_deadline, WAIT_MS, 0);                                   \
        while (!(cond) && !(f)->timed_out)                                                         \
            uv_run(&(f)->loop, UV_RUN_ONCE);                                                       \
        uv_timer_stop(&(f)->deadline);                                                             \
        if ((f)->timed_out) fail_msg("timed out waiting for: %s", #cond);                          \
    } while (0)

static void on_slept(uv_timer_t *t)
{
    ((fx_t *)t->data)->slept = true;
}

static void run_for(fx_t *f, uint64_t ms)
{
    f->slept = false;
    uv_timer_start(&f->sleep, on_slept, ms, 0);
    while (!f->slept)
        uv_run(&f->loop, UV_RUN_ONCE);
}

static void on_held_abort(tr_http_req_t *req)
{
    ((fx_t *)req->data)->held = NULL;
}

static void handle(tr_http_req_t *req, void *data)
{
    fx_t *f = data;
    f->requests++;
    snprintf(f->last_path, sizeof(f->last_path), "%s", req->url);
    if (f->hold) {
        req->data = f;
        req->on_abort = on_held_abort;
        f->held = req;
        return;
    }
    if (f->status) {
        tr_http_res_send(req, f->status, "text/plain", "boom", 4);
        return;
    }
    tr_http_res_send(req, 200, "application/json", f->body, strlen(f->body));
}

static void on_srv_done(void *data)
{
    ((fx_t *)data)->srv_done = true;
}

static void on_keys(tr_jwt_keyset_t *set, void *data)
{
    fx_t *f = data;
    f->published++;
    f->has_b = tr_jwt_keyset_has_kid(set, "b");
}

static void on_closed(tr_jwks_t *j)
{
    g_fx->closed = true;
}

static void sink(const tr_log_record_t *r, void *data)
{
    fx_t *f = data;
    if (r->msg && strncmp(r->msg, "jwks:", 5) == 0 && r->level == TR_LOG_WARN) f->warns++;
}

static void fx_init(fx_t *f)
{
    memset(f, 0, sizeof(*f));
    g_fx = f;
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->deadline);
    uv_timer_init(&f->loop, &f->sleep);
    f->deadline.data = f->sleep.data = f;
    assert_int_equal(tr_net_parse_addr("127.0.0.1:0", &f->addr), 0);
    int fd;
    struct sockaddr_storage bound;
    assert_int_equal(tr_net_listen(&f->addr, 1, 64, &fd, &bound), 0);
    tr_net_format_addr((struct sockaddr *)&bound, f->addr_text, sizeof(f->addr_text));
    snprintf(f->url, sizeof(f->url), "http://%s/.well-known/jwks.json", f->addr_text);
    tr_http_server_options_t so = {.handler = handle, .handler_data = f};
    assert_int_equal(tr_http_server_start(&f->loop, fd, &so, &f->srv), 0);
    snprintf(f->body, sizeof(f->body), "%s", DOC_A);
    tr_log_set_sink(sink, f);
}

static void fx_start(fx_t *f, uint64_t refresh_ms, uint64_t min_interval_ms)
{
    tr_jwks_options_t o;
    tr_jwks_options_init(&o);
    o.url = f->url;
    o.refresh_ms = refresh_ms;
    o.retry_ms = 20;
    o.min_interval_ms = min_interval_ms;
    o.timeout_ms = 1000;
    o.on_keys = on_keys;
    o.data = f;
    assert_int_equal(tr_jwks_start(&f->loop, &o, &f->j), 0);
}

static void fx_done(fx_t *f)
{
    tr_jwks_close(f->j, on_closed);
    tr_jwks_close(f->j, on_closed); /* closing twice is safe */
    RUN_UNTIL(f, f->closed);
    tr_http_server_close(f->srv, true, on_srv_done, f);
    RUN_UNTIL(f, f->srv_done);
    tr_log_set_sink(NULL, NULL);
    uv_close((uv_handle_t *)&f->deadline, NULL);
    uv_close((uv_handle_t *)&f->sleep, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static void test_fetch_and_periodic_refresh(void **state)
{
    fx_t f;
    fx_init(&f);
    fx_start(&f, 50, 10);
    RUN_UNTIL(&f, f.published == 1);
    assert_string_equal(f.last_path, "/.well-known/jwks.json");
    tr_jwt_keyset_t *k = tr_jwks_keys(f.j);
    assert_non_null(k);
    assert_true(tr_jwt_keyset_has_kid(k, "a"));
    tr_jwt_keyset_release(k);
    /* The same document again is fetched but not published again. */
    RUN_UNTIL(&f, f.requests >= 3);
    assert_int_equal(f.published, 1);
    /* A rotated document is published by the next periodic fetch. */
    snprintf(f.body, sizeof(f.body), "%s", DOC_AB);
    RUN_UNTIL(&f, f.published == 2);
    assert_true(f.has_b);
    assert_int_equal(f.warns, 0);
    fx_done(&f);
}

static void test_failures_keep_last_keys(void **state)
{
    fx_t f;
    fx_init(&f);
    fx_start(&f, 30, 10);
    RUN_UNTIL(&f, f.published == 1);
    f.status = 500;
    RUN_UNTIL(&f, f.warns >= 2);
    f.status = 0;
    snprintf(f.body, sizeof(f.body), "{\"keys\":[]}"); /* no usable key: also a failure */
    int w = f.warns;
    RUN_UNTIL(&f, f.warns > w);
    snprintf(f.body, sizeof(f.body), "not json");
    w = f.warns;
    RUN_UNTIL(&f, f.warns > w);
    tr_jwt_keyset_t *k = tr_jwks_keys(f.j);
    assert_true(tr_jwt_keyset_has_kid(k, "a"));
    tr_jwt_keyset_release(k);
    assert_int_equal(f.published, 1);
    uint64_t fetches, failures;
    tr_jwks_stats(f.j, &fetches, &failures);
    assert_true(failures >= 4);
    assert_true(fetches > failures);
    /* Recovery publishes the new document. */
    snprintf(f.body, sizeof(f.body), "%s", DOC_AB);
    RUN_UNTIL(&f, f.published == 2);
    fx_done(&f);
}

static void test_on_demand_refresh_is_rate_limited(void **state)
{
    fx_t f;
    fx_init(&f);
    fx_start(&f, 60000, 200);
    RUN_UNTIL(&f, f.published == 1);
    snprintf(f.body, sizeof(f.body), "%s", DOC_AB);
    uint64_t t0 = uv_now(&f.loop);
    for (int i = 0; i < 5; i++)
        tr_jwks_refresh(f.j);
    run_for(&f, 50);
    assert_int_equal(f.requests, 1); /* the first fetch was just now */
    RUN_UNTIL(&f, f.published == 2);
    assert_true(uv_now(&f.loop) - t0 >= 140);
    assert_int_equal(f.requests, 2); /* five requests merged into one fetch */
    run_for(&f, 250);
    assert_int_equal(f.requests, 2);
    /* Past the interval, a request fetches at once. */
    uint64_t t1 = uv_now(&f.loop);
    tr_jwks_refresh(f.j);
    RUN_UNTIL(&f, f.requests == 3);
    assert_true(uv_now(&f.loop) - t1 < 100);
    fx_done(&f);
}

static void test_timeout_and_close_in_flight(void **state)
{
    fx_t f;
    fx_init(&f);
    f.hold = true;
    tr_jwks_options_t o;
    tr_jwks_options_init(&o);
    o.url = f.url;
    o.timeout_ms = 50;
    o.retry_ms = 10000;
    o.min_interval_ms = 10;
    o.on_keys = on_keys;
    o.data = &f;
    assert_int_equal(tr_jwks_start(&f.loop, &o, &f.j), 0);
    RUN_UNTIL(&f, f.warns == 1);
    assert_null(tr_jwks_keys(f.j));
    /* Close while a fetch is in flight: it is canceled, no key is published. */
    tr_jwks_refresh(f.j);
    RUN_UNTIL(&f, f.requests == 2);
    fx_done(&f);
    assert_int_equal(f.published, 0);
}

static void test_close_while_resolving(void **state)
{
    fx_t f;
    fx_init(&f);
    snprintf(f.url, sizeof(f.url), "http://localhost:1/jwks");
    fx_start(&f, 60000, 10);
    fx_done(&f);
    assert_int_equal(f.published, 0);
}

static void test_bad_urls(void **state)
{
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    tr_jwks_options_t o;
    tr_jwks_options_init(&o);
    o.on_keys = on_keys;
    static const struct {
        const char *url;
        int err;
    } cases[] = {
        {"https://idp.example.com/jwks", TR_EUNSUPPORTED},
        {"ftp://idp/jwks", TR_EUNSUPPORTED},
        {"idp/jwks", UV_EINVAL},
        {"http://", UV_EINVAL},
        {"http:///jwks", UV_EINVAL},
        {"http://idp:/jwks", UV_EINVAL},
        {"http://idp:99999/jwks", UV_EINVAL},
        {"http://idp:8x/jwks", UV_EINVAL},
        {"http://user@idp/jwks", UV_EINVAL},
        {"http://[::1/jwks", UV_EINVAL},
        {"http://[::1]x/jwks", UV_EINVAL},
        {"http://[zz]/jwks", UV_EINVAL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tr_jwks_t *j = (tr_jwks_t *)1;
        o.url = cases[i].url;
        if (tr_jwks_start(&loop, &o, &j) != cases[i].err) fail_msg("url %s", cases[i].url);
        assert_null(j);
    }
    tr_jwks_t *j = NULL;
    o.url = "http://127.0.0.1:1/jwks";
    o.on_keys = NULL;
    assert_int_equal(tr_jwks_start(&loop, &o, &j), UV_EINVAL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fetch_and_periodic_refresh),
        cmocka_unit_test(test_failures_keep_last_keys),
        cmocka_unit_test(test_on_demand_refresh_is_rate_limited),
        cmocka_unit_test(test_timeout_and_close_in_flight),
        cmocka_unit_test(test_close_while_resolving),
        cmocka_unit_test(test_bad_urls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
