/* Consul's KV store: /v1/kv reads, writes and blocking watches over SQLite and memory. */
#include "registry/kv.h"

#include "core/buf.h"
#include "core/mem.h"
#include "registry/blocking.h"
#include "trellis/error.h"
#include "trellis/log.h"
#include "trellis/metrics.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Consul's kv_max_value_size default: 512 KiB. */
#define KV_MAX_VALUE_BYTES (512 * 1024)

/* A stored key. Both entry_t and tomb_t start with `key` so one sorted vector serves both. */
typedef struct entry_s {
    char *key;
    unsigned char *value; /* NULL when empty */
    size_t value_len;
    uint64_t flags, create_index, modify_index, lock_index;
    char *session; /* NULL unless locked */
} entry_t;

/* A key that may not be acquired before `until` (uv_now ms): Consul's lock-delay, kept in
 * memory only, as Consul does. */
typedef struct delay_s {
    char *key;
    uint64_t until;
} delay_t;

/* A deleted key and the index that deleted it, so deletes advance prefix queries' index. */
typedef struct tomb_s {
    char *key;
    uint64_t index;
} tomb_t;

typedef struct keyed_s {
    char *key;
} keyed_t;

/* Pointers sorted by key: binary search for lookups and prefix scans. */
typedef struct vec_s {
    keyed_t **v;
    size_t n, cap;
} vec_t;

typedef enum { Q_GET, Q_RECURSE, Q_KEYS } qmode_t;

/* What a GET asked for; the strings live in the request's memory. */
typedef struct query_s {
    qmode_t mode;
    const char *key; /* the key, or the prefix for recurse and keys */
    const char *sep; /* keys only; NULL for none */
    bool raw;
} query_t;

/* A blocking GET waiting for its result to change. */
typedef struct watcher_s {
    tr_waiter_t base;
    tr_kv_t *kv;
    query_t q;
} watcher_t;

struct tr_kv_s {
    uv_loop_t *loop;
    tr_store_t *store;
    vec_t entries; /* entry_t */
    vec_t tombs;   /* tomb_t */
    tr_waiter_t *watchers;
    vec_t delays; /* delay_t */
    tr_kv_session_cb session_ok;
    void *session_data;
};

typedef enum { LOCK_NONE, LOCK_ACQUIRE, LOCK_RELEASE } lock_op_t;

/* A PUT collecting its body. Lives in the request's memory; `body` is on the heap. */
typedef struct put_s {
    tr_kv_t *kv;
    const char *key;
    uint64_t flags, cas;
    bool has_cas, done;
    lock_op_t lock;
    const char *session; /* ?acquire= or ?release=; the request's memory */
    tr_buf_t body;
} put_t;

static tr_series_t *m_keys, *m_watchers, *m_writes, *m_wakeups;

/* ---- sorted vectors */

