/* Unit tests for src/core/config.c: loading YAML/JSON, value parsers, getters and messages. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "trellis/config.h"
#include "trellis/error.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char load_err[1024];

/* Loads text named "t.yaml", failing the test if it does not load. */
static tr_config_t *load_ok(const char *text)
{
    tr_config_t *cfg = NULL;
    int rc = tr_config_load_string("t.yaml", text, strlen(text), &cfg, load_err, sizeof(load_err));
    if (rc != 0) fail_msg("load failed (%d): %s", rc, load_err);
    assert_string_equal(load_err, "");
    return cfg;
}

/* Loads text expected to fail with `code`; returns the message. */
static const char *load_fails(const char *text, int code)
{
    tr_config_t *cfg = (tr_config_t *)1;
    int rc = tr_config_load_string("t.yaml", text, strlen(text), &cfg, load_err, sizeof(load_err));
    assert_int_equal(rc, code);
    assert_null(cfg);
    return load_err;
}

static json_t *child(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (!v) fail_msg("missing key %s", key);
    return v;
}

/* ---- tr_parse_duration_ms ---- */

static void test_duration_good(void **state)
{
    static const struct {
        const char *in;
        uint64_t ms;
    } cases[] = {
        {"250ms", 250},
        {"2s", 2000},
        {"1.5s", 1500},
        {"1m", 60000},
        {"1h", 3600000},
        {"1d", 86400000},
        {"500us", 1},
        {"1500us", 2},
        {"0", 0},
        {"0s", 0},
        {"0ms", 0},
        {"1m30s", 90000},
        {"0.5ms", 1},
        {"2.25m", 135000},
        {"1h2m3s4ms", 3723004},
        {"1d12h", 129600000},
        {"1s500us", 1001},
        {"10000d", 864000000000ULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t ms = 12345;
        if (tr_parse_duration_ms(cases[i].in, &ms) != 0) fail_msg("rejected %s", cases[i].in);
        if (ms != cases[i].ms) fail_msg("%s gave %llu", cases[i].in, (unsigned long long)ms);
    }
}

static void test_duration_bad(void **state)
{
    static const char *const bad[] = {
        "",     "10",   "10 s", " 10s",  "10s ", "-5s",  "10sec",
        "10S",  "1s1m", "1s1s", "1.s",   ".5s",  "abc",  "s",
        "1e3s", "+5s",  "5ns",  "1m-1s", "00",   "1,5s", "1.0000000000000000001s",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t ms = 777;
        int rc = tr_parse_duration_ms(bad[i], &ms);
        if (rc != TR_EPARSE) fail_msg("\"%s\" gave %d, %llu", bad[i], rc, (unsigned long long)ms);
        assert_int_equal(ms, 777);
    }
    uint64_t ms;
    assert_int_equal(tr_parse_duration_ms("99999999999999999999s", &ms), TR_ETOOLARGE);
    /* 2^64 microseconds is about 213503982.3 days. */
    assert_int_equal(tr_parse_duration_ms("213503982d", &ms), 0);
    assert_int_equal(ms, 213503982ULL * 86400000);
    assert_int_equal(tr_parse_duration_ms("213503983d", &ms), TR_ETOOLARGE);
    assert_int_equal(tr_parse_duration_ms("213503982d23h59m", &ms), TR_ETOOLARGE);
}

/* ---- tr_parse_size ---- */

static void test_size_good(void **state)
{
    static const struct {
        const char *in;
        uint64_t bytes;
    } cases[] = {
        {"16KiB", 16384},
        {"1MiB", 1048576},
        {"2GiB", 2147483648ULL},
        {"1TiB", 1099511627776ULL},
        {"16KB", 16000},
        {"16kB", 16000},
        {"16kb", 16000},
        {"16kib", 16384},
        {"512B", 512},
        {"1024", 1024},
        {"0", 0},
        {"1.5MiB", 1572864},
        {"1.5KB", 1500},
        {"0.001KiB", 2},
        {"3GB", 3000000000ULL},
        {"15999999TiB", 15999999ULL << 40},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t b = 1;
        if (tr_parse_size(cases[i].in, &b) != 0) fail_msg("rejected %s", cases[i].in);
        if (b != cases[i].bytes) fail_msg("%s gave %llu", cases[i].in, (unsigned long long)b);
    }
}

static void test_size_bad(void **state)
{
    static const char *const bad[] = {"",       "16 KiB", "16K",  "16KiBs", "-1",
                                      "1.5",    "1.5B",   "abc",  "KiB",    "16Ki",
                                      "16MiB.", "1e3",    "0x10", "16KiB ", "+16"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t b = 9;
        int rc = tr_parse_size(bad[i], &b);
        if (rc != TR_EPARSE) fail_msg("\"%s\" gave %d", bad[i], rc);
        assert_int_equal(b, 9);
    }
    uint64_t b;
    assert_int_equal(tr_parse_size("99999999999999999999", &b), TR_ETOOLARGE);
    assert_int_equal(tr_parse_size("16777216TiB", &b), TR_ETOOLARGE); /* exactly 2^64 */
    assert_int_equal(tr_parse_size("16777215TiB", &b), 0);
    assert_int_equal(b, 16777215ULL << 40);
}

/* ---- tr_parse_rate ---- */

static void test_rate_good(void **state)
{
    static const struct {
        const char *in;
        double count;
        uint64_t per_ms;
    } cases[] = {
        {"100/minute", 100, 60000},   {"100/min", 100, 60000},
        {"100/m", 100, 60000},        {"10/s", 10, 1000},
        {"10/second", 10, 1000},      {"5/sec", 5, 1000},
        {"1000/hour", 1000, 3600000}, {"1000/h", 1000, 3600000},
        {"1000/hr", 1000, 3600000},   {"50/day", 50, 86400000},
        {"50/d", 50, 86400000},       {"100/30s", 100, 30000},
        {"0.5/s", 0.5, 1000},         {"100/Minute", 100, 60000},
        {"100/1m30s", 100, 90000},    {"0/s", 0, 1000},
        {"7/250ms", 7, 250},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tr_rate_t r = {0, 0};
        if (tr_parse_rate(cases[i].in, &r) != 0) fail_msg("rejected %s", cases[i].in);
        assert_true(r.count == cases[i].count);
        assert_int_equal(r.per_ms, cases[i].per_ms);
    }
}

static void test_rate_bad(void **state)
{
    static const char *const bad[] = {
        "",      "100",      "100/",          "/s",    "100/minutes", "100 / minute", "100/ s",
        "-1/s",  "100/0s",   "100/fortnight", "abc/s", "100/30",      "100/s/s",      "100/s ",
        "1e2/s", "100per/s",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        tr_rate_t r = {3, 4};
        int rc = tr_parse_rate(bad[i], &r);
        if (rc != TR_EPARSE) fail_msg("\"%s\" gave %d", bad[i], rc);
        assert_true(r.count == 3 && r.per_ms == 4);
    }
    tr_rate_t r;
    assert_int_equal(tr_parse_rate("99999999999999999999/s", &r), TR_ETOOLARGE);
    assert_int_equal(tr_parse_rate("1/213503983d", &r), TR_ETOOLARGE);
}

/* ---- tr_parse_percent ---- */

static void test_percent(void **state)
{
    double f = -1;
    assert_int_equal(tr_parse_percent("1%", &f), 0);
    assert_true(fabs(f - 0.01) < 1e-12);
    assert_int_equal(tr_parse_percent("0.5%", &f), 0);
    assert_true(fabs(f - 0.005) < 1e-12);
    assert_int_equal(tr_parse_percent("100%", &f), 0);
    assert_true(f == 1.0);
    assert_int_equal(tr_parse_percent("0%", &f), 0);
    assert_true(f == 0.0);
    assert_int_equal(tr_parse_percent("12.5%", &f), 0);
    assert_true(fabs(f - 0.125) < 1e-12);

    static const char *const bad[] = {"",     "50",  "-1%", "50 %", "50%%", "%",
                                      "abc%", "0.5", "5% ", "1e1%", ".5%"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        f = 42;
        int rc = tr_parse_percent(bad[i], &f);
        if (rc != TR_EPARSE) fail_msg("\"%s\" gave %d", bad[i], rc);
        assert_true(f == 42);
    }
    assert_int_equal(tr_parse_percent("101%", &f), TR_ETOOLARGE);
    assert_int_equal(tr_parse_percent("100.01%", &f), TR_ETOOLARGE);
    assert_int_equal(tr_parse_percent("99999999999999999999%", &f), TR_ETOOLARGE);
}

/* ---- loading ---- */

static void test_yaml_types(void **state)
{
    tr_config_t *cfg = load_ok("n1: null\nn2: ~\nn3:\nb1: true\nb2: True\nb3: FALSE\n"
                               "i1: 42\ni2: -7\ni3: 0x1F\ni4: 0o17\ni5: +3\ni6: 007\n"
                               "f1: 1.5\nf2: 1e3\nf3: .5\nf4: -2.5E-1\n"
                               "s1: \"42\"\ns2: 'true'\ns3: yes\ns4: 0x\ns5: 1_000\n"
                               "s6: !!str 12\ns7: \"~\"\ns8: hello world\ns9: ''\ns10: 0o8\n"
                               "l: [1, two, 3.0]\nm: {a: 1}\n");
    json_t *r = tr_config_root(cfg);
    assert_true(json_is_object(r));
    assert_true(json_is_null(child(r, "n1")));
    assert_true(json_is_null(child(r, "n2")));
    assert_true(json_is_null(child(r, "n3")));
    assert_true(json_is_true(child(r, "b1")));
    assert_true(json_is_true(child(r, "b2")));
    assert_true(json_is_false(child(r, "b3")));
    assert_int_equal(json_integer_value(child(r, "i1")), 42);
    assert_int_equal(json_integer_value(child(r, "i2")), -7);
    assert_int_equal(json_integer_value(child(r, "i3")), 31);
    assert_int_equal(json_integer_value(child(r, "i4")), 15);
    assert_int_equal(json_integer_value(child(r, "i5")), 3);
    assert_int_equal(json_integer_value(child(r, "i6")), 7);
    assert_true(json_is_real(child(r, "f1")) && json_real_value(child(r, "f1")) == 1.5);
    assert_true(json_is_real(child(r, "f2")) && json_real_value(child(r, "f2")) == 1000.0);
    assert_true(json_real_value(child(r, "f3")) == 0.5);
    assert_true(json_real_value(child(r, "f4")) == -0.25);
    static const struct {
        const char *key, *value;
    } strings[] = {{"s1", "42"},    {"s2", "true"}, {"s3", "yes"}, {"s4", "0x"},
                   {"s5", "1_000"}, {"s6", "12"},   {"s7", "~"},   {"s8", "hello world"},
                   {"s9", ""},      {"s10", "0o8"}};
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
        json_t *v = child(r, strings[i].key);
        if (!json_is_string(v)) fail_msg("%s is not a string", strings[i].key);
        assert_string_equal(json_string_value(v), strings[i].value);
    }
    json_t *l = child(r, "l");
    assert_int_equal(json_array_size(l), 3);
    assert_int_equal(json_integer_value(json_array_get(l, 0)), 1);
    assert_string_equal(json_string_value(json_array_get(l, 1)), "two");
    assert_true(json_is_real(json_array_get(l, 2)));
    assert_int_equal(json_integer_value(child(child(r, "m"), "a")), 1);
    tr_config_free(cfg);
}

