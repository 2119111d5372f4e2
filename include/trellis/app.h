/*
 * libtrellis for service authors: an HTTP app with a router, JSON helpers, problem+json
 * errors, health and metrics endpoints, graceful stop, self-registration, and a client that
 * calls other services by name through discovery and the resilience policies.
 * See docs/sdk.md for a complete example.
 */
#ifndef TRELLIS_APP_H
#define TRELLIS_APP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "trellis/breaker.h"
#include "trellis/db.h"
#include "trellis/error.h"

typedef struct tr_app_s tr_app_t;
/* One request being handled. It lives until the handler replies (exactly once). */
typedef struct tr_ctx_s tr_ctx_t;

/* A route's handler. It may reply now or later (after calls to other services). */
typedef void (*tr_route_cb)(tr_ctx_t *ctx, void *data);
/*
 * The app's own readiness check, run for each GET /health/ready. Return true when ready;
 * otherwise write why into `why` (whylen bytes) for the 503 answer.
 */
typedef bool (*tr_ready_cb)(tr_app_t *app, char *why, size_t whylen, void *data);

typedef struct tr_app_options_s {
    /* Service name for the registry, logs, spans and metrics. Default: $TRELLIS_SERVICE. */
    const char *name;
    /* "ip:port" to listen on. Default: 127.0.0.1:$PORT, else 127.0.0.1:8080. */
    const char *listen;
    /* Consul-compatible registry ("ip:port") used for discovery and self-registration.
     * Default: $TRELLIS_REGISTRY, else 127.0.0.1:8500. */
    const char *registry;
    /* Register this instance (with an HTTP check on /health/ready) at start and deregister
     * it at stop. Default: on, unless $TRELLIS_INSTANCE says `trellis up` runs the app
     * (up registers its replicas itself). */
    int register_self; /* -1 default, 0 off, 1 on */
    /* The service's own SQLite database (see trellis/db.h); NULL for none. */
    const char *db_path;
    const char *const *migrations; /* NULL-terminated SQL scripts, each applied once */
    /* OTLP/HTTP endpoint for spans ("http://127.0.0.1:4318"); NULL: $OTEL_EXPORTER_OTLP_ENDPOINT;
     * "" for none. */
    const char *otlp_endpoint;
    tr_ready_cb ready; /* NULL: ready once serving */
    void *ready_data;
    size_t max_body_bytes; /* request body limit (1 MiB) → 413 */
    uint64_t grace_ms;     /* in-flight requests get this long to finish at stop (10 s) */
    const char *log_level; /* "info"; $TRELLIS_LOG_LEVEL overrides */
} tr_app_options_t;

/* Fills `o` with the defaults above. */
void tr_app_options_init(tr_app_options_t *o);

/*
 * Creates an app (strings are copied) and opens its database, applying migrations.
 * Returns NULL and writes why into err (errlen bytes) on a bad option or database error.
 */
tr_app_t *tr_app_new(const tr_app_options_t *o, char *err, size_t errlen);

/*
 * Adds a route. `pattern` is a path whose segments may be parameters, "/products/{id}";
 * a last segment "{rest...}" takes the rest of the path. Literal segments win over
 * parameters. A path that matches with another method answers 405 with Allow; none, 404.
 * Returns 0, or UV_EINVAL for a bad pattern or method, TR_EEXISTS for a duplicate.
 */
int tr_app_route(tr_app_t *app, const char *method, const char *pattern, tr_route_cb cb,
                 void *data);

/* A fallback's answer for a failed call: fill *status and return a body (stolen), or NULL
 * to report the failure as is. */
typedef json_t *(*tr_call_fallback_cb)(tr_ctx_t *ctx, const char *service, int err, int *status,
                                       void *data);

/* How calls to one service behave. */
typedef struct tr_call_policy_s {
    uint64_t timeout_ms;     /* per attempt, connect to whole response (2 s) */
    uint32_t retries;        /* extra attempts: connect failure, reset, timeout, 502/503/504 (2) */
    uint64_t backoff_ms;     /* first retry delay, doubled per retry, full jitter (25 ms) */
    bool retry_unsafe;       /* also retry POST/PATCH once sent (idempotent services) (false) */
    uint32_t max_concurrent; /* bulkhead: calls in flight at most, more fail TR_EBUSY (64) */
    tr_breaker_config_t breaker;  /* tr_breaker_config_init defaults: trip after 5 failures */
    tr_call_fallback_cb fallback; /* NULL: none */
    void *fallback_data;
} tr_call_policy_t;

/* Fills `p` with the defaults above. */
void tr_call_policy_init(tr_call_policy_t *p);
/*
 * Declares that the app calls `service`, with policy `p` (NULL: defaults). Calls to a
 * service not declared use the defaults. Returns 0 or UV_EINVAL (bad policy).
 */
int tr_app_service(tr_app_t *app, const char *service, const tr_call_policy_t *p);

/*
 * Runs the app until SIGTERM or SIGINT (or tr_app_stop): listens, registers, serves.
 * At stop, readiness turns 503, the instance is deregistered, in-flight requests finish
 * (up to grace_ms) and the function returns 0, or an error that kept the app from starting.
 */