/* Index of the first element whose key is >= key. */
static size_t vec_lower(const vec_t *vec, const char *key)
{
    size_t lo = 0, hi = vec->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(vec->v[mid]->key, key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void *vec_find(const vec_t *vec, const char *key)
{
    size_t i = vec_lower(vec, key);
    return i < vec->n && strcmp(vec->v[i]->key, key) == 0 ? vec->v[i] : NULL;
}

static void vec_insert_at(vec_t *vec, size_t i, void *item)
{
    if (vec->n == vec->cap) {
        vec->cap = vec->cap ? vec->cap * 2 : 64;
        vec->v = tr_realloc(vec->v, vec->cap * sizeof(*vec->v));
    }
    memmove(vec->v + i + 1, vec->v + i, (vec->n - i) * sizeof(*vec->v));
    vec->v[i] = item;
    vec->n++;
}

static void vec_remove_at(vec_t *vec, size_t i)
{
    memmove(vec->v + i, vec->v + i + 1, (vec->n - i - 1) * sizeof(*vec->v));
    vec->n--;
}

static bool has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static void entry_free(entry_t *e)
{
    free(e->key);
    free(e->value);
    free(e->session);
    free(e);
}

static void tomb_free(tomb_t *t)
{
    free(t->key);
    free(t);
}

/* ---- result index */

/*
 * The index a query's answer carries (X-Consul-Index): the highest ModifyIndex among the
 * entries it matches and the tombstone index of matched keys that were deleted, so it
 * moves exactly when the answer can have changed. A query that never matched anything
 * gets the store's current index, as Consul falls back to the table index.
 */
static uint64_t query_index(const tr_kv_t *kv, const query_t *q)
{
    uint64_t idx = 0;
    if (q->mode == Q_GET) {
        const entry_t *e = vec_find(&kv->entries, q->key);
        const tomb_t *t = e ? NULL : vec_find(&kv->tombs, q->key);
        idx = e ? e->modify_index : t ? t->index : 0;
    } else {
        for (size_t i = vec_lower(&kv->entries, q->key);
             i < kv->entries.n && has_prefix(kv->entries.v[i]->key, q->key); i++) {
            const entry_t *e = (const entry_t *)kv->entries.v[i];
            if (e->modify_index > idx) idx = e->modify_index;
        }
        for (size_t i = vec_lower(&kv->tombs, q->key);
             i < kv->tombs.n && has_prefix(kv->tombs.v[i]->key, q->key); i++) {
            const tomb_t *t = (const tomb_t *)kv->tombs.v[i];
            if (t->index > idx) idx = t->index;
        }
    }
    return idx ? idx : tr_store_index(kv->store);
}

/* ---- rendering */

/* Keys were checked to be UTF-8 when written, so only JSON's own escapes are needed. */
static void json_str(tr_buf_t *b, const char *s)
{
    tr_buf_append(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\')
            tr_buf_printf(b, "\\%c", c);
        else if (c < 0x20)
            tr_buf_printf(b, "\\u%04x", c);
        else
            tr_buf_append(b, p, 1);
    }
    tr_buf_append(b, "\"", 1);
}

static void json_base64(tr_buf_t *b, const unsigned char *data, size_t len)
{
    if (!len) {
        tr_buf_append_str(b, "null"); /* Consul (Go) renders an empty value as null */
        return;
    }
    size_t n = 4 * ((len + 2) / 3);
    tr_buf_reserve(b, n + 3);
    b->data[b->len++] = '"';
    EVP_EncodeBlock((unsigned char *)b->data + b->len, data, (int)len);
    b->len += n;
    b->data[b->len++] = '"';
}

static void render_entry(tr_buf_t *b, const entry_t *e)
{
    tr_buf_printf(b, "{\"LockIndex\":%llu,\"Key\":", (unsigned long long)e->lock_index);
    json_str(b, e->key);
    tr_buf_printf(b, ",\"Flags\":%llu,\"Value\":", (unsigned long long)e->flags);
    json_base64(b, e->value, e->value_len);
    if (e->session) {
        tr_buf_append_str(b, ",\"Session\":");
        json_str(b, e->session);
    }
    tr_buf_printf(b, ",\"CreateIndex\":%llu,\"ModifyIndex\":%llu}",
                  (unsigned long long)e->create_index, (unsigned long long)e->modify_index);
}

/* Consul's keys listing: with a separator, a key is cut just after the first separator that
 * follows the prefix, and the cut keys are listed once (they are adjacent when sorted). */
static void render_keys(const tr_kv_t *kv, const query_t *q, tr_buf_t *b, size_t *count)
{
    size_t plen = strlen(q->key), slen = q->sep ? strlen(q->sep) : 0;
    const char *last = NULL;
    size_t last_len = 0;
    for (size_t i = vec_lower(&kv->entries, q->key);
         i < kv->entries.n && has_prefix(kv->entries.v[i]->key, q->key); i++) {
        const char *k = kv->entries.v[i]->key;
        size_t len = strlen(k);
        const char *cut = slen ? strstr(k + plen, q->sep) : NULL;
        if (cut) len = (size_t)(cut - k) + slen;
        if (last && len == last_len && !memcmp(k, last, len)) continue;
        char *part = tr_strndup(k, len);
        tr_buf_append_str(b, (*count)++ ? "," : "[");
        json_str(b, part);
        free(part);
        last = k;
        last_len = len;
    }
}

static void render_recurse(const tr_kv_t *kv, const query_t *q, tr_buf_t *b, size_t *count)
{
    for (size_t i = vec_lower(&kv->entries, q->key);
         i < kv->entries.n && has_prefix(kv->entries.v[i]->key, q->key); i++) {
        tr_buf_append_str(b, (*count)++ ? "," : "[");
        render_entry(b, (const entry_t *)kv->entries.v[i]);
    }
}

static void send_raw(tr_http_req_t *req, const entry_t *e)
{
    /* Consul's defence against stored values being served as active content. */
    tr_http_res_header(req, "X-Content-Type-Options", "nosniff");
    tr_http_res_header(req, "Content-Security-Policy", "sandbox");
    tr_http_res_send(req, 200, "text/plain", e->value, e->value_len);
}

/* Answers a GET with the current result and its index; 404 with an empty body when the
 * query matches nothing (clients read a 404 as "not found", so no problem+json here). */
static void respond(tr_kv_t *kv, tr_http_req_t *req, const query_t *q)
{
    tr_blocking_headers(req, query_index(kv, q));
    tr_buf_t b = TR_BUF_INIT;
    size_t count = 0;
    if (q->mode == Q_GET) {
        const entry_t *e = vec_find(&kv->entries, q->key);
        if (e && q->raw) {
            send_raw(req, e);
            return;
        }
        if (e) {
            tr_buf_append_str(&b, "[");
            render_entry(&b, e);
            count = 1;
        }
    } else if (q->mode == Q_KEYS) {
        render_keys(kv, q, &b, &count);
    } else {
        render_recurse(kv, q, &b, &count);
    }
    /* Consul lists the root's keys as [] when there are none; everything else is a 404. */
    if (!count && q->mode == Q_KEYS && !q->key[0]) tr_buf_append_str(&b, "[");
    if (!b.len) {
        tr_http_res_send(req, 404, NULL, NULL, 0);
    } else {
        tr_buf_append_str(&b, "]");
        tr_http_res_send(req, 200, "application/json", b.data, b.len);
    }
    tr_buf_free(&b);
}

/* ---- watchers */

static void on_watcher_answer(tr_waiter_t *base, tr_http_req_t *req)
{
    watcher_t *w = (watcher_t *)base;
    respond(w->kv, req, &w->q);
}

static void watch(tr_kv_t *kv, tr_http_req_t *req, const query_t *q, const tr_blocking_t *b)
{
    watcher_t *w =
        tr_waiter_park(kv->loop, req, &kv->watchers, sizeof(*w), b, on_watcher_answer, m_watchers);
    w->kv = kv;
    w->q = *q;
}

/* Whether a write to `key` (to every key under it when `tree`) can touch w's result. */
static bool watcher_matches(const watcher_t *w, const char *key, bool tree)
{
    if (w->q.mode == Q_GET) return tree ? has_prefix(w->q.key, key) : !strcmp(w->q.key, key);
    return has_prefix(key, w->q.key) || (tree && has_prefix(w->q.key, key));
}

/*
 * Wakes the watchers a write concerns, and among them only those whose result index now
 * passes the index they waited on: a watcher sees a change in its own result, never
 * unrelated churn. Runs right after the write is answered, on the same loop turn.
 */
static void notify(tr_kv_t *kv, const char *key, bool tree)
{
    tr_waiter_t *next;
    for (tr_waiter_t *b = kv->watchers; b; b = next) {
        next = b->next;
        watcher_t *w = (watcher_t *)b;
        if (!watcher_matches(w, key, tree) || query_index(kv, &w->q) <= b->index) continue;
        tr_counter_inc(m_wakeups);
        tr_waiter_wake(b);
    }
}

/* ---- requests: helpers */

static void bad_query(tr_http_req_t *req, const char *name, const char *value, const char *want)
{
    tr_http_res_problem(req, 400, "bad-query", "Invalid query parameter", "%s=%s is not valid: %s",
                        name, value, want);
}

/* Reads an optional uint64 query parameter; false (400 sent) when it is malformed. */
static bool query_u64(tr_http_req_t *req, const char *name, bool *present, uint64_t *out)
{
    const char *v;
    *present = tr_http_query_param(req, name, &v);
    if (!*present) return true;
    if (tr__blocking_parse_u64(v, out)) return true;
    bad_query(req, name, v, "use an unsigned 64-bit integer, such as 0 or 42");
    return false;
}

/* Keys of writes: present, not starting with '/', like Consul. */
static bool check_key(tr_http_req_t *req, const char *key, bool allow_empty)
{
    if (!key[0] && !allow_empty) {
        tr_http_res_problem(req, 400, "missing-key", "Missing key name",
                            "missing key name: put the key in the path, /v1/kv/<key>");
        return false;
    }
    if (key[0] == '/') {
        tr_http_res_problem(req, 400, "bad-key", "Invalid key",
                            "key must not begin with a '/': drop the extra slash");
        return false;
    }
    return true;
}

static void send_bool(tr_http_req_t *req, bool v)
{
    tr_http_res_send(req, 200, "application/json", v ? "true" : "false", v ? 4 : 5);
}

static int step_done(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s) == SQLITE_DONE ? 0 : TR_EIO;
    sqlite3_reset(s);
    return rc;
}

static void store_failed(tr_kv_t *kv, tr_http_req_t *req, const char *what)
{
    tr_store_rollback(kv->store);
    tr_log_error("registry kv write failed", TR_LOG_STR("op", what),
                 TR_LOG_STR("reason", sqlite3_errmsg(tr_store_db(kv->store))));
    tr_http_res_problem(req, 500, "store-failed", "Storage failure",
                        "the registry could not write to its database; see the server log");
}

static void count_keys(const tr_kv_t *kv)
{
    tr_gauge_set(m_keys, (double)kv->entries.n);
}

static void drop_tomb(tr_kv_t *kv, const char *key)
{
    size_t i = vec_lower(&kv->tombs, key);
    if (i == kv->tombs.n || strcmp(kv->tombs.v[i]->key, key) != 0) return;
    tomb_free((tomb_t *)kv->tombs.v[i]);
    vec_remove_at(&kv->tombs, i);
}

/* ---- PUT */

static int db_put(tr_kv_t *kv, const entry_t *e)
{
    sqlite3_stmt *s =
        tr_store_stmt(kv->store, "INSERT OR REPLACE INTO kv (key, value, flags, create_index,"
                                 " modify_index, lock_index, session)"
                                 " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    if (!s) return TR_EIO;
    sqlite3_bind_text(s, 1, e->key, -1, SQLITE_STATIC);
    sqlite3_bind_blob(s, 2, e->value ? (const void *)e->value : "", (int)e->value_len,
                      SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, (sqlite3_int64)e->flags);
    sqlite3_bind_int64(s, 4, (sqlite3_int64)e->create_index);
    sqlite3_bind_int64(s, 5, (sqlite3_int64)e->modify_index);
    sqlite3_bind_int64(s, 6, (sqlite3_int64)e->lock_index);
    if (e->session) sqlite3_bind_text(s, 7, e->session, -1, SQLITE_STATIC);
    if (step_done(s) < 0) return TR_EIO;
    s = tr_store_stmt(kv->store, "DELETE FROM kv_tombstones WHERE key = ?1");
    if (!s) return TR_EIO;
    sqlite3_bind_text(s, 1, e->key, -1, SQLITE_STATIC);
    return step_done(s);
}

/* Consul's check-and-set: 0 means "only create", N means "only if ModifyIndex is N". */
static bool cas_allows(const entry_t *e, bool has_cas, uint64_t cas)
{
    if (!has_cas) return true;
    return cas == 0 ? e == NULL : e != NULL && e->modify_index == cas;
}

/* Whether Consul's lock-delay still holds `key` back; forgets delays that have passed. */
static bool lock_delayed(tr_kv_t *kv, const char *key)
{
    size_t i = vec_lower(&kv->delays, key);
    if (i == kv->delays.n || strcmp(kv->delays.v[i]->key, key) != 0) return false;
    delay_t *d = (delay_t *)kv->delays.v[i];
    if (d->until > uv_now(kv->loop)) return true;
    free(d->key);
    free(d);
    vec_remove_at(&kv->delays, i);
    return false;
}

static void set_lock_delay(tr_kv_t *kv, const char *key, uint64_t until)
{
    size_t i = vec_lower(&kv->delays, key);
    delay_t *d =
        i < kv->delays.n && !strcmp(kv->delays.v[i]->key, key) ? (delay_t *)kv->delays.v[i] : NULL;
    if (!d) {
        d = tr_calloc(1, sizeof(*d));
        d->key = tr_strdup(key);
        vec_insert_at(&kv->delays, i, d);
    }
    d->until = until;
}

/*
 * Consul's lock rules: acquire needs a live session, no lock-delay on the key and no other
 * holder; release needs the caller to be the holder. A refusal answers false (or 500 for
 * an unknown session, as Consul does) and returns false.
 */
static bool lock_allows(tr_kv_t *kv, tr_http_req_t *req, const put_t *p, const entry_t *old)
{
    const char *holder = old ? old->session : NULL;
    if (p->lock == LOCK_ACQUIRE) {
        if (!kv->session_ok || !kv->session_ok(kv->session_data, p->session)) {
            tr_http_res_problem(req, 500, "invalid-session", "Invalid session",
                                "invalid session \"%.64s\": create one with PUT "
                                "/v1/session/create and acquire with its ID",
                                p->session);
            return false;
        }
        if (lock_delayed(kv, p->key) || (holder && strcmp(holder, p->session) != 0)) {
            send_bool(req, false);
            return false;
        }
    } else if (p->lock == LOCK_RELEASE && (!holder || strcmp(holder, p->session) != 0)) {
        send_bool(req, false);
        return false;
    }
    return true;
}

/* A new acquisition bumps LockIndex; re-acquiring by the holder only updates the value. */
static void lock_apply(const put_t *p, const entry_t *old, entry_t *next)
{
    if (p->lock == LOCK_ACQUIRE) {
        if (!old || !old->session) next->lock_index++;
        next->session = (char *)p->session;
    } else if (p->lock == LOCK_RELEASE) {
        next->session = NULL;
    }
}

/* Writes the PUT to disk, then to memory, then answers and wakes its watchers. */
static void apply_put(put_t *p, tr_http_req_t *req)
{
    tr_kv_t *kv = p->kv;
    size_t pos = vec_lower(&kv->entries, p->key);
    entry_t *old = pos < kv->entries.n && !strcmp(kv->entries.v[pos]->key, p->key)
                       ? (entry_t *)kv->entries.v[pos]
                       : NULL;
    if (!cas_allows(old, p->has_cas, p->cas)) {
        send_bool(req, false);
        return;
    }
    if (!lock_allows(kv, req, p, old)) return;
    uint64_t idx;
    entry_t next = {.key = (char *)p->key,
                    .value = (unsigned char *)p->body.data,
                    .value_len = p->body.len,
                    .flags = p->flags,
                    .lock_index = old ? old->lock_index : 0,
                    .session = old ? old->session : NULL};
    lock_apply(p, old, &next);
    next.create_index = old ? old->create_index : 0;
    if (tr_store_begin(kv->store, &idx) < 0) {
        store_failed(kv, req, "put");
        return;
    }
    next.modify_index = idx;
    if (!old) next.create_index = idx;
    if (db_put(kv, &next) < 0 || tr_store_commit(kv->store) < 0) {
        store_failed(kv, req, "put");
        return;
    }
    entry_t *e = old;
    if (!e) {
        e = tr_calloc(1, sizeof(*e));
        e->key = tr_strdup(p->key);
        vec_insert_at(&kv->entries, pos, e);
    }
    free(e->value);
    e->value = next.value_len ? next.value : NULL;
    if (!next.value_len) free(next.value);
    p->body = (tr_buf_t)TR_BUF_INIT; /* the entry owns the bytes now */
    e->value_len = next.value_len;
    e->flags = next.flags;
    e->create_index = next.create_index;
    e->modify_index = idx;
    e->lock_index = next.lock_index;
    if (next.session != e->session) {
        free(e->session);
        e->session = next.session ? tr_strdup(next.session) : NULL;
    }
    drop_tomb(kv, p->key);
    count_keys(kv);
    tr_counter_inc(m_writes);
    send_bool(req, true);
    notify(kv, p->key, false);
}

static void put_finish(put_t *p)
{
    p->done = true;
    tr_buf_free(&p->body);
}

static void too_large(tr_http_req_t *req, uint64_t len)
{
    /* The client may still be sending the body: close rather than read it all. */
    tr_http_res_close(req);
    tr_http_res_problem(req, 413, "value-too-large", "Value too large",
                        "the value is %llu bytes; a KV value may be at most %d bytes (512 KiB)",
                        (unsigned long long)len, KV_MAX_VALUE_BYTES);
}

static void on_put_body(tr_http_req_t *req, const char *data, size_t len)
{
    put_t *p = req->data;
    if (p->done) return;
    if (p->body.len + len > KV_MAX_VALUE_BYTES) {
        too_large(req, p->body.len + len);
        put_finish(p);
        return;
    }
    tr_buf_append(&p->body, data, len);
}

static void on_put_end(tr_http_req_t *req)
{
    put_t *p = req->data;
    if (p->done) return;
    apply_put(p, req);
    put_finish(p);
}

static void on_put_abort(tr_http_req_t *req)
{
    put_finish(req->data);
}

static bool utf8_ok(const char *s)
{
    json_t *j = json_string(s); /* jansson refuses invalid UTF-8 */
    json_decref(j);
    return j != NULL;
}

/* Reads ?acquire= / ?release=; false (400 sent) when both are given or one is empty. */
static bool parse_lock(tr_http_req_t *req, put_t *p)
{
    const char *acq = NULL, *rel = NULL;
    bool has_acq = tr_http_query_param(req, "acquire", &acq);
    bool has_rel = tr_http_query_param(req, "release", &rel);
    if (has_acq && has_rel) {
        tr_http_res_problem(req, 400, "bad-query", "Conflicting flags",
                            "acquire and release cannot be combined: send one of them");
        return false;
    }
    if (!has_acq && !has_rel) return true;
    const char *id = has_acq ? acq : rel;
    if (!id || !id[0]) {
        bad_query(req, has_acq ? "acquire" : "release", "",
                  "give the session ID, such as ?acquire=<session-id>");
        return false;
    }
    p->lock = has_acq ? LOCK_ACQUIRE : LOCK_RELEASE;
    p->session = id;
    return true;
}

static void handle_put(tr_kv_t *kv, tr_http_req_t *req, const char *key)
{
    if (!check_key(req, key, false)) return;
    if (!utf8_ok(key)) {
        tr_http_res_problem(req, 400, "bad-key", "Invalid key",
                            "the key is not valid UTF-8; percent-encode UTF-8 text in the path");
        return;
    }
    put_t *p = tr_http_req_alloc(req, sizeof(*p));
    *p = (put_t){.kv = kv, .key = key, .body = TR_BUF_INIT};
    if (!parse_lock(req, p)) return;
    bool has_flags;
    if (!query_u64(req, "flags", &has_flags, &p->flags)) return;
    if (!query_u64(req, "cas", &p->has_cas, &p->cas)) return;
    if (req->content_length > KV_MAX_VALUE_BYTES) {
        too_large(req, (uint64_t)req->content_length);
        return;
    }
    req->data = p;
    req->on_body = on_put_body;
    req->on_end = on_put_end;
    req->on_abort = on_put_abort;
}

/* ---- DELETE */

static int db_delete(tr_kv_t *kv, const char *key, uint64_t idx)
{
    sqlite3_stmt *s = tr_store_stmt(kv->store, "DELETE FROM kv WHERE key = ?1");
    if (!s) return TR_EIO;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    if (step_done(s) < 0) return TR_EIO;
    s = tr_store_stmt(kv->store, "INSERT OR REPLACE INTO kv_tombstones (key, idx) VALUES (?1, ?2)");
    if (!s) return TR_EIO;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)idx);
    return step_done(s);
}

