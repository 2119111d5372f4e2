/* HTTP/1.1 client: keep-alive pools per endpoint, deadlines, streaming, typed errors. */
#include "trellis/http_client.h"
#include "core/http_client_internal.h"

#include "core/buf.h"
#include "core/mem.h"

#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_MAX_IDLE     64
#define DEFAULT_IDLE_MS      60000
#define DEFAULT_CONNECT_MS   5000
#define DEFAULT_RESPONSE_MS  30000
#define DEFAULT_HEADER_BYTES (16 * 1024)
#define DEFAULT_BODY_BYTES   (1024 * 1024)
#define READ_BUF_SIZE        (64 * 1024)
#define WIRE_COPY_MAX        (64 * 1024) /* larger buffered bodies are referenced, not copied */
#define STREAM_HIGH_WATER    (64 * 1024) /* streamed bytes buffered before write() says wait */
#define MAX_HEADERS          128
#define MAX_FREE_REQS        256
#define MAX_KEPT_BUF         (256 * 1024) /* larger buffers are freed when a request recycles */
#define FLAG_PARSE_HEAD      0x1
#define FLAG_PARSE_FETCH     0x2

/* Intrusive circular doubly linked list. */
typedef struct list_s {
    struct list_s *prev, *next;
} list_t;

#define container_of(p, type, field) ((type *)((char *)(p)-offsetof(type, field)))

static void list_init(list_t *l)
{
    l->prev = l->next = l;
}

static bool list_empty(const list_t *l)
{
    return l->next == l;
}

static void list_insert_head(list_t *l, list_t *e)
{
    e->next = l->next;
    e->prev = l;
    l->next->prev = e;
    l->next = e;
}

static void list_remove(list_t *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
    list_init(e);
}

/* One endpoint's idle connections, most recently used first. */
typedef struct pool_s {
    struct sockaddr_storage addr;
    struct pool_s *next; /* hash bucket chain */
    list_t idle;
    unsigned nidle;
} pool_t;

enum conn_state { CONN_CONNECTING, CONN_ACTIVE, CONN_IDLE, CONN_CLOSING };

typedef struct conn_s {
    uv_tcp_t tcp;
    uv_timer_t timer; /* one per connection, re-armed lazily from `deadline` */
    uv_connect_t connect_req;
    uv_write_t write_req;
    tr_http_client_t *client;
    pool_t *pool;
    tr_http_client_req_t *req; /* the request using the connection, NULL when idle */
    list_t link;               /* pool->idle while idle */
    list_t all;                /* client->conns */
    list_t deferred;           /* client->deferred while leftover input waits for resume */
    uint64_t deadline;         /* loop time in ms; 0 = none */
    uint64_t timer_due;        /* when the timer fires; 0 = not armed */
    enum conn_state state;
    int fail_err;      /* why the connection is closing, given to its request */
    unsigned nclosing; /* handles still closing */
    unsigned served;   /* responses completed; > 0 means a reused connection */
    bool writing;      /* write_req in flight */
    tr_buf_t leftover; /* input read but not parsed because the request paused */
    size_t leftover_off;
} conn_t;

typedef struct hdr_off_s {
    uint32_t name_off, name_len, value_off, value_len;
} hdr_off_t;

struct tr_http_client_req_s {
    tr_http_client_t *client;
    conn_t *conn;
    pool_t *pool;
    list_t link; /* client->free_reqs while recycled */
    tr_http_client_request_t r;
    tr_http_client_fetch_cb fetch_cb;
    http_parser parser;
    /* Output: wire holds head (+ small body) and is kept for a transparent retry. */
    tr_buf_t wire;
    size_t wire_off;
    const char *big_body; /* a buffered body too large to copy; caller-owned */
    size_t big_len, big_off;
    tr_buf_t pending; /* streamed bytes not yet handed to the socket */
    size_t pending_off;
    tr_buf_t inflight; /* streamed bytes owned by the write in flight */
    int64_t content_length;
    uint64_t stream_written;
    /* Response. */
    tr_buf_t hbuf; /* header names and values, addressed by hoffs */
    hdr_off_t *hoffs;
    tr_http_client_header_t *hdrs;
    size_t nhdrs, hcap;
    tr_buf_t body; /* fetch only */
    size_t head_bytes;
    int status;
    int err; /* set by parser callbacks */
    unsigned attempts;
    bool stream, chunked, ended, head, idempotent, close_requested;
    bool sent, sent_before, stream_sent, reused, want_drain, wrote_all;
    bool resp_bytes, interim, in_value, headers_done, complete, keep_alive;
    bool paused, in_parse, canceled;
};

struct tr_http_client_s {
    uv_loop_t *loop;
    tr_http_client_options_t opts;
    uv_idle_t defer; /* parses input left over from a pause, after resume */
    list_t deferred;
    list_t conns;
    size_t nconns;
    pool_t **buckets;
    size_t nbuckets, npools;
    list_t free_reqs;
    size_t nfree;
    char *rbuf; /* one read buffer for every connection: each read is parsed at once */
    bool closing, defer_closed;
    tr_http_client_close_cb close_cb;
};

static void conn_fail(conn_t *conn, int err);
static void conn_close(conn_t *conn);
static void flush(tr_http_client_req_t *req, bool from_cb);
static int start_attempt(tr_http_client_req_t *req);
static void on_defer(uv_idle_t *h);

/* ---- options, endpoints ---- */

void tr_http_client_options_init(tr_http_client_options_t *opts)
{
    opts->max_idle_per_endpoint = DEFAULT_MAX_IDLE;
    opts->idle_timeout_ms = DEFAULT_IDLE_MS;
    opts->connect_timeout_ms = DEFAULT_CONNECT_MS;
    opts->response_timeout_ms = DEFAULT_RESPONSE_MS;
    opts->max_header_bytes = DEFAULT_HEADER_BYTES;
    opts->max_body_bytes = DEFAULT_BODY_BYTES;
}

static int parse_port(const char *s, int *port)
{
    char *end;
    if (*s < '0' || *s > '9') return UV_EINVAL;
    long v = strtol(s, &end, 10);
    if (*end != '\0' || v < 1 || v > 65535) return UV_EINVAL;
    *port = (int)v;
    return 0;
}

