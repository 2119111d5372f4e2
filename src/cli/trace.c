/* `trellis trace <id>`: fetches a trace from the collector and prints it as a waterfall. */
#include "cli/cli.h"

#include "trellis/error.h"
#include "trellis/http_client.h"

#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TRACE_DEFAULT_COLLECTOR "http://127.0.0.1:16686"
#define BAR_WIDTH               40

static void format_duration(double ns, char *out, size_t len)
{
    if (ns < 1e3)
        snprintf(out, len, "%.0fns", ns);
    else if (ns < 1e6)
        snprintf(out, len, "%.1fus", ns / 1e3);
    else if (ns < 1e9)
        snprintf(out, len, "%.2fms", ns / 1e6);
    else
        snprintf(out, len, "%.2fs", ns / 1e9);
}

typedef struct view_s {
    json_t *spans;
    double start, duration;
    bool colour;
} view_t;

static double ns_of(json_t *v)
{
    const char *s = json_string_value(v);
    return s ? strtod(s, NULL) : json_number_value(v);
}

static void print_span(const view_t *v, json_t *sp, int depth)
{
    char dur[32], label[512];
    double start = ns_of(json_object_get(sp, "startTimeUnixNano"));
    double d = json_number_value(json_object_get(sp, "durationNs"));
    format_duration(d, dur, sizeof(dur));
    snprintf(label, sizeof(label), "%*s%s %s", depth * 2, "",
             json_string_value(json_object_get(sp, "service")),
             json_string_value(json_object_get(sp, "name")));
    int from = v->duration > 0 ? (int)((start - v->start) / v->duration * BAR_WIDTH) : 0;
    int width = v->duration > 0 ? (int)(d / v->duration * BAR_WIDTH + 0.5) : BAR_WIDTH;
    from = from < 0 ? 0 : from > BAR_WIDTH - 1 ? BAR_WIDTH - 1 : from;
    width = width < 1 ? 1 : width > BAR_WIDTH - from ? BAR_WIDTH - from : width;
    bool error = json_is_true(json_object_get(sp, "error"));
    const char *on = v->colour ? (error ? "\033[31m" : "\033[36m") : "",
               *off = v->colour ? "\033[0m" : "";
    printf("%-56s %10s |%*s%s", label, dur, from, "", on);
    for (int i = 0; i < width; i++)
        fputs(error && !v->colour ? "!" : "█", stdout);
    printf("%s%*s|%s\n", off, BAR_WIDTH - from - width, "", error ? " error" : "");
}

static json_t *span_by_id(const view_t *v, const char *id)
{
    size_t i;
    json_t *sp;
    json_array_foreach(v->spans, i, sp)
    {
        const char *s = json_string_value(json_object_get(sp, "spanId"));
        if (s && !strcmp(s, id)) return sp;
    }
    return NULL;
}

/* Depth-first from each root, children in start order (as the collector serves them). */
static void print_tree(const view_t *v, json_t *ids, int depth)
{
    size_t i;
    json_t *id;
    json_array_foreach(ids, i, id)
    {
        json_t *sp = span_by_id(v, json_string_value(id));
        if (!sp || depth > 1000) continue;
        print_span(v, sp, depth);
        print_tree(v, json_object_get(sp, "children"), depth + 1);
    }
}

static int print_waterfall(json_t *trace)
{
    view_t v = {.spans = json_object_get(trace, "spans")};
    v.start = ns_of(json_object_get(trace, "startTimeUnixNano"));
    v.duration = json_number_value(json_object_get(trace, "durationNs"));
    v.colour = isatty(STDOUT_FILENO) && !getenv("NO_COLOR");
    char dur[32];
    format_duration(v.duration, dur, sizeof(dur));
    char *services = json_dumps(json_object_get(trace, "services"), JSON_COMPACT);
    printf("Trace %s  %lld spans  %s  services %s\n\n",
           json_string_value(json_object_get(trace, "traceId")),
           (long long)json_integer_value(json_object_get(trace, "spanCount")), dur,
           services ? services : "[]");
    free(services);
    print_tree(&v, json_object_get(trace, "roots"), 0);
    return TR_EXIT_OK;
}

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: trellis trace <trace-id> [options]\n\n"
            "Prints one trace from the collector as a waterfall: a line per span, indented "
            "by depth,\nwith its service, name, duration and a bar on the trace's time "
            "scale.\n\n"
            "Options:\n"
            "      --collector URL  the collector's query API (default " TRACE_DEFAULT_COLLECTOR
            ")\n"
            "      --json           print the trace as the API serves it\n"
            "  -h, --help           show this help\n\n"
            "Example:\n"
            "  trellis trace 5b8efff798038103d269b633813fc60c --collector "
            "http://127.0.0.1:16686\n");
}

static const struct option long_opts[] = {
    {"collector", required_argument, NULL, 'c'},
    {"json", no_argument, NULL, 'j'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static int show(const char *hostport, const char *id, bool as_json)
{
    char target[256];
    snprintf(target, sizeof(target), "/api/traces/%s", id);
    tr_cli_fetch_t f = {0};
    int rc = tr_cli_fetch(hostport, "GET", target, NULL, &f);
    if (rc) {
        fprintf(stderr,
                "trellis trace: cannot reach the collector at %s: %s (is `trellis "
                "collector` running? see --collector)\n",
                hostport, tr_strerror(rc));
        free(f.body);
        return TR_EXIT_FAIL;
    }
    json_error_t je;
    json_t *doc = f.body ? json_loadb(f.body, f.len, 0, &je) : NULL;
    int exit = TR_EXIT_OK;
    if (f.status != 200) {
        const char *detail = json_string_value(json_object_get(doc, "detail"));
        fprintf(stderr, "trellis trace: %s (HTTP %d)\n", detail ? detail : "request failed",
                f.status);
        exit = TR_EXIT_FAIL;
    } else if (!json_is_object(doc)) {
        fprintf(stderr, "trellis trace: the collector's answer is not a trace\n");
        exit = TR_EXIT_FAIL;
    } else if (as_json) {
        fwrite(f.body, 1, f.len, stdout);
        putchar('\n');
    } else {
        exit = print_waterfall(doc);
    }
    json_decref(doc);
    free(f.body);
    return exit;
}

int tr_cmd_trace(int argc, char **argv)
{
    const char *url = TRACE_DEFAULT_COLLECTOR;
    bool as_json = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            url = optarg;
            break;
        case 'j':
            as_json = true;
            break;
        case 'h':
            usage(stdout);
            return TR_EXIT_OK;
        default:
            fprintf(stderr, "Try 'trellis trace --help'.\n");
            return TR_EXIT_USAGE;
        }
    }
    if (optind != argc - 1)
        return tr_cli_usage_error("trace", "expected one trace id (32 hex digits)");
    const char *id = argv[optind];
    size_t len = strlen(id);
    if ((len != 32 && len != 16) || strspn(id, "0123456789abcdefABCDEF") != len)
        return tr_cli_usage_error("trace", "'%s' is not a trace id (32 hex digits)", id);
    char hostport[128];
    if (!tr_cli_hostport(url, hostport, sizeof(hostport)))
        return tr_cli_usage_error("trace", "--collector: '%s' is not http://HOST:PORT", url);
    return show(hostport, id, as_json);
}