/* Replaces entries [lo, hi) by tombstones at `idx`, in memory. */
static void bury(tr_kv_t *kv, size_t lo, size_t hi, uint64_t idx)
{
    for (size_t i = lo; i < hi; i++) {
        entry_t *e = (entry_t *)kv->entries.v[i];
        size_t at = vec_lower(&kv->tombs, e->key);
        tomb_t *t = at < kv->tombs.n && !strcmp(kv->tombs.v[at]->key, e->key)
                        ? (tomb_t *)kv->tombs.v[at]
                        : NULL;
        if (!t) {
            t = tr_calloc(1, sizeof(*t));
            t->key = tr_strdup(e->key);
            vec_insert_at(&kv->tombs, at, t);
        }
        t->index = idx;
        entry_free(e);
    }
    memmove(kv->entries.v + lo, kv->entries.v + hi, (kv->entries.n - hi) * sizeof(void *));
    kv->entries.n -= hi - lo;
}

/* Deletes entries [lo, hi) in one transaction; false after answering 500. */
static bool delete_range(tr_kv_t *kv, tr_http_req_t *req, size_t lo, size_t hi)
{
    uint64_t idx;
    if (tr_store_begin(kv->store, &idx) < 0) {
        store_failed(kv, req, "delete");
        return false;
    }
    for (size_t i = lo; i < hi; i++) {
        if (db_delete(kv, kv->entries.v[i]->key, idx) < 0) {
            store_failed(kv, req, "delete");
            return false;
        }
    }
    if (tr_store_commit(kv->store) < 0) {
        store_failed(kv, req, "delete");
        return false;
    }
    bury(kv, lo, hi, idx);
    count_keys(kv);
    tr_counter_inc(m_writes);
    return true;
}

