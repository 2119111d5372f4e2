/* Unit tests for the agent, catalog and health endpoints, over the real HTTP server. */
#include <arpa/inet.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fixture.h"
#include "registry/catalog.h"
#include "trellis/http.h"
#include "trellis/metrics.h"
#include "trellis/net.h"

/* ---- the server side: the catalog, then 404 like the registry's router */

static void on_request(tr_http_req_t *req, void *data)
{
    fx_t *f = data;
    if (!tr_catalog_handle(f->cat, req)) tr_http_res_send(req, 404, NULL, NULL, 0);
}

static void cat_open(fx_t *f)
{
    char err[256] = "";
    tr_catalog_node_t node = {.name = "node-1",
                              .id = "11111111-2222-4333-8444-555555555555",
                              .address = "127.0.0.1",
                              .datacenter = "dc1"};
    store_open(f);
    if (tr_catalog_open(&f->loop, f->st, &node, &f->cat, err, sizeof(err)))
        fail_msg("catalog: %s", err);
}

static void cat_close(fx_t *f)
{
    tr_catalog_close(f->cat);
    f->cat = NULL;
    store_close(f);
}

/* ---- fixture */

static const fx_ops_t OPS = {"/tmp/tr-cat-XXXXXX", on_request, cat_open, cat_close};

/* ---- tests */

/* ---- helpers */

static int put(client_t *c, const char *target, const char *body, resp_t *r)
{
    call(c, "PUT", target, body, body ? strlen(body) : 0, r);
    return r->status;
}

static void put_ok(client_t *c, const char *target, const char *body)
{
    resp_t r = {0};
    put(c, target, body, &r);
    if (r.status != 200) fail_msg("PUT %s: %d %s", target, r.status, r.body.data);
    tr_buf_free(&r.body);
}

/* The status of check `id` from /v1/agent/checks (static buffer). */
static const char *check_status(client_t *c, const char *id, char *output, size_t n)
{
    static char st[32];
    json_t *all = get_json(c, "/v1/agent/checks", NULL);
    json_t *ck = json_object_get(all, id);
    if (!ck) fail_msg("no check %s", id);
    snprintf(st, sizeof(st), "%s", json_str(ck, "Status"));
    if (output) snprintf(output, n, "%s", json_str(ck, "Output"));
    json_decref(all);
    return st;
}

static size_t healthy(client_t *c, const char *name)
{
    char target[256];
    snprintf(target, sizeof(target), "/v1/health/service/%s?passing", name);
    json_t *arr = get_json(c, target, NULL);
    size_t n = json_array_size(arr);
    json_decref(arr);
    return n;
}

static const char WEB[] = "{\"Name\":\"web\",\"ID\":\"web-1\",\"Tags\":[\"a\",\"b\"],"
                          "\"Address\":\"10.0.0.1\",\"Port\":8080,\"Meta\":{\"v\":\"1\"},"
                          "\"Check\":{\"TTL\":\"10s\",\"Notes\":\"n\"},\"Unknown\":1}";

/* ---- tests */

