/* The event store's HTTP API under /api/streams: append, read, metadata, delete, subscribe. */
#include "eventstore/eventstore_internal.h"
#include "eventstore/outbox.h"

#include "core/buf.h"
#include "core/jsonw.h"
#include "core/mem.h"
#include "core/problem.h"
#include "trellis/config.h"
#include "trellis/error.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define PREFIX          "/api/streams"
#define PREFIX_LEN      (sizeof(PREFIX) - 1)
#define SUB_PAGE        1000
#define KEEPALIVE_MS    15000
#define WAIT_DEFAULT_MS 30000
#define WAIT_MAX_MS     60000
#define JSON_TYPE       "application/json"

/* ---- small answers ---------------------------------------------------------------------- */

static void send_json(tr_http_req_t *req, int status, tr_buf_t *b)
{
    tr_http_res_send(req, status, JSON_TYPE, b->data, b->len);
}

static void bad_request(tr_http_req_t *req, const char *detail)
{
    tr_http_res_problem(req, 400, "bad-request", "Invalid request", "%s", detail);
}

/* A 409 carries the stream's version so the client can read from there and retry. */
static void send_conflict(tr_http_req_t *req, const char *detail, int64_t current)
{
    tr_buf_t b = TR_BUF_INIT;
    tr_problem_render(&b, 409, "wrong-expected-version", "Wrong expected version", detail);
    while (b.len > 0 && b.data[b.len - 1] != '}')
        b.len--;
    b.len--; /* the closing brace: current_version goes inside */
    TR_JSONW_LIT(&b, ",\"current_version\":");
    tr_jsonw_i64(&b, current);
    tr_buf_append(&b, "}", 1);
    tr_http_res_send(req, 409, TR_PROBLEM_CONTENT_TYPE, b.data, b.len);
    tr_buf_free(&b);
}

/* Parses an integer in [min, max]; false for anything else. */
static bool parse_i64(const char *v, int64_t min, int64_t max, int64_t *out)
{
    if (!v || !*v) return false;
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || *end || n < min || n > max) return false;
    *out = n;
    return true;
}

/* Optional integer query parameter; false (answered 400) when present and bad. */
static bool query_i64(tr_http_req_t *req, const char *name, int64_t min, int64_t max, int64_t *out)
{
    const char *v;
    if (!tr_http_query_param(req, name, &v)) return true;
    if (parse_i64(v, min, max, out)) return true;
    tr_http_res_problem(req, 400, "bad-request", "Invalid request",
                        "query parameter '%s' must be an integer from %lld to %lld", name,
                        (long long)min, (long long)max);
    return false;
}

/* ---- paths ------------------------------------------------------------------------------ */

enum { R_STREAM, R_SUBSCRIBE, R_METADATA };

typedef struct route_s {
    char *stream; /* decoded; request memory */
    bool all;     /* $all */
    int what;
} route_t;

/* Splits /api/streams/{stream}[/subscribe|/metadata]; false when answered (404/400). */
static bool parse_route(tr_http_req_t *req, route_t *r)
{
    const char *p = req->path + PREFIX_LEN;
    size_t len = req->path_len - PREFIX_LEN;
    if (len < 2 || p[0] != '/') {
        tr_http_res_problem(req, 404, "not-found", "Not found",
                            "name a stream: /api/streams/{stream}");
        return false;
    }
    p++, len--;
    const char *slash = memchr(p, '/', len);
    size_t nlen = slash ? (size_t)(slash - p) : len;
    const char *rest = slash ? slash + 1 : "";
    size_t rlen = slash ? len - nlen - 1 : 0;
    r->what = R_STREAM;
    if (rlen == 9 && memcmp(rest, "subscribe", 9) == 0)
        r->what = R_SUBSCRIBE;
    else if (rlen == 8 && memcmp(rest, "metadata", 8) == 0)
        r->what = R_METADATA;
    else if (slash) {
        tr_http_res_problem(req, 404, "not-found", "Not found",
                            "no such resource under a stream; use /subscribe or /metadata");
        return false;
    }
    r->stream = tr_http_req_alloc(req, nlen + 1);
    long dl = tr_http_percent_decode(r->stream, p, nlen);
    if (dl < 0) {
        bad_request(req, "the stream name has a malformed percent escape");
        return false;
    }
    r->stream[dl] = '\0';
    r->all = strcmp(r->stream, "$all") == 0;
    if (!r->all &&
        (!tr_eventstore_valid_stream(r->stream, (size_t)dl) || strlen(r->stream) != (size_t)dl)) {
        tr_http_res_problem(req, 400, "bad-stream-name", "Invalid stream name",
                            "a stream name is 1 to %d bytes, without control characters, and "
                            "does not start with '$'",
                            TR_ES_MAX_STREAM);
        return false;
    }
    return true;
}

