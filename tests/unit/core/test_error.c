/* Unit tests for the error table: names and messages, and libuv pass-through. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>
#include <uv.h>

#include "trellis/error.h"

static void test_trellis_codes(void **state)
{
    assert_string_equal(tr_strerror(0), "success");
    assert_string_equal(tr_err_name(0), "OK");
    assert_string_equal(tr_strerror(TR_ECONFIG), "invalid configuration");
    assert_string_equal(tr_err_name(TR_ECONFIG), "TR_ECONFIG");
    assert_string_equal(tr_strerror(TR_EPARSE), "malformed input");
    assert_string_equal(tr_err_name(TR_EPARSE), "TR_EPARSE");
    assert_string_equal(tr_err_name(TR_ECONNECT_TIMEOUT), "TR_ECONNECT_TIMEOUT");
    assert_string_equal(tr_strerror(TR_EIO), "input/output error");
    assert_string_equal(tr_err_name(TR_EIO), "TR_EIO");
}

static void test_table_is_consistent(void **state)
{
    static const int codes[] = {
#define CODE(name, code, msg) code,
        TR_ERRNO_MAP(CODE)
#undef CODE
    };
    static const char *const names[] = {
#define NAME(name, code, msg) "TR_E" #name,
        TR_ERRNO_MAP(NAME)
#undef NAME
    };
    size_t n = sizeof(codes) / sizeof(codes[0]);
    for (size_t i = 0; i < n; i++) {
        /* Below every libuv code, so the two spaces never collide. */
        assert_true(codes[i] <= -30000);
        assert_string_equal(tr_err_name(codes[i]), names[i]);
        const char *msg = tr_strerror(codes[i]);
        assert_non_null(msg);
        assert_true(strlen(msg) > 0);
        assert_null(strstr(msg, "Unknown"));
        for (size_t j = 0; j < i; j++)
            assert_int_not_equal(codes[i], codes[j]);
    }
}

static void test_libuv_pass_through(void **state)
{
    assert_string_equal(tr_strerror(UV_ECONNREFUSED), uv_strerror(UV_ECONNREFUSED));
    assert_string_equal(tr_strerror(UV_ECONNREFUSED), "connection refused");
    assert_string_equal(tr_err_name(UV_ECONNREFUSED), "ECONNREFUSED");
    assert_string_equal(tr_err_name(UV_EADDRINUSE), "EADDRINUSE");
    assert_string_equal(tr_err_name(UV_EOF), "EOF");
}

/* Codes neither table knows still get text, without allocating per call. */
static void test_unknown_code(void **state)
{
    (void)state;
    for (int i = 0; i < 1000; i++) {
        const char *msg = tr_strerror(-12345);
        assert_non_null(msg);
        assert_non_null(strstr(msg, "12345"));
        assert_non_null(tr_err_name(-12345));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trellis_codes),
        cmocka_unit_test(test_table_is_consistent),
        cmocka_unit_test(test_libuv_pass_through),
        cmocka_unit_test(test_unknown_code),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
