/* Unit tests for src/resilience/ratelimit.c: GCRA math, exactness under threads, keyed table. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "trellis/ratelimit.h"
#include "fixture.h"

static const uint8_t seed[16] = "0123456789abcdef";

static tr_ratelimit_config_t rate(double count, uint64_t period_ms, uint32_t burst)
{
    tr_ratelimit_config_t c;
    tr_ratelimit_config_init(&c);
    c.count = count;
    c.period_ms = period_ms;
    c.burst = burst;
    return c;
}

static void test_burst_then_refill(void **state)
{
    tr_ratelimit_config_t c = rate(100, 60000, 0); /* 100/minute, burst 100 */
    tr_ratelimit_t rl;
    assert_int_equal(tr_ratelimit_init(&rl, &c), 0);
    tr_ratelimit_result_t r;
    uint64_t now = 5000000;
    for (int i = 0; i < 100; i++) {
        assert_int_equal(tr_ratelimit_take(&rl, now, &r), TR_RATELIMIT_ALLOWED);
        assert_int_equal(r.limit, 100);
        assert_int_equal(r.remaining, 99 - i);
    }
    assert_int_equal(r.reset_s, 60); /* empty: a full minute to refill */
    assert_int_equal(tr_ratelimit_take(&rl, now, &r), TR_RATELIMIT_LIMITED);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(r.retry_after_s, 1); /* one request every 600 ms */
    assert_int_equal(r.reset_s, 60);
    assert_int_equal(tr_ratelimit_take(&rl, now + 599, &r), TR_RATELIMIT_LIMITED);
    assert_int_equal(tr_ratelimit_take(&rl, now + 600, &r), TR_RATELIMIT_ALLOWED);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(tr_ratelimit_take(&rl, now + 600, &r), TR_RATELIMIT_LIMITED);
    /* 30 s later, 50 more */
    int n = 0;
    while (tr_ratelimit_take(&rl, now + 30600, NULL) == TR_RATELIMIT_ALLOWED)
        n++;
    assert_int_equal(n, 50);
    /* idle for long: full again, never more than the burst */
    n = 0;
    while (tr_ratelimit_take(&rl, now + 10000000, NULL) == TR_RATELIMIT_ALLOWED)
        n++;
    assert_int_equal(n, 100);
}

static void test_small_burst_retry_after(void **state)
{
    tr_ratelimit_config_t c = rate(1, 10000, 2); /* 1 per 10 s, burst 2 */
    tr_ratelimit_t rl;
    assert_int_equal(tr_ratelimit_init(&rl, &c), 0);
    tr_ratelimit_result_t r;
    assert_int_equal(tr_ratelimit_take(&rl, 0, &r), TR_RATELIMIT_ALLOWED);
    assert_int_equal(r.remaining, 1);
    assert_int_equal(r.reset_s, 10);
    assert_int_equal(tr_ratelimit_take(&rl, 0, &r), TR_RATELIMIT_ALLOWED);
    assert_int_equal(tr_ratelimit_take(&rl, 2500, &r), TR_RATELIMIT_LIMITED);
    assert_int_equal(r.retry_after_s, 8); /* 7.5 s rounded up */
    assert_int_equal(r.reset_s, 18);
}

static void test_init_rejects(void **state)
{
    tr_ratelimit_t rl;
    tr_ratelimit_config_t c = rate(0, 1000, 0);
    assert_int_equal(tr_ratelimit_init(&rl, &c), UV_EINVAL);
    c = rate(10, 0, 0);
    assert_int_equal(tr_ratelimit_init(&rl, &c), UV_EINVAL);
    c = rate(1e10, 1, 0); /* below a nanosecond apart */
    assert_int_equal(tr_ratelimit_init(&rl, &c), UV_EINVAL);
    c = rate(2.5, 1000, 0);
    assert_int_equal(tr_ratelimit_init(&rl, &c), 0);
    assert_int_equal(rl.burst, 3);
    assert_null(tr_ratelimit_table_new(&(tr_ratelimit_config_t){.count = 0}, 8, seed));
}

/* ---- threads ---- */

#define THREADS 8
#define TRIES   2000

static struct {
    tr_ratelimit_t rl;
    tr_ratelimit_table_t *table;
    uint64_t now;
    _Atomic int allowed;
    _Atomic int go;
} race;

