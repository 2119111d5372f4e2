/* Push subscriptions (the outbox): definitions, filters, and the delivery loop per subscription. */
#include "eventstore/eventstore_internal.h"
#include "eventstore/outbox.h"

#include "core/buf.h"
#include "core/mem.h"
#include "trellis/error.h"
#include "trellis/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define PAGE_EVENTS      100   /* events read per page */
#define SEND_TIMEOUT_MS  10000 /* request sent to response headers */
#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS   30000
#define STORE_RETRY_MS   1000 /* after a failed read or checkpoint write */

/* ---- definitions ------------------------------------------------------------------------ */

bool tr__outbox_valid_name(const char *name, size_t len)
{
    if (len == 0 || len > TR_OUTBOX_MAX_NAME) return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

void tr__outbox_def_free(tr_outbox_def_t *def)
{
    free(def->stream);
    for (size_t i = 0; i < def->ntypes; i++)
        free(def->types[i]);
    free(def->types);
    free(def->url);
    free(def->service);
    free(def->target);
    free(def->text);
    memset(def, 0, sizeof(*def));
}

/* "$all", "<prefix>*" or a stream name; false when it is none of them. */
static bool parse_stream(const char *v, tr_outbox_def_t *def)
{
    size_t n = strlen(v);
    if (strcmp(v, "$all") == 0) return true;
    def->prefix = n > 1 && v[n - 1] == '*';
    if (def->prefix) n--;
    if (!tr_eventstore_valid_stream(v, n) || memchr(v, '*', n)) return false;
    def->stream = tr_strndup(v, n);
    return true;
}

static bool parse_types(json_t *types, tr_outbox_def_t *def)
{
    if (!types || json_is_null(types)) return true;
    size_t n = json_array_size(types);
    if (!json_is_array(types) || n == 0 || n > TR_OUTBOX_MAX_TYPES) return false;
    def->types = tr_calloc(n, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(types, i);
        if (!json_is_string(t) || json_string_length(t) == 0) return false;
        def->types[def->ntypes++] = tr_strdup(json_string_value(t));
    }
    return true;
}

/* service:NAME/PATH: an instance of the service, found through discovery at each send. */
static bool parse_service_url(const char *v, tr_outbox_def_t *def)
{
    const char *name = v + 8, *path = strchr(name, '/');
    size_t n = path ? (size_t)(path - name) : 0;
    if (n == 0 || n > 128) return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    for (const char *c = path; *c; c++)
        if ((unsigned char)*c <= 0x20 || *c == 0x7f) return false;
    def->service = tr_strndup(name, n);
    def->target = tr_strdup(path);
    def->url = tr_strdup(v);
    return true;
}

/* http://IP:port/path (deliveries never wait for DNS), or service:NAME/PATH. */
static bool parse_url(const char *v, tr_outbox_def_t *def)
{
    if (strncmp(v, "service:", 8) == 0) return parse_service_url(v, def);
    tr_http_url_t u;
    if (strncmp(v, "http://", 7) != 0 || tr_http_url_parse(v, &u) != 0) return false;
    bool ok = u.literal;
    if (ok) {
        def->ep = u.ep;
        def->target = tr_strdup(u.target);
        def->url = tr_strdup(v);
    }
    tr_http_url_free(&u);
    return ok;
}

#define BAD(...) (snprintf(detail, len, __VA_ARGS__), 422)

static int parse_fields(json_t *body, tr_outbox_def_t *def, char *detail, size_t len)
{
    json_t *stream = json_object_get(body, "stream"), *url = json_object_get(body, "url");
    json_t *from = json_object_get(body, "from"), *max = json_object_get(body, "max_attempts");
    if (!json_is_string(stream) || !parse_stream(json_string_value(stream), def))
        return BAD("\"stream\" must be a stream name, \"<prefix>-*\" or \"$all\"");
    if (!parse_types(json_object_get(body, "types"), def))
        return BAD("\"types\" must be an array of 1 to %d non-empty strings, or absent",
                   TR_OUTBOX_MAX_TYPES);
    if (!json_is_string(url) || !parse_url(json_string_value(url), def))
        return BAD("\"url\" must be http://IP:PORT/PATH with an IP address (no host names, no "
                   "https) or service:NAME/PATH (an instance of a registered service)");
    const char *f = from && !json_is_null(from) ? json_string_value(from) : "end";
    if (!f || (strcmp(f, "start") != 0 && strcmp(f, "end") != 0))
        return BAD("\"from\" must be \"start\" or \"end\"");
    def->from_start = strcmp(f, "start") == 0;
    def->max_attempts = TR_OUTBOX_DEF_ATTEMPTS;
    if (max && !json_is_null(max)) {
        if (!json_is_integer(max) || json_integer_value(max) < 1 ||
            json_integer_value(max) > TR_OUTBOX_MAX_ATTEMPTS)
            return BAD("\"max_attempts\" must be an integer from 1 to %d", TR_OUTBOX_MAX_ATTEMPTS);
        def->max_attempts = (int64_t)json_integer_value(max);
    }
    return 0;
}

/* The stored form: the same keys with defaults filled in, so a repeat compares equal. */
static char *canonical(json_t *body, const tr_outbox_def_t *def)
{
    json_t *o = json_object();
    json_object_set(o, "stream", json_object_get(body, "stream"));
    json_t *types = json_object_get(body, "types");
    if (def->ntypes) json_object_set(o, "types", types);
    json_object_set_new(o, "url", json_string(def->url));
    json_object_set_new(o, "from", json_string(def->from_start ? "start" : "end"));
    json_object_set_new(o, "max_attempts", json_integer(def->max_attempts));
    char *text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    return text;
}

static int parse_def(json_t *body, tr_outbox_def_t *def, char *detail, size_t len)
{
    memset(def, 0, sizeof(*def));
    int st = parse_fields(body, def, detail, len);
    if (st) {
        tr__outbox_def_free(def);
        return st;
    }
    def->text = canonical(body, def);
    return 0;
}

int tr__outbox_def_parse(json_t *body, char **name, tr_outbox_def_t *def, char *detail, size_t len)
{
    static const char *const keys[] = {"name", "stream", "types", "url", "from", "max_attempts"};
    if (!json_is_object(body)) return BAD("the body must be a JSON object");
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        bool known = false;
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
            known = known || strcmp(key, keys[i]) == 0;
        if (!known)
            return BAD("unknown key \"%s\"; a subscription has %s", key,
                       "name, stream, types, url, from and max_attempts");
    }
    json_t *n = json_object_get(body, "name");
    if (!json_is_string(n) || !tr__outbox_valid_name(json_string_value(n), json_string_length(n)))
        return BAD("\"name\" must be 1 to %d letters, digits, '.', '_' or '-'", TR_OUTBOX_MAX_NAME);
    int st = parse_def(body, def, detail, len);
    if (!st) *name = tr_strdup(json_string_value(n));
    return st;
}

