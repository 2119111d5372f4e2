/* Unit tests for the HTTP/1.1 server, driven over loopback by a raw client on the same loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "trellis/http.h"
#include "trellis/net.h"

#define MAX_HDRS   16
#define MAX_CLIENT 3
#define WAIT_MS    3000

typedef struct fx_s fx_t;

typedef struct client_s {
    uv_tcp_t tcp;
    uv_connect_t connect;
    fx_t *f;
    tr_buf_t in;   /* every byte received */
    tr_buf_t view; /* `in` without Date lines */
    bool used, connected, eof, closing, closed;
    int error;
} client_t;

typedef struct hdr_copy_s {
    char name[64];
    char value[256];
    uint32_t name_len, value_len;
} hdr_copy_t;

struct fx_s {
    uv_loop_t loop;
    uv_timer_t deadline, sleep, timer;
    bool timed_out, slept, srv_done;
    tr_http_server_t *srv;
    int port;
    void (*handle)(fx_t *f, tr_http_req_t *req);
    void (*tick)(fx_t *f);
    /* what the handler saw */
    int nreq, nabort, ndrain, nend, step, nrefill;
    bool refill; /* test_backpressure_socket_full: keep the socket full until told to stop */
    char method[16], path[128], query[64];
    unsigned char http_minor;
    bool expect_continue, chunked, paused, body_while_paused, saw_partial, last_write_ok;
    int64_t content_length;
    hdr_copy_t hdrs[MAX_HDRS];
    size_t nhdrs;
    tr_buf_t order; /* paths in the order the handler got them */
    tr_buf_t body;  /* request body bytes received */
    size_t written, false_at;
    tr_http_req_t *held;
    tr_http_req_t *pend[80]; /* ordered requests awaiting their answer, in arrival order */
    int npend;
    client_t c[MAX_CLIENT];
};

/* ---- loop helpers */

static void on_deadline(uv_timer_t *t)
{
    ((fx_t *)t->data)->timed_out = true;
}

/* Runs the loop until `cond` holds; fails the test if that takes longer than WAIT_MS. */
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

static void on_tick(uv_timer_t *t)
{
    fx_t *f = t->data;
    if (f->tick) f->tick(f);
}

static void fx_tick_in(fx_t *f, uint64_t ms, void (*tick)(fx_t *f))
{
    f->tick = tick;
    uv_timer_start(&f->timer, on_tick, ms, 0);
}

/* ---- the handler side */

static void on_req_abort(tr_http_req_t *req)
{
    fx_t *f = req->data;
    f->nabort++;
    if (f->held == req) f->held = NULL;
    for (int i = 0; i < f->npend; i++)
        if (f->pend[i] == req) f->pend[i] = NULL;
    uv_timer_stop(&f->timer);
}

static void record(fx_t *f, tr_http_req_t *req)
{
    f->nreq++;
    snprintf(f->method, sizeof(f->method), "%s", req->method);
    snprintf(f->path, sizeof(f->path), "%.*s", (int)req->path_len, req->path);
    snprintf(f->query, sizeof(f->query), "%.*s", (int)req->query_len, req->query);
    f->http_minor = req->http_minor;
    f->expect_continue = req->expect_continue;
    f->chunked = req->chunked;
    f->content_length = req->content_length;
    f->nhdrs = req->nheaders;
    for (size_t i = 0; i < req->nheaders && i < MAX_HDRS; i++) {
        const tr_http_header_t *h = &req->headers[i];
        hdr_copy_t *d = &f->hdrs[i];
        assert_non_null(h->name);
        assert_non_null(h->value);
        assert_int_equal(h->name[h->name_len], '\0');
        assert_int_equal(h->value[h->value_len], '\0');
        assert_true(h->name_len < sizeof(d->name) && h->value_len < sizeof(d->value));
        memcpy(d->name, h->name, h->name_len + 1);
        memcpy(d->value, h->value, h->value_len + 1);
        d->name_len = h->name_len;
        d->value_len = h->value_len;
    }
    tr_buf_append(&f->order, req->path, req->path_len);
    tr_buf_append(&f->order, " ", 1);
}

static void on_request(tr_http_req_t *req, void *data)
{
    fx_t *f = data;
    record(f, req);
    req->data = f;
    req->on_abort = on_req_abort;
    f->handle(f, req);
}

static void h_hello(fx_t *f, tr_http_req_t *req)
{
    tr_http_res_send(req, 200, "text/plain", "hello", 5);
}

static void h_echo_path(fx_t *f, tr_http_req_t *req)
{
    tr_http_res_send(req, 200, NULL, req->path, req->path_len);
}

static void h_hold(fx_t *f, tr_http_req_t *req)
{
    f->held = req;
}

static void collect_body(tr_http_req_t *req, const char *data, size_t len)
{
    fx_t *f = req->data;
    if (f->paused) f->body_while_paused = true;
    tr_buf_append(&f->body, data, len);
}

static void end_echo_body(tr_http_req_t *req)
{
    fx_t *f = req->data;
    f->nend++;
    tr_http_res_send(req, 200, NULL, f->body.data, f->body.len);
}

static void h_body(fx_t *f, tr_http_req_t *req)
{
    req->on_body = collect_body;
    req->on_end = end_echo_body;
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
        c->error = nread == UV_EOF ? 0 : (int)nread;
        client_close(c);
    }
}

static void on_client_connect(uv_connect_t *req, int status)
{
    client_t *c = req->data;
    c->error = status;
    if (status < 0) return;
    c->connected = true;
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, on_client_alloc, on_client_read);
}

static client_t *client_open(fx_t *f, int i)
{
    client_t *c = &f->c[i];
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

static void client_sends(client_t *c, const char *s)
{
    client_send(c, s, strlen(s));
}

/* Writes `step` bytes at a time, letting the server read each piece before the next. */
static void client_send_split(client_t *c, const char *data, size_t len, size_t step)
{
    for (size_t off = 0; off < len && !c->closing; off += step) {
        size_t n = len - off < step ? len - off : step;
        uv_buf_t b = uv_buf_init((char *)data + off, (unsigned)n);
        assert_int_equal(uv_try_write((uv_stream_t *)&c->tcp, &b, 1), (int)n);
        uv_run(&c->f->loop, UV_RUN_NOWAIT);
        uv_run(&c->f->loop, UV_RUN_NOWAIT);
    }
}

/* What the client received, without the Date lines (their value changes every second). */
static const char *resp(client_t *c)
{
    tr_buf_reset(&c->view);
    const char *p = c->in.data, *end = c->in.data + c->in.len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *next = nl ? nl + 1 : end;
        bool line_start = p == c->in.data || p[-1] == '\n';
        if (!(line_start && nl && end - p >= 6 && !memcmp(p, "Date: ", 6)))
            tr_buf_append(&c->view, p, (size_t)(next - p));
        p = next;
    }
    return tr_buf_cstr(&c->view);
}

