/* The gateway's router: compiles the `routes:` list and matches requests to routes. */
#ifndef TR_GATEWAY_ROUTER_H
#define TR_GATEWAY_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "trellis/config.h"
#include "trellis/http.h"

/* Request paths longer than this are refused by tr_router_match with TR_ETOOLARGE (→ 414). */
#define TR_ROUTER_MAX_PATH 8192
/* Decoded query values longer than this never satisfy a value matcher (present/absent work). */
#define TR_ROUTER_MAX_QUERY_VALUE 2048
/* Captured parameters per template route. */
#define TR_ROUTER_MAX_PARAMS 16

/*
 * A compiled route table. Immutable after tr_router_compile (except the gateway's own
 * per-route data and destination targets, which it sets once before publishing the router),
 * so any number of threads may call tr_router_match on it at once without locks.
 */
typedef struct tr_router_s tr_router_t;
/* One route of a router; lives as long as the router. */
typedef struct tr_route_s tr_route_t;

/* Where a route sends a request: an upstream name and its relative weight. */
typedef struct tr_route_destination_s {
    const char *upstream; /* owned by the router */
    uint32_t weight;      /* relative weight of the weighted split; 0 for subsets */
    void *target;         /* the gateway's resolved upstream, set after compile; not owned */
} tr_route_destination_t;

/* The keys of a route object the router owns; NULL-terminated. The gateway merges them with
 * its policy keys to check the route's top level for unknown keys. */
extern const char *const tr_router_route_keys[];

/*
 * Compiles `routes` (a list of route objects from cfg's tree, or NULL for no routes) into
 * *out. On error returns TR_ECONFIG with "file:line:col: key: what is wrong" in
 * tr_config_error(cfg) and sets *out to NULL. The router copies what it matches on, but
 * tr_route_def() returns nodes of cfg's tree: keep cfg alive while the gateway reads them.
 * The caller owns *out (free with tr_router_free).
 */
int tr_router_compile(tr_config_t *cfg, const json_t *routes, tr_router_t **out);

/* Frees the router and its routes; NULL is fine. The gateway's route data is not freed. */
void tr_router_free(tr_router_t *r);

/* Number of routes, in file order. */
size_t tr_router_count(const tr_router_t *r);
/* Route i (0-based, i < tr_router_count), owned by the router. */
tr_route_t *tr_router_route(const tr_router_t *r, size_t i);

/* The route's name: `name:` or "route-<index>"; owned by the router. */
const char *tr_route_name(const tr_route_t *route);
/* The route's index in the routes list. */
size_t tr_route_index(const tr_route_t *route);
/* The route's config object (borrowed from cfg), for the gateway's policy parsing. */
const json_t *tr_route_def(const tr_route_t *route);
/* The gateway's compiled policies for the route (not owned by the router). */
void tr_route_set_data(tr_route_t *route, void *data);
void *tr_route_data(const tr_route_t *route);
/*
 * Every destination of the route: first the weighted ones, then one per subset, in file
 * order, so the gateway can resolve each upstream name and set `target`. Returns the count;
 * *out (owned by the router) is NULL when the count is 0 (routes answered by the gateway).
 */
size_t tr_route_destinations(tr_route_t *route, tr_route_destination_t **out);

/* The parts of a request the router looks at; all borrowed, none need NUL termination
 * except header values used by regex matchers (tr_http_header_t values are NUL-terminated). */
typedef struct tr_route_request_s {
    const char *method;
    size_t method_len;
    const char *path; /* raw request-target path, before '?', not decoded */
    size_t path_len;
    const char *query; /* raw query without '?', may be empty (NULL with length 0 is fine) */
    size_t query_len;
    const tr_http_header_t *headers; /* unsorted, as received */
    size_t nheaders;
} tr_route_request_t;

/* The result of a match. */
typedef struct tr_route_match_s {
    const tr_route_t *route;
    /* The first subset whose matchers hold, else the weighted pick; NULL when the route has no
     * destination (answered by the gateway through `aggregate` or `fallback`). */
    const tr_route_destination_t *destination;
    size_t path_len;   /* bytes of the upstream path at the start of out_target */
    size_t target_len; /* strlen(out_target): path, then "?" + query when there is one */
} tr_route_match_t;

/*
 * Matches a request. Normalizes the path first (percent-escapes of unreserved characters
 * decoded, other escapes upper-cased, "//" merged, "." and ".." segments removed as in
 * RFC 3986 section 5.2.4) and matches routes in order against the normalized path; the first
 * route whose every condition holds wins. Then picks the destination (subsets in order, else
 * the weighted split driven by the caller's random number `rnd`) and writes the upstream
 * request target — the normalized path after strip_prefix/rewrite, plus "?" and the original
 * query when it is not empty — NUL-terminated into out_target (cap bytes).
 *
 * Returns 0 and fills *m; TR_ENOTFOUND when no route matches; TR_EPARSE for a path that
 * does not start with '/', has a malformed escape, an encoded '/', '\' or NUL, or a raw '\'
 * (answer 400); TR_ETOOLARGE when the path exceeds TR_ROUTER_MAX_PATH or the target does not
 * fit in cap. Never allocates (except inside regexec for regex matchers) and takes no lock of
 * its own.
 */
int tr_router_match(const tr_router_t *r, const tr_route_request_t *rq, uint64_t rnd,
                    tr_route_match_t *m, char *out_target, size_t cap);

/*
 * The path normalization tr_router_match applies, exposed for the gateway and tests: writes
 * the normalized form of path[0..len) NUL-terminated into out (at least len + 1 bytes; the
 * result is never longer than the input). Returns its length or TR_EPARSE.
 */
long tr_router_normalize_path(const char *path, size_t len, char *out);

#endif
