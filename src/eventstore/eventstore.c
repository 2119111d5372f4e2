/* The event store: SQLite schema, the group-committing writer thread, and reads. */
#include "eventstore/eventstore_internal.h"
#include "eventstore/outbox.h"

#include "core/buf.h"
#include "core/jsonw.h"
#include "core/httpdate.h"
#include "core/mem.h"
#include "core/sqlite.h"
#include "trellis/error.h"
#include "trellis/log.h"

#include <errno.h>
#include <stdarg.h>
#include <sys/random.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ---- schema ----------------------------------------------------------------------------- */

static const char *const migrations[] = {
    /* 1: streams (last version, soft delete, retention) and events by commit position. */
    "CREATE TABLE streams (name TEXT PRIMARY KEY, version INTEGER NOT NULL DEFAULT -1,"
    " deleted INTEGER NOT NULL DEFAULT 0, visible_from INTEGER NOT NULL DEFAULT 0,"
    " max_age_ms INTEGER NOT NULL DEFAULT 0, max_count INTEGER NOT NULL DEFAULT 0)"
    " WITHOUT ROWID;"
    "CREATE TABLE events (position INTEGER PRIMARY KEY, stream TEXT NOT NULL,"
    " version INTEGER NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL,"
    " metadata TEXT, time INTEGER NOT NULL);"
    "CREATE UNIQUE INDEX events_stream ON events (stream, version);"
    "CREATE UNIQUE INDEX events_id ON events (id);",
    /* 2: push subscriptions (the outbox): definitions, checkpoints and dead letters. */
    "CREATE TABLE subscriptions (name TEXT PRIMARY KEY, definition TEXT NOT NULL,"
    " checkpoint INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE dead_letters (subscription TEXT NOT NULL, position INTEGER NOT NULL,"
    " attempts INTEGER NOT NULL, error TEXT NOT NULL, time INTEGER NOT NULL,"
    " retry INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (subscription, position)) WITHOUT ROWID;",
};

#define NMIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

/* The writer's statements, prepared once: the writer runs them for every event. */
enum { W_STREAM_GET, W_ID_GET, W_INSERT, W_STREAM_PUT, W_DELETE, W_META, W_COUNT };
static const char *const writer_sql[W_COUNT] = {
    "SELECT version, deleted, visible_from FROM streams WHERE name = ?1",
    "SELECT stream, version, position FROM events WHERE id = ?1",
    "INSERT INTO events (stream, version, id, type, data, metadata, time)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    "INSERT INTO streams (name, version, deleted, visible_from) VALUES (?1, ?2, 0, ?3)"
    " ON CONFLICT (name) DO UPDATE SET version = excluded.version, deleted = 0,"
    " visible_from = excluded.visible_from",
    "UPDATE streams SET deleted = 1 WHERE name = ?1 AND deleted = 0 AND version >= 0",
    "INSERT INTO streams (name, max_age_ms, max_count) VALUES (?1, ?2, ?3)"
    " ON CONFLICT (name) DO UPDATE SET max_age_ms = excluded.max_age_ms,"
    " max_count = excluded.max_count",
};

enum { R_STREAM, R_FORWARD, R_BACKWARD, R_ALL, R_COUNT };
#define EVENT_COLS "position, stream, version, id, type, data, metadata, time"
static const char *const reader_sql[R_COUNT] = {
    "SELECT version, deleted, visible_from, max_age_ms, max_count FROM streams WHERE name = ?1",
    "SELECT " EVENT_COLS " FROM events WHERE stream = ?1 AND version >= ?2 AND time >= ?3"
    " ORDER BY version LIMIT ?4",
    "SELECT " EVENT_COLS " FROM events WHERE stream = ?1 AND version <= ?2 AND version >= ?3"
    " AND time >= ?4 ORDER BY version DESC LIMIT ?5",
    "SELECT " EVENT_COLS " FROM events WHERE position >= ?1 ORDER BY position LIMIT ?2",
};

typedef struct stmts_s {
    sqlite3_stmt *w[W_COUNT];
    sqlite3_stmt *r[R_COUNT];
} stmts_t;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int prepare_all(sqlite3 *db, const char *const *sql, sqlite3_stmt **out, int n,
                       const char *path, char *err, size_t errlen)
{
    for (int i = 0; i < n; i++)
        if (sqlite3_prepare_v3(db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &out[i], NULL) !=
            SQLITE_OK) {
            snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(db));
            return TR_EIO;
        }
    return 0;
}

static void finalize_all(sqlite3_stmt **st, int n)
{
    for (int i = 0; i < n; i++) {
        sqlite3_finalize(st[i]);
        st[i] = NULL;
    }
}

/* ---- the store's private parts ---------------------------------------------------------- */

typedef struct store_priv_s {
    tr_eventstore_t pub;
    /* The scavenger: every SCAVENGE_EVERY_MS, a write that removes what metadata excludes. */
    uv_timer_t scavenge_timer;
    tr_es_write_t scavenge;
    bool scavenging;
    stmts_t st;
    pthread_cond_t done_cond; /* tr_eventstore_write_wait callers */
    /* Copies the WAL back into the database off the writer's path, so a checkpoint's fsync
     * never holds up a group commit. */
    tr_sqlite_checkpointer_t *ckpt;
} store_priv_t;

#define CHECKPOINT_PAGES  16384 /* WAL pages (64 MiB) that ask for a checkpoint */
#define SCAVENGE_EVERY_MS (5 * 60 * 1000)
#define PAGE_MAX_BYTES    (1u << 20) /* event data in one page of a read */
#define SCAVENGE_MAX      20000      /* events removed per scavenge at most: a commit stays short */
#define CHECKPOINT_GAP_MS 250        /* between two checkpoints */

static store_priv_t *priv(tr_eventstore_t *s)
{
    return (store_priv_t *)s;
}

/* ---- open ------------------------------------------------------------------------------- */

