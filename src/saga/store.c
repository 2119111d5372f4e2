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
    tr_log_info("saga: store open", TR_LOG_STR("path", e->db_path),
                TR_LOG_STR("synchronous", tr_sqlite_int(e->db, "PRAGMA synchronous") == 2
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

static void bind_json(sqlite3_stmt *st, int i, const json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    if (text)
        sqlite3_bind_text(st, i, text, -1, free);
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

static int write_saga(tr_saga_engine_t *e, sqlite3_stmt *st, saga_t *s)
{
    char trace[33], root[17];
    tr_trace_hex_encode(s->trace_id, 16, trace);
    tr_trace_hex_encode(s->root_span, 8, root);
    bind_text(st, 1, s->id);
    bind_text(st, 2, s->def->name);
    if (!s->inserted) {
        bind_json(st, 3, s->def->source);
        bind_json(st, 4, json_object_get(s->ctx, "input"));
    } else { /* the row exists: the upsert keeps these */
        bind_text(st, 3, "");
        bind_text(st, 4, "");
    }
    bind_text(st, 5, tr__saga_state_name(s->state));
    bind_text(st, 6, s->state == SAGA_STUCK ? tr__saga_state_name(s->stuck_from) : NULL);
    sqlite3_bind_int64(st, 7, (int64_t)s->cur);
    sqlite3_bind_int(st, 8, s->comp_phase);
    sqlite3_bind_int(st, 9, s->pivot_passed);
    bind_text(st, 10, s->error);
    bind_text(st, 11, s->idem_key);
    bind_text(st, 12, trace);
    bind_text(st, 13, root);
    sqlite3_bind_int64(st, 14, (int64_t)s->created_ms);
    sqlite3_bind_int64(st, 15, (int64_t)s->updated_ms);
    (void)e;
    return step_done(st);
}

static int write_call(sqlite3_stmt *st, const saga_t *s, size_t step, bool comp)
{
    const saga_call_t *c = comp ? &s->comp[step] : &s->action[step];
    char state[2] = {c->state, '\0'};
    bind_text(st, 1, s->id);
    sqlite3_bind_int64(st, 2, (int64_t)step);
    bind_text(st, 3, comp ? "compensation" : "action");
    bind_text(st, 4, state);
    sqlite3_bind_int(st, 5, c->uncertain);
    sqlite3_bind_int64(st, 6, c->attempts);
    sqlite3_bind_int(st, 7, c->status);
    bind_text(st, 8, c->error);
    bind_json(st, 9, c->response);
    sqlite3_bind_int64(st, 10, (int64_t)c->started_ms);
    sqlite3_bind_int64(st, 11, (int64_t)c->finished_ms);
    return step_done(st);
}

static int write_all(tr_saga_engine_t *e, sqlite3_stmt *ss, sqlite3_stmt *cs)
{
    for (size_t i = 0; i < e->nqueue; i++) {
        saga_t *s = e->queue[i];
        if (!s->dirty) continue;
        if (write_saga(e, ss, s)) return TR_EIO;
        for (size_t k = 0; k < s->def->nsteps; k++) {
            if (s->action[k].dirty && write_call(cs, s, k, false)) return TR_EIO;
            if (s->comp[k].dirty && write_call(cs, s, k, true)) return TR_EIO;
        }
    }
    return 0;
}

int tr__saga_store_commit(tr_saga_engine_t *e)
{
    static const char saga_sql[] =
        "INSERT INTO saga (id, name, def_json, input_json, state, stuck_from, cur, comp_phase,"
        " pivot_passed, error, idem_key, trace_id, root_span, created_ms, updated_ms)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET"
        " state = excluded.state, stuck_from = excluded.stuck_from, cur = excluded.cur,"
        " comp_phase = excluded.comp_phase, pivot_passed = excluded.pivot_passed,"
        " error = excluded.error, updated_ms = excluded.updated_ms";
    static const char call_sql[] =
        "INSERT OR REPLACE INTO saga_call (saga_id, step, phase, state, uncertain, attempts,"
        " status, error, response_json, started_ms, finished_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?)";
    char err[256];
    if (tr_sqlite_exec(e->db, "BEGIN IMMEDIATE", err, sizeof(err), e->db_path)) return TR_EIO;
    sqlite3_stmt *ss = prepare(e, saga_sql), *cs = prepare(e, call_sql);
    int rc = ss && cs ? write_all(e, ss, cs) : TR_EIO;
    sqlite3_finalize(ss);
    sqlite3_finalize(cs);
    if (rc || tr_sqlite_exec(e->db, "COMMIT", err, sizeof(err), e->db_path)) {
        tr_log_error("saga: commit failed", TR_LOG_STR("reason", sqlite3_errmsg(e->db)));
        sqlite3_exec(e->db, "ROLLBACK", NULL, NULL, NULL);
        return TR_EIO;
    }
    e->fsyncs++;
    for (size_t i = 0; i < e->nqueue; i++) {
        saga_t *s = e->queue[i];
        s->dirty = false;
        s->inserted = true;
        for (size_t k = 0; k < s->def->nsteps; k++)
            s->action[k].dirty = s->comp[k].dirty = false;
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
    saga_t *s = tr__saga_new(e, def, input ? input : json_object(), id, col_text(st, 10));
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
    s->created_ms = (uint64_t)sqlite3_column_int64(st, 13);
    s->inserted = true;
    if (s->cur >= def->nsteps && s->state != SAGA_RUNNING) s->cur = def->nsteps - 1;
    load_calls(e, s);
    return s;
}

int tr__saga_store_load(tr_saga_engine_t *e)
{
    sqlite3_stmt *st = prepare(e, "SELECT id, name, def_json, input_json, state, stuck_from, cur,"
                                  " comp_phase, pivot_passed, error, idem_key, trace_id,"
                                  " root_span, created_ms FROM saga WHERE state IN"
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
    json_t *steps = json_array(), *sd;
    size_t i;
    json_array_foreach(json_object_get(def, "steps"), i, sd)
    {
        json_array_append_new(
            steps, json_pack("{s:O?,s:b,s:o,s:o}", "name", json_object_get(sd, "name"), "pivot",
                             json_is_true(json_object_get(sd, "pivot")), "action",
                             json_pack("{ss}", "state", "pending"), "compensation", json_null()));
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
    json_t *o = json_pack("{ss,ss,ss,ss?,sb,ss?,ss,sI,sI}", "id", id, "name", col_text(st, 1),
                          "state", col_text(st, 4), "error", col_text(st, 9), "pivot_passed",
                          sqlite3_column_int(st, 8), "idempotency_key", col_text(st, 10),
                          "trace_id", col_text(st, 11), "created_ms", sqlite3_column_int64(st, 13),
                          "updated_ms", sqlite3_column_int64(st, 14));
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
    " idem_key, trace_id, root_span, created_ms, updated_ms"

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
