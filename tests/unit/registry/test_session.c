/* Unit tests for Consul sessions and KV locks, over the real HTTP server and a raw client. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "registry/kv.h"
#include "registry/session.h"
#include "trellis/http.h"
#include "trellis/net.h"

#define MAX_CLIENT 3
#define WAIT_MS    5000

typedef struct fx_s fx_t;

typedef struct client_s {
    uv_tcp_t tcp;
    uv_connect_t connect;
    fx_t *f;
    tr_buf_t in;
    bool used, connected, eof, closing, closed;
    int error;
} client_t;

/* One parsed response. */
typedef struct resp_s {
    int status;
    char head[2048];
    tr_buf_t body;
} resp_t;

struct fx_s {
    uv_loop_t loop;
    uv_timer_t deadline, sleep;
    bool timed_out, slept, srv_done;
    tr_http_server_t *srv;
    int port;
    char dir[64], db[96];
    tr_store_t *st;
    tr_kv_t *kv;
    tr_session_t *sess;
    client_t c[MAX_CLIENT];
};

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

static void on_sleep(uv_timer_t *t)
{
    ((fx_t *)t->data)->slept = true;
}

static void fx_sleep(fx_t *f, uint64_t ms)
{
    f->slept = false;
    uv_timer_start(&f->sleep, on_sleep, ms, 0);
    RUN_UNTIL(f, f->slept);
}

/* ---- the server side: a router like the registry's for /v1/kv/ and /v1/session/ */

static void on_request(tr_http_req_t *req, void *data)
{
    fx_t *f = data;
    static const char prefix[] = "/v1/kv/";
    size_t plen = sizeof(prefix) - 1;
    if (req->path_len >= 12 && !memcmp(req->path, "/v1/session/", 12)) {
        tr_session_handle(f->sess, req);
        return;
    }
    if (req->path_len < plen || memcmp(req->path, prefix, plen) != 0) {
        tr_http_res_send(req, 404, NULL, NULL, 0);
        return;
    }
    size_t n = req->path_len - plen;
    char *key = tr_http_req_alloc(req, n + 1);
    if (tr_http_percent_decode(key, req->path + plen, n) < 0) {
        tr_http_res_send(req, 400, NULL, NULL, 0);
        return;
    }
    tr_kv_handle(f->kv, req, key);
}

static void kv_open(fx_t *f)
{
    char err[256] = "";
    if (tr_store_open(f->db, &f->st, err, sizeof(err))) fail_msg("store: %s", err);
    if (tr_kv_open(&f->loop, f->st, &f->kv, err, sizeof(err))) fail_msg("kv: %s", err);
    if (tr_session_open(&f->loop, f->st, f->kv, "node1", &f->sess, err, sizeof(err)))
        fail_msg("session: %s", err);
}

static void kv_close(fx_t *f)
{
    tr_session_close(f->sess);
    f->sess = NULL;
    tr_kv_close(f->kv);
    f->kv = NULL;
    tr_store_close(f->st);
    f->st = NULL;
}

/* ---- the client side */

static void on_client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char space[64 * 1024];
    *buf = uv_buf_init(space, sizeof(space));
}

static void on_client_closed(uv_handle_t *h)
{
    ((client_t *)h->data)->closed = true;
}

static void client_close(client_t *c)
{
    if (!c->used || c->closing) return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, on_client_closed);
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    client_t *c = s->data;
    if (nread > 0) tr_buf_append(&c->in, buf->base, (size_t)nread);
    if (nread < 0) {
        c->eof = true;
        client_close(c);
    }
}

static void on_client_connect(uv_connect_t *req, int status)
{
    client_t *c = req->data;
    c->error = status;
    if (status < 0) return;
    c->connected = true;
    uv_read_start((uv_stream_t *)&c->tcp, on_client_alloc, on_client_read);
}

static client_t *client_open(fx_t *f, int i)
{
    client_t *c = &f->c[i];
    tr_buf_free(&c->in);
    memset(c, 0, sizeof(*c));
    c->f = f;
    c->used = true;
    uv_tcp_init(&f->loop, &c->tcp);
    c->tcp.data = c;
    c->connect.data = c;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", f->port, &a);
    assert_int_equal(uv_tcp_connect(&c->connect, &c->tcp, (struct sockaddr *)&a, on_client_connect),
                     0);
    RUN_UNTIL(f, c->connected || c->error);
    assert_true(c->connected);
    return c;
}

typedef struct cwrite_s {
    uv_write_t w;
    char data[];
} cwrite_t;

static void on_client_write(uv_write_t *w, int status)
{
    free(w);
}