static void handle_delete(tr_kv_t *kv, tr_http_req_t *req, const char *key)
{
    bool tree = tr_http_query_param(req, "recurse", NULL);
    if (!check_key(req, key, tree)) return;
    bool has_cas;
    uint64_t cas = 0;
    if (!query_u64(req, "cas", &has_cas, &cas)) return;
    if (tree && has_cas) {
        tr_http_res_problem(req, 400, "bad-query", "Conflicting flags",
                            "recurse and cas cannot be combined: delete one key with cas");
        return;
    }
    size_t lo = vec_lower(&kv->entries, key), hi = lo;
    if (tree) {
        while (hi < kv->entries.n && has_prefix(kv->entries.v[hi]->key, key))
            hi++;
    } else if (hi < kv->entries.n && !strcmp(kv->entries.v[hi]->key, key)) {
        hi++;
    }
    /* Like Consul's delete-CAS: a missing key is already deleted (true); a stale index is
     * refused (false). */
    if (has_cas && hi > lo && ((entry_t *)kv->entries.v[lo])->modify_index != cas) {
        send_bool(req, false);
        return;
    }
    if (hi > lo && !delete_range(kv, req, lo, hi)) return;
    send_bool(req, true);
    if (hi > lo) notify(kv, key, tree);
}

/* ---- GET */