static bool ends_with(const client_t *c, const char *s)
{
    size_t n = strlen(s);
    return c->in.len >= n && !memcmp(c->in.data + c->in.len - n, s, n);
}

/* Status lines, not mentions of "HTTP/1.1 " inside a body. */
static size_t count_status_lines(const char *s)
{
    size_t n = strncmp(s, "HTTP/1.1 ", 9) == 0;
    for (const char *p = strstr(s, "\nHTTP/1.1 "); p; p = strstr(p + 1, "\nHTTP/1.1 "))
        n++;
    return n;
}

static size_t count_str(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void expect_response(client_t *c, const char *want)
{
    fx_t *f = c->f;
    RUN_UNTIL(f, strlen(resp(c)) >= strlen(want) || c->eof);
    assert_string_equal(resp(c), want);
}

/* ---- fixture */

static void on_server_done(void *data)
{
    ((fx_t *)data)->srv_done = true;
}

static fx_t *fx_start(tr_http_server_options_t *o, void (*handle)(fx_t *f, tr_http_req_t *req))
{
    fx_t *f = calloc(1, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->deadline);
    uv_timer_init(&f->loop, &f->sleep);
    uv_timer_init(&f->loop, &f->timer);
    f->deadline.data = f->sleep.data = f->timer.data = f;
    f->handle = handle;
    struct sockaddr_storage addr, bound;
    assert_int_equal(tr_net_parse_addr("127.0.0.1:0", &addr), 0);
    int fd;
    assert_int_equal(tr_net_listen(&addr, 1, 128, &fd, &bound), 0);
    f->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    tr_http_server_options_t opts = {0};
    if (o) opts = *o;
    opts.handler = on_request;
    opts.handler_data = f;
    assert_int_equal(tr_http_server_start(&f->loop, fd, &opts, &f->srv), 0);
    return f;
}

static bool clients_closed(fx_t *f)
{
    for (int i = 0; i < MAX_CLIENT; i++)
        if (f->c[i].used && !f->c[i].closed) return false;
    return true;
}

/* Closes everything and checks the loop has no handle left. */
static void fx_finish(fx_t *f)
{
    uv_timer_stop(&f->timer);
    if (f->srv && !f->srv_done) tr_http_server_close(f->srv, true, on_server_done, f);
    for (int i = 0; i < MAX_CLIENT; i++)
        client_close(&f->c[i]);
    RUN_UNTIL(f, f->srv_done && clients_closed(f));
    uv_close((uv_handle_t *)&f->deadline, NULL);
    uv_close((uv_handle_t *)&f->sleep, NULL);
    uv_close((uv_handle_t *)&f->timer, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    for (int i = 0; i < MAX_CLIENT; i++) {
        tr_buf_free(&f->c[i].in);
        tr_buf_free(&f->c[i].view);
    }
    tr_buf_free(&f->order);
    tr_buf_free(&f->body);
    free(f);
}

#define GET(path) "GET " path " HTTP/1.1\r\nHost: a\r\n\r\n"

/* ---- basic requests */

static void test_simple_get(void **state)
{
    fx_t *f = fx_start(NULL, h_hello);
    client_t *c = client_open(f, 0);
    client_sends(c, "GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: example\r\n\r\n");
    expect_response(
        c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello");
    assert_int_equal(count_str(tr_buf_cstr(&c->in), "\r\nDate: "), 1);
    assert_int_equal(f->nreq, 1);
    assert_string_equal(f->method, "GET");
    assert_string_equal(f->path, "/a/b");
    assert_string_equal(f->query, "x=1&y=2");
    assert_int_equal(f->http_minor, 1);
    assert_int_equal(f->content_length, -1);
    assert_int_equal(f->nhdrs, 1);
    assert_string_equal(f->hdrs[0].name, "Host");
    assert_string_equal(f->hdrs[0].value, "example");
    /* Keep-alive: the connection stays open and serves the next request. */
    fx_sleep(f, 20);
    assert_false(c->eof);
    assert_int_equal(tr_http_server_connections(f->srv), 1);
    tr_buf_reset(&c->in);
    client_sends(c, GET("/again"));
    expect_response(
        c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello");
    assert_string_equal(f->path, "/again");
    assert_string_equal(f->query, "");
    fx_finish(f);
}

static void test_http10(void **state)
{
    fx_t *f = fx_start(NULL, h_hello);
    client_t *c = client_open(f, 0);
    client_sends(c, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    expect_response(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                       "Connection: keep-alive\r\n\r\nhello");
    tr_buf_reset(&c->in);
    client_sends(c, "GET / HTTP/1.0\r\n\r\n");
    RUN_UNTIL(f, c->eof);
    assert_string_equal(resp(c),
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                        "Connection: close\r\n\r\nhello");
    fx_finish(f);
}

static void answer_held_one(fx_t *f)
{
    assert_non_null(f->held);
    /* Requests behind the held one must not reach the handler yet. */
    assert_int_equal(f->nreq, 1);
    tr_http_req_t *req = f->held;
    f->held = NULL;
    tr_http_res_send(req, 200, NULL, "one", 3);
}

static void h_first_async(fx_t *f, tr_http_req_t *req)
{
    if (req->path_len == 2 && !memcmp(req->path, "/1", 2)) {
        f->held = req;
        fx_tick_in(f, 20, answer_held_one);
        return;
    }
    h_echo_path(f, req);
}

static void test_pipelined_in_order(void **state)
{
    fx_t *f = fx_start(NULL, h_first_async);
    client_t *c = client_open(f, 0);
    client_sends(c, GET("/1") GET("/2") GET("/3"));
    expect_response(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"
                       "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n/2"
                       "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n/3");
    assert_string_equal(tr_buf_cstr(&f->order), "/1 /2 /3 ");
    fx_finish(f);
}

/* ---- ordered requests (opts.ordered): answered out of turn, sent in turn */

/* Paths starting /w are "writes" whose handler orders them itself; "/wnow…" is answered
 * at once, any other /w later, by the test. */
static bool ordered_w(const tr_http_req_t *req, void *data)
{
    (void)data;
    return req->path_len >= 2 && req->path[1] == 'w';
}

static void h_ordered(fx_t *f, tr_http_req_t *req)
{
    bool w = req->path_len >= 2 && req->path[1] == 'w';
    bool now = req->path_len >= 5 && !memcmp(req->path, "/wnow", 5);
    if (!w || now) return h_echo_path(f, req);
    assert_true(f->npend < 80);
    f->pend[f->npend++] = req;
}

static void answer_pend(fx_t *f, int i)
{
    tr_http_req_t *req = f->pend[i];
    assert_non_null(req);
    f->pend[i] = NULL;
    tr_http_res_send(req, 200, NULL, req->path, req->path_len);
}

static fx_t *fx_start_ordered(void)
{
    tr_http_server_options_t o = {.ordered = ordered_w};
    return fx_start(&o, h_ordered);
}

/* Ordered requests reach the handler before the answers to those before them; a request
 * that is not ordered waits for every earlier answer; answers leave in request order. */
static void test_ordered_run_ahead(void **state)
{
    fx_t *f = fx_start_ordered();
    client_t *c = client_open(f, 0);
    client_sends(c, GET("/w1") GET("/w2") GET("/w3") GET("/r") GET("/w4"));
    RUN_UNTIL(f, f->npend == 3);
    fx_sleep(f, 20);
    /* /r is a read: it waits, unseen, and /w4 behind it too. */
    assert_string_equal(tr_buf_cstr(&f->order), "/w1 /w2 /w3 ");
    answer_pend(f, 2);
    answer_pend(f, 1);
    fx_sleep(f, 20);
    assert_string_equal(resp(c), ""); /* /w1 is not answered yet: nothing may leave */
    answer_pend(f, 0);
    expect_response(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n/w1"
                       "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n/w2"
                       "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n/w3"
                       "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n/r");
    RUN_UNTIL(f, f->npend == 4);
    assert_string_equal(tr_buf_cstr(&f->order), "/w1 /w2 /w3 /r /w4 ");
    answer_pend(f, 3);
    expect_response(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n/w1"
                       "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n/w2"
                       "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n/w3"
                       "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n/r"
                       "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n/w4");
    /* The connection is idle and usable again. */
    client_sends(c, GET("/again"));
    RUN_UNTIL(f, strstr(resp(c), "/again") != NULL);
    assert_int_equal(f->nabort, 0);
    fx_finish(f);
}

/* An ordered request answered at once, with a body, behind one still pending: its bytes
 * wait; a request after a pending one that ends with Connection: close closes after all. */
static void test_ordered_answer_waits_its_turn(void **state)
{
    fx_t *f = fx_start_ordered();
    client_t *c = client_open(f, 0);
    client_sends(c, GET("/w1") "POST /wnow HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                               "GET /wlast HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    RUN_UNTIL(f, f->npend == 2);
    assert_string_equal(tr_buf_cstr(&f->order), "/w1 /wnow /wlast ");
    fx_sleep(f, 20);
    assert_string_equal(resp(c), "");
    answer_pend(f, 1);
    fx_sleep(f, 20);
    assert_string_equal(resp(c), "");
    answer_pend(f, 0);
    RUN_UNTIL(f, c->eof);
    assert_string_equal(resp(c), "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n/w1"
                                 "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n/wnow"
                                 "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close"
                                 "\r\n\r\n/wlast");
    fx_finish(f);
}

/* A malformed request after pending ones: they are answered first, then the 400, then
 * the close. */
static void test_ordered_then_bad_request(void **state)
{
    fx_t *f = fx_start_ordered();
    client_t *c = client_open(f, 0);
    client_sends(c, GET("/w1") "BAD\r\n\r\n");
    RUN_UNTIL(f, f->npend == 1);
    fx_sleep(f, 20);
    assert_string_equal(resp(c), "");
    answer_pend(f, 0);
    RUN_UNTIL(f, c->eof);
    const char *r = resp(c);
    const char *want = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n/w1HTTP/1.1 400 ";
    assert_memory_equal(r, want, strlen(want));
    assert_non_null(strstr(r, "Connection: close"));
    fx_finish(f);
}

/* The client goes away with answers pending: every pending request gets on_abort. */
static void test_ordered_abort_on_close(void **state)
{
    fx_t *f = fx_start_ordered();
    client_t *c = client_open(f, 0);
    client_sends(c, GET("/w1") GET("/w2") GET("/w3"));
    RUN_UNTIL(f, f->npend == 3);
    answer_pend(f, 1); /* answered, waiting for /w1: dropped without an abort */
    client_close(c);
    RUN_UNTIL(f, f->nabort == 2);
    fx_sleep(f, 20);
    assert_int_equal(f->nabort, 2);
    assert_null(f->pend[0]);
    assert_null(f->pend[2]);
    fx_finish(f);
}

/* At most 64 pending per connection: parsing waits, then goes on as answers come. */
static void test_ordered_at_most_64_pending(void **state)
{
    fx_t *f = fx_start_ordered();
    client_t *c = client_open(f, 0);
    tr_buf_t req = TR_BUF_INIT;
    for (int i = 0; i < 70; i++)
        tr_buf_printf(&req, "GET /w%02d HTTP/1.1\r\nHost: a\r\n\r\n", i);
    client_send(c, req.data, req.len);
    tr_buf_free(&req);
    RUN_UNTIL(f, f->npend == 64);
    fx_sleep(f, 20);
    assert_int_equal(f->npend, 64);
    answer_pend(f, 0);
    RUN_UNTIL(f, f->npend == 65);
    for (int i = 1; i < 65; i++)
        answer_pend(f, i);
    RUN_UNTIL(f, f->npend == 70);
    for (int i = 65; i < 70; i++)
        answer_pend(f, i);
    RUN_UNTIL(f, count_str(resp(c), "HTTP/1.1 200 OK") == 70);
    const char *r = resp(c);
    char want[16];
    const char *at = r;
    for (int i = 0; i < 70; i++) { /* in order */
        snprintf(want, sizeof(want), "\r\n\r\n/w%02d", i);
        const char *p = strstr(at, want);
        assert_non_null(p);
        at = p + 1;
    }
    fx_finish(f);
}

/* ---- streamed responses */

static void end_held(fx_t *f)
{
    tr_http_req_t *req = f->held;
    f->held = NULL;
    tr_http_res_end(req); /* adds no bytes: the body went out with the write */
}

static void h_length_then_end_later(fx_t *f, tr_http_req_t *req)
{
    tr_http_res_header(req, "Content-Length", "4");
    tr_http_res_start(req, 200);
    tr_http_res_write(req, "abcd", 4);
    f->held = req;
    fx_tick_in(f, 20, end_held);
}

/* A response that ends with nothing left to send must still honour Connection: close
 * (found by fuzz_http_request: the close waited for a write that never came). */
static void test_close_after_empty_final_flush(void **state)
{
    fx_t *f = fx_start(NULL, h_length_then_end_later);
    client_t *c = client_open(f, 0);
    client_sends(c, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    RUN_UNTIL(f, c->eof);
    assert_string_equal(resp(c),
                        "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd");
    fx_finish(f);
}

static void stream_step(fx_t *f)
{
    tr_http_req_t *req = f->held;
    switch (f->step++) {
    case 0:
        f->last_write_ok = tr_http_res_write(req, "ab", 2);
        fx_tick_in(f, 30, stream_step);
        return;
    case 1:
        /* What was written before must be on the wire already, not waiting for the end. */
        f->saw_partial = strstr(resp(&f->c[0]), "\r\n\r\n2\r\nab\r\n") != NULL;
        tr_http_res_write(req, "cde", 3);
        fx_tick_in(f, 10, stream_step);
        return;
    default:
        f->held = NULL;
        tr_http_res_end(req);
    }
}

static void h_stream(fx_t *f, tr_http_req_t *req)
{
    f->held = req;
    if (req->path[1] == 'l') tr_http_res_header(req, "Content-Length", "5");
    tr_http_res_header(req, "X-Stream", "yes");
    tr_http_res_start(req, 200);
    assert_true(tr_http_res_started(req));
    fx_tick_in(f, 10, stream_step);
}

static void test_streamed_chunked_response(void **state)
{
    fx_t *f = fx_start(NULL, h_stream);
    client_t *c = client_open(f, 0);
    client_sends(c, GET("/chunked"));
    expect_response(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Stream: yes\r\n\r\n"
                       "2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n");
    assert_true(f->saw_partial);
    assert_true(f->last_write_ok);
    /* Content-Length set by the handler: raw body, no chunk framing. */
    tr_buf_reset(&c->in);
    f->step = 0;
    client_sends(c, GET("/length"));
    expect_response(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Stream: yes\r\n\r\nabcde");
    assert_int_equal(f->nabort, 0);
    fx_finish(f);
}

/* ---- headers split across reads */

static void expect_hdr(fx_t *f, size_t i, const char *name, const char *value)
{
    assert_true(i < f->nhdrs);
    assert_int_equal(f->hdrs[i].name_len, strlen(name));
    assert_int_equal(f->hdrs[i].value_len, strlen(value));
    assert_string_equal(f->hdrs[i].name, name);
    assert_string_equal(f->hdrs[i].value, value);
}

static void test_headers_split_every_way(void **state)
{
    static const char req[] = "GET /split/path?q=1 HTTP/1.1\r\nHost: example.com\r\n"
                              "X-Long-Header-Name: some longer value  \r\nX-Empty:\r\n"
                              "Accept: */*\r\n\r\n";
    static const size_t steps[] = {1, 2, 3, 5, 7, 11, sizeof(req)};
    fx_t *f = fx_start(NULL, h_hello);
    client_t *c = client_open(f, 0);
    for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
        tr_buf_reset(&c->in);
        f->nhdrs = 0;
        client_send_split(c, req, sizeof(req) - 1, steps[s]);
        expect_response(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                           "\r\nhello");
        assert_int_equal(f->nreq, (int)s + 1);
        assert_string_equal(f->path, "/split/path");
        assert_string_equal(f->query, "q=1");
        assert_int_equal(f->nhdrs, 4);
        expect_hdr(f, 0, "Host", "example.com");
        expect_hdr(f, 1, "X-Long-Header-Name", "some longer value");
        expect_hdr(f, 2, "X-Empty", "");
        expect_hdr(f, 3, "Accept", "*/*");
    }
    fx_finish(f);
}

#define NMANY 20

static void h_check_many(fx_t *f, tr_http_req_t *req)
{
    /* Checked here, not through record(): these outgrow its copies. */
    assert_int_equal(req->nheaders, NMANY + 1);
    for (int i = 0; i < NMANY; i++) {
        const tr_http_header_t *h = &req->headers[i + 1];
        char name[16];
        snprintf(name, sizeof(name), "X-H%d", i);
        assert_int_equal(h->name_len, strlen(name));
        assert_string_equal(h->name, name);
        assert_int_equal(h->value_len, 200);
        for (int j = 0; j < 200; j++)
            assert_int_equal(h->value[j], 'a' + (i + j) % 26);
        assert_int_equal(h->value[200], '\0');
    }
    f->step++;
    h_hello(f, req);
}

static void test_many_headers_split(void **state)
{
    /* ~4.5 KiB of headers: the request's arena outgrows its first block mid-header. */
    tr_buf_t req = TR_BUF_INIT;
    tr_buf_append_str(&req, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; i < NMANY; i++) {
        tr_buf_printf(&req, "X-H%d: ", i);
        for (int j = 0; j < 200; j++)
            tr_buf_append(&req, &(char){(char)('a' + (i + j) % 26)}, 1);
        tr_buf_append_str(&req, "\r\n");
    }
    tr_buf_append_str(&req, "\r\n");
    static const size_t steps[] = {1, 7, 4096};
    fx_t *f = fx_start(NULL, h_check_many);
    client_t *c = client_open(f, 0);
    for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
        tr_buf_reset(&c->in);
        client_send_split(c, req.data, req.len, steps[s]);
        expect_response(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                           "\r\nhello");
        assert_int_equal(f->step, (int)s + 1);
    }
    tr_buf_free(&req);
    fx_finish(f);
}

static void test_empty_value_not_merged(void **state)
{
    static const char req[] =
        "GET / HTTP/1.1\r\nX-Empty:\r\nHost: a\r\nX-Blank: \r\nX-Last: z\r\n\r\n";
    /* Split points right around the empty value: after ':', after '\r', after '\n'. */
    static const size_t cuts[] = {0, 24, 25, 26, 27, 28, 43, 44, 45, 46};
    fx_t *f = fx_start(NULL, h_hello);
    client_t *c = client_open(f, 0);
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        tr_buf_reset(&c->in);
        size_t cut = cuts[i];
        if (cut) client_send_split(c, req, cut, cut);
        client_send_split(c, req + cut, sizeof(req) - 1 - cut, sizeof(req));
        expect_response(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                           "\r\nhello");
        assert_int_equal(f->nhdrs, 4);
        expect_hdr(f, 0, "X-Empty", "");
        expect_hdr(f, 1, "Host", "a");
        expect_hdr(f, 2, "X-Blank", "");
        expect_hdr(f, 3, "X-Last", "z");
    }
    fx_finish(f);
}

/* ---- request bodies */

static void end_check_headers(tr_http_req_t *req)
{
    fx_t *f = req->data;
    /* Headers must still describe the request as the handler first saw it. */
    assert_int_equal(req->nheaders, 2);
    for (size_t i = 0; i < req->nheaders; i++)
        assert_non_null(req->headers[i].name);
    assert_string_equal(tr_http_req_header(req, "host"), "a");
    end_echo_body(req);
    (void)f;
}

static void h_body_trailers(fx_t *f, tr_http_req_t *req)
{
    req->on_body = collect_body;
    req->on_end = end_check_headers;
}

static void test_chunked_request_body(void **state)
{
    static const char req[] = "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    static const size_t steps[] = {sizeof(req), 1, 4};
    fx_t *f = fx_start(NULL, h_body_trailers);
    client_t *c = client_open(f, 0);
    for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
        tr_buf_reset(&c->in);
        tr_buf_reset(&f->body);
        client_send_split(c, req, sizeof(req) - 1, steps[s]);
        expect_response(c, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world");
        assert_true(f->chunked);
        assert_int_equal(f->content_length, -1);
        assert_int_equal(f->nend, (int)s + 1);
    }
    fx_finish(f);
}

static void resume_body(fx_t *f)
{
    f->paused = false;
    tr_http_req_resume(f->held);
}

static void pause_on_first(tr_http_req_t *req, const char *data, size_t len)
{
    fx_t *f = req->data;
    collect_body(req, data, len);
    if (f->step++ == 0) {
        f->held = req;
        f->paused = true;
        tr_http_req_pause(req);
        tr_http_req_pause(req); /* twice is harmless */
        fx_tick_in(f, 60, resume_body);
    }
}

static void h_pause(fx_t *f, tr_http_req_t *req)
{
    req->on_body = pause_on_first;
    req->on_end = end_echo_body;
}

static void test_body_pause_resume(void **state)
{
    enum { LEN = 40000 };
    /* The body deadline is shorter than the pause: a pause by the server is no client stall. */
    tr_http_server_options_t o = {.body_timeout_ms = 30};
    fx_t *f = fx_start(&o, h_pause);
    client_t *c = client_open(f, 0);
    char *body = malloc(LEN);
    for (int i = 0; i < LEN; i++)
        body[i] = (char)('a' + (i * 7) % 26);
    char head[128];
    snprintf(head, sizeof(head), "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n", LEN);
    client_sends(c, head);
    client_send(c, body, LEN);
    RUN_UNTIL(f, f->nend == 1 || c->eof);
    if (c->eof) fail_msg("closed during the pause: %s", resp(c));
    assert_false(f->body_while_paused);
    assert_true(f->step > 1);
    assert_int_equal(f->body.len, LEN);
    assert_memory_equal(f->body.data, body, LEN);
    RUN_UNTIL(f, c->in.len > LEN);
    assert_non_null(strstr(resp(c), "HTTP/1.1 200 OK\r\nContent-Length: 40000\r\n\r\n"));
    free(body);
    fx_finish(f);
}

static void h_expect(fx_t *f, tr_http_req_t *req)
{
    if (req->path[1] == 'n') {
        tr_http_res_send(req, 417, NULL, "no", 2);
        return;
    }
    h_body(f, req);
}

static void test_expect_continue(void **state)
{
    fx_t *f = fx_start(NULL, h_expect);
    client_t *c = client_open(f, 0);
    client_sends(
        c, "POST /yes HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    expect_response(c, "HTTP/1.1 100 Continue\r\n\r\n");
    assert_true(f->expect_continue);
    assert_int_equal(f->content_length, 5);
    client_sends(c, "hello");
    expect_response(
        c, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    /* A final answer before the body: no 100, and the connection closes after it. */
    tr_buf_reset(&c->in);
    client_sends(
        c, "POST /no HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    RUN_UNTIL(f, c->eof);
    assert_string_equal(resp(c), "HTTP/1.1 417 Expectation Failed\r\nContent-Length: 2\r\n"
                                 "Connection: close\r\n\r\nno");
    fx_finish(f);
}

static void h_head(fx_t *f, tr_http_req_t *req)
{
    if (req->path[1] == 's') {
        tr_http_res_start(req, 200);
        tr_http_res_write(req, "body", 4);
        tr_http_res_end(req);
        return;
    }
    h_hello(f, req);
}

static void test_head_has_no_body(void **state)
{
    fx_t *f = fx_start(NULL, h_head);
    client_t *c = client_open(f, 0);
    client_sends(
        c, "HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nHEAD /s HTTP/1.1\r\nHost: a\r\n\r\n" GET("/g"));
    expect_response(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
                       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
                       "hello");
    fx_sleep(f, 10);
    assert_int_equal(strlen(resp(c)), strlen("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                             "Content-Length: 5\r\n\r\n"
                                             "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                             "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                             "Content-Length: 5\r\n\r\nhello"));
    fx_finish(f);
}

/* ---- output backpressure */

static char blob[16 * 1024];

static void on_drain_finish(tr_http_req_t *req)
{
    fx_t *f = req->data;
    f->ndrain++;
    tr_http_res_write(req, "end", 3);
    f->written += 3;
    tr_http_res_end(req);
}

static void write_until_full(fx_t *f, tr_http_req_t *req)
{
    memset(blob, 'x', sizeof(blob));
    req->on_drain = on_drain_finish;
    tr_http_res_header(req, "Content-Type", "application/octet-stream");
    f->false_at = 0;
    while (f->written < 256u * 1024 * 1024) {
        f->written += sizeof(blob);
        if (!tr_http_res_write(req, blob, sizeof(blob))) {
            f->false_at = f->written;
            return;
        }
    }
}

static size_t chunked_payload(const char *s)
{
    /* Sums the chunk sizes of a chunked body that starts after the first blank line. */
    const char *p = strstr(s, "\r\n\r\n");
    size_t total = 0;
    for (p = p ? p + 4 : s;;) {
        char *end;
        unsigned long n = strtoul(p, &end, 16);
        if (end == p || n == 0) break;
        total += n;
        p = end + 2 + n + 2;
    }
    return total;
}

static void test_backpressure_in_handler(void **state)
{
    fx_t *f = fx_start(NULL, write_until_full);
    client_t *c = client_open(f, 0);
    client_sends(c, GET("/big"));
    RUN_UNTIL(f, f->ndrain == 1);
    /* Output is held while the handler runs, so the high-water mark (64 KiB) is what stops it. */
    assert_true(f->false_at >= 64 * 1024 && f->false_at < 64 * 1024 + 2 * sizeof(blob));
    RUN_UNTIL(f, ends_with(c, "\r\n0\r\n\r\n"));
    assert_int_equal(chunked_payload(resp(c)), f->written);
    fx_finish(f);
}

static void write_until_full(fx_t *f, tr_http_req_t *req);

/* Refills the output on every drain while f->refill holds, then finishes. */
static void on_drain_refill(tr_http_req_t *req)
{
    fx_t *f = req->data;
    if (!f->refill) {
        on_drain_finish(req);
        return;
    }
    f->nrefill++;
    write_until_full(f, req);
    req->on_drain = on_drain_refill;
}

static void write_from_timer(fx_t *f)
{
    write_until_full(f, f->held);
    f->held->on_drain = on_drain_refill;
}

static void h_write_later(fx_t *f, tr_http_req_t *req)
{
    f->held = req;
    f->refill = true;
    fx_tick_in(f, 1, write_from_timer);
}

/*
 * A peer that doesn't read: the handler refills on each drain until the kernel's buffers
 * are full; from then on no drain comes (backpressure), until the peer reads again.
 */
static void test_backpressure_socket_full(void **state)
{
    fx_t *f = fx_start(NULL, h_write_later);
    client_t *c = client_open(f, 0);
    uv_read_stop((uv_stream_t *)&c->tcp); /* the peer doesn't read: the kernel buffers fill */
    client_sends(c, GET("/big"));
    RUN_UNTIL(f, f->false_at > 0);
    int before;
    do { /* until the refills stop: the socket is full */
        before = f->nrefill;
        fx_sleep(f, 50);
    } while (f->nrefill != before && f->written < 64u * 1024 * 1024);
    assert_true(f->written < 64u * 1024 * 1024);
    fx_sleep(f, 20);
    assert_int_equal(f->nrefill, before);
    assert_int_equal(f->ndrain, 0);
    f->refill = false;
    uv_read_start((uv_stream_t *)&c->tcp, on_client_alloc, on_client_read);
    RUN_UNTIL(f, f->ndrain == 1);
    RUN_UNTIL(f, ends_with(c, "\r\n0\r\n\r\n"));
    assert_int_equal(chunked_payload(resp(c)), f->written);
    fx_finish(f);
}

/* ---- rejected requests */

typedef struct reject_case_s {
    const char *request;
    const char *status_line;
    const char *slug; /* NULL: any problem type */
    size_t split;     /* 0: one write; else the first write's length */
} reject_case_t;

#define BIG_VALUE "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
#define LONG_URI  "/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

static void expect_rejected(fx_t *f, int ci, const reject_case_t *rc)
{
    client_t *c = client_open(f, ci);
    int nreq = f->nreq;
    if (rc->split) {
        client_send_split(c, rc->request, rc->split, rc->split);
        client_sends(c, rc->request + rc->split);
    } else {
        client_sends(c, rc->request);
    }
    RUN_UNTIL(f, c->eof);
    const char *r = resp(c);
    if (strncmp(r, rc->status_line, strlen(rc->status_line)))
        fail_msg("request %s\nwanted %s\ngot %s", rc->request, rc->status_line, r);
    assert_non_null(strstr(r, "\r\nContent-Type: application/problem+json\r\n"));
    assert_non_null(strstr(r, "\r\nConnection: close\r\n"));
    assert_int_equal(count_status_lines(r), 1); /* nothing smuggled behind it is answered */
    if (rc->slug) {
        char type[128];
        snprintf(type, sizeof(type), "\"type\":\"https://trellis.dev/problems/%s\"", rc->slug);
        if (!strstr(r, type)) fail_msg("wanted %s in %s", type, r);
    }
    assert_int_equal(f->nreq, nreq); /* the handler never saw it */
    RUN_UNTIL(f, c->closed);
    c->used = false;
    tr_buf_free(&c->in);
    tr_buf_free(&c->view);
}

static void test_limits(void **state)
{
    static const reject_case_t cases[] = {
        {"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " BIG_VALUE BIG_VALUE BIG_VALUE "\r\n\r\n",
         "HTTP/1.1 431 Request Header Fields Too Large\r\n", "header-too-large", 0},
        {"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n",
         "HTTP/1.1 431 Request Header Fields Too Large\r\n", "too-many-headers", 0},
        {"GET " LONG_URI " HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 414 URI Too Long\r\n",
         "uri-too-long", 0},
        {"GET " LONG_URI " HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 414 URI Too Long\r\n",
         "uri-too-long", 20},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\n\r\n",
         "HTTP/1.1 413 Payload Too Large\r\n", "body-too-large", 0},
    };
    tr_http_server_options_t o = {
        .max_header_bytes = 200, .max_headers = 4, .max_uri_bytes = 32, .max_body_bytes = 16};
    fx_t *f = fx_start(&o, h_body);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_rejected(f, 0, &cases[i]);
    /* Exactly at each limit is fine. */
    client_t *c = client_open(f, 1);
    client_sends(c, "POST /"
                    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                    " HTTP/1.1\r\nHost: a\r\nB: 2\r\nC: 3\r\n"
                    "Content-Length: 16\r\n\r\n0123456789abcdef");
    expect_response(c, "HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n0123456789abcdef");
    assert_int_equal(f->nhdrs, 4);
    fx_finish(f);
}

static void test_chunked_body_over_limit(void **state)
{
    tr_http_server_options_t o = {.max_body_bytes = 16};
    fx_t *f = fx_start(&o, h_body);
    client_t *c = client_open(f, 0);
    client_sends(c, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "a\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n");
    RUN_UNTIL(f, c->eof);
    assert_non_null(strstr(resp(c), "HTTP/1.1 413 Payload Too Large\r\n"));
    assert_non_null(strstr(resp(c), "body-too-large"));
    assert_int_equal(f->nreq, 1);
    assert_int_equal(f->nabort, 1); /* the handler was holding it: it learns the request died */
    assert_int_equal(f->nend, 0);
    fx_finish(f);
}

static void test_limits_independent_of_split(void **state)
{
    static const char req[] = "GET /abc HTTP/1.1\r\nHost: example.com\r\n"
                              "X-Header-One: value-one\r\nX-Header-Two: value-two\r\n\r\n";
    tr_http_server_options_t o = {.max_header_bytes = 120};
    fx_t *f = fx_start(&o, h_hello);
    client_t *c = client_open(f, 0);
    client_send_split(c, req, sizeof(req) - 1, 1);
    expect_response(
        c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello");
    fx_finish(f);
}

static void test_smuggling(void **state)
{
    static const reject_case_t cases[] = {
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
         "0\r\n\r\n" GET("/smuggled"),
         "HTTP/1.1 400 Bad Request\r\n", NULL, 0},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
         "0\r\n\r\n" GET("/smuggled"),
         "HTTP/1.1 400 Bad Request\r\n", NULL, 0},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
         "HTTP/1.1 400 Bad Request\r\n", NULL, 0},
        {"GET / HTTP/1.1\r\nHost: a\r\nBad\x01Name: x\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n",
         NULL, 0},
        {"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n",
         "invalid-header-name", 0},
        /* SP before the colon: a front end that trims it would see a different framing */
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
         "HTTP/1.1 400 Bad Request\r\n", "invalid-header-name", 0},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 4\r\n\r\nabcd",
         "HTTP/1.1 400 Bad Request\r\n", "invalid-header-name", 0},
        {"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n",
         "obs-fold", 0},
        {"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n",
         "obs-fold", 0},
        /* the fold's "\r\n" and its " " in separate reads */
        {"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n",
         "obs-fold", 34},
        {"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  c\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n",
         "obs-fold", 35},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
         "HTTP/1.1 501 Not Implemented\r\n", "unsupported-transfer-encoding", 0},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
         "HTTP/1.1 501 Not Implemented\r\n", "unsupported-transfer-encoding", 0},
        {"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n", "missing-host", 0},
        {"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n",
         "duplicate-host", 0},
        {"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
         "GARBAGE\r\n\r\n",
         "HTTP/1.1 200 OK", NULL, 0},
    };
    fx_t *f = fx_start(NULL, h_hello);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]) - 1; i++)
        expect_rejected(f, 0, &cases[i]);
    /* A good request followed by garbage: the first is answered, then the 400 closes. */
    client_t *c = client_open(f, 1);
    client_sends(c, cases[sizeof(cases) / sizeof(cases[0]) - 1].request);
    RUN_UNTIL(f, c->eof);
    assert_int_equal(count_str(resp(c), "HTTP/1.1 200 OK\r\n"), 1);
    assert_int_equal(count_str(resp(c), "HTTP/1.1 400 Bad Request\r\n"), 1);
    fx_finish(f);
}

