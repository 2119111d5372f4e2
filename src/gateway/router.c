/* The gateway's router: compiles the `routes:` list and matches requests to routes. */
#include "gateway/router.h"

#include <ctype.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"
#include "trellis/error.h"

const char *const tr_router_route_keys[] = {"name",    "match",        "upstream", "destinations",
                                            "subsets", "strip_prefix", "rewrite",  NULL};

static const char *const match_keys[] = {"prefix",  "exact", "template", "regex", "methods",
                                         "headers", "query", "version",  NULL};
static const char *const matcher_keys[] = {"exact", "prefix",  "suffix", "contains",
                                           "regex", "present", "absent", NULL};
static const char *const destination_keys[] = {"upstream", "weight", NULL};
static const char *const subset_keys[] = {"headers", "query", "upstream", NULL};
static const char *const rewrite_keys[] = {"prefix", "path", NULL};

#define MAX_WEIGHT 1000000

enum path_kind { PATH_PREFIX, PATH_EXACT, PATH_TEMPLATE, PATH_REGEX };
enum op { OP_EXACT, OP_PREFIX, OP_SUFFIX, OP_CONTAINS, OP_REGEX, OP_PRESENT, OP_ABSENT };
enum rewrite_kind { REWRITE_NONE, REWRITE_STRIP, REWRITE_PREFIX, REWRITE_PATH };

/* One header or query condition. Header names are stored lower-cased. */
typedef struct matcher_s {
    char *name;
    size_t name_len;
    enum op op;
    char *value;
    size_t value_len;
    regex_t re;
    bool has_re;
} matcher_t;

typedef struct matchers_s {
    matcher_t *v;
    size_t n;
} matchers_t;

/* A template segment: a literal, or a parameter (lit == NULL) captured by index. */
typedef struct tseg_s {
    char *lit;
    size_t len;
} tseg_t;

/* A piece of rewrite.path: a literal, or (param >= 0) a captured template parameter. */
typedef struct rpiece_s {
    char *lit;
    size_t len;
    int param;
} rpiece_t;

typedef struct subset_s {
    matchers_t headers;
    matchers_t query;
} subset_t;

struct tr_route_s {
    char *name;
    size_t index;
    const json_t *def;
    void *data;

    enum path_kind kind;
    char *path; /* prefix, exact or template (normalized), or the regex source */
    size_t path_len;
    regex_t re;
    bool has_re;
    tseg_t *segs;
    size_t nsegs;
    size_t lit_len; /* bytes of the template before its first parameter: a cheap pre-check */
    char **params;  /* template parameter names, in order */
    size_t nparams;

    char **methods;
    size_t *method_lens;
    size_t nmethods;
    matchers_t headers;
    matchers_t query;
    char *version;
    size_t version_len;

    tr_route_destination_t *dests; /* nweighted weighted ones, then one per subset */
    size_t nweighted;
    uint64_t total_weight;
    subset_t *subsets;
    size_t nsubsets;

    enum rewrite_kind rewrite;
    char *rewrite_prefix;
    size_t rewrite_prefix_len;
    rpiece_t *pieces;
    size_t npieces;
};

struct tr_router_s {
    tr_route_t *routes;
    size_t n;
};