int tr__outbox_def_load(const char *text, tr_outbox_def_t *def)
{
    json_t *body = json_loads(text, 0, NULL);
    char detail[256];
    int st = body ? parse_def(body, def, detail, sizeof(detail)) : 422;
    json_decref(body);
    return st ? UV_EINVAL : 0;
}

bool tr__outbox_matches(const tr_outbox_def_t *def, const char *stream, const char *type)
{
    if (def->stream) {
        bool in = def->prefix ? strncmp(stream, def->stream, strlen(def->stream)) == 0
                              : strcmp(stream, def->stream) == 0;
        if (!in) return false;
    }
    if (!def->types) return true;
    for (size_t i = 0; i < def->ntypes; i++)
        if (strcmp(def->types[i], type) == 0) return true;
    return false;
}

uint64_t tr__outbox_backoff_ms(int64_t attempts, uint64_t random)
{
    int shift = attempts < 1 ? 0 : attempts > 20 ? 19 : (int)attempts - 1;
    uint64_t cap = (uint64_t)BACKOFF_FIRST_MS << shift;
    if (cap > BACKOFF_MAX_MS) cap = BACKOFF_MAX_MS;
    return random % (cap + 1);
}

/* ---- subscriptions in memory ------------------------------------------------------------ */

static void event_clear(tr_outbox_event_t *e)
{
    free(e->type);
    free(e->json);
    memset(e, 0, sizeof(*e));
}

