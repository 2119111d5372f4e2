/* The gateway's internals: the compiled config snapshot and each worker's state. */
#ifndef TR_GATEWAY_INT_H
#define TR_GATEWAY_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "core/buf.h"
#include "core/deadline.h"
#include "gateway/gateway.h"
#include "gateway/jwt.h"
#include "gateway/router.h"
#include "trellis/breaker.h"
#include "trellis/bulkhead.h"
#include "trellis/config.h"
#include "trellis/discovery.h"
#include "trellis/http.h"
#include "trellis/http_client.h"
#include "trellis/metrics.h"
#include "trellis/outlier.h"
#include "trellis/ratelimit.h"
#include "trellis/retry.h"
#include "trellis/trace.h"

/* ---- the compiled config: immutable once built, shared by every worker */

typedef struct gw_upstream_s {
    const char *name;    /* owned by the config tree */
    const char *service; /* registry service name; NULL with static endpoints */
    const char **addrs;  /* static "ip:port" endpoints */
    uint32_t *weights;
    size_t naddrs;
    tr_lb_policy_t lb;
    uint64_t connect_timeout_ms;
    uint32_t max_idle;
    tr_bulkhead_config_t bulkhead;
    bool has_breaker, has_outlier;
    tr_breaker_config_t breaker;
    tr_outlier_config_t outlier;
    double budget_percent;
    uint32_t budget_min;
    size_t index;
} gw_upstream_t;

typedef struct gw_header_op_s {
    const char *name, *value; /* value NULL: remove */
    size_t name_len, value_len;
} gw_header_op_t;

typedef struct gw_headers_s {
    gw_header_op_t *ops;
    size_t n;
} gw_headers_t;

typedef struct gw_cors_s {
    bool on;
    const char **origins; /* "*" allowed */
    size_t norigins;
    const char *methods, *headers, *expose; /* comma lists, owned by the config tree */
    uint64_t max_age_s;
    bool credentials;
} gw_cors_t;

typedef enum { GW_RL_KEY_ROUTE = 0, GW_RL_KEY_SUBJECT, GW_RL_KEY_IP, GW_RL_KEY_HEADER } gw_rl_key_t;

typedef struct gw_ratelimit_s {
    tr_ratelimit_config_t cfg;
    gw_rl_key_t key;
    const char *header;    /* GW_RL_KEY_HEADER */
    tr_ratelimit_t bucket; /* GW_RL_KEY_ROUTE */
    tr_ratelimit_table_t *table;
} gw_ratelimit_t;

typedef struct gw_claim_header_s {
    const char *claim, *header;
} gw_claim_header_t;

typedef struct gw_jwt_s {
    tr_jwt_verifier_t verifier;
    _Atomic(tr_jwt_keyset_t *) keys; /* swapped by the JWKS fetcher */
    const char *jwks_url;
    uint64_t jwks_refresh_ms, jwks_min_interval_ms, jwks_timeout_ms;
    gw_claim_header_t *claims;
    size_t nclaims;
    bool optional;             /* a request without a token passes (claims are not forwarded) */
    struct tr_jwks_s *fetcher; /* on worker 0's loop while this config is worker 0's */
    tr_jwt_keyset_t *retired;  /* the set before the current one, kept one refresh longer */
    /* Routes with the same JWKS URL share one fetcher: the first such route's (the leader);
     * the others follow it and get every key set it fetches. */
    struct gw_jwt_s *leader, *next_follower;
} gw_jwt_t;

typedef struct gw_fallback_s {
    bool on;
    int status;
    const char *body, *content_type;
    size_t body_len;
    const gw_upstream_t *upstream; /* fallback to another upstream, or NULL */
} gw_fallback_t;

typedef struct gw_part_s {
    const char *name;
    const gw_upstream_t *upstream;
    const char *path; /* may contain {param} from the route's template */
    uint64_t timeout_ms;
} gw_part_t;