static char *db_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        size_t n = strlen(path) + sizeof("/events.db");
        char *p = tr_malloc(n);
        snprintf(p, n, "%s/events.db", path);
        return p;
    }
    return tr_strdup(path);
}

enum { C_WRITER, C_READER };

static int open_conn(const char *path, int kind, bool sync_full, sqlite3 **out, char *err,
                     size_t errlen)
{
    bool writer = kind == C_WRITER;
    int flags =
        SQLITE_OPEN_NOMUTEX |
        (kind == C_READER ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    sqlite3 *db = NULL;
    /* The writer's group commits leave in one write each, not two per page (measured:
     * 2.4 pwrite calls per event with 64 connections of pipelined single appends). */
    if (sqlite3_open_v2(path, &db, flags, writer ? tr_sqlite_walbuf_vfs() : NULL) != SQLITE_OK) {
        snprintf(err, errlen,
                 "%s: cannot open: %s (check the data directory exists and is writable)", path,
                 db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return TR_EIO;
    }
    sqlite3_busy_timeout(db, 5000);
    /* A larger page cache and mmap'd reads: without them, index lookups of every append and
     * every page read went to pread (measured: the largest cost in bench/eventstore.sh). */
    int rc = tr_sqlite_exec(db, "PRAGMA cache_size=-65536; PRAGMA mmap_size=1073741824;", err,
                            errlen, path);
    if (rc == 0 && writer) {
        /* WAL with NORMAL survives a process crash: the WAL is in the OS before COMMIT
         * returns. FULL adds an fsync per commit for power loss. */
        rc = tr_sqlite_exec(db,
                            sync_full ? "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                                      : "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                            err, errlen, path);
        if (rc == 0)
            rc = tr_sqlite_migrate(db, path, "eventstore", migrations, NMIGRATIONS, err, errlen);
    }
    if (rc < 0) {
        sqlite3_close(db);
        return rc;
    }
    *out = db;
    return 0;
}

static void *writer_main(void *arg);
static void on_async(uv_async_t *h);

/* Stops the writer after it answered everything queued. */
static void stop_writer(tr_eventstore_t *s)
{
    store_priv_t *p = priv(s);
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    if (s->writer_started) pthread_join(s->writer, NULL);
    s->writer_started = false;
    tr_sqlite_checkpointer_stop(p->ckpt);
    p->ckpt = NULL;
}

static void on_check(uv_check_t *h);

static void on_scavenged(tr_es_write_t *w)
{
    tr_eventstore_t *s = w->data;
    priv(s)->scavenging = false;
    if (w->status == 200 && w->position > 0)
        tr_log_info("event store: scavenged what stream metadata excludes",
                    TR_LOG_INT("events_removed", w->position));
    tr__eventstore_release(s);
}

static void on_scavenge_timer(uv_timer_t *t)
{
    tr_eventstore_t *s = t->data;
    store_priv_t *p = priv(s);
    if (p->scavenging || s->closing) return;
    p->scavenging = true;
    p->scavenge = (tr_es_write_t){.op = TR_ES_OP_SCAVENGE, .cb = on_scavenged, .data = s};
    tr__eventstore_retain(s); /* until its answer */
    tr_eventstore_write(s, &p->scavenge);
}

/* The async (writer → loop) and the check that hands writes over once per loop iteration. */
static int loop_handles_init(tr_eventstore_t *s)
{
    int e = uv_async_init(s->opts.loop, &s->async, on_async);
    if (e) return e;
    s->async.data = s;
    uv_check_init(s->opts.loop, &s->check);
    s->check.data = s;
    uv_check_start(&s->check, on_check);
    /* It runs while other handles keep the loop alive; it must not keep it alive itself. */
    uv_unref((uv_handle_t *)&s->check);
    uv_timer_init(s->opts.loop, &priv(s)->scavenge_timer);
    priv(s)->scavenge_timer.data = s;
    uv_timer_start(&priv(s)->scavenge_timer, on_scavenge_timer, SCAVENGE_EVERY_MS,
                   SCAVENGE_EVERY_MS);
    uv_unref((uv_handle_t *)&priv(s)->scavenge_timer);
    return 0;
}

static void store_free(tr_eventstore_t *s)
{
    store_priv_t *p = priv(s);
    finalize_all(p->st.r, R_COUNT);
    sqlite3_close(s->rdb);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->rmu);
    pthread_cond_destroy(&s->wake);
    pthread_cond_destroy(&p->done_cond);
    free(s->path);
    free(p);
}

static int open_dbs(tr_eventstore_t *s, char *err, size_t errlen)
{
    store_priv_t *p = priv(s);
    int e = open_conn(s->path, C_WRITER, s->opts.sync_full, &s->wdb, err, errlen);
    if (!e) e = open_conn(s->path, C_READER, false, &s->rdb, err, errlen);
    if (!e)
        e = tr_sqlite_checkpointer_start(s->wdb, s->path, CHECKPOINT_PAGES, CHECKPOINT_GAP_MS,
                                         &p->ckpt, err, errlen);
    if (!e) e = prepare_all(s->wdb, writer_sql, p->st.w, W_COUNT, s->path, err, errlen);
    if (!e) e = prepare_all(s->rdb, reader_sql, p->st.r, R_COUNT, s->path, err, errlen);
    if (!e) {
        int64_t head = tr_sqlite_int(s->wdb, "SELECT coalesce(max(position), 0) FROM events");
        s->head = head > 0 ? head : 0;
    }
    return e;
}

int tr_eventstore_open(const char *path, const tr_eventstore_options_t *opts, tr_eventstore_t **out,
                       char *err, size_t errlen)
{
    store_priv_t *p = tr_calloc(1, sizeof(*p));
    tr_eventstore_t *s = &p->pub;
    if (opts) s->opts = *opts;
    s->path = db_path(path);
    s->refs = 1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->rmu, NULL);
    pthread_cond_init(&s->wake, NULL);
    pthread_cond_init(&p->done_cond, NULL);
    int e = open_dbs(s, err, errlen);
    if (!e && (e = pthread_create(&s->writer, NULL, writer_main, s)) != 0) {
        snprintf(err, errlen, "cannot start the writer thread: %s", strerror(e));
        e = TR_EIO;
    }
    s->writer_started = e == 0;
    /* The writer sends on the async only for writes, and none can be queued before this
     * returns, so creating it after the thread is safe. */
    if (!e && s->opts.loop && (e = loop_handles_init(s)) != 0)
        snprintf(err, errlen, "cannot create the writer's wake-up: %s", uv_strerror(e));
    if (e) {
        stop_writer(s);
        finalize_all(p->st.w, W_COUNT);
        sqlite3_close(s->wdb);
        store_free(s);
        return e < 0 ? e : TR_EIO;
    }
    if (s->opts.loop) s->refs += 3; /* the async, check and scavenge timer handles */
    if (s->opts.loop && (e = tr__outbox_start(s)) != 0)
        tr_log_error("cannot load the push subscriptions; they are not delivered",
                     TR_LOG_STR("path", s->path), TR_LOG_ERR(e));
    *out = s;
    return 0;
}

