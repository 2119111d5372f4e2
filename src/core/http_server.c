/* HTTP/1.1 server connections: parsing, limits, deadlines, pipelining and output. */
#include "trellis/http.h"

#include "core/arena.h"
#include "core/buf.h"
#include "core/httpdate.h"
#include "core/mem.h"
#include "core/problem.h"
#include "trellis/error.h"
#include "trellis/log.h"
#include "trellis/metrics.h"
#include "trellis/net.h"

#include <http_parser.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define REQ_STORAGE    4096
#define OUT_HIGH_WATER (64 * 1024)
#define LINGER_MS      2000
#define POOL_MAX       256
#define HELD_MAX       64 /* ordered requests awaiting answers per connection */
#define KEEP_OUT_MAX   (16 * 1024)

enum deadline_kind { DL_NONE, DL_HEADER, DL_IDLE, DL_BODY, DL_SEND, DL_LINGER };
enum last_cb { CB_NONE, CB_FIELD, CB_VALUE };

typedef struct conn_s conn_t;

typedef struct req_s {
    tr_http_req_t pub;
    conn_t *conn;
    struct req_s *next_free;
    tr_arena_t arena;
    tr_http_header_t *hdrs;
    uint32_t hdrs_cap;
    uint32_t field_len, value_len;
    char *field, *value, *url;
    uint8_t last_cb;
    size_t header_bytes;
    uint64_t body_bytes;
    /* a protocol error found in a parser callback, answered once execute returns */
    int fail_status;
    const char *fail_slug, *fail_title, *fail_detail;
    /* response */
    tr_http_header_t *res_hdrs;
    uint32_t nres, res_cap;
    uint64_t res_length;
    bool headers_done, msg_complete, res_started, res_done, res_chunked, res_length_known;
    bool body_paused, want_body;
    bool ordered; /* opts.ordered said yes: may wait for its answer off the parser's path */
    bool held;    /* on the connection's queue of requests answered (or to be) out of turn */
    struct req_s *held_next;
    /* This request's response while an earlier one on the connection is unfinished; kept
     * across reuse (req_get), so a pooled request buffers without allocating. */
    tr_buf_t out;
    const char *correlation_id; /* x-correlation-id, else x-request-id */
    char trace_id[33];          /* from a traceparent header, "" when none */
    char storage[REQ_STORAGE];
} req_t;

struct conn_s {
    uv_tcp_t tcp;
    http_parser parser;
    tr_http_server_t *srv;
    conn_t *prev, *next;
    req_t *req;
    /* Requests whose handler answers after the next ones were parsed (opts.ordered), in
     * request order; their responses leave in that order, then the current request's. */
    req_t *held, *held_tail;
    uint32_t nheld;
    bool stalled;  /* c->req waits, unseen by the handler, for `held` to be answered */
    tr_buf_t tail; /* a protocol error's answer, sent once `held` is answered */
    char *rbuf;
    uint32_t rpos, rlen;
    tr_buf_t out;      /* output being assembled */
    tr_buf_t inflight; /* output handed to uv_write */
    uv_write_t *wreq;
    const char *seg_start; /* the bytes the parser is being fed, for obs-fold detection */
    uint64_t deadline;
    uint8_t deadline_kind;
    bool processing, read_stopped, eof, closing, close_after, lingering, dirty;
    bool tail_lf_ws, any_bytes, want_drain, shutting, flush_queued;
    char prev_byte;
    conn_t *flush_prev, *flush_next; /* on the server's deferred-flush list */
    char peer[64];                   /* "ip:port", read once per connection */
};

struct tr_http_server_s {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_timer_t sweep;   /* expires connection deadlines; one timer per server, not per conn */
    uv_check_t flusher; /* writes what handlers queued outside the server's own callbacks */
    uv_prepare_t flusher_prep;
    conn_t *flush_head;
    tr_http_server_options_t opts;
    conn_t *conns;
    size_t nconns;
    conn_t *free_conns;
    req_t *free_reqs;
    char **free_rbufs;
    size_t nfree_rbufs, nfree_conns, nfree_reqs;
    size_t handles_open;
    bool closing, force, sweep_closed;
    void (*done)(void *data);
    void *done_data;
};

static http_parser_settings settings;

/* Server metrics, shared by every server in the process (per-thread shards inside). */
static tr_series_t *m_responses[6]; /* by status class: [1]=1xx … [5]=5xx */
static tr_series_t *m_connections;

static void metrics_init(void)
{
    static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
    tr_metrics_t *reg = tr_metrics_default();
    tr_metric_t *resp = tr_metrics_counter(reg, "trellis_http_server_responses_total",
                                           "HTTP responses sent, by status class.",
                                           (const char *const[]){"code", NULL});
    for (int i = 0; i < 5; i++) {
        const char *values[] = {classes[i], NULL};
        m_responses[i + 1] = tr_metric_series(resp, values);
    }
    tr_metric_t *conns = tr_metrics_gauge(reg, "trellis_http_server_connections",
                                          "Open HTTP server connections.", NULL);
    m_connections = tr_metric_series(conns, NULL);
}

static void count_response(int status)
{
    int cls = status / 100;
    if (cls >= 1 && cls <= 5) tr_counter_inc(m_responses[cls]);
}

static void conn_process(conn_t *c);
static void conn_flush(conn_t *c);
static void conn_close(conn_t *c);
static void conn_after_write(conn_t *c);
static void req_finish(req_t *r);
static void held_push(conn_t *c, req_t *r);
static int dispatch(req_t *r);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);
static void resume_reading(conn_t *c);

/* ---- pools: connections, requests and read buffers are reused, never freed per request */

static char *rbuf_get(tr_http_server_t *s)
{
    if (s->nfree_rbufs) return s->free_rbufs[--s->nfree_rbufs];
    return tr_malloc(s->opts.read_buffer_bytes);
}

static void rbuf_put(tr_http_server_t *s, char *buf)
{
    if (s->nfree_rbufs < POOL_MAX) {
        s->free_rbufs[s->nfree_rbufs++] = buf;
        return;
    }
    free(buf);
}

static req_t *req_get(conn_t *c)
{
    tr_http_server_t *s = c->srv;
    req_t *r = s->free_reqs;
    tr_buf_t keep = TR_BUF_INIT;
    if (r) {
        s->free_reqs = r->next_free;
        s->nfree_reqs--;
        keep = r->out;
        keep.len = 0;
    } else {
        r = tr_malloc(sizeof(*r));
    }
    memset(r, 0, offsetof(req_t, storage));
    r->out = keep;
    tr_arena_init(&r->arena, r->storage, sizeof(r->storage));
    r->conn = c;
    r->pub.content_length = -1;
    r->pub.loop = s->loop;
    r->pub.query = "";
    return r;
}