/* ---- append ----------------------------------------------------------------------------- */

/* An append or another write in flight; on the heap because the writer may outlive req. */
typedef struct write_ctx_s {
    tr_es_write_t w;
    tr_eventstore_t *s;
    tr_http_req_t *req; /* NULL once the client went away */
    char *stream;
    tr_buf_t body;
    bool done;
} write_ctx_t;

static void write_ctx_free(write_ctx_t *c)
{
    json_decref(c->w.events);
    tr_buf_free(&c->body);
    free(c->stream);
    free(c);
}

static void answer_write(tr_http_req_t *req, tr_es_write_t *w)
{
    if (w->status == 409) return send_conflict(req, w->detail, w->current_version);
    if (w->status == 410)
        return tr_http_res_problem(req, 410, "stream-deleted", "Stream deleted", "%s", w->detail);
    if (w->status == 404)
        return tr_http_res_problem(req, 404, "stream-not-found", "Stream not found", "%s",
                                   w->detail);
    if (w->status == 503 || w->status == 0)
        return tr_http_res_problem(req, 503, "store-unavailable", "Event store unavailable", "%s",
                                   w->detail);
    if (w->op == TR_ES_OP_DELETE) return tr_http_res_send(req, 204, NULL, NULL, 0);
    tr_buf_t b = TR_BUF_INIT;
    if (w->op == TR_ES_OP_SCAVENGE) {
        TR_JSONW_LIT(&b, "{\"removed\":");
        tr_jsonw_i64(&b, w->position);
        tr_buf_append(&b, "}", 1);
    } else if (w->op == TR_ES_OP_APPEND) {
        TR_JSONW_LIT(&b, "{\"stream\":");
        tr_jsonw_cstr(&b, w->stream);
        TR_JSONW_LIT(&b, ",\"first_version\":");
        tr_jsonw_i64(&b, w->first_version);
        TR_JSONW_LIT(&b, ",\"last_version\":");
        tr_jsonw_i64(&b, w->last_version);
        TR_JSONW_LIT(&b, ",\"position\":");
        tr_jsonw_i64(&b, w->position);
        tr_buf_append(&b, "}", 1);
    } else {
        TR_JSONW_LIT(&b, "{\"stream\":");
        tr_jsonw_cstr(&b, w->stream);
        tr_buf_append(&b, "}", 1);
    }
    send_json(req, w->status, &b);
    tr_buf_free(&b);
}

static void on_write_done(tr_es_write_t *w)
{
    write_ctx_t *c = w->data;
    if (c->req) {
        c->req->on_abort = NULL;
        answer_write(c->req, w);
    }
    write_ctx_free(c);
}

static void on_write_abort(tr_http_req_t *req)
{
    write_ctx_t *c = req->data;
    c->req = NULL;
    if (c->done) return;
    /* The body never completed: nothing was queued, so the context is ours to free. */
    write_ctx_free(c);
}

static void submit(write_ctx_t *c)
{
    c->done = true;
    c->w.cb = on_write_done;
    c->w.data = c;
    tr_eventstore_write(c->s, &c->w);
}

static void on_append_body(tr_http_req_t *req, const char *data, size_t len)
{
    write_ctx_t *c = req->data;
    if (!c || c->done) return;
    if (c->body.len + len > TR_ES_MAX_BODY) {
        c->done = true;
        tr_http_res_close(req);
        req->on_abort = NULL;
        tr_http_res_problem(req, 413, "body-too-large", "Body too large",
                            "an append body may be at most %u MiB", TR_ES_MAX_BODY >> 20);
        write_ctx_free(c);
        req->data = NULL;
        return;
    }
    tr_buf_append(&c->body, data, len);
}

