/* The process supervisor: instances, their state machine, restart backoff and stopping. */
#include "supervisor/supervisor.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"
#include "supervisor/process.h"
#include "trellis/error.h"
#include "trellis/http_client.h"
#include "trellis/log.h"

#define DEFAULT_BACKOFF_BASE_MS  100
#define DEFAULT_BACKOFF_MAX_MS   30000
#define DEFAULT_GRACE_MS         10000
#define DEFAULT_BACKOFF_RESET_MS 10000
#define DEFAULT_READY_FAST_MS    50
#define DEFAULT_KILL_TIMEOUT_MS  5000
#define NAUTO_ENV                4 /* PORT, TRELLIS_SERVICE, TRELLIS_INSTANCE, OTEL_SERVICE_NAME */

/* One tr_instance_stop callback waiting for the instance to be stopped. */
typedef struct waiter_s {
    struct waiter_s *next;
    void (*cb)(tr_instance_t *i, void *data);
    void *data;
} waiter_t;

/* A tr_supervisor_stop_instances call: answers when its last instance is stopped. */
typedef struct group_s {
    struct group_s *next;
    size_t pending;
    void (*done)(void *data);
    void *data;
} group_t;

struct tr_supervisor_s {
    uv_loop_t *loop;
    tr_supervisor_options_t opts;
    char **env; /* copy of opts.env */
    size_t nenv;
    tr_http_client_t *http;   /* the probes'; no keep-alive */
    tr_instance_t *instances; /* live (not removed) instances */
    size_t allocated;         /* instances not yet freed, removed or not */
    tr_series_t *state_series[TR_INST__COUNT];
    tr_metric_t *restarts_metric;
    struct group_s *idle_groups; /* stop groups with nothing to wait for, answered from `later` */
    uv_timer_t later;
    bool closing, later_closed;
    void (*close_done)(void *data);
    void *close_data;
};

struct tr_instance_s {
    tr_supervisor_t *sup;
    tr_instance_t *prev, *next;
    tr_instance_spec_t spec; /* strings and arrays owned, see spec_copy */
    char *auto_env[NAUTO_ENV];
    const char **env; /* supervisor env, auto env, spec env; NULL-terminated */
    tr_instance_state_t state;
    tr_process_t *proc;
    int pid;
    int last_pid; /* for the log lines after the process is gone */
    tr_probe_t *live, *ready;
    uv_timer_t timer; /* backoff, grace, SIGKILL deadline: one at a time */
    uv_timer_t later; /* runs a stop's `done` from the loop */
    unsigned refs;    /* handles and children (process, probes) not yet closed */
    uint32_t restarts, consecutive;
    uint64_t backoff_ms;
    int64_t started_at, ready_since;
    uint64_t first_ready; /* loop time of this run's first READY, 0 if none */
    tr_instance_exit_t last_exit;
    bool want_stop, restart_after_stop, liveness_kill, removed;
    struct waiter_s *waiters; /* stop callbacks, in the order they were asked for */
    tr_series_t *restarts_series;
};

static const char *const state_names[] = {
#define TR_INSTANCE_STATE_NAME(name, str) str,
    TR_INSTANCE_STATE_MAP(TR_INSTANCE_STATE_NAME)
#undef TR_INSTANCE_STATE_NAME
};

const char *tr_instance_state_name(tr_instance_state_t state)
{
    return (unsigned)state < TR_INST__COUNT ? state_names[state] : "unknown";
}

uint64_t tr_supervisor_backoff(uint64_t base_ms, uint64_t max_ms, uint32_t failures)
{
    uint64_t d = base_ms;
    for (uint32_t n = 1; n < failures && d < max_ms; n++)
        d *= 2;
    return d < max_ms ? d : max_ms;
}

