/* Projections: read models kept from the event store's $all by long poll, each event applied
 * with its checkpoint in one transaction of the app's database. */
#include "sdk/sdk.h"

#include "core/mem.h"
#include "trellis/log.h"
#include "trellis/projection.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE          200
#define WAIT_S        25
#define POLL_DEADLINE ((WAIT_S + 10) * 1000)
#define BACKOFF_MIN   200
#define BACKOFF_MAX   10000

struct tr__projection_s {
    tr_app_t *app;
    char *name, *prefix, *types, *store;
    tr_projection_apply_cb apply;
    void *data;
    tr_http_endpoint_t ep;
    int64_t checkpoint; /* position of the last applied event, -1 before any */
    uv_timer_t timer;   /* backoff and the poll's deadline */
    tr_http_client_req_t *req;
    uint64_t backoff_ms;
    bool failing, stopping, timer_closed;
};

static const char checkpoint_sql[] =
    "CREATE TABLE IF NOT EXISTS tr_projection_checkpoint (name TEXT PRIMARY KEY,"
    " position INTEGER NOT NULL)";

int64_t tr_projection_checkpoint(tr_app_t *app, const char *name)
{
    return app->db ? tr_db_int(app->db, -1,
                               "SELECT position FROM tr_projection_checkpoint WHERE name = ?", "s",
                               name)
                   : -1;
}

int tr_app_projection(tr_app_t *app, const tr_projection_options_t *o)
{
    if (!app->db || !o || !o->name || !*o->name || !o->apply) return UV_EINVAL;
    const char *store = o->store ? o->store : tr__app_eventstore(app);
    tr__projection_t *p = tr_calloc(1, sizeof(*p));
    if (tr_http_endpoint_parse(&p->ep, store)) {
        free(p);
        return UV_EINVAL;
    }
    if (tr_db_run(app->db, checkpoint_sql, "") < 0) {
        free(p);
        return TR_EIO;
    }
    p->app = app;
    p->name = tr_strdup(o->name);
    p->prefix = o->stream_prefix ? tr_strdup(o->stream_prefix) : NULL;
    p->types = o->types ? tr_strdup(o->types) : NULL;
    p->store = tr_strdup(store);
    p->apply = o->apply;
    p->data = o->data;
    p->checkpoint = tr_projection_checkpoint(app, o->name);
    p->backoff_ms = BACKOFF_MIN;
    app->projections =
        tr_realloc(app->projections, (app->nprojections + 1) * sizeof(*app->projections));
    app->projections[app->nprojections++] = p;
    return 0;
}

static bool wanted(const tr__projection_t *p, const json_t *ev)
{
    const char *stream = json_string_value(json_object_get(ev, "stream"));
    const char *type = json_string_value(json_object_get(ev, "type"));
    if (p->prefix && (!stream || strncmp(stream, p->prefix, strlen(p->prefix)))) return false;
    if (!p->types) return true;
    size_t n = type ? strlen(type) : 0;
    for (const char *t = p->types; type && *t;) {
        const char *comma = strchr(t, ',');
        size_t len = comma ? (size_t)(comma - t) : strlen(t);
        if (len == n && !memcmp(t, type, n)) return true;
        t = comma ? comma + 1 : t + len;
    }
    return false;
}

