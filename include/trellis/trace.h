/* Spans and trace context: the model every trellis part records requests in. */
#ifndef TRELLIS_TRACE_H
#define TRELLIS_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* OpenTelemetry's span kinds, with OTLP's integer values. */
typedef enum tr_span_kind_e {
    TR_SPAN_UNSPECIFIED = 0,
    TR_SPAN_INTERNAL = 1,
    TR_SPAN_SERVER = 2,
    TR_SPAN_CLIENT = 3,
    TR_SPAN_PRODUCER = 4,
    TR_SPAN_CONSUMER = 5
} tr_span_kind_t;

/* OTLP status codes. */
typedef enum tr_span_status_e {
    TR_STATUS_UNSET = 0,
    TR_STATUS_OK = 1,
    TR_STATUS_ERROR = 2
} tr_span_status_t;

/* W3C trace context of one span: ids as raw bytes, flags (bit 0: sampled). */
typedef struct tr_trace_ctx_s {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t flags;
    char tracestate[512]; /* as received (validated), "" when none */
} tr_trace_ctx_t;

/* One attribute; values are strings, integers, doubles or booleans. */
typedef enum tr_attr_type_e {
    TR_ATTR_STRING,
    TR_ATTR_INT,
    TR_ATTR_DOUBLE,
    TR_ATTR_BOOL
} tr_attr_type_t;

typedef struct tr_attr_s {
    const char *key;
    tr_attr_type_t type;
    union {
        const char *s;
        int64_t i;
        double d;
        bool b;
    } v;
} tr_attr_t;

typedef struct tr_span_event_s {
    const char *name;
    uint64_t time_ns;
    const tr_attr_t *attrs;
    size_t nattrs;
} tr_span_event_t;

/*
 * A finished span as handed to a sink. Everything is borrowed for the duration of the
 * sink call only: a sink that keeps the span copies what it needs.
 */
typedef struct tr_span_s {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t parent_span_id[8]; /* all zero for a root span */
    const char *name;
    tr_span_kind_t kind;
    uint64_t start_ns, end_ns; /* Unix epoch nanoseconds */
    tr_span_status_t status;
    const char *status_message; /* may be NULL */
    const char *service;        /* resource service.name */
    const tr_attr_t *attrs;
    size_t nattrs;
    const tr_span_event_t *events;
    size_t nevents;
} tr_span_t;

/*
 * Where finished spans go. `emit` must not block: exporters queue (bounded) and drop when
 * full. Called from any thread; the sink is responsible for its own synchronisation.
 */
typedef struct tr_span_sink_s {
    void (*emit)(void *data, const tr_span_t *span);
    void *data;
} tr_span_sink_t;

/* ---- trace context: ids, W3C traceparent/tracestate and B3 (src/trace/context.c) ---- */

typedef struct tr_http_header_s tr_http_header_t; /* trellis/http.h */

/* Bit 0 of tr_trace_ctx_t.flags: the W3C "sampled" flag. */
#define TR_TRACE_FLAG_SAMPLED 0x01
/*
 * Sampling hints from a B3 header that carried a decision but no ids ("0", "1", "d" or
 * X-B3-Sampled alone). tr_trace_extract sets one of them in parent->flags only when it
 * reports has_parent false; the parent-based sampler obeys them. Never formatted.
 */
#define TR_TRACE_HINT_DENY   0x80
#define TR_TRACE_HINT_ACCEPT 0x40

/* Length of a formatted traceparent ("00-" 32 hex "-" 16 hex "-" 2 hex), without the NUL. */
#define TR_TRACEPARENT_LEN 55

/*
 * Parses a W3C Trace Context level 1 traceparent value (surrounding spaces/tabs ignored):
 * lowercase hex only, version "ff" invalid, version 00 exactly 55 characters, a higher
 * version accepted from its first 55 characters when followed by '-' or the end; trace-id
 * and parent-id must not be all zeros. On success fills out->trace_id, span_id (the
 * parent-id) and flags; tracestate is left alone. Returns 0 or TR_EPARSE.
 */
int tr_trace_parse_traceparent(const char *v, size_t len, tr_trace_ctx_t *out);

/*
 * Validates a tracestate value (list-members "key=value" separated by commas with optional
 * spaces/tabs, empty members allowed) and stores it normalised (members joined by ",")
 * in out->tracestate. An invalid key or value, a duplicate key or more than 32 members
 * drops the whole header: out->tracestate becomes "" and TR_EPARSE is returned. A value
 * longer than 511 characters is cut down as the spec suggests: members over 128
 * characters go first, then members from the end. Returns 0 (also for an empty value).
 */
int tr_trace_parse_tracestate(const char *v, size_t len, tr_trace_ctx_t *out);

