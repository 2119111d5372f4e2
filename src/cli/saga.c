/* `trellis saga ls|show|start|retry|abort`: the control plane's /api/sagas from the shell. */
#include "cli/cli.h"
#include "core/httpdate.h"

#include "trellis/config.h"
#include "trellis/error.h"

#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define SAGA_DEFAULT_URL "http://127.0.0.1:8500"

typedef struct saga_args_s {
    const char *url, *name, *state, *input, *wait;
    long limit;
    bool json;
} saga_args_t;

static void usage(FILE *out)
{
    fprintf(out, "Usage: trellis saga ls [--name N] [--state S] [--limit N]\n"
                 "       trellis saga show <id>\n"
                 "       trellis saga start <name> [--input JSON] [--wait 5s]\n"
                 "       trellis saga retry <id>      (a stuck saga tries again)\n"
                 "       trellis saga abort <id>      (stuck: give up; running before the pivot:\n"
                 "                                     compensate)\n\n"
                 "The sagas of the running `trellis up` (docs/sagas.md).\n\n"
                 "Options:\n"
                 "      --url URL      the control plane (default " SAGA_DEFAULT_URL
                 ", or $TRELLIS_URL)\n"
                 "      --name NAME    ls: only sagas of this definition\n"
                 "      --state STATE  ls: running, compensating, completed, compensated, stuck, "
                 "aborted\n"
                 "      --limit N      ls: at most N, newest first (default 50)\n"
                 "      --input JSON   start: the saga's input (default {})\n"
                 "      --wait DUR     start: wait up to DUR (at most 60s) for the outcome\n"
                 "      --json         print the API's JSON\n"
                 "  -h, --help         show this help\n\n"
                 "Example:\n"
                 "  trellis saga start create-order --input '{\"customer_id\":1}' --wait 5s\n"
                 "  trellis saga ls --state stuck && trellis saga retry <id>\n");
}

static int parse(int argc, char **argv, saga_args_t *a)
{
    static const struct option opts[] = {{"url", required_argument, NULL, 'u'},
                                         {"name", required_argument, NULL, 'n'},
                                         {"state", required_argument, NULL, 's'},
                                         {"limit", required_argument, NULL, 'l'},
                                         {"input", required_argument, NULL, 'i'},
                                         {"wait", required_argument, NULL, 'w'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    a->url = getenv("TRELLIS_URL") ? getenv("TRELLIS_URL") : SAGA_DEFAULT_URL;
    a->limit = 50;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case 'u':
            a->url = optarg;
            break;
        case 'n':
            a->name = optarg;
            break;
        case 's':
            a->state = optarg;
            break;
        case 'l':
            ok = tr_cli_int("saga", "limit", optarg, 1, 1000, &a->limit);
            break;
        case 'i':
            a->input = optarg;
            break;
        case 'w':
            a->wait = optarg;
            break;
        case 'j':
            a->json = true;
            break;
        case 'h':
            usage(stdout);
            return -1;
        default:
            fprintf(stderr, "Try 'trellis saga --help'.\n");
            return TR_EXIT_USAGE;
        }
        if (!ok) return TR_EXIT_USAGE;
    }
    return 0;
}

static int call(const saga_args_t *a, const char *method, const char *target, const char *body,
                json_t **out)
{
    char hostport[256];
    tr_cli_fetch_t f = {0};
    if (!tr_cli_hostport(a->url, hostport, sizeof(hostport)))
        return tr_cli_usage_error("saga", "--url: '%s' is not http://HOST:PORT", a->url);
    int e = tr_cli_fetch(hostport, method, target, body, &f);
    if (e) {
        fprintf(stderr,
                "trellis saga: cannot reach the control plane at %s: %s (is `trellis up` "
                "running?)\n",
                a->url, tr_strerror(e));
        return TR_EXIT_FAIL;
    }
    json_t *j = f.body ? json_loadb(f.body, f.len, 0, NULL) : NULL;
    if (f.status >= 300) {
        const char *detail = json_string_value(json_object_get(j, "detail"));
        fprintf(stderr, "trellis saga: %d: %s\n", f.status, detail ? detail : f.body ? f.body : "");
        json_decref(j);
        free(f.body);
        return TR_EXIT_FAIL;
    }
    free(f.body);
    *out = j ? j : json_object();
    return 0;
}

static void print_json(const json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    printf("%s\n", s);
    free(s);
}

