/*
 * Rollouts in `trellis up`: a service moves to a new version while it serves.
 *
 *   canary      new replicas start held out of the registry; once all are ready, the
 *               registry weights send steps[i] % of the traffic to them; each step lasts
 *               `interval` and is judged from the gateway's own per-endpoint attempt
 *               statistics (failures and p99 of every attempt, so retries hide nothing);
 *               after the last step (100 %) the old replicas leave the registry, drain and stop.
 *   blue-green  green starts held; once all are ready it is registered and blue leaves the
 *               registry (all traffic switches at once); green is judged for `interval` while
 *               blue keeps running, then blue stops.
 *   rolling     one new replica at a time: start, ready, judged for `interval`, then one old
 *               replica leaves the registry, drains and stops.
 *
 * A breach (error rate or p99 over the limit, a new replica not ready in time or crashing, or
 * an abort) rolls back: old-version capacity is restored first (stopped old replicas are
 * started again and must be ready), old replicas get their traffic back, and only then do
 * the new ones leave the registry, drain and stop. Every transition is an event in the
 * rollout's history (GET /api/rollouts/<svc>).
 *
 * Everything runs on the control plane's loop, driven by one 200 ms timer per rollout.
 */
#include "cli/up.h"

#include "core/mem.h"
#include "trellis/error.h"
#include "trellis/http_json.h"
#include "trellis/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TICK_MS        200
#define MAX_STEPS      16
#define HISTORY_KEEP   10
#define WEIGHT_TOTAL   1000
#define CRASH_RESTARTS 2 /* a new replica restarted this often is a failed rollout */

typedef enum {
    ST_STARTING,  /* new replicas starting (canary, blue-green; rolling: one at a time) */
    ST_STEPPING,  /* canary: a share of traffic on the new version, judged */
    ST_SWITCHING, /* blue-green: green registered; blue leaves on the next tick */
    ST_OBSERVING, /* blue-green: all traffic on green, blue still running; judged */
    ST_RETIRING,  /* rolling: one old replica out of the registry, draining; then stopped */
    ST_PROMOTING, /* old replicas out of the registry, draining; then stopped */
    ST_RESTORING, /* rolling back: old capacity starting again */
    ST_REVERTING, /* rolling back: old replicas have the traffic; new ones drain */
    ST_SUCCEEDED,
    ST_ROLLED_BACK,
    ST_ABORTED_BY_SHUTDOWN
} state_t;

static const char *const state_names[] = {"starting",  "stepping",    "switching",  "observing",
                                          "retiring",  "promoting",   "restoring",  "reverting",
                                          "succeeded", "rolled_back", "interrupted"};

typedef enum { STRAT_CANARY, STRAT_BLUE_GREEN, STRAT_ROLLING } strategy_t;
static const char *const strategy_names[] = {"canary", "blue-green", "rolling"};

struct rollout_s {
    up_t *up;
    svc_t *svc;
    rollout_t *next; /* history */
    unsigned id;
    strategy_t strategy;
    char *from_version, *to_version;
    char **from_cmd, **to_cmd;
    uint32_t steps[MAX_STEPS];
    size_t nsteps, step;
    uint64_t interval_ms, ready_timeout_ms, drain_ms, max_p99_ms, min_attempts;
    double max_error_rate;
    state_t state;
    uint64_t since;               /* loop time the state began */
    int64_t started_at, ended_at; /* wall ms */
    char reason[256];
    json_t *events;
    replica_t **fresh, **old, **restore; /* new version; old at the start; old restarted */
    json_t *new_ids;                     /* the fresh replicas' IDs (outlive them) */
    size_t nfresh, nold, nrestore;
    size_t replaced;                  /* rolling: old replicas retired so far */
    tr_gateway_ep_stats_t base, last; /* fresh replicas' stats at the window start; latest */
    uv_timer_t timer;
    bool timer_open;
};

static unsigned next_id = 1;

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void event(rollout_t *ro, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void event(rollout_t *ro, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_array_append_new(ro->events,
                          json_pack("{s:I, s:s}", "at", (json_int_t)wall_ms(), "message", msg));
    tr_log_info("up: rollout", TR_LOG_STR("service", ro->svc->def->name),
                TR_LOG_STR("version", ro->to_version), TR_LOG_STR("event", msg));
}

static void set_state(rollout_t *ro, state_t st)
{
    ro->state = st;
    ro->since = uv_now(ro->up->loop);
}

static bool ready(const replica_t *r)
{
    return r->inst && tr_instance_state(r->inst) == TR_INST_READY;
}

static bool all_ready(replica_t **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!ready(list[i])) return false;
    return true;
}

