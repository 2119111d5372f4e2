/* Unit tests for the central log store: line parsing, ring, queries, disk, retention, HTTP. */
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
#include <time.h>
#include <unistd.h>

#include "trace/logs.h"
#include "trellis/http_client.h"
#include "trellis/net.h"

/* 2026-11-22T10:00:00Z */
#define T0 INT64_C(1795341600)
#define NS INT64_C(1000000000)

/* ---- helpers ---------------------------------------------------------------------------- */

typedef struct dir_s {
    char dir[64];
} dir_t;

static void dir_make(dir_t *d)
{
    snprintf(d->dir, sizeof(d->dir), "/tmp/tr-logs-XXXXXX");
    assert_non_null(mkdtemp(d->dir));
}

static void dir_remove(dir_t *d)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->dir);
    assert_int_equal(system(cmd), 0);
}

static tr_logs_t *open_ok(const tr_logs_options_t *o)
{
    char err[512] = "";
    tr_logs_t *l = tr_logs_open(o, err, sizeof(err));
    if (!l) fail_msg("open: %s", err);
    return l;
}

typedef struct parsed_s {
    tr_log_entry_t e;
    char *scratch;
} parsed_t;

static parsed_t parse(const char *line, int stream)
{
    parsed_t p;
    tr_logs_parse_line(line, strlen(line), stream, &p.e, &p.scratch);
    return p;
}

/* Collected query results: seqs and messages. */
typedef struct results_s {
    size_t n;
    uint64_t seq[20000];
    char msg[64][64];
} results_t;

static void on_line(const tr_log_line_t *ln, void *data)
{
    results_t *r = data;
    if (r->n < 64) snprintf(r->msg[r->n], sizeof(r->msg[0]), "%s", ln->entry.message);
    if (r->n < 20000) r->seq[r->n] = ln->seq;
    r->n++;
}

static results_t *query(tr_logs_t *l, const tr_logs_query_t *q)
{
    static results_t r;
    memset(&r, 0, sizeof(r));
    size_t n = tr_logs_query(l, q, on_line, &r);
    assert_int_equal(n, r.n);
    return &r;
}

static void add(tr_logs_t *l, const char *svc, const char *msg, const char *cid, int64_t t)
{
    tr_log_entry_t e = {.time_ns = t,
                        .level = TR_LOG_INFO,
                        .service = svc,
                        .instance = "1",
                        .message = msg,
                        .correlation_id = cid};
    tr_logs_append(l, &e);
}

/* ---- parsing ---------------------------------------------------------------------------- */

static void test_parse_key_aliases(void **state)
{
    static const char *const lines[] = {
        "{\"ts\":\"2026-11-22T10:00:00Z\",\"level\":\"warn\",\"msg\":\"m\","
        "\"correlation_id\":\"c\",\"trace_id\":\"t\"}",
        "{\"time\":\"2026-11-22T10:00:00Z\",\"severity\":\"WARNING\",\"message\":\"m\","
        "\"correlationId\":\"c\",\"traceId\":\"t\"}",
        "{\"timestamp\":\"2026-11-22T10:00:00Z\",\"lvl\":\"warn\",\"msg\":\"m\","
        "\"x-correlation-id\":\"c\",\"trace.id\":\"t\"}",
        "{\"timestamp\":1795341600,\"lvl\":40,\"msg\":\"m\",\"x-correlation-id\":\"c\","
        "\"trace\":{\"id\":\"t\"}}",
    };
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        parsed_t p = parse(lines[i], 1);
        assert_int_equal(p.e.time_ns, T0 * NS);
        assert_int_equal(p.e.level, TR_LOG_WARN);
        assert_string_equal(p.e.message, "m");
        assert_string_equal(p.e.correlation_id, "c");
        assert_string_equal(p.e.trace_id, "t");
        assert_string_equal(p.e.fields_json, lines[i]);
        assert_false(p.e.truncated);
        free(p.scratch);
    }
}

