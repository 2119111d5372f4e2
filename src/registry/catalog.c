/* Consul's agent, catalog and health endpoints: services, checks and their watchers. */
#include "registry/catalog.h"

#include "core/buf.h"
#include "core/map.h"
#include "core/mem.h"
#include "registry/blocking.h"
#include "registry/checker.h"
#include "registry/filter.h"
#include "trellis/discovery_hub.h"
#include "trellis/error.h"
#include "trellis/http_json.h"
#include "trellis/log.h"
#include "trellis/metrics.h"

#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* How often services whose check stayed critical too long are reaped. */
#define SWEEP_MS     1000
#define MAX_BODY     (1024 * 1024)
#define MAINT_PREFIX "_service_maintenance:"
#define MAINT_NOTES                                                                                \
    "Maintenance mode is enabled for this service, but no reason was provided. This is a "         \
    "default message."

static const char *const status_names[] = {"passing", "warning", "critical"};

typedef struct check_s check_t;
typedef struct group_s group_t;

/* A registered service. `def` holds Consul's AgentService fields, normalised. */
typedef struct service_s {
    char *id, *name;
    json_t *def;
    uint64_t create_index, modify_index;
    struct service_s *next, *prev; /* all services, sorted by ID */
    struct service_s *gnext;       /* its group's services, sorted by ID */
    group_t *group;
    check_t *checks; /* its checks in registration order, through svc_next */
} service_t;

/* A TTL check's timer; freed in its close callback, after the check may be gone. */
typedef struct ttl_s {
    uv_timer_t timer;
    check_t *check;
} ttl_t;

/* A check. `def` is its normalised definition (durations in ms), as stored. */
struct check_s {
    tr_catalog_t *cat;
    char *id, *service_id; /* service_id NULL for a node-level check */
    char *service_name;    /* its service's name, "" for node-level; set when linked */
    json_t *def;
    const char *type; /* "ttl", "http", "tcp", "maintenance"; points into def */
    tr_check_status_t status;
    char *output;
    uint64_t create_index, modify_index;
    uint64_t ttl_ms, dereg_ms, critical_since;
    unsigned successes, failures;
    ttl_t *ttl;
    uint64_t seq;         /* position in registration order */
    service_t *svc;       /* the service it is linked to; NULL for node-level */
    check_t *next, *prev; /* all checks, in registration order */
    check_t *svc_next;    /* svc's checks, or the "" group's node-level checks */
};

/*
 * A node registered through /v1/catalog/register rather than this agent. `doc` is
 * {ID, Address, Meta, Services: {id: AgentService}, Checks: {id: HealthCheck}}, as stored.
 */
typedef struct xnode_s {
    char *name;
    json_t *doc;
    struct xnode_s *next;
} xnode_t;

typedef enum {
    Q_HEALTH_NODE,
    Q_CAT_SERVICES,
    Q_CAT_SERVICE,
    Q_CAT_NODES,
    Q_CAT_NODE,
    Q_HEALTH_SERVICE,
    Q_HEALTH_CHECKS,
    Q_HEALTH_STATE,
} qkind_t;

/* What a read asked for; strings live in the request's memory. */
typedef struct query_s {
    qkind_t kind;
    const char *name;  /* service, node, or state name */
    const char **tags; /* ?tag= values (all must match), in request memory */
    size_t ntags;
    bool passing;
    int state;                 /* health/state: a tr_check_status_t, or -1 for any */
    const tr_filter_t *filter; /* ?filter=, or NULL; freed with the request or its watcher */
} query_t;

typedef struct watcher_s {
    tr_waiter_t base; /* parked on its group's list, or the catalog's */
    tr_catalog_t *cat;
    query_t q;
} watcher_t;

/* A rendered answer and the scope index it was rendered at. */
typedef struct rendered_s {
    char *body; /* heap; NULL when nothing is cached */
    size_t len;
    uint64_t index;
} rendered_t;

enum { R_HEALTH, R_HEALTH_PASSING, R_CATALOG, R_COUNT };

/*
 * Everything under one service name ("" for node-level): its services, its tombstone, the
 * watchers scoped to it and its cached answers. Groups live until the catalog closes.
 */
struct group_s {
    char *name;
    service_t *services; /* sorted by ID, through gnext */
    check_t *checks;     /* "" only: checks linked to no service, through svc_next */
    uint64_t tomb;       /* index of the last deregistration from it; 0 for none */
    bool has_tomb;
    tr_waiter_t *watchers;
    rendered_t cache[R_COUNT];
};

struct tr_catalog_s {
    uv_loop_t *loop;
    tr_store_t *store;
    char *node, *node_id, *address, *dc;
    service_t *services, *services_tail; /* sorted by ID unless services_unsorted */
    bool services_unsorted;
    check_t *checks, *checks_tail;
    tr_map_t services_by_id, checks_by_id, groups; /* keys borrowed from the values */
    size_t nservices, nchecks[3];
    uint64_t check_seq;
    xnode_t *xnodes;
    service_t consul;      /* the "consul" service a Consul server has in the catalog */
    tr_waiter_t *watchers; /* watchers of unscoped queries */
    tr_checker_t *checker;
    uv_timer_t *sweep;
    tr_discovery_hub_t *hub;           /* in-process discovery clients, or NULL */
    tr_catalog_check_cb on_check_down; /* sessions: a check went critical or away */
    void *on_check_down_data;
    uv_async_t *hub_want;
};

/* A write collecting its JSON body. Lives in the request's memory; `body` on the heap. */
typedef void (*body_fn)(tr_catalog_t *cat, tr_http_req_t *req, json_t *body, const char *arg);
typedef struct body_s {
    tr_catalog_t *cat;
    body_fn fn;
    const char *arg;
} body_t;

static tr_series_t *m_services, *m_checks[3], *m_changes[3], *m_watchers;

/* ---- small helpers */

/* Consul decodes bodies case-insensitively and also accepts snake_case keys. */
static bool key_eq(const char *a, const char *b)
{
    for (;;) {
        while (*a == '_')
            a++;
        while (*b == '_')
            b++;
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return false;
        if (!*a) return true;
        a++;
        b++;
    }
}

static json_t *jget(json_t *o, const char *k)
{
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        if (key_eq(key, k)) return json_is_null(v) ? NULL : v;
    }
    return NULL;
}

static const char *dstr(json_t *def, const char *k)
{
    const char *s = json_string_value(json_object_get(def, k));
    return s ? s : "";
}

static uint64_t dint(json_t *def, const char *k)
{
    return (uint64_t)json_integer_value(json_object_get(def, k));
}

static int parse_status(const char *s)
{
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, status_names[i])) return i;
    return -1;
}

/* Go's time.ParseDuration, in milliseconds (sub-millisecond parts round up). */
static bool parse_duration(const char *s, uint64_t *ms)
{
    double total = 0;
    if (!strcmp(s, "0")) {
        *ms = 0;
        return true;
    }
    if (!*s) return false;
    while (*s) {
        char *end;
        if (!isdigit((unsigned char)*s) && *s != '.') return false;
        double v = strtod(s, &end);
        if (end == s) return false;
        s = end;
        static const struct {
            const char *u;
            double ms;
        } units[] = {{"ns", 1e-6}, {"us", 1e-3}, {"\xc2\xb5s", 1e-3}, {"ms", 1},
                     {"s", 1000},  {"m", 60000}, {"h", 3600000}};
        size_t i;
        for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
            size_t n = strlen(units[i].u);
            if (!strncmp(s, units[i].u, n) && (units[i].u[n - 1] != 'm' || s[n] != 's')) {
                total += v * units[i].ms;
                s += n;
                break;
            }
        }
        if (i == sizeof(units) / sizeof(units[0])) return false;
    }
    *ms = (uint64_t)(total + 0.999999);
    return true;
}

static char *format_duration(uint64_t ms, char *buf, size_t n)
{
    if (!ms)
        snprintf(buf, n, "%s", "");
    else if (ms % 1000)
        snprintf(buf, n, "%llums", (unsigned long long)ms);
    else
        snprintf(buf, n, "%llus", (unsigned long long)(ms / 1000));
    return buf;
}

static void bad_request(tr_http_req_t *req, const char *detail)
{
    tr_http_res_problem(req, 400, "bad-request", "Invalid request", "%s", detail);
}

/* Consul keeps at most 4 KiB of a check's output. */
#define MAX_OUTPUT 4096

/* Length of the valid UTF-8 sequence at s, or 0 when it is not one. */
static size_t utf8_len(const unsigned char *s)
{
    size_t n = s[0] < 0x80             ? 1
               : (s[0] & 0xe0) == 0xc0 ? 2
               : (s[0] & 0xf0) == 0xe0 ? 3
               : (s[0] & 0xf8) == 0xf0 ? 4
                                       : 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    return n;
}

/*
 * A copy of text from a client or a checked endpoint that JSON can carry: invalid UTF-8
 * bytes become '?', and it is cut (on a character boundary) at MAX_OUTPUT bytes.
 */
static char *clean_text(const char *in)
{
    size_t len = strlen(in);
    char *out = tr_malloc((len < MAX_OUTPUT ? len : MAX_OUTPUT) + 1), *o = out;
    const unsigned char *p = (const unsigned char *)in;
    while (*p) {
        size_t n = utf8_len(p);
        if ((size_t)(o - out) + (n ? n : 1) > MAX_OUTPUT) break;
        if (!n) {
            *o++ = '?';
            p++;
            continue;
        }
        memcpy(o, p, n);
        o += n;
        p += n;
    }
    *o = '\0';
    return out;
}

/* ---- lookups */

static service_t *find_service(const tr_catalog_t *cat, const char *id)
{
    return tr_map_get(&cat->services_by_id, id);
}

static check_t *find_check(const tr_catalog_t *cat, const char *id)
{
    return tr_map_get(&cat->checks_by_id, id);
}

static group_t *find_group(const tr_catalog_t *cat, const char *name)
{
    return tr_map_get(&cat->groups, name);
}

/* The group of service name `name`, created empty on first use. */
static group_t *get_group(tr_catalog_t *cat, const char *name)
{
    group_t *g = find_group(cat, name);
    if (!g) {
        g = tr_calloc(1, sizeof(*g));
        g->name = tr_strdup(name);
        tr_map_put(&cat->groups, g->name, g);
    }
    return g;
}

static void drop_cache(group_t *g)
{
    for (int i = 0; i < R_COUNT; i++) {
        free(g->cache[i].body);
        g->cache[i].body = NULL;
    }
}

static void group_free(group_t *g)
{
    drop_cache(g);
    free(g->name);
    free(g);
}

/* The name of the service a check belongs to; "" for node-level checks. */
static const char *check_service_name(const tr_catalog_t *cat, const check_t *c)
{
    (void)cat;
    return c->service_name ? c->service_name : "";
}

static int cmp_service_id(const void *a, const void *b)
{
    return strcmp((*(service_t *const *)a)->id, (*(service_t *const *)b)->id);
}

/*
 * Answers list services sorted by ID, the order Consul's state store lists them in.
 * Registration appends, and the list is sorted here, once, before the next answer that walks
 * it: keeping it sorted on every insert cost a walk of the whole list per registration.
 */
static void sort_services(tr_catalog_t *cat)
{
    if (!cat->services_unsorted) return;
    cat->services_unsorted = false;
    service_t **all = tr_malloc((cat->nservices + 1) * sizeof(*all)), *prev = NULL;
    size_t n = 0;
    for (service_t *s = cat->services; s; s = s->next)
        all[n++] = s;
    qsort(all, n, sizeof(*all), cmp_service_id);
    cat->services = n ? all[0] : NULL;
    for (size_t i = 0; i < n; prev = all[i++]) {
        all[i]->prev = prev;
        all[i]->next = i + 1 < n ? all[i + 1] : NULL;
    }
    cat->services_tail = prev;
    free(all);
}

static void link_service(tr_catalog_t *cat, service_t *sv)
{
    sv->next = NULL;
    sv->prev = cat->services_tail;
    if (sv->prev)
        sv->prev->next = sv;
    else
        cat->services = sv;
    cat->services_tail = sv;
    cat->services_unsorted = true;
    sv->group = get_group(cat, sv->name);
    service_t **g = &sv->group->services;
    while (*g && strcmp((*g)->id, sv->id) < 0)
        g = &(*g)->gnext;
    sv->gnext = *g;
    *g = sv;
    tr_map_put(&cat->services_by_id, sv->id, sv);
    cat->nservices++;
}

