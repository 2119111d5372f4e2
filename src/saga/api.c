/* The sagas' HTTP API: start, read, list, retry, abort; definitions. See docs/sagas.md. */
#include "saga/engine_int.h"

#include "core/mem.h"
#include "trellis/config.h"
#include "trellis/error.h"
#include "trellis/http_json.h"
#include "trellis/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BODY      (1024 * 1024)
#define MAX_WAIT_MS   60000
#define DEFAULT_LIMIT 50

static void send_json(tr_http_req_t *req, int status, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    tr_http_res_send(req, status, "application/json", text, strlen(text));
    free(text);
}

void tr__saga_answer(tr_saga_engine_t *e, tr_http_req_t *req, const char *id, bool ended)
{
    json_t *saga = tr__saga_store_get(e, id);
    if (!saga) {
        tr_http_res_problem(req, 500, "saga-not-stored", "Saga not found after its commit",
                            "saga %s is not in the database; see the log", id);
        return;
    }
    char location[64];
    snprintf(location, sizeof(location), "/api/sagas/%s", id);
    tr_http_res_header(req, "location", location);
    send_json(req, ended ? 200 : 202, saga);
}

/* The path after `prefix`, when the path starts with it; "" for the prefix itself. */
static const char *after(const tr_http_req_t *req, const char *prefix, char *buf, size_t len)
{
    size_t n = strlen(prefix);
    if (req->path_len < n || memcmp(req->path, prefix, n)) return NULL;
    if (req->path_len > n && req->path[n] != '/') return NULL;
    size_t rest = req->path_len > n ? req->path_len - n - 1 : 0;
    if (rest >= len) rest = len - 1;
    memcpy(buf, req->path + n + (req->path_len > n ? 1 : 0), rest);
    buf[rest] = '\0';
    return buf;
}

/* ---- POST /api/sagas/{name} ---- */

typedef struct start_s {
    tr_saga_engine_t *e;
    char name[80];
    uint64_t wait_ms;
} start_t;

/* A correlation id the saga passes on: 1 to 128 visible ASCII characters. */
static bool usable_correlation(const char *v)
{
    size_t n = 0;
    for (; v[n]; n++)
        if (n >= 128 || v[n] <= ' ' || v[n] > '~') return false;
    return n > 0;
}

static void on_start_body(tr_http_req_t *req, json_t *input, void *data)
{
    start_t *st = data;
    tr_saga_engine_t *e = st->e;
    tr__saga_def_t *def = tr_map_get(&e->defs, st->name);
    if (!def) {
        tr_http_res_problem(req, 404, "unknown-saga", "Unknown saga",
                            "no saga named '%s' is defined (GET /api/saga-definitions)", st->name);
        return;
    }
    const char *key = tr_http_req_header(req, "idempotency-key");
    char id[33];
    if (key && *key) {
        saga_t *running = NULL;
        if (tr__saga_store_by_key(e, key, id)) { /* the same start again: the same saga */
            running = tr_map_get(&e->sagas, id);
            if (running && st->wait_ms && !tr__saga_ended(running->state))
                tr__saga_add_waiter(running, req, false, st->wait_ms);
            else
                tr__saga_answer(e, req, id, !running || tr__saga_ended(running->state));
            return;
        }
        size_t pos = 0; /* started but not committed yet */
        const char *k;
        void *v;
        while (tr_map_next(&e->sagas, &pos, &k, &v))
            if (((saga_t *)v)->idem_key && !strcmp(((saga_t *)v)->idem_key, key)) running = v;
        if (running) {
            tr__saga_add_waiter(running, req, !st->wait_ms, st->wait_ms);
            return;
        }
    }
    /* Started by a traced request (a gateway route, a service): the saga and its steps join
     * that trace, under the request's span. */
    const char *tp = tr_http_req_header(req, "traceparent");
    tr_trace_ctx_t parent;
    bool traced = tp && !tr_trace_parse_traceparent(tp, strlen(tp), &parent);
    const char *corr = tr_http_req_header(req, "x-correlation-id");
    tr__saga_origin_t origin = {.idem_key = key && *key ? key : NULL,
                                .parent = traced ? &parent : NULL,
                                .correlation = corr && usable_correlation(corr) ? corr : NULL};
    saga_t *s = tr__saga_new(e, def, input, NULL, &origin);
    tr_log_info("saga started", TR_LOG_STR("saga", s->id), TR_LOG_STR("name", def->name));
    tr__saga_mark(s);
    tr__saga_advance(s);
    /* Answered after the commit: accepted means durable. */
    tr__saga_add_waiter(s, req, !st->wait_ms, st->wait_ms);
}