static void test_obs_fold_byte_by_byte(void **state)
{
    static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  c\r\n\r\n";
    fx_t *f = fx_start(NULL, h_hello);
    client_t *c = client_open(f, 0);
    client_send_split(c, req, sizeof(req) - 1, 1);
    RUN_UNTIL(f, c->eof);
    assert_non_null(strstr(resp(c), "HTTP/1.1 400 Bad Request\r\n"));
    assert_non_null(strstr(resp(c), "obs-fold"));
    assert_int_equal(f->nreq, 0);
    fx_finish(f);
}

/* ---- deadlines */

static void test_header_timeout(void **state)
{
    tr_http_server_options_t o = {.header_timeout_ms = 50};
    fx_t *f = fx_start(&o, h_hello);
    client_t *c = client_open(f, 0);
    uint64_t t0 = uv_now(&f->loop);
    client_sends(c, "GET / HTTP/1.1\r\nHost: a\r\n");
    RUN_UNTIL(f, c->eof);
    uint64_t took = uv_now(&f->loop) - t0;
    assert_true(took >= 45 && took < 1000);
    assert_non_null(strstr(resp(c), "HTTP/1.1 408 Request Timeout\r\n"));
    assert_non_null(strstr(resp(c), "\r\nConnection: close\r\n"));
    assert_int_equal(f->nreq, 0);
    /* A connection that never sends a byte is closed without an answer. */
    client_t *c2 = client_open(f, 1);
    RUN_UNTIL(f, c2->eof);
    assert_int_equal(c2->in.len, 0);
    fx_finish(f);
}

