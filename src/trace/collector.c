/* The trace collector's HTTP surface: OTLP/Zipkin ingest and the trace query API. */
#include "trace/collector.h"

#include "core/buf.h"
#include "core/mem.h"
#include "trace/idmap.h"
#include "trellis/error.h"
#include "trellis/log.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define DEFAULT_LIMIT 20
#define MAX_LIMIT     1000

typedef struct ingest_job_s ingest_job_t;

/*
 * The loop decodes a request's spans and admits them; a thread-pool thread writes them to
 * SQLite, one write at a time, each write taking every batch that queued up meanwhile (a
 * group commit), and the retention's deletes when due; the loop then indexes them and
 * answers. In `trellis up` the loop is also the gateway's worker 0, which no longer runs
 * the inserts, their WAL writes and the writer's own checkpoints.
 */
struct tr_collector_s {
    tr_tracestore_t *store;
    uv_loop_t *loop;
    uv_timer_t timer;
    bool timer_started;
    uv_work_t work;
    bool writing;                     /* a write is on the thread pool */
    bool closing;                     /* closed: free once the write in progress is back */
    ingest_job_t *queue, *queue_tail; /* admitted, waiting for the next write */
    ingest_job_t *group;              /* the write in progress */
    uint64_t sweep_at;    /* the next write also applies retention as of this time (0: no) */
    uint64_t group_sweep; /* the write in progress applies it as of this time (0: no) */
};

typedef struct ingest_s {
    tr_collector_t *c;
    bool zipkin;
    bool done;
    tr_buf_t body;
    ingest_job_t *job; /* its spans on their way to SQLite */
} ingest_t;

/* A request's spans between admission and settling; outlives the request if it is aborted. */
struct ingest_job_s {
    tr_http_req_t *req; /* NULL once the client went away */
    ingest_t *in;
    bool zipkin;
    tr_span_batch_t b;
    tr_tracestore_admitted_t *admitted;
    int rc;
    ingest_job_t *next;
};

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- set-up */

static void write_next(tr_collector_t *c);

static void on_sweep(uv_timer_t *t)
{
    tr_collector_t *c = t->data;
    uint64_t now = wall_ms();
    if (!tr_tracestore_persistent(c->store)) {
        tr_tracestore_sweep(c->store, now);
        return;
    }
    tr_tracestore_sweep_memory(c->store, now);
    c->sweep_at = now;
    write_next(c);
}

int tr_collector_open(uv_loop_t *loop, const tr_collector_options_t *opts, tr_collector_t **out,
                      char *err, size_t errlen)
{
    char path[4096];
    tr_tracestore_options_t so = {.max_spans = opts->max_spans,
                                  .retention_ms = opts->retention_ms,
                                  .max_db_bytes = opts->max_db_bytes};
    if (opts->data_dir) {
        if (mkdir(opts->data_dir, 0755) && errno != EEXIST) {
            snprintf(err, errlen, "%s: cannot create the data directory: %s", opts->data_dir,
                     strerror(errno));
            return -errno;
        }
        snprintf(path, sizeof(path), "%s/traces.db", opts->data_dir);
        so.path = path;
    }
    tr_collector_t *c = tr_calloc(1, sizeof(*c));
    c->loop = loop;
    int rc = tr_tracestore_open(&so, &c->store, err, errlen);
    if (rc) {
        free(c);
        return rc;
    }
    uint64_t every = opts->sweep_ms;
    if (!every) {
        every = opts->retention_ms / 10;
        every = every < 200 ? 200 : every > 60000 ? 60000 : every;
    }
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    uv_timer_start(&c->timer, on_sweep, every, every);
    uv_unref((uv_handle_t *)&c->timer);
    c->timer_started = true;
    *out = c;
    return 0;
}

static void answer_job(tr_collector_t *c, ingest_job_t *j);

