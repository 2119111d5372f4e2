/* The topology file: compiles `trellis up`'s YAML into plain structs, validated with positions. */
#include "supervisor/topology.h"

#include "core/mem.h"
#include "trellis/error.h"
#include "trellis/http_client.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define DEFAULT_LISTEN   "127.0.0.1:8500"
#define DEFAULT_DATA_DIR ".trellis"
#define DEFAULT_OTLP     "127.0.0.1:4318"
#define DEFAULT_ZIPKIN   "127.0.0.1:9411"
#define THRESHOLD_MAX    1000

/* What the compiler keeps about a service beyond the public struct: where things are. */
typedef struct svc_src_s {
    const json_t *obj;      /* the service's mapping */
    const json_t **dep_obj; /* per dep: node or mapping to report at */
    const char **dep_key;   /* per dep: NULL (a string entry) or "service" */
    const json_t *services; /* the `services` mapping, to report at the service's name */
} svc_src_t;

struct tr_topology_s {
    tr_config_t *cfg;
    char *base; /* absolute directory of the file, base of relative paths */
    tr_topo_service_t *services;
    svc_src_t *src;
    size_t nservices;
    const tr_topo_service_t **order;
    const json_t *gateway;
    const char *gateway_file;
    const json_t *sagas;
    tr_topo_control_plane_t cp;
    json_t *owned; /* strings made by the compiler (resolved paths, stringified values) */
};

static const char *const restart_names[] = {
#define TR_TOPO_RESTART_WORD(name, word) word,
    TR_TOPO_RESTART_MAP(TR_TOPO_RESTART_WORD)
#undef TR_TOPO_RESTART_WORD
        NULL};

static const struct {
    const char *name;
    int sig;
} signals[] = {{"SIGTERM", SIGTERM}, {"SIGINT", SIGINT}, {"SIGQUIT", SIGQUIT},
               {"SIGKILL", SIGKILL}, {"SIGHUP", SIGHUP}, {"SIGUSR1", SIGUSR1},
               {"SIGUSR2", SIGUSR2}};

static const char *const template_vars[] = {"PORT", "TRELLIS_SERVICE", "TRELLIS_INSTANCE", NULL};

/* ---- small helpers */

/* Keeps a copy of s[0..len) for t's lifetime and returns it. */
static const char *keep_n(tr_topology_t *t, const char *s, size_t len)
{
    json_t *j = json_stringn_nocheck(s, len);
    json_array_append_new(t->owned, j);
    return json_string_value(j);
}

static const char *keep(tr_topology_t *t, const char *s)
{
    return keep_n(t, s, strlen(s));
}

static json_t *dur_json(uint64_t ms)
{
    char buf[32];
    if (ms % 1000 == 0)
        snprintf(buf, sizeof(buf), "%llus", (unsigned long long)(ms / 1000));
    else
        snprintf(buf, sizeof(buf), "%llums", (unsigned long long)ms);
    return json_string(buf);
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

/* The absolute directory holding `path` (the working directory when path has none). */
static char *base_dir(const char *path)
{
    char cwd[PATH_MAX];
    const char *slash = path ? strrchr(path, '/') : NULL;
    if (slash && path[0] == '/')
        return tr_strndup(path, slash == path ? 1 : (size_t)(slash - path));
    if (!getcwd(cwd, sizeof(cwd))) snprintf(cwd, sizeof(cwd), ".");
    if (!slash) return tr_strdup(cwd);
    size_t n = strlen(cwd) + 1 + (size_t)(slash - path) + 1;
    char *out = tr_malloc(n);
    snprintf(out, n, "%s/%.*s", cwd, (int)(slash - path), path);
    return out;
}

/* `rel` resolved against t's base directory: absolute paths as they are, "./" dropped. */
static const char *resolve(tr_topology_t *t, const char *rel)
{
    if (rel[0] == '/') return keep(t, rel);
    while (rel[0] == '.' && rel[1] == '/')
        for (rel += 2; *rel == '/'; rel++)
            ;
    if (!strcmp(rel, ".") || !*rel) return keep(t, t->base);
    size_t bl = strlen(t->base);
    bool sep = bl > 0 && t->base[bl - 1] == '/';
    char *s = tr_malloc(bl + strlen(rel) + 2);
    sprintf(s, "%s%s%s", t->base, sep ? "" : "/", rel);
    const char *k = keep(t, s);
    free(s);
    return k;
}

/* Case-blind edit distance, for "did you mean" on service names (short strings only). */
static int distance(const char *a, const char *b)
{
    size_t n = strlen(a), m = strlen(b);
    int row[TR_TOPO_NAME_MAX + 2];
    if (n > TR_TOPO_NAME_MAX || m > TR_TOPO_NAME_MAX) return INT_MAX;
    for (size_t j = 0; j <= m; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= n; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= m; j++) {
            int up = row[j];
            int d = diag + (tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]));
            if (up + 1 < d) d = up + 1;
            if (row[j - 1] + 1 < d) d = row[j - 1] + 1;
            row[j] = d;
            diag = up;
        }
    }
    return row[m];
}

/* ---- strings, lists and templates */