static void push(replica_t ***list, size_t *n, replica_t *r)
{
    *list = tr_realloc(*list, (*n + 1) * sizeof(**list));
    (*list)[(*n)++] = r;
}

/* A new replica of the service running `version`/`cmd`, started now. */
static replica_t *spawn(rollout_t *ro, const char *version, char **cmd, bool hold, uint32_t weight)
{
    replica_t *r = up_replica_add(ro->svc);
    free(r->version);
    up_strv_free(r->cmd);
    r->version = version ? tr_strdup(version) : NULL;
    r->cmd = up_strv_dup(cmd);
    r->hold = hold;
    r->weight = weight;
    up_start_replica(ro->up, ro->svc, r);
    if (!strcmp(version ? version : "", ro->to_version))
        json_array_append_new(ro->new_ids, json_string(r->id));
    return r;
}

/* Puts a replica in the registry with `weight`, or takes it out (weight 0). */
static void route(rollout_t *ro, replica_t *r, uint32_t weight)
{
    if (weight == 0) {
        r->hold = true;
        if (r->registered) up_registry_call(ro->up, r, false);
        return;
    }
    r->hold = false;
    bool changed = r->weight != weight;
    r->weight = weight;
    if (ready(r) && (!r->registered || changed)) up_registry_call(ro->up, r, true);
}

/* Canary weights: `pct` of WEIGHT_TOTAL over the fresh replicas, the rest over the old. */
static void apply_split(rollout_t *ro, uint32_t pct)
{
    uint32_t fresh_w = ro->nfresh ? pct * WEIGHT_TOTAL / 100 / (uint32_t)ro->nfresh : 0;
    uint32_t old_w = ro->nold ? (100 - pct) * WEIGHT_TOTAL / 100 / (uint32_t)ro->nold : 0;
    for (size_t i = 0; i < ro->nfresh; i++)
        route(ro, ro->fresh[i], pct ? (fresh_w ? fresh_w : 1) : 0);
    for (size_t i = 0; i < ro->nold; i++)
        route(ro, ro->old[i], pct < 100 ? (old_w ? old_w : 1) : 0);
}

static void fresh_stats(rollout_t *ro, tr_gateway_ep_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < ro->nfresh; i++) {
        tr_gateway_ep_stats_t one;
        if (tr_gateway_endpoint_stats(ro->up->gw, ro->fresh[i]->id, &one))
            tr_gateway_ep_stats_add(out, &one);
    }
}

static void window_start(rollout_t *ro)
{
    fresh_stats(ro, &ro->base);
}

/* The fresh replicas' stats since window_start; fills ro->last. */
static void window(rollout_t *ro)
{
    fresh_stats(ro, &ro->last);
    tr_gateway_ep_stats_sub(&ro->last, &ro->base);
}

/* True (and `why` filled) when the window breaches a limit. */
static bool breached(rollout_t *ro, char *why, size_t n)
{
    window(ro);
    const tr_gateway_ep_stats_t *w = &ro->last;
    if (w->attempts < ro->min_attempts || w->attempts == 0) return false;
    double rate = (double)w->failures / (double)w->attempts;
    if (rate > ro->max_error_rate) {
        snprintf(why, n, "error rate %.2f%% over %llu attempts exceeds the limit of %.2f%%",
                 rate * 100, (unsigned long long)w->attempts, ro->max_error_rate * 100);
        return true;
    }
    uint32_t p99 = tr_gateway_ep_stats_quantile(w, 0.99);
    if (ro->max_p99_ms && p99 > ro->max_p99_ms) {
        if (p99 == UINT32_MAX)
            snprintf(why, n, "p99 latency over %u ms exceeds the limit of %llu ms",
                     tr_gateway_lat_bounds_ms[TR_GATEWAY_LAT_BUCKETS - 2],
                     (unsigned long long)ro->max_p99_ms);
        else
            snprintf(why, n, "p99 latency up to %u ms exceeds the limit of %llu ms", p99,
                     (unsigned long long)ro->max_p99_ms);
        return true;
    }
    return false;
}

