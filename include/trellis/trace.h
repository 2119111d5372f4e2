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
typedef enum tr_attr_type_e { TR_ATTR_STRING, TR_ATTR_INT, TR_ATTR_DOUBLE, TR_ATTR_BOOL } tr_attr_type_t;

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

#endif
