/* Unit tests for the string-keyed hash map. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "core/map.h"

static void test_empty(void **state)
{
    (void)state;
    tr_map_t m = TR_MAP_INIT;
    assert_null(tr_map_get(&m, "a"));
    assert_null(tr_map_del(&m, "a"));
    size_t pos = 0;
    assert_false(tr_map_next(&m, &pos, NULL, NULL));
    tr_map_free(&m);
    tr_map_free(&m); /* twice is safe */
}

static void test_put_replace_del(void **state)
{
    (void)state;
    tr_map_t m = TR_MAP_INIT;
    int a = 1, b = 2;
    assert_null(tr_map_put(&m, "k", &a));
    assert_ptr_equal(tr_map_get(&m, "k"), &a);
    assert_ptr_equal(tr_map_put(&m, "k", &b), &a); /* replace returns the old value */
    assert_int_equal(m.len, 1);
    assert_ptr_equal(tr_map_get(&m, "k"), &b);
    assert_null(tr_map_get(&m, "K"));    /* case-sensitive */
    assert_null(tr_map_put(&m, "", &a)); /* the empty key is a key */
    assert_ptr_equal(tr_map_get(&m, ""), &a);
    assert_ptr_equal(tr_map_del(&m, "k"), &b);
    assert_null(tr_map_get(&m, "k"));
    assert_null(tr_map_del(&m, "k"));
    assert_int_equal(m.len, 1);
    tr_map_free(&m);
}

/* Many keys force growth and long probe runs; deleting every other one must keep the rest. */
static void test_many(void **state)
{
    (void)state;
    enum { N = 5000 };
    static char keys[N][16];
    static int vals[N];
    tr_map_t m = TR_MAP_INIT;
    for (int i = 0; i < N; i++) {
        snprintf(keys[i], sizeof(keys[i]), "svc%d", i);
        vals[i] = i;
        assert_null(tr_map_put(&m, keys[i], &vals[i]));
    }
    assert_int_equal(m.len, N);
    for (int i = 0; i < N; i += 2)
        assert_ptr_equal(tr_map_del(&m, keys[i]), &vals[i]);
    assert_int_equal(m.len, N / 2);
    for (int i = 0; i < N; i++) {
        char k[16];
        snprintf(k, sizeof(k), "svc%d", i); /* lookups compare contents, not pointers */
        if (i % 2)
            assert_ptr_equal(tr_map_get(&m, k), &vals[i]);
        else
            assert_null(tr_map_get(&m, k));
    }
    size_t pos = 0, seen = 0;
    const char *key;
    void *v;
    while (tr_map_next(&m, &pos, &key, &v)) {
        assert_int_equal(*(int *)v % 2, 1);
        assert_string_equal(key, keys[*(int *)v]);
        seen++;
    }
    assert_int_equal(seen, N / 2);
    tr_map_free(&m);
    assert_int_equal(m.len, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_put_replace_del),
        cmocka_unit_test(test_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