static void test_json_input(void **state)
{
    tr_config_t *cfg = load_ok("{\n\t\"name\": \"svc\",\n\t\"port\": 8080,\n"
                               "\t\"tags\": [\"a\", \"b\"],\n\t\"ratio\": 0.25,\n"
                               "\t\"on\": true,\n\t\"nested\": {\"x\": null, \"y\":[]},\n"
                               "\t\"esc\": \"a\\/b\\u00e9\\n\",\n\t\"num\": \"123\"\n}\n");
    json_t *r = tr_config_root(cfg);
    assert_string_equal(json_string_value(child(r, "name")), "svc");
    assert_int_equal(json_integer_value(child(r, "port")), 8080);
    assert_int_equal(json_array_size(child(r, "tags")), 2);
    assert_true(json_real_value(child(r, "ratio")) == 0.25);
    assert_true(json_is_true(child(r, "on")));
    assert_true(json_is_null(child(child(r, "nested"), "x")));
    assert_string_equal(json_string_value(child(r, "esc")), "a/b\xc3\xa9\n");
    assert_true(json_is_string(child(r, "num"))); /* quoted stays a string, as in JSON */
    int line, col;
    assert_int_equal(tr_config_pos(cfg, child(r, "tags"), &line, &col), 0);
    assert_int_equal(line, 4);
    assert_int_equal(col, 10);
    tr_config_free(cfg);

    cfg = load_ok("{\"a\":1,\"b\":{\"c\":[1,2]}}");
    assert_int_equal(json_integer_value(child(tr_config_root(cfg), "a")), 1);
    tr_config_free(cfg);
    assert_string_equal(load_fails("{\"a\": 1, \"a\": 2}", TR_ECONFIG),
                        "t.yaml:1:10: a: duplicate key (first defined at line 1)");
}

