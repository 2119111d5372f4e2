/* trellis-loadgen: fixed-rate (open-loop) HTTP load and blocking-watcher wake timing for bench/. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <http_parser.h>
#include <uv.h>

#define NS_PER_MS 1000000ULL
#define NS_PER_S  1000000000ULL

static const char USAGE[] =
    "Usage: trellis-loadgen rate --url URL [options]\n"
    "       trellis-loadgen watchers --url URL --trigger-url URL [options]\n"
    "\n"
    "rate: open-loop load at a fixed request rate. Requests are scheduled every 1/rate s;\n"
    "each one's latency runs from its scheduled send time to the last byte of its response,\n"
    "so time spent queued behind a slow response counts (no coordinated omission).\n"
    "send_lag_* is the time from the scheduled time to the write: waiting for an idle\n"
    "connection plus this tool's own delay (a busy machine shows up here).\n"
    "  --url URL            http://IPv4:port/path?query to GET (required)\n"
    "  --rate N             requests per second (default 1000)\n"
    "  --connections N      keep-alive connections (default 16)\n"
    "  --duration D         measured time, e.g. 10s, 500ms, 1m (default 10s)\n"
    "  --warmup D           load sent before measuring, not recorded (default 0s)\n"
    "\n"
    "watchers: time for COUNT blocking queries (?index=N&wait=60s) to all answer after one\n"
    "change made by a trigger request. N is the X-Consul-Index of a first GET of --url.\n"
    "  --url URL            the watched URL (required)\n"
    "  --count N            number of watchers, one connection each (default 1000)\n"
    "  --trigger-url URL    request that makes the change (required)\n"
    "  --trigger-method M   its method (default PUT)\n"
    "  --trigger-body TEXT  its JSON body (default empty)\n"
    "  --wait D             wait= of each blocking query (default 60s)\n"
    "  --timeout D          give up this long after each phase starts (default 10s)\n"
    "\n"
    "Wake times (wake_*_ms) run from the trigger's response to each watcher's full response;\n"
    "negative means the watchers woke before the trigger was answered. The *_from_send_ms\n"
    "figures run from the moment the trigger was sent.\n"
    "\n"
    "Output is one `key value` per line; times are in ms. Exit 0 ok, 1 failed, 2 bad usage.\n"
    "Example: trellis-loadgen rate --url http://127.0.0.1:8500/v1/health/service/web?passing \\\n"
    "           --rate 5000 --connections 16 --duration 10s --warmup 2s\n";

/* ---------------------------------------------------------------- utilities */

/* Prints a message to stderr and exits with the given code. */
static void die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("trellis-loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

/* Parses "10s", "500ms", "2m" or a bare number of seconds into nanoseconds; -1 if invalid. */
static int64_t parse_duration(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0) return -1;
    double mult = 1e9;
    if (strcmp(end, "ms") == 0)
        mult = 1e6;
    else if (strcmp(end, "us") == 0)
        mult = 1e3;
    else if (strcmp(end, "m") == 0)
        mult = 60e9;
    else if (*end != '\0' && strcmp(end, "s") != 0)
        return -1;
    return (int64_t)(v * mult);
}

/* Parses a positive integer option or exits with status 2. */
static long parse_count(const char *opt, const char *s, long max)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v <= 0 || v > max)
        die(2, "%s: expected an integer from 1 to %ld, got '%s'", opt, max, s);
    return v;
}

/* Raises the open-file limit to the hard limit: a thousand watchers need a thousand fds. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

static double ns_to_ms(int64_t ns)
{
    return (double)ns / 1e6;
}

/* Closes every handle of the loop, so uv_run returns once they are gone. */
static void close_walk_cb(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* ---------------------------------------------------------------- URL */

/* Where requests go: an IPv4 address, the Host header and the request target. */
typedef struct {
    struct sockaddr_in addr;
    char host[96];     /* host:port for the Host header */
    char target[2048]; /* path?query */
    int has_query;
} target_t;

/* Parses an http://IPv4:port/path?query URL; returns 0 or -1. */
static int target_parse(const char *url, target_t *t)
{
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, strlen(url), 0, &u) != 0) return -1;
    if (!(u.field_set & (1 << UF_HOST))) return -1;
    if ((u.field_set & (1 << UF_SCHEMA)) &&
        strncmp(url + u.field_data[UF_SCHEMA].off, "http", u.field_data[UF_SCHEMA].len) != 0)
        return -1;
    char ip[64];
    size_t hl = u.field_data[UF_HOST].len;
    if (hl >= sizeof(ip)) return -1;
    memcpy(ip, url + u.field_data[UF_HOST].off, hl);
    ip[hl] = '\0';
    int port = (u.field_set & (1 << UF_PORT)) ? u.port : 80;
    if (uv_ip4_addr(ip, port, &t->addr) != 0) return -1;
    snprintf(t->host, sizeof(t->host), "%s:%d", ip, port);
    const char *path = "/";
    size_t plen = 1;
    if (u.field_set & (1 << UF_PATH)) {
        path = url + u.field_data[UF_PATH].off;
        plen = u.field_data[UF_PATH].len;
    }
    t->has_query = (u.field_set & (1 << UF_QUERY)) != 0;
    if (t->has_query) plen = u.field_data[UF_QUERY].off + u.field_data[UF_QUERY].len - (path - url);
    if (plen >= sizeof(t->target)) return -1;
    memcpy(t->target, path, plen);
    t->target[plen] = '\0';
    return 0;
}

