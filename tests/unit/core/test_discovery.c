/* Unit tests for tr_discovery against a scripted fake Consul served on the test loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trellis/discovery.h"
#include "trellis/http.h"
#include "trellis/log.h"
#include "trellis/net.h"

#define WAIT_MS  5000
#define MAX_HELD 8

/* Two instances: web-1 has no Service.Address (so Node.Address is used) and weights 3/1. */
#define BODY_TWO                                                                                   \
    "[{\"Node\":{\"Node\":\"n1\",\"Address\":\"10.0.0.1\"},"                                       \
    "\"Service\":{\"ID\":\"web-1\",\"Service\":\"web\",\"Address\":\"\",\"Port\":8080,"            \
    "\"Weights\":{\"Passing\":3,\"Warning\":1}},\"Checks\":[]},"                                   \
    "{\"Node\":{\"Node\":\"n2\",\"Address\":\"10.0.0.2\"},"                                        \
    "\"Service\":{\"ID\":\"web-2\",\"Service\":\"web\",\"Address\":\"127.0.0.2\",\"Port\":9090},"  \
    "\"Checks\":[]}]"

#define ENTRY(id, port, w)                                                                         \
    "{\"Node\":{\"Address\":\"127.0.0.1\"},\"Service\":{\"ID\":\"" id "\",\"Address\":\"\","       \
    "\"Port\":" #port ",\"Weights\":{\"Passing\":" #w ",\"Warning\":1}}}"

#define BODY_THREE                                                                                 \
    "[" ENTRY("web-1", 1001, 1) "," ENTRY("web-2", 1002, 1) "," ENTRY("web-3", 1003, 1) "]"
#define BODY_WEIGHTED "[" ENTRY("a", 1001, 3) "," ENTRY("b", 1002, 1) "]"

typedef struct fx_s {
    uv_loop_t loop;
    uv_timer_t deadline, sleep;
    bool timed_out, slept;
    /* the fake registry */
    tr_http_server_t *srv;
    struct sockaddr_storage addr;
    char addr_text[64];
    uint64_t index;
    int status; /* answer with this status instead of 200 when non-zero */
    char body[4096];
    tr_http_req_t *held[MAX_HELD];
    size_t nheld;
    int nqueries, nzero_index;
    char last_query[256];
    bool srv_done;
    /* the discovery under test */
    tr_discovery_t *d;
    tr_discovery_watch_t *w;
    int changes;
    bool closed;
    int warns, infos;
} fx_t;

static fx_t *g_fx; /* for the log sink */

/* ---- loop helpers */

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

/* ---- the fake Consul */

static void answer(fx_t *f, tr_http_req_t *req)
{
    if (f->status) {
        tr_http_res_send(req, f->status, "text/plain", "boom", 4);
        return;
    }
    char idx[32];
    snprintf(idx, sizeof(idx), "%llu", (unsigned long long)f->index);
    tr_http_res_header(req, "X-Consul-Index", idx);
    tr_http_res_send(req, 200, "application/json", f->body, strlen(f->body));
}

static void on_held_abort(tr_http_req_t *req)
{
    fx_t *f = req->data;
    for (size_t i = 0; i < f->nheld; i++) {
        if (f->held[i] == req) f->held[i] = f->held[--f->nheld];
    }
}

static void handle(tr_http_req_t *req, void *data)
{
    fx_t *f = data;
    const char *v = NULL;
    f->nqueries++;
    snprintf(f->last_query, sizeof(f->last_query), "%s", req->url);
    uint64_t idx = tr_http_query_param(req, "index", &v) ? strtoull(v, NULL, 10) : 0;
    if (idx == 0) f->nzero_index++;
    if (strcmp(req->path, "/v1/health/service/web") != 0) {
        tr_http_res_send(req, 404, NULL, "", 0);
        return;
    }
    /* A blocking query at the current index waits until the test changes something. */
    if (f->status == 0 && idx > 0 && idx >= f->index && f->nheld < MAX_HELD) {
        req->data = f;
        req->on_abort = on_held_abort;
        f->held[f->nheld++] = req;
        return;
    }
    answer(f, req);
}