/* ---- close ------------------------------------------------------------------------------ */

void tr__eventstore_retain(tr_eventstore_t *s)
{
    s->refs++;
}

void tr__eventstore_release(tr_eventstore_t *s)
{
    if (--s->refs == 0) store_free(s);
}

static void on_async_closed(uv_handle_t *h)
{
    tr__eventstore_release(h->data);
}

static void deliver_done(tr_eventstore_t *s, bool *committed);

void tr_eventstore_close(tr_eventstore_t *s)
{
    if (!s || s->closing) return;
    s->closing = true;
    if (s->opts.loop) on_check(&s->check);
    stop_writer(s);
    tr_log_info("event store closed", TR_LOG_STR("path", s->path),
                TR_LOG_UINT("commits", s->commits), TR_LOG_UINT("events", s->events));
    finalize_all(priv(s)->st.w, W_COUNT);
    sqlite3_close(s->wdb);
    s->wdb = NULL;
    if (s->opts.loop) {
        bool committed = false;
        deliver_done(s, &committed);
        tr__eventstore_http_close(s);
        tr__outbox_close(s);
        uv_close((uv_handle_t *)&s->async, on_async_closed);
        uv_close((uv_handle_t *)&s->check, on_async_closed);
        uv_close((uv_handle_t *)&priv(s)->scavenge_timer, on_async_closed);
    }
    tr__eventstore_release(s);
}

/* ---- the writer ------------------------------------------------------------------------- */

static void fail(tr_es_write_t *w, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(tr_es_write_t *w, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->detail, sizeof(w->detail), fmt, ap);
    va_end(ap);
    w->status = status;
}

typedef struct stream_state_s {
    bool row;
    int64_t version; /* -1: no event yet */
    bool deleted;
    int64_t visible_from;
} stream_state_t;

static bool stream_get(sqlite3_stmt *st, const char *name, stream_state_t *out)
{
    *out = (stream_state_t){.version = -1};
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        out->row = true;
        out->version = sqlite3_column_int64(st, 0);
        out->deleted = sqlite3_column_int(st, 1) != 0;
        out->visible_from = sqlite3_column_int64(st, 2);
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE;
}

/* Where event `id` already is: 1 found (stream matches `stream`, version in *v), 2 found in
 * another stream, 0 absent, -1 SQLite failed. */
static int id_lookup(sqlite3_stmt *st, const char *id, const char *stream, int64_t *v, int64_t *pos)
{
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st), r = rc == SQLITE_DONE ? 0 : -1;
    if (rc == SQLITE_ROW) {
        const char *in = (const char *)sqlite3_column_text(st, 0);
        *v = sqlite3_column_int64(st, 1);
        *pos = sqlite3_column_int64(st, 2);
        r = in && strcmp(in, stream) == 0 ? 1 : 2;
    }
    sqlite3_reset(st);
    return r;
}

static const char *event_id(json_t *events, size_t i)
{
    return json_string_value(json_object_get(json_array_get(events, i), "id"));
}

/*
 * Idempotency: 1 when every event of the request is already where this request would have
 * put it the first time (w holds the original result), 0 when none of the ids is known,
 * -1 on a conflict (w answered 409), -2 when SQLite failed.
 */
static int check_repeat(stmts_t *st, tr_es_write_t *w, int64_t cur)
{
    size_t n = json_array_size(w->events);
    int64_t v0 = -1, v, pos = 0;
    for (size_t i = 0; i < n; i++) {
        int r = id_lookup(st->w[W_ID_GET], event_id(w->events, i), w->stream, &v, &pos);
        if (r < 0) return -2;
        if (r == 0 && i == 0) {
            for (size_t k = 1; k < n; k++) {
                r = id_lookup(st->w[W_ID_GET], event_id(w->events, k), w->stream, &v, &pos);
                if (r < 0) return -2;
                if (r > 0) goto conflict;
            }
            return 0;
        }
        if (r != 1 || (i > 0 && v != v0 + (int64_t)i)) goto conflict;
        if (i == 0) v0 = v;
        w->last_version = v;
        w->position = pos;
    }
    /* With a version expected, the place is known: the events must be right after it. */
    if (w->expected >= 0 && v0 != w->expected + 1) goto conflict;
    w->first_version = v0;
    w->status = 200;
    return 1;
conflict:
    w->current_version = cur;
    fail(w, 409,
         "an event id of this request is already used at another place (a stream or a "
         "version); use new ids for new events");
    return -1;
}

