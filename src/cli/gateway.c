/* `trellis gateway`: the API gateway / sidecar proxy alone. */
#include "cli/cli.h"
#include "gateway/gateway.h"
#include "trellis/error.h"
#include "trellis/log.h"
#include "trellis/metrics.h"
#include "trellis/runtime.h"
#include "trellis/trace.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int on_worker_start(tr_worker_t *w, void *data)
{
    return tr_gateway_worker_start(data, w);
}

static void on_worker_stop(tr_worker_t *w, bool force, void *data)
{
    tr_gateway_worker_stop(data, w, force);
}

static void on_reload(void *data)
{
    char err[1024];
    tr_gateway_reload(data, err, sizeof(err)); /* logs either way */
}

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: trellis gateway -c FILE [options]\n\n"
            "The API gateway and sidecar proxy: routes, canaries, JWT, rate limits, retries,\n"
            "timeouts, circuit breakers, outlier ejection, bulkheads and aggregation.\n"
            "The config (YAML or JSON) is documented in docs/gateway.md. SIGHUP, a change of\n"
            "the file or POST /admin/reload reload it without dropping a request.\n\n"
            "Options:\n"
            "  -c, --config FILE        gateway config (required)\n"
            "  -l, --listen ADDR        proxy address (default: the file's `listen`, "
            "127.0.0.1:8080)\n"
            "      --admin ADDR         admin address, or \"off\" (default: `admin.listen`, "
            "127.0.0.1:9901)\n"
            "  -w, --workers N          worker threads (default: `workers`, else CPUs)\n"
            "      --check              validate the config, print the effective config and exit\n"
            "      --grace DUR          drain time after SIGTERM/SIGINT (default 10s)\n"
            "      --log-level LEVEL    debug, info, warn or error (default info)\n"
            "      --log-format FORMAT  auto, json or text (default auto)\n"
            "  -h, --help               show this help\n\n"
            "Example:\n"
            "  trellis gateway -c examples/gateway.yaml && curl localhost:8080/api/v1/echo\n");
}

enum { OPT_ADMIN = 256, OPT_CHECK };

static const struct option long_opts[] = {
    {"config", required_argument, NULL, 'c'},
    {"listen", required_argument, NULL, 'l'},
    {"admin", required_argument, NULL, OPT_ADMIN},
    {"workers", required_argument, NULL, 'w'},
    {"check", no_argument, NULL, OPT_CHECK},
    TR_CLI_RUN_OPTIONS,
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

typedef struct args_s {
    tr_gateway_options_t gw;
    const char *log_level, *log_format;
    uint64_t grace_ms;
    bool check;
} args_t;

static int parse_args(int argc, char **argv, args_t *a)
{
    int c;
    long workers;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:l:w:h", long_opts, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case 'c':
            a->gw.config_path = optarg;
            break;
        case 'l':
            a->gw.listen = optarg;
            break;
        case OPT_ADMIN:
            a->gw.admin_listen = optarg;
            break;
        case 'w':
            ok = tr_cli_int("gateway", "workers", optarg, 1, 256, &workers);
            a->gw.workers = (int)workers;
            break;
        case OPT_CHECK:
            a->check = true;
            break;
        case 'h':
            usage(stdout);
            return -1;
        default:
            if (tr_cli_run_option("gateway", c, optarg, &a->grace_ms, &a->log_level, &a->log_format,
                                  &ok))
                break;
            fprintf(stderr, "Try 'trellis gateway --help'.\n");
            return TR_EXIT_USAGE;
        }
        if (!ok) return TR_EXIT_USAGE;
    }
    if (optind < argc)
        return tr_cli_usage_error("gateway", "unexpected argument '%s'", argv[optind]);
    if (!a->gw.config_path)
        return tr_cli_usage_error("gateway", "give the config file with -c FILE");
    return 0;
}

int tr_cmd_gateway(int argc, char **argv)
{
    args_t a;
    memset(&a, 0, sizeof(a));
    int r = parse_args(argc, argv, &a);
    if (r) return r < 0 ? TR_EXIT_OK : r;
    if (!tr_cli_log_init("gateway", a.log_level, a.log_format, "gateway")) return TR_EXIT_USAGE;
    if (a.check) a.gw.listen = "127.0.0.1:0", a.gw.admin_listen = "off";
    char err[1024];
    tr_gateway_t *gw;
    int e = tr_gateway_open(&a.gw, &gw, err, sizeof(err));
    if (e) {
        fprintf(stderr, "trellis gateway: %s\n", err);
        return e == TR_ECONFIG || e == TR_EPARSE ? TR_EXIT_USAGE : TR_EXIT_FAIL;
    }
    if (a.check) {
        printf("%s: ok\n", a.gw.config_path);
        tr_gateway_close(gw);
        return TR_EXIT_OK;
    }
    tr_metrics_register_process(tr_metrics_default());
    tr_exporter_t *exporter = NULL;
    tr_span_sink_t sink;
    const tr_exporter_options_t *tracing = tr_gateway_tracing(gw);
    if (tracing) {
        if (!(exporter = tr_exporter_start(tracing))) {
            fprintf(stderr, "trellis gateway: tracing.endpoint: cannot export to %s\n",
                    tracing->endpoint);
            tr_gateway_close(gw);
            return TR_EXIT_USAGE;
        }
        sink = tr_exporter_sink(exporter);
        tr_gateway_set_spans(gw, &sink);
    }
    tr_log_info("listening", TR_LOG_STR("addr", tr_gateway_listen_addr(gw)),
                TR_LOG_STR("admin", tr_gateway_admin_addr(gw)),
                TR_LOG_INT("workers", tr_gateway_workers(gw)), TR_LOG_INT("pid", getpid()));
    tr_runtime_options_t ro = {.workers = tr_gateway_workers(gw),
                               .grace_ms = a.grace_ms,
                               .on_start = on_worker_start,
                               .on_stop = on_worker_stop,
                               .on_reload = on_reload,
                               .data = gw};
    e = tr_runtime_run(&ro);
    if (exporter) tr_exporter_stop(exporter, 2000); /* what is queued gets 2 s to leave */
    tr_gateway_close(gw);
    tr_log_info("stopped");
    return e ? TR_EXIT_FAIL : TR_EXIT_OK;
}