static void req_put(tr_http_server_t *s, req_t *r)
{
    tr_arena_reset(&r->arena);
    if (r->out.cap > KEEP_OUT_MAX) tr_buf_free(&r->out);
    if (s->nfree_reqs < POOL_MAX) {
        r->next_free = s->free_reqs;
        s->free_reqs = r;
        s->nfree_reqs++;
        return;
    }
    tr_buf_free(&r->out);
    free(r);
}

/*
 * ---- deadlines: setting one is two stores; a per-server sweep timer expires them.
 * Re-arming a timer per request would cost a heap operation on every request.
 */

static void set_deadline(conn_t *c, enum deadline_kind kind, uint64_t ms)
{
    c->deadline_kind = (uint8_t)(ms ? kind : DL_NONE);
    c->deadline = uv_now(c->srv->loop) + ms;
}

/* ---- output */

/* Status lines are formatted once per process; a response copies one. */
#define STATUS_MIN 100
#define STATUS_MAX 599
static char status_lines[STATUS_MAX - STATUS_MIN + 1][48];
static uint8_t status_line_len[STATUS_MAX - STATUS_MIN + 1];

static void status_lines_init(void)
{
    for (int code = STATUS_MIN; code <= STATUS_MAX; code++) {
        const char *reason = http_status_str((enum http_status)code);
        if (!strcmp(reason, "<unknown>")) reason = ""; /* the reason phrase is optional */
        int n = snprintf(status_lines[code - STATUS_MIN], sizeof(status_lines[0]),
                         "HTTP/1.1 %d %.32s\r\n", code, reason);
        status_line_len[code - STATUS_MIN] = (uint8_t)n;
    }
}

static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

static char *put_u64(char *p, uint64_t v)
{
    char tmp[20];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return put(p, tmp + i, sizeof(tmp) - i);
}

static void out_reserve_status(tr_buf_t *o, int status)
{
    if (status < STATUS_MIN || status > STATUS_MAX) status = 500;
    tr_buf_append(o, status_lines[status - STATUS_MIN], status_line_len[status - STATUS_MIN]);
}

/* Where r's response goes: the connection's output when every response before it is
 * complete, else r's own buffer until they are (held_advance moves it over). */
static tr_buf_t *out_of(req_t *r)
{
    conn_t *c = r->conn;
    return !c->held || c->held == r ? &c->out : &r->out;
}

static void flush_unqueue(conn_t *c)
{
    if (!c->flush_queued) return;
    c->flush_queued = false;
    if (c->flush_prev)
        c->flush_prev->flush_next = c->flush_next;
    else
        c->srv->flush_head = c->flush_next;
    if (c->flush_next) c->flush_next->flush_prev = c->flush_prev;
    c->flush_prev = c->flush_next = NULL;
}

/*
 * Output queued from outside the server's read callback (a proxied response arriving on
 * another socket, a timer) is written once the current loop phase is over: in the check
 * phase right after this iteration's I/O callbacks, or in the prepare phase right before
 * the loop would block (for output queued by timers). A response head and body produced
 * by separate calls leave in one write, and nothing waits for the next poll.
 */
static void flush_queued(tr_http_server_t *s)
{
    while (s->flush_head) {
        conn_t *c = s->flush_head;
        flush_unqueue(c);
        if (!c->closing) conn_flush(c);
    }
    uv_check_stop(&s->flusher);
    uv_prepare_stop(&s->flusher_prep);
}

static void on_flush_check(uv_check_t *h)
{
    flush_queued(h->data);
}

static void on_flush_prepare(uv_prepare_t *h)
{
    flush_queued(h->data);
}

static void mark_dirty(conn_t *c)
{
    if (c->processing) {
        c->dirty = true;
        return;
    }
    if (c->flush_queued || c->closing) return;
    tr_http_server_t *s = c->srv;
    c->flush_queued = true;
    c->flush_prev = NULL;
    c->flush_next = s->flush_head;
    if (s->flush_head) s->flush_head->flush_prev = c;
    s->flush_head = c;
    uv_check_start(&s->flusher, on_flush_check);
    uv_prepare_start(&s->flusher_prep, on_flush_prepare);
}

static void on_write(uv_write_t *w, int status)
{
    conn_t *c = w->data;
    free(c->wreq);
    c->wreq = NULL;
    tr_buf_reset(&c->inflight);
    if (status < 0 || c->closing) {
        conn_close(c);
        return;
    }
    if (c->deadline_kind == DL_SEND)
        set_deadline(c, c->req || c->held ? DL_NONE : DL_IDLE, c->srv->opts.idle_timeout_ms);
    if (c->out.len) {
        conn_flush(c);
        return;
    }
    conn_after_write(c);
}

/* Everything queued goes out in one write; only a full socket buffer takes the slow path. */
static void conn_flush(conn_t *c)
{
    c->dirty = false;
    if (c->closing || c->wreq) return;
    if (c->out.len == 0) {
        /* Nothing to send, but what follows a flush (close, drain) must still happen. */
        conn_after_write(c);
        return;
    }
    uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == (int)c->out.len) {
        tr_buf_reset(&c->out);
        conn_after_write(c);
        return;
    }
    if (n < 0 && n != UV_EAGAIN) {
        conn_close(c);
        return;
    }
    size_t done = n > 0 ? (size_t)n : 0;
    /* Swap buffers so new output can queue while the kernel drains the rest. */
    tr_buf_t tmp = c->inflight;
    c->inflight = c->out;
    c->out = tmp;
    tr_buf_reset(&c->out);
    c->wreq = tr_malloc(sizeof(*c->wreq));
    c->wreq->data = c;
    b = uv_buf_init(c->inflight.data + done, (unsigned)(c->inflight.len - done));
    if (uv_write(c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0) {
        free(c->wreq);
        c->wreq = NULL;
        conn_close(c);
        return;
    }
    set_deadline(c, DL_SEND, c->srv->opts.send_timeout_ms);
}

static void on_shutdown(uv_shutdown_t *sr, int status)
{
    conn_t *c = sr->data;
    free(sr);
    if (status < 0 || c->closing || c->eof) {
        conn_close(c);
        return;
    }
    /* Keep reading (and discarding) so an unread request body can't turn our close into an
     * RST that destroys the response before the client reads it. */
    c->lingering = true;
    set_deadline(c, DL_LINGER, LINGER_MS);
    resume_reading(c);
}