/*
 * Parses a B3 single header "{trace}-{span}[-{sampled}[-{parent}]]": lowercase hex, a 64-bit
 * trace id is padded with leading zeros to 128 bits; sampled is 0, 1 or d (debug, sampled).
 * Returns 0 with ids and flags in *out (tracestate ""), 1 for the id-less sampling-only
 * form ("0", "1" or "d": out's ids are zero and flags holds TR_TRACE_HINT_DENY or
 * TR_TRACE_HINT_ACCEPT), or TR_EPARSE.
 */
int tr_trace_parse_b3_single(const char *v, size_t len, tr_trace_ctx_t *out);

/*
 * Parses the B3 multi headers (each NUL-terminated, NULL when absent): X-B3-TraceId,
 * X-B3-SpanId, X-B3-Sampled ("1"/"0", also "true"/"false") and X-B3-Flags ("1" = debug,
 * sampled). Same results as tr_trace_parse_b3_single: 0 with ids, 1 for a decision
 * without ids, TR_EPARSE otherwise.
 */
int tr_trace_parse_b3_multi(const char *trace_id, const char *span_id, const char *sampled,
                            const char *flags, tr_trace_ctx_t *out);

/*
 * Finds the incoming trace context in request headers (names compared case-insensitively).
 * Precedence: traceparent (with tracestate), then b3, then X-B3-*. When a traceparent
 * header is present it alone decides: invalid (or sent twice) means no parent, a new
 * trace, and tracestate dropped. *has_parent tells whether *parent holds a parent context;
 * when false, *parent is zeroed except for a possible B3 sampling hint in flags.
 */
void tr_trace_extract(const tr_http_header_t *headers, size_t n, tr_trace_ctx_t *parent,
                      bool *has_parent);

/* Writes "00-<trace>-<span>-<flags & 0x01>" and a NUL into out; returns 55. */
size_t tr_trace_format_traceparent(const tr_trace_ctx_t *c, char out[56]);

/*
 * Gives `c` a new random span id and, when new_trace, a new random trace id (never all
 * zeros). Uses a per-thread xoshiro256** generator seeded from getrandom (reseeded in a
 * forked child); no system call after the first use on a thread.
 */
void tr_trace_new_ids(tr_trace_ctx_t *c, bool new_trace);

/* Writes 2*n lowercase hex digits and a NUL into out (2*n+1 bytes); returns 2*n. */
size_t tr_trace_hex_encode(const uint8_t *in, size_t n, char *out);

/* Decodes exactly 2*n lowercase hex digits from `hex` into out. Returns 0 or TR_EPARSE. */
int tr_trace_hex_decode(const char *hex, size_t n, uint8_t *out);

/* True when all n bytes are zero (an invalid trace or span id). */
bool tr_trace_id_is_zero(const uint8_t *id, size_t n);

/* ---- sampling (src/trace/sampler.c) ---- */

typedef enum tr_sampler_kind_e {
    TR_SAMPLER_PARENT_BASED = 0, /* follow the parent's sampled flag; roots by `ratio` */
    TR_SAMPLER_ALWAYS_ON,
    TR_SAMPLER_ALWAYS_OFF,
    TR_SAMPLER_RATIO /* TraceIdRatioBased: `ratio` of trace ids, the same in every service */
} tr_sampler_kind_t;

typedef struct tr_sampler_s {
    int kind;     /* tr_sampler_kind_t */
    double ratio; /* 0..1; used by RATIO and by PARENT_BASED for root spans */
} tr_sampler_t;

/* The default: parent-based, sampling every root span. */
#define TR_SAMPLER_DEFAULT                                                                         \
    {                                                                                              \
        TR_SAMPLER_PARENT_BASED, 1.0                                                               \
    }

/*
 * Decides whether a new span of trace `trace_id` is recorded. `parent`/`has_parent` are what
 * tr_trace_extract (or the current span) gave; parent may be NULL when has_parent is false.
 * The ratio decision is a pure function of the trace id's last 7 bytes (the random part in
 * W3C level 2), so every service makes the same choice for a trace.
 */
bool tr_sampler_should(const tr_sampler_t *s, const tr_trace_ctx_t *parent, bool has_parent,
                       const uint8_t trace_id[16]);

/* Parses "parent_based", "always_on", "always_off" or "ratio". Returns the kind or TR_EPARSE. */
int tr_sampler_kind_parse(const char *name);
/* The config name of a kind ("parent_based"); "unknown" outside the enum. */
const char *tr_sampler_kind_name(int kind);

typedef struct tr_config_s tr_config_t; /* trellis/config.h */
struct json_t;

/*
 * Reads `sampler` (parent_based|always_on|always_off|ratio, default parent_based) and
 * `ratio` (a percentage "10%" or a number 0..1, default 100%) from a `tracing:` mapping
 * (NULL = defaults). Other keys are left to their readers (see TR_TRACING_CONFIG_KEYS).
 * Returns 0, or TR_ECONFIG with the message in tr_config_error(cfg).
 */
