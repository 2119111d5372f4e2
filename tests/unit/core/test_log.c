/* Unit tests for the structured logger: JSON lines, escaping, context, levels, text, sinks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "trellis/error.h"
#include "trellis/log.h"

#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <termios.h>
#include <unistd.h>

/*
 * Log output goes to an in-memory file that each test reads back from the start. It is
 * opened for appending because memfd files, unlike files from open(2), do not serialise the
 * file offset between threads, so concurrent writes would overwrite each other.
 */
static int g_fd = -1;

static int open_capture(void)
{
    int fd = memfd_create("log", 0);
    assert_true(fd >= 0);
    assert_int_equal(fcntl(fd, F_SETFL, O_APPEND), 0);
    return fd;
}

/* Returns everything written since the last call (caller frees) and empties the file. */
static char *take_output(void)
{
    off_t len = lseek(g_fd, 0, SEEK_END);
    char *s = calloc(1, (size_t)len + 1);
    assert_int_equal(pread(g_fd, s, (size_t)len, 0), len);
    assert_int_equal(ftruncate(g_fd, 0), 0);
    lseek(g_fd, 0, SEEK_SET);
    return s;
}

static void init_json(tr_log_level_t level, const char *service)
{
    tr_log_options_t o = TR_LOG_OPTIONS_INIT;
    o.level = level;
    o.format = TR_LOG_FORMAT_JSON;
    o.fd = g_fd;
    o.service = service;
    assert_int_equal(tr_log_init(&o), 0);
}

static int setup(void **state)
{
    g_fd = open_capture();
    init_json(TR_LOG_DEBUG, NULL);
    return 0;
}

static int teardown(void **state)
{
    tr_log_set_sink(NULL, NULL);
    tr_log_context_clear();
    tr_log_shutdown();
    close(g_fd);
    g_fd = -1;
    return 0;
}

/* Parses the single line in the output as a JSON object (caller decrefs). */
static json_t *take_one_json(void)
{
    char *out = take_output();
    size_t len = strlen(out);
    assert_true(len > 1);
    assert_int_equal(out[len - 1], '\n');
    assert_null(memchr(out, '\n', len - 1)); /* exactly one line */
    json_error_t err;
    json_t *j = json_loads(out, 0, &err);
    if (!j) fail_msg("not JSON (%s): %s", err.text, out);
    assert_true(json_is_object(j));
    free(out);
    return j;
}

static const char *jstr(json_t *j, const char *key)
{
    json_t *v = json_object_get(j, key);
    if (!json_is_string(v)) fail_msg("%s is not a string", key);
    return json_string_value(v);
}

static void test_json_fields(void **state)
{
    tr_log_info("listening", TR_LOG_STR("addr", "127.0.0.1:8080"), TR_LOG_INT("workers", 2),
                TR_LOG_INT("neg", INT64_MIN), TR_LOG_UINT("bytes", 1ull << 40),
                TR_LOG_DOUBLE("ratio", 0.1), TR_LOG_DOUBLE("nan", 0.0 / 0.0),
                TR_LOG_BOOL("tls", true), TR_LOG_ERR(TR_ECONFIG));
    json_t *j = take_one_json();
    const char *ts = jstr(j, "ts");
    /* 2026-11-22T10:00:00.123Z */
    assert_int_equal(strlen(ts), 24);
    assert_int_equal(ts[10], 'T');
    assert_int_equal(ts[19], '.');
    assert_int_equal(ts[23], 'Z');
    assert_string_equal(jstr(j, "level"), "info");
    assert_string_equal(jstr(j, "msg"), "listening");
    assert_string_equal(jstr(j, "addr"), "127.0.0.1:8080");
    assert_int_equal(json_integer_value(json_object_get(j, "workers")), 2);
    assert_true(json_integer_value(json_object_get(j, "neg")) == INT64_MIN);
    assert_true(json_integer_value(json_object_get(j, "bytes")) == (json_int_t)(1ll << 40));
    assert_true(json_real_value(json_object_get(j, "ratio")) == 0.1);
    assert_true(json_is_null(json_object_get(j, "nan")));
    assert_true(json_is_true(json_object_get(j, "tls")));
    assert_string_equal(jstr(j, "error"), "TR_ECONFIG");
    assert_string_equal(jstr(j, "error_message"), tr_strerror(TR_ECONFIG));
    assert_null(json_object_get(j, "correlation_id"));
    assert_null(json_object_get(j, "trace_id"));
    assert_null(json_object_get(j, "service"));
    json_decref(j);
}