static void set_tomb(tr_catalog_t *cat, const char *name, uint64_t idx)
{
    group_t *g = get_group(cat, name);
    g->tomb = idx;
    g->has_tomb = true;
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/*
 * The index of a query's answer: the highest ModifyIndex among the services and checks it
 * can show plus the tombstones of ones deregistered from it, so it moves exactly when the
 * answer can have changed. Node-level checks appear in every service's health answer.
 */
static uint64_t checks_index(const check_t *c, uint64_t idx)
{
    for (; c; c = c->svc_next)
        idx = max_u64(idx, c->modify_index);
    return idx;
}

/* The highest index among a group's services, their checks and its tombstone. */
static uint64_t group_index(const group_t *g)
{
    if (!g) return 0;
    uint64_t idx = checks_index(g->checks, g->tomb);
    for (const service_t *s = g->services; s; s = s->gnext)
        idx = checks_index(s->checks, max_u64(idx, s->modify_index));
    return idx;
}

static uint64_t scope_index(const tr_catalog_t *cat, const char *name)
{
    uint64_t idx = 0;
    if (name) {
        idx = max_u64(group_index(find_group(cat, name)), group_index(find_group(cat, "")));
        return idx ? idx : tr_store_index(cat->store);
    }
    for (service_t *s = cat->services; s; s = s->next)
        idx = max_u64(idx, s->modify_index);
    for (check_t *c = cat->checks; c; c = c->next)
        idx = max_u64(idx, c->modify_index);
    size_t pos = 0;
    void *v;
    while (tr_map_next(&cat->groups, &pos, NULL, &v))
        idx = max_u64(idx, ((group_t *)v)->tomb);
    return idx ? idx : tr_store_index(cat->store);
}

static const char *query_scope(const query_t *q)
{
    return q->kind == Q_CAT_SERVICE || q->kind == Q_HEALTH_SERVICE || q->kind == Q_HEALTH_CHECKS
               ? q->name
               : NULL;
}

static uint64_t query_index(const tr_catalog_t *cat, const query_t *q)
{
    return scope_index(cat, query_scope(q));
}

/* ---- rendering */

static json_t *tagged_addresses(const tr_catalog_t *cat)
{
    return json_pack("{s:s, s:s, s:s, s:s}", "lan", cat->address, "lan_ipv4", cat->address, "wan",
                     cat->address, "wan_ipv4", cat->address);
}

static json_t *node_json(const tr_catalog_t *cat)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:o, s:{}, s:i, s:i}", "ID", cat->node_id, "Node",
                     cat->node, "Address", cat->address, "Datacenter", cat->dc, "TaggedAddresses",
                     tagged_addresses(cat), "Meta", "CreateIndex", 1, "ModifyIndex", 1);
}

/* Consul's AgentService. With `indexes`, the health endpoint's form with Create/ModifyIndex. */
static json_t *service_json(const tr_catalog_t *cat, const service_t *s, bool indexes)
{
    json_t *o = json_deep_copy(s->def);
    json_object_set_new(o, "Datacenter", json_string(cat->dc));
    if (indexes) {
        json_object_set_new(o, "CreateIndex", json_integer((json_int_t)s->create_index));
        json_object_set_new(o, "ModifyIndex", json_integer((json_int_t)s->modify_index));
    }
    return o;
}

/* Consul's CheckDefinition summary of an HTTP or TCP check; {} for the others. */
static json_t *definition_json(const check_t *c)
{
    char iv[32], to[32], dr[32];
    if (strcmp(c->type, "http") != 0 && strcmp(c->type, "tcp") != 0) return json_object();
    json_t *hdr = json_object_get(c->def, "Header");
    return json_pack("{s:s, s:s, s:O, s:s, s:s, s:s, s:s, s:s}", "HTTP", dstr(c->def, "HTTP"),
                     "Method", dstr(c->def, "Method"), "Header", hdr ? hdr : json_null(), "Body",
                     dstr(c->def, "Body"), "TCP", dstr(c->def, "TCP"), "Interval",
                     format_duration(dint(c->def, "Interval"), iv, sizeof(iv)), "Timeout",
                     format_duration(dint(c->def, "Timeout"), to, sizeof(to)),
                     "DeregisterCriticalServiceAfter",
                     format_duration(c->dereg_ms, dr, sizeof(dr)));
}

/* Consul's AgentCheck / HealthCheck. */
static json_t *check_json(const tr_catalog_t *cat, const check_t *c)
{
    service_t *s = c->service_id ? find_service(cat, c->service_id) : NULL;
    char iv[32], to[32];
    json_t *tags = s ? json_deep_copy(json_object_get(s->def, "Tags")) : json_array();
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o, s:s, s:s, s:s, s:i, s:o, "
                     "s:I, s:I}",
                     "Node", cat->node, "CheckID", c->id, "Name", dstr(c->def, "Name"), "Status",
                     status_names[c->status], "Notes", dstr(c->def, "Notes"), "Output", c->output,
                     "ServiceID", s ? s->id : "", "ServiceName", s ? s->name : "", "ServiceTags",
                     tags, "Type", c->type, "Interval",
                     format_duration(dint(c->def, "Interval"), iv, sizeof(iv)), "Timeout",
                     format_duration(dint(c->def, "Timeout"), to, sizeof(to)), "ExposedPort", 0,
                     "Definition", definition_json(c), "CreateIndex", (json_int_t)c->create_index,
                     "ModifyIndex", (json_int_t)c->modify_index);
}

/* The agent's own liveness check, which Consul reports for every node. */
static json_t *serf_json(const tr_catalog_t *cat)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:[], s:s, s:s, s:s, s:i, s:{}, "
                     "s:i, s:i}",
                     "Node", cat->node, "CheckID", "serfHealth", "Name", "Serf Health Status",
                     "Status", "passing", "Notes", "", "Output", "Agent alive and reachable",
                     "ServiceID", "", "ServiceName", "", "ServiceTags", "Type", "", "Interval", "",
                     "Timeout", "", "ExposedPort", 0, "Definition", "CreateIndex", 1, "ModifyIndex",
                     1);
}

static json_t *catalog_service_json(const tr_catalog_t *cat, const service_t *s)
{
    json_t *d = s->def;
    return json_pack("{s:s, s:s, s:s, s:s, s:o, s:{}, s:s, s:s, s:O, s:O, s:O, s:O, s:O, s:O, "
                     "s:I, s:I}",
                     "ID", cat->node_id, "Node", cat->node, "Address", cat->address, "Datacenter",
                     cat->dc, "TaggedAddresses", tagged_addresses(cat), "NodeMeta", "ServiceID",
                     s->id, "ServiceName", s->name, "ServiceTags", json_object_get(d, "Tags"),
                     "ServiceAddress", json_object_get(d, "Address"), "ServicePort",
                     json_object_get(d, "Port"), "ServiceMeta", json_object_get(d, "Meta"),
                     "ServiceWeights", json_object_get(d, "Weights"), "ServiceEnableTagOverride",
                     json_object_get(d, "EnableTagOverride"), "CreateIndex",
                     (json_int_t)s->create_index, "ModifyIndex", (json_int_t)s->modify_index);
}

static bool has_tag(const service_t *s, const char *tag)
{
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(s->def, "Tags"), i, v)
    {
        if (!strcmp(json_string_value(v), tag)) return true;
    }
    return false;
}

static bool has_tags(const service_t *s, const query_t *q)
{
    for (size_t i = 0; i < q->ntags; i++)
        if (!has_tag(s, q->tags[i])) return false;
    return true;
}

static bool check_applies(const check_t *c, const service_t *s)
{
    return !c->service_id || !strcmp(c->service_id, s->id);
}

/*
 * The checks that apply to `s`, in registration order: node-level checks and the service's
 * own, merged by sequence. The built-in "consul" service takes a registered service's checks
 * when one has its ID.
 */
static check_t *next_applying(const check_t **node, const check_t **own)
{
    while (*node && (*node)->service_id)
        *node = (*node)->svc_next;
    const check_t **pick = !*node ? own : !*own ? node : (*node)->seq < (*own)->seq ? node : own;
    const check_t *c = *pick;
    if (c) *pick = c->svc_next;
    return (check_t *)c;
}

static json_t *health_entry(const tr_catalog_t *cat, const service_t *s, bool passing)
{
    json_t *checks = json_array();
    json_array_append_new(checks, serf_json(cat));
    const group_t *ng = find_group(cat, "");
    const service_t *own = s == &cat->consul ? find_service(cat, s->id) : s;
    const check_t *node = ng ? ng->checks : NULL, *mine = own ? own->checks : NULL;
    for (check_t *c; (c = next_applying(&node, &mine));) {
        if (!check_applies(c, s)) continue;
        if (passing && c->status != TR_CHECK_PASSING) {
            json_decref(checks);
            return NULL;
        }
        json_array_append_new(checks, check_json(cat, c));
    }
    return json_pack("{s:o, s:o, s:o}", "Node", node_json(cat), "Service",
                     service_json(cat, s, true), "Checks", checks);
}

/* ---- rendering nodes registered through the catalog */

static xnode_t *find_xnode(const tr_catalog_t *cat, const char *name)
{
    for (xnode_t *n = cat->xnodes; n; n = n->next)
        if (!strcmp(n->name, name)) return n;
    return NULL;
}

static json_t *xnode_json(const tr_catalog_t *cat, const xnode_t *n)
{
    const char *addr = dstr(n->doc, "Address");
    return json_pack("{s:s, s:s, s:s, s:s, s:{s:s, s:s}, s:O, s:I, s:I}", "ID", dstr(n->doc, "ID"),
                     "Node", n->name, "Address", addr, "Datacenter", cat->dc, "TaggedAddresses",
                     "lan", addr, "wan", addr, "Meta", json_object_get(n->doc, "Meta"),
                     "CreateIndex", (json_int_t)dint(n->doc, "CreateIndex"), "ModifyIndex",
                     (json_int_t)dint(n->doc, "ModifyIndex"));
}

static json_t *xservice_catalog_json(const tr_catalog_t *cat, const xnode_t *n, json_t *d)
{
    const char *addr = dstr(n->doc, "Address");
    return json_pack(
        "{s:s, s:s, s:s, s:s, s:{s:s, s:s}, s:O, s:O, s:O, s:O, s:O, s:O, s:O, "
        "s:O, s:O, s:O, s:O}",
        "ID", dstr(n->doc, "ID"), "Node", n->name, "Address", addr, "Datacenter", cat->dc,
        "TaggedAddresses", "lan", addr, "wan", addr, "NodeMeta", json_object_get(n->doc, "Meta"),
        "ServiceID", json_object_get(d, "ID"), "ServiceName", json_object_get(d, "Service"),
        "ServiceTags", json_object_get(d, "Tags"), "ServiceAddress", json_object_get(d, "Address"),
        "ServicePort", json_object_get(d, "Port"), "ServiceMeta", json_object_get(d, "Meta"),
        "ServiceWeights", json_object_get(d, "Weights"), "ServiceEnableTagOverride",
        json_object_get(d, "EnableTagOverride"), "CreateIndex", json_object_get(d, "CreateIndex"),
        "ModifyIndex", json_object_get(d, "ModifyIndex"));
}

static bool def_has_tags(json_t *def, const query_t *q)
{
    for (size_t i = 0; i < q->ntags; i++) {
        bool found = false;
        size_t j;
        json_t *v;
        json_array_foreach(json_object_get(def, "Tags"), j, v) found |=
            !strcmp(json_string_value(v), q->tags[i]);
        if (!found) return false;
    }
    return true;
}

/* Adds a service's tags to /v1/catalog/services' answer, each once. */
static void merge_tags(json_t *out, const char *name, json_t *def)
{
    json_t *tags = json_object_get(out, name);
    if (!tags) json_object_set_new(out, name, tags = json_array());
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(def, "Tags"), i, t)
    {
        bool seen = false;
        size_t j;
        json_t *u;
        json_array_foreach(tags, j, u) seen |= json_equal(t, u);
        if (!seen) json_array_append(tags, t);
    }
}

