/* Unit tests for src/resilience/breaker.c: trips, window math, slow calls, half-open, config. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "trellis/breaker.h"
#include "fixture.h"

static tr_breaker_config_t base_cfg(void)
{
    tr_breaker_config_t c;
    tr_breaker_config_init(&c);
    return c;
}

/* One admitted call at `now` that ends at once with `ok` after `ms`. */
static void call(tr_breaker_t *b, uint64_t now, bool ok, uint64_t ms)
{
    tr_breaker_ticket_t t;
    assert_int_equal(tr_breaker_allow(b, now, &t), 0);
    tr_breaker_record(b, &t, now, ok, ms);
}

static void test_consecutive_trip(void **state)
{
    tr_breaker_config_t c = base_cfg();
    c.failure_rate = 0;
    tr_breaker_t b;
    assert_int_equal(tr_breaker_init(&b, &c), 0);
    for (int i = 0; i < 4; i++)
        call(&b, 0, false, 1);
    call(&b, 0, true, 1); /* a success resets the run */
    for (int i = 0; i < 4; i++)
        call(&b, 0, false, 1);
    assert_int_equal(tr_breaker_state(&b, 0), TR_BREAKER_CLOSED);
    call(&b, 0, false, 1);
    assert_int_equal(tr_breaker_state(&b, 0), TR_BREAKER_OPEN);
    tr_breaker_ticket_t t;
    assert_int_equal(tr_breaker_allow(&b, 29999, &t), TR_EBUSY);
    assert_int_equal(b.stats.rejected, 1);
    assert_int_equal(b.stats.opened, 1);
}

static void test_consecutive_off(void **state)
{
    tr_breaker_config_t c = base_cfg();
    c.consecutive_failures = 0;
    c.failure_rate = 0;
    tr_breaker_t b;
    assert_int_equal(tr_breaker_init(&b, &c), 0);
    for (int i = 0; i < 100; i++)
        call(&b, 0, false, 1);
    assert_int_equal(tr_breaker_state(&b, 0), TR_BREAKER_CLOSED);
}

static void test_window_rate(void **state)
{
    tr_breaker_config_t c = base_cfg();
    c.consecutive_failures = 0;
    c.window_size = 10;
    c.minimum_calls = 10;
    c.failure_rate = 0.5;
    tr_breaker_t b;
    assert_int_equal(tr_breaker_init(&b, &c), 0);
    /* 5 failures among 9 calls: below minimum_calls, no verdict yet */
    for (int i = 0; i < 9; i++)
        call(&b, 0, i % 2 == 0, 1); /* F at odd: 4 failures, ok at even: 5 */
    assert_int_equal(b.count, 9);
    assert_int_equal(b.failures, 4);
    assert_int_equal(tr_breaker_state(&b, 0), TR_BREAKER_CLOSED);
    call(&b, 0, true, 1); /* 4 of 10 */
    assert_int_equal(tr_breaker_state(&b, 0), TR_BREAKER_CLOSED);
    /* The window slides: the oldest (a success) falls out, a failure comes in: 5 of 10. */
    call(&b, 0, false, 1);
    assert_int_equal(b.count, 10);
    assert_int_equal(b.failures, 5);
    assert_int_equal(tr_breaker_state(&b, 0), TR_BREAKER_OPEN);
}

static void test_window_evicts_failures(void **state)
{
    tr_breaker_config_t c = base_cfg();
    c.consecutive_failures = 0;
    c.window_size = 4;
    c.minimum_calls = 4;
    c.failure_rate = 0.75;
    tr_breaker_t b;
    assert_int_equal(tr_breaker_init(&b, &c), 0);
    call(&b, 0, false, 1);
    call(&b, 0, false, 1);
    call(&b, 0, true, 1);
    call(&b, 0, true, 1); /* 2 of 4 */
    call(&b, 0, true, 1); /* evicts a failure: 1 of 4 */
    assert_int_equal(b.failures, 1);
    call(&b, 0, false, 1); /* evicts the other failure: still 1 of 4 */
    call(&b, 0, false, 1); /* 2 of 4 */
    assert_int_equal(tr_breaker_state(&b, 0), TR_BREAKER_CLOSED);
    call(&b, 0, false, 1); /* 3 of 4 = 75 % */
    assert_int_equal(tr_breaker_state(&b, 0), TR_BREAKER_OPEN);
}