static void test_key_order_and_no_fields(void **state)
{
    tr_log_warn("plain");
    char *out = take_output();
    assert_non_null(strstr(out, "\",\"level\":\"warn\",\"msg\":\"plain\"}\n"));
    assert_memory_equal(out, "{\"ts\":\"", 7);
    free(out);
}

static void test_uint_max_is_exact(void **state)
{
    tr_log_info("big", TR_LOG_UINT("n", UINT64_MAX));
    char *out = take_output();
    assert_non_null(strstr(out, "\"n\":18446744073709551615}"));
    free(out);
}

static void test_escaping(void **state)
{
    const char *nasty = "q\"b\\s/n\nr\rt\tc\x01\x1f"
                        "e\x1b[31m del\x7f";
    tr_log_info(nasty, TR_LOG_STR("v", nasty), TR_LOG_STR("we\"ird\nkey", "x"));
    char *raw = take_output();
    for (const char *p = raw; *p; p++)
        if ((unsigned char)*p < 0x20 && p[1] != '\0') fail_msg("raw control byte in %s", raw);
    assert_non_null(strstr(raw, "\\u0001"));
    assert_non_null(strstr(raw, "\\u001b"));
    assert_non_null(strstr(raw, "\\u007f"));
    json_t *j = json_loads(raw, 0, NULL);
    assert_non_null(j);
    assert_string_equal(jstr(j, "msg"), nasty);
    assert_string_equal(jstr(j, "v"), nasty);
    assert_string_equal(jstr(j, "we\"ird\nkey"), "x");
    json_decref(j);
    free(raw);
}

static void test_invalid_utf8_is_replaced(void **state)
{
    /* Valid é and €, then: stray continuation, 0xff, overlong '/', surrogate, truncated. */
    tr_log_info("utf8",
                TR_LOG_STR("v", "\xc3\xa9\xe2\x82\xac|\x80|\xff|\xc0\xaf|\xed\xa0\x80|\xe2\x82"));
    json_t *j = take_one_json(); /* jansson rejects invalid UTF-8, so parsing is the check */
    const char *r = "\xef\xbf\xbd";
    char want[128];
    snprintf(want, sizeof(want), "\xc3\xa9\xe2\x82\xac|%s|%s|%s%s|%s%s%s|%s%s", r, r, r, r, r, r, r,
             r, r);
    assert_string_equal(jstr(j, "v"), want);
    json_decref(j);
}

static void test_null_strings(void **state)
{
    tr_log_error(NULL, TR_LOG_STR("v", NULL), TR_LOG_STR(NULL, "k"));
    json_t *j = take_one_json();
    assert_true(json_is_null(json_object_get(j, "msg")));
    assert_true(json_is_null(json_object_get(j, "v")));
    assert_string_equal(jstr(j, "null"), "k");
    json_decref(j);
    tr_log_write(TR_LOG_INFO, "no fields", NULL, 3);
    json_decref(take_one_json());
}

static void *log_from_other_thread(void *arg)
{
    tr_log_info("other thread");
    return NULL;
}

static void test_context(void **state)
{
    tr_log_context_set("corr-1", "4bf92f3577b34da6a3ce929d0e0e4736");
    tr_log_info("in request", TR_LOG_INT("status", 200));
    json_t *j = take_one_json();
    assert_string_equal(jstr(j, "correlation_id"), "corr-1");
    assert_string_equal(jstr(j, "trace_id"), "4bf92f3577b34da6a3ce929d0e0e4736");
    json_decref(j);

    /* The context is per thread: another thread's line has none. */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, log_from_other_thread, NULL), 0);
    pthread_join(t, NULL);
    j = take_one_json();
    assert_null(json_object_get(j, "correlation_id"));
    json_decref(j);

    tr_log_context_set("corr-2", NULL);
    tr_log_info("only correlation");
    j = take_one_json();
    assert_string_equal(jstr(j, "correlation_id"), "corr-2");
    assert_null(json_object_get(j, "trace_id"));
    json_decref(j);

    tr_log_context_clear();
    tr_log_info("after");
    j = take_one_json();
    assert_null(json_object_get(j, "correlation_id"));
    assert_null(json_object_get(j, "trace_id"));
    json_decref(j);
}

