/* Unit tests for Consul's ?filter= expressions: parsing, every operator, and bad input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/filter.h"

/* One /v1/health/service entry, with the shapes the operators care about. */
static const char ENTRY[] =
    "{\"Node\": {\"Node\": \"node-1\", \"Address\": \"10.0.0.1\", \"Datacenter\": \"dc1\","
    "           \"Meta\": {\"os\": \"linux\", \"rack\": \"r1\"}},"
    " \"Service\": {\"ID\": \"web-1\", \"Service\": \"web\", \"Tags\": [\"v1\", \"primary\"],"
    "              \"Port\": 8080, \"Address\": \"\", \"EnableTagOverride\": false,"
    "              \"Weights\": {\"Passing\": 10, \"Warning\": 1}, \"Ratio\": 0.5,"
    "              \"Meta\": {\"version\": \"1.2.3\", \"a.b\": \"dotted\", \"env\": \"qa\","
    "                       \"empty\": \"\"},"
    "              \"Proxy\": null, \"Ports\": [80, 443], \"Kinds\": {}},"
    " \"Checks\": [{\"CheckID\": \"serfHealth\", \"Status\": \"passing\", \"ServiceTags\": []},"
    "            {\"CheckID\": \"service:web-1\", \"Status\": \"critical\","
    "             \"ServiceTags\": [\"v1\"]}]}";

static json_t *entry;

static int setup(void **state)
{
    json_error_t e;
    entry = json_loads(ENTRY, 0, &e);
    if (!entry) fail_msg("fixture JSON: %s at %d", e.text, e.column);
    return 0;
}

static int teardown(void **state)
{
    json_decref(entry);
    entry = NULL;
    return 0;
}

/* Compiles expr (which must be valid) and matches it against obj. */
static bool match_obj(const char *expr, const json_t *obj)
{
    char err[256];
    tr_filter_t *f = tr_filter_compile(expr, err, sizeof(err));
    if (!f) fail_msg("compile %s: %s", expr, err);
    bool r = tr_filter_match(f, obj);
    tr_filter_free(f);
    return r;
}

static bool m(const char *expr)
{
    return match_obj(expr, entry);
}

#define YES(expr) assert_true(m(expr))
#define NO(expr)  assert_false(m(expr))

/* Compiles expr, which must be refused, and returns the message. */
static const char *err_of(const char *expr)
{
    static char err[256];
    tr_filter_t *f = tr_filter_compile(expr, err, sizeof(err));
    if (f) {
        tr_filter_free(f);
        fail_msg("compiled, but should not: %s", expr);
    }
    return err;
}

#define ERR(expr, want) assert_string_equal(err_of(expr), want)

/* ---- tests */

/* The shapes of the examples on Consul's filtering page and its endpoint pages. */
static void test_consul_examples(void **state)
{
    json_t *svc = json_object_get(entry, "Service");
    assert_true(match_obj("Meta.env == qa", svc));
    assert_true(match_obj("Meta.env == qa and Meta.version != \"1.0\"", svc));
    assert_true(match_obj("Tags contains primary", svc));
    assert_true(match_obj("\"primary\" in Tags", svc));
    assert_false(match_obj("Service.Tags contains \"_cluster=abc-discovery-search-01\"", entry));
    YES("Node.Meta.os == linux");
    YES("Service.Service == web and Checks.Status == passing");
    YES("Service.Meta.version matches \"^1\\\\.[0-9]+\\\\.[0-9]+$\"");
}

static void test_equality(void **state)
{
    YES("Service.Service == web");
    YES("Service.Service == \"web\"");
    YES("Service.Service == `web`");
    NO("Service.Service == Web");
    NO("Service.Service != web");
    YES("Service.Service != api");
    YES("Node.Node==node-1");
    YES("Service.ID == \"web-1\"");
    NO("Service.Service == web.v2"); /* dotted bare words are values too */
    YES("Node.Datacenter == dc1");
}