static void client_send(client_t *c, const char *data, size_t len)
{
    cwrite_t *w = malloc(sizeof(*w) + len);
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    assert_int_equal(uv_write(&w->w, (uv_stream_t *)&c->tcp, &b, 1, on_client_write), 0);
}

/* Sends one request; `body` may be NULL. */
static void send_req(client_t *c, const char *method, const char *target, const void *body,
                     size_t len)
{
    char head[1024];
    int n = snprintf(head, sizeof(head), "%s %s HTTP/1.1\r\nHost: t\r\n", method, target);
    if (body) n += snprintf(head + n, sizeof(head) - (size_t)n, "Content-Length: %zu\r\n", len);
    n += snprintf(head + n, sizeof(head) - (size_t)n, "\r\n");
    tr_buf_t b = TR_BUF_INIT;
    tr_buf_append(&b, head, (size_t)n);
    if (body) tr_buf_append(&b, body, len);
    client_send(c, b.data, b.len);
    tr_buf_free(&b);
}

/* Length of the first complete response in `in`, or 0 while it is incomplete. */
static size_t response_len(const tr_buf_t *in)
{
    const char *s = tr_buf_cstr((tr_buf_t *)in);
    const char *end = strstr(s, "\r\n\r\n");
    if (!end) return 0;
    size_t head = (size_t)(end - s) + 4;
    const char *cl = strcasestr(s, "\r\nContent-Length: ");
    size_t body = cl && cl < end ? strtoul(cl + 18, NULL, 10) : 0;
    return in->len >= head + body ? head + body : 0;
}

static bool has_response(client_t *c)
{
    return response_len(&c->in) > 0;
}

/* Waits for the next response on c and moves it from c->in into r. */
static void read_resp(client_t *c, resp_t *r)
{
    RUN_UNTIL(c->f, has_response(c) || c->eof);
    size_t len = response_len(&c->in);
    assert_true(len > 0);
    const char *s = c->in.data;
    const char *end = strstr(s, "\r\n\r\n");
    size_t head = (size_t)(end - s) + 2;
    assert_true(head < sizeof(r->head));
    memcpy(r->head, s, head);
    r->head[head] = '\0';
    r->status = atoi(s + 9);
    tr_buf_reset(&r->body);
    tr_buf_append(&r->body, end + 4, len - head - 2);
    tr_buf_cstr(&r->body);
    tr_buf_consume(&c->in, len);
}

/* A header's value (copied into a static buffer), or NULL. */
static const char *hdr(const resp_t *r, const char *name)
{
    static char v[256];
    char pat[96];
    snprintf(pat, sizeof(pat), "\r\n%s: ", name);
    const char *p = strcasestr(r->head, pat);
    if (!p) return NULL;
    p += strlen(pat);
    size_t n = strcspn(p, "\r");
    snprintf(v, sizeof(v), "%.*s", (int)n, p);
    return v;
}

static uint64_t index_of(const resp_t *r)
{
    const char *v = hdr(r, "X-Consul-Index");
    assert_non_null(v);
    return strtoull(v, NULL, 10);
}

static void call(client_t *c, const char *method, const char *target, const void *body, size_t len,
                 resp_t *r)
{
    send_req(c, method, target, body, len);
    read_resp(c, r);
}

static void put_ok(client_t *c, const char *key, const char *value)
{
    char target[512];
    snprintf(target, sizeof(target), "/v1/kv/%s", key);
    resp_t r = {0};
    call(c, "PUT", target, value, strlen(value), &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "true");
    tr_buf_free(&r.body);
}

static json_t *body_json(const resp_t *r)
{
    json_error_t e;
    json_t *j = json_loadb(r->body.data, r->body.len, 0, &e);
    if (!j) fail_msg("not JSON (%s): %s", e.text, r->body.data);
    return j;
}

static uint64_t jint(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    assert_true(json_is_integer(v));
    return (uint64_t)json_integer_value(v);
}

/* GETs one key and returns its only entry (caller decrefs the returned array). */
static json_t *get_entry(client_t *c, const char *key, json_t **arr, resp_t *r)
{
    char target[512];
    snprintf(target, sizeof(target), "/v1/kv/%s", key);
    call(c, "GET", target, NULL, 0, r);
    assert_int_equal(r->status, 200);
    *arr = body_json(r);
    assert_int_equal(json_array_size(*arr), 1);
    return json_array_get(*arr, 0);
}

/* ---- fixture */

static void on_server_done(void *data)
{
    ((fx_t *)data)->srv_done = true;
}

