/* A service's own SQLite database: migrations, cached statements, rows as JSON. */
#include "trellis/db.h"

#include "core/fs.h"
#include "core/map.h"
#include "core/mem.h"
#include "core/sqlite.h"
#include "trellis/error.h"
#include "trellis/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

struct tr_db_s {
    sqlite3 *db;
    char *path;
    tr_map_t stmts; /* SQL text → sqlite3_stmt */
};

int tr_db_open(const char *path, const char *const *migrations, tr_db_t **out, char *err,
               size_t errlen)
{
    *out = NULL;
    if (!path || !*path) {
        snprintf(err, errlen, "database: no path given");
        return TR_EIO;
    }
    int mk = tr_mkdirs_parent(path);
    if (mk) {
        snprintf(err, errlen, "%s: cannot create its directory: %s", path, tr_strerror(mk));
        return TR_EIO;
    }
    tr_db_t *db = tr_calloc(1, sizeof(*db));
    db->path = tr_strdup(path);
    if (sqlite3_open_v2(path, &db->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(db->db));
        tr_db_close(db);
        return TR_EIO;
    }
    sqlite3_busy_timeout(db->db, 5000);
    int n = 0;
    while (migrations && migrations[n])
        n++;
    int rc = tr_sqlite_exec(db->db,
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                            "PRAGMA foreign_keys=ON;",
                            err, errlen, path);
    if (!rc) rc = tr_sqlite_migrate(db->db, path, "app", migrations, n, err, errlen);
    if (rc) {
        tr_db_close(db);
        return TR_EIO;
    }
    *out = db;
    return 0;
}

void tr_db_close(tr_db_t *db)
{
    if (!db) return;
    size_t pos = 0;
    const char *sql;
    void *st;
    while (tr_map_next(&db->stmts, &pos, &sql, &st))
        sqlite3_finalize(st);
    tr_map_free(&db->stmts);
    sqlite3_close(db->db);
    free(db->path);
    free(db);
}

sqlite3 *tr_db_handle(tr_db_t *db)
{
    return db->db;
}

sqlite3_stmt *tr_db_prepare(tr_db_t *db, const char *sql)
{
    sqlite3_stmt *st = tr_map_get(&db->stmts, sql);
    if (st) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        return st;
    }
    if (sqlite3_prepare_v3(db->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
        tr_log_error("db: statement does not compile", TR_LOG_STR("sql", sql),
                     TR_LOG_STR("reason", sqlite3_errmsg(db->db)));
        return NULL;
    }
    tr_map_put(&db->stmts, sqlite3_sql(st), st); /* the key lives as long as the statement */
    return st;
}

/* Binds the arguments described by `types`; false (logged) for an unknown letter. */
static bool bind_args(sqlite3_stmt *st, const char *types, va_list ap)
{
    for (int i = 0; types && types[i]; i++) {
        int at = i + 1;
        switch (types[i]) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (s)
                sqlite3_bind_text(st, at, s, -1, SQLITE_TRANSIENT);
            else
                sqlite3_bind_null(st, at);
            break;
        }
        case 'i':
            sqlite3_bind_int64(st, at, va_arg(ap, int64_t));
            break;
        case 'd':
            sqlite3_bind_double(st, at, va_arg(ap, double));
            break;
        case 'n':
            sqlite3_bind_null(st, at);
            break;
        case 'j': {
            const json_t *j = va_arg(ap, const json_t *);
            char *text = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
            if (text)
                sqlite3_bind_text(st, at, text, -1, free);
            else
                sqlite3_bind_null(st, at);
            break;
        }
        default:
            tr_log_error("db: unknown argument type", TR_LOG_INT("position", at));
            return false;
        }
    }
    return true;
}

static sqlite3_stmt *start(tr_db_t *db, const char *sql, const char *types, va_list ap)
{
    sqlite3_stmt *st = tr_db_prepare(db, sql);
    if (st && !bind_args(st, types, ap)) return NULL;
    return st;
}

static void log_failure(tr_db_t *db, const char *sql)
{
    tr_log_error("db: statement failed", TR_LOG_STR("sql", sql),
                 TR_LOG_STR("reason", sqlite3_errmsg(db->db)), TR_LOG_STR("db", db->path));
}