int tr_http_endpoint_parse(tr_http_endpoint_t *ep, const char *hostport)
{
    char ip[INET6_ADDRSTRLEN];
    int port;
    memset(ep, 0, sizeof(*ep));
    if (hostport == NULL || strlen(hostport) >= sizeof(ep->host)) return UV_EINVAL;
    if (hostport[0] == '[') {
        const char *close = strchr(hostport, ']');
        size_t n = close ? (size_t)(close - hostport - 1) : sizeof(ip);
        if (n >= sizeof(ip) || close[1] != ':' || parse_port(close + 2, &port)) return UV_EINVAL;
        memcpy(ip, hostport + 1, n);
        ip[n] = '\0';
        if (uv_ip6_addr(ip, port, (struct sockaddr_in6 *)&ep->addr)) return UV_EINVAL;
    } else {
        const char *colon = strrchr(hostport, ':');
        size_t n = colon ? (size_t)(colon - hostport) : sizeof(ip);
        if (n >= sizeof(ip) || parse_port(colon + 1, &port)) return UV_EINVAL;
        memcpy(ip, hostport, n);
        ip[n] = '\0';
        if (uv_ip4_addr(ip, port, (struct sockaddr_in *)&ep->addr)) return UV_EINVAL;
    }
    memcpy(ep->host, hostport, strlen(hostport) + 1);
    return 0;
}

int tr_http_endpoint_from_addr(tr_http_endpoint_t *ep, const struct sockaddr *addr)
{
    char ip[INET6_ADDRSTRLEN];
    memset(ep, 0, sizeof(*ep));
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
        memcpy(&ep->addr, a, sizeof(*a));
        uv_ip4_name(a, ip, sizeof(ip));
        snprintf(ep->host, sizeof(ep->host), "%s:%u", ip, ntohs(a->sin_port));
    } else if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
        memcpy(&ep->addr, a, sizeof(*a));
        uv_ip6_name(a, ip, sizeof(ip));
        snprintf(ep->host, sizeof(ep->host), "[%s]:%u", ip, ntohs(a->sin6_port));
    } else {
        return UV_EINVAL;
    }
    return 0;
}

/* ---- pools, keyed by address ---- */

static bool addr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family) return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

static size_t addr_hash(const struct sockaddr_storage *a)
{
    const unsigned char *p;
    size_t n, h = 14695981039346656037ULL;
    if (a->ss_family == AF_INET) {
        p = (const void *)&((const struct sockaddr_in *)a)->sin_addr;
        n = 4;
    } else {
        p = (const void *)&((const struct sockaddr_in6 *)a)->sin6_addr;
        n = 16;
    }
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    h ^= ((const struct sockaddr_in *)a)->sin_port; /* same offset for both families */
    return h * 1099511628211ULL;
}

static void pools_grow(tr_http_client_t *c)
{
    size_t n = c->nbuckets ? c->nbuckets * 2 : 16;
    pool_t **b = tr_calloc(n, sizeof(*b));
    for (size_t i = 0; i < c->nbuckets; i++) {
        while (c->buckets[i]) {
            pool_t *p = c->buckets[i];
            c->buckets[i] = p->next;
            size_t k = addr_hash(&p->addr) & (n - 1);
            p->next = b[k];
            b[k] = p;
        }
    }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = n;
}

/* Pools live until the client closes: there is one per upstream address ever used. */
static pool_t *pool_get(tr_http_client_t *c, const struct sockaddr_storage *addr)
{
    if (c->npools >= c->nbuckets) pools_grow(c);
    size_t k = addr_hash(addr) & (c->nbuckets - 1);
    for (pool_t *p = c->buckets[k]; p; p = p->next)
        if (addr_equal(&p->addr, addr)) return p;
    pool_t *p = tr_calloc(1, sizeof(*p));
    p->addr = *addr;
    list_init(&p->idle);
    p->next = c->buckets[k];
    c->buckets[k] = p;
    c->npools++;
    return p;
}

/* ---- deadlines: one timer per connection, re-armed only when it must fire sooner ---- */

static void on_timer(uv_timer_t *t);

static void set_deadline(conn_t *conn, uint64_t ms)
{
    uint64_t now = uv_now(conn->client->loop);
    conn->deadline = ms ? now + ms : 0;
    if (!ms || (conn->timer_due && conn->timer_due <= conn->deadline)) return;
    conn->timer_due = conn->deadline;
    uv_timer_start(&conn->timer, on_timer, ms, 0);
}

static void on_timer(uv_timer_t *t)
{
    conn_t *conn = t->data;
    uint64_t now = uv_now(conn->client->loop);
    conn->timer_due = 0;
    if (conn->deadline == 0 || conn->state == CONN_CLOSING) return;
    if (now < conn->deadline) {
        conn->timer_due = conn->deadline;
        uv_timer_start(t, on_timer, conn->deadline - now, 0);
        return;
    }
    if (conn->state == CONN_IDLE)
        conn_close(conn);
    else
        conn_fail(conn,
                  conn->state == CONN_CONNECTING ? TR_ECONNECT_TIMEOUT : TR_ERESPONSE_TIMEOUT);
}

/* ---- response parsing (driven by sockets and by the fuzz target alike) ---- */

enum { FEED_MORE = 0, FEED_DONE = 1, FEED_PAUSED = 2 };

static int header_limit(tr_http_client_req_t *req, size_t len)
{
    req->head_bytes += len;
    if (req->head_bytes > req->client->opts.max_header_bytes) {
        req->err = TR_ETOOLARGE;
        return -1;
    }
    return 0;
}

static void parse_reset(tr_http_client_req_t *req)
{
    tr_buf_reset(&req->hbuf);
    req->nhdrs = 0;
    req->head_bytes = 0;
    req->in_value = false;
    req->status = 0;
}

static int on_message_begin(http_parser *p)
{
    parse_reset(p->data);
    return 0;
}

