/* Zipkin v2 JSON: decodes a span list (POST /api/v2/spans) into stored spans. */
#include "trace/ingest.h"

#include "core/buf.h"
#include "core/json_arena.h"
#include "trellis/error.h"
#include "trellis/trace.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static tr_span_kind_t zipkin_kind(const char *k, bool *ok)
{
    *ok = true;
    if (!k) return TR_SPAN_UNSPECIFIED;
    if (!strcmp(k, "SERVER")) return TR_SPAN_SERVER;
    if (!strcmp(k, "CLIENT")) return TR_SPAN_CLIENT;
    if (!strcmp(k, "PRODUCER")) return TR_SPAN_PRODUCER;
    if (!strcmp(k, "CONSUMER")) return TR_SPAN_CONSUMER;
    *ok = false;
    return TR_SPAN_UNSPECIFIED;
}

/* Zipkin trace ids are 64 or 128 bits; a 64-bit one is the low half of a 128-bit id. */
static bool decode_trace_id(const char *s, uint8_t out[16])
{
    size_t len = s ? strlen(s) : 0;
    memset(out, 0, 16);
    if (len == 16) return tr__hex_decode(s, 16, out + 8, 8) && !tr__id_is_zero(out, 16);
    return tr__hex_decode(s ? s : "", len, out, 16) && !tr__id_is_zero(out, 16);
}

/* Microseconds (a JSON number; strings are tolerated) → nanoseconds. */
static uint64_t micros(json_t *v)
{
    long long us = 0;
    if (json_is_integer(v))
        us = json_integer_value(v);
    else if (json_is_real(v))
        us =
            json_real_value(v) > 0 && json_real_value(v) < 9e15 ? (long long)json_real_value(v) : 0;
    else if (json_is_string(v))
        us = strtoll(json_string_value(v), NULL, 10);
    return us > 0 && us < 9000000000000000LL ? (uint64_t)us * 1000 : 0;
}

static void dump_into(tr_buf_t *b, json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    tr_buf_append_str(b, s ? s : "null");
    free(s);
}

/* Zipkin's tags and annotations, in the shapes the query API serves for OTLP spans too. */
static void build_detail(tr_buf_t *d, json_t *sp, json_t *tags)
{
    tr_buf_reset(d);
    tr_buf_append_str(d, "{\"attributes\":");
    if (json_is_object(tags))
        dump_into(d, tags);
    else
        tr_buf_append_str(d, "{}");
    json_t *anns = json_object_get(sp, "annotations");
    if (json_is_array(anns) && json_array_size(anns)) {
        json_t *ev = json_array(), *a;
        size_t i;
        json_array_foreach(anns, i, a)
        {
            const char *value = json_string_value(json_object_get(a, "value"));
            char t[24];
            snprintf(t, sizeof(t), "%llu",
                     (unsigned long long)micros(json_object_get(a, "timestamp")));
            json_array_append_new(ev, json_pack("{s:s,s:s,s:{}}", "name", value ? value : "",
                                                "timeUnixNano", t, "attributes"));
        }
        tr_buf_append_str(d, ",\"events\":");
        dump_into(d, ev);
        json_decref(ev);
    }
    static const char *const endpoints[] = {"localEndpoint", "remoteEndpoint"};
    for (int i = 0; i < 2; i++) {
        json_t *ep = json_object_get(sp, endpoints[i]);
        if (!json_is_object(ep)) continue;
        tr_buf_printf(d, ",\"%s\":", endpoints[i]);
        dump_into(d, ep);
    }
    if (json_is_true(json_object_get(sp, "shared"))) tr_buf_append_str(d, ",\"shared\":true");
    tr_buf_append_str(d, "}");
}

static const char *tag_string(json_t *tags, const char *key)
{
    return json_string_value(json_object_get(tags, key));
}

static int decode_span(json_t *sp, size_t i, uint64_t now_ms, tr_buf_t *d, tr_span_batch_t *out,
                       char *err, size_t errlen)
{
    tr_cspan_t f;
    memset(&f, 0, sizeof(f));
    if (!json_is_object(sp)) {
        snprintf(err, errlen, "span %zu is not an object", i);
        return TR_EPARSE;
    }
    if (!decode_trace_id(json_string_value(json_object_get(sp, "traceId")), f.trace_id)) {
        snprintf(err, errlen, "span %zu: traceId must be 16 or 32 hex digits, not all zero", i);
        return TR_EPARSE;
    }
    const char *id = json_string_value(json_object_get(sp, "id"));
    if (!id || !tr__hex_decode(id, strlen(id), f.span_id, 8) || tr__id_is_zero(f.span_id, 8)) {
        snprintf(err, errlen, "span %zu: id must be 16 hex digits, not all zero", i);
        return TR_EPARSE;
    }
    json_t *parent = json_object_get(sp, "parentId");
    const char *pid = json_string_value(parent);
    if ((parent && !json_is_null(parent) && !pid) ||
        (pid && *pid && !tr__hex_decode(pid, strlen(pid), f.parent_id, 8))) {
        snprintf(err, errlen, "span %zu: parentId must be 16 hex digits", i);
        return TR_EPARSE;
    }
    bool ok;
    f.kind = (uint8_t)zipkin_kind(json_string_value(json_object_get(sp, "kind")), &ok);
    if (!ok) {
        snprintf(err, errlen, "span %zu: kind must be CLIENT, SERVER, PRODUCER or CONSUMER", i);
        return TR_EPARSE;
    }
    f.start_ns = micros(json_object_get(sp, "timestamp"));
    f.end_ns = f.start_ns + micros(json_object_get(sp, "duration"));
    f.recv_ms = now_ms;
    json_t *tags = json_object_get(sp, "tags");
    const char *error = tag_string(tags, "error");
    f.error = json_object_get(tags, "error") != NULL;
    f.status = f.error ? TR_STATUS_ERROR : TR_STATUS_UNSET;
    const char *corr = tag_string(tags, "correlation_id");
    if (!corr) corr = tag_string(tags, "http.request.header.x-correlation-id");
    const char *svc =
        json_string_value(json_object_get(json_object_get(sp, "localEndpoint"), "serviceName"));
    build_detail(d, sp, tags);
    tr__span_batch_add(out, tr__cspan_new(&f, svc && *svc ? svc : "unknown_service",
                                          json_string_value(json_object_get(sp, "name")), corr,
                                          error, tr_buf_cstr(d)));
    return 0;
}

int tr_ingest_zipkin(const char *body, size_t len, uint64_t now_ms, tr_span_batch_t *out, char *err,
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
    if (!json_is_array(doc)) {
        snprintf(err, errlen, "expected a Zipkin v2 JSON list of spans: [{\"traceId\": ...}]");
        tr_json_arena_reset();
        return TR_EPARSE;
    }
    tr_buf_t d = TR_BUF_INIT;
    size_t i;
    json_t *sp;
    int rc = 0;
    json_array_foreach(doc, i, sp)
    {
        rc = decode_span(sp, i, now_ms, &d, out, err, errlen);
        if (rc) break;
    }
    tr_buf_free(&d);
    tr_json_arena_reset();
    if (rc) tr__span_batch_free(out);
    return rc;
}
