/* Unit tests for the app's router: patterns, most specific match, parameters (decoded),
 * 405 method lists, bad patterns. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "sdk/sdk.h"

static void noop(tr_ctx_t *ctx, void *data)
{
    (void)ctx;
    (void)data;
}

typedef struct {
    tr__route_t *r[16];
    size_t n;
} table_t;

static void add(table_t *t, const char *method, const char *pattern)
{
    tr__route_t *r = calloc(1, sizeof(*r));
    assert_int_equal(tr__route_compile(r, method, pattern), 0);
    r->cb = noop;
    t->r[t->n++] = r;
}

static void drop(table_t *t)
{
    for (size_t i = 0; i < t->n; i++) {
        tr__route_free(t->r[i]);
        free(t->r[i]);
    }
    t->n = 0;
}

static const char *find(table_t *t, const char *method, const char *path, tr__route_match_t *m)
{
    tr__route_find(t->r, t->n, method, path, strlen(path), m);
    return m->route ? m->route->pattern : NULL;
}

static void test_specific_wins(void **state)
{
    (void)state;
    table_t t = {0};
    add(&t, "GET", "/products/{id}");
    add(&t, "GET", "/products/search");
    add(&t, "GET", "/products");
    add(&t, "GET", "/");
    add(&t, "GET", "/files/{rest...}");
    tr__route_match_t m;
    assert_string_equal(find(&t, "GET", "/products/search", &m), "/products/search");
    tr__route_match_free(&m);
    assert_string_equal(find(&t, "GET", "/products/42", &m), "/products/{id}");
    assert_int_equal(m.nparams, 1);
    assert_string_equal(m.name[0], "id");
    assert_string_equal(m.value[0], "42");
    tr__route_match_free(&m);
    assert_string_equal(find(&t, "GET", "/products", &m), "/products");
    tr__route_match_free(&m);
    assert_string_equal(find(&t, "GET", "/", &m), "/");
    tr__route_match_free(&m);
    /* A trailing slash is a different path; an empty segment is no parameter. */
    assert_null(find(&t, "GET", "/products/", &m));
    assert_null(find(&t, "GET", "/products/42/x", &m));
    assert_string_equal(find(&t, "GET", "/files/a/b%20c", &m), "/files/{rest...}");
    assert_string_equal(m.value[0], "a/b c");
    tr__route_match_free(&m);
    /* HEAD is served by GET routes. */
    assert_string_equal(find(&t, "HEAD", "/products", &m), "/products");
    tr__route_match_free(&m);
    drop(&t);
}

static void test_params_decoded(void **state)
{
    (void)state;
    table_t t = {0};
    add(&t, "DELETE", "/customers/{id}/addresses/{address_id}");
    tr__route_match_t m;
    assert_non_null(find(&t, "DELETE", "/customers/7/addresses/caf%C3%A9", &m));
    assert_int_equal(m.nparams, 2);
    assert_string_equal(m.value[0], "7");
    assert_string_equal(m.value[1], "caf\xc3\xa9");
    tr__route_match_free(&m);
    /* A malformed escape is kept as sent. */
    assert_non_null(find(&t, "DELETE", "/customers/%zz/addresses/1", &m));
    assert_string_equal(m.value[0], "%zz");
    tr__route_match_free(&m);
    drop(&t);
}

static void test_method_not_allowed(void **state)
{
    (void)state;
    table_t t = {0};
    add(&t, "GET", "/orders/{id}");
    add(&t, "POST", "/orders/{id}/cancel");
    add(&t, "PATCH", "/orders/{id}");
    tr__route_match_t m;
    assert_null(find(&t, "DELETE", "/orders/3", &m));
    assert_true(m.path_known);
    char allow[64];
    tr__route_allow(t.r, t.n, "/orders/3", 9, allow, sizeof(allow));
    assert_string_equal(allow, "GET, PATCH, HEAD");
    assert_null(find(&t, "GET", "/nothing", &m));
    assert_false(m.path_known);
    drop(&t);
}

static void test_bad_patterns(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",          "products", "/a/{}",
        "/a/{x",     "/a/{x}y",  "/{a-b}",
        "/{r...}/x", "/a{b}/c",  "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}",
        NULL};
    for (int i = 0; bad[i]; i++) {
        tr__route_t r;
        if (tr__route_compile(&r, "GET", bad[i]) != UV_EINVAL) fail_msg("accepted '%s'", bad[i]);
    }
    tr__route_t r;
    assert_int_equal(tr__route_compile(&r, "BREW", "/coffee"), UV_EINVAL);
    assert_int_equal(tr__route_compile(&r, "GET", "/a/{b}/"), 0);
    tr__route_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_specific_wins),
        cmocka_unit_test(test_params_decoded),
        cmocka_unit_test(test_method_not_allowed),
        cmocka_unit_test(test_bad_patterns),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
