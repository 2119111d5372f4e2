/* `trellis eventstore`: the event store alone, serving /api/streams and /api/subscriptions. */
#include "cli/cli.h"

#include "core/fs.h"
#include "eventstore/eventstore.h"
#include "trellis/error.h"
#include "trellis/http.h"
#include "trellis/log.h"
#include "trellis/metrics.h"
#include "trellis/net.h"
#include "trellis/runtime.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ES_DEFAULT_LISTEN "127.0.0.1:2113"
#define ES_DEFAULT_DIR    ".trellis"

typedef struct es_cmd_s {
    const char *listen, *data_dir;
    tr_eventstore_options_t opts;
    tr_http_server_options_t http;
    int fd;
    char where[64];
    tr_eventstore_t *store;
    tr_http_server_t *server;
} es_cmd_t;

static void on_request(tr_http_req_t *req, void *data)
{
    es_cmd_t *ec = data;
    if (tr_eventstore_handle(ec->store, req)) return;
    tr_http_res_problem(req, 404, "not-found", "Not found",
                        "the event store serves /api/streams/{stream} and /api/subscriptions; see "
                        "docs/eventstore.md");
}

static bool on_ordered(const tr_http_req_t *req, void *data)
{
    (void)data;
    return tr_eventstore_ordered(req);
}

static int on_worker_start(tr_worker_t *w, void *data)
{
    es_cmd_t *ec = data;
    char err[512];
    ec->opts.loop = tr_worker_loop(w);
    int e = tr_eventstore_open(ec->data_dir, &ec->opts, &ec->store, err, sizeof(err));
    if (e) {
        tr_log_error("cannot open the event store", TR_LOG_STR("detail", err), TR_LOG_ERR(e));
        close(ec->fd);
        return e;
    }
    ec->http.handler = on_request;
    ec->http.handler_data = ec;
    ec->http.ordered = on_ordered; /* pipelined appends share group commits */
    ec->http.max_body_bytes = TR_ES_MAX_BODY;
    e = tr_http_server_start(tr_worker_loop(w), ec->fd, &ec->http, &ec->server);
    if (e) {
        tr_log_error("cannot serve", TR_LOG_ERR(e));
        tr_eventstore_close(ec->store);
        ec->store = NULL;
        return e;
    }
    /* Logged once the store is open, so "listening" means ready. */
    tr_log_info("listening", TR_LOG_STR("addr", ec->where), TR_LOG_STR("data_dir", ec->data_dir),
                TR_LOG_STR("sync", ec->opts.sync_full ? "full" : "normal"),
                TR_LOG_INT("pid", getpid()));
    return 0;
}

static void on_server_closed(void *data)
{
    es_cmd_t *ec = data;
    tr_eventstore_close(ec->store);
    ec->store = NULL;
}

static void on_worker_stop(tr_worker_t *w, bool force, void *data)
{
    (void)w;
    es_cmd_t *ec = data;
    if (!ec->server) {
        on_server_closed(ec);
        return;
    }
    tr_http_server_close(ec->server, force, on_server_closed, ec);
}

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: trellis eventstore [options]\n\n"
            "The event store: append-only streams of events with optimistic concurrency,\n"
            "reads, $all, long-poll and SSE subscriptions, over HTTP+JSON under /api/streams;\n"
            "push subscriptions (the outbox) under /api/subscriptions.\n"
            "Events live in DIR/events.db (SQLite, WAL); see docs/eventstore.md.\n\n"
            "Options:\n"
            "  -l, --listen ADDR        HTTP address (default " ES_DEFAULT_LISTEN ")\n"
            "  -d, --data-dir DIR       where events.db is kept, created if missing "
            "(default ./" ES_DEFAULT_DIR ")\n"
            "      --sync MODE          normal (survives a process crash) or full (fsync every\n"
            "                           commit, survives power loss) (default normal)\n"
            "      --registry ADDR      a Consul-compatible registry (ip:port) where push\n"
            "                           subscriptions to service:NAME/PATH find the service\n"
            "                           (default: none; such URLs then fail and retry)\n"
            "      --grace DUR          drain time after SIGTERM/SIGINT (default 10s)\n"
            "      --log-level LEVEL    debug, info, warn or error (default info)\n"
            "      --log-format FORMAT  auto, json or text (default auto)\n"
            "  -h, --help               show this help\n\n"
            "Example:\n"
            "  trellis eventstore --listen 127.0.0.1:2113 --data-dir /var/lib/trellis &\n"
            "  curl -X POST 'http://127.0.0.1:2113/api/streams/order-1?expected=no_stream' \\\n"
            "       -d '{\"type\":\"OrderPlaced\",\"data\":{\"total\":42}}'\n");
}

