/* `trellis rollout`: start, follow, abort and list rollouts of the running `trellis up`. */
#include "cli/cli.h"

#include "trellis/error.h"

#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ROLLOUT_DEFAULT_URL "http://127.0.0.1:8500"
#define POLL_MS             500

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: trellis rollout <service> --version V [options] [-- command args…]\n"
            "       trellis rollout status <service> [--json]\n"
            "       trellis rollout abort <service>\n\n"
            "Moves a service of the running `trellis up` to a new version while it serves,\n"
            "judging the new version from the gateway's own per-attempt statistics and\n"
            "rolling back by itself on a breach. Follows the rollout until it ends: exit 0\n"
            "when it succeeded, 1 when it was rolled back.\n\n"
            "Options:\n"
            "      --version V            the new version (required)\n"
            "      --command CMD          what the new version runs, split on blanks (default:\n"
            "                             the service's current command); ${PORT} and the\n"
            "                             topology's other variables are expanded per replica.\n"
            "                             Or give the command after `--`, one word per argument\n"
            "      --strategy S           canary (default), blue-green or rolling\n"
            "      --steps LIST           canary traffic percentages (default 10,50,100)\n"
            "      --interval DUR         how long each step is judged (default 30s)\n"
            "      --max-error-rate R     failed attempts allowed, 1%% or 0.01 (default 1%%)\n"
            "      --max-p99 DUR          p99 latency allowed (default: no limit)\n"
            "      --min-requests N       attempts needed before a window is judged (default 20)\n"
            "      --drain DUR            time old replicas keep running out of the registry\n"
            "                             before they are stopped (default 2s)\n"
            "      --ready-timeout DUR    time new replicas have to become ready (default 60s)\n"
            "      --detach               start it and return without following\n"
            "      --url URL              the control plane (default " ROLLOUT_DEFAULT_URL ")\n"
            "      --json                 print the API's JSON (status)\n"
            "  -h, --help                 show this help\n\n"
            "Example:\n"
            "  trellis rollout orders --version v2 --strategy canary --steps 10,50,100 \\\n"
            "      --interval 30s --max-error-rate 1%% --max-p99 500ms\n");
}

typedef struct args_s {
    const char *url, *version, *command, *strategy, *steps;
    uint64_t interval_ms, p99_ms, drain_ms, ready_ms;
    long min_requests;
    double rate;
    bool has_interval, has_p99, has_drain, has_ready, has_rate, has_min, detach, json;
} args_t;

enum {
    OPT_VERSION = 256,
    OPT_COMMAND,
    OPT_STRATEGY,
    OPT_STEPS,
    OPT_INTERVAL,
    OPT_RATE,
    OPT_P99,
    OPT_MIN,
    OPT_DRAIN,
    OPT_READY,
    OPT_DETACH,
    OPT_URL,
    OPT_JSON
};

/* "1%" → 0.01, "0.01" → 0.01. */
static bool parse_rate(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s) return false;
    if (*end == '%') {
        v /= 100;
        end++;
    }
    if (*end || v < 0 || v > 1) return false;
    *out = v;
    return true;
}