static void test_not_finite_rejected(void **state)
{
    assert_string_equal(load_fails("x: .inf\n", TR_ECONFIG),
                        "t.yaml:1:4: x: \".inf\" is not a finite number, which JSON cannot hold "
                        "(quote it to make it a string)");
    assert_string_equal(load_fails("a:\n  - -.INF\n", TR_ECONFIG),
                        "t.yaml:2:5: a[0]: \"-.INF\" is not a finite number, which JSON cannot "
                        "hold (quote it to make it a string)");
    load_fails("x: .NaN\n", TR_ECONFIG);
    load_fails("x: 1e999\n", TR_ECONFIG);
    assert_string_equal(load_fails("x: 99999999999999999999\n", TR_ECONFIG),
                        "t.yaml:1:4: x: \"99999999999999999999\" does not fit in 64 bits (quote "
                        "it to make it a string)");
    tr_config_t *cfg = load_ok("x: \".inf\"\ny: 9223372036854775807\n");
    assert_string_equal(json_string_value(child(tr_config_root(cfg), "x")), ".inf");
    assert_int_equal(json_integer_value(child(tr_config_root(cfg), "y")), INT64_MAX);
    tr_config_free(cfg);
}

static void test_empty_and_root(void **state)
{
    static const char *const empties[] = {"", "# only a comment\n", "---\n", "~\n", "\n\n"};
    for (size_t i = 0; i < sizeof(empties) / sizeof(empties[0]); i++) {
        tr_config_t *cfg = load_ok(empties[i]);
        assert_true(json_is_object(tr_config_root(cfg)));
        assert_int_equal(json_object_size(tr_config_root(cfg)), 0);
        tr_config_free(cfg);
    }
    assert_string_equal(load_fails("- a\n- b\n", TR_ECONFIG),
                        "t.yaml:1:1: the top level must be a mapping of keys to values, not a "
                        "list");
    assert_string_equal(load_fails("hello\n", TR_ECONFIG),
                        "t.yaml:1:1: the top level must be a mapping of keys to values, not a "
                        "string");
}

static void test_syntax_errors(void **state)
{
    assert_string_equal(load_fails("a: b: c\n", TR_EPARSE),
                        "t.yaml:1:5: syntax error: mapping values are not allowed in this "
                        "context");
    assert_string_equal(load_fails("a: [1, 2\nb: 3\n", TR_EPARSE),
                        "t.yaml:2:2: syntax error: did not find expected ',' or ']' (while "
                        "parsing a flow sequence at line 1, column 4)");
    assert_string_equal(load_fails("ok: 1\nbad: \xff\n", TR_EPARSE),
                        "t.yaml:2:6: syntax error: invalid leading UTF-8 octet (byte 0xff)");
    load_fails("{\"a\": 1,}x", TR_EPARSE);
}

