/* The registry's SQLite database: schema, the global index, and transactions. */
#ifndef TR_REGISTRY_STORE_H
#define TR_REGISTRY_STORE_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tr_store_s tr_store_t;

/*
 * Opens (creating when missing) `path` in WAL mode with synchronous=NORMAL — a committed
 * write survives a crash or kill -9 of the process — and applies schema migrations. On
 * failure returns a negative error and writes "path: what is wrong" into err.
 */
int tr_store_open(const char *path, tr_store_t **out, char *err, size_t errlen);
void tr_store_close(tr_store_t *st);
sqlite3 *tr_store_db(tr_store_t *st);

/*
 * Returns the cached prepared statement for `sql` (prepared on first use), reset and with
 * its bindings cleared, or NULL (logged) when it does not compile. The store owns it;
 * `sql` must be a string that lives as long as the store (a literal). Reset it after use.
 */
sqlite3_stmt *tr_store_stmt(tr_store_t *st, const char *sql);

/*
 * The registry-wide modification index (Consul's Raft index): every write takes the next
 * one. It is persisted with the write that uses it, so it stays monotonic across restarts.
 */
uint64_t tr_store_index(const tr_store_t *st);

/* Begins a write transaction and reserves the next index (returned in *index). */
int tr_store_begin(tr_store_t *st, uint64_t *index);
/* Commits: the reserved index becomes current. Returns 0 or TR_EIO (and rolls back). */
int tr_store_commit(tr_store_t *st);
void tr_store_rollback(tr_store_t *st);

#endif