static void batch_clear(tr_outbox_sub_t *sub)
{
    for (size_t i = 0; i < sub->nbatch; i++)
        event_clear(&sub->batch[i]);
    free(sub->batch);
    sub->batch = NULL;
    sub->nbatch = sub->ibatch = 0;
}

static void sub_release(tr_outbox_sub_t *sub)
{
    if (--sub->refs > 0) return;
    batch_clear(sub);
    event_clear(&sub->cur);
    while (sub->dead) {
        tr_outbox_dead_t *d = sub->dead;
        sub->dead = d->next;
        free(d->error);
        free(d);
    }
    tr__outbox_def_free(&sub->def);
    free(sub->name);
    free(sub);
}

void tr__outbox_release(tr_outbox_sub_t *sub)
{
    sub_release(sub);
}

static void on_timer_closed(uv_handle_t *h)
{
    sub_release(h->data);
}

tr_outbox_sub_t *tr__outbox_find(tr_eventstore_t *s, const char *name)
{
    for (tr_outbox_sub_t *sub = s->outbox ? s->outbox->subs : NULL; sub; sub = sub->next)
        if (strcmp(sub->name, name) == 0) return sub;
    return NULL;
}

static void on_timer(uv_timer_t *t);

tr_outbox_sub_t *tr__outbox_add(tr_eventstore_t *s, const char *name, tr_outbox_def_t *def,
                                int64_t checkpoint)
{
    tr_outbox_sub_t *sub = tr_calloc(1, sizeof(*sub));
    sub->s = s;
    sub->name = tr_strdup(name);
    sub->def = *def;
    memset(def, 0, sizeof(*def));
    sub->checkpoint = checkpoint;
    sub->cursor = checkpoint + 1;
    sub->more = true;
    sub->refs = 2; /* the list and the timer */
    uv_timer_init(s->opts.loop, &sub->timer);
    sub->timer.data = sub;
    /* Kept in creation order: GET /api/subscriptions lists them so. */
    tr_outbox_sub_t **at = &s->outbox->subs;
    while (*at)
        at = &(*at)->next;
    *at = sub;
    return sub;
}

/* Off the list, timer closed, send cancelled; the memory goes with the last reference. */
static void sub_drop(tr_outbox_sub_t *sub)
{
    if (uv_is_closing((uv_handle_t *)&sub->timer)) return; /* dropped already */
    tr_outbox_t *o = sub->s->outbox;
    for (tr_outbox_sub_t **at = &o->subs; *at; at = &(*at)->next)
        if (*at == sub) {
            *at = sub->next;
            break;
        }
    sub->removed = true;
    tr__outbox_cancel(sub);
    uv_close((uv_handle_t *)&sub->timer, on_timer_closed);
    sub_release(sub);
}

void tr__outbox_remove(tr_outbox_sub_t *sub)
{
    sub_drop(sub);
}

void tr__outbox_cancel(tr_outbox_sub_t *sub)
{
    if (uv_is_active((uv_handle_t *)&sub->timer)) {
        uv_timer_stop(&sub->timer);
        sub->busy = false; /* the backoff was what was under way */
    }
    if (sub->fetch) tr_http_client_cancel(sub->fetch);
}

static tr_outbox_dead_t *first_retry(tr_outbox_sub_t *sub)
{
    for (tr_outbox_dead_t *d = sub->dead; d; d = d->next)
        if (d->retry) return d;
    return NULL;
}