/* Answers a bad body (400 with `slug`, or 422 bad-event) and drops the write. */
static void reject(tr_http_req_t *req, write_ctx_t *c, int status, const char *slug,
                   const char *detail)
{
    req->on_abort = NULL;
    req->data = NULL;
    c->done = true;
    if (status == 422)
        tr_http_res_problem(req, 422, "bad-event", "Invalid event", "%s", detail);
    else
        tr_http_res_problem(req, 400, slug, "Invalid request", "%s", detail);
    write_ctx_free(c);
}

static void on_append_end(tr_http_req_t *req)
{
    write_ctx_t *c = req->data;
    if (!c || c->done) return;
    json_error_t je;
    json_t *body = json_loadb(c->body.data ? c->body.data : "", c->body.len,
                              JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    tr_buf_free(&c->body);
    if (!body) {
        char detail[300];
        snprintf(detail, sizeof(detail), "the body is not valid JSON: %s (line %d, column %d)",
                 je.text, je.line, je.column);
        return reject(req, c, 400, "bad-json", detail);
    }
    char detail[256];
    int st = tr_eventstore_check_append(body, &c->w.events, &c->w.ids_made, detail, sizeof(detail));
    json_decref(body);
    if (st) return reject(req, c, st, "bad-request", detail);
    submit(c);
}

static bool parse_expected(tr_http_req_t *req, int64_t *out)
{
    const char *v;
    *out = TR_ES_EXPECT_ANY;
    if (!tr_http_query_param(req, "expected", &v) || strcmp(v, "any") == 0) return true;
    if (strcmp(v, "no_stream") == 0 || strcmp(v, "-1") == 0)
        return *out = TR_ES_EXPECT_NO_STREAM, true;
    if (strcmp(v, "exists") == 0) return *out = TR_ES_EXPECT_EXISTS, true;
    if (parse_i64(v, 0, INT64_MAX, out)) return true;
    bad_request(req, "expected must be any, no_stream, exists or a version (an integer >= 0)");
    return false;
}

static write_ctx_t *write_ctx_new(tr_eventstore_t *s, tr_http_req_t *req, const char *stream,
                                  int op)
{
    write_ctx_t *c = tr_calloc(1, sizeof(*c));
    c->s = s;
    c->req = req;
    c->stream = tr_strdup(stream);
    c->w.op = op;
    c->w.stream = c->stream;
    c->body = (tr_buf_t)TR_BUF_INIT;
    req->data = c;
    req->on_abort = on_write_abort;
    return c;
}

static void handle_append(tr_eventstore_t *s, tr_http_req_t *req, const char *stream)
{
    int64_t expected;
    if (!parse_expected(req, &expected)) return;
    write_ctx_t *c = write_ctx_new(s, req, stream, TR_ES_OP_APPEND);
    c->w.expected = expected;
    req->on_body = on_append_body;
    req->on_end = on_append_end;
}

static void handle_delete(tr_eventstore_t *s, tr_http_req_t *req, const char *stream)
{
    submit(write_ctx_new(s, req, stream, TR_ES_OP_DELETE));
}

/* ---- metadata --------------------------------------------------------------------------- */

static void duration_json(tr_buf_t *b, int64_t ms)
{
    static const struct {
        int64_t ms;
        const char *unit;
    } units[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}, {1, "ms"}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (ms % units[i].ms == 0) {
            tr_buf_printf(b, "\"%lld%s\"", (long long)(ms / units[i].ms), units[i].unit);
            return;
        }
}

static void handle_get_metadata(tr_eventstore_t *s, tr_http_req_t *req, const char *stream)
{
    tr_es_meta_t m;
    if (tr_eventstore_metadata(s, stream, &m))
        return tr_http_res_problem(req, 503, "store-unavailable", "Event store unavailable",
                                   "the event store could not read; retry");
    tr_buf_t b = TR_BUF_INIT;
    TR_JSONW_LIT(&b, "{\"stream\":");
    tr_jsonw_cstr(&b, stream);
    TR_JSONW_LIT(&b, ",\"max_age\":");
    if (m.max_age_ms > 0)
        duration_json(&b, m.max_age_ms);
    else
        TR_JSONW_LIT(&b, "null");
    TR_JSONW_LIT(&b, ",\"max_count\":");
    if (m.max_count > 0)
        tr_jsonw_i64(&b, m.max_count);
    else
        TR_JSONW_LIT(&b, "null");
    tr_buf_append(&b, "}", 1);
    send_json(req, 200, &b);
    tr_buf_free(&b);
}

/* Reads {"max_age","max_count"}; 0 or 422 with the reason. */
static int parse_metadata(json_t *body, tr_es_write_t *w, char *detail, size_t len)
{
    json_t *age = json_object_get(body, "max_age"), *count = json_object_get(body, "max_count");
    uint64_t ms = 0;
    if (age && !json_is_null(age) &&
        (!json_is_string(age) || tr_parse_duration_ms(json_string_value(age), &ms) ||
         ms > INT64_MAX)) {
        snprintf(detail, len, "max_age must be a duration such as \"30d\" or \"12h\", or null");
        return 422;
    }
    if (count && !json_is_null(count) &&
        (!json_is_integer(count) || json_integer_value(count) < 1)) {
        snprintf(detail, len, "max_count must be an integer >= 1, or null");
        return 422;
    }
    w->max_age_ms = (int64_t)ms;
    w->max_count = json_is_integer(count) ? (int64_t)json_integer_value(count) : 0;
    return 0;
}

static void on_metadata_end(tr_http_req_t *req)
{
    write_ctx_t *c = req->data;
    if (!c || c->done) return;
    json_error_t je;
    json_t *body = json_loadb(c->body.data ? c->body.data : "", c->body.len, 0, &je);
    tr_buf_free(&c->body);
    char detail[300];
    if (!json_is_object(body)) {
        snprintf(detail, sizeof(detail), "the body must be a JSON object: %s",
                 body ? "got another JSON value" : je.text);
        json_decref(body);
        return reject(req, c, 400, "bad-request", detail);
    }
    int st = parse_metadata(body, &c->w, detail, sizeof(detail));
    json_decref(body);
    if (st) return reject(req, c, st, "bad-request", detail);
    submit(c);
}

static void handle_put_metadata(tr_eventstore_t *s, tr_http_req_t *req, const char *stream)
{
    write_ctx_new(s, req, stream, TR_ES_OP_METADATA);
    req->on_body = on_append_body;
    req->on_end = on_metadata_end;
}

/* ---- pages read in the thread pool ------------------------------------------------------ */

typedef struct job_s job_t;
typedef void (*job_done_cb)(job_t *j);

/* A page read off the loop: SQLite work never blocks the loop. */
struct job_s {
    uv_work_t work;
    tr_eventstore_t *s;
    tr_es_query_t q;
    bool sse;
    tr_buf_t out; /* events joined by commas, or SSE frames */
    tr_es_page_t page;
    int err;
    job_done_cb done;
    void *owner;
};

static void on_job_event(const tr_es_event_t *e, void *data)
{
    job_t *j = data;
    if (j->sse) {
        TR_JSONW_LIT(&j->out, "id: ");
        tr_jsonw_i64(&j->out, j->q.stream ? e->version : e->position);
        TR_JSONW_LIT(&j->out, "\nevent: event\ndata: ");
        tr_eventstore_event_json(&j->out, e);
        TR_JSONW_LIT(&j->out, "\n\n");
        return;
    }
    if (j->page.count || j->out.len) tr_buf_append(&j->out, ",", 1);
    tr_eventstore_event_json(&j->out, e);
}

static void job_work(uv_work_t *w)
{
    job_t *j = w->data;
    j->err = tr_eventstore_read(j->s, &j->q, on_job_event, j, &j->page);
}

static void job_after(uv_work_t *w, int status)
{
    job_t *j = w->data;
    if (status) j->err = status;
    j->done(j);
}

static void job_free(job_t *j)
{
    tr_eventstore_t *s = j->s;
    tr_buf_free(&j->out);
    free((char *)j->q.stream);
    free(j);
    tr__eventstore_release(s);
}

static job_t *job_new(tr_eventstore_t *s, const char *stream, job_done_cb done, void *owner)
{
    job_t *j = tr_calloc(1, sizeof(*j));
    j->s = s;
    j->q.stream = stream ? tr_strdup(stream) : NULL;
    j->q.from = -1;
    j->out = (tr_buf_t)TR_BUF_INIT;
    j->done = done;
    j->owner = owner;
    j->work.data = j;
    tr__eventstore_retain(s);
    return j;
}

static void job_start(job_t *j)
{
    j->out.len = 0;
    j->page = (tr_es_page_t){0};
    if (uv_queue_work(j->s->opts.loop, &j->work, job_work, job_after) != 0) {
        j->err = TR_EIO;
        j->done(j);
    }
}

/* {"stream","events":[…],"next","last_version"} or {"events":[…],"next_position"}. */
static void page_json(tr_buf_t *b, job_t *j)
{
    tr_buf_append(b, "{", 1);
    if (j->q.stream) {
        TR_JSONW_LIT(b, "\"stream\":");
        tr_jsonw_cstr(b, j->q.stream);
        tr_buf_append(b, ",", 1);
    }
    TR_JSONW_LIT(b, "\"events\":[");
    tr_buf_append(b, j->out.data, j->out.len);
    if (j->q.stream)
        TR_JSONW_LIT(b, "],\"next\":");
    else
        TR_JSONW_LIT(b, "],\"next_position\":");
    if (j->page.next >= 0)
        tr_jsonw_i64(b, j->page.next);
    else
        TR_JSONW_LIT(b, "null");
    if (j->q.stream) {
        TR_JSONW_LIT(b, ",\"last_version\":");
        tr_jsonw_i64(b, j->page.last_version);
    }
    tr_buf_append(b, "}", 1);
}

static void send_page(tr_http_req_t *req, job_t *j)
{
    if (j->err)
        return tr_http_res_problem(req, 503, "store-unavailable", "Event store unavailable",
                                   "the event store could not read; retry");
    tr_buf_t b = TR_BUF_INIT;
    page_json(&b, j);
    send_json(req, 200, &b);
    tr_buf_free(&b);
}

/* ---- plain reads ------------------------------------------------------------------------ */

static void on_read_done(job_t *j)
{
    tr_http_req_t *req = j->owner;
    if (req) {
        req->on_abort = NULL;
        if (!j->err && j->q.stream && !j->page.found)
            tr_http_res_problem(req, 404, "stream-not-found", "Stream not found",
                                "stream '%s' has no events or was deleted", j->q.stream);
        else
            send_page(req, j);
    }
    job_free(j);
}

static void on_read_abort(tr_http_req_t *req)
{
    job_t *j = req->data;
    j->owner = NULL;
}

/* from/from_position, limit and direction into q; false when answered 400. */
static bool read_params(tr_http_req_t *req, bool all, tr_es_query_t *q)
{
    int64_t limit = 100;
    if (!query_i64(req, all ? "from_position" : "from", 0, INT64_MAX, &q->from)) return false;
    if (!query_i64(req, "limit", 1, TR_ES_MAX_READ_LIMIT, &limit)) return false;
    q->limit = (size_t)limit;
    const char *dir;
    if (!all && tr_http_query_param(req, "direction", &dir)) {
        if (strcmp(dir, "backward") == 0)
            q->backward = true;
        else if (strcmp(dir, "forward") != 0) {
            bad_request(req, "direction must be forward or backward");
            return false;
        }
    }
    return true;
}

static void handle_read(tr_eventstore_t *s, tr_http_req_t *req, const route_t *r)
{
    job_t *j = job_new(s, r->all ? NULL : r->stream, on_read_done, req);
    if (!read_params(req, r->all, &j->q)) {
        j->owner = NULL;
        return job_free(j);
    }
    req->data = j;
    req->on_abort = on_read_abort;
    job_start(j);
}

/* ---- subscriptions ---------------------------------------------------------------------- */

/*
 * A subscriber: a long poll waiting for its first events, or an SSE stream following the
 * store. Freed when its request is gone, its job is back and its timer closed.
 */
struct tr_es_sub_s {
    tr_es_sub_t *next, *prev;
    bool linked; /* in s->subs, waiting for a commit */
    tr_eventstore_t *s;
    tr_http_req_t *req;
    job_t *job;
    bool busy;  /* job in flight */
    bool dirty; /* a commit came while busy */
    bool draining;
    bool expired; /* a long poll's wait is over */
    bool sse;
    int64_t cursor; /* next version or position to send */
    uv_timer_t timer;
    int refs; /* the request, the job, the timer */
};

static void sub_release(tr_es_sub_t *sub)
{
    if (--sub->refs > 0) return;
    job_free(sub->job);
    free(sub);
}

static void sub_link(tr_es_sub_t *sub)
{
    if (sub->linked) return;
    sub->linked = true;
    sub->prev = NULL;
    sub->next = sub->s->subs;
    if (sub->next) sub->next->prev = sub;
    sub->s->subs = sub;
}

static void sub_unlink(tr_es_sub_t *sub)
{
    if (!sub->linked) return;
    sub->linked = false;
    if (sub->prev)
        sub->prev->next = sub->next;
    else
        sub->s->subs = sub->next;
    if (sub->next) sub->next->prev = sub->prev;
    sub->next = sub->prev = NULL;
}

static void on_sub_timer_closed(uv_handle_t *h)
{
    sub_release(h->data);
}

/* The request is over (answered or gone): stop waiting and let the memory go. */
static void sub_end(tr_es_sub_t *sub)
{
    if (!sub->req) return;
    sub->req->on_abort = NULL;
    sub->req->on_drain = NULL;
    sub->req = NULL;
    sub_unlink(sub);
    uv_close((uv_handle_t *)&sub->timer, on_sub_timer_closed);
    sub_release(sub);
}

static void sub_kick(tr_es_sub_t *sub)
{
    if (!sub->req) return;
    if (sub->busy || sub->draining) {
        sub->dirty = true;
        return;
    }
    sub_unlink(sub);
    sub->busy = true;
    sub->dirty = false;
    sub->job->q.from = sub->cursor;
    sub->refs++;
    job_start(sub->job);
}

static void sse_write_page(tr_es_sub_t *sub, job_t *j)
{
    /* A full page, one ended by its size, or a commit meanwhile: read on at once. */
    bool more = j->page.next >= 0 || j->page.count == j->q.limit || sub->dirty;
    if (j->page.count) sub->cursor = j->page.last_read + 1;
    if (j->out.len && !tr_http_res_write(sub->req, j->out.data, j->out.len)) {
        /* A slow reader: read on only once its connection drained. */
        sub->draining = true;
        return;
    }
    if (more)
        sub_kick(sub);
    else
        sub_link(sub);
}

static void on_sub_page(job_t *j)
{
    tr_es_sub_t *sub = j->owner;
    sub->busy = false;
    if (!sub->req || sub->s->closing) {
        if (sub->req && sub->s->closing && !sub->sse) send_page(sub->req, j);
        if (sub->req && sub->s->closing && sub->sse) tr_http_res_end(sub->req);
        sub_end(sub);
        return sub_release(sub);
    }
    if (j->err) {
        if (sub->sse)
            tr_http_res_end(sub->req);
        else
            send_page(sub->req, j);
        sub_end(sub);
    } else if (sub->sse) {
        sse_write_page(sub, j);
    } else if (j->page.count) {
        send_page(sub->req, j);
        sub_end(sub);
    } else if (sub->expired) {
        send_page(sub->req, j);
        sub_end(sub);
    } else if (sub->dirty) {
        sub_kick(sub);
    } else {
        sub_link(sub);
    }
    sub_release(sub);
}

static void on_sub_abort(tr_http_req_t *req)
{
    tr_es_sub_t *sub = req->data;
    sub_end(sub);
}

static void on_sub_drain(tr_http_req_t *req)
{
    tr_es_sub_t *sub = req->data;
    sub->draining = false;
    sub->dirty = false;
    sub_kick(sub);
}

static void on_sub_timer(uv_timer_t *t)
{
    tr_es_sub_t *sub = t->data;
    if (!sub->req) return;
    if (sub->sse) {
        if (!sub->draining) tr_http_res_write(sub->req, ": keep-alive\n\n", 14);
        return;
    }
    if (sub->busy) {
        sub->expired = true; /* the page in flight answers */
        return;
    }
    /* The wait is over with nothing new: answer an empty page, as a read would. */
    sub->job->out.len = 0;
    sub->job->page = (tr_es_page_t){.last_version = -1, .next = -1};
    send_page(sub->req, sub->job);
    sub_end(sub);
}

static bool wait_param(tr_http_req_t *req, uint64_t *ms)
{
    const char *v;
    *ms = WAIT_DEFAULT_MS;
    if (!tr_http_query_param(req, "wait", &v)) return true;
    int64_t secs;
    if (parse_i64(v, 0, WAIT_MAX_MS / 1000, &secs)) return *ms = (uint64_t)secs * 1000, true;
    if (tr_parse_duration_ms(v, ms) == 0 && *ms <= WAIT_MAX_MS) return true;
    bad_request(req, "wait must be a duration up to 60s (\"10s\", \"500ms\") or seconds");
    return false;
}

static bool wants_sse(tr_http_req_t *req)
{
    const char *accept = tr_http_req_header(req, "Accept");
    return accept && strstr(accept, "text/event-stream") != NULL;
}

static tr_es_sub_t *sub_new(tr_eventstore_t *s, tr_http_req_t *req, const route_t *r)
{
    tr_es_sub_t *sub = tr_calloc(1, sizeof(*sub));
    sub->s = s;
    sub->req = req;
    sub->refs = 2; /* the request and the timer */
    sub->sse = wants_sse(req);
    sub->job = job_new(s, r->all ? NULL : r->stream, on_sub_page, sub);
    sub->job->q.limit = sub->sse ? SUB_PAGE : 100;
    sub->job->sse = sub->sse;
    uv_timer_init(s->opts.loop, &sub->timer);
    sub->timer.data = sub;
    req->data = sub;
    req->on_abort = on_sub_abort;
    return sub;
}

static void handle_subscribe(tr_eventstore_t *s, tr_http_req_t *req, const route_t *r)
{
    tr_es_query_t q = {.from = 0};
    uint64_t wait_ms = 0;
    if (!read_params(req, r->all, &q)) return;
    if (q.backward) return bad_request(req, "a subscription reads forward");
    if (!wants_sse(req) && !wait_param(req, &wait_ms)) return;
    tr_es_sub_t *sub = sub_new(s, req, r);
    sub->cursor = q.from > 0 ? q.from : 0;
    /* A reconnecting EventSource sends the id it saw last: resume right after it. */
    int64_t last_id;
    if (sub->sse && parse_i64(tr_http_req_header(req, "Last-Event-ID"), 0, INT64_MAX - 1, &last_id))
        sub->cursor = last_id + 1;
    if (!sub->sse) {
        if (q.limit) sub->job->q.limit = q.limit;
        uv_timer_start(&sub->timer, on_sub_timer, wait_ms, 0);
    } else {
        req->on_drain = on_sub_drain;
        tr_http_res_header(req, "Content-Type", "text/event-stream");
        tr_http_res_header(req, "Cache-Control", "no-cache");
        tr_http_res_start(req, 200);
        uv_timer_start(&sub->timer, on_sub_timer, KEEPALIVE_MS, KEEPALIVE_MS);
    }
    sub_kick(sub);
}

void tr__eventstore_http_committed(tr_eventstore_t *s)
{
    /* Kicking unlinks: walk a detached list so each subscriber is seen once. */
    tr_es_sub_t *list = s->subs;
    s->subs = NULL;
    while (list) {
        tr_es_sub_t *sub = list;
        list = sub->next;
        sub->linked = false;
        sub->next = sub->prev = NULL;
        if (list) list->prev = NULL;
        sub_kick(sub);
    }
}

void tr__eventstore_http_close(tr_eventstore_t *s)
{
    while (s->subs) {
        tr_es_sub_t *sub = s->subs;
        sub_unlink(sub);
        if (sub->sse) {
            tr_http_res_end(sub->req);
        } else {
            sub->job->out.len = 0;
            sub->job->page = (tr_es_page_t){.last_version = -1, .next = -1};
            send_page(sub->req, sub->job);
        }
        sub_end(sub);
    }
}

/* ---- dispatch --------------------------------------------------------------------------- */

static void method_not_allowed(tr_http_req_t *req, const char *allow)
{
    tr_http_res_header(req, "Allow", allow);
    tr_http_res_problem(req, 405, "method-not-allowed", "Method not allowed",
                        "this resource takes %s", allow);
}

static void dispatch(tr_eventstore_t *s, tr_http_req_t *req, const route_t *r)
{
    const char *m = req->method;
    bool get = strcmp(m, "GET") == 0 || req->head;
    if (r->what == R_SUBSCRIBE) {
        if (!get) return method_not_allowed(req, "GET");
        return handle_subscribe(s, req, r);
    }
    if (r->all) {
        if (r->what != R_STREAM) return bad_request(req, "$all has no metadata");
        if (!get) return method_not_allowed(req, "GET");
        return handle_read(s, req, r);
    }
    if (r->what == R_METADATA) {
        if (get) return handle_get_metadata(s, req, r->stream);
        if (strcmp(m, "PUT") == 0) return handle_put_metadata(s, req, r->stream);
        return method_not_allowed(req, "GET, PUT");
    }
    if (get) return handle_read(s, req, r);
    if (strcmp(m, "POST") == 0) return handle_append(s, req, r->stream);
    if (strcmp(m, "DELETE") == 0) return handle_delete(s, req, r->stream);
    method_not_allowed(req, "GET, POST, DELETE");
}

#define SUBS_PREFIX     "/api/subscriptions"
#define SUBS_PREFIX_LEN (sizeof(SUBS_PREFIX) - 1)

static bool under(tr_http_req_t *req, const char *prefix, size_t len)
{
    return req->path_len >= len && memcmp(req->path, prefix, len) == 0 &&
           (req->path_len == len || req->path[len] == '/');
}

#define SCAVENGE_PATH "/api/scavenge"

bool tr_eventstore_ordered(const tr_http_req_t *req)
{
    size_t n = sizeof(PREFIX "/") - 1;
    return !strcmp(req->method, "POST") && req->path_len > n &&
           memcmp(req->path, PREFIX "/", n) == 0 && !memchr(req->path + n, '/', req->path_len - n);
}

bool tr_eventstore_handle(tr_eventstore_t *s, tr_http_req_t *req)
{
    if (req->path_len == sizeof(SCAVENGE_PATH) - 1 &&
        memcmp(req->path, SCAVENGE_PATH, req->path_len) == 0) {
        if (strcmp(req->method, "POST")) {
            method_not_allowed(req, "POST");
        } else if (s->closing) {
            tr_http_res_problem(req, 503, "store-unavailable", "Event store unavailable",
                                "the event store is shutting down; retry");
        } else { /* now rather than at the next automatic run */
            submit(write_ctx_new(s, req, "$scavenge", TR_ES_OP_SCAVENGE));
        }
        return true;
    }
    if (under(req, SUBS_PREFIX, SUBS_PREFIX_LEN)) {
        if (s->closing || !s->outbox)
            tr_http_res_problem(req, 503, "store-unavailable", "Event store unavailable",
                                "the event store is shutting down; retry");
        else
            tr__outbox_handle(s, req);
        return true;
    }
    if (req->path_len < PREFIX_LEN || memcmp(req->path, PREFIX, PREFIX_LEN) != 0 ||
        (req->path_len > PREFIX_LEN && req->path[PREFIX_LEN] != '/'))
        return false;
    if (s->closing) {
        tr_http_res_problem(req, 503, "store-unavailable", "Event store unavailable",
                            "the event store is shutting down; retry");
        return true;
    }
    route_t r;
    if (parse_route(req, &r)) dispatch(s, req, &r);
    return true;
}