static void test_parse_levels(void **state)
{
    static const struct {
        const char *json;
        tr_log_level_t want;
    } cases[] = {
        {"\"debug\"", TR_LOG_DEBUG},    {"\"trace\"", TR_LOG_DEBUG}, {"\"INFO\"", TR_LOG_INFO},
        {"\"notice\"", TR_LOG_INFO},    {"\"error\"", TR_LOG_ERROR}, {"\"fatal\"", TR_LOG_ERROR},
        {"\"critical\"", TR_LOG_ERROR}, {"20", TR_LOG_DEBUG},        {"30", TR_LOG_INFO},
        {"50", TR_LOG_ERROR},           {"60", TR_LOG_ERROR},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char line[128];
        snprintf(line, sizeof(line), "{\"level\":%s,\"msg\":\"x\"}", cases[i].json);
        parsed_t p = parse(line, 2);
        assert_int_equal(p.e.level, cases[i].want);
        free(p.scratch);
    }
    /* No level key: the stream decides. */
    parsed_t p = parse("{\"msg\":\"x\"}", 2);
    assert_int_equal(p.e.level, TR_LOG_ERROR);
    free(p.scratch);
}

static void test_parse_times(void **state)
{
    static const struct {
        const char *text;
        int64_t want;
    } cases[] = {
        {"2026-11-22T10:00:00Z", T0 * NS},
        {"2026-11-22T10:00:00.5Z", T0 * NS + NS / 2},
        {"2026-11-22T11:30:00.123456789+01:30", T0 * NS + 123456789},
        {"2026-11-22T05:00:00-05:00", T0 * NS},
        {"2026-11-22t10:00:00z", T0 * NS},
        {"2026-11-22 10:00:00Z", T0 * NS},
        {"1795341600", T0 * NS},
        {"1795341600.25", T0 * NS + NS / 4},
        {"1795341600123", T0 * NS + 123000000},
        {"1795341600123456", T0 * NS + 123456000},
        {"1795341600123456789", T0 * NS + 123456789},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int64_t got = 0;
        if (!tr_logs_parse_time(cases[i].text, false, 0, &got)) fail_msg("%s", cases[i].text);
        assert_int_equal(got, cases[i].want);
    }
    static const char *const bad[] = {"",
                                      "yesterday",
                                      "2026-13-01T00:00:00Z",
                                      "2026-11-22T10:00:00",
                                      "2026-11-22T10:00:00+1:00",
                                      "-5",
                                      "5m"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t got;
        if (tr_logs_parse_time(bad[i], false, 0, &got)) fail_msg("accepted %s", bad[i]);
    }
    int64_t got;
    assert_true(tr_logs_parse_time("5m", true, 1000 * NS, &got));
    assert_int_equal(got, 700 * NS);
    /* Epoch numbers in JSON: seconds, ms, ns. */
    static const char *const json[] = {
        "{\"ts\":1795341600,\"msg\":\"x\"}", "{\"ts\":1795341600000,\"msg\":\"x\"}",
        "{\"ts\":1795341600000000000,\"msg\":\"x\"}", "{\"ts\":\"1795341600000\",\"msg\":\"x\"}"};
    for (size_t i = 0; i < 4; i++) {
        parsed_t p = parse(json[i], 1);
        assert_int_equal(p.e.time_ns, T0 * NS);
        free(p.scratch);
    }
}

static void test_parse_plain_lines(void **state)
{
    int64_t before = (int64_t)time(NULL) * NS;
    parsed_t p = parse("listening on :8080\r\n", 1);
    assert_string_equal(p.e.message, "listening on :8080");
    assert_int_equal(p.e.level, TR_LOG_INFO);
    assert_null(p.e.fields_json);
    assert_null(p.e.correlation_id);
    assert_true(p.e.time_ns >= before);
    free(p.scratch);
    p = parse("{not json at all", 2);
    assert_string_equal(p.e.message, "{not json at all");
    assert_int_equal(p.e.level, TR_LOG_ERROR);
    assert_null(p.e.fields_json);
    free(p.scratch);
    /* A JSON array or string is not a log object. */
    p = parse("[1,2]", 1);
    assert_string_equal(p.e.message, "[1,2]");
    free(p.scratch);
    /* An object without a message shows as itself. */
    p = parse("{\"a\":1}", 1);
    assert_string_equal(p.e.message, "{\"a\":1}");
    assert_non_null(p.e.fields_json);
    free(p.scratch);
}

