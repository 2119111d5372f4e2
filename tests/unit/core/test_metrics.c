/* Unit tests for metrics: sharded counts from many threads, histograms, exposition text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/buf.h"
#include "trellis/error.h"
#include "trellis/log.h"
#include "trellis/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Registration errors are logged; tests read them back from this in-memory file. */
static int g_log_fd = -1;

static char *take_log(void)
{
    off_t len = lseek(g_log_fd, 0, SEEK_END);
    char *s = calloc(1, (size_t)len + 1);
    assert_int_equal(pread(g_log_fd, s, (size_t)len, 0), len);
    assert_int_equal(ftruncate(g_log_fd, 0), 0);
    lseek(g_log_fd, 0, SEEK_SET);
    return s;
}

static void assert_logged(const char *needle)
{
    char *log = take_log();
    if (!strstr(log, needle)) fail_msg("expected %s in log: %s", needle, log);
    free(log);
}

static int setup(void **state)
{
    g_log_fd = memfd_create("log", 0);
    assert_true(g_log_fd >= 0);
    tr_log_options_t o = TR_LOG_OPTIONS_INIT;
    o.format = TR_LOG_FORMAT_JSON;
    o.fd = g_log_fd;
    assert_int_equal(tr_log_init(&o), 0);
    *state = tr_metrics_create();
    return 0;
}

static int teardown(void **state)
{
    tr_metrics_free(*state);
    tr_log_shutdown();
    close(g_log_fd);
    return 0;
}

/* Renders the registry into a malloc'd C string (caller frees). */
static char *render(tr_metrics_t *reg)
{
    tr_buf_t b = TR_BUF_INIT;
    tr_metrics_render(reg, &b);
    char *s = strdup(tr_buf_cstr(&b));
    tr_buf_free(&b);
    return s;
}

static double answer(void *data)
{
    return *(double *)data;
}

static void test_render_exact(void **state)
{
    tr_metrics_t *reg = *state;
    static const char *const req_labels[] = {"method", "code", NULL};
    tr_metric_t *req = tr_metrics_counter(reg, "http_requests_total",
                                          "Requests handled.\nBy \\ method", req_labels);
    tr_counter_add(tr_metric_series(req, (const char *const[]){"GET", "200", NULL}), 3);
    tr_counter_inc(tr_metric_series(req, (const char *const[]){"a\"b\\c\nd", "500", NULL}));

    tr_metric_t *temp = tr_metrics_gauge(reg, "temperature_celsius", "Temperature.", NULL);
    tr_gauge_set(tr_metric_series(temp, NULL), 21.5);
    tr_gauge_add(tr_metric_series(temp, NULL), -1.25);

    static const double buckets[] = {0.1, 0.5, 1};
    tr_metric_t *lat = tr_metrics_histogram(reg, "latency_seconds", "Latency.",
                                            (const char *const[]){"route", NULL}, buckets, 3);
    tr_series_t *s = tr_metric_series(lat, (const char *const[]){"/a", NULL});
    static const double obs[] = {0.0625, 0.25, 0.5, 0.75, 2};
    for (size_t i = 0; i < 5; i++)
        tr_histogram_observe(s, obs[i]);

    double v = 42;
    tr_metrics_gauge_fn(reg, "answer", "Computed at scrape.", answer, &v);
    tr_metrics_counter(reg, "never_used_total", "Labeled, no series yet.",
                       (const char *const[]){"x", NULL});
    tr_metrics_counter(reg, "idle_total", "Unlabeled, never incremented.", NULL);

    char *out = render(reg);
    const char *want = "# HELP http_requests_total Requests handled.\\nBy \\\\ method\n"
                       "# TYPE http_requests_total counter\n"
                       "http_requests_total{method=\"GET\",code=\"200\"} 3\n"
                       "http_requests_total{method=\"a\\\"b\\\\c\\nd\",code=\"500\"} 1\n"
                       "# HELP temperature_celsius Temperature.\n"
                       "# TYPE temperature_celsius gauge\n"
                       "temperature_celsius 20.25\n"
                       "# HELP latency_seconds Latency.\n"
                       "# TYPE latency_seconds histogram\n"
                       "latency_seconds_bucket{route=\"/a\",le=\"0.1\"} 1\n"
                       "latency_seconds_bucket{route=\"/a\",le=\"0.5\"} 3\n"
                       "latency_seconds_bucket{route=\"/a\",le=\"1\"} 4\n"
                       "latency_seconds_bucket{route=\"/a\",le=\"+Inf\"} 5\n"
                       "latency_seconds_sum{route=\"/a\"} 3.5625\n"
                       "latency_seconds_count{route=\"/a\"} 5\n"
                       "# HELP answer Computed at scrape.\n"
                       "# TYPE answer gauge\n"
                       "answer 42\n"
                       "# HELP never_used_total Labeled, no series yet.\n"
                       "# TYPE never_used_total counter\n"
                       "# HELP idle_total Unlabeled, never incremented.\n"
                       "# TYPE idle_total counter\n"
                       "idle_total 0\n";
    assert_string_equal(out, want);
    free(out);

    v = 43; /* callback gauges are read at each scrape */
    out = render(reg);
    assert_non_null(strstr(out, "\nanswer 43\n"));
    free(out);
}

