/* Unit tests for the trace store: append, find, query, limits, restart, retention, deps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "trace/tracestore.h"
#include "trellis/error.h"
#include "trellis/trace.h"

typedef struct fx_s {
    char dir[64];
    char db[96];
} fx_t;

static void fx_make(fx_t *f)
{
    snprintf(f->dir, sizeof(f->dir), "/tmp/tr-tracestore-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->db, sizeof(f->db), "%s/traces.db", f->dir);
}

static void fx_remove(fx_t *f)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
}

static tr_tracestore_t *open_store(const char *path, size_t max_spans, uint64_t retention_ms)
{
    tr_tracestore_options_t o = {
        .path = path, .max_spans = max_spans, .max_trace_spans = 5, .retention_ms = retention_ms};
    tr_tracestore_t *st;
    char err[256] = "";
    int rc = tr_tracestore_open(&o, &st, err, sizeof(err));
    if (rc) fail_msg("open: %s", err);
    return st;
}

static tr_cspan_t *mk(uint8_t trace, uint8_t span, uint8_t parent, const char *svc,
                      const char *name, uint64_t start, uint64_t dur, bool error)
{
    tr_cspan_t f;
    memset(&f, 0, sizeof(f));
    f.trace_id[15] = trace;
    f.span_id[7] = span;
    f.parent_id[7] = parent;
    f.start_ns = start;
    f.end_ns = start + dur;
    f.kind = TR_SPAN_SERVER;
    f.error = error;
    f.status = error ? TR_STATUS_ERROR : TR_STATUS_UNSET;
    return tr__cspan_new(&f, svc, name, error ? "corr-err" : "", NULL, "{}");
}

static void append(tr_tracestore_t *st, tr_span_batch_t *b, uint64_t now)
{
    assert_int_equal(tr_tracestore_append(st, b, now), 0);
    /* Everything was taken: only the array is left to free (rejects stay for the test). */
    if (!b->n && !b->rejected) tr__span_batch_free(b);
}

static uint64_t edge_calls(tr_tracestore_t *st, const char *p, const char *c, uint64_t *errors)
{
    tr_dep_edge_t *e;
    size_t n = tr_deps_edges(tr_tracestore_deps(st), &e);
    uint64_t calls = 0;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(e[i].parent, p) && !strcmp(e[i].child, c)) {
            calls = e[i].calls;
            if (errors) *errors = e[i].errors;
        }
    free(e);
    return calls;
}

static void test_append_find_query(void **state)
{
    (void)state;
    fx_t f;
    fx_make(&f);
    tr_tracestore_t *st = open_store(f.db, 0, 0);
    tr_span_batch_t b = {0};
    tr__span_batch_add(&b, mk(1, 1, 0, "fe", "GET /", 1000, 500, false));
    tr__span_batch_add(&b, mk(1, 2, 1, "be", "query", 1100, 100, true));
    tr__span_batch_add(&b, mk(2, 1, 0, "fe", "GET /x", 5000, 10, false));
    append(st, &b, 100);
    assert_int_equal(b.n, 0);
    assert_int_equal(b.rejected, 0);
    assert_null(b.spans);

    uint8_t id[16] = {0};
    id[15] = 1;
    tr_trace_t *t;
    bool owned;
    assert_int_equal(tr_tracestore_find(st, id, &t, &owned), 0);
    assert_false(owned);
    assert_int_equal(t->n, 2);
    assert_true(t->error);
    assert_string_equal(tr_tracestore_root(st, t)->name, "GET /");

    tr_trace_t **found;
    tr_trace_query_t q = {.error = -1};
    assert_int_equal(tr_tracestore_query(st, &q, &found), 2);
    assert_int_equal(found[0]->trace_id[15], 2); /* newest start first */
    free(found);
    q = (tr_trace_query_t){.error = 1};
    assert_int_equal(tr_tracestore_query(st, &q, &found), 1);
    free(found);
    q = (tr_trace_query_t){.error = -1, .service = "be", .operation = "query"};
    assert_int_equal(tr_tracestore_query(st, &q, &found), 1);
    free(found);
    q = (tr_trace_query_t){.error = -1, .correlation_id = "corr-err"};
    assert_int_equal(tr_tracestore_query(st, &q, &found), 1);
    free(found);
    q = (tr_trace_query_t){.error = -1, .min_duration_ns = 400};
    assert_int_equal(tr_tracestore_query(st, &q, &found), 1);
    free(found);
    q = (tr_trace_query_t){.error = -1, .start_ns = 2000, .end_ns = 6000};
    assert_int_equal(tr_tracestore_query(st, &q, &found), 1);
    free(found);
    q = (tr_trace_query_t){.error = -1, .limit = 1};
    assert_int_equal(tr_tracestore_query(st, &q, &found), 1);
    free(found);

    const char **names;
    assert_int_equal(tr_tracestore_services(st, &names), 2);
    assert_string_equal(names[0], "be");
    free(names);
    uint64_t errors = 0;
    assert_int_equal(edge_calls(st, "fe", "be", &errors), 1);
    assert_int_equal(errors, 1);

    id[15] = 9;
    assert_int_equal(tr_tracestore_find(st, id, &t, &owned), TR_ENOTFOUND);
    tr_tracestore_close(st);
    fx_remove(&f);
}

