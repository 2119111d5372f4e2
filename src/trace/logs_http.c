/* The log store's HTTP API: GET /api/logs (query, long-poll follow), POST /api/logs. */
#include "trace/logs.h"

#include "core/buf.h"
#include "core/mem.h"
#include "trellis/config.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FOLLOW_DEFAULT_WAIT_MS (30 * 1000)
#define FOLLOW_MAX_WAIT_MS     (5 * 60 * 1000)
#define POST_MAX_BYTES         (1024 * 1024)
#define POST_PERSIST_WAIT_MS   (10 * 1000)

/*
 * A request in progress: a GET whose query runs on the libuv threadpool (SQLite reads must
 * not block the loop), a follower waiting for lines, or a POST waiting for the disk.
 */
typedef struct parked_s {
    uv_timer_t timer;
    uv_work_t work;
    tr_http_req_t *req; /* NULL once the client went away */
    struct logs_http_s *h;
    struct parked_s *prev, *next;
    bool post, follow;
    bool busy;         /* a query is running on the threadpool */
    bool again;        /* lines arrived while it ran: query once more */
    bool expired;      /* the wait ended while it ran: answer whatever it finds */
    tr_logs_query_t q; /* its strings are copies in `strs`: the worker outlives an abort */
    char *strs;
    json_t *lines; /* the worker's result */
    uint64_t found_next;
    uint64_t seq; /* post: the last line it added */
    size_t accepted;
    tr_buf_t body; /* post: the body while it arrives */
} parked_t;

typedef struct logs_http_s {
    tr_logs_t *logs;
    uv_loop_t *loop;
    uv_async_t async;
    parked_t *parked;
    size_t handles; /* open uv handles (the async and each parked timer) */
    bool closing;
} logs_http_t;

/* ---- rendering -------------------------------------------------------------------------- */

static json_t *format_ts(int64_t ns)
{
    char buf[48];
    time_t sec = (time_t)(ns / 1000000000);
    long frac = (long)(ns % 1000000000);
    if (frac < 0) sec--, frac += 1000000000;
    struct tm tm;
    gmtime_r(&sec, &tm);
    size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, sizeof(buf) - n, ".%09ldZ", frac);
    return json_string(buf);
}

