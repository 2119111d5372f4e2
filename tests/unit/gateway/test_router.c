/* Unit tests for the gateway router: matching, destinations, rewrites, normalization, errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway/router.h"
#include "trellis/config.h"
#include "trellis/error.h"

/* ---- helpers ---- */

typedef struct fixture_s {
    tr_config_t *cfg;
    tr_router_t *router;
} fixture_t;

static tr_config_t *load(const char *yaml)
{
    char err[512];
    tr_config_t *cfg = NULL;
    int rc = tr_config_load_string("routes.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err));
    if (rc != 0) fail_msg("yaml: %s", err);
    return cfg;
}

static fixture_t compile(const char *yaml)
{
    fixture_t f = {load(yaml), NULL};
    int rc = tr_router_compile(f.cfg, json_object_get(tr_config_root(f.cfg), "routes"), &f.router);
    if (rc != 0) fail_msg("compile: %s", tr_config_error(f.cfg));
    return f;
}

static void release(fixture_t *f)
{
    tr_router_free(f->router);
    tr_config_free(f->cfg);
}

/* A request built from "METHOD /path?query" and up to 8 "name: value" headers. */
typedef struct req_s {
    tr_route_request_t rq;
    tr_http_header_t h[8];
    char line[512];
    char hdr[8][128];
} req_t;

static void make_req(req_t *r, const char *line, const char *const *headers)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->line, sizeof(r->line), "%s", line);
    char *sp = strchr(r->line, ' ');
    r->rq.method = r->line;
    r->rq.method_len = (size_t)(sp - r->line);
    char *target = sp + 1, *q = strchr(target, '?');
    r->rq.path = target;
    r->rq.path_len = q ? (size_t)(q - target) : strlen(target);
    r->rq.query = q ? q + 1 : "";
    r->rq.query_len = q ? strlen(q + 1) : 0;
    for (size_t i = 0; headers && headers[i]; i++) {
        snprintf(r->hdr[i], sizeof(r->hdr[i]), "%s", headers[i]);
        char *colon = strchr(r->hdr[i], ':');
        *colon = '\0';
        r->h[i].name = r->hdr[i];
        r->h[i].name_len = (uint32_t)strlen(r->hdr[i]);
        r->h[i].value = colon + 2;
        r->h[i].value_len = (uint32_t)strlen(colon + 2);
        r->rq.nheaders = i + 1;
    }
    r->rq.headers = r->h;
}

/* Matches and returns the route's name ("-" for no route, "400" for a bad path); the target
 * goes to `target` when not NULL. */
static const char *route_for(const tr_router_t *router, const char *line,
                             const char *const *headers, char *target)
{
    req_t r;
    tr_route_match_t m;
    char buf[1024];
    make_req(&r, line, headers);
    int rc = tr_router_match(router, &r.rq, 0, &m, buf, sizeof(buf));
    if (rc == TR_ENOTFOUND) return "-";
    if (rc == TR_EPARSE) return "400";
    assert_int_equal(rc, 0);
    assert_int_equal(m.target_len, strlen(buf));
    if (target) strcpy(target, buf);
    return tr_route_name(m.route);
}

#define H(...) ((const char *const[]){__VA_ARGS__, NULL})

/* ---- path matching ---- */

static void test_path_kinds(void **state)
{
    fixture_t f = compile("routes:\n"
                          "  - {name: health, match: {exact: /health}, upstream: a}\n"
                          "  - {name: item, match: {template: '/items/{id}/parts/{part}'}, "
                          "upstream: a}\n"
                          "  - {name: ver, match: {regex: '^/v[0-9]+/things$'}, upstream: a}\n"
                          "  - {name: cat, match: {prefix: /api/v1/catalog}, upstream: a}\n"
                          "  - {name: slash, match: {prefix: /files/}, upstream: a}\n");
    const tr_router_t *r = f.router;
    assert_string_equal(route_for(r, "GET /health", NULL, NULL), "health");
    assert_string_equal(route_for(r, "GET /health/", NULL, NULL), "-");
    assert_string_equal(route_for(r, "GET /healthz", NULL, NULL), "-");
    assert_string_equal(route_for(r, "GET /items/7/parts/x", NULL, NULL), "item");
    assert_string_equal(route_for(r, "GET /items/7/parts", NULL, NULL), "-");
    assert_string_equal(route_for(r, "GET /items//parts/x", NULL, NULL), "-"); /* merged */
    assert_string_equal(route_for(r, "GET /items/7/parts/x/y", NULL, NULL), "-");
    assert_string_equal(route_for(r, "GET /items/7/parts/", NULL, NULL), "-"); /* empty param */
    assert_string_equal(route_for(r, "GET /v12/things", NULL, NULL), "ver");
    assert_string_equal(route_for(r, "GET /v12/things/x", NULL, NULL), "-");
    assert_string_equal(route_for(r, "GET /vx/things", NULL, NULL), "-");
    assert_string_equal(route_for(r, "GET /api/v1/catalog", NULL, NULL), "cat");
    assert_string_equal(route_for(r, "GET /api/v1/catalog/", NULL, NULL), "cat");
    assert_string_equal(route_for(r, "GET /api/v1/catalog/x/y", NULL, NULL), "cat");
    assert_string_equal(route_for(r, "GET /api/v1/catalogue", NULL, NULL), "-"); /* segments */
    assert_string_equal(route_for(r, "GET /files/a", NULL, NULL), "slash");
    assert_string_equal(route_for(r, "GET /files", NULL, NULL), "-");
    release(&f);
}

