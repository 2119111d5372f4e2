/*
 * OTLP/HTTP JSON: decodes ExportTraceServiceRequest documents into stored spans.
 *
 * The body is parsed with cJSON, whose tree costs a quarter of jansson's to build: on the
 * collector's ingest path the parse was half of all the CPU. cJSON keeps numbers as doubles,
 * though, and OTLP's 64-bit fields (times in ns, intValue) are exact only below 2^53 that
 * way. Such fields normally arrive as strings (the proto3 JSON mapping); when one arrives as
 * a larger number the decode is redone from jansson's exact parse, with its integers from
 * 2^53 up turned into decimal strings (exact_tree below), so both paths share one decoder.
 */
#include "trace/ingest.h"

#include "core/buf.h"
#include "core/json_arena.h"
#include "core/jsonw.h"
#include "core/map.h"
#include "trellis/error.h"
#include "trellis/trace.h"

#include <cjson/cJSON.h>
#include <jansson.h>
#include <math.h>
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
    bool inexact;      /* a 64-bit field was a number too large for a double to hold exactly */
} otlp_ctx_t;

static void put_any(otlp_ctx_t *c, tr_buf_t *b, const cJSON *v, int depth);

/* The member `key` of an object (the last one when repeated, as jansson would), or NULL. */
static cJSON *get(const cJSON *o, const char *key)
{
    cJSON *m, *found = NULL;
    if (!cJSON_IsObject(o)) return NULL;
    cJSON_ArrayForEach(m, o)
    {
        if (m->string && !strcmp(m->string, key)) found = m;
    }
    return found;
}