/* A catalog node's health entry for service `d`; NULL when ?passing drops it. */
static json_t *xhealth_entry(const tr_catalog_t *cat, const xnode_t *n, json_t *d, bool passing)
{
    json_t *checks = json_array(), *c;
    const char *id = dstr(d, "ID"), *key;
    json_object_foreach(json_object_get(n->doc, "Checks"), key, c)
    {
        const char *sid = dstr(c, "ServiceID");
        if (*sid && strcmp(sid, id) != 0) continue;
        if (passing && strcmp(dstr(c, "Status"), "passing") != 0) {
            json_decref(checks);
            return NULL;
        }
        json_array_append(checks, c);
    }
    return json_pack("{s:o, s:O, s:o}", "Node", xnode_json(cat, n), "Service", d, "Checks", checks);
}

/* The catalog nodes' part of a read's answer. */
static void build_xnodes(const tr_catalog_t *cat, const query_t *q, json_t *out)
{
    for (xnode_t *n = cat->xnodes; n; n = n->next) {
        const char *key;
        json_t *d;
        if (q->kind == Q_CAT_NODES) json_array_append_new(out, xnode_json(cat, n));
        json_object_foreach(json_object_get(n->doc, "Services"), key, d)
        {
            if (q->kind == Q_CAT_SERVICES) merge_tags(out, dstr(d, "Service"), d);
            if (!query_scope(q) || strcmp(dstr(d, "Service"), q->name) != 0 || !def_has_tags(d, q))
                continue;
            if (q->kind == Q_CAT_SERVICE)
                json_array_append_new(out, xservice_catalog_json(cat, n, d));
            json_t *e = q->kind == Q_HEALTH_SERVICE ? xhealth_entry(cat, n, d, q->passing) : NULL;
            if (e) json_array_append_new(out, e);
        }
        json_object_foreach(json_object_get(n->doc, "Checks"), key, d)
        {
            int st = parse_status(dstr(d, "Status"));
            bool add = (q->kind == Q_HEALTH_STATE && (q->state < 0 || st == q->state)) ||
                       (q->kind == Q_HEALTH_NODE && !strcmp(q->name, n->name)) ||
                       (q->kind == Q_HEALTH_CHECKS && !strcmp(dstr(d, "ServiceName"), q->name));
            if (add) json_array_append(out, d);
        }
    }
}

/* The answer of /v1/catalog/node/<name> for a catalog node; NULL when there is none. */
static json_t *build_xnode(const tr_catalog_t *cat, const char *name)
{
    xnode_t *n = find_xnode(cat, name);
    if (!n) return NULL;
    return json_pack("{s:o, s:O}", "Node", xnode_json(cat, n), "Services",
                     json_object_get(n->doc, "Services"));
}

/* Builds a read's answer; NULL for Consul's `null` (an unknown node). */
static json_t *build(const tr_catalog_t *cat, const query_t *q)
{
    json_t *out = q->kind == Q_CAT_SERVICES || q->kind == Q_CAT_NODE ? json_object() : json_array();
    if (q->kind == Q_CAT_NODES) json_array_append_new(out, node_json(cat));
    if (q->kind == Q_CAT_NODE) {
        if (strcmp(q->name, cat->node) != 0) {
            json_decref(out);
            return build_xnode(cat, q->name);
        }
        json_t *svcs = json_object();
        json_object_set_new(svcs, cat->consul.id, service_json(cat, &cat->consul, false));
        for (service_t *s = cat->services; s; s = s->next)
            json_object_set_new(svcs, s->id, service_json(cat, s, false));
        json_object_set_new(out, "Node", node_json(cat));
        json_object_set_new(out, "Services", svcs);
    }
    bool self = q->kind == Q_HEALTH_NODE && !strcmp(q->name, cat->node);
    if ((q->kind == Q_HEALTH_STATE && (q->state < 0 || q->state == TR_CHECK_PASSING)) || self)
        json_array_append_new(out, serf_json(cat));
    /* The server's own "consul" service is in the catalog, not among the agent's services. */
    bool by_name = q->kind == Q_CAT_SERVICE || q->kind == Q_HEALTH_SERVICE;
    const group_t *g = by_name ? find_group(cat, q->name) : NULL;
    const service_t *first = by_name ? (g ? g->services : NULL) : cat->services;
    for (const service_t *s = &cat->consul; s; s = s == &cat->consul ? first
                                                   : by_name         ? s->gnext
                                                                     : s->next) {
        if (q->kind == Q_CAT_SERVICES) merge_tags(out, s->name, s->def);
        if (!query_scope(q) || strcmp(s->name, q->name) != 0 || !has_tags(s, q)) continue;
        if (q->kind == Q_CAT_SERVICE) json_array_append_new(out, catalog_service_json(cat, s));
        if (q->kind == Q_HEALTH_SERVICE) {
            json_t *e = health_entry(cat, s, q->passing);
            if (e) json_array_append_new(out, e);
        }
    }
    for (check_t *c = cat->checks; c; c = c->next) {
        if ((q->kind == Q_HEALTH_STATE && (q->state < 0 || (int)c->status == q->state)) || self)
            json_array_append_new(out, check_json(cat, c));
        if (q->kind == Q_HEALTH_CHECKS && c->service_id &&
            !strcmp(check_service_name(cat, c), q->name))
            json_array_append_new(out, check_json(cat, c));
    }
    build_xnodes(cat, q, out);
    return out;
}

static void send_json(tr_http_req_t *req, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    tr_http_res_send(req, 200, "application/json", s ? s : "null", s ? strlen(s) : 4);
    free(s);
    json_decref(j);
}

/* The cache slot answering `q`, or -1 when its answer isn't cached (tag filters). */
static int cache_slot(const query_t *q)
{
    if (q->ntags || q->filter) return -1;
    if (q->kind == Q_CAT_SERVICE) return R_CATALOG;
    if (q->kind == Q_HEALTH_SERVICE) return q->passing ? R_HEALTH_PASSING : R_HEALTH;
    return -1;
}

/*
 * Answers a read. A service's catalog and health answers are rendered once per scope index:
 * every change they can show moves that index (tombstones included), so a cached body with
 * the current index is the body build() would produce.
 */
static const rendered_t *render_cached(tr_catalog_t *cat, const query_t *q, uint64_t idx)
{
    int slot = cache_slot(q);
    group_t *g = slot < 0 ? NULL : find_group(cat, q->name);
    if (!g) return NULL; /* not cacheable, or no service of that name: don't grow a group */
    rendered_t *r = &g->cache[slot];
    if (!r->body || r->index != idx) {
        json_t *j = build(cat, q);
        free(r->body);
        r->body = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
        r->len = strlen(r->body);
        r->index = idx;
        json_decref(j);
    }
    return r;
}

/* Keeps the entries of a list (or the members of a map) that match the filter. */
static json_t *apply_filter(json_t *j, const tr_filter_t *f)
{
    if (!f || !j) return j;
    if (json_is_array(j)) {
        for (size_t i = json_array_size(j); i-- > 0;)
            if (!tr_filter_match(f, json_array_get(j, i))) json_array_remove(j, i);
    } else if (json_is_object(j)) {
        const char *k;
        json_t *v, *tmp;
        json_object_foreach_safe(j, tmp, k, v)
        {
            if (!tr_filter_match(f, v)) json_object_del(j, k);
        }
    }
    return j;
}

static void respond(tr_catalog_t *cat, tr_http_req_t *req, const query_t *q)
{
    sort_services(cat);
    uint64_t idx = query_index(cat, q);
    tr_blocking_headers(req, idx);
    const rendered_t *r = render_cached(cat, q, idx);
    if (r)
        tr_http_res_send(req, 200, "application/json", r->body, r->len);
    else
        send_json(req, apply_filter(build(cat, q), q->filter));
}

/*
 * Compiles ?filter= into *out (NULL when absent or empty). On a bad expression answers
 * 400 with the position of the problem and returns false.
 */
static bool read_filter(tr_http_req_t *req, tr_filter_t **out)
{
    const char *expr;
    *out = NULL;
    if (!tr_http_query_param(req, "filter", &expr) || !*expr) return true;
    char err[256];
    if (!(*out = tr_filter_compile(expr, err, sizeof(err)))) {
        tr_http_res_problem(req, 400, "bad-filter", "Invalid filter", "%s", err);
        return false;
    }
    return true;
}

/* ---- in-process discovery: the passing answers of watched services, through the hub */

static void hub_publish(tr_catalog_t *cat, const char *name)
{
    if (!tr_discovery_hub_watched(cat->hub, name)) return;
    sort_services(cat);
    query_t q = {.kind = Q_HEALTH_SERVICE, .name = name, .passing = true, .state = -1};
    uint64_t idx = query_index(cat, &q);
    const rendered_t *r = render_cached(cat, &q, idx);
    if (r) {
        tr_discovery_hub_publish(cat->hub, name, idx, r->body, r->len);
        return;
    }
    json_t *j = build(cat, &q);
    char *body = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    tr_discovery_hub_publish(cat->hub, name, idx, body, strlen(body));
    free(body);
    json_decref(j);
}

static void hub_publish_wanted(tr_catalog_t *cat, bool unanswered)
{
    char **names;
    size_t n = tr_discovery_hub_wanted(cat->hub, unanswered, &names);
    for (size_t i = 0; i < n; i++) {
        hub_publish(cat, names[i]);
        free(names[i]);
    }
    free(names);
}

/* A client started watching services the hub has no answer for yet. */
static void on_hub_want(uv_async_t *a)
{
    hub_publish_wanted(a->data, true);
}

/* After a change to service `name` (NULL or "": node-level, every service). */
static void hub_notify(tr_catalog_t *cat, const char *name)
{
    if (!cat->hub) return;
    if (name && name[0]) {
        hub_publish(cat, name);
        return;
    }
    hub_publish_wanted(cat, false);
}

static void on_hub_closed(uv_handle_t *h)
{
    free(h);
}

void tr_catalog_set_hub(tr_catalog_t *cat, tr_discovery_hub_t *hub)
{
    if (cat->hub) {
        tr_discovery_hub_provide(cat->hub, NULL);
        uv_close((uv_handle_t *)cat->hub_want, on_hub_closed);
        cat->hub_want = NULL;
    }
    cat->hub = hub;
    if (!hub) return;
    cat->hub_want = tr_malloc(sizeof(*cat->hub_want));
    uv_async_init(cat->loop, cat->hub_want, on_hub_want);
    cat->hub_want->data = cat;
    tr_discovery_hub_provide(hub, cat->hub_want);
    on_hub_want(cat->hub_want); /* clients that subscribed before the registry opened */
}

/* ---- watchers */

static void on_watcher_answer(tr_waiter_t *base, tr_http_req_t *req)
{
    watcher_t *w = (watcher_t *)base;
    respond(w->cat, req, &w->q);
}

static void on_watcher_dispose(tr_waiter_t *base)
{
    watcher_t *w = (watcher_t *)base;
    tr_filter_free((tr_filter_t *)w->q.filter);
    w->q.filter = NULL;
}

static void watch(tr_catalog_t *cat, tr_http_req_t *req, const query_t *q, const tr_blocking_t *b)
{
    const char *scope = query_scope(q);
    tr_waiter_t **head = scope ? &get_group(cat, scope)->watchers : &cat->watchers;
    watcher_t *w =
        tr_waiter_park(cat->loop, req, head, sizeof(*w), b, on_watcher_answer, m_watchers);
    w->cat = cat;
    w->q = *q; /* the watcher owns the filter now */
    w->base.dispose = on_watcher_dispose;
}

/*
 * Wakes the watchers whose result a change to service `name` can touch ("" or NULL: a
 * node-level change, which touches every result), and only those whose index moved.
 */
/* Answers the watchers on list `head` whose index moved past theirs. */
static void notify_list(tr_catalog_t *cat, tr_waiter_t **head)
{
    if (!*head) return;
    /* One scope per list, except for the catalog's own list of unscoped queries. */
    uint64_t idx = query_index(cat, &((watcher_t *)*head)->q);
    tr_waiter_t *next;
    for (tr_waiter_t *w = *head; w; w = next) {
        next = w->next;
        if (head == &cat->watchers) idx = query_index(cat, &((watcher_t *)w)->q);
        if (idx <= w->index) continue;
        tr_waiter_wake(w);
    }
}