static bool crashed(rollout_t *ro, char *why, size_t n)
{
    for (size_t i = 0; i < ro->nfresh; i++) {
        replica_t *r = ro->fresh[i];
        if (!r->inst) continue;
        tr_instance_state_t st = tr_instance_state(r->inst);
        if (tr_instance_restarts(r->inst) >= CRASH_RESTARTS || st == TR_INST_FAILED) {
            snprintf(why, n, "new replica %s is failing (%s, %u restarts)", r->id,
                     tr_instance_state_name(st), tr_instance_restarts(r->inst));
            return true;
        }
    }
    return false;
}

static void stop_timer(rollout_t *ro)
{
    if (ro->timer_open) {
        uv_close((uv_handle_t *)&ro->timer, NULL);
        ro->timer_open = false;
    }
}

static void rollout_free(rollout_t *ro)
{
    json_decref(ro->events);
    json_decref(ro->new_ids);
    free(ro->from_version);
    free(ro->to_version);
    up_strv_free(ro->from_cmd);
    up_strv_free(ro->to_cmd);
    free(ro->fresh);
    free(ro->old);
    free(ro->restore);
    free(ro);
}

/* Moves the active rollout into the service's history (its timer is closed here; the
 * memory lives on in the history until HISTORY_KEEP newer ones push it out). */
static void finish(rollout_t *ro, state_t st)
{
    set_state(ro, st);
    ro->ended_at = wall_ms();
    stop_timer(ro);
    /* Replicas may be freed from now on: only IDs and events stay. */
    ro->nfresh = ro->nold = ro->nrestore = 0;
    svc_t *s = ro->svc;
    s->rollout = NULL;
    ro->next = s->history;
    s->history = ro;
    rollout_t *p = s->history;
    for (int k = 1; p && k < HISTORY_KEEP; k++)
        p = p->next;
    if (p && p->next) {
        rollout_t *drop = p->next;
        p->next = NULL;
        while (drop) {
            rollout_t *nx = drop->next;
            rollout_free(drop);
            drop = nx;
        }
    }
}

static void rollback(rollout_t *ro, const char *why)
{
    snprintf(ro->reason, sizeof(ro->reason), "%s", why);
    event(ro, "rolling back: %s", why);
    /* Old capacity first: replicas retired by a rolling update start again. */
    for (size_t i = 0; i < ro->replaced; i++)
        push(&ro->restore, &ro->nrestore, spawn(ro, ro->from_version, ro->from_cmd, false, 0));
    if (ro->nrestore)
        event(ro, "starting %zu replica(s) of %s again", ro->nrestore,
              ro->from_version ? ro->from_version : "the old version");
    set_state(ro, ST_RESTORING);
}

static void promote(rollout_t *ro)
{
    for (size_t i = 0; i < ro->nold; i++)
        route(ro, ro->old[i], 0);
    for (size_t i = 0; i < ro->nfresh; i++)
        route(ro, ro->fresh[i], 1);
    event(ro, "all traffic on %s; draining %zu old replica(s) for %llu ms", ro->to_version,
          ro->nold, (unsigned long long)ro->drain_ms);
    set_state(ro, ST_PROMOTING);
}

static void begin_step(rollout_t *ro)
{
    uint32_t pct = ro->steps[ro->step];
    if (pct >= 100) {
        promote(ro);
        return;
    }
    apply_split(ro, pct);
    window_start(ro);
    event(ro, "step %zu/%zu: %u%% of traffic to %s", ro->step + 1, ro->nsteps, pct, ro->to_version);
    set_state(ro, ST_STEPPING);
}

/* Rolling: the next old replica is replaced by a new one. */
static void roll_next(rollout_t *ro)
{
    if (ro->replaced == ro->nold) {
        event(ro, "all %zu replica(s) replaced", ro->nold);
        set_state(ro, ST_PROMOTING);
        return;
    }
    replica_t *r = spawn(ro, ro->to_version, ro->to_cmd, false, 0);
    push(&ro->fresh, &ro->nfresh, r);
    event(ro, "replacing %s: started %s", ro->old[ro->replaced]->id, r->id);
    set_state(ro, ST_STARTING);
}

