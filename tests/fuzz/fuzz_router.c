/* libFuzzer target: tr_router_match on a fixed route table, and tr_router_compile on YAML. */
#include "gateway/router.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "trellis/config.h"
#include "trellis/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Every path kind, matcher, version, subset, split and rewrite, so matching reaches them all. */
static const char table[] =
    "routes:\n"
    "  - {name: health, match: {exact: /health, methods: [GET, HEAD]}, fallback: {}}\n"
    "  - name: item\n"
    "    match: {template: '/api/items/{id}/parts/{part}'}\n"
    "    upstream: items\n"
    "    rewrite: {path: '/items/{part}/{id}'}\n"
    "  - name: hdr\n"
    "    match:\n"
    "      prefix: /h\n"
    "      headers:\n"
    "        x-a: b\n"
    "        x-p: {present: true}\n"
    "        x-n: {absent: true}\n"
    "        x-pre: {prefix: ac}\n"
    "        x-suf: {suffix: eu}\n"
    "        x-c: {contains: bo}\n"
    "        x-r: {regex: '^[0-9]+$'}\n"
    "    upstream: h\n"
    "  - name: q\n"
    "    match: {prefix: /q, query: {a: '1', b: {contains: x}, c: {absent: true}, "
    "d: {regex: 'y+'}}}\n"
    "    upstream: q\n"
    "  - {name: re, match: {regex: '^/v[0-9]+/things$'}, upstream: re}\n"
    "  - {name: ver, match: {prefix: /cat, version: v2}, upstream: v, strip_prefix: true}\n"
    "  - {name: pre, match: {prefix: /old/}, upstream: p, rewrite: {prefix: /new}}\n"
    "  - name: all\n"
    "    destinations: [{upstream: a, weight: 90}, {upstream: b, weight: 10}]\n"
    "    subsets: [{headers: {x-canary: '1'}, upstream: c}, {query: {beta: {present: true}}, "
    "upstream: d}]\n"
    "    strip_prefix: true\n";

static tr_config_t *table_cfg;
static tr_router_t *table_router;

static void setup(void)
{
    char err[256];
    if (table_router) return;
    if (tr_config_load_string("table.yaml", table, strlen(table), &table_cfg, err, sizeof(err)) ||
        tr_router_compile(table_cfg, json_object_get(tr_config_root(table_cfg), "routes"),
                          &table_router))
        abort();
}

/* Input: "method\npath\nquery\nname:value\n..." (at most 16 headers), copied into
 * exactly-sized heap buffers so ASan sees any read past a field. */
static void fuzz_match(const uint8_t *data, size_t size)
{
    char *copy = malloc(size + 1);
    memcpy(copy, data, size);
    copy[size] = '\0';
    char *fields[19] = {0};
    size_t lens[19] = {0}, nf = 0;
    char *p = copy, *end = copy + size;
    while (nf < 19 && p <= end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        fields[nf] = p;
        lens[nf++] = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (!nl) break;
        *nl = '\0'; /* header values must be NUL-terminated, as the HTTP server gives them */
        p = nl + 1;
    }
    tr_http_header_t h[16];
    size_t nh = 0;
    for (size_t i = 3; i < nf; i++) {
        char *colon = memchr(fields[i], ':', lens[i]);
        if (!colon) continue;
        h[nh].name = fields[i];
        h[nh].name_len = (uint32_t)(colon - fields[i]);
        h[nh].value = colon + 1;
        h[nh].value_len = (uint32_t)(lens[i] - h[nh].name_len - 1);
        nh++;
    }
    tr_route_request_t rq = {nf > 0 ? fields[0] : "",
                             nf > 0 ? lens[0] : 0,
                             nf > 1 ? fields[1] : "",
                             nf > 1 ? lens[1] : 0,
                             nf > 2 ? fields[2] : "",
                             nf > 2 ? lens[2] : 0,
                             h,
                             nh};
    tr_route_match_t m;
    char target[256];
    uint64_t rnd = size * 2654435761u;
    int rc = tr_router_match(table_router, &rq, rnd, &m, target, sizeof(target));
    if (rc == 0 && (target[m.target_len] != '\0' || m.path_len > m.target_len || target[0] != '/'))
        abort();
    if (rc != 0 && rc != TR_ENOTFOUND && rc != TR_EPARSE && rc != TR_ETOOLARGE) abort();
    free(copy);
}

static void fuzz_compile(const uint8_t *data, size_t size)
{
    char err[256];
    tr_config_t *cfg;
    tr_router_t *r;
    if (tr_config_load_string("fuzz.yaml", (const char *)data, size, &cfg, err, sizeof(err)))
        return;
    const json_t *routes = json_object_get(tr_config_root(cfg), "routes");
    if (tr_router_compile(cfg, routes, &r) == 0) {
        /* Match a few paths against whatever compiled. */
        static const char *const paths[] = {"/", "/a/b", "/v2/x/../y", "/a/%41/1"};
        for (size_t i = 0; i < 4; i++) {
            tr_route_request_t rq = {"GET", 3, paths[i], strlen(paths[i]), "a=1&b", 5, NULL, 0};
            tr_route_match_t m;
            char target[64];
            tr_router_match(r, &rq, i, &m, target, sizeof(target));
        }
        for (size_t i = 0; i < tr_router_count(r); i++) {
            tr_route_destination_t *d;
            size_t n = tr_route_destinations(tr_router_route(r, i), &d);
            for (size_t k = 0; k < n; k++)
                if (d[k].upstream == NULL) abort();
        }
        tr_router_free(r);
    } else if (r != NULL || tr_config_error(cfg)[0] == '\0') {
        abort();
    }
    tr_config_free(cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    if (size == 0) return 0;
    if (data[0] == 'Y')
        fuzz_compile(data + 1, size - 1);
    else
        fuzz_match(data + 1, size - 1);
    return 0;
}
