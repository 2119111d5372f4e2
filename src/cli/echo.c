/* `trellis echo`: an httpbin-like upstream for tests, benchmarks and demos. */
#include "cli/cli.h"

#include "core/buf.h"
#include "core/mem.h"
#include "trellis/error.h"
#include "trellis/http.h"
#include "trellis/log.h"
#include "trellis/metrics.h"
#include "trellis/net.h"
#include "trellis/runtime.h"

#include <ctype.h>
#include <getopt.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ECHO_DEFAULT_LISTEN  "127.0.0.1:8090"
#define ECHO_BODY_INLINE_MAX (1024 * 1024) /* /echo returns bodies up to this size inline */
#define ECHO_MAX_DELAY_MS    600000
#define ECHO_MAX_STREAM      100000
#define ECHO_BYTES_CHUNK     16384

typedef struct echo_s {
    tr_http_server_options_t http;
    int *fds;
    tr_metric_t *requests;
    long fail_percent; /* this share of `GET /` answers 500 (a faulty version, for rollouts) */
    const char *tag;   /* sent as x-served-by on `GET /` when set */
} echo_t;

static tr_series_t *series_for(echo_t *e, const char *endpoint)
{
    const char *labels[] = {endpoint, NULL};
    return tr_metric_series(e->requests, labels);
}

/* ---- simple endpoints */

static const char hello[] = "hello\n";

static void send_json(tr_http_req_t *req, int status, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    tr_http_res_send(req, status, "application/json", s, strlen(s));
    free(s);
}

static bool parse_uint_tail(const char *s, size_t len, unsigned long max, unsigned long *out)
{
    if (len == 0 || len > 12) return false;
    unsigned long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > max) return false;
    *out = v;
    return true;
}

static json_t *headers_json(const tr_http_req_t *req)
{
    json_t *h = json_object();
    for (size_t i = 0; i < req->nheaders; i++) {
        char name[256];
        size_t n = req->headers[i].name_len < sizeof(name) - 1 ? req->headers[i].name_len
                                                               : sizeof(name) - 1;
        for (size_t k = 0; k < n; k++)
            name[k] = (char)tolower((unsigned char)req->headers[i].name[k]);
        name[n] = '\0';
        json_t *v = json_stringn(req->headers[i].value, req->headers[i].value_len);
        if (!v) v = json_string("(invalid UTF-8)");
        json_t *prev = json_object_get(h, name);
        if (prev) {
            /* Repeated fields combine as a comma-separated list (RFC 9110 §5.3). */
            json_t *joined = json_sprintf("%s, %s", json_string_value(prev), json_string_value(v));
            json_decref(v);
            v = joined;
        }
        json_object_set_new(h, name, v);
    }
    return h;
}

static void do_status(tr_http_req_t *req, const char *tail, size_t len)
{
    unsigned long code;
    if (!parse_uint_tail(tail, len, 599, &code) || code < 200) {
        tr_http_res_problem(req, 400, "bad-status", "Bad Request",
                            "/status/{code} takes a status code from 200 to 599");
        return;
    }
    json_t *o = json_pack("{s:i}", "status", (int)code);
    send_json(req, (int)code, o);
}

/* ---- /delay/{ms}: answers later; the timer is the request's and dies with it */

typedef struct delay_s {
    uv_timer_t timer;
    tr_http_req_t *req;
    unsigned long ms;
} delay_t;

static void on_delay_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_delay(uv_timer_t *t)
{
    delay_t *d = t->data;
    tr_http_req_t *req = d->req;
    req->on_abort = NULL;
    uv_close((uv_handle_t *)&d->timer, on_delay_closed);
    send_json(req, 200, json_pack("{s:I}", "delay_ms", (json_int_t)d->ms));
}

static void on_delay_abort(tr_http_req_t *req)
{
    delay_t *d = req->data;
    uv_timer_stop(&d->timer);
    uv_close((uv_handle_t *)&d->timer, on_delay_closed);
}