static void test_slow_calls(void **state)
{
    tr_breaker_config_t c = base_cfg();
    c.consecutive_failures = 0;
    c.failure_rate = 0.5;
    c.window_size = 4;
    c.minimum_calls = 4;
    c.slow_call_ms = 100;
    c.slow_call_rate = 0.75;
    tr_breaker_t b;
    assert_int_equal(tr_breaker_init(&b, &c), 0);
    call(&b, 0, true, 100); /* exactly the threshold is slow */
    call(&b, 0, true, 99);
    call(&b, 0, true, 500);
    assert_int_equal(tr_breaker_state(&b, 0), TR_BREAKER_CLOSED);
    call(&b, 0, true, 5000); /* 3 of 4 slow, all successful */
    assert_int_equal(b.state, TR_BREAKER_OPEN);

    c.slow_call_ms = 0; /* off: slow successes are just successes */
    assert_int_equal(tr_breaker_init(&b, &c), 0);
    for (int i = 0; i < 10; i++)
        call(&b, 0, true, 100000);
    assert_int_equal(tr_breaker_state(&b, 0), TR_BREAKER_CLOSED);
}

static tr_breaker_t open_breaker(uint64_t at)
{
    tr_breaker_config_t c = base_cfg();
    c.open_ms = 1000;
    c.half_open_calls = 2;
    c.half_open_timeout_ms = 500;
    tr_breaker_t b;
    assert_int_equal(tr_breaker_init(&b, &c), 0);
    tr_breaker_force_open(&b, at);
    return b;
}

static void test_half_open_closes(void **state)
{
    tr_breaker_t b = open_breaker(0);
    tr_breaker_ticket_t t1, t2, t3;
    assert_int_equal(tr_breaker_allow(&b, 999, &t1), TR_EBUSY);
    assert_int_equal(tr_breaker_state(&b, 1000), TR_BREAKER_HALF_OPEN);
    assert_int_equal(tr_breaker_allow(&b, 1000, &t1), 0);
    assert_true(t1.probe);
    assert_int_equal(tr_breaker_allow(&b, 1001, &t2), 0);
    assert_int_equal(tr_breaker_allow(&b, 1002, &t3), TR_EBUSY); /* only 2 probes */
    tr_breaker_record(&b, &t1, 1010, true, 10);
    assert_int_equal(b.state, TR_BREAKER_HALF_OPEN);
    tr_breaker_record(&b, &t2, 1020, true, 10);
    assert_int_equal(b.state, TR_BREAKER_CLOSED);
    assert_int_equal(b.stats.closed, 1);
    assert_int_equal(b.count, 0); /* a fresh window */
}

static void test_half_open_failure_reopens(void **state)
{
    tr_breaker_t b = open_breaker(0);
    tr_breaker_ticket_t t1, t2;
    assert_int_equal(tr_breaker_allow(&b, 1000, &t1), 0);
    assert_int_equal(tr_breaker_allow(&b, 1000, &t2), 0);
    tr_breaker_record(&b, &t1, 1100, false, 100);
    assert_int_equal(b.state, TR_BREAKER_OPEN);
    /* The other probe's late success belongs to the previous period: ignored. */
    tr_breaker_record(&b, &t2, 1200, true, 200);
    assert_int_equal(b.state, TR_BREAKER_OPEN);
    assert_int_equal(tr_breaker_state(&b, 2099), TR_BREAKER_OPEN);
    assert_int_equal(tr_breaker_state(&b, 2100), TR_BREAKER_HALF_OPEN);
}

static void test_half_open_never_sticks(void **state)
{
    tr_breaker_t b = open_breaker(0);
    tr_breaker_ticket_t t1, t2;
    /* Probes admitted and never reported (lost). */
    assert_int_equal(tr_breaker_allow(&b, 1000, &t1), 0);
    assert_int_equal(tr_breaker_allow(&b, 1000, &t2), 0);
    assert_int_equal(tr_breaker_state(&b, 1499), TR_BREAKER_HALF_OPEN);
    assert_int_equal(tr_breaker_state(&b, 1500), TR_BREAKER_OPEN);
    assert_int_equal(b.stats.probe_timeouts, 1);
    /* Open for open_ms from the timeout, then probes again. */
    assert_int_equal(tr_breaker_state(&b, 2499), TR_BREAKER_OPEN);
    assert_int_equal(tr_breaker_allow(&b, 2500, &t1), 0);
    assert_true(t1.probe);
    /* A stale ticket from the lost period cannot close it. */
    tr_breaker_record(&b, &t2, 2501, true, 1);
    assert_int_equal(b.succeeded, 0);

    /* Called very late: the timeout and the following open period both passed. */
    tr_breaker_t late = open_breaker(0);
    assert_int_equal(tr_breaker_allow(&late, 1000, &t1), 0);
    assert_int_equal(tr_breaker_state(&late, 1000000), TR_BREAKER_HALF_OPEN);
    assert_int_equal(late.admitted, 0);
}

