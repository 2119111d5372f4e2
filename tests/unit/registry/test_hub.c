/* Unit tests for in-process discovery: the catalog publishing through a hub to tr_discovery. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"
#include "registry/catalog.h"
#include "trellis/discovery.h"
#include "trellis/discovery_hub.h"

static tr_discovery_hub_t *hub;

static void on_request(tr_http_req_t *req, void *data)
{
    fx_t *f = data;
    if (!tr_catalog_handle(f->cat, req)) tr_http_res_send(req, 404, NULL, NULL, 0);
}

static void cat_open(fx_t *f)
{
    char err[256] = "";
    tr_catalog_node_t node = {"node-1", "11111111-2222-4333-8444-555555555555", "127.0.0.1", "dc1"};
    store_open(f);
    if (tr_catalog_open(&f->loop, f->st, &node, &f->cat, err, sizeof(err)))
        fail_msg("catalog: %s", err);
    tr_catalog_set_hub(f->cat, hub);
}

static void cat_close(fx_t *f)
{
    tr_catalog_close(f->cat);
    f->cat = NULL;
    store_close(f);
}

static const fx_ops_t OPS = {"/tmp/tr-hub-XXXXXX", on_request, cat_open, cat_close};

static void put_ok(client_t *c, const char *target, const char *body)
{
    resp_t r = {0};
    call(c, "PUT", target, body, body ? strlen(body) : 0, &r);
    if (r.status != 200) fail_msg("PUT %s: %d %s", target, r.status, r.body.data);
    tr_buf_free(&r.body);
}

static int changes;
static void on_change(tr_discovery_watch_t *w, void *data)
{
    (void)w;
    (void)data;
    changes++;
}

static size_t count(tr_discovery_watch_t *w)
{
    const tr_endpoint_t *eps;
    return tr_discovery_endpoints(w, &eps);
}

static bool closed;
static void on_closed(tr_discovery_t *d)
{
    (void)d;
    closed = true;
}

#define REG_WEB(id, port, status)                                                                  \
    "{\"ID\":\"" id "\",\"Name\":\"web\",\"Address\":\"10.0.0.1\",\"Port\":" #port                 \
    ",\"Check\":{\"TTL\":\"30s\",\"Status\":\"" status "\"}}"

/* Same loop: a watch sees instances appear, turn critical and go, and nothing else. */
static void test_hub_same_loop(void **state)
{
    (void)state;
    hub = tr_discovery_hub_new();
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    put_ok(c, "/v1/agent/service/register", REG_WEB("web-1", 8001, "passing"));

    tr_discovery_options_t o;
    tr_discovery_options_init(&o);
    o.hub = hub;
    o.on_change = on_change;
    tr_discovery_t *d = tr_discovery_new(&f->loop, &o);
    assert_non_null(d);
    tr_discovery_watch_t *w, *other;
    assert_int_equal(tr_discovery_watch(d, "web", &w), 0);
    assert_int_equal(tr_discovery_watch(d, "nobody", &other), 0);
    RUN_UNTIL(f, tr_discovery_ready(w) && tr_discovery_ready(other));
    assert_int_equal(count(w), 1);
    assert_int_equal(count(other), 0);
    const tr_endpoint_t *eps;
    tr_discovery_endpoints(w, &eps);
    assert_string_equal(eps[0].address, "10.0.0.1");
    assert_int_equal(eps[0].port, 8001);

    put_ok(c, "/v1/agent/service/register", REG_WEB("web-2", 8002, "passing"));
    RUN_UNTIL(f, count(w) == 2);
    /* Unrelated churn does not reach the watch. */
    int before = changes;
    put_ok(c, "/v1/agent/service/register", "{\"ID\":\"db-1\",\"Name\":\"db\",\"Port\":5432}");
    fx_sleep(f, 50);
    assert_int_equal(changes, before);
    put_ok(c, "/v1/agent/check/fail/service:web-1", NULL);
    RUN_UNTIL(f, count(w) == 1);
    put_ok(c, "/v1/agent/service/deregister/web-2", NULL);
    RUN_UNTIL(f, count(w) == 0);

    closed = false;
    tr_discovery_close(d, on_closed);
    RUN_UNTIL(f, closed);
    client_close(c);
    fx_finish(f);
    tr_discovery_hub_free(hub);
    hub = NULL;
}

/* ---- another thread: the way the gateway's workers use an in-process registry */

typedef struct peer_s {
    uv_loop_t loop;
    uv_async_t stop;
    tr_discovery_t *d;
    tr_discovery_watch_t *w;
    _Atomic size_t seen;
} peer_t;

static void on_peer_change(tr_discovery_watch_t *w, void *data)
{
    peer_t *p = data;
    const tr_endpoint_t *eps;
    p->seen = tr_discovery_endpoints(w, &eps) + 1; /* +1: ready, even when empty */
}

static void on_peer_stop(uv_async_t *a)
{
    peer_t *p = a->data;
    tr_discovery_close(p->d, NULL);
    uv_close((uv_handle_t *)&p->stop, NULL);
}

static void *peer_main(void *arg)
{
    peer_t *p = arg;
    uv_run(&p->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void test_hub_other_thread(void **state)
{
    (void)state;
    hub = tr_discovery_hub_new();
    peer_t p = {0};
    uv_loop_init(&p.loop);
    uv_async_init(&p.loop, &p.stop, on_peer_stop);
    p.stop.data = &p;
    tr_discovery_options_t o;
    tr_discovery_options_init(&o);
    o.hub = hub;
    o.on_change = on_peer_change;
    o.data = &p;
    p.d = tr_discovery_new(&p.loop, &o);
    /* Watching before the registry opens: the registry answers once it attaches. */
    assert_int_equal(tr_discovery_watch(p.d, "web", &p.w), 0);
    pthread_t t;
    pthread_create(&t, NULL, peer_main, &p);

    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    RUN_UNTIL(f, p.seen == 1);
    put_ok(c, "/v1/agent/service/register", REG_WEB("web-1", 8001, "passing"));
    RUN_UNTIL(f, p.seen == 2);
    put_ok(c, "/v1/agent/service/deregister/web-1", NULL);
    RUN_UNTIL(f, p.seen == 1);

    uv_async_send(&p.stop);
    pthread_join(t, NULL);
    assert_int_equal(uv_loop_close(&p.loop), 0);
    client_close(c);
    fx_finish(f);
    tr_discovery_hub_free(hub);
    hub = NULL;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hub_same_loop),
        cmocka_unit_test(test_hub_other_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
