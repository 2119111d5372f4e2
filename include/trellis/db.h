/*
 * A service's own SQLite database: migrations applied once in order, prepared statements
 * cached by their SQL text, and rows as JSON. One handle belongs to one thread (the app's
 * loop). WAL mode with synchronous=NORMAL: a committed write survives a process crash, and
 * point reads and writes take microseconds, so handlers may call these on the loop.
 */
#ifndef TRELLIS_DB_H
#define TRELLIS_DB_H

#include <jansson.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tr_db_s tr_db_t;

/*
 * Opens (creating it and its directory when missing) the database at `path` and applies
 * the scripts of `migrations` (NULL-terminated; may be NULL) not applied yet: script i is
 * version i+1, recorded in PRAGMA user_version, each in its own transaction. Returns 0 and
 * stores the handle in *out, or TR_EIO with the reason in err (errlen bytes).
 */
int tr_db_open(const char *path, const char *const *migrations, tr_db_t **out, char *err,
               size_t errlen);
/* Finalizes every cached statement and closes the database. NULL is fine. */
void tr_db_close(tr_db_t *db);
sqlite3 *tr_db_handle(tr_db_t *db);

/*
 * Argument types for the calls below, one letter per `?` of the SQL:
 *   's' const char * (NULL binds NULL), 'i' int64_t, 'd' double, 'n' NULL (no argument),
 *   'j' const json_t * bound as its JSON text (NULL binds NULL).
 */

/*
 * Runs a statement that returns no rows. Returns the number of rows changed (>= 0), or
 * TR_EEXISTS for a UNIQUE/PRIMARY KEY violation, TR_ESTATE for another constraint
 * (CHECK, FOREIGN KEY, NOT NULL), TR_EIO for anything else (logged with the SQL).
 */
int tr_db_run(tr_db_t *db, const char *sql, const char *types, ...);
/* The id of the row the last INSERT made. */
int64_t tr_db_last_id(tr_db_t *db);
/*
 * Runs a query and returns its first row as a JSON object keyed by column name (new
 * reference), or NULL when there is none or it failed (*err, may be NULL: 0 or TR_EIO).
 * Integer columns become integers, REAL reals, TEXT strings, NULL null; a TEXT column whose
 * name ends in "_json" is parsed back into JSON and keyed without the suffix
 * ("tags_json" → "tags").
 */
json_t *tr_db_row(tr_db_t *db, int *err, const char *sql, const char *types, ...);
/* Like tr_db_row, but every row, as a JSON array (empty when none; NULL only on error). */
json_t *tr_db_rows(tr_db_t *db, int *err, const char *sql, const char *types, ...);
/* Runs a query returning one integer (COUNT(*), a sum); `fallback` when no row or NULL. */
int64_t tr_db_int(tr_db_t *db, int64_t fallback, const char *sql, const char *types, ...);

/* Transactions (BEGIN IMMEDIATE / COMMIT / ROLLBACK). Return 0 or TR_EIO. */
int tr_db_begin(tr_db_t *db);
int tr_db_commit(tr_db_t *db);
int tr_db_rollback(tr_db_t *db);

/*
 * The cached prepared statement for `sql` (prepared on first use, reset and unbound on each
 * later one), for what the helpers above do not cover. Borrowed: do not finalize it.
 * Returns NULL (logged) when the SQL does not compile.
 */
sqlite3_stmt *tr_db_prepare(tr_db_t *db, const char *sql);

#endif