/* Formats a GET request for target (with an optional suffix on the target); caller frees. */
static char *request_get(const target_t *t, const char *suffix)
{
    char *s;
    if (asprintf(&s, "GET %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: trellis-loadgen\r\n\r\n",
                 t->target, suffix, t->host) < 0)
        die(1, "out of memory");
    return s;
}

/* ---------------------------------------------------------------- histogram */

/*
 * Log-linear histogram of nanosecond values, like HdrHistogram: 128 linear sub-buckets per
 * power of two, so a bucket's midpoint is within 0.4 % of every value in it.
 */
#define HIST_SUB     128
#define HIST_BUCKETS (58 * HIST_SUB)

typedef struct {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;
    uint64_t max;
    double sum;
} hist_t;

static int hist_index(uint64_t v)
{
    if (v < HIST_SUB) return (int)v;
    int shift = 63 - __builtin_clzll(v) - 7;
    return (shift + 1) * HIST_SUB + (int)((v >> shift) - HIST_SUB);
}

/* The middle of bucket i. */
static uint64_t hist_value(int i)
{
    if (i < HIST_SUB) return (uint64_t)i;
    int shift = i / HIST_SUB - 1;
    uint64_t low = (uint64_t)(i % HIST_SUB + HIST_SUB) << shift;
    return low + ((1ULL << shift) >> 1);
}

static void hist_record(hist_t *h, uint64_t v)
{
    h->counts[hist_index(v)]++;
    h->total++;
    h->sum += (double)v;
    if (v > h->max) h->max = v;
}

/* The value at percentile p (0..100), never above the exact maximum. */
static uint64_t hist_percentile(const hist_t *h, double p)
{
    if (h->total == 0) return 0;
    uint64_t want = (uint64_t)(p / 100.0 * (double)h->total + 0.999999);
    if (want < 1) want = 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= want) return hist_value(i) < h->max ? hist_value(i) : h->max;
    }
    return h->max;
}

/* ---------------------------------------------------------------- connection */

typedef enum { C_DOWN, C_CONNECTING, C_IDLE, C_BUSY, C_CLOSING } conn_state_t;

typedef struct conn_s conn_t;

/* What the owner of a connection hears about: ready to send, request written, response
 * complete, connection closed (err is why, 0 if asked to close). */
typedef struct {
    void (*on_ready)(conn_t *c);
    void (*on_sent)(conn_t *c);
    void (*on_response)(conn_t *c);
    void (*on_closed)(conn_t *c, int err, int was_busy);
} conn_ops_t;

/* One keep-alive HTTP/1.1 client connection carrying one request at a time. */
struct conn_s {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    http_parser parser;
    conn_state_t state;
    const conn_ops_t *ops;
    const target_t *target;
    int err;      /* why the connection is closing */
    int was_busy; /* whether a request was in flight when it failed */
    int keep_alive;
    int id;
    uint64_t sched;   /* rate mode: scheduled send time of the request in flight */
    uint64_t down_at; /* when the connection last closed */
    /* The response being parsed. */
    int status;
    uint64_t index; /* X-Consul-Index, 0 if absent */
    char field[32];
    size_t field_len;
    char value[32];
    size_t value_len;
    int in_value;
};

static char read_buf[65536]; /* one loop thread, parsed synchronously in on_read */

static void conn_close_cb(uv_handle_t *h)
{
    conn_t *c = h->data;
    c->state = C_DOWN;
    c->down_at = uv_hrtime();
    c->ops->on_closed(c, c->err, c->was_busy);
}

