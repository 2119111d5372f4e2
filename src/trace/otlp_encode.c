/* Span records: copying a span into a fixed-size slot, and writing records as OTLP JSON. */
#include "trace/otlp_encode.h"

#include "core/jsonw.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- copying ---- */

/* Length of s cut to at most `max` bytes without splitting a UTF-8 sequence. */
static size_t cut_len(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    if (n <= max) return n;
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

/* Copies s (cut to max and to the space left) into the text area. */
static tr__str_t text_put(tr__span_rec_t *r, const char *s, size_t max)
{
    tr__str_t t = {r->text_len, 0};
    if (s == NULL) return t;
    size_t room = sizeof(r->text) - r->text_len;
    size_t n = cut_len(s, max < room ? max : room);
    memcpy(r->text + r->text_len, s, n);
    r->text_len = (uint16_t)(r->text_len + n);
    t.len = (uint16_t)n;
    return t;
}

/* Copies one attribute; false when it must be dropped (no key, or no room for its key). */
static bool attr_put(tr__span_rec_t *r, tr__rec_attr_t *dst, const tr_attr_t *a)
{
    if (a->key == NULL || a->key[0] == '\0') return false;
    dst->key = text_put(r, a->key, TR_SPAN_ATTR_KEY_MAX);
    if (dst->key.len == 0) return false;
    dst->type = (uint8_t)a->type;
    switch (a->type) {
    case TR_ATTR_STRING:
        dst->v.s = text_put(r, a->v.s ? a->v.s : "", TR_SPAN_ATTR_VALUE_MAX);
        break;
    case TR_ATTR_INT:
        dst->v.i = a->v.i;
        break;
    case TR_ATTR_DOUBLE:
        dst->v.d = a->v.d;
        break;
    case TR_ATTR_BOOL:
        dst->v.b = a->v.b;
        break;
    default:
        r->text_len = dst->key.off; /* give the key's bytes back */
        return false;
    }
    return true;
}

static void events_put(tr__span_rec_t *r, const tr_span_t *span)
{
    r->nevents = r->nevent_attrs = 0;
    size_t n = span->events ? span->nevents : 0;
    r->dropped_events = (uint16_t)(n > TR_SPAN_EVENTS_MAX ? n - TR_SPAN_EVENTS_MAX : 0);
    for (size_t i = 0; i < n && i < TR_SPAN_EVENTS_MAX; i++) {
        const tr_span_event_t *e = &span->events[i];
        tr__rec_event_t *d = &r->events[r->nevents++];
        d->time_ns = e->time_ns;
        d->name = text_put(r, e->name, TR_SPAN_NAME_MAX);
        d->first_attr = r->nevent_attrs;
        d->nattrs = 0;
        d->dropped_attrs = 0;
        for (size_t j = 0; e->attrs && j < e->nattrs; j++) {
            if (r->nevent_attrs < TR_SPAN_EVENT_ATTRS_MAX &&
                attr_put(r, &r->event_attrs[r->nevent_attrs], &e->attrs[j])) {
                r->nevent_attrs++;
                d->nattrs++;
            } else {
                d->dropped_attrs++;
            }
        }
    }
}

void tr__span_rec_copy(tr__span_rec_t *r, const tr_span_t *span)
{
    memcpy(r->trace_id, span->trace_id, 16);
    memcpy(r->span_id, span->span_id, 8);
    memcpy(r->parent_span_id, span->parent_span_id, 8);
    r->start_ns = span->start_ns;
    r->end_ns = span->end_ns;
    r->kind = (uint8_t)span->kind;
    r->status = (uint8_t)span->status;
    r->text_len = 0;
    /* Fixed fields first so that attributes, not the name, give way when text runs out. */
    r->name = text_put(r, span->name, TR_SPAN_NAME_MAX);
    r->service = text_put(r, span->service, TR_SPAN_SERVICE_MAX);
    r->status_message = text_put(r, span->status_message, TR_SPAN_STATUS_MSG_MAX);
    r->nattrs = 0;
    r->dropped_attrs = 0;
    size_t n = span->attrs ? span->nattrs : 0;
    for (size_t i = 0; i < n; i++) {
        if (r->nattrs < TR_SPAN_ATTRS_MAX && attr_put(r, &r->attrs[r->nattrs], &span->attrs[i]))
            r->nattrs++;
        else
            r->dropped_attrs++;
    }
    events_put(r, span);
}

/* ---- JSON writing ---- */

#define PUT(out, lit) tr_buf_append((out), (lit), sizeof(lit) - 1)

static void put_hex(tr_buf_t *out, const uint8_t *id, size_t n)
{
    tr_jsonw_hex(out, id, n);
}

/* 64-bit integers as quoted decimal strings, as the OTLP JSON mapping writes them. */
static void put_u64_str(tr_buf_t *out, uint64_t v)
{
    PUT(out, "\"");
    tr_jsonw_u64(out, v);
    PUT(out, "\"");
}

static void put_i64_str(tr_buf_t *out, int64_t v)
{
    PUT(out, "\"");
    tr_jsonw_i64(out, v);
    PUT(out, "\"");
}

static void put_str(tr_buf_t *out, const tr__span_rec_t *r, tr__str_t s)
{
    tr_jsonw_str(out, r->text + s.off, s.len);
}

static void put_double(tr_buf_t *out, double d)
{
    if (isnan(d)) {
        PUT(out, "\"NaN\"");
    } else if (isinf(d)) {
        if (d > 0)
            PUT(out, "\"Infinity\"");
        else
            PUT(out, "\"-Infinity\"");
    } else {
        tr_buf_printf(out, "%.17g", d);
    }
}

static void put_attrs(tr_buf_t *out, const tr__span_rec_t *r, const tr__rec_attr_t *a, size_t n)
{
    PUT(out, "[");
    for (size_t i = 0; i < n; i++) {
        if (i) PUT(out, ",");
        PUT(out, "{\"key\":");
        put_str(out, r, a[i].key);
        switch (a[i].type) {
        case TR_ATTR_STRING:
            PUT(out, ",\"value\":{\"stringValue\":");
            put_str(out, r, a[i].v.s);
            break;
        case TR_ATTR_INT:
            PUT(out, ",\"value\":{\"intValue\":");
            put_i64_str(out, a[i].v.i);
            break;
        case TR_ATTR_DOUBLE:
            PUT(out, ",\"value\":{\"doubleValue\":");
            put_double(out, a[i].v.d);
            break;
        default:
            if (a[i].v.b)
                PUT(out, ",\"value\":{\"boolValue\":true");
            else
                PUT(out, ",\"value\":{\"boolValue\":false");
            break;
        }
        PUT(out, "}}");
    }
    PUT(out, "]");
}

static void put_events(tr_buf_t *out, const tr__span_rec_t *r)
{
    PUT(out, ",\"events\":[");
    for (size_t i = 0; i < r->nevents; i++) {
        const tr__rec_event_t *e = &r->events[i];
        if (i) PUT(out, ",");
        PUT(out, "{\"timeUnixNano\":");
        put_u64_str(out, e->time_ns);
        PUT(out, ",\"name\":");
        put_str(out, r, e->name);
        PUT(out, ",\"attributes\":");
        put_attrs(out, r, &r->event_attrs[e->first_attr], e->nattrs);
        if (e->dropped_attrs)
            tr_buf_printf(out, ",\"droppedAttributesCount\":%u", e->dropped_attrs);
        PUT(out, "}");
    }
    PUT(out, "]");
    if (r->dropped_events) tr_buf_printf(out, ",\"droppedEventsCount\":%u", r->dropped_events);
}

static void put_span(tr_buf_t *out, const tr__span_rec_t *r)
{
    PUT(out, "{\"traceId\":");
    put_hex(out, r->trace_id, 16);
    PUT(out, ",\"spanId\":");
    put_hex(out, r->span_id, 8);
    if (!tr_trace_id_is_zero(r->parent_span_id, 8)) {
        PUT(out, ",\"parentSpanId\":");
        put_hex(out, r->parent_span_id, 8);
    }
    PUT(out, ",\"name\":");
    put_str(out, r, r->name);
    PUT(out, ",\"kind\":");
    tr_buf_append_u64(out, r->kind);
    PUT(out, ",\"startTimeUnixNano\":");
    put_u64_str(out, r->start_ns);
    PUT(out, ",\"endTimeUnixNano\":");
    put_u64_str(out, r->end_ns);
    PUT(out, ",\"attributes\":");
    put_attrs(out, r, r->attrs, r->nattrs);
    if (r->dropped_attrs) tr_buf_printf(out, ",\"droppedAttributesCount\":%u", r->dropped_attrs);
    if (r->nevents) put_events(out, r);
    PUT(out, ",\"status\":{\"code\":");
    tr_buf_append_u64(out, r->status);
    if (r->status_message.len) {
        PUT(out, ",\"message\":");
        put_str(out, r, r->status_message);
    }
    PUT(out, "}}");
}

static bool same_service(const tr__span_rec_t *a, const tr__span_rec_t *b)
{
    return a->service.len == b->service.len &&
           memcmp(a->text + a->service.off, b->text + b->service.off, a->service.len) == 0;
}

static void put_resource(tr_buf_t *out, const tr__span_rec_t *first, const char *def_service)
{
    PUT(out, "{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{"
             "\"stringValue\":");
    if (first->service.len)
        put_str(out, first, first->service);
    else
        tr_jsonw_str(out, def_service, strlen(def_service));
    PUT(out, "}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"trellis\",\"version\":\"" TR_VERSION
             "\"},\"spans\":[");
}

void tr__otlp_encode(const tr__span_rec_t *const *recs, size_t n, const char *def_service,
                     tr_buf_t *out)
{
    if (def_service == NULL) def_service = "trellis";
    PUT(out, "{\"resourceSpans\":[");
    /* Usually one service per process: group by a scan per distinct service. */
    size_t done = 0, groups = 0;
    for (size_t g = 0; g < n; g++) {
        bool seen = false;
        for (size_t k = 0; k < g && !seen; k++)
            seen = same_service(recs[k], recs[g]);
        if (seen) continue;
        if (groups++) PUT(out, ",");
        put_resource(out, recs[g], def_service);
        size_t in_group = 0;
        for (size_t i = g; i < n; i++) {
            if (i != g && !same_service(recs[i], recs[g])) continue;
            if (in_group++) PUT(out, ",");
            put_span(out, recs[i]);
            done++;
        }
        PUT(out, "]}]}");
        if (done == n) break;
    }
    PUT(out, "]}");
}
