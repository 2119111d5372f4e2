/* Unit tests for Consul sessions and KV locks, over the real HTTP server and a raw client. */
#include <arpa/inet.h>
#include <jansson.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fixture.h"
#include "registry/kv.h"
#include "registry/session.h"
#include "trellis/http.h"
#include "trellis/net.h"

/* ---- the server side: a router like the registry's for /v1/kv/ and /v1/session/ */

static void on_request(tr_http_req_t *req, void *data)
{
    fx_t *f = data;
    if (req->path_len >= 12 && !memcmp(req->path, "/v1/session/", 12)) {
        tr_session_handle(f->sess, req);
        return;
    }
    kv_route(f->kv, req);
}

static void kv_open(fx_t *f)
{
    char err[256] = "";
    kv_store_open(f);
    if (tr_session_open(&f->loop, f->st, f->kv, "node1", &f->sess, err, sizeof(err)))
        fail_msg("session: %s", err);
}

static void kv_close(fx_t *f)
{
    tr_session_close(f->sess);
    f->sess = NULL;
    kv_store_close(f);
}

/* ---- fixture */

static const fx_ops_t OPS = {"/tmp/tr-sess-XXXXXX", on_request, kv_open, kv_close};

/* ---- session helpers */

/* Creates a session with `body` (NULL: none) and returns its ID (static buffer slot). */
static const char *create(client_t *c, const char *body)
{
    static char ids[4][37];
    static int next;
    resp_t r = {0};
    call(c, "PUT", "/v1/session/create", body, body ? strlen(body) : 0, &r);
    if (r.status != 200) fail_msg("create: %d %s", r.status, r.body.data);
    json_t *j = body_json(&r);
    const char *id = json_string_value(json_object_get(j, "ID"));
    assert_non_null(id);
    assert_int_equal(strlen(id), 36);
    char *out = ids[next++ % 4];
    memcpy(out, id, 37);
    json_decref(j);
    tr_buf_free(&r.body);
    return out;
}

/* PUT /v1/kv/<key>?<op>=<id> with `value`; returns the answer's status, body in r. */
static int lock_op(client_t *c, const char *op, const char *key, const char *id, const char *value,
                   resp_t *r)
{
    char target[512];
    snprintf(target, sizeof(target), "/v1/kv/%s?%s=%s", key, op, id);
    call(c, "PUT", target, value, strlen(value), r);
    return r->status;
}

static void expect_lock(client_t *c, const char *op, const char *key, const char *id, bool want)
{
    resp_t r = {0};
    assert_int_equal(lock_op(c, op, key, id, "v", &r), 200);
    assert_string_equal(r.body.data, want ? "true" : "false");
    tr_buf_free(&r.body);
}

