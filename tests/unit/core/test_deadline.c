/* Unit tests for deadline lanes: expiry order, disarm, re-arm, several durations, arming from
 * a callback, close with deadlines still armed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>
#include <uv.h>

#include "core/deadline.h"

#define N 8

typedef struct {
    tr_deadline_t d;
    int id;
    uint64_t fired_at;
} item_t;

static int order[64];
static int nfired;

static void on_fire(tr_deadline_t *d)
{
    item_t *it = d->data;
    it->fired_at = uv_now(uv_default_loop());
    order[nfired++] = it->id;
}

static void reset(void)
{
    nfired = 0;
    memset(order, 0, sizeof(order));
}

static void run_until(uv_loop_t *loop, int want, uint64_t limit_ms)
{
    uint64_t start = uv_now(loop);
    while (nfired < want && uv_now(loop) - start < limit_ms)
        uv_run(loop, UV_RUN_ONCE);
}

static void test_fifo_and_disarm(void **state)
{
    (void)state;
    reset();
    uv_loop_t *loop = uv_default_loop();
    tr_deadlines_t *ds = tr_deadlines_new(loop);
    item_t it[N];
    memset(it, 0, sizeof(it));
    uv_update_time(loop);
    uint64_t t0 = uv_now(loop);
    for (int i = 0; i < N; i++) {
        it[i].id = i;
        tr_deadline_arm(ds, &it[i].d, 20, on_fire, &it[i]);
    }
    assert_int_equal(tr_deadlines_count(ds), N);
    /* Disarm the head, one in the middle and the tail: O(1) each, and never called. */
    tr_deadline_disarm(&it[0].d);
    tr_deadline_disarm(&it[3].d);
    tr_deadline_disarm(&it[N - 1].d);
    tr_deadline_disarm(&it[3].d); /* twice: a no-op */
    assert_false(tr_deadline_armed(&it[0].d));
    assert_int_equal(tr_deadlines_count(ds), N - 3);
    run_until(loop, N - 3, 2000);
    assert_int_equal(nfired, N - 3);
    const int want[] = {1, 2, 4, 5, 6};
    for (int i = 0; i < N - 3; i++) {
        assert_int_equal(order[i], want[i]);
        assert_true(it[want[i]].fired_at >= t0 + 20);
    }
    assert_int_equal(tr_deadlines_count(ds), 0);
    tr_deadlines_close(ds);
    uv_run(loop, UV_RUN_DEFAULT);
}

static void test_durations_interleave(void **state)
{
    (void)state;
    reset();
    uv_loop_t *loop = uv_default_loop();
    tr_deadlines_t *ds = tr_deadlines_new(loop);
    item_t slow = {.id = 1}, fast = {.id = 2}, mid = {.id = 3};
    tr_deadline_arm(ds, &slow.d, 60, on_fire, &slow);
    tr_deadline_arm(ds, &fast.d, 10, on_fire, &fast);
    tr_deadline_arm(ds, &mid.d, 30, on_fire, &mid);
    run_until(loop, 3, 2000);
    assert_int_equal(nfired, 3);
    assert_int_equal(order[0], 2);
    assert_int_equal(order[1], 3);
    assert_int_equal(order[2], 1);
    tr_deadlines_close(ds);
    uv_run(loop, UV_RUN_DEFAULT);
}

static void test_rearm_moves(void **state)
{
    (void)state;
    reset();
    uv_loop_t *loop = uv_default_loop();
    tr_deadlines_t *ds = tr_deadlines_new(loop);
    item_t a = {.id = 1}, b = {.id = 2};
    tr_deadline_arm(ds, &a.d, 10, on_fire, &a);
    tr_deadline_arm(ds, &b.d, 10, on_fire, &b);
    tr_deadline_arm(ds, &a.d, 40, on_fire, &a); /* moved to another lane */
    assert_int_equal(tr_deadlines_count(ds), 2);
    run_until(loop, 2, 2000);
    assert_int_equal(order[0], 2);
    assert_int_equal(order[1], 1);
    tr_deadlines_close(ds);
    uv_run(loop, UV_RUN_DEFAULT);
}

/* The head is disarmed after the lane's timer was armed for it: the timer fires early, finds
 * nothing due and sleeps until the next deadline, which is not called early. */
static void test_head_removed_no_early_fire(void **state)
{
    (void)state;
    reset();
    uv_loop_t *loop = uv_default_loop();
    tr_deadlines_t *ds = tr_deadlines_new(loop);
    item_t a = {.id = 1}, b = {.id = 2};
    uv_update_time(loop);
    tr_deadline_arm(ds, &a.d, 20, on_fire, &a);
    /* Let time pass so b is due later than a. */
    uv_sleep(15);
    uv_update_time(loop);
    uint64_t armed_b = uv_now(loop);
    tr_deadline_arm(ds, &b.d, 20, on_fire, &b);
    tr_deadline_disarm(&a.d);
    run_until(loop, 1, 2000);
    assert_int_equal(nfired, 1);
    assert_int_equal(order[0], 2);
    assert_true(b.fired_at >= armed_b + 20);
    tr_deadlines_close(ds);
    uv_run(loop, UV_RUN_DEFAULT);
}

static tr_deadlines_t *chain_ds;
static void on_chain(tr_deadline_t *d)
{
    item_t *it = d->data;
    order[nfired++] = it->id;
    if (it->id < 3) {
        it->id++;
        tr_deadline_arm(chain_ds, d, 5, on_chain, it); /* re-arm from its own callback */
    }
}

static void test_arm_from_callback(void **state)
{
    (void)state;
    reset();
    uv_loop_t *loop = uv_default_loop();
    chain_ds = tr_deadlines_new(loop);
    item_t it = {.id = 1};
    tr_deadline_arm(chain_ds, &it.d, 5, on_chain, &it);
    run_until(loop, 3, 2000);
    assert_int_equal(nfired, 3);
    assert_int_equal(order[2], 3);
    assert_false(tr_deadline_armed(&it.d));
    tr_deadlines_close(chain_ds);
    uv_run(loop, UV_RUN_DEFAULT);
}

static void test_close_with_armed(void **state)
{
    (void)state;
    reset();
    uv_loop_t *loop = uv_default_loop();
    tr_deadlines_t *ds = tr_deadlines_new(loop);
    item_t a = {.id = 1}, b = {.id = 2};
    tr_deadline_arm(ds, &a.d, 1000, on_fire, &a);
    tr_deadline_arm(ds, &b.d, 2000, on_fire, &b);
    tr_deadlines_close(ds); /* drops both, never calls them; the loop ends at once */
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(nfired, 0);
    assert_false(tr_deadline_armed(&a.d));
    tr_deadlines_close(tr_deadlines_new(loop)); /* no lanes */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fifo_and_disarm),   cmocka_unit_test(test_durations_interleave),
        cmocka_unit_test(test_rearm_moves),       cmocka_unit_test(test_head_removed_no_early_fire),
        cmocka_unit_test(test_arm_from_callback), cmocka_unit_test(test_close_with_armed),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    uv_loop_close(uv_default_loop());
    return rc;
}
