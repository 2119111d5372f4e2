/* The push subscriptions' HTTP API under /api/subscriptions: create, state, delete, dead letters.
 */
#include "eventstore/eventstore_internal.h"
#include "eventstore/outbox.h"

#include "core/buf.h"
#include "core/httpdate.h"
#include "core/mem.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PREFIX     "/api/subscriptions"
#define PREFIX_LEN (sizeof(PREFIX) - 1)
#define MAX_BODY   (64u << 10)

/* ---- answers ---------------------------------------------------------------------------- */

static void send_json(tr_http_req_t *req, int status, json_t *v)
{
    char *text = json_dumps(v, JSON_COMPACT);
    json_decref(v);
    tr_http_res_send(req, status, "application/json", text, strlen(text));
    free(text);
}

static void unavailable(tr_http_req_t *req, const char *detail)
{
    tr_http_res_problem(req, 503, "store-unavailable", "Event store unavailable", "%s", detail);
}

static void not_found(tr_http_req_t *req, const char *name)
{
    tr_http_res_problem(req, 404, "subscription-not-found", "Subscription not found",
                        "there is no subscription '%s'; GET /api/subscriptions lists them", name);
}

static json_t *time_json(int64_t ms)
{
    char out[TR_RFC3339_MS_LEN];
    tr_rfc3339_ms(ms, out);
    return json_string(out);
}

/* The definition plus where delivery is. */
static json_t *state_json(const tr_outbox_sub_t *sub)
{
    json_t *o = json_loads(sub->def.text, 0, NULL);
    if (!o) o = json_object();
    json_object_set_new(o, "name", json_string(sub->name));
    json_object_set_new(o, "checkpoint", json_integer(sub->checkpoint));
    json_object_set_new(o, "in_flight",
                        sub->cur.json ? json_integer(sub->cur.position) : json_null());
    json_object_set_new(o, "attempts", json_integer(sub->attempts));
    json_object_set_new(o, "last_error",
                        sub->last_error[0] ? json_string(sub->last_error) : json_null());
    json_object_set_new(o, "dead_letters", json_integer((json_int_t)sub->ndead));
    return o;
}

/* ---- writes through the store's writer -------------------------------------------------- */

typedef struct api_s {
    tr_es_write_t w;
    tr_eventstore_t *s;
    tr_http_req_t *req; /* NULL once the client went away */
    tr_outbox_sub_t *sub;
    tr_buf_t body;
    bool queued;
} api_t;

static void api_free(api_t *c)
{
    tr_buf_free(&c->body);
    free(c);
}

static void on_api_abort(tr_http_req_t *req)
{
    api_t *c = req->data;
    c->req = NULL;
    if (!c->queued) api_free(c);
}

static api_t *api_new(tr_eventstore_t *s, tr_http_req_t *req)
{
    api_t *c = tr_calloc(1, sizeof(*c));
    c->s = s;
    c->req = req;
    c->body = (tr_buf_t)TR_BUF_INIT;
    req->data = c;
    req->on_abort = on_api_abort;
    return c;
}

/* Queues c->w for `sub` (held until the write is done); cb answers. */
static void api_submit(api_t *c, tr_outbox_sub_t *sub, int op, tr_es_write_cb cb)
{
    c->queued = true;
    c->sub = sub;
    sub->refs++;
    c->w.op = op;
    c->w.stream = sub->name;
    c->w.cb = cb;
    c->w.data = c;
    tr_eventstore_write(c->s, &c->w);
}

/* After an API write: false when the store is closing (then nothing more is done). */
static bool api_done(api_t *c)
{
    if (c->req) c->req->on_abort = NULL;
    if (!c->s->closing) return true;
    if (c->req) unavailable(c->req, "the event store is shutting down; retry");
    return false;
}

static void api_finish(api_t *c)
{
    tr_outbox_sub_t *sub = c->sub;
    api_free(c);
    tr__outbox_release(sub);
}

/* ---- create ----------------------------------------------------------------------------- */

static void on_created(tr_es_write_t *w)
{
    api_t *c = w->data;
    tr_outbox_sub_t *sub = c->sub;
    if (api_done(c)) {
        if (w->status == 201) {
            sub->checkpoint = w->position;
            sub->cursor = w->position + 1;
            sub->ready = true;
            if (c->req) send_json(c->req, 201, state_json(sub));
            tr__outbox_pump(sub);
        } else {
            if (!sub->removed) tr__outbox_remove(sub);
            if (c->req) unavailable(c->req, w->detail);
        }
    }
    api_finish(c);
}

