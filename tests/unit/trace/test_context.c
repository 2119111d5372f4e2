/* Unit tests for trace context: W3C traceparent/tracestate, B3, extraction and ids. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "trellis/error.h"
#include "trellis/http.h"
#include "trellis/trace.h"

#define TP_VALID "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

static int tp(const char *s, tr_trace_ctx_t *c)
{
    return tr_trace_parse_traceparent(s, strlen(s), c);
}

static void test_traceparent_valid(void **state)
{
    tr_trace_ctx_t c;
    assert_int_equal(tp(TP_VALID, &c), 0);
    char hex[33];
    tr_trace_hex_encode(c.trace_id, 16, hex);
    assert_string_equal(hex, "0af7651916cd43dd8448eb211c80319c");
    tr_trace_hex_encode(c.span_id, 8, hex);
    assert_string_equal(hex, "b7ad6b7169203331");
    assert_int_equal(c.flags, 1);
    char out[56];
    assert_int_equal(tr_trace_format_traceparent(&c, out), 55);
    assert_string_equal(out, TP_VALID);
    /* Unknown flag bits are parsed but only "sampled" is written back. */
    assert_int_equal(tp("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-ff", &c), 0);
    assert_int_equal(c.flags, 0xff);
    tr_trace_format_traceparent(&c, out);
    assert_string_equal(out + 53, "01");
    /* Surrounding spaces and tabs are optional whitespace. */
    assert_int_equal(tp(" \t" TP_VALID "\t ", &c), 0);
}

static void test_traceparent_invalid(void **state)
{
    static const char *bad[] = {
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01", /* uppercase */
        "00-0af7651916cd43dd8448eb211c80319c-B7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  /* zero trace id */
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  /* zero parent id */
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  /* version ff */
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-", /* 00 too long */
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-011",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1", /* too short */
        "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
        "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", /* bad delimiter */
        "00-0af7651916cd43dd8448eb211c80319c.b7ad6b7169203331-01",
        "0g-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", /* bad version */
        "00-0af7651916cd43dd8448eb211c80319x-b7ad6b7169203331-01", /* not hex */
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x", /* future, no '-' */
        "",
        "00",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        tr_trace_ctx_t c;
        if (tp(bad[i], &c) != TR_EPARSE) fail_msg("accepted: %s", bad[i]);
    }
    assert_int_equal(tr_trace_parse_traceparent(NULL, 0, &(tr_trace_ctx_t){0}), TR_EPARSE);
}

static void test_traceparent_future_version(void **state)
{
    tr_trace_ctx_t c;
    assert_int_equal(tp("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", &c), 0);
    assert_int_equal(
        tp("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-the-future-holds", &c), 0);
    assert_int_equal(c.flags, 1);
    char out[56];
    tr_trace_format_traceparent(&c, out);
    assert_string_equal(out, TP_VALID); /* we always answer in version 00 */
}

static int ts(const char *s, tr_trace_ctx_t *c)
{
    return tr_trace_parse_tracestate(s, strlen(s), c);
}