/*
 * Closing always goes through shutdown's callback, so a close never happens inside the
 * handler call (tr_http_res_send…) that finished the response.
 */
static void conn_shutdown(conn_t *c)
{
    if (c->shutting) return;
    c->shutting = true;
    uv_shutdown_t *sr = tr_malloc(sizeof(*sr));
    sr->data = c;
    if (uv_shutdown(sr, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        free(sr);
        conn_close(c);
    }
}

/* Called whenever the output queue is empty. */
static void conn_after_write(conn_t *c)
{
    if (c->closing) return;
    if (c->close_after && !c->held && (!c->req || c->req->res_done)) {
        if (c->eof)
            conn_close(c);
        else if (!c->lingering)
            conn_shutdown(c);
        return;
    }
    if (c->want_drain && c->req && c->req->pub.on_drain) {
        c->want_drain = false;
        c->req->pub.on_drain(&c->req->pub);
    }
}

/* ---- connection lifecycle */

static void server_maybe_done(tr_http_server_t *s)
{
    if (!s->closing || s->handles_open) return;
    void (*done)(void *) = s->done;
    void *data = s->done_data;
    while (s->free_conns) {
        conn_t *c = s->free_conns;
        s->free_conns = c->next;
        free(c);
    }
    while (s->free_reqs) {
        req_t *r = s->free_reqs;
        s->free_reqs = r->next_free;
        tr_buf_free(&r->out);
        free(r);
    }
    while (s->nfree_rbufs)
        free(s->free_rbufs[--s->nfree_rbufs]);
    free(s->free_rbufs);
    free(s);
    if (done) done(data);
}

static void on_server_handle_closed(uv_handle_t *h);

/* During a graceful close the sweep keeps enforcing deadlines until the last connection. */
static void maybe_close_sweep(tr_http_server_t *s)
{
    if (!s->closing || s->nconns || s->sweep_closed) return;
    s->sweep_closed = true;
    uv_close((uv_handle_t *)&s->sweep, on_server_handle_closed);
    uv_close((uv_handle_t *)&s->flusher, on_server_handle_closed);
    uv_close((uv_handle_t *)&s->flusher_prep, on_server_handle_closed);
}

static void on_conn_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    tr_http_server_t *s = c->srv;
    tr_buf_free(&c->out);
    tr_buf_free(&c->inflight);
    tr_buf_free(&c->tail);
    if (s->nfree_conns < POOL_MAX && !s->closing) {
        c->next = s->free_conns;
        s->free_conns = c;
        s->nfree_conns++;
    } else {
        free(c);
    }
    s->handles_open--;
    maybe_close_sweep(s);
    server_maybe_done(s);
}