static void test_parse_bad_utf8(void **state)
{
    parsed_t p = parse("a\xff"
                       "b\xc3",
                       1);
    assert_string_equal(p.e.message, "a\xef\xbf\xbd"
                                     "b\xef\xbf\xbd");
    free(p.scratch);
    /* Inside JSON too: the line is cleaned first, so it still parses. */
    p = parse("{\"msg\":\"caf\xe9\",\"correlation_id\":\"c1\"}", 1);
    assert_string_equal(p.e.message, "caf\xef\xbf\xbd");
    assert_string_equal(p.e.correlation_id, "c1");
    free(p.scratch);
    /* NUL bytes in a raw line become U+FFFD too. */
    tr_log_entry_t e;
    char *scratch;
    tr_logs_parse_line("a\0b", 3, 1, &e, &scratch);
    assert_string_equal(e.message, "a\xef\xbf\xbd"
                                   "b");
    free(scratch);
}

static void test_parse_huge_line(void **state)
{
    size_t n = 40 * 1024;
    char *big = malloc(n + 1);
    memset(big, 'x', n);
    big[n] = '\0';
    big[TR_LOGS_MAX_LINE - 1] = '\xc3'; /* a two-byte sequence cut by the limit */
    big[TR_LOGS_MAX_LINE] = '\xa9';
    parsed_t p = parse(big, 1);
    assert_true(p.e.truncated);
    assert_true(strlen(p.e.message) <= TR_LOGS_MAX_LINE);
    assert_true(strlen(p.e.message) >= TR_LOGS_MAX_LINE - 4);
    free(p.scratch);
    tr_logs_t *l = open_ok(NULL);
    tr_logs_ingest_line(l, "s", "i", 1, big, n);
    tr_logs_stats_t st;
    tr_logs_stats(l, &st);
    assert_int_equal(st.truncated, 1);
    /* A huge JSON line is cut, is no longer JSON, and is kept as text. */
    big[0] = '{';
    big[1] = '"';
    tr_logs_ingest_line(l, "s", "i", 1, big, n);
    tr_logs_close(l);
    free(big);
}

/* ---- memory ----------------------------------------------------------------------------- */

static void test_ring_eviction(void **state)
{
    tr_logs_options_t o = {.max_lines = 5};
    tr_logs_t *l = open_ok(&o);
    for (int i = 1; i <= 12; i++) {
        char m[16];
        snprintf(m, sizeof(m), "m%d", i);
        add(l, "svc", m, NULL, 0);
    }
    tr_logs_stats_t st;
    tr_logs_stats(l, &st);
    assert_int_equal(st.in_memory, 5);
    assert_int_equal(st.last_seq, 12);
    results_t *r = query(l, &(tr_logs_query_t){0});
    assert_int_equal(r->n, 5);
    assert_int_equal(r->seq[0], 12);
    assert_int_equal(r->seq[4], 8);
    assert_string_equal(r->msg[4], "m8");
    tr_logs_close(l);
}

static void fill_mixed(tr_logs_t *l)
{
    /* seq 1..6 at T0+seq seconds. */
    add(l, "orders", "Order created", "c1", (T0 + 1) * NS);
    add(l, "payments", "charge ok", "c1", (T0 + 2) * NS);
    add(l, "orders", "ORDER shipped", "c2", (T0 + 3) * NS);
    tr_log_entry_t e = {.time_ns = (T0 + 4) * NS,
                        .level = TR_LOG_ERROR,
                        .service = "payments",
                        .message = "card declined",
                        .correlation_id = "c2",
                        .trace_id = "t2"};
    tr_logs_append(l, &e);
    e.time_ns = (T0 + 5) * NS;
    e.level = TR_LOG_WARN;
    e.service = "orders";
    e.message = "retrying";
    tr_logs_append(l, &e);
    add(l, "catalog", "cache warm", NULL, (T0 + 6) * NS);
}