static void test_numbers_and_booleans(void **state)
{
    YES("Service.Port == 8080");
    YES("Service.Port == \"8080\"");
    YES("Service.Port == 8080.0");
    NO("Service.Port == 80");
    NO("Service.Port == \"8080x\"");
    YES("Service.Weights.Passing == 10");
    YES("Service.Ratio == 0.5");
    YES("Service.Ratio == \"5e-1\"");
    NO("Service.Ratio == 1");
    YES("Service.EnableTagOverride == false");
    YES("Service.EnableTagOverride == False");
    YES("Service.EnableTagOverride == 0");
    NO("Service.EnableTagOverride == true");
    YES("Service.EnableTagOverride != true");
    NO("Service.Port == -1");
    NO("Service.Proxy == null"); /* null equals nothing */
    NO("Service.Tags == v1");    /* == compares single values, not lists */
}

static void test_empty(void **state)
{
    YES("Service.Address is empty");
    YES("Service.Meta.empty is empty");
    YES("Service.Proxy is empty");
    YES("Service.Kinds is empty");
    YES("Checks.ServiceTags is not empty"); /* one check has a tag */
    YES("Service.Nope is empty");           /* unknown fields are empty */
    YES("Nope.Deeper.Still is empty");
    NO("Service.Tags is empty");
    YES("Service.Tags is not empty");
    YES("Service.Port is not empty");
    YES("Service.EnableTagOverride is not empty");
    NO("Service.Address is not empty");
    json_t *none = json_pack("{s:[]}", "Tags");
    assert_true(match_obj("Tags is empty", none));
    json_decref(none);
}

static void test_in_and_contains(void **state)
{
    /* arrays: membership */
    YES("v1 in Service.Tags");
    YES("Service.Tags contains v1");
    YES("\"primary\" in Service.Tags");
    NO("canary in Service.Tags");
    YES("canary not in Service.Tags");
    YES("Service.Tags not contains canary");
    NO("Service.Tags not contains v1");
    YES("443 in Service.Ports");
    YES("Service.Ports contains \"80\"");
    NO("Service.Ports contains 8");
    /* objects: key presence */
    YES("version in Service.Meta");
    YES("Service.Meta contains env");
    NO("Service.Meta contains qa");
    YES("\"a.b\" in Service.Meta");
    /* strings: substring */
    YES("Service.ID contains eb-");
    YES("\"10.0\" in Node.Address");
    NO("Node.Address contains 192");
    YES("Node.Address not contains 192");
    /* numbers and missing fields hold nothing */
    NO("Service.Port contains 80");
    NO("x in Service.Nope");
    YES("x not in Service.Nope");
}

static void test_matches(void **state)
{
    YES("Node.Node matches \"^node-[0-9]+$\"");
    YES("Node.Node matches `node-(1|2)`");
    NO("Node.Node matches \"^web\"");
    YES("Node.Node not matches \"^web\"");
    NO("Service.Port matches \"80\""); /* only strings are matched */
    NO("Service.Nope matches \".*\"");
    YES("Service.Nope not matches \".*\"");
    YES("Checks.CheckID matches \"^service:\"");
}

static void test_collections(void **state)
{
    /* Any element: one check passes and one is critical. */
    YES("Checks.Status == passing");
    YES("Checks.Status == critical");
    NO("Checks.Status == warning");
    /* The negations are "no element": != is `not ==`. */
    NO("Checks.Status != passing");
    YES("Checks.Status != warning");
    YES("Checks.ServiceTags contains v1");
    NO("Checks.ServiceTags contains v2");
    /* Numeric steps index arrays. */
    YES("Checks.0.Status == passing");
    YES("Checks.1.Status == critical");
    NO("Checks.1.Status == passing");
    NO("Checks.7.Status == passing");
    YES("Service.Tags.1 == primary");
    json_t *ok = json_pack("{s:[{s:s},{s:s}]}", "Checks", "Status", "passing", "Status", "passing");
    assert_true(match_obj("Checks.Status == passing", ok));
    assert_true(match_obj("Checks.Status not matches \"^(critical|warning)$\"", ok));
    json_decref(ok);
    json_t *no = json_pack("{s:[]}", "Checks");
    assert_false(match_obj("Checks.Status == passing", no));
    assert_true(match_obj("Checks.Status != passing", no));
    assert_true(match_obj("Checks.Status is empty", no));
    json_decref(no);
}