static const char *str(const cJSON *v)
{
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* cJSON_ArrayForEach over an array, or over nothing when v is anything else. */
#define EACH(e, v) for (e = cJSON_IsArray(v) ? (v)->child : NULL; e; e = e->next)

/* Lists up to this long are checked for repeated keys pairwise; longer ones with a map. */
#define SMALL_LIST 16

/* The keyed entries of a short KeyValue list, looked up once. */
typedef struct kv_items_s {
    size_t n;
    const char *key[SMALL_LIST];
    const cJSON *kv[SMALL_LIST];
} kv_items_t;

static const char *kv_key(const cJSON *kv)
{
    return str(get(kv, "key"));
}

/* Fills `it` from a list of at most SMALL_LIST entries; false for a longer list. */
static bool kv_collect(const cJSON *list, kv_items_t *it)
{
    const cJSON *kv;
    size_t n = 0;
    it->n = 0;
    EACH(kv, list)
    {
        if (++n > SMALL_LIST) return false;
        const char *key = kv_key(kv);
        if (!key) continue;
        it->key[it->n] = key;
        it->kv[it->n++] = kv;
    }
    return true;
}

static void put_member(otlp_ctx_t *c, tr_buf_t *b, bool *first, const char *key, const cJSON *kv,
                       int depth)
{
    if (!*first) TR_JSONW_LIT(b, ",");
    *first = false;
    tr_jsonw_cstr(b, key);
    TR_JSONW_LIT(b, ":");
    put_any(c, b, get(kv, "value"), depth + 1);
}

/* The entry whose value a repeated key ends with (the last), where the key first appears. */
static void put_small_list(otlp_ctx_t *c, tr_buf_t *b, const kv_items_t *it, int depth)
{
    bool first = true;
    for (size_t i = 0; i < it->n; i++) {
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = !strcmp(it->key[j], it->key[i]);
        if (seen) continue;
        const cJSON *last = it->kv[i];
        for (size_t j = i + 1; j < it->n; j++)
            if (!strcmp(it->key[j], it->key[i])) last = it->kv[j];
        put_member(c, b, &first, it->key[i], last, depth);
    }
}

static void put_large_list(otlp_ctx_t *c, tr_buf_t *b, const cJSON *list, int depth)
{
    static char written;
    tr_map_t last = TR_MAP_INIT;
    const cJSON *kv;
    EACH(kv, list)
    {
        const char *key = kv_key(kv);
        if (key) tr_map_put(&last, key, (void *)kv);
    }
    bool first = true;
    EACH(kv, list)
    {
        const char *key = kv_key(kv);
        const cJSON *use = key ? tr_map_get(&last, key) : NULL;
        if (!use || use == (const cJSON *)&written) continue;
        put_member(c, b, &first, key, use, depth);
        tr_map_put(&last, key, &written);
    }
    tr_map_free(&last);
}

/*
 * A KeyValue list as a JSON object, written straight from the parsed request. A repeated
 * key keeps its first position and its last value, as an object built key by key would.
 * `it` is the list's kv_collect result, or NULL to collect here.
 */
static void put_kv_list(otlp_ctx_t *c, tr_buf_t *b, const cJSON *list, const kv_items_t *it,
                        int depth)
{
    kv_items_t local;
    TR_JSONW_LIT(b, "{");
    if (!it && kv_collect(list, &local)) it = &local;
    if (it)
        put_small_list(c, b, it, depth);
    else
        put_large_list(c, b, list, depth);
    TR_JSONW_LIT(b, "}");
}

/* Doubles hold every integer up to this exactly. */
#define EXACT_LIMIT 9007199254740992.0 /* 2^53 */

/*
 * An OTLP 64-bit integer arrives as a JSON string (the spec) or a number (some encoders).
 * A number from 2^53 up marks the decode inexact: it is redone from an exact parse.
 */
static bool int64_value(otlp_ctx_t *c, const cJSON *v, long long *out)
{
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (fabs(d) >= EXACT_LIMIT) c->inexact = true;
        if (!(d >= -9.2e18 && d <= 9.2e18)) return false;
        *out = (long long)d;
        return true;
    }
    const char *s = str(v);
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

static void dump_into(tr_buf_t *b, const cJSON *v)
{
    char *s = cJSON_PrintUnformatted(v);
    tr_buf_append_str(b, s ? s : "null");
    cJSON_free(s);
}

/* AnyValue's members, in the order of precedence when a value has more than one. */
typedef enum { V_STRING, V_BOOL, V_INT, V_DOUBLE, V_BYTES, V_KVLIST, V_ARRAY, V_NONE } vkind_t;

static const char *const vkind_names[] = {"stringValue", "boolValue",   "intValue",  "doubleValue",
                                          "bytesValue",  "kvlistValue", "arrayValue"};

/* Which member an AnyValue stands for (one pass over its members, not a lookup per kind). */
static vkind_t any_kind(const cJSON *v, const cJSON **x)
{
    vkind_t best = V_NONE;
    const cJSON *m;
    *x = NULL;
    if (!cJSON_IsObject(v)) return V_NONE;
    cJSON_ArrayForEach(m, v)
    {
        for (int k = 0; k < (int)best && m->string; k++)
            if (!strcmp(m->string, vkind_names[k])) {
                best = (vkind_t)k;
                *x = m;
                break;
            }
    }
    return best;
}

static void put_string(tr_buf_t *b, const cJSON *x)
{
    if (cJSON_IsString(x))
        tr_jsonw_cstr(b, x->valuestring);
    else
        TR_JSONW_LIT(b, "null");
}

static void put_array(otlp_ctx_t *c, tr_buf_t *b, const cJSON *vals, int depth)
{
    const cJSON *e;
    TR_JSONW_LIT(b, "[");
    EACH(e, vals)
    {
        if (e != vals->child) TR_JSONW_LIT(b, ",");
        put_any(c, b, e, depth + 1);
    }
    TR_JSONW_LIT(b, "]");
}

static void put_number(otlp_ctx_t *c, tr_buf_t *b, vkind_t kind, const cJSON *x)
{
    long long i;
    if (kind == V_INT && int64_value(c, x, &i))
        tr_jsonw_i64(b, i);
    else if (kind == V_INT)
        TR_JSONW_LIT(b, "null");
    else if (cJSON_IsNumber(x))
        tr_jsonw_double(b, x->valuedouble);
    else
        dump_into(b, x);
}

/* AnyValue → the plain JSON value it stands for. */
static void put_any(otlp_ctx_t *c, tr_buf_t *b, const cJSON *v, int depth)
{
    const cJSON *x;
    vkind_t kind = depth <= MAX_VALUE_DEPTH ? any_kind(v, &x) : V_NONE;
    switch (kind) {
    case V_STRING:
    case V_BYTES:
        put_string(b, x);
        break;
    case V_BOOL:
        if (cJSON_IsTrue(x))
            TR_JSONW_LIT(b, "true");
        else
            TR_JSONW_LIT(b, "false");
        break;
    case V_INT:
    case V_DOUBLE:
        put_number(c, b, kind, x);
        break;
    case V_KVLIST:
        put_kv_list(c, b, get(x, "values"), NULL, depth);
        break;
    case V_ARRAY:
        put_array(c, b, get(x, "values"), depth);
        break;
    default:
        TR_JSONW_LIT(b, "null");
    }
}

/* The value a KeyValue list ends up with for `key` (its last entry), or NULL. */
static const cJSON *kv_get(const cJSON *list, const kv_items_t *it, const char *key)
{
    const cJSON *found = NULL;
    if (it) {
        for (size_t i = 0; i < it->n; i++)
            if (!strcmp(it->key[i], key)) found = it->kv[i];
    } else {
        const cJSON *kv;
        EACH(kv, list)
        {
            const char *k = kv_key(kv);
            if (k && !strcmp(k, key)) found = kv;
        }
    }
    return get(found, "value");
}

/* The text of a string AnyValue (stringValue or bytesValue), or NULL. */
static const char *any_string(const cJSON *v)
{
    const cJSON *x;
    vkind_t kind = any_kind(v, &x);
    return kind == V_STRING || kind == V_BYTES ? str(x) : NULL;
}

/* A string attribute value, or the first element of a string array (header semconv). */
static const char *attr_string(const cJSON *list, const kv_items_t *it, const char *key)
{
    const cJSON *x, *v = kv_get(list, it, key);
    vkind_t kind = any_kind(v, &x);
    if (kind == V_ARRAY) {
        const cJSON *vals = get(x, "values");
        return any_string(cJSON_IsArray(vals) ? vals->child : NULL);
    }
    return kind == V_STRING || kind == V_BYTES ? str(x) : NULL;
}

static uint64_t time_ns(otlp_ctx_t *c, const cJSON *v)
{
    long long t;
    return int64_value(c, v, &t) && t > 0 ? (uint64_t)t : 0;
}

static int enum_value(const cJSON *v, const char *const *names, int n)
{
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        return d >= 0 && d <= 100 && d == (int)d ? (int)d : -1;
    }
    const char *s = str(v);
    for (int i = 0; s && i < n; i++)
        if (!strcmp(s, names[i])) return i;
    return cJSON_IsNull(v) || !v ? 0 : -1;
}

