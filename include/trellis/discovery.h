/* Service discovery: watches a service's passing endpoints and picks one per request. */
#ifndef TRELLIS_DISCOVERY_H
#define TRELLIS_DISCOVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "trellis/error.h"
#include "trellis/http_client.h"

typedef struct tr_discovery_s tr_discovery_t;
typedef struct tr_discovery_watch_s tr_discovery_watch_t;
typedef struct tr__endpoint_set_s tr__endpoint_set_t;
typedef struct tr__endpoint_stat_s tr__endpoint_stat_t;

/* Load-balancing policies for tr_discovery_pick. Every one honours the weights. */
typedef enum tr_lb_policy_e {
    TR_LB_ROUND_ROBIN = 0, /* smooth weighted round robin (nginx's) */
    TR_LB_RANDOM,          /* weighted random */
    TR_LB_LEAST_REQUEST,   /* two weighted-random candidates; fewer active requests per weight */
    TR_LB_P2C              /* two weighted-random candidates; fewer active requests */
} tr_lb_policy_t;

/*
 * One passing instance of a service. Everything except the private fields is read-only
 * and lives as long as the endpoint set it belongs to (see tr_discovery_endpoints).
 */
typedef struct tr_endpoint_s {
    const char *id;      /* Service.ID */
    const char *address; /* Service.Address, or Node.Address when that is empty */
    uint16_t port;
    uint32_t weight;         /* Weights.Passing; 1 when absent or 0 */
    uint32_t weight_warning; /* Weights.Warning; 1 when absent */
    /* address:port for tr_http_client_request; ss_family is AF_UNSPEC when the address is
     * not an IP literal (a host name), which the caller must resolve itself. */
    tr_http_endpoint_t http;
    /* private */
    tr__endpoint_stat_t *stat;
    tr__endpoint_set_t *set;
} tr_endpoint_t;

/* A watch's endpoint set changed (also fires for the first answer, even an empty one). */
typedef void (*tr_discovery_change_cb)(tr_discovery_watch_t *w, void *data);
/* tr_discovery_close finished; the tr_discovery_t is freed right after this returns. */
typedef void (*tr_discovery_close_cb)(tr_discovery_t *d);

typedef struct tr_discovery_hub_s tr_discovery_hub_t;

typedef struct tr_discovery_options_s {
    const char *registry;             /* Consul-compatible HTTP address ("127.0.0.1:8500") */
    tr_discovery_hub_t *hub;          /* a registry in this process instead (registry unused) */
    const char *datacenter;           /* ?dc=; NULL for the agent's own */
    uint64_t wait_ms;                 /* blocking query ?wait= (5 min) */
    uint64_t retry_min_ms;            /* first retry delay after a failure (250 ms) */
    uint64_t retry_max_ms;            /* backoff cap (10 s) */
    size_t max_body_bytes;            /* largest health answer accepted (8 MiB) */
    tr_discovery_change_cb on_change; /* optional */
    void *data;                       /* passed to on_change */
} tr_discovery_options_t;

/* Fills `o` with the defaults shown in tr_discovery_options_t. */
void tr_discovery_options_init(tr_discovery_options_t *o);

/*
 * Creates a discovery client on `loop` (NULL `o` = defaults). Strings in `o` are copied;
 * o->hub (see trellis/discovery_hub.h) must outlive the client.
 * Returns NULL when o->registry is not an "ip:port" address and there is no hub. The caller owns
 * the result until tr_discovery_close. Use it only from the loop's thread.
 */
tr_discovery_t *tr_discovery_new(uv_loop_t *loop, const tr_discovery_options_t *o);

/*
 * Starts watching `service` (copied) with blocking queries on
 * GET /v1/health/service/<service>?passing. *out (may be NULL) receives the watch, owned
 * by `d` and freed by tr_discovery_close. Watching a service twice returns the same
 * watch. Returns 0, UV_EINVAL for an empty name, or TR_ESTATE after close.
 */
int tr_discovery_watch(tr_discovery_t *d, const char *service, tr_discovery_watch_t **out);

/*
 * The current endpoints of `w`: stores the array in *out (NULL when none) and returns the
 * count. The array is borrowed: valid until the next on_change of this watch or close.
 */
size_t tr_discovery_endpoints(const tr_discovery_watch_t *w, const tr_endpoint_t **out);

/* True once the watch has had a first successful answer. */
bool tr_discovery_ready(const tr_discovery_watch_t *w);

/* The watched service name (owned by the watch). */
const char *tr_discovery_service(const tr_discovery_watch_t *w);

/*
 * Picks an endpoint with `policy` and counts one active request on it. On 0, *out is
 * the caller's until it hands it back with tr_discovery_done (exactly once); it stays
 * valid until then, even across set changes and tr_discovery_close. Returns
 * TR_ENOTFOUND when the set is empty, UV_EINVAL for an unknown policy.
 */
int tr_discovery_pick(tr_discovery_watch_t *w, tr_lb_policy_t policy, tr_endpoint_t **out);

/* Whether `ep` may be picked (e.g. not ejected as an outlier). */
typedef bool (*tr_endpoint_filter_cb)(tr_endpoint_t *ep, void *data);

/*
 * Like tr_discovery_pick, but only returns an endpoint `ok` accepts: a few picks with
 * `policy`, then the first acceptable endpoint from a random start. TR_ENOTFOUND when
 * none is acceptable.
 */
int tr_discovery_pick_if(tr_discovery_watch_t *w, tr_lb_policy_t policy, tr_endpoint_filter_cb ok,
                         void *data, tr_endpoint_t **out);

/*
 * TR_ENDPOINT_USER_BYTES of zeroed memory (16-byte aligned) for the caller's per-instance
 * state, such as outlier detection. It follows the instance (by ID) across endpoint sets
 * and lives as long as any set holds the instance. Use it only from the loop's thread.
 */
#define TR_ENDPOINT_USER_BYTES 64
void *tr_endpoint_user(tr_endpoint_t *ep);

/*
 * A watch over a fixed list of "ip:port" endpoints (weights may be NULL: all 1), named
 * `name`, picked like any other. The endpoint IDs are the addresses. Returns 0, UV_EINVAL
 * for a bad address or empty name, TR_EEXISTS when the name is watched already, TR_ESTATE
 * after close.
 */
int tr_discovery_watch_static(tr_discovery_t *d, const char *name, const char *const *addrs,
                              const uint32_t *weights, size_t n, tr_discovery_watch_t **out);

/* Ends the active request counted by tr_discovery_pick; `ep` is invalid afterwards. */
void tr_discovery_done(tr_endpoint_t *ep);

/* Requests picked from this endpoint (or the same instance in an earlier set) and not done. */
uint32_t tr_discovery_active(const tr_endpoint_t *ep);

/*
 * Stops every watch (no on_change fires after this call), cancels queries and timers and
 * frees the memory after `cb` (may be NULL) returns. Closing twice is safe.
 */
void tr_discovery_close(tr_discovery_t *d, tr_discovery_close_cb cb);

#endif
