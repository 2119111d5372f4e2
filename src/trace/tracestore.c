/* The collector's trace store: bounded in-memory index, SQLite persistence and retention. */
#include "trace/tracestore.h"

#include "core/map.h"
#include "core/mem.h"
#include "core/sqlite.h"
#include "trace/idmap.h"
#include "trellis/error.h"
#include "trellis/log.h"
#include "trellis/trace.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAX_SPANS       1000000
#define DEFAULT_MAX_TRACE_SPANS 10000
#define MAX_PENDING_CHILDREN    100000
#define MAX_EDGES               100000

/* Rows deleted per retention step, so one sweep never holds the loop for long. */
#define SWEEP_CHUNK 20000

static const char *const migrations[] = {
    /* 1: spans, one row each, in arrival order (rowid); recv_ms never decreases with rowid,
     * which is what lets retention find its cut without an index. */
    "CREATE TABLE spans (trace_id BLOB NOT NULL, span_id BLOB NOT NULL, parent_id BLOB,"
    " service TEXT NOT NULL, name TEXT NOT NULL, kind INTEGER NOT NULL,"
    " start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, status INTEGER NOT NULL,"
    " error INTEGER NOT NULL, correlation_id TEXT NOT NULL, status_message TEXT NOT NULL,"
    " recv_ms INTEGER NOT NULL, detail TEXT NOT NULL);"
    "CREATE INDEX spans_trace ON spans (trace_id);",
    /* 2: trace lookups go through an integer key, 8 bytes of the trace id (see trace_tkey):
     * its index is half the size of one on the 16-byte blob and cheaper to insert into.
     * Queries compare the full id too. */
    "ALTER TABLE spans ADD COLUMN tkey INTEGER NOT NULL DEFAULT 0;"
    "UPDATE spans SET tkey = tr_tkey(trace_id);"
    "DROP INDEX spans_trace;"
    "CREATE INDEX spans_tkey ON spans (tkey);",
};
#define NMIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

#define SPAN_COLUMNS                                                                               \
    "trace_id, span_id, parent_id, service, name, kind, start_ns, end_ns, status, error,"          \
    " correlation_id, status_message, recv_ms, detail"

/* ST_INSERT and ST_LOAD run on the writer's connection, the others on the reader's. */
enum { ST_INSERT, ST_BY_TRACE, ST_LOAD, ST_COUNT, NSTMTS };
static const char *const stmt_sql[NSTMTS] = {
    "INSERT INTO spans (" SPAN_COLUMNS
    ", tkey) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15)",
    "SELECT " SPAN_COLUMNS " FROM spans WHERE tkey = ?1 AND trace_id = ?2 ORDER BY rowid LIMIT ?3",
    "SELECT " SPAN_COLUMNS " FROM spans WHERE rowid > ?1 ORDER BY rowid",
    "SELECT count(*) FROM spans",
};

struct tr_tracestore_s {
    tr_tracestore_options_t o;
    /* The writer's connection: tr_tracestore_write and tr_tracestore_sweep_db, on whatever
     * thread runs them (the collector's: a thread-pool thread, one write at a time). */
    sqlite3 *db;
    /* The reader's: lookups and stats on the loop, which never wait for a write (WAL). */
    sqlite3 *rdb;
    /* WAL checkpoints on a thread of their own, so that neither the copy nor its fsync
     * lands on the writer. */
    tr_sqlite_checkpointer_t *ckpt;
    sqlite3_stmt *stmts[NSTMTS];
    tr_idmap_t traces; /* hash(trace_id) → tr_trace_t */
    tr_idmap_t spans;  /* hash(trace_id, span_id) → tr_cspan_t */
    tr_trace_t *oldest, *newest;
    size_t ntraces, nspans;
    tr_map_t services; /* name → the interned name */
    tr_deps_t *deps;
    uint64_t last_recv_ms;
};

/* ---- SQLite */

static int db_exec(tr_tracestore_t *st, const char *sql, char *err, size_t errlen)
{
    return tr_sqlite_exec(st->db, sql, err, errlen, st->o.path);
}

static int64_t db_int(tr_tracestore_t *st, const char *sql)
{
    return tr_sqlite_int(st->db, sql);
}

/*
 * The trace key: the low 8 bytes of a trace id, big-endian, as a signed integer. They are
 * the random part of a W3C id and the whole of a 64-bit Zipkin id (kept left-padded).
 */