static void test_half_open_cancel(void **state)
{
    tr_breaker_t b = open_breaker(0);
    tr_breaker_ticket_t t1, t2, t3;
    assert_int_equal(tr_breaker_allow(&b, 1000, &t1), 0);
    assert_int_equal(tr_breaker_allow(&b, 1000, &t2), 0);
    tr_breaker_cancel(&b, &t1);
    assert_int_equal(tr_breaker_allow(&b, 1001, &t3), 0);
    tr_breaker_record(&b, &t2, 1002, true, 1);
    tr_breaker_record(&b, &t3, 1003, true, 1);
    assert_int_equal(b.state, TR_BREAKER_CLOSED);
}

static void test_half_open_slow_probes(void **state)
{
    tr_breaker_config_t c = base_cfg();
    c.open_ms = 10;
    c.half_open_calls = 2;
    c.slow_call_ms = 50;
    c.slow_call_rate = 1.0;
    tr_breaker_t b;
    assert_int_equal(tr_breaker_init(&b, &c), 0);
    tr_breaker_force_open(&b, 0);
    tr_breaker_ticket_t t1, t2;
    assert_int_equal(tr_breaker_allow(&b, 10, &t1), 0);
    assert_int_equal(tr_breaker_allow(&b, 10, &t2), 0);
    tr_breaker_record(&b, &t1, 70, true, 60);
    tr_breaker_record(&b, &t2, 70, true, 60);
    assert_int_equal(b.state, TR_BREAKER_OPEN); /* all probes slow */
    assert_int_equal(tr_breaker_allow(&b, 80, &t1), 0);
    assert_int_equal(tr_breaker_allow(&b, 80, &t2), 0);
    tr_breaker_record(&b, &t1, 90, true, 10);
    tr_breaker_record(&b, &t2, 140, true, 60);
    assert_int_equal(b.state, TR_BREAKER_CLOSED); /* one of two slow is below 100 % */
}

static void test_stale_closed_results_ignored(void **state)
{
    tr_breaker_config_t c = base_cfg();
    c.consecutive_failures = 1;
    tr_breaker_t b;
    assert_int_equal(tr_breaker_init(&b, &c), 0);
    tr_breaker_ticket_t t1, t2;
    assert_int_equal(tr_breaker_allow(&b, 0, &t1), 0);
    assert_int_equal(tr_breaker_allow(&b, 0, &t2), 0);
    tr_breaker_record(&b, &t1, 5, false, 5);
    assert_int_equal(b.state, TR_BREAKER_OPEN);
    tr_breaker_record(&b, &t2, 6, false, 6);
    assert_int_equal(b.stats.opened, 1);
}

static void test_init_rejects(void **state)
{
    tr_breaker_t b;
    tr_breaker_config_t c = base_cfg();
    c.window_size = 0;
    assert_int_equal(tr_breaker_init(&b, &c), UV_EINVAL);
    c = base_cfg();
    c.window_size = TR_BREAKER_MAX_WINDOW + 1;
    assert_int_equal(tr_breaker_init(&b, &c), UV_EINVAL);
    c = base_cfg();
    c.half_open_timeout_ms = 0;
    assert_int_equal(tr_breaker_init(&b, &c), UV_EINVAL);
    c = base_cfg();
    c.half_open_calls = 0;
    assert_int_equal(tr_breaker_init(&b, &c), UV_EINVAL);
    c = base_cfg();
    c.failure_rate = 1.5;
    assert_int_equal(tr_breaker_init(&b, &c), UV_EINVAL);
    assert_int_equal(tr_breaker_init(&b, NULL), 0);
    assert_int_equal(b.cfg.window_size, 20);
    assert_string_equal(tr_breaker_state_name(TR_BREAKER_HALF_OPEN), "half-open");
}