/* Frees the collector once no write is on the thread pool; queued batches get 503. */
static void finish_close(tr_collector_t *c)
{
    while (c->queue) {
        ingest_job_t *j = c->queue;
        c->queue = j->next;
        j->rc = TR_ECANCELED;
        answer_job(c, j);
    }
    tr_tracestore_close(c->store);
    free(c);
}

static void on_timer_closed(uv_handle_t *h)
{
    tr_collector_t *c = h->data;
    c->closing = true;
    if (!c->writing) finish_close(c);
}

void tr_collector_close(tr_collector_t *c)
{
    if (!c || uv_is_closing((uv_handle_t *)&c->timer)) return;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}

tr_tracestore_t *tr_collector_store(tr_collector_t *c)
{
    return c->store;
}

/* ---- responses */

static void send_json(tr_http_req_t *req, int status, json_t *body)
{
    char *s = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
    tr_http_res_send(req, status, "application/json", s, strlen(s));
    free(s);
    json_decref(body);
}

static json_t *hex_json(const uint8_t *id, size_t n)
{
    char hex[33];
    tr__hex_encode(id, n, hex);
    return json_string(hex);
}

static json_t *u64_string(uint64_t v)
{
    char s[24];
    snprintf(s, sizeof(s), "%llu", (unsigned long long)v);
    return json_string(s);
}

/* ---- ingest */

static void answer_otlp(tr_http_req_t *req, const tr_span_batch_t *b)
{
    json_t *ps = json_object();
    if (b->rejected) {
        json_object_set_new(ps, "rejectedSpans", json_integer((json_int_t)b->rejected));
        json_object_set_new(ps, "errorMessage", json_string(b->message));
    }
    send_json(req, 200, json_pack("{s:o}", "partialSuccess", ps));
}

static void ingest_finish(ingest_t *in)
{
    in->done = true;
    tr_buf_free(&in->body);
}

static void on_ingest_body(tr_http_req_t *req, const char *data, size_t len)
{
    ingest_t *in = req->data;
    if (in->done) return;
    if (in->body.len + len > TR_COLLECTOR_MAX_BODY) {
        tr_http_res_close(req);
        tr_http_res_problem(req, 413, "body-too-large", "Body too large",
                            "a span batch may be at most %u MiB; send smaller batches",
                            TR_COLLECTOR_MAX_BODY >> 20);
        ingest_finish(in);
        return;
    }
    tr_buf_append(&in->body, data, len);
}

/* The request's answer once its spans were stored (or not). */
static void answer(tr_http_req_t *req, bool zipkin, int rc, const tr_span_batch_t *b)
{
    if (rc == TR_ECANCELED)
        tr_http_res_problem(req, 503, "shutting-down", "Collector shutting down",
                            "the collector is stopping; nothing from this request was kept");
    else if (rc < 0)
        tr_http_res_problem(req, 503, "storage-failed", "Spans not stored",
                            "the trace database could not be written; nothing from this request "
                            "was kept, retry later (the collector's log says why)");
    else if (zipkin)
        tr_http_res_send(req, 202, NULL, NULL, 0);
    else
        answer_otlp(req, b);
}

/* Settles a job's spans in the store, answers its request if it is still there, frees it. */
static void answer_job(tr_collector_t *c, ingest_job_t *j)
{
    tr_tracestore_settle(c->store, j->admitted, j->rc);
    if (j->req) {
        j->in->job = NULL;
        ingest_finish(j->in); /* before the answer, which may end the request and free `in` */
        answer(j->req, j->zipkin, j->rc, &j->b);
    }
    tr__span_batch_free(&j->b);
    free(j);
}

static void on_write(uv_work_t *w)
{
    tr_collector_t *c = w->data;
    size_t n = 0;
    for (ingest_job_t *j = c->group; j; j = j->next)
        n++;
    if (n) {
        tr_tracestore_admitted_t *stack[64];
        tr_tracestore_admitted_t **a = n <= 64 ? stack : tr_malloc(n * sizeof(*a));
        size_t i = 0;
        for (ingest_job_t *j = c->group; j; j = j->next)
            a[i++] = j->admitted;
        int rc = tr_tracestore_write(c->store, a, n);
        for (ingest_job_t *j = c->group; j; j = j->next)
            j->rc = rc;
        if (a != stack) free(a);
    }
    if (c->group_sweep) tr_tracestore_sweep_db(c->store, c->group_sweep);
}