/* ---- path normalization ---- */

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool is_unreserved(int c)
{
    /* ASCII only: isalnum() would follow the locale and accept bytes above 0x7f. */
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

/*
 * Copies one segment of src (up to the next '/' or the end) to out, decoding escapes of
 * unreserved characters and upper-casing the others. Returns the bytes written, or -1.
 */
static long copy_segment(const char *src, size_t len, size_t *i, char *out)
{
    static const char hex[] = "0123456789ABCDEF";
    long o = 0;
    for (; *i < len && src[*i] != '/'; (*i)++) {
        char c = src[*i];
        if (c == '\\' || c == '\0') return -1;
        if (c != '%') {
            out[o++] = c;
            continue;
        }
        if (*i + 2 >= len) return -1;
        int hi = hexval((unsigned char)src[*i + 1]), lo = hexval((unsigned char)src[*i + 2]);
        if (hi < 0 || lo < 0) return -1;
        int v = hi * 16 + lo;
        if (v == '/' || v == '\\' || v == 0) return -1;
        if (is_unreserved(v)) {
            out[o++] = (char)v;
        } else {
            out[o++] = '%';
            out[o++] = hex[hi];
            out[o++] = hex[lo];
        }
        *i += 2;
    }
    return o;
}

long tr_router_normalize_path(const char *path, size_t len, char *out)
{
    if (len == 0 || path[0] != '/') return TR_EPARSE;
    size_t o = 1, i = 1;
    out[0] = '/';
    /* Invariant: out[0..o) ends with '/' before each segment is copied at out + o. */
    while (i <= len) {
        long sl = copy_segment(path, len, &i, out + o);
        if (sl < 0) return TR_EPARSE;
        bool more = i < len; /* path[i] is the '/' after this segment */
        i++;
        if (sl == 0 || (sl == 1 && out[o] == '.')) continue;
        if (sl == 2 && out[o] == '.' && out[o + 1] == '.') {
            if (o > 1) {
                o--; /* drop the '/' and the segment before it */
                while (o > 0 && out[o - 1] != '/')
                    o--;
            }
            continue;
        }
        o += (size_t)sl;
        if (more) out[o++] = '/';
    }
    out[o] = '\0';
    return (long)o;
}

/* ---- compiling ---- */

static void free_matchers(matchers_t *ms)
{
    for (size_t i = 0; i < ms->n; i++) {
        free(ms->v[i].name);
        free(ms->v[i].value);
        if (ms->v[i].has_re) regfree(&ms->v[i].re);
    }
    tr_free(&ms->v);
    ms->n = 0;
}

static void free_route(tr_route_t *rt)
{
    free(rt->name);
    free(rt->path);
    if (rt->has_re) regfree(&rt->re);
    for (size_t i = 0; i < rt->nsegs; i++)
        free(rt->segs[i].lit);
    free(rt->segs);
    for (size_t i = 0; i < rt->nparams; i++)
        free(rt->params[i]);
    free(rt->params);
    for (size_t i = 0; i < rt->nmethods; i++)
        free(rt->methods[i]);
    free(rt->methods);
    free(rt->method_lens);
    free_matchers(&rt->headers);
    free_matchers(&rt->query);
    free(rt->version);
    for (size_t i = 0; i < rt->nweighted + rt->nsubsets; i++)
        free((char *)rt->dests[i].upstream);
    free(rt->dests);
    for (size_t i = 0; i < rt->nsubsets; i++) {
        free_matchers(&rt->subsets[i].headers);
        free_matchers(&rt->subsets[i].query);
    }
    free(rt->subsets);
    free(rt->rewrite_prefix);
    for (size_t i = 0; i < rt->npieces; i++)
        free(rt->pieces[i].lit);
    free(rt->pieces);
}

void tr_router_free(tr_router_t *r)
{
    if (r == NULL) return;
    for (size_t i = 0; i < r->n; i++)
        free_route(&r->routes[i]);
    free(r->routes);
    free(r);
}

/* Compiles a POSIX extended regex at obj[key]; the error names the key with regerror's text. */
static int compile_regex(tr_config_t *cfg, const json_t *obj, const char *key, const char *src,
                         regex_t *re, bool *has)
{
    int rc = regcomp(re, src, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        char msg[256];
        regerror(rc, re, msg, sizeof(msg));
        regfree(re);
        return tr_config_fail(cfg, obj, key, "bad regular expression: %s", msg);
    }
    *has = true;
    return 0;
}

/* A required non-empty string at obj[key]. */
static int get_nonempty(tr_config_t *cfg, const json_t *obj, const char *key, const char **out)
{
    int rc = tr_config_get_string(cfg, obj, key, NULL, out);
    if (rc != 0) return rc;
    if (*out == NULL) return tr_config_fail(cfg, obj, NULL, "missing \"%s\"", key);
    if (**out == '\0') return tr_config_fail(cfg, obj, key, "must be a non-empty string");
    return 0;
}

/* One matcher: `name: value` (exact) or `name: {op: value}` with exactly one op. */
static int compile_matcher(tr_config_t *cfg, const json_t *parent, const char *name,
                           const json_t *spec, bool lower, matcher_t *m)
{
    m->name = tr_strdup(name);
    m->name_len = strlen(name);
    if (lower)
        for (size_t i = 0; i < m->name_len; i++)
            m->name[i] = (char)tolower((unsigned char)m->name[i]);
    if (json_is_string(spec)) {
        m->op = OP_EXACT;
        m->value = tr_strdup(json_string_value(spec));
        m->value_len = strlen(m->value);
        return 0;
    }
    if (!json_is_object(spec))
        return tr_config_fail(cfg, parent, name,
                              "expected a string or a mapping with one of exact, prefix, suffix, "
                              "contains, regex, present, absent");
    int rc = tr_config_check_keys(cfg, spec, matcher_keys);
    if (rc != 0) return rc;
    if (json_object_size(spec) != 1)
        return tr_config_fail(cfg, parent, name,
                              "needs exactly one of exact, prefix, suffix, contains, regex, "
                              "present, absent");
    const char *op = json_object_iter_key(json_object_iter((json_t *)spec));
    for (int i = 0; matcher_keys[i]; i++)
        if (strcmp(op, matcher_keys[i]) == 0) m->op = (enum op)i;
    if (m->op == OP_PRESENT || m->op == OP_ABSENT) {
        bool b;
        rc = tr_config_get_bool(cfg, spec, op, true, &b);
        if (rc != 0) return rc;
        if (!b) m->op = m->op == OP_PRESENT ? OP_ABSENT : OP_PRESENT;
        return 0;
    }
    const char *v;
    rc = tr_config_get_string(cfg, spec, op, "", &v);
    if (rc != 0) return rc;
    m->value = tr_strdup(v);
    m->value_len = strlen(v);
    if (m->op == OP_REGEX) return compile_regex(cfg, spec, op, v, &m->re, &m->has_re);
    return 0;
}

/* obj[key]: a mapping of name → matcher (absent is fine). */
static int compile_matchers(tr_config_t *cfg, const json_t *obj, const char *key, bool lower,
                            matchers_t *ms)
{
    json_t *map, *spec;
    const char *name;
    int rc = tr_config_get_object(cfg, obj, key, &map);
    if (rc != 0 || map == NULL) return rc;
    ms->v = tr_calloc(json_object_size(map) ? json_object_size(map) : 1, sizeof(matcher_t));
    json_object_foreach(map, name, spec)
    {
        if (*name == '\0') return tr_config_fail(cfg, map, name, "empty name");
        rc = compile_matcher(cfg, map, name, spec, lower, &ms->v[ms->n++]);
        if (rc != 0) return rc;
    }
    return 0;
}

static bool is_param_name(const char *s, size_t len)
{
    if (len == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_')) return false;
    for (size_t i = 1; i < len; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_')) return false;
    return true;
}

static int param_index(const tr_route_t *rt, const char *s, size_t len)
{
    for (size_t i = 0; i < rt->nparams; i++)
        if (strlen(rt->params[i]) == len && memcmp(rt->params[i], s, len) == 0) return (int)i;
    return -1;
}

/* Splits a normalized template into segments; {name} segments become parameters. */
static int compile_template(tr_config_t *cfg, const json_t *match, tr_route_t *rt)
{
    const char *p = rt->path + 1, *end = rt->path + rt->path_len;
    size_t cap = 1;
    for (const char *q = rt->path; q < end; q++)
        cap += *q == '/';
    const char *brace = memchr(rt->path, '{', rt->path_len);
    rt->lit_len = brace ? (size_t)(brace - rt->path) : rt->path_len;
    rt->segs = tr_calloc(cap, sizeof(tseg_t));
    rt->params = tr_calloc(cap, sizeof(char *));
    while (p <= end) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *se = slash ? slash : end;
        size_t len = (size_t)(se - p);
        tseg_t *s = &rt->segs[rt->nsegs++];
        s->len = len;
        if (len >= 2 && p[0] == '{' && se[-1] == '}') {
            if (!is_param_name(p + 1, len - 2))
                return tr_config_fail(cfg, match, "template", "bad parameter name \"%.*s\"",
                                      (int)len, p);
            if (param_index(rt, p + 1, len - 2) >= 0)
                return tr_config_fail(cfg, match, "template", "duplicate parameter \"%.*s\"",
                                      (int)len, p);
            if (rt->nparams == TR_ROUTER_MAX_PARAMS)
                return tr_config_fail(cfg, match, "template", "more than %d parameters",
                                      TR_ROUTER_MAX_PARAMS);
            rt->params[rt->nparams++] = tr_strndup(p + 1, len - 2);
        } else if (memchr(p, '{', len) || memchr(p, '}', len)) {
            return tr_config_fail(cfg, match, "template",
                                  "a parameter must be a whole segment, like /items/{id}");
        } else {
            s->lit = tr_strndup(p, len);
        }
        if (!slash) break;
        p = slash + 1;
    }
    return 0;
}

/* Normalizes a configured path so it compares equal to normalized request paths. */
static int set_path(tr_config_t *cfg, const json_t *match, const char *key, const char *v,
                    tr_route_t *rt)
{
    size_t len = strlen(v);
    if (len == 0 || v[0] != '/') return tr_config_fail(cfg, match, key, "must start with \"/\"");
    rt->path = tr_malloc(len + 1);
    long n = tr_router_normalize_path(v, len, rt->path);
    if (n < 0)
        return tr_config_fail(cfg, match, key,
                              "malformed path (bad percent-escape, encoded \"/\" or \"\\\")");
    rt->path_len = (size_t)n;
    return 0;
}

static int compile_path(tr_config_t *cfg, const json_t *match, tr_route_t *rt)
{
    static const char *const kinds[] = {"prefix", "exact", "template", "regex"};
    int found = -1;
    for (int k = 0; k < 4; k++) {
        if (json_object_get(match, kinds[k]) == NULL) continue;
        if (found >= 0)
            return tr_config_fail(cfg, match, kinds[k],
                                  "only one of prefix, exact, template, "
                                  "regex may be set (%s is already set)",
                                  kinds[found]);
        found = k;
    }
    rt->kind = found < 0 ? PATH_PREFIX : (enum path_kind)found;
    if (found < 0) return set_path(cfg, match, "prefix", "/", rt);
    const char *v;
    int rc = get_nonempty(cfg, match, kinds[found], &v);
    if (rc != 0) return rc;
    if (rt->kind == PATH_REGEX) {
        rt->path = tr_strdup(v);
        rt->path_len = strlen(v);
        return compile_regex(cfg, match, "regex", v, &rt->re, &rt->has_re);
    }
    rc = set_path(cfg, match, kinds[found], v, rt);
    if (rc == 0 && rt->kind == PATH_TEMPLATE) rc = compile_template(cfg, match, rt);
    return rc;
}

static int compile_methods(tr_config_t *cfg, const json_t *match, tr_route_t *rt)
{
    json_t *list, *v;
    size_t i;
    int rc = tr_config_get_array(cfg, match, "methods", &list);
    if (rc != 0 || list == NULL) return rc;
    if (json_array_size(list) == 0)
        return tr_config_fail(cfg, match, "methods", "must not be empty (omit it for any method)");
    rt->methods = tr_calloc(json_array_size(list), sizeof(char *));
    rt->method_lens = tr_calloc(json_array_size(list), sizeof(size_t));
    json_array_foreach(list, i, v)
    {
        const char *s = json_string_value(v);
        size_t n = s ? strlen(s) : 0;
        bool ok = n > 0;
        for (size_t j = 0; j < n; j++)
            ok = ok && s[j] > ' ' && s[j] < 0x7f && !islower((unsigned char)s[j]);
        if (!ok)
            return tr_config_fail(cfg, v, NULL, "a method must be an upper-case token like GET");
        rt->methods[rt->nmethods] = tr_strdup(s);
        rt->method_lens[rt->nmethods++] = n;
    }
    return 0;
}

static int compile_match(tr_config_t *cfg, const json_t *route, tr_route_t *rt)
{
    json_t *match;
    int rc = tr_config_get_object(cfg, route, "match", &match);
    if (rc != 0) return rc;
    if (match == NULL) return set_path(cfg, route, "match", "/", rt); /* any request */
    if ((rc = tr_config_check_keys(cfg, match, match_keys)) != 0) return rc;
    if ((rc = compile_path(cfg, match, rt)) != 0) return rc;
    if ((rc = compile_methods(cfg, match, rt)) != 0) return rc;
    if ((rc = compile_matchers(cfg, match, "headers", true, &rt->headers)) != 0) return rc;
    if ((rc = compile_matchers(cfg, match, "query", false, &rt->query)) != 0) return rc;
    const char *version;
    if ((rc = tr_config_get_string(cfg, match, "version", NULL, &version)) != 0) return rc;
    if (version) {
        if (*version == '\0' || strchr(version, '/'))
            return tr_config_fail(cfg, match, "version",
                                  "must be a non-empty path segment like v2");
        rt->version = tr_strdup(version);
        rt->version_len = strlen(version);
    }
    return 0;
}

static int compile_weighted(tr_config_t *cfg, const json_t *route, json_t *list, tr_route_t *rt)
{
    json_t *d;
    size_t i;
    json_array_foreach(list, i, d)
    {
        if (!json_is_object(d))
            return tr_config_fail(cfg, d, NULL,
                                  "a destination must be a mapping like "
                                  "{upstream: name, weight: 90}");
        int rc = tr_config_check_keys(cfg, d, destination_keys);
        const char *up;
        int64_t w;
        if (rc == 0) rc = get_nonempty(cfg, d, "upstream", &up);
        if (rc == 0) rc = tr_config_get_int(cfg, d, "weight", 1, 0, MAX_WEIGHT, &w);
        if (rc != 0) return rc;
        rt->dests[rt->nweighted].upstream = tr_strdup(up);
        rt->dests[rt->nweighted++].weight = (uint32_t)w;
        rt->total_weight += (uint64_t)w;
    }
    if (rt->total_weight == 0)
        return tr_config_fail(cfg, route, "destinations", "the weights must not all be 0");
    return 0;
}

static int compile_subsets(tr_config_t *cfg, json_t *list, tr_route_t *rt)
{
    json_t *s;
    size_t i;
    rt->subsets = tr_calloc(json_array_size(list), sizeof(subset_t));
    json_array_foreach(list, i, s)
    {
        if (!json_is_object(s))
            return tr_config_fail(cfg, s, NULL,
                                  "a subset must be a mapping like "
                                  "{headers: {x-canary: \"1\"}, upstream: name}");
        subset_t *sub = &rt->subsets[rt->nsubsets];
        int rc = tr_config_check_keys(cfg, s, subset_keys);
        const char *up;
        if (rc == 0) rc = get_nonempty(cfg, s, "upstream", &up);
        if (rc == 0) rc = compile_matchers(cfg, s, "headers", true, &sub->headers);
        if (rc == 0) rc = compile_matchers(cfg, s, "query", false, &sub->query);
        rt->nsubsets++; /* counted before returning so free_route frees what was built */
        if (rc != 0) return rc;
        if (sub->headers.n + sub->query.n == 0)
            return tr_config_fail(cfg, s, NULL, "a subset needs headers or query to match on");
        rt->dests[rt->nweighted + i].upstream = tr_strdup(up);
    }
    return 0;
}

static int compile_destinations(tr_config_t *cfg, const json_t *route, tr_route_t *rt)
{
    const char *up;
    json_t *list, *subsets;
    int rc = tr_config_get_string(cfg, route, "upstream", NULL, &up);
    if (rc == 0) rc = tr_config_get_array(cfg, route, "destinations", &list);
    if (rc == 0) rc = tr_config_get_array(cfg, route, "subsets", &subsets);
    if (rc != 0) return rc;
    if (up && *up == '\0') return tr_config_fail(cfg, route, "upstream", "must not be empty");
    if (up && list)
        return tr_config_fail(cfg, route, "destinations",
                              "set either upstream or destinations, not both");
    if (list && json_array_size(list) == 0)
        return tr_config_fail(cfg, route, "destinations", "must not be empty");
    size_t nw = up ? 1 : list ? json_array_size(list) : 0;
    size_t ns = subsets ? json_array_size(subsets) : 0;
    if (nw + ns == 0 && !json_object_get(route, "aggregate") && !json_object_get(route, "fallback"))
        return tr_config_fail(cfg, route, NULL,
                              "route has nowhere to send requests: set upstream, destinations, "
                              "subsets, aggregate or fallback");
    rt->dests = nw + ns ? tr_calloc(nw + ns, sizeof(tr_route_destination_t)) : NULL;
    if (up) {
        rt->dests[0].upstream = tr_strdup(up);
        rt->dests[0].weight = 1;
        rt->nweighted = 1;
        rt->total_weight = 1;
    } else if (list && (rc = compile_weighted(cfg, route, list, rt)) != 0) {
        return rc;
    }
    return subsets ? compile_subsets(cfg, subsets, rt) : 0;
}

static int compile_rewrite_path(tr_config_t *cfg, const json_t *rw, const char *v, tr_route_t *rt)
{
    if (v[0] != '/') return tr_config_fail(cfg, rw, "path", "must start with \"/\"");
    size_t len = strlen(v);
    rt->pieces = tr_calloc(len + 1, sizeof(rpiece_t));
    const char *p = v, *end = v + len;
    while (p < end) {
        rpiece_t *pc = &rt->pieces[rt->npieces++];
        const char *open = strchr(p, '{');
        if (open == p) {
            const char *close = strchr(p, '}');
            int idx = close ? param_index(rt, p + 1, (size_t)(close - p - 1)) : -1;
            if (idx < 0)
                return tr_config_fail(cfg, rw, "path",
                                      "\"%.*s\" is not a parameter captured by the template",
                                      close ? (int)(close - p + 1) : (int)(end - p), p);
            pc->param = idx;
            p = close + 1;
        } else {
            size_t n = open ? (size_t)(open - p) : (size_t)(end - p);
            pc->lit = tr_strndup(p, n);
            pc->len = n;
            pc->param = -1;
            p += n;
        }
    }
    return 0;
}

static int compile_rewrite(tr_config_t *cfg, const json_t *route, tr_route_t *rt)
{
    bool strip;
    json_t *rw;
    int rc = tr_config_get_bool(cfg, route, "strip_prefix", false, &strip);
    if (rc == 0) rc = tr_config_get_object(cfg, route, "rewrite", &rw);
    if (rc != 0) return rc;
    if (strip && rt->kind != PATH_PREFIX)
        return tr_config_fail(cfg, route, "strip_prefix", "only prefix routes can strip a prefix");
    if (strip && rw)
        return tr_config_fail(cfg, route, "rewrite", "set either strip_prefix or rewrite");
    rt->rewrite = strip ? REWRITE_STRIP : REWRITE_NONE;
    if (rw == NULL) return 0;
    if ((rc = tr_config_check_keys(cfg, rw, rewrite_keys)) != 0) return rc;
    const char *prefix, *path;
    rc = tr_config_get_string(cfg, rw, "prefix", NULL, &prefix);
    if (rc == 0) rc = tr_config_get_string(cfg, rw, "path", NULL, &path);
    if (rc != 0) return rc;
    if ((prefix != NULL) == (path != NULL))
        return tr_config_fail(cfg, route, "rewrite", "needs exactly one of prefix or path");
    if (path) {
        rt->rewrite = REWRITE_PATH;
        return compile_rewrite_path(cfg, rw, path, rt);
    }
    if (rt->kind != PATH_PREFIX && rt->kind != PATH_EXACT)
        return tr_config_fail(cfg, rw, "prefix",
                              "only prefix and exact routes can rewrite a "
                              "prefix (use rewrite.path)");
    if (prefix[0] != '/') return tr_config_fail(cfg, rw, "prefix", "must start with \"/\"");
    rt->rewrite = REWRITE_PREFIX;
    rt->rewrite_prefix = tr_strdup(prefix);
    rt->rewrite_prefix_len = strlen(prefix);
    return 0;
}

static int compile_route(tr_config_t *cfg, tr_router_t *r, const json_t *route, size_t index)
{
    tr_route_t *rt = &r->routes[index];
    rt->index = index;
    rt->def = route;
    if (!json_is_object(route))
        return tr_config_fail(cfg, route, NULL, "a route must be a mapping");
    const char *name;
    int rc = tr_config_get_string(cfg, route, "name", NULL, &name);
    if (rc != 0) return rc;
    if (name && *name == '\0') return tr_config_fail(cfg, route, "name", "must not be empty");
    char def_name[32];
    snprintf(def_name, sizeof(def_name), "route-%zu", index);
    rt->name = tr_strdup(name ? name : def_name);
    for (size_t i = 0; i < index; i++)
        if (strcmp(r->routes[i].name, rt->name) == 0)
            return tr_config_fail(cfg, route, name ? "name" : NULL,
                                  "duplicate route name \"%s\" (route %zu has it too)", rt->name,
                                  i);
    if ((rc = compile_match(cfg, route, rt)) != 0) return rc;
    if ((rc = compile_destinations(cfg, route, rt)) != 0) return rc;
    return compile_rewrite(cfg, route, rt);
}

int tr_router_compile(tr_config_t *cfg, const json_t *routes, tr_router_t **out)
{
    *out = NULL;
    if (routes && !json_is_array(routes))
        return tr_config_fail(cfg, routes, NULL, "expected a list of routes");
    tr_router_t *r = tr_calloc(1, sizeof(*r));
    size_t n = routes ? json_array_size(routes) : 0;
    r->routes = tr_calloc(n ? n : 1, sizeof(tr_route_t));
    for (size_t i = 0; i < n; i++) {
        r->n = i + 1; /* so tr_router_free frees the partly built route on error */
        int rc = compile_route(cfg, r, json_array_get(routes, i), i);
        if (rc != 0) {
            tr_router_free(r);
            return rc;
        }
    }
    *out = r;
    return 0;
}

/* ---- accessors ---- */

size_t tr_router_count(const tr_router_t *r)
{
    return r->n;
}

tr_route_t *tr_router_route(const tr_router_t *r, size_t i)
{
    return i < r->n ? &r->routes[i] : NULL;
}

const char *tr_route_name(const tr_route_t *route)
{
    return route->name;
}

size_t tr_route_index(const tr_route_t *route)
{
    return route->index;
}

const json_t *tr_route_def(const tr_route_t *route)
{
    return route->def;
}

void tr_route_set_data(tr_route_t *route, void *data)
{
    route->data = data;
}

void *tr_route_data(const tr_route_t *route)
{
    return route->data;
}

size_t tr_route_destinations(tr_route_t *route, tr_route_destination_t **out)
{
    *out = route->dests;
    return route->nweighted + route->nsubsets;
}

/* ---- matching ---- */

/* A view of the path the path matchers see, with the template's captures. */
typedef struct view_s {
    const char *p;
    size_t len;
    size_t matched; /* bytes of p the prefix (or exact path) matched */
    const char *cap[TR_ROUTER_MAX_PARAMS];
    size_t cap_len[TR_ROUTER_MAX_PARAMS];
} view_t;

static bool value_holds(const matcher_t *m, const char *v, size_t len)
{
    switch (m->op) {
    case OP_EXACT:
        return len == m->value_len && memcmp(v, m->value, len) == 0;
    case OP_PREFIX:
        return len >= m->value_len && memcmp(v, m->value, m->value_len) == 0;
    case OP_SUFFIX:
        return len >= m->value_len && memcmp(v + len - m->value_len, m->value, m->value_len) == 0;
    case OP_CONTAINS:
        return memmem(v, len, m->value, m->value_len) != NULL;
    case OP_REGEX:
        return regexec(&m->re, v, 0, NULL, 0) == 0; /* v is NUL-terminated */
    default:
        return true; /* present */
    }
}

/* ASCII-only lower-casing: header names are tokens, and this avoids locale lookups. */
static inline char ascii_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
}

static bool name_equals_lower(const char *name, size_t len, const char *lower)
{
    for (size_t i = 0; i < len; i++)
        if (ascii_lower(name[i]) != lower[i]) return false;
    return true;
}

/* A header matcher holds when some header of that name satisfies it (absent: none exists). */
static bool header_holds(const matcher_t *m, const tr_route_request_t *rq)
{
    for (size_t i = 0; i < rq->nheaders; i++) {
        const tr_http_header_t *h = &rq->headers[i];
        if (h->name_len != m->name_len || !name_equals_lower(h->name, h->name_len, m->name))
            continue;
        if (m->op == OP_ABSENT) return false;
        if (value_holds(m, h->value, h->value_len)) return true;
    }
    return m->op == OP_ABSENT;
}

/* Query matchers compare percent-decoded values; a malformed escape compares as sent. */
static bool query_holds(const matcher_t *m, const tr_route_request_t *rq)
{
    const char *q = rq->query, *end = rq->query + rq->query_len;
    char buf[TR_ROUTER_MAX_QUERY_VALUE + 1];
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(pe - q));
        const char *ke = eq ? eq : pe;
        if ((size_t)(ke - q) == m->name_len && memcmp(q, m->name, m->name_len) == 0) {
            if (m->op == OP_ABSENT) return false;
            if (m->op == OP_PRESENT) return true;
            const char *v = eq ? eq + 1 : pe;
            size_t vlen = (size_t)(pe - v);
            if (vlen <= TR_ROUTER_MAX_QUERY_VALUE) {
                long n = tr_http_percent_decode(buf, v, vlen);
                if (n < 0) {
                    memcpy(buf, v, vlen);
                    buf[vlen] = '\0';
                    n = (long)vlen;
                }
                if (value_holds(m, buf, (size_t)n)) return true;
            }
        }
        q = pe + 1;
    }
    return m->op == OP_ABSENT;
}