static int64_t trace_tkey(const uint8_t id[16])
{
    uint64_t k = 0;
    for (int i = 8; i < 16; i++)
        k = k << 8 | id[i];
    return (int64_t)k;
}

/* tr_tkey(trace_id) for the migration that fills the column in rows stored before it. */
static void sql_tkey(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    const uint8_t *id = sqlite3_value_blob(argv[0]);
    sqlite3_result_int64(ctx, id && sqlite3_value_bytes(argv[0]) == 16 ? trace_tkey(id) : 0);
}

static int db_migrate(tr_tracestore_t *st, char *err, size_t errlen)
{
    return tr_sqlite_migrate(st->db, st->o.path, "traces", migrations, NMIGRATIONS, err, errlen);
}

/*
 * WAL with synchronous=NORMAL, as the registry: a committed batch survives a process crash
 * without an fsync per request. auto_vacuum=INCREMENTAL (only effective on a new file) lets
 * size retention give pages back to the file system.
 */
static int db_open(tr_tracestore_t *st, char *err, size_t errlen)
{
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(st->o.path, &st->db, flags, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: cannot open: %s (check the data directory is writable)",
                 st->o.path, st->db ? sqlite3_errmsg(st->db) : "out of memory");
        return TR_EIO;
    }
    sqlite3_busy_timeout(st->db, 5000);
    int rc = db_exec(st,
                     "PRAGMA auto_vacuum=INCREMENTAL; PRAGMA journal_mode=WAL;"
                     " PRAGMA synchronous=NORMAL;",
                     err, errlen);
    if (rc == 0 && sqlite3_create_function(st->db, "tr_tkey", 1,
                                           SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS,
                                           NULL, sql_tkey, NULL, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", st->o.path, sqlite3_errmsg(st->db));
        rc = TR_EIO;
    }
    if (rc == 0) rc = db_migrate(st, err, errlen);
    if (rc == 0 &&
        sqlite3_open_v2(st->o.path, &st->rdb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
            SQLITE_OK) {
        snprintf(err, errlen, "%s: cannot open: %s", st->o.path,
                 st->rdb ? sqlite3_errmsg(st->rdb) : "out of memory");
        rc = TR_EIO;
    }
    if (rc == 0) sqlite3_busy_timeout(st->rdb, 5000);
    for (int i = 0; rc == 0 && i < NSTMTS; i++) {
        sqlite3 *conn = i == ST_INSERT || i == ST_LOAD ? st->db : st->rdb;
        if (sqlite3_prepare_v3(conn, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &st->stmts[i],
                               NULL) != SQLITE_OK) {
            snprintf(err, errlen, "%s: %s", st->o.path, sqlite3_errmsg(conn));
            rc = TR_EIO;
        }
    }
    if (rc == 0)
        rc = tr_sqlite_checkpointer_start(st->db, st->o.path, 0, 0, &st->ckpt, err, errlen);
    return rc;
}

static sqlite3_stmt *stmt(tr_tracestore_t *st, int which)
{
    sqlite3_stmt *s = st->stmts[which];
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return s;
}

static bool db_insert(tr_tracestore_t *st, const tr_cspan_t *sp)
{
    sqlite3_stmt *s = stmt(st, ST_INSERT);
    sqlite3_bind_blob(s, 1, sp->trace_id, 16, SQLITE_STATIC);
    sqlite3_bind_blob(s, 2, sp->span_id, 8, SQLITE_STATIC);
    if (!tr__id_is_zero(sp->parent_id, 8)) sqlite3_bind_blob(s, 3, sp->parent_id, 8, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, sp->service, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 5, sp->name, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 6, sp->kind);
    sqlite3_bind_int64(s, 7, (sqlite3_int64)sp->start_ns);
    sqlite3_bind_int64(s, 8, (sqlite3_int64)sp->end_ns);
    sqlite3_bind_int(s, 9, sp->status);
    sqlite3_bind_int(s, 10, sp->error);
    sqlite3_bind_text(s, 11, sp->correlation_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 12, sp->status_message, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 13, (sqlite3_int64)sp->recv_ms);
    sqlite3_bind_text(s, 14, sp->detail, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 15, trace_tkey(sp->trace_id));
    bool ok = sqlite3_step(s) == SQLITE_DONE;
    sqlite3_reset(s);
    return ok;
}

static void copy_blob(sqlite3_stmt *s, int col, uint8_t *out, int n)
{
    memset(out, 0, (size_t)n);
    if (sqlite3_column_bytes(s, col) == n) memcpy(out, sqlite3_column_blob(s, col), (size_t)n);
}

static tr_cspan_t *row_span(sqlite3_stmt *s)
{
    tr_cspan_t f;
    memset(&f, 0, sizeof(f));
    copy_blob(s, 0, f.trace_id, 16);
    copy_blob(s, 1, f.span_id, 8);
    copy_blob(s, 2, f.parent_id, 8);
    f.kind = (uint8_t)sqlite3_column_int(s, 5);
    f.start_ns = (uint64_t)sqlite3_column_int64(s, 6);
    f.end_ns = (uint64_t)sqlite3_column_int64(s, 7);
    f.status = (uint8_t)sqlite3_column_int(s, 8);
    f.error = sqlite3_column_int(s, 9) != 0;
    f.recv_ms = (uint64_t)sqlite3_column_int64(s, 12);
    return tr__cspan_new(
        &f, (const char *)sqlite3_column_text(s, 3), (const char *)sqlite3_column_text(s, 4),
        (const char *)sqlite3_column_text(s, 10), (const char *)sqlite3_column_text(s, 11),
        (const char *)sqlite3_column_text(s, 13));
}

/* ---- memory index */

static uint64_t trace_key(const uint8_t id[16])
{
    return tr__idmap_hash(id, 16, NULL, 0);
}

static uint64_t span_key(const uint8_t trace_id[16], const uint8_t span_id[8])
{
    return tr__idmap_hash(trace_id, 16, span_id, 8);
}

static tr_trace_t *trace_get(tr_tracestore_t *st, const uint8_t id[16])
{
    size_t pos = 0;
    tr_trace_t *t;
    while ((t = tr__idmap_next(&st->traces, trace_key(id), &pos)))
        if (!memcmp(t->trace_id, id, 16)) return t;
    return NULL;
}

static void lru_unlink(tr_tracestore_t *st, tr_trace_t *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        st->oldest = t->next;
    if (t->next)
        t->next->prev = t->prev;
    else
        st->newest = t->prev;
    t->prev = t->next = NULL;
}

static void lru_append(tr_tracestore_t *st, tr_trace_t *t)
{
    t->prev = st->newest;
    t->next = NULL;
    if (st->newest)
        st->newest->next = t;
    else
        st->oldest = t;
    st->newest = t;
}

static tr_trace_t *trace_new(const uint8_t id[16])
{
    tr_trace_t *t = tr_calloc(1, sizeof(*t));
    memcpy(t->trace_id, id, 16);
    t->start_ns = UINT64_MAX;
    return t;
}

void tr_tracestore_trace_free(tr_trace_t *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->n; i++)
        tr__cspan_free(t->spans[i]);
    free(t->spans);
    free(t);
}

