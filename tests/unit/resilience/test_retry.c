/* Unit tests for src/resilience/retry.c: vocabulary, decisions, backoff, Retry-After, budget. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "trellis/retry.h"
#include "fixture.h"

static tr_retry_outcome_t status(int s)
{
    return (tr_retry_outcome_t){.kind = TR_RETRY_STATUS, .status = s, .retry_after_ms = -1};
}

static tr_retry_outcome_t local(tr_retry_outcome_kind_t k)
{
    return (tr_retry_outcome_t){.kind = k, .retry_after_ms = -1};
}

static tr_retry_policy_t policy(const char *on, uint32_t attempts)
{
    tr_retry_policy_t p;
    tr_retry_policy_init(&p);
    assert_int_equal(tr_retry_on_parse(on, &p.retry_on, NULL, NULL), 0);
    p.attempts = attempts;
    return p;
}

static void test_vocabulary(void **state)
{
    uint32_t bits = 0;
    const char *bad = NULL;
    size_t badlen = 0;
    assert_int_equal(tr_retry_on_parse("5xx", &bits, NULL, NULL), 0);
    assert_int_equal(bits, TR_RETRY_ON_5XX);
    assert_int_equal(tr_retry_on_parse(" gateway-error , reset,connect-failure,retriable-4xx,"
                                       "retriable-status-codes",
                                       &bits, NULL, NULL),
                     0);
    assert_int_equal(bits, TR_RETRY_ON_GATEWAY_ERROR | TR_RETRY_ON_RESET |
                               TR_RETRY_ON_CONNECT_FAILURE | TR_RETRY_ON_RETRIABLE_4XX |
                               TR_RETRY_ON_RETRIABLE_STATUS_CODES);
    bits = 77;
    assert_int_equal(tr_retry_on_parse("5xx,connect-failures", &bits, &bad, &badlen), TR_EPARSE);
    assert_int_equal(bits, 77); /* untouched on error */
    assert_int_equal(badlen, strlen("connect-failures"));
    assert_memory_equal(bad, "connect-failures", badlen);
    assert_int_equal(tr_retry_on_parse("5xx,,reset", &bits, &bad, &badlen), TR_EPARSE);
    assert_int_equal(badlen, 0);
    assert_int_equal(tr_retry_on_parse("", &bits, &bad, &badlen), TR_EPARSE);
    assert_int_equal(tr_retry_on_parse("5xx,", &bits, &bad, &badlen), TR_EPARSE);
}

static void test_attempts_one_never_retries(void **state)
{
    tr_retry_policy_t p = policy("5xx,connect-failure", 1);
    tr_retry_outcome_t o = status(503);
    assert_false(tr_retry_should(&p, "GET", &o, 1));
    o = local(TR_RETRY_CONNECT_FAILURE);
    assert_false(tr_retry_should(&p, "GET", &o, 1));
    p.attempts = 3;
    assert_true(tr_retry_should(&p, "GET", &o, 1));
    assert_true(tr_retry_should(&p, "GET", &o, 2));
    assert_false(tr_retry_should(&p, "GET", &o, 3));
}

static void test_statuses(void **state)
{
    tr_retry_policy_t p = policy("5xx", 2);
    tr_retry_outcome_t o;
    for (int s = 200; s < 600; s++) {
        o = status(s);
        assert_int_equal(tr_retry_should(&p, "GET", &o, 1), s >= 500);
    }
    p = policy("gateway-error", 2);
    for (int s = 400; s < 600; s++) {
        o = status(s);
        assert_int_equal(tr_retry_should(&p, "GET", &o, 1), s >= 502 && s <= 504);
    }
    /* 4xx: never, except 409 under retriable-4xx and listed codes. */
    p = policy("5xx,gateway-error,reset,connect-failure,retriable-4xx", 2);
    for (int s = 400; s < 500; s++) {
        o = status(s);
        assert_int_equal(tr_retry_should(&p, "GET", &o, 1), s == 409);
    }
    p = policy("retriable-status-codes", 2);
    p.status_codes[0] = 429;
    p.status_codes[1] = 503;
    p.n_status_codes = 2;
    for (int s = 400; s < 600; s++) {
        o = status(s);
        assert_int_equal(tr_retry_should(&p, "GET", &o, 1), s == 429 || s == 503);
    }
    p.retry_on = TR_RETRY_ON_5XX; /* the list alone does nothing without its word */
    o = status(429);
    assert_false(tr_retry_should(&p, "GET", &o, 1));
}

