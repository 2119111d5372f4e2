/* The registry's SQLite database: schema migrations, the global index, transactions. */
#include "registry/store.h"

#include "core/sqlite.h"

#include "core/mem.h"
#include "trellis/error.h"
#include "trellis/log.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Statements prepared once and reused: a registry issues the same few SQL texts forever. */
#define STMT_CACHE_MAX 64

/*
 * Schema versions, one entry per migration, applied in order inside one transaction each;
 * PRAGMA user_version records how many ran. Never edit a released entry: append a new one
 * (later slices add services and checks this way).
 */
static const char *const migrations[] = {
    /* 1: the index, KV entries and KV tombstones. */
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    /* Starts at 1, the index an empty store reports, so the first write (2) is news to
       a watcher that blocked on it. */
    "INSERT INTO meta (key, value) VALUES ('index', 1);"
    "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB, flags INTEGER NOT NULL DEFAULT 0,"
    " create_index INTEGER NOT NULL, modify_index INTEGER NOT NULL,"
    " lock_index INTEGER NOT NULL DEFAULT 0, session TEXT NULL);"
    "CREATE TABLE kv_tombstones (key TEXT PRIMARY KEY, idx INTEGER NOT NULL);",
    /* 2: catalog services, their checks (with last status) and per-service tombstones. */
    "CREATE TABLE catalog_services (id TEXT PRIMARY KEY, name TEXT NOT NULL,"
    " body TEXT NOT NULL, create_index INTEGER NOT NULL, modify_index INTEGER NOT NULL);"
    "CREATE TABLE catalog_checks (id TEXT PRIMARY KEY, service_id TEXT NULL,"
    " body TEXT NOT NULL, status TEXT NOT NULL, output TEXT NOT NULL,"
    " create_index INTEGER NOT NULL, modify_index INTEGER NOT NULL);"
    "CREATE TABLE catalog_tombstones (name TEXT PRIMARY KEY, idx INTEGER NOT NULL);",
    /* 3: sessions (their JSON as served) for KV locks. */
    "CREATE TABLE sessions (id TEXT PRIMARY KEY, node TEXT NOT NULL, body TEXT NOT NULL,"
    " create_index INTEGER NOT NULL, modify_index INTEGER NOT NULL);",
    /* 4: nodes registered through /v1/catalog/register (not this agent), with their services
     * and checks as one JSON document. */
    "CREATE TABLE catalog_nodes (name TEXT PRIMARY KEY, body TEXT NOT NULL,"
    " create_index INTEGER NOT NULL, modify_index INTEGER NOT NULL);",
};

#define NMIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

typedef struct cached_stmt_s {
    const char *sql; /* the caller's string: compared by pointer first, then by text */
    sqlite3_stmt *stmt;
} cached_stmt_t;

struct tr_store_s {
    sqlite3 *db;
    tr_sqlite_checkpointer_t *ckpt; /* WAL checkpoints off the loop the store writes on */
    uint64_t index;                 /* last committed */
    uint64_t pending;               /* reserved by the open transaction; 0 when none is open */
    cached_stmt_t stmts[STMT_CACHE_MAX];
    int nstmts;
};

/* Brings the schema to the newest version, one migration per transaction. */
static int migrate(sqlite3 *db, const char *path, char *err, size_t errlen)
{
    return tr_sqlite_migrate(db, path, "registry", migrations, NMIGRATIONS, err, errlen);
}

static int load_index(tr_store_t *st, const char *path, char *err, size_t errlen)
{
    sqlite3_stmt *s = tr_store_stmt(st, "SELECT value FROM meta WHERE key = 'index'");
    if (!s || sqlite3_step(s) != SQLITE_ROW) {
        snprintf(err, errlen, "%s: the meta table has no index row: %s", path,
                 sqlite3_errmsg(st->db));
        if (s) sqlite3_reset(s);
        return TR_EIO;
    }
    st->index = (uint64_t)sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    return 0;
}

/*
 * WAL with synchronous=NORMAL: a commit is durable against a process crash (the WAL is
 * written before COMMIT returns) without an fsync per write; only power loss can lose the
 * last commits. The busy timeout covers a backup tool or CLI reading the same file.
 */
static int configure(sqlite3 *db, const char *path, char *err, size_t errlen)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &s, NULL) != SQLITE_OK ||
        sqlite3_step(s) != SQLITE_ROW ||
        strcmp((const char *)sqlite3_column_text(s, 0), "wal") != 0) {
        snprintf(err, errlen, "%s: cannot enable WAL mode: %s", path, sqlite3_errmsg(db));
        sqlite3_finalize(s);
        return TR_EIO;
    }
    sqlite3_finalize(s);
    sqlite3_busy_timeout(db, 5000);
    return tr_sqlite_exec(db, "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;", err, errlen,
                          path);
}