static bool matchers_hold(const matchers_t *hs, const matchers_t *qs, const tr_route_request_t *rq)
{
    for (size_t i = 0; i < hs->n; i++)
        if (!header_holds(&hs->v[i], rq)) return false;
    for (size_t i = 0; i < qs->n; i++)
        if (!query_holds(&qs->v[i], rq)) return false;
    return true;
}

static bool template_holds(const tr_route_t *rt, view_t *v)
{
    const char *p = v->p + 1, *end = v->p + v->len;
    size_t param = 0;
    for (size_t i = 0; i < rt->nsegs; i++) {
        if (p > end) return false;
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *se = slash ? slash : end;
        size_t len = (size_t)(se - p);
        const tseg_t *s = &rt->segs[i];
        if (s->lit == NULL) {
            if (len == 0) return false;
            v->cap[param] = p;
            v->cap_len[param++] = len;
        } else if (len != s->len || memcmp(p, s->lit, len) != 0) {
            return false;
        }
        if (!slash) return i + 1 == rt->nsegs;
        p = slash + 1;
    }
    return false; /* more segments than the template */
}

/* Prefixes match whole segments: /api matches /api and /api/x, not /apix. */
static bool path_holds(const tr_route_t *rt, view_t *v)
{
    switch (rt->kind) {
    case PATH_PREFIX:
        if (v->len < rt->path_len || memcmp(v->p, rt->path, rt->path_len) != 0) return false;
        if (v->len > rt->path_len && rt->path[rt->path_len - 1] != '/' && v->p[rt->path_len] != '/')
            return false;
        v->matched = rt->path_len;
        return true;
    case PATH_EXACT:
        v->matched = v->len;
        return v->len == rt->path_len && memcmp(v->p, rt->path, v->len) == 0;
    case PATH_TEMPLATE:
        if (v->len < rt->lit_len || memcmp(v->p, rt->path, rt->lit_len) != 0) return false;
        return template_holds(rt, v);
    default:
        return true; /* regex: checked last, it is the costliest */
    }
}

