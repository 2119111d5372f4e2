/* Unit tests for the OTLP and Zipkin JSON decoders: shapes, ids, times, validation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trace/ingest.h"
#include "trellis/error.h"
#include "trellis/trace.h"

static int otlp(const char *body, tr_span_batch_t *b, char *err)
{
    memset(b, 0, sizeof(*b));
    return tr_ingest_otlp(body, strlen(body), 1000, b, err, 256);
}

static int zipkin(const char *body, tr_span_batch_t *b, char *err)
{
    memset(b, 0, sizeof(*b));
    return tr_ingest_zipkin(body, strlen(body), 1000, b, err, 256);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* The OpenTelemetry project's own example request decodes as sent. */
static void test_otlp_example(void **state)
{
    (void)state;
    tr_span_batch_t b;
    char err[256];
    assert_int_equal(otlp(read_file(TR_SOURCE_DIR "/tests/data/otlp-trace.json"), &b, err), 0);
    assert_int_equal(b.n, 1);
    assert_int_equal(b.rejected, 0);
    tr_cspan_t *s = b.spans[0];
    char hex[33];
    tr__hex_encode(s->trace_id, 16, hex);
    assert_string_equal(hex, "5b8efff798038103d269b633813fc60c");
    tr__hex_encode(s->parent_id, 8, hex);
    assert_string_equal(hex, "eee19b7ec3c1b173");
    assert_string_equal(s->service, "my.service");
    assert_string_equal(s->name, "I'm a server span");
    assert_int_equal(s->kind, TR_SPAN_SERVER);
    assert_true(s->start_ns == 1544712660000000000ULL);
    assert_true(s->end_ns == 1544712661000000000ULL);
    assert_non_null(strstr(s->detail, "\"my.span.attr\":\"some value\""));
    assert_non_null(strstr(s->detail, "\"my.library\""));
    tr__span_batch_free(&b);
}

#define SPAN(extra)                                                                                \
    "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{"     \
    "\"stringValue\":\"svc\"}}]},\"scopeSpans\":[{\"spans\":[" extra "]}]}]}"

static void test_otlp_times_enums_unknown(void **state)
{
    (void)state;
    tr_span_batch_t b;
    char err[256];
    assert_int_equal(otlp(SPAN("{\"traceId\":\"0123456789ABCDEF0123456789abcdef\","
                               "\"spanId\":\"0123456789ABCDEF\",\"name\":\"n\","
                               "\"startTimeUnixNano\":1700000000000000000,"
                               "\"endTimeUnixNano\":\"1700000000000000500\",\"kind\":3,"
                               "\"status\":{\"code\":2,\"message\":\"bad\"},\"futureField\":[1],"
                               "\"attributes\":[{\"key\":\"correlation_id\",\"value\":{"
                               "\"stringValue\":\"c-1\"}},{\"key\":\"n\",\"value\":{"
                               "\"intValue\":\"42\"}}]}"),
                          &b, err),
                     0);
    assert_int_equal(b.n, 1);
    tr_cspan_t *s = b.spans[0];
    assert_true(s->end_ns - s->start_ns == 500);
    assert_int_equal(s->kind, TR_SPAN_CLIENT);
    assert_true(s->error);
    assert_string_equal(s->status_message, "bad");
    assert_string_equal(s->correlation_id, "c-1");
    assert_non_null(strstr(s->detail, "\"n\":42"));
    assert_true(tr__id_is_zero(s->parent_id, 8));
    tr__span_batch_free(&b);
}

/* Times and intValue as numbers past 2^53, where a double is no longer exact. */
static void test_otlp_numbers_exact(void **state)
{
    (void)state;
    tr_span_batch_t b;
    char err[256];
    assert_int_equal(otlp(SPAN("{\"traceId\":\"0123456789abcdef0123456789abcdef\","
                               "\"spanId\":\"0123456789abcdef\",\"name\":\"a\",\"name\":\"b\","
                               "\"startTimeUnixNano\":1700000000000000001,"
                               "\"endTimeUnixNano\":1700000000000000503,"
                               "\"attributes\":[{\"key\":\"big\",\"value\":{\"intValue\":"
                               "9007199254740993}},{\"key\":\"d\",\"value\":{\"doubleValue\":"
                               "0.5}}],\"events\":[{\"name\":\"e\",\"timeUnixNano\":"
                               "1700000000000000007}]}"),
                          &b, err),
                     0);
    assert_int_equal(b.n, 1);
    tr_cspan_t *s = b.spans[0];
    assert_true(s->start_ns == 1700000000000000001ULL);
    assert_true(s->end_ns == 1700000000000000503ULL);
    assert_string_equal(s->name, "b"); /* a repeated member: the last one counts */
    assert_non_null(strstr(s->detail, "\"big\":9007199254740993,\"d\":0.5"));
    assert_non_null(strstr(s->detail, "\"timeUnixNano\":\"1700000000000000007\""));
    tr__span_batch_free(&b);
}