static void *hammer_bucket(void *arg)
{
    while (!atomic_load(&race.go)) {
    }
    for (int i = 0; i < TRIES; i++)
        if (tr_ratelimit_take(&race.rl, race.now, NULL) == TR_RATELIMIT_ALLOWED)
            atomic_fetch_add(&race.allowed, 1);
    return NULL;
}

static void *hammer_key(void *arg)
{
    while (!atomic_load(&race.go)) {
    }
    for (int i = 0; i < TRIES; i++)
        if (tr_ratelimit_table_take(race.table, "alice", 5, race.now, NULL) == TR_RATELIMIT_ALLOWED)
            atomic_fetch_add(&race.allowed, 1);
    return NULL;
}

static int run_threads(void *(*fn)(void *))
{
    pthread_t t[THREADS];
    atomic_store(&race.allowed, 0);
    atomic_store(&race.go, 0);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, fn, NULL), 0);
    atomic_store(&race.go, 1);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    return atomic_load(&race.allowed);
}

static void test_exact_under_threads(void **state)
{
    tr_ratelimit_config_t c = rate(100, 60000, 0);
    for (int round = 0; round < 20; round++) {
        assert_int_equal(tr_ratelimit_init(&race.rl, &c), 0);
        race.now = 1000 + (uint64_t)round;
        assert_int_equal(run_threads(hammer_bucket), 100);
    }
    /* a second burst after exactly one period */
    race.now += 60000;
    assert_int_equal(run_threads(hammer_bucket), 100);
}

static void test_keyed_exact_under_threads(void **state)
{
    tr_ratelimit_config_t c = rate(100, 60000, 0);
    for (int round = 0; round < 20; round++) {
        race.table = tr_ratelimit_table_new(&c, 64, NULL);
        race.now = 1000;
        /* the first request of every thread races to insert the same new key */
        assert_int_equal(run_threads(hammer_key), 100);
        tr_ratelimit_table_free(&race.table);
        assert_null(race.table);
    }
}

/* ---- keyed table ---- */

static void test_keys_are_separate(void **state)
{
    tr_ratelimit_config_t c = rate(2, 1000, 0);
    tr_ratelimit_table_t *t = tr_ratelimit_table_new(&c, 1000, seed);
    assert_int_equal(tr_ratelimit_table_capacity(t), 1024);
    char key[128];
    for (int k = 0; k < 200; k++) {
        int n = snprintf(key, sizeof(key), "client-%d", k);
        for (int i = 0; i < 2; i++)
            assert_int_equal(tr_ratelimit_table_take(t, key, (size_t)n, 0, NULL),
                             TR_RATELIMIT_ALLOWED);
        assert_int_equal(tr_ratelimit_table_take(t, key, (size_t)n, 0, NULL), TR_RATELIMIT_LIMITED);
    }
    /* long keys and keys that differ only after 64 bytes */
    memset(key, 'x', sizeof(key));
    assert_int_equal(tr_ratelimit_table_take(t, key, 128, 0, NULL), TR_RATELIMIT_ALLOWED);
    key[127] = 'y';
    assert_int_equal(tr_ratelimit_table_take(t, key, 128, 0, NULL), TR_RATELIMIT_ALLOWED);
    assert_int_equal(tr_ratelimit_table_take(t, key, 128, 0, NULL), TR_RATELIMIT_ALLOWED);
    assert_int_equal(tr_ratelimit_table_take(t, key, 128, 0, NULL), TR_RATELIMIT_LIMITED);
    assert_int_equal(tr_ratelimit_table_take(t, "", 0, 0, NULL), TR_RATELIMIT_ALLOWED);
    assert_int_equal(tr_ratelimit_table_full_count(t), 0);
    tr_ratelimit_table_free(&t);
}

