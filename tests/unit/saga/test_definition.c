/* Unit tests for saga definitions: steps, the pivot, parallel groups (flattened, with their
 * group), template names, and the errors with file:line:col. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "saga/saga_int.h"
#include "trellis/config.h"

/* Compiles saga `name` of the YAML text: 0 and *out, or the error in err. */
static int compile(const char *yaml, tr__saga_def_t **out, char *err, size_t errlen)
{
    tr_config_t *cfg = NULL;
    *out = NULL;
    err[0] = '\0';
    if (tr_config_load_string("t.yaml", yaml, strlen(yaml), &cfg, err, errlen)) return -1;
    json_t *root = tr_config_root(cfg);
    const char *name = NULL;
    json_t *def = NULL;
    json_object_foreach(root, name, def) break;
    int rc = tr__saga_def_compile(cfg, name, def, out);
    if (rc) snprintf(err, errlen, "%s", tr_config_error(cfg));
    tr_config_free(cfg);
    return rc;
}

static void test_sequential(void **state)
{
    (void)state;
    tr__saga_def_t *d;
    char err[512];
    assert_int_equal(
        compile("s:\n"
                "  steps:\n"
                "    - {name: a, action: {service: x, path: /a},"
                " compensation: {service: x, path: '/u/${steps.a.id}'}}\n"
                "    - {name: b, pivot: true, action: {service: x, path: '/b/${steps.a.id}'}}\n",
                &d, err, sizeof(err)),
        0);
    assert_int_equal(d->nsteps, 2);
    assert_int_equal(d->pivot, 1);
    assert_true(d->steps[0].comp_uses_response);
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(d->steps[i].group_first, i);
        assert_int_equal(d->steps[i].group_end, i + 1);
    }
    tr__saga_def_release(d);
}

static void test_parallel_flattened(void **state)
{
    (void)state;
    tr__saga_def_t *d;
    char err[512];
    assert_int_equal(
        compile("s:\n"
                "  steps:\n"
                "    - {name: a, action: {service: x, path: /a}}\n"
                "    - parallel:\n"
                "        - {name: b1, action: {service: x, path: '/b1/${steps.a.id}'}}\n"
                "        - {name: b2, action: {service: x, path: /b2}}\n"
                "        - {name: b3, action: {service: x, path: /b3},"
                " compensation: {service: x, path: '/u/${steps.b3.id}'}}\n"
                "    - {name: c, pivot: true,"
                " action: {service: x, path: '/c/${steps.b1.id}/${steps.b3.id}'}}\n",
                &d, err, sizeof(err)),
        0);
    assert_int_equal(d->nsteps, 5);
    static const size_t first[] = {0, 1, 1, 1, 4}, end[] = {1, 4, 4, 4, 5};
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(d->steps[i].group_first, first[i]);
        assert_int_equal(d->steps[i].group_end, end[i]);
    }
    assert_string_equal(d->steps[3].name, "b3");
    assert_int_equal(tr__saga_def_step(d, "b2", 2), 2);
    assert_int_equal(d->pivot, 4);
    tr__saga_def_release(d);
}

/* Each bad definition fails naming the problem and where it is. */
static void test_parallel_errors(void **state)
{
    (void)state;
    static const struct {
        const char *yaml, *want;
    } cases[] = {
        {"s:\n  steps:\n    - parallel: [{name: a, action: {service: x, path: /a}}]\n",
         "2 to 16 steps"},
        {"s:\n  steps:\n    - parallel: {name: a}\n", "2 to 16 steps"},
        {"s:\n  steps:\n    - parallel:\n"
         "        - {name: a, action: {service: x, path: /a}}\n"
         "        - {name: b, action: {service: x, path: '/b/${steps.a.id}'}}\n",
         "run at the same time"},
        {"s:\n  steps:\n    - parallel:\n"
         "        - {name: a, action: {service: x, path: /a}}\n"
         "        - {name: b, pivot: true, action: {service: x, path: /b}}\n",
         "pivot must be a step of its own"},
        {"s:\n  steps:\n    - parallel:\n"
         "        - {name: a, action: {service: x, path: /a}}\n"
         "        - {name: a, action: {service: x, path: /b}}\n",
         "defined twice"},
        {"s:\n  steps:\n    - parallel:\n"
         "        - {name: a, action: {service: x, path: /a}}\n"
         "        - {name: b, action: {service: x, path: /b}}\n"
         "      name: extra\n",
         "name"},
        {"s:\n  steps:\n    - {name: a, action: {service: x, path: '/a/${steps.b.id}'}}\n"
         "    - {name: b, action: {service: x, path: /b}}\n",
         "not an earlier step"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tr__saga_def_t *d;
        char err[512];
        if (compile(cases[i].yaml, &d, err, sizeof(err)) == 0) {
            tr__saga_def_release(d);
            fail_msg("case %zu compiled", i);
        }
        if (!strstr(err, cases[i].want))
            fail_msg("case %zu: '%s' lacks '%s'", i, err, cases[i].want);
        if (!strstr(err, "t.yaml:")) fail_msg("case %zu: '%s' has no position", i, err);
    }
}

static void test_too_many_steps(void **state)
{
    (void)state;
    char yaml[16384], err[512];
    size_t n = (size_t)snprintf(yaml, sizeof(yaml), "s:\n  steps:\n");
    for (int g = 0; g < 5; g++) { /* 5 groups of 16: 80 steps, more than 64 */
        n += (size_t)snprintf(yaml + n, sizeof(yaml) - n, "    - parallel:\n");
        for (int k = 0; k < 16; k++)
            n += (size_t)snprintf(yaml + n, sizeof(yaml) - n,
                                  "        - {name: s%d_%d, action: {service: x, path: /a}}\n", g,
                                  k);
    }
    tr__saga_def_t *d;
    assert_int_not_equal(compile(yaml, &d, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "at most 64 steps"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sequential),
        cmocka_unit_test(test_parallel_flattened),
        cmocka_unit_test(test_parallel_errors),
        cmocka_unit_test(test_too_many_steps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