static void test_multiple_documents(void **state)
{
    assert_string_equal(load_fails("a: 1\n---\nb: 2\n", TR_ECONFIG),
                        "t.yaml:2:1: a second document; a config file holds exactly one");
    tr_config_t *cfg = load_ok("---\na: 1\n...\n");
    assert_int_equal(json_integer_value(child(tr_config_root(cfg), "a")), 1);
    tr_config_free(cfg);
}

static void test_duplicate_keys(void **state)
{
    assert_string_equal(load_fails("a:\n  x: 1\n  y: 2\n  x: 3\n", TR_ECONFIG),
                        "t.yaml:4:3: a.x: duplicate key (first defined at line 2)");
    assert_string_equal(load_fails("a: 1\nb: 2\na: 3\n", TR_ECONFIG),
                        "t.yaml:3:1: a: duplicate key (first defined at line 1)");
    /* The same key in two different mappings is fine. */
    tr_config_free(load_ok("a: {x: 1}\nb: {x: 1}\n"));
}

static void test_bad_keys_and_tags(void **state)
{
    assert_string_equal(load_fails("? [a, b]\n: c\n", TR_ECONFIG),
                        "t.yaml:1:3: a key must be a string, not a list");
    assert_string_equal(load_fails("m:\n  ? {a: 1}\n  : c\n", TR_ECONFIG),
                        "t.yaml:2:5: m: a key must be a string, not a mapping");
    assert_string_equal(load_fails("x: !foo bar\n", TR_ECONFIG),
                        "t.yaml:1:4: x: unsupported tag !foo");
    assert_string_equal(load_fails("a: &k x\n*k : y\n", TR_ECONFIG),
                        "t.yaml:2:1: an alias cannot be used as a key");
    /* Keys are taken as written: 1, true and null are the strings "1", "true", "null". */
    tr_config_t *cfg = load_ok("1: a\ntrue: b\nnull: c\n");
    assert_string_equal(json_string_value(child(tr_config_root(cfg), "1")), "a");
    assert_string_equal(json_string_value(child(tr_config_root(cfg), "true")), "b");
    assert_string_equal(json_string_value(child(tr_config_root(cfg), "null")), "c");
    tr_config_free(cfg);
}

static void test_aliases(void **state)
{
    tr_config_t *cfg = load_ok("defaults: &d {timeout: 5 x, retries: 2}\n"
                               "svc:\n  http: *d\n"
                               "list: [*d, *d]\n"
                               "flag: &f true\nflag2: *f\n");
    json_t *r = tr_config_root(cfg);
    json_t *http = json_object_get(child(r, "svc"), "http");
    assert_int_equal(json_integer_value(child(http, "retries")), 2);
    assert_ptr_not_equal(http, child(r, "defaults")); /* a copy, so each has its own path */
    assert_int_equal(json_array_size(child(r, "list")), 2);
    assert_true(json_is_true(child(r, "flag2")));
    uint64_t ms;
    assert_int_equal(tr_config_get_duration(cfg, http, "timeout", 1, &ms), TR_ECONFIG);
    /* The path is where the alias is used; the position is the text to fix. */
    assert_string_equal(tr_config_error(cfg),
                        "t.yaml:1:24: svc.http.timeout: invalid duration: spaces are not allowed "
                        "(expected a duration like 250ms, 1.5s or 1m30s with units us, ms, s, m, "
                        "h, d, or an integer number of milliseconds, got \"5 x\")");
    json_t *second = json_array_get(child(r, "list"), 1);
    assert_int_equal(tr_config_get_int(cfg, second, "retries", 0, 5, 10, &(int64_t){0}),
                     TR_ECONFIG);
    assert_string_equal(tr_config_error(cfg),
                        "t.yaml:1:38: list[1].retries: out of range (expected an integer from 5 "
                        "to 10, got 2)");
    bool b;
    assert_int_equal(tr_config_get_string(cfg, r, "flag2", NULL, &(const char *){NULL}),
                     TR_ECONFIG);
    assert_string_equal(tr_config_error(cfg),
                        "t.yaml:5:7: flag2: not a string (expected a string, got true)");
    assert_int_equal(tr_config_get_bool(cfg, r, "flag2", false, &b), 0);
    assert_true(b);
    tr_config_free(cfg);

    assert_string_equal(load_fails("a: &a [1, *a]\n", TR_ECONFIG),
                        "t.yaml:1:11: a[1]: alias *a is inside the value it refers to "
                        "(recursive aliases are not supported)");
    assert_string_equal(load_fails("a: *nope\n", TR_ECONFIG),
                        "t.yaml:1:4: a: unknown anchor &nope");
}

static void test_alias_bomb_bounded(void **state)
{
    /* Nine levels of ten aliases each would be a billion values. */
    char text[2048] = "a: &a [x, x, x, x, x, x, x, x, x, x]\n";
    for (char n = 'b'; n <= 'i'; n++) {
        size_t len = strlen(text);
        snprintf(text + len, sizeof(text) - len, "%c: &%c [", n, n);
        for (int i = 0; i < 10; i++) {
            len = strlen(text);
            snprintf(text + len, sizeof(text) - len, "%s*%c", i ? ", " : "", n - 1);
        }
        strcat(text, "]\n");
    }
    const char *msg = load_fails(text, TR_ETOOLARGE);
    assert_non_null(strstr(msg, "more than 1000000 values (aliases included)"));
    assert_int_equal(strncmp(msg, "t.yaml:6:", 9), 0); /* at an alias of f, the 10^6th value */

    /* Wide strings expand by bytes long before they reach the value count. */
    char *big = malloc(300000);
    strcpy(big, "s: &s \"");
    memset(big + 7, 'x', 100000);
    strcpy(big + 100007, "\"\nl: &l [*s, *s, *s, *s, *s, *s, *s, *s, *s, *s]\n"
                         "m: &m [*l, *l, *l, *l, *l, *l, *l, *l, *l, *l]\n"
                         "n: [*m, *m, *m, *m, *m, *m, *m, *m, *m, *m]\n");
    msg = load_fails(big, TR_ETOOLARGE);
    assert_non_null(strstr(msg, "aliases expand to more than 64 MiB of text"));
    free(big);
}

