/* libFuzzer target: arbitrary bytes as a client's request stream to the HTTP server. */
#include <arpa/inet.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trellis/http.h"
#include "trellis/net.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * One loop and one server for the whole run; per input one client connection on
 * 127.0.0.1 writes the input (in two writes, split where the first byte says), half-closes,
 * and reads until the server closes. The handler picks its behaviour from the path's first
 * letter so the fuzzer reaches every way a handler answers.
 */

#define LIVENESS_MS 5000

typedef struct pending_s {
    uv_timer_t timer;
    tr_http_req_t *req; /* NULL once the request ended */
    int what;
    struct pending_s *next;
} pending_t;

enum { P_SEND, P_RESUME, P_STREAM };

static uv_loop_t loop;
static tr_http_server_t *srv;
static int port;
static size_t npending;
static uv_timer_t liveness;

/* ---- the handler */

static void on_pending_closed(uv_handle_t *h)
{
    free(h->data);
    npending--;
}

static void pending_done(pending_t *p)
{
    if (p->req) p->req->data = NULL;
    p->req = NULL;
    uv_close((uv_handle_t *)&p->timer, on_pending_closed);
}

static void on_abort(tr_http_req_t *req)
{
    pending_t *p = req->data;
    if (!p) return;
    uv_timer_stop(&p->timer);
    pending_done(p);
}

static void on_pending(uv_timer_t *t)
{
    pending_t *p = t->data;
    tr_http_req_t *req = p->req;
    switch (p->what) {
    case P_SEND:
        pending_done(p);
        tr_http_res_send(req, 202, "text/plain", "later", 5);
        return;
    case P_RESUME:
        tr_http_req_resume(req); /* may end the request: don't touch p after it, unless kept */
        return;
    default:
        if (!tr_http_res_write(req, "tick", 4)) {
            /* over the high-water mark: on_drain continues */
            return;
        }
        pending_done(p);
        tr_http_res_end(req);
        return;
    }
}

static pending_t *pending_new(tr_http_req_t *req, int what)
{
    pending_t *p = calloc(1, sizeof(*p));
    uv_timer_init(&loop, &p->timer);
    p->timer.data = p;
    p->req = req;
    p->what = what;
    req->data = p;
    req->on_abort = on_abort;
    npending++;
    return p;
}

static void on_drain(tr_http_req_t *req)
{
    pending_t *p = req->data;
    if (p) pending_done(p);
    tr_http_res_end(req);
}

static void on_body(tr_http_req_t *req, const char *data, size_t len)
{
    pending_t *p = req->data;
    if (!p) p = pending_new(req, P_RESUME);
    if (len & 1) {
        tr_http_req_pause(req);
        uv_timer_start(&p->timer, on_pending, 0, 0);
    }
}

static void on_end(tr_http_req_t *req)
{
    pending_t *p = req->data;
    if (p) {
        uv_timer_stop(&p->timer);
        pending_done(p);
    }
    tr_http_res_problem(req, 200, "done", "Done", "read %s", req->method);
}

static char mode_of(const tr_http_req_t *req)
{
    const char *h = tr_http_req_header(req, "x-mode");
    return req->path_len > 1 ? req->path[1] : h && *h ? *h : 'n';
}

/* 'o' (answered from a timer once the body is in), 'a' and 'p' are ordered: pipelined
 * requests after them reach the handler before their answers. */
static bool ordered(const tr_http_req_t *req, void *data)
{
    (void)data;
    char m = mode_of(req);
    return m == 'o' || m == 'a' || m == 'p';
}

static void on_end_later(tr_http_req_t *req)
{
    uv_timer_start(&pending_new(req, P_SEND)->timer, on_pending, 0, 0);
}

static void handler(tr_http_req_t *req, void *data)
{
    char mode = mode_of(req);
    switch (mode) {
    case 'o':
        req->on_end = on_end_later;
        return;
    case 'a': /* answered from a timer */
        uv_timer_start(&pending_new(req, P_SEND)->timer, on_pending, 0, 0);
        return;
    case 's': /* streamed, chunked or with a length */
        if (req->query_len) tr_http_res_header(req, "Content-Length", "8");
        tr_http_res_header(req, "X-Echo", req->url);
        tr_http_res_start(req, 200);
        tr_http_res_write(req, "tick", 4);
        req->on_drain = on_drain;
        uv_timer_start(&pending_new(req, P_STREAM)->timer, on_pending, 0, 0);
        return;
    case 'b': /* reads the body with pauses, answers at the end */
        req->on_body = on_body;
        req->on_end = on_end;
        return;
    case 'x':
        tr_http_res_abort(req);
        return;
    case 'c':
        tr_http_res_close(req);
        tr_http_res_send(req, 200, NULL, "bye", 3);
        return;
    case 'p':
        tr_http_res_problem(req, 404, "not-found", "Not Found", "no route for %s", req->path);
        return;
    default:
        tr_http_res_send(req, 200, "text/plain", "ok", 2);
    }
}