static void conn_close(conn_t *c)
{
    if (c->closing) return;
    c->closing = true;
    flush_unqueue(c);
    tr_http_server_t *s = c->srv;
    req_t *r = c->req;
    c->req = NULL;
    if (r) {
        if (!r->res_done && r->pub.on_abort) r->pub.on_abort(&r->pub);
        req_put(s, r);
    }
    while ((r = c->held)) {
        c->held = r->held_next;
        c->nheld--;
        if (!r->res_done && r->pub.on_abort) r->pub.on_abort(&r->pub);
        req_put(s, r);
    }
    c->held_tail = NULL;
    if (c->rbuf) {
        rbuf_put(s, c->rbuf);
        c->rbuf = NULL;
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->nconns--;
    tr_gauge_add(m_connections, -1);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

/* Answers a protocol error with problem+json and closes the connection after it. */
static void conn_fail(conn_t *c, int status, const char *slug, const char *title,
                      const char *detail)
{
    if (c->req && c->req->res_started) {
        /* Part of a response is out already; nothing valid can follow it. */
        conn_close(c);
        return;
    }
    tr_buf_t body = TR_BUF_INIT;
    tr_problem_render(&body, status, slug, title, detail);
    /* After the answers to the requests before it, like any other response. */
    tr_buf_t *o = c->held ? &c->tail : &c->out;
    out_reserve_status(o, status);
    count_response(status);
    tr_buf_append_str(o, tr_httpdate_header());
    tr_buf_printf(o,
                  "Content-Type: " TR_PROBLEM_CONTENT_TYPE "\r\nContent-Length: %zu\r\n"
                  "Connection: close\r\n\r\n",
                  body.len);
    tr_buf_append(o, body.data, body.len);
    tr_buf_free(&body);
    if (c->req) {
        req_t *r = c->req;
        c->req = NULL;
        if (r->pub.on_abort && !r->res_done) r->pub.on_abort(&r->pub);
        req_put(c->srv, r);
    }
    c->close_after = true;
    c->rpos = c->rlen = 0;
    mark_dirty(c);
}

static void conn_expire(conn_t *c)
{
    switch (c->deadline_kind) {
    case DL_HEADER:
        if (c->any_bytes) {
            conn_fail(c, 408, "request-timeout", "Request Timeout",
                      "the request headers did not arrive within the header timeout");
            return;
        }
        conn_close(c);
        return;
    case DL_BODY:
        conn_fail(c, 408, "request-timeout", "Request Timeout",
                  "the request body stalled for longer than the body timeout");
        return;
    default:
        conn_close(c);
        return;
    }
}

static void on_sweep(uv_timer_t *t)
{
    tr_http_server_t *s = t->data;
    uint64_t now = uv_now(s->loop);
    conn_t *next;
    for (conn_t *c = s->conns; c; c = next) {
        next = c->next;
        if (c->deadline_kind != DL_NONE && now >= c->deadline && !c->closing) conn_expire(c);
    }
}

/* Deadlines fire within a quarter of the shortest timeout (at most 250 ms late). */
static uint64_t sweep_interval(const tr_http_server_options_t *o)
{
    uint64_t m = o->header_timeout_ms;
    if (o->idle_timeout_ms < m) m = o->idle_timeout_ms;
    if (o->body_timeout_ms < m) m = o->body_timeout_ms;
    if (o->send_timeout_ms < m) m = o->send_timeout_ms;
    m /= 4;
    return m < 5 ? 5 : m > 250 ? 250 : m;
}

/* ---- request parsing callbacks */

static req_t *cur(http_parser *p)
{
    return ((conn_t *)p->data)->req;
}

static int fail_cb(req_t *r, int status, const char *slug, const char *title, const char *detail)
{
    r->fail_status = status;
    r->fail_slug = slug;
    r->fail_title = title;
    r->fail_detail = detail;
    return -1;
}

static int on_message_begin(http_parser *p)
{
    conn_t *c = p->data;
    c->req = req_get(c);
    set_deadline(c, DL_HEADER, c->srv->opts.header_timeout_ms);
    return 0;
}

/* Appends a piece to an arena string that may arrive split across reads. */
static char *append_piece(req_t *r, char *s, uint32_t *len, const char *at, size_t n)
{
    s = tr_arena_grow(&r->arena, s, s ? *len + 1 : 0, *len + n + 1);
    memcpy(s + *len, at, n);
    *len += (uint32_t)n;
    s[*len] = '\0';
    return s;
}

static int check_header_bytes(req_t *r, size_t n)
{
    r->header_bytes += n;
    if (r->header_bytes > r->conn->srv->opts.max_header_bytes)
        return fail_cb(r, 431, "header-too-large", "Request Header Fields Too Large",
                       "the request line and headers exceed the server's limit");
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    req_t *r = cur(p);
    if (r->pub.url_len + n > r->conn->srv->opts.max_uri_bytes)
        return fail_cb(r, 414, "uri-too-long", "URI Too Long",
                       "the request target exceeds the server's limit");
    if (check_header_bytes(r, n)) return -1;
    r->url = append_piece(r, r->url, &r->pub.url_len, at, n);
    return 0;
}

/* obs-fold (a header line starting with SP/HT) is rejected per RFC 9112 §5.2. */
static bool follows_line_fold(conn_t *c, const char *at)
{
    const char *p = at;
    while (p > c->seg_start && (p[-1] == ' ' || p[-1] == '\t'))
        p--;
    if (p > c->seg_start) return p[-1] == '\n'; /* the parser may report the fold's SP too */
    return c->tail_lf_ws;
}

static void header_commit(req_t *r)
{
    if (r->pub.nheaders == r->hdrs_cap) {
        uint32_t cap = r->hdrs_cap ? r->hdrs_cap * 2 : 16;
        r->hdrs = tr_arena_grow(&r->arena, r->hdrs, r->hdrs_cap * sizeof(*r->hdrs),
                                cap * sizeof(*r->hdrs));
        r->hdrs_cap = cap;
    }
    tr_http_header_t *h = &r->hdrs[r->pub.nheaders++];
    h->name = r->field;
    h->name_len = r->field_len;
    h->value = r->value ? r->value : "";
    h->value_len = r->value_len;
    /* Trailing whitespace is not part of a field value (RFC 9110 §5.5). */
    while (h->value_len &&
           (h->value[h->value_len - 1] == ' ' || h->value[h->value_len - 1] == '\t'))
        r->value[--h->value_len] = '\0';
    r->field = r->value = NULL;
    r->field_len = r->value_len = 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    req_t *r = cur(p);
    conn_t *c = r->conn;
    /* A field right after a line break is a new one, even when the last had no value. */
    bool line_start = at > c->seg_start ? at[-1] == '\n' : c->prev_byte == '\n';
    /* ": " and CRLF count once per field, however the name is split across reads. */
    bool starts = r->last_cb != CB_FIELD || line_start;
    if (check_header_bytes(r, n + (starts ? 4 : 0))) return -1;
    /* The lenient parser lets SP into names ("Transfer-Encoding : chunked"); RFC 9112 doesn't. */
    if (memchr(at, ' ', n))
        return fail_cb(r, 400, "invalid-header-name", "Bad Request",
                       "a header field name contains a space");
    if (r->headers_done) return 0; /* chunked trailers are read and dropped */
    if (r->last_cb == CB_VALUE || (r->last_cb == CB_FIELD && line_start)) header_commit(r);
    if (r->field == NULL && r->pub.nheaders >= r->conn->srv->opts.max_headers)
        return fail_cb(r, 431, "too-many-headers", "Request Header Fields Too Large",
                       "the request has more header fields than the server allows");
    r->field = append_piece(r, r->field, &r->field_len, at, n);
    r->last_cb = CB_FIELD;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    req_t *r = cur(p);
    if (check_header_bytes(r, n)) return -1;
    /* An empty value is reported at the next line's start: that is no fold. */
    if ((n && follows_line_fold(r->conn, at)) || memchr(at, '\n', n) || memchr(at, '\r', n))
        return fail_cb(r, 400, "obs-fold", "Bad Request",
                       "header values folded over several lines (obs-fold) are not accepted");
    if (r->headers_done) return 0; /* a trailer */
    r->value = append_piece(r, r->value, &r->value_len, at, n);
    r->last_cb = CB_VALUE;
    return 0;
}

static bool name_is(const tr_http_header_t *h, const char *name, size_t len)
{
    return h->name_len == len && !strncasecmp(h->name, name, len);
}

/* Header checks that defend against request smuggling and ambiguous framing. */
static int check_framing(req_t *r)
{
    bool te = false, host = false;
    const char *cl = NULL;
    for (size_t i = 0; i < r->pub.nheaders; i++) {
        const tr_http_header_t *h = &r->hdrs[i];
        if (name_is(h, "content-length", 14)) {
            if (cl && strcmp(cl, h->value))
                return fail_cb(r, 400, "conflicting-content-length", "Bad Request",
                               "the request has Content-Length headers with different values");
            cl = h->value;
        } else if (name_is(h, "transfer-encoding", 17)) {
            if (te || strcasecmp(h->value, "chunked"))
                return fail_cb(r, 501, "unsupported-transfer-encoding", "Not Implemented",
                               "only 'Transfer-Encoding: chunked' is supported");
            te = true;
        } else if (name_is(h, "host", 4)) {
            if (host)
                return fail_cb(r, 400, "duplicate-host", "Bad Request",
                               "the request has more than one Host header");
            host = true;
        } else if (name_is(h, "expect", 6)) {
            r->pub.expect_continue = !strcasecmp(h->value, "100-continue");
        } else if (name_is(h, "x-correlation-id", 16) ||
                   (!r->correlation_id && name_is(h, "x-request-id", 12))) {
            r->correlation_id = h->value;
        } else if (name_is(h, "traceparent", 11) && h->value_len >= 35 && h->value[2] == '-') {
            memcpy(r->trace_id, h->value + 3, 32);
            r->trace_id[32] = '\0';
        }
    }
    if (te && cl)
        return fail_cb(r, 400, "content-length-with-transfer-encoding", "Bad Request",
                       "a request must not carry both Content-Length and Transfer-Encoding");
    if (!host && r->pub.http_major == 1 && r->pub.http_minor >= 1)
        return fail_cb(r, 400, "missing-host", "Bad Request",
                       "HTTP/1.1 requests must carry a Host header");
    return 0;
}

static void split_target(req_t *r)
{
    r->pub.url = r->url ? r->url : "";
    const char *q = memchr(r->pub.url, '?', r->pub.url_len);
    if (!q) {
        r->pub.path = r->pub.url;
        r->pub.path_len = r->pub.url_len;
        return;
    }
    r->pub.path_len = (uint32_t)(q - r->pub.url);
    r->pub.path = tr_arena_strndup(&r->arena, r->pub.url, r->pub.path_len);
    r->pub.query = q + 1;
    r->pub.query_len = r->pub.url_len - r->pub.path_len - 1;
}

/* Hands a request whose headers are complete to the handler; -1 when the connection
 * closed meanwhile (stop parsing). */
static int dispatch(req_t *r)
{
    conn_t *c = r->conn;
    set_deadline(c, r->want_body ? DL_BODY : DL_NONE, c->srv->opts.body_timeout_ms);
    /* Lines the handler logs carry the request's ids (tr_log's thread-local context). */
    bool ctx = r->correlation_id || r->trace_id[0];
    if (ctx) tr_log_context_set(r->correlation_id, r->trace_id[0] ? r->trace_id : NULL);
    c->srv->opts.handler(&r->pub, c->srv->opts.handler_data);
    if (ctx) tr_log_context_clear();
    if (c->closing) return -1; /* the handler dropped the connection: stop parsing */
    if (c->req != r) return 0;
    if (r->want_body && r->pub.expect_continue && !r->res_started) {
        tr_buf_append_str(out_of(r), "HTTP/1.1 100 Continue\r\n\r\n");
        mark_dirty(c);
    }
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    req_t *r = cur(p);
    conn_t *c = r->conn;
    if (r->last_cb == CB_VALUE || r->last_cb == CB_FIELD) header_commit(r);
    r->headers_done = true;
    r->pub.headers = r->hdrs;
    r->pub.http_major = (unsigned char)p->http_major;
    r->pub.http_minor = (unsigned char)p->http_minor;
    r->pub.method_id = (unsigned char)p->method;
    r->pub.method = http_method_str((enum http_method)p->method);
    r->pub.head = p->method == HTTP_HEAD;
    r->pub.chunked = (p->flags & F_CHUNKED) != 0;
    if (p->flags & F_CONTENTLENGTH) r->pub.content_length = (int64_t)p->content_length;
    if (check_framing(r)) return -1;
    split_target(r);
    r->want_body = r->pub.chunked || r->pub.content_length > 0;
    if (r->pub.content_length > 0 &&
        (uint64_t)r->pub.content_length > c->srv->opts.max_body_bytes) {
        return fail_cb(r, 413, "body-too-large", "Content Too Large",
                       "the request body is larger than the server accepts");
    }
    if (!http_should_keep_alive(p)) c->close_after = true;
    tr_http_server_t *s = c->srv;
    r->ordered = s->opts.ordered && s->opts.ordered(&r->pub, s->opts.handler_data);
    if (c->held && !r->ordered) {
        /* Earlier answers are pending and this request's effects are not ordered after
         * theirs: the handler sees it once they are complete (held_advance). */
        c->stalled = true;
        set_deadline(c, DL_NONE, 0);
        http_parser_pause(p, 1);
        return 0;
    }
    return dispatch(r);
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    req_t *r = cur(p);
    conn_t *c = r->conn;
    r->body_bytes += n;
    if (r->body_bytes > c->srv->opts.max_body_bytes)
        return fail_cb(r, 413, "body-too-large", "Content Too Large",
                       "the request body is larger than the server accepts");
    if (c->deadline_kind == DL_BODY) set_deadline(c, DL_BODY, c->srv->opts.body_timeout_ms);
    if (r->pub.on_body) r->pub.on_body(&r->pub, at, n);
    return c->closing ? -1 : 0;
}

static int on_message_complete(http_parser *p)
{
    conn_t *c = p->data;
    req_t *r = c->req;
    r->msg_complete = true;
    if (c->deadline_kind == DL_BODY) c->deadline_kind = DL_NONE;
    if (r->pub.on_end) r->pub.on_end(&r->pub);
    if (c->closing) return -1;
    if (c->req == r && r->res_done) {
        req_finish(r);
    } else if (c->req == r && r->ordered && !c->close_after) {
        /* Its answer comes later and its handler keeps the order: read on meanwhile. */
        held_push(c, r);
        set_deadline(c, DL_NONE, 0);
    }
    /* One message per execute call keeps responses in request order. */
    http_parser_pause(p, 1);
    return 0;
}

/* ---- request completion */

/* Queues r behind the answers still pending on its connection. */
static void held_push(conn_t *c, req_t *r)
{
    c->req = NULL;
    r->held = true;
    r->held_next = NULL;
    if (c->held_tail)
        c->held_tail->held_next = r;
    else
        c->held = r;
    c->held_tail = r;
    c->nheld++;
}

/*
 * The first held request is answered: its response and every complete one after it go
 * to the output, in order; then parsing goes on (a stalled request reaches the handler
 * once nothing before it is pending).
 */
static void held_advance(conn_t *c)
{
    while (c->held && c->held->res_done) {
        req_t *r = c->held;
        c->held = r->held_next;
        if (!c->held) c->held_tail = NULL;
        c->nheld--;
        req_put(c->srv, r);
        req_t *next = c->held ? c->held : c->req;
        if (next && next->out.len) {
            tr_buf_append(&c->out, next->out.data, next->out.len);
            next->out.len = 0;
        }
    }
    if (!c->held && c->tail.len) {
        tr_buf_append(&c->out, c->tail.data, c->tail.len);
        c->tail.len = 0;
    }
    mark_dirty(c);
    if (c->processing || c->closing) return; /* the parse under way goes on by itself */
    if (!c->held && !c->req) set_deadline(c, DL_IDLE, c->srv->opts.idle_timeout_ms);
    conn_process(c); /* dispatches a stalled request, parses past HELD_MAX, sees EOF */
}

static void req_finish(req_t *r)
{
    conn_t *c = r->conn;
    c->req = NULL;
    if (c->held)
        held_push(c, r); /* answered, behind answers still pending: r->out waits */
    else
        req_put(c->srv, r);
    if (c->close_after) {
        c->rpos = c->rlen = 0;
        mark_dirty(c);
        return;
    }
    if (c->eof && c->rpos == c->rlen) {
        c->close_after = true;
        mark_dirty(c);
        return;
    }
    set_deadline(c, c->held ? DL_NONE : DL_IDLE, c->srv->opts.idle_timeout_ms);
    if (c->processing) {
        c->dirty = true; /* the read that is being processed flushes at its end */
        return;
    }
    conn_process(c);
    conn_flush(c);
}

/* ---- reading */

static void release_rbuf_if_idle(conn_t *c)
{
    if (c->rbuf && !c->req && c->rpos == c->rlen) {
        rbuf_put(c->srv, c->rbuf);
        c->rbuf = NULL;
        c->rpos = c->rlen = 0;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn_t *c = h->data;
    if (!c->rbuf) c->rbuf = rbuf_get(c->srv);
    if (c->rpos == c->rlen) c->rpos = c->rlen = 0;
    size_t cap = c->srv->opts.read_buffer_bytes;
    if (c->rlen == cap && c->rpos > 0) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    *buf = uv_buf_init(c->rbuf + c->rlen, (unsigned)(cap - c->rlen));
}

static bool has_transfer_encoding(const req_t *r)
{
    for (size_t i = 0; i < r->pub.nheaders; i++)
        if (name_is(&r->hdrs[i], "transfer-encoding", 17)) return true;
    return r->field && r->field_len == 17 && !strncasecmp(r->field, "transfer-encoding", 17);
}

static void parse_error(conn_t *c, enum http_errno e)
{
    req_t *r = c->req;
    if (r && r->fail_status) {
        conn_fail(c, r->fail_status, r->fail_slug, r->fail_title, r->fail_detail);
        return;
    }
    if (e == HPE_UNEXPECTED_CONTENT_LENGTH) {
        /* http-parser refuses these framing conflicts before our own check sees them. */
        if (r && has_transfer_encoding(r))
            conn_fail(c, 400, "content-length-with-transfer-encoding", "Bad Request",
                      "a request must not carry both Content-Length and Transfer-Encoding");
        else
            conn_fail(c, 400, "conflicting-content-length", "Bad Request",
                      "the request has more than one Content-Length header");
        return;
    }
    char detail[160];
    snprintf(detail, sizeof(detail), "the request is not valid HTTP/1.1: %s",
             http_errno_description(e));
    conn_fail(c, 400, "malformed-request", "Bad Request", detail);
}

static bool tail_is_lf_ws(const char *start, const char *end)
{
    const char *p = end;
    while (p > start && (p[-1] == ' ' || p[-1] == '\t'))
        p--;
    return p > start && p[-1] == '\n';
}

/* Parses buffered input, one message at a time, until it runs out or must wait. */
static void conn_process(conn_t *c)
{
    c->processing = true;
    for (;;) {
        if (c->stalled && !c->held && !c->closing) {
            /* Every answer before it is complete: the waiting request reaches the handler. */
            c->stalled = false;
            if (dispatch(c->req) < 0) break;
        }
        if (c->closing || c->rpos >= c->rlen) break;
        req_t *r = c->req;
        if (!r && c->close_after) {
            c->rpos = c->rlen; /* nothing after a closing request is served */
            break;
        }
        if (r && (r->msg_complete || r->body_paused || c->stalled)) break;
        if (!r && c->nheld >= HELD_MAX) break; /* held_advance parses on */
        const char *seg = c->rbuf + c->rpos;
        size_t avail = c->rlen - c->rpos;
        c->seg_start = seg;
        size_t n = http_parser_execute(&c->parser, &settings, seg, avail);
        if (c->closing) break;
        c->any_bytes = true;
        c->rpos += (uint32_t)n;
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
            continue;
        }
        if (e != HPE_OK) {
            parse_error(c, e);
            break;
        }
        if (c->parser.upgrade || n == 0) {
            /* Protocol upgrades are not served here: answer, then close. */
            c->close_after = true;
            c->rpos = c->rlen;
            break;
        }
        c->prev_byte = n ? seg[n - 1] : c->prev_byte;
        c->tail_lf_ws = c->req && !c->req->headers_done && tail_is_lf_ws(seg, seg + n);
    }
    c->processing = false;
    if (c->closing) return;
    release_rbuf_if_idle(c);
    if (c->eof && c->rpos == c->rlen) {
        if (c->req && !c->req->msg_complete) {
            /* The client half-closed in the middle of a request: it can never complete. */
            conn_close(c);
            return;
        }
        if (!c->req && !c->held) {
            /* The client half-closed and everything it asked is answered. */
            c->close_after = true;
            c->dirty = true;
            return;
        }
    }
    if (!c->req || !c->req->body_paused) resume_reading(c);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = st->data;
    if (nread == 0) return;
    if (nread == UV_ENOBUFS) {
        /* The buffer is full of pipelined input we can't parse yet: stop reading. */
        uv_read_stop(st);
        c->read_stopped = true;
        return;
    }
    if (nread < 0) {
        c->eof = true;
        uv_read_stop(st);
        bool pending = c->req || c->held || c->rpos < c->rlen || c->wreq || c->out.len;
        /* As nginx does, a client that closes while a handler holds its request
         * asynchronously (a blocking query, a proxied call) has gone: abort the work. */
        bool held = (c->req && !c->req->res_done && c->req->pub.on_abort) || c->held;
        if (nread != UV_EOF || c->lingering || !pending || held ||
            (c->req && !c->req->msg_complete)) {
            conn_close(c);
            return;
        }
        return; /* answer what was asked (conn_process closes when all is answered) */
    }
    if (c->lingering) {
        c->rpos = c->rlen = 0;
        return;
    }
    c->rlen += (uint32_t)nread;
    conn_process(c);
    if (c->dirty) conn_flush(c);
}

static void resume_reading(conn_t *c)
{
    if (c->read_stopped && !c->eof && !c->closing) {
        c->read_stopped = false;
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    }
}

/* ---- accepting */

static void on_connection(uv_stream_t *ls, int status)
{
    tr_http_server_t *s = ls->data;
    if (status < 0 || s->closing) return;
    conn_t *c = s->free_conns;
    if (c) {
        s->free_conns = c->next;
        s->nfree_conns--;
    } else {
        c = tr_malloc(sizeof(*c));
    }
    memset(c, 0, sizeof(*c));
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    s->handles_open++;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    tr_gauge_add(m_connections, 1);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    set_deadline(c, DL_HEADER, s->opts.header_timeout_ms);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* ---- public: server */

static void fill_defaults(tr_http_server_options_t *o)
{
    if (!o->max_header_bytes) o->max_header_bytes = 16 * 1024;
    if (!o->max_headers) o->max_headers = 100;
    if (!o->max_uri_bytes) o->max_uri_bytes = 8 * 1024;
    if (!o->max_body_bytes) o->max_body_bytes = 1024 * 1024;
    if (!o->header_timeout_ms) o->header_timeout_ms = 10000;
    if (!o->idle_timeout_ms) o->idle_timeout_ms = 60000;
    if (!o->body_timeout_ms) o->body_timeout_ms = 60000;
    if (!o->send_timeout_ms) o->send_timeout_ms = 60000;
    if (!o->read_buffer_bytes) o->read_buffer_bytes = 16 * 1024;
}

static void init_settings(void)
{
    /* A peer that resets must cost an EPIPE, not the process (also for SDK users that
     * run a server without tr_runtime_run). */
    signal(SIGPIPE, SIG_IGN);
    metrics_init();
    status_lines_init();
    settings.on_message_begin = on_message_begin;
    settings.on_url = on_url;
    settings.on_header_field = on_header_field;
    settings.on_header_value = on_header_value;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
}

int tr_http_server_start(uv_loop_t *loop, int fd, const tr_http_server_options_t *opts,
                         tr_http_server_t **out)
{
    static uv_once_t once = UV_ONCE_INIT;
    uv_once(&once, init_settings);
    if (!opts->handler) return UV_EINVAL;
    tr_http_server_t *s = tr_calloc(1, sizeof(*s));
    s->loop = loop;
    s->opts = *opts;
    fill_defaults(&s->opts);
    if (s->opts.max_header_bytes > 80 * 1024)
        http_parser_set_max_header_size((uint32_t)s->opts.max_header_bytes);
    s->free_rbufs = tr_calloc(POOL_MAX, sizeof(char *));
    uv_tcp_init(loop, &s->listener);
    uv_timer_init(loop, &s->sweep);
    uv_check_init(loop, &s->flusher);
    uv_prepare_init(loop, &s->flusher_prep);
    s->listener.data = s->sweep.data = s->flusher.data = s->flusher_prep.data = s;
    s->handles_open = 4;
    int err = uv_tcp_open(&s->listener, fd);
    if (!err) err = uv_listen((uv_stream_t *)&s->listener, 1024, on_connection);
    if (err) {
        if (uv_fileno((uv_handle_t *)&s->listener, &(uv_os_fd_t){0}) < 0) close(fd);
        s->closing = true;
        uv_close((uv_handle_t *)&s->listener, on_server_handle_closed);
        s->sweep_closed = true;
        uv_close((uv_handle_t *)&s->sweep, on_server_handle_closed);
        uv_close((uv_handle_t *)&s->flusher, on_server_handle_closed);
        uv_close((uv_handle_t *)&s->flusher_prep, on_server_handle_closed);
        return err;
    }
    uint64_t every = sweep_interval(&s->opts);
    uv_timer_start(&s->sweep, on_sweep, every, every);
    *out = s;
    return 0;
}

static void on_server_handle_closed(uv_handle_t *h)
{
    tr_http_server_t *s = h->data;
    s->handles_open--;
    server_maybe_done(s);
}

void tr_http_server_close(tr_http_server_t *s, bool force, void (*done)(void *data), void *data)
{
    if (!s->closing) {
        s->closing = true;
        s->done = done;
        s->done_data = data;
        uv_close((uv_handle_t *)&s->listener, on_server_handle_closed);
    }
    if (force) s->force = true;
    conn_t *next;
    for (conn_t *c = s->conns; c; c = next) {
        next = c->next;
        if (force || (!c->req && !c->held && !c->wreq && !c->out.len)) {
            conn_close(c);
        } else {
            c->close_after = true;
        }
    }
    maybe_close_sweep(s);
}

size_t tr_http_server_connections(const tr_http_server_t *s)
{
    return s->nconns;
}

/* ---- public: request */

static req_t *R(const tr_http_req_t *pub)
{
    return (req_t *)pub;
}

const char *tr_http_req_header(const tr_http_req_t *pub, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < pub->nheaders; i++)
        if (name_is(&pub->headers[i], name, len)) return pub->headers[i].value;
    return NULL;
}

void *tr_http_req_alloc(tr_http_req_t *pub, size_t n)
{
    return tr_arena_alloc(&R(pub)->arena, n);
}

void tr_http_req_pause(tr_http_req_t *pub)
{
    req_t *r = R(pub);
    if (r->body_paused) return;
    r->body_paused = true;
    http_parser_pause(&r->conn->parser, 1);
    uv_read_stop((uv_stream_t *)&r->conn->tcp);
    r->conn->read_stopped = true;
    /* We stopped reading, so a quiet client isn't stalling: no body deadline until resume. */
    if (r->conn->deadline_kind == DL_BODY) r->conn->deadline_kind = DL_NONE;
}

void tr_http_req_resume(tr_http_req_t *pub)
{
    req_t *r = R(pub);
    conn_t *c = r->conn;
    if (!r->body_paused) return;
    r->body_paused = false;
    http_parser_pause(&c->parser, 0);
    if (!r->msg_complete && c->deadline_kind == DL_NONE)
        set_deadline(c, DL_BODY, c->srv->opts.body_timeout_ms);
    resume_reading(c);
    if (!c->processing) {
        conn_process(c);
        if (c->dirty) conn_flush(c);
    }
}

void tr_http_req_peer(const tr_http_req_t *pub, char *buf, size_t len)
{
    conn_t *c = R(pub)->conn;
    if (!c->peer[0]) { /* one system call per connection, not per request */
        struct sockaddr_storage ss;
        int n = sizeof(ss);
        if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &n) == 0)
            tr_net_format_addr((struct sockaddr *)&ss, c->peer, sizeof(c->peer));
        else
            snprintf(c->peer, sizeof(c->peer), "unknown");
    }
    snprintf(buf, len, "%s", c->peer);
}