static void trickle(fx_t *f)
{
    static const char req[] = "GET /slow HTTP/1.1\r\nHost: a\r\nX-Slow: very slow indeed\r\n\r\n";
    client_t *c = &f->c[0];
    if (c->closing || (size_t)f->step >= sizeof(req) - 1) return;
    client_send(c, req + f->step++, 1);
    fx_tick_in(f, 5, trickle);
}

static void test_header_timeout_not_extended_by_trickle(void **state)
{
    tr_http_server_options_t o = {.header_timeout_ms = 100};
    fx_t *f = fx_start(&o, h_hello);
    client_t *c = client_open(f, 0);
    fx_tick_in(f, 0, trickle);
    RUN_UNTIL(f, c->eof);
    assert_non_null(strstr(resp(c), "HTTP/1.1 408 Request Timeout\r\n"));
    assert_int_equal(f->nreq, 0);
    fx_finish(f);
}

static void test_idle_timeout(void **state)
{
    tr_http_server_options_t o = {.idle_timeout_ms = 50};
    fx_t *f = fx_start(&o, h_hello);
    client_t *c = client_open(f, 0);
    client_sends(c, GET("/"));
    expect_response(
        c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello");
    uint64_t t0 = uv_now(&f->loop);
    RUN_UNTIL(f, c->eof);
    uint64_t took = uv_now(&f->loop) - t0;
    assert_true(took >= 40 && took < 1000);
    assert_int_equal(c->error, 0);
    RUN_UNTIL(f, tr_http_server_connections(f->srv) == 0);
    fx_finish(f);
}

/* ---- aborts and closing */

static void test_abort_on_client_reset(void **state)
{
    fx_t *f = fx_start(NULL, h_hold);
    client_t *c = client_open(f, 0);
    client_sends(c, GET("/held"));
    RUN_UNTIL(f, f->held != NULL);
    c->closing = true;
    assert_int_equal(uv_tcp_close_reset(&c->tcp, on_client_closed), 0);
    RUN_UNTIL(f, f->nabort == 1);
    assert_null(f->held);
    RUN_UNTIL(f, tr_http_server_connections(f->srv) == 0);
    fx_finish(f);
}

static void keep_streaming(fx_t *f)
{
    if (!f->held) return;
    tr_http_res_write(f->held, "tick\n", 5);
    fx_tick_in(f, 5, keep_streaming);
}

static void h_stream_forever(fx_t *f, tr_http_req_t *req)
{
    f->held = req;
    tr_http_res_start(req, 200);
    fx_tick_in(f, 5, keep_streaming);
}

static void test_abort_on_client_close_while_streaming(void **state)
{
    fx_t *f = fx_start(NULL, h_stream_forever);
    client_t *c = client_open(f, 0);
    client_sends(c, GET("/events"));
    RUN_UNTIL(f, strstr(resp(c), "tick\n") != NULL);
    client_close(c);
    RUN_UNTIL(f, f->nabort == 1);
    assert_null(f->held);
    fx_finish(f);
}

static void abort_held(fx_t *f)
{
    tr_http_req_t *req = f->held;
    f->held = NULL;
    tr_http_res_abort(req);
}

static void h_abort(fx_t *f, tr_http_req_t *req)
{
    if (req->path[1] == 'n') {
        tr_http_res_abort(req);
        return;
    }
    f->held = req;
    tr_http_res_start(req, 200);
    tr_http_res_write(req, "partial", 7);
    fx_tick_in(f, 10, abort_held);
}

static void test_res_abort(void **state)
{
    fx_t *f = fx_start(NULL, h_abort);
    client_t *c = client_open(f, 0);
    client_sends(c, GET("/now") GET("/never"));
    RUN_UNTIL(f, c->eof);
    assert_int_equal(c->in.len, 0);
    assert_int_equal(f->nreq, 1);
    client_t *c2 = client_open(f, 1);
    client_sends(c2, GET("/later"));
    RUN_UNTIL(f, c2->eof);
    assert_non_null(strstr(resp(c2), "\r\n\r\n7\r\npartial\r\n"));
    assert_null(strstr(resp(c2), "0\r\n\r\n"));
    assert_int_equal(f->nabort, 0); /* the handler asked for it: no on_abort */
    RUN_UNTIL(f, tr_http_server_connections(f->srv) == 0);
    fx_finish(f);
}

static void answer_held(fx_t *f)
{
    tr_http_req_t *req = f->held;
    f->held = NULL;
    tr_http_res_send(req, 200, NULL, "done", 4);
}

static void test_graceful_close(void **state)
{
    fx_t *f = fx_start(NULL, h_hold);
    client_t *busy = client_open(f, 0);
    client_t *idle = client_open(f, 1);
    client_sends(busy, GET("/slow"));
    RUN_UNTIL(f, f->held != NULL && tr_http_server_connections(f->srv) == 2);
    tr_http_server_close(f->srv, false, on_server_done, f);
    RUN_UNTIL(f, idle->eof);
    assert_int_equal(idle->in.len, 0);
    assert_false(busy->eof);
    assert_false(f->srv_done);
    answer_held(f);
    RUN_UNTIL(f, busy->eof);
    assert_string_equal(resp(busy),
                        "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone");
    RUN_UNTIL(f, f->srv_done);
    assert_int_equal(f->nabort, 0);
    /* New connections are refused once the listener is closed. */
    client_t *late = &f->c[2];
    memset(late, 0, sizeof(*late));
    late->used = true;
    late->f = f;
    uv_tcp_init(&f->loop, &late->tcp);
    late->tcp.data = late->connect.data = late;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", f->port, &a);
    uv_tcp_connect(&late->connect, &late->tcp, (struct sockaddr *)&a, on_client_connect);
    RUN_UNTIL(f, late->error != 0);
    assert_int_equal(late->error, UV_ECONNREFUSED);
    fx_finish(f);
}

static void test_forced_close(void **state)
{
    fx_t *f = fx_start(NULL, h_hold);
    client_t *c = client_open(f, 0);
    client_sends(c, GET("/slow"));
    RUN_UNTIL(f, f->held != NULL);
    tr_http_server_close(f->srv, false, on_server_done, f);
    tr_http_server_close(f->srv, true, NULL, NULL); /* escalates; keeps the first callback */
    assert_int_equal(f->nabort, 1);
    assert_null(f->held);
    RUN_UNTIL(f, f->srv_done && c->eof);
    assert_int_equal(c->in.len, 0);
    fx_finish(f);
}

static void test_start_errors(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    tr_http_server_t *srv = NULL;
    tr_http_server_options_t o = {0};
    assert_int_equal(tr_http_server_start(&loop, 0, &o, &srv), UV_EINVAL); /* no handler */
    assert_null(srv);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as tr_runtime_run does: writes to reset peers return EPIPE */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_get),
        cmocka_unit_test(test_http10),
        cmocka_unit_test(test_pipelined_in_order),
        cmocka_unit_test(test_ordered_run_ahead),
        cmocka_unit_test(test_ordered_answer_waits_its_turn),
        cmocka_unit_test(test_ordered_then_bad_request),
        cmocka_unit_test(test_ordered_abort_on_close),
        cmocka_unit_test(test_ordered_at_most_64_pending),
        cmocka_unit_test(test_close_after_empty_final_flush),
        cmocka_unit_test(test_streamed_chunked_response),
        cmocka_unit_test(test_headers_split_every_way),
        cmocka_unit_test(test_many_headers_split),
        cmocka_unit_test(test_empty_value_not_merged),
        cmocka_unit_test(test_chunked_request_body),
        cmocka_unit_test(test_body_pause_resume),
        cmocka_unit_test(test_expect_continue),
        cmocka_unit_test(test_head_has_no_body),
        cmocka_unit_test(test_backpressure_in_handler),
        cmocka_unit_test(test_backpressure_socket_full),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_chunked_body_over_limit),
        cmocka_unit_test(test_limits_independent_of_split),
        cmocka_unit_test(test_smuggling),
        cmocka_unit_test(test_obs_fold_byte_by_byte),
        cmocka_unit_test(test_header_timeout),
        cmocka_unit_test(test_header_timeout_not_extended_by_trickle),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_abort_on_client_reset),
        cmocka_unit_test(test_abort_on_client_close_while_streaming),
        cmocka_unit_test(test_res_abort),
        cmocka_unit_test(test_graceful_close),
        cmocka_unit_test(test_forced_close),
        cmocka_unit_test(test_start_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
