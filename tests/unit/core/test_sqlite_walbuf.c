/* Unit tests for the "trellis-walbuf" VFS: one write per commit, commits visible to other
 * connections at once, checkpoints and WAL restarts, and every acknowledged commit intact
 * after SIGKILL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/sqlite.h"

typedef struct fixture_s {
    char dir[40], path[128];
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/trellis-walbuf-XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    snprintf(f->path, sizeof(f->path), "%s/t.db", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    char cmd[96];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    if (system(cmd) != 0) return -1;
    free(f);
    return 0;
}

static const char *sync_mode = "NORMAL";

static sqlite3 *open_writer(const char *path)
{
    const char *vfs = tr_sqlite_walbuf_vfs();
    assert_non_null(vfs);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs),
                     SQLITE_OK);
    char err[256], sql[256];
    snprintf(sql, sizeof(sql),
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s; CREATE TABLE IF NOT EXISTS t"
             " (id INTEGER PRIMARY KEY, k TEXT, v TEXT); CREATE INDEX IF NOT EXISTS t_k ON t (k)",
             sync_mode);
    assert_int_equal(tr_sqlite_exec(db, sql, err, sizeof(err), path), 0);
    return db;
}

static int64_t count_rows(sqlite3 *db)
{
    return tr_sqlite_int(db, "SELECT count(*) FROM t");
}

/* Integrity check and row count of the file, opened afresh on the default VFS. */
static int64_t check_file(const char *path)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
    int64_t rows = count_rows(db);
    sqlite3_close(db);
    return rows;
}

/* A transaction of `n` rows with random keys (so it dirties many index pages). */
static void write_txn(sqlite3 *db, int n)
{
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO t (k, v) VALUES (?1, ?2)", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    char k[32], v[200];
    memset(v, 'v', sizeof(v) - 1);
    v[sizeof(v) - 1] = '\0';
    for (int i = 0; i < n; i++) {
        snprintf(k, sizeof(k), "%08x", (unsigned)rand());
        sqlite3_bind_text(st, 1, k, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, v, -1, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        sqlite3_reset(st);
    }
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_finalize(st);
}

/* Many frames per commit leave in one write, and a reader on the default VFS sees every
 * commit as soon as it returns. */
static void test_one_write_per_commit(void **state)
{
    fixture_t *f = *state;
    sqlite3 *w = open_writer(f->path), *r = NULL;
    assert_int_equal(sqlite3_open_v2(f->path, &r, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    uint64_t w0, f0, l0, w1, f1, l1;
    tr_sqlite_walbuf_stats(&w0, &f0, &l0);
    for (int i = 1; i <= 50; i++) {
        write_txn(w, 100);
        assert_int_equal(count_rows(r), i * 100);
    }
    tr_sqlite_walbuf_stats(&w1, &f1, &l1);
    /* A commit of 100 rows is about 40 frames (170 KiB): 3 writes of 64 KiB, not 80. */
    assert_true(f1 - f0 >= 50 && f1 - f0 <= 50 * 4);
    assert_true(w1 - w0 > 50 * 20); /* SQLite made two writes per page */
    assert_int_equal(l1 - l0, 0);   /* every commit was recognised */
    sqlite3_close(r);
    sqlite3_close(w);
}

/* Checkpoints copy the WAL back and the WAL starts over; the file stays sound. */
static void test_checkpoint_and_restart(void **state)
{
    fixture_t *f = *state;
    sqlite3 *w = open_writer(f->path);
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < 10; i++)
            write_txn(w, 50);
        int log = -1, done = -1;
        assert_int_equal(sqlite3_wal_checkpoint_v2(w, NULL, SQLITE_CHECKPOINT_RESTART, &log, &done),
                         SQLITE_OK);
        assert_int_equal(log, done);
    }
    assert_int_equal(count_rows(w), 2500);
    sqlite3_close(w);
    assert_int_equal(check_file(f->path), 2500);
}

/* A child commits as fast as it can and reports each commit; SIGKILL at a random moment
 * loses none that were reported, and the database is sound. */
static void test_sigkill_keeps_acknowledged(void **state)
{
    fixture_t *f = *state;
    srand((unsigned)time(NULL));
    for (int round = 0; round < 3; round++) {
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            sqlite3 *w = open_writer(f->path);
            for (;;) {
                write_txn(w, 20);
                int64_t n = count_rows(w);
                if (write(fds[1], &n, sizeof(n)) != (ssize_t)sizeof(n)) _exit(1);
            }
        }
        close(fds[1]);
        usleep((useconds_t)(50000 + rand() % 200000));
        kill(pid, SIGKILL);
        int64_t acked = 0, n;
        while (read(fds[0], &n, sizeof(n)) == (ssize_t)sizeof(n))
            acked = n;
        close(fds[0]);
        int status;
        waitpid(pid, &status, 0);
        assert_true(WIFSIGNALED(status));
        int64_t rows = check_file(f->path);
        assert_true(acked > 0);
        assert_true(rows >= acked);
        assert_true(rows <= acked + 20); /* at most the commit in flight */
    }
}