/* ---- public: response */

void tr_http_res_headern(tr_http_req_t *pub, const char *name, size_t name_len, const char *value,
                         size_t value_len)
{
    req_t *r = R(pub);
    if (r->res_started) return;
    if (name_len == 14 && !strncasecmp(name, "content-length", 14)) {
        /* `value` is counted, not terminated (a proxy passes header bytes through). */
        uint64_t n = 0;
        for (size_t i = 0; i < value_len && value[i] >= '0' && value[i] <= '9'; i++)
            n = n * 10 + (uint64_t)(value[i] - '0');
        r->res_length_known = true;
        r->res_length = n;
        return;
    }
    if (r->nres == r->res_cap) {
        uint32_t cap = r->res_cap ? r->res_cap * 2 : 8;
        r->res_hdrs = tr_arena_grow(&r->arena, r->res_hdrs, r->res_cap * sizeof(*r->res_hdrs),
                                    cap * sizeof(*r->res_hdrs));
        r->res_cap = cap;
    }
    tr_http_header_t *h = &r->res_hdrs[r->nres++];
    h->name = tr_arena_strndup(&r->arena, name, name_len);
    h->value = tr_arena_strndup(&r->arena, value, value_len);
    h->name_len = (uint32_t)name_len;
    h->value_len = (uint32_t)value_len;
}

