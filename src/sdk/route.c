/* The app's router: path patterns with {param} segments, most specific match first. */
#include "sdk/sdk.h"

#include "core/mem.h"
#include "trellis/error.h"

#include <stdio.h>
#include <string.h>

static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", NULL};

static bool known_method(const char *m)
{
    for (int i = 0; methods[i]; i++)
        if (!strcmp(m, methods[i])) return true;
    return false;
}

static bool name_ok(const char *s, size_t n)
{
    if (!n) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return false;
    }
    return true;
}

/* One segment s[0..n): literal, {name} or (last) {name...}. */
static int add_segment(tr__route_t *r, const char *s, size_t n, bool last)
{
    bool param = n >= 2 && s[0] == '{' && s[n - 1] == '}';
    const char *name = s;
    size_t len = n;
    if (param) {
        name = s + 1;
        len = n - 2;
        if (len > 3 && !memcmp(name + len - 3, "...", 3)) {
            if (!last) return UV_EINVAL;
            r->rest = true;
            len -= 3;
        }
        if (!name_ok(name, len)) return UV_EINVAL;
    } else if (memchr(s, '{', n) || memchr(s, '}', n)) {
        return UV_EINVAL;
    }
    r->seg = tr_realloc(r->seg, (r->nseg + 1) * sizeof(*r->seg));
    r->param = tr_realloc(r->param, (r->nseg + 1) * sizeof(*r->param));
    r->seg[r->nseg] = tr_strndup(name, len);
    r->param[r->nseg++] = param;
    return 0;
}

int tr__route_compile(tr__route_t *r, const char *method, const char *pattern)
{
    memset(r, 0, sizeof(*r));
    if (!method || !known_method(method) || !pattern || pattern[0] != '/') return UV_EINVAL;
    snprintf(r->method, sizeof(r->method), "%s", method);
    r->pattern = tr_strdup(pattern);
    const char *p = pattern + 1;
    int rc = 0;
    size_t params = 0;
    while (!rc && *p) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        rc = add_segment(r, p, n, !slash);
        if (!rc && r->param[r->nseg - 1] && ++params > TR_ROUTE_MAX_PARAMS) rc = UV_EINVAL;
        p = slash ? slash + 1 : p + n;
        if (slash && !*p) rc = add_segment(r, "", 0, true); /* a trailing slash matters */
    }
    if (!rc && !r->nseg) rc = add_segment(r, "", 0, true); /* "/" itself */
    if (rc) tr__route_free(r);
    return rc;
}

void tr__route_free(tr__route_t *r)
{
    for (size_t i = 0; i < r->nseg; i++)
        free(r->seg[i]);
    free(r->seg);
    free(r->param);
    free(r->pattern);
    memset(r, 0, sizeof(*r));
}

/* Splits path[0..len) after its leading '/' into at most `max` segments. */
static size_t split(const char *path, size_t len, const char **seg, size_t *seglen, size_t max)
{
    size_t n = 0, i = 1, start = 1;
    if (!len || path[0] != '/') return SIZE_MAX;
    for (; i <= len; i++) {
        if (i < len && path[i] != '/') continue;
        if (n == max) return SIZE_MAX;
        seg[n] = path + start;
        seglen[n++] = i - start;
        start = i + 1;
    }
    return n;
}

#define MAX_SEGMENTS 32

/* Whether route r matches the segments (rest: the remaining path from segment i). */
static bool matches(const tr__route_t *r, const char **seg, const size_t *seglen, size_t n)
{
    if (r->rest ? n < r->nseg : n != r->nseg) return false;
    for (size_t i = 0; i < r->nseg; i++) {
        if (r->param[i]) {
            if (!seglen[i] && !(r->rest && i == r->nseg - 1)) return false;
            continue;
        }
        if (strlen(r->seg[i]) != seglen[i] || memcmp(r->seg[i], seg[i], seglen[i])) return false;
    }
    return true;
}

/* True when a is more specific than b: a literal where b has a parameter, first. */
static bool more_specific(const tr__route_t *a, const tr__route_t *b)
{
    size_t n = a->nseg < b->nseg ? a->nseg : b->nseg;
    for (size_t i = 0; i < n; i++)
        if (a->param[i] != b->param[i]) return !a->param[i];
    return !a->rest && b->rest;
}

static char *decode(const char *s, size_t n)
{
    char *out = tr_malloc(n + 1);
    long len = tr_http_percent_decode(out, s, n);
    if (len < 0) {
        memcpy(out, s, n); /* a malformed escape is kept as sent */
        len = (long)n;
    }
    out[len] = '\0';
    return out;
}

void tr__route_find(tr__route_t *const *routes, size_t n, const char *method, const char *path,
                    size_t path_len, tr__route_match_t *m)
{
    const char *seg[MAX_SEGMENTS];
    size_t seglen[MAX_SEGMENTS];
    memset(m, 0, sizeof(*m));
    size_t ns = split(path, path_len, seg, seglen, MAX_SEGMENTS);
    if (ns == SIZE_MAX) return;
    const tr__route_t *best = NULL;
    for (size_t i = 0; i < n; i++) {
        const tr__route_t *r = routes[i];
        if (!matches(r, seg, seglen, ns)) continue;
        m->path_known = true;
        bool same =
            !strcmp(r->method, method) || (!strcmp(method, "HEAD") && !strcmp(r->method, "GET"));
        if (same && (!best || more_specific(r, best))) best = r;
    }
    m->route = best;
    if (!best) return;
    for (size_t i = 0; i < best->nseg; i++) {
        if (!best->param[i]) continue;
        size_t len = seglen[i];
        if (best->rest && i == best->nseg - 1) len = (size_t)(path + path_len - seg[i]);
        m->name[m->nparams] = best->seg[i];
        m->value[m->nparams++] = decode(seg[i], len);
    }
}

void tr__route_match_free(tr__route_match_t *m)
{
    for (size_t i = 0; i < m->nparams; i++)
        free(m->value[i]);
    m->nparams = 0;
}

void tr__route_allow(tr__route_t *const *routes, size_t n, const char *path, size_t path_len,
                     char *out, size_t outlen)
{
    const char *seg[MAX_SEGMENTS];
    size_t seglen[MAX_SEGMENTS], used = 0;
    out[0] = '\0';
    size_t ns = split(path, path_len, seg, seglen, MAX_SEGMENTS);
    if (ns == SIZE_MAX) return;
    for (int k = 0; methods[k]; k++) {
        bool any = false;
        for (size_t i = 0; i < n && !any; i++)
            any = matches(routes[i], seg, seglen, ns) &&
                  (!strcmp(routes[i]->method, methods[k]) ||
                   (!strcmp(methods[k], "HEAD") && !strcmp(routes[i]->method, "GET")));
        if (any && used + strlen(methods[k]) + 3 < outlen)
            used +=
                (size_t)snprintf(out + used, outlen - used, "%s%s", used ? ", " : "", methods[k]);
    }
}