static json_t *opt_string(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *line_json(const tr_log_line_t *ln)
{
    const tr_log_entry_t *e = &ln->entry;
    json_t *o = json_object();
    json_object_set_new(o, "seq", json_integer((json_int_t)ln->seq));
    json_object_set_new(o, "ts", format_ts(e->time_ns));
    json_object_set_new(o, "level", json_string(tr_log_level_name(e->level)));
    json_object_set_new(o, "service", json_string(e->service ? e->service : ""));
    json_object_set_new(o, "instance", json_string(e->instance ? e->instance : ""));
    json_object_set_new(o, "message", json_string(e->message ? e->message : ""));
    json_object_set_new(o, "correlation_id", opt_string(e->correlation_id));
    json_object_set_new(o, "trace_id", opt_string(e->trace_id));
    json_t *fields = e->fields_json ? json_loads(e->fields_json, 0, NULL) : NULL;
    json_object_set_new(o, "fields", fields ? fields : json_null());
    if (e->truncated) json_object_set_new(o, "truncated", json_true());
    return o;
}

static void on_result(const tr_log_line_t *ln, void *data)
{
    json_t *arr = data;
    json_array_append_new(arr, line_json(ln));
}

/* Runs the query with a fixed upper cursor, so "next" never skips a line that arrived
 * while the query ran. Returns the lines; *next is the cursor to continue after. */
static json_t *run_query(tr_logs_t *l, tr_logs_query_t *q, uint64_t *next)
{
    tr_logs_stats_t st;
    tr_logs_stats(l, &st);
    q->upto = st.last_seq;
    json_t *lines = json_array();
    size_t n = tr_logs_query(l, q, on_result, lines);
    size_t limit = q->limit ? q->limit : TR_LOGS_DEFAULT_LIMIT;
    *next = st.last_seq > q->after ? st.last_seq : q->after;
    if (q->oldest_first && n == limit && n > 0) {
        json_t *last = json_array_get(lines, n - 1);
        *next = (uint64_t)json_integer_value(json_object_get(last, "seq"));
    }
    return lines;
}

static void send_json(tr_http_req_t *req, int status, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    tr_http_res_header(req, "Cache-Control", "no-store");
    tr_http_res_send(req, status, "application/json", text, strlen(text));
    free(text);
}

static void answer_lines(tr_http_req_t *req, json_t *lines, uint64_t next)
{
    json_t *body = json_object();
    json_object_set_new(body, "lines", lines);
    json_object_set_new(body, "next", json_integer((json_int_t)next));
    send_json(req, 200, body);
}

/* ---- query parameters ------------------------------------------------------------------- */

static bool parse_u64(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9') return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return false;
    *out = v;
    return true;
}

static bool bad(tr_http_req_t *req, const char *param, const char *value, const char *want)
{
    tr_http_res_problem(req, 400, "bad-query", "Invalid query parameter", "%s=%s is not valid: %s",
                        param, value, want);
    return false;
}

static const char *str_param(tr_http_req_t *req, const char *name)
{
    const char *v;
    return tr_http_query_param(req, name, &v) && *v ? v : NULL;
}

static bool parse_times(tr_http_req_t *req, tr_logs_query_t *q)
{
    static const char want[] = "use RFC 3339 (2026-11-22T10:00:00Z), epoch seconds or "
                               "milliseconds, or a duration before now such as 5m or 2h";
    const char *v;
    if ((v = str_param(req, "since")) && !tr_logs_parse_time(v, true, 0, &q->since_ns))
        return bad(req, "since", v, want);
    if ((v = str_param(req, "until")) && !tr_logs_parse_time(v, true, 0, &q->until_ns))
        return bad(req, "until", v, want);
    return true;
}

static bool parse_flag(tr_http_req_t *req, const char *name, bool *out)
{
    const char *v;
    *out = false;
    if (!tr_http_query_param(req, name, &v)) return true;
    if (!*v || !strcmp(v, "1") || !strcmp(v, "true")) return *out = true;
    if (!strcmp(v, "0") || !strcmp(v, "false")) return true;
    return bad(req, name, v, "use 1 or 0 (true or false)");
}

static bool parse_query(tr_http_req_t *req, tr_logs_query_t *q, bool *follow, uint64_t *wait_ms)
{
    *q = (tr_logs_query_t){.service = str_param(req, "service"),
                           .correlation_id = str_param(req, "correlation_id"),
                           .trace_id = str_param(req, "trace_id"),
                           .q = str_param(req, "q")};
    const char *v;
    if (!parse_times(req, q) || !parse_flag(req, "follow", follow)) return false;
    if ((v = str_param(req, "level"))) {
        int lv = tr_log_level_parse(v);
        if (lv < 0) return bad(req, "level", v, "use debug, info, warn or error");
        q->min_level = (tr_log_level_t)lv;
    }
    uint64_t n;
    if ((v = str_param(req, "limit")) && (!parse_u64(v, &n) || n < 1 || n > TR_LOGS_MAX_LIMIT))
        return bad(req, "limit", v, "use a whole number from 1 to 10000");
    if (v) q->limit = (size_t)n;
    if ((v = str_param(req, "after")) && !parse_u64(v, &q->after))
        return bad(req, "after", v, "use the \"next\" value of the previous answer");
    if ((v = str_param(req, "order"))) {
        if (!strcmp(v, "oldest") || !strcmp(v, "asc"))
            q->oldest_first = true;
        else if (strcmp(v, "newest") && strcmp(v, "desc"))
            return bad(req, "order", v, "use newest or oldest");
    }
    *wait_ms = FOLLOW_DEFAULT_WAIT_MS;
    if ((v = str_param(req, "wait"))) {
        if (tr_parse_duration_ms(v, wait_ms) < 0)
            return bad(req, "wait", v, "use a duration such as 10s or 1m (at most 5m)");
        if (*wait_ms > FOLLOW_MAX_WAIT_MS) *wait_ms = FOLLOW_MAX_WAIT_MS;
    }
    return true;
}

/* ---- parked requests -------------------------------------------------------------------- */

/* A handle closed: the state goes with the last one after tr_logs_shutdown. */
static void maybe_free_state(logs_http_t *h);

static void on_parked_closed(uv_handle_t *t)
{
    parked_t *p = t->data;
    logs_http_t *h = p->h;
    tr_buf_free(&p->body);
    json_decref(p->lines);
    free(p->strs);
    free(p);
    maybe_free_state(h);
}

/* Unlinks and frees (in the timer's close callback); never while a query runs. */
static void unpark(parked_t *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        p->h->parked = p->next;
    if (p->next) p->next->prev = p->prev;
    p->prev = p->next = NULL;
    p->req = NULL;
    uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->timer, on_parked_closed);
}