static void check_filters(tr_logs_t *l)
{
    results_t *r = query(l, &(tr_logs_query_t){.service = "orders"});
    assert_int_equal(r->n, 3);
    assert_int_equal(r->seq[0], 5);
    assert_int_equal(r->seq[2], 1);
    r = query(l, &(tr_logs_query_t){.correlation_id = "c1", .oldest_first = true});
    assert_int_equal(r->n, 2);
    assert_int_equal(r->seq[0], 1);
    assert_int_equal(r->seq[1], 2);
    r = query(l, &(tr_logs_query_t){.trace_id = "t2"});
    assert_int_equal(r->n, 2);
    r = query(l, &(tr_logs_query_t){.q = "order"});
    assert_int_equal(r->n, 2);
    assert_string_equal(r->msg[0], "ORDER shipped");
    r = query(l, &(tr_logs_query_t){.min_level = TR_LOG_WARN});
    assert_int_equal(r->n, 2);
    r = query(l, &(tr_logs_query_t){.since_ns = (T0 + 2) * NS, .until_ns = (T0 + 4) * NS});
    assert_int_equal(r->n, 2);
    assert_int_equal(r->seq[0], 3);
    r = query(l, &(tr_logs_query_t){.limit = 2, .oldest_first = true, .after = 2});
    assert_int_equal(r->n, 2);
    assert_int_equal(r->seq[0], 3);
    assert_int_equal(r->seq[1], 4);
    r = query(l, &(tr_logs_query_t){.limit = 2});
    assert_int_equal(r->n, 2);
    assert_int_equal(r->seq[0], 6);
    r = query(l, &(tr_logs_query_t){.upto = 3, .service = "orders"});
    assert_int_equal(r->n, 2);
    r = query(l, &(tr_logs_query_t){.service = "nobody"});
    assert_int_equal(r->n, 0);
}

static void test_query_filters_memory(void **state)
{
    tr_logs_t *l = open_ok(NULL);
    fill_mixed(l);
    check_filters(l);
    tr_logs_close(l);
}

/* ---- disk ------------------------------------------------------------------------------- */

static void test_query_filters_disk(void **state)
{
    dir_t d;
    dir_make(&d);
    /* A ring of 2: seq 1..4 are answered by SQLite, 5..6 by memory. */
    tr_logs_options_t o = {.data_dir = d.dir, .max_lines = 2};
    tr_logs_t *l = open_ok(&o);
    fill_mixed(l);
    tr_logs_flush(l);
    check_filters(l);
    tr_logs_close(l);
    dir_remove(&d);
}

static void test_persists_across_reopen(void **state)
{
    dir_t d;
    dir_make(&d);
    tr_logs_options_t o = {.data_dir = d.dir, .max_lines = 10};
    tr_logs_t *l = open_ok(&o);
    for (int i = 1; i <= 50; i++) {
        char m[16];
        snprintf(m, sizeof(m), "m%d", i);
        add(l, "svc", m, i % 2 ? "odd" : "even", 0);
    }
    tr_logs_close(l); /* close writes what is queued */
    l = open_ok(&o);
    results_t *r = query(l, &(tr_logs_query_t){.oldest_first = true, .limit = 100});
    assert_int_equal(r->n, 50);
    assert_int_equal(r->seq[0], 1);
    assert_string_equal(r->msg[0], "m1");
    assert_int_equal(r->seq[49], 50);
    r = query(l, &(tr_logs_query_t){.correlation_id = "odd"});
    assert_int_equal(r->n, 25);
    tr_logs_stats_t st;
    tr_logs_stats(l, &st);
    assert_int_equal(st.last_seq, 50);
    assert_true(st.db_bytes > 0);
    /* Numbering continues: cursors stay valid across restarts. */
    add(l, "svc", "after restart", NULL, 0);
    r = query(l, &(tr_logs_query_t){.after = 50});
    assert_int_equal(r->n, 1);
    assert_int_equal(r->seq[0], 51);
    tr_logs_close(l);
    dir_remove(&d);
}

/*
 * Lines handed over without waiting (a supervised process's output in `trellis up`): parsed
 * by the writer, in order, with the hand-over time when the line has none; flush waits for
 * them; close stores what is still waiting.
 */
static void test_ingest_later(void **state)
{
    dir_t d;
    dir_make(&d);
    tr_logs_options_t o = {.data_dir = d.dir, .max_lines = 1000};
    tr_logs_t *l = open_ok(&o);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t before = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    for (int i = 1; i <= 300; i++) {
        char line[96];
        int n =
            i % 3 ? snprintf(line, sizeof(line), "plain %d\n", i)
                  : snprintf(line, sizeof(line),
                             "{\"msg\":\"json %d\",\"level\":\"warn\",\"correlation_id\":\"c%d\"}",
                             i, i);
        tr_logs_ingest_line_later(l, "svc", "svc-0", 1, line, (size_t)n);
    }
    tr_logs_flush(l);
    results_t *r = query(l, &(tr_logs_query_t){.oldest_first = true, .limit = 1000});
    assert_int_equal(r->n, 300);
    assert_string_equal(r->msg[0], "plain 1");
    assert_string_equal(r->msg[2], "json 3");
    for (size_t i = 1; i < r->n; i++)
        assert_true(r->seq[i] > r->seq[i - 1]);
    r = query(l, &(tr_logs_query_t){.correlation_id = "c3"});
    assert_int_equal(r->n, 1);
    r = query(l, &(tr_logs_query_t){.min_level = TR_LOG_WARN, .limit = 1000});
    assert_int_equal(r->n, 100);
    r = query(l, &(tr_logs_query_t){.since_ns = before, .limit = 1000});
    assert_int_equal(r->n, 300); /* no time of their own: the hand-over time */
    /* Handed over just before close: stored, not lost. */
    tr_logs_ingest_line_later(l, "svc", "svc-0", 2, "last words", 10);
    tr_logs_close(l);
    l = open_ok(&o);
    r = query(l, &(tr_logs_query_t){.q = "last words"});
    assert_int_equal(r->n, 1);
    tr_logs_close(l);
    dir_remove(&d);
}

