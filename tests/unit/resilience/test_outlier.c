/* Unit tests for src/resilience/outlier.c: thresholds, max_ejection_percent, growth, readmission.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "trellis/outlier.h"
#include "fixture.h"

static void fail_n(tr_outlier_pool_t *p, tr_outlier_endpoint_t *e, uint64_t now, int n, int status)
{
    for (int i = 0; i < n; i++)
        tr_outlier_record(p, e, now, TR_OUTLIER_STATUS, status);
}

static void test_consecutive_5xx(void **state)
{
    tr_outlier_pool_t p;
    tr_outlier_pool_init(&p, NULL, 10);
    tr_outlier_endpoint_t e;
    tr_outlier_endpoint_init(&e);
    fail_n(&p, &e, 0, 4, 500);
    tr_outlier_record(&p, &e, 0, TR_OUTLIER_STATUS, 404); /* a 4xx is a success here */
    fail_n(&p, &e, 0, 4, 500);
    assert_true(tr_outlier_available(&p, &e, 0));
    assert_true(tr_outlier_record(&p, &e, 0, TR_OUTLIER_STATUS, 500));
    assert_false(tr_outlier_available(&p, &e, 0));
    assert_int_equal(p.ejected, 1);
    assert_int_equal(p.ejections_total, 1);
}

static void test_gateway_failures(void **state)
{
    tr_outlier_config_t c;
    tr_outlier_config_init(&c);
    c.consecutive_5xx = 0;
    c.consecutive_gateway_failure = 3;
    tr_outlier_pool_t p;
    tr_outlier_pool_init(&p, &c, 10);
    tr_outlier_endpoint_t e;
    tr_outlier_endpoint_init(&e);
    tr_outlier_record(&p, &e, 0, TR_OUTLIER_STATUS, 502);
    tr_outlier_record(&p, &e, 0, TR_OUTLIER_CONNECT_FAILURE, 0);
    tr_outlier_record(&p, &e, 0, TR_OUTLIER_STATUS, 500); /* 5xx but not a gateway error */
    assert_int_equal(e.consecutive_gateway, 0);
    assert_int_equal(e.consecutive_5xx, 3);
    tr_outlier_record(&p, &e, 0, TR_OUTLIER_STATUS, 503);
    tr_outlier_record(&p, &e, 0, TR_OUTLIER_TIMEOUT, 0);
    assert_false(e.ejected);
    assert_true(tr_outlier_record(&p, &e, 0, TR_OUTLIER_STATUS, 504));
}

static void test_success_resets(void **state)
{
    tr_outlier_pool_t p;
    tr_outlier_pool_init(&p, NULL, 10);
    tr_outlier_endpoint_t e;
    tr_outlier_endpoint_init(&e);
    for (int i = 0; i < 100; i++) {
        fail_n(&p, &e, 0, 4, 503);
        tr_outlier_record(&p, &e, 0, TR_OUTLIER_STATUS, 200);
    }
    assert_false(e.ejected);
    assert_int_equal(e.consecutive_5xx, 0);
}

static void test_max_ejection_percent(void **state)
{
    tr_outlier_config_t c;
    tr_outlier_config_init(&c);
    c.max_ejection_percent = 0.2;
    tr_outlier_pool_t p;
    tr_outlier_pool_init(&p, &c, 10);
    tr_outlier_endpoint_t e[10];
    for (int i = 0; i < 10; i++) {
        tr_outlier_endpoint_init(&e[i]);
        fail_n(&p, &e[i], 0, 5, 500);
    }
    assert_int_equal(p.ejected, 2); /* 20 % of 10 */
    assert_int_equal(p.ejections_overflow, 8);
    assert_true(e[0].ejected && e[1].ejected && !e[2].ejected);

    /* one endpoint, 10 %: Envoy still ejects one */
    tr_outlier_config_init(&c);
    tr_outlier_pool_init(&p, &c, 1);
    tr_outlier_endpoint_init(&e[0]);
    fail_n(&p, &e[0], 0, 5, 500);
    assert_int_equal(p.ejected, 1);
    /* three endpoints, 10 %: the first, never a second */
    tr_outlier_pool_init(&p, &c, 3);
    for (int i = 0; i < 3; i++) {
        tr_outlier_endpoint_init(&e[i]);
        fail_n(&p, &e[i], 0, 5, 500);
    }
    assert_int_equal(p.ejected, 1);
    /* 50 % of 3 allows 1 (2 would be 66 %) */
    c.max_ejection_percent = 0.5;
    tr_outlier_pool_init(&p, &c, 3);
    for (int i = 0; i < 3; i++) {
        tr_outlier_endpoint_init(&e[i]);
        fail_n(&p, &e[i], 0, 5, 500);
    }
    assert_int_equal(p.ejected, 1);
    /* 100 % of 2: both */
    c.max_ejection_percent = 1.0;
    tr_outlier_pool_init(&p, &c, 2);
    for (int i = 0; i < 2; i++) {
        tr_outlier_endpoint_init(&e[i]);
        fail_n(&p, &e[i], 0, 5, 500);
    }
    assert_int_equal(p.ejected, 2);
    /* empty pool: nothing */
    tr_outlier_pool_init(&p, &c, 0);
    tr_outlier_endpoint_init(&e[0]);
    fail_n(&p, &e[0], 0, 5, 500);
    assert_int_equal(p.ejected, 0);
}