static void notify(tr_catalog_t *cat, const char *name)
{
    hub_notify(cat, name);
    notify_list(cat, &cat->watchers);
    if (name && name[0]) {
        group_t *g = find_group(cat, name);
        if (g) notify_list(cat, &g->watchers);
        return;
    }
    /* Answering never adds or removes groups, so iterating them here is safe. */
    size_t pos = 0;
    void *v;
    while (tr_map_next(&cat->groups, &pos, NULL, &v))
        notify_list(cat, &((group_t *)v)->watchers);
}

static void count_metrics(const tr_catalog_t *cat)
{
    tr_gauge_set(m_services, (double)cat->nservices);
    for (int i = 0; i < 3; i++)
        tr_gauge_set(m_checks[i], (double)cat->nchecks[i]);
}

/* ---- parsing definitions */

typedef struct perr_s {
    char msg[256];
} perr_t;

static bool fail(perr_t *e, const char *fmt, const char *field)
{
    snprintf(e->msg, sizeof(e->msg), fmt, field);
    return false;
}

static bool get_str(json_t *o, const char *k, const char **out, perr_t *e)
{
    json_t *v = jget(o, k);
    *out = NULL;
    if (!v) return true;
    if (!json_is_string(v)) return fail(e, "%s must be a string", k);
    *out = json_string_value(v);
    return true;
}

static bool get_int(json_t *o, const char *k, json_int_t *out, perr_t *e)
{
    json_t *v = jget(o, k);
    if (!v) return true;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return fail(e, "%s must be a non-negative integer", k);
    *out = json_integer_value(v);
    return true;
}

/* A duration: a Go duration string ("10s", "1m30s") or a number of nanoseconds. */
static bool get_dur(json_t *o, const char *k, uint64_t *ms, perr_t *e)
{
    json_t *v = jget(o, k);
    *ms = 0;
    if (!v) return true;
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *ms = (uint64_t)(json_integer_value(v) + 999999) / 1000000;
        return true;
    }
    if (!json_is_string(v) || !parse_duration(json_string_value(v), ms))
        return fail(e, "%s must be a duration such as \"10s\" or \"500ms\"", k);
    return true;
}

static bool valid_string_array(json_t *v)
{
    size_t i;
    json_t *t;
    if (!json_is_array(v)) return false;
    json_array_foreach(v, i, t) if (!json_is_string(t)) return false;
    return true;
}

static bool valid_string_map(json_t *v, bool arrays)
{
    const char *k;
    json_t *t;
    if (!json_is_object(v)) return false;
    json_object_foreach(v, k, t)
    {
        if (arrays ? !valid_string_array(t) : !json_is_string(t)) return false;
    }
    return true;
}

static void check_free(check_t *c)
{
    if (!c) return;
    free(c->id);
    free(c->service_id);
    free(c->service_name);
    free(c->output);
    json_decref(c->def);
    free(c);
}

/* Fills the fields derived from c->def. */
static void check_derive(check_t *c)
{
    c->type = dstr(c->def, "Type");
    c->ttl_ms = dint(c->def, "TTL");
    c->dereg_ms = dint(c->def, "DeregisterCriticalServiceAfter");
}

static bool check_kind(json_t *o, json_t *def, perr_t *e)
{
    const char *http, *tcp, *method, *body;
    uint64_t interval, timeout, ttl;
    if (!get_str(o, "HTTP", &http, e) || !get_str(o, "TCP", &tcp, e) ||
        !get_str(o, "Method", &method, e) || !get_str(o, "Body", &body, e) ||
        !get_dur(o, "Interval", &interval, e) || !get_dur(o, "Timeout", &timeout, e) ||
        !get_dur(o, "TTL", &ttl, e))
        return false;
    json_t *hdr = jget(o, "Header");
    if (hdr && !valid_string_map(hdr, true))
        return fail(e, "%s must be an object of string arrays, such as {\"X\": [\"1\"]}", "Header");
    const char *type = http ? "http" : tcp ? "tcp" : ttl ? "ttl" : NULL;
    if (!type)
        return fail(e, "a check needs one of HTTP, TCP or TTL (%s checks are not supported)",
                    "script, gRPC and Docker");
    if ((http || tcp) && !interval)
        return fail(e, "%s checks need an Interval, such as \"10s\"", http ? "HTTP" : "TCP");
    json_object_set_new(def, "Type", json_string(type));
    json_object_set_new(def, "HTTP", json_string(http ? http : ""));
    json_object_set_new(def, "TCP", json_string(tcp ? tcp : ""));
    json_object_set_new(def, "Method", json_string(method ? method : ""));
    json_object_set_new(def, "Body", json_string(body ? body : ""));
    if (hdr) json_object_set(def, "Header", hdr);
    json_object_set_new(def, "Interval", json_integer((json_int_t)interval));
    json_object_set_new(def, "Timeout", json_integer((json_int_t)timeout));
    json_object_set_new(def, "TTL", json_integer((json_int_t)ttl));
    return true;
}

/*
 * Parses a check definition `o`. `id` and `name` are the defaults (for embedded checks);
 * a standalone check needs its own Name. Returns NULL with e set when it is invalid.
 */
static check_t *parse_check(json_t *o, const char *id, const char *name, const char *service_id,
                            perr_t *e)
{
    const char *cname, *cid, *notes, *status, *sid;
    uint64_t dereg;
    json_int_t sbp = 0, fbc = 0;
    if (!json_is_object(o)) {
        fail(e, "%s must be a JSON object", "a check");
        return NULL;
    }
    if (!get_str(o, "Name", &cname, e) || !get_str(o, "CheckID", &cid, e) ||
        !get_str(o, "Notes", &notes, e) || !get_str(o, "Status", &status, e) ||
        !get_str(o, "ServiceID", &sid, e) ||
        !get_dur(o, "DeregisterCriticalServiceAfter", &dereg, e) ||
        !get_int(o, "SuccessBeforePassing", &sbp, e) ||
        !get_int(o, "FailuresBeforeCritical", &fbc, e))
        return NULL;
    if (!cid && !get_str(o, "ID", &cid, e)) return NULL;
    if (!cname && !name) {
        fail(e, "missing check %s", "Name");
        return NULL;
    }
    if (!cname || !*cname) cname = name;
    if (!cid || !*cid) cid = id ? id : cname;
    int st = status && *status ? parse_status(status) : TR_CHECK_CRITICAL;
    if (st < 0) {
        fail(e, "%s must be one of passing, warning or critical", "Status");
        return NULL;
    }
    if (!service_id) service_id = sid && *sid ? sid : NULL;
    json_t *def = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "CheckID", cid, "Name", cname,
                            "Notes", notes ? notes : "", "ServiceID", service_id ? service_id : "",
                            "DeregisterCriticalServiceAfter", (json_int_t)dereg,
                            "SuccessBeforePassing", sbp, "FailuresBeforeCritical", fbc);
    if (!check_kind(o, def, e)) {
        json_decref(def);
        return NULL;
    }
    check_t *c = tr_calloc(1, sizeof(*c));
    c->id = tr_strdup(cid);
    c->service_id = service_id ? tr_strdup(service_id) : NULL;
    c->def = def;
    c->status = (tr_check_status_t)st;
    c->output = tr_strdup("");
    check_derive(c);
    return c;
}

static void service_free(service_t *s)
{
    if (!s) return;
    free(s->id);
    free(s->name);
    json_decref(s->def);
    free(s);
}

static bool parse_weights(json_t *o, json_t **out, perr_t *e)
{
    json_t *w = jget(o, "Weights");
    json_int_t pass = 1, warn = 1;
    if (w && !json_is_object(w)) return fail(e, "%s must be an object", "Weights");
    if (w) pass = warn = 0; /* as Go decodes a partial object */
    if (w && (!get_int(w, "Passing", &pass, e) || !get_int(w, "Warning", &warn, e))) return false;
    if (pass < 1) return fail(e, "Invalid Weights: %s must be greater than 0", "Passing");
    *out = json_pack("{s:I, s:I}", "Passing", pass, "Warning", warn);
    return true;
}

/* Parses a service registration into its normalised AgentService fields. */
static service_t *parse_service(json_t *o, perr_t *e)
{
    const char *name, *id, *addr;
    json_int_t port = 0;
    json_t *weights, *tags = jget(o, "Tags"), *meta = jget(o, "Meta"),
                     *eto = jget(o, "EnableTagOverride");
    if (!get_str(o, "Name", &name, e) || !get_str(o, "ID", &id, e) ||
        !get_str(o, "Address", &addr, e) || !get_int(o, "Port", &port, e))
        return NULL;
    if (!name || !*name) {
        fail(e, "missing service %s", "Name");
        return NULL;
    }
    if (port > 65535) {
        fail(e, "%s must be between 0 and 65535", "Port");
        return NULL;
    }
    if (tags && !valid_string_array(tags)) {
        fail(e, "%s must be an array of strings", "Tags");
        return NULL;
    }
    if (meta && !valid_string_map(meta, false)) {
        fail(e, "%s must be an object of strings", "Meta");
        return NULL;
    }
    if (eto && !json_is_boolean(eto)) {
        fail(e, "%s must be true or false", "EnableTagOverride");
        return NULL;
    }
    if (!parse_weights(o, &weights, e)) return NULL;
    if (!id || !*id) id = name;
    service_t *s = tr_calloc(1, sizeof(*s));
    s->id = tr_strdup(id);
    s->name = tr_strdup(name);
    s->def = json_pack("{s:s, s:s, s:o, s:o, s:I, s:s, s:o, s:b}", "ID", id, "Service", name,
                       "Tags", tags ? json_incref(tags) : json_array(), "Meta",
                       meta ? json_incref(meta) : json_object(), "Port", port, "Address",
                       addr ? addr : "", "Weights", weights, "EnableTagOverride",
                       eto && json_is_true(eto));
    return s;
}

/* ---- persistence */

static int step_done(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s) == SQLITE_DONE ? 0 : TR_EIO;
    sqlite3_reset(s);
    return rc;
}

static int db_exec_id(tr_catalog_t *cat, const char *sql, const char *id)
{
    sqlite3_stmt *s = tr_store_stmt(cat->store, sql);
    if (!s) return TR_EIO;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    return step_done(s);
}

/*
 * Deletes the stored checks of service `sv` (NULL: none) by primary key. catalog_checks has
 * no index on service_id, so "WHERE service_id = ?" scanned the whole table on every write;
 * memory holds the stored checks of each service, so their IDs are enough.
 */
static int db_delete_service_checks(tr_catalog_t *cat, const service_t *sv)
{
    sqlite3_stmt *s =
        tr_store_stmt(cat->store, "DELETE FROM catalog_checks WHERE id = ?1 AND service_id = ?2");
    if (!s) return TR_EIO;
    for (const check_t *c = sv ? sv->checks : NULL; c; c = c->svc_next) {
        sqlite3_bind_text(s, 1, c->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, sv->id, -1, SQLITE_STATIC);
        if (step_done(s) < 0) return TR_EIO;
    }
    return 0;
}

static int db_put_service(tr_catalog_t *cat, const service_t *sv)
{
    sqlite3_stmt *s = tr_store_stmt(cat->store, "INSERT OR REPLACE INTO catalog_services (id, name,"
                                                " body, create_index, modify_index)"
                                                " VALUES (?1, ?2, ?3, ?4, ?5)");
    if (!s) return TR_EIO;
    char *body = json_dumps(sv->def, JSON_COMPACT);
    sqlite3_bind_text(s, 1, sv->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, sv->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, body, -1, free);
    sqlite3_bind_int64(s, 4, (sqlite3_int64)sv->create_index);
    sqlite3_bind_int64(s, 5, (sqlite3_int64)sv->modify_index);
    return step_done(s);
}

