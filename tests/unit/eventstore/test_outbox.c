/* Unit tests for push subscriptions: definitions, filters, backoff, stored checkpoints. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eventstore/eventstore.h"
#include "eventstore/eventstore_internal.h"
#include "eventstore/outbox.h"

/* ---- helpers ---------------------------------------------------------------------------- */

/* Parses `json` as a POST body: 0 (then def and name are filled) or 422. */
static int parse(const char *json, char **name, tr_outbox_def_t *def)
{
    json_t *body = json_loads(json, JSON_DECODE_ANY, NULL);
    assert_non_null(body);
    char detail[300] = "";
    int st = tr__outbox_def_parse(body, name, def, detail, sizeof(detail));
    json_decref(body);
    if (st) assert_true(strlen(detail) > 0);
    return st;
}

static void parse_ok(const char *json, tr_outbox_def_t *def)
{
    char *name = NULL;
    assert_int_equal(parse(json, &name, def), 0);
    free(name);
}

typedef struct fx_s {
    char dir[64];
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/tr-ob-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static tr_eventstore_t *open_store(const char *dir, uv_loop_t *loop)
{
    char err[512] = "";
    tr_eventstore_t *s = NULL;
    tr_eventstore_options_t o = {.loop = loop};
    if (tr_eventstore_open(dir, &o, &s, err, sizeof(err))) fail_msg("open: %s", err);
    return s;
}

static void append_one(tr_eventstore_t *s, const char *stream, const char *type)
{
    char json[128];
    snprintf(json, sizeof(json), "{\"type\":\"%s\",\"data\":1}", type);
    json_t *body = json_loads(json, 0, NULL);
    tr_es_write_t w = {.op = TR_ES_OP_APPEND, .stream = stream, .expected = TR_ES_EXPECT_ANY};
    char detail[256];
    assert_int_equal(tr_eventstore_check_events(body, &w.events, detail, sizeof(detail)), 0);
    json_decref(body);
    tr_eventstore_write_wait(s, &w);
    assert_int_equal(w.status, 201);
    json_decref(w.events);
}

static tr_es_write_t sub_op(tr_eventstore_t *s, int op, const char *name, int64_t at)
{
    tr_es_write_t w = {.op = op, .stream = name, .at = at};
    if (op == TR_ES_OP_SUB_PUT) w.text = "{\"stream\":\"$all\"}";
    if (op == TR_ES_OP_SUB_DEAD) w.text = "HTTP 500", w.attempts = 7;
    tr_eventstore_write_wait(s, &w);
    return w;
}

typedef struct loaded_s {
    int nsubs, ndead;
    char names[4][32];
    int64_t checkpoints[4];
    tr_es_dead_letter_t dead[4];
    char errors[4][32];
} loaded_t;

static void on_sub(const char *name, const char *definition, int64_t checkpoint, void *data)
{
    loaded_t *l = data;
    assert_string_equal(definition, "{\"stream\":\"$all\"}");
    snprintf(l->names[l->nsubs], sizeof(l->names[0]), "%s", name);
    l->checkpoints[l->nsubs++] = checkpoint;
}

static void on_dead(const tr_es_dead_letter_t *d, void *data)
{
    loaded_t *l = data;
    snprintf(l->errors[l->ndead], sizeof(l->errors[0]), "%s", d->error);
    l->dead[l->ndead] = *d;
    l->dead[l->ndead].subscription = NULL;
    l->dead[l->ndead].error = l->errors[l->ndead];
    l->ndead++;
}

static loaded_t load(tr_eventstore_t *s)
{
    loaded_t l;
    memset(&l, 0, sizeof(l));
    assert_int_equal(tr_eventstore_load_subscriptions(s, on_sub, on_dead, &l), 0);
    return l;
}

/* ---- definitions ------------------------------------------------------------------------ */

static void test_definition_defaults_and_canonical_form(void **state)
{
    (void)state;
    tr_outbox_def_t a, b;
    char *name = NULL;
    assert_int_equal(
        parse("{\"name\":\"orders.v1\",\"stream\":\"order-*\",\"url\":\"http://127.0.0.1:9/in\"}",
              &name, &a),
        0);
    assert_string_equal(name, "orders.v1");
    free(name);
    assert_true(a.prefix);
    assert_string_equal(a.stream, "order-");
    assert_false(a.from_start);
    assert_int_equal(a.max_attempts, TR_OUTBOX_DEF_ATTEMPTS);
    assert_string_equal(a.target, "/in");
    assert_string_equal(a.ep.host, "127.0.0.1:9");
    /* Spelling the defaults out is the same definition. */
    parse_ok("{\"max_attempts\":10,\"from\":\"end\",\"url\":\"http://127.0.0.1:9/in\","
             "\"stream\":\"order-*\",\"name\":\"orders.v1\"}",
             &b);
    assert_string_equal(a.text, b.text);
    tr__outbox_def_free(&b);
    parse_ok("{\"name\":\"o\",\"stream\":\"order-*\",\"url\":\"http://127.0.0.1:9/in\","
             "\"from\":\"start\"}",
             &b);
    assert_true(b.from_start);
    assert_string_not_equal(a.text, b.text);
    tr__outbox_def_free(&b);
    /* The stored form loads back to the same definition. */
    assert_int_equal(tr__outbox_def_load(a.text, &b), 0);
    assert_string_equal(a.text, b.text);
    assert_true(b.prefix);
    tr__outbox_def_free(&b);
    tr__outbox_def_free(&a);
    assert_int_equal(tr__outbox_def_load("{\"stream\":1}", &b), UV_EINVAL);
}

static void test_bad_definitions(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "[]",
        "{\"stream\":\"a\",\"url\":\"http://127.0.0.1:9/\"}",
        "{\"name\":\"\",\"stream\":\"a\",\"url\":\"http://127.0.0.1:9/\"}",
        "{\"name\":\"a b\",\"stream\":\"a\",\"url\":\"http://127.0.0.1:9/\"}",
        "{\"name\":\"n\",\"stream\":\"$x\",\"url\":\"http://127.0.0.1:9/\"}",
        "{\"name\":\"n\",\"stream\":\"*\",\"url\":\"http://127.0.0.1:9/\"}",
        "{\"name\":\"n\",\"stream\":\"a*b*\",\"url\":\"http://127.0.0.1:9/\"}",
        "{\"name\":\"n\",\"stream\":\"a\",\"url\":\"https://127.0.0.1:9/\"}",
        "{\"name\":\"n\",\"stream\":\"a\",\"url\":\"http://example.com/\"}",
        "{\"name\":\"n\",\"stream\":\"a\",\"url\":\"127.0.0.1:9\"}",
        "{\"name\":\"n\",\"stream\":\"a\"}",
        "{\"name\":\"n\",\"stream\":\"a\",\"url\":\"http://127.0.0.1:9/\",\"types\":[]}",
        "{\"name\":\"n\",\"stream\":\"a\",\"url\":\"http://127.0.0.1:9/\",\"types\":[1]}",
        "{\"name\":\"n\",\"stream\":\"a\",\"url\":\"http://127.0.0.1:9/\",\"from\":\"now\"}",
        "{\"name\":\"n\",\"stream\":\"a\",\"url\":\"http://127.0.0.1:9/\",\"max_attempts\":0}",
        "{\"name\":\"n\",\"stream\":\"a\",\"url\":\"http://127.0.0.1:9/\",\"max_attempts\":1.5}",
        "{\"name\":\"n\",\"stream\":\"a\",\"url\":\"http://127.0.0.1:9/\",\"typo\":1}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *name = NULL;
        tr_outbox_def_t def;
        if (parse(bad[i], &name, &def) != 422) fail_msg("accepted: %s", bad[i]);
        assert_null(name);
    }
}

