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

static void test_wal_stays_bounded(void **state)
{
    (void)state;
    char dir[] = "/tmp/trellis-ckpt-XXXXXX", path[128], wal[140], err[256] = "";
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/t.db", dir);
    snprintf(wal, sizeof(wal), "%s-wal", path);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(tr_sqlite_exec(db,
                                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                                    " CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
                                    err, sizeof(err), path),
                     0);
    tr_sqlite_checkpointer_t *c;
    /* 16 pages ask for a checkpoint (at most one per 200 ms, as the stores run it); past 64
     * the writer finishes one itself. */
    assert_int_equal(tr_sqlite_checkpointer_start(db, path, 16, 200, &c, err, sizeof(err)), 0);
    char value[2048];
    memset(value, 'v', sizeof(value) - 1);
    value[sizeof(value) - 1] = '\0';
    sqlite3_stmt *ins;
    assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO t (v) VALUES (?)", -1, &ins, NULL),
                     SQLITE_OK);
    off_t max_wal = 0;
    for (int txn = 0; txn < 4000; txn++) { /* ~16 MiB of rows, one small transaction each */
        sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
        for (int i = 0; i < 2; i++) {
            sqlite3_bind_text(ins, 1, value, -1, SQLITE_STATIC);
            assert_int_equal(sqlite3_step(ins), SQLITE_DONE);
            sqlite3_reset(ins);
        }
        assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
        off_t w = file_size(wal);
        if (w > max_wal) max_wal = w;
    }
    sqlite3_finalize(ins);
    tr_sqlite_checkpointer_stop(c);
    off_t dbsize = file_size(path);
    sqlite3_close(db);
    /* About 64 pages of 4 KiB (more while the thread's checkpoint holds the lock the writer
     * wants): bounded, against 16 MiB written (without the fix: all of it). */
    if (max_wal > (1 << 20)) fail_msg("the WAL reached %lld bytes", (long long)max_wal);
    if (dbsize < (4 << 20))
        fail_msg("the database holds %lld bytes: the WAL was not copied back", (long long)dbsize);
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
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
        cmocka_unit_test(test_wal_stays_bounded),
        cmocka_unit_test(test_bad_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
