/* Fixed-size span records (what the export queue holds) and their OTLP/HTTP JSON encoding. */
#ifndef TR_TRACE_OTLP_ENCODE_H
#define TR_TRACE_OTLP_ENCODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "trellis/trace.h"

/* A string inside the record's text area. */
typedef struct tr__str_s {
    uint16_t off, len;
} tr__str_t;

typedef struct tr__rec_attr_s {
    tr__str_t key;
    uint8_t type; /* tr_attr_type_t */
    union {
        tr__str_t s;
        int64_t i;
        double d;
        bool b;
    } v;
} tr__rec_attr_t;

typedef struct tr__rec_event_s {
    uint64_t time_ns;
    tr__str_t name;
    uint8_t first_attr, nattrs; /* a range of tr__span_rec_t.event_attrs */
    uint16_t dropped_attrs;
} tr__rec_event_t;

/*
 * One finished span, copied: no pointers, so it can sit in a preallocated queue slot and be
 * read by another thread. About 2 KiB.
 */
typedef struct tr__span_rec_s {
    uint8_t trace_id[16], span_id[8], parent_span_id[8];
    uint64_t start_ns, end_ns;
    uint8_t kind, status, nattrs, nevents, nevent_attrs;
    uint16_t dropped_attrs, dropped_events;
    tr__str_t name, service, status_message;
    tr__rec_attr_t attrs[TR_SPAN_ATTRS_MAX];
    tr__rec_event_t events[TR_SPAN_EVENTS_MAX];
    tr__rec_attr_t event_attrs[TR_SPAN_EVENT_ATTRS_MAX];
    uint16_t text_len;
    char text[TR_SPAN_TEXT_MAX];
} tr__span_rec_t;

/* Copies `span` into `rec`, truncating as documented by the TR_SPAN_*_MAX limits. */
void tr__span_rec_copy(tr__span_rec_t *rec, const tr_span_t *span);

/*
 * Appends one OTLP ExportTraceServiceRequest in JSON for recs[0..n) to `out`: one
 * resourceSpans per distinct service (records with an empty service use `def_service`),
 * each with one scopeSpans named "trellis".
 */
void tr__otlp_encode(const tr__span_rec_t *const *recs, size_t n, const char *def_service,
                     tr_buf_t *out);

#endif