static void test_limits(void **state)
{
    char deep[2000] = "a: ";
    for (int i = 0; i < 600; i++)
        strcat(deep, "[");
    for (int i = 0; i < 600; i++)
        strcat(deep, "]");
    const char *msg = load_fails(deep, TR_ETOOLARGE);
    assert_non_null(strstr(msg, "nested deeper than 512 levels"));

    size_t n = TR_CONFIG_MAX_BYTES + 1;
    char *huge = malloc(n);
    memset(huge, ' ', n);
    tr_config_t *cfg;
    assert_int_equal(tr_config_load_string("big.yaml", huge, n, &cfg, load_err, sizeof(load_err)),
                     TR_ETOOLARGE);
    assert_string_equal(load_err, "big.yaml: larger than the 16 MiB limit for config files");
    free(huge);
}

static void test_load_file(void **state)
{
    tr_config_t *cfg = (tr_config_t *)1;
    char err[256];
    assert_int_equal(tr_config_load_file("/nonexistent/trellis.yaml", &cfg, err, sizeof(err)),
                     -ENOENT);
    assert_null(cfg);
    assert_string_equal(err, "/nonexistent/trellis.yaml: cannot read: No such file or directory");

    char path[] = "/tmp/trellis-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char text[] = "server:\n  port: true\n";
    assert_int_equal(write(fd, text, sizeof(text) - 1), sizeof(text) - 1);
    close(fd);
    assert_int_equal(tr_config_load_file(path, &cfg, err, sizeof(err)), 0);
    assert_string_equal(tr_config_name(cfg), path);
    json_t *server = child(tr_config_root(cfg), "server");
    int64_t port;
    assert_int_equal(tr_config_get_int(cfg, server, "port", 80, 1, 65535, &port), TR_ECONFIG);
    assert_int_equal(port, 80);
    char want[256];
    snprintf(want, sizeof(want),
             "%s:2:9: server.port: not an integer (expected an integer from 1 to 65535, got "
             "true)",
             path);
    assert_string_equal(tr_config_error(cfg), want);
    tr_config_free(cfg);
    unlink(path);

    /* A short err buffer gets a truncated, still terminated message. */
    char tiny[8];
    assert_int_equal(tr_config_load_file("/nonexistent/x", &cfg, tiny, sizeof(tiny)), -ENOENT);
    assert_string_equal(tiny, "/nonexi");
    assert_int_equal(tr_config_load_file("/nonexistent/x", &cfg, NULL, 0), -ENOENT);
}

/* ---- positions and getters ---- */

static const char gateway_yaml[] = "gateway:\n"
                                   "  listen: \":8080\"\n"
                                   "  routes:\n"
                                   "    - path: /a\n"
                                   "      timeout: 1s\n"
                                   "    - path: /b\n"
                                   "      timeout: 250\n"
                                   "    - path: /c\n"
                                   "      timeout: 10 s\n";

static void test_positions_nested_list(void **state)
{
    tr_config_t *cfg = load_ok(gateway_yaml);
    json_t *gw, *routes;
    assert_int_equal(tr_config_get_object(cfg, tr_config_root(cfg), "gateway", &gw), 0);
    assert_int_equal(tr_config_get_array(cfg, gw, "routes", &routes), 0);
    assert_int_equal(json_array_size(routes), 3);
    uint64_t ms;
    assert_int_equal(tr_config_get_duration(cfg, json_array_get(routes, 0), "timeout", 0, &ms), 0);
    assert_int_equal(ms, 1000);
    assert_int_equal(tr_config_get_duration(cfg, json_array_get(routes, 1), "timeout", 0, &ms), 0);
    assert_int_equal(ms, 250); /* a bare number is milliseconds */
    assert_int_equal(tr_config_get_duration(cfg, json_array_get(routes, 2), "timeout", 7, &ms),
                     TR_ECONFIG);
    assert_int_equal(ms, 7);
    assert_string_equal(tr_config_error(cfg),
                        "t.yaml:9:16: gateway.routes[2].timeout: invalid duration: spaces are not "
                        "allowed (expected a duration like 250ms, 1.5s or 1m30s with units us, "
                        "ms, s, m, h, d, or an integer number of milliseconds, got \"10 s\")");
    int line, col;
    assert_int_equal(tr_config_pos(cfg, routes, &line, &col), 0);
    assert_int_equal(line, 4);
    assert_int_equal(col, 5);
    assert_int_equal(tr_config_pos(cfg, json_array_get(routes, 1), &line, &col), 0);
    assert_int_equal(line, 6);
    assert_int_equal(col, 7);
    assert_int_equal(tr_config_pos(cfg, child(gw, "listen"), &line, &col), 0);
    assert_int_equal(line, 2);
    assert_int_equal(col, 11);
    assert_int_equal(tr_config_pos(cfg, json_true(), &line, &col), TR_ENOTFOUND);

    assert_int_equal(tr_config_fail(cfg, json_array_get(routes, 0), "path", "must be %s", "/x"),
                     TR_ECONFIG);
    assert_string_equal(tr_config_error(cfg), "t.yaml:4:13: gateway.routes[0].path: must be /x");
    assert_int_equal(tr_config_fail(cfg, json_array_get(routes, 2), NULL, "duplicate route"),
                     TR_ECONFIG);
    assert_string_equal(tr_config_error(cfg), "t.yaml:8:7: gateway.routes[2]: duplicate route");
    tr_config_free(cfg);
}

