/* Unit tests for the user event endpoints (fire, list, blocking), over the real HTTP server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "registry/event.h"
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
    tr_event_t *ev;
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

/* ---- the server side: the event ring, then 404 like the registry's router */

static void on_request(tr_http_req_t *req, void *data)
{
    fx_t *f = data;
    if (!tr_event_handle(f->ev, req)) tr_http_res_send(req, 404, NULL, NULL, 0);
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
    assert_int_equal(tr_event_open(&f->loop, &f->ev), 0);
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
    tr_event_close(f->ev);
    f->ev = NULL;
    uv_close((uv_handle_t *)&f->deadline, NULL);
    uv_close((uv_handle_t *)&f->sleep, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    for (int i = 0; i < MAX_CLIENT; i++)
        tr_buf_free(&f->c[i].in);
    free(f);
}

/* ---- helpers */

static json_t *fire(client_t *c, const char *target, const char *body)
{
    resp_t r = {0};
    call(c, "PUT", target, body, body ? strlen(body) : 0, &r);
    if (r.status != 200) fail_msg("PUT %s: %d %s", target, r.status, r.body.data);
    json_t *j = body_json(&r);
    tr_buf_free(&r.body);
    return j;
}

static json_t *list(client_t *c, const char *target, uint64_t *index)
{
    resp_t r = {0};
    call(c, "GET", target, NULL, 0, &r);
    if (r.status != 200) fail_msg("GET %s: %d %s", target, r.status, r.body.data);
    *index = index_of(&r);
    json_t *j = body_json(&r);
    tr_buf_free(&r.body);
    return j;
}

static const char *jstr(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v)) fail_msg("%s is not a string", k);
    return json_string_value(v);
}

static int status_of(client_t *c, const char *method, const char *target, const char *body)
{
    resp_t r = {0};
    call(c, method, target, body, body ? strlen(body) : 0, &r);
    tr_buf_free(&r.body);
    return r.status;
}

/* ---- tests */

/* The index is what consul-api's IDToIndex computes: the UUID's two halves XORed. */
static void test_id_index(void **state)
{
    assert_int_equal(tr__event_id_index("00000000-0000-0001-0000-000000000002"), 3);
    assert_int_equal(tr__event_id_index("ffffffff-ffff-ffff-0000-000000000000"), UINT64_MAX);
    assert_int_equal(tr__event_id_index("0000000f-0000-0000-0000-0000000000f0"),
                     0xf00000000ULL ^ 0xf0);
    assert_int_equal(tr__event_id_index("not-a-uuid"), 0);
    assert_int_equal(tr__event_id_index("0000000g-0000-0000-0000-000000000000"), 0);
    assert_int_equal(tr__event_id_index(NULL), 0);
}

static void test_fire_and_list(void **state)
{
    fx_t *f = fx_start();
    client_t *c = client_open(f, 0);
    json_t *a = fire(c, "/v1/event/fire/deploy?node=web.*&service=api&tag=v1", "hi");
    assert_string_equal(jstr(a, "Name"), "deploy");
    assert_string_equal(jstr(a, "Payload"), "aGk=");
    assert_string_equal(jstr(a, "NodeFilter"), "web.*");
    assert_string_equal(jstr(a, "ServiceFilter"), "api");
    assert_string_equal(jstr(a, "TagFilter"), "v1");
    assert_int_equal(jint(a, "Version"), 1);
    assert_int_equal(jint(a, "LTime"), 1);
    assert_int_equal(strlen(jstr(a, "ID")), 36);
    json_t *b = fire(c, "/v1/event/fire/other", NULL);
    assert_true(json_is_null(json_object_get(b, "Payload")));
    assert_string_equal(jstr(b, "NodeFilter"), "");
    assert_int_equal(jint(b, "LTime"), 2);
    assert_string_not_equal(jstr(a, "ID"), jstr(b, "ID"));

    uint64_t idx;
    json_t *all = list(c, "/v1/event/list", &idx);
    assert_int_equal(json_array_size(all), 2);
    assert_string_equal(jstr(json_array_get(all, 0), "ID"), jstr(a, "ID"));
    assert_string_equal(jstr(json_array_get(all, 1), "ID"), jstr(b, "ID"));
    assert_int_equal(idx, tr__event_id_index(jstr(b, "ID")));
    json_t *some = list(c, "/v1/event/list?name=deploy", &idx);
    assert_int_equal(json_array_size(some), 1);
    assert_string_equal(jstr(json_array_get(some, 0), "Payload"), "aGk=");
    assert_int_equal(idx, tr__event_id_index(jstr(a, "ID")));
    json_t *none = list(c, "/v1/event/list?name=nothing", &idx);
    assert_int_equal(json_array_size(none), 0);
    assert_int_equal(idx, 1); /* never 0, so watchers do not spin */
    json_decref(a);
    json_decref(b);
    json_decref(all);
    json_decref(some);
    json_decref(none);
    fx_finish(f);
}