/* Closes c; err is the reason passed on to on_closed. Safe to call twice. */
static void conn_close(conn_t *c, int err)
{
    if (c->state == C_CLOSING || c->state == C_DOWN) return;
    if (uv_is_closing((uv_handle_t *)&c->tcp)) return; /* closed by the final uv_walk */
    c->err = err;
    c->was_busy = c->state == C_BUSY;
    c->state = C_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, conn_close_cb);
}

/* Applies a complete header pair: only X-Consul-Index matters here. */
static void header_done(conn_t *c)
{
    if (c->field_len == 14 && strncasecmp(c->field, "x-consul-index", 14) == 0) {
        c->value[c->value_len < sizeof(c->value) ? c->value_len : sizeof(c->value) - 1] = '\0';
        c->index = strtoull(c->value, NULL, 10);
    }
    c->field_len = c->value_len = 0;
    c->in_value = 0;
}

/* Appends a fragment of a header name or value into a small buffer; long ones are cut. */
static void append(char *buf, size_t cap, size_t *len, const char *at, size_t n)
{
    size_t room = *len < cap ? cap - *len : 0;
    memcpy(buf + *len, at, n < room ? n : room);
    *len += n < room ? n : room;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    if (c->in_value) header_done(c);
    append(c->field, sizeof(c->field), &c->field_len, at, n);
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    c->in_value = 1;
    append(c->value, sizeof(c->value) - 1, &c->value_len, at, n);
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    conn_t *c = p->data;
    if (c->in_value) header_done(c);
    c->status = (int)p->status_code;
    return 0;
}

/* A full response: hand it to the owner, then drop the connection if the server asked. */
static int on_message_complete(http_parser *p)
{
    conn_t *c = p->data;
    if (c->state != C_BUSY) return 0; /* a response nobody asked for: ignore it */
    c->keep_alive = http_should_keep_alive(p);
    c->state = C_IDLE;
    if (!c->keep_alive) conn_close(c, 0);
    c->ops->on_response(c);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    buf->base = read_buf;
    buf->len = sizeof(read_buf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    if (nread == 0 || c->state == C_CLOSING) return;
    if (nread < 0) {
        http_parser_execute(&c->parser, &parser_settings, NULL, 0); /* EOF ends some bodies */
        conn_close(c, (int)nread);
        return;
    }
    size_t used = http_parser_execute(&c->parser, &parser_settings, buf->base, (size_t)nread);
    if (c->state != C_CLOSING && (used != (size_t)nread || HTTP_PARSER_ERRNO(&c->parser)))
        conn_close(c, UV_EPROTO);
}

static void on_connect(uv_connect_t *req, int status)
{
    conn_t *c = req->data;
    if (c->state != C_CONNECTING) return;
    if (status < 0 || (status = uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read)) < 0) {
        conn_close(c, status);
        return;
    }
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;
    c->state = C_IDLE;
    c->ops->on_ready(c);
}

/* Starts connecting c to its target; on_ready or on_closed follows. */
static void conn_open(uv_loop_t *loop, conn_t *c)
{
    uv_tcp_init(loop, &c->tcp);
    c->tcp.data = c;
    c->connect_req.data = c;
    c->state = C_CONNECTING;
    c->err = 0;
    uv_tcp_nodelay(&c->tcp, 1);
    int r = uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&c->target->addr,
                           on_connect);
    if (r < 0) conn_close(c, r);
}

static void on_write(uv_write_t *req, int status)
{
    conn_t *c = req->data;
    if (c->state == C_CLOSING || c->state == C_DOWN) return;
    if (status < 0)
        conn_close(c, status);
    else if (c->ops->on_sent)
        c->ops->on_sent(c);
}

/* Sends one request (bytes not copied: they must outlive the write) on an idle c. */
static void conn_send(conn_t *c, const char *req, size_t len)
{
    uv_buf_t buf = uv_buf_init((char *)req, (unsigned)len);
    c->state = C_BUSY;
    c->status = 0;
    c->index = 0;
    c->field_len = c->value_len = 0;
    c->in_value = 0;
    c->write_req.data = c;
    int r = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &buf, 1, on_write);
    if (r < 0) conn_close(c, r);
}

/* ---------------------------------------------------------------- rate mode */