static void test_gauge_special_values(void **state)
{
    tr_metrics_t *reg = *state;
    tr_metric_t *g = tr_metrics_gauge(reg, "g", "", (const char *const[]){"k", NULL});
    tr_gauge_set(tr_metric_series(g, (const char *const[]){"inf", NULL}), INFINITY);
    tr_gauge_set(tr_metric_series(g, (const char *const[]){"ninf", NULL}), -INFINITY);
    tr_gauge_set(tr_metric_series(g, (const char *const[]){"nan", NULL}), NAN);
    tr_gauge_set(tr_metric_series(g, (const char *const[]){"tenth", NULL}), 0.1);
    tr_gauge_set(tr_metric_series(g, (const char *const[]){"big", NULL}), 1e21);
    char *out = render(reg);
    assert_string_equal(out, "# HELP g \n# TYPE g gauge\n"
                             "g{k=\"inf\"} +Inf\ng{k=\"ninf\"} -Inf\ng{k=\"nan\"} NaN\n"
                             "g{k=\"tenth\"} 0.1\ng{k=\"big\"} 1e+21\n");
    free(out);
}

/* Extracts the value of the sample line starting with `prefix` ("name{...} "). */
static double sample(const char *text, const char *prefix)
{
    const char *p = text;
    size_t n = strlen(prefix);
    while (p && strncmp(p, prefix, n) != 0) {
        p = strchr(p, '\n');
        if (p) p++;
    }
    if (!p) fail_msg("no sample %s in:\n%s", prefix, text);
    return strtod(p + n, NULL);
}

#define COUNT_THREADS    4
#define COUNT_PER_THREAD 1000000

typedef struct work_s {
    tr_series_t *counter;
    tr_series_t *hist;
    tr_series_t *gauge;
    int iterations;
} work_t;

static void *record(void *arg)
{
    work_t *w = arg;
    for (int i = 0; i < w->iterations; i++) {
        tr_counter_inc(w->counter);
        if (w->hist) tr_histogram_observe(w->hist, (i % 4) * 0.5); /* 0, .5, 1, 1.5 */
        if (w->gauge) tr_gauge_add(w->gauge, 1);
    }
    return NULL;
}

static void run_threads(work_t *w, int nthreads)
{
    pthread_t *t = calloc((size_t)nthreads, sizeof(*t));
    for (int i = 0; i < nthreads; i++)
        assert_int_equal(pthread_create(&t[i], NULL, record, w), 0);
    for (int i = 0; i < nthreads; i++)
        pthread_join(t[i], NULL);
    free(t);
}