static void test_growth_cap_readmission(void **state)
{
    tr_outlier_config_t c;
    tr_outlier_config_init(&c);
    c.base_ejection_ms = 30000;
    c.max_ejection_ms = 100000;
    c.interval_ms = 10000;
    tr_outlier_pool_t p;
    tr_outlier_pool_init(&p, &c, 1);
    tr_outlier_endpoint_t e;
    tr_outlier_endpoint_init(&e);
    uint64_t now = 1000;
    static const uint64_t want[] = {30000, 60000, 90000, 100000, 100000};
    for (int i = 0; i < 5; i++) {
        fail_n(&p, &e, now, 5, 500);
        assert_true(e.ejected);
        assert_int_equal(e.ejected_until - now, want[i]);
        assert_false(tr_outlier_available(&p, &e, e.ejected_until - 1));
        now = e.ejected_until;
        assert_true(tr_outlier_available(&p, &e, now));
        assert_int_equal(p.ejected, 0);
        assert_int_equal(e.consecutive_5xx, 0);
    }
    assert_int_equal(p.readmissions, 5);
    /* Healthy for two intervals: the multiplier drops by two (4 → 2 → next is 3). */
    now += 2 * c.interval_ms;
    fail_n(&p, &e, now, 5, 500);
    assert_int_equal(e.ejected_until - now, 90000);
    /* A long healthy spell brings it back to the base. */
    now = e.ejected_until;
    assert_true(tr_outlier_available(&p, &e, now));
    now += 1000000;
    fail_n(&p, &e, now, 5, 500);
    assert_int_equal(e.ejected_until - now, 30000);
}

static void test_remove_and_inflight(void **state)
{
    tr_outlier_pool_t p;
    tr_outlier_pool_init(&p, NULL, 2);
    tr_outlier_endpoint_t e;
    tr_outlier_endpoint_init(&e);
    fail_n(&p, &e, 0, 5, 500);
    /* results of calls in flight at ejection do not eject again */
    assert_false(tr_outlier_record(&p, &e, 1, TR_OUTLIER_STATUS, 500));
    assert_int_equal(p.ejections_total, 1);
    tr_outlier_endpoint_remove(&p, &e);
    assert_int_equal(p.ejected, 0);
    tr_outlier_endpoint_remove(&p, &e); /* twice is harmless */
    assert_int_equal(p.ejected, 0);
    tr_outlier_pool_resize(&p, 1);
    assert_int_equal(p.endpoints, 1);
}

static void test_config(void **state)
{
    tr_config_t *cfg = fx_load("o:\n  consecutive_5xx: 3\n  consecutive_gateway_failure: 0\n"
                               "  base_ejection_time: 10s\n  max_ejection_time: 1m\n"
                               "  max_ejection_percent: 50%\n  interval: 5s\n"
                               "bad1: {consecutive_5x: 1}\n"
                               "bad2: {base_ejection_time: 10m}\n"
                               "bad3: {max_ejection_percent: 2}\n");
    tr_outlier_config_t c;
    assert_int_equal(tr_outlier_config_from_json(cfg, fx_get(cfg, "o"), &c), 0);
    assert_int_equal(c.consecutive_5xx, 3);
    assert_int_equal(c.consecutive_gateway_failure, 0);
    assert_int_equal(c.base_ejection_ms, 10000);
    assert_int_equal(c.max_ejection_ms, 60000);
    assert_true(c.max_ejection_percent == 0.5);
    assert_int_equal(c.interval_ms, 5000);
    assert_int_equal(tr_outlier_config_from_json(cfg, fx_get(cfg, "bad1"), &c), TR_ECONFIG);
    assert_non_null(strstr(tr_config_error(cfg), "bad1.consecutive_5x: unknown key"));
    assert_int_equal(tr_outlier_config_from_json(cfg, fx_get(cfg, "bad2"), &c), TR_ECONFIG);
    assert_non_null(strstr(tr_config_error(cfg), "max_ejection_time: must not be below"));
    assert_int_equal(tr_outlier_config_from_json(cfg, fx_get(cfg, "bad3"), &c), TR_ECONFIG);
    assert_non_null(strstr(tr_config_error(cfg), "bad3.max_ejection_percent"));
    assert_int_equal(tr_outlier_config_from_json(cfg, NULL, &c), 0);
    assert_int_equal(c.max_ejection_ms, 300000);
    tr_config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_consecutive_5xx),
        cmocka_unit_test(test_gateway_failures),
        cmocka_unit_test(test_success_resets),
        cmocka_unit_test(test_max_ejection_percent),
        cmocka_unit_test(test_growth_cap_readmission),
        cmocka_unit_test(test_remove_and_inflight),
        cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