static void test_table_full_and_reuse(void **state)
{
    tr_ratelimit_config_t c = rate(1, 1000, 0); /* one per second */
    tr_ratelimit_table_t *t = tr_ratelimit_table_new(&c, 1, seed);
    assert_int_equal(tr_ratelimit_table_capacity(t), 8); /* one window: every key competes */
    char key[16];
    for (int k = 0; k < 8; k++) {
        int n = snprintf(key, sizeof(key), "k%d", k);
        assert_int_equal(tr_ratelimit_table_take(t, key, (size_t)n, 0, NULL), TR_RATELIMIT_ALLOWED);
    }
    /* eight busy buckets: a ninth key is refused, distinctly, and counted */
    tr_ratelimit_result_t r;
    assert_int_equal(tr_ratelimit_table_take(t, "new", 3, 0, &r), TR_RATELIMIT_TABLE_FULL);
    assert_int_equal(r.verdict, TR_RATELIMIT_TABLE_FULL);
    assert_int_equal(r.retry_after_s, 1);
    assert_int_equal(tr_ratelimit_table_full_count(t), 1);
    /* existing keys still work */
    assert_int_equal(tr_ratelimit_table_take(t, "k3", 2, 0, NULL), TR_RATELIMIT_LIMITED);
    /* at 1 s every bucket is full again: k0 is used first, the idle others can be taken */
    assert_int_equal(tr_ratelimit_table_take(t, "k0", 2, 1000, NULL), TR_RATELIMIT_ALLOWED);
    assert_int_equal(tr_ratelimit_table_take(t, "new", 3, 1000, NULL), TR_RATELIMIT_ALLOWED);
    assert_int_equal(tr_ratelimit_table_take(t, "new", 3, 1000, NULL), TR_RATELIMIT_LIMITED);
    /* k0 kept its busy bucket */
    assert_int_equal(tr_ratelimit_table_take(t, "k0", 2, 1000, NULL), TR_RATELIMIT_LIMITED);
    /* fill the remaining idle slots with new keys, then the next one is refused */
    int allowed = 0, full = 0;
    for (int k = 0; k < 20; k++) {
        int n = snprintf(key, sizeof(key), "m%d", k);
        tr_ratelimit_verdict_t v = tr_ratelimit_table_take(t, key, (size_t)n, 1000, NULL);
        allowed += v == TR_RATELIMIT_ALLOWED;
        full += v == TR_RATELIMIT_TABLE_FULL;
    }
    assert_int_equal(allowed, 6);
    assert_int_equal(full, 14);
    tr_ratelimit_table_free(&t);
    tr_ratelimit_table_free(&t); /* NULL: harmless */
}

static void test_config(void **state)
{
    tr_config_t *cfg = fx_load("a: {rate: 100/minute, burst: 20, key: ip, max_keys: 500}\n"
                               "b: {rate: 10/s}\n"
                               "c: {burst: 5}\n"
                               "d: {rate: 10/fortnight}\n"
                               "e: {rate: 10/s, brust: 5}\n"
                               "f: {rate: 0/s}\n");
    tr_ratelimit_config_t c;
    assert_int_equal(tr_ratelimit_config_from_json(cfg, fx_get(cfg, "a"), &c), 0);
    assert_true(c.count == 100 && c.period_ms == 60000 && c.burst == 20);
    assert_string_equal(c.key, "ip");
    assert_int_equal(c.max_keys, 500);
    assert_int_equal(tr_ratelimit_config_from_json(cfg, fx_get(cfg, "b"), &c), 0);
    assert_true(c.count == 10 && c.period_ms == 1000 && c.burst == 0);
    assert_string_equal(c.key, "");
    assert_int_equal(tr_ratelimit_config_from_json(cfg, fx_get(cfg, "c"), &c), TR_ECONFIG);
    assert_non_null(strstr(tr_config_error(cfg), "rate is required"));
    assert_int_equal(tr_ratelimit_config_from_json(cfg, fx_get(cfg, "d"), &c), TR_ECONFIG);
    assert_non_null(strstr(tr_config_error(cfg), "d.rate: invalid rate"));
    assert_int_equal(tr_ratelimit_config_from_json(cfg, fx_get(cfg, "e"), &c), TR_ECONFIG);
    assert_non_null(strstr(tr_config_error(cfg), "e.brust: unknown key (did you mean \"burst\"?)"));
    assert_int_equal(tr_ratelimit_config_from_json(cfg, fx_get(cfg, "f"), &c), TR_ECONFIG);
    assert_non_null(strstr(tr_config_error(cfg), "f.rate"));
    tr_config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_refill),
        cmocka_unit_test(test_small_burst_retry_after),
        cmocka_unit_test(test_init_rejects),
        cmocka_unit_test(test_exact_under_threads),
        cmocka_unit_test(test_keyed_exact_under_threads),
        cmocka_unit_test(test_keys_are_separate),
        cmocka_unit_test(test_table_full_and_reuse),
        cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