/* The open-loop run: a schedule of send times, a queue of due requests and the results. */
typedef struct {
    uv_loop_t *loop;
    target_t target;
    char *req;
    size_t req_len;
    double rate;
    int nconns;
    conn_t *conns;
    uint64_t start, measure_from, end, give_up_at;
    uint64_t scheduled; /* requests whose send time has been reached */
    uint64_t *queue;    /* ring of scheduled send times waiting for an idle connection */
    size_t q_cap, q_head, q_len;
    hist_t latency; /* scheduled send time to last response byte */
    hist_t lag;     /* scheduled send time to the write: queueing plus this tool's delay */
    uint64_t non2xx, socket_errors;
    uint64_t last_done; /* when the last measured response completed */
    int finished;
    uint64_t unfinished;
    int tfd; /* timerfd for sub-millisecond ticks, -1 to fall back on a 1 ms uv timer */
    uv_poll_t tick_poll;
    uv_timer_t tick_timer;
} rate_run_t;

static rate_run_t R;

/* When request k is due: computed from the start, so rounding never drifts. */
static uint64_t rate_sched(uint64_t k)
{
    return R.start + (uint64_t)((double)k * 1e9 / R.rate);
}

static void queue_push(uint64_t t)
{
    if (R.q_len == R.q_cap) {
        size_t cap = R.q_cap ? R.q_cap * 2 : 1024;
        uint64_t *q = malloc(cap * sizeof(*q));
        if (!q) die(1, "out of memory");
        for (size_t i = 0; i < R.q_len; i++)
            q[i] = R.queue[(R.q_head + i) % R.q_cap];
        free(R.queue);
        R.queue = q;
        R.q_cap = cap;
        R.q_head = 0;
    }
    R.queue[(R.q_head + R.q_len++) % R.q_cap] = t;
}

static uint64_t queue_pop(void)
{
    uint64_t t = R.queue[R.q_head];
    R.q_head = (R.q_head + 1) % R.q_cap;
    R.q_len--;
    return t;
}

/* Sends queued requests, oldest first, on every idle connection. */
static void rate_dispatch(void)
{
    for (int i = 0; i < R.nconns && R.q_len > 0; i++) {
        conn_t *c = &R.conns[i];
        if (c->state != C_IDLE) continue;
        c->sched = queue_pop();
        uint64_t now = uv_hrtime();
        if (c->sched >= R.measure_from) hist_record(&R.lag, now - c->sched);
        conn_send(c, R.req, R.req_len);
    }
}

static int rate_busy(void)
{
    int n = 0;
    for (int i = 0; i < R.nconns; i++)
        n += R.conns[i].state == C_BUSY;
    return n;
}

static void print_hist_ms(const char *prefix, const hist_t *h)
{
    static const struct {
        const char *name;
        double p;
    } ps[] = {{"p50", 50}, {"p90", 90}, {"p99", 99}, {"p999", 99.9}};
    for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++)
        printf("%s%s_ms %.3f\n", prefix, ps[i].name,
               ns_to_ms((int64_t)hist_percentile(h, ps[i].p)));
    printf("%smax_ms %.3f\n", prefix, ns_to_ms((int64_t)h->max));
}

/* Prints the run's figures, one `key value` per line. */
static void rate_report(uint64_t unfinished)
{
    /* Responses that finish after the end stretch the time: a server that falls behind
     * shows a rate below the target. */
    double secs = (double)(R.end - R.measure_from) / 1e9;
    uint64_t last = R.last_done > R.end ? R.last_done : R.end;
    printf("target_rate %.1f\n", R.rate);
    printf("rate %.1f\n", (double)R.latency.total / ((double)(last - R.measure_from) / 1e9));
    printf("duration_s %.3f\n", secs);
    printf("connections %d\n", R.nconns);
    printf("count %" PRIu64 "\n", R.latency.total);
    printf("errors %" PRIu64 "\n", R.non2xx + R.socket_errors + unfinished);
    printf("non2xx %" PRIu64 "\n", R.non2xx);
    printf("socket_errors %" PRIu64 "\n", R.socket_errors);
    printf("unfinished %" PRIu64 "\n", unfinished);
    printf("mean_ms %.3f\n", R.latency.total ? R.latency.sum / (double)R.latency.total / 1e6 : 0.0);
    print_hist_ms("", &R.latency);
    print_hist_ms("send_lag_", &R.lag);
}

/* Ends the run: reports, then closes every handle so uv_run returns. */
static void rate_finish(void)
{
    uint64_t unfinished = 0; /* measured requests still queued or in flight */
    for (int i = 0; i < R.nconns; i++)
        unfinished += R.conns[i].state == C_BUSY && R.conns[i].sched >= R.measure_from;
    for (size_t i = 0; i < R.q_len; i++)
        unfinished += R.queue[(R.q_head + i) % R.q_cap] >= R.measure_from;
    R.finished = 1;
    R.unfinished = unfinished;
    rate_report(unfinished);
    if (R.tfd >= 0) close(R.tfd);
    uv_walk(R.loop, close_walk_cb, NULL);
}