static void trace_add(tr_trace_t *t, tr_cspan_t *sp)
{
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 4;
        t->spans = tr_realloc(t->spans, t->cap * sizeof(*t->spans));
    }
    t->spans[t->n++] = sp;
    if (sp->start_ns < t->start_ns) t->start_ns = sp->start_ns;
    if (sp->end_ns > t->end_ns) t->end_ns = sp->end_ns;
    if (sp->error) t->error = true;
    if (sp->recv_ms > t->last_recv_ms) t->last_recv_ms = sp->recv_ms;
}

static void evict(tr_tracestore_t *st, tr_trace_t *t)
{
    lru_unlink(st, t);
    tr__idmap_del(&st->traces, trace_key(t->trace_id), t);
    for (size_t i = 0; i < t->n; i++)
        tr__idmap_del(&st->spans, span_key(t->trace_id, t->spans[i]->span_id), t->spans[i]);
    st->nspans -= t->n;
    st->ntraces--;
    tr_tracestore_trace_free(t);
}

static const char *intern(tr_tracestore_t *st, const char *service)
{
    const char *s = tr_map_get(&st->services, service);
    if (s) return s;
    char *copy = tr_strdup(service);
    tr_map_put(&st->services, copy, copy);
    return copy;
}

/* The span with this id in the memory index; the SERVER half of a shared span first. */
static tr_cspan_t *span_get(tr_tracestore_t *st, const uint8_t trace_id[16], const uint8_t id[8])
{
    size_t pos = 0;
    tr_cspan_t *sp, *found = NULL;
    uint64_t key = span_key(trace_id, id);
    while ((sp = tr__idmap_next(&st->spans, key, &pos))) {
        if (memcmp(sp->trace_id, trace_id, 16) || memcmp(sp->span_id, id, 8)) continue;
        /* Ids repeat (retries, resent batches): stop at the first SERVER, not the last. */
        if (sp->kind == TR_SPAN_SERVER) return sp;
        if (!found) found = sp;
    }
    return found;
}

