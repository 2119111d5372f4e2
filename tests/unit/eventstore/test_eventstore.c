/* Unit tests for the event store: versions, concurrency checks, idempotency, reads, restart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/buf.h"
#include "eventstore/eventstore.h"

/* ---- helpers ---------------------------------------------------------------------------- */

typedef struct fx_s {
    char dir[64];
    tr_eventstore_t *s;
} fx_t;

static tr_eventstore_t *open_store(const char *dir)
{
    char err[512] = "";
    tr_eventstore_t *s = NULL;
    if (tr_eventstore_open(dir, NULL, &s, err, sizeof(err))) fail_msg("open: %s", err);
    return s;
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/tr-es-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->s = open_store(f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    tr_eventstore_close(f->s);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

/* Appends the events in `json` (an object or an array) and waits for the result. */
static tr_es_write_t append(tr_eventstore_t *s, const char *stream, int64_t expected,
                            const char *json)
{
    json_t *body = json_loads(json, JSON_DECODE_ANY, NULL);
    assert_non_null(body);
    tr_es_write_t w = {.op = TR_ES_OP_APPEND, .stream = stream, .expected = expected};
    char detail[256];
    assert_int_equal(tr_eventstore_check_events(body, &w.events, detail, sizeof(detail)), 0);
    json_decref(body);
    tr_eventstore_write_wait(s, &w);
    json_decref(w.events);
    w.events = NULL;
    return w;
}

static int write_simple(tr_eventstore_t *s, int op, const char *stream, int64_t age, int64_t count)
{
    tr_es_write_t w = {.op = op, .stream = stream, .max_age_ms = age, .max_count = count};
    tr_eventstore_write_wait(s, &w);
    return w.status;
}

typedef struct got_s {
    int n;
    int64_t versions[2000], positions[2000];
    char ids[64][40];
} got_t;

static void on_event(const tr_es_event_t *e, void *data)
{
    got_t *g = data;
    if (g->n < 64) snprintf(g->ids[g->n], sizeof(g->ids[0]), "%s", e->id);
    g->versions[g->n] = e->version;
    g->positions[g->n] = e->position;
    g->n++;
}

static tr_es_page_t read_q(tr_eventstore_t *s, const char *stream, int64_t from, bool backward,
                           size_t limit, got_t *g)
{
    tr_es_query_t q = {.stream = stream, .from = from, .backward = backward, .limit = limit};
    tr_es_page_t page;
    memset(g, 0, sizeof(*g));
    assert_int_equal(tr_eventstore_read(s, &q, on_event, g, &page), 0);
    return page;
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_versions_count_from_zero(void **state)
{
    fx_t *f = *state;
    tr_es_write_t w = append(f->s, "order-1", TR_ES_EXPECT_NO_STREAM,
                             "[{\"type\":\"A\"},{\"type\":\"B\"},{\"type\":\"C\"}]");
    assert_int_equal(w.status, 201);
    assert_int_equal(w.first_version, 0);
    assert_int_equal(w.last_version, 2);
    w = append(f->s, "order-1", 2, "{\"type\":\"D\",\"data\":{\"n\":1}}");
    assert_int_equal(w.status, 201);
    assert_int_equal(w.first_version, 3);
    assert_int_equal(w.last_version, 3);
    got_t g;
    tr_es_page_t p = read_q(f->s, "order-1", -1, false, 0, &g);
    assert_true(p.found);
    assert_int_equal(p.last_version, 3);
    assert_int_equal(g.n, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(g.versions[i], i);
    assert_int_equal(p.next, -1);
    p = read_q(f->s, "order-1", 1, false, 2, &g);
    assert_int_equal(g.n, 2);
    assert_int_equal(g.versions[0], 1);
    assert_int_equal(p.next, 3);
    p = read_q(f->s, "order-1", -1, true, 3, &g);
    assert_int_equal(g.n, 3);
    assert_int_equal(g.versions[0], 3);
    assert_int_equal(g.versions[2], 1);
    assert_int_equal(p.next, 0);
    p = read_q(f->s, "nope", -1, false, 0, &g);
    assert_false(p.found);
    assert_int_equal(g.n, 0);
}

static void test_expected_version_conflicts(void **state)
{
    fx_t *f = *state;
    tr_es_write_t w = append(f->s, "s", TR_ES_EXPECT_EXISTS, "{\"type\":\"A\"}");
    assert_int_equal(w.status, 409);
    assert_int_equal(w.current_version, -1);
    w = append(f->s, "s", 0, "{\"type\":\"A\"}");
    assert_int_equal(w.status, 409);
    assert_int_equal(append(f->s, "s", TR_ES_EXPECT_ANY, "{\"type\":\"A\"}").status, 201);
    w = append(f->s, "s", TR_ES_EXPECT_NO_STREAM, "{\"type\":\"A\"}");
    assert_int_equal(w.status, 409);
    assert_int_equal(w.current_version, 0);
    w = append(f->s, "s", 5, "{\"type\":\"A\"}");
    assert_int_equal(w.status, 409);
    assert_int_equal(w.current_version, 0);
    assert_int_equal(append(f->s, "s", TR_ES_EXPECT_EXISTS, "{\"type\":\"A\"}").status, 201);
    assert_int_equal(append(f->s, "s", 1, "{\"type\":\"A\"}").status, 201);
    got_t g;
    tr_es_page_t p = read_q(f->s, "s", -1, false, 0, &g);
    assert_int_equal(p.last_version, 2);
    assert_int_equal(g.n, 3);
}

static void test_idempotent_appends(void **state)
{
    fx_t *f = *state;
    const char *two = "[{\"id\":\"e1\",\"type\":\"A\"},{\"id\":\"e2\",\"type\":\"B\"}]";
    tr_es_write_t first = append(f->s, "s", TR_ES_EXPECT_NO_STREAM, two);
    assert_int_equal(first.status, 201);
    /* The same request again (expected no longer holds): the original result, no copy. */
    tr_es_write_t again = append(f->s, "s", TR_ES_EXPECT_NO_STREAM, two);
    assert_int_equal(again.status, 200);
    assert_int_equal(again.first_version, first.first_version);
    assert_int_equal(again.last_version, first.last_version);
    assert_int_equal(again.position, first.position);
    /* The same id in another stream, or at another place: a conflict. */
    assert_int_equal(
        append(f->s, "other", TR_ES_EXPECT_ANY, "{\"id\":\"e1\",\"type\":\"A\"}").status, 409);
    assert_int_equal(append(f->s, "s", 5, "{\"id\":\"e2\",\"type\":\"B\"}").status, 409);
    assert_int_equal(append(f->s, "s", 1, "{\"id\":\"e2\",\"type\":\"B\"}").status, 409);
    /* Without an expected version, events already in this stream in order are a repeat. */
    tr_es_write_t tail = append(f->s, "s", TR_ES_EXPECT_ANY, "{\"id\":\"e2\",\"type\":\"B\"}");
    assert_int_equal(tail.status, 200);
    assert_int_equal(tail.first_version, 1);
    tr_es_write_t exact = append(f->s, "s", 0, "{\"id\":\"e2\",\"type\":\"B\"}");
    assert_int_equal(exact.status, 200);
    assert_int_equal(append(f->s, "s", TR_ES_EXPECT_ANY,
                            "[{\"id\":\"e3\",\"type\":\"A\"},{\"id\":\"e1\",\"type\":\"B\"}]")
                         .status,
                     409);
    got_t g;
    tr_es_page_t p = read_q(f->s, "s", -1, false, 0, &g);
    assert_int_equal(g.n, 2);
    assert_int_equal(p.last_version, 1);
    p = read_q(f->s, "other", -1, false, 0, &g);
    assert_false(p.found);
}

static void test_multi_event_appends_are_atomic(void **state)
{
    fx_t *f = *state;
    assert_int_equal(append(f->s, "a", TR_ES_EXPECT_ANY, "{\"id\":\"x\",\"type\":\"A\"}").status,
                     201);
    /* The last event's id is taken: none of the three may be written. */
    tr_es_write_t w = append(f->s, "b", TR_ES_EXPECT_ANY,
                             "[{\"type\":\"A\"},{\"type\":\"B\"},{\"id\":\"x\",\"type\":\"C\"}]");
    assert_int_equal(w.status, 409);
    got_t g;
    assert_false(read_q(f->s, "b", -1, false, 0, &g).found);
    read_q(f->s, NULL, -1, false, 0, &g);
    assert_int_equal(g.n, 1);
    w = append(f->s, "b", TR_ES_EXPECT_ANY, "[{\"type\":\"A\"},{\"type\":\"B\"},{\"type\":\"C\"}]");
    assert_int_equal(w.status, 201);
    assert_int_equal(w.last_version - w.first_version, 2);
}

static void test_all_is_in_commit_order(void **state)
{
    fx_t *f = *state;
    const char *streams[] = {"a", "b", "c"};
    for (int i = 0; i < 30; i++)
        assert_int_equal(append(f->s, streams[i % 3], TR_ES_EXPECT_ANY, "{\"type\":\"T\"}").status,
                         201);
    got_t g;
    tr_es_page_t p = read_q(f->s, NULL, -1, false, 10, &g);
    assert_int_equal(g.n, 10);
    for (int i = 1; i < g.n; i++)
        assert_true(g.positions[i] > g.positions[i - 1]);
    int64_t next = p.next;
    assert_true(next > g.positions[9]);
    p = read_q(f->s, NULL, next, false, 100, &g);
    assert_int_equal(g.n, 20);
    assert_int_equal(g.positions[0], next);
    assert_int_equal(p.next, -1);
    assert_int_equal(tr_eventstore_head(f->s), g.positions[19]);
}

static void test_metadata_hides_old_events(void **state)
{
    fx_t *f = *state;
    for (int i = 0; i < 5; i++)
        append(f->s, "m", TR_ES_EXPECT_ANY, "{\"type\":\"T\"}");
    assert_int_equal(write_simple(f->s, TR_ES_OP_METADATA, "m", 0, 2), 200);
    tr_es_meta_t meta;
    assert_int_equal(tr_eventstore_metadata(f->s, "m", &meta), 0);
    assert_true(meta.found);
    assert_int_equal(meta.max_count, 2);
    got_t g;
    tr_es_page_t p = read_q(f->s, "m", -1, false, 0, &g);
    assert_int_equal(g.n, 2);
    assert_int_equal(g.versions[0], 3);
    assert_int_equal(p.last_version, 4);
    read_q(f->s, "m", -1, true, 0, &g);
    assert_int_equal(g.n, 2);
    /* Versions keep counting past what is hidden. */
    assert_int_equal(append(f->s, "m", 4, "{\"type\":\"T\"}").first_version, 5);
    /* max_age: everything older than 20 ms is no longer read. */
    assert_int_equal(write_simple(f->s, TR_ES_OP_METADATA, "m", 20, 0), 200);
    usleep(60 * 1000);
    p = read_q(f->s, "m", -1, false, 0, &g);
    assert_true(p.found);
    assert_int_equal(g.n, 0);
    append(f->s, "m", TR_ES_EXPECT_ANY, "{\"type\":\"T\"}");
    read_q(f->s, "m", -1, false, 0, &g);
    assert_int_equal(g.n, 1);
    assert_int_equal(g.versions[0], 6);
    /* $all keeps every event. */
    read_q(f->s, NULL, -1, false, 0, &g);
    assert_int_equal(g.n, 7);
}

static void test_soft_delete_and_restart(void **state)
{
    fx_t *f = *state;
    append(f->s, "d", TR_ES_EXPECT_ANY, "[{\"type\":\"A\"},{\"type\":\"B\"}]");
    assert_int_equal(write_simple(f->s, TR_ES_OP_DELETE, "d", 0, 0), 200);
    assert_int_equal(write_simple(f->s, TR_ES_OP_DELETE, "d", 0, 0), 404);
    assert_int_equal(write_simple(f->s, TR_ES_OP_DELETE, "never", 0, 0), 404);
    got_t g;
    assert_false(read_q(f->s, "d", -1, false, 0, &g).found);
    assert_int_equal(append(f->s, "d", TR_ES_EXPECT_EXISTS, "{\"type\":\"C\"}").status, 410);
    assert_int_equal(append(f->s, "d", 1, "{\"type\":\"C\"}").status, 410);
    tr_es_write_t w = append(f->s, "d", TR_ES_EXPECT_NO_STREAM, "{\"type\":\"C\"}");
    assert_int_equal(w.status, 201);
    assert_int_equal(w.first_version, 2);
    tr_es_page_t p = read_q(f->s, "d", -1, false, 0, &g);
    assert_true(p.found);
    assert_int_equal(g.n, 1);
    assert_int_equal(g.versions[0], 2);
    read_q(f->s, NULL, -1, false, 0, &g);
    assert_int_equal(g.n, 3);
}

static void test_reopen_keeps_everything(void **state)
{
    fx_t *f = *state;
    append(f->s, "r", TR_ES_EXPECT_ANY, "[{\"id\":\"r1\",\"type\":\"A\"},{\"type\":\"B\"}]");
    write_simple(f->s, TR_ES_OP_METADATA, "r", 0, 100);
    int64_t head = tr_eventstore_head(f->s);
    tr_eventstore_close(f->s);
    f->s = open_store(f->dir);
    assert_int_equal(tr_eventstore_head(f->s), head);
    got_t g;
    tr_es_page_t p = read_q(f->s, "r", -1, false, 0, &g);
    assert_int_equal(g.n, 2);
    assert_string_equal(g.ids[0], "r1");
    assert_int_equal(p.last_version, 1);
    tr_es_meta_t m;
    tr_eventstore_metadata(f->s, "r", &m);
    assert_int_equal(m.max_count, 100);
    assert_int_equal(append(f->s, "r", 1, "{\"type\":\"C\"}").first_version, 2);
    assert_int_equal(append(f->s, "r2", TR_ES_EXPECT_ANY, "{\"id\":\"r1\",\"type\":\"A\"}").status,
                     409);
    assert_int_equal(append(f->s, "r", TR_ES_EXPECT_ANY, "{\"id\":\"r1\",\"type\":\"A\"}").status,
                     200);
}

#define THREADS    4
#define PER_THREAD 250

static void *appender(void *arg)
{
    tr_eventstore_t *s = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        tr_es_write_t w = append(s, "hot", TR_ES_EXPECT_ANY, "{\"type\":\"T\"}");
        if (w.status != 201 || w.first_version != w.last_version) abort();
    }
    return NULL;
}

static void test_concurrent_appenders_get_consecutive_versions(void **state)
{
    fx_t *f = *state;
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, appender, f->s), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    got_t *g = malloc(sizeof(*g));
    tr_es_page_t p = read_q(f->s, "hot", -1, false, 2000, g);
    assert_int_equal(g->n, THREADS * PER_THREAD);
    assert_int_equal(p.last_version, THREADS * PER_THREAD - 1);
    for (int i = 0; i < g->n; i++)
        assert_int_equal(g->versions[i], i);
    uint64_t commits, events;
    tr_eventstore_stats(f->s, &commits, &events);
    assert_int_equal(events, THREADS * PER_THREAD);
    /* Group commit: concurrent appends share transactions. */
    print_message("%llu events in %llu commits\n", (unsigned long long)events,
                  (unsigned long long)commits);
    assert_true(commits <= events);
    free(g);
}

static void test_bad_input(void **state)
{
    (void)state;
    char d[256];
    json_t *out = NULL;
    const char *bad[] = {"3",
                         "\"x\"",
                         "[]",
                         "[1]",
                         "{\"data\":1}",
                         "{\"type\":\"\"}",
                         "{\"type\":1}",
                         "{\"type\":\"A\",\"id\":5}",
                         "{\"type\":\"A\",\"id\":\"\"}",
                         "{\"type\":\"A\",\"metadata\":[1]}",
                         "[{\"type\":\"A\",\"id\":\"x\"},{\"type\":\"A\",\"id\":\"x\"}]"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *b = json_loads(bad[i], JSON_DECODE_ANY, NULL);
        int st = tr_eventstore_check_events(b, &out, d, sizeof(d));
        if (st != 400 && st != 422) fail_msg("accepted %s", bad[i]);
        json_decref(b);
    }
    json_t *many = json_array();
    for (int i = 0; i <= TR_ES_MAX_EVENTS; i++)
        json_array_append_new(many, json_pack("{s:s}", "type", "T"));
    assert_int_equal(tr_eventstore_check_events(many, &out, d, sizeof(d)), 422);
    json_array_remove(many, 0);
    assert_int_equal(tr_eventstore_check_events(many, &out, d, sizeof(d)), 0);
    assert_int_equal(json_array_size(out), TR_ES_MAX_EVENTS);
    json_decref(out);
    json_decref(many);
    assert_true(tr_eventstore_valid_stream("order-1", 7));
    assert_false(tr_eventstore_valid_stream("", 0));
    assert_false(tr_eventstore_valid_stream("$all", 4));
    assert_false(tr_eventstore_valid_stream("a\nb", 3));
    char longname[202];
    memset(longname, 'a', sizeof(longname));
    assert_true(tr_eventstore_valid_stream(longname, 200));
    assert_false(tr_eventstore_valid_stream(longname, 201));
}

static void test_event_json(void **state)
{
    (void)state;
    tr_es_event_t e = {.stream = "s\"1",
                       .id = "i",
                       .type = "T",
                       .data = "{\"a\":1}",
                       .metadata = NULL,
                       .version = 3,
                       .position = 9,
                       .time_ms = 1795341600123};
    tr_buf_t b = TR_BUF_INIT;
    tr_eventstore_event_json(&b, &e);
    json_t *j = json_loadb(b.data, b.len, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "stream")), "s\"1");
    assert_string_equal(json_string_value(json_object_get(j, "time")), "2026-11-22T10:00:00.123Z");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "data"), "a")), 1);
    assert_null(json_object_get(j, "metadata"));
    json_decref(j);
    tr_buf_free(&b);
}