static int g_evaluated;

static int64_t side_effect(void)
{
    g_evaluated++;
    return 1;
}

static void test_levels_filter(void **state)
{
    init_json(TR_LOG_WARN, NULL);
    g_evaluated = 0;
    tr_log_debug("d", TR_LOG_INT("x", side_effect()));
    tr_log_info("i", TR_LOG_INT("x", side_effect()));
    assert_int_equal(g_evaluated, 0); /* disabled levels do not evaluate their fields */
    char *out = take_output();
    assert_string_equal(out, "");
    free(out);
    tr_log_warn("w", TR_LOG_INT("x", side_effect()));
    tr_log_error("e");
    assert_int_equal(g_evaluated, 1);
    out = take_output();
    assert_non_null(strstr(out, "\"level\":\"warn\",\"msg\":\"w\""));
    assert_non_null(strstr(out, "\"level\":\"error\",\"msg\":\"e\""));
    free(out);

    assert_false(tr_log_enabled(TR_LOG_INFO));
    tr_log_set_level(TR_LOG_DEBUG);
    assert_int_equal(tr_log_get_level(), TR_LOG_DEBUG);
    assert_true(tr_log_enabled(TR_LOG_DEBUG));
}

static void test_level_parse(void **state)
{
    assert_int_equal(tr_log_level_parse("debug"), TR_LOG_DEBUG);
    assert_int_equal(tr_log_level_parse("info"), TR_LOG_INFO);
    assert_int_equal(tr_log_level_parse("warn"), TR_LOG_WARN);
    assert_int_equal(tr_log_level_parse("WARNING"), TR_LOG_WARN);
    assert_int_equal(tr_log_level_parse("Error"), TR_LOG_ERROR);
    assert_int_equal(tr_log_level_parse("fatal"), TR_ECONFIG);
    assert_int_equal(tr_log_level_parse(""), TR_ECONFIG);
    assert_int_equal(tr_log_level_parse(NULL), TR_ECONFIG);
    assert_int_equal(tr_log_format_parse("json"), TR_LOG_FORMAT_JSON);
    assert_int_equal(tr_log_format_parse("TEXT"), TR_LOG_FORMAT_TEXT);
    assert_int_equal(tr_log_format_parse("auto"), TR_LOG_FORMAT_AUTO);
    assert_int_equal(tr_log_format_parse("xml"), TR_ECONFIG);
    assert_string_equal(tr_log_level_name(TR_LOG_WARN), "warn");
    assert_string_equal(tr_log_level_name((tr_log_level_t)42), "unknown");

    tr_log_options_t o = TR_LOG_OPTIONS_INIT;
    o.level = (tr_log_level_t)9;
    assert_int_equal(tr_log_init(&o), TR_ECONFIG);
    o.level = TR_LOG_INFO;
    o.format = (tr_log_format_t)7;
    assert_int_equal(tr_log_init(&o), TR_ECONFIG);
}

static void test_service(void **state)
{
    char name[] = "orders";
    init_json(TR_LOG_INFO, name);
    name[0] = 'X'; /* the logger keeps its own copy */
    tr_log_info("hello");
    json_t *j = take_one_json();
    assert_string_equal(jstr(j, "service"), "orders");
    json_decref(j);
}

static void init_text(int fd, tr_log_format_t format)
{
    tr_log_options_t o = TR_LOG_OPTIONS_INIT;
    o.format = format;
    o.fd = fd;
    assert_int_equal(tr_log_init(&o), 0);
}