static void do_delay(tr_http_req_t *req, const char *tail, size_t len)
{
    unsigned long ms;
    if (!parse_uint_tail(tail, len, ECHO_MAX_DELAY_MS, &ms)) {
        tr_http_res_problem(req, 400, "bad-delay", "Bad Request",
                            "/delay/{ms} takes milliseconds from 0 to %d", ECHO_MAX_DELAY_MS);
        return;
    }
    delay_t *d = tr_malloc(sizeof(*d));
    d->req = req;
    d->ms = ms;
    uv_timer_init(req->loop, &d->timer);
    d->timer.data = d;
    req->data = d;
    req->on_abort = on_delay_abort;
    uv_timer_start(&d->timer, on_delay, ms, 0);
}

/* ---- /bytes/{n}: streams n bytes with backpressure */

typedef struct bytes_s {
    uint64_t left;
    uint64_t pos;
} bytes_t;

static void bytes_pump(tr_http_req_t *req)
{
    bytes_t *b = req->data;
    char chunk[ECHO_BYTES_CHUNK];
    while (b->left) {
        size_t n = b->left < sizeof(chunk) ? (size_t)b->left : sizeof(chunk);
        for (size_t i = 0; i < n; i++)
            chunk[i] = (char)('a' + (b->pos + i) % 26);
        b->left -= n;
        b->pos += n;
        if (!tr_http_res_write(req, chunk, n) && b->left) return; /* on_drain resumes */
    }
    req->on_drain = NULL;
    tr_http_res_end(req);
}

static void do_bytes(tr_http_req_t *req, const char *tail, size_t len)
{
    unsigned long n;
    if (!parse_uint_tail(tail, len, 1UL << 40, &n)) {
        tr_http_res_problem(req, 400, "bad-size", "Bad Request",
                            "/bytes/{n} takes a byte count from 0 to 2^40");
        return;
    }
    bytes_t *b = tr_http_req_alloc(req, sizeof(*b));
    b->left = n;
    b->pos = 0;
    req->data = b;
    req->on_drain = bytes_pump;
    char cl[24];
    snprintf(cl, sizeof(cl), "%lu", n);
    tr_http_res_header(req, "Content-Type", "application/octet-stream");
    tr_http_res_header(req, "Content-Length", cl);
    tr_http_res_start(req, 200);
    bytes_pump(req);
}

/* ---- /stream/{n}: n JSON lines, chunked */

static void do_stream(tr_http_req_t *req, const char *tail, size_t len)
{
    unsigned long n;
    if (!parse_uint_tail(tail, len, ECHO_MAX_STREAM, &n)) {
        tr_http_res_problem(req, 400, "bad-count", "Bad Request",
                            "/stream/{n} takes a line count from 0 to %d", ECHO_MAX_STREAM);
        return;
    }
    tr_http_res_header(req, "Content-Type", "application/x-ndjson");
    tr_http_res_start(req, 200);
    for (unsigned long i = 0; i < n; i++) {
        char line[48];
        int k = snprintf(line, sizeof(line), "{\"id\":%lu}\n", i);
        tr_http_res_write(req, line, (size_t)k);
    }
    tr_http_res_end(req);
}

/* ---- /echo: method, path, headers and body back as JSON */

typedef struct echo_body_s {
    tr_buf_t body;
    uint64_t bytes;
    EVP_MD_CTX *sha;
} echo_body_t;

static void echo_body_free(echo_body_t *eb)
{
    tr_buf_free(&eb->body);
    EVP_MD_CTX_free(eb->sha);
    free(eb);
}

static void on_echo_body(tr_http_req_t *req, const char *data, size_t len)
{
    echo_body_t *eb = req->data;
    eb->bytes += len;
    EVP_DigestUpdate(eb->sha, data, len);
    if (eb->body.len + len <= ECHO_BODY_INLINE_MAX) tr_buf_append(&eb->body, data, len);
}

static void on_echo_abort(tr_http_req_t *req)
{
    echo_body_free(req->data);
}

static void on_echo_end(tr_http_req_t *req)
{
    echo_body_t *eb = req->data;
    unsigned char md[32];
    char hex[65];
    EVP_DigestFinal_ex(eb->sha, md, NULL);
    for (int i = 0; i < 32; i++)
        snprintf(hex + i * 2, 3, "%02x", md[i]);
    json_t *o = json_pack("{s:s, s:s%, s:s%, s:o}", "method", req->method, "path", req->path,
                          (size_t)req->path_len, "query", req->query, (size_t)req->query_len,
                          "headers", headers_json(req));
    if (!o) o = json_object(); /* a path or query that is not UTF-8 */
    json_object_set_new(o, "body_bytes", json_integer((json_int_t)eb->bytes));
    json_object_set_new(o, "body_sha256", json_string(hex));
    bool whole = eb->bytes == eb->body.len;
    json_t *body = whole ? json_stringn(eb->body.data ? eb->body.data : "", eb->body.len) : NULL;
    json_object_set_new(o, "body", body ? body : json_null());
    json_object_set_new(o, "body_truncated", json_boolean(!whole));
    req->on_abort = NULL;
    echo_body_free(eb);
    send_json(req, 200, o);
}