static int parse(int argc, char **argv, args_t *a)
{
    static const struct option opts[] = {{"version", required_argument, NULL, OPT_VERSION},
                                         {"command", required_argument, NULL, OPT_COMMAND},
                                         {"strategy", required_argument, NULL, OPT_STRATEGY},
                                         {"steps", required_argument, NULL, OPT_STEPS},
                                         {"interval", required_argument, NULL, OPT_INTERVAL},
                                         {"max-error-rate", required_argument, NULL, OPT_RATE},
                                         {"max-p99", required_argument, NULL, OPT_P99},
                                         {"min-requests", required_argument, NULL, OPT_MIN},
                                         {"drain", required_argument, NULL, OPT_DRAIN},
                                         {"ready-timeout", required_argument, NULL, OPT_READY},
                                         {"detach", no_argument, NULL, OPT_DETACH},
                                         {"url", required_argument, NULL, OPT_URL},
                                         {"json", no_argument, NULL, OPT_JSON},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    a->url = getenv("TRELLIS_URL") ? getenv("TRELLIS_URL") : ROLLOUT_DEFAULT_URL;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case OPT_VERSION:
            a->version = optarg;
            break;
        case OPT_COMMAND:
            a->command = optarg;
            break;
        case OPT_STRATEGY:
            a->strategy = optarg;
            break;
        case OPT_STEPS:
            a->steps = optarg;
            break;
        case OPT_INTERVAL:
            ok = a->has_interval = tr_cli_duration("rollout", "interval", optarg, &a->interval_ms);
            break;
        case OPT_RATE:
            ok = a->has_rate = parse_rate(optarg, &a->rate);
            if (!ok)
                return tr_cli_usage_error("rollout", "--max-error-rate: '%s' is not 1%% or 0.01",
                                          optarg);
            break;
        case OPT_P99:
            ok = a->has_p99 = tr_cli_duration("rollout", "max-p99", optarg, &a->p99_ms);
            break;
        case OPT_MIN:
            ok = a->has_min =
                tr_cli_int("rollout", "min-requests", optarg, 0, 1000000000, &a->min_requests);
            break;
        case OPT_DRAIN:
            ok = a->has_drain = tr_cli_duration("rollout", "drain", optarg, &a->drain_ms);
            break;
        case OPT_READY:
            ok = a->has_ready = tr_cli_duration("rollout", "ready-timeout", optarg, &a->ready_ms);
            break;
        case OPT_DETACH:
            a->detach = true;
            break;
        case OPT_URL:
            a->url = optarg;
            break;
        case OPT_JSON:
            a->json = true;
            break;
        case 'h':
            usage(stdout);
            return -1;
        default:
            fprintf(stderr, "Try 'trellis rollout --help'.\n");
            return TR_EXIT_USAGE;
        }
        if (!ok) return TR_EXIT_USAGE;
    }
    return 0;
}

static int call(const args_t *a, const char *method, const char *target, const char *body,
                tr_cli_fetch_t *f, json_t **out)
{
    char hostport[256];
    *out = NULL;
    if (!tr_cli_hostport(a->url, hostport, sizeof(hostport)))
        return tr_cli_usage_error("rollout", "--url: '%s' is not http://HOST:PORT", a->url);
    int e = tr_cli_fetch(hostport, method, target, body, f);
    if (e) {
        fprintf(stderr,
                "trellis rollout: cannot reach the control plane at %s: %s (is `trellis up` "
                "running?)\n",
                a->url, tr_strerror(e));
        return TR_EXIT_FAIL;
    }
    json_t *j = json_loadb(f->body ? f->body : "", f->len, 0, NULL);
    if (f->status >= 300) {
        const char *detail = json_string_value(json_object_get(j, "detail"));
        fprintf(stderr, "trellis rollout: %s\n", detail ? detail : (f->body ? f->body : "failed"));
        json_decref(j);
        free(f->body);
        return TR_EXIT_FAIL;
    }
    free(f->body);
    *out = j;
    return 0;
}

static void print_event(json_t *ev)
{
    time_t at = (time_t)(json_integer_value(json_object_get(ev, "at")) / 1000);
    struct tm tm;
    char when[16];
    localtime_r(&at, &tm);
    strftime(when, sizeof(when), "%H:%M:%S", &tm);
    printf("%s  %s\n", when, json_string_value(json_object_get(ev, "message")));
    fflush(stdout);
}

/* The rollout with this id: the active one or one in the history. */
static json_t *find(json_t *svc, json_int_t id)
{
    json_t *act = json_object_get(svc, "active");
    if (json_integer_value(json_object_get(act, "id")) == id) return act;
    size_t i;
    json_t *h;
    json_array_foreach(json_object_get(svc, "history"), i,
                       h) if (json_integer_value(json_object_get(h, "id")) == id) return h;
    return NULL;
}

static bool ended(json_t *ro)
{
    return json_object_get(ro, "ended_at") && !json_is_null(json_object_get(ro, "ended_at"));
}