static fx_t *fx_start(void)
{
    fx_t *f = calloc(1, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->deadline);
    uv_timer_init(&f->loop, &f->sleep);
    f->deadline.data = f->sleep.data = f;
    snprintf(f->dir, sizeof(f->dir), "/tmp/tr-sess-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->db, sizeof(f->db), "%s/registry.db", f->dir);
    kv_open(f);
    struct sockaddr_storage addr, bound;
    assert_int_equal(tr_net_parse_addr("127.0.0.1:0", &addr), 0);
    int fd;
    assert_int_equal(tr_net_listen(&addr, 1, 128, &fd, &bound), 0);
    f->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    tr_http_server_options_t opts = {.handler = on_request, .handler_data = f};
    assert_int_equal(tr_http_server_start(&f->loop, fd, &opts, &f->srv), 0);
    return f;
}

static bool clients_closed(fx_t *f)
{
    for (int i = 0; i < MAX_CLIENT; i++)
        if (f->c[i].used && !f->c[i].closed) return false;
    return true;
}

static void fx_finish(fx_t *f)
{
    for (int i = 0; i < MAX_CLIENT; i++)
        client_close(&f->c[i]);
    tr_http_server_close(f->srv, true, on_server_done, f);
    RUN_UNTIL(f, f->srv_done && clients_closed(f));
    if (f->kv) kv_close(f);
    uv_close((uv_handle_t *)&f->deadline, NULL);
    uv_close((uv_handle_t *)&f->sleep, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    for (int i = 0; i < MAX_CLIENT; i++)
        tr_buf_free(&f->c[i].in);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
}

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
    fx_t *f = fx_start();
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
    fx_t *f = fx_start();
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
    fx_t *f = fx_start();
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
    fx_t *f = fx_start();
    client_t *c = client_open(f, 0);
    char a[37], b[37];
    snprintf(a, sizeof(a), "%s", create(c, NULL));
    snprintf(b, sizeof(b), "%s", create(c, "{\"Checks\":[]}"));
    resp_t r = {0};
    assert_int_equal(lock_op(c, "acquire", "svc/leader", a, "one", &r), 200);
    assert_string_equal(r.body.data, "true");
    json_t *arr, *e = get_entry(c, "svc/leader", &arr, &r);
    assert_string_equal(jstr(e, "Session"), a);
    assert_int_equal(jint(e, "LockIndex"), 1);
    assert_string_equal(jstr(e, "Value"), "b25l"); /* "one" */
    json_decref(arr);

    expect_lock(c, "acquire", "svc/leader", a, true); /* the holder again: no new lock */
    expect_lock(c, "acquire", "svc/leader", b, false);
    expect_lock(c, "release", "svc/leader", b, false);
    expect_lock(c, "release", "missing", a, false);
    e = get_entry(c, "svc/leader", &arr, &r);
    assert_string_equal(jstr(e, "Session"), a);
    assert_int_equal(jint(e, "LockIndex"), 1);
    assert_string_equal(jstr(e, "Value"), "dg=="); /* "v": the holder's write went in */
    json_decref(arr);

    put_ok(c, "svc/leader", "plain"); /* a plain PUT keeps the lock, as in Consul */
    e = get_entry(c, "svc/leader", &arr, &r);
    assert_string_equal(jstr(e, "Session"), a);
    json_decref(arr);

    expect_lock(c, "release", "svc/leader", a, true);
    e = get_entry(c, "svc/leader", &arr, &r);
    assert_null(json_object_get(e, "Session"));
    assert_int_equal(jint(e, "LockIndex"), 1);
    json_decref(arr);
    expect_lock(c, "acquire", "svc/leader", b, true); /* an explicit release has no delay */
    e = get_entry(c, "svc/leader", &arr, &r);
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
    fx_t *f = fx_start();
    client_t *c = client_open(f, 0), *w = client_open(f, 1);
    char a[37], b[37], d[37];
    snprintf(a, sizeof(a), "%s", create(c, "{\"LockDelay\":\"300ms\"}"));
    snprintf(b, sizeof(b), "%s", create(c, NULL));
    snprintf(d, sizeof(d), "%s", create(c, "{\"Behavior\":\"delete\",\"LockDelay\":\"0s\"}"));
    expect_lock(c, "acquire", "lock/a", a, true);
    expect_lock(c, "acquire", "lock/d", d, true);
    resp_t r = {0};
    json_t *arr, *e = get_entry(c, "lock/a", &arr, &r);
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
    fx_t *f = fx_start();
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
    json_t *e = get_entry(c, "ttl/k", &arr, &r);
    assert_null(json_object_get(e, "Session"));
    json_decref(arr);
    tr_buf_free(&r.body);
    fx_finish(f);
}

static void test_persistence(void **state)
{
    fx_t *f = fx_start();
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
    json_t *e = get_entry(c, "p/k", &arr, &r);
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