static void do_echo(tr_http_req_t *req)
{
    echo_body_t *eb = tr_calloc(1, sizeof(*eb));
    eb->sha = EVP_MD_CTX_new();
    EVP_DigestInit_ex(eb->sha, EVP_sha256(), NULL);
    req->data = eb;
    req->on_body = on_echo_body;
    req->on_end = on_echo_end;
    req->on_abort = on_echo_abort;
}

/* ---- routing */

static bool path_is(const tr_http_req_t *req, const char *p, size_t n)
{
    return req->path_len == n && !memcmp(req->path, p, n);
}

static bool path_has_prefix(const tr_http_req_t *req, const char *p, size_t n)
{
    return req->path_len > n && !memcmp(req->path, p, n);
}

#define PATH_IS(req, lit) path_is(req, lit, sizeof(lit) - 1)
#define PREFIX(req, lit)  path_has_prefix(req, lit, sizeof(lit) - 1)
#define TAIL(req, lit)    (req)->path + sizeof(lit) - 1, (req)->path_len - (sizeof(lit) - 1)

static void do_metrics(tr_http_req_t *req)
{
    tr_buf_t out = TR_BUF_INIT;
    tr_metrics_render(tr_metrics_default(), &out);
    tr_http_res_send(req, 200, "text/plain; version=0.0.4; charset=utf-8", out.data, out.len);
    tr_buf_free(&out);
}

static void do_health(tr_http_req_t *req)
{
    static const char pass[] = "{\"status\":\"pass\"}\n";
    tr_http_res_send(req, 200, "application/health+json", pass, sizeof(pass) - 1);
}

static const char *route(echo_t *e, tr_http_req_t *req)
{
    if (PATH_IS(req, "/echo")) return do_echo(req), "echo";
    if (PATH_IS(req, "/headers")) {
        send_json(req, 200, json_pack("{s:o}", "headers", headers_json(req)));
        return "headers";
    }
    if (PREFIX(req, "/status/")) return do_status(req, TAIL(req, "/status/")), "status";
    if (PREFIX(req, "/delay/")) return do_delay(req, TAIL(req, "/delay/")), "delay";
    if (PREFIX(req, "/bytes/")) return do_bytes(req, TAIL(req, "/bytes/")), "bytes";
    if (PREFIX(req, "/stream/")) return do_stream(req, TAIL(req, "/stream/")), "stream";
    if (PATH_IS(req, "/drop")) return tr_http_res_abort(req), "drop";
    if (PATH_IS(req, "/health/live") || PATH_IS(req, "/health/ready"))
        return do_health(req), "health";
    if (PATH_IS(req, "/metrics")) return do_metrics(req), "metrics";
    tr_http_res_problem(req, 404, "not-found", "Not Found",
                        "no endpoint at this path; try /, /echo, /headers, /status/{code}, "
                        "/delay/{ms}, /bytes/{n}, /stream/{n}, /drop, /health/live, /metrics");
    return "other";
}

static void on_request(tr_http_req_t *req, void *data)
{
    echo_t *e = data;
    static __thread tr_series_t *root_series;
    /* The benchmark path: no allocation, no lookup beyond the path compare. */
    if (req->path_len == 1 && req->path[0] == '/') {
        if (!root_series) root_series = series_for(e, "root");
        tr_counter_inc(root_series);
        if (e->tag) tr_http_res_header(req, "x-served-by", e->tag);
        if (e->fail_percent) {
            /* Exactly fail_percent of every 100 requests (per worker), spread evenly. */
            static __thread uint64_t served;
            uint64_t k = ++served, p = (uint64_t)e->fail_percent;
            if (k * p / 100 != (k - 1) * p / 100) {
                tr_http_res_problem(req, 500, "injected-failure", "Injected failure",
                                    "this echo runs with --fail-percent %ld", e->fail_percent);
                return;
            }
        }
        tr_http_res_send(req, 200, "text/plain", hello, sizeof(hello) - 1);
        return;
    }
    const char *endpoint = route(e, req);
    tr_counter_inc(series_for(e, endpoint));
}