static int on_status(http_parser *p, const char *at, size_t len)
{
    return header_limit(p->data, len);
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    tr_http_client_req_t *req = p->data;
    if (header_limit(req, len + 4)) return -1; /* ": " and CRLF count towards the limit */
    if (req->headers_done) return 0;           /* chunked trailers: counted, not kept */
    if (req->nhdrs == 0 || req->in_value) {
        if (req->nhdrs == MAX_HEADERS) {
            req->err = TR_ETOOLARGE;
            return -1;
        }
        if (req->nhdrs == req->hcap) {
            req->hcap = req->hcap ? req->hcap * 2 : 16;
            req->hoffs = tr_realloc(req->hoffs, req->hcap * sizeof(*req->hoffs));
            req->hdrs = tr_realloc(req->hdrs, req->hcap * sizeof(*req->hdrs));
        }
        hdr_off_t *h = &req->hoffs[req->nhdrs++];
        h->name_off = (uint32_t)req->hbuf.len;
        h->name_len = h->value_len = 0;
        h->value_off = 0;
        req->in_value = false;
    }
    tr_buf_append(&req->hbuf, at, len);
    req->hoffs[req->nhdrs - 1].name_len += (uint32_t)len;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    tr_http_client_req_t *req = p->data;
    if (header_limit(req, len)) return -1;
    if (req->headers_done) return 0;
    hdr_off_t *h = &req->hoffs[req->nhdrs - 1];
    if (!req->in_value) {
        h->value_off = (uint32_t)req->hbuf.len;
        req->in_value = true;
    }
    tr_buf_append(&req->hbuf, at, len);
    h->value_len += (uint32_t)len;
    return 0;
}

/* Header pointers are built only now: hbuf may move while it grows. */
static void build_headers(tr_http_client_req_t *req)
{
    for (size_t i = 0; i < req->nhdrs; i++) {
        const hdr_off_t *o = &req->hoffs[i];
        tr_http_client_header_t *h = &req->hdrs[i];
        h->name = req->hbuf.data + o->name_off;
        h->name_len = o->name_len;
        h->value = o->value_len ? req->hbuf.data + o->value_off : "";
        h->value_len = o->value_len;
    }
}