/* Checks ${...} markers: only the variables trellis sets are allowed. */
static int check_template(tr_config_t *cfg, const json_t *obj, const char *key, const char *s)
{
    for (const char *p = s; (p = strchr(p, '$')); p++) {
        if (p[1] == '$') {
            p++;
            continue;
        }
        if (p[1] != '{') continue;
        const char *end = strchr(p + 2, '}');
        if (!end)
            return tr_config_fail(cfg, obj, key,
                                  "unterminated \"${\" (write \"$${\" for a literal "
                                  "\"${\")");
        size_t len = (size_t)(end - p - 2);
        bool known = false;
        for (int i = 0; template_vars[i]; i++)
            known |= strlen(template_vars[i]) == len && !strncmp(template_vars[i], p + 2, len);
        if (!known)
            return tr_config_fail(cfg, obj, key,
                                  "unknown variable \"${%.*s}\": trellis expands only ${PORT}, "
                                  "${TRELLIS_SERVICE} and ${TRELLIS_INSTANCE} (write \"$$\" for "
                                  "a literal \"$\")",
                                  (int)(len > 40 ? 40 : len), p + 2);
        p = end;
    }
    return 0;
}

/* A scalar as text (numbers and booleans stringified); reports at obj[key] or obj itself. */
static int scalar_text(tr_topology_t *t, const json_t *v, const json_t *obj, const char *key,
                       const char **out)
{
    char buf[64];
    switch (json_typeof(v)) {
    case JSON_STRING:
        if (strlen(json_string_value(v)) != json_string_length(v))
            return tr_config_fail(t->cfg, obj, key, "contains a NUL character");
        *out = json_string_value(v);
        return 0;
    case JSON_INTEGER:
        snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        snprintf(buf, sizeof(buf), "%.15g", json_real_value(v));
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        snprintf(buf, sizeof(buf), "%s", json_is_true(v) ? "true" : "false");
        break;
    default:
        return tr_config_fail(t->cfg, obj, key,
                              "expected a string, number or boolean (quote it: \"\" for empty)");
    }
    *out = keep(t, buf);
    return 0;
}

/* Where to report a list item: the item when it has a position, else the list. */
static const json_t *item_at(tr_topology_t *t, const json_t *list, const json_t *item)
{
    int l, c;
    return tr_config_pos(t->cfg, item, &l, &c) == 0 ? item : list;
}

/* A string or a list of strings (or scalars when `scalars`) into a NULL-terminated array. */
static int get_list(tr_topology_t *t, const json_t *obj, const char *key, bool scalars,
                    const char ***out, size_t *n)
{
    json_t *v = json_object_get(obj, key);
    *out = tr_calloc(json_is_array(v) ? json_array_size(v) + 1 : 2, sizeof(char *));
    *n = 0;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_array(v)) {
        if (!json_is_string(v) && !scalars)
            return tr_config_fail(t->cfg, obj, key, "expected a string or a list of strings");
        return scalar_text(t, v, obj, key, &(*out)[(*n)++]);
    }
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        const json_t *at = item_at(t, v, e);
        if (!scalars && !json_is_string(e))
            return tr_config_fail(t->cfg, at, NULL, "expected a string");
        if (scalar_text(t, e, at, NULL, &(*out)[(*n)++])) return TR_ECONFIG;
    }
    return 0;
}

static bool env_name_ok(const char *k)
{
    if (!(isalpha((unsigned char)*k) || *k == '_')) return false;
    for (k++; *k; k++)
        if (!(isalnum((unsigned char)*k) || *k == '_')) return false;
    return true;
}

/* Checks one "K=V" entry: a valid, unreserved, unrepeated name and a good template. */
static int check_env(tr_topology_t *t, const json_t *obj, const char *key, const char *kv,
                     const char **env, size_t nenv)
{
    const char *eq = strchr(kv, '=');
    size_t klen = eq ? (size_t)(eq - kv) : 0;
    char name[128];
    if (!eq || klen == 0 || klen >= sizeof(name))
        return tr_config_fail(t->cfg, obj, key, "expected NAME=value");
    memcpy(name, kv, klen);
    name[klen] = '\0';
    if (!env_name_ok(name))
        return tr_config_fail(t->cfg, obj, key,
                              "\"%s\" is not a variable name (letters, digits and _, not "
                              "starting with a digit)",
                              name);
    for (int i = 0; template_vars[i]; i++)
        if (!strcmp(name, template_vars[i]))
            return tr_config_fail(t->cfg, obj, key,
                                  "%s is set by trellis for each instance; remove it here", name);
    for (size_t i = 0; i < nenv; i++)
        if (!strncmp(env[i], kv, klen + 1))
            return tr_config_fail(t->cfg, obj, key, "%s is set twice", name);
    return check_template(t->cfg, obj, key, eq + 1);
}

/* env: a mapping (values stringified) or a list of "K=V". */
static int parse_env(tr_topology_t *t, const json_t *o, tr_topo_service_t *s)
{
    json_t *v = json_object_get(o, "env"), *e;
    size_t cap = json_is_object(v)  ? json_object_size(v)
                 : json_is_array(v) ? json_array_size(v)
                                    : 0;
    s->env = tr_calloc(cap + 1, sizeof(char *));
    if (!v || json_is_null(v)) return 0;
    if (json_is_array(v)) {
        size_t i;
        json_array_foreach(v, i, e)
        {
            const json_t *at = item_at(t, v, e);
            const char *kv;
            if (!json_is_string(e))
                return tr_config_fail(t->cfg, at, NULL, "expected NAME=value (a string)");
            if (scalar_text(t, e, at, NULL, &kv) || check_env(t, at, NULL, kv, s->env, s->nenv))
                return TR_ECONFIG;
            s->env[s->nenv++] = kv;
        }
        return 0;
    }
    if (!json_is_object(v))
        return tr_config_fail(t->cfg, o, "env",
                              "expected a mapping {NAME: value} or a list of "
                              "NAME=value");
    const char *k;
    json_object_foreach(v, k, e)
    {
        const char *val;
        if (scalar_text(t, e, v, k, &val)) return TR_ECONFIG;
        size_t n = strlen(k) + strlen(val) + 2;
        char *kv = tr_malloc(n);
        snprintf(kv, n, "%s=%s", k, val);
        const char *kept = keep(t, kv);
        free(kv);
        if (check_env(t, v, k, kept, s->env, s->nenv)) return TR_ECONFIG;
        s->env[s->nenv++] = kept;
    }
    return 0;
}

