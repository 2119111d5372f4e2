/* The sagas' SQLite store: one row per saga and per step call, written in group commits. */
#include "saga/engine_int.h"

#include "core/fs.h"
#include "core/mem.h"
#include "core/sqlite.h"
#include "trellis/error.h"
#include "trellis/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const migrations[] = {
    "CREATE TABLE saga ("
    " id TEXT PRIMARY KEY, name TEXT NOT NULL, def_json TEXT NOT NULL, input_json TEXT NOT NULL,"
    " state TEXT NOT NULL, stuck_from TEXT, cur INTEGER NOT NULL, comp_phase INTEGER NOT NULL,"
    " pivot_passed INTEGER NOT NULL, error TEXT, idem_key TEXT UNIQUE, trace_id TEXT NOT NULL,"
    " root_span TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);"
    "CREATE INDEX saga_state ON saga (state);"
    "CREATE INDEX saga_name ON saga (name, created_ms);"
    "CREATE TABLE saga_call ("
    " saga_id TEXT NOT NULL, step INTEGER NOT NULL, phase TEXT NOT NULL, state TEXT NOT NULL,"
    " uncertain INTEGER NOT NULL, attempts INTEGER NOT NULL, status INTEGER, error TEXT,"
    " response_json TEXT, started_ms INTEGER, finished_ms INTEGER,"
    " PRIMARY KEY (saga_id, step, phase)) WITHOUT ROWID;",
    /* 2: a saga started by a traced request joins its trace, under the request's span */
    "ALTER TABLE saga ADD COLUMN parent_span TEXT;"
    "ALTER TABLE saga ADD COLUMN correlation_id TEXT;",
};

int tr__saga_store_open(tr_saga_engine_t *e, bool sync_full, char *err, size_t errlen)
{
    int mk = tr_mkdirs_parent(e->db_path);
    if (mk) {
        snprintf(err, errlen, "%s: cannot create its directory: %s", e->db_path, tr_strerror(mk));
        return TR_EIO;
    }
    if (sqlite3_open_v2(e->db_path, &e->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL)) {
        snprintf(err, errlen, "%s: %s", e->db_path, sqlite3_errmsg(e->db));
        sqlite3_close(e->db);
        e->db = NULL;
        return TR_EIO;
    }
    sqlite3_busy_timeout(e->db, 5000);
    int rc = tr_sqlite_exec(e->db,
                            sync_full ? "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                                      : "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                            err, errlen, e->db_path);
    if (!rc)
        rc = tr_sqlite_migrate(e->db, e->db_path, "sagas", migrations,
                               (int)(sizeof(migrations) / sizeof(migrations[0])), err, errlen);
    if (rc) {
        sqlite3_close(e->db);
        e->db = NULL;
        return rc;
    }
    /* The writer's own connection: group commits run on a thread-pool thread, so a commit (and
     * with synchronous=FULL its fsync) never holds up the loop, which the control plane shares
     * with the gateway. The loop's connection reads. */
    if (sqlite3_open_v2(e->db_path, &e->wdb, SQLITE_OPEN_READWRITE, tr_sqlite_walbuf_vfs()) ||
        tr_sqlite_exec(e->wdb,
                       sync_full ? "PRAGMA synchronous=FULL;" : "PRAGMA synchronous=NORMAL;", err,
                       errlen, e->db_path)) {
        if (!*err) snprintf(err, errlen, "%s: %s", e->db_path, sqlite3_errmsg(e->wdb));
        sqlite3_close(e->wdb);
        sqlite3_close(e->db);
        e->db = e->wdb = NULL;
        return TR_EIO;
    }
    sqlite3_busy_timeout(e->wdb, 5000);
    if (tr_sqlite_checkpointer_start(e->wdb, e->db_path, 0, 0, &e->ckpt, err, errlen)) {
        sqlite3_close(e->wdb);
        sqlite3_close(e->db);
        e->db = e->wdb = NULL;
        return TR_EIO;
    }
    tr_log_info("saga: store open", TR_LOG_STR("path", e->db_path),
                TR_LOG_STR("synchronous", tr_sqlite_int(e->wdb, "PRAGMA synchronous") == 2
                                              ? "full (fsync per commit)"
                                              : "normal (WAL: fsync at checkpoints)"));
    return 0;
}

