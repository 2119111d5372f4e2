/* Unit tests for the growable byte buffer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <string.h>

#include "core/buf.h"

static void test_append(void **state)
{
    tr_buf_t b = TR_BUF_INIT;
    assert_null(b.data);
    tr_buf_append(&b, "", 0);
    assert_int_equal(b.len, 0);
    tr_buf_append(&b, "abc", 3);
    tr_buf_append_str(&b, "def");
    tr_buf_append(&b, "g\0h", 3); /* binary-safe */
    assert_int_equal(b.len, 9);
    assert_memory_equal(b.data, "abcdefg\0h", 9);
    char big[5000];
    memset(big, 'z', sizeof(big));
    tr_buf_append(&b, big, sizeof(big));
    assert_int_equal(b.len, 9 + sizeof(big));
    assert_true(b.cap > b.len);
    assert_int_equal(b.data[b.len - 1], 'z');
    tr_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_true(b.cap > 0);
    tr_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
    tr_buf_free(&b); /* twice is safe */
}

static void test_reserve(void **state)
{
    tr_buf_t b = TR_BUF_INIT;
    tr_buf_reserve(&b, 1000);
    assert_true(b.cap - b.len >= 1000);
    char *before = b.data;
    memset(b.data, 'r', 1000); /* the reserved room is writable */
    tr_buf_append(&b, "x", 1);
    assert_ptr_equal(b.data, before); /* no move when room was reserved */
    tr_buf_free(&b);
}

static void test_printf(void **state)
{
    tr_buf_t b = TR_BUF_INIT;
    tr_buf_printf(&b, "%d-%s", 7, "seven");
    assert_int_equal(b.len, 7);
    assert_string_equal(tr_buf_cstr(&b), "7-seven");
    /* Longer than the first guess: formatted again into a bigger buffer. */
    char longer[1000];
    memset(longer, 'L', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    tr_buf_printf(&b, "[%s]", longer);
    assert_int_equal(b.len, 7 + 1001);
    assert_int_equal(b.data[7], '[');
    assert_int_equal(b.data[b.len - 1], ']');
    assert_int_equal(b.data[b.len - 2], 'L');
    tr_buf_printf(&b, "%s", "");
    assert_int_equal(b.len, 1008);
    tr_buf_free(&b);
}

static void test_u64(void **state)
{
    tr_buf_t b = TR_BUF_INIT;
    tr_buf_append_u64(&b, 0);
    tr_buf_append(&b, " ", 1);
    tr_buf_append_u64(&b, 1234567890);
    tr_buf_append(&b, " ", 1);
    tr_buf_append_u64(&b, ULLONG_MAX);
    assert_string_equal(tr_buf_cstr(&b), "0 1234567890 18446744073709551615");
    tr_buf_free(&b);
}

static void test_consume(void **state)
{
    tr_buf_t b = TR_BUF_INIT;
    tr_buf_append_str(&b, "hello world");
    tr_buf_consume(&b, 6);
    assert_int_equal(b.len, 5);
    assert_string_equal(tr_buf_cstr(&b), "world");
    tr_buf_consume(&b, 0);
    assert_string_equal(tr_buf_cstr(&b), "world");
    tr_buf_consume(&b, 5);
    assert_int_equal(b.len, 0);
    tr_buf_append_str(&b, "ab");
    tr_buf_consume(&b, 100); /* more than there is: empties */
    assert_int_equal(b.len, 0);
    tr_buf_free(&b);
}

static void test_cstr(void **state)
{
    tr_buf_t b = TR_BUF_INIT;
    assert_string_equal(tr_buf_cstr(&b), ""); /* valid on an empty buffer */
    assert_int_equal(b.len, 0);
    tr_buf_append(&b, "abc", 3);
    const char *s = tr_buf_cstr(&b);
    assert_string_equal(s, "abc");
    assert_int_equal(b.len, 3); /* the NUL isn't counted */
    tr_buf_append(&b, "d", 1);
    assert_string_equal(tr_buf_cstr(&b), "abcd");
    /* Exactly full: cstr must still find room for the NUL. */
    tr_buf_t f = TR_BUF_INIT;
    tr_buf_reserve(&f, 10);
    size_t room = f.cap;
    char fill[4096];
    memset(fill, 'f', sizeof(fill));
    tr_buf_append(&f, fill, room - 1);
    tr_buf_append(&f, "f", 1);
    assert_int_equal(f.len, room);
    assert_int_equal(strlen(tr_buf_cstr(&f)), room);
    tr_buf_free(&f);
    tr_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append),  cmocka_unit_test(test_reserve),
        cmocka_unit_test(test_printf),  cmocka_unit_test(test_u64),
        cmocka_unit_test(test_consume), cmocka_unit_test(test_cstr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