static void assert_time_prefix(const char *line)
{
    /* HH:MM:SS.mmm followed by a space */
    const char *shape = "99:99:99.999 ";
    for (size_t i = 0; i < strlen(shape); i++) {
        if (shape[i] == '9')
            assert_true(line[i] >= '0' && line[i] <= '9');
        else
            assert_int_equal(line[i], shape[i]);
    }
}

static void test_text_format(void **state)
{
    init_text(g_fd, TR_LOG_FORMAT_TEXT);
    tr_log_context_set("c1", NULL);
    tr_log_info("listening", TR_LOG_STR("addr", "127.0.0.1:8080"), TR_LOG_INT("workers", 2),
                TR_LOG_STR("path", "a b=\"c\""), TR_LOG_STR("empty", ""), TR_LOG_STR("nul", NULL),
                TR_LOG_BOOL("ok", false), TR_LOG_DOUBLE("ratio", 0.5), TR_LOG_ERR(TR_ENOTFOUND));
    tr_log_warn("two\nlines");
    char *out = take_output();
    assert_time_prefix(out);
    const char *want1 = "INFO  listening addr=127.0.0.1:8080 workers=2 path=\"a b=\\\"c\\\"\" "
                        "empty=\"\" nul=null ok=false ratio=0.5 error=TR_ENOTFOUND "
                        "error_message=\"not found\" correlation_id=c1\n";
    assert_memory_equal(out + 13, want1, strlen(want1));
    const char *line2 = out + 13 + strlen(want1);
    assert_time_prefix(line2);
    assert_string_equal(line2 + 13, "WARN  two\\nlines correlation_id=c1\n");
    assert_null(strchr(out, '\x1b')); /* not a TTY: no colour */
    free(out);
}

/* Opens a pseudo-terminal in raw mode so what the logger writes is read back unchanged. */
static void open_pty(int *master, int *slave)
{
    *master = posix_openpt(O_RDWR | O_NOCTTY);
    assert_true(*master >= 0);
    assert_int_equal(grantpt(*master), 0);
    assert_int_equal(unlockpt(*master), 0);
    *slave = open(ptsname(*master), O_RDWR | O_NOCTTY);
    assert_true(*slave >= 0);
    struct termios tio;
    assert_int_equal(tcgetattr(*slave, &tio), 0);
    cfmakeraw(&tio);
    assert_int_equal(tcsetattr(*slave, TCSANOW, &tio), 0);
}

static char *log_on_tty(const char *no_color)
{
    int master, slave;
    open_pty(&master, &slave);
    if (no_color)
        setenv("NO_COLOR", no_color, 1);
    else
        unsetenv("NO_COLOR");
    init_text(slave, TR_LOG_FORMAT_AUTO);
    tr_log_error("boom", TR_LOG_INT("n", 1));
    char *buf = calloc(1, 512);
    ssize_t n = read(master, buf, 511);
    assert_true(n > 0);
    unsetenv("NO_COLOR");
    close(slave);
    close(master);
    return buf;
}

static void test_auto_format_on_tty(void **state)
{
    char *out = log_on_tty(NULL);
    assert_time_prefix(out);
    assert_string_equal(out + 13, "\x1b[31mERROR\x1b[0m boom \x1b[2mn=\x1b[0m1\n");
    free(out);

    out = log_on_tty("1");
    assert_string_equal(out + 13, "ERROR boom n=1\n");
    free(out);
}

static void test_auto_format_off_tty(void **state)
{
    init_text(g_fd, TR_LOG_FORMAT_AUTO);
    tr_log_info("piped");
    json_decref(take_one_json());
}

typedef struct sink_seen_s {
    int calls;
    tr_log_level_t level;
    char msg[64];
    char json[512];
    size_t json_len;
    char corr[32];
} sink_seen_t;

static void on_record(const tr_log_record_t *r, void *data)
{
    sink_seen_t *seen = data;
    seen->calls++;
    seen->level = r->level;
    snprintf(seen->msg, sizeof(seen->msg), "%s", r->msg);
    snprintf(seen->json, sizeof(seen->json), "%s", r->json);
    seen->json_len = r->json_len;
    snprintf(seen->corr, sizeof(seen->corr), "%s", r->correlation_id ? r->correlation_id : "-");
    /* A sink that logs must not recurse into itself. */
    tr_log_info("from sink");
}