/* GETs /v1/session/<what> and returns the array (caller decrefs). */
static json_t *sessions(client_t *c, const char *what)
{
    char target[256];
    snprintf(target, sizeof(target), "/v1/session/%s", what);
    resp_t r = {0};
    call(c, "GET", target, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    assert_true(index_of(&r) > 0);
    json_t *j = body_json(&r);
    assert_true(json_is_array(j));
    tr_buf_free(&r.body);
    return j;
}

static json_t *info(client_t *c, const char *id)
{
    char what[128];
    snprintf(what, sizeof(what), "info/%s", id);
    return sessions(c, what);
}

static const char *jstr(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    assert_non_null(v);
    return v;
}

static void expect_status(client_t *c, const char *method, const char *target, const char *body,
                          int status)
{
    resp_t r = {0};
    call(c, method, target, body, body ? strlen(body) : 0, &r);
    if (r.status != status) fail_msg("%s %s: %d %s", method, target, r.status, r.body.data);
    tr_buf_free(&r.body);
}

/* ---- tests */

static void test_create_defaults_and_reads(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    const char *id = create(c, NULL);
    json_t *arr = info(c, id);
    assert_int_equal(json_array_size(arr), 1);
    json_t *s = json_array_get(arr, 0);
    assert_string_equal(jstr(s, "ID"), id);
    assert_string_equal(jstr(s, "Name"), "");
    assert_string_equal(jstr(s, "Node"), "node1");
    assert_string_equal(jstr(s, "Behavior"), "release");
    assert_string_equal(jstr(s, "TTL"), "");
    assert_int_equal(jint(s, "LockDelay"), 15000000000LL); /* time.Duration: nanoseconds */
    json_t *checks = json_object_get(s, "Checks");
    assert_int_equal(json_array_size(checks), 1);
    assert_string_equal(json_string_value(json_array_get(checks, 0)), "serfHealth");
    assert_true(jint(s, "CreateIndex") > 0);
    assert_int_equal(jint(s, "ModifyIndex"), jint(s, "CreateIndex"));
    json_decref(arr);

    const char *id2 = create(c, "{\"Name\":\"web-lock\",\"LockDelay\":\"1500ms\",\"Behavior\":"
                                "\"delete\",\"TTL\":\"30s\",\"Checks\":[]}");
    arr = info(c, id2);
    s = json_array_get(arr, 0);
    assert_string_equal(jstr(s, "Name"), "web-lock");
    assert_string_equal(jstr(s, "Behavior"), "delete");
    assert_string_equal(jstr(s, "TTL"), "30s");
    assert_int_equal(jint(s, "LockDelay"), 1500000000LL);
    assert_int_equal(json_array_size(json_object_get(s, "Checks")), 0);
    json_decref(arr);

    /* A bare number under 1000 is seconds, as Consul reads it; larger is nanoseconds. */
    arr = info(c, create(c, "{\"LockDelay\":5}"));
    assert_int_equal(jint(json_array_get(arr, 0), "LockDelay"), 5000000000LL);
    json_decref(arr);

    arr = sessions(c, "list");
    assert_int_equal(json_array_size(arr), 3);
    json_decref(arr);
    arr = sessions(c, "node/node1");
    assert_int_equal(json_array_size(arr), 3);
    json_decref(arr);
    arr = sessions(c, "node/other");
    assert_int_equal(json_array_size(arr), 0);
    json_decref(arr);
    arr = info(c, "00000000-0000-4000-8000-000000000000"); /* unknown: 200 with [] */
    assert_int_equal(json_array_size(arr), 0);
    json_decref(arr);
    fx_finish(f);
}

static void test_bad_requests(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    const char *create_path = "/v1/session/create";
    expect_status(c, "PUT", create_path, "{\"Behavior\":\"explode\"}", 400);
    expect_status(c, "PUT", create_path, "{\"TTL\":\"5ms\"}", 400);
    expect_status(c, "PUT", create_path, "{\"TTL\":\"86401s\"}", 400);
    expect_status(c, "PUT", create_path, "{\"TTL\":\"soon\"}", 400);
    expect_status(c, "PUT", create_path, "{\"LockDelay\":\"61s\"}", 400);
    expect_status(c, "PUT", create_path, "{\"Node\":\"elsewhere\"}", 400);
    expect_status(c, "PUT", create_path, "{\"Checks\":\"serfHealth\"}", 400);
    expect_status(c, "PUT", create_path, "{not json", 400);
    expect_status(c, "PUT", create_path, "[]", 400);
    expect_status(c, "GET", create_path, NULL, 405);
    expect_status(c, "GET", "/v1/session/destroy/x", NULL, 405);
    expect_status(c, "PUT", "/v1/session/info/x", NULL, 405);
    expect_status(c, "GET", "/v1/session/info/", NULL, 400);
    expect_status(c, "GET", "/v1/session/nope", NULL, 404);
    json_t *arr = sessions(c, "list");
    assert_int_equal(json_array_size(arr), 0); /* nothing bad was created */
    json_decref(arr);
    /* Both ?acquire and ?release, or an empty session, are refused. */
    resp_t r = {0};
    call(c, "PUT", "/v1/kv/k?acquire=a&release=a", "v", 1, &r);
    assert_int_equal(r.status, 400);
    call(c, "PUT", "/v1/kv/k?acquire=", "v", 1, &r);
    assert_int_equal(r.status, 400);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_renew_destroy(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    char id[37];
    snprintf(id, sizeof(id), "%s", create(c, "{\"TTL\":\"10s\"}"));
    char target[128];
    snprintf(target, sizeof(target), "/v1/session/renew/%s", id);
    resp_t r = {0};
    call(c, "PUT", target, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    json_t *arr = body_json(&r);
    assert_int_equal(json_array_size(arr), 1);
    assert_string_equal(jstr(json_array_get(arr, 0), "ID"), id);
    assert_string_equal(jstr(json_array_get(arr, 0), "TTL"), "10s");
    json_decref(arr);

    snprintf(target, sizeof(target), "/v1/session/destroy/%s", id);
    call(c, "PUT", target, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "true");
    arr = info(c, id);
    assert_int_equal(json_array_size(arr), 0);
    json_decref(arr);
    call(c, "PUT", target, NULL, 0, &r); /* destroying again is not an error */
    assert_int_equal(r.status, 200);
    snprintf(target, sizeof(target), "/v1/session/renew/%s", id);
    call(c, "PUT", target, NULL, 0, &r);
    assert_int_equal(r.status, 404);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_acquire_release(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    char a[37], b[37];
    snprintf(a, sizeof(a), "%s", create(c, NULL));
    snprintf(b, sizeof(b), "%s", create(c, "{\"Checks\":[]}"));
    resp_t r = {0};
    assert_int_equal(lock_op(c, "acquire", "svc/leader", a, "one", &r), 200);
    assert_string_equal(r.body.data, "true");
    json_t *arr, *e = kv_get_entry(c, "svc/leader", &arr, &r);
    assert_string_equal(jstr(e, "Session"), a);
    assert_int_equal(jint(e, "LockIndex"), 1);
    assert_string_equal(jstr(e, "Value"), "b25l"); /* "one" */
    json_decref(arr);

    expect_lock(c, "acquire", "svc/leader", a, true); /* the holder again: no new lock */
    expect_lock(c, "acquire", "svc/leader", b, false);
    expect_lock(c, "release", "svc/leader", b, false);
    expect_lock(c, "release", "missing", a, false);
    e = kv_get_entry(c, "svc/leader", &arr, &r);
    assert_string_equal(jstr(e, "Session"), a);
    assert_int_equal(jint(e, "LockIndex"), 1);
    assert_string_equal(jstr(e, "Value"), "dg=="); /* "v": the holder's write went in */
    json_decref(arr);

    kv_put_ok(c, "svc/leader", "plain"); /* a plain PUT keeps the lock, as in Consul */
    e = kv_get_entry(c, "svc/leader", &arr, &r);
    assert_string_equal(jstr(e, "Session"), a);
    json_decref(arr);

    expect_lock(c, "release", "svc/leader", a, true);
    e = kv_get_entry(c, "svc/leader", &arr, &r);
    assert_null(json_object_get(e, "Session"));
    assert_int_equal(jint(e, "LockIndex"), 1);
    json_decref(arr);
    expect_lock(c, "acquire", "svc/leader", b, true); /* an explicit release has no delay */
    e = kv_get_entry(c, "svc/leader", &arr, &r);
    assert_string_equal(jstr(e, "Session"), b);
    assert_int_equal(jint(e, "LockIndex"), 2);
    json_decref(arr);

    assert_int_equal(lock_op(c, "acquire", "other", "no-such-session", "v", &r), 500);
    assert_non_null(strstr(r.body.data, "invalid session"));
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_destroy_releases_with_lock_delay(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0), *w = client_open(f, 1);
    char a[37], b[37], d[37];
    snprintf(a, sizeof(a), "%s", create(c, "{\"LockDelay\":\"300ms\"}"));
    snprintf(b, sizeof(b), "%s", create(c, NULL));
    snprintf(d, sizeof(d), "%s", create(c, "{\"Behavior\":\"delete\",\"LockDelay\":\"0s\"}"));
    expect_lock(c, "acquire", "lock/a", a, true);
    expect_lock(c, "acquire", "lock/d", d, true);
    resp_t r = {0};
    json_t *arr, *e = kv_get_entry(c, "lock/a", &arr, &r);
    uint64_t before = jint(e, "ModifyIndex");
    json_decref(arr);

    /* A watcher on the lock wakes when its holder goes away. */
    char target[128];
    snprintf(target, sizeof(target), "/v1/kv/lock/a?index=%llu&wait=5s",
             (unsigned long long)before);
    send_req(w, "GET", target, NULL, 0);
    fx_sleep(f, 20);
    assert_false(has_response(w));
    snprintf(target, sizeof(target), "/v1/session/destroy/%s", a);
    expect_status(c, "PUT", target, NULL, 200);
    read_resp(w, &r);
    assert_int_equal(r.status, 200);
    arr = body_json(&r);
    e = json_array_get(arr, 0);
    assert_null(json_object_get(e, "Session"));
    assert_true(jint(e, "ModifyIndex") > before);
    assert_int_equal(jint(e, "LockIndex"), 1);
    json_decref(arr);

    /* Lock-delay: nobody may take the key for 300ms after its holder was invalidated. */
    expect_lock(c, "acquire", "lock/a", b, false);
    fx_sleep(f, 350);
    expect_lock(c, "acquire", "lock/a", b, true);

    snprintf(target, sizeof(target), "/v1/session/destroy/%s", d);
    expect_status(c, "PUT", target, NULL, 200);
    expect_status(c, "GET", "/v1/kv/lock/d", NULL, 404); /* Behavior delete removes the key */
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_ttl_expiry(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    char id[37], target[128];
    snprintf(id, sizeof(id), "%s", create(c, "{\"TTL\":\"50ms\",\"LockDelay\":\"0s\"}"));
    expect_lock(c, "acquire", "ttl/k", id, true);
    /* Consul gives a TTL session 2x its TTL; renewing starts the clock again. */
    fx_sleep(f, 70);
    snprintf(target, sizeof(target), "/v1/session/renew/%s", id);
    expect_status(c, "PUT", target, NULL, 200);
    fx_sleep(f, 70);
    json_t *arr = info(c, id);
    assert_int_equal(json_array_size(arr), 1);
    json_decref(arr);
    fx_sleep(f, 100);
    arr = info(c, id);
    assert_int_equal(json_array_size(arr), 0);
    json_decref(arr);
    resp_t r = {0};
    json_t *e = kv_get_entry(c, "ttl/k", &arr, &r);
    assert_null(json_object_get(e, "Session"));
    json_decref(arr);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_persistence(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    char a[37], t[37];
    snprintf(a, sizeof(a), "%s", create(c, "{\"Name\":\"keep\",\"LockDelay\":\"2s\"}"));
    snprintf(t, sizeof(t), "%s", create(c, "{\"TTL\":\"60ms\"}"));
    expect_lock(c, "acquire", "p/k", a, true);
    kv_close(f);
    kv_open(f);

    json_t *arr = info(c, a);
    assert_int_equal(json_array_size(arr), 1);
    json_t *s = json_array_get(arr, 0);
    assert_string_equal(jstr(s, "Name"), "keep");
    assert_int_equal(jint(s, "LockDelay"), 2000000000LL);
    json_decref(arr);
    expect_lock(c, "acquire", "p/k", a, true); /* the session and its lock survived */
    resp_t r = {0};
    json_t *e = kv_get_entry(c, "p/k", &arr, &r);
    assert_string_equal(jstr(e, "Session"), a);
    assert_int_equal(jint(e, "LockIndex"), 1);
    json_decref(arr);

    /* The TTL timer was re-armed on open: the session expires without a renew. */
    arr = info(c, t);
    assert_int_equal(json_array_size(arr), 1);
    json_decref(arr);
    fx_sleep(f, 200);
    arr = info(c, t);
    assert_int_equal(json_array_size(arr), 0);
    json_decref(arr);
    tr_buf_free(&r.body);
    fx_finish(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_defaults_and_reads),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_renew_destroy),
        cmocka_unit_test(test_acquire_release),
        cmocka_unit_test(test_destroy_releases_with_lock_delay),
        cmocka_unit_test(test_ttl_expiry),
        cmocka_unit_test(test_persistence),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
