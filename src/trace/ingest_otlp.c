/* OTLP/HTTP JSON: decodes ExportTraceServiceRequest documents into stored spans. */
#include "trace/ingest.h"

#include "core/buf.h"
#include "trellis/error.h"
#include "trellis/trace.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Spans deeper than this in attribute values are cut (arrays in arrays…): bounded work. */
#define MAX_VALUE_DEPTH 8

typedef struct otlp_ctx_s {
    tr_span_batch_t *out;
    uint64_t now_ms;
    const char *service;
    tr_buf_t resource; /* JSON text of the resource's attributes */
    tr_buf_t scope;    /* JSON text of the instrumentation scope */
    tr_buf_t detail;   /* scratch for each span's detail */
} otlp_ctx_t;

static json_t *any_value(json_t *v, int depth);

static json_t *kv_list(json_t *list, int depth)
{
    json_t *obj = json_object();
    size_t i;
    json_t *kv;
    if (!json_is_array(list)) return obj;
    json_array_foreach(list, i, kv)
    {
        const char *key = json_string_value(json_object_get(kv, "key"));
        if (key) json_object_set_new(obj, key, any_value(json_object_get(kv, "value"), depth + 1));
    }
    return obj;
}

/* An OTLP 64-bit integer arrives as a JSON string (the spec) or a number (some encoders). */
static bool int64_value(json_t *v, long long *out)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d < -9.2e18 || d > 9.2e18) return false;
        *out = (long long)d;
        return true;
    }
    const char *s = json_string_value(v);
    if (!s || !*s) return false;
    char *end;
    *out = strtoll(s, &end, 10);
    return *end == '\0';
}

/* AnyValue → the plain JSON value it stands for. */
static json_t *any_value(json_t *v, int depth)
{
    json_t *x;
    long long i;
    if (!json_is_object(v) || depth > MAX_VALUE_DEPTH) return json_null();
    if ((x = json_object_get(v, "stringValue")))
        return json_is_string(x) ? json_copy(x) : json_null();
    if ((x = json_object_get(v, "boolValue"))) return json_boolean(json_is_true(x));
    if ((x = json_object_get(v, "intValue")))
        return int64_value(x, &i) ? json_integer(i) : json_null();
    if ((x = json_object_get(v, "doubleValue")))
        return json_is_number(x) ? json_real(json_number_value(x)) : json_copy(x);
    if ((x = json_object_get(v, "bytesValue")))
        return json_is_string(x) ? json_copy(x) : json_null();
    if ((x = json_object_get(v, "kvlistValue")))
        return kv_list(json_object_get(x, "values"), depth);
    if ((x = json_object_get(v, "arrayValue"))) {
        json_t *arr = json_array(), *e;
        size_t k;
        json_t *vals = json_object_get(x, "values");
        if (json_is_array(vals)) json_array_foreach(vals, k, e)
            {
                json_array_append_new(arr, any_value(e, depth + 1));
            }
        return arr;
    }
    return json_null();
}

static void dump_into(tr_buf_t *b, json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    tr_buf_append_str(b, s ? s : "null");
    free(s);
}

/* A string attribute value, or the first element of a string array (header semconv). */
static const char *attr_string(json_t *attrs, const char *key)
{
    json_t *v = json_object_get(attrs, key);
    if (json_is_array(v)) v = json_array_get(v, 0);
    return json_string_value(v);
}

static uint64_t time_ns(json_t *v)
{
    long long t;
    return int64_value(v, &t) && t > 0 ? (uint64_t)t : 0;
}

static int enum_value(json_t *v, const char *const *names, int n)
{
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        return i >= 0 && i <= 100 ? (int)i : -1;
    }
    const char *s = json_string_value(v);
    for (int i = 0; s && i < n; i++)
        if (!strcmp(s, names[i])) return i;
    return json_is_null(v) || !v ? 0 : -1;
}

static const char *const kind_names[] = {"SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL",
                                         "SPAN_KIND_SERVER",      "SPAN_KIND_CLIENT",
                                         "SPAN_KIND_PRODUCER",    "SPAN_KIND_CONSUMER"};