static void test_retention_by_age(void **state)
{
    dir_t d;
    dir_make(&d);
    tr_logs_options_t o = {.data_dir = d.dir, .max_age_ms = 60 * 1000};
    tr_logs_t *l = open_ok(&o);
    int64_t now = (int64_t)time(NULL) * NS;
    for (int i = 0; i < 20; i++)
        add(l, "svc", "old", NULL, now - 3600 * NS);
    for (int i = 0; i < 5; i++)
        add(l, "svc", "new", NULL, now);
    tr_logs_flush(l);
    tr_logs_retain(l, 0);
    results_t *r = query(l, &(tr_logs_query_t){0});
    assert_int_equal(r->n, 5);
    tr_logs_close(l);
    l = open_ok(&o);
    r = query(l, &(tr_logs_query_t){.q = "old"});
    assert_int_equal(r->n, 0);
    r = query(l, &(tr_logs_query_t){.q = "new"});
    assert_int_equal(r->n, 5);
    tr_logs_close(l);
    dir_remove(&d);
}

static void test_retention_by_size(void **state)
{
    dir_t d;
    dir_make(&d);
    uint64_t cap = 128 * 1024;
    tr_logs_options_t o = {.data_dir = d.dir, .max_lines = 10, .max_db_bytes = cap};
    tr_logs_t *l = open_ok(&o);
    char msg[400];
    memset(msg, 'y', sizeof(msg) - 1);
    msg[sizeof(msg) - 1] = '\0';
    for (int i = 0; i < 3000; i++)
        add(l, "svc", msg, NULL, 0);
    tr_logs_flush(l);
    tr_logs_stats_t st;
    tr_logs_stats(l, &st);
    assert_true(st.db_bytes > cap);
    tr_logs_retain(l, 0);
    tr_logs_stats(l, &st);
    assert_true(st.db_bytes <= cap);
    /* The oldest went, the newest stayed. */
    results_t *r = query(l, &(tr_logs_query_t){.oldest_first = true, .limit = 1});
    assert_int_equal(r->n, 1);
    assert_true(r->seq[0] > 1);
    r = query(l, &(tr_logs_query_t){.limit = 1});
    assert_int_equal(r->seq[0], 3000);
    tr_logs_close(l);
    dir_remove(&d);
}

/* ---- threads ---------------------------------------------------------------------------- */

#define THREADS    8
#define PER_THREAD 5000

typedef struct worker_arg_s {
    tr_logs_t *l;
    int id;
} worker_arg_t;

static void *append_worker(void *p)
{
    worker_arg_t *a = p;
    char svc[16];
    snprintf(svc, sizeof(svc), "t%d", a->id);
    for (int i = 0; i < PER_THREAD; i++) {
        if (i % 2)
            add(a->l, svc, "raw", NULL, 0);
        else {
            static const char line[] = "{\"msg\":\"json\",\"level\":\"warn\"}";
            tr_logs_ingest_line(a->l, svc, "x", 1, line, sizeof(line) - 1);
        }
    }
    return NULL;
}