/* Adds or replaces the dead letter at d->position, keeping the list by position. */
static void dead_put(tr_outbox_sub_t *sub, int64_t position, int64_t attempts, int64_t time_ms,
                     const char *error, bool retry)
{
    tr_outbox_dead_t **at = &sub->dead;
    while (*at && (*at)->position < position)
        at = &(*at)->next;
    tr_outbox_dead_t *d = *at;
    if (!d || d->position != position) {
        d = tr_calloc(1, sizeof(*d));
        d->next = *at;
        *at = d;
        sub->ndead++;
    }
    free(d->error);
    d->position = position;
    d->attempts = attempts;
    d->time_ms = time_ms;
    d->error = tr_strdup(error ? error : "");
    d->retry = retry;
}

static void dead_del(tr_outbox_sub_t *sub, int64_t position)
{
    for (tr_outbox_dead_t **at = &sub->dead; *at; at = &(*at)->next)
        if ((*at)->position == position) {
            tr_outbox_dead_t *d = *at;
            *at = d->next;
            free(d->error);
            free(d);
            sub->ndead--;
            return;
        }
}

/* ---- the delivery loop ------------------------------------------------------------------ */

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void wait_ms(tr_outbox_sub_t *sub, uint64_t ms)
{
    sub->busy = true;
    uv_timer_start(&sub->timer, on_timer, ms, 0);
}

static void on_timer(uv_timer_t *t)
{
    tr_outbox_sub_t *sub = t->data;
    sub->busy = false;
    tr__outbox_pump(sub);
}

static bool stopped(tr_outbox_sub_t *sub)
{
    return sub->removed || sub->s->closing;
}

/* A write of the subscription's state through the store's writer. */
typedef struct save_s {
    tr_es_write_t w;
    tr_outbox_sub_t *sub;
} save_t;

static void on_saved(tr_es_write_t *w)
{
    save_t *sv = w->data;
    tr_outbox_sub_t *sub = sv->sub;
    sub->busy = false;
    if (stopped(sub)) goto out;
    if (w->status != 200) {
        /* The state is as before: the same step runs again (a delivered event may be sent
         * again: at least once). */
        tr_log_warn("outbox: cannot store the subscription's state", TR_LOG_STR("name", sub->name),
                    TR_LOG_STR("detail", w->detail));
        wait_ms(sub, STORE_RETRY_MS);
        goto out;
    }
    if (w->at > sub->checkpoint) sub->checkpoint = w->at;
    if (w->op == TR_ES_OP_SUB_DEAD) dead_put(sub, w->at, w->attempts, wall_ms(), w->text, false);
    if (w->op == TR_ES_OP_SUB_CHECKPOINT && w->dead_letter_done) dead_del(sub, w->at);
    if (sub->cur.json && sub->cur.position == w->at) {
        event_clear(&sub->cur);
        sub->attempts = 0;
        sub->last_error[0] = '\0';
    }
    tr__outbox_pump(sub);
out:
    free((char *)sv->w.text);
    free(sv);
    sub_release(sub);
}

static void save(tr_outbox_sub_t *sub, int op, int64_t at, bool dead_letter_done)
{
    save_t *sv = tr_calloc(1, sizeof(*sv));
    sv->sub = sub;
    sv->w.op = op;
    sv->w.stream = sub->name;
    sv->w.at = at;
    sv->w.dead_letter_done = dead_letter_done;
    sv->w.attempts = sub->attempts;
    if (op == TR_ES_OP_SUB_DEAD) sv->w.text = tr_strdup(sub->last_error);
    sv->w.cb = on_saved;
    sv->w.data = sv;
    sub->busy = true;
    sub->refs++;
    tr_eventstore_write(sub->s, &sv->w);
}

/* A page of $all read in the thread pool: the events this subscription wants. */
typedef struct read_job_s {
    uv_work_t work;
    tr_outbox_sub_t *sub;
    tr_eventstore_t *s;
    int64_t from;
    bool retry; /* only the event at `from` (a dead letter sent again) */
    tr_outbox_event_t *events;
    size_t n;
    tr_es_page_t page;
    int err;
} read_job_t;