static const tr_http_header_t *find_header(const tr_route_request_t *rq, const char *lower,
                                           size_t len)
{
    for (size_t i = 0; i < rq->nheaders; i++)
        if (rq->headers[i].name_len == len && name_equals_lower(rq->headers[i].name, len, lower))
            return &rq->headers[i];
    return NULL;
}

/*
 * A versioned route matches /<version>/... (its path matchers then see the rest, and the
 * version segment counts as part of the matched prefix) or Accept-Version: <version>.
 */
static bool version_holds(const tr_route_t *rt, const tr_route_request_t *rq, const char *path,
                          size_t len, view_t *v)
{
    size_t vl = rt->version_len;
    if (len > vl && memcmp(path + 1, rt->version, vl) == 0 &&
        (len == vl + 1 || path[vl + 1] == '/')) {
        v->p = len == vl + 1 ? "/" : path + vl + 1;
        v->len = len == vl + 1 ? 1 : len - vl - 1;
        return true;
    }
    const tr_http_header_t *h = find_header(rq, "accept-version", 14);
    return h && h->value_len == vl && memcmp(h->value, rt->version, vl) == 0;
}

static bool method_holds(const tr_route_t *rt, const tr_route_request_t *rq)
{
    if (rt->nmethods == 0) return true;
    for (size_t i = 0; i < rt->nmethods; i++)
        if (rt->method_lens[i] == rq->method_len &&
            memcmp(rt->methods[i], rq->method, rq->method_len) == 0)
            return true;
    return false;
}

