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

/* Bytes in the database's pages in use (pages minus free pages, the WAL not counted); 0 on
 * error. */
uint64_t tr_sqlite_used_bytes(sqlite3 *db);

/*
 * Brings the file's schema (PRAGMA user_version) from its version to `n`, one migration
 * per transaction, logging each step under `store`. A file from a newer trellis is refused
 * (TR_ESTATE) rather than touched; a failed step is rolled back (TR_EIO). Errors name `path`.
 */
int tr_sqlite_migrate(sqlite3 *db, const char *path, const char *store,
                      const char *const *migrations, int n, char *err, size_t errlen);

/*
 * A checkpointer: a thread with its own connection that copies the WAL back into the
 * database (PASSIVE: it never waits for the writer or readers), so that neither the copy nor
 * its fsync runs on the writer's path — in trellis the writer is often a loop that serves
 * requests. Once the writer's WAL holds `pages` pages a checkpoint is asked for, at most one
 * per `gap_ms`. The writer's automatic checkpoints are turned off (its WAL hook is this
 * one's); at 4 × `pages` the writer checkpoints what is left itself, so that the WAL file
 * starts over (under steady writes it otherwise never would). Start it after the schema is
 * migrated; stop it before closing the writer.
 */
typedef struct tr_sqlite_checkpointer_s tr_sqlite_checkpointer_t;

#define TR_SQLITE_CKPT_PAGES  1000 /* WAL pages (4 MiB) that ask for a checkpoint: SQLite's own */
#define TR_SQLITE_CKPT_GAP_MS 200  /* between two checkpoints */

/* `pages` and `gap_ms` 0: the defaults above. */
int tr_sqlite_checkpointer_start(sqlite3 *writer, const char *path, int pages, unsigned gap_ms,
                                 tr_sqlite_checkpointer_t **out, char *err, size_t errlen);
/* Stops the thread (after a checkpoint in progress) and closes its connection; NULL is a
 * no-op. */
void tr_sqlite_checkpointer_stop(tr_sqlite_checkpointer_t *c);

/*
 * The name of the "trellis-walbuf" VFS (sqlite_walbuf.c), registered on first use; NULL if
 * SQLite has no unix VFS. It is the unix VFS with a commit's WAL frames written 64 KiB per
 * pwrite instead of two pwrites per page. Open a database's writer with it; other
 * connections may use the default VFS (they share its locks and WAL index).
 */
const char *tr_sqlite_walbuf_vfs(void);
/* Counters since start: WAL writes SQLite made, pwrites made of them, and those made by the
 * guard (a commit not recognised: 0 unless SQLite changed how it writes frames). */
void tr_sqlite_walbuf_stats(uint64_t *writes, uint64_t *flushes, uint64_t *late_flushes);

#endif