static sqlite3_stmt *prepare(tr_saga_engine_t *e, const char *sql)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(e->db, sql, -1, &st, NULL) != SQLITE_OK)
        tr_log_error("saga: statement does not compile",
                     TR_LOG_STR("reason", sqlite3_errmsg(e->db)));
    return st;
}

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? 0 : TR_EIO;
}

/* ---- group commit: rows copied on the loop, written on a thread-pool thread ---- */

/* One saga row as it is at the snapshot. */
typedef struct saga_row_s {
    char *id, *name, *def_json, *input_json, *error, *idem_key, *correlation;
    const char *state, *stuck_from;
    char trace[33], root[17], parent[17]; /* parent "": none */
    int64_t cur, created_ms, updated_ms;
    int comp_phase, pivot_passed;
} saga_row_t;

/* One step call row. */
typedef struct call_row_s {
    const char *saga_id; /* the saga row's id */
    int64_t step, attempts, started_ms, finished_ms;
    const char *phase;
    char state[2];
    int uncertain, status;
    char *error, *response_json;
} call_row_t;

static char *dup_or_null(const char *s)
{
    return s ? tr_strdup(s) : NULL;
}

static char *json_text(const json_t *j)
{
    return j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
}

static void snap_call(call_row_t *r, const saga_row_t *sr, const saga_call_t *c, size_t step,
                      bool comp)
{
    *r = (call_row_t){.saga_id = sr->id,
                      .step = (int64_t)step,
                      .attempts = c->attempts,
                      .started_ms = (int64_t)c->started_ms,
                      .finished_ms = (int64_t)c->finished_ms,
                      .phase = comp ? "compensation" : "action",
                      .state = {c->state, '\0'},
                      .uncertain = c->uncertain,
                      .status = c->status,
                      .error = dup_or_null(c->error),
                      .response_json = json_text(c->response)};
}

static void snap_saga(saga_row_t *r, saga_t *s)
{
    *r = (saga_row_t){
        .id = tr_strdup(s->id),
        .name = tr_strdup(s->def->name),
        /* the row exists already: the upsert keeps these two */
        .def_json = s->inserted ? tr_strdup("") : json_text(s->def->source),
        .input_json = s->inserted ? tr_strdup("") : json_text(json_object_get(s->ctx, "input")),
        .error = dup_or_null(s->error),
        .idem_key = dup_or_null(s->idem_key),
        .correlation = dup_or_null(s->correlation),
        .state = tr__saga_state_name(s->state),
        .stuck_from = s->state == SAGA_STUCK ? tr__saga_state_name(s->stuck_from) : NULL,
        .cur = (int64_t)s->cur,
        .created_ms = (int64_t)s->created_ms,
        .updated_ms = (int64_t)s->updated_ms,
        .comp_phase = s->comp_phase,
        .pivot_passed = s->pivot_passed};
    tr_trace_hex_encode(s->trace_id, 16, r->trace);
    tr_trace_hex_encode(s->root_span, 8, r->root);
    if (!tr_trace_id_is_zero(s->parent_span, 8)) tr_trace_hex_encode(s->parent_span, 8, r->parent);
}