static int db_put_check(tr_catalog_t *cat, const check_t *c)
{
    sqlite3_stmt *s =
        tr_store_stmt(cat->store, "INSERT OR REPLACE INTO catalog_checks (id,"
                                  " service_id, body, status, output, create_index,"
                                  " modify_index) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    if (!s) return TR_EIO;
    char *body = json_dumps(c->def, JSON_COMPACT);
    sqlite3_bind_text(s, 1, c->id, -1, SQLITE_STATIC);
    if (c->service_id) sqlite3_bind_text(s, 2, c->service_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, body, -1, free);
    sqlite3_bind_text(s, 4, status_names[c->status], -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 5, c->output, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 6, (sqlite3_int64)c->create_index);
    sqlite3_bind_int64(s, 7, (sqlite3_int64)c->modify_index);
    return step_done(s);
}

static int db_tomb(tr_catalog_t *cat, const char *name, uint64_t idx)
{
    sqlite3_stmt *s = tr_store_stmt(
        cat->store, "INSERT OR REPLACE INTO catalog_tombstones (name, idx) VALUES (?1, ?2)");
    if (!s) return TR_EIO;
    sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)idx);
    return step_done(s);
}

static void store_failed(tr_catalog_t *cat, tr_http_req_t *req, const char *what)
{
    tr_store_rollback(cat->store);
    tr_log_error("registry catalog write failed", TR_LOG_STR("op", what),
                 TR_LOG_STR("reason", sqlite3_errmsg(tr_store_db(cat->store))));
    if (req)
        tr_http_res_problem(req, 500, "store-failed", "Storage failure",
                            "the registry could not write to its database; see the server log");
}

/* ---- arming checks */

static void on_ttl_closed(uv_handle_t *h)
{
    free(h->data);
}

static int set_status(tr_catalog_t *cat, check_t *c, tr_check_status_t st, const char *output);

static void on_ttl_expired(uv_timer_t *t)
{
    ttl_t *ttl = t->data;
    check_t *c = ttl->check;
    set_status(c->cat, c, TR_CHECK_CRITICAL, "TTL expired");
}

static void ttl_reset(check_t *c)
{
    if (c->ttl) uv_timer_start(&c->ttl->timer, on_ttl_expired, c->ttl_ms, 0);
}

static void arm(tr_catalog_t *cat, check_t *c)
{
    c->cat = cat;
    if (c->status == TR_CHECK_CRITICAL) c->critical_since = uv_now(cat->loop);
    if (!strcmp(c->type, "ttl")) {
        c->ttl = tr_calloc(1, sizeof(*c->ttl));
        c->ttl->check = c;
        uv_timer_init(cat->loop, &c->ttl->timer);
        c->ttl->timer.data = c->ttl;
        ttl_reset(c);
    } else if (cat->checker && (!strcmp(c->type, "http") || !strcmp(c->type, "tcp"))) {
        char *hdr = json_object_get(c->def, "Header")
                        ? json_dumps(json_object_get(c->def, "Header"), JSON_COMPACT)
                        : NULL;
        bool http = !strcmp(c->type, "http");
        tr_check_spec_t spec = {.id = c->id,
                                .kind = http ? TR_CHECK_HTTP : TR_CHECK_TCP,
                                .target = dstr(c->def, http ? "HTTP" : "TCP"),
                                .method = *dstr(c->def, "Method") ? dstr(c->def, "Method") : NULL,
                                .headers = hdr,
                                .body = *dstr(c->def, "Body") ? dstr(c->def, "Body") : NULL,
                                .interval_ms = dint(c->def, "Interval"),
                                .timeout_ms = dint(c->def, "Timeout")};
        tr_checker_upsert(cat->checker, &spec);
        free(hdr);
    }
}

/* Stops a check's timer or checker run and frees it. */
static void disarm_free(tr_catalog_t *cat, check_t *c)
{
    if (c->ttl) {
        uv_timer_stop(&c->ttl->timer);
        uv_close((uv_handle_t *)&c->ttl->timer, on_ttl_closed);
        c->ttl = NULL;
    } else if (cat->checker && (!strcmp(c->type, "http") || !strcmp(c->type, "tcp"))) {
        tr_checker_remove(cat->checker, c->id);
    }
    check_free(c);
}

/* The list a check is on besides the catalog's: its service's, or the "" group's. */
static check_t **check_list(tr_catalog_t *cat, check_t *c)
{
    return c->svc ? &c->svc->checks : &get_group(cat, "")->checks;
}

static void link_check(tr_catalog_t *cat, check_t *c)
{
    c->next = NULL;
    c->prev = cat->checks_tail;
    if (c->prev)
        c->prev->next = c;
    else
        cat->checks = c;
    cat->checks_tail = c;
    c->seq = ++cat->check_seq;
    /* A service's checks go when it goes or is replaced, so its name is fixed here. */
    service_t *sv = c->service_id ? find_service(cat, c->service_id) : NULL;
    c->svc = sv;
    free(c->service_name);
    c->service_name = tr_strdup(sv ? sv->name : "");
    check_t **p = check_list(cat, c);
    while (*p)
        p = &(*p)->svc_next;
    c->svc_next = NULL;
    *p = c;
    tr_map_put(&cat->checks_by_id, c->id, c);
    cat->nchecks[c->status]++;
    arm(cat, c);
}

static void unlink_check(tr_catalog_t *cat, check_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        cat->checks = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        cat->checks_tail = c->prev;
    for (check_t **p = check_list(cat, c); *p; p = &(*p)->svc_next)
        if (*p == c) {
            *p = c->svc_next;
            break;
        }
    if (tr_map_get(&cat->checks_by_id, c->id) == c) tr_map_del(&cat->checks_by_id, c->id);
    cat->nchecks[c->status]--;
    disarm_free(cat, c);
}

static void unlink_service(tr_catalog_t *cat, service_t *sv)
{
    while (sv->checks)
        unlink_check(cat, sv->checks);
    if (sv->prev)
        sv->prev->next = sv->next;
    else
        cat->services = sv->next;
    if (sv->next)
        sv->next->prev = sv->prev;
    else
        cat->services_tail = sv->prev;
    for (service_t **p = &sv->group->services; *p; p = &(*p)->gnext)
        if (*p == sv) {
            *p = sv->gnext;
            break;
        }
    if (tr_map_get(&cat->services_by_id, sv->id) == sv) tr_map_del(&cat->services_by_id, sv->id);
    cat->nservices--;
    service_free(sv);
}

/*
 * Records a new status and output: persisted with a new index only when either changed,
 * then watchers of the check's service wake. Returns 0 or TR_EIO.
 */
static int set_status(tr_catalog_t *cat, check_t *c, tr_check_status_t st, const char *output)
{
    char *text = clean_text(output);
    if (c->status == st && !strcmp(c->output, text)) {
        free(text);
        return 0;
    }
    check_t next = *c;
    next.status = st;
    next.output = text;
    uint64_t idx = 0;
    bool began = tr_store_begin(cat->store, &idx) == 0;
    next.modify_index = idx;
    if (!began || db_put_check(cat, &next) < 0 || tr_store_commit(cat->store) < 0) {
        store_failed(cat, NULL, "check status");
        free(text);
        return TR_EIO;
    }
    if (c->status != st) {
        tr_log_info("registry check status changed", TR_LOG_STR("check", c->id),
                    TR_LOG_STR("old", status_names[c->status]),
                    TR_LOG_STR("new", status_names[st]));
        tr_counter_inc(m_changes[st]);
        c->critical_since = st == TR_CHECK_CRITICAL ? uv_now(cat->loop) : 0;
    }
    cat->nchecks[c->status]--;
    cat->nchecks[st]++;
    c->status = st;
    free(c->output);
    c->output = text;
    c->modify_index = idx;
    count_metrics(cat);
    notify(cat, check_service_name(cat, c));
    if (st == TR_CHECK_CRITICAL && cat->on_check_down) {
        char *id = tr_strdup(c->id); /* the callback may change the catalog */
        cat->on_check_down(cat->on_check_down_data, id);
        free(id);
    }
    return 0;
}

void tr_catalog_on_check_down(tr_catalog_t *cat, tr_catalog_check_cb cb, void *data)
{
    cat->on_check_down = cb;
    cat->on_check_down_data = data;
}

int tr_catalog_check_status(const tr_catalog_t *cat, const char *id)
{
    if (!strcmp(id, "serfHealth")) return TR_CHECK_PASSING; /* this agent's node is alive */
    const check_t *c = find_check(cat, id);
    return c ? (int)c->status : -1;
}

/* A finished HTTP/TCP run, with Consul's SuccessBeforePassing / FailuresBeforeCritical. */
static void on_check_result(void *data, const char *id, tr_check_status_t st, const char *output)
{
    tr_catalog_t *cat = data;
    check_t *c = find_check(cat, id);
    if (!c) return;
    if (st == TR_CHECK_PASSING) {
        c->failures = 0;
        if (++c->successes < dint(c->def, "SuccessBeforePassing")) return;
    } else {
        c->successes = 0;
        if (++c->failures < dint(c->def, "FailuresBeforeCritical")) return;
    }
    set_status(cat, c, st, output);
}

/* ---- writes */

static void ok(tr_http_req_t *req)
{
    tr_http_res_send(req, 200, NULL, NULL, 0);
}

static void free_checks(check_t *list)
{
    while (list) {
        check_t *n = list->next;
        check_free(list);
        list = n;
    }
}

/* Parses Check and Checks of a registration into a list, with Consul's service:<id>[:n]. */
static bool parse_service_checks(json_t *o, const service_t *sv, check_t **out, perr_t *e)
{
    json_t *one = jget(o, "Check"), *many = jget(o, "Checks"), *all = json_array();
    if (many && !json_is_array(many)) {
        json_decref(all);
        return fail(e, "%s must be an array of checks", "Checks");
    }
    /* Like Consul, an empty check object ({}) is no check. */
    if (one && !(json_is_object(one) && !json_object_size(one))) json_array_append(all, one);
    size_t i;
    json_t *v;
    json_array_foreach(many, i, v)
    {
        if (!(json_is_object(v) && !json_object_size(v))) json_array_append(all, v);
    }
    size_t n = json_array_size(all);
    check_t **tail = out;
    char id[512], name[512];
    snprintf(name, sizeof(name), "Service '%s' check", sv->name);
    json_array_foreach(all, i, v)
    {
        if (n == 1)
            snprintf(id, sizeof(id), "service:%s", sv->id);
        else
            snprintf(id, sizeof(id), "service:%s:%zu", sv->id, i + 1);
        check_t *c = parse_check(v, id, name, sv->id, e);
        if (!c) {
            json_decref(all);
            return false;
        }
        *tail = c;
        tail = &c->next;
    }
    json_decref(all);
    return true;
}

static void do_register_service(tr_catalog_t *cat, tr_http_req_t *req, json_t *body,
                                const char *arg)
{
    (void)arg;
    perr_t e = {""};
    check_t *checks = NULL;
    service_t *sv = parse_service(body, &e);
    if (!sv || !parse_service_checks(body, sv, &checks, &e)) {
        service_free(sv);
        free_checks(checks);
        bad_request(req, e.msg);
        return;
    }
    service_t *old = find_service(cat, sv->id);
    uint64_t idx;
    if (tr_store_begin(cat->store, &idx) < 0) goto failed;
    sv->create_index = old ? old->create_index : idx;
    sv->modify_index = idx;
    if (db_delete_service_checks(cat, old) < 0 || db_put_service(cat, sv) < 0) goto failed;
    for (check_t *c = checks; c; c = c->next) {
        c->create_index = c->modify_index = idx;
        if (db_put_check(cat, c) < 0) goto failed;
    }
    if (old && strcmp(old->name, sv->name) != 0 && db_tomb(cat, old->name, idx) < 0) goto failed;
    if (tr_store_commit(cat->store) < 0) goto failed;
    char *old_name = old ? tr_strdup(old->name) : NULL;
    if (old) unlink_service(cat, old);
    if (old_name && strcmp(old_name, sv->name) != 0) set_tomb(cat, old_name, idx);
    link_service(cat, sv);
    while (checks) {
        check_t *n = checks->next;
        link_check(cat, checks);
        checks = n;
    }
    count_metrics(cat);
    ok(req);
    notify(cat, sv->name);
    if (old_name) notify(cat, old_name);
    free(old_name);
    return;
failed:
    store_failed(cat, req, "service register");
    service_free(sv);
    free_checks(checks);
}

