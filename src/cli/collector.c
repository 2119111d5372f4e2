/* `trellis collector`: the trace collector alone (OTLP/HTTP, Zipkin v2, query API). */
#include "cli/cli.h"

#include "trace/collector.h"
#include "trellis/error.h"
#include "trellis/http.h"
#include "trellis/log.h"
#include "trellis/metrics.h"
#include "trellis/net.h"
#include "trellis/runtime.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define COLLECTOR_DEFAULT_LISTEN "127.0.0.1:16686"
#define COLLECTOR_DEFAULT_OTLP   "127.0.0.1:4318"
#define COLLECTOR_DEFAULT_ZIPKIN "127.0.0.1:9411"

enum { L_QUERY, L_OTLP, L_ZIPKIN, NLISTENERS };
static const char *const listener_names[NLISTENERS] = {"query", "otlp", "zipkin"};

typedef struct collector_cmd_s {
    tr_collector_options_t opts;
    tr_http_server_options_t http;
    const char *addr[NLISTENERS];
    char where[NLISTENERS][64];
    int fd[NLISTENERS];
    tr_http_server_t *server[NLISTENERS];
    int open_servers;
    tr_collector_t *collector;
} collector_cmd_t;

static void close_fds(collector_cmd_t *cc, int from)
{
    for (int i = from; i < NLISTENERS; i++)
        close(cc->fd[i]);
}

static int on_worker_start(tr_worker_t *w, void *data)
{
    collector_cmd_t *cc = data;
    char err[512];
    int e = tr_collector_open(tr_worker_loop(w), &cc->opts, &cc->collector, err, sizeof(err));
    if (e) {
        tr_log_error("cannot open the trace store", TR_LOG_STR("detail", err), TR_LOG_ERR(e));
        close_fds(cc, 0);
        return e;
    }
    cc->http.handler = tr_collector_handle;
    cc->http.handler_data = cc->collector;
    cc->http.max_body_bytes = TR_COLLECTOR_MAX_BODY;
    for (int i = 0; i < NLISTENERS; i++) {
        e = tr_http_server_start(tr_worker_loop(w), cc->fd[i], &cc->http, &cc->server[i]);
        if (e) {
            tr_log_error("cannot serve", TR_LOG_STR("listener", listener_names[i]), TR_LOG_ERR(e));
            close_fds(cc, i);
            return e;
        }
        cc->open_servers++;
    }
    tr_log_info("collector ready", TR_LOG_STR("otlp", cc->where[L_OTLP]),
                TR_LOG_STR("zipkin", cc->where[L_ZIPKIN]),
                TR_LOG_STR("data_dir", cc->opts.data_dir ? cc->opts.data_dir : ".trellis"));
    /* Logged last, so "listening" means every port is up; addr is the query API's. */
    tr_log_info("listening", TR_LOG_STR("addr", cc->where[L_QUERY]),
                TR_LOG_STR("otlp", cc->where[L_OTLP]), TR_LOG_STR("zipkin", cc->where[L_ZIPKIN]),
                TR_LOG_INT("pid", getpid()));
    return 0;
}

static void on_server_closed(void *data)
{
    collector_cmd_t *cc = data;
    if (--cc->open_servers > 0) return;
    tr_collector_close(cc->collector);
    cc->collector = NULL;
}

static void on_worker_stop(tr_worker_t *w, bool force, void *data)
{
    collector_cmd_t *cc = data;
    if (!cc->open_servers) {
        tr_collector_close(cc->collector);
        cc->collector = NULL;
        return;
    }
    for (int i = 0; i < NLISTENERS; i++)
        if (cc->server[i]) tr_http_server_close(cc->server[i], force, on_server_closed, cc);
}

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: trellis collector [options]\n\n"
            "The trace collector: takes spans over OTLP/HTTP JSON (POST /v1/traces) and Zipkin "
            "v2 JSON\n(POST /api/v2/spans), keeps them in memory and SQLite, and serves the "
            "query API:\n/api/traces, /api/traces/{id}, /api/services, /api/dependencies, "
            "/api/v2/dependencies.\nEvery port serves every endpoint; see docs/collector.md.\n\n"
            "Options:\n"
            "  -l, --listen ADDR        query API address (default " COLLECTOR_DEFAULT_LISTEN ")\n"
            "      --otlp ADDR          OTLP/HTTP address (default " COLLECTOR_DEFAULT_OTLP ")\n"
            "      --zipkin ADDR        Zipkin address (default " COLLECTOR_DEFAULT_ZIPKIN ")\n"
            "  -d, --data-dir DIR       where traces.db is kept (default ./.trellis)\n"
            "      --retention DUR      drop spans that arrived longer ago (default 24h; 0 "
            "keeps)\n"
            "      --max-spans N        spans held in memory, oldest traces evicted (default "
            "1000000)\n"
            "      --max-db SIZE        bound on the database's size (default: none)\n"
            "      --grace DUR          drain time after SIGTERM/SIGINT (default 10s)\n"
            "      --log-level LEVEL    debug, info, warn or error (default info)\n"
            "      --log-format FORMAT  auto, json or text (default auto)\n"
            "  -h, --help               show this help\n\n"
            "Example:\n"
            "  trellis collector --data-dir /var/lib/trellis --retention 72h --max-db 2GiB &\n"
            "  trellis trace 5b8efff798038103d269b633813fc60c\n");
}