/* ---- one service */

static int check_name(tr_topology_t *t, const json_t *services, const char *name)
{
    size_t n = strlen(name);
    bool ok = n > 0 && n <= TR_TOPO_NAME_MAX && name[0] != '-' && name[n - 1] != '-';
    for (size_t i = 0; ok && i < n; i++)
        ok = (name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
             name[i] == '-';
    if (ok) return 0;
    return tr_config_fail(t->cfg, services, name,
                          "a service name is 1 to 63 of a-z, 0-9 and '-', not starting or "
                          "ending with '-' (it is used in DNS names and Kubernetes)");
}

static int parse_command(tr_topology_t *t, const json_t *o, tr_topo_service_t *s)
{
    const char *cwd;
    if (tr_config_get_string(t->cfg, o, "command", NULL, &s->command) ||
        tr_config_get_string(t->cfg, o, "cwd", NULL, &cwd))
        return TR_ECONFIG;
    if (!s->command || !*s->command)
        return tr_config_fail(t->cfg, s->command ? o : t->src[s->index].services,
                              s->command ? "command" : s->name,
                              "`command` is required: the program to run (`trellis` means this "
                              "trellis binary)");
    s->command_self = !strcmp(s->command, "trellis");
    if (strchr(s->command, '/') && s->command[0] != '/') s->command = resolve(t, s->command);
    s->cwd = resolve(t, cwd ? cwd : ".");
    if (get_list(t, o, "args", true, &s->args, &s->nargs)) return TR_ECONFIG;
    json_t *args = json_object_get(o, "args");
    for (size_t i = 0; i < s->nargs; i++) {
        const json_t *at = json_is_array(args) ? item_at(t, args, json_array_get(args, i)) : o;
        if (check_template(t->cfg, at, at == o ? "args" : NULL, s->args[i])) return TR_ECONFIG;
    }
    return parse_env(t, o, s);
}

static int parse_port(tr_topology_t *t, const json_t *o, tr_topo_service_t *s)
{
    int64_t replicas, port;
    json_t *v = json_object_get(o, "port");
    if (tr_config_get_int(t->cfg, o, "replicas", 1, 0, TR_TOPO_MAX_REPLICAS, &replicas))
        return TR_ECONFIG;
    s->replicas = (uint32_t)replicas;
    s->port_auto = true;
    if (!v || json_is_null(v) || (json_is_string(v) && !strcmp(json_string_value(v), "auto")))
        return 0;
    if (!json_is_integer(v))
        return tr_config_fail(t->cfg, o, "port",
                              "expected `auto` (a free port per instance) or a port from 1 to "
                              "65535");
    if (tr_config_get_int(t->cfg, o, "port", 0, 1, 65535, &port)) return TR_ECONFIG;
    if (port + (replicas ? replicas : 1) - 1 > 65535)
        return tr_config_fail(t->cfg, o, "port",
                              "replica i listens on port + i, and %lld + %lld replicas goes past "
                              "65535",
                              (long long)port, (long long)replicas);
    s->port_auto = false;
    s->port = (uint16_t)port;
    return 0;
}

static int parse_meta(tr_topology_t *t, const json_t *o, tr_topo_service_t *s)
{
    json_t *ver = json_object_get(o, "version");
    if (json_is_number(ver))
        return tr_config_fail(t->cfg, o, "version",
                              "a version is text; quote it (version: \"1.2\") so YAML keeps it "
                              "as written");
    if (tr_config_get_string(t->cfg, o, "version", NULL, &s->version) ||
        tr_config_get_string(t->cfg, o, "context", NULL, &s->context))
        return TR_ECONFIG;
    if (s->context && !*s->context)
        return tr_config_fail(t->cfg, o, "context", "the bounded context name is empty");
    if (get_list(t, o, "owns", false, &s->owns, &s->nowns)) return TR_ECONFIG;
    json_t *owns = json_object_get(o, "owns");
    for (size_t i = 0; i < s->nowns; i++) {
        const json_t *at = json_is_array(owns) ? item_at(t, owns, json_array_get(owns, i)) : o;
        const char *key = at == o ? "owns" : NULL;
        if (!*s->owns[i]) return tr_config_fail(t->cfg, at, key, "a database name is empty");
        for (size_t j = 0; j < i; j++)
            if (!strcmp(s->owns[i], s->owns[j]))
                return tr_config_fail(t->cfg, at, key, "\"%s\" is listed twice", s->owns[i]);
    }
    return 0;
}

static int parse_deps(tr_topology_t *t, const json_t *o, tr_topo_service_t *s)
{
    static const char *const keys[] = {"service", "mode", NULL};
    static const char *const modes[] = {"sync", "async", NULL};
    json_t *list = json_object_get(o, "depends_on"), *e;
    svc_src_t *src = &t->src[s->index];
    if (list && !json_is_null(list) && !json_is_array(list))
        return tr_config_fail(t->cfg, o, "depends_on",
                              "expected a list of service names or {service: name, mode: "
                              "sync|async}");
    size_t n = json_array_size(list), i;
    s->deps = tr_calloc(n + 1, sizeof(*s->deps));
    src->dep_obj = tr_calloc(n + 1, sizeof(json_t *));
    src->dep_key = tr_calloc(n + 1, sizeof(char *));
    json_array_foreach(list, i, e)
    {
        tr_topo_dep_t *d = &s->deps[i];
        int mode = 0;
        src->dep_obj[i] = item_at(t, list, e);
        if (json_is_object(e)) {
            src->dep_key[i] = "service";
            if (tr_config_check_keys(t->cfg, e, keys) ||
                tr_config_get_string(t->cfg, e, "service", NULL, &d->service) ||
                tr_config_get_enum(t->cfg, e, "mode", modes, 0, &mode))
                return TR_ECONFIG;
            if (!d->service)
                return tr_config_fail(t->cfg, e, NULL,
                                      "`service` is required: the name of the "
                                      "service depended on");
        } else if (json_is_string(e)) {
            d->service = json_string_value(e);
        } else {
            return tr_config_fail(t->cfg, src->dep_obj[i], NULL,
                                  "expected a service name or {service: name, mode: sync|async}");
        }
        d->async = mode == 1;
        tr_config_pos(t->cfg, e, &d->line, &d->col);
        s->ndeps++;
    }
    return 0;
}

/* A probe: true/absent (defaults), false or "none" (off), or a mapping. */
static int parse_probe(tr_topology_t *t, const json_t *probes, const char *key, bool readiness,
                       tr_topo_probe_t *p)
{
    static const char *const keys[] = {"http",
                                       "tcp",
                                       "period",
                                       "timeout",
                                       "initial_delay",
                                       "failure_threshold",
                                       "success_threshold",
                                       NULL};
    tr_config_t *cfg = t->cfg;
    json_t *v = json_object_get(probes, key);
    if (!v || json_is_null(v) || json_is_true(v)) return 0;
    if (json_is_false(v) || (json_is_string(v) && !strcmp(json_string_value(v), "none"))) {
        p->enabled = false;
        return 0;
    }
    if (!json_is_object(v))
        return tr_config_fail(cfg, probes, key,
                              "expected {http: /path} or {tcp: true} with optional period, "
                              "timeout, ...; or false (or none) to turn it off");
    const char *path;
    bool tcp;
    int64_t fail, succ;
    if (tr_config_check_keys(cfg, v, keys) || tr_config_get_string(cfg, v, "http", NULL, &path) ||
        tr_config_get_bool(cfg, v, "tcp", false, &tcp) ||
        tr_config_get_duration(cfg, v, "period", p->period_ms, &p->period_ms) ||
        tr_config_get_duration(cfg, v, "timeout", p->timeout_ms, &p->timeout_ms) ||
        tr_config_get_duration(cfg, v, "initial_delay", p->initial_delay_ms,
                               &p->initial_delay_ms) ||
        tr_config_get_int(cfg, v, "failure_threshold", p->failure_threshold, 1, THRESHOLD_MAX,
                          &fail) ||
        tr_config_get_int(cfg, v, "success_threshold", p->success_threshold, 1, THRESHOLD_MAX,
                          &succ))
        return TR_ECONFIG;
    if (!readiness && json_object_get(v, "success_threshold"))
        return tr_config_fail(cfg, v, "success_threshold",
                              "a liveness probe passes after one success (as in Kubernetes); "
                              "remove it, or set it on the readiness probe");
    if (path && tcp)
        return tr_config_fail(cfg, v, "tcp", "give either `http: /path` or `tcp: true`, not both");
    if (path && path[0] != '/')
        return tr_config_fail(cfg, v, "http", "an HTTP probe path starts with '/' (got \"%.60s\")",
                              path);
    if (p->period_ms == 0) return tr_config_fail(cfg, v, "period", "must be more than 0");
    if (p->timeout_ms == 0) return tr_config_fail(cfg, v, "timeout", "must be more than 0");
    if (tcp) p->path = NULL;
    if (path) p->path = path;
    p->http = !tcp;
    p->failure_threshold = (uint32_t)fail;
    p->success_threshold = (uint32_t)succ;
    return 0;
}

static int parse_probes(tr_topology_t *t, const json_t *o, tr_topo_service_t *s)
{
    static const char *const keys[] = {"liveness", "readiness", NULL};
    json_t *probes;
    s->liveness = (tr_topo_probe_t){true, true, "/health/live", 10000, 1000, 0, 3, 1};
    s->readiness = (tr_topo_probe_t){true, true, "/health/ready", 5000, 1000, 0, 1, 1};
    if (tr_config_get_object(t->cfg, o, "probes", &probes) ||
        tr_config_check_keys(t->cfg, probes, keys) ||
        parse_probe(t, probes, "liveness", false, &s->liveness) ||
        parse_probe(t, probes, "readiness", true, &s->readiness))
        return TR_ECONFIG;
    return 0;
}

static int parse_signal(tr_topology_t *t, const json_t *stop, int *sig)
{
    const char *name;
    *sig = SIGTERM;
    if (tr_config_get_string(t->cfg, stop, "signal", NULL, &name)) return TR_ECONFIG;
    if (!name) return 0;
    for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
        if (!strcasecmp(name, signals[i].name) || !strcasecmp(name, signals[i].name + 3))
            return *sig = signals[i].sig, 0;
    return tr_config_fail(t->cfg, stop, "signal",
                          "unknown signal \"%.40s\" (expected SIGTERM, SIGINT, SIGQUIT, SIGKILL, "
                          "SIGHUP, SIGUSR1 or SIGUSR2; the SIG prefix is optional)",
                          name);
}

static int parse_lifecycle(tr_topology_t *t, const json_t *o, tr_topo_service_t *s)
{
    static const char *const rkeys[] = {"policy", "backoff_base", "backoff_max", NULL};
    static const char *const skeys[] = {"signal", "grace", NULL};
    tr_config_t *cfg = t->cfg;
    json_t *r = json_object_get(o, "restart"), *stop;
    s->restart = TR_TOPO_RESTART_ALWAYS;
    s->backoff_base_ms = 100;
    s->backoff_max_ms = 10000;
    if (json_is_object(r)) {
        if (tr_config_check_keys(cfg, r, rkeys) ||
            tr_config_get_enum(cfg, r, "policy", restart_names, 0, &s->restart) ||
            tr_config_get_duration(cfg, r, "backoff_base", 100, &s->backoff_base_ms) ||
            tr_config_get_duration(cfg, r, "backoff_max", 10000, &s->backoff_max_ms))
            return TR_ECONFIG;
        if (s->backoff_base_ms == 0)
            return tr_config_fail(cfg, r, "backoff_base", "must be at least 1ms");
        if (s->backoff_max_ms < s->backoff_base_ms)
            return tr_config_fail(cfg, r, "backoff_max", "must be at least backoff_base");
    } else if (r && !json_is_null(r) && !json_is_string(r)) {
        return tr_config_fail(cfg, o, "restart",
                              "expected always, on-failure or never, or {policy, backoff_base, "
                              "backoff_max}");
    } else if (tr_config_get_enum(cfg, o, "restart", restart_names, 0, &s->restart)) {
        return TR_ECONFIG;
    }
    if (tr_config_get_object(cfg, o, "stop", &stop) || tr_config_check_keys(cfg, stop, skeys) ||
        parse_signal(t, stop, &s->stop_signal) ||
        tr_config_get_duration(cfg, stop, "grace", 10000, &s->stop_grace_ms))
        return TR_ECONFIG;
    return 0;
}

static int parse_service(tr_topology_t *t, const json_t *services, const char *name,
                         const json_t *o, tr_topo_service_t *s)
{
    static const char *const keys[] = {"command", "args",    "cwd",     "env",  "replicas",
                                       "port",    "version", "context", "owns", "depends_on",
                                       "probes",  "restart", "stop",    NULL};
    s->name = name;
    t->src[s->index].obj = o;
    t->src[s->index].services = services;
    if (check_name(t, services, name)) return TR_ECONFIG;
    if (!json_is_object(o) && !json_is_null(o))
        return tr_config_fail(t->cfg, services, name,
                              "a service is a mapping of its settings (command, args, ...)");
    if (json_is_null(o)) o = NULL;
    t->src[s->index].obj = o;
    if (tr_config_check_keys(t->cfg, o, keys) || parse_command(t, o, s) || parse_port(t, o, s) ||
        parse_meta(t, o, s) || parse_deps(t, o, s) || parse_probes(t, o, s) ||
        parse_lifecycle(t, o, s))
        return TR_ECONFIG;
    return 0;
}

/* ---- across services */

static tr_topo_service_t *find(const tr_topology_t *t, const char *name)
{
    for (size_t i = 0; i < t->nservices; i++)
        if (!strcmp(t->services[i].name, name)) return &t->services[i];
    return NULL;
}

static int dep_fail(tr_topology_t *t, const tr_topo_service_t *s, size_t i, const char *msg,
                    const char *detail)
{
    return tr_config_fail(t->cfg, t->src[s->index].dep_obj[i], t->src[s->index].dep_key[i], "%s%s",
                          msg, detail);
}

static int check_deps(tr_topology_t *t)
{
    for (size_t k = 0; k < t->nservices; k++) {
        const tr_topo_service_t *s = &t->services[k];
        for (size_t i = 0; i < s->ndeps; i++) {
            const char *dn = s->deps[i].service;
            char msg[256];
            if (!strcmp(dn, s->name))
                return dep_fail(t, s, i, "a service cannot depend on itself", "");
            for (size_t j = 0; j < i; j++)
                if (!strcmp(s->deps[j].service, dn))
                    return dep_fail(t, s, i, "this service is already listed", "");
            if (find(t, dn)) continue;
            const char *best = NULL;
            int bd = 3;
            for (size_t j = 0; j < t->nservices; j++) {
                int d = distance(dn, t->services[j].name);
                if (d < bd) bd = d, best = t->services[j].name;
            }
            snprintf(msg, sizeof(msg), "no service named \"%.63s\" in `services`", dn);
            char hint[96] = "";
            if (best) snprintf(hint, sizeof(hint), " (did you mean \"%s\"?)", best);
            return dep_fail(t, s, i, msg, hint);
        }
    }
    return 0;
}

/* Depth-first search for a cycle; `stack` holds the path from the search's root. */
static int visit(tr_topology_t *t, size_t v, char *color, size_t *stack, size_t depth)
{
    const tr_topo_service_t *s = &t->services[v];
    color[v] = 1;
    stack[depth] = v;
    for (size_t i = 0; i < s->ndeps; i++) {
        size_t w = (size_t)(find(t, s->deps[i].service) - t->services);
        if (color[w] == 2) continue;
        if (color[w] == 0) {
            if (visit(t, w, color, stack, depth + 1)) return TR_ECONFIG;
            continue;
        }
        /* A back edge v → w closes the cycle w → ... → v → w. */
        size_t from = depth;
        while (stack[from] != w)
            from--;
        json_t *names = json_array();
        for (size_t j = from; j <= depth; j++)
            json_array_append_new(names, json_string(t->services[stack[j]].name));
        char *path = tr_strdup("");
        size_t k;
        json_t *n;
        json_array_foreach(names, k, n)
        {
            char *next = tr_malloc(strlen(path) + json_string_length(n) + 8);
            sprintf(next, "%s%s \u2192 ", path, json_string_value(n));
            free(path);
            path = next;
        }
        json_decref(names);
        char *msg = tr_malloc(strlen(path) + 128);
        sprintf(msg, "dependency cycle %s%s: ", path, t->services[w].name);
        int rc = dep_fail(t, s, i, msg,
                          "services start dependencies first, so a cycle has no start order; "
                          "remove one of these dependencies");
        free(path);
        free(msg);
        return rc;
    }
    color[v] = 2;
    return 0;
}

static int check_cycles(tr_topology_t *t)
{
    char *color = tr_calloc(t->nservices + 1, 1);
    size_t *stack = tr_calloc(t->nservices + 1, sizeof(size_t));
    int rc = 0;
    for (size_t v = 0; v < t->nservices && !rc; v++)
        if (!color[v]) rc = visit(t, v, color, stack, 0);
    free(color);
    free(stack);
    return rc;
}

/* Kahn's algorithm, always taking the first ready service in file order. */
static void sort_start_order(tr_topology_t *t)
{
    bool *placed = tr_calloc(t->nservices + 1, sizeof(bool));
    t->order = tr_calloc(t->nservices + 1, sizeof(*t->order));
    for (size_t n = 0; n < t->nservices; n++) {
        for (size_t v = 0; v < t->nservices; v++) {
            const tr_topo_service_t *s = &t->services[v];
            bool ready = !placed[v];
            for (size_t i = 0; ready && i < s->ndeps; i++)
                ready = placed[find(t, s->deps[i].service) - t->services];
            if (!ready) continue;
            placed[v] = true;
            t->order[n] = s;
            break;
        }
    }
    free(placed);
}

static int port_of(const char *addr)
{
    tr_http_endpoint_t ep;
    if (!addr || tr_http_endpoint_parse(&ep, addr)) return 0;
    if (ep.addr.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ep.addr)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ep.addr)->sin_port);
}

