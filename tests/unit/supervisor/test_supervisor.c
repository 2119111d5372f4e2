/* Unit tests for the supervisor: states, restart policies, backoff, probes, stopping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/buf.h"
#include "supervisor/supervisor.h"
#include "trellis/http.h"
#include "trellis/net.h"

#define MAX_EVENTS 256
#define MAX_LINES  64

typedef struct event_s {
    tr_instance_t *inst;
    tr_instance_state_t old, now;
    char reason[160];
    uint64_t at; /* ms since the fixture started */
    uint64_t backoff_ms;
} event_t;

typedef struct fx_s {
    uv_loop_t loop;
    uv_timer_t wake;
    tr_metrics_t *metrics;
    tr_supervisor_t *sup;
    tr_http_server_t *srv;
    uint16_t port;
    int live_status, ready_status;
    event_t ev[MAX_EVENTS];
    int nev;
    char *line[MAX_LINES];
    int stream[MAX_LINES];
    int nlines;
    int stops_done, all_done, closed;
    uint64_t t0;
} fx_t;

static void on_wake(uv_timer_t *t) {}

static void handle(tr_http_req_t *req, void *data)
{
    fx_t *f = data;
    int status = strcmp(req->path, "/health/live") == 0 ? f->live_status : f->ready_status;
    tr_http_res_send(req, status, "text/plain", "x", 1);
}

static void on_state(tr_instance_t *i, tr_instance_state_t old, tr_instance_state_t now,
                     const char *reason, void *data)
{
    fx_t *f = data;
    assert_true(f->nev < MAX_EVENTS);
    event_t *e = &f->ev[f->nev++];
    e->inst = i;
    e->old = old;
    e->now = now;
    snprintf(e->reason, sizeof(e->reason), "%s", reason);
    e->at = uv_now(&f->loop) - f->t0;
    e->backoff_ms = tr_instance_backoff_ms(i);
}

static void on_output(tr_instance_t *i, int stream, const char *line, size_t len, void *data)
{
    fx_t *f = data;
    if (f->nlines >= MAX_LINES) return;
    f->stream[f->nlines] = stream;
    f->line[f->nlines++] = strndup(line, len);
}

static fx_t *fx_new_with(const tr_supervisor_options_t *extra)
{
    fx_t *f = calloc(1, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->wake);
    uv_timer_start(&f->wake, on_wake, 5, 5);
    struct sockaddr_storage addr, bound;
    assert_int_equal(tr_net_parse_addr("127.0.0.1:0", &addr), 0);
    int fd;
    assert_int_equal(tr_net_listen(&addr, 1, 64, &fd, &bound), 0);
    f->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    tr_http_server_options_t so = {.handler = handle, .handler_data = f};
    assert_int_equal(tr_http_server_start(&f->loop, fd, &so, &f->srv), 0);
    f->live_status = f->ready_status = 200;
    f->metrics = tr_metrics_create();
    tr_supervisor_options_t o = {0};
    if (extra) o = *extra;
    o.events.on_state = on_state;
    o.events.on_output = on_output;
    o.events.data = f;
    o.metrics = f->metrics;
    f->sup = tr_supervisor_new(&f->loop, &o);
    uv_update_time(&f->loop);
    f->t0 = uv_now(&f->loop);
    return f;
}

static fx_t *fx_new(void)
{
    return fx_new_with(NULL);
}

static void on_closed(void *data)
{
    ((fx_t *)data)->closed++;
}

static void fx_free(fx_t *f)
{
    tr_supervisor_close(f->sup, on_closed, f);
    tr_supervisor_close(f->sup, on_closed, f); /* twice is safe */
    tr_http_server_close(f->srv, true, NULL, NULL);
    uv_close((uv_handle_t *)&f->wake, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->closed, 1);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    for (int k = 0; k < f->nlines; k++)
        free(f->line[k]);
    tr_metrics_free(f->metrics);
    free(f);
}