static void on_written(uv_work_t *w, int status)
{
    (void)status; /* uv_cancel is never called: the write always ran */
    tr_collector_t *c = w->data;
    ingest_job_t *j = c->group;
    c->group = NULL;
    c->writing = false;
    c->group_sweep = 0;
    while (j) {
        ingest_job_t *next = j->next;
        answer_job(c, j);
        j = next;
    }
    if (c->closing)
        finish_close(c);
    else
        write_next(c);
}

/* Starts the next write when none is in progress and there is something to write. */
static void write_next(tr_collector_t *c)
{
    if (c->writing || c->closing || (!c->queue && !c->sweep_at)) return;
    c->group = c->queue;
    c->queue = c->queue_tail = NULL;
    c->group_sweep = c->sweep_at;
    c->sweep_at = 0;
    c->writing = true;
    c->work.data = c;
    uv_queue_work(c->loop, &c->work, on_write, on_written);
}

static void on_ingest_end(tr_http_req_t *req)
{
    ingest_t *in = req->data;
    if (in->done) return;
    tr_span_batch_t b = {0};
    char err[320];
    uint64_t now = wall_ms();
    const char *body = in->body.data ? in->body.data : "";
    int rc = in->zipkin ? tr_ingest_zipkin(body, in->body.len, now, &b, err, sizeof(err))
                        : tr_ingest_otlp(body, in->body.len, now, &b, err, sizeof(err));
    tr_collector_t *c = in->c;
    if (rc) {
        tr_http_res_problem(req, 400, "bad-span-batch",
                            in->zipkin ? "Invalid Zipkin span list" : "Invalid OTLP request", "%s",
                            err);
    } else if (!tr_tracestore_persistent(c->store)) {
        answer(req, in->zipkin, tr_tracestore_append(c->store, &b, now), &b);
    } else {
        /* The request stays open until its spans are written: answered by answer_job. */
        tr_buf_free(&in->body);
        ingest_job_t *j = tr_calloc(1, sizeof(*j));
        *j = (ingest_job_t){.req = req, .in = in, .zipkin = in->zipkin, .b = b};
        j->admitted = tr_tracestore_admit(c->store, &j->b, now);
        in->job = j;
        if (c->queue_tail)
            c->queue_tail->next = j;
        else
            c->queue = j;
        c->queue_tail = j;
        write_next(c);
        return;
    }
    tr__span_batch_free(&b);
    ingest_finish(in);
}

static void on_ingest_abort(tr_http_req_t *req)
{
    ingest_t *in = req->data;
    if (in->job) { /* its spans are still stored; nobody to answer */
        in->job->req = NULL;
        in->job->in = NULL;
        in->job = NULL;
    }
    ingest_finish(in);
}

static bool header_has(tr_http_req_t *req, const char *name, const char *needle)
{
    const char *v = tr_http_req_header(req, name);
    return v && strcasestr(v, needle);
}

static void start_ingest(tr_http_req_t *req, tr_collector_t *c, bool zipkin)
{
    if (header_has(req, "content-type", "protobuf") || header_has(req, "content-type", "thrift")) {
        tr_http_res_problem(req, 415, "unsupported-media-type", "Unsupported media type",
                            "this collector takes JSON only (OTLP/HTTP JSON, Zipkin v2 JSON); "
                            "configure the exporter for application/json");
        return;
    }
    const char *enc = tr_http_req_header(req, "content-encoding");
    if (enc && strcasecmp(enc, "identity")) {
        tr_http_res_problem(req, 415, "unsupported-encoding", "Unsupported content encoding",
                            "Content-Encoding '%s' is not supported; send the body uncompressed",
                            enc);
        return;
    }
    ingest_t *in = tr_http_req_alloc(req, sizeof(*in));
    *in = (ingest_t){.c = c, .zipkin = zipkin, .body = TR_BUF_INIT};
    /* The whole body in one allocation, not regrown (and copied) as it arrives. */
    if (req->content_length > 0 && req->content_length <= TR_COLLECTOR_MAX_BODY)
        tr_buf_reserve(&in->body, (size_t)req->content_length + 1);
    req->data = in;
    req->on_body = on_ingest_body;
    req->on_end = on_ingest_end;
    req->on_abort = on_ingest_abort;
}