static const char *const status_names[] = {"STATUS_CODE_UNSET", "STATUS_CODE_OK",
                                           "STATUS_CODE_ERROR"};

static bool decode_id(json_t *v, uint8_t *out, size_t n, bool optional)
{
    const char *s = json_string_value(v);
    if (!s || !*s) {
        memset(out, 0, n);
        return optional && (!v || json_is_null(v) || (s && !*s));
    }
    return tr__hex_decode(s, strlen(s), out, n) && (optional || !tr__id_is_zero(out, n));
}

static json_t *events_of(json_t *events)
{
    json_t *arr = json_array(), *e;
    size_t i;
    json_array_foreach(events, i, e)
    {
        json_t *o = json_object();
        const char *name = json_string_value(json_object_get(e, "name"));
        char t[24];
        snprintf(t, sizeof(t), "%llu",
                 (unsigned long long)time_ns(json_object_get(e, "timeUnixNano")));
        json_object_set_new(o, "name", json_string(name ? name : ""));
        json_object_set_new(o, "timeUnixNano", json_string(t));
        json_object_set_new(o, "attributes", kv_list(json_object_get(e, "attributes"), 0));
        json_array_append_new(arr, o);
    }
    return arr;
}

static void decode_span(otlp_ctx_t *c, json_t *sp, size_t index)
{
    tr_cspan_t f;
    memset(&f, 0, sizeof(f));
    if (!json_is_object(sp)) {
        tr__span_batch_reject(c->out, "span %zu is not an object", index);
        return;
    }
    if (!decode_id(json_object_get(sp, "traceId"), f.trace_id, 16, false)) {
        tr__span_batch_reject(c->out, "span %zu: traceId must be 32 hex digits, not all zero",
                              index);
        return;
    }
    if (!decode_id(json_object_get(sp, "spanId"), f.span_id, 8, false)) {
        tr__span_batch_reject(c->out, "span %zu: spanId must be 16 hex digits, not all zero",
                              index);
        return;
    }
    if (!decode_id(json_object_get(sp, "parentSpanId"), f.parent_id, 8, true)) {
        tr__span_batch_reject(c->out, "span %zu: parentSpanId must be 16 hex digits or empty",
                              index);
        return;
    }
    int kind = enum_value(json_object_get(sp, "kind"), kind_names, 6);
    json_t *status = json_object_get(sp, "status");
    int code = enum_value(json_object_get(status, "code"), status_names, 3);
    if (kind < 0 || kind > 5 || code < 0 || code > 2) {
        tr__span_batch_reject(c->out, "span %zu: kind must be 0-5 and status.code 0-2", index);
        return;
    }
    f.kind = (uint8_t)kind;
    f.status = (uint8_t)code;
    f.error = code == TR_STATUS_ERROR;
    f.start_ns = time_ns(json_object_get(sp, "startTimeUnixNano"));
    f.end_ns = time_ns(json_object_get(sp, "endTimeUnixNano"));
    if (f.end_ns < f.start_ns) f.end_ns = f.start_ns;
    f.recv_ms = c->now_ms;

    json_t *attrs = kv_list(json_object_get(sp, "attributes"), 0);
    const char *corr = attr_string(attrs, "correlation_id");
    if (!corr) corr = attr_string(attrs, "http.request.header.x-correlation-id");
    tr_buf_t *d = &c->detail;
    tr_buf_reset(d);
    tr_buf_append_str(d, "{\"attributes\":");
    dump_into(d, attrs);
    json_t *events = json_object_get(sp, "events");
    if (json_is_array(events) && json_array_size(events)) {
        json_t *ev = events_of(events);
        tr_buf_append_str(d, ",\"events\":");
        dump_into(d, ev);
        json_decref(ev);
    }
    tr_buf_append_str(d, ",\"resource\":");
    tr_buf_append(d, c->resource.data, c->resource.len);
    tr_buf_append_str(d, ",\"scope\":");
    tr_buf_append(d, c->scope.data, c->scope.len);
    tr_buf_append_str(d, "}");
    const char *name = json_string_value(json_object_get(sp, "name"));
    tr__span_batch_add(c->out, tr__cspan_new(&f, c->service, name, corr,
                                             json_string_value(json_object_get(status, "message")),
                                             tr_buf_cstr(d)));
    json_decref(attrs);
}