static void test_default_match_and_order(void **state)
{
    fixture_t f = compile("routes:\n"
                          "  - {name: first, match: {prefix: /a}, upstream: a}\n"
                          "  - {name: second, match: {prefix: /a/b}, upstream: a}\n"
                          "  - {name: rest, upstream: b}\n");
    assert_string_equal(route_for(f.router, "GET /a/b/c", NULL, NULL), "first"); /* file order */
    assert_string_equal(route_for(f.router, "GET /zzz", NULL, NULL), "rest");
    assert_string_equal(route_for(f.router, "GET /", NULL, NULL), "rest");
    release(&f);
}

static void test_methods(void **state)
{
    fixture_t f = compile("routes:\n"
                          "  - {name: read, match: {prefix: /x, methods: [GET, HEAD]}, "
                          "upstream: a}\n"
                          "  - {name: write, match: {prefix: /x, methods: [POST]}, upstream: a}\n");
    assert_string_equal(route_for(f.router, "GET /x", NULL, NULL), "read");
    assert_string_equal(route_for(f.router, "HEAD /x", NULL, NULL), "read");
    assert_string_equal(route_for(f.router, "POST /x", NULL, NULL), "write");
    assert_string_equal(route_for(f.router, "DELETE /x", NULL, NULL), "-");
    assert_string_equal(route_for(f.router, "get /x", NULL, NULL), "-"); /* case-sensitive */
    assert_string_equal(route_for(f.router, "GETX /x", NULL, NULL), "-");
    release(&f);
}

/* ---- header, query and version matchers ---- */