static bool parse_get(tr_http_req_t *req, const char *key, query_t *q)
{
    *q = (query_t){.mode = Q_GET, .key = key};
    if (tr_http_query_param(req, "recurse", NULL)) q->mode = Q_RECURSE;
    if (tr_http_query_param(req, "keys", NULL)) q->mode = Q_KEYS;
    /* Consul still reads its historic misspelling; the right spelling wins. */
    if (!tr_http_query_param(req, "separator", &q->sep))
        tr_http_query_param(req, "seperator", &q->sep);
    if (q->sep && !q->sep[0]) q->sep = NULL;
    q->raw = tr_http_query_param(req, "raw", NULL);
    if (q->mode == Q_GET && !key[0]) {
        tr_http_res_problem(req, 400, "missing-key", "Missing key name",
                            "missing key name: use /v1/kv/<key>, or ?recurse or ?keys to list");
        return false;
    }
    return true;
}

static void handle_get(tr_kv_t *kv, tr_http_req_t *req, const char *key)
{
    query_t q;
    tr_blocking_t b;
    if (!parse_get(req, key, &q) || !tr_blocking_parse(req, &b)) return;
    if (b.blocking && query_index(kv, &q) <= b.index) {
        watch(kv, req, &q, &b);
        return;
    }
    respond(kv, req, &q);
}

