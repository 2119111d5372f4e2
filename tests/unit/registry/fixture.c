/* Shared fixture for the registry unit tests (see fixture.h). Test-only code. */
#include "fixture.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "trellis/metrics.h"
#include "trellis/net.h"

/* ---- loop helpers */

void fx_on_deadline(uv_timer_t *t)
{
    ((fx_t *)t->data)->timed_out = true;
}

static void on_sleep(uv_timer_t *t)
{
    ((fx_t *)t->data)->slept = true;
}

void fx_sleep(fx_t *f, uint64_t ms)
{
    f->slept = false;
    uv_timer_start(&f->sleep, on_sleep, ms, 0);
    RUN_UNTIL(f, f->slept);
}

/* ---- the client side */

static void on_client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char space[64 * 1024];
    *buf = uv_buf_init(space, sizeof(space));
}

void on_client_closed(uv_handle_t *h)
{
    ((client_t *)h->data)->closed = true;
}

void client_close(client_t *c)
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

client_t *client_open(fx_t *f, int i)
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

void client_send(client_t *c, const char *data, size_t len)
{
    cwrite_t *w = malloc(sizeof(*w) + len);
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    assert_int_equal(uv_write(&w->w, (uv_stream_t *)&c->tcp, &b, 1, on_client_write), 0);
}

void send_req(client_t *c, const char *method, const char *target, const void *body, size_t len)
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

size_t response_len(const tr_buf_t *in)
{
    const char *s = tr_buf_cstr((tr_buf_t *)in);
    const char *end = strstr(s, "\r\n\r\n");
    if (!end) return 0;
    size_t head = (size_t)(end - s) + 4;
    const char *cl = strcasestr(s, "\r\nContent-Length: ");
    size_t body = cl && cl < end ? strtoul(cl + 18, NULL, 10) : 0;
    return in->len >= head + body ? head + body : 0;
}

bool has_response(client_t *c)
{
    return response_len(&c->in) > 0;
}

void read_resp(client_t *c, resp_t *r)
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

const char *hdr(const resp_t *r, const char *name)
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

uint64_t index_of(const resp_t *r)
{
    const char *v = hdr(r, "X-Consul-Index");
    assert_non_null(v);
    return strtoull(v, NULL, 10);
}

void call(client_t *c, const char *method, const char *target, const void *body, size_t len,
          resp_t *r)
{
    send_req(c, method, target, body, len);
    read_resp(c, r);
}

json_t *body_json(const resp_t *r)
{
    json_error_t e;
    json_t *j = json_loadb(r->body.data, r->body.len, 0, &e);
    if (!j) fail_msg("not JSON (%s): %s", e.text, r->body.data);
    return j;
}

uint64_t jint(const json_t *o, const char *k)
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

fx_t *fx_start(const fx_ops_t *ops)
{
    fx_t *f = calloc(1, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->deadline);
    uv_timer_init(&f->loop, &f->sleep);
    f->deadline.data = f->sleep.data = f;
    f->ops = ops;
    if (ops->dir_template) {
        snprintf(f->dir, sizeof(f->dir), "%s", ops->dir_template);
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->db, sizeof(f->db), "%s/registry.db", f->dir);
    }
    ops->open(f);
    struct sockaddr_storage addr, bound;
    assert_int_equal(tr_net_parse_addr("127.0.0.1:0", &addr), 0);
    int fd;
    assert_int_equal(tr_net_listen(&addr, 1, 128, &fd, &bound), 0);
    f->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    tr_http_server_options_t opts = {.handler = ops->handler, .handler_data = f};
    assert_int_equal(tr_http_server_start(&f->loop, fd, &opts, &f->srv), 0);
    return f;
}

bool clients_closed(fx_t *f)
{
    for (int i = 0; i < MAX_CLIENT; i++)
        if (f->c[i].used && !f->c[i].closed) return false;
    return true;
}

void fx_finish(fx_t *f)
{
    for (int i = 0; i < MAX_CLIENT; i++)
        client_close(&f->c[i]);
    tr_http_server_close(f->srv, true, on_server_done, f);
    RUN_UNTIL(f, f->srv_done && clients_closed(f));
    if (f->kv || f->cat || f->ev) f->ops->close(f); /* unless a test closed it */
    uv_close((uv_handle_t *)&f->deadline, NULL);
    uv_close((uv_handle_t *)&f->sleep, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    for (int i = 0; i < MAX_CLIENT; i++)
        tr_buf_free(&f->c[i].in);
    if (f->dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
        assert_int_equal(system(cmd), 0);
    }
    free(f);
}

void kv_put_ok(client_t *c, const char *key, const char *value)
{
    char target[512];
    snprintf(target, sizeof(target), "/v1/kv/%s", key);
    resp_t r = {0};
    call(c, "PUT", target, value, strlen(value), &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "true");
    tr_buf_free(&r.body);
}

json_t *kv_get_entry(client_t *c, const char *key, json_t **arr, resp_t *r)
{
    char target[512];
    snprintf(target, sizeof(target), "/v1/kv/%s", key);
    call(c, "GET", target, NULL, 0, r);
    assert_int_equal(r->status, 200);
    *arr = body_json(r);
    assert_int_equal(json_array_size(*arr), 1);
    return json_array_get(*arr, 0);
}

void store_open(fx_t *f)
{
    char err[256] = "";
    if (tr_store_open(f->db, &f->st, err, sizeof(err))) fail_msg("store: %s", err);
}

void store_close(fx_t *f)
{
    tr_store_close(f->st);
    f->st = NULL;
}

void kv_store_open(fx_t *f)
{
    char err[256] = "";
    store_open(f);
    if (tr_kv_open(&f->loop, f->st, &f->kv, err, sizeof(err))) fail_msg("kv: %s", err);
}

void kv_store_close(fx_t *f)
{
    tr_kv_close(f->kv);
    f->kv = NULL;
    store_close(f);
}

void kv_route(tr_kv_t *kv, tr_http_req_t *req)
{
    static const char prefix[] = "/v1/kv/";
    size_t plen = sizeof(prefix) - 1;
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
    tr_kv_handle(kv, req, key);
}

/* GETs target (200 expected) and returns the parsed body; *index gets X-Consul-Index. */
json_t *get_json(client_t *c, const char *target, uint64_t *index)
{
    resp_t r = {0};
    call(c, "GET", target, NULL, 0, &r);
    if (r.status != 200) fail_msg("GET %s: %d %s", target, r.status, r.body.data);
    if (index) *index = index_of(&r);
    json_t *j = body_json(&r);
    tr_buf_free(&r.body);
    return j;
}

const char *json_str(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v)) fail_msg("%s is not a string", k);
    return json_string_value(v);
}

double metric(const char *name)
{
    tr_buf_t b = TR_BUF_INIT;
    tr_metrics_render(tr_metrics_default(), &b);
    char pat[128];
    snprintf(pat, sizeof(pat), "\n%s ", name);
    const char *p = strstr(tr_buf_cstr(&b), pat);
    double v = p ? strtod(p + strlen(pat), NULL) : -1;
    tr_buf_free(&b);
    return v;
}