typedef struct gw_route_s {
    tr_route_t *route;
    const char *name;
    size_t index;
    uint64_t timeout_ms, per_try_timeout_ms;
    tr_retry_policy_t retry;
    size_t retry_buffer;
    gw_jwt_t *jwt;
    gw_ratelimit_t *rate_limit;
    gw_fallback_t fallback;
    gw_headers_t req_headers, res_headers;
    gw_cors_t cors;
    bool has_breaker;
    tr_breaker_config_t breaker;
    gw_part_t *parts; /* aggregation */
    size_t nparts;
} gw_route_t;

typedef struct gw_config_s {
    _Atomic unsigned refs;
    tr_config_t *src;
    bool owns_src; /* false: a section of someone else's tree (a topology's `gateway:`) */
    json_t *root;
    const char *path;
    const char *listen, *admin_listen;
    int workers;
    const char *registry, *datacenter;
    const char *access_log; /* "stdout", "stderr", "off" or a file path */
    uint64_t max_body_bytes, header_timeout_ms, idle_timeout_ms;
    gw_upstream_t *upstreams;
    size_t nupstreams;
    tr_router_t *router;
    gw_route_t *routes;
    size_t nroutes;
    json_t *effective; /* /admin/config */
    tr_sampler_t sampler;
    bool tracing;                   /* a `tracing:` section with an endpoint: export spans */
    tr_exporter_options_t exporter; /* strings owned by src */
} gw_config_t;

/* Compiles the file at `path`. On failure returns TR_ECONFIG (or a load error) and writes
 * "file:line:col: key: what is wrong" to err. */
int gw_config_load(const char *path, const char *text, gw_config_t **out, char *err, size_t errlen);
/* Compiles a section of an already loaded tree (borrowed: it must outlive the config);
 * errors then point into that tree's file, with its key paths. */
int gw_config_load_tree(tr_config_t *cfg, json_t *root, gw_config_t **out, char *err,
                        size_t errlen);
void gw_config_retain(gw_config_t *c);
void gw_config_release(gw_config_t *c);

/* ---- a worker: one loop, its listener, pools, discovery and per-upstream state */

typedef struct gw_worker_s gw_worker_t;

/* Per upstream and per process: the limits that must hold across all workers. */
typedef struct gw_shared_s {
    char *name;
    unsigned refs; /* under the gateway's lock */
    tr_bulkhead_config_t bulkhead_cfg;
    double budget_percent;
    uint32_t budget_min;
    tr_bulkhead_t bulkhead;
    tr_retry_budget_t budget;
    struct gw_shared_s *next;
} gw_shared_t;

typedef struct gw_up_rt_s {
    unsigned refs; /* generations sharing this state (the upstream's config did not change) */
    const gw_upstream_t *cfg;
    gw_config_t *owner; /* keeps cfg alive */
    tr_http_client_t *client;
    tr_discovery_watch_t *watch;
    tr_breaker_t breaker;
    struct gw_shared_s *shared; /* bulkhead and retry budget, shared by every worker */
    tr_outlier_pool_t outlier;
    tr_series_t *m_requests, *m_errors, *m_retries, *m_latency, *m_ejections, *m_breaker_open;
    tr_series_t *m_ejected, *m_active;
    uint32_t last_endpoints;
} gw_up_rt_t;

/* What a worker serves with: a config and its per-upstream state, reference-counted so
 * requests in flight keep the generation they started with across a reload. */
typedef struct gw_gen_s {
    unsigned refs;
    gw_config_t *cfg;
    gw_worker_t *wk;
    gw_up_rt_t **ups;               /* cfg->nupstreams */
    tr_breaker_t *route_breakers;   /* cfg->nroutes; used where route->has_breaker */
    tr_series_t **m_route_requests; /* per route */
    tr_series_t **m_route_latency;
} gw_gen_t;

typedef struct gw_timer_s gw_timer_t;
struct gw_timer_s {
    uv_timer_t t;
    gw_timer_t *next_free;
};