static void test_parent_after_child_counts_dependency(void **state)
{
    (void)state;
    tr_tracestore_t *st = open_store(NULL, 0, 0);
    tr_span_batch_t b = {0};
    tr__span_batch_add(&b, mk(3, 2, 1, "be", "child", 10, 5, false));
    append(st, &b, 1);
    assert_int_equal(edge_calls(st, "fe", "be", NULL), 0);
    tr__span_batch_add(&b, mk(3, 1, 0, "fe", "parent", 0, 50, false));
    append(st, &b, 2);
    assert_int_equal(edge_calls(st, "fe", "be", NULL), 1);
    tr_tracestore_close(st);
}

static void test_spans_per_trace_limit(void **state)
{
    (void)state;
    tr_tracestore_t *st = open_store(NULL, 0, 0);
    tr_span_batch_t b = {0};
    for (uint8_t i = 1; i <= 7; i++)
        tr__span_batch_add(&b, mk(4, i, 0, "svc", "s", i, 1, false));
    append(st, &b, 1);
    assert_int_equal(b.rejected, 2);
    assert_int_equal(b.n, 2); /* the rejected spans stay with the caller */
    assert_non_null(strstr(b.message, "5 spans"));
    tr__span_batch_free(&b);
    tr_tracestore_stats_t s;
    tr_tracestore_stats(st, &s);
    assert_int_equal(s.spans, 5);
    tr_tracestore_close(st);
}

static void test_memory_bound_evicts_oldest_trace(void **state)
{
    (void)state;
    tr_tracestore_t *st = open_store(NULL, 3, 0);
    tr_span_batch_t b = {0};
    for (uint8_t t = 1; t <= 3; t++) {
        tr__span_batch_add(&b, mk(t, 1, 0, "svc", "a", t, 1, false));
        tr__span_batch_add(&b, mk(t, 2, 1, "svc", "b", t, 1, false));
        append(st, &b, t);
    }
    tr_tracestore_stats_t s;
    tr_tracestore_stats(st, &s);
    assert_true(s.spans <= 3);
    uint8_t id[16] = {0};
    id[15] = 1;
    tr_trace_t *t;
    bool owned;
    assert_int_equal(tr_tracestore_find(st, id, &t, &owned), TR_ENOTFOUND);
    id[15] = 3;
    assert_int_equal(tr_tracestore_find(st, id, &t, &owned), 0);
    tr_tracestore_close(st);
}

static void test_restart_reloads_and_sqlite_fallback(void **state)
{
    (void)state;
    fx_t f;
    fx_make(&f);
    tr_tracestore_t *st = open_store(f.db, 0, 0);
    tr_span_batch_t b = {0};
    tr__span_batch_add(&b, mk(5, 1, 0, "fe", "root", 0, 10, false));
    tr__span_batch_add(&b, mk(5, 2, 1, "be", "leaf", 1, 5, true));
    tr__span_batch_add(&b, mk(6, 1, 0, "solo", "x", 100, 5, false));
    append(st, &b, 10);
    tr_tracestore_close(st);

    /* Memory holds one span after restart; the rest is read back from SQLite. */
    st = open_store(f.db, 1, 0);
    tr_tracestore_stats_t s;
    tr_tracestore_stats(st, &s);
    assert_int_equal(s.spans, 1);
    assert_int_equal(s.db_spans, 3);
    uint8_t id[16] = {0};
    id[15] = 5;
    tr_trace_t *t;
    bool owned;
    assert_int_equal(tr_tracestore_find(st, id, &t, &owned), 0);
    assert_true(owned);
    assert_int_equal(t->n, 2);
    assert_string_equal(tr_tracestore_root(st, t)->service, "fe");
    assert_string_equal(t->spans[1]->name, "leaf");
    assert_true(t->spans[1]->error);
    tr_tracestore_trace_free(t);
    tr_tracestore_close(st);

    /* With room, the graph is rebuilt from the stored spans. */
    st = open_store(f.db, 0, 0);
    assert_int_equal(edge_calls(st, "fe", "be", NULL), 1);
    tr_tracestore_close(st);
    fx_remove(&f);
}