static void test_header_matchers(void **state)
{
    fixture_t f = compile("routes:\n"
                          "  - name: all\n"
                          "    match:\n"
                          "      headers:\n"
                          "        X-User-Type: premium\n"
                          "        x-debug: {present: true}\n"
                          "        x-legacy: {absent: true}\n"
                          "        x-tenant: {prefix: acme-}\n"
                          "        x-region: {suffix: -eu}\n"
                          "        x-agent: {contains: bot}\n"
                          "        x-id: {regex: '^[0-9]+$'}\n"
                          "    upstream: a\n"
                          "  - {name: not-present, match: {headers: {x-a: {present: false}}}, "
                          "upstream: a}\n");
    const char *const *ok = H("x-user-type: premium", "X-DEBUG: ", "x-tenant: acme-1",
                              "x-region: west-eu", "x-agent: googlebot/2", "x-id: 42");
    assert_string_equal(route_for(f.router, "GET /", ok, NULL), "all");
    /* Each condition failing alone falls through to the next route. */
    const char *const *bad[] = {
        H("x-user-type: Premium", "x-debug: 1", "x-tenant: acme-1", "x-region: west-eu",
          "x-agent: bot", "x-id: 42"),
        H("x-user-type: premium", "x-tenant: acme-1", "x-region: west-eu", "x-agent: bot",
          "x-id: 42"),
        H("x-user-type: premium", "x-debug: 1", "X-Legacy: 1", "x-tenant: acme-1",
          "x-region: west-eu", "x-agent: bot", "x-id: 42"),
        H("x-user-type: premium", "x-debug: 1", "x-tenant: acm", "x-region: west-eu",
          "x-agent: bot", "x-id: 42"),
        H("x-user-type: premium", "x-debug: 1", "x-tenant: acme-1", "x-region: eu-west",
          "x-agent: bot", "x-id: 42"),
        H("x-user-type: premium", "x-debug: 1", "x-tenant: acme-1", "x-region: west-eu",
          "x-agent: human", "x-id: 42"),
        H("x-user-type: premium", "x-debug: 1", "x-tenant: acme-1", "x-region: west-eu",
          "x-agent: bot", "x-id: 4a"),
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_string_equal(route_for(f.router, "GET /", bad[i], NULL), "not-present");
    /* A repeated header matches when any of its values does. */
    const char *const *rep = H("x-user-type: basic", "x-user-type: premium", "x-debug: 1",
                               "x-tenant: acme-1", "x-region: west-eu", "x-agent: bot", "x-id: 1");
    assert_string_equal(route_for(f.router, "GET /", rep, NULL), "all");
    assert_string_equal(route_for(f.router, "GET /", H("x-a: 1"), NULL), "-");
    release(&f);
}

static void test_query_matchers(void **state)
{
    fixture_t f = compile("routes:\n"
                          "  - name: q\n"
                          "    match:\n"
                          "      query:\n"
                          "        preview: {exact: '1'}\n"
                          "        q: {contains: 'a b'}\n"
                          "        debug: {absent: true}\n"
                          "    upstream: a\n"
                          "  - {name: has-sort, match: {query: {sort: {present: true}}}, "
                          "upstream: a}\n"
                          "  - {name: p, match: {query: {name: {prefix: 'caf\xc3\xa9'}}}, "
                          "upstream: a}\n");
    assert_string_equal(route_for(f.router, "GET /?preview=1&q=xa%20by", NULL, NULL), "q");
    assert_string_equal(route_for(f.router, "GET /?q=a%20b&preview=%31", NULL, NULL), "q");
    assert_string_equal(route_for(f.router, "GET /?preview=1&q=a+b", NULL, NULL), "-");
    assert_string_equal(route_for(f.router, "GET /?preview=1&q=a%20b&debug", NULL, NULL), "-");
    assert_string_equal(route_for(f.router, "GET /?preview=2&q=a%20b", NULL, NULL), "-");
    assert_string_equal(route_for(f.router, "GET /?sort", NULL, NULL), "has-sort");
    assert_string_equal(route_for(f.router, "GET /?sorted=1", NULL, NULL), "-");
    assert_string_equal(route_for(f.router, "GET /?name=caf%C3%A9s", NULL, NULL), "p");
    assert_string_equal(route_for(f.router, "GET /?name=%zz", NULL, NULL), "-");
    /* A value over TR_ROUTER_MAX_QUERY_VALUE never satisfies a value matcher. */
    static char q[TR_ROUTER_MAX_QUERY_VALUE + 64];
    int n = snprintf(q, sizeof(q), "name=caf%%C3%%A9");
    memset(q + n, 'x', TR_ROUTER_MAX_QUERY_VALUE);
    tr_route_request_t rq = {"GET", 3, "/", 1, q, strlen(q), NULL, 0};
    tr_route_match_t m;
    static char big[TR_ROUTER_MAX_QUERY_VALUE + 64];
    assert_int_equal(tr_router_match(f.router, &rq, 0, &m, big, sizeof(big)), TR_ENOTFOUND);
    q[n + 1] = '\0'; /* "name=caf%C3%A9x": short, and a prefix match */
    rq.query_len = strlen(q);
    assert_int_equal(tr_router_match(f.router, &rq, 0, &m, big, sizeof(big)), 0);
    assert_string_equal(tr_route_name(m.route), "p");
    assert_string_equal(big, "/?name=caf%C3%A9x");
    /* The target buffer bounds the query too. */
    char small[8];
    assert_int_equal(tr_router_match(f.router, &rq, 0, &m, small, sizeof(small)), TR_ETOOLARGE);
    release(&f);
}

static void test_version(void **state)
{
    fixture_t f = compile("routes:\n"
                          "  - {name: v2, match: {prefix: /catalog, version: v2}, upstream: c2}\n"
                          "  - {name: v2strip, match: {prefix: /orders, version: v2}, upstream: o, "
                          "strip_prefix: true}\n"
                          "  - {name: v1, match: {prefix: /catalog}, upstream: c1}\n");
    char t[256];
    assert_string_equal(route_for(f.router, "GET /v2/catalog/x", NULL, t), "v2");
    assert_string_equal(t, "/v2/catalog/x"); /* forwarded as sent without a rewrite */
    assert_string_equal(route_for(f.router, "GET /catalog/x", H("Accept-Version: v2"), t), "v2");
    assert_string_equal(route_for(f.router, "GET /catalog/x", H("accept-version: v3"), t), "v1");
    assert_string_equal(route_for(f.router, "GET /catalog/x", NULL, t), "v1");
    assert_string_equal(route_for(f.router, "GET /v2x/catalog", NULL, t), "-");
    assert_string_equal(route_for(f.router, "GET /v2/orders/7", NULL, t), "v2strip");
    assert_string_equal(t, "/7"); /* the version segment is part of the matched prefix */
    assert_string_equal(route_for(f.router, "GET /orders/7", H("Accept-Version: v2"), t),
                        "v2strip");
    assert_string_equal(t, "/7");
    release(&f);
}

/* ---- destinations ---- */

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void test_weighted_split(void **state)
{
    fixture_t f = compile("routes:\n"
                          "  - match: {prefix: /}\n"
                          "    destinations:\n"
                          "      - {upstream: catalog-v1, weight: 90}\n"
                          "      - {upstream: catalog-v2, weight: 10}\n"
                          "      - {upstream: never, weight: 0}\n");
    req_t r;
    make_req(&r, "GET /x", NULL);
    uint64_t seed = 88172645463325252ull;
    int v1 = 0, v2 = 0;
    for (int i = 0; i < 10000; i++) {
        tr_route_match_t m;
        char buf[64];
        assert_int_equal(tr_router_match(f.router, &r.rq, xorshift(&seed), &m, buf, 64), 0);
        if (strcmp(m.destination->upstream, "catalog-v1") == 0)
            v1++;
        else if (strcmp(m.destination->upstream, "catalog-v2") == 0)
            v2++;
        else
            fail_msg("picked %s", m.destination->upstream);
    }
    assert_in_range(v1, 8800, 9200);
    assert_in_range(v2, 800, 1200);
    tr_route_destination_t *d;
    assert_int_equal(tr_route_destinations(tr_router_route(f.router, 0), &d), 3);
    assert_int_equal(d[0].weight, 90);
    assert_string_equal(tr_route_name(tr_router_route(f.router, 0)), "route-0");
    release(&f);
}

static void test_subsets_before_weights(void **state)
{
    fixture_t f = compile("routes:\n"
                          "  - name: c\n"
                          "    destinations: [{upstream: v1, weight: 100}]\n"
                          "    subsets:\n"
                          "      - {headers: {x-user-type: premium}, upstream: v2}\n"
                          "      - {query: {canary: '1'}, upstream: v3}\n"
                          "      - {headers: {x-user-type: premium}, upstream: never}\n");
    tr_route_destination_t *d;
    size_t n = tr_route_destinations(tr_router_route(f.router, 0), &d);
    assert_int_equal(n, 4);
    assert_string_equal(d[0].upstream, "v1");
    assert_string_equal(d[1].upstream, "v2");
    assert_string_equal(d[3].upstream, "never");
    const char *lines[] = {"GET /", "GET /", "GET /?canary=1", "GET /?canary=1"};
    const char *const *hs[] = {NULL, H("X-User-Type: premium"), NULL, H("x-user-type: premium")};
    const char *want[] = {"v1", "v2", "v3", "v2"};
    for (int i = 0; i < 4; i++) {
        req_t r;
        tr_route_match_t m;
        char buf[64];
        make_req(&r, lines[i], hs[i]);
        for (uint64_t rnd = 0; rnd < 5; rnd++) {
            assert_int_equal(tr_router_match(f.router, &r.rq, rnd, &m, buf, 64), 0);
            assert_string_equal(m.destination->upstream, want[i]);
        }
    }
    release(&f);
}

static void test_gateway_answered_routes(void **state)
{
    fixture_t f = compile("routes:\n"
                          "  - {name: agg, match: {exact: /home}, aggregate: {x: 1}}\n"
                          "  - {name: fb, match: {exact: /down}, fallback: {status: 503}}\n"
                          "  - {name: only-subsets, subsets: [{headers: {x-a: '1'}, upstream: "
                          "a}]}\n");
    req_t r;
    tr_route_match_t m;
    char buf[64];
    make_req(&r, "GET /home", NULL);
    assert_int_equal(tr_router_match(f.router, &r.rq, 0, &m, buf, 64), 0);
    assert_null(m.destination);
    tr_route_destination_t *d = (void *)1;
    assert_int_equal(tr_route_destinations(tr_router_route(f.router, 0), &d), 0);
    assert_null(d);
    make_req(&r, "GET /other", NULL);
    assert_int_equal(tr_router_match(f.router, &r.rq, 0, &m, buf, 64), 0);
    assert_string_equal(tr_route_name(m.route), "only-subsets");
    assert_null(m.destination); /* no subset matched and there is no weighted split */
    /* The gateway's data and def accessors. */
    tr_route_t *rt = tr_router_route(f.router, 1);
    int token;
    tr_route_set_data(rt, &token);
    assert_ptr_equal(tr_route_data(rt), &token);
    assert_non_null(json_object_get(tr_route_def(rt), "fallback"));
    assert_int_equal(tr_route_index(rt), 1);
    assert_null(tr_router_route(f.router, 3));
    assert_int_equal(tr_router_count(f.router), 3);
    release(&f);
}

/* ---- rewrites ---- */

static void test_rewrites(void **state)
{
    fixture_t f =
        compile("routes:\n"
                "  - {name: strip, match: {prefix: /api/v1/catalog}, upstream: a, "
                "strip_prefix: true}\n"
                "  - {name: strip2, match: {prefix: /s/}, upstream: a, strip_prefix: true}\n"
                "  - {name: pre, match: {prefix: /old}, upstream: a, rewrite: {prefix: /v1}}\n"
                "  - {name: pre2, match: {prefix: /o2/}, upstream: a, rewrite: {prefix: /n/}}\n"
                "  - {name: ex, match: {exact: /e}, upstream: a, rewrite: {prefix: /else}}\n"
                "  - name: tpl\n"
                "    match: {template: '/api/products/{id}/reviews/{rid}'}\n"
                "    upstream: a\n"
                "    rewrite: {path: '/products/{id}/r/{rid}-{id}'}\n");
    char t[256];
    const struct {
        const char *line, *route, *target;
    } cases[] = {
        {"GET /api/v1/catalog/items?x=1&y=%20", "strip", "/items?x=1&y=%20"},
        {"GET /api/v1/catalog", "strip", "/"},
        {"GET /api/v1/catalog/?q", "strip", "/?q"},
        {"GET /s/a/b", "strip2", "/a/b"},
        {"GET /old/x?a=b", "pre", "/v1/x?a=b"},
        {"GET /old", "pre", "/v1"},
        {"GET /o2/x", "pre2", "/n/x"},
        {"GET /e?k=v", "ex", "/else?k=v"},
        {"GET /api/products/42/reviews/7?lang=en", "tpl", "/products/42/r/7-42?lang=en"},
        {"GET /other/./x/../y", "-", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        t[0] = '\0';
        assert_string_equal(route_for(f.router, cases[i].line, NULL, t), cases[i].route);
        assert_string_equal(t, cases[i].target);
    }
    /* path_len splits the target; a target that does not fit is TR_ETOOLARGE. */
    req_t r;
    tr_route_match_t m;
    char buf[32];
    make_req(&r, "GET /old/abc?q=1", NULL);
    assert_int_equal(tr_router_match(f.router, &r.rq, 0, &m, buf, sizeof(buf)), 0);
    assert_int_equal(m.path_len, 7);
    assert_int_equal(tr_router_match(f.router, &r.rq, 0, &m, buf, 11), TR_ETOOLARGE);
    assert_int_equal(tr_router_match(f.router, &r.rq, 0, &m, buf, 12), 0);
    assert_string_equal(buf, "/v1/abc?q=1");
    assert_int_equal(tr_router_match(f.router, &r.rq, 0, &m, buf, 0), TR_ETOOLARGE);
    release(&f);
}

/* ---- normalization ---- */

static void test_normalize(void **state)
{
    const struct {
        const char *in, *out;
    } cases[] = {
        {"/", "/"},
        {"/a/b/c", "/a/b/c"},
        {"/a/./b", "/a/b"},
        {"/a/b/../c", "/a/c"},
        {"/a/b/..", "/a/"},
        {"/a/b/.", "/a/b/"},
        {"/..", "/"},
        {"/../../a", "/a"},
        {"//a///b//", "/a/b/"},
        {"/a/%2e%2E/b", "/b"},
        {"/a/%2e/b", "/a/b"},
        {"/.%2e/x", "/x"},
        {"/%7euser/%41", "/~user/A"},
        {"/a%20b/%c3%a9", "/a%20b/%C3%A9"},
        {"/a/..b/c", "/a/..b/c"},
        {"/a/b/..%2f..", NULL},
        {"/a%2Fb", NULL},
        {"/a%5cb", NULL},
        {"/a\\b", NULL},
        {"/a%zz", NULL},
        {"/a%2", NULL},
        {"/a%", NULL},
        {"/a%00", NULL},
        {"a/b", NULL},
        {"", NULL},
        {"*", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[64];
        long n = tr_router_normalize_path(cases[i].in, strlen(cases[i].in), out);
        if (cases[i].out == NULL) {
            if (n != TR_EPARSE) fail_msg("%s: accepted as %s", cases[i].in, out);
        } else {
            if (n < 0) fail_msg("%s: rejected", cases[i].in);
            assert_string_equal(out, cases[i].out);
            assert_int_equal(n, strlen(cases[i].out));
        }
    }
}

static void test_traversal(void **state)
{
    fixture_t f = compile("routes:\n"
                          "  - {name: public, match: {prefix: /api/public}, upstream: pub, "
                          "strip_prefix: true}\n"
                          "  - {name: admin, match: {prefix: /admin}, upstream: adm}\n");
    char t[256];
    /* Matching sees the normalized path /api/admin: the public route (which would have
     * stripped its prefix and sent "/../admin" → "/admin" upstream) never sees it. */
    assert_string_equal(route_for(f.router, "GET /api/public/../admin", NULL, t), "-");
    assert_string_equal(route_for(f.router, "GET /api/public/%2e%2e/admin", NULL, t), "-");
    assert_string_equal(route_for(f.router, "GET /api/public/.%2E/admin/x", NULL, t), "-");
    assert_string_equal(route_for(f.router, "GET /api/public/%2e%2e/%2E%2E/admin", NULL, t),
                        "admin");
    assert_string_equal(t, "/admin");
    assert_string_equal(route_for(f.router, "GET /api/public/..%2fadmin", NULL, t), "400");
    assert_string_equal(route_for(f.router, "GET /api/public/x/../../../etc", NULL, t), "-");
    assert_string_equal(route_for(f.router, "GET /api/public/a/../b", NULL, t), "public");
    assert_string_equal(t, "/b");
    assert_string_equal(route_for(f.router, "GET //api//public/./c", NULL, t), "public");
    assert_string_equal(t, "/c");
    assert_string_equal(route_for(f.router, "GET /api/public/%zz", NULL, t), "400");
    assert_string_equal(route_for(f.router, "GET /%61pi/public/d", NULL, t), "public");
    /* Configured paths are normalized the same way. */
    fixture_t g = compile("routes: [{name: n, match: {prefix: '/%61pi//x'}, upstream: a}]\n");
    assert_string_equal(route_for(g.router, "GET /api/x/y", NULL, t), "n");
    release(&g);
    /* Oversized paths. */
    static char big[TR_ROUTER_MAX_PATH + 16];
    memset(big, 'a', sizeof(big) - 1);
    big[0] = '/';
    tr_route_request_t rq = {"GET", 3, big, sizeof(big) - 1, "", 0, NULL, 0};
    tr_route_match_t m;
    assert_int_equal(tr_router_match(f.router, &rq, 0, &m, t, sizeof(t)), TR_ETOOLARGE);
    release(&f);
}

/* ---- config errors ---- */

static void test_config_errors(void **state)
{
    const struct {
        const char *yaml;
        const char *want[3]; /* substrings of the message */
    } cases[] = {
        {"routes:\n  - match: {prefx: /a}\n    upstream: a\n",
         {"routes.yaml:2:", "routes[0].match.prefx", "did you mean \"prefix\""}},
        {"routes:\n  - match: {headers: {x-a: {exactly: b}}}\n    upstream: a\n",
         {"routes.yaml:2:", "routes[0].match.headers.x-a.exactly", "unknown key"}},
        {"routes:\n  - match: {query: {a: {exact: b, prefix: c}}}\n    upstream: a\n",
         {"routes.yaml:2:", "routes[0].match.query.a", "exactly one"}},
        {"routes:\n  - match: {headers: {x-a: [1]}}\n    upstream: a\n",
         {"routes.yaml:2:", "routes[0].match.headers.x-a", "expected a string"}},
        {"routes:\n  - destinations: [{upstream: a, wieght: 1}]\n",
         {"routes.yaml:2:", "routes[0].destinations[0].wieght", "did you mean \"weight\""}},
        {"routes:\n  - destinations: [{weight: 1}]\n",
         {"routes.yaml:2:", "routes[0].destinations[0]", "missing \"upstream\""}},
        {"routes:\n  - subsets: [{headers: {a: b}, upstream: x, extra: 1}]\n",
         {"routes.yaml:2:", "routes[0].subsets[0].extra", "unknown key"}},
        {"routes:\n  - subsets: [{upstream: x}]\n",
         {"routes.yaml:2:", "routes[0].subsets[0]", "needs headers or query"}},
        {"routes:\n  - upstream: a\n    rewrite: {prefx: /a}\n",
         {"routes.yaml:3:", "routes[0].rewrite.prefx", "unknown key"}},
        {"routes:\n  - match: {prefix: /a}\n", {"routes.yaml:2:", "routes[0]", "nowhere to send"}},
        {"routes:\n  - match: {regex: 'a(b'}\n    upstream: a\n",
         {"routes.yaml:2:", "routes[0].match.regex", "bad regular expression: "}},
        {"routes:\n  - match: {headers: {x: {regex: '[z'}}}\n    upstream: a\n",
         {"routes.yaml:2:", "routes[0].match.headers.x.regex", "bad regular expression"}},
        {"routes:\n  - {name: a, upstream: a}\n  - {name: a, upstream: b}\n",
         {"routes.yaml:3:", "routes[1].name", "duplicate route name \"a\""}},
        {"routes:\n  - {match: {exact: /a}, upstream: a, strip_prefix: true}\n",
         {"routes.yaml:2:", "routes[0].strip_prefix", "only prefix routes"}},
        {"routes:\n  - match: {template: '/a/{id}'}\n    upstream: a\n"
         "    rewrite: {path: '/b/{idx}'}\n",
         {"routes.yaml:4:", "routes[0].rewrite.path", "\"{idx}\" is not a parameter"}},
        {"routes:\n  - match: {prefix: /a}\n    upstream: a\n    rewrite: {path: '/b/{id}'}\n",
         {"routes.yaml:4:", "routes[0].rewrite.path", "not a parameter"}},
        {"routes:\n  - destinations: [{upstream: a, weight: -1}]\n",
         {"routes.yaml:2:", "routes[0].destinations[0].weight", "-1"}},
        {"routes:\n  - destinations: [{upstream: a, weight: 0}, {upstream: b, weight: 0}]\n",
         {"routes.yaml:2:", "routes[0].destinations", "must not all be 0"}},
        {"routes:\n  - match: {prefix: /a, exact: /b}\n    upstream: a\n",
         {"routes.yaml:2:", "routes[0].match.exact", "only one of"}},
        {"routes:\n  - match: {prefix: a}\n    upstream: a\n",
         {"routes.yaml:2:", "routes[0].match.prefix", "must start with"}},
        {"routes:\n  - match: {template: '/a/{1x}'}\n    upstream: a\n",
         {"routes.yaml:2:", "routes[0].match.template", "bad parameter name"}},
        {"routes:\n  - match: {template: '/a/x{id}'}\n    upstream: a\n",
         {"routes.yaml:2:", "routes[0].match.template", "whole segment"}},
        {"routes:\n  - match: {template: '/{a}/{a}'}\n    upstream: a\n",
         {"routes.yaml:2:", "routes[0].match.template", "duplicate parameter"}},
        {"routes:\n  - match: {methods: [get]}\n    upstream: a\n",
         {"routes.yaml:2:", "routes[0].match.methods[0]", "upper-case"}},
        {"routes:\n  - match: {version: 'v/2'}\n    upstream: a\n",
         {"routes.yaml:2:", "routes[0].match.version", "path segment"}},
        {"routes:\n  - upstream: a\n    destinations: [{upstream: b}]\n",
         {"routes.yaml:3:", "routes[0].destinations", "not both"}},
        {"routes:\n  - upstream: a\n    rewrite: {prefix: /a, path: /b}\n",
         {"routes.yaml:3:", "routes[0].rewrite", "exactly one"}},
        {"routes:\n  - match: {regex: '^/a'}\n    upstream: a\n    rewrite: {prefix: /b}\n",
         {"routes.yaml:4:", "routes[0].rewrite.prefix", "only prefix and exact"}},
        {"routes:\n  - upstream: a\n    strip_prefix: true\n    rewrite: {prefix: /b}\n",
         {"routes.yaml:4:", "routes[0].rewrite", "either strip_prefix or rewrite"}},
        {"routes:\n  - 5\n", {"routes.yaml:2:", "routes[0]", "must be a mapping"}},
        {"routes: {a: 1}\n", {"routes.yaml:1:", "routes", "list of routes"}},
        {"routes:\n  - {upstream: a, name: ''}\n", {"routes.yaml:2:", "routes[0].name", "empty"}},
        {"routes:\n  - {match: {prefix: '/a%2fb'}, upstream: a}\n",
         {"routes.yaml:2:", "routes[0].match.prefix", "malformed path"}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tr_config_t *cfg = load(cases[i].yaml);
        tr_router_t *r = (void *)1;
        int rc = tr_router_compile(cfg, json_object_get(tr_config_root(cfg), "routes"), &r);
        const char *msg = tr_config_error(cfg);
        if (rc != TR_ECONFIG) fail_msg("case %zu compiled", i);
        assert_null(r);
        for (int k = 0; k < 3 && cases[i].want[k]; k++)
            if (strstr(msg, cases[i].want[k]) == NULL)
                fail_msg("case %zu: \"%s\" lacks \"%s\"", i, msg, cases[i].want[k]);
        tr_config_free(cfg);
    }
}

static void test_route_keys_and_policy_fields(void **state)
{
    /* Policy keys belong to the gateway: the router accepts them untouched. */
    fixture_t f = compile("routes:\n"
                          "  - {upstream: a, timeout: 5s, retry: {attempts: 3}, auth: {}, "
                          "cors: {}, headers: {}, rate_limit: 1/s}\n");
    assert_int_equal(tr_router_count(f.router), 1);
    release(&f);
    const char *want[] = {"name",    "match",        "upstream", "destinations",
                          "subsets", "strip_prefix", "rewrite"};
    size_t n = 0;
    while (tr_router_route_keys[n])
        n++;
    assert_int_equal(n, 7);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(tr_router_route_keys[i], want[i]);
    /* No routes at all is an empty table. */
    tr_router_t *r;
    tr_config_t *cfg = load("{}");
    assert_int_equal(tr_router_compile(cfg, NULL, &r), 0);
    tr_route_request_t rq = {"GET", 3, "/", 1, "", 0, NULL, 0};
    tr_route_match_t m;
    char buf[8];
    assert_int_equal(tr_router_match(r, &rq, 0, &m, buf, sizeof(buf)), TR_ENOTFOUND);
    tr_router_free(r);
    tr_router_free(NULL);
    tr_config_free(cfg);
}

/* ---- micro-benchmark (prints, never asserts on time) ---- */

static void test_bench(void **state)
{
    char yaml[16384];
    size_t o = (size_t)snprintf(yaml, sizeof(yaml), "routes:\n");
    for (int i = 0; i < 50; i++) {
        const char *kind = i % 3 == 0 ? "prefix" : i % 3 == 1 ? "exact" : "template";
        const char *tail = i % 3 == 2 ? "/{id}" : "";
        o += (size_t)snprintf(yaml + o, sizeof(yaml) - o,
                              "  - {match: {%s: '/api/svc%d/items%s', methods: [GET, POST], "
                              "headers: {x-tenant: {prefix: acme}}}, upstream: u%d}\n",
                              kind, i, tail, i);
    }
    fixture_t f = compile(yaml);
    req_t r;
    make_req(&r, "GET /api/svc47/items/123?x=1",
             H("host: example.com", "user-agent: bench", "accept: */*", "x-tenant: acme-1"));
    tr_route_match_t m;
    char buf[256];
    const int iters = 200000;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < iters; i++)
        assert_int_equal(tr_router_match(f.router, &r.rq, (uint64_t)i, &m, buf, sizeof(buf)), 0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    assert_string_equal(buf, "/api/svc47/items/123?x=1");
    double ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / iters;
    printf("router bench: %.0f ns per match (50 routes, match at #48)\n", ns);
    release(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_path_kinds),
        cmocka_unit_test(test_default_match_and_order),
        cmocka_unit_test(test_methods),
        cmocka_unit_test(test_header_matchers),
        cmocka_unit_test(test_query_matchers),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_weighted_split),
        cmocka_unit_test(test_subsets_before_weights),
        cmocka_unit_test(test_gateway_answered_routes),
        cmocka_unit_test(test_rewrites),
        cmocka_unit_test(test_normalize),
        cmocka_unit_test(test_traversal),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_route_keys_and_policy_fields),
        cmocka_unit_test(test_bench),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
