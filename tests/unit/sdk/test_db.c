/* Unit tests for the service database helper: migrations once and in order (also with two
 * handles racing), typed binding, rows as JSON, constraint errors, transactions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "trellis/db.h"
#include "trellis/error.h"

static char dir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/trellis-test-db.XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd);
}

static const char *const migrations[] = {
    "CREATE TABLE item (id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, price REAL,"
    " qty INTEGER CHECK (qty >= 0), tags_json TEXT);"
    "INSERT INTO item (sku, price, qty) VALUES ('seed', 1.5, 3);",
    "ALTER TABLE item ADD COLUMN note TEXT;", NULL};

static tr_db_t *open_db(const char *name, const char *const *m)
{
    char path[128], err[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    tr_db_t *db = NULL;
    if (tr_db_open(path, m, &db, err, sizeof(err))) fail_msg("open: %s", err);
    return db;
}

static void test_migrations_once(void **state)
{
    (void)state;
    tr_db_t *a = open_db("sub/dir/m.db", migrations); /* directories are made */
    tr_db_t *b = open_db("sub/dir/m.db", migrations); /* a second replica: nothing again */
    assert_int_equal(tr_db_int(a, -1, "SELECT COUNT(*) FROM item", ""), 1);
    assert_int_equal(tr_db_int(b, -1, "PRAGMA user_version", ""), 2);
    tr_db_close(a);
    tr_db_close(b);
    /* A failing migration refuses to open, with the reason. */
    static const char *const broken[] = {"CREATE TABLE x (a);", "NOT SQL;", NULL};
    char path[128], err[256];
    snprintf(path, sizeof(path), "%s/broken.db", dir);
    tr_db_t *db = NULL;
    assert_int_equal(tr_db_open(path, broken, &db, err, sizeof(err)), TR_EIO);
    assert_null(db);
    assert_non_null(strstr(err, "broken.db"));
}

static void test_rows_and_binding(void **state)
{
    (void)state;
    tr_db_t *db = open_db("rows.db", migrations);
    json_t *tags = json_pack("[ss]", "a", "b");
    assert_int_equal(tr_db_run(db,
                               "INSERT INTO item (sku, price, qty, tags_json, note) VALUES "
                               "(?, ?, ?, ?, ?)",
                               "sdijn", "x-1", 9.25, (int64_t)7, tags),
                     1);
    json_decref(tags);
    int64_t id = tr_db_last_id(db);
    assert_true(id > 1);
    json_t *row = tr_db_row(db, NULL, "SELECT * FROM item WHERE id = ?", "i", id);
    assert_non_null(row);
    assert_string_equal(json_string_value(json_object_get(row, "sku")), "x-1");
    assert_true(json_real_value(json_object_get(row, "price")) == 9.25);
    assert_int_equal(json_integer_value(json_object_get(row, "qty")), 7);
    assert_true(json_is_null(json_object_get(row, "note")));
    /* A *_json column comes back parsed, under the name without the suffix. */
    assert_string_equal(json_string_value(json_array_get(json_object_get(row, "tags"), 1)), "b");
    json_decref(row);
    int err = 1;
    assert_null(tr_db_row(db, &err, "SELECT * FROM item WHERE id = ?", "i", (int64_t)999));
    assert_int_equal(err, 0);
    json_t *rows = tr_db_rows(db, &err, "SELECT sku FROM item ORDER BY id", "");
    assert_int_equal(json_array_size(rows), 2);
    json_decref(rows);
    /* Cached statements are reset between uses: the same SQL again works. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(tr_db_int(db, -1, "SELECT qty FROM item WHERE sku = ?", "s", "x-1"), 7);
    assert_int_equal(tr_db_int(db, 42, "SELECT qty FROM item WHERE sku = ?", "s", "none"), 42);
    /* Bad SQL is an error, not a crash. */
    assert_null(tr_db_rows(db, &err, "SELECT nope FROM nowhere", ""));
    assert_int_equal(err, TR_EIO);
    tr_db_close(db);
}

static void test_constraints_and_tx(void **state)
{
    (void)state;
    tr_db_t *db = open_db("tx.db", migrations);
    assert_int_equal(
        tr_db_run(db, "INSERT INTO item (sku, qty) VALUES (?, ?)", "si", "seed", (int64_t)1),
        TR_EEXISTS);
    assert_int_equal(
        tr_db_run(db, "INSERT INTO item (sku, qty) VALUES (?, ?)", "si", "neg", (int64_t)-1),
        TR_ESTATE);
    assert_int_equal(tr_db_begin(db), 0);
    assert_int_equal(tr_db_run(db, "UPDATE item SET qty = qty + 1", ""), 1);
    assert_int_equal(tr_db_rollback(db), 0);
    assert_int_equal(tr_db_int(db, -1, "SELECT qty FROM item", ""), 3);
    assert_int_equal(tr_db_begin(db), 0);
    assert_int_equal(tr_db_run(db, "UPDATE item SET qty = qty + 1", ""), 1);
    assert_int_equal(tr_db_commit(db), 0);
    assert_int_equal(tr_db_int(db, -1, "SELECT qty FROM item", ""), 4);
    tr_db_close(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_migrations_once),
        cmocka_unit_test(test_rows_and_binding),
        cmocka_unit_test(test_constraints_and_tx),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
