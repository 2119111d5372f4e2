#include "core/sqlite.h"

#include "trellis/error.h"
#include "trellis/log.h"

#include "core/mem.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int tr_sqlite_exec(sqlite3 *db, const char *sql, char *err, size_t errlen, const char *path)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK) return 0;
    snprintf(err, errlen, "%s: %s", path, msg ? msg : sqlite3_errmsg(db));
    sqlite3_free(msg);
    return TR_EIO;
}

int64_t tr_sqlite_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *s;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) return -1;
    if (sqlite3_step(s) == SQLITE_ROW) v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

uint64_t tr_sqlite_used_bytes(sqlite3 *db)
{
    int64_t pages = tr_sqlite_int(db, "PRAGMA page_count");
    int64_t free_pages = tr_sqlite_int(db, "PRAGMA freelist_count");
    int64_t size = tr_sqlite_int(db, "PRAGMA page_size");
    if (pages < 0 || free_pages < 0 || size < 0) return 0;
    return (uint64_t)(pages - free_pages) * (uint64_t)size;
}

int tr_sqlite_migrate(sqlite3 *db, const char *path, const char *store,
                      const char *const *migrations, int n, char *err, size_t errlen)
{
    int64_t version = tr_sqlite_int(db, "PRAGMA user_version");
    if (version < 0) {
        snprintf(err, errlen, "%s: cannot read the schema version: %s", path, sqlite3_errmsg(db));
        return TR_EIO;
    }
    if (version > n) {
        snprintf(err, errlen,
                 "%s: schema version %lld is newer than this trellis knows (%d); "
                 "run a newer trellis or use another data directory",
                 path, (long long)version, n);
        return TR_ESTATE;
    }
    for (int v = (int)version; v < n; v++) {
        char bump[64];
        snprintf(bump, sizeof(bump), "PRAGMA user_version = %d;", v + 1);
        if (tr_sqlite_exec(db, "BEGIN IMMEDIATE", err, errlen, path) < 0) return TR_EIO;
        /* Another process (a second replica) may have migrated while this one waited for
         * the write lock: go on from the version the file has now. */
        int64_t now = tr_sqlite_int(db, "PRAGMA user_version");
        if (now > v) {
            if (tr_sqlite_exec(db, "COMMIT", err, errlen, path) < 0) return TR_EIO;
            v = (int)now - 1;
            continue;
        }
        if (tr_sqlite_exec(db, migrations[v], err, errlen, path) < 0 ||
            tr_sqlite_exec(db, bump, err, errlen, path) < 0 ||
            tr_sqlite_exec(db, "COMMIT", err, errlen, path) < 0) {
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            return TR_EIO;
        }
        tr_log_info("schema migrated", TR_LOG_STR("store", store), TR_LOG_STR("path", path),
                    TR_LOG_INT("version", v + 1));
    }
    return 0;
}

/* ---- the checkpointer ---- */

#define RESTART_FACTOR 4

struct tr_sqlite_checkpointer_s {
    sqlite3 *writer, *db;
    int pages;
    unsigned gap_ms;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool wanted, stop;
};

/*
 * The writer's WAL hook, after each of its commits (on the writer's thread): cheap, except
 * when the WAL is long. The thread's checkpoints copy the WAL while the writer appends more,
 * so under steady writes the WAL is never found wholly copied when the writer begins, and
 * only then does SQLite start the WAL file over: it would grow without end (measured: 588 MB
 * in 4 s). Past RESTART_FACTOR times the threshold the writer checkpoints itself, as SQLite's
 * own automatic checkpoint does: most frames are copied already, so it copies the few left
 * and syncs once, and its next transaction starts the WAL over.
 */
static int on_wal(void *arg, sqlite3 *db, const char *name, int pages)
{
    (void)name;
    tr_sqlite_checkpointer_t *c = arg;
    if (pages >= c->pages * RESTART_FACTOR) {
        sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        return SQLITE_OK;
    }
    if (pages < c->pages) return SQLITE_OK;
    pthread_mutex_lock(&c->mu);
    if (!c->wanted) {
        c->wanted = true;
        pthread_cond_signal(&c->cond);
    }
    pthread_mutex_unlock(&c->mu);
    return SQLITE_OK;
}

static void after_ms(struct timespec *ts, unsigned ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) ts->tv_sec++, ts->tv_nsec -= 1000000000;
}

static void *checkpointer_main(void *arg)
{
    tr_sqlite_checkpointer_t *c = arg;
    pthread_mutex_lock(&c->mu);
    while (!c->stop) {
        struct timespec until;
        after_ms(&until, 1000);
        if (!c->wanted) pthread_cond_timedwait(&c->cond, &c->mu, &until);
        if (!c->wanted || c->stop) continue;
        c->wanted = false;
        pthread_mutex_unlock(&c->mu);
        /* What it cannot copy now (readers on old snapshots) it copies the next time. */
        sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        pthread_mutex_lock(&c->mu);
        /* A gap between checkpoints: one after every commit would be two fsyncs each. */
        after_ms(&until, c->gap_ms);
        while (!c->stop && pthread_cond_timedwait(&c->cond, &c->mu, &until) == 0)
            ;
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

int tr_sqlite_checkpointer_start(sqlite3 *writer, const char *path, int pages, unsigned gap_ms,
                                 tr_sqlite_checkpointer_t **out, char *err, size_t errlen)
{
    tr_sqlite_checkpointer_t *c = tr_calloc(1, sizeof(*c));
    c->writer = writer;
    c->pages = pages > 0 ? pages : TR_SQLITE_CKPT_PAGES;
    c->gap_ms = gap_ms ? gap_ms : TR_SQLITE_CKPT_GAP_MS;
    if (sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(err, errlen, "%s: cannot open for checkpoints: %s", path,
                 c->db ? sqlite3_errmsg(c->db) : "out of memory");
        sqlite3_close(c->db);
        free(c);
        return TR_EIO;
    }
    sqlite3_busy_timeout(c->db, 5000);
    /* A connection that never read the database does not know it is in WAL mode: its
     * checkpoints would do nothing (measured: a 588 MB WAL). Reading the schema opens it. */
    if (sqlite3_exec(c->db, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: cannot read for checkpoints: %s", path, sqlite3_errmsg(c->db));
        sqlite3_close(c->db);
        free(c);
        return TR_EIO;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cond, NULL);
    if (pthread_create(&c->thread, NULL, checkpointer_main, c)) {
        snprintf(err, errlen, "%s: cannot start the checkpoint thread", path);
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->cond);
        sqlite3_close(c->db);
        free(c);
        return TR_EIO;
    }
    sqlite3_wal_hook(writer, on_wal, c);
    *out = c;
    return 0;
}

void tr_sqlite_checkpointer_stop(tr_sqlite_checkpointer_t *c)
{
    if (!c) return;
    sqlite3_wal_hook(c->writer, NULL, NULL);
    pthread_mutex_lock(&c->mu);
    c->stop = true;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cond);
    sqlite3_close(c->db);
    free(c);
}