/* The expected-version check; false when w was answered (409 or 410). */
static bool check_expected(tr_es_write_t *w, const stream_state_t *ss)
{
    int64_t e = w->expected, cur = ss->version;
    bool live = ss->version >= 0 && !ss->deleted;
    w->current_version = cur;
    if (ss->deleted && (e == TR_ES_EXPECT_EXISTS || e >= 0)) {
        fail(w, 410,
             "stream '%s' was deleted; append with expected=any or no_stream to start it "
             "again",
             w->stream);
        return false;
    }
    if (e == TR_ES_EXPECT_ANY) return true;
    if (e == TR_ES_EXPECT_NO_STREAM && !live) return true;
    if (e == TR_ES_EXPECT_EXISTS && live) return true;
    if (e >= 0 && e == cur) return true;
    fail(w, 409, "stream '%s' is at version %lld; read it again and retry", w->stream,
         (long long)cur);
    return false;
}

static char *dump(json_t *v)
{
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

static bool insert_event(sqlite3_stmt *st, const char *stream, int64_t version, json_t *ev,
                         int64_t t)
{
    json_t *meta = json_object_get(ev, "metadata");
    char *data = dump(json_object_get(ev, "data") ? json_object_get(ev, "data") : json_null());
    char *md = meta ? dump(meta) : NULL;
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, stream, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, version);
    sqlite3_bind_text(st, 3, json_string_value(json_object_get(ev, "id")), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, json_string_value(json_object_get(ev, "type")), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, data ? data : "null", -1, SQLITE_STATIC);
    if (md)
        sqlite3_bind_text(st, 6, md, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 6);
    sqlite3_bind_int64(st, 7, t);
    bool ok = sqlite3_step(st) == SQLITE_DONE;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    free(data);
    free(md);
    return ok;
}

static bool stream_put(sqlite3_stmt *st, const char *name, int64_t version, int64_t visible_from)
{
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, version);
    sqlite3_bind_int64(st, 3, visible_from);
    bool ok = sqlite3_step(st) == SQLITE_DONE;
    sqlite3_reset(st);
    return ok;
}

/* Applies an append inside the open transaction; false when SQLite failed. */
static bool apply_append(tr_eventstore_t *s, tr_es_write_t *w, int64_t t)
{
    stmts_t *st = &priv(s)->st;
    stream_state_t ss;
    if (!stream_get(st->w[W_STREAM_GET], w->stream, &ss)) return false;
    int r = w->ids_made ? 0 : check_repeat(st, w, ss.version);
    if (r == -2) return false;
    if (r != 0 || !check_expected(w, &ss)) return true;
    size_t n = json_array_size(w->events);
    int64_t v = ss.version + 1;
    sqlite3 *db = s->wdb;
    for (size_t i = 0; i < n; i++)
        if (!insert_event(st->w[W_INSERT], w->stream, v + (int64_t)i, json_array_get(w->events, i),
                          t))
            return false;
    /* A deleted stream starts again: what came before the delete stays hidden. */
    int64_t visible = ss.deleted ? v : ss.visible_from;
    if (!stream_put(st->w[W_STREAM_PUT], w->stream, v + (int64_t)n - 1, visible)) return false;
    w->first_version = v;
    w->last_version = v + (int64_t)n - 1;
    w->position = sqlite3_last_insert_rowid(db);
    w->current_version = w->last_version;
    w->status = 201;
    return true;
}

static bool apply_delete(tr_eventstore_t *s, tr_es_write_t *w)
{
    sqlite3_stmt *st = priv(s)->st.w[W_DELETE];
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, w->stream, -1, SQLITE_STATIC);
    bool ok = sqlite3_step(st) == SQLITE_DONE;
    sqlite3_reset(st);
    if (!ok) return false;
    if (sqlite3_changes(s->wdb) == 0)
        fail(w, 404, "stream '%s' has no events (or is already deleted)", w->stream);
    else
        w->status = 200;
    return true;
}

static bool apply_metadata(tr_eventstore_t *s, tr_es_write_t *w)
{
    sqlite3_stmt *st = priv(s)->st.w[W_META];
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, w->stream, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, w->max_age_ms);
    sqlite3_bind_int64(st, 3, w->max_count);
    bool ok = sqlite3_step(st) == SQLITE_DONE;
    sqlite3_reset(st);
    if (ok) w->status = 200;
    return ok;
}

/*
 * Runs one statement of a subscription op with `binds` ("t" text, "i" int64, in order) and
 * returns the rows it changed, or -1 when SQLite failed. These run a few times per delivered
 * event, not per appended one, so preparing each time is fine.
 */
static int sql_run(sqlite3 *db, const char *sql, const char *binds, ...)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return -1;
    va_list ap;
    va_start(ap, binds);
    for (int i = 0; binds[i]; i++) {
        if (binds[i] == 't')
            sqlite3_bind_text(st, i + 1, va_arg(ap, const char *), -1, SQLITE_STATIC);
        else
            sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
    }
    va_end(ap);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? sqlite3_changes(db) : -1;
}

#define SQL_CHECKPOINT "UPDATE subscriptions SET checkpoint = max(checkpoint, ?2) WHERE name = ?1"

static bool apply_sub_put(sqlite3 *db, tr_es_write_t *w)
{
    if (sql_run(db,
                "INSERT INTO subscriptions (name, definition, checkpoint) VALUES (?1, ?2,"
                " CASE WHEN ?3 >= 0 THEN ?3 ELSE (SELECT coalesce(max(position), 0) FROM events)"
                " END) ON CONFLICT (name) DO UPDATE SET definition = excluded.definition,"
                " checkpoint = excluded.checkpoint",
                "tti", w->stream, w->text, w->at) < 0)
        return false;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT checkpoint FROM subscriptions WHERE name = ?1", -1, &st,
                           NULL) != SQLITE_OK)
        return false;
    sqlite3_bind_text(st, 1, w->stream, -1, SQLITE_STATIC);
    bool ok = sqlite3_step(st) == SQLITE_ROW;
    if (ok) w->position = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    w->status = 201;
    return ok;
}