static int on_headers_complete(http_parser *p)
{
    tr_http_client_req_t *req = p->data;
    int status = p->status_code;
    if (status == 101 || p->upgrade) {
        req->err = TR_EBAD_RESPONSE; /* we never ask to switch protocols */
        return -1;
    }
    if (status >= 100 && status < 200) {
        req->interim = true; /* 100 Continue, 103 Early Hints: wait for the real one */
        return 1;
    }
    req->status = status;
    req->headers_done = true;
    if (req->conn) req->conn->deadline = 0; /* the response deadline covers headers only */
    build_headers(req);
    uint64_t cl = p->content_length;
    if (req->fetch_cb && cl != ULLONG_MAX && cl > req->client->opts.max_body_bytes) {
        req->err = TR_ETOOLARGE;
        return -1;
    }
    if (req->r.on_headers) req->r.on_headers(req, status, req->hdrs, req->nhdrs);
    return (req->head || status == 204 || status == 304) ? 1 : 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    tr_http_client_req_t *req = p->data;
    if (req->fetch_cb) {
        if (req->body.len + len > req->client->opts.max_body_bytes) {
            req->err = TR_ETOOLARGE;
            return -1;
        }
        tr_buf_append(&req->body, at, len);
        return 0;
    }
    if (req->r.on_body) req->r.on_body(req, at, len);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    tr_http_client_req_t *req = p->data;
    if (req->interim) {
        req->interim = false;
        return 0;
    }
    req->complete = true;
    req->keep_alive = http_should_keep_alive(p) && !req->close_requested;
    http_parser_pause(p, 1); /* bytes after the response are not ours */
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void parse_begin(tr_http_client_req_t *req)
{
    http_parser_init(&req->parser, HTTP_RESPONSE);
    req->parser.data = req;
    parse_reset(req);
    tr_buf_reset(&req->body);
    req->err = 0;
    req->resp_bytes = req->interim = req->headers_done = req->complete = false;
}

static int map_parser_error(tr_http_client_req_t *req, enum http_errno e)
{
    if (req->err) return req->err;
    if (e == HPE_HEADER_OVERFLOW) return TR_ETOOLARGE;
    if (e == HPE_INVALID_EOF_STATE) return TR_ECLOSED;
    return TR_EBAD_RESPONSE;
}

/*
 * Parses one read. Returns FEED_DONE (response complete; *used tells where it ended),
 * FEED_PAUSED (the caller paused; input from *used on waits), FEED_MORE, or an error.
 */
static int parse_feed(tr_http_client_req_t *req, const char *data, size_t len, size_t *used)
{
    if (HTTP_PARSER_ERRNO(&req->parser) == HPE_PAUSED) http_parser_pause(&req->parser, 0);
    req->resp_bytes = true;
    req->in_parse = true;
    *used = http_parser_execute(&req->parser, &parser_settings, data, len);
    req->in_parse = false;
    enum http_errno e = HTTP_PARSER_ERRNO(&req->parser);
    if (req->complete) return FEED_DONE;
    if (e == HPE_PAUSED) return FEED_PAUSED;
    if (e != HPE_OK) return map_parser_error(req, e);
    return FEED_MORE;
}

/* The peer closed: a response without a length ends here, anything else is cut short. */
static int parse_eof(tr_http_client_req_t *req)
{
    if (!req->resp_bytes) return TR_ECLOSED;
    if (HTTP_PARSER_ERRNO(&req->parser) == HPE_PAUSED) http_parser_pause(&req->parser, 0);
    req->in_parse = true;
    http_parser_execute(&req->parser, &parser_settings, NULL, 0);
    req->in_parse = false;
    if (req->complete) {
        req->keep_alive = false;
        return FEED_DONE;
    }
    enum http_errno e = HTTP_PARSER_ERRNO(&req->parser);
    if (req->err) return req->err;
    return e == HPE_OK || e == HPE_INVALID_EOF_STATE ? TR_ECLOSED : TR_EBAD_RESPONSE;
}

/* ---- requests: a per-client freelist so the steady state allocates nothing ---- */

static tr_http_client_req_t *req_get(tr_http_client_t *c)
{
    tr_http_client_req_t *req;
    if (!list_empty(&c->free_reqs)) {
        list_t *l = c->free_reqs.next;
        list_remove(l);
        c->nfree--;
        req = container_of(l, tr_http_client_req_t, link);
    } else {
        req = tr_calloc(1, sizeof(*req));
        list_init(&req->link);
    }
    req->client = c;
    return req;
}

static void buf_trim(tr_buf_t *b)
{
    if (b->cap > MAX_KEPT_BUF) tr_buf_free(b);
    tr_buf_reset(b);
}

static void req_free(tr_http_client_req_t *req)
{
    tr_buf_free(&req->wire);
    tr_buf_free(&req->pending);
    tr_buf_free(&req->inflight);
    tr_buf_free(&req->hbuf);
    tr_buf_free(&req->body);
    tr_free(&req->hoffs);
    tr_free(&req->hdrs);
    free(req);
}

/* Keeps the buffers (and their capacity) and clears everything else. */
static void req_recycle(tr_http_client_req_t *req)
{
    tr_http_client_t *c = req->client;
    tr_buf_t keep[5] = {req->wire, req->pending, req->inflight, req->hbuf, req->body};
    hdr_off_t *hoffs = req->hoffs;
    tr_http_client_header_t *hdrs = req->hdrs;
    size_t hcap = req->hcap;
    if (c->nfree >= MAX_FREE_REQS) {
        req_free(req);
        return;
    }
    memset(req, 0, sizeof(*req));
    req->wire = keep[0], req->pending = keep[1], req->inflight = keep[2];
    req->hbuf = keep[3], req->body = keep[4];
    buf_trim(&req->wire), buf_trim(&req->pending), buf_trim(&req->inflight);
    buf_trim(&req->hbuf), buf_trim(&req->body);
    req->hoffs = hoffs, req->hdrs = hdrs, req->hcap = hcap;
    list_insert_head(&c->free_reqs, &req->link);
    c->nfree++;
}

static void complete(tr_http_client_req_t *req, int err)
{
    if (req->fetch_cb) {
        tr_http_client_response_t res = {0};
        if (req->headers_done) {
            res.status = req->status;
            res.headers = req->hdrs;
            res.nheaders = req->nhdrs;
            res.body = req->body.data ? req->body.data : "";
            res.body_len = req->body.len;
        }
        req->fetch_cb(req, err, &res);
    } else {
        req->r.on_complete(req, err);
    }
    req_recycle(req);
}

static bool is_idempotent(const char *m)
{
    static const char *const safe[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
    for (size_t i = 0; i < sizeof(safe) / sizeof(safe[0]); i++)
        if (strcmp(m, safe[i]) == 0) return true;
    return false;
}

static bool name_is(const tr_http_client_header_t *h, const char *name)
{
    size_t n = strlen(name);
    return h->name_len == n && strncasecmp(h->name, name, n) == 0;
}

static bool value_is(const tr_http_client_header_t *h, const char *v)
{
    size_t n = strlen(v);
    return h->value_len == n && strncasecmp(h->value, v, n) == 0;
}

static void append_header(tr_buf_t *w, const char *name, const char *v, size_t vlen)
{
    tr_buf_append_str(w, name);
    tr_buf_append(w, v, vlen);
    tr_buf_append(w, "\r\n", 2);
}

static void append_length(tr_buf_t *w, unsigned long long n)
{
    tr_buf_append_str(w, "Content-Length: ");
    tr_buf_append_u64(w, n);
    tr_buf_append(w, "\r\n", 2);
}

/* Adds the framing headers the caller left out (Content-Length or chunked). */
static void serialize_framing(tr_http_client_req_t *req, const tr_http_client_request_t *r,
                              bool has_cl, bool has_te)
{
    tr_buf_t *w = &req->wire;
    if (r->body_mode == TR_HTTP_CLIENT_BODY_BUFFER) {
        if (!has_cl) append_length(w, r->body_len);
    } else if (r->body_mode == TR_HTTP_CLIENT_BODY_STREAM) {
        req->stream = true;
        req->content_length = has_cl ? -1 : r->content_length;
        req->chunked = !has_cl && r->content_length < 0;
        if (req->content_length >= 0) append_length(w, (unsigned long long)r->content_length);
        if (req->chunked && !has_te) tr_buf_append_str(w, "Transfer-Encoding: chunked\r\n");
    } else if (!has_cl && !has_te &&
               (!strcmp(r->method, "POST") || !strcmp(r->method, "PUT") ||
                !strcmp(r->method, "PATCH"))) {
        append_length(w, 0); /* RFC 9110 9.3.3: say "no body" when one is expected */
    }
}

/* Writes the head (and a small body) into one buffer so it leaves in one write. */
static void serialize(tr_http_client_req_t *req, const tr_http_endpoint_t *ep,
                      const tr_http_client_request_t *r)
{
    tr_buf_t *w = &req->wire;
    bool has_host = false, has_cl = false, has_te = false;
    tr_buf_reserve(w, 256);
    tr_buf_append_str(w, r->method);
    tr_buf_append(w, " ", 1);
    tr_buf_append_str(w, r->target);
    tr_buf_append(w, " HTTP/1.1\r\n", 11);
    for (size_t i = 0; i < r->nheaders; i++) {
        const tr_http_client_header_t *h = &r->headers[i];
        has_host |= name_is(h, "host");
        has_cl |= name_is(h, "content-length");
        has_te |= name_is(h, "transfer-encoding");
        if (name_is(h, "connection") && value_is(h, "close")) req->close_requested = true;
        tr_buf_append(w, h->name, h->name_len);
        tr_buf_append(w, ": ", 2);
        tr_buf_append(w, h->value, h->value_len);
        tr_buf_append(w, "\r\n", 2);
    }
    if (!has_host) append_header(w, "Host: ", ep->host, strlen(ep->host));
    serialize_framing(req, r, has_cl, has_te);
    tr_buf_append(w, "\r\n", 2);
    if (r->body_mode != TR_HTTP_CLIENT_BODY_BUFFER) return;
    if (r->body_len <= WIRE_COPY_MAX) {
        tr_buf_append(w, r->body, r->body_len);
    } else {
        req->big_body = r->body;
        req->big_len = r->body_len;
    }
}

/* ---- writing ---- */

static size_t out_bufs(tr_http_client_req_t *req, uv_buf_t *b, const tr_buf_t *stream,
                       size_t stream_off)
{
    size_t n = 0;
    if (req->wire_off < req->wire.len)
        b[n++] =
            uv_buf_init(req->wire.data + req->wire_off, (unsigned)(req->wire.len - req->wire_off));
    if (req->big_off < req->big_len)
        b[n++] = uv_buf_init((char *)req->big_body + req->big_off,
                             (unsigned)(req->big_len - req->big_off));
    if (stream_off < stream->len)
        b[n++] = uv_buf_init(stream->data + stream_off, (unsigned)(stream->len - stream_off));
    return n;
}

/* Marks n bytes as handed to the kernel, in wire, big body, pending order. */
static void consume(tr_http_client_req_t *req, size_t n)
{
    size_t k = req->wire.len - req->wire_off;
    k = k < n ? k : n;
    req->wire_off += k, n -= k;
    k = req->big_len - req->big_off;
    k = k < n ? k : n;
    req->big_off += k, n -= k;
    if (n) req->stream_sent = true; /* streamed bytes are not kept: no more retry */
    req->pending_off += n;
}

static size_t buffered(const tr_http_client_req_t *req)
{
    return req->pending.len - req->pending_off + req->inflight.len;
}

static bool fully_written(const tr_http_client_req_t *req)
{
    return (!req->stream || req->ended) && req->conn && !req->conn->writing &&
           req->wire_off == req->wire.len && req->big_off == req->big_len && buffered(req) == 0;
}

static void on_write(uv_write_t *w, int status)
{
    conn_t *conn = w->data;
    conn->writing = false;
    if (conn->state == CONN_CLOSING || conn->req == NULL) return;
    tr_http_client_req_t *req = conn->req;
    if (status < 0) {
        conn_fail(conn, status);
        return;
    }
    req->wire_off = req->wire.len;
    req->big_off = req->big_len;
    tr_buf_reset(&req->inflight);
    flush(req, true);
}

/* The rest goes through uv_write; streamed bytes move to `inflight` so `pending` can grow. */
static void start_write(tr_http_client_req_t *req)
{
    conn_t *conn = req->conn;
    tr_buf_t t = req->inflight;
    uv_buf_t b[3];
    req->inflight = req->pending;
    tr_buf_consume(&req->inflight, req->pending_off);
    req->pending = t;
    tr_buf_reset(&req->pending);
    req->pending_off = 0;
    if (req->inflight.len) req->stream_sent = true;
    size_t n = out_bufs(req, b, &req->inflight, 0);
    req->sent = true;
    conn->writing = true;
    int rc = uv_write(&conn->write_req, (uv_stream_t *)&conn->tcp, b, (unsigned)n, on_write);
    if (rc < 0) {
        conn->writing = false;
        conn_fail(conn, rc);
    }
}

/*
 * Sends what is buffered: uv_try_write first (the usual case: one syscall, done), then
 * uv_write for the rest. on_drain fires only from libuv callbacks (`from_cb`), never
 * from inside a call the user made.
 */
static void flush(tr_http_client_req_t *req, bool from_cb)
{
    conn_t *conn = req->conn;
    uv_buf_t b[3];
    if (conn == NULL || conn->state != CONN_ACTIVE || conn->writing) return;
    size_t n = out_bufs(req, b, &req->pending, req->pending_off);
    if (n) {
        int rc = uv_try_write((uv_stream_t *)&conn->tcp, b, (unsigned)n);
        if (rc == UV_EAGAIN || rc == UV_ENOSYS) rc = 0;
        if (rc < 0) {
            conn_fail(conn, rc);
            return;
        }
        if (rc > 0) req->sent = true;
        consume(req, (size_t)rc);
        if (out_bufs(req, b, &req->pending, req->pending_off)) {
            start_write(req);
            return;
        }
        tr_buf_reset(&req->pending);
        req->pending_off = 0;
    }
    if (!req->wrote_all && fully_written(req)) {
        req->wrote_all = true;
        /* The response deadline runs from the end of the request, not its start. */
        if (!req->headers_done) set_deadline(conn, conn->client->opts.response_timeout_ms);
    }
    if (from_cb && req->want_drain && buffered(req) < STREAM_HIGH_WATER) {
        req->want_drain = false;
        if (req->r.on_drain) req->r.on_drain(req);
    }
}

int tr_http_client_write(tr_http_client_req_t *req, const void *data, size_t len)
{
    if (!req->stream || req->ended) return TR_ESTATE;
    if (req->content_length >= 0 && req->stream_written + len > (uint64_t)req->content_length)
        return UV_EINVAL;
    if (len == 0) return buffered(req) < STREAM_HIGH_WATER;
    req->stream_written += len;
    if (req->chunked) {
        static const char hex[] = "0123456789abcdef";
        char size[20];
        int i = (int)sizeof(size);
        size[--i] = '\n', size[--i] = '\r';
        for (size_t v = len; v; v >>= 4)
            size[--i] = hex[v & 15];
        tr_buf_append(&req->pending, size + i, sizeof(size) - (size_t)i);
    }
    tr_buf_append(&req->pending, data, len);
    if (req->chunked) tr_buf_append(&req->pending, "\r\n", 2);
    flush(req, false);
    if (buffered(req) < STREAM_HIGH_WATER) return 1;
    req->want_drain = true;
    return 0;
}

int tr_http_client_end(tr_http_client_req_t *req)
{
    if (!req->stream || req->ended) return TR_ESTATE;
    req->ended = true;
    if (req->chunked) tr_buf_append(&req->pending, "0\r\n\r\n", 5);
    if (req->content_length >= 0 && req->stream_written != (uint64_t)req->content_length) {
        if (req->conn) conn_fail(req->conn, UV_EINVAL); /* the server would wait forever */
        return UV_EINVAL;
    }
    flush(req, false);
    return 0;
}

/* ---- connections ---- */

static void client_maybe_free(tr_http_client_t *c);

static bool can_retry(const tr_http_client_req_t *req, int err)
{
    bool conn_err =
        err == UV_ECONNRESET || err == UV_EPIPE || err == UV_ECONNABORTED || err == TR_ECLOSED;
    /*
     * Only a reused connection the server may have closed while it sat idle; a fresh
     * connection's failure is the upstream's and belongs to the retry budget above us.
     * A non-idempotent request is resent only if no byte of it was written.
     */
    return conn_err && req->reused && req->attempts == 0 && !req->client->closing &&
           !(req->r.flags & TR_HTTP_CLIENT_NO_RETRY) && !req->resp_bytes && !req->stream_sent &&
           (req->idempotent || !req->sent);
}

static void retry_or_complete(tr_http_client_req_t *req, int err)
{
    if (can_retry(req, err)) {
        req->attempts++;
        req->wire_off = req->big_off = 0;
        req->sent_before |= req->sent;
        req->sent = req->wrote_all = false;
        tr_buf_reset(&req->inflight);
        int rc = start_attempt(req);
        if (rc == 0) return;
        err = rc;
    }
    complete(req, err);
}

static void on_conn_closed(uv_handle_t *h)
{
    conn_t *conn = h->data;
    tr_http_client_t *c = conn->client;
    if (--conn->nclosing) return;
    tr_http_client_req_t *req = conn->req;
    int err = conn->fail_err;
    list_remove(&conn->all);
    c->nconns--;
    tr_buf_free(&conn->leftover);
    free(conn);
    if (req) {
        req->conn = NULL;
        retry_or_complete(req, req->canceled ? TR_ECANCELED : err);
    }
    client_maybe_free(c);
}

static void conn_close(conn_t *conn)
{
    if (conn->state == CONN_CLOSING) return;
    if (conn->state == CONN_IDLE) {
        list_remove(&conn->link);
        conn->pool->nidle--;
    }
    list_remove(&conn->deferred);
    conn->state = CONN_CLOSING;
    conn->nclosing = 2;
    uv_close((uv_handle_t *)&conn->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&conn->timer, on_conn_closed);
}

/*
 * Closes the connection; its request (if any) completes or retries from the close
 * callback, so no user callback ever runs inside a call the user made. Inside a parser
 * callback the parser is paused first so it stops touching the request.
 */
static void conn_fail(conn_t *conn, int err)
{
    if (conn->state == CONN_CLOSING) return;
    conn->fail_err = err;
    if (conn->req && conn->req->in_parse) http_parser_pause(&conn->req->parser, 1);
    conn_close(conn);
}

static conn_t *conn_new(tr_http_client_t *c, pool_t *pool)
{
    conn_t *conn = tr_calloc(1, sizeof(*conn));
    conn->client = c;
    conn->pool = pool;
    uv_tcp_init(c->loop, &conn->tcp);
    uv_timer_init(c->loop, &conn->timer);
    uv_tcp_nodelay(&conn->tcp, 1); /* applied when the socket is created */
    conn->tcp.data = conn->timer.data = conn->connect_req.data = conn->write_req.data = conn;
    list_init(&conn->link);
    list_init(&conn->deferred);
    list_insert_head(&c->conns, &conn->all);
    c->nconns++;
    return conn;
}

/* Back to the pool, most recent first; the oldest idle connection goes beyond the cap. */
static void conn_release(conn_t *conn)
{
    tr_http_client_t *c = conn->client;
    pool_t *pool = conn->pool;
    conn->served++;
    if (c->closing || c->opts.max_idle_per_endpoint == 0) {
        conn_close(conn);
        return;
    }
    conn->state = CONN_IDLE;
    list_insert_head(&pool->idle, &conn->link);
    if (++pool->nidle > c->opts.max_idle_per_endpoint)
        conn_close(container_of(pool->idle.prev, conn_t, link));
    set_deadline(conn, c->opts.idle_timeout_ms);
    /* Like Node's agent: an idle pool alone does not keep the loop running. */
    uv_unref((uv_handle_t *)&conn->tcp);
    uv_unref((uv_handle_t *)&conn->timer);
}

static conn_t *pool_take(pool_t *pool)
{
    if (list_empty(&pool->idle)) return NULL;
    conn_t *conn = container_of(pool->idle.next, conn_t, link);
    list_remove(&conn->link);
    pool->nidle--;
    uv_ref((uv_handle_t *)&conn->tcp);
    uv_ref((uv_handle_t *)&conn->timer);
    return conn;
}

/* The response is complete: keep the connection only if both directions ended cleanly. */
static void finish(conn_t *conn, tr_http_client_req_t *req, bool extra)
{
    bool reuse = req->keep_alive && !extra && req->wrote_all;
    conn->req = NULL;
    req->conn = NULL;
    conn->deadline = 0;
    if (reuse)
        conn_release(conn);
    else
        conn_close(conn);
    complete(req, 0);
}

static void save_leftover(conn_t *conn, const char *p, size_t n)
{
    tr_buf_t *lo = &conn->leftover;
    if (lo->data && p >= lo->data && p <= lo->data + lo->len) {
        conn->leftover_off = (size_t)(p - lo->data); /* resumed input paused again */
        return;
    }
    tr_buf_reset(lo);
    tr_buf_append(lo, p, n);
    conn->leftover_off = 0;
}

static void conn_input(conn_t *conn, const char *data, size_t len)
{
    tr_http_client_req_t *req = conn->req;
    size_t used;
    int rc = parse_feed(req, data, len, &used);
    if (conn->state == CONN_CLOSING) return; /* a callback canceled or closed the client */
    if (rc == FEED_DONE)
        finish(conn, req, used < len);
    else if (rc == FEED_PAUSED)
        save_leftover(conn, data + used, len - used);
    else if (rc < 0)
        conn_fail(conn, rc);
}

static void conn_input_end(conn_t *conn, ssize_t err)
{
    if (err != UV_EOF) {
        conn_fail(conn, (int)err);
        return;
    }
    int rc = parse_eof(conn->req);
    if (conn->state == CONN_CLOSING) return;
    if (rc == FEED_DONE)
        finish(conn, conn->req, false);
    else
        conn_fail(conn, rc);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn_t *conn = h->data;
    *buf = uv_buf_init(conn->client->rbuf, READ_BUF_SIZE);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *conn = s->data;
    if (nread == 0 || conn->state == CONN_CLOSING) return;
    if (conn->req == NULL) {
        conn_close(conn); /* idle: the server closed it, or sent bytes nobody asked for */
        return;
    }
    if (nread < 0)
        conn_input_end(conn, nread);
    else
        conn_input(conn, buf->base, (size_t)nread);
}

static void on_connect(uv_connect_t *cr, int status)
{
    conn_t *conn = cr->data;
    if (status == UV_ECANCELED || conn->state == CONN_CLOSING) return;
    if (status < 0) {
        conn_fail(conn, status);
        return;
    }
    conn->state = CONN_ACTIVE;
    /* Reading stays on for the connection's life, idle included (no epoll_ctl per request). */
    if (!conn->req->paused) uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read);
    set_deadline(conn, conn->client->opts.response_timeout_ms);
    flush(conn->req, true);
}

static void attach(conn_t *conn, tr_http_client_req_t *req)
{
    conn->req = req;
    req->conn = conn;
    req->reused = conn->served > 0;
}

static int start_attempt(tr_http_client_req_t *req)
{
    tr_http_client_t *c = req->client;
    conn_t *conn = pool_take(req->pool);
    parse_begin(req);
    if (conn) {
        attach(conn, req);
        conn->state = CONN_ACTIVE;
        set_deadline(conn, c->opts.response_timeout_ms);
        flush(req, false);
        return 0;
    }
    conn = conn_new(c, req->pool);
    attach(conn, req);
    conn->state = CONN_CONNECTING;
    set_deadline(conn, c->opts.connect_timeout_ms);
    int rc = uv_tcp_connect(&conn->connect_req, &conn->tcp,
                            (const struct sockaddr *)&req->pool->addr, on_connect);
    if (rc < 0) {
        conn->req = NULL;
        req->conn = NULL;
        conn_close(conn);
    }
    return rc;
}

/* ---- public request API ---- */

static bool bad_chars(const char *s, size_t n, bool allow_space)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f || (!allow_space && ch == ' ')) {
            if (ch != '\t' || !allow_space) return true;
        }
    }
    return false;
}