void tr_http_res_header(tr_http_req_t *pub, const char *name, const char *value)
{
    tr_http_res_headern(pub, name, strlen(name), value, strlen(value));
}

void tr_http_res_close(tr_http_req_t *pub)
{
    R(pub)->conn->close_after = true;
}

void tr_http_res_abort(tr_http_req_t *pub)
{
    req_t *r = R(pub);
    r->res_done = true; /* the handler asked for it: no on_abort back to it */
    conn_close(r->conn);
}

bool tr_http_res_started(const tr_http_req_t *pub)
{
    return R(pub)->res_started;
}

static bool status_has_body(int status)
{
    return !(status < 200 || status == 204 || status == 205 || status == 304);
}

#define LIT(p, s) put((p), (s), sizeof(s) - 1)

/*
 * Serialises the response head with one reservation and plain copies: this runs for
 * every response, and a call per fragment costs more than the formatting itself.
 * `extra` is room to reserve beyond the head (a body that follows at once).
 */
static void write_head(req_t *r, int status, const char *content_type, size_t extra)
{
    conn_t *c = r->conn;
    r->res_started = true;
    /* A final answer before an expected body: the client may never send it, so close. */
    if (r->want_body && r->pub.expect_continue && !r->msg_complete) c->close_after = true;
    if (status < STATUS_MIN || status > STATUS_MAX) status = 500;
    count_response(status);
    const char *date = tr_httpdate_header();
    size_t ct_len = content_type ? strlen(content_type) : 0;
    size_t need = 48 + 40 + ct_len + 16 + 40 + 32 + 24 + 2 + extra;
    for (uint32_t i = 0; i < r->nres; i++)
        need += r->res_hdrs[i].name_len + r->res_hdrs[i].value_len + 4;
    tr_buf_t *o = out_of(r);
    tr_buf_reserve(o, need);
    char *p = o->data + o->len;
    p = put(p, status_lines[status - STATUS_MIN], status_line_len[status - STATUS_MIN]);
    p = put(p, date, strlen(date));
    if (content_type) {
        p = LIT(p, "Content-Type: ");
        p = put(p, content_type, ct_len);
        p = LIT(p, "\r\n");
    }
    if (status_has_body(status)) {
        if (r->res_length_known) {
            p = LIT(p, "Content-Length: ");
            p = put_u64(p, r->res_length);
            p = LIT(p, "\r\n");
        } else if (r->pub.http_minor >= 1 && r->pub.http_major == 1) {
            r->res_chunked = true;
            p = LIT(p, "Transfer-Encoding: chunked\r\n");
        } else {
            c->close_after = true; /* HTTP/1.0 without length: the close delimits the body */
        }
    } else if (status == 205) {
        p = LIT(p, "Content-Length: 0\r\n"); /* 205 has no content, but is not self-delimiting */
    }
    if (c->close_after && !r->held) /* a held answer is never the connection's last */
        p = LIT(p, "Connection: close\r\n");
    else if (r->pub.http_minor == 0)
        p = LIT(p, "Connection: keep-alive\r\n");
    for (uint32_t i = 0; i < r->nres; i++) {
        const tr_http_header_t *h = &r->res_hdrs[i];
        p = put(p, h->name, h->name_len);
        p = LIT(p, ": ");
        p = put(p, h->value, h->value_len);
        p = LIT(p, "\r\n");
    }
    p = LIT(p, "\r\n");
    o->len = (size_t)(p - o->data);
}