static void test_local_failures(void **state)
{
    tr_retry_outcome_t cf = local(TR_RETRY_CONNECT_FAILURE), rst = local(TR_RETRY_RESET),
                       to = local(TR_RETRY_TIMEOUT);
    tr_retry_policy_t p = policy("connect-failure", 2);
    assert_true(tr_retry_should(&p, "GET", &cf, 1));
    assert_false(tr_retry_should(&p, "GET", &rst, 1));
    assert_false(tr_retry_should(&p, "GET", &to, 1));
    p = policy("reset", 2);
    assert_true(tr_retry_should(&p, "GET", &cf, 1));
    assert_true(tr_retry_should(&p, "GET", &rst, 1));
    assert_false(tr_retry_should(&p, "GET", &to, 1));
    p = policy("5xx", 2);
    assert_true(tr_retry_should(&p, "GET", &cf, 1));
    assert_true(tr_retry_should(&p, "GET", &rst, 1));
    assert_true(tr_retry_should(&p, "GET", &to, 1));
    p = policy("retriable-4xx", 2);
    assert_false(tr_retry_should(&p, "GET", &cf, 1));
}

static void test_idempotency(void **state)
{
    tr_retry_policy_t p = policy("5xx", 3);
    tr_retry_outcome_t o = status(503), cf = local(TR_RETRY_CONNECT_FAILURE),
                       rst = local(TR_RETRY_RESET);
    static const char *const idem[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
    for (size_t i = 0; i < 6; i++)
        assert_true(tr_retry_should(&p, idem[i], &o, 1));
    assert_false(tr_retry_should(&p, "POST", &o, 1));
    assert_false(tr_retry_should(&p, "PATCH", &rst, 1));
    assert_false(tr_retry_should(&p, "get", &o, 1));  /* methods are case-sensitive */
    assert_true(tr_retry_should(&p, "POST", &cf, 1)); /* nothing was sent */
    p.allow_non_idempotent = true;
    assert_true(tr_retry_should(&p, "POST", &o, 1));
    o = status(400);
    assert_false(tr_retry_should(&p, "POST", &o, 1));
}

static void test_backoff(void **state)
{
    tr_retry_policy_t p;
    tr_retry_policy_init(&p);
    assert_int_equal(p.backoff_base_ms, 25);
    assert_int_equal(p.backoff_max_ms, 250);
    /* upper bounds: 25, 75, 175, 250 (capped), 250 ... */
    static const uint64_t upper[] = {25, 75, 175, 250, 250, 250};
    for (uint32_t r = 1; r <= 6; r++) {
        assert_int_equal(tr_retry_backoff_ms(&p, r, upper[r - 1]), upper[r - 1]);
        assert_int_equal(tr_retry_backoff_ms(&p, r, upper[r - 1] + 1), 0);
        assert_int_equal(tr_retry_backoff_ms(&p, r, 0), 0);
        for (uint64_t rnd = 0; rnd < 1000; rnd += 7)
            assert_true(tr_retry_backoff_ms(&p, r, rnd * 2654435761u) <= upper[r - 1]);
    }
    assert_int_equal(tr_retry_backoff_ms(&p, 1000, UINT64_MAX), UINT64_MAX % 251);
    assert_int_equal(tr_retry_backoff_ms(&p, 0, 12345), 0);
}

static void test_retry_after(void **state)
{
    uint64_t ms;
    int64_t now = 784111777; /* Sun, 06 Nov 1994 08:49:37 GMT */
    assert_int_equal(tr_retry_after_parse("120", 3, now, &ms), 0);
    assert_int_equal(ms, 120000);
    assert_int_equal(tr_retry_after_parse("  0 ", 4, now, &ms), 0);
    assert_int_equal(ms, 0);
    const char *d = "Sun, 06 Nov 1994 08:50:07 GMT";
    assert_int_equal(tr_retry_after_parse(d, strlen(d), now, &ms), 0);
    assert_int_equal(ms, 30000);
    d = "Sunday, 06-Nov-94 08:49:47 GMT";
    assert_int_equal(tr_retry_after_parse(d, strlen(d), now, &ms), 0);
    assert_int_equal(ms, 10000);
    d = "Sun Nov  6 08:49:57 1994";
    assert_int_equal(tr_retry_after_parse(d, strlen(d), now, &ms), 0);
    assert_int_equal(ms, 20000);
    d = "Sun, 06 Nov 1994 08:00:00 GMT"; /* in the past */
    assert_int_equal(tr_retry_after_parse(d, strlen(d), now, &ms), 0);
    assert_int_equal(ms, 0);
    d = "99999999999999999999999";
    assert_int_equal(tr_retry_after_parse(d, strlen(d), now, &ms), 0);
    assert_true(ms > 1000ull * 1000 * 1000 * 1000);
    static const char *const bad[] = {"",
                                      "  ",
                                      "-1",
                                      "1.5",
                                      "12s",
                                      "soon",
                                      "Sun, 06 Nov 1994 08:49:37 UTC",
                                      "Sun, 32 Nov 1994 08:49:37 GMT",
                                      "Sun, 06 Foo 1994 08:49:37 GMT",
                                      "Sun, 06 Nov 1994 08:49:37 GMTx"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (tr_retry_after_parse(bad[i], strlen(bad[i]), now, &ms) != TR_EPARSE)
            fail_msg("accepted \"%s\"", bad[i]);
}

static void test_delay(void **state)
{
    tr_retry_policy_t p;
    tr_retry_policy_init(&p);
    uint64_t d;
    tr_retry_outcome_t o = status(503);
    o.retry_after_ms = 2000;
    assert_int_equal(tr_retry_delay_ms(&p, 1, 10, &o, &d), 0);
    assert_int_equal(d, 2000);
    o.status = 429;
    o.retry_after_ms = 0;
    assert_int_equal(tr_retry_delay_ms(&p, 1, 10, &o, &d), 0);
    assert_int_equal(d, 10); /* backoff wins over a shorter Retry-After */
    o.retry_after_ms = 10001;
    assert_int_equal(tr_retry_delay_ms(&p, 1, 10, &o, &d), TR_EBUSY);
    o.status = 502; /* Retry-After only counts on 429 and 503 */
    assert_int_equal(tr_retry_delay_ms(&p, 1, 10, &o, &d), 0);
    assert_int_equal(d, 10);
}

static void test_budget(void **state)
{
    tr_retry_budget_t b;
    tr_retry_budget_init(&b, 0.2, 3);
    /* no active requests: the minimum still allows 3 */
    assert_true(tr_retry_budget_allow(&b));
    assert_true(tr_retry_budget_allow(&b));
    assert_true(tr_retry_budget_allow(&b));
    assert_false(tr_retry_budget_allow(&b));
    assert_int_equal(atomic_load(&b.rejected), 1);
    for (int i = 0; i < 20; i++)
        tr_retry_budget_request_begin(&b);
    assert_true(tr_retry_budget_allow(&b)); /* 20 % of 20 = 4 */
    assert_false(tr_retry_budget_allow(&b));
    tr_retry_budget_retry_end(&b);
    assert_true(tr_retry_budget_allow(&b));
    for (int i = 0; i < 20; i++)
        tr_retry_budget_request_end(&b);
    assert_false(tr_retry_budget_allow(&b));
    assert_int_equal(atomic_load(&b.retries_active), 4);
}

static void test_config(void **state)
{
    tr_config_t *cfg = fx_load("r:\n  retry_on: 5xx, reset\n  retriable_status_codes: [429, 503]\n"
                               "  attempts: 3\n  allow_non_idempotent: true\n  backoff_base: 10ms\n"
                               "  backoff_max: 1s\n  retry_after_max: 30s\n"
                               "l:\n  retry_on: [gateway-error, connect-failure]\n");
    tr_retry_policy_t p;
    assert_int_equal(tr_retry_config_from_json(cfg, fx_get(cfg, "r"), &p), 0);
    assert_int_equal(p.retry_on,
                     TR_RETRY_ON_5XX | TR_RETRY_ON_RESET | TR_RETRY_ON_RETRIABLE_STATUS_CODES);
    assert_int_equal(p.n_status_codes, 2);
    assert_int_equal(p.status_codes[1], 503);
    assert_int_equal(p.attempts, 3);
    assert_true(p.allow_non_idempotent);
    assert_int_equal(p.backoff_base_ms, 10);
    assert_int_equal(p.backoff_max_ms, 1000);
    assert_int_equal(p.retry_after_max_ms, 30000);
    assert_int_equal(tr_retry_config_from_json(cfg, fx_get(cfg, "l"), &p), 0);
    assert_int_equal(p.retry_on, TR_RETRY_ON_GATEWAY_ERROR | TR_RETRY_ON_CONNECT_FAILURE);
    assert_int_equal(p.attempts, 2);
    tr_config_free(cfg);

    double pct;
    uint32_t min;
    cfg = fx_load("b: {percent: 50%, min_concurrency: 10}\n");
    assert_int_equal(tr_retry_budget_config_from_json(cfg, fx_get(cfg, "b"), &pct, &min), 0);
    assert_true(pct == 0.5 && min == 10);
    assert_int_equal(tr_retry_budget_config_from_json(cfg, NULL, &pct, &min), 0);
    assert_true(pct == 0.2 && min == 3);
    tr_config_free(cfg);
}

static void test_config_errors(void **state)
{
    static const struct {
        const char *yaml, *msg;
    } cases[] = {
        {"r:\n  retry_on: 5xx,gateway-errors\n",
         "t.yaml:2:13: r.retry_on: unknown retry condition \"gateway-errors\" (expected one of: "
         "5xx, gateway-error, reset, connect-failure, retriable-4xx, retriable-status-codes)"},
        {"r:\n  retry_on: [5xx, bogus]\n", "t.yaml:2:19: r.retry_on[1]: unknown retry condition "
                                           "\"bogus\""},
        {"r:\n  retry_on: 5\n", "r.retry_on: expected a comma-separated list"},
        {"r:\n  retry_on: \"5xx,\"\n", "empty retry condition"},
        {"r:\n  attempts: 0\n", "r.attempts"},
        {"r:\n  retriable_status_codes: [200]\n", "expected an HTTP status code from 400 to 599"},
        {"r:\n  backoff_base: 1s\n  backoff_max: 100ms\n", "r.backoff_max: must not be below"},
        {"r:\n  retries: 3\n", "r.retries: unknown key"},
        {"r: [1]\n", "expected a mapping"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tr_config_t *cfg = fx_load(cases[i].yaml);
        tr_retry_policy_t p;
        assert_int_equal(tr_retry_config_from_json(cfg, fx_get(cfg, "r"), &p), TR_ECONFIG);
        if (!strstr(tr_config_error(cfg), cases[i].msg))
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, tr_config_error(cfg), cases[i].msg);
        tr_config_free(cfg);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vocabulary),    cmocka_unit_test(test_attempts_one_never_retries),
        cmocka_unit_test(test_statuses),      cmocka_unit_test(test_local_failures),
        cmocka_unit_test(test_idempotency),   cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_retry_after),   cmocka_unit_test(test_delay),
        cmocka_unit_test(test_budget),        cmocka_unit_test(test_config),
        cmocka_unit_test(test_config_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