/* A row as schema version 1 stored it: the trace id's high bytes `hi`, its low byte `lo`. */
static void v1_insert(sqlite3 *db, uint8_t hi, uint8_t lo, uint8_t span, const char *name)
{
    uint8_t trace[16], id[8] = {0};
    memset(trace, hi, 8);
    memset(trace + 8, 0, 8);
    trace[15] = lo;
    id[7] = span;
    sqlite3_stmt *s;
    assert_int_equal(
        sqlite3_prepare_v2(db,
                           "INSERT INTO spans VALUES (?1, ?2, NULL, 'svc', ?3, 2, 1, 2, 0, 0, '',"
                           " '', 1, '{}')",
                           -1, &s, NULL),
        SQLITE_OK);
    sqlite3_bind_blob(s, 1, trace, 16, SQLITE_TRANSIENT);
    sqlite3_bind_blob(s, 2, id, 8, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 3, name, -1, SQLITE_TRANSIENT);
    assert_int_equal(sqlite3_step(s), SQLITE_DONE);
    sqlite3_finalize(s);
}

static int64_t sql_int(const char *path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *s;
    int64_t v = -1;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    if (sqlite3_step(s) == SQLITE_ROW) v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return v;
}

/*
 * A database written by schema version 1 (trace lookups by a blob index) opens, is migrated
 * to the integer trace key, and its spans stay findable by id, also when two traces share
 * the key's 8 bytes.
 */
static void test_migrates_version_1_database(void **state)
{
    (void)state;
    fx_t f;
    fx_make(&f);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(f.db, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db,
                     "CREATE TABLE spans (trace_id BLOB NOT NULL, span_id BLOB NOT NULL,"
                     " parent_id BLOB, service TEXT NOT NULL, name TEXT NOT NULL,"
                     " kind INTEGER NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,"
                     " status INTEGER NOT NULL, error INTEGER NOT NULL,"
                     " correlation_id TEXT NOT NULL, status_message TEXT NOT NULL,"
                     " recv_ms INTEGER NOT NULL, detail TEXT NOT NULL);"
                     "CREATE INDEX spans_trace ON spans (trace_id); PRAGMA user_version = 1;",
                     NULL, NULL, NULL),
        SQLITE_OK);
    v1_insert(db, 0xaa, 7, 1, "a1");
    v1_insert(db, 0xbb, 7, 1, "b1");
    v1_insert(db, 0xaa, 7, 2, "a2");
    v1_insert(db, 0xcc, 9, 1, "c1");
    sqlite3_close(db);

    /* Room for one span in memory: the other traces are read back from SQLite. */
    tr_tracestore_t *st = open_store(f.db, 1, 0);
    uint8_t id[16] = {0};
    memset(id, 0xaa, 8);
    id[15] = 7;
    tr_trace_t *t;
    bool owned;
    assert_int_equal(tr_tracestore_find(st, id, &t, &owned), 0);
    assert_true(owned);
    assert_int_equal(t->n, 2);
    assert_string_equal(t->spans[0]->name, "a1");
    assert_string_equal(t->spans[1]->name, "a2");
    tr_tracestore_trace_free(t);
    memset(id, 0xbb, 8);
    assert_int_equal(tr_tracestore_find(st, id, &t, &owned), 0);
    assert_true(owned);
    assert_int_equal(t->n, 1);
    assert_string_equal(t->spans[0]->name, "b1");
    tr_tracestore_trace_free(t);
    memset(id, 0xdd, 8);
    assert_int_equal(tr_tracestore_find(st, id, &t, &owned), TR_ENOTFOUND);

    /* Spans stored after the migration are found the same way. */
    tr_span_batch_t b = {0};
    tr__span_batch_add(&b, mk(7, 3, 1, "svc", "new", 5, 1, false));
    append(st, &b, 20);
    tr_tracestore_close(st);
    st = open_store(f.db, 1, 0);
    memset(id, 0, 8);
    assert_int_equal(tr_tracestore_find(st, id, &t, &owned), 0);
    assert_int_equal(t->n, 1);
    assert_string_equal(t->spans[0]->name, "new");
    if (owned) tr_tracestore_trace_free(t);
    memset(id, 0xaa, 8);
    assert_int_equal(tr_tracestore_find(st, id, &t, &owned), 0);
    assert_true(owned);
    assert_int_equal(t->n, 2);
    tr_tracestore_trace_free(t);
    tr_tracestore_close(st);

    assert_int_equal(sql_int(f.db, "PRAGMA user_version"), 2);
    assert_int_equal(sql_int(f.db, "SELECT count(*) FROM sqlite_master WHERE name = 'spans_trace'"),
                     0);
    assert_int_equal(sql_int(f.db, "SELECT count(*) FROM spans WHERE tkey = 7"), 4);
    fx_remove(&f);
}