typedef struct loop_write_s {
    tr_es_write_t w;
    int fired;
} loop_write_t;

static void on_loop_write(tr_es_write_t *w)
{
    ((loop_write_t *)w->data)->fired++;
}

/* With a loop, results come back on the loop; closing leaves no handle behind. */
static void test_loop_results_and_clean_close(void **state)
{
    fx_t *f = *state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    tr_eventstore_options_t o = {.loop = &loop};
    char err[256];
    tr_eventstore_t *s = NULL;
    char path[96];
    snprintf(path, sizeof(path), "%s/loop.db", f->dir);
    assert_int_equal(tr_eventstore_open(path, &o, &s, err, sizeof(err)), 0);
    loop_write_t lw[3];
    for (int i = 0; i < 3; i++) {
        /* A body of its own each time: the check gives id-less events their ids in place. */
        json_t *body = json_loads("[{\"type\":\"A\"},{\"type\":\"B\"}]", 0, NULL);
        lw[i] = (loop_write_t){
            .w = {.op = TR_ES_OP_APPEND, .stream = "l", .cb = on_loop_write, .data = &lw[i]}};
        lw[i].w.expected = i == 0 ? TR_ES_EXPECT_NO_STREAM : TR_ES_EXPECT_ANY;
        assert_int_equal(tr_eventstore_check_events(body, &lw[i].w.events, err, sizeof(err)), 0);
        json_decref(body);
        tr_eventstore_write(s, &lw[i].w);
    }
    for (int spins = 0; spins < 2000 && lw[2].fired == 0; spins++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    for (int i = 0; i < 3; i++) {
        assert_int_equal(lw[i].fired, 1);
        assert_int_equal(lw[i].w.status, 201);
        assert_int_equal(lw[i].w.first_version, 2 * i);
        json_decref(lw[i].w.events);
    }
    tr_eventstore_close(s);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_open_failure_says_why(void **state)
{
    (void)state;
    char err[512] = "";
    tr_eventstore_t *s = NULL;
    assert_true(tr_eventstore_open("/nonexistent-dir/x/events.db", NULL, &s, err, sizeof(err)) < 0);
    assert_null(s);
    assert_non_null(strstr(err, "cannot open"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_versions_count_from_zero, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expected_version_conflicts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotent_appends, setup, teardown),
        cmocka_unit_test_setup_teardown(test_multi_event_appends_are_atomic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_all_is_in_commit_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metadata_hides_old_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_soft_delete_and_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_keeps_everything, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_appenders_get_consecutive_versions, setup,
                                        teardown),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_event_json),
        cmocka_unit_test(test_open_failure_says_why),
        cmocka_unit_test_setup_teardown(test_loop_results_and_clean_close, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