tr__saga_commit_t *tr__saga_store_snapshot(tr_saga_engine_t *e)
{
    tr__saga_commit_t *c = tr_calloc(1, sizeof(*c));
    c->e = e;
    c->n = e->nqueue;
    c->batch = tr_malloc(c->n * sizeof(*c->batch));
    c->sagas = tr_malloc(c->n * sizeof(*c->sagas));
    size_t ncalls = 0;
    for (size_t i = 0; i < c->n; i++)
        for (size_t k = 0; k < e->queue[i]->def->nsteps; k++)
            ncalls += e->queue[i]->action[k].dirty + e->queue[i]->comp[k].dirty;
    c->calls = tr_malloc((ncalls ? ncalls : 1) * sizeof(*c->calls));
    for (size_t i = 0; i < c->n; i++) {
        saga_t *s = e->queue[i];
        uint64_t send = 0;
        for (size_t k = 0; k < s->def->nsteps; k++) {
            if (s->lanes[k].send) send |= 1ull << k;
            s->lanes[k].send = false;
        }
        c->batch[i] = (tr__saga_done_t){.saga = s,
                                        .send = send,
                                        .ended = tr__saga_ended(s->state),
                                        .stuck = s->state == SAGA_STUCK};
        s->queued = false;
        if (!s->dirty) continue;
        saga_row_t *r = &c->sagas[c->nsagas++];
        snap_saga(r, s);
        for (size_t k = 0; k < s->def->nsteps; k++) {
            if (s->action[k].dirty) snap_call(&c->calls[c->ncalls++], r, &s->action[k], k, false);
            if (s->comp[k].dirty) snap_call(&c->calls[c->ncalls++], r, &s->comp[k], k, true);
            s->action[k].dirty = s->comp[k].dirty = false;
        }
        s->dirty = false;
        s->inserted = true; /* the next snapshot's row is an update, after this one commits */
    }
    e->nqueue = 0;
    return c;
}

void tr__saga_commit_free(tr__saga_commit_t *c)
{
    for (size_t i = 0; i < c->nsagas; i++) {
        saga_row_t *r = &c->sagas[i];
        free(r->id), free(r->name), free(r->def_json), free(r->input_json);
        free(r->error), free(r->idem_key), free(r->correlation);
    }
    for (size_t i = 0; i < c->ncalls; i++)
        free(c->calls[i].error), free(c->calls[i].response_json);
    free(c->sagas);
    free(c->calls);
    free(c->batch);
    free(c);
}

static int write_saga(sqlite3_stmt *st, const saga_row_t *r)
{
    bind_text(st, 1, r->id);
    bind_text(st, 2, r->name);
    bind_text(st, 3, r->def_json);
    bind_text(st, 4, r->input_json);
    bind_text(st, 5, r->state);
    bind_text(st, 6, r->stuck_from);
    sqlite3_bind_int64(st, 7, r->cur);
    sqlite3_bind_int(st, 8, r->comp_phase);
    sqlite3_bind_int(st, 9, r->pivot_passed);
    bind_text(st, 10, r->error);
    bind_text(st, 11, r->idem_key);
    bind_text(st, 12, r->trace);
    bind_text(st, 13, r->root);
    sqlite3_bind_int64(st, 14, r->created_ms);
    sqlite3_bind_int64(st, 15, r->updated_ms);
    bind_text(st, 16, r->parent[0] ? r->parent : NULL);
    bind_text(st, 17, r->correlation);
    return step_done(st);
}

static int write_call(sqlite3_stmt *st, const call_row_t *r)
{
    bind_text(st, 1, r->saga_id);
    sqlite3_bind_int64(st, 2, r->step);
    bind_text(st, 3, r->phase);
    bind_text(st, 4, r->state);
    sqlite3_bind_int(st, 5, r->uncertain);
    sqlite3_bind_int64(st, 6, r->attempts);
    sqlite3_bind_int(st, 7, r->status);
    bind_text(st, 8, r->error);
    bind_text(st, 9, r->response_json);
    sqlite3_bind_int64(st, 10, r->started_ms);
    sqlite3_bind_int64(st, 11, r->finished_ms);
    return step_done(st);
}