/* Answers every held query with the current state. */
static void release_held(fx_t *f)
{
    while (f->nheld > 0) {
        tr_http_req_t *req = f->held[--f->nheld];
        req->on_abort = NULL;
        answer(f, req);
    }
}

static void set_body(fx_t *f, const char *body)
{
    snprintf(f->body, sizeof(f->body), "%s", body);
    f->index++;
    release_held(f);
}

static void server_start(fx_t *f)
{
    int fd;
    struct sockaddr_storage bound;
    assert_int_equal(tr_net_listen(&f->addr, 1, 64, &fd, &bound), 0);
    f->addr = bound;
    tr_net_format_addr((struct sockaddr *)&bound, f->addr_text, sizeof(f->addr_text));
    tr_http_server_options_t so = {.handler = handle, .handler_data = f};
    assert_int_equal(tr_http_server_start(&f->loop, fd, &so, &f->srv), 0);
    f->srv_done = false;
}

static void on_srv_done(void *data)
{
    ((fx_t *)data)->srv_done = true;
}

static void server_stop(fx_t *f)
{
    f->nheld = 0;
    tr_http_server_close(f->srv, true, on_srv_done, f);
    RUN_UNTIL(f, f->srv_done);
    f->srv = NULL;
}

/* ---- discovery plumbing */

static void on_change(tr_discovery_watch_t *w, void *data)
{
    ((fx_t *)data)->changes++;
}

static void on_closed(tr_discovery_t *d)
{
    g_fx->closed = true;
}

static void sink(const tr_log_record_t *r, void *data)
{
    fx_t *f = data;
    if (r->msg == NULL || strncmp(r->msg, "discovery:", 10) != 0) return;
    if (r->level == TR_LOG_WARN) f->warns++;
    if (r->level == TR_LOG_INFO) f->infos++;
}

static void fx_init(fx_t *f, const char *body)
{
    memset(f, 0, sizeof(*f));
    g_fx = f;
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->deadline);
    uv_timer_init(&f->loop, &f->sleep);
    f->deadline.data = f->sleep.data = f;
    assert_int_equal(tr_net_parse_addr("127.0.0.1:0", &f->addr), 0);
    f->index = 5;
    snprintf(f->body, sizeof(f->body), "%s", body);
    server_start(f);
    tr_log_set_sink(sink, f);

    tr_discovery_options_t o;
    tr_discovery_options_init(&o);
    o.registry = f->addr_text;
    o.wait_ms = 2000;
    o.retry_min_ms = 10;
    o.retry_max_ms = 40;
    o.on_change = on_change;
    o.data = f;
    f->d = tr_discovery_new(&f->loop, &o);
    assert_non_null(f->d);
    assert_int_equal(tr_discovery_watch(f->d, "web", &f->w), 0);
    RUN_UNTIL(f, f->changes == 1);
    assert_true(tr_discovery_ready(f->w));
}

static void fx_done(fx_t *f)
{
    tr_discovery_close(f->d, on_closed);
    tr_discovery_close(f->d, on_closed); /* closing twice is safe */
    RUN_UNTIL(f, f->closed);
    if (f->srv) server_stop(f);
    tr_log_set_sink(NULL, NULL);
    uv_close((uv_handle_t *)&f->deadline, NULL);
    uv_close((uv_handle_t *)&f->sleep, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static const tr_endpoint_t *find_ep(fx_t *f, const char *id)
{
    const tr_endpoint_t *eps;
    size_t n = tr_discovery_endpoints(f->w, &eps);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(eps[i].id, id) == 0) return &eps[i];
    }
    return NULL;
}

/* ---- watching */