/* "port 9000" or "ports 9000-9002": the ports a service's replicas listen on. */
static const char *range_text(char *buf, size_t n, unsigned lo, unsigned hi)
{
    if (lo == hi)
        snprintf(buf, n, "port %u", lo);
    else
        snprintf(buf, n, "ports %u-%u", lo, hi);
    return buf;
}

static int check_ports(tr_topology_t *t)
{
    char r[32], r2[32];
    const char *cp_names[] = {"control_plane.listen", "control_plane.otlp", "control_plane.zipkin"};
    int cp_ports[] = {port_of(t->cp.listen), port_of(t->cp.otlp), port_of(t->cp.zipkin)};
    for (size_t j = 0; j < t->nservices; j++) {
        const tr_topo_service_t *b = &t->services[j];
        if (b->port_auto || !b->replicas) continue;
        unsigned blo = b->port, bhi = b->port + b->replicas - 1;
        for (int k = 0; k < 3; k++)
            if (cp_ports[k] && (unsigned)cp_ports[k] >= blo && (unsigned)cp_ports[k] <= bhi)
                return tr_config_fail(t->cfg, t->src[j].obj, "port",
                                      "%s includes %s's port %d; move one of them",
                                      range_text(r, sizeof(r), blo, bhi), cp_names[k], cp_ports[k]);
        for (size_t i = 0; i < j; i++) {
            const tr_topo_service_t *a = &t->services[i];
            if (a->port_auto || !a->replicas) continue;
            unsigned alo = a->port, ahi = a->port + a->replicas - 1;
            if (blo <= ahi && alo <= bhi)
                return tr_config_fail(t->cfg, t->src[j].obj, "port",
                                      "%s (port + one per replica) overlaps %s's %s; give each "
                                      "service its own range, or use port: auto",
                                      range_text(r, sizeof(r), blo, bhi), a->name,
                                      range_text(r2, sizeof(r2), alo, ahi));
        }
    }
    return 0;
}

