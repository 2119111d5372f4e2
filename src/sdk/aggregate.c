/*
 * Event-sourced aggregates: load a stream from the event store and fold it, decide, append
 * with the expected version, decide again after a conflict (include/trellis/aggregate.h).
 * The store is called through the app's resilient client at a fixed address.
 */
#include "sdk/sdk.h"

#include "trellis/aggregate.h"
#include "trellis/log.h"

#include <stdio.h>
#include <string.h>

#define STORE_TARGET "eventstore"
#define PAGE         1000
#define MAX_PATH     (sizeof("/api/streams/") + 3 * 200)

typedef struct agg_s {
    tr_ctx_t *ctx;
    tr_aggregate_command_t c;
    char path[MAX_PATH]; /* /api/streams/<stream, percent-encoded> */
    json_t *state;
    int64_t version;
    json_t *appending; /* the events of the append in flight */
    unsigned conflicts;
} agg_t;

static void load(agg_t *a, int64_t from);

/* Stream names may hold any printable byte: everything but unreserved characters is %XX. */
static bool encode_path(char *out, size_t outlen, const char *stream)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = (size_t)snprintf(out, outlen, "/api/streams/");
    for (const unsigned char *s = (const unsigned char *)stream; *s; s++) {
        if (n + 4 > outlen) return false;
        if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
            *s == '-' || *s == '_' || *s == '.' || *s == '~') {
            out[n++] = (char)*s;
        } else {
            out[n++] = '%';
            out[n++] = hex[*s >> 4];
            out[n++] = hex[*s & 15];
        }
    }
    out[n] = '\0';
    return n > sizeof("/api/streams/") - 1;
}

static void finish(agg_t *a, int err, int status, bool appended)
{
    tr_aggregate_result_t r = {.err = err,
                               .status = status,
                               .state = err ? NULL : a->state,
                               .version = a->version,
                               .appended = appended};
    if (err)
        tr_log_warn("aggregate: the event store failed the command", TR_LOG_STR("stream", a->path),
                    TR_LOG_INT("status", status), TR_LOG_ERR(err));
    a->c.done(a->ctx, &r, a->c.data);
    json_decref(a->state);
    json_decref(a->appending);
    a->state = a->appending = NULL;
}

static void fold(agg_t *a, const json_t *ev)
{
    a->state = a->c.fold(a->state, ev, a->c.data);
}

static void on_appended(tr_ctx_t *ctx, const tr_call_result_t *r, void *data)
{
    (void)ctx;
    agg_t *a = data;
    const json_t *first = json_object_get(r->json, "first_version");
    const json_t *last = json_object_get(r->json, "last_version");
    if (r->err) {
        finish(a, r->err, 0, false);
    } else if (r->status == 409 && ++a->conflicts <= TR_AGGREGATE_MAX_CONFLICTS) {
        json_decref(a->appending); /* another writer came first: decide again on its result */
        a->appending = NULL;
        load(a, 0);
    } else if (r->status == 409) {
        finish(a, TR_ECONFLICT, 409, false);
    } else if ((r->status == 200 || r->status == 201) && json_is_integer(first) &&
               json_is_integer(last)) {
        size_t i;
        json_t *ev;
        json_array_foreach(a->appending, i, ev)
        {
            json_object_set_new(ev, "version", json_integer(json_integer_value(first) + (int)i));
            fold(a, ev);
        }
        a->version = json_integer_value(last);
        finish(a, 0, r->status, true);
    } else {
        finish(a, TR_EBAD_RESPONSE, r->status, false);
    }
}

static void decide(agg_t *a)
{
    if (!a->c.decide) {
        finish(a, 0, 200, false);
        return;
    }
    json_t *events = a->c.decide(a->ctx, a->state, a->version, a->c.data);
    if (!events) { /* the app answered the request itself */
        json_decref(a->state);
        a->state = NULL;
        return;
    }
    if (!json_is_array(events) || json_array_size(events) == 0) {
        json_decref(events);
        finish(a, 0, 200, false);
        return;
    }
    a->appending = events;
    char target[MAX_PATH + 40];
    if (a->version < 0)
        snprintf(target, sizeof(target), "%s?expected=no_stream", a->path);
    else
        snprintf(target, sizeof(target), "%s?expected=%lld", a->path, (long long)a->version);
    tr_ctx_call(a->ctx, STORE_TARGET, "POST", target, events, on_appended, a);
}

static void on_page(tr_ctx_t *ctx, const tr_call_result_t *r, void *data)
{
    (void)ctx;
    agg_t *a = data;
    const json_t *events = json_object_get(r->json, "events");
    if (r->err) {
        finish(a, r->err, 0, false);
        return;
    }
    if (r->status == 404) { /* no events (or deleted): the aggregate does not exist yet */
        decide(a);
        return;
    }
    if (r->status != 200 || !json_is_array(events)) {
        finish(a, TR_EBAD_RESPONSE, r->status, false);
        return;
    }
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev)
    {
        fold(a, ev);
        a->version = json_integer_value(json_object_get(ev, "version"));
    }
    const json_t *last = json_object_get(r->json, "last_version");
    const json_t *next = json_object_get(r->json, "next");
    if (json_is_integer(next) && json_array_size(events) > 0) {
        load(a, json_integer_value(next));
        return;
    }
    if (json_is_integer(last)) a->version = json_integer_value(last);
    decide(a);
}

static void load(agg_t *a, int64_t from)
{
    if (from == 0) {
        json_decref(a->state);
        a->state = NULL;
        a->version = -1;
    }
    char target[MAX_PATH + 48];
    snprintf(target, sizeof(target), "%s?from=%lld&limit=%d", a->path, (long long)from, PAGE);
    tr_ctx_call(a->ctx, STORE_TARGET, "GET", target, NULL, on_page, a);
}

void tr_ctx_aggregate(tr_ctx_t *ctx, const tr_aggregate_command_t *c)
{
    if (!c->done) {
        tr_log_error("aggregate: a command needs a done callback");
        return;
    }
    agg_t *a = tr_ctx_alloc(ctx, sizeof(*a));
    *a = (agg_t){.ctx = ctx, .c = *c, .version = -1};
    if (!c->stream || !encode_path(a->path, sizeof(a->path), c->stream) || !c->fold) {
        finish(a, UV_EINVAL, 0, false);
        return;
    }
    if (!tr__app_target_fixed(ctx->app, STORE_TARGET, tr__app_eventstore(ctx->app))) {
        finish(a, TR_ENOTFOUND, 0, false);
        return;
    }
    load(a, 0);
}