enum { OPT_OTLP = 256, OPT_ZIPKIN, OPT_RETENTION, OPT_MAX_SPANS, OPT_MAX_DB };

static const struct option long_opts[] = {
    {"listen", required_argument, NULL, 'l'},
    {"otlp", required_argument, NULL, OPT_OTLP},
    {"zipkin", required_argument, NULL, OPT_ZIPKIN},
    {"data-dir", required_argument, NULL, 'd'},
    {"retention", required_argument, NULL, OPT_RETENTION},
    {"max-spans", required_argument, NULL, OPT_MAX_SPANS},
    {"max-db", required_argument, NULL, OPT_MAX_DB},
    TR_CLI_RUN_OPTIONS,
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

typedef struct args_s {
    const char *log_level, *log_format;
    uint64_t grace_ms;
} args_t;

static int parse_args(int argc, char **argv, collector_cmd_t *cc, args_t *a)
{
    int c;
    long n;
    optind = 1;
    while ((c = getopt_long(argc, argv, "l:d:h", long_opts, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case 'l':
            cc->addr[L_QUERY] = optarg;
            break;
        case OPT_OTLP:
            cc->addr[L_OTLP] = optarg;
            break;
        case OPT_ZIPKIN:
            cc->addr[L_ZIPKIN] = optarg;
            break;
        case 'd':
            cc->opts.data_dir = optarg;
            break;
        case OPT_RETENTION:
            ok = tr_cli_duration("collector", "retention", optarg, &cc->opts.retention_ms);
            break;
        case OPT_MAX_SPANS:
            ok = tr_cli_int("collector", "max-spans", optarg, 1, 1000000000L, &n);
            cc->opts.max_spans = (size_t)n;
            break;
        case OPT_MAX_DB:
            ok = tr_cli_size("collector", "max-db", optarg, &cc->opts.max_db_bytes);
            break;
        case 'h':
            usage(stdout);
            return -1;
        default:
            if (tr_cli_run_option("collector", c, optarg, &a->grace_ms, &a->log_level,
                                  &a->log_format, &ok))
                break;
            fprintf(stderr, "Try 'trellis collector --help'.\n");
            return TR_EXIT_USAGE;
        }
        if (!ok) return TR_EXIT_USAGE;
    }
    if (optind < argc)
        return tr_cli_usage_error("collector", "unexpected argument '%s'", argv[optind]);
    return 0;
}

static int listen_all(collector_cmd_t *cc)
{
    for (int i = 0; i < NLISTENERS; i++) {
        struct sockaddr_storage addr, bound;
        if (tr_net_parse_addr(cc->addr[i], &addr)) {
            for (int k = 0; k < i; k++)
                close(cc->fd[k]);
            return tr_cli_usage_error("collector", "--%s: '%s' is not HOST:PORT",
                                      i == L_QUERY ? "listen" : listener_names[i], cc->addr[i]);
        }
        int err = tr_net_listen(&addr, 1, 1024, &cc->fd[i], &bound);
        if (err) {
            fprintf(stderr, "trellis collector: cannot listen on %s (%s): %s\n", cc->addr[i],
                    listener_names[i], tr_strerror(err));
            for (int k = 0; k < i; k++)
                close(cc->fd[k]);
            return TR_EXIT_FAIL;
        }
        tr_net_format_addr((struct sockaddr *)&bound, cc->where[i], sizeof(cc->where[i]));
    }
    return 0;
}

int tr_cmd_collector(int argc, char **argv)
{
    collector_cmd_t cc;
    memset(&cc, 0, sizeof(cc));
    cc.addr[L_QUERY] = COLLECTOR_DEFAULT_LISTEN;
    cc.addr[L_OTLP] = COLLECTOR_DEFAULT_OTLP;
    cc.addr[L_ZIPKIN] = COLLECTOR_DEFAULT_ZIPKIN;
    cc.opts.retention_ms = 24ull * 3600 * 1000;
    cc.opts.data_dir = ".trellis";
    args_t a = {NULL, NULL, 0};
    int r = parse_args(argc, argv, &cc, &a);
    if (r) return r < 0 ? TR_EXIT_OK : r;
    if (!tr_cli_log_init("collector", a.log_level, a.log_format, "collector")) return TR_EXIT_USAGE;
    for (int i = 0; i < NLISTENERS; i++)
        cc.fd[i] = -1;
    r = listen_all(&cc);
    if (r) return r;
    tr_metrics_register_process(tr_metrics_default());
    /* The store belongs to one loop: one worker serves every port. */
    tr_runtime_options_t ro = {.workers = 1,
                               .grace_ms = a.grace_ms,
                               .on_start = on_worker_start,
                               .on_stop = on_worker_stop,
                               .data = &cc};
    int err = tr_runtime_run(&ro);
    tr_log_info("stopped");
    return err ? TR_EXIT_FAIL : TR_EXIT_OK;
}