int tr_app_run(tr_app_t *app);
/* Asks a running app to stop as SIGTERM would (safe from any thread). */
void tr_app_stop(tr_app_t *app);
/* Frees the app after tr_app_run returned (or instead of running it). NULL is fine. */
void tr_app_free(tr_app_t *app);

/* The app's database (NULL when it has none), e.g. for seeding before tr_app_run. */
tr_db_t *tr_app_db(tr_app_t *app);
const char *tr_app_name(const tr_app_t *app);
/* The address actually listened on (after tr_app_run has started), "" before. */
const char *tr_app_address(const tr_app_t *app);
/* The loop the app serves on (NULL before tr_app_run), for the app's own timers and I/O;
 * use it only from handlers and callbacks, which run on it. */
uv_loop_t *tr_app_loop(const tr_app_t *app);
/* True once the app is stopping (SIGTERM): work that waits should end now. */
bool tr_app_stopping(const tr_app_t *app);

/* ---- the request ---- */

const char *tr_ctx_method(const tr_ctx_t *ctx);
const char *tr_ctx_path(const tr_ctx_t *ctx);
/* A path parameter of the route (percent-decoded), or NULL. */
const char *tr_ctx_param(const tr_ctx_t *ctx, const char *name);
/* A path parameter as a positive 64-bit integer; false when absent or not one. */
bool tr_ctx_param_id(const tr_ctx_t *ctx, const char *name, int64_t *out);
/* A query parameter (form-decoded), or NULL when absent. */
const char *tr_ctx_query(tr_ctx_t *ctx, const char *name);
/* A request header (case-insensitive), or NULL. */
const char *tr_ctx_header(const tr_ctx_t *ctx, const char *name);
/* The request body, a JSON object (borrowed), or NULL when the body was empty. A body that
 * is not a JSON object never reaches the handler: the app answers 400. */
json_t *tr_ctx_body(const tr_ctx_t *ctx);
/* True once the client went away (its connection closed) before the reply: work done only
 * for this reply can stop; the reply, when it comes, is dropped. */
bool tr_ctx_client_gone(const tr_ctx_t *ctx);
/* The request's correlation ID (x-correlation-id, else x-request-id, else a new one). */
const char *tr_ctx_correlation_id(const tr_ctx_t *ctx);
/* The request's trace ID as 32 hex digits. */
const char *tr_ctx_trace_id(const tr_ctx_t *ctx);
tr_db_t *tr_ctx_db(const tr_ctx_t *ctx);
tr_app_t *tr_ctx_app(const tr_ctx_t *ctx);
/* Memory that lives as long as the ctx. Aborts on out-of-memory. */
void *tr_ctx_alloc(tr_ctx_t *ctx, size_t n);

/* ---- replies (exactly one per request; after the client left it is dropped) ---- */

/* Adds a response header (copied) to the coming reply. */
void tr_ctx_set_header(tr_ctx_t *ctx, const char *name, const char *value);
/* Replies with `body` as application/json (stolen; NULL for no body). */
void tr_ctx_reply_json(tr_ctx_t *ctx, int status, json_t *body);
/* Replies with raw bytes (copied); content_type may be NULL. */
void tr_ctx_reply(tr_ctx_t *ctx, int status, const char *content_type, const void *body,
                  size_t len);
/* Replies with RFC 9457 problem+json: type https://trellis.dev/problems/<slug>. */
void tr_ctx_problem(tr_ctx_t *ctx, int status, const char *slug, const char *title,
                    const char *detail_fmt, ...) __attribute__((format(printf, 5, 6)));

/* ---- calls to other services ---- */

typedef struct tr_call_result_s {
    int status;       /* HTTP status; 0 when no answer came (see err) */
    int err;          /* 0, or TR_ENOTFOUND (no instance), TR_ECIRCUIT_OPEN, TR_EBUSY
                         (bulkhead full), TR_ERESPONSE_TIMEOUT, or a connection error */
    json_t *json;     /* body parsed when it is JSON (borrowed), else NULL */
    const char *body; /* raw body (borrowed) */
    size_t body_len;
    uint32_t attempts; /* attempts made */
    bool fallback;     /* the answer came from the policy's fallback */
} tr_call_result_t;

/* The result is valid during the call only; ctx is still the caller's to reply on. */
typedef void (*tr_call_cb)(tr_ctx_t *ctx, const tr_call_result_t *r, void *data);

/*
 * Calls `method target` on an instance of `service` found through discovery, with the
 * service's policy (timeout, retries on another instance, bulkhead, circuit breaker,
 * fallback). The request carries the ctx's x-correlation-id and a traceparent of a client
 * span under the ctx's span; `body` (borrowed; NULL for none) is sent as JSON. `cb` fires
 * exactly once, on the app's loop, even when the call cannot start.
 */
void tr_ctx_call(tr_ctx_t *ctx, const char *service, const char *method, const char *target,
                 const json_t *body, tr_call_cb cb, void *data);

#endif