/* ---- top level */

static int get_addr(tr_topology_t *t, const json_t *o, const char *key, const char *def,
                    bool may_be_off, const char **out)
{
    tr_http_endpoint_t ep;
    if (tr_config_get_string(t->cfg, o, key, def, out)) return TR_ECONFIG;
    if (may_be_off && !strcmp(*out, "off")) return *out = NULL, 0;
    if (tr_http_endpoint_parse(&ep, *out) == 0) return 0;
    return tr_config_fail(t->cfg, o, key, "expected ip:port such as %s or [::1]:%d%s", def,
                          port_of(def), may_be_off ? ", or off" : "");
}

static int parse_control_plane(tr_topology_t *t, const json_t *root)
{
    static const char *const keys[] = {"listen", "data_dir", "otlp", "zipkin", NULL};
    json_t *o;
    const char *dir;
    if (tr_config_get_object(t->cfg, root, "control_plane", &o) ||
        tr_config_check_keys(t->cfg, o, keys) ||
        get_addr(t, o, "listen", DEFAULT_LISTEN, false, &t->cp.listen) ||
        get_addr(t, o, "otlp", DEFAULT_OTLP, true, &t->cp.otlp) ||
        get_addr(t, o, "zipkin", DEFAULT_ZIPKIN, true, &t->cp.zipkin) ||
        tr_config_get_string(t->cfg, o, "data_dir", DEFAULT_DATA_DIR, &dir))
        return TR_ECONFIG;
    if (!*dir) return tr_config_fail(t->cfg, o, "data_dir", "the data directory is empty");
    t->cp.data_dir = resolve(t, dir);
    return 0;
}