/* A write that fails (the file size limit, as a full disk would) fails its commit, which
 * leaves nothing behind; the commits before it stay. */
static void test_failed_write_fails_the_commit(void **state)
{
    fixture_t *f = *state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        signal(SIGXFSZ, SIG_IGN);
        sqlite3 *w = open_writer(f->path);
        sqlite3_exec(w, "PRAGMA wal_autocheckpoint=0", NULL, NULL, NULL);
        struct rlimit rl = {.rlim_cur = 2 << 20, .rlim_max = RLIM_INFINITY};
        if (setrlimit(RLIMIT_FSIZE, &rl)) _exit(2);
        sqlite3_stmt *st;
        sqlite3_prepare_v2(w, "INSERT INTO t (k, v) VALUES (?1, zeroblob(300))", -1, &st, NULL);
        int64_t acked = 0;
        for (int rc = SQLITE_OK; rc == SQLITE_OK;) {
            sqlite3_exec(w, "BEGIN", NULL, NULL, NULL);
            for (int i = 0; i < 20 && rc == SQLITE_OK; i++) {
                char k[16];
                snprintf(k, sizeof(k), "%08x", (unsigned)rand());
                sqlite3_bind_text(st, 1, k, -1, SQLITE_TRANSIENT);
                rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
                sqlite3_reset(st);
            }
            if (rc == SQLITE_OK) rc = sqlite3_exec(w, "COMMIT", NULL, NULL, NULL);
            if (rc == SQLITE_OK)
                acked += 20;
            else
                sqlite3_exec(w, "ROLLBACK", NULL, NULL, NULL);
        }
        if (write(fds[1], &acked, sizeof(acked)) != (ssize_t)sizeof(acked)) _exit(1);
        sqlite3_finalize(st);
        sqlite3_close(w);
        _exit(0);
    }
    close(fds[1]);
    int64_t acked = -1;
    assert_int_equal(read(fds[0], &acked, sizeof(acked)), (ssize_t)sizeof(acked));
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(acked > 0);
    assert_int_equal(check_file(f->path), acked);
}

/* The same with synchronous=FULL: SQLite syncs the WAL after each commit frame. */
static void test_full_one_write_per_commit(void **state)
{
    sync_mode = "FULL";
    test_one_write_per_commit(state);
    sync_mode = "NORMAL";
}

static void test_full_sigkill_keeps_acknowledged(void **state)
{
    sync_mode = "FULL";
    test_sigkill_keeps_acknowledged(state);
    sync_mode = "NORMAL";
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_one_write_per_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint_and_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sigkill_keeps_acknowledged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_write_fails_the_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_one_write_per_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_sigkill_keeps_acknowledged, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
