/*
 * The saga engine: moves each saga through its steps and compensations. Every transition
 * marks the saga dirty; the dirty sagas are copied once per loop turn and committed in one
 * transaction on a thread-pool thread (group commit, one at a time), and only once that is
 * done do the effects they announce happen: calls are sent, the waiting API requests
 * answered. See docs/sagas.md.
 */
#include "saga/engine_int.h"

#include "core/mem.h"
#include "core/sqlite.h"
#include "trellis/error.h"
#include "trellis/log.h"
#include "trellis/retry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_BACKOFF_MS    30000
#define DISCOVERY_WAIT_MS 10
#define DISCOVERY_WAITS   300 /* 3 s for a new watch's first answer */

static const char *const state_names[] = {
#define TR_SAGA_STATE_NAME(e, s) s,
    TR_SAGA_STATE_MAP(TR_SAGA_STATE_NAME)
#undef TR_SAGA_STATE_NAME
};

const char *tr__saga_state_name(saga_state_t s)
{
    return (unsigned)s < SAGA_STATES ? state_names[s] : "unknown";
}

int tr__saga_state_parse(const char *s)
{
    for (int i = 0; s && i < SAGA_STATES; i++)
        if (!strcmp(s, state_names[i])) return i;
    return -1;
}

bool tr__saga_ended(saga_state_t s)
{
    return s == SAGA_COMPLETED || s == SAGA_COMPENSATED || s == SAGA_ABORTED;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- group commit: the queue of sagas with something to write ---- */

void tr__saga_mark(saga_t *s)
{
    tr_saga_engine_t *e = s->e;
    s->dirty = true;
    s->updated_ms = wall_ms();
    if (s->queued) return;
    if (e->nqueue == e->capqueue) {
        e->capqueue = e->capqueue ? e->capqueue * 2 : 64;
        e->queue = tr_realloc(e->queue, e->capqueue * sizeof(*e->queue));
    }
    e->queue[e->nqueue++] = s;
    s->queued = true;
}

static void call_mark(saga_t *s, saga_call_t *c)
{
    c->dirty = true;
    tr__saga_mark(s);
}

/* ---- lanes: where a step's calls are made ---- */

static saga_call_t *lane_call(saga_lane_t *l)
{
    return l->comp ? &l->s->comp[l->step] : &l->s->action[l->step];
}

static const tr__saga_call_def_t *lane_def(const saga_lane_t *l)
{
    const tr__saga_step_def_t *st = &l->s->def->steps[l->step];
    return l->comp ? &st->compensation : &st->action;
}

static const tr__saga_step_def_t *lane_step(const saga_lane_t *l)
{
    return &l->s->def->steps[l->step];
}

/* Starts attempt n+1 of the lane's call: committed first, sent after the commit. */
static void begin_attempt(saga_lane_t *l)
{
    saga_call_t *c = lane_call(l);
    c->state = 'r';
    c->attempts++;
    c->started_ms = wall_ms();
    l->active = true;
    l->send = true;
    call_mark(l->s, c);
}

/* Stops a lane's call: an answer still on its way is ignored; a call that may have been sent
 * stays 'r' (it may have taken effect). */
static void stop_lane(saga_lane_t *l)
{
    if (l->req) {
        l->ignore_response = true;
        tr_http_client_cancel(l->req);
    }
    uv_timer_stop(&l->timer);
    saga_call_t *c = lane_call(l);
    if (l->active && !l->comp && c->state == 'r') {
        c->uncertain = true;
        call_mark(l->s, c);
    }
    l->active = false;
    l->send = false;
}

static void stop_lanes(saga_t *s)
{
    for (size_t i = 0; i < s->def->nsteps; i++)
        stop_lane(&s->lanes[i]);
}

static void finish(saga_t *s, saga_state_t state)
{
    s->state = state;
    tr__saga_mark(s);
    tr_counter_inc(tr_metric_series(
        s->e->ended, (const char *const[]){s->def->name, tr__saga_state_name(state), NULL}));
    tr_log_info("saga ended", TR_LOG_STR("saga", s->id), TR_LOG_STR("name", s->def->name),
                TR_LOG_STR("state", tr__saga_state_name(state)),
                TR_LOG_STR("error", s->error ? s->error : ""));
}

static void set_error(saga_t *s, const char *fmt, const char *step, const char *why)
{
    char buf[512];
    snprintf(buf, sizeof(buf), fmt, step, why);
    free(s->error);
    s->error = tr_strdup(buf);
}

/* Whether step i's compensation must run: its action took effect or may have. */
static bool needs_compensation(const saga_t *s, size_t i)
{
    const saga_call_t *a = &s->action[i];
    if (!s->def->steps[i].compensation.defined || s->comp[i].state == 'd') return false;
    return a->state == 'd' || a->state == 'r' || (a->state == 'f' && a->uncertain);
}

/*
 * Moves the saga on. Running: the first group with a step not done yet runs, every step of
 * it at once (a step of its own is a group of one); when none is left the saga completed.
 * Compensating: the compensations run one at a time, in reverse order of the steps.
 */
void tr__saga_advance(saga_t *s)
{
    const tr__saga_def_t *d = s->def;
    if (s->state == SAGA_RUNNING) {
        for (;;) {
            if (s->cur >= d->nsteps) {
                finish(s, SAGA_COMPLETED);
                return;
            }
            size_t end = d->steps[s->cur].group_end, left = 0;
            for (size_t i = s->cur; i < end; i++)
                left += s->action[i].state != 'd';
            if (left) break;
            s->cur = end;
        }
        for (size_t i = s->cur; i < d->steps[s->cur].group_end; i++) {
            saga_lane_t *l = &s->lanes[i];
            if (s->action[i].state == 'd' || l->active) continue;
            l->comp = false;
            begin_attempt(l);
        }
    } else if (s->state == SAGA_COMPENSATING) {
        size_t i = s->cur + 1;
        while (i > 0 && !needs_compensation(s, i - 1))
            i--;
        if (i == 0) {
            finish(s, SAGA_COMPENSATED);
            return;
        }
        s->cur = i - 1;
        /* A step that may have taken effect but whose answer was never seen, when its
         * compensation needs that answer (an id to cancel): send the action again first —
         * the participant answers a repeated Idempotency-Key with the first result. */
        s->comp_phase = !(s->action[s->cur].state != 'd' && d->steps[s->cur].comp_uses_response);
        saga_lane_t *l = &s->lanes[s->cur];
        l->comp = s->comp_phase;
        begin_attempt(l);
    }
}

/* From running: the other steps of the group stop, and every step that took effect (or may
 * have) is compensated, from the last step of the group down. */
static void start_compensating(saga_t *s)
{
    stop_lanes(s);
    if (s->state == SAGA_RUNNING && s->cur < s->def->nsteps)
        s->cur = s->def->steps[s->cur].group_end - 1;
    s->state = SAGA_COMPENSATING;
    tr__saga_mark(s);
    tr__saga_advance(s);
}

static void go_stuck(saga_t *s)
{
    stop_lanes(s);
    s->stuck_from = s->state;
    s->state = SAGA_STUCK;
    tr__saga_mark(s);
    tr_log_error("saga stuck: an operator must retry or abort it", TR_LOG_STR("saga", s->id),
                 TR_LOG_STR("name", s->def->name), TR_LOG_STR("error", s->error ? s->error : ""));
}

/* ---- outcomes ---- */

static void attempt_counted(saga_lane_t *l, const char *outcome)
{
    saga_t *s = l->s;
    tr_counter_inc(tr_metric_series(
        s->e->attempts, (const char *const[]){s->def->name, lane_step(l)->name,
                                              l->comp ? "compensation" : "action", outcome, NULL}));
}

static void on_backoff(uv_timer_t *t)
{
    begin_attempt(t->data);
}

/* Full-jitter backoff from the step's base, capped at MAX_BACKOFF_MS (the resilience
 * part's formula, as the gateway and the SDK's calls use it). */
static void retry_later(saga_lane_t *l, uint32_t attempts)
{
    tr_retry_policy_t p;
    tr_retry_policy_init(&p);
    p.backoff_base_ms = lane_step(l)->backoff_ms;
    p.backoff_max_ms = MAX_BACKOFF_MS;
    uint64_t rnd = ((uint64_t)rand() << 32) ^ (uint64_t)rand();
    uv_timer_start(&l->timer, on_backoff, tr_retry_backoff_ms(&p, attempts ? attempts : 1, rnd), 0);
}

/* A definite answer: 2xx. */
static void succeeded(saga_lane_t *l, int status, json_t *response)
{
    saga_t *s = l->s;
    saga_call_t *c = lane_call(l);
    c->state = 'd';
    c->status = status;
    c->finished_ms = wall_ms();
    json_decref(c->response);
    c->response = response;
    free(c->error);
    c->error = NULL;
    l->active = false;
    call_mark(s, c);
    attempt_counted(l, "ok");
    if (!l->comp) {
        json_object_set(json_object_get(s->ctx, "steps"), lane_step(l)->name,
                        response ? response : json_null());
        /* else: an action learnt before its compensation */
        if (s->state == SAGA_RUNNING && lane_step(l)->pivot) s->pivot_passed = true;
    }
    tr__saga_advance(s);
}

/*
 * A failed attempt. `retryable`: 408, 429, 5xx, timeout, no connection; `uncertain`: the call
 * may have taken effect.
 */
static void failed(saga_lane_t *l, int status, const char *why, bool retryable, bool uncertain)
{
    saga_t *s = l->s;
    saga_call_t *c = lane_call(l);
    const tr__saga_step_def_t *st = lane_step(l);
    c->status = status;
    free(c->error);
    c->error = tr_strdup(why);
    c->uncertain = c->uncertain || uncertain;
    call_mark(s, c);
    attempt_counted(l, "failed");
    if (l->comp) { /* compensations must succeed: retried until stuck */
        if (c->attempts < s->def->max_compensation_attempts) {
            retry_later(l, c->attempts);
            return;
        }
        set_error(s, "compensation of step %s keeps failing: %s", st->name, why);
        go_stuck(s);
        return;
    }
    if (s->state == SAGA_COMPENSATING) { /* an action sent again to learn its answer */
        if (!retryable) { /* a definite no: it never took effect, nothing to compensate */
            c->state = 'f';
            c->uncertain = false;
            l->active = false;
            call_mark(s, c);
            tr__saga_advance(s);
        } else if (c->attempts < st->attempts + s->def->max_compensation_attempts) {
            retry_later(l, c->attempts);
        } else {
            set_error(s, "step %s: its answer cannot be learnt for its compensation: %s", st->name,
                      why);
            go_stuck(s);
        }
        return;
    }
    if (s->pivot_passed) { /* after the pivot: forward only */
        if (c->attempts < s->def->max_forward_attempts) {
            retry_later(l, c->attempts);
            return;
        }
        set_error(s, "step %s (after the pivot) keeps failing: %s", st->name, why);
        go_stuck(s);
        return;
    }
    if (retryable && c->attempts < st->attempts) {
        retry_later(l, c->attempts);
        return;
    }
    if (st->pivot && retryable) {
        /* The pivot may have taken effect (a charge made, its answer lost): compensating the
         * steps before it could leave money taken for an order undone. Its outcome must be
         * known first: it is retried with the same key until a definite answer, or stuck. */
        if (c->attempts < s->def->max_forward_attempts) {
            retry_later(l, c->attempts);
            return;
        }
        set_error(s, "the pivot step %s has no definite answer: %s", st->name, why);
        go_stuck(s);
        return;
    }
    c->state = 'f';
    c->finished_ms = wall_ms();
    l->active = false;
    set_error(s, "step %s failed: %s", st->name, why);
    start_compensating(s);
}

/* ---- sending ---- */

static void client_span(saga_lane_t *l, int status, const char *error)
{
    saga_t *s = l->s;
    if (!s->e->spans.emit) return;
    char name[128];
    snprintf(name, sizeof(name), "saga %s %s %s", s->def->name, lane_step(l)->name,
             l->comp ? "compensation" : "action");
    tr_attr_t attrs[4] = {
        {.key = "saga.id", .type = TR_ATTR_STRING, .v.s = s->id},
        {.key = "peer.service", .type = TR_ATTR_STRING, .v.s = lane_def(l)->service},
        {.key = "http.response.status_code", .type = TR_ATTR_INT, .v.i = status},
        {.key = "correlation_id", .type = TR_ATTR_STRING, .v.s = tr__saga_correlation(s)},
    };
    tr_span_t sp = {.name = name,
                    .kind = TR_SPAN_CLIENT,
                    .start_ns = l->attempt_ns,
                    .end_ns = wall_ns(),
                    .status = error ? TR_STATUS_ERROR : TR_STATUS_UNSET,
                    .status_message = error,
                    .service = s->e->service_name,
                    .attrs = attrs,
                    .nattrs = 4};
    memcpy(sp.trace_id, s->trace_id, 16);
    memcpy(sp.span_id, l->span_id, 8);
    memcpy(sp.parent_span_id, s->root_span, 8);
    s->e->spans.emit(s->e->spans.data, &sp);
}

static json_t *parse_body(const char *body, size_t len)
{
    json_t *j = len ? json_loadb(body, len, JSON_DECODE_ANY, NULL) : NULL;
    return j ? j : json_null();
}

static void on_response(tr_http_client_req_t *req, int err, const tr_http_client_response_t *res)
{
    saga_lane_t *l = tr_http_client_req_data(req);
    l->req = NULL;
    if (l->ep) tr_discovery_done(l->ep);
    l->ep = NULL;
    if (l->timed_out) err = TR_ERESPONSE_TIMEOUT;
    if (l->s->closing) return;
    if (l->ignore_response) { /* the saga moved on (abort, a sibling failed): moot */
        l->ignore_response = false;
        return;
    }
    uv_timer_stop(&l->timer);
    int status = err ? 0 : res->status;
    char why[256];
    if (err)
        snprintf(why, sizeof(why), "%s", tr_strerror(err));
    else
        snprintf(why, sizeof(why), "HTTP %d: %.*s", status,
                 (int)(res->body_len < 200 ? res->body_len : 200), res->body ? res->body : "");
    client_span(l, status, status >= 200 && status < 300 ? NULL : why);
    if (!err && status >= 200 && status < 300) {
        succeeded(l, status, parse_body(res->body, res->body_len));
        return;
    }
    bool retryable = err || status == 408 || status == 429 || status >= 500;
    /* A 4xx is a definite no; anything else may or may not have taken effect. */
    bool uncertain = retryable && (!err || tr_http_client_request_sent(req));
    failed(l, status, why, retryable, uncertain);
}

static void on_deadline(uv_timer_t *t)
{
    saga_lane_t *l = t->data;
    l->timed_out = true;
    if (l->req) tr_http_client_cancel(l->req);
}

static void send_call(saga_lane_t *l);

static void on_discovery_wait(uv_timer_t *t)
{
    send_call(t->data);
}

/* A passing instance of `service` into l->ep; 1 when the watch is not ready yet, -1 when
 * there is none. */
static int pick(saga_lane_t *l, const char *service)
{
    tr_discovery_watch_t *w = NULL;
    tr_saga_engine_t *e = l->s->e;
    if (!e->discovery || tr_discovery_watch(e->discovery, service, &w)) return -1;
    if (!tr_discovery_ready(w)) return 1;
    return tr_discovery_pick(w, TR_LB_ROUND_ROBIN, &l->ep) ? -1 : 0;
}

static void send_call(saga_lane_t *l)
{
    saga_t *s = l->s;
    const tr__saga_call_def_t *cd = lane_def(l);
    char err[256];
    char *path = tr__saga_render_text(cd->path, s->ctx, true, err, sizeof(err));
    json_t *body = path && cd->body ? tr__saga_render(cd->body, s->ctx, err, sizeof(err)) : NULL;
    if (!path || (cd->body && !body)) { /* the definition names what is not there: no retry */
        free(path);
        failed(l, 0, err, false, false);
        return;
    }
    int found = pick(l, cd->service);
    if (found == 1 && l->discovery_waits++ < DISCOVERY_WAITS) {
        free(path);
        json_decref(body);
        uv_timer_start(&l->timer, on_discovery_wait, DISCOVERY_WAIT_MS, 0);
        return;
    }
    l->discovery_waits = 0;
    if (found) {
        free(path);
        json_decref(body);
        snprintf(err, sizeof(err), "no passing instance of service '%s'", cd->service);
        failed(l, 0, err, true, false);
        return;
    }
    char key[160], traceparent[56];
    snprintf(key, sizeof(key), "%s:%s:%s", s->id, lane_step(l)->name,
             l->comp ? "compensation" : "action");
    tr_trace_ctx_t tc = {.flags = TR_TRACE_FLAG_SAMPLED};
    memcpy(tc.trace_id, s->trace_id, 16);
    tr_trace_new_ids(&tc, false);
    memcpy(l->span_id, tc.span_id, 8);
    tr_trace_format_traceparent(&tc, traceparent);
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(body);
    tr_http_client_header_t h[4] = {
        {"idempotency-key", 15, key, strlen(key)},
        {"traceparent", 11, traceparent, TR_TRACEPARENT_LEN},
        {"x-correlation-id", 16, tr__saga_correlation(s), strlen(tr__saga_correlation(s))},
        {"content-type", 12, "application/json", 16},
    };
    tr_http_client_request_t rq = {.method = cd->method,
                                   .target = path,
                                   .headers = h,
                                   .nheaders = text ? 4 : 3,
                                   .body_mode =
                                       text ? TR_HTTP_CLIENT_BODY_BUFFER : TR_HTTP_CLIENT_BODY_NONE,
                                   .body = text,
                                   .body_len = text ? strlen(text) : 0,
                                   .flags = TR_HTTP_CLIENT_NO_RETRY,
                                   .data = l};
    l->timed_out = false;
    l->attempt_ns = wall_ns();
    int rc = tr_http_client_fetch(s->e->client, &l->ep->http, &rq, on_response, &l->req);
    free(text);
    free(path);
    if (rc) {
        tr_discovery_done(l->ep);
        l->ep = NULL;
        failed(l, 0, tr_strerror(rc), true, false);
        return;
    }
    uv_timer_start(&l->timer, on_deadline, lane_step(l)->timeout_ms, 0);
}

/* ---- after a commit: the announced effects ---- */

static void on_lane_closed(uv_handle_t *h)
{
    saga_lane_t *l = h->data;
    saga_t *s = l->s;
    tr_saga_engine_t *e = s->e;
    if (--s->open_timers > 0) return;
    for (size_t i = 0; i < s->def->nsteps; i++) {
        free(s->action[i].error);
        free(s->comp[i].error);
        json_decref(s->action[i].response);
        json_decref(s->comp[i].response);
    }
    free(s->action);
    free(s->comp);
    free(s->lanes);
    free(s->error);
    free(s->idem_key);
    free(s->correlation);
    json_decref(s->ctx);
    tr__saga_def_release(s->def);
    free(s);
    if (--e->open_handles == 0 && e->closing && e->done) e->done(e->done_data);
}

const char *tr__saga_correlation(const saga_t *s)
{
    return s->correlation ? s->correlation : s->id;
}

static void root_span(saga_t *s)
{
    if (!s->e->spans.emit) return;
    char name[96];
    snprintf(name, sizeof(name), "saga %s", s->def->name);
    tr_attr_t attrs[2] = {
        {.key = "saga.id", .type = TR_ATTR_STRING, .v.s = s->id},
        {.key = "saga.state", .type = TR_ATTR_STRING, .v.s = tr__saga_state_name(s->state)},
    };
    tr_span_t sp = {.name = name,
                    .kind = TR_SPAN_INTERNAL,
                    .start_ns = s->created_ms * 1000000ull,
                    .end_ns = wall_ns(),
                    .status = s->state == SAGA_COMPLETED ? TR_STATUS_OK : TR_STATUS_ERROR,
                    .status_message = s->error,
                    .service = s->e->service_name,
                    .attrs = attrs,
                    .nattrs = 2};
    memcpy(sp.trace_id, s->trace_id, 16);
    memcpy(sp.span_id, s->root_span, 8);
    memcpy(sp.parent_span_id, s->parent_span, 8);
    s->e->spans.emit(s->e->spans.data, &sp);
}

static void free_waiter(uv_handle_t *h)
{
    free(h->data); /* the waiter the timer is part of */
}

static void answer_waiters(saga_t *s, bool ended, bool stuck)
{
    saga_waiter_t **pw = &s->waiters;
    while (*pw) {
        saga_waiter_t *w = *pw;
        if (!w->accept_only && !ended && !stuck) {
            pw = &w->next;
            continue;
        }
        *pw = w->next;
        if (w->req) tr__saga_answer(s->e, w->req, s->id, ended);
        w->req = NULL;
        w->saga = NULL;
        uv_timer_stop(&w->timer);
        uv_close((uv_handle_t *)&w->timer, free_waiter);
    }
}

/* Closes the saga's lanes; the last one frees it. */
static void saga_close(saga_t *s)
{
    for (size_t i = 0; i < s->def->nsteps; i++)
        uv_close((uv_handle_t *)&s->lanes[i].timer, on_lane_closed);
}

/* The effects a commit announced, now that it is durable. */
static void after_commit(const tr__saga_done_t *d)
{
    saga_t *s = d->saga;
    answer_waiters(s, d->ended, d->stuck);
    if (d->ended) {
        root_span(s);
        tr_map_del(&s->e->sagas, s->id);
        saga_close(s);
        return;
    }
    for (size_t i = 0; i < s->def->nsteps; i++) {
        saga_lane_t *l = &s->lanes[i];
        if (!(d->send & (1ull << i)) || !l->active) continue; /* stopped meanwhile */
        if (s->queued)
            l->send = true; /* the saga moved on meanwhile: send once that is written */
        else if (s->state == SAGA_RUNNING || s->state == SAGA_COMPENSATING)
            send_call(l);
    }
}

static void on_retry_flush(uv_timer_t *t);
static void flush(tr_saga_engine_t *e);

static void commit_work(uv_work_t *w)
{
    tr__saga_commit_t *c = w->data;
    c->rc = tr__saga_store_write(c);
}

/* The last commit, at close: written on the loop, its effects not run (the sagas close). */
static void flush_final(tr_saga_engine_t *e)
{
    if (!e->nqueue) return;
    tr__saga_commit_t *c = tr__saga_store_snapshot(e);
    if (tr__saga_store_write(c))
        tr_log_error("saga: the last commit failed; the sagas resume from the one before",
                     TR_LOG_STR("path", e->db_path), TR_LOG_STR("reason", c->why));
    tr__saga_commit_free(c);
}

static void engine_handle_done(tr_saga_engine_t *e);

static void commit_done(uv_work_t *w, int status)
{
    tr__saga_commit_t *c = w->data;
    tr_saga_engine_t *e = c->e;
    c->running = false;
    if (e->closing) { /* the sagas are closing: write what is left, no effects */
        if (status || c->rc) tr__saga_store_write(c);
        tr__saga_commit_free(c);
        e->inflight = NULL;
        flush_final(e);
        engine_handle_done(e);
        return;
    }
    if (status || c->rc) { /* retried as it is; the queue waits behind it */
        if (!e->flush_failing)
            tr_log_error("saga: cannot write the saga database; sagas pause until it works",
                         TR_LOG_STR("path", e->db_path), TR_LOG_STR("reason", c->why));
        e->flush_failing = true;
        uv_timer_start(&e->retry_flush, on_retry_flush, 500, 0);
        return;
    }
    if (e->flush_failing) tr_log_info("saga: the saga database works again");
    e->flush_failing = false;
    e->inflight = NULL;
    e->fsyncs++;
    for (size_t i = 0; i < c->n; i++)
        after_commit(&c->batch[i]);
    tr__saga_commit_free(c);
    flush(e); /* what queued meanwhile */
}

static void start_commit(tr_saga_engine_t *e, tr__saga_commit_t *c)
{
    e->inflight = c;
    c->work.data = c;
    c->running = true;
    if (uv_queue_work(e->loop, &c->work, commit_work, commit_done)) {
        c->running = false;
        c->rc = TR_EIO;
        snprintf(c->why, sizeof(c->why), "cannot queue the commit");
        e->flush_failing = true;
        uv_timer_start(&e->retry_flush, on_retry_flush, 500, 0);
    }
}

/*
 * Group commit: every transition queued since the last commit goes to the database in one
 * transaction on a thread-pool thread; the effects they announce (calls sent, answers,
 * spans) run on the loop once it committed. One commit at a time, so they land in order.
 */
static void flush(tr_saga_engine_t *e)
{
    if (e->inflight || !e->nqueue || e->closing) return;
    start_commit(e, tr__saga_store_snapshot(e));
}

static void on_retry_flush(uv_timer_t *t)
{
    tr_saga_engine_t *e = t->data;
    if (e->inflight) start_commit(e, e->inflight); /* the same rows again */
}

static void on_prepare(uv_prepare_t *p)
{
    flush(p->data);
}

/* ---- creating sagas ---- */

saga_t *tr__saga_new(tr_saga_engine_t *e, tr__saga_def_t *def, json_t *input, const char *id,
                     const tr__saga_origin_t *origin)
{
    saga_t *s = tr_calloc(1, sizeof(*s));
    s->e = e;
    s->def = tr__saga_def_retain(def);
    s->action = tr_calloc(def->nsteps, sizeof(*s->action));
    s->comp = tr_calloc(def->nsteps, sizeof(*s->comp));
    for (size_t i = 0; i < def->nsteps; i++)
        s->action[i].state = s->comp[i].state = 'p';
    tr_trace_ctx_t tc = {0};
    tr_trace_new_ids(&tc, true);
    if (id)
        snprintf(s->id, sizeof(s->id), "%s", id);
    else
        tr_trace_hex_encode(tc.trace_id, 16, s->id); /* random, whatever trace it joins */
    const tr_trace_ctx_t *parent = origin->parent;
    memcpy(s->trace_id, parent ? parent->trace_id : tc.trace_id, 16);
    memcpy(s->root_span, tc.span_id, 8);
    if (parent) memcpy(s->parent_span, parent->span_id, 8);
    s->correlation = origin->correlation ? tr_strdup(origin->correlation) : NULL;
    s->idem_key = origin->idem_key ? tr_strdup(origin->idem_key) : NULL;
    s->created_ms = s->updated_ms = wall_ms();
    s->ctx = json_pack("{sO,s{},s{ss}}", "input", input, "steps", "saga", "id", s->id);
    s->lanes = tr_calloc(def->nsteps, sizeof(*s->lanes));
    for (size_t i = 0; i < def->nsteps; i++) {
        saga_lane_t *l = &s->lanes[i];
        l->s = s;
        l->step = i;
        uv_timer_init(e->loop, &l->timer);
        l->timer.data = l;
    }
    s->open_timers = def->nsteps;
    e->open_handles++;
    tr_map_put(&e->sagas, s->id, s);
    return s;
}

void tr__saga_add_waiter(saga_t *s, tr_http_req_t *req, bool accept_only, uint64_t wait_ms);

static void on_waiter_timeout(uv_timer_t *t)
{
    saga_waiter_t *w = t->data;
    saga_t *s = w->saga;
    for (saga_waiter_t **pw = &s->waiters; *pw; pw = &(*pw)->next)
        if (*pw == w) {
            *pw = w->next;
            break;
        }
    if (w->req) tr__saga_answer(s->e, w->req, s->id, false);
    uv_close((uv_handle_t *)&w->timer, free_waiter);
}

static void on_waiter_abort(tr_http_req_t *req)
{
    saga_waiter_t *w = req->data;
    w->req = NULL;
}

void tr__saga_add_waiter(saga_t *s, tr_http_req_t *req, bool accept_only, uint64_t wait_ms)
{
    saga_waiter_t *w = tr_calloc(1, sizeof(*w));
    w->req = req;
    w->saga = s;
    w->accept_only = accept_only;
    uv_timer_init(s->e->loop, &w->timer);
    w->timer.data = w;
    if (!accept_only) uv_timer_start(&w->timer, on_waiter_timeout, wait_ms, 0);
    req->data = w;
    req->on_abort = on_waiter_abort;
    w->next = s->waiters;
    s->waiters = w;
}

int tr__saga_retry(saga_t *s)
{
    if (s->state != SAGA_STUCK) return TR_ESTATE;
    s->state = s->stuck_from;
    /* A fresh allowance of attempts for what was being worked on: the steps of the group not
     * done yet, or the compensation (or the action whose answer it needs). */
    size_t from = s->cur, to = s->cur + 1;
    if (s->state == SAGA_RUNNING && s->cur < s->def->nsteps) to = s->def->steps[s->cur].group_end;
    for (size_t i = from; i < to && i < s->def->nsteps; i++) {
        saga_call_t *c = s->state == SAGA_RUNNING || !s->comp_phase ? &s->action[i] : &s->comp[i];
        if (c->state == 'd') continue;
        c->attempts = 0;
        call_mark(s, c);
    }
    tr_log_info("saga retried by an operator", TR_LOG_STR("saga", s->id));
    tr__saga_advance(s);
    return 0;
}

int tr__saga_abort(saga_t *s)
{
    if (s->state == SAGA_STUCK) {
        stop_lanes(s);
        free(s->error);
        s->error = tr_strdup("aborted by an operator while stuck");
        finish(s, SAGA_ABORTED);
        return 0;
    }
    if (s->state != SAGA_RUNNING || s->pivot_passed) return TR_ESTATE;
    /* The calls in flight are cancelled; compensation covers them (uncertain). */
    free(s->error);
    s->error = tr_strdup("aborted by an operator");
    start_compensating(s);
    return 0;
}

/* ---- the engine ---- */

static void defs_free(tr_saga_engine_t *e)
{
    size_t pos = 0;
    const char *k;
    void *v;
    while (tr_map_next(&e->defs, &pos, &k, &v))
        tr__saga_def_release(v);
    tr_map_free(&e->defs);
}

int tr_saga_define_all(tr_saga_engine_t *e, tr_config_t *cfg, const json_t *sagas)
{
    const char *name;
    json_t *def;
    if (!sagas) return 0;
    if (!json_is_object(sagas))
        return tr_config_fail(cfg, sagas, NULL, "sagas: expected a mapping of name to saga");
    json_object_foreach((json_t *)sagas, name, def)
    {
        tr__saga_def_t *d;
        if (tr__saga_def_compile(cfg, name, def, &d)) return TR_ECONFIG;
        tr__saga_def_t *old = tr_map_put(&e->defs, d->name, d);
        tr__saga_def_release(old);
    }
    return 0;
}

static double metric_commits(void *data)
{
    return (double)((tr_saga_engine_t *)data)->fsyncs;
}

static double metric_active(void *data)
{
    return (double)((tr_saga_engine_t *)data)->sagas.len;
}

int tr_saga_engine_open(uv_loop_t *loop, const tr_saga_options_t *o, tr_saga_engine_t **out,
                        char *err, size_t errlen)
{
    tr_saga_engine_t *e = tr_calloc(1, sizeof(*e));
    e->loop = loop;
    e->db_path = tr_strdup(o->db_path);
    e->spans = o->spans;
    e->service_name = tr_strdup(o->service_name ? o->service_name : "saga");
    int rc = tr__saga_store_open(e, o->sync_full, err, errlen);
    if (rc) {
        free(e->db_path);
        free(e->service_name);
        free(e);
        return rc;
    }
    tr_metrics_t *m = tr_metrics_default();
    e->ended = tr_metrics_counter(m, "trellis_sagas_total", "Sagas ended, by name and state.",
                                  (const char *const[]){"name", "state", NULL});
    e->attempts = tr_metrics_counter(
        m, "trellis_saga_step_attempts_total", "Step calls made by sagas, by outcome.",
        (const char *const[]){"name", "step", "phase", "outcome", NULL});
    tr_metrics_counter_fn(m, "trellis_saga_commits_total",
                          "Group commits of the saga store (each holds every transition queued "
                          "since the one before).",
                          metric_commits, e);
    tr_metrics_gauge_fn(m, "trellis_sagas_active",
                        "Sagas not ended: running, compensating or stuck.", metric_active, e);
    e->client = tr_http_client_new(loop, NULL);
    tr_discovery_options_t dopt;
    tr_discovery_options_init(&dopt);
    dopt.hub = o->hub;
    dopt.registry = o->registry;
    e->discovery = tr_discovery_new(loop, &dopt);
    uv_prepare_init(loop, &e->flush);
    e->flush.data = e;
    uv_prepare_start(&e->flush, on_prepare);
    uv_timer_init(loop, &e->retry_flush);
    e->retry_flush.data = e;
    e->open_handles = 2;
    *out = e;
    return 0;
}

int tr_saga_engine_resume(tr_saga_engine_t *e)
{
    return tr__saga_store_load(e);
}

static void engine_handle_done(tr_saga_engine_t *e)
{
    if (--e->open_handles == 0 && e->done) e->done(e->done_data);
}

static void on_engine_handle_closed(uv_handle_t *h)
{
    engine_handle_done(h->data);
}

static void engine_free(tr_saga_engine_t *e)
{
    defs_free(e);
    tr_map_free(&e->sagas);
    free(e->queue);
    tr_sqlite_checkpointer_stop(e->ckpt);
    sqlite3_finalize(e->wsaga);
    sqlite3_finalize(e->wcall);
    sqlite3_close(e->wdb);
    sqlite3_close(e->db);
    free(e->db_path);
    free(e->service_name);
    free(e);
}

typedef struct close_ctx_s {
    void (*done)(void *data);
    void *data;
    tr_saga_engine_t *e;
} close_ctx_t;

static void on_all_closed(void *data)
{
    close_ctx_t *c = data;
    engine_free(c->e);
    if (c->done) c->done(c->data);
    free(c);
}

void tr_saga_engine_close(tr_saga_engine_t *e, void (*done)(void *data), void *data)
{
    close_ctx_t *c = tr_calloc(1, sizeof(*c));
    *c = (close_ctx_t){done, data, e};
    e->closing = true;
    e->done = on_all_closed;
    e->done_data = c;
    /* What was decided is written before the engine goes: now, or after the commit in flight
     * (which holds a count on the engine until it is done). */
    if (e->inflight) {
        e->open_handles++;
        uv_timer_stop(&e->retry_flush);
        if (!e->inflight->running) { /* a retry was waiting for its timer */
            tr__saga_commit_t *pending = e->inflight;
            e->inflight = NULL;
            tr__saga_store_write(pending);
            tr__saga_commit_free(pending);
            flush_final(e);
            e->open_handles--;
        }
    } else {
        flush_final(e);
    }
    size_t pos = 0;
    const char *k;
    void *v;
    while (tr_map_next(&e->sagas, &pos, &k, &v)) {
        saga_t *s = v;
        s->closing = true;
        for (size_t i = 0; i < s->def->nsteps; i++)
            if (s->lanes[i].req) tr_http_client_cancel(s->lanes[i].req);
        answer_waiters(s, true, false);
        saga_close(s);
    }
    tr_discovery_close(e->discovery, NULL);
    tr_http_client_close(e->client, NULL);
    uv_close((uv_handle_t *)&e->flush, on_engine_handle_closed);
    uv_close((uv_handle_t *)&e->retry_flush, on_engine_handle_closed);
}