static const char *const kind_names[] = {"SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL",
                                         "SPAN_KIND_SERVER",      "SPAN_KIND_CLIENT",
                                         "SPAN_KIND_PRODUCER",    "SPAN_KIND_CONSUMER"};
static const char *const status_names[] = {"STATUS_CODE_UNSET", "STATUS_CODE_OK",
                                           "STATUS_CODE_ERROR"};

static bool decode_id(const cJSON *v, uint8_t *out, size_t n, bool optional)
{
    const char *s = str(v);
    if (!s || !*s) {
        memset(out, 0, n);
        return optional && (!v || cJSON_IsNull(v) || (s && !*s));
    }
    return tr__hex_decode(s, strlen(s), out, n) && (optional || !tr__id_is_zero(out, n));
}

static void put_events(otlp_ctx_t *c, tr_buf_t *b, const cJSON *events)
{
    const cJSON *e;
    TR_JSONW_LIT(b, "[");
    EACH(e, events)
    {
        if (e != events->child) TR_JSONW_LIT(b, ",");
        TR_JSONW_LIT(b, "{\"name\":");
        tr_jsonw_cstr(b, str(get(e, "name")));
        TR_JSONW_LIT(b, ",\"timeUnixNano\":\"");
        tr_jsonw_u64(b, time_ns(c, get(e, "timeUnixNano")));
        TR_JSONW_LIT(b, "\",\"attributes\":");
        put_kv_list(c, b, get(e, "attributes"), NULL, 0);
        TR_JSONW_LIT(b, "}");
    }
    TR_JSONW_LIT(b, "]");
}

/* The members of a Span that the decoder reads (NULL when absent). */
typedef struct span_members_s {
    const cJSON *trace_id, *span_id, *parent_id, *name, *kind, *start, *end, *attrs, *events,
        *status;
} span_members_t;

static const cJSON **span_member(span_members_t *m, const char *key)
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
            return (const cJSON **)((char *)m + known[i].offset);
    return NULL;
}