static void test_blocking_list(void **state)
{
    fx_t *f = fx_start();
    client_t *c = client_open(f, 0), *w = client_open(f, 1);
    json_decref(fire(c, "/v1/event/fire/a", NULL));
    uint64_t idx, idx2;
    json_decref(list(c, "/v1/event/list", &idx));

    /* A wait that sees no new event times out with the same index. */
    char target[128];
    snprintf(target, sizeof(target), "/v1/event/list?index=%llu&wait=50ms",
             (unsigned long long)idx);
    json_t *same = list(w, target, &idx2);
    assert_int_equal(idx2, idx);
    assert_int_equal(json_array_size(same), 1);
    json_decref(same);

    /* A fire wakes the blocked list with the new event. */
    snprintf(target, sizeof(target), "/v1/event/list?index=%llu&wait=5s", (unsigned long long)idx);
    send_req(w, "GET", target, NULL, 0);
    fx_sleep(f, 50);
    assert_false(has_response(w));
    json_t *e = fire(c, "/v1/event/fire/b", "x");
    resp_t r = {0};
    read_resp(w, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(index_of(&r), tr__event_id_index(jstr(e, "ID")));
    json_t *got = body_json(&r);
    assert_int_equal(json_array_size(got), 2);
    json_decref(got);
    json_decref(e);
    tr_buf_free(&r.body);

    /* A list filtered by name sleeps through other names' events. */
    json_decref(list(c, "/v1/event/list?name=a", &idx));
    snprintf(target, sizeof(target), "/v1/event/list?name=a&index=%llu&wait=5s",
             (unsigned long long)idx);
    send_req(w, "GET", target, NULL, 0);
    json_decref(fire(c, "/v1/event/fire/b", NULL));
    fx_sleep(f, 50);
    assert_false(has_response(w));
    /* Left blocked: closing the server must abort it without leaks. */
    fx_finish(f);
}

static void test_ring_is_bounded(void **state)
{
    fx_t *f = fx_start();
    client_t *c = client_open(f, 0);
    for (int i = 0; i < TR_EVENT_RING + 4; i++)
        json_decref(fire(c, "/v1/event/fire/tick", NULL));
    uint64_t idx;
    json_t *all = list(c, "/v1/event/list", &idx);
    assert_int_equal(json_array_size(all), TR_EVENT_RING);
    assert_int_equal(jint(json_array_get(all, 0), "LTime"), 5);
    assert_int_equal(jint(json_array_get(all, TR_EVENT_RING - 1), "LTime"), TR_EVENT_RING + 4);
    json_decref(all);
    fx_finish(f);
}

static void test_bad_inputs(void **state)
{
    fx_t *f = fx_start();
    client_t *c = client_open(f, 0);
    assert_int_equal(status_of(c, "GET", "/v1/event/fire/x", NULL), 405);
    assert_int_equal(status_of(c, "POST", "/v1/event/list", NULL), 405);
    assert_int_equal(status_of(c, "PUT", "/v1/event/fire/", NULL), 400);
    assert_int_equal(status_of(c, "PUT", "/v1/event/fire/x?tag=v1", NULL), 400);
    assert_int_equal(status_of(c, "PUT", "/v1/event/fire/x?node=(", NULL), 400);
    assert_int_equal(status_of(c, "GET", "/v1/event/list?index=abc", NULL), 400);
    assert_int_equal(status_of(c, "GET", "/v1/event/lists", NULL), 404);
    uint64_t idx;
    json_t *all = list(c, "/v1/event/list", &idx);
    assert_int_equal(json_array_size(all), 0); /* nothing refused was recorded */
    json_decref(all);
    char big[TR_EVENT_MAX_PAYLOAD + 2];
    memset(big, 'p', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    client_t *d = client_open(f, 1);
    assert_int_equal(status_of(d, "PUT", "/v1/event/fire/x", big), 413);
    big[TR_EVENT_MAX_PAYLOAD] = '\0';
    json_decref(fire(c, "/v1/event/fire/x", big)); /* exactly the limit is fine */
    fx_finish(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_id_index),      cmocka_unit_test(test_fire_and_list),
        cmocka_unit_test(test_blocking_list), cmocka_unit_test(test_ring_is_bounded),
        cmocka_unit_test(test_bad_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