static int follow(const args_t *a, const char *svc, json_int_t id, uint64_t deadline_ms)
{
    char target[300];
    snprintf(target, sizeof(target), "/api/rollouts/%s", svc);
    size_t shown = 0;
    uint64_t waited = 0;
    for (;;) {
        tr_cli_fetch_t f;
        json_t *j;
        int r = call(a, "GET", target, NULL, &f, &j);
        if (r) return r;
        json_t *ro = find(j, id);
        json_t *events = json_object_get(ro, "events");
        for (; shown < json_array_size(events); shown++)
            print_event(json_array_get(events, shown));
        if (!ro || ended(ro)) {
            const char *state = json_string_value(json_object_get(ro, "state"));
            int rc = state && !strcmp(state, "succeeded") ? TR_EXIT_OK : TR_EXIT_FAIL;
            printf("rollout %s: %s\n", state ? state : "gone", svc);
            json_decref(j);
            return rc;
        }
        json_decref(j);
        if (waited >= deadline_ms) {
            fprintf(stderr,
                    "trellis rollout: still running after %llu s; stopped following (see "
                    "`trellis rollout status %s`)\n",
                    (unsigned long long)(waited / 1000), svc);
            return TR_EXIT_FAIL;
        }
        usleep(POLL_MS * 1000);
        waited += POLL_MS;
    }
}

static int status(const args_t *a, const char *svc)
{
    char target[300];
    snprintf(target, sizeof(target), "/api/rollouts/%s", svc);
    tr_cli_fetch_t f;
    json_t *j;
    int r = call(a, "GET", target, NULL, &f, &j);
    if (r) return r;
    if (a->json) {
        char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("%s\n", text);
        free(text);
        json_decref(j);
        return TR_EXIT_OK;
    }
    printf("%s: version %s\n", svc,
           json_string_value(json_object_get(j, "version"))
               ? json_string_value(json_object_get(j, "version"))
               : "(none)");
    json_t *act = json_object_get(j, "active");
    if (json_is_object(act)) {
        json_t *w = json_object_get(act, "window");
        printf("in progress: %s %s -> %s, state %s, weight %lld%%, window %lld attempts, %lld "
               "failed\n",
               json_string_value(json_object_get(act, "strategy")),
               json_string_value(json_object_get(act, "from_version")),
               json_string_value(json_object_get(act, "to_version")),
               json_string_value(json_object_get(act, "state")),
               (long long)json_integer_value(json_object_get(act, "weight_percent")),
               (long long)json_integer_value(json_object_get(w, "attempts")),
               (long long)json_integer_value(json_object_get(w, "failures")));
    }
    json_t *hist = json_object_get(j, "history");
    printf("%-4s %-11s %-10s %-10s %-12s %-19s %s\n", "ID", "STRATEGY", "FROM", "TO", "RESULT",
           "STARTED", "REASON");
    size_t i;
    json_t *h;
    json_array_foreach(hist, i, h)
    {
        time_t at = (time_t)(json_integer_value(json_object_get(h, "started_at")) / 1000);
        struct tm tm;
        char when[24];
        localtime_r(&at, &tm);
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
        const char *from = json_string_value(json_object_get(h, "from_version"));
        const char *reason = json_string_value(json_object_get(h, "reason"));
        printf("%-4lld %-11s %-10s %-10s %-12s %-19s %s\n",
               (long long)json_integer_value(json_object_get(h, "id")),
               json_string_value(json_object_get(h, "strategy")), from ? from : "-",
               json_string_value(json_object_get(h, "to_version")),
               json_string_value(json_object_get(h, "state")), when, reason ? reason : "");
    }
    if (!json_array_size(hist) && !json_is_object(act)) printf("(no rollouts yet)\n");
    json_decref(j);
    return TR_EXIT_OK;
}

/* --command "a b c" → ["a","b","c"]: split on blanks; ${PORT} and the other template
 * variables stay for `trellis up` to expand per replica. Arguments with blanks go after
 * `--` instead, one shell word each. */
static json_t *split_command(const char *cmd)
{
    json_t *a = json_array();
    char *copy = strdup(cmd), *save = NULL;
    for (char *t = strtok_r(copy, " \t\n", &save); t; t = strtok_r(NULL, " \t\n", &save))
        json_array_append_new(a, json_string(t));
    free(copy);
    if (!json_array_size(a)) {
        json_decref(a);
        return NULL;
    }
    return a;
}

static json_t *argv_command(int argc, char **argv)
{
    json_t *a = json_array();
    for (int i = 0; i < argc; i++)
        json_array_append_new(a, json_string(argv[i]));
    return a;
}