static void test_bool_singleton_position(void **state)
{
    /* Every `true` is the same json_t, so only (parent, key) can tell them apart. */
    tr_config_t *cfg = load_ok("a:\n  debug: true\n  retries: 3\nb:\n  debug: true\n"
                               "  retries: true\n");
    json_t *b = child(tr_config_root(cfg), "b");
    assert_ptr_equal(child(b, "retries"), child(child(tr_config_root(cfg), "a"), "debug"));
    int64_t n;
    assert_int_equal(tr_config_get_int(cfg, b, "retries", 1, 0, 10, &n), TR_ECONFIG);
    assert_int_equal(n, 1);
    assert_string_equal(tr_config_error(cfg),
                        "t.yaml:6:12: b.retries: not an integer (expected an integer from 0 to "
                        "10, got true)");
    assert_int_equal(tr_config_get_string(cfg, b, "debug", "d", &(const char *){NULL}), TR_ECONFIG);
    assert_string_equal(tr_config_error(cfg),
                        "t.yaml:5:10: b.debug: not a string (expected a string, got true)");
    tr_config_free(cfg);
}

static void test_check_keys(void **state)
{
    static const char *const allowed[] = {"listen", "routes", "workers", NULL};
    tr_config_t *cfg = load_ok("gateway:\n  listen: \":8080\"\n  rotues: []\n  zzz: 1\n");
    json_t *gw = child(tr_config_root(cfg), "gateway");
    assert_int_equal(tr_config_check_keys(cfg, gw, allowed), TR_ECONFIG);
    assert_string_equal(tr_config_error(cfg),
                        "t.yaml:3:3: gateway.rotues: unknown key (did you mean \"routes\"?)");
    tr_config_free(cfg);

    cfg = load_ok("gateway:\n  listen: \":8080\"\n  zzz: 1\n");
    gw = child(tr_config_root(cfg), "gateway");
    assert_int_equal(tr_config_check_keys(cfg, gw, allowed), TR_ECONFIG);
    assert_string_equal(tr_config_error(cfg),
                        "t.yaml:3:3: gateway.zzz: unknown key (expected one of: listen, routes, "
                        "workers)");
    tr_config_free(cfg);

    cfg = load_ok("gateway:\n  listen: \":8080\"\n  routes: []\n");
    assert_int_equal(tr_config_check_keys(cfg, child(tr_config_root(cfg), "gateway"), allowed), 0);
    tr_config_free(cfg);

    cfg = load_ok("Workers: 2\nlisen: x\n");
    assert_int_equal(tr_config_check_keys(cfg, tr_config_root(cfg), allowed), TR_ECONFIG);
    assert_string_equal(tr_config_error(cfg), "t.yaml:1:1: Workers: unknown key (did you mean "
                                              "\"workers\"?)");
    tr_config_free(cfg);
}

static void test_getters_defaults(void **state)
{
    tr_config_t *cfg = load_ok("a: ~\nb:\n");
    json_t *r = tr_config_root(cfg);
    const char *s;
    bool b;
    int64_t i;
    double d;
    uint64_t u;
    tr_rate_t rate;
    int e;
    json_t *o;
    static const char *const modes[] = {"x", "y", NULL};
    assert_int_equal(tr_config_get_string(cfg, r, "a", "def", &s), 0);
    assert_string_equal(s, "def");
    assert_int_equal(tr_config_get_bool(cfg, r, "b", true, &b), 0);
    assert_true(b);
    assert_int_equal(tr_config_get_int(cfg, r, "missing", -3, -5, 5, &i), 0);
    assert_int_equal(i, -3);
    assert_int_equal(tr_config_get_double(cfg, r, "missing", 2.5, &d), 0);
    assert_true(d == 2.5);
    assert_int_equal(tr_config_get_duration(cfg, r, "missing", 30000, &u), 0);
    assert_int_equal(u, 30000);
    assert_int_equal(tr_config_get_size(cfg, NULL, "missing", 4096, &u), 0);
    assert_int_equal(u, 4096);
    assert_int_equal(tr_config_get_rate(cfg, r, "a", (tr_rate_t){10, 1000}, &rate), 0);
    assert_true(rate.count == 10 && rate.per_ms == 1000);
    assert_int_equal(tr_config_get_percent(cfg, r, "missing", 0.5, &d), 0);
    assert_true(d == 0.5);
    assert_int_equal(tr_config_get_enum(cfg, r, "missing", modes, 1, &e), 0);
    assert_int_equal(e, 1);
    assert_int_equal(tr_config_get_object(cfg, r, "missing", &o), 0);
    assert_null(o);
    assert_string_equal(tr_config_error(cfg), "");
    tr_config_free(cfg);
}