int tr_db_run(tr_db_t *db, const char *sql, const char *types, ...)
{
    va_list ap;
    va_start(ap, types);
    sqlite3_stmt *st = start(db, sql, types, ap);
    va_end(ap);
    if (!st) return TR_EIO;
    int rc = sqlite3_step(st);
    while (rc == SQLITE_ROW)
        rc = sqlite3_step(st);
    int ext = sqlite3_extended_errcode(db->db);
    sqlite3_reset(st);
    if (rc == SQLITE_DONE) return sqlite3_changes(db->db);
    if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY) return TR_EEXISTS;
    if (rc == SQLITE_CONSTRAINT) return TR_ESTATE;
    log_failure(db, sql);
    return TR_EIO;
}

int64_t tr_db_last_id(tr_db_t *db)
{
    return sqlite3_last_insert_rowid(db->db);
}

static bool ends_with_json(const char *name)
{
    size_t n = strlen(name);
    return n > 5 && !strcmp(name + n - 5, "_json");
}

/* The current row of `st` as an object keyed by column name. */
static json_t *row_object(sqlite3_stmt *st)
{
    json_t *o = json_object();
    int n = sqlite3_column_count(st);
    for (int i = 0; i < n; i++) {
        const char *name = sqlite3_column_name(st, i);
        json_t *v;
        switch (sqlite3_column_type(st, i)) {
        case SQLITE_INTEGER:
            v = json_integer(sqlite3_column_int64(st, i));
            break;
        case SQLITE_FLOAT:
            v = json_real(sqlite3_column_double(st, i));
            break;
        case SQLITE_NULL:
            v = json_null();
            break;
        default: {
            const char *text = (const char *)sqlite3_column_text(st, i);
            int len = sqlite3_column_bytes(st, i);
            v = ends_with_json(name) ? json_loadb(text, (size_t)len, JSON_DECODE_ANY, NULL) : NULL;
            if (v) {
                char *plain = tr_strndup(name, strlen(name) - 5);
                json_object_set_new(o, plain, v);
                free(plain);
                continue;
            }
            v = json_stringn(text ? text : "", (size_t)len);
        }
        }
        json_object_set_new(o, name, v ? v : json_null());
    }
    return o;
}

/* Steps through the rows: every one into an array (all) or the first alone. */
static json_t *collect(tr_db_t *db, sqlite3_stmt *st, const char *sql, bool all, int *err)
{
    json_t *out = all ? json_array() : NULL;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!all) {
            out = row_object(st);
            rc = SQLITE_DONE;
            break;
        }
        json_array_append_new(out, row_object(st));
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        log_failure(db, sql);
        json_decref(out);
        if (err) *err = TR_EIO;
        return NULL;
    }
    if (err) *err = 0;
    return out;
}

static json_t *query(tr_db_t *db, int *err, const char *sql, const char *types, bool all,
                     va_list ap)
{
    sqlite3_stmt *st = start(db, sql, types, ap);
    if (!st) {
        if (err) *err = TR_EIO;
        return NULL;
    }
    return collect(db, st, sql, all, err);
}

json_t *tr_db_row(tr_db_t *db, int *err, const char *sql, const char *types, ...)
{
    va_list ap;
    va_start(ap, types);
    json_t *row = query(db, err, sql, types, false, ap);
    va_end(ap);
    return row;
}

json_t *tr_db_rows(tr_db_t *db, int *err, const char *sql, const char *types, ...)
{
    va_list ap;
    va_start(ap, types);
    json_t *rows = query(db, err, sql, types, true, ap);
    va_end(ap);
    return rows;
}

int64_t tr_db_int(tr_db_t *db, int64_t fallback, const char *sql, const char *types, ...)
{
    va_list ap;
    va_start(ap, types);
    sqlite3_stmt *st = start(db, sql, types, ap);
    va_end(ap);
    if (!st) return fallback;
    int64_t v = fallback;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        v = sqlite3_column_int64(st, 0);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) log_failure(db, sql);
    sqlite3_reset(st);
    return v;
}

static int exec_simple(tr_db_t *db, const char *sql)
{
    char err[256];
    int rc = tr_sqlite_exec(db->db, sql, err, sizeof(err), db->path);
    if (rc) tr_log_error("db: transaction statement failed", TR_LOG_STR("reason", err));
    return rc;
}

int tr_db_begin(tr_db_t *db)
{
    return exec_simple(db, "BEGIN IMMEDIATE");
}

int tr_db_commit(tr_db_t *db)
{
    return exec_simple(db, "COMMIT");
}

int tr_db_rollback(tr_db_t *db)
{
    return exec_simple(db, "ROLLBACK");
}
