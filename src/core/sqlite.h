/* SQLite helpers every store shares (registry, trace store, log store). */
#ifndef TR_CORE_SQLITE_H
#define TR_CORE_SQLITE_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

/* Runs `sql`; on failure writes "path: reason" to err and returns TR_EIO. */
int tr_sqlite_exec(sqlite3 *db, const char *sql, char *err, size_t errlen, const char *path);

/* The first column of the first row of `sql` (a PRAGMA or a count); -1 on error. */
int64_t tr_sqlite_int(sqlite3 *db, const char *sql);

/*
 * Brings the file's schema (PRAGMA user_version) from its version to `n`, one migration
 * per transaction, logging each step under `store`. A file from a newer trellis is refused
 * (TR_ESTATE) rather than touched; a failed step is rolled back (TR_EIO). Errors name `path`.
 */
int tr_sqlite_migrate(sqlite3 *db, const char *path, const char *store,
                      const char *const *migrations, int n, char *err, size_t errlen);

#endif