static void test_getters_values(void **state)
{
    tr_config_t *cfg = load_ok("name: svc\non: true\nn: -4\nd: 2\nd2: 0.5\n"
                               "t1: 1m30s\nt2: 1500\nz1: 16KiB\nz2: 1024\n"
                               "r: 100/minute\np1: 5%\np2: 0.25\np3: 1\nmode: least_conn\n"
                               "obj: {a: 1}\narr: [1]\n");
    json_t *r = tr_config_root(cfg);
    const char *s;
    bool b;
    int64_t i;
    double d;
    uint64_t u;
    tr_rate_t rate;
    int e;
    json_t *o;
    static const char *const modes[] = {"round_robin", "least_conn", "random", NULL};
    assert_int_equal(tr_config_get_string(cfg, r, "name", NULL, &s), 0);
    assert_string_equal(s, "svc");
    assert_int_equal(tr_config_get_bool(cfg, r, "on", false, &b), 0);
    assert_true(b);
    assert_int_equal(tr_config_get_int(cfg, r, "n", 0, INT64_MIN, INT64_MAX, &i), 0);
    assert_int_equal(i, -4);
    assert_int_equal(tr_config_get_double(cfg, r, "d", 0, &d), 0);
    assert_true(d == 2.0);
    assert_int_equal(tr_config_get_double(cfg, r, "d2", 0, &d), 0);
    assert_true(d == 0.5);
    assert_int_equal(tr_config_get_duration(cfg, r, "t1", 0, &u), 0);
    assert_int_equal(u, 90000);
    assert_int_equal(tr_config_get_duration(cfg, r, "t2", 0, &u), 0);
    assert_int_equal(u, 1500);
    assert_int_equal(tr_config_get_size(cfg, r, "z1", 0, &u), 0);
    assert_int_equal(u, 16384);
    assert_int_equal(tr_config_get_size(cfg, r, "z2", 0, &u), 0);
    assert_int_equal(u, 1024);
    assert_int_equal(tr_config_get_rate(cfg, r, "r", (tr_rate_t){0, 1}, &rate), 0);
    assert_true(rate.count == 100 && rate.per_ms == 60000);
    assert_int_equal(tr_config_get_percent(cfg, r, "p1", 0, &d), 0);
    assert_true(fabs(d - 0.05) < 1e-12);
    assert_int_equal(tr_config_get_percent(cfg, r, "p2", 0, &d), 0);
    assert_true(d == 0.25);
    assert_int_equal(tr_config_get_percent(cfg, r, "p3", 0, &d), 0);
    assert_true(d == 1.0);
    assert_int_equal(tr_config_get_enum(cfg, r, "mode", modes, 0, &e), 0);
    assert_int_equal(e, 1);
    assert_int_equal(tr_config_get_object(cfg, r, "obj", &o), 0);
    assert_int_equal(json_object_size(o), 1);
    assert_int_equal(tr_config_get_array(cfg, r, "arr", &o), 0);
    assert_int_equal(json_array_size(o), 1);
    tr_config_free(cfg);
}

/* Runs one getter on `key` of a one-line document and checks the message. */
#define EXPECT_ERROR(text, call, msg)                                                              \
    do {                                                                                           \
        tr_config_t *cfg = load_ok(text);                                                          \
        json_t *r = tr_config_root(cfg);                                                           \
        assert_int_equal((call), TR_ECONFIG);                                                      \
        assert_string_equal(tr_config_error(cfg), msg);                                            \
        tr_config_free(cfg);                                                                       \
    } while (0)