static void on_read_event(const tr_es_event_t *e, void *data)
{
    read_job_t *j = data;
    if (j->retry ? e->position != j->from : !tr__outbox_matches(&j->sub->def, e->stream, e->type))
        return;
    tr_buf_t b = TR_BUF_INIT;
    tr_eventstore_event_json(&b, e);
    tr_outbox_event_t *ev = &j->events[j->n++];
    ev->position = e->position;
    ev->type = tr_strdup(e->type);
    ev->json = tr_strndup(b.data, b.len);
    tr_buf_free(&b);
}

static void read_work(uv_work_t *w)
{
    read_job_t *j = w->data;
    tr_es_query_t q = {.stream = NULL, .from = j->from, .limit = j->retry ? 1 : PAGE_EVENTS};
    j->err = tr_eventstore_read(j->s, &q, on_read_event, j, &j->page);
}

static void read_taken(tr_outbox_sub_t *sub, read_job_t *j)
{
    if (j->retry) {
        if (j->n) {
            sub->cur = j->events[0];
            sub->cur_retry = true;
            sub->attempts = 0;
            j->n = 0;
        } else {
            /* The event is not there (never expected): drop the dead letter. */
            save(sub, TR_ES_OP_SUB_CHECKPOINT, j->from, true);
            return;
        }
    } else {
        batch_clear(sub);
        sub->batch = j->events;
        sub->nbatch = j->n;
        j->events = NULL;
        j->n = 0;
        if (j->page.count) sub->cursor = j->page.last_read + 1;
        if (j->page.next >= 0) sub->more = true;
    }
    tr__outbox_pump(sub);
}

static void read_after(uv_work_t *w, int status)
{
    read_job_t *j = w->data;
    tr_outbox_sub_t *sub = j->sub;
    sub->busy = false;
    if (status) j->err = status;
    if (!stopped(sub)) {
        if (j->err) {
            sub->more = true;
            wait_ms(sub, STORE_RETRY_MS);
        } else {
            read_taken(sub, j);
        }
    }
    for (size_t i = 0; i < j->n; i++)
        event_clear(&j->events[i]);
    free(j->events);
    tr_eventstore_t *s = j->s;
    free(j);
    sub_release(sub);
    tr__eventstore_release(s);
}

static void read_events(tr_outbox_sub_t *sub, int64_t from, bool retry)
{
    read_job_t *j = tr_calloc(1, sizeof(*j));
    j->sub = sub;
    j->s = sub->s;
    j->from = from;
    j->retry = retry;
    j->events = tr_calloc(PAGE_EVENTS, sizeof(tr_outbox_event_t));
    j->work.data = j;
    sub->busy = true;
    sub->refs++;
    tr__eventstore_retain(sub->s);
    if (uv_queue_work(sub->s->opts.loop, &j->work, read_work, read_after) != 0) {
        j->err = TR_EIO;
        read_after(&j->work, 0);
    }
}

static uint64_t random_u64(void)
{
    uint64_t r = 0;
    if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r)) r = uv_hrtime();
    return r;
}

/* A send failed: back off and send again, or dead-letter it after max_attempts. */
static void send_failed(tr_outbox_sub_t *sub)
{
    sub->attempts++;
    if (sub->attempts >= sub->def.max_attempts) {
        tr_log_warn("outbox: event dead-lettered", TR_LOG_STR("name", sub->name),
                    TR_LOG_INT("position", sub->cur.position),
                    TR_LOG_STR("detail", sub->last_error));
        save(sub, TR_ES_OP_SUB_DEAD, sub->cur.position, false);
        return;
    }
    wait_ms(sub, tr__outbox_backoff_ms(sub->attempts, random_u64()));
}

static void on_headers(tr_http_client_req_t *req, int status,
                       const tr_http_client_header_t *headers, size_t nheaders)
{
    (void)headers, (void)nheaders;
    tr_outbox_sub_t *sub = tr_http_client_req_data(req);
    sub->status = status;
}