static const char *str(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static void print_time(int64_t ms)
{
    char buf[TR_RFC3339_MS_LEN];
    tr_rfc3339_ms(ms, buf);
    fputs(buf, stdout);
}

static void print_list(const json_t *sagas)
{
    size_t i;
    json_t *s;
    printf("%-32s  %-20s %-13s %-24s %s\n", "ID", "NAME", "STATE", "CREATED", "ERROR");
    json_array_foreach(sagas, i, s)
    {
        printf("%-32s  %-20s %-13s ", str(s, "id"), str(s, "name"), str(s, "state"));
        print_time(json_integer_value(json_object_get(s, "created_ms")));
        printf(" %s\n", str(s, "error"));
    }
}

static void print_call(const char *what, const json_t *c)
{
    if (!json_is_object(c)) return;
    printf("    %-12s %-8s attempts %-3d", what, str(c, "state"),
           (int)json_integer_value(json_object_get(c, "attempts")));
    int status = (int)json_integer_value(json_object_get(c, "status"));
    if (status) printf(" HTTP %d", status);
    int64_t s = json_integer_value(json_object_get(c, "started_ms")),
            e = json_integer_value(json_object_get(c, "finished_ms"));
    if (s && e >= s) printf(" %lld ms", (long long)(e - s));
    if (*str(c, "error")) printf("  %s", str(c, "error"));
    printf("\n");
}

static void print_saga(const json_t *s)
{
    printf("saga %s  %s  %s\n", str(s, "id"), str(s, "name"), str(s, "state"));
    if (*str(s, "error")) printf("error: %s\n", str(s, "error"));
    printf("trace: %s   (trellis trace %s)\n", str(s, "trace_id"), str(s, "trace_id"));
    size_t i;
    json_t *st;
    const json_t *steps = json_object_get(s, "steps");
    json_array_foreach(steps, i, st)
    {
        /* Steps of one parallel group share a number: 2a, 2b, … */
        json_int_t g = json_integer_value(json_object_get(st, "group"));
        const json_t *prev = i ? json_array_get(steps, i - 1) : NULL;
        const json_t *next = json_array_get(steps, i + 1);
        size_t nth = 0;
        for (size_t k = i; k > 0 && json_integer_value(json_object_get(json_array_get(steps, k - 1),
                                                                       "group")) == g;
             k--)
            nth++;
        bool parallel = (prev && json_integer_value(json_object_get(prev, "group")) == g) ||
                        (next && json_integer_value(json_object_get(next, "group")) == g);
        char label[32];
        if (parallel)
            snprintf(label, sizeof(label), "%lld%c", (long long)g + 1, (char)('a' + nth % 26));
        else
            snprintf(label, sizeof(label), "%lld", (long long)g + 1);
        printf("  %s. %s%s%s\n", label, str(st, "name"),
               json_is_true(json_object_get(st, "pivot")) ? "  (pivot)" : "",
               parallel ? "  (parallel)" : "");
        print_call("action", json_object_get(st, "action"));
        print_call("compensation", json_object_get(st, "compensation"));
    }
}

static int start(const saga_args_t *a, const char *name)
{
    char target[512];
    json_t *input = json_loads(a->input ? a->input : "{}", 0, NULL), *out;
    if (!json_is_object(input)) {
        json_decref(input);
        return tr_cli_usage_error("saga", "--input: expected a JSON object");
    }
    json_decref(input);
    uint64_t ms;
    if (a->wait && (tr_parse_duration_ms(a->wait, &ms) || ms > 60000))
        return tr_cli_usage_error("saga", "--wait: a duration of at most 60s, like 5s");
    snprintf(target, sizeof(target), "/api/sagas/%s%s%s", name, a->wait ? "?wait=" : "",
             a->wait ? a->wait : "");
    int rc = call(a, "POST", target, a->input ? a->input : "{}", &out);
    if (rc) return rc;
    if (a->json)
        print_json(out);
    else
        print_saga(out);
    json_decref(out);
    return TR_EXIT_OK;
}

int tr_cmd_saga(int argc, char **argv)
{
    saga_args_t a = {0};
    int rc = parse(argc, argv, &a);
    if (rc) return rc < 0 ? TR_EXIT_OK : rc;
    if (optind >= argc)
        return tr_cli_usage_error("saga", "which one: ls, show, start, retry, abort?");
    const char *sub = argv[optind], *arg = optind + 1 < argc ? argv[optind + 1] : NULL;
    char target[512];
    json_t *out = NULL;
    if (!strcmp(sub, "ls")) {
        snprintf(target, sizeof(target), "/api/sagas?limit=%ld%s%s%s%s", a.limit,
                 a.name ? "&name=" : "", a.name ? a.name : "", a.state ? "&state=" : "",
                 a.state ? a.state : "");
        if ((rc = call(&a, "GET", target, NULL, &out))) return rc;
        if (a.json)
            print_json(out);
        else
            print_list(json_object_get(out, "sagas"));
    } else if (!arg) {
        return tr_cli_usage_error("saga", "%s needs %s", sub,
                                  !strcmp(sub, "start") ? "a saga name" : "a saga id");
    } else if (!strcmp(sub, "start")) {
        return start(&a, arg);
    } else if (!strcmp(sub, "show") || !strcmp(sub, "retry") || !strcmp(sub, "abort")) {
        bool show = !strcmp(sub, "show");
        snprintf(target, sizeof(target), "/api/sagas/%s%s%s", arg, show ? "" : "/",
                 show ? "" : sub);
        if ((rc = call(&a, show ? "GET" : "POST", target, NULL, &out))) return rc;
        if (a.json)
            print_json(out);
        else
            print_saga(out);
    } else {
        return tr_cli_usage_error("saga",
                                  "unknown sub-command '%s' (ls, show, start, retry, abort)", sub);
    }
    json_decref(out);
    return TR_EXIT_OK;
}