/* Takes the request back from the handler's callbacks before answering it. */
static tr_http_req_t *release_req(parked_t *p)
{
    tr_http_req_t *req = p->req;
    req->on_abort = NULL;
    req->on_body = NULL; /* a POST answered at shutdown no longer reads its body */
    req->on_end = NULL;
    return req;
}

static void answer_post(parked_t *p, bool persisted)
{
    json_t *body = json_object();
    json_object_set_new(body, "accepted", json_integer((json_int_t)p->accepted));
    json_object_set_new(body, "last", json_integer((json_int_t)p->seq));
    json_object_set_new(body, "persisted", json_boolean(persisted));
    send_json(release_req(p), persisted ? 200 : 202, body);
    unpark(p);
}

/* Answers a POST once its lines are on disk, or at its deadline (`final`) either way. */
static void try_answer_post(parked_t *p, bool final)
{
    tr_logs_stats_t st;
    tr_logs_stats(p->h->logs, &st);
    bool persisted = st.persisted_seq >= p->seq;
    if (persisted || final) answer_post(p, persisted);
}

/* Answers a query with what it found, or a follower with no lines and its cursor. */
static void answer_query(parked_t *p)
{
    json_t *lines = p->lines ? p->lines : json_array();
    uint64_t next = p->lines ? p->found_next : p->q.after;
    p->lines = NULL;
    answer_lines(release_req(p), lines, next);
    unpark(p);
}

static void on_query_work(uv_work_t *w)
{
    parked_t *p = w->data;
    p->lines = run_query(p->h->logs, &p->q, &p->found_next);
}

static void start_query(parked_t *p);

static void on_query_done(uv_work_t *w, int status)
{
    parked_t *p = w->data;
    p->busy = false;
    if (!p->req) {
        unpark(p); /* the client left while the query ran */
        return;
    }
    if (!p->follow || p->expired || json_array_size(p->lines) > 0) {
        answer_query(p);
        return;
    }
    json_decref(p->lines);
    p->lines = NULL;
    if (p->again) start_query(p);
}

static void start_query(parked_t *p)
{
    if (p->busy) {
        p->again = true;
        return;
    }
    p->again = false;
    p->busy = true;
    p->work.data = p;
    uv_queue_work(p->h->loop, &p->work, on_query_work, on_query_done);
}

static void on_parked_timeout(uv_timer_t *t)
{
    parked_t *p = t->data;
    if (p->post)
        try_answer_post(p, true);
    else if (p->busy)
        p->expired = true;
    else
        answer_query(p);
}

static void on_parked_abort(tr_http_req_t *req)
{
    parked_t *p = req->data;
    p->req = NULL;
    if (!p->busy) unpark(p);
}

static parked_t *park(logs_http_t *h, tr_http_req_t *req)
{
    parked_t *p = tr_calloc(1, sizeof(*p));
    p->h = h;
    p->req = req;
    uv_timer_init(h->loop, &p->timer);
    h->handles++;
    p->timer.data = p;
    p->next = h->parked;
    if (p->next) p->next->prev = p;
    h->parked = p;
    req->data = p;
    req->on_abort = on_parked_abort;
    return p;
}