static void test_brackets(void **state)
{
    YES("Service.Meta[\"a.b\"] == dotted");
    YES("Service.Meta[ `version` ] == \"1.2.3\"");
    YES("Service[\"Meta\"].env == qa");
    NO("Service.Meta.a.b == dotted"); /* dots split steps */
    YES("Service.Meta[\"a.b\"] is not empty");
}

static void test_logic_and_precedence(void **state)
{
    YES("Service.Service == web and Node.Node == node-1");
    NO("Service.Service == web and Node.Node == node-2");
    YES("Service.Service == api or Node.Node == node-1");
    NO("Service.Service == api or Node.Node == node-2");
    YES("not Service.Service == api");
    NO("not Service.Service == web");
    YES("not not Service.Service == web");
    YES("not (Service.Service == api)");
    /* and binds tighter than or: true or (false and false) */
    YES("Service.Service == web or Service.Service == api and Node.Node == x");
    /* (true or false) and false */
    NO("(Service.Service == web or Service.Service == api) and Node.Node == x");
    /* not binds tighter than and: (not false) and true */
    YES("not Service.Service == api and Node.Node == node-1");
    /* The docs' "E1 and not E2 or E3" == "(E1 and (not E2)) or E3". */
    const char *pairs[][2] = {
        {"Service.Port == 8080 and not Node.Node == node-1 or Service.Tags contains v1",
         "(Service.Port == 8080 and (not Node.Node == node-1)) or Service.Tags contains v1"},
        {"Service.Port == 1 and not Node.Node == x or Service.Tags contains v9",
         "(Service.Port == 1 and (not Node.Node == x)) or Service.Tags contains v9"},
    };
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++)
        assert_int_equal(m(pairs[i][0]), m(pairs[i][1]));
    YES("  ( ( Service.Service == web ) )  ");
    YES("(Service.Service == web)and(Node.Node == node-1)");
    YES("\tService.Service\n==\r\nweb");
    /* Keywords are whole words: 'notes' and 'order' are selectors. */
    json_t *o = json_pack("{s:s,s:s}", "notes", "x", "order", "y");
    assert_true(match_obj("notes == x and order == y", o));
    json_decref(o);
}

static void test_string_escapes(void **state)
{
    json_t *o = json_pack("{s:s}", "v", "a\"b\\c\n\t\xc3\xa9\x01");
    assert_true(match_obj("v == \"a\\\"b\\\\c\\n\\t\\u00e9\\x01\"", o));
    assert_true(match_obj("v == \"a\\\"b\\\\c\\n\\t\\U000000e9\\001\"", o));
    assert_true(match_obj("v contains `b\\c`", o)); /* raw strings keep backslashes */
    json_decref(o);
    json_t *q = json_pack("{s:s}", "v", "has space and \"quotes\"");
    assert_true(match_obj("v == `has space and \"quotes\"`", q));
    assert_true(match_obj("\"space and\" in v", q));
    json_decref(q);
}

static void test_no_match_on_non_objects(void **state)
{
    json_t *s = json_string("web");
    assert_false(match_obj("Service == web", s));
    assert_true(match_obj("Service is empty", s));
    json_decref(s);
    char err[128];
    tr_filter_t *f = tr_filter_compile("a == b", err, sizeof(err));
    assert_non_null(f);
    assert_false(tr_filter_match(f, NULL));
    tr_filter_free(f);
    tr_filter_free(NULL);
}

