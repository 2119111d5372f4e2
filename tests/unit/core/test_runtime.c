/* Unit tests for the worker runtime: start, stop from a worker, start errors, forced stop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "trellis/error.h"
#include "trellis/runtime.h"

#define MAX_WORKERS 4

typedef struct worker_state_s {
    uv_timer_t stopper;  /* asks the runtime to stop */
    uv_timer_t stubborn; /* ignores a graceful stop */
    bool stubborn_open;
    uint64_t graceful_at, forced_at;
} worker_state_t;

typedef struct shared_s {
    atomic_int started, graceful, forced, closed;
    atomic_int ids_seen; /* bit per worker id */
    int fail_id;         /* worker whose start fails, or -1 */
    bool stubborn;       /* keep a handle open until forced */
    bool same_time;      /* every worker's timer stops the runtime at once */
    bool stop_twice;     /* stop with SIGTERM, and again: the second skips the grace */
    worker_state_t ws[MAX_WORKERS];
} shared_t;

static void on_stopper(uv_timer_t *t)
{
    shared_t *sh = t->data;
    if (sh->stop_twice) {
        kill(getpid(), SIGTERM); /* the second comes once this one is seen */
        return;
    }
    tr_runtime_stop(); /* from a worker thread */
}

static void on_stubborn(uv_timer_t *t) {}

static void on_closed(uv_handle_t *h)
{
    shared_t *sh = h->data;
    atomic_fetch_add(&sh->closed, 1);
}

static int on_start(tr_worker_t *w, void *data)
{
    shared_t *sh = data;
    int id = tr_worker_id(w);
    atomic_fetch_add(&sh->started, 1);
    atomic_fetch_or(&sh->ids_seen, 1 << id);
    if (id == sh->fail_id) return TR_EIO;
    worker_state_t *ws = &sh->ws[id];
    tr_worker_set_data(w, ws);
    uv_loop_t *loop = tr_worker_loop(w);
    uv_timer_init(loop, &ws->stopper);
    ws->stopper.data = sh;
    /* Staggered: the first stop closes the later timers before they fire (one stop only). */
    uv_timer_start(&ws->stopper, on_stopper, sh->same_time ? 10 : 10 + 1000 * (uint64_t)id, 0);
    if (sh->stubborn) {
        uv_timer_init(loop, &ws->stubborn);
        ws->stubborn.data = sh;
        uv_timer_start(&ws->stubborn, on_stubborn, 5, 5);
        ws->stubborn_open = true;
    }
    return 0;
}

static void on_stop(tr_worker_t *w, bool force, void *data)
{
    shared_t *sh = data;
    worker_state_t *ws = tr_worker_data(w);
    if (!ws) return; /* this worker's start failed: it opened nothing */
    assert_ptr_equal(ws, &sh->ws[tr_worker_id(w)]);
    uint64_t now = uv_now(tr_worker_loop(w));
    if (!force) {
        atomic_fetch_add(&sh->graceful, 1);
        ws->graceful_at = now;
        if (sh->stop_twice && tr_worker_id(w) == 0) kill(getpid(), SIGTERM);
        if (!uv_is_closing((uv_handle_t *)&ws->stopper))
            uv_close((uv_handle_t *)&ws->stopper, on_closed);
        return;
    }
    atomic_fetch_add(&sh->forced, 1);
    ws->forced_at = now;
    if (ws->stubborn_open) {
        ws->stubborn_open = false;
        uv_close((uv_handle_t *)&ws->stubborn, on_closed);
    }
}

static int run(shared_t *sh, int workers, uint64_t grace_ms)
{
    tr_runtime_options_t o = {.workers = workers,
                              .grace_ms = grace_ms,
                              .on_start = on_start,
                              .on_stop = on_stop,
                              .data = sh};
    alarm(10); /* a hang kills the test instead of stalling the suite */
    int err = tr_runtime_run(&o);
    alarm(0);
    return err;
}

static void test_stop_from_worker(void **state)
{
    shared_t *sh = calloc(1, sizeof(*sh));
    sh->fail_id = -1;
    assert_int_equal(run(sh, 2, 5000), 0);
    assert_int_equal(atomic_load(&sh->started), 2);
    assert_int_equal(atomic_load(&sh->ids_seen), 3);
    assert_int_equal(atomic_load(&sh->graceful), 2);
    assert_int_equal(atomic_load(&sh->forced), 0); /* all closed well before the grace period */
    assert_int_equal(atomic_load(&sh->closed), 2);
    free(sh);
}

static void test_start_error(void **state)
{
    shared_t *sh = calloc(1, sizeof(*sh));
    sh->fail_id = 1;
    assert_int_equal(run(sh, 2, 5000), TR_EIO);
    assert_int_equal(atomic_load(&sh->started), 2);
    assert_int_equal(atomic_load(&sh->closed), 1); /* the healthy worker was still stopped */
    free(sh);
}

static void test_force_after_grace(void **state)
{
    shared_t *sh = calloc(1, sizeof(*sh));
    sh->fail_id = -1;
    sh->stubborn = true;
    assert_int_equal(run(sh, 2, 100), 0);
    assert_int_equal(atomic_load(&sh->graceful), 2);
    assert_int_equal(atomic_load(&sh->forced), 2);
    assert_int_equal(atomic_load(&sh->closed), 4);
    for (int i = 0; i < 2; i++) {
        uint64_t waited = sh->ws[i].forced_at - sh->ws[i].graceful_at;
        assert_true(waited >= 95 && waited < 2000);
    }
    free(sh);
}

static void test_second_stop_skips_grace(void **state)
{
    shared_t *sh = calloc(1, sizeof(*sh));
    sh->fail_id = -1;
    sh->stubborn = true;
    sh->stop_twice = true;
    assert_int_equal(run(sh, 2, 5000), 0);
    assert_int_equal(atomic_load(&sh->graceful), 2); /* still told gracefully first */
    assert_int_equal(atomic_load(&sh->forced), 2);
    assert_int_equal(atomic_load(&sh->closed), 4);
    for (int i = 0; i < 2; i++)
        assert_true(sh->ws[i].forced_at - sh->ws[i].graceful_at < 1000);
    free(sh);
}

static void test_concurrent_stops(void **state)
{
    /* Stops from both workers at once may escalate to forced, but each worker is still told
     * gracefully first (the contract its stop callback is written against). */
    for (int i = 0; i < 20; i++) {
        shared_t *sh = calloc(1, sizeof(*sh));
        sh->fail_id = -1;
        sh->same_time = true;
        assert_int_equal(run(sh, 2, 5000), 0);
        assert_int_equal(atomic_load(&sh->graceful), 2);
        assert_int_equal(atomic_load(&sh->closed), 2);
        free(sh);
    }
}

static void test_cpu_count(void **state)
{
    assert_true(tr_cpu_count() >= 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stop_from_worker),  cmocka_unit_test(test_start_error),
        cmocka_unit_test(test_force_after_grace), cmocka_unit_test(test_second_stop_skips_grace),
        cmocka_unit_test(test_concurrent_stops),  cmocka_unit_test(test_cpu_count),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