/* The response body is not read into memory: only the status counts. */
static void on_sent(tr_http_client_req_t *req, int err)
{
    tr_outbox_sub_t *sub = tr_http_client_req_data(req);
    sub->fetch = NULL;
    sub->busy = false;
    if (!stopped(sub)) {
        int status = err ? 0 : sub->status;
        if (status >= 200 && status < 300) {
            save(sub, TR_ES_OP_SUB_CHECKPOINT, sub->cur.position, sub->cur_retry);
        } else {
            if (err)
                snprintf(sub->last_error, sizeof(sub->last_error), "%s", tr_strerror(err));
            else
                snprintf(sub->last_error, sizeof(sub->last_error), "HTTP %d", status);
            send_failed(sub);
        }
    }
    sub_release(sub);
}

/* An event type as a header value: a type may hold any character, a header may not hold
 * control characters (they could end the header), so those become '?'. */
static size_t header_value(char *out, size_t cap, const char *type)
{
    size_t n = 0;
    for (; type[n] && n + 1 < cap; n++) {
        unsigned char c = (unsigned char)type[n];
        out[n] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    out[n] = '\0';
    return n;
}

#define DISCOVERY_WAIT_MS 10
#define DISCOVERY_WAITS   300 /* 3 s for a new watch's first answer */

/*
 * Where the current event goes: the URL's address, or a passing instance of its service
 * (round robin), copied so that nothing is held across the send. 1: wait for discovery's
 * first answer (retried on a timer); -1: none (last_error says why); 0: sub->dest is set.
 */
static int destination(tr_outbox_sub_t *sub)
{
    if (!sub->def.service) {
        sub->dest = sub->def.ep;
        return 0;
    }
    tr_discovery_t *d = sub->s->outbox->discovery;
    tr_discovery_watch_t *w = NULL;
    tr_endpoint_t *ep = NULL;
    if (!d || tr_discovery_watch(d, sub->def.service, &w)) {
        snprintf(sub->last_error, sizeof(sub->last_error),
                 "no registry to find service '%s' in (this store was started without one)",
                 sub->def.service);
        return -1;
    }
    if (!tr_discovery_ready(w)) return sub->discovery_waits++ < DISCOVERY_WAITS ? 1 : -1;
    sub->discovery_waits = 0;
    if (tr_discovery_pick(w, TR_LB_ROUND_ROBIN, &ep) || ep->http.addr.ss_family == AF_UNSPEC) {
        tr_discovery_done(ep);
        snprintf(sub->last_error, sizeof(sub->last_error), "no passing instance of service '%s'",
                 sub->def.service);
        return -1;
    }
    sub->dest = ep->http;
    tr_discovery_done(ep);
    return 0;
}

static void send_cur(tr_outbox_sub_t *sub)
{
    int where = destination(sub);
    if (where > 0) return wait_ms(sub, DISCOVERY_WAIT_MS);
    if (where < 0) return send_failed(sub);
    char key[TR_OUTBOX_MAX_NAME + 32], type[TR_ES_MAX_STREAM + 1];
    int kl = snprintf(key, sizeof(key), "%s:%lld", sub->name, (long long)sub->cur.position);
    size_t tl = header_value(type, sizeof(type), sub->cur.type);
    tr_http_client_header_t h[] = {
        {"content-type", 12, "application/json", 16},
        {"idempotency-key", 15, key, (size_t)kl},
        {"x-event-type", 12, type, tl},
    };
    tr_http_client_request_t r = {.method = "POST",
                                  .target = sub->def.target,
                                  .headers = h,
                                  .nheaders = 3,
                                  .body_mode = TR_HTTP_CLIENT_BODY_BUFFER,
                                  .body = sub->cur.json,
                                  .body_len = strlen(sub->cur.json),
                                  .flags = TR_HTTP_CLIENT_IDEMPOTENT,
                                  .on_headers = on_headers,
                                  .on_complete = on_sent,
                                  .data = sub};
    sub->busy = true;
    sub->refs++;
    sub->status = 0;
    int e = tr_http_client_request(sub->s->outbox->client, &sub->dest, &r, &sub->fetch);
    if (e) {
        sub->busy = false;
        sub->refs--;
        snprintf(sub->last_error, sizeof(sub->last_error), "%s", tr_strerror(e));
        send_failed(sub);
    }
}

void tr__outbox_pump(tr_outbox_sub_t *sub)
{
    if (sub->busy || !sub->ready || stopped(sub)) return;
    if (sub->cur.json) return send_cur(sub);
    tr_outbox_dead_t *d = first_retry(sub);
    if (d) return read_events(sub, d->position, true);
    if (sub->ibatch < sub->nbatch) {
        sub->cur = sub->batch[sub->ibatch];
        memset(&sub->batch[sub->ibatch++], 0, sizeof(sub->cur));
        sub->cur_retry = false;
        sub->attempts = 0;
        return send_cur(sub);
    }
    batch_clear(sub);
    /* Events read but not for this subscription still move the checkpoint, once a page. */
    if (sub->cursor - 1 > sub->checkpoint)
        return save(sub, TR_ES_OP_SUB_CHECKPOINT, sub->cursor - 1, false);
    if (sub->more) {
        sub->more = false;
        read_events(sub, sub->cursor, false);
    }
}

/* ---- the store's hooks ------------------------------------------------------------------ */

static void on_loaded_sub(const char *name, const char *definition, int64_t checkpoint, void *data)
{
    tr_eventstore_t *s = data;
    tr_outbox_def_t def;
    if (tr__outbox_def_load(definition, &def)) {
        tr_log_error("outbox: a stored subscription is unreadable; it is skipped",
                     TR_LOG_STR("name", name));
        return;
    }
    tr__outbox_add(s, name, &def, checkpoint)->ready = true;
}

static void on_loaded_dead(const tr_es_dead_letter_t *d, void *data)
{
    tr_outbox_sub_t *sub = tr__outbox_find(data, d->subscription);
    if (sub) dead_put(sub, d->position, d->attempts, d->time_ms, d->error, d->retry);
}

int tr__outbox_start(tr_eventstore_t *s)
{
    s->outbox = tr_calloc(1, sizeof(tr_outbox_t));
    tr_http_client_options_t co;
    tr_http_client_options_init(&co);
    co.response_timeout_ms = SEND_TIMEOUT_MS;
    co.max_idle_per_endpoint = 4;
    s->outbox->client = tr_http_client_new(s->opts.loop, &co);
    if (s->opts.hub || (s->opts.registry && *s->opts.registry)) {
        tr_discovery_options_t dopt;
        tr_discovery_options_init(&dopt);
        dopt.hub = s->opts.hub;
        dopt.registry = s->opts.registry;
        s->outbox->discovery = tr_discovery_new(s->opts.loop, &dopt);
    }
    int e = tr_eventstore_load_subscriptions(s, on_loaded_sub, on_loaded_dead, s);
    for (tr_outbox_sub_t *sub = s->outbox->subs; sub; sub = sub->next)
        tr__outbox_pump(sub);
    return e;
}

void tr__outbox_committed(tr_eventstore_t *s)
{
    if (!s->outbox) return;
    for (tr_outbox_sub_t *sub = s->outbox->subs; sub; sub = sub->next) {
        sub->more = true;
        tr__outbox_pump(sub);
    }
}

/* Nothing to free: callbacks of cancelled sends see their subscription removed and touch
 * neither the store nor the client. */
static void on_client_closed(tr_http_client_t *client)
{
    (void)client;
}

void tr__outbox_close(tr_eventstore_t *s)
{
    tr_outbox_t *o = s->outbox;
    if (!o) return;
    while (o->subs)
        sub_drop(o->subs);
    tr_http_client_close(o->client, on_client_closed);
    o->client = NULL;
    tr_discovery_close(o->discovery, NULL);
    o->discovery = NULL;
    s->outbox = NULL;
    free(o);
}