static bool route_holds(const tr_route_t *rt, const tr_route_request_t *rq, const char *path,
                        size_t len, view_t *v)
{
    v->p = path;
    v->len = len;
    v->matched = 0;
    if (rt->version && !version_holds(rt, rq, path, len, v)) return false;
    if (!path_holds(rt, v) || !method_holds(rt, rq)) return false;
    if (!matchers_hold(&rt->headers, &rt->query, rq)) return false;
    return rt->kind != PATH_REGEX || regexec(&rt->re, v->p, 0, NULL, 0) == 0;
}

static const tr_route_destination_t *pick(const tr_route_t *rt, const tr_route_request_t *rq,
                                          uint64_t rnd)
{
    for (size_t i = 0; i < rt->nsubsets; i++)
        if (matchers_hold(&rt->subsets[i].headers, &rt->subsets[i].query, rq))
            return &rt->dests[rt->nweighted + i];
    if (rt->nweighted == 0) return NULL;
    uint64_t x = rnd % rt->total_weight;
    for (size_t i = 0; i < rt->nweighted; i++) {
        if (x < rt->dests[i].weight) return &rt->dests[i];
        x -= rt->dests[i].weight;
    }
    return &rt->dests[rt->nweighted - 1];
}

/* Appends n bytes to out at *o; false when they (and a final NUL) do not fit. */
static bool put(char *out, size_t cap, size_t *o, const char *s, size_t n)
{
    if (n >= cap - *o) return false;
    memcpy(out + *o, s, n);
    *o += n;
    return true;
}