static void test_filters(void **state)
{
    (void)state;
    tr_outbox_def_t all, exact, prefix;
    parse_ok("{\"name\":\"a\",\"stream\":\"$all\",\"url\":\"http://127.0.0.1:9/\"}", &all);
    parse_ok("{\"name\":\"e\",\"stream\":\"order-1\",\"url\":\"http://127.0.0.1:9/\"}", &exact);
    parse_ok("{\"name\":\"p\",\"stream\":\"order-*\",\"types\":[\"Placed\",\"Paid\"],"
             "\"url\":\"http://[::1]:9/x?y=1\"}",
             &prefix);
    assert_null(all.stream);
    assert_true(tr__outbox_matches(&all, "anything", "T"));
    assert_true(tr__outbox_matches(&exact, "order-1", "T"));
    assert_false(tr__outbox_matches(&exact, "order-10", "T"));
    assert_false(tr__outbox_matches(&exact, "order-", "T"));
    assert_true(tr__outbox_matches(&prefix, "order-10", "Placed"));
    assert_true(tr__outbox_matches(&prefix, "order-", "Paid"));
    assert_false(tr__outbox_matches(&prefix, "order-10", "Shipped"));
    assert_false(tr__outbox_matches(&prefix, "orders-1", "Placed"));
    assert_false(tr__outbox_matches(&prefix, "order", "Placed"));
    assert_string_equal(prefix.target, "/x?y=1");
    tr__outbox_def_free(&all);
    tr__outbox_def_free(&exact);
    tr__outbox_def_free(&prefix);
}