static void test_register_shapes(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    put_ok(c, "/v1/agent/service/register", WEB);

    json_t *all = get_json(c, "/v1/agent/services", NULL);
    json_t *s = json_object_get(all, "web-1");
    assert_non_null(s);
    assert_string_equal(json_str(s, "ID"), "web-1");
    assert_string_equal(json_str(s, "Service"), "web");
    assert_string_equal(json_str(s, "Address"), "10.0.0.1");
    assert_string_equal(json_str(s, "Datacenter"), "dc1");
    assert_int_equal(jint(s, "Port"), 8080);
    assert_int_equal(json_array_size(json_object_get(s, "Tags")), 2);
    assert_string_equal(json_str(json_object_get(s, "Meta"), "v"), "1");
    assert_int_equal(jint(json_object_get(s, "Weights"), "Passing"), 1);
    assert_int_equal(jint(json_object_get(s, "Weights"), "Warning"), 1);
    assert_true(json_is_false(json_object_get(s, "EnableTagOverride")));
    json_decref(all);
    json_t *one = get_json(c, "/v1/agent/service/web-1", NULL);
    assert_string_equal(json_str(one, "Service"), "web");
    json_decref(one);

    all = get_json(c, "/v1/agent/checks", NULL);
    json_t *ck = json_object_get(all, "service:web-1");
    assert_non_null(ck);
    assert_string_equal(json_str(ck, "Node"), "node-1");
    assert_string_equal(json_str(ck, "CheckID"), "service:web-1");
    assert_string_equal(json_str(ck, "Name"), "Service 'web' check");
    assert_string_equal(json_str(ck, "Status"), "critical"); /* Consul's initial status */
    assert_string_equal(json_str(ck, "Notes"), "n");
    assert_string_equal(json_str(ck, "ServiceID"), "web-1");
    assert_string_equal(json_str(ck, "ServiceName"), "web");
    assert_string_equal(json_str(ck, "Type"), "ttl");
    assert_int_equal(json_array_size(json_object_get(ck, "ServiceTags")), 2);
    assert_true(jint(ck, "ModifyIndex") >= jint(ck, "CreateIndex"));
    json_decref(all);

    uint64_t idx;
    json_t *arr = get_json(c, "/v1/catalog/service/web", &idx);
    assert_true(idx > 0);
    assert_int_equal(json_array_size(arr), 1);
    json_t *cs = json_array_get(arr, 0);
    assert_string_equal(json_str(cs, "ID"), "11111111-2222-4333-8444-555555555555");
    assert_string_equal(json_str(cs, "Node"), "node-1");
    assert_string_equal(json_str(cs, "Address"), "127.0.0.1");
    assert_string_equal(json_str(cs, "Datacenter"), "dc1");
    assert_string_equal(json_str(cs, "ServiceID"), "web-1");
    assert_string_equal(json_str(cs, "ServiceName"), "web");
    assert_string_equal(json_str(cs, "ServiceAddress"), "10.0.0.1");
    assert_int_equal(jint(cs, "ServicePort"), 8080);
    assert_non_null(json_object_get(cs, "TaggedAddresses"));
    assert_non_null(json_object_get(cs, "NodeMeta"));
    assert_non_null(json_object_get(cs, "ServiceMeta"));
    assert_int_equal(jint(json_object_get(cs, "ServiceWeights"), "Passing"), 1);
    assert_true(json_is_boolean(json_object_get(cs, "ServiceEnableTagOverride")));
    assert_int_equal(jint(cs, "ModifyIndex"), idx);
    json_decref(arr);

    arr = get_json(c, "/v1/catalog/service/web?tag=b", NULL);
    assert_int_equal(json_array_size(arr), 1);
    json_decref(arr);
    arr = get_json(c, "/v1/catalog/service/web?tag=zzz", NULL);
    assert_int_equal(json_array_size(arr), 0);
    json_decref(arr);
    arr = get_json(c, "/v1/health/service/web?tag=a&tag=b", NULL);
    assert_int_equal(json_array_size(arr), 1);
    json_decref(arr);
    arr = get_json(c, "/v1/health/service/web?tag=a&tag=zzz", NULL);
    assert_int_equal(json_array_size(arr), 0);
    json_decref(arr);

    arr = get_json(c, "/v1/health/service/web", NULL);
    assert_int_equal(json_array_size(arr), 1);
    json_t *e = json_array_get(arr, 0);
    json_t *node = json_object_get(e, "Node");
    assert_string_equal(json_str(node, "Node"), "node-1");
    assert_string_equal(json_str(node, "ID"), "11111111-2222-4333-8444-555555555555");
    assert_string_equal(json_str(node, "Datacenter"), "dc1");
    assert_non_null(json_object_get(node, "Meta"));
    assert_string_equal(json_str(json_object_get(e, "Service"), "ID"), "web-1");
    json_t *checks = json_object_get(e, "Checks");
    assert_int_equal(json_array_size(checks), 2);
    assert_string_equal(json_str(json_array_get(checks, 0), "CheckID"), "serfHealth");
    assert_string_equal(json_str(json_array_get(checks, 0), "Status"), "passing");
    assert_string_equal(json_str(json_array_get(checks, 1), "CheckID"), "service:web-1");
    json_decref(arr);

    json_t *svcs = get_json(c, "/v1/catalog/services", NULL);
    assert_int_equal(json_array_size(json_object_get(svcs, "web")), 2);
    json_decref(svcs);
    arr = get_json(c, "/v1/catalog/nodes", NULL);
    assert_string_equal(json_str(json_array_get(arr, 0), "Node"), "node-1");
    json_decref(arr);
    json_t *n = get_json(c, "/v1/catalog/node/node-1", NULL);
    assert_non_null(json_object_get(json_object_get(n, "Services"), "web-1"));
    json_decref(n);
    arr = get_json(c, "/v1/health/checks/web", NULL);
    assert_int_equal(json_array_size(arr), 1);
    json_decref(arr);
    arr = get_json(c, "/v1/health/state/critical", NULL);
    assert_int_equal(json_array_size(arr), 1);
    json_decref(arr);
    arr = get_json(c, "/v1/health/state/any", NULL);
    assert_int_equal(json_array_size(arr), 2);
    json_decref(arr);
    assert_int_equal(metric("trellis_registry_services"), 1);
    assert_int_equal(metric("trellis_registry_checks{status=\"critical\"}"), 1);
    fx_finish(f);
}