/* The subscription ops (outbox.c); false when SQLite failed. */
static bool apply_sub(sqlite3 *db, tr_es_write_t *w, int64_t t)
{
    int n = 0;
    w->status = 200;
    switch (w->op) {
    case TR_ES_OP_SUB_PUT:
        return apply_sub_put(db, w);
    case TR_ES_OP_SUB_DELETE:
        n = sql_run(db, "DELETE FROM dead_letters WHERE subscription = ?1", "t", w->stream);
        if (n >= 0) n = sql_run(db, "DELETE FROM subscriptions WHERE name = ?1", "t", w->stream);
        if (n == 0) w->status = 404;
        return n >= 0;
    case TR_ES_OP_SUB_CHECKPOINT:
        n = sql_run(db, SQL_CHECKPOINT, "ti", w->stream, w->at);
        if (n >= 0 && w->dead_letter_done)
            n = sql_run(db, "DELETE FROM dead_letters WHERE subscription = ?1 AND position = ?2",
                        "ti", w->stream, w->at);
        return n >= 0;
    case TR_ES_OP_SUB_DEAD:
        n = sql_run(db,
                    "INSERT INTO dead_letters (subscription, position, attempts, error, time)"
                    " VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (subscription, position) DO UPDATE"
                    " SET attempts = excluded.attempts, error = excluded.error,"
                    " time = excluded.time, retry = 0",
                    "tiiti", w->stream, w->at, w->attempts, w->text ? w->text : "", t);
        if (n >= 0) n = sql_run(db, SQL_CHECKPOINT, "ti", w->stream, w->at);
        return n >= 0;
    default:
        n = sql_run(db,
                    "UPDATE dead_letters SET retry = 1 WHERE subscription = ?1 AND position = ?2",
                    "ti", w->stream, w->at);
        if (n == 0) w->status = 404;
        return n >= 0;
    }
}

/*
 * Removes the events that stream metadata excludes — older than max_age, or all but the newest
 * max_count — which reads already skip; at most SCAVENGE_MAX per call (the next call goes
 * on). They leave $all too. The newest event of all stays, whatever its metadata: positions
 * are rowids, and SQLite gives the next one after the largest left, so removing the last
 * would hand its position to the next append, which subscribers past it would never see.
 * position: how many went.
 */
static bool apply_scavenge(tr_eventstore_t *s, tr_es_write_t *w, int64_t t)
{
    sqlite3 *db = s->wdb;
    sqlite3_stmt *list = NULL, *del = NULL;
    bool ok = sqlite3_prepare_v2(db,
                                 "SELECT name, version, max_age_ms, max_count FROM streams"
                                 " WHERE max_age_ms > 0 OR max_count > 0",
                                 -1, &list, NULL) == SQLITE_OK &&
              sqlite3_prepare_v2(db,
                                 "DELETE FROM events WHERE position IN (SELECT position FROM events"
                                 " WHERE stream = ?1 AND (version <= ?2 OR time < ?3)"
                                 " AND position < (SELECT max(position) FROM events) LIMIT ?4)",
                                 -1, &del, NULL) == SQLITE_OK;
    int64_t removed = 0;
    while (ok && removed < SCAVENGE_MAX && sqlite3_step(list) == SQLITE_ROW) {
        int64_t version = sqlite3_column_int64(list, 1), age = sqlite3_column_int64(list, 2);
        int64_t count = sqlite3_column_int64(list, 3);
        sqlite3_bind_text(del, 1, (const char *)sqlite3_column_text(list, 0), -1, SQLITE_STATIC);
        sqlite3_bind_int64(del, 2, count > 0 ? version - count : -1);
        sqlite3_bind_int64(del, 3, age > 0 ? t - age : 0);
        sqlite3_bind_int64(del, 4, SCAVENGE_MAX - removed);
        ok = sqlite3_step(del) == SQLITE_DONE;
        if (ok) removed += sqlite3_changes(db);
        sqlite3_reset(del);
    }
    sqlite3_finalize(list);
    sqlite3_finalize(del);
    w->position = removed;
    w->status = 200;
    return ok;
}

static bool apply(tr_eventstore_t *s, tr_es_write_t *w, int64_t t)
{
    w->status = 0;
    w->detail[0] = '\0';
    switch (w->op) {
    case TR_ES_OP_APPEND:
        return apply_append(s, w, t);
    case TR_ES_OP_DELETE:
        return apply_delete(s, w);
    case TR_ES_OP_METADATA:
        return apply_metadata(s, w);
    case TR_ES_OP_SCAVENGE:
        return apply_scavenge(s, w, t);
    default:
        return apply_sub(s->wdb, w, t);
    }
}

static void fail_all(tr_es_write_t *batch, const char *why)
{
    for (tr_es_write_t *w = batch; w; w = w->next)
        fail(w, 503, "the event store could not write: %s; nothing of this request was written",
             why);
}

/* Runs a group of writes as one transaction; returns the events written. */
static uint64_t commit_group(tr_eventstore_t *s, tr_es_write_t *batch)
{
    sqlite3 *db = s->wdb;
    uint64_t events = 0;
    int64_t t = now_ms();
    bool ok = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK;
    for (tr_es_write_t *w = batch; ok && w; w = w->next) {
        ok = apply(s, w, t);
        if (ok && w->op == TR_ES_OP_APPEND && w->status == 201)
            events += json_array_size(w->events);
    }
    if (ok) ok = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK;
    if (!ok) {
        char why[200];
        snprintf(why, sizeof(why), "%s", sqlite3_errmsg(db));
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        tr_log_error("event store commit failed", TR_LOG_STR("path", s->path),
                     TR_LOG_STR("reason", why));
        fail_all(batch, why);
        return 0;
    }
    return events;
}