/*
 * Dependency counting for one arriving span. Zipkin's shared spans (a SERVER span reusing
 * its CLIENT's id) link client → server; every other span links its parent's service to
 * its own, now or — when the parent is still to come — once the parent arrives.
 */
static void observe_deps(tr_tracestore_t *st, const tr_cspan_t *sp, const char *service)
{
    tr_cspan_t *twin = span_get(st, sp->trace_id, sp->span_id);
    if (twin && twin->kind == TR_SPAN_CLIENT && sp->kind == TR_SPAN_SERVER) {
        tr_deps_link(st->deps, twin->service, service, sp->error);
        return;
    }
    if (!tr__id_is_zero(sp->parent_id, 8)) {
        tr_cspan_t *parent = span_get(st, sp->trace_id, sp->parent_id);
        if (parent)
            tr_deps_link(st->deps, parent->service, service, sp->error);
        else
            tr_deps_pend(st->deps, sp->trace_id, sp->parent_id, service, sp->error);
    }
    if (!twin) tr_deps_resolve(st->deps, sp->trace_id, sp->span_id, service);
}

static void index_span(tr_tracestore_t *st, tr_trace_t *t, tr_cspan_t *sp)
{
    const char *service = intern(st, sp->service);
    observe_deps(st, sp, service);
    trace_add(t, sp);
    tr__idmap_put(&st->spans, span_key(sp->trace_id, sp->span_id), sp);
    st->nspans++;
}

static tr_trace_t *trace_touch(tr_tracestore_t *st, const uint8_t id[16])
{
    tr_trace_t *t = trace_get(st, id);
    if (!t) {
        t = trace_new(id);
        tr__idmap_put(&st->traces, trace_key(id), t);
        st->ntraces++;
        lru_append(st, t);
    } else if (t != st->newest) {
        lru_unlink(st, t);
        lru_append(st, t);
    }
    return t;
}

static void enforce_memory_bound(tr_tracestore_t *st, const tr_trace_t *keep)
{
    while (st->nspans > st->o.max_spans && st->oldest && st->oldest != keep)
        evict(st, st->oldest);
}

/* ---- open / close */

static int load_recent(tr_tracestore_t *st, char *err, size_t errlen)
{
    int64_t max = db_int(st, "SELECT coalesce(max(rowid), 0) FROM spans");
    sqlite3_stmt *s = stmt(st, ST_LOAD);
    sqlite3_bind_int64(s, 1, max - (int64_t)st->o.max_spans);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        tr_cspan_t *sp = row_span(s);
        tr_trace_t *t = trace_touch(st, sp->trace_id);
        if (sp->recv_ms > st->last_recv_ms) st->last_recv_ms = sp->recv_ms;
        if (t->n >= st->o.max_trace_spans) {
            tr__cspan_free(sp);
            continue;
        }
        index_span(st, t, sp);
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "%s: cannot read spans: %s", st->o.path, sqlite3_errmsg(st->db));
        return TR_EIO;
    }
    enforce_memory_bound(st, NULL);
    return 0;
}

int tr_tracestore_open(const tr_tracestore_options_t *opts, tr_tracestore_t **out, char *err,
                       size_t errlen)
{
    tr_tracestore_t *st = tr_calloc(1, sizeof(*st));
    st->o = *opts;
    if (!st->o.max_spans) st->o.max_spans = DEFAULT_MAX_SPANS;
    if (!st->o.max_trace_spans) st->o.max_trace_spans = DEFAULT_MAX_TRACE_SPANS;
    if (st->o.path) st->o.path = tr_strdup(st->o.path);
    st->deps = tr_deps_new(MAX_PENDING_CHILDREN, MAX_EDGES);
    int rc = 0;
    if (st->o.path) {
        rc = db_open(st, err, errlen);
        if (rc == 0) rc = load_recent(st, err, errlen);
    }
    if (rc) {
        tr_tracestore_close(st);
        *out = NULL;
        return rc;
    }
    *out = st;
    return 0;
}