/* ---- runtime hooks */

static int on_worker_start(tr_worker_t *w, void *data)
{
    echo_t *e = data;
    tr_http_server_t *srv;
    int err = tr_http_server_start(tr_worker_loop(w), e->fds[tr_worker_id(w)], &e->http, &srv);
    if (err) {
        tr_log_error("cannot serve", TR_LOG_ERR(err), TR_LOG_INT("worker", tr_worker_id(w)));
        return err;
    }
    tr_worker_set_data(w, srv);
    return 0;
}

static void on_worker_stop(tr_worker_t *w, bool force, void *data)
{
    tr_http_server_t *srv = tr_worker_data(w);
    if (!srv) return;
    if (!force)
        tr_log_info("draining", TR_LOG_INT("worker", tr_worker_id(w)),
                    TR_LOG_UINT("connections", tr_http_server_connections(srv)));
    tr_http_server_close(srv, force, NULL, NULL);
}

static void on_reload(void *data)
{
    tr_log_info("reload requested; trellis echo has no configuration to reload");
}

/* ---- command line */

static void echo_usage(FILE *out)
{
    fprintf(out,
            "Usage: trellis echo [options]\n\n"
            "An httpbin-like HTTP service: the upstream for tests, benchmarks and demos.\n\n"
            "Endpoints:\n"
            "  GET /               hello\\n (the benchmark path)\n"
            "  ANY /echo           method, path, query, headers and body back as JSON\n"
            "  GET /headers        the request headers as JSON\n"
            "  ANY /status/{code}  answers with that status\n"
            "  GET /delay/{ms}     answers after ms milliseconds\n"
            "  GET /bytes/{n}      n bytes of body\n"
            "  GET /stream/{n}     n JSON lines, chunked\n"
            "  GET /drop           closes the connection without answering\n"
            "  GET /health/live, /health/ready, /metrics\n\n"
            "Options:\n"
            "  -l, --listen ADDR         address to listen on (default " ECHO_DEFAULT_LISTEN ")\n"
            "  -w, --workers N           worker threads, each with its own loop (default: CPUs)\n"
            "      --max-body SIZE       largest request body accepted (default 1MiB)\n"
            "      --max-header SIZE     request line + headers limit (default 16KiB)\n"
            "      --header-timeout DUR  time to receive request headers (default 10s)\n"
            "      --idle-timeout DUR    keep-alive idle time (default 60s)\n"
            "      --body-timeout DUR    longest stall while receiving a body (default 60s)\n"
            "      --grace DUR           drain time after SIGTERM/SIGINT (default 10s)\n"
            "      --fail-percent P      answer 500 to P of every 100 `GET /` (default 0)\n"
            "      --tag TEXT            send `x-served-by: TEXT` with `GET /`\n"
            "      --log-level LEVEL     debug, info, warn or error (default info)\n"
            "      --log-format FORMAT   auto, json or text (default auto: text on a TTY)\n"
            "  -h, --help                show this help\n\n"
            "Example:\n"
            "  trellis echo --listen 127.0.0.1:8090 --workers 2 && curl localhost:8090/echo\n");
}

enum {
    OPT_MAX_BODY = 256,
    OPT_MAX_HEADER,
    OPT_HEADER_TIMEOUT,
    OPT_IDLE_TIMEOUT,
    OPT_BODY_TIMEOUT,
    OPT_FAIL_PERCENT,
    OPT_TAG
};