static void test_backoff_is_full_jitter_capped(void **state)
{
    (void)state;
    assert_int_equal(tr__outbox_backoff_ms(1, 0), 0);
    assert_int_equal(tr__outbox_backoff_ms(1, 100), 100);
    assert_int_equal(tr__outbox_backoff_ms(1, 101), 0);
    assert_int_equal(tr__outbox_backoff_ms(2, 200), 200);
    assert_int_equal(tr__outbox_backoff_ms(3, 400), 400);
    assert_int_equal(tr__outbox_backoff_ms(9, UINT64_MAX), UINT64_MAX % 25601);
    for (uint64_t r = 0; r < 100000; r += 997)
        assert_true(tr__outbox_backoff_ms(50, r * 7919) <= 30000);
    assert_int_equal(tr__outbox_backoff_ms(50, 30000), 30000);
}

static void test_names(void **state)
{
    (void)state;
    assert_true(tr__outbox_valid_name("a-b_c.D9", 8));
    assert_false(tr__outbox_valid_name("", 0));
    assert_false(tr__outbox_valid_name("a/b", 3));
    assert_false(tr__outbox_valid_name("a:b", 3));
    char big[TR_OUTBOX_MAX_NAME + 2];
    memset(big, 'x', sizeof(big));
    assert_true(tr__outbox_valid_name(big, TR_OUTBOX_MAX_NAME));
    assert_false(tr__outbox_valid_name(big, TR_OUTBOX_MAX_NAME + 1));
}

/* ---- stored state ----------------------------------------------------------------------- */