int tr__saga_store_write(tr__saga_commit_t *c)
{
    static const char saga_sql[] =
        "INSERT INTO saga (id, name, def_json, input_json, state, stuck_from, cur, comp_phase,"
        " pivot_passed, error, idem_key, trace_id, root_span, created_ms, updated_ms, parent_span,"
        " correlation_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET"
        " state = excluded.state, stuck_from = excluded.stuck_from, cur = excluded.cur,"
        " comp_phase = excluded.comp_phase, pivot_passed = excluded.pivot_passed,"
        " error = excluded.error, updated_ms = excluded.updated_ms";
    static const char call_sql[] =
        "INSERT OR REPLACE INTO saga_call (saga_id, step, phase, state, uncertain, attempts,"
        " status, error, response_json, started_ms, finished_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?)";
    tr_saga_engine_t *e = c->e;
    sqlite3 *db = e->wdb;
    if (!e->wsaga && sqlite3_prepare_v2(db, saga_sql, -1, &e->wsaga, NULL) != SQLITE_OK)
        e->wsaga = NULL;
    if (!e->wcall && sqlite3_prepare_v2(db, call_sql, -1, &e->wcall, NULL) != SQLITE_OK)
        e->wcall = NULL;
    if (!e->wsaga || !e->wcall ||
        sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(c->why, sizeof(c->why), "%s", sqlite3_errmsg(db));
        return TR_EIO;
    }
    int rc = 0;
    for (size_t i = 0; !rc && i < c->nsagas; i++)
        rc = write_saga(e->wsaga, &c->sagas[i]);
    for (size_t i = 0; !rc && i < c->ncalls; i++)
        rc = write_call(e->wcall, &c->calls[i]);
    if (rc || sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(c->why, sizeof(c->why), "%s", sqlite3_errmsg(db));
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return TR_EIO;
    }
    return 0;
}

/* ---- loading unfinished sagas at start ---- */

