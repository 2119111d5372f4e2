/* The app's transactional outbox: events written with the state change that caused them,
 * relayed to the event store in order, at least once (idempotent by event id). */
#include "sdk/sdk.h"

#include "core/mem.h"
#include "trellis/log.h"
#include "trellis/projection.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN 200
#define BACKOFF_MAX 10000
#define DEADLINE_MS 10000

struct tr__app_outbox_s {
    tr_app_t *app;
    tr_http_endpoint_t ep;
    char store[64];
    uv_timer_t timer; /* backoff, the next relay, the request's deadline */
    tr_http_client_req_t *req;
    int64_t sending; /* row id in flight, 0 for none */
    uint64_t backoff_ms;
    bool failing, stopping, timer_closed;
};

static const char table_sql[] =
    "CREATE TABLE IF NOT EXISTS tr_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " stream TEXT NOT NULL, type TEXT NOT NULL, data_json TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL)";

static void relay(tr__app_outbox_t *o);

static void on_timer(uv_timer_t *t)
{
    relay(t->data);
}

/* Runs the relay soon (from the loop), unless a send is in flight. */
static void poke(tr__app_outbox_t *o)
{
    if (o && !o->stopping && !o->sending && !o->failing) uv_timer_start(&o->timer, on_timer, 0, 0);
}

int tr_app_publish(tr_app_t *app, tr_db_t *db, const char *stream, const char *type,
                   const json_t *data)
{
    if (!db || !stream || !*stream || !type || !*type) return UV_EINVAL;
    int rc = tr_db_run(db, table_sql, "");
    if (rc >= 0)
        rc = tr_db_run(db,
                       "INSERT INTO tr_outbox (stream, type, data_json, created_ms) VALUES"
                       " (?, ?, ?, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))",
                       "ssj", stream, type, data ? data : json_null());
    if (rc < 0) {
        tr_log_error("outbox: cannot write the event", TR_LOG_STR("stream", stream),
                     TR_LOG_STR("type", type), TR_LOG_ERR(rc));
        return rc;
    }
    poke(app->outbox);
    return 0;
}

static void retry_later(tr__app_outbox_t *o, const char *why)
{
    if (!o->failing)
        tr_log_warn("outbox: cannot hand events to the event store; retrying with backoff",
                    TR_LOG_STR("store", o->store), TR_LOG_STR("reason", why));
    o->failing = true;
    uv_timer_start(&o->timer, on_timer, o->backoff_ms, 0);
    o->backoff_ms = o->backoff_ms * 2 > BACKOFF_MAX ? BACKOFF_MAX : o->backoff_ms * 2;
}

static void on_appended(tr_http_client_req_t *req, int err, const tr_http_client_response_t *res)
{
    tr__app_outbox_t *o = tr_http_client_req_data(req);
    int64_t id = o->sending;
    o->req = NULL;
    o->sending = 0;
    if (o->stopping) {
        if (o->timer_closed) free(o);
        return;
    }
    uv_timer_stop(&o->timer);
    if (err || (res->status != 200 && res->status != 201)) {
        char why[96];
        snprintf(why, sizeof(why), "%s (HTTP %d)", err ? tr_strerror(err) : "refused",
                 err ? 0 : res->status);
        retry_later(o, why);
        return;
    }
    tr_db_run(o->app->db, "DELETE FROM tr_outbox WHERE id = ?", "i", id);
    if (o->failing) tr_log_info("outbox: the event store takes events again");
    o->failing = false;
    o->backoff_ms = BACKOFF_MIN;
    relay(o);
}

static void on_deadline(uv_timer_t *t)
{
    tr__app_outbox_t *o = t->data;
    if (o->req) tr_http_client_cancel(o->req);
}

/* Sends the oldest event of the outbox; the next one once it is stored. */
static void relay(tr__app_outbox_t *o)
{
    if (o->stopping || o->sending || !o->app->client) return;
    json_t *row =
        tr_db_row(o->app->db, NULL,
                  "SELECT id, stream, type, data_json FROM tr_outbox ORDER BY id LIMIT 1", "");
    if (!row) return; /* empty: a publish pokes the relay again */
    int64_t id = json_integer_value(json_object_get(row, "id"));
    char event_id[128], target[512];
    snprintf(event_id, sizeof(event_id), "%s-outbox-%lld", o->app->name, (long long)id);
    snprintf(target, sizeof(target), "/api/streams/%s?expected=any",
             json_string_value(json_object_get(row, "stream")));
    json_t *ev = json_pack("[{ss,sO,sO}]", "id", event_id, "type", json_object_get(row, "type"),
                           "data", json_object_get(row, "data"));
    char *body = json_dumps(ev, JSON_COMPACT);
    json_decref(ev);
    json_decref(row);
    static const tr_http_client_header_t ct[] = {{"content-type", 12, "application/json", 16}};
    tr_http_client_request_t rq = {.method = "POST",
                                   .target = target,
                                   .headers = ct,
                                   .nheaders = 1,
                                   .body_mode = TR_HTTP_CLIENT_BODY_BUFFER,
                                   .body = body,
                                   .body_len = strlen(body),
                                   .flags = TR_HTTP_CLIENT_IDEMPOTENT,
                                   .data = o};
    o->sending = id;
    int err = tr_http_client_fetch(o->app->client, &o->ep, &rq, on_appended, &o->req);
    free(body);
    if (err) {
        o->sending = 0;
        retry_later(o, tr_strerror(err));
        return;
    }
    uv_timer_start(&o->timer, on_deadline, DEADLINE_MS, 0);
}

void tr__app_outbox_start(tr_app_t *app)
{
    if (!app->db) return;
    const char *store = tr__app_eventstore(app);
    tr__app_outbox_t *o = tr_calloc(1, sizeof(*o));
    if (tr_http_endpoint_parse(&o->ep, store) || tr_db_run(app->db, table_sql, "") < 0) {
        free(o);
        return;
    }
    snprintf(o->store, sizeof(o->store), "%s", store);
    o->app = app;
    o->backoff_ms = BACKOFF_MIN;
    uv_timer_init(app->loop, &o->timer);
    o->timer.data = o;
    app->outbox = o;
    relay(o); /* what an earlier run left */
}

static void on_outbox_closed(uv_handle_t *h)
{
    tr__app_outbox_t *o = h->data;
    o->timer_closed = true;
    if (!o->req) free(o);
}

void tr__app_outbox_stop(tr_app_t *app)
{
    tr__app_outbox_t *o = app->outbox;
    if (!o) return;
    app->outbox = NULL;
    o->stopping = true;
    if (o->req) tr_http_client_cancel(o->req);
    uv_close((uv_handle_t *)&o->timer, on_outbox_closed);
}
