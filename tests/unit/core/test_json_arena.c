/* Unit tests for the JSON parse arena: trees in the arena, other values on the heap. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/json_arena.h"

static void test_installed(void **state)
{
    assert_true(tr_json_arena_installed());
}

static void test_parse_and_reset(void **state)
{
    const char *text = "{\"a\":[1,2.5,\"x\",{\"b\":null}],\"c\":\"yes\"}";
    for (int round = 0; round < 3; round++) {
        json_error_t err;
        json_t *doc = tr_json_arena_loadb(text, strlen(text), &err);
        assert_non_null(doc);
        assert_string_equal(json_string_value(json_object_get(doc, "c")), "yes");
        assert_int_equal(json_array_size(json_object_get(doc, "a")), 4);
        /* A decref is allowed (a no-op on arena memory); reset takes the tree back anyway. */
        if (round == 1) json_decref(doc);
        tr_json_arena_reset();
    }
}

/* Values made outside the parse, even while a tree is live, come from the heap. */
static void test_heap_values_unaffected(void **state)
{
    json_error_t err;
    json_t *doc = tr_json_arena_loadb("[1]", 3, &err);
    json_t *heap = json_pack("{s:s}", "k", "v");
    char *text = json_dumps(heap, JSON_COMPACT);
    tr_json_arena_reset();
    assert_non_null(doc);
    /* Still valid after the reset, and freed by plain free(). */
    assert_string_equal(text, "{\"k\":\"v\"}");
    assert_string_equal(json_string_value(json_object_get(heap, "k")), "v");
    free(text);
    json_decref(heap);
}

static void test_bad_json(void **state)
{
    json_error_t err;
    assert_null(tr_json_arena_loadb("{\"a\":", 5, &err));
    assert_true(err.text[0] != '\0');
    tr_json_arena_reset();
}

/* A body that needs several blocks and single allocations bigger than a block. */
static void test_large(void **state)
{
    tr_buf_t b = TR_BUF_INIT;
    tr_buf_append_str(&b, "[\"");
    for (int i = 0; i < 600000; i++)
        tr_buf_append(&b, "z", 1);
    tr_buf_append_str(&b, "\"");
    for (int i = 0; i < 100000; i++)
        tr_buf_printf(&b, ",{\"k%d\":%d}", i, i);
    tr_buf_append_str(&b, "]");
    for (int round = 0; round < 2; round++) {
        json_error_t err;
        json_t *doc = tr_json_arena_loadb(b.data, b.len, &err);
        assert_non_null(doc);
        assert_int_equal(json_array_size(doc), 100001);
        assert_int_equal(json_string_length(json_array_get(doc, 0)), 600000);
        assert_int_equal(json_integer_value(json_object_get(json_array_get(doc, 100000), "k99999")),
                         99999);
        tr_json_arena_reset();
    }
    tr_buf_free(&b);
}

static void *parse_on_thread(void *arg)
{
    json_error_t err;
    json_t *doc = tr_json_arena_loadb("{\"t\":1}", 7, &err);
    *(int *)arg = doc ? (int)json_integer_value(json_object_get(doc, "t")) : -1;
    tr_json_arena_reset();
    return NULL;
}

/* Each thread has its own arena, freed when the thread ends (LeakSanitizer checks). */
static void test_threads(void **state)
{
    pthread_t t;
    int got = 0;
    assert_int_equal(pthread_create(&t, NULL, parse_on_thread, &got), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(got, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_installed),
        cmocka_unit_test(test_parse_and_reset),
        cmocka_unit_test(test_heap_values_unaffected),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_large),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