static void test_concurrent_appends(void **state)
{
    dir_t d;
    dir_make(&d);
    tr_logs_options_t o = {.data_dir = d.dir, .max_lines = 1000, .queue_max = THREADS * PER_THREAD};
    tr_logs_t *l = open_ok(&o);
    pthread_t th[THREADS];
    worker_arg_t args[THREADS];
    for (int i = 0; i < THREADS; i++) {
        args[i] = (worker_arg_t){l, i};
        assert_int_equal(pthread_create(&th[i], NULL, append_worker, &args[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    tr_logs_flush(l);
    tr_logs_stats_t st;
    tr_logs_stats(l, &st);
    assert_int_equal(st.last_seq, THREADS * PER_THREAD);
    assert_int_equal(st.persisted_seq, THREADS * PER_THREAD);
    assert_int_equal(st.dropped, 0);
    for (int i = 0; i < THREADS; i++) {
        char svc[16];
        snprintf(svc, sizeof(svc), "t%d", i);
        results_t *r = query(l, &(tr_logs_query_t){.service = svc, .limit = TR_LOGS_MAX_LIMIT});
        assert_int_equal(r->n, PER_THREAD);
        r = query(l, &(tr_logs_query_t){
                         .service = svc, .limit = TR_LOGS_MAX_LIMIT, .min_level = TR_LOG_WARN});
        assert_int_equal(r->n, PER_THREAD / 2);
    }
    tr_logs_close(l);
    dir_remove(&d);
}

/* A full disk queue drops (and counts) instead of blocking; memory keeps every line. */
static void test_queue_full_drops(void **state)
{
    dir_t d;
    dir_make(&d);
    tr_logs_options_t o = {.data_dir = d.dir, .queue_max = 1};
    tr_logs_t *l = open_ok(&o);
    for (int i = 0; i < 20000; i++)
        add(l, "svc", "x", NULL, 0);
    tr_logs_flush(l);
    tr_logs_stats_t st;
    tr_logs_stats(l, &st);
    assert_int_equal(st.last_seq, 20000);
    assert_true(st.dropped > 0);
    assert_int_equal(st.in_memory, 20000);
    tr_logs_close(l);
    dir_remove(&d);
}

/* ---- the logger sink -------------------------------------------------------------------- */

static void test_logger_sink(void **state)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    tr_log_options_t lo = {TR_LOG_INFO, TR_LOG_FORMAT_JSON, fds[1], NULL};
    tr_log_init(&lo);
    tr_logs_t *l = open_ok(NULL);
    tr_logs_attach_logger(l, "trellis", "gw-1");
    tr_log_context_set("corr-9", "trace-9");
    tr_log_warn("upstream slow", TR_LOG_INT("ms", 812));
    tr_log_context_clear();
    char buf[1024];
    ssize_t n = read(fds[0], buf, sizeof(buf) - 1);
    assert_true(n > 0); /* the fd output is unchanged */
    buf[n] = '\0';
    assert_non_null(strstr(buf, "upstream slow"));
    results_t *r = query(l, &(tr_logs_query_t){.correlation_id = "corr-9"});
    assert_int_equal(r->n, 1);
    assert_string_equal(r->msg[0], "upstream slow");
    tr_logs_close(l); /* detaches the sink */
    tr_log_info("after close");
    tr_log_init(NULL);
    close(fds[0]);
    close(fds[1]);
}

/* ---- HTTP ------------------------------------------------------------------------------- */

typedef struct http_fx_s {
    uv_loop_t loop;
    tr_logs_t *logs;
    tr_http_server_t *srv;
    tr_http_client_t *client;
    tr_http_endpoint_t ep;
    int status;
    char body[8192];
    bool done;
    uint64_t t_start, t_done;
} http_fx_t;

static void on_http(tr_http_req_t *req, void *data)
{
    http_fx_t *fx = data;
    if (!tr_logs_handle(fx->logs, req)) tr_http_res_send(req, 404, NULL, "", 0);
}

static void fx_start(http_fx_t *fx)
{
    memset(fx, 0, sizeof(*fx));
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    fx->logs = open_ok(NULL);
    struct sockaddr_storage addr, bound;
    assert_int_equal(tr_net_parse_addr("127.0.0.1:0", &addr), 0);
    int fd;
    assert_int_equal(tr_net_listen(&addr, 1, 64, &fd, &bound), 0);
    tr_http_server_options_t so = {.handler = on_http, .handler_data = fx};
    assert_int_equal(tr_http_server_start(&fx->loop, fd, &so, &fx->srv), 0);
    fx->client = tr_http_client_new(&fx->loop, NULL);
    assert_int_equal(tr_http_endpoint_from_addr(&fx->ep, (struct sockaddr *)&bound), 0);
}

static void on_fetch(tr_http_client_req_t *req, int err, const tr_http_client_response_t *res)
{
    http_fx_t *fx = tr_http_client_req_data(req);
    assert_int_equal(err, 0);
    fx->status = res->status;
    size_t n = res->body_len < sizeof(fx->body) - 1 ? res->body_len : sizeof(fx->body) - 1;
    memcpy(fx->body, res->body, n);
    fx->body[n] = '\0';
    fx->done = true;
    fx->t_done = uv_hrtime();
}

static void fx_fetch(http_fx_t *fx, const char *method, const char *target, const char *body)
{
    fx->done = false;
    fx->t_start = uv_hrtime();
    tr_http_client_request_t r = {.method = method,
                                  .target = target,
                                  .body_mode =
                                      body ? TR_HTTP_CLIENT_BODY_BUFFER : TR_HTTP_CLIENT_BODY_NONE,
                                  .body = body,
                                  .body_len = body ? strlen(body) : 0,
                                  .data = fx};
    assert_int_equal(tr_http_client_fetch(fx->client, &fx->ep, &r, on_fetch, NULL), 0);
    while (!fx->done)
        uv_run(&fx->loop, UV_RUN_ONCE);
}

static void fx_stop(http_fx_t *fx)
{
    tr_logs_shutdown(fx->logs);
    tr_http_server_close(fx->srv, true, NULL, NULL);
    tr_http_client_close(fx->client, NULL);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    tr_logs_close(fx->logs);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
}

static json_t *fx_json(http_fx_t *fx)
{
    json_t *j = json_loads(fx->body, 0, NULL);
    if (!j) fail_msg("not JSON: %s", fx->body);
    return j;
}

static void *late_append(void *p)
{
    usleep(200 * 1000);
    add(p, "late", "arrived", "c-late", 0);
    return NULL;
}

static void test_http_follow_wakes(void **state)
{
    http_fx_t fx;
    fx_start(&fx);
    add(fx.logs, "svc", "before", NULL, 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, late_append, fx.logs), 0);
    fx_fetch(&fx, "GET", "/api/logs?follow=1&after=1&wait=10s", NULL);
    pthread_join(th, NULL);
    assert_int_equal(fx.status, 200);
    uint64_t took_ms = (fx.t_done - fx.t_start) / 1000000;
    assert_true(took_ms >= 150 && took_ms < 2000);
    json_t *j = fx_json(&fx);
    json_t *lines = json_object_get(j, "lines");
    assert_int_equal(json_array_size(lines), 1);
    json_t *ln = json_array_get(lines, 0);
    assert_string_equal(json_string_value(json_object_get(ln, "message")), "arrived");
    assert_string_equal(json_string_value(json_object_get(ln, "correlation_id")), "c-late");
    assert_int_equal(json_integer_value(json_object_get(j, "next")), 2);
    json_decref(j);
    /* Nothing new: the wait ends at its deadline with no lines and the same cursor. */
    fx_fetch(&fx, "GET", "/api/logs?follow=1&after=2&wait=100ms", NULL);
    assert_int_equal(fx.status, 200);
    assert_true((fx.t_done - fx.t_start) / 1000000 >= 90);
    j = fx_json(&fx);
    assert_int_equal(json_array_size(json_object_get(j, "lines")), 0);
    assert_int_equal(json_integer_value(json_object_get(j, "next")), 2);
    json_decref(j);
    fx_stop(&fx);
}

static void test_http_query_post_and_errors(void **state)
{
    http_fx_t fx;
    fx_start(&fx);
    fx_fetch(&fx, "POST", "/api/logs?service=api",
             "plain line\n{\"msg\":\"json line\",\"correlation_id\":\"c7\",\"level\":\"error\"}\n");
    assert_int_equal(fx.status, 200);
    assert_non_null(strstr(fx.body, "\"accepted\":2"));
    fx_fetch(&fx, "POST", "/api/logs",
             "[{\"service\":\"web\",\"msg\":\"from array\",\"correlation_id\":\"c7\"}]");
    assert_int_equal(fx.status, 200);
    fx_fetch(&fx, "GET", "/api/logs?correlation_id=c7&order=oldest", NULL);
    assert_int_equal(fx.status, 200);
    json_t *j = fx_json(&fx);
    json_t *lines = json_object_get(j, "lines");
    assert_int_equal(json_array_size(lines), 2);
    json_t *first = json_array_get(lines, 0);
    assert_string_equal(json_string_value(json_object_get(first, "service")), "api");
    assert_string_equal(json_string_value(json_object_get(first, "level")), "error");
    assert_true(json_is_object(json_object_get(first, "fields")));
    json_t *second = json_array_get(lines, 1);
    assert_string_equal(json_string_value(json_object_get(second, "service")), "web");
    json_decref(j);
    fx_fetch(&fx, "GET", "/api/logs?q=PLAIN", NULL);
    assert_non_null(strstr(fx.body, "plain line"));
    static const char *const bad[] = {"/api/logs?limit=0",           "/api/logs?limit=x",
                                      "/api/logs?since=yesterday",   "/api/logs?level=loud",
                                      "/api/logs?order=up",          "/api/logs?after=-1",
                                      "/api/logs?wait=soon&follow=1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        fx_fetch(&fx, "GET", bad[i], NULL);
        assert_int_equal(fx.status, 400);
        assert_non_null(strstr(fx.body, "\"detail\""));
    }
    fx_fetch(&fx, "POST", "/api/logs", "[1]");
    assert_int_equal(fx.status, 400);
    fx_fetch(&fx, "DELETE", "/api/logs", NULL);
    assert_int_equal(fx.status, 405);
    fx_fetch(&fx, "GET", "/api/other", NULL);
    assert_int_equal(fx.status, 404);
    fx_stop(&fx);
}

static void fx_spin(http_fx_t *fx, int ms)
{
    uint64_t until = uv_hrtime() + (uint64_t)ms * 1000000;
    while (uv_hrtime() < until) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
}

static void fx_start_fetch(http_fx_t *fx, const char *target, tr_http_client_req_t **out)
{
    fx->done = false;
    tr_http_client_request_t r = {.method = "GET", .target = target, .data = fx};
    assert_int_equal(tr_http_client_fetch(fx->client, &fx->ep, &r, on_fetch, out), 0);
}

static void on_cancelled(tr_http_client_req_t *req, int err)
{
    assert_int_not_equal(err, 0);
}

/* A parked follower is answered (no lines, same cursor) when the store shuts down, and a
 * follower whose client goes away is dropped without an answer or a leak. */
static void test_http_shutdown_and_abort(void **state)
{
    http_fx_t fx;
    fx_start(&fx);
    add(fx.logs, "svc", "one", NULL, 0);
    tr_http_client_req_t *gone;
    fx.done = true;
    tr_http_client_request_t r = {
        .method = "GET", .target = "/api/logs?follow=1&wait=1m", .on_complete = on_cancelled};
    assert_int_equal(tr_http_client_request(fx.client, &fx.ep, &r, &gone), 0);
    fx_spin(&fx, 100);
    tr_http_client_cancel(gone);
    fx_start_fetch(&fx, "/api/logs?follow=1&after=1&wait=1m", NULL);
    fx_spin(&fx, 100);
    assert_false(fx.done);
    tr_logs_shutdown(fx.logs);
    while (!fx.done)
        uv_run(&fx.loop, UV_RUN_ONCE);
    assert_int_equal(fx.status, 200);
    json_t *j = fx_json(&fx);
    assert_int_equal(json_array_size(json_object_get(j, "lines")), 0);
    assert_int_equal(json_integer_value(json_object_get(j, "next")), 1);
    json_decref(j);
    fx_stop(&fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_key_aliases),
        cmocka_unit_test(test_parse_levels),
        cmocka_unit_test(test_parse_times),
        cmocka_unit_test(test_parse_plain_lines),
        cmocka_unit_test(test_parse_bad_utf8),
        cmocka_unit_test(test_parse_huge_line),
        cmocka_unit_test(test_ring_eviction),
        cmocka_unit_test(test_query_filters_memory),
        cmocka_unit_test(test_query_filters_disk),
        cmocka_unit_test(test_persists_across_reopen),
        cmocka_unit_test(test_ingest_later),
        cmocka_unit_test(test_retention_by_age),
        cmocka_unit_test(test_retention_by_size),
        cmocka_unit_test(test_concurrent_appends),
        cmocka_unit_test(test_queue_full_drops),
        cmocka_unit_test(test_logger_sink),
        cmocka_unit_test(test_http_follow_wakes),
        cmocka_unit_test(test_http_query_post_and_errors),
        cmocka_unit_test(test_http_shutdown_and_abort),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
