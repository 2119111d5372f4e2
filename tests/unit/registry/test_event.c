/* Unit tests for the user event endpoints (fire, list, blocking), over the real HTTP server. */
#include <arpa/inet.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fixture.h"
#include "registry/event.h"
#include "trellis/http.h"
#include "trellis/net.h"

/* ---- the server side: the event ring, then 404 like the registry's router */

static void on_request(tr_http_req_t *req, void *data)
{
    fx_t *f = data;
    if (!tr_event_handle(f->ev, req)) tr_http_res_send(req, 404, NULL, NULL, 0);
}

/* ---- fixture */

static void ev_open(fx_t *f)
{
    assert_int_equal(tr_event_open(&f->loop, &f->ev), 0);
}

static void ev_close(fx_t *f)
{
    tr_event_close(f->ev);
    f->ev = NULL;
}

static const fx_ops_t OPS = {NULL, on_request, ev_open, ev_close};

/* ---- helpers */

static json_t *fire(client_t *c, const char *target, const char *body)
{
    resp_t r = {0};
    call(c, "PUT", target, body, body ? strlen(body) : 0, &r);
    if (r.status != 200) fail_msg("PUT %s: %d %s", target, r.status, r.body.data);
    json_t *j = body_json(&r);
    tr_buf_free(&r.body);
    return j;
}

static int status_of(client_t *c, const char *method, const char *target, const char *body)
{
    resp_t r = {0};
    call(c, method, target, body, body ? strlen(body) : 0, &r);
    tr_buf_free(&r.body);
    return r.status;
}

/* ---- tests */

/* The index is what consul-api's IDToIndex computes: the UUID's two halves XORed. */
static void test_id_index(void **state)
{
    assert_int_equal(tr__event_id_index("00000000-0000-0001-0000-000000000002"), 3);
    assert_int_equal(tr__event_id_index("ffffffff-ffff-ffff-0000-000000000000"), UINT64_MAX);
    assert_int_equal(tr__event_id_index("0000000f-0000-0000-0000-0000000000f0"),
                     0xf00000000ULL ^ 0xf0);
    assert_int_equal(tr__event_id_index("not-a-uuid"), 0);
    assert_int_equal(tr__event_id_index("0000000g-0000-0000-0000-000000000000"), 0);
    assert_int_equal(tr__event_id_index(NULL), 0);
}

static void test_fire_and_list(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    json_t *a = fire(c, "/v1/event/fire/deploy?node=web.*&service=api&tag=v1", "hi");
    assert_string_equal(json_str(a, "Name"), "deploy");
    assert_string_equal(json_str(a, "Payload"), "aGk=");
    assert_string_equal(json_str(a, "NodeFilter"), "web.*");
    assert_string_equal(json_str(a, "ServiceFilter"), "api");
    assert_string_equal(json_str(a, "TagFilter"), "v1");
    assert_int_equal(jint(a, "Version"), 1);
    assert_int_equal(jint(a, "LTime"), 1);
    assert_int_equal(strlen(json_str(a, "ID")), 36);
    json_t *b = fire(c, "/v1/event/fire/other", NULL);
    assert_true(json_is_null(json_object_get(b, "Payload")));
    assert_string_equal(json_str(b, "NodeFilter"), "");
    assert_int_equal(jint(b, "LTime"), 2);
    assert_string_not_equal(json_str(a, "ID"), json_str(b, "ID"));

    uint64_t idx;
    json_t *all = get_json(c, "/v1/event/list", &idx);
    assert_int_equal(json_array_size(all), 2);
    assert_string_equal(json_str(json_array_get(all, 0), "ID"), json_str(a, "ID"));
    assert_string_equal(json_str(json_array_get(all, 1), "ID"), json_str(b, "ID"));
    assert_int_equal(idx, tr__event_id_index(json_str(b, "ID")));
    json_t *some = get_json(c, "/v1/event/list?name=deploy", &idx);
    assert_int_equal(json_array_size(some), 1);
    assert_string_equal(json_str(json_array_get(some, 0), "Payload"), "aGk=");
    assert_int_equal(idx, tr__event_id_index(json_str(a, "ID")));
    json_t *none = get_json(c, "/v1/event/list?name=nothing", &idx);
    assert_int_equal(json_array_size(none), 0);
    assert_int_equal(idx, 1); /* never 0, so watchers do not spin */
    json_decref(a);
    json_decref(b);
    json_decref(all);
    json_decref(some);
    json_decref(none);
    fx_finish(f);
}