void tr_kv_handle(tr_kv_t *kv, tr_http_req_t *req, const char *key)
{
    size_t n = strlen(key);
    char *k = tr_http_req_alloc(req, n + 1); /* the key must live as long as a watcher */
    memcpy(k, key, n + 1);
    if (!strcmp(req->method, "GET"))
        handle_get(kv, req, k);
    else if (!strcmp(req->method, "PUT"))
        handle_put(kv, req, k);
    else if (!strcmp(req->method, "DELETE"))
        handle_delete(kv, req, k);
    else {
        tr_http_res_header(req, "Allow", "GET, PUT, DELETE");
        tr_http_res_problem(req, 405, "method-not-allowed", "Method not allowed",
                            "%s is not supported on /v1/kv; use GET, PUT or DELETE", req->method);
    }
}

/* ---- open and close */

static void register_metrics(void)
{
    if (m_keys) return;
    tr_metrics_t *reg = tr_metrics_default();
    m_keys = tr_metric_series(
        tr_metrics_gauge(reg, "trellis_registry_kv_keys", "Keys in the registry's KV store", NULL),
        NULL);
    m_watchers =
        tr_metric_series(tr_metrics_gauge(reg, "trellis_registry_kv_watchers",
                                          "Blocking KV queries waiting for a change", NULL),
                         NULL);
    m_writes = tr_metric_series(tr_metrics_counter(reg, "trellis_registry_kv_writes_total",
                                                   "KV writes committed (puts and deletes)", NULL),
                                NULL);
    m_wakeups = tr_metric_series(
        tr_metrics_counter(reg, "trellis_registry_kv_watch_wakeups_total",
                           "Blocking KV queries answered because their result changed", NULL),
        NULL);
}

