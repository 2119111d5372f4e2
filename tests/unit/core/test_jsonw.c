/* Unit tests for the JSON writer: escaping, invalid UTF-8, numbers, hex. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <string.h>

#include "core/jsonw.h"

static void assert_str_writes(const char *in, size_t len, const char *want)
{
    tr_buf_t b = TR_BUF_INIT;
    tr_jsonw_str(&b, in, len);
    assert_string_equal(tr_buf_cstr(&b), want);
    tr_buf_free(&b);
}

static void test_escapes(void **state)
{
    assert_str_writes("", 0, "\"\"");
    assert_str_writes("plain text", 10, "\"plain text\"");
    assert_str_writes("a\"b\\c", 5, "\"a\\\"b\\\\c\"");
    assert_str_writes("\n\r\t", 3, "\"\\n\\r\\t\"");
    assert_str_writes("\x01\x1f\b\f", 4, "\"\\u0001\\u001f\\u0008\\u000c\"");
    assert_str_writes("a\0b", 3, "\"a\\u0000b\"");
    assert_str_writes("/\x7f", 2, "\"/\x7f\"");
}

static void test_utf8(void **state)
{
    /* Valid sequences of 2, 3 and 4 bytes pass as they are. */
    assert_str_writes("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9,
                      "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
    /* Each bad byte becomes U+FFFD: stray continuation, overlong, surrogate, too high, cut. */
    assert_str_writes("\x80", 1, "\"\xef\xbf\xbd\"");
    assert_str_writes("\xc0\xaf", 2, "\"\xef\xbf\xbd\xef\xbf\xbd\"");
    assert_str_writes("\xed\xa0\x80", 3, "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"");
    assert_str_writes("\xf4\x90\x80\x80", 4,
                      "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"");
    assert_str_writes("ab\xe2\x82", 4, "\"ab\xef\xbf\xbd\xef\xbf\xbd\"");
    assert_str_writes("\xff", 1, "\"\xef\xbf\xbd\"");
}

/* Whatever the bytes, the output is one JSON string that reads back. */
static void test_output_parses(void **state)
{
    char in[256];
    for (int i = 0; i < 256; i++)
        in[i] = (char)i;
    tr_buf_t b = TR_BUF_INIT;
    tr_jsonw_str(&b, in, sizeof(in));
    json_error_t err;
    json_t *v = json_loadb(b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    assert_non_null(v);
    assert_true(json_is_string(v));
    assert_memory_equal(json_string_value(v), in, 128);
    json_decref(v);
    tr_buf_free(&b);
}

static void test_cstr(void **state)
{
    tr_buf_t b = TR_BUF_INIT;
    tr_jsonw_cstr(&b, NULL);
    TR_JSONW_LIT(&b, ",");
    tr_jsonw_cstr(&b, "x\"y");
    assert_string_equal(tr_buf_cstr(&b), "\"\",\"x\\\"y\"");
    tr_buf_free(&b);
}

static void test_numbers(void **state)
{
    tr_buf_t b = TR_BUF_INIT;
    tr_jsonw_i64(&b, 0);
    TR_JSONW_LIT(&b, " ");
    tr_jsonw_i64(&b, INT64_MIN);
    TR_JSONW_LIT(&b, " ");
    tr_jsonw_i64(&b, INT64_MAX);
    TR_JSONW_LIT(&b, " ");
    tr_jsonw_u64(&b, UINT64_MAX);
    assert_string_equal(tr_buf_cstr(&b),
                        "0 -9223372036854775808 9223372036854775807 18446744073709551615");
    tr_buf_reset(&b);
    tr_jsonw_double(&b, 1);
    TR_JSONW_LIT(&b, " ");
    tr_jsonw_double(&b, 0.5);
    TR_JSONW_LIT(&b, " ");
    tr_jsonw_double(&b, 1e300);
    TR_JSONW_LIT(&b, " ");
    tr_jsonw_double(&b, NAN);
    TR_JSONW_LIT(&b, " ");
    tr_jsonw_double(&b, -INFINITY);
    assert_string_equal(tr_buf_cstr(&b), "1.0 0.5 1.0000000000000001e+300 null null");
    tr_buf_free(&b);
}

static void test_hex_and_raw(void **state)
{
    tr_buf_t b = TR_BUF_INIT;
    const uint8_t id[4] = {0x00, 0x0a, 0xbc, 0xff};
    tr_jsonw_hex(&b, id, 4);
    tr_jsonw_raw(&b, ":true", 5);
    assert_string_equal(tr_buf_cstr(&b), "\"000abcff\":true");
    tr_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escapes),       cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_output_parses), cmocka_unit_test(test_cstr),
        cmocka_unit_test(test_numbers),       cmocka_unit_test(test_hex_and_raw),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
