/* Unit tests for the Consul KV endpoint, over the real HTTP server and a raw client. */
#include <arpa/inet.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fixture.h"
#include "registry/kv.h"
#include "trellis/http.h"
#include "trellis/metrics.h"
#include "trellis/net.h"

/* ---- the server side: a router like the registry's, /v1/kv/<percent-decoded key> */

static void on_request(tr_http_req_t *req, void *data)
{
    kv_route(((fx_t *)data)->kv, req);
}

/* ---- fixture */

static const fx_ops_t OPS = {"/tmp/tr-kv-XXXXXX", on_request, kv_store_open, kv_store_close};

/* ---- tests */

static void test_put_get_delete(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    resp_t r = {0};
    call(c, "PUT", "/v1/kv/a/b", "hello", 5, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "true");
    assert_string_equal(hdr(&r, "Content-Type"), "application/json");

    json_t *arr, *e = kv_get_entry(c, "a/b", &arr, &r);
    assert_string_equal(hdr(&r, "Content-Type"), "application/json");
    assert_string_equal(hdr(&r, "X-Consul-KnownLeader"), "true");
    assert_string_equal(hdr(&r, "X-Consul-LastContact"), "0");
    assert_string_equal(json_string_value(json_object_get(e, "Key")), "a/b");
    assert_string_equal(json_string_value(json_object_get(e, "Value")), "aGVsbG8=");
    assert_int_equal(jint(e, "Flags"), 0);
    assert_int_equal(jint(e, "LockIndex"), 0);
    assert_null(json_object_get(e, "Session"));
    uint64_t created = jint(e, "CreateIndex");
    assert_int_equal(jint(e, "ModifyIndex"), created);
    assert_int_equal(index_of(&r), created);
    /* Consul's field order, which some clients' golden files compare. */
    assert_non_null(strstr(r.body.data, "[{\"LockIndex\":0,\"Key\":\"a/b\",\"Flags\":0,"
                                        "\"Value\":\"aGVsbG8=\",\"CreateIndex\":"));
    json_decref(arr);

    kv_put_ok(c, "a/b", "world");
    e = kv_get_entry(c, "a/b", &arr, &r);
    assert_int_equal(jint(e, "CreateIndex"), created);
    uint64_t modified = jint(e, "ModifyIndex");
    assert_true(modified > created);
    json_decref(arr);

    call(c, "DELETE", "/v1/kv/a/b", NULL, 0, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "true");
    call(c, "GET", "/v1/kv/a/b", NULL, 0, &r);
    assert_int_equal(r.status, 404);
    assert_int_equal(r.body.len, 0);
    assert_true(index_of(&r) > modified);
    /* Deleting what is not there is still true, and a never-written key is a plain 404. */
    call(c, "DELETE", "/v1/kv/a/b", NULL, 0, &r);
    assert_string_equal(r.body.data, "true");
    call(c, "GET", "/v1/kv/never", NULL, 0, &r);
    assert_int_equal(r.status, 404);
    assert_int_equal(r.body.len, 0);
    assert_true(index_of(&r) >= 1);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_values_binary_empty_raw(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    resp_t r = {0};
    const unsigned char bin[] = {0, 1, 2, 0xff, 0xfe, '\r', '\n', 0, 'x', 0x80};
    call(c, "PUT", "/v1/kv/bin", bin, sizeof(bin), &r);
    assert_string_equal(r.body.data, "true");
    json_t *arr, *e = kv_get_entry(c, "bin", &arr, &r);
    const char *b64 = json_string_value(json_object_get(e, "Value"));
    unsigned char out[64];
    int n = EVP_DecodeBlock(out, (const unsigned char *)b64, (int)strlen(b64));
    /* EVP_DecodeBlock counts the padding's zero bytes: 10 bytes encode to 16 chars, "==". */
    assert_int_equal(n - 2, sizeof(bin));
    assert_memory_equal(out, bin, sizeof(bin));
    json_decref(arr);

    call(c, "GET", "/v1/kv/bin?raw", NULL, 0, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(hdr(&r, "Content-Type"), "text/plain");
    assert_string_equal(hdr(&r, "X-Content-Type-Options"), "nosniff");
    assert_non_null(hdr(&r, "X-Consul-Index"));
    assert_int_equal(r.body.len, sizeof(bin));
    assert_memory_equal(r.body.data, bin, sizeof(bin));

    call(c, "PUT", "/v1/kv/empty", "", 0, &r);
    assert_string_equal(r.body.data, "true");
    e = kv_get_entry(c, "empty", &arr, &r);
    assert_true(json_is_null(json_object_get(e, "Value")));
    json_decref(arr);
    call(c, "GET", "/v1/kv/empty?raw", NULL, 0, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body.len, 0);
    call(c, "GET", "/v1/kv/missing?raw", NULL, 0, &r);
    assert_int_equal(r.status, 404);

    /* Percent-encoded keys arrive decoded; JSON escapes what it must. */
    call(c, "PUT", "/v1/kv/sp%20ace%22q", "v", 1, &r);
    assert_string_equal(r.body.data, "true");
    e = kv_get_entry(c, "sp%20ace%22q", &arr, &r);
    assert_string_equal(json_string_value(json_object_get(e, "Key")), "sp ace\"q");
    json_decref(arr);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_flags_and_cas(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    resp_t r = {0};
    json_t *arr, *e;
    call(c, "PUT", "/v1/kv/f?flags=42", "x", 1, &r);
    e = kv_get_entry(c, "f", &arr, &r);
    assert_int_equal(jint(e, "Flags"), 42);
    json_decref(arr);
    call(c, "PUT", "/v1/kv/f?flags=18446744073709551615", "x", 1, &r);
    assert_string_equal(r.body.data, "true");
    call(c, "GET", "/v1/kv/f", NULL, 0, &r);
    assert_non_null(strstr(r.body.data, "\"Flags\":18446744073709551615,"));
    /* A PUT without flags resets them to 0, as in Consul. */
    kv_put_ok(c, "f", "y");
    e = kv_get_entry(c, "f", &arr, &r);
    assert_int_equal(jint(e, "Flags"), 0);
    uint64_t mi = jint(e, "ModifyIndex");
    json_decref(arr);

    /* cas=0: only when absent. */
    call(c, "PUT", "/v1/kv/f?cas=0", "z", 1, &r);
    assert_string_equal(r.body.data, "false");
    call(c, "PUT", "/v1/kv/new?cas=0", "n", 1, &r);
    assert_string_equal(r.body.data, "true");
    call(c, "PUT", "/v1/kv/new?cas=0", "n", 1, &r);
    assert_string_equal(r.body.data, "false");
    /* cas=N: only when ModifyIndex is N; a refused write changes nothing. */
    char target[64];
    snprintf(target, sizeof(target), "/v1/kv/f?cas=%llu", (unsigned long long)(mi + 100));
    call(c, "PUT", target, "z", 1, &r);
    assert_string_equal(r.body.data, "false");
    e = kv_get_entry(c, "f", &arr, &r);
    assert_string_equal(json_string_value(json_object_get(e, "Value")), "eQ==");
    json_decref(arr);
    snprintf(target, sizeof(target), "/v1/kv/f?cas=%llu", (unsigned long long)mi);
    call(c, "PUT", target, "z", 1, &r);
    assert_string_equal(r.body.data, "true");
    call(c, "PUT", target, "w", 1, &r);
    assert_string_equal(r.body.data, "false"); /* the index moved on */

    /* DELETE with cas. */
    e = kv_get_entry(c, "f", &arr, &r);
    mi = jint(e, "ModifyIndex");
    json_decref(arr);
    snprintf(target, sizeof(target), "/v1/kv/f?cas=%llu", (unsigned long long)(mi - 1));
    call(c, "DELETE", target, NULL, 0, &r);
    assert_string_equal(r.body.data, "false");
    snprintf(target, sizeof(target), "/v1/kv/f?cas=%llu", (unsigned long long)mi);
    call(c, "DELETE", target, NULL, 0, &r);
    assert_string_equal(r.body.data, "true");
    call(c, "GET", "/v1/kv/f", NULL, 0, &r);
    assert_int_equal(r.status, 404);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void expect_json(client_t *c, const char *target, int status, const char *body)
{
    resp_t r = {0};
    call(c, "GET", target, NULL, 0, &r);
    assert_int_equal(r.status, status);
    assert_string_equal(r.body.data ? r.body.data : "", body);
    assert_non_null(hdr(&r, "X-Consul-Index"));
    tr_buf_free(&r.body);
}

static void test_recurse_keys_separator(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    expect_json(c, "/v1/kv/?keys", 200, "[]");
    expect_json(c, "/v1/kv/?recurse", 404, "");
    const char *keys[] = {"b", "app/b/d", "apple", "app/a", "app/b/c", "app/b/"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        kv_put_ok(c, keys[i], "v");

    resp_t r = {0};
    call(c, "GET", "/v1/kv/app/?recurse", NULL, 0, &r);
    assert_int_equal(r.status, 200);
    json_t *arr = body_json(&r);
    assert_int_equal(json_array_size(arr), 4);
    const char *want[] = {"app/a", "app/b/", "app/b/c", "app/b/d"};
    uint64_t max = 0;
    for (size_t i = 0; i < 4; i++) {
        json_t *e = json_array_get(arr, i);
        assert_string_equal(json_string_value(json_object_get(e, "Key")), want[i]);
        if (jint(e, "ModifyIndex") > max) max = jint(e, "ModifyIndex");
    }
    assert_int_equal(index_of(&r), max);
    json_decref(arr);

    expect_json(c, "/v1/kv/app?keys", 200,
                "[\"app/a\",\"app/b/\",\"app/b/c\",\"app/b/d\",\"apple\"]");
    expect_json(c, "/v1/kv/app/?keys&separator=/", 200, "[\"app/a\",\"app/b/\"]");
    expect_json(c, "/v1/kv/?keys&separator=/", 200, "[\"app/\",\"apple\",\"b\"]");
    expect_json(c, "/v1/kv/?keys&seperator=/", 200, "[\"app/\",\"apple\",\"b\"]");
    expect_json(c, "/v1/kv/app/b?keys&separator=%2F", 200, "[\"app/b/\"]");
    expect_json(c, "/v1/kv/zzz?keys", 404, "");
    expect_json(c, "/v1/kv/zzz?recurse", 404, "");
    /* recurse on a key is a prefix match, keys wins over recurse like in Consul. */
    expect_json(c, "/v1/kv/b?keys&recurse", 200, "[\"b\"]");

    call(c, "DELETE", "/v1/kv/app/b?recurse", NULL, 0, &r);
    assert_string_equal(r.body.data, "true");
    expect_json(c, "/v1/kv/?keys", 200, "[\"app/a\",\"apple\",\"b\"]");
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_index_monotonic(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    resp_t r = {0};
    uint64_t last = 0;
    for (int i = 0; i < 20; i++) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", i % 3);
        if (i % 4 == 3) {
            char target[32];
            snprintf(target, sizeof(target), "/v1/kv/%s", key);
            call(c, "DELETE", target, NULL, 0, &r);
        } else {
            kv_put_ok(c, key, "v");
        }
        call(c, "GET", "/v1/kv/?recurse", NULL, 0, &r);
        uint64_t idx = index_of(&r);
        assert_true(idx > last); /* every write touches the root prefix */
        last = idx;
    }
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_restart_restores(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    resp_t r = {0};
    call(c, "PUT", "/v1/kv/cfg/a?flags=7", "one", 3, &r);
    kv_put_ok(c, "cfg/b", "two");
    call(c, "DELETE", "/v1/kv/cfg/b", NULL, 0, &r);
    call(c, "GET", "/v1/kv/cfg/?recurse", NULL, 0, &r);
    uint64_t before = index_of(&r);
    json_t *arr, *e = kv_get_entry(c, "cfg/a", &arr, &r);
    uint64_t a_mod = jint(e, "ModifyIndex");
    json_decref(arr);

    kv_store_close(f);
    kv_store_open(f);

    call(c, "GET", "/v1/kv/cfg/?recurse", NULL, 0, &r);
    assert_int_equal(index_of(&r), before); /* the tombstone of cfg/b still counts */
    e = kv_get_entry(c, "cfg/a", &arr, &r);
    assert_string_equal(json_string_value(json_object_get(e, "Value")), "b25l");
    assert_int_equal(jint(e, "Flags"), 7);
    assert_int_equal(jint(e, "ModifyIndex"), a_mod);
    json_decref(arr);
    call(c, "GET", "/v1/kv/cfg/b", NULL, 0, &r);
    assert_int_equal(r.status, 404);
    assert_int_equal(index_of(&r), before);
    kv_put_ok(c, "cfg/c", "three");
    e = kv_get_entry(c, "cfg/c", &arr, &r);
    assert_true(jint(e, "ModifyIndex") > before);
    json_decref(arr);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static uint64_t get_index(client_t *c, const char *target)
{
    resp_t r = {0};
    call(c, "GET", target, NULL, 0, &r);
    uint64_t idx = index_of(&r);
    tr_buf_free(&r.body);
    return idx;
}

static void test_blocking_exact_key(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0), *w = client_open(f, 1);
    kv_put_ok(c, "A", "1");
    uint64_t idx = get_index(c, "/v1/kv/A");
    char target[96];
    snprintf(target, sizeof(target), "/v1/kv/A?index=%llu&wait=5s", (unsigned long long)idx);
    send_req(w, "GET", target, NULL, 0);
    fx_sleep(f, 20);
    assert_int_equal(metric("trellis_registry_kv_watchers"), 1);
    /* Writes elsewhere, even to keys that share a prefix, leave the watcher parked. */
    kv_put_ok(c, "B", "x");
    kv_put_ok(c, "AB", "x");
    resp_t d = {0};
    call(c, "DELETE", "/v1/kv/B", NULL, 0, &d);
    tr_buf_free(&d.body);
    fx_sleep(f, 100);
    assert_false(has_response(w));

    uint64_t t0 = uv_hrtime();
    kv_put_ok(c, "A", "2");
    resp_t r = {0};
    read_resp(w, &r);
    uint64_t took_ms = (uv_hrtime() - t0) / 1000000;
    assert_true(took_ms < 50);
    assert_int_equal(r.status, 200);
    assert_true(index_of(&r) > idx);
    json_t *arr = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(json_array_get(arr, 0), "Value")),
                        "Mg==");
    json_decref(arr);
    assert_int_equal(metric("trellis_registry_kv_watchers"), 0);

    /* An index older than the result answers at once. */
    snprintf(target, sizeof(target), "/v1/kv/A?index=%llu", (unsigned long long)idx);
    call(w, "GET", target, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_blocking_prefix_delete(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0), *w = client_open(f, 1), *k = client_open(f, 2);
    kv_put_ok(c, "p/x", "1");
    kv_put_ok(c, "p/y", "2");
    kv_put_ok(c, "q", "3");
    uint64_t idx = get_index(c, "/v1/kv/p/?recurse");
    char target[96];
    snprintf(target, sizeof(target), "/v1/kv/p/?recurse&index=%llu", (unsigned long long)idx);
    send_req(w, "GET", target, NULL, 0);
    snprintf(target, sizeof(target), "/v1/kv/p?keys&index=%llu", (unsigned long long)idx);
    send_req(k, "GET", target, NULL, 0);
    kv_put_ok(c, "q", "4");
    fx_sleep(f, 50);
    assert_false(has_response(w));
    assert_false(has_response(k));

    resp_t r = {0};
    call(c, "DELETE", "/v1/kv/p/x", NULL, 0, &r);
    uint64_t t0 = uv_hrtime();
    read_resp(w, &r);
    assert_true((uv_hrtime() - t0) / 1000000 < 50);
    assert_int_equal(r.status, 200);
    uint64_t after = index_of(&r);
    assert_true(after > idx);
    json_t *arr = body_json(&r);
    assert_int_equal(json_array_size(arr), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(arr, 0), "Key")), "p/y");
    json_decref(arr);
    read_resp(k, &r);
    assert_string_equal(r.body.data, "[\"p/y\"]");
    assert_int_equal(index_of(&r), after);

    /* A recursive delete above the prefix wakes it too; the empty result is a 404. */
    snprintf(target, sizeof(target), "/v1/kv/p/?recurse&index=%llu", (unsigned long long)after);
    send_req(w, "GET", target, NULL, 0);
    fx_sleep(f, 20);
    call(c, "DELETE", "/v1/kv/?recurse", NULL, 0, &r);
    read_resp(w, &r);
    assert_int_equal(r.status, 404);
    assert_true(index_of(&r) > after);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_blocking_delete_gives_404(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0), *w = client_open(f, 1);
    kv_put_ok(c, "gone", "1");
    uint64_t idx = get_index(c, "/v1/kv/gone");
    char target[96];
    snprintf(target, sizeof(target), "/v1/kv/gone?index=%llu", (unsigned long long)idx);
    send_req(w, "GET", target, NULL, 0);
    fx_sleep(f, 20);
    resp_t r = {0};
    call(c, "DELETE", "/v1/kv/gone", NULL, 0, &r);
    read_resp(w, &r);
    assert_int_equal(r.status, 404);
    assert_int_equal(r.body.len, 0);
    assert_true(index_of(&r) > idx);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_blocking_timeout(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0), *w = client_open(f, 1);
    kv_put_ok(c, "t", "1");
    kv_put_ok(c, "other", "1");
    uint64_t idx = get_index(c, "/v1/kv/t");
    char target[96];
    snprintf(target, sizeof(target), "/v1/kv/t?index=%llu&wait=100ms", (unsigned long long)idx);
    uint64_t t0 = uv_hrtime();
    send_req(w, "GET", target, NULL, 0);
    resp_t r = {0};
    read_resp(w, &r);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_true(ms >= 95 && ms < 1000); /* 100 ms plus up to 100/16 of jitter */
    assert_int_equal(r.status, 200);
    assert_int_equal(index_of(&r), idx);

    /* A key that never existed times out with the store's current index, even 404. */
    uint64_t cur = get_index(c, "/v1/kv/nothing");
    snprintf(target, sizeof(target), "/v1/kv/nothing?index=%llu&wait=100ms",
             (unsigned long long)cur);
    call(w, "GET", target, NULL, 0, &r);
    assert_int_equal(r.status, 404);
    assert_int_equal(index_of(&r), cur);
    tr_buf_free(&r.body);
    fx_finish(f);
}

/* A client killed mid-wait (RST): on_abort drops the watcher at once. */
static void test_blocking_client_disconnect(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0), *w = client_open(f, 1);
    kv_put_ok(c, "d", "1");
    uint64_t idx = get_index(c, "/v1/kv/d");
    char target[96];
    snprintf(target, sizeof(target), "/v1/kv/d?index=%llu&wait=10s", (unsigned long long)idx);
    send_req(w, "GET", target, NULL, 0);
    fx_sleep(f, 20);
    assert_int_equal(metric("trellis_registry_kv_watchers"), 1);
    w->closing = true;
    assert_int_equal(uv_tcp_close_reset(&w->tcp, on_client_closed), 0);
    RUN_UNTIL(f, tr_http_server_connections(f->srv) == 1);
    assert_int_equal(metric("trellis_registry_kv_watchers"), 0);
    kv_put_ok(c, "d", "2"); /* notifying must not touch the gone watcher */
    fx_finish(f);
}

/*
 * A client that closes (FIN) while its blocking query waits has gone, as nginx treats it:
 * the watcher is dropped at once, not when its 60 s wait ends.
 */
static void test_blocking_client_half_close(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0), *w = client_open(f, 1);
    kv_put_ok(c, "h", "1");
    uint64_t idx = get_index(c, "/v1/kv/h");
    char target[96];
    snprintf(target, sizeof(target), "/v1/kv/h?index=%llu&wait=60s", (unsigned long long)idx);
    send_req(w, "GET", target, NULL, 0);
    fx_sleep(f, 20);
    client_close(w);
    RUN_UNTIL(f, tr_http_server_connections(f->srv) == 1);
    assert_int_equal(metric("trellis_registry_kv_watchers"), 0);
    fx_finish(f);
}

static void test_close_answers_watchers(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0), *w = client_open(f, 1);
    kv_put_ok(c, "z", "1");
    uint64_t idx = get_index(c, "/v1/kv/z");
    char target[96];
    snprintf(target, sizeof(target), "/v1/kv/z?index=%llu", (unsigned long long)idx);
    send_req(w, "GET", target, NULL, 0);
    fx_sleep(f, 20);
    kv_store_close(f);
    resp_t r = {0};
    read_resp(w, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(index_of(&r), idx);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void expect_problem(client_t *c, const char *method, const char *target, int status,
                           const char *detail_part)
{
    resp_t r = {0};
    call(c, method, target, method[0] == 'P' ? "v" : NULL, method[0] == 'P' ? 1 : 0, &r);
    assert_int_equal(r.status, status);
    assert_string_equal(hdr(&r, "Content-Type"), "application/problem+json");
    json_t *j = body_json(&r);
    const char *detail = json_string_value(json_object_get(j, "detail"));
    assert_non_null(detail);
    if (!strstr(detail, detail_part)) fail_msg("detail \"%s\" lacks \"%s\"", detail, detail_part);
    json_decref(j);
    tr_buf_free(&r.body);
}

static void test_bad_inputs(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    expect_problem(c, "PUT", "/v1/kv/x?cas=abc", 400, "cas=abc");
    expect_problem(c, "PUT", "/v1/kv/x?flags=-1", 400, "flags=-1");
    expect_problem(c, "PUT", "/v1/kv/x?flags=18446744073709551616", 400, "unsigned 64-bit");
    expect_problem(c, "DELETE", "/v1/kv/x?cas=", 400, "cas=");
    expect_problem(c, "GET", "/v1/kv/x?index=1&wait=10x", 400, "wait=10x");
    expect_problem(c, "GET", "/v1/kv/x?index=1&wait=10", 400, "unit");
    expect_problem(c, "GET", "/v1/kv/x?index=-3", 400, "index=-3");
    expect_problem(c, "PUT", "/v1/kv/", 400, "missing key name");
    expect_problem(c, "DELETE", "/v1/kv/", 400, "missing key name");
    expect_problem(c, "GET", "/v1/kv/", 400, "missing key name");
    expect_problem(c, "PUT", "/v1/kv//lead", 400, "must not begin with a '/'");
    expect_problem(c, "PUT", "/v1/kv/bad%ff", 400, "UTF-8");
    expect_problem(c, "PUT", "/v1/kv/l?acquire=abc", 500, "invalid session");
    expect_problem(c, "DELETE", "/v1/kv/l?recurse&cas=1", 400, "recurse and cas");
    expect_problem(c, "POST", "/v1/kv/x", 405, "POST");
    /* Nothing of the above was written. */
    expect_json(c, "/v1/kv/?keys", 200, "[]");

    size_t big = 600 * 1024;
    char *value = calloc(1, big);
    resp_t r = {0};
    call(c, "PUT", "/v1/kv/big", value, big, &r);
    assert_int_equal(r.status, 413);
    assert_string_equal(hdr(&r, "Content-Type"), "application/problem+json");
    free(value);
    RUN_UNTIL(f, c->eof);

    /* Exactly 512 KiB is allowed, as in Consul. */
    c = client_open(f, 1);
    value = calloc(1, 512 * 1024);
    call(c, "PUT", "/v1/kv/big", value, 512 * 1024, &r);
    assert_int_equal(r.status, 200);
    free(value);
    call(c, "GET", "/v1/kv/big?raw", NULL, 0, &r);
    assert_int_equal(r.body.len, 512 * 1024);
    tr_buf_free(&r.body);
    fx_finish(f);
}

/* A chunked body gives no length up front: the limit applies while it streams in. */
static void test_chunked_too_large(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    const char *head = "PUT /v1/kv/big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    client_send(c, head, strlen(head));
    char *chunk = calloc(1, 64 * 1024 + 32);
    int n = snprintf(chunk, 32, "10000\r\n");
    memset(chunk + n, 'a', 64 * 1024);
    memcpy(chunk + n + 64 * 1024, "\r\n", 2);
    for (int i = 0; i < 10 && !has_response(c) && !c->eof; i++) {
        client_send(c, chunk, (size_t)n + 64 * 1024 + 2);
        fx_sleep(f, 5);
    }
    free(chunk);
    resp_t r = {0};
    read_resp(c, &r);
    assert_int_equal(r.status, 413);
    tr_buf_free(&r.body);
    client_t *d = client_open(f, 1);
    expect_json(d, "/v1/kv/big", 404, "");
    fx_finish(f);
}

static void test_many_keys(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    /* Pipelined writes in reverse order: every insert lands at the front of the index. */
    enum { N = 2000 };
    tr_buf_t b = TR_BUF_INIT;
    for (int i = N - 1; i >= 0; i--)
        tr_buf_printf(&b, "PUT /v1/kv/m/%05d HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nv", i);
    client_send(c, b.data, b.len);
    tr_buf_free(&b);
    resp_t r = {0};
    for (int i = 0; i < N; i++) {
        read_resp(c, &r);
        assert_int_equal(r.status, 200);
    }
    call(c, "GET", "/v1/kv/m/?keys", NULL, 0, &r);
    json_t *arr = body_json(&r);
    assert_int_equal(json_array_size(arr), N);
    assert_string_equal(json_string_value(json_array_get(arr, 0)), "m/00000");
    assert_string_equal(json_string_value(json_array_get(arr, N - 1)), "m/01999");
    json_decref(arr);
    assert_int_equal(metric("trellis_registry_kv_keys"), N);
    tr_buf_free(&r.body);
    fx_finish(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_delete),
        cmocka_unit_test(test_values_binary_empty_raw),
        cmocka_unit_test(test_flags_and_cas),
        cmocka_unit_test(test_recurse_keys_separator),
        cmocka_unit_test(test_index_monotonic),
        cmocka_unit_test(test_restart_restores),
        cmocka_unit_test(test_blocking_exact_key),
        cmocka_unit_test(test_blocking_prefix_delete),
        cmocka_unit_test(test_blocking_delete_gives_404),
        cmocka_unit_test(test_blocking_timeout),
        cmocka_unit_test(test_blocking_client_disconnect),
        cmocka_unit_test(test_blocking_client_half_close),
        cmocka_unit_test(test_close_answers_watchers),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_chunked_too_large),
        cmocka_unit_test(test_many_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