struct gw_worker_s {
    tr_gateway_t *gw;
    int id;
    uv_loop_t *loop;
    tr_http_server_t *srv, *admin;
    tr_discovery_t *disc;
    gw_gen_t *gen;
    uv_async_t reload;
    gw_timer_t *free_timers;
    tr_deadlines_t *deadlines; /* requests' total and per-try timeouts */
    struct gw_exchange_s *free_exchanges;
    uint64_t rng;
    tr_jwt_cache_t *jwt_cache;
    tr_buf_t access;     /* buffered access log lines */
    size_t access_sunk;  /* bytes of `access` already given to the access sink */
    tr_buf_t access_out; /* the batch being written on the threadpool */
    size_t access_off;
    uv_fs_t access_req;
    bool access_busy;
    uv_timer_t flush;
    uv_timer_t sweep;
    uv_fs_event_t watch_file;
    uv_timer_t reload_debounce;
    unsigned static_seq;
    unsigned live_gens;
    bool stopping;
    unsigned open_handles;
};

typedef struct gw_epstats_s gw_epstats_t;

/* What the gateway keeps in each endpoint's per-instance memory (tr_endpoint_user). */
typedef struct gw_ep_user_s {
    tr_outlier_endpoint_t outlier; /* first: tr_endpoint_user() is also used as this */
    gw_epstats_t *stats;           /* found on the first attempt */
} gw_ep_user_t;
_Static_assert(sizeof(gw_ep_user_t) <= TR_ENDPOINT_USER_BYTES, "endpoint user memory");

struct tr_gateway_s {
    tr_gateway_options_t o;
    gw_config_t *cfg; /* the newest config; under lock */
    uv_mutex_t lock;
    int *fds, admin_fd;
    int nworkers;
    gw_worker_t **workers;
    char **snapshots;    /* per worker: its upstream state as JSON, under lock */
    gw_shared_t *shared; /* under lock */
    int access_fd;
    char listen_addr[64], admin_addr[64];
    uint64_t reloads, reload_failures;
    gw_epstats_t *epstats; /* under lock; never shrinks while the gateway lives */
};

/* The newest config, retained for the caller. */
gw_config_t *gw_current_config(tr_gateway_t *gw);

/* epstats.c */
void gw_epstats_record(gw_worker_t *wk, tr_endpoint_t *ep, bool failed, uint64_t ms);
void gw_epstats_free(tr_gateway_t *gw);
/* Sums a record's slots (all workers) without the lock: records live as long as the
 * gateway and their counters are atomics. NULL sums to zero. */
void gw_epstats_sum(const gw_epstats_t *e, tr_gateway_ep_stats_t *out);

/* proxy.c */
void gw_proxy_handle(tr_http_req_t *req, void *worker);
void gw_gen_release(gw_gen_t *g);
gw_gen_t *gw_gen_new(gw_worker_t *wk, gw_config_t *cfg, gw_gen_t *prev);
gw_timer_t *gw_timer_get(gw_worker_t *wk);
void gw_timer_put(gw_worker_t *wk, gw_timer_t *t);
/* Closes the pooled timers (the worker is stopping). */
void gw_timer_drain(gw_worker_t *wk);
uint64_t gw_rand(gw_worker_t *wk);

/* jwks: a route's JWKS refresh after an unknown kid (rate limited by the fetcher). */
void gw_jwks_unknown_kid(gw_worker_t *wk, gw_jwt_t *j);

/* aggregate.c: answers `req` with the merged JSON of the route's parts. */
void gw_aggregate_start(gw_worker_t *wk, tr_http_req_t *req, const gw_route_t *route,
                        const char *correlation_id, const char *traceparent);

/* Writes the worker's buffered access log lines. */
void gw_access_flush(gw_worker_t *wk);

/* admin.c */
void gw_admin_handle(tr_http_req_t *req, void *worker);

#endif