static void res_complete(req_t *r)
{
    conn_t *c = r->conn;
    r->res_done = true;
    if (r->held) {
        if (c->held == r) held_advance(c);
        return;
    }
    if (!r->msg_complete && r->want_body && r->pub.expect_continue) c->close_after = true;
    if (r->msg_complete) {
        req_finish(r); /* releases the request first, then flushes */
        return;
    }
    mark_dirty(c);
}

void tr_http_res_send(tr_http_req_t *pub, int status, const char *content_type, const void *body,
                      size_t len)
{
    req_t *r = R(pub);
    if (r->res_started) return;
    r->res_length_known = true;
    r->res_length = len;
    bool with_body = !pub->head && status_has_body(status);
    write_head(r, status, content_type, with_body ? len : 0);
    if (with_body && len) {
        tr_buf_t *o = out_of(r);
        memcpy(o->data + o->len, body, len); /* room was reserved with the head */
        o->len += len;
    }
    res_complete(r);
}

void tr_http_res_start(tr_http_req_t *pub, int status)
{
    req_t *r = R(pub);
    if (r->res_started) return;
    write_head(r, status, NULL, 0);
    if (pub->head || !status_has_body(status)) r->res_chunked = false;
    mark_dirty(r->conn);
}

bool tr_http_res_write(tr_http_req_t *pub, const void *data, size_t len)
{
    req_t *r = R(pub);
    conn_t *c = r->conn;
    if (!r->res_started) tr_http_res_start(pub, 200);
    if (r->res_done || len == 0 || pub->head) return true;
    tr_buf_t *o = out_of(r);
    if (r->res_chunked) {
        char size[20];
        int n = snprintf(size, sizeof(size), "%zx\r\n", len);
        tr_buf_append(o, size, (size_t)n);
        tr_buf_append(o, data, len);
        tr_buf_append(o, "\r\n", 2);
    } else {
        tr_buf_append(o, data, len);
    }
    mark_dirty(c);
    /* Held behind an earlier answer, the bytes wait in memory: that answer's handler
     * has its own deadline, so the wait is bounded. */
    if (o != &c->out || c->out.len + c->inflight.len < OUT_HIGH_WATER) return true;
    c->want_drain = true;
    return false;
}

void tr_http_res_end(tr_http_req_t *pub)
{
    req_t *r = R(pub);
    if (!r->res_started) tr_http_res_start(pub, 200);
    if (r->res_done) return;
    if (r->res_chunked && !pub->head) tr_buf_append(out_of(r), "0\r\n\r\n", 5);
    res_complete(r);
}

void tr_http_res_problem(tr_http_req_t *pub, int status, const char *slug, const char *title,
                         const char *detail_fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, detail_fmt);
    vsnprintf(detail, sizeof(detail), detail_fmt, ap);
    va_end(ap);
    tr_buf_t body = TR_BUF_INIT;
    tr_problem_render(&body, status, slug, title, detail);
    tr_http_res_send(pub, status, TR_PROBLEM_CONTENT_TYPE, body.data, body.len);
    tr_buf_free(&body);
}