static void test_checkpoints_and_dead_letters_persist(void **state)
{
    fx_t *f = *state;
    tr_eventstore_t *s = open_store(f->dir, NULL);
    for (int i = 0; i < 3; i++)
        append_one(s, "a", "T");
    /* From the end: the first checkpoint is the last committed position. */
    tr_es_write_t w = sub_op(s, TR_ES_OP_SUB_PUT, "end", -1);
    assert_int_equal(w.status, 201);
    assert_int_equal(w.position, 3);
    w = sub_op(s, TR_ES_OP_SUB_PUT, "start", 0);
    assert_int_equal(w.position, 0);
    /* A checkpoint only moves forward. */
    assert_int_equal(sub_op(s, TR_ES_OP_SUB_CHECKPOINT, "start", 2).status, 200);
    assert_int_equal(sub_op(s, TR_ES_OP_SUB_CHECKPOINT, "start", 1).status, 200);
    assert_int_equal(sub_op(s, TR_ES_OP_SUB_DEAD, "end", 5).status, 200);
    assert_int_equal(sub_op(s, TR_ES_OP_SUB_RETRY, "end", 5).status, 200);
    assert_int_equal(sub_op(s, TR_ES_OP_SUB_RETRY, "end", 4).status, 404);
    tr_eventstore_close(s);

    s = open_store(f->dir, NULL);
    loaded_t l = load(s);
    assert_int_equal(l.nsubs, 2);
    assert_string_equal(l.names[0], "end");
    assert_int_equal(l.checkpoints[0], 5); /* a dead letter moves the checkpoint too */
    assert_string_equal(l.names[1], "start");
    assert_int_equal(l.checkpoints[1], 2);
    assert_int_equal(l.ndead, 1);
    assert_int_equal(l.dead[0].position, 5);
    assert_int_equal(l.dead[0].attempts, 7);
    assert_string_equal(l.dead[0].error, "HTTP 500");
    assert_true(l.dead[0].retry);
    assert_true(l.dead[0].time_ms > 0);
    /* Delivered after a retry: the dead letter goes, the checkpoint stays. */
    tr_es_write_t d = {
        .op = TR_ES_OP_SUB_CHECKPOINT, .stream = "end", .at = 5, .dead_letter_done = true};
    tr_eventstore_write_wait(s, &d);
    assert_int_equal(d.status, 200);
    l = load(s);
    assert_int_equal(l.ndead, 0);
    assert_int_equal(l.checkpoints[0], 5);
    assert_int_equal(sub_op(s, TR_ES_OP_SUB_DEAD, "start", 3).status, 200);
    assert_int_equal(sub_op(s, TR_ES_OP_SUB_DELETE, "start", 0).status, 200);
    assert_int_equal(sub_op(s, TR_ES_OP_SUB_DELETE, "start", 0).status, 404);
    l = load(s);
    assert_int_equal(l.nsubs, 1);
    assert_int_equal(l.ndead, 0); /* its dead letters went with it */
    tr_eventstore_close(s);
}

/* A stored subscription whose receiver refuses connections: the loop closes cleanly. */
static void test_loop_with_failing_receiver_closes_cleanly(void **state)
{
    fx_t *f = *state;
    tr_eventstore_t *s = open_store(f->dir, NULL);
    append_one(s, "a", "T");
    tr_es_write_t w = {.op = TR_ES_OP_SUB_PUT,
                       .stream = "refused",
                       .at = 0,
                       .text = "{\"stream\":\"$all\",\"url\":\"http://127.0.0.1:1/x\","
                               "\"from\":\"start\",\"max_attempts\":3}"};
    tr_eventstore_write_wait(s, &w);
    assert_int_equal(w.status, 201);
    tr_eventstore_close(s);

    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    s = open_store(f->dir, &loop);
    tr_outbox_sub_t *sub = tr__outbox_find(s, "refused");
    assert_non_null(sub);
    /* Three refused sends (backoff at most 100 + 200 ms), then the event is dead-lettered. */
    for (int spins = 0; spins < 5000 && sub->ndead == 0; spins++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    assert_int_equal(sub->ndead, 1);
    assert_int_equal(sub->dead->position, 1);
    assert_int_equal(sub->dead->attempts, 3);
    assert_int_equal(sub->checkpoint, 1);
    tr_eventstore_close(s);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_definition_defaults_and_canonical_form),
        cmocka_unit_test(test_bad_definitions),
        cmocka_unit_test(test_filters),
        cmocka_unit_test(test_backoff_is_full_jitter_capped),
        cmocka_unit_test(test_names),
        cmocka_unit_test_setup_teardown(test_checkpoints_and_dead_letters_persist, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loop_with_failing_receiver_closes_cleanly, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