static entry_t *load_entry(sqlite3_stmt *s)
{
    entry_t *e = tr_calloc(1, sizeof(*e));
    e->key = tr_strdup((const char *)sqlite3_column_text(s, 0));
    const void *v = sqlite3_column_blob(s, 1);
    e->value_len = (size_t)sqlite3_column_bytes(s, 1);
    if (e->value_len) {
        e->value = tr_malloc(e->value_len);
        memcpy(e->value, v, e->value_len);
    }
    e->flags = (uint64_t)sqlite3_column_int64(s, 2);
    e->create_index = (uint64_t)sqlite3_column_int64(s, 3);
    e->modify_index = (uint64_t)sqlite3_column_int64(s, 4);
    e->lock_index = (uint64_t)sqlite3_column_int64(s, 5);
    if (sqlite3_column_type(s, 6) != SQLITE_NULL)
        e->session = tr_strdup((const char *)sqlite3_column_text(s, 6));
    return e;
}

/* SQLite's BINARY collation is memcmp, the same order as strcmp, so rows arrive sorted. */
static int load(tr_kv_t *kv)
{
    sqlite3_stmt *s = tr_store_stmt(kv->store, "SELECT key, value, flags, create_index,"
                                               " modify_index, lock_index, session"
                                               " FROM kv ORDER BY key");
    if (!s) return TR_EIO;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW)
        vec_insert_at(&kv->entries, kv->entries.n, load_entry(s));
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) return TR_EIO;
    s = tr_store_stmt(kv->store, "SELECT key, idx FROM kv_tombstones ORDER BY key");
    if (!s) return TR_EIO;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        tomb_t *t = tr_calloc(1, sizeof(*t));
        t->key = tr_strdup((const char *)sqlite3_column_text(s, 0));
        t->index = (uint64_t)sqlite3_column_int64(s, 1);
        vec_insert_at(&kv->tombs, kv->tombs.n, t);
    }
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? 0 : TR_EIO;
}