static void on_create_body(tr_http_req_t *req, const char *data, size_t len)
{
    api_t *c = req->data;
    if (c->body.len + len <= MAX_BODY)
        tr_buf_append(&c->body, data, len);
    else
        c->body.len = MAX_BODY + 1;
}

static void create(api_t *c, tr_http_req_t *req, json_t *body)
{
    char *name = NULL, detail[300];
    tr_outbox_def_t def;
    if (tr__outbox_def_parse(body, &name, &def, detail, sizeof(detail))) {
        req->on_abort = NULL;
        api_free(c);
        return tr_http_res_problem(req, 422, "bad-subscription", "Invalid subscription", "%s",
                                   detail);
    }
    tr_outbox_sub_t *old = tr__outbox_find(c->s, name);
    if (old) {
        req->on_abort = NULL;
        api_free(c);
        if (strcmp(old->def.text, def.text) == 0)
            send_json(req, 200, state_json(old));
        else
            tr_http_res_problem(req, 409, "subscription-exists", "Subscription exists",
                                "subscription '%s' exists with another definition; delete it "
                                "first or use another name",
                                name);
        tr__outbox_def_free(&def);
        free(name);
        return;
    }
    c->w.at = def.from_start ? 0 : -1;
    tr_outbox_sub_t *sub = tr__outbox_add(c->s, name, &def, 0);
    free(name);
    c->w.text = sub->def.text;
    api_submit(c, sub, TR_ES_OP_SUB_PUT, on_created);
}

static void on_create_end(tr_http_req_t *req)
{
    api_t *c = req->data;
    if (c->body.len > MAX_BODY) {
        req->on_abort = NULL;
        api_free(c);
        return tr_http_res_problem(req, 413, "body-too-large", "Body too large",
                                   "a subscription's definition may be at most %u KiB",
                                   MAX_BODY >> 10);
    }
    json_error_t je;
    json_t *body = json_loadb(c->body.data ? c->body.data : "", c->body.len, 0, &je);
    if (!body) {
        req->on_abort = NULL;
        api_free(c);
        return tr_http_res_problem(req, 400, "bad-json", "Invalid JSON",
                                   "the body is not a JSON object: %s (line %d, column %d)",
                                   je.text, je.line, je.column);
    }
    create(c, req, body);
    json_decref(body);
}

/* ---- delete and dead-letter retry ------------------------------------------------------- */

static void on_deleted(tr_es_write_t *w)
{
    api_t *c = w->data;
    tr_outbox_sub_t *sub = c->sub;
    if (api_done(c)) {
        if (w->status == 200 || w->status == 404) {
            tr__outbox_remove(sub);
            if (c->req) tr_http_res_send(c->req, 204, NULL, NULL, 0);
        } else {
            sub->removed = false;
            tr__outbox_pump(sub);
            if (c->req) unavailable(c->req, w->detail);
        }
    }
    api_finish(c);
}

static void handle_delete(tr_eventstore_t *s, tr_http_req_t *req, tr_outbox_sub_t *sub)
{
    /* Delivery stops now: nothing is sent after the 204. */
    sub->removed = true;
    tr__outbox_cancel(sub);
    api_submit(api_new(s, req), sub, TR_ES_OP_SUB_DELETE, on_deleted);
}

static tr_outbox_dead_t *dead_find(tr_outbox_sub_t *sub, int64_t position)
{
    for (tr_outbox_dead_t *d = sub->dead; d; d = d->next)
        if (d->position == position) return d;
    return NULL;
}

static void on_retry_stored(tr_es_write_t *w)
{
    api_t *c = w->data;
    tr_outbox_sub_t *sub = c->sub;
    if (api_done(c)) {
        tr_outbox_dead_t *d = w->status == 200 ? dead_find(sub, w->at) : NULL;
        if (d) d->retry = true;
        if (!c->req) {
        } else if (d) {
            json_t *o = json_object();
            json_object_set_new(o, "subscription", json_string(sub->name));
            json_object_set_new(o, "position", json_integer(w->at));
            json_object_set_new(o, "retrying", json_true());
            send_json(c->req, 202, o);
        } else if (w->status == 200 || w->status == 404) {
            tr_http_res_problem(c->req, 404, "dead-letter-not-found", "Dead letter not found",
                                "subscription '%s' has no dead letter at position %lld", sub->name,
                                (long long)w->at);
        } else {
            unavailable(c->req, w->detail);
        }
        tr__outbox_pump(sub);
    }
    api_finish(c);
}

