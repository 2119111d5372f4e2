/* `trellis registry`: the service registry alone, speaking Consul's HTTP API. */
#include "cli/cli.h"

#include "registry/registry.h"
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

#define REGISTRY_DEFAULT_LISTEN "127.0.0.1:8500"

typedef struct registry_cmd_s {
    tr_registry_options_t reg;
    tr_http_server_options_t http;
    int fd;
    tr_registry_t *registry;
    tr_http_server_t *server;
    char where[64];
} registry_cmd_t;

static int on_worker_start(tr_worker_t *w, void *data)
{
    registry_cmd_t *rc = data;
    char err[512];
    int e = tr_registry_open(tr_worker_loop(w), &rc->reg, &rc->registry, err, sizeof(err));
    if (e) {
        tr_log_error("cannot open the registry", TR_LOG_STR("detail", err), TR_LOG_ERR(e));
        close(rc->fd);
        return e;
    }
    rc->http.handler = tr_registry_handle;
    rc->http.handler_data = rc->registry;
    e = tr_http_server_start(tr_worker_loop(w), rc->fd, &rc->http, &rc->server);
    if (e) {
        tr_log_error("cannot serve", TR_LOG_ERR(e));
        tr_registry_close(rc->registry);
        rc->registry = NULL;
        return e;
    }
    /* Logged once the state is open, so "listening" means ready. */
    tr_log_info("listening", TR_LOG_STR("addr", rc->where),
                TR_LOG_STR("data_dir", rc->reg.data_dir ? rc->reg.data_dir : ".trellis"),
                TR_LOG_INT("pid", getpid()));
    return 0;
}

static void on_server_closed(void *data)
{
    registry_cmd_t *rc = data;
    tr_registry_close(rc->registry);
    rc->registry = NULL;
}

static void on_worker_stop(tr_worker_t *w, bool force, void *data)
{
    registry_cmd_t *rc = data;
    if (!rc->server) return;
    /* Answer blocked watchers first so the server has nothing left to wait for. */
    tr_registry_shutdown(rc->registry);
    tr_http_server_close(rc->server, force, on_server_closed, rc);
}

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: trellis registry [options]\n\n"
            "The service registry, speaking Consul's HTTP API so Consul clients work "
            "unchanged.\n"
            "Serves: /v1/agent, /v1/catalog, /v1/health, /v1/kv (blocking queries), /v1/status.\n\n"
            "Options:\n"
            "  -l, --listen ADDR        address of the HTTP API (default " REGISTRY_DEFAULT_LISTEN
            ")\n"
            "  -d, --data-dir DIR       where state is kept (default ./.trellis)\n"
            "      --node NAME          this agent's node name (default: the host name)\n"
            "      --datacenter NAME    datacenter name (default dc1)\n"
            "      --max-body SIZE      largest request body (default 1MiB)\n"
            "      --grace DUR          drain time after SIGTERM/SIGINT (default 10s)\n"
            "      --log-level LEVEL    debug, info, warn or error (default info)\n"
            "      --log-format FORMAT  auto, json or text (default auto)\n"
            "  -h, --help               show this help\n\n"
            "Example:\n"
            "  trellis registry --data-dir /var/lib/trellis &\n"
            "  curl -X PUT localhost:8500/v1/kv/config/db -d postgres://db:5432\n");
}

enum { OPT_NODE = 256, OPT_DC, OPT_MAX_BODY };

static const struct option long_opts[] = {
    {"listen", required_argument, NULL, 'l'},
    {"data-dir", required_argument, NULL, 'd'},
    {"node", required_argument, NULL, OPT_NODE},
    {"datacenter", required_argument, NULL, OPT_DC},
    {"max-body", required_argument, NULL, OPT_MAX_BODY},
    TR_CLI_RUN_OPTIONS,
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

typedef struct args_s {
    const char *listen, *log_level, *log_format;
    uint64_t grace_ms;
} args_t;

static int parse_args(int argc, char **argv, registry_cmd_t *rc, args_t *a)
{
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "l:d:h", long_opts, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case 'l':
            a->listen = optarg;
            break;
        case 'd':
            rc->reg.data_dir = optarg;
            break;
        case OPT_NODE:
            rc->reg.node = optarg;
            break;
        case OPT_DC:
            rc->reg.datacenter = optarg;
            break;
        case OPT_MAX_BODY:
            ok = tr_cli_size("registry", "max-body", optarg, &rc->http.max_body_bytes);
            break;
        case 'h':
            usage(stdout);
            return -1;
        default:
            if (tr_cli_run_option("registry", c, optarg, &a->grace_ms, &a->log_level,
                                  &a->log_format, &ok))
                break;
            fprintf(stderr, "Try 'trellis registry --help'.\n");
            return TR_EXIT_USAGE;
        }
        if (!ok) return TR_EXIT_USAGE;
    }
    if (optind < argc)
        return tr_cli_usage_error("registry", "unexpected argument '%s'", argv[optind]);
    return 0;
}

int tr_cmd_registry(int argc, char **argv)
{
    registry_cmd_t rc;
    memset(&rc, 0, sizeof(rc));
    args_t a = {REGISTRY_DEFAULT_LISTEN, NULL, NULL, 0};
    int r = parse_args(argc, argv, &rc, &a);
    if (r) return r < 0 ? TR_EXIT_OK : r;
    if (!tr_cli_log_init("registry", a.log_level, a.log_format, "registry")) return TR_EXIT_USAGE;
    struct sockaddr_storage addr, bound;
    if (tr_net_parse_addr(a.listen, &addr))
        return tr_cli_usage_error(
            "registry", "--listen: '%s' is not HOST:PORT (e.g. 127.0.0.1:8500)", a.listen);
    int err = tr_net_listen(&addr, 1, 1024, &rc.fd, &bound);
    if (err) {
        fprintf(stderr, "trellis registry: cannot listen on %s: %s\n", a.listen, tr_strerror(err));
        return TR_EXIT_FAIL;
    }
    tr_metrics_register_process(tr_metrics_default());
    tr_net_format_addr((struct sockaddr *)&bound, rc.where, sizeof(rc.where));
    /* The registry's state belongs to one loop: one worker serves the API. */
    tr_runtime_options_t ro = {.workers = 1,
                               .grace_ms = a.grace_ms,
                               .on_start = on_worker_start,
                               .on_stop = on_worker_stop,
                               .data = &rc};
    err = tr_runtime_run(&ro);
    tr_log_info("stopped");
    return err ? TR_EXIT_FAIL : TR_EXIT_OK;
}