/* Hands finished writes back (s->mu held): waiters, the loop, or the callback. */
static void finish_group(tr_eventstore_t *s, tr_es_write_t *batch)
{
    while (batch) {
        tr_es_write_t *w = batch;
        batch = w->next;
        w->next = NULL;
        if (w->waiter) {
            *(bool *)w->waiter = true;
        } else if (s->opts.loop) {
            if (s->done_tail)
                s->done_tail->next = w;
            else
                s->done = w;
            s->done_tail = w;
        } else {
            pthread_mutex_unlock(&s->mu);
            w->cb(w);
            pthread_mutex_lock(&s->mu);
        }
    }
    pthread_cond_broadcast(&priv(s)->done_cond);
}

static void *writer_main(void *arg)
{
    tr_eventstore_t *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->queue && !s->stop)
            pthread_cond_wait(&s->wake, &s->mu);
        if (!s->queue) break;
        tr_es_write_t *batch = s->queue;
        s->queue = s->queue_tail = NULL;
        pthread_mutex_unlock(&s->mu);
        uint64_t events = commit_group(s, batch);
        int64_t head = sqlite3_last_insert_rowid(s->wdb);
        pthread_mutex_lock(&s->mu);
        s->commits++;
        s->events += events;
        if (events && head > s->head) s->head = head;
        /* Only new events wake subscribers: a checkpoint commit must not wake the outbox
         * that made it. */
        if (events) s->committed = true;
        finish_group(s, batch);
        if (s->opts.loop) uv_async_send(&s->async);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void enqueue(tr_eventstore_t *s, tr_es_write_t *w)
{
    w->next = NULL;
    if (s->queue_tail)
        s->queue_tail->next = w;
    else
        s->queue = w;
    s->queue_tail = w;
    pthread_cond_signal(&s->wake);
}

void tr_eventstore_write(tr_eventstore_t *s, tr_es_write_t *w)
{
    w->waiter = NULL;
    w->next = NULL;
    if (s->opts.loop && !s->closing) {
        /* Held until the loop iteration's I/O is done (on_check): the writer then gets
         * every append that arrived together, and the group commit is larger. */
        if (s->pending_tail)
            s->pending_tail->next = w;
        else
            s->pending = w;
        s->pending_tail = w;
        return;
    }
    pthread_mutex_lock(&s->mu);
    enqueue(s, w);
    pthread_mutex_unlock(&s->mu);
}

static void on_check(uv_check_t *h)
{
    tr_eventstore_t *s = h->data;
    if (!s->pending) return;
    pthread_mutex_lock(&s->mu);
    if (s->queue_tail)
        s->queue_tail->next = s->pending;
    else
        s->queue = s->pending;
    s->queue_tail = s->pending_tail;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    s->pending = s->pending_tail = NULL;
}

void tr_eventstore_write_wait(tr_eventstore_t *s, tr_es_write_t *w)
{
    bool done = false;
    w->waiter = &done;
    pthread_mutex_lock(&s->mu);
    enqueue(s, w);
    /* The writer answers every queued write, even while stopping, so this ends. */
    while (!done)
        pthread_cond_wait(&priv(s)->done_cond, &s->mu);
    pthread_mutex_unlock(&s->mu);
    w->waiter = NULL;
}

/* ---- the loop side ---------------------------------------------------------------------- */

static void deliver_done(tr_eventstore_t *s, bool *committed)
{
    pthread_mutex_lock(&s->mu);
    tr_es_write_t *w = s->done;
    s->done = s->done_tail = NULL;
    *committed = s->committed;
    s->committed = false;
    pthread_mutex_unlock(&s->mu);
    while (w) {
        tr_es_write_t *next = w->next;
        w->next = NULL;
        w->cb(w);
        w = next;
    }
}

static void on_async(uv_async_t *h)
{
    tr_eventstore_t *s = h->data;
    bool committed;
    deliver_done(s, &committed);
    if (committed && !s->closing) {
        tr__eventstore_http_committed(s);
        tr__outbox_committed(s);
    }
}

/* ---- reads ------------------------------------------------------------------------------ */

static const char *col_text(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

static void row_event(sqlite3_stmt *st, tr_es_event_t *e)
{
    e->position = sqlite3_column_int64(st, 0);
    e->stream = col_text(st, 1);
    e->version = sqlite3_column_int64(st, 2);
    e->id = col_text(st, 3);
    e->type = col_text(st, 4);
    e->data = col_text(st, 5);
    e->metadata = col_text(st, 6);
    e->time_ms = sqlite3_column_int64(st, 7);
}

/*
 * Steps through a page; one row past the limit only tells where the next page starts. A page
 * also ends once it holds PAGE_MAX_BYTES of data and metadata (after its first event), so a
 * read, a long poll or an SSE subscriber's next page never holds more than about that.
 */
static int run_page(sqlite3_stmt *st, bool all, size_t limit, tr_es_event_cb cb, void *data,
                    tr_es_page_t *page)
{
    int rc;
    size_t bytes = 0;
    page->next = -1;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        tr_es_event_t e;
        row_event(st, &e);
        if (page->count == limit || (page->count > 0 && bytes >= PAGE_MAX_BYTES)) {
            page->next = all ? e.position : e.version;
            break;
        }
        bytes += (size_t)sqlite3_column_bytes(st, 5) + (size_t)sqlite3_column_bytes(st, 6);
        cb(&e, data);
        page->count++;
        page->last_read = all ? e.position : e.version;
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : TR_EIO;
}

typedef struct read_state_s {
    int64_t version, visible_from, max_age_ms, max_count;
    bool deleted;
} read_state_t;

static int read_stream_state(sqlite3_stmt *st, const char *name, bool *row, read_state_t *rs)
{
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    *row = rc == SQLITE_ROW;
    if (*row)
        *rs = (read_state_t){sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 2),
                             sqlite3_column_int64(st, 3), sqlite3_column_int64(st, 4),
                             sqlite3_column_int(st, 1) != 0};
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : TR_EIO;
}

