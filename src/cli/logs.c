/* `trellis logs`: read (and follow) central logs over HTTP; `trellis logs serve` hosts them. */
#include "cli/cli.h"

#include "core/buf.h"
#include "trace/logs.h"
#include "trellis/error.h"
#include "trellis/http.h"
#include "trellis/http_client.h"
#include "trellis/log.h"
#include "trellis/net.h"
#include "trellis/runtime.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOGS_DEFAULT_URL    "http://127.0.0.1:8500"
#define LOGS_DEFAULT_LISTEN "127.0.0.1:8500"
#define FOLLOW_WAIT         "30s"

/* ---- trellis logs serve ----------------------------------------------------------------- */

typedef struct serve_cmd_s {
    tr_logs_t *logs;
    tr_http_server_options_t http;
    tr_http_server_t *server;
    int fd;
    char where[64];
    const char *data_dir;
} serve_cmd_t;

static void on_serve_request(tr_http_req_t *req, void *data)
{
    serve_cmd_t *sc = data;
    if (tr_logs_handle(sc->logs, req)) return;
    tr_http_res_problem(req, 404, "not-found", "Not found",
                        "%s is not served here; this is the log store, at /api/logs", req->path);
}

static int on_serve_start(tr_worker_t *w, void *data)
{
    serve_cmd_t *sc = data;
    sc->http.handler = on_serve_request;
    sc->http.handler_data = sc;
    int e = tr_http_server_start(tr_worker_loop(w), sc->fd, &sc->http, &sc->server);
    if (e) {
        tr_log_error("cannot serve", TR_LOG_ERR(e));
        return e;
    }
    tr_log_info("listening", TR_LOG_STR("addr", sc->where),
                TR_LOG_STR("data_dir", sc->data_dir ? sc->data_dir : "(memory)"),
                TR_LOG_INT("pid", getpid()));
    return 0;
}

static void on_serve_stop(tr_worker_t *w, bool force, void *data)
{
    serve_cmd_t *sc = data;
    if (!sc->server) return;
    tr_logs_shutdown(sc->logs); /* answer followers so the server has nothing to wait for */
    tr_http_server_close(sc->server, force, NULL, NULL);
    sc->server = NULL;
}

static void serve_usage(FILE *out)
{
    fprintf(out,
            "Usage: trellis logs serve [options]\n\n"
            "Runs the central log store alone with its HTTP API (GET/POST /api/logs); the\n"
            "control plane will embed it. Its own log lines go to the store too.\n\n"
            "Options:\n"
            "  -l, --listen ADDR        address of the HTTP API (default " LOGS_DEFAULT_LISTEN ")\n"
            "  -d, --data-dir DIR       where logs.db is kept (default ./.trellis)\n"
            "      --memory             keep lines in memory only (no data directory)\n"
            "      --max-lines N        lines kept in memory (default 100000)\n"
            "      --max-db SIZE        largest logs.db (default 256MiB)\n"
            "      --max-age DUR        delete lines older than this (default 7d)\n"
            "      --grace DUR          drain time after SIGTERM/SIGINT (default 10s)\n"
            "      --log-level LEVEL    debug, info, warn or error (default info)\n"
            "      --log-format FORMAT  auto, json or text (default auto)\n"
            "  -h, --help               show this help\n\n"
            "Example:\n"
            "  trellis logs serve --listen 127.0.0.1:8500 --data-dir /var/lib/trellis &\n"
            "  echo 'hello' | curl --data-binary @- 'localhost:8500/api/logs?service=demo'\n");
}

enum {
    OPT_MEMORY = 256,
    OPT_MAX_LINES,
    OPT_MAX_DB,
    OPT_MAX_AGE,
    OPT_SERVICE,
    OPT_CID,
    OPT_TID,
    OPT_SINCE,
    OPT_UNTIL,
    OPT_LEVEL,
    OPT_LIMIT,
    OPT_JSON,
    OPT_URL,
};

