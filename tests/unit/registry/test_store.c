/* Unit tests for the registry's SQLite store: index monotonicity, transactions, migrations. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "registry/store.h"
#include "trellis/error.h"

typedef struct dir_s {
    char dir[64];
    char db[96];
} dir_t;

static void dir_make(dir_t *d)
{
    snprintf(d->dir, sizeof(d->dir), "/tmp/tr-store-XXXXXX");
    assert_non_null(mkdtemp(d->dir));
    snprintf(d->db, sizeof(d->db), "%s/registry.db", d->dir);
}

static void dir_remove(dir_t *d)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->dir);
    assert_int_equal(system(cmd), 0);
}

static tr_store_t *open_ok(const dir_t *d)
{
    char err[256] = "";
    tr_store_t *st = NULL;
    int rc = tr_store_open(d->db, &st, err, sizeof(err));
    if (rc) fail_msg("open: %s", err);
    return st;
}

static int64_t pragma_int(tr_store_t *st, const char *sql)
{
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(tr_store_db(st), sql, -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

static void commit_one(tr_store_t *st, uint64_t want)
{
    uint64_t idx = 0;
    assert_int_equal(tr_store_begin(st, &idx), 0);
    assert_int_equal(idx, want);
    assert_int_equal(tr_store_commit(st), 0);
    assert_int_equal(tr_store_index(st), want);
}

static void test_index_monotonic_across_restart(void **state)
{
    dir_t d;
    dir_make(&d);
    tr_store_t *st = open_ok(&d);
    /* An empty store is at 1, the index it reports, so the first write (2) is news. */
    assert_int_equal(tr_store_index(st), 1);
    for (uint64_t i = 2; i <= 4; i++)
        commit_one(st, i);
    /* A rolled-back write leaves the index where it was, and the next write reuses it. */
    uint64_t idx;
    assert_int_equal(tr_store_begin(st, &idx), 0);
    assert_int_equal(idx, 5);
    tr_store_rollback(st);
    assert_int_equal(tr_store_index(st), 4);
    tr_store_close(st);

    st = open_ok(&d);
    assert_int_equal(tr_store_index(st), 4);
    commit_one(st, 5);
    tr_store_close(st);
    dir_remove(&d);
}

static void test_transaction_state_errors(void **state)
{
    dir_t d;
    dir_make(&d);
    tr_store_t *st = open_ok(&d);
    assert_int_equal(tr_store_commit(st), TR_ESTATE);
    uint64_t idx;
    assert_int_equal(tr_store_begin(st, &idx), 0);
    assert_int_equal(tr_store_begin(st, &idx), TR_ESTATE);
    assert_int_equal(tr_store_commit(st), 0);
    tr_store_rollback(st); /* nothing open: harmless */
    assert_int_equal(tr_store_index(st), 2);
    /* Closing with a transaction open rolls it back. */
    assert_int_equal(tr_store_begin(st, &idx), 0);
    tr_store_close(st);
    st = open_ok(&d);
    assert_int_equal(tr_store_index(st), 2);
    tr_store_close(st);
    dir_remove(&d);
}

static void test_wal_and_schema(void **state)
{
    dir_t d;
    dir_make(&d);
    tr_store_t *st = open_ok(&d);
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(tr_store_db(st), "PRAGMA journal_mode", -1, &s, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(s, 0), "wal");
    sqlite3_finalize(s);
    assert_int_equal(pragma_int(st, "PRAGMA synchronous"), 1); /* NORMAL */
    assert_true(pragma_int(st, "PRAGMA user_version") >= 1);
    assert_int_equal(pragma_int(st, "SELECT count(*) FROM kv"), 0);
    assert_int_equal(pragma_int(st, "SELECT count(*) FROM kv_tombstones"), 0);
    tr_store_close(st);
    dir_remove(&d);
}

static void test_stmt_cache(void **state)
{
    dir_t d;
    dir_make(&d);
    tr_store_t *st = open_ok(&d);
    static const char sql[] = "SELECT value FROM meta WHERE key = ?1";
    sqlite3_stmt *a = tr_store_stmt(st, sql);
    assert_non_null(a);
    sqlite3_bind_text(a, 1, "index", -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(a), SQLITE_ROW);
    /* The same text gives the same statement back, reset with bindings cleared. */
    char copy[sizeof(sql)];
    memcpy(copy, sql, sizeof(sql));
    sqlite3_stmt *b = tr_store_stmt(st, copy);
    assert_ptr_equal(a, b);
    assert_int_equal(sqlite3_step(b), SQLITE_DONE); /* ?1 is NULL now: no row */
    assert_null(tr_store_stmt(st, "SELECT nonsense FROM nowhere"));
    tr_store_close(st);
    dir_remove(&d);
}

/* A database an older trellis left (no registry tables yet) is migrated in place. */
static void test_migrates_existing_db(void **state)
{
    dir_t d;
    dir_make(&d);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(d.db, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "CREATE TABLE keepme (x INTEGER); INSERT INTO keepme VALUES (7);",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    tr_store_t *st = open_ok(&d);
    assert_int_equal(pragma_int(st, "SELECT x FROM keepme"), 7);
    int64_t version = pragma_int(st, "PRAGMA user_version");
    assert_true(version >= 1);
    commit_one(st, 2);
    tr_store_close(st);
    /* Reopening an up-to-date database runs no migration again (it would fail: tables
     * exist) and keeps the data. */
    st = open_ok(&d);
    assert_int_equal(pragma_int(st, "PRAGMA user_version"), version);
    assert_int_equal(tr_store_index(st), 2);
    tr_store_close(st);
    dir_remove(&d);
}

static void test_refuses_newer_schema(void **state)
{
    dir_t d;
    dir_make(&d);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(d.db, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 999", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    char err[256] = "";
    tr_store_t *st = (tr_store_t *)1;
    assert_int_equal(tr_store_open(d.db, &st, err, sizeof(err)), TR_ESTATE);
    assert_null(st);
    assert_non_null(strstr(err, d.db));
    assert_non_null(strstr(err, "newer"));
    dir_remove(&d);
}

static void test_open_error_names_path(void **state)
{
    char err[256] = "";
    tr_store_t *st;
    assert_int_equal(tr_store_open("/nonexistent-dir/x/registry.db", &st, err, sizeof(err)),
                     TR_EIO);
    assert_null(st);
    assert_non_null(strstr(err, "/nonexistent-dir/x/registry.db: "));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_index_monotonic_across_restart),
        cmocka_unit_test(test_transaction_state_errors),
        cmocka_unit_test(test_wal_and_schema),
        cmocka_unit_test(test_stmt_cache),
        cmocka_unit_test(test_migrates_existing_db),
        cmocka_unit_test(test_refuses_newer_schema),
        cmocka_unit_test(test_open_error_names_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