/* One pass over the span's members instead of a hashed lookup for each one read. */
static void span_members(const cJSON *sp, span_members_t *m)
{
    const cJSON *v, **slot;
    memset(m, 0, sizeof(*m));
    cJSON_ArrayForEach(v, sp)
    {
        if (v->string && (slot = span_member(m, v->string))) *slot = v;
    }
}

static void decode_span(otlp_ctx_t *c, const cJSON *sp, size_t index)
{
    tr_cspan_t f;
    span_members_t m;
    memset(&f, 0, sizeof(f));
    if (!cJSON_IsObject(sp)) {
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
    const cJSON *status = m.status;
    int code = enum_value(get(status, "code"), status_names, 3);
    if (kind < 0 || kind > 5 || code < 0 || code > 2) {
        tr__span_batch_reject(c->out, "span %zu: kind must be 0-5 and status.code 0-2", index);
        return;
    }
    f.kind = (uint8_t)kind;
    f.status = (uint8_t)code;
    f.error = code == TR_STATUS_ERROR;
    f.start_ns = time_ns(c, m.start);
    f.end_ns = time_ns(c, m.end);
    if (f.end_ns < f.start_ns) f.end_ns = f.start_ns;
    f.recv_ms = c->now_ms;

    const cJSON *attrs = m.attrs;
    kv_items_t items, *it = kv_collect(attrs, &items) ? &items : NULL;
    const char *corr = attr_string(attrs, it, "correlation_id");
    if (!corr) corr = attr_string(attrs, it, "http.request.header.x-correlation-id");
    tr_buf_t *d = &c->detail;
    tr_buf_reset(d);
    TR_JSONW_LIT(d, "{\"attributes\":");
    put_kv_list(c, d, attrs, it, 0);
    const cJSON *events = m.events;
    if (cJSON_IsArray(events) && events->child) {
        TR_JSONW_LIT(d, ",\"events\":");
        put_events(c, d, events);
    }
    TR_JSONW_LIT(d, ",\"resource\":");
    tr_buf_append(d, c->resource.data, c->resource.len);
    TR_JSONW_LIT(d, ",\"scope\":");
    tr_buf_append(d, c->scope.data, c->scope.len);
    TR_JSONW_LIT(d, "}");
    tr__span_batch_add(c->out, tr__cspan_new(&f, c->service, str(m.name), corr,
                                             str(get(status, "message")), tr_buf_cstr(d)));
}

static void set_scope(otlp_ctx_t *c, const cJSON *scope)
{
    tr_buf_t *b = &c->scope;
    const char *name = str(get(scope, "name"));
    const char *version = str(get(scope, "version"));
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
    const cJSON *attrs = get(scope, "attributes");
    if (cJSON_IsArray(attrs) && attrs->child) {
        tr_buf_append_str(b, sep);
        TR_JSONW_LIT(b, "\"attributes\":");
        put_kv_list(c, b, attrs, NULL, 0);
    }
    TR_JSONW_LIT(b, "}");
}

static int decode_resource_spans(otlp_ctx_t *c, const cJSON *rs, size_t *index, char *err,
                                 size_t errlen)
{
    if (!cJSON_IsObject(rs)) {
        snprintf(err, errlen, "resourceSpans[] entries must be objects");
        return TR_EPARSE;
    }
    const cJSON *rattrs = get(get(rs, "resource"), "attributes");
    const char *svc = any_string(kv_get(rattrs, NULL, "service.name"));
    tr_buf_t service = TR_BUF_INIT;
    tr_buf_append_str(&service, svc && *svc ? svc : "unknown_service");
    c->service = tr_buf_cstr(&service);
    tr_buf_reset(&c->resource);
    put_kv_list(c, &c->resource, rattrs, NULL, 0);
    const cJSON *scopes = get(rs, "scopeSpans");
    if (!scopes) scopes = get(rs, "instrumentationLibrarySpans"); /* before 1.0 */
    const cJSON *ss;
    int rc = 0;
    if (scopes && !cJSON_IsArray(scopes)) {
        snprintf(err, errlen, "resourceSpans[].scopeSpans must be an array");
        rc = TR_EPARSE;
    } else
        EACH(ss, scopes)
        {
            const cJSON *scope = get(ss, "scope");
            set_scope(c, scope ? scope : get(ss, "instrumentationLibrary"));
            const cJSON *spans = get(ss, "spans"), *sp;
            if (spans && !cJSON_IsArray(spans)) {
                snprintf(err, errlen, "scopeSpans[].spans must be an array");
                rc = TR_EPARSE;
                break;
            }
            EACH(sp, spans) decode_span(c, sp, (*index)++);
        }
    tr_buf_free(&service);
    return rc;
}

static int decode_doc(const cJSON *doc, uint64_t now_ms, tr_span_batch_t *out, bool *inexact,
                      char *err, size_t errlen)
{
    const cJSON *rss = get(doc, "resourceSpans"), *rs;
    if (!cJSON_IsObject(doc) || (rss && !cJSON_IsArray(rss))) {
        snprintf(err, errlen,
                 "expected an OTLP ExportTraceServiceRequest: {\"resourceSpans\": [...]}");
        return TR_EPARSE;
    }
    otlp_ctx_t c = {.out = out, .now_ms = now_ms};
    size_t index = 0;
    int rc = 0;
    EACH(rs, rss)
    {
        rc = decode_resource_spans(&c, rs, &index, err, errlen);
        if (rc) break;
    }
    tr_buf_free(&c.resource);
    tr_buf_free(&c.scope);
    tr_buf_free(&c.detail);
    if (rc) tr__span_batch_free(out);
    *inexact = c.inexact;
    return rc;
}

/*
 * jansson's tree as a cJSON one (malloc'd), every integer from 2^53 up as its decimal string:
 * the OTLP decoder reads 64-bit fields from strings exactly. Depth is bounded by jansson's
 * parser.
 */
static cJSON *exact_tree(json_t *v)
{
    cJSON *out;
    const char *key;
    json_t *m;
    size_t i;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        out = cJSON_CreateObject();
        json_object_foreach(v, key, m) cJSON_AddItemToObject(out, key, exact_tree(m));
        return out;
    case JSON_ARRAY:
        out = cJSON_CreateArray();
        json_array_foreach(v, i, m) cJSON_AddItemToArray(out, exact_tree(m));
        return out;
    case JSON_STRING:
        return cJSON_CreateString(json_string_value(v));
    case JSON_INTEGER: {
        json_int_t n = json_integer_value(v);
        if (fabs((double)n) < EXACT_LIMIT) return cJSON_CreateNumber((double)n);
        char digits[24];
        snprintf(digits, sizeof(digits), "%" JSON_INTEGER_FORMAT, n);
        return cJSON_CreateString(digits);
    }
    case JSON_REAL:
        return cJSON_CreateNumber(json_real_value(v));
    case JSON_TRUE:
        return cJSON_CreateTrue();
    case JSON_FALSE:
        return cJSON_CreateFalse();
    default:
        return cJSON_CreateNull();
    }
}