int tr_store_open(const char *path, tr_store_t **out, char *err, size_t errlen)
{
    *out = NULL;
    sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &db, flags, NULL) != SQLITE_OK) {
        snprintf(err, errlen,
                 "%s: cannot open: %s (check the data directory exists and is "
                 "writable)",
                 path, db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return TR_EIO;
    }
    int rc = configure(db, path, err, errlen);
    if (rc == 0) rc = migrate(db, path, err, errlen);
    if (rc < 0) {
        sqlite3_close(db);
        return rc;
    }
    tr_store_t *st = tr_calloc(1, sizeof(*st));
    st->db = db;
    rc = load_index(st, path, err, errlen);
    if (rc == 0) rc = tr_sqlite_checkpointer_start(db, path, 0, 0, &st->ckpt, err, errlen);
    if (rc < 0) {
        tr_store_close(st);
        return rc;
    }
    *out = st;
    return 0;
}

void tr_store_close(tr_store_t *st)
{
    if (!st) return;
    if (st->pending) tr_store_rollback(st);
    tr_sqlite_checkpointer_stop(st->ckpt);
    for (int i = 0; i < st->nstmts; i++)
        sqlite3_finalize(st->stmts[i].stmt);
    sqlite3_close(st->db);
    free(st);
}

sqlite3 *tr_store_db(tr_store_t *st)
{
    return st->db;
}

uint64_t tr_store_index(const tr_store_t *st)
{
    return st->index;
}

sqlite3_stmt *tr_store_stmt(tr_store_t *st, const char *sql)
{
    for (int i = 0; i < st->nstmts; i++) {
        cached_stmt_t *c = &st->stmts[i];
        if (c->sql == sql || strcmp(c->sql, sql) == 0) {
            sqlite3_reset(c->stmt);
            sqlite3_clear_bindings(c->stmt);
            return c->stmt;
        }
    }
    sqlite3_stmt *s;
    if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, NULL) != SQLITE_OK) {
        tr_log_error("registry statement failed to prepare", TR_LOG_STR("sql", sql),
                     TR_LOG_STR("reason", sqlite3_errmsg(st->db)));
        return NULL;
    }
    /* A full cache still works, just without reuse; the SQL texts are a fixed set. */
    if (st->nstmts == STMT_CACHE_MAX) {
        tr_log_warn("registry statement cache full", TR_LOG_STR("sql", sql));
        return s;
    }
    st->stmts[st->nstmts++] = (cached_stmt_t){sql, s};
    return s;
}

int tr_store_begin(tr_store_t *st, uint64_t *index)
{
    if (st->pending) return TR_ESTATE;
    if (sqlite3_exec(st->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        tr_log_error("registry transaction failed to begin",
                     TR_LOG_STR("reason", sqlite3_errmsg(st->db)));
        return TR_EIO;
    }
    st->pending = st->index + 1;
    /* The index is written in the same transaction as the change that uses it, so after a
     * restart it can never fall below an index a client has already seen. */
    sqlite3_stmt *s = tr_store_stmt(st, "UPDATE meta SET value = ?1 WHERE key = 'index'");
    if (s) sqlite3_bind_int64(s, 1, (sqlite3_int64)st->pending);
    if (!s || sqlite3_step(s) != SQLITE_DONE) {
        tr_log_error("registry index failed to update",
                     TR_LOG_STR("reason", sqlite3_errmsg(st->db)));
        tr_store_rollback(st);
        return TR_EIO;
    }
    *index = st->pending;
    return 0;
}

int tr_store_commit(tr_store_t *st)
{
    if (!st->pending) return TR_ESTATE;
    if (sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        tr_log_error("registry transaction failed to commit",
                     TR_LOG_STR("reason", sqlite3_errmsg(st->db)));
        tr_store_rollback(st);
        return TR_EIO;
    }
    st->index = st->pending;
    st->pending = 0;
    return 0;
}

void tr_store_rollback(tr_store_t *st)
{
    if (!st->pending) return;
    st->pending = 0;
    /* Statements left mid-step would keep the rollback from releasing their locks. */
    for (int i = 0; i < st->nstmts; i++)
        sqlite3_reset(st->stmts[i].stmt);
    if (sqlite3_get_autocommit(st->db)) return; /* SQLite already rolled back */
    sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
}
