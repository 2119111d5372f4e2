/* Unit tests for the live dependency graph: links, pending children, bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "trace/deps.h"

static const uint8_t T1[16] = {1}, T2[16] = {2};
static const uint8_t P1[8] = {0xa}, P2[8] = {0xb};

static uint64_t calls(tr_deps_t *d, const char *parent, const char *child, uint64_t *errors)
{
    tr_dep_edge_t *e;
    size_t n = tr_deps_edges(d, &e);
    uint64_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(e[i].parent, parent) && !strcmp(e[i].child, child)) {
            c = e[i].calls;
            if (errors) *errors = e[i].errors;
        }
    free(e);
    return c;
}

static void test_link_counts_calls_and_errors(void **state)
{
    (void)state;
    tr_deps_t *d = tr_deps_new(16, 16);
    tr_deps_link(d, "fe", "be", false);
    tr_deps_link(d, "fe", "be", true);
    tr_deps_link(d, "be", "be", true); /* same service: no edge */
    uint64_t errors = 0;
    assert_int_equal(calls(d, "fe", "be", &errors), 2);
    assert_int_equal(errors, 1);
    tr_dep_edge_t *e;
    assert_int_equal(tr_deps_edges(d, &e), 1);
    free(e);
    tr_deps_free(d);
}

static void test_pending_child_resolved_by_late_parent(void **state)
{
    (void)state;
    tr_deps_t *d = tr_deps_new(16, 16);
    tr_deps_pend(d, T1, P1, "db", true);
    tr_deps_pend(d, T1, P1, "cache", false);
    tr_deps_pend(d, T2, P1, "other", false);
    assert_int_equal(tr_deps_pending(d), 3);
    assert_int_equal(tr_deps_resolve(d, T1, P2, "be"), 0);
    assert_int_equal(tr_deps_resolve(d, T1, P1, "be"), 2);
    assert_int_equal(tr_deps_pending(d), 1);
    uint64_t errors = 0;
    assert_int_equal(calls(d, "be", "db", &errors), 1);
    assert_int_equal(errors, 1);
    assert_int_equal(calls(d, "be", "cache", NULL), 1);
    assert_int_equal(calls(d, "be", "other", NULL), 0);
    /* Resolved once only. */
    assert_int_equal(tr_deps_resolve(d, T1, P1, "be"), 0);
    tr_deps_free(d);
}

static void test_pending_is_bounded_oldest_forgotten(void **state)
{
    (void)state;
    tr_deps_t *d = tr_deps_new(4, 16);
    for (uint8_t i = 0; i < 10; i++) {
        uint8_t p[8] = {i};
        tr_deps_pend(d, T1, p, "c", false);
    }
    assert_int_equal(tr_deps_pending(d), 4);
    uint8_t old[8] = {0}, recent[8] = {9};
    assert_int_equal(tr_deps_resolve(d, T1, old, "p"), 0);
    assert_int_equal(tr_deps_resolve(d, T1, recent, "p"), 1);
    tr_deps_free(d);
}

static void test_edges_bounded_and_sorted(void **state)
{
    (void)state;
    tr_deps_t *d = tr_deps_new(4, 2);
    tr_deps_link(d, "b", "c", false);
    tr_deps_link(d, "a", "c", false);
    tr_deps_link(d, "x", "y", false); /* over the edge limit: not counted */
    tr_dep_edge_t *e;
    assert_int_equal(tr_deps_edges(d, &e), 2);
    assert_string_equal(e[0].parent, "a");
    assert_string_equal(e[1].parent, "b");
    free(e);
    /* Long names take the heap path. */
    char longname[600];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    tr_deps_link(d, "a", "c", false);
    tr_deps_link(d, longname, "c", false);
    assert_int_equal(calls(d, "a", "c", NULL), 2);
    tr_deps_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_link_counts_calls_and_errors),
        cmocka_unit_test(test_pending_child_resolved_by_late_parent),
        cmocka_unit_test(test_pending_is_bounded_oldest_forgotten),
        cmocka_unit_test(test_edges_bounded_and_sorted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
