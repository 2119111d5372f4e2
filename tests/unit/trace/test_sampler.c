/* Unit tests for the samplers: decisions, ratio determinism and accuracy, config. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "trellis/config.h"
#include "trellis/error.h"
#include "trellis/trace.h"

static void test_always(void **state)
{
    uint8_t id[16] = {1};
    tr_sampler_t on = {TR_SAMPLER_ALWAYS_ON, 0}, off = {TR_SAMPLER_ALWAYS_OFF, 1};
    tr_trace_ctx_t p = {.flags = 0};
    assert_true(tr_sampler_should(&on, &p, true, id));
    assert_false(tr_sampler_should(&off, &p, false, id));
    p.flags = 1;
    assert_false(tr_sampler_should(&off, &p, true, id));
}

static double sampled_fraction(const tr_sampler_t *s, int n)
{
    int hits = 0;
    tr_trace_ctx_t c;
    for (int i = 0; i < n; i++) {
        tr_trace_new_ids(&c, true);
        hits += tr_sampler_should(s, NULL, false, c.trace_id);
    }
    return (double)hits / n;
}

static void test_ratio_accuracy(void **state)
{
    const double ratios[] = {0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 1.0};
    for (size_t i = 0; i < sizeof(ratios) / sizeof(ratios[0]); i++) {
        tr_sampler_t s = {TR_SAMPLER_RATIO, ratios[i]};
        double f = sampled_fraction(&s, 100000);
        if (f < ratios[i] - 0.02 || f > ratios[i] + 0.02)
            fail_msg("ratio %.2f sampled %.4f", ratios[i], f);
    }
}

static void test_ratio_deterministic(void **state)
{
    /* Same trace id, same decision, whatever the parent says; monotonic in the ratio. */
    tr_sampler_t lo = {TR_SAMPLER_RATIO, 0.2}, hi = {TR_SAMPLER_RATIO, 0.6};
    tr_trace_ctx_t c, p = {.flags = 1};
    for (int i = 0; i < 10000; i++) {
        tr_trace_new_ids(&c, true);
        bool a = tr_sampler_should(&lo, NULL, false, c.trace_id);
        assert_true(a == tr_sampler_should(&lo, &p, true, c.trace_id));
        if (a) assert_true(tr_sampler_should(&hi, NULL, false, c.trace_id));
    }
    /* The decision depends on the last 7 bytes only. */
    uint8_t id[16] = {0};
    id[15] = 1;
    assert_true(tr_sampler_should(&lo, NULL, false, id));
    memset(id + 9, 0xff, 7);
    assert_false(tr_sampler_should(&hi, NULL, false, id));
    id[0] = 0x55;
    assert_false(tr_sampler_should(&hi, NULL, false, id));
}

static void test_parent_based(void **state)
{
    tr_sampler_t s = {TR_SAMPLER_PARENT_BASED, 0.0}; /* roots never sampled */
    uint8_t id[16] = {9, 9, 9};
    tr_trace_ctx_t p = {.flags = 1};
    assert_true(tr_sampler_should(&s, &p, true, id));
    p.flags = 0;
    assert_false(tr_sampler_should(&s, &p, true, id));
    assert_false(tr_sampler_should(&s, NULL, false, id));
    p.flags = TR_TRACE_HINT_ACCEPT; /* b3 "1" alone */
    assert_true(tr_sampler_should(&s, &p, false, id));
    s.ratio = 1.0;
    assert_true(tr_sampler_should(&s, NULL, false, id));
    p.flags = TR_TRACE_HINT_DENY; /* b3 "0" alone */
    assert_false(tr_sampler_should(&s, &p, false, id));
    tr_sampler_t d = TR_SAMPLER_DEFAULT;
    assert_int_equal(d.kind, TR_SAMPLER_PARENT_BASED);
    assert_true(tr_sampler_should(&d, NULL, false, id));
}

static int load(const char *yaml, tr_config_t **cfg, json_t **tracing)
{
    char err[256];
    assert_int_equal(tr_config_load_string("t.yaml", yaml, strlen(yaml), cfg, err, sizeof(err)), 0);
    *tracing = json_object_get(tr_config_root(*cfg), "tracing");
    return 0;
}

static void test_config(void **state)
{
    tr_config_t *cfg;
    json_t *t;
    tr_sampler_t s;
    load("tracing: {sampler: ratio, ratio: 10%}\n", &cfg, &t);
    assert_int_equal(tr_sampler_config(cfg, t, &s), 0);
    assert_int_equal(s.kind, TR_SAMPLER_RATIO);
    assert_true(s.ratio > 0.0999 && s.ratio < 0.1001);
    tr_config_free(cfg);

    load("tracing: {}\n", &cfg, &t);
    assert_int_equal(tr_sampler_config(cfg, t, &s), 0);
    assert_int_equal(s.kind, TR_SAMPLER_PARENT_BASED);
    assert_true(s.ratio == 1.0);
    assert_int_equal(tr_sampler_config(cfg, NULL, &s), 0);
    tr_config_free(cfg);

    load("tracing:\n  sampler: sometimes\n", &cfg, &t);
    assert_int_equal(tr_sampler_config(cfg, t, &s), TR_ECONFIG);
    assert_non_null(strstr(tr_config_error(cfg), "t.yaml:2"));
    tr_config_free(cfg);

    load("tracing: {sampler: always_off, ratio: 150%}\n", &cfg, &t);
    assert_int_equal(tr_sampler_config(cfg, t, &s), TR_ECONFIG);
    tr_config_free(cfg);

    assert_int_equal(tr_sampler_kind_parse("always_on"), TR_SAMPLER_ALWAYS_ON);
    assert_int_equal(tr_sampler_kind_parse("nope"), TR_EPARSE);
    assert_string_equal(tr_sampler_kind_name(TR_SAMPLER_RATIO), "ratio");
    assert_string_equal(tr_sampler_kind_name(42), "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_always),
        cmocka_unit_test(test_ratio_accuracy),
        cmocka_unit_test(test_ratio_deterministic),
        cmocka_unit_test(test_parent_based),
        cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
