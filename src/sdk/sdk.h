/* libtrellis internals shared by the app, its router, its calls and its registration. */
#ifndef TR_SDK_SDK_H
#define TR_SDK_SDK_H

#include "core/map.h"
#include "trellis/app.h"
#include "trellis/bulkhead.h"
#include "trellis/discovery.h"
#include "trellis/http.h"
#include "trellis/http_client.h"
#include "trellis/metrics.h"
#include "trellis/retry.h"
#include "trellis/trace.h"

#include <uv.h>

#define TR_ROUTE_MAX_PARAMS 8

/* A compiled route pattern: segments, each literal or a parameter. */
typedef struct tr__route_s {
    char method[8];
    char *pattern; /* as given, the route's name in metrics and spans */
    char **seg;    /* literal text, or the parameter's name */
    bool *param;
    size_t nseg;
    bool rest; /* the last segment takes the rest of the path */
    tr_route_cb cb;
    void *data;
    tr_series_t *duration; /* trellis_app_request_duration_seconds{route} */
} tr__route_t;

/* Compiles `pattern`; UV_EINVAL when malformed (no leading '/', empty or bad {name}). */
int tr__route_compile(tr__route_t *r, const char *method, const char *pattern);
void tr__route_free(tr__route_t *r);

typedef struct tr__route_match_s {
    const tr__route_t *route; /* NULL: no route for the path and method */
    bool path_known;          /* some route has the path (with another method): 405 */
    size_t nparams;
    const char *name[TR_ROUTE_MAX_PARAMS];
    char *value[TR_ROUTE_MAX_PARAMS]; /* decoded; malloc'd, freed by tr__route_match_free */
} tr__route_match_t;

/* Finds the most specific route for method and path (not decoded); fills `m`. */
void tr__route_find(tr__route_t *const *routes, size_t n, const char *method, const char *path,
                    size_t path_len, tr__route_match_t *m);
void tr__route_match_free(tr__route_match_t *m);
/* The methods routes accept for `path`, "GET, POST" into out. */
void tr__route_allow(tr__route_t *const *routes, size_t n, const char *path, size_t path_len,
                     char *out, size_t outlen);

/* A dependency: its policy and per-app resilience state (one loop, no locks). */
typedef struct tr__target_s {
    char *name;
    tr_call_policy_t policy;
    tr_retry_policy_t retry; /* the policy's retries in the resilience part's terms */
    tr_breaker_t breaker;
    tr_bulkhead_t bulkhead;
    tr_discovery_watch_t *watch; /* on first call */
    tr_endpoint_t *fixed;        /* a fixed address instead of discovery (the event store) */
    tr_series_t *ok, *error, *fallback, *rejected;
    tr_series_t *state; /* trellis_app_breaker_state{target} */
    tr_breaker_state_t last_state;
} tr__target_t;

typedef struct tr__projection_s tr__projection_t;
typedef struct tr__app_outbox_s tr__app_outbox_t;

struct tr_app_s {
    char *name, *listen, *registry, *otlp, *db_path;
    bool register_self;
    tr_ready_cb ready;
    void *ready_data;
    size_t max_body;
    uint64_t grace_ms;
    tr_db_t *db;
    tr__route_t **routes;
    size_t nroutes;
    tr_map_t targets; /* name → tr__target_t */
    tr_call_policy_t default_policy;

    /* running */
    int fd;
    char address[64];
    uv_loop_t *loop;
    tr_http_server_t *server;
    tr_http_client_t *client;
    tr_discovery_t *discovery;
    tr_exporter_t *exporter;
    tr_span_sink_t spans;
    bool stopping, closing;
    size_t inflight;
    struct tr__registration_s *reg;
    tr__app_outbox_t *outbox; /* while running, for an app with a database */
    tr__projection_t **projections;
    size_t nprojections;
    tr_metric_t *requests, *durations, *calls, *breakers;
};

typedef struct tr__header_kv_s {
    char *name, *value;
} tr__header_kv_t;

struct tr_ctx_s {
    tr_app_t *app;
    tr_http_req_t *req; /* NULL once the client left */
    const tr__route_t *route;
    tr__route_match_t match;
    json_t *body;
    char correlation_id[80];
    char method[8]; /* the request's, kept after the client left */
    char trace_hex[33];
    tr_trace_ctx_t trace; /* this request's server span (trace id, span id) */
    uint8_t parent_span[8];
    uint64_t start_ns;
    tr__header_kv_t *headers;
    size_t nheaders;
    void **allocs;
    size_t nallocs;
    bool replied;
    int status;
    size_t pending_calls;
};

/* Sets this thread's log context to the ctx's IDs (cleared by tr_log_context_clear). */
void tr__ctx_log_context(tr_ctx_t *ctx);
/* Frees the ctx once it has replied and no call is pending. */
void tr__ctx_maybe_free(tr_ctx_t *ctx);

/* The target for `service`, created with the default policy on first use. */
tr__target_t *tr__app_target(tr_app_t *app, const char *service);
void tr__target_free(tr__target_t *t);
/* The target `service` at the fixed address "ip:port" (no discovery); NULL when the address
 * is not ip:port. Created with the default policy unless the app declared one. */
tr__target_t *tr__app_target_fixed(tr_app_t *app, const char *service, const char *addr);
/* The event store's "ip:port": $TRELLIS_EVENTSTORE, else the registry's address. */
const char *tr__app_eventstore(const tr_app_t *app);
/* Emits a span to the app's exporter (no-op without one). */
void tr__app_span(tr_app_t *app, const tr_span_t *span);
uint64_t tr__now_ns(void);

/* Projections (projection.c): start following the store once the app serves; stop at stop. */
void tr__projections_start(tr_app_t *app);
void tr__projections_stop(tr_app_t *app);
void tr__projection_free(tr__projection_t *p);
/* The outbox relay (outbox.c): runs while the app runs. */
void tr__app_outbox_start(tr_app_t *app);
void tr__app_outbox_stop(tr_app_t *app);

/* Self-registration (register.c): starts registering; deregisters at stop. */
typedef struct tr__registration_s tr__registration_t;
tr__registration_t *tr__register_start(tr_app_t *app);
/* Deregisters and frees; `done` fires when finished (or its deadline passed). */
void tr__register_stop(tr__registration_t *r, void (*done)(void *data), void *data);

#endif