static const struct option serve_opts[] = {
    {"listen", required_argument, NULL, 'l'},
    {"data-dir", required_argument, NULL, 'd'},
    {"memory", no_argument, NULL, OPT_MEMORY},
    {"max-lines", required_argument, NULL, OPT_MAX_LINES},
    {"max-db", required_argument, NULL, OPT_MAX_DB},
    {"max-age", required_argument, NULL, OPT_MAX_AGE},
    TR_CLI_RUN_OPTIONS,
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

typedef struct serve_args_s {
    const char *listen, *log_level, *log_format;
    bool memory;
    uint64_t grace_ms;
    tr_logs_options_t o;
} serve_args_t;

static int serve_parse(int argc, char **argv, serve_args_t *a)
{
    int c;
    long n;
    optind = 1;
    while ((c = getopt_long(argc, argv, "l:d:h", serve_opts, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case 'l':
            a->listen = optarg;
            break;
        case 'd':
            a->o.data_dir = optarg;
            break;
        case OPT_MEMORY:
            a->memory = true;
            break;
        case OPT_MAX_LINES:
            ok = tr_cli_int("logs serve", "max-lines", optarg, 1, 100000000, &n);
            a->o.max_lines = (size_t)n;
            break;
        case OPT_MAX_DB:
            ok = tr_cli_size("logs serve", "max-db", optarg, &a->o.max_db_bytes);
            break;
        case OPT_MAX_AGE:
            ok = tr_cli_duration("logs serve", "max-age", optarg, &a->o.max_age_ms);
            break;
        case 'h':
            serve_usage(stdout);
            return -1;
        default:
            if (tr_cli_run_option("logs serve", c, optarg, &a->grace_ms, &a->log_level,
                                  &a->log_format, &ok))
                break;
            fprintf(stderr, "Try 'trellis logs serve --help'.\n");
            return TR_EXIT_USAGE;
        }
        if (!ok) return TR_EXIT_USAGE;
    }
    if (optind < argc)
        return tr_cli_usage_error("logs serve", "unexpected argument '%s'", argv[optind]);
    return 0;
}

static int cmd_serve(int argc, char **argv)
{
    serve_args_t a = {.listen = LOGS_DEFAULT_LISTEN};
    int r = serve_parse(argc, argv, &a);
    if (r) return r < 0 ? TR_EXIT_OK : r;
    if (!tr_cli_log_init("logs serve", a.log_level, a.log_format, "logs")) return TR_EXIT_USAGE;
    if (a.memory)
        a.o.data_dir = NULL;
    else if (!a.o.data_dir)
        a.o.data_dir = ".trellis";
    if (a.o.data_dir && mkdir(a.o.data_dir, 0700) < 0 && errno != EEXIST) {
        fprintf(stderr, "trellis logs serve: cannot create %s: %s\n", a.o.data_dir,
                strerror(errno));
        return TR_EXIT_FAIL;
    }
    serve_cmd_t sc = {.data_dir = a.o.data_dir};
    struct sockaddr_storage addr, bound;
    if (tr_net_parse_addr(a.listen, &addr))
        return tr_cli_usage_error(
            "logs serve", "--listen: '%s' is not HOST:PORT (e.g. 127.0.0.1:8500)", a.listen);
    int err = tr_net_listen(&addr, 1, 1024, &sc.fd, &bound);
    if (err) {
        fprintf(stderr, "trellis logs serve: cannot listen on %s: %s\n", a.listen,
                tr_strerror(err));
        return TR_EXIT_FAIL;
    }
    tr_net_format_addr((struct sockaddr *)&bound, sc.where, sizeof(sc.where));
    char why[512];
    sc.logs = tr_logs_open(&a.o, why, sizeof(why));
    if (!sc.logs) {
        fprintf(stderr, "trellis logs serve: %s\n", why);
        close(sc.fd);
        return TR_EXIT_FAIL;
    }
    char instance[32];
    snprintf(instance, sizeof(instance), "%d", (int)getpid());
    tr_logs_attach_logger(sc.logs, "trellis", instance);
    tr_runtime_options_t ro = {.workers = 1,
                               .grace_ms = a.grace_ms,
                               .on_start = on_serve_start,
                               .on_stop = on_serve_stop,
                               .data = &sc};
    err = tr_runtime_run(&ro);
    tr_log_info("stopped");
    tr_logs_close(sc.logs);
    return err ? TR_EXIT_FAIL : TR_EXIT_OK;
}

/* ---- trellis logs (the client) ---------------------------------------------------------- */

typedef struct client_s {
    uv_loop_t loop;
    uv_signal_t sigint;
    tr_http_client_t *http;
    tr_http_endpoint_t ep;
    tr_http_client_req_t *inflight;
    tr_buf_t filters; /* "&service=...&..." */
    const char *url;
    bool follow, json, colour, stopping, closed;
    bool started; /* the first (plain) query has been answered */
    long limit;
    int exit_code;
    uint64_t next;
    bool by_correlation; /* --correlation-id: point at the request's trace afterwards */
    json_t *traces;      /* distinct trace IDs seen, in order */
} client_t;

static void append_param(tr_buf_t *b, const char *name, const char *value)
{
    static const char hex[] = "0123456789ABCDEF";
    if (!value) return;
    tr_buf_printf(b, "&%s=", name);
    for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("-._~", *p)) {
            tr_buf_append(b, p, 1);
        } else {
            char esc[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            tr_buf_append(b, esc, 3);
        }
    }
}

static const char *level_colour(const char *level)
{
    if (!strcmp(level, "debug")) return "\x1b[90m";
    if (!strcmp(level, "warn")) return "\x1b[33m";
    if (!strcmp(level, "error")) return "\x1b[31m";
    return "\x1b[32m";
}

static const char *jstr(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

/* Remembers the line's trace ID, so the request's trace can be named at the end. */
static void note_trace(client_t *c, json_t *ln)
{
    json_t *tid = json_object_get(ln, "trace_id");
    if (!c->by_correlation || !json_is_string(tid) || json_array_size(c->traces) >= 8) return;
    size_t i;
    json_t *seen;
    json_array_foreach(c->traces, i, seen)
    {
        if (json_equal(seen, tid)) return;
    }
    json_array_append(c->traces, tid);
}

static void print_traces(client_t *c)
{
    size_t i;
    json_t *tid;
    json_array_foreach(c->traces, i, tid)
        fprintf(stderr, "trace %s: see it with 'trellis trace %s'\n", json_string_value(tid),
                json_string_value(tid));
}

static void print_line(client_t *c, json_t *ln)
{
    note_trace(c, ln);
    if (c->json) {
        char *s = json_dumps(ln, JSON_COMPACT);
        printf("%s\n", s);
        free(s);
        return;
    }
    const char *ts = jstr(ln, "ts"), *level = jstr(ln, "level"), *inst = jstr(ln, "instance");
    char label[8];
    snprintf(label, sizeof(label), "%-5.5s", level);
    for (char *p = label; *p; p++)
        *p = (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    /* Milliseconds are enough to read; the full time is in --json. */
    printf("%.23s%s %s%s%s %s%s%s %s\n", ts, strlen(ts) > 23 ? "Z" : "",
           c->colour ? level_colour(level) : "", label, c->colour ? "\x1b[0m" : "",
           jstr(ln, "service"), *inst ? "/" : "", inst, jstr(ln, "message"));
}

static void fail_http(client_t *c, int status, const char *body, size_t len)
{
    json_t *p = json_loadb(body, len, 0, NULL);
    const char *detail = json_string_value(json_object_get(p, "detail"));
    fprintf(stderr, "trellis logs: %s answered %d: %s\n", c->url, status,
            detail ? detail : "unexpected answer");
    json_decref(p);
    c->exit_code = status == 400 ? TR_EXIT_USAGE : TR_EXIT_FAIL;
}

static void request_next(client_t *c);

static void stop_client(client_t *c)
{
    c->stopping = true;
    if (c->closed) return;
    c->closed = true;
    uv_close((uv_handle_t *)&c->sigint, NULL);
    tr_http_client_close(c->http, NULL);
}

/* Prints the lines of one answer: a first query comes newest first, shown oldest first. */
static void print_answer(client_t *c, json_t *body, bool first)
{
    json_t *lines = json_object_get(body, "lines");
    size_t n = json_array_size(lines);
    for (size_t i = 0; i < n; i++)
        print_line(c, json_array_get(lines, first ? n - 1 - i : i));
    json_t *next = json_object_get(body, "next");
    if (json_is_integer(next)) c->next = (uint64_t)json_integer_value(next);
    fflush(stdout);
}

static void on_fetched(tr_http_client_req_t *req, int err, const tr_http_client_response_t *res)
{
    client_t *c = tr_http_client_req_data(req);
    bool first = !c->started;
    c->started = true;
    c->inflight = NULL;
    if (c->stopping) return;
    if (err) {
        fprintf(stderr,
                "trellis logs: cannot reach %s: %s (is trellis running there? pass --url, or "
                "start a store with 'trellis logs serve')\n",
                c->url, tr_strerror(err));
        c->exit_code = TR_EXIT_FAIL;
    } else if (res->status != 200) {
        fail_http(c, res->status, res->body, res->body_len);
    } else {
        json_t *body = json_loadb(res->body, res->body_len, 0, NULL);
        if (body) print_answer(c, body, first);
        json_decref(body);
        if (!body) {
            fprintf(stderr, "trellis logs: %s answered with a body that is not JSON\n", c->url);
            c->exit_code = TR_EXIT_FAIL;
        }
    }
    if (c->exit_code || !c->follow)
        stop_client(c);
    else
        request_next(c);
}

static void request_next(client_t *c)
{
    tr_buf_t target = TR_BUF_INIT;
    if (!c->started) {
        /* The first answer: the newest lines, shown oldest first. */
        tr_buf_printf(&target, "/api/logs?limit=%ld", c->limit);
    } else {
        tr_buf_printf(&target, "/api/logs?follow=1&wait=" FOLLOW_WAIT "&limit=%ld&after=%llu",
                      c->limit, (unsigned long long)c->next);
    }
    tr_buf_append(&target, c->filters.data, c->filters.len);
    tr_buf_cstr(&target);
    tr_http_client_request_t r = {
        .method = "GET", .target = target.data, .flags = TR_HTTP_CLIENT_IDEMPOTENT, .data = c};
    int err = tr_http_client_fetch(c->http, &c->ep, &r, on_fetched, &c->inflight);
    tr_buf_free(&target);
    if (err) {
        fprintf(stderr, "trellis logs: cannot send to %s: %s\n", c->url, tr_strerror(err));
        c->exit_code = TR_EXIT_FAIL;
        stop_client(c);
    }
}

static void on_sigint(uv_signal_t *s, int signum)
{
    client_t *c = s->data;
    c->stopping = true; /* the cancelled request's callback must not ask again */
    if (c->inflight) tr_http_client_cancel(c->inflight);
    c->inflight = NULL;
    stop_client(c);
}

static void client_usage(FILE *out)
{
    fprintf(out,
            "Usage: trellis logs [options]\n"
            "       trellis logs serve [options]   (see trellis logs serve --help)\n\n"
            "Prints central log lines (trellis's own and every service's) as\n"
            "TIME LEVEL service/instance message, oldest first.\n\n"
            "Options:\n"
            "  -f, --follow             keep printing new lines until Ctrl-C\n"
            "  -s, --service NAME       only this service's lines\n"
            "  -c, --correlation-id ID  only lines about this request\n"
            "  -t, --trace-id ID        only lines of this trace\n"
            "  -q, --grep TEXT          only lines whose message contains TEXT (any case)\n"
            "      --level LEVEL        only lines at LEVEL or above (debug, info, warn, error)\n"
            "      --since WHEN         lines from WHEN: a duration ago (10m) or RFC 3339 time\n"
            "      --until WHEN         lines before WHEN\n"
            "  -n, --limit N            how many lines at first (default 100, at most 10000)\n"
            "      --json               one JSON object per line, for scripts\n"
            "      --url URL            the control plane's API (default " LOGS_DEFAULT_URL ")\n"
            "  -h, --help               show this help\n\n"
            "Example:\n"
            "  trellis logs --correlation-id 4bf92f35 --since 1h\n");
}

static const struct option client_opts[] = {
    {"follow", no_argument, NULL, 'f'},
    {"service", required_argument, NULL, 's'},
    {"correlation-id", required_argument, NULL, 'c'},
    {"trace-id", required_argument, NULL, 't'},
    {"grep", required_argument, NULL, 'q'},
    {"level", required_argument, NULL, OPT_LEVEL},
    {"since", required_argument, NULL, OPT_SINCE},
    {"until", required_argument, NULL, OPT_UNTIL},
    {"limit", required_argument, NULL, 'n'},
    {"json", no_argument, NULL, OPT_JSON},
    {"url", required_argument, NULL, OPT_URL},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const char *const param_names[] = {
    ['s'] = "service",
    ['c'] = "correlation_id",
    ['t'] = "trace_id",
    ['q'] = "q",
};

static int client_option(client_t *c, int opt)
{
    switch (opt) {
    case 'f':
        c->follow = true;
        return 0;
    case 's':
    case 'c':
    case 't':
    case 'q':
        append_param(&c->filters, param_names[opt], optarg);
        if (opt == 'c') c->by_correlation = true;
        return 0;
    case OPT_LEVEL:
        if (tr_log_level_parse(optarg) < 0)
            return tr_cli_usage_error(
                "logs", "--level: '%s' is not one of debug, info, warn, error", optarg);
        append_param(&c->filters, "level", optarg);
        return 0;
    case OPT_SINCE:
    case OPT_UNTIL: {
        int64_t ns;
        const char *name = opt == OPT_SINCE ? "since" : "until";
        if (!tr_logs_parse_time(optarg, true, 0, &ns))
            return tr_cli_usage_error("logs",
                                      "--%s: '%s' is not a time (examples: 10m, 2h, "
                                      "2026-11-22T10:00:00Z)",
                                      name, optarg);
        append_param(&c->filters, name, optarg);
        return 0;
    }
    case 'n':
        return tr_cli_int("logs", "limit", optarg, 1, TR_LOGS_MAX_LIMIT, &c->limit) ? 0
                                                                                    : TR_EXIT_USAGE;
    case OPT_JSON:
        c->json = true;
        return 0;
    case OPT_URL:
        c->url = optarg;
        return 0;
    case 'h':
        client_usage(stdout);
        return -1;
    default:
        fprintf(stderr, "Try 'trellis logs --help'.\n");
        return TR_EXIT_USAGE;
    }
}

/* "http://127.0.0.1:8500[/]" → an endpoint; only plain http for now. */
static bool parse_url(const char *url, tr_http_endpoint_t *ep)
{
    if (strncmp(url, "http://", 7) != 0) return false;
    char hostport[128];
    size_t len = strcspn(url + 7, "/");
    if (len == 0 || len >= sizeof(hostport) || (url[7 + len] && strcmp(url + 7 + len, "/")))
        return false;
    memcpy(hostport, url + 7, len);
    hostport[len] = '\0';
    struct sockaddr_storage addr;
    if (!strchr(hostport, ':') || hostport[len - 1] == ']') return false;
    if (tr_net_parse_addr(hostport, &addr)) return false;
    return tr_http_endpoint_from_addr(ep, (struct sockaddr *)&addr) == 0;
}

static int cmd_client(int argc, char **argv)
{
    client_t c = {.url = LOGS_DEFAULT_URL, .limit = TR_LOGS_DEFAULT_LIMIT};
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "fs:c:t:q:n:h", client_opts, NULL)) != -1) {
        int r = client_option(&c, opt);
        if (r) {
            tr_buf_free(&c.filters);
            return r < 0 ? TR_EXIT_OK : r;
        }
    }
    if (optind < argc) {
        tr_buf_free(&c.filters);
        return tr_cli_usage_error("logs", "unexpected argument '%s'", argv[optind]);
    }
    if (!parse_url(c.url, &c.ep)) {
        tr_buf_free(&c.filters);
        return tr_cli_usage_error("logs", "--url: '%s' is not http://HOST:PORT", c.url);
    }
    const char *nc = getenv("NO_COLOR");
    c.colour = !c.json && isatty(1) && !(nc && *nc);
    uv_loop_init(&c.loop);
    tr_http_client_options_t ho;
    tr_http_client_options_init(&ho);
    ho.max_body_bytes = 256u * 1024 * 1024;
    ho.response_timeout_ms = 60 * 1000; /* longer than the follow wait */
    c.http = tr_http_client_new(&c.loop, &ho);
    uv_signal_init(&c.loop, &c.sigint);
    c.sigint.data = &c;
    uv_signal_start(&c.sigint, on_sigint, SIGINT);
    c.traces = json_array();
    request_next(&c);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&c.loop);
    if (!c.json && c.exit_code == 0) print_traces(&c);
    json_decref(c.traces);
    tr_buf_free(&c.filters);
    return rc == 0 ? c.exit_code : TR_EXIT_FAIL;
}

int tr_cmd_logs(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "serve")) return cmd_serve(argc - 1, argv + 1);
    return cmd_client(argc, argv);
}