static void test_threads_sum_exactly(void **state)
{
    tr_metrics_t *reg = *state;
    static const double b[] = {0.5, 1};
    work_t w = {
        .counter = tr_metric_series(tr_metrics_counter(reg, "ops_total", "Ops.", NULL), NULL),
        .hist = tr_metric_series(tr_metrics_histogram(reg, "h", "H.", NULL, b, 2), NULL),
        .gauge = tr_metric_series(tr_metrics_gauge(reg, "inflight", "G.", NULL), NULL),
        .iterations = COUNT_PER_THREAD,
    };
    run_threads(&w, COUNT_THREADS);
    char *out = render(reg);
    const double total = (double)COUNT_THREADS * COUNT_PER_THREAD;
    assert_true(sample(out, "ops_total ") == total);
    assert_true(sample(out, "inflight ") == total);
    assert_true(sample(out, "h_bucket{le=\"0.5\"} ") == total / 2);
    assert_true(sample(out, "h_bucket{le=\"1\"} ") == total * 3 / 4);
    assert_true(sample(out, "h_bucket{le=\"+Inf\"} ") == total);
    assert_true(sample(out, "h_count ") == total);
    assert_true(sample(out, "h_sum ") == total / 4 * 3); /* (0+.5+1+1.5)/4 per observation */
    free(out);
}

typedef struct holder_s {
    tr_series_t *counter;
    pthread_barrier_t *ready; /* holders have taken their shards */
    pthread_barrier_t *done;  /* the hammering threads have finished */
} holder_t;

static void *hold_shard(void *arg)
{
    holder_t *h = arg;
    tr_counter_inc(h->counter);
    pthread_barrier_wait(h->ready);
    pthread_barrier_wait(h->done);
    return NULL;
}

/*
 * Threads beyond the exclusive shards share one; with 63 threads holding every exclusive
 * shard, the hammering threads all land on the shared one and must not lose increments.
 */
static void test_more_threads_than_shards(void **state)
{
    tr_metrics_t *reg = *state;
    enum { HOLDERS = 63, HAMMERS = 8, PER = 200000 };
    tr_series_t *c = tr_metric_series(tr_metrics_counter(reg, "many_total", "", NULL), NULL);
    pthread_barrier_t ready, done;
    pthread_barrier_init(&ready, NULL, HOLDERS + 1);
    pthread_barrier_init(&done, NULL, HOLDERS + 1);
    holder_t h = {c, &ready, &done};
    pthread_t holders[HOLDERS];
    for (int i = 0; i < HOLDERS; i++)
        assert_int_equal(pthread_create(&holders[i], NULL, hold_shard, &h), 0);
    pthread_barrier_wait(&ready);
    work_t w = {.counter = c, .iterations = PER};
    run_threads(&w, HAMMERS);
    pthread_barrier_wait(&done);
    for (int i = 0; i < HOLDERS; i++)
        pthread_join(holders[i], NULL);
    pthread_barrier_destroy(&ready);
    pthread_barrier_destroy(&done);

    /* Exited threads handed their shards back; later threads keep adding to the totals. */
    run_threads(&w, HAMMERS);
    char *out = render(reg);
    assert_true(sample(out, "many_total ") == HOLDERS + 2.0 * HAMMERS * PER);
    free(out);
}

static void test_histogram_buckets(void **state)
{
    tr_metrics_t *reg = *state;
    tr_series_t *s =
        tr_metric_series(tr_metrics_histogram(reg, "d", "Default buckets.", NULL, NULL, 0), NULL);
    tr_histogram_observe(s, 0.0005); /* on a boundary: le is inclusive */
    tr_histogram_observe(s, 0.003);
    tr_histogram_observe(s, 10);
    tr_histogram_observe(s, 11);
    tr_histogram_observe(s, NAN); /* counted in +Inf only */
    tr_histogram_observe(s, -1);  /* below every bucket */
    char *out = render(reg);
    int buckets = 0;
    for (const char *p = out; (p = strstr(p, "d_bucket{")) != NULL; p++)
        buckets++;
    assert_int_equal(buckets, 15); /* 14 defaults + +Inf */
    assert_true(sample(out, "d_bucket{le=\"0.0005\"} ") == 2);
    assert_true(sample(out, "d_bucket{le=\"0.001\"} ") == 2);
    assert_true(sample(out, "d_bucket{le=\"0.005\"} ") == 3);
    assert_true(sample(out, "d_bucket{le=\"5\"} ") == 3);
    assert_true(sample(out, "d_bucket{le=\"10\"} ") == 4);
    assert_true(sample(out, "d_bucket{le=\"+Inf\"} ") == 6);
    assert_true(sample(out, "d_count ") == 6);
    assert_non_null(strstr(out, "d_sum NaN\n"));
    free(out);

    /* A trailing +Inf bound is accepted and not duplicated. */
    static const double with_inf[] = {1, INFINITY};
    tr_series_t *t = tr_metric_series(tr_metrics_histogram(reg, "e", "", NULL, with_inf, 2), NULL);
    tr_histogram_observe(t, 3);
    out = render(reg);
    assert_non_null(
        strstr(out, "e_bucket{le=\"1\"} 0\ne_bucket{le=\"+Inf\"} 1\ne_sum 3\ne_count 1\n"));
    free(out);
}