static void test_big_window(void **state)
{
    tr_breaker_config_t c = base_cfg();
    c.consecutive_failures = 0;
    c.window_size = TR_BREAKER_MAX_WINDOW;
    c.minimum_calls = TR_BREAKER_MAX_WINDOW;
    c.failure_rate = 0.5;
    tr_breaker_t b;
    assert_int_equal(tr_breaker_init(&b, &c), 0);
    for (int i = 0; i < 3 * TR_BREAKER_MAX_WINDOW; i++)
        call(&b, 0, i % 3 != 0, 1); /* one third failures */
    assert_int_equal(b.count, TR_BREAKER_MAX_WINDOW);
    assert_in_range(b.failures, 341, 342);
    assert_int_equal(b.state, TR_BREAKER_CLOSED);
}

static void test_config(void **state)
{
    tr_config_t *cfg = fx_load("cb:\n  consecutive_failures: 7\n  failure_rate: 25%\n  window: 40\n"
                               "  minimum_calls: 5\n  slow_call: 2s\n  slow_call_rate: 80%\n"
                               "  open: 1m\n  half_open_calls: 1\n  half_open_timeout: 5s\n");
    tr_breaker_config_t c;
    assert_int_equal(tr_breaker_config_from_json(cfg, fx_get(cfg, "cb"), &c), 0);
    assert_int_equal(c.consecutive_failures, 7);
    assert_true(c.failure_rate > 0.2499 && c.failure_rate < 0.2501);
    assert_int_equal(c.window_size, 40);
    assert_int_equal(c.minimum_calls, 5);
    assert_int_equal(c.slow_call_ms, 2000);
    assert_int_equal(c.open_ms, 60000);
    assert_int_equal(c.half_open_calls, 1);
    assert_int_equal(c.half_open_timeout_ms, 5000);
    tr_breaker_t b;
    assert_int_equal(tr_breaker_init(&b, &c), 0);
    tr_config_free(cfg);

    assert_int_equal(tr_breaker_config_from_json(NULL, NULL, &c), 0);
    assert_int_equal(c.window_size, 20);

    /* a smaller window pulls the default minimum down with it */
    cfg = fx_load("cb: {window: 4}\n");
    assert_int_equal(tr_breaker_config_from_json(cfg, fx_get(cfg, "cb"), &c), 0);
    assert_int_equal(c.minimum_calls, 4);
    tr_config_free(cfg);
}

static void test_config_errors(void **state)
{
    static const struct {
        const char *yaml, *msg;
    } cases[] = {
        {"cb:\n  consecutive_failure: 3\n",
         "t.yaml:2:3: cb.consecutive_failure: unknown key (did you mean "
         "\"consecutive_failures\"?)"},
        {"cb:\n  window: 0\n", "cb.window"},
        {"cb:\n  failure_rate: 150%\n", "cb.failure_rate"},
        {"cb:\n  open: soon\n", "cb.open"},
        {"cb:\n  window: 5\n  minimum_calls: 6\n",
         "t.yaml:3:18: cb.minimum_calls: must not exceed window (5)"},
        {"cb:\n  half_open_timeout: 0\n", "cb.half_open_timeout: must be above 0"},
        {"cb: 5\n", "expected a mapping"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tr_config_t *cfg = fx_load(cases[i].yaml);
        tr_breaker_config_t c;
        assert_int_equal(tr_breaker_config_from_json(cfg, fx_get(cfg, "cb"), &c), TR_ECONFIG);
        if (!strstr(tr_config_error(cfg), cases[i].msg))
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, tr_config_error(cfg), cases[i].msg);
        tr_config_free(cfg);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_consecutive_trip),
        cmocka_unit_test(test_consecutive_off),
        cmocka_unit_test(test_window_rate),
        cmocka_unit_test(test_window_evicts_failures),
        cmocka_unit_test(test_slow_calls),
        cmocka_unit_test(test_half_open_closes),
        cmocka_unit_test(test_half_open_failure_reopens),
        cmocka_unit_test(test_half_open_never_sticks),
        cmocka_unit_test(test_half_open_cancel),
        cmocka_unit_test(test_half_open_slow_probes),
        cmocka_unit_test(test_stale_closed_results_ignored),
        cmocka_unit_test(test_init_rejects),
        cmocka_unit_test(test_big_window),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_config_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