static void test_blocking_list(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0), *w = client_open(f, 1);
    json_decref(fire(c, "/v1/event/fire/a", NULL));
    uint64_t idx, idx2;
    json_decref(get_json(c, "/v1/event/list", &idx));

    /* A wait that sees no new event times out with the same index. */
    char target[128];
    snprintf(target, sizeof(target), "/v1/event/list?index=%llu&wait=50ms",
             (unsigned long long)idx);
    json_t *same = get_json(w, target, &idx2);
    assert_int_equal(idx2, idx);
    assert_int_equal(json_array_size(same), 1);
    json_decref(same);

    /* A fire wakes the blocked list with the new event. */
    snprintf(target, sizeof(target), "/v1/event/list?index=%llu&wait=5s", (unsigned long long)idx);
    send_req(w, "GET", target, NULL, 0);
    fx_sleep(f, 50);
    assert_false(has_response(w));
    json_t *e = fire(c, "/v1/event/fire/b", "x");
    resp_t r = {0};
    read_resp(w, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(index_of(&r), tr__event_id_index(json_str(e, "ID")));
    json_t *got = body_json(&r);
    assert_int_equal(json_array_size(got), 2);
    json_decref(got);
    json_decref(e);
    tr_buf_free(&r.body);

    /* A list filtered by name sleeps through other names' events. */
    json_decref(get_json(c, "/v1/event/list?name=a", &idx));
    snprintf(target, sizeof(target), "/v1/event/list?name=a&index=%llu&wait=5s",
             (unsigned long long)idx);
    send_req(w, "GET", target, NULL, 0);
    json_decref(fire(c, "/v1/event/fire/b", NULL));
    fx_sleep(f, 50);
    assert_false(has_response(w));
    /* Left blocked: closing the server must abort it without leaks. */
    fx_finish(f);
}

static void test_ring_is_bounded(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    for (int i = 0; i < TR_EVENT_RING + 4; i++)
        json_decref(fire(c, "/v1/event/fire/tick", NULL));
    uint64_t idx;
    json_t *all = get_json(c, "/v1/event/list", &idx);
    assert_int_equal(json_array_size(all), TR_EVENT_RING);
    assert_int_equal(jint(json_array_get(all, 0), "LTime"), 5);
    assert_int_equal(jint(json_array_get(all, TR_EVENT_RING - 1), "LTime"), TR_EVENT_RING + 4);
    json_decref(all);
    fx_finish(f);
}

static void test_bad_inputs(void **state)
{
    fx_t *f = fx_start(&OPS);
    client_t *c = client_open(f, 0);
    assert_int_equal(status_of(c, "GET", "/v1/event/fire/x", NULL), 405);
    assert_int_equal(status_of(c, "POST", "/v1/event/list", NULL), 405);
    assert_int_equal(status_of(c, "PUT", "/v1/event/fire/", NULL), 400);
    assert_int_equal(status_of(c, "PUT", "/v1/event/fire/x?tag=v1", NULL), 400);
    assert_int_equal(status_of(c, "PUT", "/v1/event/fire/x?node=(", NULL), 400);
    assert_int_equal(status_of(c, "GET", "/v1/event/list?index=abc", NULL), 400);
    assert_int_equal(status_of(c, "GET", "/v1/event/lists", NULL), 404);
    uint64_t idx;
    json_t *all = get_json(c, "/v1/event/list", &idx);
    assert_int_equal(json_array_size(all), 0); /* nothing refused was recorded */
    json_decref(all);
    char big[TR_EVENT_MAX_PAYLOAD + 2];
    memset(big, 'p', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    client_t *d = client_open(f, 1);
    assert_int_equal(status_of(d, "PUT", "/v1/event/fire/x", big), 413);
    big[TR_EVENT_MAX_PAYLOAD] = '\0';
    json_decref(fire(c, "/v1/event/fire/x", big)); /* exactly the limit is fine */
    fx_finish(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_id_index),      cmocka_unit_test(test_fire_and_list),
        cmocka_unit_test(test_blocking_list), cmocka_unit_test(test_ring_is_bounded),
        cmocka_unit_test(test_bad_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