/* ---- one trace */

static const char *const kind_names[] = {"UNSPECIFIED", "INTERNAL", "SERVER",
                                         "CLIENT",      "PRODUCER", "CONSUMER"};

static json_t *span_json(const tr_cspan_t *sp)
{
    json_error_t je;
    json_t *o = json_loads(sp->detail, 0, &je);
    if (!json_is_object(o)) {
        json_decref(o);
        o = json_object();
    }
    json_object_set_new(o, "traceId", hex_json(sp->trace_id, 16));
    json_object_set_new(o, "spanId", hex_json(sp->span_id, 8));
    if (!tr__id_is_zero(sp->parent_id, 8))
        json_object_set_new(o, "parentSpanId", hex_json(sp->parent_id, 8));
    json_object_set_new(o, "service", json_string(sp->service));
    json_object_set_new(o, "name", json_string(sp->name));
    json_object_set_new(o, "kind", json_string(kind_names[sp->kind % 6]));
    json_object_set_new(o, "startTimeUnixNano", u64_string(sp->start_ns));
    json_object_set_new(o, "endTimeUnixNano", u64_string(sp->end_ns));
    json_object_set_new(o, "durationNs", json_integer((json_int_t)(sp->end_ns - sp->start_ns)));
    json_object_set_new(o, "status",
                        json_pack("{s:i,s:s}", "code", sp->status, "message", sp->status_message));
    json_object_set_new(o, "error", json_boolean(sp->error));
    if (*sp->correlation_id)
        json_object_set_new(o, "correlationId", json_string(sp->correlation_id));
    return o;
}

static json_t *services_json(const tr_trace_t *t)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < t->n; i++) {
        bool seen = false;
        for (size_t k = 0; k < i && !seen; k++)
            seen = !strcmp(t->spans[k]->service, t->spans[i]->service);
        if (!seen) json_array_append_new(arr, json_string(t->spans[i]->service));
    }
    return arr;
}

static json_t *summary_json(tr_tracestore_t *st, const tr_trace_t *t)
{
    const tr_cspan_t *root = tr_tracestore_root(st, t);
    json_t *o = json_object();
    json_object_set_new(o, "traceId", hex_json(t->trace_id, 16));
    json_object_set_new(o, "rootService", json_string(root ? root->service : ""));
    json_object_set_new(o, "rootName", json_string(root ? root->name : ""));
    json_object_set_new(o, "startTimeUnixNano", u64_string(t->start_ns));
    json_object_set_new(o, "durationNs", json_integer((json_int_t)(t->end_ns - t->start_ns)));
    json_object_set_new(o, "spanCount", json_integer((json_int_t)t->n));
    json_object_set_new(o, "error", json_boolean(t->error));
    json_object_set_new(o, "services", services_json(t));
    return o;
}

static int cmp_span_start(const void *a, const void *b)
{
    const tr_cspan_t *x = *(tr_cspan_t *const *)a, *y = *(tr_cspan_t *const *)b;
    return x->start_ns < y->start_ns ? -1 : x->start_ns > y->start_ns ? 1 : 0;
}

typedef struct tree_s {
    tr_cspan_t **spans; /* sorted by start */
    size_t n;
    long *parent;   /* index, -1 for a root */
    int *depth;     /* -1 until reached */
    tr_idmap_t ids; /* span id → index + 1 */
} tree_t;