static void test_duplicate_registration(void **state)
{
    tr_metrics_t *reg = *state;
    const char *const ab[] = {"a", "b", NULL};
    const char *const ba[] = {"b", "a", NULL};
    tr_metric_t *c = tr_metrics_counter(reg, "dup_total", "One.", ab);
    assert_non_null(c);
    assert_ptr_equal(tr_metrics_counter(reg, "dup_total", "Other help is fine.", ab), c);
    assert_null(tr_metrics_gauge(reg, "dup_total", "", ab));
    assert_logged("already registered with another type");
    assert_null(tr_metrics_counter(reg, "dup_total", "", ba));
    assert_logged("already registered with other label names");
    assert_null(tr_metrics_counter(reg, "dup_total", "", NULL));
    assert_logged("\"metric\":\"dup_total\"");

    static const double b1[] = {1, 2}, b2[] = {1, 3};
    tr_metric_t *h = tr_metrics_histogram(reg, "dup_h", "", NULL, b1, 2);
    assert_ptr_equal(tr_metrics_histogram(reg, "dup_h", "", NULL, b1, 2), h);
    assert_null(tr_metrics_histogram(reg, "dup_h", "", NULL, b2, 2));
    assert_logged("other buckets");

    double x = 1, y = 2;
    tr_metric_t *f = tr_metrics_gauge_fn(reg, "dup_fn", "", answer, &x);
    assert_ptr_equal(tr_metrics_gauge_fn(reg, "dup_fn", "", answer, &x), f);
    assert_null(tr_metrics_gauge_fn(reg, "dup_fn", "", answer, &y));
    assert_null(tr_metrics_gauge(reg, "dup_fn", "", NULL));

    /* Only one family per name is rendered. */
    char *out = render(reg);
    assert_non_null(strstr(out, "# TYPE dup_total counter\n"));
    assert_null(strstr(strstr(out, "# TYPE dup_total") + 1, "# TYPE dup_total"));
    free(out);
}

static void test_invalid_registration(void **state)
{
    tr_metrics_t *reg = *state;
    assert_null(tr_metrics_counter(reg, "1abc", "", NULL));
    assert_logged("invalid metric name");
    assert_null(tr_metrics_counter(reg, "a-b", "", NULL));
    assert_null(tr_metrics_counter(reg, "", "", NULL));
    assert_null(tr_metrics_counter(reg, NULL, "", NULL));
    assert_non_null(tr_metrics_counter(reg, "ns:sub_total", "colons are allowed", NULL));
    assert_null(tr_metrics_counter(reg, "x", "", (const char *const[]){"__r", NULL}));
    assert_logged("reserved");
    assert_null(tr_metrics_counter(reg, "x", "", (const char *const[]){"a:b", NULL}));
    assert_null(tr_metrics_counter(reg, "x", "", (const char *const[]){"a", "a", NULL}));
    assert_logged("duplicate label name");
    assert_null(tr_metrics_histogram(reg, "h", "", (const char *const[]){"le", NULL}, NULL, 0));
    assert_logged("label named le");
    static const double bad1[] = {1, 1}, bad2[] = {2, 1}, bad3[] = {NAN};
    assert_null(tr_metrics_histogram(reg, "h", "", NULL, bad1, 2));
    assert_logged("strictly increasing");
    assert_null(tr_metrics_histogram(reg, "h", "", NULL, bad2, 2));
    assert_null(tr_metrics_histogram(reg, "h", "", NULL, bad3, 1));
    assert_null(tr_metrics_gauge_fn(reg, "nofn", "", NULL, NULL));
    assert_null(tr_metrics_counter(NULL, "x", "", NULL));
    char *out = render(reg);
    assert_string_equal(out, "# HELP ns:sub_total colons are allowed\n"
                             "# TYPE ns:sub_total counter\nns:sub_total 0\n");
    free(out);
}