static void start_saga(tr_saga_engine_t *e, tr_http_req_t *req, const char *name)
{
    start_t *st = tr_http_req_alloc(req, sizeof(*st));
    *st = (start_t){.e = e};
    snprintf(st->name, sizeof(st->name), "%.79s", name);
    const char *wait = NULL;
    if (tr_http_query_param(req, "wait", &wait)) {
        if (tr_parse_duration_ms(wait, &st->wait_ms) || st->wait_ms > MAX_WAIT_MS) {
            tr_http_res_problem(req, 400, "bad-wait", "Bad wait",
                                "wait must be a duration of at most 60s, like 5s or 500ms");
            return;
        }
    }
    tr_http_req_read_json(req, MAX_BODY, TR_HTTP_JSON_EMPTY_OK, on_start_body, st);
}

/* ---- one saga ---- */

static void saga_action(tr_saga_engine_t *e, tr_http_req_t *req, const char *id, const char *act)
{
    saga_t *s = tr_map_get(&e->sagas, id);
    json_t *stored = s ? NULL : tr__saga_store_get(e, id);
    if (!s && !stored) {
        tr_http_res_problem(req, 404, "unknown-saga-id", "No such saga", "no saga %s", id);
        return;
    }
    const char *state =
        s ? tr__saga_state_name(s->state) : json_string_value(json_object_get(stored, "state"));
    int rc = !s ? TR_ESTATE : !strcmp(act, "retry") ? tr__saga_retry(s) : tr__saga_abort(s);
    if (rc)
        tr_http_res_problem(req, 409, "saga-state", "Not possible in this state",
                            "%s is only for %s; saga %s is %s", act,
                            !strcmp(act, "retry")
                                ? "a stuck saga"
                                : "a stuck saga, or a running one before its pivot",
                            id, state);
    json_decref(stored); /* after the message: `state` may point into it */
    if (rc) return;
    tr__saga_add_waiter(s, req, true, 0);
}

static void one_saga(tr_saga_engine_t *e, tr_http_req_t *req, char *rest)
{
    char *slash = strchr(rest, '/');
    if (slash) *slash = '\0';
    const char *act = slash ? slash + 1 : NULL;
    bool post = !strcmp(req->method, "POST"), get = !strcmp(req->method, "GET");
    if (!act && post) {
        start_saga(e, req, rest);
        return;
    }
    if (!act && get) {
        json_t *saga = tr__saga_store_get(e, rest);
        if (saga)
            send_json(req, 200, saga);
        else
            tr_http_res_problem(req, 404, "unknown-saga-id", "No such saga", "no saga %s", rest);
        return;
    }
    if (act && post && (!strcmp(act, "retry") || !strcmp(act, "abort"))) {
        saga_action(e, req, rest, act);
        return;
    }
    tr_http_res_problem(req, 404, "not-found", "Not found",
                        "POST /api/sagas/{name}, GET /api/sagas/{id}, POST /api/sagas/{id}/retry "
                        "or /abort");
}