static int parse_gateway(tr_topology_t *t, const json_t *root)
{
    json_t *g = json_object_get(root, "gateway");
    const char *file = NULL;
    if (!g || json_is_null(g) || json_is_false(g)) return 0;
    if (json_is_string(g)) {
        if (tr_config_get_string(t->cfg, root, "gateway", NULL, &file)) return TR_ECONFIG;
    } else if (!json_is_object(g)) {
        return tr_config_fail(t->cfg, root, "gateway",
                              "expected the gateway config inline (a mapping, see "
                              "docs/gateway.md) or {file: gateway.yaml}");
    } else if (json_object_get(g, "file")) {
        if (json_object_size(g) != 1)
            return tr_config_fail(t->cfg, g, "file",
                                  "give either {file: path} or the gateway config inline, not "
                                  "both");
        if (tr_config_get_string(t->cfg, g, "file", NULL, &file)) return TR_ECONFIG;
    } else {
        t->gateway = g;
        return 0;
    }
    if (!file || !*file)
        return tr_config_fail(t->cfg, json_is_string(g) ? root : g,
                              json_is_string(g) ? "gateway" : "file", "the file name is empty");
    t->gateway_file = resolve(t, file);
    return 0;
}

static int compile(tr_topology_t *t)
{
    static const char *const keys[] = {"services", "gateway", "sagas", "control_plane", NULL};
    json_t *root = tr_config_root(t->cfg), *services, *o;
    if (tr_config_check_keys(t->cfg, root, keys) || parse_control_plane(t, root) ||
        parse_gateway(t, root) || tr_config_get_object(t->cfg, root, "services", &services))
        return TR_ECONFIG;
    t->sagas = json_object_get(root, "sagas");
    if (json_is_null(t->sagas)) t->sagas = NULL;
    size_t n = json_object_size(services);
    if (n > TR_TOPO_MAX_SERVICES)
        return tr_config_fail(t->cfg, root, "services", "more than %d services",
                              TR_TOPO_MAX_SERVICES);
    t->services = tr_calloc(n + 1, sizeof(*t->services));
    t->src = tr_calloc(n + 1, sizeof(*t->src));
    const char *name;
    json_object_foreach(services, name, o)
    {
        tr_topo_service_t *s = &t->services[t->nservices];
        s->index = t->nservices++;
        s->line = s->col = 0;
        if (parse_service(t, services, name, o, s)) return TR_ECONFIG;
        tr_config_pos(t->cfg, o, &s->line, &s->col);
    }
    if (check_deps(t) || check_cycles(t) || check_ports(t)) return TR_ECONFIG;
    sort_start_order(t);
    return 0;
}

