/* OTLP/HTTP JSON: decodes ExportTraceServiceRequest documents into stored spans. */
#include "trace/ingest.h"

#include "core/buf.h"
#include "core/json_arena.h"
#include "core/jsonw.h"
#include "core/map.h"
#include "trellis/error.h"
#include "trellis/trace.h"

#include <jansson.h>
#include <stddef.h>
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

static void put_any(tr_buf_t *b, json_t *v, int depth);

/* Lists up to this long are checked for repeated keys pairwise; longer ones with a map. */
#define SMALL_LIST 16

/* The keyed entries of a short KeyValue list, looked up once. */
typedef struct kv_items_s {
    size_t n;
    const char *key[SMALL_LIST];
    json_t *kv[SMALL_LIST];
} kv_items_t;

static const char *kv_key(json_t *kv)
{
    return json_string_value(json_object_get(kv, "key"));
}

/* Fills `it` from a list of at most SMALL_LIST entries; false for a longer list. */
static bool kv_collect(json_t *list, kv_items_t *it)
{
    size_t i;
    json_t *kv;
    it->n = 0;
    if (json_array_size(list) > SMALL_LIST) return false;
    json_array_foreach(list, i, kv)
    {
        const char *key = kv_key(kv);
        if (!key) continue;
        it->key[it->n] = key;
        it->kv[it->n++] = kv;
    }
    return true;
}

static void put_member(tr_buf_t *b, bool *first, const char *key, json_t *kv, int depth)
{
    if (!*first) TR_JSONW_LIT(b, ",");
    *first = false;
    tr_jsonw_cstr(b, key);
    TR_JSONW_LIT(b, ":");
    put_any(b, json_object_get(kv, "value"), depth + 1);
}

/* The entry whose value a repeated key ends with (the last), where the key first appears. */
static void put_small_list(tr_buf_t *b, const kv_items_t *it, int depth)
{
    bool first = true;
    for (size_t i = 0; i < it->n; i++) {
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = !strcmp(it->key[j], it->key[i]);
        if (seen) continue;
        json_t *last = it->kv[i];
        for (size_t j = i + 1; j < it->n; j++)
            if (!strcmp(it->key[j], it->key[i])) last = it->kv[j];
        put_member(b, &first, it->key[i], last, depth);
    }
}

static void put_large_list(tr_buf_t *b, json_t *list, int depth)
{
    static char written;
    tr_map_t last = TR_MAP_INIT;
    size_t i;
    json_t *kv;
    json_array_foreach(list, i, kv)
    {
        const char *key = kv_key(kv);
        if (key) tr_map_put(&last, key, kv);
    }
    bool first = true;
    json_array_foreach(list, i, kv)
    {
        const char *key = kv_key(kv);
        json_t *use = key ? tr_map_get(&last, key) : NULL;
        if (!use || use == (json_t *)&written) continue;
        put_member(b, &first, key, use, depth);
        tr_map_put(&last, key, &written);
    }
    tr_map_free(&last);
}

/*
 * A KeyValue list as a JSON object, written straight from the parsed request. A repeated
 * key keeps its first position and its last value, as an object built key by key would.
 * `it` is the list's kv_collect result, or NULL to collect here.
 */
static void put_kv_list(tr_buf_t *b, json_t *list, const kv_items_t *it, int depth)
{
    kv_items_t local;
    TR_JSONW_LIT(b, "{");
    if (!it && kv_collect(list, &local)) it = &local;
    if (it)
        put_small_list(b, it, depth);
    else
        put_large_list(b, list, depth);
    TR_JSONW_LIT(b, "}");
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
    /* Up to 18 plain digits cannot overflow: the common case (nanosecond times) skips strtoll. */
    long long n = 0;
    size_t i = 0;
    while (i < 18 && s[i] >= '0' && s[i] <= '9')
        n = n * 10 + (s[i++] - '0');
    if (s[i] == '\0') {
        *out = n;
        return true;
    }
    char *end;
    *out = strtoll(s, &end, 10);
    return *end == '\0';
}

