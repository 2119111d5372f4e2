/* Unit tests for src/resilience/bulkhead.c: limits per kind, release, threads, config. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <string.h>

#include "trellis/bulkhead.h"
#include "fixture.h"

static void test_limits(void **state)
{
    tr_bulkhead_config_t c;
    tr_bulkhead_config_init(&c);
    c.max[TR_BULKHEAD_REQUESTS] = 2;
    c.max[TR_BULKHEAD_PENDING] = 1;
    tr_bulkhead_t b;
    tr_bulkhead_init(&b, &c);
    assert_int_equal(tr_bulkhead_acquire(&b, TR_BULKHEAD_REQUESTS), 0);
    assert_int_equal(tr_bulkhead_acquire(&b, TR_BULKHEAD_REQUESTS), 0);
    assert_int_equal(tr_bulkhead_acquire(&b, TR_BULKHEAD_REQUESTS), TR_EBUSY);
    assert_int_equal(tr_bulkhead_acquire(&b, TR_BULKHEAD_PENDING), 0); /* kinds are separate */
    assert_int_equal(tr_bulkhead_acquire(&b, TR_BULKHEAD_PENDING), TR_EBUSY);
    assert_int_equal(tr_bulkhead_used(&b, TR_BULKHEAD_REQUESTS), 2);
    tr_bulkhead_release(&b, TR_BULKHEAD_REQUESTS);
    assert_int_equal(tr_bulkhead_acquire(&b, TR_BULKHEAD_REQUESTS), 0);
    assert_int_equal(atomic_load(&b.rejected[TR_BULKHEAD_REQUESTS]), 1);
    assert_int_equal(atomic_load(&b.rejected[TR_BULKHEAD_PENDING]), 1);
    tr_bulkhead_init(&b, NULL);
    assert_int_equal(b.max[TR_BULKHEAD_CONNECTIONS], 1024);
}

static tr_bulkhead_t shared;
static _Atomic int granted;

static void *hammer(void *arg)
{
    for (int i = 0; i < 1000; i++)
        if (tr_bulkhead_acquire(&shared, TR_BULKHEAD_CONNECTIONS) == 0)
            atomic_fetch_add(&granted, 1);
    return NULL;
}

static void test_threads_never_overshoot(void **state)
{
    tr_bulkhead_config_t c;
    tr_bulkhead_config_init(&c);
    c.max[TR_BULKHEAD_CONNECTIONS] = 100;
    tr_bulkhead_init(&shared, &c);
    pthread_t t[8];
    for (int i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, hammer, NULL);
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&granted), 100);
    assert_int_equal(tr_bulkhead_used(&shared, TR_BULKHEAD_CONNECTIONS), 100);
}

static void test_config(void **state)
{
    tr_config_t *cfg =
        fx_load("b: {max_connections: 10, max_pending_requests: 5, max_requests: 7}\n"
                "e: {max_conections: 1}\nz: {max_requests: 0}\n");
    tr_bulkhead_config_t c;
    assert_int_equal(tr_bulkhead_config_from_json(cfg, fx_get(cfg, "b"), &c), 0);
    assert_int_equal(c.max[TR_BULKHEAD_CONNECTIONS], 10);
    assert_int_equal(c.max[TR_BULKHEAD_PENDING], 5);
    assert_int_equal(c.max[TR_BULKHEAD_REQUESTS], 7);
    assert_int_equal(tr_bulkhead_config_from_json(cfg, fx_get(cfg, "e"), &c), TR_ECONFIG);
    assert_non_null(strstr(tr_config_error(cfg), "e.max_conections: unknown key (did you mean "
                                                 "\"max_connections\"?)"));
    assert_int_equal(tr_bulkhead_config_from_json(cfg, fx_get(cfg, "z"), &c), TR_ECONFIG);
    assert_non_null(strstr(tr_config_error(cfg), "z.max_requests"));
    tr_config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_threads_never_overshoot),
        cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