static void handle_retry(tr_eventstore_t *s, tr_http_req_t *req, tr_outbox_sub_t *sub,
                         const char *pos)
{
    char *end;
    errno = 0;
    long long p = strtoll(pos, &end, 10);
    if (errno || *end || p < 1 || !dead_find(sub, p))
        return tr_http_res_problem(req, 404, "dead-letter-not-found", "Dead letter not found",
                                   "subscription '%s' has no dead letter at position '%s'",
                                   sub->name, pos);
    api_t *c = api_new(s, req);
    c->w.at = p;
    api_submit(c, sub, TR_ES_OP_SUB_RETRY, on_retry_stored);
}

static void handle_dead_letters(tr_http_req_t *req, tr_outbox_sub_t *sub)
{
    json_t *arr = json_array();
    for (tr_outbox_dead_t *d = sub->dead; d; d = d->next) {
        json_t *o = json_object();
        json_object_set_new(o, "position", json_integer(d->position));
        json_object_set_new(o, "attempts", json_integer(d->attempts));
        json_object_set_new(o, "error", json_string(d->error));
        json_object_set_new(o, "time", time_json(d->time_ms));
        json_object_set_new(o, "retrying", json_boolean(d->retry));
        json_array_append_new(arr, o);
    }
    json_t *o = json_object();
    json_object_set_new(o, "subscription", json_string(sub->name));
    json_object_set_new(o, "dead_letters", arr);
    send_json(req, 200, o);
}

/* ---- dispatch --------------------------------------------------------------------------- */

static void method_not_allowed(tr_http_req_t *req, const char *allow)
{
    tr_http_res_header(req, "Allow", allow);
    tr_http_res_problem(req, 405, "method-not-allowed", "Method not allowed",
                        "this resource takes %s", allow);
}

static void handle_collection(tr_eventstore_t *s, tr_http_req_t *req, bool get)
{
    if (get) {
        json_t *arr = json_array();
        for (tr_outbox_sub_t *sub = s->outbox->subs; sub; sub = sub->next)
            if (!sub->removed) json_array_append_new(arr, state_json(sub));
        json_t *o = json_object();
        json_object_set_new(o, "subscriptions", arr);
        return send_json(req, 200, o);
    }
    if (strcmp(req->method, "POST") != 0) return method_not_allowed(req, "GET, POST");
    api_new(s, req);
    req->on_body = on_create_body;
    req->on_end = on_create_end;
}

/* /{name}[/dead-letters[/{position}/retry]] split into its parts; -1 for an empty part or
 * more than four. */
static int split(char *p, char **parts)
{
    for (int n = 0;;) {
        if (n == 4 || !*p) return -1;
        parts[n++] = p;
        char *slash = strchr(p, '/');
        if (!slash) return n;
        *slash = '\0';
        p = slash + 1;
    }
}

void tr__outbox_handle(tr_eventstore_t *s, tr_http_req_t *req)
{
    bool get = strcmp(req->method, "GET") == 0 || req->head;
    size_t len = req->path_len - PREFIX_LEN;
    if (len <= 1) return handle_collection(s, req, get);
    char *path = tr_http_req_alloc(req, len);
    memcpy(path, req->path + PREFIX_LEN + 1, len - 1);
    path[len - 1] = '\0';
    char *parts[4] = {0};
    int n = split(path, parts);
    bool dl = n >= 2 && strcmp(parts[1], "dead-letters") == 0;
    if (n < 1 || (n == 2 && !dl) || n == 3 || (n == 4 && (!dl || strcmp(parts[3], "retry"))))
        return tr_http_res_problem(req, 404, "not-found", "Not found",
                                   "use /api/subscriptions/{name}, …/dead-letters or "
                                   "…/dead-letters/{position}/retry");
    tr_outbox_sub_t *sub = tr__outbox_find(s, parts[0]);
    if (!sub || sub->removed) return not_found(req, parts[0]);
    if (n == 1) {
        if (get) return send_json(req, 200, state_json(sub));
        if (strcmp(req->method, "DELETE") == 0) return handle_delete(s, req, sub);
        return method_not_allowed(req, "GET, DELETE");
    }
    if (n == 2) {
        if (!get) return method_not_allowed(req, "GET");
        return handle_dead_letters(req, sub);
    }
    if (strcmp(req->method, "POST") != 0) return method_not_allowed(req, "POST");
    handle_retry(s, req, sub, parts[2]);
}