static void test_retention_by_age(void **state)
{
    (void)state;
    fx_t f;
    fx_make(&f);
    tr_tracestore_t *st = open_store(f.db, 0, 1000);
    tr_span_batch_t b = {0};
    tr__span_batch_add(&b, mk(7, 1, 0, "old", "x", 0, 1, false));
    append(st, &b, 10000);
    tr__span_batch_add(&b, mk(8, 1, 0, "new", "y", 0, 1, false));
    append(st, &b, 10800);
    tr_tracestore_sweep(st, 11500);
    tr_tracestore_stats_t s;
    tr_tracestore_stats(st, &s);
    assert_int_equal(s.spans, 1);
    assert_int_equal(s.db_spans, 1);
    uint8_t id[16] = {0};
    id[15] = 7;
    tr_trace_t *t;
    bool owned;
    assert_int_equal(tr_tracestore_find(st, id, &t, &owned), TR_ENOTFOUND);
    tr_tracestore_sweep(st, 12000);
    tr_tracestore_stats(st, &s);
    assert_int_equal(s.db_spans, 0);
    tr_tracestore_close(st);
    fx_remove(&f);
}

static void test_retention_by_size(void **state)
{
    (void)state;
    fx_t f;
    fx_make(&f);
    tr_tracestore_options_t o = {.path = f.db, .max_db_bytes = 64 * 1024};
    tr_tracestore_t *st;
    char err[256];
    assert_int_equal(tr_tracestore_open(&o, &st, err, sizeof(err)), 0);
    char detail[1024];
    memset(detail, 'x', sizeof(detail) - 1);
    detail[sizeof(detail) - 1] = '\0';
    for (int r = 0; r < 4; r++) {
        tr_span_batch_t b = {0};
        for (int i = 0; i < 100; i++) {
            tr_cspan_t fl;
            memset(&fl, 0, sizeof(fl));
            fl.trace_id[0] = (uint8_t)r;
            fl.trace_id[1] = (uint8_t)i;
            fl.span_id[0] = 1;
            tr__span_batch_add(&b, tr__cspan_new(&fl, "s", "n", NULL, NULL, detail));
        }
        append(st, &b, (uint64_t)r + 1);
    }
    tr_tracestore_stats_t s;
    tr_tracestore_stats(st, &s);
    assert_true(s.db_bytes > 64 * 1024);
    for (int i = 0; i < 10; i++)
        tr_tracestore_sweep(st, 10);
    tr_tracestore_stats(st, &s);
    assert_true(s.db_bytes <= 64 * 1024);
    assert_true(s.db_spans > 0 && s.db_spans < 400);
    tr_tracestore_close(st);
    fx_remove(&f);
}