/* Refuses what would let a caller's data split or smuggle a request. */
static int validate(const tr_http_endpoint_t *ep, const tr_http_client_request_t *r)
{
    if (ep == NULL || r == NULL || r->method == NULL || r->target == NULL) return UV_EINVAL;
    if (ep->addr.ss_family != AF_INET && ep->addr.ss_family != AF_INET6) return UV_EINVAL;
    if (!*r->method || bad_chars(r->method, strlen(r->method), false)) return UV_EINVAL;
    if (!*r->target || bad_chars(r->target, strlen(r->target), false)) return UV_EINVAL;
    if (r->nheaders && r->headers == NULL) return UV_EINVAL;
    for (size_t i = 0; i < r->nheaders; i++) {
        const tr_http_client_header_t *h = &r->headers[i];
        if (!h->name_len || bad_chars(h->name, h->name_len, false) ||
            memchr(h->name, ':', h->name_len) || bad_chars(h->value, h->value_len, true))
            return UV_EINVAL;
    }
    if (r->body_mode > TR_HTTP_CLIENT_BODY_STREAM) return UV_EINVAL;
    if (r->body_mode == TR_HTTP_CLIENT_BODY_BUFFER && r->body_len && r->body == NULL)
        return UV_EINVAL;
    return 0;
}