/* Deregisters a service and its checks; false after answering 500. */
static bool remove_service(tr_catalog_t *cat, tr_http_req_t *req, service_t *sv)
{
    uint64_t idx;
    if (tr_store_begin(cat->store, &idx) < 0 || db_delete_service_checks(cat, sv) < 0 ||
        db_exec_id(cat, "DELETE FROM catalog_services WHERE id = ?1", sv->id) < 0 ||
        db_tomb(cat, sv->name, idx) < 0 || tr_store_commit(cat->store) < 0) {
        store_failed(cat, req, "service deregister");
        return false;
    }
    char *name = tr_strdup(sv->name);
    size_t nids = 0;
    char **ids = NULL;
    for (check_t *c = sv->checks; c && cat->on_check_down; c = c->svc_next) {
        ids = tr_realloc(ids, (nids + 1) * sizeof(*ids));
        ids[nids++] = tr_strdup(c->id);
    }
    set_tomb(cat, name, idx);
    unlink_service(cat, sv);
    count_metrics(cat);
    if (req) ok(req);
    notify(cat, name);
    for (size_t i = 0; i < nids; i++) {
        cat->on_check_down(cat->on_check_down_data, ids[i]);
        free(ids[i]);
    }
    free(ids);
    free(name);
    return true;
}

static void unknown(tr_http_req_t *req, const char *what, const char *id)
{
    tr_http_res_problem(req, 404, "not-found", "Not found",
                        "unknown %s ID \"%s\": register it first or check the ID", what, id);
}

/* Adds or replaces a check (persisted first); false after answering 500. */
static bool put_check(tr_catalog_t *cat, tr_http_req_t *req, check_t *c)
{
    check_t *old = find_check(cat, c->id);
    uint64_t idx;
    if (tr_store_begin(cat->store, &idx) < 0) goto failed;
    c->create_index = old ? old->create_index : idx;
    c->modify_index = idx;
    if (db_put_check(cat, c) < 0 || tr_store_commit(cat->store) < 0) goto failed;
    if (old) unlink_check(cat, old);
    link_check(cat, c);
    count_metrics(cat);
    ok(req);
    notify(cat, check_service_name(cat, c));
    return true;
failed:
    store_failed(cat, req, "check register");
    check_free(c);
    return false;
}

static void do_register_check(tr_catalog_t *cat, tr_http_req_t *req, json_t *body, const char *arg)
{
    (void)arg;
    perr_t e = {""};
    check_t *c = parse_check(body, NULL, NULL, NULL, &e);
    if (!c) {
        bad_request(req, e.msg);
        return;
    }
    if (c->service_id && !find_service(cat, c->service_id)) {
        tr_http_res_problem(req, 400, "bad-request", "Invalid request",
                            "ServiceID \"%s\" does not exist: register the service first",
                            c->service_id);
        check_free(c);
        return;
    }
    put_check(cat, req, c);
}

static void remove_check(tr_catalog_t *cat, tr_http_req_t *req, check_t *c)
{
    uint64_t idx;
    char *name = tr_strdup(check_service_name(cat, c));
    if (tr_store_begin(cat->store, &idx) < 0 ||
        db_exec_id(cat, "DELETE FROM catalog_checks WHERE id = ?1", c->id) < 0 ||
        db_tomb(cat, name, idx) < 0 || tr_store_commit(cat->store) < 0) {
        store_failed(cat, req, "check deregister");
        free(name);
        return;
    }
    char *id = tr_strdup(c->id);
    set_tomb(cat, name, idx);
    unlink_check(cat, c);
    count_metrics(cat);
    ok(req);
    notify(cat, name);
    if (cat->on_check_down) cat->on_check_down(cat->on_check_down_data, id);
    free(id);
    free(name);
}

static void handle_maintenance(tr_catalog_t *cat, tr_http_req_t *req, const char *id)
{
    const char *enable, *reason;
    service_t *sv = find_service(cat, id);
    if (!sv) {
        unknown(req, "service", id);
        return;
    }
    if (!tr_http_query_param(req, "enable", &enable) ||
        (strcmp(enable, "true") != 0 && strcmp(enable, "false") != 0)) {
        bad_request(req, "missing or bad ?enable=: use enable=true or enable=false");
        return;
    }
    char cid[512];
    snprintf(cid, sizeof(cid), MAINT_PREFIX "%s", id);
    check_t *old = find_check(cat, cid);
    if (!strcmp(enable, "false")) {
        if (old)
            remove_check(cat, req, old);
        else
            ok(req);
        return;
    }
    if (!tr_http_query_param(req, "reason", &reason) || !*reason) reason = MAINT_NOTES;
    check_t *c = tr_calloc(1, sizeof(*c));
    c->id = tr_strdup(cid);
    c->service_id = tr_strdup(id);
    char *notes = clean_text(reason);
    c->def =
        json_pack("{s:s, s:s, s:s, s:s, s:s}", "CheckID", cid, "Name", "Service Maintenance Mode",
                  "Notes", notes, "ServiceID", id, "Type", "maintenance");
    free(notes);
    c->status = TR_CHECK_CRITICAL;
    c->output = tr_strdup("");
    check_derive(c);
    put_check(cat, req, c);
}

/* pass / warn / fail / update on a TTL check: sets status and output, restarts the TTL. */
static void ttl_update(tr_catalog_t *cat, tr_http_req_t *req, const char *id, int st,
                       const char *output)
{
    check_t *c = find_check(cat, id);
    if (!c) {
        unknown(req, "check", id);
        return;
    }
    if (!c->ttl) {
        tr_http_res_problem(req, 400, "bad-request", "Invalid request",
                            "check \"%s\" is not a TTL check; only TTL checks take updates", id);
        return;
    }
    if (set_status(cat, c, (tr_check_status_t)st, output ? output : "") < 0) {
        store_failed(cat, req, "check update");
        return;
    }
    ttl_reset(c);
    ok(req);
}

static void do_update_check(tr_catalog_t *cat, tr_http_req_t *req, json_t *body, const char *id)
{
    perr_t e = {""};
    const char *status, *output;
    if (!get_str(body, "Status", &status, &e) || !get_str(body, "Output", &output, &e)) {
        bad_request(req, e.msg);
        return;
    }
    int st = status ? parse_status(status) : -1;
    if (st < 0) {
        bad_request(req, "Status must be one of passing, warning or critical");
        return;
    }
    ttl_update(cat, req, id, st, output);
}

/* ---- /v1/catalog/register and /deregister: nodes other than this agent */

static void xnode_free(xnode_t *n)
{
    if (!n) return;
    free(n->name);
    json_decref(n->doc);
    free(n);
}

/* Normalises a registration's Service into an AgentService (with indexes); NULL on error. */
static json_t *xparse_service(json_t *o, uint64_t idx, json_t *old, perr_t *e)
{
    if (!json_is_object(o)) {
        fail(e, "%s must be an object", "Service");
        return NULL;
    }
    json_t *copy = json_copy(o);
    if (!jget(copy, "Name") && jget(copy, "Service"))
        json_object_set(copy, "Name", jget(copy, "Service"));
    service_t *sv = parse_service(copy, e);
    json_decref(copy);
    if (!sv) return NULL;
    json_t *d = json_incref(sv->def);
    service_free(sv);
    json_t *was = old ? json_object_get(old, "CreateIndex") : NULL;
    json_object_set_new(d, "CreateIndex", was ? json_incref(was) : json_integer((json_int_t)idx));
    json_object_set_new(d, "ModifyIndex", json_integer((json_int_t)idx));
    return d;
}

/* Normalises a registration's Check into a HealthCheck of node `n`; NULL on error. */
static json_t *xparse_check(json_t *o, const char *node, json_t *services, uint64_t idx, perr_t *e)
{
    const char *id, *name, *status, *notes, *output, *sid;
    if (!json_is_object(o)) {
        fail(e, "%s must be an object", "Check");
        return NULL;
    }
    if (!get_str(o, "CheckID", &id, e) || !get_str(o, "Name", &name, e) ||
        !get_str(o, "Status", &status, e) || !get_str(o, "Notes", &notes, e) ||
        !get_str(o, "Output", &output, e) || !get_str(o, "ServiceID", &sid, e))
        return NULL;
    if (!id || !*id) id = name;
    if (!id || !*id) {
        fail(e, "the check needs a %s (or a Name)", "CheckID");
        return NULL;
    }
    /* Like Consul, a check registered without a status starts critical. */
    if (status && *status && parse_status(status) < 0) {
        fail(e, "%s must be one of passing, warning or critical", "Status");
        return NULL;
    }
    json_t *sv = sid && *sid ? json_object_get(services, sid) : NULL;
    if (sid && *sid && !sv) {
        fail(e,
             "the check's ServiceID \"%s\" is not a service of this node; register the "
             "service first",
             sid);
        return NULL;
    }
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o, s:s, s:{}, s:I, s:I}", "Node",
                     node, "CheckID", id, "Name", name ? name : id, "Status",
                     status && *status ? status : "critical", "Notes", notes ? notes : "", "Output",
                     output ? output : "", "ServiceID", sv ? sid : "", "ServiceName",
                     sv ? dstr(sv, "Service") : "", "ServiceTags",
                     sv ? json_incref(json_object_get(sv, "Tags")) : json_array(), "Type", "",
                     "Definition", "CreateIndex", (json_int_t)idx, "ModifyIndex", (json_int_t)idx);
}

/* Applies a registration to `doc` (a copy of the node's); false with e set on bad input. */
static bool xapply_register(json_t *doc, json_t *body, const char *node, uint64_t idx, perr_t *e)
{
    const char *addr, *id;
    json_t *meta = jget(body, "NodeMeta"), *svc = jget(body, "Service"),
           *many = jget(body, "Checks");
    if (!get_str(body, "Address", &addr, e) || !get_str(body, "ID", &id, e)) return false;
    if (!addr || !*addr) return fail(e, "missing node %s", "Address");
    if (meta && !valid_string_map(meta, false))
        return fail(e, "%s must be an object of strings", "NodeMeta");
    json_object_set_new(doc, "Address", json_string(addr));
    if (id) json_object_set_new(doc, "ID", json_string(id));
    if (meta) json_object_set(doc, "Meta", meta);
    json_object_set_new(doc, "ModifyIndex", json_integer((json_int_t)idx));
    json_t *services = json_object_get(doc, "Services"), *checks = json_object_get(doc, "Checks");
    if (svc && json_object_size(svc)) {
        const char *sid = dstr(svc, "ID");
        json_t *d = xparse_service(svc, idx,
                                   json_object_get(services, *sid ? sid : dstr(svc, "Service")), e);
        if (!d) return false;
        json_object_set_new(services, dstr(d, "ID"), d);
    }
    if (many && !json_is_array(many)) return fail(e, "%s must be an array of checks", "Checks");
    json_t *all = json_array();
    json_t *one = jget(body, "Check"), *c;
    size_t i;
    if (one && json_object_size(one)) json_array_append(all, one);
    if (many) json_array_extend(all, many);
    json_array_foreach(all, i, c)
    {
        json_t *hc = xparse_check(c, node, services, idx, e);
        if (!hc) {
            json_decref(all);
            return false;
        }
        json_t *was = json_object_get(json_object_get(checks, dstr(hc, "CheckID")), "CreateIndex");
        if (was) json_object_set(hc, "CreateIndex", was);
        json_object_set_new(checks, dstr(hc, "CheckID"), hc);
    }
    json_decref(all);
    return true;
}

/* Persists the node's new document (NULL: deletes the node) and a node-wide tombstone. */
static int xnode_persist(tr_catalog_t *cat, const char *name, json_t *doc, uint64_t idx)
{
    if (!doc) {
        if (db_exec_id(cat, "DELETE FROM catalog_nodes WHERE name = ?1", name) < 0) return TR_EIO;
    } else {
        sqlite3_stmt *s = tr_store_stmt(cat->store, "INSERT OR REPLACE INTO catalog_nodes (name,"
                                                    " body, create_index, modify_index)"
                                                    " VALUES (?1, ?2, ?3, ?4)");
        if (!s) return TR_EIO;
        sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, json_dumps(doc, JSON_COMPACT), -1, free);
        sqlite3_bind_int64(s, 3, (sqlite3_int64)dint(doc, "CreateIndex"));
        sqlite3_bind_int64(s, 4, (sqlite3_int64)idx);
        if (step_done(s) < 0) return TR_EIO;
    }
    /* A catalog node's change can touch any answer: record it as a node-level tombstone. */
    return db_tomb(cat, "", idx);
}