enum { OPT_SYNC = 256, OPT_REGISTRY };

static const struct option long_opts[] = {
    {"listen", required_argument, NULL, 'l'},
    {"data-dir", required_argument, NULL, 'd'},
    {"sync", required_argument, NULL, OPT_SYNC},
    {"registry", required_argument, NULL, OPT_REGISTRY},
    TR_CLI_RUN_OPTIONS,
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

typedef struct args_s {
    const char *log_level, *log_format;
    uint64_t grace_ms;
} args_t;

static bool parse_sync(const char *v, bool *full)
{
    if (strcmp(v, "normal") == 0) return *full = false, true;
    if (strcmp(v, "full") == 0) return *full = true, true;
    fprintf(stderr, "trellis eventstore: --sync: '%s' is not normal or full\n", v);
    return false;
}

static int parse_args(int argc, char **argv, es_cmd_t *ec, args_t *a)
{
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "l:d:h", long_opts, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case 'l':
            ec->listen = optarg;
            break;
        case 'd':
            ec->data_dir = optarg;
            break;
        case OPT_SYNC:
            ok = parse_sync(optarg, &ec->opts.sync_full);
            break;
        case OPT_REGISTRY:
            ec->opts.registry = optarg;
            break;
        case 'h':
            usage(stdout);
            return -1;
        default:
            if (tr_cli_run_option("eventstore", c, optarg, &a->grace_ms, &a->log_level,
                                  &a->log_format, &ok))
                break;
            fprintf(stderr, "Try 'trellis eventstore --help'.\n");
            return TR_EXIT_USAGE;
        }
        if (!ok) return TR_EXIT_USAGE;
    }
    if (optind < argc)
        return tr_cli_usage_error("eventstore", "unexpected argument '%s'", argv[optind]);
    return 0;
}

static int listen_on(es_cmd_t *ec)
{
    struct sockaddr_storage addr, bound;
    if (tr_net_parse_addr(ec->listen, &addr))
        return tr_cli_usage_error("eventstore", "--listen: '%s' is not HOST:PORT", ec->listen);
    int err = tr_net_listen(&addr, 1, 1024, &ec->fd, &bound);
    if (err) {
        fprintf(stderr, "trellis eventstore: cannot listen on %s: %s\n", ec->listen,
                tr_strerror(err));
        return TR_EXIT_FAIL;
    }
    tr_net_format_addr((struct sockaddr *)&bound, ec->where, sizeof(ec->where));
    return 0;
}

int tr_cmd_eventstore(int argc, char **argv)
{
    es_cmd_t ec;
    memset(&ec, 0, sizeof(ec));
    ec.listen = ES_DEFAULT_LISTEN;
    ec.data_dir = ES_DEFAULT_DIR;
    ec.fd = -1;
    args_t a = {NULL, NULL, 0};
    int r = parse_args(argc, argv, &ec, &a);
    if (r) return r < 0 ? TR_EXIT_OK : r;
    if (!tr_cli_log_init("eventstore", a.log_level, a.log_format, "eventstore"))
        return TR_EXIT_USAGE;
    if (tr_mkdirs(ec.data_dir)) {
        fprintf(stderr, "trellis eventstore: cannot create the data directory '%s': %s\n",
                ec.data_dir, strerror(errno));
        return TR_EXIT_FAIL;
    }
    r = listen_on(&ec);
    if (r) return r;
    tr_metrics_register_process(tr_metrics_default());
    /* The store's results come back on one loop: one worker serves every connection. */
    tr_runtime_options_t ro = {.workers = 1,
                               .grace_ms = a.grace_ms,
                               .on_start = on_worker_start,
                               .on_stop = on_worker_stop,
                               .data = &ec};
    int err = tr_runtime_run(&ro);
    tr_log_info("stopped");
    return err ? TR_EXIT_FAIL : TR_EXIT_OK;
}