static int start(const args_t *a, const char *svc, int cmdc, char **cmdv)
{
    if (!a->version) return tr_cli_usage_error("rollout", "--version is required");
    if (a->command && cmdc)
        return tr_cli_usage_error("rollout", "give the command with --command or after --, "
                                             "not both");
    json_t *body = json_pack("{s:s}", "version", a->version);
    if (a->command) {
        json_t *cmd = split_command(a->command);
        if (!cmd) {
            json_decref(body);
            return tr_cli_usage_error("rollout", "--command is empty");
        }
        json_object_set_new(body, "command", cmd);
    } else if (cmdc) {
        json_object_set_new(body, "command", argv_command(cmdc, cmdv));
    }
    if (a->strategy) json_object_set_new(body, "strategy", json_string(a->strategy));
    if (a->steps) {
        json_t *steps = json_array();
        char *copy = strdup(a->steps), *save = NULL;
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            char *end;
            long v = strtol(t, &end, 10);
            if (end == t || (*end && strcmp(end, "%"))) {
                free(copy);
                json_decref(steps);
                json_decref(body);
                return tr_cli_usage_error("rollout", "--steps: '%s' is not a list like 10,50,100",
                                          a->steps);
            }
            json_array_append_new(steps, json_integer(v));
        }
        free(copy);
        json_object_set_new(body, "steps", steps);
    }
    if (a->has_interval)
        json_object_set_new(body, "interval_ms", json_integer((json_int_t)a->interval_ms));
    if (a->has_rate) json_object_set_new(body, "max_error_rate", json_real(a->rate));
    if (a->has_p99) json_object_set_new(body, "max_p99_ms", json_integer((json_int_t)a->p99_ms));
    if (a->has_min) json_object_set_new(body, "min_requests", json_integer(a->min_requests));
    if (a->has_drain) json_object_set_new(body, "drain_ms", json_integer((json_int_t)a->drain_ms));
    if (a->has_ready)
        json_object_set_new(body, "ready_timeout_ms", json_integer((json_int_t)a->ready_ms));
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    char target[300];
    snprintf(target, sizeof(target), "/api/rollouts/%s", svc);
    tr_cli_fetch_t f;
    json_t *ro;
    int r = call(a, "POST", target, text, &f, &ro);
    free(text);
    if (r) return r;
    json_int_t id = json_integer_value(json_object_get(ro, "id"));
    uint64_t interval = (uint64_t)json_integer_value(json_object_get(ro, "interval_ms"));
    uint64_t steps = json_array_size(json_object_get(ro, "steps"));
    uint64_t budget = (steps + 2) * interval + 60000 + (a->has_ready ? a->ready_ms : 60000) * 2 +
                      (uint64_t)json_integer_value(json_object_get(ro, "drain_ms")) * 2;
    json_decref(ro);
    if (a->detach) {
        printf("rollout %lld of %s started; follow it with `trellis rollout status %s`\n",
               (long long)id, svc, svc);
        return TR_EXIT_OK;
    }
    return follow(a, svc, id, budget);
}

int tr_cmd_rollout(int argc, char **argv)
{
    /* trellis rollout SVC [options] [-- command args…]: the command is cut off before the
     * options are parsed, so getopt never sees (or reorders) it. */
    int dash = 0;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--")) {
            dash = i;
            break;
        }
    int cmdc = dash ? argc - dash - 1 : 0;
    char **cmdv = dash ? argv + dash + 1 : NULL;
    if (dash) argc = dash;
    args_t a = {0};
    int r = parse(argc, argv, &a);
    if (r) return r < 0 ? TR_EXIT_OK : r;
    int n = argc - optind;
    const char *first = n > 0 ? argv[optind] : NULL;
    if (first && (!strcmp(first, "status") || !strcmp(first, "abort"))) {
        if (n != 2) return tr_cli_usage_error("rollout", "%s takes one service name", first);
        const char *svc = argv[optind + 1];
        if (!strcmp(first, "status")) return status(&a, svc);
        char target[300];
        snprintf(target, sizeof(target), "/api/rollouts/%s/abort", svc);
        tr_cli_fetch_t f;
        json_t *j;
        if ((r = call(&a, "POST", target, NULL, &f, &j))) return r;
        json_decref(j);
        printf("rollout of %s: rolling back\n", svc);
        return TR_EXIT_OK;
    }
    if (n != 1) return tr_cli_usage_error("rollout", "give one service name");
    if (dash && !cmdc) return tr_cli_usage_error("rollout", "nothing after --");
    return start(&a, first, cmdc, cmdv);
}
