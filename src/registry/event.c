/* Consul's user events: fire appends to a bounded ring in memory, list reads (and waits). */
#include "registry/event.h"

#include "core/buf.h"
#include "core/mem.h"
#include "registry/blocking.h"
#include "trellis/error.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One fired event. Strings are owned; `payload` is NULL when the fire had no body. */
typedef struct event_s {
    char id[37];
    char *name, *node, *service, *tag;
    unsigned char *payload;
    size_t payload_len;
    uint64_t ltime;
} event_t;

/* A blocked /v1/event/list; `name` lives in the request's memory. */
typedef struct ev_watcher_s {
    tr_waiter_t base;
    tr_event_t *ev;
    const char *name;
} ev_watcher_t;

/* A fire collecting its payload; lives in the request's memory, `buf` on the heap. */
typedef struct fire_s {
    tr_event_t *ev;
    const char *name, *node, *service, *tag;
    bool done;
    tr_buf_t buf;
} fire_t;

struct tr_event_s {
    uv_loop_t *loop;
    event_t ring[TR_EVENT_RING];
    size_t head, count; /* oldest slot and how many are in use */
    uint64_t ltime;     /* Lamport time of the last event */
    tr_waiter_t *watchers;
};

/* ---- ids and rendering */

static void new_uuid(char out[37])
{
    unsigned char b[16];
    if (RAND_bytes(b, sizeof(b)) != 1)
        for (size_t i = 0; i < sizeof(b); i++)
            b[i] = (unsigned char)rand();
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

/* Parses `n` hex digits of s, skipping dashes; false on anything else. */
static bool hex_u64(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    for (size_t got = 0; got < n; s++) {
        if (*s == '-') continue;
        int d = *s >= '0' && *s <= '9'   ? *s - '0'
                : *s >= 'a' && *s <= 'f' ? *s - 'a' + 10
                : *s >= 'A' && *s <= 'F' ? *s - 'A' + 10
                                         : -1;
        if (d < 0) return false;
        v = v << 4 | (uint64_t)d;
        got++;
    }
    *out = v;
    return true;
}

uint64_t tr__event_id_index(const char *id)
{
    uint64_t lo, hi;
    if (!id || strlen(id) != 36 || id[8] != '-' || id[13] != '-' || id[18] != '-' || id[23] != '-')
        return 0;
    if (!hex_u64(id, 16, &lo) || !hex_u64(id + 19, 16, &hi)) return 0;
    return lo ^ hi;
}

static json_t *payload_json(const event_t *e)
{
    if (!e->payload) return json_null();
    size_t cap = 4 * ((e->payload_len + 2) / 3) + 1;
    char *b64 = tr_malloc(cap);
    EVP_EncodeBlock((unsigned char *)b64, e->payload, (int)e->payload_len);
    json_t *j = json_string(b64);
    free(b64);
    return j;
}

/* Consul's UserEvent. */
static json_t *event_json(const event_t *e)
{
    return json_pack("{s:s, s:s, s:o, s:s, s:s, s:s, s:i, s:I}", "ID", e->id, "Name", e->name,
                     "Payload", payload_json(e), "NodeFilter", e->node, "ServiceFilter", e->service,
                     "TagFilter", e->tag, "Version", 1, "LTime", (json_int_t)e->ltime);
}

static const event_t *nth(const tr_event_t *ev, size_t i)
{
    return &ev->ring[(ev->head + i) % TR_EVENT_RING];
}

/* The index of a list answer: the newest matching event's, or 1 when none match. */
static uint64_t list_index(const tr_event_t *ev, const char *name)
{
    for (size_t i = ev->count; i-- > 0;) {
        const event_t *e = nth(ev, i);
        if (!name || !strcmp(e->name, name)) return tr__event_id_index(e->id);
    }
    return 1;
}

static void send_json(tr_http_req_t *req, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    json_decref(j);
    tr_http_res_send(req, 200, "application/json", s, strlen(s));
    free(s);
}

static void list_respond(tr_event_t *ev, tr_http_req_t *req, const char *name)
{
    json_t *out = json_array();
    for (size_t i = 0; i < ev->count; i++) {
        const event_t *e = nth(ev, i);
        if (!name || !strcmp(e->name, name)) json_array_append_new(out, event_json(e));
    }
    tr_blocking_headers(req, list_index(ev, name));
    send_json(req, out);
}

/* ---- blocked lists */

static void on_watcher_answer(tr_waiter_t *base, tr_http_req_t *req)
{
    ev_watcher_t *w = (ev_watcher_t *)base;
    list_respond(w->ev, req, w->name);
}

static void watch(tr_event_t *ev, tr_http_req_t *req, const char *name, const tr_blocking_t *b)
{
    ev_watcher_t *w =
        tr_waiter_park(ev->loop, req, &ev->watchers, sizeof(*w), b, on_watcher_answer, NULL);
    w->ev = ev;
    w->name = name;
}

/* Event indexes are hashes, not counters: a lister wakes when its index differs. */
static void notify(tr_event_t *ev)
{
    tr_waiter_t *next;
    for (tr_waiter_t *w = ev->watchers; w; w = next) {
        next = w->next;
        if (list_index(ev, ((ev_watcher_t *)w)->name) != w->index) tr_waiter_wake(w);
    }
}

static void do_list(tr_event_t *ev, tr_http_req_t *req)
{
    tr_blocking_t b;
    const char *name = NULL;
    if (!tr_blocking_parse(req, &b)) return;
    if (tr_http_query_param(req, "name", &name) && name && !*name) name = NULL;
    if (b.blocking && list_index(ev, name) == b.index) {
        watch(ev, req, name, &b);
        return;
    }
    list_respond(ev, req, name);
}

/* ---- fire */

static void event_clear(event_t *e)
{
    free(e->name);
    free(e->node);
    free(e->service);
    free(e->tag);
    free(e->payload);
    memset(e, 0, sizeof(*e));
}

/* Appends an event, dropping the oldest when the ring is full. Returns the stored event. */
static const event_t *append(tr_event_t *ev, const fire_t *f)
{
    event_t *e;
    if (ev->count == TR_EVENT_RING) {
        e = &ev->ring[ev->head];
        event_clear(e);
        ev->head = (ev->head + 1) % TR_EVENT_RING;
    } else {
        e = &ev->ring[(ev->head + ev->count++) % TR_EVENT_RING];
    }
    new_uuid(e->id);
    e->name = tr_strdup(f->name);
    e->node = tr_strdup(f->node ? f->node : "");
    e->service = tr_strdup(f->service ? f->service : "");
    e->tag = tr_strdup(f->tag ? f->tag : "");
    if (f->buf.len) {
        e->payload = tr_malloc(f->buf.len);
        memcpy(e->payload, f->buf.data, f->buf.len);
        e->payload_len = f->buf.len;
    }
    e->ltime = ++ev->ltime;
    return e;
}

static void fire_finish(fire_t *f)
{
    f->done = true;
    tr_buf_free(&f->buf);
}

static void on_fire_body(tr_http_req_t *req, const char *data, size_t len)
{
    fire_t *f = req->data;
    if (f->done) return;
    if (f->buf.len + len > TR_EVENT_MAX_PAYLOAD) {
        tr_http_res_close(req);
        tr_http_res_problem(req, 413, "payload-too-large", "Payload too large",
                            "a user event's payload may be at most %d bytes; send a key or URL "
                            "that points to the data instead",
                            TR_EVENT_MAX_PAYLOAD);
        fire_finish(f);
        return;
    }
    tr_buf_append(&f->buf, data, len);
}

static void on_fire_end(tr_http_req_t *req)
{
    fire_t *f = req->data;
    if (f->done) return;
    req->on_abort = NULL;
    send_json(req, event_json(append(f->ev, f)));
    fire_finish(f);
    notify(f->ev);
}

static void on_fire_abort(tr_http_req_t *req)
{
    fire_finish(req->data);
}

/* Consul's filters are regular expressions; refuse one that does not compile. */
static bool valid_regex(tr_http_req_t *req, const char *param, const char *re)
{
    regex_t rx;
    if (!re || !*re) return true;
    if (regcomp(&rx, re, REG_EXTENDED | REG_NOSUB) == 0) {
        regfree(&rx);
        return true;
    }
    tr_http_res_problem(req, 400, "bad-filter", "Bad Request",
                        "?%s= is not a valid regular expression", param);
    return false;
}

static void do_fire(tr_event_t *ev, tr_http_req_t *req, const char *name)
{
    fire_t *f = tr_http_req_alloc(req, sizeof(*f));
    *f = (fire_t){.ev = ev, .name = name, .buf = TR_BUF_INIT};
    tr_http_query_param(req, "node", &f->node);
    tr_http_query_param(req, "service", &f->service);
    tr_http_query_param(req, "tag", &f->tag);
    if (!valid_regex(req, "node", f->node) || !valid_regex(req, "service", f->service) ||
        !valid_regex(req, "tag", f->tag))
        return;
    if (f->tag && *f->tag && !(f->service && *f->service)) {
        tr_http_res_problem(req, 400, "bad-filter", "Bad Request",
                            "?tag= filters the services chosen by ?service=; add ?service=");
        return;
    }
    req->data = f;
    req->on_body = on_fire_body;
    req->on_end = on_fire_end;
    req->on_abort = on_fire_abort;
}

/* ---- routing */

static bool method_is(tr_http_req_t *req, const char *want)
{
    if (!strcmp(req->method, want) || (!strcmp(want, "GET") && req->head)) return true;
    tr_http_res_header(req, "Allow", want);
    tr_http_res_problem(req, 405, "method-not-allowed", "Method not allowed",
                        "%s is not supported on %s; use %s", req->method, req->path, want);
    return false;
}

bool tr_event_handle(tr_event_t *ev, tr_http_req_t *req)
{
    static const char fire[] = "/v1/event/fire/";
    if (req->path_len == 14 && !memcmp(req->path, "/v1/event/list", 14)) {
        if (method_is(req, "GET")) do_list(ev, req);
        return true;
    }
    if (req->path_len < sizeof(fire) - 1 || memcmp(req->path, fire, sizeof(fire) - 1) != 0)
        return false;
    if (!method_is(req, "PUT")) return true;
    size_t len = req->path_len - (sizeof(fire) - 1);
    char *name = tr_http_req_alloc(req, len + 1);
    if (!len || tr_http_percent_decode(name, req->path + sizeof(fire) - 1, len) < 0 || !*name) {
        tr_http_res_problem(req, 400, "bad-name", "Bad Request",
                            "name the event in the path: PUT /v1/event/fire/<name>");
        return true;
    }
    do_fire(ev, req, name);
    return true;
}

/* ---- life cycle */

int tr_event_open(uv_loop_t *loop, tr_event_t **out)
{
    tr_event_t *ev = tr_calloc(1, sizeof(*ev));
    ev->loop = loop;
    *out = ev;
    return 0;
}

void tr_event_close(tr_event_t *ev)
{
    if (!ev) return;
    while (ev->watchers)
        tr_waiter_wake(ev->watchers);
    for (size_t i = 0; i < ev->count; i++)
        event_clear(&ev->ring[(ev->head + i) % TR_EVENT_RING]);
    free(ev);
}