static void test_sink(void **state)
{
    sink_seen_t seen = {0};
    tr_log_set_sink(on_record, &seen);
    tr_log_context_set("c9", NULL);
    tr_log_warn("stored", TR_LOG_INT("n", 3));
    assert_int_equal(seen.calls, 1);
    assert_int_equal(seen.level, TR_LOG_WARN);
    assert_string_equal(seen.msg, "stored");
    assert_string_equal(seen.corr, "c9");
    assert_int_equal(seen.json_len, strlen(seen.json));
    char *out = take_output();
    /* The fd got the sink's record line, then the sink's own line. */
    size_t len = strlen(seen.json);
    assert_memory_equal(out, seen.json, len);
    assert_int_equal(out[len], '\n');
    assert_non_null(strstr(out + len + 1, "\"msg\":\"from sink\""));
    free(out);

    /* With text output the sink still receives JSON. */
    init_text(g_fd, TR_LOG_FORMAT_TEXT);
    tr_log_info("as text");
    assert_int_equal(seen.calls, 2);
    json_t *j = json_loads(seen.json, 0, NULL);
    assert_non_null(j);
    assert_string_equal(jstr(j, "msg"), "as text");
    json_decref(j);
    free(take_output());

    tr_log_set_sink(NULL, NULL);
    tr_log_info("no sink");
    assert_int_equal(seen.calls, 2);
    free(take_output());
}

#define THREADS          8
#define LINES_PER_THREAD 2000

static void *log_many(void *arg)
{
    char pad[301];
    memset(pad, 'a' + (int)(intptr_t)arg, 300);
    pad[300] = '\0';
    for (int i = 0; i < LINES_PER_THREAD; i++)
        tr_log_info("line", TR_LOG_INT("thread", (intptr_t)arg), TR_LOG_INT("i", i),
                    TR_LOG_STR("pad", pad));
    return NULL;
}

static void test_threads_do_not_interleave(void **state)
{
    pthread_t t[THREADS];
    for (intptr_t i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, log_many, (void *)i), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    char *out = take_output();
    int count[THREADS] = {0};
    char *save = NULL;
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(line, 0, NULL);
        if (!j) fail_msg("interleaved line: %.80s", line);
        json_int_t th = json_integer_value(json_object_get(j, "thread"));
        assert_true(th >= 0 && th < THREADS);
        assert_int_equal(json_integer_value(json_object_get(j, "i")), count[th]);
        count[th]++;
        assert_int_equal(strlen(jstr(j, "pad")), 300);
        json_decref(j);
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(count[i], LINES_PER_THREAD);
    free(out);
}

static void test_huge_line(void **state)
{
    size_t n = 200 * 1024;
    char *big = malloc(n + 1);
    memset(big, 'x', n);
    big[n] = '\0';
    tr_log_info("big", TR_LOG_STR("v", big));
    json_t *j = take_one_json();
    assert_int_equal(strlen(jstr(j, "v")), n);
    json_decref(j);
    free(big);
    tr_log_info("small after big");
    json_decref(take_one_json());
}

static void test_write_failure_counts_drop(void **state)
{
    int fd = open_capture();
    tr_log_options_t o = TR_LOG_OPTIONS_INIT;
    o.format = TR_LOG_FORMAT_JSON;
    o.fd = fd;
    assert_int_equal(tr_log_init(&o), 0);
    close(fd); /* now EBADF */
    uint64_t before = tr_log_dropped();
    tr_log_info("lost");
    assert_int_equal(tr_log_dropped(), before + 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_json_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_order_and_no_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uint_max_is_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_escaping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_utf8_is_replaced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_null_strings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_context, setup, teardown),
        cmocka_unit_test_setup_teardown(test_levels_filter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_level_parse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service, setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auto_format_on_tty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auto_format_off_tty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sink, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads_do_not_interleave, setup, teardown),
        cmocka_unit_test_setup_teardown(test_huge_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_failure_counts_drop, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