static const char *col_text(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

static json_t *col_json(sqlite3_stmt *st, int i)
{
    const char *t = col_text(st, i);
    return t && *t ? json_loads(t, JSON_DECODE_ANY, NULL) : NULL;
}

static void load_calls(tr_saga_engine_t *e, saga_t *s)
{
    sqlite3_stmt *st = prepare(e, "SELECT step, phase, state, uncertain, attempts, status, error,"
                                  " response_json, started_ms, finished_ms FROM saga_call"
                                  " WHERE saga_id = ?");
    if (!st) return;
    bind_text(st, 1, s->id);
    while (sqlite3_step(st) == SQLITE_ROW) {
        int64_t step = sqlite3_column_int64(st, 0);
        if (step < 0 || (size_t)step >= s->def->nsteps) continue;
        bool comp = !strcmp(col_text(st, 1), "compensation");
        saga_call_t *c = comp ? &s->comp[step] : &s->action[step];
        c->state = col_text(st, 2)[0];
        /* A call that was in flight when the process died may have taken effect, whatever
         * the attempts after the restart answer. */
        c->uncertain = sqlite3_column_int(st, 3) || c->state == 'r';
        c->attempts = (uint32_t)sqlite3_column_int64(st, 4);
        c->status = sqlite3_column_int(st, 5);
        c->error = col_text(st, 6) ? tr_strdup(col_text(st, 6)) : NULL;
        c->response = col_json(st, 7);
        c->started_ms = (uint64_t)sqlite3_column_int64(st, 8);
        c->finished_ms = (uint64_t)sqlite3_column_int64(st, 9);
        if (!comp && c->state == 'd')
            json_object_set(json_object_get(s->ctx, "steps"), s->def->steps[step].name,
                            c->response ? c->response : json_null());
    }
    sqlite3_finalize(st);
}

/* One row of `saga` back into a running saga_t; NULL when its definition no longer loads. */
static saga_t *load_one(tr_saga_engine_t *e, sqlite3_stmt *st)
{
    const char *id = col_text(st, 0), *name = col_text(st, 1);
    json_t *src = col_json(st, 2), *input = col_json(st, 3);
    tr_config_t *cfg = NULL;
    char err[256];
    tr__saga_def_t *def = NULL;
    char *text = src ? json_dumps(src, JSON_COMPACT) : NULL;
    if (text &&
        !tr_config_load_string("stored definition", text, strlen(text), &cfg, err, sizeof(err)))
        tr__saga_def_compile(cfg, name, tr_config_root(cfg), &def);
    free(text);
    tr_config_free(cfg);
    json_decref(src);
    if (!def) {
        tr_log_error("saga: cannot resume: its stored definition does not load",
                     TR_LOG_STR("saga", id));
        json_decref(input);
        return NULL;
    }
    tr__saga_origin_t origin = {.idem_key = col_text(st, 10), .correlation = col_text(st, 15)};
    saga_t *s = tr__saga_new(e, def, input ? input : json_object(), id, &origin);
    tr__saga_def_release(def);
    json_decref(input);
    s->state = (saga_state_t)tr__saga_state_parse(col_text(st, 4));
    int from = tr__saga_state_parse(col_text(st, 5));
    s->stuck_from = from >= 0 ? (saga_state_t)from : SAGA_RUNNING;
    s->cur = (size_t)sqlite3_column_int64(st, 6);
    s->comp_phase = sqlite3_column_int(st, 7);
    s->pivot_passed = sqlite3_column_int(st, 8);
    s->error = col_text(st, 9) ? tr_strdup(col_text(st, 9)) : NULL;
    tr_trace_hex_decode(col_text(st, 11), 32, s->trace_id);
    tr_trace_hex_decode(col_text(st, 12), 16, s->root_span);
    if (col_text(st, 14)) tr_trace_hex_decode(col_text(st, 14), 16, s->parent_span);
    s->created_ms = (uint64_t)sqlite3_column_int64(st, 13);
    s->inserted = true;
    if (s->cur >= def->nsteps && s->state != SAGA_RUNNING) s->cur = def->nsteps - 1;
    load_calls(e, s);
    return s;
}

int tr__saga_store_load(tr_saga_engine_t *e)
{
    sqlite3_stmt *st =
        prepare(e, "SELECT id, name, def_json, input_json, state, stuck_from, cur,"
                   " comp_phase, pivot_passed, error, idem_key, trace_id,"
                   " root_span, created_ms, parent_span, correlation_id FROM saga WHERE state IN"
                   " ('running', 'compensating', 'stuck') ORDER BY created_ms");
    if (!st) return TR_EIO;
    int n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        saga_t *s = load_one(e, st);
        if (!s) continue;
        n++;
        if (s->state == SAGA_STUCK) continue; /* waits for an operator */
        /* A call started and not answered is sent again (at-least-once). */
        tr__saga_advance(s);
    }
    sqlite3_finalize(st);
    if (n) tr_log_info("saga: resumed unfinished sagas", TR_LOG_INT("sagas", n));
    return n;
}

/* ---- reading for the API ---- */

static json_t *call_json(sqlite3_stmt *st)
{
    static const char *const states[] = {"pending", "running", "done", "failed"};
    const char *s = col_text(st, 2);
    const char *name = s[0] == 'r'   ? states[1]
                       : s[0] == 'd' ? states[2]
                       : s[0] == 'f' ? states[3]
                                     : states[0];
    json_t *resp = col_json(st, 7);
    return json_pack("{ss,sb,sI,si,ss?,so,sI,sI}", "state", name, "uncertain",
                     sqlite3_column_int(st, 3), "attempts", sqlite3_column_int64(st, 4), "status",
                     sqlite3_column_int(st, 5), "error", col_text(st, 6), "response",
                     resp ? resp : json_null(), "started_ms", sqlite3_column_int64(st, 8),
                     "finished_ms", sqlite3_column_int64(st, 9));
}