/* Applies one event and moves the checkpoint, in one transaction. */
static int apply_one(tr__projection_t *p, const json_t *ev, int64_t position)
{
    tr_db_t *db = p->app->db;
    if (tr_db_begin(db)) return TR_EIO;
    /* Replicas of the app share its database: another may have applied this event already
     * (its checkpoint is read inside this transaction, so exactly one applies it). */
    int64_t stored = tr_db_int(
        db, -1, "SELECT position FROM tr_projection_checkpoint WHERE name = ?", "s", p->name);
    if (stored >= position) {
        tr_db_rollback(db);
        p->checkpoint = stored;
        return 0;
    }
    int rc = wanted(p, ev) ? p->apply(db, ev, p->data) : 0;
    if (!rc && tr_db_run(db,
                         "INSERT INTO tr_projection_checkpoint (name, position) VALUES (?, ?)"
                         " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                         "si", p->name, position) < 0)
        rc = TR_EIO;
    if (rc || tr_db_commit(db)) {
        tr_db_rollback(db);
        return rc ? rc : TR_EIO;
    }
    p->checkpoint = position;
    return 0;
}

static void poll_store(tr__projection_t *p);

static void on_backoff(uv_timer_t *t)
{
    poll_store(t->data);
}

static void retry_later(tr__projection_t *p, const char *why)
{
    if (!p->failing)
        tr_log_warn("projection: cannot read or apply events; retrying with backoff",
                    TR_LOG_STR("projection", p->name), TR_LOG_STR("store", p->store),
                    TR_LOG_STR("reason", why));
    p->failing = true;
    uv_timer_start(&p->timer, on_backoff, p->backoff_ms, 0);
    p->backoff_ms = p->backoff_ms * 2 > BACKOFF_MAX ? BACKOFF_MAX : p->backoff_ms * 2;
}

/* Applies a page of events; false (and a retry scheduled) when one failed. */
static bool apply_page(tr__projection_t *p, const json_t *events)
{
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev)
    {
        json_int_t pos = json_integer_value(json_object_get(ev, "position"));
        if (pos <= p->checkpoint) continue; /* already applied (a page can overlap) */
        int rc = apply_one(p, ev, pos);
        if (rc) {
            char why[96];
            snprintf(why, sizeof(why), "applying position %lld failed (%d)", (long long)pos, rc);
            retry_later(p, why);
            return false;
        }
    }
    return true;
}

static void on_page(tr_http_client_req_t *req, int err, const tr_http_client_response_t *res)
{
    tr__projection_t *p = tr_http_client_req_data(req);
    p->req = NULL;
    if (p->stopping) { /* the poll was cancelled at stop: the last one out frees */
        if (p->timer_closed) tr__projection_free(p);
        return;
    }
    uv_timer_stop(&p->timer);
    if (err || res->status != 200) {
        char why[64];
        snprintf(why, sizeof(why), "%s (HTTP %d)", err ? tr_strerror(err) : "bad answer",
                 err ? 0 : res->status);
        retry_later(p, why);
        return;
    }
    json_t *page = json_loadb(res->body, res->body_len, 0, NULL);
    bool ok = json_is_array(json_object_get(page, "events"));
    if (ok)
        ok = apply_page(p, json_object_get(page, "events"));
    else
        retry_later(p, "the store's answer is not a page of events");
    json_decref(page);
    if (!ok) return;
    if (p->failing)
        tr_log_info("projection: following the store again", TR_LOG_STR("projection", p->name));
    p->failing = false;
    p->backoff_ms = BACKOFF_MIN;
    poll_store(p);
}

static void on_poll_deadline(uv_timer_t *t)
{
    tr__projection_t *p = t->data;
    if (p->req) tr_http_client_cancel(p->req);
}

static void poll_store(tr__projection_t *p)
{
    if (p->stopping || !p->app->client) return;
    char target[160];
    snprintf(target, sizeof(target),
             "/api/streams/$all/subscribe?from_position=%lld&limit=%d&wait=%d",
             (long long)(p->checkpoint + 1), PAGE, WAIT_S);
    tr_http_client_request_t rq = {
        .method = "GET", .target = target, .flags = TR_HTTP_CLIENT_IDEMPOTENT, .data = p};
    int err = tr_http_client_fetch(p->app->client, &p->ep, &rq, on_page, &p->req);
    if (err) {
        retry_later(p, tr_strerror(err));
        return;
    }
    uv_timer_start(&p->timer, on_poll_deadline, POLL_DEADLINE, 0);
}

void tr__projections_start(tr_app_t *app)
{
    for (size_t i = 0; i < app->nprojections; i++) {
        tr__projection_t *p = app->projections[i];
        uv_timer_init(app->loop, &p->timer);
        p->timer.data = p;
        tr_log_info("projection: following the event store", TR_LOG_STR("projection", p->name),
                    TR_LOG_STR("store", p->store), TR_LOG_INT("checkpoint", p->checkpoint));
        poll_store(p);
    }
}

void tr__projection_free(tr__projection_t *p)
{
    free(p->name);
    free(p->prefix);
    free(p->types);
    free(p->store);
    free(p);
}

static void on_projection_closed(uv_handle_t *h)
{
    tr__projection_t *p = h->data;
    p->timer_closed = true;
    if (!p->req) tr__projection_free(p); /* else on_page frees it when the poll ends */
}

void tr__projections_stop(tr_app_t *app)
{
    for (size_t i = 0; i < app->nprojections; i++) {
        tr__projection_t *p = app->projections[i];
        p->stopping = true;
        if (p->req) tr_http_client_cancel(p->req);
        uv_close((uv_handle_t *)&p->timer, on_projection_closed);
    }
    free(app->projections);
    app->projections = NULL;
    app->nprojections = 0;
}