static void test_series(void **state)
{
    tr_metrics_t *reg = *state;
    tr_metric_t *c = tr_metrics_counter(reg, "s_total", "", (const char *const[]){"k", NULL});
    tr_series_t *a = tr_metric_series(c, (const char *const[]){"a", NULL});
    assert_non_null(a);
    assert_ptr_equal(tr_metric_series(c, (const char *const[]){"a", NULL}), a);
    assert_ptr_not_equal(tr_metric_series(c, (const char *const[]){"b", NULL}), a);
    assert_null(tr_metric_series(c, NULL));
    assert_logged("wrong number of label values");
    assert_null(tr_metric_series(c, (const char *const[]){"a", "b", NULL}));
    assert_null(tr_metric_series(NULL, NULL));
    double v = 0;
    assert_null(tr_metric_series(tr_metrics_gauge_fn(reg, "f", "", answer, &v), NULL));

    /* Wrong-type and NULL series are ignored rather than corrupting anything. */
    tr_gauge_set(a, 5);
    tr_histogram_observe(a, 1);
    tr_counter_add(NULL, 1);
    tr_gauge_set(NULL, 1);
    tr_gauge_add(NULL, 1);
    tr_histogram_observe(NULL, 1);
    tr_series_t *g = tr_metric_series(tr_metrics_gauge(reg, "gg", "", NULL), NULL);
    tr_counter_add(g, 7);
    tr_counter_add(a, 2);
    char *out = render(reg);
    assert_non_null(strstr(out, "s_total{k=\"a\"} 2\ns_total{k=\"b\"} 0\n"));
    assert_non_null(strstr(out, "\ngg 0\n"));
    free(out);
}

static void test_process_metrics(void **state)
{
    tr_metrics_t *reg = *state;
    assert_int_equal(tr_metrics_register_process(reg), 0);
    assert_int_equal(tr_metrics_register_process(reg), 0); /* idempotent */
    /* Burn 50 ms of CPU so the CPU counter has something to show at 10 ms resolution. */
    struct timespec ts;
    do {
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    } while (ts.tv_sec == 0 && ts.tv_nsec < 50000000);
    char *out = render(reg);
    assert_true(sample(out, "process_resident_memory_bytes ") > 1024 * 1024 / 2);
    assert_true(sample(out, "process_virtual_memory_bytes ") >=
                sample(out, "process_resident_memory_bytes "));
    assert_true(sample(out, "process_open_fds ") >= 3);
    assert_true(sample(out, "process_max_fds ") >= 64);
    assert_true(sample(out, "process_cpu_seconds_total ") >= 0.02);
    double start = sample(out, "process_start_time_seconds ");
    double now = (double)time(NULL);
    assert_true(start <= now + 1 && start > now - 3600);
    assert_non_null(strstr(out, "# TYPE process_cpu_seconds_total counter\n"));
    free(out);
}

static void test_default_registry(void **state)
{
    tr_metrics_t *d = tr_metrics_default();
    assert_non_null(d);
    assert_ptr_equal(tr_metrics_default(), d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_render_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gauge_special_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads_sum_exactly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_more_threads_than_shards, setup, teardown),
        cmocka_unit_test_setup_teardown(test_histogram_buckets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_registration, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_registration, setup, teardown),
        cmocka_unit_test_setup_teardown(test_series, setup, teardown),
        cmocka_unit_test_setup_teardown(test_process_metrics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_default_registry, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