void tr_tracestore_close(tr_tracestore_t *st)
{
    if (!st) return;
    while (st->oldest)
        evict(st, st->oldest);
    tr__idmap_free(&st->traces);
    tr__idmap_free(&st->spans);
    size_t pos = 0;
    const char *key;
    void *value;
    while (tr_map_next(&st->services, &pos, &key, &value))
        free(value);
    tr_map_free(&st->services);
    tr_deps_free(st->deps);
    tr_sqlite_checkpointer_stop(st->ckpt);
    for (int i = 0; i < NSTMTS; i++)
        sqlite3_finalize(st->stmts[i]);
    if (st->rdb) sqlite3_close(st->rdb);
    if (st->db) sqlite3_close(st->db);
    free((char *)st->o.path);
    free(st);
}

/* ---- append */

struct tr_tracestore_admitted_s {
    tr_span_batch_t *b;
    size_t n;     /* spans in b when admitted */
    bool *accept; /* per span: within its trace's limit */
};

tr_tracestore_admitted_t *tr_tracestore_admit(tr_tracestore_t *st, tr_span_batch_t *b,
                                              uint64_t now_ms)
{
    /* Arrival times never go backwards, whatever the clock does: retention relies on it. */
    if (now_ms < st->last_recv_ms) now_ms = st->last_recv_ms;
    st->last_recv_ms = now_ms;
    tr_tracestore_admitted_t *a = tr_malloc(sizeof(*a) + (b->n ? b->n : 1) * sizeof(bool));
    a->b = b;
    a->n = b->n;
    a->accept = (bool *)(a + 1);
    for (size_t i = 0; i < b->n; i++) {
        tr_cspan_t *sp = b->spans[i];
        sp->recv_ms = now_ms;
        tr_trace_t *t = trace_touch(st, sp->trace_id);
        /* `incoming` counts spans admitted but not settled yet, of every batch in flight. */
        a->accept[i] = t->n + t->incoming < st->o.max_trace_spans;
        if (a->accept[i]) t->incoming++;
    }
    return a;
}

int tr_tracestore_write(tr_tracestore_t *st, tr_tracestore_admitted_t *const *a, size_t n)
{
    if (!st->db) return 0;
    if (sqlite3_exec(st->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) goto fail;
    for (size_t k = 0; k < n; k++)
        for (size_t i = 0; i < a[k]->n; i++)
            if (a[k]->accept[i] && !db_insert(st, a[k]->b->spans[i])) goto fail;
    if (sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK) return 0;
fail:
    tr_log_error("trace store write failed", TR_LOG_STR("path", st->o.path),
                 TR_LOG_STR("reason", sqlite3_errmsg(st->db)));
    sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    return TR_EIO;
}

void tr_tracestore_settle(tr_tracestore_t *st, tr_tracestore_admitted_t *a, int rc)
{
    tr_span_batch_t *b = a->b;
    size_t kept = 0, dropped = 0;
    for (size_t i = 0; i < a->n; i++) {
        tr_cspan_t *sp = b->spans[i];
        /* Looked up again: a trace may have been evicted while its spans were written. */
        tr_trace_t *t = trace_get(st, sp->trace_id);
        if (a->accept[i] && t && t->incoming) t->incoming--;
        if (rc == 0 && a->accept[i]) {
            if (!t) t = trace_touch(st, sp->trace_id);
            index_span(st, t, sp);
            continue;
        }
        if (rc == 0) dropped++;
        b->spans[kept++] = sp;
    }
    b->n = kept;
    /* Traces made for spans that could not be stored hold nothing: forget them. */
    for (size_t i = 0; i < kept; i++) {
        tr_trace_t *t = trace_get(st, b->spans[i]->trace_id);
        if (t && t->n == 0 && t->incoming == 0) evict(st, t);
    }
    if (dropped) {
        char hex[33];
        tr__hex_encode(b->spans[0]->trace_id, 16, hex);
        tr__span_batch_reject(b, "trace %s already has %zu spans, the most kept per trace", hex,
                              st->o.max_trace_spans);
        b->rejected += dropped - 1;
    }
    enforce_memory_bound(st, NULL);
    free(a);
}

bool tr_tracestore_persistent(const tr_tracestore_t *st)
{
    return st->db != NULL;
}

int tr_tracestore_append(tr_tracestore_t *st, tr_span_batch_t *b, uint64_t now_ms)
{
    tr_tracestore_admitted_t *a = tr_tracestore_admit(st, b, now_ms);
    int rc = tr_tracestore_write(st, &a, 1);
    tr_tracestore_settle(st, a, rc);
    return rc;
}

/* ---- queries */

int tr_tracestore_find(tr_tracestore_t *st, const uint8_t id[16], tr_trace_t **out, bool *owned)
{
    tr_trace_t *t = trace_get(st, id);
    *owned = false;
    if (t && t->n) {
        *out = t;
        return 0;
    }
    if (!st->rdb) return TR_ENOTFOUND;
    sqlite3_stmt *s = stmt(st, ST_BY_TRACE);
    sqlite3_bind_int64(s, 1, trace_tkey(id));
    sqlite3_bind_blob(s, 2, id, 16, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 3, (sqlite3_int64)st->o.max_trace_spans);
    t = trace_new(id);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW)
        trace_add(t, row_span(s));
    sqlite3_reset(s);
    if (rc != SQLITE_DONE || !t->n) {
        tr_tracestore_trace_free(t);
        return rc != SQLITE_DONE ? TR_EIO : TR_ENOTFOUND;
    }
    *out = t;
    *owned = true;
    return 0;
}