static void list_sagas(tr_saga_engine_t *e, tr_http_req_t *req)
{
    const char *name = NULL, *state = NULL, *limit = NULL;
    tr_http_query_param(req, "name", &name);
    tr_http_query_param(req, "state", &state);
    tr_http_query_param(req, "limit", &limit);
    int n = limit ? atoi(limit) : DEFAULT_LIMIT;
    if (state && tr__saga_state_parse(state) < 0) {
        tr_http_res_problem(req, 400, "bad-state", "Unknown state",
                            "state is one of running, compensating, completed, compensated, "
                            "stuck, aborted");
        return;
    }
    if (n < 1 || n > 1000) {
        tr_http_res_problem(req, 400, "bad-limit", "Bad limit", "limit is 1 to 1000");
        return;
    }
    send_json(req, 200,
              json_pack("{so}", "sagas",
                        tr__saga_store_list(e, name && *name ? name : NULL,
                                            state && *state ? state : NULL, n)));
}

/* ---- definitions ---- */

typedef struct define_s {
    tr_saga_engine_t *e;
    char name[80];
} define_t;

static void on_define_body(tr_http_req_t *req, json_t *body, void *data)
{
    define_t *d = data;
    char *text = json_dumps(body, JSON_COMPACT);
    char err[512];
    tr_config_t *cfg = NULL;
    tr__saga_def_t *def = NULL;
    int rc = tr_config_load_string("request body", text, strlen(text), &cfg, err, sizeof(err));
    free(text);
    if (!rc) rc = tr__saga_def_compile(cfg, d->name, tr_config_root(cfg), &def);
    if (rc) {
        tr_http_res_problem(req, 422, "invalid-saga-definition", "Invalid saga definition", "%s",
                            cfg ? tr_config_error(cfg) : err);
        tr_config_free(cfg);
        return;
    }
    tr_config_free(cfg);
    tr__saga_def_release(tr_map_put(&d->e->defs, def->name, def));
    send_json(req, 200, json_pack("{ss,sO}", "name", def->name, "definition", def->source));
}

static void definitions(tr_saga_engine_t *e, tr_http_req_t *req, const char *name)
{
    if (!*name && !strcmp(req->method, "GET")) {
        json_t *all = json_object();
        size_t pos = 0;
        const char *k;
        void *v;
        while (tr_map_next(&e->defs, &pos, &k, &v))
            json_object_set(all, k, ((tr__saga_def_t *)v)->source);
        send_json(req, 200, json_pack("{so}", "definitions", all));
        return;
    }
    if (*name && !strcmp(req->method, "GET")) {
        tr__saga_def_t *d = tr_map_get(&e->defs, name);
        if (d)
            send_json(req, 200, json_pack("{ss,sO}", "name", d->name, "definition", d->source));
        else
            tr_http_res_problem(req, 404, "unknown-saga", "Unknown saga", "no saga named '%s'",
                                name);
        return;
    }
    if (*name && !strcmp(req->method, "PUT")) {
        define_t *d = tr_http_req_alloc(req, sizeof(*d));
        *d = (define_t){.e = e};
        snprintf(d->name, sizeof(d->name), "%.79s", name);
        tr_http_req_read_json(req, MAX_BODY, 0, on_define_body, d);
        return;
    }
    tr_http_res_problem(req, 405, "method-not-allowed", "Method not allowed",
                        "GET /api/saga-definitions[/{name}] or PUT /api/saga-definitions/{name}");
}

bool tr_saga_handle(tr_saga_engine_t *e, tr_http_req_t *req)
{
    char buf[256];
    const char *rest;
    if ((rest = after(req, "/api/saga-definitions", buf, sizeof(buf)))) {
        definitions(e, req, rest);
        return true;
    }
    if (!(rest = after(req, "/api/sagas", buf, sizeof(buf)))) return false;
    if (!*rest) {
        if (!strcmp(req->method, "GET"))
            list_sagas(e, req);
        else
            tr_http_res_problem(req, 405, "method-not-allowed", "Method not allowed",
                                "GET /api/sagas lists sagas; POST /api/sagas/{name} starts one");
        return true;
    }
    one_saga(e, req, buf);
    return true;
}