static int submit(tr_http_client_t *c, const tr_http_endpoint_t *ep,
                  const tr_http_client_request_t *r, tr_http_client_fetch_cb fetch_cb,
                  tr_http_client_req_t **out)
{
    if (c->closing) return TR_ECANCELED;
    int rc = validate(ep, r);
    if (rc) return rc;
    if (fetch_cb == NULL && r->on_complete == NULL) return UV_EINVAL;
    tr_http_client_req_t *req = req_get(c);
    req->r = *r;
    req->r.method = req->r.target = NULL; /* caller memory: not kept */
    req->r.headers = NULL;
    req->r.body = NULL;
    req->fetch_cb = fetch_cb;
    req->head = strcmp(r->method, "HEAD") == 0;
    req->idempotent = (r->flags & TR_HTTP_CLIENT_IDEMPOTENT) || is_idempotent(r->method);
    req->content_length = -1;
    serialize(req, ep, r);
    req->pool = pool_get(c, &ep->addr);
    rc = start_attempt(req);
    if (rc) {
        req_recycle(req);
        return rc;
    }
    if (out) *out = req;
    return 0;
}

int tr_http_client_request(tr_http_client_t *client, const tr_http_endpoint_t *ep,
                           const tr_http_client_request_t *r, tr_http_client_req_t **out)
{
    return submit(client, ep, r, NULL, out);
}