static void test_getter_errors(void **state)
{
    const char *s;
    bool b;
    int64_t i;
    double d;
    uint64_t u;
    tr_rate_t rate;
    int e;
    json_t *o;
    static const char *const modes[] = {"round_robin", "least_conn", "random", NULL};
    EXPECT_ERROR("k: 5\n", tr_config_get_string(cfg, r, "k", NULL, &s),
                 "t.yaml:1:4: k: not a string (expected a string, got 5)");
    EXPECT_ERROR("k: yes\n", tr_config_get_bool(cfg, r, "k", false, &b),
                 "t.yaml:1:4: k: not a boolean (YAML 1.2 reads yes/no/on/off as text) (expected "
                 "true or false, got \"yes\")");
    EXPECT_ERROR("k: 1\n", tr_config_get_bool(cfg, r, "k", false, &b),
                 "t.yaml:1:4: k: not a boolean (expected true or false, got 1)");
    EXPECT_ERROR("k: \"5\"\n", tr_config_get_int(cfg, r, "k", 0, 0, 9, &i),
                 "t.yaml:1:4: k: not an integer (expected an integer from 0 to 9, got \"5\")");
    EXPECT_ERROR("k: 2.5\n", tr_config_get_int(cfg, r, "k", 0, 0, 9, &i),
                 "t.yaml:1:4: k: not an integer (expected an integer from 0 to 9, got 2.5)");
    EXPECT_ERROR("k: [1]\n", tr_config_get_double(cfg, r, "k", 0, &d),
                 "t.yaml:1:4: k: not a number (expected a number, got a list)");
    EXPECT_ERROR("k: -5\n", tr_config_get_duration(cfg, r, "k", 0, &u),
                 "t.yaml:1:4: k: invalid duration: negative values are not allowed (expected a "
                 "duration like 250ms, 1.5s or 1m30s with units us, ms, s, m, h, d, or an integer "
                 "number of milliseconds, got -5)");
    EXPECT_ERROR("k: 10sec\n", tr_config_get_duration(cfg, r, "k", 0, &u),
                 "t.yaml:1:4: k: invalid duration: unknown unit (expected a duration like 250ms, "
                 "1.5s or 1m30s with units us, ms, s, m, h, d, or an integer number of "
                 "milliseconds, got \"10sec\")");
    EXPECT_ERROR("k: \"250\"\n", tr_config_get_duration(cfg, r, "k", 0, &u),
                 "t.yaml:1:4: k: invalid duration: missing unit (expected a duration like 250ms, "
                 "1.5s or 1m30s with units us, ms, s, m, h, d, or an integer number of "
                 "milliseconds, got \"250\")");
    EXPECT_ERROR("k: 16 KiB\n", tr_config_get_size(cfg, r, "k", 0, &u),
                 "t.yaml:1:4: k: invalid size: spaces are not allowed (expected a size like 512B, "
                 "16KiB or 1.5MiB with units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB, or an integer "
                 "number of bytes, got \"16 KiB\")");
    EXPECT_ERROR("k: 1.5\n", tr_config_get_size(cfg, r, "k", 0, &u),
                 "t.yaml:1:4: k: invalid size: a bare number must be whole (expected a size like "
                 "512B, 16KiB or 1.5MiB with units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB, or an "
                 "integer number of bytes, got 1.5)");
    EXPECT_ERROR("k: 100/fortnight\n", tr_config_get_rate(cfg, r, "k", (tr_rate_t){1, 1}, &rate),
                 "t.yaml:1:4: k: invalid rate: unknown period (expected a rate like 100/minute, "
                 "10/s or 100/30s with periods s, sec, second, m, min, minute, h, hr, hour, d, "
                 "day or a duration, got \"100/fortnight\")");
    EXPECT_ERROR("k: 50\n", tr_config_get_percent(cfg, r, "k", 0, &d),
                 "t.yaml:1:4: k: invalid percentage: a bare number is a fraction from 0 to 1 "
                 "(expected a percentage like 5% or 0.5%, or a fraction from 0 to 1, got 50)");
    EXPECT_ERROR("k: 150%\n", tr_config_get_percent(cfg, r, "k", 0, &d),
                 "t.yaml:1:4: k: invalid percentage: more than 100% (expected a percentage like "
                 "5% or 0.5%, or a fraction from 0 to 1, got \"150%\")");
    EXPECT_ERROR("k: rnadom\n", tr_config_get_enum(cfg, r, "k", modes, 0, &e),
                 "t.yaml:1:4: k: unknown value \"rnadom\" (did you mean \"random\"?)");
    EXPECT_ERROR("k: fastest\n", tr_config_get_enum(cfg, r, "k", modes, 0, &e),
                 "t.yaml:1:4: k: unknown value (expected one of: round_robin, least_conn, random; "
                 "got \"fastest\")");
    EXPECT_ERROR("k: [a]\n", tr_config_get_object(cfg, r, "k", &o),
                 "t.yaml:1:4: k: not a mapping (expected a mapping, got a list)");
    EXPECT_ERROR("k: {a: 1}\n", tr_config_get_int(cfg, json_object_get(r, "k"), "a", 0, 5, 9, &i),
                 "t.yaml:1:8: k.a: out of range (expected an integer from 5 to 9, got 1)");
    EXPECT_ERROR("k: [1]\n", tr_config_get_int(cfg, json_object_get(r, "k"), "a", 0, 5, 9, &i),
                 "t.yaml:1:4: k: expected a mapping of keys to values, got a list");
    /* Odd keys are quoted in paths, and long or multi-line values are shortened. */
    EXPECT_ERROR("\"a.b\": {\"\": x}\n",
                 tr_config_get_int(cfg, json_object_get(r, "a.b"), "", 0, 0, 1, &i),
                 "t.yaml:1:13: [\"a.b\"][\"\"]: not an integer (expected an integer from 0 to 1, "
                 "got \"x\")");
    EXPECT_ERROR(
        "k: \"line1\\nline2\\t\\\"q\\\" 0123456789012345678901234567890123456789012345\"\n",
        tr_config_get_int(cfg, r, "k", 0, 0, 1, &i),
        "t.yaml:1:4: k: not an integer (expected an integer from 0 to 1, got "
        "\"line1\\nline2\\x09\\\"q\\\" 01234567890123456789012345678901234567890123...\")");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duration_good),
        cmocka_unit_test(test_duration_bad),
        cmocka_unit_test(test_size_good),
        cmocka_unit_test(test_size_bad),
        cmocka_unit_test(test_rate_good),
        cmocka_unit_test(test_rate_bad),
        cmocka_unit_test(test_percent),
        cmocka_unit_test(test_yaml_types),
        cmocka_unit_test(test_json_input),
        cmocka_unit_test(test_not_finite_rejected),
        cmocka_unit_test(test_empty_and_root),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_multiple_documents),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_bad_keys_and_tags),
        cmocka_unit_test(test_aliases),
        cmocka_unit_test(test_alias_bomb_bounded),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_positions_nested_list),
        cmocka_unit_test(test_bool_singleton_position),
        cmocka_unit_test(test_check_keys),
        cmocka_unit_test(test_getters_defaults),
        cmocka_unit_test(test_getters_values),
        cmocka_unit_test(test_getter_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
