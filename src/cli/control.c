/* `trellis ps|restart|stop|start|scale`: the control plane's /api/services from the shell. */
#include "cli/cli.h"

#include "trellis/error.h"

#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CONTROL_DEFAULT_URL "http://127.0.0.1:8500"

typedef struct control_args_s {
    const char *url;
    bool json;
    int first; /* index of the first positional argument */
} control_args_t;

static void usage(FILE *out, const char *cmd)
{
    if (!strcmp(cmd, "ps"))
        fprintf(out, "Usage: trellis ps [--url URL] [--json]\n\n"
                     "Lists the services of the running `trellis up` and their instances:\n"
                     "pid, state, readiness, restarts and uptime.\n");
    else if (!strcmp(cmd, "scale"))
        fprintf(out, "Usage: trellis scale <service> <replicas> [--url URL]\n\n"
                     "Starts or stops replicas of a service of the running `trellis up`.\n");
    else
        fprintf(out,
                "Usage: trellis %s <service> [--url URL]\n\n"
                "%s every instance of a service of the running `trellis up`.\n",
                cmd,
                !strcmp(cmd, "restart") ? "Restarts"
                : !strcmp(cmd, "stop")  ? "Stops (without restarting)"
                                        : "Starts the stopped instances of");
    fprintf(out, "\nOptions:\n"
                 "      --url URL   the control plane (default " CONTROL_DEFAULT_URL ")\n"
                 "      --json      print the API's JSON (ps)\n"
                 "  -h, --help      show this help\n\n"
                 "Example:\n  trellis ps && trellis scale orders 3\n");
}

static int parse(int argc, char **argv, control_args_t *a)
{
    static const struct option opts[] = {{"url", required_argument, NULL, 'u'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    a->url = getenv("TRELLIS_URL") ? getenv("TRELLIS_URL") : CONTROL_DEFAULT_URL;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'u':
            a->url = optarg;
            break;
        case 'j':
            a->json = true;
            break;
        case 'h':
            usage(stdout, argv[0]);
            return -1;
        default:
            fprintf(stderr, "Try 'trellis %s --help'.\n", argv[0]);
            return TR_EXIT_USAGE;
        }
    }
    a->first = optind;
    return 0;
}

static int call(const control_args_t *a, const char *cmd, const char *method, const char *target,
                tr_cli_fetch_t *f)
{
    char hostport[256];
    if (!tr_cli_hostport(a->url, hostport, sizeof(hostport)))
        return tr_cli_usage_error(cmd, "--url: '%s' is not http://HOST:PORT", a->url);
    int e = tr_cli_fetch(hostport, method, target, NULL, f);
    if (e) {
        fprintf(stderr,
                "trellis %s: cannot reach the control plane at %s: %s (is `trellis up` running?)\n",
                cmd, a->url, tr_strerror(e));
        return TR_EXIT_FAIL;
    }
    if (f->status >= 300) {
        fprintf(stderr, "trellis %s: %d: %s\n", cmd, f->status, f->body ? f->body : "");
        free(f->body);
        return TR_EXIT_FAIL;
    }
    return 0;
}

static void print_ps(json_t *services)
{
    int64_t now = (int64_t)time(NULL) * 1000;
    printf("%-16s %-18s %7s %-9s %-5s %8s %8s\n", "SERVICE", "INSTANCE", "PID", "STATE", "READY",
           "RESTARTS", "UPTIME");
    size_t i, k;
    json_t *s, *in;
    json_array_foreach(services, i, s)
    {
        json_array_foreach(json_object_get(s, "instances"), k, in)
        {
            int64_t started = json_integer_value(json_object_get(in, "started_at"));
            printf("%-16s %-18s %7d %-9s %-5s %8d %7llds\n",
                   json_string_value(json_object_get(s, "name")),
                   json_string_value(json_object_get(in, "id")),
                   (int)json_integer_value(json_object_get(in, "pid")),
                   json_string_value(json_object_get(in, "state")),
                   json_is_true(json_object_get(in, "ready")) ? "yes" : "no",
                   (int)json_integer_value(json_object_get(in, "restarts")),
                   (long long)(started ? (now - started) / 1000 : 0));
        }
    }
}

int tr_cmd_ps(int argc, char **argv)
{
    control_args_t a = {0};
    int r = parse(argc, argv, &a);
    if (r) return r < 0 ? TR_EXIT_OK : r;
    if (a.first < argc) return tr_cli_usage_error("ps", "unexpected argument '%s'", argv[a.first]);
    tr_cli_fetch_t f;
    if ((r = call(&a, "ps", "GET", "/api/services", &f))) return r;
    json_t *j = json_loadb(f.body ? f.body : "", f.len, 0, NULL);
    if (a.json || !json_is_array(j))
        printf("%s\n", f.body ? f.body : "");
    else
        print_ps(j);
    json_decref(j);
    free(f.body);
    return TR_EXIT_OK;
}

/* restart | stop | start | scale */
int tr_cmd_service_control(int argc, char **argv)
{
    const char *cmd = argv[0];
    control_args_t a = {0};
    int r = parse(argc, argv, &a);
    if (r) return r < 0 ? TR_EXIT_OK : r;
    bool is_scale = !strcmp(cmd, "scale");
    if (argc - a.first != (is_scale ? 2 : 1))
        return tr_cli_usage_error(cmd, is_scale ? "give a service and a replica count"
                                                : "give one service name");
    char target[512];
    if (is_scale) {
        char *end;
        long n = strtol(argv[a.first + 1], &end, 10);
        if (*end || n < 0 || n > 100)
            return tr_cli_usage_error(cmd, "replicas: '%s' is not a number from 0 to 100",
                                      argv[a.first + 1]);
        snprintf(target, sizeof(target), "/api/services/%s/scale?replicas=%ld", argv[a.first], n);
    } else {
        snprintf(target, sizeof(target), "/api/services/%s/%s", argv[a.first], cmd);
    }
    tr_cli_fetch_t f;
    if ((r = call(&a, cmd, "POST", target, &f))) return r;
    free(f.body);
    printf("%s %s: accepted\n", cmd, argv[a.first]);
    return TR_EXIT_OK;
}