int tr_sampler_config(tr_config_t *cfg, const struct json_t *tracing, tr_sampler_t *out);

/* ---- span export over OTLP/HTTP JSON (src/trace/exporter.c) ---- */

/* Every key a `tracing:` mapping may hold, for tr_config_check_keys. */
#define TR_TRACING_CONFIG_KEYS                                                                     \
    "sampler", "ratio", "endpoint", "service", "queue_size", "batch_size", "flush_interval",       \
        "export_timeout", "max_retries"

/*
 * Limits of one queued span. Strings are copied into the queue slot and cut (at a UTF-8
 * character boundary) to these lengths; attributes past the limits are dropped and
 * reported as droppedAttributesCount. All strings of a span share TR_SPAN_TEXT_MAX bytes.
 */
#define TR_SPAN_NAME_MAX        128
#define TR_SPAN_SERVICE_MAX     64
#define TR_SPAN_STATUS_MSG_MAX  256
#define TR_SPAN_ATTRS_MAX       16
#define TR_SPAN_ATTR_KEY_MAX    64
#define TR_SPAN_ATTR_VALUE_MAX  256
#define TR_SPAN_EVENTS_MAX      4
#define TR_SPAN_EVENT_ATTRS_MAX 8 /* all events of a span together */
#define TR_SPAN_TEXT_MAX        1536

typedef struct tr_exporter_s tr_exporter_t;
struct tr_metrics_s;

typedef struct tr_exporter_options_s {
    /* OTLP/HTTP traces URL, "http://host[:port]/path" with an IP literal or a host name
     * (resolved before the first export and again after a connection error). The trellis
     * collector listens on the default. Copied. */
    const char *endpoint;         /* "http://127.0.0.1:4318/v1/traces" */
    const char *service;          /* service.name of spans whose service is NULL ("trellis") */
    size_t queue_capacity;        /* spans queued at most; rounded up to a power of 2 (8192) */
    size_t batch_size;            /* spans per export request (512) */
    uint64_t flush_interval_ms;   /* a partial batch is sent after this (1 s) */
    uint64_t export_timeout_ms;   /* deadline of one attempt, resolve to response (10 s) */
    unsigned max_retries;         /* extra attempts on 429/502/503/504 and connection errors (5) */
    uint64_t retry_initial_ms;    /* first backoff, doubled per retry with jitter (100 ms) */
    uint64_t retry_max_ms;        /* backoff cap (5 s) */
    struct tr_metrics_s *metrics; /* where the counters go; NULL = tr_metrics_default() */
} tr_exporter_options_t;

typedef struct tr_exporter_stats_s {
    uint64_t queued;           /* spans accepted into the queue */
    uint64_t exported;         /* spans the endpoint accepted (2xx) */
    uint64_t dropped_full;     /* spans refused because the queue was full */
    uint64_t dropped_failed;   /* spans of batches that failed after the retries */
    uint64_t dropped_shutdown; /* spans still queued when the stop deadline passed */
    uint64_t batches;          /* export requests that succeeded */
    uint64_t export_errors;    /* failed attempts, retried or not */
} tr_exporter_stats_t;

/* Fills `o` with the defaults shown in tr_exporter_options_t. */
void tr_exporter_options_init(tr_exporter_options_t *o);

/*
 * Reads endpoint, service, queue_size, batch_size, flush_interval, export_timeout and
 * max_retries from a `tracing:` mapping (NULL = keep `o`). Strings are owned by cfg.
 * Returns 0 or TR_ECONFIG (message in tr_config_error(cfg)).
 */
int tr_exporter_config(tr_config_t *cfg, const struct json_t *tracing, tr_exporter_options_t *o);

/*
 * Allocates the queue and starts the export thread (its own libuv loop and HTTP client).
 * Returns NULL (and logs why) for an endpoint it cannot parse or https://. The caller owns
 * the exporter until tr_exporter_stop.
 */
tr_exporter_t *tr_exporter_start(const tr_exporter_options_t *o);

/*
 * A sink whose emit copies the span into the queue: lock-free, no allocation, never waits.
 * A full queue drops the span and counts it. Valid until tr_exporter_stop; every thread
 * that emits must be done emitting before stop is called.
 */
tr_span_sink_t tr_exporter_sink(tr_exporter_t *exp);

/* Counters so far; any thread. */
void tr_exporter_stats(const tr_exporter_t *exp, tr_exporter_stats_t *out);

/*
 * Exports what is queued, for at most flush_deadline_ms (retries included), then drops the
 * rest (counted as dropped_shutdown), joins the thread and frees the exporter. NULL is a
 * no-op.
 */
void tr_exporter_stop(tr_exporter_t *exp, uint64_t flush_deadline_ms);

#endif