int tr_kv_open(uv_loop_t *loop, tr_store_t *store, tr_kv_t **out, char *err, size_t errlen)
{
    *out = NULL;
    register_metrics();
    tr_kv_t *kv = tr_calloc(1, sizeof(*kv));
    kv->loop = loop;
    kv->store = store;
    if (load(kv) < 0) {
        snprintf(err, errlen, "cannot load the KV store: %s", sqlite3_errmsg(tr_store_db(store)));
        tr_kv_close(kv);
        return TR_EIO;
    }
    count_keys(kv);
    *out = kv;
    return 0;
}

void tr_kv_close(tr_kv_t *kv)
{
    if (!kv) return;
    while (kv->watchers)
        tr_waiter_wake(kv->watchers);
    for (size_t i = 0; i < kv->entries.n; i++)
        entry_free((entry_t *)kv->entries.v[i]);
    for (size_t i = 0; i < kv->tombs.n; i++)
        tomb_free((tomb_t *)kv->tombs.v[i]);
    for (size_t i = 0; i < kv->delays.n; i++) {
        free(kv->delays.v[i]->key);
        free(kv->delays.v[i]);
    }
    free(kv->entries.v);
    free(kv->tombs.v);
    free(kv->delays.v);
    free(kv);
}

/* ---- sessions */

void tr_kv_set_session_check(tr_kv_t *kv, tr_kv_session_cb cb, void *data)
{
    kv->session_ok = cb;
    kv->session_data = data;
}

int tr_kv_release_session_write(tr_kv_t *kv, const char *session, bool behavior_delete,
                                uint64_t index)
{
    for (size_t i = 0; i < kv->entries.n; i++) {
        const entry_t *e = (const entry_t *)kv->entries.v[i];
        if (!e->session || strcmp(e->session, session) != 0) continue;
        entry_t next = *e;
        next.session = NULL;
        next.modify_index = index;
        int rc = behavior_delete ? db_delete(kv, e->key, index) : db_put(kv, &next);
        if (rc < 0) return rc;
    }
    return 0;
}

void tr_kv_release_session_apply(tr_kv_t *kv, const char *session, bool behavior_delete,
                                 uint64_t index, uint64_t lock_delay_ms)
{
    char **keys = NULL;
    size_t nkeys = 0;
    for (size_t i = 0; i < kv->entries.n;) {
        entry_t *e = (entry_t *)kv->entries.v[i];
        if (!e->session || strcmp(e->session, session) != 0) {
            i++;
            continue;
        }
        keys = tr_realloc(keys, (nkeys + 1) * sizeof(*keys));
        keys[nkeys++] = tr_strdup(e->key);
        if (lock_delay_ms) set_lock_delay(kv, e->key, uv_now(kv->loop) + lock_delay_ms);
        if (behavior_delete) {
            bury(kv, i, i + 1, index); /* the next entry slides into slot i */
            continue;
        }
        free(e->session);
        e->session = NULL;
        e->modify_index = index;
        i++;
    }
    if (nkeys) {
        count_keys(kv);
        tr_counter_inc(m_writes);
    }
    /* Watchers are answered only after memory is consistent, one key at a time. */
    for (size_t i = 0; i < nkeys; i++) {
        notify(kv, keys[i], false);
        free(keys[i]);
    }
    free(keys);
}