/* Reconnects connections that closed more than 100 ms ago (a fast retry loop helps nobody). */
static void rate_reconnect(uint64_t now)
{
    for (int i = 0; i < R.nconns; i++)
        if (R.conns[i].state == C_DOWN && now - R.conns[i].down_at > 100 * NS_PER_MS)
            conn_open(R.loop, &R.conns[i]);
}

/* One tick: queue every request whose time has come, dispatch, and see whether we're done. */
static void rate_tick(void)
{
    if (R.finished) return;
    uint64_t now = uv_hrtime();
    for (uint64_t t = rate_sched(R.scheduled); t <= now && t < R.end; t = rate_sched(R.scheduled)) {
        queue_push(t);
        R.scheduled++;
    }
    rate_dispatch();
    rate_reconnect(now);
    if (now >= R.end && ((R.q_len == 0 && rate_busy() == 0) || now >= R.give_up_at)) rate_finish();
}

static void rate_arm(void);

static void on_tick_poll(uv_poll_t *h, int status, int events)
{
    uint64_t expirations;
    if (read(R.tfd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
        die(1, "timerfd: %s", strerror(errno));
    rate_tick();
    if (!R.finished) rate_arm();
}

static void on_tick_timer(uv_timer_t *t)
{
    rate_tick();
}

static void rate_on_ready(conn_t *c)
{
    rate_dispatch();
}

static void rate_on_response(conn_t *c)
{
    uint64_t now = uv_hrtime();
    if (c->sched >= R.measure_from && c->sched < R.end) {
        hist_record(&R.latency, now - c->sched);
        R.last_done = now;
        if (c->status < 200 || c->status > 299) R.non2xx++;
    }
    if (c->state == C_IDLE) rate_dispatch();
}

static void rate_on_closed(conn_t *c, int err, int was_busy)
{
    /* A server may close an idle keep-alive connection; that loses no request. */
    if (err != 0 && !R.finished && (was_busy || err != UV_EOF)) {
        R.socket_errors++;
        if (R.socket_errors <= 5)
            fprintf(stderr, "trellis-loadgen: connection: %s\n", uv_strerror(err));
    }
}

static const conn_ops_t rate_ops = {rate_on_ready, NULL, rate_on_response, rate_on_closed};

/* Arms the timerfd for the next scheduled request (absolute CLOCK_MONOTONIC, as uv_hrtime). */
static void rate_arm(void)
{
    uint64_t next = rate_sched(R.scheduled);
    if (next >= R.end) next = uv_hrtime() + NS_PER_MS; /* draining: just poll for the end */
    struct itimerspec its = {{0, 0}, {(time_t)(next / NS_PER_S), (long)(next % NS_PER_S)}};
    if (timerfd_settime(R.tfd, TFD_TIMER_ABSTIME, &its, NULL) != 0)
        die(1, "timerfd_settime: %s", strerror(errno));
}

/*
 * Starts the tick source. A timerfd armed for each request's scheduled time wakes the loop
 * within microseconds of it; libuv's own timers have 1 ms resolution and would add up to
 * 1 ms to every latency. Without a timerfd, fall back on a 1 ms uv timer.
 */
static void rate_start_ticks(void)
{
    prctl(PR_SET_TIMERSLACK, 1UL); /* the default 50 us slack would delay every wake-up */
    R.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (R.tfd >= 0 && uv_poll_init(R.loop, &R.tick_poll, R.tfd) == 0) {
        rate_arm();
        uv_poll_start(&R.tick_poll, UV_READABLE, on_tick_poll);
        return;
    }
    if (R.tfd >= 0) close(R.tfd);
    R.tfd = -1;
    uv_timer_init(R.loop, &R.tick_timer);
    uv_timer_start(&R.tick_timer, on_tick_timer, 1, 1);
}

/* Parses rate-mode options into R; exits 2 on bad usage. */
static void rate_options(int argc, char **argv)
{
    static const struct option opts[] = {{"url", 1, 0, 'u'},
                                         {"rate", 1, 0, 'r'},
                                         {"connections", 1, 0, 'c'},
                                         {"duration", 1, 0, 'd'},
                                         {"warmup", 1, 0, 'w'},
                                         {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *url = NULL;
    int64_t duration = 10 * (int64_t)NS_PER_S, warmup = 0;
    R.rate = 1000;
    R.nconns = 16;
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'u':
            url = optarg;
            break;
        case 'r':
            R.rate = (double)parse_count("--rate", optarg, 10000000);
            break;
        case 'c':
            R.nconns = (int)parse_count("--connections", optarg, 100000);
            break;
        case 'd':
            duration = parse_duration(optarg);
            break;
        case 'w':
            warmup = parse_duration(optarg);
            break;
        case 'h':
            fputs(USAGE, stdout);
            exit(0);
        default:
            fputs(USAGE, stderr);
            exit(2);
        }
    }
    if (!url) die(2, "rate: --url is required (see --help)");
    if (target_parse(url, &R.target) != 0) die(2, "--url %s: expected http://IPv4:port/path", url);
    if (duration <= 0 || warmup < 0) die(2, "--duration/--warmup: expected e.g. 10s or 500ms");
    R.start = uv_hrtime() + 10 * NS_PER_MS; /* after the connections are opened */
    R.measure_from = R.start + (uint64_t)warmup;
    R.end = R.measure_from + (uint64_t)duration;
    R.give_up_at = R.end + 5 * NS_PER_S;
}

static int run_rate(int argc, char **argv)
{
    rate_options(argc, argv);
    R.loop = uv_default_loop();
    R.req = request_get(&R.target, "");
    R.req_len = strlen(R.req);
    R.conns = calloc((size_t)R.nconns, sizeof(conn_t));
    if (!R.conns) die(1, "out of memory");
    for (int i = 0; i < R.nconns; i++) {
        R.conns[i].ops = &rate_ops;
        R.conns[i].target = &R.target;
        R.conns[i].id = i;
        conn_open(R.loop, &R.conns[i]);
    }
    rate_start_ticks();
    uv_run(R.loop, UV_RUN_DEFAULT);
    free(R.conns);
    free(R.queue);
    free(R.req);
    uv_loop_close(R.loop);
    return R.socket_errors || R.non2xx || R.unfinished || R.latency.total == 0 ? 1 : 0;
}

/* ---------------------------------------------------------------- watchers mode */

typedef enum { W_PROBE, W_CONNECT, W_PARK, W_TRIGGERED, W_DONE } watch_phase_t;

/* The wake-up run: one probe, COUNT parked watchers and one trigger. */
typedef struct {
    uv_loop_t *loop;
    target_t url, trig;
    const char *method, *body, *wait;
    int count;
    uint64_t timeout;
    watch_phase_t phase;
    uint64_t index; /* X-Consul-Index the watchers wait past */
    conn_t probe, trigger;
    conn_t *w;
    char *probe_req, *watch_req, *trig_req;
    int sent, woken, bad, early, failed, trigger_status;
    uint64_t t_send, t_resp;
    uint64_t *wake_at; /* completion time of each woken watcher */
    uv_timer_t park_timer, deadline;
    int exit_code;
} watch_run_t;

static watch_run_t W;

static void watch_phase(watch_phase_t p);
static void watch_build_query(void);

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Wake time of the sorted watcher q (0..1) relative to `from`, in ms (negative = before). */
static double wake_ms(double q, uint64_t from)
{
    if (W.woken == 0) return 0;
    int i = (int)(q * W.woken + 0.999999) - 1;
    if (i < 0) i = 0;
    if (i >= W.woken) i = W.woken - 1;
    return ns_to_ms((int64_t)(W.wake_at[i] - from));
}

/* Prints the results, one `key value` per line, and closes everything. */
static void watch_finish(const char *why)
{
    if (W.phase == W_DONE) return;
    if (why) fprintf(stderr, "trellis-loadgen: watchers: %s\n", why);
    W.exit_code = why || W.woken != W.count || W.early || W.bad || W.failed ? 1 : 0;
    W.phase = W_DONE;
    qsort(W.wake_at, (size_t)W.woken, sizeof(uint64_t), cmp_u64);
    uint64_t from = W.t_resp ? W.t_resp : W.t_send;
    printf("watchers %d\nwoken %d\nbad %d\nearly %d\nfailed %d\n", W.count, W.woken, W.bad, W.early,
           W.failed);
    printf("index %" PRIu64 "\ntrigger_status %d\n", W.index, W.trigger_status);
    printf("trigger_ms %.3f\n", W.t_resp ? ns_to_ms((int64_t)(W.t_resp - W.t_send)) : 0.0);
    printf("wake_all_ms %.3f\n", wake_ms(1.0, from));
    printf("wake_all_from_send_ms %.3f\n", wake_ms(1.0, W.t_send));
    printf("wake_p50_ms %.3f\n", wake_ms(0.5, from));
    printf("wake_p99_ms %.3f\n", wake_ms(0.99, from));
    printf("wake_p50_from_send_ms %.3f\n", wake_ms(0.5, W.t_send));
    printf("wake_p99_from_send_ms %.3f\n", wake_ms(0.99, W.t_send));
    uv_walk(W.loop, close_walk_cb, NULL);
}

static void on_deadline(uv_timer_t *t)
{
    static const char *what[] = {"no answer to the first GET", "watchers could not all connect",
                                 "parking", "not every watcher woke"};
    watch_finish(what[W.phase]);
}

/* All settled once the trigger answered and every watcher answered or failed. */
static void watch_check_done(void)
{
    if (W.phase == W_TRIGGERED && W.t_resp && W.woken + W.bad + W.failed + W.early >= W.count)
        watch_finish(NULL);
}

static void probe_on_ready(conn_t *c)
{
    conn_send(c, W.probe_req, strlen(W.probe_req));
}

static void probe_on_response(conn_t *c)
{
    if (c->status != 200 || c->index == 0) {
        fprintf(stderr, "trellis-loadgen: first GET: status %d, X-Consul-Index %" PRIu64 "\n",
                c->status, c->index);
        watch_finish("the first GET must answer 200 with an X-Consul-Index");
        return;
    }
    W.index = c->index;
    watch_build_query();
    conn_close(c, 0);
    watch_phase(W_CONNECT);
}

static void probe_on_closed(conn_t *c, int err, int was_busy)
{
    if (err && W.phase == W_PROBE) watch_finish(uv_strerror(err));
}

static const conn_ops_t probe_ops = {probe_on_ready, NULL, probe_on_response, probe_on_closed};

static void watcher_on_ready(conn_t *c)
{
    conn_send(c, W.watch_req, strlen(W.watch_req));
}

static void watcher_on_sent(conn_t *c)
{
    if (++W.sent == W.count) watch_phase(W_PARK);
}

/* A watcher answered: it counts as woken only with a 200 and an index past the first one. */
static void watcher_on_response(conn_t *c)
{
    if (W.phase < W_TRIGGERED)
        W.early++;
    else if (c->status == 200 && c->index > W.index)
        W.wake_at[W.woken++] = uv_hrtime();
    else
        W.bad++;
    conn_close(c, 0);
    watch_check_done();
}

static void watcher_on_closed(conn_t *c, int err, int was_busy)
{
    if (!err || W.phase == W_DONE) return;
    if (++W.failed <= 5)
        fprintf(stderr, "trellis-loadgen: watcher %d: %s\n", c->id, uv_strerror(err));
    if (W.phase < W_PARK)
        watch_finish("a watcher failed before the change");
    else
        watch_check_done();
}

static const conn_ops_t watcher_ops = {watcher_on_ready, watcher_on_sent, watcher_on_response,
                                       watcher_on_closed};

/* Sends the trigger once its connection is up and the watchers have been parked. */
static void trigger_maybe_send(void)
{
    if (W.phase != W_TRIGGERED || W.trigger.state != C_IDLE || W.t_send) return;
    W.t_send = uv_hrtime();
    conn_send(&W.trigger, W.trig_req, strlen(W.trig_req));
}

static void trigger_on_ready(conn_t *c)
{
    trigger_maybe_send();
}

static void trigger_on_response(conn_t *c)
{
    W.t_resp = uv_hrtime();
    W.trigger_status = c->status;
    conn_close(c, 0);
    if (c->status < 200 || c->status > 299)
        watch_finish("the trigger request failed");
    else
        watch_check_done();
}

static void trigger_on_closed(conn_t *c, int err, int was_busy)
{
    if (err && W.phase != W_DONE && !W.t_resp) watch_finish(uv_strerror(err));
}

static const conn_ops_t trigger_ops = {trigger_on_ready, NULL, trigger_on_response,
                                       trigger_on_closed};

static void on_parked(uv_timer_t *t)
{
    if (W.early) {
        watch_finish("watchers answered before the change: is --url a blocking query?");
        return;
    }
    watch_phase(W_TRIGGERED);
}

/* Moves to phase p; each phase gets its own --timeout. */
static void watch_phase(watch_phase_t p)
{
    W.phase = p;
    uv_timer_start(&W.deadline, on_deadline, W.timeout / NS_PER_MS, 0);
    switch (p) {
    case W_PROBE:
        conn_open(W.loop, &W.probe);
        break;
    case W_CONNECT:
        for (int i = 0; i < W.count; i++)
            conn_open(W.loop, &W.w[i]);
        break;
    case W_PARK: /* 200 ms for the server to read and park every query; open the trigger now */
        conn_open(W.loop, &W.trigger);
        uv_timer_start(&W.park_timer, on_parked, 200, 0);
        break;
    case W_TRIGGERED:
        trigger_maybe_send();
        break;
    case W_DONE:
        break;
    }
}

/* Builds the probe and the trigger request. */
static void watch_requests(void)
{
    W.probe_req = request_get(&W.url, "");
    size_t blen = strlen(W.body);
    if (asprintf(&W.trig_req,
                 "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: trellis-loadgen\r\n"
                 "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                 W.method, W.trig.target, W.trig.host, blen, W.body) < 0)
        die(1, "out of memory");
}

/* The watchers' request needs the index, so it is built after the probe answered. */
static void watch_build_query(void)
{
    char suffix[128];
    snprintf(suffix, sizeof(suffix), "%cindex=%" PRIu64 "&wait=%s", W.url.has_query ? '&' : '?',
             W.index, W.wait);
    free(W.watch_req);
    W.watch_req = request_get(&W.url, suffix);
}

/* Parses watchers-mode options into W; exits 2 on bad usage. */
static void watch_options(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", 1, 0, 'u'},          {"count", 1, 0, 'n'},          {"trigger-url", 1, 0, 't'},
        {"trigger-body", 1, 0, 'b'}, {"trigger-method", 1, 0, 'm'}, {"wait", 1, 0, 'W'},
        {"timeout", 1, 0, 'T'},      {"help", 0, 0, 'h'},           {0, 0, 0, 0}};
    const char *url = NULL, *trig = NULL;
    int64_t timeout = 10 * (int64_t)NS_PER_S;
    W.count = 1000;
    W.method = "PUT";
    W.body = "";
    W.wait = "60s";
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'u':
            url = optarg;
            break;
        case 'n':
            W.count = (int)parse_count("--count", optarg, 1000000);
            break;
        case 't':
            trig = optarg;
            break;
        case 'b':
            W.body = optarg;
            break;
        case 'm':
            W.method = optarg;
            break;
        case 'W':
            W.wait = optarg;
            break;
        case 'T':
            timeout = parse_duration(optarg);
            break;
        case 'h':
            fputs(USAGE, stdout);
            exit(0);
        default:
            fputs(USAGE, stderr);
            exit(2);
        }
    }
    if (!url || !trig) die(2, "watchers: --url and --trigger-url are required (see --help)");
    if (target_parse(url, &W.url) != 0) die(2, "--url %s: expected http://IPv4:port/path", url);
    if (target_parse(trig, &W.trig) != 0)
        die(2, "--trigger-url %s: expected http://IPv4:port/path", trig);
    if (timeout <= 0) die(2, "--timeout: expected e.g. 10s");
    if (parse_duration(W.wait) < 0) die(2, "--wait: expected e.g. 60s");
    W.timeout = (uint64_t)timeout;
}

static void watch_init_conns(void)
{
    W.w = calloc((size_t)W.count, sizeof(conn_t));
    W.wake_at = calloc((size_t)W.count, sizeof(uint64_t));
    if (!W.w || !W.wake_at) die(1, "out of memory");
    for (int i = 0; i < W.count; i++)
        W.w[i] = (conn_t){.ops = &watcher_ops, .target = &W.url, .id = i};
    W.probe = (conn_t){.ops = &probe_ops, .target = &W.url};
    W.trigger = (conn_t){.ops = &trigger_ops, .target = &W.trig};
}

static int run_watchers(int argc, char **argv)
{
    watch_options(argc, argv);
    W.loop = uv_default_loop();
    watch_requests();
    watch_init_conns();
    uv_timer_init(W.loop, &W.park_timer);
    uv_timer_init(W.loop, &W.deadline);
    watch_phase(W_PROBE);
    uv_run(W.loop, UV_RUN_DEFAULT);
    free(W.w);
    free(W.wake_at);
    free(W.probe_req);
    free(W.watch_req);
    free(W.trig_req);
    uv_loop_close(W.loop);
    return W.exit_code;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "rate") == 0) return run_rate(argc - 1, argv + 1);
    if (strcmp(argv[1], "watchers") == 0) return run_watchers(argc - 1, argv + 1);
    fprintf(stderr, "trellis-loadgen: unknown mode '%s' (rate or watchers)\n%s", argv[1], USAGE);
    return 2;
}