static void test_otlp_semconv_correlation_header(void **state)
{
    (void)state;
    tr_span_batch_t b;
    char err[256];
    assert_int_equal(otlp(SPAN("{\"traceId\":\"0123456789abcdef0123456789abcdef\",\"spanId\":"
                               "\"0123456789abcdef\",\"attributes\":[{\"key\":\"http.request."
                               "header.x-correlation-id\",\"value\":{\"arrayValue\":{\"values\":[{"
                               "\"stringValue\":\"h-7\"}]}}}]}"),
                          &b, err),
                     0);
    assert_string_equal(b.spans[0]->correlation_id, "h-7");
    tr__span_batch_free(&b);
}

static void test_otlp_partial_rejects(void **state)
{
    (void)state;
    tr_span_batch_t b;
    char err[256];
    assert_int_equal(
        otlp(
            SPAN(
                "{\"traceId\":\"zz\",\"spanId\":\"0123456789abcdef\"},"
                "{\"traceId\":\"00000000000000000000000000000000\",\"spanId\":\"0123456789abcdef\"}"
                ","
                "{\"traceId\":\"0123456789abcdef0123456789abcdef\",\"spanId\":\"0123\"},"
                "{\"traceId\":\"0123456789abcdef0123456789abcdef\",\"spanId\":\"0123456789abcdef\","
                "\"kind\":9},"
                "{\"traceId\":\"0123456789abcdef0123456789abcdef\",\"spanId\":"
                "\"0123456789abcdef\"}"),
            &b, err),
        0);
    assert_int_equal(b.n, 1);
    assert_int_equal(b.rejected, 4);
    assert_non_null(strstr(b.message, "traceId"));
    tr__span_batch_free(&b);
}

static void test_otlp_malformed(void **state)
{
    (void)state;
    tr_span_batch_t b;
    char err[256];
    assert_int_equal(otlp("{not json", &b, err), TR_EPARSE);
    assert_non_null(strstr(err, "not JSON"));
    assert_int_equal(otlp("{}\n {} x", &b, err), TR_EPARSE); /* text after the value */
    assert_non_null(strstr(err, "line 2, column 2"));
    assert_int_equal(otlp("[1,2]", &b, err), TR_EPARSE);
    assert_int_equal(otlp("{\"resourceSpans\":{}}", &b, err), TR_EPARSE);
    assert_int_equal(otlp("{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":3}]}]}", &b, err),
                     TR_EPARSE);
    assert_int_equal(b.n, 0);
    /* An empty request is a valid one. */
    assert_int_equal(otlp("{}", &b, err), 0);
    assert_int_equal(b.n, 0);
    /* No service.name: OpenTelemetry's "unknown_service". */
    assert_int_equal(
        otlp("{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"traceId\":"
             "\"0123456789abcdef0123456789abcdef\",\"spanId\":\"0123456789abcdef\"}]}]}]}",
             &b, err),
        0);
    assert_string_equal(b.spans[0]->service, "unknown_service");
    tr__span_batch_free(&b);
}