static void test_passing_filter_and_ttl_updates(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    put_ok(c, "/v1/agent/service/register", WEB);
    assert_int_equal(healthy(c, "web"), 0);
    put_ok(c, "/v1/agent/check/pass/service:web-1?note=all%20good", NULL);
    char out[128];
    assert_string_equal(check_status(c, "service:web-1", out, sizeof(out)), "passing");
    assert_string_equal(out, "all good");
    assert_int_equal(healthy(c, "web"), 1);
    put_ok(c, "/v1/agent/check/warn/service:web-1", NULL);
    assert_string_equal(check_status(c, "service:web-1", NULL, 0), "warning");
    assert_int_equal(healthy(c, "web"), 0);
    put_ok(c, "/v1/agent/check/update/service:web-1",
           "{\"Status\":\"passing\",\"Output\":\"fine\"}");
    assert_string_equal(check_status(c, "service:web-1", out, sizeof(out)), "passing");
    assert_string_equal(out, "fine");
    put_ok(c, "/v1/agent/check/fail/service:web-1", NULL);
    assert_int_equal(healthy(c, "web"), 0);

    /* An unchanged status and output takes no new index. */
    uint64_t before, after;
    json_decref(get_json(c, "/v1/health/service/web", &before));
    put_ok(c, "/v1/agent/check/fail/service:web-1", NULL);
    json_decref(get_json(c, "/v1/health/service/web", &after));
    assert_int_equal(before, after);

    resp_t r = {0};
    assert_int_equal(put(c, "/v1/agent/check/pass/nope", NULL, &r), 404);
    assert_int_equal(put(c, "/v1/agent/check/update/service:web-1", "{\"Status\":\"ok\"}", &r),
                     400);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_check_ids_replace_deregister(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    put_ok(c, "/v1/agent/service/register",
           "{\"name\":\"api\",\"checks\":[{\"ttl\":\"10s\"},{\"TTL\":\"5s\",\"Status\":\"passing\"}"
           "]}");
    json_t *all = get_json(c, "/v1/agent/checks", NULL);
    assert_int_equal(json_object_size(all), 2);
    assert_non_null(json_object_get(all, "service:api:1"));
    assert_string_equal(json_str(json_object_get(all, "service:api:2"), "Status"), "passing");
    json_decref(all);

    put_ok(c, "/v1/agent/service/register",
           "{\"Name\":\"api\",\"Port\":9,\"Check\":{\"TTL\":\"10s\"}}");
    all = get_json(c, "/v1/agent/checks", NULL);
    assert_int_equal(json_object_size(all), 1);
    assert_non_null(json_object_get(all, "service:api"));
    json_decref(all);
    all = get_json(c, "/v1/agent/services", NULL);
    assert_int_equal(jint(json_object_get(all, "api"), "Port"), 9);
    json_decref(all);

    /* A standalone check on the service, then deregistering everything. */
    put_ok(c, "/v1/agent/check/register",
           "{\"Name\":\"disk\",\"ServiceID\":\"api\",\"TTL\":\"1m\"}");
    all = get_json(c, "/v1/health/checks/api", NULL);
    assert_int_equal(json_array_size(all), 2);
    json_decref(all);
    put_ok(c, "/v1/agent/check/deregister/disk", NULL);
    put_ok(c, "/v1/agent/service/deregister/api", NULL);
    all = get_json(c, "/v1/agent/services", NULL);
    assert_int_equal(json_object_size(all), 0);
    json_decref(all);
    all = get_json(c, "/v1/agent/checks", NULL);
    assert_int_equal(json_object_size(all), 0);
    json_decref(all);
    resp_t r = {0};
    assert_int_equal(put(c, "/v1/agent/service/deregister/api", NULL, &r), 404);
    assert_string_equal(hdr(&r, "Content-Type"), "application/problem+json");
    assert_int_equal(put(c, "/v1/agent/check/deregister/disk", NULL, &r), 404);
    call(c, "GET", "/v1/agent/service/api", NULL, 0, &r);
    assert_int_equal(r.status, 404);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_maintenance(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    put_ok(c, "/v1/agent/service/register", WEB);
    put_ok(c, "/v1/agent/check/pass/service:web-1", NULL);
    assert_int_equal(healthy(c, "web"), 1);
    put_ok(c, "/v1/agent/service/maintenance/web-1?enable=true&reason=upgrade", NULL);
    json_t *all = get_json(c, "/v1/agent/checks", NULL);
    json_t *m = json_object_get(all, "_service_maintenance:web-1");
    assert_non_null(m);
    assert_string_equal(json_str(m, "Status"), "critical");
    assert_string_equal(json_str(m, "Notes"), "upgrade");
    assert_string_equal(json_str(m, "ServiceID"), "web-1");
    json_decref(all);
    assert_int_equal(healthy(c, "web"), 0);
    put_ok(c, "/v1/agent/service/maintenance/web-1?enable=false", NULL);
    assert_int_equal(healthy(c, "web"), 1);
    resp_t r = {0};
    assert_int_equal(put(c, "/v1/agent/service/maintenance/web-1", NULL, &r), 400);
    assert_int_equal(put(c, "/v1/agent/service/maintenance/nope?enable=true", NULL, &r), 404);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_blocking_scoped(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0), *w = client_open(f, 1);
    put_ok(c, "/v1/agent/service/register", "{\"Name\":\"a\",\"Check\":{\"TTL\":\"10s\"}}");
    put_ok(c, "/v1/agent/service/register", "{\"Name\":\"b\",\"Check\":{\"TTL\":\"10s\"}}");
    uint64_t ia;
    json_decref(get_json(c, "/v1/health/service/a", &ia));
    char target[128];
    snprintf(target, sizeof(target), "/v1/health/service/a?index=%llu&wait=5s",
             (unsigned long long)ia);
    send_req(w, "GET", target, NULL, 0);
    fx_sleep(f, 20);
    /* Changes to b, and a new service c, leave a's watcher asleep. */
    put_ok(c, "/v1/agent/check/pass/service:b", NULL);
    put_ok(c, "/v1/agent/service/register", "{\"Name\":\"c\"}");
    put_ok(c, "/v1/agent/service/deregister/c", NULL);
    fx_sleep(f, 100);
    assert_false(has_response(w));

    put_ok(c, "/v1/agent/check/pass/service:a", NULL);
    uint64_t t0 = uv_hrtime();
    resp_t r = {0};
    read_resp(w, &r);
    assert_true((uv_hrtime() - t0) / 1000000 <= 50);
    assert_int_equal(r.status, 200);
    assert_true(index_of(&r) > ia);
    json_t *arr = body_json(&r);
    assert_string_equal(
        json_str(json_array_get(json_object_get(json_array_get(arr, 0), "Checks"), 1), "Status"),
        "passing");
    json_decref(arr);

    /* A catalog watcher on b wakes when b is deregistered (its tombstone). */
    uint64_t ib;
    json_decref(get_json(c, "/v1/catalog/service/b", &ib));
    snprintf(target, sizeof(target), "/v1/catalog/service/b?index=%llu", (unsigned long long)ib);
    send_req(w, "GET", target, NULL, 0);
    fx_sleep(f, 20);
    assert_false(has_response(w));
    put_ok(c, "/v1/agent/service/deregister/b", NULL);
    read_resp(w, &r);
    arr = body_json(&r);
    assert_int_equal(json_array_size(arr), 0);
    assert_true(index_of(&r) > ib);
    json_decref(arr);

    /* A short wait answers with the same index. */
    json_decref(get_json(c, "/v1/health/service/a", &ia));
    snprintf(target, sizeof(target), "/v1/health/service/a?index=%llu&wait=50ms",
             (unsigned long long)ia);
    call(w, "GET", target, NULL, 0, &r);
    assert_int_equal(index_of(&r), ia);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_ttl_expiry(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    put_ok(c, "/v1/agent/service/register", "{\"Name\":\"t\",\"Check\":{\"TTL\":\"100ms\"}}");
    put_ok(c, "/v1/agent/check/pass/service:t", NULL);
    assert_string_equal(check_status(c, "service:t", NULL, 0), "passing");
    fx_sleep(f, 60);
    put_ok(c, "/v1/agent/check/pass/service:t", NULL); /* resets the timer */
    fx_sleep(f, 60);
    assert_string_equal(check_status(c, "service:t", NULL, 0), "passing");
    fx_sleep(f, 150);
    char out[64];
    assert_string_equal(check_status(c, "service:t", out, sizeof(out)), "critical");
    assert_string_equal(out, "TTL expired");
    fx_finish(f);
}

static void test_persistence(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    put_ok(c, "/v1/agent/service/register", WEB);
    put_ok(c, "/v1/agent/service/register", "{\"Name\":\"gone\"}");
    put_ok(c, "/v1/agent/service/deregister/gone", NULL);
    put_ok(c, "/v1/agent/check/pass/service:web-1?note=ok", NULL);
    uint64_t before;
    json_decref(get_json(c, "/v1/health/service/web", &before));
    uint64_t gone;
    json_decref(get_json(c, "/v1/catalog/service/gone", &gone));

    cat_close(f);
    cat_open(f);
    uint64_t after;
    json_t *arr = get_json(c, "/v1/health/service/web", &after);
    assert_int_equal(after, before);
    json_t *e = json_array_get(arr, 0);
    assert_int_equal(jint(json_object_get(e, "Service"), "Port"), 8080);
    json_decref(arr);
    json_decref(get_json(c, "/v1/catalog/service/gone", &after));
    assert_int_equal(after, gone); /* the tombstone survived */
    char out[64];
    assert_string_equal(check_status(c, "service:web-1", out, sizeof(out)), "passing");
    assert_string_equal(out, "ok");
    put_ok(c, "/v1/agent/check/fail/service:web-1", NULL);
    json_decref(get_json(c, "/v1/health/service/web", &after));
    assert_true(after > before);
    fx_finish(f);
}

static void expect_400(client_t *c, const char *target, const char *body, const char *needle)
{
    resp_t r = {0};
    assert_int_equal(put(c, target, body, &r), 400);
    assert_string_equal(hdr(&r, "Content-Type"), "application/problem+json");
    if (!strstr(r.body.data, needle)) fail_msg("%s lacks \"%s\"", r.body.data, needle);
    tr_buf_free(&r.body);
}

static void test_bad_inputs(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    const char *reg = "/v1/agent/service/register";
    expect_400(c, reg, "{\"Port\":1}", "missing service Name");
    expect_400(c, reg, "{\"Name\":\"x\",\"Check\":{\"HTTP\":\"http://x/\"}}", "Interval");
    expect_400(c, reg, "{\"Name\":\"x\",\"Check\":{\"TCP\":\"x:1\"}}", "Interval");
    expect_400(c, reg, "{\"Name\":\"x\",\"Check\":{\"Notes\":\"no kind\"}}", "TTL");
    expect_400(c, reg, "{\"Name\":\"x\",\"Check\":{\"TTL\":\"soon\"}}", "TTL");
    expect_400(c, reg, "{\"Name\":", "not valid JSON");
    expect_400(c, reg, "[1]", "JSON object");
    expect_400(c, reg, "{\"Name\":\"x\",\"Tags\":\"a\"}", "Tags");
    expect_400(c, reg, "{\"Name\":\"x\",\"Port\":\"80\"}", "Port");
    expect_400(c, reg, "{\"Name\":\"x\",\"Meta\":{\"a\":1}}", "Meta");
    expect_400(c, reg, "{\"Name\":\"x\",\"Check\":{\"TTL\":\"1s\",\"Status\":\"up\"}}", "Status");
    expect_400(c, "/v1/agent/check/register", "{\"TTL\":\"1s\"}", "Name");
    expect_400(c, "/v1/agent/check/register",
               "{\"Name\":\"c\",\"TTL\":\"1s\",\"ServiceID\":\"no\"}", "ServiceID");
    resp_t r = {0};
    call(c, "GET", "/v1/health/service/x?filter=Service.Port+%3D%3D", NULL, 0, &r);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body.data, "column"));
    call(c, "GET", "/v1/health/state/sleepy", NULL, 0, &r);
    assert_int_equal(r.status, 400);
    call(c, "GET", "/v1/health/service/x?index=abc", NULL, 0, &r);
    assert_int_equal(r.status, 400);
    call(c, "POST", "/v1/agent/services", NULL, 0, &r);
    assert_int_equal(r.status, 405);
    json_t *all = get_json(c, "/v1/agent/services", NULL);
    assert_int_equal(json_object_size(all), 0);
    json_decref(all);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static size_t service_count(client_t *c)
{
    json_t *all = get_json(c, "/v1/agent/services", NULL);
    size_t n = json_object_size(all);
    json_decref(all);
    return n;
}

static void test_reap_and_edges(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    double changes = metric("trellis_registry_check_status_changes_total{status=\"passing\"}");
    put_ok(c, "/v1/agent/service/register",
           "{\"Name\":\"r\",\"Check\":{\"TTL\":\"1h\","
           "\"DeregisterCriticalServiceAfter\":\"10ms\"}}");
    /* An empty check object is no check, as in Consul. */
    put_ok(c, "/v1/agent/service/register", "{\"Name\":\"e\",\"Check\":{}}");
    json_t *all = get_json(c, "/v1/agent/checks", NULL);
    assert_int_equal(json_object_size(all), 1);
    json_decref(all);

    /* Output is kept as valid UTF-8, cut at 4 KiB. */
    put_ok(c, "/v1/agent/check/pass/service:r?note=a%FFb", NULL);
    char out[64];
    assert_string_equal(check_status(c, "service:r", out, sizeof(out)), "passing");
    assert_string_equal(out, "a?b");
    assert_int_equal(metric("trellis_registry_check_status_changes_total{status=\"passing\"}"),
                     changes + 1);
    tr_buf_t big = TR_BUF_INIT;
    tr_buf_append_str(&big, "{\"Status\":\"passing\",\"Output\":\"");
    for (int i = 0; i < 5000; i++)
        tr_buf_append_str(&big, "x");
    tr_buf_append_str(&big, "\"}");
    put_ok(c, "/v1/agent/check/update/service:r", tr_buf_cstr(&big));
    tr_buf_free(&big);
    all = get_json(c, "/v1/agent/checks", NULL);
    assert_int_equal(strlen(json_str(json_object_get(all, "service:r"), "Output")), 4096);
    json_decref(all);

    /* Critical longer than DeregisterCriticalServiceAfter: the service is reaped. */
    put_ok(c, "/v1/agent/check/fail/service:r", NULL);
    for (int i = 0; i < 150 && service_count(c) == 2; i++)
        fx_sleep(f, 20);
    all = get_json(c, "/v1/agent/services", NULL);
    assert_null(json_object_get(all, "r"));
    assert_non_null(json_object_get(all, "e"));
    json_decref(all);
    assert_int_equal(metric("trellis_registry_services"), 1);
    expect_400(c, "/v1/agent/service/register", "{\"Name\":\"w\",\"Weights\":{\"Passing\":0}}",
               "Passing");
    fx_finish(f);
}

/* ---- an HTTP check against a tiny in-test server */

typedef struct target_s {
    tr_http_server_t *srv;
    int port, status;
    bool done;
} target_t;

static void on_target(tr_http_req_t *req, void *data)
{
    target_t *t = data;
    tr_http_res_send(req, t->status, "text/plain", "hi", 2);
}

static void on_target_done(void *data)
{
    ((target_t *)data)->done = true;
}

static void test_http_check(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    target_t t = {.status = 200};
    struct sockaddr_storage addr, bound;
    assert_int_equal(tr_net_parse_addr("127.0.0.1:0", &addr), 0);
    int fd;
    assert_int_equal(tr_net_listen(&addr, 1, 128, &fd, &bound), 0);
    t.port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    tr_http_server_options_t opts = {.handler = on_target, .handler_data = &t};
    assert_int_equal(tr_http_server_start(&f->loop, fd, &opts, &t.srv), 0);

    char body[256];
    snprintf(body, sizeof(body),
             "{\"Name\":\"h\",\"Check\":{\"HTTP\":\"http://127.0.0.1:%d/health\","
             "\"Interval\":\"100ms\",\"Timeout\":\"1s\",\"FailuresBeforeCritical\":3,"
             "\"Header\":{\"X-A\":[\"1\"]}}}",
             t.port);
    put_ok(c, "/v1/agent/service/register", body);
    for (int i = 0; i < 100 && strcmp(check_status(c, "service:h", NULL, 0), "passing"); i++)
        fx_sleep(f, 20);
    assert_string_equal(check_status(c, "service:h", NULL, 0), "passing");
    json_t *all = get_json(c, "/v1/agent/checks", NULL);
    json_t *ck = json_object_get(all, "service:h");
    assert_string_equal(json_str(ck, "Type"), "http");
    assert_string_equal(json_str(ck, "Interval"), "100ms");
    assert_non_null(strstr(json_str(ck, "Output"), "200"));
    assert_non_null(
        json_object_get(json_object_get(json_object_get(ck, "Definition"), "Header"), "X-A"));
    json_decref(all);
    t.status = 500;
    /* FailuresBeforeCritical: one or two failed runs leave it passing. */
    fx_sleep(f, 120);
    assert_string_equal(check_status(c, "service:h", NULL, 0), "passing");
    for (int i = 0; i < 100 && strcmp(check_status(c, "service:h", NULL, 0), "critical"); i++)
        fx_sleep(f, 20);
    assert_string_equal(check_status(c, "service:h", NULL, 0), "critical");
    put_ok(c, "/v1/agent/service/deregister/h", NULL);
    tr_http_server_close(t.srv, true, on_target_done, &t);
    RUN_UNTIL(f, t.done);
    fx_finish(f);
}

static void test_agent_members_join(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    json_t *m = get_json(c, "/v1/agent/members", NULL);
    assert_int_equal(json_array_size(m), 1);
    json_t *me = json_array_get(m, 0);
    assert_string_equal(json_str(me, "Name"), "node-1");
    assert_string_equal(json_str(me, "Addr"), "127.0.0.1");
    assert_int_equal(jint(me, "Port"), 8301);
    assert_int_equal(jint(me, "Status"), 1);
    assert_string_equal(json_str(json_object_get(me, "Tags"), "role"), "consul");
    assert_string_equal(json_str(json_object_get(me, "Tags"), "dc"), "dc1");
    json_decref(m);
    m = get_json(c, "/v1/agent/members?wan=1", NULL);
    assert_string_equal(json_str(json_array_get(m, 0), "Name"), "node-1.dc1");
    json_decref(m);
    json_t *dcs = get_json(c, "/v1/catalog/datacenters", NULL);
    assert_int_equal(json_array_size(dcs), 1);
    assert_string_equal(json_string_value(json_array_get(dcs, 0)), "dc1");
    json_decref(dcs);

    resp_t r = {0};
    put_ok(c, "/v1/agent/join/127.0.0.1", NULL);
    put_ok(c, "/v1/agent/join/127.0.0.1:8301", NULL);
    assert_int_equal(put(c, "/v1/agent/join/10.1.2.3:8301", NULL, &r), 500);
    assert_non_null(strstr(r.body.data, "single node"));
    put_ok(c, "/v1/agent/force-leave/foo", NULL);
    call(c, "GET", "/v1/agent/join/127.0.0.1", NULL, 0, &r);
    assert_int_equal(r.status, 405);
    call(c, "POST", "/v1/catalog/datacenters", NULL, 0, &r);
    assert_int_equal(r.status, 405);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static const char FOOBAR[] =
    "{\"Datacenter\":\"dc1\",\"Node\":\"foobar\",\"Address\":\"192.168.10.10\","
    "\"Service\":{\"ID\":\"redis1\",\"Service\":\"redis\",\"Tags\":[\"master\",\"v1\"],"
    "\"Port\":8000},\"Check\":{\"Node\":\"foobar\",\"CheckID\":\"service:redis1\","
    "\"Name\":\"Redis health check\",\"Status\":\"passing\",\"ServiceID\":\"redis1\"}}";

/* Nodes registered through /v1/catalog/register, read back through every view. */
static void test_catalog_register(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    uint64_t before, idx;
    /* A first write, so that the index visibly moves (an empty store also reports 1). */
    put_ok(c, "/v1/catalog/register", "{\"Node\":\"other\",\"Address\":\"10.0.0.9\"}");
    json_decref(get_json(c, "/v1/catalog/nodes", &before));
    resp_t r = {0};
    assert_int_equal(put(c, "/v1/catalog/register", FOOBAR, &r), 200);
    assert_string_equal(r.body.data, "true");
    tr_buf_free(&r.body);

    json_t *node = get_json(c, "/v1/catalog/node/foobar", &idx);
    assert_true(idx > before);
    assert_string_equal(json_str(json_object_get(node, "Node"), "Address"), "192.168.10.10");
    json_t *svc = json_object_get(json_object_get(node, "Services"), "redis1");
    assert_non_null(svc);
    assert_string_equal(json_str(svc, "Service"), "redis");
    assert_int_equal(jint(svc, "Port"), 8000);
    json_decref(node);

    json_t *hc = get_json(c, "/v1/health/node/foobar", NULL);
    assert_int_equal(json_array_size(hc), 1);
    assert_string_equal(json_str(json_array_get(hc, 0), "CheckID"), "service:redis1");
    assert_string_equal(json_str(json_array_get(hc, 0), "Status"), "passing");
    assert_string_equal(json_str(json_array_get(hc, 0), "ServiceName"), "redis");
    json_decref(hc);
    hc = get_json(c, "/v1/health/node/node-1", NULL);
    assert_string_equal(json_str(json_array_get(hc, 0), "CheckID"), "serfHealth");
    json_decref(hc);
    hc = get_json(c, "/v1/health/node/nobody", NULL);
    assert_int_equal(json_array_size(hc), 0);
    json_decref(hc);

    json_t *nodes = get_json(c, "/v1/catalog/nodes", NULL);
    assert_int_equal(json_array_size(nodes), 3);
    json_decref(nodes);
    json_t *all = get_json(c, "/v1/catalog/services", NULL);
    assert_int_equal(json_array_size(json_object_get(all, "redis")), 2);
    assert_non_null(json_object_get(all, "consul")); /* the server's own service */
    json_decref(all);
    json_t *list = get_json(c, "/v1/catalog/service/redis?tag=master", NULL);
    assert_int_equal(json_array_size(list), 1);
    assert_string_equal(json_str(json_array_get(list, 0), "Node"), "foobar");
    assert_int_equal(jint(json_array_get(list, 0), "ServicePort"), 8000);
    json_decref(list);
    list = get_json(c, "/v1/catalog/service/redis?tag=nope", NULL);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);
    list = get_json(c, "/v1/catalog/service/consul", NULL);
    assert_int_equal(json_array_size(list), 1);
    json_decref(list);
    list = get_json(c, "/v1/health/service/redis?passing", NULL);
    assert_int_equal(json_array_size(list), 1);
    assert_int_equal(json_array_size(json_object_get(json_array_get(list, 0), "Checks")), 1);
    json_decref(list);
    list = get_json(c, "/v1/health/checks/redis", NULL);
    assert_int_equal(json_array_size(list), 1);
    json_decref(list);

    /* A check without a status starts critical, and drops the service from ?passing. */
    put_ok(c, "/v1/catalog/register",
           "{\"Node\":\"foobar\",\"Address\":\"192.168.10.10\",\"Check\":{\"Name\":\"disk\"}}");
    list = get_json(c, "/v1/health/state/critical", NULL);
    assert_int_equal(json_array_size(list), 1);
    assert_string_equal(json_str(json_array_get(list, 0), "CheckID"), "disk");
    json_decref(list);
    list = get_json(c, "/v1/health/service/redis?passing", NULL);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);

    /* Persisted before the answer: a reopened catalog has the node. */
    cat_close(f);
    cat_open(f);
    node = get_json(c, "/v1/catalog/node/foobar", &before);
    assert_non_null(json_object_get(json_object_get(node, "Services"), "redis1"));
    json_decref(node);
    fx_finish(f);
}

static void test_catalog_deregister(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    put_ok(c, "/v1/catalog/register", FOOBAR);
    uint64_t before, idx;
    json_decref(get_json(c, "/v1/catalog/nodes", &before));
    /* Clients send "" for the fields they leave out. */
    put_ok(c, "/v1/catalog/deregister",
           "{\"Node\":\"foobar\",\"ServiceID\":\"redis1\",\"CheckID\":\"\"}");
    json_t *node = get_json(c, "/v1/catalog/node/foobar", &idx);
    assert_true(idx > before);
    assert_int_equal(json_object_size(json_object_get(node, "Services")), 0);
    json_decref(node);
    json_t *hc = get_json(c, "/v1/health/node/foobar", NULL);
    assert_int_equal(json_array_size(hc), 0); /* the service's check went with it */
    json_decref(hc);

    put_ok(c, "/v1/catalog/register",
           "{\"Node\":\"foobar\",\"Address\":\"10.0.0.2\",\"Check\":{\"CheckID\":\"c1\"}}");
    put_ok(c, "/v1/catalog/deregister", "{\"Node\":\"foobar\",\"CheckID\":\"c1\"}");
    hc = get_json(c, "/v1/health/node/foobar", NULL);
    assert_int_equal(json_array_size(hc), 0);
    json_decref(hc);

    put_ok(c, "/v1/catalog/deregister", "{\"Node\":\"foobar\",\"ServiceID\":\"\"}");
    resp_t r = {0};
    call(c, "GET", "/v1/catalog/node/foobar", NULL, 0, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "null");
    put_ok(c, "/v1/catalog/deregister", "{\"Node\":\"foobar\"}"); /* already gone: fine */
    cat_close(f);
    cat_open(f);
    call(c, "GET", "/v1/catalog/node/foobar", NULL, 0, &r);
    assert_string_equal(r.body.data, "null");
    json_t *nodes = get_json(c, "/v1/catalog/nodes", NULL);
    assert_int_equal(json_array_size(nodes), 1);
    json_decref(nodes);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_catalog_register_bad(void **state)
{
    static const char *const bad[] = {
        "{\"Address\":\"10.0.0.1\"}",
        "{\"Node\":\"n\"}",
        "{\"Node\":\"node-1\",\"Address\":\"10.0.0.1\"}",
        "{\"Node\":\"n\",\"Address\":\"10.0.0.1\",\"Service\":{\"Port\":1}}",
        "{\"Node\":\"n\",\"Address\":\"10.0.0.1\",\"Check\":{\"CheckID\":\"c\","
        "\"ServiceID\":\"missing\"}}",
        "{\"Node\":\"n\",\"Address\":\"10.0.0.1\",\"Check\":{\"CheckID\":\"c\","
        "\"Status\":\"great\"}}",
        "{\"Node\":\"n\",\"Address\":\"10.0.0.1\",\"Checks\":{}}",
        "{\"Node\":5,\"Address\":\"10.0.0.1\"}",
        "[]",
    };
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    resp_t r = {0};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (put(c, "/v1/catalog/register", bad[i], &r) != 400)
            fail_msg("%s: %d %s", bad[i], r.status, r.body.data);
    }
    assert_int_equal(put(c, "/v1/catalog/deregister", "{}", &r), 400);
    call(c, "GET", "/v1/catalog/register", NULL, 0, &r);
    assert_int_equal(r.status, 405);
    json_t *nodes = get_json(c, "/v1/catalog/nodes", NULL);
    assert_int_equal(json_array_size(nodes), 1); /* nothing refused was stored */
    json_decref(nodes);
    tr_buf_free(&r.body);
    fx_finish(f);
}

/* ?filter= narrows health, catalog and agent answers, and is refused with its position. */
static void test_filter(void **state)
{
    (void)state;
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    put_ok(c, "/v1/agent/service/register",
           "{\"ID\":\"w1\",\"Name\":\"web\",\"Tags\":[\"v1\"],\"Port\":8001,"
           "\"Meta\":{\"zone\":\"a\"}}");
    put_ok(c, "/v1/agent/service/register",
           "{\"ID\":\"w2\",\"Name\":\"web\",\"Tags\":[\"v2\"],\"Port\":8002}");
    json_t *j = get_json(c, "/v1/health/service/web?filter=v2+in+Service.Tags", NULL);
    assert_int_equal(json_array_size(j), 1);
    assert_string_equal(json_str(json_object_get(json_array_get(j, 0), "Service"), "ID"), "w2");
    json_decref(j);
    j = get_json(c, "/v1/catalog/service/web?filter=ServicePort+%3D%3D+8001", NULL);
    assert_int_equal(json_array_size(j), 1);
    json_decref(j);
    j = get_json(c, "/v1/agent/services?filter=Meta.zone+%3D%3D+a", NULL);
    assert_int_equal(json_object_size(j), 1);
    assert_non_null(json_object_get(j, "w1"));
    json_decref(j);
    client_close(c);
    fx_finish(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_shapes),
        cmocka_unit_test(test_passing_filter_and_ttl_updates),
        cmocka_unit_test(test_check_ids_replace_deregister),
        cmocka_unit_test(test_maintenance),
        cmocka_unit_test(test_blocking_scoped),
        cmocka_unit_test(test_ttl_expiry),
        cmocka_unit_test(test_persistence),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_reap_and_edges),
        cmocka_unit_test(test_http_check),
        cmocka_unit_test(test_agent_members_join),
        cmocka_unit_test(test_catalog_register),
        cmocka_unit_test(test_catalog_deregister),
        cmocka_unit_test(test_catalog_register_bad),
        cmocka_unit_test(test_filter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