/* Swaps in the node's committed document (NULL: removed) and wakes watchers. */
static void xnode_commit(tr_catalog_t *cat, tr_http_req_t *req, const char *name, json_t *doc,
                         uint64_t idx)
{
    xnode_t **pp = &cat->xnodes;
    while (*pp && strcmp((*pp)->name, name) != 0)
        pp = &(*pp)->next;
    if (doc && !*pp) {
        *pp = tr_calloc(1, sizeof(**pp));
        (*pp)->name = tr_strdup(name);
    }
    if (doc) {
        json_decref((*pp)->doc);
        (*pp)->doc = doc;
    } else if (*pp) {
        xnode_t *gone = *pp;
        *pp = gone->next;
        xnode_free(gone);
    }
    set_tomb(cat, "", idx);
    tr_http_res_send(req, 200, "application/json", "true", 4);
    notify(cat, NULL);
}

static bool xnode_target(tr_catalog_t *cat, tr_http_req_t *req, json_t *body, const char **node)
{
    perr_t e = {""};
    if (!get_str(body, "Node", node, &e) || !*node || !**node) {
        bad_request(req, e.msg[0] ? e.msg : "missing Node: name the node to (de)register");
        return false;
    }
    if (!strcmp(*node, cat->node)) {
        bad_request(req, "this node is the agent itself; register its services and checks with "
                         "/v1/agent/service/register and /v1/agent/check/register");
        return false;
    }
    return true;
}

static void do_catalog_register(tr_catalog_t *cat, tr_http_req_t *req, json_t *body,
                                const char *arg)
{
    (void)arg;
    const char *node;
    perr_t e = {""};
    uint64_t idx;
    if (!xnode_target(cat, req, body, &node)) return;
    xnode_t *old = find_xnode(cat, node);
    if (tr_store_begin(cat->store, &idx) < 0) {
        store_failed(cat, req, "catalog register");
        return;
    }
    json_t *doc = old ? json_deep_copy(old->doc)
                      : json_pack("{s:s, s:s, s:{}, s:{}, s:{}, s:I}", "ID", "", "Address", "",
                                  "Meta", "Services", "Checks", "CreateIndex", (json_int_t)idx);
    if (!xapply_register(doc, body, node, idx, &e)) {
        tr_store_rollback(cat->store);
        json_decref(doc);
        bad_request(req, e.msg);
        return;
    }
    if (xnode_persist(cat, node, doc, idx) < 0 || tr_store_commit(cat->store) < 0) {
        json_decref(doc);
        store_failed(cat, req, "catalog register");
        return;
    }
    xnode_commit(cat, req, node, doc, idx);
}

/* Removes the service (and its checks) or the check from doc; the whole node when neither. */
static json_t *xapply_deregister(json_t *doc, json_t *body)
{
    const char *sid = json_string_value(jget(body, "ServiceID"));
    const char *cid = json_string_value(jget(body, "CheckID"));
    /* Clients send "" for the field they leave out. */
    if (sid && !*sid) sid = NULL;
    if (cid && !*cid) cid = NULL;
    if (!sid && !cid) {
        json_decref(doc);
        return NULL;
    }
    json_t *checks = json_object_get(doc, "Checks"), *c;
    const char *key;
    void *tmp;
    if (sid) {
        json_object_del(json_object_get(doc, "Services"), sid);
        json_object_foreach_safe(checks, tmp, key, c)
        {
            if (!strcmp(dstr(c, "ServiceID"), sid)) json_object_del(checks, key);
        }
    }
    if (cid) json_object_del(checks, cid);
    return doc;
}

static void do_catalog_deregister(tr_catalog_t *cat, tr_http_req_t *req, json_t *body,
                                  const char *arg)
{
    (void)arg;
    const char *node;
    uint64_t idx;
    if (!xnode_target(cat, req, body, &node)) return;
    xnode_t *old = find_xnode(cat, node);
    if (!old) { /* Consul answers true for what is already gone. */
        tr_http_res_send(req, 200, "application/json", "true", 4);
        return;
    }
    json_t *doc = xapply_deregister(json_deep_copy(old->doc), body);
    if (tr_store_begin(cat->store, &idx) < 0) {
        json_decref(doc);
        store_failed(cat, req, "catalog deregister");
        return;
    }
    if (doc) json_object_set_new(doc, "ModifyIndex", json_integer((json_int_t)idx));
    if (xnode_persist(cat, node, doc, idx) < 0 || tr_store_commit(cat->store) < 0) {
        json_decref(doc);
        store_failed(cat, req, "catalog deregister");
        return;
    }
    xnode_commit(cat, req, node, doc, idx);
}

/* ---- bodies */

static void on_json(tr_http_req_t *req, json_t *body, void *data)
{
    body_t *b = data;
    b->fn(b->cat, req, body, b->arg);
}

static void read_body(tr_catalog_t *cat, tr_http_req_t *req, body_fn fn, const char *arg)
{
    body_t *b = tr_http_req_alloc(req, sizeof(*b));
    *b = (body_t){.cat = cat, .fn = fn, .arg = arg};
    tr_http_req_read_json(req, MAX_BODY, 0, on_json, b);
}

/* ---- routing */

static bool method_is(tr_http_req_t *req, const char *want)
{
    if (!strcmp(req->method, want)) return true;
    if (!strcmp(want, "GET") && req->head) return true; /* HEAD answers like GET, bodiless */
    tr_http_res_header(req, "Allow", want);
    tr_http_res_problem(req, 405, "method-not-allowed", "Method not allowed",
                        "%s is not supported on %s; use %s", req->method, req->path, want);
    return false;
}

/*
 * Agent writes take PUT, and GET as Consul before 1.0 did: clients of that era still
 * shipped today (Debian's python3-consul 0.7) deregister and update TTLs with GET.
 */
static bool method_is_agent_write(tr_http_req_t *req)
{
    if (!strcmp(req->method, "GET") && !req->head) return true;
    return method_is(req, "PUT");
}

/* If path starts with prefix, the percent-decoded rest (in request memory); else NULL. */
static const char *tail(tr_http_req_t *req, const char *prefix)
{
    size_t n = strlen(prefix);
    if (req->path_len <= n || strncmp(req->path, prefix, n) != 0) return NULL;
    size_t len = req->path_len - n;
    char *out = tr_http_req_alloc(req, len + 1);
    if (tr_http_percent_decode(out, req->path + n, len) < 0) return NULL;
    return out;
}

static bool path_is(const tr_http_req_t *req, const char *p)
{
    return req->path_len == strlen(p) && !memcmp(req->path, p, req->path_len);
}

/* Every ?tag= value: Consul filters on all of them when the parameter repeats. */
static void parse_tags(tr_http_req_t *req, query_t *q)
{
    const char *p = req->query;
    q->tags = tr_http_req_alloc(req, sizeof(*q->tags) * (req->query_len / 4 + 1));
    while (*p) {
        size_t n = strcspn(p, "&");
        if (n > 4 && !strncmp(p, "tag=", 4)) {
            char *tag = tr_http_req_alloc(req, n - 3);
            if (tr_http_percent_decode(tag, p + 4, n - 4) >= 0) q->tags[q->ntags++] = tag;
        }
        p += n + (p[n] == '&');
    }
}

static void read_query(tr_catalog_t *cat, tr_http_req_t *req, query_t *q)
{
    tr_blocking_t b;
    tr_filter_t *f;
    if (!method_is(req, "GET")) return;
    if (!tr_blocking_parse(req, &b) || !read_filter(req, &f)) return;
    q->filter = f;
    parse_tags(req, q);
    q->passing = tr_http_query_param(req, "passing", NULL);
    if (b.blocking && query_index(cat, q) <= b.index) {
        watch(cat, req, q, &b);
        return;
    }
    respond(cat, req, q);
    tr_filter_free(f);
}

static bool handle_read(tr_catalog_t *cat, tr_http_req_t *req)
{
    query_t q = {.state = -1};
    const char *arg = NULL;
    if (path_is(req, "/v1/catalog/services"))
        q.kind = Q_CAT_SERVICES;
    else if (path_is(req, "/v1/catalog/nodes"))
        q.kind = Q_CAT_NODES;
    else if ((arg = tail(req, "/v1/catalog/service/")))
        q.kind = Q_CAT_SERVICE;
    else if ((arg = tail(req, "/v1/catalog/node/")))
        q.kind = Q_CAT_NODE;
    else if ((arg = tail(req, "/v1/health/service/")))
        q.kind = Q_HEALTH_SERVICE;
    else if ((arg = tail(req, "/v1/health/node/")))
        q.kind = Q_HEALTH_NODE;
    else if ((arg = tail(req, "/v1/health/checks/")))
        q.kind = Q_HEALTH_CHECKS;
    else if ((arg = tail(req, "/v1/health/state/"))) {
        q.kind = Q_HEALTH_STATE;
        if (strcmp(arg, "any") != 0 && (q.state = parse_status(arg)) < 0) {
            bad_request(req, "unknown state: use any, passing, warning or critical");
            return true;
        }
    } else
        return false;
    q.name = arg;
    read_query(cat, req, &q);
    return true;
}

/* GET /v1/agent/services (id NULL) or /v1/agent/service/<id>. */
static void agent_services(tr_catalog_t *cat, tr_http_req_t *req, const char *id)
{
    if (id) {
        service_t *s = find_service(cat, id);
        if (s)
            send_json(req, service_json(cat, s, false));
        else
            unknown(req, "service", id);
        return;
    }
    tr_filter_t *f;
    if (!read_filter(req, &f)) return;
    sort_services(cat);
    json_t *out = json_object();
    for (service_t *s = cat->services; s; s = s->next)
        json_object_set_new(out, s->id, service_json(cat, s, false));
    send_json(req, apply_filter(out, f));
    tr_filter_free(f);
}

static void agent_checks(tr_catalog_t *cat, tr_http_req_t *req)
{
    tr_filter_t *f;
    if (!read_filter(req, &f)) return;
    json_t *out = json_object();
    for (check_t *c = cat->checks; c; c = c->next)
        json_object_set_new(out, c->id, check_json(cat, c));
    send_json(req, apply_filter(out, f));
    tr_filter_free(f);
}

static bool handle_agent_service(tr_catalog_t *cat, tr_http_req_t *req)
{
    const char *id;
    if (path_is(req, "/v1/agent/services")) {
        if (method_is(req, "GET")) agent_services(cat, req, NULL);
    } else if (path_is(req, "/v1/agent/service/register")) {
        if (method_is(req, "PUT")) read_body(cat, req, do_register_service, NULL);
    } else if ((id = tail(req, "/v1/agent/service/deregister/"))) {
        service_t *sv = find_service(cat, id);
        if (!method_is_agent_write(req)) return true;
        if (!sv)
            unknown(req, "service", id);
        else
            remove_service(cat, req, sv);
    } else if ((id = tail(req, "/v1/agent/service/maintenance/"))) {
        if (method_is_agent_write(req)) handle_maintenance(cat, req, id);
    } else if ((id = tail(req, "/v1/agent/service/"))) {
        if (method_is(req, "GET")) agent_services(cat, req, id);
    } else {
        return false;
    }
    return true;
}

static bool handle_agent_check(tr_catalog_t *cat, tr_http_req_t *req)
{
    static const char *const verbs[] = {"pass", "warn", "fail"};
    const char *id, *note = NULL;
    if (path_is(req, "/v1/agent/checks")) {
        if (method_is(req, "GET")) agent_checks(cat, req);
        return true;
    }
    if (!strncmp(req->path, "/v1/agent/check/", 16) && !method_is_agent_write(req)) return true;
    if (path_is(req, "/v1/agent/check/register")) {
        read_body(cat, req, do_register_check, NULL);
    } else if ((id = tail(req, "/v1/agent/check/deregister/"))) {
        check_t *c = find_check(cat, id);
        if (!c)
            unknown(req, "check", id);
        else
            remove_check(cat, req, c);
    } else if ((id = tail(req, "/v1/agent/check/update/"))) {
        read_body(cat, req, do_update_check, id);
    } else {
        for (int i = 0; i < 3; i++) {
            char prefix[32];
            snprintf(prefix, sizeof(prefix), "/v1/agent/check/%s/", verbs[i]);
            if (!(id = tail(req, prefix))) continue;
            tr_http_query_param(req, "note", &note);
            ttl_update(cat, req, id, i, note);
            return true;
        }
        return false;
    }
    return true;
}