static long tree_lookup(const tree_t *tr, const uint8_t id[8], int prefer_kind)
{
    size_t pos = 0;
    void *v;
    long found = -1;
    while ((v = tr__idmap_next(&tr->ids, tr__idmap_hash(id, 8, NULL, 0), &pos))) {
        long i = (long)(uintptr_t)v - 1;
        if (memcmp(tr->spans[i]->span_id, id, 8)) continue;
        if (found < 0 || tr->spans[i]->kind == prefer_kind) found = i;
    }
    return found;
}

/* Parent links: Zipkin's shared SERVER half hangs under its CLIENT half. */
static void tree_build(tree_t *tr)
{
    for (size_t i = 0; i < tr->n; i++)
        tr__idmap_put(&tr->ids, tr__idmap_hash(tr->spans[i]->span_id, 8, NULL, 0),
                      (void *)(uintptr_t)(i + 1));
    for (size_t i = 0; i < tr->n; i++) {
        const tr_cspan_t *sp = tr->spans[i];
        long p = -1;
        if (sp->kind == 2) {
            long twin = tree_lookup(tr, sp->span_id, 3);
            if (twin >= 0 && (size_t)twin != i && tr->spans[twin]->kind == 3) p = twin;
        }
        if (p < 0 && !tr__id_is_zero(sp->parent_id, 8)) p = tree_lookup(tr, sp->parent_id, 2);
        tr->parent[i] = (size_t)p == i ? -1 : p;
        tr->depth[i] = -1;
    }
}

/*
 * Depths by walking up to a root or a span already placed. A cycle of parent links (bad
 * input) is cut where it closes: that span becomes a root.
 */
static void compute_depths(tree_t *tr)
{
    size_t *stack = tr_malloc((tr->n ? tr->n : 1) * sizeof(*stack));
    for (size_t i = 0; i < tr->n; i++) {
        size_t len, j;
    again:
        len = 0;
        j = i;
        while (tr->depth[j] == -1) {
            tr->depth[j] = -2;
            stack[len++] = j;
            if (tr->parent[j] < 0) break;
            j = (size_t)tr->parent[j];
        }
        if (tr->depth[j] == -2 && tr->parent[j] >= 0) {
            tr->parent[j] = -1;
            for (size_t k = 0; k < len; k++)
                tr->depth[stack[k]] = -1;
            goto again;
        }
        while (len--) {
            size_t x = stack[len];
            tr->depth[x] = tr->parent[x] < 0 ? 0 : tr->depth[tr->parent[x]] + 1;
        }
    }
    free(stack);
}

static json_t *trace_json(tr_tracestore_t *st, tr_trace_t *t)
{
    tree_t tr = {.n = t->n};
    tr.spans = tr_malloc(t->n * sizeof(*tr.spans));
    memcpy(tr.spans, t->spans, t->n * sizeof(*tr.spans));
    qsort(tr.spans, tr.n, sizeof(*tr.spans), cmp_span_start);
    tr.parent = tr_malloc(t->n * sizeof(*tr.parent));
    tr.depth = tr_malloc(t->n * sizeof(*tr.depth));
    tree_build(&tr);
    compute_depths(&tr);
    json_t **objs = tr_malloc(t->n * sizeof(*objs));
    json_t *spans = json_array(), *roots = json_array();
    for (size_t i = 0; i < tr.n; i++) {
        objs[i] = span_json(tr.spans[i]);
        json_object_set_new(objs[i], "children", json_array());
    }
    for (size_t i = 0; i < tr.n; i++) {
        json_object_set_new(objs[i], "depth", json_integer(tr.depth[i]));
        json_t *id = hex_json(tr.spans[i]->span_id, 8);
        if (tr.parent[i] >= 0)
            json_array_append_new(json_object_get(objs[tr.parent[i]], "children"), id);
        else
            json_array_append_new(roots, id);
        json_array_append_new(spans, objs[i]);
    }
    json_t *o = summary_json(st, t);
    json_object_set_new(o, "roots", roots);
    json_object_set_new(o, "spans", spans);
    tr__idmap_free(&tr.ids);
    free(objs);
    free(tr.spans);
    free(tr.parent);
    free(tr.depth);
    return o;
}