/* Writes the upstream path for the matched route. */
static bool write_path(const tr_route_t *rt, const char *path, size_t len, const view_t *v,
                       char *out, size_t cap, size_t *o)
{
    const char *rest = v->p + v->matched;
    size_t rlen = v->len - v->matched;
    switch (rt->rewrite) {
    case REWRITE_NONE:
        return put(out, cap, o, path, len);
    case REWRITE_STRIP:
        if (rlen == 0 || rest[0] != '/')
            if (!put(out, cap, o, "/", 1)) return false;
        return put(out, cap, o, rest, rlen);
    case REWRITE_PREFIX: {
        /* Joined with exactly one '/' between the new prefix and a non-empty rest. */
        size_t plen = rt->rewrite_prefix_len;
        bool slash_end = rt->rewrite_prefix[plen - 1] == '/';
        if (rlen > 0 && rest[0] == '/' && slash_end) plen--;
        if (!put(out, cap, o, rt->rewrite_prefix, plen)) return false;
        if (rlen > 0 && rest[0] != '/' && !slash_end && !put(out, cap, o, "/", 1)) return false;
        return put(out, cap, o, rest, rlen);
    }
    default:
        for (size_t i = 0; i < rt->npieces; i++) {
            const rpiece_t *pc = &rt->pieces[i];
            bool ok = pc->param < 0 ? put(out, cap, o, pc->lit, pc->len)
                                    : put(out, cap, o, v->cap[pc->param], v->cap_len[pc->param]);
            if (!ok) return false;
        }
        return true;
    }
}

int tr_router_match(const tr_router_t *r, const tr_route_request_t *rq, uint64_t rnd,
                    tr_route_match_t *m, char *out_target, size_t cap)
{
    char path[TR_ROUTER_MAX_PATH];
    if (rq->path_len >= sizeof(path)) return TR_ETOOLARGE;
    long n = tr_router_normalize_path(rq->path, rq->path_len, path);
    if (n < 0) return (int)n;
    view_t v;
    for (size_t i = 0; i < r->n; i++) {
        const tr_route_t *rt = &r->routes[i];
        if (!route_holds(rt, rq, path, (size_t)n, &v)) continue;
        size_t o = 0;
        if (cap == 0 || !write_path(rt, path, (size_t)n, &v, out_target, cap, &o))
            return TR_ETOOLARGE;
        m->path_len = o;
        if (rq->query_len > 0 && (!put(out_target, cap, &o, "?", 1) ||
                                  !put(out_target, cap, &o, rq->query, rq->query_len)))
            return TR_ETOOLARGE;
        out_target[o] = '\0';
        m->target_len = o;
        m->route = rt;
        m->destination = pick(rt, rq, rnd);
        return 0;
    }
    return TR_ENOTFOUND;
}