static void test_initial_set_and_change(void **state)
{
    fx_t f;
    fx_init(&f, BODY_TWO);
    const tr_endpoint_t *eps;
    assert_int_equal(tr_discovery_endpoints(f.w, &eps), 2);
    const tr_endpoint_t *e1 = find_ep(&f, "web-1"), *e2 = find_ep(&f, "web-2");
    assert_non_null(e1);
    assert_non_null(e2);
    assert_string_equal(e1->address, "10.0.0.1"); /* fell back to Node.Address */
    assert_int_equal(e1->port, 8080);
    assert_int_equal(e1->weight, 3);
    assert_int_equal(e1->weight_warning, 1);
    assert_string_equal(e1->http.host, "10.0.0.1:8080");
    assert_string_equal(e2->address, "127.0.0.2");
    assert_int_equal(e2->port, 9090);
    assert_int_equal(e2->weight, 1); /* no Weights → 1 */
    assert_string_equal(tr_discovery_service(f.w), "web");

    /* The next query blocks at the answer's index. */
    RUN_UNTIL(&f, f.nheld == 1);
    assert_non_null(strstr(f.last_query, "passing"));
    assert_non_null(strstr(f.last_query, "index=5"));
    assert_non_null(strstr(f.last_query, "wait=2000ms"));

    /* A new index with the same set wakes the watch but is not a change. */
    set_body(&f, BODY_TWO);
    RUN_UNTIL(&f, f.nheld == 1 && strstr(f.last_query, "index=6") != NULL);
    assert_int_equal(f.changes, 1);

    set_body(&f, BODY_THREE);
    RUN_UNTIL(&f, f.changes == 2);
    assert_int_equal(tr_discovery_endpoints(f.w, &eps), 3);
    assert_string_equal(eps[0].id, "web-1");
    assert_string_equal(eps[0].address, "127.0.0.1");
    assert_int_equal(f.warns, 0);
    fx_done(&f);
}

static void test_keeps_set_on_500_and_recovers(void **state)
{
    fx_t f;
    fx_init(&f, BODY_TWO);
    RUN_UNTIL(&f, f.nheld == 1);
    f.status = 500;
    release_held(&f);
    int before = f.nqueries;
    RUN_UNTIL(&f, f.nqueries >= before + 4); /* retries with backoff */
    const tr_endpoint_t *eps;
    assert_int_equal(tr_discovery_endpoints(f.w, &eps), 2);
    assert_int_equal(f.warns, 1); /* once per outage */
    assert_int_equal(f.changes, 1);
    tr_endpoint_t *ep;
    assert_int_equal(tr_discovery_pick(f.w, TR_LB_ROUND_ROBIN, &ep), 0);
    tr_discovery_done(ep);

    f.status = 0;
    RUN_UNTIL(&f, f.infos >= 1);
    assert_int_equal(f.infos, 1);
    assert_int_equal(f.changes, 1); /* same set: no change */
    set_body(&f, BODY_THREE);
    RUN_UNTIL(&f, f.changes == 2);
    assert_int_equal(f.warns, 1);
    fx_done(&f);
}

static void test_keeps_set_while_unreachable(void **state)
{
    fx_t f;
    fx_init(&f, BODY_TWO);
    RUN_UNTIL(&f, f.nheld == 1);
    server_stop(&f);
    RUN_UNTIL(&f, f.warns == 1);
    run_for(&f, 200); /* several retries while the port is closed */
    assert_int_equal(f.warns, 1);
    const tr_endpoint_t *eps;
    assert_int_equal(tr_discovery_endpoints(f.w, &eps), 2);
    assert_int_equal(f.changes, 1);

    /* The registry comes back on the same port with a new set. */
    snprintf(f.body, sizeof(f.body), "%s", BODY_THREE);
    f.index = 1;
    server_start(&f);
    RUN_UNTIL(&f, f.changes == 2);
    assert_int_equal(f.infos, 1);
    assert_int_equal(tr_discovery_endpoints(f.w, &eps), 3);
    fx_done(&f);
}

/* Consul: when X-Consul-Index goes backwards, the client starts over at index 0. */
static void test_index_going_backwards_resets(void **state)
{
    fx_t f;
    fx_init(&f, BODY_TWO);
    RUN_UNTIL(&f, f.nheld == 1);
    assert_int_equal(f.nzero_index, 1);
    f.index = 2; /* registry restarted with a lower index */
    snprintf(f.body, sizeof(f.body), "%s", BODY_THREE);
    release_held(&f);
    RUN_UNTIL(&f, f.nheld == 1 && strstr(f.last_query, "index=2") != NULL);
    assert_int_equal(f.nzero_index, 2);
    assert_int_equal(f.changes, 2);
    fx_done(&f);
}