static bool parse_trace_id(const char *s, size_t len, uint8_t id[16])
{
    memset(id, 0, 16);
    if (len == 16) return tr__hex_decode(s, 16, id + 8, 8);
    return tr__hex_decode(s, len, id, 16);
}

static void get_trace(tr_http_req_t *req, tr_collector_t *c, const char *idtext, size_t len)
{
    uint8_t id[16];
    if (!parse_trace_id(idtext, len, id)) {
        tr_http_res_problem(req, 400, "bad-trace-id", "Invalid trace id",
                            "a trace id is 32 (or 16) hex digits, e.g. "
                            "5b8efff798038103d269b633813fc60c");
        return;
    }
    tr_trace_t *t;
    bool owned;
    int rc = tr_tracestore_find(c->store, id, &t, &owned);
    if (rc == TR_ENOTFOUND) {
        tr_http_res_problem(req, 404, "trace-not-found", "Trace not found",
                            "no trace %.*s is stored (it may have expired by retention)", (int)len,
                            idtext);
        return;
    }
    if (rc) {
        tr_http_res_problem(req, 503, "storage-failed", "Trace store unavailable",
                            "the trace database could not be read; retry later");
        return;
    }
    send_json(req, 200, trace_json(c->store, t));
    if (owned) tr_tracestore_trace_free(t);
}

/* ---- trace search */

/* A duration: "250ms", "1.5s", "300us", "2m"; a bare number is microseconds (Zipkin's). */
static bool parse_duration_ns(const char *s, uint64_t *ns)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0) return false;
    static const struct {
        const char *unit;
        double mult;
    } units[] = {{"", 1e3},   {"ns", 1},  {"us", 1e3}, {"µs", 1e3},
                 {"ms", 1e6}, {"s", 1e9}, {"m", 60e9}, {"h", 3600e9}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (!strcmp(end, units[i].unit)) {
            double r = v * units[i].mult;
            if (r > 1.8e19) return false;
            *ns = (uint64_t)r;
            return true;
        }
    return false;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || errno || *s == '-') return false;
    *out = v;
    return true;
}

static const char *param(tr_http_req_t *req, const char *name)
{
    const char *v;
    return tr_http_query_param(req, name, &v) && *v ? v : NULL;
}

static bool parse_query(tr_http_req_t *req, tr_trace_query_t *q)
{
    const char *v;
    uint64_t n;
    *q = (tr_trace_query_t){.error = -1, .limit = DEFAULT_LIMIT};
    q->service = param(req, "service");
    q->operation = param(req, "operation");
    q->correlation_id = param(req, "correlation_id");
    if ((v = param(req, "min_duration")) && !parse_duration_ns(v, &q->min_duration_ns)) {
        tr_http_res_problem(req, 400, "bad-query", "Invalid query parameter",
                            "min_duration '%s' is not a duration (e.g. 250ms, 1.5s, or a number "
                            "of microseconds)",
                            v);
        return false;
    }
    if ((v = param(req, "error"))) {
        bool t = !strcmp(v, "true") || !strcmp(v, "1"), f = !strcmp(v, "false") || !strcmp(v, "0");
        if (!t && !f) {
            tr_http_res_problem(req, 400, "bad-query", "Invalid query parameter",
                                "error must be true or false, not '%s'", v);
            return false;
        }
        q->error = t;
    }
    static const char *const times[] = {"start", "end"};
    uint64_t *dst[] = {&q->start_ns, &q->end_ns};
    for (int i = 0; i < 2; i++) {
        if (!(v = param(req, times[i]))) continue;
        if (!parse_u64(v, &n) || n > UINT64_MAX / 1000) {
            tr_http_res_problem(req, 400, "bad-query", "Invalid query parameter",
                                "%s must be microseconds since the Unix epoch, not '%s'", times[i],
                                v);
            return false;
        }
        *dst[i] = n * 1000;
    }
    if ((v = param(req, "limit"))) {
        if (!parse_u64(v, &n) || n < 1 || n > MAX_LIMIT) {
            tr_http_res_problem(req, 400, "bad-query", "Invalid query parameter",
                                "limit must be 1 to %d, not '%s'", MAX_LIMIT, v);
            return false;
        }
        q->limit = n;
    }
    return true;
}