static void tick(uv_timer_t *t)
{
    rollout_t *ro = t->data;
    uint64_t now = uv_now(ro->up->loop), in_state = now - ro->since;
    char why[256];
    switch (ro->state) {
    case ST_STARTING:
        if (crashed(ro, why, sizeof(why))) {
            rollback(ro, why);
        } else if (all_ready(ro->fresh, ro->nfresh)) {
            if (ro->strategy == STRAT_CANARY) {
                event(ro, "%zu replica(s) of %s ready", ro->nfresh, ro->to_version);
                begin_step(ro);
            } else if (ro->strategy == STRAT_BLUE_GREEN) {
                for (size_t i = 0; i < ro->nfresh; i++)
                    route(ro, ro->fresh[i], 1);
                event(ro, "green (%s) ready: switching all traffic", ro->to_version);
                set_state(ro, ST_SWITCHING);
            } else {
                window_start(ro);
                set_state(ro, ST_OBSERVING);
            }
        } else if (in_state > ro->ready_timeout_ms) {
            snprintf(why, sizeof(why), "the new replicas were not ready within %llu ms",
                     (unsigned long long)ro->ready_timeout_ms);
            rollback(ro, why);
        }
        break;
    case ST_STEPPING:
        if (breached(ro, why, sizeof(why)) || crashed(ro, why, sizeof(why))) {
            rollback(ro, why);
        } else if (in_state >= ro->interval_ms) {
            event(ro, "step %zu passed: %llu attempts, %llu failed, p99 <= %u ms", ro->step + 1,
                  (unsigned long long)ro->last.attempts, (unsigned long long)ro->last.failures,
                  tr_gateway_ep_stats_quantile(&ro->last, 0.99));
            ro->step++;
            begin_step(ro);
        }
        break;
    case ST_SWITCHING:
        /* Green's registrations went out one tick ago: blue can leave now. */
        for (size_t i = 0; i < ro->nold; i++)
            route(ro, ro->old[i], 0);
        window_start(ro);
        event(ro, "blue out of the registry; judging green for %llu ms",
              (unsigned long long)ro->interval_ms);
        set_state(ro, ST_OBSERVING);
        break;
    case ST_OBSERVING:
        if (breached(ro, why, sizeof(why)) || crashed(ro, why, sizeof(why))) {
            rollback(ro, why);
        } else if (in_state >= ro->interval_ms) {
            if (ro->strategy == STRAT_ROLLING) {
                replica_t *old = ro->old[ro->replaced];
                event(ro, "%s healthy; %s leaves the registry and drains",
                      ro->fresh[ro->nfresh - 1]->id, old->id);
                route(ro, old, 0);
                set_state(ro, ST_RETIRING);
            } else {
                event(ro, "green passed: %llu attempts, %llu failed",
                      (unsigned long long)ro->last.attempts, (unsigned long long)ro->last.failures);
                set_state(ro, ST_PROMOTING);
            }
        }
        break;
    case ST_RETIRING:
        if (breached(ro, why, sizeof(why))) {
            rollback(ro, why);
        } else if (in_state >= ro->drain_ms) {
            up_replica_retire(ro->up, ro->old[ro->replaced++]);
            roll_next(ro);
        }
        break;
    case ST_PROMOTING:
        if (in_state < ro->drain_ms) break;
        for (size_t i = ro->replaced; i < ro->nold; i++)
            up_replica_retire(ro->up, ro->old[i]);
        free(ro->svc->version);
        ro->svc->version = ro->to_version ? tr_strdup(ro->to_version) : NULL;
        up_strv_free(ro->svc->cmd);
        ro->svc->cmd = up_strv_dup(ro->to_cmd);
        event(ro, "rollout of %s succeeded", ro->to_version);
        finish(ro, ST_SUCCEEDED);
        break;
    case ST_RESTORING:
        if (!all_ready(ro->restore, ro->nrestore) && in_state < ro->ready_timeout_ms) break;
        /* Old replicas take the traffic back with equal weights; the new ones leave. */
        for (size_t i = ro->replaced; i < ro->nold; i++)
            route(ro, ro->old[i], 1);
        for (size_t i = 0; i < ro->nrestore; i++)
            route(ro, ro->restore[i], 1);
        set_state(ro, ST_REVERTING);
        break;
    case ST_REVERTING:
        if (in_state < TICK_MS) break; /* the old replicas' registrations go first */
        for (size_t i = 0; i < ro->nfresh; i++)
            route(ro, ro->fresh[i], 0);
        if (in_state < TICK_MS + ro->drain_ms) break;
        for (size_t i = 0; i < ro->nfresh; i++)
            up_replica_retire(ro->up, ro->fresh[i]);
        event(ro, "rolled back to %s", ro->from_version ? ro->from_version : "the old version");
        finish(ro, ST_ROLLED_BACK);
        break;
    default:
        break;
    }
}