/* Not a pass/fail check: prints the store's append rate for bench/ comparisons. */
static void test_append_rate(void **state)
{
    (void)state;
    fx_t f;
    fx_make(&f);
    tr_tracestore_options_t o = {.path = f.db};
    tr_tracestore_t *st;
    char err[256];
    assert_int_equal(tr_tracestore_open(&o, &st, err, sizeof(err)), 0);
    struct timespec a, z;
    clock_gettime(CLOCK_MONOTONIC, &a);
    size_t total = 0;
    for (int r = 0; r < 100; r++) {
        tr_span_batch_t b = {0};
        for (int i = 0; i < 500; i++) {
            tr_cspan_t fl;
            memset(&fl, 0, sizeof(fl));
            fl.trace_id[0] = (uint8_t)r;
            fl.trace_id[1] = (uint8_t)(i / 10);
            fl.span_id[0] = (uint8_t)(i + 1);
            fl.span_id[1] = (uint8_t)r;
            fl.parent_id[0] = (uint8_t)(i % 10 ? i : 0);
            tr__span_batch_add(&b, tr__cspan_new(&fl, i % 2 ? "a" : "b", "op", NULL, NULL,
                                                 "{\"attributes\":{\"k\":\"v\"}}"));
        }
        append(st, &b, 1);
        assert_int_equal(b.rejected, 0);
        total += 500;
    }
    clock_gettime(CLOCK_MONOTONIC, &z);
    double secs = (double)(z.tv_sec - a.tv_sec) + (double)(z.tv_nsec - a.tv_nsec) / 1e9;
    printf("# tracestore append: %zu spans in %.3f s = %.0f spans/s\n", total, secs,
           (double)total / secs);
    tr_tracestore_close(st);
    fx_remove(&f);
}

/*
 * The collector's path: admit two batches on the loop, write both in one transaction (on
 * another thread there), settle each. The per-trace limit counts spans still in flight, and
 * a trace evicted while its spans were being written is indexed again at settling.
 */
static void test_admit_write_settle(void **state)
{
    (void)state;
    fx_t f;
    fx_make(&f);
    tr_tracestore_t *st = open_store(f.db, 3, 0); /* max 3 spans in memory, 5 per trace */
    tr_span_batch_t b1 = {0}, b2 = {0};
    for (uint8_t i = 1; i <= 4; i++)
        tr__span_batch_add(&b1, mk(1, i, 0, "fe", "a", 1000, 10, false));
    for (uint8_t i = 5; i <= 7; i++) /* 4 + 3 > 5: two of them over the limit */
        tr__span_batch_add(&b2, mk(1, i, 0, "fe", "b", 1000, 10, false));
    tr_tracestore_admitted_t *a[2] = {tr_tracestore_admit(st, &b1, 100),
                                      tr_tracestore_admit(st, &b2, 100)};
    assert_int_equal(tr_tracestore_write(st, a, 2), 0);
    /* Meanwhile another trace arrives and the memory bound (3) evicts trace 1, which holds
     * nothing yet: its spans are still being written. */
    tr_span_batch_t b3 = {0};
    for (uint8_t i = 1; i <= 4; i++)
        tr__span_batch_add(&b3, mk(2, i, 0, "be", "c", 2000, 10, false));
    append(st, &b3, 101);
    tr_tracestore_settle(st, a[0], 0);
    tr_tracestore_settle(st, a[1], 0);
    assert_int_equal(b1.n, 0);
    assert_int_equal(b2.n, 2); /* the two over the limit stay, rejected */
    assert_int_equal(b2.rejected, 2);
    tr__span_batch_free(&b1);
    tr__span_batch_free(&b2);
    tr__span_batch_free(&b3);
    /* All 5 accepted spans of trace 1 are in SQLite, whatever memory kept. */
    tr_tracestore_close(st);
    st = open_store(f.db, 100, 0);
    uint8_t id[16] = {0};
    id[15] = 1;
    tr_trace_t *t;
    bool owned;
    assert_int_equal(tr_tracestore_find(st, id, &t, &owned), 0);
    assert_int_equal(t->n, 5);
    if (owned) tr_tracestore_trace_free(t);
    tr_tracestore_close(st);
    fx_remove(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_find_query),
        cmocka_unit_test(test_admit_write_settle),
        cmocka_unit_test(test_parent_after_child_counts_dependency),
        cmocka_unit_test(test_spans_per_trace_limit),
        cmocka_unit_test(test_memory_bound_evicts_oldest_trace),
        cmocka_unit_test(test_restart_reloads_and_sqlite_fallback),
        cmocka_unit_test(test_migrates_version_1_database),
        cmocka_unit_test(test_retention_by_age),
        cmocka_unit_test(test_retention_by_size),
        cmocka_unit_test(test_append_rate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