static void test_errors_syntax(void **state)
{
    ERR("Service.Port ==", "filter: column 16: expected a value after '==', found end of input");
    ERR("Service.Port ==   ", "filter: column 19: expected a value after '==', found end of input");
    ERR("Service.Port == )", "filter: column 17: expected a value after '==', found ')'");
    ERR("Service.Name == \"web", "filter: column 17: unterminated string; close it with \"");
    ERR("Service.Name == `web", "filter: column 17: unterminated string; close it with `");
    ERR("Service.Port > 80",
        "filter: column 14: unknown operator '>'; use ==, !=, is empty, is not empty, in, not "
        "in, contains, not contains, matches or not matches");
    ERR("Service.Name = web", "filter: column 14: unknown operator '='; did you mean '=='?");
    ERR("Service.Name equals web",
        "filter: column 14: unknown operator 'equals'; use ==, !=, is empty, is not empty, in, "
        "not in, contains, not contains, matches or not matches");
    ERR("Service.Name", "filter: column 13: expected an operator, found end of input; use ==, "
                        "!=, is empty, is not empty, in, not in, contains, not contains, "
                        "matches or not matches");
    ERR("Service.Name == web foo",
        "filter: column 21: unexpected 'foo' after a complete expression; join expressions "
        "with 'and' or 'or'");
    ERR("Service.Name == web)",
        "filter: column 20: unexpected ')' after a complete expression; join expressions with "
        "'and' or 'or'");
    ERR("(Service.Name == web",
        "filter: column 21: expected ')' to close the '(' at column 1, found end of input");
    ERR("Service.Name == web and",
        "filter: column 24: expected a selector, a value, 'not' or '(', found end of input");
    ERR("", "filter: column 1: expected an expression, found end of input");
    ERR("   ", "filter: column 4: expected an expression, found end of input");
    ERR("== web", "filter: column 1: expected a selector, a value, 'not' or '(', found '=='");
    ERR("Service.Tags is full", "filter: column 17: expected 'empty' after 'is', found 'full'");
    ERR("Service.Tags is not", "filter: column 20: expected 'empty' after 'is not', found end of "
                               "input");
    ERR("Service.Tags not has x",
        "filter: column 18: expected 'in', 'contains' or 'matches' after 'not', found 'has'");
    ERR("\"web\" == Service.Name",
        "filter: column 7: expected 'in' or 'not in' after the value at column 1, found '=='; "
        "selectors are not quoted (write Service.Tags, not \"Service.Tags\")");
    ERR("v1 in", "filter: column 6: expected a selector after 'in', found end of input");
    ERR("v1 not in \"Service.Tags\"",
        "filter: column 11: expected a selector after 'not in', found '\"'");
    ERR("Service.Port == 80x",
        "filter: column 17: invalid number; write it like 80, -1 or 0.5, or quote it as \"80x\"");
    YES("Service.ID == web-1 and Checks.CheckID == service:web-1");
    ERR("Service.ID == web+1 and a == b",
        "filter: column 15: a bare value holds letters, digits and _ / . - :; quote it as "
        "\"web+1\"");
    ERR("Node.Address == 10.0.0.1", "filter: column 17: invalid number; write it like 80, -1 or "
                                    "0.5, or quote it as \"10.0.0.1\"");
    ERR("Service.Port == 08", "filter: column 17: invalid number; write it like 80, -1 or 0.5, "
                              "or quote it as \"08\"");
    ERR("Service.Meta[version] == x",
        "filter: column 14: expected a quoted key after '[', found 'version'; write "
        "Meta[\"key\"]");
    ERR("Service.Meta[\"version\" == x",
        "filter: column 24: expected ']' to close the '[' at column 13, found '=='");
    ERR("Service.Meta[\"a\"] in Service.Tags",
        "filter: column 1: a value before 'in' cannot have [\"key\"] steps; quote it");
    ERR("Service.Name == \"a\\qb\"",
        "filter: column 19: invalid escape in string; use \\\\, \\\", \\n, \\t, \\xHH, \\uHHHH "
        "or a raw `string`");
    ERR("Service.Name == \"a\\x00\"", "filter: column 19: a string cannot contain a NUL character");
    ERR("Service.Name == \"a\nb\"",
        "filter: column 19: newline in a \"string\"; write \\n or use a `raw string`");
    ERR("Service.Name == \"web\"\x01",
        "filter: column 22: unexpected byte 0x01 after a complete expression; join expressions "
        "with 'and' or 'or'");
}