int tr_http_client_fetch(tr_http_client_t *client, const tr_http_endpoint_t *ep,
                         const tr_http_client_request_t *r, tr_http_client_fetch_cb cb,
                         tr_http_client_req_t **out)
{
    if (cb == NULL) return UV_EINVAL;
    tr_http_client_request_t copy = *r;
    copy.on_headers = NULL;
    copy.on_body = NULL;
    copy.on_complete = NULL;
    return submit(client, ep, &copy, cb, out);
}

void tr_http_client_pause(tr_http_client_req_t *req)
{
    conn_t *conn = req->conn;
    if (req->paused) return;
    req->paused = true;
    if (conn == NULL || conn->state != CONN_ACTIVE) return;
    uv_read_stop((uv_stream_t *)&conn->tcp);
    if (req->in_parse) http_parser_pause(&req->parser, 1); /* the rest of this read waits */
}

void tr_http_client_resume(tr_http_client_req_t *req)
{
    conn_t *conn = req->conn;
    tr_http_client_t *c = req->client;
    if (!req->paused) return;
    req->paused = false;
    if (conn == NULL || conn->state != CONN_ACTIVE) return;
    if (req->in_parse) {
        http_parser_pause(&req->parser, 0); /* resumed within the same callback */
    } else if (conn->leftover_off < conn->leftover.len) {
        /* Parsing now would run user callbacks inside this call; do it from the loop. */
        if (list_empty(&conn->deferred)) list_insert_head(&c->deferred, &conn->deferred);
        uv_idle_start(&c->defer, on_defer);
        return;
    }
    uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read);
}