static int read_stream(tr_eventstore_t *s, const tr_es_query_t *q, size_t limit, tr_es_event_cb cb,
                       void *data, tr_es_page_t *page)
{
    stmts_t *st = &priv(s)->st;
    bool row;
    read_state_t rs;
    int e = read_stream_state(st->r[R_STREAM], q->stream, &row, &rs);
    if (e || !row) return e;
    page->last_version = rs.version;
    if (rs.version < 0 || rs.deleted) return 0;
    page->found = true;
    /* Retention hides instead of deleting at once: versions keep counting. */
    int64_t lo = rs.visible_from;
    if (rs.max_count > 0 && rs.version - rs.max_count + 1 > lo) lo = rs.version - rs.max_count + 1;
    int64_t tmin = rs.max_age_ms > 0 ? now_ms() - rs.max_age_ms : INT64_MIN;
    sqlite3_stmt *sq = st->r[q->backward ? R_BACKWARD : R_FORWARD];
    sqlite3_bind_text(sq, 1, q->stream, -1, SQLITE_TRANSIENT);
    if (q->backward) {
        int64_t from = q->from < 0 || q->from > rs.version ? rs.version : q->from;
        sqlite3_bind_int64(sq, 2, from);
        sqlite3_bind_int64(sq, 3, lo);
        sqlite3_bind_int64(sq, 4, tmin);
        sqlite3_bind_int64(sq, 5, (int64_t)limit + 1);
    } else {
        sqlite3_bind_int64(sq, 2, q->from > lo ? q->from : lo);
        sqlite3_bind_int64(sq, 3, tmin);
        sqlite3_bind_int64(sq, 4, (int64_t)limit + 1);
    }
    return run_page(sq, false, limit, cb, data, page);
}

int tr_eventstore_read(tr_eventstore_t *s, const tr_es_query_t *q, tr_es_event_cb cb, void *data,
                       tr_es_page_t *page)
{
    size_t limit = q->limit ? q->limit : 100;
    if (limit > TR_ES_MAX_READ_LIMIT) limit = TR_ES_MAX_READ_LIMIT;
    *page =
        (tr_es_page_t){.found = q->stream == NULL, .last_version = -1, .next = -1, .last_read = -1};
    pthread_mutex_lock(&s->rmu);
    int e;
    if (q->stream) {
        e = read_stream(s, q, limit, cb, data, page);
    } else {
        sqlite3_stmt *sq = priv(s)->st.r[R_ALL];
        sqlite3_bind_int64(sq, 1, q->from > 0 ? q->from : 0);
        sqlite3_bind_int64(sq, 2, (int64_t)limit + 1);
        e = run_page(sq, true, limit, cb, data, page);
    }
    pthread_mutex_unlock(&s->rmu);
    return e;
}

int tr_eventstore_metadata(tr_eventstore_t *s, const char *stream, tr_es_meta_t *out)
{
    bool row;
    read_state_t rs;
    pthread_mutex_lock(&s->rmu);
    int e = read_stream_state(priv(s)->st.r[R_STREAM], stream, &row, &rs);
    pthread_mutex_unlock(&s->rmu);
    *out = (tr_es_meta_t){.found = row};
    if (row) out->max_age_ms = rs.max_age_ms, out->max_count = rs.max_count;
    return e;
}

static int load_rows(tr_eventstore_t *s, const char *sql, int (*row)(sqlite3_stmt *st, void *),
                     void *data)
{
    sqlite3_stmt *st;
    pthread_mutex_lock(&s->rmu);
    int rc = sqlite3_prepare_v2(s->rdb, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            row(st, data);
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->rmu);
    return rc == SQLITE_DONE ? 0 : TR_EIO;
}

typedef struct load_ctx_s {
    tr_es_subscription_cb sub_cb;
    tr_es_dead_letter_cb dead_cb;
    void *data;
} load_ctx_t;

static int on_sub_row(sqlite3_stmt *st, void *data)
{
    load_ctx_t *c = data;
    c->sub_cb(col_text(st, 0), col_text(st, 1), sqlite3_column_int64(st, 2), c->data);
    return 0;
}

static int on_dead_row(sqlite3_stmt *st, void *data)
{
    load_ctx_t *c = data;
    tr_es_dead_letter_t d = {.subscription = col_text(st, 0),
                             .position = sqlite3_column_int64(st, 1),
                             .attempts = sqlite3_column_int64(st, 2),
                             .error = col_text(st, 3),
                             .time_ms = sqlite3_column_int64(st, 4),
                             .retry = sqlite3_column_int(st, 5) != 0};
    c->dead_cb(&d, c->data);
    return 0;
}

int tr_eventstore_load_subscriptions(tr_eventstore_t *s, tr_es_subscription_cb sub_cb,
                                     tr_es_dead_letter_cb dead_cb, void *data)
{
    load_ctx_t c = {sub_cb, dead_cb, data};
    int e = load_rows(s, "SELECT name, definition, checkpoint FROM subscriptions ORDER BY name",
                      on_sub_row, &c);
    if (!e)
        e = load_rows(s,
                      "SELECT subscription, position, attempts, error, time, retry"
                      " FROM dead_letters ORDER BY subscription, position",
                      on_dead_row, &c);
    return e;
}

int64_t tr_eventstore_head(tr_eventstore_t *s)
{
    pthread_mutex_lock(&s->mu);
    int64_t h = s->head;
    pthread_mutex_unlock(&s->mu);
    return h;
}

void tr_eventstore_stats(tr_eventstore_t *s, uint64_t *commits, uint64_t *events)
{
    pthread_mutex_lock(&s->mu);
    if (commits) *commits = s->commits;
    if (events) *events = s->events;
    pthread_mutex_unlock(&s->mu);
}