/* ---- JSON */

static json_t *cmd_json(char **cmd)
{
    json_t *a = json_array();
    for (size_t i = 0; cmd && cmd[i]; i++)
        json_array_append_new(a, json_string(cmd[i]));
    return a;
}

static json_t *rollout_json(const rollout_t *ro)
{
    json_t *steps = json_array();
    for (size_t i = 0; i < ro->nsteps; i++)
        json_array_append_new(steps, json_integer(ro->steps[i]));
    const tr_gateway_ep_stats_t *w = &ro->last;
    json_t *j = json_pack(
        "{s:i, s:s, s:s, s:s?, s:s?, s:o, s:s, s:o, s:i, s:I, s:f, s:I, s:I, s:I, s:I, s:o?, "
        "s:s?, s:O, s:{s:I, s:I, s:f, s:i}, s:O}",
        "id", (int)ro->id, "service", ro->svc ? ro->svc->def->name : "", "strategy",
        strategy_names[ro->strategy], "from_version", ro->from_version, "to_version",
        ro->to_version, "command", cmd_json(ro->to_cmd), "state", state_names[ro->state], "steps",
        steps, "step", (int)(ro->state == ST_STEPPING ? ro->step + 1 : 0), "interval_ms",
        (json_int_t)ro->interval_ms, "max_error_rate", ro->max_error_rate, "max_p99_ms",
        (json_int_t)ro->max_p99_ms, "min_requests", (json_int_t)ro->min_attempts, "drain_ms",
        (json_int_t)ro->drain_ms, "started_at", (json_int_t)ro->started_at, "ended_at",
        ro->ended_at ? json_integer(ro->ended_at) : NULL, "reason",
        ro->reason[0] ? ro->reason : NULL, "new_instances", ro->new_ids, "window", "attempts",
        (json_int_t)w->attempts, "failures", (json_int_t)w->failures, "error_rate",
        w->attempts ? (double)w->failures / (double)w->attempts : 0.0, "p99_ms",
        (int)(w->attempts ? tr_gateway_ep_stats_quantile(w, 0.99) : 0), "events", ro->events);
    if (ro->state == ST_STEPPING)
        json_object_set_new(j, "weight_percent", json_integer(ro->steps[ro->step]));
    return j;
}

json_t *up_rollout_summary(const svc_t *s)
{
    if (s->rollout) return rollout_json(s->rollout);
    return NULL;
}

static json_t *service_json(const svc_t *s)
{
    json_t *hist = json_array();
    for (const rollout_t *ro = s->history; ro; ro = ro->next)
        json_array_append_new(hist, rollout_json(ro));
    return json_pack("{s:s, s:s?, s:o, s:o}", "service", s->def->name, "version", s->version,
                     "active", s->rollout ? rollout_json(s->rollout) : json_null(), "history",
                     hist);
}

static void send_json(tr_http_req_t *req, int status, json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) {
        tr_http_res_problem(req, 500, "internal", "Internal error",
                            "the answer could not be built");
        return;
    }
    tr_http_res_send(req, status, "application/json", text, strlen(text));
    free(text);
}

/* ---- starting one */

static int parse_steps(json_t *v, rollout_t *ro, char *why, size_t n)
{
    ro->nsteps = 0;
    if (!v) {
        static const uint32_t def[] = {10, 50, 100};
        memcpy(ro->steps, def, sizeof(def));
        ro->nsteps = 3;
        return 0;
    }
    size_t i;
    json_t *x;
    uint32_t prev = 0;
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > MAX_STEPS - 1) {
        snprintf(why, n, "steps must be a list of 1 to %d percentages", MAX_STEPS - 1);
        return -1;
    }
    json_array_foreach(v, i, x)
    {
        json_int_t p = json_integer_value(x);
        if (!json_is_integer(x) || p <= (json_int_t)prev || p > 100) {
            snprintf(why, n, "steps must be increasing whole percentages from 1 to 100");
            return -1;
        }
        ro->steps[ro->nsteps++] = prev = (uint32_t)p;
    }
    if (prev != 100) ro->steps[ro->nsteps++] = 100; /* the last step is everything */
    return 0;
}