/* New lines arrived or reached the disk: look again for whoever waits. */
static void on_async(uv_async_t *a)
{
    logs_http_t *h = a->data;
    parked_t *p = h->parked;
    while (p) {
        parked_t *next = p->next;
        if (p->req && p->post)
            try_answer_post(p, false);
        else if (p->req && p->follow)
            start_query(p);
        p = next;
    }
}

static void on_notify(void *data, bool persisted)
{
    logs_http_t *h = data;
    uv_async_send(&h->async);
}

static void maybe_free_state(logs_http_t *h)
{
    h->handles--;
    if (h->closing && h->handles == 0) free(h);
}

static void on_async_closed(uv_handle_t *a)
{
    maybe_free_state(a->data);
}

static logs_http_t *state(tr_logs_t *l, uv_loop_t *loop)
{
    void **slot = tr__logs_http_slot(l);
    if (*slot) return *slot;
    logs_http_t *h = tr_calloc(1, sizeof(*h));
    h->logs = l;
    h->loop = loop;
    uv_async_init(loop, &h->async, on_async);
    h->handles = 1;
    h->async.data = h;
    *slot = h;
    tr_logs_set_notify(l, on_notify, h);
    return h;
}

void tr_logs_shutdown(tr_logs_t *l)
{
    void **slot = tr__logs_http_slot(l);
    logs_http_t *h = *slot;
    if (!h) return;
    tr_logs_set_notify(l, NULL, NULL);
    *slot = NULL;
    h->closing = true;
    /* Everyone gets an answer now; a running query answers when it is done. */
    parked_t *p = h->parked;
    while (p) {
        parked_t *next = p->next;
        if (!p->req || p->busy)
            p->expired = true;
        else if (p->post)
            try_answer_post(p, true);
        else
            answer_query(p);
        p = next;
    }
    uv_close((uv_handle_t *)&h->async, on_async_closed);
}

/* ---- GET -------------------------------------------------------------------------------- */

/* Copies the query's strings, which the threadpool reads after the request may be gone. */
static void own_strings(parked_t *p)
{
    const char **f[] = {&p->q.service, &p->q.correlation_id, &p->q.trace_id, &p->q.q};
    size_t n = sizeof(f) / sizeof(f[0]), total = 1;
    for (size_t i = 0; i < n; i++)
        total += *f[i] ? strlen(*f[i]) + 1 : 0;
    char *w = p->strs = tr_malloc(total);
    for (size_t i = 0; i < n; i++) {
        if (!*f[i]) continue;
        size_t len = strlen(*f[i]) + 1;
        memcpy(w, *f[i], len);
        *f[i] = w;
        w += len;
    }
}

static void handle_get(tr_logs_t *l, tr_http_req_t *req)
{
    tr_logs_query_t q;
    bool follow;
    uint64_t wait_ms;
    if (!parse_query(req, &q, &follow, &wait_ms)) return;
    if (follow) {
        tr_logs_stats_t st;
        tr_logs_stats(l, &st);
        if (!str_param(req, "after")) q.after = st.last_seq;
        q.oldest_first = true;
    }
    parked_t *p = park(state(l, req->loop), req);
    p->q = q;
    own_strings(p);
    p->follow = follow && wait_ms > 0;
    if (p->follow) uv_timer_start(&p->timer, on_parked_timeout, wait_ms, 0);
    start_query(p);
}

/* ---- POST ------------------------------------------------------------------------------- */

/* Adds each element of a JSON array of entry objects; returns false after answering 400. */
static bool ingest_array(tr_http_req_t *req, parked_t *p, const char *service, int stream)
{
    json_error_t jerr;
    json_t *arr = json_loadb(p->body.data, p->body.len, 0, &jerr);
    if (!json_is_array(arr)) {
        json_decref(arr);
        tr_http_res_problem(req, 400, "bad-body", "Invalid log lines",
                            "the body starts with '[' but is not a JSON array (line %d, column "
                            "%d: %s); send an array of objects, or one line per entry",
                            jerr.line, jerr.column, jerr.text);
        return false;
    }
    size_t i;
    json_t *el;
    json_array_foreach(arr, i, el)
    {
        if (!json_is_object(el)) {
            json_decref(arr);
            tr_http_res_problem(req, 400, "bad-body", "Invalid log lines",
                                "element %zu of the array is not an object; each entry is an "
                                "object such as {\"msg\": \"...\", \"level\": \"info\"}",
                                i);
            return false;
        }
    }
    json_array_foreach(arr, i, el)
    {
        char *text = json_dumps(el, JSON_COMPACT);
        p->seq = tr_logs_ingest_line(p->h->logs, service, str_param(req, "instance"), stream, text,
                                     strlen(text));
        p->accepted++;
        free(text);
    }
    json_decref(arr);
    return true;
}