static void dump_into(tr_buf_t *b, json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    tr_buf_append_str(b, s ? s : "null");
    free(s);
}

/* AnyValue's members, in the order of precedence when a value has more than one. */
typedef enum { V_STRING, V_BOOL, V_INT, V_DOUBLE, V_BYTES, V_KVLIST, V_ARRAY, V_NONE } vkind_t;

static const char *const vkind_names[] = {"stringValue", "boolValue",   "intValue",  "doubleValue",
                                          "bytesValue",  "kvlistValue", "arrayValue"};

/* Which member an AnyValue stands for (one pass over its members, not a lookup per kind). */
static vkind_t any_kind(json_t *v, json_t **x)
{
    vkind_t best = V_NONE;
    const char *key;
    json_t *m;
    *x = NULL;
    json_object_foreach(v, key, m)
    {
        for (int k = 0; k < (int)best; k++)
            if (!strcmp(key, vkind_names[k])) {
                best = (vkind_t)k;
                *x = m;
                break;
            }
    }
    return best;
}

static void put_string(tr_buf_t *b, json_t *x)
{
    if (json_is_string(x))
        tr_jsonw_str(b, json_string_value(x), json_string_length(x));
    else
        TR_JSONW_LIT(b, "null");
}

static void put_array(tr_buf_t *b, json_t *vals, int depth)
{
    size_t k;
    json_t *e;
    TR_JSONW_LIT(b, "[");
    if (json_is_array(vals)) json_array_foreach(vals, k, e)
        {
            if (k) TR_JSONW_LIT(b, ",");
            put_any(b, e, depth + 1);
        }
    TR_JSONW_LIT(b, "]");
}

static void put_number(tr_buf_t *b, vkind_t kind, json_t *x)
{
    long long i;
    if (kind == V_INT && int64_value(x, &i))
        tr_jsonw_i64(b, i);
    else if (kind == V_INT)
        TR_JSONW_LIT(b, "null");
    else if (json_is_number(x))
        tr_jsonw_double(b, json_number_value(x));
    else
        dump_into(b, x);
}

/* AnyValue → the plain JSON value it stands for. */
static void put_any(tr_buf_t *b, json_t *v, int depth)
{
    json_t *x;
    vkind_t kind = json_is_object(v) && depth <= MAX_VALUE_DEPTH ? any_kind(v, &x) : V_NONE;
    switch (kind) {
    case V_STRING:
    case V_BYTES:
        put_string(b, x);
        break;
    case V_BOOL:
        if (json_is_true(x))
            TR_JSONW_LIT(b, "true");
        else
            TR_JSONW_LIT(b, "false");
        break;
    case V_INT:
    case V_DOUBLE:
        put_number(b, kind, x);
        break;
    case V_KVLIST:
        put_kv_list(b, json_object_get(x, "values"), NULL, depth);
        break;
    case V_ARRAY:
        put_array(b, json_object_get(x, "values"), depth);
        break;
    default:
        TR_JSONW_LIT(b, "null");
    }
}

/* The value a KeyValue list ends up with for `key` (its last entry), or NULL. */
static json_t *kv_get(json_t *list, const kv_items_t *it, const char *key)
{
    json_t *found = NULL;
    if (it) {
        for (size_t i = 0; i < it->n; i++)
            if (!strcmp(it->key[i], key)) found = it->kv[i];
    } else {
        size_t i;
        json_t *kv;
        json_array_foreach(list, i, kv)
        {
            const char *k = kv_key(kv);
            if (k && !strcmp(k, key)) found = kv;
        }
    }
    return json_object_get(found, "value");
}

/* The text of a string AnyValue (stringValue or bytesValue), or NULL. */
static const char *any_string(json_t *v)
{
    json_t *x;
    vkind_t kind = json_is_object(v) ? any_kind(v, &x) : V_NONE;
    return kind == V_STRING || kind == V_BYTES ? json_string_value(x) : NULL;
}