static bool get_u64(json_t *body, const char *key, uint64_t def, uint64_t max, uint64_t *out,
                    char *why, size_t n)
{
    json_t *v = json_object_get(body, key);
    if (!v) {
        *out = def;
        return true;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > max) {
        snprintf(why, n, "%s must be a whole number from 0 to %llu", key, (unsigned long long)max);
        return false;
    }
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static void start(tr_http_req_t *req, json_t *body, void *data)
{
    svc_t *s = data;
    up_t *up = s->up;
    if (s->rollout) {
        tr_http_res_problem(req, 409, "rollout-in-progress", "Rollout in progress",
                            "\"%s\" is already rolling out %s; wait or abort it", s->def->name,
                            s->rollout->to_version);
        return;
    }
    char why[256] = "";
    rollout_t *ro = tr_calloc(1, sizeof(*ro));
    ro->up = up;
    ro->svc = s;
    ro->events = json_array();
    ro->new_ids = json_array();
    const char *strategy = json_string_value(json_object_get(body, "strategy"));
    const char *version = json_string_value(json_object_get(body, "version"));
    json_t *cmd = json_object_get(body, "command");
    json_t *rate = json_object_get(body, "max_error_rate");
    bool ok = true;
    if (!version || !*version) {
        snprintf(why, sizeof(why), "\"version\" (a non-empty string) is required");
        ok = false;
    } else if (s->version && !strcmp(version, s->version)) {
        snprintf(why, sizeof(why), "\"%s\" already runs version %s", s->def->name, version);
        ok = false;
    }
    if (ok && strategy) {
        ok = false;
        for (int i = 0; i < 3; i++)
            if (!strcmp(strategy, strategy_names[i])) {
                ro->strategy = (strategy_t)i;
                ok = true;
            }
        if (!ok) snprintf(why, sizeof(why), "strategy must be canary, blue-green or rolling");
    }
    if (ok && cmd && !json_is_null(cmd)) {
        size_t i, k = json_is_array(cmd) ? json_array_size(cmd) : 0;
        json_t *x;
        ok = k > 0;
        json_array_foreach(cmd, i, x) ok &= json_is_string(x) && json_string_length(x) > 0;
        if (ok) {
            ro->to_cmd = tr_calloc(k + 1, sizeof(char *));
            json_array_foreach(cmd, i, x) ro->to_cmd[i] = tr_strdup(json_string_value(x));
        } else {
            snprintf(why, sizeof(why), "command must be a non-empty list of strings");
        }
    }
    if (ok && rate &&
        (!json_is_number(rate) || json_number_value(rate) < 0 || json_number_value(rate) > 1)) {
        snprintf(why, sizeof(why), "max_error_rate must be a fraction from 0 to 1 (0.01 = 1%%)");
        ok = false;
    }
    ro->max_error_rate = rate ? json_number_value(rate) : 0.01;
    ok = ok && parse_steps(json_object_get(body, "steps"), ro, why, sizeof(why)) == 0 &&
         get_u64(body, "interval_ms", 30000, 24 * 3600 * 1000ULL, &ro->interval_ms, why,
                 sizeof(why)) &&
         get_u64(body, "max_p99_ms", 0, 3600 * 1000ULL, &ro->max_p99_ms, why, sizeof(why)) &&
         get_u64(body, "min_requests", 20, 1000000000ULL, &ro->min_attempts, why, sizeof(why)) &&
         get_u64(body, "drain_ms", 2000, 3600 * 1000ULL, &ro->drain_ms, why, sizeof(why)) &&
         get_u64(body, "ready_timeout_ms", 60000, 3600 * 1000ULL, &ro->ready_timeout_ms, why,
                 sizeof(why));
    if (ok && !s->started) {
        snprintf(why, sizeof(why), "\"%s\" is not started yet", s->def->name);
        ok = false;
    }
    if (!ok) {
        rollout_free(ro);
        tr_http_res_problem(req, 400, "bad-rollout", "Bad rollout", "%s", why);
        return;
    }
    ro->id = next_id++;
    ro->to_version = tr_strdup(version);
    ro->from_version = s->version ? tr_strdup(s->version) : NULL;
    ro->from_cmd = up_strv_dup(s->cmd);
    if (!ro->to_cmd) ro->to_cmd = up_strv_dup(s->cmd);
    ro->started_at = wall_ms();
    for (size_t i = 0; i < s->n; i++)
        push(&ro->old, &ro->nold, s->replicas[i]);
    s->rollout = ro;
    uv_timer_init(up->loop, &ro->timer);
    ro->timer.data = ro;
    ro->timer_open = true;
    uv_timer_start(&ro->timer, tick, TICK_MS, TICK_MS);
    event(ro, "%s rollout of %s from %s started (%zu replica(s))", strategy_names[ro->strategy],
          ro->to_version, ro->from_version ? ro->from_version : "(no version)", ro->nold);
    if (ro->strategy == STRAT_ROLLING) {
        roll_next(ro);
    } else {
        size_t want = ro->nold ? ro->nold : 1;
        for (size_t i = 0; i < want; i++)
            push(&ro->fresh, &ro->nfresh, spawn(ro, ro->to_version, ro->to_cmd, true, 0));
        set_state(ro, ST_STARTING);
    }
    send_json(req, 201, rollout_json(ro));
}

/* ---- HTTP */

void up_rollout_handle(up_t *up, tr_http_req_t *req)
{
    const char *prefix = "/api/rollouts";
    size_t plen = strlen(prefix);
    if (req->path_len == plen) {
        if (strcmp(req->method, "GET")) {
            tr_http_res_problem(req, 405, "method-not-allowed", "Method not allowed",
                                "GET /api/rollouts lists every service's rollouts");
            return;
        }
        json_t *all = json_array();
        for (size_t i = 0; i < up->nsvcs; i++)
            json_array_append_new(all, service_json(&up->svcs[i]));
        send_json(req, 200, all);
        return;
    }
    char name[128];
    const char *p = req->path + plen + 1;
    size_t len = req->path_len - plen - 1;
    const char *slash = memchr(p, '/', len);
    size_t nlen = slash ? (size_t)(slash - p) : len;
    const char *action = slash ? slash + 1 : "";
    size_t alen = slash ? len - nlen - 1 : 0;
    if (nlen == 0 || nlen >= sizeof(name)) {
        tr_http_res_problem(req, 404, "not-found", "Not found",
                            "use /api/rollouts/<service> (GET, POST) or "
                            "POST /api/rollouts/<service>/abort");
        return;
    }
    memcpy(name, p, nlen);
    name[nlen] = '\0';
    svc_t *s = up_svc_by_name(up, name);
    if (!s) {
        tr_http_res_problem(req, 404, "no-service", "No such service",
                            "the topology has no service named \"%s\"", name);
        return;
    }
    bool post = !strcmp(req->method, "POST");
    if (alen == 5 && !memcmp(action, "abort", 5) && post) {
        if (!s->rollout) {
            tr_http_res_problem(req, 409, "no-rollout", "No rollout in progress",
                                "\"%s\" has no rollout in progress", name);
            return;
        }
        rollout_t *ro = s->rollout;
        if (ro->state < ST_PROMOTING) rollback(ro, "aborted by the user");
        send_json(req, 202, rollout_json(ro));
        return;
    }
    if (alen) {
        tr_http_res_problem(req, 404, "not-found", "Not found",
                            "the only action is POST /api/rollouts/<service>/abort");
        return;
    }
    if (!strcmp(req->method, "GET")) {
        send_json(req, 200, service_json(s));
        return;
    }
    if (!post) {
        tr_http_res_problem(req, 405, "method-not-allowed", "Method not allowed",
                            "GET shows the rollouts of a service, POST starts one");
        return;
    }
    /* start() checks for a rollout in progress once the body is in: another may have begun
     * while it arrived. */
    tr_http_req_read_json(req, 65536, 0, start, s);
}

void up_rollout_shutdown(up_t *up)
{
    for (size_t i = 0; i < up->nsvcs; i++) {
        svc_t *s = &up->svcs[i];
        if (s->rollout) {
            event(s->rollout, "interrupted: the control plane is stopping");
            finish(s->rollout, ST_ABORTED_BY_SHUTDOWN);
        }
    }
}

void up_rollout_free(svc_t *s)
{
    rollout_t *ro = s->history;
    while (ro) {
        rollout_t *nx = ro->next;
        rollout_free(ro);
        ro = nx;
    }
    s->history = NULL;
}