static void test_errors_limits(void **state)
{
    char expr[TR_FILTER_MAX_LEN + 64];
    /* 32 levels are fine, 33 are not, whether '(' or 'not'. */
    size_t n = 0;
    for (int i = 0; i < TR_FILTER_MAX_DEPTH; i++)
        expr[n++] = '(';
    n += (size_t)sprintf(expr + n, "a == b");
    for (int i = 0; i < TR_FILTER_MAX_DEPTH; i++)
        expr[n++] = ')';
    expr[n] = '\0';
    json_t *o = json_pack("{s:s}", "a", "b");
    assert_true(match_obj(expr, o));
    memmove(expr + 1, expr, n + 1);
    expr[0] = '(';
    strcat(expr, ")");
    ERR(expr, "filter: column 33: expression nests deeper than 32 levels of '(' and 'not'; "
              "simplify it");
    n = 0;
    for (int i = 0; i < TR_FILTER_MAX_DEPTH; i++)
        n += (size_t)sprintf(expr + n, "not ");
    sprintf(expr + n, "a == b");
    assert_true(match_obj(expr, o));
    memmove(expr + 4, expr, strlen(expr) + 1);
    memcpy(expr, "not ", 4);
    ERR(expr, "filter: column 129: expression nests deeper than 32 levels of '(' and 'not'; "
              "simplify it");
    /* A long flat list is fine: and/or do not nest. */
    n = (size_t)sprintf(expr, "a == b");
    while (n + 12 < TR_FILTER_MAX_LEN)
        n += (size_t)sprintf(expr + n, " or a == c");
    assert_true(match_obj(expr, o));
    memset(expr, ' ', TR_FILTER_MAX_LEN + 1);
    memcpy(expr, "a == b", 6);
    expr[TR_FILTER_MAX_LEN + 1] = '\0';
    ERR(expr, "filter: column 4097: expression is longer than 4096 bytes; shorten it");
    expr[TR_FILTER_MAX_LEN] = '\0';
    assert_true(match_obj(expr, o));
    /* A deep '((((' without an end must not recurse past the limit. */
    memset(expr, '(', TR_FILTER_MAX_LEN);
    expr[TR_FILTER_MAX_LEN] = '\0';
    ERR(expr, "filter: column 33: expression nests deeper than 32 levels of '(' and 'not'; "
              "simplify it");
    json_decref(o);
}

static void test_errors_regex(void **state)
{
    ERR("Node.Node matches \"a(\"",
        "filter: column 19: invalid regular expression \"a(\": Unmatched ( or \\( (POSIX "
        "extended syntax)");
    ERR("Node.Node matches \"[z-a]\"",
        "filter: column 19: invalid regular expression \"[z-a]\": Invalid range end (POSIX "
        "extended syntax)");
    ERR("Node.Node matches `(a)\\1`",
        "filter: column 19: back-references such as \\1 are not supported in regular "
        "expressions");
    ERR("Node.Node matches \"((a{255}){255}){255}\"",
        "filter: column 19: regular expression repeats too much (over 10000 expanded atoms); "
        "simplify it");
    ERR("Node.Node not matches \"x{20000}\"",
        "filter: column 23: regular expression repeats too much (over 10000 expanded atoms); "
        "simplify it");
    ERR("Node.Node matches \"(ab+++++++++++++++++++++++++)\"",
        "filter: column 19: regular expression repeats too much (over 10000 expanded atoms); "
        "simplify it");
    /* Ordinary repetitions are fine. */
    YES("Node.Address matches \"^([0-9]{1,3}\\\\.){3}[0-9]{1,3}$\"");
    YES("Node.Node matches `^[a-z]{1,63}(-[a-z0-9]{1,63})*$`");
}

/* A small error buffer truncates the message, and a zero-size one is left alone. */
static void test_error_buffer(void **state)
{
    char small[16];
    assert_null(tr_filter_compile("a ==", small, sizeof(small)));
    assert_string_equal(small, "filter: column ");
    char none = 'x';
    assert_null(tr_filter_compile("a ==", &none, 0));
    assert_int_equal(none, 'x');
    assert_null(tr_filter_compile(NULL, small, sizeof(small)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_consul_examples),
        cmocka_unit_test(test_equality),
        cmocka_unit_test(test_numbers_and_booleans),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_in_and_contains),
        cmocka_unit_test(test_matches),
        cmocka_unit_test(test_collections),
        cmocka_unit_test(test_brackets),
        cmocka_unit_test(test_logic_and_precedence),
        cmocka_unit_test(test_string_escapes),
        cmocka_unit_test(test_no_match_on_non_objects),
        cmocka_unit_test(test_errors_syntax),
        cmocka_unit_test(test_errors_limits),
        cmocka_unit_test(test_errors_regex),
        cmocka_unit_test(test_error_buffer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