static void set_scope(otlp_ctx_t *c, json_t *scope)
{
    json_t *o = json_object();
    const char *name = json_string_value(json_object_get(scope, "name"));
    const char *version = json_string_value(json_object_get(scope, "version"));
    if (name) json_object_set_new(o, "name", json_string(name));
    if (version) json_object_set_new(o, "version", json_string(version));
    json_t *attrs = json_object_get(scope, "attributes");
    if (json_is_array(attrs) && json_array_size(attrs))
        json_object_set_new(o, "attributes", kv_list(attrs, 0));
    tr_buf_reset(&c->scope);
    dump_into(&c->scope, o);
    json_decref(o);
}

static int decode_resource_spans(otlp_ctx_t *c, json_t *rs, size_t *index, char *err, size_t errlen)
{
    if (!json_is_object(rs)) {
        snprintf(err, errlen, "resourceSpans[] entries must be objects");
        return TR_EPARSE;
    }
    json_t *rattrs = kv_list(json_object_get(json_object_get(rs, "resource"), "attributes"), 0);
    const char *svc = json_string_value(json_object_get(rattrs, "service.name"));
    tr_buf_t service = TR_BUF_INIT;
    tr_buf_append_str(&service, svc && *svc ? svc : "unknown_service");
    c->service = tr_buf_cstr(&service);
    tr_buf_reset(&c->resource);
    dump_into(&c->resource, rattrs);
    json_decref(rattrs);
    json_t *scopes = json_object_get(rs, "scopeSpans");
    if (!scopes) scopes = json_object_get(rs, "instrumentationLibrarySpans"); /* before 1.0 */
    size_t i;
    json_t *ss;
    int rc = 0;
    if (scopes && !json_is_array(scopes)) {
        snprintf(err, errlen, "resourceSpans[].scopeSpans must be an array");
        rc = TR_EPARSE;
    } else
        json_array_foreach(scopes, i, ss)
        {
            json_t *scope = json_object_get(ss, "scope");
            set_scope(c, scope ? scope : json_object_get(ss, "instrumentationLibrary"));
            json_t *spans = json_object_get(ss, "spans");
            size_t k;
            json_t *sp;
            if (spans && !json_is_array(spans)) {
                snprintf(err, errlen, "scopeSpans[].spans must be an array");
                rc = TR_EPARSE;
                break;
            }
            json_array_foreach(spans, k, sp) decode_span(c, sp, (*index)++);
        }
    tr_buf_free(&service);
    return rc;
}

int tr_ingest_otlp(const char *body, size_t len, uint64_t now_ms, tr_span_batch_t *out, char *err,
                   size_t errlen)
{
    json_error_t jerr;
    json_t *doc = json_loadb(body, len, 0, &jerr);
    if (!doc) {
        snprintf(err, errlen, "the body is not JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                 jerr.column);
        return TR_EPARSE;
    }
    json_t *rss = json_object_get(doc, "resourceSpans");
    if (!json_is_object(doc) || (rss && !json_is_array(rss))) {
        snprintf(err, errlen,
                 "expected an OTLP ExportTraceServiceRequest: {\"resourceSpans\": [...]}");
        json_decref(doc);
        return TR_EPARSE;
    }
    otlp_ctx_t c = {.out = out, .now_ms = now_ms};
    size_t i, index = 0;
    json_t *rs;
    int rc = 0;
    json_array_foreach(rss, i, rs)
    {
        rc = decode_resource_spans(&c, rs, &index, err, errlen);
        if (rc) break;
    }
    tr_buf_free(&c.resource);
    tr_buf_free(&c.scope);
    tr_buf_free(&c.detail);
    json_decref(doc);
    if (rc) tr__span_batch_free(out);
    return rc;
}