/* ---- the client */

typedef struct client_s {
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t w1, w2;
    uv_shutdown_t shut;
    uv_timer_t later; /* writes the second part on a later loop turn */
    const uint8_t *data;
    size_t split, size;
    size_t received;
    char head[9];
    bool closed, later_closed;
} client_t;

static char rspace[64 * 1024];

static void on_client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    *buf = uv_buf_init(rspace, sizeof(rspace));
}

static void on_client_closed(uv_handle_t *h)
{
    ((client_t *)h->data)->closed = true;
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    client_t *c = s->data;
    if (nread > 0) {
        for (ssize_t i = 0; i < nread && c->received < sizeof(c->head); i++)
            c->head[c->received++] = buf->base[i];
        if (c->received >= sizeof(c->head) && memcmp(c->head, "HTTP/1.1 ", 9) != 0) {
            fprintf(stderr, "response does not start with a status line\n");
            abort();
        }
        if (c->received < 9) return;
        c->received += (size_t)nread;
        return;
    }
    if (nread < 0 && !uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, on_client_closed);
}

static void on_written(uv_write_t *w, int status) {}

static void on_shutdown(uv_shutdown_t *s, int status) {}

static void write_rest(uv_timer_t *t)
{
    client_t *c = t->data;
    if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
    if (c->size > c->split) {
        uv_buf_t b = uv_buf_init((char *)c->data + c->split, (unsigned)(c->size - c->split));
        uv_write(&c->w2, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    }
    uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown);
}

static void on_connect(uv_connect_t *req, int status)
{
    client_t *c = req->data;
    if (status < 0) {
        uv_close((uv_handle_t *)&c->tcp, on_client_closed);
        return;
    }
    uv_read_start((uv_stream_t *)&c->tcp, on_client_alloc, on_client_read);
    if (c->split) {
        uv_buf_t b = uv_buf_init((char *)c->data, (unsigned)c->split);
        uv_write(&c->w1, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    }
    uv_timer_start(&c->later, write_rest, 0, 0);
}

/* ---- setup and one input */

static void on_liveness(uv_timer_t *t)
{
    fprintf(stderr, "a connection was still open after %d ms\n", LIVENESS_MS);
    abort();
}

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    uv_timer_init(&loop, &liveness);
    uv_unref((uv_handle_t *)&liveness);
    struct sockaddr_storage addr, bound;
    int fd;
    if (tr_net_parse_addr("127.0.0.1:0", &addr) || tr_net_listen(&addr, 1, 1024, &fd, &bound))
        abort();
    port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    tr_http_server_options_t o = {
        .handler = handler,
        .ordered = ordered,
        .max_header_bytes = 4096,
        .max_headers = 32,
        .max_uri_bytes = 1024,
        .max_body_bytes = 8192,
        .header_timeout_ms = 1000,
        .idle_timeout_ms = 1000,
        .body_timeout_ms = 1000,
        .send_timeout_ms = 1000,
        .read_buffer_bytes = 2048, /* small: pipelined input crosses buffer ends */
    };
    if (tr_http_server_start(&loop, fd, &o, &srv)) abort();
}

static void on_later_closed(uv_handle_t *h)
{
    ((client_t *)h->data)->later_closed = true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        setup();
        ready = true;
    }
    if (size < 1) return 0;
    client_t c;
    memset(&c, 0, sizeof(c));
    c.data = data + 1;
    c.size = size - 1;
    c.split = c.size ? data[0] % (c.size + 1) : 0;
    uv_tcp_init(&loop, &c.tcp);
    uv_timer_init(&loop, &c.later);
    c.tcp.data = c.connect.data = c.later.data = &c;
    uv_timer_start(&liveness, on_liveness, LIVENESS_MS, 0);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    uv_tcp_connect(&c.connect, &c.tcp, (struct sockaddr *)&a, on_connect);
    while (!c.closed || tr_http_server_connections(srv) || npending)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&liveness);
    uv_close((uv_handle_t *)&c.later, on_later_closed);
    while (!c.later_closed)
        uv_run(&loop, UV_RUN_ONCE);
    return 0;
}