static void test_zipkin_batch(void **state)
{
    (void)state;
    tr_span_batch_t b;
    char err[256];
    assert_int_equal(
        zipkin("[{\"traceId\":\"00000000000000AA\",\"id\":\"00000000000000B1\",\"name\":\"get\","
               "\"kind\":\"CLIENT\",\"timestamp\":1700000000000000,\"duration\":250,"
               "\"localEndpoint\":{\"serviceName\":\"fe\"},\"tags\":{\"error\":\"boom\","
               "\"correlation_id\":\"z-1\"},\"annotations\":[{\"timestamp\":1700000000000001,"
               "\"value\":\"ws\"}],\"debug\":true,\"other\":1},"
               "{\"traceId\":\"0123456789abcdef0123456789abcdef\",\"id\":\"00000000000000b2\","
               "\"parentId\":\"00000000000000b1\",\"timestamp\":\"1700000000000002\"}]",
               &b, err),
        0);
    assert_int_equal(b.n, 2);
    tr_cspan_t *s = b.spans[0];
    char hex[33];
    tr__hex_encode(s->trace_id, 16, hex);
    assert_string_equal(hex, "000000000000000000000000000000aa");
    assert_int_equal(s->kind, TR_SPAN_CLIENT);
    assert_true(s->error);
    assert_string_equal(s->status_message, "boom");
    assert_string_equal(s->service, "fe");
    assert_string_equal(s->correlation_id, "z-1");
    assert_true(s->end_ns - s->start_ns == 250000);
    assert_non_null(strstr(s->detail, "\"ws\""));
    assert_string_equal(b.spans[1]->service, "unknown_service");
    assert_true(b.spans[1]->start_ns == 1700000000000002000ULL);
    tr__span_batch_free(&b);
}

static void test_zipkin_rejects_whole_batch(void **state)
{
    (void)state;
    tr_span_batch_t b;
    char err[256];
    assert_int_equal(zipkin("[{\"traceId\":\"00000000000000aa\",\"id\":\"00000000000000b1\"},"
                            "{\"traceId\":\"00000000000000aa\",\"id\":\"xyz\"}]",
                            &b, err),
                     TR_EPARSE);
    assert_int_equal(b.n, 0);
    assert_non_null(strstr(err, "span 1"));
    assert_int_equal(zipkin("{\"traceId\":1}", &b, err), TR_EPARSE);
    assert_int_equal(zipkin("[{\"traceId\":\"00000000000000aa\",\"id\":\"00000000000000b1\","
                            "\"kind\":\"SIDEWAYS\"}]",
                            &b, err),
                     TR_EPARSE);
    assert_int_equal(zipkin("[]", &b, err), 0);
    assert_int_equal(b.n, 0);
}

static void test_hex(void **state)
{
    (void)state;
    uint8_t id[8];
    assert_true(tr__hex_decode("00FFa0b1c2d3e4f5", 16, id, 8));
    assert_int_equal(id[1], 0xff);
    assert_false(tr__hex_decode("00FFa0b1c2d3e4f", 15, id, 8));
    assert_false(tr__hex_decode("00FFa0b1c2d3e4fg", 16, id, 8));
    char out[17];
    tr__hex_encode(id, 8, out);
    assert_string_equal(out, "00ffa0b1c2d3e4f5");
}

/*
 * `detail` is written straight from the request: a repeated key keeps its first place and
 * its last value, in short and long lists; AnyValue precedence, events, resource, scope.
 */
