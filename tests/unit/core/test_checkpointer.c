/* Unit tests for the SQLite checkpointer: under steady writes the WAL is copied back into the
 * database and its file stays bounded (two faults it had: checkpoints that did nothing on a
 * connection that had not read the database, and a WAL that never started over). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/sqlite.h"

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : 0;
}

typedef struct fixture_s {
    char dir[32], path[128], wal[140];
    sqlite3 *db;
    sqlite3_stmt *ins;
    tr_sqlite_checkpointer_t *c;
} fixture_t;

static void open_db(fixture_t *f, unsigned gap_ms)
{
    char err[256] = "";
    snprintf(f->dir, sizeof(f->dir), "/tmp/trellis-ckpt-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/t.db", f->dir);
    snprintf(f->wal, sizeof(f->wal), "%s-wal", f->path);
    assert_int_equal(sqlite3_open(f->path, &f->db), SQLITE_OK);
    assert_int_equal(tr_sqlite_exec(f->db,
                                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                                    " CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
                                    err, sizeof(err), f->path),
                     0);
    /* 16 pages ask the thread for a checkpoint; past 64 the writer finishes one itself. */
    assert_int_equal(
        tr_sqlite_checkpointer_start(f->db, f->path, 16, gap_ms, &f->c, err, sizeof(err)), 0);
    assert_int_equal(sqlite3_prepare_v2(f->db, "INSERT INTO t (v) VALUES (?)", -1, &f->ins, NULL),
                     SQLITE_OK);
}

/* One transaction of two 2 KiB rows (about two pages); the WAL's size after it. */
static off_t write_txn(fixture_t *f)
{
    static char value[2048];
    if (!value[0]) memset(value, 'v', sizeof(value) - 1);
    sqlite3_exec(f->db, "BEGIN", NULL, NULL, NULL);
    for (int i = 0; i < 2; i++) {
        sqlite3_bind_text(f->ins, 1, value, -1, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(f->ins), SQLITE_DONE);
        sqlite3_reset(f->ins);
    }
    assert_int_equal(sqlite3_exec(f->db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    return file_size(f->wal);
}

static void close_db(fixture_t *f)
{
    sqlite3_finalize(f->ins);
    tr_sqlite_checkpointer_stop(f->c);
    sqlite3_close(f->db);
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
}

/* Under steady writes the WAL file starts over: the writer finishes a checkpoint itself past
 * 4 x the threshold. The thread waits a minute between its checkpoints here, so the bound
 * does not depend on how the two are scheduled. */
static void test_wal_starts_over(void **state)
{
    (void)state;
    fixture_t f;
    open_db(&f, 60000);
    off_t half = 0, end = 0;
    for (int txn = 0; txn < 4000; txn++) { /* ~16 MiB of rows */
        off_t w = write_txn(&f);
        if (w > end) end = w;
        if (txn == 1999) half = end;
    }
    off_t dbsize = file_size(f.path);
    close_db(&f);
    /* The file keeps its largest size (it is reused from its start), so an early lapse (a
     * checkpoint of the thread holding the lock as the writer wants it) shows; what must not
     * happen is growth with the volume written: without the fix, 8 MiB at half, 16 at the end. */
    if (end > half + (256 << 10) || end > (4 << 20))
        fail_msg("the WAL grew: %lld bytes at half, %lld at the end", (long long)half,
                 (long long)end);
    if (dbsize < (8 << 20))
        fail_msg("the database holds %lld bytes: the WAL was not copied back", (long long)dbsize);
}

/* The thread's own checkpoints copy the WAL back (its connection must know the database is
 * in WAL mode: it once did nothing). Below the writer's own threshold, only the thread can. */
static void test_thread_copies(void **state)
{
    (void)state;
    fixture_t f;
    open_db(&f, 1);
    off_t before = file_size(f.path);
    for (int txn = 0; txn < 12; txn++) /* ~24 pages: over 16, under 64 */
        write_txn(&f);
    off_t after = before;
    for (int i = 0; i < 400 && after <= before + 16 * 4096; i++) { /* 4 s at most */
        usleep(10000);
        after = file_size(f.path);
    }
    close_db(&f);
    if (after <= before + 16 * 4096)
        fail_msg("the database stayed at %lld bytes: the thread copied nothing", (long long)after);
}

static void test_bad_path(void **state)
{
    (void)state;
    sqlite3 *db;
    char err[256] = "";
    assert_int_equal(sqlite3_open(":memory:", &db), SQLITE_OK);
    tr_sqlite_checkpointer_t *c = NULL;
    assert_int_not_equal(
        tr_sqlite_checkpointer_start(db, "/nonexistent-dir/x.db", 16, 1, &c, err, sizeof(err)), 0);
    assert_null(c);
    assert_non_null(strstr(err, "/nonexistent-dir/x.db"));
    tr_sqlite_checkpointer_stop(NULL); /* a no-op */
    sqlite3_close(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wal_starts_over),
        cmocka_unit_test(test_thread_copies),
        cmocka_unit_test(test_bad_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