int tr_topology_load(const char *path, const char *text, tr_topology_t **out, char *err,
                     size_t errlen)
{
    tr_config_t *cfg;
    *out = NULL;
    int rc = text ? tr_config_load_string(path, text, strlen(text), &cfg, err, errlen)
                  : tr_config_load_file(path, &cfg, err, errlen);
    if (rc) return rc;
    tr_topology_t *t = tr_calloc(1, sizeof(*t));
    t->cfg = cfg;
    t->base = base_dir(path);
    t->owned = json_array();
    if (compile(t)) {
        if (err && errlen) snprintf(err, errlen, "%s", tr_config_error(cfg));
        tr_topology_free(t);
        return TR_ECONFIG;
    }
    *out = t;
    return 0;
}

void tr_topology_free(tr_topology_t *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->nservices; i++) {
        free(t->services[i].args);
        free(t->services[i].env);
        free(t->services[i].owns);
        free(t->services[i].deps);
        free(t->src[i].dep_obj);
        free(t->src[i].dep_key);
    }
    free(t->services);
    free(t->src);
    free(t->order);
    free(t->base);
    json_decref(t->owned);
    tr_config_free(t->cfg);
    free(t);
}

/* ---- accessors */

size_t tr_topology_services(const tr_topology_t *t, const tr_topo_service_t **out)
{
    *out = t->services;
    return t->nservices;
}

const tr_topo_service_t *tr_topology_service(const tr_topology_t *t, const char *name)
{
    return find(t, name);
}

const tr_topo_service_t *const *tr_topology_start_order(const tr_topology_t *t, size_t *n)
{
    *n = t->nservices;
    return t->order;
}

const json_t *tr_topology_gateway(const tr_topology_t *t)
{
    return t->gateway;
}

const char *tr_topology_gateway_file(const tr_topology_t *t)
{
    return t->gateway_file;
}

const json_t *tr_topology_sagas(const tr_topology_t *t)
{
    return t->sagas;
}

const tr_topo_control_plane_t *tr_topology_control_plane(const tr_topology_t *t)
{
    return &t->cp;
}

