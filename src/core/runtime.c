/* Worker threads with a loop each; the main thread turns signals into stop and reload. */
#include "trellis/runtime.h"

#include "core/mem.h"
#include "trellis/error.h"

#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct tr_worker_s {
    int id;
    uv_loop_t loop;
    uv_async_t wake;  /* main → worker: stop (graceful or forced) */
    uv_timer_t grace; /* forces the stop when the grace period ends */
    uv_thread_t thread;
    struct runtime_s *rt;
    void *user;
    atomic_int stop_level; /* 0 running, 1 graceful, 2 forced */
    int stop_seen;
    int start_err;
    bool finished;
};

typedef struct runtime_s {
    tr_runtime_options_t opts;
    uv_loop_t *main_loop;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_async_t exited; /* worker → main: a worker's loop ended */
    uv_async_t stop_req;
    tr_worker_t *workers;
    int nworkers;
    atomic_int nexited;
    int stop_level;
    uv_sem_t started; /* every worker's handles exist before main may signal them */
    uv_mutex_t lock;  /* guards sending to a worker's async handle while it may close */
} runtime_t;

static runtime_t *volatile running;

int tr_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

uv_loop_t *tr_worker_loop(tr_worker_t *w)
{
    return &w->loop;
}

int tr_worker_id(const tr_worker_t *w)
{
    return w->id;
}

void tr_worker_set_data(tr_worker_t *w, void *data)
{
    w->user = data;
}

void *tr_worker_data(const tr_worker_t *w)
{
    return w->user;
}

static void on_grace(uv_timer_t *t)
{
    tr_worker_t *w = t->data;
    atomic_store(&w->stop_level, 2);
    uv_async_send(&w->wake);
}

static void on_wake(uv_async_t *a)
{
    tr_worker_t *w = a->data;
    int level = atomic_load(&w->stop_level);
    if (level <= w->stop_seen) return;
    bool first = w->stop_seen == 0;
    w->stop_seen = level;
    if (first) {
        uv_timer_start(&w->grace, on_grace, w->rt->opts.grace_ms, 0);
        /* Neither handle may keep the loop alive once the work itself is done. */
        uv_unref((uv_handle_t *)&w->grace);
        uv_unref((uv_handle_t *)&w->wake);
    }
    if (!w->rt->opts.on_stop) return;
    /* Two stops can arrive as one wake-up; the graceful call still comes first. */
    if (first && level >= 2) w->rt->opts.on_stop(w, false, w->rt->opts.data);
    w->rt->opts.on_stop(w, level >= 2, w->rt->opts.data);
}

static void worker_main(void *arg)
{
    tr_worker_t *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_mutex_lock(&w->rt->lock);
    w->finished = true;
    uv_mutex_unlock(&w->rt->lock);
    uv_close((uv_handle_t *)&w->wake, NULL);
    uv_close((uv_handle_t *)&w->grace, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&w->loop) != 0)
        fprintf(stderr, "trellis: worker %d ended with open handles\n", w->id);
    atomic_fetch_add(&w->rt->nexited, 1);
    uv_async_send(&w->rt->exited);
}

static void broadcast_stop(runtime_t *rt, int level)
{
    if (level <= rt->stop_level) return;
    rt->stop_level = level;
    uv_mutex_lock(&rt->lock);
    for (int i = 0; i < rt->nworkers; i++) {
        atomic_store(&rt->workers[i].stop_level, level);
        if (!rt->workers[i].finished) uv_async_send(&rt->workers[i].wake);
    }
    uv_mutex_unlock(&rt->lock);
}

static void on_signal(uv_signal_t *s, int signum)
{
    runtime_t *rt = s->data;
    if (signum == SIGHUP) {
        if (rt->opts.on_reload) rt->opts.on_reload(rt->opts.data);
        return;
    }
    broadcast_stop(rt, rt->stop_level + 1);
}

static void on_stop_req(uv_async_t *a)
{
    runtime_t *rt = a->data;
    broadcast_stop(rt, rt->stop_level ? 2 : 1);
}