static void ingest_lines(tr_http_req_t *req, parked_t *p, const char *service, int stream)
{
    const char *s = p->body.data, *end = s + p->body.len;
    while (s < end) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        size_t len = nl ? (size_t)(nl - s) : (size_t)(end - s);
        size_t trim = len;
        while (trim > 0 && (s[trim - 1] == '\r' || s[trim - 1] == ' ' || s[trim - 1] == '\t'))
            trim--;
        if (trim > 0) {
            p->seq = tr_logs_ingest_line(p->h->logs, service, str_param(req, "instance"), stream, s,
                                         len);
            p->accepted++;
        }
        s += len + 1;
    }
}

static void on_post_body(tr_http_req_t *req, const char *data, size_t len)
{
    parked_t *p = req->data;
    if (p->body.len + len > POST_MAX_BYTES) return; /* answered 413 in on_post_end */
    tr_buf_append(&p->body, data, len);
}

static void on_post_end(tr_http_req_t *req)
{
    parked_t *p = req->data;
    if (p->body.len >= POST_MAX_BYTES) {
        req->on_abort = NULL;
        tr_http_res_close(req);
        tr_http_res_problem(req, 413, "body-too-large", "Body too large",
                            "send at most %d bytes of log lines per request", POST_MAX_BYTES);
        unpark(p);
        return;
    }
    const char *stream_v = str_param(req, "stream");
    int stream = stream_v && !strcmp(stream_v, "stderr") ? 2 : 1;
    const char *service = str_param(req, "service");
    size_t skip = 0;
    while (skip < p->body.len && strchr(" \t\r\n", p->body.data[skip]))
        skip++;
    if (skip < p->body.len && p->body.data[skip] == '[') {
        if (!ingest_array(req, p, service, stream)) {
            req->on_abort = NULL;
            unpark(p);
            return;
        }
    } else {
        ingest_lines(req, p, service, stream);
    }
    tr_buf_free(&p->body);
    uv_timer_start(&p->timer, on_parked_timeout, POST_PERSIST_WAIT_MS, 0);
    try_answer_post(p, p->accepted == 0);
}

static void handle_post(tr_logs_t *l, tr_http_req_t *req)
{
    if (req->content_length > POST_MAX_BYTES) {
        tr_http_res_close(req);
        tr_http_res_problem(req, 413, "body-too-large", "Body too large",
                            "the body has %lld bytes; send at most %d bytes of log lines per "
                            "request, splitting larger batches",
                            (long long)req->content_length, POST_MAX_BYTES);
        return;
    }
    /* A stalled body is the server's body timeout's business; the deadline here starts
     * once the body is in and the wait is for the disk. */
    parked_t *p = park(state(l, req->loop), req);
    p->post = true;
    req->on_body = on_post_body;
    req->on_end = on_post_end;
}

/* ---- entry point ------------------------------------------------------------------------ */

bool tr_logs_handle(tr_logs_t *l, tr_http_req_t *req)
{
    if (req->path_len != sizeof("/api/logs") - 1 || memcmp(req->path, "/api/logs", req->path_len))
        return false;
    if (!strcmp(req->method, "GET") || !strcmp(req->method, "HEAD")) {
        handle_get(l, req);
    } else if (!strcmp(req->method, "POST")) {
        handle_post(l, req);
    } else {
        tr_http_res_header(req, "Allow", "GET, HEAD, POST");
        tr_http_res_problem(req, 405, "method-not-allowed", "Method not allowed",
                            "%s is not allowed on /api/logs; use GET to query or POST to add lines",
                            req->method);
    }
    return true;
}