static void test_tracestate(void **state)
{
    tr_trace_ctx_t c;
    assert_int_equal(ts("congo=t61rcWkgMzE", &c), 0);
    assert_string_equal(c.tracestate, "congo=t61rcWkgMzE");
    assert_int_equal(ts("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE ,,\t", &c), 0);
    assert_string_equal(c.tracestate, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    assert_int_equal(ts("tenant1@vendor=x,a_-*/9=b c", &c), 0);
    assert_string_equal(c.tracestate, "tenant1@vendor=x,a_-*/9=b c");
    assert_int_equal(ts("", &c), 0);
    assert_string_equal(c.tracestate, "");

    static const char *bad[] = {
        "Rojo=1",              /* uppercase key */
        "1abc=1",              /* simple key must start with a letter */
        "foo=",                /* empty value */
        "foo",                 /* no '=' */
        "foo=bar=baz",         /* '=' in value */
        "foo=1,foo=2",         /* duplicate key */
        "foo@=1",              /* empty system id */
        "@vendor=1",           /* empty tenant */
        "t@1vendor=1",         /* system id starts with a digit */
        "t@abcdefghijklmno=1", /* system id longer than 14 */
        "foo=bar\x01",         /* control character */
        "foo=caf\xc3\xa9",     /* non-ASCII */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        strcpy(c.tracestate, "stale=1");
        if (ts(bad[i], &c) != TR_EPARSE) fail_msg("accepted: %s", bad[i]);
        assert_string_equal(c.tracestate, "");
    }
}

static void test_tracestate_limits(void **state)
{
    char buf[4096];
    size_t o = 0;
    for (int i = 0; i < 32; i++)
        o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%sk%d=v", i ? "," : "", i);
    tr_trace_ctx_t c;
    assert_int_equal(ts(buf, &c), 0);
    assert_int_equal(strlen(c.tracestate), o);
    snprintf(buf + o, sizeof(buf) - o, ",k32=v"); /* 33 members: all dropped */
    assert_int_equal(ts(buf, &c), TR_EPARSE);
    assert_string_equal(c.tracestate, "");

    /* Too long for 512: a member over 128 characters goes first, then from the end. */
    char big[200];
    memset(big, 'x', sizeof(big));
    big[sizeof(big) - 1] = '\0';
    o = (size_t)snprintf(buf, sizeof(buf), "a=1,big=%s", big);
    for (int i = 0; i < 20; i++)
        o += (size_t)snprintf(buf + o, sizeof(buf) - o, ",k%02d=%040d", i, i);
    assert_int_equal(ts(buf, &c), 0);
    assert_true(strlen(c.tracestate) < 512);
    assert_null(strstr(c.tracestate, "big="));
    assert_memory_equal(c.tracestate, "a=1,k00=", 8);
    assert_null(strstr(c.tracestate, "k19="));
}

static int b3(const char *s, tr_trace_ctx_t *c)
{
    return tr_trace_parse_b3_single(s, strlen(s), c);
}

static void test_b3_single(void **state)
{
    tr_trace_ctx_t c;
    char hex[33];
    assert_int_equal(b3("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90", &c),
                     0);
    tr_trace_hex_encode(c.trace_id, 16, hex);
    assert_string_equal(hex, "80f198ee56343ba864fe8b2a57d3eff7");
    tr_trace_hex_encode(c.span_id, 8, hex);
    assert_string_equal(hex, "e457b5a2e4d86bd1");
    assert_int_equal(c.flags, TR_TRACE_FLAG_SAMPLED);
    /* 64-bit trace id: padded with leading zeros. */
    assert_int_equal(b3("64fe8b2a57d3eff7-e457b5a2e4d86bd1-0", &c), 0);
    tr_trace_hex_encode(c.trace_id, 16, hex);
    assert_string_equal(hex, "000000000000000064fe8b2a57d3eff7");
    assert_int_equal(c.flags, 0);
    assert_int_equal(b3("64fe8b2a57d3eff7-e457b5a2e4d86bd1-d", &c), 0);
    assert_int_equal(c.flags, TR_TRACE_FLAG_SAMPLED);
    assert_int_equal(b3("64fe8b2a57d3eff7-e457b5a2e4d86bd1", &c), 0); /* deferred */
    assert_int_equal(c.flags, 0);
    /* Sampling-only forms. */
    assert_int_equal(b3("0", &c), 1);
    assert_int_equal(c.flags, TR_TRACE_HINT_DENY);
    assert_true(tr_trace_id_is_zero(c.trace_id, 16));
    assert_int_equal(b3("1", &c), 1);
    assert_int_equal(c.flags, TR_TRACE_HINT_ACCEPT);
    assert_int_equal(b3("d", &c), 1);

    static const char *bad[] = {
        "80F198EE56343BA864FE8B2A57D3EFF7-e457b5a2e4d86bd1-1",
        "80f198ee56343ba864fe8b2a57d3ef-e457b5a2e4d86bd1-1",
        "00000000000000000000000000000000-e457b5a2e4d86bd1-1",
        "64fe8b2a57d3eff7-0000000000000000-1",
        "64fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
        "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b9",
        "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
        "64fe8b2a57d3eff7",
        "2",
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (b3(bad[i], &c) != TR_EPARSE) fail_msg("accepted: %s", bad[i]);
}

static void test_b3_multi(void **state)
{
    tr_trace_ctx_t c;
    assert_int_equal(tr_trace_parse_b3_multi("463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312",
                                             "1", NULL, &c),
                     0);
    assert_int_equal(c.flags, 1);
    assert_int_equal(tr_trace_parse_b3_multi("48485a3953bb6124", "a2fb4a1d1a96d312", "0", NULL, &c),
                     0);
    assert_int_equal(c.flags, 0);
    assert_int_equal(c.trace_id[7], 0);
    assert_int_equal(c.trace_id[8], 0x48);
    assert_int_equal(
        tr_trace_parse_b3_multi("48485a3953bb6124", "a2fb4a1d1a96d312", "true", NULL, &c), 0);
    assert_int_equal(c.flags, 1);
    assert_int_equal(tr_trace_parse_b3_multi("48485a3953bb6124", "a2fb4a1d1a96d312", NULL, "1", &c),
                     0);
    assert_int_equal(c.flags, 1); /* debug */
    assert_int_equal(tr_trace_parse_b3_multi(NULL, NULL, "0", NULL, &c), 1);
    assert_int_equal(c.flags, TR_TRACE_HINT_DENY);
    assert_int_equal(tr_trace_parse_b3_multi("48485a3953bb6124", NULL, "1", NULL, &c), TR_EPARSE);
    assert_int_equal(
        tr_trace_parse_b3_multi("48485a3953bb6124", "a2fb4a1d1a96d312", "yes", NULL, &c),
        TR_EPARSE);
    assert_int_equal(tr_trace_parse_b3_multi("xyz", "a2fb4a1d1a96d312", "1", NULL, &c), TR_EPARSE);
    assert_int_equal(tr_trace_parse_b3_multi(NULL, NULL, NULL, NULL, &c), TR_EPARSE);
}

#define H(n, v)                                                                                    \
    {                                                                                              \
        n, v, (uint32_t)sizeof(n) - 1, (uint32_t)sizeof(v) - 1                                     \
    }

static void test_extract_precedence(void **state)
{
    tr_trace_ctx_t p;
    bool has;
    char hex[33];
    /* traceparent wins over b3 and X-B3-*, and brings tracestate along. */
    tr_http_header_t h1[] = {
        H("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        H("X-B3-TraceId", "463ac35c9f6413ad48485a3953bb6124"),
        H("X-B3-SpanId", "a2fb4a1d1a96d312"),
        H("TraceParent", TP_VALID),
        H("tracestate", "rojo=1"),
        H("Tracestate", "congo=2"),
    };
    tr_trace_extract(h1, 6, &p, &has);
    assert_true(has);
    tr_trace_hex_encode(p.trace_id, 16, hex);
    assert_string_equal(hex, "0af7651916cd43dd8448eb211c80319c");
    assert_string_equal(p.tracestate, "rojo=1,congo=2");
    /* b3 single next. */
    tr_trace_extract(h1, 3, &p, &has);
    assert_true(has);
    tr_trace_hex_encode(p.trace_id, 16, hex);
    assert_string_equal(hex, "80f198ee56343ba864fe8b2a57d3eff7");
    /* Then X-B3-*. */
    tr_trace_extract(h1 + 1, 2, &p, &has);
    assert_true(has);
    tr_trace_hex_encode(p.trace_id, 16, hex);
    assert_string_equal(hex, "463ac35c9f6413ad48485a3953bb6124");
    assert_int_equal(p.flags, 0);
    /* An invalid b3 falls back to X-B3-*. */
    tr_http_header_t h2[] = {H("b3", "junk"), H("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
                             H("x-b3-spanid", "a2fb4a1d1a96d312"), H("x-b3-sampled", "1")};
    tr_trace_extract(h2, 4, &p, &has);
    assert_true(has);
    assert_int_equal(p.flags, 1);
    /* Nothing at all. */
    tr_trace_extract(NULL, 0, &p, &has);
    assert_false(has);
    assert_int_equal(p.flags, 0);
}

static void test_extract_invalid_traceparent(void **state)
{
    tr_trace_ctx_t p;
    bool has = true;
    /* Invalid traceparent: no parent, tracestate dropped, b3 not consulted. */
    tr_http_header_t h[] = {
        H("traceparent", "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"),
        H("tracestate", "rojo=1"),
        H("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
    };
    tr_trace_extract(h, 3, &p, &has);
    assert_false(has);
    assert_string_equal(p.tracestate, "");
    assert_true(tr_trace_id_is_zero(p.trace_id, 16));
    /* Two traceparent headers: invalid. */
    tr_http_header_t h2[] = {H("traceparent", TP_VALID), H("traceparent", TP_VALID)};
    tr_trace_extract(h2, 2, &p, &has);
    assert_false(has);
    /* Valid traceparent with invalid tracestate: parent kept, tracestate dropped. */
    tr_http_header_t h3[] = {H("traceparent", TP_VALID), H("tracestate", "Bad=1")};
    tr_trace_extract(h3, 2, &p, &has);
    assert_true(has);
    assert_string_equal(p.tracestate, "");
    /* b3 "0": no parent, but a deny hint. */
    tr_http_header_t h4[] = {H("b3", "0")};
    tr_trace_extract(h4, 1, &p, &has);
    assert_false(has);
    assert_int_equal(p.flags, TR_TRACE_HINT_DENY);
}

static void test_new_ids(void **state)
{
    tr_trace_ctx_t a = {0}, b = {0};
    tr_trace_new_ids(&a, true);
    assert_false(tr_trace_id_is_zero(a.trace_id, 16));
    assert_false(tr_trace_id_is_zero(a.span_id, 8));
    b = a;
    tr_trace_new_ids(&b, false);
    assert_memory_equal(a.trace_id, b.trace_id, 16);
    assert_memory_not_equal(a.span_id, b.span_id, 8);
    for (int i = 0; i < 100000; i++) {
        tr_trace_new_ids(&b, true);
        assert_false(tr_trace_id_is_zero(b.trace_id, 16));
        assert_false(tr_trace_id_is_zero(b.span_id, 8));
    }
    assert_memory_not_equal(a.trace_id, b.trace_id, 16);
}

static void test_hex(void **state)
{
    uint8_t in[3] = {0x00, 0xab, 0xff}, out[3];
    char hex[7];
    assert_int_equal(tr_trace_hex_encode(in, 3, hex), 6);
    assert_string_equal(hex, "00abff");
    assert_int_equal(tr_trace_hex_decode(hex, 3, out), 0);
    assert_memory_equal(in, out, 3);
    assert_int_equal(tr_trace_hex_decode("00ABff", 3, out), TR_EPARSE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traceparent_valid),
        cmocka_unit_test(test_traceparent_invalid),
        cmocka_unit_test(test_traceparent_future_version),
        cmocka_unit_test(test_tracestate),
        cmocka_unit_test(test_tracestate_limits),
        cmocka_unit_test(test_b3_single),
        cmocka_unit_test(test_b3_multi),
        cmocka_unit_test(test_extract_precedence),
        cmocka_unit_test(test_extract_invalid_traceparent),
        cmocka_unit_test(test_new_ids),
        cmocka_unit_test(test_hex),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