/* Line and column (from 1) of byte `off` of body. */
static void position(const char *body, size_t len, size_t off, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off && i < len; i++) {
        if (body[i] == '\n') {
            ++*line;
            *col = 1;
        } else
            ++*col;
    }
}

int tr_ingest_otlp(const char *body, size_t len, uint64_t now_ms, tr_span_batch_t *out, char *err,
                   size_t errlen)
{
    size_t off = 0;
    bool inexact = false;
    /* The tree lives in this thread's JSON arena: each reset below takes it back whole. */
    cJSON *doc = tr_json_arena_parse(body, len, &off);
    if (!doc) {
        tr_json_arena_reset();
        int line, col;
        position(body, len, off, &line, &col);
        snprintf(err, errlen, "the body is not JSON: invalid text at line %d, column %d", line,
                 col);
        return TR_EPARSE;
    }
    int rc = decode_doc(doc, now_ms, out, &inexact, err, errlen);
    tr_json_arena_reset();
    if (rc || !inexact) return rc;

    /* A 64-bit field came as a number beyond a double's exact range: decode again, exactly. */
    json_error_t jerr;
    json_t *exact = tr_json_arena_loadb(body, len, &jerr);
    if (!exact) {
        tr_json_arena_reset();
        return 0; /* jansson refuses a number cJSON took (beyond 64 bits): keep the first decode */
    }
    cJSON *tree = exact_tree(exact);
    tr_json_arena_reset();
    tr_span_batch_t again = {0};
    rc = decode_doc(tree, now_ms, &again, &inexact, err, errlen);
    cJSON_Delete(tree);
    if (rc) return rc;
    tr__span_batch_free(out);
    *out = again;
    return 0;
}