static tr_instance_spec_t spec_sh(const char *const *argv)
{
    tr_instance_spec_t s = {0};
    s.service = "svc";
    s.instance_id = "svc-1";
    s.argv = argv;
    s.restart = TR_RESTART_NEVER;
    s.backoff_base_ms = 20;
    s.backoff_max_ms = 80;
    s.stop_grace_ms = 2000;
    return s;
}

static tr_instance_t *start(fx_t *f, const tr_instance_spec_t *s)
{
    tr_instance_t *i = NULL;
    assert_int_equal(tr_supervisor_start(f->sup, s, &i), 0);
    assert_non_null(i);
    return i;
}

static void run_until_state(fx_t *f, tr_instance_t *i, tr_instance_state_t st, uint64_t ms)
{
    uv_update_time(&f->loop);
    uint64_t end = uv_now(&f->loop) + ms;
    while (tr_instance_state(i) != st && uv_now(&f->loop) < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_string_equal(tr_instance_state_name(tr_instance_state(i)), tr_instance_state_name(st));
}

static void run_until(fx_t *f, const int *flag, int want, uint64_t ms)
{
    uv_update_time(&f->loop);
    uint64_t end = uv_now(&f->loop) + ms;
    while (*flag < want && uv_now(&f->loop) < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(*flag, want);
}

static void run_for(fx_t *f, uint64_t ms)
{
    uv_update_time(&f->loop);
    uint64_t end = uv_now(&f->loop) + ms;
    while (uv_now(&f->loop) < end)
        uv_run(&f->loop, UV_RUN_ONCE);
}

/* Number of events of `i` that enter `st`. */
static int entered(fx_t *f, tr_instance_t *i, tr_instance_state_t st)
{
    int n = 0;
    for (int k = 0; k < f->nev; k++)
        if (f->ev[k].inst == i && f->ev[k].now == st) n++;
    return n;
}

static bool pid_gone(int pid)
{
    if (kill(pid, 0) != 0 && errno == ESRCH) return true;
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *fp = fopen(path, "r");
    if (!fp) return true;
    size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    return rp && (rp[2] == 'Z' || rp[2] == 'X');
}

static bool wait_gone(int pid, int ms)
{
    for (int k = 0; k < ms / 10 && !pid_gone(pid); k++)
        usleep(10000);
    return pid_gone(pid);
}

static void on_stopped(tr_instance_t *i, void *data)
{
    fx_t *f = data;
    assert_true(tr_instance_state(i) == TR_INST_STOPPED || tr_instance_state(i) == TR_INST_FAILED);
    f->stops_done++;
}

static void on_all_stopped(void *data)
{
    ((fx_t *)data)->all_done++;
}

static void metric_has(fx_t *f, const char *text)
{
    tr_buf_t b = TR_BUF_INIT;
    tr_metrics_render(f->metrics, &b);
    if (!strstr(tr_buf_cstr(&b), text)) fail_msg("metrics lack '%s':\n%s", text, tr_buf_cstr(&b));
    tr_buf_free(&b);
}

/* ---- tests ---- */

static void test_start_env_output_stop(void **state)
{
    tr_supervisor_options_t o = {0};
    const char *env[] = {"TRELLIS_REGISTRY=http://127.0.0.1:8500", NULL};
    o.env = env;
    fx_t *f = fx_new_with(&o);
    const char *argv[] = {"/bin/sh", "-c",
                          "echo \"$PORT $TRELLIS_SERVICE $TRELLIS_INSTANCE $OTEL_SERVICE_NAME "
                          "$TRELLIS_REGISTRY $CUSTOM\"; echo oops >&2; exec sleep 100",
                          NULL};
    tr_instance_spec_t s = spec_sh(argv);
    const char *senv[] = {"CUSTOM=yes", NULL};
    s.env = senv;
    s.port = 4567;
    s.data = f;
    tr_instance_t *i = start(f, &s);
    /* No readiness probe: ready as soon as it runs, both changes before start returns. */
    assert_int_equal(f->nev, 2);
    assert_int_equal(f->ev[0].old, TR_INST_STOPPED);
    assert_int_equal(f->ev[0].now, TR_INST_STARTING);
    assert_int_equal(f->ev[1].now, TR_INST_READY);
    assert_ptr_equal(tr_instance_data(i), f);
    assert_true(tr_instance_pid(i) > 0);
    assert_true(tr_instance_started_at(i) > 0);
    assert_true(tr_instance_ready_since(i) > 0);
    assert_false(tr_instance_last_exit(i).exited);
    assert_string_equal(tr_instance_spec(i)->readiness.path, "/health/ready");
    int lines = 2;
    run_until(f, &f->nlines, lines, 3000);
    for (int k = 0; k < 2; k++) {
        if (f->stream[k] == TR_INSTANCE_STDOUT)
            assert_string_equal(f->line[k], "4567 svc svc-1 svc http://127.0.0.1:8500 yes");
        else
            assert_string_equal(f->line[k], "oops");
    }
    metric_has(f, "trellis_supervisor_instances{state=\"ready\"} 1");
    int pid = tr_instance_pid(i);
    tr_instance_stop(i, on_stopped, f);
    assert_int_equal(tr_instance_state(i), TR_INST_STOPPING);
    run_until(f, &f->stops_done, 1, 3000);
    assert_int_equal(tr_instance_state(i), TR_INST_STOPPED);
    assert_int_equal(tr_instance_last_exit(i).signal, SIGTERM);
    assert_int_equal(tr_instance_pid(i), 0);
    assert_int_equal(tr_instance_ready_since(i), 0);
    assert_true(pid_gone(pid));
    /* Stopping a stopped instance answers again, from the loop. */
    tr_instance_stop(i, on_stopped, f);
    assert_int_equal(f->stops_done, 1);
    run_until(f, &f->stops_done, 2, 1000);
    metric_has(f, "trellis_supervisor_instances{state=\"stopped\"} 1");
    metric_has(f, "trellis_supervisor_instances{state=\"ready\"} 0");
    fx_free(f);
}

static void test_policy_never_and_on_failure(void **state)
{
    fx_t *f = fx_new();
    const char *fail3[] = {"/bin/sh", "-c", "exit 3", NULL};
    const char *ok[] = {"/bin/sh", "-c", "exit 0", NULL};
    tr_instance_spec_t s = spec_sh(fail3);
    tr_instance_t *a = start(f, &s); /* never, exit 3 → failed */
    s.instance_id = "svc-2";
    s.argv = ok;
    tr_instance_t *b = start(f, &s); /* never, exit 0 → stopped */
    s.instance_id = "svc-3";
    s.restart = TR_RESTART_ON_FAILURE;
    tr_instance_t *c = start(f, &s); /* on-failure, exit 0 → stopped */
    s.instance_id = "svc-4";
    s.argv = fail3;
    s.max_restarts = 2;
    tr_instance_t *d = start(f, &s); /* on-failure, exit 3 → 2 restarts, then failed */
    run_until_state(f, a, TR_INST_FAILED, 3000);
    run_until_state(f, b, TR_INST_STOPPED, 3000);
    run_until_state(f, c, TR_INST_STOPPED, 3000);
    run_until_state(f, d, TR_INST_FAILED, 3000);
    assert_int_equal(tr_instance_last_exit(a).code, 3);
    assert_int_equal(tr_instance_restarts(a), 0);
    assert_int_equal(tr_instance_restarts(b), 0);
    assert_int_equal(tr_instance_restarts(c), 0);
    assert_int_equal(tr_instance_restarts(d), 2);
    assert_int_equal(entered(f, d, TR_INST_BACKOFF), 2);
    assert_non_null(strstr(f->ev[f->nev - 1].reason, "gave up after 2 restarts"));
    metric_has(f, "trellis_supervisor_restarts_total{service=\"svc\"} 2");
    fx_free(f);
}

static void test_backoff_growth(void **state)
{
    fx_t *f = fx_new();
    const char *argv[] = {"/bin/sh", "-c", "exit 0", NULL};
    tr_instance_spec_t s = spec_sh(argv);
    s.restart = TR_RESTART_ALWAYS; /* exit 0 restarts too */
    tr_instance_t *i = start(f, &s);
    uv_update_time(&f->loop);
    uint64_t end = uv_now(&f->loop) + 5000;
    while (entered(f, i, TR_INST_BACKOFF) < 5 && uv_now(&f->loop) < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    uint64_t want[] = {20, 40, 80, 80, 80};
    int n = 0;
    uint64_t backoff_at = 0;
    for (int k = 0; k < f->nev && n < 5; k++) {
        event_t *e = &f->ev[k];
        if (e->now == TR_INST_BACKOFF) {
            assert_int_equal(e->backoff_ms, want[n]);
            backoff_at = e->at;
            n++;
        } else if (e->old == TR_INST_BACKOFF) {
            assert_int_equal(e->now, TR_INST_STARTING);
            assert_true(e->at - backoff_at + 2 >= want[n - 1]); /* waited the delay out */
        }
    }
    assert_int_equal(n, 5);
    assert_true(tr_instance_restarts(i) >= 4);
    fx_free(f);
}

static void test_backoff_formula(void **state)
{
    assert_int_equal(tr_supervisor_backoff(100, 30000, 1), 100);
    assert_int_equal(tr_supervisor_backoff(100, 30000, 2), 200);
    assert_int_equal(tr_supervisor_backoff(100, 30000, 9), 25600);
    assert_int_equal(tr_supervisor_backoff(100, 30000, 10), 30000);
    assert_int_equal(tr_supervisor_backoff(100, 30000, 4000000000u), 30000);
    assert_int_equal(tr_supervisor_backoff(100, 50, 1), 50);
    assert_string_equal(tr_instance_state_name(TR_INST_BACKOFF), "backoff");
    assert_string_equal(tr_instance_state_name((tr_instance_state_t)99), "unknown");
}

static void test_backoff_resets_after_good_run(void **state)
{
    tr_supervisor_options_t o = {0};
    o.backoff_reset_ms = 100;
    fx_t *f = fx_new_with(&o);
    const char *argv[] = {"/bin/sh", "-c", "sleep 0.2; exit 1", NULL};
    tr_instance_spec_t s = spec_sh(argv);
    s.restart = TR_RESTART_ON_FAILURE;
    tr_instance_t *i = start(f, &s);
    uv_update_time(&f->loop);
    uint64_t end = uv_now(&f->loop) + 5000;
    while (entered(f, i, TR_INST_BACKOFF) < 3 && uv_now(&f->loop) < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    int n = 0;
    for (int k = 0; k < f->nev; k++)
        if (f->ev[k].now == TR_INST_BACKOFF) {
            assert_int_equal(f->ev[k].backoff_ms, 20); /* ran ≥ 100 ms each time: no growth */
            n++;
        }
    assert_int_equal(n, 3);
    fx_free(f);
}

static void test_spawn_failure(void **state)
{
    fx_t *f = fx_new();
    const char *argv[] = {"/nonexistent/trellis-test", NULL};
    tr_instance_spec_t s = spec_sh(argv);
    tr_instance_t *i = start(f, &s);
    assert_int_equal(tr_instance_state(i), TR_INST_FAILED);
    assert_int_equal(tr_instance_last_exit(i).code, 127);
    assert_non_null(strstr(f->ev[f->nev - 1].reason, "spawn failed"));
    const char *none[] = {NULL};
    s.argv = none;
    assert_int_equal(tr_supervisor_start(f->sup, &s, NULL), UV_EINVAL);
    s.argv = argv;
    s.service = NULL;
    assert_int_equal(tr_supervisor_start(f->sup, &s, NULL), UV_EINVAL);
    fx_free(f);
}

static void test_stop_grace_then_sigkill(void **state)
{
    fx_t *f = fx_new();
    const char *argv[] = {"/bin/sh", "-c", "trap '' TERM; echo armed; while :; do sleep 0.05; done",
                          NULL};
    tr_instance_spec_t s = spec_sh(argv);
    s.restart = TR_RESTART_ALWAYS; /* a requested stop never restarts */
    s.stop_grace_ms = 200;
    tr_instance_t *i = start(f, &s);
    run_until(f, &f->nlines, 1, 3000);
    uv_update_time(&f->loop);
    uint64_t t = uv_now(&f->loop);
    tr_instance_stop(i, on_stopped, f);
    run_until(f, &f->stops_done, 1, 5000);
    uint64_t took = uv_now(&f->loop) - t;
    assert_true(took >= 195 && took < 2000);
    assert_int_equal(tr_instance_last_exit(i).signal, SIGKILL);
    assert_int_equal(tr_instance_state(i), TR_INST_STOPPED);
    assert_int_equal(tr_instance_restarts(i), 0);
    fx_free(f);
}

static void test_stop_reaches_grandchild(void **state)
{
    fx_t *f = fx_new();
    const char *argv[] = {"/bin/sh", "-c", "sleep 100 & echo $!; wait", NULL};
    tr_instance_spec_t s = spec_sh(argv);
    tr_instance_t *i = start(f, &s);
    run_until(f, &f->nlines, 1, 3000);
    int grandchild = atoi(f->line[0]);
    assert_true(grandchild > 0);
    assert_false(pid_gone(grandchild));
    tr_instance_stop(i, on_stopped, f);
    run_until(f, &f->stops_done, 1, 3000);
    assert_true(wait_gone(grandchild, 3000));
    fx_free(f);
}

static void test_liveness_failure_restarts(void **state)
{
    fx_t *f = fx_new();
    const char *argv[] = {"sleep", "100", NULL};
    tr_instance_spec_t s = spec_sh(argv);
    s.port = f->port; /* the in-process server answers the probes */
    s.restart = TR_RESTART_ON_FAILURE;
    s.liveness = (tr_probe_spec_t){
        .enabled = true, .http = true, .period_ms = 20, .timeout_ms = 500, .failure_threshold = 2};
    tr_instance_t *i = start(f, &s);
    int pid = tr_instance_pid(i);
    run_for(f, 100);
    assert_int_equal(tr_instance_state(i), TR_INST_READY);
    f->live_status = 500;
    run_until_state(f, i, TR_INST_BACKOFF, 3000);
    f->live_status = 200;
    tr_instance_exit_t x = tr_instance_last_exit(i);
    assert_true(x.liveness);
    assert_int_equal(x.signal, SIGTERM);
    assert_true(wait_gone(pid, 3000));
    assert_int_equal(entered(f, i, TR_INST_STOPPING), 1);
    bool found = false;
    for (int k = 0; k < f->nev; k++)
        if (f->ev[k].now == TR_INST_STOPPING)
            found = strstr(f->ev[k].reason, "liveness failed: GET /health/live: HTTP 500") != NULL;
    assert_true(found);
    run_until_state(f, i, TR_INST_READY, 3000);
    assert_int_equal(tr_instance_restarts(i), 1);
    assert_int_not_equal(tr_instance_pid(i), pid);
    fx_free(f);
}

static void test_readiness_transitions(void **state)
{
    fx_t *f = fx_new();
    const char *argv[] = {"sleep", "100", NULL};
    tr_instance_spec_t s = spec_sh(argv);
    s.port = f->port;
    s.readiness = (tr_probe_spec_t){
        .enabled = true, .http = true, .period_ms = 20, .timeout_ms = 500, .failure_threshold = 1};
    f->ready_status = 503;
    tr_instance_t *i = start(f, &s);
    assert_int_equal(tr_instance_state(i), TR_INST_STARTING);
    run_for(f, 100);
    assert_int_equal(tr_instance_state(i), TR_INST_STARTING);
    f->ready_status = 204;
    run_until_state(f, i, TR_INST_READY, 2000);
    f->ready_status = 503;
    run_until_state(f, i, TR_INST_RUNNING, 2000);
    assert_int_equal(tr_instance_ready_since(i), 0);
    f->ready_status = 200;
    run_until_state(f, i, TR_INST_READY, 2000);
    assert_int_equal(entered(f, i, TR_INST_READY), 2);
    assert_int_equal(entered(f, i, TR_INST_RUNNING), 1);
    assert_int_equal(tr_instance_restarts(i), 0); /* readiness never restarts */
    fx_free(f);
}

static void test_six_replicas_ready_fast(void **state)
{
    fx_t *f = fx_new();
    const char *argv[] = {"sleep", "100", NULL};
    tr_instance_spec_t s = spec_sh(argv);
    s.port = f->port;
    s.readiness = (tr_probe_spec_t){.enabled = true, .http = true}; /* 10 s period */
    s.liveness = (tr_probe_spec_t){.enabled = true, .http = true};
    tr_instance_t *inst[6];
    char ids[6][16];
    uv_update_time(&f->loop);
    uint64_t t = uv_now(&f->loop);
    for (int k = 0; k < 6; k++) {
        snprintf(ids[k], sizeof(ids[k]), "svc-%d", k);
        s.instance_id = ids[k];
        inst[k] = start(f, &s);
    }
    for (int k = 0; k < 6; k++)
        run_until_state(f, inst[k], TR_INST_READY, 2000);
    uint64_t took = uv_now(&f->loop) - t;
    assert_true(took < 1000);
    metric_has(f, "trellis_supervisor_instances{state=\"ready\"} 6");
    tr_supervisor_stop_all(f->sup, on_all_stopped, f);
    run_until(f, &f->all_done, 1, 5000);
    for (int k = 0; k < 6; k++)
        assert_int_equal(tr_instance_state(inst[k]), TR_INST_STOPPED);
    metric_has(f, "trellis_supervisor_instances{state=\"stopped\"} 6");
    /* Nothing left to stop: still answered once, from the loop. */
    tr_supervisor_stop_all(f->sup, on_all_stopped, f);
    assert_int_equal(f->all_done, 1);
    run_until(f, &f->all_done, 2, 1000);
    fx_free(f);
}

static void test_manual_restart(void **state)
{
    fx_t *f = fx_new();
    const char *argv[] = {"sleep", "100", NULL};
    tr_instance_spec_t s = spec_sh(argv);
    tr_instance_t *i = start(f, &s);
    int pid = tr_instance_pid(i);
    tr_instance_restart(i);
    assert_int_equal(tr_instance_state(i), TR_INST_STOPPING);
    run_until_state(f, i, TR_INST_READY, 3000);
    assert_int_not_equal(tr_instance_pid(i), pid);
    assert_int_equal(tr_instance_restarts(i), 1);
    assert_true(wait_gone(pid, 3000));
    /* From STOPPED too; the count is kept. */
    tr_instance_stop(i, on_stopped, f);
    run_until(f, &f->stops_done, 1, 3000);
    tr_instance_restart(i);
    assert_int_equal(tr_instance_state(i), TR_INST_READY);
    assert_int_equal(tr_instance_restarts(i), 2);
    fx_free(f);
}

static void test_remove_and_close_running(void **state)
{
    fx_t *f = fx_new();
    const char *argv[] = {"sleep", "100", NULL};
    tr_instance_spec_t s = spec_sh(argv);
    tr_instance_t *a = start(f, &s);
    s.instance_id = "svc-2";
    tr_instance_t *b = start(f, &s);
    int pa = tr_instance_pid(a), pb = tr_instance_pid(b);
    int nev = f->nev;
    tr_instance_stop(a, on_stopped, f);
    tr_instance_remove(a); /* the pending stop still answers */
    assert_int_equal(f->stops_done, 1);
    run_for(f, 50);
    assert_int_equal(f->nev, nev + 1); /* ready → stopping, then nothing after the removal */
    assert_true(wait_gone(pa, 3000));
    fx_free(f); /* closing kills b */
    assert_true(wait_gone(pb, 3000));
}

typedef struct order_s {
    fx_t *f;
    tr_instance_t *first[1], *second[2];
    int phase;
} order_t;

static void on_second_stopped(void *data)
{
    order_t *o = data;
    o->phase = 2;
    o->f->all_done++;
}

static void on_first_stopped(void *data)
{
    order_t *o = data;
    o->phase = 1;
    for (int k = 0; k < 2; k++)
        assert_true(tr_instance_state(o->second[k]) == TR_INST_READY);
    tr_supervisor_stop_instances(o->f->sup, o->second, 2, on_second_stopped, o);
}

static void on_stopped_too(tr_instance_t *i, void *data)
{
    ((fx_t *)data)->stops_done += 10;
}

/* Reverse dependency order: `api` (depends on `db`) stops first, `db` once it is down. */
static void test_stop_order_groups(void **state)
{
    fx_t *f = fx_new();
    const char *argv[] = {"sleep", "100", NULL};
    tr_instance_spec_t s = spec_sh(argv);
    order_t o = {.f = f};
    s.service = "db";
    s.instance_id = "db-1";
    o.second[0] = start(f, &s);
    s.instance_id = "db-2";
    o.second[1] = start(f, &s);
    s.service = "api";
    s.instance_id = "api-1";
    o.first[0] = start(f, &s);
    /* Two waiters on one instance: both answer. */
    tr_instance_stop(o.first[0], on_stopped, f);
    tr_supervisor_stop_instances(f->sup, o.first, 1, on_first_stopped, &o);
    tr_instance_stop(o.first[0], on_stopped_too, f);
    run_until(f, &f->all_done, 1, 5000);
    assert_int_equal(o.phase, 2);
    assert_int_equal(f->stops_done, 11);
    int api_stopped = -1, db_stopping = -1;
    for (int k = 0; k < f->nev; k++) {
        if (f->ev[k].inst == o.first[0] && f->ev[k].now == TR_INST_STOPPED) api_stopped = k;
        if (f->ev[k].inst == o.second[0] && f->ev[k].now == TR_INST_STOPPING && db_stopping < 0)
            db_stopping = k;
    }
    assert_true(api_stopped >= 0 && db_stopping > api_stopped);
    /* An empty group answers from the loop, not from inside the call. */
    tr_supervisor_stop_instances(f->sup, NULL, 0, on_all_stopped, f);
    assert_int_equal(f->all_done, 1);
    run_until(f, &f->all_done, 2, 1000);
    /* Closing answers a group that is still waiting for the loop. */
    tr_supervisor_stop_instances(f->sup, NULL, 0, on_all_stopped, f);
    fx_free(f);
}

/* The shim contract, checked by a stand-in for the trellis binary. */
static void test_exec_shim_argv(void **state)
{
    char path[] = "/tmp/trellis-shim-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *script = "#!/bin/sh\n"
                         "[ \"$1\" = __exec ] && [ \"$2\" = 9 ] && [ \"$3\" = \"$PPID\" ] && "
                         "[ \"$4\" = -- ] || exit 99\n"
                         "shift 4\nexec \"$@\"\n";
    assert_int_equal(write(fd, script, strlen(script)), (ssize_t)strlen(script));
    close(fd);
    chmod(path, 0755);
    tr_supervisor_options_t o = {0};
    o.self_exe = path;
    fx_t *f = fx_new_with(&o);
    const char *argv[] = {"/bin/sh", "-c", "echo via-shim; exit 5", NULL};
    tr_instance_spec_t s = spec_sh(argv);
    tr_instance_t *i = start(f, &s);
    run_until_state(f, i, TR_INST_FAILED, 3000);
    assert_int_equal(tr_instance_last_exit(i).code, 5);
    assert_int_equal(f->nlines, 1);
    assert_string_equal(f->line[0], "via-shim");
    fx_free(f);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start_env_output_stop),
        cmocka_unit_test(test_policy_never_and_on_failure),
        cmocka_unit_test(test_backoff_growth),
        cmocka_unit_test(test_backoff_formula),
        cmocka_unit_test(test_backoff_resets_after_good_run),
        cmocka_unit_test(test_spawn_failure),
        cmocka_unit_test(test_stop_grace_then_sigkill),
        cmocka_unit_test(test_stop_reaches_grandchild),
        cmocka_unit_test(test_liveness_failure_restarts),
        cmocka_unit_test(test_readiness_transitions),
        cmocka_unit_test(test_six_replicas_ready_fast),
        cmocka_unit_test(test_manual_restart),
        cmocka_unit_test(test_remove_and_close_running),
        cmocka_unit_test(test_stop_order_groups),
        cmocka_unit_test(test_exec_shim_argv),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