/* A string attribute value, or the first element of a string array (header semconv). */
static const char *attr_string(json_t *list, const kv_items_t *it, const char *key)
{
    json_t *x, *v = kv_get(list, it, key);
    vkind_t kind = json_is_object(v) ? any_kind(v, &x) : V_NONE;
    if (kind == V_ARRAY) return any_string(json_array_get(json_object_get(x, "values"), 0));
    return kind == V_STRING || kind == V_BYTES ? json_string_value(x) : NULL;
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

static void put_events(tr_buf_t *b, json_t *events)
{
    json_t *e;
    size_t i;
    TR_JSONW_LIT(b, "[");
    json_array_foreach(events, i, e)
    {
        if (i) TR_JSONW_LIT(b, ",");
        TR_JSONW_LIT(b, "{\"name\":");
        tr_jsonw_cstr(b, json_string_value(json_object_get(e, "name")));
        TR_JSONW_LIT(b, ",\"timeUnixNano\":\"");
        tr_jsonw_u64(b, time_ns(json_object_get(e, "timeUnixNano")));
        TR_JSONW_LIT(b, "\",\"attributes\":");
        put_kv_list(b, json_object_get(e, "attributes"), NULL, 0);
        TR_JSONW_LIT(b, "}");
    }
    TR_JSONW_LIT(b, "]");
}

/* The members of a Span that the decoder reads (NULL when absent). */
typedef struct span_members_s {
    json_t *trace_id, *span_id, *parent_id, *name, *kind, *start, *end, *attrs, *events, *status;
} span_members_t;

static json_t **span_member(span_members_t *m, const char *key)
{
    static const struct {
        const char *key;
        size_t offset;
    } known[] = {
        {"traceId", offsetof(span_members_t, trace_id)},
        {"spanId", offsetof(span_members_t, span_id)},
        {"parentSpanId", offsetof(span_members_t, parent_id)},
        {"name", offsetof(span_members_t, name)},
        {"kind", offsetof(span_members_t, kind)},
        {"startTimeUnixNano", offsetof(span_members_t, start)},
        {"endTimeUnixNano", offsetof(span_members_t, end)},
        {"attributes", offsetof(span_members_t, attrs)},
        {"events", offsetof(span_members_t, events)},
        {"status", offsetof(span_members_t, status)},
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (key[0] == known[i].key[0] && !strcmp(key, known[i].key))
            return (json_t **)((char *)m + known[i].offset);
    return NULL;
}

/* One pass over the span's members instead of a hashed lookup for each one read. */
static void span_members(json_t *sp, span_members_t *m)
{
    const char *key;
    json_t *v, **slot;
    memset(m, 0, sizeof(*m));
    json_object_foreach(sp, key, v)
    {
        if ((slot = span_member(m, key))) *slot = v;
    }
}

static void decode_span(otlp_ctx_t *c, json_t *sp, size_t index)
{
    tr_cspan_t f;
    span_members_t m;
    memset(&f, 0, sizeof(f));
    if (!json_is_object(sp)) {
        tr__span_batch_reject(c->out, "span %zu is not an object", index);
        return;
    }
    span_members(sp, &m);
    if (!decode_id(m.trace_id, f.trace_id, 16, false)) {
        tr__span_batch_reject(c->out, "span %zu: traceId must be 32 hex digits, not all zero",
                              index);
        return;
    }
    if (!decode_id(m.span_id, f.span_id, 8, false)) {
        tr__span_batch_reject(c->out, "span %zu: spanId must be 16 hex digits, not all zero",
                              index);
        return;
    }
    if (!decode_id(m.parent_id, f.parent_id, 8, true)) {
        tr__span_batch_reject(c->out, "span %zu: parentSpanId must be 16 hex digits or empty",
                              index);
        return;
    }
    int kind = enum_value(m.kind, kind_names, 6);
    json_t *status = m.status;
    int code = enum_value(json_object_get(status, "code"), status_names, 3);
    if (kind < 0 || kind > 5 || code < 0 || code > 2) {
        tr__span_batch_reject(c->out, "span %zu: kind must be 0-5 and status.code 0-2", index);
        return;
    }
    f.kind = (uint8_t)kind;
    f.status = (uint8_t)code;
    f.error = code == TR_STATUS_ERROR;
    f.start_ns = time_ns(m.start);
    f.end_ns = time_ns(m.end);
    if (f.end_ns < f.start_ns) f.end_ns = f.start_ns;
    f.recv_ms = c->now_ms;

    json_t *attrs = m.attrs;
    kv_items_t items, *it = kv_collect(attrs, &items) ? &items : NULL;
    const char *corr = attr_string(attrs, it, "correlation_id");
    if (!corr) corr = attr_string(attrs, it, "http.request.header.x-correlation-id");
    tr_buf_t *d = &c->detail;
    tr_buf_reset(d);
    TR_JSONW_LIT(d, "{\"attributes\":");
    put_kv_list(d, attrs, it, 0);
    json_t *events = m.events;
    if (json_is_array(events) && json_array_size(events)) {
        TR_JSONW_LIT(d, ",\"events\":");
        put_events(d, events);
    }
    TR_JSONW_LIT(d, ",\"resource\":");
    tr_buf_append(d, c->resource.data, c->resource.len);
    TR_JSONW_LIT(d, ",\"scope\":");
    tr_buf_append(d, c->scope.data, c->scope.len);
    TR_JSONW_LIT(d, "}");
    const char *name = json_string_value(m.name);
    tr__span_batch_add(c->out, tr__cspan_new(&f, c->service, name, corr,
                                             json_string_value(json_object_get(status, "message")),
                                             tr_buf_cstr(d)));
}

static void set_scope(otlp_ctx_t *c, json_t *scope)
{
    tr_buf_t *b = &c->scope;
    const char *name = json_string_value(json_object_get(scope, "name"));
    const char *version = json_string_value(json_object_get(scope, "version"));
    const char *sep = "";
    tr_buf_reset(b);
    TR_JSONW_LIT(b, "{");
    if (name) {
        TR_JSONW_LIT(b, "\"name\":");
        tr_jsonw_cstr(b, name);
        sep = ",";
    }
    if (version) {
        tr_buf_append_str(b, sep);
        TR_JSONW_LIT(b, "\"version\":");
        tr_jsonw_cstr(b, version);
        sep = ",";
    }
    json_t *attrs = json_object_get(scope, "attributes");
    if (json_is_array(attrs) && json_array_size(attrs)) {
        tr_buf_append_str(b, sep);
        TR_JSONW_LIT(b, "\"attributes\":");
        put_kv_list(b, attrs, NULL, 0);
    }
    TR_JSONW_LIT(b, "}");
}

static int decode_resource_spans(otlp_ctx_t *c, json_t *rs, size_t *index, char *err, size_t errlen)
{
    if (!json_is_object(rs)) {
        snprintf(err, errlen, "resourceSpans[] entries must be objects");
        return TR_EPARSE;
    }
    json_t *rattrs = json_object_get(json_object_get(rs, "resource"), "attributes");
    const char *svc = any_string(kv_get(rattrs, NULL, "service.name"));
    tr_buf_t service = TR_BUF_INIT;
    tr_buf_append_str(&service, svc && *svc ? svc : "unknown_service");
    c->service = tr_buf_cstr(&service);
    tr_buf_reset(&c->resource);
    put_kv_list(&c->resource, rattrs, NULL, 0);
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
    /* The tree lives in this thread's JSON arena: each reset below takes it back whole. */
    json_t *doc = tr_json_arena_loadb(body, len, &jerr);
    if (!doc) {
        tr_json_arena_reset();
        snprintf(err, errlen, "the body is not JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                 jerr.column);
        return TR_EPARSE;
    }
    json_t *rss = json_object_get(doc, "resourceSpans");
    if (!json_is_object(doc) || (rss && !json_is_array(rss))) {
        snprintf(err, errlen,
                 "expected an OTLP ExportTraceServiceRequest: {\"resourceSpans\": [...]}");
        tr_json_arena_reset();
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
    tr_json_arena_reset();
    if (rc) tr__span_batch_free(out);
    return rc;
}