static void test_bad_json_keeps_set(void **state)
{
    fx_t f;
    fx_init(&f, BODY_TWO);
    RUN_UNTIL(&f, f.nheld == 1);
    set_body(&f, "{not json");
    RUN_UNTIL(&f, f.warns == 1);
    const tr_endpoint_t *eps;
    assert_int_equal(tr_discovery_endpoints(f.w, &eps), 2);
    set_body(&f, BODY_THREE);
    RUN_UNTIL(&f, f.changes == 2);
    fx_done(&f);
}

static void test_close_with_query_in_flight(void **state)
{
    fx_t f;
    fx_init(&f, BODY_TWO);
    RUN_UNTIL(&f, f.nheld == 1);
    tr_endpoint_t *ep;
    assert_int_equal(tr_discovery_pick(f.w, TR_LB_P2C, &ep), 0);
    int changes = f.changes;
    tr_discovery_t *d = f.d;
    fx_done(&f);
    assert_int_equal(f.changes, changes);
    (void)d;
    tr_discovery_done(ep); /* a picked endpoint outlives the discovery */
}

static void test_bad_arguments(void **state)
{
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    tr_discovery_options_t o;
    tr_discovery_options_init(&o);
    o.registry = "consul.local:8500"; /* not an IP literal */
    assert_null(tr_discovery_new(&loop, &o));
    o.registry = "127.0.0.1:1";
    tr_discovery_t *d = tr_discovery_new(&loop, &o);
    assert_non_null(d);
    assert_int_equal(tr_discovery_watch(d, "", NULL), UV_EINVAL);
    tr_discovery_watch_t *w1, *w2;
    assert_int_equal(tr_discovery_watch(d, "web", &w1), 0);
    assert_int_equal(tr_discovery_watch(d, "web", &w2), 0);
    assert_ptr_equal(w1, w2);
    tr_endpoint_t *ep;
    assert_int_equal(tr_discovery_pick(w1, TR_LB_RANDOM, &ep), TR_ENOTFOUND); /* not ready */
    tr_discovery_close(d, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- picking */

static void test_empty_set_not_found(void **state)
{
    fx_t f;
    fx_init(&f, "[]");
    const tr_endpoint_t *eps;
    assert_int_equal(tr_discovery_endpoints(f.w, &eps), 0);
    tr_endpoint_t *ep;
    assert_int_equal(tr_discovery_pick(f.w, TR_LB_ROUND_ROBIN, &ep), TR_ENOTFOUND);
    assert_int_equal(tr_discovery_pick(f.w, TR_LB_LEAST_REQUEST, &ep), TR_ENOTFOUND);
    assert_int_equal(tr_discovery_pick(f.w, TR_LB_P2C, &ep), TR_ENOTFOUND);
    assert_int_equal(tr_discovery_pick(f.w, TR_LB_RANDOM, &ep), TR_ENOTFOUND);
    fx_done(&f);
}

static void test_round_robin_cycles(void **state)
{
    fx_t f;
    fx_init(&f, BODY_THREE);
    const char *seen[9];
    for (int i = 0; i < 9; i++) {
        tr_endpoint_t *ep;
        assert_int_equal(tr_discovery_pick(f.w, TR_LB_ROUND_ROBIN, &ep), 0);
        seen[i] = ep->id;
        tr_discovery_done(ep);
    }
    assert_string_not_equal(seen[0], seen[1]);
    assert_string_not_equal(seen[1], seen[2]);
    assert_string_not_equal(seen[0], seen[2]);
    for (int i = 3; i < 9; i++)
        assert_string_equal(seen[i], seen[i - 3]);
    fx_done(&f);
}

static int count_heavy(fx_t *f, tr_lb_policy_t policy, int n)
{
    int heavy = 0;
    for (int i = 0; i < n; i++) {
        tr_endpoint_t *ep;
        assert_int_equal(tr_discovery_pick(f->w, policy, &ep), 0);
        if (strcmp(ep->id, "a") == 0) heavy++;
        tr_discovery_done(ep);
    }
    return heavy;
}

static void test_weights_skew(void **state)
{
    fx_t f;
    fx_init(&f, BODY_WEIGHTED);
    const tr_lb_policy_t policies[] = {TR_LB_ROUND_ROBIN, TR_LB_RANDOM, TR_LB_P2C};
    for (size_t p = 0; p < sizeof(policies) / sizeof(policies[0]); p++) {
        int heavy = count_heavy(&f, policies[p], 4000);
        /* weight 3 vs 1: 3000 of 4000 within ±5 % */
        if (heavy < 2850 || heavy > 3150) fail_msg("policy %zu: heavy %d of 4000", p, heavy);
    }
    fx_done(&f);
}

static void test_least_request_prefers_idle(void **state)
{
    fx_t f;
    fx_init(&f, BODY_THREE);
    tr_endpoint_t *busy[6];
    for (int i = 0; i < 6; i++) /* two active requests on web-1 and web-2 each */
        assert_int_equal(tr_discovery_pick(f.w, TR_LB_ROUND_ROBIN, &busy[i]), 0);
    for (int i = 0; i < 6; i++) {
        if (strcmp(busy[i]->id, "web-3") == 0) {
            tr_discovery_done(busy[i]);
            busy[i] = NULL;
        }
    }
    assert_int_equal(tr_discovery_active(find_ep(&f, "web-3")), 0);
    assert_int_equal(tr_discovery_active(find_ep(&f, "web-1")), 2);
    int idle = 0, n = 3000;
    for (int i = 0; i < n; i++) {
        tr_endpoint_t *ep;
        assert_int_equal(tr_discovery_pick(f.w, TR_LB_LEAST_REQUEST, &ep), 0);
        if (strcmp(ep->id, "web-3") == 0) idle++;
        tr_discovery_done(ep);
    }
    /* The idle one wins whenever it is a candidate: 2/3 of the picks, versus 1/3 at random. */
    if (idle < n * 60 / 100) fail_msg("idle endpoint got %d of %d", idle, n);
    for (int i = 0; i < 6; i++)
        tr_discovery_done(busy[i]);
    fx_done(&f);
}

static void test_p2c_never_picks_busiest(void **state)
{
    fx_t f;
    fx_init(&f, BODY_THREE);
    /* Loads 0, 1 and 2: web-3 is the busier of any pair it is in. */
    tr_endpoint_t *held[3];
    size_t nh = 0;
    for (int i = 0; i < 6 && nh < 3; i++) {
        tr_endpoint_t *ep;
        assert_int_equal(tr_discovery_pick(f.w, TR_LB_ROUND_ROBIN, &ep), 0);
        if (strcmp(ep->id, "web-3") == 0 ||
            (strcmp(ep->id, "web-2") == 0 && tr_discovery_active(ep) == 1))
            held[nh++] = ep;
        else
            tr_discovery_done(ep);
    }
    assert_int_equal(tr_discovery_active(find_ep(&f, "web-3")), 2);
    assert_int_equal(tr_discovery_active(find_ep(&f, "web-2")), 1);
    int counts[3] = {0};
    for (int i = 0; i < 2000; i++) {
        tr_endpoint_t *ep;
        assert_int_equal(tr_discovery_pick(f.w, TR_LB_P2C, &ep), 0);
        counts[ep->id[4] - '1']++;
        tr_discovery_done(ep);
    }
    assert_int_equal(counts[2], 0);
    assert_true(counts[0] > counts[1]);
    for (size_t i = 0; i < nh; i++)
        tr_discovery_done(held[i]);
    fx_done(&f);
}

/* Active counts follow an instance into the next set. */
static void test_active_survives_change(void **state)
{
    fx_t f;
    fx_init(&f, BODY_THREE);
    RUN_UNTIL(&f, f.nheld == 1);
    tr_endpoint_t *ep;
    assert_int_equal(tr_discovery_pick(f.w, TR_LB_ROUND_ROBIN, &ep), 0);
    char id[16];
    snprintf(id, sizeof(id), "%s", ep->id);
    set_body(&f, "[" ENTRY("web-1", 1001, 2) "," ENTRY("web-2", 1002, 2) "," ENTRY("web-3", 1003,
                                                                                   2) "]");
    RUN_UNTIL(&f, f.changes == 2);
    assert_int_equal(find_ep(&f, id)->weight, 2);
    assert_int_equal(tr_discovery_active(find_ep(&f, id)), 1);
    tr_discovery_done(ep); /* the old set's endpoint, still valid */
    assert_int_equal(tr_discovery_active(find_ep(&f, id)), 0);
    fx_done(&f);
}

/* ---- static endpoints, filtered picks, per-instance user memory */

static bool not_first(tr_endpoint_t *ep, void *data)
{
    return strcmp(ep->id, (const char *)data) != 0;
}

static bool none(tr_endpoint_t *ep, void *data)
{
    (void)ep;
    (void)data;
    return false;
}

static void test_static_and_filtered_picks(void **state)
{
    fx_t f;
    fx_init(&f, "[]");
    const char *addrs[] = {"127.0.0.1:9001", "127.0.0.1:9002", "[::1]:9003"};
    const uint32_t weights[] = {1, 3, 1};
    tr_discovery_watch_t *w;
    assert_int_equal(tr_discovery_watch_static(f.d, "fixed", addrs, weights, 3, &w), 0);
    assert_int_equal(tr_discovery_watch_static(f.d, "fixed", addrs, NULL, 3, NULL), TR_EEXISTS);
    const char *bad[] = {"nope"};
    assert_int_equal(tr_discovery_watch_static(f.d, "bad", bad, NULL, 1, NULL), UV_EINVAL);
    assert_true(tr_discovery_ready(w));
    const tr_endpoint_t *eps;
    assert_int_equal(tr_discovery_endpoints(w, &eps), 3);
    assert_string_equal(eps[2].address, "::1");
    assert_int_equal(eps[2].port, 9003);
    assert_int_equal(eps[1].weight, 3);

    /* The filter is honoured for every policy, and nothing acceptable is TR_ENOTFOUND. */
    for (tr_lb_policy_t p = TR_LB_ROUND_ROBIN; p <= TR_LB_P2C; p++) {
        for (int i = 0; i < 50; i++) {
            tr_endpoint_t *ep;
            assert_int_equal(tr_discovery_pick_if(w, p, not_first, "127.0.0.1:9002", &ep), 0);
            assert_string_not_equal(ep->id, "127.0.0.1:9002");
            tr_discovery_done(ep);
        }
        tr_endpoint_t *ep;
        assert_int_equal(tr_discovery_pick_if(w, p, none, NULL, &ep), TR_ENOTFOUND);
    }
    /* User memory starts zeroed and stays with the instance. */
    tr_endpoint_t *ep;
    assert_int_equal(tr_discovery_pick(w, TR_LB_ROUND_ROBIN, &ep), 0);
    unsigned char *u = tr_endpoint_user(ep);
    for (int i = 0; i < TR_ENDPOINT_USER_BYTES; i++)
        assert_int_equal(u[i], 0);
    u[0] = 42;
    const char *id = ep->id;
    tr_discovery_done(ep);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(tr_discovery_pick(w, TR_LB_ROUND_ROBIN, &ep), 0);
        if (!strcmp(ep->id, id)) assert_int_equal(((unsigned char *)tr_endpoint_user(ep))[0], 42);
        tr_discovery_done(ep);
    }
    fx_done(&f);
}

int main(void)
{
    tr_log_options_t lo = TR_LOG_OPTIONS_INIT;
    lo.format = TR_LOG_FORMAT_JSON;
    tr_log_init(&lo);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_initial_set_and_change),
        cmocka_unit_test(test_keeps_set_on_500_and_recovers),
        cmocka_unit_test(test_keeps_set_while_unreachable),
        cmocka_unit_test(test_index_going_backwards_resets),
        cmocka_unit_test(test_bad_json_keeps_set),
        cmocka_unit_test(test_close_with_query_in_flight),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_empty_set_not_found),
        cmocka_unit_test(test_round_robin_cycles),
        cmocka_unit_test(test_weights_skew),
        cmocka_unit_test(test_least_request_prefers_idle),
        cmocka_unit_test(test_p2c_never_picks_busiest),
        cmocka_unit_test(test_active_survives_change),
        cmocka_unit_test(test_static_and_filtered_picks),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tr_log_shutdown();
    return rc;
}