/* ---- serf-like agent endpoints: this agent is the whole (single-node) cluster */

static json_t *member_json(const tr_catalog_t *cat, bool wan)
{
    char name[512];
    snprintf(name, sizeof(name), wan ? "%s.%s" : "%s", cat->node, cat->dc);
    return json_pack("{s:s, s:s, s:i, s:{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}, s:i, "
                     "s:i, s:i, s:i, s:i, s:i, s:i}",
                     "Name", name, "Addr", cat->address, "Port", wan ? 8302 : 8301, "Tags", "role",
                     "consul", "dc", cat->dc, "id", cat->node_id, "port", "8300", "build", "1.17.0",
                     "vsn", "2", "vsn_min", "2", "vsn_max", "3", "raft_vsn", "3", "Status", 1,
                     "ProtocolMin", 1, "ProtocolMax", 5, "ProtocolCur", 2, "DelegateMin", 2,
                     "DelegateMax", 5, "DelegateCur", 4);
}

/* True when addr ("host" or "host:port") names this agent. */
static bool is_self_addr(const tr_catalog_t *cat, const char *addr)
{
    char host[256];
    snprintf(host, sizeof(host), "%s", addr);
    char *colon = strrchr(host, ':');
    if (colon && strchr(host, ':') == colon) *colon = '\0';
    return !strcmp(host, cat->address) || !strcmp(host, cat->node) || !strcmp(host, "127.0.0.1") ||
           !strcmp(host, "localhost") || !strcmp(host, "[::1]");
}

static bool handle_agent_serf(tr_catalog_t *cat, tr_http_req_t *req)
{
    const char *arg;
    if (path_is(req, "/v1/agent/members")) {
        if (method_is(req, "GET")) {
            json_t *out = json_array();
            json_array_append_new(out, member_json(cat, tr_http_query_param(req, "wan", NULL)));
            send_json(req, out);
        }
    } else if ((arg = tail(req, "/v1/agent/join/"))) {
        if (!method_is(req, "PUT")) return true;
        if (is_self_addr(cat, arg))
            ok(req);
        else
            tr_http_res_problem(req, 500, "join-failed", "Join failed",
                                "cannot join %s: trellis registry runs as a single node and has "
                                "no gossip pool to join",
                                arg);
    } else if ((arg = tail(req, "/v1/agent/force-leave/"))) {
        /* Nothing gossips here, so there is no failed member to eject: done at once. */
        if (method_is(req, "PUT")) ok(req);
    } else {
        return false;
    }
    return true;
}

/* /v1/catalog/datacenters, /register and /deregister; false for the catalog's reads. */
static bool handle_catalog_write(tr_catalog_t *cat, tr_http_req_t *req)
{
    if (path_is(req, "/v1/catalog/datacenters")) {
        if (method_is(req, "GET")) send_json(req, json_pack("[s]", cat->dc));
    } else if (path_is(req, "/v1/catalog/register")) {
        if (method_is(req, "PUT")) read_body(cat, req, do_catalog_register, NULL);
    } else if (path_is(req, "/v1/catalog/deregister")) {
        if (method_is(req, "PUT")) read_body(cat, req, do_catalog_deregister, NULL);
    } else {
        return false;
    }
    return true;
}

bool tr_catalog_handle(tr_catalog_t *cat, tr_http_req_t *req)
{
    if (!strncmp(req->path, "/v1/agent/service", 17)) return handle_agent_service(cat, req);
    if (!strncmp(req->path, "/v1/agent/check", 15)) return handle_agent_check(cat, req);
    if (handle_agent_serf(cat, req) || handle_catalog_write(cat, req)) return true;
    if (!strncmp(req->path, "/v1/catalog/", 12) || !strncmp(req->path, "/v1/health/", 11))
        return handle_read(cat, req);
    return false;
}

/* ---- reaping: DeregisterCriticalServiceAfter */

static void on_sweep(uv_timer_t *t)
{
    tr_catalog_t *cat = t->data;
    uint64_t now = uv_now(cat->loop);
    for (check_t *c = cat->checks; c; c = c->next) {
        if (!c->dereg_ms || c->status != TR_CHECK_CRITICAL || !c->service_id) continue;
        if (now - c->critical_since < c->dereg_ms) continue;
        service_t *sv = find_service(cat, c->service_id);
        if (!sv) continue;
        tr_log_info("registry reaping critical service", TR_LOG_STR("service", sv->id),
                    TR_LOG_STR("check", c->id));
        remove_service(cat, NULL, sv);
        return; /* the list changed; the next sweep goes on */
    }
}

static void on_sweep_closed(uv_handle_t *h)
{
    free(h);
}

/* ---- open and close */

static void register_metrics(void)
{
    if (m_services) return;
    tr_metrics_t *reg = tr_metrics_default();
    static const char *const st_label[] = {"status", NULL};
    m_services = tr_metric_series(
        tr_metrics_gauge(reg, "trellis_registry_services", "Services registered", NULL), NULL);
    tr_metric_t *checks =
        tr_metrics_gauge(reg, "trellis_registry_checks", "Checks by status", st_label);
    tr_metric_t *changes = tr_metrics_counter(reg, "trellis_registry_check_status_changes_total",
                                              "Check status changes", st_label);
    m_watchers =
        tr_metric_series(tr_metrics_gauge(reg, "trellis_registry_catalog_watchers",
                                          "Blocking catalog and health queries waiting", NULL),
                         NULL);
    for (int i = 0; i < 3; i++) {
        const char *v[] = {status_names[i], NULL};
        m_checks[i] = tr_metric_series(checks, v);
        m_changes[i] = tr_metric_series(changes, v);
    }
}

static json_t *column_json(sqlite3_stmt *s, int col)
{
    return json_loads((const char *)sqlite3_column_text(s, col), 0, NULL);
}

static int load(tr_catalog_t *cat)
{
    int rc;
    sqlite3_stmt *s = tr_store_stmt(cat->store, "SELECT id, name, body, create_index,"
                                                " modify_index FROM catalog_services ORDER BY id");
    if (!s) return TR_EIO;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        service_t *sv = tr_calloc(1, sizeof(*sv));
        sv->id = tr_strdup((const char *)sqlite3_column_text(s, 0));
        sv->name = tr_strdup((const char *)sqlite3_column_text(s, 1));
        sv->def = column_json(s, 2);
        if (!sv->def) sv->def = json_object();
        sv->create_index = (uint64_t)sqlite3_column_int64(s, 3);
        sv->modify_index = (uint64_t)sqlite3_column_int64(s, 4);
        link_service(cat, sv);
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) return TR_EIO;
    s = tr_store_stmt(cat->store, "SELECT id, service_id, body, status, output, create_index,"
                                  " modify_index FROM catalog_checks ORDER BY create_index, id");
    if (!s) return TR_EIO;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        check_t *c = tr_calloc(1, sizeof(*c));
        c->id = tr_strdup((const char *)sqlite3_column_text(s, 0));
        if (sqlite3_column_type(s, 1) != SQLITE_NULL)
            c->service_id = tr_strdup((const char *)sqlite3_column_text(s, 1));
        c->def = column_json(s, 2);
        if (!c->def) c->def = json_object();
        int st = parse_status((const char *)sqlite3_column_text(s, 3));
        c->status = st < 0 ? TR_CHECK_CRITICAL : (tr_check_status_t)st;
        c->output = tr_strdup((const char *)sqlite3_column_text(s, 4));
        c->create_index = (uint64_t)sqlite3_column_int64(s, 5);
        c->modify_index = (uint64_t)sqlite3_column_int64(s, 6);
        check_derive(c);
        link_check(cat, c);
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) return TR_EIO;
    s = tr_store_stmt(cat->store, "SELECT name, body FROM catalog_nodes ORDER BY name DESC");
    if (!s) return TR_EIO;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        xnode_t *n = tr_calloc(1, sizeof(*n));
        n->name = tr_strdup((const char *)sqlite3_column_text(s, 0));
        n->doc = column_json(s, 1);
        if (!n->doc) n->doc = json_pack("{s:{}, s:{}}", "Services", "Checks");
        n->next = cat->xnodes;
        cat->xnodes = n;
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) return TR_EIO;
    s = tr_store_stmt(cat->store, "SELECT name, idx FROM catalog_tombstones");
    if (!s) return TR_EIO;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW)
        set_tomb(cat, (const char *)sqlite3_column_text(s, 0),
                 (uint64_t)sqlite3_column_int64(s, 1));
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? 0 : TR_EIO;
}

int tr_catalog_open(uv_loop_t *loop, tr_store_t *store, const tr_catalog_node_t *node,
                    tr_catalog_t **out, char *err, size_t errlen)
{
    *out = NULL;
    register_metrics();
    tr_catalog_t *cat = tr_calloc(1, sizeof(*cat));
    cat->loop = loop;
    cat->store = store;
    cat->node = tr_strdup(node->name ? node->name : "trellis");
    cat->node_id = tr_strdup(node->id ? node->id : "");
    cat->address = tr_strdup(node->address ? node->address : "127.0.0.1");
    cat->dc = tr_strdup(node->datacenter ? node->datacenter : "dc1");
    cat->consul = (service_t){.id = tr_strdup("consul"),
                              .name = tr_strdup("consul"),
                              .create_index = 1,
                              .modify_index = 1};
    cat->consul.def =
        json_pack("{s:s, s:s, s:[], s:{}, s:i, s:s, s:{s:i, s:i}, s:b}", "ID", "consul", "Service",
                  "consul", "Tags", "Meta", "Port", 8300, "Address", "", "Weights", "Passing", 1,
                  "Warning", 1, "EnableTagOverride", 0);
    int rc = tr_checker_start(loop, on_check_result, cat, &cat->checker);
    if (rc < 0) {
        snprintf(err, errlen, "cannot start health checking: %s", tr_strerror(rc));
        tr_catalog_close(cat);
        return rc;
    }
    if (load(cat) < 0) {
        snprintf(err, errlen, "cannot load the catalog: %s", sqlite3_errmsg(tr_store_db(store)));
        tr_catalog_close(cat);
        return TR_EIO;
    }
    cat->sweep = tr_malloc(sizeof(*cat->sweep));
    uv_timer_init(loop, cat->sweep);
    cat->sweep->data = cat;
    uv_timer_start(cat->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    count_metrics(cat);
    *out = cat;
    return 0;
}

void tr_catalog_close(tr_catalog_t *cat)
{
    if (!cat) return;
    while (cat->watchers)
        tr_waiter_wake(cat->watchers);
    size_t gpos = 0;
    void *gv;
    while (tr_map_next(&cat->groups, &gpos, NULL, &gv))
        while (((group_t *)gv)->watchers)
            tr_waiter_wake(((group_t *)gv)->watchers);
    tr_catalog_set_hub(cat, NULL);
    if (cat->checker) tr_checker_stop(cat->checker);
    cat->checker = NULL;
    if (cat->sweep) {
        uv_timer_stop(cat->sweep);
        uv_close((uv_handle_t *)cat->sweep, on_sweep_closed);
    }
    while (cat->checks) {
        check_t *c = cat->checks;
        cat->checks = c->next;
        disarm_free(cat, c);
    }
    while (cat->services) {
        service_t *s = cat->services;
        cat->services = s->next;
        service_free(s);
    }
    size_t pos = 0;
    void *g;
    while (tr_map_next(&cat->groups, &pos, NULL, &g))
        group_free(g);
    tr_map_free(&cat->groups);
    tr_map_free(&cat->services_by_id);
    tr_map_free(&cat->checks_by_id);
    while (cat->xnodes) {
        xnode_t *n = cat->xnodes;
        cat->xnodes = n->next;
        xnode_free(n);
    }
    free(cat->consul.id);
    free(cat->consul.name);
    json_decref(cat->consul.def);
    free(cat->node);
    free(cat->node_id);
    free(cat->address);
    free(cat->dc);
    free(cat);
}