static const struct option long_opts[] = {
    {"listen", required_argument, NULL, 'l'},
    {"workers", required_argument, NULL, 'w'},
    {"max-body", required_argument, NULL, OPT_MAX_BODY},
    {"max-header", required_argument, NULL, OPT_MAX_HEADER},
    {"header-timeout", required_argument, NULL, OPT_HEADER_TIMEOUT},
    {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
    {"body-timeout", required_argument, NULL, OPT_BODY_TIMEOUT},
    TR_CLI_RUN_OPTIONS,
    {"fail-percent", required_argument, NULL, OPT_FAIL_PERCENT},
    {"tag", required_argument, NULL, OPT_TAG},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

typedef struct echo_args_s {
    const char *listen, *log_level, *log_format;
    long workers;
    uint64_t grace_ms, max_header;
} echo_args_t;

static int parse_args(int argc, char **argv, echo_t *e, echo_args_t *a)
{
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "l:w:h", long_opts, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case 'l':
            a->listen = optarg;
            break;
        case 'w':
            ok = tr_cli_int("echo", "workers", optarg, 1, 256, &a->workers);
            break;
        case OPT_MAX_BODY:
            ok = tr_cli_size("echo", "max-body", optarg, &e->http.max_body_bytes);
            break;
        case OPT_MAX_HEADER:
            ok = tr_cli_size("echo", "max-header", optarg, &a->max_header);
            break;
        case OPT_HEADER_TIMEOUT:
            ok = tr_cli_duration("echo", "header-timeout", optarg, &e->http.header_timeout_ms);
            break;
        case OPT_IDLE_TIMEOUT:
            ok = tr_cli_duration("echo", "idle-timeout", optarg, &e->http.idle_timeout_ms);
            break;
        case OPT_BODY_TIMEOUT:
            ok = tr_cli_duration("echo", "body-timeout", optarg, &e->http.body_timeout_ms);
            break;
        case OPT_FAIL_PERCENT:
            ok = tr_cli_int("echo", "fail-percent", optarg, 0, 100, &e->fail_percent);
            break;
        case OPT_TAG:
            e->tag = optarg;
            break;
        case 'h':
            echo_usage(stdout);
            return -1;
        default:
            if (tr_cli_run_option("echo", c, optarg, &a->grace_ms, &a->log_level, &a->log_format,
                                  &ok))
                break;
            fprintf(stderr, "Try 'trellis echo --help'.\n");
            return TR_EXIT_USAGE;
        }
        if (!ok) return TR_EXIT_USAGE;
    }
    if (optind < argc) return tr_cli_usage_error("echo", "unexpected argument '%s'", argv[optind]);
    e->http.max_header_bytes = (size_t)a->max_header;
    return 0;
}

int tr_cmd_echo(int argc, char **argv)
{
    echo_t e;
    memset(&e, 0, sizeof(e));
    echo_args_t a = {ECHO_DEFAULT_LISTEN, NULL, NULL, 0, 0, 0};
    int rc = parse_args(argc, argv, &e, &a);
    if (rc) return rc < 0 ? TR_EXIT_OK : rc;
    if (!tr_cli_log_init("echo", a.log_level, a.log_format, "echo")) return TR_EXIT_USAGE;
    struct sockaddr_storage addr, bound;
    if (tr_net_parse_addr(a.listen, &addr))
        return tr_cli_usage_error("echo", "--listen: '%s' is not HOST:PORT (e.g. 127.0.0.1:8090)",
                                  a.listen);
    int workers = a.workers ? (int)a.workers : tr_cpu_count();
    e.fds = tr_calloc((size_t)workers, sizeof(int));
    int err = tr_net_listen(&addr, workers, 1024, e.fds, &bound);
    if (err) {
        fprintf(stderr, "trellis echo: cannot listen on %s: %s\n", a.listen, tr_strerror(err));
        free(e.fds);
        return TR_EXIT_FAIL;
    }
    e.http.handler = on_request;
    e.http.handler_data = &e;
    e.requests = tr_metrics_counter(tr_metrics_default(), "trellis_echo_requests_total",
                                    "Requests served by trellis echo, by endpoint.",
                                    (const char *const[]){"endpoint", NULL});
    tr_metrics_register_process(tr_metrics_default());
    char where[64];
    tr_net_format_addr((struct sockaddr *)&bound, where, sizeof(where));
    tr_log_info("listening", TR_LOG_STR("addr", where), TR_LOG_INT("workers", workers),
                TR_LOG_INT("pid", getpid()));
    tr_runtime_options_t ro = {.workers = workers,
                               .grace_ms = a.grace_ms,
                               .on_start = on_worker_start,
                               .on_stop = on_worker_stop,
                               .on_reload = on_reload,
                               .data = &e};
    err = tr_runtime_run(&ro);
    free(e.fds);
    tr_log_info("stopped");
    return err ? TR_EXIT_FAIL : TR_EXIT_OK;
}