tr_config_t *tr_topology_config(const tr_topology_t *t)
{
    return t->cfg;
}

const char *tr_topo_restart_name(int restart)
{
    if (restart < 0 || restart > TR_TOPO_RESTART_NEVER) return "?";
    return restart_names[restart];
}

const char *tr_topo_signal_name(int sig)
{
    for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
        if (signals[i].sig == sig) return signals[i].name;
    return NULL;
}

/* ---- effective config */

static json_t *strings_json(const char *const *s, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(s[i]));
    return a;
}

static json_t *probe_json(const tr_topo_probe_t *p, bool readiness)
{
    if (!p->enabled) return json_false();
    json_t *o = json_object();
    if (p->http)
        json_object_set_new(o, "http", json_string(p->path));
    else
        json_object_set_new(o, "tcp", json_true());
    json_object_set_new(o, "period", dur_json(p->period_ms));
    json_object_set_new(o, "timeout", dur_json(p->timeout_ms));
    json_object_set_new(o, "initial_delay", dur_json(p->initial_delay_ms));
    json_object_set_new(o, "failure_threshold", json_integer(p->failure_threshold));
    if (readiness) json_object_set_new(o, "success_threshold", json_integer(p->success_threshold));
    return o;
}

static json_t *service_json(const tr_topo_service_t *s)
{
    json_t *env = json_object(), *deps = json_array();
    for (size_t i = 0; i < s->nenv; i++) {
        const char *eq = strchr(s->env[i], '=');
        char *k = tr_strndup(s->env[i], (size_t)(eq - s->env[i]));
        json_object_set_new(env, k, json_string(eq + 1));
        free(k);
    }
    for (size_t i = 0; i < s->ndeps; i++)
        json_array_append_new(deps, json_pack("{s:s, s:s}", "service", s->deps[i].service, "mode",
                                              s->deps[i].async ? "async" : "sync"));
    json_t *o = json_object();
    json_object_set_new(o, "command", json_string(s->command));
    json_object_set_new(o, "args", strings_json(s->args, s->nargs));
    json_object_set_new(o, "cwd", json_string(s->cwd));
    json_object_set_new(o, "env", env);
    json_object_set_new(o, "replicas", json_integer(s->replicas));
    json_object_set_new(o, "port", s->port_auto ? json_string("auto") : json_integer(s->port));
    json_object_set_new(o, "version", str_or_null(s->version));
    json_object_set_new(o, "context", str_or_null(s->context));
    json_object_set_new(o, "owns", strings_json(s->owns, s->nowns));
    json_object_set_new(o, "depends_on", deps);
    json_object_set_new(o, "probes",
                        json_pack("{s:o, s:o}", "liveness", probe_json(&s->liveness, false),
                                  "readiness", probe_json(&s->readiness, true)));
    json_object_set_new(o, "restart",
                        json_pack("{s:s, s:o, s:o}", "policy", tr_topo_restart_name(s->restart),
                                  "backoff_base", dur_json(s->backoff_base_ms), "backoff_max",
                                  dur_json(s->backoff_max_ms)));
    json_object_set_new(o, "stop",
                        json_pack("{s:s, s:o}", "signal", tr_topo_signal_name(s->stop_signal),
                                  "grace", dur_json(s->stop_grace_ms)));
    return o;
}

json_t *tr_topology_effective(const tr_topology_t *t)
{
    json_t *services = json_object(), *order = json_array();
    for (size_t i = 0; i < t->nservices; i++) {
        json_object_set_new(services, t->services[i].name, service_json(&t->services[i]));
        json_array_append_new(order, json_string(t->order[i]->name));
    }
    json_t *gw = json_null();
    if (t->gateway) gw = json_deep_copy(t->gateway);
    if (t->gateway_file) gw = json_pack("{s:s}", "file", t->gateway_file);
    return json_pack("{s:{s:s, s:s, s:o, s:o}, s:o, s:o, s:o, s:o}", "control_plane", "listen",
                     t->cp.listen, "data_dir", t->cp.data_dir, "otlp", str_or_null(t->cp.otlp),
                     "zipkin", str_or_null(t->cp.zipkin), "services", services, "start_order",
                     order, "gateway", gw, "sagas",
                     t->sagas ? json_deep_copy(t->sagas) : json_null());
}

/* ---- templates */

int tr_topology_expand(const char *tmpl, const char *const *vars, char *out, size_t n)
{
    size_t len = 0;
#define PUT(s, l)                                                                                  \
    do {                                                                                           \
        if (len + (l) >= n) return TR_ETOOLARGE;                                                   \
        memcpy(out + len, (s), (l));                                                               \
        len += (l);                                                                                \
    } while (0)
    if (n == 0) return TR_ETOOLARGE;
    for (const char *p = tmpl; *p;) {
        const char *end = p[0] == '$' && p[1] == '{' ? strchr(p + 2, '}') : NULL;
        if (p[0] == '$' && p[1] == '$') {
            PUT("$", 1);
            p += 2;
        } else if (end) {
            size_t nl = (size_t)(end - p - 2);
            const char *val = NULL;
            for (size_t i = 0; vars && vars[i] && !val; i++)
                if (!strncmp(vars[i], p + 2, nl) && vars[i][nl] == '=') val = vars[i] + nl + 1;
            if (!val) return TR_ENOTFOUND;
            PUT(val, strlen(val));
            p = end + 1;
        } else {
            PUT(p, 1);
            p++;
        }
    }
#undef PUT
    out[len] = '\0';
    return (int)len;
}