static void list_traces(tr_http_req_t *req, tr_collector_t *c)
{
    tr_trace_query_t q;
    if (!parse_query(req, &q)) return;
    tr_trace_t **found;
    size_t n = tr_tracestore_query(c->store, &q, &found);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, summary_json(c->store, found[i]));
    free(found);
    send_json(req, 200, json_pack("{s:o}", "traces", arr));
}

static json_t *services_list(tr_collector_t *c)
{
    const char **names;
    size_t n = tr_tracestore_services(c->store, &names);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_string(names[i]));
    free(names);
    return arr;
}

/* Zipkin's DependencyLink shape; `errorCount` is left out when zero, as Zipkin does. */
static json_t *dependencies(tr_collector_t *c, bool zipkin)
{
    tr_dep_edge_t *edges;
    size_t n = tr_deps_edges(tr_tracestore_deps(c->store), &edges);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_pack("{s:s,s:s,s:I}", "parent", edges[i].parent, "child", edges[i].child,
                              "callCount", (json_int_t)edges[i].calls);
        if (!zipkin || edges[i].errors)
            json_object_set_new(o, "errorCount", json_integer((json_int_t)edges[i].errors));
        json_array_append_new(arr, o);
    }
    free(edges);
    return arr;
}

/* ---- routing */

static bool path_is(const tr_http_req_t *req, const char *p)
{
    return req->path_len == strlen(p) && !memcmp(req->path, p, req->path_len);
}

static void method_not_allowed(tr_http_req_t *req, const char *allow)
{
    tr_http_res_header(req, "allow", allow);
    tr_http_res_problem(req, 405, "method-not-allowed", "Method not allowed",
                        "%s %.*s is not served; use %s", req->method, (int)req->path_len, req->path,
                        allow);
}

static bool route_ingest(tr_http_req_t *req, tr_collector_t *c)
{
    bool otlp = path_is(req, "/v1/traces"), zipkin = path_is(req, "/api/v2/spans");
    if (!otlp && !zipkin) return false;
    if (strcmp(req->method, "POST")) {
        method_not_allowed(req, "POST");
        return true;
    }
    start_ingest(req, c, zipkin);
    return true;
}

void tr_collector_handle(tr_http_req_t *req, void *data)
{
    tr_collector_t *c = data;
    if (route_ingest(req, c)) return;
    bool get = !strcmp(req->method, "GET") || req->head;
    static const char prefix[] = "/api/traces/";
    if (!get && !strncmp(req->path, "/api/", 5)) {
        method_not_allowed(req, "GET");
    } else if (path_is(req, "/api/traces")) {
        list_traces(req, c);
    } else if (req->path_len > sizeof(prefix) - 1 &&
               !memcmp(req->path, prefix, sizeof(prefix) - 1)) {
        get_trace(req, c, req->path + sizeof(prefix) - 1, req->path_len - (sizeof(prefix) - 1));
    } else if (path_is(req, "/api/services")) {
        send_json(req, 200, json_pack("{s:o}", "services", services_list(c)));
    } else if (path_is(req, "/api/v2/services")) {
        send_json(req, 200, services_list(c));
    } else if (path_is(req, "/api/dependencies")) {
        send_json(req, 200, json_pack("{s:o}", "dependencies", dependencies(c, false)));
    } else if (path_is(req, "/api/v2/dependencies")) {
        send_json(req, 200, dependencies(c, true));
    } else {
        tr_http_res_problem(req, 404, "not-found", "Not found",
                            "%.*s is not a collector endpoint (see docs/collector.md)",
                            (int)req->path_len, req->path);
    }
}