void tr_eventstore_event_json(tr_buf_t *b, const tr_es_event_t *e)
{
    TR_JSONW_LIT(b, "{\"stream\":");
    tr_jsonw_cstr(b, e->stream);
    TR_JSONW_LIT(b, ",\"version\":");
    tr_jsonw_i64(b, e->version);
    TR_JSONW_LIT(b, ",\"position\":");
    tr_jsonw_i64(b, e->position);
    TR_JSONW_LIT(b, ",\"id\":");
    tr_jsonw_cstr(b, e->id);
    TR_JSONW_LIT(b, ",\"type\":");
    tr_jsonw_cstr(b, e->type);
    TR_JSONW_LIT(b, ",\"time\":");
    char time[TR_RFC3339_MS_LEN];
    tr_rfc3339_ms(e->time_ms, time);
    tr_jsonw_cstr(b, time);
    /* data and metadata were written by json_dumps: valid JSON, kept as it is. */
    TR_JSONW_LIT(b, ",\"data\":");
    tr_buf_append_str(b, e->data ? e->data : "null");
    if (e->metadata) {
        TR_JSONW_LIT(b, ",\"metadata\":");
        tr_buf_append_str(b, e->metadata);
    }
    tr_buf_append(b, "}", 1);
}

/* ---- input checks ----------------------------------------------------------------------- */

bool tr_eventstore_valid_stream(const char *name, size_t len)
{
    if (len == 0 || len > TR_ES_MAX_STREAM || name[0] == '$') return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f) return false;
    return true;
}

/* splitmix64: a fast generator for event ids, seeded per thread from getrandom. */
static uint64_t next_random(void)
{
    static __thread uint64_t state;
    static __thread bool seeded;
    if (!seeded) {
        if (getrandom(&state, sizeof(state), 0) != (ssize_t)sizeof(state))
            state = (uint64_t)now_ms() ^ (uint64_t)(uintptr_t)&state;
        seeded = true;
    }
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/*
 * A version 7 UUID (RFC 9562): 48 bits of Unix ms, then a per-thread counter, then random
 * bits. Ids made by the store sort by time, so the id index grows at its end instead of
 * taking a random page per event (random v4 ids made every insert dirty one more page:
 * measured 4 KiB of WAL per event).
 */
static void make_uuid(char out[37])
{
    static __thread uint32_t counter;
    uint64_t ms = (uint64_t)now_ms(), lo = next_random();
    unsigned seq = (counter++) & 0xfff;
    lo = (lo & ~(UINT64_C(0x3) << 62)) | (UINT64_C(0x2) << 62);
    snprintf(out, 37, "%08x-%04x-7%03x-%04x-%012llx", (unsigned)(ms >> 16), (unsigned)(ms & 0xffff),
             seq, (unsigned)(lo >> 48), (unsigned long long)(lo & UINT64_C(0xffffffffffff)));
}

/* Checks one event, giving it an id when it has none (*made true); 0 or 422 with the
 * reason. */
static int check_event(json_t *ev, size_t i, bool *made, char *detail, size_t len)
{
    if (!json_is_object(ev)) {
        snprintf(detail, len, "event %zu must be a JSON object with \"type\" and \"data\"", i);
        return 422;
    }
    json_t *type = json_object_get(ev, "type"), *id = json_object_get(ev, "id");
    json_t *meta = json_object_get(ev, "metadata");
    if (!json_is_string(type) || json_string_length(type) == 0 ||
        json_string_length(type) > TR_ES_MAX_STREAM) {
        snprintf(detail, len, "event %zu: \"type\" must be a non-empty string (at most %d bytes)",
                 i, TR_ES_MAX_STREAM);
        return 422;
    }
    if (meta && !json_is_object(meta) && !json_is_null(meta)) {
        snprintf(detail, len, "event %zu: \"metadata\" must be a JSON object", i);
        return 422;
    }
    if (json_is_null(meta)) json_object_del(ev, "metadata");
    if (id && !json_is_null(id) &&
        (!json_is_string(id) || json_string_length(id) == 0 ||
         json_string_length(id) > TR_ES_MAX_ID)) {
        snprintf(detail, len, "event %zu: \"id\" must be a non-empty string (at most %d bytes)", i,
                 TR_ES_MAX_ID);
        return 422;
    }
    *made = !id || json_is_null(id);
    if (*made) {
        char uuid[37];
        make_uuid(uuid);
        json_object_set_new(ev, "id", json_string(uuid));
    }
    return 0;
}

static bool duplicate_ids(json_t *events, size_t *at)
{
    size_t n = json_array_size(events);
    if (n < 2) return false;
    json_t *seen = json_object();
    bool dup = false;
    for (size_t i = 0; i < n && !dup; i++) {
        const char *id = json_string_value(json_object_get(json_array_get(events, i), "id"));
        if (json_object_get(seen, id)) dup = true, *at = i;
        json_object_set_new(seen, id, json_true());
    }
    json_decref(seen);
    return dup;
}

int tr_eventstore_check_events(json_t *body, json_t **events, char *detail, size_t len)
{
    bool ids_made;
    return tr_eventstore_check_append(body, events, &ids_made, detail, len);
}

int tr_eventstore_check_append(json_t *body, json_t **events, bool *ids_made, char *detail,
                               size_t len)
{
    json_t *arr;
    if (json_is_object(body)) {
        arr = json_array();
        json_array_append(arr, body);
    } else if (json_is_array(body)) {
        arr = json_incref(body);
    } else {
        snprintf(detail, len, "the body must be an event object or an array of events");
        return 400;
    }
    size_t n = json_array_size(arr), at;
    int st = 0;
    if (n == 0 || n > TR_ES_MAX_EVENTS) {
        snprintf(detail, len, "an append holds 1 to %d events; this one has %zu", TR_ES_MAX_EVENTS,
                 n);
        st = 422;
    }
    *ids_made = true;
    for (size_t i = 0; i < n && !st; i++) {
        bool made = false;
        st = check_event(json_array_get(arr, i), i, &made, detail, len);
        *ids_made = *ids_made && made;
    }
    if (!st && duplicate_ids(arr, &at)) {
        snprintf(detail, len, "event %zu repeats the id of an earlier event of this request", at);
        st = 422;
    }
    if (st) {
        json_decref(arr);
        return st;
    }
    *events = arr;
    return 0;
}