void tr_http_client_cancel(tr_http_client_req_t *req)
{
    if (req->canceled || req->conn == NULL) return;
    req->canceled = true;
    conn_fail(req->conn, TR_ECANCELED);
}

bool tr_http_client_request_sent(const tr_http_client_req_t *req)
{
    return req->sent || req->sent_before;
}

void *tr_http_client_req_data(const tr_http_client_req_t *req)
{
    return req->r.data;
}

/* ---- the client ---- */

static void on_defer(uv_idle_t *h)
{
    tr_http_client_t *c = h->data;
    while (!list_empty(&c->deferred)) {
        conn_t *conn = container_of(c->deferred.next, conn_t, deferred);
        list_remove(&conn->deferred);
        if (conn->state != CONN_ACTIVE || conn->req == NULL || conn->req->paused) continue;
        const char *p = conn->leftover.data + conn->leftover_off;
        size_t n = conn->leftover.len - conn->leftover_off;
        conn->leftover_off = conn->leftover.len;
        uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read);
        if (n) conn_input(conn, p, n);
    }
    uv_idle_stop(h);
}

tr_http_client_t *tr_http_client_new(uv_loop_t *loop, const tr_http_client_options_t *opts)
{
    tr_http_client_t *c = tr_calloc(1, sizeof(*c));
    c->loop = loop;
    if (opts)
        c->opts = *opts;
    else
        tr_http_client_options_init(&c->opts);
    uv_idle_init(loop, &c->defer);
    c->defer.data = c;
    list_init(&c->deferred);
    list_init(&c->conns);
    list_init(&c->free_reqs);
    c->rbuf = tr_malloc(READ_BUF_SIZE);
    return c;
}

static void client_maybe_free(tr_http_client_t *c)
{
    if (!c->closing || c->nconns || !c->defer_closed) return;
    if (c->close_cb) c->close_cb(c);
    for (size_t i = 0; i < c->nbuckets; i++) {
        while (c->buckets[i]) {
            pool_t *p = c->buckets[i];
            c->buckets[i] = p->next;
            free(p);
        }
    }
    while (!list_empty(&c->free_reqs)) {
        list_t *l = c->free_reqs.next;
        list_remove(l);
        req_free(container_of(l, tr_http_client_req_t, link));
    }
    tr_free(&c->buckets);
    tr_free(&c->rbuf);
    free(c);
}

static void on_defer_closed(uv_handle_t *h)
{
    tr_http_client_t *c = h->data;
    c->defer_closed = true;
    client_maybe_free(c);
}

void tr_http_client_close(tr_http_client_t *client, tr_http_client_close_cb cb)
{
    if (client == NULL || client->closing) return;
    client->closing = true;
    client->close_cb = cb;
    for (list_t *l = client->conns.next; l != &client->conns; l = l->next)
        conn_fail(container_of(l, conn_t, all), TR_ECANCELED);
    uv_close((uv_handle_t *)&client->defer, on_defer_closed);
}

/* ---- fuzzing entry point ---- */

/* Reading every byte handed out lets the sanitizers check the pointers we give callers. */
static volatile unsigned fuzz_sink;

static void on_fuzz_headers(tr_http_client_req_t *req, int status,
                            const tr_http_client_header_t *headers, size_t nheaders)
{
    unsigned sum = (unsigned)status;
    for (size_t i = 0; i < nheaders; i++) {
        for (size_t k = 0; k < headers[i].name_len; k++)
            sum += (unsigned char)headers[i].name[k];
        for (size_t k = 0; k < headers[i].value_len; k++)
            sum += (unsigned char)headers[i].value[k];
    }
    fuzz_sink += sum;
}

static void on_fuzz_body(tr_http_client_req_t *req, const char *data, size_t len)
{
    unsigned sum = 0;
    for (size_t k = 0; k < len; k++)
        sum += (unsigned char)data[k];
    fuzz_sink += sum;
}

static void on_fuzz_fetch(tr_http_client_req_t *req, int err, const tr_http_client_response_t *res)
{
    on_fuzz_headers(req, res->status, res->headers, res->nheaders);
    on_fuzz_body(req, res->body, res->body_len);
}

int tr__http_client_parse_test(const char *data, size_t len, size_t chunk, unsigned flags)
{
    tr_http_client_t c;
    memset(&c, 0, sizeof(c));
    tr_http_client_options_init(&c.opts);
    c.opts.max_body_bytes = 64 * 1024;
    tr_http_client_req_t *req = tr_calloc(1, sizeof(*req));
    req->client = &c;
    req->head = flags & FLAG_PARSE_HEAD;
    req->r.on_headers = on_fuzz_headers;
    req->r.on_body = on_fuzz_body;
    if (flags & FLAG_PARSE_FETCH) req->fetch_cb = on_fuzz_fetch;
    parse_begin(req);
    int rc = FEED_MORE;
    size_t off = 0, used;
    if (chunk == 0) chunk = len ? len : 1;
    while (off < len && rc == FEED_MORE) {
        size_t n = len - off < chunk ? len - off : chunk;
        rc = parse_feed(req, data + off, n, &used);
        off += n;
    }
    if (rc == FEED_MORE) rc = parse_eof(req);
    if (rc == FEED_PAUSED) rc = TR_ESTATE; /* nothing pauses here: would be a bug */
    if (rc == FEED_DONE) rc = 0;
    if (req->fetch_cb) {
        tr_http_client_response_t res = {req->status, req->hdrs, req->nhdrs,
                                         req->body.data ? req->body.data : "", req->body.len};
        if (req->headers_done) req->fetch_cb(req, rc, &res);
    }
    req_free(req);
    return rc;
}
