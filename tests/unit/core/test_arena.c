/* Unit tests for the region allocator: alignment, blocks, growth, cleanups and reset. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <string.h>

#include "core/arena.h"

static _Alignas(16) char storage[1024];

static bool in_storage(const void *p, size_t n)
{
    return (const char *)p >= storage && (const char *)p + n <= storage + sizeof(storage);
}

static void test_alignment(void **state)
{
    tr_arena_t a;
    tr_arena_init(&a, NULL, 0);
    static const size_t sizes[] = {1, 3, 16, 17, 5000, 0, 7, 100000, 1};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        char *p = tr_arena_alloc(&a, sizes[i]);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 16, 0);
        memset(p, 0x5a, sizes[i]); /* ASan: the whole size is usable */
    }
    tr_arena_destroy(&a);
}

static void test_unaligned_storage(void **state)
{
    /* A caller's first block need not be aligned; allocations still are. */
    tr_arena_t a;
    tr_arena_init(&a, storage + 3, sizeof(storage) - 3);
    for (int i = 0; i < 8; i++) {
        char *p = tr_arena_alloc(&a, 24);
        assert_int_equal((uintptr_t)p % 16, 0);
        assert_true(in_storage(p, 24));
    }
    tr_arena_destroy(&a);
}

static void test_growth_beyond_first_block(void **state)
{
    tr_arena_t a;
    tr_arena_init(&a, storage, sizeof(storage));
    char *first = tr_arena_alloc(&a, 100);
    assert_true(in_storage(first, 100));
    memset(first, 'a', 100);
    char *big = tr_arena_alloc(&a, 3000); /* bigger than what's left, and than a default block */
    assert_false(in_storage(big, 1));
    memset(big, 'b', 3000);
    char *many[64];
    for (int i = 0; i < 64; i++) {
        many[i] = tr_arena_alloc(&a, 200);
        memset(many[i], i, 200);
    }
    for (int i = 0; i < 64; i++)
        for (int j = 0; j < 200; j++)
            assert_int_equal(many[i][j], i);
    for (int j = 0; j < 100; j++)
        assert_int_equal(first[j], 'a');
    tr_arena_reset(&a);
    /* Reset keeps the caller's block and starts it over. */
    char *again = tr_arena_alloc(&a, 100);
    assert_ptr_equal(again, first);
    tr_arena_destroy(&a);
}

static void test_grow_in_place_and_copy(void **state)
{
    tr_arena_t a;
    tr_arena_init(&a, storage, sizeof(storage));
    char *p = tr_arena_alloc(&a, 10);
    memcpy(p, "0123456789", 10);
    char *q = tr_arena_grow(&a, p, 10, 100);
    assert_ptr_equal(q, p); /* last allocation with room: in place */
    memset(q + 10, 'x', 90);
    char *other = tr_arena_alloc(&a, 8);
    char *r = tr_arena_grow(&a, q, 100, 200); /* no longer the last: copied */
    assert_ptr_not_equal(r, q);
    assert_memory_equal(r, "0123456789xxxx", 14);
    assert_true(r >= other + 8 || r + 200 <= other);
    /* The last allocation but no room left in the block: copied to a new block. */
    char *s = tr_arena_grow(&a, r, 200, 5000);
    assert_ptr_not_equal(s, r);
    assert_false(in_storage(s, 1));
    assert_memory_equal(s, "0123456789xxxx", 14);
    memset(s, 'y', 5000);
    /* Growing NULL is a plain allocation. */
    char *n = tr_arena_grow(&a, NULL, 0, 32);
    assert_non_null(n);
    assert_int_equal((uintptr_t)n % 16, 0);
    /* Shrinking keeps the pointer and the bytes. */
    char *t = tr_arena_alloc(&a, 64);
    memset(t, 'z', 64);
    assert_ptr_equal(tr_arena_grow(&a, t, 64, 16), t);
    assert_int_equal(t[15], 'z');
    tr_arena_destroy(&a);
}

static void test_strings(void **state)
{
    tr_arena_t a;
    tr_arena_init(&a, NULL, 0);
    char *s = tr_arena_strndup(&a, "hello world", 5);
    assert_string_equal(s, "hello");
    assert_string_equal(tr_arena_strdup(&a, ""), "");
    assert_string_equal(tr_arena_printf(&a, "%s-%d-%05.1f", "x", 42, 3.14159), "x-42-003.1");
    char longer[3000];
    memset(longer, 'q', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    assert_string_equal(tr_arena_printf(&a, "%s!", longer) + 2990, "qqqqqqqqq!");
    char *z = tr_arena_calloc(&a, 256);
    for (int i = 0; i < 256; i++)
        assert_int_equal(z[i], 0);
    tr_arena_destroy(&a);
}

static char order[16];
static size_t norder;

static void note(void *data)
{
    order[norder++] = *(const char *)data;
}

static void test_cleanups_reverse_order(void **state)
{
    tr_arena_t a;
    tr_arena_init(&a, storage, sizeof(storage));
    norder = 0;
    tr_arena_on_reset(&a, note, "1");
    tr_arena_alloc(&a, 5000); /* cleanups registered across blocks */
    tr_arena_on_reset(&a, note, "2");
    tr_arena_on_reset(&a, note, "3");
    assert_int_equal(norder, 0);
    tr_arena_reset(&a);
    assert_int_equal(norder, 3);
    assert_memory_equal(order, "321", 3);
    /* They ran once: a second reset runs nothing. */
    tr_arena_reset(&a);
    assert_int_equal(norder, 3);
    tr_arena_on_reset(&a, note, "4");
    tr_arena_destroy(&a);
    assert_int_equal(norder, 4);
    assert_int_equal(order[3], '4');
}

static void test_tiny_storage_ignored(void **state)
{
    char tiny[8];
    tr_arena_t a;
    tr_arena_init(&a, tiny, sizeof(tiny));
    char *p = tr_arena_alloc(&a, 4);
    assert_true(p < tiny || p >= tiny + sizeof(tiny));
    tr_arena_destroy(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alignment),
        cmocka_unit_test(test_unaligned_storage),
        cmocka_unit_test(test_growth_beyond_first_block),
        cmocka_unit_test(test_grow_in_place_and_copy),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_cleanups_reverse_order),
        cmocka_unit_test(test_tiny_storage_ignored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
