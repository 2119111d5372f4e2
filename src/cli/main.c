/* The trellis command: dispatches to a sub-command. */
#include "cli/cli.h"
#include "supervisor/process.h"

#include <string.h>
#include <malloc.h>

typedef struct command_s {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command_t;

static const command_t commands[] = {
    {"collector", tr_cmd_collector, "run the trace collector (OTLP/HTTP, Zipkin, query API)"},
    {"echo", tr_cmd_echo, "run an httpbin-like HTTP service (tests, benchmarks, demos)"},
    {"eventstore", tr_cmd_eventstore, "run the event store (streams, subscriptions) over HTTP"},
    {"gateway", tr_cmd_gateway, "run the API gateway / sidecar proxy (-c gateway.yaml)"},
    {"logs", tr_cmd_logs, "print and follow central logs; 'logs serve' hosts the log store"},
    {"ps", tr_cmd_ps, "list the services of the running `trellis up` and their instances"},
    {"registry", tr_cmd_registry, "run the service registry (Consul HTTP API)"},
    {"rollout", tr_cmd_rollout, "move a service to a new version: canary, blue-green, rolling"},
    {"restart", tr_cmd_service_control, "restart a service of the running `trellis up`"},
    {"saga", tr_cmd_saga, "list, show, start, retry or abort sagas (trellis up)"},
    {"scale", tr_cmd_service_control, "change a service's replica count (trellis up)"},
    {"start", tr_cmd_service_control, "start a stopped service (trellis up)"},
    {"stop", tr_cmd_service_control, "stop a service without restarting it (trellis up)"},
    {"trace", tr_cmd_trace, "print a trace from the collector as a waterfall"},
    {"up", tr_cmd_up, "run a whole topology: control plane, gateway and services"},
    {"version", tr_cmd_version, "print the version"},
};

static void usage(FILE *out)
{
    fprintf(out, "Usage: trellis <command> [options]\n\n"
                 "trellis is a microservices platform in one binary.\n\nCommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nRun 'trellis <command> --help' for a command's options.\n"
                 "Example: trellis echo --listen 127.0.0.1:8090\n");
}

int tr_cmd_version(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("Usage: trellis version\n\nPrints the trellis version.\n\nExample: trellis "
               "version\n");
        return TR_EXIT_OK;
    }
    printf("trellis %s\n", TR_VERSION);
    return TR_EXIT_OK;
}

int main(int argc, char **argv)
{
    /* The supervisor's exec shim: set the parent-death signal, then exec (before any init). */
    if (argc > 1 && strcmp(argv[1], "__exec") == 0) return tr_supervisor_exec_shim(argc, argv);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        usage(stdout);
        return argc < 2 ? TR_EXIT_USAGE : TR_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version")) return tr_cmd_version(1, argv + 1);
    /* Keep up to 16 MiB free at the top of each malloc arena and grow by 1 MiB: with the
     * defaults, a loop that parses and frees a JSON body per request moved its arena's top
     * up and down (sysmalloc, page faults, trims) on every burst (measured: 5% of the event
     * store's loop; pipelined appends +5-10%). */
    mallopt(M_TRIM_THRESHOLD, 16 << 20);
    mallopt(M_TOP_PAD, 1 << 20);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "trellis: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return TR_EXIT_USAGE;
}