static int64_t unix_ms(void)
{
    uv_timeval64_t tv;
    uv_gettimeofday(&tv);
    return tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* ---- spec copies ---- */

static char **strv_dup(const char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    char **out = tr_malloc((n + 1) * sizeof(*out));
    for (size_t k = 0; k < n; k++)
        out[k] = tr_strdup(v[k]);
    out[n] = NULL;
    return out;
}

static void strv_free(char **v)
{
    for (size_t k = 0; v && v[k]; k++)
        free(v[k]);
    free(v);
}

static char *dup_opt(const char *s)
{
    return s ? tr_strdup(s) : NULL;
}

static void spec_copy(tr_instance_spec_t *dst, const tr_instance_spec_t *src)
{
    *dst = *src;
    dst->service = tr_strdup(src->service);
    dst->instance_id = tr_strdup(src->instance_id);
    dst->version = dup_opt(src->version);
    dst->cwd = dup_opt(src->cwd);
    dst->argv = (const char *const *)strv_dup(src->argv);
    dst->env = (const char *const *)strv_dup(src->env);
    tr_probe_spec_defaults(&dst->liveness, "/health/live");
    tr_probe_spec_defaults(&dst->readiness, "/health/ready");
    dst->liveness.path = tr_strdup(dst->liveness.path);
    dst->readiness.path = tr_strdup(dst->readiness.path);
    if (!dst->backoff_base_ms) dst->backoff_base_ms = DEFAULT_BACKOFF_BASE_MS;
    if (!dst->backoff_max_ms) dst->backoff_max_ms = DEFAULT_BACKOFF_MAX_MS;
    if (dst->backoff_max_ms < dst->backoff_base_ms) dst->backoff_max_ms = dst->backoff_base_ms;
    if (!dst->stop_signal) dst->stop_signal = SIGTERM;
    if (!dst->stop_grace_ms) dst->stop_grace_ms = DEFAULT_GRACE_MS;
}

static void spec_free(tr_instance_spec_t *s)
{
    free((char *)s->service);
    free((char *)s->instance_id);
    free((char *)s->version);
    free((char *)s->cwd);
    free((char *)s->liveness.path);
    free((char *)s->readiness.path);
    strv_free((char **)s->argv);
    strv_free((char **)s->env);
}

/* The child's extra environment, in increasing precedence. */
static void env_build(tr_instance_t *i)
{
    tr_supervisor_t *s = i->sup;
    const tr_instance_spec_t *sp = &i->spec;
    size_t nspec = 0, n = 0;
    while (sp->env[nspec])
        nspec++;
    i->auto_env[0] = tr_malloc(16);
    snprintf(i->auto_env[0], 16, "PORT=%u", sp->port);
    i->auto_env[1] = tr_malloc(strlen(sp->service) + 17);
    sprintf(i->auto_env[1], "TRELLIS_SERVICE=%s", sp->service);
    i->auto_env[2] = tr_malloc(strlen(sp->instance_id) + 18);
    sprintf(i->auto_env[2], "TRELLIS_INSTANCE=%s", sp->instance_id);
    i->auto_env[3] = tr_malloc(strlen(sp->service) + 19);
    sprintf(i->auto_env[3], "OTEL_SERVICE_NAME=%s", sp->service);
    i->env = tr_malloc((s->nenv + NAUTO_ENV + nspec + 1) * sizeof(*i->env));
    for (size_t k = 0; k < s->nenv; k++)
        i->env[n++] = s->env[k];
    for (size_t k = sp->port ? 0 : 1; k < NAUTO_ENV; k++)
        i->env[n++] = i->auto_env[k];
    for (size_t k = 0; k < nspec; k++)
        i->env[n++] = sp->env[k];
    i->env[n] = NULL;
}

/* ---- lifetime ---- */

static void sup_maybe_free(tr_supervisor_t *s);

static void instance_unref(tr_instance_t *i)
{
    if (--i->refs > 0 || !i->removed) return;
    tr_supervisor_t *s = i->sup;
    spec_free(&i->spec);
    for (size_t k = 0; k < NAUTO_ENV; k++)
        free(i->auto_env[k]);
    free(i->env);
    free(i);
    s->allocated--;
    sup_maybe_free(s);
}

static void on_handle_closed(uv_handle_t *h)
{
    instance_unref(h->data);
}

static void on_child_closed(void *data)
{
    instance_unref(data);
}

static void probes_close(tr_instance_t *i)
{
    if (i->live) tr_probe_close(i->live, on_child_closed, i);
    if (i->ready) tr_probe_close(i->ready, on_child_closed, i);
    i->live = i->ready = NULL;
}

static void proc_close(tr_instance_t *i)
{
    if (i->proc) tr_process_close(i->proc, on_child_closed, i);
    i->proc = NULL;
    if (i->pid) i->last_pid = i->pid;
    i->pid = 0;
}

/* ---- state ---- */

static void set_state(tr_instance_t *i, tr_instance_state_t now, const char *reason)
{
    tr_instance_state_t old = i->state;
    if (old == now) return;
    i->state = now;
    tr_supervisor_t *s = i->sup;
    tr_gauge_add(s->state_series[old], -1);
    tr_gauge_add(s->state_series[now], 1);
    if (now == TR_INST_READY) i->ready_since = unix_ms();
    if (old == TR_INST_READY) i->ready_since = 0;
    tr_log(now == TR_INST_FAILED ? TR_LOG_WARN : TR_LOG_INFO, "supervisor: instance state",
           TR_LOG_STR("service", i->spec.service), TR_LOG_STR("instance", i->spec.instance_id),
           TR_LOG_INT("pid", i->pid ? i->pid : i->last_pid), TR_LOG_STR("from", state_names[old]),
           TR_LOG_STR("state", state_names[now]), TR_LOG_STR("reason", reason));
    if (s->opts.events.on_state && !i->removed)
        s->opts.events.on_state(i, old, now, reason, s->opts.events.data);
}

static bool alive(const tr_instance_t *i)
{
    return i->state == TR_INST_STARTING || i->state == TR_INST_RUNNING || i->state == TR_INST_READY;
}

/* The instance is stopped (or gone): answer every tr_instance_stop waiting for it. */
static void fire_done(tr_instance_t *i)
{
    waiter_t *w = i->waiters;
    i->waiters = NULL;
    while (w) {
        waiter_t *next = w->next;
        w->cb(i, w->data);
        free(w);
        w = next;
    }
}

static void add_waiter(tr_instance_t *i, void (*cb)(tr_instance_t *i, void *data), void *data)
{
    waiter_t *w = tr_calloc(1, sizeof(*w)), **tail = &i->waiters;
    w->cb = cb;
    w->data = data;
    while (*tail)
        tail = &(*tail)->next;
    *tail = w;
}

static void on_later(uv_timer_t *t)
{
    fire_done(t->data);
}

static void spawn(tr_instance_t *i);
static void handle_exit(tr_instance_t *i, int64_t code, int sig, const char *why);

/* ---- probes ---- */

static void on_ready_change(tr_probe_t *p, bool passing, const char *why, void *data)
{
    tr_instance_t *i = data;
    char reason[160];
    snprintf(reason, sizeof(reason), "readiness %s: %s", passing ? "passed" : "failed", why);
    if (passing && (i->state == TR_INST_STARTING || i->state == TR_INST_RUNNING)) {
        if (!i->first_ready) i->first_ready = uv_now(i->sup->loop);
        set_state(i, TR_INST_READY, reason);
    } else if (!passing && i->state == TR_INST_READY) {
        set_state(i, TR_INST_RUNNING, reason);
    }
}

static void begin_kill(tr_instance_t *i, const char *reason);

static void on_live_change(tr_probe_t *p, bool passing, const char *why, void *data)
{
    tr_instance_t *i = data;
    if (passing || !alive(i)) return;
    char reason[160];
    snprintf(reason, sizeof(reason), "liveness failed: %s", why);
    i->liveness_kill = true;
    begin_kill(i, reason);
}

static void probe_start(tr_instance_t *i, bool readiness)
{
    tr_supervisor_t *s = i->sup;
    tr_probe_options_t po = {0};
    po.spec = readiness ? i->spec.readiness : i->spec.liveness;
    po.port = i->spec.port;
    po.http = s->http;
    po.initially_passing = !readiness;
    po.fast_period_ms = readiness ? s->opts.ready_fast_ms : 0;
    po.on_change = readiness ? on_ready_change : on_live_change;
    po.data = i;
    tr_probe_t **slot = readiness ? &i->ready : &i->live;
    if (tr_probe_start(s->loop, &po, slot) == 0) i->refs++;
}

/* ---- running ---- */

static void on_output(tr_process_t *p, int stream, const char *line, size_t len, void *data)
{
    tr_instance_t *i = data;
    tr_supervisor_t *s = i->sup;
    if (s->opts.events.on_output && !i->removed)
        s->opts.events.on_output(i, stream, line, len, s->opts.events.data);
}

static void on_proc_exit(tr_process_t *p, int64_t code, int sig, void *data)
{
    tr_instance_t *i = data;
    char why[64];
    if (sig)
        snprintf(why, sizeof(why), "killed by signal %d", sig);
    else
        snprintf(why, sizeof(why), "exited with code %lld", (long long)code);
    handle_exit(i, code, sig, why);
}

static void spawn(tr_instance_t *i)
{
    tr_supervisor_t *s = i->sup;
    tr_process_options_t po = {0};
    po.argv = i->spec.argv;
    po.cwd = i->spec.cwd;
    po.env = i->env;
    po.shim_exe = s->opts.self_exe;
    po.pdeath_signal = s->opts.pdeath_signal;
    po.drain_ms = s->opts.output_drain_ms;
    po.on_output = on_output;
    po.on_exit = on_proc_exit;
    po.data = i;
    i->liveness_kill = false;
    i->first_ready = 0;
    i->started_at = unix_ms();
    int rc = tr_process_spawn(s->loop, &po, &i->proc);
    if (rc != 0) {
        /* Like a shell: a program that can't be run exits with 127 (not found) or 126. */
        char why[128];
        snprintf(why, sizeof(why), "spawn failed: %s", tr_strerror(rc));
        i->proc = NULL;
        set_state(i, TR_INST_STARTING, why);
        if (!i->removed && i->state == TR_INST_STARTING)
            handle_exit(i, rc == UV_ENOENT ? 127 : 126, 0, why);
        return;
    }
    i->refs++;
    i->pid = tr_process_pid(i->proc);
    set_state(i, TR_INST_STARTING, "spawned");
    if (i->removed || i->state != TR_INST_STARTING) return;
    bool probes = i->spec.port != 0;
    if (probes && i->spec.liveness.enabled) probe_start(i, false);
    if (probes && i->spec.readiness.enabled) {
        probe_start(i, true);
    } else {
        i->first_ready = uv_now(s->loop);
        set_state(i, TR_INST_READY, "no readiness probe");
    }
}

static void count_restart(tr_instance_t *i)
{
    i->restarts++;
    tr_counter_inc(i->restarts_series);
}

static void on_backoff_done(uv_timer_t *t)
{
    tr_instance_t *i = t->data;
    count_restart(i);
    spawn(i);
}

static bool policy_restarts(const tr_instance_t *i, bool failure)
{
    switch (i->spec.restart) {
    case TR_RESTART_ALWAYS:
        return true;
    case TR_RESTART_ON_FAILURE:
        return failure;
    default:
        return false;
    }
}

/* After an unrequested exit: BACKOFF before the next start, or the end (STOPPED/FAILED). */
static void after_crash(tr_instance_t *i, bool failure, const char *why)
{
    char reason[192];
    if (!policy_restarts(i, failure)) {
        snprintf(reason, sizeof(reason), "%s; restart policy: no restart", why);
        set_state(i, failure ? TR_INST_FAILED : TR_INST_STOPPED, reason);
        return;
    }
    uint64_t now = uv_now(i->sup->loop);
    if (i->first_ready && now - i->first_ready >= i->sup->opts.backoff_reset_ms)
        i->consecutive = 0; /* it ran well for a while: start the backoff over */
    i->consecutive++;
    if (i->spec.max_restarts && i->consecutive > i->spec.max_restarts) {
        snprintf(reason, sizeof(reason), "%s; gave up after %u restarts", why,
                 i->spec.max_restarts);
        set_state(i, TR_INST_FAILED, reason);
        return;
    }
    i->backoff_ms =
        tr_supervisor_backoff(i->spec.backoff_base_ms, i->spec.backoff_max_ms, i->consecutive);
    snprintf(reason, sizeof(reason), "%s; restart in %llums", why,
             (unsigned long long)i->backoff_ms);
    uv_timer_start(&i->timer, on_backoff_done, i->backoff_ms, 0);
    set_state(i, TR_INST_BACKOFF, reason);
}

static void handle_exit(tr_instance_t *i, int64_t code, int sig, const char *why)
{
    uv_timer_stop(&i->timer);
    probes_close(i);
    proc_close(i);
    i->last_exit = (tr_instance_exit_t){
        .exited = true, .code = code, .signal = sig, .liveness = i->liveness_kill};
    if (i->want_stop) {
        i->want_stop = false;
        if (i->restart_after_stop) {
            i->restart_after_stop = false;
            fire_done(i);
            count_restart(i);
            spawn(i);
            return;
        }
        set_state(i, TR_INST_STOPPED, why);
        fire_done(i);
        return;
    }
    after_crash(i, sig != 0 || code != 0 || i->last_exit.liveness, why);
}

/* ---- stopping ---- */

static void on_kill_deadline(uv_timer_t *t)
{
    tr_instance_t *i = t->data;
    tr_log_error("supervisor: process did not exit after SIGKILL; abandoning it",
                 TR_LOG_STR("service", i->spec.service),
                 TR_LOG_STR("instance", i->spec.instance_id), TR_LOG_INT("pid", i->pid));
    handle_exit(i, -1, SIGKILL, "did not exit after SIGKILL");
}

static void on_grace_over(uv_timer_t *t)
{
    tr_instance_t *i = t->data;
    tr_log_warn("supervisor: grace period over, sending SIGKILL",
                TR_LOG_STR("service", i->spec.service), TR_LOG_STR("instance", i->spec.instance_id),
                TR_LOG_INT("pid", i->pid), TR_LOG_UINT("grace_ms", i->spec.stop_grace_ms));
    if (i->proc) tr_process_kill(i->proc, SIGKILL);
    uv_timer_start(&i->timer, on_kill_deadline, i->sup->opts.kill_timeout_ms, 0);
}

/* STOPPING: no more probes, the stop signal to the group, SIGKILL when the grace is over. */
static void begin_kill(tr_instance_t *i, const char *reason)
{
    probes_close(i);
    set_state(i, TR_INST_STOPPING, reason);
    if (i->removed || !i->proc) return;
    tr_process_kill(i->proc, i->spec.stop_signal);
    uv_timer_start(&i->timer, on_grace_over, i->spec.stop_grace_ms, 0);
}

void tr_instance_stop(tr_instance_t *i, void (*done)(tr_instance_t *i, void *data), void *data)
{
    if (i->removed) return;
    if (done) add_waiter(i, done, data);
    i->restart_after_stop = false;
    if (alive(i)) {
        i->want_stop = true;
        begin_kill(i, "stop requested");
    } else if (i->state == TR_INST_STOPPING) {
        i->want_stop = true;
    } else {
        uv_timer_stop(&i->timer);
        if (i->state == TR_INST_BACKOFF) set_state(i, TR_INST_STOPPED, "stop requested");
        if (!i->removed) uv_timer_start(&i->later, on_later, 0, 0);
    }
}

void tr_instance_restart(tr_instance_t *i)
{
    if (i->removed) return;
    if (alive(i)) {
        i->want_stop = i->restart_after_stop = true;
        begin_kill(i, "restart requested");
    } else if (i->state == TR_INST_STOPPING) {
        i->want_stop = i->restart_after_stop = true;
    } else {
        uv_timer_stop(&i->timer);
        if (i->state != TR_INST_BACKOFF) i->consecutive = 0;
        count_restart(i);
        spawn(i);
    }
}

static void on_group_member_stopped(tr_instance_t *i, void *data)
{
    group_t *g = data;
    if (--g->pending > 0) return;
    void (*cb)(void *) = g->done;
    void *cb_data = g->data;
    free(g);
    if (cb) cb(cb_data);
}

/* Answers the groups that had nothing to wait for; from the loop, as promised. */
static void answer_idle_groups(tr_supervisor_t *s)
{
    group_t *g = s->idle_groups;
    s->idle_groups = NULL;
    while (g) {
        group_t *next = g->next;
        void (*cb)(void *) = g->done;
        void *cb_data = g->data;
        free(g);
        if (cb) cb(cb_data);
        g = next;
    }
}

static void on_sup_later(uv_timer_t *t)
{
    answer_idle_groups(t->data);
}

void tr_supervisor_stop_instances(tr_supervisor_t *s, tr_instance_t *const *list, size_t n,
                                  void (*done)(void *data), void *data)
{
    group_t *g = tr_calloc(1, sizeof(*g));
    g->done = done;
    g->data = data;
    for (size_t k = 0; k < n; k++)
        if (!list[k]->removed) g->pending++;
    if (g->pending == 0) {
        g->next = s->idle_groups;
        s->idle_groups = g;
        uv_timer_start(&s->later, on_sup_later, 0, 0);
        return;
    }
    /* Every member answers from the loop at the earliest, so `g` outlives this loop. */
    for (size_t k = 0; k < n; k++)
        if (!list[k]->removed) tr_instance_stop(list[k], on_group_member_stopped, g);
}

void tr_supervisor_stop_all(tr_supervisor_t *s, void (*done)(void *data), void *data)
{
    size_t n = 0;
    for (tr_instance_t *i = s->instances; i; i = i->next)
        n++;
    tr_instance_t **list = tr_malloc((n ? n : 1) * sizeof(*list));
    n = 0;
    for (tr_instance_t *i = s->instances; i; i = i->next)
        list[n++] = i;
    tr_supervisor_stop_instances(s, list, n, done, data);
    free(list);
}

void tr_instance_remove(tr_instance_t *i)
{
    if (i->removed) return;
    tr_supervisor_t *s = i->sup;
    tr_gauge_add(s->state_series[i->state], -1);
    i->state = TR_INST_STOPPED; /* what a pending stop's `done` sees; no on_state */
    *(i->prev ? &i->prev->next : &s->instances) = i->next;
    if (i->next) i->next->prev = i->prev;
    i->prev = i->next = NULL;
    probes_close(i);
    proc_close(i);
    uv_timer_stop(&i->later);
    i->removed = true;
    /* A pending stop still answers, so stop_all and friends don't wait forever. */
    fire_done(i);
    uv_close((uv_handle_t *)&i->timer, on_handle_closed);
    uv_close((uv_handle_t *)&i->later, on_handle_closed);
}

/* ---- the supervisor ---- */

static void register_metrics(tr_supervisor_t *s)
{
    tr_metrics_t *reg = s->opts.metrics ? s->opts.metrics : tr_metrics_default();
    static const char *const state_label[] = {"state", NULL};
    static const char *const service_label[] = {"service", NULL};
    tr_metric_t *g = tr_metrics_gauge(reg, "trellis_supervisor_instances",
                                      "Supervised instances by state.", state_label);
    for (int k = 0; k < TR_INST__COUNT; k++) {
        const char *v[] = {state_names[k], NULL};
        s->state_series[k] = g ? tr_metric_series(g, v) : NULL;
    }
    s->restarts_metric = tr_metrics_counter(reg, "trellis_supervisor_restarts_total",
                                            "Instance restarts (crashes, failed liveness "
                                            "probes, restart requests).",
                                            service_label);
}

tr_supervisor_t *tr_supervisor_new(uv_loop_t *loop, const tr_supervisor_options_t *opts)
{
    tr_supervisor_t *s = tr_calloc(1, sizeof(*s));
    s->loop = loop;
    s->opts = *opts;
    s->env = strv_dup(opts->env);
    while (s->env[s->nenv])
        s->nenv++;
    s->opts.env = (const char *const *)s->env;
    if (!s->opts.pdeath_signal) s->opts.pdeath_signal = SIGKILL;
    if (!s->opts.backoff_reset_ms) s->opts.backoff_reset_ms = DEFAULT_BACKOFF_RESET_MS;
    if (!s->opts.ready_fast_ms) s->opts.ready_fast_ms = DEFAULT_READY_FAST_MS;
    if (!s->opts.kill_timeout_ms) s->opts.kill_timeout_ms = DEFAULT_KILL_TIMEOUT_MS;
    tr_http_client_options_t ho;
    tr_http_client_options_init(&ho);
    /* A fresh connection per probe, like a kubelet: a pooled one could outlive the child. */
    ho.max_idle_per_endpoint = 0;
    s->http = tr_http_client_new(loop, &ho);
    uv_timer_init(loop, &s->later);
    s->later.data = s;
    register_metrics(s);
    return s;
}

int tr_supervisor_start(tr_supervisor_t *s, const tr_instance_spec_t *spec, tr_instance_t **out)
{
    if (s->closing) return TR_ESTATE;
    if (!spec->service || !spec->instance_id || !spec->argv || !spec->argv[0]) return UV_EINVAL;
    tr_instance_t *i = tr_calloc(1, sizeof(*i));
    i->sup = s;
    spec_copy(&i->spec, spec);
    env_build(i);
    i->state = TR_INST_STOPPED;
    tr_gauge_add(s->state_series[i->state], 1);
    uv_timer_init(s->loop, &i->timer);
    uv_timer_init(s->loop, &i->later);
    i->timer.data = i->later.data = i;
    i->refs = 2;
    const char *v[] = {i->spec.service, NULL};
    i->restarts_series = s->restarts_metric ? tr_metric_series(s->restarts_metric, v) : NULL;
    i->next = s->instances;
    if (i->next) i->next->prev = i;
    s->instances = i;
    s->allocated++;
    if (out) *out = i;
    spawn(i);
    return 0;
}

static void sup_maybe_free(tr_supervisor_t *s)
{
    if (!s->closing || s->allocated > 0 || !s->http || !s->later_closed) return;
    tr_http_client_t *http = s->http;
    s->http = NULL;
    void (*cb)(void *) = s->close_done;
    void *data = s->close_data;
    strv_free(s->env);
    free(s);
    /* The client frees itself once its sockets are closed; the loop runs until then. */
    tr_http_client_close(http, NULL);
    if (cb) cb(data);
}

static void on_sup_later_closed(uv_handle_t *h)
{
    tr_supervisor_t *s = h->data;
    s->later_closed = true;
    sup_maybe_free(s);
}

void tr_supervisor_close(tr_supervisor_t *s, void (*done)(void *data), void *data)
{
    if (s->closing) return;
    s->closing = true;
    s->close_done = done;
    s->close_data = data;
    while (s->instances)
        tr_instance_remove(s->instances);
    answer_idle_groups(s); /* they answer, even when cut short */
    uv_close((uv_handle_t *)&s->later, on_sup_later_closed);
}

/* ---- accessors ---- */

tr_instance_state_t tr_instance_state(const tr_instance_t *i)
{
    return i->state;
}

const tr_instance_spec_t *tr_instance_spec(const tr_instance_t *i)
{
    return &i->spec;
}

int tr_instance_pid(const tr_instance_t *i)
{
    return i->pid;
}

uint32_t tr_instance_restarts(const tr_instance_t *i)
{
    return i->restarts;
}

int64_t tr_instance_started_at(const tr_instance_t *i)
{
    return i->started_at;
}

int64_t tr_instance_ready_since(const tr_instance_t *i)
{
    return i->ready_since;
}

tr_instance_exit_t tr_instance_last_exit(const tr_instance_t *i)
{
    return i->last_exit;
}

uint64_t tr_instance_backoff_ms(const tr_instance_t *i)
{
    return i->backoff_ms;
}

tr_supervisor_t *tr_instance_supervisor(const tr_instance_t *i)
{
    return i->sup;
}

void *tr_instance_data(const tr_instance_t *i)
{
    return i->spec.data;
}