const tr_cspan_t *tr_tracestore_span(tr_tracestore_t *st, const tr_trace_t *t, const uint8_t id[8])
{
    if (trace_get(st, t->trace_id) == t) return span_get(st, t->trace_id, id);
    const tr_cspan_t *found = NULL;
    for (size_t i = 0; i < t->n; i++)
        if (!memcmp(t->spans[i]->span_id, id, 8) && (!found || t->spans[i]->kind == TR_SPAN_SERVER))
            found = t->spans[i];
    return found;
}

const tr_cspan_t *tr_tracestore_root(tr_tracestore_t *st, const tr_trace_t *t)
{
    const tr_cspan_t *root = NULL;
    bool indexed = trace_get(st, t->trace_id) == t;
    for (size_t i = 0; i < t->n; i++) {
        const tr_cspan_t *sp = t->spans[i];
        bool has_parent = !tr__id_is_zero(sp->parent_id, 8) &&
                          (indexed ? span_get(st, t->trace_id, sp->parent_id) != NULL
                                   : tr_tracestore_span(st, t, sp->parent_id) != NULL);
        if (has_parent) continue;
        if (!root || sp->start_ns < root->start_ns) root = sp;
    }
    return root ? root : (t->n ? t->spans[0] : NULL);
}

static bool span_matches(const tr_cspan_t *sp, const tr_trace_query_t *q)
{
    if (q->service && strcmp(sp->service, q->service)) return false;
    if (q->operation && strcmp(sp->name, q->operation)) return false;
    if (q->correlation_id && strcmp(sp->correlation_id, q->correlation_id)) return false;
    return true;
}

static bool trace_matches(const tr_trace_t *t, const tr_trace_query_t *q)
{
    if (!t->n) return false;
    if (q->error >= 0 && t->error != (q->error == 1)) return false;
    if (q->start_ns && t->start_ns < q->start_ns) return false;
    if (q->end_ns && t->start_ns > q->end_ns) return false;
    if (q->min_duration_ns && t->end_ns - t->start_ns < q->min_duration_ns) return false;
    if (!q->service && !q->operation && !q->correlation_id) return true;
    for (size_t i = 0; i < t->n; i++)
        if (span_matches(t->spans[i], q)) return true;
    return false;
}

static int cmp_start_desc(const void *a, const void *b)
{
    const tr_trace_t *x = *(tr_trace_t *const *)a, *y = *(tr_trace_t *const *)b;
    return x->start_ns < y->start_ns ? 1 : x->start_ns > y->start_ns ? -1 : 0;
}

