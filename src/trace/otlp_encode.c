/* Span records: copying a span into a fixed-size slot, and writing records as OTLP JSON. */
#include "trace/otlp_encode.h"

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

static const char hexdig[] = "0123456789abcdef";

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 when invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, min = 0x10000;
    else
        return 0;
    if (n < len) return 0;
    unsigned cp = c & (0x7F >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

void tr__json_str(tr_buf_t *out, const char *str, size_t len)
{
    /* Worst case: every byte becomes "\u00XX" (6) or U+FFFD (3). */
    tr_buf_reserve(out, len * 6 + 2);
    char *o = out->data + out->len;
    const unsigned char *s = (const unsigned char *)str;
    *o++ = '"';
    for (size_t i = 0; i < len;) {
        unsigned c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            *o++ = (char)c;
            i++;
        } else if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
            i++;
        } else if (c < 0x20) {
            const char *esc = c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : NULL;
            if (esc) {
                memcpy(o, esc, 2);
                o += 2;
            } else {
                memcpy(o, "\\u00", 4);
                o[4] = hexdig[c >> 4];
                o[5] = hexdig[c & 15];
                o += 6;
            }
            i++;
        } else {
            size_t n = utf8_seq(s + i, len - i);
            if (n == 0) {
                memcpy(o, "\xEF\xBF\xBD", 3);
                o += 3;
                i++;
            } else {
                memcpy(o, s + i, n);
                o += n;
                i += n;
            }
        }
    }
    *o++ = '"';
    out->len = (size_t)(o - out->data);
}

static void put_hex(tr_buf_t *out, const uint8_t *id, size_t n)
{
    tr_buf_reserve(out, 2 * n + 3);
    char *o = out->data + out->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        *o++ = hexdig[id[i] >> 4];
        *o++ = hexdig[id[i] & 15];
    }
    *o++ = '"';
    out->len = (size_t)(o - out->data);
}

/* A 64-bit integer as a quoted decimal string, as the OTLP JSON mapping writes them. */
static void put_int_str(tr_buf_t *out, uint64_t mag, bool neg)
{
    char tmp[24];
    int i = (int)sizeof(tmp);
    tmp[--i] = '"';
    do {
        tmp[--i] = (char)('0' + mag % 10);
        mag /= 10;
    } while (mag);
    if (neg) tmp[--i] = '-';
    tmp[--i] = '"';
    tr_buf_append(out, tmp + i, sizeof(tmp) - (size_t)i);
}

static void put_u64_str(tr_buf_t *out, uint64_t v)
{
    put_int_str(out, v, false);
}

static void put_i64_str(tr_buf_t *out, int64_t v)
{
    put_int_str(out, v < 0 ? 0 - (uint64_t)v : (uint64_t)v, v < 0);
}

static void put_str(tr_buf_t *out, const tr__span_rec_t *r, tr__str_t s)
{
    tr__json_str(out, r->text + s.off, s.len);
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
    tr_buf_printf(out, ",\"kind\":%u,\"startTimeUnixNano\":", r->kind);
    put_u64_str(out, r->start_ns);
    PUT(out, ",\"endTimeUnixNano\":");
    put_u64_str(out, r->end_ns);
    PUT(out, ",\"attributes\":");
    put_attrs(out, r, r->attrs, r->nattrs);
    if (r->dropped_attrs) tr_buf_printf(out, ",\"droppedAttributesCount\":%u", r->dropped_attrs);
    if (r->nevents) put_events(out, r);
    tr_buf_printf(out, ",\"status\":{\"code\":%u", r->status);
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
        tr__json_str(out, def_service, strlen(def_service));
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