static void on_exited(uv_async_t *a)
{
    runtime_t *rt = a->data;
    if (atomic_load(&rt->nexited) < rt->nworkers) return;
    uv_close((uv_handle_t *)&rt->sig_term, NULL);
    uv_close((uv_handle_t *)&rt->sig_int, NULL);
    uv_close((uv_handle_t *)&rt->sig_hup, NULL);
    uv_close((uv_handle_t *)&rt->exited, NULL);
    uv_close((uv_handle_t *)&rt->stop_req, NULL);
}

void tr_runtime_stop(void)
{
    runtime_t *rt = running;
    if (rt) uv_async_send(&rt->stop_req);
}

/* Servers hold one descriptor per connection: use all the hard limit allows, as nginx's
 * worker_rlimit_nofile does, instead of the 1024 a login shell often gives. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void main_handles_init(runtime_t *rt)
{
    uv_signal_init(rt->main_loop, &rt->sig_term);
    uv_signal_init(rt->main_loop, &rt->sig_int);
    uv_signal_init(rt->main_loop, &rt->sig_hup);
    rt->sig_term.data = rt->sig_int.data = rt->sig_hup.data = rt;
    uv_signal_start(&rt->sig_term, on_signal, SIGTERM);
    uv_signal_start(&rt->sig_int, on_signal, SIGINT);
    uv_signal_start(&rt->sig_hup, on_signal, SIGHUP);
    uv_async_init(rt->main_loop, &rt->exited, on_exited);
    uv_async_init(rt->main_loop, &rt->stop_req, on_stop_req);
    rt->exited.data = rt->stop_req.data = rt;
}

/* Loops are created and started on the worker's thread so start callbacks run there. */
static void worker_boot(void *arg)
{
    tr_worker_t *w = arg;
    uv_loop_init(&w->loop);
    uv_async_init(&w->loop, &w->wake, on_wake);
    uv_timer_init(&w->loop, &w->grace);
    w->wake.data = w->grace.data = w;
    if (w->rt->opts.on_start) w->start_err = w->rt->opts.on_start(w, w->rt->opts.data);
    uv_sem_post(&w->rt->started);
    if (w->start_err) {
        /* Stop everyone, this worker included, through the normal path. */
        uv_async_send(&w->rt->stop_req);
    }
    worker_main(w);
}

int tr_runtime_run(const tr_runtime_options_t *opts)
{
    runtime_t rt;
    memset(&rt, 0, sizeof(rt));
    rt.opts = *opts;
    if (!rt.opts.grace_ms) rt.opts.grace_ms = 10000;
    rt.nworkers = opts->workers > 0 ? opts->workers : tr_cpu_count();
    rt.main_loop = tr_malloc(sizeof(uv_loop_t));
    uv_mutex_init(&rt.lock);
    uv_sem_init(&rt.started, 0);
    uv_loop_init(rt.main_loop);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    main_handles_init(&rt);
    running = &rt;
    rt.workers = tr_calloc((size_t)rt.nworkers, sizeof(tr_worker_t));
    for (int i = 0; i < rt.nworkers; i++) {
        tr_worker_t *w = &rt.workers[i];
        w->id = i;
        w->rt = &rt;
        uv_thread_create(&w->thread, worker_boot, w);
    }
    for (int i = 0; i < rt.nworkers; i++)
        uv_sem_wait(&rt.started);
    uv_run(rt.main_loop, UV_RUN_DEFAULT);
    int err = 0;
    for (int i = 0; i < rt.nworkers; i++) {
        uv_thread_join(&rt.workers[i].thread);
        if (!err && rt.workers[i].start_err) err = rt.workers[i].start_err;
    }
    running = NULL;
    uv_loop_close(rt.main_loop);
    uv_mutex_destroy(&rt.lock);
    uv_sem_destroy(&rt.started);
    free(rt.main_loop);
    free(rt.workers);
    return err;
}