static json_t *steps_json(tr_saga_engine_t *e, const char *id, const json_t *def)
{
    json_t *steps = json_array(), *item;
    size_t i;
    /* The definition's steps flattened as the engine numbers them; `group` is the position of
     * the step's item in the definition (the steps of a parallel group share it). */
    json_array_foreach(json_object_get(def, "steps"), i, item)
    {
        const json_t *par = json_object_get(item, "parallel");
        size_t n = json_is_array(par) ? json_array_size(par) : 1;
        for (size_t k = 0; k < n; k++) {
            const json_t *sd = json_is_array(par) ? json_array_get(par, k) : item;
            json_array_append_new(steps,
                                  json_pack("{s:O?,s:I,s:b,s:o,s:o}", "name",
                                            json_object_get(sd, "name"), "group", (json_int_t)i,
                                            "pivot", json_is_true(json_object_get(sd, "pivot")),
                                            "action", json_pack("{ss}", "state", "pending"),
                                            "compensation", json_null()));
        }
    }
    sqlite3_stmt *st = prepare(e, "SELECT step, phase, state, uncertain, attempts, status, error,"
                                  " response_json, started_ms, finished_ms FROM saga_call"
                                  " WHERE saga_id = ? ORDER BY step");
    if (!st) return steps;
    bind_text(st, 1, id);
    while (sqlite3_step(st) == SQLITE_ROW) {
        json_t *step = json_array_get(steps, (size_t)sqlite3_column_int64(st, 0));
        if (step) json_object_set_new(step, col_text(st, 1), call_json(st));
    }
    sqlite3_finalize(st);
    return steps;
}

static json_t *saga_row_json(tr_saga_engine_t *e, sqlite3_stmt *st, bool full)
{
    const char *id = col_text(st, 0);
    const char *corr = col_text(st, 15);
    json_t *o =
        json_pack("{ss,ss,ss,ss?,sb,ss?,ss,ss,sI,sI}", "id", id, "name", col_text(st, 1), "state",
                  col_text(st, 4), "error", col_text(st, 9), "pivot_passed",
                  sqlite3_column_int(st, 8), "idempotency_key", col_text(st, 10), "trace_id",
                  col_text(st, 11), "correlation_id", corr ? corr : id, "created_ms",
                  sqlite3_column_int64(st, 13), "updated_ms", sqlite3_column_int64(st, 14));
    if (full) {
        json_t *def = col_json(st, 2), *input = col_json(st, 3);
        json_object_set_new(o, "input", input ? input : json_null());
        json_object_set_new(o, "steps", steps_json(e, id, def));
        json_decref(def);
    }
    return o;
}

#define SAGA_COLUMNS                                                                               \
    "id, name, def_json, input_json, state, stuck_from, cur, comp_phase, pivot_passed, error,"     \
    " idem_key, trace_id, root_span, created_ms, updated_ms, correlation_id"

json_t *tr__saga_store_get(tr_saga_engine_t *e, const char *id)
{
    sqlite3_stmt *st = prepare(e, "SELECT " SAGA_COLUMNS " FROM saga WHERE id = ?");
    if (!st) return NULL;
    bind_text(st, 1, id);
    json_t *o = sqlite3_step(st) == SQLITE_ROW ? saga_row_json(e, st, true) : NULL;
    sqlite3_finalize(st);
    return o;
}

json_t *tr__saga_store_list(tr_saga_engine_t *e, const char *name, const char *state, int limit)
{
    sqlite3_stmt *st =
        prepare(e, "SELECT " SAGA_COLUMNS " FROM saga WHERE (?1 IS NULL OR name = ?1)"
                   " AND (?2 IS NULL OR state = ?2)"
                   " ORDER BY created_ms DESC, id LIMIT ?3");
    json_t *out = json_array();
    if (!st) return out;
    bind_text(st, 1, name);
    bind_text(st, 2, state);
    sqlite3_bind_int(st, 3, limit);
    while (sqlite3_step(st) == SQLITE_ROW)
        json_array_append_new(out, saga_row_json(e, st, false));
    sqlite3_finalize(st);
    return out;
}

bool tr__saga_store_by_key(tr_saga_engine_t *e, const char *key, char *id)
{
    sqlite3_stmt *st = prepare(e, "SELECT id FROM saga WHERE idem_key = ?");
    if (!st) return false;
    bind_text(st, 1, key);
    bool found = sqlite3_step(st) == SQLITE_ROW;
    if (found) snprintf(id, 33, "%s", col_text(st, 0));
    sqlite3_finalize(st);
    return found;
}
