/* Shared fixture for the registry unit tests: a libuv loop with deadlines, the real HTTP
 * server on 127.0.0.1:0 and a raw TCP client that parses responses. Test-only code. */
#ifndef TR_TESTS_UNIT_REGISTRY_FIXTURE_H
#define TR_TESTS_UNIT_REGISTRY_FIXTURE_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdbool.h>

#include "core/buf.h"
#include "registry/catalog.h"
#include "registry/event.h"
#include "registry/kv.h"
#include "registry/session.h"
#include "registry/store.h"
#include "trellis/http.h"

#define MAX_CLIENT 3
#define WAIT_MS    5000

typedef struct fx_s fx_t;
typedef struct fx_ops_s fx_ops_t;

typedef struct client_s {
    uv_tcp_t tcp;
    uv_connect_t connect;
    fx_t *f;
    tr_buf_t in;
    bool used, connected, eof, closing, closed;
    int error;
} client_t;

/* One parsed response. */
typedef struct resp_s {
    int status;
    char head[2048];
    tr_buf_t body;
} resp_t;

/* The common fields, then the state of whichever endpoint a test file serves. */
struct fx_s {
    uv_loop_t loop;
    uv_timer_t deadline, sleep;
    bool timed_out, slept, srv_done;
    tr_http_server_t *srv;
    int port;
    char dir[64], db[96];
    tr_store_t *st;
    tr_kv_t *kv;
    tr_session_t *sess;
    tr_catalog_t *cat;
    tr_event_t *ev;
    const fx_ops_t *ops;
    client_t c[MAX_CLIENT];
};

/* ---- loop helpers */

void fx_on_deadline(uv_timer_t *t);

#define RUN_UNTIL(f, cond)                                                                         \
    do {                                                                                           \
        (f)->timed_out = false;                                                                    \
        uv_timer_start(&(f)->deadline, fx_on_deadline, WAIT_MS, 0);                                \
        while (!(cond) && !(f)->timed_out)                                                         \
            uv_run(&(f)->loop, UV_RUN_ONCE);                                                       \
        uv_timer_stop(&(f)->deadline);                                                             \
        if ((f)->timed_out) fail_msg("timed out waiting for: %s", #cond);                          \
    } while (0)

void fx_sleep(fx_t *f, uint64_t ms);

/* ---- the client side */

void on_client_closed(uv_handle_t *h);
void client_close(client_t *c);
client_t *client_open(fx_t *f, int i);
void client_send(client_t *c, const char *data, size_t len);
/* Sends one request; `body` may be NULL. */
void send_req(client_t *c, const char *method, const char *target, const void *body, size_t len);
/* Length of the first complete response in `in`, or 0 while it is incomplete. */
size_t response_len(const tr_buf_t *in);
bool has_response(client_t *c);
/* Waits for the next response on c and moves it from c->in into r. */
void read_resp(client_t *c, resp_t *r);
/* A header's value (copied into a static buffer), or NULL. */
const char *hdr(const resp_t *r, const char *name);
uint64_t index_of(const resp_t *r);
void call(client_t *c, const char *method, const char *target, const void *body, size_t len,
          resp_t *r);
json_t *body_json(const resp_t *r);
uint64_t jint(const json_t *o, const char *k);

/* ---- fixture */

/* What a test file serves: `handler` answers requests; with `dir_template` (a mkdtemp
 * pattern; NULL: none) fx_start() makes a temp data dir with f->db inside it before
 * `open`; fx_finish() calls `close` once clients and server are closed, unless the
 * endpoint is closed already (f->kv, f->cat and f->ev all NULL). */
struct fx_ops_s {
    const char *dir_template;
    tr_http_handler_cb handler;
    void (*open)(fx_t *f);
    void (*close)(fx_t *f);
};

/* Starts a loop and a server on 127.0.0.1:0 for `ops`. */
fx_t *fx_start(const fx_ops_t *ops);
bool clients_closed(fx_t *f);
/* Closes clients and server, tears the loop down and removes the data dir. */
void fx_finish(fx_t *f);

/* KV: PUTs `value` at `key` and expects "true". */
void kv_put_ok(client_t *c, const char *key, const char *value);
/* KV: GETs one key and returns its only entry (caller decrefs the returned array). */
json_t *kv_get_entry(client_t *c, const char *key, json_t **arr, resp_t *r);

/* Opens the store at f->db into f->st (fails the test on error); closes it. */
void store_open(fx_t *f);
void store_close(fx_t *f);
/* KV: the store, then the KV endpoint into f->kv; closes both. */
void kv_store_open(fx_t *f);
void kv_store_close(fx_t *f);
/* KV: routes /v1/kv/<percent-decoded key> to `kv`, else 404, like the registry's router. */
void kv_route(tr_kv_t *kv, tr_http_req_t *req);
/* GETs target (200 expected) and returns the parsed body; *index (if not NULL) gets
 * X-Consul-Index. */
json_t *get_json(client_t *c, const char *target, uint64_t *index);
/* A string member (fails the test unless it is one). */
const char *json_str(const json_t *o, const char *k);

/* A metric's value in the default registry's rendering, or -1. */
double metric(const char *name);

#endif
