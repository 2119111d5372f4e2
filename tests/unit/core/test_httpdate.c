/* Unit tests for the date formats: the HTTP Date and RFC 3339 with milliseconds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/httpdate.h"

static void test_httpdate(void **state)
{
    (void)state;
    char buf[30];
    tr_httpdate_format(784111777, buf);
    assert_string_equal(buf, "Sun, 06 Nov 1994 08:49:37 GMT");
}

static void test_rfc3339_ms(void **state)
{
    (void)state;
    char out[TR_RFC3339_MS_LEN];
    tr_rfc3339_ms(0, out);
    assert_string_equal(out, "1970-01-01T00:00:00.000Z");
    tr_rfc3339_ms(1795366384123, out);
    assert_string_equal(out, "2026-11-22T16:53:04.123Z");
    tr_rfc3339_ms(-1, out); /* before the epoch: the millisecond belongs to the second before */
    assert_string_equal(out, "1969-12-31T23:59:59.999Z");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_httpdate),
        cmocka_unit_test(test_rfc3339_ms),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