static void test_otlp_detail_text(void **state)
{
    (void)state;
    tr_span_batch_t b;
    char err[256];
    static const char body[] =
        "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{"
        "\"bytesValue\":\"c3Zj\"}},{\"key\":\"r\",\"value\":{\"arrayValue\":{\"values\":[{\"intVa"
        "lue\":5},{\"doubleValue\":\"NaN\"},{\"kvlistValue\":{\"values\":[{\"key\":\"x\",\"value\""
        ":{\"boolValue\":true}}]}}]}}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"lib\",\"version\""
        ":\"1\",\"attributes\":[{\"key\":\"s\",\"value\":{\"stringValue\":\"t\\n\\u0001é\"}}]},\""
        "spans\":[{\"traceId\":\"0102030405060708090a0b0c0d0e0f10\",\"spanId\":\"0102030405060708"
        "\",\"name\":\"n\",\"attributes\":[{\"key\":\"a\",\"value\":{\"stringValue\":\"1\"}},{\"k"
        "ey\":\"b\",\"value\":{\"intValue\":\"-7\"}},{\"key\":\"a\",\"value\":{\"doubleValue\":2}"
        "},{\"key\":\"c\",\"value\":{\"doubleValue\":0.1}},{\"key\":\"d\",\"value\":{}},{\"key\":"
        "\"e\",\"value\":{\"boolValue\":false,\"stringValue\":\"wins\"}},{\"value\":{\"stringValu"
        "e\":\"nokey\"}},{\"key\":\"http.request.header.x-correlation-id\",\"value\":{\"arrayValu"
        "e\":{\"values\":[{\"stringValue\":\"corr-1\"}]}}}],\"events\":[{\"name\":\"ev\",\"timeUn"
        "ixNano\":\"123\",\"attributes\":[{\"key\":\"k\",\"value\":{\"intValue\":1}}]},{\"x\":1}]"
        "},{\"traceId\":\"0102030405060708090a0b0c0d0e0f10\",\"spanId\":\"0102030405060709\",\"na"
        "me\":\"big\",\"attributes\":[{\"key\":\"k0\",\"value\":{\"intValue\":0}},{\"key\":\"k1\""
        ",\"value\":{\"intValue\":1}},{\"key\":\"k2\",\"value\":{\"intValue\":2}},{\"key\":\"k3\""
        ",\"value\":{\"intValue\":3}},{\"key\":\"k4\",\"value\":{\"intValue\":4}},{\"key\":\"k5\""
        ",\"value\":{\"intValue\":5}},{\"key\":\"k6\",\"value\":{\"intValue\":6}},{\"key\":\"k7\""
        ",\"value\":{\"intValue\":7}},{\"key\":\"k8\",\"value\":{\"intValue\":8}},{\"key\":\"k9\""
        ",\"value\":{\"intValue\":9}},{\"key\":\"k10\",\"value\":{\"intValue\":10}},{\"key\":\"k1"
        "1\",\"value\":{\"intValue\":11}},{\"key\":\"k12\",\"value\":{\"intValue\":12}},{\"key\":"
        "\"k1\",\"value\":{\"intValue\":100}},{\"key\":\"k14\",\"value\":{\"intValue\":14}},{\"ke"
        "y\":\"k15\",\"value\":{\"intValue\":15}},{\"key\":\"correlation_id\",\"value\":{\"string"
        "Value\":\"cid\"}},{\"key\":\"k0\",\"value\":{\"stringValue\":\"last\"}}]}]}]}]}";
    assert_int_equal(otlp(body, &b, err), 0);
    assert_int_equal(b.n, 2);
    assert_string_equal(b.spans[0]->service, "c3Zj");
    assert_string_equal(b.spans[0]->correlation_id, "corr-1");
    assert_string_equal(
        b.spans[0]->detail,
        "{\"attributes\":{\"a\":2.0,\"b\":-7,\"c\":0.10000000000000001,\"d\":null,\"e\":\"wins\","
        "\"http.request.header.x-correlation-id\":[\"corr-1\"]},\"events\":[{\"name\":\"ev\",\"ti"
        "meUnixNano\":\"123\",\"attributes\":{\"k\":1}},{\"name\":\"\",\"timeUnixNano\":\"0\",\"a"
        "ttributes\":{}}],\"resource\":{\"service.name\":\"c3Zj\",\"r\":[5,\"NaN\",{\"x\":true}]}"
        ",\"scope\":{\"name\":\"lib\",\"version\":\"1\",\"attributes\":{\"s\":\"t\\n\\u0001é\"}}}");
    assert_string_equal(b.spans[1]->correlation_id, "cid");
    assert_string_equal(
        b.spans[1]->detail,
        "{\"attributes\":{\"k0\":\"last\",\"k1\":100,\"k2\":2,\"k3\":3,\"k4\":4,\"k5\":5,\"k6\":6"
        ",\"k7\":7,\"k8\":8,\"k9\":9,\"k10\":10,\"k11\":11,\"k12\":12,\"k14\":14,\"k15\":15,\"cor"
        "relation_id\":\"cid\"},\"resource\":{\"service.name\":\"c3Zj\",\"r\":[5,\"NaN\",{\"x\":t"
        "rue}]},\"scope\":{\"name\":\"lib\",\"version\":\"1\",\"attributes\":{\"s\":\"t\\n\\u0001"
        "é\"}}}");
    tr__span_batch_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_otlp_example),
        cmocka_unit_test(test_otlp_times_enums_unknown),
        cmocka_unit_test(test_otlp_numbers_exact),
        cmocka_unit_test(test_otlp_semconv_correlation_header),
        cmocka_unit_test(test_otlp_partial_rejects),
        cmocka_unit_test(test_otlp_malformed),
        cmocka_unit_test(test_otlp_detail_text),
        cmocka_unit_test(test_zipkin_batch),
        cmocka_unit_test(test_zipkin_rejects_whole_batch),
        cmocka_unit_test(test_hex),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