size_t tr_tracestore_query(tr_tracestore_t *st, const tr_trace_query_t *q, tr_trace_t ***out)
{
    size_t n = 0, cap = 64;
    tr_trace_t **v = tr_malloc(cap * sizeof(*v));
    for (tr_trace_t *t = st->newest; t; t = t->prev) {
        if (!trace_matches(t, q)) continue;
        if (n == cap) v = tr_realloc(v, (cap *= 2) * sizeof(*v));
        v[n++] = t;
    }
    qsort(v, n, sizeof(*v), cmp_start_desc);
    if (q->limit && n > q->limit) n = q->limit;
    *out = v;
    return n;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

size_t tr_tracestore_services(tr_tracestore_t *st, const char ***out)
{
    *out = tr_malloc((st->services.len ? st->services.len : 1) * sizeof(**out));
    size_t pos = 0, n = 0;
    const char *key;
    void *value;
    while (tr_map_next(&st->services, &pos, &key, &value))
        (*out)[n++] = key;
    qsort(*out, n, sizeof(**out), cmp_str);
    return n;
}

tr_deps_t *tr_tracestore_deps(tr_tracestore_t *st)
{
    return st->deps;
}

/* ---- retention */

/* Deletes up to SWEEP_CHUNK of the oldest rows that arrived before `cutoff_ms`. */
static void sweep_age(tr_tracestore_t *st, uint64_t cutoff_ms)
{
    char sql[320];
    snprintf(sql, sizeof(sql),
             "DELETE FROM spans WHERE rowid < min("
             " coalesce((SELECT rowid FROM spans WHERE recv_ms >= %llu ORDER BY rowid LIMIT 1),"
             "  (SELECT max(rowid) + 1 FROM spans)),"
             " (SELECT min(rowid) FROM spans) + %d)",
             (unsigned long long)cutoff_ms, SWEEP_CHUNK);
    if (sqlite3_exec(st->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        tr_log_warn("trace retention failed", TR_LOG_STR("reason", sqlite3_errmsg(st->db)));
}

/* Over the size limit, the oldest tenth of the rows goes, a few rounds at most per sweep. */
static void sweep_size(tr_tracestore_t *st)
{
    for (int round = 0; round < 4 && tr_sqlite_used_bytes(st->db) > st->o.max_db_bytes; round++) {
        int64_t rows = db_int(st, "SELECT count(*) FROM spans");
        if (rows <= 0) break;
        char sql[160];
        snprintf(sql, sizeof(sql),
                 "DELETE FROM spans WHERE rowid < (SELECT min(rowid) FROM spans) + %lld",
                 (long long)(rows / 10 + 1));
        if (sqlite3_exec(st->db, sql, NULL, NULL, NULL) != SQLITE_OK) break;
    }
}

static uint64_t retention_cutoff(const tr_tracestore_t *st, uint64_t now_ms)
{
    return st->o.retention_ms && now_ms > st->o.retention_ms ? now_ms - st->o.retention_ms : 0;
}

void tr_tracestore_sweep_memory(tr_tracestore_t *st, uint64_t now_ms)
{
    uint64_t cutoff = retention_cutoff(st, now_ms);
    if (!cutoff) return;
    /* A trace with spans still on their way to SQLite stays until they are settled. */
    while (st->oldest && st->oldest->last_recv_ms < cutoff && !st->oldest->incoming)
        evict(st, st->oldest);
}

void tr_tracestore_sweep_db(tr_tracestore_t *st, uint64_t now_ms)
{
    if (!st->db) return;
    uint64_t cutoff = retention_cutoff(st, now_ms);
    if (cutoff) sweep_age(st, cutoff);
    if (st->o.max_db_bytes) sweep_size(st);
    sqlite3_exec(st->db, "PRAGMA incremental_vacuum", NULL, NULL, NULL);
}

void tr_tracestore_sweep(tr_tracestore_t *st, uint64_t now_ms)
{
    tr_tracestore_sweep_memory(st, now_ms);
    tr_tracestore_sweep_db(st, now_ms);
}

void tr_tracestore_stats(tr_tracestore_t *st, tr_tracestore_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    out->traces = st->ntraces;
    out->spans = st->nspans;
    if (!st->rdb) return;
    sqlite3_stmt *s = stmt(st, ST_COUNT);
    if (sqlite3_step(s) == SQLITE_ROW) out->db_spans = (uint64_t)sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    out->db_bytes = tr_sqlite_used_bytes(st->rdb);
}
